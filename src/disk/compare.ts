/**
 * `disk compare`: are two images' guest contents the same? Walks both chains' allocation
 * and reads only where at least one side has data, so comparing two mostly empty 16 GiB
 * images reads almost nothing. As qemu-img: when sizes differ, the extra part of the larger
 * image must read as zeroes (unless strict), and the first differing offset is reported.
 */
import { mapChain, type MappedExtent } from './chain.js';
import type { BlockImage } from './image.js';
import { isZero } from './io.js';

export interface CompareResult {
  identical: boolean;
  /** first guest offset whose bytes differ */
  mismatchOffset?: number;
  sizeMismatch: boolean;
}

export interface CompareOptions {
  /** sizes must match too */
  strict?: boolean;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
}

const CHUNK = 1 << 20;

export async function compareImages(a: BlockImage, b: BlockImage, opts: CompareOptions = {}): Promise<CompareResult> {
  const sizeMismatch = a.virtualSize !== b.virtualSize;
  if (sizeMismatch && opts.strict) return { identical: false, sizeMismatch, mismatchOffset: Math.min(a.virtualSize, b.virtualSize) };
  const common = Math.min(a.virtualSize, b.virtualSize);
  const total = Math.max(a.virtualSize, b.virtualSize);
  const ea = extentCursor(a);
  const eb = extentCursor(b);
  const ba = Buffer.allocUnsafe(CHUNK);
  const bb = Buffer.allocUnsafe(CHUNK);
  let pos = 0;
  while (pos < common) {
    opts.signal?.throwIfAborted();
    const xa = await ea.at(pos);
    const xb = await eb.at(pos);
    const end = Math.min(xa.offset + xa.length, xb.offset + xb.length, common, pos + CHUNK);
    const n = end - pos;
    if (xa.kind === 'zero' && xb.kind === 'zero') {
      // nothing to read
    } else if (xa.kind === 'zero' || xb.kind === 'zero') {
      const img = xa.kind === 'zero' ? b : a;
      const buf = ba.subarray(0, n);
      await img.read(buf, pos);
      const at = firstNonZero(buf);
      if (at >= 0) return { identical: false, mismatchOffset: pos + at, sizeMismatch };
    } else {
      const x = ba.subarray(0, n);
      const y = bb.subarray(0, n);
      await Promise.all([a.read(x, pos), b.read(y, pos)]);
      if (!x.equals(y)) {
        let i = 0;
        while (x[i] === y[i]) i++;
        return { identical: false, mismatchOffset: pos + i, sizeMismatch };
      }
    }
    pos = end;
    opts.onProgress?.(pos, total);
  }
  // The larger image's tail must read as zeroes.
  const big = a.virtualSize > b.virtualSize ? a : b;
  const eBig = big === a ? ea : eb;
  while (pos < big.virtualSize) {
    opts.signal?.throwIfAborted();
    const x = await eBig.at(pos);
    const end = Math.min(x.offset + x.length, pos + CHUNK);
    if (x.kind !== 'zero') {
      const buf = ba.subarray(0, end - pos);
      await big.read(buf, pos);
      const at = firstNonZero(buf);
      if (at >= 0) return { identical: false, mismatchOffset: pos + at, sizeMismatch };
    }
    pos = end;
    opts.onProgress?.(pos, total);
  }
  return { identical: true, sizeMismatch };
}

function firstNonZero(buf: Buffer): number {
  if (isZero(buf)) return -1;
  for (let i = 0; i < buf.length; i++) if (buf[i] !== 0) return i;
  return -1;
}

/** Steps through an image's mapped extents in order, answering "which extent holds pos?". */
function extentCursor(img: BlockImage) {
  const it = mapChain(img);
  let cur: MappedExtent | null = null;
  return {
    async at(pos: number): Promise<MappedExtent> {
      while (!cur || cur.offset + cur.length <= pos) {
        const r = await it.next();
        if (r.done) throw new Error(`internal: extent map of ${img.path} ends before ${pos}`);
        cur = r.value;
      }
      return cur;
    },
  };
}
