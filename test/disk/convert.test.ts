/**
 * The round-trip matrix, with qemu-img as the oracle: every source qemu-img writes (filled
 * by qemu-io) is converted by Polyvisor into every output; qemu-img must find the output
 * consistent (check) and identical to the source (compare); converting back must give the
 * source's content again.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openImage } from '../../src/disk/chain.js';
import { convert } from '../../src/disk/convert.js';
import { compareImages } from '../../src/disk/compare.js';
import { isPolyvisorError } from '../../src/errors.js';
import type { BlockImage } from '../../src/disk/image.js';
import { imageDigest, qemuDigest, qemuImg, qemuImgStatus, qemuIo, tempDir, patternBytes } from '../helpers.js';

const SIZE = 24 << 20;

/**
 * Sources as qemu-img makes them; `qfmt` is qemu's format name. Formats qemu-io cannot write
 * into (streamOptimized VMDK is append-only) are made by qemu-img convert from a patterned raw.
 */
const SOURCES = [
  { name: 'raw', qfmt: 'raw', opts: [] as string[] },
  { name: 'qcow2-v3', qfmt: 'qcow2', opts: ['-o', 'compat=1.1'] },
  { name: 'qcow2-v2-4k', qfmt: 'qcow2', opts: ['-o', 'compat=0.10,cluster_size=4k'] },
  { name: 'vpc-dynamic', qfmt: 'vpc', opts: ['-o', 'subformat=dynamic,force_size=on'] },
  { name: 'vpc-fixed', qfmt: 'vpc', opts: ['-o', 'subformat=fixed,force_size=on'] },
  { name: 'vhdx-dynamic-1m', qfmt: 'vhdx', opts: ['-o', 'subformat=dynamic,block_size=1M'] },
  { name: 'vhdx-fixed', qfmt: 'vhdx', opts: ['-o', 'subformat=fixed'] },
  { name: 'vmdk-monolithicSparse', qfmt: 'vmdk', opts: ['-o', 'subformat=monolithicSparse'] },
  { name: 'vmdk-monolithicFlat', qfmt: 'vmdk', opts: ['-o', 'subformat=monolithicFlat'] },
  { name: 'vmdk-twoGbMaxExtentSparse', qfmt: 'vmdk', opts: ['-o', 'subformat=twoGbMaxExtentSparse'] },
  { name: 'vmdk-streamOptimized', qfmt: 'vmdk', opts: ['-o', 'subformat=streamOptimized'], viaConvert: true },
  { name: 'vdi-dynamic', qfmt: 'vdi', opts: [] },
  { name: 'vdi-static', qfmt: 'vdi', opts: ['-o', 'static=on'] },
];

/** Outputs Polyvisor writes; `qfmt` is how qemu-img reads them back, `check` whether qemu-img can check it. */
const OUTPUTS = [
  { name: 'raw', format: 'raw', qfmt: 'raw', options: [] as string[], compress: false, check: false },
  { name: 'qcow2', format: 'qcow2', qfmt: 'qcow2', options: [], compress: false, check: true },
  { name: 'qcow2-v2', format: 'qcow2', qfmt: 'qcow2', options: ['compat=0.10'], compress: false, check: true },
  { name: 'qcow2-compressed', format: 'qcow2', qfmt: 'qcow2', options: [], compress: true, check: true },
  { name: 'vhd-dynamic', format: 'vhd', qfmt: 'vpc', options: ['subformat=dynamic'], compress: false, check: false },
  { name: 'vhd-fixed', format: 'vhd', qfmt: 'vpc', options: ['subformat=fixed'], compress: false, check: false },
  { name: 'vhdx-dynamic', format: 'vhdx', qfmt: 'vhdx', options: ['subformat=dynamic', 'block_size=1M'], compress: false, check: true },
  { name: 'vhdx-fixed', format: 'vhdx', qfmt: 'vhdx', options: ['subformat=fixed'], compress: false, check: true },
  { name: 'vmdk-monolithicSparse', format: 'vmdk', qfmt: 'vmdk', options: ['subformat=monolithicSparse'], compress: false, check: true },
  { name: 'vmdk-streamOptimized', format: 'vmdk', qfmt: 'vmdk', options: ['subformat=streamOptimized'], compress: false, check: true },
  { name: 'vmdk-monolithicFlat', format: 'vmdk', qfmt: 'vmdk', options: ['subformat=monolithicFlat'], compress: false, check: true },
  { name: 'vmdk-twoGbMaxExtentSparse', format: 'vmdk', qfmt: 'vmdk', options: ['subformat=twoGbMaxExtentSparse'], compress: false, check: true },
  { name: 'vmdk-twoGbMaxExtentFlat', format: 'vmdk', qfmt: 'vmdk', options: ['subformat=twoGbMaxExtentFlat'], compress: false, check: true },
  { name: 'vmdk-vmfs', format: 'vmdk', qfmt: 'vmdk', options: ['subformat=vmfs'], compress: false, check: true },
  { name: 'vdi-dynamic', format: 'vdi', qfmt: 'vdi', options: [], compress: false, check: true },
  { name: 'vdi-static', format: 'vdi', qfmt: 'vdi', options: ['static=on'], compress: false, check: true },
];

/** A pattern with aligned and unaligned runs, an explicit zero range over data, and the last MiB. */
const PATTERN = ['write -P 0x11 0 64k', 'write -P 0x22 1M 3M', 'write -P 0x33 5000k 12k', 'write -z 2M 512k', 'write -P 0x44 23M 1M'];

async function makeSource(dir: string, s: (typeof SOURCES)[number]): Promise<string> {
  const path = join(dir, `src-${s.name}.img`);
  if ('viaConvert' in s) {
    const raw = join(dir, `pattern-${s.name}.raw`);
    await qemuImg('create', '-q', '-f', 'raw', raw, String(SIZE));
    await qemuIo(raw, 'raw', ...PATTERN);
    await qemuImg('convert', '-q', '-f', 'raw', '-O', s.qfmt, ...s.opts, raw, path);
    return path;
  }
  await qemuImg('create', '-q', '-f', s.qfmt, ...s.opts, path, String(SIZE));
  await qemuIo(path, s.qfmt, ...PATTERN);
  return path;
}

for (const s of SOURCES) {
  test(`convert matrix: ${s.name} source to every output`, async (t) => {
    const dir = await tempDir(t);
    const srcPath = await makeSource(dir, s);
    const src = await openImage(srcPath);
    t.after(() => src.close());
    assert.equal(src.virtualSize, SIZE);
    assert.equal(await imageDigest(src), await qemuDigest(srcPath, s.qfmt, dir), 'Polyvisor reads the qemu-img source exactly');

    for (const o of OUTPUTS) {
      const dst = join(dir, `out-${o.name}.img`);
      const r = await convert(src, dst, o.format, { options: o.options, compress: o.compress });
      assert.equal(r.virtualSize, SIZE, `${o.name}: virtual size`);
      if (o.check) {
        const chk = qemuImgStatus('check', '-f', o.qfmt, dst);
        assert.equal(chk.status, 0, `${o.name}: qemu-img check: ${chk.stdout}${chk.stderr}`);
      }
      const cmp = qemuImgStatus('compare', '-f', s.qfmt, '-F', o.qfmt, srcPath, dst);
      assert.equal(cmp.status, 0, `${o.name}: qemu-img compare: ${cmp.stdout}${cmp.stderr}`);

      // and back again, through Polyvisor only
      const out = await openImage(dst, { format: o.format });
      const back = join(dir, `back-${o.name}.raw`);
      await convert(out, back, 'raw');
      await out.close();
      const b = qemuImgStatus('compare', '-f', s.qfmt, '-F', 'raw', srcPath, back);
      assert.equal(b.status, 0, `${o.name} -> raw: ${b.stdout}${b.stderr}`);
    }
    // nothing but the outputs is left in the folder: no temporary files
    const left = (await readdir(dir)).filter((f) => f.includes('pv-partial'));
    assert.deepEqual(left, []);
  });
}

test('convert: sparse outputs stay sparse (zeroes are not written)', async (t) => {
  const dir = await tempDir(t);
  const srcPath = join(dir, 'src.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', srcPath, '1G');
  await qemuIo(srcPath, 'qcow2', 'write -P 0x5a 100M 1M', 'write -P 0 300M 4M');
  const src = await openImage(srcPath);
  t.after(() => src.close());
  for (const [fmt, opts] of [['raw', []], ['qcow2', []], ['vhd', ['subformat=dynamic']]] as const) {
    const dst = join(dir, `out.${fmt}`);
    const r = await convert(src, dst, fmt, { options: [...opts] });
    assert.equal(r.bytesWritten, 1 << 20, `${fmt}: only the 1 MiB of non-zero data is written`);
    const st = await stat(dst);
    assert.ok(st.blocks * 512 < 8 << 20, `${fmt}: ${st.blocks * 512} bytes allocated for 1 MiB of data`);
  }
});

test('convert: an existing destination is kept unless forced', async (t) => {
  const dir = await tempDir(t);
  const srcPath = join(dir, 'src.raw');
  await writeFile(srcPath, patternBytes(1 << 20, 7));
  const dst = join(dir, 'dst.raw');
  await writeFile(dst, 'precious');
  const src = await openImage(srcPath);
  t.after(() => src.close());
  await assert.rejects(convert(src, dst, 'qcow2'), (e) => isPolyvisorError(e, 'ERR_EXISTS') && e.message.includes(dst));
  assert.equal((await stat(dst)).size, 8);
  await convert(src, dst, 'qcow2', { force: true });
  const out = await openImage(dst);
  t.after(() => out.close());
  assert.equal(out.format, 'qcow2');
  assert.equal((await compareImages(src, out)).identical, true);
});

test('convert: a cancelled run leaves neither a destination nor a temporary file', async (t) => {
  const dir = await tempDir(t);
  const srcPath = join(dir, 'src.raw');
  await writeFile(srcPath, patternBytes(16 << 20, 3));
  const src = await openImage(srcPath);
  t.after(() => src.close());
  const ac = new AbortController();
  const dst = join(dir, 'dst.qcow2');
  await assert.rejects(
    convert(src, dst, 'qcow2', { signal: ac.signal, chunkSize: 1 << 20, onProgress: (d) => d >= 4 << 20 && ac.abort() }),
    (e) => isPolyvisorError(e, 'ERR_ABORTED'),
  );
  assert.deepEqual(await readdir(dir), ['src.raw']);
});

test('convert: a source that fails half-way leaves nothing behind', async (t) => {
  const dir = await tempDir(t);
  const srcPath = join(dir, 'src.raw');
  await writeFile(srcPath, patternBytes(8 << 20, 5));
  const src = await openImage(srcPath);
  t.after(() => src.close());
  // A reader that breaks after 3 MiB stands in for a disk that fails mid-copy.
  const failing: BlockImage = {
    format: src.format,
    path: src.path,
    virtualSize: src.virtualSize,
    readOnly: true,
    clusterSize: src.clusterSize,
    backing: null,
    backingRef: null,
    blockStatus: (o, l) => src.blockStatus(o, l),
    read: async (buf, off) => {
      if (off >= 3 << 20) throw new Error('simulated read failure');
      return src.read(buf, off);
    },
    write: (buf, off) => src.write(buf, off),
    flush: () => src.flush(),
    close: () => src.close(),
    formatInfo: () => ({}),
  };
  const dst = join(dir, 'dst.vhd');
  await assert.rejects(convert(failing, dst, 'vhd', { chunkSize: 1 << 20 }), /simulated read failure/);
  assert.deepEqual(await readdir(dir), ['src.raw']);
});

test('convert -S 0 writes every byte, zeroes included', async (t) => {
  const dir = await tempDir(t);
  const srcPath = join(dir, 'src.raw');
  const data = Buffer.alloc(2 << 20);
  data.fill(0x77, 0, 4096);
  await writeFile(srcPath, data);
  const src = await openImage(srcPath);
  t.after(() => src.close());
  const r = await convert(src, join(dir, 'dense.qcow2'), 'qcow2', { sparseSize: 0 });
  assert.equal(r.bytesWritten, 2 << 20);
  const r2 = await convert(src, join(dir, 'sparse.qcow2'), 'qcow2');
  assert.equal(r2.bytesWritten, 4096);
});
