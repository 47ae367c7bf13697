/**
 * BlockImage: the one interface every disk format implements.
 *
 * A BlockImage is a virtual disk of `virtualSize` bytes. Guest offsets are byte offsets
 * into that virtual disk; host offsets are byte offsets into the image file. Reads resolve
 * the whole backing chain (an unallocated range reads from `backing`, or as zeroes when
 * there is none); `blockStatus` reports only this layer, so that `map`, `convert` and
 * `compare` can walk a chain without reading data they do not need.
 */

/** Allocation state of a guest range in one layer of a chain. */
export type ExtentKind =
  /** this layer stores data for the range */
  | 'data'
  /** this layer says the range reads as zeroes (qcow2 zero cluster, a VHD block...) */
  | 'zero'
  /** this layer says nothing: read through to the backing image (zeroes if none) */
  | 'unallocated';

export interface Extent {
  /** guest offset */
  offset: number;
  length: number;
  kind: ExtentKind;
  /** where a 'data' extent lives in this layer's file, when it is stored contiguously there */
  hostOffset?: number;
  /** true when the data is stored compressed (hostOffset then is not meaningful for copying) */
  compressed?: boolean;
}

/** What the image records about its backing (parent) file, before it is resolved. */
export interface BackingRef {
  /** the name exactly as the image records it (may be relative to the image's folder) */
  name: string;
  /** the backing format recorded in the image, if any */
  format?: string;
  /** the path that was opened, once resolved */
  resolved?: string;
}

export interface CheckResult {
  /** clusters/blocks referenced but with wrong metadata: data may be lost or wrong */
  corruptions: number;
  /** space allocated but referenced by nothing: wasteful, not harmful */
  leaks: number;
  /** human-readable findings, one per problem, naming structure and offset */
  messages: string[];
  /** format-specific counters in the spirit of qemu-img check --output=json */
  allocatedClusters?: number;
  totalClusters?: number;
  compressedClusters?: number;
  fragmentedClusters?: number;
  imageEndOffset?: number;
}

export interface BlockImage {
  /** the registry name of the format ("raw", "qcow2", "vhd") */
  readonly format: string;
  /** the file this image was opened from */
  readonly path: string;
  readonly virtualSize: number;
  readonly readOnly: boolean;
  /**
   * The unit of allocation (qcow2 cluster, VHD block). Converters write in multiples of it
   * and detect zeroes at this granularity.
   */
  readonly clusterSize: number;
  /** the backing image this layer reads through to, once opened */
  readonly backing: BlockImage | null;
  /** what the image records about its backing file, even when it was not opened */
  readonly backingRef: BackingRef | null;

  /**
   * This layer's allocation over [offset, offset+length): ascending, contiguous extents
   * that cover the range exactly (adjacent extents of the same kind may be merged).
   */
  blockStatus(offset: number, length: number): Promise<Extent[]>;

  /** Fills `buf` with guest data starting at guest `offset`, resolving the backing chain. */
  read(buf: Uint8Array, offset: number): Promise<void>;

  /** Writes `buf` at guest `offset`. Any offset and length inside the virtual disk is allowed. */
  write(buf: Uint8Array, offset: number): Promise<void>;

  /**
   * Makes [offset, offset+length) read as zeroes, without storing zero bytes where the
   * format can say "zero" in its metadata. Optional: when missing, callers write zeroes.
   */
  writeZeroes?(offset: number, length: number): Promise<void>;

  /**
   * Writes all metadata this layer holds in memory, so that the file is complete, and makes
   * it durable (fdatasync) unless the image was created with cache mode 'unsafe'.
   */
  flush(): Promise<void>;

  /** Flushes (when writable) and closes this layer and its backing chain. */
  close(): Promise<void>;

  /** Format-specific facts for `disk info`, JSON-serialisable, keys in the format's own words. */
  formatInfo(): Record<string, unknown>;

  /** Consistency check of this layer's metadata (qemu-img check). Optional per format. */
  check?(): Promise<CheckResult>;
}
