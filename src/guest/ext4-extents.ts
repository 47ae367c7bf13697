/**
 * Extent trees (Documentation/filesystems/ext4/ifork.rst, "Extent Tree"): how an ext4 inode with
 * EXT4_EXTENTS_FL maps its logical blocks.
 *
 * A 12-byte header (magic 0xF30A, entries, max, depth) in i_block (room for 4 entries) or at the
 * start of a tree block, then 12-byte entries: index entries (first logical block, child block)
 * at depth > 0, extents (first logical block, length, first physical block) at depth 0. An
 * extent of more than 32768 blocks is uninitialized (reads as zeroes), its length being the
 * excess. A tree block ends with a crc32c tail (metadata_csum) at 12 + 12 * eh_max.
 *
 * Reading treats the tree as hostile: depth at most 5 and one less at each level (so no loop can
 * form), entries at most eh_max and eh_max at most what the node holds, logical ranges ascending
 * and inside the parent's range, blocks inside the file system, no tree block used twice.
 */
import { PolyvisorError, hex } from '../errors.js';
import { crc32c } from './ext4-csum.js';
import type { ExtDisk } from './ext4-disk.js';
import { I_BLOCK_SIZE, inodeCsumSeed, type Inode } from './ext4-inode.js';
import type { Superblock } from './ext4-superblock.js';

/** A mapped range of a file: `length` blocks from logical block `logical` at physical block `physical`. */
export interface Run {
  logical: number;
  physical: number;
  length: number;
  /** an uninitialized extent: allocated, reads as zeroes */
  uninit: boolean;
}

export const EXTENT_MAGIC = 0xf30a;
const HEADER = 12;
const ENTRY = 12;
/** ext4_extents.h: EXT_INIT_MAX_LEN, the longest initialized extent */
export const EXT_INIT_MAX_LEN = 32768;
/** ext4_extents.h: EXT4_MAX_EXTENT_DEPTH */
const MAX_DEPTH = 5;
/** logical block numbers are 32-bit */
const LOGICAL_LIMIT = 2 ** 32;

interface Walk {
  disk: ExtDisk;
  sb: Superblock;
  inode: Inode;
  seed: number;
  runs: Run[];
  treeBlocks: number[];
  seen: Set<number>;
  /** end of the last extent seen: extents must come in ascending logical order */
  next: number;
}

function corrupt(w: Walk, where: string, detail: string): PolyvisorError {
  return new PolyvisorError('ERR_CORRUPT', detail, { file: w.disk.name, structure: where });
}

function header(w: Walk, buf: Buffer, capacity: number, where: string): { entries: number; max: number; depth: number } {
  const magic = buf.readUInt16LE(0);
  if (magic !== EXTENT_MAGIC) throw corrupt(w, where, `extent header magic ${hex(magic)} (expected 0xf30a)`);
  const entries = buf.readUInt16LE(2);
  const max = buf.readUInt16LE(4);
  const depth = buf.readUInt16LE(6);
  if (max === 0 || max > capacity) throw corrupt(w, where, `eh_max ${max} does not fit the node (at most ${capacity})`);
  if (entries > max) throw corrupt(w, where, `eh_entries ${entries} is above eh_max ${max}`);
  if (depth > MAX_DEPTH) throw corrupt(w, where, `eh_depth ${depth} is above ${MAX_DEPTH}`);
  return { entries, max, depth };
}

/** Entries per tree block (ext4_ext_space_block). */
export function entriesPerBlock(blockSize: number): number {
  return Math.floor((blockSize - HEADER) / ENTRY);
}

function checkPhysical(w: Walk, where: string, start: number, length: number): void {
  if (start < 1 || start + length > w.sb.blocksCount) {
    throw corrupt(w, where, `blocks ${start}..${start + length - 1} lie outside the file system (${w.sb.blocksCount} blocks)`);
  }
}

async function walkNode(w: Walk, node: Buffer, depth: number, lo: number, hi: number, where: string): Promise<void> {
  const h = header(w, node, depth < 0 ? 4 : entriesPerBlock(w.sb.blockSize), where);
  if (depth >= 0 && h.depth !== depth) throw corrupt(w, where, `eh_depth ${h.depth} where its parent says ${depth}`);
  if (h.entries > 0 && node.length < HEADER + h.entries * ENTRY) throw corrupt(w, where, 'entries run past the node');
  if (h.depth === 0) {
    for (let i = 0; i < h.entries; i++) {
      const e = HEADER + i * ENTRY;
      const logical = node.readUInt32LE(e);
      const rawLen = node.readUInt16LE(e + 4);
      const physical = node.readUInt16LE(e + 6) * 2 ** 32 + node.readUInt32LE(e + 8);
      const uninit = rawLen > EXT_INIT_MAX_LEN;
      const length = uninit ? rawLen - EXT_INIT_MAX_LEN : rawLen;
      const at = `${where}, extent ${i}`;
      if (length === 0) throw corrupt(w, at, 'extent of length 0');
      if (logical < w.next || logical < lo || logical + length > hi) {
        throw corrupt(w, at, `logical blocks ${logical}..${logical + length - 1} overlap the previous extent or leave the range ${lo}..${hi - 1} of their node`);
      }
      checkPhysical(w, at, physical, length);
      w.next = logical + length;
      w.runs.push({ logical, physical, length, uninit });
    }
    return;
  }
  let prev = -1;
  for (let i = 0; i < h.entries; i++) {
    const e = HEADER + i * ENTRY;
    const first = node.readUInt32LE(e);
    const child = node.readUInt16LE(e + 8) * 2 ** 32 + node.readUInt32LE(e + 4);
    const end = i + 1 < h.entries ? node.readUInt32LE(e + ENTRY) : hi;
    const at = `${where}, index ${i}`;
    if (first <= prev || first < lo || first >= hi || end > hi || end <= first) {
      throw corrupt(w, at, `index entries are not in ascending order inside ${lo}..${hi - 1}`);
    }
    prev = first;
    checkPhysical(w, at, child, 1);
    if (w.seen.has(child)) throw corrupt(w, at, `tree block ${child} is used twice`);
    w.seen.add(child);
    w.treeBlocks.push(child);
    const childWhere = `extent block ${child} of inode ${w.inode.ino}`;
    const buf = await w.disk.readBlock(child, childWhere);
    if (w.sb.metadataCsum) verifyTail(w, buf, childWhere, child);
    await walkNode(w, buf, h.depth - 1, first, end, childWhere);
  }
}

function verifyTail(w: Walk, buf: Buffer, where: string, block: number): void {
  const max = buf.readUInt16LE(4);
  const tail = HEADER + max * ENTRY;
  if (buf.readUInt16LE(0) !== EXTENT_MAGIC || tail + 4 > buf.length) return; // header() reports it
  const stored = buf.readUInt32LE(tail);
  const want = crc32c(w.seed, buf.subarray(0, tail));
  if (stored !== want) {
    throw new PolyvisorError('ERR_CHECKSUM', `checksum ${hex(stored)} does not match its contents (${hex(want)})`, { file: w.disk.name, structure: where, offset: block * w.sb.blockSize });
  }
}

/** Every extent of an extent-mapped inode, in logical order, and the tree blocks that hold them. */
export async function readExtentTree(disk: ExtDisk, sb: Superblock, inode: Inode): Promise<{ runs: Run[]; treeBlocks: number[] }> {
  const w: Walk = {
    disk,
    sb,
    inode,
    seed: sb.metadataCsum ? inodeCsumSeed(sb, inode.ino, inode.generation) : 0,
    runs: [],
    treeBlocks: [],
    seen: new Set(),
    next: 0,
  };
  await walkNode(w, inode.iBlock, -1, 0, LOGICAL_LIMIT, `extent tree of inode ${inode.ino}`);
  return { runs: w.runs, treeBlocks: w.treeBlocks };
}

/** Splits runs into extents no longer than an initialized extent may be. */
export function toExtents(runs: Run[]): Run[] {
  const out: Run[] = [];
  for (const r of runs) {
    for (let done = 0; done < r.length; done += EXT_INIT_MAX_LEN) {
      out.push({ logical: r.logical + done, physical: r.physical + done, length: Math.min(EXT_INIT_MAX_LEN, r.length - done), uninit: false });
    }
  }
  return out;
}

/** Tree blocks an extent tree of `extents` extents needs (0 when the 4 slots of i_block hold them). */
export function extentTreeBlocks(extents: number, blockSize: number): number {
  const per = entriesPerBlock(blockSize);
  let total = 0;
  let n = extents;
  while (n > 4) {
    n = Math.ceil(n / per);
    total += n;
  }
  return total;
}

function writeHeader(b: Buffer, entries: number, max: number, depth: number): void {
  b.writeUInt16LE(EXTENT_MAGIC, 0);
  b.writeUInt16LE(entries, 2);
  b.writeUInt16LE(max, 4);
  b.writeUInt16LE(depth, 6);
  b.writeUInt32LE(0, 8);
}

/**
 * Builds the smallest tree for `extents` (from toExtents) using exactly the tree blocks given
 * (extentTreeBlocks of them): returns i_block's 60 bytes and each tree block's contents, checksummed.
 */
export function buildExtentTree(sb: Superblock, inode: Inode, extents: Run[], treeBlocks: number[]): { iBlock: Buffer; blocks: { block: number; data: Buffer }[] } {
  const bs = sb.blockSize;
  const per = entriesPerBlock(bs);
  const seed = sb.metadataCsum ? inodeCsumSeed(sb, inode.ino, inode.generation) : 0;
  const blocks: { block: number; data: Buffer }[] = [];
  // entries of the level being built: [first logical, 12-byte entry body]
  let level: { first: number; fill: (b: Buffer, at: number) => void }[] = extents.map((x) => ({
    first: x.logical,
    fill: (b, at) => {
      b.writeUInt32LE(x.logical, at);
      b.writeUInt16LE(x.length + (x.uninit ? EXT_INIT_MAX_LEN : 0), at + 4);
      b.writeUInt16LE(Math.floor(x.physical / 2 ** 32), at + 6);
      b.writeUInt32LE(x.physical % 2 ** 32, at + 8);
    },
  }));
  let depth = 0;
  let next = 0;
  while (level.length > 4) {
    const up: typeof level = [];
    for (let i = 0; i < level.length; i += per) {
      const chunk = level.slice(i, i + per);
      const block = treeBlocks[next++];
      if (block === undefined) throw new PolyvisorError('ERR_INTERNAL', 'extent tree: fewer tree blocks than planned');
      const data = Buffer.alloc(bs);
      writeHeader(data, chunk.length, per, depth);
      chunk.forEach((c, k) => c.fill(data, HEADER + k * ENTRY));
      if (sb.metadataCsum) data.writeUInt32LE(crc32c(seed, data.subarray(0, HEADER + per * ENTRY)), HEADER + per * ENTRY);
      blocks.push({ block, data });
      up.push({
        first: chunk[0]!.first,
        fill: (b, at) => {
          b.writeUInt32LE(chunk[0]!.first, at);
          b.writeUInt32LE(block % 2 ** 32, at + 4);
          b.writeUInt16LE(Math.floor(block / 2 ** 32), at + 8);
          b.writeUInt16LE(0, at + 10);
        },
      });
    }
    level = up;
    depth++;
  }
  const iBlock = Buffer.alloc(I_BLOCK_SIZE);
  writeHeader(iBlock, level.length, 4, depth);
  level.forEach((c, k) => c.fill(iBlock, HEADER + k * ENTRY));
  return { iBlock, blocks };
}
