/**
 * Test helper: writes an LVM2 physical volume into a file, laid out as pvcreate lays it out
 * (LVM2 2.03 lib/format_text/layout.h): the label in sector 1, one metadata area at 4 KiB
 * holding an mda_header and the metadata text (NUL-terminated, wrapping around the circular
 * buffer when asked), extents from pe_start. LVM's tools need a block device to create a PV,
 * which tests cannot count on; `pvck --dump headers|metadata` reads a plain file, so every
 * PV written here is checked by LVM's own reader (see lvm.test.ts).
 *
 * The generator is independent of src/guest/lvm.ts except for the checksum function
 * (LVM's calc_crc), which pvck verifies on every image.
 */
import { existsSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { lvmCrc } from '../../src/guest/lvm.js';

export interface PvSpec {
  /** the PV UUID, with or without LVM's dashes */
  uuid: string;
  /** bytes of the file (the PV's device_size) */
  size: number;
  /** the metadata text, without the NUL */
  text: string;
  mdaOffset?: number;
  mdaSize?: number;
  /** pe_start in bytes (the data area's offset) */
  peStart?: number;
  /** where raw_locn[0] places the text, from the metadata area's start (>= 512) */
  textOffset?: number;
}

export const PV_DEFAULTS = { mdaOffset: 4096, mdaSize: 1044480, peStart: 1 << 20, textOffset: 512 };

/** The label sector and the metadata area of a PV, as [offset, bytes] writes. */
export function pvStructures(spec: PvSpec): [number, Buffer][] {
  const { mdaOffset, mdaSize, peStart, textOffset } = { ...PV_DEFAULTS, ...spec };
  const uuid = spec.uuid.replace(/-/g, '');
  if (uuid.length !== 32) throw new Error(`bad PV uuid ${spec.uuid}`);
  const label = Buffer.alloc(512);
  label.write('LABELONE', 0, 'latin1');
  label.writeBigUInt64LE(1n, 8); // sector_xl
  label.writeUInt32LE(32, 20); // offset_xl: pv_header follows label_header
  label.write('LVM2 001', 24, 'latin1');
  label.write(uuid, 32, 'latin1');
  label.writeBigUInt64LE(BigInt(spec.size), 64); // device_size_xl
  label.writeBigUInt64LE(BigInt(peStart), 72); // data area: from pe_start, size 0 = to the end
  label.writeBigUInt64LE(BigInt(mdaOffset), 104); // metadata area
  label.writeBigUInt64LE(BigInt(mdaSize), 112);
  label.writeUInt32LE(2, 136); // pv_header_extension.version
  label.writeUInt32LE(1, 140); // flags: PV_EXT_USED
  label.writeUInt32LE(lvmCrc(label.subarray(20)), 16);

  const text = Buffer.concat([Buffer.from(spec.text, 'utf8'), Buffer.alloc(1)]);
  const mda = Buffer.alloc(mdaSize);
  mda.write(' LVM2 x[5A%r0N*>', 4, 'latin1');
  mda.writeUInt32LE(1, 20);
  mda.writeBigUInt64LE(BigInt(mdaOffset), 24);
  mda.writeBigUInt64LE(BigInt(mdaSize), 32);
  mda.writeBigUInt64LE(BigInt(textOffset), 40);
  mda.writeBigUInt64LE(BigInt(text.length), 48);
  mda.writeUInt32LE(lvmCrc(text), 56);
  // the circular buffer: what does not fit before the area's end continues after the header
  const first = Math.min(text.length, mdaSize - textOffset);
  text.copy(mda, textOffset, 0, first);
  text.copy(mda, 512, first);
  mda.writeUInt32LE(lvmCrc(mda.subarray(4, 512)), 0);
  return [
    [512, label],
    [mdaOffset, mda],
  ];
}

/** Writes the PV structures into `file` (which must be spec.size bytes, or is extended to it). */
export async function writePv(file: string, spec: PvSpec): Promise<void> {
  const fh = await open(file, existsSync(file) ? 'r+' : 'w+');
  try {
    await fh.truncate(spec.size);
    for (const [at, b] of pvStructures(spec)) await fh.write(b, 0, b.length, at);
  } finally {
    await fh.close();
  }
}
