/**
 * ESXi delta (snapshot) extents, read-only:
 *
 * - vmfsSparse ("COWD", Virtual Disk Format 5.0, "ESXi Server Sparse Extents"): a 2 KiB
 *   header (magic, version, flags, numSectors, grainSize, gdOffset, numGDEntries,
 *   freeSector...), a grain directory of u32 sector offsets of grain tables, grain tables of
 *   4096 u32 entries, each the sector of a grain (0: not in this delta, read the parent).
 *   Grains are usually one sector.
 *
 * - seSparse (ESXi 5.5+ "space-efficient sparse"; not in the public spec). The layout here
 *   follows what qemu's reader establishes and checks strictly, refusing anything else: a
 *   512-byte constant header (magic 0xcafebabe, version 0x200000001, grain size 8 sectors,
 *   grain table size 64 sectors, no flags), a volatile header (magic 0xcafecafe; a journal
 *   to replay means the disk is dirty: refused), a grain directory of u64 entries (0, or
 *   0x1000000000000000 | grain table index) and grain tables of 4096 u64 entries whose top
 *   nibble says: 0 unallocated, 1 unmapped, 2 zero, 3 allocated (the cluster index split
 *   over bits 0-47 and 48-59).
 */
import { PolyvisorError, hex } from '../../errors.js';
import type { ImageFile } from '../io.js';
import { SECTOR, pushRun, type Run, type VmdkExtent } from './vmdk-sparse.js';

export const COWD_GTES = 4096;
const COWD_HEADER = 2048;
const GT_CACHE = 256;

export const SESPARSE_MAGIC = 0xcafebaben;
const SESPARSE_VOLATILE_MAGIC = 0xcafecafen;
const SESPARSE_VERSION = 0x200000001n;
const SE_GTES = 4096;

function corrupt(file: ImageFile, detail: string, structure: string, offset: number): PolyvisorError {
  return new PolyvisorError('ERR_CORRUPT', detail, { file: file.path, structure, offset });
}

/** Common table walk: a directory of tables of `perGt` entries, resolved per grain. */
abstract class TableExtent implements VmdkExtent {
  abstract readonly type: string;
  readonly file: ImageFile;
  readonly bytes: number;
  readonly grainBytes: number;
  readonly compressed = false;
  protected readonly cache = new Map<number, BigUint64Array | Uint32Array>();
  readonly #perGt: number;

  constructor(file: ImageFile, bytes: number, grainBytes: number, perGt: number) {
    this.file = file;
    this.bytes = bytes;
    this.grainBytes = grainBytes;
    this.#perGt = perGt;
  }

  /** host offset of grain table `i`, or 0 */
  protected abstract gtHost(i: number): number;
  protected abstract loadGt(i: number, host: number): Promise<BigUint64Array | Uint32Array>;
  /** decodes an entry: host byte offset, 0 (unallocated) or -1 (zero) */
  protected abstract entry(grain: number, v: bigint | number): number;

  async #gt(i: number): Promise<BigUint64Array | Uint32Array | null> {
    const c = this.cache.get(i);
    if (c) return c;
    const host = this.gtHost(i);
    if (host === 0) return null;
    const gt = await this.loadGt(i, host);
    if (this.cache.size >= GT_CACHE) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(i, gt);
    return gt;
  }

  async map(off: number, len: number): Promise<Run[]> {
    const runs: Run[] = [];
    const G = this.grainBytes;
    const end = off + len;
    let pos = off;
    while (pos < end) {
      const grain = Math.floor(pos / G);
      const inner = pos - grain * G;
      const gti = Math.floor(grain / this.#perGt);
      const gt = await this.#gt(gti);
      if (!gt) {
        const stop = Math.min(end, (gti + 1) * this.#perGt * G);
        pushRun(runs, { off: pos, len: stop - pos, kind: 'unallocated' });
        pos = stop;
        continue;
      }
      const n = Math.min(G - inner, end - pos);
      const host = this.entry(grain, gt[grain % this.#perGt]!);
      if (host === 0) pushRun(runs, { off: pos, len: n, kind: 'unallocated' });
      else if (host < 0) pushRun(runs, { off: pos, len: n, kind: 'zero' });
      else pushRun(runs, { off: pos, len: n, kind: 'data', host: host + inner });
      pos += n;
    }
    return runs;
  }

  async flush(): Promise<void> {}

  abstract info(): Record<string, unknown>;
}

export class CowdExtent extends TableExtent {
  readonly type = 'VMFSSPARSE';
  readonly #gd: Uint32Array;
  readonly #gdOffset: number;
  readonly #grainSectors: number;

  private constructor(file: ImageFile, bytes: number, grainSectors: number, gd: Uint32Array, gdOffset: number) {
    super(file, bytes, grainSectors * SECTOR, COWD_GTES);
    this.#gd = gd;
    this.#gdOffset = gdOffset;
    this.#grainSectors = grainSectors;
  }

  static async open(file: ImageFile): Promise<CowdExtent> {
    const h = await file.readStructure(0, COWD_HEADER, 'COWD header');
    if (h.toString('latin1', 0, 4) !== 'COWD') throw corrupt(file, `bad magic ${h.subarray(0, 4).toString('hex')} (expected "COWD")`, 'COWD header', 0);
    const version = h.readUInt32LE(4);
    const numSectors = h.readUInt32LE(12);
    const grainSize = h.readUInt32LE(16);
    const gdOffset = h.readUInt32LE(20);
    const numGDEntries = h.readUInt32LE(24);
    if (version !== 1) throw new PolyvisorError('ERR_UNSUPPORTED', `COWD version ${version} is not supported (1)`, { file: file.path, structure: 'COWD header', offset: 4 });
    if (grainSize < 1 || grainSize > 0x200000 || (grainSize & (grainSize - 1)) !== 0) throw corrupt(file, `grainSize ${grainSize} sectors is not a power of two up to 2097152`, 'COWD header', 16);
    if (numSectors === 0) throw corrupt(file, 'numSectors is 0', 'COWD header', 12);
    const need = Math.ceil(numSectors / (grainSize * COWD_GTES));
    if (numGDEntries < need || numGDEntries > need + 1024) throw corrupt(file, `numGDEntries ${numGDEntries} does not cover ${numSectors} sectors (${need} needed)`, 'COWD header', 24);
    if (gdOffset < COWD_HEADER / SECTOR || gdOffset * SECTOR + numGDEntries * 4 > file.size) {
      throw corrupt(file, `grain directory at sector ${gdOffset} lies ${gdOffset * SECTOR >= file.size ? 'past the end of the file' : 'in the header or runs past the end of the file'}`, 'COWD header', 20);
    }
    const b = await file.readStructure(gdOffset * SECTOR, numGDEntries * 4, 'COWD grain directory');
    const gd = new Uint32Array(numGDEntries);
    for (let i = 0; i < numGDEntries; i++) gd[i] = b.readUInt32LE(i * 4);
    return new CowdExtent(file, numSectors * SECTOR, grainSize, gd, gdOffset);
  }

  protected gtHost(i: number): number {
    const s = this.#gd[i] ?? 0;
    if (s === 0) return 0;
    if (s * SECTOR < COWD_HEADER || s * SECTOR + COWD_GTES * 4 > this.file.size) {
      throw corrupt(this.file, `grain directory entry ${i} points to a grain table at ${hex(s * SECTOR)}, ${s * SECTOR < COWD_HEADER ? 'inside the header' : 'past the end of the file'}`, 'COWD grain directory', this.#gdOffset * SECTOR + i * 4);
    }
    return s * SECTOR;
  }

  protected async loadGt(i: number, host: number): Promise<Uint32Array> {
    const b = await this.file.readStructure(host, COWD_GTES * 4, `COWD grain table ${i}`);
    const gt = new Uint32Array(COWD_GTES);
    for (let k = 0; k < COWD_GTES; k++) gt[k] = b.readUInt32LE(k * 4);
    return gt;
  }

  protected entry(grain: number, v: bigint | number): number {
    const s = Number(v);
    if (s === 0) return 0;
    const host = s * SECTOR;
    if (host < COWD_HEADER || host >= this.file.size) {
      const gti = Math.floor(grain / COWD_GTES);
      throw corrupt(this.file, `grain ${grain} points to ${hex(host)}, ${host < COWD_HEADER ? 'inside the header' : 'past the end of the file'}`, `COWD grain table ${gti}`, (this.#gd[gti] ?? 0) * SECTOR + (grain % COWD_GTES) * 4);
    }
    return host;
  }

  info(): Record<string, unknown> {
    return { type: 'VMFSSPARSE', 'grain-size': this.#grainSectors * SECTOR };
  }
}

export class SeSparseExtent extends TableExtent {
  readonly type = 'SESPARSE';
  readonly #gd: BigUint64Array;
  readonly #gdOffset: number;
  readonly #gtsOffset: number;
  readonly #grainsOffset: number;

  private constructor(file: ImageFile, bytes: number, gd: BigUint64Array, gdOffset: number, gtsOffset: number, grainsOffset: number) {
    super(file, bytes, 8 * SECTOR, SE_GTES);
    this.#gd = gd;
    this.#gdOffset = gdOffset;
    this.#gtsOffset = gtsOffset;
    this.#grainsOffset = grainsOffset;
  }

  static async open(file: ImageFile): Promise<SeSparseExtent> {
    const h = await file.readStructure(0, SECTOR, 'seSparse constant header');
    const f = (i: number) => h.readBigUInt64LE(i * 8);
    const unsupported = (detail: string, at: number) => new PolyvisorError('ERR_UNSUPPORTED', `seSparse: ${detail}`, { file: file.path, structure: 'seSparse constant header', offset: at });
    if (f(0) !== SESPARSE_MAGIC) throw corrupt(file, `bad magic ${hex(f(0))} (expected 0xcafebabe)`, 'seSparse constant header', 0);
    if (f(1) !== SESPARSE_VERSION) throw unsupported(`version ${hex(f(1))} is not supported (0x200000001)`, 8);
    if (f(3) !== 8n) throw unsupported(`grain size ${f(3)} sectors is not supported (8)`, 24);
    if (f(4) !== 64n) throw unsupported(`grain table size ${f(4)} sectors is not supported (64)`, 32);
    if (f(5) !== 0n) throw unsupported(`flags ${hex(f(5))} are not supported`, 40);
    for (let i = 6; i < 10; i++) if (f(i) !== 0n) throw unsupported('reserved fields are not zero', i * 8);
    if (!h.subarray(26 * 8).every((x) => x === 0)) throw unsupported('header padding is not zero', 26 * 8);
    const num = (i: number, what: string): number => {
      const v = f(i);
      if (v > 2n ** 42n) throw corrupt(file, `${what} ${hex(v)} is out of range`, 'seSparse constant header', i * 8);
      return Number(v);
    };
    const capacity = num(2, 'capacity');
    const volOff = num(10, 'volatile header offset');
    const gdOff = num(16, 'grain directory offset');
    const gdSize = num(17, 'grain directory size');
    const gtsOff = num(18, 'grain tables offset');
    const gtsSize = num(19, 'grain tables size');
    const grainsOff = num(24, 'grains offset');
    const grainsSize = num(25, 'grains size');
    if (capacity === 0) throw corrupt(file, 'capacity is 0', 'seSparse constant header', 16);
    const inFile = (off: number, size: number, what: string, at: number) => {
      if (off === 0 || (off + size) * SECTOR > file.size) throw new PolyvisorError(off * SECTOR >= file.size ? 'ERR_CORRUPT' : 'ERR_TRUNCATED', `${what} (sectors ${off}+${size}) lies outside the file`, { file: file.path, structure: 'seSparse constant header', offset: at });
    };
    inFile(volOff, 1, 'volatile header', 80);
    inFile(gdOff, gdSize, 'grain directory', 128);
    const v = await file.readStructure(volOff * SECTOR, SECTOR, 'seSparse volatile header');
    if (v.readBigUInt64LE(0) !== SESPARSE_VOLATILE_MAGIC) throw corrupt(file, `bad volatile header magic ${hex(v.readBigUInt64LE(0))}`, 'seSparse volatile header', volOff * SECTOR);
    if (v.readBigUInt64LE(24) !== 0n) throw new PolyvisorError('ERR_UNSUPPORTED', 'seSparse: the journal needs replaying (the disk was not closed cleanly); consolidate it on ESXi first', { file: file.path, structure: 'seSparse volatile header', offset: volOff * SECTOR + 24 });
    const entries = Math.ceil(capacity / (8 * SE_GTES));
    if ((gdSize * SECTOR) / 8 < entries) throw corrupt(file, `grain directory of ${gdSize} sectors cannot cover ${capacity} sectors`, 'seSparse constant header', 136);
    const b = await file.readStructure(gdOff * SECTOR, entries * 8, 'seSparse grain directory');
    const gd = new BigUint64Array(entries);
    for (let i = 0; i < entries; i++) gd[i] = b.readBigUInt64LE(i * 8);
    void gtsSize;
    void grainsSize;
    return new SeSparseExtent(file, capacity * SECTOR, gd, gdOff * SECTOR, gtsOff * SECTOR, grainsOff * SECTOR);
  }

  protected gtHost(i: number): number {
    const v = this.#gd[i] ?? 0n;
    if (v === 0n) return 0;
    const at = this.#gdOffset + i * 8;
    if (v >> 32n !== 0x10000000n) throw corrupt(this.file, `grain directory entry ${i} holds ${hex(v)}, not an allocated table`, 'seSparse grain directory', at);
    const host = this.#gtsOffset + Number(v & 0xffffffffn) * SE_GTES * 8;
    if (host + SE_GTES * 8 > this.file.size) throw corrupt(this.file, `grain directory entry ${i} points to a grain table at ${hex(host)}, past the end of the file`, 'seSparse grain directory', at);
    return host;
  }

  protected async loadGt(i: number, host: number): Promise<BigUint64Array> {
    const b = await this.file.readStructure(host, SE_GTES * 8, `seSparse grain table ${i}`);
    const gt = new BigUint64Array(SE_GTES);
    for (let k = 0; k < SE_GTES; k++) gt[k] = b.readBigUInt64LE(k * 8);
    return gt;
  }

  protected entry(grain: number, raw: bigint | number): number {
    const v = BigInt(raw);
    const kind = v >> 60n;
    const where = () => `seSparse grain table ${Math.floor(grain / SE_GTES)}`;
    if (kind === 0n) {
      if (v !== 0n) throw corrupt(this.file, `grain ${grain}: unallocated entry holds stray bits ${hex(v)}`, where(), 0);
      return 0;
    }
    if (kind === 1n || kind === 2n) return -1; // unmapped or zero: reads as zeroes
    if (kind !== 3n) throw corrupt(this.file, `grain ${grain}: entry ${hex(v)} has unknown type ${kind}`, where(), 0);
    const index = ((v & 0x0fff000000000000n) >> 48n) | ((v & 0x0000ffffffffffffn) << 12n);
    const host = this.#grainsOffset + Number(index) * this.grainBytes;
    if (!Number.isSafeInteger(host) || host >= this.file.size) throw corrupt(this.file, `grain ${grain} points to ${hex(host)}, past the end of the file`, where(), 0);
    return host;
  }

  info(): Record<string, unknown> {
    return { type: 'SESPARSE', 'grain-size': this.grainBytes };
  }
}
