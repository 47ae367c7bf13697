/**
 * The local QEMU engine: runs each VM as a qemu-system-x86_64 child process, controlled over
 * QMP (./qmp.ts) with its serial console on a Unix socket.
 *
 * No process is ever left behind: every child is tracked, `dispose()` kills them, and a
 * `process.on('exit')` hook SIGKILLs any that are still running when Node exits.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { deflateSync } from 'node:zlib';
import { PolyvisorError } from '../../errors.js';
import type { ConversionNote } from '../../vm/codec.js';
import type { DefineInput, DriverCapabilities, HypervisorDriver, StopOptions, StopResult, VmListEntry, VmState } from '../driver.js';
import { buildQemuArgv, type ArgvOptions, QEMU_FORMATS, kvmUsable } from './argv.js';
import { kvmWorks } from './kvm.js';
import { QmpClient } from './qmp.js';

export interface QemuDriverOptions extends ArgvOptions {
  /** where per-VM sockets, logs and variable stores live; default a new folder under the OS temp dir */
  stateDir?: string;
  binary?: string;
  /** how long QEMU gets to open its QMP socket; default 10 s */
  startTimeoutMs?: number;
  /** pass -no-reboot: a guest reboot ends the VM (tests want this) */
  noReboot?: boolean;
}

export interface QemuPaths {
  dir: string;
  qmpSocket: string;
  serialSocket: string;
  serialLog: string;
  pidfile: string;
  uefiVars: string;
}

interface Vm {
  input: DefineInput;
  paths: QemuPaths;
  state: VmState;
  notes: ConversionNote[];
  child?: ChildProcess;
  exited?: Promise<void>;
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

// a Unix socket path must fit sockaddr_un.sun_path (108 bytes with the NUL on Linux)
const MAX_SOCKET_PATH = 107;

export class QemuDriver implements HypervisorDriver {
  readonly name = 'qemu';
  readonly capabilities: DriverCapabilities = {
    operations: ['define', 'start', 'stop', 'kill', 'pause', 'resume', 'console', 'screenshot', 'list', 'undefine'],
    firmware: ['bios', 'uefi'],
    // PV and PVH guests run fully virtualised through direct kernel boot
    virtualization: ['hvm', 'pv', 'pvh'],
    diskFormats: [...new Set(Object.keys(QEMU_FORMATS).filter((f) => f !== 'vpc'))],
    accelerators: ['kvm', 'tcg'],
  };
  /** one line per start that fell back to TCG, and similar */
  readonly notices: string[] = [];
  #opts: QemuDriverOptions;
  #stateDir: string | undefined;
  /** true when the driver made the state folder itself, so dispose() removes it */
  #ownStateDir = false;
  #vms = new Map<string, Vm>();

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
      serialLog: join(dir, 'serial.log'),
      pidfile: join(dir, 'qemu.pid'),
      uefiVars: join(dir, 'uefi-vars.fd'),
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
    if (!vm.qmp || vm.qmp.closed) throw new PolyvisorError('ERR_INVALID_OPTION', `qemu: ${name} is not running`);
    return vm.qmp;
  }

  async start(name: string): Promise<void> {
    const vm = this.#vm(name);
    if (vm.state !== 'defined') throw new PolyvisorError('ERR_INVALID_OPTION', `qemu: ${name} is already running`);
    const p = vm.paths;
    await Promise.all([p.qmpSocket, p.serialSocket, p.serialLog, p.pidfile].map((f) => rm(f, { force: true })));
    // KVM only when a probe guest really runs under it (kvm.ts); otherwise TCG, said once.
    const accel = this.#opts.accel ?? ((await kvmWorks(this.#opts.binary)) ? 'kvm' : 'tcg');
    const built = buildQemuArgv(vm.input.spec, vm.input.disks, { ...p, noReboot: this.#opts.noReboot }, { ...this.#argvOptions(), accel });
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
    const child = spawn(this.#opts.binary ?? 'qemu-system-x86_64', built.argv, { stdio: ['ignore', 'ignore', 'pipe'] });
    track(child);
    vm.child = child;
    vm.stderr = '';
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (s: string) => {
      vm.stderr = (vm.stderr + s).slice(-4096); // only the tail explains a failure
    });
    vm.exited = new Promise<void>((resolve) => {
      child.once('exit', () => {
        vm.qmp?.close();
        vm.qmp = undefined;
        vm.child = undefined;
        vm.state = 'defined';
        resolve();
      });
      // spawn failed (no such binary): 'exit' never comes
      child.once('error', (e) => {
        vm.stderr += e.message;
        vm.child = undefined;
        vm.state = 'defined';
        resolve();
      });
    });
    vm.state = 'running';
    try {
      vm.qmp = await this.#connect(vm, child);
    } catch (e) {
      await this.#killChild(vm);
      throw e;
    }
    vm.qmp.on('STOP', () => vm.child && (vm.state = 'paused'));
    vm.qmp.on('RESUME', () => vm.child && (vm.state = 'running'));
  }

  /** Waits for the VM's process to end (the guest powered off); false on timeout. */
  async waitForExit(name: string, timeoutMs: number): Promise<boolean> {
    const vm = this.#vm(name);
    if (!vm.child || !vm.exited) return true;
    return waitWithin(vm.exited, timeoutMs);
  }

  async stop(name: string, options: StopOptions = {}): Promise<StopResult> {
    const vm = this.#vm(name);
    if (!vm.child) return 'graceful';
    const timeout = options.timeoutMs ?? 30_000;
    // ACPI power button (QMP system_powerdown): the guest decides whether to obey
    await vm.qmp?.execute('system_powerdown').catch(() => undefined);
    if (await waitWithin(vm.exited!, timeout)) return 'graceful';
    // `quit` ends QEMU cleanly (flushes disk caches); SIGKILL when even that does not answer
    await vm.qmp?.execute('quit', undefined, { timeoutMs: 2000 }).catch(() => undefined);
    if (!(await waitWithin(vm.exited!, 3000))) await this.#killChild(vm);
    return 'forced';
  }

  async kill(name: string): Promise<void> {
    await this.#killChild(this.#vm(name));
  }

  async pause(name: string): Promise<void> {
    await this.qmp(name).execute('stop');
    this.#vm(name).state = 'paused';
  }

  async resume(name: string): Promise<void> {
    await this.qmp(name).execute('cont');
    this.#vm(name).state = 'running';
  }

  async console(name: string): Promise<Duplex> {
    const vm = this.#vm(name);
    if (!vm.child) throw new PolyvisorError('ERR_INVALID_OPTION', `qemu: ${name} is not running`);
    const sock = createConnection({ path: vm.paths.serialSocket });
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', (e) => reject(new PolyvisorError('ERR_IO', `qemu: serial console: ${e.message}`, { file: vm.paths.serialSocket, cause: e })));
    });
    return sock;
  }

  async screenshot(name: string, pngPath: string): Promise<void> {
    const vm = this.#vm(name);
    const ppm = join(vm.paths.dir, 'screen.ppm');
    // QMP screendump writes the primary console as a binary PPM (P6)
    await this.qmp(name).execute('screendump', { filename: ppm });
    const png = ppmToPng(await readFile(ppm), ppm);
    await rm(ppm, { force: true });
    const tmp = `${pngPath}.tmp-${process.pid}`;
    await writeFile(tmp, png);
    await rename(tmp, pngPath);
  }

  async list(): Promise<VmListEntry[]> {
    return [...this.#vms.entries()].map(([name, vm]) => ({ name, state: vm.state, pid: vm.child?.pid }));
  }

  async undefine(name: string): Promise<void> {
    const vm = this.#vm(name);
    if (vm.child) throw new PolyvisorError('ERR_INVALID_OPTION', `qemu: ${name} is running; stop it first`);
    this.#vms.delete(name);
    await rm(vm.paths.dir, { recursive: true, force: true });
  }

  /** Kills every VM this driver started, and removes the state folder if the driver made it. */
  async dispose(): Promise<void> {
    await Promise.all([...this.#vms.values()].map((vm) => this.#killChild(vm)));
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

  async #killChild(vm: Vm): Promise<void> {
    const child = vm.child;
    if (!child) return;
    child.kill('SIGKILL');
    await vm.exited;
  }

  /** Polls for the QMP socket until QEMU has created it, QEMU exits, or the timeout passes. */
  async #connect(vm: Vm, child: ChildProcess): Promise<QmpClient> {
    const deadline = Date.now() + (this.#opts.startTimeoutMs ?? 10_000);
    let died = false;
    const onExit = () => (died = true);
    child.once('exit', onExit);
    child.once('error', onExit);
    try {
      for (;;) {
        if (died || child.exitCode !== null) {
          throw new PolyvisorError('ERR_IO', `qemu: exited while starting: ${vm.stderr.trim() || 'no message'}`);
        }
        try {
          return await QmpClient.connect(vm.paths.qmpSocket, { connectTimeoutMs: 5000 });
        } catch (e) {
          if (Date.now() > deadline) throw new PolyvisorError('ERR_IO', `qemu: QMP socket did not answer: ${(e as Error).message}`, { cause: e });
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    } finally {
      child.off('exit', onExit);
      child.off('error', onExit);
    }
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

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** The PNG chunk CRC: CRC-32 (ISO 3309) over the chunk type and data. */
export function crc32(buf: Buffer): number {
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
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
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}
