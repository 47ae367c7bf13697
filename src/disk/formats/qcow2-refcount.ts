/**
 * qcow2 host cluster management ("Host cluster management" in qcow2.txt): the two-level
 * refcount structure held in memory while an image is written, the cluster allocator, and
 * the flush that gives new refcount blocks and a grown refcount table their own clusters.
 *
 * Allocation is append-only: new clusters come from the end of the file, so a sequential
 * run of new data clusters is contiguous on the host and goes out in one vectored write.
 * Clusters freed while writing keep refcount 0 (holes qemu-img check does not call leaks).
 */
import { PolyvisorError, hex } from '../../errors.js';
import { isZero, type ImageFile } from '../io.js';

interface RefcountBlock {
  buf: Buffer;
  /** host offset of the block, 0 while it has not been given a cluster yet */
  host: number;
  dirty: boolean;
}

const TWO32 = 2 ** 32;

export class Refcounts {
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly order: number;
  readonly bits: number;
  /** log2 of refcount entries per block: cluster_size * 8 / refcount_bits */
  readonly blockShift: number;
  readonly max: number;
  /** refcount table: block host offsets, index = block number; length = table capacity */
  table: number[];
  tableOffset: number;
  tableClusters: number;
  tableDirty = false;
  /** first cluster-aligned host offset past everything allocated */
  nextFree: number;
  readonly #blocks = new Map<number, RefcountBlock>();
  readonly #path: string;

  constructor(path: string, clusterBits: number, order: number, nextFree: number) {
    this.#path = path;
    this.clusterBits = clusterBits;
    this.clusterSize = 2 ** clusterBits;
    this.order = order;
    this.bits = 2 ** order;
    this.blockShift = clusterBits + 3 - order;
    this.max = this.bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** this.bits - 1;
    this.table = [];
    this.tableOffset = 0;
    this.tableClusters = 0;
    this.nextFree = nextFree;
  }

  /**
   * Loads the refcount table and every refcount block of an existing image (bounded by the
   * file: each block is a distinct cluster inside it).
   */
  static async load(file: ImageFile, clusterBits: number, order: number, tableOffset: number, tableClusters: number): Promise<Refcounts> {
    const cs = 2 ** clusterBits;
    const rc = new Refcounts(file.path, clusterBits, order, Math.ceil(file.size / cs) * cs);
    rc.tableOffset = tableOffset;
    rc.tableClusters = tableClusters;
    const raw = await file.readStructure(tableOffset, tableClusters * cs, 'refcount table');
    const n = raw.length / 8;
    rc.table = new Array<number>(n).fill(0);
    for (let i = 0; i < n; i++) {
      const hi = raw.readUInt32BE(i * 8);
      const lo = raw.readUInt32BE(i * 8 + 4);
      if (hi === 0 && lo === 0) continue;
      const off = hi * TWO32 + lo;
      if (hi >= 0x200000 || off % cs !== 0) {
        throw new PolyvisorError('ERR_CORRUPT', `refcount table entry ${i} holds unaligned offset ${hex(off)}`, { file: file.path, structure: 'refcount table', offset: tableOffset + i * 8 });
      }
      if (off + cs > file.size) {
        throw new PolyvisorError('ERR_CORRUPT', `refcount table entry ${i} points past end of file (${hex(off)})`, { file: file.path, structure: 'refcount table', offset: tableOffset + i * 8 });
      }
      rc.table[i] = off;
      const buf = await file.readStructure(off, cs, `refcount block ${i}`);
      rc.#blocks.set(i, { buf, host: off, dirty: false });
    }
    return rc;
  }

  #block(cluster: number, create: boolean): RefcountBlock | undefined {
    const idx = Math.floor(cluster / 2 ** this.blockShift);
    let b = this.#blocks.get(idx);
    if (!b && create) {
      b = { buf: Buffer.alloc(this.clusterSize), host: 0, dirty: true };
      this.#blocks.set(idx, b);
    }
    return b;
  }

  get(cluster: number): number {
    const b = this.#block(cluster, false);
    if (!b) return 0;
    const i = cluster % 2 ** this.blockShift;
    return readRefcount(b.buf, i, this.bits);
  }

  set(cluster: number, value: number): void {
    if (value < 0 || value > this.max) {
      throw new PolyvisorError('ERR_INTERNAL', `refcount ${value} of cluster ${cluster} does not fit in ${this.bits} bits`, { file: this.#path, structure: 'refcount block' });
    }
    const b = this.#block(cluster, value !== 0);
    if (!b) return; // setting 0 where no block exists: already 0
    writeRefcount(b.buf, cluster % 2 ** this.blockShift, this.bits, value);
    b.dirty = true;
  }

  /** Drops one reference to every cluster touched by [offset, offset+length). */
  release(offset: number, length: number): void {
    const first = Math.floor(offset / this.clusterSize);
    const last = Math.floor((offset + length - 1) / this.clusterSize);
    for (let c = first; c <= last; c++) {
      const v = this.get(c);
      if (v === 0) {
        throw new PolyvisorError('ERR_CORRUPT', `cluster ${hex(c * this.clusterSize)} is referenced but its refcount is already 0`, { file: this.#path, structure: 'refcount block', offset: c * this.clusterSize });
      }
      this.set(c, v - 1);
    }
  }

  /** Allocates `n` contiguous clusters at the end of the file with refcount 1. */
  allocate(n: number): number {
    const cs = this.clusterSize;
    let start = this.nextFree;
    // Clusters past the file's end should have refcount 0; skip any that do not.
    for (let k = 0; k < n; k++) {
      if (this.get(start / cs + k) !== 0) {
        start += (k + 1) * cs;
        k = -1;
      }
    }
    for (let k = 0; k < n; k++) this.set(start / cs + k, 1);
    this.nextFree = start + n * cs;
    return start;
  }

  /**
   * Gives every refcount block that holds a non-zero count a cluster, and the table room
   * for every block. Allocating a block or a table can itself need a new block, so this
   * repeats until nothing changes (each round only allocates past the previous ones, and a
   * block covers far more clusters than a round allocates, so it ends within a few rounds).
   * The old table's clusters are freed once a new one is in place.
   */
  settle(): void {
    const cs = this.clusterSize;
    const oldTable = this.tableClusters > 0 ? { offset: this.tableOffset, clusters: this.tableClusters } : null;
    let relocated = false;
    for (let round = 0; ; round++) {
      if (round > 100) throw new PolyvisorError('ERR_INTERNAL', 'refcount structure did not settle', { file: this.#path });
      let changed = false;
      for (const [idx, b] of this.#blocks) {
        if (b.host === 0 && !isZero(b.buf)) {
          b.host = this.allocate(1);
          b.dirty = true;
          this.#setTableEntry(idx, b.host);
          changed = true;
        }
      }
      let needEntries = 0;
      for (const [idx, b] of this.#blocks) if (b.host !== 0 && idx + 1 > needEntries) needEntries = idx + 1;
      if (needEntries > this.table.length) {
        // Grow with headroom so that appending data does not relocate the table every flush.
        const entries = needEntries + Math.ceil(needEntries / 2) + 1;
        const clusters = Math.ceil((entries * 8) / cs);
        const at = this.allocate(clusters);
        this.tableOffset = at;
        this.tableClusters = clusters;
        const t = new Array<number>((clusters * cs) / 8).fill(0);
        for (let i = 0; i < this.table.length; i++) t[i] = this.table[i]!;
        this.table = t;
        this.tableDirty = true;
        relocated = true;
        changed = true;
      }
      if (!changed) break;
    }
    if (relocated && oldTable) this.release(oldTable.offset, oldTable.clusters * cs);
  }

  #setTableEntry(idx: number, host: number): void {
    if (idx < this.table.length) {
      this.table[idx] = host;
      this.tableDirty = true;
    }
    // else: the table grows in settle(); the new table copies blocks below
  }

  /** Writes dirty blocks and the table. Call after settle(). */
  async write(file: ImageFile): Promise<void> {
    const dirty = this.#dirtyBlocks();
    let i = 0;
    while (i < dirty.length) {
      // contiguous blocks go out in one vectored write
      let j = i + 1;
      while (j < dirty.length && j - i < 512 && dirty[j]!.host === dirty[j - 1]!.host + this.clusterSize) j++;
      await file.writevAt(dirty.slice(i, j).map((b) => b.buf), dirty[i]!.host);
      for (let k = i; k < j; k++) dirty[k]!.dirty = false;
      i = j;
    }
    if (this.tableDirty) {
      await file.writeAt(this.#tableBuffer(), this.tableOffset);
      this.tableDirty = false;
    }
  }

  /**
   * Copies dirty blocks and the table into `image`, an image being built in memory from
   * offset 0 (a new image's metadata goes out in one write: see qcow2.ts). Call after settle().
   */
  writeInto(image: Buffer): void {
    for (const b of this.#dirtyBlocks()) {
      b.buf.copy(image, b.host);
      b.dirty = false;
    }
    if (this.tableDirty) {
      this.#tableBuffer().copy(image, this.tableOffset);
      this.tableDirty = false;
    }
  }

  /** Dirty blocks that have a cluster, by host offset; table entries made current first. */
  #dirtyBlocks(): RefcountBlock[] {
    // entries for blocks that got a home while the table was too small
    for (const [idx, b] of this.#blocks) {
      if (b.host !== 0 && this.table[idx] !== b.host) {
        this.table[idx] = b.host;
        this.tableDirty = true;
      }
    }
    return [...this.#blocks.values()].filter((b) => b.dirty && b.host !== 0).sort((a, b) => a.host - b.host);
  }

  #tableBuffer(): Buffer {
    const buf = Buffer.alloc(this.tableClusters * this.clusterSize);
    // Only blocks have entries (load() and settle() set an entry for a block alone), so the
    // entries are written by walking the few blocks, not the table: a new image's table has
    // 8192 slots, and a loop over them in code not yet optimised took milliseconds of
    // `polyvisor run`'s start.
    for (const idx of this.#blocks.keys()) {
      const v = this.table[idx] ?? 0;
      if (v !== 0) {
        buf.writeUInt32BE(Math.floor(v / TWO32), idx * 8);
        buf.writeUInt32BE(v % TWO32, idx * 8 + 4);
      }
    }
    return buf;
  }
}

/** Refcount entry `i` of a block; sub-byte widths count from the least significant bit. */
export function readRefcount(buf: Buffer, i: number, bits: number): number {
  switch (bits) {
    case 16:
      return buf.readUInt16BE(i * 2);
    case 8:
      return buf[i]!;
    case 32:
      return buf.readUInt32BE(i * 4);
    case 64: {
      const hi = buf.readUInt32BE(i * 8);
      return hi * TWO32 + buf.readUInt32BE(i * 8 + 4);
    }
    default: {
      const bit = i * bits;
      return (buf[bit >>> 3]! >>> (bit & 7)) & ((1 << bits) - 1);
    }
  }
}

function writeRefcount(buf: Buffer, i: number, bits: number, v: number): void {
  switch (bits) {
    case 16:
      buf.writeUInt16BE(v, i * 2);
      return;
    case 8:
      buf[i] = v;
      return;
    case 32:
      buf.writeUInt32BE(v, i * 4);
      return;
    case 64:
      buf.writeUInt32BE(Math.floor(v / TWO32), i * 8);
      buf.writeUInt32BE(v % TWO32, i * 8 + 4);
      return;
    default: {
      const bit = i * bits;
      const mask = ((1 << bits) - 1) << (bit & 7);
      const byte = bit >>> 3;
      buf[byte] = (buf[byte]! & ~mask) | ((v << (bit & 7)) & mask);
    }
  }
}
