/**
 * Hosted sparse extents (Virtual Disk Format 5.0, "Hosted Sparse Extents" and
 * "Stream-Optimized Compressed Sparse Extents"): the "KDMV" header, the grain directory
 * (GD) and its redundant copy (RGD), grain tables (GT) of 512 entries and grains.
 *
 * One class serves three roles:
 * - reading any hosted sparse extent (monolithicSparse, twoGbMaxExtentSparse extents,
 *   streamOptimized with compressed grains and markers, GD at the end found via the footer);
 * - writing uncompressed sparse extents: grain tables stay in memory and are written once
 *   at flush to both their GD and RGD locations; new grains are appended contiguously;
 * - writing streamOptimized extents: append-only, grains deflated (RFC 1950 zlib) in
 *   parallel on libuv's thread pool, then GTs, GD, footer and end-of-stream marker.
 */
import { promisify } from 'node:util';
import { PolyvisorError, hex } from '../../errors.js';
import { alignUp, isZero, type ImageFile } from '../io.js';
import { zlib } from '../../util/builtins.js';

const deflate = (data: Buffer | Uint8Array, opts?: import('node:zlib').ZlibOptions): Promise<Buffer> => promisify(zlib().deflate)(data, opts ?? {});
const inflate = (data: Buffer | Uint8Array, opts?: import('node:zlib').ZlibOptions): Promise<Buffer> => promisify(zlib().inflate)(data, opts ?? {});

export const SECTOR = 512;
export const KDMV = Buffer.from('KDMV', 'latin1');
export const COWD = Buffer.from('COWD', 'latin1');
/** header.gdOffset of a stream whose GD follows the grains; the footer holds the real one */
const GD_AT_END = 0xffffffffffffffffn;

// header.flags (spec: "flags")
export const FLAG_NL_DETECT = 1 << 0;
export const FLAG_RGD = 1 << 1;
export const FLAG_ZERO_GRAIN = 1 << 2;
export const FLAG_COMPRESSED = 1 << 16;
export const FLAG_MARKERS = 1 << 17;
export const COMPRESSION_DEFLATE = 1;
/** GTE value of a zeroed grain when FLAG_ZERO_GRAIN is set (spec: "Zeroed-grain GTE") */
const GTE_ZEROED = 1;
export const GTES_PER_GT = 512;

// marker types (spec: "Stream-Optimized ... Markers")
const MARKER_EOS = 0;
const MARKER_GT = 1;
const MARKER_GD = 2;
const MARKER_FOOTER = 3;

/** Grain tables kept in memory per extent when reading (each is 2 KiB). */
const GT_CACHE = 4096;
/** Inflated compressed grains kept for reads that take a grain piece by piece. */
const INFLATED_CACHE = 8;
/** Grains a stream writer keeps compressing at once (64 KiB each). */
const MAX_INFLIGHT = 16;

export interface SparseHeader {
  version: number;
  flags: number;
  /** sectors */
  capacity: number;
  /** sectors */
  grainSize: number;
  descriptorOffset: number;
  descriptorSize: number;
  numGTEsPerGT: number;
  rgdOffset: number;
  /** sectors; -1 for GD_AT_END */
  gdOffset: number;
  /** sectors: where grains may start ("overHead") */
  overHead: number;
  compressAlgorithm: number;
}

function u64(b: Buffer, at: number, file: string, field: string, offset: number): number {
  const v = b.readBigUInt64LE(at);
  if (v === GD_AT_END) return -1;
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new PolyvisorError('ERR_CORRUPT', `${field} ${hex(v)} is beyond any real file`, { file, structure: 'sparse extent header', offset: offset + at });
  }
  return Number(v);
}

/** Decodes the 512-byte header (spec: "SparseExtentHeader"), validating what needs no file size. */
export function parseSparseHeader(b: Buffer, file: string, offset = 0): SparseHeader {
  const structure = offset === 0 ? 'sparse extent header' : 'stream footer';
  const bad = (detail: string, at: number) => new PolyvisorError('ERR_CORRUPT', detail, { file, structure, offset: offset + at });
  if (!b.subarray(0, 4).equals(KDMV)) throw bad(`bad magic ${b.subarray(0, 4).toString('hex')} (expected "KDMV")`, 0);
  const h: SparseHeader = {
    version: b.readUInt32LE(4),
    flags: b.readUInt32LE(8),
    capacity: u64(b, 12, file, 'capacity', offset),
    grainSize: u64(b, 20, file, 'grainSize', offset),
    descriptorOffset: u64(b, 28, file, 'descriptorOffset', offset),
    descriptorSize: u64(b, 36, file, 'descriptorSize', offset),
    numGTEsPerGT: b.readUInt32LE(44),
    rgdOffset: u64(b, 48, file, 'rgdOffset', offset),
    gdOffset: u64(b, 56, file, 'gdOffset', offset),
    overHead: u64(b, 64, file, 'overHead', offset),
    compressAlgorithm: b.readUInt16LE(77),
  };
  if (h.version < 1 || h.version > 3) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `sparse extent version ${h.version} is not supported (1 to 3)`, { file, structure, offset: offset + 4 });
  }
  // Spec: the four check bytes detect a file damaged by a text-mode (FTP ASCII) transfer.
  if (h.flags & FLAG_NL_DETECT && !(b[73] === 0x0a && b[74] === 0x20 && b[75] === 0x0d && b[76] === 0x0a)) {
    throw bad('line-ending check bytes are altered: the file was probably transferred in text mode', 73);
  }
  // Spec: "grainSize ... must be a power of 2 and must be greater than 8 (4KB)"; 1 GiB is qemu's sanity bound.
  if (h.grainSize < 8 || h.grainSize > 0x200000 || (h.grainSize & (h.grainSize - 1)) !== 0) {
    throw bad(`grainSize ${h.grainSize} sectors is not a power of two from 8 to 2097152`, 20);
  }
  // Spec: "numGTEsPerGT ... is always 512"
  if (h.numGTEsPerGT !== GTES_PER_GT) throw bad(`numGTEsPerGT is ${h.numGTEsPerGT}, not 512`, 44);
  if (h.capacity <= 0 || h.capacity > 2 ** 40) throw bad(`capacity ${h.capacity} sectors is out of range`, 12);
  if (h.flags & FLAG_COMPRESSED && h.compressAlgorithm !== COMPRESSION_DEFLATE) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `compressAlgorithm ${h.compressAlgorithm} is not supported (1: deflate)`, { file, structure, offset: offset + 77 });
  }
  if (h.descriptorSize > 2048) throw bad(`descriptorSize ${h.descriptorSize} sectors exceeds the 1 MiB limit`, 36);
  return h;
}

export function buildSparseHeader(h: SparseHeader): Buffer {
  const b = Buffer.alloc(SECTOR);
  KDMV.copy(b, 0);
  b.writeUInt32LE(h.version, 4);
  b.writeUInt32LE(h.flags, 8);
  b.writeBigUInt64LE(BigInt(h.capacity), 12);
  b.writeBigUInt64LE(BigInt(h.grainSize), 20);
  b.writeBigUInt64LE(BigInt(h.descriptorOffset), 28);
  b.writeBigUInt64LE(BigInt(h.descriptorSize), 36);
  b.writeUInt32LE(h.numGTEsPerGT, 44);
  b.writeBigUInt64LE(BigInt(h.rgdOffset), 48);
  b.writeBigUInt64LE(h.gdOffset < 0 ? GD_AT_END : BigInt(h.gdOffset), 56);
  b.writeBigUInt64LE(BigInt(h.overHead), 64);
  b[72] = 0; // uncleanShutdown
  b[73] = 0x0a;
  b[74] = 0x20;
  b[75] = 0x0d;
  b[76] = 0x0a;
  b.writeUInt16LE(h.compressAlgorithm, 77);
  return b;
}

/** One piece of an extent's mapping, extent-relative byte offsets. */
export interface Run {
  off: number;
  len: number;
  kind: 'data' | 'zero' | 'unallocated' | 'compressed' | 'memory';
  /** data: host byte offset of `off` */
  host?: number;
  /** compressed: grain index; memory: the bytes */
  grain?: number;
  data?: Buffer;
}

/** Reads the parent's view of extent-relative [off, off+buf.length) (COW fill of partial grains). */
export type BaseReader = (buf: Buffer, off: number) => Promise<void>;

/** What every VMDK extent kind implements; offsets are extent-relative bytes. */
export interface VmdkExtent {
  readonly type: string;
  readonly bytes: number;
  readonly file: ImageFile | null;
  /** 0 for flat extents */
  readonly grainBytes: number;
  readonly compressed: boolean;
  map(off: number, len: number): Promise<Run[]>;
  readGrain?(grain: number): Promise<Buffer>;
  write?(src: Uint8Array, off: number, base: BaseReader | null): Promise<void>;
  writeZeroes?(off: number, len: number, base: BaseReader | null): Promise<void>;
  flush(): Promise<void>;
  check?(): Promise<ExtentCheck>;
  info(): Record<string, unknown>;
}

export interface ExtentCheck {
  corruptions: number;
  leaks: number;
  messages: string[];
  allocated: number;
  total: number;
  compressed: number;
}

function pushRun(runs: Run[], r: Run): void {
  const last = runs[runs.length - 1];
  if (last && last.kind === r.kind && r.kind !== 'compressed' && r.kind !== 'memory' && (r.kind !== 'data' || last.host! + last.len === r.host)) {
    last.len += r.len;
    return;
  }
  runs.push(r);
}

export { pushRun };

interface Segment {
  host: number;
  data: Uint8Array;
}

/** Writes host segments, merging host-contiguous neighbours into one vectored write. */
export async function writeSegments(file: ImageFile, segs: Segment[]): Promise<void> {
  segs.sort((a, b) => a.host - b.host);
  let i = 0;
  while (i < segs.length) {
    let end = segs[i]!.host + segs[i]!.data.length;
    let j = i + 1;
    while (j < segs.length && segs[j]!.host === end && j - i < 1000) {
      end += segs[j]!.data.length;
      j++;
    }
    await file.writevAt(segs.slice(i, j).map((s) => s.data), segs[i]!.host);
    i = j;
  }
}

export interface SparseOpenOptions {
  writable: boolean;
  /** name used in messages (the file as the descriptor names it) */
  name: string;
}

export interface SparseCreate {
  capacity: number;
  zeroedGrain: boolean;
  stream: boolean;
  /** embedded descriptor text, or null for a twoGb extent file */
  descriptor: string | null;
}

export class SparseExtent implements VmdkExtent {
  readonly type = 'SPARSE';
  readonly file: ImageFile;
  readonly h: SparseHeader;
  readonly bytes: number;
  readonly grainBytes: number;
  readonly compressed: boolean;
  readonly #writable: boolean;
  readonly #gd: Uint32Array;
  readonly #rgd: Uint32Array | null;
  readonly #gtCache = new Map<number, Uint32Array>();
  readonly #dirty = new Set<number>();
  #gdDirty = false;
  #inflated: Array<{ grain: number; buf: Buffer }> = [];
  /** next host byte for a new grain (writers) */
  #next: number;
  // stream writer state
  readonly #stream: boolean;
  #pend: { grain: number; buf: Buffer } | null = null;
  #minGrain = 0;
  #writing: Promise<void> = Promise.resolve();
  #inflight: Array<{ grain: number; z: Promise<Buffer> }> = [];
  #finalized = false;
  #metaStart = 0;
  #level = 6;

  constructor(file: ImageFile, h: SparseHeader, gd: Uint32Array, rgd: Uint32Array | null, writable: boolean, stream: boolean) {
    this.file = file;
    this.h = h;
    this.bytes = h.capacity * SECTOR;
    this.grainBytes = h.grainSize * SECTOR;
    this.compressed = !!(h.flags & FLAG_COMPRESSED);
    this.#gd = gd;
    this.#rgd = rgd;
    this.#writable = writable;
    this.#stream = stream;
    this.#next = alignUp(Math.max(file.size, h.overHead * SECTOR), this.grainBytes);
    if (stream) this.#next = alignUp(Math.max(file.size, h.overHead * SECTOR), SECTOR);
  }

  get #gtCoverage(): number {
    return this.grainBytes * GTES_PER_GT;
  }

  #corrupt(detail: string, structure: string, offset: number): PolyvisorError {
    return new PolyvisorError('ERR_CORRUPT', detail, { file: this.file.path, structure, offset });
  }

  #limit(): number {
    return Math.max(this.file.size, this.#next);
  }

  /** Opens an existing hosted sparse extent file. */
  static async open(file: ImageFile, opts: SparseOpenOptions): Promise<SparseExtent> {
    const head = await file.readStructure(0, SECTOR, 'sparse extent header');
    let h = parseSparseHeader(head, file.path);
    const stream = !!(h.flags & FLAG_COMPRESSED);
    if (h.gdOffset < 0) {
      // Spec: "the footer ... is the same as the header except gdOffset"; it sits before the
      // end-of-stream marker, preceded by its own footer marker: the last three sectors.
      if (file.size < 4 * SECTOR || file.size % SECTOR !== 0) {
        throw new PolyvisorError('ERR_TRUNCATED', 'stream has its grain directory at the end, but the file is too short or not whole sectors to hold a footer', { file: file.path, structure: 'stream footer', offset: file.size });
      }
      const at = file.size - 3 * SECTOR;
      const tail = await file.readStructure(at, 3 * SECTOR, 'stream footer');
      const fm = tail.subarray(0, SECTOR);
      const eos = tail.subarray(2 * SECTOR);
      if (fm.readUInt32LE(8) !== 0 || fm.readUInt32LE(12) !== MARKER_FOOTER || eos.readBigUInt64LE(0) !== 0n || eos.readUInt32LE(8) !== 0 || eos.readUInt32LE(12) !== MARKER_EOS) {
        throw new PolyvisorError('ERR_CORRUPT', 'no footer marker and end-of-stream marker at the end of the stream (truncated upload?)', { file: file.path, structure: 'stream footer', offset: at });
      }
      h = parseSparseHeader(tail.subarray(SECTOR, 2 * SECTOR), file.path, at + SECTOR);
      if (h.gdOffset < 0) throw new PolyvisorError('ERR_CORRUPT', 'footer gdOffset is still GD_AT_END', { file: file.path, structure: 'stream footer', offset: at + SECTOR + 56 });
    }
    if (opts.writable && (stream || h.version === 3)) {
      // v3 hosted extents add changed-block tracking we would not maintain; streams are append-only
      throw new PolyvisorError('ERR_READ_ONLY', `${stream ? 'streamOptimized' : 'version 3'} extents can only be opened read-only; convert to monolithicSparse to modify`, { file: file.path, structure: 'sparse extent header' });
    }
    if (h.overHead * SECTOR > file.size) {
      throw new PolyvisorError('ERR_TRUNCATED', `grains start at ${hex(h.overHead * SECTOR)} but the file ends at ${hex(file.size)}`, { file: file.path, structure: 'sparse extent header', offset: 64 });
    }
    const numGDEs = Math.ceil(h.capacity / (h.grainSize * GTES_PER_GT));
    const readGd = async (sector: number, what: string, field: number): Promise<Uint32Array> => {
      const off = sector * SECTOR;
      if (sector <= 0 || off + numGDEs * 4 > file.size) {
        throw new PolyvisorError(off >= file.size ? 'ERR_CORRUPT' : 'ERR_TRUNCATED', `${what} at sector ${sector} (${numGDEs} entries) lies ${sector <= 0 ? 'on the header' : 'past the end of the file'}`, { file: file.path, structure: 'sparse extent header', offset: field });
      }
      const b = await file.readStructure(off, numGDEs * 4, what);
      const out = new Uint32Array(numGDEs);
      for (let i = 0; i < numGDEs; i++) out[i] = b.readUInt32LE(i * 4);
      return out;
    };
    const gd = await readGd(h.gdOffset, 'grain directory', 56);
    const rgd = h.flags & FLAG_RGD && h.rgdOffset > 0 && !stream ? await readGd(h.rgdOffset, 'redundant grain directory', 48) : null;
    return new SparseExtent(file, h, gd, rgd, opts.writable, false);
  }

  /**
   * Creates a new extent in an empty file. Uncompressed: like qemu, the RGD and its GTs, then
   * the GD and its GTs, all preallocated after the header and descriptor, so that GT places
   * are known and sequential grains follow contiguously. Stream: header and descriptor only.
   */
  static async create(file: ImageFile, c: SparseCreate): Promise<SparseExtent> {
    const grainSize = 128; // 64 KiB grains, as VMware and qemu write them
    const numGDEs = Math.ceil(c.capacity / (grainSize * GTES_PER_GT));
    const gdSectors = Math.ceil((numGDEs * 4) / SECTOR);
    const gtSectors = (GTES_PER_GT * 4) / SECTOR;
    const descSize = c.descriptor === null ? 0 : Math.max(20, Math.ceil(Buffer.byteLength(c.descriptor) / SECTOR));
    const descOffset = c.descriptor === null ? 0 : 1;
    const metaStart = 1 + descSize;
    let h: SparseHeader;
    const gd = new Uint32Array(numGDEs);
    let rgd: Uint32Array | null = null;
    if (c.stream) {
      h = {
        version: 3,
        flags: FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS,
        capacity: c.capacity,
        grainSize,
        descriptorOffset: descOffset,
        descriptorSize: descSize,
        numGTEsPerGT: GTES_PER_GT,
        rgdOffset: 0,
        gdOffset: -1,
        overHead: alignUp(metaStart, 128),
        compressAlgorithm: COMPRESSION_DEFLATE,
      };
    } else {
      const rgdOffset = metaStart;
      const gdOffset = rgdOffset + gdSectors + gtSectors * numGDEs;
      h = {
        version: c.zeroedGrain ? 2 : 1,
        flags: FLAG_NL_DETECT | FLAG_RGD | (c.zeroedGrain ? FLAG_ZERO_GRAIN : 0),
        capacity: c.capacity,
        grainSize,
        descriptorOffset: descOffset,
        descriptorSize: descSize,
        numGTEsPerGT: GTES_PER_GT,
        rgdOffset,
        gdOffset,
        overHead: alignUp(gdOffset + gdSectors + gtSectors * numGDEs, grainSize),
        compressAlgorithm: 0,
      };
      rgd = new Uint32Array(numGDEs);
      for (let i = 0; i < numGDEs; i++) {
        rgd[i] = rgdOffset + gdSectors + i * gtSectors;
        gd[i] = gdOffset + gdSectors + i * gtSectors;
      }
    }
    const head = Buffer.alloc(metaStart * SECTOR);
    buildSparseHeader(h).copy(head, 0);
    if (c.descriptor !== null) head.write(c.descriptor, SECTOR, 'utf8');
    await file.writeAt(head, 0);
    if (!c.stream) {
      await file.writeAt(u32Bytes(rgd!), h.rgdOffset * SECTOR);
      await file.writeAt(u32Bytes(gd), h.gdOffset * SECTOR);
    }
    // the grain tables are zero: leave them as a hole up to where grains start
    await file.truncate(h.overHead * SECTOR);
    return new SparseExtent(file, h, gd, rgd, true, c.stream);
  }

  setCompressionLevel(level: number): void {
    this.#level = level;
  }

  // ---- grain tables --------------------------------------------------------------------

  #gtHost(i: number): number {
    const s = this.#gd[i]!;
    if (s === 0) return 0;
    const off = s * SECTOR;
    if (off + GTES_PER_GT * 4 > this.#limit()) {
      throw this.#corrupt(`grain directory entry ${i} points to a grain table at ${hex(off)}, past the end of the file`, 'grain directory', this.h.gdOffset * SECTOR + i * 4);
    }
    return off;
  }

  /** The grain table `i`, or null when its GD entry is 0 (all grains unallocated). */
  async #gt(i: number): Promise<Uint32Array | null> {
    const c = this.#gtCache.get(i);
    if (c) return c;
    const host = this.#gtHost(i);
    if (host === 0) return null;
    const b = await this.file.readStructure(host, GTES_PER_GT * 4, `grain table ${i}`);
    const gt = new Uint32Array(GTES_PER_GT);
    for (let k = 0; k < GTES_PER_GT; k++) gt[k] = b.readUInt32LE(k * 4);
    if (this.#gtCache.size >= GT_CACHE) {
      for (const [k] of this.#gtCache) {
        if (this.#gtCache.size < GT_CACHE) break;
        if (!this.#dirty.has(k)) this.#gtCache.delete(k);
      }
    }
    this.#gtCache.set(i, gt);
    return gt;
  }

  /** The host offset a GTE names, validated against the file and the metadata before grains. */
  #grainHost(grain: number, gte: number): number {
    const host = gte * SECTOR;
    const min = Math.max(SECTOR, this.h.overHead * SECTOR);
    if (host < min || host >= this.#limit()) {
      const gt = Math.floor(grain / GTES_PER_GT);
      throw this.#corrupt(`grain ${grain}: grain table entry ${grain % GTES_PER_GT} points to ${hex(host)}, ${host < min ? 'into the header and tables' : 'past the end of the file'}`, `grain table ${gt}`, this.#gd[gt]! * SECTOR + (grain % GTES_PER_GT) * 4);
    }
    return host;
  }

  // ---- reading -------------------------------------------------------------------------

  async map(off: number, len: number): Promise<Run[]> {
    if (this.#stream) {
      await this.#drain(0);
      await this.#writing;
    }
    const runs: Run[] = [];
    const G = this.grainBytes;
    const end = off + len;
    let pos = off;
    while (pos < end) {
      const grain = Math.floor(pos / G);
      const inner = pos - grain * G;
      const n = Math.min(G - inner, end - pos);
      const gti = Math.floor(grain / GTES_PER_GT);
      if (this.#pend && this.#pend.grain === grain) {
        runs.push({ off: pos, len: n, kind: 'memory', data: this.#pend.buf.subarray(inner, inner + n) });
        pos += n;
        continue;
      }
      const gt = await this.#gt(gti);
      if (!gt) {
        // a whole grain table's worth of nothing: skip to its end
        const stop = Math.min(end, (gti + 1) * this.#gtCoverage);
        pushRun(runs, { off: pos, len: stop - pos, kind: 'unallocated' });
        pos = stop;
        continue;
      }
      const gte = gt[grain % GTES_PER_GT]!;
      if (gte === 0) pushRun(runs, { off: pos, len: n, kind: 'unallocated' });
      else if (gte === GTE_ZEROED && this.h.flags & FLAG_ZERO_GRAIN) pushRun(runs, { off: pos, len: n, kind: 'zero' });
      else if (this.compressed) {
        this.#grainHost(grain, gte);
        runs.push({ off: pos, len: n, kind: 'compressed', grain, host: gte * SECTOR });
      } else pushRun(runs, { off: pos, len: n, kind: 'data', host: this.#grainHost(grain, gte) + inner });
      pos += n;
    }
    return runs;
  }

  /** Inflates compressed grain `grain` (spec: grain marker = lba u64, size u32, zlib data). */
  async readGrain(grain: number): Promise<Buffer> {
    const hit = this.#inflated.find((e) => e.grain === grain);
    if (hit) return hit.buf;
    const gt = (await this.#gt(Math.floor(grain / GTES_PER_GT)))!;
    const host = this.#grainHost(grain, gt[grain % GTES_PER_GT]!);
    const G = this.grainBytes;
    const structure = `grain ${grain}`;
    let data: Buffer;
    if (this.h.flags & FLAG_MARKERS) {
      const m = await this.file.readStructure(host, 12, `grain marker of grain ${grain}`);
      const lba = m.readBigUInt64LE(0);
      const size = m.readUInt32LE(8);
      if (size === 0 || size > 2 * G) throw this.#corrupt(`grain marker holds size ${size}, outside 1..${2 * G}`, structure, host);
      if (lba !== BigInt(grain * this.h.grainSize)) throw this.#corrupt(`grain marker says lba ${lba}, but the grain table places it at sector ${grain * this.h.grainSize}`, structure, host);
      data = await this.file.readStructure(host + 12, size, structure);
    } else {
      const size = Math.min(2 * G, this.file.size - host);
      data = await this.file.readStructure(host, size, structure);
    }
    const want = Math.min(G, this.bytes - grain * G);
    let out: Buffer;
    try {
      out = await inflate(data, { maxOutputLength: G });
    } catch (e) {
      const big = (e as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE';
      throw new PolyvisorError('ERR_CORRUPT', big ? `compressed grain inflates past the ${G}-byte grain size` : 'compressed grain is not valid zlib data', { file: this.file.path, structure, offset: host, cause: e });
    }
    if (out.length !== G && out.length !== want) {
      throw this.#corrupt(`compressed grain inflates to ${out.length} bytes, not ${want}`, structure, host);
    }
    if (out.length < G) out = Buffer.concat([out, Buffer.alloc(G - out.length)]);
    this.#inflated.push({ grain, buf: out });
    if (this.#inflated.length > INFLATED_CACHE) this.#inflated.shift();
    return out;
  }

  // ---- writing (uncompressed) ----------------------------------------------------------

  /** The grain table `i` for writing: allocates a GT (and its redundant copy) when the GD has none. */
  async #gtForWrite(i: number): Promise<Uint32Array> {
    const gt = await this.#gt(i);
    if (gt) return gt;
    // VMware may leave GD entries 0; give the table room at the end of the file
    const at = this.#next;
    this.#gd[i] = at / SECTOR;
    if (this.#rgd) this.#rgd[i] = at / SECTOR + (GTES_PER_GT * 4) / SECTOR;
    this.#next = alignUp(at + GTES_PER_GT * 8, this.grainBytes);
    this.#gdDirty = true;
    const fresh = new Uint32Array(GTES_PER_GT);
    this.#gtCache.set(i, fresh);
    this.#dirty.add(i);
    return fresh;
  }

  #allocGrain(): number {
    const host = this.#next;
    if ((host + this.grainBytes) / SECTOR > 0xffffffff) {
      throw new PolyvisorError('ERR_UNSUPPORTED', 'the extent file would pass 2 TiB, beyond what 32-bit grain table entries can address', { file: this.file.path });
    }
    this.#next += this.grainBytes;
    return host;
  }

  async write(src: Uint8Array, off: number, base: BaseReader | null): Promise<void> {
    if (this.#stream) return this.#streamWrite(src, off);
    const G = this.grainBytes;
    const segs: Segment[] = [];
    let pos = off;
    const end = off + src.length;
    while (pos < end) {
      const grain = Math.floor(pos / G);
      const inner = pos - grain * G;
      const n = Math.min(G - inner, end - pos);
      const gti = Math.floor(grain / GTES_PER_GT);
      const gt = await this.#gtForWrite(gti);
      const k = grain % GTES_PER_GT;
      const gte = gt[k]!;
      const part = src.subarray(pos - off, pos - off + n);
      const zeroed = gte === GTE_ZEROED && !!(this.h.flags & FLAG_ZERO_GRAIN);
      if (gte !== 0 && !zeroed) {
        segs.push({ host: this.#grainHost(grain, gte) + inner, data: part });
      } else {
        const host = this.#allocGrain();
        let data: Uint8Array = part;
        if (n !== G) {
          // a new grain holds what the guest saw around the write: the parent's data, or zeroes
          const full = Buffer.alloc(G);
          if (base && !zeroed) await base(full.subarray(0, Math.min(G, this.bytes - grain * G)), grain * G);
          full.set(part, inner);
          data = full;
        }
        segs.push({ host, data });
        gt[k] = host / SECTOR;
        this.#dirty.add(gti);
      }
      pos += n;
    }
    await writeSegments(this.file, segs);
    await this.#trimCache();
  }

  async writeZeroes(off: number, len: number, base: BaseReader | null): Promise<void> {
    if (this.#stream) return this.#streamZeroes(off, len);
    const G = this.grainBytes;
    const zeroGrain = !!(this.h.flags & FLAG_ZERO_GRAIN);
    let pos = off;
    const end = off + len;
    while (pos < end) {
      const grain = Math.floor(pos / G);
      const inner = pos - grain * G;
      const n = Math.min(G - inner, end - pos);
      const whole = inner === 0 && (n === G || pos + n === this.bytes);
      const gti = Math.floor(grain / GTES_PER_GT);
      const gt = await this.#gt(gti);
      const gte = gt ? gt[grain % GTES_PER_GT]! : 0;
      const readsZero = (gte === 0 && !base) || (gte === GTE_ZEROED && zeroGrain);
      if (readsZero) {
        // already zero
      } else if (whole && zeroGrain) {
        const t = await this.#gtForWrite(gti);
        t[grain % GTES_PER_GT] = GTE_ZEROED;
        this.#dirty.add(gti);
      } else {
        await this.write(Buffer.alloc(n), pos, base);
      }
      pos += n;
    }
  }

  async #trimCache(): Promise<void> {
    if (this.#gtCache.size <= GT_CACHE) return;
    await this.#writeTables();
    this.#gtCache.clear();
  }

  async #writeTables(): Promise<void> {
    const segs: Segment[] = [];
    for (const i of this.#dirty) {
      const gt = this.#gtCache.get(i)!;
      const b = u32Bytes(gt);
      segs.push({ host: this.#gd[i]! * SECTOR, data: b });
      if (this.#rgd && this.#rgd[i]) segs.push({ host: this.#rgd[i]! * SECTOR, data: b });
    }
    if (this.#gdDirty) {
      segs.push({ host: this.h.gdOffset * SECTOR, data: u32Bytes(this.#gd) });
      if (this.#rgd) segs.push({ host: this.h.rgdOffset * SECTOR, data: u32Bytes(this.#rgd) });
    }
    await writeSegments(this.file, segs);
    this.#dirty.clear();
    this.#gdDirty = false;
  }

  async flush(): Promise<void> {
    if (!this.#writable) return;
    if (this.#stream) return this.#finalize();
    await this.#writeTables();
  }

  // ---- writing (stream) ----------------------------------------------------------------

  async #reopenStream(): Promise<void> {
    if (!this.#finalized) return;
    await this.#drain(0);
    await this.#writing;
    await this.file.truncate(this.#metaStart);
    this.#next = this.#metaStart;
    this.#finalized = false;
  }

  #orderError(grain: number, off: number): PolyvisorError {
    return new PolyvisorError(
      'ERR_UNSUPPORTED',
      `streamOptimized is append-only: a write at guest offset ${off} lands in grain ${grain}, which is already written; write in ascending order (as convert does) or create monolithicSparse and convert`,
      { file: this.file.path },
    );
  }

  async #streamWrite(src: Uint8Array, off: number): Promise<void> {
    await this.#reopenStream();
    const G = this.grainBytes;
    const first = Math.floor(off / G);
    if (first < this.#minGrain) throw this.#orderError(first, off);
    const emit: Array<{ grain: number; data: Uint8Array }> = [];
    let pos = off;
    const end = off + src.length;
    while (pos < end) {
      const grain = Math.floor(pos / G);
      const inner = pos - grain * G;
      const n = Math.min(G - inner, end - pos);
      const part = src.subarray(pos - off, pos - off + n);
      const grainLen = Math.min(G, this.bytes - grain * G);
      if (this.#pend && this.#pend.grain !== grain) {
        emit.push({ grain: this.#pend.grain, data: this.#pend.buf.subarray(0, Math.min(G, this.bytes - this.#pend.grain * G)) });
        this.#pend = null;
      }
      if (!this.#pend && inner === 0 && n === grainLen) {
        emit.push({ grain, data: part });
      } else {
        if (!this.#pend) this.#pend = { grain, buf: Buffer.alloc(G) };
        this.#pend.buf.set(part, inner);
        if (inner + n === grainLen) {
          emit.push({ grain, data: this.#pend.buf.subarray(0, grainLen) });
          this.#pend = null;
        }
      }
      this.#minGrain = this.#pend ? this.#pend.grain : grain + 1;
      pos += n;
    }
    await this.#emit(emit);
  }

  async #streamZeroes(off: number, len: number): Promise<void> {
    await this.#reopenStream();
    const G = this.grainBytes;
    const first = Math.floor(off / G);
    if (first < this.#minGrain) throw this.#orderError(first, off);
    const lastGrain = Math.floor((off + len - 1) / G);
    const endsGrain = (off + len) % G === 0 || off + len === this.bytes;
    const emit: Array<{ grain: number; data: Uint8Array }> = [];
    if (this.#pend) {
      // zeroes into the buffered grain: it already holds zeroes where nothing was written
      const p = this.#pend;
      const from = Math.max(off, p.grain * G) - p.grain * G;
      const to = Math.min(off + len, (p.grain + 1) * G) - p.grain * G;
      if (to > from) p.buf.fill(0, from, to);
      if (lastGrain > p.grain || endsGrain) {
        emit.push({ grain: p.grain, data: p.buf.subarray(0, Math.min(G, this.bytes - p.grain * G)) });
        this.#pend = null;
      }
    }
    if (!this.#pend) this.#minGrain = endsGrain ? lastGrain + 1 : lastGrain;
    await this.#emit(emit);
  }

  /**
   * Queues grains for compression. Each grain is deflated on libuv's thread pool as soon as
   * it is queued (the data is copied first, so the caller may reuse its buffer), and up to
   * MAX_INFLIGHT grains stay in flight: the next chunk is read and queued while earlier ones
   * compress, which keeps every core busy. Finished grains are appended in queue order.
   */
  async #emit(grains: Array<{ grain: number; data: Uint8Array }>): Promise<void> {
    for (const g of grains) {
      if (isZero(g.data)) continue; // zero grains stay unallocated
      const copy = Buffer.from(g.data);
      const z = deflate(copy, { level: this.#level });
      z.catch(() => {});
      this.#inflight.push({ grain: g.grain, z });
    }
    if (this.#inflight.length > MAX_INFLIGHT) await this.#drain(MAX_INFLIGHT / 2);
  }

  /** Appends compressed grains, oldest first, until at most `keep` remain in flight. */
  async #drain(keep: number): Promise<void> {
    while (this.#inflight.length > keep) {
      const batch = this.#inflight.splice(0, Math.min(128, this.#inflight.length - keep));
      const out = await Promise.all(batch.map((b) => b.z));
      const bufs: Buffer[] = [];
      const start = this.#next;
      let at = start;
      for (let j = 0; j < batch.length; j++) {
        const z = out[j]!;
        const grain = batch[j]!.grain;
        const marker = Buffer.alloc(12);
        marker.writeBigUInt64LE(BigInt(grain * this.h.grainSize), 0);
        marker.writeUInt32LE(z.length, 8);
        const total = alignUp(12 + z.length, SECTOR);
        bufs.push(marker, z);
        if (total > 12 + z.length) bufs.push(PAD.subarray(0, total - 12 - z.length));
        const gti = Math.floor(grain / GTES_PER_GT);
        let gt = this.#gtCache.get(gti);
        if (!gt) {
          gt = new Uint32Array(GTES_PER_GT);
          this.#gtCache.set(gti, gt);
        }
        gt[grain % GTES_PER_GT] = at / SECTOR;
        at += total;
      }
      if (at / SECTOR > 0xffffffff) throw new PolyvisorError('ERR_UNSUPPORTED', 'the stream would pass 2 TiB, beyond what 32-bit grain table entries can address', { file: this.file.path });
      this.#next = at;
      // the write runs while more grains compress; the next drain or the footer waits for it
      const prev = this.#writing;
      this.#writing = prev.then(() => this.file.writevAt(bufs, start));
      this.#writing.catch(() => {});
      await prev;
    }
  }

  /** Spec layout after the grains: [GT marker, GT]..., GD marker, GD, footer marker, footer, EOS. */
  async #finalize(): Promise<void> {
    if (this.#finalized) return;
    if (this.#pend) {
      const p = this.#pend;
      this.#pend = null;
      this.#minGrain = p.grain + 1;
      await this.#emit([{ grain: p.grain, data: p.buf.subarray(0, Math.min(this.grainBytes, this.bytes - p.grain * this.grainBytes)) }]);
    }
    await this.#drain(0);
    await this.#writing;
    this.#metaStart = this.#next;
    const parts: Buffer[] = [];
    let sector = this.#next / SECTOR;
    const marker = (numSectors: number, type: number): Buffer => {
      const m = Buffer.alloc(SECTOR);
      m.writeBigUInt64LE(BigInt(numSectors), 0);
      m.writeUInt32LE(type, 12);
      return m;
    };
    const gtSectors = (GTES_PER_GT * 4) / SECTOR;
    for (let i = 0; i < this.#gd.length; i++) {
      const gt = this.#gtCache.get(i);
      // tables without a grain are left out: their GD entry stays 0
      if (!gt || gt.every((v) => v === 0)) {
        this.#gd[i] = 0;
        continue;
      }
      parts.push(marker(gtSectors, MARKER_GT), u32Bytes(gt));
      this.#gd[i] = sector + 1;
      sector += 1 + gtSectors;
    }
    const gdSectors = Math.ceil((this.#gd.length * 4) / SECTOR);
    const gdBuf = Buffer.alloc(gdSectors * SECTOR);
    u32Bytes(this.#gd).copy(gdBuf);
    parts.push(marker(gdSectors, MARKER_GD), gdBuf);
    const gdOffset = sector + 1;
    sector += 1 + gdSectors;
    parts.push(marker(1, MARKER_FOOTER), buildSparseHeader({ ...this.h, gdOffset }), Buffer.alloc(SECTOR));
    await this.file.writevAt(parts, this.#metaStart);
    this.#finalized = true;
  }

  // ---- check and info ------------------------------------------------------------------

  async check(): Promise<ExtentCheck> {
    const r: ExtentCheck = { corruptions: 0, leaks: 0, messages: [], allocated: 0, total: Math.ceil(this.bytes / this.grainBytes), compressed: 0 };
    if (this.#stream) {
      await this.#drain(0);
      await this.#writing;
    }
    const name = this.file.path;
    const seen = new Map<number, number>();
    const meta: Array<[number, number, string]> = [[0, SECTOR, 'header']];
    if (this.h.descriptorOffset) meta.push([this.h.descriptorOffset * SECTOR, (this.h.descriptorOffset + this.h.descriptorSize) * SECTOR, 'descriptor']);
    const gdBytes = alignUp(this.#gd.length * 4, SECTOR);
    meta.push([this.h.gdOffset * SECTOR, this.h.gdOffset * SECTOR + gdBytes, 'grain directory']);
    if (this.#rgd) meta.push([this.h.rgdOffset * SECTOR, this.h.rgdOffset * SECTOR + gdBytes, 'redundant grain directory']);
    for (let i = 0; i < this.#gd.length; i++) {
      if (this.#gd[i]) meta.push([this.#gd[i]! * SECTOR, this.#gd[i]! * SECTOR + GTES_PER_GT * 4, `grain table ${i}`]);
      if (this.#rgd && this.#rgd[i]) meta.push([this.#rgd[i]! * SECTOR, this.#rgd[i]! * SECTOR + GTES_PER_GT * 4, `redundant grain table ${i}`]);
    }
    const fileEnd = this.#limit();
    for (let i = 0; i < this.#gd.length; i++) {
      let gt: Uint32Array | null;
      try {
        gt = await this.#gt(i);
      } catch (e) {
        r.corruptions++;
        r.messages.push(`${name}: ${(e as Error).message}`);
        continue;
      }
      if (this.#rgd) {
        const rs = this.#rgd[i]!;
        if ((rs === 0) !== (this.#gd[i] === 0)) {
          r.corruptions++;
          r.messages.push(`${name}: grain directory entry ${i} and its redundant copy disagree (${this.#gd[i]} vs ${rs})`);
        } else if (rs !== 0 && !this.#dirty.has(i)) {
          if (rs * SECTOR + GTES_PER_GT * 4 > this.file.size) {
            r.corruptions++;
            r.messages.push(`${name}: redundant grain table ${i} at ${hex(rs * SECTOR)} lies past the end of the file`);
          } else if (gt) {
            const b = await this.file.readStructure(rs * SECTOR, GTES_PER_GT * 4, `redundant grain table ${i}`);
            if (!b.equals(u32Bytes(gt))) {
              r.corruptions++;
              r.messages.push(`${name}: grain table ${i} and its redundant copy differ`);
            }
          }
        }
      }
      if (!gt) continue;
      for (let k = 0; k < GTES_PER_GT; k++) {
        const gte = gt[k]!;
        const grain = i * GTES_PER_GT + k;
        if (gte === 0 || (gte === GTE_ZEROED && this.h.flags & FLAG_ZERO_GRAIN)) continue;
        if (grain * this.grainBytes >= this.bytes) {
          r.corruptions++;
          r.messages.push(`${name}: grain table ${i} entry ${k} maps grain ${grain}, beyond the capacity`);
          continue;
        }
        const host = gte * SECTOR;
        const len = this.compressed ? SECTOR : this.grainBytes;
        if (host < Math.max(SECTOR, this.h.overHead * SECTOR) || host >= fileEnd) {
          r.corruptions++;
          r.messages.push(`${name}: grain ${grain} (grain table ${i} entry ${k}) points to ${hex(host)}, ${host >= fileEnd ? 'past the end of the file' : 'into the header and tables'}`);
          continue;
        }
        const clash = meta.find(([s, e]) => host < e && host + len > s);
        if (clash) {
          r.corruptions++;
          r.messages.push(`${name}: grain ${grain} at ${hex(host)} overlaps the ${clash[2]}`);
          continue;
        }
        const other = seen.get(host);
        if (other !== undefined) {
          r.corruptions++;
          r.messages.push(`${name}: grains ${other} and ${grain} share host offset ${hex(host)}`);
          continue;
        }
        seen.set(host, grain);
        r.allocated++;
        if (this.compressed) r.compressed++;
      }
    }
    if (!this.compressed) {
      // grain-sized slots between the first grain and the end of the file that no GTE names
      const first = this.h.overHead * SECTOR;
      const slots = Math.max(0, Math.floor((fileEnd - first) / this.grainBytes));
      const tableSlots = meta.filter(([s]) => s >= first).length;
      const unused = slots - r.allocated - tableSlots;
      if (unused > 0 && seen.size > 0) {
        r.leaks = unused;
        r.messages.push(`${name}: ${unused} grain-sized areas after the tables are not referenced by any grain table entry`);
      }
    }
    return r;
  }

  get imageEnd(): number {
    return this.#limit();
  }

  info(): Record<string, unknown> {
    return {
      type: 'SPARSE',
      version: this.h.version,
      'grain-size': this.grainBytes,
      compressed: this.compressed,
      'zeroed-grain': !!(this.h.flags & FLAG_ZERO_GRAIN),
      'redundant-gd': !!this.#rgd,
    };
  }
}

const PAD = Buffer.alloc(SECTOR);

function u32Bytes(a: Uint32Array): Buffer {
  const b = Buffer.allocUnsafe(a.length * 4);
  for (let i = 0; i < a.length; i++) b.writeUInt32LE(a[i]!, i * 4);
  return b;
}
