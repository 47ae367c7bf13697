/**
 * A whole guest disk, inspected and edited in place through the disk engine: a raw disk is
 * partitioned by sfdisk (GPT: an EFI system partition, swap, an LVM2 PV with an ext4 root LV,
 * an ext4 /home), its file systems made by their own tools at their offsets, then converted to
 * qcow2 by qemu-img. Opened with openImage + imageVolume, the qcow2 must show the same
 * partitions (sfdisk --json on the raw), the same file systems (blkid -p at each offset), the
 * VG and its LV, and a file written into the ESP through the qcow2 must be there when qemu-img
 * converts it back to raw for mtools and fsck.vfat to read. No copy to raw on our side.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openImage } from '../../src/disk/chain.js';
import { FatFs } from '../../src/guest/fat.js';
import { logicalVolume, scanVolumeGroups } from '../../src/guest/lvm.js';
import { partitionVolume, readPartitions } from '../../src/guest/partition.js';
import { probeVolume } from '../../src/guest/probe.js';
import { imageVolume } from '../../src/guest/volume.js';
import { qemuImg, qemuImgStatus, tempDir } from '../helpers.js';
import { writePv } from './lvm-pv.js';
import { blkid, sh } from './oracle.js';

const MiB = 1 << 20;


const PV_UUID = 'pZ4nO3-iQ0a-X5yE-2bKc-Lr7W-uV1d-Hs8TgF';
const VG_TEXT = `guestvg {
id = "Vg0aB1-cD2e-Fg3H-iJ4k-Lm5N-oP6q-Rs7TuV"
seqno = 3
format = "lvm2"
status = ["RESIZEABLE", "READ", "WRITE"]
flags = []
extent_size = 8192
max_lv = 0
max_pv = 0
metadata_copies = 0

physical_volumes {

pv0 {
id = "${PV_UUID}"
device = "/dev/vda3"

status = ["ALLOCATABLE"]
flags = []
dev_size = 81920
pe_start = 2048
pe_count = 9
}
}

logical_volumes {

root {
id = "Lv0aB1-cD2e-Fg3H-iJ4k-Lm5N-oP6q-Rs7TuV"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
segment_count = 1

segment1 {
start_extent = 0
extent_count = 6

type = "striped"
stripe_count = 1

stripes = [
"pv0", 0
]
}
}
}
}
contents = "Text Format Volume Group"
version = 1
`;

test('a qcow2 guest disk: partitions, file systems, LVM and an ESP edit, all read through the disk engine', async (t) => {
  const dir = await tempDir(t);
  const raw = join(dir, 'guest.raw');
  sh('truncate', ['-s', String(128 * MiB), raw]);
  sh(
    'sfdisk',
    ['-q', raw],
    'label: gpt\nstart=2048, size=40M, type=U, name="EFI System Partition"\nsize=8M, type=S, name="swap"\nsize=40M, type=V, name="lvm"\ntype=L, name="home"\n',
  );
  const table0 = JSON.parse(sh('sfdisk', ['--json', raw])).partitiontable;
  const at = (n: number) => table0.partitions[n - 1].start * 512;
  const sizeOf = (n: number) => table0.partitions[n - 1].size * 512;
  // file systems at their partitions' offsets, made by their own tools
  sh('mkfs.vfat', ['-F', '32', '-s', '1', '-n', 'ESP', '--offset', String(at(1) / 512), raw, String(sizeOf(1) / 1024)]);
  sh('mmd', ['-i', `${raw}@@${at(1)}`, '::/EFI', '::/EFI/debian']);
  const cfg = join(dir, 'grub.cfg');
  await writeFile(cfg, 'search --no-floppy --fs-uuid --set=dev 1234\n');
  sh('mcopy', ['-i', `${raw}@@${at(1)}`, cfg, '::/EFI/debian/grub.cfg']);
  const swap = join(dir, 'swap.img');
  sh('truncate', ['-s', String(sizeOf(2)), swap]);
  sh('mkswap', ['-L', 'guestswap', swap]);
  sh('dd', [`if=${swap}`, `of=${raw}`, 'bs=1M', `seek=${at(2) / MiB}`, 'conv=notrunc', 'status=none']);
  // the PV: a 4 MiB-extent VG whose root LV takes extents 0-5 (24 MiB) from pe_start
  const pvFile = join(dir, 'pv.img');
  await writePv(pvFile, { uuid: PV_UUID, size: sizeOf(3), text: VG_TEXT });
  sh('dd', [`if=${pvFile}`, `of=${raw}`, 'bs=1M', `seek=${at(3) / MiB}`, 'conv=notrunc', 'status=none']);
  sh('mke2fs', ['-q', '-t', 'ext4', '-L', 'root', '-E', `offset=${at(3) + MiB}`, raw, '24M']);
  sh('mke2fs', ['-q', '-t', 'ext4', '-L', 'home', '-E', `offset=${at(4)}`, raw, `${sizeOf(4) / 1024}k`]);

  const qcow2 = join(dir, 'guest.qcow2');
  await qemuImg('convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2);
  const img = await openImage(qcow2, { writable: true });
  t.after(() => img.close());
  assert.equal(img.format, 'qcow2');
  const disk = imageVolume(img);

  const table = await readPartitions(disk);
  assert.equal(table.scheme, 'gpt');
  assert.equal(table.diskId, table0.id.toLowerCase());
  assert.deepEqual(
    table.partitions.map((p) => [p.number, p.start, p.size, p.type, p.name]),
    table0.partitions.map((p: { start: number; size: number; type: string; name: string }, i: number) => [i + 1, p.start * 512, p.size * 512, p.type.toLowerCase(), p.name]),
  );
  assert.deepEqual(
    table.partitions.map((p) => p.typeName),
    ['efi', 'swap', 'lvm', 'linux'],
  );

  // every partition's signature as blkid finds it at that offset of the raw disk
  const vols = table.partitions.map((p) => partitionVolume(disk, p));
  for (const [i, v] of vols.entries()) {
    const want = blkid(raw, table.partitions[i]!.start);
    const got = await probeVolume(v);
    assert.deepEqual([got.type, got.uuid, got.label], [want.TYPE, want.UUID, want.LABEL], v.name);
    assert.equal(v.name, `${qcow2} partition ${i + 1}`);
  }

  // LVM inside partition 3, and the ext4 in its root LV
  const [vg] = await scanVolumeGroups(vols);
  assert.equal(vg!.name, 'guestvg');
  assert.equal(vg!.pvs[0]!.volume, vols[2]);
  const root = logicalVolume(vg!, 'root');
  assert.equal(root.size, 24 * MiB);
  const rootProbe = await probeVolume(root);
  const rootBlkid = blkid(raw, at(3) + MiB);
  assert.deepEqual([rootProbe.type, rootProbe.uuid, rootProbe.label], ['ext4', rootBlkid.UUID, 'root']);

  // edit the ESP through the qcow2, then let qemu-img, mtools and fsck.vfat judge the result
  const esp = await FatFs.open(vols[0]!);
  assert.equal((await esp.readFile('/EFI/debian/grub.cfg')).toString(), 'search --no-floppy --fs-uuid --set=dev 1234\n');
  await esp.writeFile('/EFI/debian/grub.cfg', Buffer.from(`search --no-floppy --fs-uuid --set=dev ${rootProbe.uuid}\n`));
  await esp.flush();
  await img.flush();
  assert.equal(qemuImgStatus('check', qcow2).status, 0);
  const back = join(dir, 'back.raw');
  await qemuImg('convert', '-f', 'qcow2', '-O', 'raw', qcow2, back);
  assert.equal(sh('mtype', ['-i', `${back}@@${at(1)}`, '::/EFI/debian/grub.cfg']), `search --no-floppy --fs-uuid --set=dev ${rootProbe.uuid}\n`);
  const espRaw = join(dir, 'esp.img');
  sh('dd', [`if=${back}`, `of=${espRaw}`, 'bs=1M', `skip=${at(1) / MiB}`, `count=${sizeOf(1) / MiB}`, 'status=none']);
  const fsck = spawnSync('fsck.vfat', ['-n', espRaw], { encoding: 'utf8' });
  assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
});
