/**
 * The local QEMU engine: runs each VM as a qemu-system-x86_64 child process, controlled over
 * QMP (./qmp.ts) with its serial console and its VNC server on Unix sockets.
 *
 * Two ways to run a VM:
 * - as a child (the default): every child is tracked, `dispose()` kills them, and a
 *   `process.on('exit')` hook SIGKILLs any still running when Node exits, so no QEMU is left behind;
 * - detached (`detached: true`, what the VM store uses): QEMU runs in a session of its own, its
 *   output in qemu.log in its folder, and outlives this process; a later process takes it over
 *   with `adopt()`, knowing it by the pid in its pidfile (./process.ts checks the pid still is
 *   that QEMU). It is not started with -daemonize, which makes QEMU's start about 75 ms longer
 *   (it forks, and the parent waits for the child to finish initialising) on the path of
 *   every `polyvisor run`; QEMU is ready when its QMP socket greets (#connect).
 * A detached VM has a second QMP socket, `control.sock`: QEMU serves one client per monitor,
 * so the process that started the VM keeps `qmp.sock` for events while short commands from
 * other processes (stop, pause, screenshot) use the other.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { PolyvisorError } from '../../errors.js';
import type { ConversionNote } from '../../vm/codec.js';
import type { DefineInput, DriverCapabilities, HypervisorDriver, StopOptions, StopResult, VmListEntry, VmState } from '../driver.js';
import { buildQemuArgv, type ArgvOptions, QEMU_FORMATS, kvmUsable } from './argv.js';
import { kvmWorks } from './kvm.js';
import { qemuAlive, whenGone } from './process.js';
import { QmpClient } from './qmp.js';
import { trace } from '../../util/trace.js';
import { zlib } from '../../util/builtins.js';

export interface QemuDriverOptions extends ArgvOptions {
  /** where per-VM sockets, logs and variable stores live; default a new folder under the OS temp dir */
  stateDir?: string;
  binary?: string;
  /** how long QEMU gets to open its QMP socket; default 10 s */
  startTimeoutMs?: number;
  /** pass -no-reboot: a guest reboot ends the VM (tests want this) */
  noReboot?: boolean;
  /** QEMU runs in a session of its own and outlives this process (see the module comment) */
  detached?: boolean;
  /** give guests a pvpanic device, so that a panic is reported as GUEST_PANICKED */
  pvpanic?: boolean;
}

export interface QemuPaths {
  dir: string;
  qmpSocket: string;
  serialSocket: string;
  /** the VNC server's Unix socket (VNC_SOCKET in the VM's folder) */
  vncSocket: string;
  serialLog: string;
  pidfile: string;
  uefiVars: string;
  /** the second QMP socket of a detached VM, for commands from other processes */
  controlSocket: string;
  /** a detached QEMU's standard output and error */
  log: string;
}

/** A running QEMU: our child, or a daemon known by its pid. */
interface Proc {
  pid: number | undefined;
  /** resolves when the process has ended */
  exited: Promise<void>;
  kill(): void;
}

interface Vm {
  input: DefineInput;
  paths: QemuPaths;
  state: VmState;
  notes: ConversionNote[];
  proc?: Proc;
  qmp?: QmpClient;
  stderr: string;
}

// every QEMU child of this Node process, whichever driver started it
const children = new Set<ChildProcess>();
let exitHookInstalled = false;
function track(child: ChildProcess): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const c of children) c.kill('SIGKILL');
    });
  }
  children.add(child);
  child.once('exit', () => children.delete(child));
}

/** The name of a VM's VNC socket in its folder: every VM gets a VNC server there, loopback by construction. */
export const VNC_SOCKET = 'vnc.sock';

// a Unix socket path must fit sockaddr_un.sun_path (108 bytes with the NUL on Linux)
const MAX_SOCKET_PATH = 107;

/** The local engine's manifest (the README's driver matrix is generated from it). */
export const QEMU_CAPABILITIES: DriverCapabilities = {
  operations: ['define', 'start', 'stop', 'kill', 'pause', 'resume', 'console', 'screenshot', 'list', 'undefine'],
  firmware: ['bios', 'uefi'],
  // PV and PVH guests run fully virtualised through direct kernel boot
  virtualization: ['hvm', 'pv', 'pvh'],
  diskFormats: [...new Set(Object.keys(QEMU_FORMATS).filter((f) => f !== 'vpc'))],
  accelerators: ['kvm', 'tcg'],
};

export class QemuDriver implements HypervisorDriver {
  readonly name = 'qemu';
  readonly capabilities = QEMU_CAPABILITIES;
  /** one line per start that fell back to TCG, and similar */
  readonly notices: string[] = [];
  #opts: QemuDriverOptions;
  #stateDir: string | undefined;
  /** true when the driver made the state folder itself, so dispose() removes it */
  #ownStateDir = false;
  #vms = new Map<string, Vm>();
  /** stops the pid polls of detached VMs */
  #gone: Array<() => void> = [];

  constructor(opts: QemuDriverOptions = {}) {
    this.#opts = opts;
    this.#stateDir = opts.stateDir;
  }

  async define(input: DefineInput): Promise<void> {
    const name = input.spec.name;
    if (this.#vms.has(name)) throw new PolyvisorError('ERR_EXISTS', `qemu: a VM named ${name} is already defined`);
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(name)) throw new PolyvisorError('ERR_INVALID_OPTION', `qemu: VM name ${JSON.stringify(name)}: use letters, digits, '.', '_' and '-' (at most 64)`);
    if (!this.#stateDir) {
      this.#stateDir = await mkdtemp(join(tmpdir(), 'pv-qemu-'));
      this.#ownStateDir = true;
    }
    const dir = join(this.#stateDir, name);
    const paths: QemuPaths = {
      dir,
      qmpSocket: join(dir, 'qmp.sock'),
      serialSocket: join(dir, 'serial.sock'),
      vncSocket: join(dir, VNC_SOCKET),
      serialLog: join(dir, 'serial.log'),
      pidfile: join(dir, 'qemu.pid'),
      log: join(dir, 'qemu.log'),
      uefiVars: join(dir, 'uefi-vars.fd'),
      controlSocket: join(dir, 'control.sock'),
    };
    if (paths.serialSocket.length > MAX_SOCKET_PATH) throw new PolyvisorError('ERR_INVALID_OPTION', `qemu: state folder ${this.#stateDir} is too deep for a Unix socket path`);
    // build once now so that a spec QEMU cannot run is refused at define time
    const { notes } = buildQemuArgv(input.spec, input.disks, paths, this.#argvOptions());
    await mkdir(dir, { recursive: true });
    this.#vms.set(name, { input, paths, state: 'defined', notes, stderr: '' });
  }

  /** The notes of a define: what the engine does not carry over exactly. */
  notes(name: string): ConversionNote[] {
    return this.#vm(name).notes;
  }

  /** Runtime files of a VM (the serial log is what tests and `verify` read). */
  paths(name: string): QemuPaths {
    return this.#vm(name).paths;
  }

  /** The QMP connection of a running VM, for events and commands not covered by the slots. */
  qmp(name: string): QmpClient {
    const vm = this.#vm(name);
    if (!vm.qmp || vm.qmp.closed) throw new PolyvisorError('ERR_VM_STATE', `qemu: ${name} is not running`);
    return vm.qmp;
  }

  /** The pid of a running VM's QEMU. */
  pid(name: string): number | undefined {
    return this.#vm(name).proc?.pid;
  }

  /**
   * Takes over a detached VM that an earlier process started: `define()` first, then this with
   * the pid from its pidfile. Returns false (and leaves the VM defined, not running) when that
   * QEMU is gone.
   */
  async adopt(name: string, pid: number): Promise<boolean> {
    const vm = this.#vm(name);
    if (vm.proc) throw new PolyvisorError('ERR_VM_STATE', `qemu: ${name} is already running`);
    if (!qemuAlive(pid, vm.paths.qmpSocket)) return false;
    this.#attachDaemon(vm, pid);
    return true;
  }

  /**
   * `paused`: the guest's CPUs wait for resume() (attach a console first, then resume: no
   * output is missed). `whileStarting`: work for the time QEMU spends setting the machine up,
   * between its spawn and its first QMP answer; if it throws, QEMU is killed. `resumeAfter`
   * (with `paused`): the CPUs are released as soon as QEMU takes commands and the promise it
   * returns (called during that time: a console being attached) has settled, `cont` sent
   * behind the QMP negotiation so that both are answered at once; start() returns with the
   * VM running.
   */
  async start(name: string, opts: { paused?: boolean; whileStarting?: () => void | Promise<void>; resumeAfter?: () => Promise<unknown> } = {}): Promise<void> {
    const vm = this.#vm(name);
    if (vm.proc) throw new PolyvisorError('ERR_VM_STATE', `qemu: ${name} is already running`);
    const p = vm.paths;
    // unlink rather than rm: one system call each (rm stats first), on the way to every start
    await Promise.all([p.qmpSocket, p.controlSocket, p.serialSocket, p.vncSocket, p.serialLog, p.pidfile].map((f) => unlinkIfThere(f)));
    // KVM only when a probe guest really runs under it (kvm.ts); otherwise TCG, said once.
    const accel = this.#opts.accel ?? ((await kvmWorks(this.#opts.binary)) ? 'kvm' : 'tcg');
    const detached = !!this.#opts.detached;
    const runtime = { ...p, noReboot: this.#opts.noReboot, pvpanic: this.#opts.pvpanic, startPaused: opts.paused, qmpControlSocket: detached ? p.controlSocket : undefined };
    const built = buildQemuArgv(vm.input.spec, vm.input.disks, runtime, { ...this.#argvOptions(), accel });
    if (!this.#opts.accel && accel === 'tcg') {
      this.notices.push(
        kvmUsable()
          ? 'qemu: /dev/kvm is present but a KVM probe guest does not run on this host; running under TCG software emulation (slow)'
          : 'qemu: /dev/kvm is not usable; running under TCG software emulation (slow)',
      );
    }
    if (built.uefiVarsTemplate) {
      // the variable store is per VM and persists across starts: copied from the template once
      try {
        await copyFile(built.uefiVarsTemplate, p.uefiVars, 1 /* COPYFILE_EXCL */);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') throw new PolyvisorError('ERR_NOT_FOUND', 'qemu: UEFI firmware is not installed (Debian package ovmf)', { file: built.uefiVarsTemplate, cause: e });
        if (code !== 'EEXIST') throw e;
      }
    }
    const binary = this.#opts.binary ?? 'qemu-system-x86_64';
    vm.stderr = '';
    trace('qemu: spawning');
    if (this.#opts.detached) await this.#spawnDetached(vm, binary, built.argv);
    else {
      this.#spawnChild(vm, binary, built.argv);
      vm.state = 'running';
    }
    trace('qemu: spawned');
    let resumed: Promise<void> | undefined;
    let resumedOn: QmpClient | undefined;
    const resumeAfter = opts.paused ? opts.resumeAfter : undefined;
    const onNegotiating = resumeAfter
      ? (qmp: QmpClient) => {
          // once per connection that gets this far: a connection that failed its negotiation
          // is replaced by a new one (#connect), and `cont` must go out on that one
          if (resumedOn && !resumedOn.closed) return;
          resumedOn = qmp;
          resumed = resumeAfter().then(async () => void (await qmp.execute('cont')));
          // awaited below; a failure before that is reported there
          resumed.catch(() => undefined);
        }
      : undefined;
    try {
      await opts.whileStarting?.();
      vm.qmp = await this.#connect(vm, vm.paths.qmpSocket, onNegotiating);
      trace('qemu: qmp connected');
      if (resumed) {
        await resumed;
        trace('resumed');
      }
    } catch (e) {
      await this.#killProc(vm);
      throw e;
    }
    this.#watchState(vm, vm.qmp);
  }

  #spawnChild(vm: Vm, binary: string, argv: string[]): void {
    const child = spawn(binary, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
    track(child);
    this.#captureStderr(vm, child);
    let failed = false;
    const exited = new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      // spawn failed (no such binary): 'exit' never comes
      child.once('error', (e) => {
        vm.stderr += e.message;
        failed = true;
        resolve();
      });
    });
    vm.proc = { pid: child.pid, exited, kill: () => !failed && child.exitCode === null && child.kill('SIGKILL') };
    void exited.then(() => this.#ended(vm));
  }

  /**
   * Detached (see the module comment): in a session of its own, so that it outlives this
   * process and a terminal's Ctrl-C never reaches it, its output in a file rather than a pipe
   * this process would take with it.
   */
  async #spawnDetached(vm: Vm, binary: string, argv: string[]): Promise<void> {
    const fd = openSync(vm.paths.log, 'w');
    let child: ChildProcess;
    try {
      child = spawn(binary, argv, { stdio: ['ignore', fd, fd], detached: true });
    } finally {
      closeSync(fd);
    }
    // no QEMU started: no such binary, or not executable
    if (child.pid === undefined) {
      const err = await new Promise<Error>((resolve) => child.once('error', resolve));
      throw new PolyvisorError('ERR_IO', `qemu: exited while starting: ${err.message}`, { cause: err });
    }
    child.unref();
    this.#attachDaemon(vm, child.pid, new Promise<void>((resolve) => child.once('exit', () => resolve())));
  }

  /** `exited`: where this process is QEMU's parent, its exit event, which comes before the poll notices */
  #attachDaemon(vm: Vm, pid: number, exited?: Promise<void>): void {
    const gone = whenGone(pid, vm.paths.qmpSocket);
    vm.proc = {
      pid,
      exited: exited ? Promise.race([gone.done, exited]) : gone.done,
      kill: () => {
        if (qemuAlive(pid, vm.paths.qmpSocket)) process.kill(pid, 'SIGKILL');
      },
    };
    vm.state = 'running';
    void gone.done.then(() => this.#ended(vm));
    this.#gone.push(gone.cancel);
  }

  #captureStderr(vm: Vm, child: ChildProcess): void {
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (s: string) => {
      vm.stderr = (vm.stderr + s).slice(-4096); // only the tail explains a failure
    });
  }

  #ended(vm: Vm): void {
    vm.qmp?.close();
    vm.qmp = undefined;
    vm.proc = undefined;
    vm.state = 'defined';
  }

  #watchState(vm: Vm, qmp: QmpClient): void {
    qmp.on('STOP', () => vm.proc && (vm.state = 'paused'));
    qmp.on('RESUME', () => vm.proc && (vm.state = 'running'));
  }

  /** A QMP connection for a command: the one this process holds, else the control socket. */
  async #qmpFor(vm: Vm, name: string): Promise<QmpClient> {
    if (!vm.proc) throw new PolyvisorError('ERR_VM_STATE', `qemu: ${name} is not running`);
    if (vm.qmp && !vm.qmp.closed) return vm.qmp;
    const qmp = await QmpClient.connect(vm.paths.controlSocket, { connectTimeoutMs: 5000 });
    vm.qmp = qmp;
    return qmp;
  }

  /** Waits for the VM's process to end (the guest powered off); false on timeout. */
  async waitForExit(name: string, timeoutMs: number): Promise<boolean> {
    const vm = this.#vm(name);
    if (!vm.proc) return true;
    return waitWithin(vm.proc.exited, timeoutMs);
  }

  async stop(name: string, options: StopOptions = {}): Promise<StopResult> {
    const vm = this.#vm(name);
    const proc = vm.proc;
    if (!proc) return 'graceful';
    const timeout = options.timeoutMs ?? 30_000;
    const qmp = await this.#qmpFor(vm, name).catch(() => undefined);
    // ACPI power button (QMP system_powerdown): the guest decides whether to obey
    await qmp?.execute('system_powerdown').catch(() => undefined);
    if (await waitWithin(proc.exited, timeout)) return 'graceful';
    // `quit` ends QEMU cleanly (flushes disk caches); SIGKILL when even that does not answer
    await qmp?.execute('quit', undefined, { timeoutMs: 2000 }).catch(() => undefined);
    if (!(await waitWithin(proc.exited, 3000))) await this.#killProc(vm);
    return 'forced';
  }

  async kill(name: string): Promise<void> {
    await this.#killProc(this.#vm(name));
  }

  async pause(name: string): Promise<void> {
    const vm = this.#vm(name);
    await (await this.#qmpFor(vm, name)).execute('stop');
    vm.state = 'paused';
  }

  async resume(name: string): Promise<void> {
    const vm = this.#vm(name);
    await (await this.#qmpFor(vm, name)).execute('cont');
    vm.state = 'running';
  }

  /**
   * The serial console as a byte stream both ways. `whileStarting`: called while QEMU is still
   * setting the machine up, before its serial socket may exist: tries again until it does (or
   * QEMU ends, or the start timeout passes), so that the console is attached by the time the
   * machine is ready rather than after.
   */
  async console(name: string, opts: { whileStarting?: boolean } = {}): Promise<Duplex> {
    const vm = this.#vm(name);
    const deadline = Date.now() + (this.#opts.startTimeoutMs ?? 10_000);
    for (;;) {
      if (!vm.proc) throw new PolyvisorError('ERR_VM_STATE', `qemu: ${name} is not running`);
      const sock = createConnection({ path: vm.paths.serialSocket });
      try {
        await new Promise<void>((resolve, reject) => {
          sock.once('connect', resolve);
          sock.once('error', reject);
        });
        return sock;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (!opts.whileStarting || (code !== 'ENOENT' && code !== 'ECONNREFUSED') || Date.now() > deadline) {
          throw new PolyvisorError('ERR_IO', `qemu: serial console: ${(e as Error).message}`, { file: vm.paths.serialSocket, cause: e });
        }
        // QEMU creates the socket as it sets up its character devices: a short wait between tries
        await new Promise((r) => setTimeout(r, 5));
      }
    }
  }

  async screenshot(name: string, pngPath: string): Promise<void> {
    const vm = this.#vm(name);
    const ppm = join(vm.paths.dir, 'screen.ppm');
    // QMP screendump writes the primary console as a binary PPM (P6)
    await (await this.#qmpFor(vm, name)).execute('screendump', { filename: ppm });
    const png = ppmToPng(await readFile(ppm), ppm);
    await rm(ppm, { force: true });
    const tmp = `${pngPath}.tmp-${process.pid}`;
    await writeFile(tmp, png);
    await rename(tmp, pngPath);
  }

  async list(): Promise<VmListEntry[]> {
    return [...this.#vms.entries()].map(([name, vm]) => ({ name, state: vm.state, pid: vm.proc?.pid }));
  }

  async undefine(name: string): Promise<void> {
    const vm = this.#vm(name);
    if (vm.proc) throw new PolyvisorError('ERR_VM_STATE', `qemu: ${name} is running; stop it first`);
    this.#vms.delete(name);
    await rm(vm.paths.dir, { recursive: true, force: true });
  }

  /**
   * Kills every VM this driver runs as a child, and removes the state folder if the driver made
   * it. Detached VMs keep running (that is what detached means); only this process's
   * connections to them are closed.
   */
  async dispose(): Promise<void> {
    for (const cancel of this.#gone.splice(0)) cancel();
    await Promise.all([...this.#vms.values()].map((vm) => (this.#opts.detached ? vm.qmp?.close() : this.#killProc(vm))));
    if (this.#ownStateDir && this.#stateDir) await rm(this.#stateDir, { recursive: true, force: true });
  }

  #argvOptions(): ArgvOptions {
    return { accel: this.#opts.accel, ovmf: this.#opts.ovmf };
  }

  #vm(name: string): Vm {
    const vm = this.#vms.get(name);
    if (!vm) throw new PolyvisorError('ERR_NOT_FOUND', `qemu: no VM named ${name}`);
    return vm;
  }

  async #killProc(vm: Vm): Promise<void> {
    const proc = vm.proc;
    if (!proc) return;
    proc.kill();
    await proc.exited;
  }

  /** Polls for the QMP socket until QEMU has created it, QEMU exits, or the timeout passes. */
  async #connect(vm: Vm, socket: string, onNegotiating?: (qmp: QmpClient) => void): Promise<QmpClient> {
    const deadline = Date.now() + (this.#opts.startTimeoutMs ?? 10_000);
    let died = false;
    void vm.proc?.exited.then(() => (died = true));
    for (;;) {
      if (died || !vm.proc) throw new PolyvisorError('ERR_IO', `qemu: exited while starting: ${this.#startError(vm) || 'no message'}`);
      try {
        return await QmpClient.connect(socket, { connectTimeoutMs: 5000, onNegotiating });
      } catch (e) {
        if (Date.now() > deadline) throw new PolyvisorError('ERR_IO', `qemu: QMP socket did not answer: ${(e as Error).message}`, { cause: e });
        // QEMU creates the socket early and greets once initialised: a short wait between tries
        await new Promise((r) => setTimeout(r, 5));
      }
    }
  }

  /** What QEMU said before it ended: its stderr (a child) or the tail of qemu.log (detached). */
  #startError(vm: Vm): string {
    if (!this.#opts.detached) return vm.stderr.trim();
    try {
      return readFileSync(vm.paths.log, 'utf8').slice(-4096).trim();
    } catch {
      return '';
    }
  }
}

/** Removes a file left by an earlier run of the VM; one that is not there is no error. */
async function unlinkIfThere(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}

function waitWithin(p: Promise<void>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    p.then(() => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

// ---------- PPM (netpbm P6) → PNG (RFC 2083 / ISO 15948) ----------

/** Built on first use (a screenshot), not when the driver loads: it would lengthen every start. */
let crcTable: Uint32Array | undefined;

function buildCrcTable(): Uint32Array {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
}

/** The PNG chunk CRC: CRC-32 (ISO 3309) over the chunk type and data. */
export function crc32(buf: Buffer): number {
  const table = (crcTable ??= buildCrcTable());
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = table[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'ascii');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
  return Buffer.concat([head, data, crc]);
}

/** Converts a binary PPM with maxval 255 (what QEMU's screendump writes) to an RGB PNG. */
export function ppmToPng(ppm: Buffer, file = 'screendump'): Buffer {
  // header: "P6" whitespace width whitespace height whitespace maxval one-whitespace, with # comments
  let pos = 0;
  const fields: number[] = [];
  const bad = (why: string) => new PolyvisorError('ERR_CORRUPT', `PPM: ${why}`, { file });
  if (ppm.toString('latin1', 0, 2) !== 'P6') throw bad('not a binary PPM (P6)');
  pos = 2;
  while (fields.length < 3) {
    while (pos < ppm.length && /\s/.test(String.fromCharCode(ppm[pos]!))) pos++;
    if (ppm[pos] === 0x23) {
      while (pos < ppm.length && ppm[pos] !== 0x0a) pos++;
      continue;
    }
    const start = pos;
    while (pos < ppm.length && ppm[pos]! >= 0x30 && ppm[pos]! <= 0x39) pos++;
    if (pos === start || pos - start > 6) throw bad('bad header');
    fields.push(Number(ppm.toString('latin1', start, pos)));
  }
  pos++; // the single whitespace before the raster
  const [w, h, maxval] = fields as [number, number, number];
  if (maxval !== 255) throw bad(`maxval ${maxval} (only 255 is supported)`);
  if (w < 1 || h < 1 || w > 16384 || h > 16384) throw bad(`size ${w}x${h} out of range`);
  const rowBytes = w * 3;
  if (ppm.length - pos < rowBytes * h) throw new PolyvisorError('ERR_TRUNCATED', `PPM: raster of ${w}x${h} is cut short`, { file });
  // each PNG scanline is a filter-type byte (0: None) followed by the raw RGB row
  const raw = Buffer.alloc((rowBytes + 1) * h);
  for (let y = 0; y < h; y++) ppm.copy(raw, y * (rowBytes + 1) + 1, pos + y * rowBytes, pos + (y + 1) * rowBytes);
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // colour type: truecolour RGB
  // compression, filter, interlace: 0 (deflate, adaptive filtering, none)
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', zlib().deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}
