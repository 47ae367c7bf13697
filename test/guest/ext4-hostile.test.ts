/**
 * Hostile ext images: each broken structure gives a PolyvisorError with a stable code that names
 * the structure (and the inode or block), never a crash, a wrong byte or a hang; then mutation
 * fuzzing over the metadata of small images (superblock, descriptors, bitmaps, inode tables,
 * directory and extent blocks): every mutant reads (and, for some, writes) to data or to a coded
 * error, within a bounded time.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, symlink, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openExt, type ExtFs } from '../../src/guest/ext4.js';
import { isPolyvisorError, type ErrorCode } from '../../src/errors.js';
import { patternBytes, tempDir } from '../helpers.js';
import { debugfs, debugfsScript, isCodedError, memoryVolume, mkfs, openVolume, rng, tool } from './ext4-fixtures.js';

/** A small tree with a directory of many entries, symlinks and a fragmented (extent tree) file. */
async function smallTree(src: string): Promise<void> {
  await mkdir(join(src, 'etc'), { recursive: true });
  await mkdir(join(src, 'many'));
  await writeFile(join(src, 'etc/passwd'), 'root:x:0:0::/root:/bin/sh\n');
  for (let i = 0; i < 150; i++) await writeFile(join(src, 'many', `file-${i}`), patternBytes(64 + i * 13, i + 1));
  await writeFile(join(src, 'big'), patternBytes(70 * 1024, 9));
  await symlink('/etc/passwd', join(src, 'abs'));
  await symlink('/' + 'etc/../'.repeat(12) + 'etc/passwd', join(src, 'slow'));
  await symlink('many/file-3', join(src, 'rel'));
}

/** Builds an image, and a file whose extent tree has an index level: written by debugfs into holes. */
async function image(dir: string, opts: { type: 'ext2' | 'ext4'; features?: string }): Promise<{ img: string; bytes: Buffer; bs: number }> {
  const src = join(dir, 'src');
  await smallTree(src);
  const img = join(dir, `${opts.type}${opts.features ?? ''}.img`);
  mkfs(img, { type: opts.type, blockSize: 1024, features: opts.features, size: '4M', src, index: true });
  // punch holes among the many/ files, then write a file that must fill them
  const frag = patternBytes(60 * 1024, 77);
  await writeFile(join(dir, 'frag.src'), frag);
  const free = Number(tool('dumpe2fs', ['-h', img]).stdout.match(/Free blocks:\s+(\d+)/)![1]);
  await writeFile(join(dir, 'filler'), Buffer.alloc(Math.max(0, free - 80) * 1024));
  debugfsScript(img, [`write ${join(dir, 'filler')} /filler`, ...Array.from({ length: 75 }, (_, i) => `rm /many/file-${i * 2}`), `write ${join(dir, 'frag.src')} /frag`]);
  return { img, bytes: await readFile(img), bs: 1024 };
}

async function rejectsCoded(p: Promise<unknown>, code: ErrorCode, ...words: string[]): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(isPolyvisorError(e), `expected a PolyvisorError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    for (const w of words) assert.ok(e.message.includes(w), `message mentions "${w}": ${e.message}`);
    return true;
  });
}

function open(bytes: Buffer, name = 'hostile.img'): Promise<ExtFs> {
  return openExt(memoryVolume(bytes, name));
}

/** The block numbers debugfs lists for a path. */
function blocksOf(img: string, path: string): number[] {
  return debugfs(img, `blocks ${path}`).trim().split(/\s+/).map(Number);
}

/** "(ETB0):123" from debugfs stat: the first extent tree block. */
function firstTreeBlock(img: string, path: string): number {
  const m = debugfs(img, `stat ${path}`).match(/\(ETB\d\):(\d+)/);
  assert.ok(m, `${path} has an extent tree block`);
  return Number(m[1]);
}

/** Inode number of a path, and the byte offset of its record, from debugfs imap. */
function inodeAt(img: string, path: string, bs: number): { ino: number; offset: number } {
  const out = debugfs(img, `imap ${path}`);
  const m = out.match(/Inode (\d+) is part of block group \d+\s+located at block (\d+), offset (0x[0-9a-f]+)/);
  assert.ok(m, out);
  return { ino: Number(m[1]), offset: Number(m[2]) * bs + Number(m[3]) };
}

test('ext hostile: broken structures give coded errors that name them', async (t) => {
  const dir = await tempDir(t);
  const plain = await image(join(dir, 'a'), { type: 'ext4', features: '^metadata_csum' });
  const csum = await image(join(dir, 'b'), { type: 'ext4' });
  const ext2 = await image(join(dir, 'c'), { type: 'ext2' });
  const bs = 1024;

  // the unbroken images read
  for (const x of [plain, csum, ext2]) {
    const fs = await open(Buffer.from(x.bytes));
    assert.ok((await fs.readFile('/frag')).equals(patternBytes(60 * 1024, 77)));
  }

  // superblock: magic, checksum, unknown incompatible features (named when known)
  let b = Buffer.from(plain.bytes);
  b.writeUInt16LE(0x1234, 1024 + 0x38);
  await rejectsCoded(open(b), 'ERR_CORRUPT', 'hostile.img', 'superblock', 'bad magic 0x1234');
  b = Buffer.from(csum.bytes);
  b[1024 + 0x78] ^= 0xff;
  await rejectsCoded(open(b), 'ERR_CHECKSUM', 'superblock');
  for (const [bit, words] of [[0x80000000, 'incompatible feature 0x80000000'], [0x1, 'incompatible feature compression']] as const) {
    b = Buffer.from(plain.bytes); // no superblock checksum to keep right without metadata_csum
    b.writeUInt32LE((b.readUInt32LE(1024 + 0x60) | bit) >>> 0, 1024 + 0x60);
    await rejectsCoded(open(b), 'ERR_UNSUPPORTED', words);
  }

  // group descriptors: a table pointing past the volume (its checksum recomputed by debugfs), a bad checksum
  {
    const img = join(dir, 'gd.img');
    await writeFile(img, csum.bytes);
    debugfsScript(img, ['set_bg 0 inode_table 9999999', 'set_bg 0 checksum calc']);
    await rejectsCoded((async () => (await open(await readFile(img))).readdir('/'))(), 'ERR_CORRUPT', 'group descriptor 0', 'inode table at block 9999999');
  }
  b = Buffer.from(csum.bytes);
  b[2 * bs + 0x0c] ^= 0x01; // bg_free_blocks_count of group 0
  await rejectsCoded((async () => (await open(b)).readdir('/'))(), 'ERR_CHECKSUM', 'group descriptor 0');

  // inodes: checksum, a directory entry naming an inode that cannot exist
  {
    const at = inodeAt(csum.img, '/etc/passwd', bs);
    b = Buffer.from(csum.bytes);
    b[at.offset + 0x10] ^= 0x55; // i_mtime
    await rejectsCoded((async () => (await open(b)).readFile('/etc/passwd'))(), 'ERR_CHECKSUM', `inode ${at.ino}`);
  }
  {
    const [blk] = blocksOf(plain.img, '/etc');
    b = Buffer.from(plain.bytes);
    b.writeUInt32LE(0x7fffffff, blk! * bs + 24); // the third entry of /etc (after . and ..)
    await rejectsCoded((async () => (await open(b)).readdir('/etc'))(), 'ERR_CORRUPT', `block ${blk}`, 'inode 2147483647 is out of range');
  }

  // directory blocks: rec_len 0, rec_len past the block, checksum
  {
    const [blk] = blocksOf(plain.img, '/etc');
    b = Buffer.from(plain.bytes);
    b.writeUInt16LE(0, blk! * bs + 4);
    await rejectsCoded((async () => (await open(b)).readdir('/etc'))(), 'ERR_CORRUPT', `block ${blk}`, 'rec_len 0');
    b = Buffer.from(plain.bytes);
    b.writeUInt16LE(bs + 64, blk! * bs + 12 + 4); // ".." runs past the block
    await rejectsCoded((async () => (await open(b)).readdir('/etc'))(), 'ERR_CORRUPT', `block ${blk}`, 'past the end of the block');
    const [cblk] = blocksOf(csum.img, '/etc');
    b = Buffer.from(csum.bytes);
    b[cblk! * bs + 8] ^= 0x20; // "." becomes "\x0e"
    await rejectsCoded((async () => (await open(b)).readdir('/etc'))(), 'ERR_CHECKSUM', `directory block 0 (block ${cblk})`);
  }

  // extent trees: broken magic in a tree block and in the inode, a depth that does not go down
  {
    const etb = firstTreeBlock(plain.img, '/frag');
    b = Buffer.from(plain.bytes);
    b.writeUInt16LE(0xbeef, etb * bs);
    await rejectsCoded((async () => (await open(b)).readFile('/frag'))(), 'ERR_CORRUPT', `extent block ${etb}`, 'magic 0xbeef');
    b = Buffer.from(plain.bytes);
    b.writeUInt16LE(1, etb * bs + 6); // a leaf claiming to be an index level: its parent says 0
    await rejectsCoded((async () => (await open(b)).readFile('/frag'))(), 'ERR_CORRUPT', `extent block ${etb}`, 'eh_depth 1');
    // the root's index entry pointing at the inode's own tree block twice over: a loop refused by depth
    const at = inodeAt(plain.img, '/frag', bs);
    b = Buffer.from(plain.bytes);
    b.writeUInt16LE(3, at.offset + 0x28 + 6); // root depth 3 over a depth-0 child
    await rejectsCoded((async () => (await open(b)).readFile('/frag'))(), 'ERR_CORRUPT', 'eh_depth 0 where its parent says 2');
    b = Buffer.from(plain.bytes);
    b.writeUInt16LE(0, at.offset + 0x28);
    await rejectsCoded((async () => (await open(b)).readFile('/frag'))(), 'ERR_CORRUPT', `extent tree of inode ${at.ino}`, 'magic');
    const cetb = firstTreeBlock(csum.img, '/frag');
    b = Buffer.from(csum.bytes);
    b[cetb * bs + 20] ^= 1; // a physical block number: the tail checksum no longer matches
    await rejectsCoded((async () => (await open(b)).readFile('/frag'))(), 'ERR_CHECKSUM', `extent block ${cetb}`);
  }

  // block maps (ext2): a pointer outside the file system
  {
    const at = inodeAt(ext2.img, '/big', bs);
    b = Buffer.from(ext2.bytes);
    b.writeUInt32LE(0x00ffffff, at.offset + 0x28 + 4 * 3);
    await rejectsCoded((async () => (await open(b)).readFile('/big'))(), 'ERR_CORRUPT', `block map of inode ${at.ino}`, 'outside the file system');
  }

  // a volume cut short: the file system opens read-only with a warning; data past the end is ERR_TRUNCATED
  {
    const img = join(dir, 'short.img');
    await writeFile(img, plain.bytes);
    const last = Math.max(...blocksOf(plain.img, '/frag'));
    await truncate(img, last * bs);
    const { volume, image: im } = await openVolume(img, true);
    t.after(() => im.close());
    const fs = await openExt(volume);
    assert.equal(fs.readOnly, true);
    assert.match(fs.warnings.join(), /bigger than its volume/);
    await rejectsCoded(fs.readFile('/frag'), 'ERR_TRUNCATED', 'past the end of the volume');
  }
});

/** Metadata byte ranges of an image, from dumpe2fs and debugfs (the oracle, not our parser). */
function metadataRanges(img: string, bs: number): [number, number][] {
  const ranges: [number, number][] = [[1024, 2048]];
  const dump = tool('dumpe2fs', [img]).stdout;
  for (const m of dump.matchAll(/(?:Group descriptors at|Block bitmap at|Inode bitmap at) (\d+)(?:-(\d+))?/g)) {
    ranges.push([Number(m[1]) * bs, (Number(m[2] ?? m[1]) + 1) * bs]);
  }
  const inodeSize = Number(dump.match(/Inode size:\s+(\d+)/)![1]);
  for (const m of dump.matchAll(/Inode table at (\d+)-(\d+)/g)) ranges.push([Number(m[1]) * bs, Number(m[1]) * bs + 200 * inodeSize]);
  for (const p of ['/', '/etc', '/many', '/lost+found']) for (const blk of blocksOf(img, p)) ranges.push([blk * bs, (blk + 1) * bs]);
  if (tool('dumpe2fs', ['-h', img]).stdout.includes('needs_recovery')) {
    for (const blk of blocksOf(img, '<8>').slice(0, 8)) ranges.push([blk * bs, (blk + 1) * bs]);
  }
  for (const p of ['/frag', '/big']) {
    const st = debugfs(img, `stat ${p}`);
    for (const m of st.matchAll(/\((?:ETB\d|IND|DIND)\):(\d+)/g)) ranges.push([Number(m[1]) * bs, (Number(m[1]) + 1) * bs]);
  }
  return ranges;
}

/** An image whose journal holds committed transactions (debugfs jo/jw/jc): the replay is fuzzed too. */
async function needingRecovery(dir: string): Promise<{ img: string; bytes: Buffer; bs: number }> {
  const base = await image(dir, { type: 'ext4' });
  const etc = blocksOf(base.img, '/etc')[0]!;
  const passwd = blocksOf(base.img, '/etc/passwd')[0]!;
  const copy = Buffer.from(base.bytes.subarray(passwd * base.bs, (passwd + 1) * base.bs));
  copy.write('root:x:0:0:replayed:/root:/bin/sh\n');
  await writeFile(join(dir, 'jblocks'), Buffer.concat([base.bytes.subarray(etc * base.bs, (etc + 1) * base.bs), copy]));
  debugfsScript(base.img, ['jo -c', `jw -b ${etc},${passwd} ${join(dir, 'jblocks')}`, `jw -r ${etc} /dev/null`, 'jc']);
  return { ...base, bytes: await readFile(base.img) };
}

/** Reads everything reachable from the root, as guest inspection would. */
async function walk(fs: ExtFs): Promise<number> {
  let seen = 0;
  const queue = ['/'];
  while (queue.length && seen < 2000) {
    const d = queue.shift()!;
    for (const e of await fs.readdir(d)) {
      const p = d === '/' ? `/${e.name}` : `${d}/${e.name}`;
      seen++;
      const st = await fs.lstat(p);
      if (st.type === 'directory') queue.push(p);
      else if (st.type === 'file') await fs.readFile(p);
      else if (st.type === 'symlink') {
        await fs.readlink(p);
        await fs.exists(p);
      }
    }
  }
  return seen;
}

const ITER = Number(process.env.POLYVISOR_FUZZ_ITER ?? 150);

test(`ext hostile: ${ITER} mutants per base image read to data or a coded error, never a crash or a hang`, async (t) => {
  const dir = await tempDir(t);
  const bases = [
    await image(join(dir, 'a'), { type: 'ext4' }),
    await image(join(dir, 'b'), { type: 'ext4', features: '^metadata_csum,^64bit' }),
    await image(join(dir, 'c'), { type: 'ext2' }),
    await needingRecovery(join(dir, 'd')),
  ];
  const outcomes = new Map<string, number>();
  for (const [bi, base] of bases.entries()) {
    const ranges = metadataRanges(base.img, base.bs);
    for (let i = 0; i < ITER; i++) {
      const r = rng(1000 * bi + i + 1);
      const bytes = Buffer.from(base.bytes);
      for (let k = 1 + r(4); k > 0; k--) {
        const [lo, hi] = ranges[r(ranges.length)]!;
        const at = lo + r(hi - lo);
        bytes[at] = r(3) === 0 ? bytes[at]! ^ (1 << r(8)) : r(256);
      }
      const name = `base ${bi} mutant ${i}`;
      const work = (async () => {
        const fs = await openExt(memoryVolume(bytes, name, false));
        await walk(fs);
        if (i % 3 === 0 && !fs.readOnly) {
          await fs.writeFile('/etc/new.conf', patternBytes(5000, i));
          await fs.mkdir('/many/sub');
          await fs.unlink('/many/file-1');
          await walk(fs);
        }
      })();
      let timer: NodeJS.Timeout | undefined;
      const hang = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${name}: no answer within 60 s (a loop?)`)), 60000);
      });
      try {
        await Promise.race([work, hang]);
        outcomes.set('read', (outcomes.get('read') ?? 0) + 1);
      } catch (e) {
        assert.ok(isCodedError(e), `${name}: ${(e as Error)?.stack ?? String(e)}`);
        outcomes.set(e.code, (outcomes.get(e.code) ?? 0) + 1);
      } finally {
        clearTimeout(timer);
      }
    }
  }
  t.diagnostic(JSON.stringify(Object.fromEntries(outcomes)));
  assert.ok((outcomes.get('read') ?? 0) > 0 && outcomes.size > 2, 'the mutants reach both data and errors');
});
