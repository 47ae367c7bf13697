/**
 * Test helpers: temporary folders, and qemu-img / qemu-io, the oracle for every format.
 */
import { execFile, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import assert from 'node:assert/strict';
import type { BlockImage } from '../src/disk/image.js';
import { isPolyvisorError, type ErrorCode } from '../src/errors.js';

const run = promisify(execFile);

export async function tempDir(t?: { after(fn: () => Promise<void> | void): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'pv-test-'));
  if (t) t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

export async function qemuImg(...args: string[]): Promise<string> {
  const { stdout } = await run('qemu-img', args, { maxBuffer: 64 << 20 });
  return stdout;
}

/** Runs qemu-img and returns its exit status and output instead of throwing. */
export function qemuImgStatus(...args: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync('qemu-img', args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Runs qemu-io commands ("write -P 0xab 0 64k") against an image. */
export async function qemuIo(file: string, format: string, ...cmds: string[]): Promise<string> {
  const args = ['-f', format];
  for (const c of cmds) args.push('-c', c);
  args.push(file);
  const { stdout } = await run('qemu-io', args, { maxBuffer: 64 << 20 });
  if (/error|failed/i.test(stdout)) throw new Error(`qemu-io ${cmds.join('; ')} on ${file}: ${stdout}`);
  return stdout;
}

export async function qemuInfo(file: string): Promise<Record<string, any>> {
  return JSON.parse(await qemuImg('info', '--output=json', file));
}

/** SHA-256 of the whole guest-visible content of an image, read through Polyvisor. */
export async function imageDigest(img: BlockImage, chunk = 1 << 20): Promise<string> {
  const h = createHash('sha256');
  const buf = Buffer.alloc(chunk);
  for (let pos = 0; pos < img.virtualSize; pos += chunk) {
    const n = Math.min(chunk, img.virtualSize - pos);
    const b = buf.subarray(0, n);
    await img.read(b, pos);
    h.update(b);
  }
  return h.digest('hex');
}

/** SHA-256 of the guest-visible content as qemu-img sees it (converted to raw on the way). */
export async function qemuDigest(file: string, format: string, dir: string): Promise<string> {
  const out = join(dir, `digest-${Math.random().toString(36).slice(2)}.raw`);
  await qemuImg('convert', '-f', format, '-O', 'raw', file, out);
  const { stdout } = await run('sha256sum', [out]);
  await rm(out, { force: true });
  return stdout.split(' ')[0]!;
}

/** Deterministic pseudo-random bytes (xorshift), so tests need no committed blobs. */
export function patternBytes(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b.writeUInt32LE(x, i <= length - 4 ? i : length - 4);
  }
  return b;
}

/** Asserts `p` rejects with a PolyvisorError of `code` whose message names `file` (and `words`). */
export async function rejectsWith(p: Promise<unknown>, code: ErrorCode, file: string, ...words: string[]): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(isPolyvisorError(e), `expected a PolyvisorError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.ok(e.message.includes(file), `message names the file: ${e.message}`);
    for (const w of words) assert.ok(e.message.includes(w), `message mentions "${w}": ${e.message}`);
    return true;
  });
}

/** The whole guest content of a small image. */
export async function readAll(img: BlockImage): Promise<Buffer> {
  const b = Buffer.alloc(img.virtualSize);
  await img.read(b, 0);
  return b;
}

/** Asserts `fn` throws a PolyvisorError of `code` whose message mentions every one of `words`. */
export function throwsCode(fn: () => unknown, code: ErrorCode | string, ...words: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isPolyvisorError(e), `expected a PolyvisorError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    for (const w of words) assert.ok(e.message.includes(w), `message mentions "${w}": ${e.message}`);
    return true;
  });
}

/**
 * Golden-file check, as libvirt's tests do: `actual` must equal the file at `path`.
 * UPDATE_GOLDEN=1 rewrites the file instead (then review the diff by eye).
 */
export function assertGolden(path: string, actual: string): void {
  if (process.env.UPDATE_GOLDEN === '1') {
    writeFileSync(path, actual);
    return;
  }
  assert.ok(existsSync(path), `golden file ${path} is missing: run the tests with UPDATE_GOLDEN=1 and review it`);
  assert.equal(actual, readFileSync(path, 'utf8'), `${path} differs from the golden (UPDATE_GOLDEN=1 rewrites it)`);
}

/** Asserts that qemu-img reads `file` (qemu's format name `qfmt`) as exactly `expected`. */
export async function assertQemuReads(file: string, qfmt: string, expected: Buffer, dir: string): Promise<void> {
  const raw = join(dir, `expected-${Math.random().toString(36).slice(2)}.raw`);
  await writeFile(raw, expected);
  const r = qemuImgStatus('compare', '-f', qfmt, '-F', 'raw', file, raw);
  assert.equal(r.status, 0, `qemu-img compare: ${r.stdout}${r.stderr}`);
}

/** xorshift32: every case is reproducible from its seed. */
export function rng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 0x9e3779b9;
  return (n: number) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
}
