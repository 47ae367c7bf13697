/**
 * `npm run bench:adapt`: Polyvisor's `guest adapt --for kvm` and virt-v2v side by side, in one
 * run, on the same Debian 12 Xen PV guests (./adapt-guests.ts):
 *   (a)           the Xen PV test guest: pygrub-style grub.cfg, no GRUB in the guest, no boot code
 *   (a)+grub-pc   the same guest with Debian's grub-pc installed (GRUB's tools, still no boot code)
 * then each output is booted on QEMU from its own disk (SeaBIOS, virtio disk, TCG), the way
 * a KVM host would start it, and the result is whether the guest's installed system came up
 * (its marker line) or why not. An output that does not boot from its disk is booted once
 * more with its own kernel and initramfs handed to QEMU (-kernel/-initrd), to tell "no boot
 * code" from "the system itself is broken".
 *
 *   virt-v2v:  LIBGUESTFS_BACKEND=direct virt-v2v -i disk DISK -o local -os OUT -of qcow2
 *   Polyvisor: polyvisor guest adapt DISK --for kvm --out OUT/disk.kvm.qcow2
 *
 * Each tool runs as its own process in its own session (setsid), under GNU time. Wall time is
 * from spawn to exit. Peak memory is of the whole process tree: every 200 ms /proc is walked
 * and the resident set sizes (stat field rss) of every process in the tool's session or
 * descended from it are added up (virt-v2v, nbdkit, qemu-img, the libguestfs appliance's
 * qemu-system-x86_64; Polyvisor's node and the host tools it runs); the largest sum is the
 * peak. GNU time's %M (the largest single process) is kept beside it. A virt-v2v failure is a
 * result, not a failure of the bench: its exit status and error line are reported.
 *
 * Options (environment): BENCH_DIR (default .cache/bench), BENCH_CASES (comma list of a,b),
 * BENCH_BOOT=0 (skip the boots), BENCH_TOOL_TIMEOUT (seconds, default 1800).
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { cpus, release, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEBIAN_MARKER, runQemuConsole, type ConsoleRun } from '../test/guests/debian.js';
import { xenPvGrubPcGuest, xenPvGuest, type BenchGuest } from './adapt-guests.js';

const CLI = fileURLToPath(new URL('../../bin/polyvisor', import.meta.url));
const DIR = resolve(process.env.BENCH_DIR ?? '.cache/bench', 'adapt');
const CASES = (process.env.BENCH_CASES ?? 'a,b').split(',');
const BOOT = process.env.BENCH_BOOT !== '0';
const TOOL_TIMEOUT_MS = Number(process.env.BENCH_TOOL_TIMEOUT ?? 1800) * 1000;
const BOOT_TIMEOUT_MS = 8 * 60_000;
const PAGE_KIB = Number(execFileSync('getconf', ['PAGESIZE'], { encoding: 'utf8' }).trim()) / 1024;
const MiB = 1 << 20;

// ---------------------------------------------------------------------------------------------
// peak memory of a process tree

interface ProcInfo {
  pid: number;
  ppid: number;
  session: number;
  comm: string;
  rssKiB: number;
}

/** /proc/<pid>/stat: "pid (comm) state ppid pgrp session ... rss" (proc(5): fields 4, 6, 24). */
function readProcs(): ProcInfo[] {
  const procs: ProcInfo[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue; // ended while we looked
    }
    const close = stat.lastIndexOf(')');
    const rest = stat.slice(close + 2).split(' ');
    procs.push({
      pid: Number(name),
      comm: stat.slice(stat.indexOf('(') + 1, close),
      ppid: Number(rest[1]),
      session: Number(rest[3]),
      rssKiB: Number(rest[21]) * PAGE_KIB,
    });
  }
  return procs;
}

/** The processes of `root`'s tree: its descendants, and whatever else runs in its session. */
function treeOf(root: number, procs: ProcInfo[]): ProcInfo[] {
  const byPid = new Map(procs.map((p) => [p.pid, p]));
  return procs.filter((p) => {
    if (p.session === root) return true;
    // bounded walk up the parents (pid 1 ends it; a cycle cannot occur in /proc but is capped)
    for (let q: ProcInfo | undefined = p, i = 0; q && i < 64; q = byPid.get(q.ppid), i++) if (q.pid === root) return true;
    return false;
  });
}

interface ToolRun {
  command: string;
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  seconds: number;
  /** the largest sum of RSS over the tree, and who made it up then */
  peakTreeMiB: number;
  peakProcesses: string;
  /** GNU time's %M: the largest single process of the tree */
  maxSingleMiB?: number;
  /** every command name seen in the tree */
  seen: string[];
  /** the tool's last error line, when it failed */
  errorLine?: string;
  log: string;
}

function runTool(cmd: string, args: string[], env: NodeJS.ProcessEnv, logFile: string): Promise<ToolRun> {
  const timeFile = `${logFile}.time`;
  return new Promise((resolvePromise) => {
    const t0 = process.hrtime.bigint();
    // detached: its own session (setsid), so the whole tree can be found and ended
    const child = spawn('/usr/bin/time', ['-f', '%e %M', '-o', timeFile, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env, detached: true });
    const root = child.pid!;
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    let peak = 0;
    let peakProcesses = '';
    const seen = new Set<string>();
    const sample = () => {
      const tree = treeOf(root, readProcs());
      const sum = tree.reduce((s, p) => s + p.rssKiB, 0);
      for (const p of tree) seen.add(p.comm);
      if (sum > peak) {
        peak = sum;
        peakProcesses = tree.filter((p) => p.rssKiB > 0).sort((x, y) => y.rssKiB - x.rssKiB).map((p) => `${p.comm} ${Math.round(p.rssKiB / 1024)}`).join(', ');
      }
    };
    const poll = setInterval(sample, 200);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-root, 'SIGKILL');
      } catch {
        // already gone
      }
    }, TOOL_TIMEOUT_MS);
    child.on('close', (code, signal) => {
      clearInterval(poll);
      clearTimeout(timer);
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      writeFileSync(logFile, output);
      let maxSingleMiB: number | undefined;
      try {
        const last = readFileSync(timeFile, 'utf8').trim().split('\n').pop()!;
        const kib = Number(last.split(' ')[1]);
        if (Number.isFinite(kib)) maxSingleMiB = +(kib / 1024).toFixed(1);
      } catch {
        // time wrote nothing: killed
      }
      // GNU time exits with the command's status ("Command exited with non-zero status N")
      const errorLine = code === 0 ? undefined : [...output.matchAll(/^.*(?:error|Error|ERROR)[: ].*$/gm)].map((m) => m[0].trim()).pop() ?? output.trim().split('\n').pop();
      resolvePromise({
        command: [cmd, ...args].join(' '),
        exitCode: code,
        signal,
        timedOut,
        seconds: +seconds.toFixed(1),
        peakTreeMiB: +(peak / 1024).toFixed(1),
        peakProcesses,
        maxSingleMiB,
        seen: [...seen].sort(),
        errorLine,
        log: logFile,
      });
    });
  });
}

// ---------------------------------------------------------------------------------------------
// booting an output

const MARKER_LINE = new RegExp(`${DEBIAN_MARKER} (\\S+) (\\S+)\\r?\\n`);
const ALERT = /ALERT!\s+(\S+) does not exist\.\s+Dropping to a shell!/;
const PANIC = /Kernel panic[^\n]*/;
const NO_BOOT = /No bootable device/;
const GRUB_RESCUE = /grub rescue>/;
const BASE = ['-nographic', '-no-reboot', '-m', '1024', '-nic', 'none'];

interface BootResult {
  boots: boolean;
  outcome: string;
  seconds: number;
  log: string;
}

function qemuImg(args: string[]): string {
  return execFileSync('qemu-img', args, { encoding: 'utf8', maxBuffer: 64 << 20 });
}

/** Whether the MBR has boot code: the first 440 bytes (the code area before the disk signature). */
function hasBootCode(file: string, format: string, dir: string): boolean {
  const mbr = join(dir, 'mbr.bin');
  qemuImg(['dd', '-f', format, '-O', 'raw', 'bs=512', 'count=1', `if=${file}`, `of=${mbr}`]);
  const b = readFileSync(mbr);
  return b.subarray(0, 440).some((x) => x !== 0);
}

function describe(run: ConsoleRun): { boots: boolean; outcome: string } {
  if (run.stop === MARKER_LINE) return { boots: true, outcome: `boots: "${MARKER_LINE.exec(run.output)![0].trim()}"` };
  if (run.stop === ALERT) return { boots: false, outcome: `initramfs: ${ALERT.exec(run.output)![1]} does not exist` };
  if (run.stop === PANIC) return { boots: false, outcome: PANIC.exec(run.output)![0].trim() };
  if (run.stop === NO_BOOT) return { boots: false, outcome: 'SeaBIOS: no bootable device' };
  if (run.stop === GRUB_RESCUE) return { boots: false, outcome: 'GRUB rescue shell' };
  if (run.stop === 'silence') return { boots: false, outcome: 'no boot code: SeaBIOS runs the empty MBR, then silence' };
  return { boots: false, outcome: `${run.stop} after ${run.seconds.toFixed(0)} s` };
}

/** Boots `file` (behind an overlay, never written) from its disk, or with `direct` kernel. */
async function boot(file: string, format: string, dir: string, name: string, direct?: { kernel: string; initrd: string; append: string }): Promise<BootResult> {
  const overlay = join(dir, `${name}.boot.qcow2`);
  await rm(overlay, { force: true });
  qemuImg(['create', '-q', '-f', 'qcow2', '-b', file, '-F', format, overlay]);
  const emptyMbr = !direct && !hasBootCode(file, format, dir);
  const args = [...BASE, ...(direct ? ['-kernel', direct.kernel, '-initrd', direct.initrd, '-append', direct.append] : []), '-drive', `file=${overlay},format=qcow2,if=virtio`];
  const run = await runQemuConsole(args, {
    until: [MARKER_LINE, ALERT, PANIC, NO_BOOT, GRUB_RESCUE],
    timeoutMs: BOOT_TIMEOUT_MS,
    // an empty MBR says nothing more once SeaBIOS jumps into it; a quiet guest (console on
    // the VGA only) may say nothing on serial for minutes, so only the former stops early
    ...(emptyMbr ? { silenceAfter: /Booting from Hard Disk/, silenceMs: 30_000 } : {}),
  });
  const log = join(dir, `${name}.console.log`);
  writeFileSync(log, run.output);
  await rm(overlay, { force: true });
  return { ...describe(run), seconds: +run.seconds.toFixed(1), log };
}

/** The guest's kernel and initramfs as they are on `file` now (read with debugfs from a raw copy). */
function extractBoot(file: string, format: string, dir: string, version: string): { kernel: string; initrd: string } {
  const raw = join(dir, 'extract.raw');
  qemuImg(['convert', '-f', format, '-O', 'raw', file, raw]);
  const kernel = join(dir, 'vmlinuz');
  const initrd = join(dir, 'initrd.img');
  for (const [from, to] of [[`/boot/vmlinuz-${version}`, kernel], [`/boot/initrd.img-${version}`, initrd]] as const) {
    execFileSync('debugfs', ['-R', `dump ${from} ${to}`, `${raw}?offset=${1024 * 1024}`], { stdio: 'ignore' });
    if (!existsSync(to)) throw new Error(`debugfs could not read ${from} from ${file}`);
  }
  execFileSync('rm', ['-f', raw]);
  return { kernel, initrd };
}

// ---------------------------------------------------------------------------------------------

interface ToolResult {
  /** the BENCH_CASES key */
  case?: string;
  guest: string;
  tool: 'virt-v2v' | 'Polyvisor';
  run: ToolRun;
  output?: string;
  writtenMiB?: number;
  bootCode?: boolean;
  fromDisk?: BootResult;
  direct?: BootResult;
}

function actualMiB(file: string): number {
  const info = JSON.parse(qemuImg(['info', '--output=json', file])) as { 'actual-size': number };
  return +(info['actual-size'] / MiB).toFixed(1);
}

async function bootBoth(r: ToolResult, g: BenchGuest, dir: string): Promise<void> {
  if (!r.output || !BOOT) return;
  r.bootCode = hasBootCode(r.output, 'qcow2', dir);
  process.stderr.write(`${g.label} ${r.tool}: booting its output from its disk...\n`);
  r.fromDisk = await boot(r.output, 'qcow2', dir, 'disk');
  process.stderr.write(`  ${r.fromDisk.outcome} (${r.fromDisk.seconds} s)\n`);
  if (r.fromDisk.boots) return;
  process.stderr.write(`${g.label} ${r.tool}: booting its output with its own kernel and initramfs handed to QEMU...\n`);
  try {
    const k = extractBoot(r.output, 'qcow2', dir, g.kernelVersion);
    r.direct = await boot(r.output, 'qcow2', dir, 'direct', { ...k, append: `root=UUID=${g.rootUuid} ro console=ttyS0` });
  } catch (e) {
    r.direct = { boots: false, outcome: `could not extract its kernel: ${(e as Error).message.split('\n')[0]}`, seconds: 0, log: '' };
  }
  process.stderr.write(`  ${r.direct.outcome} (${r.direct.seconds} s)\n`);
}

function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}

async function runV2v(g: BenchGuest, dir: string): Promise<ToolResult> {
  const out = join(dir, 'out');
  await mkdir(out, { recursive: true });
  if (!hasCommand('virt-v2v')) {
    const run: ToolRun = { command: 'virt-v2v', exitCode: null, signal: null, timedOut: false, seconds: 0, peakTreeMiB: 0, peakProcesses: '', seen: [], errorLine: 'virt-v2v is not installed (apt-get install virt-v2v nbdkit)', log: '' };
    return { guest: g.label, tool: 'virt-v2v', run };
  }
  process.stderr.write(`${g.label}: virt-v2v...\n`);
  const run = await runTool('virt-v2v', ['-i', 'disk', g.disk, '-o', 'local', '-os', out, '-of', 'qcow2'], { ...process.env, LIBGUESTFS_BACKEND: 'direct' }, join(dir, 'tool.log'));
  process.stderr.write(`  status ${run.exitCode} after ${run.seconds} s, peak ${run.peakTreeMiB} MiB${run.errorLine ? `: ${run.errorLine}` : ''}\n`);
  // -o local writes <name>-sda (the disk) and <name>.xml (libvirt) into -os
  const disk = (await readdir(out)).find((f) => /-sd[a-z]$/.test(f));
  const r: ToolResult = { guest: g.label, tool: 'virt-v2v', run };
  if (run.exitCode === 0 && disk) {
    r.output = join(out, disk);
    r.writtenMiB = actualMiB(r.output);
  }
  return r;
}

async function runPolyvisor(g: BenchGuest, dir: string): Promise<ToolResult> {
  const out = join(dir, 'disk.kvm.qcow2');
  process.stderr.write(`${g.label}: polyvisor guest adapt...\n`);
  const run = await runTool(CLI, ['guest', 'adapt', g.disk, '--for', 'kvm', '--out', out], process.env, join(dir, 'tool.log'));
  process.stderr.write(`  status ${run.exitCode} after ${run.seconds} s, peak ${run.peakTreeMiB} MiB${run.errorLine ? `: ${run.errorLine}` : ''}\n`);
  const r: ToolResult = { guest: g.label, tool: 'Polyvisor', run };
  if (run.exitCode === 0 && existsSync(out)) {
    r.output = out;
    r.writtenMiB = actualMiB(out); // an overlay over the source: only what adaptation wrote
  }
  return r;
}

function version(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n')[0]!.trim();
  } catch {
    return `${cmd}: not installed`;
  }
}

function cell(b?: BootResult): string {
  if (!b) return '';
  return `${b.boots ? 'yes' : 'no'}: ${b.outcome.replace(/\|/g, '/')}${b.seconds ? ` (${b.seconds} s)` : ''}`;
}

function exitCell(run: ToolRun): string {
  if (run.timedOut) return `killed after ${run.seconds} s`;
  if (run.exitCode === 0) return '0';
  return `${run.exitCode ?? run.signal}: ${(run.errorLine ?? '').replace(/\|/g, '/')}`;
}

async function main(): Promise<void> {
  if (!existsSync('/usr/bin/time')) throw new Error('GNU time is needed: apt-get install time');
  await mkdir(DIR, { recursive: true });
  const guests: Record<string, () => Promise<BenchGuest>> = { a: xenPvGuest, b: xenPvGrubPcGuest };
  const results: ToolResult[] = [];
  for (const c of CASES) {
    const g = await guests[c]!();
    const caseDir = join(DIR, c);
    await rm(caseDir, { recursive: true, force: true });
    // interleaved per guest: both tools under the same conditions of the machine
    for (const [tool, fn] of [['v2v', runV2v], ['polyvisor', runPolyvisor]] as const) {
      const dir = join(caseDir, tool);
      await mkdir(dir, { recursive: true });
      const r = await fn(g, dir);
      r.case = c;
      await bootBoth(r, g, dir);
      results.push(r);
    }
  }
  const machine = {
    cpu: `${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}`,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    node: process.version,
    virtV2v: version('virt-v2v', ['--version']),
    libguestfs: version('guestfish', ['--version']),
    nbdkit: version('nbdkit', ['--version']),
    qemu: version('qemu-system-x86_64', ['--version']),
    applianceKernel: existsSync('/boot') ? readdirSync('/boot').filter((f) => f.startsWith('vmlinuz-')).join(', ') || 'none in /boot' : 'none',
    accel: 'tcg (the guests\' boots and the libguestfs appliance alike)',
  };
  console.log(`\nMachine: ${machine.cpu}, ${machine.memoryGiB} GiB, Linux ${machine.kernel}, Node ${machine.node}`);
  console.log(`Peer: ${machine.virtV2v}, ${machine.libguestfs}, ${machine.nbdkit}; ${machine.qemu}; appliance kernel ${machine.applianceKernel}; TCG\n`);
  console.log('| guest | tool | exit | wall s | peak RSS of the process tree MiB | largest process MiB | output written MiB | boot code in MBR | boots from its disk (SeaBIOS, virtio) | with its kernel handed to QEMU |');
  console.log('| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- | --- |');
  for (const r of results) {
    console.log(`| ${r.guest} | ${r.tool} | ${exitCell(r.run)} | ${r.run.seconds} | ${r.run.peakTreeMiB} | ${r.run.maxSingleMiB ?? ''} | ${r.writtenMiB ?? '(none)'} | ${r.bootCode === undefined ? '' : r.bootCode ? 'yes' : 'no'} | ${r.output ? cell(r.fromDisk) : 'no output'} | ${cell(r.direct)} |`);
  }
  console.log('\n| guest | wall virt-v2v / Polyvisor | peak memory virt-v2v / Polyvisor | boots: virt-v2v | boots: Polyvisor |');
  console.log('| --- | ---: | ---: | --- | --- |');
  for (const c of CASES) {
    const rs = results.filter((r) => r.case === c);
    const v = rs.find((r) => r.tool === 'virt-v2v');
    const p = rs.find((r) => r.tool === 'Polyvisor');
    if (!v || !p) continue;
    const ratio = (x: number, y: number) => (y > 0 && x > 0 ? `${(x / y).toFixed(1)}x` : 'n/a');
    const boots = (r: ToolResult) => (!r.output ? `no (${r.run.exitCode === 0 ? 'no output' : 'failed'})` : r.fromDisk ? (r.fromDisk.boots ? 'yes' : r.direct?.boots ? 'only with -kernel' : 'no') : 'not booted');
    console.log(`| ${v.guest} | ${ratio(v.run.seconds, p.run.seconds)} | ${ratio(v.run.peakTreeMiB, p.run.peakTreeMiB)} | ${boots(v)} | ${boots(p)} |`);
  }
  for (const r of results) console.log(`\n${r.guest} ${r.tool}: processes at peak (MiB): ${r.run.peakProcesses}`);
  writeFileSync(resolve('bench', 'adapt-results.json'), JSON.stringify({ date: new Date().toISOString(), machine, results }, null, 2) + '\n');
}

await main();
