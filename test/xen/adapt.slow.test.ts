/**
 * Adaptation on the way onto a real Xen host (Debian's Xen 4.17 nested under QEMU, ./host.ts):
 * the Debian KVM guest (test/guests/debian.ts: virtio drivers only, GRUB 2 in the MBR, root
 * /dev/vda1, console ttyS0), described by libvirt XML, is imported onto the host through the
 * Estate. Polyvisor adapts it for Xen PV in staging overlays before its disk travels to the
 * host as raw (xen-blkfront appended to the initramfs, root by UUID, console=hvc0, a getty on
 * hvc0), and the HVM spec becomes a PV domain booted by pygrub, since the nested host has no
 * VT-x. On the host, Xen's own pygrub reads the guest's grub.cfg and the guest boots into its
 * installed system on xvda, printing its marker on the PV console. The source is untouched.
 *
 * Costs here (2 cores, TCG): the host boots in about 40 s, the 700 MB of guest data travel over
 * SSH, and the PV guest boots in a minute or two.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Estate } from '../../src/hosts/estate.js';
import { readManifest } from '../../src/guest/manifest.js';
import { tempDir } from '../helpers.js';
import { buildDebianGuest, DEBIAN_MARKER, type DebianGuest } from '../guests/debian.js';
import { overlayOf, qemuCompare, sha256File } from '../guest/adapt-fixtures.js';
import { startXenHost, type XenHost } from './host.js';
import { readUntil } from './console-text.js';

/** No NIC: the nested host has no bridge for one (xl's vif hotplug would refuse). */
const DOMAIN = (disk: string) => `<domain type='kvm'>
  <name>kvm-on-xen</name>
  <memory unit='MiB'>384</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'><target port='0'/></serial>
  </devices>
</domain>
`;

describe('import onto a Xen host adapts a KVM guest for Xen PV (nested Xen 4.17, TCG)', () => {
  let host: XenHost;
  let guest: DebianGuest;
  let dir: string;
  let estate: Estate;

  before(async () => {
    guest = await buildDebianGuest('kvm');
    host = await startXenHost();
    dir = await tempDir();
    estate = new Estate({ dataDir: join(dir, 'data') });
    await estate.addHost('xen1', host.uri, { identityFile: host.sshTarget.identityFile });
  });

  after(async () => {
    await estate?.close();
    await host?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('the Debian KVM guest, imported through the Estate, boots on Xen under pygrub from its own disk', { timeout: 1_800_000 }, async (t) => {
    const disk = await overlayOf(dir, guest, 'kvm.qcow2');
    const sourceSha = await sha256File(disk);
    const xml = join(dir, 'kvm.xml');
    await writeFile(xml, DOMAIN(disk));

    const t0 = Date.now();
    const r = await estate.import(xml, { host: 'xen1', allowOutsidePaths: true });
    t.diagnostic(`import with adaptation and upload: ${((Date.now() - t0) / 1000).toFixed(1)} s; host boot ${host.bootSeconds.toFixed(1)} s`);
    const name = r.vm.name;
    assert.equal(r.vm.host, 'xen1');
    assert.equal(r.adaptation?.target, 'xen-pv');
    assert.ok(r.adaptation!.changes > 0);
    assert.deepEqual(r.adaptation!.problems, []);
    // the manifest stays in the data folder while the VM is on the host
    assert.equal(r.adaptation!.manifest, join(dir, 'data', 'hosts', 'xen1', name, 'adapt.manifest.json'));
    const m = await readManifest(r.adaptation!.manifest!);
    assert.equal(m.target, 'xen-pv');
    assert.ok(m.changes.some((c) => /xen_blkfront/.test(c.why)), 'xen-blkfront appended to the initramfs');
    assert.ok(r.notes.some((n) => n.setting === 'virtualization' && n.to === 'pv'), JSON.stringify(r.notes));
    assert.equal(r.vm.spec.virtualization, 'pv');
    assert.equal(await sha256File(disk), sourceSha, 'the source is byte for byte what it was');
    assert.equal((await qemuCompare(disk, guest.disk)).status, 0);

    const driver = await estate.driver('xen1');
    const cfg = await host.exec(['cat', driver.configOf(name)]);
    assert.match(cfg, /^type = "pv"$/m);
    assert.match(cfg, /^bootloader = "pygrub"$/m);

    const t1 = Date.now();
    const con = await driver.startWithConsole(name);
    try {
      const text = await readUntil(con, new RegExp(`${DEBIAN_MARKER} \\S+ \\S+\\n`), 900_000);
      t.diagnostic(`the adapted guest reached its marker on Xen in ${((Date.now() - t1) / 1000).toFixed(1)} s`);
      assert.ok(text.includes(`${DEBIAN_MARKER} kvm /dev/xvda1`), text.slice(-4000));
    } finally {
      con.destroy();
    }
    // the marker powers the guest off
    assert.equal(await driver.waitForExit(name, 120_000), true);
    await estate.remove(name, { force: true });
    assert.equal(existsSync(join(dir, 'data', 'hosts', 'xen1', name)), false, 'the record goes with the VM');
  });
});
