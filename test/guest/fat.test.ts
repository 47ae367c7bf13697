/**
 * FAT12, FAT16 and FAT32, with dosfstools and mtools as the oracle: file systems made by
 * mkfs.vfat and filled by mcopy (nested directories, long and Unicode names, files of 0, one
 * cluster and many clusters, directories of many clusters) read back exactly; files and
 * directories Polyvisor writes leave a file system `fsck.vfat -n` finds clean (FSInfo free
 * count included) and that mtools lists and reads as written; an ESP inside a GPT disk opens
 * through the partition table. Hostile volumes (cluster chain loops, clusters out of range,
 * a zero sector size, entries pointing past the volume) fail with coded errors.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openImage } from '../../src/disk/chain.js';
import type { BlockImage } from '../../src/disk/image.js';
import { FatFs } from '../../src/guest/fat.js';
import { partitionVolume, readPartitions } from '../../src/guest/partition.js';
import { imageVolume, type Volume } from '../../src/guest/volume.js';
import { patternBytes, rejectsWith, tempDir } from '../helpers.js';
import { fuzzMutants } from './mutants.js';
import { blkid, sh } from './oracle.js';

const MiB = 1 << 20;


interface Layout {
  bits: 12 | 16 | 32;
  size: number;
  /** sectors per cluster: small clusters make multi-cluster directories and long chains */
  spc: number;
}

const LAYOUTS: Layout[] = [
  { bits: 12, size: 4 * MiB, spc: 4 },
  { bits: 16, size: 32 * MiB, spc: 2 },
  { bits: 32, size: 64 * MiB, spc: 1 },
];

/** The tree mcopy puts on every volume: path -> content (directories end in /) */
function sourceTree(): Map<string, Buffer> {
  const t = new Map<string, Buffer>();
  t.set('EFI/', Buffer.alloc(0));
  t.set('EFI/BOOT/', Buffer.alloc(0));
  t.set('EFI/BOOT/BOOTX64.EFI', patternBytes(70000, 1));
  t.set('EFI/debian/', Buffer.alloc(0));
  t.set('EFI/debian/grub.cfg', Buffer.from('search --fs-uuid 1234\nconfigfile $prefix/grub.cfg\n'));
  t.set('Long Directory Name/', Buffer.alloc(0));
  t.set('Long Directory Name/A file with a long name.bin', patternBytes(123457, 2));
  t.set('Long Directory Name/empty', Buffer.alloc(0));
  t.set('Long Directory Name/two kilobytes', patternBytes(2048, 3));
  t.set('Long Directory Name/Ünïcödé ñame – ok.txt', Buffer.from('unicode\n'));
  t.set('short.TXT', Buffer.from('mixed case short name\n'));
  t.set('UPPER.TXT', Buffer.from('upper\n'));
  t.set('many/', Buffer.alloc(0));
  // 150 long names: 450+ entries, a directory of several clusters
  for (let i = 0; i < 150; i++) t.set(`many/file number ${i} with a long name.dat`, Buffer.from(`file ${i}\n`));
  return t;
}

async function makeFat(dir: string, name: string, l: Layout, label = 'POLYTEST'): Promise<{ file: string; tree: Map<string, Buffer> }> {
  const file = join(dir, name);
  sh('truncate', ['-s', String(l.size), file]);
  sh('mkfs.vfat', ['-F', String(l.bits), '-s', String(l.spc), '-n', label, file]);
  const tree = sourceTree();
  const src = join(dir, `${name}.src`);
  for (const [p, data] of tree) {
    if (p.endsWith('/')) await mkdir(join(src, p), { recursive: true });
    else await writeFile(join(src, p), data);
  }
  for (const top of ['EFI', 'Long Directory Name', 'short.TXT', 'UPPER.TXT', 'many']) sh('mcopy', ['-s', '-i', file, join(src, top), '::/']);
  return { file, tree };
}

/** Opens a FAT image; it is closed after the test unless `close` was called first. */
async function openFs(t: { after(fn: () => Promise<void>): void }, file: string, writable = false): Promise<{ fs: FatFs; close: () => Promise<void> }> {
  const img: BlockImage = await openImage(file, { format: 'raw', writable });
  let closed = false;
  const close = async () => {
    if (!closed) await img.close();
    closed = true;
  };
  t.after(close);
  return { fs: await FatFs.open(imageVolume(img)), close };
}

/** `fsck.vfat -n` exits 0 and has nothing to say beyond its summary */
function assertFsckClean(file: string): void {
  const r = spawnSync('fsck.vfat', ['-n', file], { encoding: 'utf8' });
  assert.equal(r.status, 0, `fsck.vfat -n ${file}:\n${r.stdout}${r.stderr}`);
  assert.doesNotMatch(r.stdout, /wrong|differ|fix|Auto-correct/i, r.stdout);
}

/** mtools' list of every path on the volume (mdir -/ -b) */
function mdirAll(file: string): string[] {
  return sh('mdir', ['-/', '-b', '-i', file, '::/'])
    .split('\n')
    .filter((l) => l.startsWith('::/'))
    .map((l) => l.slice(3))
    .sort();
}

async function ourTree(fs: FatFs, path = '/', out: string[] = []): Promise<string[]> {
  for (const e of await fs.readdir(path)) {
    const p = (path === '/' ? '' : path.slice(1) + '/') + e.name;
    out.push(e.type === 'directory' ? p + '/' : p);
    if (e.type === 'directory') await ourTree(fs, '/' + p, out);
  }
  return out.sort();
}

for (const l of LAYOUTS) {
  test(`FAT${l.bits}: a volume mkfs.vfat made and mcopy filled reads back exactly (names, sizes, bytes, label, UUID)`, async (t) => {
    const dir = await tempDir(t);
    const { file, tree } = await makeFat(dir, `fat${l.bits}.img`, l);
    const { fs } = await openFs(t, file);
    assert.equal(fs.type, 'vfat');
    assert.equal(fs.fatType, l.bits);
    assert.equal(fs.uuid, blkid(file).UUID);
    assert.equal(fs.label, 'POLYTEST');
    assert.deepEqual(await ourTree(fs), mdirAll(file));
    for (const [p, data] of tree) {
      const st = await fs.stat('/' + p);
      if (p.endsWith('/')) {
        assert.equal(st.type, 'directory');
        assert.equal(st.mode, 0o40755);
        continue;
      }
      assert.equal(st.type, 'file', p);
      assert.equal(st.size, data.length, p);
      assert.ok((await fs.readFile('/' + p)).equals(data), p);
    }
    assert.ok(!(await fs.exists('/EFI/nothing')));
    await rejectsWith(fs.readFile('/EFI/nothing'), 'ERR_NOT_FOUND', file, '/EFI/nothing');
    await rejectsWith(fs.readdir('/short.TXT'), 'ERR_NOT_FOUND', file, 'not a directory');
    await rejectsWith(fs.readlink('/short.TXT'), 'ERR_UNSUPPORTED', file, 'symbolic link');
  });

  test(`FAT${l.bits}: lookups are case-insensitive and find short names, as vfat does`, async (t) => {
    const dir = await tempDir(t);
    const { file, tree } = await makeFat(dir, `case${l.bits}.img`, l);
    const { fs } = await openFs(t, file);
    const boot = tree.get('EFI/BOOT/BOOTX64.EFI')!;
    assert.ok((await fs.readFile('/efi/boot/bootx64.efi')).equals(boot));
    assert.ok((await fs.readFile('//EFI/./debian/../BOOT/BootX64.Efi')).equals(boot));
    // the short name mtools generated for the long directory name reaches the same files
    const short = sh('mdir', ['-i', file, '::/'])
      .split('\n')
      .find((line) => line.includes('Long Directory Name'))!
      .split(/\s+/)[0]!;
    assert.match(short, /^LONGDI~\d$/);
    assert.ok((await fs.readFile(`/${short}/a FILE with a LONG name.bin`)).equals(tree.get('Long Directory Name/A file with a long name.bin')!));
    assert.equal((await fs.readdir('/')).find((e) => e.name.toLowerCase() === 'short.txt')!.name, 'short.TXT');
  });

  test(`FAT${l.bits}: files and directories Polyvisor writes pass fsck.vfat -n and read back in mtools`, async (t) => {
    const dir = await tempDir(t);
    const { file } = await makeFat(dir, `write${l.bits}.img`, l);
    const { fs, close } = await openFs(t, file, true);
    const bigger = patternBytes(300000, 11);
    const written = new Map<string, Buffer>([
      ['EFI/debian/grub.cfg', bigger], // replaced by a larger file
      ['EFI/BOOT/BOOTX64.EFI', Buffer.from('smaller now\n')], // replaced by a smaller one
      ['Long Directory Name/empty', patternBytes(5000, 12)], // an empty file gets clusters
      ['Long Directory Name/two kilobytes', Buffer.alloc(0)], // and a file loses them
      ['new file with a long name.conf', Buffer.from('created\n')],
      ['new file with a long name.conf2', Buffer.from('same basis name, another tail\n')],
      ['lower.txt', Buffer.from('lowercase 8.3 name\n')],
      ['Ärger a+b;c=d,e.txt', Buffer.from('characters a short name cannot hold\n')],
      ['EFI/ubuntu/shimx64.efi', patternBytes(40000, 13)],
      ['EFI/ubuntu/deeper/still/grub.cfg', Buffer.from('deep\n')],
    ]);
    await fs.mkdir('/EFI/ubuntu');
    await fs.mkdir('/EFI/ubuntu/deeper');
    await fs.mkdir('/EFI/ubuntu/deeper/still');
    for (const [p, data] of written) await fs.writeFile('/' + p, data);
    // a subdirectory that must grow by several clusters
    await fs.mkdir('/grown');
    for (let i = 0; i < 60; i++) {
      const p = `grown/entry ${i} with a name long enough for two LFN entries.txt`;
      const data = Buffer.from(`grown ${i}\n`);
      written.set(p, data);
      await fs.writeFile('/' + p, data);
    }
    // replacing through another case of the name keeps one entry
    await fs.writeFile('/upper.txt', Buffer.from('replaced via lowercase\n'));
    written.set('UPPER.TXT', Buffer.from('replaced via lowercase\n'));
    await fs.flush();
    await close();

    assertFsckClean(file);
    const listed = mdirAll(file);
    for (const [p, data] of written) {
      assert.ok(listed.includes(p), `mdir lists ${p}`);
      const out = join(dir, 'out.bin');
      sh('mcopy', ['-n', '-i', file, `::/${p}`, out]);
      assert.ok((await readFile(out)).equals(data), `mcopy reads ${p}`);
    }
    assert.equal(listed.filter((p) => p.toLowerCase() === 'upper.txt').length, 1);
    // the 8.3 lowercase name is stored without long entries, as Windows NT stores it
    assert.match(sh('mdir', ['-i', file, '::/']), /^lower\s+txt\s+19 /m);
    // reopened: our reader agrees with itself and with mtools
    const again = await openFs(t, file);
    assert.deepEqual(await ourTree(again.fs), listed);
    assert.ok((await again.fs.readFile('/EFI/debian/grub.cfg')).equals(bigger));
  });
}

test('FAT32: FSInfo free count stays right, and a full file system refuses a write and stays clean', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'full.img');
  sh('truncate', ['-s', String(40 * MiB), file]);
  sh('mkfs.vfat', ['-F', '32', '-s', '8', file]);
  const img = await openImage(file, { format: 'raw', writable: true });
  const fs = await FatFs.open(imageVolume(img));
  const free = await fs.freeClusters();
  const cluster = fs.geometry.clusterSize;
  await fs.writeFile('/big', Buffer.alloc((free - 3) * cluster, 1));
  await rejectsWith(fs.writeFile('/too big', Buffer.alloc(10 * cluster)), 'ERR_RANGE', file, 'free clusters');
  await fs.writeFile('/fits', Buffer.alloc(cluster, 2));
  assert.equal(await fs.freeClusters(), 2);
  await fs.flush();
  await img.close();
  assertFsckClean(file);
  const fsinfo = (await readFile(file)).readUInt32LE(512 + 488);
  assert.equal(fsinfo, 2);
});

test('an EFI system partition inside a GPT disk opens through the partition table', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'disk.raw');
  sh('truncate', ['-s', String(64 * MiB), file]);
  sh('sfdisk', ['-q', file], 'label: gpt\nstart=2048, size=40M, type=U, name="EFI System Partition"\ntype=L\n');
  sh('mkfs.vfat', ['-F', '32', '-s', '1', '-n', 'ESP', '--offset', '2048', file, String(40 * 1024)]);
  const src = join(dir, 'grubx64.efi');
  await writeFile(src, patternBytes(150000, 21));
  sh('mmd', ['-i', `${file}@@1M`, '::/EFI', '::/EFI/debian']);
  sh('mcopy', ['-i', `${file}@@1M`, src, '::/EFI/debian/grubx64.efi']);

  const img = await openImage(file, { format: 'raw', writable: true });
  const disk = imageVolume(img, 'disk.raw');
  const table = await readPartitions(disk);
  const esp = table.partitions.find((p) => p.typeName === 'efi')!;
  const vol = partitionVolume(disk, esp);
  const fs = await FatFs.open(vol);
  assert.equal(fs.label, 'ESP');
  assert.ok((await fs.readFile('/EFI/debian/grubx64.efi')).equals(await readFile(src)));
  await fs.writeFile('/EFI/debian/grub.cfg', Buffer.from('configfile (hd0,gpt2)/boot/grub/grub.cfg\n'));
  await fs.flush();
  await img.close();
  assert.equal(sh('mtype', ['-i', `${file}@@1M`, '::/EFI/debian/grub.cfg']), 'configfile (hd0,gpt2)/boot/grub/grub.cfg\n');
  const part = join(dir, 'esp.img');
  sh('dd', [`if=${file}`, `of=${part}`, 'bs=1M', 'skip=1', 'count=40', 'status=none']);
  assertFsckClean(part);
});

// ---- hostile volumes ----

/** cluster numbers of a file as mtools sees them: "::/a <3-5> <9>" */
function clustersOf(file: string, path: string): number[] {
  const out: number[] = [];
  for (const m of sh('mshowfat', ['-i', file, path]).matchAll(/<(\d+)(?:-(\d+))?>/g)) {
    for (let c = Number(m[1]); c <= Number(m[2] ?? m[1]); c++) out.push(c);
  }
  return out;
}

/** Sets FAT entry `n` in every FAT copy of a FAT16 or FAT32 image buffer. */
function setFat(img: Buffer, n: number, value: number): void {
  const bps = img.readUInt16LE(11);
  const rsvd = img.readUInt16LE(14);
  const nfats = img[16]!;
  const fat16 = img.readUInt16LE(22);
  const fatBytes = (fat16 || img.readUInt32LE(36)) * bps;
  for (let f = 0; f < nfats; f++) {
    const at = rsvd * bps + f * fatBytes;
    if (fat16) img.writeUInt16LE(value, at + n * 2);
    else img.writeUInt32LE(value, at + n * 4);
  }
}

test('hostile FAT: cluster chain loops, clusters out of range, zero sector size, entries past the volume', async (t) => {
  const dir = await tempDir(t);
  const base = await makeFat(dir, 'base.img', { bits: 16, size: 32 * MiB, spc: 2 });
  const pristine = await readFile(base.file);
  const variant = async (name: string, patch: (b: Buffer) => void): Promise<string> => {
    const b = Buffer.from(pristine);
    patch(b);
    const file = join(dir, name);
    await writeFile(file, b);
    return file;
  };
  const big = clustersOf(base.file, '::/Long Directory Name/A file with a long name.bin');
  assert.ok(big.length > 10);

  const loop = await variant('loop.img', (b) => setFat(b, big[5]!, big[2]!));
  const fsLoop = (await openFs(t, loop)).fs;
  await rejectsWith(fsLoop.readFile('/Long Directory Name/A file with a long name.bin'), 'ERR_CORRUPT', loop, 'loops back');

  const range = await variant('range.img', (b) => setFat(b, big[3]!, 0xfff0));
  const fsRange = (await openFs(t, range)).fs;
  await rejectsWith(fsRange.readFile('/Long Directory Name/A file with a long name.bin'), 'ERR_CORRUPT', range, 'outside the data region');

  const short = await variant('short.img', (b) => setFat(b, big[3]!, 0xffff));
  await rejectsWith((await openFs(t, short)).fs.readFile('/Long Directory Name/A file with a long name.bin'), 'ERR_CORRUPT', short, 'ends after 4 clusters');

  // the root directory entry of UPPER.TXT points at a cluster past the end of the volume
  const past = await variant('past.img', (b) => {
    const rootAt = (b.readUInt16LE(14) + b[16]! * b.readUInt16LE(22)) * 512;
    for (let e = rootAt; e < rootAt + 512 * 32; e += 32) {
      if (b.toString('latin1', e, e + 11) === 'UPPER   TXT') b.writeUInt16LE(0xfff0, e + 26);
    }
  });
  await rejectsWith((await openFs(t, past)).fs.readFile('/UPPER.TXT'), 'ERR_CORRUPT', past, 'outside the data region');

  // a directory whose cluster chain loops
  const many = clustersOf(base.file, '::/many');
  assert.ok(many.length > 2);
  const dirLoop = await variant('dirloop.img', (b) => setFat(b, many[many.length - 1]!, many[0]!));
  await rejectsWith((await openFs(t, dirLoop)).fs.readdir('/many'), 'ERR_CORRUPT', dirLoop, 'loops back');

  const zero = await variant('zero.img', (b) => b.writeUInt16LE(0, 11));
  await rejectsWith(openFs(t, zero), 'ERR_CORRUPT', zero, 'BPB_BytsPerSec', 'is 0');
  const spc = await variant('spc.img', (b) => (b[13] = 3));
  await rejectsWith(openFs(t, spc), 'ERR_CORRUPT', spc, 'BPB_SecPerClus');
  const fatsz = await variant('fatsz.img', (b) => b.writeUInt16LE(1, 22));
  await rejectsWith(openFs(t, fatsz), 'ERR_CORRUPT', fatsz, 'BPB_FATSz');
  // the BPB claims more sectors than the volume has
  const trunc = join(dir, 'trunc.img');
  await writeFile(trunc, pristine.subarray(0, 16 * MiB));
  await rejectsWith(openFs(t, trunc), 'ERR_TRUNCATED', trunc, 'file system covers');

  // writes: read-only volumes and names FAT cannot hold
  const ro = (await openFs(t, base.file)).fs;
  await rejectsWith(ro.writeFile('/x', Buffer.from('x')), 'ERR_READ_ONLY', base.file);
  const rw = (await openFs(t, base.file, true)).fs;
  await rejectsWith(rw.writeFile('/a:b', Buffer.from('x')), 'ERR_UNSUPPORTED', base.file, 'a:b');
  await rejectsWith(rw.writeFile('/nodir/x', Buffer.from('x')), 'ERR_NOT_FOUND', base.file, '/nodir');
  await rejectsWith(rw.writeFile('/EFI', Buffer.from('x')), 'ERR_EXISTS', base.file, 'is a directory');
  await rejectsWith(rw.mkdir('/EFI'), 'ERR_EXISTS', base.file, 'exists');
});

/** Reads every directory and file (depth-bounded: a mutant may link a directory to its parent), then writes. */
async function exercise(v: Volume): Promise<void> {
  const fs = await FatFs.open(v);
  const walk = async (path: string, depth: number): Promise<void> => {
    if (depth > 6) return;
    for (const e of await fs.readdir(path)) {
      const p = `${path === '/' ? '' : path}/${e.name}`;
      if (e.type === 'directory') await walk(p, depth + 1);
      else await fs.readFile(p);
    }
  };
  await walk('/', 0);
  await fs.writeFile('/EFI/debian/grub.cfg', patternBytes(5000, 9));
  await fs.mkdir('/new directory');
  await fs.writeFile('/new directory/a new file with a long name', Buffer.from('new\n'));
}

test('mutants of FAT12, FAT16 and FAT32 volumes (BPB, FATs, directories) are read or refused with a coded error', async (t) => {
  const dir = await tempDir(t);
  for (const l of LAYOUTS) {
    const { file } = await makeFat(dir, `fuzz${l.bits}.img`, l);
    const base = await readFile(file);
    const rsvd = base.readUInt16LE(14) * 512;
    const fatBytes = (base.readUInt16LE(22) || base.readUInt32LE(36)) * 512;
    const rootEnd = rsvd + base[16]! * fatBytes + base.readUInt16LE(17) * 32;
    const regions: [number, number][] = [
      [0, 512],
      [rsvd, rsvd + 2048],
      [rootEnd - base.readUInt16LE(17) * 32, rootEnd + 16384],
    ];
    const stats = await fuzzMutants(base, regions, 0xfa7 + l.bits, exercise);
    t.diagnostic(`FAT${l.bits}: ${JSON.stringify(stats)}`);
  }
});
