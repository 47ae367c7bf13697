/**
 * Journal replay into memory (Documentation/filesystems/ext4/journal.rst, jbd2; all fields
 * big-endian).
 *
 * When a guest was not shut down cleanly its file system carries INCOMPAT_RECOVER and the
 * journal holds committed transactions whose blocks may not have reached their homes. The
 * kernel (and e2fsck) replay them before anything else. We do the same, as jbd2's recovery
 * does it in three passes, but into an overlay map of block number to contents: the guest's
 * disk is never written, and every read of the file system sees the replayed blocks.
 *
 * 1. scan: from s_start with sequence s_sequence, walk descriptor, revoke and commit blocks
 *    until a block that is not the next one of the log (wrong magic or sequence, a failed
 *    checksum); only transactions with a commit block count;
 * 2. revoke: for each block number, the newest transaction that revoked it;
 * 3. replay: each tagged block of each committed transaction, unless a revoke at the same or a
 *    later transaction covers it, the later copy winning.
 *
 * Fast-commit journals are refused (their replay rebuilds inodes from a log of changes).
 */
import { PolyvisorError, hex } from '../errors.js';
import { crc32c } from './ext4-csum.js';
import type { ExtDisk } from './ext4-disk.js';
import type { Run } from './ext4-extents.js';

const JBD2_MAGIC = 0xc03b3998;
const T_DESCRIPTOR = 1;
const T_COMMIT = 2;
const T_SUPERBLOCK_V1 = 3;
const T_SUPERBLOCK_V2 = 4;
const T_REVOKE = 5;

/** journal.rst, jbd2 incompat features */
const J_INCOMPAT_REVOKE = 0x1;
const J_INCOMPAT_64BIT = 0x2;
const J_INCOMPAT_ASYNC_COMMIT = 0x4;
const J_INCOMPAT_CSUM_V2 = 0x8;
const J_INCOMPAT_CSUM_V3 = 0x10;
const J_INCOMPAT_FAST_COMMIT = 0x20;
const J_KNOWN = J_INCOMPAT_REVOKE | J_INCOMPAT_64BIT | J_INCOMPAT_ASYNC_COMMIT | J_INCOMPAT_CSUM_V2 | J_INCOMPAT_CSUM_V3;

/** journal.rst, block tag flags */
const TAG_ESCAPE = 0x1;
const TAG_SAME_UUID = 0x2;
const TAG_LAST = 0x8;

export interface ReplayResult {
  /** replayed block contents by file-system block number */
  blocks: Map<number, Buffer>;
  transactions: number;
  /** data blocks skipped because their tag checksum failed */
  skipped: number;
}

interface Tag {
  target: number;
  /** journal block holding the data */
  at: number;
  flags: number;
  checksum: number;
}

interface Transaction {
  sequence: number;
  tags: Tag[];
  revoked: number[];
}

/**
 * Replays the journal whose file (the journal inode's data) is mapped by `runs`, of
 * `journalBlocks` blocks, into memory. `fsBlocks` bounds the block numbers it may name.
 */
export async function replayJournal(disk: ExtDisk, runs: Run[], journalBlocks: number, fsBlocks: number): Promise<ReplayResult> {
  const bs = disk.blockSize;
  const file = disk.name;
  const fail = (structure: string, detail: string) => new PolyvisorError('ERR_CORRUPT', detail, { file, structure });
  const physical = (j: number): number => {
    for (const r of runs) if (j >= r.logical && j < r.logical + r.length && !r.uninit) return r.physical + (j - r.logical);
    throw fail('journal', `journal block ${j} is not mapped in the journal inode`);
  };
  const readJ = async (j: number) => disk.readBlocks(physical(j), 1, `journal block ${j}`);

  const jsb = await readJ(0);
  if (jsb.readUInt32BE(0) !== JBD2_MAGIC) throw fail('journal superblock', `bad magic ${hex(jsb.readUInt32BE(0))} (expected 0xc03b3998)`);
  const type = jsb.readUInt32BE(4);
  if (type !== T_SUPERBLOCK_V1 && type !== T_SUPERBLOCK_V2) throw fail('journal superblock', `block type ${type} is not a journal superblock`);
  const jBlockSize = jsb.readUInt32BE(0xc);
  const maxlen = jsb.readUInt32BE(0x10);
  const first = jsb.readUInt32BE(0x14);
  let sequence = jsb.readUInt32BE(0x18);
  const start = jsb.readUInt32BE(0x1c);
  if (jBlockSize !== bs) throw fail('journal superblock', `journal block size ${jBlockSize} differs from the file system's ${bs}`);
  if (maxlen > journalBlocks || maxlen < 2 || first < 1 || first >= maxlen) {
    throw fail('journal superblock', `s_maxlen ${maxlen} / s_first ${first} do not fit a journal of ${journalBlocks} blocks`);
  }
  const incompat = type === T_SUPERBLOCK_V2 ? jsb.readUInt32BE(0x28) : 0;
  if (incompat & J_INCOMPAT_FAST_COMMIT) {
    throw new PolyvisorError('ERR_UNSUPPORTED', 'the journal needs recovery and holds fast commits, which Polyvisor does not replay', { file, structure: 'journal superblock' });
  }
  if (incompat & ~J_KNOWN) throw new PolyvisorError('ERR_UNSUPPORTED', `journal incompat feature ${hex(incompat & ~J_KNOWN)}`, { file, structure: 'journal superblock' });
  const csum = (incompat & (J_INCOMPAT_CSUM_V2 | J_INCOMPAT_CSUM_V3)) !== 0;
  const v3 = (incompat & J_INCOMPAT_CSUM_V3) !== 0;
  const wide = (incompat & J_INCOMPAT_64BIT) !== 0;
  const seed = csum ? crc32c(0xffffffff, jsb.subarray(0x30, 0x40)) : 0;
  if (csum) {
    const copy = Buffer.from(jsb.subarray(0, 1024));
    const stored = copy.readUInt32BE(0xfc);
    copy.writeUInt32BE(0, 0xfc);
    const want = crc32c(0xffffffff, copy);
    if (stored !== want) throw new PolyvisorError('ERR_CHECKSUM', `checksum ${hex(stored)} does not match its contents (${hex(want)})`, { file, structure: 'journal superblock' });
  }
  const result: ReplayResult = { blocks: new Map(), transactions: 0, skipped: 0 };
  if (start === 0) return result; // journal.rst: nothing logged since the last checkpoint
  if (start < first || start >= maxlen) throw fail('journal superblock', `s_start ${start} lies outside the log ${first}..${maxlen - 1}`);

  const next = (j: number) => (j + 1 >= maxlen ? first : j + 1);
  // a metadata block's checksum: the tail (descriptor, revoke) or h_chksum[0] (commit), zeroed
  const blockCsumOk = (b: Buffer, at: number): boolean => {
    if (!csum) return true;
    const copy = Buffer.from(b);
    const stored = copy.readUInt32BE(at);
    copy.writeUInt32BE(0, at);
    return crc32c(seed, copy) === stored;
  };
  const tagBytes = v3 ? 16 : 12 - (wide ? 0 : 4) + (incompat & J_INCOMPAT_CSUM_V2 ? 2 : 0);

  // pass 1: scan
  const committed: Transaction[] = [];
  let cur: Transaction = { sequence, tags: [], revoked: [] };
  let j = start;
  for (let visited = 0; visited < maxlen; visited++) {
    const b = await readJ(j);
    if (b.readUInt32BE(0) !== JBD2_MAGIC || b.readUInt32BE(8) !== sequence) break;
    const kind = b.readUInt32BE(4);
    if (kind === T_DESCRIPTOR) {
      if (!blockCsumOk(b, bs - 4)) break;
      const end = bs - (csum ? 4 : 0);
      let off = 12;
      let data = j;
      const tags: Tag[] = [];
      while (off + tagBytes <= end) {
        const lo = b.readUInt32BE(off);
        const flags = v3 ? b.readUInt32BE(off + 4) : b.readUInt16BE(off + 6);
        const hi = wide ? b.readUInt32BE(off + 8) : 0;
        const checksum = v3 ? b.readUInt32BE(off + 12) : csum ? b.readUInt16BE(off + 4) : 0;
        data = next(data);
        tags.push({ target: hi * 2 ** 32 + lo, at: data, flags, checksum });
        visited++;
        off += tagBytes + (flags & TAG_SAME_UUID ? 0 : 16);
        if (flags & TAG_LAST) break;
      }
      cur.tags.push(...tags);
      j = next(data);
      continue;
    }
    if (kind === T_REVOKE) {
      if (!blockCsumOk(b, bs - 4)) break;
      const used = b.readUInt32BE(12);
      const size = wide ? 8 : 4;
      if (used < 16 || used > bs - (csum ? 4 : 0)) throw fail(`journal revoke block ${j}`, `r_count ${used} does not fit the block`);
      for (let off = 16; off + size <= used; off += size) cur.revoked.push(wide ? b.readUInt32BE(off) * 2 ** 32 + b.readUInt32BE(off + 4) : b.readUInt32BE(off));
      j = next(j);
      continue;
    }
    if (kind === T_COMMIT) {
      if (!blockCsumOk(b, 0x10)) break;
      committed.push(cur);
      sequence = (sequence + 1) >>> 0;
      cur = { sequence, tags: [], revoked: [] };
      j = next(j);
      continue;
    }
    break;
  }

  // pass 2: revoke table, newest revoking transaction per block
  const revokedAt = new Map<number, number>();
  for (const t of committed) for (const r of t.revoked) revokedAt.set(r, t.sequence);

  // pass 3: replay, later transactions overwriting earlier ones
  const seqBuf = Buffer.alloc(4);
  for (const t of committed) {
    seqBuf.writeUInt32BE(t.sequence, 0);
    for (const tag of t.tags) {
      const r = revokedAt.get(tag.target);
      // sequences compare as jbd2's tid_geq: modulo 2^32
      if (r !== undefined && ((r - t.sequence) | 0) >= 0) continue;
      if (tag.target >= fsBlocks) throw fail(`journal transaction ${t.sequence}`, `tag names block ${tag.target}, outside the file system (${fsBlocks} blocks)`);
      const data = Buffer.from(await readJ(tag.at));
      if (csum) {
        const c = crc32c(crc32c(seed, seqBuf), data);
        if ((v3 ? c : c & 0xffff) !== tag.checksum) {
          result.skipped++;
          continue;
        }
      }
      if (tag.flags & TAG_ESCAPE) data.writeUInt32BE(JBD2_MAGIC, 0);
      result.blocks.set(tag.target, data);
    }
  }
  result.transactions = committed.length;
  return result;
}
