/**
 * `npm run bench`: Polyvisor's `disk convert` and `qemu-img convert` side by side, in one
 * run, on the same inputs, to the same file system:
 *  (a) a 2 GiB dense raw image of random bytes;
 *  (b) a 16 GiB qcow2 with 1.6 GiB allocated in 160 runs of 10 MiB;
 * each converted to raw, qcow2, VHD, VHDX, VMDK (monolithicSparse and streamOptimized) and VDI. Every conversion runs as its own process under GNU
 * time, which gives wall time and peak resident memory; outputs are deleted and the page
 * cache is synced between runs.
 *
 * Durability differs by default, so the ratio compares like with like: `qemu-img convert`
 * by default issues no fdatasync once data is written, and neither does Polyvisor with
 * `-t unsafe`; the ratio is qemu-img / Polyvisor -t unsafe (above 1: Polyvisor faster).
 * Polyvisor's default (`-t writeback`: the output is on disk before it is renamed into
 * place) is measured and shown beside it. Writes bench/results.json.
 *
 * Options (environment): BENCH_DIR (default .cache/bench), BENCH_REPEAT (default 3; the
 * median is reported), BENCH_CASES (comma list of a,b), BENCH_OUTPUTS (comma list of the
 * FORMATS keys below).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, statSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { cpus, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('../../bin/polyvisor', import.meta.url));
const DIR = resolve(process.env.BENCH_DIR ?? '.cache/bench');
const REPEAT = Number(process.env.BENCH_REPEAT ?? 3);
const CASES = (process.env.BENCH_CASES ?? 'a,b').split(',');
const OUTPUTS = (process.env.BENCH_OUTPUTS ?? 'raw,qcow2,vhd,vhdx,vmdk,vmdk-stream,vdi').split(',');
const GiB = 1 << 30;
const MiB = 1 << 20;

/** Output formats by Polyvisor's name, with qemu-img's name and options for the same result. */
const FORMATS: Record<string, { qemu: string[]; pv: string[] }> = {
  raw: { qemu: ['-O', 'raw'], pv: ['-O', 'raw'] },
  qcow2: { qemu: ['-O', 'qcow2'], pv: ['-O', 'qcow2'] },
  vhd: { qemu: ['-O', 'vpc', '-o', 'subformat=dynamic,force_size=on'], pv: ['-O', 'vhd', '-o', 'subformat=dynamic'] },
  vhdx: { qemu: ['-O', 'vhdx'], pv: ['-O', 'vhdx'] },
  vmdk: { qemu: ['-O', 'vmdk', '-o', 'subformat=monolithicSparse'], pv: ['-O', 'vmdk', '-o', 'subformat=monolithicSparse'] },
  'vmdk-stream': { qemu: ['-O', 'vmdk', '-o', 'subformat=streamOptimized'], pv: ['-O', 'vmdk', '-o', 'subformat=streamOptimized'] },
  vdi: { qemu: ['-O', 'vdi'], pv: ['-O', 'vdi'] },
};

interface Sample {
  seconds: number;
  peakKiB: number;
}

function timed(cmd: string, args: string[]): Sample {
  execFileSync('sync');
  const r = spawnSync('/usr/bin/time', ['-f', '%e %M', cmd, ...args], { encoding: 'utf8', maxBuffer: 16 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  const last = r.stderr.trim().split('\n').pop()!;
  const [sec, kib] = last.split(' ').map(Number);
  return { seconds: sec!, peakKiB: kib! };
}

function median(xs: Sample[]): Sample {
  const s = [...xs].sort((a, b) => a.seconds - b.seconds);
  return s[Math.floor(s.length / 2)]!;
}

function makeDenseRaw(path: string): void {
  if (existsSync(path) && statSync(path).size === 2 * GiB) return;
  process.stderr.write(`making ${path} (2 GiB of random bytes)...\n`);
  const fd = openSync(path + '.tmp', 'w');
  const buf = Buffer.alloc(16 * MiB);
  for (let i = 0; i < (2 * GiB) / buf.length; i++) {
    randomFillSync(buf);
    writeSync(fd, buf);
  }
  closeSync(fd);
  execFileSync('mv', [path + '.tmp', path]);
}

function makeSparseQcow2(path: string): void {
  if (existsSync(path)) return;
  process.stderr.write(`making ${path} (16 GiB qcow2, 160 runs of 10 MiB)...\n`);
  const tmp = path + '.tmp';
  rmSync(tmp, { force: true });
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', tmp, '16G']);
  // Random-looking data (not a single byte pattern) so no tool can take a zero shortcut:
  // each run is written from a 10 MiB random file with qemu-io's "write -s".
  const chunk = join(DIR, 'run.bin');
  const buf = Buffer.alloc(10 * MiB);
  const cmds: string[] = [];
  randomFillSync(buf);
  writeFileSync(chunk, buf);
  for (let i = 0; i < 160; i++) cmds.push('-c', `write -s ${chunk} ${i * 102 * MiB} ${10 * MiB}`);
  execFileSync('qemu-io', ['-f', 'qcow2', ...cmds, tmp], { stdio: 'ignore' });
  rmSync(chunk);
  execFileSync('mv', [tmp, path]);
}

function main(): void {
  mkdirSync(DIR, { recursive: true });
  if (!existsSync('/usr/bin/time')) throw new Error('GNU time is needed for peak memory: apt-get install time');
  const inputs: Record<string, { path: string; fmt: string; label: string }> = {
    a: { path: join(DIR, 'dense-2g.raw'), fmt: 'raw', label: '(a) 2 GiB dense raw' },
    b: { path: join(DIR, 'sparse-16g.qcow2'), fmt: 'qcow2', label: '(b) 16 GiB qcow2, 1.6 GiB allocated' },
  };
  if (CASES.includes('a')) makeDenseRaw(inputs.a!.path);
  if (CASES.includes('b')) makeSparseQcow2(inputs.b!.path);
  const qemuVersion = execFileSync('qemu-img', ['--version'], { encoding: 'utf8' }).split('\n')[0];
  const rows: Array<Record<string, unknown>> = [];
  const out = join(DIR, 'out.img');
  for (const c of CASES) {
    const input = inputs[c]!;
    for (const o of OUTPUTS) {
      const f = FORMATS[o]!;
      const q: Sample[] = [];
      const p: Sample[] = [];
      const d: Sample[] = [];
      for (let i = 0; i < REPEAT; i++) {
        rmSync(out, { force: true });
        q.push(timed('qemu-img', ['convert', '-f', input.fmt, ...f.qemu, input.path, out]));
        rmSync(out, { force: true });
        p.push(timed(CLI, ['disk', 'convert', '-q', '-t', 'unsafe', '-f', input.fmt, ...f.pv, input.path, out]));
        rmSync(out, { force: true });
        d.push(timed(CLI, ['disk', 'convert', '-q', '-f', input.fmt, ...f.pv, input.path, out]));
        rmSync(out, { force: true });
      }
      const qm = median(q);
      const pm = median(p);
      const dm = median(d);
      const row = {
        input: input.label,
        output: o,
        qemuSeconds: qm.seconds,
        polyvisorSeconds: pm.seconds,
        ratio: +(qm.seconds / pm.seconds).toFixed(2),
        polyvisorDurableSeconds: dm.seconds,
        qemuPeakMiB: +(qm.peakKiB / 1024).toFixed(1),
        polyvisorPeakMiB: +(Math.max(pm.peakKiB, dm.peakKiB) / 1024).toFixed(1),
        qemuRuns: q.map((x) => x.seconds),
        polyvisorRuns: p.map((x) => x.seconds),
      };
      rows.push(row);
      process.stderr.write(`${row.input} -> ${o}: qemu-img ${q.map((x) => x.seconds).join('/')} s, polyvisor -t unsafe ${p.map((x) => x.seconds).join('/')} s, polyvisor durable ${d.map((x) => x.seconds).join('/')} s\n`);
    }
  }
  const machine = `${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, ${(totalmem() / GiB).toFixed(0)} GiB, Node ${process.version}, ${qemuVersion}`;
  console.log(`\nMachine: ${machine}\nRepeats: ${REPEAT} (median)\n`);
  console.log('| input | output | qemu-img s | Polyvisor -t unsafe s | ratio qemu-img / Polyvisor | Polyvisor durable (default) s | qemu-img peak MiB | Polyvisor peak MiB |');
  console.log('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const r of rows) {
    console.log(`| ${r.input} | ${r.output} | ${r.qemuSeconds} | ${r.polyvisorSeconds} | ${r.ratio}x | ${r.polyvisorDurableSeconds} | ${r.qemuPeakMiB} | ${r.polyvisorPeakMiB} |`);
  }
  writeFileSync(new URL('../../bench/results.json', import.meta.url), JSON.stringify({ date: new Date().toISOString(), machine, repeat: REPEAT, rows }, null, 2) + '\n');
}

main();
