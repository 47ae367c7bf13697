/**
 * libvirt domain XML codec: golden files (input → VmSpec JSON, → written XML, → xl.cfg),
 * round trips, conversion notes and hostile input. UPDATE_GOLDEN=1 rewrites the goldens:
 * review the diff by eye before committing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { libvirt } from '../../src/vm/codecs/libvirt.js';
import { xl } from '../../src/vm/codecs/xl.js';
import { emptySpec, type VmSpec } from '../../src/vm/spec.js';
import type { EncodeInput } from '../../src/vm/codec.js';
import { isPolyvisorError } from '../../src/errors.js';
import { assertGolden } from '../helpers.js';

const golden = async (file: string, actual: string) => assertGolden(file, actual);

const DIR = join(process.cwd(), 'test/vm/fixtures/libvirt');
const inputs = readdirSync(DIR).filter((f) => f.endsWith('.xml') && !/\.(out|cross)\.xml$/.test(f)).sort();
const hasValidator = spawnSync('virt-xml-validate', ['--help'], { encoding: 'utf8' }).error === undefined && spawnSync('xmllint', ['--version']).error === undefined;

function inputOf(spec: VmSpec): EncodeInput {
  return { spec, name: spec.name, folder: '/var/lib/libvirt/images', diskFiles: spec.disks.map((d) => (d.file !== undefined ? { file: d.file, format: d.format ?? 'raw', capacity: 0 } : undefined)) };
}

function decodeText(text: string) {
  return libvirt.decode!(Buffer.from(text), 'test.xml');
}

function assertCode(fn: () => unknown, code: string, match?: RegExp) {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isPolyvisorError(e), `expected a PolyvisorError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (match) assert.match(e.message, match);
    return true;
  });
}

/** Validates against libvirt's own schema (Debian's libvirt-clients and libxml2-utils: .ci/run and npm start install them). */
async function validate(_t: unknown, xmlText: string): Promise<void> {
  assert.ok(hasValidator, 'virt-xml-validate is missing: apt-get install libvirt-clients libxml2-utils (.ci/run does)');
  const dir = await mkdtemp(join(tmpdir(), 'pv-lv-'));
  try {
    const f = join(dir, 'domain.xml');
    await writeFile(f, xmlText);
    const r = spawnSync('virt-xml-validate', [f, 'domain'], { encoding: 'utf8' });
    assert.equal(r.status, 0, `virt-xml-validate: ${r.stdout}${r.stderr}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const MINIMAL = `<domain type='kvm'><name>m</name><memory>1048576</memory><os><type>hvm</type></os></domain>`;

test('libvirt fixtures are present', () => {
  assert.ok(inputs.length >= 5, inputs.join(', '));
});

for (const f of inputs) {
  const base = join(DIR, f.replace(/\.xml$/, ''));
  test(`libvirt golden: ${f}`, async (t) => {
    const data = await readFile(join(DIR, f));
    assert.equal(libvirt.probe(data, f), 95, 'probe');
    assert.equal(xl.probe(data, f), 0, 'xl probe');
    const dec = libvirt.decode!(data, f);
    await golden(`${base}.spec.json`, JSON.stringify(dec, null, 2) + '\n');

    const enc = libvirt.encode!(inputOf(dec.spec));
    assert.equal(enc.files[0]!.name, `${dec.spec.name}.xml`);
    const out = String(enc.files[0]!.data);
    await golden(`${base}.out.xml`, out);
    assert.deepEqual(enc.notes, [], 'a same-format round trip loses nothing');
    const again = libvirt.decode!(Buffer.from(out), `${f} (written)`);
    assert.deepEqual(again.spec, dec.spec);

    // to xl (disks in formats xl takes)
    const xlIn = inputOf(dec.spec);
    xlIn.diskFiles = xlIn.diskFiles.map((d) => d && { ...d, format: ['raw', 'qcow2', 'vhd'].includes(d.format) ? d.format : 'raw' });
    const x = xl.encode!(xlIn);
    await golden(`${base}.cross.cfg`, String(x.files[0]!.data));
    await golden(`${base}.cross-notes.json`, JSON.stringify(x.notes, null, 2) + '\n');
    const back = xl.decode!(Buffer.from(String(x.files[0]!.data)), `${f} (xl)`);
    assert.equal(back.spec.virtualization, dec.spec.virtualization);
    assert.deepEqual(back.spec.nics.map((n) => n.mac), dec.spec.nics.map((n) => n.mac));
    await validate(t, out);
  });
}

test('libvirt encode: a fresh UEFI + Secure Boot + TPM spec', async (t) => {
  const spec = emptySpec('sb');
  spec.firmware = { type: 'uefi', secureBoot: true, tpm: true };
  spec.disks = [
    { device: 'disk', bus: 'ide', file: 'sb.vhd', format: 'vhd' },
    { device: 'cdrom', bus: 'xen', target: 'xvdd' },
    { device: 'disk', bus: 'scsi', controllerModel: 'buslogic', unit: 1, file: 'b.vmdk', format: 'vmdk' },
  ];
  spec.nics = [{ model: 'xen-netfront', mac: '00:16:3e:00:00:01', connection: 'bridge', network: 'xenbr0' }];
  spec.graphics = [{ type: 'vnc' }];
  spec.consoles = [{ type: 'serial', port: 0 }];
  const { files, notes } = libvirt.encode!(inputOf(spec));
  const xmlText = String(files[0]!.data);
  assert.match(xmlText, /<type arch="x86_64" machine="q35">hvm<\/type>/);
  assert.match(xmlText, /<loader readonly="yes" secure="yes" type="pflash">\/usr\/share\/OVMF\/OVMF_CODE_4M.secboot.fd<\/loader>/);
  assert.match(xmlText, /<nvram template="\/usr\/share\/OVMF\/OVMF_VARS_4M.ms.fd">\/var\/lib\/libvirt\/qemu\/nvram\/sb_VARS.fd<\/nvram>/);
  assert.match(xmlText, /<smm state="on"\/>/);
  assert.match(xmlText, /<driver name="qemu" type="vpc"\/>/);
  assert.match(xmlText, /<tpm model="tpm-crb">/);
  assert.match(xmlText, /<graphics type="vnc" port="-1" autoport="yes" listen="127.0.0.1">/);
  assert.match(xmlText, /<controller type="scsi" index="0" model="virtio-scsi"\/>/);
  assert.deepEqual(
    notes.map((n) => `${n.setting} ${n.action} → ${JSON.stringify(n.to)}`),
    [
      'disks[1].bus changed → "sata"',
      'disks[0].bus changed → "sata"',
      'controller scsi 0 changed → "virtio-scsi"',
      'nics[0].model changed → "virtio"',
    ],
  );
  const back = decodeText(xmlText);
  assert.equal(back.spec.firmware.secureBoot, true);
  assert.equal(back.spec.firmware.tpm, true);
  assert.equal(back.spec.disks[0]!.format, 'vhd');
  await validate(t, xmlText);
});

test('libvirt encode: Xen PVH spec becomes a xen domain with os type xenpvh', () => {
  const spec = emptySpec('p');
  spec.virtualization = 'pvh';
  spec.boot = { kernel: '/k', cmdline: 'console=hvc0' };
  spec.disks = [{ device: 'disk', bus: 'virtio', file: '/dev/vg/p', format: 'raw' }];
  const xmlText = String(libvirt.encode!(inputOf(spec)).files[0]!.data);
  assert.match(xmlText, /<domain type="xen">/);
  assert.match(xmlText, /<type arch="x86_64">xenpvh<\/type>/);
  assert.match(xmlText, /<disk type="block" device="disk">\s*<driver name="phy" type="raw"\/>\s*<source dev="\/dev\/vg\/p"\/>\s*<target dev="xvda" bus="xen"\/>/);
  assert.equal(decodeText(xmlText).spec.virtualization, 'pvh');
});

test('libvirt decode: units, firmware autoselection, defaults', () => {
  const { spec } = decodeText(`<domain type='kvm'><name>u</name><uuid>00112233445566778899aabbccddeeff</uuid><memory unit='G'>2</memory><currentMemory unit='bytes'>1073741824</currentMemory><vcpu>3</vcpu>
    <os firmware='efi'><type>hvm</type><firmware><feature name='secure-boot' enabled='no'/></firmware></os></domain>`);
  assert.equal(spec.uuid, '00112233-4455-6677-8899-aabbccddeeff');
  assert.deepEqual(spec.memory, { bytes: 2 ** 30, maxBytes: 2 * 2 ** 30 });
  assert.deepEqual(spec.firmware, { type: 'uefi', secureBoot: false });
  assert.equal(spec.cpu.count, 3);
});

test('libvirt hostile: DTDs and entities are refused', () => {
  assertCode(() => decodeText(`<?xml version="1.0"?><!DOCTYPE domain [<!ENTITY x "y">]><domain type='kvm'><name>&x;</name></domain>`), 'ERR_UNSUPPORTED', /DTD/);
  assertCode(() => decodeText(`<!DOCTYPE domain SYSTEM "file:///etc/passwd"><domain type='kvm'/>`), 'ERR_UNSUPPORTED');
  assertCode(() => decodeText(`<?xml version="1.0"?><!ENTITY lol "lol"><domain/>`), 'ERR_UNSUPPORTED');
});

test('libvirt hostile: malformed and absurd values name the field', () => {
  assertCode(() => decodeText(`<domain type='kvm'><name>a</name>`), 'ERR_CORRUPT');
  assertCode(() => decodeText(`<vm/>`), 'ERR_CORRUPT', /domain/);
  assertCode(() => decodeText(MINIMAL.replace('1048576', '99999999999999999')), 'ERR_CORRUPT', /memory/);
  assertCode(() => decodeText(MINIMAL.replace('<memory>1048576', "<memory unit='EiB'>7")), 'ERR_CORRUPT', /memory/);
  assertCode(() => decodeText(MINIMAL.replace('<memory>1048576', "<memory unit='parsecs'>7")), 'ERR_CORRUPT', /memory.*unit/);
  assertCode(() => decodeText(MINIMAL.replace('<memory>1048576', '<memory>-5')), 'ERR_CORRUPT', /memory/);
  assertCode(() => decodeText(MINIMAL.replace('</os>', '</os><vcpu>0</vcpu>')), 'ERR_CORRUPT', /vcpu/);
  assertCode(() => decodeText(MINIMAL.replace('</os>', "</os><devices><interface type='bridge'><mac address='nope'/></interface></devices>")), 'ERR_CORRUPT', /interface 0\/mac/);
  assertCode(() => decodeText(MINIMAL.replace('<type>hvm', '<type>exe')), 'ERR_UNSUPPORTED', /os type/);
  assertCode(() => decodeText(MINIMAL.replace("<os>", "<os><boot dev='tape'/>")), 'ERR_CORRUPT', /boot/);
});

test('libvirt hostile: huge documents are bounded', () => {
  const big = Buffer.concat([Buffer.from("<domain type='kvm'><name>"), Buffer.alloc(17 << 20, 0x61), Buffer.from('</name></domain>')]);
  assertCode(() => libvirt.decode!(big, 'big.xml'), 'ERR_UNSUPPORTED', /limit/);
});

test('libvirt probe', () => {
  assert.equal(libvirt.probe(Buffer.from(`<?xml version="1.0"?>\n<!-- x -->\n<domain type="kvm">`), 'a.xml'), 95);
  assert.equal(libvirt.probe(Buffer.from(`<Envelope>`), 'a.ovf'), 0);
  assert.equal(libvirt.probe(Buffer.from(`name = "x"\nmemory = 5\n`), 'a.cfg'), 0);
});
