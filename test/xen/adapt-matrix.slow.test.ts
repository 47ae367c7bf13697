/**
 * The boot matrix's Xen cells (Debian's Xen 4.17 nested under QEMU TCG, ./host.ts), one host
 * boot for both guests, each defined through the xl driver as a PV domain that Xen's own
 * pygrub boots from the guest's grub.cfg (the nested host has no VT-x: PV only):
 *
 *  - the Xen PV guest (test/guests/debian.ts: xen-blkfront only, root /dev/xvda1, hvc0, a
 *    pygrub-style grub.cfg, no boot code) adapted for KVM still boots on Xen: the adaptation
 *    added virtio drivers, GRUB in the MBR, root= by UUID and console=ttyS0 after hvc0, and
 *    took nothing away that Xen needs. test/guest/adapt-xen-kvm.test.ts shows pygrub's choice
 *    offline; here the guest reaches its marker on xvda;
 *  - the VMware guest (vmw_pvscsi only, root /dev/sda1, GRUB 2 in the MBR, open-vm-tools)
 *    adapted for Xen PV boots under pygrub, where its initramfs had no xen-blkfront.
 *
 * Each adapted disk is a qcow2 overlay over the cached guest; the driver reads it with its
 * backing file through Polyvisor's disk engine and it arrives on the host as raw (only data
 * travels). Costs here (2 cores, TCG): the host boots in about a minute, about 700 MB of
 * each guest cross SSH, and each PV guest boots in a few minutes.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { openImage } from '../../src/disk/chain.js';
import { adaptGuest, type AdaptResult } from '../../src/guest/adapt.js';
import { XenDriver } from '../../src/hosts/xen/driver.js';
import { emptySpec, type VmSpec } from '../../src/vm/spec.js';
import { tempDir } from '../helpers.js';
import { buildDebianGuest, DEBIAN_MARKER, type DebianGuest } from '../guests/debian.js';
import { sha256File } from '../guest/adapt-fixtures.js';
import { readUntil } from './console-text.js';
import { startXenHost, type XenHost } from './host.js';

const MARKER = new RegExp(`${DEBIAN_MARKER} \\S+ \\S+\\n`);

/** A PV domain booted by pygrub from its one disk; no NIC (the nested host has no bridge). */
function pygrubSpec(name: string): VmSpec {
  return {
    ...emptySpec(name),
    virtualization: 'pv',
    memory: { bytes: 384 << 20 },
    consoles: [{ type: 'xen' }],
    // without a terminal to answer pygrub's menu, -q (RUNBOOK)
    boot: { bootloader: 'pygrub', bootloaderArgs: ['-q'] },
    disks: [{ device: 'disk', bus: 'xen', target: 'xvda' }],
  };
}

describe('boot matrix on a real Xen host: adapted guests boot under pygrub (nested Xen 4.17, TCG)', () => {
  let host: XenHost;
  let driver: XenDriver;
  let dir: string;

  before(async () => {
    host = await startXenHost();
    dir = await tempDir();
    driver = new XenDriver({ uri: host.uri, identityFile: host.sshTarget.identityFile, knownHostsFile: join(dir, 'known_hosts') });
  });

  after(async () => {
    await driver?.dispose();
    await host?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** Defines `overlay` as a pygrub PV domain, boots it with its console, returns the marker line; then the domain is gone. */
  async function bootOnXen(t: { diagnostic(s: string): void }, name: string, overlay: string): Promise<string> {
    const t0 = Date.now();
    // the overlay's backing file is the cached guest, outside its folder: vetted here
    await driver.define({ spec: pygrubSpec(name), disks: [{ format: 'qcow2', open: () => openImage(overlay, { allowOutsidePaths: true }) }] });
    t.diagnostic(`${name}: defined (disk uploaded as raw) in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    try {
      const cfg = await host.exec(['cat', driver.configOf(name)]);
      assert.match(cfg, /^type = "pv"$/m);
      assert.match(cfg, /^bootloader = "pygrub"$/m);
      const t1 = Date.now();
      const con = await driver.startWithConsole(name);
      let text: string;
      try {
        text = await readUntil(con, MARKER, 900_000);
      } finally {
        con.destroy();
      }
      t.diagnostic(`${name}: marker on the Xen console ${((Date.now() - t1) / 1000).toFixed(1)} s after xl create`);
      // the marker unit powers the guest off
      assert.equal(await driver.waitForExit(name, 120_000), true, 'the guest powered off');
      return MARKER.exec(text)![0].trim();
    } finally {
      // the next guest's raw disk needs the room on the host's disk
      await driver.kill(name).catch(() => undefined);
      await driver.undefine(name);
    }
  }

  test('the Xen PV guest, adapted for KVM, still boots on Xen PV under pygrub', { timeout: 1_800_000 }, async (t) => {
    t.diagnostic(`host boot ${host.bootSeconds.toFixed(1)} s`);
    const g: DebianGuest = await buildDebianGuest('xen-pv');
    const sourceSha = await sha256File(g.disk);
    const out = join(dir, 'xen-pv.kvm.qcow2');
    const r: AdaptResult = await adaptGuest([g.disk], { target: 'kvm', out, allowOutsidePaths: true });
    assert.deepEqual(r.outputs, [out]);
    assert.deepEqual(r.problems, []);
    // it is the disk that boots on KVM (test/guest/adapt-xen-kvm.test.ts): GRUB in its MBR,
    // virtio drivers appended to its initramfs
    assert.ok(r.changes.some((c) => c.kind === 'raw' && c.offset === 0), 'GRUB written into the MBR');
    assert.ok(r.changes.some((c) => c.kind === 'append' && /virtio_blk/.test(c.why)));
    assert.equal(await sha256File(g.disk), sourceSha, 'the cached source is untouched');

    assert.equal(await bootOnXen(t, 'xenpv-kvm', out), `${DEBIAN_MARKER} xen-pv /dev/xvda1`);
  });

  test('the VMware guest, adapted for Xen PV, boots on Xen under pygrub', { timeout: 1_800_000 }, async (t) => {
    const g: DebianGuest = await buildDebianGuest('vmware');
    const out = join(dir, 'vmware.xen-pv.qcow2');
    const r = await adaptGuest([g.disk], { target: 'xen-pv', out, allowOutsidePaths: true });
    assert.deepEqual(r.outputs, [out]);
    assert.deepEqual(r.problems, []);
    assert.ok(r.changes.some((c) => c.kind === 'append' && /xen_blkfront/.test(c.why)), 'xen-blkfront appended to the initramfs');
    assert.ok(r.changes.some((c) => c.kind === 'file' && c.guestPath === '/etc/fstab' && /sda1 -> UUID=/.test(c.why)));

    assert.equal(await bootOnXen(t, 'vmware-xenpv', out), `${DEBIAN_MARKER} vmware /dev/xvda1`);
  });
});
