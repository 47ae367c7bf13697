#!/usr/bin/env node
/**
 * The Debian packages Polyvisor and its tests use: one list, read by `npm start`
 * (scripts/start.mjs) and by CI (.ci/run). Each entry is found by a command on the PATH or a
 * file, so a machine that has the tool by other means is not asked to install it.
 *
 * Run as a script: installs what is missing with apt-get when running as root, otherwise
 * prints the apt-get line and exits 1.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** `use`: 'build' (needed to build Polyvisor), 'run' (the local engine and npm start), 'test' (tests and benchmarks only) */
export const DEBIAN = [
  { cmd: 'g++', pkg: 'g++', use: 'build', why: 'builds the native addons (lseek SEEK_DATA/SEEK_HOLE, better-sqlite3)' },
  { cmd: 'make', pkg: 'make', use: 'build', why: 'builds the native addons' },
  { cmd: 'python3', pkg: 'python3', use: 'build', why: 'node-gyp needs it to build the native addons' },
  { cmd: 'qemu-img', pkg: 'qemu-utils', use: 'run', why: 'the oracle of the disk tests and the peer of the benchmark; creates overlays for the local engine' },
  { cmd: 'qemu-system-x86_64', pkg: 'qemu-system-x86', use: 'run', why: 'the local engine that runs VMs' },
  { file: '/usr/share/OVMF/OVMF_CODE_4M.fd', pkg: 'ovmf', use: 'run', why: 'UEFI firmware for the local engine' },
  { cmd: 'cpio', pkg: 'cpio', use: 'run', why: "builds the sample guest's initramfs" },
  { cmd: 'depmod', pkg: 'kmod', use: 'run', why: "resolves the sample guest's kernel modules" },
  { cmd: 'sfdisk', pkg: 'fdisk', use: 'run', why: "partitions the sample VM's boot disk; the oracle of the partition tests" },
  { cmd: 'mkfs.vfat', pkg: 'dosfstools', use: 'run', why: "formats the sample VM's boot partition; the FAT tests' oracle" },
  { cmd: 'mcopy', pkg: 'mtools', use: 'run', why: 'copies files into FAT without mounting; the FAT tests\' oracle' },
  { cmd: 'syslinux', pkg: 'syslinux', use: 'run', why: "the sample VM's boot loader" },
  { file: '/usr/lib/syslinux/mbr/mbr.bin', pkg: 'syslinux-common', use: 'run', why: "the sample VM's MBR boot code" },
  { cmd: 'ssh', pkg: 'openssh-client', use: 'run', why: 'reaches Xen hosts (xen+ssh://) and the nested test host' },
  { cmd: 'virt-xml-validate', pkg: 'libvirt-clients', use: 'test', why: "checks libvirt XML against libvirt's own schema" },
  { cmd: 'xmllint', pkg: 'libxml2-utils', use: 'test', why: 'virt-xml-validate runs it' },
  { cmd: 'nbdinfo', pkg: 'libnbd-bin', use: 'test', why: 'an independent NBD client' },
  { cmd: 'blkid', pkg: 'util-linux', use: 'test', why: 'the oracle of volume probing' },
  { cmd: 'debugfs', pkg: 'e2fsprogs', use: 'test', why: 'mke2fs, debugfs and e2fsck: the ext2/3/4 oracles' },
  { cmd: 'pvck', pkg: 'lvm2', use: 'test', why: 'the LVM2 oracle' },
  { cmd: 'mkfs.xfs', pkg: 'xfsprogs', use: 'test', why: 'XFS volumes for the probe tests' },
  { cmd: 'mkfs.btrfs', pkg: 'btrfs-progs', use: 'test', why: 'Btrfs volumes for the probe tests' },
  { cmd: 'cryptsetup', pkg: 'cryptsetup-bin', use: 'test', why: 'LUKS volumes for the probe tests' },
  { cmd: 'mkfs.ntfs', pkg: 'ntfs-3g', use: 'test', why: 'NTFS volumes for the probe and Windows tests (mkntfs, ntfscat, and ntfs-3g over FUSE to fill the Windows fixture)' },
  { cmd: 'fusermount', pkg: 'fuse3', use: 'test', why: 'unmounts the Windows fixture volume ntfs-3g mounts' },
  { cmd: 'hivexget', pkg: 'libhivex-bin', use: 'test', why: "hivex: the oracle of the registry hive reader and writer" },
  { cmd: 'hivexregedit', pkg: 'libwin-hivex-perl', use: 'test', why: 'builds the registry hives of the Windows tests from .reg text' },
  { file: '/usr/lib/grub/i386-pc/boot.img', pkg: 'grub-pc-bin', use: 'run', why: "GRUB's BIOS images: guest adaptation installs GRUB into guests that have no boot code" },
  { cmd: 'grub-mkimage', pkg: 'grub-common', use: 'run', why: "builds GRUB's core image for guest adaptation" },
  { cmd: 'zstd', pkg: 'zstd', use: 'run', why: 'reads and writes zstd-compressed guest initramfs (the Debian 12 default)' },
  { cmd: 'xz', pkg: 'xz-utils', use: 'run', why: 'reads xz-compressed guest initramfs' },
  { cmd: 'bzip2', pkg: 'bzip2', use: 'run', why: 'reads bzip2-compressed guest initramfs' },
  { cmd: 'lz4', pkg: 'lz4', use: 'run', why: 'reads lz4-compressed guest initramfs' },
  { cmd: 'chromium', pkg: 'chromium', use: 'test', why: "the real browser the web console's end-to-end tests drive (playwright-core; no browser download)" },
  { file: '/usr/lib/postgresql/15/bin/initdb', pkg: 'postgresql', use: 'test', why: 'a throw-away PostgreSQL server for the store and server tests on PostgreSQL' },
  { cmd: 'debootstrap', pkg: 'debootstrap', use: 'test', why: 'installs the Debian test guests and the nested Xen host' },
  { cmd: 'lsinitramfs', pkg: 'initramfs-tools-core', use: 'test', why: 'lists the test guests\' initramfs' },
];

function have(entry) {
  if (entry.file) return existsSync(entry.file);
  return spawnSync('sh', ['-c', `command -v ${entry.cmd}`], { stdio: 'ignore' }).status === 0;
}

export function missingPackages(uses = ['build', 'run', 'test']) {
  return DEBIAN.filter((d) => uses.includes(d.use) && !have(d));
}

/** Installs the missing packages as root; returns the entries still missing (not root). */
export function installPackages(missing, log = (s) => process.stdout.write(s)) {
  const pkgs = [...new Set(missing.map((m) => m.pkg))];
  if (pkgs.length === 0) return [];
  if (process.getuid && process.getuid() === 0 && spawnSync('sh', ['-c', 'command -v apt-get'], { stdio: 'ignore' }).status === 0) {
    log(`installing Debian packages: ${pkgs.join(' ')}\n`);
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
    execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...pkgs], { stdio: 'inherit', env });
    return [];
  }
  return missing;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const left = installPackages(missingPackages());
  if (left.length) {
    console.error('These Debian packages are missing:');
    for (const m of left) console.error(`  ${m.pkg.padEnd(20)} ${m.why}`);
    console.error(`Install them with:  sudo apt-get install ${[...new Set(left.map((m) => m.pkg))].join(' ')}`);
    process.exit(1);
  }
}
