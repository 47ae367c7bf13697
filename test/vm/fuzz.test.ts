/**
 * Mutation fuzzing of every descriptor decoder. Each fixture is mutated (bytes flipped, lines
 * dropped, duplicated or cut, numbers replaced by extremes, the file truncated); every mutant
 * must decode to a spec that passes the model's schema, or fail with a PolyvisorError. What
 * decodes must then encode to every target without anything but a PolyvisorError.
 * POLYVISOR_FUZZ_ITER=N runs more mutants per fixture.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rng } from '../helpers.js';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PolyvisorError } from '../../src/errors.js';
import { CODECS } from '../../src/vm/registry.js';
import { VmSpecSchema } from '../../src/vm/spec.js';

const ITER = Number(process.env.POLYVISOR_FUZZ_ITER ?? 100);
const FIXTURES = join(process.cwd(), 'test', 'vm', 'fixtures');


const EXTREMES = ['0', '-1', '4294967296', '99999999999999999999', '1e308', 'NaN', '', '"', "'", '<', '&amp;', '\u0000', '[', '='];

function mutate(orig: Buffer, seed: number): Buffer {
  const r = rng(seed);
  const kind = r(6);
  if (kind === 0) {
    const b = Buffer.from(orig);
    for (let i = 0, n = 1 + r(8); i < n; i++) b[r(b.length)] ^= 1 << r(8);
    return b;
  }
  if (kind === 1) return orig.subarray(0, r(orig.length));
  const text = orig.toString('latin1');
  const lines = text.split('\n');
  const at = r(lines.length);
  if (kind === 2) lines.splice(at, 1);
  else if (kind === 3) lines.splice(at, 0, lines[r(lines.length)]!);
  else if (kind === 4) lines[at] = lines[at]!.slice(0, r(lines[at]!.length + 1));
  else lines[at] = lines[at]!.replace(/\d+/, EXTREMES[r(EXTREMES.length)]!);
  return Buffer.from(lines.join('\n'), 'latin1');
}

for (const codec of CODECS.filter((c) => c.decode)) {
  test(`fuzz: ${ITER} mutants of each ${codec.name} fixture`, async (t) => {
    const dir = join(FIXTURES, codec.name);
    const names = (await readdir(dir).catch(() => [] as string[])).filter(
      (n) => codec.extensions.some((e) => n.toLowerCase().endsWith(e)) && !n.includes('.out.') && !n.includes('.cross.'),
    );
    const counts = { decoded: 0, refused: 0 };
    for (const name of names) {
      const orig = await readFile(join(dir, name));
      for (let i = 0; i < ITER; i++) {
        const seed = (name.length * 7919 + i * 104729) >>> 0;
        const data = mutate(orig, seed);
        let spec;
        try {
          spec = codec.decode!(data, `${name}#${seed}`).spec;
        } catch (e) {
          assert.ok(e instanceof PolyvisorError, `${codec.name} ${name} seed ${seed}: decode threw ${(e as Error)?.stack ?? e}`);
          assert.ok(e.message.includes(`${name}#${seed}`), `${codec.name} ${name} seed ${seed}: message does not name the file: ${e.message}`);
          counts.refused++;
          continue;
        }
        counts.decoded++;
        assert.ok(VmSpecSchema.safeParse(spec).success, `${codec.name} ${name} seed ${seed}: decoded spec fails the schema`);
        const diskFiles = spec.disks.map((d, j) => (d.file ? { file: `d${j}.img`, format: 'raw', capacity: 1 << 20 } : undefined));
        for (const target of CODECS.filter((c) => c.encode)) {
          try {
            target.encode!({ spec, diskFiles, name: 'fuzz', folder: '/srv/vms' });
          } catch (e) {
            assert.ok(e instanceof PolyvisorError, `${codec.name} ${name} seed ${seed} -> ${target.name}: encode threw ${(e as Error)?.stack ?? e}`);
          }
        }
      }
    }
    t.diagnostic(`${codec.name}: ${names.length} fixtures, ${counts.decoded} mutants decoded, ${counts.refused} refused with a coded error`);
  });
}
