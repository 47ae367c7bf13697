/**
 * Hive bins and cells: the allocation layer of a registry hive.
 *
 * Source: Suhanov, "Windows registry file format specification", sections "Hive bin" and
 * "Cell". After the base block come hive bins, each a multiple of 4096 bytes with a 32-byte
 * header ("hbin", its offset relative to the first bin, its size); a bin holds cells, each a
 * signed 32-bit size (negative: allocated, positive: free; a multiple of 8) followed by its
 * data. Every reference in the hive ("cell index") is an offset relative to the first bin.
 *
 * The walk below checks every bin and every cell once and keeps a bitmap of where allocated
 * cells start, so that a reference from a hostile record is accepted only when it lands on an
 * allocated cell, never in the middle of one or in a free cell. Allocation takes the first
 * free cell that fits (split when the rest can stand as a cell of its own) and otherwise
 * appends a bin: past the end of the file when the hive may grow, or into the slack a hive
 * file often has after its last bin when it must keep its size (a hive written back in place
 * on NTFS).
 */
import { PolyvisorError } from '../../errors.js';
import { BASE_BLOCK_SIZE, HBIN_ALIGN } from './regf-base.js';

const HBIN_HEADER = 32;
/** a cell: the 4-byte size and at least 4 bytes of data */
const MIN_CELL = 8;
/** a hive larger than this is refused: cell indexes are 32-bit and one hive is held in memory */
export const MAX_HIVE = 0x7fff0000;

export class CellSpace {
  buf: Buffer;
  binsSize: number;
  readonly file: string;
  /** may the hive file grow past its current length? */
  growable: boolean;
  /** bit n: an allocated cell starts at cell index 8n */
  #starts: Uint8Array;
  /** free cells (cell index, size), in file order */
  #free: { off: number; size: number }[] = [];

  private constructor(buf: Buffer, binsSize: number, file: string, growable: boolean) {
    this.buf = buf;
    this.binsSize = binsSize;
    this.file = file;
    this.growable = growable;
    this.#starts = new Uint8Array(Math.ceil(binsSize / 64) + 1);
  }

  /** Walks every bin and cell of `buf` (the whole hive file), checking each. */
  static scan(buf: Buffer, binsSize: number, file: string, growable: boolean): CellSpace {
    if (buf.length > MAX_HIVE) throw new PolyvisorError('ERR_UNSUPPORTED', `${buf.length} bytes: larger than the ${MAX_HIVE} bytes a hive can address`, { file });
    const s = new CellSpace(buf, binsSize, file, growable);
    let bin = 0;
    // each bin is at least 4096 bytes: this bounds the walk
    for (let n = 0; bin < binsSize && n <= binsSize / HBIN_ALIGN; n++) {
      const at = BASE_BLOCK_SIZE + bin;
      if (buf.toString('latin1', at, at + 4) !== 'hbin') throw new PolyvisorError('ERR_CORRUPT', 'no "hbin" signature where a hive bin should start', { file, structure: 'hive bin', offset: at });
      const recorded = buf.readUInt32LE(at + 4);
      const size = buf.readUInt32LE(at + 8);
      if (recorded !== bin) throw new PolyvisorError('ERR_CORRUPT', `the bin records its offset as 0x${recorded.toString(16)}, but it lies at 0x${bin.toString(16)}`, { file, structure: 'hive bin', offset: at });
      if (size < HBIN_ALIGN || size % HBIN_ALIGN !== 0) throw new PolyvisorError('ERR_CORRUPT', `bin size ${size} is not a positive multiple of 4096`, { file, structure: 'hive bin', offset: at + 8 });
      if (bin + size > binsSize) throw new PolyvisorError('ERR_TRUNCATED', `the bin of ${size} bytes runs past the hive bins data size (${binsSize})`, { file, structure: 'hive bin', offset: at });
      s.#scanBin(bin, size);
      bin += size;
    }
    return s;
  }

  #scanBin(bin: number, size: number): void {
    let off = bin + HBIN_HEADER;
    const end = bin + size;
    while (off < end) {
      const at = BASE_BLOCK_SIZE + off;
      if (off + 4 > end) throw new PolyvisorError('ERR_CORRUPT', 'a cell header crosses the end of its bin', { file: this.file, structure: 'cell', offset: at });
      const raw = this.buf.readInt32LE(at);
      const len = Math.abs(raw);
      if (len < MIN_CELL || len % 8 !== 0) throw new PolyvisorError('ERR_CORRUPT', `cell size ${raw} is not a multiple of 8 of at least 8`, { file: this.file, structure: 'cell', offset: at });
      if (off + len > end) throw new PolyvisorError('ERR_CORRUPT', `the cell of ${len} bytes runs past the end of its bin`, { file: this.file, structure: 'cell', offset: at });
      if (raw < 0) this.#mark(off, true);
      else this.#free.push({ off, size: len });
      off += len;
    }
  }

  #mark(off: number, on: boolean): void {
    const i = off >>> 3;
    if (on) this.#starts[i >>> 3]! |= 1 << (i & 7);
    else this.#starts[i >>> 3]! &= ~(1 << (i & 7));
  }

  #isStart(off: number): boolean {
    const i = off >>> 3;
    return (this.#starts[i >>> 3]! & (1 << (i & 7))) !== 0;
  }

  /** Is `off` a cell index of an allocated cell? */
  valid(off: number): boolean {
    return Number.isInteger(off) && off >= HBIN_HEADER && off < this.binsSize && off % 8 === 0 && this.#isStart(off);
  }

  /** The data of the allocated cell at cell index `off` (a view into the hive: writes go straight in). */
  cell(off: number, structure: string): Buffer {
    if (!this.valid(off)) {
      const why = off >= this.binsSize || off < 0 ? `points past the hive bins (${this.binsSize} bytes)` : 'does not point at an allocated cell';
      throw new PolyvisorError('ERR_CORRUPT', `cell index 0x${off.toString(16)} ${why}`, { file: this.file, structure, offset: BASE_BLOCK_SIZE + off });
    }
    const at = BASE_BLOCK_SIZE + off;
    const len = -this.buf.readInt32LE(at);
    return this.buf.subarray(at + 4, at + len);
  }

  /** Offset in the file of cell index `off`'s data (for messages). */
  fileOffset(off: number): number {
    return BASE_BLOCK_SIZE + off + 4;
  }

  /** A new allocated cell of at least `length` data bytes, zero-filled; returns its cell index. */
  alloc(length: number, what: string): number {
    const need = Math.max(MIN_CELL, Math.ceil((length + 4) / 8) * 8);
    const i = this.#free.findIndex((f) => f.size >= need);
    if (i >= 0) {
      const f = this.#free[i]!;
      const rest = f.size - need;
      const size = rest >= MIN_CELL ? need : f.size;
      if (rest >= MIN_CELL) {
        this.#free[i] = { off: f.off + need, size: rest };
        this.buf.writeInt32LE(rest, BASE_BLOCK_SIZE + f.off + need);
      } else this.#free.splice(i, 1);
      return this.#take(f.off, size);
    }
    return this.#appendBin(need, what);
  }

  #take(off: number, size: number): number {
    const at = BASE_BLOCK_SIZE + off;
    this.buf.writeInt32LE(-size, at);
    this.buf.fill(0, at + 4, at + size);
    this.#mark(off, true);
    return off;
  }

  #appendBin(need: number, what: string): number {
    const size = Math.ceil((need + HBIN_HEADER) / HBIN_ALIGN) * HBIN_ALIGN;
    const bin = this.binsSize;
    const end = BASE_BLOCK_SIZE + bin + size;
    if (end > this.buf.length) {
      if (!this.growable) {
        throw new PolyvisorError('ERR_UNSUPPORTED', `${what}: no free cell of ${need} bytes is left in the hive, and it must keep its size of ${this.buf.length} bytes (it is written back in place)`, { file: this.file });
      }
      if (end > MAX_HIVE) throw new PolyvisorError('ERR_UNSUPPORTED', `${what}: the hive would pass ${MAX_HIVE} bytes`, { file: this.file });
      const grown = Buffer.alloc(end);
      this.buf.copy(grown, 0, 0, Math.min(this.buf.length, BASE_BLOCK_SIZE + bin));
      this.buf = grown;
    }
    const at = BASE_BLOCK_SIZE + bin;
    this.buf.fill(0, at, end);
    this.buf.write('hbin', at, 'latin1');
    this.buf.writeUInt32LE(bin, at + 4);
    this.buf.writeUInt32LE(size, at + 8);
    this.binsSize = bin + size;
    const starts = new Uint8Array(Math.ceil(this.binsSize / 64) + 1);
    starts.set(this.#starts.subarray(0, Math.min(this.#starts.length, starts.length)));
    this.#starts = starts;
    const off = bin + HBIN_HEADER;
    const rest = size - HBIN_HEADER - need;
    if (rest >= MIN_CELL) {
      this.buf.writeInt32LE(rest, BASE_BLOCK_SIZE + off + need);
      this.#free.push({ off: off + need, size: rest });
      return this.#take(off, need);
    }
    return this.#take(off, size - HBIN_HEADER);
  }

  /** Frees an allocated cell (merged with a free cell right after it in the same bin). */
  free(off: number): void {
    if (!this.valid(off)) return;
    const at = BASE_BLOCK_SIZE + off;
    let size = -this.buf.readInt32LE(at);
    this.#mark(off, false);
    const next = this.#free.findIndex((f) => f.off === off + size && this.#sameBin(off, f.off));
    if (next >= 0) {
      size += this.#free[next]!.size;
      this.#free.splice(next, 1);
    }
    this.buf.writeInt32LE(size, at);
    this.#free.push({ off, size });
    this.#free.sort((a, b) => a.off - b.off);
  }

  #sameBin(a: number, b: number): boolean {
    // bins are found by walking their headers: a cell never spans one, so the bin is the last header at or before it
    const binOf = (x: number) => {
      let bin = 0;
      for (let n = 0; n <= this.binsSize / HBIN_ALIGN; n++) {
        const size = this.buf.readUInt32LE(BASE_BLOCK_SIZE + bin + 8);
        if (x < bin + size) return bin;
        bin += size;
      }
      return -1;
    };
    return binOf(a) === binOf(b);
  }

  /** Bytes of free cells, for reports. */
  freeBytes(): number {
    return this.#free.reduce((s, f) => s + f.size, 0);
  }
}
