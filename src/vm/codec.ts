/**
 * What a VM descriptor codec and a VM package format export.
 *
 * A codec translates one hypervisor's descriptor (xl.cfg, libvirt XML, .vmx, OVF, .vmc,
 * Hyper-V XML...) to and from VmSpec. A package (OVA, XVA) is a file that carries a
 * descriptor and its disks together. Both report every setting they could not carry across
 * (ConversionNote): nothing is dropped silently.
 */
import type { BlockImage } from '../disk/image.js';
import type { VmSpec } from './spec.js';

export interface ConversionNote {
  /** the setting: a VmSpec path ("firmware.secureBoot", "nics[1].model") or the source's own key ("vmx: sched.mem.min") */
  setting: string;
  /**
   * dropped: the target cannot express it; changed: it was expressed differently; kept: written
   * as it was, though the target cannot use it as it is (a disk left in a format it cannot open)
   */
  action: 'dropped' | 'changed' | 'kept';
  from?: unknown;
  to?: unknown;
  /** why, in the words of the target: "xl has no e1000e model; e1000 is the nearest it emulates" */
  reason: string;
}

export interface DecodeResult {
  spec: VmSpec;
  /** settings the decoder read but could not place in the model or in extra (rare: say why) */
  notes: ConversionNote[];
}

export interface EncodeInput {
  spec: VmSpec;
  /**
   * The file each of spec.disks will have, as the descriptor must record it (relative to the
   * descriptor's folder), and its disk format. Undefined for a disk with no file (empty CD-ROM).
   */
  diskFiles: Array<{ file: string; format: string; capacity: number } | undefined>;
  /** the base name of the files to write (NAME.cfg, NAME.vmx...) */
  name: string;
  /**
   * The absolute folder the descriptor will be written to. Targets that require absolute disk
   * paths (libvirt's schema does) resolve relative `diskFiles` against it.
   */
  folder?: string;
}

export interface EncodeResult {
  /** files to write, by name relative to the output folder (the descriptor first) */
  files: Array<{ name: string; data: string | Buffer }>;
  notes: ConversionNote[];
}

export interface VmCodec {
  /** `--to` name */
  name: string;
  description: string;
  /** the hypervisors that read and write this descriptor */
  usedBy: string;
  /** file name endings this codec reads (".cfg", ".xml"...) */
  extensions: readonly string[];
  /** the disk format the target imports, used unless `--disk-format` says otherwise */
  defaultDiskFormat: string;
  /** disk formats the target accepts; converting to another is refused */
  diskFormats: readonly string[];
  /**
   * Confidence 0..100 that `head` (the file's first 64 KiB) is this codec's descriptor.
   * Must not throw.
   */
  probe(head: Buffer, path: string): number;
  /** Reads a descriptor. `path` names it in errors; disk files stay as recorded. */
  decode?(data: Buffer, path: string): DecodeResult;
  /** Writes a descriptor for `input.spec`. */
  encode?(input: EncodeInput): EncodeResult;
}

/** One disk of a VM source, with a way to open its content through the disk engine. */
export interface SourceDisk {
  /** index into spec.disks */
  index: number;
  /** for messages: the file, or "disk1.vmdk in web.ova" */
  label: string;
  open(): Promise<BlockImage>;
}

/** A VM opened from a descriptor, an exported folder or a package. */
export interface VmSource {
  path: string;
  /** the codec or package that read it */
  kind: string;
  spec: VmSpec;
  disks: SourceDisk[];
  notes: ConversionNote[];
  close(): Promise<void>;
}

export interface PackageWriteOptions {
  /** called with bytes done and total while disks are written */
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
  /** replace an existing package */
  force?: boolean;
}

export interface VmPackage {
  /** `--to` name: "ova", "xva" */
  name: string;
  description: string;
  usedBy: string;
  extensions: readonly string[];
  /** Confidence 0..100 from the first 64 KiB (a tar header, for both OVA and XVA). */
  probe(head: Buffer, path: string): number;
  open(path: string, opts: { allowOutsidePaths?: boolean }): Promise<VmSource>;
  /**
   * Writes `source` (any VmSource: its spec and its disks) as one package file at `path`,
   * atomically. Returns what the package could not carry.
   */
  write(source: VmSource, path: string, opts: PackageWriteOptions): Promise<{ notes: ConversionNote[] }>;
  /**
   * Verifies every checksum the package carries, reading all of it (a package whose open()
   * checks lazily, chunk by chunk, offers this for an up-front check). Throws ERR_CHECKSUM
   * naming the first member that fails.
   */
  verify?(path: string, opts: { signal?: AbortSignal; onProgress?: (done: number, total: number) => void }): Promise<{ verified: number }>;
}
