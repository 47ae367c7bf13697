/**
 * Block access for the ext reader: block numbers to volume bytes, bounds checks that name the
 * structure being read, a small cache for metadata blocks, and the journal overlay.
 *
 * The overlay holds the blocks a journal replay produced (ext4-journal.ts): reads see them in
 * place of the volume's blocks, so a file system whose journal needs recovery reads as the
 * kernel would see it after replay, without one byte written to the guest's disk.
 */
import { PolyvisorError } from '../errors.js';
import type { Volume } from './volume.js';

/** Metadata blocks kept in memory: directory, extent, bitmap and inode-table blocks. */
const CACHE_BLOCKS = 4096;

export class ExtDisk {
  readonly volume: Volume;
  readonly blockSize: number;
  /** s_blocks_count once the superblock is parsed; every block number is checked against it */
  blocksCount: number;
  /** blocks replayed from the journal, in memory only */
  readonly overlay = new Map<number, Buffer>();
  readonly #cache = new Map<number, Buffer>();

  constructor(volume: Volume, blockSize: number, blocksCount: number) {
    this.volume = volume;
    this.blockSize = blockSize;
    this.blocksCount = blocksCount;
  }

  get name(): string {
    return this.volume.name;
  }

  /** Throws ERR_CORRUPT when [block, block+count) is not inside the file system, ERR_TRUNCATED when not inside the volume. */
  check(block: number, count: number, what: string): void {
    if (!Number.isSafeInteger(block) || block < 0 || count < 0 || block + count > this.blocksCount) {
      throw new PolyvisorError('ERR_CORRUPT', `${what}: block ${block}${count > 1 ? ` (${count} blocks)` : ''} lies outside the file system (${this.blocksCount} blocks)`, { file: this.name });
    }
    if ((block + count) * this.blockSize > this.volume.size) {
      throw new PolyvisorError('ERR_TRUNCATED', `${what}: block ${block} lies past the end of the volume (${this.volume.size} bytes): the file system is bigger than its partition`, { file: this.name });
    }
  }

  /**
   * One block of metadata, cached. The buffer is shared with the cache: callers that change
   * it must copy it first (or write it back with writeBlock).
   */
  async readBlock(block: number, what: string): Promise<Buffer> {
    const hit = this.#cache.get(block);
    if (hit) {
      // refresh its place in the insertion order, which is the eviction order
      this.#cache.delete(block);
      this.#cache.set(block, hit);
      return hit;
    }
    this.check(block, 1, what);
    const b = this.overlay.get(block) ?? (await this.volume.read(block * this.blockSize, this.blockSize));
    this.#remember(block, b);
    return b;
  }

  /** `count` consecutive blocks, uncached (file data), with journal-overlay blocks patched in. */
  async readBlocks(block: number, count: number, what: string): Promise<Buffer> {
    this.check(block, count, what);
    const bs = this.blockSize;
    const data = await this.volume.read(block * bs, count * bs);
    if (this.overlay.size) {
      for (let i = 0; i < count; i++) {
        const o = this.overlay.get(block + i);
        if (o) o.copy(data, i * bs);
      }
    }
    return data;
  }

  /** Writes whole blocks from `data` at `block`, keeping the cache in step. */
  async writeBlocks(block: number, data: Uint8Array, what: string): Promise<void> {
    const bs = this.blockSize;
    const count = Math.ceil(data.length / bs);
    this.check(block, count, what);
    await this.volume.write(block * bs, data);
    for (let i = 0; i < count; i++) {
      if (this.#cache.has(block + i)) {
        const b = Buffer.alloc(bs);
        Buffer.from(data.buffer, data.byteOffset + i * bs, Math.min(bs, data.length - i * bs)).copy(b);
        this.#cache.set(block + i, b);
      }
    }
  }

  /** Writes bytes at a byte offset of the volume (the superblock), keeping cached blocks in step. */
  async writeBytes(offset: number, data: Buffer): Promise<void> {
    await this.volume.write(offset, data);
    const bs = this.blockSize;
    for (let blk = Math.floor(offset / bs); blk * bs < offset + data.length; blk++) {
      const c = this.#cache.get(blk);
      if (!c) continue;
      const from = Math.max(offset, blk * bs);
      const to = Math.min(offset + data.length, (blk + 1) * bs);
      data.copy(c, from - blk * bs, from - offset, to - offset);
    }
  }

  #remember(block: number, b: Buffer): void {
    if (this.#cache.size >= CACHE_BLOCKS) {
      const oldest = this.#cache.keys().next().value;
      if (oldest !== undefined) this.#cache.delete(oldest);
    }
    this.#cache.set(block, b);
  }

  /** Forgets every cached block (after the overlay or superblock changed underneath). */
  dropCache(): void {
    this.#cache.clear();
  }
}
