/**
 * ext2/3/4 reading against e2fsprogs: images made by mke2fs -d from a host folder must read back
 * byte for byte (types, modes, times, link targets, listings), in every layout mke2fs makes;
 * debugfs is the second oracle (stat, dump, extent trees).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openExt, probeExt } from '../../src/guest/ext4.js';
import { isPolyvisorError } from '../../src/errors.js';
import { patternBytes, rejectsWith, tempDir } from '../helpers.js';
import { GUEST_PASSWD, assertFsckClean, buildSource, compareTree, debugfs, debugfsCat, debugfsScript, mkfs, openVolume, tool, type MkfsOptions } from './ext4-fixtures.js';

const LAYOUTS: { name: string; o: Omit<MkfsOptions, 'src' | 'size'>; type: string }[] = [
  { name: 'ext4 (mke2fs defaults: 4K, 64bit, metadata_csum, flex_bg)', o: { type: 'ext4' }, type: 'ext4' },
  { name: 'ext4 1K blocks', o: { type: 'ext4', blockSize: 1024 }, type: 'ext4' },
  { name: 'ext4 2K blocks', o: { type: 'ext4', blockSize: 2048 }, type: 'ext4' },
  { name: 'ext4 64K blocks', o: { type: 'ext4', blockSize: 65536 }, type: 'ext4' },
  { name: 'ext4 without metadata_csum and 64bit (gdt_csum, 32-byte descriptors)', o: { type: 'ext4', features: '^metadata_csum,^64bit,uninit_bg' }, type: 'ext4' },
  { name: 'ext4 64bit with gdt_csum', o: { type: 'ext4', features: '^metadata_csum,uninit_bg' }, type: 'ext4' },
  { name: 'ext4 without any checksums', o: { type: 'ext4', features: '^metadata_csum' }, type: 'ext4' },
  { name: 'ext4 meta_bg', o: { type: 'ext4', blockSize: 1024, features: 'meta_bg,^resize_inode' }, type: 'ext4' },
  { name: 'ext4 without flex_bg', o: { type: 'ext4', features: '^flex_bg' }, type: 'ext4' },
  { name: 'ext4 128-byte inodes', o: { type: 'ext4', inodeSize: 128 }, type: 'ext4' },
  { name: 'ext4 inline_data', o: { type: 'ext4', features: 'inline_data' }, type: 'ext4' },
  { name: 'ext3 4K', o: { type: 'ext3' }, type: 'ext3' },
  { name: 'ext3 1K', o: { type: 'ext3', blockSize: 1024 }, type: 'ext3' },
  { name: 'ext2 4K', o: { type: 'ext2' }, type: 'ext2' },
  { name: 'ext2 1K', o: { type: 'ext2', blockSize: 1024 }, type: 'ext2' },
];

let source: Promise<string> | undefined;
/** One source tree for every layout (3000-entry folder and all), built once per run. */
function sharedSource(): Promise<string> {
  source ??= (async () => {
    const dir = await tempDir();
    await buildSource(join(dir, 'src'));
    return dir;
  })();
  return source;
}

test.after(async () => {
  if (source) await rm(await source, { recursive: true, force: true });
});

for (const layout of LAYOUTS) {
  test(`ext read: ${layout.name}: every file, link and listing matches the source tree`, async (t) => {
    const base = await sharedSource();
    const dir = await tempDir(t);
    const img = join(dir, 'fs.img');
    mkfs(img, { ...layout.o, size: layout.o.blockSize === 65536 ? '512M' : '64M', src: join(base, 'src'), label: 'guestroot', index: true });
    const { volume, image } = await openVolume(img, false);
    t.after(() => image.close());
    const head = await volume.read(0, 4096);
    assert.equal(probeExt(head), true);
    const fs = await openExt(volume);
    assert.equal(fs.type, layout.type);
    assert.equal(fs.label, 'guestroot');
    const uuid = tool('dumpe2fs', ['-h', img]).stdout.match(/Filesystem UUID:\s+(\S+)/)?.[1];
    assert.equal(fs.uuid, uuid);
    assert.equal(fs.readOnly, true, 'opened on a read-only volume');
    // mke2fs -d with inline_data drops the hole at the end of a sparse file (e2fsprogs 1.47.0):
    // there debugfs, not the host file, is the oracle
    const inline = layout.o.features === 'inline_data';
    const checked = await compareTree(fs, join(base, 'src'), inline ? ['/sparse.bin'] : []);
    assert.ok(checked > 3000);
    const dumped = join(dir, 'sparse.dump');
    debugfs(img, `dump /sparse.bin ${dumped}`);
    assert.ok((await fs.readFile('/sparse.bin')).equals(await readFile(dumped)));
    assert.match(debugfs(img, 'stat /big'), /Flags: 0x(8|)1000\b/, 'e2fsck -D gave the 3000-entry folder a hash index');
    // symlinks resolve inside the guest: absolute targets at its root, ".." stopping there
    for (const link of ['/fast-abs', '/fast-rel', '/climb', '/slow-abs', '/etc-link/passwd']) {
      assert.equal((await fs.readFile(link)).toString(), GUEST_PASSWD, link);
    }
    assert.notEqual(GUEST_PASSWD, await readFile('/etc/passwd', 'utf8'));
    assert.equal((await fs.stat('/etc-link')).type, 'directory');
    assert.equal((await fs.lstat('/etc-link')).type, 'symlink');
    assert.equal(await fs.exists('/dangling'), false);
    assert.equal(await fs.exists('/etc-link/fstab'), true);
    assert.equal(await fs.exists('/etc/fstab/child'), false);
    await rejectsWith(fs.readFile('/loop-a'), 'ERR_CORRUPT', img, 'too many levels of symbolic links');
    await rejectsWith(fs.stat('/self'), 'ERR_CORRUPT', img, 'too many levels of symbolic links');
    await rejectsWith(fs.readFile('/nope'), 'ERR_NOT_FOUND', img, '/nope');
    await rejectsWith(fs.readFile('/etc'), 'ERR_NOT_FOUND', img, 'is a directory');
    await rejectsWith(fs.writeFile('/x', Buffer.from('x')), 'ERR_READ_ONLY', img);
    assert.equal((await fs.readFile('/../../etc/./passwd')).toString(), GUEST_PASSWD);
    // debugfs agrees on what stat says
    const st = debugfs(img, 'stat /private');
    assert.match(st, new RegExp(`Mode:\\s+0600`));
    assert.equal((await fs.stat('/private')).mtime, 1234567890);
  });
}

test('ext read: a 3000-entry directory is hash-indexed (EXT4_INDEX_FL) and lists completely', async (t) => {
  const base = await sharedSource();
  const dir = await tempDir(t);
  const img = join(dir, 'fs.img');
  mkfs(img, { type: 'ext4', size: '64M', src: join(base, 'src'), index: true });
  assert.match(debugfs(img, 'stat /big'), /Flags: 0x81000/, 'debugfs shows an indexed, extent-mapped directory');
  const htree = debugfs(img, 'htree /big');
  assert.match(htree, /Number of entries \(count\): \d+/);
  const { volume, image } = await openVolume(img, false);
  t.after(() => image.close());
  const fs = await openExt(volume);
  const entries = await fs.readdir('/big');
  assert.equal(entries.length, 3000);
  assert.ok(entries.every((e) => e.type === 'file'));
  assert.equal((await fs.readFile(`/big/entry-2999-${'n'.repeat(2999 % 40)}`)).toString(), '2999\n');
});

test('ext read: a fragmented file with an extent tree of depth 2 reads as debugfs dumps it', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await tool('mkdir', ['-p', join(src, 'frag')]);
  for (let i = 0; i < 2000; i++) await writeFile(join(src, 'frag', `f${i}`), patternBytes(1024, i + 1));
  const img = join(dir, 'fs.img');
  mkfs(img, { type: 'ext4', blockSize: 1024, size: '16M', src });
  // free every other 1 KiB file, fill the rest of the space, then write a file into the holes
  const free = Number(tool('dumpe2fs', ['-h', img]).stdout.match(/Free blocks:\s+(\d+)/)![1]);
  await writeFile(join(dir, 'filler'), Buffer.alloc((free - 64) * 1024, 1));
  const rms = Array.from({ length: 1000 }, (_, i) => `rm /frag/f${i * 2}`);
  const big = patternBytes(900 * 1024, 99);
  await writeFile(join(dir, 'big'), big);
  debugfsScript(img, [`write ${join(dir, 'filler')} /filler`, ...rms, `write ${join(dir, 'big')} /big`]);
  const ex = debugfs(img, 'ex /big');
  assert.match(ex, /^\s*2\/\s*2/m, `debugfs shows a depth-2 extent tree:\n${ex.slice(0, 400)}`);
  const { volume, image } = await openVolume(img, false);
  t.after(() => image.close());
  const fs = await openExt(volume);
  const mine = await fs.readFile('/big');
  assert.ok(mine.equals(big));
  const dumped = join(dir, 'dumped');
  debugfs(img, `dump /big ${dumped}`);
  assert.ok(mine.equals(await readFile(dumped)));
  assert.ok((await fs.readFile('/frag/f1')).equals(patternBytes(1024, 2)));
});

test('ext read: uninitialized extents (debugfs fallocate) read as zeroes; data around them stays', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await tool('mkdir', ['-p', src]);
  await writeFile(join(src, 'f'), patternBytes(8192, 3));
  const img = join(dir, 'fs.img');
  mkfs(img, { type: 'ext4', size: '16M', src });
  debugfsScript(img, ['fallocate /f 2 9', 'sif /f size 40960']);
  assert.match(debugfs(img, 'ex /f'), /Uninit/);
  const { volume, image } = await openVolume(img, false);
  t.after(() => image.close());
  const fs = await openExt(volume);
  const b = await fs.readFile('/f');
  assert.equal(b.length, 40960);
  assert.ok(b.subarray(0, 8192).equals(patternBytes(8192, 3)));
  assert.ok(b.subarray(8192).every((x) => x === 0));
});

test('ext read: probeExt tells ext superblocks from other bytes', () => {
  assert.equal(probeExt(Buffer.alloc(4096)), false);
  assert.equal(probeExt(Buffer.alloc(100)), false);
  const b = Buffer.alloc(2048);
  b.writeUInt16LE(0xef53, 1024 + 0x38);
  assert.equal(probeExt(b), true);
  b.writeUInt32LE(9, 1024 + 0x18);
  assert.equal(probeExt(b), false, 'a 512 KiB block size does not exist');
});

test('ext read: ERR_NOT_FOUND for paths through files, missing parents and dangling links', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await tool('mkdir', ['-p', join(src, 'a')]);
  await writeFile(join(src, 'a/file'), 'x');
  const img = join(dir, 'fs.img');
  mkfs(img, { type: 'ext4', size: '8M', src });
  const { volume, image } = await openVolume(img, false);
  t.after(() => image.close());
  const fs = await openExt(volume);
  for (const p of ['/a/file/x', '/b/c', '/a/missing']) {
    await assert.rejects(fs.stat(p), (e) => isPolyvisorError(e, 'ERR_NOT_FOUND') && e.message.includes(p));
  }
  await rejectsWith(fs.readlink('/a/file'), 'ERR_NOT_FOUND', img, 'not a symbolic link');
  await rejectsWith(fs.readdir('/a/file'), 'ERR_NOT_FOUND', img, 'not a directory');
});

test('ext read and write: ext2 triple-indirect blocks (a sparse file from mke2fs, a dense one from us)', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  // 1 KiB blocks: 12 direct, 256 indirect, 65536 double-indirect, then triple-indirect past 64.3 MiB
  const chunks: [number, Buffer][] = [[0, patternBytes(3000, 1)], [20 << 20, patternBytes(5000, 2)], [67 << 20, patternBytes(9000, 3)]];
  const fh = await open(join(src, 'sparse'), 'w');
  for (const [at, b] of chunks) await fh.write(b, 0, b.length, at);
  await fh.close();
  await truncate(join(src, 'sparse'), 70 << 20);
  const img = join(dir, 'fs.img');
  mkfs(img, { type: 'ext2', blockSize: 1024, size: '96M', src });
  assert.match(debugfs(img, 'stat /sparse'), /\(TIND\)/, 'debugfs shows a triple-indirect block');
  {
    const { volume, image } = await openVolume(img, true);
    const fs = await openExt(volume);
    const b = await fs.readFile('/sparse');
    assert.equal(b.length, 70 << 20);
    for (const [at, c] of chunks) assert.ok(b.subarray(at, at + c.length).equals(c), `data at ${at}`);
    assert.equal(b.subarray(3000, 20 << 20).some((x) => x !== 0), false, 'the hole reads as zeroes');
    const dense = patternBytes(66 << 20, 4);
    await fs.writeFile('/dense', dense);
    await image.close();
    assertFsckClean(img);
    assert.match(debugfs(img, 'stat /dense'), /\(TIND\)/);
    assert.ok(debugfsCat(img, '/dense').equals(dense));
  }
});
