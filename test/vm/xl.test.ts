/**
 * xl.cfg codec: golden files (input → VmSpec JSON, → written xl.cfg, → libvirt XML), round
 * trips, conversion notes and hostile input. UPDATE_GOLDEN=1 rewrites the goldens: review the
 * diff by eye before committing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { xl } from '../../src/vm/codecs/xl.js';
import { libvirt } from '../../src/vm/codecs/libvirt.js';
import { emptySpec, type VmSpec } from '../../src/vm/spec.js';
import type { EncodeInput } from '../../src/vm/codec.js';
import { isPolyvisorError } from '../../src/errors.js';
import { assertGolden } from '../helpers.js';

const golden = async (file: string, actual: string) => assertGolden(file, actual);

const DIR = join(process.cwd(), 'test/vm/fixtures/xl');
const inputs = readdirSync(DIR).filter((f) => f.endsWith('.cfg') && !/\.(out|cross)\.cfg$/.test(f)).sort();

export function inputOf(spec: VmSpec): EncodeInput {
  return { spec, name: spec.name, diskFiles: spec.disks.map((d) => (d.file !== undefined ? { file: d.file, format: d.format ?? 'raw', capacity: 0 } : undefined)) };
}

function decodeText(text: string, name = 'test.cfg') {
  return xl.decode!(Buffer.from(text), name);
}

function assertCode(fn: () => unknown, code: string, match?: RegExp) {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isPolyvisorError(e), `expected a PolyvisorError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (match) assert.match(e.message, match);
    return true;
  });
}

test('xl fixtures are present', () => {
  assert.ok(inputs.length >= 6, inputs.join(', '));
});

for (const f of inputs) {
  const base = join(DIR, f.replace(/\.cfg$/, ''));
  test(`xl golden: ${f}`, async () => {
    const data = await readFile(join(DIR, f));
    assert.equal(xl.probe(data, f), 80, 'probe');
    assert.equal(libvirt.probe(data, f), 0, 'libvirt probe');
    const dec = xl.decode!(data, f);
    await golden(`${base}.spec.json`, JSON.stringify(dec, null, 2) + '\n');

    const enc = xl.encode!(inputOf(dec.spec));
    assert.equal(enc.files.length, 1);
    assert.equal(enc.files[0]!.name, `${dec.spec.name}.cfg`);
    await golden(`${base}.out.cfg`, String(enc.files[0]!.data));
    assert.deepEqual(enc.notes, [], 'a same-format round trip loses nothing');

    // same-format round trip: everything, extra included
    const again = xl.decode!(Buffer.from(String(enc.files[0]!.data)), `${f} (written)`);
    assert.deepEqual(again.spec, dec.spec);

    // to libvirt: the XML and what it could not carry
    const lv = libvirt.encode!(inputOf(dec.spec));
    await golden(`${base}.cross.xml`, String(lv.files[0]!.data));
    await golden(`${base}.cross-notes.json`, JSON.stringify(lv.notes, null, 2) + '\n');
    const back = libvirt.decode!(Buffer.from(String(lv.files[0]!.data)), `${f} (libvirt)`);
    assert.equal(back.spec.virtualization, dec.spec.virtualization);
    assert.equal(back.spec.memory.bytes, dec.spec.memory.bytes);
    assert.equal(back.spec.disks.length, dec.spec.disks.length);
    assert.deepEqual(back.spec.nics.map((n) => n.mac), dec.spec.nics.map((n) => n.mac));
  });
}

test('xl disk mini-language: the equivalent forms of xl-disk-configuration(5)', () => {
  const forms = [
    '/dev/vg/guest-volume,,hda',
    '/dev/vg/guest-volume,raw,hda,rw',
    'format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume',
    'raw:/dev/vg/guest-volume,hda,w',
  ];
  for (const form of forms) {
    const { spec } = decodeText(`name = "a"\ntype = "hvm"\ndisk = [ '${form}' ]\n`);
    assert.deepEqual(spec.disks, [{ device: 'disk', bus: 'ide', target: 'hda', file: '/dev/vg/guest-volume', format: 'raw' }], form);
  }
  const cdroms = [
    '/root/image.iso,,hdc,cdrom',
    '/root/image.iso,,hdc,,cdrom',
    '/root/image.iso,raw,hdc,devtype=cdrom',
    'format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso',
    'raw:/root/image.iso,hdc:cdrom,ro',
  ];
  for (const form of cdroms) {
    const { spec } = decodeText(`name = "a"\ntype = "hvm"\ndisk = [ '${form}' ]\n`);
    assert.deepEqual(spec.disks, [{ device: 'cdrom', bus: 'ide', target: 'hdc', file: '/root/image.iso', format: 'raw', readOnly: true }], form);
  }
  // target= swallows the rest, commas included
  const { spec } = decodeText(`name = "a"\ndisk = [ 'vdev=xvda, format=qcow2, target=/srv/a,b.qcow2' ]\n`);
  assert.equal(spec.disks[0]!.file, '/srv/a,b.qcow2');
  // empty CD-ROM drive in the xend form
  const empty = decodeText(`name = "a"\ntype = "hvm"\ndisk = [ ',hdc:cdrom,r' ]\n`);
  assert.deepEqual(empty.spec.disks, [{ device: 'cdrom', bus: 'ide', target: 'hdc', readOnly: true }]);
  // deprecated script prefix
  const iscsi = decodeText(`name = "a"\ndisk = [ 'iscsi:iqn.2001-05.com.example:disk1,xvda,w' ]\n`);
  assert.deepEqual((iscsi.spec.extra.xl as any).disks, { xvda: ['script=block-iscsi'] });
});

test('xl syntax: semicolons, += and escapes', () => {
  const { spec } = decodeText(`name="h0"; type="hvm"\nvif = [ 'bridge=a' ]\nvif += [ 'bridge=b' ]\non_crash = "pre\\x73erve" # comment\n`);
  assert.equal(spec.name, 'h0');
  assert.deepEqual(spec.nics.map((n) => n.network), ['a', 'b']);
  assert.equal((spec.extra.xl as any).keys.on_crash, '"pre\\x73erve"');
});

test('xl encode: what xl cannot express is reported', () => {
  const spec = emptySpec('gen2');
  spec.firmware = { type: 'uefi', secureBoot: true, tpm: true };
  spec.cpu = { count: 4, sockets: 1, cores: 4, threads: 1 };
  spec.memory = { bytes: 4096 * 1024 * 1024 + 512 };
  spec.disks = [
    { device: 'disk', bus: 'scsi', controllerModel: 'pvscsi', target: 'sda', file: 'gen2.qcow2', format: 'qcow2', bootOrder: 1 },
    { device: 'disk', bus: 'sata', file: 'data.raw', format: 'raw' },
  ];
  spec.nics = [{ model: 'vmxnet3', mac: '00:50:56:01:02:03', network: 'VM Network', connection: 'network' }];
  spec.consoles = [{ type: 'virtio' }];
  spec.graphics = [{ type: 'rdp' }];
  spec.os = { family: 'windows', variant: 'windows2019srv_64Guest' };
  const { files, notes } = xl.encode!(inputOf(spec));
  const got = notes.map((n) => `${n.setting} ${n.action}${n.to !== undefined ? ` → ${JSON.stringify(n.to)}` : ''}`);
  assert.deepEqual(got, [
    'memory.bytes changed → 4296015872',
    'cpu dropped',
    'os.family dropped',
    'os.variant dropped',
    'firmware.secureBoot dropped',
    'firmware.tpm dropped',
    'disks[].bootOrder changed → "c"',
    'disks[0].controllerModel dropped',
    'disks[1].bus changed → "ide"',
    'nics[0].connection changed → "bridge VM Network"',
    'nics[0].model changed → "e1000"',
    'graphics[0] dropped',
    'consoles[0] dropped',
  ]);
  for (const n of notes) assert.ok(n.reason.length > 10, n.setting);
  const text = String(files[0]!.data);
  assert.match(text, /^firmware = "uefi"$/m);
  assert.match(text, /'format=qcow2, vdev=sda, access=rw, target=gen2.qcow2'/);
  assert.match(text, /'mac=00:50:56:01:02:03, bridge=VM Network, model=e1000'/);
  // and xl reads back what it wrote
  const back = decodeText(text);
  assert.equal(back.spec.firmware.type, 'uefi');
  assert.equal(back.spec.disks[1]!.target, 'hda');
});

test('xl encode: PV guest from a KVM spec gets pygrub and PV devices', () => {
  const spec = emptySpec('pv1');
  spec.virtualization = 'pv';
  spec.disks = [{ device: 'disk', bus: 'virtio', target: 'vda', file: 'pv1.img', format: 'raw' }];
  spec.nics = [{ model: 'virtio', connection: 'bridge', network: 'br0' }];
  spec.consoles = [{ type: 'serial', port: 0 }];
  const { files, notes } = xl.encode!(inputOf(spec));
  const text = String(files[0]!.data);
  assert.match(text, /^bootloader = "pygrub"$/m);
  assert.match(text, /'format=raw, vdev=xvda, access=rw, target=pv1.img'/);
  assert.deepEqual(notes.map((n) => n.setting), ['boot', 'disks[0].bus', 'nics[0].model', 'consoles[0]']);
});

test('xl encode refuses disk formats xl cannot read', () => {
  const spec = emptySpec('v');
  spec.disks = [{ device: 'disk', bus: 'scsi', file: 'v.vmdk', format: 'vmdk' }];
  assertCode(() => xl.encode!(inputOf(spec)), 'ERR_UNSUPPORTED', /vmdk/);
});

test('xl hostile: malformed files fail with the line number', () => {
  assertCode(() => decodeText('name = "a\nmemory = 1\n'), 'ERR_CORRUPT', /line 1.*unterminated string/);
  assertCode(() => decodeText('name = "a"\ndisk = [ "x,xvda",\nmemory = 5\n'), 'ERR_CORRUPT', /line 2.*unterminated list|line 3/);
  assertCode(() => decodeText('name = "a"\n\nmemory = 1 2\n'), 'ERR_CORRUPT', /line 3/);
  assertCode(() => decodeText('name = "a"\nmemory @ 5\n'), 'ERR_CORRUPT', /line 2/);
  assertCode(() => decodeText('name = "a"\nmemory = 5\n$x = 1\n'), 'ERR_CORRUPT', /line 3.*unexpected character/);
  assertCode(() => decodeText('name = "a"\nmemory = 0x\n'), 'ERR_CORRUPT', /line 2.*bad number/);
  assertCode(() => decodeText('name = "a"\n]\n'), 'ERR_CORRUPT', /line 2/);
  assertCode(() => decodeText('name = "a"\nmemory = "lots"\n'), 'ERR_CORRUPT', /line 2: memory/);
  assertCode(() => decodeText('name = "a"\ndisk = [ "/x,qcow9,xvda" ]\n'), 'ERR_CORRUPT', /line 2: disk.*qcow9/);
  assertCode(() => decodeText('name = "a"\nvif = [ "mac=zz:16:3e:00:00:01" ]\n'), 'ERR_CORRUPT', /line 2: vif.*mac/);
  assertCode(() => decodeText('memory = 5\n'), 'ERR_CORRUPT', /name/);
  assertCode(() => decodeText('name = "a"\ntype = "hvm"\nbuilder = "generic"\n'), 'ERR_CORRUPT', /contradicts/);
  assertCode(() => decodeText('name = "a"\nx = ' + '['.repeat(40) + ']'.repeat(40) + '\n'), 'ERR_CORRUPT', /nested/);
  assertCode(() => decodeText('name = "a"\0\n'), 'ERR_CORRUPT', /NUL/);
});

test('xl hostile: Python code in xm files is refused, naming the line', () => {
  assertCode(() => decodeText('import os, re\nname = "a"\n'), 'ERR_UNSUPPORTED', /line 1.*Python/);
  assertCode(() => decodeText("name = 'a'\ndevice_model = '/usr/' + arch_libdir + '/xen/bin/qemu-dm'\n"), 'ERR_UNSUPPORTED', /line 2/);
  assertCode(() => decodeText("name = 'a'\narch = os.uname()[4]\n"), 'ERR_UNSUPPORTED', /line 2/);
});

test('xl hostile: absurd memory names the field', () => {
  assertCode(() => decodeText('name = "a"\nmemory = 999999999999\n'), 'ERR_CORRUPT', /line 2: memory.*MiB/);
  assertCode(() => decodeText('name = "a"\nmemory = 0\n'), 'ERR_CORRUPT', /memory/);
  assertCode(() => decodeText('name = "a"\nmaxmem = 99999999999\n'), 'ERR_CORRUPT', /maxmem/);
  assertCode(() => decodeText('name = "a"\nvcpus = 100000\n'), 'ERR_CORRUPT', /vcpus/);
});

test('xl hostile: huge files are bounded', () => {
  const big = Buffer.alloc((1 << 20) + 1, 0x20);
  assertCode(() => xl.decode!(big, 'big.cfg'), 'ERR_UNSUPPORTED', /limit/);
  assert.equal(xl.probe(Buffer.from('<domain type="kvm">'), 'x.xml'), 0);
});
