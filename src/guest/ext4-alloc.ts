/**
 * Block groups at run time: the descriptors, the block and inode bitmaps, and allocation.
 *
 * Bitmaps (Documentation/filesystems/ext4/bitmaps.rst): one bit per block (or inode) of the
 * group, one block each. With gdt_csum or metadata_csum a group may be flagged BLOCK_UNINIT or
 * INODE_UNINIT (group_descr.rst, bg_flags): its bitmap block was never written and the bitmap is
 * what it would be for an empty group: only the group's own metadata in use. Such a bitmap is
 * computed here (as ext4_init_block_bitmap does) and written, with the flag cleared, the first
 * time something is allocated in the group.
 *
 * Every change stays in memory until commit(), which writes the changed bitmaps (their
 * checksums going into the descriptors), then the changed descriptor-table blocks (checksums
 * sealed), then the superblock's free counts. Only the primary descriptor table and superblock
 * are updated, as the kernel does; the backups are for e2fsck after a disaster.
 */
import { PolyvisorError, hex } from '../errors.js';
import { crc32c } from './ext4-csum.js';
import type { ExtDisk } from './ext4-disk.js';
import {
  BG_BLOCK_UNINIT,
  BG_INODE_UNINIT,
  BG_INODE_ZEROED,
  GroupDesc,
  descBlockLocation,
  descPerBlock,
  descTableBlocks,
  groupBlockCount,
  groupFirstBlock,
  hasSuper,
  inodeTableBlocks,
  validateGroupDesc,
} from './ext4-group.js';
import { INCOMPAT, SUPERBLOCK_OFFSET, sealSuperblock, type Superblock } from './ext4-superblock.js';

/** A run of physical blocks. */
export interface Span {
  start: number;
  length: number;
}

function getBit(b: Buffer, i: number): boolean {
  return (b[i >> 3]! & (1 << (i & 7))) !== 0;
}
function setBit(b: Buffer, i: number): void {
  b[i >> 3]! |= 1 << (i & 7);
}
function clearBit(b: Buffer, i: number): void {
  b[i >> 3]! &= ~(1 << (i & 7));
}

/** First clear bit in [from, to), or -1; whole 0xFF bytes are skipped. */
function findClear(b: Buffer, from: number, to: number): number {
  let i = from;
  while (i < to) {
    if ((i & 7) === 0 && b[i >> 3] === 0xff) {
      i += 8;
      continue;
    }
    if (!getBit(b, i)) return i;
    i++;
  }
  return -1;
}
/** First set bit in [from, to), or `to`. */
function findSet(b: Buffer, from: number, to: number): number {
  let i = from;
  while (i < to) {
    if ((i & 7) === 0 && b[i >> 3] === 0 && i + 8 <= to) {
      i += 8;
      continue;
    }
    if (getBit(b, i)) return i;
    i++;
  }
  return to;
}

export class Groups {
  readonly sb: Superblock;
  readonly disk: ExtDisk;
  readonly descs: GroupDesc[] = [];
  /** descriptor-table blocks by block number: the descriptors are views into these */
  readonly #tables = new Map<number, Buffer>();
  readonly #validated = new Set<number>();
  readonly #blockBitmaps = new Map<number, Buffer>();
  readonly #inodeBitmaps = new Map<number, Buffer>();
  readonly #dirtyBlockBitmaps = new Set<number>();
  readonly #dirtyInodeBitmaps = new Set<number>();
  readonly #dirtyDescs = new Set<number>();
  #sbDirty = false;

  private constructor(sb: Superblock, disk: ExtDisk) {
    this.sb = sb;
    this.disk = disk;
  }

  /** Reads the whole descriptor table (classic, or one block per meta group). */
  static async load(sb: Superblock, disk: ExtDisk): Promise<Groups> {
    const g = new Groups(sb, disk);
    const per = descPerBlock(sb);
    const nBlocks = descTableBlocks(sb);
    if (nBlocks * sb.blockSize > disk.volume.size) {
      throw new PolyvisorError('ERR_CORRUPT', `${sb.groupCount} block groups need ${nBlocks} descriptor blocks, more than the volume holds`, { file: disk.name, structure: 'superblock' });
    }
    for (let i = 0; i < nBlocks; i++) {
      const block = descBlockLocation(sb, i);
      const buf = Buffer.from(await disk.readBlock(block, `group descriptor block ${i}`));
      g.#tables.set(block, buf);
      for (let k = 0; k < per && i * per + k < sb.groupCount; k++) {
        g.descs.push(new GroupDesc(i * per + k, block, k * sb.descSize, buf.subarray(k * sb.descSize, (k + 1) * sb.descSize)));
      }
    }
    return g;
  }

  /** Group `n`'s descriptor, checked (checksum, locations) the first time it is used. */
  desc(n: number): GroupDesc {
    const d = this.descs[n];
    if (!d) throw new PolyvisorError('ERR_CORRUPT', `block group ${n} does not exist (${this.sb.groupCount} groups)`, { file: this.disk.name });
    if (!this.#validated.has(n)) {
      validateGroupDesc(this.sb, d, this.disk.name);
      this.#validated.add(n);
    }
    return d;
  }

  /** The group's flags that count: UNINIT flags mean nothing without group checksums. */
  flags(d: GroupDesc): number {
    return this.sb.groupCsum ? d.flags : 0;
  }

  // ---- bitmaps ---------------------------------------------------------------------------

  /** The blocks of group g that hold metadata: superblock and descriptor copies, bitmaps, inode tables. */
  #metadataBitmap(g: number): Buffer {
    const sb = this.sb;
    const b = Buffer.alloc(sb.blockSize);
    const first = groupFirstBlock(sb, g);
    const count = groupBlockCount(sb, g);
    const mark = (block: number, n: number) => {
      for (let k = 0; k < n; k++) {
        const i = block + k - first;
        if (i >= 0 && i < count) setBit(b, i);
      }
    };
    const metaBg = (sb.incompat & INCOMPAT.meta_bg) !== 0;
    if (hasSuper(sb, g)) {
      // blockgroup.rst: superblock copy, then the classic descriptor table and its reserve
      const oldDescBlocks = metaBg ? sb.firstMetaBg : descTableBlocks(sb) + sb.reservedGdtBlocks;
      mark(first, 1 + oldDescBlocks);
      if (g === 0 && sb.firstDataBlock === 0 && sb.blockSize === 1024) mark(0, 1);
    }
    if (metaBg) {
      const per = descPerBlock(sb);
      const idx = g % per;
      if (Math.floor(g / per) >= sb.firstMetaBg && (idx === 0 || idx === 1 || idx === per - 1)) mark(first + (hasSuper(sb, g) ? 1 : 0), 1);
    }
    // with flex_bg a group may hold other groups' bitmaps and inode tables
    const { ranges, reach } = this.#metadataRanges();
    let lo = 0;
    let hi = ranges.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (reach[mid]! <= first) lo = mid + 1;
      else hi = mid;
    }
    for (let k = lo; k < ranges.length && ranges[k]!.start < first + count; k++) mark(ranges[k]!.start, ranges[k]!.length);
    for (let i = count; i < sb.blockSize * 8; i++) setBit(b, i);
    return b;
  }

  #metaRanges: { ranges: Span[]; reach: number[] } | null = null;
  /**
   * Every group's bitmaps and inode table, sorted by block (they never move), and for each the
   * furthest block any range up to it reaches (ascending even if a hostile table overlaps).
   */
  #metadataRanges(): { ranges: Span[]; reach: number[] } {
    if (!this.#metaRanges) {
      const itb = inodeTableBlocks(this.sb);
      const ranges: Span[] = [];
      for (const d of this.descs) ranges.push({ start: d.blockBitmap, length: 1 }, { start: d.inodeBitmap, length: 1 }, { start: d.inodeTable, length: itb });
      ranges.sort((a, b) => a.start - b.start);
      const reach: number[] = [];
      for (const r of ranges) reach.push(Math.max(reach[reach.length - 1] ?? 0, r.start + r.length));
      this.#metaRanges = { ranges, reach };
    }
    return this.#metaRanges;
  }

  /** bitmaps.rst: one block per group, checksummed (metadata_csum) over the bits the group uses. */
  async #bitmap(kind: 'block' | 'inode', g: number): Promise<Buffer> {
    const cache = kind === 'block' ? this.#blockBitmaps : this.#inodeBitmaps;
    const cached = cache.get(g);
    if (cached) return cached;
    const sb = this.sb;
    const d = this.desc(g);
    const bits = kind === 'block' ? sb.blocksPerGroup : sb.inodesPerGroup;
    const block = kind === 'block' ? d.blockBitmap : d.inodeBitmap;
    const structure = `${kind} bitmap of group ${g}`;
    let b: Buffer;
    if (this.flags(d) & (kind === 'block' ? BG_BLOCK_UNINIT : BG_INODE_UNINIT)) {
      // never written: what an empty group's bitmap is
      if (kind === 'block') b = this.#metadataBitmap(g);
      else {
        b = Buffer.alloc(sb.blockSize);
        for (let i = bits; i < sb.blockSize * 8; i++) setBit(b, i);
      }
    } else {
      b = Buffer.from(await this.disk.readBlock(block, structure));
      if (sb.metadataCsum) {
        const c = crc32c(sb.csumSeed, b.subarray(0, bits / 8));
        if (!d.bitmapCsumMatches(kind, c)) {
          throw new PolyvisorError('ERR_CHECKSUM', `checksum does not match its contents (${hex(c)})`, { file: this.disk.name, structure, offset: block * sb.blockSize });
        }
      }
    }
    cache.set(g, b);
    return b;
  }

  blockBitmap(g: number): Promise<Buffer> {
    return this.#bitmap('block', g);
  }

  inodeBitmap(g: number): Promise<Buffer> {
    return this.#bitmap('inode', g);
  }

  /** Makes group g's block bitmap real: clears BLOCK_UNINIT, and the bitmap will be written. */
  async #touchBlocks(g: number): Promise<Buffer> {
    const b = await this.blockBitmap(g);
    const d = this.desc(g);
    if (d.flags & BG_BLOCK_UNINIT) d.flags = d.flags & ~BG_BLOCK_UNINIT;
    this.#dirtyBlockBitmaps.add(g);
    this.#dirtyDescs.add(g);
    this.#sbDirty = true;
    return b;
  }

  // ---- blocks ----------------------------------------------------------------------------

  groupOfBlock(block: number): number {
    return Math.min(this.sb.groupCount - 1, Math.max(0, Math.floor((block - this.sb.firstDataBlock) / this.sb.blocksPerGroup)));
  }

  /**
   * Allocates `count` blocks near `goal`: one contiguous run when a group has one that long,
   * else the first free runs from the goal's group on. Returns the runs in allocation order.
   */
  async allocBlocks(count: number, goal: number): Promise<Span[]> {
    const sb = this.sb;
    if (count === 0) return [];
    if (count > sb.freeBlocksCount) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `no space left: ${count} blocks needed, ${sb.freeBlocksCount} free`, { file: this.disk.name });
    }
    const g0 = this.groupOfBlock(goal);
    const order = (k: number) => (g0 + k) % sb.groupCount;
    if (count <= sb.blocksPerGroup) {
      for (let k = 0; k < sb.groupCount; k++) {
        const g = order(k);
        if (this.desc(g).freeBlocks < count) continue;
        const b = await this.blockBitmap(g);
        const n = groupBlockCount(sb, g);
        let i = g === g0 ? Math.max(0, goal - groupFirstBlock(sb, g)) : 0;
        for (let pass = 0; pass < 2; pass++, i = 0) {
          for (;;) {
            const start = findClear(b, i, n);
            if (start < 0) break;
            const end = findSet(b, start, Math.min(n, start + count));
            if (end - start >= count) {
              await this.#take(g, start, count);
              return [{ start: groupFirstBlock(sb, g) + start, length: count }];
            }
            i = end;
          }
        }
      }
    }
    const spans: Span[] = [];
    let left = count;
    for (let k = 0; k < sb.groupCount && left > 0; k++) {
      const g = order(k);
      if (this.desc(g).freeBlocks === 0) continue;
      const b = await this.blockBitmap(g);
      const n = groupBlockCount(sb, g);
      let i = 0;
      while (left > 0) {
        const start = findClear(b, i, n);
        if (start < 0) break;
        const end = findSet(b, start, Math.min(n, start + left));
        await this.#take(g, start, end - start);
        const abs = groupFirstBlock(sb, g) + start;
        const last = spans[spans.length - 1];
        if (last && last.start + last.length === abs) last.length += end - start;
        else spans.push({ start: abs, length: end - start });
        left -= end - start;
        i = end;
      }
    }
    if (left > 0) throw new PolyvisorError('ERR_CORRUPT', `the free block counts promise ${count} free blocks but the bitmaps hold fewer`, { file: this.disk.name });
    return spans;
  }

  async #take(g: number, start: number, n: number): Promise<void> {
    const b = await this.#touchBlocks(g);
    const d = this.desc(g);
    if (d.freeBlocks < n) throw new PolyvisorError('ERR_CORRUPT', `group ${g} has free blocks in its bitmap beyond its free count ${d.freeBlocks}`, { file: this.disk.name, structure: `group descriptor ${g}` });
    for (let i = start; i < start + n; i++) setBit(b, i);
    d.freeBlocks -= n;
    this.sb.freeBlocksCount -= n;
  }

  /** Frees a run of blocks; each must be in use. */
  async freeBlocks(start: number, length: number): Promise<void> {
    const sb = this.sb;
    let block = start;
    const end = start + length;
    while (block < end) {
      const g = this.groupOfBlock(block);
      const first = groupFirstBlock(sb, g);
      const stop = Math.min(end, first + groupBlockCount(sb, g));
      if (block < first || stop <= block) throw new PolyvisorError('ERR_CORRUPT', `cannot free block ${block}: outside every group`, { file: this.disk.name });
      const b = await this.#touchBlocks(g);
      const d = this.desc(g);
      for (let i = block - first; i < stop - first; i++) {
        if (!getBit(b, i)) throw new PolyvisorError('ERR_CORRUPT', `block ${first + i} is freed but its bitmap says it is free already`, { file: this.disk.name, structure: `block bitmap of group ${g}` });
        clearBit(b, i);
      }
      d.freeBlocks += stop - block;
      sb.freeBlocksCount += stop - block;
      block = stop;
    }
  }

  // ---- inodes ----------------------------------------------------------------------------

  groupOfInode(ino: number): number {
    return Math.floor((ino - 1) / this.sb.inodesPerGroup);
  }

  /** Allocates an inode, in group `goal` if it has one free, else the next group that does. */
  async allocInode(goal: number, isDir: boolean): Promise<number> {
    const sb = this.sb;
    for (let k = 0; k < sb.groupCount; k++) {
      const g = (goal + k) % sb.groupCount;
      const d = this.desc(g);
      if (d.freeInodes === 0) continue;
      const b = await this.inodeBitmap(g);
      // the reserved inodes below s_first_ino are never handed out
      const from = Math.max(0, sb.firstIno - 1 - g * sb.inodesPerGroup);
      const limit = Math.min(sb.inodesPerGroup, sb.inodesCount - g * sb.inodesPerGroup);
      const i = findClear(b, from, limit);
      if (i < 0) continue;
      setBit(b, i);
      d.freeInodes -= 1;
      if (isDir) d.usedDirs += 1;
      sb.freeInodesCount -= 1;
      if (sb.groupCsum) {
        // group_descr.rst: inodes past s_inodes_per_group - bg_itable_unused are never looked at
        if (i >= sb.inodesPerGroup - d.itableUnused) d.itableUnused = sb.inodesPerGroup - (i + 1);
        if (d.flags & BG_INODE_UNINIT) d.flags = d.flags & ~BG_INODE_UNINIT;
        // as ext4_new_inode: a group with inodes in use gets a real block bitmap
        if (d.flags & BG_BLOCK_UNINIT) await this.#touchBlocks(g);
      }
      this.#dirtyInodeBitmaps.add(g);
      this.#dirtyDescs.add(g);
      this.#sbDirty = true;
      return g * sb.inodesPerGroup + i + 1;
    }
    throw new PolyvisorError('ERR_UNSUPPORTED', 'no free inode left', { file: this.disk.name });
  }

  /** Is the inode table of ino's group known to be zeroed where ino lies (no stale inode there)? */
  inodeZeroed(ino: number): boolean {
    const d = this.desc(this.groupOfInode(ino));
    return (this.flags(d) & BG_INODE_ZEROED) !== 0;
  }

  async freeInode(ino: number, isDir: boolean): Promise<void> {
    const g = this.groupOfInode(ino);
    const i = (ino - 1) % this.sb.inodesPerGroup;
    const b = await this.inodeBitmap(g);
    const d = this.desc(g);
    if (!getBit(b, i)) throw new PolyvisorError('ERR_CORRUPT', `inode ${ino} is freed but its bitmap says it is free already`, { file: this.disk.name, structure: `inode bitmap of group ${g}` });
    clearBit(b, i);
    d.freeInodes += 1;
    if (isDir && d.usedDirs > 0) d.usedDirs -= 1;
    this.sb.freeInodesCount += 1;
    this.#dirtyInodeBitmaps.add(g);
    this.#dirtyDescs.add(g);
    this.#sbDirty = true;
  }

  /** Writes every changed bitmap, descriptor block and the superblock. */
  async commit(now: number): Promise<void> {
    const sb = this.sb;
    for (const g of this.#dirtyBlockBitmaps) {
      const d = this.desc(g);
      const b = this.#blockBitmaps.get(g)!;
      if (sb.metadataCsum) d.setBitmapCsum('block', crc32c(sb.csumSeed, b.subarray(0, sb.blocksPerGroup / 8)));
      await this.disk.writeBlocks(d.blockBitmap, b, `block bitmap of group ${g}`);
    }
    for (const g of this.#dirtyInodeBitmaps) {
      const d = this.desc(g);
      const b = this.#inodeBitmaps.get(g)!;
      if (sb.metadataCsum) d.setBitmapCsum('inode', crc32c(sb.csumSeed, b.subarray(0, sb.inodesPerGroup / 8)));
      await this.disk.writeBlocks(d.inodeBitmap, b, `inode bitmap of group ${g}`);
    }
    const tables = new Set<number>();
    for (const g of this.#dirtyDescs) {
      const d = this.desc(g);
      d.seal(sb);
      tables.add(d.tableBlock);
    }
    for (const t of tables) await this.disk.writeBlocks(t, this.#tables.get(t)!, 'group descriptor table');
    if (this.#sbDirty) await this.disk.writeBytes(SUPERBLOCK_OFFSET, sealSuperblock(sb, now));
    this.#dirtyBlockBitmaps.clear();
    this.#dirtyInodeBitmaps.clear();
    this.#dirtyDescs.clear();
    this.#sbDirty = false;
  }

  /** The superblock changed outside this class (a feature flag). */
  touchSuperblock(): void {
    this.#sbDirty = true;
  }
}
