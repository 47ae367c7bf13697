/**
 * VMware .vmx: decode and encode against golden files (UPDATE_GOLDEN=1 rewrites them; review
 * the diff by eye), .vmx → .vmx round trips keeping every key, the notes a foreign spec gets,
 * and hostile input.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { vmx, parseVmx, escapeValue } from '../../src/vm/codecs/vmx.js';
import { emptySpec, type VmSpec } from '../../src/vm/spec.js';
import { throwsCode, assertGolden } from '../helpers.js';

const DIR = join(process.cwd(), 'test/vm/fixtures/vmx');

function decodeFixture(name: string) {
  return vmx.decode!(readFileSync(join(DIR, name)), name);
}

function encode(spec: VmSpec, name = 'out') {
  return vmx.encode!({ spec, name, diskFiles: spec.disks.map((d) => (d.file ? { file: d.file, format: d.format ?? 'vmdk', capacity: 0 } : undefined)) });
}

const golden = (name: string, actual: string) => assertGolden(join(DIR, name), actual);

for (const fixture of ['workstation-ubuntu', 'esxi-win2019']) {
  test(`vmx: ${fixture} decodes to its golden spec`, () => {
    const { spec, notes } = decodeFixture(`${fixture}.vmx`);
    golden(`${fixture}.spec.json`, JSON.stringify({ spec, notes }, null, 2) + '\n');
  });

  test(`vmx: ${fixture} encodes to its golden .vmx`, () => {
    const { spec } = decodeFixture(`${fixture}.vmx`);
    const out = encode(spec, fixture);
    assert.equal(out.files.length, 1);
    assert.equal(out.files[0]!.name, `${fixture}.vmx`);
    golden(`${fixture}.out.vmx`, String(out.files[0]!.data));
    assert.deepEqual(out.notes, [], 'a spec read from a .vmx loses nothing written back to a .vmx');
  });

  test(`vmx: ${fixture} round trip: decode(encode(x)) equals decode(x), extra included`, () => {
    const first = decodeFixture(`${fixture}.vmx`).spec;
    const again = vmx.decode!(Buffer.from(String(encode(first, fixture).files[0]!.data)), `${fixture}.vmx`).spec;
    assert.deepEqual(again, first);
  });
}

test('vmx: the Workstation VM maps what the model names', () => {
  const { spec } = decodeFixture('workstation-ubuntu.vmx');
  assert.equal(spec.name, 'build-box');
  assert.equal(spec.description, 'CI builder\nowner: "ops" team | nightly');
  assert.equal(spec.uuid, '564d2a1f-9c03-7e4b-88d1-426c0e4e91a7');
  assert.equal(spec.memory.bytes, 4096 * 1024 * 1024);
  assert.deepEqual(spec.cpu, { count: 2, cores: 2, sockets: 1 });
  assert.deepEqual(spec.os, { family: 'linux', variant: 'ubuntu-64' });
  assert.deepEqual(
    spec.disks.map((d) => [d.device, d.bus, d.controllerModel, d.controller, d.unit, d.file]),
    [
      ['disk', 'scsi', 'lsilogic', 0, 0, 'build-box.vmdk'],
      ['disk', 'scsi', 'lsilogic', 0, 1, 'build-box-data.vmdk'],
      ['cdrom', 'ide', undefined, 1, 0, 'ubuntu-22.04.4-live-server-amd64.iso'],
    ],
  );
  assert.deepEqual(spec.nics, [{ model: 'e1000', mac: '00:0c:29:4e:91:a7', connection: 'nat' }]);
  assert.deepEqual(spec.consoles, [{ type: 'serial', port: 0 }]);
  assert.deepEqual(spec.boot, { order: ['disk', 'cdrom'] });
  const extra = spec.extra.vmx as Record<string, string>;
  assert.equal(extra['floppy0.present'], 'FALSE', 'a present = FALSE device stays in extra');
  assert.equal(extra['serial0.fileName'], 'build-box-serial.log');
  assert.equal(extra['virtualHW.version'], '19');
  assert.equal(extra['.encoding'], undefined, '.encoding is the codec\'s own, rewritten as UTF-8');
});

test('vmx: the ESXi VM: EFI, secure boot, vTPM, pvscsi, SATA CD-ROM, vmxnet3, memSize in any case', () => {
  const { spec } = decodeFixture('esxi-win2019.vmx');
  assert.deepEqual(spec.firmware, { type: 'uefi', secureBoot: true, tpm: true });
  assert.equal(spec.memory.bytes, 8192 * 1024 * 1024);
  assert.deepEqual(spec.cpu, { count: 4, cores: 2, sockets: 2 });
  assert.equal(spec.os.family, 'windows');
  assert.deepEqual(spec.disks[0], { device: 'disk', bus: 'scsi', controllerModel: 'pvscsi', controller: 0, unit: 0, file: 'dc01.vmdk', format: 'vmdk' });
  assert.equal(spec.disks[1]!.device, 'cdrom');
  assert.equal(spec.disks[1]!.bus, 'sata');
  assert.equal(spec.disks[1]!.controllerModel, 'ahci');
  assert.deepEqual(spec.nics, [
    { model: 'vmxnet3', mac: '00:50:56:9a:3c:5e', network: 'VM Network', connection: 'network' },
    { model: 'vmxnet3', mac: '00:50:56:3f:00:12', network: 'Backup VLAN 30', connection: 'network' },
  ]);
});

test('vmx: a virtio/UEFI spec from elsewhere gets a clean .vmx and the notes of what changed', () => {
  const spec: VmSpec = {
    ...emptySpec('web "01"'),
    firmware: { type: 'uefi', secureBoot: true, tpm: true },
    cpu: { count: 4, sockets: 1, cores: 2, threads: 2 },
    memory: { bytes: 3000 * 1024 * 1024, maxBytes: 8192 * 1024 * 1024 },
    os: { family: 'linux', variant: 'fedora39' },
    disks: [
      { device: 'disk', bus: 'virtio', file: 'web.qcow2', format: 'qcow2', bootOrder: 1 },
      { device: 'cdrom', bus: 'sata', file: 'seed.iso' },
    ],
    nics: [{ model: 'virtio', mac: '52:54:00:12:34:56', network: 'default', connection: 'network' }],
    consoles: [{ type: 'serial', port: 0 }],
    graphics: [{ type: 'spice', port: 5900 }],
    extra: { libvirt: { 'memballoon': 'virtio' } },
  };
  const out = vmx.encode!({ spec, name: 'web01', diskFiles: [{ file: 'web01-disk0.vmdk', format: 'vmdk', capacity: 1 << 30 }, { file: 'seed.iso', format: 'raw', capacity: 0 }] });
  const text = String(out.files[0]!.data);
  golden('foreign-virtio-uefi.out.vmx', text);
  const by = (s: string) => out.notes.filter((n) => n.setting === s);
  assert.deepEqual(by('disks[0].bus').map((n) => [n.action, n.from, n.to]), [['changed', 'virtio', 'scsi (pvscsi)']]);
  assert.deepEqual(by('nics[0].model').map((n) => [n.action, n.from, n.to]), [['changed', 'virtio', 'vmxnet3']]);
  assert.equal(by('nics[0].mac')[0]?.action, 'changed', 'a MAC outside VMware\'s static range is kept with checkMACAddress off, and said so');
  assert.equal(by('firmware.tpm')[0]?.action, 'changed');
  for (const s of ['memory.maxBytes', 'cpu.threads', 'graphics', 'extra.libvirt']) assert.equal(by(s)[0]?.action, 'dropped', s);
  assert.equal(by('os.variant')[0]?.to, 'otherlinux-64');
  assert.match(text, /^displayName = "web \|2201\|22"$/m, 'quotes in values are written as |22');
  assert.match(text, /^memsize = "3000"$/m);
  assert.match(text, /^scsi0.virtualDev = "pvscsi"$/m);
  assert.match(text, /^ethernet0.checkMACAddress = "FALSE"$/m);
  const back = vmx.decode!(Buffer.from(text), 'web01.vmx').spec;
  assert.equal(back.name, 'web "01"');
  assert.deepEqual(back.firmware, { type: 'uefi', secureBoot: true, tpm: true });
  assert.equal(back.nics[0]!.mac, '52:54:00:12:34:56');
  assert.equal(back.disks[0]!.file, 'web01-disk0.vmdk');
});

test('vmx: a Windows spec gets the SCSI and NIC it has inbox drivers for', () => {
  const spec: VmSpec = { ...emptySpec('w'), os: { family: 'windows' }, disks: [{ device: 'disk', bus: 'virtio', file: 'w.vmdk' }], nics: [{ model: 'virtio' }] };
  const text = String(encode(spec).files[0]!.data);
  assert.match(text, /^scsi0.virtualDev = "lsisas1068"$/m);
  assert.match(text, /^ethernet0.virtualDev = "e1000e"$/m);
});

test('vmx: syntax: comments, bare values, escapes, case-insensitive keys, the last duplicate wins', () => {
  const e = parseVmx(Buffer.from('# comment\n\n  displayName = "a|7Cb|22c"\nide1:0.fileName = \nMEMSIZE = "64"\nmemsize = "128"\r\n'), 'x.vmx');
  assert.deepEqual(e.map((x) => [x.key, x.value]), [['displayName', 'a|b"c'], ['ide1:0.fileName', ''], ['MEMSIZE', '64'], ['memsize', '128']]);
  assert.equal(vmx.decode!(Buffer.from('displayName = "a"\nMEMSIZE = "64"\nmemsize = "128"\n'), 'x.vmx').spec.memory.bytes, 128 << 20);
  assert.equal(escapeValue('a"b|c\nd'), 'a|22b|7Cc|0Ad');
});

test('vmx: a legacy .encoding (windows-1252) is honoured', () => {
  const data = Buffer.concat([Buffer.from('.encoding = "windows-1252"\ndisplayName = "Caf'), Buffer.from([0xe9]), Buffer.from('"\n')]);
  assert.equal(vmx.decode!(data, 'c.vmx').spec.name, 'Café');
});

test('vmx: probe', () => {
  assert.equal(vmx.probe(readFileSync(join(DIR, 'esxi-win2019.vmx')), 'x'), 85);
  assert.equal(vmx.probe(Buffer.from('<?xml version="1.0"?><domain/>'), 'x.xml'), 0);
  assert.equal(vmx.probe(Buffer.from([0, 1, 2, 3]), 'x.vmx'), 0);
});

test('vmx: hostile input fails with a clear code', () => {
  throwsCode(() => vmx.decode!(Buffer.from('displayName = "a"\nmemsize = "64"\nthis line has no equals\n'), 'bad.vmx'), 'ERR_CORRUPT', 'bad.vmx', 'line 3');
  throwsCode(() => vmx.decode!(Buffer.from('displayName = "a\n'), 'q.vmx'), 'ERR_CORRUPT', 'line 1', 'closing quote');
  throwsCode(() => vmx.decode!(Buffer.from('displayName = "a"\nmemsize = "99999999999"\n'), 'm.vmx'), 'ERR_CORRUPT', 'memsize');
  throwsCode(() => vmx.decode!(Buffer.from('memsize = "-5"\n'), 'm.vmx'), 'ERR_CORRUPT', 'memsize');
  throwsCode(() => vmx.decode!(Buffer.from('numvcpus = "100000"\n'), 'c.vmx'), 'ERR_CORRUPT', 'numvcpus');
  throwsCode(() => vmx.decode!(Buffer.from('ethernet0.present = "TRUE"\nethernet0.addressType = "static"\nethernet0.address = "zz:00"\n'), 'n.vmx'), 'ERR_CORRUPT', 'ethernet0.address');
  throwsCode(() => vmx.decode!(Buffer.from('scsi0.present = "TRUE"\nscsi0:99.present = "TRUE"\nscsi0:99.fileName = "a.vmdk"\n'), 's.vmx'), 'ERR_CORRUPT', 'scsi0:99');
  throwsCode(() => vmx.decode!(Buffer.from('.encoding = "no-such-charset"\n'), 'e.vmx'), 'ERR_UNSUPPORTED', '.encoding');
  throwsCode(() => vmx.decode!(Buffer.alloc((8 << 20) + 1, 0x23), 'huge.vmx'), 'ERR_UNSUPPORTED', 'huge.vmx', 'limit');
});
