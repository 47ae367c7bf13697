/**
 * VMDK with qemu-img / qemu-io as the oracle: every subformat qemu writes is read
 * bit-exactly; every subformat we write is read back by qemu (check + compare); ESXi deltas
 * qemu cannot make (vmfsSparse, seSparse) are crafted per spec; hostile descriptors and
 * extents fail with the right code, naming the file.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, readdir, symlink, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { createImage, openImage } from '../../src/disk/chain.js';
import { createOutput } from '../../src/disk/output.js';
import { convert } from '../../src/disk/convert.js';
import { vmdk } from '../../src/disk/formats/vmdk.js';
import { imageDigest, patternBytes, qemuDigest, qemuImg, qemuImgStatus, qemuInfo, qemuIo, readAll, rejectsWith, tempDir, assertQemuReads } from '../helpers.js';

const MiB = 1 << 20;

/** qemu-img reads `file` as exactly `expected`. */
const assertQemuSees = (file: string, expected: Buffer, dir: string) => assertQemuReads(file, 'vmdk', expected, dir);

function assertQemuCheck(file: string): void {
  const r = qemuImgStatus('check', '-f', 'vmdk', file);
  assert.equal(r.status, 0, `qemu-img check: ${r.stdout}${r.stderr}`);
}

test('probe: magics score 100, descriptors 90, anything else 0, never throws', () => {
  assert.equal(vmdk.probe(Buffer.from('KDMV\x01\0\0\0'), Buffer.alloc(0), 512), 100);
  assert.equal(vmdk.probe(Buffer.from('COWD\x01\0\0\0'), Buffer.alloc(0), 512), 100);
  const se = Buffer.alloc(16);
  se.writeBigUInt64LE(0xcafebaben, 0);
  assert.equal(vmdk.probe(se, Buffer.alloc(0), 512), 100);
  assert.equal(vmdk.probe(Buffer.from('# Disk DescriptorFile\nversion=1\n'), Buffer.alloc(0), 40), 90);
  assert.equal(vmdk.probe(Buffer.from('version=1\ncreateType="vmfs"\n'), Buffer.alloc(0), 40), 90);
  assert.equal(vmdk.probe(Buffer.from('QFI\xfb'), Buffer.alloc(0), 4), 0);
  assert.equal(vmdk.probe(Buffer.alloc(0), Buffer.alloc(0), 0), 0);
  assert.equal(vmdk.probe(Buffer.from([0x23, 0, 1, 2]), Buffer.alloc(0), 4), 0);
});

const QEMU_IO = ['write -P 0x11 0 64k', 'write -P 0x22 1M 3M', 'write -P 0x33 5000k 12k', 'write -P 0x44 6143k 2k', 'write -z 2M 512k'];

const QEMU_MADE = [
  { sub: 'monolithicSparse', size: '40M', extra: [] as string[] },
  { sub: 'monolithicSparse', size: '12345k', extra: ['zeroed_grain=on'] },
  { sub: 'monolithicFlat', size: '20M', extra: [] },
  { sub: 'twoGbMaxExtentSparse', size: '5G', extra: [] },
  { sub: 'twoGbMaxExtentFlat', size: '5G', extra: [] },
  { sub: 'streamOptimized', size: '20M', extra: [] },
];

for (const q of QEMU_MADE) {
  test(`reads a qemu-img ${q.sub} ${q.size} ${q.extra.join(',')} bit-exactly`, async (t) => {
    const dir = await tempDir(t);
    const file = join(dir, 'q.vmdk');
    await qemuImg('create', '-f', 'vmdk', '-o', ['subformat=' + q.sub, ...q.extra].join(','), file, q.size);
    const cmds = q.size === '5G' ? [...QEMU_IO, 'write -P 0x55 2047M 2M', 'write -P 0x66 4100M 1M'] : QEMU_IO;
    if (q.sub !== 'streamOptimized') await qemuIo(file, 'vmdk', ...cmds);
    else await qemuIo(file, 'vmdk', 'write -P 0x11 0 64k', 'write -P 0x22 1M 3M', 'write -P 0x33 5056k 64k');
    const img = await openImage(file);
    try {
      assert.equal(img.format, 'vmdk');
      const info = await qemuInfo(file);
      assert.equal(img.virtualSize, info['virtual-size']);
      assert.equal(img.formatInfo()['create-type'], q.sub);
      assert.equal(img.formatInfo().cid, info['format-specific'].data.cid);
      if (q.size === '5G') {
        // sparse data over a large disk: compare the written windows and the map instead of 5 GiB
        const ext = await img.blockStatus(0, img.virtualSize);
        assert.equal(ext.reduce((n, e) => n + e.length, 0), img.virtualSize);
        const b = Buffer.alloc(4 * MiB);
        await img.read(b, 2046 * MiB);
        assert.ok(b.subarray(0, MiB).every((x) => x === 0));
        assert.ok(b.subarray(MiB, 3 * MiB).every((x) => x === 0x55));
        await img.read(b, 4099 * MiB);
        assert.ok(b.subarray(MiB, 2 * MiB).every((x) => x === 0x66));
        await img.read(b, 0);
        assert.ok(b.subarray(0, 65536).every((x) => x === 0x11) && b.subarray(2 * MiB, 2 * MiB + 512 * 1024).every((x) => x === 0));
      } else {
        assert.equal(await imageDigest(img), await qemuDigest(file, 'vmdk', dir));
        const all = await readAll(img);
        const b = Buffer.alloc(3 * MiB + 77);
        await img.read(b, MiB - 1000);
        assert.ok(b.equals(all.subarray(MiB - 1000, 4 * MiB - 1000 + 77)));
      }
      const chk = await img.check!();
      assert.equal(chk.corruptions, 0, chk.messages.join('; '));
    } finally {
      await img.close();
    }
  });
}

test('reads a compressed streamOptimized made by qemu-img convert, and a qemu delta chain', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src.raw');
  const data = Buffer.alloc(9 * MiB);
  patternBytes(3 * MiB, 3).copy(data, MiB);
  data.fill(0x7e, 6 * MiB, 6 * MiB + 100_000);
  await writeFile(src, data);
  const so = join(dir, 'so.vmdk');
  await qemuImg('convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', src, so);
  const img = await openImage(so);
  assert.ok((await readAll(img)).equals(data));
  assert.ok((await img.blockStatus(MiB, 64 * 1024))[0]!.compressed);
  await img.close();

  const parent = join(dir, 'parent.vmdk');
  const child = join(dir, 'child.vmdk');
  await qemuImg('create', '-f', 'vmdk', parent, '16M');
  await qemuIo(parent, 'vmdk', 'write -P 0xaa 0 4M');
  await qemuImg('create', '-f', 'vmdk', '-b', 'parent.vmdk', '-F', 'vmdk', child);
  await qemuIo(child, 'vmdk', 'write -P 0xbb 1M 1M', 'write -P 0xcc 3M 100k');
  const c = await openImage(child);
  assert.equal(c.backing?.format, 'vmdk');
  assert.equal(c.formatInfo()['parent-filename-hint'], 'parent.vmdk');
  assert.equal(await imageDigest(c), await qemuDigest(child, 'vmdk', dir));
  const st = await c.blockStatus(0, 16 * MiB);
  assert.equal(st[0]!.kind, 'unallocated');
  await c.close();

  // the parent changes after the child was taken: its CID moves and the child is refused
  await qemuIo(parent, 'vmdk', 'write -P 0x01 8M 64k');
  await rejectsWith(openImage(child), 'ERR_CHAIN_MISMATCH', child, 'parentCID');
});

const OURS = ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'vmfs', 'streamOptimized'];

for (const sub of OURS) {
  test(`creates ${sub}: qemu checks it and reads the intended content`, async (t) => {
    const dir = await tempDir(t);
    const file = join(dir, 'out.vmdk');
    const size = 24 * MiB + 1536;
    const out = await createOutput(file, 'vmdk', size, { options: [`subformat=${sub}`, 'adapter_type=lsilogic'] });
    const img = out.image;
    const expected = Buffer.alloc(size);
    const put = async (b: Buffer, off: number) => {
      await img.write(b, off);
      b.copy(expected, off);
    };
    if (sub === 'streamOptimized') {
      // append-only: ascending writes, partial grains buffered
      await put(patternBytes(4 * MiB, 1), 0);
      await put(patternBytes(777, 2), 5 * MiB + 3);
      await put(patternBytes(3000, 3), 5 * MiB + 780);
      await img.writeZeroes!(6 * MiB, MiB);
      await put(patternBytes(3 * MiB, 4), 7 * MiB + 1234);
      await put(patternBytes(1000, 5), size - 1000);
      await rejectsWith(img.write(Buffer.alloc(512), 0), 'ERR_UNSUPPORTED', 'out.vmdk', 'append-only');
    } else {
      await put(patternBytes(4 * MiB, 1), 0);
      await put(patternBytes(777, 2), 5 * MiB + 3);
      await put(patternBytes(3000, 3), 5 * MiB + 600);
      await put(patternBytes(3 * MiB, 4), 7 * MiB - 1234);
      await put(patternBytes(1000, 5), size - 1000);
      await img.writeZeroes!(MiB + 17, 2 * MiB);
      expected.fill(0, MiB + 17, 3 * MiB + 17);
      await img.writeZeroes!(14 * MiB, 4 * MiB);
      assert.ok((await readAll(img)).equals(expected), 'reads its own writes');
    }
    await out.commit();
    const names = (await readdir(dir)).sort();
    assert.ok(!names.some((n) => n.includes('pv-partial')), names.join());
    const text = (await readFile(file)).subarray(0, 4096).toString('latin1');
    for (const n of names) if (n !== 'out.vmdk') assert.ok(text.includes(`"${n}"`), `descriptor names ${n}`);
    if (sub === 'vmfs') assert.match(text, /createType="vmfs"[\s\S]*RW 49155 VMFS "out-flat.vmdk"\n/);
    if (sub === 'monolithicFlat') assert.deepEqual(names, ['out-flat.vmdk', 'out.vmdk']);
    assert.match(text, /ddb.adapterType = "lsilogic"/);
    if (sub === 'streamOptimized') {
      const b = await readFile(file);
      assert.equal(b.readUInt32LE(4), 3, 'version 3');
      assert.equal(b.readBigUInt64LE(56), 0xffffffffffffffffn, 'GD at end');
      assert.equal(b.length % 512, 0);
    }
    if (sub !== 'vmfs') assertQemuCheck(file); // qemu 7.2 cannot open createType vmfs files with VMFS extents? it can: check below
    await assertQemuSees(file, expected, dir);
    const again = await openImage(file);
    assert.ok((await readAll(again)).equals(expected));
    const chk = await again.check!();
    assert.equal(chk.corruptions, 0, chk.messages.join('; '));
    await again.close();
  });
}

test('aborted multi-file outputs leave nothing; writes into qemu images stay readable; our deltas', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'ab.vmdk');
  const out = await createOutput(file, 'vmdk', 8 * MiB, { options: 'subformat=twoGbMaxExtentFlat' });
  await out.image.write(Buffer.alloc(4096, 1), 0);
  await out.abort();
  assert.deepEqual(await readdir(dir), []);

  const q = join(dir, 'q.vmdk');
  await qemuImg('create', '-f', 'vmdk', q, '16M');
  await qemuIo(q, 'vmdk', 'write -P 0x5a 0 3M');
  const cidBefore = (await qemuInfo(q))['format-specific'].data.cid;
  const img = await openImage(q, { writable: true });
  const expected = await readAll(img);
  const w = patternBytes(100_000, 7);
  await img.write(w, 2 * MiB - 50_000);
  w.copy(expected, 2 * MiB - 50_000);
  await img.writeZeroes!(100, 1000);
  expected.fill(0, 100, 1100);
  await img.close();
  assertQemuCheck(q);
  await assertQemuSees(q, expected, dir);
  assert.notEqual((await qemuInfo(q))['format-specific'].data.cid, cidBefore, 'CID changes on write');

  // a delta of ours over the qemu parent
  const child = join(dir, 'child.vmdk');
  const c = await createImage(child, 'vmdk', undefined, { backingFile: 'q.vmdk' });
  await c.write(Buffer.alloc(1000, 0xee), 5000);
  expected.fill(0xee, 5000, 6000);
  await c.close();
  assertQemuCheck(child);
  await assertQemuSees(child, expected, dir);
  const info = await qemuInfo(child);
  assert.equal(info['backing-filename'], 'q.vmdk');
});

test('convert into streamOptimized with compress and back', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 's.qcow2');
  await qemuImg('create', '-f', 'qcow2', src, '32M');
  await qemuIo(src, 'qcow2', 'write -P 0x31 0 5M', 'write -P 0x32 20M 3M', 'write -P 0x33 31M 1M');
  const a = await openImage(src);
  const r = await convert(a, join(dir, 'c.vmdk'), 'vmdk', { compress: true });
  await a.close();
  assert.equal(r.files.length, 1);
  assertQemuCheck(join(dir, 'c.vmdk'));
  const r2 = qemuImgStatus('compare', '-f', 'vmdk', '-F', 'qcow2', join(dir, 'c.vmdk'), src);
  assert.equal(r2.status, 0, r2.stdout + r2.stderr);
  const info = await qemuInfo(join(dir, 'c.vmdk'));
  assert.equal(info['format-specific'].data['create-type'], 'streamOptimized');
});

// ---- crafted ESXi deltas ----------------------------------------------------------------

function cowdImage(sectors: number, grains: Map<number, Buffer>): Buffer {
  // header (4 sectors), GD at sector 4 (1 entry), GT at sector 5 (4096 entries = 32 sectors), grains after
  const gdOff = 4;
  const gtOff = 5;
  let next = gtOff + 32;
  const parts: Buffer[] = [];
  const h = Buffer.alloc(2048);
  h.write('COWD', 0, 'latin1');
  h.writeUInt32LE(1, 4);
  h.writeUInt32LE(3, 8);
  h.writeUInt32LE(sectors, 12);
  h.writeUInt32LE(1, 16);
  h.writeUInt32LE(gdOff, 20);
  h.writeUInt32LE(Math.ceil(sectors / 4096), 24);
  const gd = Buffer.alloc(512);
  gd.writeUInt32LE(gtOff, 0);
  const gt = Buffer.alloc(4096 * 4);
  for (const [sector, data] of grains) {
    gt.writeUInt32LE(next, sector * 4);
    parts.push(data);
    next++;
  }
  h.writeUInt32LE(next, 28);
  return Buffer.concat([h, gd, gt, ...parts]);
}

test('vmfsSparse (COWD) delta over a flat parent reads per spec', async (t) => {
  const dir = await tempDir(t);
  const base = Buffer.alloc(2 * MiB, 0x42);
  await writeFile(join(dir, 'base-flat.vmdk'), base);
  await writeFile(join(dir, 'base.vmdk'), `# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\ncreateType="vmfs"\n\nRW 4096 VMFS "base-flat.vmdk"\n\nddb.adapterType = "lsilogic"\n`);
  const grains = new Map([[3, Buffer.alloc(512, 0x99)], [4000, patternBytes(512, 9)]]);
  await writeFile(join(dir, 'snap-delta.vmdk'), cowdImage(4096, grains));
  await writeFile(join(dir, 'snap.vmdk'), `# Disk DescriptorFile\nversion=1\nCID=55555555\nparentCID=1234abcd\ncreateType="vmfsSparse"\nparentFileNameHint="/vmfs/volumes/ds1/vm/base.vmdk"\n# Extent description\nRW 4096 VMFSSPARSE "snap-delta.vmdk"\n`);
  const img = await openImage(join(dir, 'snap.vmdk'));
  const expected = Buffer.from(base);
  grains.get(3)!.copy(expected, 3 * 512);
  grains.get(4000)!.copy(expected, 4000 * 512);
  assert.ok((await readAll(img)).equals(expected));
  assert.equal(img.formatInfo()['create-type'], 'vmfsSparse');
  await img.close();
});

test('seSparse delta reads per its header; dirty journals are refused', async (t) => {
  const dir = await tempDir(t);
  const sectors = 8192; // 4 MiB
  const S = 512;
  // layout (sectors): const header 0, volatile 1, GD 2 (1 sector), GTs 3 (64 sectors per table), grains 67
  const h = Buffer.alloc(S);
  const set = (i: number, v: bigint) => h.writeBigUInt64LE(v, i * 8);
  set(0, 0xcafebaben);
  set(1, 0x200000001n);
  set(2, BigInt(sectors));
  set(3, 8n);
  set(4, 64n);
  set(10, 1n);
  set(11, 1n);
  set(16, 2n);
  set(17, 1n);
  set(18, 3n);
  set(19, 64n);
  set(24, 67n);
  set(25, 16n);
  const vol = Buffer.alloc(S);
  vol.writeBigUInt64LE(0xcafecafen, 0);
  const gd = Buffer.alloc(S);
  gd.writeBigUInt64LE(0x1000000000000000n, 0);
  const gt = Buffer.alloc(64 * S);
  gt.writeBigUInt64LE(0x3000000000000000n, 0); // grain 0 -> cluster 0
  gt.writeBigUInt64LE(0x3001000000000000n, 5 * 8); // grain 5 -> cluster 1 (bits 48..59)
  gt.writeBigUInt64LE(0x2000000000000000n, 7 * 8); // grain 7 -> zero
  const g0 = Buffer.alloc(4096, 0x10);
  const g1 = patternBytes(4096, 11);
  await writeFile(join(dir, 'se-sesparse.vmdk'), Buffer.concat([h, vol, gd, gt, g0, g1]));
  await writeFile(join(dir, 'base-flat.vmdk'), Buffer.alloc(4 * MiB, 0x42));
  await writeFile(join(dir, 'base.vmdk'), `version=1\nCID=abcdef01\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 8192 FLAT "base-flat.vmdk" 0\n`);
  await writeFile(join(dir, 'se.vmdk'), `# Disk DescriptorFile\nversion=1\nCID=11111111\nparentCID=abcdef01\ncreateType="seSparse"\nparentFileNameHint="base.vmdk"\nRW 8192 SESPARSE "se-sesparse.vmdk"\n`);
  const img = await openImage(join(dir, 'se.vmdk'));
  const expected = Buffer.alloc(4 * MiB, 0x42);
  g0.copy(expected, 0);
  g1.copy(expected, 5 * 4096);
  expected.fill(0, 7 * 4096, 8 * 4096);
  assert.ok((await readAll(img)).equals(expected));
  await img.close();
  assert.equal(await qemuDigest(join(dir, 'se.vmdk'), 'vmdk', dir), await imageDigestOf(join(dir, 'se.vmdk')));
  vol.writeBigUInt64LE(1n, 24);
  await writeFile(join(dir, 'se-sesparse.vmdk'), Buffer.concat([h, vol, gd, gt, g0, g1]));
  await rejectsWith(openImage(join(dir, 'se.vmdk')), 'ERR_UNSUPPORTED', 'se-sesparse.vmdk', 'journal');
});

async function imageDigestOf(file: string): Promise<string> {
  const img = await openImage(file);
  try {
    return await imageDigest(img);
  } finally {
    await img.close();
  }
}

// ---- hostile ---------------------------------------------------------------------------

test('hostile descriptors: paths outside the folder, bad lines, sizes, huge text', async (t) => {
  const dir = await tempDir(t);
  const inner = join(dir, 'vm');
  await mkdir(inner);
  await writeFile(join(dir, 'x-flat.vmdk'), Buffer.alloc(MiB, 3));
  await writeFile(join(inner, 'ok-flat.vmdk'), Buffer.alloc(MiB, 4));
  const d = (ext: string, type = 'monolithicFlat') => `# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="${type}"\n${ext}\n`;
  const outside = join(inner, 'out.vmdk');
  await writeFile(outside, d('RW 2048 FLAT "../x-flat.vmdk" 0'));
  await rejectsWith(openImage(outside), 'ERR_PATH_OUTSIDE', 'out.vmdk');
  const ok = await openImage(outside, { allowOutsidePaths: true });
  assert.equal((await readAll(ok))[5], 3);
  await ok.close();
  const abs = join(inner, 'abs.vmdk');
  await writeFile(abs, d(`RW 2048 FLAT "${join(dir, 'x-flat.vmdk')}" 0`));
  await rejectsWith(openImage(abs), 'ERR_PATH_OUTSIDE', 'abs.vmdk');
  await symlink(join(dir, 'x-flat.vmdk'), join(inner, 'link-flat.vmdk'));
  const link = join(inner, 'link.vmdk');
  await writeFile(link, d('RW 2048 FLAT "link-flat.vmdk" 0'));
  await rejectsWith(openImage(link), 'ERR_PATH_OUTSIDE', 'link.vmdk');

  const bad = join(inner, 'bad.vmdk');
  await writeFile(bad, d('RW 2048 FLAT ok-flat.vmdk 0'));
  await rejectsWith(openImage(bad), 'ERR_CORRUPT', 'bad.vmdk', 'line 6');
  await writeFile(bad, d('RW 2048 FLAT "ok-flat.vmdk" 0\nthis is not a descriptor line'));
  await rejectsWith(openImage(bad), 'ERR_CORRUPT', 'bad.vmdk', 'line 7');
  await writeFile(bad, d('RW 2048 FLAT "ok-flat.vmdk"'));
  await rejectsWith(openImage(bad), 'ERR_CORRUPT', 'bad.vmdk', 'offset');
  await writeFile(bad, d('RW 2048 VMFSRDM "ok-flat.vmdk"'));
  await rejectsWith(openImage(bad), 'ERR_UNSUPPORTED', 'bad.vmdk', 'VMFSRDM');
  await writeFile(bad, '# Disk DescriptorFile\n' + 'ddb.x = "y"\n'.repeat(100_000));
  await rejectsWith(openImage(bad, { format: 'vmdk' }), 'ERR_CORRUPT', 'bad.vmdk', 'limit');

  // a twoGb sparse extent whose header disagrees with its line
  const sp = join(inner, 'sp.vmdk');
  const o = await createOutput(sp, 'vmdk', 4 * MiB, { options: 'subformat=twoGbMaxExtentSparse' });
  await o.commit();
  const text = (await readFile(sp, 'utf8')).replace('RW 8192 SPARSE', 'RW 4096 SPARSE');
  await writeFile(sp, text);
  await rejectsWith(openImage(sp), 'ERR_CORRUPT', 'sp.vmdk', 'header says 8192');
});

test('hostile sparse extents: bad magic, GD past EOF, GTE past EOF, oversized grains, truncation', async (t) => {
  const dir = await tempDir(t);
  const make = async (name: string, sub = 'monolithicSparse'): Promise<string> => {
    const f = join(dir, name);
    await qemuImg('create', '-f', 'vmdk', '-o', `subformat=${sub}`, f, '8M');
    await qemuIo(f, 'vmdk', 'write -P 0x61 0 128k');
    return f;
  };
  const patchFile = async (f: string, fn: (b: Buffer) => void) => {
    const b = await readFile(f);
    fn(b);
    await writeFile(f, b);
  };
  const gdSector = async (f: string) => Number((await readFile(f)).readBigUInt64LE(56));

  const a = await make('magic.vmdk');
  await patchFile(a, (b) => b.write('KDMX', 0, 'latin1'));
  await rejectsWith(openImage(a, { format: 'vmdk' }), 'ERR_CORRUPT', 'magic.vmdk');

  const g = await make('gd.vmdk');
  await patchFile(g, (b) => b.writeBigUInt64LE(1n << 30n, 56));
  await rejectsWith(openImage(g), 'ERR_CORRUPT', 'gd.vmdk', 'grain directory');

  const e = await make('gte.vmdk');
  const gds = await gdSector(e);
  await patchFile(e, (b) => {
    const gt = b.readUInt32LE(gds * 512);
    b.writeUInt32LE(0x7fffff00, gt * 512); // grain 0 far past the end
  });
  const img = await openImage(e);
  await rejectsWith(img.read(Buffer.alloc(512), 0), 'ERR_CORRUPT', 'gte.vmdk', 'grain 0');
  const chk = await img.check!();
  assert.ok(chk.corruptions >= 1, chk.messages.join());
  await img.close();

  const tr = await make('trunc.vmdk');
  await truncate(tr, 8192);
  await rejectsWith(openImage(tr), 'ERR_TRUNCATED', 'trunc.vmdk');

  // a compressed grain that inflates past the grain size
  const so = join(dir, 'so.vmdk');
  const o = await createOutput(so, 'vmdk', 4 * MiB, { options: 'subformat=streamOptimized' });
  await o.image.write(patternBytes(65536, 1), 0);
  await o.commit();
  await patchFile(so, (b) => {
    const at = 128 * 512; // first grain marker after the 64 KiB overhead
    const bomb = deflateSync(Buffer.alloc(200_000, 1));
    b.writeUInt32LE(bomb.length, at + 8);
    bomb.copy(b, at + 12);
  });
  const s = await openImage(so);
  await rejectsWith(s.read(Buffer.alloc(512), 0), 'ERR_CORRUPT', 'so.vmdk', 'inflates past');
  await s.close();
  // a stream cut short loses its footer
  await truncate(so, (await readFile(so)).length - 512);
  await rejectsWith(openImage(so), 'ERR_CORRUPT', 'so.vmdk', 'footer');
});
