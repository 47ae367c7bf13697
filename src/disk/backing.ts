/** Helpers every format uses for the parts of a read that fall through to the backing chain. */
import { PolyvisorError } from '../errors.js';
import type { BlockImage } from './image.js';

/**
 * Reads `buf.length` bytes at guest `offset` from `backing`; what lies past the backing
 * image's end (a smaller parent) or with no backing at all reads as zeroes.
 */
export async function readBacking(backing: BlockImage | null, buf: Uint8Array, offset: number): Promise<void> {
  if (!backing) {
    buf.fill(0);
    return;
  }
  const inside = Math.max(0, Math.min(buf.length, backing.virtualSize - offset));
  if (inside > 0) await backing.read(buf.subarray(0, inside), offset);
  if (inside < buf.length) buf.fill(0, inside);
}

/** Refuses a guest access outside [0, virtualSize). */
export function checkRange(image: { path: string; virtualSize: number }, offset: number, length: number, op: string): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > image.virtualSize) {
    throw new PolyvisorError('ERR_RANGE', `${op} of ${length} bytes at guest offset ${offset} is outside the ${image.virtualSize}-byte disk`, { file: image.path });
  }
}

/**
 * Writes `buf` at a guest offset that is not aligned to `sector`, for formats that store
 * whole sectors: the partial sectors at either end are read (through the chain), patched
 * and written whole; the aligned middle is written as it is. Small writes are done as one
 * read-modify-write of the whole span.
 */
export async function writeUnaligned(
  image: { read(buf: Uint8Array, offset: number): Promise<void> },
  buf: Uint8Array,
  offset: number,
  sector: number,
  writeAligned: (buf: Uint8Array, offset: number) => Promise<void>,
): Promise<void> {
  const end = offset + buf.length;
  const a = Math.floor(offset / sector) * sector;
  const z = Math.ceil(end / sector) * sector;
  if (z - a <= 64 * 1024) {
    const tmp = Buffer.alloc(z - a);
    await image.read(tmp, a);
    tmp.set(buf, offset - a);
    return writeAligned(tmp, a);
  }
  const midA = Math.ceil(offset / sector) * sector;
  const midZ = Math.floor(end / sector) * sector;
  if (offset !== midA) {
    const head = Buffer.alloc(sector);
    await image.read(head, a);
    head.set(buf.subarray(0, midA - offset), offset - a);
    await writeAligned(head, a);
  }
  if (midZ > midA) await writeAligned(buf.subarray(midA - offset, midZ - offset), midA);
  if (end !== midZ) {
    const tail = Buffer.alloc(sector);
    await image.read(tail, midZ);
    tail.set(buf.subarray(midZ - offset), 0);
    await writeAligned(tail, midZ);
  }
}

const ZEROES = Buffer.alloc(1 << 20);

/** Writes zero bytes over [offset, offset+length) through `image.write`, a MiB at a time. */
export async function writeZeroBytes(image: { write(buf: Uint8Array, offset: number): Promise<void> }, offset: number, length: number): Promise<void> {
  for (let pos = offset; pos < offset + length; pos += ZEROES.length) {
    await image.write(ZEROES.subarray(0, Math.min(ZEROES.length, offset + length - pos)), pos);
  }
}
