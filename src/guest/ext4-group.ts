/**
 * Block groups (Documentation/filesystems/ext4/group_descr.rst and blockgroup.rst).
 *
 * Each group of s_blocks_per_group blocks has a descriptor: where its block bitmap, inode
 * bitmap and inode table are, its free counts and flags. Descriptors are 32 bytes, or
 * s_desc_size (64 or more) with the 64bit feature. They live in the group descriptor table
 * after the superblock, or, with meta_bg, one block of them at the start of each meta group
 * (blockgroup.rst, "Meta Block Groups").
 */
import { PolyvisorError, hex } from '../errors.js';
import { crc16, crc32c, crc32cU32 } from './ext4-csum.js';
import { INCOMPAT, RO_COMPAT, type Superblock } from './ext4-superblock.js';

/** group_descr.rst, bg_flags */
export const BG_INODE_UNINIT = 0x1;
export const BG_BLOCK_UNINIT = 0x2;
export const BG_INODE_ZEROED = 0x4;

/** group_descr.rst: offsets of the lo and (64-byte descriptors only) hi halves. */
const G = {
  block_bitmap: [0x0, 0x20],
  inode_bitmap: [0x4, 0x24],
  inode_table: [0x8, 0x28],
  free_blocks_count: [0xc, 0x2c],
  free_inodes_count: [0xe, 0x2e],
  used_dirs_count: [0x10, 0x30],
  itable_unused: [0x1c, 0x32],
  block_bitmap_csum: [0x18, 0x38],
  inode_bitmap_csum: [0x1a, 0x3a],
} as const;
const FLAGS = 0x12;
const CHECKSUM = 0x1e;

/** One descriptor, a view over its bytes in the descriptor table block (changes go there). */
export class GroupDesc {
  readonly group: number;
  /** the descriptor table block holding it, and where in that block */
  readonly tableBlock: number;
  readonly tableOffset: number;
  readonly raw: Buffer;
  readonly #wide: boolean;

  constructor(group: number, tableBlock: number, tableOffset: number, raw: Buffer) {
    this.group = group;
    this.tableBlock = tableBlock;
    this.tableOffset = tableOffset;
    this.raw = raw;
    this.#wide = raw.length >= 64;
  }

  #get32(f: readonly [number, number]): number {
    return this.raw.readUInt32LE(f[0]) + (this.#wide ? this.raw.readUInt32LE(f[1]) * 2 ** 32 : 0);
  }
  #get16(f: readonly [number, number]): number {
    return this.raw.readUInt16LE(f[0]) + (this.#wide ? this.raw.readUInt16LE(f[1]) * 65536 : 0);
  }
  #set16(f: readonly [number, number], v: number): void {
    this.raw.writeUInt16LE(v & 0xffff, f[0]);
    if (this.#wide) this.raw.writeUInt16LE(Math.floor(v / 65536) & 0xffff, f[1]);
  }

  get blockBitmap(): number { return this.#get32(G.block_bitmap); }
  get inodeBitmap(): number { return this.#get32(G.inode_bitmap); }
  get inodeTable(): number { return this.#get32(G.inode_table); }
  get freeBlocks(): number { return this.#get16(G.free_blocks_count); }
  set freeBlocks(v: number) { this.#set16(G.free_blocks_count, v); }
  get freeInodes(): number { return this.#get16(G.free_inodes_count); }
  set freeInodes(v: number) { this.#set16(G.free_inodes_count, v); }
  get usedDirs(): number { return this.#get16(G.used_dirs_count); }
  set usedDirs(v: number) { this.#set16(G.used_dirs_count, v); }
  get itableUnused(): number { return this.#get16(G.itable_unused); }
  set itableUnused(v: number) { this.#set16(G.itable_unused, v); }
  get flags(): number { return this.raw.readUInt16LE(FLAGS); }
  set flags(v: number) { this.raw.writeUInt16LE(v, FLAGS); }
  get checksum(): number { return this.raw.readUInt16LE(CHECKSUM); }

  /** Stores a bitmap checksum: 16 bits in a 32-byte descriptor, 32 bits in a wide one. */
  setBitmapCsum(which: 'block' | 'inode', csum: number): void {
    const f = which === 'block' ? G.block_bitmap_csum : G.inode_bitmap_csum;
    this.raw.writeUInt16LE(csum & 0xffff, f[0]);
    if (this.#wide) this.raw.writeUInt16LE(csum >>> 16, f[1]);
  }
  /** Compares a bitmap checksum with as many bits as the descriptor stores. */
  bitmapCsumMatches(which: 'block' | 'inode', csum: number): boolean {
    const f = which === 'block' ? G.block_bitmap_csum : G.inode_bitmap_csum;
    if (this.raw.readUInt16LE(f[0]) !== (csum & 0xffff)) return false;
    return !this.#wide || this.raw.readUInt16LE(f[1]) === csum >>> 16;
  }

  seal(sb: Superblock): void {
    if (sb.groupCsum) this.raw.writeUInt16LE(groupDescChecksum(sb, this.group, this.raw), CHECKSUM);
  }
}

/**
 * group_descr.rst, bg_checksum: with metadata_csum, the low 16 bits of crc32c(seed, group,
 * descriptor with the field zeroed); with gdt_csum, crc16(uuid, group, descriptor without the field).
 */
export function groupDescChecksum(sb: Superblock, group: number, raw: Buffer): number {
  const le = Buffer.alloc(4);
  le.writeUInt32LE(group, 0);
  if (sb.metadataCsum) {
    let c = crc32cU32(sb.csumSeed, group);
    c = crc32c(c, raw.subarray(0, CHECKSUM));
    c = crc32c(c, Buffer.alloc(2));
    c = crc32c(c, raw.subarray(CHECKSUM + 2, sb.descSize));
    return c & 0xffff;
  }
  let c = crc16(0xffff, sb.uuid);
  c = crc16(c, le);
  c = crc16(c, raw.subarray(0, CHECKSUM));
  if (sb.incompat & INCOMPAT['64bit'] && sb.descSize > CHECKSUM + 2) c = crc16(c, raw.subarray(CHECKSUM + 2, sb.descSize));
  return c;
}

/** The block the superblock (and the classic descriptor table after it) starts in. */
export function superblockBlock(sb: Superblock): number {
  // 1 KiB blocks with first_data_block 0 happen with bigalloc: the superblock is still block 1
  return sb.firstDataBlock === 0 && sb.blockSize === 1024 ? 1 : sb.firstDataBlock;
}

export function groupFirstBlock(sb: Superblock, g: number): number {
  return sb.firstDataBlock + g * sb.blocksPerGroup;
}

/** Blocks in group g (the last group may be short). */
export function groupBlockCount(sb: Superblock, g: number): number {
  return Math.min(sb.blocksPerGroup, sb.blocksCount - groupFirstBlock(sb, g));
}

function isPowerOf(n: number, base: number): boolean {
  while (n > 1 && n % base === 0) n /= base;
  return n === 1;
}

/** blockgroup.rst, sparse_super and sparse_super2: does group g hold a superblock copy? */
export function hasSuper(sb: Superblock, g: number): boolean {
  if (g === 0) return true;
  if (sb.compat & 0x200 /* sparse_super2 */) return g === sb.backupBgs[0] || g === sb.backupBgs[1];
  if (g <= 1 || !(sb.roCompat & RO_COMPAT.sparse_super)) return true;
  if (!(g & 1)) return false;
  return isPowerOf(g, 3) || isPowerOf(g, 5) || isPowerOf(g, 7);
}

export function descPerBlock(sb: Superblock): number {
  return sb.blockSize / sb.descSize;
}

/** Blocks of the classic descriptor table (all groups' descriptors). */
export function descTableBlocks(sb: Superblock): number {
  return Math.ceil(sb.groupCount / descPerBlock(sb));
}

/** Where descriptor block `i` (descriptors i*descPerBlock...) lives: the classic table, or its meta group's first group. */
export function descBlockLocation(sb: Superblock, i: number): number {
  if (!(sb.incompat & INCOMPAT.meta_bg) || i < sb.firstMetaBg) return superblockBlock(sb) + 1 + i;
  const g = i * descPerBlock(sb);
  return groupFirstBlock(sb, g) + (hasSuper(sb, g) ? 1 : 0);
}

/** Inode-table blocks per group. */
export function inodeTableBlocks(sb: Superblock): number {
  return Math.ceil((sb.inodesPerGroup * sb.inodeSize) / sb.blockSize);
}

/**
 * Checks a descriptor before anything it points to is used: its checksum, and that its bitmaps
 * and inode table lie inside the file system.
 */
export function validateGroupDesc(sb: Superblock, gd: GroupDesc, file: string): void {
  const structure = `group descriptor ${gd.group}`;
  const offset = gd.tableBlock * sb.blockSize + gd.tableOffset;
  if (sb.groupCsum) {
    const want = groupDescChecksum(sb, gd.group, gd.raw);
    if (want !== gd.checksum) {
      throw new PolyvisorError('ERR_CHECKSUM', `checksum ${hex(gd.checksum)} does not match its contents (${hex(want)})`, { file, structure, offset });
    }
  }
  const check = (what: string, block: number, count: number) => {
    if (block < sb.firstDataBlock || block === 0 || block + count > sb.blocksCount) {
      throw new PolyvisorError('ERR_CORRUPT', `${what} at block ${block} lies outside the file system (${sb.blocksCount} blocks)`, { file, structure, offset });
    }
  };
  check('block bitmap', gd.blockBitmap, 1);
  check('inode bitmap', gd.inodeBitmap, 1);
  check('inode table', gd.inodeTable, inodeTableBlocks(sb));
  if (gd.freeInodes > sb.inodesPerGroup || gd.itableUnused > sb.inodesPerGroup) {
    throw new PolyvisorError('ERR_CORRUPT', `free inode count ${gd.freeInodes} or unused inode count ${gd.itableUnused} is above the ${sb.inodesPerGroup} inodes of a group`, { file, structure, offset });
  }
  if (gd.freeBlocks > sb.blocksPerGroup) {
    throw new PolyvisorError('ERR_CORRUPT', `free block count ${gd.freeBlocks} is above the ${sb.blocksPerGroup} blocks of a group`, { file, structure, offset });
  }
}
