/**
 * The ext reader and writer on a real guest disk: a qcow2 image (converted by qemu-img) whose
 * MBR partition 1 at 1 MiB holds the file system, opened through the disk engine and narrowed
 * with subVolume. After writing, qemu-img check must find the qcow2 clean, and e2fsck and
 * debugfs, on the partition extracted again by qemu-img, must find the changes and nothing wrong.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openImage } from '../../src/disk/chain.js';
import { openExt } from '../../src/guest/ext4.js';
import { imageVolume, subVolume } from '../../src/guest/volume.js';
import { patternBytes, qemuImg, qemuImgStatus, rejectsWith, tempDir } from '../helpers.js';
import { assertFsckClean, buildSource, compareTree, debugfsCat, mkfs, tool } from './ext4-fixtures.js';

const MiB = 1 << 20;

/** A raw disk: an MBR with one Linux partition from 1 MiB, the file system image copied in. */
async function diskWithPartition(fsImg: string, disk: string): Promise<number> {
  const fsBytes = await readFile(fsImg);
  const fh = await open(disk, 'w');
  await fh.truncate(MiB + fsBytes.length + MiB);
  await fh.write(fsBytes, 0, fsBytes.length, MiB);
  await fh.close();
  const r = tool('sfdisk', ['-q', disk], `label: dos\nstart=2048, size=${fsBytes.length / 512}, type=83\n`);
  assert.equal(r.status, 0, `sfdisk: ${r.stderr}`);
  return fsBytes.length;
}

test('ext on qcow2: MBR partition 1 at 1 MiB reads like the source tree, takes adaptation writes, and passes qemu-img check and e2fsck', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await buildSource(src);
  await mkdir(join(src, 'boot'));
  await writeFile(join(src, 'boot/initrd.img-6.1.0-1-amd64'), patternBytes(1 << 20, 3));
  const fsImg = join(dir, 'part.img');
  mkfs(fsImg, { type: 'ext4', size: '96M', src, index: true });
  const raw = join(dir, 'disk.raw');
  const fsSize = await diskWithPartition(fsImg, raw);
  const qcow = join(dir, 'disk.qcow2');
  await qemuImg('convert', '-f', 'raw', '-O', 'qcow2', raw, qcow);

  const image = await openImage(qcow, { writable: true });
  const disk = imageVolume(image, 'disk.qcow2');
  const part = subVolume(disk, MiB, fsSize, 'disk.qcow2 partition 1');
  const fs = await openExt(part);
  assert.equal(fs.type, 'ext4');
  assert.ok((await compareTree(fs, src)) > 3000);
  const initrd = patternBytes(5 << 20, 11);
  await fs.writeFile('/boot/initrd.img-6.1.0-1-amd64', initrd);
  await fs.mkdir('/etc/modules-load.d');
  await fs.writeFile('/etc/modules-load.d/xen.conf', Buffer.from('xen_blkfront\n'));
  await fs.symlink('/lib/systemd/system/serial-getty@.service', '/etc/serial.service');
  await fs.unlink('/private');
  // a hostile guest cannot write outside its partition: the volume refuses, not the neighbour
  await rejectsWith(part.write(fsSize - 1, Buffer.alloc(2)), 'ERR_RANGE', 'disk.qcow2 partition 1');
  await image.close();

  const check = qemuImgStatus('check', qcow);
  assert.equal(check.status, 0, check.stdout + check.stderr);
  const back = join(dir, 'back.raw');
  await qemuImg('convert', '-f', 'qcow2', '-O', 'raw', qcow, back);
  const whole = await readFile(back);
  assert.ok(whole.subarray(0, MiB).equals((await readFile(raw)).subarray(0, MiB)), 'the MBR and the gap before the partition are untouched');
  const extracted = join(dir, 'extracted.img');
  await writeFile(extracted, whole.subarray(MiB, MiB + fsSize));
  assert.equal((await stat(extracted)).size, fsSize);
  assertFsckClean(extracted);
  assert.ok(debugfsCat(extracted, '/boot/initrd.img-6.1.0-1-amd64').equals(initrd));
  assert.equal(debugfsCat(extracted, '/etc/modules-load.d/xen.conf').toString(), 'xen_blkfront\n');
});
