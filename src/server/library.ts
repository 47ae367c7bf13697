/**
 * The library: the folder under the data folder (<data>/library) that holds what VMs are made
 * from and exported to: disk images, descriptors, packages. The API names files by their path
 * relative to it, and never reaches outside it: a path with `..`, an absolute path, a hidden
 * segment (uploads in progress are hidden files) or a symbolic link out of the folder is
 * refused.
 *
 * Uploads stream to a hidden temporary file beside the destination while their SHA-256 is
 * computed, and are renamed into place only when complete: nothing is held in memory, and a
 * client that stops half way, or sends more than the limit, leaves nothing behind.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { lstat, mkdir, readdir, realpath, rename, rm, stat } from 'node:fs/promises';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { PolyvisorError, fromSystemError } from '../errors.js';
import { ServerError } from './http-errors.js';

/** The most entries one listing returns. */
export const MAX_LISTING = 10_000;
/** How deep a listing walks. */
const MAX_DEPTH = 8;

export interface LibraryEntry {
  path: string;
  type: 'file' | 'folder';
  size: number;
  modifiedAt: string;
}

export class Library {
  readonly root: string;
  readonly uploadLimit: number;

  constructor(dataDir: string, opts: { uploadLimit: number }) {
    this.root = resolve(dataDir, 'library');
    this.uploadLimit = opts.uploadLimit;
  }

  /** The absolute path of a library path; throws ERR_USAGE for any path that leaves the library. */
  resolve(rel: string): string {
    if (rel.includes('\0')) throw new PolyvisorError('ERR_USAGE', 'library path: contains a NUL byte');
    const segments = rel.split('/').filter((s) => s !== '' && s !== '.');
    if (rel.startsWith('/') || segments.some((s) => s === '..')) throw new PolyvisorError('ERR_USAGE', `library path ${JSON.stringify(rel)}: give a path inside the library, without '..'`);
    if (segments.some((s) => s.startsWith('.'))) throw new PolyvisorError('ERR_USAGE', `library path ${JSON.stringify(rel)}: names starting with '.' are reserved`);
    if (segments.length === 0) return this.root;
    return join(this.root, ...segments);
  }

  /** Like resolve(), and the file must exist with its real path (links followed) inside the library. */
  async existing(rel: string): Promise<string> {
    const path = this.resolve(rel);
    let real: string;
    try {
      real = await realpath(path);
    } catch (e) {
      throw fromSystemError(e, rel, 'library');
    }
    const root = await realpath(this.root).catch(() => this.root);
    if (real !== root && !real.startsWith(root + sep)) throw new PolyvisorError('ERR_PATH_OUTSIDE', 'a link in the library points outside it', { file: rel });
    return path;
  }

  async list(under = ''): Promise<{ items: LibraryEntry[]; truncated: boolean }> {
    const start = under ? await this.existing(under) : this.root;
    await mkdir(this.root, { recursive: true });
    const items: LibraryEntry[] = [];
    let truncated = false;
    const walk = async (dir: string, depth: number): Promise<void> => {
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (e) {
        throw fromSystemError(e, relative(this.root, dir) || '.', 'list');
      }
      entries.sort((a, b) => a.name.localeCompare(b.name));
      for (const d of entries) {
        if (d.name.startsWith('.')) continue;
        if (items.length >= MAX_LISTING) {
          truncated = true;
          return;
        }
        const full = join(dir, d.name);
        // links are listed as what they are, never followed out of the library
        const st = await lstat(full).catch(() => undefined);
        if (!st || !(st.isFile() || st.isDirectory())) continue;
        items.push({ path: relative(this.root, full).split(sep).join('/'), type: st.isDirectory() ? 'folder' : 'file', size: st.isFile() ? st.size : 0, modifiedAt: st.mtime.toISOString() });
        if (st.isDirectory()) {
          if (depth + 1 < MAX_DEPTH) await walk(full, depth + 1);
          else truncated = true;
        }
      }
    };
    const st = await stat(start);
    if (!st.isDirectory()) throw new PolyvisorError('ERR_USAGE', `library path ${JSON.stringify(under)} is a file, not a folder`);
    await walk(start, 0);
    return { items, truncated };
  }

  /**
   * Writes `body` to `rel`, streaming: at most `uploadLimit` bytes (413 past it, the partial
   * file removed), under a hidden name until complete.
   */
  async upload(rel: string, body: Readable, opts: { declaredLength?: number; overwrite?: boolean; signal?: AbortSignal }): Promise<{ path: string; size: number; sha256: string }> {
    const dest = this.resolve(rel);
    if (dest === this.root) throw new PolyvisorError('ERR_USAGE', 'give the uploaded file a name');
    if (opts.declaredLength !== undefined && opts.declaredLength > this.uploadLimit) {
      throw new ServerError('ERR_TOO_LARGE', `the upload is ${opts.declaredLength} bytes; this server takes at most ${this.uploadLimit}`);
    }
    await mkdir(dirname(dest), { recursive: true });
    await this.existing(relative(this.root, dirname(dest)).split(sep).join('/'));
    const existing = await lstat(dest).catch(() => undefined);
    if (existing?.isDirectory()) throw new PolyvisorError('ERR_EXISTS', `${rel} is a folder`);
    if (existing && !opts.overwrite) throw new PolyvisorError('ERR_EXISTS', `${rel} exists; add ?overwrite=true to replace it`);
    const tmp = join(dirname(dest), `.upload-${randomBytes(6).toString('hex')}`);
    const hash = createHash('sha256');
    let size = 0;
    const limit = this.uploadLimit;
    const counter = new Transform({
      transform(chunk: Buffer, _enc, done) {
        size += chunk.length;
        if (size > limit) return done(new ServerError('ERR_TOO_LARGE', `the upload passed ${limit} bytes, the most this server takes`));
        hash.update(chunk);
        done(null, chunk);
      },
    });
    try {
      await pipeline(body, counter, createWriteStream(tmp, { flags: 'wx', mode: 0o600 }), { signal: opts.signal });
      if (opts.declaredLength !== undefined && size !== opts.declaredLength) throw new PolyvisorError('ERR_TRUNCATED', `the upload ended after ${size} of ${opts.declaredLength} bytes`, { file: rel });
      await rename(tmp, dest);
    } catch (e) {
      await rm(tmp, { force: true });
      if (e instanceof ServerError || e instanceof PolyvisorError) throw e;
      throw fromSystemError(e, rel, 'upload');
    }
    return { path: relative(this.root, dest).split(sep).join('/'), size, sha256: hash.digest('hex') };
  }

  /** Removes a file, or a folder with everything in it. */
  async remove(rel: string): Promise<void> {
    const path = await this.existing(rel);
    if (path === this.root) throw new PolyvisorError('ERR_USAGE', 'the library itself cannot be removed');
    await rm(path, { recursive: true, force: true });
  }
}
