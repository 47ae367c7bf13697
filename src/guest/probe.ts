/**
 * What a volume holds, from its signatures: the file system, swap, LVM PV, LUKS container or
 * NTFS volume, with the UUID and label the format records. Type names are blkid's TYPE
 * values (ext4, vfat, swap, LVM2_member, crypto_LUKS, ...), so that fstab, crypttab and
 * /dev/disk/by-uuid logic can compare them directly; UUIDs are formatted as blkid prints them.
 *
 * Signatures and fields, by each format's own specification or header file:
 * - ext2/3/4: superblock at 1024, s_magic 0xEF53 at +56, s_uuid at +104, s_volume_name at
 *   +120; ext2/ext3/ext4 told apart by feature flags as blkid does (e2fsprogs lib/ext2fs/ext2_fs.h);
 * - FAT: a valid BPB (fatgen103 section 3), volume ID and label (the root directory's
 *   volume-ID entry first, as blkid does);
 * - XFS: "XFSB" at 0, sb_uuid at 32, sb_fname at 108 (xfs_format.h);
 * - btrfs: "_BHRfS_M" at 64 KiB + 64, fsid at +32, label at +299 (btrfs ctree.h);
 * - swap: "SWAPSPACE2" in the last 10 bytes of the first page (4, 8, 16 or 64 KiB), uuid at
 *   1024 + 12, volume_name at 1024 + 28 (include/linux/swap.h, union swap_header);
 * - LVM2 PV: "LABELONE" in one of the first four sectors with type "LVM2 001";
 * - LUKS: "LUKS\xba\xbe" at 0, version at 6, uuid (text) at 168, LUKS2 label at 24;
 * - NTFS: "NTFS    " at 3, volume serial number at 0x48, label from $Volume's
 *   $VOLUME_NAME attribute (MFT record 3).
 */
import { PolyvisorError } from '../errors.js';
import { parseBpb } from './fat-bpb.js';
import { FatFs } from './fat.js';
import { readPvLabel } from './lvm.js';
import type { Volume } from './volume.js';

export type VolumeType = 'ext2' | 'ext3' | 'ext4' | 'jbd' | 'vfat' | 'xfs' | 'btrfs' | 'swap' | 'LVM2_member' | 'crypto_LUKS' | 'ntfs' | 'unknown';

export interface ProbeResult {
  type: VolumeType;
  uuid?: string;
  label?: string;
  /** a finer version where blkid gives one: FAT12/FAT16/FAT32, LUKS 1/2, swap 1 */
  version?: string;
}

/** RFC 4122 byte order (big-endian fields), lowercase, as blkid prints ext, XFS, btrfs and swap UUIDs */
function uuidAt(b: Buffer, off: number): string {
  const h = b.toString('hex', off, off + 16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** a NUL-padded string field */
function cstr(b: Buffer, off: number, len: number, enc: BufferEncoding = 'utf8'): string {
  const f = b.subarray(off, off + len);
  const end = f.indexOf(0);
  return f.toString(enc, 0, end < 0 ? f.length : end);
}

async function readAt(v: Volume, off: number, len: number): Promise<Buffer | null> {
  if (off + len > v.size) return null;
  return v.read(off, len);
}

const withLabel = (r: ProbeResult, label: string): ProbeResult => (label ? { ...r, label } : r);

/** Identifies what `v` holds; 'unknown' when no signature matches. */
export async function probeVolume(v: Volume): Promise<ProbeResult> {
  const head = await readAt(v, 0, Math.min(v.size, 4096));
  if (!head || head.length < 512) return { type: 'unknown' };
  for (const probe of [probeLuks, probeLvm, probeXfs, probeExt, probeBtrfs, probeNtfs, probeFat, probeSwap]) {
    const r = await probe(v, head);
    if (r) return r;
  }
  return { type: 'unknown' };
}

type Prober = (v: Volume, head: Buffer) => Promise<ProbeResult | null>;

const probeLuks: Prober = async (_v, head) => {
  if (head.toString('latin1', 0, 6) !== 'LUKS\xba\xbe') return null;
  const version = head.readUInt16BE(6);
  // LUKS1 (LUKS On-Disk Format Specification 1.2.3) and LUKS2 (LUKS2 On-Disk Format, binary header) both keep uuid[40] at 168
  const r: ProbeResult = { type: 'crypto_LUKS', uuid: cstr(head, 168, 40, 'latin1'), version: String(version) };
  return version === 2 ? withLabel(r, cstr(head, 24, 48)) : r;
};

const probeLvm: Prober = async (v) => {
  try {
    const label = await readPvLabel(v);
    return label ? { type: 'LVM2_member', uuid: label.uuid, version: 'LVM2 001' } : null;
  } catch (e) {
    if (e instanceof PolyvisorError) return null;
    throw e;
  }
};

const probeXfs: Prober = async (_v, head) => {
  if (head.toString('latin1', 0, 4) !== 'XFSB') return null;
  const blocksize = head.readUInt32BE(4);
  if (blocksize < 512 || blocksize > 65536 || (blocksize & (blocksize - 1)) !== 0) return null;
  return withLabel({ type: 'xfs', uuid: uuidAt(head, 32) }, cstr(head, 108, 12));
};

/** e2fsprogs ext2_fs.h feature bits, and the sets blkid (libblkid superblocks/ext.c) uses to name ext2 and ext3 */
const EXT = {
  COMPAT_HAS_JOURNAL: 0x0004,
  INCOMPAT_JOURNAL_DEV: 0x0008,
  EXT2_INCOMPAT_SUPP: 0x0002 | 0x0010, // filetype, meta_bg
  EXT3_INCOMPAT_SUPP: 0x0002 | 0x0004 | 0x0010, // filetype, recover, meta_bg
  EXT2_RO_COMPAT_SUPP: 0x0001 | 0x0002 | 0x0004, // sparse_super, large_file, btree_dir
};

const probeExt: Prober = async (v) => {
  const sb = await readAt(v, 1024, 1024);
  if (!sb || sb.readUInt16LE(56) !== 0xef53) return null;
  const compat = sb.readUInt32LE(92);
  const incompat = sb.readUInt32LE(96);
  const roCompat = sb.readUInt32LE(100);
  let type: VolumeType;
  if (incompat & EXT.INCOMPAT_JOURNAL_DEV) type = 'jbd';
  else if (compat & EXT.COMPAT_HAS_JOURNAL) type = incompat & ~EXT.EXT3_INCOMPAT_SUPP || roCompat & ~EXT.EXT2_RO_COMPAT_SUPP ? 'ext4' : 'ext3';
  else type = incompat & ~EXT.EXT2_INCOMPAT_SUPP || roCompat & ~EXT.EXT2_RO_COMPAT_SUPP ? 'ext4' : 'ext2';
  return withLabel({ type, uuid: uuidAt(sb, 104) }, cstr(sb, 120, 16));
};

const probeBtrfs: Prober = async (v) => {
  const sb = await readAt(v, 65536, 4096);
  if (!sb || sb.toString('latin1', 64, 72) !== '_BHRfS_M') return null;
  return withLabel({ type: 'btrfs', uuid: uuidAt(sb, 32) }, cstr(sb, 299, 256));
};

const probeNtfs: Prober = async (v, head) => {
  if (head.toString('latin1', 3, 11) !== 'NTFS    ') return null;
  const bps = head.readUInt16LE(11);
  const spc = head[13]!;
  if (![512, 1024, 2048, 4096].includes(bps) || spc === 0) return null;
  // blkid prints the 64-bit volume serial number as 16 uppercase hex digits
  const uuid = head.readBigUInt64LE(0x48).toString(16).toUpperCase().padStart(16, '0');
  const r: ProbeResult = { type: 'ntfs', uuid };
  const label = await ntfsLabel(v, head, bps, spc).catch((e) => {
    if (e instanceof PolyvisorError) return '';
    throw e;
  });
  return withLabel(r, label);
};

/**
 * The volume label: attribute $VOLUME_NAME (type 0x60) of MFT record 3 ($Volume), after the
 * record's update sequence fixups are applied (each sector's last two bytes are kept in the
 * update sequence array).
 */
async function ntfsLabel(v: Volume, boot: Buffer, bps: number, spc: number): Promise<string> {
  const clusterSize = bps * (spc > 0x80 ? 1 << (256 - spc) : spc);
  const raw = boot.readInt8(0x40);
  const recordSize = raw < 0 ? 1 << -raw : raw * clusterSize;
  if (recordSize < 256 || recordSize > 65536) return '';
  const mft = Number(boot.readBigUInt64LE(0x30)) * clusterSize;
  const rec = await readAt(v, mft + 3 * recordSize, recordSize);
  if (!rec || rec.toString('latin1', 0, 4) !== 'FILE') return '';
  const usaOffset = rec.readUInt16LE(4);
  const usaCount = rec.readUInt16LE(6);
  if (usaOffset + usaCount * 2 > recordSize || usaCount < 1) return '';
  for (let i = 1; i < usaCount; i++) {
    const end = i * 512 - 2;
    if (end + 2 > recordSize) break;
    rec.writeUInt16LE(rec.readUInt16LE(usaOffset + i * 2), end);
  }
  let off = rec.readUInt16LE(0x14);
  for (let n = 0; n < 64 && off + 24 <= recordSize; n++) {
    const type = rec.readUInt32LE(off);
    const len = rec.readUInt32LE(off + 4);
    if (type === 0xffffffff || len < 24 || off + len > recordSize) return '';
    if (type === 0x60 && rec[off + 8] === 0) {
      const valueLen = rec.readUInt32LE(off + 16);
      const valueOff = rec.readUInt16LE(off + 20);
      if (valueOff + valueLen > len) return '';
      return rec.toString('utf16le', off + valueOff, off + valueOff + valueLen);
    }
    off += len;
  }
  return '';
}

const probeFat: Prober = async (v, head) => {
  if (head[510] !== 0x55 || head[511] !== 0xaa) return null;
  // blkid's tests before trusting a BPB: a jump instruction and a media descriptor byte
  if (!(head[0] === 0xeb || head[0] === 0xe9)) return null;
  const media = head[21]!;
  if (media !== 0xf0 && media < 0xf8) return null;
  let g: ReturnType<typeof parseBpb>;
  try {
    g = parseBpb(v, head);
  } catch (e) {
    if (e instanceof PolyvisorError) return null;
    throw e;
  }
  const r: ProbeResult = { type: 'vfat', version: `FAT${g.fatType}` };
  if (g.volumeId) r.uuid = g.volumeId;
  // the label is the root directory's volume-ID entry when there is one (as blkid reads it);
  // a root directory that cannot be read leaves the BPB's own label
  let label = g.bpbLabel;
  try {
    label = (await FatFs.open(v)).label;
  } catch (e) {
    if (!(e instanceof PolyvisorError)) throw e;
  }
  return label ? withLabel(r, label) : r;
};

const probeSwap: Prober = async (v) => {
  for (const page of [4096, 8192, 16384, 65536]) {
    const tail = await readAt(v, page - 10, 10);
    if (!tail) return null;
    const magic = tail.toString('latin1');
    if (magic === 'SWAP-SPACE') return { type: 'swap', version: '0' };
    if (magic !== 'SWAPSPACE2') continue;
    const h = await v.read(1024, 64);
    return withLabel({ type: 'swap', uuid: uuidAt(h, 12), version: String(h.readUInt32LE(0)) }, cstr(h, 28, 16));
  }
  return null;
};
