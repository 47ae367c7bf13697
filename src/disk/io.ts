/**
 * Bounds-checked file access for image parsers.
 *
 * Every read of on-disk metadata goes through `readStructure`, which refuses to read past
 * the end of the file and says which structure was being read where. A raw RangeError or
 * a silently short read never reaches format code.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { PolyvisorError, fromSystemError, hex } from '../errors.js';
import type { CacheMode } from './format.js';
import { dataRuns } from './sparse.js';

export class ImageFile {
  readonly path: string;
  readonly writable: boolean;
  #fh: FileHandle;
  #size: number;
  #unsafe = false;
  /** where this view starts in the underlying file (0 unless a window) */
  #base = 0;

  private constructor(path: string, fh: FileHandle, size: number, writable: boolean) {
    this.path = path;
    this.#fh = fh;
    this.#size = size;
    this.writable = writable;
  }

  /**
   * Opens an existing file, or, with `window`, a read-only view of `length` bytes of it from
   * `offset` (a disk stored inside a package: a VMDK member of an OVA), which every format
   * then reads as if it were a whole file.
   */
  static async open(path: string, writable: boolean, window?: { offset: number; length: number }): Promise<ImageFile> {
    if (window && writable) throw new PolyvisorError('ERR_READ_ONLY', 'a disk inside a package is opened read-only', { file: path });
    let fh: FileHandle;
    try {
      fh = await open(path, writable ? 'r+' : 'r');
    } catch (e) {
      throw fromSystemError(e, path, 'open');
    }
    try {
      const st = await fh.stat();
      if (!st.isFile() && !st.isBlockDevice()) {
        throw new PolyvisorError('ERR_IO', 'not a regular file or block device', { file: path });
      }
      if (window) {
        const { offset, length } = window;
        if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > st.size) {
          throw new PolyvisorError('ERR_TRUNCATED', `window of ${length} bytes at ${hex(offset)} runs past the end of the file at ${hex(st.size)}`, { file: path });
        }
        const f = new ImageFile(path, fh, length, false);
        f.#base = offset;
        return f;
      }
      return new ImageFile(path, fh, st.size, writable);
    } catch (e) {
      await fh.close().catch(() => {});
      throw fromSystemError(e, path, 'stat');
    }
  }

  /**
   * Creates a new file; fails if it exists (callers write under a temporary name). With
   * cache 'unsafe', sync() does nothing (see CacheMode).
   */
  static async create(path: string, cache: CacheMode = 'writeback'): Promise<ImageFile> {
    let fh: FileHandle;
    try {
      fh = await open(path, 'wx+');
    } catch (e) {
      throw fromSystemError(e, path, 'create');
    }
    const f = new ImageFile(path, fh, 0, true);
    f.#unsafe = cache === 'unsafe';
    return f;
  }

  get size(): number {
    return this.#size;
  }

  /**
   * The data runs of [offset, end) as [start, end) pairs in this view's offsets, or null when
   * the system cannot tell (then treat it all as data). See sparse.ts.
   */
  dataRuns(offset: number, end: number): Array<[number, number]> | null {
    const runs = dataRuns(this.#fh.fd, this.#base + offset, this.#base + end);
    return runs && runs.map(([s, e]) => [s - this.#base, e - this.#base]);
  }

  /**
   * Reads exactly `length` bytes of a named on-disk structure at `offset`. Throws
   * ERR_TRUNCATED naming the structure when the file ends before it does.
   */
  async readStructure(offset: number, length: number, structure: string): Promise<Buffer> {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new PolyvisorError('ERR_CORRUPT', `invalid offset or length (${length} bytes)`, { file: this.path, structure, offset: Math.max(0, offset || 0) });
    }
    if (offset + length > this.#size) {
      throw new PolyvisorError('ERR_TRUNCATED', `${length} bytes needed but the file ends at ${hex(this.#size)}`, { file: this.path, structure, offset });
    }
    const buf = Buffer.allocUnsafe(length);
    await this.readInto(buf, offset);
    return buf;
  }

  /**
   * Reads into `buf` at `offset`. Bytes past the end of the file read as zeroes: image
   * formats treat a file that ends inside its last cluster as zero-padded.
   */
  async readInto(buf: Uint8Array, offset: number): Promise<void> {
    if (buf.length >= PARALLEL_MIN) {
      const piece = Math.ceil(buf.length / PARALLEL_PIECES / 4096) * 4096;
      const parts: Promise<void>[] = [];
      for (let at = 0; at < buf.length; at += piece) parts.push(this.#readSerial(buf.subarray(at, Math.min(buf.length, at + piece)), offset + at));
      await Promise.all(parts);
      return;
    }
    return this.#readSerial(buf, offset);
  }

  async #readSerial(buf: Uint8Array, offset: number): Promise<void> {
    let done = 0;
    const want = buf.length;
    while (done < want) {
      const pos = offset + done;
      if (pos >= this.#size) {
        buf.fill(0, done);
        return;
      }
      let n: number;
      try {
        ({ bytesRead: n } = await this.#fh.read(buf, done, Math.min(want - done, this.#size - pos), this.#base + pos));
      } catch (e) {
        throw fromSystemError(e, this.path, `read at ${hex(pos)}`);
      }
      if (n === 0) {
        // the file shrank under us: treat the rest as zeroes rather than loop for ever
        buf.fill(0, done);
        this.#size = pos;
        return;
      }
      done += n;
    }
  }

  /** Writes all of `buf` at `offset`, growing the file as needed. */
  async writeAt(buf: Uint8Array, offset: number): Promise<void> {
    return this.writevAt([buf], offset);
  }

  /**
   * Writes several buffers back to back starting at `offset`. Large writes are cut into
   * pieces written in parallel on libuv's thread pool: copying into the page cache is the
   * bottleneck of a conversion, and one thread per core does it faster than one alone
   * (qemu-img gets the same effect from its several in-flight requests).
   */
  async writevAt(bufs: Uint8Array[], offset: number): Promise<void> {
    if (!this.writable) throw new PolyvisorError('ERR_READ_ONLY', 'file is open read-only', { file: this.path, offset });
    let total = 0;
    for (const b of bufs) total += b.length;
    if (total >= PARALLEL_MIN) {
      await Promise.all(splitRanges(bufs, total, PARALLEL_PIECES).map((p) => this.#writevSerial(p.bufs, offset + p.at, p.total)));
    } else {
      await this.#writevSerial(bufs, offset, total);
    }
    if (offset + total > this.#size) this.#size = offset + total;
  }

  async #writevSerial(bufs: Uint8Array[], offset: number, total: number): Promise<void> {
    let written: number;
    try {
      ({ bytesWritten: written } = bufs.length === 1 ? await this.#fh.write(bufs[0]!, 0, total, offset) : await this.#fh.writev(bufs, offset));
    } catch (e) {
      throw fromSystemError(e, this.path, `write at ${hex(offset)}`);
    }
    if (written < total) {
      // finish a short write piece by piece
      let pos = 0;
      for (const b of bufs) {
        const end = pos + b.length;
        if (end > written) {
          const from = Math.max(0, written - pos);
          await this.#writevSerial([b.subarray(from)], offset + pos + from, b.length - from);
        }
        pos = end;
      }
    }
  }

  /**
   * Writes pieces planned by a format's writer: pieces that follow each other in the file go
   * out together in one vectored write, the rest in parallel.
   */
  async writeSegments(segs: ReadonlyArray<{ host: number; data: Uint8Array }>): Promise<void> {
    const groups: { host: number; bufs: Uint8Array[]; bytes: number }[] = [];
    for (const s of segs) {
      const last = groups[groups.length - 1];
      if (last && last.host + last.bytes === s.host && last.bufs.length < MAX_IOV) {
        last.bufs.push(s.data);
        last.bytes += s.data.length;
      } else {
        groups.push({ host: s.host, bufs: [s.data], bytes: s.data.length });
      }
    }
    await Promise.all(groups.map((g) => this.writevAt(g.bufs, g.host)));
  }

  async truncate(size: number): Promise<void> {
    try {
      await this.#fh.truncate(size);
    } catch (e) {
      throw fromSystemError(e, this.path, 'truncate');
    }
    this.#size = size;
  }

  async sync(): Promise<void> {
    if (this.#unsafe) return;
    try {
      await this.#fh.datasync();
    } catch (e) {
      throw fromSystemError(e, this.path, 'sync');
    }
  }

  async close(): Promise<void> {
    await this.#fh.close().catch(() => {});
  }
}

/** Buffers in one vectored write: Linux's IOV_MAX is 1024. */
const MAX_IOV = 512;

/** I/O of at least this many bytes is split into PARALLEL_PIECES requests in flight at once. */
const PARALLEL_MIN = 1 << 20;
const PARALLEL_PIECES = Number(process.env.POLYVISOR_IO_PIECES ?? 4);

/** Cuts a list of buffers totalling `total` bytes into about `n` pieces of whole 4 KiB pages. */
function splitRanges(bufs: Uint8Array[], total: number, n: number): Array<{ at: number; bufs: Uint8Array[]; total: number }> {
  const size = Math.ceil(total / n / 4096) * 4096;
  const out: Array<{ at: number; bufs: Uint8Array[]; total: number }> = [];
  let cur: { at: number; bufs: Uint8Array[]; total: number } = { at: 0, bufs: [], total: 0 };
  let pos = 0;
  for (const b of bufs) {
    let from = 0;
    while (from < b.length) {
      const take = Math.min(b.length - from, size - cur.total);
      cur.bufs.push(b.subarray(from, from + take));
      cur.total += take;
      from += take;
      pos += take;
      if (cur.total === size) {
        out.push(cur);
        cur = { at: pos, bufs: [], total: 0 };
      }
    }
  }
  if (cur.total > 0) out.push(cur);
  return out;
}

/** Rounds `n` up to a multiple of `align` (a power of two or any positive integer). */
export function alignUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

export function alignDown(n: number, align: number): number {
  return Math.floor(n / align) * align;
}

/** True when every byte of `buf` is zero. Uses memcmp against a shared zero page. */
const ZERO = Buffer.alloc(1 << 16);
export function isZero(buf: Uint8Array): boolean {
  const b = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let pos = 0; pos < b.length; pos += ZERO.length) {
    const end = Math.min(b.length, pos + ZERO.length);
    if (b.compare(ZERO, 0, end - pos, pos, end) !== 0) return false;
  }
  return true;
}

/** Reads a big-endian u64 as a JS number, refusing values past 2^53 (no image is that large). */
export function readU64BE(buf: Buffer, at: number, ctx: { file: string; structure: string; offset?: number }): number {
  const v = buf.readBigUInt64BE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new PolyvisorError('ERR_CORRUPT', `64-bit field at byte ${at} holds ${hex(v)}, beyond any real file`, { file: ctx.file, structure: ctx.structure, offset: ctx.offset });
  }
  return Number(v);
}
