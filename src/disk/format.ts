/**
 * DiskFormat: what one format file exports, and the contexts the engine hands it.
 * Modelled on QEMU's BlockDriver: one table of operations plus capability flags, so that
 * no code outside a format ever asks `if (format === 'x')`.
 */
import type { BlockImage } from './image.js';
import type { ImageFile } from './io.js';

export interface FormatCapabilities {
  /** can open existing images of this format for reading */
  read: boolean;
  /** can create images and write to them */
  write: boolean;
  /** layers can refer to a backing (parent) image */
  backing: boolean;
  /** can store compressed data when asked (`convert -c`) */
  compression: boolean;
  /** new images read as zeroes without writing zeroes (sparse creation) */
  zeroInit: boolean;
  /** has a `check` of its metadata */
  check: boolean;
}

/** A `-o key=value` option a format accepts on create/convert. */
export interface CreateOption {
  name: string;
  description: string;
  /** accepted values, for enumerations */
  values?: readonly string[];
  /** "size" (K/M/G suffixes), "bool" (on/off), "int" or "string" */
  type: 'size' | 'bool' | 'int' | 'string' | 'enum';
  default?: string;
}

export interface OpenOptions {
  /** open for writing (default read-only) */
  writable?: boolean;
  /** force the format instead of probing */
  format?: string;
  /** allow backing files outside the referring image's folder */
  allowOutsidePaths?: boolean;
  /** do not open backing files at all (info without a chain, or a broken chain) */
  noBacking?: boolean;
  /** maximum number of images in a chain, the top included */
  maxChainDepth?: number;
  /**
   * Read the top image from `length` bytes at `offset` of the file, as if they were a whole
   * file: a disk inside a package (an OVA's VMDK member). Read-only.
   */
  window?: { offset: number; length: number };
}

export interface OpenContext {
  /** the image file, opened read-only or read-write as asked */
  file: ImageFile;
  readOnly: boolean;
  /**
   * Opens this image's backing file. `candidates` are names in order of preference, as
   * recorded in the image (relative names are relative to this image's folder); the first
   * that exists is opened. Enforces the chain depth limit, refuses cycles and paths outside
   * the image's folder. Returns null when the caller asked not to open backing files.
   */
  openBacking(candidates: string[], format?: string): Promise<BlockImage | null>;
  /**
   * Opens a file this image is made of (a VMDK extent), named as the image records it
   * (relative names are relative to this image's folder). Enforces the folder rule like
   * openBacking; opened writable when the image is.
   */
  openFile(name: string): Promise<ImageFile>;
}

/**
 * qemu's cache modes, for images Polyvisor writes. `writeback` (the default): flush() makes
 * data durable (fdatasync), and a finished output is durable before it is renamed into place.
 * `unsafe`: no fdatasync at all, as `qemu-img convert` does by default; the rename is still
 * atomic, but a power cut soon after may lose the output's content.
 */
export type CacheMode = 'writeback' | 'unsafe';

export interface CreateContext {
  /** the path to create (a temporary name during convert; never an existing file) */
  path: string;
  /** the requested virtual size in bytes; a format may round it (say so in formatInfo) */
  virtualSize: number;
  /** validated `-o` options, keyed by option name, values as given */
  options: Readonly<Record<string, string>>;
  /** the backing image for a new overlay: the name to record, its format, and the open image */
  backing?: { name: string; format: string; image: BlockImage };
  /** how flush() treats durability; pass it to ImageFile.create */
  cache?: CacheMode;
  /**
   * The name the image will have once complete. During a conversion `path` is a temporary
   * name beside it: record `finalPath`'s base name, never `path`'s, in descriptors.
   */
  finalPath: string;
  /**
   * Creates a file that belongs to the image (a VMDK extent or descriptor), given its final
   * name relative to the image's folder. It is written under a temporary name and renamed
   * together with the image when the output is committed, or removed if it is abandoned.
   */
  companion(name: string): Promise<ImageFile>;
}

export interface DiskFormat {
  /** registry name, as `-f` and `-O` take it */
  name: string;
  aliases: readonly string[];
  /** one line for `--help` and the support matrix */
  description: string;
  /** which hypervisors use it, for the docs */
  usedBy: string;
  capabilities: FormatCapabilities;
  createOptions: readonly CreateOption[];
  /**
   * Confidence from 0 (not this format) to 100 (certain) that a file is of this format,
   * from its first bytes (up to 64 KiB), its last 512 bytes and its size. Must not throw.
   */
  probe(head: Uint8Array, tail: Uint8Array, fileSize: number): number;
  open(ctx: OpenContext): Promise<BlockImage>;
  create(ctx: CreateContext): Promise<BlockImage>;
}
