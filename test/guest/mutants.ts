/**
 * Test helper: mutation fuzzing of guest structure readers. A base volume (made by the real
 * tools) is held in memory; each mutant changes a few bytes inside the regions that hold the
 * structures under test, and the reader must either succeed or fail with a PolyvisorError:
 * never a raw RangeError, TypeError or a hang. The seed is printed with a failure so that
 * the mutant can be reproduced. POLYVISOR_FUZZ_ITER=N runs N mutants per base (default 100).
 */
import assert from 'node:assert/strict';
import { PolyvisorError } from '../../src/errors.js';
import type { Volume } from '../../src/guest/volume.js';

export const FUZZ_ITER = Number(process.env.POLYVISOR_FUZZ_ITER ?? 100);

/** xorshift32: every mutant is reproducible from the generator's state before it */
export function rng(seed: number): ((n: number) => number) & { state(): number } {
  let x = seed >>> 0 || 0x9e3779b9;
  const next = (n: number) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
  return Object.assign(next, { state: () => x });
}

const CHUNK = 64 * 1024;

/**
 * A writable volume over `base`, copy-on-write in 64 KiB chunks (`base` is never changed, and
 * a mutant of a 64 MiB disk costs only the chunks it touches), bounds-checked like imageVolume.
 */
export function memoryVolume(base: Buffer, name: string): Volume {
  const chunks = new Map<number, Buffer>();
  const check = (o: number, l: number) => {
    if (!Number.isSafeInteger(o) || !Number.isSafeInteger(l) || o < 0 || l < 0 || o + l > base.length) {
      throw new PolyvisorError('ERR_RANGE', `${l} bytes at ${o} lie outside the volume`, { file: name });
    }
  };
  const chunk = (i: number, copy: boolean): Buffer => {
    let c = chunks.get(i);
    if (!c) {
      const view = base.subarray(i * CHUNK, Math.min(base.length, (i + 1) * CHUNK));
      if (!copy) return view;
      c = Buffer.from(view);
      chunks.set(i, c);
    }
    return c;
  };
  return {
    name,
    size: base.length,
    readOnly: false,
    async read(o, l) {
      check(o, l);
      const out = Buffer.alloc(l);
      for (let pos = o; pos < o + l; ) {
        const i = Math.floor(pos / CHUNK);
        const n = Math.min(CHUNK - (pos % CHUNK), o + l - pos);
        chunk(i, false).copy(out, pos - o, pos % CHUNK, (pos % CHUNK) + n);
        pos += n;
      }
      return out;
    },
    async write(o, d) {
      check(o, d.length);
      for (let pos = o; pos < o + d.length; ) {
        const i = Math.floor(pos / CHUNK);
        const n = Math.min(CHUNK - (pos % CHUNK), o + d.length - pos);
        chunk(i, true).set(d.subarray(pos - o, pos - o + n), pos % CHUNK);
        pos += n;
      }
    },
    async flush() {},
  };
}

/**
 * Runs `fn` on `FUZZ_ITER` mutants of `base` (1 to 8 bytes changed within `regions`, each
 * [start, end)), and returns how many were read and how many refused, by error code.
 */
export async function fuzzMutants(base: Buffer, regions: [number, number][], seed: number, fn: (v: Volume) => Promise<void>): Promise<{ read: number; refused: Record<string, number> }> {
  const rnd = rng(seed);
  const out = { read: 0, refused: {} as Record<string, number> };
  for (let i = 0; i < FUZZ_ITER; i++) {
    const mutantSeed = rnd.state();
    const v = memoryVolume(base, 'mutant');
    for (let k = 1 + rnd(8); k > 0; k--) {
      const [start, end] = regions[rnd(regions.length)]!;
      await v.write(start + rnd(end - start), Buffer.of(rnd(4) === 0 ? 0xff : rnd(256)));
    }
    try {
      await fn(v);
      out.read++;
    } catch (e) {
      assert.ok(e instanceof PolyvisorError, `mutant ${i} (state ${mutantSeed}): ${e instanceof Error ? e.stack : String(e)}`);
      out.refused[e.code] = (out.refused[e.code] ?? 0) + 1;
    }
  }
  return out;
}
