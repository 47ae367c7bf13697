/**
 * qcow2 against the oracle: qemu-img / qemu-io make images that Polyvisor must read bit
 * for bit, and every image Polyvisor writes must pass `qemu-img check` and compare equal
 * to the content it was meant to hold. Hostile images are made by patching header bytes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { deflateRawSync } from 'node:zlib';
import { createImage, openImage } from '../../src/disk/chain.js';
import { qcow2 } from '../../src/disk/formats/qcow2.js';
import type { BlockImage, Extent } from '../../src/disk/image.js';
import { isPolyvisorError, type ErrorCode } from '../../src/errors.js';
import { imageDigest, patternBytes, qemuDigest, qemuImg, qemuImgStatus, qemuInfo, qemuIo, tempDir } from '../helpers.js';

const KiB = 1024;
const MiB = 1024 * 1024;

function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

async function expectError(p: Promise<unknown>, code: ErrorCode, file: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(isPolyvisorError(e), `expected a PolyvisorError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.ok(e.message.includes(file), `message names the file: ${e.message}`);
    return true;
  });
}

/** Per-cluster kinds from qemu-img map for the top layer: data, zero or unallocated. */
async function qemuKinds(path: string, clusterSize: number, size: number): Promise<string[]> {
  const map = JSON.parse(await qemuImg('map', '--output=json', path)) as { start: number; length: number; depth: number; present: boolean; data: boolean }[];
  const kinds = new Array<string>(Math.ceil(size / clusterSize)).fill('?');
  for (const m of map) {
    const kind = m.depth > 0 || !m.present ? 'unallocated' : m.data ? 'data' : 'zero';
    for (let c = Math.floor(m.start / clusterSize); c <= Math.floor((m.start + m.length - 1) / clusterSize); c++) kinds[c] = kind;
  }
  return kinds;
}

async function ourKinds(img: BlockImage): Promise<string[]> {
  const ext = await img.blockStatus(0, img.virtualSize);
  const kinds = new Array<string>(Math.ceil(img.virtualSize / img.clusterSize)).fill('?');
  let pos = 0;
  for (const e of ext) {
    assert.equal(e.offset, pos, 'extents are contiguous');
    for (let c = Math.floor(e.offset / img.clusterSize); c <= Math.floor((e.offset + e.length - 1) / img.clusterSize); c++) kinds[c] = e.kind;
    pos += e.length;
  }
  assert.equal(pos, img.virtualSize, 'extents cover the disk');
  return kinds;
}

/** qemu-img check must exit 0 and report neither corruptions nor leaks. */
function assertQemuClean(path: string): void {
  const r = qemuImgStatus('check', '--output=json', path);
  assert.equal(r.status, 0, `qemu-img check ${path}: ${r.stdout}${r.stderr}`);
  const j = JSON.parse(r.stdout) as Record<string, number>;
  assert.ok(!j.corruptions && !j.leaks && !j['check-errors'], r.stdout);
}

/** Raw file with `content`, then qemu-img compare of the qcow2 against it. */
async function assertQemuContent(dir: string, path: string, content: Buffer): Promise<void> {
  const ref = join(dir, `expected-${Math.random().toString(36).slice(2)}.raw`);
  await writeFile(ref, content);
  const r = qemuImgStatus('compare', '-f', 'qcow2', '-F', 'raw', path, ref);
  assert.equal(r.status, 0, `qemu-img compare: ${r.stdout}${r.stderr}`);
}

// Header field patching --------------------------------------------------------------------

async function patch(path: string, offset: number, bytes: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(bytes, 0, bytes.length, offset);
  } finally {
    await fh.close();
  }
}
const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
};
const u64 = (v: number | bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(v));
  return b;
};

interface Layout {
  cs: number;
  l1: number;
  rt: number;
  refblock0: number;
  l2_0: number;
  data0: number;
}
/** Where the first L2 table, first data cluster and first refcount block live. */
async function layout(path: string): Promise<Layout> {
  const f = await readFile(path);
  const cs = 2 ** f.readUInt32BE(20);
  const l1 = Number(f.readBigUInt64BE(40));
  const rt = Number(f.readBigUInt64BE(48));
  const refblock0 = Number(f.readBigUInt64BE(rt));
  const l2_0 = Number(f.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
  const data0 = l2_0 ? Number(f.readBigUInt64BE(l2_0) & 0x00fffffffffffe00n) : 0;
  return { cs, l1, rt, refblock0, l2_0, data0 };
}

// ---- probe ----------------------------------------------------------------------------------

test('probe recognises qcow2 v2 and v3 headers only', async (t) => {
  const dir = await tempDir(t);
  for (const compat of ['0.10', '1.1']) {
    const p = join(dir, `p${compat}.qcow2`);
    await qemuImg('create', '-f', 'qcow2', '-o', `compat=${compat}`, p, '1M');
    const head = (await readFile(p)).subarray(0, 4096);
    assert.equal(qcow2.probe(head, Buffer.alloc(0), head.length), 100);
  }
  assert.equal(qcow2.probe(Buffer.from('QFI\xfb\0\0\0\x01', 'latin1'), Buffer.alloc(0), 8), 0, 'version 1 is not qcow2');
  assert.equal(qcow2.probe(Buffer.from('QFI'), Buffer.alloc(0), 3), 0);
  assert.equal(qcow2.probe(patternBytes(512, 3), Buffer.alloc(0), 512), 0);
});

// ---- reading what qemu wrote ---------------------------------------------------------------

test('reads qemu-made v2 and v3 images of every cluster size bit-exactly', async (t) => {
  const dir = await tempDir(t);
  const size = 16 * MiB;
  for (const compat of ['0.10', '1.1']) {
    for (const cs of [512, 4 * KiB, 64 * KiB, 2 * MiB]) {
      const p = join(dir, `q-${compat}-${cs}.qcow2`);
      await qemuImg('create', '-f', 'qcow2', '-o', `compat=${compat},cluster_size=${cs}`, p, String(size));
      await qemuIo(
        p,
        'qcow2',
        'write -P 0xaa 0 100k',
        'write -P 0xbb 1M 192k',
        'write -z 1028k 8k',
        'write -P 0xcc 4M 4M',
        'write -z 6M 2M',
        'discard 5M 64k',
        'write -P 0x11 3333 777',
        `write -P 0xdd ${size - 1024} 1024`,
      );
      const img = await openImage(p);
      try {
        assert.equal(img.format, 'qcow2');
        assert.equal(img.virtualSize, size);
        assert.equal(img.clusterSize, cs);
        assert.equal(await imageDigest(img), await qemuDigest(p, 'qcow2', dir), `${compat} ${cs}`);
        assert.deepEqual(await ourKinds(img), await qemuKinds(p, cs, size), `block status ${compat} ${cs}`);
        // unaligned reads straddling clusters and tables
        const a = Buffer.alloc(5000);
        await img.read(a, 1 * MiB - 1234);
        assert.ok(a.subarray(0, 1234).every((x) => x === 0) && a.subarray(1234).every((x) => x === 0xbb));
        const info = img.formatInfo();
        assert.equal(info.compat, compat);
        assert.equal(info['cluster-size'], cs);
        const ck = await img.check!();
        assert.equal(ck.corruptions, 0, ck.messages.join('\n'));
        assert.equal(ck.leaks, 0, ck.messages.join('\n'));
      } finally {
        await img.close();
      }
    }
  }
});

test('reads a qcow2 → qcow2 → raw backing chain, including a smaller backing file', async (t) => {
  const dir = await tempDir(t);
  const base = join(dir, 'base.raw');
  await writeFile(base, patternBytes(4 * MiB, 7));
  const mid = join(dir, 'mid.qcow2');
  await qemuImg('create', '-f', 'qcow2', '-F', 'raw', '-b', 'base.raw', mid, '8M');
  await qemuIo(mid, 'qcow2', 'write -P 0x21 64k 64k', 'write -P 0x22 3M 2M', 'write -z 512k 64k');
  const top = join(dir, 'top.qcow2');
  await qemuImg('create', '-f', 'qcow2', '-F', 'qcow2', '-b', 'mid.qcow2', '-o', 'cluster_size=4k', top, '12M');
  await qemuIo(top, 'qcow2', 'write -P 0x31 100k 10k', 'write -z 0 16k', 'write -P 0x32 10M 100k', 'write -z 3M 8k');
  const img = await openImage(top);
  try {
    assert.equal(img.backingRef?.name, 'mid.qcow2');
    assert.equal(img.backingRef?.format, 'qcow2');
    assert.equal(img.backing?.backingRef?.format, 'raw');
    assert.equal(await imageDigest(img), await qemuDigest(top, 'qcow2', dir));
    assert.deepEqual(await ourKinds(img), await qemuKinds(top, 4096, 12 * MiB));
    // a read past the end of both backing files reads zeroes
    const b = Buffer.alloc(8192, 0xff);
    await img.read(b, 9 * MiB);
    assert.ok(b.every((x) => x === 0));
  } finally {
    await img.close();
  }
  // without opening backing files, unallocated clusters read as zeroes
  const alone = await openImage(top, { noBacking: true });
  try {
    assert.equal(alone.backing, null);
    assert.equal(alone.backingRef?.name, 'mid.qcow2');
    const z = Buffer.alloc(4096, 0xff);
    await alone.read(z, 2 * MiB);
    assert.ok(z.every((x) => x === 0));
  } finally {
    await alone.close();
  }
});

test('reads clusters compressed by qemu-img convert -c', async (t) => {
  const dir = await tempDir(t);
  const content = Buffer.alloc(6 * MiB);
  patternBytes(1 * MiB, 11).copy(content, 0); // incompressible: stored plain
  for (let i = 1 * MiB; i < 3 * MiB; i++) content[i] = (i % 251) ^ (i >> 13); // compressible
  Buffer.from('hello qcow2 '.repeat(5000)).copy(content, 4 * MiB + 100);
  const src = join(dir, 'src.raw');
  await writeFile(src, content);
  for (const cs of ['512', '4k', '64k', '2M']) {
    const p = join(dir, `c-${cs}.qcow2`);
    await qemuImg('convert', '-c', '-O', 'qcow2', '-o', `cluster_size=${cs}`, src, p);
    const img = await openImage(p);
    try {
      assert.equal(await imageDigest(img, 3 * MiB + 17), sha256(content), cs);
      const ext = await img.blockStatus(0, img.virtualSize);
      assert.ok(ext.some((e: Extent) => e.kind === 'data' && e.compressed), 'compressed extents reported');
      const part = Buffer.alloc(1000);
      await img.read(part, 1 * MiB + 77777);
      assert.deepEqual(part, content.subarray(1 * MiB + 77777, 1 * MiB + 78777));
      const ck = await img.check!();
      assert.equal(ck.corruptions + ck.leaks, 0, ck.messages.join('\n'));
      const q = JSON.parse(qemuImgStatus('check', '--output=json', p).stdout) as Record<string, number>;
      assert.equal(ck.compressedClusters, q['compressed-clusters']);
      assert.equal(ck.allocatedClusters, q['allocated-clusters']);
    } finally {
      await img.close();
    }
  }
});

test('reads the active layer of an image with internal snapshots, refuses to write it', async (t) => {
  const dir = await tempDir(t);
  const p = join(dir, 'snap.qcow2');
  await qemuImg('create', '-f', 'qcow2', p, '4M');
  await qemuIo(p, 'qcow2', 'write -P 0x41 0 256k');
  await qemuImg('snapshot', '-c', 'one', p);
  await qemuIo(p, 'qcow2', 'write -P 0x42 64k 64k', 'write -P 0x43 1M 64k');
  await qemuImg('snapshot', '-c', 'two', p);
  const img = await openImage(p, { writable: true });
  try {
    assert.equal(img.formatInfo().snapshots, 2);
    assert.equal(await imageDigest(img), await qemuDigest(p, 'qcow2', dir));
    const ck = await img.check!();
    assert.equal(ck.corruptions + ck.leaks, 0, ck.messages.join('\n'));
    await expectError(img.write(Buffer.alloc(512), 0), 'ERR_UNSUPPORTED', p);
  } finally {
    await img.close();
  }
  assertQemuClean(p);
});

// ---- writing ----------------------------------------------------------------------------

/** Applies the same writes to a Polyvisor image and to an in-memory copy. */
class Mirror {
  constructor(
    readonly img: BlockImage,
    readonly content: Buffer,
  ) {}
  async write(data: Buffer, offset: number): Promise<void> {
    await this.img.write(data, offset);
    data.copy(this.content, offset);
  }
  async zero(offset: number, length: number): Promise<void> {
    await this.img.writeZeroes!(offset, length);
    this.content.fill(0, offset, offset + length);
  }
}

async function exercise(m: Mirror, seed: number): Promise<void> {
  const size = m.content.length;
  await m.write(patternBytes(1 * MiB, seed), 0);
  await m.write(patternBytes(3000, seed + 1), 70001); // unaligned, inside allocated clusters
  await m.write(patternBytes(200 * KiB, seed + 2), 2 * MiB + 333); // unaligned, new clusters
  await m.zero(64 * KiB, 128 * KiB);
  await m.zero(2 * MiB + 1000, 5000); // part of a cluster
  await m.write(Buffer.alloc(300 * KiB, 0x5a), 4 * MiB); // very compressible
  await m.img.flush();
  await m.write(patternBytes(100, seed + 3), 100);
  await m.write(patternBytes(5000, seed + 4), size - 5000); // last bytes of the disk
  await m.zero(3 * MiB, 1 * MiB); // never written: stays cheap
  await m.write(patternBytes(64 * KiB, seed + 5), 4 * MiB + 100 * KiB); // overwrites compressed clusters when compress=on
}

for (const opts of [
  '',
  'cluster_size=512',
  'cluster_size=4k,refcount_bits=1',
  'cluster_size=512,refcount_bits=64',
  'cluster_size=2M',
  'compat=0.10',
  'compat=v2,cluster_size=4k',
  'refcount_bits=8,lazy_refcounts=on',
  'compress=on',
  'compress=on,cluster_size=4k',
  'compress=on,cluster_size=512,refcount_bits=2',
  'compress=on,compat=0.10',
  'preallocation=metadata,cluster_size=16k',
]) {
  test(`Polyvisor-written image passes qemu-img check and compare (${opts || 'defaults'})`, async (t) => {
    const dir = await tempDir(t);
    const p = join(dir, 'w.qcow2');
    const size = 8 * MiB + 512;
    const img = await createImage(p, 'qcow2', size, { options: opts });
    const m = new Mirror(img, Buffer.alloc(size));
    await exercise(m, 100);
    await img.close();
    assertQemuClean(p);
    await assertQemuContent(dir, p, m.content);
    const info = await qemuInfo(p);
    assert.equal(info['virtual-size'], size);
    if (opts.includes('compress=on')) {
      const q = JSON.parse(qemuImgStatus('check', '--output=json', p).stdout) as Record<string, number>;
      assert.ok(q['compressed-clusters']! > 0, 'some clusters are stored compressed');
    }

    // reopen, read, write more, check again
    const again = await openImage(p, { writable: true });
    try {
      assert.equal(await imageDigest(again), sha256(m.content));
      assert.deepEqual(await ourKinds(again), await qemuKinds(p, again.clusterSize, size));
      const m2 = new Mirror(again, m.content);
      await m2.write(patternBytes(150 * KiB, 9), 5 * MiB + 4321);
      await m2.zero(0, 1 * MiB);
      await m2.write(patternBytes(10, 10), 7);
      const ck = await again.check!();
      assert.equal(ck.corruptions + ck.leaks, 0, ck.messages.join('\n'));
    } finally {
      await again.close();
    }
    assertQemuClean(p);
    await assertQemuContent(dir, p, m.content);
  });
}

test('compress=on packs compressed clusters byte-wise, sharing and spanning host clusters', async (t) => {
  const dir = await tempDir(t);
  for (const opts of ['compress=on,cluster_size=4k', 'compress=on', 'compress=on,cluster_size=512,refcount_bits=1']) {
    const p = join(dir, `pack-${opts.replace(/[=,]/g, '_')}.qcow2`);
    const size = 4 * MiB;
    const img = await createImage(p, 'qcow2', size, { options: opts });
    const cs = img.clusterSize;
    // each cluster: a random head of varying length, then zeroes: compressed sizes vary
    // from a few bytes to more than half a cluster, so the packing has to span clusters
    const content = Buffer.alloc(size);
    for (let c = 0; c < size / cs; c++) patternBytes(Math.floor((cs * ((c * 37) % 70)) / 100), c + 1).copy(content, c * cs);
    for (let pos = 0; pos < size; pos += 256 * KiB) await img.write(content.subarray(pos, pos + 256 * KiB), pos);
    await img.close();
    assertQemuClean(p);
    await assertQemuContent(dir, p, content);
    const q = JSON.parse(qemuImgStatus('check', '--output=json', p).stdout) as Record<string, number>;
    assert.ok(q['compressed-clusters']! > size / cs / 2, `${opts}: most clusters compressed`);
    // overwrite some compressed clusters in place (they become plain clusters)
    const again = await openImage(p, { writable: true });
    const m = new Mirror(again, content);
    await m.write(patternBytes(3 * cs + 100, 77), 5 * cs + 50);
    await m.zero(20 * cs, 2 * cs);
    await again.close();
    assertQemuClean(p);
    await assertQemuContent(dir, p, content);
  }
});

test('modifies qemu-made images in place: zero-allocated, compressed and v2 clusters', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src.raw');
  const raw = Buffer.alloc(4 * MiB);
  for (let i = 0; i < raw.length; i++) raw[i] = (i % 253) ^ (i >> 14);
  await writeFile(src, raw);
  const made: string[] = [];
  const c = join(dir, 'c.qcow2');
  await qemuImg('convert', '-c', '-O', 'qcow2', '-o', 'cluster_size=4k', src, c);
  made.push(c);
  for (const compat of ['1.1', '0.10']) {
    const p = join(dir, `z-${compat}.qcow2`);
    await qemuImg('create', '-f', 'qcow2', '-o', `compat=${compat}`, p, '4M');
    await qemuIo(p, 'qcow2', 'write -P 0x33 0 1M', 'write -z 128k 256k', 'write -P 0x44 2M 64k');
    made.push(p);
  }
  for (const p of made) {
    const content = Buffer.alloc(4 * MiB);
    const ro = await openImage(p);
    await ro.read(content, 0);
    await ro.close();
    const img = await openImage(p, { writable: true });
    const m = new Mirror(img, content);
    await m.write(patternBytes(5000, 1), 130 * KiB + 3); // into (zero-allocated) clusters
    await m.write(patternBytes(64 * KiB, 2), 192 * KiB); // whole zero-allocated cluster
    await m.zero(1 * MiB + 100, 300 * KiB);
    await m.write(patternBytes(100, 3), 3 * MiB + 5);
    await img.close();
    assertQemuClean(p);
    await assertQemuContent(dir, p, content);
  }
});

test('refcount table grows and relocates while writing (512-byte clusters, 64-bit refcounts)', async (t) => {
  const dir = await tempDir(t);
  const p = join(dir, 'grow.qcow2');
  const img = await createImage(p, 'qcow2', 24 * MiB, { options: 'cluster_size=512,refcount_bits=64' });
  const data = patternBytes(24 * MiB, 5);
  for (let pos = 0; pos < data.length; pos += 3 * MiB) {
    await img.write(data.subarray(pos, pos + 3 * MiB), pos);
    await img.flush();
  }
  await img.close();
  assertQemuClean(p);
  await assertQemuContent(dir, p, data);
  assert.ok((await layout(p)).rt > 512 * 4, 'the refcount table moved past the initial clusters');
});

test('new images with a backing file: COW from backing, zero flag, smaller backing, v2 and v3', async (t) => {
  const dir = await tempDir(t);
  const base = join(dir, 'base.raw');
  const baseData = patternBytes(3 * MiB, 21);
  await writeFile(base, baseData);
  for (const compat of ['1.1', '0.10']) {
    const p = join(dir, `over-${compat}.qcow2`);
    const size = 6 * MiB;
    const img = await createImage(p, 'qcow2', size, { backingFile: 'base.raw', backingFormat: 'raw', options: `compat=${compat},cluster_size=4k` });
    const content = Buffer.alloc(size);
    baseData.copy(content);
    const m = new Mirror(img, content);
    await m.write(patternBytes(100, 1), 5000); // partial cluster: rest comes from the backing file
    await m.write(patternBytes(10000, 2), 3 * MiB - 5000); // straddles the end of the backing file
    await m.zero(1 * MiB, 64 * KiB); // hides backing data
    await m.zero(2 * MiB + 100, 1000); // partial
    await m.write(patternBytes(8192, 3), 4 * MiB);
    assert.equal(img.backingRef?.name, 'base.raw');
    assert.equal(await imageDigest(img), sha256(content));
    await img.close();
    assertQemuClean(p);
    await assertQemuContent(dir, p, content);
    const info = await qemuInfo(p);
    assert.equal(info['backing-filename'], 'base.raw');
    assert.equal(info['backing-filename-format'], 'raw');
    const again = await openImage(p);
    try {
      assert.equal(again.backingRef?.format, 'raw');
      assert.equal(await imageDigest(again), sha256(content));
      assert.deepEqual(await ourKinds(again), await qemuKinds(p, 4096, size));
    } finally {
      await again.close();
    }
  }
});

test('an empty new image is clean, zero-sized ones too', async (t) => {
  const dir = await tempDir(t);
  for (const [name, size, opts] of [
    ['e1.qcow2', 1 * MiB, ''],
    ['e0.qcow2', 0, ''],
    ['e2.qcow2', 100 * MiB, 'cluster_size=512'],
    ['e3.qcow2', 1000, 'compat=0.10'],
  ] as const) {
    const p = join(dir, name);
    const img = await createImage(p, 'qcow2', size, { options: opts });
    await img.close();
    assertQemuClean(p);
    const info = await qemuInfo(p);
    assert.equal(info['virtual-size'], Math.ceil(size / 512) * 512);
  }
});

test('create options are validated', async (t) => {
  const dir = await tempDir(t);
  await expectError(createImage(join(dir, 'a.qcow2'), 'qcow2', MiB, { options: 'compression_type=zstd' }), 'ERR_UNSUPPORTED', 'a.qcow2');
  await assert.rejects(createImage(join(dir, 'b.qcow2'), 'qcow2', MiB, { options: 'cluster_size=1000' }), (e: unknown) => isPolyvisorError(e, 'ERR_INVALID_OPTION'));
  await assert.rejects(createImage(join(dir, 'c.qcow2'), 'qcow2', MiB, { options: 'refcount_bits=3' }), (e: unknown) => isPolyvisorError(e, 'ERR_INVALID_OPTION'));
  await assert.rejects(createImage(join(dir, 'd.qcow2'), 'qcow2', MiB, { options: 'compat=0.10,refcount_bits=8' }), (e: unknown) => isPolyvisorError(e, 'ERR_INVALID_OPTION'));
  await assert.rejects(createImage(join(dir, 'e.qcow2'), 'qcow2', MiB, { options: 'extended_l2=on' }), (e: unknown) => isPolyvisorError(e, 'ERR_UNSUPPORTED'));
});

test('writes to a read-only image and outside the disk are refused', async (t) => {
  const dir = await tempDir(t);
  const p = join(dir, 'ro.qcow2');
  await qemuImg('create', '-f', 'qcow2', p, '1M');
  const img = await openImage(p);
  try {
    await expectError(img.write(Buffer.alloc(512), 0), 'ERR_READ_ONLY', p);
    await expectError(img.read(Buffer.alloc(512), MiB - 256), 'ERR_RANGE', p);
  } finally {
    await img.close();
  }
});

// ---- unsupported features -----------------------------------------------------------------

test('unsupported features are refused with ERR_UNSUPPORTED naming the feature', async (t) => {
  const dir = await tempDir(t);
  const cases: [string, (p: string) => Promise<void>, RegExp][] = [
    ['extl2.qcow2', async (p) => void (await qemuImg('create', '-f', 'qcow2', '-o', 'extended_l2=on', p, '1M')), /extended L2/],
    ['datafile.qcow2', async (p) => void (await qemuImg('create', '-f', 'qcow2', '-o', `data_file=${p}.data`, p, '1M')), /external data file/],
    ['zstd.qcow2', async (p) => void (await qemuImg('create', '-f', 'qcow2', '-o', 'compression_type=zstd', p, '1M')), /zstd/],
    [
      'aes.qcow2',
      async (p) => {
        await qemuImg('create', '-f', 'qcow2', p, '1M');
        await patch(p, 32, u32(1));
      },
      /encrypt/,
    ],
    [
      'unknown.qcow2',
      async (p) => {
        await qemuImg('create', '-f', 'qcow2', p, '1M');
        await patch(p, 72, u64(1n << 10n));
      },
      /unknown incompatible feature/,
    ],
    [
      'v4.qcow2',
      async (p) => {
        await qemuImg('create', '-f', 'qcow2', p, '1M');
        await patch(p, 4, u32(4));
      },
      /version 4/,
    ],
  ];
  for (const [name, make, re] of cases) {
    const p = join(dir, name);
    await make(p);
    await assert.rejects(openImage(p, { format: 'qcow2' }), (e: unknown) => {
      assert.ok(isPolyvisorError(e, 'ERR_UNSUPPORTED'), `${name}: ${String(e)}`);
      assert.match(e.message, re);
      assert.ok(e.message.includes(p));
      return true;
    });
  }
});

test('dirty and corrupt images open read-only but not writable', async (t) => {
  const dir = await tempDir(t);
  for (const [bit, code] of [
    [0, 'ERR_UNSUPPORTED'],
    [1, 'ERR_CORRUPT'],
  ] as const) {
    const p = join(dir, `bit${bit}.qcow2`);
    await qemuImg('create', '-f', 'qcow2', p, '1M');
    await qemuIo(p, 'qcow2', 'write -P 0x7 0 64k');
    await patch(p, 72, u64(1 << bit));
    const img = await openImage(p);
    const b = Buffer.alloc(64 * KiB);
    await img.read(b, 0);
    assert.ok(b.every((x) => x === 7));
    assert.equal(img.formatInfo()[bit === 0 ? 'dirty' : 'corrupt'], true);
    await img.close();
    await expectError(openImage(p, { writable: true }), code, p);
  }
});

// ---- hostile images ------------------------------------------------------------------------

test('hostile headers and tables fail with the right code, naming the file', async (t) => {
  const dir = await tempDir(t);
  let n = 0;
  const base = async (opts = 'cluster_size=4k'): Promise<string> => {
    const p = join(dir, `h${n++}.qcow2`);
    await qemuImg('create', '-f', 'qcow2', '-o', opts, p, '4M');
    await qemuIo(p, 'qcow2', 'write -P 0x61 0 8k');
    return p;
  };

  // truncated header
  const trunc = join(dir, 'trunc.qcow2');
  await writeFile(trunc, (await readFile(await base())).subarray(0, 40));
  await expectError(openImage(trunc, { format: 'qcow2' }), 'ERR_TRUNCATED', trunc);

  // L1 table offset past EOF
  let p = await base();
  await patch(p, 40, u64(1 << 30));
  await expectError(openImage(p), 'ERR_TRUNCATED', p);

  // L1 table offset unaligned
  p = await base();
  await patch(p, 40, u64(4096 * 3 + 8));
  await expectError(openImage(p), 'ERR_CORRUPT', p);

  // refcount table past EOF
  p = await base();
  await patch(p, 48, u64(1 << 30));
  await expectError(openImage(p), 'ERR_TRUNCATED', p);

  // refcount table clusters beyond the file
  p = await base();
  await patch(p, 56, u32(0x100000));
  await expectError(openImage(p), 'ERR_CORRUPT', p);

  // overlapping L1 table and refcount table
  p = await base();
  const lay = await layout(p);
  await patch(p, 40, u64(lay.rt));
  await expectError(openImage(p), 'ERR_CORRUPT', p);

  // L1 too small for the virtual size
  p = await base();
  await patch(p, 24, u64(1n << 40n));
  await expectError(openImage(p), 'ERR_CORRUPT', p);

  // cluster_bits out of range
  p = await base();
  await patch(p, 20, u32(30));
  await expectError(openImage(p), 'ERR_UNSUPPORTED', p);
  p = await base();
  await patch(p, 20, u32(8));
  await expectError(openImage(p), 'ERR_CORRUPT', p);

  // refcount_order out of range, bad header_length
  p = await base();
  await patch(p, 96, u32(7));
  await expectError(openImage(p), 'ERR_CORRUPT', p);
  p = await base();
  await patch(p, 100, u32(101));
  await expectError(openImage(p), 'ERR_CORRUPT', p);

  // backing file name too long
  p = await base();
  await patch(p, 8, u64(512));
  await patch(p, 16, u32(5000));
  await expectError(openImage(p), 'ERR_CORRUPT', p);

  // header extension running past the header cluster
  p = await base();
  await patch(p, 112, Buffer.concat([u32(0x12345678), u32(100000)]));
  await expectError(openImage(p), 'ERR_CORRUPT', p);

  // L2 entry past EOF: opens, the read fails
  p = await base();
  let l = await layout(p);
  await patch(p, l.l2_0, u64(0x8000000000000000n | (1n << 40n)));
  let img = await openImage(p);
  await expectError(img.read(Buffer.alloc(4096), 0), 'ERR_CORRUPT', p);
  await img.close();

  // L2 entry pointing into the refcount table, and into the L1 table
  for (const target of ['rt', 'l1'] as const) {
    p = await base();
    l = await layout(p);
    await patch(p, l.l2_0, u64(0x8000000000000000n | BigInt(target === 'rt' ? l.rt : l.l1)));
    img = await openImage(p);
    const e = await img.read(Buffer.alloc(4096), 0).then(() => null, (x: unknown) => x);
    assert.ok(isPolyvisorError(e, 'ERR_CORRUPT') && e.message.includes(p), String(e));
    await img.close();
  }

  // L1 entry past EOF
  p = await base();
  l = await layout(p);
  await patch(p, l.l1, u64(0x8000000000000000n | (1n << 40n)));
  img = await openImage(p);
  await expectError(img.read(Buffer.alloc(512), 0), 'ERR_CORRUPT', p);
  await img.close();

  // compressed cluster that inflates past the cluster size, and one that is short
  for (const [label, len] of [
    ['long', 4096 + 3000],
    ['short', 1000],
  ] as const) {
    p = await base();
    l = await layout(p);
    const z = deflateRawSync(patternBytes(len, 3).fill(1, 0, len - 100));
    const at = (await readFile(p)).length; // append the stream at the end of the file
    await patch(p, at, z);
    const cb = 12;
    const x = 62n - BigInt(cb - 8);
    const sectors = BigInt(Math.floor((at + z.length - 1) / 512) - Math.floor(at / 512));
    await patch(p, l.l2_0, u64((1n << 62n) | (sectors << x) | BigInt(at)));
    img = await openImage(p);
    const e = await img.read(Buffer.alloc(4096), 0).then(() => null, (y: unknown) => y);
    assert.ok(isPolyvisorError(e, 'ERR_CORRUPT'), `${label}: ${String(e)}`);
    assert.match(e.message, /L2 entry 0/);
    assert.ok(e.message.includes(p));
    await img.close();
  }
});

// ---- check ---------------------------------------------------------------------------------

test('check() agrees with qemu-img check on clean, leaking and corrupt images', async (t) => {
  const dir = await tempDir(t);
  const make = async (name: string): Promise<string> => {
    const p = join(dir, name);
    await qemuImg('create', '-f', 'qcow2', p, '4M');
    await qemuIo(p, 'qcow2', 'write -P 0x61 0 128k');
    return p;
  };
  const run = async (p: string): Promise<{ ours: { corruptions: number; leaks: number }; qemu: Record<string, number> }> => {
    const img = await openImage(p);
    try {
      const ck = await img.check!();
      const q = JSON.parse(qemuImgStatus('check', '--output=json', p).stdout) as Record<string, number>;
      return { ours: { corruptions: ck.corruptions, leaks: ck.leaks }, qemu: q };
    } finally {
      await img.close();
    }
  };

  const clean = await make('clean.qcow2');
  const c = await run(clean);
  assert.deepEqual(c.ours, { corruptions: 0, leaks: 0 });

  // leak: an extra cluster at the end of the file with refcount 1 and no reference
  const leak = await make('leak.qcow2');
  let l = await layout(leak);
  const size = (await readFile(leak)).length;
  await patch(leak, size, Buffer.alloc(l.cs));
  await patch(leak, l.refblock0 + (size / l.cs) * 2, Buffer.from([0, 1]));
  const lk = await run(leak);
  assert.equal(lk.ours.leaks, 1);
  assert.equal(lk.ours.corruptions, 0);
  assert.equal(lk.qemu.leaks, 1);

  // corruption: a referenced data cluster with refcount 0
  const bad = await make('bad.qcow2');
  l = await layout(bad);
  await patch(bad, l.refblock0 + (l.data0 / l.cs) * 2, Buffer.from([0, 0]));
  const bd = await run(bad);
  assert.ok(bd.ours.corruptions > 0);
  assert.equal(bd.ours.corruptions, bd.qemu.corruptions);

  // OFLAG_COPIED missing on a data cluster with refcount 1
  const flag = await make('flag.qcow2');
  l = await layout(flag);
  await patch(flag, l.l2_0, u64(l.data0));
  const fl = await run(flag);
  assert.equal(fl.ours.corruptions, 1);
  assert.equal(fl.qemu.corruptions, 1);
});

test('blockStatus of a large sparse image is fast and merges runs', async (t) => {
  const dir = await tempDir(t);
  const p = join(dir, 'big.qcow2');
  await qemuImg('create', '-f', 'qcow2', p, '16G');
  await qemuIo(p, 'qcow2', 'write -P 1 0 1M', 'write -P 2 8G 4M', 'write -z 12G 1G');
  const img = await openImage(p);
  try {
    const t0 = Date.now();
    const ext = await img.blockStatus(0, img.virtualSize);
    assert.ok(Date.now() - t0 < 2000);
    assert.deepEqual(
      ext.map((e) => [e.offset, e.length, e.kind]),
      [
        [0, MiB, 'data'],
        [MiB, 8 * 1024 * MiB - MiB, 'unallocated'],
        [8 * 1024 * MiB, 4 * MiB, 'data'],
        [8 * 1024 * MiB + 4 * MiB, 4 * 1024 * MiB - 4 * MiB, 'unallocated'],
        [12 * 1024 * MiB, 1024 * MiB, 'zero'],
        [13 * 1024 * MiB, 3 * 1024 * MiB, 'unallocated'],
      ],
    );
    assert.equal(typeof ext[0]!.hostOffset, 'number');
  } finally {
    await img.close();
  }
});
