/**
 * The Debian test guests (./debian.ts) as built, read with Debian's own tools and no boot:
 * sfdisk for the partition table, debugfs for the installed system inside the ext4 file
 * system (at the partition's offset, no mount), lsinitramfs for the initramfs, and GRUB's
 * own boot.img and diskboot.img (grub-pc-bin) for the boot code in the first sectors.
 */
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { open, readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import { buildDebianGuest, pygrub, DEBIAN_KINDS, DEBIAN_MARKER, type DebianGuest, type DebianKind } from './debian.js';
import { tempDir } from '../helpers.js';

const run = promisify(execFile);
const PART_OFFSET = 1 << 20;
const GRUB_I386_PC = '/usr/lib/grub/i386-pc';

/** Runs a debugfs request against the guest's root file system; a failed lookup throws. */
async function debugfs(disk: string, request: string): Promise<string> {
  const { stdout, stderr } = await run('debugfs', ['-R', request, `${disk}?offset=${PART_OFFSET}`], { maxBuffer: 64 << 20 });
  const errors = stderr.split('\n').filter((l) => l.trim() && !/^debugfs \d/.test(l));
  if (errors.length) throw new Error(`debugfs ${request}: ${errors.join('; ')}`);
  return stdout;
}

async function readSectors(file: string, first: number, count: number): Promise<Buffer> {
  const fh = await open(file, 'r');
  try {
    const b = Buffer.alloc(count * 512);
    await fh.read(b, 0, b.length, first * 512);
    return b;
  } finally {
    await fh.close();
  }
}

/** Module file names (without .ko) in an initramfs, as lsinitramfs lists it. */
async function initramfsModules(initrd: string): Promise<Set<string>> {
  const { stdout } = await run('lsinitramfs', [initrd], { maxBuffer: 64 << 20 });
  return new Set(stdout.split('\n').filter((f) => /\.ko(\.[xg]z|\.zst)?$/.test(f)).map((f) => basename(f).replace(/\.ko.*$/, '')));
}

// the disk and NIC drivers a guest may carry; each kind must carry exactly its own
const STORAGE = ['xen-blkfront', 'virtio_blk', 'virtio_scsi', 'vmw_pvscsi', 'sd_mod', 'ahci', 'ata_piix', 'nvme', 'hv_storvsc', 'mptspi', 'megaraid_sas'];
const NICS = ['xen-netfront', 'virtio_net', 'vmxnet3', 'e1000', 'e1000e', 'hv_netvsc'];

const EXPECT: Record<DebianKind, { root: string; storage: string[]; nics: string[]; consoles: string[]; gettys: string[]; grubInMbr: boolean }> = {
  'xen-pv': { root: '/dev/xvda1', storage: ['xen-blkfront'], nics: ['xen-netfront'], consoles: ['console=hvc0'], gettys: ['hvc0'], grubInMbr: false },
  kvm: { root: '/dev/vda1', storage: ['virtio_blk', 'virtio_scsi'], nics: ['virtio_net'], consoles: ['console=ttyS0'], gettys: ['ttyS0'], grubInMbr: true },
  vmware: { root: '/dev/sda1', storage: ['vmw_pvscsi', 'sd_mod'], nics: ['vmxnet3'], consoles: ['console=tty0', 'console=ttyS0'], gettys: ['ttyS0'], grubInMbr: true },
};

describe('Debian test guests: what the built images hold', () => {
  const guests = {} as Record<DebianKind, DebianGuest>;
  before(async () => {
    for (const kind of DEBIAN_KINDS) guests[kind] = await buildDebianGuest(kind);
  });

  for (const kind of DEBIAN_KINDS) {
    const want = EXPECT[kind];

    test(`${kind}: an MBR with one ext4 partition at 1 MiB, with its fixed UUID`, async () => {
      const g = guests[kind];
      assert.equal(g.kind, kind);
      assert.equal(g.rootDevice, want.root);
      assert.equal(g.marker, `${DEBIAN_MARKER} ${kind} ${want.root}`);
      const { stdout } = await run('sfdisk', ['--json', g.disk]);
      const table = JSON.parse(stdout).partitiontable;
      assert.equal(table.label, 'dos');
      assert.equal(table.partitions.length, 1);
      assert.equal(table.partitions[0].start, 2048);
      assert.equal(table.partitions[0].type, '83');
      const stats = await debugfs(g.disk, 'stats');
      assert.match(stats, new RegExp(`Filesystem UUID:\\s+${g.rootUuid}`));
      assert.match(stats, /Filesystem features:.*\bextent\b/);
    });

    test(`${kind}: fstab, kernel command line and consoles name ${want.root}`, async () => {
      const g = guests[kind];
      const fstab = (await debugfs(g.disk, 'cat /etc/fstab')).split('\n').filter((l) => l.trim() && !l.startsWith('#'));
      assert.deepEqual(fstab.map((l) => l.split(/\s+/).slice(0, 3)), [[want.root, '/', 'ext4']]);
      const cfg = await debugfs(g.disk, 'cat /boot/grub/grub.cfg');
      const linux = /^\s*linux\s+(\S+)\s+(.*)$/m.exec(cfg);
      assert.ok(linux, cfg);
      assert.equal(linux[1], `/boot/vmlinuz-${g.kernelVersion}`);
      const args = linux[2]!.trim().split(/\s+/);
      assert.ok(args.includes(`root=${want.root}`), linux[2]);
      assert.deepEqual(args.filter((a) => a.startsWith('console=')), want.consoles);
      assert.match(cfg, new RegExp(`^\\s*initrd\\s+/boot/initrd\\.img-${g.kernelVersion.replace(/\./g, '\\.')}$`, 'm'));
      for (const tty of want.gettys) {
        assert.match(await debugfs(g.disk, `stat /etc/systemd/system/getty.target.wants/serial-getty@${tty}.service`), /Type: symlink/);
      }
    });

    test(`${kind}: the marker unit is enabled and prints "${DEBIAN_MARKER} ${kind} <root>"`, async () => {
      const g = guests[kind];
      const unit = await debugfs(g.disk, 'cat /etc/systemd/system/polyvisor-marker.service');
      assert.match(unit, /^After=local-fs\.target$/m);
      assert.match(unit, /^WantedBy=multi-user\.target$/m);
      assert.match(await debugfs(g.disk, 'stat /etc/systemd/system/multi-user.target.wants/polyvisor-marker.service'), /Type: symlink/);
      const script = await debugfs(g.disk, 'cat /usr/local/sbin/polyvisor-marker');
      assert.ok(script.includes(`${DEBIAN_MARKER} ${kind} $root`), script);
      assert.match(script, /systemctl poweroff/);
    });

    test(`${kind}: the initramfs carries ${want.storage.join(' + ')} and no other disk or NIC driver`, async (t) => {
      const g = guests[kind];
      const conf = await debugfs(g.disk, 'cat /etc/initramfs-tools/initramfs.conf');
      assert.match(conf, /^MODULES=list$/m);
      // the copy beside the disk is the very initramfs installed in the guest
      const dir = await tempDir(t);
      const inside = join(dir, 'initrd.img');
      await debugfs(g.disk, `dump /boot/initrd.img-${g.kernelVersion} ${inside}`);
      assert.ok((await readFile(inside)).equals(await readFile(g.initrd)), 'the cached initrd differs from the installed one');
      const mods = await initramfsModules(g.initrd);
      assert.deepEqual(STORAGE.filter((m) => mods.has(m)), want.storage);
      assert.deepEqual(NICS.filter((m) => mods.has(m)), want.nics);
      assert.ok(mods.has('ext4'), 'no ext4 module for the root file system');
      // sd_mod needs the T10 protection-information modules or it does not load (RUNBOOK)
      if (want.storage.includes('sd_mod')) for (const m of ['t10-pi', 'crc-t10dif', 'crc64-rocksoft']) assert.ok(mods.has(m), m);
    });

    test(`${kind}: ${want.grubInMbr ? 'GRUB 2 in the MBR, core.img after it' : 'no boot code in the MBR, a grub.cfg for pygrub'}`, async () => {
      const g = guests[kind];
      const mbr = await readSectors(g.disk, 0, 1);
      assert.equal(mbr.readUInt16LE(510), 0xaa55);
      if (!want.grubInMbr) {
        assert.ok(mbr.subarray(0, 440).equals(Buffer.alloc(440)), 'the MBR has boot code');
        await assert.rejects(debugfs(g.disk, 'stat /boot/grub/i386-pc/core.img'), /not found/i);
        return;
      }
      // boot.img as grub-install's setup leaves it (grub-core/boot/i386/pc/boot.S offsets)
      const boot = await readFile(join(GRUB_I386_PC, 'boot.img'));
      assert.ok(mbr.subarray(0, 3).equals(boot.subarray(0, 3)), 'the jump to the boot code');
      assert.ok(mbr.subarray(0x68, 440).equals(boot.subarray(0x68, 440)), 'the boot code');
      assert.equal(mbr.readBigUInt64LE(0x5c), 1n, 'kernel_sector: core.img starts at LBA 1');
      assert.equal(mbr[0x64], 0xff, 'boot_drive: the drive the BIOS booted from');
      assert.deepEqual([...mbr.subarray(0x66, 0x68)], [0x90, 0x90], 'the floppy check replaced by NOPs');
      // core.img: diskboot.img first, its blocklist pointing at the rest right after it
      const core = await debugfs(g.disk, 'stat /boot/grub/i386-pc/core.img');
      const size = Number(/Size:\s+(\d+)/.exec(core)![1]);
      const sectors = Math.ceil(size / 512);
      const onDisk = await readSectors(g.disk, 1, sectors);
      const diskboot = await readFile(join(GRUB_I386_PC, 'diskboot.img'));
      assert.ok(onDisk.subarray(0, 0x1f4).equals(diskboot.subarray(0, 0x1f4)), 'sector 1 is not diskboot.img');
      assert.equal(onDisk.readBigUInt64LE(0x1f4), 2n);
      assert.equal(onDisk.readUInt16LE(0x1fc), sectors - 1);
      assert.match(await debugfs(g.disk, 'stat /boot/grub/i386-pc/normal.mod'), /Type: regular/);
    });

    test(`${kind}: Xen's pygrub reads its grub.cfg${kind === 'xen-pv' ? ' and takes out the installed kernel and initramfs' : ''}`, async (t) => {
      const g = guests[kind];
      const dir = await tempDir(t);
      const choice = await pygrub(g.disk, dir, kind !== 'xen-pv');
      assert.equal(choice.args, ['root=' + want.root, 'ro', ...want.consoles].join(' '));
      if (kind !== 'xen-pv') return;
      assert.ok(choice.kernel && choice.ramdisk, JSON.stringify(choice));
      assert.ok((await readFile(choice.kernel)).equals(await readFile(g.kernel)), 'pygrub chose another kernel');
      assert.ok((await readFile(choice.ramdisk)).equals(await readFile(g.initrd)), 'pygrub chose another initramfs');
    });

    test(`${kind}: ${kind === 'vmware' ? 'open-vm-tools is installed' : 'no VMware tools'}`, async () => {
      const status = await debugfs(guests[kind].disk, 'cat /var/lib/dpkg/status');
      const installed = /^Package: open-vm-tools\nStatus: install ok installed$/m.test(status);
      assert.equal(installed, kind === 'vmware');
      assert.match(status, /^Package: linux-image-amd64\nStatus: install ok installed$/m);
    });
  }
});
