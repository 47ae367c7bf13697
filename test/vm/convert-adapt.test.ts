/**
 * Guest adaptation as a step of `vm convert --to`, on real Debian 12 guests
 * (test/guests/debian.ts):
 *
 *  - the Xen PV guest (xen-blkfront only, /dev/xvda1, hvc0, no boot code), described by its
 *    xl.cfg, converted --to libvirt: the converted qcow2 is adapted for KVM in place, the
 *    manifest lies beside it and names it, the source is byte for byte what it was, and the
 *    output boots under QEMU on virtio (one boot); with --no-adapt the output disk reads
 *    exactly as the source (qemu-img compare), as a plain conversion;
 *  - the KVM guest (virtio only, GRUB in the MBR), described by libvirt XML, converted --to xl:
 *    the HVM spec implies Xen HVM; --adapt-for xen-pv makes it a PV domain booted by pygrub,
 *    and the inspection verdict for xen-pv finds nothing blocking it where before it found the
 *    missing xen-blkfront; Xen's own pygrub picks the adapted entry (console=hvc0);
 *  - the same guest --to xva: the disk is adapted in a staging overlay before it is packed,
 *    and no staging file is left; a guest with no Linux root converts as it is, with a note.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inspect } from '../../src/guest/inspect.js';
import { readManifest } from '../../src/guest/manifest.js';
import { targetForOutput, whyNotAdapt } from '../../src/guest/route.js';
import { convertVm } from '../../src/vm/convert.js';
import { openVmSource } from '../../src/vm/source.js';
import { emptySpec } from '../../src/vm/spec.js';
import { qemuImg, tempDir } from '../helpers.js';
import { buildDebianGuest, DEBIAN_MARKER, pygrub, type DebianGuest } from '../guests/debian.js';
import { bootDisk, overlayOf, qemuCompare, sha256File } from '../guest/adapt-fixtures.js';

const CLI = fileURLToPath(new URL('../../../bin/polyvisor', import.meta.url));

function pv(...args: string[]) {
  const r = spawnSync(CLI, [...args], { encoding: 'utf8', timeout: 600_000 });
  assert.equal(r.status, 0, `polyvisor ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

const XL_CFG = ['name = "xenpv"', 'type = "pv"', 'bootloader = "pygrub"', 'memory = 1024', 'vif = [ "mac=00:16:3e:12:34:56" ]', 'disk = [ "format=qcow2,vdev=xvda,access=rw,target=xenpv.qcow2" ]', ''].join('\n');

const DOMAIN = (disk: string) => `<domain type='kvm'>
  <name>kvmguest</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='br0'/><model type='virtio'/></interface>
    <serial type='pty'><target port='0'/></serial>
  </devices>
</domain>
`;

/** The inspection verdict of `target` for the guest on `source` (an image or a VM source). */
async function verdict(source: string, target: 'xen-pv' | 'xen-hvm' | 'kvm') {
  return (await inspect(source, { allowOutsidePaths: true })).verdicts[target];
}

test('the adaptation target follows the output and the spec; a guest from the same hypervisor is not adapted', () => {
  const hvm = emptySpec('x');
  const pvSpec = { ...hvm, virtualization: 'pv' as const };
  const uefi = { ...hvm, firmware: { type: 'uefi' as const } };
  assert.deepEqual(
    ['xl', 'xva', 'libvirt', 'vmx', 'ovf', 'ova', 'hyperv'].map((o) => targetForOutput(o, hvm)),
    ['xen-hvm', 'xen-hvm', 'kvm', 'vmware', 'vmware', 'vmware', 'hyperv-gen1'],
  );
  assert.equal(targetForOutput('xl', pvSpec), 'xen-pv');
  assert.equal(targetForOutput('xva', { ...hvm, virtualization: 'pvh' }), 'xen-pv');
  assert.equal(targetForOutput('hyperv', uefi), 'hyperv-gen2');
  assert.match(whyNotAdapt('xen-pv', 'xen-hvm') ?? '', /from Xen already/);
  assert.match(whyNotAdapt('kvm', 'kvm') ?? '', /from KVM\/QEMU already/);
  assert.equal(whyNotAdapt('xen-pv', 'kvm'), undefined);
  assert.equal(whyNotAdapt(undefined, 'vmware'), undefined, 'a bare disk from an unknown hypervisor is adapted');
});

describe('vm convert --to libvirt: a Xen PV guest adapted for KVM in the converted disk', () => {
  let g: DebianGuest;
  let dir: string;
  let source: string;
  let sourceSha: string;
  let cfg: string;

  before(async () => {
    g = await buildDebianGuest('xen-pv');
    dir = await tempDir();
    // the source: a qcow2 overlay over the cached guest, so the cache is never at risk
    source = await overlayOf(dir, g, 'xenpv.qcow2');
    sourceSha = await sha256File(source);
    cfg = join(dir, 'xenpv.cfg');
    await writeFile(cfg, XL_CFG);
  });
  after(() => rm(dir, { recursive: true, force: true }));

  test('adapted in place in the output, manifest beside it, source unchanged; the output boots on QEMU virtio', async (t) => {
    const out = join(dir, 'adapted');
    const text = pv('vm', 'convert', cfg, '--to', 'libvirt', '--out', out, '--allow-outside-paths');
    const disk = join(out, 'xenpv-disk0.qcow2');
    const manifest = join(out, 'xenpv.adapt.manifest.json');
    assert.ok(text.includes(`wrote ${disk}`), text);
    const m = new RegExp(`guest adapted for kvm: (\\d+) change\\(s\\), recorded in ${manifest.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`).exec(text);
    assert.ok(m && Number(m[1]) > 0, text);

    const rec = await readManifest(manifest);
    assert.equal(rec.target, 'kvm');
    assert.equal(rec.inPlace, true);
    assert.deepEqual(rec.disks.map((d) => d.path), [disk], 'the manifest names the converted disk, never the source');
    assert.deepEqual(rec.problems, []);
    assert.ok(rec.changes.some((c) => /initramfs/.test(c.why)) && rec.changes.some((c) => c.kind === 'raw'), 'drivers appended and GRUB written into the MBR');
    assert.match(await readFile(join(out, 'xenpv.xml'), 'utf8'), /xenpv-disk0\.qcow2/);

    assert.equal(await sha256File(source), sourceSha, 'the source file is byte for byte what it was');
    assert.equal((await qemuCompare(source, g.disk)).status, 0, 'the source reads as the cached guest');
    assert.equal((await qemuCompare(disk, source)).status, 1, 'the output differs from the source: it was adapted');

    // -snapshot: the guest's own writes during the boot go nowhere
    const boot = await bootDisk(disk, 'virtio', ['-snapshot']);
    t.diagnostic(`the converted Xen PV guest booted on QEMU virtio in ${boot.seconds.toFixed(1)} s`);
    assert.equal(`${DEBIAN_MARKER} ${boot.kind} ${boot.root}`, `${DEBIAN_MARKER} xen-pv /dev/vda1`);
  });

  test('--no-adapt: the output disk reads exactly as the source, no manifest', async () => {
    const out = join(dir, 'plain');
    const r = JSON.parse(pv('vm', 'convert', cfg, '--to', 'libvirt', '--out', out, '--allow-outside-paths', '--no-adapt', '--json'));
    assert.equal(r.adaptation, null);
    assert.deepEqual((await readdir(out)).sort(), ['xenpv-disk0.qcow2', 'xenpv.xml']);
    const c = await qemuCompare(join(out, 'xenpv-disk0.qcow2'), source);
    assert.equal(c.status, 0, c.text);
  });
});

describe('vm convert: the KVM guest for Xen', () => {
  let g: DebianGuest;
  let dir: string;
  let xml: string;

  before(async () => {
    g = await buildDebianGuest('kvm');
    dir = await tempDir();
    const disk = await overlayOf(dir, g, 'kvm.qcow2');
    xml = join(dir, 'kvm.xml');
    await writeFile(xml, DOMAIN(disk));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  test('--to xl: Xen HVM by its spec; --adapt-for xen-pv makes a PV domain booted by pygrub that nothing blocks', async (t) => {
    const before = await verdict(xml, 'xen-pv');
    assert.ok(before.blockers.some((b) => b.code === 'storage-driver'), JSON.stringify(before.blockers));

    const src = await openVmSource(xml, { allowOutsidePaths: true });
    try {
      const hvm = await convertVm(src, 'xl', join(dir, 'hvm'));
      assert.equal(hvm.adaptation?.target, 'xen-hvm');
      assert.ok(hvm.adaptation!.changes > 0);
      assert.match(await readFile(join(dir, 'hvm', 'kvmguest.cfg'), 'utf8'), /^type = "hvm"$/m);
      assert.equal((await verdict(join(dir, 'hvm', 'kvmguest-disk0.img'), 'xen-hvm')).boots, true);

      const r = await convertVm(src, 'xl', join(dir, 'pv'), { adaptFor: 'xen-pv' });
      t.diagnostic(`adapted for xen-pv: ${r.adaptation!.changes} changes, ${r.adaptation!.notes.join('; ')}`);
      assert.equal(r.adaptation?.target, 'xen-pv');
      assert.equal(r.adaptation!.manifest, join(dir, 'pv', 'kvmguest.adapt.manifest.json'));
      assert.deepEqual(r.adaptation!.problems, []);
      assert.ok(r.notes.some((n) => n.setting === 'virtualization' && n.to === 'pv'));
      const cfg = await readFile(join(dir, 'pv', 'kvmguest.cfg'), 'utf8');
      assert.match(cfg, /^type = "pv"$/m);
      assert.match(cfg, /^bootloader = "pygrub"$/m);
    } finally {
      await src.close();
    }
    const disk = join(dir, 'pv', 'kvmguest-disk0.img');
    const v = await verdict(disk, 'xen-pv');
    assert.equal(v.boots, true);
    assert.deepEqual(v.blockers, []);
    // Xen's own pygrub reads the converted raw disk and boots the adapted entry
    await mkdir(join(dir, 'pygrub'));
    const choice = await pygrub(disk, join(dir, 'pygrub'), true);
    assert.match(choice.args, /root=UUID=\S+/);
    assert.match(choice.args, /console=hvc0/);
  });

  test('--to xva: adapted in a staging overlay before it is packed; a guest with no Linux root converts as it is', async () => {
    const out = join(dir, 'xva');
    const r = JSON.parse(pv('vm', 'convert', xml, '--to', 'xva', '--out', out, '--allow-outside-paths', '--json'));
    assert.equal(r.adaptation.target, 'xen-hvm');
    assert.equal(r.adaptation.staged, true);
    assert.ok(r.adaptation.changes > 0);
    assert.equal(dirname(r.adaptation.manifest), out, 'the manifest is beside the package');
    assert.deepEqual((await readdir(out)).sort(), ['kvmguest.adapt.manifest.d', 'kvmguest.adapt.manifest.json', 'kvmguest.xva'], 'no staging file is left');
    const v = await verdict(join(out, 'kvmguest.xva'), 'xen-hvm');
    assert.equal(v.boots, true, JSON.stringify(v.blockers));

    // a disk with no file system: converted, not adapted, and the reason says so
    const blank = join(dir, 'blank.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', blank, '64M');
    const plain = JSON.parse(pv('vm', 'convert', blank, '--to', 'libvirt', '--out', join(dir, 'blank'), '--json'));
    assert.match(plain.adaptation.skipped, /no Linux root/);
    assert.equal(plain.adaptation.manifest, undefined);
    assert.ok(existsSync(join(dir, 'blank', 'blank-disk0.qcow2')));
  });
});
