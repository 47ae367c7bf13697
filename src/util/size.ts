/**
 * Sizes as qemu-img users write them: a number with an optional K/M/G/T/P/E suffix
 * (binary multiples, case-insensitive, optional "B"/"iB"), or plain bytes.
 */
import { PolyvisorError } from '../errors.js';

const UNITS: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 };

export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([bkmgtpe]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) throw new PolyvisorError('ERR_USAGE', `invalid ${what} "${text}": expected a number with an optional K, M, G or T suffix`);
  const n = Number(m[1]) * UNITS[m[2]!.toLowerCase()]!;
  if (!Number.isFinite(n) || n > Number.MAX_SAFE_INTEGER) throw new PolyvisorError('ERR_USAGE', `${what} "${text}" is too large`);
  if (!Number.isInteger(n)) throw new PolyvisorError('ERR_USAGE', `${what} "${text}" is not a whole number of bytes`);
  return n;
}

/** "2 GiB", "1.5 MiB", "512 B": the way qemu-img info prints sizes. */
export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  if (i === 0) return `${bytes} B`;
  const s = v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  return `${s.replace(/\.?0+$/, '')} ${units[i]}`;
}
