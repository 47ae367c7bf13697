/**
 * VHDX on-disk structures, after Microsoft's [MS-VHDX] "Virtual Hard Disk v2 (VHDX) File
 * Format". Every structure is little-endian. Section numbers in comments are MS-VHDX's.
 *
 *   0       file type identifier ("vhdxfile", creator)                          2.1.1
 *   64 KiB  header 1, 128 KiB header 2 (4 KiB each, CRC-32C)                     2.2.2
 *   192 KiB region table 1, 256 KiB region table 2 (64 KiB each, CRC-32C)        2.2.3
 *   1 MiB.. log, metadata region, BAT region and blocks, anywhere on 1 MiB      2.3-2.6
 */
import { PolyvisorError, hex } from '../../errors.js';
import { crypto } from '../../util/builtins.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;

export const FILE_ID_SIGNATURE = Buffer.from('vhdxfile', 'latin1');
export const HEADER_OFFSETS = [64 * KiB, 128 * KiB] as const;
export const HEADER_SIZE = 4 * KiB;
export const REGION_TABLE_OFFSETS = [192 * KiB, 256 * KiB] as const;
export const REGION_TABLE_SIZE = 64 * KiB;
/** The header section (file identifier, headers, region tables, reserved) is the first 1 MiB (2.2). */
export const HEADER_SECTION_SIZE = 1 * MiB;
/** 2.2.3: "EntryCount ... MUST be less than or equal to 2047" (and the same for metadata, 2.6.1). */
export const MAX_TABLE_ENTRIES = 2047;
export const METADATA_TABLE_SIZE = 64 * KiB;
/** 2.6.1.2: metadata items are at most 1 MiB long. */
export const MAX_METADATA_ITEM = 1 * MiB;
/** 2.2.2: VirtualDiskSize is at most 64 TiB. */
export const MAX_VIRTUAL_SIZE = 64 * 1024 * 1024 * MiB;
export const MIN_BLOCK_SIZE = 1 * MiB;
export const MAX_BLOCK_SIZE = 256 * MiB;
/** 2.4: sector bitmap blocks are always 1 MiB and describe 2^23 logical sectors. */
export const SECTOR_BITMAP_BLOCK_SIZE = 1 * MiB;
export const SECTORS_PER_BITMAP_BLOCK = 1 << 23;

// ---- GUIDs ------------------------------------------------------------------------------

/**
 * GUIDs are stored as Windows lays out a GUID structure: Data1 (u32), Data2 and Data3 (u16)
 * little-endian, then Data4's eight bytes as they are. We keep the 16 raw bytes.
 */
export function guidFromText(text: string): Buffer {
  const h = text.replace(/[{}-]/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(h)) throw new PolyvisorError('ERR_INTERNAL', `"${text}" is not a GUID`);
  const b = Buffer.alloc(16);
  b.writeUInt32LE(parseInt(h.slice(0, 8), 16), 0);
  b.writeUInt16LE(parseInt(h.slice(8, 12), 16), 4);
  b.writeUInt16LE(parseInt(h.slice(12, 16), 16), 6);
  Buffer.from(h.slice(16), 'hex').copy(b, 8);
  return b;
}

/** Parses GUID text as found in a parent locator ("{...}", any case); null if it is not one. */
export function parseGuidText(text: string): Buffer | null {
  const t = text.trim();
  if (!/^\{?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}?$/.test(t)) return null;
  return guidFromText(t);
}

export function guidText(b: Uint8Array): string {
  const buf = Buffer.from(b.buffer, b.byteOffset, 16);
  const d4 = buf.subarray(8, 16).toString('hex');
  return [
    buf.readUInt32LE(0).toString(16).padStart(8, '0'),
    buf.readUInt16LE(4).toString(16).padStart(4, '0'),
    buf.readUInt16LE(6).toString(16).padStart(4, '0'),
    d4.slice(0, 4),
    d4.slice(4),
  ]
    .join('-')
    .toUpperCase();
}

export function newGuid(): Buffer {
  return guidFromText(crypto().randomUUID());
}

export function isZeroGuid(b: Uint8Array): boolean {
  for (let i = 0; i < 16; i++) if (b[i] !== 0) return false;
  return true;
}

/** 2.2.3.2: the two regions every VHDX has. */
export const BAT_GUID = guidFromText('2DC27766-F623-4200-9D64-115E9BFD4A08');
export const METADATA_GUID = guidFromText('8B7CA206-4790-4B9A-B8FE-575F050F886E');
/** 2.6.2: system metadata items. */
export const FILE_PARAMETERS_GUID = guidFromText('CAA16737-FA36-4D43-B3B6-33F0AA44E76B');
export const VIRTUAL_DISK_SIZE_GUID = guidFromText('2FA54224-CD1B-4876-B211-5DBED83BF4B8');
export const VIRTUAL_DISK_ID_GUID = guidFromText('BECA12AB-B2E6-4523-93EF-C309E000C746');
export const LOGICAL_SECTOR_SIZE_GUID = guidFromText('8141BF1D-A96F-4709-BA47-F233A8FAAB5F');
export const PHYSICAL_SECTOR_SIZE_GUID = guidFromText('CDA348C7-445D-4471-9CC9-E9885251C556');
export const PARENT_LOCATOR_GUID = guidFromText('A8D35F2D-B30B-454D-ABF7-D3D84834AB0C');
/** 2.6.2.6: LocatorType of the VHDX parent locator, the only one defined. */
export const VHDX_LOCATOR_TYPE_GUID = guidFromText('B04AEFB7-D19E-4A81-B789-25B8E9445913');

// ---- CRC-32C ----------------------------------------------------------------------------

/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as every VHDX checksum uses
 * (2.2.2, 2.2.3, 2.3.1.1). Node has none built in; slice-by-4 tables keep metadata and log
 * checks cheap. Built on first use, not when the module loads: every command loads the disk
 * formats, and building them in code not yet optimised takes a millisecond or two.
 */
let crcTables: [Uint32Array, Uint32Array, Uint32Array, Uint32Array] | undefined;

function buildCrcTables(): [Uint32Array, Uint32Array, Uint32Array, Uint32Array] {
  const t0 = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    t0[n] = c >>> 0;
  }
  const tables = [t0];
  for (let k = 1; k < 4; k++) {
    const prev = tables[k - 1]!;
    const t = new Uint32Array(256);
    for (let n = 0; n < 256; n++) t[n] = (t0[prev[n]! & 0xff]! ^ (prev[n]! >>> 8)) >>> 0;
    tables.push(t);
  }
  return tables as [Uint32Array, Uint32Array, Uint32Array, Uint32Array];
}

/** Continues a CRC-32C over `buf`. Start with 0xffffffff; finish with `^ 0xffffffff`. */
export function crc32cUpdate(crc: number, buf: Uint8Array): number {
  const [t0, t1, t2, t3] = (crcTables ??= buildCrcTables());
  let c = crc >>> 0;
  let i = 0;
  const n = buf.length;
  const n4 = n - (n % 4);
  for (; i < n4; i += 4) {
    c ^= buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16) | (buf[i + 3]! << 24);
    c = t3[c & 0xff]! ^ t2[(c >>> 8) & 0xff]! ^ t1[(c >>> 16) & 0xff]! ^ t0[c >>> 24]!;
  }
  for (; i < n; i++) c = t0[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return c >>> 0;
}

export function crc32c(buf: Uint8Array): number {
  return (crc32cUpdate(0xffffffff, buf) ^ 0xffffffff) >>> 0;
}

const ZERO4 = new Uint8Array(4);

/** CRC-32C of `buf` with its 4-byte checksum field at `at` taken as zero (2.2.2 "Checksum"). */
export function checksumWithHole(buf: Uint8Array, at: number): number {
  let c = crc32cUpdate(0xffffffff, buf.subarray(0, at));
  c = crc32cUpdate(c, ZERO4);
  c = crc32cUpdate(c, buf.subarray(at + 4));
  return (c ^ 0xffffffff) >>> 0;
}

/** Writes the CRC-32C of `buf` into its checksum field at `at`. */
export function sealChecksum(buf: Buffer, at = 4): void {
  buf.writeUInt32LE(checksumWithHole(buf, at), at);
}

// ---- little helpers ---------------------------------------------------------------------

/** Reads a little-endian u64 as a number, refusing values past 2^53. */
export function u64(buf: Buffer, at: number, ctx: { file: string; structure: string; offset?: number }, field: string): number {
  const v = buf.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new PolyvisorError('ERR_CORRUPT', `${field} is ${hex(v)}, beyond any real file`, ctx);
  }
  return Number(v);
}

export function writeU64(buf: Buffer, v: number, at: number): void {
  buf.writeBigUInt64LE(BigInt(v), at);
}

export function isPowerOfTwo(n: number): boolean {
  return n > 0 && Number.isInteger(Math.log2(n));
}

/** Decodes UTF-16LE text, stopping at a NUL. */
export function utf16(buf: Buffer): string {
  const even = buf.subarray(0, buf.length - (buf.length % 2));
  return even.toString('utf16le').replace(/\0.*$/s, '');
}

// ---- file type identifier (2.1.1) -------------------------------------------------------

export function buildFileIdentifier(creator: string): Buffer {
  const b = Buffer.alloc(64 * KiB);
  FILE_ID_SIGNATURE.copy(b, 0);
  // Creator: up to 256 UTF-16 characters, diagnostic only.
  Buffer.from(creator.slice(0, 255), 'utf16le').copy(b, 8);
  return b;
}

// ---- headers (2.2.2) --------------------------------------------------------------------

export interface Header {
  sequenceNumber: bigint;
  fileWriteGuid: Buffer;
  dataWriteGuid: Buffer;
  logGuid: Buffer;
  logVersion: number;
  version: number;
  logLength: number;
  logOffset: number;
}

export const HEADER_SIGNATURE = 0x64616568; // "head"

export type HeaderState = { ok: true; header: Header } | { ok: false; why: 'no-signature' | 'bad-checksum'; stored?: number; computed?: number };

export function parseHeader(buf: Buffer, ctx: { file: string; structure: string; offset: number }): HeaderState {
  if (buf.readUInt32LE(0) !== HEADER_SIGNATURE) return { ok: false, why: 'no-signature' };
  const stored = buf.readUInt32LE(4);
  const computed = checksumWithHole(buf, 4);
  if (stored !== computed) return { ok: false, why: 'bad-checksum', stored, computed };
  return {
    ok: true,
    header: {
      sequenceNumber: buf.readBigUInt64LE(8),
      fileWriteGuid: Buffer.from(buf.subarray(16, 32)),
      dataWriteGuid: Buffer.from(buf.subarray(32, 48)),
      logGuid: Buffer.from(buf.subarray(48, 64)),
      logVersion: buf.readUInt16LE(64),
      version: buf.readUInt16LE(66),
      logLength: buf.readUInt32LE(68),
      logOffset: u64(buf, 72, ctx, 'LogOffset'),
    },
  };
}

export function buildHeader(h: Header): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  b.writeUInt32LE(HEADER_SIGNATURE, 0);
  b.writeBigUInt64LE(h.sequenceNumber, 8);
  h.fileWriteGuid.copy(b, 16);
  h.dataWriteGuid.copy(b, 32);
  h.logGuid.copy(b, 48);
  b.writeUInt16LE(h.logVersion, 64);
  b.writeUInt16LE(h.version, 66);
  b.writeUInt32LE(h.logLength, 68);
  writeU64(b, h.logOffset, 72);
  sealChecksum(b, 4);
  return b;
}

// ---- region table (2.2.3) ---------------------------------------------------------------

export const REGION_SIGNATURE = 0x69676572; // "regi"

export interface RegionEntry {
  guid: Buffer;
  fileOffset: number;
  length: number;
  required: boolean;
}

export type RegionTableState = { ok: true; entries: RegionEntry[] } | { ok: false; why: 'no-signature' | 'bad-checksum'; stored?: number; computed?: number };

/** Parses a region table; entry fields are validated by the caller (it knows the file). */
export function parseRegionTable(buf: Buffer, ctx: { file: string; structure: string; offset: number }): RegionTableState {
  if (buf.readUInt32LE(0) !== REGION_SIGNATURE) return { ok: false, why: 'no-signature' };
  const stored = buf.readUInt32LE(4);
  const computed = checksumWithHole(buf, 4);
  if (stored !== computed) return { ok: false, why: 'bad-checksum', stored, computed };
  const count = buf.readUInt32LE(8);
  if (count > MAX_TABLE_ENTRIES) throw new PolyvisorError('ERR_CORRUPT', `EntryCount is ${count}, more than the ${MAX_TABLE_ENTRIES} allowed`, ctx);
  const entries: RegionEntry[] = [];
  for (let i = 0; i < count; i++) {
    const at = 16 + i * 32;
    entries.push({
      guid: Buffer.from(buf.subarray(at, at + 16)),
      fileOffset: u64(buf, at + 16, { ...ctx, structure: `region table entry ${i}`, offset: ctx.offset + at }, 'FileOffset'),
      length: buf.readUInt32LE(at + 24),
      required: (buf.readUInt32LE(at + 28) & 1) === 1,
    });
  }
  return { ok: true, entries };
}

export function buildRegionTable(entries: RegionEntry[]): Buffer {
  const b = Buffer.alloc(REGION_TABLE_SIZE);
  b.writeUInt32LE(REGION_SIGNATURE, 0);
  b.writeUInt32LE(entries.length, 8);
  entries.forEach((e, i) => {
    const at = 16 + i * 32;
    e.guid.copy(b, at);
    writeU64(b, e.fileOffset, at + 16);
    b.writeUInt32LE(e.length, at + 24);
    b.writeUInt32LE(e.required ? 1 : 0, at + 28);
  });
  sealChecksum(b, 4);
  return b;
}

// ---- metadata table (2.6.1) -------------------------------------------------------------

export const METADATA_SIGNATURE = Buffer.from('metadata', 'latin1');

export interface MetadataEntry {
  itemId: Buffer;
  offset: number;
  length: number;
  isUser: boolean;
  isVirtualDisk: boolean;
  isRequired: boolean;
}

export function buildMetadataTable(entries: MetadataEntry[]): Buffer {
  const b = Buffer.alloc(METADATA_TABLE_SIZE);
  METADATA_SIGNATURE.copy(b, 0);
  b.writeUInt16LE(entries.length, 10);
  entries.forEach((e, i) => {
    const at = 32 + i * 32;
    e.itemId.copy(b, at);
    b.writeUInt32LE(e.offset, at + 16);
    b.writeUInt32LE(e.length, at + 20);
    b.writeUInt32LE((e.isUser ? 1 : 0) | (e.isVirtualDisk ? 2 : 0) | (e.isRequired ? 4 : 0), at + 24);
  });
  return b;
}

// ---- parent locator (2.6.2.6) -----------------------------------------------------------

/** Builds a VHDX parent locator item from key/value pairs (UTF-16LE, no NULs). */
export function buildParentLocator(pairs: Array<[string, string]>): Buffer {
  const head = 20 + pairs.length * 12;
  const strings = pairs.map(([k, v]) => [Buffer.from(k, 'utf16le'), Buffer.from(v, 'utf16le')] as const);
  const total = head + strings.reduce((n, [k, v]) => n + k.length + v.length, 0);
  const b = Buffer.alloc(total);
  VHDX_LOCATOR_TYPE_GUID.copy(b, 0);
  b.writeUInt16LE(pairs.length, 18);
  let pos = head;
  strings.forEach(([k, v], i) => {
    const at = 20 + i * 12;
    b.writeUInt32LE(pos, at);
    k.copy(b, pos);
    pos += k.length;
    b.writeUInt32LE(pos, at + 4);
    v.copy(b, pos);
    pos += v.length;
    b.writeUInt16LE(k.length, at + 8);
    b.writeUInt16LE(v.length, at + 10);
  });
  return b;
}

/** Parses a parent locator item into its key/value pairs, every offset bounds-checked. */
export function parseParentLocator(buf: Buffer, ctx: { file: string; structure: string; offset: number }): Map<string, string> {
  if (buf.length < 20) throw new PolyvisorError('ERR_CORRUPT', `${buf.length} bytes is too short for a parent locator header`, ctx);
  if (!buf.subarray(0, 16).equals(VHDX_LOCATOR_TYPE_GUID)) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `locator type ${guidText(buf.subarray(0, 16))} is not the VHDX parent locator`, ctx);
  }
  const count = buf.readUInt16LE(18);
  if (20 + count * 12 > buf.length) throw new PolyvisorError('ERR_CORRUPT', `${count} key/value entries do not fit in the ${buf.length}-byte item`, ctx);
  const out = new Map<string, string>();
  for (let i = 0; i < count; i++) {
    const at = 20 + i * 12;
    const ko = buf.readUInt32LE(at);
    const vo = buf.readUInt32LE(at + 4);
    const kl = buf.readUInt16LE(at + 8);
    const vl = buf.readUInt16LE(at + 10);
    if (kl === 0 || vl === 0 || ko + kl > buf.length || vo + vl > buf.length) {
      throw new PolyvisorError('ERR_CORRUPT', `key/value entry ${i} (key ${ko}+${kl}, value ${vo}+${vl}) lies outside the ${buf.length}-byte item`, ctx);
    }
    out.set(utf16(buf.subarray(ko, ko + kl)), utf16(buf.subarray(vo, vo + vl)));
  }
  return out;
}

// ---- BAT (2.5) --------------------------------------------------------------------------

/** 2.5.1.1 payload block states. */
export const PAYLOAD_BLOCK_NOT_PRESENT = 0;
export const PAYLOAD_BLOCK_UNDEFINED = 1;
export const PAYLOAD_BLOCK_ZERO = 2;
export const PAYLOAD_BLOCK_UNMAPPED = 3;
export const PAYLOAD_BLOCK_FULLY_PRESENT = 6;
export const PAYLOAD_BLOCK_PARTIALLY_PRESENT = 7;
/** 2.5.1.2 sector bitmap block states. */
export const SB_BLOCK_NOT_PRESENT = 0;
export const SB_BLOCK_PRESENT = 6;

export const STATE_NAMES: Record<number, string> = {
  0: 'NOT_PRESENT',
  1: 'UNDEFINED',
  2: 'ZERO',
  3: 'UNMAPPED',
  6: 'FULLY_PRESENT',
  7: 'PARTIALLY_PRESENT',
};

/**
 * A BAT entry is a u64: State in bits 0-2, reserved bits 3-19, FileOffsetMB in bits 20-63.
 * Offsets past 2^32 MiB (4 PiB) are refused by the reader, so the high word fits.
 */
export function batState(bat: Buffer, i: number): number {
  return bat[i * 8]! & 7;
}

export function batOffsetMB(bat: Buffer, i: number): number {
  return (bat.readUInt32LE(i * 8) >>> 20) + bat.readUInt32LE(i * 8 + 4) * 4096;
}

export function setBatEntry(bat: Buffer, i: number, state: number, offsetMB: number): void {
  const lo = ((offsetMB % 4096) << 20) | state;
  bat.writeUInt32LE(lo >>> 0, i * 8);
  bat.writeUInt32LE(Math.floor(offsetMB / 4096), i * 8 + 4);
}

/** The geometry of the BAT for a disk (2.5): chunk ratio and entry counts. */
export interface BatGeometry {
  blockSize: number;
  logicalSectorSize: number;
  /** payload blocks per sector bitmap block: (2^23 * logical sector size) / block size */
  chunkRatio: number;
  payloadBlocks: number;
  bitmapBlocks: number;
  /** BAT entries: interleaved payload entries and a sector bitmap entry after each chunk */
  entries: number;
  sectorsPerBlock: number;
}

export function batGeometry(virtualSize: number, blockSize: number, logicalSectorSize: number, hasParent: boolean): BatGeometry {
  const chunkRatio = (SECTORS_PER_BITMAP_BLOCK * logicalSectorSize) / blockSize;
  const payloadBlocks = Math.ceil(virtualSize / blockSize);
  const bitmapBlocks = Math.ceil(payloadBlocks / chunkRatio);
  // 2.5: a differencing disk has a sector bitmap entry after every chunk, the last included;
  // for fixed and dynamic disks "the last BAT entry MUST locate the last payload block".
  const entries = hasParent ? bitmapBlocks * (chunkRatio + 1) : payloadBlocks === 0 ? 0 : payloadBlocks + Math.floor((payloadBlocks - 1) / chunkRatio);
  return { blockSize, logicalSectorSize, chunkRatio, payloadBlocks, bitmapBlocks, entries, sectorsPerBlock: blockSize / logicalSectorSize };
}

/** BAT index of payload block `b`. */
export function payloadIndex(g: BatGeometry, b: number): number {
  return b + Math.floor(b / g.chunkRatio);
}

/** BAT index of the sector bitmap block of chunk `c`. */
export function bitmapIndex(g: BatGeometry, c: number): number {
  return c * (g.chunkRatio + 1) + g.chunkRatio;
}
