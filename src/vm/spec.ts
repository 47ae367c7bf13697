/**
 * VmSpec: the neutral model of a virtual machine that every descriptor codec reads into and
 * writes from. It names what hypervisors share (CPUs, memory, firmware, disks, NICs, consoles,
 * graphics, guest OS); what one hypervisor says that the model does not name is kept in
 * `extra[codec]` and written back when converting to that same format, so that a round trip
 * loses nothing.
 *
 * The schema (zod) is the single definition: types are inferred from it, decoders validate
 * their result with it, and the CLI's --json output is exactly this shape.
 *
 * Written with zod's "mini" API (functions and .check() in place of chained methods): the
 * same library and checks, but a schema is a plain object rather than one carrying some
 * fifty methods, which makes building this one, on every command's path to a VM, a few
 * milliseconds cheaper (BENCHMARKS.md, `polyvisor run`'s start). Mini loads no messages by
 * itself: English is set here.
 */
import * as z from 'zod/mini';
import { en } from 'zod/locales';
import { PolyvisorError } from '../errors.js';

z.config(en());

/** Buses a disk can hang off, in the words of the hypervisors that use them. */
export const DISK_BUSES = ['ide', 'sata', 'scsi', 'virtio', 'xen', 'nvme', 'usb', 'fdc'] as const;

/** Storage controller models, where the bus alone does not say which device the guest sees. */
export const CONTROLLER_MODELS = [
  'piix3', // IDE on the PC's PIIX3/4: Xen HVM, Hyper-V Gen 1, Virtual Server, QEMU pc
  'ahci', // SATA AHCI: VMware SATA, QEMU q35, VirtualBox
  'lsilogic', // LSI Logic parallel SCSI (53c1030): VMware, VirtualBox, Virtual Server
  'lsisas1068', // LSI Logic SAS: VMware
  'buslogic', // BusLogic: old VMware
  'pvscsi', // VMware paravirtual SCSI
  'virtio-scsi', // KVM
  'megasas', // LSI MegaRAID
  'hyperv-scsi', // Hyper-V synthetic SCSI (storvsc)
  'xen-pv', // Xen blkfront/blkback
] as const;

export const NIC_MODELS = ['virtio', 'e1000', 'e1000e', 'rtl8139', 'pcnet', 'vmxnet3', 'vmxnet2', 'xen-netfront', 'hyperv-netvsc', 'hyperv-legacy', 'ne2k'] as const;

export const OS_FAMILIES = ['linux', 'windows', 'bsd', 'solaris', 'other', 'unknown'] as const;

// Fields of one kind share one schema: zod schemas are immutable, and each one built costs
// every command that reads a VM some tens of microseconds (about a hundred are built here, on
// `polyvisor run`'s way to the guest: BENCHMARKS.md).
/** a controller or unit number, a serial port */
const optionalByte = z.optional(z.int().check(z.minimum(0), z.maximum(255)));
/** a host file name */
const optionalPath = z.optional(z.string().check(z.maxLength(4096)));
/** a network, a listen address */
const optionalName = z.optional(z.string().check(z.maxLength(256)));
const optionalFlag = z.optional(z.boolean());
/** sockets, cores */
const optionalTopology = z.optional(z.int().check(z.minimum(1), z.maximum(4096)));
/** at least 1 MiB */
const memoryBytes = z.int().check(z.minimum(1 << 20));

const mac = z.string().check(z.regex(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/, 'a MAC address as six lower-case hex pairs separated by colons'));

export const VmDiskSchema = z.object({
  /** what the guest sees */
  device: z.enum(['disk', 'cdrom', 'floppy']),
  bus: z.enum(DISK_BUSES),
  /** the controller's model when the bus does not say (SCSI, SATA) */
  controllerModel: z.optional(z.enum(CONTROLLER_MODELS)),
  /** controller number on that bus, and unit (slot) on the controller: VMware's scsi0:1 */
  controller: optionalByte,
  unit: optionalByte,
  /** the guest's device name where the hypervisor records one: xvda, sda, hdc, vdb */
  target: z.optional(z.string().check(z.maxLength(64))),
  /** the disk file as the descriptor records it (relative to the descriptor's folder); absent for an empty CD-ROM */
  file: optionalPath,
  /** the disk format in Polyvisor's registry names (raw, qcow2, vhd, vhdx, vmdk, vdi), when known */
  format: z.optional(z.string().check(z.maxLength(32))),
  readOnly: optionalFlag,
  /** 1 boots first */
  bootOrder: z.optional(z.int().check(z.minimum(1), z.maximum(64))),
  /** virtual size in bytes, when the descriptor states it (OVF, XVA) */
  capacity: z.optional(z.int().check(z.minimum(0))),
});
export type VmDisk = z.infer<typeof VmDiskSchema>;

export const VmNicSchema = z.object({
  model: z.optional(z.enum(NIC_MODELS)),
  mac: z.optional(mac),
  /** the network or bridge the NIC joins, by the source's name for it */
  network: optionalName,
  /** how it joins: a host bridge, a named virtual network, NAT, or no connection */
  connection: z.optional(z.enum(['bridge', 'network', 'nat', 'none'])),
});
export type VmNic = z.infer<typeof VmNicSchema>;

export const VmSpecSchema = z.object({
  name: z.string().check(z.minLength(1), z.maxLength(256)),
  uuid: z.optional(z.string().check(z.regex(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/))),
  description: z.optional(z.string().check(z.maxLength(65536))),
  firmware: z.object({
    type: z.enum(['bios', 'uefi']),
    secureBoot: optionalFlag,
    tpm: optionalFlag,
  }),
  /**
   * How the guest is virtualised: fully (hvm: every hypervisor), or Xen's paravirtual modes
   * (pv: the guest kernel runs with Xen's PV interface and no emulated hardware; pvh).
   */
  virtualization: z.enum(['hvm', 'pv', 'pvh']),
  cpu: z.object({
    count: z.int().check(z.minimum(1), z.maximum(4096)),
    sockets: optionalTopology,
    cores: optionalTopology,
    threads: z.optional(z.int().check(z.minimum(1), z.maximum(16))),
  }),
  memory: z.object({
    /** bytes at start */
    bytes: memoryBytes,
    /** bytes the guest may balloon up to, when it differs */
    maxBytes: z.optional(memoryBytes),
  }),
  disks: z.array(VmDiskSchema).check(z.maxLength(256)),
  nics: z.array(VmNicSchema).check(z.maxLength(64)),
  consoles: z.array(z.object({ type: z.enum(['serial', 'xen', 'virtio']), port: optionalByte })).check(z.maxLength(16)),
  graphics: z.array(z.object({ type: z.enum(['vnc', 'spice', 'sdl', 'rdp', 'vga']), port: z.optional(z.int().check(z.minimum(-1), z.maximum(65535))), listen: optionalName })).check(z.maxLength(8)),
  os: z.object({
    family: z.enum(OS_FAMILIES),
    /** the source's own name for the guest OS: "ubuntu64Guest", "rhel8", "win2k19"... */
    variant: z.optional(z.string().check(z.maxLength(128))),
  }),
  /**
   * How a paravirtual guest boots: a kernel and ramdisk from the host, or a bootloader that
   * reads them from the guest's own disk (Xen's pygrub).
   */
  boot: z.optional(
    z.object({
      kernel: optionalPath,
      ramdisk: optionalPath,
      cmdline: z.optional(z.string().check(z.maxLength(65536))),
      bootloader: optionalPath,
      bootloaderArgs: z.optional(z.array(z.string().check(z.maxLength(4096))).check(z.maxLength(64))),
      /** boot devices in order, for BIOS guests: disk, cdrom, network, floppy */
      order: z.optional(z.array(z.enum(['disk', 'cdrom', 'network', 'floppy'])).check(z.maxLength(8))),
    }),
  ),
  /** settings the model does not name, per codec: written back when converting to the same codec */
  extra: z.record(z.string(), z.record(z.string(), z.unknown())),
});
export type VmSpec = z.infer<typeof VmSpecSchema>;

/**
 * Validates a decoder's result. A decoder that produced something outside the model reports
 * it as the source file's fault (ERR_CORRUPT naming the field), never as a crash.
 */
export function validateSpec(spec: unknown, file: string): VmSpec {
  const r = VmSpecSchema.safeParse(spec);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const field = issue.path.join('.') || '(root)';
    throw new PolyvisorError('ERR_CORRUPT', `VM descriptor field ${field}: ${issue.message}`, { file, structure: field });
  }
  return r.data;
}

/** A VmSpec with every required field at its neutral default, for decoders to fill in. */
export function emptySpec(name: string): VmSpec {
  return {
    name,
    firmware: { type: 'bios' },
    virtualization: 'hvm',
    cpu: { count: 1 },
    memory: { bytes: 512 << 20 },
    disks: [],
    nics: [],
    consoles: [],
    graphics: [],
    os: { family: 'unknown' },
    extra: {},
  };
}

/** Normalises a MAC address as the model keeps it: "00:16:3E:AA:bb:cc" or "00-16-3e-aa-bb-cc" → "00:16:3e:aa:bb:cc". */
export function normaliseMac(text: string): string | undefined {
  const hex = text.trim().toLowerCase().replace(/[-:.]/g, '');
  if (!/^[0-9a-f]{12}$/.test(hex)) return undefined;
  return hex.match(/../g)!.join(':');
}
