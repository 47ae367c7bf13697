/**
 * Hyper-V 2016+ binary configuration (.vmcx; the runtime state .vmrs has the same container).
 *
 * The layout below is the one Fox-IT's dissect.hypervisor documents from VmDataStore.dll
 * (descriptor/c_hyperv.py, hyperv.py); this is an independent reader of it. All fields are
 * little-endian and packed:
 *
 *   0x0000, 0x1000  storage header (46 bytes): signature 0x01282014, checksum u32, sequence u16,
 *                   version u32 (only 0x400 is known), u64, alignment u32, replay log offset u64,
 *                   replay log size u64, header size u32. The header with the higher sequence is live.
 *   0x2000          object table: signature 0x01110001, entry count u32, then 18-byte entries
 *                   { type u8, checksum u32, offset u64, size u32, allocated u8 }; types:
 *                   1 object table, 2 key table, 3 file object, 4 free, 6 replay log.
 *   key table       signature u16 0x0002, index u16, sequence u16, checksum u32, then entries:
 *                   { type u16 (low byte: 1 free, 3 int64, 4 uint64, 5 double, 6 UTF-16 string,
 *                   7 bytes, 8 bool32, 9 node; high byte bit 0: value lives in a file object),
 *                   size u32, parent table index u16, parent entry offset u32, checksum u32,
 *                   insertion sequence u32, data offset u8 } + key (UTF-8, NUL) + value.
 *                   String and byte values are u32 length + bytes; a file-object value is
 *                   u32 size + u64 absolute offset. Parent index 0 is the root.
 *
 * The tree this yields has the same keys as the XML of 2012 R2 (configuration/properties/name,
 * settings/memory/bank/size...), so hyperv-xml.ts maps both. Checksums are not verified (their
 * algorithm is not public); every offset and size is bounds-checked.
 */
import { PolyvisorError, hex } from '../../errors.js';
import type { ConversionNote } from '../codec.js';
import type { HvTree } from './hyperv-xml.js';

export const VMCX_SIGNATURE = 0x01282014;
const OBJECT_TABLE_SIGNATURE = 0x01110001;
const REPLAY_LOG_SIGNATURE = 0x01110003;
const KEY_TABLE_SIGNATURE = 0x0002;
const HEADER_OFFSETS = [0x0000, 0x1000];
const OBJECT_TABLE_OFFSET = 0x2000;
const ENTRY_HEADER = 21;
const KEY_TABLE_HEADER = 10;
/** A VM's .vmcx is tens of KiB; past this it is not one. */
export const MAX_VMCX_BYTES = 64 << 20;
const MAX_ENTRIES = 1 << 20;

const T_FREE = 1;
const T_INT = 3;
const T_UINT = 4;
const T_DOUBLE = 5;
const T_STRING = 6;
const T_BYTES = 7;
const T_BOOL = 8;
const T_NODE = 9;

/** True when `head` starts with the storage header's signature (at 0 or, if that header is torn, 0x1000). */
export function isVmcx(head: Buffer): boolean {
  return (head.length >= 4 && head.readUInt32LE(0) === VMCX_SIGNATURE) || (head.length >= 0x1004 && head.readUInt32LE(0x1000) === VMCX_SIGNATURE);
}

interface KeyEntry {
  offset: number;
  type: number;
  flags: number;
  parentTable: number;
  parentOffset: number;
  key: string;
  value: Buffer;
}

export function parseVmcx(data: Buffer, file: string): { tree: HvTree; notes: ConversionNote[] } {
  const fail = (structure: string, detail: string, offset?: number): PolyvisorError => new PolyvisorError('ERR_CORRUPT', detail, { file, structure, offset });
  if (data.length > MAX_VMCX_BYTES) throw new PolyvisorError('ERR_UNSUPPORTED', `a .vmcx of ${data.length} bytes is over the ${MAX_VMCX_BYTES}-byte limit`, { file });
  if (data.length < OBJECT_TABLE_OFFSET + 8) throw new PolyvisorError('ERR_TRUNCATED', `${data.length} bytes: shorter than the headers and object table`, { file, structure: 'storage header' });

  // Storage headers: the valid one with the higher sequence number is live.
  let live: { seq: number; version: number; replayLog: number } | undefined;
  for (const at of HEADER_OFFSETS) {
    if (data.readUInt32LE(at) !== VMCX_SIGNATURE) continue;
    const seq = data.readUInt16LE(at + 8);
    if (!live || seq > live.seq) live = { seq, version: data.readUInt32LE(at + 10), replayLog: Number(data.readBigUInt64LE(at + 26)) };
  }
  if (!live) throw fail('storage header', `no storage header signature ${hex(VMCX_SIGNATURE)} at 0x0 or 0x1000: not a Hyper-V .vmcx`, 0);
  if (live.version !== 0x400) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `storage format version ${hex(live.version)} (only 0x400, Windows Server 2016 and later, is known): export the VM and read the XML of an older host, or open it on Hyper-V and run New-VM from Polyvisor's script instead`, {
      file,
      structure: 'storage header',
    });
  }
  const notes: ConversionNote[] = [];
  if (live.replayLog > 0 && live.replayLog + 12 <= data.length && data.readUInt32LE(live.replayLog) === REPLAY_LOG_SIGNATURE) {
    const pending = data.readUInt32LE(live.replayLog + 8);
    if (pending > 0) {
      notes.push({ setting: 'vmcx: replay log', action: 'dropped', from: pending, reason: `${pending} journal entries were not applied to the file (Hyper-V was stopped while writing it); the settings read may be a little older than the VM's` });
    }
  }

  // Object tables (the first at 0x2000; more may be chained from it).
  const keyTables = new Map<number, { seq: number; offset: number; size: number }>();
  const fileObjects = new Map<number, number>();
  const tablesToRead = [OBJECT_TABLE_OFFSET];
  const seenTables = new Set<number>();
  let total = 0;
  while (tablesToRead.length > 0) {
    const at = tablesToRead.shift()!;
    if (seenTables.has(at)) continue;
    seenTables.add(at);
    if (at + 8 > data.length) throw fail('object table', 'points past end of file', at);
    if (data.readUInt32LE(at) !== OBJECT_TABLE_SIGNATURE) throw fail('object table', `signature ${hex(data.readUInt32LE(at))} is not ${hex(OBJECT_TABLE_SIGNATURE)}`, at);
    const n = data.readUInt32LE(at + 4);
    if (at + 8 + n * 18 > data.length || (total += n) > MAX_ENTRIES) throw fail('object table', `${n} entries run past end of file`, at);
    for (let i = 0; i < n; i++) {
      const e = at + 8 + i * 18;
      const type = data[e]!;
      const offset = Number(data.readBigUInt64LE(e + 5));
      const size = data.readUInt32LE(e + 13);
      if (data[e + 17] === 0) continue; // not allocated
      if (type === 1 || type === 2 || type === 3) {
        if (offset + size > data.length || offset < OBJECT_TABLE_OFFSET) throw fail(`object table entry ${i}`, `object at ${hex(offset)} of ${size} bytes lies outside the file`, e);
      }
      if (type === 1) tablesToRead.push(offset);
      else if (type === 3) fileObjects.set(offset, size);
      else if (type === 2) {
        if (size < KEY_TABLE_HEADER) throw fail(`object table entry ${i}`, 'key table shorter than its header', e);
        if (data.readUInt16LE(offset) !== KEY_TABLE_SIGNATURE) throw fail('key table', `signature ${hex(data.readUInt16LE(offset))} is not 0x2`, offset);
        const index = data.readUInt16LE(offset + 2);
        const seq = data.readUInt16LE(offset + 4);
        const prev = keyTables.get(index);
        if (!prev || seq > prev.seq) keyTables.set(index, { seq, offset, size });
      }
    }
  }
  if (keyTables.size === 0) throw fail('object table', 'no key tables: the file holds no settings', OBJECT_TABLE_OFFSET);

  // Key entries of each live key table.
  const entries = new Map<string, KeyEntry>(); // "table:offset"
  const ordered: Array<[number, KeyEntry]> = [];
  for (const [index, t] of keyTables) {
    let pos = KEY_TABLE_HEADER;
    while (pos + ENTRY_HEADER <= t.size) {
      const at = t.offset + pos;
      const typeWord = data.readUInt16LE(at);
      const size = data.readUInt32LE(at + 2);
      if (size === 0) break;
      if (size < ENTRY_HEADER || pos + size > t.size) throw fail(`key table ${index} entry at +${hex(pos)}`, `entry size ${size} runs outside its table`, at);
      if (++total > MAX_ENTRIES) throw fail('key table', `more than ${MAX_ENTRIES} entries`, at);
      const type = typeWord & 0xff;
      if (type !== T_FREE) {
        const dataOffset = data[at + 20]!;
        const raw = data.subarray(at + ENTRY_HEADER, at + size);
        if (dataOffset < 1 || dataOffset > raw.length) throw fail(`key table ${index} entry at +${hex(pos)}`, `data offset ${dataOffset} outside the entry`, at);
        if (type < T_INT || type > T_NODE) throw fail(`key table ${index} entry at +${hex(pos)}`, `unknown value type ${type}`, at);
        const e: KeyEntry = {
          offset: pos,
          type,
          flags: typeWord >> 8,
          parentTable: data.readUInt16LE(at + 6),
          parentOffset: data.readUInt32LE(at + 8),
          key: raw.subarray(0, dataOffset - 1).toString('utf8'),
          value: raw.subarray(dataOffset),
        };
        entries.set(`${index}:${pos}`, e);
        ordered.push([index, e]);
      }
      pos += size;
    }
  }

  const valueOf = (e: KeyEntry, where: string): string => {
    let v = e.value;
    if (e.flags & 1) {
      if (v.length < 12) throw fail(where, 'file-object pointer shorter than 12 bytes');
      const size = v.readUInt32LE(0);
      const off = Number(v.readBigUInt64LE(4));
      const objSize = fileObjects.get(off);
      if (objSize === undefined || size > objSize || off + size > data.length) throw fail(where, `value points to ${hex(off)} (${size} bytes), which is no file object`);
      v = data.subarray(off, off + size);
    } else if (e.type === T_STRING || e.type === T_BYTES) {
      if (v.length < 4 || 4 + v.readUInt32LE(0) > v.length) throw fail(where, 'value length runs past the entry');
      v = v.subarray(4, 4 + v.readUInt32LE(0));
    }
    const need = e.type === T_BOOL ? 4 : e.type === T_INT || e.type === T_UINT || e.type === T_DOUBLE ? 8 : 0;
    if (v.length < need) throw fail(where, `a ${need}-byte value has ${v.length}`);
    switch (e.type) {
      case T_INT:
        return v.readBigInt64LE(0).toString();
      case T_UINT:
        return v.readBigUInt64LE(0).toString();
      case T_DOUBLE:
        return String(v.readDoubleLE(0));
      case T_STRING:
        return v.toString('utf16le').replace(/\0+$/, '');
      case T_BYTES:
        return v.toString('base64');
      default:
        return v.readUInt32LE(0) !== 0 ? 'True' : 'False';
    }
  };

  // Build the tree: nodes first, then attach every entry to its parent (unreachable ones drop out).
  const nodes = new Map<KeyEntry, HvTree>();
  for (const [, e] of ordered) if (e.type === T_NODE) nodes.set(e, {});
  const root: HvTree = {};
  for (const [index, e] of ordered) {
    const where = `key table ${index} entry "${e.key.slice(0, 40)}"`;
    let parent: HvTree | undefined;
    if (e.parentTable === 0) parent = root;
    else {
      const p = entries.get(`${e.parentTable}:${e.parentOffset}`);
      if (!p || p.type !== T_NODE || p === e) throw fail(where, `parent (table ${e.parentTable}, +${hex(e.parentOffset)}) is not a node`);
      parent = nodes.get(p);
    }
    if (!parent) continue;
    parent[e.key] = e.type === T_NODE ? nodes.get(e)! : valueOf(e, where);
  }
  return { tree: root, notes };
}
