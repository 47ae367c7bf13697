/**
 * FAT directory entries: the 32-byte short (8.3) entry, VFAT long-name entries, and the
 * short names Polyvisor generates for new files.
 *
 * Sources: fatgen103 section 6 ("FAT Directory Structure", with 6.1 file/directory name,
 * 6.3 date and time) and section 7 ("FAT Long Directory Entries": the LDIR layout, the
 * checksum of the short name in every long entry, and "Basis-Name Generation" with numeric
 * tails). Names are matched case-insensitively as Windows and Linux's vfat do, against the
 * long name and the short name alike.
 */
import { PolyvisorError } from '../errors.js';
import { decodeOem } from './fat-bpb.js';

export const ENTRY = 32;

/** DIR_Attr bits (fatgen103 section 6) */
export const ATTR = {
  readOnly: 0x01,
  hidden: 0x02,
  system: 0x04,
  volumeId: 0x08,
  directory: 0x10,
  archive: 0x20,
  longName: 0x0f,
} as const;

/** DIR_NTRes bits Windows NT and Linux use for all-lowercase base names and extensions */
const NTRES_LOWER_BASE = 0x08;
const NTRES_LOWER_EXT = 0x10;
/** the last long entry of a set has this bit in LDIR_Ord */
const LAST_LONG_ENTRY = 0x40;
/** UTF-16 offsets of the 13 characters of a long entry: LDIR_Name1 (5), LDIR_Name2 (6), LDIR_Name3 (2) */
const LFN_CHARS = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
const MAX_LONG_NAME = 255;

export interface DirEntry {
  /** the long name when a valid long-name set precedes the short entry, else the short name */
  name: string;
  /** "README.TXT" as stored (case flags not applied) */
  shortName: string;
  /** the 11 stored bytes of the short name */
  rawShort: Buffer;
  attr: number;
  firstCluster: number;
  size: number;
  /** seconds since the epoch (DIR_WrtDate/DIR_WrtTime, taken as UTC) */
  mtime: number;
  /** index of the short entry in the directory */
  slot: number;
  /** index of the first entry of the set (the first long entry, or the short entry) */
  firstSlot: number;
}

/** The short-name checksum every long entry carries (fatgen103 section 7.2, ChkSum). */
export function shortNameChecksum(name11: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < 11; i++) sum = ((sum & 1 ? 0x80 : 0) + (sum >> 1) + name11[i]!) & 0xff;
  return sum;
}

/** fatgen103 section 6.3: DIR_WrtDate and DIR_WrtTime */
function fatTime(date: number, time: number): number {
  const day = date & 0x1f;
  const month = (date >> 5) & 0x0f;
  const year = 1980 + (date >> 9);
  if (day === 0 || month === 0 || month > 12) return 0;
  return Date.UTC(year, month - 1, day, time >> 11, (time >> 5) & 0x3f, (time & 0x1f) * 2) / 1000;
}

export function encodeFatTime(seconds: number): { date: number; time: number } {
  const d = new Date(seconds * 1000);
  const year = Math.min(Math.max(d.getUTCFullYear(), 1980), 2107);
  return {
    date: ((year - 1980) << 9) | ((d.getUTCMonth() + 1) << 5) | d.getUTCDate(),
    time: (d.getUTCHours() << 11) | (d.getUTCMinutes() << 5) | Math.floor(d.getUTCSeconds() / 2),
  };
}

function decodeShort(raw: Buffer, ntres: number): string {
  const b = Buffer.from(raw);
  // fatgen103 6.1: a first byte of 0x05 stands for 0xE5, which would otherwise mean "deleted"
  if (b[0] === 0x05) b[0] = 0xe5;
  let base = decodeOem(b.subarray(0, 8)).trimEnd();
  let ext = decodeOem(b.subarray(8, 11)).trimEnd();
  if (ntres & NTRES_LOWER_BASE) base = base.toLowerCase();
  if (ntres & NTRES_LOWER_EXT) ext = ext.toLowerCase();
  return ext ? `${base}.${ext}` : base;
}

/**
 * Decodes the entries of one directory's bytes. `onLabel` receives the volume label entry
 * (root directory only). Stops at the first entry whose first byte is 0 (end of directory).
 */
export function decodeDirectory(buf: Buffer, onLabel?: (label: string) => void): DirEntry[] {
  const out: DirEntry[] = [];
  let parts: string[] = [];
  let expect = 0;
  let checksum = -1;
  let setStart = -1;
  const reset = () => {
    parts = [];
    expect = 0;
    checksum = -1;
    setStart = -1;
  };
  for (let slot = 0; slot * ENTRY + ENTRY <= buf.length; slot++) {
    const e = buf.subarray(slot * ENTRY, slot * ENTRY + ENTRY);
    const first = e[0]!;
    if (first === 0x00) break;
    if (first === 0xe5) {
      reset();
      continue;
    }
    const attr = e[11]!;
    if ((attr & 0x3f) === ATTR.longName) {
      const ord = first & 0x3f;
      if (first & LAST_LONG_ENTRY) {
        reset();
        if (ord === 0 || ord > 20) continue;
        expect = ord;
        checksum = e[13]!;
        setStart = slot;
        parts = new Array<string>(ord).fill('');
      } else if (ord !== expect || e[13] !== checksum) {
        reset();
        continue;
      }
      let s = '';
      for (const o of LFN_CHARS) {
        const ch = e.readUInt16LE(o);
        if (ch === 0x0000) break;
        s += String.fromCharCode(ch);
      }
      parts[ord - 1] = s;
      expect = ord - 1;
      continue;
    }
    const rawShort = Buffer.from(e.subarray(0, 11));
    if (attr & ATTR.volumeId && !(attr & ATTR.directory)) {
      onLabel?.(decodeOem(rawShort).trimEnd());
      reset();
      continue;
    }
    const short = decodeShort(rawShort, e[12]!);
    let name = short;
    let firstSlot = slot;
    if (setStart >= 0 && expect === 0 && checksum === shortNameChecksum(rawShort)) {
      name = parts.join('');
      firstSlot = setStart;
    }
    reset();
    out.push({
      name,
      shortName: decodeShort(rawShort, 0),
      rawShort,
      attr,
      firstCluster: (e.readUInt16LE(20) << 16) | e.readUInt16LE(26),
      size: e.readUInt32LE(28),
      mtime: fatTime(e.readUInt16LE(24), e.readUInt16LE(22)),
      slot,
      firstSlot,
    });
  }
  return out;
}

/** The same name for FAT's purposes: case-insensitive, as Windows and Linux's vfat compare. */
export function sameName(a: string, b: string): boolean {
  return a.length === b.length && a.toUpperCase() === b.toUpperCase();
}

/** Characters a long name may not hold (fatgen103 7: plus control characters) */
const LONG_INVALID = /[\u0000-\u001f"*/:<>?\\|]/;
/** Characters allowed in a short name besides A-Z and 0-9 (fatgen103 6.1) */
const SHORT_EXTRA = "$%'-_@~`!(){}^#&";

/** Why `name` cannot name a file on FAT, or undefined when it can. */
export function invalidLongName(name: string): string | undefined {
  if (name === '' || name === '.' || name === '..') return 'is not a file name';
  if (name.length > MAX_LONG_NAME) return `is longer than ${MAX_LONG_NAME} characters`;
  if (LONG_INVALID.test(name)) return 'holds a character FAT does not allow (" * / : < > ? \\ | or a control character)';
  if (/[. ]$/.test(name)) return 'ends with a period or a space, which Windows strips';
  return undefined;
}

function shortChar(c: string): boolean {
  return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || SHORT_EXTRA.includes(c);
}

export interface ShortNameChoice {
  /** the 11 bytes of the short entry's name */
  raw: Buffer;
  /** DIR_NTRes case flags */
  ntres: number;
  /** the name needs long-name entries */
  needsLong: boolean;
}

function raw11(base: string, ext: string): Buffer {
  return Buffer.from(base.padEnd(8, ' ') + ext.padEnd(3, ' '), 'latin1');
}

/**
 * The short name for a new entry named `name` in a directory whose short names are `taken`
 * (11-byte strings, latin1). A name that is already a valid 8.3 name in one case per part is
 * stored as is (lowercase parts by DIR_NTRes, as Windows NT does), without long entries;
 * otherwise the basis name of fatgen103 7.4 gets the first free numeric tail "~N".
 */
export function chooseShortName(name: string, taken: Set<string>): ShortNameChoice {
  const dot = name.lastIndexOf('.');
  const base0 = dot > 0 ? name.slice(0, dot) : name;
  const ext0 = dot > 0 ? name.slice(dot + 1) : '';
  const plain = (s: string) => [...s].every((c) => shortChar(c.toUpperCase()) && c.charCodeAt(0) < 0x80);
  const oneCase = (s: string) => s === s.toUpperCase() || s === s.toLowerCase();
  if (base0.length >= 1 && base0.length <= 8 && ext0.length <= 3 && plain(base0) && plain(ext0) && oneCase(base0) && oneCase(ext0) && !(dot > 0 && ext0 === '')) {
    const raw = raw11(base0.toUpperCase(), ext0.toUpperCase());
    if (!taken.has(raw.toString('latin1'))) {
      const ntres = (base0 !== base0.toUpperCase() ? NTRES_LOWER_BASE : 0) | (ext0 !== ext0.toUpperCase() ? NTRES_LOWER_EXT : 0);
      return { raw, ntres, needsLong: false };
    }
  }
  // basis name: uppercase, drop spaces and leading periods, replace what a short name cannot hold
  const conv = (s: string) =>
    [...s.toUpperCase()]
      .filter((c) => c !== ' ' && c !== '.')
      .map((c) => (shortChar(c) && c.charCodeAt(0) < 0x80 ? c : '_'))
      .join('');
  const stripped = name.replace(/^\.+/, '');
  const d = stripped.lastIndexOf('.');
  const base = conv(d > 0 ? stripped.slice(0, d) : stripped) || '_';
  const ext = conv(d > 0 ? stripped.slice(d + 1) : '').slice(0, 3);
  for (let n = 1; n < 1000000; n++) {
    const tail = `~${n}`;
    const raw = raw11(base.slice(0, 8 - tail.length) + tail, ext);
    if (!taken.has(raw.toString('latin1'))) return { raw, ntres: 0, needsLong: true };
  }
  throw new PolyvisorError('ERR_INTERNAL', `no free numeric tail for "${name}" (a directory holds at most 65536 entries)`);
}

/** The 32-byte short entry (fatgen103 section 6). */
export function encodeShortEntry(raw: Buffer, ntres: number, attr: number, firstCluster: number, size: number, seconds: number): Buffer {
  const e = Buffer.alloc(ENTRY);
  raw.copy(e, 0, 0, 11);
  if (e[0] === 0xe5) e[0] = 0x05;
  e[11] = attr;
  e[12] = ntres;
  const { date, time } = encodeFatTime(seconds);
  e.writeUInt16LE(time, 14); // DIR_CrtTime
  e.writeUInt16LE(date, 16); // DIR_CrtDate
  e.writeUInt16LE(date, 18); // DIR_LstAccDate
  e.writeUInt16LE(firstCluster >>> 16, 20); // DIR_FstClusHI
  e.writeUInt16LE(time, 22); // DIR_WrtTime
  e.writeUInt16LE(date, 24); // DIR_WrtDate
  e.writeUInt16LE(firstCluster & 0xffff, 26); // DIR_FstClusLO
  e.writeUInt32LE(size, 28);
  return e;
}

/** The long entries for `name`, in on-disk order (last part first), for short name `raw`. */
export function encodeLongEntries(name: string, raw: Buffer): Buffer[] {
  const sum = shortNameChecksum(raw);
  const units = name.length;
  const count = Math.ceil(units / 13);
  const out: Buffer[] = [];
  for (let ord = count; ord >= 1; ord--) {
    const e = Buffer.alloc(ENTRY);
    e[0] = ord | (ord === count ? LAST_LONG_ENTRY : 0);
    e[11] = ATTR.longName;
    e[13] = sum;
    for (let k = 0; k < 13; k++) {
      const i = (ord - 1) * 13 + k;
      // after the name: one 0x0000 terminator, then 0xFFFF padding (fatgen103 7.1)
      const ch = i < units ? name.charCodeAt(i) : i === units ? 0x0000 : 0xffff;
      e.writeUInt16LE(ch, LFN_CHARS[k]!);
    }
    out.push(e);
  }
  return out;
}
