/**
 * The two checksums ext4 metadata carries (Documentation/filesystems/ext4/checksums.rst):
 *
 * - metadata_csum: CRC-32C in the kernel's raw form, `crc32c(seed, bytes)` with no final
 *   inversion, chained from a seed (the superblock's own checksum starts at ~0; every other
 *   structure starts at the file system's seed, crc32c(~0, uuid), and then at a per-inode
 *   seed made from the inode number and generation);
 * - gdt_csum (uninit_bg): CRC-16 (ANSI, reflected 0xA001) of uuid + group number + group
 *   descriptor, for group descriptors only.
 */
import { crc32cUpdate } from '../disk/formats/vhdx-structs.js';

/** The kernel's crc32c(): continues `seed` over `buf`, no final inversion. */
export function crc32c(seed: number, buf: Uint8Array): number {
  return crc32cUpdate(seed, buf);
}

/** crc32c of a little-endian 32-bit value, as the kernel chains inode numbers and groups. */
export function crc32cU32(seed: number, value: number): number {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(value >>> 0, 0);
  return crc32cUpdate(seed, b);
}

/** Built on first use rather than when the module loads (see vhdx-structs.ts's CRC-32C tables). */
let crc16Table: Uint16Array | undefined;

function buildCrc16Table(): Uint16Array {
  const t = new Uint16Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xa001 : c >>> 1;
    t[n] = c;
  }
  return t;
}

/** The kernel's crc16() (lib/crc16.c): continues `crc` over `buf`. */
export function crc16(crc: number, buf: Uint8Array): number {
  const table = (crc16Table ??= buildCrc16Table());
  let c = crc & 0xffff;
  for (let i = 0; i < buf.length; i++) c = (c >>> 8) ^ table[(c ^ buf[i]!) & 0xff]!;
  return c;
}
