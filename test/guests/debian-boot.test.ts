/**
 * The Debian test guests (./debian.ts) booted under QEMU (TCG here), each disk behind a qcow2
 * overlay so the cache is never written:
 *
 *  - the KVM guest boots from its own disk (SeaBIOS, GRUB in the MBR) on virtio, and the
 *    VMware guest on PVSCSI: each prints its marker naming its root device and powers off;
 *  - before adaptation, each fails where its drivers or boot code are missing: the Xen PV
 *    guest's initramfs finds no /dev/xvda1 on virtio, its disk has no boot code for a BIOS,
 *    and the KVM guest's initramfs has no driver for a PVSCSI disk.
 *
 * initramfs-tools waits max(30, rootdelay) seconds for the root device and then drops to its
 * shell with "ALERT!  <device> does not exist" (scripts/local, local_device_setup).
 */
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { buildDebianGuest, qemuDiskArgs, runQemuConsole, DEBIAN_MARKER, type DebianGuest, type DebianKind, type DiskBus } from './debian.js';
import { qemuImg, tempDir } from '../helpers.js';

const BASE = ['-nographic', '-no-reboot', '-m', '1024', '-nic', 'none'];
const BOOT_TIMEOUT = 10 * 60_000;
const MARKER_LINE = new RegExp(`${DEBIAN_MARKER} (\\S+) (\\S+)\\r?\\n`);
const ALERT = /ALERT!\s+(\S+) does not exist\.\s+Dropping to a shell!/;
const PANIC = /Kernel panic/;
const NO_BOOT = /No bootable device/;

/** A qcow2 overlay over the cached raw disk: every write of the boot lands in the overlay. */
async function overlay(t: { after(fn: () => Promise<void> | void): void }, guest: DebianGuest): Promise<string> {
  const dir = await tempDir(t);
  const file = join(dir, `${guest.kind}.qcow2`);
  await qemuImg('create', '-q', '-f', 'qcow2', '-b', guest.disk, '-F', 'raw', file);
  return file;
}

function tail(output: string): string {
  return output.slice(-3000);
}

describe('Debian test guests boot under QEMU', () => {
  const guests = {} as Record<DebianKind, DebianGuest>;
  before(async () => {
    for (const kind of ['xen-pv', 'kvm', 'vmware'] as const) guests[kind] = await buildDebianGuest(kind);
  });

  for (const [kind, bus] of [['kvm', 'virtio'], ['vmware', 'pvscsi']] as Array<[DebianKind, DiskBus]>) {
    test(`the ${kind} guest boots from its own disk on ${bus}: GRUB in the MBR, its marker, power-off`, async (t) => {
      const g = guests[kind];
      const run = await runQemuConsole([...BASE, ...qemuDiskArgs(bus, await overlay(t, g))], {
        until: [MARKER_LINE, ALERT, PANIC],
        timeoutMs: BOOT_TIMEOUT,
        waitExitMs: 120_000,
      });
      t.diagnostic(`${kind} on ${bus}: marker after ${run.seconds.toFixed(1)} s under TCG`);
      assert.equal(run.stop, MARKER_LINE, `no marker:\n${tail(run.output)}`);
      assert.match(run.output, /GRUB loading/);
      const [, k, root] = MARKER_LINE.exec(run.output)!;
      assert.equal(k, kind);
      assert.equal(root, g.rootDevice);
      assert.ok(run.exited, `the guest did not power off:\n${tail(run.output)}`);
      assert.equal(run.exitCode, 0);
    });
  }

  test('the Xen PV guest does not boot on virtio: its initramfs has no driver for /dev/vda', async (t) => {
    const g = guests['xen-pv'];
    const run = await runQemuConsole(
      [...BASE, '-kernel', g.kernel, '-initrd', g.initrd, '-append', `root=${g.rootDevice} console=ttyS0`, ...qemuDiskArgs('virtio', await overlay(t, g))],
      { until: [MARKER_LINE, ALERT, PANIC], timeoutMs: BOOT_TIMEOUT },
    );
    t.diagnostic(`xen-pv on virtio: initramfs shell after ${run.seconds.toFixed(1)} s`);
    assert.equal(run.stop, ALERT, `expected the initramfs to give up:\n${tail(run.output)}`);
    assert.equal(ALERT.exec(run.output)![1], '/dev/xvda1');
    assert.match(run.output, /Gave up waiting for root file system device/);
    assert.doesNotMatch(run.output, new RegExp(DEBIAN_MARKER));
  });

  test('the Xen PV guest has no boot code: SeaBIOS runs its empty MBR and nothing boots', async (t) => {
    const g = guests['xen-pv'];
    // the MBR carries the 0x55AA signature (it has a partition table), so SeaBIOS jumps into
    // its 440 zero bytes of code and the machine says nothing more: stop once it is silent
    const run = await runQemuConsole([...BASE, ...qemuDiskArgs('virtio', await overlay(t, g))], {
      until: [MARKER_LINE, /GRUB/, /Linux version/, NO_BOOT],
      timeoutMs: BOOT_TIMEOUT,
      silenceAfter: /Booting from Hard Disk/,
      silenceMs: 20_000,
    });
    assert.ok(run.stop === 'silence' || run.stop === NO_BOOT, `expected nothing to boot:\n${tail(run.output)}`);
    assert.match(run.output, /Booting from Hard Disk/);
    assert.doesNotMatch(run.output, /GRUB|Linux version/);
  });

  test('the KVM guest does not boot on PVSCSI: GRUB starts it, its initramfs finds no /dev/vda1', async (t) => {
    const g = guests.kvm;
    const run = await runQemuConsole([...BASE, ...qemuDiskArgs('pvscsi', await overlay(t, g))], {
      until: [MARKER_LINE, ALERT, PANIC],
      timeoutMs: BOOT_TIMEOUT,
    });
    t.diagnostic(`kvm on pvscsi: initramfs shell after ${run.seconds.toFixed(1)} s`);
    assert.equal(run.stop, ALERT, `expected the initramfs to give up:\n${tail(run.output)}`);
    assert.match(run.output, /GRUB loading/);
    assert.equal(ALERT.exec(run.output)![1], '/dev/vda1');
    assert.doesNotMatch(run.output, new RegExp(DEBIAN_MARKER));
  });
});
