/**
 * `npm run bench` (part 2): how long `polyvisor run` takes to show the guest's first console
 * output, against the bare qemu-system-x86_64 command that boots the same guest, in one run
 * on the same machine. The guest is the test guest (Debian kernel, busybox initramfs) from an
 * xl.cfg with one qcow2 disk; the kernel command line has no `quiet`, so the kernel's first
 * line is the first output. Both run under TCG (KVM does not work on this machine: see
 * src/hosts/qemu/kvm.ts); Polyvisor's default, which first probes whether KVM works, is
 * measured too.
 *
 * For each: time from spawning the command to its first byte on standard output, and to the
 * guest's marker line; Polyvisor's overhead is the difference of the medians. Peak memory is
 * the Polyvisor process's own (VmHWM; QEMU is a separate process in both cases).
 *
 * Polyvisor runs as users run it, through bin/polyvisor. The CLI starts from its bundle with
 * V8's code cache (src/cli/main.cts), which the first run
 * after a build writes: one untimed run fills it first, and the first-run case, with an empty
 * cache folder each time, is measured as well.
 *
 * The guest's first output comes 3 to 4 s after QEMU starts under TCG, and that boot alone
 * varies by several hundred ms from run to run here, more than the overhead being measured. So
 * a second table measures only the part Polyvisor adds, with no guest boot in it: the time
 * from spawning the command to the moment the guest's CPUs are released. For Polyvisor, the
 * `resumed` step of its POLYVISOR_TRACE timeline (QMP `cont` answered); for bare QEMU, started
 * with -S, the time it answers a `cont` sent as soon as its QMP socket greets (see bareReady).
 *
 * Options (environment): BENCH_REPEAT (default 5), BENCH_START_REPEAT (default 15).
 */
import { spawn } from 'node:child_process';
import { createConnection } from 'node:net';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import { buildTestGuest, GUEST_MARKER } from '../test/guests/build.js';

const CLI = fileURLToPath(new URL('../../bin/polyvisor', import.meta.url));
const DIR = resolve(process.env.BENCH_DIR ?? '.cache/bench', 'run');
const REPEAT = Number(process.env.BENCH_REPEAT ?? 5);
const START_REPEAT = Number(process.env.BENCH_START_REPEAT ?? 15);

/**
 * Bare QEMU started paused: ms from spawn until it has answered `cont`, sent the moment its
 * QMP socket greets (with qmp_capabilities before it, as QMP requires). The greeting alone
 * comes too early to compare with: QEMU greets from its monitor thread while the main thread
 * is still setting the machine up, and answers commands only once that is done (about 80 ms
 * later here), which is when a QEMU started without -S would release the CPUs by itself.
 */
function bareReady(args: string[], qmp: string): Promise<number> {
  return new Promise((resolvePromise, reject) => {
    rmSync(qmp, { force: true });
    const t0 = performance.now();
    const child = spawn('qemu-system-x86_64', [...args, '-S', '-qmp', `unix:${qmp},server=on,wait=off`], { stdio: 'ignore' });
    const fail = setTimeout(() => (child.kill('SIGKILL'), reject(new Error('bare QEMU: no answer to cont in 30 s'))), 30_000);
    const attempt = () => {
      const sock = createConnection({ path: qmp });
      let got = '';
      let sent = false;
      sock.on('data', (d: Buffer) => {
        got += d.toString();
        if (!sent && got.includes('\n')) {
          sent = true;
          sock.write('{"execute":"qmp_capabilities"}\n{"execute":"cont"}\n');
        }
        // the greeting, then one "return" per command
        if (sent && (got.match(/"return"/g) ?? []).length >= 2) {
          const ms = performance.now() - t0;
          clearTimeout(fail);
          sock.destroy();
          child.kill('SIGKILL');
          child.once('exit', () => resolvePromise(ms));
        }
      });
      sock.once('error', () => setTimeout(attempt, 1));
    };
    attempt();
  });
}

/** `polyvisor run`: ms from spawn until its trace says the guest's CPUs were released; the VM is then killed. */
function polyvisorResumed(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolvePromise, reject) => {
    const t0 = performance.now();
    const child = spawn(CLI, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...env, POLYVISOR_TRACE: '1' } });
    let err = '';
    let ms: number | undefined;
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      if (ms === undefined && /trace \+[\d.]+ ms resumed/.test(err)) {
        ms = performance.now() - t0;
        // SIGTERM: run kills its VM and removes it, as on Ctrl-C
        child.kill('SIGTERM');
      }
    });
    child.on('exit', () => (ms === undefined ? reject(new Error(`polyvisor run: no "resumed" step: ${err.slice(-500)}`)) : resolvePromise(ms)));
  });
}

interface Sample {
  firstOutputMs: number;
  markerMs: number;
  peakKiB?: number;
}

function peakKiB(pid: number): number | undefined {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Runs a command to its end, timing its first stdout byte and the marker. */
function measure(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Sample> {
  return new Promise((resolvePromise, reject) => {
    const t0 = process.hrtime.bigint();
    const ms = () => Number(process.hrtime.bigint() - t0) / 1e6;
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    let first: number | undefined;
    let marker: number | undefined;
    let out = '';
    let peak: number | undefined;
    const poll = setInterval(() => {
      const p = peakKiB(child.pid!);
      if (p !== undefined) peak = Math.max(peak ?? 0, p);
    }, 20);
    child.stdout.on('data', (d: Buffer) => {
      first ??= ms();
      out += d.toString('latin1');
      if (marker === undefined && out.includes(GUEST_MARKER)) marker = ms();
    });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timeout = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('exit', (code) => {
      clearInterval(poll);
      clearTimeout(timeout);
      if (first === undefined || marker === undefined) return reject(new Error(`${cmd} ${args.join(' ')}: no output or no marker (status ${code}): ${err.slice(-500)}`));
      resolvePromise({ firstOutputMs: first, markerMs: marker, peakKiB: peak });
    });
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function main(): Promise<void> {
  rmSync(DIR, { recursive: true, force: true });
  mkdirSync(DIR, { recursive: true });
  const g = await buildTestGuest();
  copyFileSync(g.kernel, join(DIR, 'vmlinuz'));
  copyFileSync(g.initrd, join(DIR, 'initrd.gz'));
  const disk = join(DIR, 'disk.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '64M']);
  const cmdline = 'console=ttyS0 panic=-1';
  const cfg = join(DIR, 'bench.cfg');
  writeFileSync(cfg, ['name = "bench"', 'type = "hvm"', 'kernel = "vmlinuz"', 'ramdisk = "initrd.gz"', `extra = "${cmdline}"`, 'memory = 256', 'disk = [ "format=qcow2,vdev=xvda,access=rw,target=disk.qcow2" ]', ''].join('\n'));
  // the same machine Polyvisor builds for this spec, started the plain way
  const bare = ['-machine', 'pc', '-accel', 'tcg', '-cpu', 'max', '-smp', '1', '-m', '256M', '-kernel', join(DIR, 'vmlinuz'), '-initrd', join(DIR, 'initrd.gz'), '-append', cmdline,
    '-drive', `if=virtio,format=qcow2,file=${disk},snapshot=on`, '-nic', 'none', '-display', 'none', '-vnc', 'none', '-serial', 'stdio', '-monitor', 'none', '-no-reboot'];
  const cache = join(DIR, 'cache');
  const env = { ...process.env, POLYVISOR_DATA: join(DIR, 'data'), XDG_CACHE_HOME: cache };
  const cases: Array<{ label: string; cmd: string; args: string[]; env?: () => NodeJS.ProcessEnv }> = [
    { label: 'qemu-system-x86_64 (bare)', cmd: 'qemu-system-x86_64', args: bare },
    { label: 'polyvisor run --accel tcg', cmd: CLI, args: ['run', cfg, '--accel', 'tcg'] },
    {
      label: 'polyvisor run --accel tcg, first run after a build (no code cache)',
      cmd: CLI,
      args: ['run', cfg, '--accel', 'tcg'],
      env: () => {
        const empty = join(DIR, `cache-empty-${Math.random().toString(36).slice(2)}`);
        return { ...env, XDG_CACHE_HOME: empty };
      },
    },
    { label: 'polyvisor run (probes KVM first)', cmd: CLI, args: ['run', cfg] },
  ];
  // the first run after a build writes the code cache: not timed
  await measure(CLI, ['run', cfg, '--accel', 'tcg'], env);
  const results: Record<string, Sample[]> = {};
  // interleaved, so that a slow moment of the machine hits every case alike
  for (let i = 0; i < REPEAT; i++) {
    for (const c of cases) (results[c.label] ??= []).push(await measure(c.cmd, c.args, c.env?.() ?? env));
  }
  const rows = cases.map((c) => {
    const s = results[c.label]!;
    return {
      label: c.label,
      firstOutputMs: Math.round(median(s.map((x) => x.firstOutputMs))),
      markerMs: Math.round(median(s.map((x) => x.markerMs))),
      peakMiB: c.cmd === 'qemu-system-x86_64' ? undefined : Math.round(Math.max(...s.map((x) => x.peakKiB ?? 0)) / 1024),
    };
  });
  const base = rows[0]!;
  console.log(`\nrun → first console output, medians of ${REPEAT} (TCG; ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB, ${cpus()[0]?.model ?? ''})\n`);
  console.log('| command | first output | marker | overhead (first output) | peak RSS of Polyvisor |');
  console.log('| --- | --- | --- | --- | --- |');
  for (const r of rows) {
    const over = r === base ? '' : `${r.firstOutputMs - base.firstOutputMs} ms`;
    console.log(`| ${r.label} | ${r.firstOutputMs} ms | ${r.markerMs} ms | ${over} | ${r.peakMiB === undefined ? '' : `${r.peakMiB} MiB`} |`);
  }

  // the part Polyvisor adds, without the guest's boot in the figures
  const qmp = join(DIR, 'bare-qmp.sock');
  const start: Record<string, number[]> = { bare: [], run: [] };
  for (let i = 0; i < START_REPEAT; i++) {
    start.bare!.push(await bareReady(bare, qmp));
    start.run!.push(await polyvisorResumed(['run', cfg, '--accel', 'tcg'], env));
  }
  const bareMs = Math.round(median(start.bare!));
  const runMs = Math.round(median(start.run!));
  // Each pair ran back to back, so its difference is taken in one state of the machine, whose
  // speed drifts by 20% within minutes here: the median of the pairs' differences is the
  // steadier figure of the two.
  const pairedMs = Math.round(median(start.run!.map((ms, i) => ms - start.bare![i]!)));
  console.log(`\nspawn → the guest's CPUs released, medians of ${START_REPEAT} interleaved pairs (no guest boot in these figures)\n`);
  console.log('| command | CPUs released | overhead (difference of medians) | overhead (median of paired differences) |');
  console.log('| --- | --- | --- | --- |');
  console.log(`| qemu-system-x86_64 -S (bare; QMP cont answered) | ${bareMs} ms | | |`);
  console.log(`| polyvisor run --accel tcg (QMP cont answered) | ${runMs} ms | ${runMs - bareMs} ms | ${pairedMs} ms |`);
  writeFileSync(resolve('bench', 'run-results.json'), JSON.stringify({ date: new Date().toISOString(), repeat: REPEAT, rows, samples: results, start: { repeat: START_REPEAT, bareMs, runMs, overheadMs: runMs - bareMs, pairedOverheadMs: pairedMs, samples: start } }, null, 2) + '\n');
}

await main();
