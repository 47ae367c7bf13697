/**
 * Identifying what a volume holds, with blkid (util-linux) as the oracle: every volume here is
 * made by the format's own tool (mke2fs, mkfs.vfat, mkfs.xfs, mkfs.btrfs, mkswap,
 * cryptsetup luksFormat, mkfs.ntfs) on a plain file, or for an LVM2 PV in pvcreate's layout
 * (see lvm-pv.ts), and probeVolume must give the TYPE, UUID and LABEL `blkid -p` gives.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openImage } from '../../src/disk/chain.js';
import { probeVolume, type ProbeResult } from '../../src/guest/probe.js';
import { imageVolume } from '../../src/guest/volume.js';
import { patternBytes, tempDir } from '../helpers.js';
import { writePv } from './lvm-pv.js';
import { blkid, sh } from './oracle.js';

const MiB = 1 << 20;


function blank(dir: string, name: string, size: number): string {
  const file = join(dir, name);
  sh('truncate', ['-s', String(size), file]);
  return file;
}

async function probe(file: string): Promise<ProbeResult> {
  const img = await openImage(file, { format: 'raw' });
  try {
    return await probeVolume(imageVolume(img));
  } finally {
    await img.close();
  }
}

async function assertLikeBlkid(file: string, version?: string): Promise<ProbeResult> {
  const want = blkid(file);
  const got = await probe(file);
  assert.equal(got.type, want.TYPE, `${file}: type`);
  assert.equal(got.uuid, want.UUID, `${file}: uuid`);
  assert.equal(got.label, want.LABEL, `${file}: label`);
  if (version) assert.equal(got.version, version);
  return got;
}

const makers: [string, number, (file: string) => void, string?][] = [
  ['ext2', 16 * MiB, (f) => sh('mke2fs', ['-q', '-t', 'ext2', '-L', 'ext2label', f])],
  ['ext3', 16 * MiB, (f) => sh('mke2fs', ['-q', '-t', 'ext3', '-L', 'ext3label', f])],
  ['ext4', 16 * MiB, (f) => sh('mke2fs', ['-q', '-t', 'ext4', '-L', 'rootfs', f])],
  ['ext4 without label', 16 * MiB, (f) => sh('mke2fs', ['-q', '-t', 'ext4', f])],
  ['jbd', 16 * MiB, (f) => sh('mke2fs', ['-q', '-O', 'journal_dev', '-b', '4096', f])],
  ['vfat FAT12', 4 * MiB, (f) => sh('mkfs.vfat', ['-F', '12', '-n', 'F12', f]), 'FAT12'],
  ['vfat FAT16', 32 * MiB, (f) => sh('mkfs.vfat', ['-F', '16', '-n', 'F16 LABEL', f]), 'FAT16'],
  ['vfat FAT32', 64 * MiB, (f) => sh('mkfs.vfat', ['-F', '32', '-n', 'ESP', f]), 'FAT32'],
  ['vfat without label', 32 * MiB, (f) => sh('mkfs.vfat', [f]), 'FAT16'],
  ['xfs', 300 * MiB, (f) => sh('mkfs.xfs', ['-q', '-L', 'xfsroot', f])],
  ['btrfs', 128 * MiB, (f) => sh('mkfs.btrfs', ['-q', '-L', 'btrfs label', f])],
  ['swap', 16 * MiB, (f) => sh('mkswap', ['-L', 'swaplabel', f]), '1'],
  ['swap with a chosen UUID', 16 * MiB, (f) => sh('mkswap', ['-U', '0b3e2f6c-1a2b-4c3d-8e9f-001122334455', f]), '1'],
  ['crypto_LUKS version 1', 16 * MiB, (f) => sh('cryptsetup', ['luksFormat', '-q', '--type', 'luks1', '--pbkdf-force-iterations', '1000', f, '-'], 'passphrase'), '1'],
  ['crypto_LUKS version 2', 32 * MiB, (f) => sh('cryptsetup', ['luksFormat', '-q', '--type', 'luks2', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--label', 'cryptroot', f, '-'], 'passphrase'), '2'],
  ['ntfs', 16 * MiB, (f) => sh('mkfs.ntfs', ['-q', '-F', '-f', '-L', 'Windows', f])],
];

for (const [what, size, make, version] of makers) {
  test(`${what}: type, UUID and label as blkid -p gives them`, async (t) => {
    const dir = await tempDir(t);
    const file = blank(dir, 'vol.img', size);
    make(file);
    const got = await assertLikeBlkid(file, version);
    assert.equal(got.type, what.split(' ')[0]);
  });
}

test('LVM2_member: a PV in pvcreate\'s layout, UUID as blkid prints it', async (t) => {
  const dir = await tempDir(t);
  const file = blank(dir, 'pv.img', 8 * MiB);
  const text = 'vg {\nid = "uu3sXP-R6ra-eNen-dLKd-7A3S-NwVP-dX4CxK"\nseqno = 1\nextent_size = 8192\nphysical_volumes {\n}\n}\n';
  await writePv(file, { uuid: 'juMxIPJzUYLWc66Ij4VLlnl6ELDvw6G7', size: 8 * MiB, text });
  const got = await assertLikeBlkid(file);
  assert.equal(got.uuid, 'juMxIP-JzUY-LWc6-6Ij4-VLln-l6EL-Dvw6G7');
});

test('unknown: zeros, random bytes, a partitioned disk, a volume too small for any signature', async (t) => {
  const dir = await tempDir(t);
  const zeros = blank(dir, 'zeros.img', 4 * MiB);
  assert.deepEqual(await probe(zeros), { type: 'unknown' });
  const random = join(dir, 'random.img');
  await writeFile(random, patternBytes(4 * MiB, 5));
  assert.deepEqual(await probe(random), { type: 'unknown' });
  const disk = blank(dir, 'disk.img', 16 * MiB);
  sh('sfdisk', ['-q', disk], 'label: dos\nsize=8M, type=83\n');
  assert.deepEqual(await probe(disk), { type: 'unknown' });
  const tiny = join(dir, 'tiny.img');
  await writeFile(tiny, Buffer.alloc(100));
  assert.deepEqual(await probe(tiny), { type: 'unknown' });
  // a boot sector that looks like FAT but whose BPB is broken is not taken for FAT
  const fat = blank(dir, 'badfat.img', 4 * MiB);
  sh('mkfs.vfat', [fat]);
  sh('dd', ['of=' + fat, 'bs=1', 'seek=11', 'count=2', 'conv=notrunc', 'status=none'], '\0\0');
  assert.deepEqual(await probe(fat), { type: 'unknown' });
});
