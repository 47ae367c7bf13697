/**
 * Virtual Server 2005 R2 / Virtual PC 2007 .vmc: UTF-16 LE files with a byte-order mark, decoded
 * against golden specs (UPDATE_GOLDEN=1 rewrites them; review by eye), and hostile input.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { vmc } from '../../src/vm/codecs/vmc.js';
import { xmlText } from '../../src/vm/xml.js';
import { throwsCode, assertGolden } from '../helpers.js';

const DIR = join(process.cwd(), 'test/vm/fixtures/vmc');

const golden = (name: string, actual: string) => assertGolden(join(DIR, name), actual);

for (const fixture of ['vs2005r2-filesrv03', 'vpc2007-kassenbuero-xp']) {
  test(`vmc: ${fixture} decodes to its golden spec`, () => {
    const data = readFileSync(join(DIR, `${fixture}.vmc`));
    assert.deepEqual([...data.subarray(0, 2)], [0xff, 0xfe], 'the fixture is UTF-16 LE with a BOM, as the products write it');
    const r = vmc.decode!(data, `${fixture}.vmc`);
    golden(`${fixture}.spec.json`, JSON.stringify(r, null, 2) + '\n');
    assert.equal(vmc.probe(data, 'x'), 90);
  });
}

test('vmc: Virtual Server 2005 R2 VM: name from the file, memory, IDE + SCSI disks, CD, NIC, BIOS GUID', () => {
  const { spec, notes } = vmc.decode!(readFileSync(join(DIR, 'vs2005r2-filesrv03.vmc')), '/srv/vms/FILESRV03.vmc');
  assert.equal(spec.name, 'FILESRV03');
  assert.equal(spec.memory.bytes, 1024 << 20);
  assert.equal(spec.uuid, '3f2a9c4e-1b7d-4e60-9a85-2c6d0f81b3a4');
  assert.deepEqual(spec.firmware, { type: 'bios' });
  assert.equal(spec.os.family, 'windows');
  assert.equal(spec.description, 'File server & print spooler');
  assert.deepEqual(
    spec.disks.map((d) => [d.device, d.bus, d.controller, d.unit, d.file, d.format]),
    [
      ['disk', 'ide', 0, 0, 'FILESRV03.vhd', 'vhd'],
      ['cdrom', 'ide', 1, 0, '../../ISO/en_win_srv_2003_r2_standard_cd1.iso', 'raw'],
      ['disk', 'scsi', 0, 0, 'FILESRV03-data.vhd', 'vhd'],
    ],
  );
  assert.ok(notes.some((n) => n.setting === 'disks[2].file' && n.from === 'E:\\VS Data\\FILESRV03-data.vhd'), 'an absolute-only path is recorded by its name, and said so');
  assert.deepEqual(spec.nics, [{ mac: '00:03:ff:4a:7b:21', network: 'External Network (Broadcom NetXtreme Gigabit Ethernet)', connection: 'network' }]);
});

test('vmc: Virtual PC 2007 VM: non-ASCII paths, empty CD drive, NAT', () => {
  const { spec } = vmc.decode!(readFileSync(join(DIR, 'vpc2007-kassenbuero-xp.vmc')), 'Kassenbüro XP.vmc');
  assert.equal(spec.name, 'Kassenbüro XP');
  assert.equal(spec.memory.bytes, 512 << 20);
  assert.deepEqual(spec.disks, [
    { device: 'cdrom', bus: 'ide', controllerModel: 'piix3', controller: 1, unit: 0 },
    { device: 'disk', bus: 'ide', controllerModel: 'piix3', controller: 0, unit: 0, file: 'Kassenbüro XP Hard Disk.vhd', format: 'vhd' },
  ]);
  assert.deepEqual(spec.nics, [{ mac: '00:03:ff:91:c2:e4', network: 'Shared Networking (NAT)', connection: 'nat' }]);
  assert.deepEqual(spec.os, { family: 'windows', variant: 'Windows XP Professional' });
});

test('vmc: text encodings: UTF-16 BE, UTF-8 with and without a mark', () => {
  const xml = '<?xml version="1.0"?><preferences><hardware><memory><ram_size type="integer">256</ram_size></memory></hardware></preferences>';
  const be = Buffer.from('\ufeff' + xml, 'utf16le');
  be.swap16();
  for (const data of [be, Buffer.from(xml), Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(xml)])]) {
    assert.equal(xmlText(data), xml);
    assert.equal(vmc.decode!(data, 'a.vmc').spec.memory.bytes, 256 << 20);
  }
  assert.equal(vmc.encode, undefined, '.vmc is read only');
});

test('vmc: hostile input', () => {
  throwsCode(() => vmc.decode!(Buffer.from('<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x "y">]><preferences/>'), 'dtd.vmc'), 'ERR_UNSUPPORTED', 'dtd.vmc', 'DTD');
  throwsCode(() => vmc.decode!(Buffer.from('<preferences><hardware><memory><ram_size type="integer">99999999</ram_size></memory></hardware></preferences>'), 'm.vmc'), 'ERR_CORRUPT', 'ram_size');
  throwsCode(() => vmc.decode!(Buffer.from('<preferences><hardware><pci_bus><ethernet_adapter><ethernet_controller id="0"><ethernet_card_address type="bytes">XYZ</ethernet_card_address></ethernet_controller></ethernet_adapter></pci_bus></hardware></preferences>'), 'n.vmc'), 'ERR_CORRUPT', 'ethernet_card_address');
  throwsCode(() => vmc.decode!(Buffer.from('<configuration/>'), 'c.vmc'), 'ERR_CORRUPT', '<preferences>');
  throwsCode(() => vmc.decode!(Buffer.from('<preferences><hardware><pci_bus><ide_adapter><ide_controller id="7"><location id="0"><drive_type>1</drive_type></location></ide_controller></ide_adapter></pci_bus></hardware></preferences>'), 'i.vmc'), 'ERR_CORRUPT', 'IDE');
  throwsCode(() => vmc.decode!(Buffer.from('<preferences>' + 'x'.repeat((16 << 20) + 1) + '</preferences>'), 'huge.vmc'), 'ERR_UNSUPPORTED', 'huge.vmc');
  assert.equal(vmc.probe(Buffer.from('random'), 'x.vmc'), 0);
});
