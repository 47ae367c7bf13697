/**
 * Hyper-V: configuration XML of Windows Server 2008 R2 (generation 1) and 2012 R2
 * (generation 2) decoded against golden specs; the .vmcx container read from a file this test
 * builds to the documented layout; NAME.ps1 written against golden scripts and checked for
 * structure (pwsh is not installed here, so no PowerShell parser checks the syntax); notes;
 * hostile input. UPDATE_GOLDEN=1 rewrites goldens: review the diff by eye.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isPolyvisorError } from '../../src/errors.js';
import { hyperv } from '../../src/vm/codecs/hyperv.js';
import { psQuote } from '../../src/vm/codecs/hyperv-ps1.js';
import { parseVmcx } from '../../src/vm/codecs/hyperv-vmcx.js';
import type { HvTree } from '../../src/vm/codecs/hyperv-xml.js';
import { emptySpec, type VmSpec } from '../../src/vm/spec.js';
import { throwsCode, assertGolden } from '../helpers.js';

const DIR = join(process.cwd(), 'test/vm/fixtures/hyperv');

function encode(spec: VmSpec, name: string) {
  const r = hyperv.encode!({ spec, name, diskFiles: spec.disks.map((d) => (d.file ? { file: d.file.replace(/\.(vhd|vmdk|qcow2)$/i, '.vhdx'), format: 'vhdx', capacity: 0 } : undefined)) });
  const data = r.files[0]!.data as Buffer;
  assert.deepEqual([...data.subarray(0, 3)], [0xef, 0xbb, 0xbf], 'UTF-8 with a BOM, for Windows PowerShell 5.1');
  return { ...r, text: data.subarray(3).toString('utf8') };
}

/** PowerShell's own parser, when there is one (there is not in this project's CI). */
function pwshSyntaxCheck(text: string): void {
  if (spawnSync('pwsh', ['-v']).error) return;
  const dir = mkdtempSync(join(tmpdir(), 'pv-ps1-'));
  try {
    writeFileSync(join(dir, 'a.ps1'), text);
    const r = spawnSync('pwsh', ['-NoProfile', '-Command', `$e=$null; [void][System.Management.Automation.Language.Parser]::ParseFile('${join(dir, 'a.ps1')}', [ref]$null, [ref]$e); if ($e) { $e; exit 1 }`], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stdout + r.stderr);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const golden = (name: string, actual: string) => assertGolden(join(DIR, name), actual);

for (const fixture of ['ws2008r2-gen1', 'ws2012r2-gen2']) {
  test(`hyperv: ${fixture} decodes to its golden spec`, () => {
    const data = readFileSync(join(DIR, `${fixture}.xml`));
    assert.equal(hyperv.probe(data, 'x.xml'), 90);
    golden(`${fixture}.spec.json`, JSON.stringify(hyperv.decode!(data, `${fixture}.xml`), null, 2) + '\n');
  });

  test(`hyperv: ${fixture} encodes to its golden .ps1`, () => {
    const { spec } = hyperv.decode!(readFileSync(join(DIR, `${fixture}.xml`)), `${fixture}.xml`);
    const out = encode(spec, fixture);
    assert.equal(out.files[0]!.name, `${fixture}.ps1`);
    golden(`${fixture}.ps1`, out.text);
    pwshSyntaxCheck(out.text);
    // structure: one Add-VMHardDiskDrive per disk, one Add-VMDvdDrive per CD-ROM, in the script's folder
    const disks = spec.disks.filter((d) => d.device === 'disk');
    const cds = spec.disks.filter((d) => d.device === 'cdrom');
    assert.equal(out.text.match(/^Add-VMHardDiskDrive /gm)?.length ?? 0, disks.length);
    assert.equal(out.text.match(/^Add-VMDvdDrive /gm)?.length ?? 0, cds.length);
    for (const d of disks) assert.ok(out.text.includes(`(Join-Path $here ${psQuote(d.file!.replace(/\.vhd$/, '.vhdx'))})`), d.file);
    assert.match(out.text, /^\$ErrorActionPreference = 'Stop'\r$/m);
    assert.match(out.text, /^\$here = \$PSScriptRoot\r$/m);
    assert.match(out.text, /\[string\]\$SwitchName = ''/);
  });
}

test('hyperv: generation 1 (2008 R2): IDE disks and DVD, dynamic memory, synthetic NIC, COM1, BIOS boot order', () => {
  const { spec, notes } = hyperv.decode!(readFileSync(join(DIR, 'ws2008r2-gen1.xml')), 'ws2008r2-gen1.xml');
  assert.equal(spec.name, "APP01 - Finance 'Ledger'");
  assert.equal(spec.uuid, 'a6c3e0f2-84b1-4d7e-9f25-6b08d1c4e379', 'the BIOS GUID: what the guest sees');
  assert.equal((spec.extra.hyperv as Record<string, unknown>).global_id, 'd41c8a77-2f05-4e3b-8c61-95a0e7b3d2f8');
  assert.deepEqual(spec.firmware, { type: 'bios' });
  assert.deepEqual(spec.memory, { bytes: 2048 * 1024 * 1024, maxBytes: 8192 * 1024 * 1024 });
  assert.equal(spec.cpu.count, 2);
  assert.deepEqual(
    spec.disks.map((d) => [d.device, d.bus, d.controller, d.unit, d.file, d.format]),
    [
      ['disk', 'ide', 0, 0, 'APP01-system.vhd', 'vhd'],
      ['disk', 'ide', 0, 1, 'APP01-data.vhd', 'vhd'],
      ['cdrom', 'ide', 1, 0, 'en_windows_server_2008_r2_with_sp1_x64.iso', 'raw'],
    ],
  );
  assert.ok(notes.some((n) => n.setting === 'disks[0].file' && /Virtual Hard Disks/.test(n.reason)));
  assert.deepEqual(spec.nics, [{ model: 'hyperv-netvsc', mac: '00:15:5d:0a:3c:41', network: 'Corp LAN', connection: 'network' }]);
  assert.deepEqual(spec.consoles, [{ type: 'serial', port: 0 }]);
  assert.deepEqual(spec.boot, { order: ['disk', 'cdrom', 'network', 'floppy'] });
});

test('hyperv: generation 2 (2012 R2): UEFI with secure boot, SCSI disk and DVD, static MAC', () => {
  const { spec } = hyperv.decode!(readFileSync(join(DIR, 'ws2012r2-gen2.xml')), 'ws2012r2-gen2.xml');
  assert.deepEqual(spec.firmware, { type: 'uefi', secureBoot: true });
  assert.deepEqual(spec.memory, { bytes: 4096 * 1024 * 1024 }, 'static memory: the limit is not a ceiling');
  assert.deepEqual(
    spec.disks.map((d) => [d.device, d.bus, d.controllerModel, d.controller, d.unit, d.file, d.format]),
    [
      ['disk', 'scsi', 'hyperv-scsi', 0, 0, 'web02.vhdx', 'vhdx'],
      ['cdrom', 'scsi', 'hyperv-scsi', 0, 1, 'ubuntu-14.04.2-server-amd64.iso', 'raw'],
    ],
  );
  assert.deepEqual(spec.nics, [{ model: 'hyperv-netvsc', mac: '00:15:5d:01:2b:7e', network: 'External vSwitch', connection: 'network' }]);
});

test('hyperv: a legacy adapter (no VMBus channel) is hyperv-legacy', () => {
  const xml = `<?xml version="1.0"?><configuration><_0b8e1a5c-7d2f-4c39-a164-e5f2093d7b81_><Connection><AltSwitchName type="string">Lab</AltSwitchName></Connection><MacAddress type="string">00155D0A3C42</MacAddress><MacAddressIsStatic type="bool">True</MacAddressIsStatic></_0b8e1a5c-7d2f-4c39-a164-e5f2093d7b81_><properties><name type="string">old</name><subtype type="integer">0</subtype></properties></configuration>`;
  assert.deepEqual(hyperv.decode!(Buffer.from(xml), 'old.xml').spec.nics, [{ model: 'hyperv-legacy', mac: '00:15:5d:0a:3c:42', network: 'Lab', connection: 'network' }]);
});

// --- .vmcx: a container built here to the layout dissect.hypervisor documents (see hyperv-vmcx.ts)

/** Builds a version-0x400 storage file holding `tree` in one key table (checksums left zero). */
function buildVmcx(tree: HvTree, opts: { bigValue?: boolean } = {}): Buffer {
  const entries: Buffer[] = [];
  let pos = 10; // key table header
  const fileObjects: Array<{ offset: number; data: Buffer; fix: (off: number) => void }> = [];
  const add = (type: number, key: string, value: Buffer, parentOffset: number, flags = 0): number => {
    const k = Buffer.from(key + '\0', 'utf8');
    const size = 21 + k.length + value.length;
    const h = Buffer.alloc(21);
    h.writeUInt16LE(type | (flags << 8), 0);
    h.writeUInt32LE(size, 2);
    h.writeUInt16LE(parentOffset ? 1 : 0, 6);
    h.writeUInt32LE(parentOffset, 8);
    h.writeUInt8(k.length, 20);
    const at = pos;
    entries.push(Buffer.concat([h, k, value]));
    pos += size;
    return at;
  };
  const walk = (t: HvTree, parent: number): void => {
    for (const [key, v] of Object.entries(t)) {
      if (typeof v === 'object') walk(v, add(9, key, Buffer.alloc(12), parent));
      else if (typeof v === 'number') {
        const b = Buffer.alloc(8);
        b.writeBigUInt64LE(BigInt(v));
        add(4, key, b, parent);
      } else if (typeof v === 'boolean') {
        const b = Buffer.alloc(4);
        b.writeUInt32LE(v ? 1 : 0);
        add(8, key, b, parent);
      } else {
        const s = Buffer.from(v, 'utf16le');
        if (opts.bigValue && s.length >= 0x800) {
          const ptr = Buffer.alloc(12);
          ptr.writeUInt32LE(s.length, 0);
          const entryIndex = entries.length;
          add(6, key, ptr, parent, 1);
          fileObjects.push({ offset: 0, data: s, fix: (off) => entries[entryIndex]!.writeBigUInt64LE(BigInt(off), 21 + Buffer.byteLength(key) + 1 + 4) });
        } else {
          const l = Buffer.alloc(4);
          l.writeUInt32LE(s.length);
          add(6, key, Buffer.concat([l, s]), parent);
        }
      }
    }
  };
  walk(tree, 0);
  const keyTableOffset = 0x3000;
  const keyTable = Buffer.concat([Buffer.from([2, 0, 1, 0, 1, 0, 0, 0, 0, 0]), ...entries]);
  const keyTableSize = Math.ceil(keyTable.length / 0x1000) * 0x1000 + 0x1000;
  let next = keyTableOffset + keyTableSize;
  for (const f of fileObjects) {
    f.offset = next;
    next += Math.ceil(f.data.length / 0x1000) * 0x1000;
  }
  // offsets of file objects are known only now: patch the pointers
  for (const f of fileObjects) f.fix(f.offset);
  const finalTable = Buffer.concat([Buffer.from([2, 0, 1, 0, 1, 0, 0, 0, 0, 0]), ...entries]);
  const file = Buffer.alloc(next);
  for (const at of [0, 0x1000]) {
    file.writeUInt32LE(0x01282014, at);
    file.writeUInt16LE(at === 0 ? 2 : 1, at + 8); // the header at 0 is the live one
    file.writeUInt32LE(0x400, at + 10);
    file.writeUInt32LE(0x1000, at + 22);
    file.writeBigUInt64LE(0x2800n, at + 26);
    file.writeBigUInt64LE(0x800n, at + 34);
    file.writeUInt32LE(0x1000, at + 42);
  }
  file.writeUInt32LE(0x01110003, 0x2800); // replay log, no pending entries
  file.writeUInt32LE(0x01110001, 0x2000);
  const objects = [{ type: 2, offset: keyTableOffset, size: keyTableSize }, ...fileObjects.map((f) => ({ type: 3, offset: f.offset, size: Math.ceil(f.data.length / 0x1000) * 0x1000 }))];
  file.writeUInt32LE(objects.length, 0x2004);
  objects.forEach((o, i) => {
    const e = 0x2008 + i * 18;
    file.writeUInt8(o.type, e);
    file.writeBigUInt64LE(BigInt(o.offset), e + 5);
    file.writeUInt32LE(o.size, e + 13);
    file.writeUInt8(1, e + 17);
  });
  finalTable.copy(file, keyTableOffset);
  for (const f of fileObjects) f.data.copy(file, f.offset);
  return file;
}

const VMCX_TREE: HvTree = {
  configuration: {
    properties: { name: 'sql03', global_id: '3B7F0C92-E41A-4D58-B6C3-90A2F5E17D64', subtype: 1, version: 2304, notes: 'x'.repeat(1200) },
    settings: { memory: { bank: { size: 16384, dynamic_memory_enabled: true, limit: 32768, reservation: 2048 } }, processors: { count: 8 } },
    manifest: {
      vdev001: { device: 'd422512d-2bf2-4752-809d-7b82b5fcb1b4', instance: '5A0E3D71-C98B-4F26-A1D4-7E36B20F9C85', name: 'Synthetic SCSI Controller' },
      vdev002: { device: '2fc216b0-d2e2-4967-9b6d-b8a5c9ca2778', instance: 'C1D8E4A2-6F37-4B90-85E1-2A9D07C3F6B4', name: 'Synthetic Ethernet Port' },
    },
    '_5a0e3d71-c98b-4f26-a1d4-7e36b20f9c85_': {
      ChannelInstanceGuid: '{9e2c41b7-03d5-4a68-bf19-c75e8a0d24f3}',
      controller0: {
        drive0: { pathname: 'C:\\ProgramData\\Microsoft\\Windows\\Virtual Hard Disks\\sql03.vhdx', type: 'VHD' },
        drive1: { pathname: 'D:\\SQLData\\sql03-data.vhdx', type: 'VHD' },
      },
    },
    '_c1d8e4a2-6f37-4b90-85e1-2a9d07c3f6b4_': { ChannelInstanceGuid: '{0d7f3a52-e896-4c1b-a2e0-5b94c6f18d37}', MacAddress: '00155D6E2A19', MacAddressIsStatic: false, Connection: { AltSwitchName: 'SAN' } },
    '_ac6b8dc1-3257-4a70-b1b2-a9c9215659ad_': { secure_boot_enabled: true, bios_guid: '{6D1A93F0-2C58-4E7B-90A4-F3E8B1C5D027}' },
  },
};

test('hyperv: .vmcx (2016+): the documented container is read into the same tree as the XML', () => {
  const data = buildVmcx(VMCX_TREE, { bigValue: true });
  assert.equal(hyperv.probe(data, 'x.vmcx'), 90);
  const { tree, notes } = parseVmcx(data, 'sql03.vmcx');
  assert.deepEqual(notes, []);
  const cfg = tree.configuration as HvTree;
  assert.equal((cfg.properties as HvTree).notes, 'x'.repeat(1200), 'a value in a file object');
  assert.equal((cfg.properties as HvTree).subtype, '1');
  const { spec } = hyperv.decode!(data, 'sql03.vmcx');
  golden('vmcx-built.spec.json', JSON.stringify(spec, null, 2) + '\n');
  assert.equal(spec.name, 'sql03');
  assert.deepEqual(spec.firmware, { type: 'uefi', secureBoot: true });
  assert.deepEqual(spec.memory, { bytes: 16384 * 1024 * 1024, maxBytes: 32768 * 1024 * 1024 });
  assert.equal(spec.cpu.count, 8);
  assert.deepEqual(spec.disks.map((d) => [d.bus, d.controller, d.unit, d.file]), [['scsi', 0, 0, 'sql03.vhdx'], ['scsi', 0, 1, 'sql03-data.vhdx']]);
  assert.deepEqual(spec.nics, [{ model: 'hyperv-netvsc', mac: '00:15:5d:6e:2a:19', network: 'SAN', connection: 'network' }]);
});

test('hyperv: .vmcx garbage and damage fail clearly', () => {
  throwsCode(() => hyperv.decode!(Buffer.alloc(0x3000, 0x5a), 'junk.vmcx'), 'ERR_CORRUPT', 'junk.vmcx', 'not a .vmcx');
  const good = buildVmcx(VMCX_TREE);
  const v = Buffer.from(good);
  v.writeUInt32LE(0x300, 10);
  throwsCode(() => hyperv.decode!(v, 'v.vmcx'), 'ERR_UNSUPPORTED', 'version 0x300');
  const t = Buffer.from(good);
  t.writeUInt32LE(0xdeadbeef, 0x2000);
  throwsCode(() => hyperv.decode!(t, 't.vmcx'), 'ERR_CORRUPT', 'object table');
  const o = Buffer.from(good);
  o.writeBigUInt64LE(0xffffffffn, 0x2008 + 5);
  throwsCode(() => hyperv.decode!(o, 'o.vmcx'), 'ERR_CORRUPT', 'outside the file');
  const e = Buffer.from(good);
  e.writeUInt32LE(0x7fffffff, 0x3000 + 10 + 2); // first entry's size
  throwsCode(() => hyperv.decode!(e, 'e.vmcx'), 'ERR_CORRUPT', 'runs outside');
  throwsCode(() => hyperv.decode!(good.subarray(0, 0x100), 's.vmcx'), 'ERR_TRUNCATED', 's.vmcx');
  for (let i = 0; i < 200; i++) {
    // random damage in the key table never escapes as anything but a PolyvisorError
    const d = Buffer.from(good);
    d[0x3000 + ((i * 7919) % 600)] ^= 1 + (i % 255);
    try {
      hyperv.decode!(d, 'fuzz.vmcx');
    } catch (err) {
      assert.ok(isPolyvisorError(err), String(err));
    }
  }
});

// --- encode: notes, quoting

test('hyperv: a Xen PV spec gets the notes of what Hyper-V cannot do', () => {
  const spec: VmSpec = {
    ...emptySpec('xen-pv'),
    virtualization: 'pv',
    boot: { bootloader: 'pygrub' },
    cpu: { count: 2, sockets: 1, cores: 2 },
    disks: [{ device: 'disk', bus: 'xen', target: 'xvda', file: 'root.img' }],
    nics: [{ model: 'xen-netfront', mac: '00:16:3e:11:22:33', network: 'xenbr0', connection: 'bridge' }],
    consoles: [{ type: 'xen' }],
    os: { family: 'linux' },
  };
  const out = encode(spec, 'xen-pv');
  const by = (s: string) => out.notes.find((n) => n.setting === s);
  assert.equal(by('virtualization')?.action, 'changed');
  assert.match(by('virtualization')!.reason, /bootloader/);
  assert.equal(by('boot.bootloader')?.action, 'dropped');
  assert.equal(by('nics[0].model')?.to, 'hyperv-netvsc');
  assert.equal(by('disks[0].bus')?.action, 'changed');
  assert.equal(by('cpu')?.action, 'dropped');
  assert.equal(by('consoles')?.action, 'dropped');
  assert.match(out.text, /^Add-VMHardDiskDrive -VM \$vm -ControllerType IDE -ControllerNumber 0 -ControllerLocation 0 -Path \(Join-Path \$here 'root.img'\)\r$/m);
  assert.match(out.text, /StaticMacAddress '00163E112233'/);
  golden('xen-pv.ps1', out.text);
});

test('hyperv: generation 2 with secure boot, TPM and a Windows guest; names with quotes are escaped', () => {
  const name = "Bob's \u2019lab\u2019 VM";
  const spec: VmSpec = {
    ...emptySpec(name),
    firmware: { type: 'uefi', secureBoot: true, tpm: true },
    memory: { bytes: 3 * 1024 * 1024 * 1024 + 1 },
    os: { family: 'windows', variant: 'win2k22' },
    disks: [
      { device: 'disk', bus: 'sata', file: "data 'x'.vhdx" },
      { device: 'disk', bus: 'sata', file: 'boot.vhdx', bootOrder: 1 },
    ],
  };
  const out = encode(spec, 'win');
  assert.ok(out.text.includes(`New-VM -Name 'Bob''s \u2019\u2019lab\u2019\u2019 VM' -Generation 2`), 'single and typographic quotes doubled');
  assert.ok(out.text.includes(`-ControllerType SCSI -ControllerNumber 0 -ControllerLocation 0 -Path (Join-Path $here 'boot.vhdx')`), 'the boot disk first');
  assert.ok(out.text.includes(`(Join-Path $here 'data ''x''.vhdx')`));
  assert.match(out.text, /Set-VMFirmware -VM \$vm -EnableSecureBoot On -SecureBootTemplate MicrosoftWindows/);
  assert.match(out.text, /Set-VMKeyProtector -VM \$vm -NewLocalKeyProtector\r\nEnable-VMTPM -VM \$vm/);
  assert.match(out.text, /-MemoryStartupBytes 3223322624 /, 'rounded up to 2 MiB');
  assert.equal(psQuote("it's"), "'it''s'");
  const linux = encode({ ...spec, os: { family: 'linux' } }, 'lin');
  assert.match(linux.text, /-SecureBootTemplate MicrosoftUEFICertificateAuthority/);
});

test('hyperv: hostile XML', () => {
  throwsCode(() => hyperv.decode!(Buffer.from('<?xml version="1.0"?><!DOCTYPE configuration [<!ENTITY a "b">]><configuration/>'), 'dtd.xml'), 'ERR_UNSUPPORTED', 'dtd.xml', 'DTD');
  throwsCode(() => hyperv.decode!(Buffer.from('<configuration><properties><name type="string">a</name></properties><settings><memory><bank><size type="integer">999999999999</size></bank></memory></settings></configuration>'), 'm.xml'), 'ERR_CORRUPT', 'settings/memory/bank/size');
  throwsCode(() => hyperv.decode!(Buffer.from('<configuration><properties/></configuration>'), 'n.xml'), 'ERR_CORRUPT', 'properties/name');
  throwsCode(() => hyperv.decode!(Buffer.from('<DECLARATIONS><DECLGROUP/></DECLARATIONS>'), 'old.exp'), 'ERR_UNSUPPORTED', '2008');
  throwsCode(() => hyperv.decode!(Buffer.from('<a>' + '<b>'.repeat(200) + '</b>'.repeat(200) + '</a>'), 'deep.xml'), 'ERR_CORRUPT', 'deep.xml');
  assert.equal(hyperv.probe(Buffer.from('<configuration name="sofia.conf"><settings/></configuration>'), 'x.xml'), 0);
});
