/**
 * MBR and GPT partition tables, with util-linux as the oracle: disks partitioned by `sfdisk`
 * (and `fdisk -b 4096` for 4 KiB sectors) must read as `sfdisk --json` (or `fdisk -l`) lists
 * them; real boot loaders written into the MBR (GRUB 2's boot.img, syslinux's mbr.bin and
 * gptmbr.bin) are recognised; hostile tables (EBR loops, broken GPT CRCs, entries past the
 * end of the disk, absurd entry counts) are refused with a coded error naming the disk and the
 * structure, or read from the backup GPT with a warning.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { openImage } from '../../src/disk/chain.js';
import { imageVolume, type Volume } from '../../src/guest/volume.js';
import { identifyBootCode, partitionVolume, readPartitions, type PartitionTable } from '../../src/guest/partition.js';
import { rejectsWith, tempDir } from '../helpers.js';
import { fuzzMutants } from './mutants.js';
import { blkid, sh } from './oracle.js';

const MiB = 1 << 20;


/** A raw disk of `size` bytes partitioned by sfdisk with `script`. */
async function sfdiskDisk(dir: string, name: string, size: number, script: string): Promise<string> {
  const file = join(dir, name);
  sh('truncate', ['-s', String(size), file]);
  sh('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', file], script);
  return file;
}

async function readTable(file: string): Promise<PartitionTable> {
  const img = await openImage(file, { format: 'raw' });
  try {
    return await readPartitions(imageVolume(img));
  } finally {
    await img.close();
  }
}

interface SfdiskPartition {
  node: string;
  start: number;
  size: number;
  type: string;
  bootable?: boolean;
  uuid?: string;
  name?: string;
  attrs?: string;
}

function sfdiskJson(file: string): { label: string; id: string; sectorsize: number; partitions: SfdiskPartition[] } {
  return JSON.parse(sh('sfdisk', ['--json', file])).partitiontable;
}

/** Our table must say what sfdisk says, partition by partition. */
function assertMatchesSfdisk(t: PartitionTable, file: string): void {
  const want = sfdiskJson(file);
  assert.equal(t.scheme, want.label === 'dos' ? 'mbr' : 'gpt');
  assert.equal(t.sectorSize, want.sectorsize);
  assert.equal(t.diskId, want.label === 'dos' ? want.id.replace(/^0x/, '') : want.id.toLowerCase());
  const got = [...t.partitions].sort((a, b) => a.number - b.number);
  assert.deepEqual(
    got.map((p) => p.number),
    want.partitions.map((p) => Number(p.node.slice(file.length))),
  );
  for (const [i, w] of want.partitions.entries()) {
    const p = got[i]!;
    assert.equal(p.start, w.start * want.sectorsize, `partition ${p.number} start`);
    assert.equal(p.size, w.size * want.sectorsize, `partition ${p.number} size`);
    if (want.label === 'dos') {
      assert.equal(parseInt(p.type, 16), parseInt(w.type, 16), `partition ${p.number} type`);
      assert.equal(p.bootable, w.bootable === true, `partition ${p.number} bootable`);
      assert.equal(p.uuid, `${t.diskId}-${p.number.toString(16).padStart(2, '0')}`);
    } else {
      assert.equal(p.type, w.type.toLowerCase(), `partition ${p.number} type`);
      assert.equal(p.uuid, w.uuid!.toLowerCase(), `partition ${p.number} uuid`);
      assert.equal(p.name, w.name, `partition ${p.number} name`);
      assert.deepEqual(p.attributes, w.attrs ? w.attrs.split(' ') : [], `partition ${p.number} attrs`);
    }
  }
}

test('MBR primaries read as sfdisk lists them, with Linux PARTUUIDs (blkid) and friendly type names', async (t) => {
  const dir = await tempDir(t);
  const file = await sfdiskDisk(dir, 'dos.raw', 64 * MiB, 'label: dos\nlabel-id: 0x1a2b3c4d\nstart=2048, size=16384, type=ef, bootable\nsize=8M, type=83\nsize=4M, type=82\nsize=20M, type=8e\n');
  const table = await readTable(file);
  assertMatchesSfdisk(table, file);
  assert.deepEqual(
    table.partitions.map((p) => p.typeName),
    ['efi', 'linux', 'swap', 'lvm'],
  );
  assert.deepEqual(table.bootCode, { present: false });
  assert.deepEqual(table.warnings, []);
  // blkid names the disk by the same PTUUID, and its partitions' PARTUUIDs are formed from it
  assert.equal(blkid(file).PTUUID, '1a2b3c4d');
  assert.equal(table.partitions[0]!.uuid, '1a2b3c4d-01');
});

test('MBR extended partition with a chain of logical partitions numbered from 5', async (t) => {
  const dir = await tempDir(t);
  const file = await sfdiskDisk(
    dir,
    'ext.raw',
    128 * MiB,
    'label: dos\nlabel-id: 0xcafe0001\nstart=2048, size=8M, type=83, bootable\nsize=8M, type=82\nsize=4M, type=c\nsize=100M, type=5\nsize=10M, type=83\nsize=20M, type=8e\nsize=30M, type=7\n',
  );
  const table = await readTable(file);
  assertMatchesSfdisk(table, file);
  const logical = table.partitions.filter((p) => p.logical);
  assert.deepEqual(
    logical.map((p) => [p.number, p.typeName, p.uuid]),
    [
      [5, 'linux', 'cafe0001-05'],
      [6, 'lvm', 'cafe0001-06'],
      [7, 'ntfs', 'cafe0001-07'],
    ],
  );
  assert.deepEqual(
    table.partitions.filter((p) => !p.logical).map((p) => p.typeName),
    ['linux', 'swap', 'fat32', 'extended'],
  );
});

test('GPT with 40 entries, names, types and attributes reads as sfdisk lists it', async (t) => {
  const dir = await tempDir(t);
  const types = ['U', 'L', 'S', 'V', '21686148-6449-6E6F-744E-656564454649', 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7', 'E3C9E316-0B5C-4DB8-817D-F92DF00215AE'];
  let script = 'label: gpt\nlabel-id: 01234567-89AB-CDEF-0123-456789ABCDEF\ntable-length: 160\n';
  for (let i = 0; i < 40; i++) {
    const attrs = i % 5 === 0 ? ', attrs="LegacyBIOSBootable"' : i % 7 === 0 ? ', attrs="RequiredPartition GUID:60 GUID:63"' : '';
    script += `size=1M, type=${types[i % types.length]}, name="part ${i} é"${attrs}\n`;
  }
  const file = await sfdiskDisk(dir, 'gpt.raw', 64 * MiB, script);
  const table = await readTable(file);
  assertMatchesSfdisk(table, file);
  assert.equal(table.partitions.length, 40);
  assert.equal(table.diskId, '01234567-89ab-cdef-0123-456789abcdef');
  assert.deepEqual(
    table.partitions.slice(0, 7).map((p) => p.typeName),
    ['efi', 'linux', 'swap', 'lvm', 'bios-boot', 'microsoft-basic-data', 'msr'],
  );
  assert.equal(table.partitions[0]!.bootable, true);
  assert.equal(table.partitions[1]!.bootable, false);
  assert.deepEqual(table.warnings, []);
  // a protective MBR, and blkid agrees on the disk GUID
  assert.equal(blkid(file).PTUUID, '01234567-89ab-cdef-0123-456789abcdef');
});

test('GPT with 4096-byte sectors (made by fdisk -b 4096) is detected and read in 4 KiB LBAs', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, '4k.raw');
  sh('truncate', ['-s', String(64 * MiB), file]);
  sh('fdisk', ['-b', '4096', file], 'g\nn\n\n\n+4M\nn\n\n\n+8M\nt\n2\n1\nw\n');
  const table = await readTable(file);
  assert.equal(table.scheme, 'gpt');
  assert.equal(table.sectorSize, 4096);
  // fdisk -l: "4k.raw1  256  1279  1024  4M Linux filesystem"
  const rows = sh('fdisk', ['-b', '4096', '-l', file])
    .split('\n')
    .filter((l) => l.startsWith(file))
    .map((l) => l.slice(file.length).trim().split(/\s+/));
  assert.equal(rows.length, 2);
  for (const [i, r] of rows.entries()) {
    const p = table.partitions[i]!;
    assert.equal(p.number, Number(r[0]));
    assert.equal(p.start, Number(r[1]) * 4096);
    assert.equal(p.size, Number(r[3]) * 4096);
  }
  assert.deepEqual(
    table.partitions.map((p) => p.typeName),
    ['linux', 'efi'],
  );
});

test('boot code in the MBR is named: GRUB 2 boot.img, syslinux mbr.bin and gptmbr.bin; Windows by its messages', async (t) => {
  const dir = await tempDir(t);
  const loaders: [string, string, string][] = [
    ['/usr/lib/grub/i386-pc/boot.img', 'dos', 'grub2'],
    ['/usr/lib/syslinux/mbr/mbr.bin', 'dos', 'syslinux'],
    ['/usr/lib/syslinux/mbr/gptmbr.bin', 'gpt', 'syslinux-gpt'],
  ];
  for (const [bin, label, loader] of loaders) {
    const file = await sfdiskDisk(dir, `${loader}.raw`, 16 * MiB, `label: ${label}\nsize=4M, type=${label === 'dos' ? '83' : 'L'}\n`);
    const code = (await readFile(bin)).subarray(0, 440);
    const disk = await readFile(file);
    code.copy(disk, 0);
    await writeFile(file, disk);
    const table = await readTable(file);
    assert.deepEqual(table.bootCode, { present: true, loader }, bin);
    assert.equal(table.partitions.length, 1, 'the boot code leaves the table readable');
  }
  // Windows' MBR cannot be had from Debian: its message table, at the offsets Windows 7's MBR
  // keeps them, stands in for it
  const win = Buffer.alloc(512);
  win.set([0x33, 0xc0, 0x8e, 0xd0, 0xbc, 0x00, 0x7c], 0);
  win.write('Invalid partition table\0Error loading operating system\0Missing operating system\0', 0x163, 'latin1');
  assert.deepEqual(identifyBootCode(win), { present: true, loader: 'windows' });
  const unknown = Buffer.alloc(512);
  unknown[0] = 0xeb;
  assert.deepEqual(identifyBootCode(unknown), { present: true });
});

test('a whole-disk FAT file system (no partition table) reads as scheme none', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'superfloppy.raw');
  sh('truncate', ['-s', String(16 * MiB), file]);
  sh('mkfs.vfat', [file]);
  const table = await readTable(file);
  assert.equal(table.scheme, 'none');
  assert.deepEqual(table.partitions, []);
  const blank = join(dir, 'blank.raw');
  sh('truncate', ['-s', String(MiB), blank]);
  assert.deepEqual(await readTable(blank), { scheme: 'none', sectorSize: 512, partitions: [], bootCode: { present: false }, warnings: [] });
});

test('partitionVolume gives a bounded view of one partition, named after the disk', async (t) => {
  const dir = await tempDir(t);
  const file = await sfdiskDisk(dir, 'pv.raw', 16 * MiB, 'label: gpt\nstart=2048, size=4096, type=L\nsize=4096, type=L\n');
  const disk = await readFile(file);
  disk.fill(0x11, 2048 * 512, 4096 * 512);
  disk.fill(0x22, 6144 * 512, 10240 * 512);
  await writeFile(file, disk);
  const img = await openImage(file, { format: 'raw' });
  t.after(() => img.close());
  const vol = imageVolume(img, 'disk.raw');
  const table = await readPartitions(vol);
  const p2 = partitionVolume(vol, table.partitions[1]!);
  assert.equal(p2.name, 'disk.raw partition 2');
  assert.equal(p2.size, 2 * MiB);
  assert.ok((await p2.read(0, p2.size)).every((b) => b === 0x22));
  await rejectsWith(p2.read(p2.size - 1, 2), 'ERR_RANGE', 'disk.raw partition 2');
});

// ---- hostile tables ----

/** Rewrites a GPT header's CRC (and, with `entries`, its entry array CRC first) after a patch. */
function fixGptHeader(disk: Buffer, headerAt: number, entries = false): void {
  const h = disk.subarray(headerAt, headerAt + 512);
  if (entries) {
    const at = Number(h.readBigUInt64LE(72)) * 512;
    h.writeUInt32LE(crc32(disk.subarray(at, at + h.readUInt32LE(80) * h.readUInt32LE(84))), 88);
  }
  h.writeUInt32LE(0, 16);
  h.writeUInt32LE(crc32(h.subarray(0, h.readUInt32LE(12))), 16);
}

async function gptDisk(dir: string, name: string): Promise<{ file: string; disk: Buffer; backupAt: number }> {
  const file = await sfdiskDisk(dir, name, 16 * MiB, 'label: gpt\nsize=2M, type=U, name="esp"\nsize=4M, type=L, name="root"\n');
  return { file, disk: await readFile(file), backupAt: 16 * MiB - 512 };
}

test('hostile GPT: a broken primary header or entry array falls back to the backup, with a warning', async (t) => {
  const dir = await tempDir(t);
  const { file, disk } = await gptDisk(dir, 'crc.raw');
  const good = await readTable(file);
  disk[512 + 40] ^= 1; // FirstUsableLBA: header CRC no longer matches
  await writeFile(file, disk);
  const fromBackup = await readTable(file);
  assert.deepEqual(fromBackup.partitions, good.partitions);
  assert.equal(fromBackup.diskId, good.diskId);
  assert.match(fromBackup.warnings.join('\n'), /primary GPT header at LBA 1: header CRC32 mismatch; the backup header at LBA 32767 was used/);

  const second = await gptDisk(dir, 'entries.raw');
  second.disk[1024 + 56] ^= 0xff; // a byte of entry 1's name: the entry array CRC breaks
  await writeFile(second.file, second.disk);
  const t2 = await readTable(second.file);
  assert.equal(t2.partitions[0]!.name, 'esp');
  assert.match(t2.warnings.join('\n'), /partition entry array CRC32 mismatch/);

  const third = await gptDisk(dir, 'backup.raw');
  const before = await readTable(third.file);
  third.disk[third.backupAt + 40] ^= 1;
  await writeFile(third.file, third.disk);
  const t3 = await readTable(third.file);
  assert.deepEqual(t3.partitions, before.partitions);
  assert.match(t3.warnings.join('\n'), /backup GPT header at LBA 32767: header CRC32 mismatch/);
});

test('hostile GPT: both headers broken, entries past the end of the disk, absurd entry arrays', async (t) => {
  const dir = await tempDir(t);
  const both = await gptDisk(dir, 'both.raw');
  both.disk[512 + 40] ^= 1;
  both.disk[both.backupAt + 40] ^= 1;
  await writeFile(both.file, both.disk);
  await rejectsWith(readTable(both.file), 'ERR_CORRUPT', 'both.raw', 'no valid GPT', 'header CRC32 mismatch');

  const past = await gptDisk(dir, 'past.raw');
  // entry 2's ending LBA beyond the disk, in both copies of the entry array, CRCs made right
  for (const [entriesAt, headerAt] of [
    [1024, 512],
    [past.backupAt - 32 * 512, past.backupAt],
  ] as const) {
    past.disk.writeBigUInt64LE(40000n, entriesAt + 128 + 40);
    fixGptHeader(past.disk, headerAt, true);
  }
  await writeFile(past.file, past.disk);
  await rejectsWith(readTable(past.file), 'ERR_CORRUPT', 'past.raw', 'GPT partition entry 2', 'past the end of the disk');

  const absurd = await gptDisk(dir, 'absurd.raw');
  for (const headerAt of [512, absurd.backupAt]) {
    absurd.disk.writeUInt32LE(0xffffffff, headerAt + 80); // NumberOfPartitionEntries
    fixGptHeader(absurd.disk, headerAt);
  }
  await writeFile(absurd.file, absurd.disk);
  await rejectsWith(readTable(absurd.file), 'ERR_CORRUPT', 'absurd.raw', '4294967295 partition entries');

  const size = await gptDisk(dir, 'entrysize.raw');
  for (const headerAt of [512, size.backupAt]) {
    size.disk.writeUInt32LE(100, headerAt + 84); // SizeOfPartitionEntry not 128 * 2^n
    fixGptHeader(size.disk, headerAt);
  }
  await writeFile(size.file, size.disk);
  await rejectsWith(readTable(size.file), 'ERR_CORRUPT', 'entrysize.raw', 'partition entry size 100');

  // a protective MBR with no GPT behind it
  const none = await gptDisk(dir, 'nogpt.raw');
  none.disk.fill(0, 512, 1024);
  none.disk.fill(0, none.backupAt, none.backupAt + 512);
  await writeFile(none.file, none.disk);
  await rejectsWith(readTable(none.file), 'ERR_CORRUPT', 'nogpt.raw', 'no "EFI PART" signature');
});

test('hostile MBR: an EBR chain that loops, a partition past the end of the disk, a tiny disk', async (t) => {
  const dir = await tempDir(t);
  const file = await sfdiskDisk(dir, 'loop.raw', 128 * MiB, 'label: dos\nsize=8M, type=83\nsize=8M, type=83\nsize=8M, type=83\nsize=40M, type=5\nsize=10M, type=83\nsize=10M, type=83\n');
  const disk = await readFile(file);
  assert.equal((await readTable(file)).partitions.length, 6);
  const ext = disk.readUInt32LE(446 + 3 * 16 + 8);
  // the second EBR's link points back at the first EBR
  const ebr1 = ext * 512;
  const ebr2 = (ext + disk.readUInt32LE(ebr1 + 446 + 16 + 8)) * 512;
  disk.writeUInt32LE(0, ebr2 + 446 + 16 + 8);
  disk[ebr2 + 446 + 16 + 4] = 0x05;
  disk.writeUInt32LE(100, ebr2 + 446 + 16 + 12);
  await writeFile(file, disk);
  await rejectsWith(readTable(file), 'ERR_CORRUPT', 'loop.raw', 'EBR', 'loops back');

  const past = await sfdiskDisk(dir, 'past.raw', 16 * MiB, 'label: dos\nsize=8M, type=83\n');
  const d2 = await readFile(past);
  d2.writeUInt32LE(40000, 446 + 12);
  await writeFile(past, d2);
  await rejectsWith(readTable(past), 'ERR_CORRUPT', 'past.raw', 'MBR partition record 1', 'past the end of the disk');

  const tiny = join(dir, 'tiny.raw');
  await writeFile(tiny, Buffer.alloc(100));
  await rejectsWith(readTable(tiny), 'ERR_TRUNCATED', 'tiny.raw');
});

test('mutants of MBR (with an EBR chain) and GPT disks are read or refused with a coded error', async (t) => {
  const dir = await tempDir(t);
  const dos = await sfdiskDisk(dir, 'fuzz-dos.raw', 16 * MiB, 'label: dos\nsize=2M, type=83\nsize=2M, type=83\nsize=2M, type=83\nsize=8M, type=5\nsize=2M, type=83\nsize=2M, type=83\n');
  const logical = sfdiskJson(dos).partitions.filter((p) => Number(p.node.slice(dos.length)) >= 5);
  // sfdisk places each EBR 2048 sectors before its logical partition
  const ebrs = logical.map((p): [number, number] => [(p.start - 2048) * 512, (p.start - 2048) * 512 + 512]);
  const gpt = await sfdiskDisk(dir, 'fuzz-gpt.raw', 16 * MiB, 'label: gpt\nsize=2M, type=U, name="esp"\nsize=4M, type=L\nsize=1M, type=S\n');
  const read = async (v: Volume) => {
    const table = await readPartitions(v);
    for (const p of table.partitions) await partitionVolume(v, p).read(p.size - 1, 1);
  };
  for (const [file, regions] of [
    [dos, [[0, 512], ...ebrs]],
    [gpt, [[0, 34 * 512], [16 * MiB - 33 * 512, 16 * MiB]]],
  ] as [string, [number, number][]][]) {
    const stats = await fuzzMutants(await readFile(file), regions, 0x5eed, read);
    t.diagnostic(`${file}: ${JSON.stringify(stats)}`);
  }
});

test('GPT oddities that still read: no protective MBR, a disk grown after partitioning', async (t) => {
  const dir = await tempDir(t);
  const { file, disk } = await gptDisk(dir, 'nopmbr.raw');
  const good = await readTable(file);
  disk.fill(0, 0, 512);
  await writeFile(file, disk);
  const t1 = await readTable(file);
  assert.deepEqual(t1.partitions, good.partitions);
  assert.match(t1.warnings.join('\n'), /without a protective MBR/);

  const grown = await gptDisk(dir, 'grown.raw');
  const before = await readTable(grown.file);
  sh('truncate', ['-s', String(32 * MiB), grown.file]);
  const t2 = await readTable(grown.file);
  assert.deepEqual(t2.partitions, before.partitions);
  assert.deepEqual(t2.warnings, ['the primary GPT header places its backup at LBA 32767, not at the last LBA 65535 (was the disk resized?)']);
});
