/**
 * VhdxImage: one open VHDX layer (MS-VHDX). Opening and creating live in vhdx-open.ts.
 *
 * Reading maps guest blocks through the BAT (2.5): FULLY_PRESENT blocks are read from the
 * file, PARTIALLY_PRESENT blocks (differencing only) sector by sector from the sector
 * bitmap (2.4), NOT_PRESENT reads through to the parent (zeroes without one), and ZERO,
 * UNMAPPED and UNDEFINED read as zeroes (they hide the parent).
 *
 * Writing is built for sequential convert: the BAT and sector bitmaps live in memory, new
 * blocks are appended at the end of the file (1 MiB aligned, 2.5: "FileOffsetMB"), and
 * the unwritten parts of a new block stay holes that read as zeroes. The BAT and dirty
 * sector bitmaps are written once, at flush.
 *
 * Not crash-safe (first version): updates to the BAT and sector bitmaps of an existing image
 * are made in place rather than through the log (2.3). The file is valid after every flush,
 * and the headers get a new FileWriteGuid and DataWriteGuid before the first change (2.2.2),
 * so children made from the old content detect the change; but a crash between a data write
 * and the next flush may leave the BAT stale.
 */
import { bitRuns, setBits, type BitOrder } from '../bitmap.js';
import { PolyvisorError, hex } from '../../errors.js';
import { checkRange, readBacking, writeUnaligned, writeZeroBytes } from '../backing.js';
import type { BackingRef, BlockImage, CheckResult, Extent } from '../image.js';
import { alignUp } from '../io.js';
import { type FileView, type Region, validateBat } from './vhdx-layout.js';
import {
  type BatGeometry,
  HEADER_OFFSETS,
  HEADER_SIZE,
  type Header,
  MiB,
  PAYLOAD_BLOCK_FULLY_PRESENT,
  PAYLOAD_BLOCK_NOT_PRESENT,
  PAYLOAD_BLOCK_PARTIALLY_PRESENT,
  PAYLOAD_BLOCK_ZERO,
  SB_BLOCK_PRESENT,
  SECTOR_BITMAP_BLOCK_SIZE,
  batOffsetMB,
  batState,
  bitmapIndex,
  buildHeader,
  guidText,
  newGuid,
  parseHeader,
  payloadIndex,
  setBatEntry,
} from './vhdx-structs.js';

/** Bit numbering of this format's sector bitmaps (see bitmap.ts). */
const BIT_ORDER: BitOrder = 'lsb-first';

export type Subformat = 'fixed' | 'dynamic' | 'differencing';
export type LogState = 'clean' | 'replayed-in-memory' | 'replayed';

/** Largest vectored write we issue: bounded buffers and iovecs per system call. */
/** FileOffsetMB is 44 bits; we keep offsets below 2^32 MiB so that they stay exact numbers. */
const MAX_OFFSET_MB = 2 ** 32;

export interface VhdxLayout {
  logOffset: number;
  logLength: number;
  batOffset: number;
  batLength: number;
  metadataOffset: number;
  metadataLength: number;
  /** header section, log, every region: file ranges blocks must not overlap */
  regions: Region[];
}

export interface VhdxState {
  view: FileView;
  readOnly: boolean;
  header: Header;
  /** 0 or 1: which header slot holds the current header */
  headerSlot: number;
  logState: LogState;
  logEntries: number;
  virtualSize: number;
  blockSize: number;
  logicalSectorSize: number;
  physicalSectorSize: number;
  leaveBlocksAllocated: boolean;
  hasParent: boolean;
  virtualDiskId: Buffer;
  locator: Map<string, string> | null;
  geometry: BatGeometry;
  layout: VhdxLayout;
  bat: Buffer;
  nextFree: number;
  /** a freshly created image already has new write GUIDs */
  fresh: boolean;
  notes: string[];
}

/** A range of this layer. */
interface Segment {
  guest: number;
  length: number;
  kind: 'data' | 'zero' | 'unallocated';
  host: number;
}

export class VhdxImage implements BlockImage {
  readonly format = 'vhdx';
  readonly readOnly: boolean;
  readonly virtualSize: number;
  readonly clusterSize: number;
  backing: BlockImage | null = null;
  backingRef: BackingRef | null = null;
  readonly blockSize: number;
  readonly logicalSectorSize: number;
  readonly hasParent: boolean;
  readonly locator: Map<string, string> | null;

  #view: FileView;
  #header: Header;
  #headerSlot: number;
  #logState: LogState;
  #logEntries: number;
  #s: VhdxState;
  #g: BatGeometry;
  #bat: Buffer;
  #batDirtyLo = Infinity;
  #batDirtyHi = -1;
  /** sector bitmap blocks by chunk, loaded on demand */
  #bitmaps = new Map<number, Buffer>();
  #dirtyBitmaps = new Set<number>();
  #nextFree: number;
  #guidsFresh: boolean;
  #guidUpdate: Promise<void> | null = null;
  #dirty = false;
  #closed = false;
  #ones: Buffer;

  constructor(s: VhdxState) {
    this.#s = s;
    this.#view = s.view;
    this.readOnly = s.readOnly;
    this.#header = s.header;
    this.#headerSlot = s.headerSlot;
    this.#logState = s.logState;
    this.#logEntries = s.logEntries;
    this.virtualSize = s.virtualSize;
    this.blockSize = s.blockSize;
    this.clusterSize = s.blockSize;
    this.logicalSectorSize = s.logicalSectorSize;
    this.hasParent = s.hasParent;
    this.locator = s.locator;
    this.#g = s.geometry;
    this.#bat = s.bat;
    this.#nextFree = s.nextFree;
    this.#guidsFresh = s.fresh;
    this.#ones = Buffer.alloc(s.geometry.sectorsPerBlock / 8, 0xff);
  }

  get path(): string {
    return this.#view.path;
  }

  /** The current header's DataWriteGuid: what a child's parent_linkage must name (2.6.2.6). */
  get dataWriteGuid(): Buffer {
    return this.#header.dataWriteGuid;
  }

  get subformat(): Subformat {
    return this.hasParent ? 'differencing' : this.#s.leaveBlocksAllocated ? 'fixed' : 'dynamic';
  }

  // ---- reading ----------------------------------------------------------------------

  /** This layer's map of [offset, offset+length); adjacent pieces merged, data only when contiguous in the file. */
  async #segments(offset: number, length: number): Promise<Segment[]> {
    const out: Segment[] = [];
    const push = (guest: number, len: number, kind: Segment['kind'], host: number): void => {
      const last = out[out.length - 1];
      if (last && last.kind === kind && last.guest + last.length === guest && (kind !== 'data' || last.host + last.length === host)) last.length += len;
      else out.push({ guest, length: len, kind, host });
    };
    const g = this.#g;
    const bs = this.blockSize;
    const lss = this.logicalSectorSize;
    const end = offset + length;
    for (let pos = offset; pos < end; ) {
      const b = Math.floor(pos / bs);
      const inb = pos - b * bs;
      const n = Math.min(bs - inb, end - pos);
      const i = payloadIndex(g, b);
      const st = batState(this.#bat, i);
      if (st === PAYLOAD_BLOCK_FULLY_PRESENT) {
        push(pos, n, 'data', batOffsetMB(this.#bat, i) * MiB + inb);
      } else if (st === PAYLOAD_BLOCK_PARTIALLY_PRESENT) {
        const host = batOffsetMB(this.#bat, i) * MiB;
        const bm = await this.#loadBitmap(Math.floor(b / g.chunkRatio));
        const bit0 = (b % g.chunkRatio) * g.sectorsPerBlock;
        const base = pos - inb;
        bitRuns(bm, bit0 + Math.floor(inb / lss), bit0 + Math.ceil((inb + n) / lss), BIT_ORDER, (s0, s1, set) => {
          const a = Math.max(inb, (s0 - bit0) * lss);
          const z = Math.min(inb + n, (s1 - bit0) * lss);
          push(base + a, z - a, set ? 'data' : 'unallocated', host + a);
        });
      } else if (st === PAYLOAD_BLOCK_NOT_PRESENT) {
        push(pos, n, 'unallocated', 0);
      } else {
        // ZERO, UNMAPPED, UNDEFINED: the block reads as zeroes, whatever the parent holds.
        push(pos, n, 'zero', 0);
      }
      pos += n;
    }
    return out;
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    checkRange(this, offset, length, 'block status');
    const segs = await this.#segments(offset, length);
    return segs.map((s) => (s.kind === 'data' ? { offset: s.guest, length: s.length, kind: 'data', hostOffset: s.host } : { offset: s.guest, length: s.length, kind: s.kind }));
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    if (buf.length === 0) return;
    const segs = await this.#segments(offset, buf.length);
    await Promise.all(
      segs.map((s) => {
        const sub = buf.subarray(s.guest - offset, s.guest - offset + s.length);
        if (s.kind === 'data') return this.#view.readInto(sub, s.host);
        if (s.kind === 'zero') {
          sub.fill(0);
          return Promise.resolve();
        }
        return readBacking(this.backing, sub, s.guest);
      }),
    );
  }

  /** The sector bitmap block of chunk `c` (2.4), read once and cached; zeroes when not present. */
  async #loadBitmap(c: number): Promise<Buffer> {
    const cached = this.#bitmaps.get(c);
    if (cached) return cached;
    const i = bitmapIndex(this.#g, c);
    let buf: Buffer;
    if (batState(this.#bat, i) === SB_BLOCK_PRESENT) {
      buf = Buffer.alloc(SECTOR_BITMAP_BLOCK_SIZE);
      await this.#view.readInto(buf, batOffsetMB(this.#bat, i) * MiB);
    } else {
      buf = Buffer.alloc(SECTOR_BITMAP_BLOCK_SIZE);
    }
    const again = this.#bitmaps.get(c);
    if (again) return again; // loaded (and maybe changed) by a concurrent call meanwhile
    this.#bitmaps.set(c, buf);
    return buf;
  }

  // ---- writing ----------------------------------------------------------------------

  #checkWritable(): void {
    if (this.readOnly) throw new PolyvisorError('ERR_READ_ONLY', 'image is open read-only', { file: this.path });
    if (this.#closed) throw new PolyvisorError('ERR_INTERNAL', 'image is closed', { file: this.path });
  }

  /**
   * 2.2.2: FileWriteGuid "MUST be changed ... before the first modification of the file"
   * after opening it, and DataWriteGuid before the first change of user-visible data. Both
   * change together, in a new header written to the other slot, before our first write.
   */
  #beginWrite(): Promise<void> {
    this.#dirty = true;
    if (this.#guidsFresh) return Promise.resolve();
    if (!this.#guidUpdate) {
      this.#guidUpdate = this.#writeHeader({ fileWriteGuid: newGuid(), dataWriteGuid: newGuid() }).then(() => {
        this.#guidsFresh = true;
      });
    }
    return this.#guidUpdate;
  }

  /**
   * Writes a new current header (2.2.2.1): sequence number + 1, into the slot that does not
   * hold the current one, so that a torn write leaves the old header valid.
   */
  async #writeHeader(change: Partial<Header>): Promise<void> {
    const next: Header = { ...this.#header, ...change, sequenceNumber: this.#header.sequenceNumber + 1n };
    const slot = 1 - this.#headerSlot;
    await this.#view.file.writeAt(buildHeader(next), HEADER_OFFSETS[slot]!);
    await this.#view.file.sync();
    this.#header = next;
    this.#headerSlot = slot;
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'write');
    this.#checkWritable();
    if (buf.length === 0) return;
    await this.#beginWrite();
    const lss = this.logicalSectorSize;
    // A differencing disk marks whole logical sectors as its own: a partial sector is first
    // filled with what the guest sees there now (the parent's data, most likely).
    if (this.hasParent && (offset % lss !== 0 || buf.length % lss !== 0)) {
      await writeUnaligned(this, buf, offset, this.logicalSectorSize, (b, o) => this.#writeBlocks(b, o));
      return;
    }
    await this.#writeBlocks(buf, offset);
  }

  /** Reserves `bytes` (whole MiB) at the end of the file, synchronously: concurrent writes never share space. */
  #allocate(bytes: number, what: string): number {
    const host = this.#nextFree;
    if ((host + bytes) / MiB >= MAX_OFFSET_MB) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `the file would grow past ${MAX_OFFSET_MB} MiB`, { file: this.path, structure: what });
    }
    this.#nextFree = host + bytes;
    return host;
  }

  #setEntry(i: number, state: number, offsetMB: number): void {
    setBatEntry(this.#bat, i, state, offsetMB);
    if (i < this.#batDirtyLo) this.#batDirtyLo = i;
    if (i > this.#batDirtyHi) this.#batDirtyHi = i;
  }

  async #writeBlocks(buf: Uint8Array, offset: number): Promise<void> {
    const g = this.#g;
    const bs = this.blockSize;
    const lss = this.logicalSectorSize;
    const segs: { host: number; data: Uint8Array }[] = [];
    const marks: { b: number; s0: number; s1: number }[] = [];
    const end = offset + buf.length;
    // Pass 1, synchronous: allocate new blocks and plan every write.
    for (let pos = offset; pos < end; ) {
      const b = Math.floor(pos / bs);
      const inb = pos - b * bs;
      const n = Math.min(bs - inb, end - pos);
      const sub = buf.subarray(pos - offset, pos - offset + n);
      const i = payloadIndex(g, b);
      const st = batState(this.#bat, i);
      if (st === PAYLOAD_BLOCK_FULLY_PRESENT) {
        segs.push({ host: batOffsetMB(this.#bat, i) * MiB + inb, data: sub });
      } else if (st === PAYLOAD_BLOCK_PARTIALLY_PRESENT) {
        segs.push({ host: batOffsetMB(this.#bat, i) * MiB + inb, data: sub });
        marks.push({ b, s0: Math.floor(inb / lss), s1: Math.ceil((inb + n) / lss) });
      } else {
        const host = this.#allocate(bs, `payload block ${b}`);
        const blockEnd = Math.min(bs, this.virtualSize - b * bs);
        if (this.hasParent && st === PAYLOAD_BLOCK_NOT_PRESENT && !(inb === 0 && n >= blockEnd)) {
          // Part of a block of a differencing disk: the rest still reads from the parent,
          // so the block is PARTIALLY_PRESENT and its chunk needs a sector bitmap (2.4).
          const c = Math.floor(b / g.chunkRatio);
          const si = bitmapIndex(g, c);
          if (batState(this.#bat, si) !== SB_BLOCK_PRESENT) {
            const sb = this.#allocate(SECTOR_BITMAP_BLOCK_SIZE, `sector bitmap ${c}`);
            this.#setEntry(si, SB_BLOCK_PRESENT, sb / MiB);
            this.#bitmaps.set(c, Buffer.alloc(SECTOR_BITMAP_BLOCK_SIZE));
            this.#dirtyBitmaps.add(c);
          }
          this.#setEntry(i, PAYLOAD_BLOCK_PARTIALLY_PRESENT, host / MiB);
          marks.push({ b, s0: Math.floor(inb / lss), s1: Math.ceil((inb + n) / lss) });
        } else {
          // Without a parent (or over a ZERO/UNMAPPED/UNDEFINED block, which hides it) the
          // unwritten rest of the block reads as zeroes: a hole in the file is just that.
          this.#setEntry(i, PAYLOAD_BLOCK_FULLY_PRESENT, host / MiB);
        }
        segs.push({ host: host + inb, data: sub });
      }
      pos += n;
    }
    // Pass 2: written sectors of partially present blocks get their bitmap bits; a block
    // whose every sector is now here becomes FULLY_PRESENT.
    for (const m of marks) {
      const c = Math.floor(m.b / g.chunkRatio);
      const bm = await this.#loadBitmap(c);
      const bit0 = (m.b % g.chunkRatio) * g.sectorsPerBlock;
      if (setBits(bm, bit0 + m.s0, bit0 + m.s1, BIT_ORDER)) this.#dirtyBitmaps.add(c);
      const i = payloadIndex(g, m.b);
      const byte0 = bit0 / 8;
      if (batState(this.#bat, i) === PAYLOAD_BLOCK_PARTIALLY_PRESENT && bm.subarray(byte0, byte0 + g.sectorsPerBlock / 8).equals(this.#ones)) {
        this.#setEntry(i, PAYLOAD_BLOCK_FULLY_PRESENT, batOffsetMB(this.#bat, i));
      }
    }
    await this.#view.file.writeSegments(segs);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    checkRange(this, offset, length, 'write zeroes');
    this.#checkWritable();
    if (length === 0) return;
    const g = this.#g;
    const bs = this.blockSize;
    const end = offset + length;
    for (let pos = offset; pos < end; ) {
      const b = Math.floor(pos / bs);
      const inb = pos - b * bs;
      const n = Math.min(bs - inb, end - pos);
      const i = payloadIndex(g, b);
      const st = batState(this.#bat, i);
      const allocated = st === PAYLOAD_BLOCK_FULLY_PRESENT || st === PAYLOAD_BLOCK_PARTIALLY_PRESENT;
      const whole = inb === 0 && n >= Math.min(bs, this.virtualSize - b * bs);
      if (allocated) {
        // Stored zeroes: freeing the block would leave its space referenced by nothing.
        await writeZeroBytes(this, pos, n);
      } else if (this.hasParent && st === PAYLOAD_BLOCK_NOT_PRESENT) {
        if (whole) {
          // 2.5.1.1 PAYLOAD_BLOCK_ZERO: reads as zeroes and hides the parent, at no cost.
          await this.#beginWrite();
          this.#setEntry(i, PAYLOAD_BLOCK_ZERO, 0);
        } else {
          await writeZeroBytes(this, pos, n);
        }
      }
      // Otherwise the block already reads as zeroes (no parent, or a ZERO-like state).
      pos += n;
    }
  }

  async flush(): Promise<void> {
    if (this.readOnly || !this.#dirty || this.#closed) return;
    if (this.#guidUpdate) await this.#guidUpdate;
    const file = this.#view.file;
    const writes: Promise<void>[] = [];
    for (const c of this.#dirtyBitmaps) {
      const bm = this.#bitmaps.get(c);
      const si = bitmapIndex(this.#g, c);
      if (bm && batState(this.#bat, si) === SB_BLOCK_PRESENT) writes.push(file.writeAt(bm, batOffsetMB(this.#bat, si) * MiB));
    }
    if (this.#batDirtyHi >= this.#batDirtyLo) {
      const lo = this.#batDirtyLo;
      const hi = this.#batDirtyHi;
      writes.push(file.writeAt(this.#bat.subarray(lo * 8, (hi + 1) * 8), this.#s.layout.batOffset + lo * 8));
    }
    await Promise.all(writes);
    // Every allocated block lies wholly inside the file (qemu checks this), even where its
    // tail was never written: extend the file over the holes.
    if (file.size < this.#nextFree) await file.truncate(this.#nextFree);
    await file.sync();
    this.#dirtyBitmaps.clear();
    this.#batDirtyLo = Infinity;
    this.#batDirtyHi = -1;
    this.#dirty = false;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    try {
      if (!this.readOnly) await this.flush();
    } finally {
      this.#closed = true;
      await this.#view.file.close();
      if (this.backing) await this.backing.close();
    }
  }

  // ---- info and check ---------------------------------------------------------------

  formatInfo(): Record<string, unknown> {
    const s = this.#s;
    let allocated = 0;
    for (let b = 0; b < this.#g.payloadBlocks; b++) {
      const st = batState(this.#bat, payloadIndex(this.#g, b));
      if (st === PAYLOAD_BLOCK_FULLY_PRESENT || st === PAYLOAD_BLOCK_PARTIALLY_PRESENT) allocated++;
    }
    const info: Record<string, unknown> = {
      subformat: this.subformat,
      'block-size': this.blockSize,
      'logical-sector-size': this.logicalSectorSize,
      'physical-sector-size': s.physicalSectorSize,
      'log-size': s.layout.logLength,
      'log-offset': s.layout.logOffset,
      'log-state': this.#logState,
      'has-parent': this.hasParent,
      'leave-blocks-allocated': s.leaveBlocksAllocated,
      'virtual-disk-id': guidText(s.virtualDiskId),
      'data-write-guid': guidText(this.#header.dataWriteGuid),
      'file-write-guid': guidText(this.#header.fileWriteGuid),
      'header-sequence-number': this.#header.sequenceNumber.toString(),
      'chunk-ratio': this.#g.chunkRatio,
      'bat-entries': this.#g.entries,
      'allocated-blocks': allocated,
    };
    if (this.#logState !== 'clean') info['log-entries-replayed'] = this.#logEntries;
    if (this.hasParent && this.locator) {
      info['parent-linkage'] = this.locator.get('parent_linkage') ?? null;
      if (this.locator.has('parent_linkage2')) info['parent-linkage2'] = this.locator.get('parent_linkage2');
      const paths: Record<string, string> = {};
      for (const k of ['relative_path', 'absolute_win32_path', 'volume_path']) {
        const v = this.locator.get(k);
        if (v !== undefined) paths[k] = v;
      }
      info['parent-paths'] = paths;
    }
    if (s.notes.length) info.notes = [...s.notes];
    return info;
  }

  async check(): Promise<CheckResult> {
    if (!this.readOnly && this.#dirty) await this.flush();
    const view = this.#view;
    const s = this.#s;
    const res: CheckResult = { corruptions: 0, leaks: 0, messages: [], imageEndOffset: view.file.size };
    const corrupt = (msg: string): void => {
      res.corruptions++;
      res.messages.push(msg);
    };
    // Both headers: the current one is valid (we opened it); a damaged other copy is noted.
    for (let slot = 0; slot < 2; slot++) {
      const at = HEADER_OFFSETS[slot]!;
      const st = parseHeader(await view.readStructure(at, HEADER_SIZE, `header ${slot + 1}`), { file: this.path, structure: `header ${slot + 1}`, offset: at });
      if (!st.ok) res.messages.push(`header ${slot + 1} at ${hex(at)}: ${st.why === 'bad-checksum' ? 'checksum mismatch' : 'no "head" signature'} (the other header is current)`);
    }
    if (this.#logState === 'replayed-in-memory') {
      res.messages.push(`log: ${this.#logEntries} entries were replayed in memory only; open the image writable to replay them into the file`);
    }
    // The BAT as stored (through the log, if replayed in memory), without stopping at the first problem.
    const g = this.#g;
    let bat: Buffer;
    try {
      bat = await view.readStructure(s.layout.batOffset, g.entries * 8, 'BAT');
    } catch (e) {
      corrupt(e instanceof Error ? e.message : String(e));
      return res;
    }
    const r = validateBat(bat, g, this.hasParent, this.virtualSize, s.layout.batOffset, s.layout.regions, view.size, this.path, (e) => corrupt(e.message));
    res.allocatedClusters = r.payloadAllocated;
    res.totalClusters = g.payloadBlocks;
    // Leaks: whole MiB between blocks, or after the last one, that no BAT entry references.
    // Space before the first block is padding (qemu starts data at 8 MiB), and a fixed disk
    // reserves its space by design (qemu leaves ZERO blocks over preallocated space).
    if (!s.leaveBlocksAllocated && r.blocks.length > 0) {
      let prev = r.blocks[0]!.start;
      const tail = alignUp(view.file.size, MiB);
      for (const blk of [...r.blocks, { start: tail, end: tail, entry: -1 }]) {
        if (blk.start > prev) {
          const units = Math.floor((blk.start - prev) / MiB);
          if (units > 0) {
            res.leaks += units;
            res.messages.push(`leak: ${blk.start - prev} bytes at ${hex(prev)} belong to no block`);
          }
        }
        prev = Math.max(prev, blk.end);
      }
    }
    return res;
  }
}

// ---- sector bitmaps (2.4): bit n of the bitmap is logical sector n, least significant bit first ----



