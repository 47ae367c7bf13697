/**
 * Classic block maps (Documentation/filesystems/ext4/ifork.rst, "Direct/Indirect Block
 * Addressing"), as ext2 and ext3 map every file: i_block[0..11] point at the first 12 data
 * blocks, i_block[12] at an indirect block of block/4 pointers, i_block[13] at a double-indirect
 * block, i_block[14] at a triple-indirect block. A zero pointer is a hole.
 *
 * Reading is hostile-safe: every pointer is checked against the file system, no map block may
 * be used twice (so a map cannot point into itself), and a map may not name more blocks than
 * the inode's i_blocks says it owns.
 */
import { PolyvisorError } from '../errors.js';
import type { ExtDisk } from './ext4-disk.js';
import type { Run } from './ext4-extents.js';
import { I_BLOCK_SIZE, type Inode } from './ext4-inode.js';
import type { Superblock } from './ext4-superblock.js';

const DIRECT = 12;

/** Logical blocks a block map can address with `per` pointers per block. */
export function blockMapLimit(per: number): number {
  return DIRECT + per + per * per + per * per * per;
}

/**
 * The runs of a block-mapped inode up to logical block `limit` (exclusive), and the map blocks
 * (indirect, double, triple) that hold them.
 */
export async function readBlockMap(disk: ExtDisk, sb: Superblock, inode: Inode, limit: number): Promise<{ runs: Run[]; mapBlocks: number[] }> {
  const per = sb.blockSize / 4;
  const runs: Run[] = [];
  const mapBlocks: number[] = [];
  const seen = new Set<number>();
  // i_blocks bounds how many blocks a genuine map can name; a hostile one is cut off there
  const owned = Math.ceil(inode.blocks512(sb) / (sb.blockSize / 512));
  let named = 0;
  const structure = `block map of inode ${inode.ino}`;
  const fail = (detail: string) => new PolyvisorError('ERR_CORRUPT', detail, { file: disk.name, structure });
  const check = (p: number, logical: number, what: string) => {
    if (p >= sb.blocksCount) throw fail(`${what} pointer ${p} at logical block ${logical} lies outside the file system (${sb.blocksCount} blocks)`);
    if (++named > owned) throw fail(`names more blocks than the ${owned} its i_blocks accounts for`);
  };
  const push = (logical: number, physical: number) => {
    const last = runs[runs.length - 1];
    if (last && last.logical + last.length === logical && last.physical + last.length === physical) last.length++;
    else runs.push({ logical, physical, length: 1, uninit: false });
  };
  const walk = async (block: number, level: number, first: number): Promise<void> => {
    if (seen.has(block)) throw fail(`map block ${block} is used twice`);
    seen.add(block);
    mapBlocks.push(block);
    const buf = await disk.readBlock(block, `${structure}, map block ${block}`);
    const span = per ** (level - 1);
    for (let i = 0; i < per; i++) {
      const logical = first + i * span;
      if (logical >= limit) break;
      const p = buf.readUInt32LE(i * 4);
      if (p === 0) continue;
      check(p, logical, level === 1 ? 'data' : 'map');
      if (level === 1) push(logical, p);
      else await walk(p, level - 1, logical);
    }
  };
  const iBlock = inode.iBlock;
  for (let i = 0; i < DIRECT && i < limit; i++) {
    const p = iBlock.readUInt32LE(i * 4);
    if (p === 0) continue;
    check(p, i, 'data');
    push(i, p);
  }
  let first = DIRECT;
  for (let level = 1; level <= 3; level++) {
    const p = iBlock.readUInt32LE((DIRECT + level - 1) * 4);
    if (p !== 0 && first < limit) {
      check(p, first, 'map');
      await walk(p, level, first);
    }
    first += per ** level;
  }
  return { runs, mapBlocks };
}

/** Map blocks a fully mapped file of `n` blocks needs. */
export function blockMapBlocks(n: number, per: number): number {
  let total = 0;
  let rest = n - DIRECT;
  for (let level = 1; level <= 3 && rest > 0; level++) {
    const covered = Math.min(rest, per ** level);
    for (let l = level; l >= 1; l--) total += Math.ceil(covered / per ** (l - 1) / per);
    rest -= covered;
  }
  return total;
}

/**
 * Builds the block map of a fully mapped file of `n` blocks (`physical(i)` for each), using
 * exactly the map blocks given (blockMapBlocks of them): returns i_block and the map blocks' contents.
 */
export function buildBlockMap(blockSize: number, n: number, physical: (logical: number) => number, mapBlocks: number[]): { iBlock: Buffer; blocks: { block: number; data: Buffer }[] } {
  const per = blockSize / 4;
  if (n > blockMapLimit(per)) throw new PolyvisorError('ERR_UNSUPPORTED', `a block-mapped file cannot have ${n} blocks (at most ${blockMapLimit(per)})`);
  const iBlock = Buffer.alloc(I_BLOCK_SIZE);
  const blocks: { block: number; data: Buffer }[] = [];
  let next = 0;
  const fill = (level: number, first: number): number => {
    const block = mapBlocks[next++];
    if (block === undefined) throw new PolyvisorError('ERR_INTERNAL', 'block map: fewer map blocks than planned');
    const data = Buffer.alloc(blockSize);
    const span = per ** (level - 1);
    for (let i = 0; i < per; i++) {
      const logical = first + i * span;
      if (logical >= n) break;
      data.writeUInt32LE(level === 1 ? physical(logical) : fill(level - 1, logical), i * 4);
    }
    blocks.push({ block, data });
    return block;
  };
  for (let i = 0; i < DIRECT && i < n; i++) iBlock.writeUInt32LE(physical(i), i * 4);
  let first = DIRECT;
  for (let level = 1; level <= 3; level++) {
    if (first < n) iBlock.writeUInt32LE(fill(level, first), (DIRECT + level - 1) * 4);
    first += per ** level;
  }
  return { iBlock, blocks };
}
