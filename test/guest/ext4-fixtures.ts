/**
 * Fixtures for the ext2/3/4 tests: source trees, images made by e2fsprogs (mke2fs -d, no root
 * and no mounts), and the e2fsprogs oracles (debugfs, e2fsck, dumpe2fs). Nothing is committed:
 * every image is built from scratch in a temporary folder.
 */
import { spawnSync } from 'node:child_process';
import { chmod, lstat, mkdir, readFile, readdir, readlink, symlink, truncate, utimes, writeFile, open } from 'node:fs/promises';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { openImage } from '../../src/disk/chain.js';
import type { BlockImage } from '../../src/disk/image.js';
import { PolyvisorError, isPolyvisorError } from '../../src/errors.js';
import type { ExtFs } from '../../src/guest/ext4.js';
import { imageVolume, type Volume } from '../../src/guest/volume.js';
import { patternBytes } from '../helpers.js';

export interface Tool {
  status: number;
  stdout: string;
  stderr: string;
}

/** Runs an e2fsprogs (or other) tool; the tests fail, never skip, when it is missing. */
export function tool(cmd: string, args: string[], input?: string): Tool {
  const r = spawnSync(cmd, args, { encoding: 'latin1', maxBuffer: 256 << 20, input });
  if (r.error) throw new Error(`${cmd} could not run (${r.error.message}): install the Debian package e2fsprogs`);
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export interface MkfsOptions {
  type: 'ext2' | 'ext3' | 'ext4';
  blockSize?: number;
  /** -O list, e.g. "^metadata_csum,^64bit" */
  features?: string;
  /** -I inode size */
  inodeSize?: number;
  label?: string;
  /** mke2fs size argument ("64M") */
  size: string;
  src?: string;
  /** then e2fsck -fyD: directories of more than one block get a hash index (mke2fs -d makes none) */
  index?: boolean;
}

/** mke2fs -d: an image populated from a host folder, as the guest would have it. */
export function mkfs(img: string, o: MkfsOptions): void {
  const args = ['-q', '-F', '-t', o.type];
  if (o.blockSize) args.push('-b', String(o.blockSize));
  if (o.features) args.push('-O', o.features);
  if (o.inodeSize) args.push('-I', String(o.inodeSize));
  if (o.label) args.push('-L', o.label);
  if (o.src) args.push('-d', o.src);
  // a fixed creation time keeps runs comparable; UUIDs and hash seeds stay random, as in real guests
  const r = spawnSync('mke2fs', [...args, img, o.size], { encoding: 'utf8', env: { ...process.env, E2FSPROGS_FAKE_TIME: '1700000000' } });
  if (r.error) throw new Error(`mke2fs could not run (${r.error.message}): install the Debian package e2fsprogs`);
  assert.equal(r.status, 0, `mke2fs ${args.join(' ')}: ${r.stderr}`);
  if (o.index) {
    const f = tool('e2fsck', ['-fyD', img]);
    assert.ok(f.status === 0 || f.status === 1, `e2fsck -fyD: ${f.stdout}${f.stderr}`);
  }
}

export function debugfs(img: string, request: string, writable = false): string {
  const r = tool('debugfs', [...(writable ? ['-w'] : []), '-R', request, img]);
  assert.equal(r.status, 0, `debugfs -R "${request}": ${r.stderr}`);
  return r.stdout;
}

/** debugfs with a script of several requests (-f -). */
export function debugfsScript(img: string, lines: string[], writable = true): string {
  const r = tool('debugfs', [...(writable ? ['-w'] : []), '-f', '-', img], lines.join('\n') + '\n');
  assert.equal(r.status, 0, `debugfs script: ${r.stderr}`);
  return r.stdout;
}

/** debugfs "cat" as raw bytes. */
export function debugfsCat(img: string, path: string): Buffer {
  const r = spawnSync('debugfs', ['-R', `cat "${path}"`, img], { maxBuffer: 256 << 20 });
  assert.equal(r.status, 0, String(r.stderr));
  return r.stdout;
}

/** e2fsck -fn: exit status 0 means a clean file system, nothing to fix. */
export function assertFsckClean(img: string): void {
  const r = tool('e2fsck', ['-fn', img]);
  assert.equal(r.status, 0, `e2fsck -fn ${img} exited ${r.status}:\n${r.stdout}${r.stderr}`);
}

/** A file-system image opened through the disk engine (raw or any format), as a Volume. */
export async function openVolume(path: string, writable: boolean): Promise<{ volume: Volume; image: BlockImage }> {
  const image = await openImage(path, { writable });
  return { volume: imageVolume(image), image };
}

/** A Volume over bytes in memory (fuzzing: no file per mutant). */
export function memoryVolume(bytes: Buffer, name: string, readOnly = true): Volume {
  const v: Volume = {
    name,
    size: bytes.length,
    readOnly,
    async read(offset, length) {
      if (offset < 0 || length < 0 || offset + length > bytes.length) throw new PolyvisorError('ERR_RANGE', `read of ${length} bytes at ${offset} lies outside the volume`, { file: name });
      return Buffer.from(bytes.subarray(offset, offset + length));
    },
    async write(offset, data) {
      if (readOnly) throw new PolyvisorError('ERR_READ_ONLY', 'read-only', { file: name });
      if (offset < 0 || offset + data.length > bytes.length) throw new PolyvisorError('ERR_RANGE', `write of ${data.length} bytes at ${offset} lies outside the volume`, { file: name });
      bytes.set(data, offset);
    },
    async flush() {},
  };
  return v;
}

/** Reproducible random numbers 0..n-1 from a seed (the xorshift stream of patternBytes). */
export function rng(seed: number): (n: number) => number {
  let pool = patternBytes(4096, seed);
  let at = 0;
  let refills = 0;
  return (n) => {
    if (at + 4 > pool.length) {
      pool = patternBytes(4096, (seed + ++refills * 0x9e3779b9) >>> 0);
      at = 0;
    }
    const v = pool.readUInt32LE(at);
    at += 4;
    return v % n;
  };
}

/** Deterministic bytes of any length (patternBytes needs at least 4). */
export function bytes(n: number, seed: number): Buffer {
  return Buffer.from(patternBytes(Math.max(n, 4), seed).subarray(0, n));
}

/** The guest's own /etc/passwd: what an absolute symlink must read, never the host's. */
export const GUEST_PASSWD = 'guestroot:x:0:0:guest root, not the host:/root:/bin/sh\n';

/**
 * A guest-like tree with every shape the reader must handle: files of sizes around 1 KiB and 4
 * KiB blocks, past the direct and indirect block pointers, a sparse file, fast and slow
 * symlinks (relative, absolute, dangling, looping, climbing above the root), a hash-indexed
 * directory of 3000 entries, deep nesting, odd names and modes.
 */
export async function buildSource(dir: string): Promise<void> {
  await mkdir(join(dir, 'etc'), { recursive: true });
  await writeFile(join(dir, 'etc/passwd'), GUEST_PASSWD);
  await writeFile(join(dir, 'etc/fstab'), 'UUID=1234 / ext4 errors=remount-ro 0 1\n');
  await mkdir(join(dir, 'sizes'));
  const sizes = [0, 1, 59, 60, 61, 1023, 1024, 1025, 2048, 4095, 4096, 4097, 12 * 1024 + 1, 12 * 4096 + 1, 300 * 1024, 3 << 20];
  for (const [i, n] of sizes.entries()) await writeFile(join(dir, 'sizes', `f${n}`), bytes(n, 100 + i));
  // sparse: data, a hole of megabytes, data, a hole to the end
  const sparse = join(dir, 'sparse.bin');
  const fh = await open(sparse, 'w');
  await fh.write(patternBytes(5000, 7), 0, 5000, 0);
  await fh.write(patternBytes(8192, 8), 0, 8192, 3 << 20);
  await fh.close();
  await truncate(sparse, 9 << 20);
  await symlink('etc/passwd', join(dir, 'fast-rel'));
  await symlink('/etc/passwd', join(dir, 'fast-abs'));
  await symlink('../../../../../../etc/passwd', join(dir, 'climb'));
  await symlink('/' + 'etc/../'.repeat(20) + 'etc/passwd', join(dir, 'slow-abs'));
  await symlink('/nowhere/at/all', join(dir, 'dangling'));
  await symlink('loop-b', join(dir, 'loop-a'));
  await symlink('loop-a', join(dir, 'loop-b'));
  await symlink('self', join(dir, 'self'));
  await symlink('etc', join(dir, 'etc-link'));
  await mkdir(join(dir, 'big'));
  for (let i = 0; i < 3000; i++) await writeFile(join(dir, 'big', `entry-${i}-${'n'.repeat(i % 40)}`), `${i}\n`);
  let deep = join(dir, 'deep');
  for (let i = 0; i < 24; i++) deep = join(deep, `level${i}`);
  await mkdir(deep, { recursive: true });
  await writeFile(join(deep, 'bottom.txt'), 'the bottom\n');
  await writeFile(join(dir, 'ünïcödé ✓.txt'), 'utf-8 name\n');
  await writeFile(join(dir, 'setuid'), '#!/bin/sh\n');
  await chmod(join(dir, 'setuid'), 0o4755);
  await writeFile(join(dir, 'private'), 'secret\n');
  await chmod(join(dir, 'private'), 0o600);
  await utimes(join(dir, 'private'), 1234567890, 1234567890);
  await mkdir(join(dir, 'empty-dir'));
}

/** Every path under `dir` (relative, with "/" first), folders before their contents. */
export async function walkHost(dir: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of (await readdir(join(dir, rel), { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const p = `${rel}/${e.name}`;
    out.push(p);
    if (e.isDirectory()) out.push(...(await walkHost(dir, p)));
  }
  return out;
}

/** Compares the whole guest tree with the host folder it was built from: types, modes, sizes, bytes, link targets, listings. */
export async function compareTree(fs: ExtFs, src: string, except: string[] = []): Promise<number> {
  let checked = 0;
  for (const p of await walkHost(src)) {
    if (except.includes(p)) continue;
    const h = await lstat(join(src, p));
    const g = await fs.lstat(p);
    assert.equal(g.mode & 0o7777, h.mode & 0o7777, `${p}: permissions`);
    if (h.isSymbolicLink()) {
      assert.equal(g.type, 'symlink', p);
      assert.equal(await fs.readlink(p), await readlink(join(src, p)), `${p}: link target`);
    } else if (h.isDirectory()) {
      assert.equal(g.type, 'directory', p);
      const names = (await fs.readdir(p)).map((e) => e.name).filter((n) => n !== 'lost+found').sort();
      assert.deepEqual(names, (await readdir(join(src, p))).sort(), `${p}: listing`);
    } else {
      assert.equal(g.type, 'file', p);
      assert.equal(g.size, h.size, `${p}: size`);
      assert.equal(g.mtime, Math.floor(h.mtimeMs / 1000), `${p}: mtime`);
      assert.ok((await fs.readFile(p)).equals(await readFile(join(src, p))), `${p}: content`);
    }
    checked++;
  }
  return checked;
}

export function isCodedError(e: unknown): e is PolyvisorError {
  return isPolyvisorError(e) && e.code !== 'ERR_INTERNAL';
}
