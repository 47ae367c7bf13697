/**
 * A random-access tar index reader, shared by the OVA and XVA packages.
 *
 * Why reading is hand-written (and writing is not): a package's disks are served in place,
 * read through the disk engine at their byte range inside the tar (OpenOptions.window, the XVA
 * chunk reader), never extracted. That needs an index — every member's name, data offset and
 * size — built by walking the 512-byte headers and seeking over the data, which streaming tar
 * libraries (tar-stream, node-tar) do not offer: they hand out members one after the other as
 * streams, and reading member N means reading members 0..N-1. Writing is sequential by nature,
 * so packages write with the `tar-stream` library.
 *
 * Formats read (POSIX.1-1988 ustar, GNU tar, POSIX.1-2001 pax):
 * - header: name[100] mode[8] uid[8] gid[8] size[12] mtime[12] chksum[8] typeflag[1]
 *   linkname[100] magic[6] version[2] uname[32] gname[32] devmajor[8] devminor[8] prefix[155];
 * - ustar ("ustar\0" "00"): the name is prefix + "/" + name; GNU ("ustar  \0") uses the
 *   prefix area for other fields, so it is not read there;
 * - size: octal digits, or GNU base-256 (high bit of the first byte set) for members ≥ 8 GiB;
 * - chksum: the sum of the header's bytes with the chksum field taken as eight spaces (both the
 *   unsigned sum POSIX asks for and the signed sum old writers produced are accepted);
 * - 'x' pax extended header: "LEN key=value\n" records for the next member (path, size, linkpath);
 *   'g' pax global header: skipped; 'L' / 'K' GNU long name / long link name for the next member;
 * - the archive ends at a zero block (POSIX asks for two; a lone one at the end is accepted).
 *
 * Every name, size and count is hostile until checked: absolute names, ".." components and
 * duplicate names are refused (a package's member names end up as file names when extracted by
 * other tools, and an ambiguous index would serve the wrong bytes); sizes must end inside the
 * file; the number of members and the size of pax / long-name records are bounded.
 */
import { PolyvisorError, hex } from '../../errors.js';
import { ImageFile } from '../../disk/io.js';
import { crypto } from '../../util/builtins.js';

export const BLOCK = 512;
/** Members an index holds at most; an XVA of a 1 TiB disk has ~2M chunk+checksum members, so callers may raise it. */
export const DEFAULT_MAX_MEMBERS = 1_000_000;
/** A pax extended header or GNU long name larger than this is refused. */
const MAX_META_BYTES = 1 << 20;

export type TarMemberType = 'file' | 'directory' | 'symlink' | 'hardlink' | 'sparse' | 'other';

export interface TarMember {
  /** normalised name: no leading "./", no trailing "/", no empty or "." components */
  name: string;
  /** the name exactly as the archive records it (after pax / GNU long names) */
  rawName: string;
  type: TarMemberType;
  /** the header's type flag, as a character ("0", "5", "S"...) */
  typeFlag: string;
  /** byte offset of the member's data in the tar file */
  offset: number;
  /** bytes of data */
  size: number;
  /** byte offset of the member's own header (after any pax / GNU long-name headers) */
  headerOffset: number;
  /** for symlinks and hard links */
  linkName?: string;
}

export interface TarIndexOptions {
  /** bound on the number of members (default DEFAULT_MAX_MEMBERS) */
  maxMembers?: number;
  signal?: AbortSignal;
}

/** Quotes a member name for a message: hostile names may hold control characters or be huge. */
export function quoteName(name: string): string {
  const s = JSON.stringify(name.length > 200 ? name.slice(0, 200) + '…' : name);
  return s;
}

function cstring(buf: Buffer, start: number, len: number): string {
  const field = buf.subarray(start, start + len);
  const nul = field.indexOf(0);
  return field.subarray(0, nul < 0 ? len : nul).toString('utf8');
}

function parseOctal(buf: Buffer, start: number, len: number): number | undefined {
  const s = cstring(buf, start, len).replace(/[ \0]+$/, '').replace(/^ +/, '');
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) return undefined;
  const v = parseInt(s, 8);
  return Number.isSafeInteger(v) ? v : undefined;
}

/** The size field: octal, or GNU's base-256 big-endian with the top bit of the first byte set. */
function parseSize(buf: Buffer): number | undefined {
  const first = buf[124]!;
  if (first & 0x80) {
    if (first & 0x40) return undefined; // negative
    let v = first & 0x3f;
    for (let i = 125; i < 136; i++) {
      v = v * 256 + buf[i]!;
      if (v > Number.MAX_SAFE_INTEGER) return undefined;
    }
    return v;
  }
  return parseOctal(buf, 124, 12);
}

function headerChecksumOk(buf: Buffer): boolean {
  const stored = parseOctal(buf, 148, 8);
  if (stored === undefined) return false;
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : buf[i]!;
    unsigned += b;
    signed += b >= 0x80 ? b - 256 : b;
  }
  return stored === unsigned || stored === signed;
}

function isZeroBlock(buf: Buffer): boolean {
  for (let i = 0; i < BLOCK; i++) if (buf[i] !== 0) return false;
  return true;
}

/** Parses pax "LEN key=value\n" records. */
function parsePax(data: Buffer, ctx: { file: string; offset: number }): Map<string, string> {
  const out = new Map<string, string>();
  let pos = 0;
  while (pos < data.length) {
    if (data[pos] === 0) break; // some writers pad with NULs
    const sp = data.indexOf(0x20, pos);
    const lenText = sp < 0 ? '' : data.subarray(pos, sp).toString('latin1');
    const len = /^\d{1,9}$/.test(lenText) ? Number(lenText) : NaN;
    if (!Number.isFinite(len) || len <= sp - pos + 1 || pos + len > data.length || data[pos + len - 1] !== 0x0a) {
      throw new PolyvisorError('ERR_CORRUPT', `malformed pax extended header record at byte ${pos}`, { file: ctx.file, structure: 'pax extended header', offset: ctx.offset });
    }
    const rec = data.subarray(sp + 1, pos + len - 1).toString('utf8');
    const eq = rec.indexOf('=');
    if (eq <= 0) throw new PolyvisorError('ERR_CORRUPT', `pax record without "key=" at byte ${pos}`, { file: ctx.file, structure: 'pax extended header', offset: ctx.offset });
    out.set(rec.slice(0, eq), rec.slice(eq + 1));
    pos += len;
  }
  return out;
}

/**
 * Normalises a member name, refusing names that would land outside the folder the archive is
 * extracted to: absolute names (including "C:" drive names), and ".." components.
 */
function normaliseName(raw: string, ctx: { file: string; offset: number }): string {
  const fail = (why: string) => new PolyvisorError('ERR_CORRUPT', `member ${quoteName(raw)}: ${why}`, { file: ctx.file, structure: 'tar header', offset: ctx.offset });
  if (raw === '') throw fail('empty name');
  if (raw.startsWith('/') || /^[A-Za-z]:/.test(raw) || raw.startsWith('\\')) throw fail('absolute name refused');
  const parts = raw.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.some((p) => p === '..')) throw fail('name with a ".." component refused');
  if (parts.length === 0) return '.';
  return parts.join('/');
}

function memberType(flag: string): TarMemberType {
  switch (flag) {
    case '0':
    case '\0':
    case '7': // contiguous file: a regular file everywhere but on one 1980s system
      return 'file';
    case '1':
      return 'hardlink';
    case '2':
      return 'symlink';
    case '5':
      return 'directory';
    case 'S':
      return 'sparse';
    default:
      return 'other';
  }
}

/**
 * The index of a tar file, with the file held open for reading members in place.
 */
export class TarArchive {
  readonly path: string;
  readonly members: readonly TarMember[];
  readonly file: ImageFile;
  #byName: Map<string, TarMember>;

  private constructor(path: string, file: ImageFile, members: TarMember[]) {
    this.path = path;
    this.file = file;
    this.members = members;
    this.#byName = new Map(members.map((m) => [m.name, m]));
  }

  /** Opens and indexes a tar file. The caller closes it. */
  static async open(path: string, opts: TarIndexOptions = {}): Promise<TarArchive> {
    const file = await ImageFile.open(path, false);
    try {
      const members = await indexTar(file, opts);
      return new TarArchive(path, file, members);
    } catch (e) {
      await file.close();
      throw e;
    }
  }

  /** The file size of the archive. */
  get size(): number {
    return this.file.size;
  }

  get(name: string): TarMember | undefined {
    return this.#byName.get(name);
  }

  /**
   * The regular-file member `name`: ERR_NOT_FOUND when absent, ERR_CORRUPT when it is a
   * directory, link or device, ERR_UNSUPPORTED when it is a GNU sparse file.
   */
  expectFile(name: string, what = 'member'): TarMember {
    const m = this.#byName.get(name);
    if (!m) throw new PolyvisorError('ERR_NOT_FOUND', `${what} ${quoteName(name)} is not in the archive`, { file: this.path });
    assertRegular(m, this.path);
    return m;
  }

  /** Reads a whole member into memory, refusing members larger than `maxBytes`. */
  async readMember(m: TarMember, maxBytes: number): Promise<Buffer> {
    return readMember(this.file, m, maxBytes);
  }

  /** Reads `buf.length` bytes of member data starting `pos` bytes into the member. */
  async readAt(m: TarMember, buf: Uint8Array, pos: number): Promise<void> {
    if (!Number.isSafeInteger(pos) || pos < 0 || pos + buf.length > m.size) {
      throw new PolyvisorError('ERR_RANGE', `read of ${buf.length} bytes at ${pos} lies outside member ${quoteName(m.name)} of ${m.size} bytes`, { file: this.path, offset: m.offset });
    }
    await this.file.readInto(buf, m.offset + pos);
  }

  /** Hex digest of a member's data, read in 1 MiB pieces. */
  async hashMember(m: TarMember, algorithm: 'sha1' | 'sha256', signal?: AbortSignal): Promise<string> {
    return hashRange(this.file, m.offset, m.size, algorithm, signal);
  }

  async close(): Promise<void> {
    await this.file.close();
  }
}

/** Refuses a member that is not a regular file where one is expected. */
export function assertRegular(m: TarMember, file: string): void {
  if (m.type === 'file') return;
  if (m.type === 'sparse') {
    throw new PolyvisorError('ERR_UNSUPPORTED', `member ${quoteName(m.name)} is a GNU sparse file; re-create the archive without --sparse`, { file, structure: 'tar header', offset: m.headerOffset });
  }
  throw new PolyvisorError('ERR_CORRUPT', `member ${quoteName(m.name)} is a ${m.type === 'other' ? `type '${m.typeFlag}' member` : m.type} where a regular file is expected`, { file, structure: 'tar header', offset: m.headerOffset });
}

/**
 * Walks the headers of the tar file `file` and returns its members in archive order, reading
 * no member data (only pax and GNU long-name records, bounded).
 */
export async function indexTar(file: ImageFile, opts: TarIndexOptions = {}): Promise<TarMember[]> {
  const maxMembers = opts.maxMembers ?? DEFAULT_MAX_MEMBERS;
  const path = file.path;
  const size = file.size;
  const members: TarMember[] = [];
  const seen = new Set<string>();
  const header = Buffer.alloc(BLOCK);
  let pos = 0;
  let pax: Map<string, string> | undefined;
  let longName: string | undefined;
  let longLink: string | undefined;
  let sawEnd = false;

  while (pos + BLOCK <= size) {
    if (opts.signal?.aborted) throw new PolyvisorError('ERR_ABORTED', 'indexing cancelled', { file: path });
    await file.readInto(header, pos);
    if (isZeroBlock(header)) {
      sawEnd = true;
      break;
    }
    const headerOffset = pos;
    const nameField = cstring(header, 0, 100);
    if (!headerChecksumOk(header)) {
      const magic = header.subarray(257, 262).toString('latin1');
      if (pos === 0 && magic !== 'ustar') {
        throw new PolyvisorError('ERR_CORRUPT', 'not a tar archive (no valid header at the start)', { file: path, structure: 'tar header', offset: 0 });
      }
      throw new PolyvisorError('ERR_CHECKSUM', `header checksum mismatch (member ${quoteName(nameField)})`, { file: path, structure: 'tar header', offset: headerOffset });
    }
    const flag = String.fromCharCode(header[156]!);
    const dataSize = parseSize(header);
    if (dataSize === undefined) {
      throw new PolyvisorError('ERR_CORRUPT', `member ${quoteName(nameField)}: size field is not a number`, { file: path, structure: 'tar header', offset: headerOffset });
    }
    const dataOffset = pos + BLOCK;
    const padded = Math.ceil(dataSize / BLOCK) * BLOCK;
    const checkFits = (name: string, sz: number) => {
      if (dataOffset + sz > size) {
        throw new PolyvisorError('ERR_TRUNCATED', `member ${quoteName(name)} of ${sz} bytes at ${hex(dataOffset)} runs past the end of the file (${hex(size)})`, { file: path, structure: 'tar header', offset: headerOffset });
      }
    };

    // Headers that describe the next member.
    if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
      const label = flag === 'x' || flag === 'g' ? 'pax extended header' : 'GNU long name';
      if (dataSize > MAX_META_BYTES) {
        throw new PolyvisorError('ERR_UNSUPPORTED', `${label} of ${dataSize} bytes is over the ${MAX_META_BYTES}-byte limit`, { file: path, structure: label, offset: headerOffset });
      }
      checkFits(nameField, dataSize);
      const data = await file.readStructure(dataOffset, dataSize, label);
      if (flag === 'x') pax = parsePax(data, { file: path, offset: headerOffset });
      else if (flag === 'L') longName = cstring(data, 0, data.length);
      else if (flag === 'K') longLink = cstring(data, 0, data.length);
      // 'g': global records (comments, charset) change nothing we index
      pos = dataOffset + padded;
      continue;
    }

    let memberSize = dataSize;
    const paxSize = pax?.get('size');
    if (paxSize !== undefined) {
      if (!/^\d{1,16}$/.test(paxSize) || !Number.isSafeInteger(Number(paxSize))) {
        throw new PolyvisorError('ERR_CORRUPT', `member ${quoteName(nameField)}: pax size "${paxSize.slice(0, 40)}" is not a number`, { file: path, structure: 'pax extended header', offset: headerOffset });
      }
      memberSize = Number(paxSize);
    }
    const magic = header.subarray(257, 263).toString('latin1');
    let rawName = nameField;
    if (magic === 'ustar\0') {
      const prefix = cstring(header, 345, 155);
      if (prefix) rawName = `${prefix}/${nameField}`;
    }
    if (longName !== undefined) rawName = longName;
    if (pax?.has('path')) rawName = pax.get('path')!;
    let linkName: string | undefined = cstring(header, 157, 100) || undefined;
    if (longLink !== undefined) linkName = longLink;
    if (pax?.has('linkpath')) linkName = pax.get('linkpath');
    let type = memberType(flag);
    // POSIX 1.0 sparse files are type '0' with GNU.sparse.* records: their data is a map, not the file
    if (pax && [...pax.keys()].some((k) => k.startsWith('GNU.sparse.'))) type = 'sparse';
    const hasData = type === 'file' || type === 'sparse' || type === 'other';
    const storedSize = hasData || type === 'directory' ? memberSize : 0;
    pax = undefined;
    longName = undefined;
    longLink = undefined;

    const name = normaliseName(rawName, { file: path, offset: headerOffset });
    checkFits(rawName, storedSize);
    if (seen.has(name)) {
      throw new PolyvisorError('ERR_CORRUPT', `duplicate member name ${quoteName(name)}`, { file: path, structure: 'tar header', offset: headerOffset });
    }
    if (members.length >= maxMembers) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `archive has more than ${maxMembers} members`, { file: path, structure: 'tar header', offset: headerOffset });
    }
    seen.add(name);
    members.push({ name, rawName, type, typeFlag: flag === '\0' ? '0' : flag, offset: dataOffset, size: storedSize, headerOffset, ...(linkName && (type === 'symlink' || type === 'hardlink') ? { linkName } : {}) });
    pos = dataOffset + Math.ceil(storedSize / BLOCK) * BLOCK;
  }
  if (!sawEnd) {
    if (pos + BLOCK > size && pos < size) {
      throw new PolyvisorError('ERR_TRUNCATED', `file ends inside a tar header (${size - pos} of 512 bytes)`, { file: path, structure: 'tar header', offset: pos });
    }
    if (pax || longName !== undefined || longLink !== undefined) {
      throw new PolyvisorError('ERR_TRUNCATED', 'archive ends after an extended header, before the member it describes', { file: path, offset: pos });
    }
    if (members.length === 0) {
      throw new PolyvisorError('ERR_CORRUPT', 'not a tar archive (empty file)', { file: path, offset: 0 });
    }
    throw new PolyvisorError('ERR_TRUNCATED', 'archive ends without its end-of-archive zero blocks (truncated?)', { file: path, structure: 'end of archive', offset: pos });
  }
  return members;
}

/** Reads a whole member into memory, refusing members larger than `maxBytes`. */
export async function readMember(file: ImageFile, m: TarMember, maxBytes: number): Promise<Buffer> {
  assertRegular(m, file.path);
  if (m.size > maxBytes) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `member ${quoteName(m.name)} of ${m.size} bytes is over the ${maxBytes}-byte limit for reading into memory`, { file: file.path, structure: 'tar header', offset: m.headerOffset });
  }
  return file.readStructure(m.offset, m.size, `member ${quoteName(m.name)}`);
}

/** Hex digest of `length` bytes of `file` at `offset`, read in 1 MiB pieces. */
export async function hashRange(file: ImageFile, offset: number, length: number, algorithm: 'sha1' | 'sha256', signal?: AbortSignal): Promise<string> {
  if (offset + length > file.size) {
    throw new PolyvisorError('ERR_TRUNCATED', `${length} bytes at ${hex(offset)} run past the end of the file`, { file: file.path, offset });
  }
  const h = crypto().createHash(algorithm);
  const piece = 1 << 20;
  const buf = Buffer.allocUnsafe(Math.min(piece, Math.max(1, length)));
  for (let done = 0; done < length; done += piece) {
    if (signal?.aborted) throw new PolyvisorError('ERR_ABORTED', 'hashing cancelled', { file: file.path });
    const n = Math.min(piece, length - done);
    const b = buf.subarray(0, n);
    await file.readInto(b, offset + done);
    h.update(b);
  }
  return h.digest('hex');
}
