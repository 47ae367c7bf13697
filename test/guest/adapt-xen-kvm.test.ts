/**
 * The case: a Xen PV guest (initramfs with xen-blkfront only, root /dev/xvda1,
 * console hvc0, no boot code: pygrub reads its grub.cfg) adapted for KVM, into a qcow2
 * overlay, then booted under QEMU from its own disk on virtio: SeaBIOS, the GRUB Polyvisor
 * put in the MBR, the guest's kernel with the appended initramfs, and the guest's systemd
 * printing its marker. Before adaptation the same disk does not boot there (debian-boot test).
 *
 * The source is the cached guest plus what a real Xen PV guest has: an ifupdown
 * configuration for eth0. A unit added for the test prints the guest's interfaces, so the
 * boot also shows the NIC keeping the name its configuration uses, by its MAC.
 *
 * Also shown on the same adaptation: the source file is unchanged (SHA-256); the adapted
 * initramfs still holds everything it held, plus the new segment; Xen's real pygrub still
 * boots the adapted disk with console=hvc0 (it still boots on Xen); a second adaptation
 * changes nothing; `guest undo` gives back a disk identical to the source (qemu-img compare).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { adaptGuest, type AdaptResult } from '../../src/guest/adapt.js';
import { readInitramfs } from '../../src/guest/initramfs.js';
import { readManifest, undoAdaptation } from '../../src/guest/manifest.js';
import { qemuImg, tempDir } from '../helpers.js';
import { buildDebianGuest, pygrub, type DebianGuest } from '../guests/debian.js';
import { addNetReport, netReports } from './net-report.js';
import { bootDisk, overlayOf, qemuCompare, rawCopy, readGuest, sha256File } from './adapt-fixtures.js';

const MAC = '52:54:00:a1:0c:01';
describe('guest adapt: a Xen PV guest for KVM', () => {
  let g: DebianGuest;
  let dir: string;
  let source: string;
  let adapted: string;
  let sourceSha: string;
  let result: AdaptResult;

  before(async () => {
    g = await buildDebianGuest('xen-pv');
    dir = await tempDir();
    source = await overlayOf(dir, g, 'xen-pv.qcow2');
    await addNetReport(source);
    sourceSha = await sha256File(source);
    adapted = join(dir, 'xen-pv.kvm.qcow2');
  });
  after(() => rm(dir, { recursive: true, force: true }));

  test('adapts into an overlay, leaving the source file unchanged', async (t) => {
    result = await adaptGuest([source], { target: 'kvm', nics: [{ mac: MAC }], allowOutsidePaths: true });
    t.diagnostic(`adaptation took ${result.seconds.toFixed(2)} s (${result.changes.length} changes)`);
    assert.equal(result.outputs[0], adapted);
    assert.deepEqual(result.problems, []);
    assert.equal(await sha256File(source), sourceSha, 'the source overlay is byte for byte what it was');
    const info = JSON.parse(await qemuImg('info', '--output=json', adapted));
    assert.equal(info.format, 'qcow2');
    assert.equal(info['backing-filename'], 'xen-pv.qcow2');
    await qemuImg('check', adapted);

    const why = (re: RegExp) => result.changes.filter((c) => re.test(c.why));
    const paths = result.changes.filter((c) => c.kind !== 'raw').map((c) => (c as { guestPath: string }).guestPath);
    assert.ok(why(/xvda1 -> UUID=5e1f0a01-0000-4000-8000-00000000a001/).some((c) => c.kind === 'file' && c.guestPath === '/etc/fstab'));
    assert.ok(paths.includes('/boot/grub/grub.cfg'));
    assert.ok(paths.includes('/etc/systemd/network/10-polyvisor-eth0.link'));
    assert.ok(paths.includes('/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service'));
    assert.ok(result.changes.some((c) => c.kind === 'append' && c.guestPath === `/boot/initrd.img-${g.kernelVersion}`));
    const raw = result.changes.filter((c) => c.kind === 'raw');
    assert.deepEqual(raw.map((c) => c.kind === 'raw' && c.offset), [512, 0], 'core.img after the MBR, then boot.img in it');
    const mbr = raw.find((c) => c.kind === 'raw' && c.offset === 0);
    assert.equal(mbr?.kind === 'raw' && mbr.length, 440, 'the MBR write stops before the disk signature and partition table');
    assert.ok(paths.includes('/boot/grub/i386-pc/normal.mod'));

    const m = await readManifest(result.manifest);
    assert.equal(m.changes.length, result.changes.length);
    assert.equal(m.disks[0]!.path, adapted);
    const fstab = m.changes.find((c) => c.kind === 'file' && c.guestPath === '/etc/fstab');
    assert.ok(fstab && fstab.kind === 'file' && fstab.before !== 'did not exist' && fstab.before.saved.startsWith('files/'));
    const link = m.changes.find((c) => c.kind === 'file' && c.guestPath.endsWith('.link'));
    assert.ok(link && link.kind === 'file' && link.before === 'did not exist');
  });

  test('the guest reads back adapted: fstab, kernel command line, NIC naming', async () => {
    await readGuest(adapted, async (guest) => {
      assert.match((await guest.readFile('/etc/fstab')).toString(), /^UUID=5e1f0a01-0000-4000-8000-00000000a001 \/ ext4 errors=remount-ro 0 1$/m);
      const cfg = (await guest.readFile('/boot/grub/grub.cfg')).toString();
      assert.match(cfg, new RegExp(`linux /boot/vmlinuz-${g.kernelVersion} root=UUID=5e1f0a01-0000-4000-8000-00000000a001 ro console=hvc0 console=tty0 console=ttyS0$`, 'm'));
      assert.match((await guest.readFile('/etc/systemd/network/10-polyvisor-eth0.link')).toString(), new RegExp(`MACAddress=${MAC}[\\s\\S]*Name=eth0`));
      assert.equal(await guest.readlink('/etc/systemd/system/getty.target.wants/serial-getty@hvc0.service'), '/lib/systemd/system/serial-getty@.service', 'the Xen console keeps its login');
      assert.match((await guest.readFile('/etc/initramfs-tools/modules')).toString(), /^virtio_blk$/m);
    });
  });

  test('the initramfs keeps everything it had and gains a segment with the virtio drivers', async () => {
    const [before, after] = await Promise.all([
      readGuest(source, (x) => x.readFile(`/boot/initrd.img-${g.kernelVersion}`)),
      readGuest(adapted, (x) => x.readFile(`/boot/initrd.img-${g.kernelVersion}`)),
    ]);
    assert.ok(after.subarray(0, before.length).equals(before), 'the original bytes are the first bytes');
    const old = await readInitramfs(before);
    const now = await readInitramfs(after);
    // the appended bytes alone are one gzip-compressed cpio archive
    const added = await readInitramfs(after.subarray(before.length));
    assert.equal(added.segments.length, 1);
    assert.equal(added.segments[0]!.compression, 'gzip');
    for (const [path, e] of old.files) {
      if (!now.files.has(path)) assert.fail(`${path} is gone`);
      if (e.type === 'file' && !/modules\.|\/conf\/modules$/.test(path)) assert.ok(now.files.get(path)!.data.equals(e.data), `${path} unchanged`);
    }
    const names = new Set(now.modules.map((m) => m.name));
    for (const n of ['xen_blkfront', 'xen_netfront', 'ext4', 'virtio_blk', 'virtio_pci', 'virtio_net', 'virtio_scsi', 'sd_mod', 't10_pi']) assert.ok(names.has(n), `carries ${n}`);
    // stored under usr/lib (merged /usr): a "lib" entry would have replaced the lib -> usr/lib link
    assert.ok(added.segments[0]!.entries.every((e) => !/^(lib|bin|sbin)(\/|$)/.test(e.name)), 'no entry under a symlinked top folder');
    assert.equal(now.files.get('/lib')?.type, 'symlink');
    const conf = now.files.get('/conf/modules')!.data.toString();
    assert.match(conf, /^xen_blkfront\s*$/m);
    assert.match(conf, /^virtio_blk$/m);
    const link = [...now.files.keys()].find((p) => p.endsWith('/systemd/network/10-polyvisor-eth0.link'));
    assert.equal(link, '/usr/lib/systemd/network/10-polyvisor-eth0.link');
  });

  test("Xen's pygrub still boots the adapted disk, with console=hvc0", async () => {
    const raw = await rawCopy(adapted, join(dir, 'adapted.raw'));
    try {
      const out = join(dir, 'pygrub');
      await mkdir(out);
      const choice = await pygrub(raw, out);
      assert.match(choice.args, /(^| )console=hvc0( |$)/);
      assert.match(choice.args, /root=UUID=5e1f0a01-0000-4000-8000-00000000a001/);
      assert.ok(choice.kernel && choice.ramdisk, 'pygrub copied out a kernel and its ramdisk');
    } finally {
      await rm(raw, { force: true });
    }
  });

  test('adapting the adapted disk again changes nothing', async () => {
    const second = await adaptGuest([adapted], { target: 'kvm', nics: [{ mac: MAC }], out: join(dir, 'second.qcow2'), allowOutsidePaths: true });
    assert.deepEqual(second.changes, []);
    assert.equal((await readManifest(second.manifest)).changes.length, 0);
    assert.deepEqual((await readManifest(second.manifest)).disks[0]!.journal.runs, [], 'not one sector written');
    const cmp = await qemuCompare(adapted, join(dir, 'second.qcow2'));
    assert.equal(cmp.status, 0, cmp.text);
  });

  test('boots on KVM from its own disk on virtio, its NIC still eth0 by its MAC', async (t) => {
    // the boot writes into a throw-away overlay, so the adapted disk stays as adaptation left it
    const boot = join(dir, 'boot.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'xen-pv.kvm.qcow2', '-F', 'qcow2', boot);
    const b = await bootDisk(boot, 'virtio', ['-nic', `user,model=virtio-net-pci,mac=${MAC}`]);
    t.diagnostic(`marker after ${b.seconds.toFixed(1)} s under TCG`);
    assert.match(b.output, /GRUB loading/);
    assert.equal(b.kind, 'xen-pv');
    assert.equal(b.root, '/dev/vda1');
    assert.deepEqual(netReports(b.output), [{ name: 'eth0', mac: MAC, state: 'up', driver: 'virtio_net' }], b.output.slice(-3000));
    assert.ok(b.exited && b.exitCode === 0, 'the guest powered off');
  });

  test('guest undo gives back a disk identical to the source', async () => {
    const r = await undoAdaptation(result.manifest);
    assert.equal(r.method, 'exact');
    assert.deepEqual(r.skipped, []);
    const cmp = await qemuCompare(source, adapted);
    assert.equal(cmp.status, 0, cmp.text);
    assert.equal((await undoAdaptation(result.manifest)).method, 'nothing', 'a second undo has nothing to do');
  });
});
