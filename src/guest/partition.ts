/**
 * Partition tables: MBR (with its extended/logical chain) and GPT, read from a guest disk.
 *
 * Sources: the UEFI Specification 2.10, section 5 ("GUID Partition Table (GPT) Disk Layout":
 * 5.2.1 legacy MBR, 5.2.3 protective MBR, 5.3.2 GPT header, 5.3.3 partition entry array),
 * and the de-facto MBR/EBR layout that Linux (block/partitions/msdos.c) and util-linux follow.
 * Partition numbers are the ones Linux gives: MBR primaries 1-4, logical partitions from 5 in
 * chain order, GPT entry index + 1; MBR PARTUUIDs are formed as Linux forms them
 * ("<disk signature>-<number>", lowercase hex), so that fstab's PARTUUID= lines match.
 *
 * Every table is hostile: the EBR chain is bounded and refuses loops, GPT headers and entry
 * arrays are CRC32-checked (the backup header at the last LBA is used when the primary is
 * bad, and the fallback is reported in `warnings`), entry counts and sizes are bounded, and a
 * partition that reaches past the end of the disk is an error naming the entry.
 */
import { crc32 } from 'node:zlib';
import { PolyvisorError } from '../errors.js';
import { subVolume, type Volume } from './volume.js';

export type PartitionScheme = 'mbr' | 'gpt' | 'none';

/** Which loader the MBR's boot code is, when recognisable (`bootCode.loader`). */
export type BootLoader = 'grub2' | 'grub-legacy' | 'syslinux' | 'syslinux-gpt' | 'windows';

export interface Partition {
  /** Linux's number: /dev/sdaN */
  number: number;
  /** bytes from the start of the disk */
  start: number;
  /** bytes */
  size: number;
  /** MBR: the type byte as two hex digits ("83"); GPT: the partition type GUID, lowercase */
  type: string;
  /** linux, efi, swap, lvm, bios-boot, microsoft-basic-data, msr, extended, ... or "unknown" */
  typeName: string;
  /** MBR: boot indicator 0x80; GPT: attribute bit 2, "Legacy BIOS bootable" */
  bootable: boolean;
  /** GPT: unique partition GUID; MBR: the PARTUUID Linux forms ("xxxxxxxx-NN") */
  uuid: string;
  /** GPT partition name (UTF-16LE in the entry) */
  name?: string;
  /** GPT attribute bits by sfdisk's names (RequiredPartition, NoBlockIOProtocol, LegacyBIOSBootable, GUID:48,50) */
  attributes?: string[];
  /** MBR: a logical partition inside the extended partition */
  logical?: boolean;
}

export interface BootCode {
  /** the first 440 bytes of the MBR are not all zero */
  present: boolean;
  loader?: BootLoader;
}

export interface PartitionTable {
  scheme: PartitionScheme;
  /** MBR disk signature as 8 hex digits (what blkid calls PTUUID); GPT disk GUID, lowercase */
  diskId?: string;
  sectorSize: number;
  partitions: Partition[];
  bootCode: BootCode;
  /** GPT: first and last LBA usable for partitions */
  firstUsableLba?: number;
  lastUsableLba?: number;
  /** problems that did not stop reading (primary GPT header bad and the backup used, ...) */
  warnings: string[];
}

export interface ReadPartitionsOptions {
  /** logical sector size; by default 512, or 4096 when a GPT header is found at 4096 only */
  sectorSize?: 512 | 4096;
}

/** MBR layout (UEFI 2.10 table 5-1, table 5-2). */
const MBR = {
  bootCodeSize: 440,
  diskSignature: 440,
  partitionRecord: 446,
  recordSize: 16,
  signature: 510,
} as const;

/** MBR partition types that are extended partitions (links to an EBR chain). */
const EXTENDED_TYPES = new Set([0x05, 0x0f, 0x85]);
const PROTECTIVE_TYPE = 0xee;
/** At most this many logical partitions: Linux and util-linux stop far below this in practice. */
const MAX_LOGICAL = 256;

/** GPT header (UEFI 2.10 table 5-5) */
const GPT = {
  signature: 'EFI PART',
  revision: 8,
  headerSize: 12,
  headerCrc32: 16,
  myLba: 24,
  alternateLba: 32,
  firstUsableLba: 40,
  lastUsableLba: 48,
  diskGuid: 56,
  partitionEntryLba: 72,
  numberOfPartitionEntries: 80,
  sizeOfPartitionEntry: 84,
  partitionEntryArrayCrc32: 88,
  minHeaderSize: 92,
} as const;

/**
 * Bounds on the entry array a header may declare: the spec asks for at least 16 KiB and
 * entries of 128 * 2^n bytes; nothing real comes near these caps, which keep a hostile header
 * from making us read gigabytes.
 */
const MAX_ENTRY_SIZE = 4096;
const MAX_ENTRY_ARRAY = 4 * 1024 * 1024;

const MBR_TYPE_NAMES: Record<number, string> = {
  0x01: 'fat12',
  0x04: 'fat16',
  0x05: 'extended',
  0x06: 'fat16',
  0x07: 'ntfs',
  0x0b: 'fat32',
  0x0c: 'fat32',
  0x0e: 'fat16',
  0x0f: 'extended',
  0x11: 'hidden-fat12',
  0x14: 'hidden-fat16',
  0x16: 'hidden-fat16',
  0x17: 'hidden-ntfs',
  0x1b: 'hidden-fat32',
  0x1c: 'hidden-fat32',
  0x1e: 'hidden-fat16',
  0x27: 'windows-recovery',
  0x42: 'windows-dynamic',
  0x82: 'swap',
  0x83: 'linux',
  0x85: 'extended',
  0x8e: 'lvm',
  0xa5: 'freebsd',
  0xa6: 'openbsd',
  0xa9: 'netbsd',
  0xee: 'gpt-protective',
  0xef: 'efi',
  0xfd: 'linux-raid',
};

/** Partition type GUIDs (UEFI 2.10 table 5-7, the Discoverable Partitions Specification, Microsoft's documented types). */
const GPT_TYPE_NAMES: Record<string, string> = {
  'c12a7328-f81f-11d2-ba4b-00a0c93ec93b': 'efi',
  '024dee41-33e7-11d3-9d69-0008c781f39f': 'mbr-scheme',
  '21686148-6449-6e6f-744e-656564454649': 'bios-boot',
  '0fc63daf-8483-4772-8e79-3d69d8477de4': 'linux',
  '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f': 'swap',
  'e6d6d379-f507-44c2-a23c-238f2a3df928': 'lvm',
  'a19d880f-05fc-4d3b-a006-743f0f84911e': 'linux-raid',
  '4f68bce3-e8cd-4db1-96e7-fbcaf984b709': 'linux-root-x86-64',
  '44479540-f297-41b2-9af7-d131d5f0458a': 'linux-root-x86',
  'b921b045-1df0-41c3-af44-4c6f280d3fae': 'linux-root-arm64',
  '933ac7e1-2eb4-4f13-b844-0e14e2aef915': 'linux-home',
  'bc13c2ff-59e6-4262-a352-b275fd6f7172': 'linux-extended-boot',
  'ca7d7ccb-63ed-4c53-861c-1742536059cc': 'luks',
  'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7': 'microsoft-basic-data',
  'e3c9e316-0b5c-4db8-817d-f92df00215ae': 'msr',
  'de94bba4-06d1-4d40-a16a-bfd50179d6ac': 'windows-recovery',
  '5808c8aa-7e8f-42e0-85d2-e1e90434cfb3': 'windows-ldm-metadata',
  'af9b60a0-1431-4f62-bc68-3311714a69ad': 'windows-ldm-data',
  '516e7cb4-6ecf-11d6-8ff8-00022d09712b': 'freebsd',
  '48465300-0000-11aa-aa11-00306543ecac': 'apple-hfs',
  '7c3457ef-0000-11aa-aa11-00306543ecac': 'apple-apfs',
};

/** GPT attribute bits by the names sfdisk uses (UEFI 2.10 table 5-8). */
const GPT_ATTRIBUTE_NAMES: Record<number, string> = { 0: 'RequiredPartition', 1: 'NoBlockIOProtocol', 2: 'LegacyBIOSBootable' };

/** A GUID as text: the first three fields are little-endian on disk (UEFI 2.10 appendix A). */
export function guidAt(buf: Buffer, off: number): string {
  const h = (a: number, b: number) => buf.subarray(off + a, off + b).toString('hex');
  const le = (a: number, b: number) => Buffer.from(buf.subarray(off + a, off + b)).reverse().toString('hex');
  return `${le(0, 4)}-${le(4, 6)}-${le(6, 8)}-${h(8, 10)}-${h(10, 16)}`;
}

function corrupt(disk: Volume, structure: string, offset: number, detail: string): PolyvisorError {
  return new PolyvisorError('ERR_CORRUPT', detail, { file: disk.name, structure, offset });
}

/** Reads the partition table of a whole disk. */
export async function readPartitions(disk: Volume, opts: ReadPartitionsOptions = {}): Promise<PartitionTable> {
  if (disk.size < 512) throw new PolyvisorError('ERR_TRUNCATED', `the disk is ${disk.size} bytes, smaller than one sector`, { file: disk.name });
  const mbr = await disk.read(0, 512);
  const warnings: string[] = [];
  const bootCode = identifyBootCode(mbr);
  const hasSignature = mbr[MBR.signature] === 0x55 && mbr[MBR.signature + 1] === 0xaa;
  const records = hasSignature ? mbrRecords(mbr) : [];
  const protective = records.some((r) => r.type === PROTECTIVE_TYPE);

  // UEFI 5.2.3: a protective MBR says "look for a GPT". util-linux and Linux also read a GPT
  // found without one (the MBR wiped or never written), so we do the same, with a warning.
  const sectorSize = opts.sectorSize ?? (await detectSectorSize(disk));
  if (protective || (await hasGptSignature(disk, sectorSize))) {
    if (!protective) warnings.push(hasSignature ? 'a GPT header was found but the MBR has no protective (0xEE) partition: the GPT was used' : 'a GPT header was found without a protective MBR: the GPT was used');
    else if (records.some((r) => r.type !== PROTECTIVE_TYPE && r.type !== 0)) warnings.push('hybrid MBR: the MBR lists partitions beside the protective one; the GPT was used');
    return readGpt(disk, sectorSize, bootCode, warnings);
  }
  if (!hasSignature || !records.every((r) => r.status === 0 || r.status === 0x80) || isVolumeBootRecord(mbr, records)) {
    return { scheme: 'none', sectorSize, partitions: [], bootCode, warnings };
  }
  return readMbr(disk, mbr, records, sectorSize, bootCode, warnings);
}

/** A volume for one partition of `disk`, named "disk.qcow2 partition 1". */
export function partitionVolume(disk: Volume, p: Partition): Volume {
  return subVolume(disk, p.start, p.size, `${disk.name} partition ${p.number}`);
}

async function detectSectorSize(disk: Volume): Promise<512 | 4096> {
  if (await hasGptSignature(disk, 512)) return 512;
  if (await hasGptSignature(disk, 4096)) return 4096;
  return 512;
}

async function hasGptSignature(disk: Volume, sectorSize: number): Promise<boolean> {
  if (disk.size < sectorSize * 2) return false;
  const b = await disk.read(sectorSize, 8);
  return b.toString('latin1') === GPT.signature;
}

interface MbrRecord {
  index: number;
  status: number;
  type: number;
  lbaStart: number;
  lbaCount: number;
}

/** The four 16-byte partition records (UEFI 2.10 table 5-2). */
function mbrRecords(sector: Buffer): MbrRecord[] {
  const out: MbrRecord[] = [];
  for (let i = 0; i < 4; i++) {
    const o = MBR.partitionRecord + i * MBR.recordSize;
    out.push({ index: i, status: sector[o]!, type: sector[o + 4]!, lbaStart: sector.readUInt32LE(o + 8), lbaCount: sector.readUInt32LE(o + 12) });
  }
  return out;
}

/**
 * A FAT or NTFS boot sector on an unpartitioned disk also ends in 55 AA; its "partition
 * records" are boot code or zero. Like Linux's msdos parser, we take it for a file system,
 * not a partition table, when its BPB says so and no record describes a plausible partition.
 */
function isVolumeBootRecord(sector: Buffer, records: MbrRecord[]): boolean {
  const oem = sector.toString('latin1', 3, 11);
  const fatString = sector.toString('latin1', 0x36, 0x3b) === 'FAT12' || sector.toString('latin1', 0x36, 0x3b) === 'FAT16' || sector.toString('latin1', 0x52, 0x57) === 'FAT32';
  if (oem !== 'NTFS    ' && oem !== 'EXFAT   ' && !fatString) return false;
  return records.every((r) => r.type === 0 || r.lbaCount === 0);
}

function mbrPartitionType(type: number): { type: string; typeName: string } {
  return { type: type.toString(16).padStart(2, '0'), typeName: MBR_TYPE_NAMES[type] ?? 'unknown' };
}

async function readMbr(disk: Volume, mbr: Buffer, records: MbrRecord[], sectorSize: number, bootCode: BootCode, warnings: string[]): Promise<PartitionTable> {
  const sig = mbr.readUInt32LE(MBR.diskSignature).toString(16).padStart(8, '0');
  const partuuid = (n: number) => `${sig}-${n.toString(16).padStart(2, '0')}`;
  const partitions: Partition[] = [];
  let extended: Partition | undefined;
  for (const r of records) {
    if (r.type === 0 || r.lbaCount === 0) continue;
    const number = r.index + 1;
    const structure = `MBR partition record ${number}`;
    const p: Partition = {
      number,
      ...checkedRange(disk, sectorSize, r.lbaStart, r.lbaCount, structure, MBR.partitionRecord + r.index * MBR.recordSize),
      ...mbrPartitionType(r.type),
      bootable: r.status === 0x80,
      uuid: partuuid(number),
    };
    partitions.push(p);
    if (EXTENDED_TYPES.has(r.type)) {
      if (extended) warnings.push(`MBR partition record ${number} is a second extended partition: only the first one's logical partitions are read`);
      else extended = p;
    }
  }
  if (extended) {
    for (const l of await readLogical(disk, extended, sectorSize, warnings)) {
      partitions.push({ ...l, uuid: partuuid(l.number) });
    }
  }
  return { scheme: 'mbr', diskId: sig, sectorSize, partitions, bootCode, warnings };
}

/**
 * The EBR chain: each EBR's first record is a logical partition (start relative to this EBR),
 * its second record links to the next EBR (start relative to the extended partition).
 */
async function readLogical(disk: Volume, extended: Partition, sectorSize: number, warnings: string[]): Promise<Omit<Partition, 'uuid'>[]> {
  const out: Omit<Partition, 'uuid'>[] = [];
  const extStart = extended.start / sectorSize;
  const extEnd = extStart + extended.size / sectorSize;
  const seen = new Set<number>();
  let ebr = extStart;
  for (let n = 0; ; n++) {
    const offset = ebr * sectorSize;
    const structure = `EBR ${n + 1}`;
    if (n >= MAX_LOGICAL) throw corrupt(disk, structure, offset, `the extended partition's EBR chain is longer than ${MAX_LOGICAL} links`);
    if (seen.has(ebr)) throw corrupt(disk, structure, offset, `the EBR chain loops back to sector ${ebr}`);
    seen.add(ebr);
    if (ebr < extStart || ebr >= extEnd) throw corrupt(disk, structure, offset, `the EBR at sector ${ebr} lies outside the extended partition (sectors ${extStart}-${extEnd - 1})`);
    const sector = await disk.read(offset, 512);
    if (sector[MBR.signature] !== 0x55 || sector[MBR.signature + 1] !== 0xaa) {
      // Linux stops the chain here too: an unwritten EBR ends it.
      if (n > 0) warnings.push(`${structure} at sector ${ebr} has no 55 AA signature: the chain of logical partitions ends there`);
      return out;
    }
    const records = mbrRecords(sector);
    // util-linux reads the first two records of an EBR only: one logical partition, one link.
    let next: MbrRecord | undefined;
    let logical: MbrRecord | undefined;
    for (const r of records.slice(0, 2)) {
      if (r.type === 0 || r.lbaCount === 0) continue;
      if (EXTENDED_TYPES.has(r.type)) next ??= r;
      else logical ??= r;
    }
    if (logical) {
      const r = logical;
      out.push({
        number: 5 + out.length,
        ...checkedRange(disk, sectorSize, ebr + r.lbaStart, r.lbaCount, `logical partition ${5 + out.length} (${structure})`, offset + MBR.partitionRecord + r.index * MBR.recordSize),
        ...mbrPartitionType(r.type),
        bootable: r.status === 0x80,
        logical: true,
      });
    }
    if (!next) return out;
    ebr = extStart + next.lbaStart;
  }
}

/** start and size in bytes, refused unless they lie within the disk */
function checkedRange(disk: Volume, sectorSize: number, lba: number, count: number, structure: string, offset: number): { start: number; size: number } {
  const start = lba * sectorSize;
  const size = count * sectorSize;
  if (!Number.isSafeInteger(start + size) || start + size > disk.size) {
    throw corrupt(disk, structure, offset, `the partition (sectors ${lba}-${lba + count - 1}) reaches past the end of the disk (${Math.floor(disk.size / sectorSize)} sectors)`);
  }
  return { start, size };
}

interface GptHeader {
  lba: number;
  diskGuid: string;
  firstUsableLba: number;
  lastUsableLba: number;
  alternateLba: number;
  entries: Buffer;
  entryLba: number;
  entrySize: number;
  count: number;
}

async function readGpt(disk: Volume, sectorSize: number, bootCode: BootCode, warnings: string[]): Promise<PartitionTable> {
  const lastLba = Math.floor(disk.size / sectorSize) - 1;
  const primary = await readGptHeader(disk, sectorSize, 1);
  let header: GptHeader;
  if (typeof primary !== 'string') {
    header = primary;
    // The backup is only checked so that a damaged one is reported; the primary is enough to read.
    const backupLba = primary.alternateLba >= 2 && primary.alternateLba <= lastLba ? primary.alternateLba : lastLba;
    const backup = await readGptHeader(disk, sectorSize, backupLba);
    if (typeof backup === 'string') warnings.push(`backup GPT header at LBA ${backupLba}: ${backup}`);
    if (primary.alternateLba !== lastLba) warnings.push(`the primary GPT header places its backup at LBA ${primary.alternateLba}, not at the last LBA ${lastLba} (was the disk resized?)`);
  } else {
    const backup = await readGptHeader(disk, sectorSize, lastLba);
    if (typeof backup === 'string') {
      throw new PolyvisorError('ERR_CORRUPT', `no valid GPT: primary header at LBA 1: ${primary}; backup header at LBA ${lastLba}: ${backup}`, { file: disk.name, structure: 'GPT header', offset: sectorSize });
    }
    warnings.push(`primary GPT header at LBA 1: ${primary}; the backup header at LBA ${lastLba} was used`);
    header = backup;
  }
  const partitions: Partition[] = [];
  for (let i = 0; i < header.count; i++) {
    const e = header.entries.subarray(i * header.entrySize, i * header.entrySize + header.entrySize);
    const type = guidAt(e, 0);
    if (type === '00000000-0000-0000-0000-000000000000') continue;
    const structure = `GPT partition entry ${i + 1}`;
    const entryOffset = header.entryLba * sectorSize + i * header.entrySize;
    const first = Number(e.readBigUInt64LE(32));
    const last = Number(e.readBigUInt64LE(40));
    if (last < first) throw corrupt(disk, structure, entryOffset, `the ending LBA ${last} is before the starting LBA ${first}`);
    const range = checkedRange(disk, sectorSize, first, last - first + 1, structure, entryOffset);
    if (first < header.firstUsableLba || last > header.lastUsableLba) {
      warnings.push(`${structure} (LBA ${first}-${last}) lies outside the usable LBAs ${header.firstUsableLba}-${header.lastUsableLba}`);
    }
    const attrs = e.readBigUInt64LE(48);
    // sfdisk's words: bits 0-2 by name, the others (48-63 are the type's own) as "GUID:48,50"
    const attributes: string[] = [];
    const others: number[] = [];
    for (let bit = 0; bit < 64; bit++) {
      if (!((attrs >> BigInt(bit)) & 1n)) continue;
      const named = GPT_ATTRIBUTE_NAMES[bit];
      if (named) attributes.push(named);
      else others.push(bit);
    }
    if (others.length) attributes.push(`GUID:${others.join(',')}`);
    const nameBytes = e.subarray(56, Math.min(e.length, 128));
    let end = 0;
    while (end + 1 < nameBytes.length && (nameBytes[end] !== 0 || nameBytes[end + 1] !== 0)) end += 2;
    const name = nameBytes.toString('utf16le', 0, end);
    partitions.push({
      number: i + 1,
      ...range,
      type,
      typeName: GPT_TYPE_NAMES[type] ?? 'unknown',
      bootable: (attrs & 4n) !== 0n,
      uuid: guidAt(e, 16),
      ...(name ? { name } : {}),
      attributes,
    });
  }
  return {
    scheme: 'gpt',
    diskId: header.diskGuid,
    sectorSize,
    partitions,
    bootCode,
    firstUsableLba: header.firstUsableLba,
    lastUsableLba: header.lastUsableLba,
    warnings,
  };
}

/** A verified GPT header and its entry array, or why it is not valid (UEFI 2.10 section 5.3.2, "GPT header validity"). */
async function readGptHeader(disk: Volume, sectorSize: number, lba: number): Promise<GptHeader | string> {
  const lastLba = Math.floor(disk.size / sectorSize) - 1;
  if (lba < 1 || lba > lastLba) return 'lies outside the disk';
  const h = await disk.read(lba * sectorSize, sectorSize);
  if (h.toString('latin1', 0, 8) !== GPT.signature) return 'no "EFI PART" signature';
  const headerSize = h.readUInt32LE(GPT.headerSize);
  if (headerSize < GPT.minHeaderSize || headerSize > sectorSize) return `header size ${headerSize} is outside ${GPT.minHeaderSize}-${sectorSize}`;
  const stored = h.readUInt32LE(GPT.headerCrc32);
  const copy = Buffer.from(h.subarray(0, headerSize));
  copy.writeUInt32LE(0, GPT.headerCrc32);
  if (crc32(copy) !== stored) return 'header CRC32 mismatch';
  const u64 = (o: number) => {
    const v = h.readBigUInt64LE(o);
    return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
  };
  if (u64(GPT.myLba) !== lba) return `MyLBA is ${u64(GPT.myLba)}, not ${lba}`;
  const firstUsableLba = u64(GPT.firstUsableLba);
  const lastUsableLba = u64(GPT.lastUsableLba);
  if (firstUsableLba > lastUsableLba + 1 || lastUsableLba > lastLba) return `usable LBAs ${firstUsableLba}-${lastUsableLba} do not fit the disk (last LBA ${lastLba})`;
  const count = h.readUInt32LE(GPT.numberOfPartitionEntries);
  const entrySize = h.readUInt32LE(GPT.sizeOfPartitionEntry);
  // UEFI 5.3.2: SizeOfPartitionEntry is 128 * 2^n
  if (entrySize < 128 || entrySize > MAX_ENTRY_SIZE || (entrySize & (entrySize - 1)) !== 0) return `partition entry size ${entrySize} is not 128 * 2^n up to ${MAX_ENTRY_SIZE}`;
  if (count * entrySize > MAX_ENTRY_ARRAY) return `${count} partition entries of ${entrySize} bytes exceed the ${MAX_ENTRY_ARRAY}-byte limit`;
  const entryLba = u64(GPT.partitionEntryLba);
  const arrayBytes = count * entrySize;
  if (entryLba < 1 || entryLba * sectorSize + arrayBytes > disk.size) return `the partition entry array at LBA ${entryLba} (${arrayBytes} bytes) reaches past the end of the disk`;
  const entries = await disk.read(entryLba * sectorSize, arrayBytes);
  if (crc32(entries) !== h.readUInt32LE(GPT.partitionEntryArrayCrc32)) return 'partition entry array CRC32 mismatch';
  return { lba, diskGuid: guidAt(h, GPT.diskGuid), firstUsableLba, lastUsableLba, alternateLba: u64(GPT.alternateLba), entries, entryLba, entrySize, count };
}

/**
 * Names the boot loader in the MBR's first 440 bytes from strings and bytes its own image
 * carries: GRUB 2's boot.img and GRUB Legacy's stage1 both print "GRUB " "Geom" "Hard Disk"
 * "Read" " Error" (stage1 also records its version 3.2 at 0x3e); syslinux's mbr.bin prints
 * "Missing operating system." and "Multiple active partitions.", its gptmbr.bin "Missing OS"
 * and checks for "!GPT"; Windows' MBR (2000 to 11) carries "Invalid partition table" and
 * "Error loading operating system".
 */
export function identifyBootCode(mbr: Buffer): BootCode {
  const code = mbr.subarray(0, MBR.bootCodeSize);
  if (code.every((b) => b === 0)) return { present: false };
  const text = code.toString('latin1');
  const has = (...s: string[]) => s.every((x) => text.includes(x));
  let loader: BootLoader | undefined;
  if (has('GRUB ', 'Geom', 'Hard Disk', ' Error')) loader = code[0x3e] === 3 && code[0x3f] === 2 ? 'grub-legacy' : 'grub2';
  else if (has('Missing OS', 'Multiple active partitions', '!GPT')) loader = 'syslinux-gpt';
  else if (has('Missing operating system.', 'Multiple active partitions.')) loader = 'syslinux';
  else if (has('Invalid partition table', 'Error loading operating system')) loader = 'windows';
  return loader ? { present: true, loader } : { present: true };
}
