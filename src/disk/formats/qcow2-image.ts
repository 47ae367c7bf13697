/**
 * The qcow2 BlockImage: reads through the active L1/L2 tables, writes with in-memory
 * metadata and append-only allocation, flushes L2 tables, L1, refcounts and header.
 * See qcow2.ts for the format overview and qcow2.txt for the structures.
 */
import { PolyvisorError, hex } from '../../errors.js';
import { checkRange, readBacking } from '../backing.js';
import type { BackingRef, BlockImage, CheckResult, Extent } from '../image.js';
import type { ImageFile } from '../io.js';
import { checkImage } from './qcow2-check.js';
import {
  AUTOCLEAR_BITMAPS,
  COMPAT_LAZY_REFCOUNTS,
  HDR,
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  OFLAG_COMPRESSED,
  OFLAG_COPIED,
  OFLAG_ZERO,
  compressedOffset,
  compressedSize,
  entryOffset,
  setCompressedEntry,
  setEntry,
  setStandardEntry,
  type Qcow2Header,
} from './qcow2-header.js';
import { Refcounts } from './qcow2-refcount.js';
import { zlib } from '../../util/builtins.js';

/** L2 tables kept in memory, whatever the cluster size. */
const L2_CACHE_BYTES = 64 << 20;
/** Linux IOV_MAX is 1024; stay under it. */
const MAX_IOV = 1000;

interface L2Slot {
  buf: Buffer;
  host: number;
  dirty: boolean;
}

interface Segment {
  host: number;
  data: Uint8Array;
}

export interface MetaRange {
  name: string;
  start: number;
  end: number;
}

// Entry kinds, as small integers so that the per-cluster loops allocate nothing.
const K_UNALLOC = 0;
const K_ZERO = 1;
const K_DATA = 2;
const K_COMPRESSED = 3;

export interface Qcow2Params {
  file: ImageFile;
  header: Qcow2Header;
  ranges: MetaRange[];
  l1: Buffer;
  readOnly: boolean;
  backing: BlockImage | null;
  backingRef: BackingRef | null;
  refcounts?: Refcounts;
  compress?: boolean;
}

export class Qcow2Image implements BlockImage {
  readonly format = 'qcow2';
  readonly readOnly: boolean;
  readonly clusterSize: number;
  readonly virtualSize: number;
  readonly backing: BlockImage | null;
  readonly backingRef: BackingRef | null;
  readonly #file: ImageFile;
  readonly #h: Qcow2Header;
  readonly #cb: number;
  readonly #cs: number;
  readonly #l2Entries: number;
  #ranges: MetaRange[];
  readonly #l1: Buffer;
  #l1Dirty = false;
  readonly #cache = new Map<number, L2Slot>();
  readonly #loading = new Map<number, Promise<L2Slot | null>>();
  readonly #cacheMax: number;
  /** in-memory refcounts: present once the image has been prepared for writing */
  #rc: Refcounts | null;
  readonly #compress: boolean;
  /** where the next compressed cluster may be packed (0: start a new host cluster) */
  #compCursor = 0;
  #headerDirty = false;
  /** true while the dirty bit is set on disk because lazy refcounts are in use */
  #lazyDirty = false;
  #queue: Promise<unknown> = Promise.resolve();
  #inflated: { key: number; buf: Buffer }[] = [];
  #closed = false;

  constructor(p: Qcow2Params) {
    this.#file = p.file;
    this.#h = p.header;
    this.#cb = p.header.clusterBits;
    this.#cs = 2 ** this.#cb;
    this.#l2Entries = this.#cs / 8;
    this.clusterSize = this.#cs;
    this.virtualSize = p.header.size;
    this.readOnly = p.readOnly;
    this.backing = p.backing;
    this.backingRef = p.backingRef;
    this.#ranges = p.ranges;
    this.#l1 = p.l1;
    this.#rc = p.refcounts ?? null;
    this.#compress = !!p.compress;
    this.#cacheMax = Math.max(16, Math.floor(L2_CACHE_BYTES / this.#cs));
  }

  get path(): string {
    return this.#file.path;
  }

  // ---- serialisation -------------------------------------------------------------------

  /** Writable images serialise every operation; read-only ones run reads concurrently. */
  #locked<T>(fn: () => Promise<T>): Promise<T> {
    if (this.readOnly) return fn();
    const p = this.#queue.then(fn);
    this.#queue = p.catch(() => undefined);
    return p;
  }

  // ---- metadata access -------------------------------------------------------------------

  #fileLimit(): number {
    return this.#rc ? Math.max(this.#file.size, this.#rc.nextFree) : this.#file.size;
  }

  #corrupt(detail: string, structure: string, offset: number): PolyvisorError {
    return new PolyvisorError('ERR_CORRUPT', detail, { file: this.path, structure, offset });
  }

  /** A host cluster an L1 or L2 entry points to must be aligned, inside the file, and clear of the header and tables. */
  #checkHost(host: number, what: string, structure: string, at: number): void {
    if (host % this.#cs !== 0) throw this.#corrupt(`${what} holds unaligned offset ${hex(host)}`, structure, at);
    if (host >= this.#fileLimit()) throw this.#corrupt(`${what} points past end of file (${hex(host)})`, structure, at);
    for (const r of this.#ranges) {
      if (host < r.end && host + this.#cs > r.start) throw this.#corrupt(`${what} points into the ${r.name} (${hex(host)})`, structure, at);
    }
  }

  #l1Offset(l1i: number): number {
    return entryOffset(this.#l1.readUInt32BE(l1i * 8), this.#l1.readUInt32BE(l1i * 8 + 4));
  }

  /** The L2 table behind L1 entry `l1i`, or null when it is unallocated. */
  #l2(l1i: number): Promise<L2Slot | null> | L2Slot | null {
    const s = this.#cache.get(l1i);
    if (s) {
      // most-recently-used order: Map iteration order is insertion order
      this.#cache.delete(l1i);
      this.#cache.set(l1i, s);
      return s;
    }
    const off = this.#l1Offset(l1i);
    if (off === 0) return null;
    let p = this.#loading.get(l1i);
    if (!p) {
      p = this.#loadL2(l1i, off).finally(() => this.#loading.delete(l1i));
      this.#loading.set(l1i, p);
    }
    return p;
  }

  async #loadL2(l1i: number, off: number): Promise<L2Slot> {
    this.#checkHost(off, `L1 entry ${l1i}`, 'L1 table', this.#h.l1TableOffset + l1i * 8);
    const buf = Buffer.allocUnsafe(this.#cs);
    await this.#file.readInto(buf, off);
    const slot: L2Slot = { buf, host: off, dirty: false };
    this.#cache.set(l1i, slot);
    if (this.readOnly) this.#evictClean();
    return slot;
  }

  /** Drops least-recently-used clean tables above the cache bound. */
  #evictClean(): void {
    if (this.#cache.size <= this.#cacheMax) return;
    for (const [k, s] of this.#cache) {
      if (this.#cache.size <= this.#cacheMax) break;
      if (!s.dirty) this.#cache.delete(k);
    }
  }

  /** After a write: bound the cache, writing out dirty tables that leave it. */
  async #trimCache(): Promise<void> {
    if (this.#cache.size <= this.#cacheMax) return;
    for (const [k, s] of [...this.#cache]) {
      if (this.#cache.size <= this.#cacheMax) break;
      if (s.dirty) {
        await this.#file.writeAt(s.buf, s.host);
        s.dirty = false;
      }
      this.#cache.delete(k);
    }
  }

  /**
   * Classifies L2 entry `i`, validating it; the host offset (data) is left in #eHost.
   * Compressed entries leave their byte offset and size in #eHost and #eSize.
   */
  #eHost = 0;
  #eSize = 0;
  #classify(slot: L2Slot, i: number): number {
    const hi = slot.buf.readUInt32BE(i * 8);
    const lo = slot.buf.readUInt32BE(i * 8 + 4);
    if (hi & OFLAG_COMPRESSED) {
      const off = compressedOffset(hi, lo, this.#cb);
      const size = compressedSize(hi, lo, this.#cb);
      if (off < this.#cs || off >= this.#fileLimit()) {
        throw this.#corrupt(`L2 entry ${i} points to compressed data ${off < this.#cs ? 'inside the header' : 'past end of file'} (${hex(off)})`, 'L2 table', slot.host + i * 8);
      }
      this.#eHost = off;
      this.#eSize = size;
      return K_COMPRESSED;
    }
    if (lo & OFLAG_ZERO) {
      if (this.#h.version < 3) throw this.#corrupt(`L2 entry ${i} has the zero flag set, which version 2 images do not have`, 'L2 table', slot.host + i * 8);
      this.#eHost = entryOffset(hi, lo);
      return K_ZERO;
    }
    const host = entryOffset(hi, lo);
    if (host === 0) return K_UNALLOC;
    this.#checkHost(host, `L2 entry ${i}`, 'L2 table', slot.host + i * 8);
    this.#eHost = host;
    return K_DATA;
  }

  /** Decompresses one compressed cluster (a few recent ones are cached for partial reads). */
  async #inflate(slot: L2Slot, i: number, host: number, size: number): Promise<Buffer> {
    const hit = this.#inflated.find((e) => e.key === host);
    if (hit) return hit.buf;
    const raw = Buffer.alloc(size);
    await this.#file.readInto(raw, host);
    let out: Buffer;
    try {
      // Z_SYNC_FLUSH: the stored size is rounded to sectors, so the stream may end early or
      // be followed by another cluster's bytes; what matters is exactly one cluster of output.
      out = zlib().inflateRawSync(raw, { maxOutputLength: this.#cs, finishFlush: zlib().constants.Z_SYNC_FLUSH });
    } catch (e) {
      const tooBig = (e as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE';
      throw new PolyvisorError('ERR_CORRUPT', tooBig ? `L2 entry ${i}: compressed cluster at ${hex(host)} inflates past the ${this.#cs}-byte cluster size` : `L2 entry ${i}: compressed cluster at ${hex(host)} is not valid deflate data`, { file: this.path, structure: 'L2 table', offset: slot.host + i * 8, cause: e });
    }
    if (out.length !== this.#cs) {
      throw this.#corrupt(`L2 entry ${i}: compressed cluster at ${hex(host)} inflates to ${out.length} bytes, not the ${this.#cs}-byte cluster size`, 'L2 table', slot.host + i * 8);
    }
    this.#inflated.push({ key: host, buf: out });
    if (this.#inflated.length > 4) this.#inflated.shift();
    return out;
  }

  // ---- BlockImage: queries -----------------------------------------------------------------

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    checkRange(this, offset, length, 'block status');
    return this.#locked(async () => {
      const out = await this.#blockStatus(offset, length);
      if (!this.readOnly) await this.#trimCache();
      return out;
    });
  }

  async #blockStatus(offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = [];
    const cs = this.#cs;
    const end = offset + length;
    let last: Extent | undefined;
    const push = (kind: Extent['kind'], pos: number, len: number, host: number, compressed: boolean): void => {
      if (last && last.kind === kind && !!last.compressed === compressed && (kind !== 'data' || compressed || last.hostOffset! + last.length === host)) {
        last.length += len;
        return;
      }
      last = { offset: pos, length: len, kind };
      if (kind === 'data') {
        if (compressed) last.compressed = true;
        else last.hostOffset = host;
      }
      out.push(last);
    };
    let pos = offset;
    while (pos < end) {
      const c = Math.floor(pos / cs);
      const l1i = Math.floor(c / this.#l2Entries);
      const l2End = Math.min(end, (l1i + 1) * this.#l2Entries * cs);
      const slot = await this.#l2(l1i);
      if (!slot) {
        push('unallocated', pos, l2End - pos, 0, false);
        pos = l2End;
        continue;
      }
      while (pos < l2End) {
        const cc = Math.floor(pos / cs);
        const inner = pos - cc * cs;
        const n = Math.min(cs - inner, l2End - pos);
        const k = this.#classify(slot, cc - l1i * this.#l2Entries);
        if (k === K_DATA) push('data', pos, n, this.#eHost + inner, false);
        else if (k === K_COMPRESSED) push('data', pos, n, 0, true);
        else if (k === K_ZERO) push('zero', pos, n, 0, false);
        else push('unallocated', pos, n, 0, false);
        pos += n;
      }
    }
    return out;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    return this.#locked(async () => {
      await this.#read(buf, offset);
      if (!this.readOnly) await this.#trimCache();
    });
  }

  async #read(buf: Uint8Array, offset: number): Promise<void> {
    const cs = this.#cs;
    const end = offset + buf.length;
    // Contiguous runs (host-contiguous data, or guest-contiguous unallocated ranges) are
    // gathered and read with one call each.
    let runKind = -1;
    let runAt = 0; // position in buf
    let runSrc = 0; // host offset (data) or guest offset (unallocated)
    let runLen = 0;
    const flushRun = async (): Promise<void> => {
      if (runLen === 0) return;
      const dst = buf.subarray(runAt, runAt + runLen);
      if (runKind === K_DATA) await this.#file.readInto(dst, runSrc);
      else await readBacking(this.backing, dst, runSrc);
      runLen = 0;
      runKind = -1;
    };
    let pos = offset;
    let slot: L2Slot | null = null;
    let slotL1 = -1;
    while (pos < end) {
      const c = Math.floor(pos / cs);
      const inner = pos - c * cs;
      const n = Math.min(cs - inner, end - pos);
      const l1i = Math.floor(c / this.#l2Entries);
      if (l1i !== slotL1) {
        slot = await this.#l2(l1i);
        slotL1 = l1i;
      }
      const l2i = c - l1i * this.#l2Entries;
      const k = slot ? this.#classify(slot, l2i) : K_UNALLOC;
      const at = pos - offset;
      if (k === K_DATA || k === K_UNALLOC) {
        const src = k === K_DATA ? this.#eHost + inner : pos;
        if (k === runKind && src === runSrc + runLen) {
          runLen += n;
        } else {
          await flushRun();
          runKind = k;
          runAt = at;
          runSrc = src;
          runLen = n;
        }
      } else {
        await flushRun();
        if (k === K_ZERO) buf.fill(0, at, at + n);
        else {
          const data = await this.#inflate(slot!, l2i, this.#eHost, this.#eSize);
          buf.set(data.subarray(inner, inner + n), at);
        }
      }
      pos += n;
    }
    await flushRun();
  }

  // ---- BlockImage: writes ------------------------------------------------------------------

  async write(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'write');
    if (this.readOnly) throw new PolyvisorError('ERR_READ_ONLY', 'image is open read-only', { file: this.path });
    return this.#locked(async () => {
      await this.#prepareWrite();
      await this.#write(buf, offset);
      await this.#trimCache();
    });
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    checkRange(this, offset, length, 'write zeroes');
    if (this.readOnly) throw new PolyvisorError('ERR_READ_ONLY', 'image is open read-only', { file: this.path });
    return this.#locked(async () => {
      await this.#prepareWrite();
      await this.#writeZeroes(offset, length);
      await this.#trimCache();
    });
  }

  /**
   * Before the first change to an existing image: refuse what we cannot keep consistent,
   * load the refcounts, clear auto-clear bits, and set the dirty bit when lazy refcounts
   * are on (our refcounts reach the file only at flush).
   */
  async #prepareWrite(): Promise<void> {
    if (this.#closed) throw new PolyvisorError('ERR_IO', 'image is closed', { file: this.path });
    const h = this.#h;
    if (!this.#rc) {
      if (h.nbSnapshots > 0) {
        throw new PolyvisorError('ERR_UNSUPPORTED', `image has ${h.nbSnapshots} internal snapshot(s); writing would need copy-on-write of shared clusters, which Polyvisor does not support`, { file: this.path, structure: 'snapshot table', offset: h.snapshotsOffset });
      }
      if (h.bitmaps && h.autoclearFeatures & AUTOCLEAR_BITMAPS) {
        throw new PolyvisorError('ERR_UNSUPPORTED', `image has ${h.bitmaps.nbBitmaps} persistent dirty bitmap(s); writing without updating them is not supported`, { file: this.path, structure: 'bitmaps extension' });
      }
      this.#rc = await Refcounts.load(this.#file, this.#cb, h.refcountOrder, h.refcountTableOffset, h.refcountTableClusters);
      this.#l1RefcountsCheck();
      if (h.version === 3 && h.autoclearFeatures !== 0n) {
        // "An implementation may only write to an image with unknown auto-clear features if it clears the respective bits"
        h.autoclearFeatures = 0n;
        h.raw.writeBigUInt64BE(0n, HDR.autoclearFeatures);
        this.#headerDirty = true;
      }
    }
    if (h.version === 3 && h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS && !this.#lazyDirty) {
      h.incompatibleFeatures |= INCOMPAT_DIRTY;
      h.raw.writeBigUInt64BE(h.incompatibleFeatures, HDR.incompatibleFeatures);
      await this.#file.writeAt(h.raw, 0);
      this.#lazyDirty = true;
    }
  }

  /** The initial metadata of an existing image must have refcounts, or allocation would overwrite it. */
  #l1RefcountsCheck(): void {
    const rc = this.#rc!;
    for (const r of this.#ranges) {
      for (let c = Math.floor(r.start / this.#cs); c * this.#cs < r.end; c++) {
        if (rc.get(c) === 0) throw this.#corrupt(`the ${r.name} has refcount 0; repair the image with qemu-img check -r all before writing`, 'refcount block', c * this.#cs);
      }
    }
  }

  /** The L2 table for `l1i`, allocating an empty one when the L1 entry is unallocated. */
  async #l2ForWrite(l1i: number): Promise<L2Slot> {
    const rc = this.#rc!;
    const slot = await this.#l2(l1i);
    const hi = this.#l1.readUInt32BE(l1i * 8);
    if (slot) {
      if (!(hi & OFLAG_COPIED)) {
        if (rc.get(slot.host / this.#cs) !== 1) {
          throw new PolyvisorError('ERR_UNSUPPORTED', `L2 table at ${hex(slot.host)} is shared (refcount ${rc.get(slot.host / this.#cs)}); copy-on-write of L2 tables is not supported`, { file: this.path, structure: 'L1 table', offset: this.#h.l1TableOffset + l1i * 8 });
        }
        setStandardEntry(this.#l1, l1i * 8, slot.host);
        this.#l1Dirty = true;
      }
      return slot;
    }
    const host = rc.allocate(1);
    const fresh: L2Slot = { buf: Buffer.alloc(this.#cs), host, dirty: true };
    setStandardEntry(this.#l1, l1i * 8, host);
    this.#l1Dirty = true;
    this.#cache.set(l1i, fresh);
    return fresh;
  }

  async #write(src: Uint8Array, offset: number): Promise<void> {
    const cs = this.#cs;
    const end = offset + src.length;
    const segs: Segment[] = [];
    let pos = offset;
    let slot: L2Slot | null = null;
    let slotL1 = -1;
    while (pos < end) {
      const c = Math.floor(pos / cs);
      const inner = pos - c * cs;
      const n = Math.min(cs - inner, end - pos);
      const l1i = Math.floor(c / this.#l2Entries);
      if (l1i !== slotL1) {
        slot = await this.#l2ForWrite(l1i);
        slotL1 = l1i;
      }
      await this.#writeCluster(slot!, c - l1i * this.#l2Entries, c * cs, inner, src.subarray(pos - offset, pos - offset + n), segs);
      pos += n;
    }
    await this.#writeSegments(segs);
  }

  /** Plans the write of `part` at `inner` in guest cluster `guest`, adding host writes to `segs`. */
  async #writeCluster(slot: L2Slot, i: number, guest: number, inner: number, part: Uint8Array, segs: Segment[]): Promise<void> {
    const rc = this.#rc!;
    const cs = this.#cs;
    const at = i * 8;
    const k = this.#classify(slot, i);
    const hi = slot.buf.readUInt32BE(at);
    const host = this.#eHost;
    const csize = this.#eSize;
    // bytes of this cluster inside the virtual disk (less than a cluster only for the last one)
    const valid = Math.min(cs, this.virtualSize - guest);
    const full = inner === 0 && part.length >= valid;

    if (k === K_DATA) {
      if (hi & OFLAG_COPIED || rc.get(host / cs) === 1) {
        // refcount 1: overwrite in place, no read-modify-write needed
        if (!(hi & OFLAG_COPIED)) {
          setStandardEntry(slot.buf, at, host);
          slot.dirty = true;
        }
        segs.push({ host: host + inner, data: part });
        return;
      }
    }
    if (k === K_ZERO && host !== 0 && !this.#compress && rc.get(host / cs) === 1) {
      // a preallocated zero cluster: reuse its host cluster
      const data = Buffer.alloc(cs);
      data.set(part, inner);
      segs.push({ host, data });
      setStandardEntry(slot.buf, at, host);
      slot.dirty = true;
      return;
    }

    // A new host cluster: the whole cluster is written, so a partial write first gathers
    // what the guest currently sees there (backing file, zeroes, compressed data, or the
    // shared cluster being copied).
    let data: Uint8Array;
    if (full && part.length === cs) data = part;
    else {
      const merged = Buffer.alloc(cs);
      if (!full) {
        if (k === K_COMPRESSED) (await this.#inflate(slot, i, host, csize)).copy(merged);
        else if (k === K_DATA) await this.#file.readInto(merged, host);
        else if (k === K_UNALLOC) await readBacking(this.backing, merged.subarray(0, valid), guest);
      }
      merged.set(part, inner);
      data = merged;
    }
    // drop the old allocation
    if (k === K_COMPRESSED) {
      rc.release(host, csize);
      this.#inflated = this.#inflated.filter((e) => e.key !== host);
    } else if ((k === K_DATA || k === K_ZERO) && host !== 0) rc.release(host, cs);

    if (this.#compress) {
      // qemu inflates with a 4 KiB window, so compress with one
      const z = zlib().deflateRawSync(data, { windowBits: 12 });
      if (z.length < cs) {
        const where = this.#placeCompressed(z.length);
        segs.push({ host: where, data: z });
        setCompressedEntry(slot.buf, at, where, z.length, this.#cb);
        slot.dirty = true;
        return;
      }
    }
    const fresh = rc.allocate(1);
    segs.push({ host: fresh, data });
    setStandardEntry(slot.buf, at, fresh);
    slot.dirty = true;
  }

  /**
   * Finds room for `len` bytes of compressed data. Compressed clusters are packed byte by
   * byte; one may run on into the next host cluster when that is the next one allocated
   * ("Some of these sectors may reside in the next contiguous host cluster"). Every host
   * cluster the data touches counts one reference.
   */
  #placeCompressed(len: number): number {
    const rc = this.#rc!;
    const cs = this.#cs;
    const cur = this.#compCursor;
    let where = -1;
    if (cur !== 0) {
      const cl = Math.floor(cur / cs);
      const clEnd = (cl + 1) * cs;
      const count = rc.get(cl);
      if (count < rc.max) {
        if (cur + len <= clEnd) {
          where = cur;
          rc.set(cl, count + 1);
        } else if (clEnd === rc.nextFree) {
          const next = rc.allocate(Math.ceil((cur + len - clEnd) / cs));
          if (next === clEnd) {
            where = cur;
            rc.set(cl, count + 1);
          } else where = next;
        }
      }
    }
    if (where < 0) where = rc.allocate(Math.ceil(len / cs));
    const endAt = where + len;
    this.#compCursor = endAt % cs === 0 ? 0 : endAt;
    return where;
  }

  /** Issues planned host writes, merging host-contiguous ones into single vectored writes. */
  async #writeSegments(segs: Segment[]): Promise<void> {
    let i = 0;
    while (i < segs.length) {
      const first = segs[i]!;
      let next = first.host + first.data.length;
      let j = i + 1;
      while (j < segs.length && j - i < MAX_IOV && segs[j]!.host === next) {
        next += segs[j]!.data.length;
        j++;
      }
      if (j === i + 1) await this.#file.writeAt(first.data, first.host);
      else await this.#file.writevAt(segs.slice(i, j).map((s) => s.data), first.host);
      i = j;
    }
  }

  /** True when guest cluster `c` already reads as zeroes in the whole chain (cheaply known). */
  async #readsAsZero(c: number): Promise<boolean> {
    const l1i = Math.floor(c / this.#l2Entries);
    const slot = await this.#l2(l1i);
    const k = slot ? this.#classify(slot, c - l1i * this.#l2Entries) : K_UNALLOC;
    return k === K_ZERO || (k === K_UNALLOC && !this.backing);
  }

  async #writeZeroes(offset: number, length: number): Promise<void> {
    const cs = this.#cs;
    const rc = this.#rc!;
    const end = offset + length;
    const v3 = this.#h.version === 3;
    let pos = offset;
    while (pos < end) {
      const c = Math.floor(pos / cs);
      const inner = pos - c * cs;
      const n = Math.min(cs - inner, end - pos);
      const valid = Math.min(cs, this.virtualSize - c * cs);
      const l1i = Math.floor(c / this.#l2Entries);
      if (inner !== 0 || n < valid) {
        // part of a cluster: write real zeroes unless it already reads as zero
        if (!(await this.#readsAsZero(c))) await this.#write(Buffer.alloc(n), pos);
        pos += n;
        continue;
      }
      if (!this.backing && this.#l1Offset(l1i) === 0) {
        // no L2 table and no backing: the whole L2 range already reads as zeroes
        pos = Math.min(end, (l1i + 1) * this.#l2Entries * cs);
        if (pos < end) pos = Math.max(pos, c * cs + cs);
        continue;
      }
      if (!v3 && this.backing) {
        // version 2 has no zero flag: only real zeroes hide the backing file
        await this.#write(Buffer.alloc(n), pos);
        pos += n;
        continue;
      }
      const slot = await this.#l2ForWrite(l1i);
      const i = c - l1i * this.#l2Entries;
      const k = this.#classify(slot, i);
      if (k === K_COMPRESSED) {
        rc.release(this.#eHost, this.#eSize);
        this.#inflated = this.#inflated.filter((e) => e.key !== this.#eHost);
      } else if ((k === K_DATA || k === K_ZERO) && this.#eHost !== 0) rc.release(this.#eHost, cs);
      if (v3 && (this.backing || k !== K_UNALLOC)) setEntry(slot.buf, i * 8, 0, OFLAG_ZERO);
      else setEntry(slot.buf, i * 8, 0, 0);
      if (!(k === K_UNALLOC && !v3)) slot.dirty = true;
      pos += n;
    }
  }

  // ---- flush, close ------------------------------------------------------------------------

  flush(): Promise<void> {
    if (this.readOnly) return Promise.resolve();
    return this.#locked(() => this.#flush());
  }

  async #flush(): Promise<void> {
    const rc = this.#rc;
    if (!rc || this.#closed) return;
    const h = this.#h;
    const cs = this.#cs;
    // 1. L2 tables, contiguous ones together
    const dirty = [...this.#cache.values()].filter((s) => s.dirty).sort((a, b) => a.host - b.host);
    await this.#writeSegments(dirty.map((s) => ({ host: s.host, data: s.buf })));
    for (const s of dirty) s.dirty = false;
    // 2. L1 table
    if (this.#l1Dirty) {
      if (this.#l1.length > 0) await this.#file.writeAt(this.#l1, h.l1TableOffset);
      this.#l1Dirty = false;
    }
    // 3. refcounts: place new blocks (and a grown table) until nothing changes, then write
    rc.settle();
    await rc.write(this.#file);
    if (rc.tableOffset !== h.refcountTableOffset || rc.tableClusters !== h.refcountTableClusters) {
      h.refcountTableOffset = rc.tableOffset;
      h.refcountTableClusters = rc.tableClusters;
      h.raw.writeBigUInt64BE(BigInt(rc.tableOffset), HDR.refcountTableOffset);
      h.raw.writeUInt32BE(rc.tableClusters, HDR.refcountTableClusters);
      this.#ranges = this.#ranges.filter((r) => r.name !== 'refcount table');
      this.#ranges.push({ name: 'refcount table', start: rc.tableOffset, end: rc.tableOffset + rc.tableClusters * cs });
      this.#headerDirty = true;
    }
    // 4. every allocated cluster lies inside the file (clusters of packed compressed data
    //    and tables not yet written would otherwise end past it)
    if (this.#file.size < rc.nextFree) await this.#file.truncate(rc.nextFree);
    // 5. header; the lazy-refcounts dirty bit goes once the refcounts are on disk
    if (this.#lazyDirty) {
      h.incompatibleFeatures &= ~INCOMPAT_DIRTY;
      h.raw.writeBigUInt64BE(h.incompatibleFeatures, HDR.incompatibleFeatures);
      this.#lazyDirty = false;
      this.#headerDirty = true;
    }
    if (this.#headerDirty) {
      await this.#file.writeAt(h.raw, 0);
      this.#headerDirty = false;
    }
    await this.#file.sync();
  }

  close(): Promise<void> {
    return this.#locked(async () => {
      if (this.#closed) return;
      try {
        if (!this.readOnly) await this.#flush();
      } finally {
        this.#closed = true;
        await this.#file.close();
        await this.backing?.close();
      }
    });
  }

  /**
   * preallocation=metadata: every guest cluster gets an L2 entry and a host cluster up
   * front; the file is extended sparsely over them, so they read as zeroes.
   */
  preallocateMetadata(): Promise<void> {
    return this.#locked(async () => {
      const rc = this.#rc!;
      const cs = this.#cs;
      const clusters = Math.ceil(this.virtualSize / cs);
      let c = 0;
      while (c < clusters) {
        const l1i = Math.floor(c / this.#l2Entries);
        const slot = await this.#l2ForWrite(l1i);
        const lim = Math.min(clusters, (l1i + 1) * this.#l2Entries);
        const first = c;
        const start = rc.allocate(lim - c);
        for (; c < lim; c++) setStandardEntry(slot.buf, (c - l1i * this.#l2Entries) * 8, start + (c - first) * cs);
        slot.dirty = true;
        await this.#trimCache();
      }
    });
  }

  // ---- info, check -------------------------------------------------------------------------

  formatInfo(): Record<string, unknown> {
    const h = this.#h;
    const info: Record<string, unknown> = {
      compat: h.version === 3 ? '1.1' : '0.10',
      'cluster-size': this.#cs,
      'refcount-bits': 2 ** h.refcountOrder,
      'lazy-refcounts': (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n,
      'compression-type': 'zlib',
      'extended-l2': false,
      corrupt: (h.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n,
      dirty: (h.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n && !this.#lazyDirty,
      snapshots: h.nbSnapshots,
    };
    if (h.bitmaps) info.bitmaps = h.bitmaps.nbBitmaps;
    if (this.backingRef?.format) info['backing-format'] = this.backingRef.format;
    return info;
  }

  async check(): Promise<CheckResult> {
    if (!this.readOnly) await this.flush();
    return this.#locked(() => checkImage(this.#file, this.#h));
  }
}
