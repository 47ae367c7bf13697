/**
 * The VMDK text descriptor (Virtual Disk Format 5.0, "The Descriptor File"): a small
 * `key=value` text that names the disk's create type, its content IDs (CID / parentCID),
 * its parent (parentFileNameHint), its extents and the disk database (ddb.*).
 *
 * It lives in its own file (monolithicFlat, twoGbMaxExtent*, vmfs, vmfsSparse, seSparse)
 * or embedded in a hosted sparse extent at descriptorOffset (monolithicSparse,
 * streamOptimized). The text comes from a file we did not write: it is parsed strictly,
 * with bounded size and extent count, and every malformed line is refused with its number.
 */
import { PolyvisorError } from '../../errors.js';

/** Descriptors are a few hundred bytes; 1 MiB is far beyond any real one (qemu caps at 1 MiB too). */
export const MAX_DESCRIPTOR_BYTES = 1 << 20;
/** A 2 TB twoGbMaxExtent disk has ~1000 extents; 4096 leaves room without unbounded work. */
export const MAX_EXTENTS = 4096;
/** parentCID value meaning "no parent" (spec: "CID_NOPARENT"). */
export const CID_NOPARENT = 0xffffffff;

export type ExtentAccess = 'RW' | 'RDONLY' | 'NOACCESS';
/** Extent types of the spec's extent description lines. */
export type ExtentType = 'SPARSE' | 'FLAT' | 'ZERO' | 'VMFS' | 'VMFSSPARSE' | 'SESPARSE' | 'VMFSRDM' | 'VMFSRAW';
const EXTENT_TYPES: readonly string[] = ['SPARSE', 'FLAT', 'ZERO', 'VMFS', 'VMFSSPARSE', 'SESPARSE', 'VMFSRDM', 'VMFSRAW'];

export interface ExtentLine {
  access: ExtentAccess;
  /** size in 512-byte sectors */
  sectors: number;
  type: ExtentType;
  /** file name as recorded (absent for ZERO) */
  file?: string;
  /** FLAT: offset of the extent's data in its file, in sectors */
  offset: number;
  /** 1-based line number in the descriptor, for messages */
  line: number;
}

export interface Descriptor {
  version: number;
  cid: number;
  parentCid: number;
  createType: string;
  parentFileNameHint?: string;
  extents: ExtentLine[];
  /** ddb.* entries, key without the "ddb." prefix, values unquoted */
  ddb: Record<string, string>;
  /** other header keys we do not interpret (isNativeSnapshot, encoding...), kept for info */
  other: Record<string, string>;
}

/** Cheap test used by probe: a descriptor starts with comments/blank lines then `version=`, or holds `createType=`. */
export function looksLikeDescriptor(head: Uint8Array): boolean {
  const n = Math.min(head.length, 4096);
  if (n === 0) return false;
  for (let i = 0; i < n; i++) {
    const c = head[i]!;
    // text only: a NUL or other control byte (besides tab/CR/LF) means binary data
    if (c === 0) {
      if (i === 0) return false;
      break;
    }
    if (c < 9 || (c > 13 && c < 32)) return false;
  }
  const text = Buffer.from(head.buffer, head.byteOffset, n).toString('latin1');
  return /^# Disk DescriptorFile/m.test(text) || /^\s*createType\s*=/m.test(text);
}

function corrupt(file: string, structure: string, line: number, detail: string, offset?: number): PolyvisorError {
  return new PolyvisorError('ERR_CORRUPT', `line ${line}: ${detail}`, { file, structure, offset });
}

function unquote(v: string): string {
  const t = v.trim();
  return t.length >= 2 && t.startsWith('"') && t.endsWith('"') ? t.slice(1, -1) : t;
}

function parseCid(v: string, file: string, structure: string, line: number, key: string): number {
  const t = unquote(v);
  if (!/^[0-9a-fA-F]{1,8}$/.test(t)) throw corrupt(file, structure, line, `${key} "${t}" is not a 32-bit hexadecimal number`);
  return parseInt(t, 16) >>> 0;
}

/**
 * Parses descriptor text. `text` stops at the first NUL (embedded descriptors are padded
 * with zeroes). Throws ERR_CORRUPT naming the line for anything malformed.
 */
export function parseDescriptor(raw: Uint8Array, file: string, structure = 'descriptor', offset?: number): Descriptor {
  if (raw.length > MAX_DESCRIPTOR_BYTES) {
    throw new PolyvisorError('ERR_CORRUPT', `descriptor is ${raw.length} bytes, more than the ${MAX_DESCRIPTOR_BYTES}-byte limit`, { file, structure, offset });
  }
  const nul = raw.indexOf(0);
  const text = Buffer.from(raw.buffer, raw.byteOffset, nul < 0 ? raw.length : nul).toString('utf8');
  const d: Descriptor = { version: 1, cid: 0, parentCid: CID_NOPARENT, createType: '', extents: [], ddb: {}, other: {} };
  let sawCid = false;
  let sawType = false;
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const ln = i + 1;
    const line = lines[i]!.replace(/\r$/, '').trim();
    if (line === '' || line.startsWith('#')) continue;
    const ext = /^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)(.*)$/.exec(line);
    if (ext) {
      if (d.extents.length >= MAX_EXTENTS) throw corrupt(file, structure, ln, `more than ${MAX_EXTENTS} extents`, offset);
      const type = ext[3]!.toUpperCase();
      if (!EXTENT_TYPES.includes(type)) throw corrupt(file, structure, ln, `unknown extent type "${ext[3]}"`, offset);
      const sectors = Number(ext[2]);
      if (!Number.isSafeInteger(sectors) || sectors <= 0 || sectors > 2 ** 42) throw corrupt(file, structure, ln, `extent size ${ext[2]} sectors is out of range`, offset);
      const rest = ext[4]!.trim();
      const e: ExtentLine = { access: ext[1] as ExtentAccess, sectors, type: type as ExtentType, offset: 0, line: ln };
      if (type === 'ZERO') {
        if (rest !== '') throw corrupt(file, structure, ln, 'a ZERO extent names no file', offset);
      } else {
        // the file name is quoted (spec: "The filename is in double quotes"); a FLAT extent may add an offset
        const m = /^"([^"]+)"(?:\s+(\d+))?$/.exec(rest);
        if (!m) throw corrupt(file, structure, ln, `malformed extent line: expected a quoted file name${type === 'FLAT' ? ' and an offset' : ''}`, offset);
        e.file = m[1]!;
        if (m[2] !== undefined) {
          if (type !== 'FLAT' && type !== 'VMFS') throw corrupt(file, structure, ln, `only FLAT extents take an offset`, offset);
          e.offset = Number(m[2]);
          if (!Number.isSafeInteger(e.offset) || e.offset > 2 ** 42) throw corrupt(file, structure, ln, `extent offset ${m[2]} is out of range`, offset);
        } else if (type === 'FLAT') {
          throw corrupt(file, structure, ln, 'a FLAT extent needs an offset (in sectors) after its file name', offset);
        }
      }
      d.extents.push(e);
      continue;
    }
    const kv = /^([A-Za-z0-9_.]+)\s*=\s*(.*)$/.exec(line);
    if (!kv) throw corrupt(file, structure, ln, `unrecognised line "${line.slice(0, 60)}"`, offset);
    const key = kv[1]!;
    const value = kv[2]!;
    if (key === 'version') {
      const v = unquote(value);
      if (!/^\d+$/.test(v)) throw corrupt(file, structure, ln, `version "${v}" is not a number`, offset);
      d.version = Number(v);
    } else if (key === 'CID') {
      d.cid = parseCid(value, file, structure, ln, 'CID');
      sawCid = true;
    } else if (key === 'parentCID') {
      d.parentCid = parseCid(value, file, structure, ln, 'parentCID');
    } else if (key === 'createType') {
      d.createType = unquote(value);
      sawType = true;
    } else if (key === 'parentFileNameHint') {
      d.parentFileNameHint = unquote(value);
    } else if (key.startsWith('ddb.')) {
      d.ddb[key.slice(4)] = unquote(value);
    } else {
      d.other[key] = unquote(value);
    }
  }
  if (!sawType) throw new PolyvisorError('ERR_CORRUPT', 'no createType line', { file, structure, offset });
  if (!sawCid) d.cid = 0;
  if (d.version < 1 || d.version > 3) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `descriptor version ${d.version} is not supported (1 to 3)`, { file, structure, offset });
  }
  if (d.extents.length === 0) throw new PolyvisorError('ERR_CORRUPT', 'the descriptor lists no extents', { file, structure, offset });
  return d;
}

export interface DescriptorFields {
  cid: number;
  parentCid: number;
  createType: string;
  parentFileNameHint?: string;
  extents: Array<{ access: ExtentAccess; sectors: number; type: ExtentType; file?: string; offset?: number }>;
  /** ddb entries in the order to write them, keys without "ddb." */
  ddb: Array<[string, string]>;
  /** other header keys to keep (an existing descriptor rewritten for a new CID) */
  other?: Record<string, string>;
}

const hex8 = (n: number) => (n >>> 0).toString(16).padStart(8, '0');

/** Writes descriptor text in the layout VMware and qemu write it. */
export function formatDescriptor(f: DescriptorFields): string {
  const lines = ['# Disk DescriptorFile', 'version=1', `CID=${hex8(f.cid)}`, `parentCID=${hex8(f.parentCid)}`];
  for (const [k, v] of Object.entries(f.other ?? {})) lines.push(`${k}="${v}"`);
  lines.push(`createType="${f.createType}"`);
  if (f.parentFileNameHint !== undefined) lines.push(`parentFileNameHint="${f.parentFileNameHint}"`);
  lines.push('', '# Extent description');
  for (const e of f.extents) {
    let l = `${e.access} ${e.sectors} ${e.type}`;
    if (e.type !== 'ZERO') l += ` "${e.file}"`;
    if (e.type === 'FLAT') l += ` ${e.offset ?? 0}`;
    lines.push(l);
  }
  lines.push('', '# The Disk Data Base', '#DDB', '');
  for (const [k, v] of f.ddb) lines.push(`ddb.${k} = "${v}"`);
  return lines.join('\n') + '\n';
}
