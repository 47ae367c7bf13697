/**
 * Directory blocks (Documentation/filesystems/ext4/directory.rst).
 *
 * A linear directory block is a chain of entries (struct ext4_dir_entry_2: inode, rec_len,
 * name_len, file_type, name) whose rec_lens add up to the block size. With metadata_csum the
 * block ends in a 12-byte fake entry (inode 0, rec_len 12, name_len 0, file_type 0xDE) holding
 * crc32c(inode seed, block up to the fake entry).
 *
 * Hash-tree directories (EXT4_INDEX_FL) keep the same leaf blocks, plus index blocks that look
 * like directory blocks with nothing in them to a linear reader: the root (block 0) holds "."
 * and a ".." whose rec_len covers the index, each interior node one empty entry spanning the
 * block. So every directory can be listed and searched linearly; index blocks carry their own
 * checksum tail (struct dx_tail) after the index entries.
 */
import { PolyvisorError, hex } from '../errors.js';
import { crc32c } from './ext4-csum.js';

/** directory.rst, file_type */
export const FT_UNKNOWN = 0;
export const FT_REG_FILE = 1;
export const FT_DIR = 2;
export const FT_SYMLINK = 7;
const FT_CSUM_TAIL = 0xde;
export const TAIL_SIZE = 12;

export interface DirEntry {
  /** byte offset in the block */
  offset: number;
  recLen: number;
  inode: number;
  name: Buffer;
  fileType: number;
}

export interface DirFormat {
  blockSize: number;
  /** INCOMPAT_FILETYPE: name_len is 8 bits and file_type follows; otherwise name_len is 16 bits */
  filetype: boolean;
  metadataCsum: boolean;
  inodesCount: number;
}

/** directory.rst: rec_len with 64 KiB blocks (ext4_rec_len_from_disk). */
export function recLenFromDisk(v: number, blockSize: number): number {
  if (blockSize < 65536) return v;
  if (v === 65535 || v === 0) return blockSize;
  return (v & 65532) | ((v & 3) << 16);
}

export function recLenToDisk(len: number, blockSize: number): number {
  if (blockSize < 65536) return len;
  if (len === blockSize) return 65535;
  return (len & 65532) | ((len >> 16) & 3);
}

/** EXT4_DIR_REC_LEN: 8 bytes of header and the name, rounded up to 4. */
export function entrySize(nameLen: number): number {
  return (8 + nameLen + 3) & ~3;
}

/** Is the fake tail entry present at the end of this block? */
export function hasTail(b: Buffer): boolean {
  const t = b.length - TAIL_SIZE;
  return b.readUInt32LE(t) === 0 && b.readUInt16LE(t + 4) === TAIL_SIZE && b[t + 6] === 0 && b[t + 7] === FT_CSUM_TAIL;
}

/**
 * The entries of one block, every one validated as the kernel's __ext4_check_dir_entry does.
 * `where` names the block in messages ("directory block 3 (block 1234) of inode 12").
 */
export function parseDirBlock(b: Buffer, f: DirFormat, file: string, where: string): DirEntry[] {
  const out: DirEntry[] = [];
  let off = 0;
  while (off < b.length) {
    const fail = (detail: string) => new PolyvisorError('ERR_CORRUPT', `entry at offset ${off}: ${detail}`, { file, structure: where });
    if (off + 8 > b.length) throw fail('entry header runs past the block');
    const inode = b.readUInt32LE(off);
    const recLen = recLenFromDisk(b.readUInt16LE(off + 4), f.blockSize);
    const nameLen = f.filetype ? b[off + 6]! : b.readUInt16LE(off + 6);
    const fileType = f.filetype ? b[off + 7]! : FT_UNKNOWN;
    if (recLen < 12) throw fail(`rec_len ${recLen} is smaller than the smallest entry`);
    if (recLen % 4 !== 0) throw fail(`rec_len ${recLen} is not a multiple of 4`);
    if (recLen < entrySize(nameLen)) throw fail(`rec_len ${recLen} is too small for name_len ${nameLen}`);
    if (off + recLen > b.length) throw fail(`rec_len ${recLen} runs past the end of the block`);
    if (inode > f.inodesCount) throw fail(`inode ${inode} is out of range (1..${f.inodesCount})`);
    if (inode !== 0 && nameLen === 0) throw fail('entry with an empty name');
    out.push({ offset: off, recLen, inode, name: b.subarray(off + 8, off + 8 + nameLen), fileType });
    off += recLen;
  }
  return out;
}

function checksumError(file: string, where: string, stored: number, want: number): PolyvisorError {
  return new PolyvisorError('ERR_CHECKSUM', `checksum ${hex(stored)} does not match its contents (${hex(want)})`, { file, structure: where });
}

/** crc32c of a leaf block up to its tail entry. */
export function leafChecksum(seed: number, b: Buffer): number {
  return crc32c(seed, b.subarray(0, b.length - TAIL_SIZE));
}

/** Writes the tail entry and its checksum at the end of a leaf block. */
export function sealLeaf(seed: number, b: Buffer): void {
  const t = b.length - TAIL_SIZE;
  b.fill(0, t, t + TAIL_SIZE);
  b.writeUInt16LE(TAIL_SIZE, t + 4);
  b[t + 7] = FT_CSUM_TAIL;
  b.writeUInt32LE(leafChecksum(seed, b), t + 8);
}

/**
 * Where the index count/limit sit if this is an htree index block (dx root or dx node), as
 * the kernel's get_dx_countlimit decides; null for a leaf.
 */
export function dxCountOffset(b: Buffer, blockSize: number): number | null {
  const rec0 = recLenFromDisk(b.readUInt16LE(4), blockSize);
  if (rec0 === blockSize && b.readUInt32LE(0) === 0) return 8;
  if (rec0 !== 12) return null;
  if (recLenFromDisk(b.readUInt16LE(12 + 4), blockSize) !== blockSize - 12) return null;
  // struct dx_root_info after "." and "..": reserved_zero, hash_version, info_length (8), ...
  if (b.readUInt32LE(24) !== 0 || b[29] !== 8) return null;
  return 32;
}

/** Verifies a directory block's checksum: the leaf tail, or for htree index blocks the dx tail. */
export function verifyDirBlock(seed: number, b: Buffer, indexed: boolean, file: string, where: string): void {
  if (hasTail(b)) {
    const stored = b.readUInt32LE(b.length - 4);
    const want = leafChecksum(seed, b);
    if (stored !== want) throw checksumError(file, where, stored, want);
    return;
  }
  const co = indexed ? dxCountOffset(b, b.length) : null;
  if (co === null) {
    throw new PolyvisorError('ERR_CHECKSUM', 'no checksum tail in a directory block of a metadata_csum file system', { file, structure: where });
  }
  const c = dxChecksum(seed, b, co, file, where);
  const stored = b.readUInt32LE(co + b.readUInt16LE(co) * 8 + 4);
  if (stored !== c) throw checksumError(file, where, stored, c);
}

/**
 * directory.rst, struct dx_tail: crc32c over the block up to the last used index entry, then
 * dt_reserved and a zeroed dt_checksum (ext4_dx_csum). `co` is where count/limit sit.
 */
export function dxChecksum(seed: number, b: Buffer, co: number, file: string, where: string): number {
  const limit = b.readUInt16LE(co);
  const count = b.readUInt16LE(co + 2);
  const tail = co + limit * 8;
  if (count > limit || tail + 8 > b.length) {
    throw new PolyvisorError('ERR_CORRUPT', `htree index count ${count} / limit ${limit} does not fit the block`, { file, structure: where });
  }
  let c = crc32c(seed, b.subarray(0, co + count * 8));
  c = crc32c(c, b.subarray(tail, tail + 4));
  return crc32c(c, Buffer.alloc(4));
}

/**
 * Adds an entry to a block if it has room (in an unused entry or the slack after one), as the
 * kernel's add_dirent_to_buf does. Returns false when the block is full.
 */
export function insertEntry(b: Buffer, f: DirFormat, entries: DirEntry[], name: Buffer, inode: number, fileType: number): boolean {
  const need = entrySize(name.length);
  const end = f.metadataCsum ? b.length - TAIL_SIZE : b.length;
  for (const e of entries) {
    if (e.offset >= end) break;
    const used = e.inode === 0 ? 0 : entrySize(e.name.length);
    const recLen = Math.min(e.recLen, end - e.offset);
    if (recLen - used < need) continue;
    let at = e.offset;
    let len = recLen;
    if (e.inode !== 0) {
      b.writeUInt16LE(recLenToDisk(used, f.blockSize), e.offset + 4);
      at = e.offset + used;
      len = recLen - used;
    }
    writeEntry(b, f, at, len, name, inode, fileType);
    return true;
  }
  return false;
}

export function writeEntry(b: Buffer, f: DirFormat, at: number, recLen: number, name: Buffer, inode: number, fileType: number): void {
  b.writeUInt32LE(inode, at);
  b.writeUInt16LE(recLenToDisk(recLen, f.blockSize), at + 4);
  if (f.filetype) {
    b[at + 6] = name.length;
    b[at + 7] = fileType;
  } else {
    b.writeUInt16LE(name.length, at + 6);
  }
  name.copy(b, at + 8);
  b.fill(0, at + 8 + name.length, at + entrySize(name.length));
}

/** Removes entry `i` of a block: the previous entry absorbs it, or it becomes unused (ext4_generic_delete_entry). */
export function removeEntry(b: Buffer, f: DirFormat, entries: DirEntry[], i: number): void {
  const e = entries[i]!;
  const prev = i > 0 ? entries[i - 1] : undefined;
  if (prev) b.writeUInt16LE(recLenToDisk(prev.recLen + e.recLen, f.blockSize), prev.offset + 4);
  else b.writeUInt32LE(0, e.offset);
  b.fill(0, e.offset + 8, e.offset + entrySize(e.name.length));
  if (prev) b.fill(0, e.offset, e.offset + 8);
}

/** A fresh leaf block holding one entry (or none when `inode` is 0), with its tail when checksummed. */
export function emptyLeaf(f: DirFormat, name: Buffer, inode: number, fileType: number): Buffer {
  const b = Buffer.alloc(f.blockSize);
  const end = f.metadataCsum ? f.blockSize - TAIL_SIZE : f.blockSize;
  writeEntry(b, f, 0, end, name, inode, fileType);
  return b;
}

/** The first block of a new directory: "." and "..". */
export function newDirBlock(f: DirFormat, self: number, parent: number): Buffer {
  const b = Buffer.alloc(f.blockSize);
  const end = f.metadataCsum ? f.blockSize - TAIL_SIZE : f.blockSize;
  writeEntry(b, f, 0, 12, Buffer.from('.'), self, FT_DIR);
  writeEntry(b, f, 12, end - 12, Buffer.from('..'), parent, FT_DIR);
  return b;
}

/**
 * Turns an htree index block into an ordinary leaf that holds the same entries a linear reader
 * saw in it (none, or "." and ".."), so the directory can drop EXT4_INDEX_FL and stay valid.
 */
export function unindexBlock(b: Buffer, f: DirFormat, logical: number): void {
  const end = f.metadataCsum ? f.blockSize - TAIL_SIZE : f.blockSize;
  if (logical === 0) {
    const self = b.readUInt32LE(0);
    const parent = b.readUInt32LE(12);
    b.fill(0);
    writeEntry(b, f, 0, 12, Buffer.from('.'), self, FT_DIR);
    writeEntry(b, f, 12, end - 12, Buffer.from('..'), parent, FT_DIR);
  } else {
    b.fill(0);
    b.writeUInt16LE(recLenToDisk(end, f.blockSize), 4);
  }
}

/** directory.rst, file_type from an inode's i_mode type bits. */
export function fileTypeOfMode(mode: number): number {
  switch (mode & 0xf000) {
    case 0x8000: return FT_REG_FILE;
    case 0x4000: return FT_DIR;
    case 0x2000: return 3;
    case 0x6000: return 4;
    case 0x1000: return 5;
    case 0xc000: return 6;
    case 0xa000: return FT_SYMLINK;
    default: return FT_UNKNOWN;
  }
}
