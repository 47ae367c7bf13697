/**
 * Shared pieces of the guest-adaptation tests: qcow2 overlays over the cached Debian guests
 * (test/guests/debian.ts) so the cache is never written, a way to edit a guest through
 * Polyvisor's own writers (to make hostile or networked sources), the file of a guest read
 * back, and a boot under QEMU that waits for the guest's marker.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { rm } from 'node:fs/promises';
import { openImage } from '../../src/disk/chain.js';
import type { ExtFs } from '../../src/guest/ext4.js';
import { openGuest, type Guest } from '../../src/guest/open.js';
import { qemuImg, tempDir } from '../helpers.js';
import { buildDebianGuest, DEBIAN_MARKER, qemuDiskArgs, runQemuConsole, type DebianGuest, type DebianKind, type DiskBus } from '../guests/debian.js';

const run = promisify(execFile);

export const MARKER_LINE = new RegExp(`${DEBIAN_MARKER} (\\S+) (\\S+)\\r?\\n`);
export const ALERT = /ALERT!\s+(\S+) does not exist\.\s+Dropping to a shell!/;
export const PANIC = /Kernel panic/;
const BOOT_TIMEOUT = 10 * 60_000;

/** In a describe block: the cached Debian guest of `kind` and a temporary folder, ready in its tests. */
export function useDebian(kind: DebianKind): { readonly g: DebianGuest; readonly dir: string } {
  const ctx = {} as { g: DebianGuest; dir: string };
  before(async () => {
    ctx.g = await buildDebianGuest(kind);
    ctx.dir = await tempDir();
  });
  after(() => rm(ctx.dir, { recursive: true, force: true }));
  return ctx;
}

/** A qcow2 overlay `name` in `dir` over the cached raw disk of `guest`. */
export async function overlayOf(dir: string, guest: DebianGuest, name: string): Promise<string> {
  const file = join(dir, name);
  await qemuImg('create', '-q', '-f', 'qcow2', '-b', guest.disk, '-F', 'raw', file);
  return file;
}

/** Opens the guest on `file` for writing through Polyvisor's own writers, runs `fn`, closes it. */
export async function editGuest(file: string, fn: (g: Guest) => Promise<void>): Promise<void> {
  const img = await openImage(file, { writable: true, allowOutsidePaths: true });
  try {
    const g = await openGuest([img], { writable: true });
    try {
      await fn(g);
    } finally {
      await g.close();
    }
  } finally {
    await img.close();
  }
}

/** Reads the guest on `file` (read-only). */
export async function readGuest<T>(file: string, fn: (g: Guest) => Promise<T>): Promise<T> {
  const img = await openImage(file, { allowOutsidePaths: true });
  try {
    const g = await openGuest([img]);
    try {
      return await fn(g);
    } finally {
      await g.close();
    }
  } finally {
    await img.close();
  }
}

/** The guest's root file system, with the ext4 operations beyond GuestFs (symlink, unlink, mkdir). */
export function rootFs(g: Guest): ExtFs {
  assert.ok(g.root?.fs && g.root.fs.type.startsWith('ext'), 'the guest has an ext root file system');
  return g.root.fs as ExtFs;
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** qemu-img compare's verdict: 0 identical, 1 different (with its message). */
export async function qemuCompare(a: string, b: string): Promise<{ status: number; text: string }> {
  try {
    const { stdout } = await run('qemu-img', ['compare', a, b], { maxBuffer: 1 << 20 });
    return { status: 0, text: stdout.trim() };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { status: err.code ?? -1, text: `${err.stdout ?? ''}${err.stderr ?? ''}`.trim() };
  }
}

/** A raw copy of `image` (pygrub reads raw disks only). */
export async function rawCopy(image: string, out: string): Promise<string> {
  await qemuImg('convert', '-O', 'raw', image, out);
  return out;
}

export interface Boot {
  output: string;
  seconds: number;
  kind?: string;
  root?: string;
  exited: boolean;
  exitCode: number | null;
}

/** Boots `disk` (qcow2) on `bus` under QEMU until the guest's marker (or it gives up). */
export async function bootDisk(disk: string, bus: DiskBus, extra: string[] = []): Promise<Boot> {
  const r = await runQemuConsole(['-nographic', '-no-reboot', '-m', '1024', ...extra, ...qemuDiskArgs(bus, disk)], {
    until: [MARKER_LINE, ALERT, PANIC],
    timeoutMs: BOOT_TIMEOUT,
    // the guest powers off a second or two after its marker; runQemuConsole leaves this timer
    // running, so it is kept short
    waitExitMs: 30_000,
  });
  assert.equal(r.stop, MARKER_LINE, `no marker on ${bus}:\n${r.output.slice(-3000)}`);
  const m = MARKER_LINE.exec(r.output)!;
  return { output: r.output, seconds: r.seconds, kind: m[1], root: m[2], exited: r.exited, exitCode: r.exitCode };
}
