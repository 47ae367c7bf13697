/**
 * VHDX, with qemu-img and qemu-io as the oracle: images qemu makes are read bit-exactly and
 * at qemu's size; images Polyvisor makes pass `qemu-img check` and `qemu-img compare`.
 * qemu 7.2 has no logical_sector_size create option (4096-byte sectors are covered by
 * images Polyvisor makes, which qemu reads) and refuses differencing VHDX ("Operation not
 * supported"), so chains are checked against a raw built here. Dirty logs are made with
 * writeLogEntryForTest and replayed both by Polyvisor and by `qemu-img check -r all`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createImage, openImage } from '../../src/disk/chain.js';
import { convert } from '../../src/disk/convert.js';
import type { BlockImage } from '../../src/disk/image.js';
import { vhdx, writeLogEntryForTest } from '../../src/disk/formats/vhdx.js';
import {
  HEADER_OFFSETS,
  REGION_TABLE_OFFSETS,
  REGION_TABLE_SIZE,
  batGeometry,
  crc32c,
  parseRegionTable,
  payloadIndex,
  sealChecksum,
  setBatEntry,
} from '../../src/disk/formats/vhdx-structs.js';
import { isPolyvisorError } from '../../src/errors.js';
import { imageDigest, patternBytes, qemuDigest, qemuImg, qemuImgStatus, qemuInfo, qemuIo, readAll, rejectsWith, tempDir, assertQemuReads } from '../helpers.js';

const MiB = 1 << 20;

function assertQemuCheck(file: string): void {
  const r = qemuImgStatus('check', '-f', 'vhdx', file);
  assert.equal(r.status, 0, `qemu-img check: ${r.stdout}${r.stderr}`);
}

/** qemu-img reads `file` as exactly `expected`. */
const assertQemuSees = (file: string, expected: Buffer, dir: string) => assertQemuReads(file, 'vhdx', expected, dir);

async function patch(file: string, fn: (b: Buffer) => void): Promise<void> {
  const b = await readFile(file);
  fn(b);
  await writeFile(file, b);
}

/** Edits both region tables' entries and reseals their checksums. */
function patchRegions(b: Buffer, fn: (t: Buffer) => void): void {
  for (const at of REGION_TABLE_OFFSETS) {
    const t = b.subarray(at, at + REGION_TABLE_SIZE);
    fn(t);
    sealChecksum(t, 4);
  }
}

function regionsOf(b: Buffer): { bat: number; meta: number } {
  const st = parseRegionTable(b.subarray(REGION_TABLE_OFFSETS[0], REGION_TABLE_OFFSETS[0] + REGION_TABLE_SIZE), { file: 'x', structure: 'r', offset: 0 });
  assert.ok(st.ok);
  const bat = st.entries.find((e) => e.guid.toString('hex') === '6677c22d23f600429d64115e9bfd4a08')!;
  const meta = st.entries.find((e) => e.guid !== bat.guid)!;
  return { bat: bat.fileOffset, meta: meta.fileOffset };
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

test('CRC-32C and probe', async (t) => {
  assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283); // the Castagnoli check value
  assert.equal(crc32c(Buffer.alloc(32)), 0x8a9136aa);
  const dir = await tempDir(t);
  const f = join(dir, 'p.vhdx');
  await qemuImg('create', '-q', '-f', 'vhdx', f, '8M');
  const b = await readFile(f);
  assert.equal(vhdx.probe(b.subarray(0, 65536), b.subarray(b.length - 512), b.length), 100);
  assert.equal(vhdx.probe(Buffer.alloc(0), Buffer.alloc(0), 0), 0);
  assert.equal(vhdx.probe(Buffer.from('vhdxfil'), Buffer.alloc(0), 7), 0);
  assert.equal((await openImage(f).then(async (i) => (await i.close(), i.format))), 'vhdx');
});

const QEMU_IMAGES = [
  { name: 'dynamic 1M blocks', opts: 'block_size=1M', size: '20M' },
  { name: 'dynamic 8M blocks', opts: 'block_size=8M', size: '40M' },
  { name: 'dynamic 32M blocks odd size', opts: 'block_size=32M', size: '45000k' },
  { name: 'dynamic block_state_zero=off', opts: 'block_size=1M,block_state_zero=off', size: '20M' },
  { name: 'fixed 8M blocks', opts: 'subformat=fixed,block_size=8M', size: '24M' },
  { name: 'fixed 1M blocks', opts: 'subformat=fixed,block_size=1M', size: '12M' },
];

for (const q of QEMU_IMAGES) {
  test(`reads a qemu-img ${q.name} vhdx bit-exactly at qemu's size`, async (t) => {
    const dir = await tempDir(t);
    const file = join(dir, 'q.vhdx');
    await qemuImg('create', '-q', '-f', 'vhdx', '-o', q.opts, file, q.size);
    await qemuIo(file, 'vhdx', 'write -P 0x11 0 64k', 'write -P 0x22 1M 3M', 'write -P 0x33 5000k 12k', 'write -P 0x44 6143k 2k', 'write -z 2M 512k', 'write -P 0x55 9M 1M');
    const img = await openImage(file);
    try {
      assert.equal(img.format, 'vhdx');
      assert.equal(img.virtualSize, (await qemuInfo(file))['virtual-size']);
      assert.equal(img.formatInfo().subformat, q.opts.includes('fixed') ? 'fixed' : 'dynamic');
      assert.equal(await imageDigest(img), await qemuDigest(file, 'vhdx', dir));
      const all = await readAll(img);
      const b = Buffer.alloc(3 * MiB + 77);
      await img.read(b, 2 * MiB - 1000);
      assert.ok(b.equals(all.subarray(2 * MiB - 1000, 5 * MiB - 1000 + 77)));
      const ext = await img.blockStatus(0, img.virtualSize);
      assert.equal(ext.reduce((n, e) => n + e.length, 0), img.virtualSize);
      assert.ok(ext.some((e) => e.kind === 'data' && e.hostOffset! % MiB === 0));
      const chk = await img.check!();
      assert.deepEqual([chk.corruptions, chk.leaks], [0, 0], chk.messages.join('; '));
    } finally {
      await img.close();
    }
  });
}

test('writes into a qemu-made dynamic image stay readable by qemu', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'q.vhdx');
  await qemuImg('create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', file, '16M');
  await qemuIo(file, 'vhdx', 'write -P 0x5a 0 3M');
  const before = (await openImage(file).then(async (i) => [i.formatInfo()['data-write-guid'], await i.close()]))[0];
  const img = await openImage(file, { writable: true });
  const expected = await readAll(img);
  const w1 = patternBytes(100_000, 7);
  const w2 = patternBytes(2 * MiB + 4096, 8);
  await img.write(w1, 2 * MiB - 50_000);
  await img.write(w2, 9 * MiB + 3);
  await img.writeZeroes!(100, 1000);
  w1.copy(expected, 2 * MiB - 50_000);
  w2.copy(expected, 9 * MiB + 3);
  expected.fill(0, 100, 1100);
  assert.notEqual(img.formatInfo()['data-write-guid'], before, 'DataWriteGuid changes before the first write');
  await img.close();
  assertQemuCheck(file);
  await assertQemuSees(file, expected, dir);
  const again = await openImage(file);
  assert.ok((await readAll(again)).equals(expected));
  await again.close();
});

const CREATE_CASES = [
  { name: 'dynamic, default 32M blocks', options: [] as string[], size: 40 * MiB + 12345 },
  { name: 'dynamic 1M blocks', options: ['block_size=1M'], size: 24 * MiB + 12345 },
  { name: 'dynamic 2M blocks, 4096-byte logical sectors', options: ['block_size=2M,logical_sector_size=4096'], size: 24 * MiB + 12345 },
  { name: 'dynamic block_state_zero, 3M log', options: ['block_size=4M,block_state_zero=on,log_size=3M'], size: 24 * MiB },
  { name: 'fixed 8M blocks', options: ['subformat=fixed,block_size=8M'], size: 24 * MiB + 12345 },
  { name: 'fixed 1M blocks', options: ['subformat=fixed,block_size=1M'], size: 20 * MiB },
];

for (const c of CREATE_CASES) {
  test(`creates ${c.name}: qemu-img check is clean and qemu reads the intended content`, async (t) => {
    const dir = await tempDir(t);
    const file = join(dir, 'out.vhdx');
    const img = await createImage(file, 'vhdx', c.size, { options: c.options });
    const lss = c.options.join().includes('4096') ? 4096 : 512;
    const size = img.virtualSize;
    assert.equal(size, Math.ceil(c.size / lss) * lss);
    const expected = Buffer.alloc(size);
    const put = async (b: Buffer, off: number): Promise<void> => {
      await img.write(b, off);
      b.copy(expected, off);
    };
    await put(patternBytes(4 * MiB, 1), 0);
    await put(patternBytes(777, 2), 5 * MiB + 3);
    await put(patternBytes(3000, 3), 5 * MiB + 600);
    await put(patternBytes(3 * MiB, 4), 7 * MiB - 1234);
    await put(patternBytes(1000, 5), size - 1000);
    await img.writeZeroes!(1 * MiB + 17, 2 * MiB);
    expected.fill(0, 1 * MiB + 17, 3 * MiB + 17);
    await img.writeZeroes!(14 * MiB, 4 * MiB);
    assert.ok((await readAll(img)).equals(expected), 'reads its own writes before flush');
    await img.close();

    if (lss === 512) {
      const info = await qemuInfo(file);
      assert.equal(info.format, 'vhdx');
      assert.equal(info['virtual-size'], size);
      assertQemuCheck(file);
      await assertQemuSees(file, expected, dir);
    } else {
      // qemu 7.2 opens only 512-byte logical sectors ("Operation not supported").
      const q = qemuImgStatus('info', '-f', 'vhdx', file);
      assert.match(q.stderr, /not supported/i);
    }
    const again = await openImage(file);
    try {
      assert.ok((await readAll(again)).equals(expected));
      const fi = again.formatInfo();
      assert.equal(fi['logical-sector-size'], lss);
      assert.equal(fi['log-state'], 'clean');
      const chk = await again.check!();
      assert.deepEqual([chk.corruptions, chk.leaks], [0, 0], chk.messages.join('; '));
    } finally {
      await again.close();
    }
  });
}

test('rejects bad create options', async (t) => {
  const dir = await tempDir(t);
  for (const o of ['block_size=3M', 'block_size=512K', 'block_size=512M', 'log_size=1536K', 'logical_sector_size=1024', 'nosuch=1']) {
    await assert.rejects(createImage(join(dir, `x-${o}.vhdx`), 'vhdx', 8 * MiB, { options: [o] }), (e: unknown) => isPolyvisorError(e, 'ERR_INVALID_OPTION'), o);
  }
  const raw = join(dir, 'p.raw');
  await writeFile(raw, Buffer.alloc(MiB));
  await rejectsWith(createImage(join(dir, 'c.avhdx'), 'vhdx', undefined, { backingFile: raw, backingFormat: 'raw' }), 'ERR_UNSUPPORTED', 'c.avhdx', 'VHDX parent');
});

test('converts qcow2 to vhdx and back, sparse', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 's.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', src, '48M');
  await qemuIo(src, 'qcow2', 'write -P 0x61 0 5M', 'write -P 0x62 20M 100k', 'write -P 0x63 47M 1M');
  const s = await openImage(src);
  const out = join(dir, 'o.vhdx');
  await convert(s, out, 'vhdx', { options: 'block_size=2M', cache: 'unsafe' });
  await s.close();
  assertQemuCheck(out);
  assert.equal(await qemuDigest(out, 'vhdx', dir), await qemuDigest(src, 'qcow2', dir));
  const o = await openImage(out);
  assert.equal(o.formatInfo()['allocated-blocks'], 5); // 3 + 1 + 1 blocks of 2 MiB
  await o.close();
});

// ---- differencing chains ----------------------------------------------------------------

test('differencing chain parent.vhdx <- child1.avhdx <- child2.avhdx reads like the raw it stands for', async (t) => {
  const dir = await tempDir(t);
  const parentPath = join(dir, 'parent.vhdx');
  const size = 12 * MiB;
  const expected = Buffer.alloc(size);
  const parent = await createImage(parentPath, 'vhdx', size, { options: 'block_size=1M' });
  const pdata = patternBytes(10 * MiB, 21);
  await parent.write(pdata, 0);
  pdata.copy(expected, 0);
  await parent.close();

  const c1Path = join(dir, 'child1.avhdx');
  const c1 = await createImage(c1Path, 'vhdx', undefined, { backingFile: 'parent.vhdx', options: 'block_size=1M' });
  const w = async (img: BlockImage, b: Buffer, off: number): Promise<void> => {
    await img.write(b, off);
    b.copy(expected, off);
  };
  await w(c1, patternBytes(4096, 1), 512); // sectors inside a block: PARTIALLY_PRESENT
  await w(c1, patternBytes(100, 2), 2 * MiB + 300); // inside one sector: filled from the parent
  await w(c1, patternBytes(MiB, 3), 3 * MiB); // a whole block: FULLY_PRESENT
  await w(c1, patternBytes(MiB + 5000, 4), 5 * MiB - 2500); // across blocks, unaligned ends
  await c1.writeZeroes!(7 * MiB, MiB); // a whole block: ZERO, hides the parent
  expected.fill(0, 7 * MiB, 8 * MiB);
  await c1.writeZeroes!(8 * MiB + 1000, 3000); // part of a block: stored zeroes
  expected.fill(0, 8 * MiB + 1000, 8 * MiB + 4000);
  await w(c1, patternBytes(700, 5), 11 * MiB + 100); // over the parent's unwritten tail
  assert.ok((await readAll(c1)).equals(expected), 'child1 before close');
  const info1 = c1.formatInfo();
  assert.equal(info1.subformat, 'differencing');
  assert.deepEqual(info1['parent-paths'], { relative_path: '.\\parent.vhdx', absolute_win32_path: parentPath.replace(/\//g, '\\') });
  await c1.close();

  const c2Path = join(dir, 'child2.avhdx');
  const c2 = await createImage(c2Path, 'vhdx', undefined, { backingFile: 'child1.avhdx', options: 'block_size=2M' });
  await w(c2, patternBytes(3 * MiB, 6), MiB + 512); // over child1's and the parent's blocks
  await w(c2, patternBytes(10, 7), 2 * MiB + 295); // over child1's partial sector
  await c2.close();

  const top = await openImage(c2Path);
  try {
    assert.equal(top.backing?.backing?.path, parentPath);
    assert.ok((await readAll(top)).equals(expected), 'child2 through the chain');
    // block by block, so a mismatch names the block
    for (let off = 0; off < size; off += MiB) {
      const b = Buffer.alloc(MiB);
      await top.read(b, off);
      assert.ok(b.equals(expected.subarray(off, off + MiB)), `block at ${off}`);
    }
    const c1i = top.backing!;
    assert.equal(c1i.formatInfo()['parent-linkage'], `{${(c1i.backing!.formatInfo()['data-write-guid'] as string)}}`);
    const ext = await c1i.blockStatus(0, size);
    const kinds = (off: number): string => ext.find((e) => e.offset <= off && off < e.offset + e.length)!.kind;
    assert.equal(kinds(0), 'unallocated');
    assert.equal(kinds(600), 'data');
    assert.equal(kinds(3 * MiB + 10), 'data');
    assert.equal(kinds(7 * MiB + 10), 'zero');
    assert.equal(kinds(9 * MiB), 'unallocated');
    for (const img of [top, c1i]) {
      const chk = await img.check!();
      assert.deepEqual([chk.corruptions, chk.leaks], [0, 0], chk.messages.join('; '));
    }
  } finally {
    await top.close();
  }
  // qemu 7.2 refuses differencing VHDX outright (HasParent -> ENOTSUP), so it cannot
  // confirm even the child's own sectors; the parent is a plain VHDX it checks and reads.
  const q = qemuImgStatus('info', '-f', 'vhdx', c1Path);
  assert.notEqual(q.status, 0);
  assert.match(q.stderr, /not supported/i);
  assertQemuCheck(parentPath);
  await assertQemuSees(parentPath, Buffer.concat([pdata, Buffer.alloc(2 * MiB)]), dir);

  // A converted chain is a whole disk qemu reads.
  const top2 = await openImage(c2Path);
  const flat = join(dir, 'flat.vhdx');
  await convert(top2, flat, 'vhdx', { options: 'block_size=1M' });
  await top2.close();
  assertQemuCheck(flat);
  await assertQemuSees(flat, expected, dir);
});

test('a changed parent or a locator outside the folder breaks the chain with the right code', async (t) => {
  const dir = await tempDir(t);
  const parentPath = join(dir, 'parent.vhdx');
  const p = await createImage(parentPath, 'vhdx', 4 * MiB, { options: 'block_size=1M' });
  await p.write(patternBytes(MiB, 1), 0);
  await p.close();
  const child = join(dir, 'child.avhdx');
  await (await createImage(child, 'vhdx', undefined, { backingFile: 'parent.vhdx' })).close();
  (await openImage(child)).close();
  // Writing to the parent gives it a new DataWriteGuid: the child no longer matches it.
  const pw = await openImage(parentPath, { writable: true });
  await pw.write(Buffer.alloc(512, 1), 0);
  await pw.close();
  await rejectsWith(openImage(child), 'ERR_CHAIN_MISMATCH', child, 'parent_linkage', 'DataWriteGuid');
  const opened = await openImage(child, { noBacking: true });
  assert.equal(opened.backingRef?.name, 'parent.vhdx');
  await opened.close();

  const sub = join(dir, 'sub');
  await mkdir(sub);
  const outside = join(sub, 'child.avhdx');
  await (await createImage(outside, 'vhdx', undefined, { backingFile: '../parent.vhdx' })).close();
  await rejectsWith(openImage(outside), 'ERR_PATH_OUTSIDE', outside);
  const ok = await openImage(outside, { allowOutsidePaths: true });
  assert.equal(ok.backing?.path, parentPath);
  await ok.close();
});

// ---- the log ----------------------------------------------------------------------------

test('a dirty log is replayed in memory read-only, into the file writable, and qemu agrees', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'log.vhdx');
  const size = 8 * MiB;
  const img = await createImage(file, 'vhdx', size, { options: 'block_size=1M' });
  const base = patternBytes(3 * MiB, 11);
  await img.write(base, 0);
  const host0 = (await img.blockStatus(0, 4096))[0]!.hostOffset!;
  await img.close();
  const expected = Buffer.alloc(size);
  base.copy(expected, 0);

  // The log writes two sectors of block 0, zeroes the third, and turns block 2 into a ZERO
  // block through a BAT update: proof that the BAT is read through the log too.
  const b = await readFile(file);
  const { bat } = regionsOf(b);
  const g = batGeometry(size, MiB, 512, false);
  const batSector = Buffer.from(b.subarray(bat, bat + 4096));
  setBatEntry(batSector, payloadIndex(g, 2), 2, 0);
  const logged = patternBytes(8192, 12);
  await writeLogEntryForTest(file, [{ fileOffset: host0 + 4096, data: logged }, { fileOffset: bat, data: batSector }], [{ fileOffset: host0 + 12288, length: 4096 }]);
  logged.copy(expected, 4096);
  expected.fill(0, 12288, 16384);
  expected.fill(0, 2 * MiB, 3 * MiB);
  const dirty = await readFile(file);

  // qemu refuses to open a dirty VHDX read-only, and replays it with check -r all.
  const qinfo = qemuImgStatus('info', '-f', 'vhdx', file);
  assert.notEqual(qinfo.status, 0);
  assert.match(qinfo.stderr, /log that needs to be replayed/);
  const qcopy = join(dir, 'qcopy.vhdx');
  await copyFile(file, qcopy);
  qemuImgStatus('check', '-r', 'all', '-f', 'vhdx', qcopy);
  await assertQemuSees(qcopy, expected, dir);

  const ro = await openImage(file);
  try {
    assert.equal(ro.formatInfo()['log-state'], 'replayed-in-memory');
    assert.ok((await readAll(ro)).equals(expected), 'read-only replay shows the logged data');
    const ext = await ro.blockStatus(2 * MiB, MiB);
    assert.deepEqual(ext.map((e) => e.kind), ['zero']);
    const chk = await ro.check!();
    assert.equal(chk.corruptions, 0, chk.messages.join('; '));
    assert.ok(chk.messages.some((m) => m.includes('replayed in memory')));
  } finally {
    await ro.close();
  }
  assert.equal(sha(await readFile(file)), sha(dirty), 'a read-only open never writes the file');

  const rw = await openImage(file, { writable: true });
  assert.equal(rw.formatInfo()['log-state'], 'replayed');
  assert.ok((await readAll(rw)).equals(expected));
  await rw.close();
  const clean = await openImage(file);
  assert.equal(clean.formatInfo()['log-state'], 'clean');
  assert.ok((await readAll(clean)).equals(expected));
  await clean.close();
  assertQemuCheck(file);
  await assertQemuSees(file, expected, dir);
});

test('a log entry with a bad checksum is refused, never guessed at', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'badlog.vhdx');
  const img = await createImage(file, 'vhdx', 4 * MiB, { options: 'block_size=1M' });
  await img.write(patternBytes(MiB, 1), 0);
  const host0 = (await img.blockStatus(0, 4096))[0]!.hostOffset!;
  await img.close();
  await writeLogEntryForTest(file, [{ fileOffset: host0, data: Buffer.alloc(4096, 7) }], [], { corruptChecksum: true });
  await rejectsWith(openImage(file), 'ERR_CHECKSUM', file, 'log entry');
  await rejectsWith(openImage(file, { writable: true }), 'ERR_CHECKSUM', file, 'log entry');
});

// ---- hostile images ---------------------------------------------------------------------

async function makeImage(dir: string, name = 'h.vhdx'): Promise<string> {
  const file = join(dir, name);
  const img = await createImage(file, 'vhdx', 8 * MiB, { options: 'block_size=1M' });
  await img.write(patternBytes(3 * MiB, 5), 0);
  await img.close();
  return file;
}

test('hostile headers and region tables fail with the right codes, naming the file', async (t) => {
  const dir = await tempDir(t);
  const good = await makeImage(dir);
  const content = await openImage(good).then(async (i) => {
    const b = await readAll(i);
    await i.close();
    return b;
  });
  const variant = async (name: string, fn: (b: Buffer) => void): Promise<string> => {
    const f = join(dir, name);
    await copyFile(good, f);
    await patch(f, fn);
    return f;
  };
  // One damaged header: the other opens the image.
  for (const slot of [0, 1]) {
    const f = await variant(`h${slot}.vhdx`, (b) => (b[HEADER_OFFSETS[slot]! + 100] ^= 1));
    const i = await openImage(f);
    assert.ok((await readAll(i)).equals(content));
    assert.ok((await i.check!()).messages.some((m) => m.includes(`header ${slot + 1}`)));
    await i.close();
  }
  await rejectsWith(openImage(await variant('h01.vhdx', (b) => { b[HEADER_OFFSETS[0] + 100] ^= 1; b[HEADER_OFFSETS[1] + 100] ^= 1; })), 'ERR_CHECKSUM', 'h01.vhdx', 'header');
  await rejectsWith(openImage(await variant('nosig.vhdx', (b) => { b.write('head', HEADER_OFFSETS[0]! + 0, 'latin1'); b.fill(0, HEADER_OFFSETS[0], HEADER_OFFSETS[0] + 8); b.fill(0, HEADER_OFFSETS[1], HEADER_OFFSETS[1] + 8); })), 'ERR_CORRUPT', 'nosig.vhdx', 'signature');
  // One damaged region table: the second is used; both: checksum.
  const rt1 = await variant('rt1.vhdx', (b) => (b[REGION_TABLE_OFFSETS[0] + 40] ^= 1));
  await (await openImage(rt1)).close();
  await rejectsWith(openImage(await variant('rt12.vhdx', (b) => { b[REGION_TABLE_OFFSETS[0] + 40] ^= 1; b[REGION_TABLE_OFFSETS[1] + 40] ^= 1; })), 'ERR_CHECKSUM', 'rt12.vhdx', 'region table');
  // Region entry past the end of the file.
  await rejectsWith(openImage(await variant('rpast.vhdx', (b) => patchRegions(b, (t) => t.writeBigUInt64LE(1024n * 1024n * 1024n * 1024n, 16 + 16)))), 'ERR_TRUNCATED', 'rpast.vhdx', 'region table entry 0', 'past the end');
  // Overlapping regions: the metadata region moved onto the BAT.
  await rejectsWith(
    openImage(await variant('roverlap.vhdx', (b) => patchRegions(b, (t) => t.writeBigUInt64LE(t.readBigUInt64LE(16 + 16), 16 + 32 + 16)))),
    'ERR_CORRUPT',
    'roverlap.vhdx',
    'overlaps',
  );
  // The log overlapping the BAT (a header field).
  await rejectsWith(
    openImage(
      await variant('logoverlap.vhdx', (b) => {
        for (const at of HEADER_OFFSETS) {
          const h = b.subarray(at, at + 4096);
          h.writeBigUInt64LE(BigInt(regionsOf(b).bat), 72);
          sealChecksum(h, 4);
        }
      }),
    ),
    'ERR_CORRUPT',
    'logoverlap.vhdx',
    'overlaps the log',
  );
  // An unknown region marked required.
  await rejectsWith(
    openImage(
      await variant('runknown.vhdx', (b) =>
        patchRegions(b, (t) => {
          t.writeUInt32LE(3, 8);
          Buffer.alloc(16, 0x77).copy(t, 16 + 64);
          t.writeBigUInt64LE(BigInt(8 * MiB), 16 + 64 + 16);
          t.writeUInt32LE(MiB, 16 + 64 + 24);
          t.writeUInt32LE(1, 16 + 64 + 28);
        }),
      ),
    ),
    'ERR_UNSUPPORTED',
    'runknown.vhdx',
    'required region',
  );
  await rejectsWith(openImage(await variant('rcount.vhdx', (b) => patchRegions(b, (t) => t.writeUInt32LE(5000, 8)))), 'ERR_CORRUPT', 'rcount.vhdx', 'EntryCount');
  // A LogGuid that no log entry carries: the writer set it and wrote nothing (qemu reads it
  // the same way); there is nothing to replay.
  const noentries = await variant('logguid.vhdx', (b) => {
    for (const at of HEADER_OFFSETS) {
      const h = b.subarray(at, at + 4096);
      Buffer.alloc(16, 0x3c).copy(h, 48);
      sealChecksum(h, 4);
    }
  });
  const ne = await openImage(noentries);
  assert.equal(ne.formatInfo()['log-state'], 'clean');
  assert.ok((await readAll(ne)).equals(content));
  await ne.close();
  const tr = join(dir, 'trunc.vhdx');
  await copyFile(good, tr);
  await truncate(tr, 100 * 1024);
  await rejectsWith(openImage(tr), 'ERR_TRUNCATED', 'trunc.vhdx');
  await rejectsWith(openImage(await variant('notvhdx.vhdx', (b) => b.write('vhdxfilX', 0, 'latin1')), { format: 'vhdx' }), 'ERR_CORRUPT', 'notvhdx.vhdx', 'vhdxfile');
});

test('hostile metadata and BAT entries fail with the right codes, naming the file', async (t) => {
  const dir = await tempDir(t);
  const good = await makeImage(dir);
  const variant = async (name: string, fn: (b: Buffer, r: { bat: number; meta: number }) => void): Promise<string> => {
    const f = join(dir, name);
    await copyFile(good, f);
    await patch(f, (b) => fn(b, regionsOf(b)));
    return f;
  };
  // Metadata: the file parameters item is the first (our layout, as qemu's).
  const fpAt = (b: Buffer, meta: number): number => meta + b.readUInt32LE(meta + 32 + 16);
  await rejectsWith(openImage(await variant('bs3.vhdx', (b, r) => b.writeUInt32LE(3 * MiB, fpAt(b, r.meta)))), 'ERR_CORRUPT', 'bs3.vhdx', 'BlockSize');
  await rejectsWith(openImage(await variant('bs512k.vhdx', (b, r) => b.writeUInt32LE(512 * 1024, fpAt(b, r.meta)))), 'ERR_CORRUPT', 'bs512k.vhdx', 'BlockSize');
  await rejectsWith(openImage(await variant('mcount.vhdx', (b, r) => b.writeUInt16LE(60000, r.meta + 10))), 'ERR_CORRUPT', 'mcount.vhdx', 'EntryCount');
  await rejectsWith(openImage(await variant('msig.vhdx', (b, r) => b.write('metadatX', r.meta, 'latin1'))), 'ERR_CORRUPT', 'msig.vhdx', 'metadata');
  await rejectsWith(openImage(await variant('mitem.vhdx', (b, r) => b.writeUInt32LE(2 * MiB, r.meta + 32 + 16))), 'ERR_CORRUPT', 'mitem.vhdx', 'File Parameters');
  await rejectsWith(
    openImage(await variant('mreq.vhdx', (b, r) => { Buffer.alloc(16, 0x42).copy(b, r.meta + 32); })),
    'ERR_UNSUPPORTED',
    'mreq.vhdx',
    'required metadata item',
  );
  await rejectsWith(openImage(await variant('lss.vhdx', (b, r) => b.writeUInt32LE(1024, r.meta + b.readUInt32LE(r.meta + 32 + 3 * 32 + 16)))), 'ERR_CORRUPT', 'lss.vhdx', 'LogicalSectorSize');
  // BAT entries: past the end of the file, over another block, over the metadata, bad state.
  await rejectsWith(openImage(await variant('batpast.vhdx', (b, r) => setBatEntry(b.subarray(r.bat), 0, 6, 100000))), 'ERR_CORRUPT', 'batpast.vhdx', 'BAT entry 0', 'past the end');
  await rejectsWith(
    openImage(await variant('batdup.vhdx', (b, r) => b.copy(b, r.bat + 8, r.bat, r.bat + 8))),
    'ERR_CORRUPT',
    'batdup.vhdx',
    'BAT entry',
    'overlaps the block',
  );
  await rejectsWith(openImage(await variant('batmeta.vhdx', (b, r) => setBatEntry(b.subarray(r.bat), 1, 6, r.meta / MiB))), 'ERR_CORRUPT', 'batmeta.vhdx', 'BAT entry 1', 'metadata region');
  await rejectsWith(openImage(await variant('batstate.vhdx', (b, r) => setBatEntry(b.subarray(r.bat), 3, 4, 0))), 'ERR_CORRUPT', 'batstate.vhdx', 'BAT entry 3', 'state 4');
  await rejectsWith(openImage(await variant('batpartial.vhdx', (b, r) => (b[r.bat + 8] = (b[r.bat + 8]! & ~7) | 7))), 'ERR_CORRUPT', 'batpartial.vhdx', 'PARTIALLY_PRESENT');
  // check() on an image that opened: a block cut short by truncation is reported, not thrown.
  const f = join(dir, 'short.vhdx');
  await copyFile(good, f);
  const i = await openImage(f);
  const st = await i.blockStatus(2 * MiB, 4096);
  await i.close();
  await truncate(f, st[0]!.hostOffset! + 4096);
  await rejectsWith(openImage(f), 'ERR_TRUNCATED', 'short.vhdx', 'BAT entry 2');
});

test('probe never throws on junk', () => {
  for (let seed = 1; seed < 200; seed++) {
    const junk = patternBytes(seed * 7, seed);
    if (seed % 3 === 0) junk.write('vhdxfile', 0, 'latin1');
    const s = vhdx.probe(junk, junk.subarray(0, 0), junk.length);
    assert.ok(s === 0 || s === 100);
  }
});
