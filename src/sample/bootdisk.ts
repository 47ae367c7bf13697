/**
 * A BIOS-bootable disk made from a kernel and an initramfs, without loop devices, mounts or
 * root: an MBR partition table (sfdisk), a FAT16 partition written in place in the image file
 * (mkfs.vfat --offset, mtools' mcopy with the @@offset syntax), SYSLINUX installed into that
 * partition (syslinux --offset) and its MBR boot code (mbr.bin) in the first 440 bytes.
 * SeaBIOS boots it from any disk bus. This is the sample VM `npm start` converts and boots,
 * and the disk the tests boot from OVA and XVA packages (whose descriptors have no
 * direct-kernel-boot field, so the VM must boot from its own disk).
 *
 * Debian packages: fdisk (sfdisk), dosfstools, mtools, syslinux, syslinux-common.
 */
import { execFile } from 'node:child_process';
import { open, rename, rm, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { PolyvisorError } from '../errors.js';

const run = promisify(execFile);

/** Where Debian's syslinux-common keeps the MBR boot code. */
export const SYSLINUX_MBR = '/usr/lib/syslinux/mbr/mbr.bin';

export interface BootDiskOptions {
  kernel: string;
  initrd: string;
  /** the kernel command line; default: a serial console and power-off on panic */
  cmdline?: string;
  /** default 64 MiB */
  sizeMiB?: number;
}

const PART_START_SECTORS = 2048; // 1 MiB, where partitioning tools put the first partition

async function tool(cmd: string, args: string[], pkg: string): Promise<void> {
  try {
    await run(cmd, args, { maxBuffer: 1 << 20 });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === 'ENOENT') throw new PolyvisorError('ERR_NOT_FOUND', `${cmd} is not installed (Debian package ${pkg})`);
    throw new PolyvisorError('ERR_IO', `${cmd} ${args.join(' ')}: ${(err.stderr ?? err.message).trim()}`);
  }
}

/** Writes a raw bootable disk to `out` (atomically: built under a temporary name). */
export async function makeBootDisk(out: string, opts: BootDiskOptions): Promise<void> {
  const size = (opts.sizeMiB ?? 64) << 20;
  const tmp = `${out}.tmp-${process.pid}`;
  const cfg = `${out}.cfg-${process.pid}`;
  try {
    const fh = await open(tmp, 'w');
    await fh.truncate(size);
    await fh.close();
    await new Promise<void>((resolve, reject) => {
      const child = execFile('sfdisk', ['-q', tmp], (e) => (e ? reject(new PolyvisorError('ERR_IO', `sfdisk: ${e.message}`)) : resolve()));
      child.stdin!.end(`label: dos\nstart=${PART_START_SECTORS}, type=6, bootable\n`);
    });
    const partSectors = size / 512 - PART_START_SECTORS;
    // mkfs.vfat counts in 1 KiB blocks; --offset in sectors
    await tool('mkfs.vfat', ['-F', '16', '-n', 'PVBOOT', '--offset', String(PART_START_SECTORS), tmp, String(partSectors / 2)], 'dosfstools');
    const cmdline = opts.cmdline ?? 'console=ttyS0 quiet panic=-1';
    await writeFile(cfg, `DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL /vmlinuz\n  INITRD /initrd.gz\n  APPEND ${cmdline}\n`);
    const img = `${tmp}@@${PART_START_SECTORS * 512}`;
    await tool('mcopy', ['-o', '-i', img, opts.kernel, '::/vmlinuz'], 'mtools');
    await tool('mcopy', ['-o', '-i', img, opts.initrd, '::/initrd.gz'], 'mtools');
    await tool('mcopy', ['-o', '-i', img, cfg, '::/syslinux.cfg'], 'mtools');
    await tool('syslinux', ['--offset', String(PART_START_SECTORS * 512), '--install', tmp], 'syslinux');
    // the MBR's boot code: the first 440 bytes, before the disk signature and partition table
    const mbr = await open(SYSLINUX_MBR, 'r').catch((e) => {
      throw new PolyvisorError('ERR_NOT_FOUND', 'SYSLINUX MBR code is not installed (Debian package syslinux-common)', { file: SYSLINUX_MBR, cause: e });
    });
    const code = Buffer.alloc(440);
    await mbr.read(code, 0, 440, 0);
    await mbr.close();
    const disk = await open(tmp, 'r+');
    await disk.write(code, 0, 440, 0);
    await disk.close();
    await rename(tmp, out);
  } finally {
    await rm(tmp, { force: true });
    await rm(cfg, { force: true });
  }
}
