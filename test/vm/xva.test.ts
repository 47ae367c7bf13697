/** XVA: ova.xml ↔ VmSpec (golden), chunked disks read in place, writing checked by system tar and sha1sum, hostile archives. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { openImage } from '../../src/disk/chain.js';
import { isPolyvisorError } from '../../src/errors.js';
import type { VmSource } from '../../src/vm/codec.js';
import { emptySpec, type VmSpec } from '../../src/vm/spec.js';
import { xva, verifyXva } from '../../src/vm/packages/xva.js';
import { headerToSpec, parseOvaXml } from '../../src/vm/packages/xva-metadata.js';
import { imageDigest, patternBytes, qemuDigest, qemuImg, qemuIo, readAll, rejectsWith, tempDir } from '../helpers.js';

const run = promisify(execFile);
const FIXTURES = join(process.cwd(), 'test/vm/fixtures/xva');
const MiB = 1 << 20;

const sha1 = (b: Buffer) => createHash('sha1').update(b).digest('hex');

function xxh64Hex(b: Buffer): Promise<string> {
  // the oracle: the xxHash library itself, through Python's ctypes
  return new Promise((resolve, reject) => {
    const child = execFile('python3', ['-c', "import ctypes,sys;l=ctypes.CDLL('libxxhash.so.0');l.XXH64.restype=ctypes.c_uint64;d=sys.stdin.buffer.read();print('%016X'%l.XXH64(d,len(d),0))"], (err, out) => (err ? reject(err) : resolve(out.trim())));
    child.stdin!.end(b);
  });
}

/** The content of the fixture's 5 MiB VDI Ref:5: data in chunks 0 and 2, a short pattern in chunk 4 (the last). */
function fixtureDisk(): Buffer {
  const d = Buffer.alloc(5 * MiB);
  patternBytes(MiB, 11).copy(d, 0);
  patternBytes(MiB, 12).copy(d, 2 * MiB);
  patternBytes(4096, 13).copy(d, 4 * MiB + 8192);
  return d;
}

interface ChunkOpt {
  /** chunk numbers to write (default 0, 2, 4) */
  chunks?: number[];
  /** the checksum member kind per chunk number */
  checksum?: (no: number) => 'checksum' | 'xxhash' | 'none';
  ovaXml?: string | Buffer;
  ovaFirst?: boolean;
  extra?: Array<{ name: string; data: Buffer }>;
}

/** Builds an XVA from the fixture's ova.xml with system tar, as XAPI lays it out. */
async function buildFixtureXva(dir: string, name: string, opts: ChunkOpt = {}): Promise<string> {
  const src = join(dir, `${name}.d`);
  await mkdir(join(src, 'Ref:5'), { recursive: true });
  await writeFile(join(src, 'ova.xml'), opts.ovaXml ?? (await readFile(join(FIXTURES, 'ova.xml'))));
  const disk = fixtureDisk();
  const names: string[] = [];
  for (const no of opts.chunks ?? [0, 2, 4]) {
    const data = disk.subarray(no * MiB, Math.min(disk.length, (no + 1) * MiB));
    const n = `Ref:5/${String(no).padStart(8, '0')}`;
    await writeFile(join(src, n), data);
    names.push(n);
    const kind = opts.checksum?.(no) ?? 'checksum';
    if (kind === 'checksum') {
      await writeFile(join(src, `${n}.checksum`), sha1(data));
      names.push(`${n}.checksum`);
    } else if (kind === 'xxhash') {
      await writeFile(join(src, `${n}.xxhash`), await xxh64Hex(data));
      names.push(`${n}.xxhash`);
    }
  }
  for (const e of opts.extra ?? []) {
    await mkdir(join(src, e.name, '..'), { recursive: true });
    await writeFile(join(src, e.name), e.data);
    names.push(e.name);
  }
  const out = join(dir, `${name}.xva`);
  const order = opts.ovaFirst === false ? [...names, 'ova.xml'] : ['ova.xml', ...names];
  await run('tar', ['--format=gnu', '-cf', out, '-C', src, ...order]);
  return out;
}

async function openSpec(path: string): Promise<VmSpec> {
  const s = await xva.open(path, {});
  await s.close();
  return s.spec;
}

test('xva: golden decode of the fixture ova.xml', async () => {
  const xml = await readFile(join(FIXTURES, 'ova.xml'));
  const expected = JSON.parse(await readFile(join(FIXTURES, 'ova.expected.json'), 'utf8'));
  const { spec, disks, notes } = headerToSpec(parseOvaXml(xml, 'ova.xml'), 'ova.xml');
  assert.deepEqual(JSON.parse(JSON.stringify(spec)), expected);
  assert.deepEqual(disks, [{ index: 0, vdiRef: 'Ref:5', virtualSize: 5 * MiB, name: 'billing-db root' }]);
  assert.deepEqual(notes, []);
  // what the fixture says, spelled out: the fields the model names
  assert.equal(spec.firmware.type, 'uefi');
  assert.equal(spec.firmware.secureBoot, true);
  assert.deepEqual(spec.cpu, { count: 2, sockets: 1, cores: 2 });
  assert.deepEqual(spec.memory, { bytes: 2 * 2 ** 30, maxBytes: 4 * 2 ** 30 });
  assert.equal(spec.disks[1]!.device, 'cdrom');
  assert.equal(spec.nics[0]!.mac, '52:54:00:3c:9a:01');
  const x = spec.extra.xva as Record<string, any>;
  assert.equal(x.vm.VCPUs_max, '4');
  assert.equal(x.platform['device-model'], 'qemu-upstream-uefi');
  assert.equal(x.nics[0].network.bridge, 'xenbr0');
});

test('xva: a PV guest with pygrub decodes to pv with its bootloader', () => {
  const xml = readFileSync(join(FIXTURES, 'ova.xml'), 'utf8')
    .replace('<name>HVM_boot_policy</name><value>BIOS order</value>', '<name>HVM_boot_policy</name><value></value>')
    .replace('<name>domain_type</name><value>hvm</value>', '<name>domain_type</name><value>pv</value>')
    .replace('<name>PV_bootloader</name><value></value>', '<name>PV_bootloader</name><value>pygrub</value>')
    .replace('<name>PV_args</name><value></value>', '<name>PV_args</name><value>console=hvc0 quiet</value>');
  const { spec } = headerToSpec(parseOvaXml(Buffer.from(xml), 'ova.xml'), 'ova.xml');
  assert.equal(spec.virtualization, 'pv');
  assert.equal(spec.boot?.bootloader, 'pygrub');
  assert.equal(spec.boot?.cmdline, 'console=hvc0 quiet');
  assert.deepEqual(spec.consoles, [{ type: 'xen' }]);
  assert.equal(spec.disks[0]!.bus, 'xen');
});


test('xva: open serves the disk in place: gaps read as zero, SHA-1 and XXH64 chunk checksums', async (t) => {
  const dir = await tempDir(t);
  const path = await buildFixtureXva(dir, 'mixed', { checksum: (no) => (no === 2 ? 'xxhash' : 'checksum') });
  assert.equal(xva.probe(await readFile(path).then((b) => b.subarray(0, 65536)), path), 95);
  const src = await xva.open(path, {});
  t.after(() => src.close());
  assert.equal(src.kind, 'xva');
  assert.equal(src.disks.length, 1);
  assert.equal(src.disks[0]!.index, 0);
  const img = await src.disks[0]!.open();
  t.after(() => img.close());
  assert.equal(img.virtualSize, 5 * MiB);
  assert.equal(img.readOnly, true);
  assert.ok((await readAll(img)).equals(fixtureDisk()));
  const ext = await img.blockStatus(0, img.virtualSize);
  assert.deepEqual(ext.map((e) => [e.offset / MiB, e.length / MiB, e.kind]), [
    [0, 1, 'data'],
    [1, 1, 'zero'],
    [2, 1, 'data'],
    [3, 1, 'zero'],
    [4, 1, 'data'],
  ]);
  assert.equal(img.formatInfo().checksums, 'xxhash');
  await rejectsWith(img.write(Buffer.alloc(512), 0), 'ERR_READ_ONLY', path);
  await rejectsWith(img.read(Buffer.alloc(512), 5 * MiB), 'ERR_RANGE', path);
  assert.deepEqual(await verifyXva(path), { disks: 1, chunks: 3, verified: 3 });
});

test('xva: XAPI keep-alive chunks (empty, numbers running one ahead) land where XAPI places them', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'ka.d');
  await mkdir(join(src, 'Ref:5'), { recursive: true });
  await writeFile(join(src, 'ova.xml'), await readFile(join(FIXTURES, 'ova.xml')));
  const disk = fixtureDisk();
  // chunk 0 at 0; empty keep-alive numbered 1; the data at 2 MiB is then numbered 3; last (4 MiB) numbered 5
  const plan: Array<[number, Buffer]> = [[0, disk.subarray(0, MiB)], [1, Buffer.alloc(0)], [3, disk.subarray(2 * MiB, 3 * MiB)], [5, disk.subarray(4 * MiB)]];
  const names: string[] = [];
  for (const [no, data] of plan) {
    const n = `Ref:5/${String(no).padStart(8, '0')}`;
    await writeFile(join(src, n), data);
    await writeFile(join(src, `${n}.checksum`), sha1(data));
    names.push(n, `${n}.checksum`);
  }
  const path = join(dir, 'ka.xva');
  await run('tar', ['-cf', path, '-C', src, 'ova.xml', ...names]);
  const s = await xva.open(path, {});
  t.after(() => s.close());
  const img = await s.disks[0]!.open();
  t.after(() => img.close());
  assert.ok((await readAll(img)).equals(disk));
});

async function qcowSource(t: { after(fn: () => Promise<void> | void): void }, dir: string): Promise<{ source: VmSource; file: string }> {
  const file = join(dir, 'src.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', file, '13M');
  await qemuIo(file, 'qcow2',
    'write -P 0x11 0 64k', // chunk 0
    'write -P 0x22 3M 1536k', // chunks 3 and 4
    'write -z 6M 1M', // an explicit zero cluster run: chunk 6 must not be written
    'write -P 0x00 8M 64k', // allocated but all zero: chunk 8 must not be written
    'write -P 0x33 10485700 200', // straddles chunks 9 and 10
  );
  const spec = emptySpec('from-qcow2');
  spec.uuid = '0a1b2c3d-1111-4222-8333-944455566677';
  spec.cpu = { count: 2 };
  spec.memory = { bytes: 1 << 30 };
  spec.disks = [
    { device: 'disk', bus: 'virtio', controllerModel: 'virtio-scsi', capacity: 13 * MiB, bootOrder: 1 },
    { device: 'cdrom', bus: 'sata' },
  ];
  spec.nics = [{ model: 'e1000', mac: '52:54:00:aa:bb:cc', network: 'default', connection: 'network' }];
  spec.firmware = { type: 'bios', tpm: true };
  const source: VmSource = {
    path: file,
    kind: 'test',
    spec,
    disks: [{ index: 0, label: file, open: () => openImage(file) }],
    notes: [],
    close: async () => {},
  };
  t.after(() => source.close());
  return { source, file };
}

test('xva: write from a qcow2 source; read back equals qemu-img; system tar and sha1sum agree; zero chunks left out, first and last kept', async (t) => {
  const dir = await tempDir(t);
  const { source, file } = await qcowSource(t, dir);
  const out = join(dir, 'out.xva');
  const progress: number[] = [];
  const { notes } = await xva.write(source, out, { onProgress: (d, tot) => progress.push(d / tot) });
  assert.equal(progress.at(-1), 1);
  for (const s of ['disks[0].bus', 'disks[0].controllerModel', 'nics[0].model', 'firmware.tpm']) assert.ok(notes.some((n) => n.setting === s), `note for ${s}: ${JSON.stringify(notes)}`);
  assert.deepEqual((await readdir(dir)).filter((f) => f.includes('pv-partial')), []);

  // read back through Polyvisor vs qemu-img's view of the source
  const back = await xva.open(out, {});
  t.after(() => back.close());
  const img = await back.disks[0]!.open();
  t.after(() => img.close());
  assert.equal(img.virtualSize, 13 * MiB);
  assert.equal(await imageDigest(img), await qemuDigest(file, 'qcow2', dir));
  assert.equal(back.spec.disks[0]!.capacity, 13 * MiB);
  assert.equal(back.spec.nics[0]!.mac, '52:54:00:aa:bb:cc');
  assert.equal(back.spec.disks[1]!.device, 'cdrom');

  // extract with system tar; check every checksum with sha1sum
  const x = join(dir, 'x');
  await mkdir(x);
  const { stdout: listing } = await run('tar', ['-tf', out]);
  const members = listing.trim().split('\n');
  assert.equal(members[0], 'ova.xml');
  await run('tar', ['-xf', out, '-C', x]);
  const vdiDir = (await readdir(x)).find((n) => n.startsWith('Ref:'))!;
  const files = (await readdir(join(x, vdiDir))).sort();
  const chunkNos = files.filter((f) => /^\d{8}$/.test(f)).map(Number);
  assert.deepEqual(chunkNos, [0, 3, 4, 9, 10, 12]);
  for (const no of chunkNos) {
    const name = String(no).padStart(8, '0');
    const { stdout } = await run('sha1sum', [join(x, vdiDir, name)]);
    assert.equal(stdout.split(' ')[0], (await readFile(join(x, vdiDir, `${name}.checksum`), 'utf8')).trim(), `chunk ${name}`);
  }
  assert.equal((await readFile(join(x, vdiDir, '00000012'))).length, MiB); // the last chunk, present though zero
  const ovaXml = await readFile(join(x, 'ova.xml'), 'utf8');
  assert.ok(ovaXml.startsWith('<value><struct><member><name>version</name>'));
  assert.ok(!/>\s+</.test(ovaXml), 'compact XML-RPC, as XAPI writes it');
});

test('xva: spec round trip xva → VmSpec → xva → VmSpec is stable', async (t) => {
  const dir = await tempDir(t);
  const first = await buildFixtureXva(dir, 'rt');
  const a = await xva.open(first, {});
  t.after(() => a.close());
  const second = join(dir, 'second.xva');
  const { notes } = await xva.write(a, second, {});
  assert.deepEqual(notes, []);
  const b = await xva.open(second, {});
  t.after(() => b.close());
  assert.deepEqual(b.spec, a.spec);
  const img = await b.disks[0]!.open();
  t.after(() => img.close());
  assert.ok((await readAll(img)).equals(fixtureDisk()));
  const third = join(dir, 'third.xva');
  await xva.write(b, third, {});
  assert.deepEqual(await openSpec(third), b.spec);
});

test('xva: write refuses an existing destination without force, replaces it with force, cleans up when cancelled', async (t) => {
  const dir = await tempDir(t);
  const { source } = await qcowSource(t, dir);
  const out = join(dir, 'exists.xva');
  await writeFile(out, 'old');
  await rejectsWith(xva.write(source, out, {}), 'ERR_EXISTS', out);
  await xva.write(source, out, { force: true });
  assert.equal((await openSpec(out)).name, 'from-qcow2');
  const ac = new AbortController();
  const cancelled = join(dir, 'cancelled.xva');
  await rejectsWith(xva.write(source, cancelled, { signal: ac.signal, onProgress: (d) => d > 0 && ac.abort() }), 'ERR_ABORTED', cancelled);
  assert.deepEqual((await readdir(dir)).filter((f) => f.includes('cancelled')), []);
});

test('xva: a tampered chunk fails its checksum when read, naming the member', async (t) => {
  const dir = await tempDir(t);
  const path = await buildFixtureXva(dir, 'tamper');
  const bytes = await readFile(path);
  // flip a byte inside chunk 2's data: find it by its pattern
  const at = bytes.indexOf(patternBytes(64, 12));
  assert.ok(at > 0);
  bytes[at + 100] ^= 0xff;
  await writeFile(path, bytes);
  const s = await xva.open(path, {});
  t.after(() => s.close());
  const img = await s.disks[0]!.open();
  t.after(() => img.close());
  const b = Buffer.alloc(4096);
  await img.read(b, 0); // chunk 0 is fine
  await rejectsWith(img.read(b, 2 * MiB), 'ERR_CHECKSUM', path, 'Ref:5/00000002', '00000002.checksum');
  await rejectsWith(verifyXva(path), 'ERR_CHECKSUM', path, 'Ref:5/00000002');
});

test('xva: hostile archives are refused with the right codes', async (t) => {
  const dir = await tempDir(t);
  // a chunk past the virtual size (the VDI is 5 MiB: chunk 5 starts at its end)
  const past = await buildFixtureXva(dir, 'past', { chunks: [0, 2, 4], extra: [{ name: 'Ref:5/00000007', data: patternBytes(MiB, 1) }] });
  await rejectsWith(xva.open(past, {}), 'ERR_CORRUPT', past, 'Ref:5/00000007', 'past the end');
  // a chunk larger than 1 MiB
  const big = await buildFixtureXva(dir, 'big', { chunks: [0], extra: [{ name: 'Ref:5/00000001', data: patternBytes(MiB + 512, 2) }] });
  await rejectsWith(xva.open(big, {}), 'ERR_CORRUPT', big, 'Ref:5/00000001', 'chunk size');
  // ova.xml not first
  const notFirst = await buildFixtureXva(dir, 'notfirst', { ovaFirst: false });
  await rejectsWith(xva.open(notFirst, {}), 'ERR_CORRUPT', notFirst, 'starts with ova.xml');
  // a DTD in ova.xml
  const dtd = await buildFixtureXva(dir, 'dtd', { ovaXml: '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><value>&a;</value>' });
  await rejectsWith(xva.open(dtd, {}), 'ERR_UNSUPPORTED', dtd, 'DTD');
  // the first-generation layout
  const v1 = await buildFixtureXva(dir, 'v1', { ovaXml: '<?xml version="1.0"?><appliance version="0.1"><vm name="old"/></appliance>', chunks: [] });
  await rejectsWith(xva.open(v1, {}), 'ERR_UNSUPPORTED', v1, 'first generation');
  // truncated inside a chunk
  const whole = await readFile(await buildFixtureXva(dir, 'whole'));
  const cut = join(dir, 'cut.xva');
  await writeFile(cut, whole.subarray(0, whole.length - 1024 - 700_000));
  await rejectsWith(xva.open(cut, {}), 'ERR_TRUNCATED', cut);
  // a VDI with no chunks at all
  const none = await buildFixtureXva(dir, 'none', { chunks: [] });
  await rejectsWith(xva.open(none, {}), 'ERR_CORRUPT', none, 'no chunks for VDI Ref:5');
  // a compressed export
  const gz = join(dir, 'compressed.xva');
  await run('sh', ['-c', `gzip -c '${join(dir, 'whole.xva')}' > '${gz}'`]);
  assert.equal(xva.probe((await readFile(gz)).subarray(0, 512), gz), 60);
  await rejectsWith(xva.open(gz, {}), 'ERR_UNSUPPORTED', gz, 'gzip');
  // not XML-RPC at all
  const junk = await buildFixtureXva(dir, 'junk', { ovaXml: '<value><struct><member><name>version</name><value>x</value></member></struct></value>' });
  await rejectsWith(xva.open(junk, {}), 'ERR_CORRUPT', junk, 'version and objects');
  assert.equal(xva.probe(Buffer.alloc(512), 'x.xva'), 0);
});

test('xva: every code path reports PolyvisorErrors, never raw exceptions', async (t) => {
  const dir = await tempDir(t);
  const garbage = join(dir, 'garbage.xva');
  await writeFile(garbage, patternBytes(8192, 5));
  await assert.rejects(xva.open(garbage, {}), (e) => isPolyvisorError(e, 'ERR_CORRUPT'));
  await assert.rejects(xva.open(join(dir, 'missing.xva'), {}), (e) => isPolyvisorError(e, 'ERR_NOT_FOUND'));
});
