/**
 * vhd: Microsoft Virtual Hard Disk (qemu calls it "vpc"), after the "Virtual Hard Disk
 * Image Format Specification" v1.0. Three disk types share one footer:
 *
 *   fixed (2)         the guest disk byte for byte, then the 512-byte footer
 *   dynamic (3)       footer copy at 0, dynamic disk header, BAT, then data blocks, each a
 *                     sector bitmap followed by block data; footer at the end
 *   differencing (4)  a dynamic disk whose sector bitmaps say, sector by sector, whether the
 *                     data is here (1) or in the parent (0); the parent is named by the
 *                     header's unicode name and parent locators and identified by its UUID
 *
 * Reading follows qemu-img (the oracle) where the spec leaves room: the guest size comes
 * from CHS geometry or from "current size" according to the creator application
 * (vhd-geometry.ts), and in dynamic disks an allocated block is read whole, without
 * consulting its bitmap (every writer we know fills unwritten sectors of a new block with
 * zeroes, and qemu reads them that way).
 *
 * Writing is built for sequential convert: the BAT and bitmaps live in memory; a new block
 * is appended as bitmap + data, consecutive new blocks of one write in one writev; BAT,
 * dirty bitmaps and the footer are written once, at flush. Until then the file has no
 * footer at its end (its copy at offset 0 still opens it).
 */
import { allBitsSet, bitRuns, setBits, type BitOrder } from '../bitmap.js';
import { stat } from 'node:fs/promises';
import { basename, dirname, relative, resolve } from 'node:path';
import { PolyvisorError, hex } from '../../errors.js';
import { checkRange, readBacking, writeUnaligned, writeZeroBytes } from '../backing.js';
import type { CreateContext, DiskFormat, OpenContext } from '../format.js';
import type { BackingRef, BlockImage, CheckResult, Extent } from '../image.js';
import { ImageFile, alignDown, alignUp } from '../io.js';
import { optionBool, optionSize } from '../registry.js';
import { type Geometry, MAX_CHS_SECTORS, chsSectors, geometryForSectors, roundUpToGeometry, sizeFromGeometry } from './vhd-geometry.js';
import {
  DISK_DIFFERENCING,
  DISK_DYNAMIC,
  DISK_FIXED,
  DYN_HEADER_SIZE,
  type DynamicHeader,
  FEATURES_RESERVED,
  FOOTER_COOKIE,
  FOOTER_SIZE,
  type Footer,
  type ParentLocator,
  SECTOR,
  UNALLOCATED,
  VERSION_1_0,
  buildDynamicHeader,
  buildFooter,
  decodeUtf16,
  encodeUtf16,
  footerState,
  fromVhdTime,
  parseDynamicHeader,
  parseFooter,
  toVhdTime,
  uuidText,
  vhdChecksum,
} from './vhd-structs.js';
import { crypto } from '../../util/builtins.js';

/** Bit numbering of this format's sector bitmaps (see bitmap.ts). */
const BIT_ORDER: BitOrder = 'msb-first';

type Subformat = 'fixed' | 'dynamic' | 'differencing';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
/** Block sizes we open: any power of two from one sector to 256 MiB. */
const MIN_BLOCK = SECTOR;
const MAX_BLOCK = 256 * MiB;
/** Block sizes we create. Hyper-V itself makes 512 KiB and 2 MiB blocks; readers accept powers of two. */
const MIN_CREATE_BLOCK = 512 * KiB;
const DEFAULT_BLOCK = 2 * MiB;
/**
 * BAT entries are 32-bit sector numbers, so a dynamic VHD file ends before 2 TiB; Hyper-V
 * and qemu cap the disk at 2040 GiB to leave room for metadata.
 */
const MAX_DYNAMIC_SIZE = 2040 * GiB;
const MAX_FILE_END = 0xffffffff * SECTOR;
/** More BAT entries than any real disk needs (2 TiB in 64 KiB blocks): refused before allocating. */
const MAX_BAT_ENTRIES = 1 << 25;
/** A parent locator holds one path; Windows paths are at most 32767 UTF-16 units. */
const MAX_LOCATOR_BYTES = 64 * KiB;
/** Largest vectored write we issue: bounded buffers and iovecs per system call. */

/** Marks a sector bitmap with every bit set, so that full bitmaps cost no memory. */
const FULL: Buffer = Buffer.alloc(0);

/** A range of this layer: stored here at `host`, or not stored ('unallocated'). */
interface Segment {
  guest: number;
  length: number;
  kind: 'data' | 'unallocated';
  host: number;
}

/** A file range that blocks must not overlap (footer copy, dynamic header, BAT, locator data). */
interface Region {
  start: number;
  end: number;
  name: string;
}

interface Layout {
  headerOffset: number;
  header: DynamicHeader;
  blockSize: number;
  /** sector bitmap bytes in front of each block: one bit per sector, padded to 512 */
  bitmapSize: number;
  sectorsPerBlock: number;
  /** BAT entries that address the virtual disk */
  entries: number;
  regions: Region[];
}

interface LocatorName {
  platform: string;
  name: string;
}

interface VhdState {
  file: ImageFile;
  readOnly: boolean;
  subformat: Subformat;
  footer: Footer;
  footerBuf: Buffer;
  virtualSize: number;
  sizeFrom: 'chs' | 'current-size';
  footerSource: string;
  notes: string[];
  layout: Layout | null;
  bat: Uint32Array;
  /** where the next block goes, and where the footer belongs */
  nextFree: number;
  footerCopyOk: boolean;
  locatorNames: LocatorName[];
}

class VhdImage implements BlockImage {
  readonly format = 'vhd';
  readonly readOnly: boolean;
  readonly virtualSize: number;
  readonly clusterSize: number;
  backing: BlockImage | null = null;
  backingRef: BackingRef | null = null;
  readonly subformat: Subformat;
  readonly footer: Footer;

  #file: ImageFile;
  #footerBuf: Buffer;
  #sizeFrom: 'chs' | 'current-size';
  #footerSource: string;
  #notes: string[];
  #layout: Layout | null;
  #bat: Uint32Array;
  #batDirtyLo = Infinity;
  #batDirtyHi = -1;
  /** cached sector bitmaps by block; FULL when every bit is set */
  #bitmaps = new Map<number, Buffer>();
  #dirtyBitmaps = new Set<number>();
  #nextFree: number;
  /** nextFree when opened: anything past it (old footer, junk) is cut before appending */
  #appendStart: number;
  #appendReady: Promise<void> | null = null;
  #dirty = false;
  #footerCopyOk: boolean;
  #locatorNames: LocatorName[];
  #ones: Buffer;
  #closed = false;

  constructor(s: VhdState) {
    this.#file = s.file;
    this.readOnly = s.readOnly;
    this.subformat = s.subformat;
    this.footer = s.footer;
    this.#footerBuf = s.footerBuf;
    this.virtualSize = s.virtualSize;
    this.#sizeFrom = s.sizeFrom;
    this.#footerSource = s.footerSource;
    this.#notes = s.notes;
    this.#layout = s.layout;
    this.#bat = s.bat;
    this.#nextFree = s.nextFree;
    this.#appendStart = s.nextFree;
    this.#footerCopyOk = s.footerCopyOk;
    this.#locatorNames = s.locatorNames;
    this.clusterSize = s.layout ? s.layout.blockSize : 64 * KiB;
    this.#ones = Buffer.alloc(s.layout ? s.layout.bitmapSize : 0, 0xff);
  }

  get path(): string {
    return this.#file.path;
  }

  // ---- reading ----------------------------------------------------------------------

  /**
   * This layer's map of [offset, offset+length): adjacent pieces of one kind are merged,
   * data pieces only when contiguous in the file.
   */
  async #segments(offset: number, length: number): Promise<Segment[]> {
    const out: Segment[] = [];
    if (length === 0) return out;
    const L = this.#layout;
    if (!L) return [{ guest: offset, length, kind: 'data', host: offset }];
    const push = (guest: number, len: number, kind: Segment['kind'], host: number): void => {
      const last = out[out.length - 1];
      if (last && last.kind === kind && last.guest + last.length === guest && (kind === 'unallocated' || last.host + last.length === host)) {
        last.length += len;
      } else {
        out.push({ guest, length: len, kind, host });
      }
    };
    const end = offset + length;
    const diff = this.subformat === 'differencing';
    for (let g = offset; g < end; ) {
      const b = Math.floor(g / L.blockSize);
      const inb = g - b * L.blockSize;
      const n = Math.min(L.blockSize - inb, end - g);
      const e = this.#bat[b]!;
      if (e === UNALLOCATED) {
        push(g, n, 'unallocated', 0);
      } else {
        const dataHost = e * SECTOR + L.bitmapSize;
        const bm = diff ? await this.#loadBitmap(b) : FULL;
        if (bm === FULL) {
          push(g, n, 'data', dataHost + inb);
        } else {
          const base = g - inb;
          bitRuns(bm, Math.floor(inb / SECTOR), Math.ceil((inb + n) / SECTOR), BIT_ORDER, (s0, s1, set) => {
            const a = Math.max(inb, s0 * SECTOR);
            const z = Math.min(inb + n, s1 * SECTOR);
            push(base + a, z - a, set ? 'data' : 'unallocated', dataHost + a);
          });
        }
      }
      g += n;
    }
    return out;
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    checkRange(this, offset, length, 'block status');
    const segs = await this.#segments(offset, length);
    return segs.map((s) => (s.kind === 'data' ? { offset: s.guest, length: s.length, kind: 'data', hostOffset: s.host } : { offset: s.guest, length: s.length, kind: 'unallocated' }));
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    if (buf.length === 0) return;
    if (!this.#layout) {
      await this.#file.readInto(buf, offset);
      return;
    }
    const segs = await this.#segments(offset, buf.length);
    await Promise.all(
      segs.map((s) => {
        const sub = buf.subarray(s.guest - offset, s.guest - offset + s.length);
        // A dynamic disk has no backing: readBacking(null) gives zeroes.
        return s.kind === 'data' ? this.#file.readInto(sub, s.host) : readBacking(this.backing, sub, s.guest);
      }),
    );
  }

  /** The sector bitmap of an allocated block, read once and cached. */
  async #loadBitmap(b: number): Promise<Buffer> {
    const cached = this.#bitmaps.get(b);
    if (cached) return cached;
    const L = this.#layout!;
    const host = this.#bat[b]! * SECTOR;
    const buf = await this.#file.readStructure(host, L.bitmapSize, `sector bitmap of block ${b}`);
    const again = this.#bitmaps.get(b);
    if (again) return again; // loaded (and maybe changed) by a concurrent call meanwhile
    const v = allBitsSet(buf, L.sectorsPerBlock, BIT_ORDER) ? FULL : buf;
    this.#bitmaps.set(b, v);
    return v;
  }

  // ---- writing ----------------------------------------------------------------------

  #checkWritable(): void {
    if (this.readOnly) throw new PolyvisorError('ERR_READ_ONLY', 'image is open read-only', { file: this.path });
    if (this.#closed) throw new PolyvisorError('ERR_INTERNAL', 'image is closed', { file: this.path });
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'write');
    this.#checkWritable();
    if (buf.length === 0) return;
    this.#dirty = true;
    if (!this.#layout) {
      await this.#file.writeAt(buf, offset);
      return;
    }
    // A differencing disk marks whole sectors as its own: a partial sector must first be
    // filled with what the guest sees there now (the parent's data, most likely).
    if (this.subformat === 'differencing' && (offset % SECTOR !== 0 || buf.length % SECTOR !== 0)) {
      await writeUnaligned(this, buf, offset, SECTOR, (b, o) => this.#writeBlocks(b, o));
      return;
    }
    await this.#writeBlocks(buf, offset);
  }

  /** Reserves the next block at the end of the data area (synchronously: concurrent writes never share one). */
  #allocate(b: number): number {
    const L = this.#layout!;
    const host = this.#nextFree;
    if (host + L.bitmapSize + L.blockSize > MAX_FILE_END) {
      throw new PolyvisorError('ERR_UNSUPPORTED', 'a VHD file cannot grow past 2 TiB: BAT entries are 32-bit sector numbers', { file: this.path, structure: `BAT entry ${b}` });
    }
    this.#bat[b] = host / SECTOR;
    this.#nextFree = host + L.bitmapSize + L.blockSize;
    if (b < this.#batDirtyLo) this.#batDirtyLo = b;
    if (b > this.#batDirtyHi) this.#batDirtyHi = b;
    return host;
  }

  /**
   * Before the first block is appended, cut the file at the end of its data: the old footer
   * (and any junk after the last block) must not show through the unwritten parts of a new
   * block, which are left as holes and read as zeroes.
   */
  #prepareAppend(): Promise<void> {
    if (!this.#appendReady) {
      const at = this.#appendStart;
      this.#appendReady = this.#file.size > at ? this.#file.truncate(at) : Promise.resolve();
    }
    return this.#appendReady;
  }

  async #writeBlocks(buf: Uint8Array, offset: number): Promise<void> {
    const L = this.#layout!;
    const diff = this.subformat === 'differencing';
    const segs: { host: number; data: Uint8Array }[] = [];
    const updates: { b: number; s0: number; s1: number }[] = [];
    let appended = false;
    const end = offset + buf.length;
    // Pass 1, synchronous: allocate new blocks and plan every write.
    for (let g = offset; g < end; ) {
      const b = Math.floor(g / L.blockSize);
      const inb = g - b * L.blockSize;
      const n = Math.min(L.blockSize - inb, end - g);
      const sub = buf.subarray(g - offset, g - offset + n);
      const e = this.#bat[b]!;
      if (e === UNALLOCATED) {
        const host = this.#allocate(b);
        appended = true;
        if (!diff || n === L.blockSize) {
          // Dynamic: the whole block becomes this layer's; unwritten parts are holes (zeroes).
          this.#bitmaps.set(b, FULL);
          segs.push({ host, data: this.#ones });
        } else {
          const bm = Buffer.alloc(L.bitmapSize);
          setBits(bm, Math.floor(inb / SECTOR), Math.ceil((inb + n) / SECTOR), BIT_ORDER);
          this.#bitmaps.set(b, bm);
          this.#dirtyBitmaps.add(b);
        }
        segs.push({ host: host + L.bitmapSize + inb, data: sub });
      } else {
        segs.push({ host: e * SECTOR + L.bitmapSize + inb, data: sub });
        if (this.#bitmaps.get(b) !== FULL) updates.push({ b, s0: Math.floor(inb / SECTOR), s1: Math.ceil((inb + n) / SECTOR) });
      }
      g += n;
    }
    // Every write waits for the cut: a write into a block another call just appended
    // must not land before the truncation that makes room for it.
    if (appended) void this.#prepareAppend();
    if (this.#appendReady) await this.#appendReady;
    // Pass 2: written sectors of existing blocks get their bitmap bits (written at flush).
    for (const u of updates) {
      const bm = await this.#loadBitmap(u.b);
      if (bm !== FULL && setBits(bm, u.s0, u.s1, BIT_ORDER)) this.#dirtyBitmaps.add(u.b);
    }
    await this.#file.writeSegments(segs);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    checkRange(this, offset, length, 'write zeroes');
    this.#checkWritable();
    const L = this.#layout;
    const end = offset + length;
    if (L && this.subformat === 'dynamic') {
      // With no parent, an unallocated block already reads as zeroes: only allocated
      // blocks need zeroes written (they stay allocated: freeing would leak their space).
      for (let g = offset; g < end; ) {
        const b = Math.floor(g / L.blockSize);
        const n = Math.min(L.blockSize - (g - b * L.blockSize), end - g);
        if (this.#bat[b] !== UNALLOCATED) await writeZeroBytes(this, g, n);
        g += n;
      }
      return;
    }
    // Fixed: plain bytes. Differencing: zeroes must hide the parent, so they are stored.
    await writeZeroBytes(this, offset, length);
  }

  async flush(): Promise<void> {
    if (this.readOnly || !this.#dirty || this.#closed) return;
    const L = this.#layout;
    if (!L) {
      await this.#file.sync();
      this.#dirty = false;
      return;
    }
    if (this.#appendReady) await this.#appendReady;
    const writes: Promise<void>[] = [];
    for (const b of this.#dirtyBitmaps) {
      const bm = this.#bitmaps.get(b);
      if (bm && bm !== FULL) writes.push(this.#file.writeAt(bm, this.#bat[b]! * SECTOR));
    }
    if (this.#batDirtyHi >= this.#batDirtyLo) {
      const lo = this.#batDirtyLo;
      const hi = this.#batDirtyHi;
      const out = Buffer.allocUnsafe((hi - lo + 1) * 4);
      for (let i = lo; i <= hi; i++) out.writeUInt32BE(this.#bat[i]!, (i - lo) * 4);
      writes.push(this.#file.writeAt(out, L.header.tableOffset + lo * 4));
    }
    await Promise.all(writes);
    // The footer goes right after the last block; the copy at 0 is rewritten only when it
    // was missing or stale (its content never changes otherwise).
    await this.#file.writeAt(this.#footerBuf, this.#nextFree);
    if (this.#file.size > this.#nextFree + FOOTER_SIZE) await this.#file.truncate(this.#nextFree + FOOTER_SIZE);
    if (!this.#footerCopyOk) {
      await this.#file.writeAt(this.#footerBuf, 0);
      this.#footerCopyOk = true;
    }
    await this.#file.sync();
    this.#dirtyBitmaps.clear();
    this.#batDirtyLo = Infinity;
    this.#batDirtyHi = -1;
    this.#appendStart = this.#nextFree;
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
      if (this.backing) await this.backing.close();
    }
  }

  // ---- info and check ---------------------------------------------------------------

  formatInfo(): Record<string, unknown> {
    const f = this.footer;
    const L = this.#layout;
    const info: Record<string, unknown> = {
      subformat: this.subformat,
      'creator-app': f.creatorApp.replace(/\0+$/, ''),
      'creator-version': `${f.creatorVersion >>> 16}.${f.creatorVersion & 0xffff}`,
      'creator-host-os': f.creatorHostOs.replace(/\0+$/, ''),
      'current-size': f.currentSize,
      'original-size': f.originalSize,
      geometry: { cylinders: f.geometry.cylinders, heads: f.geometry.heads, 'sectors-per-track': f.geometry.sectorsPerTrack },
      'size-from': this.#sizeFrom,
      uuid: uuidText(f.uuid),
      timestamp: fromVhdTime(f.timestamp),
      'saved-state': f.savedState,
      'footer-source': this.#footerSource,
    };
    if (L) {
      info['block-size'] = L.blockSize;
      info['max-table-entries'] = L.header.maxTableEntries;
      info['allocated-blocks'] = this.#bat.reduce((n, e) => (e === UNALLOCATED ? n : n + 1), 0);
    }
    if (this.subformat === 'differencing' && L) {
      info['parent-uuid'] = uuidText(L.header.parentUuid);
      info['parent-name'] = L.header.parentName;
      info['parent-timestamp'] = fromVhdTime(L.header.parentTimestamp);
      info['parent-locators'] = this.#locatorNames.map((l) => ({ platform: l.platform, path: l.name }));
    }
    if (this.#notes.length) info.notes = [...this.#notes];
    return info;
  }

  async check(): Promise<CheckResult> {
    if (!this.readOnly && this.#dirty) await this.flush();
    const file = this.#file;
    const res: CheckResult = { corruptions: 0, leaks: 0, messages: [], imageEndOffset: file.size };
    const corrupt = (msg: string): void => {
      res.corruptions++;
      res.messages.push(msg);
    };
    // The footer at the end of the file.
    const tail = file.size >= FOOTER_SIZE ? await file.readStructure(file.size - FOOTER_SIZE, FOOTER_SIZE, 'footer') : Buffer.alloc(0);
    const endState = footerState(tail);
    if (endState !== 'ok') corrupt(`footer at ${hex(Math.max(0, file.size - FOOTER_SIZE))}: ${endState === 'no-cookie' ? 'no "conectix" cookie' : 'checksum mismatch'}`);
    const L = this.#layout;
    if (!L) {
      if (file.size - FOOTER_SIZE < this.virtualSize) corrupt(`fixed disk data: ${this.virtualSize} bytes expected before the footer, the file holds ${Math.max(0, file.size - FOOTER_SIZE)}`);
      return res;
    }
    const copy = await file.readStructure(0, FOOTER_SIZE, 'footer copy');
    if (endState === 'ok' && !copy.equals(tail)) corrupt('footer copy at 0x0 differs from the footer at the end of the file');
    try {
      parseDynamicHeader(await file.readStructure(L.headerOffset, DYN_HEADER_SIZE, 'dynamic disk header'), { file: this.path, offset: L.headerOffset });
    } catch (e) {
      corrupt(e instanceof Error ? e.message : String(e));
    }
    // The BAT as stored, validated without stopping at the first problem.
    let bat: Uint32Array;
    try {
      bat = readBat(await file.readStructure(L.header.tableOffset, L.entries * 4, 'BAT'));
    } catch (e) {
      corrupt(e instanceof Error ? e.message : String(e));
      return res;
    }
    const limit = endState === 'ok' ? file.size - FOOTER_SIZE : file.size;
    const blocks = validateBlocks(bat, L, limit, file.size, this.path, (_code, e) => corrupt(e.message));
    res.allocatedClusters = blocks.length;
    res.totalClusters = L.entries;
    // Leaks: file space between blocks that no BAT entry references. A little padding
    // after the metadata (alignment) is not a leak.
    const stride = L.bitmapSize + L.blockSize;
    const metaEnd = Math.max(...L.regions.map((r) => r.end));
    let prevEnd = metaEnd;
    for (const s of Float64Array.from(blocks).sort()) {
      const gap = s - prevEnd;
      if (gap > 0 && !(prevEnd === metaEnd && gap < 64 * KiB)) {
        res.leaks += Math.ceil(gap / stride);
        res.messages.push(`leak: ${gap} bytes at ${hex(prevEnd)} belong to no block`);
      }
      prevEnd = Math.max(prevEnd, s + stride);
    }
    return res;
  }
}

// ---- bitmaps ----------------------------------------------------------------------------





// ---- validation -------------------------------------------------------------------------

function readBat(raw: Buffer): Uint32Array {
  const bat = new Uint32Array(raw.length / 4);
  for (let i = 0; i < bat.length; i++) bat[i] = raw.readUInt32BE(i * 4);
  return bat;
}

type Report = (code: 'ERR_TRUNCATED' | 'ERR_CORRUPT', err: PolyvisorError) => void;

/**
 * Every allocated BAT entry must name a block (bitmap + data) that lies inside the file
 * before the footer and overlaps neither the metadata nor another block ("BAT entry N").
 * Returns the file offsets of the allocated blocks. Reports through `report`, which
 * throws when opening and collects when checking.
 */
function validateBlocks(bat: Uint32Array, L: Layout, limit: number, fileSize: number, file: string, report: Report): number[] {
  const stride = L.bitmapSize + L.blockSize;
  const starts: number[] = [];
  const entryAt = (i: number): number => L.header.tableOffset + i * 4;
  for (let i = 0; i < bat.length; i++) {
    const e = bat[i]!;
    if (e === UNALLOCATED) continue;
    const start = e * SECTOR;
    const end = start + stride;
    const ctx = { file, structure: `BAT entry ${i}`, offset: entryAt(i) };
    if (end > limit) {
      if (end > fileSize) report('ERR_TRUNCATED', new PolyvisorError('ERR_TRUNCATED', `block at ${hex(start)} ends at ${hex(end)}, past the end of the file at ${hex(fileSize)}`, ctx));
      else report('ERR_CORRUPT', new PolyvisorError('ERR_CORRUPT', `block at ${hex(start)} ends at ${hex(end)}, over the footer at ${hex(limit)}`, ctx));
      continue;
    }
    let bad = false;
    for (const r of L.regions) {
      if (start < r.end && r.start < end) {
        report('ERR_CORRUPT', new PolyvisorError('ERR_CORRUPT', `block at ${hex(start)} overlaps the ${r.name} at ${hex(r.start)}`, ctx));
        bad = true;
        break;
      }
    }
    if (!bad) starts.push(start);
  }
  // Blocks overlap each other when two starts (sorted) are closer than one block.
  const sorted = Float64Array.from(starts).sort();
  let named = 0;
  for (let k = 1; k < sorted.length; k++) {
    if (sorted[k]! - sorted[k - 1]! < stride) {
      // Naming the entries costs a scan each: name the first hundred, count the rest.
      if (++named > 100) {
        report('ERR_CORRUPT', new PolyvisorError('ERR_CORRUPT', `another block overlaps the block at ${hex(sorted[k - 1]!)}`, { file, structure: 'BAT', offset: L.header.tableOffset }));
        continue;
      }
      const a = sorted[k - 1]!;
      const b = sorted[k]!;
      const ia = bat.findIndex((e) => e !== UNALLOCATED && e * SECTOR === a);
      let ib = -1;
      for (let i = 0; i < bat.length; i++) if (bat[i] !== UNALLOCATED && bat[i]! * SECTOR === b && i !== ia) { ib = i; break; }
      const detail = a === b ? `names the same block at ${hex(b)} as BAT entry ${ia}` : `block at ${hex(b)} overlaps the block of BAT entry ${ia} at ${hex(a)}`;
      report('ERR_CORRUPT', new PolyvisorError('ERR_CORRUPT', detail, { file, structure: `BAT entry ${ib}`, offset: entryAt(ib) }));
    }
  }
  return starts;
}

function throwReport(_code: string, e: PolyvisorError): never {
  throw e;
}

/** Past the end of the file: truncated; inside it but over something else: corrupt. */
function outOfBounds(end: number, limit: number, fileSize: number, detail: string, ctx: { file: string; structure: string; offset: number }): void {
  if (end > fileSize) throw new PolyvisorError('ERR_TRUNCATED', `${detail} ends at ${hex(end)}, past the end of the file at ${hex(fileSize)}`, ctx);
  if (end > limit) throw new PolyvisorError('ERR_CORRUPT', `${detail} ends at ${hex(end)}, over the footer at ${hex(limit)}`, ctx);
}

// ---- opening ----------------------------------------------------------------------------

/** The path a parent locator holds, as a name we can resolve here, or null. */
function locatorPath(code: string, data: Buffer): string | null {
  let s: string;
  switch (code) {
    case 'W2ru':
    case 'W2ku':
      s = decodeUtf16(data, 'le');
      break;
    case 'Wi2r':
    case 'Wi2k':
      s = data.toString('latin1').replace(/\0.*$/s, '');
      break;
    case 'MacX': {
      // "file://localhost/Users/..." (UTF-8, URL-escaped)
      const u = data.toString('utf8').replace(/\0.*$/s, '');
      const m = /^file:\/\/(?:localhost)?(\/.*)$/i.exec(u);
      if (!m) return null;
      try {
        return decodeURIComponent(m[1]!);
      } catch {
        return m[1]!;
      }
    }
    default:
      return null; // "Mac " aliases are opaque blobs
  }
  return s ? s.replace(/\\/g, '/') : null;
}

async function openVhd(ctx: OpenContext): Promise<VhdImage> {
  const file = ctx.file;
  const path = file.path;
  const size = file.size;
  const notes: string[] = [];
  if (size < FOOTER_SIZE - 1) {
    throw new PolyvisorError('ERR_TRUNCATED', `the file has ${size} bytes, too few for a 512-byte footer`, { file: path, structure: 'footer', offset: 0 });
  }
  const tailLen = Math.min(FOOTER_SIZE, size);
  const tail = await file.readStructure(size - tailLen, tailLen, 'footer');
  let footerOffset = size - FOOTER_SIZE;
  let footerBuf: Buffer | null = null;
  let footerSource = 'end of file';
  if (tailLen === FOOTER_SIZE && tail.subarray(0, 8).equals(FOOTER_COOKIE)) {
    footerBuf = tail;
  } else if (tail.subarray(tailLen - 511, tailLen - 503).equals(FOOTER_COOKIE)) {
    // Virtual PC before 2004 wrote 511-byte footers (spec, "Hard Disk Footer Format").
    footerOffset = size - 511;
    footerBuf = Buffer.concat([tail.subarray(tailLen - 511), Buffer.alloc(1)]);
    footerSource = '511-byte footer at end of file';
  }
  const endState = footerBuf ? footerState(footerBuf) : 'no-cookie';
  // Dynamic disks keep a copy of the footer at offset 0, "for redundancy" (spec): when the
  // end is damaged (or missing, as after a crash mid-append), the copy opens the image.
  const copy = size >= FOOTER_SIZE ? await file.readStructure(0, FOOTER_SIZE, 'footer copy') : null;
  const copyOk = !!copy && footerState(copy) === 'ok' && [DISK_DYNAMIC, DISK_DIFFERENCING].includes(copy.readUInt32BE(60));
  let limit = footerOffset;
  if (endState !== 'ok') {
    if (copyOk) {
      notes.push(`the footer at the end of the file is ${endState === 'no-cookie' ? 'missing' : 'damaged (checksum)'}; the copy at offset 0 was used`);
      footerBuf = copy;
      footerSource = 'copy at offset 0';
      limit = size;
    } else if (endState === 'bad-checksum') {
      const stored = footerBuf!.readUInt32BE(64);
      throw new PolyvisorError('ERR_CHECKSUM', `checksum is ${hex(stored)} but the footer sums to ${hex(vhdChecksum(footerBuf!, 64))}`, { file: path, structure: 'footer', offset: footerOffset });
    } else {
      throw new PolyvisorError('ERR_CORRUPT', 'no "conectix" cookie at the end of the file, nor a valid footer copy at offset 0: not a VHD', { file: path, structure: 'footer', offset: Math.max(0, size - FOOTER_SIZE) });
    }
  }
  const fctx = { file: path, structure: 'footer', offset: footerSource === 'copy at offset 0' ? 0 : footerOffset };
  const footer = parseFooter(footerBuf!, fctx);
  if (footer.version >>> 16 !== 1) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `file format version ${footer.version >>> 16}.${footer.version & 0xffff} (only 1.x is defined)`, fctx);
  }
  let subformat: Subformat;
  switch (footer.diskType) {
    case DISK_FIXED:
      subformat = 'fixed';
      break;
    case DISK_DYNAMIC:
      subformat = 'dynamic';
      break;
    case DISK_DIFFERENCING:
      subformat = 'differencing';
      break;
    case 1:
    case 5:
    case 6:
      throw new PolyvisorError('ERR_UNSUPPORTED', `disk type ${footer.diskType} is a deprecated reserved type`, fctx);
    default:
      throw new PolyvisorError('ERR_CORRUPT', `disk type ${footer.diskType} is not fixed (2), dynamic (3) or differencing (4)`, fctx);
  }
  const fromChs = sizeFromGeometry(footer.creatorApp, footer.geometry);
  const virtualSize = fromChs ? chsSectors(footer.geometry) * SECTOR : alignDown(footer.currentSize, SECTOR);
  const footerCopyOk = subformat === 'fixed' || (!!copy && footerBuf!.equals(copy));
  if (subformat !== 'fixed' && !footerCopyOk && footerSource !== 'copy at offset 0') notes.push('the footer copy at offset 0 is missing or differs from the footer');
  const base = { file, readOnly: ctx.readOnly, footer, footerBuf: footerBuf!, virtualSize, sizeFrom: fromChs ? ('chs' as const) : ('current-size' as const), footerSource, notes, footerCopyOk, locatorNames: [] as LocatorName[] };

  if (subformat === 'fixed') {
    if (virtualSize > footerOffset) {
      throw new PolyvisorError('ERR_TRUNCATED', `a fixed disk of ${virtualSize} bytes needs its data before the footer, which is at ${hex(footerOffset)}`, fctx);
    }
    return new VhdImage({ ...base, subformat, layout: null, bat: new Uint32Array(0), nextFree: footerOffset });
  }

  // ---- dynamic and differencing: dynamic disk header, BAT ----
  if (footer.dataOffset === null) throw new PolyvisorError('ERR_CORRUPT', `a ${subformat} disk needs a data offset (dynamic disk header), found none`, fctx);
  const headerOffset = footer.dataOffset;
  const hctx = { file: path, structure: 'dynamic disk header', offset: headerOffset };
  outOfBounds(headerOffset + DYN_HEADER_SIZE, limit, size, 'header', hctx);
  const header = parseDynamicHeader(await file.readStructure(headerOffset, DYN_HEADER_SIZE, 'dynamic disk header'), { file: path, offset: headerOffset });
  if (header.version >>> 16 !== 1) throw new PolyvisorError('ERR_UNSUPPORTED', `header version ${header.version >>> 16}.${header.version & 0xffff} (only 1.x is defined)`, hctx);
  const bs = header.blockSize;
  if (bs < MIN_BLOCK || (bs & (bs - 1)) !== 0) throw new PolyvisorError('ERR_CORRUPT', `block size ${bs} is not a power of two of at least 512 bytes`, hctx);
  if (bs > MAX_BLOCK) throw new PolyvisorError('ERR_UNSUPPORTED', `block size ${bs} is larger than ${MAX_BLOCK} bytes`, hctx);
  const entries = Math.ceil(virtualSize / bs);
  if (header.maxTableEntries < entries) {
    throw new PolyvisorError('ERR_CORRUPT', `max table entries ${header.maxTableEntries} cannot address the ${virtualSize}-byte disk in ${bs}-byte blocks (${entries} needed)`, hctx);
  }
  if (entries > MAX_BAT_ENTRIES) throw new PolyvisorError('ERR_UNSUPPORTED', `${entries} BAT entries are more than Polyvisor handles (${MAX_BAT_ENTRIES})`, hctx);
  const batBytes = header.maxTableEntries * 4;
  const bctx = { file: path, structure: 'BAT', offset: header.tableOffset };
  outOfBounds(header.tableOffset + batBytes, limit, size, `BAT of ${header.maxTableEntries} entries`, bctx);
  const regions: Region[] = [
    { start: headerOffset, end: headerOffset + DYN_HEADER_SIZE, name: 'dynamic disk header' },
    { start: header.tableOffset, end: header.tableOffset + batBytes, name: 'BAT' },
  ];
  if (headerOffset >= FOOTER_SIZE) regions.unshift({ start: 0, end: FOOTER_SIZE, name: 'footer copy' });
  for (const r of regions) {
    if (r.name !== 'BAT' && header.tableOffset < r.end && r.start < header.tableOffset + batBytes) {
      throw new PolyvisorError('ERR_CORRUPT', `the BAT overlaps the ${r.name} at ${hex(r.start)}`, bctx);
    }
  }
  // Parent locators (differencing only): their data must lie inside the file.
  const locators: { index: number; loc: ParentLocator; path: string | null }[] = [];
  if (subformat === 'differencing') {
    for (let i = 0; i < header.locators.length; i++) {
      const loc = header.locators[i]!;
      if (!loc.platformCode) continue;
      const lctx = { file: path, structure: `parent locator ${i} (${loc.platformCode.trim()})`, offset: loc.dataOffset };
      if (loc.dataLength > MAX_LOCATOR_BYTES) throw new PolyvisorError('ERR_CORRUPT', `data length ${loc.dataLength} is too long for a path`, lctx);
      if (loc.dataLength === 0) continue;
      outOfBounds(loc.dataOffset + loc.dataLength, limit, size, 'locator data', lctx);
      const data = await file.readStructure(loc.dataOffset, loc.dataLength, lctx.structure);
      regions.push({ start: loc.dataOffset, end: loc.dataOffset + loc.dataLength, name: lctx.structure });
      locators.push({ index: i, loc, path: locatorPath(loc.platformCode, data) });
    }
  }
  const bitmapSize = alignUp(Math.ceil(bs / SECTOR / 8), SECTOR);
  const layout: Layout = { headerOffset, header, blockSize: bs, bitmapSize, sectorsPerBlock: bs / SECTOR, entries, regions };
  const bat = readBat(await file.readStructure(header.tableOffset, entries * 4, 'BAT'));
  const starts = validateBlocks(bat, layout, limit, size, path, throwReport);
  let nextFree = Math.max(...regions.map((r) => r.end));
  for (const s of starts) nextFree = Math.max(nextFree, s + bitmapSize + bs);
  nextFree = alignUp(nextFree, SECTOR);
  const locatorNames = locators.filter((l) => l.path).map((l) => ({ platform: l.loc.platformCode, name: l.path! }));
  const image = new VhdImage({ ...base, subformat, layout, bat, nextFree, locatorNames });

  if (subformat === 'differencing') {
    // Relative names first (they survive moving the chain), then absolute ones, then the
    // bare unicode name, which Hyper-V stores as the parent's file name.
    const order = ['W2ru', 'Wi2r', 'W2ku', 'Wi2k', 'MacX'];
    const candidates: string[] = [];
    for (const code of order) for (const l of locatorNames) if (l.platform === code && !candidates.includes(l.name)) candidates.push(l.name);
    if (header.parentName && !candidates.includes(header.parentName.replace(/\\/g, '/'))) candidates.push(header.parentName.replace(/\\/g, '/'));
    const recorded = candidates[0] ?? header.parentName;
    image.backingRef = { name: recorded, format: 'vhd' };
    const parent = await ctx.openBacking(candidates, 'vhd');
    if (parent) {
      const want = uuidText(header.parentUuid);
      if (!(parent instanceof VhdImage) || !parent.footer.uuid.equals(header.parentUuid)) {
        const got = parent instanceof VhdImage ? uuidText(parent.footer.uuid) : `a ${parent.format} image`;
        await parent.close();
        throw new PolyvisorError('ERR_CHAIN_MISMATCH', `parent ${parent.path} has unique ID ${got}, but this differencing disk records parent unique ID ${want}`, { file: path, structure: 'dynamic disk header', offset: headerOffset });
      }
      image.backing = parent;
      image.backingRef = { name: recorded, format: 'vhd', resolved: parent.path };
    }
  }
  return image;
}

// ---- creating ---------------------------------------------------------------------------

const CREATORS = {
  /** Hyper-V / the Windows VirtualDisk API: sized by current size. */
  win: { app: 'win ', version: 0x000a0000 },
  /** Virtual Server 2005: sized by CHS geometry. */
  vs: { app: 'vs  ', version: 0x00010000 },
} as const;

function invalid(detail: string, path: string): PolyvisorError {
  return new PolyvisorError('ERR_INVALID_OPTION', `vhd: ${detail}`, { file: path });
}

/** Windows-style relative path from the child's folder to the parent, as W2ru holds it. */
function windowsRelative(fromDir: string, to: string): string {
  const rel = relative(fromDir, to).replace(/\//g, '\\');
  return rel.startsWith('..') ? rel : `.\\${rel}`;
}

async function createVhd(ctx: CreateContext): Promise<VhdImage> {
  const o = ctx.options;
  const path = ctx.path;
  const compat = o.compat ?? 'hyperv';
  const forceSize = optionBool(o, 'force_size', false);
  let subformat: Subformat = o.subformat === 'fixed' ? 'fixed' : 'dynamic';
  if (compat === 'azure') {
    // Azure accepts only fixed VHDs whose size is a whole number of MiB.
    if (o.subformat === 'dynamic') throw invalid('compat=azure needs subformat=fixed (Azure accepts only fixed VHDs)', path);
    subformat = 'fixed';
  }
  const parent = ctx.backing?.image;
  if (ctx.backing) {
    if (o.subformat === 'fixed' || compat === 'azure') throw invalid('a differencing disk (backing file) is dynamic; subformat=fixed and compat=azure do not apply', path);
    if (!(parent instanceof VhdImage)) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `a differencing VHD needs a VHD parent; ${ctx.backing.name} is ${ctx.backing.format}`, { file: path });
    }
    subformat = 'differencing';
  }
  const blockSize = optionSize(o, 'block_size', DEFAULT_BLOCK);
  if (blockSize < MIN_CREATE_BLOCK || blockSize > MAX_BLOCK || (blockSize & (blockSize - 1)) !== 0) {
    throw invalid(`block_size ${blockSize} must be a power of two from 512K to 256M (Hyper-V uses 512K or 2M)`, path);
  }

  // Size and geometry, by compatibility target (see vhd-geometry.ts for why they differ).
  let bytes = alignUp(ctx.virtualSize, SECTOR);
  let geometry: Geometry;
  let creator: { app: string; version: number } = CREATORS.win;
  if (parent instanceof VhdImage) {
    if (bytes !== parent.virtualSize) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `a differencing VHD has its parent's size (${parent.virtualSize} bytes), not ${ctx.virtualSize}`, { file: path });
    }
    geometry = { ...parent.footer.geometry };
    if (compat === 'virtualserver') {
      if (chsSectors(geometry) * SECTOR !== bytes) throw invalid(`compat=virtualserver: the parent's geometry does not address its ${bytes} bytes`, path);
      creator = CREATORS.vs;
    }
  } else if (compat === 'virtualserver') {
    // Virtual PC / Virtual Server show the guest only what the geometry addresses, so the
    // size is rounded up to a whole geometry, unless force_size asks for the exact size.
    const r = roundUpToGeometry(bytes / SECTOR);
    if (!r || bytes / SECTOR > MAX_CHS_SECTORS) throw invalid(`compat=virtualserver: ${bytes} bytes is beyond the largest CHS geometry (${MAX_CHS_SECTORS * SECTOR} bytes)`, path);
    if (forceSize && r.sectors * SECTOR !== bytes) {
      throw invalid(`compat=virtualserver with force_size: ${bytes} bytes is not a whole CHS geometry (nearest ${r.sectors * SECTOR}); Virtual Server would see less`, path);
    }
    bytes = r.sectors * SECTOR;
    geometry = r.geometry;
    creator = CREATORS.vs;
  } else {
    if (compat === 'azure') {
      const r = alignUp(bytes, MiB);
      if (forceSize && r !== bytes) throw invalid(`compat=azure with force_size: ${bytes} bytes is not a whole number of MiB, which Azure requires`, path);
      bytes = r;
    }
    geometry = geometryForSectors(bytes / SECTOR);
  }
  if (subformat !== 'fixed' && bytes > MAX_DYNAMIC_SIZE) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `a ${subformat} VHD is at most 2040 GiB; ${bytes} bytes asked`, { file: path });
  }
  if (bytes > Number.MAX_SAFE_INTEGER - 2 * MiB) throw new PolyvisorError('ERR_UNSUPPORTED', `size ${bytes} is too large`, { file: path });

  const now = Date.now();
  const footer: Footer = {
    features: FEATURES_RESERVED,
    version: VERSION_1_0,
    dataOffset: subformat === 'fixed' ? null : FOOTER_SIZE,
    timestamp: toVhdTime(now),
    creatorApp: creator.app,
    creatorVersion: creator.version,
    creatorHostOs: 'Wi2k',
    originalSize: bytes,
    currentSize: bytes,
    geometry,
    diskType: subformat === 'fixed' ? DISK_FIXED : subformat === 'dynamic' ? DISK_DYNAMIC : DISK_DIFFERENCING,
    checksum: 0,
    uuid: Buffer.from(crypto().randomUUID().replace(/-/g, ''), 'hex'),
    savedState: false,
  };
  const footerBuf = buildFooter(footer);
  footer.checksum = footerBuf.readUInt32BE(64);
  const base = { readOnly: false, footer, footerBuf, virtualSize: bytes, sizeFrom: creator === CREATORS.vs ? ('chs' as const) : ('current-size' as const), footerSource: 'end of file', notes: [] as string[], footerCopyOk: true };

  // Gather everything that can fail before creating the file.
  const locatorData: { code: string; data: Buffer }[] = [];
  let parentName = '';
  let parentTimestamp = 0;
  let locatorNames: LocatorName[] = [];
  if (parent instanceof VhdImage) {
    const abs = resolve(parent.path);
    const rel = windowsRelative(dirname(resolve(path)), abs);
    locatorData.push({ code: 'W2ku', data: encodeUtf16(abs, 'le') }, { code: 'W2ru', data: encodeUtf16(rel, 'le') });
    locatorNames = [{ platform: 'W2ku', name: abs }, { platform: 'W2ru', name: rel.replace(/\\/g, '/') }];
    parentName = basename(abs);
    // "Parent Time Stamp": the parent's modification time, as Windows records it.
    parentTimestamp = toVhdTime((await stat(abs)).mtimeMs);
  }

  const file = await ImageFile.create(path, ctx.cache);
  try {
    if (subformat === 'fixed') {
      // A fixed VHD is the disk then the footer; the data starts as a hole.
      await file.truncate(bytes);
      await file.writeAt(footerBuf, bytes);
      return new VhdImage({ ...base, file, subformat, layout: null, bat: new Uint32Array(0), nextFree: bytes, locatorNames });
    }
    // Dynamic layout: footer copy | dynamic header | locator data | BAT | blocks... | footer
    const entries = Math.max(1, Math.ceil(bytes / blockSize));
    let pos = FOOTER_SIZE + DYN_HEADER_SIZE;
    const locators: ParentLocator[] = [];
    for (const l of locatorData) {
      // "Platform Data Space": the spec says sectors, but Windows (and every tool made to
      // interoperate with it) writes the reserved size in bytes; we do as Windows does.
      const space = alignUp(Math.max(1, l.data.length), SECTOR);
      locators.push({ platformCode: l.code, dataSpace: space, dataLength: l.data.length, dataOffset: pos });
      pos += space;
    }
    const tableOffset = pos;
    const batBytes = alignUp(entries * 4, SECTOR);
    const nextFree = tableOffset + batBytes;
    const header: DynamicHeader = {
      tableOffset,
      version: VERSION_1_0,
      maxTableEntries: entries,
      blockSize,
      parentUuid: parent instanceof VhdImage ? Buffer.from(parent.footer.uuid) : Buffer.alloc(16),
      parentTimestamp,
      parentName,
      locators,
    };
    const meta = Buffer.alloc(nextFree + FOOTER_SIZE);
    footerBuf.copy(meta, 0);
    buildDynamicHeader(header).copy(meta, FOOTER_SIZE);
    locatorData.forEach((l, i) => l.data.copy(meta, locators[i]!.dataOffset));
    meta.fill(0xff, tableOffset, tableOffset + batBytes);
    footerBuf.copy(meta, nextFree);
    await file.writeAt(meta, 0);
    const regions: Region[] = [
      { start: 0, end: FOOTER_SIZE, name: 'footer copy' },
      { start: FOOTER_SIZE, end: FOOTER_SIZE + DYN_HEADER_SIZE, name: 'dynamic disk header' },
      ...locators.map((l, i) => ({ start: l.dataOffset, end: l.dataOffset + l.dataLength, name: `parent locator ${i} (${l.platformCode})` })),
      { start: tableOffset, end: tableOffset + entries * 4, name: 'BAT' },
    ];
    const bitmapSize = alignUp(Math.ceil(blockSize / SECTOR / 8), SECTOR);
    const layout: Layout = { headerOffset: FOOTER_SIZE, header, blockSize, bitmapSize, sectorsPerBlock: blockSize / SECTOR, entries: Math.ceil(bytes / blockSize), regions };
    const bat = new Uint32Array(layout.entries).fill(UNALLOCATED);
    const image = new VhdImage({ ...base, file, subformat, layout, bat, nextFree, locatorNames });
    if (parent instanceof VhdImage && ctx.backing) {
      image.backing = parent;
      image.backingRef = { name: ctx.backing.name, format: 'vhd', resolved: parent.path };
    }
    return image;
  } catch (e) {
    await file.close();
    throw e;
  }
}

// ---- the format table entry -------------------------------------------------------------

function hasCookie(b: Uint8Array, at: number): boolean {
  if (at < 0 || at + 8 > b.length) return false;
  for (let i = 0; i < 8; i++) if (b[at + i] !== FOOTER_COOKIE[i]) return false;
  return true;
}

export const vhd: DiskFormat = {
  name: 'vhd',
  aliases: ['vpc'],
  description: 'Microsoft Virtual Hard Disk (VHD): fixed, dynamic and differencing',
  usedBy: 'Hyper-V (Gen 1), Virtual Server 2005, Virtual PC, XenServer/XCP-ng, Azure',
  capabilities: { read: true, write: true, backing: true, compression: false, zeroInit: true, check: true },
  createOptions: [
    { name: 'subformat', type: 'enum', values: ['dynamic', 'fixed'], default: 'dynamic', description: 'dynamic: grows as written; fixed: the disk then a footer (created sparse)' },
    { name: 'block_size', type: 'size', default: '2M', description: 'dynamic block size, a power of two from 512K to 256M (Hyper-V uses 512K or 2M)' },
    { name: 'force_size', type: 'bool', default: 'off', description: 'keep the exact size; refuse when the compat target needs rounding (CHS geometry, whole MiB)' },
    {
      name: 'compat',
      type: 'enum',
      values: ['hyperv', 'virtualserver', 'azure'],
      default: 'hyperv',
      description: 'hyperv: exact size, creator "win "; virtualserver: size rounded up to a CHS geometry, creator "vs  "; azure: fixed, size rounded up to 1 MiB',
    },
  ],

  probe(head: Uint8Array, tail: Uint8Array): number {
    // The footer ends every VHD; dynamic ones also start with its copy. A fixed VHD is raw
    // data plus a footer, so finding the footer must outbid raw.
    if (hasCookie(tail, tail.length - FOOTER_SIZE) || hasCookie(head, 0)) return 100;
    if (hasCookie(tail, tail.length - 511)) return 90; // 511-byte footer of old Virtual PC
    return 0;
  },

  open(ctx: OpenContext): Promise<BlockImage> {
    return openVhd(ctx);
  },

  create(ctx: CreateContext): Promise<BlockImage> {
    return createVhd(ctx);
  },
};
