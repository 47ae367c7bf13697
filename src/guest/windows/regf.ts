/**
 * A Windows registry hive (regf): keys and values read, created, replaced and deleted in a
 * hive held in memory, and the hive written back as a valid file.
 *
 * Source: Maxim Suhanov, "Windows registry file format specification" (sections "Key node",
 * "Subkeys list", "Key values list", "Key value", "Key security", "Big data"), checked against
 * libyal's libregf documentation; hivex (hivexsh, hivexregedit) is the test oracle. The base
 * block is regf-base.ts, bins and cells regf-cells.ts, value types regf-values.ts.
 *
 * API:
 *   Hive.create(name)                    a new hive with an empty root key
 *   Hive.parse(buf, name, { growable })  an existing hive file (`name` is for messages)
 *   hive.root, hive.key(path)            a key by its path below the root ("A\\B"), or null
 *   key.subkeys(), key.subkey(name), key.values(), key.value(name)
 *   hive.createKey(path), hive.deleteKey(path)
 *   hive.setValue(path, name, type, data), hive.deleteValue(path, name)
 *   hive.toBuffer()                      the hive file; unchanged bytes when nothing changed
 *
 * Names compare case-insensitively (upper-cased UTF-16, as Windows compares them), and each
 * edit compares first: setting a value to what it holds writes nothing. Records are read
 * through bounds-checked cells (regf-cells.ts): a subkey list that reaches back to the key or
 * one of its parents, a list inside a list inside a list, or counts beyond their cells are
 * refused with ERR_CORRUPT naming the hive and the offset.
 *
 * With `growable: false` the hive keeps its file size: new cells go into free cells and into
 * the slack after the last bin, and an edit that does not fit fails with ERR_UNSUPPORTED
 * (the hive in memory is then half-edited: drop it; the file was not written), so that a
 * hive can be written back in place into its file on NTFS.
 */
import { PolyvisorError } from '../../errors.js';
import { BASE_BLOCK_SIZE, BASE, filetimeNow, newBaseBlock, parseBaseBlock, sealBaseBlock } from './regf-base.js';
import { CellSpace } from './regf-cells.js';
import { decodeValue, regTypeName, type DecodedValue } from './regf-values.js';

/** "no cell" in a cell index field */
const NONE = 0xffffffff;
/** Windows' limit on key nesting (Suhanov: "Key node", 512 levels) */
const MAX_DEPTH = 512;
/** data longer than this is split into "db" segments from format 1.4 on (spec: "Big data") */
const BIG_DATA_SEGMENT = 16344;
/** a subkey list entry count is 16 bits */
const MAX_LIST = 0xffff;

/** Key node flags (spec: "Key node", Flags). */
const KEY_HIVE_ENTRY = 0x0004;
const KEY_NO_DELETE = 0x0008;
const KEY_COMP_NAME = 0x0020;
/** Key value flags */
const VALUE_COMP_NAME = 0x0001;

/** Key node field offsets, from the start of the cell's data. */
const NK = {
  signature: 0,
  flags: 2,
  lastWritten: 4,
  accessBits: 12,
  parent: 16,
  subkeys: 20,
  volatileSubkeys: 24,
  subkeysList: 28,
  volatileSubkeysList: 32,
  values: 36,
  valuesList: 40,
  security: 44,
  className: 48,
  largestSubkeyName: 52,
  largestSubkeyClass: 56,
  largestValueName: 60,
  largestValueData: 64,
  workVar: 68,
  nameLength: 72,
  classLength: 74,
  name: 76,
} as const;

/** Key value field offsets. */
const VK = { signature: 0, nameLength: 2, dataSize: 4, dataOffset: 8, type: 12, flags: 16, name: 20 } as const;
const SK = { flink: 4, blink: 8, refCount: 12, descriptorSize: 16, descriptor: 20 } as const;

export interface RegValue {
  /** "" for the key's default value */
  name: string;
  type: number;
  data: Buffer;
}

interface KeyNode {
  off: number;
  flags: number;
  name: string;
  parent: number;
  subkeyCount: number;
  subkeysList: number;
  valueCount: number;
  valuesList: number;
  security: number;
  lastWritten: bigint;
}

const upper = (s: string) => s.toUpperCase();
function compareNames(a: string, b: string): number {
  const x = upper(a);
  const y = upper(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

/** Can the name be stored as Latin-1 (a "compressed" name)? */
const compressible = (s: string) => /^[\x00-\xff]*$/.test(s);
function encodeName(s: string): { bytes: Buffer; compressed: boolean } {
  return compressible(s) ? { bytes: Buffer.from(s, 'latin1'), compressed: true } : { bytes: Buffer.from(s, 'utf16le'), compressed: false };
}

/** "lh" hash (spec: "Hash leaf"): h = h * 37 + each upper-cased UTF-16 code unit, modulo 2^32. */
export function lhHash(name: string): number {
  let h = 0;
  for (const c of upper(name)) for (let i = 0; i < c.length; i++) h = (Math.imul(h, 37) + c.charCodeAt(i)) >>> 0;
  return h;
}

export function splitPath(path: string): string[] {
  return path.split(/[\\/]+/).filter((c) => c !== '');
}

/** A key of a hive: a view, valid until the key is deleted. */
export class RegKey {
  readonly hive: Hive;
  readonly offset: number;
  /** the path below the root, components joined by "\" ("" for the root) */
  readonly path: string;
  readonly name: string;
  /** the cell indexes of the key and its parents, to refuse cycles */
  readonly #lineage: ReadonlySet<number>;

  constructor(hive: Hive, offset: number, path: string, lineage: ReadonlySet<number>) {
    this.hive = hive;
    this.offset = offset;
    this.path = path;
    this.#lineage = lineage;
    this.name = hive.nk(offset).name;
  }

  get lastWritten(): Date {
    const ft = this.hive.nk(this.offset).lastWritten;
    return new Date(Number((ft - 116444736000000000n) / 10000n));
  }

  subkeys(): RegKey[] {
    const nk = this.hive.nk(this.offset);
    const lineage = new Set(this.#lineage).add(this.offset);
    if (lineage.size > MAX_DEPTH) throw this.hive.corrupt(`keys nest deeper than ${MAX_DEPTH} levels`, 'key node', this.offset);
    return this.hive.subkeyOffsets(nk).map((off) => {
      if (lineage.has(off)) throw this.hive.corrupt(`the subkey list of "${this.path || '(root)'}" refers back to the key or one of its parents (a cycle)`, 'subkeys list', nk.subkeysList);
      const child = this.hive.nk(off);
      return new RegKey(this.hive, off, this.path ? `${this.path}\\${child.name}` : child.name, lineage);
    });
  }

  subkey(name: string): RegKey | null {
    const u = upper(name);
    return this.subkeys().find((k) => upper(k.name) === u) ?? null;
  }

  values(): RegValue[] {
    return this.hive.valueOffsets(this.hive.nk(this.offset)).map((off) => this.hive.readValue(off));
  }

  value(name: string): RegValue | null {
    const u = upper(name);
    return this.values().find((v) => upper(v.name) === u) ?? null;
  }

  /** The value's data decoded by its type, or undefined when there is no such value. */
  get(name: string): DecodedValue | undefined {
    const v = this.value(name);
    return v ? decodeValue(v.type, v.data) : undefined;
  }
}

export interface ParseOptions {
  /** may edits make the file longer? (default true; false: the hive is written back in place) */
  growable?: boolean;
}

export class Hive {
  readonly name: string;
  readonly notes: string[] = [];
  readonly minorVersion: number;
  readonly #cells: CellSpace;
  #rootOff: number;
  #dirty = false;

  private constructor(name: string, cells: CellSpace, rootOff: number, minorVersion: number) {
    this.name = name;
    this.#cells = cells;
    this.#rootOff = rootOff;
    this.minorVersion = minorVersion;
  }

  /** Reads a hive file. The buffer is copied: edits never reach the caller's bytes. */
  static parse(buf: Buffer, name: string, options: ParseOptions = {}): Hive {
    const notes: string[] = [];
    const base = parseBaseBlock(buf, name, notes);
    const copy = Buffer.from(buf);
    const cells = CellSpace.scan(copy, base.hiveBinsDataSize, name, options.growable ?? true);
    const h = new Hive(name, cells, base.rootCellOffset, base.minorVersion);
    h.notes.push(...notes);
    const root = h.nk(base.rootCellOffset);
    if (!(root.flags & KEY_HIVE_ENTRY)) h.notes.push('the root key lacks the hive-entry flag');
    return h;
  }

  /** A new hive holding an empty root key (named like the hive's own root, e.g. "ROOT"), with one security record. */
  static create(name: string, rootName = 'ROOT'): Hive {
    const binSize = 4096;
    const buf = Buffer.concat([newBaseBlock(0x20, binSize, name), Buffer.alloc(binSize)]);
    buf.write('hbin', BASE_BLOCK_SIZE, 'latin1');
    buf.writeUInt32LE(0, BASE_BLOCK_SIZE + 4);
    buf.writeUInt32LE(binSize, BASE_BLOCK_SIZE + 8);
    // the bin's space as one free cell, from which the root and its security record are cut
    buf.writeInt32LE(binSize - 32, BASE_BLOCK_SIZE + 32);
    const cells = CellSpace.scan(buf, binSize, name, true);
    const enc = encodeName(rootName);
    const root = cells.alloc(NK.name + enc.bytes.length, 'root key');
    const sd = defaultSecurityDescriptor();
    const sk = cells.alloc(SK.descriptor + sd.length, 'root key security');
    const s = cells.cell(sk, 'key security');
    s.write('sk', 0, 'latin1');
    s.writeUInt32LE(sk, SK.flink);
    s.writeUInt32LE(sk, SK.blink);
    s.writeUInt32LE(1, SK.refCount);
    s.writeUInt32LE(sd.length, SK.descriptorSize);
    sd.copy(s, SK.descriptor);
    const n = cells.cell(root, 'key node');
    n.write('nk', 0, 'latin1');
    n.writeUInt16LE(KEY_HIVE_ENTRY | KEY_NO_DELETE | (enc.compressed ? KEY_COMP_NAME : 0), NK.flags);
    n.writeBigUInt64LE(filetimeNow(), NK.lastWritten);
    n.writeUInt32LE(NONE, NK.parent);
    n.writeUInt32LE(NONE, NK.subkeysList);
    n.writeUInt32LE(NONE, NK.volatileSubkeysList);
    n.writeUInt32LE(NONE, NK.valuesList);
    n.writeUInt32LE(sk, NK.security);
    n.writeUInt32LE(NONE, NK.className);
    n.writeUInt16LE(enc.bytes.length, NK.nameLength);
    enc.bytes.copy(n, NK.name);
    cells.buf.writeUInt32LE(root, BASE.rootCellOffset);
    const h = new Hive(name, cells, root, 5);
    h.#dirty = true;
    return h;
  }

  get root(): RegKey {
    return new RegKey(this, this.#rootOff, '', new Set());
  }

  /** Did an edit change the hive since it was parsed? */
  get changed(): boolean {
    return this.#dirty;
  }

  /** Bytes in free cells. */
  get freeBytes(): number {
    return this.#cells.freeBytes();
  }

  corrupt(detail: string, structure: string, off: number): PolyvisorError {
    return new PolyvisorError('ERR_CORRUPT', detail, { file: this.name, structure, offset: this.#cells.fileOffset(off) });
  }

  /** The key at `path` below the root, or null. */
  key(path: string): RegKey | null {
    let k: RegKey | null = this.root;
    for (const c of splitPath(path)) {
      k = k.subkey(c);
      if (!k) return null;
    }
    return k;
  }

  #needKey(path: string): RegKey {
    const k = this.key(path);
    if (!k) throw new PolyvisorError('ERR_NOT_FOUND', `no key "${path}"`, { file: this.name });
    return k;
  }

  // ---------------------------------------------------------------------------------------
  // records

  nk(off: number): KeyNode {
    const c = this.#cells.cell(off, 'key node');
    if (c.length < NK.name || c.toString('latin1', 0, 2) !== 'nk') throw this.corrupt('not a key node ("nk")', 'key node', off);
    const flags = c.readUInt16LE(NK.flags);
    const nameLength = c.readUInt16LE(NK.nameLength);
    if (NK.name + nameLength > c.length) throw this.corrupt(`the key name of ${nameLength} bytes runs past its cell`, 'key node', off);
    const raw = c.subarray(NK.name, NK.name + nameLength);
    return {
      off,
      flags,
      name: flags & KEY_COMP_NAME ? raw.toString('latin1') : raw.subarray(0, raw.length & ~1).toString('utf16le'),
      parent: c.readUInt32LE(NK.parent),
      subkeyCount: c.readUInt32LE(NK.subkeys),
      subkeysList: c.readUInt32LE(NK.subkeysList),
      valueCount: c.readUInt32LE(NK.values),
      valuesList: c.readUInt32LE(NK.valuesList),
      security: c.readUInt32LE(NK.security),
      lastWritten: c.readBigUInt64LE(NK.lastWritten),
    };
  }

  /** The key nodes a subkeys list names: "li", "lf", "lh", or an "ri" of those (one level only, as the spec allows). */
  subkeyOffsets(nk: KeyNode): number[] {
    if (nk.subkeyCount === 0) return [];
    const out: number[] = [];
    const seen = new Set<number>();
    const leaf = (off: number, inRi: boolean) => {
      const c = this.#cells.cell(off, 'subkeys list');
      if (c.length < 4) throw this.corrupt('a subkeys list shorter than its header', 'subkeys list', off);
      const sig = c.toString('latin1', 0, 2);
      const count = c.readUInt16LE(2);
      const width = sig === 'lf' || sig === 'lh' ? 8 : sig === 'li' || sig === 'ri' ? 4 : 0;
      if (!width) throw this.corrupt(`unknown subkeys list signature "${sig.replace(/[^\x20-\x7e]/g, '?')}"`, 'subkeys list', off);
      if (4 + count * width > c.length) throw this.corrupt(`${count} entries do not fit in the list's cell of ${c.length} bytes`, 'subkeys list', off);
      if (sig === 'ri') {
        if (inRi) throw this.corrupt('an index root ("ri") inside an index root', 'subkeys list', off);
        for (let i = 0; i < count; i++) {
          const sub = c.readUInt32LE(4 + i * 4);
          if (seen.has(sub)) throw this.corrupt('an index root names the same list twice (a cycle)', 'subkeys list', off);
          seen.add(sub);
          leaf(sub, true);
        }
        return;
      }
      for (let i = 0; i < count; i++) {
        const k = c.readUInt32LE(4 + i * width);
        if (seen.has(k)) throw this.corrupt(`the key node at 0x${k.toString(16)} is listed twice`, 'subkeys list', off);
        seen.add(k);
        out.push(k);
      }
    };
    leaf(nk.subkeysList, false);
    if (out.length !== nk.subkeyCount) {
      throw this.corrupt(`the key records ${nk.subkeyCount} subkeys, its list holds ${out.length}`, 'key node', nk.off);
    }
    return out;
  }

  valueOffsets(nk: KeyNode): number[] {
    if (nk.valueCount === 0) return [];
    const c = this.#cells.cell(nk.valuesList, 'key values list');
    if (nk.valueCount * 4 > c.length) throw this.corrupt(`${nk.valueCount} values do not fit in the list's cell of ${c.length} bytes`, 'key values list', nk.valuesList);
    const out: number[] = [];
    for (let i = 0; i < nk.valueCount; i++) out.push(c.readUInt32LE(i * 4));
    return out;
  }

  #vk(off: number) {
    const c = this.#cells.cell(off, 'key value');
    if (c.length < VK.name || c.toString('latin1', 0, 2) !== 'vk') throw this.corrupt('not a key value ("vk")', 'key value', off);
    const nameLength = c.readUInt16LE(VK.nameLength);
    if (VK.name + nameLength > c.length) throw this.corrupt(`the value name of ${nameLength} bytes runs past its cell`, 'key value', off);
    const flags = c.readUInt16LE(VK.flags);
    const raw = c.subarray(VK.name, VK.name + nameLength);
    return {
      c,
      name: flags & VALUE_COMP_NAME ? raw.toString('latin1') : raw.subarray(0, raw.length & ~1).toString('utf16le'),
      dataSize: c.readUInt32LE(VK.dataSize),
      dataOffset: c.readUInt32LE(VK.dataOffset),
      type: c.readUInt32LE(VK.type),
    };
  }

  readValue(off: number): RegValue {
    const vk = this.#vk(off);
    return { name: vk.name, type: vk.type, data: Buffer.from(this.#valueData(off, vk.dataSize, vk.dataOffset, vk.c)) };
  }

  #valueData(off: number, dataSize: number, dataOffset: number, c: Buffer): Buffer {
    if (dataSize & 0x80000000) {
      // the data lives in the data offset field itself (spec: "Data size", bit 31)
      const len = dataSize & 0x7fffffff;
      if (len > 4) throw this.corrupt(`resident data of ${len} bytes (at most 4 fit in the value)`, 'key value', off);
      return c.subarray(VK.dataOffset, VK.dataOffset + len);
    }
    if (dataSize === 0) return Buffer.alloc(0);
    if (dataSize > this.#cells.binsSize) throw this.corrupt(`data size ${dataSize} is larger than the hive`, 'key value', off);
    const d = this.#cells.cell(dataOffset, 'value data');
    if (dataSize > BIG_DATA_SEGMENT && this.minorVersion >= 4 && d.toString('latin1', 0, 2) === 'db') return this.#bigData(dataOffset, dataSize, d);
    if (dataSize > d.length) throw this.corrupt(`${dataSize} bytes of data do not fit in its cell of ${d.length} bytes`, 'value data', dataOffset);
    return d.subarray(0, dataSize);
  }

  #bigData(off: number, dataSize: number, d: Buffer): Buffer {
    if (d.length < 8) throw this.corrupt('a big data record shorter than its header', 'big data', off);
    const segments = d.readUInt16LE(2);
    const listOff = d.readUInt32LE(4);
    if (segments * BIG_DATA_SEGMENT < dataSize) throw this.corrupt(`${segments} segments cannot hold ${dataSize} bytes`, 'big data', off);
    const list = this.#cells.cell(listOff, 'big data segments list');
    if (segments * 4 > list.length) throw this.corrupt(`${segments} segments do not fit in the list's cell`, 'big data segments list', listOff);
    const parts: Buffer[] = [];
    let left = dataSize;
    for (let i = 0; i < segments && left > 0; i++) {
      const segOff = list.readUInt32LE(i * 4);
      const seg = this.#cells.cell(segOff, 'big data segment');
      const take = Math.min(left, BIG_DATA_SEGMENT);
      if (seg.length < take) throw this.corrupt(`a segment of ${seg.length} bytes where ${take} are needed`, 'big data segment', segOff);
      parts.push(seg.subarray(0, take));
      left -= take;
    }
    return Buffer.concat(parts);
  }

  // ---------------------------------------------------------------------------------------
  // edits

  #touch(off: number): void {
    this.#cells.cell(off, 'key node').writeBigUInt64LE(filetimeNow(), NK.lastWritten);
    this.#dirty = true;
  }

  /** Creates the key and any missing parents; returns it (an existing key is returned as it is). */
  createKey(path: string): RegKey {
    const parts = splitPath(path);
    if (parts.length > MAX_DEPTH) throw new PolyvisorError('ERR_UNSUPPORTED', `"${path}" nests deeper than ${MAX_DEPTH} levels`, { file: this.name });
    let k = this.root;
    for (const name of parts) {
      if (name.length > 255) throw new PolyvisorError('ERR_UNSUPPORTED', `key name "${name.slice(0, 40)}..." is longer than 255 characters`, { file: this.name });
      k = k.subkey(name) ?? this.#addSubkey(k, name);
    }
    return k;
  }

  #addSubkey(parent: RegKey, name: string): RegKey {
    const enc = encodeName(name);
    const p = this.nk(parent.offset);
    const siblings = this.subkeyOffsets(p);
    if (siblings.length >= MAX_LIST) throw new PolyvisorError('ERR_UNSUPPORTED', `"${parent.path}" has ${siblings.length} subkeys already`, { file: this.name });
    const off = this.#cells.alloc(NK.name + enc.bytes.length, `key "${name}"`);
    const n = this.#cells.cell(off, 'key node');
    n.write('nk', 0, 'latin1');
    n.writeUInt16LE(enc.compressed ? KEY_COMP_NAME : 0, NK.flags);
    n.writeBigUInt64LE(filetimeNow(), NK.lastWritten);
    n.writeUInt32LE(parent.offset, NK.parent);
    n.writeUInt32LE(NONE, NK.subkeysList);
    n.writeUInt32LE(NONE, NK.volatileSubkeysList);
    n.writeUInt32LE(NONE, NK.valuesList);
    n.writeUInt32LE(NONE, NK.className);
    n.writeUInt16LE(enc.bytes.length, NK.nameLength);
    enc.bytes.copy(n, NK.name);
    // a new key shares its parent's security record (as RegCreateKey does without a descriptor)
    if (this.#cells.valid(p.security)) {
      const sk = this.#cells.cell(p.security, 'key security');
      if (sk.length >= SK.descriptor && sk.toString('latin1', 0, 2) === 'sk') {
        sk.writeUInt32LE(sk.readUInt32LE(SK.refCount) + 1, SK.refCount);
        n.writeUInt32LE(p.security, NK.security);
      } else n.writeUInt32LE(NONE, NK.security);
    } else n.writeUInt32LE(NONE, NK.security);
    this.#writeSubkeys(parent.offset, [...siblings, off]);
    const pc = this.#cells.cell(parent.offset, 'key node');
    const longest = pc.readUInt16LE(NK.largestSubkeyName);
    if (name.length * 2 > longest) pc.writeUInt16LE(Math.min(0xffff, name.length * 2), NK.largestSubkeyName);
    this.#touch(parent.offset);
    return new RegKey(this, off, parent.path ? `${parent.path}\\${name}` : name, new Set());
  }

  /** Replaces a key's subkeys list with one leaf list of `offs`, sorted as Windows looks them up. */
  #writeSubkeys(keyOff: number, offs: number[]): void {
    const old = this.nk(keyOff);
    const named = offs.map((o) => ({ o, name: this.nk(o).name })).sort((a, b) => compareNames(a.name, b.name));
    let list = NONE;
    if (named.length) {
      // "lh" from format 1.5 (Windows XP) on, "lf" in 1.3 and 1.4, "li" before
      const sig = this.minorVersion >= 5 ? 'lh' : this.minorVersion >= 3 ? 'lf' : 'li';
      const width = sig === 'li' ? 4 : 8;
      list = this.#cells.alloc(4 + named.length * width, 'subkeys list');
      const c = this.#cells.cell(list, 'subkeys list');
      c.write(sig, 0, 'latin1');
      c.writeUInt16LE(named.length, 2);
      named.forEach(({ o, name }, i) => {
        c.writeUInt32LE(o, 4 + i * width);
        if (sig === 'lh') c.writeUInt32LE(lhHash(name), 8 + i * width);
        if (sig === 'lf') for (let j = 0; j < 4 && j < name.length; j++) c[8 + i * width + j] = name.charCodeAt(j) & 0xff;
      });
    }
    if (old.subkeyCount > 0) this.#freeSubkeysList(old.subkeysList);
    const n = this.#cells.cell(keyOff, 'key node');
    n.writeUInt32LE(named.length, NK.subkeys);
    n.writeUInt32LE(list, NK.subkeysList);
  }

  #freeSubkeysList(off: number): void {
    const c = this.#cells.cell(off, 'subkeys list');
    if (c.toString('latin1', 0, 2) === 'ri') {
      const count = c.readUInt16LE(2);
      for (let i = 0; i < count && 4 + i * 4 + 4 <= c.length; i++) this.#cells.free(c.readUInt32LE(4 + i * 4));
    }
    this.#cells.free(off);
  }

  /** Sets a value (creating or replacing it); false when it already held exactly this type and data. */
  setValue(path: string, name: string, type: number, data: Buffer): boolean {
    const key = this.#needKey(path);
    const nk = this.nk(key.offset);
    const offs = this.valueOffsets(nk);
    const u = upper(name);
    const existing = offs.find((o) => upper(this.#vk(o).name) === u);
    if (existing !== undefined) {
      const cur = this.readValue(existing);
      if (cur.type === type && cur.data.equals(data)) return false;
      this.#writeValueData(existing, type, data, name);
    } else {
      const enc = encodeName(name);
      const vk = this.#cells.alloc(VK.name + enc.bytes.length, `value "${name}"`);
      const c = this.#cells.cell(vk, 'key value');
      c.write('vk', 0, 'latin1');
      c.writeUInt16LE(enc.bytes.length, VK.nameLength);
      c.writeUInt16LE(enc.compressed ? VALUE_COMP_NAME : 0, VK.flags);
      enc.bytes.copy(c, VK.name);
      c.writeUInt32LE(0x80000000, VK.dataSize);
      this.#writeValueData(vk, type, data, name);
      this.#writeValueList(key.offset, [...offs, vk]);
      const n = this.#cells.cell(key.offset, 'key node');
      if (name.length * 2 > n.readUInt32LE(NK.largestValueName)) n.writeUInt32LE(name.length * 2, NK.largestValueName);
    }
    const n = this.#cells.cell(key.offset, 'key node');
    if (data.length > n.readUInt32LE(NK.largestValueData)) n.writeUInt32LE(data.length, NK.largestValueData);
    this.#touch(key.offset);
    return true;
  }

  /** Stores `data` for the value at `vk`: in place when the old cell has room, else in new cells. */
  #writeValueData(vkOff: number, type: number, data: Buffer, name: string): void {
    const c0 = this.#cells.cell(vkOff, 'key value');
    const oldSize = c0.readUInt32LE(VK.dataSize);
    const oldOff = c0.readUInt32LE(VK.dataOffset);
    const oldInCell = !(oldSize & 0x80000000) && oldSize > 0;
    const oldBig = oldInCell && oldSize > BIG_DATA_SEGMENT && this.minorVersion >= 4 && this.#cells.valid(oldOff) && this.#cells.cell(oldOff, 'value data').toString('latin1', 0, 2) === 'db';
    let size: number;
    let off: number;
    if (data.length <= 4) {
      size = (0x80000000 | data.length) >>> 0;
      const b = Buffer.alloc(4);
      data.copy(b);
      off = b.readUInt32LE(0);
    } else if (oldInCell && !oldBig && data.length <= BIG_DATA_SEGMENT && this.#cells.valid(oldOff) && this.#cells.cell(oldOff, 'value data').length >= data.length) {
      // the old data cell has room: the value keeps its cell
      const d = this.#cells.cell(oldOff, 'value data');
      data.copy(d);
      d.fill(0, data.length);
      size = data.length;
      off = oldOff;
    } else {
      off = data.length > BIG_DATA_SEGMENT && this.minorVersion >= 4 ? this.#writeBigData(data, name) : this.#cells.alloc(data.length, `value "${name}" data`);
      if (data.length <= BIG_DATA_SEGMENT || this.minorVersion < 4) data.copy(this.#cells.cell(off, 'value data'));
      size = data.length;
    }
    if (oldInCell && off !== oldOff) this.#freeData(oldOff, oldBig);
    const c = this.#cells.cell(vkOff, 'key value');
    c.writeUInt32LE(size, VK.dataSize);
    c.writeUInt32LE(off >>> 0, VK.dataOffset);
    c.writeUInt32LE(type >>> 0, VK.type);
  }

  #writeBigData(data: Buffer, name: string): number {
    const n = Math.ceil(data.length / BIG_DATA_SEGMENT);
    const db = this.#cells.alloc(8, `value "${name}" big data`);
    const list = this.#cells.alloc(n * 4, `value "${name}" big data segments`);
    for (let i = 0; i < n; i++) {
      const part = data.subarray(i * BIG_DATA_SEGMENT, (i + 1) * BIG_DATA_SEGMENT);
      const seg = this.#cells.alloc(part.length, `value "${name}" big data segment`);
      part.copy(this.#cells.cell(seg, 'big data segment'));
      // fetched after each allocation: a new bin may have moved the hive's buffer
      this.#cells.cell(list, 'big data segments list').writeUInt32LE(seg, i * 4);
    }
    const d = this.#cells.cell(db, 'big data');
    d.write('db', 0, 'latin1');
    d.writeUInt16LE(n, 2);
    d.writeUInt32LE(list, 4);
    return db;
  }

  #freeData(off: number, big: boolean): void {
    if (big) {
      const d = this.#cells.cell(off, 'big data');
      const n = d.readUInt16LE(2);
      const listOff = d.readUInt32LE(4);
      if (this.#cells.valid(listOff)) {
        const l = this.#cells.cell(listOff, 'big data segments list');
        for (let i = 0; i < n && i * 4 + 4 <= l.length; i++) this.#cells.free(l.readUInt32LE(i * 4));
        this.#cells.free(listOff);
      }
    }
    this.#cells.free(off);
  }

  #writeValueList(keyOff: number, offs: number[]): void {
    const nk = this.nk(keyOff);
    let list = nk.valueCount > 0 ? nk.valuesList : NONE;
    if (offs.length === 0) {
      if (list !== NONE) this.#cells.free(list);
      list = NONE;
    } else if (list === NONE || this.#cells.cell(list, 'key values list').length < offs.length * 4) {
      const fresh = this.#cells.alloc(offs.length * 4, 'key values list');
      if (list !== NONE) this.#cells.free(list);
      list = fresh;
    }
    if (list !== NONE) {
      const c = this.#cells.cell(list, 'key values list');
      offs.forEach((o, i) => c.writeUInt32LE(o, i * 4));
    }
    const n = this.#cells.cell(keyOff, 'key node');
    n.writeUInt32LE(offs.length, NK.values);
    n.writeUInt32LE(list, NK.valuesList);
  }

  /** Deletes a value; false when there was none. */
  deleteValue(path: string, name: string): boolean {
    const key = this.#needKey(path);
    const nk = this.nk(key.offset);
    const offs = this.valueOffsets(nk);
    const u = upper(name);
    const i = offs.findIndex((o) => upper(this.#vk(o).name) === u);
    if (i < 0) return false;
    this.#freeValue(offs[i]!);
    this.#writeValueList(key.offset, offs.filter((_, j) => j !== i));
    this.#touch(key.offset);
    return true;
  }

  #freeValue(vkOff: number): void {
    const vk = this.#vk(vkOff);
    if (!(vk.dataSize & 0x80000000) && vk.dataSize > 0 && this.#cells.valid(vk.dataOffset)) {
      const big = vk.dataSize > BIG_DATA_SEGMENT && this.minorVersion >= 4 && this.#cells.cell(vk.dataOffset, 'value data').toString('latin1', 0, 2) === 'db';
      this.#freeData(vk.dataOffset, big);
    }
    this.#cells.free(vkOff);
  }

  /** Deletes a key, its values and its subkeys; false when there was none. The root cannot be deleted. */
  deleteKey(path: string): boolean {
    const parts = splitPath(path);
    if (parts.length === 0) throw new PolyvisorError('ERR_UNSUPPORTED', 'the root key cannot be deleted', { file: this.name });
    const key = this.key(path);
    if (!key) return false;
    const parent = this.key(parts.slice(0, -1).join('\\'))!;
    this.#freeTree(key, 0);
    this.#writeSubkeys(parent.offset, this.subkeyOffsets(this.nk(parent.offset)).filter((o) => o !== key.offset));
    this.#touch(parent.offset);
    return true;
  }

  #freeTree(key: RegKey, depth: number): void {
    if (depth > MAX_DEPTH) throw this.corrupt(`keys nest deeper than ${MAX_DEPTH} levels`, 'key node', key.offset);
    for (const k of key.subkeys()) this.#freeTree(k, depth + 1);
    const nk = this.nk(key.offset);
    for (const v of this.valueOffsets(nk)) this.#freeValue(v);
    if (nk.valueCount > 0) this.#cells.free(nk.valuesList);
    if (nk.subkeyCount > 0) this.#freeSubkeysList(nk.subkeysList);
    this.#releaseSecurity(nk.security);
    this.#cells.free(key.offset);
  }

  /** One reference fewer to a security record; the last one unlinks it from the list of records (spec: "Key security"). */
  #releaseSecurity(off: number): void {
    if (!this.#cells.valid(off)) return;
    const sk = this.#cells.cell(off, 'key security');
    if (sk.length < SK.descriptor || sk.toString('latin1', 0, 2) !== 'sk') return;
    const refs = sk.readUInt32LE(SK.refCount);
    if (refs > 1) {
      sk.writeUInt32LE(refs - 1, SK.refCount);
      return;
    }
    const flink = sk.readUInt32LE(SK.flink);
    const blink = sk.readUInt32LE(SK.blink);
    if (flink === off || !this.#cells.valid(flink) || !this.#cells.valid(blink)) {
      sk.writeUInt32LE(0, SK.refCount);
      return;
    }
    this.#cells.cell(blink, 'key security').writeUInt32LE(flink, SK.flink);
    this.#cells.cell(flink, 'key security').writeUInt32LE(blink, SK.blink);
    this.#cells.free(off);
  }

  /**
   * The hive file. When something changed: both sequence numbers one higher, the bins' size,
   * the timestamp and the checksum brought up to date; otherwise the bytes parsed.
   */
  toBuffer(): Buffer {
    const b = this.#cells.buf;
    if (this.#dirty) sealBaseBlock(b, this.#cells.binsSize);
    this.#dirty = false;
    return Buffer.from(b);
  }
}

/**
 * A self-relative security descriptor (MS-DTYP 2.4.6): owner BUILTIN\Administrators, group
 * SYSTEM, a DACL granting Everyone KEY_ALL_ACCESS, inherited by subkeys.
 */
function defaultSecurityDescriptor(): Buffer {
  const sid = (auth: number, subs: number[]) => {
    const b = Buffer.alloc(8 + subs.length * 4);
    b[0] = 1;
    b[1] = subs.length;
    b[7] = auth;
    subs.forEach((s, i) => b.writeUInt32LE(s, 8 + i * 4));
    return b;
  };
  const everyone = sid(1, [0]);
  const ace = Buffer.concat([Buffer.from([0x00, 0x03, 0, 0]), Buffer.alloc(4), everyone]);
  ace.writeUInt16LE(ace.length, 2);
  ace.writeUInt32LE(0x000f003f, 4);
  const acl = Buffer.concat([Buffer.from([2, 0, 0, 0, 1, 0, 0, 0]), ace]);
  acl.writeUInt16LE(acl.length, 2);
  const owner = sid(5, [32, 544]);
  const group = sid(5, [18]);
  const head = Buffer.alloc(20);
  head[0] = 1;
  head.writeUInt16LE(0x8004, 2); // SE_SELF_RELATIVE | SE_DACL_PRESENT
  head.writeUInt32LE(20 + acl.length, 4);
  head.writeUInt32LE(20 + acl.length + owner.length, 8);
  head.writeUInt32LE(0, 12);
  head.writeUInt32LE(20, 16);
  return Buffer.concat([head, acl, owner, group]);
}

export { regTypeName };
