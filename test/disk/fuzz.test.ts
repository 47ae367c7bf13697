/**
 * Mutation fuzzing of every image parser, differential against qemu-img.
 *
 * Valid images made by qemu-img are mutated (bytes flipped in metadata, fields set to
 * extreme values, files truncated; VHD checksums recomputed half the time so mutations get
 * past them). Each mutant is opened, mapped and read in full by Polyvisor. Every outcome
 * must be either
 *  - a PolyvisorError with a stable code whose message names the file, or
 *  - data: and when qemu-img also reads the mutant, the same data as qemu-img.
 * Anything else (a TypeError, a RangeError, a hang) fails the test with the seed that
 * reproduces it. POLYVISOR_FUZZ_ITER=N runs more cases per base image.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createHash } from 'node:crypto';
import { mapChain, openImage } from '../../src/disk/chain.js';
import { PolyvisorError } from '../../src/errors.js';
import { HEADER_OFFSETS, HEADER_SIZE, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE, sealChecksum } from '../../src/disk/formats/vhdx-structs.js';
import { imageDigest, qemuImg, qemuIo, tempDir, rng } from '../helpers.js';

const run = promisify(execFile);
const ITER = Number(process.env.POLYVISOR_FUZZ_ITER ?? 100);
const CASE_TIMEOUT_MS = 20_000;
/** Mutants claiming a larger disk are opened and mapped, and read only in their first part. */
const READ_LIMIT = 64 << 20;
const FAILURES = join(process.cwd(), '.cache', 'fuzz-failures');

interface Base {
  name: string;
  make(dir: string): Promise<string>;
  /** where metadata lives, as [start, end) byte ranges, given the file size */
  hot(size: number): Array<[number, number]>;
  /** the mutant's file name ending */
  ext: string;
  /** recomputes the format's checksums, so that half the mutants get past them */
  fix?: (buf: Buffer) => void;
}

const PATTERN = ['write -P 0x11 0 64k', 'write -P 0x22 300k 700k', 'write -P 0x33 2M 4k', 'write -z 320k 64k', 'write -P 0x44 4032k 64k'];

const BASES: Base[] = [
  {
    name: 'qcow2-v3-4k',
    async make(dir) {
      const f = join(dir, 'base.qcow2');
      await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', f, '4M');
      await qemuIo(f, 'qcow2', ...PATTERN);
      return f;
    },
    hot: () => [[0, 32 << 10]],
    ext: 'qcow2',
  },
  {
    name: 'qcow2-compressed-backing',
    async make(dir) {
      const raw = join(dir, 'src.raw');
      await qemuImg('create', '-q', '-f', 'raw', raw, '4M');
      await qemuIo(raw, 'raw', ...PATTERN);
      await qemuImg('convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=16k', raw, join(dir, 'parent.qcow2'));
      const f = join(dir, 'base.qcow2');
      await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=16k,compat=0.10', '-b', 'parent.qcow2', '-F', 'qcow2', f);
      await qemuIo(f, 'qcow2', 'write -P 0x55 16k 40k');
      return f;
    },
    hot: () => [[0, 96 << 10]],
    ext: 'qcow2',
  },
  {
    name: 'vhd-dynamic',
    ext: 'vhd',
    fix: fixVhdChecksums,
    async make(dir) {
      const f = join(dir, 'base.vhd');
      await qemuImg('create', '-q', '-f', 'vpc', '-o', 'subformat=dynamic', f, '4M');
      await qemuIo(f, 'vpc', ...PATTERN);
      return f;
    },
    hot: (size) => [
      [0, 3 << 10],
      [size - 512, size],
    ],
  },
  {
    name: 'vhd-fixed',
    ext: 'vhd',
    fix: fixVhdChecksums,
    async make(dir) {
      const f = join(dir, 'base.vhd');
      await qemuImg('create', '-q', '-f', 'vpc', '-o', 'subformat=fixed,force_size=on', f, '4M');
      await qemuIo(f, 'vpc', ...PATTERN);
      return f;
    },
    hot: (size) => [[size - 512, size]],
  },
  {
    name: 'vhdx-dynamic-1m',
    ext: 'vhdx',
    async make(dir) {
      const f = join(dir, 'base.vhdx');
      await qemuImg('create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', f, '4M');
      await qemuIo(f, 'vhdx', ...PATTERN);
      return f;
    },
    // headers, region tables, then the log, BAT and metadata (qemu puts them in the first 3 MiB or so)
    hot: (size) => [
      [64 << 10, 320 << 10],
      [1 << 20, Math.min(size, 4 << 20)],
    ],
    fix: fixVhdxChecksums,
  },
  {
    name: 'vmdk-monolithicSparse',
    ext: 'vmdk',
    async make(dir) {
      const f = join(dir, 'base.vmdk');
      await qemuImg('create', '-q', '-f', 'vmdk', f, '4M');
      await qemuIo(f, 'vmdk', ...PATTERN);
      return f;
    },
    // header, embedded descriptor, grain directories and tables
    hot: () => [[0, 96 << 10]],
  },
  {
    name: 'vmdk-streamOptimized',
    ext: 'vmdk',
    async make(dir) {
      const raw = join(dir, 'src.raw');
      await qemuImg('create', '-q', '-f', 'raw', raw, '4M');
      await qemuIo(raw, 'raw', ...PATTERN);
      const f = join(dir, 'base.vmdk');
      await qemuImg('convert', '-q', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, f);
      return f;
    },
    // header and descriptor, the grain markers, and the tables, footer and end-of-stream at the end
    hot: (size) => [
      [0, 64 << 10],
      [64 << 10, size],
      [Math.max(0, size - 8192), size],
    ],
  },
  {
    name: 'vmdk-descriptor-flat',
    ext: 'vmdk',
    async make(dir) {
      const f = join(dir, 'base.vmdk');
      await qemuImg('create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', f, '4M');
      await qemuIo(f, 'vmdk', ...PATTERN);
      return f; // the text descriptor; base-flat.vmdk beside it holds the data
    },
    hot: (size) => [[0, size]],
  },
  {
    name: 'vdi-dynamic',
    ext: 'vdi',
    async make(dir) {
      const f = join(dir, 'base.vdi');
      await qemuImg('create', '-q', '-f', 'vdi', f, '4M');
      await qemuIo(f, 'vdi', ...PATTERN);
      return f;
    },
    // pre-header and header, then the block map
    hot: () => [
      [0, 0x200],
      [0x200, 0x200 + 64],
    ],
  },
];

/** Re-seals the CRC-32C of both VHDX headers and both region tables (MS-VHDX 2.2.2, 2.2.3). */
function fixVhdxChecksums(buf: Buffer): void {
  for (const at of [...HEADER_OFFSETS, ...REGION_TABLE_OFFSETS]) {
    const len = HEADER_OFFSETS.includes(at as (typeof HEADER_OFFSETS)[number]) ? HEADER_SIZE : REGION_TABLE_SIZE;
    if (at + len <= buf.length) sealChecksum(buf.subarray(at, at + len));
  }
}


const INTERESTING_32 = [0, 1, 0x7f, 0x80, 0xff, 0x200, 0x1000, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];

function mutate(orig: Buffer, base: Base, seed: number): Buffer {
  const r = rng(seed);
  let buf = Buffer.from(orig);
  const hot = base.hot(buf.length);
  const pick = () => {
    const [s, e] = hot[r(hot.length)]!;
    return s + r(Math.max(1, Math.min(e, buf.length) - s));
  };
  const kind = r(10);
  if (kind < 4) {
    const n = 1 + r(4);
    for (let i = 0; i < n; i++) buf[pick()] ^= 1 << r(8);
  } else if (kind < 8) {
    const at = pick() & ~3;
    if (at + 8 <= buf.length) {
      if (r(2)) buf.writeUInt32BE(INTERESTING_32[r(INTERESTING_32.length)]!, at);
      else buf.writeBigUInt64BE(BigInt(INTERESTING_32[r(INTERESTING_32.length)]!) * BigInt(1 + r(1 << 20)), at);
    }
  } else if (kind < 9) {
    buf = buf.subarray(0, r(buf.length));
  } else {
    buf = Buffer.concat([buf, Buffer.alloc(1 + r(4096), r(256))]);
  }
  if (base.fix && r(2) === 0) base.fix(buf);
  return buf;
}

/** Recomputes the VHD footer (and its copy) and dynamic header checksums. */
function fixVhdChecksums(buf: Buffer): void {
  const sum = (s: number, len: number, at: number) => {
    let c = 0;
    for (let i = s; i < s + len; i++) if (i < at || i >= at + 4) c += buf[i]!;
    buf.writeUInt32BE(~c >>> 0, at);
  };
  if (buf.length >= 512 && buf.toString('latin1', buf.length - 512, buf.length - 504) === 'conectix') sum(buf.length - 512, 512, buf.length - 512 + 64);
  if (buf.length >= 512 && buf.toString('latin1', 0, 8) === 'conectix') {
    sum(0, 512, 64);
    if (buf.length >= 512 + 1024 && buf.toString('latin1', 512, 520) === 'cxsparse') sum(512, 1024, 512 + 36);
  }
}

type Outcome = { ok: true; digest: string | null; format: string; size: number } | { ok: false; error: unknown };

async function readWithPolyvisor(file: string): Promise<Outcome> {
  try {
    const img = await openImage(file);
    try {
      let covered = 0;
      let extents = 0;
      for await (const e of mapChain(img)) {
        covered += e.length;
        if (++extents > 1_000_000) throw new Error('extent map does not end');
      }
      assert.equal(covered, img.virtualSize, 'the extent map covers the disk exactly');
      if (img.virtualSize > READ_LIMIT) {
        await img.read(Buffer.alloc(1 << 20), 0);
        return { ok: true, digest: null, format: img.format, size: img.virtualSize };
      }
      return { ok: true, digest: await imageDigest(img), format: img.format, size: img.virtualSize };
    } finally {
      await img.close();
    }
  } catch (error) {
    return { ok: false, error };
  }
}

/**
 * qemu-img reads the mutant as the format Polyvisor detected (qemu's own probe takes a fixed
 * VHD for raw). qemu-img pads a raw output to whole 512-byte sectors: the padding must be zero
 * and is not part of the comparison.
 */
async function readWithQemu(file: string, format: string, size: number, dir: string): Promise<string | null> {
  const out = join(dir, 'qemu-out.raw');
  const qfmt = format === 'vhd' ? 'vpc' : format;
  try {
    await run('qemu-img', ['convert', '-f', qfmt, '-O', 'raw', file, out], { timeout: 20_000 });
    const data = await readFile(out);
    if (data.length < size || data.length - size >= 512 || data.subarray(size).some((b) => b !== 0)) return `qemu-img read ${data.length} bytes`;
    return createHash('sha256').update(data.subarray(0, size)).digest('hex');
  } catch {
    return null;
  } finally {
    await rm(out, { force: true });
  }
}

for (const base of BASES) {
  test(`fuzz: ${ITER} mutants of ${base.name}`, { timeout: ITER * CASE_TIMEOUT_MS }, async (t) => {
    const dir = await tempDir(t);
    const orig = await readFile(await base.make(dir));
    const stats = { errors: new Map<string, number>(), agreed: 0, onlyUs: 0 };
    for (let i = 0; i < ITER; i++) {
      const seed = (base.name.length * 7919 + i * 104729) >>> 0;
      const file = join(dir, `mutant.${base.ext}`);
      await writeFile(file, mutate(orig, base, seed));
      let timer: NodeJS.Timeout | undefined;
      const outcome = await Promise.race([
        readWithPolyvisor(file),
        new Promise<Outcome>((_, rej) => {
          timer = setTimeout(() => rej(new Error(`${base.name} seed ${seed}: no answer within ${CASE_TIMEOUT_MS} ms`)), CASE_TIMEOUT_MS);
        }),
      ]).finally(() => clearTimeout(timer));
      const keep = async () => {
        // the mutant that failed, kept for reproduction (the temporary folder is removed)
        await mkdir(FAILURES, { recursive: true });
        await copyFile(file, join(FAILURES, `${base.name}-${seed}.${base.ext}`));
      };
      if (!outcome.ok) {
        const e = outcome.error;
        if (!(e instanceof PolyvisorError) || !e.message.includes(dir)) await keep();
        assert.ok(e instanceof PolyvisorError, `${base.name} seed ${seed}: not a PolyvisorError: ${(e as Error)?.stack ?? e}`);
        assert.ok(e.message.includes(dir), `${base.name} seed ${seed}: message does not name the file: ${e.message}`);
        stats.errors.set(e.code, (stats.errors.get(e.code) ?? 0) + 1);
        continue;
      }
      if (outcome.digest === null) continue;
      const theirs = await readWithQemu(file, outcome.format, outcome.size, dir);
      if (theirs === null) {
        stats.onlyUs++;
        continue;
      }
      if (outcome.digest !== theirs) await keep();
      assert.equal(outcome.digest, theirs, `${base.name} seed ${seed}: Polyvisor and qemu-img read different data`);
      stats.agreed++;
    }
    t.diagnostic(`${base.name}: ${stats.agreed} read the same as qemu-img, ${stats.onlyUs} read only by Polyvisor, errors ${JSON.stringify(Object.fromEntries(stats.errors))}`);
  });
}
