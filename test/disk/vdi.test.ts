/**
 * VDI, with qemu-img and qemu-io as the oracle: images qemu makes (dynamic and static) are
 * read bit-exactly, at qemu's size, with the allocation `qemu-img map` reports; images
 * Polyvisor makes pass `qemu-img check -f vdi` and compare equal to what was written; a
 * hand-built image covers what qemu cannot make (other block sizes, zero entries, 1.0);
 * hostile images fail with the right code, naming the file.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createImage, openImage } from '../../src/disk/chain.js';
import { convert } from '../../src/disk/convert.js';
import type { BlockImage, Extent } from '../../src/disk/image.js';
import { vdi } from '../../src/disk/formats/vdi.js';
import { type ErrorCode } from '../../src/errors.js';
import { imageDigest, patternBytes, qemuDigest, qemuImg, qemuImgStatus, qemuInfo, qemuIo, readAll, rejectsWith, tempDir, assertQemuReads } from '../helpers.js';

const MiB = 1 << 20;

/** Header field offsets (VDICore.h: VDIPREHEADER + VDIHEADER1PLUS). */
const H = {
  signature: 0x40,
  version: 0x44,
  headerSize: 0x48,
  type: 0x4c,
  offsetBmap: 0x154,
  offsetData: 0x158,
  sectorSize: 0x168,
  diskSize: 0x170,
  blockSize: 0x178,
  blockExtra: 0x17c,
  blocksInHdd: 0x180,
  blocksAllocated: 0x184,
  uuidCreate: 0x188,
  uuidModify: 0x198,
  uuidLinkage: 0x1a8,
};

async function patch(file: string, fn: (b: Buffer) => void): Promise<void> {
  const b = await readFile(file);
  fn(b);
  await writeFile(file, b);
}

/** qemu-img reads `file` as exactly `expected`. */
const assertQemuSees = (file: string, expected: Buffer, dir: string) => assertQemuReads(file, 'vdi', expected, dir);

function assertQemuCheck(file: string): void {
  const r = qemuImgStatus('check', '-f', 'vdi', file);
  assert.equal(r.status, 0, `qemu-img check: ${r.stdout}${r.stderr}`);
}

/** The kinds our extents give over [start, start+length). */
function kindsOver(ext: Extent[], start: number, length: number): Set<string> {
  const out = new Set<string>();
  for (const e of ext) if (e.offset < start + length && start < e.offset + e.length) out.add(e.kind);
  return out;
}

/** Our block status agrees with `qemu-img map`: data where qemu has data (at its host offset), none where it has none. */
async function assertMapAgrees(img: BlockImage, file: string): Promise<void> {
  const map = JSON.parse(await qemuImg('map', '--output=json', '-f', 'vdi', file)) as Array<{ start: number; length: number; data: boolean; zero: boolean; offset?: number }>;
  const ext = await img.blockStatus(0, img.virtualSize);
  assert.equal(ext.reduce((n, e) => n + e.length, 0), img.virtualSize);
  for (const m of map) {
    const kinds = kindsOver(ext, m.start, m.length);
    if (!m.data) {
      assert.ok(!kinds.has('data'), `qemu: no data at ${m.start}+${m.length}; ours: ${JSON.stringify(ext)}`);
    } else if (!m.zero) {
      assert.deepEqual([...kinds], ['data'], `qemu: data at ${m.start}+${m.length}`);
      const e = ext.find((x) => x.offset <= m.start && m.start < x.offset + x.length)!;
      assert.equal(e.hostOffset! + (m.start - e.offset), m.offset, `host offset of ${m.start}`);
    }
    // data + zero: qemu looked into the holes of a static image's file; either answer is right
  }
}

test('probe: the signature at 0x40, and never throws', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'a.vdi');
  await qemuImg('create', '-q', '-f', 'vdi', file, '4M');
  const b = await readFile(file);
  assert.equal(vdi.probe(b.subarray(0, 65536), b.subarray(b.length - 512), b.length), 100);
  assert.equal(vdi.probe(Buffer.alloc(0), Buffer.alloc(0), 0), 0);
  assert.equal(vdi.probe(b.subarray(0, 0x43), Buffer.alloc(0), 0x43), 0);
  assert.equal(vdi.probe(Buffer.alloc(512), Buffer.alloc(512), 512), 0);
});

const QEMU_IMAGES = [
  { name: 'dynamic', opts: [] as string[], size: '40M' },
  { name: 'static', opts: ['-o', 'static=on'], size: '20M' },
  { name: 'dynamic odd size', opts: [] as string[], size: '12345k' },
];

for (const q of QEMU_IMAGES) {
  test(`reads a qemu-img ${q.name} vdi bit-exactly, at qemu's size, with qemu's map`, async (t) => {
    const dir = await tempDir(t);
    const file = join(dir, 'q.vdi');
    await qemuImg('create', '-q', '-f', 'vdi', ...q.opts, file, q.size);
    await qemuIo(file, 'vdi', 'write -P 0x11 0 64k', 'write -P 0x22 1M 3M', 'write -P 0x33 5000k 12k', 'write -P 0x44 7167k 2k', 'write -z 2M 512k', 'write -P 0x55 11M 1000k');
    const img = await openImage(file);
    try {
      assert.equal(img.format, 'vdi');
      assert.equal(img.virtualSize, (await qemuInfo(file))['virtual-size']);
      assert.equal(img.clusterSize, MiB);
      const info = img.formatInfo();
      assert.equal(info['image-type'], q.name === 'static' ? 'static' : 'dynamic');
      assert.equal(info.version, '1.1');
      assert.equal(info['block-size'], MiB);
      assert.match(String(info.uuid), /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      assert.equal(info['parent-uuid'], '00000000-0000-0000-0000-000000000000');
      assert.match(String(info['header-text']), /QEMU/);
      if (q.name !== 'static') assert.equal(info['blocks-allocated'], 8); // blocks 0-4, 6, 7, 11
      assert.equal(await imageDigest(img), await qemuDigest(file, 'vdi', dir));
      // unaligned reads straddling blocks agree with a whole read
      const all = await readAll(img);
      const b = Buffer.alloc(3 * MiB + 77);
      await img.read(b, 2 * MiB - 1000);
      assert.ok(b.equals(all.subarray(2 * MiB - 1000, 5 * MiB - 1000 + 77)));
      await assertMapAgrees(img, file);
      const chk = await img.check!();
      assert.deepEqual([chk.corruptions, chk.leaks], [0, 0], chk.messages.join('; '));
      assert.equal(chk.totalClusters, Math.ceil(img.virtualSize / MiB));
    } finally {
      await img.close();
    }
  });
}

test('writes into a qemu-made dynamic image: qemu checks it clean and reads what was written', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'q.vdi');
  await qemuImg('create', '-q', '-f', 'vdi', file, '16M');
  await qemuIo(file, 'vdi', 'write -P 0x5a 0 3M');
  const first = await openImage(file);
  const before = first.formatInfo();
  await first.close();
  const img = await openImage(file, { writable: true });
  const expected = await readAll(img);
  const w1 = patternBytes(100_000, 7);
  const w2 = patternBytes(2 * MiB + 4096, 8);
  await img.write(w1, 2 * MiB - 50_000); // over an existing block and into another
  await img.write(w2, 9 * MiB + 3); // new blocks, unaligned
  await img.writeZeroes!(100, 1000);
  await img.writeZeroes!(13 * MiB, 2 * MiB); // nothing there: stays unallocated
  w1.copy(expected, 2 * MiB - 50_000);
  w2.copy(expected, 9 * MiB + 3);
  expected.fill(0, 100, 1100);
  assert.ok((await readAll(img)).equals(expected), 'reads its own writes before flush');
  await img.close();
  assertQemuCheck(file);
  await assertQemuSees(file, expected, dir);
  const again = await openImage(file);
  assert.ok((await readAll(again)).equals(expected));
  const info = again.formatInfo();
  assert.equal(info['blocks-allocated'], 6);
  assert.equal(info.uuid, before.uuid, 'the creation UUID stays');
  assert.notEqual(info['modify-uuid'], before['modify-uuid'], 'a write gives a new modification UUID, as VirtualBox does');
  const chk = await again.check!();
  assert.deepEqual([chk.corruptions, chk.leaks], [0, 0], chk.messages.join('; '));
  assert.equal(chk.allocatedClusters, 6);
  await again.close();
});

for (const kind of ['dynamic', 'static'] as const) {
  test(`creates ${kind}: qemu-img check is clean and compare equal, reopen and rewrite`, async (t) => {
    const dir = await tempDir(t);
    const file = join(dir, 'out.vdi');
    const asked = 24 * MiB + 12345;
    const img = await createImage(file, 'vdi', asked, { options: kind === 'static' ? ['static=on'] : [] });
    const size = img.virtualSize;
    assert.equal(size, asked + 512 - (asked % 512), 'rounded up to a sector, as qemu-img does');
    const expected = Buffer.alloc(size);
    const put = async (b: Buffer, off: number): Promise<void> => {
      await img.write(b, off);
      b.copy(expected, off);
    };
    await put(patternBytes(4 * MiB, 1), 0); // whole new blocks
    await put(patternBytes(777, 2), 5 * MiB + 3); // unaligned into a new block
    await put(patternBytes(3000, 3), 5 * MiB + 600); // unaligned into the same block
    await put(patternBytes(3 * MiB, 4), 7 * MiB - 1234); // across block boundaries
    await put(patternBytes(1000, 5), size - 1000); // the last bytes, in a partial block
    await img.writeZeroes!(1 * MiB + 17, 2 * MiB); // zeroes over data
    expected.fill(0, 1 * MiB + 17, 3 * MiB + 17);
    await img.writeZeroes!(14 * MiB, 4 * MiB); // zeroes over nothing
    assert.ok((await readAll(img)).equals(expected), 'reads its own writes before flush');
    await img.close();

    const info = await qemuInfo(file);
    assert.equal(info.format, 'vdi');
    assert.equal(info['virtual-size'], size);
    assertQemuCheck(file);
    await assertQemuSees(file, expected, dir);
    if (kind === 'static') assert.equal((await stat(file)).size, 64 * 1024 + 25 * MiB);

    const back = await openImage(file, { writable: true });
    const fi = back.formatInfo();
    assert.equal(fi['image-type'], kind);
    assert.equal(fi['header-size'], 0x190);
    assert.equal(fi['data-offset'], 64 * 1024);
    assert.equal(fi['blocks-allocated'], kind === 'static' ? 25 : 10); // blocks 0-3, 5, 6-9, 24
    assert.ok((await readAll(back)).equals(expected));
    await assertMapAgrees(back, file);
    const ext = await back.blockStatus(0, size);
    if (kind === 'dynamic') assert.deepEqual([...kindsOver(ext, 14 * MiB, 4 * MiB)], ['unallocated']);
    // rewrite: over old blocks, into new ones, zeroes over a whole allocated block
    const r1 = patternBytes(1.5 * MiB, 6);
    await back.write(r1, 3 * MiB + 5);
    r1.copy(expected, 3 * MiB + 5);
    const r2 = patternBytes(2 * MiB, 7);
    await back.write(r2, 16 * MiB);
    r2.copy(expected, 16 * MiB);
    await back.writeZeroes!(0, MiB);
    expected.fill(0, 0, MiB);
    const chk = await back.check!(); // flushes first
    assert.deepEqual([chk.corruptions, chk.leaks], [0, 0], chk.messages.join('; '));
    await back.close();
    assertQemuCheck(file);
    await assertQemuSees(file, expected, dir);
    const again = await openImage(file);
    assert.equal(await imageDigest(again), await qemuDigest(file, 'vdi', dir));
    await again.close();
  });
}

test('convert: a qcow2 to vdi, and qemu-img convert output back, through Polyvisor', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', src, '40M');
  await qemuIo(src, 'qcow2', 'write -P 0x61 0 1M', 'write -P 0x62 3M 5M', 'write -P 0x63 20M 4k', 'write -P 0 30M 2M', 'write -P 0x64 39M 1M');
  const img = await openImage(src);
  t.after(() => img.close());
  for (const options of [[], ['static=on']]) {
    const dst = join(dir, `out${options.length}.vdi`);
    const r = await convert(img, dst, 'vdi', { options });
    assert.equal(r.virtualSize, 40 * MiB);
    assertQemuCheck(dst);
    const cmp = qemuImgStatus('compare', '-f', 'qcow2', '-F', 'vdi', src, dst);
    assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
    if (!options.length) {
      // only the non-zero blocks are stored: 1 + 5 + 1 + 1
      const out = await openImage(dst);
      assert.equal(out.formatInfo()['blocks-allocated'], 8);
      await out.close();
      assert.ok((await stat(dst)).size <= 64 * 1024 + 8 * MiB);
    }
  }
  // qemu-img's own vdi output reads the same through Polyvisor
  const q = join(dir, 'q.vdi');
  await qemuImg('convert', '-f', 'qcow2', '-O', 'vdi', src, q);
  const qi = await openImage(q);
  assert.equal(await imageDigest(qi), await imageDigest(img));
  await qi.close();
});

/** Builds a VDI by hand, for what qemu cannot make: other block sizes, zero entries, version 1.0. */
function buildVdi(o: { blockSize: number; diskSize: number; bat: number[]; blocks: Buffer[]; version?: number; type?: number; headerSize?: number }): Buffer {
  const offsetBmap = 0x200;
  const offsetData = 0x200 + Math.ceil((o.bat.length * 4) / 512) * 512;
  const b = Buffer.alloc(offsetData + o.blocks.length * o.blockSize);
  b.write('<<< Sun VirtualBox Disk Image >>>\n', 0, 'latin1');
  b.writeUInt32LE(0xbeda107f, H.signature);
  b.writeUInt32LE(o.version ?? 0x00010001, H.version);
  b.writeUInt32LE(o.headerSize ?? 0x190, H.headerSize);
  b.writeUInt32LE(o.type ?? 1, H.type);
  b.writeUInt32LE(offsetBmap, H.offsetBmap);
  b.writeUInt32LE(offsetData, H.offsetData);
  b.writeUInt32LE(512, H.sectorSize);
  b.writeBigUInt64LE(BigInt(o.diskSize), H.diskSize);
  b.writeUInt32LE(o.blockSize, H.blockSize);
  b.writeUInt32LE(o.bat.length, H.blocksInHdd);
  b.writeUInt32LE(o.blocks.length, H.blocksAllocated);
  b.fill(0x11, H.uuidCreate, H.uuidCreate + 16);
  b.fill(0x22, H.uuidModify, H.uuidModify + 16);
  o.bat.forEach((e, i) => b.writeUInt32LE(e >>> 0, offsetBmap + i * 4));
  o.blocks.forEach((d, i) => d.copy(b, offsetData + i * o.blockSize));
  return b;
}

test('hand-built images: 64 KiB blocks, zero and free entries, out-of-order indices, version 1.0, odd disk size', async (t) => {
  const dir = await tempDir(t);
  const bs = 64 * 1024;
  const blocks = [patternBytes(bs, 1), patternBytes(bs, 2), patternBytes(bs, 3)];
  // guest blocks: 0 -> data 2, 1 free, 2 zero, 3 -> data 0, 4 -> data 1 (the last, partial)
  const bat = [2, 0xffffffff, 0xfffffffe, 0, 1];
  const diskSize = 4 * bs + 1000; // not a whole sector: read rounded up, as qemu does
  const expected = Buffer.alloc(4 * bs + 1024);
  blocks[2]!.copy(expected, 0);
  blocks[0]!.copy(expected, 3 * bs);
  blocks[1]!.copy(expected, 4 * bs, 0, 1024);
  for (const version of [0x00010001, 0x00010000]) {
    const file = join(dir, `h${version}.vdi`);
    await writeFile(file, buildVdi({ blockSize: bs, diskSize, bat, blocks, version, headerSize: version === 0x00010000 ? 0x180 : 0x190 }));
    const img = await openImage(file, { writable: true });
    assert.equal(img.virtualSize, 4 * bs + 1024);
    assert.equal(img.clusterSize, bs);
    assert.ok((await readAll(img)).equals(expected));
    const ext = await img.blockStatus(0, img.virtualSize);
    assert.deepEqual(
      ext.map((e) => [e.kind, e.offset, e.length]),
      [
        ['data', 0, bs],
        ['unallocated', bs, bs],
        ['zero', 2 * bs, bs],
        ['data', 3 * bs, bs + 1024],
      ],
    );
    assert.ok(img.formatInfo().notes);
    // writing into the zero block allocates a new data block (index 3) that reads zero elsewhere
    await img.write(Buffer.alloc(100, 0x77), 2 * bs + 10);
    expected.fill(0x77, 2 * bs + 10, 2 * bs + 110);
    const chk = await img.check!();
    assert.deepEqual([chk.corruptions, chk.leaks], [0, 0], chk.messages.join('; '));
    await img.close();
    const back = await openImage(file);
    assert.ok((await readAll(back)).equals(expected));
    assert.equal(back.formatInfo()['blocks-allocated'], 4);
    assert.equal(back.formatInfo().version, version === 0x00010000 ? '1.0' : '1.1');
    await back.close();
    expected.fill(0, 2 * bs + 10, 2 * bs + 110); // the next version starts from the built file again
  }
});

test('check: a "blocks allocated" count above the entries in use is a leak and a corruption, as qemu-img says', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'leak.vdi');
  await qemuImg('create', '-q', '-f', 'vdi', file, '8M');
  await qemuIo(file, 'vdi', 'write -P 0x1 0 1M', 'write -P 0x2 2M 1M');
  await patch(file, (b) => {
    b.writeUInt32LE(3, H.blocksAllocated);
  });
  await truncate(file, (await stat(file)).size + MiB);
  const q = qemuImgStatus('check', '-f', 'vdi', file);
  assert.equal(q.status, 2, 'qemu-img reports corruption');
  const img = await openImage(file);
  const chk = await img.check!();
  assert.equal(chk.corruptions, 1, chk.messages.join('; '));
  assert.equal(chk.leaks, 1);
  await img.close();
});

test('read-only images refuse writes; create refuses bad options and backing files', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'a.vdi');
  await (await createImage(file, 'vdi', 4 * MiB)).close();
  const ro = await openImage(file);
  await rejectsWith(ro.write(Buffer.alloc(512), 0), 'ERR_READ_ONLY', file);
  await rejectsWith(ro.write(Buffer.alloc(512), 4 * MiB), 'ERR_RANGE', file);
  await ro.close();
  await rejectsWith(createImage(join(dir, 'b.vdi'), 'vdi', MiB, { options: ['static=maybe'] }), 'ERR_INVALID_OPTION', 'static');
  await rejectsWith(createImage(join(dir, 'c.vdi'), 'vdi', MiB, { options: ['cluster_size=2M'] }), 'ERR_INVALID_OPTION', 'cluster_size');
  await rejectsWith(createImage(join(dir, 'd.vdi'), 'vdi', undefined, { backingFile: 'a.vdi' }), 'ERR_UNSUPPORTED', 'd.vdi');
  // an empty image is valid to qemu too
  const e = join(dir, 'e.vdi');
  await (await createImage(e, 'vdi', 3 * MiB)).close();
  assertQemuCheck(e);
  assert.equal((await stat(e)).size, 64 * 1024);
});

// ---- hostile images ---------------------------------------------------------------------

interface Hostile {
  name: string;
  code: ErrorCode;
  words: string[];
  /** change the qemu-made image (dynamic, 8 MiB, blocks 0 and 2 written: entries 0 -> 0, 2 -> 1) */
  edit: (b: Buffer) => Buffer;
}

const HOSTILE: Hostile[] = [
  { name: 'bad signature', code: 'ERR_CORRUPT', words: ['signature', 'not a VDI'], edit: (b) => (b.writeUInt32LE(0xdeadbeef, H.signature), b) },
  { name: 'header size too small', code: 'ERR_CORRUPT', words: ['header size'], edit: (b) => (b.writeUInt32LE(0x100, H.headerSize), b) },
  { name: 'header size over the block map', code: 'ERR_CORRUPT', words: ['overlaps the header'], edit: (b) => (b.writeUInt32LE(0x400, H.headerSize), b) },
  { name: 'version 2.0', code: 'ERR_UNSUPPORTED', words: ['version 2.0'], edit: (b) => (b.writeUInt32LE(0x00020000, H.version), b) },
  { name: 'version 0.2', code: 'ERR_UNSUPPORTED', words: ['0.x'], edit: (b) => (b.writeUInt32LE(0x00000002, H.version), b) },
  { name: 'differencing', code: 'ERR_UNSUPPORTED', words: ['differencing', 'UUID'], edit: (b) => (b.writeUInt32LE(4, H.type), b.fill(0x33, H.uuidLinkage, H.uuidLinkage + 16), b) },
  { name: 'undo', code: 'ERR_UNSUPPORTED', words: ['undo'], edit: (b) => (b.writeUInt32LE(3, H.type), b) },
  { name: 'unknown type', code: 'ERR_CORRUPT', words: ['image type 9'], edit: (b) => (b.writeUInt32LE(9, H.type), b) },
  { name: 'sector size 4096', code: 'ERR_UNSUPPORTED', words: ['sector size 4096'], edit: (b) => (b.writeUInt32LE(4096, H.sectorSize), b) },
  { name: 'block size not a power of two', code: 'ERR_CORRUPT', words: ['power of two'], edit: (b) => (b.writeUInt32LE(3 * MiB, H.blockSize), b) },
  { name: 'block size 1 GiB', code: 'ERR_UNSUPPORTED', words: ['block size'], edit: (b) => (b.writeUInt32LE(1 << 30, H.blockSize), b) },
  { name: 'block extra data', code: 'ERR_UNSUPPORTED', words: ['block extra'], edit: (b) => (b.writeUInt32LE(512, H.blockExtra), b) },
  { name: 'huge blocks in HDD', code: 'ERR_UNSUPPORTED', words: ['blocks in HDD'], edit: (b) => (b.writeUInt32LE(0x7fffffff, H.blocksInHdd), b) },
  { name: 'blocks in HDD overlapping the data area', code: 'ERR_CORRUPT', words: ['overlaps the block map'], edit: (b) => (b.writeUInt32LE(1 << 20, H.blocksInHdd), b) },
  { name: 'blocks in HDD too few for the disk', code: 'ERR_CORRUPT', words: ['cannot hold'], edit: (b) => (b.writeUInt32LE(4, H.blocksInHdd), b) },
  { name: 'disk size past 2^53', code: 'ERR_UNSUPPORTED', words: ['disk size'], edit: (b) => (b.writeBigUInt64LE(1n << 60n, H.diskSize), b) },
  { name: 'blocks allocated above blocks in HDD', code: 'ERR_CORRUPT', words: ['blocks allocated'], edit: (b) => (b.writeUInt32LE(9, H.blocksAllocated), b) },
  {
    name: 'block map past end of file',
    code: 'ERR_TRUNCATED',
    words: ['block map', 'past the end'],
    edit: (b) => (b.writeUInt32LE(0x10000000, H.offsetBmap), b.writeUInt32LE(0x10001000, H.offsetData), b),
  },
  { name: 'data offset past end of file', code: 'ERR_TRUNCATED', words: ['data area'], edit: (b) => (b.writeUInt32LE(0x10000000, H.offsetData), b) },
  { name: 'duplicate block map entries', code: 'ERR_CORRUPT', words: ['block map entry 5', 'block map entry 0'], edit: (b) => (b.writeUInt32LE(0, 0x200 + 5 * 4), b) },
  { name: 'entry at or past blocks allocated', code: 'ERR_CORRUPT', words: ['block map entry 3', 'only 2 blocks'], edit: (b) => (b.writeUInt32LE(2, 0x200 + 3 * 4), b) },
  { name: 'data past end of file', code: 'ERR_TRUNCATED', words: ['block map entry 2', 'past the end'], edit: (b) => b.subarray(0, b.length - 4096) },
  { name: 'truncated in the header', code: 'ERR_TRUNCATED', words: ['header'], edit: (b) => b.subarray(0, 0x100) },
  { name: 'truncated in the pre-header', code: 'ERR_TRUNCATED', words: ['pre-header'], edit: (b) => b.subarray(0, 0x30) },
  { name: 'truncated in the block map', code: 'ERR_TRUNCATED', words: ['block map'], edit: (b) => b.subarray(0, 0x208) },
];

test('hostile images fail with the right code, naming the file', async (t) => {
  const dir = await tempDir(t);
  const base = join(dir, 'base.vdi');
  await qemuImg('create', '-q', '-f', 'vdi', base, '8M');
  await qemuIo(base, 'vdi', 'write -P 0x1 0 1M', 'write -P 0x2 2M 1M');
  const good = await readFile(base);
  for (const h of HOSTILE) {
    const file = join(dir, `${h.name.replace(/\W+/g, '-')}.vdi`);
    await writeFile(file, h.edit(Buffer.from(good)));
    // -f vdi: a bad signature would otherwise probe as raw
    await rejectsWith(openImage(file, { format: 'vdi' }), h.code, file, ...h.words);
  }
});
