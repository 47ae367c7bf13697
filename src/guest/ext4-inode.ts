/**
 * Inodes (Documentation/filesystems/ext4/inodes.rst, struct ext4_inode): s_inode_size bytes
 * each in the inode tables; the first 128 bytes are the ext2 inode, then i_extra_isize bytes of
 * ext4 fields, then in-inode extended attributes (attributes.rst) up to the record's end.
 */
import { randomBytes } from 'node:crypto';
import { PolyvisorError, hex } from '../errors.js';
import { crc32c, crc32cU32 } from './ext4-csum.js';
import { RO_COMPAT, type Superblock } from './ext4-superblock.js';

/** inodes.rst, i_mode file types */
export const S_IFMT = 0xf000;
export const S_IFIFO = 0x1000;
export const S_IFCHR = 0x2000;
export const S_IFDIR = 0x4000;
export const S_IFBLK = 0x6000;
export const S_IFREG = 0x8000;
export const S_IFLNK = 0xa000;
export const S_IFSOCK = 0xc000;

/** inodes.rst, i_flags */
export const FL_ENCRYPT = 0x800;
export const FL_INDEX = 0x1000;
export const FL_HUGE_FILE = 0x40000;
export const FL_EXTENTS = 0x80000;
export const FL_VERITY = 0x100000;
export const FL_EA_INODE = 0x200000;
export const FL_INLINE_DATA = 0x10000000;
export const FL_CASEFOLD = 0x40000000;

/** Field offsets of struct ext4_inode. */
const I = {
  mode: 0x0,
  uid: 0x2,
  size_lo: 0x4,
  atime: 0x8,
  ctime: 0xc,
  mtime: 0x10,
  dtime: 0x14,
  gid: 0x18,
  links_count: 0x1a,
  blocks_lo: 0x1c,
  flags: 0x20,
  block: 0x28,
  generation: 0x64,
  file_acl_lo: 0x68,
  size_high: 0x6c,
  blocks_high: 0x74,
  file_acl_high: 0x76,
  uid_high: 0x78,
  gid_high: 0x7a,
  checksum_lo: 0x7c,
  extra_isize: 0x80,
  checksum_hi: 0x82,
  ctime_extra: 0x84,
  mtime_extra: 0x88,
  atime_extra: 0x8c,
  crtime: 0x90,
  crtime_extra: 0x94,
} as const;
export const GOOD_OLD_INODE_SIZE = 128;
/** i_block: 15 32-bit words, the block map, the extent tree root, a fast symlink or inline data */
export const I_BLOCK_SIZE = 60;

export class Inode {
  readonly ino: number;
  /** this inode's bytes (a copy: changes are written back with the file system's writeInode) */
  readonly raw: Buffer;

  constructor(ino: number, raw: Buffer) {
    this.ino = ino;
    this.raw = raw;
  }

  get mode(): number { return this.raw.readUInt16LE(I.mode); }
  set mode(v: number) { this.raw.writeUInt16LE(v & 0xffff, I.mode); }
  get fileType(): number { return this.mode & S_IFMT; }
  get uid(): number { return (this.raw.readUInt16LE(I.uid) | (this.raw.readUInt16LE(I.uid_high) << 16)) >>> 0; }
  get gid(): number { return (this.raw.readUInt16LE(I.gid) | (this.raw.readUInt16LE(I.gid_high) << 16)) >>> 0; }
  get size(): number { return this.raw.readUInt32LE(I.size_lo) + this.raw.readUInt32LE(I.size_high) * 2 ** 32; }
  set size(v: number) {
    this.raw.writeUInt32LE(v % 2 ** 32, I.size_lo);
    this.raw.writeUInt32LE(Math.floor(v / 2 ** 32), I.size_high);
  }
  get linksCount(): number { return this.raw.readUInt16LE(I.links_count); }
  set linksCount(v: number) { this.raw.writeUInt16LE(v, I.links_count); }
  get flags(): number { return this.raw.readUInt32LE(I.flags); }
  set flags(v: number) { this.raw.writeUInt32LE(v >>> 0, I.flags); }
  get generation(): number { return this.raw.readUInt32LE(I.generation); }
  get dtime(): number { return this.raw.readUInt32LE(I.dtime); }
  set dtime(v: number) { this.raw.writeUInt32LE(v >>> 0, I.dtime); }
  /** i_block, as a view (changes go to raw) */
  get iBlock(): Buffer { return this.raw.subarray(I.block, I.block + I_BLOCK_SIZE); }
  get fileAcl(): number { return this.raw.readUInt32LE(I.file_acl_lo) + this.raw.readUInt16LE(I.file_acl_high) * 2 ** 32; }
  get extraIsize(): number { return this.raw.length > GOOD_OLD_INODE_SIZE ? this.raw.readUInt16LE(I.extra_isize) : 0; }
  get mtime(): number { return this.#time(I.mtime, I.mtime_extra); }

  /** i_blocks in 512-byte units (inodes.rst, i_blocks_lo: huge_file semantics). */
  blocks512(sb: Superblock): number {
    const lo = this.raw.readUInt32LE(I.blocks_lo);
    if (!(sb.roCompat & RO_COMPAT.huge_file)) return lo;
    const n = lo + this.raw.readUInt16LE(I.blocks_high) * 2 ** 32;
    return this.flags & FL_HUGE_FILE ? n * (sb.blockSize / 512) : n;
  }
  setBlocks512(sb: Superblock, n: number): void {
    this.flags = this.flags & ~FL_HUGE_FILE;
    if (n >= 2 ** 32 && !(sb.roCompat & RO_COMPAT.huge_file)) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `inode ${this.ino}: ${n} sectors do not fit i_blocks without the huge_file feature`);
    }
    this.raw.writeUInt32LE(n % 2 ** 32, I.blocks_lo);
    if (sb.roCompat & RO_COMPAT.huge_file) this.raw.writeUInt16LE(Math.floor(n / 2 ** 32), I.blocks_high);
  }

  #fits(field: number, size: number): boolean {
    return field + size <= GOOD_OLD_INODE_SIZE + this.extraIsize && field + size <= this.raw.length;
  }
  /** inodes.rst, "Inode Timestamps": 32 signed bits, plus two epoch bits in the _extra field. */
  #time(sec: number, extra: number): number {
    const s = this.raw.readInt32LE(sec);
    return this.#fits(extra, 4) ? s + (this.raw.readUInt32LE(extra) & 3) * 2 ** 32 : s;
  }
  #setTime(sec: number, extra: number, t: number): void {
    const seconds = Math.floor(t);
    const epoch = Math.floor((seconds + 2 ** 31) / 2 ** 32);
    this.raw.writeInt32LE(seconds - epoch * 2 ** 32, sec);
    if (this.#fits(extra, 4)) {
      const nsec = Math.floor((t - seconds) * 1e9);
      this.raw.writeUInt32LE(((nsec << 2) | (epoch & 3)) >>> 0, extra);
    }
  }
  touch(now: number, which: { a?: boolean; c?: boolean; m?: boolean; cr?: boolean }): void {
    if (which.a) this.#setTime(I.atime, I.atime_extra, now);
    if (which.c) this.#setTime(I.ctime, I.ctime_extra, now);
    if (which.m) this.#setTime(I.mtime, I.mtime_extra, now);
    if (which.cr && this.#fits(I.crtime, 4)) this.#setTime(I.crtime, I.crtime_extra, now);
  }

  /** The in-inode extended attribute area (attributes.rst, "Inode extra space"), when there is one. */
  ibodyXattrs(): Buffer | null {
    const start = GOOD_OLD_INODE_SIZE + this.extraIsize;
    if (this.raw.length <= GOOD_OLD_INODE_SIZE || start + 4 > this.raw.length) return null;
    if (this.raw.readUInt32LE(start) !== 0xea020000) return null;
    return this.raw.subarray(start + 4);
  }
}

/** The seed of every per-inode checksum: crc32c(fs seed, inode number, generation). */
export function inodeCsumSeed(sb: Superblock, ino: number, generation: number): number {
  return crc32cU32(crc32cU32(sb.csumSeed, ino), generation);
}

/** inodes.rst / checksums.rst "Inodes": crc32c over the whole record with both checksum halves zeroed. */
export function inodeChecksum(sb: Superblock, inode: Inode): number {
  const raw = inode.raw;
  const zero = Buffer.alloc(2);
  let c = inodeCsumSeed(sb, inode.ino, inode.generation);
  c = crc32c(c, raw.subarray(0, I.checksum_lo));
  c = crc32c(c, zero);
  c = crc32c(c, raw.subarray(I.checksum_lo + 2, GOOD_OLD_INODE_SIZE));
  if (raw.length > GOOD_OLD_INODE_SIZE) {
    c = crc32c(c, raw.subarray(GOOD_OLD_INODE_SIZE, I.checksum_hi));
    let off = I.checksum_hi;
    if (inode.extraIsize >= 4) {
      c = crc32c(c, zero);
      off += 2;
    }
    c = crc32c(c, raw.subarray(off));
  }
  return c;
}

/** Checks i_extra_isize and (metadata_csum) the checksum of an inode just read. */
export function verifyInode(sb: Superblock, inode: Inode, file: string, offset: number): void {
  const structure = `inode ${inode.ino}`;
  if (inode.raw.length > GOOD_OLD_INODE_SIZE) {
    const extra = inode.raw.readUInt16LE(I.extra_isize);
    if (GOOD_OLD_INODE_SIZE + extra > inode.raw.length || extra % 4 !== 0) {
      throw new PolyvisorError('ERR_CORRUPT', `i_extra_isize ${extra} does not fit a ${inode.raw.length}-byte inode`, { file, structure, offset });
    }
  }
  if (!sb.metadataCsum) return;
  const c = inodeChecksum(sb, inode);
  const lo = inode.raw.readUInt16LE(I.checksum_lo);
  const full = inode.extraIsize >= 4;
  const stored = full ? (lo | (inode.raw.readUInt16LE(I.checksum_hi) << 16)) >>> 0 : lo;
  const want = full ? c : c & 0xffff;
  if (stored !== want) {
    // an all-zero record is an unused inode, not a corrupt one (e2fsprogs does the same)
    if (inode.raw.every((b) => b === 0)) return;
    throw new PolyvisorError('ERR_CHECKSUM', `checksum ${hex(stored)} does not match its contents (${hex(want)})`, { file, structure, offset });
  }
}

export function sealInode(sb: Superblock, inode: Inode): void {
  if (!sb.metadataCsum) return;
  const c = inodeChecksum(sb, inode);
  inode.raw.writeUInt16LE(c & 0xffff, I.checksum_lo);
  if (inode.extraIsize >= 4) inode.raw.writeUInt16LE(c >>> 16, I.checksum_hi);
}

/** A fresh inode record: type and permissions, owner root, one link, times `now`, extents if the file system uses them. */
export function newInode(sb: Superblock, ino: number, mode: number, now: number, flags: number): Inode {
  const raw = Buffer.alloc(sb.inodeSize);
  const inode = new Inode(ino, raw);
  inode.mode = mode;
  inode.linksCount = 1;
  inode.flags = flags;
  raw.writeUInt32LE(randomBytes(4).readUInt32LE(0), I.generation);
  if (sb.inodeSize > GOOD_OLD_INODE_SIZE) {
    // inodes.rst: i_extra_isize is what new inodes reserve (s_want_extra_isize), 32 by default
    const want = sb.wantExtraIsize >= 4 ? sb.wantExtraIsize : 32;
    raw.writeUInt16LE(Math.min(want, sb.inodeSize - GOOD_OLD_INODE_SIZE) & ~3, I.extra_isize);
  }
  inode.touch(now, { a: true, c: true, m: true, cr: true });
  return inode;
}
