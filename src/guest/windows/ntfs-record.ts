/**
 * NTFS on-disk structures: the boot sector, MFT file records with their update sequence
 * fixups, attribute headers (resident and non-resident), data runs, and the index entries of
 * directories.
 *
 * Sources: the Linux-NTFS project's "NTFS Documentation" (Richard Russon, Yuval Fledel),
 * sections "Boot sector", "FILE record", "Fixup" ("update sequence"), "Attribute header",
 * "Data runs", "$ATTRIBUTE_LIST", "$FILE_NAME", "$INDEX_ROOT", "$INDEX_ALLOCATION" and
 * "Index entry"; and ntfs-3g's layout.h for field names. Every length and offset read from a
 * record is checked against the record before use: ERR_CORRUPT names the volume, the record
 * and the offset.
 */
import { PolyvisorError } from '../../errors.js';

export const ATTR = {
  STANDARD_INFORMATION: 0x10,
  ATTRIBUTE_LIST: 0x20,
  FILE_NAME: 0x30,
  DATA: 0x80,
  INDEX_ROOT: 0x90,
  INDEX_ALLOCATION: 0xa0,
  BITMAP: 0xb0,
  REPARSE_POINT: 0xc0,
  END: 0xffffffff,
} as const;

/** attribute flags (Attribute header, offset 0x0C) */
export const ATTR_COMPRESSED = 0x0001;
export const ATTR_ENCRYPTED = 0x4000;
export const ATTR_SPARSE = 0x8000;

/** FILE record flags (offset 0x16) */
export const RECORD_IN_USE = 0x0001;
export const RECORD_DIRECTORY = 0x0002;

/** Index entry flags */
const INDEX_ENTRY_NODE = 0x01;
const INDEX_ENTRY_END = 0x02;

export interface BootSector {
  bytesPerSector: number;
  clusterSize: number;
  totalSectors: number;
  mftLcn: number;
  recordSize: number;
  indexRecordSize: number;
  serial: string;
}

/** Size of an MFT or index record from its boot sector byte: clusters when positive, 2^-n bytes when negative. */
function recordBytes(raw: number, clusterSize: number): number {
  return raw < 0 ? 2 ** -raw : raw * clusterSize;
}

export function parseBootSector(b: Buffer, volumeSize: number, file: string): BootSector {
  const fail = (detail: string, offset: number) => new PolyvisorError('ERR_CORRUPT', detail, { file, structure: 'NTFS boot sector', offset });
  if (b.toString('latin1', 3, 11) !== 'NTFS    ') throw fail('no "NTFS    " OEM ID: not an NTFS volume', 3);
  const bytesPerSector = b.readUInt16LE(0x0b);
  if (![512, 1024, 2048, 4096].includes(bytesPerSector)) throw fail(`bytes per sector ${bytesPerSector}`, 0x0b);
  const spc = b[0x0d]!;
  const sectorsPerCluster = spc > 0x80 ? 2 ** (256 - spc) : spc;
  const clusterSize = bytesPerSector * sectorsPerCluster;
  if (sectorsPerCluster === 0 || clusterSize > 2 << 20) throw fail(`sectors per cluster byte 0x${spc.toString(16)}`, 0x0d);
  const recordSize = recordBytes(b.readInt8(0x40), clusterSize);
  const indexRecordSize = recordBytes(b.readInt8(0x44), clusterSize);
  for (const [n, at] of [[recordSize, 0x40], [indexRecordSize, 0x44]] as const) {
    if (n < 256 || n > 65536 || (n & (n - 1)) !== 0) throw fail(`record size ${n} is not a power of two from 256 to 65536`, at);
  }
  const totalSectors = Number(b.readBigUInt64LE(0x28));
  const mftLcn = Number(b.readBigUInt64LE(0x30));
  if (!Number.isSafeInteger(mftLcn) || mftLcn * clusterSize + recordSize > volumeSize) throw fail(`the $MFT at cluster ${mftLcn} lies outside the volume`, 0x30);
  return { bytesPerSector, clusterSize, totalSectors, mftLcn, recordSize, indexRecordSize, serial: b.readBigUInt64LE(0x48).toString(16).toUpperCase().padStart(16, '0') };
}

/**
 * Applies the update sequence fixups of a multi-sector record ("FILE" or "INDX") in place:
 * the last two bytes of each 512-byte stride must hold the update sequence number, and are
 * replaced by the saved bytes from the update sequence array.
 */
export function applyFixups(rec: Buffer, magic: string, what: string, file: string, offset: number): void {
  if (rec.toString('latin1', 0, 4) !== magic) throw new PolyvisorError('ERR_CORRUPT', `no "${magic}" signature`, { file, structure: what, offset });
  const usaOffset = rec.readUInt16LE(4);
  const usaCount = rec.readUInt16LE(6);
  const strides = rec.length / 512;
  if (usaCount !== strides + 1 || usaOffset + usaCount * 2 > rec.length || usaOffset < 8) {
    throw new PolyvisorError('ERR_CORRUPT', `update sequence array of ${usaCount} entries at 0x${usaOffset.toString(16)} does not fit a ${rec.length}-byte record`, { file, structure: what, offset });
  }
  const usn = rec.readUInt16LE(usaOffset);
  for (let i = 0; i < strides; i++) {
    const end = (i + 1) * 512 - 2;
    if (rec.readUInt16LE(end) !== usn) throw new PolyvisorError('ERR_CORRUPT', `sector ${i} does not end with the update sequence number (a torn write)`, { file, structure: what, offset: offset + end });
    rec.writeUInt16LE(rec.readUInt16LE(usaOffset + 2 + i * 2), end);
  }
}

export interface Attribute {
  type: number;
  name: string;
  flags: number;
  id: number;
  resident: boolean;
  /** resident: the value */
  value?: Buffer;
  /** non-resident */
  startVcn?: number;
  lastVcn?: number;
  runs?: Run[];
  allocatedSize?: number;
  dataSize?: number;
  initializedSize?: number;
}

/** A data run: `length` clusters from VCN `vcn`, at LCN `lcn` (null: sparse). */
export interface Run {
  vcn: number;
  lcn: number | null;
  length: number;
}

/** Decodes a mapping pairs array (section "Data runs"); LCN offsets are signed and relative to the previous run's. */
export function decodeRuns(b: Buffer, at: number, end: number, startVcn: number, totalClusters: number, file: string, where: number): Run[] {
  const runs: Run[] = [];
  let vcn = startVcn;
  let lcn = 0;
  const fail = (d: string) => new PolyvisorError('ERR_CORRUPT', d, { file, structure: 'data runs', offset: where + at });
  for (let n = 0; at < end; n++) {
    const head = b[at]!;
    if (head === 0) break;
    const lenBytes = head & 0x0f;
    const offBytes = head >> 4;
    if (lenBytes === 0 || lenBytes > 8 || offBytes > 8 || at + 1 + lenBytes + offBytes > end) throw fail(`run header 0x${head.toString(16)} does not fit`);
    let length = 0;
    for (let i = lenBytes - 1; i >= 0; i--) length = length * 256 + b[at + 1 + i]!;
    let delta = 0;
    if (offBytes) {
      for (let i = offBytes - 1; i >= 0; i--) delta = delta * 256 + b[at + 1 + lenBytes + i]!;
      if (b[at + lenBytes + offBytes]! & 0x80) delta -= 2 ** (8 * offBytes);
    }
    if (!Number.isSafeInteger(length) || length <= 0 || length > totalClusters) throw fail(`a run of ${length} clusters on a volume of ${totalClusters}`);
    if (offBytes) {
      lcn += delta;
      if (lcn < 0 || lcn + length > totalClusters) throw fail(`a run at cluster ${lcn} of ${length} clusters lies outside the volume (${totalClusters} clusters)`);
      runs.push({ vcn, lcn, length });
    } else runs.push({ vcn, lcn: null, length });
    vcn += length;
    at += 1 + lenBytes + offBytes;
    if (n > 1 << 20) throw fail('more than a million runs');
  }
  return runs;
}

/** The attributes of one MFT record (fixups applied). */
export function parseAttributes(rec: Buffer, totalClusters: number, file: string, recordNo: number, recordOffset: number): Attribute[] {
  const fail = (d: string, o: number) => new PolyvisorError('ERR_CORRUPT', d, { file, structure: `MFT record ${recordNo}`, offset: recordOffset + o });
  let off = rec.readUInt16LE(0x14);
  const used = Math.min(rec.readUInt32LE(0x18), rec.length);
  const out: Attribute[] = [];
  for (let n = 0; n < 256; n++) {
    if (off + 4 > used) throw fail('the attributes run past the record without an end marker', off);
    const type = rec.readUInt32LE(off);
    if (type === ATTR.END) return out;
    if (off + 16 > used) throw fail('an attribute header crosses the end of the record', off);
    const len = rec.readUInt32LE(off + 4);
    if (len < 24 || len % 8 !== 0 || off + len > used) throw fail(`attribute length ${len}`, off + 4);
    const a = rec.subarray(off, off + len);
    const nameLen = a[9]!;
    const nameOff = a.readUInt16LE(0x0a);
    if (nameLen && nameOff + nameLen * 2 > len) throw fail('the attribute name runs past the attribute', off + 0x0a);
    const attr: Attribute = { type, name: nameLen ? a.toString('utf16le', nameOff, nameOff + nameLen * 2) : '', flags: a.readUInt16LE(0x0c), id: a.readUInt16LE(0x0e), resident: a[8] === 0 };
    if (attr.resident) {
      const vlen = a.readUInt32LE(0x10);
      const voff = a.readUInt16LE(0x14);
      if (voff + vlen > len) throw fail(`a resident value of ${vlen} bytes at 0x${voff.toString(16)} runs past its attribute`, off + 0x10);
      attr.value = a.subarray(voff, voff + vlen);
    } else {
      if (len < 0x40) throw fail('a non-resident attribute header shorter than 64 bytes', off);
      attr.startVcn = Number(a.readBigUInt64LE(0x10));
      attr.lastVcn = Number(a.readBigUInt64LE(0x18));
      const runsOff = a.readUInt16LE(0x20);
      attr.allocatedSize = Number(a.readBigUInt64LE(0x28));
      attr.dataSize = Number(a.readBigUInt64LE(0x30));
      attr.initializedSize = Number(a.readBigUInt64LE(0x38));
      if (runsOff < 0x40 || runsOff > len) throw fail(`data runs offset 0x${runsOff.toString(16)}`, off + 0x20);
      if (!Number.isSafeInteger(attr.dataSize) || !Number.isSafeInteger(attr.startVcn) || attr.dataSize < 0 || attr.startVcn < 0) throw fail('sizes out of range', off + 0x28);
      attr.runs = decodeRuns(a, runsOff, len, attr.startVcn, totalClusters, file, recordOffset + off);
    }
    out.push(attr);
    off += len;
  }
  throw fail('more than 256 attributes', off);
}

export interface AttrListEntry {
  type: number;
  name: string;
  startVcn: number;
  /** MFT record number (the low 48 bits of the file reference) */
  record: number;
  id: number;
}

export function parseAttributeList(v: Buffer, file: string, recordNo: number): AttrListEntry[] {
  const out: AttrListEntry[] = [];
  let off = 0;
  for (let n = 0; off + 0x1a <= v.length; n++) {
    const len = v.readUInt16LE(off + 4);
    if (len < 0x1a || off + len > v.length || n > 65536) throw new PolyvisorError('ERR_CORRUPT', `attribute list entry of ${len} bytes`, { file, structure: `attribute list of MFT record ${recordNo}`, offset: off });
    const nameLen = v[off + 6]!;
    const nameOff = v[off + 7]!;
    if (nameLen && nameOff + nameLen * 2 > len) throw new PolyvisorError('ERR_CORRUPT', 'an attribute list entry name runs past the entry', { file, structure: `attribute list of MFT record ${recordNo}`, offset: off });
    out.push({
      type: v.readUInt32LE(off),
      name: nameLen ? v.toString('utf16le', off + nameOff, off + nameOff + nameLen * 2) : '',
      startVcn: Number(v.readBigUInt64LE(off + 8)),
      record: Number(v.readBigUInt64LE(off + 0x10) & 0xffffffffffffn),
      id: v.readUInt16LE(off + 0x18),
    });
    off += len;
  }
  return out;
}

export interface IndexEntry {
  /** MFT record number of the file */
  record: number;
  name: string;
  /** 0 POSIX, 1 Win32, 2 DOS, 3 Win32 and DOS */
  namespace: number;
  /** the VCN of the child node, for an entry with one */
  subnode?: number;
}

/** The entries of an index node (an $INDEX_ROOT's, or an INDX record's), from its node header at `at`. */
export function parseIndexNode(b: Buffer, at: number, file: string, what: string, where: number): { entries: IndexEntry[]; end?: number } {
  const fail = (d: string, o: number) => new PolyvisorError('ERR_CORRUPT', d, { file, structure: what, offset: where + o });
  if (at + 16 > b.length) throw fail('the index node header runs past its record', at);
  const first = at + b.readUInt32LE(at);
  const total = at + b.readUInt32LE(at + 4);
  if (first > total || total > b.length) throw fail(`index entries from 0x${first.toString(16)} to 0x${total.toString(16)} in ${b.length} bytes`, at);
  const entries: IndexEntry[] = [];
  let end: number | undefined;
  let off = first;
  for (let n = 0; off + 16 <= total; n++) {
    if (n > 65536) throw fail('more than 65536 index entries in one node', off);
    const len = b.readUInt16LE(off + 8);
    const keyLen = b.readUInt16LE(off + 10);
    const flags = b.readUInt16LE(off + 12);
    if (len < 16 || len % 8 !== 0 || off + len > total) throw fail(`index entry length ${len}`, off + 8);
    const subnode = flags & INDEX_ENTRY_NODE ? Number(b.readBigUInt64LE(off + len - 8)) : undefined;
    if (flags & INDEX_ENTRY_END) {
      end = subnode;
      return { entries, ...(end !== undefined ? { end } : {}) };
    }
    if (keyLen < 0x42 || 16 + keyLen > len) throw fail(`a $FILE_NAME key of ${keyLen} bytes`, off + 10);
    const nameLen = b[off + 16 + 0x40]!;
    if (0x42 + nameLen * 2 > keyLen) throw fail('a file name runs past its key', off + 16 + 0x40);
    entries.push({
      record: Number(b.readBigUInt64LE(off) & 0xffffffffffffn),
      name: b.toString('utf16le', off + 16 + 0x42, off + 16 + 0x42 + nameLen * 2),
      namespace: b[off + 16 + 0x41]!,
      ...(subnode !== undefined ? { subnode } : {}),
    });
    off += len;
  }
  throw fail('the index node has no last entry', off);
}
