/**
 * The disk of an XVA, read in place as a BlockImage: each VDI is a folder of chunk members
 * `Ref:N/00000000`, `Ref:N/00000001`... of raw disk bytes, 1 MiB each (the last may be
 * shorter), each followed by `Ref:N/NNNNNNNN.checksum` (SHA-1, lower-case hex) or, from newer
 * XAPI, `.xxhash` (XXH64, upper-case hex). Chunks that read as zeroes may be left out; the
 * first and the last are always written (xen-api ocaml/xapi/stream_vdi.ml, send_one).
 *
 * Where a chunk lands: XAPI's importer (stream_vdi.ml, recv_all_vdi) reads the chunks in
 * order and places each after the previous one's end plus one chunk size per skipped number.
 * For ordinary exports that is chunk number × 1 MiB; it also places correctly the empty
 * "keep-alive" chunks XAPI inserts when a long run of zero chunks would let a firewall close
 * the connection (after one of those, numbers run one ahead of offsets). This reader follows
 * the importer's rule, so it reads what XAPI would import.
 *
 * Checksums are verified lazily: the first time a chunk is read, its whole data is hashed and
 * compared with its checksum member (ERR_CHECKSUM naming the member). Verifying at open would
 * read the whole of a 100 GiB export before the first byte is served; `verify()` reads
 * every chunk for whoever wants that up front (`vm inspect --verify`).
 */
import { PolyvisorError, hex } from '../../errors.js';
import type { BlockImage, Extent } from '../../disk/image.js';
import { ImageFile, isZero } from '../../disk/io.js';
import { quoteName, type TarMember } from './tar.js';
import { xxh64Hex } from './xva-xxhash.js';
import { crypto } from '../../util/builtins.js';

export const CHUNK_SIZE = 1 << 20;

export interface XvaChunk {
  /** guest offset */
  pos: number;
  member: TarMember;
  checksum?: { member: TarMember; algorithm: 'sha1' | 'xxh64' };
}

/** Checksum members hold 40 (SHA-1) or 16 (XXH64) hex digits, perhaps with a newline. */
const MAX_CHECKSUM_BYTES = 128;

export async function chunkDigest(data: Uint8Array, algorithm: 'sha1' | 'xxh64'): Promise<string> {
  return algorithm === 'sha1' ? crypto().createHash('sha1').update(data).digest('hex') : xxh64Hex(data);
}

export class XvaDisk implements BlockImage {
  readonly format = 'xva';
  readonly path: string;
  readonly virtualSize: number;
  readonly readOnly = true;
  readonly clusterSize = CHUNK_SIZE;
  readonly backing = null;
  readonly backingRef = null;
  readonly vdiRef: string;
  #file: ImageFile;
  #chunks: XvaChunk[];
  #verified = new Map<number, Promise<void>>();

  constructor(file: ImageFile, vdiRef: string, virtualSize: number, chunks: XvaChunk[]) {
    this.#file = file;
    this.path = file.path;
    this.vdiRef = vdiRef;
    this.virtualSize = virtualSize;
    this.#chunks = chunks;
  }

  /** Index of the first chunk that ends after `offset`. */
  #firstAfter(offset: number): number {
    let lo = 0;
    let hi = this.#chunks.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const c = this.#chunks[mid]!;
      if (c.pos + c.member.size <= offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  #checkRange(offset: number, length: number, what: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.virtualSize) {
      throw new PolyvisorError('ERR_RANGE', `${what} of ${length} bytes at ${hex(Math.max(0, offset || 0))} lies outside the ${this.virtualSize}-byte disk ${this.vdiRef}`, { file: this.path });
    }
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.#checkRange(offset, length, 'block status');
    const end = offset + length;
    const out: Extent[] = [];
    const push = (o: number, l: number, kind: 'data' | 'zero', hostOffset?: number) => {
      if (l <= 0) return;
      const last = out[out.length - 1];
      if (last && last.kind === kind && last.offset + last.length === o && (kind === 'zero' || (last.hostOffset !== undefined && hostOffset !== undefined && last.hostOffset + last.length === hostOffset))) {
        last.length += l;
        return;
      }
      out.push(kind === 'data' ? { offset: o, length: l, kind, hostOffset } : { offset: o, length: l, kind });
    };
    let pos = offset;
    for (let i = this.#firstAfter(offset); i < this.#chunks.length && pos < end; i++) {
      const c = this.#chunks[i]!;
      if (c.member.size === 0) continue;
      if (c.pos >= end) break;
      if (c.pos > pos) push(pos, c.pos - pos, 'zero');
      const from = Math.max(pos, c.pos);
      const to = Math.min(end, c.pos + c.member.size);
      push(from, to - from, 'data', c.member.offset + (from - c.pos));
      pos = to;
    }
    push(pos, end - pos, 'zero');
    return out;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.#checkRange(offset, buf.length, 'read');
    const end = offset + buf.length;
    buf.fill(0);
    const reads: Promise<void>[] = [];
    for (let i = this.#firstAfter(offset); i < this.#chunks.length; i++) {
      const c = this.#chunks[i]!;
      if (c.pos >= end) break;
      if (c.member.size === 0) continue;
      const from = Math.max(offset, c.pos);
      const to = Math.min(end, c.pos + c.member.size);
      if (to <= from) continue;
      reads.push(
        (async () => {
          await this.#verify(i);
          await this.#file.readInto(buf.subarray(from - offset, to - offset), c.member.offset + (from - c.pos));
        })(),
      );
    }
    await Promise.all(reads);
  }

  /** Hashes chunk `i` once and compares it with its checksum member. */
  #verify(i: number): Promise<void> {
    let p = this.#verified.get(i);
    if (!p) {
      p = verifyChunk(this.#file, this.#chunks[i]!);
      this.#verified.set(i, p);
      p.catch(() => this.#verified.delete(i));
    }
    return p;
  }

  /** Verifies every chunk of this disk against its checksum; returns how many had one. */
  async verify(opts: { signal?: AbortSignal; onChunk?: (bytes: number) => void } = {}): Promise<{ chunks: number; verified: number }> {
    let verified = 0;
    for (let i = 0; i < this.#chunks.length; i++) {
      if (opts.signal?.aborted) throw new PolyvisorError('ERR_ABORTED', 'verification cancelled', { file: this.path });
      await this.#verify(i);
      if (this.#chunks[i]!.checksum) verified++;
      opts.onChunk?.(this.#chunks[i]!.member.size);
    }
    return { chunks: this.#chunks.length, verified };
  }

  async write(_buf: Uint8Array, offset: number): Promise<void> {
    throw new PolyvisorError('ERR_READ_ONLY', `disk ${this.vdiRef} of an XVA is read-only`, { file: this.path, offset });
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {
    await this.#file.close();
  }

  formatInfo(): Record<string, unknown> {
    const present = this.#chunks.filter((c) => c.member.size > 0);
    return {
      vdi: this.vdiRef,
      'chunk-size': CHUNK_SIZE,
      chunks: present.length,
      'chunks-total': Math.ceil(this.virtualSize / CHUNK_SIZE),
      checksums: present.some((c) => c.checksum?.algorithm === 'xxh64') ? 'xxhash' : present.some((c) => c.checksum) ? 'sha1' : 'none',
    };
  }
}

export async function verifyChunk(file: ImageFile, c: XvaChunk): Promise<void> {
  if (!c.checksum) return;
  const cs = c.checksum.member;
  if (cs.size > MAX_CHECKSUM_BYTES) {
    throw new PolyvisorError('ERR_CORRUPT', `checksum member ${quoteName(cs.name)} is ${cs.size} bytes long`, { file: file.path, structure: 'tar header', offset: cs.headerOffset });
  }
  const expected = (await file.readStructure(cs.offset, cs.size, `checksum member ${quoteName(cs.name)}`)).toString('latin1').trim().toLowerCase();
  const data = await file.readStructure(c.member.offset, c.member.size, `chunk ${quoteName(c.member.name)}`);
  const actual = (await chunkDigest(data, c.checksum.algorithm)).toLowerCase();
  if (actual !== expected) {
    throw new PolyvisorError('ERR_CHECKSUM', `chunk ${quoteName(c.member.name)} fails its ${c.checksum.algorithm === 'sha1' ? 'SHA-1' : 'XXH64'} checksum (${quoteName(cs.name)} says ${expected.slice(0, 40)}, the data hashes to ${actual})`, {
      file: file.path,
      structure: `chunk ${c.member.name}`,
      offset: c.member.offset,
    });
  }
}

/** True when a chunk's data is all zeroes (used for stray chunks past the end of a disk). */
export async function chunkIsZero(file: ImageFile, m: TarMember): Promise<boolean> {
  if (m.size > CHUNK_SIZE) return false;
  const b = await file.readStructure(m.offset, m.size, `chunk ${quoteName(m.name)}`);
  return isZero(b);
}
