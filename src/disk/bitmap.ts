/**
 * Sector bitmaps, as VHD differencing blocks (VHD spec, "Block Bitmap") and VHDX sector
 * bitmap blocks (MS-VHDX 2.5.2) keep them: one bit per sector, set when this layer holds the
 * sector. The two formats number bits in opposite orders, so each names its own.
 */

/** VHD: sector 0 is the top bit of byte 0. VHDX: sector 0 is the lowest bit of byte 0. */
export type BitOrder = 'msb-first' | 'lsb-first';

const mask = (s: number, order: BitOrder) => (order === 'msb-first' ? 0x80 >> (s & 7) : 1 << (s & 7));

export function bit(bm: Uint8Array, s: number, order: BitOrder): boolean {
  return (bm[s >> 3]! & mask(s, order)) !== 0;
}

/** Calls back with the maximal runs [s0, s1) of equal bits between bits `from` and `to`. */
export function bitRuns(bm: Uint8Array, from: number, to: number, order: BitOrder, cb: (s0: number, s1: number, set: boolean) => void): void {
  let runStart = from;
  let cur = bit(bm, from, order);
  let s = from + 1;
  while (s < to) {
    // whole bytes equal to the current run are skipped at once, whatever the bit order
    if ((s & 7) === 0 && s + 8 <= to && bm[s >> 3] === (cur ? 0xff : 0)) {
      s += 8;
      continue;
    }
    const v = bit(bm, s, order);
    if (v !== cur) {
      cb(runStart, s, cur);
      runStart = s;
      cur = v;
    }
    s++;
  }
  cb(runStart, to, cur);
}

/** Sets bits [s0, s1); returns whether any changed. */
export function setBits(bm: Uint8Array, s0: number, s1: number, order: BitOrder): boolean {
  let changed = false;
  let s = s0;
  while (s < s1) {
    if ((s & 7) === 0 && s + 8 <= s1) {
      if (bm[s >> 3] !== 0xff) {
        bm[s >> 3] = 0xff;
        changed = true;
      }
      s += 8;
      continue;
    }
    const m = mask(s, order);
    if ((bm[s >> 3]! & m) === 0) {
      bm[s >> 3] = bm[s >> 3]! | m;
      changed = true;
    }
    s++;
  }
  return changed;
}

/** True when the first `count` bits are all set. */
export function allBitsSet(bm: Uint8Array, count: number, order: BitOrder): boolean {
  const full = count >> 3;
  for (let i = 0; i < full; i++) if (bm[i] !== 0xff) return false;
  for (let s = full * 8; s < count; s++) if (!bit(bm, s, order)) return false;
  return true;
}
