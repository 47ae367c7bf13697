/**
 * JournalImage: a BlockImage that keeps the original bytes of every sector written to it.
 *
 * Adaptation edits a guest through its file systems (which allocate, free and rewrite
 * metadata blocks as they see fit) and through raw areas (the MBR's boot code, the gap after
 * it). Undoing file by file gives back the guest's files but not the same bytes: inode times,
 * block placement and bitmaps differ. Recording below the file systems, at the disk, is what
 * lets `guest undo` give back a disk identical to the source, byte for byte, as long as
 * nothing wrote to it since (checked by the SHA-256 of every recorded run).
 *
 * The unit is the 512-byte sector: the first write to a sector saves what it held before;
 * later writes to it save nothing more.
 */
import { createHash } from 'node:crypto';
import type { BlockImage, Extent } from '../disk/image.js';

const SECTOR = 512;

export interface JournalRun {
  /** byte offset on the disk */
  offset: number;
  length: number;
  /** the bytes before the first write */
  before: Buffer;
}

/**
 * Wraps an open image: reads pass through, each write first saves the sectors it overwrites
 * for the first time. Closing it closes the image.
 */
export class JournalImage implements BlockImage {
  readonly #inner: BlockImage;
  /** sector number -> its bytes before the first write */
  readonly #saved = new Map<number, Buffer>();

  constructor(inner: BlockImage) {
    this.#inner = inner;
  }

  get format(): string {
    return this.#inner.format;
  }
  get path(): string {
    return this.#inner.path;
  }
  get virtualSize(): number {
    return this.#inner.virtualSize;
  }
  get readOnly(): boolean {
    return this.#inner.readOnly;
  }
  get clusterSize(): number {
    return this.#inner.clusterSize;
  }
  get backing(): BlockImage | null {
    return this.#inner.backing;
  }
  get backingRef(): BlockImage['backingRef'] {
    return this.#inner.backingRef;
  }
  /** how many sectors were written at least once */
  get sectorsWritten(): number {
    return this.#saved.size;
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.#inner.blockStatus(offset, length);
  }

  read(buf: Uint8Array, offset: number): Promise<void> {
    return this.#inner.read(buf, offset);
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    const size = this.virtualSize;
    if (buf.length > 0 && Number.isSafeInteger(offset) && offset >= 0 && offset + buf.length <= size) {
      const first = Math.floor(offset / SECTOR);
      const last = Math.floor((offset + buf.length - 1) / SECTOR);
      // read each run of not-yet-saved sectors once
      let s = first;
      while (s <= last) {
        if (this.#saved.has(s)) {
          s++;
          continue;
        }
        let e = s;
        while (e + 1 <= last && !this.#saved.has(e + 1)) e++;
        const start = s * SECTOR;
        const before = Buffer.alloc(Math.min((e + 1) * SECTOR, size) - start);
        await this.#inner.read(before, start);
        for (let k = s; k <= e; k++) this.#saved.set(k, before.subarray((k - s) * SECTOR, Math.min((k - s + 1) * SECTOR, before.length)));
        s = e + 1;
      }
    }
    // an out-of-range write reaches the image, which refuses it with its own message
    return this.#inner.write(buf, offset);
  }

  flush(): Promise<void> {
    return this.#inner.flush();
  }

  close(): Promise<void> {
    return this.#inner.close();
  }

  formatInfo(): Record<string, unknown> {
    return this.#inner.formatInfo();
  }

  /** The written areas as runs of adjacent sectors, in disk order, with their original bytes. */
  runs(): JournalRun[] {
    const sectors = [...this.#saved.keys()].sort((a, b) => a - b);
    const out: JournalRun[] = [];
    for (let i = 0; i < sectors.length; ) {
      let j = i;
      while (j + 1 < sectors.length && sectors[j + 1] === sectors[j]! + 1) j++;
      const before = Buffer.concat(sectors.slice(i, j + 1).map((s) => this.#saved.get(s)!));
      out.push({ offset: sectors[i]! * SECTOR, length: before.length, before });
      i = j + 1;
    }
    return out;
  }

  /** Puts every saved sector back (an in-place adaptation that failed half-way). */
  async rollBack(): Promise<void> {
    for (const r of this.runs()) await this.#inner.write(r.before, r.offset);
    this.#saved.clear();
    await this.#inner.flush();
  }
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}
