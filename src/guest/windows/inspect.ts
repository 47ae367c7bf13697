/**
 * Windows guests, inspected offline: what Windows it is, how it boots, which disk drivers
 * start at boot, which hypervisors' tools are installed, and whether it boots on each target.
 *
 * Everything comes from the disk: the SYSTEM and SOFTWARE hives in \Windows\System32\config
 * (read by regf.ts from NTFS by ntfs.ts), the boot files (bootmgr and \Boot\BCD on an NTFS
 * system partition for BIOS; \EFI\Microsoft\Boot\bootmgfw.efi on the EFI system partition for
 * UEFI) and the drivers' files in System32\drivers. Nothing of the guest runs.
 *
 * Facts, by their registry homes (Microsoft's documentation of each value):
 * - version: SOFTWARE\Microsoft\Windows NT\CurrentVersion: ProductName, EditionID,
 *   InstallationType, CurrentMajorVersionNumber and CurrentMinorVersionNumber (Windows 10 and
 *   later), else CurrentVersion ("6.1", "6.3"), CurrentBuild;
 * - the control set Windows boots: SYSTEM\Select\Current (N -> ControlSet00N);
 * - a driver: ControlSet00N\Services\NAME: Start (0 boot, 1 system, 2 automatic, 3 on demand,
 *   4 disabled), Type, ImagePath (default System32\drivers\NAME.sys). Only a driver that
 *   starts at boot (0) is loaded by the boot loader: the boot disk's controller driver must
 *   have Start 0, or Windows stops with INACCESSIBLE_BOOT_DEVICE (0x7B);
 * - the architecture: ControlSet00N\Control\Session Manager\Environment\PROCESSOR_ARCHITECTURE.
 */
import { PolyvisorError, isPolyvisorError } from '../../errors.js';
import type { GuestFs } from '../fs.js';
import { openGuest, type Guest, type GuestSource, type GuestVolume } from '../open.js';
import type { Blocker, Firmware, Target, Verdict } from '../verdict.js';
import { TARGETS } from '../verdict.js';
import { NtfsFs } from './ntfs.js';
import { Hive, type RegKey } from './regf.js';

export const SYSTEM_HIVE = '/Windows/System32/config/SYSTEM';
export const SOFTWARE_HIVE = '/Windows/System32/config/SOFTWARE';
const MAX_HIVE_FILE = 512 << 20;

export type DriverRole = 'storage' | 'bus' | 'network' | 'tools';

/** The drivers inspection reports, with what each is. */
export const STORAGE_DRIVERS: Record<string, { role: DriverRole; what: string }> = {
  intelide: { role: 'storage', what: 'Intel PIIX IDE controller' },
  atapi: { role: 'storage', what: 'IDE/ATAPI channel (port driver for IDE disks)' },
  pciide: { role: 'storage', what: 'generic PCI IDE controller' },
  msahci: { role: 'storage', what: 'AHCI SATA controller (Windows 7)' },
  storahci: { role: 'storage', what: 'AHCI SATA controller (Windows 8 and later)' },
  stornvme: { role: 'storage', what: 'NVMe controller' },
  LSI_SAS: { role: 'storage', what: 'LSI Logic SAS (VMware "LSI Logic SAS")' },
  LSI_SCSI: { role: 'storage', what: 'LSI Logic parallel SCSI (VMware "LSI Logic")' },
  pvscsi: { role: 'storage', what: 'VMware Paravirtual SCSI' },
  vmbus: { role: 'bus', what: 'Hyper-V VMBus' },
  storvsc: { role: 'storage', what: 'Hyper-V synthetic SCSI (storvsc)' },
  viostor: { role: 'storage', what: 'virtio-blk (virtio-win)' },
  vioscsi: { role: 'storage', what: 'virtio-scsi (virtio-win)' },
  xenbus: { role: 'bus', what: 'Xen PV bus' },
  xenvbd: { role: 'storage', what: 'Xen PV block device' },
};

/** Hypervisor tools: the services that show each is installed. */
export const TOOLS: { name: string; hypervisor: 'vmware' | 'xen' | 'hyperv' | 'kvm'; services: string[]; software?: string[] }[] = [
  { name: 'VMware Tools', hypervisor: 'vmware', services: ['VMTools', 'VGAuthService', 'vmvss', 'vm3dservice', 'vmci', 'vmhgfs', 'vmmouse', 'vmusbmouse', 'vmxnet3ndis6', 'vsock'], software: ['VMware, Inc.\\VMware Tools'] },
  { name: 'Xen PV drivers', hypervisor: 'xen', services: ['xenbus', 'xenfilt', 'xenvbd', 'xennet', 'xeniface', 'xenvif', 'xendisk', 'xenagent', 'xensvc'], software: ['Citrix\\XenTools', 'XCP-ng\\XenTools', 'Xen Project\\xenbus'] },
  { name: 'Hyper-V integration services', hypervisor: 'hyperv', services: ['vmicheartbeat', 'vmickvpexchange', 'vmicshutdown', 'vmictimesync', 'vmicvss', 'vmicguestinterface'] },
  { name: 'virtio-win drivers and QEMU guest agent', hypervisor: 'kvm', services: ['viostor', 'vioscsi', 'netkvm', 'balloon', 'vioser', 'QEMU-GA', 'qemu-ga'], software: ['Virtio-Win', 'RedHat\\Virtio-Win'] },
];

export interface WindowsDriver {
  name: string;
  role: DriverRole;
  what: string;
  /** its service key exists in the current control set */
  present: boolean;
  start?: number;
  startName?: string;
  type?: number;
  imagePath?: string;
  /** the .sys path inside the Windows volume ("/Windows/System32/drivers/x.sys") */
  file?: string;
  fileExists: boolean;
  /** loaded by the boot loader: present, Start 0 and its file there */
  atBoot: boolean;
}

export interface WindowsTools {
  name: string;
  hypervisor: 'vmware' | 'xen' | 'hyperv' | 'kvm';
  services: { name: string; start: number; startName: string }[];
  /** a service of them starts (Start below 4) */
  enabled: boolean;
}

export interface WindowsBoot {
  /** BIOS: bootmgr and \Boot\BCD on an NTFS volume (the system partition) */
  bios: { volume: string; bootmgr: boolean; bcd: boolean } | null;
  /** UEFI: the EFI system partition's Windows loader */
  uefi: { volume: string; loader: string | null; bcd: boolean } | null;
  /** what the disk shows: both, one or none */
  firmware: ('bios' | 'uefi')[];
}

export interface WindowsFacts {
  os: {
    family: 'windows';
    productName?: string;
    edition?: string;
    installationType?: string;
    /** "10.0", "6.3" */
    version?: string;
    build?: string;
    arch?: string;
  };
  /** the volume holding \Windows */
  volume: string;
  controlSet: string;
  boot: WindowsBoot;
  drivers: WindowsDriver[];
  tools: WindowsTools[];
  notes: string[];
}

export const START_NAMES = ['boot', 'system', 'automatic', 'demand', 'disabled'];
export const startName = (n: number | undefined) => (n === undefined ? 'absent' : (START_NAMES[n] ?? `unknown (${n})`));

const str = (k: RegKey | null, name: string): string | undefined => {
  const v = k?.get(name);
  return typeof v === 'string' ? v : undefined;
};
const num = (k: RegKey | null, name: string): number | undefined => {
  const v = k?.get(name);
  return typeof v === 'number' ? v : undefined;
};

export async function readHive(fs: GuestFs, path: string, options: { growable?: boolean } = {}): Promise<Hive> {
  const st = await fs.stat(path);
  if (st.size > MAX_HIVE_FILE) throw new PolyvisorError('ERR_UNSUPPORTED', `${path} is ${st.size} bytes, more than the ${MAX_HIVE_FILE} read from a hive`);
  return Hive.parse(await fs.readFile(path), `${path} on ${(fs as NtfsFs).volume?.name ?? fs.type}`, options);
}

/** "ControlSet001" from SYSTEM\Select\Current. */
export function currentControlSet(system: Hive): string {
  const n = num(system.key('Select'), 'Current');
  if (n === undefined || n < 1 || n > 999) throw new PolyvisorError('ERR_CORRUPT', `Select\\Current is ${n ?? 'missing'}: no control set to boot`, { file: system.name });
  const name = `ControlSet${String(n).padStart(3, '0')}`;
  if (!system.key(name)) throw new PolyvisorError('ERR_CORRUPT', `Select\\Current names ${name}, which does not exist`, { file: system.name });
  return name;
}

/** The .sys file a service's ImagePath names, as a path in the Windows volume. */
export function driverFile(name: string, imagePath: string | undefined): string {
  let p = (imagePath ?? `System32\\drivers\\${name}.sys`).replace(/^"|"$/g, '');
  p = p.replace(/^\\SystemRoot\\/i, '').replace(/^%SystemRoot%\\/i, '').replace(/^\\\?\?\\[A-Z]:\\Windows\\/i, '').replace(/^[A-Z]:\\Windows\\/i, '');
  if (/^[A-Z]:\\/i.test(p) || p.startsWith('\\')) return p.replace(/^[A-Z]:/i, '').replace(/\\/g, '/');
  return '/Windows/' + p.replace(/\\/g, '/');
}

export interface WindowsSystem {
  guest: Guest;
  volume: GuestVolume;
  fs: NtfsFs;
}

/** The NTFS volume that holds \Windows\System32\config\SYSTEM, opened; null when none does. */
export async function findWindows(guest: Guest, writable = false): Promise<WindowsSystem | null> {
  for (const v of guest.volumes) {
    if (v.probe.type !== 'ntfs') continue;
    let fs: NtfsFs;
    try {
      fs = await NtfsFs.open(v.volume, { readOnly: !writable });
      if (await fs.exists(SYSTEM_HIVE)) return { guest, volume: v, fs };
    } catch (e) {
      if (!isPolyvisorError(e)) throw e;
      guest.warnings.push(`${v.name}: its NTFS file system could not be read: ${e.message}`);
    }
  }
  return null;
}

async function bootFacts(guest: Guest, win: WindowsSystem, notes: string[]): Promise<WindowsBoot> {
  let bios: WindowsBoot['bios'] = null;
  let uefi: WindowsBoot['uefi'] = null;
  // the system partition: the active NTFS partition first, then the Windows volume itself
  const ntfs = guest.volumes.filter((v) => v.probe.type === 'ntfs').sort((a, b) => Number(!!b.partition?.bootable) - Number(!!a.partition?.bootable));
  for (const v of ntfs) {
    let fs: NtfsFs;
    try {
      fs = v === win.volume ? win.fs : await NtfsFs.open(v.volume, { readOnly: true });
    } catch (e) {
      if (!isPolyvisorError(e)) throw e;
      continue;
    }
    const bootmgr = await fs.exists('/bootmgr');
    const bcd = await fs.exists('/Boot/BCD');
    if (bootmgr || bcd) {
      bios = { volume: v.name, bootmgr, bcd };
      if (guest.disks[0] && v.disk !== 0) notes.push(`the BIOS boot files are on ${v.name}, not on disk 0`);
      break;
    }
  }
  for (const v of guest.volumes) {
    if (v.partition?.typeName !== 'efi' || !v.fs) continue;
    let loader: string | null = null;
    for (const p of ['/EFI/Microsoft/Boot/bootmgfw.efi', '/EFI/BOOT/BOOTX64.EFI']) {
      if (await v.fs.exists(p).catch(() => false)) {
        loader = p;
        break;
      }
    }
    uefi = { volume: v.name, loader, bcd: await v.fs.exists('/EFI/Microsoft/Boot/BCD').catch(() => false) };
    break;
  }
  const firmware: ('bios' | 'uefi')[] = [];
  if (bios?.bootmgr && bios.bcd) firmware.push('bios');
  if (uefi?.loader) firmware.push('uefi');
  return { bios, uefi, firmware };
}

/** Facts from an opened Windows system (SYSTEM and SOFTWARE read once). */
export async function windowsFacts(win: WindowsSystem): Promise<WindowsFacts> {
  const notes: string[] = [];
  const system = await readHive(win.fs, SYSTEM_HIVE);
  notes.push(...system.notes.map((n) => `SYSTEM: ${n}`));
  let software: Hive | null = null;
  try {
    software = await readHive(win.fs, SOFTWARE_HIVE);
    notes.push(...software.notes.map((n) => `SOFTWARE: ${n}`));
  } catch (e) {
    if (!isPolyvisorError(e)) throw e;
    notes.push(`SOFTWARE could not be read: ${e.message}`);
  }
  const cs = currentControlSet(system);
  const cv = software?.key('Microsoft\\Windows NT\\CurrentVersion') ?? null;
  const major = num(cv, 'CurrentMajorVersionNumber');
  const minor = num(cv, 'CurrentMinorVersionNumber');
  const os: WindowsFacts['os'] = { family: 'windows' };
  const set = <K extends keyof WindowsFacts['os']>(k: K, v: WindowsFacts['os'][K] | undefined) => {
    if (v !== undefined) os[k] = v;
  };
  set('productName', str(cv, 'ProductName'));
  set('edition', str(cv, 'EditionID'));
  set('installationType', str(cv, 'InstallationType'));
  set('version', major !== undefined ? `${major}.${minor ?? 0}` : str(cv, 'CurrentVersion'));
  set('build', str(cv, 'CurrentBuild') ?? str(cv, 'CurrentBuildNumber'));
  set('arch', str(system.key(`${cs}\\Control\\Session Manager\\Environment`), 'PROCESSOR_ARCHITECTURE'));

  const services = system.key(`${cs}\\Services`);
  const drivers: WindowsDriver[] = [];
  for (const [name, info] of Object.entries(STORAGE_DRIVERS)) {
    const k = services?.subkey(name) ?? null;
    const start = num(k, 'Start');
    const imagePath = str(k, 'ImagePath');
    const file = driverFile(name, imagePath);
    const fileExists = await win.fs.exists(file);
    const d: WindowsDriver = { name, ...info, present: !!k, startName: startName(start), file, fileExists, atBoot: !!k && start === 0 && fileExists };
    if (start !== undefined) d.start = start;
    const type = num(k, 'Type');
    if (type !== undefined) d.type = type;
    if (imagePath !== undefined) d.imagePath = imagePath;
    drivers.push(d);
  }
  const tools: WindowsTools[] = [];
  for (const t of TOOLS) {
    const found = t.services.map((s) => ({ s, k: services?.subkey(s) ?? null })).filter((x) => x.k);
    const sw = (t.software ?? []).some((p) => software?.key(p));
    if (!found.length && !sw) continue;
    const list = found.map(({ s, k }) => {
      const start = num(k, 'Start') ?? 3;
      return { name: k!.name || s, start, startName: startName(start) };
    });
    tools.push({ name: t.name, hypervisor: t.hypervisor, services: list, enabled: list.some((s) => s.start < 4) });
  }
  return { os, volume: win.volume.name, controlSet: cs, boot: await bootFacts(win.guest, win, notes), drivers, tools, notes };
}

/**
 * Inspects the Windows system on a guest's disks (a path, a VM, images, or a Guest already
 * opened, which is left open); null when no volume holds \Windows\System32\config\SYSTEM.
 */
export async function inspectWindows(source: GuestSource | Guest): Promise<WindowsFacts | null> {
  const own = !(source && typeof source === 'object' && 'volumes' in source && 'mounts' in source);
  const guest = own ? await openGuest(source as GuestSource) : (source as Guest);
  try {
    const win = await findWindows(guest);
    return win ? await windowsFacts(win) : null;
  } finally {
    if (own) await guest.close();
  }
}

// ---------------------------------------------------------------------------------------
// verdicts

/** A disk controller of a target, as Windows needs it: every group needs one of its drivers at boot. */
interface WinController {
  name: string;
  needs: string[][];
}

const IDE: WinController = { name: 'ide (intelide/pciide + atapi)', needs: [['intelide', 'pciide'], ['atapi']] };
const AHCI: WinController = { name: 'sata (storahci)', needs: [['storahci', 'msahci']] };
const STORVSC: WinController = { name: 'hyperv-scsi (vmbus + storvsc)', needs: [['vmbus'], ['storvsc']] };

const WIN_CONTROLLERS: Record<Target, { controllers: WinController[]; firmware: ('bios' | 'uefi')[]; hypervisor: string }> = {
  kvm: { controllers: [{ name: 'virtio-blk (viostor)', needs: [['viostor']] }, { name: 'virtio-scsi (vioscsi)', needs: [['vioscsi']] }, AHCI, IDE], firmware: ['bios', 'uefi'], hypervisor: 'kvm' },
  'xen-pv': { controllers: [], firmware: [], hypervisor: 'xen' },
  'xen-hvm': { controllers: [{ name: 'xen-vbd (xenbus + xenvbd)', needs: [['xenbus'], ['xenvbd']] }, IDE, AHCI], firmware: ['bios', 'uefi'], hypervisor: 'xen' },
  // generation 1 boots from its emulated IDE controller; storvsc takes the disk over once VMBus is up
  'hyperv-gen1': { controllers: [IDE, STORVSC], firmware: ['bios'], hypervisor: 'hyperv' },
  'hyperv-gen2': { controllers: [STORVSC], firmware: ['uefi'], hypervisor: 'hyperv' },
  vmware: { controllers: [{ name: 'pvscsi', needs: [['pvscsi']] }, { name: 'lsisas1068 (LSI_SAS)', needs: [['LSI_SAS']] }, { name: 'lsilogic (LSI_SCSI)', needs: [['LSI_SCSI']] }, AHCI, { name: 'nvme (stornvme)', needs: [['stornvme']] }], firmware: ['bios', 'uefi'], hypervisor: 'vmware' },
};

const list = (xs: string[]) => (xs.length <= 1 ? xs.join('') : `${xs.slice(0, -1).join(', ')} and ${xs[xs.length - 1]}`);

function controllerBlockers(facts: WindowsFacts, c: WinController, target: Target): Blocker[] {
  const out: Blocker[] = [];
  for (const group of c.needs) {
    const ds = group.map((n) => facts.drivers.find((d) => d.name === n)!);
    if (ds.some((d) => d.atBoot)) continue;
    const best = ds.find((d) => d.present && d.fileExists) ?? ds.find((d) => d.present) ?? ds[0]!;
    const state = !best.present ? 'is not installed' : !best.fileExists ? `is registered but ${best.file} is missing` : `starts ${best.startName} (Start=${best.start}), not at boot`;
    out.push({
      code: 'storage-driver',
      what: `${list(group)} ${state}`,
      why: `on ${target} the boot disk sits on ${c.name}; Windows loads only boot-start drivers (Start=0) before it reads the disk, otherwise it stops with INACCESSIBLE_BOOT_DEVICE (0x7B)`,
      fix: !best.present || !best.fileExists
        ? best.name === 'viostor' || best.name === 'vioscsi'
          ? 'install the virtio-win drivers in the guest (or adapt with --virtio-win PATH)'
          : `install the ${best.name} driver in the guest`
        : `set ${facts.controlSet}\\Services\\${best.name}\\Start to 0 (Polyvisor's guest adaptation does this)`,
      modules: group,
    });
  }
  return out;
}

function firmwareBlockers(facts: WindowsFacts, fw: 'bios' | 'uefi', target: Target): Blocker[] {
  const b = facts.boot;
  if (fw === 'bios') {
    if (b.bios?.bootmgr && b.bios.bcd) return [];
    return [{ code: 'boot-code', what: b.bios ? `the system partition ${b.bios.volume} lacks ${b.bios.bootmgr ? '\\Boot\\BCD' : 'bootmgr'}` : 'no NTFS volume holds bootmgr and \\Boot\\BCD', why: `${target}'s BIOS starts the boot sector of the active partition, which loads bootmgr, which reads \\Boot\\BCD`, fix: 'repair the BIOS boot files from inside Windows (bcdboot C:\\Windows /f BIOS)' }];
  }
  if (b.uefi?.loader) return [];
  return [{ code: 'uefi-loader', what: b.uefi ? 'the EFI system partition holds no Windows loader' : 'there is no EFI system partition', why: `${target} boots by UEFI, which starts \\EFI\\Microsoft\\Boot\\bootmgfw.efi or \\EFI\\BOOT\\BOOTX64.EFI from the EFI system partition`, fix: b.uefi ? 'write the loader with bcdboot C:\\Windows /f UEFI' : 'convert the disk to GPT with an EFI system partition (mbr2gpt), or choose a BIOS target' }];
}

/** The verdict for one target, in the shape verdict.ts gives Linux guests. */
export function windowsVerdictFor(facts: WindowsFacts, target: Target): Verdict {
  const p = WIN_CONTROLLERS[target];
  if (target === 'xen-pv') {
    const blockers: Blocker[] = [{ code: 'pv-kernel', what: 'Windows cannot run as a Xen PV guest', why: 'a PV guest needs a kernel built to run paravirtualized; Windows has none', fix: 'use xen-hvm (with the Xen PV drivers for speed)' }];
    return { target, boots: false, controller: 'xen-vbd', firmware: 'pv', blockers, warnings: [], controllers: [{ name: 'xen-vbd', blockers: 1 }] };
  }
  const perController = p.controllers.map((c) => ({ c, blockers: controllerBlockers(facts, c, target) }));
  const ctl = perController.find((x) => x.blockers.length === 0) ?? perController.reduce((a, b) => (b.blockers.length < a.blockers.length ? b : a));
  const perFw = p.firmware.map((fw) => ({ fw, blockers: firmwareBlockers(facts, fw, target) }));
  const fw = perFw.find((x) => x.blockers.length === 0) ?? perFw[0]!;
  const warnings: Blocker[] = [];
  for (const t of facts.tools) {
    if (t.hypervisor === p.hypervisor || !t.enabled) continue;
    const on = t.services.filter((s) => s.start < 4).map((s) => s.name);
    warnings.push({ code: 'agent', what: `${t.name} (${t.hypervisor}) ${on.length > 1 ? 'are' : 'is'} enabled (${list(on)})`, why: `on ${target} ${t.name} have no host to talk to; Xen's PV drivers can also unplug the emulated disks at boot`, fix: `disable ${list(on)} (Start=4; Polyvisor's guest adaptation does this)` });
  }
  const blockers = [...ctl.blockers, ...fw.blockers];
  return { target, boots: blockers.length === 0, controller: ctl.c.name, firmware: fw.fw as Firmware, blockers, warnings, controllers: perController.map((x) => ({ name: x.c.name, blockers: x.blockers.length })) };
}

export function windowsVerdicts(facts: WindowsFacts): Record<Target, Verdict> {
  const out = {} as Record<Target, Verdict>;
  for (const t of TARGETS) out[t] = windowsVerdictFor(facts, t);
  return out;
}
