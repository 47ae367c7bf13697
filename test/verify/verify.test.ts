/**
 * Boot verification: real boots of the tiny test guest under TCG, from a libvirt descriptor
 * with a qcow2 disk (read by QEMU through an overlay) and a VHDX differencing disk (which QEMU
 * cannot follow: served by Polyvisor's NBD server under an overlay).
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createImage, openImage } from '../../src/disk/chain.js';
import { attachDisks } from '../../src/hosts/attach.js';
import { openVmSource } from '../../src/vm/source.js';
import { verifyVm } from '../../src/verify/verify.js';
import { verifyCommand } from '../../src/cli/verify.js';
import { makeTestDisk, GUEST_MARKER, type TestGuest } from '../guests/build.js';
import { buildVariantGuest, DONE_MARKER, type GuestVariant } from '../guests/variants.js';
import { imageDigest, qemuImg, tempDir } from '../helpers.js';

const run = promisify(execFile);
const HAVE_QEMU = spawnSync('qemu-system-x86_64', ['--version']).status === 0 && spawnSync('qemu-img', ['--version']).status === 0;

async function sha256File(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

/** pids of processes whose command line mentions `needle` (async: the NBD server shares this process) */
async function processesMentioning(needle: string): Promise<string[]> {
  try {
    const { stdout } = await run('pgrep', ['-f', needle]);
    return stdout.split('\n').filter(Boolean);
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
}

function domainXml(name: string, guest: TestGuest, cmdline: string, disks: Array<{ file: string; type: string; dev: string }>): string {
  const d = disks
    .map((x) => `    <disk type='file' device='disk'><driver name='qemu' type='${x.type}'/><source file='${x.file}'/><target dev='${x.dev}' bus='virtio'/></disk>`)
    .join('\n');
  return `<domain type='kvm'>
  <name>${name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>${guest.kernel}</kernel><initrd>${guest.initrd}</initrd><cmdline>${cmdline}</cmdline></os>
  <devices>
${d}
  </devices>
</domain>
`;
}

test('qemu-system-x86_64 and qemu-img are installed (.ci/run and npm start install them)', () => {
  assert.ok(HAVE_QEMU, 'apt-get install qemu-system-x86 qemu-utils');
});

describe('verify: real boots under TCG', () => {
  let dir: string;
  let rawDigest: string;
  let childDigest: string;
  const before_: Record<string, string> = {};
  const sources = ['a.qcow2', 'parent.vhdx', 'child.vhdx'];
  const xml: Record<string, string> = {};

  before(async () => {
    dir = await tempDir();
    const [good, panic, hang, reboot, pvpanic] = await Promise.all(['all-disks', 'panic', 'hang', 'reboot', 'pvpanic'].map((v) => buildVariantGuest(v as GuestVariant)));
    rawDigest = await makeTestDisk(join(dir, 'base.raw'));
    await qemuImg('convert', '-f', 'raw', '-O', 'qcow2', join(dir, 'base.raw'), join(dir, 'a.qcow2'));
    await qemuImg('convert', '-f', 'raw', '-O', 'vhdx', join(dir, 'base.raw'), join(dir, 'parent.vhdx'));
    await rm(join(dir, 'base.raw'));
    // a VHDX differencing child written by Polyvisor: its content differs from the parent's
    const child = await createImage(join(dir, 'child.vhdx'), 'vhdx', undefined, { backingFile: 'parent.vhdx' });
    await child.write(Buffer.alloc(64 * 1024, 0x5a), 1 << 20);
    await child.close();
    const img = await openImage(join(dir, 'child.vhdx'));
    childDigest = await imageDigest(img);
    await img.close();
    assert.notEqual(childDigest, rawDigest);
    for (const f of sources) before_[f] = await sha256File(join(dir, f));

    const both = [
      { file: 'a.qcow2', type: 'qcow2', dev: 'vda' },
      { file: 'child.vhdx', type: 'vhdx', dev: 'vdb' },
    ];
    const one = both.slice(0, 1);
    xml.good = join(dir, 'good.xml');
    xml.panic = join(dir, 'panic.xml');
    xml.hang = join(dir, 'hang.xml');
    xml.reboot = join(dir, 'reboot.xml');
    xml.pvpanic = join(dir, 'pvpanic.xml');
    await writeFile(xml.pvpanic, domainXml('vt-pvpanic', pvpanic!, 'console=ttyS0 quiet', one));
    await writeFile(xml.reboot, domainXml('vt-reboot', reboot!, 'console=ttyS0 quiet', one));
    await writeFile(xml.good, domainXml('vt-good', good!, 'console=ttyS0 quiet pv.hold', both));
    await writeFile(xml.panic, domainXml('vt-panic', panic!, 'console=ttyS0', one));
    await writeFile(xml.hang, domainXml('vt-hang', hang!, 'console=ttyS0 quiet', one));
  });

  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('attach: the qcow2 is read by QEMU, the VHDX differencing child is served over NBD', async () => {
    const src = await openVmSource(xml.good!);
    const a = await attachDisks(src, { tmpRoot: dir });
    try {
      assert.deepEqual(
        a.disks.map((d) => d.via),
        ['direct', 'nbd'],
      );
      assert.ok(a.attachments.every((x) => x?.format === 'qcow2' && x.path && existsSync(x.path)), 'every disk sits behind a qcow2 overlay');
      const info = JSON.parse(await qemuImg('info', '-U', '--output=json', a.attachments[1]!.path!));
      assert.match(info['backing-filename'], /^nbd\+unix:\/\/\/disk1\?socket=/);
    } finally {
      await a.close();
      await src.close();
    }
    await assert.rejects(
      (async () => {
        const s = await openVmSource(xml.good!);
        try {
          await attachDisks(s, { tmpRoot: dir, persist: true });
        } finally {
          await s.close();
        }
      })(),
      /cannot be attached for writing/,
    );
  });

  test('a good guest: the expected text appears and both disks read back with the host-side digests', async () => {
    const src = await openVmSource(xml.good!);
    const outDir = join(dir, 'out-good');
    try {
      const r = await verifyVm(src, { expect: DONE_MARKER, timeoutMs: 60_000, outDir, accel: 'tcg', tmpRoot: dir, allowOutsidePaths: true });
      console.log(`# good guest: ${r.reason} after ${r.seconds} s`);
      assert.equal(r.reason, 'expected-text', `console: ${readFileSync(r.consoleLog, 'utf8').slice(-2000)}`);
      assert.equal(r.ok, true);
      assert.equal(r.matched, DONE_MARKER);
      const log = readFileSync(r.consoleLog, 'utf8');
      assert.ok(log.includes(`POLYVISOR-DISK vda ${rawDigest}`), 'the qcow2 disk reads as the raw original');
      assert.ok(log.includes(`POLYVISOR-DISK vdb ${childDigest}`), 'the VHDX chain over NBD reads as Polyvisor reads it');
      assert.ok(r.screenshot && readFileSync(r.screenshot).subarray(1, 4).toString() === 'PNG');
    } finally {
      await src.close();
    }
  });

  test('a guest whose init exits: kernel-panic', async () => {
    const src = await openVmSource(xml.panic!);
    try {
      const r = await verifyVm(src, { expect: GUEST_MARKER, timeoutMs: 60_000, outDir: join(dir, 'out-panic'), accel: 'tcg', tmpRoot: dir, allowOutsidePaths: true });
      console.log(`# panicking guest: ${r.reason} after ${r.seconds} s`);
      assert.equal(r.ok, false);
      assert.equal(r.reason, 'kernel-panic');
      assert.match(r.matched!, /Attempted to kill init/);
      assert.match(readFileSync(r.consoleLog, 'utf8'), /POLYVISOR-GOING-DOWN/);
      assert.ok(r.screenshot && existsSync(r.screenshot));
    } finally {
      await src.close();
    }
  });

  test('a guest that reports a panic through pvpanic and prints none: guest-panicked (the QMP event)', async () => {
    const src = await openVmSource(xml.pvpanic!);
    try {
      const r = await verifyVm(src, { expect: GUEST_MARKER, timeoutMs: 60_000, outDir: join(dir, 'out-pvpanic'), accel: 'tcg', tmpRoot: dir, allowOutsidePaths: true });
      console.log(`# pvpanic guest: ${r.reason} after ${r.seconds} s`);
      assert.equal(r.ok, false);
      assert.equal(r.reason, 'guest-panicked');
      const log = readFileSync(r.consoleLog, 'utf8');
      assert.match(log, /POLYVISOR-SIGNALLING/);
      assert.doesNotMatch(log, /Kernel panic/, 'no panic text: only the event can have told');
    } finally {
      await src.close();
    }
  });

  test('a guest that hangs silently: timeout, through the CLI (exit status 1, JSON)', async () => {
    const outDir = join(dir, 'out-hang');
    await mkdir(outDir);
    const chunks: string[] = [];
    const write = process.stdout.write;
    process.stdout.write = ((s: string | Uint8Array) => (chunks.push(String(s)), true)) as typeof process.stdout.write;
    const started = Date.now();
    try {
      await verifyCommand().parseAsync(['node', 'verify', xml.hang!, '--expect', GUEST_MARKER, '--timeout', '6', '--out', outDir, '--accel', 'tcg', '--json', '--allow-outside-paths']);
    } finally {
      process.stdout.write = write;
    }
    const r = JSON.parse(chunks.join(''));
    console.log(`# hanging guest: ${r.reason} after ${r.seconds} s (wall ${(Date.now() - started) / 1000} s)`);
    assert.equal(process.exitCode, 1);
    process.exitCode = 0;
    assert.equal(r.ok, false);
    assert.equal(r.reason, 'timeout', r.detail);
    assert.ok(r.seconds >= 6 && r.seconds < 15);
    assert.equal(r.consoleLog, join(outDir, 'console.log'));
    assert.ok(existsSync(r.consoleLog));
    assert.ok(existsSync(join(outDir, 'screenshot.png')));
  });

  test('a guest that reboots at once, every boot: reboot-loop', async () => {
    const src = await openVmSource(xml.reboot!);
    try {
      const r = await verifyVm(src, { expect: GUEST_MARKER, timeoutMs: 60_000, maxResets: 1, outDir: join(dir, 'out-reboot'), accel: 'tcg', tmpRoot: dir, allowOutsidePaths: true });
      console.log(`# rebooting guest: ${r.reason} after ${r.seconds} s (${r.detail})`);
      assert.equal(r.ok, false);
      assert.equal(r.reason, 'reboot-loop');
      assert.ok((readFileSync(r.consoleLog, 'utf8').match(/POLYVISOR-REBOOTING/g) ?? []).length >= 2);
    } finally {
      await src.close();
    }
  });

  test('the source disks are byte-for-byte unchanged and no QEMU is left', async () => {
    for (const f of sources) assert.equal(await sha256File(join(dir, f)), before_[f], `${f} changed`);
    assert.deepEqual(await processesMentioning(dir), []);
    assert.deepEqual(await processesMentioning('pv-verify-'), []);
    // only the sources, descriptors and outputs remain: overlays and state folders are gone
    const left = spawnSync('find', [dir, '-name', '*.sock', '-o', '-name', 'pv-attach-*', '-o', '-name', 'pv-verify-*'], { encoding: 'utf8' }).stdout.trim();
    assert.equal(left, '');
  });
});
