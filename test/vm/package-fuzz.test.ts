/**
 * Mutation fuzzing of the package readers (OVA, XVA) and the tar index under them. A small VM
 * is packaged by Polyvisor; each mutant (bytes flipped in tar headers, in the descriptor or in
 * disk data; the file cut short or padded) is opened and every disk read in full. Every
 * outcome must be the original content, or a PolyvisorError naming the package: a flipped
 * data byte must be caught by the package's checksums, never read as wrong data.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openImage } from '../../src/disk/chain.js';
import { PolyvisorError } from '../../src/errors.js';
import type { VmSource } from '../../src/vm/codec.js';
import { findPackage } from '../../src/vm/registry.js';
import { emptySpec } from '../../src/vm/spec.js';
import { openVmSource } from '../../src/vm/source.js';
import { imageDigest, qemuImg, qemuIo, tempDir, rng } from '../helpers.js';

const ITER = Number(process.env.POLYVISOR_FUZZ_ITER ?? 60);


/** Offsets of every tar header block, found by walking the sizes (the archive is ours and valid). */
function headerOffsets(tar: Buffer): number[] {
  const out: number[] = [];
  let pos = 0;
  while (pos + 512 <= tar.length && tar[pos] !== 0) {
    out.push(pos);
    const size = parseInt(tar.toString('latin1', pos + 124, pos + 136).replace(/\0.*$/, '').trim() || '0', 8);
    pos += 512 + Math.ceil(size / 512) * 512;
  }
  return out;
}

function mutate(orig: Buffer, headers: number[], seed: number): Buffer {
  const r = rng(seed);
  const kind = r(6);
  if (kind === 4) return orig.subarray(0, r(orig.length));
  if (kind === 5) return Buffer.concat([orig, Buffer.alloc(1 + r(2048), r(256))]);
  const b = Buffer.from(orig);
  const n = 1 + r(3);
  for (let i = 0; i < n; i++) {
    // mostly tar headers and the member right after the first header (the descriptor)
    const at = kind <= 1 ? headers[r(headers.length)]! + r(512) : kind === 2 ? 512 + r(4096) : r(b.length);
    if (at < b.length) b[at] ^= 1 << r(8);
  }
  return b;
}

async function makeSource(dir: string): Promise<VmSource> {
  const disk = join(dir, 'disk.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', disk, '3M');
  await qemuIo(disk, 'qcow2', 'write -P 0x6b 0 1M', 'write -P 0x6c 2M 64k');
  const spec = emptySpec('fuzzvm');
  spec.disks = [{ device: 'disk', bus: 'scsi', file: 'disk.qcow2', format: 'qcow2', capacity: 3 << 20 }];
  spec.nics = [{ model: 'e1000', mac: '00:50:56:00:00:01' }];
  return { path: dir, kind: 'test', spec, disks: [{ index: 0, label: disk, open: () => openImage(disk) }], notes: [], close: async () => {} };
}

for (const name of ['ova', 'xva']) {
  test(`fuzz: ${ITER} mutants of a ${name} package`, { timeout: ITER * 20_000 }, async (t) => {
    const dir = await tempDir(t);
    const src = await makeSource(dir);
    const pkgPath = join(dir, `vm.${name}`);
    await findPackage(name)!.write(src, pkgPath, {});
    const orig = await readFile(pkgPath);
    const srcImg = await openImage(join(dir, 'disk.qcow2'));
    const want = await imageDigest(srcImg);
    await srcImg.close();
    const headers = headerOffsets(orig);
    const counts = { same: 0, refused: 0 };
    for (let i = 0; i < ITER; i++) {
      const seed = (name.length * 7919 + i * 104729) >>> 0;
      const file = join(dir, `mutant.${name}`);
      await writeFile(file, mutate(orig, headers, seed));
      try {
        const vm = await openVmSource(file, { kind: name });
        try {
          for (const d of vm.disks) {
            const img = await d.open();
            try {
              assert.equal(await imageDigest(img), want, `${name} seed ${seed}: a disk read back with different data and no error`);
            } finally {
              await img.close();
            }
          }
        } finally {
          await vm.close();
        }
        counts.same++;
      } catch (e) {
        if (e instanceof assert.AssertionError) throw e;
        assert.ok(e instanceof PolyvisorError, `${name} seed ${seed}: ${(e as Error)?.stack ?? e}`);
        assert.ok(e.message.includes(dir), `${name} seed ${seed}: message does not name the package: ${e.message}`);
        counts.refused++;
      }
    }
    t.diagnostic(`${name}: ${counts.same} mutants read back intact, ${counts.refused} refused with a coded error`);
  });
}
