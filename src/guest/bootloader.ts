/**
 * GRUB 2 for BIOS, installed offline into a guest that has no boot code: a Xen PV guest is
 * booted from outside (pygrub or xl's kernel=), so its MBR is empty and a BIOS finds nothing.
 *
 * What grub-install does for i386-pc (util/grub-install.c, util/setup.c), done here without
 * running anything from the guest: the core image is made by the HOST's grub-mkimage from
 * the host's grub-pc-bin modules, with just what it needs to find its prefix (biosdisk, the
 * partition map, the file system, lvm when /boot is on LVM); the modules go to
 * /boot/grub/i386-pc in the guest (normal.mod and the rest load from there); core.img goes
 * into the gap between the MBR and the first partition (MBR disks) or into the BIOS boot
 * partition (GPT disks); boot.img's first 440 bytes go into the MBR with the disk's own BPB
 * area, disk signature and partition table kept. GRUB then reads the guest's own grub.cfg.
 *
 * boot.img's fields (grub-core/boot/i386/pc/boot.S): kernel_sector (u64 at 0x5c, the LBA of
 * core.img's first sector), boot_drive (0x64: 0xff, the drive the BIOS booted from) and the
 * jump at 0x66 replaced by two NOPs on hard disks (the workaround for BIOSes that pass a bad
 * drive number). core.img's first sector is diskboot.img, whose blocklist (the sector's last
 * 12 bytes: start LBA u64, sector count u16, load segment u16) says where the rest lies.
 */
import { execFile } from 'node:child_process';
import { readdir, readFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PolyvisorError, isPolyvisorError } from '../errors.js';
import type { GuestEditor } from './manifest.js';
import type { GuestVolume } from './open.js';

/** Where Debian's grub-pc-bin keeps the i386-pc images and modules. */
export const GRUB_I386_PC = '/usr/lib/grub/i386-pc';
const SECTOR = 512;
const BOOT_CODE = 440;
/** boot.S: the BIOS parameter block area copied from the disk (grub-bios-setup keeps it) */
const BPB_START = 0x03;
const BPB_END = 0x5a;
const KERNEL_SECTOR = 0x5c;
const BOOT_DRIVE = 0x64;
const BOOT_DRIVE_CHECK = 0x66;
const BIOS_BOOT_GUID = '21686148-6449-6e6f-744e-656564454649';

export interface GrubBiosResult {
  /** GRUB was written (false: the disk had boot code already, or it could not be done) */
  installed: boolean;
  /** why it was not done, when it should have been */
  problem?: string;
  /** what is there when nothing was done */
  note?: string;
}

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 16 << 20, timeout: 120_000 }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const e = err as NodeJS.ErrnoException;
      if (e.code === 'ENOENT') reject(new PolyvisorError('ERR_HOST', `${cmd} is not installed on this host (Debian package grub-common, with grub-pc-bin for the BIOS modules)`));
      else reject(new PolyvisorError('ERR_HOST', `${cmd} ${args.join(' ')} failed: ${stderr.trim() || e.message}`));
    });
  });
}

/** GRUB's name for a volume: (hd0,msdos1), (hd1,gpt2), (lvm/vg-root). */
function grubDevice(v: GuestVolume, scheme: string): string | null {
  if (v.lv) return `(lvm/${v.lv.vg.replace(/-/g, '--')}-${v.lv.name.replace(/-/g, '--')})`;
  if (v.disk === undefined) return null;
  if (!v.partition) return `(hd${v.disk})`;
  return `(hd${v.disk},${scheme === 'gpt' ? 'gpt' : 'msdos'}${v.partition.number})`;
}

/** GRUB's module for a blkid type */
const FS_MODULE: Record<string, string> = { ext2: 'ext2', ext3: 'ext2', ext4: 'ext2', vfat: 'fat', xfs: 'xfs', btrfs: 'btrfs' };

/** Builds core.img with the host's grub-mkimage. */
export async function grubCoreImage(prefix: string, modules: string[], grubDir = GRUB_I386_PC): Promise<Buffer> {
  const dir = await mkdtemp(join(tmpdir(), 'polyvisor-grub-'));
  try {
    const out = join(dir, 'core.img');
    await run('grub-mkimage', ['-d', grubDir, '-O', 'i386-pc', '-o', out, '-p', prefix, ...modules]);
    return await readFile(out);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Installs GRUB for BIOS booting on the guest's first disk, unless that disk has boot code
 * already. /boot/grub/grub.cfg must exist (the caller writes one when the guest has none).
 */
export async function installGrubBios(editor: GuestEditor, grubDir = GRUB_I386_PC): Promise<GrubBiosResult> {
  const guest = editor.guest;
  const disk = guest.disks[0];
  if (!disk) return { installed: false, problem: 'the guest has no disk' };
  const boot = disk.table.bootCode;
  if (boot.present) return { installed: false, note: `the first disk has boot code already (${boot.loader ?? 'unrecognised'}): left as it is` };
  if (disk.table.scheme === 'none') return { installed: false, problem: 'the first disk has no partition table: a BIOS cannot boot a bare file system (give the disk an MBR first)' };
  if (!(await guest.exists('/boot/grub/grub.cfg'))) return { installed: false, problem: 'the guest has no /boot/grub/grub.cfg for GRUB to read' };
  try {
    await readFile(join(grubDir, 'boot.img'));
  } catch {
    throw new PolyvisorError('ERR_HOST', `${grubDir}/boot.img is missing: installing GRUB for BIOS needs the host's Debian package grub-pc-bin`);
  }

  const at = await guest.fs('/boot/grub');
  const device = grubDevice(at.volume, disk.table.scheme);
  const fsModule = FS_MODULE[at.volume.probe.type];
  if (!device || !fsModule) return { installed: false, problem: `/boot/grub lies on ${at.volume.name} (${at.volume.probe.type}), which GRUB's core image cannot be pointed at here` };
  const modules = ['biosdisk', disk.table.scheme === 'gpt' ? 'part_gpt' : 'part_msdos', ...(at.volume.lv ? ['lvm'] : []), fsModule];
  const core = await grubCoreImage(`${device}${at.path}`, modules, grubDir);
  const coreSectors = Math.ceil(core.length / SECTOR);
  const bl = SECTOR - 12;
  if (core.length < SECTOR || core.readUInt16LE(bl + 8) !== coreSectors - 1) {
    throw new PolyvisorError('ERR_HOST', `the host's core.img (${core.length} bytes) does not carry the blocklist diskboot.img should have`);
  }

  // where core.img goes: the post-MBR gap, or the BIOS boot partition of a GPT disk
  let coreLba: number;
  if (disk.table.scheme === 'gpt') {
    const bbp = disk.table.partitions.find((p) => p.type === BIOS_BOOT_GUID);
    if (!bbp) return { installed: false, problem: 'the first disk is GPT and has no BIOS boot partition for GRUB\'s core image: boot it with UEFI, or add one' };
    if (bbp.size < coreSectors * SECTOR) return { installed: false, problem: `the BIOS boot partition (${bbp.size} bytes) is smaller than GRUB's core image (${core.length} bytes)` };
    coreLba = bbp.start / SECTOR;
  } else {
    const first = Math.min(...disk.table.partitions.map((p) => p.start / SECTOR));
    if (1 + coreSectors > first) return { installed: false, problem: `the gap after the MBR (${first - 1} sectors) is too small for GRUB's core image (${coreSectors} sectors)` };
    const gap = await disk.volume.read(SECTOR, coreSectors * SECTOR);
    if (!gap.every((b) => b === 0)) return { installed: false, problem: 'the gap after the MBR holds data (another boot loader\'s, or a tool\'s metadata): GRUB was not written over it' };
    coreLba = 1;
  }

  // /boot/grub/i386-pc, as grub-install fills it
  for (const f of (await readdir(grubDir)).sort()) {
    if (!(f.endsWith('.mod') || f.endsWith('.lst') || f === 'boot.img')) continue;
    await editor.writeFile(`/boot/grub/i386-pc/${f}`, await readFile(join(grubDir, f)), 'GRUB for BIOS: its modules, as grub-install copies them');
  }
  await editor.writeFile('/boot/grub/i386-pc/core.img', core, 'GRUB for BIOS: the core image written to the disk');

  const patched = Buffer.from(core);
  patched.writeBigUInt64LE(BigInt(coreLba + 1), bl);
  const mbr = await disk.volume.read(0, SECTOR);
  const bootImg = await readFile(join(grubDir, 'boot.img'));
  if (bootImg.length !== SECTOR || bootImg.readUInt16LE(510) !== 0xaa55) throw new PolyvisorError('ERR_HOST', `${grubDir}/boot.img is not a 512-byte boot sector`);
  const code = Buffer.from(bootImg.subarray(0, BOOT_CODE));
  mbr.copy(code, BPB_START, BPB_START, BPB_END);
  code.writeBigUInt64LE(BigInt(coreLba), KERNEL_SECTOR);
  code[BOOT_DRIVE] = 0xff;
  code[BOOT_DRIVE_CHECK] = 0x90;
  code[BOOT_DRIVE_CHECK + 1] = 0x90;
  await editor.writeRaw(0, coreLba * SECTOR, patched, `GRUB for BIOS: core.img at LBA ${coreLba}`);
  await editor.writeRaw(0, 0, code, 'GRUB for BIOS: boot.img in the MBR (partition table and disk signature kept)');
  return { installed: true };
}

/** The first boot loader configuration the guest has (GRUB 2, then GRUB legacy paths), or null. */
export async function hasGrubConfig(editor: GuestEditor): Promise<string | null> {
  for (const p of ['/boot/grub/grub.cfg', '/boot/grub2/grub.cfg', '/boot/grub/menu.lst', '/boot/grub/grub.conf']) {
    try {
      if (await editor.guest.exists(p)) return p;
    } catch (e) {
      if (!isPolyvisorError(e)) throw e;
    }
  }
  return null;
}
