/**
 * The File Allocation Table: cluster chains, free clusters, and writing every FAT copy.
 *
 * Source: fatgen103 section 4 ("FAT Data Structure"): entry widths of 12, 16 and 32 bits
 * (FAT32 uses the low 28 and keeps the high 4 on write), 0 = free, >= 0xFF8/0xFFF8/0x0FFFFFF8
 * = end of chain, 0xFF7/0xFFF7/0x0FFFFFF7 = bad cluster. The FAT is read in 64 KiB chunks on
 * demand (a large FAT32 is never loaded whole); changed chunks go to every mirrored FAT (or
 * only the active one when BPB_ExtFlags turns mirroring off) when the caller commits.
 * Chains are followed with a step cap and a visited set: a loop or a link outside the data
 * region is ERR_CORRUPT naming the cluster.
 */
import { PolyvisorError } from '../errors.js';
import type { FatGeometry } from './fat-bpb.js';
import type { Volume } from './volume.js';

const CHUNK = 64 * 1024;

export class FatTable {
  readonly #v: Volume;
  readonly #g: FatGeometry;
  readonly #chunks = new Map<number, Buffer>();
  readonly #dirty = new Set<number>();
  /** where the next free-cluster search starts (FSInfo FSI_Nxt_Free, then our own) */
  nextFree = 2;

  constructor(v: Volume, g: FatGeometry) {
    this.#v = v;
    this.#g = g;
  }

  /** the lowest value that means "end of chain" */
  get eoc(): number {
    return this.#g.fatType === 12 ? 0xff8 : this.#g.fatType === 16 ? 0xfff8 : 0x0ffffff8;
  }

  get bad(): number {
    return this.eoc - 1;
  }

  /** the FAT copy reads come from */
  get #readFat(): number {
    return this.#g.activeFat >= 0 ? this.#g.activeFat : 0;
  }

  async #chunk(i: number): Promise<Buffer> {
    let c = this.#chunks.get(i);
    if (!c) {
      const len = Math.min(CHUNK, this.#g.fatSize - i * CHUNK);
      c = await this.#v.read(this.#g.fatOffset + this.#readFat * this.#g.fatSize + i * CHUNK, len);
      this.#chunks.set(i, c);
    }
    return c;
  }

  async #byte(off: number): Promise<number> {
    return (await this.#chunk(Math.floor(off / CHUNK)))[off % CHUNK]!;
  }

  async #setByte(off: number, value: number): Promise<void> {
    const i = Math.floor(off / CHUNK);
    (await this.#chunk(i))[off % CHUNK] = value;
    this.#dirty.add(i);
  }

  /** the raw FAT entry of cluster `n` (28 bits on FAT32) */
  async get(n: number): Promise<number> {
    switch (this.#g.fatType) {
      case 12: {
        // 1.5 bytes per entry: even clusters take the low 12 bits, odd ones the high 12
        const off = n + (n >> 1);
        const w = (await this.#byte(off)) | ((await this.#byte(off + 1)) << 8);
        return n & 1 ? w >> 4 : w & 0xfff;
      }
      case 16: {
        const off = n * 2;
        return (await this.#chunk(Math.floor(off / CHUNK))).readUInt16LE(off % CHUNK);
      }
      default: {
        const off = n * 4;
        return (await this.#chunk(Math.floor(off / CHUNK))).readUInt32LE(off % CHUNK) & 0x0fffffff;
      }
    }
  }

  async set(n: number, value: number): Promise<void> {
    switch (this.#g.fatType) {
      case 12: {
        const off = n + (n >> 1);
        const lo = await this.#byte(off);
        const hi = await this.#byte(off + 1);
        let w = lo | (hi << 8);
        w = n & 1 ? (w & 0x000f) | ((value & 0xfff) << 4) : (w & 0xf000) | (value & 0xfff);
        await this.#setByte(off, w & 0xff);
        await this.#setByte(off + 1, w >> 8);
        return;
      }
      case 16: {
        const off = n * 2;
        const i = Math.floor(off / CHUNK);
        (await this.#chunk(i)).writeUInt16LE(value & 0xffff, off % CHUNK);
        this.#dirty.add(i);
        return;
      }
      default: {
        // fatgen103 4.1: the high 4 bits of a FAT32 entry are reserved and kept as found
        const off = n * 4;
        const i = Math.floor(off / CHUNK);
        const c = await this.#chunk(i);
        const old = c.readUInt32LE(off % CHUNK);
        c.writeUInt32LE(((old & 0xf0000000) | (value & 0x0fffffff)) >>> 0, off % CHUNK);
        this.#dirty.add(i);
      }
    }
  }

  #corrupt(detail: string, cluster: number): PolyvisorError {
    return new PolyvisorError('ERR_CORRUPT', detail, { file: this.#v.name, structure: `FAT entry ${cluster}` });
  }

  /** is `n` a data cluster of this volume */
  valid(n: number): boolean {
    return n >= 2 && n <= this.#g.clusterCount + 1;
  }

  /**
   * The clusters of the chain starting at `first`. `count` given: exactly that many are
   * needed (a file's ceil(size / cluster size)), and the chain may not end sooner. Otherwise
   * the chain runs to its end-of-chain mark, and at most `max` clusters are allowed.
   */
  async chain(first: number, what: string, count?: number, max = this.#g.clusterCount): Promise<number[]> {
    const out: number[] = [];
    if (count === 0) return out;
    const seen = new Set<number>();
    let c = first;
    for (;;) {
      if (!this.valid(c)) {
        throw this.#corrupt(`${what}: cluster ${c} is outside the data region (2-${this.#g.clusterCount + 1})`, out.length ? out[out.length - 1]! : c);
      }
      if (seen.has(c)) throw this.#corrupt(`${what}: the cluster chain loops back to cluster ${c}`, out[out.length - 1]!);
      seen.add(c);
      out.push(c);
      if (count !== undefined && out.length === count) return out;
      if (out.length > max) throw this.#corrupt(`${what}: the cluster chain is longer than ${max} clusters`, c);
      const next = await this.get(c);
      if (next >= this.eoc) {
        if (count !== undefined) throw this.#corrupt(`${what}: the cluster chain ends after ${out.length} clusters, ${count} are needed`, c);
        return out;
      }
      if (next === this.bad) throw this.#corrupt(`${what}: the chain reaches a cluster marked bad`, c);
      if (next === 0) throw this.#corrupt(`${what}: the chain runs into free cluster ${c}`, c);
      c = next;
    }
  }

  /**
   * Finds `n` free clusters (first fit from nextFree, wrapping once) and links them into a
   * chain ending in end-of-chain. Nothing changes when there are fewer than `n`.
   */
  async allocate(n: number): Promise<number[]> {
    if (n === 0) return [];
    const total = this.#g.clusterCount;
    const found: number[] = [];
    let c = this.valid(this.nextFree) ? this.nextFree : 2;
    for (let step = 0; step < total && found.length < n; step++) {
      if ((await this.get(c)) === 0) found.push(c);
      c = c + 1 > total + 1 ? 2 : c + 1;
    }
    if (found.length < n) {
      throw new PolyvisorError('ERR_RANGE', `no room: ${n} free clusters are needed, the file system has ${found.length}`, { file: this.#v.name, structure: 'FAT' });
    }
    for (let i = 0; i < n; i++) await this.set(found[i]!, i + 1 < n ? found[i + 1]! : 0x0fffffff);
    this.nextFree = found[n - 1]! + 1 > total + 1 ? 2 : found[n - 1]! + 1;
    return found;
  }

  /** Marks every cluster of `chain` free. */
  async free(chain: number[]): Promise<void> {
    for (const c of chain) await this.set(c, 0);
  }

  /** Counts free clusters by reading the whole FAT (FSInfo's count is only a hint). */
  async countFree(): Promise<number> {
    let free = 0;
    for (let c = 2; c <= this.#g.clusterCount + 1; c++) if ((await this.get(c)) === 0) free++;
    return free;
  }

  /** Writes changed chunks to every FAT copy (the active one only when mirroring is off). */
  async commit(): Promise<void> {
    const copies = this.#g.activeFat >= 0 ? [this.#g.activeFat] : [...Array(this.#g.numFats).keys()];
    for (const i of [...this.#dirty].sort((a, b) => a - b)) {
      const c = this.#chunks.get(i)!;
      for (const f of copies) await this.#v.write(this.#g.fatOffset + f * this.#g.fatSize + i * CHUNK, c);
    }
    this.#dirty.clear();
  }

  /** Forgets uncommitted changes (after a failed operation). */
  discard(): void {
    for (const i of this.#dirty) this.#chunks.delete(i);
    this.#dirty.clear();
  }
}
