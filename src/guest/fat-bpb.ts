/**
 * The FAT boot sector and BIOS Parameter Block: where the FATs, the root directory and the
 * data region lie, and which FAT type the volume is.
 *
 * Source: Microsoft, "FAT: General Overview of On-Disk Format" (fatgen103, 2000), section 3
 * ("Boot Sector and BPB") and section 3.5 ("FAT Type Determination"). The FAT type follows
 * Linux's msdos driver where the two differ in wording: a BPB with BPB_FATSz16 = 0 is FAT32,
 * otherwise a volume of fewer than 4085 clusters is FAT12 and any other FAT16. Every field
 * is checked before anything is read through it, so a hostile BPB meets ERR_CORRUPT here.
 */
import { PolyvisorError } from '../errors.js';
import type { Volume } from './volume.js';

export type FatType = 12 | 16 | 32;

/** Field offsets in the boot sector (fatgen103 section 3.1, 3.2, 3.3). */
export const BPB = {
  jmpBoot: 0,
  oemName: 3,
  bytsPerSec: 11,
  secPerClus: 13,
  rsvdSecCnt: 14,
  numFATs: 16,
  rootEntCnt: 17,
  totSec16: 19,
  media: 21,
  fatSz16: 22,
  totSec32: 32,
  // FAT12/FAT16 from offset 36
  volId16: 39,
  volLab16: 43,
  filSysType16: 54,
  // FAT32 from offset 36
  fatSz32: 36,
  extFlags: 40,
  fsVer: 42,
  rootClus: 44,
  fsInfo: 48,
  bootSig32: 66,
  volId32: 67,
  volLab32: 71,
  filSysType32: 82,
  bootSig16: 38,
} as const;

/** The geometry of a FAT volume, in bytes unless named otherwise. */
export interface FatGeometry {
  fatType: FatType;
  bytesPerSector: number;
  clusterSize: number;
  /** where FAT number 0 starts */
  fatOffset: number;
  /** bytes of one FAT */
  fatSize: number;
  numFats: number;
  /** FAT32 BPB_ExtFlags: mirroring off, only this FAT is active (else -1: all FATs mirrored) */
  activeFat: number;
  /** FAT12/16: the fixed root directory region */
  rootDirOffset: number;
  rootEntries: number;
  /** FAT32: the root directory's first cluster */
  rootCluster: number;
  dataOffset: number;
  /** data clusters: valid cluster numbers are 2 .. clusterCount + 1 */
  clusterCount: number;
  /** bytes the file system covers */
  totalSize: number;
  /** FAT32 FSInfo sector offset, or 0 */
  fsInfoOffset: number;
  /** volume serial number as blkid prints it: "XXXX-XXXX", or undefined without an extended boot signature */
  volumeId?: string;
  /** BS_VolLab, trimmed ("NO NAME" stands for no label) */
  bpbLabel?: string;
}

function bad(v: Volume, field: string, detail: string): PolyvisorError {
  return new PolyvisorError('ERR_CORRUPT', `${field} ${detail}`, { file: v.name, structure: 'FAT boot sector (BPB)', offset: 0 });
}

const isPow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;

/** Parses and validates the BPB of `boot` (the first sector of `v`). */
export function parseBpb(v: Volume, boot: Buffer): FatGeometry {
  const bps = boot.readUInt16LE(BPB.bytsPerSec);
  if (bps !== 512 && bps !== 1024 && bps !== 2048 && bps !== 4096) throw bad(v, 'BPB_BytsPerSec', `is ${bps}, not 512, 1024, 2048 or 4096`);
  const spc = boot[BPB.secPerClus]!;
  if (!isPow2(spc) || spc > 128) throw bad(v, 'BPB_SecPerClus', `is ${spc}, not a power of two up to 128`);
  const rsvd = boot.readUInt16LE(BPB.rsvdSecCnt);
  if (rsvd === 0) throw bad(v, 'BPB_RsvdSecCnt', 'is 0');
  const numFats = boot[BPB.numFATs]!;
  if (numFats === 0 || numFats > 4) throw bad(v, 'BPB_NumFATs', `is ${numFats}`);
  const rootEntries = boot.readUInt16LE(BPB.rootEntCnt);
  const fatSz16 = boot.readUInt16LE(BPB.fatSz16);
  const fat32 = fatSz16 === 0;
  const fatSectors = fat32 ? boot.readUInt32LE(BPB.fatSz32) : fatSz16;
  if (fatSectors === 0) throw bad(v, 'BPB_FATSz32', 'is 0');
  const totSec = boot.readUInt16LE(BPB.totSec16) || boot.readUInt32LE(BPB.totSec32);
  if (totSec === 0) throw bad(v, 'BPB_TotSec16/BPB_TotSec32', 'are both 0');
  if (fat32 && rootEntries !== 0) throw bad(v, 'BPB_RootEntCnt', `is ${rootEntries} on FAT32 (must be 0)`);
  if (!fat32 && rootEntries === 0) throw bad(v, 'BPB_RootEntCnt', 'is 0 on FAT12/16');
  const rootDirSectors = Math.ceil((rootEntries * 32) / bps);
  const metaSectors = rsvd + numFats * fatSectors + rootDirSectors;
  if (metaSectors >= totSec) throw bad(v, 'BPB_TotSec', `(${totSec} sectors) leaves no data region after ${metaSectors} sectors of metadata`);
  const clusterCount = Math.floor((totSec - metaSectors) / spc);
  const totalSize = totSec * bps;
  if (totalSize > v.size) {
    throw new PolyvisorError('ERR_TRUNCATED', `the file system covers ${totalSize} bytes but its volume has ${v.size}`, { file: v.name, structure: 'FAT boot sector (BPB)', offset: 0 });
  }
  let fatType: FatType;
  if (fat32) {
    fatType = 32;
    if (clusterCount > 0x0ffffff5) throw bad(v, 'BPB_TotSec32', `gives ${clusterCount} clusters, more than FAT32 can number`);
  } else {
    fatType = clusterCount < 4085 ? 12 : 16;
    if (clusterCount >= 65525) throw bad(v, 'BPB_TotSec', `gives ${clusterCount} clusters, too many for FAT16 (BPB_FATSz16 is not 0)`);
  }
  const fatSize = fatSectors * bps;
  // the FAT must number every cluster (entries 0 and 1 are reserved)
  if (Math.floor((fatSize * 8) / fatType) < clusterCount + 2) throw bad(v, 'BPB_FATSz', `(${fatSectors} sectors) cannot hold ${clusterCount + 2} FAT${fatType} entries`);
  const extFlags = fat32 ? boot.readUInt16LE(BPB.extFlags) : 0;
  const activeFat = extFlags & 0x80 ? extFlags & 0x0f : -1;
  if (activeFat >= numFats) throw bad(v, 'BPB_ExtFlags', `names active FAT ${activeFat} of ${numFats}`);
  let rootCluster = 0;
  let fsInfoOffset = 0;
  if (fat32) {
    if (boot.readUInt16LE(BPB.fsVer) !== 0) throw new PolyvisorError('ERR_UNSUPPORTED', `BPB_FSVer ${boot.readUInt16LE(BPB.fsVer).toString(16)} (only 0.0 exists)`, { file: v.name, structure: 'FAT boot sector (BPB)', offset: 0 });
    rootCluster = boot.readUInt32LE(BPB.rootClus);
    if (rootCluster < 2 || rootCluster > clusterCount + 1) throw bad(v, 'BPB_RootClus', `${rootCluster} is not a data cluster (2-${clusterCount + 1})`);
    const fsInfo = boot.readUInt16LE(BPB.fsInfo);
    if (fsInfo > 0 && fsInfo < rsvd) fsInfoOffset = fsInfo * bps;
  }
  const sigAt = fat32 ? BPB.bootSig32 : BPB.bootSig16;
  const idAt = fat32 ? BPB.volId32 : BPB.volId16;
  const labAt = fat32 ? BPB.volLab32 : BPB.volLab16;
  let volumeId: string | undefined;
  let bpbLabel: string | undefined;
  // BS_BootSig 0x29: the three following fields (BS_VolID, BS_VolLab, BS_FilSysType) are present
  if (boot[sigAt] === 0x29) {
    const id = boot.readUInt32LE(idAt).toString(16).toUpperCase().padStart(8, '0');
    volumeId = `${id.slice(0, 4)}-${id.slice(4)}`;
    const lab = decodeOem(boot.subarray(labAt, labAt + 11)).trimEnd();
    if (lab && lab !== 'NO NAME') bpbLabel = lab;
  }
  return {
    fatType,
    bytesPerSector: bps,
    clusterSize: bps * spc,
    fatOffset: rsvd * bps,
    fatSize,
    numFats,
    activeFat,
    rootDirOffset: fat32 ? 0 : (rsvd + numFats * fatSectors) * bps,
    rootEntries: fat32 ? 0 : rootEntries,
    rootCluster,
    dataOffset: metaSectors * bps,
    clusterCount,
    totalSize,
    fsInfoOffset,
    ...(volumeId ? { volumeId } : {}),
    ...(bpbLabel ? { bpbLabel } : {}),
  };
}

/**
 * Code page 437, bytes 0x80-0xFF: the OEM code page Linux's vfat (codepage=437) and mtools
 * assume for short names.
 */
const CP437_HIGH =
  'ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0';

/** Short names and labels: bytes in the OEM code page. */
export function decodeOem(b: Uint8Array): string {
  let s = '';
  for (const c of b) s += c < 0x80 ? String.fromCharCode(c) : CP437_HIGH[c - 0x80];
  return s;
}
