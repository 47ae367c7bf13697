/**
 * vdi: VirtualBox Disk Image, after VirtualBox's own definition (src/VBox/Storage/VDICore.h
 * and VDI.cpp) and what qemu-img (block/vdi.c, the oracle) writes and accepts.
 *
 *   0x000  pre-header: 64 bytes of text ("<<< Oracle VM VirtualBox Disk Image >>>\n", or
 *          innotek / Sun / QEMU variants: "for eyes only", VDICore.h), signature
 *          0xbeda107f, version (major << 16 | minor)
 *   0x048  header (VDIHEADER1, 0x180 bytes; VDIHEADER1PLUS, 0x190, adds LCHS geometry)
 *   offBlocks  the block map: one little-endian u32 per block of the disk
 *   offData    data blocks, each `cbBlockExtra` bytes of service data then `cbBlock` bytes
 *
 * A block map entry is the index of a data block (its data lives at offData + index ×
 * block size), 0xFFFFFFFF ("free": never written) or 0xFFFFFFFE ("zero": reads as zeroes).
 * Indices are dense: VirtualBox and qemu both give a new block the index "blocks allocated"
 * and then increment it, so a valid image uses each index below that count exactly once.
 *
 * Supported: normal (dynamic) and fixed (static) images, header version 1.1 (and 1.0, which
 * VirtualBox reads with the same layout), any power-of-two block size from 512 bytes to
 * 256 MiB. Refused with ERR_UNSUPPORTED: undo and differencing images (VirtualBox snapshots:
 * the parent is named only by UUID, with no path in the file, so a chain cannot be opened
 * from the child alone), old 0.x headers, block extra data, sectors other than 512 bytes.
 *
 * Writing is built for sequential convert: the block map lives in memory, new blocks are
 * appended at the end of the data area (runs of consecutive new blocks in one writev), and
 * the block map and "blocks allocated" are written once, at flush. The unwritten parts of
 * a new block are file holes, which read as zeroes.
 */
import { PolyvisorError, hex } from '../../errors.js';
import { checkRange } from '../backing.js';
import type { CreateContext, DiskFormat, OpenContext } from '../format.js';
import type { BackingRef, BlockImage, CheckResult, Extent } from '../image.js';
import { ImageFile, alignUp } from '../io.js';
import { optionBool } from '../registry.js';
import { crypto } from '../../util/builtins.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** VDICore.h: VDI_IMAGE_SIGNATURE. */
const SIGNATURE = 0xbeda107f;
const VERSION_1_1 = 0x00010001;
const SECTOR = 512;

/** File offsets of the fields (VDIPREHEADER then VDIHEADER1PLUS, packed, little-endian). */
const F = {
  text: 0x00,
  signature: 0x40,
  version: 0x44,
  headerSize: 0x48,
  type: 0x4c,
  flags: 0x50,
  comment: 0x54,
  offsetBmap: 0x154,
  offsetData: 0x158,
  cylinders: 0x15c,
  heads: 0x160,
  sectors: 0x164,
  sectorSize: 0x168,
  unused1: 0x16c,
  diskSize: 0x170,
  blockSize: 0x178,
  blockExtra: 0x17c,
  blocksInHdd: 0x180,
  blocksAllocated: 0x184,
  uuidCreate: 0x188,
  uuidModify: 0x198,
  uuidLinkage: 0x1a8,
  uuidParentModify: 0x1b8,
  lchs: 0x1c8,
} as const;
const PRE_HEADER_SIZE = 0x48;
const COMMENT_SIZE = 256;
/** sizeof(VDIHEADER1): the least a 1.x header may declare (vdiValidateHeader). */
const HEADER1_SIZE = 0x180;
/** sizeof(VDIHEADER1PLUS): what VirtualBox writes; a header this long carries LCHS geometry. */
const HEADER1PLUS_SIZE = 0x190;

/** VDICore.h, VDIIMAGETYPE. */
const TYPE_NORMAL = 1;
const TYPE_FIXED = 2;
const TYPE_UNDO = 3;
const TYPE_DIFF = 4;

/** VDICore.h: VDI_IMAGE_BLOCK_FREE (never written) and VDI_IMAGE_BLOCK_ZERO (reads as zeroes). */
const BLOCK_FREE = 0xffffffff;
const BLOCK_ZERO = 0xfffffffe;

/** qemu and VirtualBox both create 1 MiB blocks; qemu opens nothing else. */
const DEFAULT_BLOCK = 1 * MiB;
/** Block sizes we open: VirtualBox requires a power of two; we cap at 256 MiB. */
const MIN_BLOCK = SECTOR;
const MAX_BLOCK = 256 * MiB;
/**
 * Block map entries we hold in memory (4 bytes each): 2^27 covers 128 TiB in 1 MiB blocks.
 * qemu's own limit (0x3fffffff) would let a hostile header ask for a 4 GiB table.
 */
const MAX_BLOCKS = 1 << 27;
/**
 * Where the data area starts. qemu puts it right after the block map (512-byte aligned);
 * VirtualBox aligns it to 1 MiB (VDICore.h, VDI_DATA_ALIGN, "SSDs tend to have 8kb per
 * page"). We align to 64 KiB: every block then starts on a 4 KiB (and 64 KiB) boundary,
 * which guests on 4K-sector host disks need, and measured converting 1.6 GiB on Linux
 * 6.18/ext4, 1 MiB-aligned blocks were about twice as slow to write as 512-byte or 64 KiB
 * aligned ones (whole 2 MiB-aligned writes make the page cache allocate large folios).
 */
const DATA_ALIGN = 64 * KiB;
/** The text VirtualBox writes in the pre-header (VDICore.h, VDI_IMAGE_FILE_INFO). */
const FILE_INFO = '<<< Oracle VM VirtualBox Disk Image >>>\n';

/** Largest vectored write we issue. */
/** Shared zeroes for writeZeroes over allocated blocks; never written into. */
const ZEROES = Buffer.alloc(4 * MiB);
const NULL_UUID = Buffer.alloc(16);

type ImageType = 'dynamic' | 'static';

interface Geometry {
  cylinders: number;
  heads: number;
  sectors: number;
  sectorSize: number;
}

interface VdiHeader {
  text: string;
  version: number;
  headerSize: number;
  type: number;
  flags: number;
  comment: string;
  offsetBmap: number;
  offsetData: number;
  legacyGeometry: Geometry;
  /** cbDisk as recorded (the guest size is this rounded up to a sector) */
  diskSize: number;
  blockSize: number;
  blockExtra: number;
  blocksInHdd: number;
  blocksAllocated: number;
  uuidCreate: Buffer;
  uuidModify: Buffer;
  uuidLinkage: Buffer;
  uuidParentModify: Buffer;
  /** only in headers of at least VDIHEADER1PLUS size */
  lchsGeometry: Geometry | null;
}

// ---- UUIDs ------------------------------------------------------------------------------

/**
 * VirtualBox stores RTUUIDs as in memory on x86: the first three fields little-endian
 * (qemu's block/vdi.c swaps them the same way, "IPRT = VirtualBox format"). These two
 * functions convert between that and the RFC 4122 text everyone prints.
 */
function uuidText(disk: Buffer): string {
  const b = Buffer.from(disk);
  b.subarray(0, 4).reverse();
  b.subarray(4, 6).reverse();
  b.subarray(6, 8).reverse();
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function newDiskUuid(): Buffer {
  const b = Buffer.from(crypto().randomUUID().replace(/-/g, ''), 'hex');
  b.subarray(0, 4).reverse();
  b.subarray(4, 6).reverse();
  b.subarray(6, 8).reverse();
  return b;
}

// ---- header -----------------------------------------------------------------------------

function readGeometry(buf: Buffer, at: number): Geometry {
  return { cylinders: buf.readUInt32LE(at), heads: buf.readUInt32LE(at + 4), sectors: buf.readUInt32LE(at + 8), sectorSize: buf.readUInt32LE(at + 12) };
}

function cString(buf: Buffer, at: number, length: number): string {
  const s = buf.subarray(at, at + length);
  const nul = s.indexOf(0);
  return s.subarray(0, nul < 0 ? s.length : nul).toString('utf8');
}

/** Decodes a 1.x header from `buf` (at least 0x48 + 0x180 bytes); values are not yet validated. */
function decodeHeader(buf: Buffer): VdiHeader {
  const headerSize = buf.readUInt32LE(F.headerSize);
  return {
    text: cString(buf, F.text, 64),
    version: buf.readUInt32LE(F.version),
    headerSize,
    type: buf.readUInt32LE(F.type),
    flags: buf.readUInt32LE(F.flags),
    comment: cString(buf, F.comment, COMMENT_SIZE),
    offsetBmap: buf.readUInt32LE(F.offsetBmap),
    offsetData: buf.readUInt32LE(F.offsetData),
    legacyGeometry: readGeometry(buf, F.cylinders),
    // a u64; values past 2^53 are refused by the caller before anything is computed
    diskSize: Number(buf.readBigUInt64LE(F.diskSize)),
    blockSize: buf.readUInt32LE(F.blockSize),
    blockExtra: buf.readUInt32LE(F.blockExtra),
    blocksInHdd: buf.readUInt32LE(F.blocksInHdd),
    blocksAllocated: buf.readUInt32LE(F.blocksAllocated),
    uuidCreate: Buffer.from(buf.subarray(F.uuidCreate, F.uuidCreate + 16)),
    uuidModify: Buffer.from(buf.subarray(F.uuidModify, F.uuidModify + 16)),
    uuidLinkage: Buffer.from(buf.subarray(F.uuidLinkage, F.uuidLinkage + 16)),
    uuidParentModify: Buffer.from(buf.subarray(F.uuidParentModify, F.uuidParentModify + 16)),
    lchsGeometry: headerSize >= HEADER1PLUS_SIZE && buf.length >= F.lchs + 16 ? readGeometry(buf, F.lchs) : null,
  };
}

/** Encodes a header as VirtualBox writes it: pre-header, VDIHEADER1PLUS, zero padding to `length`. */
function encodeHeader(h: VdiHeader, length: number): Buffer {
  const b = Buffer.alloc(length);
  b.write(h.text, F.text, 63, 'latin1');
  b.writeUInt32LE(SIGNATURE, F.signature);
  b.writeUInt32LE(h.version, F.version);
  b.writeUInt32LE(h.headerSize, F.headerSize);
  b.writeUInt32LE(h.type, F.type);
  b.writeUInt32LE(h.flags, F.flags);
  b.write(h.comment, F.comment, COMMENT_SIZE - 1, 'utf8');
  b.writeUInt32LE(h.offsetBmap, F.offsetBmap);
  b.writeUInt32LE(h.offsetData, F.offsetData);
  const g = (at: number, x: Geometry): void => {
    b.writeUInt32LE(x.cylinders, at);
    b.writeUInt32LE(x.heads, at + 4);
    b.writeUInt32LE(x.sectors, at + 8);
    b.writeUInt32LE(x.sectorSize, at + 12);
  };
  g(F.cylinders, h.legacyGeometry);
  b.writeBigUInt64LE(BigInt(h.diskSize), F.diskSize);
  b.writeUInt32LE(h.blockSize, F.blockSize);
  b.writeUInt32LE(h.blockExtra, F.blockExtra);
  b.writeUInt32LE(h.blocksInHdd, F.blocksInHdd);
  b.writeUInt32LE(h.blocksAllocated, F.blocksAllocated);
  h.uuidCreate.copy(b, F.uuidCreate);
  h.uuidModify.copy(b, F.uuidModify);
  h.uuidLinkage.copy(b, F.uuidLinkage);
  h.uuidParentModify.copy(b, F.uuidParentModify);
  if (h.lchsGeometry) g(F.lchs, h.lchsGeometry);
  return b;
}

// ---- block map --------------------------------------------------------------------------

function decodeBlockMap(raw: Buffer, n: number): Uint32Array {
  const bat = new Uint32Array(n);
  for (let i = 0; i < n; i++) bat[i] = raw.readUInt32LE(i * 4);
  return bat;
}

function isAllocated(e: number): boolean {
  return e < BLOCK_ZERO;
}

interface BlockLayout {
  offsetBmap: number;
  offsetData: number;
  blockSize: number;
  blocksAllocated: number;
  virtualSize: number;
}

type Report = (err: PolyvisorError) => void;

/**
 * Every allocated block map entry must name a data block below "blocks allocated" that no
 * other entry names (VirtualBox and qemu give new blocks dense indices), and whose guest
 * bytes lie inside the file. Reports through `report` (throws when opening, collects when
 * checking); returns, per data block index, the entry that uses it (-1 for none).
 */
function auditBlockMap(bat: Uint32Array, g: BlockLayout, fileSize: number, file: string, report: Report): Int32Array {
  const owner = new Int32Array(g.blocksAllocated).fill(-1);
  for (let i = 0; i < bat.length; i++) {
    const e = bat[i]!;
    if (!isAllocated(e)) continue;
    const ctx = { file, structure: `block map entry ${i}`, offset: g.offsetBmap + i * 4 };
    if (e >= g.blocksAllocated) {
      report(new PolyvisorError('ERR_CORRUPT', `points to data block ${e}, but the header says only ${g.blocksAllocated} blocks are allocated`, ctx));
      continue;
    }
    const prev = owner[e]!;
    if (prev >= 0) {
      report(new PolyvisorError('ERR_CORRUPT', `points to data block ${e}, which block map entry ${prev} already uses`, ctx));
      continue;
    }
    owner[e] = i;
    // Only the part of the block the guest can see must be in the file (the last block of
    // a disk whose size is not a whole number of blocks may be cut short).
    const visible = Math.max(0, Math.min(g.blockSize, g.virtualSize - i * g.blockSize));
    const start = g.offsetData + e * g.blockSize;
    if (visible > 0 && start + visible > fileSize) {
      report(new PolyvisorError('ERR_TRUNCATED', `data block ${e} at ${hex(start)} ends at ${hex(start + visible)}, past the end of the file at ${hex(fileSize)}`, ctx));
    }
  }
  return owner;
}

// ---- the image --------------------------------------------------------------------------

interface Segment {
  guest: number;
  length: number;
  kind: 'data' | 'zero' | 'unallocated';
  host: number;
}

interface VdiState {
  file: ImageFile;
  readOnly: boolean;
  header: VdiHeader;
  /** the header bytes as read (or built): rewritten whole at flush with the counters patched */
  headerBuf: Buffer;
  bat: Uint32Array;
  virtualSize: number;
  /** a freshly created image already has a new modification UUID */
  fresh: boolean;
}

class VdiImage implements BlockImage {
  readonly format = 'vdi';
  readonly readOnly: boolean;
  readonly virtualSize: number;
  readonly clusterSize: number;
  readonly backing: BlockImage | null = null;
  readonly backingRef: BackingRef | null = null;
  readonly imageType: ImageType;

  #file: ImageFile;
  #h: VdiHeader;
  #headerBuf: Buffer;
  #bat: Uint32Array;
  #bs: number;
  #batDirtyLo = Infinity;
  #batDirtyHi = -1;
  #dirty = false;
  /** VirtualBox gives an image a new modification UUID on its first write after opening */
  #modifyUuidDone: boolean;
  /** end of the data area when last flushed: anything past it is cut before appending */
  #appendStart: number;
  #appendReady: Promise<void> | null = null;
  #closed = false;

  constructor(s: VdiState) {
    this.#file = s.file;
    this.readOnly = s.readOnly;
    this.#h = s.header;
    this.#headerBuf = s.headerBuf;
    this.#bat = s.bat;
    this.virtualSize = s.virtualSize;
    this.#bs = s.header.blockSize;
    this.clusterSize = s.header.blockSize;
    this.imageType = s.header.type === TYPE_FIXED ? 'static' : 'dynamic';
    this.#modifyUuidDone = s.fresh;
    this.#appendStart = this.#dataEnd();
  }

  get path(): string {
    return this.#file.path;
  }

  #dataEnd(): number {
    return this.#h.offsetData + this.#h.blocksAllocated * this.#bs;
  }

  // ---- reading ----------------------------------------------------------------------

  /**
   * This layer's map of [offset, offset+length), adjacent pieces of one kind merged, data
   * pieces only when contiguous in the file.
   */
  #segments(offset: number, length: number): Segment[] {
    const out: Segment[] = [];
    const bs = this.#bs;
    const end = offset + length;
    for (let g = offset; g < end; ) {
      const b = Math.floor(g / bs);
      const inb = g - b * bs;
      const n = Math.min(bs - inb, end - g);
      const e = this.#bat[b]!;
      const kind: Segment['kind'] = isAllocated(e) ? 'data' : e === BLOCK_ZERO ? 'zero' : 'unallocated';
      const host = kind === 'data' ? this.#h.offsetData + e * bs + inb : 0;
      const last = out[out.length - 1];
      if (last && last.kind === kind && (kind !== 'data' || last.host + last.length === host)) last.length += n;
      else out.push({ guest: g, length: n, kind, host });
      g += n;
    }
    return out;
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    checkRange(this, offset, length, 'block status');
    const out: Extent[] = [];
    const push = (e: Extent): void => {
      const last = out[out.length - 1];
      if (last && last.kind === e.kind && e.kind !== 'data' && last.offset + last.length === e.offset) last.length += e.length;
      else out.push(e);
    };
    for (const s of this.#segments(offset, length)) {
      if (s.kind !== 'data') {
        push({ offset: s.guest, length: s.length, kind: s.kind });
        continue;
      }
      // A static image is created as one sparse file: like qemu (BDRV_BLOCK_RECURSE for
      // VDI_TYPE_STATIC), ask the file system which parts of its blocks are holes, so that
      // copying a mostly empty fixed disk does not read gigabytes of zeroes.
      const runs = this.imageType === 'static' ? this.#file.dataRuns(s.host, s.host + s.length) : null;
      if (!runs) {
        push({ offset: s.guest, length: s.length, kind: 'data', hostOffset: s.host });
        continue;
      }
      let pos = s.host;
      const end = s.host + s.length;
      for (const [a, z] of runs) {
        if (a > pos) push({ offset: s.guest + (pos - s.host), length: a - pos, kind: 'zero' });
        push({ offset: s.guest + (a - s.host), length: z - a, kind: 'data', hostOffset: a });
        pos = z;
      }
      if (pos < end) push({ offset: s.guest + (pos - s.host), length: end - pos, kind: 'zero' });
    }
    return out;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    if (buf.length === 0) return;
    await Promise.all(
      this.#segments(offset, buf.length).map((s) => {
        const sub = buf.subarray(s.guest - offset, s.guest - offset + s.length);
        // Free and zero blocks read as zeroes: a normal or fixed image has no parent
        // (qemu's vdi_co_preadv does the same for every entry >= 0xFFFFFFFE).
        if (s.kind !== 'data') {
          sub.fill(0);
          return undefined;
        }
        return this.#file.readInto(sub, s.host);
      }),
    );
  }

  // ---- writing ----------------------------------------------------------------------

  #checkWritable(): void {
    if (this.readOnly) throw new PolyvisorError('ERR_READ_ONLY', 'image is open read-only', { file: this.path });
    if (this.#closed) throw new PolyvisorError('ERR_INTERNAL', 'image is closed', { file: this.path });
  }

  #markDirty(): void {
    this.#dirty = true;
    if (!this.#modifyUuidDone) {
      // VirtualBox's VD layer (vdSetModifiedFlag) gives an image a fresh "modification
      // UUID" on the first write after it is opened, so that a differencing child, which
      // records its parent's modification UUID, can tell its parent changed under it.
      this.#h.uuidModify = newDiskUuid();
      this.#modifyUuidDone = true;
    }
  }

  /** Gives guest block `b` the next data block (synchronously: concurrent writes never share one). */
  #allocate(b: number): number {
    const h = this.#h;
    if (h.blocksAllocated >= h.blocksInHdd) {
      // Only possible when indices below the count are unused (a leak): VirtualBox and qemu
      // would hand out an index past the block map's range here.
      throw new PolyvisorError('ERR_UNSUPPORTED', `no free data block index: all ${h.blocksInHdd} are counted as allocated, though some are unused (run check)`, {
        file: this.path,
        structure: `block map entry ${b}`,
        offset: h.offsetBmap + b * 4,
      });
    }
    const index = h.blocksAllocated++;
    this.#bat[b] = index;
    if (b < this.#batDirtyLo) this.#batDirtyLo = b;
    if (b > this.#batDirtyHi) this.#batDirtyHi = b;
    return h.offsetData + index * this.#bs;
  }

  /**
   * Before the first block is appended, cut the file at the end of the data area: bytes
   * past it (junk after the last block) must not show through the unwritten parts of a new
   * block, which are left as holes and read as zeroes.
   */
  #prepareAppend(): Promise<void> {
    if (!this.#appendReady) {
      const at = this.#appendStart;
      this.#appendReady = this.#file.size > at ? this.#file.truncate(at) : Promise.resolve();
    }
    return this.#appendReady;
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'write');
    this.#checkWritable();
    if (buf.length === 0) return;
    this.#markDirty();
    const bs = this.#bs;
    const segs: { host: number; data: Uint8Array }[] = [];
    let appended = false;
    const end = offset + buf.length;
    // Plan synchronously: allocation must not interleave with another call's.
    for (let g = offset; g < end; ) {
      const b = Math.floor(g / bs);
      const inb = g - b * bs;
      const n = Math.min(bs - inb, end - g);
      const e = this.#bat[b]!;
      let host: number;
      if (isAllocated(e)) {
        host = this.#h.offsetData + e * bs + inb;
      } else {
        // A free or zero block gets a new data block at the end; whatever of it this write
        // does not cover stays a hole and reads as zeroes, so no read-modify-write and no
        // zero filling is needed, even for unaligned writes.
        host = this.#allocate(b) + inb;
        appended = true;
      }
      segs.push({ host, data: buf.subarray(g - offset, g - offset + n) });
      g += n;
    }
    if (appended) void this.#prepareAppend();
    if (this.#appendReady) await this.#appendReady;
    await this.#file.writeSegments(segs);
  }

  /**
   * Free and zero blocks already read as zeroes (there is no parent), so only allocated
   * blocks get zero bytes. An allocated block is not turned into a zero entry: its data
   * block would become unreferenced, and both qemu-img check and VirtualBox count that as
   * a mismatch of "blocks allocated" (VirtualBox's own discard moves the last block into
   * the hole instead, which a copy of the block would cost here).
   */
  async writeZeroes(offset: number, length: number): Promise<void> {
    checkRange(this, offset, length, 'write zeroes');
    this.#checkWritable();
    const segs: { host: number; data: Uint8Array }[] = [];
    for (const s of this.#segments(offset, length)) {
      if (s.kind !== 'data') continue;
      for (let pos = 0; pos < s.length; pos += ZEROES.length) {
        segs.push({ host: s.host + pos, data: ZEROES.subarray(0, Math.min(ZEROES.length, s.length - pos)) });
      }
    }
    if (segs.length === 0) return;
    this.#markDirty();
    if (this.#appendReady) await this.#appendReady;
    await this.#file.writeSegments(segs);
  }

  async flush(): Promise<void> {
    if (this.readOnly || !this.#dirty || this.#closed) return;
    if (this.#appendReady) await this.#appendReady;
    const h = this.#h;
    const writes: Promise<void>[] = [];
    if (this.#batDirtyHi >= this.#batDirtyLo) {
      const lo = this.#batDirtyLo;
      const hi = this.#batDirtyHi;
      const out = Buffer.allocUnsafe((hi - lo + 1) * 4);
      for (let i = lo; i <= hi; i++) out.writeUInt32LE(this.#bat[i]!, (i - lo) * 4);
      writes.push(this.#file.writeAt(out, h.offsetBmap + lo * 4));
    }
    // The header's counters: "blocks allocated" and the modification UUID. The rest of the
    // header is written back as it was read.
    this.#headerBuf.writeUInt32LE(h.blocksAllocated, F.blocksAllocated);
    h.uuidModify.copy(this.#headerBuf, F.uuidModify);
    writes.push(this.#file.writeAt(this.#headerBuf, 0));
    await Promise.all(writes);
    // Every data block must lie whole in the file, even when its tail was never written
    // (readers check the file size against the data area; qemu writes whole blocks).
    const dataEnd = this.#dataEnd();
    if (this.#file.size < dataEnd) await this.#file.truncate(dataEnd);
    await this.#file.sync();
    this.#batDirtyLo = Infinity;
    this.#batDirtyHi = -1;
    this.#appendStart = dataEnd;
    this.#appendReady = null;
    this.#dirty = false;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    try {
      if (!this.readOnly) await this.flush();
    } finally {
      this.#closed = true;
      await this.#file.close();
    }
  }

  // ---- info and check ---------------------------------------------------------------

  formatInfo(): Record<string, unknown> {
    const h = this.#h;
    const geometry = (g: Geometry): Record<string, number> => ({ cylinders: g.cylinders, heads: g.heads, sectors: g.sectors, 'sector-size': g.sectorSize });
    const info: Record<string, unknown> = {
      'image-type': this.imageType,
      version: `${h.version >>> 16}.${h.version & 0xffff}`,
      'header-text': h.text.replace(/\n+$/, ''),
      'header-size': h.headerSize,
      'block-size': h.blockSize,
      'blocks-in-hdd': h.blocksInHdd,
      'blocks-allocated': h.blocksAllocated,
      'disk-size': h.diskSize,
      uuid: uuidText(h.uuidCreate),
      'modify-uuid': uuidText(h.uuidModify),
      'parent-uuid': uuidText(h.uuidLinkage),
      'parent-modify-uuid': uuidText(h.uuidParentModify),
      flags: h.flags,
      'block-map-offset': h.offsetBmap,
      'data-offset': h.offsetData,
      'legacy-geometry': geometry(h.legacyGeometry),
    };
    if (h.lchsGeometry) info['lchs-geometry'] = geometry(h.lchsGeometry);
    if (h.comment) info.comment = h.comment;
    if (h.diskSize !== this.virtualSize) info.notes = [`disk size ${h.diskSize} is not a whole number of sectors; the disk is read as ${this.virtualSize} bytes, as qemu does`];
    return info;
  }

  /**
   * qemu-img check's rules for VDI (block/vdi.c, vdi_co_check) and VirtualBox's repair
   * (VDI.cpp, vdiRepair): every allocated entry names a data block below the count, no two
   * name the same one, the count in the header equals the entries that are allocated. We
   * add: each block's data lies inside the file. Unused indices below the count are leaks.
   */
  async check(): Promise<CheckResult> {
    if (!this.readOnly && this.#dirty) await this.flush();
    const file = this.#file;
    const h = this.#h;
    const res: CheckResult = { corruptions: 0, leaks: 0, messages: [] };
    const corrupt = (msg: string): void => {
      res.corruptions++;
      res.messages.push(msg);
    };
    let stored: Buffer;
    let bat: Uint32Array;
    try {
      stored = await file.readStructure(0, F.blocksAllocated + 4, 'header');
      bat = decodeBlockMap(await file.readStructure(h.offsetBmap, h.blocksInHdd * 4, 'block map'), h.blocksInHdd);
    } catch (e) {
      corrupt(e instanceof Error ? e.message : String(e));
      return res;
    }
    const allocatedInHeader = stored.readUInt32LE(F.blocksAllocated);
    const g = { offsetBmap: h.offsetBmap, offsetData: h.offsetData, blockSize: h.blockSize, blocksAllocated: allocatedInHeader, virtualSize: this.virtualSize };
    const owner = auditBlockMap(bat, g, file.size, this.path, (e) => corrupt(e.message));
    let used = 0;
    for (let i = 0; i < owner.length; i++) if (owner[i]! >= 0) used++;
    let entries = 0;
    for (let i = 0; i < bat.length; i++) if (isAllocated(bat[i]!)) entries++;
    if (entries !== allocatedInHeader) {
      corrupt(`header at 0x0: blocks allocated is ${allocatedInHeader}, but ${entries} block map entries are allocated`);
    }
    if (used < allocatedInHeader) {
      res.leaks = allocatedInHeader - used;
      res.messages.push(`leak: ${res.leaks} of the ${allocatedInHeader} data blocks are used by no block map entry`);
    }
    res.allocatedClusters = entries;
    res.totalClusters = h.blocksInHdd;
    res.imageEndOffset = h.offsetData + allocatedInHeader * h.blockSize;
    return res;
  }
}

// ---- opening ----------------------------------------------------------------------------

async function openVdi(ctx: OpenContext): Promise<VdiImage> {
  const file = ctx.file;
  const path = file.path;
  const size = file.size;
  const pre = { file: path, structure: 'pre-header', offset: 0 };
  const hctx = { file: path, structure: 'header', offset: PRE_HEADER_SIZE };
  const head = await file.readStructure(0, PRE_HEADER_SIZE + 4, 'pre-header');
  const signature = head.readUInt32LE(F.signature);
  if (signature !== SIGNATURE) {
    throw new PolyvisorError('ERR_CORRUPT', `signature is ${hex(signature)}, not ${hex(SIGNATURE)}: not a VDI image`, { ...pre, offset: F.signature });
  }
  const version = head.readUInt32LE(F.version);
  const major = version >>> 16;
  const minor = version & 0xffff;
  if (major === 0) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `version ${major}.${minor}: the old VDI 0.x header layout is not supported`, { ...pre, offset: F.version });
  }
  // VirtualBox reads every 1.x header with the VDIHEADER1 layout; 1.1 is the only minor
  // version it has written since, and qemu opens only 1.1.
  if (major !== 1 || minor > 1) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `version ${major}.${minor} (only 1.0 and 1.1 are defined)`, { ...pre, offset: F.version });
  }
  const headerSize = head.readUInt32LE(F.headerSize);
  if (headerSize < HEADER1_SIZE) {
    throw new PolyvisorError('ERR_CORRUPT', `header size is ${hex(headerSize)}, less than the ${hex(HEADER1_SIZE)} bytes of a 1.x header`, hctx);
  }
  const buf = await file.readStructure(0, PRE_HEADER_SIZE + Math.min(headerSize, HEADER1PLUS_SIZE), 'header');
  const h = decodeHeader(buf);

  // Image type (VDICore.h, VDIIMAGETYPE).
  if (h.type === TYPE_UNDO || h.type === TYPE_DIFF) {
    throw new PolyvisorError(
      'ERR_UNSUPPORTED',
      `image type ${h.type} is a VirtualBox ${h.type === TYPE_DIFF ? 'differencing' : 'undo'} image (a snapshot): not supported yet, since a VDI names its parent only by UUID (${uuidText(h.uuidLinkage)}), with no path to find it by; convert it from VirtualBox (VBoxManage clonemedium) first`,
      { ...hctx, offset: F.type },
    );
  }
  if (h.type !== TYPE_NORMAL && h.type !== TYPE_FIXED) {
    throw new PolyvisorError('ERR_CORRUPT', `image type ${h.type} is not normal (1), fixed (2), undo (3) or differencing (4)`, { ...hctx, offset: F.type });
  }
  // Sizes and counts (vdiValidateHeader; qemu's vdi_open).
  if (buf.readBigUInt64LE(F.diskSize) > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `disk size ${hex(buf.readBigUInt64LE(F.diskSize))} is beyond any disk Polyvisor handles`, { ...hctx, offset: F.diskSize });
  }
  if (h.legacyGeometry.sectorSize !== SECTOR) {
    // qemu refuses the same (vdi_open: "sector size is not 512")
    throw new PolyvisorError('ERR_UNSUPPORTED', `sector size ${h.legacyGeometry.sectorSize} (only 512-byte sectors are supported)`, { ...hctx, offset: F.sectorSize });
  }
  const bs = h.blockSize;
  if (bs === 0 || (bs & (bs - 1)) !== 0) {
    throw new PolyvisorError('ERR_CORRUPT', `block size ${bs} is not a power of two`, { ...hctx, offset: F.blockSize });
  }
  if (bs < MIN_BLOCK || bs > MAX_BLOCK) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `block size ${bs} is outside the ${MIN_BLOCK}-byte to ${MAX_BLOCK / MiB} MiB Polyvisor handles`, { ...hctx, offset: F.blockSize });
  }
  if (h.blockExtra !== 0) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `block extra data of ${h.blockExtra} bytes per block is not supported (neither qemu nor VirtualBox writes any)`, { ...hctx, offset: F.blockExtra });
  }
  // 'VBoxManage convertfromraw' can record a size that is not a whole number of sectors;
  // qemu reads such a disk rounded up to the next sector, and so do we.
  const virtualSize = alignUp(h.diskSize, SECTOR);
  if (h.blocksInHdd > MAX_BLOCKS) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `${h.blocksInHdd} blocks in HDD are more than Polyvisor handles (${MAX_BLOCKS})`, { ...hctx, offset: F.blocksInHdd });
  }
  if (h.blocksInHdd * bs < virtualSize) {
    throw new PolyvisorError('ERR_CORRUPT', `${h.blocksInHdd} blocks in HDD of ${bs} bytes cannot hold the ${virtualSize}-byte disk`, { ...hctx, offset: F.blocksInHdd });
  }
  if (h.blocksAllocated > h.blocksInHdd) {
    throw new PolyvisorError('ERR_CORRUPT', `blocks allocated (${h.blocksAllocated}) is more than blocks in HDD (${h.blocksInHdd})`, { ...hctx, offset: F.blocksAllocated });
  }
  // Layout: header, then the block map, then the data area (vdiValidateHeader).
  const headerEnd = PRE_HEADER_SIZE + headerSize;
  const bmapEnd = h.offsetBmap + h.blocksInHdd * 4;
  if (h.offsetBmap < headerEnd) {
    throw new PolyvisorError('ERR_CORRUPT', `the block map at ${hex(h.offsetBmap)} overlaps the header, which ends at ${hex(headerEnd)}`, { ...hctx, offset: F.offsetBmap });
  }
  if (h.offsetData < bmapEnd) {
    throw new PolyvisorError('ERR_CORRUPT', `the data area at ${hex(h.offsetData)} overlaps the block map of ${h.blocksInHdd} entries, which ends at ${hex(bmapEnd)}`, { ...hctx, offset: F.offsetData });
  }
  if (bmapEnd > size) {
    throw new PolyvisorError('ERR_TRUNCATED', `the block map of ${h.blocksInHdd} entries ends at ${hex(bmapEnd)}, past the end of the file at ${hex(size)}`, { file: path, structure: 'block map', offset: h.offsetBmap });
  }
  if (h.offsetData > size) {
    throw new PolyvisorError('ERR_TRUNCATED', `the data area starts at ${hex(h.offsetData)}, past the end of the file at ${hex(size)}`, { ...hctx, offset: F.offsetData });
  }
  const bat = decodeBlockMap(await file.readStructure(h.offsetBmap, h.blocksInHdd * 4, 'block map'), h.blocksInHdd);
  auditBlockMap(bat, { offsetBmap: h.offsetBmap, offsetData: h.offsetData, blockSize: bs, blocksAllocated: h.blocksAllocated, virtualSize }, size, path, (e) => {
    throw e;
  });
  return new VdiImage({ file, readOnly: ctx.readOnly, header: h, headerBuf: buf, bat, virtualSize, fresh: false });
}

// ---- creating ---------------------------------------------------------------------------

async function createVdi(ctx: CreateContext): Promise<VdiImage> {
  const path = ctx.path;
  const isStatic = optionBool(ctx.options, 'static', false);
  // qemu-img rounds the size up to a sector ("Silently round up size", vdi_co_create_opts).
  const bytes = alignUp(ctx.virtualSize, SECTOR);
  if (ctx.backing) {
    throw new PolyvisorError('ERR_UNSUPPORTED', 'VDI images cannot have a backing file (VirtualBox differencing images are not supported)', { file: path });
  }
  const bs = DEFAULT_BLOCK;
  const blocks = Math.ceil(bytes / bs);
  if (blocks > MAX_BLOCKS) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `a ${bytes}-byte VDI needs ${blocks} blocks, more than Polyvisor handles (${MAX_BLOCKS}, ${(MAX_BLOCKS * bs) / 2 ** 40} TiB)`, { file: path });
  }
  // qemu's layout puts the block map right after the 512-byte header; the data area
  // follows at the next 64 KiB (see DATA_ALIGN).
  const offsetBmap = 0x200;
  const bmapBytes = alignUp(blocks * 4, SECTOR);
  const offsetData = alignUp(offsetBmap + bmapBytes, DATA_ALIGN);
  const h: VdiHeader = {
    text: FILE_INFO,
    version: VERSION_1_1,
    headerSize: HEADER1PLUS_SIZE,
    type: isStatic ? TYPE_FIXED : TYPE_NORMAL,
    flags: 0,
    comment: '',
    offsetBmap,
    offsetData,
    // VirtualBox marks both geometries "not calculated": zero CHS, 512-byte sectors
    // (vdiInitHeader); the guest's BIOS works them out from the size.
    legacyGeometry: { cylinders: 0, heads: 0, sectors: 0, sectorSize: SECTOR },
    diskSize: bytes,
    blockSize: bs,
    blockExtra: 0,
    blocksInHdd: blocks,
    // A static image has every block allocated, in order (vdiSetupImageState; qemu the same).
    blocksAllocated: isStatic ? blocks : 0,
    uuidCreate: newDiskUuid(),
    // VirtualBox refuses a null modification UUID (vdiValidateHeader); qemu sets one too.
    uuidModify: newDiskUuid(),
    uuidLinkage: Buffer.from(NULL_UUID),
    uuidParentModify: Buffer.from(NULL_UUID),
    lchsGeometry: { cylinders: 0, heads: 0, sectors: 0, sectorSize: SECTOR },
  };
  const bat = new Uint32Array(blocks);
  if (isStatic) for (let i = 0; i < blocks; i++) bat[i] = i;
  else bat.fill(BLOCK_FREE);
  const meta = Buffer.alloc(offsetBmap + bmapBytes);
  const headerBuf = encodeHeader(h, offsetBmap);
  headerBuf.copy(meta, 0);
  for (let i = 0; i < blocks; i++) meta.writeUInt32LE(bat[i]!, offsetBmap + i * 4);

  const file = await ImageFile.create(path, ctx.cache);
  try {
    await file.writeAt(meta, 0);
    // Dynamic: the file holds header and block map up to the data area, as VirtualBox
    // sizes it. Static: the whole data area, as a sparse file (qemu truncates likewise).
    await file.truncate(offsetData + (isStatic ? blocks * bs : 0));
    return new VdiImage({ file, readOnly: false, header: h, headerBuf, bat, virtualSize: bytes, fresh: true });
  } catch (e) {
    await file.close();
    throw e;
  }
}

// ---- the format table entry -------------------------------------------------------------

export const vdi: DiskFormat = {
  name: 'vdi',
  aliases: [],
  description: 'VirtualBox Disk Image (VDI): dynamic and static (fixed)',
  usedBy: 'VirtualBox',
  capabilities: { read: true, write: true, backing: false, compression: false, zeroInit: true, check: true },
  createOptions: [{ name: 'static', type: 'bool', default: 'off', description: 'on: a fixed (static) image with every block allocated, created sparse; off: dynamic, grows as written' }],

  probe(head: Uint8Array): number {
    // The signature follows the 64 bytes of free text (VDIPREHEADER).
    if (head.length < PRE_HEADER_SIZE) return 0;
    const sig = (head[F.signature]! | (head[F.signature + 1]! << 8) | (head[F.signature + 2]! << 16) | (head[F.signature + 3]! << 24)) >>> 0;
    return sig === SIGNATURE ? 100 : 0;
  },

  open(ctx: OpenContext): Promise<BlockImage> {
    return openVdi(ctx);
  },

  create(ctx: CreateContext): Promise<BlockImage> {
    return createVdi(ctx);
  },
};
