/**
 * VHD ("vpc" to qemu), with qemu-img and qemu-io as the oracle: images qemu makes are read
 * bit-exactly and at qemu's size; images Polyvisor makes are read back by qemu with the
 * intended content and size; differencing chains are checked against a raw built here
 * (qemu 7.2's vpc driver opens a differencing disk without its parent, so it can only
 * confirm the child's own sectors); hostile images fail with the right code, naming the file.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, rename, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createImage, openImage } from '../../src/disk/chain.js';
import { vhd } from '../../src/disk/formats/vhd.js';
import { chsSectors, geometryForSectors, roundUpToGeometry, sizeFromGeometry } from '../../src/disk/formats/vhd-geometry.js';
import { vhdChecksum } from '../../src/disk/formats/vhd-structs.js';
import { imageDigest, patternBytes, qemuDigest, qemuImg, qemuImgStatus, qemuInfo, qemuIo, readAll, rejectsWith, tempDir, assertQemuReads } from '../helpers.js';

const MiB = 1 << 20;

async function qemuSize(file: string): Promise<number> {
  // -f vpc: qemu probes a fixed VHD as raw (it only looks for the cookie at offset 0)
  return JSON.parse(await qemuImg('info', '--output=json', '-f', 'vpc', file))['virtual-size'] as number;
}

/** qemu-img reads `file` as exactly `expected`. */
const assertQemuSees = (file: string, expected: Buffer, dir: string) => assertQemuReads(file, 'vpc', expected, dir);

/** qemu has no check for vpc; accept that answer, refuse any other failure. */
function assertQemuCheck(file: string): void {
  const r = qemuImgStatus('check', '-f', 'vpc', file);
  if (r.status !== 0) assert.match(r.stderr, /does not support checks/, r.stderr);
}

/** Rewrites a structure's checksum (footer: field at 64 over 512 bytes; header: 36 over 1024). */
function fixChecksum(buf: Buffer, at: number, checksumAt: number, length: number): void {
  const s = buf.subarray(at, at + length);
  s.writeUInt32BE(vhdChecksum(s, checksumAt, length), checksumAt);
}

async function patch(file: string, fn: (b: Buffer) => void): Promise<void> {
  const b = await readFile(file);
  fn(b);
  await writeFile(file, b);
}

test('geometry follows the spec algorithm and qemu creator rules', () => {
  // Examples of the appendix algorithm
  assert.deepEqual(geometryForSectors((64 * MiB) / 512), { cylinders: 963, heads: 8, sectorsPerTrack: 17 });
  assert.deepEqual(geometryForSectors(65535 * 16 * 255 + 1000), { cylinders: 65535, heads: 16, sectorsPerTrack: 255 });
  for (const s of [1, 17, 12345, 131072, 4_000_000, 30_000_000, 65535 * 16 * 63 + 5]) {
    const r = roundUpToGeometry(s)!;
    assert.ok(r.sectors >= s && chsSectors(r.geometry) === r.sectors, `round up ${s}`);
    assert.deepEqual(geometryForSectors(r.sectors), r.geometry);
  }
  assert.equal(roundUpToGeometry(65535 * 16 * 255 + 1), null);
  const g = { cylinders: 963, heads: 8, sectorsPerTrack: 17 };
  for (const app of ['win ', 'qem2', 'd2v ', 'CTXS', 'tap\0']) assert.equal(sizeFromGeometry(app, g), false, app);
  for (const app of ['vpc ', 'vs  ', 'qemu', 'xxxx']) assert.equal(sizeFromGeometry(app, g), true, app);
  assert.equal(sizeFromGeometry('vpc ', { cylinders: 65535, heads: 16, sectorsPerTrack: 255 }), false);
});

test('probe finds footers at the end and copies at the start, and never throws', async (t) => {
  const dir = await tempDir(t);
  const dyn = join(dir, 'd.vhd');
  const fixed = join(dir, 'f.vhd');
  await qemuImg('create', '-f', 'vpc', dyn, '4M');
  await qemuImg('create', '-f', 'vpc', '-o', 'subformat=fixed', fixed, '4M');
  const d = await readFile(dyn);
  const f = await readFile(fixed);
  assert.equal(vhd.probe(d.subarray(0, 65536), d.subarray(d.length - 512), d.length), 100);
  assert.equal(vhd.probe(f.subarray(0, 65536), f.subarray(f.length - 512), f.length), 100);
  assert.ok(vhd.probe(f.subarray(0, 65536), f.subarray(f.length - 512), f.length) > 1, 'beats raw');
  const old = Buffer.concat([Buffer.alloc(1), f.subarray(f.length - 512, f.length - 1)]); // a 511-byte footer
  assert.equal(vhd.probe(Buffer.alloc(512), old, 4 * MiB + 511), 90);
  assert.equal(vhd.probe(Buffer.alloc(0), Buffer.alloc(0), 0), 0);
  assert.equal(vhd.probe(Buffer.alloc(512), Buffer.alloc(100), 612), 0);
});

const QEMU_IMAGES = [
  { name: 'dynamic', opts: [] as string[], size: '40M' },
  { name: 'dynamic force_size', opts: ['-o', 'force_size=on'], size: '40M' },
  { name: 'fixed', opts: ['-o', 'subformat=fixed'], size: '20M' },
  { name: 'fixed force_size', opts: ['-o', 'subformat=fixed,force_size=on'], size: '20M' },
  { name: 'dynamic odd size', opts: [], size: '12345k' },
];

for (const q of QEMU_IMAGES) {
  test(`reads a qemu-img ${q.name} vpc bit-exactly at qemu's size`, async (t) => {
    const dir = await tempDir(t);
    const file = join(dir, 'q.vhd');
    await qemuImg('create', '-f', 'vpc', ...q.opts, file, q.size);
    await qemuIo(file, 'vpc', 'write -P 0x11 0 64k', 'write -P 0x22 1M 3M', 'write -P 0x33 5000k 12k', 'write -P 0x44 6143k 2k', 'write -z 2M 512k');
    const img = await openImage(file);
    try {
      assert.equal(img.format, 'vhd');
      assert.equal(img.virtualSize, await qemuSize(file));
      const info = img.formatInfo();
      assert.equal(info['size-from'], q.opts.join().includes('force_size') ? 'current-size' : 'chs');
      assert.equal(info.subformat, q.name.startsWith('fixed') ? 'fixed' : 'dynamic');
      assert.equal(await imageDigest(img), await qemuDigest(file, 'vpc', dir));
      // unaligned reads straddling blocks agree with a whole read
      const all = await readAll(img);
      const b = Buffer.alloc(3 * MiB + 77);
      await img.read(b, 2 * MiB - 1000);
      assert.ok(b.equals(all.subarray(2 * MiB - 1000, 5 * MiB - 1000 + 77)));
      const ext = await img.blockStatus(0, img.virtualSize);
      assert.equal(ext.reduce((n, e) => n + e.length, 0), img.virtualSize);
      const chk = await img.check!();
      assert.equal(chk.corruptions, 0, chk.messages.join('; '));
    } finally {
      await img.close();
    }
  });
}

test('writes into a qemu-made dynamic image stay readable by qemu', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'q.vhd');
  await qemuImg('create', '-f', 'vpc', '-o', 'force_size=on', file, '16M');
  await qemuIo(file, 'vpc', 'write -P 0x5a 0 3M');
  const img = await openImage(file, { writable: true });
  const expected = await readAll(img);
  const w1 = patternBytes(100_000, 7);
  const w2 = patternBytes(2 * MiB + 4096, 8);
  await img.write(w1, 2 * MiB - 50_000); // over an existing block and into another
  await img.write(w2, 9 * MiB + 3); // new blocks, unaligned
  await img.writeZeroes!(100, 1000);
  w1.copy(expected, 2 * MiB - 50_000);
  w2.copy(expected, 9 * MiB + 3);
  expected.fill(0, 100, 1100);
  await img.close();
  await assertQemuSees(file, expected, dir);
  const again = await openImage(file);
  assert.ok((await readAll(again)).equals(expected));
  const chk = await again.check!();
  assert.deepEqual([chk.corruptions, chk.leaks], [0, 0], chk.messages.join('; '));
  await again.close();
});

const CREATE_CASES = [
  { name: 'hyperv dynamic', options: [] as string[], creator: 'win ', subformat: 'dynamic' },
  { name: 'hyperv dynamic 512K blocks', options: ['block_size=512K'], creator: 'win ', subformat: 'dynamic' },
  { name: 'hyperv fixed', options: ['subformat=fixed'], creator: 'win ', subformat: 'fixed' },
  { name: 'virtualserver dynamic', options: ['compat=virtualserver'], creator: 'vs  ', subformat: 'dynamic' },
  { name: 'virtualserver fixed', options: ['compat=virtualserver,subformat=fixed'], creator: 'vs  ', subformat: 'fixed' },
  { name: 'azure', options: ['compat=azure'], creator: 'win ', subformat: 'fixed' },
];

for (const c of CREATE_CASES) {
  test(`creates ${c.name}: qemu reads the intended content at our size`, async (t) => {
    const dir = await tempDir(t);
    const file = join(dir, 'out.vhd');
    const asked = 24 * MiB + 12345;
    const img = await createImage(file, 'vhd', asked, { options: c.options });
    const size = img.virtualSize;
    assert.ok(size >= asked && size % 512 === 0);
    if (c.name === 'azure') assert.equal(size % MiB, 0);
    if (c.creator === 'win ' && c.name !== 'azure') assert.equal(size, asked + 512 - (asked % 512));
    const expected = Buffer.alloc(size);
    const put = async (b: Buffer, off: number): Promise<void> => {
      await img.write(b, off);
      b.copy(expected, off);
    };
    await put(patternBytes(4 * MiB, 1), 0); // whole new blocks
    await put(patternBytes(777, 2), 5 * MiB + 3); // unaligned into a new block
    await put(patternBytes(3000, 3), 5 * MiB + 600); // unaligned into the same block
    await put(patternBytes(3 * MiB, 4), 7 * MiB - 1234); // across block boundaries
    await put(patternBytes(1000, 5), size - 1000); // the last bytes
    await img.writeZeroes!(1 * MiB + 17, 2 * MiB); // zeroes over data
    expected.fill(0, 1 * MiB + 17, 3 * MiB + 17);
    await img.writeZeroes!(14 * MiB, 4 * MiB); // zeroes over nothing
    assert.ok((await readAll(img)).equals(expected), 'reads its own writes before flush');
    await img.close();

    const info = await qemuInfo(file);
    assert.equal(info.format, c.subformat === 'fixed' ? 'raw' : 'vpc'); // qemu probes fixed VHDs as raw
    assert.equal(await qemuSize(file), size);
    if (c.subformat === 'fixed') assert.equal((await stat(file)).size, size + 512);
    await assertQemuSees(file, expected, dir);
    assertQemuCheck(file);

    const back = await openImage(file);
    const fi = back.formatInfo();
    assert.equal(fi.subformat, c.subformat);
    assert.equal(fi['creator-app'], c.creator);
    assert.equal(back.virtualSize, size);
    assert.equal(await imageDigest(back), await qemuDigest(file, 'vpc', dir));
    const chk = await back.check!();
    assert.deepEqual([chk.corruptions, chk.leaks], [0, 0], chk.messages.join('; '));
    if (c.subformat === 'dynamic') {
      // unwritten blocks stay unallocated
      const ext = await back.blockStatus(0, size);
      assert.ok(ext.some((e) => e.kind === 'unallocated' && e.offset <= 16 * MiB && e.offset + e.length >= 18 * MiB));
    }
    await back.close();
  });
}

test('create options: force_size, compat conflicts, block sizes', async (t) => {
  const dir = await tempDir(t);
  let n = 0;
  const mk = (size: number, options: string[]) => createImage(join(dir, `o${n++}.vhd`), 'vhd', size, { options });
  const ok = await mk(64 * MiB, []);
  assert.equal(ok.virtualSize, 64 * MiB);
  await ok.close();
  await rejectsWith(mk(64 * MiB, ['compat=virtualserver', 'force_size=on']), 'ERR_INVALID_OPTION', 'o1.vhd', 'CHS');
  await rejectsWith(mk(5 * MiB + 512, ['compat=azure', 'force_size=on']), 'ERR_INVALID_OPTION', 'o2.vhd', 'MiB');
  await rejectsWith(mk(5 * MiB, ['compat=azure', 'subformat=dynamic']), 'ERR_INVALID_OPTION', 'o3.vhd');
  await rejectsWith(mk(5 * MiB, ['block_size=3M']), 'ERR_INVALID_OPTION', 'o4.vhd');
  await rejectsWith(mk(5 * MiB, ['block_size=256K']), 'ERR_INVALID_OPTION', 'o5.vhd');
  await rejectsWith(mk(3000 * 1024 * MiB, []), 'ERR_UNSUPPORTED', 'o6.vhd', '2040');
  // a virtualserver size that already is a whole geometry is kept even with force_size
  const vs = await mk(chsSectors(geometryForSectors(100_000)) * 512, ['compat=virtualserver', 'force_size=on']);
  assert.equal(vs.virtualSize, chsSectors(geometryForSectors(100_000)) * 512);
  await vs.close();
  // qemu agrees on the size for each creator we write
  for (const f of [join(dir, 'o0.vhd'), join(dir, 'o7.vhd')]) assert.equal(await qemuSize(f), (await openImage(f).then(async (i) => (await i.close(), i.virtualSize))));
});

test('concurrent writes into new and shared blocks', async (t) => {
  const dir = await tempDir(t);
  for (const options of [[], ['subformat=fixed']]) {
    const file = join(dir, `cc${options.length}.vhd`);
    const img = await createImage(file, 'vhd', 12 * MiB, { options });
    const expected = Buffer.alloc(img.virtualSize);
    const writes: [Buffer, number][] = [];
    for (let i = 0; i < 24; i++) writes.push([patternBytes(3000 + i * 1000, 100 + i), (i * 977_777) % (10 * MiB)]);
    await Promise.all(writes.map(([b, off]) => img.write(b, off)));
    // overlapping writes may land in any order: compare against what the image now reads
    const got = await readAll(img);
    for (const [b, off] of writes) b.copy(expected, off);
    const overlaps = writes.some(([b, off], i) => writes.some(([c, o2], j) => i !== j && off < o2 + c.length && o2 < off + b.length));
    if (!overlaps) assert.ok(got.equals(expected));
    await img.close();
    await assertQemuSees(file, got, dir);
  }
});

test('large sparse dynamic disk: block status and metadata are fast', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'big.vhd');
  const img = await createImage(file, 'vhd', 1024 * 1024 * MiB, {}); // 1 TiB
  await img.write(patternBytes(MiB, 9), 500 * 1024 * MiB);
  const t0 = Date.now();
  const ext = await img.blockStatus(0, img.virtualSize);
  assert.ok(Date.now() - t0 < 2000);
  assert.deepEqual(ext.map((e) => e.kind), ['unallocated', 'data', 'unallocated']);
  await img.close();
  assert.equal(await qemuSize(file), 1024 * 1024 * MiB);
  const r = qemuImgStatus('compare', '-f', 'vpc', file, file);
  assert.equal(r.status, 0);
  const back = await openImage(file);
  const b = Buffer.alloc(MiB);
  await back.read(b, 500 * 1024 * MiB);
  assert.ok(b.equals(patternBytes(MiB, 9)));
  await back.close();
});

test('differencing: child over a dynamic parent reads through, block by block', async (t) => {
  const dir = await tempDir(t);
  const parentPath = join(dir, 'parent.vhd');
  const childPath = join(dir, 'child.vhd');
  const size = 16 * MiB;
  const parent = await createImage(parentPath, 'vhd', size, {});
  const expected = Buffer.alloc(size);
  const p1 = patternBytes(6 * MiB, 11);
  await parent.write(p1, MiB);
  p1.copy(expected, MiB);
  await parent.close();

  const child = await createImage(childPath, 'vhd', undefined, { backingFile: 'parent.vhd' });
  assert.equal(child.virtualSize, size);
  const put = async (b: Buffer, off: number): Promise<void> => {
    await child.write(b, off);
    b.copy(expected, off);
  };
  await put(patternBytes(1000, 12), 2 * MiB + 100); // unaligned, inside a parent block
  await put(patternBytes(512 * 3, 13), 3 * MiB + 4096); // aligned sectors, partial block
  await put(patternBytes(2 * MiB, 14), 4 * MiB); // a whole block
  await put(patternBytes(100_000, 15), 8 * MiB - 50_000); // across a block edge, past the parent's data
  await child.writeZeroes!(5 * MiB - 4096, 8192); // zeroes must hide the parent
  expected.fill(0, 5 * MiB - 4096, 5 * MiB + 4096);
  assert.ok((await readAll(child)).equals(expected), 'before flush');
  await child.close();

  const img = await openImage(childPath);
  try {
    assert.equal(img.backing?.format, 'vhd');
    assert.equal(img.backingRef?.resolved, parentPath);
    const info = img.formatInfo();
    assert.equal(info.subformat, 'differencing');
    assert.equal(info['parent-uuid'], img.backing!.formatInfo().uuid);
    assert.equal(info['parent-name'], 'parent.vhd');
    for (let off = 0; off < size; off += 2 * MiB) {
      const b = Buffer.alloc(2 * MiB);
      await img.read(b, off);
      assert.ok(b.equals(expected.subarray(off, off + 2 * MiB)), `block at ${off}`);
    }
    // block status of this layer: sector-granular runs
    const ext = await img.blockStatus(0, size);
    assert.equal(ext.reduce((n, e) => n + e.length, 0), size);
    const data = ext.filter((e) => e.kind === 'data');
    assert.ok(data.some((e) => e.offset === 2 * MiB && e.length === 1536), JSON.stringify(data));
    assert.ok(data.some((e) => e.offset === 3 * MiB + 4096 && e.length === 1536));
    const chk = await img.check!();
    assert.deepEqual([chk.corruptions, chk.leaks], [0, 0], chk.messages.join('; '));

    // qemu 7.2 opens a differencing VHD without its parent: it must see the child's own
    // sectors exactly as stored here.
    const q = join(dir, 'q.raw');
    await qemuImg('convert', '-f', 'vpc', '-O', 'raw', childPath, q);
    const qb = await readFile(q);
    assert.equal(qb.length, size);
    for (const e of data) assert.ok(qb.subarray(e.offset, e.offset + e.length).equals(expected.subarray(e.offset, e.offset + e.length)), `qemu sees child data at ${e.offset}`);
  } finally {
    await img.close();
  }

  // a writable reopen appends after the existing blocks
  const w = await openImage(childPath, { writable: true });
  await w.write(patternBytes(4096, 16), 12 * MiB);
  patternBytes(4096, 16).copy(expected, 12 * MiB);
  await w.close();
  const again = await openImage(childPath);
  assert.ok((await readAll(again)).equals(expected));
  await again.close();
});

test('differencing: refuses a non-VHD parent, a parent with another UUID, and a parent outside the folder', async (t) => {
  const dir = await tempDir(t);
  await qemuImg('create', '-f', 'qcow2', join(dir, 'base.qcow2'), '4M');
  await rejectsWith(createImage(join(dir, 'x.vhd'), 'vhd', undefined, { backingFile: 'base.qcow2' }), 'ERR_UNSUPPORTED', 'x.vhd', 'VHD parent');

  const parentPath = join(dir, 'parent.vhd');
  await (await createImage(parentPath, 'vhd', 4 * MiB, {})).close();
  await (await createImage(join(dir, 'child.vhd'), 'vhd', undefined, { backingFile: 'parent.vhd' })).close();
  // replace the parent with another disk of the same name
  await rename(parentPath, join(dir, 'old-parent.vhd'));
  await (await createImage(parentPath, 'vhd', 4 * MiB, {})).close();
  await rejectsWith(openImage(join(dir, 'child.vhd')), 'ERR_CHAIN_MISMATCH', 'child.vhd', 'unique ID');
  // without following backing files it still opens, with the UUIDs in its info
  const nb = await openImage(join(dir, 'child.vhd'), { noBacking: true });
  assert.equal(nb.backing, null);
  assert.match(String(nb.formatInfo()['parent-uuid']), /^[0-9a-f-]{36}$/);
  await nb.close();

  // a child in a sub-folder whose parent is one level up
  await mkdir(join(dir, 'sub'));
  await (await createImage(join(dir, 'sub', 'c2.vhd'), 'vhd', undefined, { backingFile: '../parent.vhd' })).close();
  await rejectsWith(openImage(join(dir, 'sub', 'c2.vhd')), 'ERR_PATH_OUTSIDE', 'c2.vhd');
  const ok = await openImage(join(dir, 'sub', 'c2.vhd'), { allowOutsidePaths: true });
  assert.equal(ok.backing?.path, parentPath);
  await ok.close();
});

test('differencing: a MacX file URL locator alone finds the parent', async (t) => {
  const dir = await tempDir(t);
  const parentPath = join(dir, 'my parent.vhd');
  const p = await createImage(parentPath, 'vhd', 2 * MiB, {});
  await p.write(Buffer.alloc(4096, 0x6b), 0);
  await p.close();
  const child = join(dir, 'c.vhd');
  await (await createImage(child, 'vhd', undefined, { backingFile: 'my parent.vhd' })).close();
  await patch(child, (b) => {
    const H = 512;
    const loc0 = H + 576;
    const url = Buffer.from('file://localhost' + encodeURI(parentPath), 'utf8');
    const off = Number(b.readBigUInt64BE(loc0 + 16));
    assert.ok(url.length <= b.readUInt32BE(loc0 + 4));
    b.write('MacX', loc0, 'latin1');
    b.writeUInt32BE(url.length, loc0 + 8);
    b.fill(0, off, off + b.readUInt32BE(loc0 + 4));
    url.copy(b, off);
    b.fill(0, loc0 + 24, loc0 + 48); // drop the W2ru locator
    b.fill(0, H + 64, H + 576); // and the unicode name
    fixChecksum(b, H, 36, 1024);
  });
  const img = await openImage(child);
  assert.equal(img.backing?.path, parentPath);
  assert.deepEqual(img.formatInfo()['parent-locators'], [{ platform: 'MacX', path: parentPath }]);
  const b = Buffer.alloc(4096);
  await img.read(b, 0);
  assert.ok(b.every((x) => x === 0x6b));
  await img.close();
});

test('read-only and range errors', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'a.vhd');
  await (await createImage(file, 'vhd', 4 * MiB, {})).close();
  const img = await openImage(file);
  await rejectsWith(img.write(Buffer.alloc(512), 0), 'ERR_READ_ONLY', file);
  await rejectsWith(img.read(Buffer.alloc(512), 4 * MiB - 100), 'ERR_RANGE', file);
  await img.close();
});

// ---- hostile images ---------------------------------------------------------------------

/** A small dynamic image with two allocated blocks; returns its path and layout facts. */
async function dynamicFixture(dir: string, name = 'h.vhd'): Promise<{ file: string; bytes: Buffer }> {
  const file = join(dir, name);
  const img = await createImage(file, 'vhd', 8 * MiB, {});
  await img.write(patternBytes(4 * MiB, 21), 0);
  await img.close();
  return { file, bytes: await readFile(file) };
}
const TABLE = 1536; // where our writer puts the BAT of a dynamic disk

test('hostile: footer checksum, falling back to the copy at offset 0', async (t) => {
  const dir = await tempDir(t);
  const fixed = join(dir, 'f.vhd');
  await qemuImg('create', '-f', 'vpc', '-o', 'subformat=fixed', fixed, '2M');
  const size = (await stat(fixed)).size;
  await patch(fixed, (b) => (b[size - 512 + 40] ^= 1));
  await rejectsWith(openImage(fixed, { format: 'vhd' }), 'ERR_CHECKSUM', fixed, 'footer', (size - 512).toString(16));

  const { file } = await dynamicFixture(dir);
  const want = await openImage(file).then(async (i) => {
    const d = await imageDigest(i);
    await i.close();
    return d;
  });
  await patch(file, (b) => (b[b.length - 512 + 50] ^= 0xff));
  const img = await openImage(file);
  assert.equal(img.formatInfo()['footer-source'], 'copy at offset 0');
  assert.ok((img.formatInfo().notes as string[])[0]!.includes('damaged'));
  assert.equal(await imageDigest(img), want);
  const chk = await img.check!();
  assert.ok(chk.corruptions >= 1);
  await img.close();
  // writing repairs the end footer
  const w = await openImage(file, { writable: true });
  await w.write(Buffer.alloc(512, 1), 6 * MiB);
  await w.close();
  const fixedUp = await openImage(file);
  assert.equal(fixedUp.formatInfo()['footer-source'], 'end of file');
  assert.deepEqual([(await fixedUp.check!()).corruptions], [0]);
  await fixedUp.close();

  // both footers bad: checksum error at the end
  await patch(file, (b) => {
    b[b.length - 512 + 50] ^= 0xff;
    b[50] ^= 0xff;
  });
  await rejectsWith(openImage(file), 'ERR_CHECKSUM', file, 'footer');
  // no cookie anywhere
  const junk = join(dir, 'junk.vhd');
  await writeFile(junk, Buffer.alloc(4096, 7));
  await rejectsWith(openImage(junk, { format: 'vhd' }), 'ERR_CORRUPT', junk, 'conectix');
});

/** Writes a copy of `bytes`, changed by `fn`, to `path`. */
async function mutantOf(bytes: Buffer, path: string, fn: (b: Buffer) => void): Promise<string> {
  const b = Buffer.from(bytes);
  fn(b);
  await writeFile(path, b);
  return path;
}

test('hostile: dynamic header checksum, truncation, block size, disk type', async (t) => {
  const dir = await tempDir(t);
  const { bytes } = await dynamicFixture(dir);
  const variant = (name: string, fn: (b: Buffer) => void) => mutantOf(bytes, join(dir, name), fn);
  // header checksum
  const hc = await variant('hc.vhd', (b) => (b[512 + 100] ^= 1));
  await rejectsWith(openImage(hc), 'ERR_CHECKSUM', hc, 'dynamic disk header');
  // block size not a power of two (checksum fixed so that the value itself is judged)
  const bs = await variant('bs.vhd', (b) => {
    b.writeUInt32BE(3 * MiB, 512 + 32);
    fixChecksum(b, 512, 36, 1024);
  });
  await rejectsWith(openImage(bs), 'ERR_CORRUPT', bs, 'block size');
  // unknown disk type, in both footers
  const dt = await variant('dt.vhd', (b) => {
    for (const at of [0, b.length - 512]) {
      b.writeUInt32BE(9, at + 60);
      fixChecksum(b, at, 64, 512);
    }
  });
  await rejectsWith(openImage(dt), 'ERR_CORRUPT', dt, 'disk type');
  // truncated: the end footer is gone, the copy opens it, the blocks run past the end
  const tr = join(dir, 'tr.vhd');
  await writeFile(tr, bytes.subarray(0, 3 * MiB));
  await rejectsWith(openImage(tr), 'ERR_TRUNCATED', tr, 'BAT entry 1');
  const tiny = join(dir, 'tiny.vhd');
  await writeFile(tiny, bytes.subarray(0, 100));
  await rejectsWith(openImage(tiny, { format: 'vhd' }), 'ERR_TRUNCATED', tiny, 'footer');
});

test('hostile: BAT past the end, BAT entries past the end or overlapping, huge tables', async (t) => {
  const dir = await tempDir(t);
  const { bytes } = await dynamicFixture(dir);
  const variant = (name: string, fn: (b: Buffer) => void) => mutantOf(bytes, join(dir, name), fn);
  const batPast = await variant('bp.vhd', (b) => {
    b.writeBigUInt64BE(BigInt(b.length - 8), 512 + 16);
    fixChecksum(b, 512, 36, 1024);
  });
  await rejectsWith(openImage(batPast), 'ERR_TRUNCATED', batPast, 'BAT');
  const huge = await variant('huge.vhd', (b) => {
    b.writeUInt32BE(0xfffffff0, 512 + 28);
    fixChecksum(b, 512, 36, 1024);
  });
  await rejectsWith(openImage(huge), 'ERR_TRUNCATED', huge, 'BAT');
  const small = await variant('small.vhd', (b) => {
    b.writeUInt32BE(2, 512 + 28);
    fixChecksum(b, 512, 36, 1024);
  });
  await rejectsWith(openImage(small), 'ERR_CORRUPT', small, 'max table entries');
  const entryPast = await variant('ep.vhd', (b) => b.writeUInt32BE(0x00100000, TABLE + 4 * 3));
  await rejectsWith(openImage(entryPast), 'ERR_TRUNCATED', entryPast, 'BAT entry 3');
  const dup = await variant('dup.vhd', (b) => b.writeUInt32BE(b.readUInt32BE(TABLE), TABLE + 4));
  await rejectsWith(openImage(dup), 'ERR_CORRUPT', dup, 'BAT entry 1', 'same block');
  const overlap = await variant('ov.vhd', (b) => b.writeUInt32BE(b.readUInt32BE(TABLE) + 8, TABLE + 4));
  await rejectsWith(openImage(overlap), 'ERR_CORRUPT', overlap, 'BAT entry 1', 'overlaps');
  const onMeta = await variant('meta.vhd', (b) => b.writeUInt32BE(2, TABLE + 4));
  await rejectsWith(openImage(onMeta), 'ERR_CORRUPT', onMeta, 'BAT entry 1', 'dynamic disk header');
  // a check of a sane image counts blocks
  const sane = await openImage(join(dir, 'h.vhd'));
  const chk = await sane.check!();
  assert.deepEqual([chk.corruptions, chk.leaks, chk.allocatedClusters, chk.totalClusters], [0, 0, 2, 4]);
  await sane.close();
});

test('hostile: parent locator data outside the file', async (t) => {
  const dir = await tempDir(t);
  await (await createImage(join(dir, 'p.vhd'), 'vhd', 2 * MiB, {})).close();
  const child = join(dir, 'c.vhd');
  await (await createImage(child, 'vhd', undefined, { backingFile: 'p.vhd' })).close();
  await patch(child, (b) => {
    // first locator entry: data offset far past the end
    b.writeBigUInt64BE(BigInt(b.length + 4096), 512 + 576 + 16);
    fixChecksum(b, 512, 36, 1024);
  });
  await rejectsWith(openImage(child), 'ERR_TRUNCATED', child, 'parent locator 0');
  await truncate(child, 0);
  await rejectsWith(openImage(child, { format: 'vhd' }), 'ERR_TRUNCATED', child);
});
