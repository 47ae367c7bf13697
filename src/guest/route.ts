/**
 * Where a VM comes from and where it goes, in the words of guest adaptation (targets.ts): the
 * hypervisor a VM source was made for, the target a conversion's output implies, and whether
 * the guest must be adapted on the way. `vm convert`, `vm import` and `move` all decide here,
 * so that one rule holds for every path a VM takes.
 */
import type { VmSpec } from '../vm/spec.js';
import { findTarget, type Hypervisor, type TargetName } from './targets.js';

/** The hypervisor a VM source was made for, as adaptation names targets; undefined when unknown. */
export function sourceHypervisor(kind: string, spec: VmSpec): string | undefined {
  switch (kind) {
    case 'xl':
    case 'xva':
      return spec.virtualization === 'hvm' ? 'xen-hvm' : 'xen-pv';
    case 'vmx':
    case 'ovf':
    case 'ova':
      return 'vmware';
    case 'hyperv':
    case 'vmc':
      return 'hyperv';
    case 'libvirt': {
      // the domain type the libvirt codec keeps in extra.libvirt.type (kvm, qemu, xen)
      const type = (spec.extra.libvirt as Record<string, unknown> | undefined)?.type ?? (spec.virtualization === 'hvm' ? 'kvm' : 'xen');
      return type === 'xen' ? (spec.virtualization === 'hvm' ? 'xen-hvm' : 'xen-pv') : 'kvm';
    }
    default:
      return undefined;
  }
}

/** The hypervisor family of what sourceHypervisor returns ("xen-pv" and "xen-hvm" are both Xen). */
export function hypervisorOf(from: string | undefined): Hypervisor | undefined {
  if (from === undefined) return undefined;
  if (from.startsWith('xen')) return 'xen';
  if (from.startsWith('hyperv')) return 'hyperv';
  return from === 'kvm' || from === 'vmware' ? from : undefined;
}

/**
 * The adaptation target a `vm convert --to` output implies: the hypervisor that reads that
 * descriptor or package, and, where it has two ways to run a guest, the one the spec asks for
 * (Xen: PV or PVH guests boot through pygrub or a kernel, HVM guests through a BIOS; Hyper-V:
 * generation 2 is UEFI, generation 1 BIOS). Undefined for an output no target covers.
 */
export function targetForOutput(output: string, spec: VmSpec): TargetName | undefined {
  switch (output) {
    case 'xl':
    case 'xva':
      return spec.virtualization === 'hvm' ? 'xen-hvm' : 'xen-pv';
    case 'vmx':
    case 'ova':
    case 'ovf':
      return 'vmware';
    case 'hyperv':
    case 'vmc':
      return spec.firmware.type === 'uefi' ? 'hyperv-gen2' : 'hyperv-gen1';
    case 'libvirt':
      return 'kvm';
    default:
      return undefined;
  }
}

/**
 * Why a guest from `from` (sourceHypervisor) needs no adaptation for `target`, or undefined
 * when it does. A guest from an unknown hypervisor (a bare disk image) is adapted: adaptation
 * only adds beside what the guest has, so a guest that was fine already boots as before.
 */
export function whyNotAdapt(from: string | undefined, target: TargetName): string | undefined {
  const t = findTarget(target);
  if (hypervisorOf(from) === t.hypervisor) return `the VM comes from ${t.hypervisor === 'kvm' ? 'KVM/QEMU' : t.hypervisor === 'xen' ? 'Xen' : t.hypervisor === 'vmware' ? 'VMware' : 'Hyper-V'} already`;
  return undefined;
}

/**
 * The spec of a guest adapted for Xen PV: a PV domain booted by pygrub from the guest's own
 * grub.cfg (xl.cfg(5) "bootloader"), its disks and console Xen's PV devices. A PV or PVH spec
 * is returned as it is; a directly booted kernel is kept (xl's kernel= still starts it).
 */
export function asXenPv(spec: VmSpec): VmSpec {
  if (spec.virtualization !== 'hvm') return spec;
  const keepKernel = spec.boot?.kernel !== undefined;
  return {
    ...spec,
    virtualization: 'pv',
    // a PV guest has no firmware: the xl codec drops UEFI with a note of its own
    firmware: { type: 'bios' },
    boot: keepKernel ? { ...spec.boot, order: undefined } : { bootloader: 'pygrub' },
    disks: spec.disks.map((d) => ({ ...d, bus: 'xen' as const, controllerModel: undefined, target: d.target && /^xvd[a-z]+$/.test(d.target) ? d.target : undefined })),
    consoles: [{ type: 'xen' }],
  };
}
