/**
 * Extended attributes (Documentation/filesystems/ext4/attributes.rst), as far as files need them
 * here: the in-inode attribute system.data that holds inline data past i_block, and the
 * reference count of an attribute block when its last user goes.
 *
 * In-inode attributes follow i_extra_isize: a 4-byte magic 0xEA020000, then entries (16 bytes +
 * name, 4-aligned) until four zero bytes; values sit after the entries, at e_value_offs from the
 * first entry. An attribute block starts with a 32-byte header (magic, h_refcount, h_blocks,
 * h_hash, h_checksum) and may be shared by several inodes with identical attributes.
 */
import { PolyvisorError, hex } from '../errors.js';
import type { Groups } from './ext4-alloc.js';
import { crc32c } from './ext4-csum.js';
import type { ExtDisk } from './ext4-disk.js';
import type { Inode } from './ext4-inode.js';
import type { Superblock } from './ext4-superblock.js';

const XATTR_MAGIC = 0xea020000;
/** attributes.rst, attribute name indexes */
export const XATTR_INDEX_SYSTEM = 7;
const H_REFCOUNT = 0x4;
const H_CHECKSUM = 0x10;

/** The value of an in-inode attribute (name index + name), or null when the inode has none. */
export function ibodyValue(inode: Inode, index: number, name: string, file: string): Buffer | null {
  const area = inode.ibodyXattrs();
  if (!area) return null;
  const fail = (detail: string) => new PolyvisorError('ERR_CORRUPT', detail, { file, structure: `extended attributes of inode ${inode.ino}` });
  let p = 0;
  while (p + 16 <= area.length && area.readUInt32LE(p) !== 0) {
    const nameLen = area[p]!;
    const valueOffs = area.readUInt16LE(p + 2);
    const valueInum = area.readUInt32LE(p + 4);
    const valueSize = area.readUInt32LE(p + 8);
    if (p + 16 + nameLen > area.length) throw fail('an attribute name runs past the inode');
    if (area[p + 1] === index && area.subarray(p + 16, p + 16 + nameLen).toString('latin1') === name) {
      if (valueInum !== 0 || valueOffs + valueSize > area.length) throw fail(`the value of attribute "${name}" lies outside the inode`);
      return area.subarray(valueOffs, valueOffs + valueSize);
    }
    p += (16 + nameLen + 3) & ~3;
  }
  return null;
}

/** attributes.rst: crc32c(seed, 64-bit block number, block with h_checksum zeroed). */
function blockChecksum(sb: Superblock, block: number, b: Buffer): number {
  const le = Buffer.alloc(8);
  le.writeBigUInt64LE(BigInt(block));
  let c = crc32c(crc32c(sb.csumSeed, le), b.subarray(0, H_CHECKSUM));
  c = crc32c(c, Buffer.alloc(4));
  return crc32c(c, b.subarray(H_CHECKSUM + 4));
}

/** Drops an inode's reference to its attribute block: frees it, or lowers h_refcount when shared. */
export async function releaseXattrBlock(disk: ExtDisk, sb: Superblock, groups: Groups, inode: Inode): Promise<void> {
  const block = inode.fileAcl;
  if (!block) return;
  const structure = `extended attribute block ${block} of inode ${inode.ino}`;
  const b = Buffer.from(await disk.readBlock(block, structure));
  if (b.readUInt32LE(0) !== XATTR_MAGIC) throw new PolyvisorError('ERR_CORRUPT', `bad magic ${hex(b.readUInt32LE(0))} (expected 0xea020000)`, { file: disk.name, structure });
  if (sb.metadataCsum) {
    const want = blockChecksum(sb, block, b);
    if (b.readUInt32LE(H_CHECKSUM) !== want) throw new PolyvisorError('ERR_CHECKSUM', `checksum ${hex(b.readUInt32LE(H_CHECKSUM))} does not match its contents (${hex(want)})`, { file: disk.name, structure });
  }
  const refs = b.readUInt32LE(H_REFCOUNT);
  if (refs <= 1) {
    await groups.freeBlocks(block, 1);
    return;
  }
  b.writeUInt32LE(refs - 1, H_REFCOUNT);
  if (sb.metadataCsum) b.writeUInt32LE(blockChecksum(sb, block, b), H_CHECKSUM);
  await disk.writeBlocks(block, b, structure);
}
