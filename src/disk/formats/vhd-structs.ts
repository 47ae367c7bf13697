/**
 * On-disk structures of the VHD format, declared once, in the words of Microsoft's
 * "Virtual Hard Disk Image Format Specification" (v1.0, 2006). All fields are big-endian
 * except the UTF-16LE text of W2ru/W2ku parent locators.
 *
 *   Hard disk footer (512 bytes)       at the end of every VHD; copied at offset 0 of
 *                                      dynamic and differencing disks
 *   Dynamic disk header (1024 bytes)   at the footer's "data offset"
 *   Block allocation table (BAT)       u32 sector offsets, 0xFFFFFFFF = not allocated
 *   Data block                         sector bitmap (padded to 512) then block data
 */
import { PolyvisorError, hex } from '../../errors.js';
import type { Geometry } from './vhd-geometry.js';

export const SECTOR = 512;
export const FOOTER_SIZE = 512;
export const DYN_HEADER_SIZE = 1024;
export const FOOTER_COOKIE = Buffer.from('conectix', 'latin1');
export const DYN_COOKIE = Buffer.from('cxsparse', 'latin1');
/** BAT entry of a block that is not allocated ("0xFFFFFFFF", spec "Block Allocation Table"). */
export const UNALLOCATED = 0xffffffff;
/** "File Format Version": major 1, minor 0; the same value for the dynamic header version. */
export const VERSION_1_0 = 0x00010000;
/** "Features": bit 1 is reserved and must always be set. */
export const FEATURES_RESERVED = 0x00000002;
/** Seconds between the Unix epoch and the VHD epoch, 2000-01-01 00:00:00 UTC. */
const VHD_EPOCH = 946684800;
const NO_OFFSET = 0xffffffffffffffffn;

export const DISK_FIXED = 2;
export const DISK_DYNAMIC = 3;
export const DISK_DIFFERENCING = 4;

// Footer field offsets ("Hard Disk Footer Format").
const F_FEATURES = 8;
const F_VERSION = 12;
const F_DATA_OFFSET = 16;
const F_TIMESTAMP = 24;
const F_CREATOR_APP = 28;
const F_CREATOR_VERSION = 32;
const F_CREATOR_OS = 36;
const F_ORIGINAL_SIZE = 40;
const F_CURRENT_SIZE = 48;
const F_GEOMETRY = 56;
const F_DISK_TYPE = 60;
const F_CHECKSUM = 64;
const F_UUID = 68;
const F_SAVED_STATE = 84;

// Dynamic disk header field offsets ("Dynamic Disk Header Format").
const H_DATA_OFFSET = 8;
const H_TABLE_OFFSET = 16;
const H_VERSION = 24;
const H_MAX_ENTRIES = 28;
const H_BLOCK_SIZE = 32;
const H_CHECKSUM = 36;
const H_PARENT_UUID = 40;
const H_PARENT_TIMESTAMP = 56;
const H_PARENT_NAME = 64;
const H_PARENT_NAME_LEN = 512;
const H_LOCATORS = 576;
export const LOCATOR_COUNT = 8;
const LOCATOR_SIZE = 24;

/**
 * "Checksum": the one's complement of the sum of all bytes of the structure, the checksum
 * field itself excluded (read as zero).
 */
export function vhdChecksum(buf: Uint8Array, checksumAt: number, length = buf.length): number {
  let sum = 0;
  for (let i = 0; i < length; i++) {
    if (i >= checksumAt && i < checksumAt + 4) continue;
    sum += buf[i]!;
  }
  return ~sum >>> 0;
}

export interface Footer {
  features: number;
  version: number;
  /** absolute offset of the dynamic disk header; null for fixed disks (all ones) */
  dataOffset: number | null;
  timestamp: number;
  /** four characters, exactly as stored ("win ", "vpc ", "tap\0") */
  creatorApp: string;
  creatorVersion: number;
  creatorHostOs: string;
  originalSize: number;
  currentSize: number;
  geometry: Geometry;
  diskType: number;
  checksum: number;
  uuid: Buffer;
  savedState: boolean;
}

export type FooterState = 'ok' | 'no-cookie' | 'bad-checksum';

/** Whether 512 bytes are a footer: cookie, then checksum. */
export function footerState(buf: Buffer): FooterState {
  if (buf.length < FOOTER_SIZE || !buf.subarray(0, 8).equals(FOOTER_COOKIE)) return 'no-cookie';
  return vhdChecksum(buf, F_CHECKSUM, FOOTER_SIZE) === buf.readUInt32BE(F_CHECKSUM) ? 'ok' : 'bad-checksum';
}

function u64(buf: Buffer, at: number, what: string, ctx: { file: string; structure: string; offset: number }): number {
  const v = buf.readBigUInt64BE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new PolyvisorError('ERR_CORRUPT', `${what} ${hex(v)} is beyond any real disk`, ctx);
  }
  return Number(v);
}

/** Decodes a footer whose cookie and checksum were verified. */
export function parseFooter(buf: Buffer, ctx: { file: string; structure: string; offset: number }): Footer {
  const raw = buf.readBigUInt64BE(F_DATA_OFFSET);
  return {
    features: buf.readUInt32BE(F_FEATURES),
    version: buf.readUInt32BE(F_VERSION),
    dataOffset: raw === NO_OFFSET ? null : u64(buf, F_DATA_OFFSET, 'data offset', ctx),
    timestamp: buf.readUInt32BE(F_TIMESTAMP),
    creatorApp: buf.toString('latin1', F_CREATOR_APP, F_CREATOR_APP + 4),
    creatorVersion: buf.readUInt32BE(F_CREATOR_VERSION),
    creatorHostOs: buf.toString('latin1', F_CREATOR_OS, F_CREATOR_OS + 4),
    originalSize: u64(buf, F_ORIGINAL_SIZE, 'original size', ctx),
    currentSize: u64(buf, F_CURRENT_SIZE, 'current size', ctx),
    geometry: { cylinders: buf.readUInt16BE(F_GEOMETRY), heads: buf[F_GEOMETRY + 2]!, sectorsPerTrack: buf[F_GEOMETRY + 3]! },
    diskType: buf.readUInt32BE(F_DISK_TYPE),
    checksum: buf.readUInt32BE(F_CHECKSUM),
    uuid: Buffer.from(buf.subarray(F_UUID, F_UUID + 16)),
    savedState: buf[F_SAVED_STATE] !== 0,
  };
}

export function buildFooter(f: Footer): Buffer {
  const b = Buffer.alloc(FOOTER_SIZE);
  FOOTER_COOKIE.copy(b, 0);
  b.writeUInt32BE(f.features, F_FEATURES);
  b.writeUInt32BE(f.version, F_VERSION);
  b.writeBigUInt64BE(f.dataOffset === null ? NO_OFFSET : BigInt(f.dataOffset), F_DATA_OFFSET);
  b.writeUInt32BE(f.timestamp, F_TIMESTAMP);
  b.write(f.creatorApp, F_CREATOR_APP, 4, 'latin1');
  b.writeUInt32BE(f.creatorVersion, F_CREATOR_VERSION);
  b.write(f.creatorHostOs, F_CREATOR_OS, 4, 'latin1');
  b.writeBigUInt64BE(BigInt(f.originalSize), F_ORIGINAL_SIZE);
  b.writeBigUInt64BE(BigInt(f.currentSize), F_CURRENT_SIZE);
  b.writeUInt16BE(f.geometry.cylinders, F_GEOMETRY);
  b[F_GEOMETRY + 2] = f.geometry.heads;
  b[F_GEOMETRY + 3] = f.geometry.sectorsPerTrack;
  b.writeUInt32BE(f.diskType, F_DISK_TYPE);
  f.uuid.copy(b, F_UUID, 0, 16);
  b[F_SAVED_STATE] = f.savedState ? 1 : 0;
  b.writeUInt32BE(vhdChecksum(b, F_CHECKSUM), F_CHECKSUM);
  return b;
}

export interface ParentLocator {
  /** "Platform Code": W2ru, W2ku, Wi2r, Wi2k, Mac, MacX; "" when the slot is unused */
  platformCode: string;
  /** "Platform Data Space": the spec says sectors, Windows writes bytes (see create) */
  dataSpace: number;
  dataLength: number;
  dataOffset: number;
}

export interface DynamicHeader {
  tableOffset: number;
  version: number;
  maxTableEntries: number;
  blockSize: number;
  parentUuid: Buffer;
  parentTimestamp: number;
  /** "Parent Unicode Name", UTF-16BE, up to the first NUL */
  parentName: string;
  locators: ParentLocator[];
}

/** Decodes and verifies a dynamic disk header: cookie and checksum. */
export function parseDynamicHeader(buf: Buffer, ctx: { file: string; offset: number }): DynamicHeader {
  const c = { file: ctx.file, structure: 'dynamic disk header', offset: ctx.offset };
  if (!buf.subarray(0, 8).equals(DYN_COOKIE)) {
    throw new PolyvisorError('ERR_CORRUPT', `cookie is "${printable(buf.subarray(0, 8))}", not "cxsparse"`, c);
  }
  const stored = buf.readUInt32BE(H_CHECKSUM);
  const computed = vhdChecksum(buf, H_CHECKSUM, DYN_HEADER_SIZE);
  if (stored !== computed) {
    throw new PolyvisorError('ERR_CHECKSUM', `checksum is ${hex(stored)} but the header sums to ${hex(computed)}`, c);
  }
  const locators: ParentLocator[] = [];
  for (let i = 0; i < LOCATOR_COUNT; i++) {
    const at = H_LOCATORS + i * LOCATOR_SIZE;
    const code = buf.readUInt32BE(at);
    locators.push({
      platformCode: code === 0 ? '' : buf.toString('latin1', at, at + 4),
      dataSpace: buf.readUInt32BE(at + 4),
      dataLength: buf.readUInt32BE(at + 8),
      dataOffset: code === 0 ? 0 : u64(buf, at + 16, `parent locator ${i} data offset`, c),
    });
  }
  return {
    tableOffset: u64(buf, H_TABLE_OFFSET, 'table offset', c),
    version: buf.readUInt32BE(H_VERSION),
    maxTableEntries: buf.readUInt32BE(H_MAX_ENTRIES),
    blockSize: buf.readUInt32BE(H_BLOCK_SIZE),
    parentUuid: Buffer.from(buf.subarray(H_PARENT_UUID, H_PARENT_UUID + 16)),
    parentTimestamp: buf.readUInt32BE(H_PARENT_TIMESTAMP),
    parentName: decodeUtf16(buf.subarray(H_PARENT_NAME, H_PARENT_NAME + H_PARENT_NAME_LEN), 'be'),
    locators,
  };
}

export function buildDynamicHeader(h: DynamicHeader): Buffer {
  const b = Buffer.alloc(DYN_HEADER_SIZE);
  DYN_COOKIE.copy(b, 0);
  // "Data Offset": reserved for a next structure, all ones.
  b.writeBigUInt64BE(NO_OFFSET, H_DATA_OFFSET);
  b.writeBigUInt64BE(BigInt(h.tableOffset), H_TABLE_OFFSET);
  b.writeUInt32BE(h.version, H_VERSION);
  b.writeUInt32BE(h.maxTableEntries, H_MAX_ENTRIES);
  b.writeUInt32BE(h.blockSize, H_BLOCK_SIZE);
  h.parentUuid.copy(b, H_PARENT_UUID, 0, 16);
  b.writeUInt32BE(h.parentTimestamp, H_PARENT_TIMESTAMP);
  const name = encodeUtf16(h.parentName, 'be');
  name.copy(b, H_PARENT_NAME, 0, Math.min(name.length, H_PARENT_NAME_LEN));
  h.locators.forEach((l, i) => {
    if (i >= LOCATOR_COUNT || !l.platformCode) return;
    const at = H_LOCATORS + i * LOCATOR_SIZE;
    b.write(l.platformCode.padEnd(4, ' '), at, 4, 'latin1');
    b.writeUInt32BE(l.dataSpace, at + 4);
    b.writeUInt32BE(l.dataLength, at + 8);
    b.writeBigUInt64BE(BigInt(l.dataOffset), at + 16);
  });
  b.writeUInt32BE(vhdChecksum(b, H_CHECKSUM), H_CHECKSUM);
  return b;
}

/** UTF-16 text up to the first NUL code unit. */
export function decodeUtf16(b: Uint8Array, order: 'be' | 'le'): string {
  const units: number[] = [];
  for (let i = 0; i + 1 < b.length; i += 2) {
    const u = order === 'be' ? (b[i]! << 8) | b[i + 1]! : b[i]! | (b[i + 1]! << 8);
    if (u === 0) break;
    units.push(u);
  }
  let s = '';
  for (let i = 0; i < units.length; i += 4096) s += String.fromCharCode(...units.slice(i, i + 4096));
  return s;
}

export function encodeUtf16(s: string, order: 'be' | 'le'): Buffer {
  const b = Buffer.alloc(s.length * 2);
  for (let i = 0; i < s.length; i++) {
    const u = s.charCodeAt(i);
    if (order === 'be') b.writeUInt16BE(u, i * 2);
    else b.writeUInt16LE(u, i * 2);
  }
  return b;
}

/** "Unique Id" as the usual 8-4-4-4-12 text, bytes in stored order. */
export function uuidText(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** "Time Stamp": seconds since 2000-01-01 00:00:00 UTC. */
export function toVhdTime(ms: number): number {
  const s = Math.floor(ms / 1000) - VHD_EPOCH;
  return Math.min(0xffffffff, Math.max(0, s));
}

export function fromVhdTime(t: number): string {
  return new Date((t + VHD_EPOCH) * 1000).toISOString();
}

export function printable(b: Uint8Array): string {
  return Array.from(b, (c) => (c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : '.')).join('');
}
