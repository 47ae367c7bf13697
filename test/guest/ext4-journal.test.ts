/**
 * A journal that needs recovery, made by debugfs's own journal writer (jo / jw / jc: no kernel,
 * no mount): Polyvisor replays it in memory and must read what e2fsck -fy reads after replaying
 * it for real, without changing one byte of the volume; writes are refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openExt } from '../../src/guest/ext4.js';
import { patternBytes, rejectsWith, tempDir } from '../helpers.js';
import { debugfs, debugfsCat, debugfsScript, mkfs, openVolume, tool } from './ext4-fixtures.js';

async function sha(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

/** e2fsck -fy on a copy: the journal replayed by e2fsprogs, the oracle for what the guest sees. */
async function recovered(img: string, dir: string): Promise<string> {
  const copy = join(dir, 'recovered.img');
  await copyFile(img, copy);
  const r = tool('e2fsck', ['-fy', copy]);
  assert.ok(r.status <= 1, `e2fsck -fy: ${r.stdout}${r.stderr}`);
  return copy;
}

async function base(dir: string): Promise<{ img: string; src: string }> {
  const src = join(dir, 'src');
  await mkdir(join(src, 'etc'), { recursive: true });
  await writeFile(join(src, 'etc/hostname'), 'before-crash\n');
  await writeFile(join(src, 'data.bin'), patternBytes(40000, 4));
  const img = join(dir, 'fs.img');
  mkfs(img, { type: 'ext4', size: '16M', blockSize: 4096, src });
  return { img, src };
}

for (const jo of ['jo', 'jo -c -v 2', 'jo -c -v 3']) {
  test(`ext journal (${jo}): committed blocks are replayed in memory, revoked and uncommitted ones are not`, async (t) => {
    const dir = await tempDir(t);
    const { img } = await base(dir);
    const bs = 4096;
    const hostBlk = Number(debugfs(img, 'bmap /etc/hostname 0').trim());
    const dataBlks = debugfs(img, 'blocks /data.bin').trim().split(/\s+/).map(Number);
    const block = (text: string) => {
      const b = Buffer.alloc(bs);
      b.write(text);
      return b;
    };
    await writeFile(join(dir, 'host'), block('after-crash\n'));
    await writeFile(join(dir, 'd0'), Buffer.concat([block('first copy'), block('second block')]));
    await writeFile(join(dir, 'd1'), block('revoked later'));
    await writeFile(join(dir, 'd2'), block('never committed'));
    // 1: hostname and data block 0; 2: data block 1, then revoked in 3; 4: data block 2, no commit
    debugfsScript(img, [
      jo,
      `jw -b ${hostBlk},${dataBlks[0]} ${join(dir, 'd0')}`,
      `jw -b ${hostBlk} ${join(dir, 'host')}`,
      `jw -b ${dataBlks[1]} ${join(dir, 'd1')}`,
      `jw -r ${dataBlks[1]} /dev/null`,
      `jw -b ${dataBlks[2]} ${join(dir, 'd2')} -c`,
      'jc',
    ]);
    assert.match(tool('dumpe2fs', ['-h', img]).stdout, /needs_recovery/);
    const before = await sha(img);
    const { volume, image } = await openVolume(img, true);
    const fs = await openExt(volume);
    assert.equal(fs.journalReplayed, true);
    assert.match(fs.warnings.join('\n'), /journal needed recovery: 4 transaction\(s\)/);
    assert.equal(fs.readOnly, true);
    const hostname = await fs.readFile('/etc/hostname');
    const data = await fs.readFile('/data.bin');
    await rejectsWith(fs.writeFile('/etc/hostname', Buffer.from('x')), 'ERR_UNSUPPORTED', img, 'journal needs recovery');
    await image.close();
    assert.equal(await sha(img), before, 'the volume is unchanged');

    const oracle = await recovered(img, dir);
    assert.ok(hostname.equals(debugfsCat(oracle, '/etc/hostname')));
    // the later transaction wins; i_size (13 bytes) did not change
    assert.equal(hostname.toString(), 'after-crash\n\0');
    assert.ok(data.equals(debugfsCat(oracle, '/data.bin')));
    assert.equal(data.subarray(0, 12).toString(), 'second block');
    assert.ok(data.subarray(bs, 2 * bs).equals(patternBytes(40000, 4).subarray(bs, 2 * bs)), 'the revoked block is not replayed');
    assert.ok(data.subarray(2 * bs, 3 * bs).equals(patternBytes(40000, 4).subarray(2 * bs, 3 * bs)), 'the uncommitted block is not replayed');
  });
}

test('ext journal: a logged file creation (superblock, descriptors, bitmaps, inode table, directory) reads as after e2fsck replays it', async (t) => {
  const dir = await tempDir(t);
  const { img } = await base(dir);
  // what the kernel would have logged: every block a file creation changes, taken from a copy
  const after = join(dir, 'after.img');
  await copyFile(img, after);
  await writeFile(join(dir, 'new'), 'created before the crash\n');
  debugfsScript(after, [`write ${join(dir, 'new')} /etc/new.conf`]);
  const a = await readFile(img);
  const b = await readFile(after);
  const bs = 4096;
  const changed: number[] = [];
  for (let blk = 0; blk * bs < a.length; blk++) if (!a.subarray(blk * bs, (blk + 1) * bs).equals(b.subarray(blk * bs, (blk + 1) * bs))) changed.push(blk);
  assert.ok(changed.includes(0), 'the superblock block changed');
  await writeFile(join(dir, 'blocks'), Buffer.concat(changed.map((blk) => b.subarray(blk * bs, (blk + 1) * bs))));
  debugfsScript(img, ['jo -c', `jw -b ${changed.join(',')} ${join(dir, 'blocks')}`, 'jc']);

  const { volume, image } = await openVolume(img, false);
  t.after(() => image.close());
  const fs = await openExt(volume);
  assert.equal(fs.journalReplayed, true);
  assert.equal((await fs.readFile('/etc/new.conf')).toString(), 'created before the crash\n');
  const oracle = await recovered(img, dir);
  assert.ok(debugfsCat(oracle, '/etc/new.conf').equals(await fs.readFile('/etc/new.conf')));
  const names = (await fs.readdir('/etc')).map((e) => e.name).sort();
  assert.deepEqual(names, ['hostname', 'new.conf']);
});
