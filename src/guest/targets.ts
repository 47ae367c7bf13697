/**
 * The hypervisors a guest can be adapted for, in one table: what each needs of a Linux guest
 * to boot and reach its network there.
 *
 * - storage / network: kernel modules (modprobe names) the initramfs must carry, so that the
 *   boot disk appears before the root file system is mounted, and the NIC once the system is
 *   up. The first storage group is the disk controller the target gives a boot disk by
 *   default; sd_mod is listed wherever disks appear as SCSI disks (sdX), since a SCSI host
 *   driver alone shows no disk (RUNBOOK: "every SCSI, SATA and IDE disk stays invisible").
 * - consoles: the kernel's console= names, primary last (the last console= becomes
 *   /dev/console, Documentation/admin-guide/serial-console.rst); serialGettys: the
 *   serial-getty@ instances that give a login there.
 * - diskPrefix: how the guest names its first disk there (the source of /dev/xvda1-style
 *   names in fstab and on the kernel command line).
 * - boot: how the machine finds the kernel: a BIOS reading the MBR, UEFI reading the EFI
 *   system partition, or Xen's pygrub reading /boot/grub/grub.cfg from outside the guest.
 * - agents: the hypervisor whose guest agents belong there (the others' are masked).
 *
 * Sources: virt-v2v's convert_linux.ml (virtio drivers it requires), Hyper-V's "Supported
 * Linux and FreeBSD virtual machines" (hv_vmbus, hv_storvsc, hv_netvsc, hv_utils), VMware KB
 * 1010398 (PVSCSI) and 1001805 (vmxnet3, e1000), Xen's PV drivers (xen-blkfront,
 * xen-netfront) and the Linux kernel's Kconfig help for each driver.
 */
import { PolyvisorError } from '../errors.js';

export type TargetName = 'kvm' | 'xen-pv' | 'xen-hvm' | 'vmware' | 'hyperv-gen1' | 'hyperv-gen2';
export type Hypervisor = 'kvm' | 'xen' | 'vmware' | 'hyperv';
export type BootMethod = 'bios' | 'uefi' | 'pygrub';

export interface Target {
  name: TargetName;
  title: string;
  hypervisor: Hypervisor;
  /** drivers the boot disk needs: every one is required */
  storage: string[];
  /** drivers for the NIC models the target offers (the first is its default) */
  network: string[];
  /** drivers that help but are not needed to boot (keyboard, balloon, time sync) */
  extras: string[];
  /** console= names, primary last */
  consoles: string[];
  serialGettys: string[];
  /** "/dev/vd": the first disk is /dev/vda */
  diskPrefix: string;
  boot: BootMethod;
}

/** Both Hyper-V generations offer the same synthetic devices; they differ in firmware. */
const HYPERV: Omit<Target, 'name' | 'title' | 'boot'> = {
  hypervisor: 'hyperv',
  storage: ['hv_vmbus', 'hv_storvsc', 'sd_mod'],
  network: ['hv_netvsc'],
  extras: ['hv_utils', 'hid_hyperv', 'hyperv_keyboard'],
  consoles: ['tty0', 'ttyS0'],
  serialGettys: ['ttyS0'],
  diskPrefix: '/dev/sd',
};

export const TARGETS: Record<TargetName, Target> = {
  kvm: {
    name: 'kvm',
    title: 'KVM/QEMU (virtio)',
    hypervisor: 'kvm',
    storage: ['virtio_pci', 'virtio_blk', 'virtio_scsi', 'sd_mod'],
    network: ['virtio_net'],
    extras: ['virtio_console', 'virtio_balloon'],
    consoles: ['tty0', 'ttyS0'],
    serialGettys: ['ttyS0'],
    diskPrefix: '/dev/vd',
    boot: 'bios',
  },
  'xen-pv': {
    name: 'xen-pv',
    title: 'Xen paravirtualized (PV), booted by pygrub',
    hypervisor: 'xen',
    storage: ['xen_blkfront'],
    network: ['xen_netfront'],
    extras: [],
    consoles: ['hvc0'],
    serialGettys: ['hvc0'],
    diskPrefix: '/dev/xvd',
    boot: 'pygrub',
  },
  'xen-hvm': {
    name: 'xen-hvm',
    title: 'Xen HVM (emulated IDE until the PV drivers take over)',
    hypervisor: 'xen',
    storage: ['xen_blkfront', 'ata_piix', 'sd_mod'],
    network: ['xen_netfront', 'e1000', '8139cp'],
    extras: [],
    consoles: ['tty0', 'ttyS0'],
    serialGettys: ['ttyS0'],
    diskPrefix: '/dev/xvd',
    boot: 'bios',
  },
  vmware: {
    name: 'vmware',
    title: 'VMware ESXi / Workstation (PVSCSI, LSI Logic, SATA)',
    hypervisor: 'vmware',
    storage: ['vmw_pvscsi', 'mptspi', 'ahci', 'sd_mod'],
    network: ['vmxnet3', 'e1000', 'e1000e'],
    extras: [],
    consoles: ['tty0', 'ttyS0'],
    serialGettys: ['ttyS0'],
    diskPrefix: '/dev/sd',
    boot: 'bios',
  },
  'hyperv-gen1': { ...HYPERV, name: 'hyperv-gen1', title: 'Hyper-V generation 1 (BIOS)', boot: 'bios' },
  'hyperv-gen2': { ...HYPERV, name: 'hyperv-gen2', title: 'Hyper-V generation 2 (UEFI)', boot: 'uefi' },
};

export const TARGET_NAMES = Object.keys(TARGETS) as TargetName[];

/** Also accepted on the command line: the hypervisor's other common names. */
const ALIASES: Record<string, TargetName> = {
  qemu: 'kvm',
  libvirt: 'kvm',
  xen: 'xen-pv',
  pv: 'xen-pv',
  hvm: 'xen-hvm',
  esxi: 'vmware',
  vsphere: 'vmware',
  hyperv: 'hyperv-gen2',
  'hyper-v': 'hyperv-gen2',
};

export function findTarget(name: string): Target {
  const key = name.toLowerCase();
  const t = TARGETS[key as TargetName] ?? TARGETS[ALIASES[key] as TargetName];
  if (!t) throw new PolyvisorError('ERR_USAGE', `unknown target "${name}": one of ${TARGET_NAMES.join(', ')}`);
  return t;
}

/** The systemd units of each hypervisor's guest agents, masked when the guest leaves it. */
export const AGENTS: Record<Hypervisor, { units: string[]; why: string }> = {
  vmware: {
    units: ['open-vm-tools.service', 'vgauth.service', 'vmtoolsd.service', 'run-vmblock\\x2dfuse.mount'],
    why: 'VMware Tools wait for the VMware backdoor and VMCI, which other hypervisors do not offer',
  },
  xen: {
    units: ['xe-linux-distribution.service', 'xe-daemon.service', 'xen-guest-agent.service', 'xenstore-agent.service'],
    why: 'the Xen guest agents need xenstore, which exists on Xen only',
  },
  hyperv: {
    units: ['hv-kvp-daemon.service', 'hv-vss-daemon.service', 'hv-fcopy-daemon.service', 'hyperv-daemons.hv-kvp-daemon.service', 'hyperv-daemons.hv-vss-daemon.service', 'hyperv-daemons.hv-fcopy-daemon.service'],
    why: 'the Hyper-V daemons need the VMBus devices of Hyper-V',
  },
  // the QEMU guest agent binds to its virtio-serial port's device unit: elsewhere it simply
  // does not start, slowing nothing, so it stays enabled for the day the guest comes back
  kvm: { units: [], why: '' },
};
