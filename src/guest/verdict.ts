/**
 * Will this guest boot on a given hypervisor, and if not, what stops it and how to fix it.
 *
 * Exported API (used by inspection and adaptation; names are kept stable):
 *   TARGETS, Target                   kvm, xen-pv, xen-hvm, hyperv-gen1, hyperv-gen2, vmware
 *   TARGET_PROFILES                   what each target presents: disk controllers (with the
 *                                     modules each needs and the names its disks get), NICs,
 *                                     firmware, consoles
 *   ROOT_FS_MODULES                   the module a root file system type needs
 *   verdicts(facts) / verdictFor(facts, target) -> Verdict { boots, controller, firmware,
 *                                     blockers: [{ code, what, why, fix }], warnings: [...] }
 *
 * The reasoning, for the default kernel (the default boot entry's):
 * 1. storage: the initramfs carries (or the kernel builds in) every module of one of the
 *    target's disk controllers, with the modules those depend on (modules.dep). SCSI, SATA and
 *    libata IDE disks also need sd_mod, which no controller driver depends on (udev loads it
 *    when a disk appears): without it the disk stays invisible;
 * 2. the root file system's module (ext4 on Debian, where it is a module), and dm_mod for a
 *    root on LVM;
 * 3. device names: a name in fstab or root= on the command line must exist on the target:
 *    /dev/xvdX only with Xen's blkfront, /dev/vdX only with virtio-blk, /dev/sdX with SCSI,
 *    SATA and libata IDE (storvsc, pvscsi, virtio-scsi, AHCI, PIIX), /dev/nvmeN with NVMe;
 *    UUID=, LABEL=, PARTUUID= and LVM names exist everywhere. /dev/hdX needs the IDE driver
 *    Linux removed in 5.14: it matches nothing;
 * 4. a boot path the target can use: BIOS boot code in disk 0's MBR (and GRUB's core.img where
 *    it points), or for UEFI an EFI system partition with the removable-media loader
 *    EFI/BOOT/BOOTX64.EFI (a new VM's firmware has no boot entries of its own: UEFI 2.10
 *    section 3.5.1.1); Xen PV needs a configuration pygrub reads or a kernel the host can load,
 *    and a kernel built with CONFIG_XEN_PV;
 * 5. warnings that do not stop the boot but make the VM hard to use: consoles (Xen PV's is
 *    hvc0; the others' ttyS0 and tty0), a NIC driver for the target's NIC, interface names
 *    that follow the NIC's bus position, MAC-pinned names, other hypervisors' agents.
 * Xen HVM's emulated IDE and AHCI disks are only considered for kernels without xen-blkfront:
 * Linux unplugs the emulated disks at boot when it has the PV driver
 * (arch/x86/xen/platform-pci-unplug.c).
 *
 * Where several controllers or firmware types are possible, the verdict takes the first that
 * boots, else the one with the fewest blockers (the target's usual one on a tie).
 */
import type { GuestFacts, KernelReport, NamedDevice } from './inspect.js';
import type { DiskPrefix } from './open.js';

export const TARGETS = ['kvm', 'xen-pv', 'xen-hvm', 'hyperv-gen1', 'hyperv-gen2', 'vmware'] as const;
export type Target = (typeof TARGETS)[number];

export type Firmware = 'bios' | 'uefi' | 'pv';

export type BlockerCode =
  | 'no-root'
  | 'no-kernel'
  | 'storage-driver'
  | 'module-deps'
  | 'root-fs-driver'
  | 'device-name'
  | 'boot-code'
  | 'uefi-loader'
  | 'pv-boot'
  | 'pv-kernel'
  | 'console'
  | 'network-driver'
  | 'interface-name'
  | 'persistent-net'
  | 'agent';

export interface Blocker {
  code: BlockerCode;
  what: string;
  why: string;
  fix: string;
  /** the modules concerned (storage-driver, module-deps, root-fs-driver, network-driver) */
  modules?: string[];
  /** the device spec concerned (device-name) */
  spec?: string;
}

export interface Verdict {
  target: Target;
  boots: boolean;
  /** the disk controller the verdict is for */
  controller: string;
  firmware: Firmware;
  blockers: Blocker[];
  warnings: Blocker[];
  /** every controller of the target, with how many blockers each leaves */
  controllers: { name: string; blockers: number }[];
}

export interface Controller {
  name: string;
  /** modules the guest needs at boot for its disks on this controller */
  modules: string[];
  /** the name its disks get */
  prefix: DiskPrefix;
}

export interface TargetProfile {
  description: string;
  hypervisor: 'kvm' | 'xen' | 'hyperv' | 'vmware';
  controllers: Controller[];
  nics: { name: string; modules: string[] }[];
  /** in order of preference */
  firmware: Firmware[];
  /** console devices that exist there */
  consoles: RegExp;
  consoleFix: string;
  /** NIC names the target's NICs typically get with predictable naming */
  nicNames: RegExp;
  nicExample: string;
}

const VIRTIO_BLK: Controller = { name: 'virtio-blk', modules: ['virtio_pci', 'virtio_blk'], prefix: 'vd' };
const XEN_VBD: Controller = { name: 'xen-vbd', modules: ['xen_blkfront'], prefix: 'xvd' };
const STORVSC: Controller = { name: 'hyperv-scsi (storvsc)', modules: ['hv_vmbus', 'hv_storvsc', 'sd_mod'], prefix: 'sd' };
const AHCI: Controller = { name: 'sata (ahci)', modules: ['ahci', 'sd_mod'], prefix: 'sd' };
const PIIX: Controller = { name: 'ide (piix)', modules: ['ata_piix', 'sd_mod'], prefix: 'sd' };
const NETVSC = { name: 'hyperv-netvsc', modules: ['hv_vmbus', 'hv_netvsc'] };
const SERIAL_OR_VGA = /^(ttyS\d+|tty\d*)$/;

export const TARGET_PROFILES: Record<Target, TargetProfile> = {
  kvm: {
    description: 'KVM/QEMU with virtio devices',
    hypervisor: 'kvm',
    controllers: [VIRTIO_BLK, { name: 'virtio-scsi', modules: ['virtio_pci', 'virtio_scsi', 'sd_mod'], prefix: 'sd' }, AHCI, PIIX],
    nics: [{ name: 'virtio-net', modules: ['virtio_pci', 'virtio_net'] }, { name: 'e1000', modules: ['e1000'] }],
    firmware: ['bios', 'uefi'],
    consoles: SERIAL_OR_VGA,
    consoleFix: 'console=tty0 console=ttyS0',
    nicNames: /^(ens\d+|enp\d+s\d+)$/,
    nicExample: 'ens3 or enp1s0',
  },
  'xen-pv': {
    description: 'Xen paravirtualized (PV) guest',
    hypervisor: 'xen',
    controllers: [XEN_VBD],
    nics: [{ name: 'xen-netfront', modules: ['xen_netfront'] }],
    firmware: ['pv'],
    consoles: /^hvc0$/,
    consoleFix: 'console=hvc0',
    nicNames: /^(eth\d+|enX\d+)$/,
    nicExample: 'eth0',
  },
  'xen-hvm': {
    description: 'Xen HVM guest (emulated firmware; PV drivers where the guest has them)',
    hypervisor: 'xen',
    controllers: [XEN_VBD, PIIX, AHCI],
    nics: [{ name: 'xen-netfront', modules: ['xen_netfront'] }, { name: 'e1000', modules: ['e1000'] }],
    firmware: ['bios', 'uefi'],
    consoles: /^(ttyS\d+|tty\d*|hvc0)$/,
    consoleFix: 'console=tty0 console=ttyS0',
    nicNames: /^(eth\d+|enX\d+)$/,
    nicExample: 'eth0',
  },
  'hyperv-gen1': {
    description: 'Hyper-V generation 1 (BIOS, boot disk on IDE, served by storvsc)',
    hypervisor: 'hyperv',
    controllers: [STORVSC],
    nics: [NETVSC],
    firmware: ['bios'],
    consoles: SERIAL_OR_VGA,
    consoleFix: 'console=tty0 console=ttyS0',
    nicNames: /^eth\d+$/,
    nicExample: 'eth0',
  },
  'hyperv-gen2': {
    description: 'Hyper-V generation 2 (UEFI, SCSI boot disk)',
    hypervisor: 'hyperv',
    controllers: [STORVSC],
    nics: [NETVSC],
    firmware: ['uefi'],
    consoles: SERIAL_OR_VGA,
    consoleFix: 'console=tty0 console=ttyS0',
    nicNames: /^eth\d+$/,
    nicExample: 'eth0',
  },
  vmware: {
    description: 'VMware ESXi/Workstation',
    hypervisor: 'vmware',
    controllers: [
      { name: 'pvscsi', modules: ['vmw_pvscsi', 'sd_mod'], prefix: 'sd' },
      { name: 'lsilogic', modules: ['mptspi', 'sd_mod'], prefix: 'sd' },
      AHCI,
      { name: 'nvme', modules: ['nvme'], prefix: 'nvme' },
    ],
    nics: [{ name: 'vmxnet3', modules: ['vmxnet3'] }, { name: 'e1000e', modules: ['e1000e'] }, { name: 'e1000', modules: ['e1000'] }],
    firmware: ['bios', 'uefi'],
    consoles: SERIAL_OR_VGA,
    consoleFix: 'console=tty0 console=ttyS0',
    nicNames: /^(ens\d+|enp\d+s\d+)$/,
    nicExample: 'ens192 or ens33',
  },
};

/** The modules a root file system type needs (any one of them), by blkid TYPE; "lvm" for a root on a logical volume. */
export const ROOT_FS_MODULES: Record<string, string[]> = {
  ext2: ['ext4', 'ext2'],
  ext3: ['ext4', 'ext3'],
  ext4: ['ext4'],
  xfs: ['xfs'],
  btrfs: ['btrfs'],
  vfat: ['vfat'],
  lvm: ['dm_mod'],
};

const PREFIX_DEVICES: Record<DiskPrefix, string> = {
  xvd: "Xen's blkfront (xvda)",
  vd: 'virtio-blk (vda)',
  sd: 'SCSI, SATA and IDE controllers (sda)',
  hd: "Linux's old IDE driver, removed in Linux 5.14 (hda)",
  nvme: 'NVMe (nvme0n1)',
};

/** Where module `m` is at boot for kernel `k`: built in, in the initramfs, installed only, or absent. */
function bootAvailability(k: KernelReport, m: string): 'builtin' | 'initramfs' | 'installed' | 'absent' {
  const d = k.drivers.find((x) => x.name === m);
  if (d?.status === 'builtin') return 'builtin';
  if (k.initramfs?.modules.includes(m)) return 'initramfs';
  return d?.status === 'module' ? 'installed' : 'absent';
}

const list = (xs: string[]) => (xs.length <= 1 ? xs.join('') : `${xs.slice(0, -1).join(', ')} and ${xs[xs.length - 1]}`);

function initramfsName(k: KernelReport): string {
  return k.initramfs ? `the initramfs (${k.initramfs.path})` : `kernel ${k.version}, which has no initramfs,`;
}

function storageBlockers(k: KernelReport, c: Controller, target: Target): Blocker[] {
  const out: Blocker[] = [];
  const missing = c.modules.filter((m) => {
    const a = bootAvailability(k, m);
    return a !== 'builtin' && a !== 'initramfs';
  });
  if (missing.length) {
    const notInstalled = missing.filter((m) => bootAvailability(k, m) === 'absent');
    const carried = k.drivers.filter((d) => d.role === 'storage' && (d.initramfs === 'included' || d.initramfs === 'builtin')).map((d) => d.name);
    out.push({
      code: 'storage-driver',
      what: `${list(missing)} ${missing.length > 1 ? 'are' : 'is'} not in ${initramfsName(k)}`,
      why: `on ${target} the root disk sits on ${c.name}, which Linux reaches through ${list(c.modules)} before it can mount the root file system; ${k.initramfs?.error ? `the initramfs could not be read (${k.initramfs.error})` : `the initramfs carries ${carried.length ? list(carried) : 'no disk driver'}`}`,
      fix: notInstalled.length
        ? `kernel ${k.version} has no ${list(notInstalled)}: install a kernel that has ${notInstalled.length > 1 ? 'them' : 'it'}, then add the modules to the initramfs`
        : `add ${list(missing)} to the initramfs (list ${missing.length > 1 ? 'them' : 'it'} in /etc/initramfs-tools/modules and run update-initramfs -u, or dracut --add-drivers; Polyvisor's guest adaptation does this offline)`,
      modules: missing,
    });
  }
  const deps = (k.initramfs?.missingDeps ?? []).filter((d) => c.modules.includes(d.module));
  for (const d of deps) {
    out.push({
      code: 'module-deps',
      what: `${d.module} is in the initramfs but ${list(d.missing)}, which it needs, ${d.missing.length > 1 ? 'are' : 'is'} not`,
      why: `modules.dep lists ${list(d.missing)} as dependencies of ${d.module}: without them it does not load ("Unknown symbol")`,
      fix: `add ${list(d.missing)} to the initramfs`,
      modules: d.missing,
    });
  }
  return out;
}

/** Is a device name usable when disks are on `c`? */
function nameWorks(n: NamedDevice, c: Controller): boolean | 'unknown' {
  if (n.naming === 'device') return n.prefix === c.prefix && n.prefix !== 'hd';
  if (n.naming === 'by-id' || n.naming === 'by-path') return 'unknown';
  return true;
}

/** Which names a failure blocks the boot on: the root (fstab and the default entry's root=) and fstab mounts the guest waits for. */
function blocksBoot(n: NamedDevice, defaultEntry: string | undefined): boolean {
  if (n.use === 'cmdline-root') return n.entry === defaultEntry;
  if (n.use === 'fstab') return !n.optional && n.target !== 'swap';
  return false;
}

function namingBlockers(facts: GuestFacts, c: Controller, target: Target): { blockers: Blocker[]; warnings: Blocker[] } {
  const blockers: Blocker[] = [];
  const warnings: Blocker[] = [];
  const bySpec = new Map<string, NamedDevice[]>();
  for (const n of facts.naming) {
    if (n.use === 'cmdline-root' || n.use === 'cmdline-resume') {
      if (n.entry !== facts.boot.defaultEntry) continue;
    }
    if (nameWorks(n, c) === true) continue;
    bySpec.set(n.spec, [...(bySpec.get(n.spec) ?? []), n]);
  }
  for (const [spec, uses] of bySpec) {
    const vol = facts.volumes.find((v) => v.name === uses.find((u) => u.volume)?.volume);
    const stable = vol?.uuid ? `UUID=${vol.uuid}` : vol?.partuuid ? `PARTUUID=${vol.partuuid}` : 'UUID=<the file system UUID>';
    const where = uses.map((u) => `${u.where}${u.use === 'cmdline-root' ? ' (root=)' : u.target ? ` (${u.target})` : ''}`);
    const n = uses[0]!;
    const unknown = nameWorks(n, c) === 'unknown';
    const b: Blocker = {
      code: 'device-name',
      what: unknown ? `${spec} may not exist on ${target}` : `${spec} does not exist on ${target}`,
      why: unknown
        ? `it names the disk by its bus and serial, which change with the hypervisor; it is used in ${list(where)}`
        : `on ${target} disks on ${c.name} are named by ${PREFIX_DEVICES[c.prefix]}; ${spec} is a name of ${PREFIX_DEVICES[n.prefix!]}; it is used in ${list(where)}`,
      fix: `name the volume by ${stable} instead (${list([...new Set(uses.map((u) => u.where.split(' ')[0]!))])})`,
      spec,
    };
    if (!unknown && uses.some((u) => blocksBoot(u, facts.boot.defaultEntry))) blockers.push(b);
    else warnings.push(b);
  }
  return { blockers, warnings };
}

function bootBlockers(facts: GuestFacts, fw: Firmware, target: Target, k: KernelReport | undefined): { blockers: Blocker[]; warnings: Blocker[] } {
  const boot = facts.boot;
  const blockers: Blocker[] = [];
  const warnings: Blocker[] = [];
  if (fw === 'bios') {
    if (!boot.mbr.present) {
      blockers.push({
        code: 'boot-code',
        what: 'disk 0 has no boot code in its MBR',
        why: `${target}'s BIOS starts the code in the first sector of the boot disk; ${boot.style === 'pygrub' ? 'this guest was started by pygrub from its grub.cfg, which only Xen PV does' : 'there is none'}`,
        fix: 'install GRUB into the MBR (grub-install on disk 0 from inside the guest, or Polyvisor\'s guest adaptation)',
      });
    } else if (boot.mbr.coreImage && !boot.mbr.coreImage.present) {
      blockers.push({
        code: 'boot-code',
        what: `GRUB's boot code is in the MBR but its core.img (sector ${boot.mbr.coreImage.lba}) is missing`,
        why: "boot.img only loads core.img from the sector it records; that sector is empty",
        fix: 'reinstall GRUB on disk 0 (grub-install)',
      });
    }
  } else if (fw === 'uefi') {
    const withLoader = boot.esps.filter((e) => e.loaders.length > 0);
    if (withLoader.length === 0) {
      blockers.push({
        code: 'uefi-loader',
        what: boot.esps.length ? 'the EFI system partition holds no loader' : 'there is no EFI system partition',
        why: `${target}'s UEFI firmware boots a loader from an EFI system partition (FAT, GPT type C12A7328-...)`,
        fix: 'create an EFI system partition and install a UEFI boot loader (grub-efi, shim) to EFI/BOOT/BOOTX64.EFI',
      });
    } else if (!withLoader.some((e) => e.removable)) {
      const l = withLoader[0]!.loaders.find((x) => /shimx64\.efi$/i.test(x)) ?? withLoader[0]!.loaders[0]!;
      blockers.push({
        code: 'uefi-loader',
        what: 'the EFI system partition has no EFI/BOOT/BOOTX64.EFI',
        why: `a new VM's firmware has no boot entry of its own for ${withLoader[0]!.loaders.join(', ')}; it starts the removable-media path EFI/BOOT/BOOTX64.EFI (UEFI 2.10 section 3.5.1.1)`,
        fix: `copy ${l} (with its companions, such as grubx64.efi beside shim) to EFI/BOOT/ as BOOTX64.EFI`,
      });
    }
  } else {
    const entry = boot.entries.find((e) => e.id === boot.defaultEntry);
    if (!boot.pygrubReadable || !entry?.kernel) {
      const kernel = k?.image;
      const b: Blocker = {
        code: 'pv-boot',
        what: 'no boot loader configuration that pygrub reads',
        why: 'a Xen PV guest is started by pygrub (reading grub.cfg, menu.lst or extlinux.conf from the disk) or by a kernel and ramdisk the host gives it',
        fix: kernel ? `write a /boot/grub/grub.cfg entry for ${kernel}, or give xl kernel= and ramdisk= copies of ${kernel} and its initramfs` : 'install a kernel and a grub.cfg',
      };
      if (kernel) warnings.push(b);
      else blockers.push(b);
    }
    if (k && k.xenPv === false) {
      blockers.push({ code: 'pv-kernel', what: `kernel ${k.version} cannot run as a Xen PV guest`, why: `its /boot/config-${k.version} does not set CONFIG_XEN_PV=y`, fix: 'install a kernel built with CONFIG_XEN_PV (Debian\'s linux-image-amd64 is), or use xen-hvm' });
    } else if (k && k.xenPv === 'unknown') {
      warnings.push({ code: 'pv-kernel', what: `whether kernel ${k.version} runs as a Xen PV guest is unknown`, why: `it has no /boot/config-${k.version} to say whether CONFIG_XEN_PV is set`, fix: 'check the kernel\'s configuration' });
    }
  }
  return { blockers, warnings };
}

function consoleWarnings(facts: GuestFacts, p: TargetProfile, target: Target): Blocker[] {
  const out: Blocker[] = [];
  const cmd = facts.consoles.cmdline;
  if (cmd.length > 0 && !cmd.some((c) => p.consoles.test(c))) {
    out.push({
      code: 'console',
      what: `the kernel's console${cmd.length > 1 ? 's' : ''} (${cmd.map((c) => `console=${c}`).join(' ')}) ${cmd.length > 1 ? 'do' : 'does'} not exist on ${target}`,
      why: `${target}'s console${p.consoleFix.includes(' ') ? 's are' : ' is'} ${list(p.consoleFix.replace(/console=/g, '').split(' '))}: boot messages and emergency shells would go nowhere visible`,
      fix: `add ${p.consoleFix} to the kernel command line (grub.cfg and GRUB_CMDLINE_LINUX in /etc/default/grub)`,
    });
  }
  if (target === 'xen-pv' && facts.consoles.inittab.length > 0 && !facts.consoles.inittab.includes('hvc0')) {
    out.push({ code: 'console', what: '/etc/inittab runs no getty on hvc0', why: "Xen PV's only console is hvc0: there is no login prompt on xl console", fix: 'add a getty line for hvc0 to /etc/inittab' });
  }
  return out;
}

function networkWarnings(facts: GuestFacts, p: TargetProfile, target: Target, k: KernelReport | undefined): Blocker[] {
  const out: Blocker[] = [];
  if (k) {
    const ok = p.nics.some((n) => n.modules.every((m) => bootAvailability(k, m) !== 'absent'));
    if (!ok) {
      const names = p.nics.map((n) => n.modules[n.modules.length - 1]!);
      out.push({ code: 'network-driver', what: `kernel ${k.version} has no driver for ${target}'s NICs (${list(names)})`, why: 'without one the VM has no network', fix: `install a kernel with ${names[0]}`, modules: names });
    }
  }
  const net = facts.network;
  const configured = net.interfaces.filter((i) => i.name !== 'lo' && i.name !== '(any)' && !/[*?[]/.test(i.name) && !i.mac);
  const expected = net.predictableNames === true ? p.nicNames : /^eth\d+$/;
  const wrong = [...new Set(configured.map((i) => i.name).filter((n) => !expected.test(n)))];
  if (wrong.length) {
    out.push({
      code: 'interface-name',
      what: `the network configuration names ${list(wrong)}`,
      why: `on ${target} the NIC will be named ${net.predictableNames === true ? p.nicExample : 'eth0'} (${net.predictableReason}); a configuration for another name does not apply to it`,
      fix: 'match the interface by MAC address or a wildcard (networkd Name=en* eth*), or rename it in the configuration',
    });
  }
  if (net.persistentRules.length) {
    out.push({
      code: 'persistent-net',
      what: `${list([...new Set(net.persistentRules.map((r) => r.file))])} pin${net.persistentRules.length > 1 ? '' : 's'} interface names to MAC addresses (${list(net.persistentRules.map((r) => `${r.name} = ${r.mac}`))})`,
      why: `a VM on ${target} gets a new MAC address unless its old one is kept: the NIC then gets another name (eth1) and the configuration for ${net.persistentRules[0]!.name} does not apply`,
      fix: 'keep the MAC address in the new VM, or remove the pinning rules',
    });
  }
  return out;
}

function agentWarnings(facts: GuestFacts, p: TargetProfile, target: Target): Blocker[] {
  const out: Blocker[] = [];
  for (const a of facts.agents) {
    if (a.hypervisor === p.hypervisor) continue;
    const enabled = a.services.filter((s) => s.enabled).map((s) => s.unit);
    if (!enabled.length) continue;
    out.push({ code: 'agent', what: `${a.name} (${a.hypervisor}'s guest agent) is enabled`, why: `on ${target} it has no host to talk to (${list(enabled)} start${enabled.length > 1 ? '' : 's'} for nothing)`, fix: `disable or remove ${a.name}` });
  }
  return out;
}

function rootBlockers(facts: GuestFacts, k: KernelReport): Blocker[] {
  const root = facts.volumes.find((v) => v.name === facts.root);
  if (!root) return [];
  const out: Blocker[] = [];
  const need: [string, string[]][] = [];
  if (ROOT_FS_MODULES[root.type]) need.push([`the root file system (${root.type})`, ROOT_FS_MODULES[root.type]!]);
  if (root.kind === 'lv') need.push(['the root logical volume (device-mapper)', ROOT_FS_MODULES.lvm!]);
  for (const [what, mods] of need) {
    if (mods.some((m) => ['builtin', 'initramfs'].includes(bootAvailability(k, m)))) continue;
    out.push({
      code: 'root-fs-driver',
      what: `no ${list(mods)} for ${what} in ${initramfsName(k)}`,
      why: `kernel ${k.version} has ${mods[0]} as a module${bootAvailability(k, mods[0]!) === 'absent' ? ' it does not even install' : ''}: the initramfs must carry it to mount the root`,
      fix: `add ${mods[0]} to the initramfs`,
      modules: mods,
    });
  }
  return out;
}

function pick<T>(options: T[], count: (o: T) => number): T {
  let best = options[0] as T;
  for (const o of options) if (count(o) < count(best)) best = o;
  return best;
}

/** The verdict for one target. */
export function verdictFor(facts: GuestFacts, target: Target): Verdict {
  const p = TARGET_PROFILES[target];
  const k = facts.kernels.find((x) => x.default);
  const common: Blocker[] = [];
  const warnings: Blocker[] = [];
  if (!facts.root) {
    common.push({ code: 'no-root', what: 'no Linux root file system was found', why: `Polyvisor found no file system it reads holding /etc/os-release or /etc/fstab (${facts.os.family === 'windows' ? 'an NTFS volume suggests Windows, which is not inspected' : 'see the warnings'})`, fix: 'inspect a guest whose root file system is ext2/3/4 (or FAT)' });
  } else if (!k) {
    common.push({ code: 'no-kernel', what: 'no installed kernel was found', why: 'neither /boot/vmlinuz-* nor /lib/modules/* exists', fix: 'install a kernel in the guest' });
  } else common.push(...rootBlockers(facts, k));

  // disk controllers: Xen HVM's emulated disks (IDE, or AHCI with hdtype="ahci") only for kernels that do not unplug them
  const controllers = p.controllers.filter((c) => !(target === 'xen-hvm' && c !== XEN_VBD && k && bootAvailability(k, 'xen_blkfront') !== 'absent'));
  const perController = controllers.map((c) => {
    const storage = k ? storageBlockers(k, c, target) : [];
    const naming = namingBlockers(facts, c, target);
    return { c, blockers: [...storage, ...naming.blockers], warnings: naming.warnings };
  });
  const ctl = perController.find((x) => x.blockers.length === 0) ?? pick(perController, (x) => x.blockers.length);
  const perFirmware = p.firmware.map((fw) => ({ fw, ...bootBlockers(facts, fw, target, k) }));
  const fw = perFirmware.find((x) => x.blockers.length === 0) ?? perFirmware[0]!;
  const blockers = [...common, ...ctl.blockers, ...fw.blockers];
  warnings.push(...ctl.warnings, ...fw.warnings);
  if (facts.root) {
    warnings.push(...consoleWarnings(facts, p, target), ...networkWarnings(facts, p, target, k), ...agentWarnings(facts, p, target));
  }
  return {
    target,
    boots: blockers.length === 0,
    controller: ctl.c.name,
    firmware: fw.fw,
    blockers,
    warnings,
    controllers: perController.map((x) => ({ name: x.c.name, blockers: x.blockers.length })),
  };
}

/** Verdicts for every target. */
export function verdicts(facts: GuestFacts): Record<Target, Verdict> {
  const out = {} as Record<Target, Verdict>;
  for (const t of TARGETS) out[t] = verdictFor(facts, t);
  return out;
}
