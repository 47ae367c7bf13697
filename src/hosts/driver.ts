/**
 * HypervisorDriver: what every host engine (local QEMU, xl over SSH, later others) exports.
 *
 * Shaped after libvirt's driver tables (src/driver-hypervisor.h): one slot per operation, a
 * driver fills the slots it supports, and calling an empty slot yields ONE uniform error
 * (ERR_UNSUPPORTED "<driver> cannot <op>") instead of each front end inventing its own. The
 * capability manifest states, as data, what the driver runs (firmware, virtualization modes,
 * disk formats, accelerators), so that the README's support matrix can be generated from the
 * drivers themselves and cannot drift from the code.
 */
import type { Duplex } from 'node:stream';
import { PolyvisorError } from '../errors.js';
import type { BlockImage } from '../disk/image.js';
import type { VmSpec } from '../vm/spec.js';

/** Every operation slot, in the order the support matrix lists them. */
export const DRIVER_OPERATIONS = ['define', 'start', 'stop', 'kill', 'pause', 'resume', 'console', 'screenshot', 'list', 'undefine', 'export'] as const;
export type DriverOperation = (typeof DRIVER_OPERATIONS)[number];

export interface DriverCapabilities {
  /** the operation slots this driver fills (see operationsOf(): a test keeps the two equal) */
  operations: DriverOperation[];
  firmware: ('bios' | 'uefi')[];
  virtualization: ('hvm' | 'pv' | 'pvh')[];
  /** disk formats the host reads in place, in Polyvisor's registry names */
  diskFormats: string[];
  /** execution engines: kvm, tcg, xen... */
  accelerators: string[];
}

/**
 * A disk of spec.disks as the host will open it: a local file or an NBD export, in a format
 * the host reads. Undefined in the list for a disk with no medium (an empty CD-ROM).
 */
export interface DiskAttachment {
  path?: string;
  /** nbd://host:port/export or nbd+unix:///export?socket=/path */
  nbdUri?: string;
  /** Polyvisor's registry name: raw, qcow2, vmdk, vhd, vhdx, vdi */
  format: string;
  readOnly?: boolean;
  /**
   * Opens the disk through Polyvisor's engine, for drivers that copy disks to their host (xl):
   * a disk inside a package, or an overlay whose chain the caller has already vetted
   */
  open?: () => Promise<BlockImage>;
}

export interface DefineInput {
  spec: VmSpec;
  /** one entry per spec.disks, same index */
  disks: Array<DiskAttachment | undefined>;
}

export type VmState = 'defined' | 'running' | 'paused';

export interface VmListEntry {
  name: string;
  state: VmState;
  /** the host process, when the VM runs as one */
  pid?: number;
}

export interface StopOptions {
  /** how long the guest gets to power off after the ACPI request before it is forced off */
  timeoutMs?: number;
}

/** How a stop ended: the guest powered off, or the host had to end it. */
export type StopResult = 'graceful' | 'forced';

/** All slots are optional; a driver fills what it can do. */
export interface HypervisorDriver {
  readonly name: string;
  readonly capabilities: DriverCapabilities;
  define?(input: DefineInput): Promise<void>;
  start?(name: string): Promise<void>;
  /** ACPI power-off; forced off when the guest does not obey within the timeout */
  stop?(name: string, options?: StopOptions): Promise<StopResult>;
  /** immediate power cut */
  kill?(name: string): Promise<void>;
  pause?(name: string): Promise<void>;
  resume?(name: string): Promise<void>;
  /** the guest's first serial console, as a byte stream both ways */
  console?(name: string): Promise<Duplex>;
  /** writes the guest's screen as a PNG file */
  screenshot?(name: string, pngPath: string): Promise<void>;
  list?(): Promise<VmListEntry[]>;
  undefine?(name: string): Promise<void>;
  /**
   * Copies a VM off the host into the local `folder`: its descriptor and its disks. Returns
   * the VM's spec with local, absolute disk (and kernel/ramdisk) paths.
   */
  export?(name: string, folder: string): Promise<VmSpec>;
}

type Slot<K extends DriverOperation> = NonNullable<HypervisorDriver[K]>;

/** True when the driver fills the slot. */
export function supports(driver: HypervisorDriver, op: DriverOperation): boolean {
  return typeof driver[op] === 'function';
}

/** The filled slots, read from the driver itself: the manifest's `operations` must equal this. */
export function operationsOf(driver: HypervisorDriver): DriverOperation[] {
  return DRIVER_OPERATIONS.filter((op) => supports(driver, op));
}

/**
 * Calls an operation, or throws the one uniform ERR_UNSUPPORTED when the driver leaves the
 * slot empty. Front ends call operations only through here.
 */
export function invoke<K extends DriverOperation>(
  driver: HypervisorDriver,
  op: K,
  ...args: Parameters<Slot<K>>
): ReturnType<Slot<K>> {
  const fn = driver[op] as ((...a: unknown[]) => ReturnType<Slot<K>>) | undefined;
  // every slot is async, so the refusal is a rejected promise too: callers handle one shape
  if (typeof fn !== 'function') return Promise.reject(new PolyvisorError('ERR_UNSUPPORTED', `${driver.name} cannot ${op}`)) as ReturnType<Slot<K>>;
  return fn.apply(driver, args);
}
