/**
 * Guest adaptation between KVM and VMware, each proved by a boot under QEMU (TCG here):
 *
 *  - the KVM guest (virtio drivers only, root /dev/vda1, its initramfs recompressed with zstd
 *    as Debian 12 makes it) adapted in place for VMware boots on PVSCSI, where before it
 *    stopped at "ALERT! /dev/vda1 does not exist" (debian-boot test): the kernel unpacks the
 *    appended gzip segment after the zstd one; `guest undo` then gives back the disk as it
 *    was (qemu-img compare);
 *  - the VMware guest (vmw_pvscsi only, root /dev/sda1, open-vm-tools) adapted for KVM through
 *    the command line boots on virtio with VMware Tools masked; the source file is unchanged;
 *    the adapted disk is then booted and written by the guest, so `guest undo` goes change by
 *    change, and gives back the source's files.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFile, rm } from 'node:fs/promises';
import { gunzipSync } from 'node:zlib';
import { join } from 'node:path';
import { Command } from 'commander';
import { addAdaptCommands } from '../../src/cli/guest-adapt.js';
import { reportError } from '../../src/cli/run.js';
import { adaptGuest } from '../../src/guest/adapt.js';
import { readInitramfs } from '../../src/guest/initramfs.js';
import { sha256 } from '../../src/guest/journal.js';
import { readManifest, undoAdaptation, type Manifest } from '../../src/guest/manifest.js';
import { qemuImg, tempDir } from '../helpers.js';
import { buildDebianGuest, type DebianGuest } from '../guests/debian.js';
import { bootDisk, editGuest, overlayOf, qemuCompare, readGuest, rootFs, sha256File } from './adapt-fixtures.js';

/** zstd-compressed, as mkinitramfs compresses (the host's zstd, Debian package zstd). */
const zstd = (data: Buffer): Buffer => execFileSync('zstd', ['-q', '-c', '-19'], { input: data, maxBuffer: 256 << 20 });

/** Runs `polyvisor guest ...` in this process; returns what it printed and its exit status. */
export async function guestCli(...args: string[]): Promise<{ stdout: string; stderr: string; status: number }> {
  const cmd = new Command('guest').exitOverride();
  addAdaptCommands(cmd);
  let stdout = '';
  let stderr = '';
  const w1 = process.stdout.write.bind(process.stdout);
  const w2 = process.stderr.write.bind(process.stderr);
  const saved = process.exitCode;
  process.exitCode = 0;
  process.stdout.write = ((s: string) => ((stdout += s), true)) as typeof process.stdout.write;
  process.stderr.write = ((s: string) => ((stderr += s), true)) as typeof process.stderr.write;
  try {
    await cmd.parseAsync(args, { from: 'user' });
  } catch (e) {
    reportError(e, args.includes('--json'));
  } finally {
    process.stdout.write = w1;
    process.stderr.write = w2;
  }
  const status = Number(process.exitCode ?? 0);
  process.exitCode = saved;
  return { stdout, stderr, status };
}

describe('guest adapt: KVM and VMware guests, booted', () => {
  const guests = {} as Record<'kvm' | 'vmware', DebianGuest>;
  let dir: string;
  before(async () => {
    guests.kvm = await buildDebianGuest('kvm');
    guests.vmware = await buildDebianGuest('vmware');
    dir = await tempDir();
  });
  after(() => rm(dir, { recursive: true, force: true }));

  test('the KVM guest, adapted in place for VMware, boots on PVSCSI; undo restores every byte', async (t) => {
    const g = guests.kvm;
    const disk = await overlayOf(dir, g, 'kvm-disk.qcow2');
    // Debian 12 compresses its initramfs with zstd where zstd is installed (initramfs.conf
    // COMPRESS=zstd): this guest's is made so, the gzip segment then follows a zstd one
    await editGuest(disk, async (x) => {
      const p = `/boot/initrd.img-${g.kernelVersion}`;
      await rootFs(x).writeFile(p, zstd(gunzipSync(await x.readFile(p))));
    });
    const before = join(dir, 'kvm-disk-before.qcow2');
    await copyFile(disk, before);
    const r = await adaptGuest([disk], { target: 'vmware', inPlace: true, allowOutsidePaths: true });
    t.diagnostic(`adaptation took ${r.seconds.toFixed(2)} s`);
    assert.deepEqual(r.outputs, [disk]);
    assert.equal(r.manifest, join(dir, 'kvm-disk.manifest.json'));
    assert.deepEqual(r.problems, []);
    assert.ok(r.changes.some((c) => c.kind === 'file' && c.guestPath === '/etc/fstab' && /\/dev\/vda1 -> UUID=/.test(c.why)));
    assert.ok(r.changes.some((c) => c.kind === 'append' && /vmw_pvscsi/.test(c.why) && /sd_mod/.test(c.why)));
    assert.ok(!r.changes.some((c) => c.kind === 'raw'), 'its GRUB is left in place');
    assert.ok(r.notes.some((n) => /boot code already \(grub2\)/.test(n)));

    const boot = join(dir, 'kvm-boot.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'kvm-disk.qcow2', '-F', 'qcow2', boot);
    const b = await bootDisk(boot, 'pvscsi', ['-nic', 'none']);
    t.diagnostic(`marker after ${b.seconds.toFixed(1)} s under TCG`);
    assert.equal(b.kind, 'kvm');
    assert.equal(b.root, '/dev/sda1');

    const ir = await readGuest(disk, async (x) => readInitramfs(await x.readFile(`/boot/initrd.img-${g.kernelVersion}`)));
    assert.deepEqual(ir.segments.map((s) => s.compression), ['zstd', 'gzip']);

    const u = await undoAdaptation(r.manifest);
    assert.equal(u.method, 'exact');
    const cmp = await qemuCompare(before, disk);
    assert.equal(cmp.status, 0, cmp.text);
  });

  test('the VMware guest, adapted for KVM by the command line, boots on virtio; after that boot, undo goes file by file', async (t) => {
    const g = guests.vmware;
    const out = join(dir, 'vmware.kvm.qcow2');
    const sourceSha = await sha256File(g.disk);
    const a = await guestCli('adapt', g.disk, '--for', 'kvm', '--out', out, '--json');
    assert.equal(a.status, 0, a.stderr);
    const r = JSON.parse(a.stdout) as { manifest: string; outputs: string[]; changes: Manifest['changes']; problems: string[]; seconds: number };
    t.diagnostic(`adaptation took ${r.seconds.toFixed(2)} s`);
    assert.deepEqual(r.outputs, [out]);
    assert.deepEqual(r.problems, []);
    assert.equal(await sha256File(g.disk), sourceSha, 'the source disk is byte for byte what it was');
    const masked = r.changes.filter((c) => c.kind === 'symlink' && c.target === '/dev/null').map((c) => c.kind === 'symlink' && c.guestPath);
    assert.ok(masked.includes('/etc/systemd/system/open-vm-tools.service'), `masked: ${masked.join(', ')}`);
    await readGuest(out, async (x) => {
      assert.equal(await x.readlink('/etc/systemd/system/open-vm-tools.service'), '/dev/null');
      assert.ok(await x.exists('/usr/bin/vmtoolsd'), 'VMware Tools are disabled, not deleted');
    });

    const b = await bootDisk(out, 'virtio', ['-nic', 'none']);
    t.diagnostic(`marker after ${b.seconds.toFixed(1)} s under TCG`);
    assert.equal(b.kind, 'vmware');
    assert.equal(b.root, '/dev/vda1');

    // the boot wrote into the overlay (journal, logs): the sectors adaptation wrote are not all
    // as it left them, so undo takes back its changes one by one
    const u = await guestCli('undo', out, '--json');
    assert.equal(u.status, 0, u.stderr);
    const res = JSON.parse(u.stdout) as { method: string; restored: number; skipped: string[] };
    assert.equal(res.method, 'by change');
    assert.deepEqual(res.skipped, []);
    const m = await readManifest(r.manifest);
    assert.equal(res.restored, m.changes.length);
    assert.equal(m.undone?.method, 'by change');
    const changed = [...new Set(m.changes.map((c) => (c.kind === 'raw' ? '' : c.guestPath)).filter(Boolean))];
    const state = async (file: string) =>
      readGuest(file, async (x) => {
        const s: Record<string, string> = {};
        for (const p of changed) {
          try {
            const st = await x.lstat(p);
            s[p] = st.type === 'symlink' ? `-> ${await x.readlink(p)}` : st.type === 'file' ? sha256(await x.readFile(p)) : st.type;
          } catch {
            s[p] = 'absent';
          }
        }
        return s;
      });
    assert.deepEqual(await state(out), await state(g.disk), 'every file adaptation touched is the source\'s again');
  });
});
