/**
 * The boot matrix's cells that the other adaptation tests leave open, on the local engine
 * (QEMU, TCG here), each guest's disk behind a qcow2 overlay so the cache is never written:
 *
 *  - before adaptation, the VMware guest (vmw_pvscsi and sd_mod only, root /dev/sda1) does not
 *    boot on KVM's virtio: SeaBIOS runs its GRUB, GRUB starts its kernel, and its initramfs,
 *    with no virtio driver, waits for /dev/sda1 and gives up with "ALERT! /dev/sda1 does not
 *    exist" (initramfs-tools scripts/local); nor does the Xen PV guest on VMware's PVSCSI, even
 *    handed its kernel (its initramfs has xen-blkfront only). The other failures are in
 *    test/guests/debian-boot.test.ts;
 *  - the Xen PV guest (xen-blkfront only, root /dev/xvda1, console hvc0, no boot code),
 *    adapted for VMware into an overlay, boots on VMware's device model as QEMU emulates it:
 *    its boot disk on a PVSCSI controller (QEMU's pvscsi) and its NIC a vmxnet3 (QEMU's
 *    vmxnet3). The guest prints which driver runs its eth0, so the boot shows the NIC
 *    working as well as the disk.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { adaptGuest } from '../../src/guest/adapt.js';
import { qemuImg, tempDir } from '../helpers.js';
import { buildDebianGuest, qemuDiskArgs, runQemuConsole, DEBIAN_MARKER, type DebianGuest } from '../guests/debian.js';
import { ALERT, MARKER_LINE, PANIC, bootDisk, overlayOf, readGuest } from './adapt-fixtures.js';
import { addNetReport, netReports } from './net-report.js';

const MAC = '52:54:00:a1:0c:03';

describe('boot matrix: the VMware guest on virtio, the Xen PV guest on PVSCSI (before and after) and vmxnet3', () => {
  let dir: string;
  before(async () => {
    dir = await tempDir();
  });
  after(() => rm(dir, { recursive: true, force: true }));

  test('before adaptation, the VMware guest does not boot on virtio: GRUB starts it, its initramfs finds no /dev/sda1', async (t) => {
    const g: DebianGuest = await buildDebianGuest('vmware');
    const disk = await overlayOf(dir, g, 'vmware.qcow2');
    const run = await runQemuConsole(['-nographic', '-no-reboot', '-m', '1024', '-nic', 'none', ...qemuDiskArgs('virtio', disk)], {
      until: [MARKER_LINE, ALERT, PANIC],
      timeoutMs: 10 * 60_000,
    });
    t.diagnostic(`vmware on virtio: initramfs shell after ${run.seconds.toFixed(1)} s under TCG`);
    assert.equal(run.stop, ALERT, `expected the initramfs to give up:\n${run.output.slice(-3000)}`);
    assert.match(run.output, /GRUB loading/, 'its own boot code ran');
    assert.equal(ALERT.exec(run.output)![1], '/dev/sda1');
    assert.match(run.output, /Gave up waiting for root file system device/);
    assert.doesNotMatch(run.output, new RegExp(DEBIAN_MARKER));
  });

  test('before adaptation, the Xen PV guest does not boot on PVSCSI even given its kernel: its initramfs has no vmw_pvscsi', async (t) => {
    const g = await buildDebianGuest('xen-pv');
    const disk = await overlayOf(dir, g, 'xen-pv-unadapted.qcow2');
    // it has no boot code (test/guests/debian-boot.test.ts), so QEMU is handed its kernel, as
    // the most a VMware host could do for it
    const run = await runQemuConsole(
      ['-nographic', '-no-reboot', '-m', '1024', '-nic', 'none', '-kernel', g.kernel, '-initrd', g.initrd, '-append', `root=${g.rootDevice} console=ttyS0`, ...qemuDiskArgs('pvscsi', disk)],
      { until: [MARKER_LINE, ALERT, PANIC], timeoutMs: 10 * 60_000 },
    );
    t.diagnostic(`xen-pv on pvscsi: initramfs shell after ${run.seconds.toFixed(1)} s under TCG`);
    assert.equal(run.stop, ALERT, `expected the initramfs to give up:\n${run.output.slice(-3000)}`);
    assert.equal(ALERT.exec(run.output)![1], '/dev/xvda1');
    assert.doesNotMatch(run.output, new RegExp(DEBIAN_MARKER));
  });

  test('the Xen PV guest, adapted for VMware into an overlay, boots on PVSCSI with its eth0 on vmxnet3', async (t) => {
    const g = await buildDebianGuest('xen-pv');
    const source = await overlayOf(dir, g, 'xen-pv.qcow2');
    await addNetReport(source);
    const adapted = join(dir, 'xen-pv.vmware.qcow2');
    const r = await adaptGuest([source], { target: 'vmware', nics: [{ mac: MAC }], allowOutsidePaths: true });
    t.diagnostic(`adaptation took ${r.seconds.toFixed(2)} s (${r.changes.length} changes)`);
    assert.deepEqual(r.outputs, [adapted]);
    assert.deepEqual(r.problems, []);
    assert.ok(r.changes.some((c) => c.kind === 'file' && c.guestPath === '/etc/fstab' && /xvda1 -> UUID=/.test(c.why)));
    assert.ok(r.changes.some((c) => c.kind === 'append' && /vmw_pvscsi/.test(c.why)), 'vmw_pvscsi appended to the initramfs');
    // no boot code in the source: a BIOS needs GRUB in the MBR (core.img after it, boot.img in it)
    assert.deepEqual(r.changes.filter((c) => c.kind === 'raw').map((c) => c.kind === 'raw' && c.offset), [512, 0]);
    await readGuest(adapted, async (x) => {
      const cfg = (await x.readFile('/boot/grub/grub.cfg')).toString();
      assert.match(cfg, /root=UUID=5e1f0a01-0000-4000-8000-00000000a001 .*console=ttyS0$/m);
      assert.match((await x.readFile('/etc/systemd/network/10-polyvisor-eth0.link')).toString(), new RegExp(`MACAddress=${MAC}[\\s\\S]*Name=eth0`));
    });

    // the boot writes into a throw-away overlay, so the adapted disk stays as adaptation left it
    const boot = join(dir, 'boot.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'xen-pv.vmware.qcow2', '-F', 'qcow2', boot);
    const b = await bootDisk(boot, 'pvscsi', ['-nic', `user,model=vmxnet3,mac=${MAC}`]);
    t.diagnostic(`marker after ${b.seconds.toFixed(1)} s under TCG`);
    assert.match(b.output, /GRUB loading/);
    assert.equal(b.kind, 'xen-pv');
    assert.equal(b.root, '/dev/sda1');
    assert.deepEqual(netReports(b.output), [{ name: 'eth0', mac: MAC, state: 'up', driver: 'vmxnet3' }], b.output.slice(-3000));
    assert.ok(b.exited && b.exitCode === 0, 'the guest powered off');
  });
});
