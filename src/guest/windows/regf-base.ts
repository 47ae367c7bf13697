/**
 * The base block of a Windows registry hive file (regf): the first 4096 bytes, before the
 * hive bins.
 *
 * Source: Maxim Suhanov, "Windows registry file format specification", section "Base block"
 * (field names and offsets below are that table's), and libyal's libregf documentation
 * ("Windows NT Registry File (REGF) format", section 2 "File header").
 *
 * The checksum is the XOR of the first 508 bytes taken as 127 little-endian 32-bit words;
 * a result of 0xFFFFFFFF is stored as 0xFFFFFFFE and 0 as 1 (spec: "Checksum").
 * A hive whose primary and secondary sequence numbers differ was not written through to the
 * end (the kernel bumps the primary number before writing and the secondary after): Windows
 * then replays the transaction logs. Polyvisor reads such a hive as it stands and says so.
 */
import { PolyvisorError } from '../../errors.js';

export const BASE_BLOCK_SIZE = 4096;
export const HBIN_ALIGN = 4096;

/** Base block field offsets (spec: "Base block"). */
export const BASE = {
  signature: 0,
  primarySequenceNumber: 4,
  secondarySequenceNumber: 8,
  lastWrittenTimestamp: 12,
  majorVersion: 20,
  minorVersion: 24,
  fileType: 28,
  fileFormat: 32,
  rootCellOffset: 36,
  hiveBinsDataSize: 40,
  clusteringFactor: 44,
  fileName: 48,
  checksum: 508,
  bootType: 4040,
  bootRecover: 4044,
} as const;

export interface BaseBlock {
  primarySequenceNumber: number;
  secondarySequenceNumber: number;
  majorVersion: number;
  minorVersion: number;
  fileType: number;
  rootCellOffset: number;
  hiveBinsDataSize: number;
  fileName: string;
}

/** XOR-32 of the first 508 bytes (spec: "Checksum"). */
export function baseChecksum(b: Buffer): number {
  let x = 0;
  for (let i = 0; i < BASE.checksum; i += 4) x = (x ^ b.readUInt32LE(i)) >>> 0;
  if (x === 0xffffffff) return 0xfffffffe;
  if (x === 0) return 1;
  return x;
}

/** FILETIME: 100 ns intervals since 1601-01-01 UTC. */
export function filetimeNow(): bigint {
  return BigInt(Date.now()) * 10000n + 116444736000000000n;
}

/** Reads and checks the base block; `notes` gets what a reader should know (a dirty hive). */
export function parseBaseBlock(b: Buffer, file: string, notes: string[]): BaseBlock {
  if (b.length < BASE_BLOCK_SIZE) throw new PolyvisorError('ERR_TRUNCATED', `${b.length} bytes: shorter than the 4096-byte base block`, { file, structure: 'regf base block', offset: 0 });
  if (b.toString('latin1', 0, 4) !== 'regf') throw new PolyvisorError('ERR_CORRUPT', 'no "regf" signature: not a Windows registry hive', { file, structure: 'regf base block', offset: 0 });
  const sum = b.readUInt32LE(BASE.checksum);
  if (sum !== baseChecksum(b)) {
    throw new PolyvisorError('ERR_CHECKSUM', `checksum 0x${sum.toString(16)} does not match the base block (0x${baseChecksum(b).toString(16)})`, { file, structure: 'regf base block', offset: BASE.checksum });
  }
  const bb: BaseBlock = {
    primarySequenceNumber: b.readUInt32LE(BASE.primarySequenceNumber),
    secondarySequenceNumber: b.readUInt32LE(BASE.secondarySequenceNumber),
    majorVersion: b.readUInt32LE(BASE.majorVersion),
    minorVersion: b.readUInt32LE(BASE.minorVersion),
    fileType: b.readUInt32LE(BASE.fileType),
    rootCellOffset: b.readUInt32LE(BASE.rootCellOffset),
    hiveBinsDataSize: b.readUInt32LE(BASE.hiveBinsDataSize),
    fileName: b.toString('utf16le', BASE.fileName, BASE.fileName + 64).replace(/\0.*$/s, ''),
  };
  if (bb.majorVersion !== 1 || bb.minorVersion < 2 || bb.minorVersion > 6) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `format version ${bb.majorVersion}.${bb.minorVersion} (Polyvisor reads 1.2 to 1.6)`, { file, structure: 'regf base block', offset: BASE.majorVersion });
  }
  if (bb.fileType !== 0) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `file type ${bb.fileType} is a transaction log, not a primary hive file`, { file, structure: 'regf base block', offset: BASE.fileType });
  }
  if (bb.hiveBinsDataSize % HBIN_ALIGN !== 0 || bb.hiveBinsDataSize === 0) {
    throw new PolyvisorError('ERR_CORRUPT', `hive bins data size ${bb.hiveBinsDataSize} is not a positive multiple of 4096`, { file, structure: 'regf base block', offset: BASE.hiveBinsDataSize });
  }
  if (BASE_BLOCK_SIZE + bb.hiveBinsDataSize > b.length) {
    throw new PolyvisorError('ERR_TRUNCATED', `the hive bins need ${BASE_BLOCK_SIZE + bb.hiveBinsDataSize} bytes; the file has ${b.length}`, { file, structure: 'regf base block', offset: BASE.hiveBinsDataSize });
  }
  if (bb.primarySequenceNumber !== bb.secondarySequenceNumber) {
    notes.push(`the hive is dirty (sequence numbers ${bb.primarySequenceNumber} and ${bb.secondarySequenceNumber} differ): its last write did not complete, and the transaction logs Windows would replay were not read`);
  }
  return bb;
}

/** A base block for a new, empty hive (version 1.5, as Windows XP and later write), root cell at `rootCellOffset`. */
export function newBaseBlock(rootCellOffset: number, hiveBinsDataSize: number, fileName: string): Buffer {
  const b = Buffer.alloc(BASE_BLOCK_SIZE);
  b.write('regf', 0, 'latin1');
  b.writeUInt32LE(1, BASE.primarySequenceNumber);
  b.writeUInt32LE(1, BASE.secondarySequenceNumber);
  b.writeBigUInt64LE(filetimeNow(), BASE.lastWrittenTimestamp);
  b.writeUInt32LE(1, BASE.majorVersion);
  b.writeUInt32LE(5, BASE.minorVersion);
  b.writeUInt32LE(0, BASE.fileType);
  b.writeUInt32LE(1, BASE.fileFormat);
  b.writeUInt32LE(rootCellOffset, BASE.rootCellOffset);
  b.writeUInt32LE(hiveBinsDataSize, BASE.hiveBinsDataSize);
  b.writeUInt32LE(1, BASE.clusteringFactor);
  // the spec: the last 31 UTF-16 characters of the hive's path, for debugging
  b.write(fileName.slice(-31), BASE.fileName, 'utf16le');
  b.writeUInt32LE(baseChecksum(b), BASE.checksum);
  return b;
}

/** Marks a write: both sequence numbers one higher, the timestamp, the bins' size and the checksum. */
export function sealBaseBlock(b: Buffer, hiveBinsDataSize: number): void {
  const seq = (Math.max(b.readUInt32LE(BASE.primarySequenceNumber), b.readUInt32LE(BASE.secondarySequenceNumber)) + 1) >>> 0;
  b.writeUInt32LE(seq, BASE.primarySequenceNumber);
  b.writeUInt32LE(seq, BASE.secondarySequenceNumber);
  b.writeBigUInt64LE(filetimeNow(), BASE.lastWrittenTimestamp);
  b.writeUInt32LE(hiveBinsDataSize, BASE.hiveBinsDataSize);
  b.writeUInt32LE(baseChecksum(b), BASE.checksum);
}
