/**
 * The ext2/3/4 superblock (Documentation/filesystems/ext4/super.rst, struct ext4_super_block):
 * 1024 bytes at byte 1024 of the volume, little-endian.
 *
 * Feature flags decide what a reader may do (super.rst, "s_feature_compat"):
 * - an INCOMPAT feature we do not know means the file system cannot be read at all;
 * - a RO_COMPAT feature we do not know means it may be read but never written;
 * - COMPAT features may be ignored.
 * On top of that, some features we know how to read we do not know how to write correctly
 * (bigalloc, quota, ...): those make the file system read-only here too, with the reason.
 */
import { PolyvisorError, hex } from '../errors.js';
import { crc32c } from './ext4-csum.js';

export const SUPERBLOCK_OFFSET = 1024;
export const SUPERBLOCK_SIZE = 1024;
const MAGIC = 0xef53;

/** super.rst, the superblock fields this implementation uses (byte offsets). */
export const S = {
  inodes_count: 0x0,
  blocks_count_lo: 0x4,
  r_blocks_count_lo: 0x8,
  free_blocks_count_lo: 0xc,
  free_inodes_count: 0x10,
  first_data_block: 0x14,
  log_block_size: 0x18,
  log_cluster_size: 0x1c,
  blocks_per_group: 0x20,
  clusters_per_group: 0x24,
  inodes_per_group: 0x28,
  wtime: 0x30,
  magic: 0x38,
  state: 0x3a,
  rev_level: 0x4c,
  first_ino: 0x54,
  inode_size: 0x58,
  feature_compat: 0x5c,
  feature_incompat: 0x60,
  feature_ro_compat: 0x64,
  uuid: 0x68,
  volume_name: 0x78,
  reserved_gdt_blocks: 0xce,
  journal_inum: 0xe0,
  last_orphan: 0xe8,
  hash_seed: 0xec,
  def_hash_version: 0xfc,
  desc_size: 0xfe,
  first_meta_bg: 0x104,
  blocks_count_hi: 0x150,
  free_blocks_count_hi: 0x158,
  want_extra_isize: 0x15e,
  flags: 0x160,
  checksum_type: 0x175,
  kbytes_written: 0x178,
  backup_bgs: 0x24c,
  checksum_seed: 0x270,
  wtime_hi: 0x274,
  checksum: 0x3fc,
} as const;

/** super.rst, s_state */
export const STATE_VALID_FS = 0x1;
export const STATE_ERROR_FS = 0x2;

export const COMPAT = {
  dir_prealloc: 0x1,
  imagic_inodes: 0x2,
  has_journal: 0x4,
  ext_attr: 0x8,
  resize_inode: 0x10,
  dir_index: 0x20,
  lazy_bg: 0x40,
  exclude_inode: 0x80,
  exclude_bitmap: 0x100,
  sparse_super2: 0x200,
  fast_commit: 0x400,
  stable_inodes: 0x800,
  orphan_file: 0x1000,
} as const;

export const INCOMPAT = {
  compression: 0x1,
  filetype: 0x2,
  recover: 0x4,
  journal_dev: 0x8,
  meta_bg: 0x10,
  extent: 0x40,
  '64bit': 0x80,
  mmp: 0x100,
  flex_bg: 0x200,
  ea_inode: 0x400,
  dirdata: 0x1000,
  csum_seed: 0x2000,
  large_dir: 0x4000,
  inline_data: 0x8000,
  encrypt: 0x10000,
  casefold: 0x20000,
} as const;

export const RO_COMPAT = {
  sparse_super: 0x1,
  large_file: 0x2,
  btree_dir: 0x4,
  huge_file: 0x8,
  gdt_csum: 0x10,
  dir_nlink: 0x20,
  extra_isize: 0x40,
  has_snapshot: 0x80,
  quota: 0x100,
  bigalloc: 0x200,
  metadata_csum: 0x400,
  replica: 0x800,
  read_only: 0x1000,
  project: 0x2000,
  shared_blocks: 0x4000,
  verity: 0x8000,
  orphan_present: 0x10000,
} as const;

/** INCOMPAT features whose data we can read (the rest are refused, by name). */
const INCOMPAT_READ =
  INCOMPAT.filetype | INCOMPAT.recover | INCOMPAT.meta_bg | INCOMPAT.extent | INCOMPAT['64bit'] | INCOMPAT.mmp |
  INCOMPAT.flex_bg | INCOMPAT.ea_inode | INCOMPAT.csum_seed | INCOMPAT.large_dir | INCOMPAT.inline_data |
  INCOMPAT.encrypt | INCOMPAT.casefold;
/** INCOMPAT features we also write correctly. */
const INCOMPAT_WRITE =
  INCOMPAT.filetype | INCOMPAT.meta_bg | INCOMPAT.extent | INCOMPAT['64bit'] | INCOMPAT.flex_bg |
  INCOMPAT.ea_inode | INCOMPAT.csum_seed | INCOMPAT.large_dir | INCOMPAT.inline_data | INCOMPAT.encrypt;
/** RO_COMPAT features we know (others make the file system read-only). */
const RO_COMPAT_KNOWN = Object.values(RO_COMPAT).reduce((a, b) => a | b, 0);
/**
 * RO_COMPAT features we write correctly. Not here: quota and project (usage records in quota
 * files would go stale), bigalloc (allocation in clusters), snapshots, replicas, read_only,
 * shared_blocks, verity, orphan_present (orphans must be cleaned up first).
 */
const RO_COMPAT_WRITE =
  RO_COMPAT.sparse_super | RO_COMPAT.large_file | RO_COMPAT.btree_dir | RO_COMPAT.huge_file | RO_COMPAT.gdt_csum |
  RO_COMPAT.dir_nlink | RO_COMPAT.extra_isize | RO_COMPAT.metadata_csum;

function featureNames(table: Record<string, number>, bits: number): string[] {
  const names: string[] = [];
  for (let bit = 1; bit !== 0 && bit <= 0x80000000; bit = (bit << 1) >>> 0) {
    if ((bits & bit) === 0) continue;
    const name = Object.entries(table).find(([, v]) => v === bit)?.[0];
    names.push(name ?? hex(bit));
  }
  return names;
}

export interface Superblock {
  /** the 1024 bytes as read, kept so that writes change only the fields they mean to */
  raw: Buffer;
  inodesCount: number;
  blocksCount: number;
  freeBlocksCount: number;
  freeInodesCount: number;
  firstDataBlock: number;
  blockSize: number;
  blocksPerGroup: number;
  inodesPerGroup: number;
  groupCount: number;
  state: number;
  revLevel: number;
  firstIno: number;
  inodeSize: number;
  compat: number;
  incompat: number;
  roCompat: number;
  uuid: Buffer;
  volumeName: string;
  reservedGdtBlocks: number;
  journalInum: number;
  lastOrphan: number;
  descSize: number;
  firstMetaBg: number;
  wantExtraIsize: number;
  backupBgs: [number, number];
  /** crc32c seed for every metadata checksum but the superblock's own */
  csumSeed: number;
  metadataCsum: boolean;
  /** group descriptors carry a checksum (gdt_csum or metadata_csum): the UNINIT flags are honoured */
  groupCsum: boolean;
  /** why this file system cannot be written here, or null */
  readOnlyReason: string | null;
}

/**
 * Is there an ext2/3/4 superblock in `head`, the first 2048 bytes (or more) of a volume?
 * Checks the magic and that the block size and revision are ones that exist.
 */
export function probeExt(head: Uint8Array): boolean {
  if (head.length < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE) return false;
  const b = Buffer.from(head.buffer, head.byteOffset + SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE);
  return b.readUInt16LE(S.magic) === MAGIC && b.readUInt32LE(S.log_block_size) <= 6 && b.readUInt32LE(S.rev_level) <= 1;
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/** CRC-32C of the superblock up to its checksum field (checksums.rst, "Superblock"). */
export function superblockChecksum(raw: Buffer): number {
  return crc32c(0xffffffff, raw.subarray(0, S.checksum));
}

/**
 * Parses and validates the superblock. `file` names the volume in messages. Unknown INCOMPAT
 * features and a bad checksum are errors; reasons not to write are collected in readOnlyReason.
 */
export function parseSuperblock(raw: Buffer, file: string): Superblock {
  const where = { file, structure: 'superblock', offset: SUPERBLOCK_OFFSET };
  const corrupt = (detail: string) => new PolyvisorError('ERR_CORRUPT', detail, where);
  if (raw.length < SUPERBLOCK_SIZE) throw new PolyvisorError('ERR_TRUNCATED', 'the volume is too small to hold a superblock', where);
  const magic = raw.readUInt16LE(S.magic);
  if (magic !== MAGIC) throw corrupt(`bad magic ${hex(magic)} (expected 0xef53): not an ext2/3/4 file system`);
  const revLevel = raw.readUInt32LE(S.rev_level);
  if (revLevel > 1) throw new PolyvisorError('ERR_UNSUPPORTED', `revision level ${revLevel} (only 0 and 1 exist)`, where);
  const dynamic = revLevel >= 1;
  const compat = dynamic ? raw.readUInt32LE(S.feature_compat) : 0;
  const incompat = dynamic ? raw.readUInt32LE(S.feature_incompat) : 0;
  const roCompat = dynamic ? raw.readUInt32LE(S.feature_ro_compat) : 0;

  const unreadable = incompat & ~INCOMPAT_READ;
  if (unreadable) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `incompatible feature ${featureNames(INCOMPAT, unreadable).join(', ')} is not supported`, where);
  }
  const metadataCsum = (roCompat & RO_COMPAT.metadata_csum) !== 0;
  if (metadataCsum) {
    const type = raw[S.checksum_type]!;
    if (type !== 1) throw new PolyvisorError('ERR_UNSUPPORTED', `metadata checksum type ${type} (only 1, crc32c, exists)`, where);
    const stored = raw.readUInt32LE(S.checksum);
    const computed = superblockChecksum(raw);
    if (stored !== computed) {
      throw new PolyvisorError('ERR_CHECKSUM', `superblock checksum ${hex(stored)} does not match its contents (${hex(computed)})`, where);
    }
  }

  const logBlockSize = raw.readUInt32LE(S.log_block_size);
  if (logBlockSize > 6) throw corrupt(`s_log_block_size ${logBlockSize} gives a block size above 64 KiB`);
  const blockSize = 1024 << logBlockSize;
  const bigalloc = (roCompat & RO_COMPAT.bigalloc) !== 0;
  const logClusterSize = raw.readUInt32LE(S.log_cluster_size);
  if (bigalloc && (logClusterSize < logBlockSize || logClusterSize > 29)) throw corrupt(`s_log_cluster_size ${logClusterSize} is out of range`);
  const blocksPerGroup = raw.readUInt32LE(S.blocks_per_group);
  const clustersPerGroup = bigalloc ? raw.readUInt32LE(S.clusters_per_group) : blocksPerGroup;
  if (clustersPerGroup === 0 || clustersPerGroup > blockSize * 8 || blocksPerGroup === 0) {
    throw corrupt(`s_blocks_per_group ${blocksPerGroup} is out of range (1..${blockSize * 8})`);
  }
  if (bigalloc && blocksPerGroup !== clustersPerGroup * 2 ** (logClusterSize - logBlockSize)) {
    throw corrupt(`s_blocks_per_group ${blocksPerGroup} does not match s_clusters_per_group ${clustersPerGroup}`);
  }
  const inodesPerGroup = raw.readUInt32LE(S.inodes_per_group);
  if (inodesPerGroup === 0 || inodesPerGroup > blockSize * 8) throw corrupt(`s_inodes_per_group ${inodesPerGroup} is out of range (1..${blockSize * 8})`);
  const is64 = (incompat & INCOMPAT['64bit']) !== 0;
  const blocksCount = raw.readUInt32LE(S.blocks_count_lo) + (is64 ? raw.readUInt32LE(S.blocks_count_hi) * 2 ** 32 : 0);
  const firstDataBlock = raw.readUInt32LE(S.first_data_block);
  if (firstDataBlock > (blockSize === 1024 ? 1 : 0)) throw corrupt(`s_first_data_block ${firstDataBlock} is wrong for ${blockSize}-byte blocks`);
  if (blocksCount <= firstDataBlock || !Number.isSafeInteger(blocksCount * blockSize)) throw corrupt(`s_blocks_count ${blocksCount} is out of range`);
  const groupCount = Math.ceil((blocksCount - firstDataBlock) / blocksPerGroup);
  const inodesCount = raw.readUInt32LE(S.inodes_count);
  if (inodesCount < 11 || inodesCount > groupCount * inodesPerGroup) {
    throw corrupt(`s_inodes_count ${inodesCount} does not fit ${groupCount} groups of ${inodesPerGroup} inodes`);
  }
  const inodeSize = dynamic ? raw.readUInt16LE(S.inode_size) : 128;
  if (inodeSize < 128 || inodeSize > blockSize || !isPowerOfTwo(inodeSize)) throw corrupt(`s_inode_size ${inodeSize} is not a power of two from 128 to the block size`);
  const firstIno = dynamic ? raw.readUInt32LE(S.first_ino) : 11;
  if (firstIno < 11 || firstIno > inodesCount) throw corrupt(`s_first_ino ${firstIno} is out of range (11..${inodesCount})`);
  let descSize = 32;
  if (is64) {
    descSize = raw.readUInt16LE(S.desc_size);
    if (descSize < 64 || descSize > 1024 || !isPowerOfTwo(descSize)) throw corrupt(`s_desc_size ${descSize} is not a power of two from 64 to 1024`);
  }
  const metaBg = (incompat & INCOMPAT.meta_bg) !== 0;
  const firstMetaBg = raw.readUInt32LE(S.first_meta_bg);
  const descPerBlock = blockSize / descSize;
  if (metaBg && firstMetaBg > Math.ceil(groupCount / descPerBlock)) throw corrupt(`s_first_meta_bg ${firstMetaBg} is past the last meta group`);
  const reservedGdtBlocks = raw.readUInt16LE(S.reserved_gdt_blocks);
  if (reservedGdtBlocks > blockSize / 4) throw corrupt(`s_reserved_gdt_blocks ${reservedGdtBlocks} is above ${blockSize / 4}`);

  const uuid = Buffer.from(raw.subarray(S.uuid, S.uuid + 16));
  const csumSeed = incompat & INCOMPAT.csum_seed ? raw.readUInt32LE(S.checksum_seed) : crc32c(0xffffffff, uuid);
  const nameBytes = raw.subarray(S.volume_name, S.volume_name + 16);
  const nul = nameBytes.indexOf(0);
  const volumeName = nameBytes.subarray(0, nul < 0 ? 16 : nul).toString('utf8');
  const state = raw.readUInt16LE(S.state);

  const reasons: string[] = [];
  const roUnknown = roCompat & ~RO_COMPAT_KNOWN;
  if (roUnknown) reasons.push(`it has read-only-compatible feature ${featureNames(RO_COMPAT, roUnknown).join(', ')} that Polyvisor does not know`);
  const roUnwritable = roCompat & RO_COMPAT_KNOWN & ~RO_COMPAT_WRITE;
  if (roUnwritable) reasons.push(`Polyvisor does not write file systems with ${featureNames(RO_COMPAT, roUnwritable).join(', ')}`);
  const inUnwritable = incompat & ~INCOMPAT_WRITE & ~INCOMPAT.recover;
  if (inUnwritable) reasons.push(`Polyvisor does not write file systems with ${featureNames(INCOMPAT, inUnwritable).join(', ')}`);
  if (incompat & INCOMPAT.recover) reasons.push('its journal needs recovery (the guest was not shut down cleanly): run e2fsck on it, or boot and shut down the guest once');
  else if (state & STATE_ERROR_FS) reasons.push('it records errors: run e2fsck on it first');
  else if (!(state & STATE_VALID_FS)) reasons.push('it was not cleanly unmounted: run e2fsck on it first');

  return {
    raw,
    inodesCount,
    blocksCount,
    freeBlocksCount: raw.readUInt32LE(S.free_blocks_count_lo) + (is64 ? raw.readUInt32LE(S.free_blocks_count_hi) * 2 ** 32 : 0),
    freeInodesCount: raw.readUInt32LE(S.free_inodes_count),
    firstDataBlock,
    blockSize,
    blocksPerGroup,
    inodesPerGroup,
    groupCount,
    state,
    revLevel,
    firstIno,
    inodeSize,
    compat,
    incompat,
    roCompat,
    uuid,
    volumeName,
    reservedGdtBlocks,
    journalInum: raw.readUInt32LE(S.journal_inum),
    lastOrphan: raw.readUInt32LE(S.last_orphan),
    descSize,
    firstMetaBg,
    wantExtraIsize: raw.readUInt16LE(S.want_extra_isize),
    backupBgs: [raw.readUInt32LE(S.backup_bgs), raw.readUInt32LE(S.backup_bgs + 4)],
    csumSeed,
    metadataCsum,
    groupCsum: metadataCsum || (roCompat & RO_COMPAT.gdt_csum) !== 0,
    readOnlyReason: reasons.length ? reasons.join('; ') : null,
  };
}

/** Writes the free counts into the raw superblock and seals its checksum. */
export function sealSuperblock(sb: Superblock, now: number): Buffer {
  const raw = sb.raw;
  raw.writeUInt32LE(sb.freeBlocksCount % 2 ** 32, S.free_blocks_count_lo);
  if (sb.incompat & INCOMPAT['64bit']) raw.writeUInt32LE(Math.floor(sb.freeBlocksCount / 2 ** 32), S.free_blocks_count_hi);
  raw.writeUInt32LE(sb.freeInodesCount, S.free_inodes_count);
  if (sb.revLevel >= 1) raw.writeUInt32LE(sb.roCompat, S.feature_ro_compat);
  raw.writeUInt32LE(now % 2 ** 32, S.wtime);
  raw[S.wtime_hi] = Math.floor(now / 2 ** 32) & 0xff;
  if (sb.metadataCsum) raw.writeUInt32LE(superblockChecksum(raw), S.checksum);
  return raw;
}

export function hasFeature(sb: Superblock, kind: 'compat' | 'incompat' | 'roCompat', bit: number): boolean {
  return (sb[kind] & bit) !== 0;
}
