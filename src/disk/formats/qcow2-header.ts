/**
 * qcow2 on-disk structures: the image header, its extensions, and the bit layout of L1/L2
 * entries (QEMU docs/interop/qcow2.txt, sections "Header", "Header extensions" and
 * "Cluster mapping"). Everything read here is validated before any other code trusts it.
 */
import { PolyvisorError, hex } from '../../errors.js';
import type { ImageFile } from '../io.js';

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
export const V2_HEADER_LENGTH = 72;
export const V3_MIN_HEADER_LENGTH = 104;
/** What we write for v3: 104 bytes plus the compression_type byte, padded to a multiple of 8. */
export const V3_HEADER_LENGTH = 112;
export const MIN_CLUSTER_BITS = 9;
/** "qemu as of today has an implementation limit of 2 MB as the maximum cluster size" */
export const MAX_CLUSTER_BITS = 21;
/** "qemu has an implementation limit of 32 MB as the maximum L1 table size" */
export const MAX_L1_ENTRIES = (32 << 20) / 8;
/** qemu stops at 8 MiB of refcount table; we accept a little more from other writers. */
export const MAX_REFTABLE_BYTES = 32 << 20;
export const MAX_SNAPSHOTS = 65536;
export const MAX_BACKING_NAME = 1023;

// Header extension types ("Header extensions")
export const EXT_END = 0x00000000;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

// incompatible_features bits
export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTL2 = 1n << 4n;
const INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
// compatible_features bits
export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;
// autoclear_features bits
export const AUTOCLEAR_BITMAPS = 1n << 0n;
export const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;

/** Byte offsets of the header fields we patch when rewriting the header. */
export const HDR = {
  refcountTableOffset: 48,
  refcountTableClusters: 56,
  incompatibleFeatures: 72,
  compatibleFeatures: 80,
  autoclearFeatures: 88,
} as const;

export interface BitmapsExtension {
  nbBitmaps: number;
  directorySize: number;
  directoryOffset: number;
}

export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
  // from the header cluster
  backingFile?: string;
  backingFormat?: string;
  dataFile?: string;
  /** "type:bit" → name, from the feature name table */
  featureNames: Map<string, string>;
  bitmaps?: BitmapsExtension;
  /** the raw header bytes (72 or header_length), kept so that rewriting preserves unknown fields */
  raw: Buffer;
}

function corrupt(file: string, detail: string, structure = 'qcow2 header', offset = 0): PolyvisorError {
  return new PolyvisorError('ERR_CORRUPT', detail, { file, structure, offset });
}

function u64(buf: Buffer, at: number, file: string, field: string): number {
  const v = buf.readBigUInt64BE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(file, `${field} holds ${hex(v)}, beyond any real file`, 'qcow2 header', at);
  return Number(v);
}

/** True when `head` starts with the qcow2 magic and a version this module knows (2 or 3). */
export function isQcow2Head(head: Uint8Array): boolean {
  if (head.length < 8) return false;
  const b = Buffer.from(head.buffer, head.byteOffset, 8);
  const v = b.readUInt32BE(4);
  return b.readUInt32BE(0) === QCOW2_MAGIC && (v === 2 || v === 3);
}

/** How much of an image's start readHeader reads at once. */
const HEAD_READ = 64 * 1024;

/**
 * Reads and validates the header, its extensions and the backing file name. Feature bits
 * are decoded but not judged here (see `unsupportedFeature`); table offsets are checked by
 * `validateLayout`.
 */
export async function readHeader(file: ImageFile, start?: Buffer): Promise<Qcow2Header> {
  const path = file.path;
  // One read of the file's start serves every structure below when the header cluster is at
  // most HEAD_READ bytes (it is 64 KiB by default): each read is a round trip to the thread
  // pool, and an image is opened on the way to every VM start. `start`: those bytes, when the
  // caller has just written them (a new image).
  const want = Math.min(HEAD_READ, file.size);
  const head = start ? start.subarray(0, want) : await file.readStructure(0, want, 'qcow2 header');
  const read = (offset: number, length: number, structure: string): Promise<Buffer> | Buffer =>
    offset + length <= head.length ? head.subarray(offset, offset + length) : file.readStructure(offset, length, structure);
  const fixed = await read(0, V2_HEADER_LENGTH, 'qcow2 header');
  if (fixed.readUInt32BE(0) !== QCOW2_MAGIC) throw corrupt(path, 'bad magic: not a qcow2 image');
  const version = fixed.readUInt32BE(4);
  if (version === 1) throw new PolyvisorError('ERR_UNSUPPORTED', 'qcow version 1 images are not supported (only qcow2 versions 2 and 3)', { file: path, structure: 'qcow2 header', offset: 4 });
  if (version !== 2 && version !== 3) throw new PolyvisorError('ERR_UNSUPPORTED', `qcow2 version ${version} is not supported (only 2 and 3)`, { file: path, structure: 'qcow2 header', offset: 4 });
  const clusterBits = fixed.readUInt32BE(20);
  if (clusterBits < MIN_CLUSTER_BITS) throw corrupt(path, `cluster_bits ${clusterBits} is below the minimum of ${MIN_CLUSTER_BITS}`, 'qcow2 header', 20);
  if (clusterBits > MAX_CLUSTER_BITS) throw new PolyvisorError('ERR_UNSUPPORTED', `cluster_bits ${clusterBits} (clusters over 2 MiB) is beyond the 2 MiB limit qemu also has`, { file: path, structure: 'qcow2 header', offset: 20 });
  const cs = 2 ** clusterBits;

  let headerLength = V2_HEADER_LENGTH;
  let raw = fixed;
  if (version === 3) {
    const v3 = await read(0, V3_MIN_HEADER_LENGTH, 'qcow2 version 3 header');
    headerLength = v3.readUInt32BE(100);
    if (headerLength < V3_MIN_HEADER_LENGTH || headerLength % 8 !== 0) {
      throw corrupt(path, `header_length ${headerLength} must be at least ${V3_MIN_HEADER_LENGTH} and a multiple of 8`, 'qcow2 header', 100);
    }
    if (headerLength > cs) throw corrupt(path, `header_length ${headerLength} is larger than the ${cs}-byte header cluster`, 'qcow2 header', 100);
    raw = await read(0, headerLength, 'qcow2 version 3 header');
  }

  const h: Qcow2Header = {
    version,
    backingFileOffset: u64(raw, 8, path, 'backing_file_offset'),
    backingFileSize: raw.readUInt32BE(16),
    clusterBits,
    size: u64(raw, 24, path, 'size'),
    cryptMethod: raw.readUInt32BE(32),
    l1Size: raw.readUInt32BE(36),
    l1TableOffset: u64(raw, 40, path, 'l1_table_offset'),
    refcountTableOffset: u64(raw, 48, path, 'refcount_table_offset'),
    refcountTableClusters: raw.readUInt32BE(56),
    nbSnapshots: raw.readUInt32BE(60),
    snapshotsOffset: u64(raw, 64, path, 'snapshots_offset'),
    incompatibleFeatures: version === 3 ? raw.readBigUInt64BE(72) : 0n,
    compatibleFeatures: version === 3 ? raw.readBigUInt64BE(80) : 0n,
    autoclearFeatures: version === 3 ? raw.readBigUInt64BE(88) : 0n,
    // "For version 2 images, the order is always assumed to be 4"
    refcountOrder: version === 3 ? raw.readUInt32BE(96) : 4,
    headerLength,
    // "A field is considered not present when header_length is less than or equal to the field's offset"
    compressionType: headerLength > 104 ? raw[104]! : 0,
    featureNames: new Map(),
    raw: Buffer.from(raw),
  };
  if (h.refcountOrder > 6) throw corrupt(path, `refcount_order ${h.refcountOrder} exceeds 6 (64-bit refcounts)`, 'qcow2 header', 96);

  // The rest of the header cluster holds the extensions and the backing file name. A file
  // shorter than one cluster is allowed (the header cluster is then zero-padded).
  const clusterLen = Math.min(cs, file.size);
  const cluster = await read(0, clusterLen, 'qcow2 header cluster');

  if (h.backingFileOffset !== 0) {
    if (h.backingFileSize > MAX_BACKING_NAME) throw corrupt(path, `backing_file_size ${h.backingFileSize} exceeds ${MAX_BACKING_NAME} bytes`, 'qcow2 header', 16);
    if (h.backingFileOffset < headerLength || h.backingFileOffset + h.backingFileSize > cs) {
      throw corrupt(path, `backing file name at ${hex(h.backingFileOffset)} (${h.backingFileSize} bytes) is not inside the header cluster`, 'qcow2 header', 8);
    }
    const name = await read(h.backingFileOffset, h.backingFileSize, 'backing file name');
    h.backingFile = name.toString('utf8');
  }

  parseExtensions(h, cluster, path);
  return h;
}

/**
 * "Directly after the image header, optional sections called header extensions can be
 * stored." The walk ends at the end marker, at the backing file name, or at the end of the
 * header cluster; each step advances at least 8 bytes, so it always terminates.
 */
function parseExtensions(h: Qcow2Header, cluster: Buffer, path: string): void {
  let pos = h.headerLength;
  let end = cluster.length;
  if (h.backingFileOffset !== 0) end = Math.min(end, h.backingFileOffset);
  while (pos + 8 <= end) {
    const type = cluster.readUInt32BE(pos);
    const len = cluster.readUInt32BE(pos + 4);
    if (type === EXT_END) return;
    const data = pos + 8;
    if (data + len > end) {
      throw corrupt(path, `header extension ${hex(type)} of ${len} bytes runs past the header area (ends at ${hex(end)})`, 'header extension', pos);
    }
    const body = cluster.subarray(data, data + len);
    switch (type) {
      case EXT_BACKING_FORMAT:
        h.backingFormat = body.toString('latin1').replace(/\0+$/, '');
        break;
      case EXT_DATA_FILE:
        h.dataFile = body.toString('utf8');
        break;
      case EXT_FEATURE_TABLE:
        // "Each entry look like this: type (1 byte), bit number (1 byte), name (46 bytes)"
        for (let e = 0; e + 48 <= len; e += 48) {
          const name = body.subarray(e + 2, e + 48).toString('utf8').replace(/\0.*$/s, '');
          h.featureNames.set(`${body[e]}:${body[e + 1]}`, name);
        }
        break;
      case EXT_BITMAPS:
        if (len < 24) throw corrupt(path, `bitmaps extension is ${len} bytes, needs 24`, 'bitmaps extension', pos);
        h.bitmaps = {
          nbBitmaps: body.readUInt32BE(0),
          directorySize: u64(body, 8, path, 'bitmap_directory_size'),
          directoryOffset: u64(body, 16, path, 'bitmap_directory_offset'),
        };
        break;
      default:
        // EXT_CRYPTO and unknown extensions: "can be safely ignored"
        break;
    }
    pos = data + Math.ceil(len / 8) * 8;
  }
}

/**
 * The first feature this implementation cannot handle, as a sentence for ERR_UNSUPPORTED,
 * or null. Unknown incompatible bits are named from the image's feature name table when
 * it has one ("An implementation must fail to open an image if an unknown bit is set").
 */
export function unsupportedFeature(h: Qcow2Header): string | null {
  if (h.cryptMethod !== 0) {
    const m = h.cryptMethod === 1 ? 'AES' : h.cryptMethod === 2 ? 'LUKS' : `method ${h.cryptMethod}`;
    return `encrypted images (crypt_method ${h.cryptMethod}, ${m}) are not supported`;
  }
  const unknown = h.incompatibleFeatures & ~INCOMPAT_KNOWN;
  if (unknown !== 0n) {
    const names: string[] = [];
    for (let bit = 0; bit < 64; bit++) {
      if (unknown & (1n << BigInt(bit))) names.push(h.featureNames.get(`0:${bit}`) ?? `bit ${bit}`);
    }
    return `unknown incompatible feature(s): ${names.join(', ')}`;
  }
  if (h.incompatibleFeatures & INCOMPAT_EXTL2) return 'extended L2 entries (subclusters, incompatible feature bit 4) are not supported';
  if (h.incompatibleFeatures & INCOMPAT_DATA_FILE) return `external data files (incompatible feature bit 2${h.dataFile ? `, "${h.dataFile}"` : ''}) are not supported`;
  if (h.compressionType !== 0) {
    return `compression_type ${h.compressionType}${h.compressionType === 1 ? ' (zstd)' : ''} is not supported; only zlib`;
  }
  return null;
}

/** The number of L1 entries a virtual size needs: one per (cluster_size / 8) clusters. */
export function l1EntriesFor(size: number, clusterBits: number): number {
  const perL1 = 2 ** (2 * clusterBits - 3);
  return Math.ceil(size / perL1);
}

interface Range {
  name: string;
  start: number;
  end: number;
}

/**
 * Validates every table offset and length in the header against the file before anything
 * is allocated from them. Returns the metadata ranges that data clusters must not overlap.
 */
export function validateLayout(h: Qcow2Header, fileSize: number, path: string): Range[] {
  const cs = 2 ** h.clusterBits;
  const need = l1EntriesFor(h.size, h.clusterBits);
  if (need > MAX_L1_ENTRIES) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `virtual size ${h.size} needs ${need} L1 entries, beyond the 32 MiB L1 limit`, { file: path, structure: 'qcow2 header', offset: 24 });
  }
  if (h.l1Size > MAX_L1_ENTRIES) throw corrupt(path, `l1_size ${h.l1Size} exceeds the 32 MiB L1 table limit`, 'qcow2 header', 36);
  if (h.l1Size < need) throw corrupt(path, `l1_size ${h.l1Size} is too small for the ${h.size}-byte virtual size (needs ${need})`, 'qcow2 header', 36);
  const ranges: Range[] = [{ name: 'header', start: 0, end: cs }];
  if (h.l1Size > 0) {
    if (h.l1TableOffset % cs !== 0 || h.l1TableOffset === 0) throw corrupt(path, `L1 table offset ${hex(h.l1TableOffset)} is not a non-zero multiple of the cluster size`, 'qcow2 header', 40);
    if (h.l1TableOffset + h.l1Size * 8 > fileSize) {
      throw new PolyvisorError('ERR_TRUNCATED', `L1 table (${h.l1Size} entries at ${hex(h.l1TableOffset)}) extends past the end of the file (${hex(fileSize)})`, { file: path, structure: 'L1 table', offset: h.l1TableOffset });
    }
    ranges.push({ name: 'L1 table', start: h.l1TableOffset, end: h.l1TableOffset + h.l1Size * 8 });
  }
  if (h.refcountTableClusters === 0) throw corrupt(path, 'refcount_table_clusters is 0', 'qcow2 header', 56);
  if (h.refcountTableOffset % cs !== 0 || h.refcountTableOffset === 0) {
    throw corrupt(path, `refcount table offset ${hex(h.refcountTableOffset)} is not a non-zero multiple of the cluster size`, 'qcow2 header', 48);
  }
  const rtBytes = h.refcountTableClusters * cs;
  if (rtBytes > MAX_REFTABLE_BYTES) throw corrupt(path, `refcount table of ${h.refcountTableClusters} clusters exceeds ${MAX_REFTABLE_BYTES} bytes`, 'qcow2 header', 56);
  if (h.refcountTableOffset + rtBytes > fileSize) {
    throw new PolyvisorError('ERR_TRUNCATED', `refcount table (${h.refcountTableClusters} clusters at ${hex(h.refcountTableOffset)}) extends past the end of the file (${hex(fileSize)})`, { file: path, structure: 'refcount table', offset: h.refcountTableOffset });
  }
  ranges.push({ name: 'refcount table', start: h.refcountTableOffset, end: h.refcountTableOffset + rtBytes });
  if (h.nbSnapshots > MAX_SNAPSHOTS) throw corrupt(path, `nb_snapshots ${h.nbSnapshots} exceeds ${MAX_SNAPSHOTS}`, 'qcow2 header', 60);
  if (h.nbSnapshots > 0) {
    if (h.snapshotsOffset % cs !== 0 || h.snapshotsOffset === 0) throw corrupt(path, `snapshot table offset ${hex(h.snapshotsOffset)} is not a non-zero multiple of the cluster size`, 'qcow2 header', 64);
    if (h.snapshotsOffset + 40 > fileSize) {
      throw new PolyvisorError('ERR_TRUNCATED', `snapshot table at ${hex(h.snapshotsOffset)} lies past the end of the file`, { file: path, structure: 'snapshot table', offset: h.snapshotsOffset });
    }
  }
  for (let i = 0; i < ranges.length; i++) {
    for (let j = i + 1; j < ranges.length; j++) {
      const a = ranges[i]!;
      const b = ranges[j]!;
      if (a.start < b.end && b.start < a.end) throw corrupt(path, `${a.name} (${hex(a.start)}..${hex(a.end)}) overlaps ${b.name} (${hex(b.start)}..${hex(b.end)})`, b.name, b.start);
    }
  }
  return ranges;
}

/**
 * A complete header cluster for a new image: header fields, a backing format extension,
 * the end marker, and the backing file name after them.
 */
export function buildHeaderCluster(p: {
  version: 2 | 3;
  clusterBits: number;
  size: number;
  l1Size: number;
  l1TableOffset: number;
  refcountOrder: number;
  lazyRefcounts: boolean;
  backingFile?: string;
  backingFormat?: string;
}): Buffer {
  const cs = 2 ** p.clusterBits;
  const buf = Buffer.alloc(cs);
  const headerLength = p.version === 3 ? V3_HEADER_LENGTH : V2_HEADER_LENGTH;
  buf.writeUInt32BE(QCOW2_MAGIC, 0);
  buf.writeUInt32BE(p.version, 4);
  buf.writeUInt32BE(p.clusterBits, 20);
  buf.writeBigUInt64BE(BigInt(p.size), 24);
  buf.writeUInt32BE(0, 32); // crypt_method: none
  buf.writeUInt32BE(p.l1Size, 36);
  buf.writeBigUInt64BE(BigInt(p.l1TableOffset), 40);
  // refcount table offset/clusters (48, 56) are filled in when the refcounts are flushed
  if (p.version === 3) {
    buf.writeBigUInt64BE(p.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0n, 80);
    buf.writeUInt32BE(p.refcountOrder, 96);
    buf.writeUInt32BE(headerLength, 100);
    buf[104] = 0; // compression_type: zlib
  }
  let pos = headerLength;
  if (p.backingFormat) {
    const fmt = Buffer.from(p.backingFormat, 'latin1');
    buf.writeUInt32BE(EXT_BACKING_FORMAT, pos);
    buf.writeUInt32BE(fmt.length, pos + 4);
    fmt.copy(buf, pos + 8);
    pos += 8 + Math.ceil(fmt.length / 8) * 8;
  }
  pos += 8; // end-of-extensions marker: 8 zero bytes
  if (p.backingFile !== undefined) {
    const name = Buffer.from(p.backingFile, 'utf8');
    if (name.length > MAX_BACKING_NAME) {
      throw new PolyvisorError('ERR_INVALID_OPTION', `backing file name is ${name.length} bytes; qcow2 allows at most ${MAX_BACKING_NAME}`);
    }
    if (pos + name.length > cs) {
      throw new PolyvisorError('ERR_INVALID_OPTION', `backing file name does not fit in the ${cs}-byte header cluster; use a larger cluster_size`);
    }
    name.copy(buf, pos);
    buf.writeBigUInt64BE(BigInt(pos), 8);
    buf.writeUInt32BE(name.length, 16);
  }
  return buf;
}

// ---- L1/L2 entry bit layout ("Cluster mapping") ----------------------------------------
// Entries are 64-bit big-endian; we handle them as two 32-bit halves (hi, lo) so that no
// value ever passes through a lossy double.

export const TWO32 = 2 ** 32;
/** bit 63 (in hi): "1 for standard clusters whose refcount is exactly one" */
export const OFLAG_COPIED = 0x80000000;
/** bit 62 (in hi): compressed cluster descriptor */
export const OFLAG_COMPRESSED = 0x40000000;
/** bit 0 (in lo): "the cluster reads as all zeros" (version 3 only) */
export const OFLAG_ZERO = 1;

/** Bits 9..55: the host offset of a standard cluster, or of an L2 table in an L1 entry. */
export function entryOffset(hi: number, lo: number): number {
  return (hi & 0x00ffffff) * TWO32 + ((lo & 0xfffffe00) >>> 0);
}

/**
 * Compressed Clusters Descriptor (x = 62 - (cluster_bits - 8)): bits 0..x-1 hold the byte
 * offset, bits x..61 the number of additional 512-byte sectors. The data runs from the
 * offset to the end of the last sector.
 */
export function compressedOffset(hi: number, lo: number, clusterBits: number): number {
  const s = 70 - clusterBits - 32; // x - 32: where the sector count starts in hi
  return (hi & ((1 << s) - 1)) * TWO32 + lo;
}

export function compressedSize(hi: number, lo: number, clusterBits: number): number {
  const s = 70 - clusterBits - 32;
  const sectors = ((hi >>> s) & ((1 << (clusterBits - 8)) - 1)) + 1;
  return sectors * 512 - (lo & 511);
}

export function setEntry(buf: Buffer, at: number, hi: number, lo: number): void {
  buf.writeUInt32BE(hi >>> 0, at);
  buf.writeUInt32BE(lo >>> 0, at + 4);
}

/** A standard entry for a cluster with refcount 1 at `host`. */
export function setStandardEntry(buf: Buffer, at: number, host: number): void {
  setEntry(buf, at, OFLAG_COPIED | Math.floor(host / TWO32), host % TWO32);
}

/** A compressed entry for `length` bytes of deflate data at byte offset `host`. */
export function setCompressedEntry(buf: Buffer, at: number, host: number, length: number, clusterBits: number): void {
  const s = 70 - clusterBits - 32;
  const extraSectors = Math.floor((host + length - 1) / 512) - Math.floor(host / 512);
  setEntry(buf, at, OFLAG_COMPRESSED | (extraSectors << s) | Math.floor(host / TWO32), host % TWO32);
}
