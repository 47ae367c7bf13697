/**
 * Initramfs images: read (segments, compression, cpio "newc" entries, generator, kernel
 * modules carried) and write (an uncompressed newc archive to add as a segment).
 *
 * Exported API (used by inspection and adaptation; names are kept stable):
 *   readInitramfs(data, { name, maxBytes })  -> Initramfs: segments, files by path, generator,
 *                                                compression, modules, kernelVersions
 *   parseCpio(stream, { name, offset })       -> CpioEntry[] of one decompressed stream
 *   writeCpio(entries, { padTo })             -> Buffer: a newc archive ending in TRAILER!!!
 *   appendSegment(image, segment)             -> image + zero padding to 4 bytes + segment
 *   detectCompression(bytes)                  -> Compression | null
 *
 * Layout, as Linux unpacks it (init/initramfs.c, unpack_to_rootfs; Documentation/
 * driver-api/early-userspace/buffer-format.rst): the image is a sequence of segments. Zero
 * bytes between segments are skipped; a segment starting with "0707" at a 4-byte aligned
 * offset is an uncompressed cpio archive; anything else must start with the magic of a
 * compressor the kernel knows (gzip, bzip2, lzma, xz, lzo, lz4, zstd), whose output is itself a
 * stream of cpio archives separated by zero padding. Debian's mkinitramfs and dracut write an
 * uncompressed early-microcode archive first, then the compressed main one; later entries
 * replace earlier ones of the same path, as the kernel's unpacking replaces them.
 *
 * cpio "newc" (070701) and "crc" (070702), as GNU cpio and the kernel define them: a 110-byte
 * header of "0707xx" and thirteen 8-digit hex fields (ino, mode, uid, gid, nlink, mtime,
 * filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check), the NUL-terminated
 * name, padding to 4 bytes, the data, padding to 4 bytes; the archive ends with an entry named
 * "TRAILER!!!". In 070702 archives `check` is the 32-bit sum of a regular file's data bytes,
 * checked here as the kernel checks it.
 *
 * Everything is hostile: header fields must be 8 hex digits, names at most PATH_MAX and
 * NUL-terminated where namesize says, data within the stream, at most MAX_ENTRIES entries, and
 * an archive without its trailer is truncated. Decompression happens in this process for gzip
 * (node:zlib) and with the host's own tools for the rest (zstd, xz and lzma from xz-utils, lz4,
 * bzip2), fed on stdin: nothing from the guest is ever run. The total decompressed size is
 * capped (1 GiB by default, `maxBytes`): a decompression bomb stops there with ERR_UNSUPPORTED.
 *
 * Where a compressed stream ends: gzip members end where zlib says (the trailer's CRC-32 and
 * size are checked); zstd frames and lz4 frames are walked block by block (RFC 8878 section 3.1,
 * the LZ4 Frame Format 1.6.x); lz4 legacy chunks are walked until zero padding or the end.
 * xz, lzma and bzip2 streams are taken to run to the end of the image, which is where
 * mkinitramfs and dracut put the compressed archive (xz and bzip2 ignore zero padding after it).
 * LZO images (lzop) are refused with ERR_UNSUPPORTED.
 */
import { spawn } from 'node:child_process';
import { crc32, inflateRawSync } from 'node:zlib';
import { PolyvisorError } from '../errors.js';
import { moduleName } from './modules.js';

export type Compression = 'none' | 'gzip' | 'zstd' | 'xz' | 'lzma' | 'lz4' | 'lz4-legacy' | 'bzip2' | 'lzo';

export type CpioFileType = 'file' | 'directory' | 'symlink' | 'other';

export interface CpioEntry {
  /** the name as stored, without its NUL: "usr/lib/modules", ".", "kernel/x86/microcode/GenuineIntel.bin" */
  name: string;
  /** where it lands in the unpacked tree: "/usr/lib/modules" ("./" and leading "/" dropped, "/" prefixed) */
  path: string;
  type: CpioFileType;
  /** st_mode: type and permission bits */
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  mtime: number;
  ino: number;
  devMajor: number;
  devMinor: number;
  rdevMajor: number;
  rdevMinor: number;
  size: number;
  /**
   * The file's bytes (a view into the decompressed stream, not a copy); a symlink's target;
   * for a hard link stored without data, the data of the link that carries it.
   */
  data: Buffer;
  /** a symlink's target */
  target?: string;
  /** offset of the header in its segment's decompressed stream */
  offset: number;
}

export interface InitramfsSegment {
  /** byte offset of the segment in the image */
  offset: number;
  /** bytes it takes in the image (compressed) */
  length: number;
  compression: Compression;
  /** bytes after decompression */
  size: number;
  entries: CpioEntry[];
}

export type InitramfsGenerator = 'initramfs-tools' | 'dracut' | 'mkinitcpio' | 'unknown';

export interface InitramfsModule {
  /** modprobe's name: "xen_blkfront" */
  name: string;
  /** "/usr/lib/modules/6.1.0-50-amd64/kernel/drivers/block/xen-blkfront.ko" */
  path: string;
  kernelVersion: string;
}

export interface Initramfs {
  segments: InitramfsSegment[];
  /** every entry by path; a later segment's entry replaces an earlier one's */
  files: Map<string, CpioEntry>;
  generator: InitramfsGenerator;
  /** the compression of the main archive (the segment holding /init, else the last one) */
  compression: Compression;
  modules: InitramfsModule[];
  /** versions under lib/modules/ */
  kernelVersions: string[];
  /** an early-microcode archive (kernel/x86/microcode/*) is present */
  microcode: boolean;
}

export interface ReadInitramfsOptions {
  /** names the image in messages (its path in the guest, or a file name) */
  name?: string;
  /** the most bytes all segments may decompress to (default 1 GiB) */
  maxBytes?: number;
}

/** The decompressed size allowed by default: Debian's images are 20 to 80 MiB. */
export const DEFAULT_MAX_INITRAMFS = 1 << 30;
const HEADER = 110;
/** PATH_MAX: the kernel skips longer names; we refuse them */
const PATH_MAX = 4096;
const MAX_ENTRIES = 1_000_000;
const MAX_SEGMENTS = 1024;
const TRAILER = 'TRAILER!!!';
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const S_IFIFO = 0o010000;
const S_IFSOCK = 0o140000;
const FIELDS = ['ino', 'mode', 'uid', 'gid', 'nlink', 'mtime', 'filesize', 'devmajor', 'devminor', 'rdevmajor', 'rdevminor', 'namesize', 'check'] as const;

const align4 = (n: number) => (n + 3) & ~3;

function corrupt(name: string, structure: string, offset: number, detail: string): PolyvisorError {
  return new PolyvisorError('ERR_CORRUPT', detail, { file: name, structure, offset });
}

function typeOfMode(mode: number): CpioFileType {
  switch (mode & S_IFMT) {
    case S_IFREG: return 'file';
    case S_IFDIR: return 'directory';
    case S_IFLNK: return 'symlink';
    default: return 'other';
  }
}

/** "./usr/lib" -> "/usr/lib"; "." -> "/"; ".." at the root stays there, as in the kernel's unpacking into rootfs */
export function cpioPath(name: string): string {
  const parts: string[] = [];
  for (const p of name.split('/')) {
    if (p === '..') parts.pop();
    else if (p !== '' && p !== '.') parts.push(p);
  }
  return '/' + parts.join('/');
}

const MODULE_PATH = /^\/(?:usr\/)?lib\/modules\/([^/]+)\/.+\.ko(?:\.(?:xz|zst|gz))?$/;

// ---------------------------------------------------------------------------------------
// cpio newc

function hexField(buf: Buffer, at: number, name: string, file: string, structure: string): number {
  let v = 0;
  for (let i = 0; i < 8; i++) {
    const c = buf[at + i]!;
    const d = c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x41 && c <= 0x46 ? c - 0x37 : c >= 0x61 && c <= 0x66 ? c - 0x57 : -1;
    if (d < 0) throw corrupt(file, structure, at, `the ${name} field is not 8 hex digits ("${buf.toString('latin1', at, at + 8)}")`);
    v = v * 16 + d;
  }
  return v;
}

export interface ParseCpioOptions {
  /** names the stream in messages */
  name?: string;
  /** added to offsets in messages: where the stream starts in the image */
  offset?: number;
}

/**
 * The entries of one stream of cpio newc archives (a decompressed segment): archives may
 * follow each other, separated by zero padding, each starting at a 4-byte boundary.
 */
export function parseCpio(stream: Buffer, options: ParseCpioOptions = {}): CpioEntry[] {
  return parseArchives(stream, options.name ?? 'cpio archive', options.offset ?? 0, false).entries;
}

/**
 * Parses archives from `stream`. With `one`, stops after the first archive's trailer and
 * says where it ended (an uncompressed segment of an image, after which other segments follow).
 */
function parseArchives(stream: Buffer, file: string, base: number, one: boolean): { entries: CpioEntry[]; end: number } {
  const entries: CpioEntry[] = [];
  let p = 0;
  let archives = 0;
  for (;;) {
    // zero padding between archives, as the kernel's do_reset skips it
    while (p < stream.length && stream[p] === 0) p++;
    if (p >= stream.length) break;
    if (archives > 0 && one) break;
    if ((p & 3) !== 0) throw corrupt(file, 'cpio archive', base + p, 'an archive starts at an offset that is not a multiple of 4');
    p = parseArchive(stream, p, file, base, entries);
    archives++;
    if (one) break;
  }
  if (archives === 0) throw corrupt(file, 'cpio archive', base, 'no cpio archive (only zero bytes)');
  linkHardLinks(entries);
  return { entries, end: p };
}

/** One archive from its first header to the end of its trailer; returns the offset after it. */
function parseArchive(s: Buffer, start: number, file: string, base: number, out: CpioEntry[]): number {
  let p = start;
  for (;;) {
    const structure = `cpio header ${out.length + 1}`;
    const at = base + p;
    if (p + HEADER > s.length) {
      throw new PolyvisorError('ERR_TRUNCATED', p === s.length || s.subarray(p).every((b) => b === 0) ? `the archive ends without its ${TRAILER} entry` : `a ${HEADER}-byte header starts ${s.length - p} bytes before the end`, { file, structure, offset: at });
    }
    const magic = s.toString('latin1', p, p + 6);
    if (magic !== '070701' && magic !== '070702') {
      if (magic === '070707' || s.readUInt16LE(p) === 0o070707) throw new PolyvisorError('ERR_UNSUPPORTED', 'an old-format (odc/binary) cpio archive: Linux and Polyvisor read "newc" (070701/070702) only', { file, structure, offset: at });
      throw corrupt(file, structure, at, `bad magic "${s.toString('latin1', p, p + 6).replace(/[^\x20-\x7e]/g, '?')}" (expected 070701 or 070702)`);
    }
    const f: Record<(typeof FIELDS)[number], number> = {} as never;
    FIELDS.forEach((name, i) => (f[name] = hexField(s, p + 6 + i * 8, name, file, structure)));
    const { namesize, filesize } = f;
    if (namesize < 1 || namesize > PATH_MAX) throw corrupt(file, structure, at, `namesize ${namesize} is outside 1..${PATH_MAX}`);
    const nameEnd = p + HEADER + namesize;
    if (nameEnd > s.length) throw new PolyvisorError('ERR_TRUNCATED', `the name (${namesize} bytes) runs past the end of the archive`, { file, structure, offset: at });
    if (s[nameEnd - 1] !== 0) throw corrupt(file, structure, at, 'the name is not NUL-terminated where namesize says');
    const nameBytes = s.subarray(p + HEADER, nameEnd - 1);
    if (nameBytes.includes(0)) throw corrupt(file, structure, at, 'the name holds a NUL byte before its end');
    const name = nameBytes.toString('utf8');
    const dataStart = align4(nameEnd);
    if (name === TRAILER) return Math.min(align4(dataStart + filesize), s.length);
    if (dataStart + filesize > s.length) {
      throw new PolyvisorError('ERR_TRUNCATED', `"${name}": ${filesize} bytes of data run past the end of the archive (${s.length - Math.min(dataStart, s.length)} left)`, { file, structure, offset: at });
    }
    if (out.length >= MAX_ENTRIES) throw corrupt(file, structure, at, `more than ${MAX_ENTRIES} entries`);
    const data = s.subarray(dataStart, dataStart + filesize);
    // the kernel sums regular files' data only (init/initramfs.c, do_copy); GNU cpio writes 0 for the rest
    if (magic === '070702' && (f.mode & S_IFMT) === S_IFREG) {
      let sum = 0;
      for (let i = 0; i < data.length; i++) sum = (sum + data[i]!) >>> 0;
      if (sum !== f.check) throw new PolyvisorError('ERR_CHECKSUM', `"${name}": data sum 0x${sum.toString(16)} differs from the header's check 0x${f.check.toString(16)}`, { file, structure, offset: at });
    }
    const type = typeOfMode(f.mode);
    const entry: CpioEntry = {
      name,
      path: cpioPath(name),
      type,
      mode: f.mode,
      uid: f.uid,
      gid: f.gid,
      nlink: f.nlink,
      mtime: f.mtime,
      ino: f.ino,
      devMajor: f.devmajor,
      devMinor: f.devminor,
      rdevMajor: f.rdevmajor,
      rdevMinor: f.rdevminor,
      size: filesize,
      data,
      offset: at,
    };
    if (type === 'symlink') {
      if (filesize === 0 || filesize >= PATH_MAX) throw corrupt(file, structure, at, `"${name}": a symlink target of ${filesize} bytes`);
      entry.target = data.toString('utf8');
    }
    out.push(entry);
    p = align4(dataStart + filesize);
  }
}

/**
 * newc stores a hard-linked file's data once, with one of its links (GNU cpio: the last);
 * the others have size 0. Every link gets the data, as the kernel's maybe_link gives it.
 */
function linkHardLinks(entries: CpioEntry[]): void {
  const groups = new Map<string, CpioEntry[]>();
  for (const e of entries) {
    if (e.type !== 'file' || e.nlink < 2) continue;
    const key = `${e.devMajor}:${e.devMinor}:${e.ino}`;
    const g = groups.get(key);
    if (g) g.push(e);
    else groups.set(key, [e]);
  }
  for (const g of groups.values()) {
    const carrier = g.find((e) => e.size > 0);
    if (!carrier) continue;
    for (const e of g) {
      if (e.size === 0) {
        e.data = carrier.data;
        e.size = carrier.size;
      }
    }
  }
}

export interface CpioInput {
  /** stored as given without leading "/": "usr/lib/modules/6.1.0-50-amd64/kernel/drivers/block/virtio_blk.ko" */
  name: string;
  /** st_mode with its type bits: 0o100644 for a file, 0o040755 for a directory, 0o120777 for a symlink */
  mode: number;
  /** a file's content */
  data?: Uint8Array;
  /** a symlink's target */
  target?: string;
  uid?: number;
  gid?: number;
  /** seconds since the epoch (default 0: reproducible archives) */
  mtime?: number;
  /** a device node's numbers */
  rdevMajor?: number;
  rdevMinor?: number;
}

export interface WriteCpioOptions {
  /** pad the archive with zeros to a multiple of this (GNU cpio pads to 512); default 4 */
  padTo?: number;
}

function hex8(n: number, what: string, name: string): string {
  if (!Number.isSafeInteger(n) || n < 0 || n > 0xffffffff) throw new PolyvisorError('ERR_RANGE', `${what} ${n} does not fit a cpio header field (8 hex digits)`, { file: name });
  return n.toString(16).toUpperCase().padStart(8, '0');
}

/**
 * A cpio newc (070701) archive of `entries`, in order, ending with TRAILER!!!. Inode numbers
 * are given in order from 1 and every entry is its own file (nlink 1, directories 2), as
 * `cpio --reproducible` numbers them; Linux and GNU cpio only compare them to find hard links.
 */
export function writeCpio(entries: readonly CpioInput[], options: WriteCpioOptions = {}): Buffer {
  const padTo = options.padTo ?? 4;
  if (!Number.isSafeInteger(padTo) || padTo < 4 || padTo % 4 !== 0 || padTo > 1 << 20) throw new PolyvisorError('ERR_RANGE', `padTo ${padTo}: give a multiple of 4 up to 1 MiB`);
  const parts: Buffer[] = [];
  let size = 0;
  const push = (b: Buffer) => {
    parts.push(b);
    size += b.length;
  };
  const header = (fields: number[], name: string, what: string) => {
    const nameBytes = Buffer.from(name + '\0', 'utf8');
    const h = Buffer.from('070701' + fields.map((v, i) => hex8(v, `${what}: ${FIELDS[i]}`, name)).join('') + hex8(nameBytes.length, `${what}: namesize`, name) + '00000000', 'latin1');
    push(h);
    push(nameBytes);
    push(Buffer.alloc(align4(size) - size));
  };
  let ino = 0;
  for (const e of entries) {
    const name = e.name.replace(/^\/+/, '');
    const what = `entry "${e.name}"`;
    if (name === '' && e.name !== '/') throw new PolyvisorError('ERR_RANGE', `${what}: an empty name`);
    if (name.includes('\0')) throw new PolyvisorError('ERR_RANGE', `${what}: a name with a NUL byte`);
    if (Buffer.byteLength(name) + 1 > PATH_MAX) throw new PolyvisorError('ERR_RANGE', `${what}: a name longer than ${PATH_MAX - 1} bytes`);
    if (name === TRAILER) throw new PolyvisorError('ERR_RANGE', `${what}: the name ends the archive`);
    const type = e.mode & S_IFMT;
    let data: Buffer;
    if (type === S_IFREG) data = Buffer.from(e.data ?? new Uint8Array(0));
    else if (type === S_IFLNK) {
      if (!e.target || e.data) throw new PolyvisorError('ERR_RANGE', `${what}: a symlink needs a target and no data`);
      data = Buffer.from(e.target, 'utf8');
      if (data.length >= PATH_MAX) throw new PolyvisorError('ERR_RANGE', `${what}: a symlink target longer than ${PATH_MAX - 1} bytes`);
    } else if (type === S_IFDIR || type === S_IFCHR || type === S_IFBLK || type === S_IFIFO || type === S_IFSOCK) {
      if (e.data?.length || e.target) throw new PolyvisorError('ERR_RANGE', `${what}: only files and symlinks carry data`);
      data = Buffer.alloc(0);
    } else throw new PolyvisorError('ERR_RANGE', `${what}: mode 0${e.mode.toString(8)} has no file type bits`);
    if (e.mode > 0o177777 || e.mode < 0) throw new PolyvisorError('ERR_RANGE', `${what}: mode 0${e.mode.toString(8)} is not a st_mode`);
    ino++;
    const nlink = type === S_IFDIR ? 2 : 1;
    header([ino, e.mode, e.uid ?? 0, e.gid ?? 0, nlink, e.mtime ?? 0, data.length, 0, 0, e.rdevMajor ?? 0, e.rdevMinor ?? 0], name || '.', what);
    push(data);
    push(Buffer.alloc(align4(size) - size));
  }
  // GNU cpio's trailer: nlink 1, everything else 0
  header([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0], TRAILER, 'trailer');
  const total = Math.ceil(size / padTo) * padTo;
  push(Buffer.alloc(total - size));
  return Buffer.concat(parts, total);
}

/**
 * `image` followed by `segment` (an archive from writeCpio, or compressed data), with the zero
 * padding Linux needs between them: it takes an uncompressed archive only at an offset that
 * is a multiple of 4 (init/initramfs.c, unpack_to_rootfs), and a compressed image rarely ends
 * on one. Files of a later segment replace those of earlier ones when the kernel unpacks it.
 */
export function appendSegment(image: Buffer, segment: Buffer): Buffer {
  return Buffer.concat([image, Buffer.alloc((4 - (image.length % 4)) % 4), segment]);
}

// ---------------------------------------------------------------------------------------
// compression

/** The compressor whose magic `b` starts with, as the kernel's decompress_method knows them (lib/decompress.c). */
export function detectCompression(b: Uint8Array): Compression | null {
  if (b.length < 2) return null;
  const m2 = (b[0]! << 8) | b[1]!;
  if (m2 === 0x1f8b || m2 === 0x1f9e) return 'gzip';
  if (b.length >= 3 && b[0] === 0x42 && b[1] === 0x5a && b[2] === 0x68) return 'bzip2';
  if (b.length >= 6 && Buffer.from(b.subarray(0, 6)).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
  if (b.length >= 4) {
    const le = (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
    if (le === 0xfd2fb528) return 'zstd';
    if (le === 0x184d2204) return 'lz4';
    if (le === 0x184c2102) return 'lz4-legacy';
  }
  if (b.length >= 3 && b[0] === 0x89 && b[1] === 0x4c && b[2] === 0x5a) return 'lzo';
  // .lzma ("LZMA alone"): properties byte lc/lp/pb as the kernel's magic 5d 00 00
  if (b.length >= 3 && b[0] === 0x5d && b[1] === 0x00 && b[2] === 0x00) return 'lzma';
  return null;
}

/** Host tools for what node:zlib does not read, and the Debian package that has each. */
const TOOLS: Partial<Record<Compression, { cmd: string; args: string[]; pkg: string }>> = {
  zstd: { cmd: 'zstd', args: ['-d', '-c', '-q'], pkg: 'zstd' },
  xz: { cmd: 'xz', args: ['-d', '-c', '-q', '--single-stream'], pkg: 'xz-utils' },
  lzma: { cmd: 'xz', args: ['-d', '-c', '-q', '--format=lzma'], pkg: 'xz-utils' },
  lz4: { cmd: 'lz4', args: ['-d', '-c', '-q'], pkg: 'lz4' },
  'lz4-legacy': { cmd: 'lz4', args: ['-d', '-c', '-q'], pkg: 'lz4' },
  bzip2: { cmd: 'bzip2', args: ['-d', '-c', '-q'], pkg: 'bzip2' },
};

function bomb(file: string, offset: number, limit: number): PolyvisorError {
  return new PolyvisorError('ERR_UNSUPPORTED', `the compressed data decompresses to more than ${limit} bytes: refused as a possible decompression bomb (raise maxBytes to read it)`, { file, structure: 'initramfs segment', offset });
}

/** Runs a host decompressor on `input` (stdin to stdout), stopping it past `limit` output bytes. */
function runTool(comp: Compression, input: Buffer, limit: number, file: string, offset: number): Promise<Buffer> {
  const tool = TOOLS[comp]!;
  return new Promise((resolve, reject) => {
    const child = spawn(tool.cmd, tool.args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const chunks: Buffer[] = [];
    let size = 0;
    let err = '';
    let failure: PolyvisorError | undefined;
    child.on('error', (e: NodeJS.ErrnoException) => {
      failure ??= e.code === 'ENOENT'
        ? new PolyvisorError('ERR_HOST', `reading ${comp} data needs the ${tool.cmd} command (Debian package ${tool.pkg}), which is not installed`, { file, offset })
        : new PolyvisorError('ERR_HOST', `${tool.cmd}: ${e.message}`, { file, offset });
    });
    child.stdout.on('data', (b: Buffer) => {
      if (failure) return;
      size += b.length;
      if (size > limit) {
        failure = bomb(file, offset, limit);
        child.kill('SIGKILL');
        return;
      }
      chunks.push(b);
    });
    child.stderr.on('data', (b: Buffer) => {
      if (err.length < 4096) err += b.toString('utf8');
    });
    // the tool may stop reading early (bad data, or killed): a broken pipe is its answer, not ours
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
    child.on('close', (code) => {
      if (failure) return reject(failure);
      if (code !== 0) return reject(corrupt(file, `${comp} data`, offset, `${tool.cmd} could not decompress it: ${err.trim().split('\n').slice(-2).join(' ') || `exit status ${code}`}`));
      resolve(Buffer.concat(chunks, size));
    });
  });
}

/** RFC 1952 section 2.3: a member's header; returns where the deflate data starts. */
function gzipHeaderEnd(b: Buffer, p: number, file: string): number {
  const short = () => new PolyvisorError('ERR_TRUNCATED', 'the gzip header runs past the end of the image', { file, structure: 'gzip header', offset: p });
  if (p + 10 > b.length) throw short();
  if (b[p + 2] !== 8) throw corrupt(file, 'gzip header', p, `compression method ${b[p + 2]} (only deflate, 8, exists)`);
  const flg = b[p + 3]!;
  if (flg & 0xe0) throw corrupt(file, 'gzip header', p, 'reserved flag bits are set');
  let q = p + 10;
  if (flg & 0x04) {
    if (q + 2 > b.length) throw short();
    q += 2 + b.readUInt16LE(q);
  }
  for (const bit of [0x08, 0x10]) {
    if (!(flg & bit)) continue;
    const z = b.indexOf(0, q);
    if (z < 0) throw short();
    q = z + 1;
  }
  if (flg & 0x02) q += 2;
  if (q > b.length) throw short();
  return q;
}

/** One gzip member at `p`: its output and where it ends (after the CRC-32 and ISIZE trailer). */
function gunzipMember(b: Buffer, p: number, limit: number, file: string): { out: Buffer; end: number } {
  if (b[p + 1] === 0x9e) throw new PolyvisorError('ERR_UNSUPPORTED', 'old-style gzip (1f 9e) data', { file, offset: p });
  const body = gzipHeaderEnd(b, p, file);
  let r: { buffer: Buffer; engine: { bytesWritten: number } };
  try {
    r = inflateRawSync(b.subarray(body), { info: true, maxOutputLength: Math.max(1, limit + 1) }) as unknown as typeof r;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ERR_BUFFER_TOO_LARGE') throw bomb(file, p, limit);
    if (code === 'Z_BUF_ERROR') throw new PolyvisorError('ERR_TRUNCATED', 'the gzip data ends before its last block', { file, structure: 'gzip member', offset: p, cause: e });
    throw corrupt(file, 'gzip member', p, `bad deflate data: ${(e as Error).message}`);
  }
  const out = r.buffer;
  if (out.length > limit) throw bomb(file, p, limit);
  // zlib reports the input its deflate stream used; the member's trailer follows (RFC 1952 section 2.3.1)
  const end = body + r.engine.bytesWritten;
  if (end + 8 > b.length) throw new PolyvisorError('ERR_TRUNCATED', 'the gzip member ends without its CRC-32 and size trailer', { file, structure: 'gzip member', offset: p });
  if (b.readUInt32LE(end) === crc32(out) && b.readUInt32LE(end + 4) === out.length % 2 ** 32) return { out, end: end + 8 };
  throw new PolyvisorError('ERR_CHECKSUM', 'the gzip trailer (CRC-32 and size) does not match the data', { file, structure: 'gzip member', offset: p });
}

/** RFC 8878 section 3.1.1: the end of the zstd frame (or skippable frame) at `p`. */
function zstdFrameEnd(b: Buffer, p: number, file: string): number {
  const short = () => new PolyvisorError('ERR_TRUNCATED', 'the zstd frame runs past the end of the image', { file, structure: 'zstd frame', offset: p });
  if (p + 8 > b.length) throw short();
  const magic = b.readUInt32LE(p);
  if ((magic & 0xfffffff0) === 0x184d2a50) {
    const end = p + 8 + b.readUInt32LE(p + 4);
    if (end > b.length) throw short();
    return end;
  }
  const fhd = b[p + 4]!;
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  if (fhd & 0x08) throw corrupt(file, 'zstd frame header', p, 'the reserved bit is set');
  const checksum = (fhd >> 2) & 1;
  const didSize = [0, 1, 2, 4][fhd & 3]!;
  const fcsSize = [single ? 1 : 0, 2, 4, 8][fcsFlag]!;
  let q = p + 5 + (single ? 0 : 1) + didSize + fcsSize;
  for (let n = 0; ; n++) {
    if (q + 3 > b.length) throw short();
    const h = b[q]! | (b[q + 1]! << 8) | (b[q + 2]! << 16);
    const last = h & 1;
    const type = (h >> 1) & 3;
    const size = h >> 3;
    if (type === 3) throw corrupt(file, 'zstd block header', q, 'reserved block type 3');
    q += 3 + (type === 1 ? 1 : size);
    if (q > b.length) throw short();
    if (last) break;
    if (n > 1 << 24) throw corrupt(file, 'zstd frame', p, 'more than 2^24 blocks');
  }
  q += checksum ? 4 : 0;
  if (q > b.length) throw short();
  return q;
}

/** The LZ4 Frame Format (1.6.x) section "General Structure": the end of the frame at `p`. */
function lz4FrameEnd(b: Buffer, p: number, file: string): number {
  const short = () => new PolyvisorError('ERR_TRUNCATED', 'the lz4 frame runs past the end of the image', { file, structure: 'lz4 frame', offset: p });
  if (p + 7 > b.length) throw short();
  const flg = b[p + 4]!;
  if (flg >> 6 !== 1) throw corrupt(file, 'lz4 frame descriptor', p + 4, `version ${flg >> 6} (01 is the only one)`);
  const blockChecksum = (flg >> 4) & 1;
  const contentSize = (flg >> 3) & 1;
  const contentChecksum = (flg >> 2) & 1;
  const dictId = flg & 1;
  let q = p + 4 + 2 + (contentSize ? 8 : 0) + (dictId ? 4 : 0) + 1;
  for (let n = 0; ; n++) {
    if (q + 4 > b.length) throw short();
    const v = b.readUInt32LE(q);
    q += 4;
    if (v === 0) break; // EndMark
    q += (v & 0x7fffffff) + (blockChecksum ? 4 : 0);
    if (q > b.length) throw short();
    if (n > 1 << 24) throw corrupt(file, 'lz4 frame', p, 'more than 2^24 blocks');
  }
  q += contentChecksum ? 4 : 0;
  if (q > b.length) throw short();
  return q;
}

/** LZ4_compressBound(8 MiB): no legacy chunk (8 MiB of input each) compresses to more */
const LZ4_LEGACY_MAX_CHUNK = 8 * 1024 * 1024 + Math.floor((8 * 1024 * 1024) / 255) + 16;

/** lz4 legacy ("lz4 -l", what Linux's unlz4 reads): chunks of a 4-byte size and data, to zero padding or the end. */
function lz4LegacyEnd(b: Buffer, p: number, file: string): number {
  let q = p + 4;
  for (let n = 0; q + 4 <= b.length; n++) {
    const size = b.readUInt32LE(q);
    if (size === 0 || size === 0x184c2102) break;
    if (size > LZ4_LEGACY_MAX_CHUNK) throw corrupt(file, 'lz4 legacy chunk', q, `a chunk of ${size} bytes (at most ${LZ4_LEGACY_MAX_CHUNK})`);
    if (q + 4 + size > b.length) throw new PolyvisorError('ERR_TRUNCATED', `a chunk of ${size} bytes runs past the end of the image`, { file, structure: 'lz4 legacy chunk', offset: q });
    q += 4 + size;
    if (n > 1 << 24) break;
  }
  return q;
}

/**
 * Decompresses the run of same-compressor streams starting at `p` (gzip members, zstd and lz4
 * frames follow each other in one segment) and says where it ends in the image.
 */
async function decompressSegment(img: Buffer, p: number, comp: Compression, limit: number, file: string): Promise<{ out: Buffer; end: number }> {
  if (comp === 'lzo') throw new PolyvisorError('ERR_UNSUPPORTED', 'an LZO-compressed (lzop) initramfs: Polyvisor reads gzip, zstd, xz, lzma, lz4 and bzip2 ones', { file, structure: 'initramfs segment', offset: p });
  if (comp === 'gzip') {
    const outs: Buffer[] = [];
    let size = 0;
    let q = p;
    do {
      const m = gunzipMember(img, q, limit - size, file);
      outs.push(m.out);
      size += m.out.length;
      q = m.end;
    } while (q + 2 <= img.length && img[q] === 0x1f && img[q + 1] === 0x8b);
    return { out: Buffer.concat(outs, size), end: q };
  }
  let end: number;
  if (comp === 'zstd') {
    end = p;
    do end = zstdFrameEnd(img, end, file);
    while (end + 4 <= img.length && (img.readUInt32LE(end) === 0xfd2fb528 || (img.readUInt32LE(end) & 0xfffffff0) === 0x184d2a50));
  } else if (comp === 'lz4') {
    end = p;
    do end = lz4FrameEnd(img, end, file);
    while (end + 4 <= img.length && img.readUInt32LE(end) === 0x184d2204);
  } else if (comp === 'lz4-legacy') end = lz4LegacyEnd(img, p, file);
  else end = img.length;
  return { out: await runTool(comp, img.subarray(p, end), limit, file, p), end };
}

// ---------------------------------------------------------------------------------------
// the image

/** Reads an initramfs image: its segments, their entries and what they say about the image. */
export async function readInitramfs(data: Buffer, options: ReadInitramfsOptions = {}): Promise<Initramfs> {
  const file = options.name ?? 'initramfs';
  let budget = options.maxBytes ?? DEFAULT_MAX_INITRAMFS;
  const segments: InitramfsSegment[] = [];
  let p = 0;
  while (p < data.length) {
    if (data[p] === 0) {
      p++;
      continue;
    }
    if (segments.length >= MAX_SEGMENTS) throw corrupt(file, 'initramfs', p, `more than ${MAX_SEGMENTS} segments`);
    if (data[p] === 0x30 && data.toString('latin1', p, p + 4) === '0707') {
      if ((p & 3) !== 0) throw corrupt(file, 'cpio archive', p, 'an uncompressed archive starts at an offset that is not a multiple of 4');
      // an uncompressed archive: it ends with its trailer, and another segment may follow
      const { entries, end } = parseArchives(data.subarray(p), file, p, true);
      segments.push({ offset: p, length: end, compression: 'none', size: end, entries });
      p += end;
      continue;
    }
    const comp = detectCompression(data.subarray(p, p + 8));
    if (!comp) throw corrupt(file, 'initramfs', p, `neither a cpio archive nor compressed data the kernel reads (bytes ${data.subarray(p, p + 4).toString('hex')})`);
    const { out, end } = await decompressSegment(data, p, comp, budget, file);
    budget -= out.length;
    const entries = parseArchives(out, `${file} (${comp} segment at ${p})`, 0, false).entries;
    segments.push({ offset: p, length: end - p, compression: comp, size: out.length, entries });
    p = end;
  }
  if (segments.length === 0) throw corrupt(file, 'initramfs', 0, 'the image is empty (no segment)');
  return describe(segments);
}

function describe(segments: InitramfsSegment[]): Initramfs {
  const files = new Map<string, CpioEntry>();
  for (const s of segments) for (const e of s.entries) files.set(e.path, e);
  const has = (p: string) => files.has(p);
  const under = (prefix: string) => {
    for (const k of files.keys()) if (k.startsWith(prefix)) return true;
    return false;
  };
  let generator: InitramfsGenerator = 'unknown';
  if (has('/usr/lib/dracut') || under('/usr/lib/dracut/') || has('/etc/dracut.conf') || under('/etc/dracut.conf.d/')) generator = 'dracut';
  else if (has('/conf/initramfs.conf') || has('/scripts/init-top')) generator = 'initramfs-tools';
  else if (has('/buildconfig') || has('/hooks') || has('/config') && has('/VERSION')) generator = 'mkinitcpio';
  const main = segments.find((s) => s.entries.some((e) => e.path === '/init')) ?? segments[segments.length - 1]!;
  const modules: InitramfsModule[] = [];
  const versions = new Set<string>();
  for (const [path, e] of files) {
    const m = MODULE_PATH.exec(path);
    if (m) {
      versions.add(m[1]!);
      if (e.type === 'file') modules.push({ name: moduleName(path), path, kernelVersion: m[1]! });
      continue;
    }
    const v = /^\/(?:usr\/)?lib\/modules\/([^/]+)$/.exec(path);
    if (v && e.type === 'directory') versions.add(v[1]!);
  }
  modules.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return {
    segments,
    files,
    generator,
    compression: main.compression,
    modules,
    kernelVersions: [...versions].sort(),
    microcode: under('/kernel/x86/microcode/'),
  };
}
