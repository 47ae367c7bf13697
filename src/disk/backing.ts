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
