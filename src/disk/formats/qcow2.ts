/**
 * qcow2: QEMU's copy-on-write format (QEMU docs/interop/qcow2.txt), versions 2 and 3.
 *
 * Guest clusters map through a two-level table (L1 → L2 → host cluster); host clusters are
 * reference-counted. Reading follows the active L1 table, decompresses zlib clusters and
 * falls through to the backing chain for unallocated clusters. Writing keeps L1, L2 tables
 * and refcounts in memory and allocates new clusters at the end of the file, so that
 * sequential writes land contiguously and leave in one vectored write; `flush` writes the
 * metadata (L2 tables, L1, refcount blocks, refcount table, header) in that order.
 *
 * Unsupported, and refused with ERR_UNSUPPORTED: encryption, external data files,
 * extended L2 entries (subclusters), zstd compression, writing to images that have
 * internal snapshots or persistent bitmaps (both need copy-on-write of shared metadata).
 */
import { rm } from 'node:fs/promises';
import { PolyvisorError } from '../../errors.js';
import { parseSize } from '../../util/size.js';
import type { CreateContext, DiskFormat, OpenContext } from '../format.js';
import type { BackingRef, BlockImage } from '../image.js';
import { ImageFile } from '../io.js';
import {
  HDR,
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  MAX_L1_ENTRIES,
  buildHeaderCluster,
  isQcow2Head,
  l1EntriesFor,
  readHeader,
  unsupportedFeature,
  validateLayout,
} from './qcow2-header.js';
import { Qcow2Image, type MetaRange } from './qcow2-image.js';
import { Refcounts } from './qcow2-refcount.js';

/** Backing format names as qemu spells them in the header extension, and as our registry does. */
const TO_QEMU_FORMAT: Record<string, string> = { vhd: 'vpc' };
const FROM_QEMU_FORMAT: Record<string, string> = { vpc: 'vhd' };

// ---- open / create ---------------------------------------------------------------------------

async function openQcow2(ctx: OpenContext): Promise<BlockImage> {
  const file = ctx.file;
  const h = await readHeader(file);
  const why = unsupportedFeature(h);
  if (why) throw new PolyvisorError('ERR_UNSUPPORTED', why, { file: file.path, structure: 'qcow2 header' });
  if (!ctx.readOnly && h.incompatibleFeatures & INCOMPAT_CORRUPT) {
    throw new PolyvisorError('ERR_CORRUPT', 'image is marked corrupt (incompatible feature bit 1); it can only be opened read-only (repair with qemu-img check -r all)', { file: file.path, structure: 'qcow2 header', offset: HDR.incompatibleFeatures });
  }
  if (!ctx.readOnly && h.incompatibleFeatures & INCOMPAT_DIRTY) {
    throw new PolyvisorError('ERR_UNSUPPORTED', 'image is marked dirty (its refcounts may be stale after lazy refcount updates); open it read-only, or repair it with qemu-img check -r all before writing', { file: file.path, structure: 'qcow2 header', offset: HDR.incompatibleFeatures });
  }
  const ranges = validateLayout(h, file.size, file.path);
  const l1 = h.l1Size > 0 ? await file.readStructure(h.l1TableOffset, h.l1Size * 8, 'L1 table') : Buffer.alloc(0);
  let backing: BlockImage | null = null;
  let backingRef: BackingRef | null = null;
  if (h.backingFile !== undefined) {
    const fmt = h.backingFormat ? (FROM_QEMU_FORMAT[h.backingFormat] ?? h.backingFormat) : undefined;
    backingRef = { name: h.backingFile, format: fmt };
    backing = await ctx.openBacking([h.backingFile], fmt);
    if (backing) backingRef.resolved = backing.path;
  }
  return new Qcow2Image({ file, header: h, ranges, l1, readOnly: ctx.readOnly, backing, backingRef });
}

function boolOption(v: string | undefined, dflt: boolean): boolean {
  return v === undefined ? dflt : ['on', 'true', 'yes', '1'].includes(v);
}

function invalid(detail: string): PolyvisorError {
  return new PolyvisorError('ERR_INVALID_OPTION', `qcow2: ${detail}`);
}

async function createQcow2(ctx: CreateContext): Promise<BlockImage> {
  const o = ctx.options;
  const cs = o.cluster_size === undefined ? 65536 : parseSize(o.cluster_size, 'cluster_size');
  const cb = Math.log2(cs);
  if (!Number.isInteger(cb) || cb < 9 || cb > 21) throw invalid(`cluster_size ${cs} must be a power of two from 512 to 2M`);
  const compat = o.compat ?? '1.1';
  const version: 2 | 3 = compat === '0.10' || compat === 'v2' ? 2 : 3;
  const refcountBits = o.refcount_bits === undefined ? 16 : Number(o.refcount_bits);
  const order = Math.log2(refcountBits);
  if (!Number.isInteger(order) || order < 0 || order > 6) throw invalid(`refcount_bits ${o.refcount_bits} must be a power of two from 1 to 64`);
  if (version === 2 && refcountBits !== 16) throw invalid('compat=0.10 images always have 16-bit refcounts');
  const lazy = boolOption(o.lazy_refcounts, false);
  if (lazy && version === 2) throw invalid('lazy_refcounts needs compat=1.1');
  if ((o.compression_type ?? 'zlib') !== 'zlib') {
    throw new PolyvisorError('ERR_UNSUPPORTED', `qcow2: compression_type=${o.compression_type} is not supported; only zlib`, { file: ctx.path });
  }
  if (boolOption(o.extended_l2, false)) throw new PolyvisorError('ERR_UNSUPPORTED', 'qcow2: extended_l2 (subclusters) is not supported', { file: ctx.path });
  const prealloc = o.preallocation ?? 'off';
  if (prealloc !== 'off' && prealloc !== 'metadata') throw invalid(`preallocation=${prealloc} is not supported (off, metadata)`);
  if (prealloc === 'metadata' && ctx.backing) throw invalid('preallocation=metadata cannot be combined with a backing file (it would hide the backing data)');
  // qemu keeps qcow2 virtual sizes a multiple of 512 bytes; round up like qemu-img does
  const size = Math.ceil(ctx.virtualSize / 512) * 512;
  const l1Size = l1EntriesFor(size, cb);
  if (l1Size > MAX_L1_ENTRIES) throw invalid(`a ${size}-byte disk needs ${l1Size} L1 entries, beyond the 32 MiB L1 limit; use a larger cluster_size`);

  const backingFormat = ctx.backing ? (TO_QEMU_FORMAT[ctx.backing.format] ?? ctx.backing.format) : undefined;
  const file = await ImageFile.create(ctx.path, ctx.cache);
  try {
    const rc = new Refcounts(ctx.path, cb, order, 0);
    rc.allocate(1); // header cluster
    const l1Clusters = Math.ceil((l1Size * 8) / cs);
    const l1Offset = l1Clusters > 0 ? rc.allocate(l1Clusters) : rc.nextFree;
    const cluster = buildHeaderCluster({ version, clusterBits: cb, size, l1Size, l1TableOffset: l1Offset, refcountOrder: order, lazyRefcounts: lazy, backingFile: ctx.backing?.name, backingFormat });
    // The new image's metadata (header, empty L1 table, refcount table and block) is laid out
    // in memory and written at once: one write rather than one per structure, which was most
    // of the time an overlay took to create (`polyvisor run` makes one per disk before QEMU
    // can start). The empty L1 table is the zeroes it lies in.
    rc.settle();
    const image = Buffer.alloc(rc.nextFree);
    cluster.copy(image, 0);
    image.writeBigUInt64BE(BigInt(rc.tableOffset), HDR.refcountTableOffset);
    image.writeUInt32BE(rc.tableClusters, HDR.refcountTableClusters);
    rc.writeInto(image);
    await file.writeAt(image, 0);
    const header = await readHeader(file, image);
    const ranges: MetaRange[] = [{ name: 'header', start: 0, end: cs }];
    if (l1Size > 0) ranges.push({ name: 'L1 table', start: l1Offset, end: l1Offset + l1Size * 8 });
    ranges.push({ name: 'refcount table', start: rc.tableOffset, end: rc.tableOffset + rc.tableClusters * cs });
    const l1 = Buffer.alloc(l1Size * 8);
    const backingRef: BackingRef | null = ctx.backing ? { name: ctx.backing.name, format: ctx.backing.format, resolved: ctx.backing.image.path } : null;
    const img = new Qcow2Image({ file, header, ranges, l1, readOnly: false, backing: ctx.backing?.image ?? null, backingRef, refcounts: rc, compress: boolOption(o.compress, false) });
    if (prealloc === 'metadata') await img.preallocateMetadata();
    await img.flush();
    return img;
  } catch (e) {
    await file.close();
    await rm(ctx.path, { force: true });
    throw e;
  }
}

export const qcow2: DiskFormat = {
  name: 'qcow2',
  aliases: [],
  description: 'QEMU copy-on-write v2/v3: sparse, backing files, zlib compression, refcounted clusters',
  usedBy: 'KVM/QEMU, Xen (qdisk), Proxmox, OpenStack',
  capabilities: { read: true, write: true, backing: true, compression: true, zeroInit: true, check: true },
  createOptions: [
    { name: 'compat', type: 'enum', values: ['0.10', '1.1', 'v2', 'v3'], default: '1.1', description: 'qcow2 version: 0.10 (v2) for old qemu, 1.1 (v3)' },
    { name: 'cluster_size', type: 'size', default: '64k', description: 'cluster size, a power of two from 512 to 2M' },
    { name: 'refcount_bits', type: 'int', default: '16', description: 'width of a refcount entry: 1, 2, 4, 8, 16, 32 or 64 (v3 only; v2 is 16)' },
    { name: 'lazy_refcounts', type: 'bool', default: 'off', description: 'mark the image dirty while open instead of ordering refcount updates (v3)' },
    { name: 'preallocation', type: 'enum', values: ['off', 'metadata'], default: 'off', description: 'off: allocate on write; metadata: allocate every L2 table and cluster up front' },
    { name: 'compression_type', type: 'enum', values: ['zlib', 'zstd'], default: 'zlib', description: 'compression for compressed clusters (only zlib is implemented)' },
    { name: 'compress', type: 'bool', default: 'off', description: 'store every written cluster deflate-compressed (convert -c)' },
    { name: 'extended_l2', type: 'bool', default: 'off', description: 'subcluster allocation (unsupported: on is refused)' },
  ],

  probe(head: Uint8Array): number {
    try {
      return isQcow2Head(head) ? 100 : 0;
    } catch {
      return 0;
    }
  },

  open: openQcow2,
  create: createQcow2,
};

