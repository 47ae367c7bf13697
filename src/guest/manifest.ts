/**
 * The adaptation manifest: every change Polyvisor makes to a guest, recorded so that
 * `guest undo` can take it back, and written only where something differs so that adapting
 * twice changes nothing the second time.
 *
 * Two records of the same work, at two levels:
 *
 * - changes, one per file system object or raw disk area: a file created or modified (its
 *   original bytes saved in the folder beside the manifest, or "did not exist"), a file
 *   appended to (the initramfs: its original size and SHA-256; the original bytes are the
 *   file's own first bytes), a symlink made (what stood at its name before), a directory
 *   made, or bytes written outside any file system (the MBR's boot code, the gap after it:
 *   offset, length, original bytes). Each carries the SHA-256 of what was written.
 * - the disk journal (journal.ts): the original bytes of every sector written, file-system
 *   metadata included, with the SHA-256 of each run before and after.
 *
 * Undo takes the exact way when every journalled run still holds what adaptation wrote (no
 * one wrote to the disk since): the original sectors go back and the disk is the source's
 * again, byte for byte. When the guest was booted or edited since, the journal would tear
 * its file systems, so undo goes change by change instead, from the last to the first, and
 * each file is put back only if it still is what adaptation wrote; one that changed since is
 * left alone and reported.
 *
 * Layout: MANIFEST.json, and MANIFEST.d/ beside it holding files/NNNN (original bytes of
 * files and raw areas) and diskN.journal.gz (the journal's original sectors, gzip).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { openImage } from '../disk/chain.js';
import type { BlockImage } from '../disk/image.js';
import { PolyvisorError, fromSystemError, isPolyvisorError } from '../errors.js';
import type { GuestFs } from './fs.js';
import { sha256, type JournalImage } from './journal.js';
import { openGuest, type Guest, type GuestVolume } from './open.js';

export const MANIFEST_KIND = 'polyvisor-guest-adaptation';
export const MANIFEST_VERSION = 1;

/** The file system a change lies on, and where the guest mounts it. */
export interface FsRef {
  /** "disk 0 partition 1", "vg0/root" */
  volume: string;
  uuid?: string;
  mountPoint: string;
}

export interface Digest {
  size: number;
  sha256: string;
}

export interface SavedFile extends Digest {
  /** name of the copy under the manifest's folder: "files/0003" */
  saved: string;
  /** permission bits */
  mode: number;
}

interface ChangeBase {
  fs: FsRef;
  /** the path inside that file system, every symlink resolved (inside the guest) */
  path: string;
  /** the same object as the guest sees it: mount point + path */
  guestPath: string;
  /** the step that made it, and why: "fstab: /dev/xvda1 -> UUID=..." */
  why: string;
}

export type Change =
  | (ChangeBase & { kind: 'file'; before: 'did not exist' | SavedFile; after: Digest })
  | (ChangeBase & { kind: 'append'; before: Digest; after: Digest })
  | (ChangeBase & { kind: 'symlink'; target: string; before: 'did not exist' | SavedFile | { symlink: string } })
  | (ChangeBase & { kind: 'directory'; before: 'did not exist' })
  | { kind: 'raw'; disk: number; offset: number; length: number; before: { saved: string; sha256: string }; after: { sha256: string }; why: string };

export interface JournalRunRecord {
  offset: number;
  length: number;
  /** where its original bytes start in the decompressed journal file */
  at: number;
  before: string;
  after: string;
}

export interface ManifestDisk {
  /** the image written: the overlay, or the source itself with --in-place */
  path: string;
  format: string;
  virtualSize: number;
  /** the source disk under an overlay */
  source?: string;
  journal: { file: string | null; runs: JournalRunRecord[] };
}

export interface Manifest {
  kind: typeof MANIFEST_KIND;
  version: typeof MANIFEST_VERSION;
  created: string;
  target: string;
  inPlace: boolean;
  sources: string[];
  disks: ManifestDisk[];
  changes: Change[];
  /** what the adaptation could not do (a boot path missing on the target, a driver the kernel lacks) */
  problems: string[];
  /** set by `guest undo` */
  undone?: { at: string; method: 'exact' | 'by change' };
}

const MAX_MANIFEST = 64 << 20;

function plainName(name: string, what: string, file: string): string {
  if (!/^(files\/\d{4,}|disk\d+\.journal\.gz)$/.test(name)) throw new PolyvisorError('ERR_CORRUPT', `${what} names "${name}", which is not one of the manifest's own files`, { file });
  return name;
}

/** The folder of saved bytes beside a manifest: "out.manifest.json" -> "out.manifest.d". */
export function manifestDataDir(manifestPath: string): string {
  return manifestPath.replace(/\.json$/i, '') + '.d';
}

interface FsOps {
  symlink(target: string, path: string): Promise<void>;
  mkdir(path: string, mode?: number): Promise<void>;
  unlink(path: string): Promise<void>;
  rmdir(path: string): Promise<void>;
}

/** One of the operations beyond GuestFs that ext4 offers (FAT: mkdir only), or a clear refusal. */
function fsOp<K extends keyof FsOps>(fs: GuestFs, op: K, path: string): FsOps[K] {
  const f = (fs as unknown as Partial<FsOps>)[op];
  if (typeof f !== 'function') throw new PolyvisorError('ERR_UNSUPPORTED', `${path}: Polyvisor cannot ${op} on a ${fs.type} file system`);
  return f.bind(fs) as FsOps[K];
}

function fsRefOf(volume: GuestVolume, mountPoint: string): FsRef {
  return { volume: volume.name, ...(volume.probe.uuid ? { uuid: volume.probe.uuid } : {}), mountPoint };
}

function guestPathOf(mountPoint: string, path: string): string {
  if (mountPoint === '/') return path;
  return path === '/' ? mountPoint : mountPoint + path;
}

const parentOf = (p: string) => p.slice(0, p.lastIndexOf('/')) || '/';

/**
 * Makes changes to a guest and records them. Every write compares first: an object that is
 * already what it should be is not written and not recorded.
 */
export class GuestEditor {
  readonly guest: Guest;
  readonly changes: Change[] = [];
  /** saved name -> the original bytes */
  readonly saved = new Map<string, Buffer>();

  constructor(guest: Guest) {
    this.guest = guest;
  }

  #save(bytes: Buffer): string {
    const name = `files/${String(this.saved.size + 1).padStart(4, '0')}`;
    this.saved.set(name, bytes);
    return name;
  }

  /** The file's bytes, or null when the guest has no such file. */
  async read(path: string): Promise<Buffer | null> {
    try {
      const st = await this.guest.stat(path);
      if (st.type !== 'file') return null;
      return await this.guest.readFile(path);
    } catch (e) {
      if (isPolyvisorError(e, 'ERR_NOT_FOUND')) return null;
      throw e;
    }
  }

  async exists(path: string): Promise<boolean> {
    return this.guest.exists(path);
  }

  async #locate(path: string, followLast: boolean) {
    const r = await this.guest.fs(path, { followLast });
    return { ...r, ref: fsRefOf(r.volume, r.mountPoint), guestPath: guestPathOf(r.mountPoint, r.path) };
  }

  async #lstat(fs: GuestFs, path: string) {
    try {
      return await fs.lstat(path);
    } catch (e) {
      if (isPolyvisorError(e, 'ERR_NOT_FOUND')) return null;
      throw e;
    }
  }

  /** Creates the folder and any missing parents (mode 0755), recording each one made. */
  async mkdirp(path: string, why: string): Promise<void> {
    const parts = path.split('/').filter(Boolean);
    for (let i = 1; i <= parts.length; i++) {
      const dir = '/' + parts.slice(0, i).join('/');
      const at = await this.#locate(dir, true);
      const st = await this.#lstat(at.fs, at.path);
      if (st?.type === 'directory') continue;
      if (st) throw new PolyvisorError('ERR_EXISTS', `${dir}: the guest has a ${st.type} where a folder is needed`, { file: this.guest.source });
      await fsOp(at.fs, 'mkdir', at.guestPath)(at.path, 0o755);
      this.changes.push({ kind: 'directory', fs: at.ref, path: at.path, guestPath: at.guestPath, before: 'did not exist', why });
    }
  }

  /** Writes the whole file (following symlinks inside the guest) unless it already holds `data`. */
  async writeFile(path: string, data: Buffer, why: string, mode = 0o644): Promise<boolean> {
    await this.mkdirp(parentOf(await this.guest.resolve(path)), why);
    const at = await this.#locate(path, true);
    const st = await this.#lstat(at.fs, at.path);
    if (st && st.type !== 'file') throw new PolyvisorError('ERR_UNSUPPORTED', `${path}: the guest has a ${st.type} there, not a file`, { file: this.guest.source });
    let before: 'did not exist' | SavedFile = 'did not exist';
    if (st) {
      const old = await at.fs.readFile(at.path);
      if (old.equals(data)) return false;
      before = { saved: this.#save(old), size: old.length, sha256: sha256(old), mode: st.mode & 0o7777 };
    }
    await at.fs.writeFile(at.path, data, { mode });
    this.changes.push({ kind: 'file', fs: at.ref, path: at.path, guestPath: at.guestPath, before, after: { size: data.length, sha256: sha256(data) }, why });
    return true;
  }

  /** Appends `data` to an existing file (the initramfs); its original bytes stay its first bytes. */
  async appendFile(path: string, data: Buffer, why: string): Promise<void> {
    const at = await this.#locate(path, true);
    const old = await at.fs.readFile(at.path);
    const next = Buffer.concat([old, data]);
    await at.fs.writeFile(at.path, next);
    this.changes.push({
      kind: 'append',
      fs: at.ref,
      path: at.path,
      guestPath: at.guestPath,
      before: { size: old.length, sha256: sha256(old) },
      after: { size: next.length, sha256: sha256(next) },
      why,
    });
  }

  /** Makes `path` a symlink to `target` (a file or link there is saved and replaced). */
  async symlink(path: string, target: string, why: string): Promise<boolean> {
    const parent = await this.guest.resolve(parentOf(path));
    await this.mkdirp(parent, why);
    const name = path.slice(path.lastIndexOf('/') + 1);
    const at = await this.#locate(parent === '/' ? `/${name}` : `${parent}/${name}`, false);
    const fs = at.fs;
    const st = await this.#lstat(fs, at.path);
    let before: 'did not exist' | SavedFile | { symlink: string } = 'did not exist';
    if (st?.type === 'symlink') {
      const old = await fs.readlink(at.path);
      if (old === target) return false;
      before = { symlink: old };
    } else if (st?.type === 'file') {
      const old = await fs.readFile(at.path);
      before = { saved: this.#save(old), size: old.length, sha256: sha256(old), mode: st.mode & 0o7777 };
    } else if (st) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `${path}: the guest has a ${st.type} there; a symlink would replace it`, { file: this.guest.source });
    }
    if (st) await fsOp(fs, 'unlink', at.guestPath)(at.path);
    await fsOp(fs, 'symlink', at.guestPath)(target, at.path);
    this.changes.push({ kind: 'symlink', fs: at.ref, path: at.path, guestPath: at.guestPath, target, before, why });
    return true;
  }

  /** Writes bytes outside any file system (boot code) unless they are there already. */
  async writeRaw(disk: number, offset: number, data: Buffer, why: string): Promise<boolean> {
    const d = this.guest.disks[disk];
    if (!d) throw new PolyvisorError('ERR_INTERNAL', `no disk ${disk}`);
    const old = await d.volume.read(offset, data.length);
    if (old.equals(data)) return false;
    await d.volume.write(offset, data);
    this.changes.push({ kind: 'raw', disk, offset, length: data.length, before: { saved: this.#save(old), sha256: sha256(old) }, after: { sha256: sha256(data) }, why });
    return true;
  }
}

// ---------------------------------------------------------------------------------------
// writing and reading manifests

/** Writes a file at a temporary name beside it and renames it into place. */
async function writeAtomic(path: string, data: string | Buffer): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    await writeFile(tmp, data, { flag: 'wx' });
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw fromSystemError(e, path, 'writing');
  }
}

/** The journal of one disk, read back for its SHA-256s after adaptation. */
async function journalRecord(image: JournalImage, index: number): Promise<{ record: ManifestDisk['journal']; blob: Buffer | null }> {
  const runs = image.runs();
  if (runs.length === 0) return { record: { file: null, runs: [] }, blob: null };
  const records: JournalRunRecord[] = [];
  let at = 0;
  for (const r of runs) {
    const now = Buffer.alloc(r.length);
    await image.read(now, r.offset);
    records.push({ offset: r.offset, length: r.length, at, before: sha256(r.before), after: sha256(now) });
    at += r.length;
  }
  return { record: { file: `disk${index}.journal.gz`, runs: records }, blob: gzipSync(Buffer.concat(runs.map((r) => r.before)), { level: 1 }) };
}

export interface WriteManifestInput {
  path: string;
  target: string;
  inPlace: boolean;
  sources: string[];
  /** each image written, by the name it will have (an overlay is renamed into place after) */
  disks: { image: JournalImage; path: string; source?: string }[];
  editor: GuestEditor;
  problems: string[];
}

/** Writes MANIFEST.json and its folder; the manifest appears last, once everything it names is there. */
export async function writeManifest(input: WriteManifestInput): Promise<Manifest> {
  const disks: ManifestDisk[] = [];
  const blobs = new Map<string, Buffer>(input.editor.saved);
  for (const [i, d] of input.disks.entries()) {
    const { record, blob } = await journalRecord(d.image, i);
    if (blob && record.file) blobs.set(record.file, blob);
    disks.push({ path: resolve(d.path), format: d.image.format, virtualSize: d.image.virtualSize, ...(d.source ? { source: resolve(d.source) } : {}), journal: record });
  }
  const manifest: Manifest = {
    kind: MANIFEST_KIND,
    version: MANIFEST_VERSION,
    created: new Date().toISOString(),
    target: input.target,
    inPlace: input.inPlace,
    sources: input.sources.map((s) => resolve(s)),
    disks,
    changes: input.editor.changes,
    problems: input.problems,
  };
  const dir = manifestDataDir(input.path);
  if (blobs.size) {
    const tmp = `${dir}.${randomBytes(4).toString('hex')}.tmp`;
    try {
      await mkdir(join(tmp, 'files'), { recursive: true });
      for (const [name, bytes] of blobs) await writeFile(join(tmp, name), bytes);
      await rm(dir, { recursive: true, force: true });
      await rename(tmp, dir);
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      throw fromSystemError(e, dir, 'writing the manifest folder');
    }
  }
  await writeAtomic(input.path, JSON.stringify(manifest, null, 2) + '\n');
  return manifest;
}

/** Reads and checks a manifest; its saved-file names must stay inside its own folder. */
export async function readManifest(path: string): Promise<Manifest> {
  let text: string;
  try {
    const st = await stat(path);
    if (st.size > MAX_MANIFEST) throw new PolyvisorError('ERR_UNSUPPORTED', `${st.size} bytes: too large for a manifest`, { file: path });
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw fromSystemError(e, path, 'reading the manifest');
  }
  let m: Manifest;
  try {
    m = JSON.parse(text) as Manifest;
  } catch (e) {
    throw new PolyvisorError('ERR_CORRUPT', `not JSON: ${(e as Error).message}`, { file: path, structure: 'manifest' });
  }
  if (!m || typeof m !== 'object' || m.kind !== MANIFEST_KIND) throw new PolyvisorError('ERR_FORMAT_UNKNOWN', `not a Polyvisor adaptation manifest (no "kind": "${MANIFEST_KIND}")`, { file: path });
  if (m.version !== MANIFEST_VERSION) throw new PolyvisorError('ERR_UNSUPPORTED', `manifest version ${String(m.version)} (this Polyvisor reads version ${MANIFEST_VERSION})`, { file: path });
  if (!Array.isArray(m.disks) || !Array.isArray(m.changes)) throw new PolyvisorError('ERR_CORRUPT', 'the manifest lacks its "disks" or "changes" list', { file: path, structure: 'manifest' });
  for (const [i, d] of m.disks.entries()) {
    if (typeof d?.path !== 'string' || !d.journal || !Array.isArray(d.journal.runs)) throw new PolyvisorError('ERR_CORRUPT', `disk ${i} is incomplete`, { file: path, structure: 'manifest' });
    if (d.journal.file !== null) plainName(d.journal.file, `disk ${i}'s journal`, path);
    for (const r of d.journal.runs) {
      if (![r.offset, r.length, r.at].every((n) => Number.isSafeInteger(n) && n >= 0) || typeof r.before !== 'string' || typeof r.after !== 'string') {
        throw new PolyvisorError('ERR_CORRUPT', `a journal run of disk ${i} is malformed`, { file: path, structure: 'manifest' });
      }
    }
  }
  for (const [i, c] of m.changes.entries()) {
    const before = (c as { before?: unknown }).before;
    if (before && typeof before === 'object' && 'saved' in before) plainName(String((before as SavedFile).saved), `change ${i + 1}`, path);
    if (c.kind !== 'raw' && (typeof c.path !== 'string' || !c.path.startsWith('/') || !c.fs || typeof c.fs.volume !== 'string')) {
      throw new PolyvisorError('ERR_CORRUPT', `change ${i + 1} names no file system path`, { file: path, structure: 'manifest' });
    }
  }
  return m;
}

// ---------------------------------------------------------------------------------------
// undo

export interface UndoResult {
  manifest: string;
  /** 'exact': every journalled sector put back; 'by change': file by file; 'nothing': undone before */
  method: 'exact' | 'by change' | 'nothing';
  /** changes taken back */
  restored: number;
  /** changes left alone because the guest changed them since, with the reason */
  skipped: string[];
  /** disk bytes written back */
  bytes: number;
}

async function readSaved(dir: string, name: string, manifest: string): Promise<Buffer> {
  try {
    return await readFile(join(dir, plainName(name, 'a change', manifest)));
  } catch (e) {
    throw fromSystemError(e, join(dir, name), 'reading the saved original');
  }
}

/** Takes back the adaptation `manifestPath` records (see the file comment for the two ways). */
export async function undoAdaptation(manifestPath: string): Promise<UndoResult> {
  const m = await readManifest(manifestPath);
  if (m.undone) return { manifest: manifestPath, method: 'nothing', restored: 0, skipped: [`undone already, on ${m.undone.at}`], bytes: 0 };
  const dir = manifestDataDir(manifestPath);
  const images: BlockImage[] = [];
  try {
    for (const d of m.disks) images.push(await openImage(d.path, { writable: true, allowOutsidePaths: true }));
    for (const [i, d] of m.disks.entries()) {
      if (images[i]!.virtualSize !== d.virtualSize) throw new PolyvisorError('ERR_CHAIN_MISMATCH', `the disk is ${images[i]!.virtualSize} bytes; the manifest recorded ${d.virtualSize}`, { file: d.path });
    }
    let result: UndoResult;
    if (await journalsIntact(m, images)) result = await undoExact(m, images, dir, manifestPath);
    else result = await undoByChange(m, images, dir, manifestPath);
    for (const img of images) await img.flush();
    m.undone = { at: new Date().toISOString(), method: result.method === 'exact' ? 'exact' : 'by change' };
    await writeAtomic(manifestPath, JSON.stringify(m, null, 2) + '\n');
    return result;
  } finally {
    for (const img of images) await img.close().catch(() => undefined);
  }
}

async function journalsIntact(m: Manifest, images: BlockImage[]): Promise<boolean> {
  for (const [i, d] of m.disks.entries()) {
    for (const r of d.journal.runs) {
      if (r.offset + r.length > images[i]!.virtualSize) return false;
      const now = Buffer.alloc(r.length);
      await images[i]!.read(now, r.offset);
      if (sha256(now) !== r.after) return false;
    }
  }
  return true;
}

async function undoExact(m: Manifest, images: BlockImage[], dir: string, manifestPath: string): Promise<UndoResult> {
  let bytes = 0;
  for (const [i, d] of m.disks.entries()) {
    if (!d.journal.file || d.journal.runs.length === 0) continue;
    const blob = gunzipSync(await readSaved(dir, d.journal.file, manifestPath));
    for (const r of d.journal.runs) {
      if (r.at + r.length > blob.length) throw new PolyvisorError('ERR_TRUNCATED', `the journal holds ${blob.length} bytes; a run needs ${r.at + r.length}`, { file: join(dir, d.journal.file) });
      const before = blob.subarray(r.at, r.at + r.length);
      if (sha256(before) !== r.before) throw new PolyvisorError('ERR_CHECKSUM', `the saved bytes of the run at ${r.offset} do not match their SHA-256`, { file: join(dir, d.journal.file) });
    }
    for (const r of d.journal.runs) {
      await images[i]!.write(blob.subarray(r.at, r.at + r.length), r.offset);
      bytes += r.length;
    }
  }
  return { manifest: manifestPath, method: 'exact', restored: m.changes.length, skipped: [], bytes };
}

async function currentDigest(fs: GuestFs, path: string): Promise<{ type: string; sha256?: string; target?: string; size?: number } | null> {
  try {
    const st = await fs.lstat(path);
    if (st.type === 'file') {
      const b = await fs.readFile(path);
      return { type: 'file', sha256: sha256(b), size: b.length };
    }
    if (st.type === 'symlink') return { type: 'symlink', target: await fs.readlink(path) };
    return { type: st.type };
  } catch (e) {
    if (isPolyvisorError(e, 'ERR_NOT_FOUND')) return null;
    throw e;
  }
}

/** Takes back one change if it is still what adaptation made; returns the bytes written back, or why not. */
async function undoOne(c: Change, guest: Guest, images: BlockImage[], dir: string, manifestPath: string): Promise<number | string> {
  if (c.kind === 'raw') {
    const img = images[c.disk];
    if (!img || c.offset + c.length > img.virtualSize) return 'no such area on the disk';
    const now = Buffer.alloc(c.length);
    await img.read(now, c.offset);
    if (sha256(now) !== c.after.sha256) return 'changed since adaptation';
    const old = await readSaved(dir, c.before.saved, manifestPath);
    await img.write(old, c.offset);
    return old.length;
  }
  const ref = c.fs;
  const v = guest.volumes.find((x) => (ref.uuid ? x.probe.uuid === ref.uuid : x.name === ref.volume)) ?? guest.volumes.find((x) => x.name === ref.volume);
  const fs = v?.fs;
  if (!fs) return `its file system (${ref.volume}) is not there any more`;
  const op = <K extends keyof FsOps>(k: K) => fsOp(fs, k, c.guestPath);
  const now = await currentDigest(fs, c.path);
  if (c.kind === 'directory') {
    if (now?.type !== 'directory') return 'no longer a folder';
    if ((await fs.readdir(c.path)).some((e) => e.name !== '.' && e.name !== '..')) return 'the folder is not empty';
    await op('rmdir')(c.path);
    return 0;
  }
  if (c.kind === 'symlink') {
    if (now?.type !== 'symlink' || now.target !== c.target) return `no longer the symlink to ${c.target}`;
    await op('unlink')(c.path);
    if (c.before !== 'did not exist') {
      if ('symlink' in c.before) await op('symlink')(c.before.symlink, c.path);
      else await fs.writeFile(c.path, await readSaved(dir, c.before.saved, manifestPath), { mode: c.before.mode });
    }
    return 0;
  }
  if (now?.type !== 'file' || now.sha256 !== c.after.sha256) return 'changed since adaptation';
  if (c.kind === 'append') {
    const orig = (await fs.readFile(c.path)).subarray(0, c.before.size);
    if (sha256(orig) !== c.before.sha256) return `its first ${c.before.size} bytes are not the original any more`;
    await fs.writeFile(c.path, orig);
  } else if (c.before === 'did not exist') {
    await op('unlink')(c.path);
  } else {
    await fs.writeFile(c.path, await readSaved(dir, c.before.saved, manifestPath));
  }
  return 0;
}

async function undoByChange(m: Manifest, images: BlockImage[], dir: string, manifestPath: string): Promise<UndoResult> {
  const guest = await openGuest(images, { writable: true });
  const skipped: string[] = [];
  let restored = 0;
  let bytes = 0;
  try {
    for (const c of [...m.changes].reverse()) {
      const label = c.kind === 'raw' ? `disk ${c.disk} bytes ${c.offset}-${c.offset + c.length - 1} (${c.why})` : `${c.guestPath} (${c.why})`;
      let r: number | string;
      try {
        r = await undoOne(c, guest, images, dir, manifestPath);
      } catch (e) {
        // one change that cannot be taken back (a FAT file system cannot unlink here) does not stop the others
        if (!isPolyvisorError(e) || e.code === 'ERR_IO') throw e;
        r = e.message;
      }
      if (typeof r === 'string') skipped.push(`${label}: ${r}`);
      else {
        restored++;
        bytes += r;
      }
    }
  } finally {
    await guest.close();
  }
  return { manifest: manifestPath, method: 'by change', restored, skipped, bytes };
}

/**
 * The manifest of the latest adaptation not undone yet that wrote `image` (an overlay, or a
 * disk adapted in place), looked for beside it.
 */
export async function findManifestFor(image: string): Promise<string> {
  const abs = resolve(image);
  let names: string[];
  try {
    names = await readdir(dirname(abs));
  } catch (e) {
    throw fromSystemError(e, dirname(abs), 'listing');
  }
  let best: { path: string; created: string } | undefined;
  for (const n of names.filter((x) => x.endsWith('.json')).sort()) {
    const p = join(dirname(abs), n);
    let m: Manifest;
    try {
      m = await readManifest(p);
    } catch {
      continue;
    }
    if (m.undone || !m.disks.some((d) => d.path === abs)) continue;
    if (!best || m.created > best.created) best = { path: p, created: m.created };
  }
  if (!best) throw new PolyvisorError('ERR_NOT_FOUND', 'no adaptation manifest beside it records this disk (give the manifest itself)', { file: image });
  return best.path;
}
