/**
 * VHDX file layout checks shared by open and check: the fixed file ranges (header section,
 * log, regions), the BAT's blocks inside the file and apart from each other, and the view
 * of the file through a replayed log.
 */
import { PolyvisorError, hex } from '../../errors.js';
import type { ImageFile } from '../io.js';
import type { LogOverlay } from './vhdx-log.js';
import {
  type BatGeometry,
  MiB,
  PAYLOAD_BLOCK_FULLY_PRESENT,
  PAYLOAD_BLOCK_NOT_PRESENT,
  PAYLOAD_BLOCK_PARTIALLY_PRESENT,
  PAYLOAD_BLOCK_UNDEFINED,
  PAYLOAD_BLOCK_UNMAPPED,
  PAYLOAD_BLOCK_ZERO,
  SB_BLOCK_NOT_PRESENT,
  SB_BLOCK_PRESENT,
  SECTOR_BITMAP_BLOCK_SIZE,
  batOffsetMB,
  batState,
  bitmapIndex,
  payloadIndex,
} from './vhdx-structs.js';

/** A file range that blocks must not overlap. */
export interface Region {
  start: number;
  end: number;
  name: string;
}

/**
 * The file as a reader must see it: the bytes on disk with a replayed log laid over them
 * (2.3.3). Every metadata and data read goes through here.
 */
export class FileView {
  constructor(
    readonly file: ImageFile,
    public overlay: LogOverlay | null,
  ) {}

  get path(): string {
    return this.file.path;
  }

  /** The file size, or the size the log says the file has once replayed (LastFileOffset). */
  get size(): number {
    return this.overlay ? Math.max(this.file.size, this.overlay.size) : this.file.size;
  }

  async readInto(buf: Uint8Array, offset: number): Promise<void> {
    await this.file.readInto(buf, offset);
    if (this.overlay) this.overlay.apply(buf, offset);
  }

  async readStructure(offset: number, length: number, structure: string): Promise<Buffer> {
    if (!this.overlay || offset + length <= this.file.size) {
      const b = await this.file.readStructure(offset, length, structure);
      if (this.overlay) this.overlay.apply(b, offset);
      return b;
    }
    if (offset + length > this.size) {
      throw new PolyvisorError('ERR_TRUNCATED', `${length} bytes needed but the file ends at ${hex(this.size)}`, { file: this.path, structure, offset });
    }
    const b = Buffer.alloc(length);
    await this.readInto(b, offset);
    return b;
  }
}

/** Throws ERR_CORRUPT naming both when two of `regions` overlap. */
export function checkRegionsApart(regions: Region[], file: string): void {
  const sorted = [...regions].filter((r) => r.end > r.start).sort((a, b) => a.start - b.start);
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1]!;
    const b = sorted[i]!;
    if (b.start < a.end) {
      throw new PolyvisorError('ERR_CORRUPT', `the ${b.name} (${hex(b.start)}..${hex(b.end)}) overlaps the ${a.name} (${hex(a.start)}..${hex(a.end)})`, { file, structure: b.name, offset: b.start });
    }
  }
}

export type Report = (e: PolyvisorError) => void;

export function throwReport(e: PolyvisorError): never {
  throw e;
}

const PAYLOAD_STATES = new Set([PAYLOAD_BLOCK_NOT_PRESENT, PAYLOAD_BLOCK_UNDEFINED, PAYLOAD_BLOCK_ZERO, PAYLOAD_BLOCK_UNMAPPED, PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT]);

export interface BatCheck {
  /** allocated payload blocks (fully or partially present) */
  payloadAllocated: number;
  /** file ranges of every allocated block, sorted */
  blocks: Array<{ start: number; end: number; entry: number }>;
  /** end of the furthest block */
  end: number;
}

/**
 * 2.5.1: every allocated BAT entry must name a block inside the file that overlaps neither
 * the header section, log, regions nor another block ("BAT entry N"). States must be defined
 * ones; PARTIALLY_PRESENT only in a differencing disk, and only with its chunk's sector
 * bitmap block present. In a disk without a parent, sector bitmap entries are not used and
 * are ignored (qemu 7.2 leaves stray values there, see qemu commit "fix dynamic VHDX BAT
 * corruption"). Reports through `report`: throwing when opening, collecting when checking.
 */
export function validateBat(
  bat: Buffer,
  g: BatGeometry,
  hasParent: boolean,
  virtualSize: number,
  batOffset: number,
  regions: Region[],
  fileSize: number,
  file: string,
  report: Report,
): BatCheck {
  const blocks: Array<{ start: number; end: number; entry: number }> = [];
  let payloadAllocated = 0;
  const ctxOf = (i: number, what: string): { file: string; structure: string; offset: number } => ({ file, structure: `BAT entry ${i} (${what})`, offset: batOffset + i * 8 });
  const placed = (i: number, what: string, start: number, used: number, length: number): boolean => {
    const ctx = ctxOf(i, what);
    if (start < MiB) {
      report(new PolyvisorError('ERR_CORRUPT', `block at ${hex(start)} lies in the header section`, ctx));
      return false;
    }
    if (start >= fileSize) {
      report(new PolyvisorError('ERR_CORRUPT', `block at ${hex(start)} points past the end of the file at ${hex(fileSize)}`, ctx));
      return false;
    }
    if (start + used > fileSize) {
      report(new PolyvisorError('ERR_TRUNCATED', `block at ${hex(start)} ends at ${hex(start + used)}, past the end of the file at ${hex(fileSize)}`, ctx));
      return false;
    }
    blocks.push({ start, end: start + length, entry: i });
    return true;
  };
  const bitmapPresent = new Uint8Array(g.bitmapBlocks);
  if (hasParent) {
    for (let c = 0; c < g.bitmapBlocks; c++) {
      const i = bitmapIndex(g, c);
      const st = batState(bat, i);
      if (st === SB_BLOCK_NOT_PRESENT) continue;
      if (st !== SB_BLOCK_PRESENT) {
        report(new PolyvisorError('ERR_CORRUPT', `state ${st} is not a sector bitmap block state (0 or 6)`, ctxOf(i, `sector bitmap ${c}`)));
        continue;
      }
      if (placed(i, `sector bitmap ${c}`, batOffsetMB(bat, i) * MiB, SECTOR_BITMAP_BLOCK_SIZE, SECTOR_BITMAP_BLOCK_SIZE)) bitmapPresent[c] = 1;
    }
  }
  for (let b = 0; b < g.payloadBlocks; b++) {
    const i = payloadIndex(g, b);
    const st = batState(bat, i);
    if (!PAYLOAD_STATES.has(st)) {
      report(new PolyvisorError('ERR_CORRUPT', `state ${st} is not a payload block state`, ctxOf(i, `payload block ${b}`)));
      continue;
    }
    if (st !== PAYLOAD_BLOCK_FULLY_PRESENT && st !== PAYLOAD_BLOCK_PARTIALLY_PRESENT) continue;
    if (st === PAYLOAD_BLOCK_PARTIALLY_PRESENT) {
      if (!hasParent) {
        report(new PolyvisorError('ERR_CORRUPT', 'PARTIALLY_PRESENT in a disk without a parent', ctxOf(i, `payload block ${b}`)));
        continue;
      }
      const c = Math.floor(b / g.chunkRatio);
      if (!bitmapPresent[c]) {
        report(new PolyvisorError('ERR_CORRUPT', `PARTIALLY_PRESENT but the sector bitmap block of chunk ${c} is not present`, ctxOf(i, `payload block ${b}`)));
        continue;
      }
    }
    const used = Math.min(g.blockSize, virtualSize - b * g.blockSize);
    if (placed(i, `payload block ${b}`, batOffsetMB(bat, i) * MiB, used, g.blockSize)) payloadAllocated++;
  }
  // Overlaps: sort blocks and fixed regions together; neighbours must not intersect.
  blocks.sort((a, b) => a.start - b.start);
  const fixed = [...regions].sort((a, b) => a.start - b.start);
  let named = 0;
  for (let k = 0; k < blocks.length; k++) {
    const cur = blocks[k]!;
    const prev = blocks[k - 1];
    if (prev && cur.start < prev.end) {
      if (++named <= 100) {
        report(new PolyvisorError('ERR_CORRUPT', `block at ${hex(cur.start)} overlaps the block of BAT entry ${prev.entry} at ${hex(prev.start)}`, { file, structure: `BAT entry ${cur.entry}`, offset: batOffset + cur.entry * 8 }));
      }
    }
    for (const r of fixed) {
      if (r.start >= cur.end) break;
      if (cur.start < r.end) {
        report(new PolyvisorError('ERR_CORRUPT', `block at ${hex(cur.start)} overlaps the ${r.name} at ${hex(r.start)}`, { file, structure: `BAT entry ${cur.entry}`, offset: batOffset + cur.entry * 8 }));
        break;
      }
    }
  }
  const end = blocks.reduce((m, x) => Math.max(m, x.end), 0);
  return { payloadAllocated, blocks, end };
}
