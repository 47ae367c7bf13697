/** raw: sparse-aware allocation, reads and writes, range and mode errors. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { open, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createImage, openImage } from '../../src/disk/chain.js';
import { sparseQueriesAvailable } from '../../src/disk/sparse.js';
import { isPolyvisorError } from '../../src/errors.js';
import { patternBytes, qemuImg, tempDir } from '../helpers.js';

test('the lseek(SEEK_DATA/SEEK_HOLE) addon is built', () => {
  assert.equal(sparseQueriesAvailable(), true, 'build/Release/polyvisor_seek.node is missing: npm install builds it');
});

test('raw: holes are zero extents, data is data, as qemu-img map sees them', async (t) => {
  const dir = await tempDir(t);
  const f = join(dir, 'sparse.raw');
  const fh = await open(f, 'w');
  await fh.truncate(32 << 20);
  await fh.write(patternBytes(1 << 20, 1), 0, 1 << 20, 4 << 20);
  await fh.write(patternBytes(64 << 10, 2), 0, 64 << 10, 20 << 20);
  await fh.close();
  const img = await openImage(f);
  t.after(() => img.close());
  assert.equal(img.format, 'raw');
  const ext = await img.blockStatus(0, img.virtualSize);
  const data = ext.filter((e) => e.kind === 'data').map((e) => [e.offset, e.length]);
  const theirs = (JSON.parse(await qemuImg('map', '--output=json', '-f', 'raw', f)) as Array<{ start: number; length: number; data: boolean }>)
    .filter((e) => e.data)
    .map((e) => [e.start, e.length]);
  assert.deepEqual(data, theirs);
  let covered = 0;
  for (const e of ext) covered += e.length;
  assert.equal(covered, 32 << 20);
  // a window inside a hole and one across a data boundary
  assert.deepEqual(await img.blockStatus(1 << 20, 4096), [{ offset: 1 << 20, length: 4096, kind: 'zero' }]);
  const across = await img.blockStatus((4 << 20) - 4096, 8192);
  assert.deepEqual(across.map((e) => e.kind), ['zero', 'data']);
});

test('raw: writes land where asked; out-of-range and read-only writes are refused', async (t) => {
  const dir = await tempDir(t);
  const f = join(dir, 'a.raw');
  const img = await createImage(f, 'raw', 1 << 20);
  await img.write(Buffer.from('hello'), 1000);
  await assert.rejects(img.write(Buffer.alloc(10), (1 << 20) - 5), (e) => isPolyvisorError(e, 'ERR_RANGE'));
  await img.close();
  assert.equal((await stat(f)).size, 1 << 20);
  const ro = await openImage(f);
  t.after(() => ro.close());
  const b = Buffer.alloc(5);
  await ro.read(b, 1000);
  assert.equal(b.toString(), 'hello');
  await assert.rejects(ro.write(Buffer.alloc(1), 0), (e) => isPolyvisorError(e, 'ERR_READ_ONLY'));
  await assert.rejects(ro.read(Buffer.alloc(2), (1 << 20) - 1), (e) => isPolyvisorError(e, 'ERR_RANGE'));
});

test('raw: preallocation=full allocates every byte; the default is sparse', async (t) => {
  const dir = await tempDir(t);
  const full = await createImage(join(dir, 'full.raw'), 'raw', 4 << 20, { options: 'preallocation=full' });
  await full.close();
  const sparse = await createImage(join(dir, 'sparse.raw'), 'raw', 4 << 20);
  await sparse.close();
  assert.ok((await stat(join(dir, 'full.raw'))).blocks * 512 >= 4 << 20);
  assert.equal((await stat(join(dir, 'sparse.raw'))).blocks, 0);
});

test('probing: arbitrary bytes are raw; unknown format names are refused', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'x.bin'), patternBytes(8192, 4));
  const img = await openImage(join(dir, 'x.bin'));
  assert.equal(img.format, 'raw');
  await img.close();
  await assert.rejects(openImage(join(dir, 'x.bin'), { format: 'vmdq' }), (e) => isPolyvisorError(e, 'ERR_FORMAT_UNKNOWN'));
  await assert.rejects(createImage(join(dir, 'y'), 'raw', 1024, { options: 'nosuch=1' }), (e) => isPolyvisorError(e, 'ERR_INVALID_OPTION'));
});
