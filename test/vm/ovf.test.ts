/**
 * OVF codec: golden decodes of the three producers' dialects (VMware ovftool, VirtualBox
 * export, XenCenter), a golden encode, round trips, and hostile descriptors.
 *
 * Goldens live beside the fixtures; POLYVISOR_UPDATE_GOLDEN=1 rewrites them (review the diff).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ovf } from '../../src/vm/codecs/ovf.js';
import { readOvf } from '../../src/vm/codecs/ovf-read.js';
import { encodeOvf } from '../../src/vm/codecs/ovf-write.js';
import { emptySpec, type VmSpec } from '../../src/vm/spec.js';
import type { EncodeInput } from '../../src/vm/codec.js';
import { throwsCode, assertGolden } from '../helpers.js';

const FIX = join(process.cwd(), 'test/vm/fixtures/ovf');

const DIALECTS = [
  { file: 'vmware-ovftool.ovf', dialect: 'vmware' },
  { file: 'virtualbox-export.ovf', dialect: 'virtualbox' },
  { file: 'xenserver-xencenter.ovf', dialect: 'xenserver' },
];

/** The disk files an OVA or a converter would hand the encoder: what the descriptor recorded. */
function diskFilesOf(spec: VmSpec): EncodeInput['diskFiles'] {
  return spec.disks.map((d) => (d.device === 'disk' && d.file ? { file: d.file, format: d.format ?? 'vmdk', capacity: d.capacity ?? 0 } : undefined));
}

const golden = (name: string, actual: string) => assertGolden(join(FIX, name), actual);

for (const { file, dialect } of DIALECTS) {
  test(`ovf decode golden: ${file}`, () => {
    const data = readFileSync(join(FIX, file));
    assert.equal(ovf.probe(data, file), 95);
    const { spec, notes } = ovf.decode!(data, file);
    assert.equal((spec.extra.ovf as { dialect: string }).dialect, dialect);
    golden(file.replace(/\.ovf$/, '.spec.json'), JSON.stringify({ spec, notes }, null, 2) + '\n');
  });

  test(`ovf round trip decode → encode → decode: ${file}`, () => {
    const { spec } = ovf.decode!(readFileSync(join(FIX, file)), file);
    const out = ovf.encode!({ spec, diskFiles: diskFilesOf(spec), name: spec.name });
    assert.equal(out.files.length, 1);
    assert.equal(out.files[0]!.name, `${spec.name}.ovf`);
    const again = ovf.decode!(Buffer.from(out.files[0]!.data), 'again.ovf').spec;
    // What OVF writing adds: an adapter model where the source named none (E1000, the one every importer has).
    const expected = structuredClone(spec);
    for (const n of expected.nics) n.model ??= 'e1000';
    assert.deepEqual(again, expected);
    // and a second pass is a fixed point
    const out2 = ovf.encode!({ spec: again, diskFiles: diskFilesOf(again), name: again.name });
    assert.equal(out2.files[0]!.data, out.files[0]!.data);
  });
}

test('ovf decode: the dialects map their own words onto the model', () => {
  const vmw = readOvf(readFileSync(join(FIX, 'vmware-ovftool.ovf')), 'vmware.ovf').spec;
  assert.deepEqual(vmw.firmware, { type: 'uefi', secureBoot: true });
  assert.deepEqual(vmw.cpu, { count: 4, sockets: 2, cores: 2 });
  assert.equal(vmw.memory.bytes, 6144 * 2 ** 20);
  assert.deepEqual(
    vmw.disks.map((d) => [d.device, d.bus, d.controllerModel, d.unit, d.capacity]),
    [
      ['cdrom', 'sata', 'ahci', 0, undefined],
      ['disk', 'scsi', 'pvscsi', 0, 16 * 2 ** 30],
      ['disk', 'scsi', 'pvscsi', 1, 512 * 2 ** 20],
    ],
  );
  assert.deepEqual(vmw.nics, [{ model: 'vmxnet3', mac: '00:50:56:a1:2b:3c', network: 'DMZ-VLAN20', connection: 'network' }]);
  assert.deepEqual(vmw.os, { family: 'linux', variant: 'ubuntu64Guest' });

  const vbox = readOvf(readFileSync(join(FIX, 'virtualbox-export.ovf')), 'vbox.ovf').spec;
  assert.equal(vbox.name, 'devbox'); // no <Name>: the VirtualSystem's ovf:id
  assert.equal(vbox.uuid, '7c2e9a41-3b5d-4e8f-a6c7-0d1e2f3a4b5c');
  assert.equal(vbox.firmware.type, 'uefi');
  assert.deepEqual(vbox.boot?.order, ['disk', 'cdrom']);
  assert.deepEqual(vbox.nics, [{ model: 'e1000', mac: '08:00:27:c4:d5:e6', network: 'NAT', connection: 'nat' }]);
  assert.equal(vbox.disks[0]!.file, 'devbox-disk001.vmdk'); // HostResource "/disk/vmdisk1", VirtualBox's spelling

  const xen = readOvf(readFileSync(join(FIX, 'xenserver-xencenter.ovf')), 'xen.ovf');
  assert.equal(xen.spec.name, 'billing-db');
  assert.equal(xen.spec.disks[0]!.format, 'vhd');
  assert.deepEqual([xen.spec.disks[1]!.device, xen.spec.disks[1]!.controller, xen.spec.disks[1]!.unit], ['cdrom', 1, 1]); // userdevice 3 = hdd, the secondary channel's slave
  assert.equal(xen.spec.firmware.type, 'uefi');
  assert.ok(xen.notes.some((n) => n.setting.includes('d2e3f4a5') && n.action === 'dropped'), 'the second system of the collection is reported');
});

/** A neutral spec, as another codec would hand it over. */
function neutralSpec(): VmSpec {
  const s = emptySpec('app-01');
  s.description = 'converted <by> "polyvisor" & co';
  s.firmware = { type: 'uefi', secureBoot: true, tpm: true };
  s.cpu = { count: 4, sockets: 1, cores: 4 };
  s.memory = { bytes: 3 * 2 ** 30 };
  s.disks = [
    { device: 'disk', bus: 'virtio', file: 'app-01.qcow2', format: 'qcow2', capacity: 10 * 2 ** 30, bootOrder: 1 },
    { device: 'disk', bus: 'sata', controllerModel: 'ahci', unit: 2, file: 'data.vmdk', capacity: 1 * 2 ** 20 + 512 },
    { device: 'cdrom', bus: 'ide', controller: 1, unit: 0, file: '/isos/install.iso' },
  ];
  s.nics = [
    { model: 'virtio', mac: '52:54:00:12:34:56', network: 'default', connection: 'network' },
    { model: 'e1000e', connection: 'none' },
  ];
  s.consoles = [{ type: 'serial', port: 0 }, { type: 'xen' }];
  s.graphics = [{ type: 'vnc', port: 5900, listen: '127.0.0.1' }];
  s.os = { family: 'windows', variant: 'win2k19' };
  s.boot = { order: ['cdrom', 'disk'] };
  return s;
}

test('ovf encode golden: a neutral spec, with notes for what OVF cannot carry', () => {
  const spec = neutralSpec();
  const out = ovf.encode!({
    spec,
    diskFiles: [
      { file: 'app-01-disk1.vmdk', format: 'vmdk', capacity: 10 * 2 ** 30 },
      { file: 'app-01-disk2.vmdk', format: 'vmdk', capacity: 2 ** 20 + 512 },
      undefined,
    ],
    name: 'app-01',
  });
  golden('encode-neutral.ovf', String(out.files[0]!.data));
  golden('encode-neutral.notes.json', JSON.stringify(out.notes, null, 2) + '\n');
  const settings = out.notes.map((n) => n.setting);
  for (const s of ['disks[0].bus', 'nics[0].model', 'firmware.tpm', 'consoles[1]', 'graphics[0]', 'boot.order', 'disks[2].file', 'disks[0].bootOrder', 'os.variant']) {
    assert.ok(settings.includes(s), `a note for ${s}: ${settings.join(', ')}`);
  }
  // what it wrote reads back as the model says, where OVF can say it
  const back = ovf.decode!(Buffer.from(out.files[0]!.data), 'app-01.ovf').spec;
  assert.deepEqual(back.firmware, { type: 'uefi', secureBoot: true });
  assert.deepEqual(back.cpu, { count: 4, sockets: 1, cores: 4 });
  assert.equal(back.memory.bytes, 3 * 2 ** 30);
  assert.equal(back.description, spec.description);
  assert.deepEqual(
    back.disks.map((d) => [d.device, d.bus, d.controller, d.unit, d.file, d.capacity]),
    [
      ['disk', 'scsi', 0, 0, 'app-01-disk1.vmdk', 10 * 2 ** 30],
      ['disk', 'sata', 0, 2, 'app-01-disk2.vmdk', 2 ** 20 + 512],
      ['cdrom', 'ide', 1, 0, undefined, undefined],
    ],
  );
  assert.deepEqual(back.nics, [
    { model: 'e1000', mac: '52:54:00:12:34:56', network: 'default', connection: 'network' },
    { model: 'e1000e', connection: 'none' },
  ]);
  assert.equal(back.os.family, 'windows');
});

test('ovf encode: OVF 2.0 on request, and file sizes when known', () => {
  const spec = emptySpec('tiny');
  spec.disks = [{ device: 'disk', bus: 'scsi', capacity: 2 ** 20 }];
  const out = encodeOvf({ spec, diskFiles: [{ file: 'tiny-disk1.vmdk', format: 'vmdk', capacity: 2 ** 20 }], name: 'tiny' }, { version: '2.0', fileSizes: [70144] });
  const xml = String(out.files[0]!.data);
  assert.match(xml, /xmlns="http:\/\/schemas\.dmtf\.org\/ovf\/envelope\/2"/);
  assert.match(xml, /ovf:size="70144"/);
  const back = readOvf(xml, 'tiny.ovf');
  assert.equal((back.spec.extra.ovf as { version: string }).version, '2.0');
  assert.deepEqual(back.references, [{ id: 'file1', href: 'tiny-disk1.vmdk', size: 70144 }]);
});

test('ovf probe: only an Envelope in the OVF namespace', () => {
  assert.equal(ovf.probe(Buffer.from('<?xml version="1.0"?><domain type="kvm"/>'), 'x.xml'), 0);
  assert.equal(ovf.probe(Buffer.from('<Envelope xmlns="urn:other"/>'), 'x.xml'), 0);
  assert.equal(ovf.probe(Buffer.from('<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2"/>'), 'x.ovf'), 95);
  assert.equal(ovf.probe(Buffer.alloc(0), 'x'), 0);
});

const minimal = (hw: string, extra = '') => `<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References>${extra}</References>
  <VirtualSystem ovf:id="vm"><Info>x</Info>
    <VirtualHardwareSection><Info>x</Info>${hw}</VirtualHardwareSection>
  </VirtualSystem>
</Envelope>`;

test('ovf hostile: DTDs and entities are refused', () => {
  const xml = `<?xml version="1.0"?><!DOCTYPE lol [<!ENTITY a "aaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>\n` + minimal('').replace('<?xml version="1.0"?>', '');
  throwsCode(() => ovf.decode!(Buffer.from(xml), 'bomb.ovf'), 'ERR_UNSUPPORTED', 'bomb.ovf', 'DTD');
  const ext = `<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1">&x;</Envelope>`;
  throwsCode(() => ovf.decode!(Buffer.from(ext), 'xxe.ovf'), 'ERR_UNSUPPORTED', 'xxe.ovf');
});

test('ovf hostile: malformed XML, wrong documents', () => {
  throwsCode(() => ovf.decode!(Buffer.from('<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><References></Envelope>'), 'bad.ovf'), 'ERR_CORRUPT', 'bad.ovf');
  throwsCode(() => ovf.decode!(Buffer.from('<domain/>'), 'libvirt.xml'), 'ERR_CORRUPT', 'libvirt.xml', 'Envelope');
  throwsCode(() => ovf.decode!(Buffer.from('<Envelope xmlns="http://www.vmware.com/schema/ovf/1/envelope"><VirtualSystem/></Envelope>'), 'old.ovf'), 'ERR_UNSUPPORTED', 'old.ovf', 'namespace');
  throwsCode(() => ovf.decode!(Buffer.from(minimal('').replace(/<VirtualSystem[\s\S]*<\/VirtualSystem>/, '')), 'empty.ovf'), 'ERR_CORRUPT', 'no VirtualSystem');
});

test('ovf hostile: absurd values', () => {
  const mem = (units: string, q = '1024') => minimal(`<Item><rasd:AllocationUnits>${units}</rasd:AllocationUnits><rasd:InstanceID>42</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>${q}</rasd:VirtualQuantity></Item>`);
  throwsCode(() => ovf.decode!(Buffer.from(mem('furlongs * 2^20')), 'm.ovf'), 'ERR_CORRUPT', 'm.ovf', 'InstanceID 42', 'furlongs');
  throwsCode(() => ovf.decode!(Buffer.from(mem('byte * 7^3')), 'm.ovf'), 'ERR_CORRUPT', 'InstanceID 42');
  throwsCode(() => ovf.decode!(Buffer.from(mem('byte * 2^20', '-5')), 'm.ovf'), 'ERR_CORRUPT', 'InstanceID 42');
  throwsCode(() => ovf.decode!(Buffer.from(mem('byte * 2^20', '99999999999999999999')), 'm.ovf'), 'ERR_CORRUPT', 'InstanceID 42');
  // under the model's 1 MiB floor: the validator names the field
  throwsCode(() => ovf.decode!(Buffer.from(mem('byte', '10')), 'm.ovf'), 'ERR_CORRUPT', 'memory.bytes');
  // an unknown ResourceType is kept, not guessed at, and written back
  const odd = minimal('<Item><rasd:ElementName>quantum flux</rasd:ElementName><rasd:InstanceID>9</rasd:InstanceID><rasd:ResourceType>31337</rasd:ResourceType></Item>');
  const { spec } = ovf.decode!(Buffer.from(odd), 'odd.ovf');
  assert.deepEqual((spec.extra.ovf as { items: unknown[] }).items, [{ ElementName: 'quantum flux', ResourceType: '31337' }]);
  const out = String(ovf.encode!({ spec, diskFiles: [], name: 'vm' }).files[0]!.data);
  assert.match(out, /<rasd:ResourceType>31337<\/rasd:ResourceType>/);
  // a disk pointing nowhere, a parent that is not a controller, compressed files
  throwsCode(() => ovf.decode!(Buffer.from(minimal('<Item><rasd:HostResource>ovf:/disk/nope</rasd:HostResource><rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>')), 'd.ovf'), 'ERR_CORRUPT', 'InstanceID 5', 'nope');
  throwsCode(() => ovf.decode!(Buffer.from(minimal('<Item><rasd:InstanceID>5</rasd:InstanceID><rasd:Parent>77</rasd:Parent><rasd:ResourceType>15</rasd:ResourceType></Item>')), 'd.ovf'), 'ERR_CORRUPT', 'Parent 77');
  throwsCode(() => ovf.decode!(Buffer.from(minimal('', '<File ovf:id="f" ovf:href="d.vmdk.gz" ovf:compression="gzip"/>')), 'gz.ovf'), 'ERR_UNSUPPORTED', 'gz.ovf', 'gzip');
  throwsCode(() => ovf.decode!(Buffer.from(minimal('<Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>three</rasd:ResourceType></Item>')), 'rt.ovf'), 'ERR_CORRUPT', 'rt.ovf', 'InstanceID 1');
});
