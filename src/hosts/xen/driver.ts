/**
 * The Xen driver: a host running the xl toolstack (xl(1), Xen 4.x), reached over SSH.
 *
 * xl keeps no list of defined-but-stopped domains: a domain exists from `xl create` until it
 * is destroyed. The driver therefore keeps each VM it defines in a folder of its own on the
 * host, by default /var/lib/polyvisor/NAME/, holding NAME.cfg (written by the xl codec,
 * src/vm/codecs/xl.ts) beside the VM's disks as raw files (and its kernel and ramdisk when it
 * boots one directly). "Defined" means that folder exists; "running" and "paused" come from
 * `xl list`.
 *
 * Every remote command goes through ./ssh.ts; every input that reaches the host (names,
 * paths, sizes) is a positional parameter of a constant script or a quoted argument, never
 * shell code. A failing xl command is ERR_HOST quoting the host, the command and xl's own
 * words.
 */
import { createReadStream } from 'node:fs';
import { mkdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { basename, join, posix, resolve } from 'node:path';
import { PolyvisorError, fromSystemError } from '../../errors.js';
import { openImage } from '../../disk/chain.js';
import type { ConversionNote } from '../../vm/codec.js';
import { xl } from '../../vm/codecs/xl.js';
import { MAX_XL_BYTES } from '../../vm/codecs/xl-syntax.js';
import type { VmSpec } from '../../vm/spec.js';
import type { DefineInput, DriverCapabilities, HypervisorDriver, StopOptions, StopResult, VmListEntry } from '../driver.js';
import { ProcessConsole } from './console.js';
import { checkDomainName } from './names.js';
import { shellScript } from './shell.js';
import { SshSession, displayCommand, type RunResult } from './ssh.js';
import { downloadFile, uploadBytes, uploadImage, type Progress } from './transfer.js';
import { parseXenUri } from './uri.js';
import { parseXlList, type XlDomain } from './xl-list.js';
import { crypto } from '../../util/builtins.js';

export interface XenDriverOptions {
  /** xen+ssh://[user@]host[:port] */
  uri: string;
  /** private key for ssh -i; default ssh's own (agent, ~/.ssh/id_*) */
  identityFile?: string;
  /** where host keys are recorded; default DATA_DIR/known_hosts */
  knownHostsFile?: string;
  /** Polyvisor's data folder on this machine; default $XDG_DATA_HOME/polyvisor or ~/.local/share/polyvisor */
  dataDir?: string;
  /** the folder on the host that holds one folder per VM; default /var/lib/polyvisor */
  storageDir?: string;
  connectTimeoutSec?: number;
  /** the ssh binary; default `ssh` */
  ssh?: string;
  /** bytes done and total while a disk travels to or from the host */
  onProgress?: (what: string, done: number, total: number) => void;
}

export interface XenListEntry extends VmListEntry {
  /** the domain ID, while the domain exists */
  domid?: number;
  /** xl list's State column: "r-----" */
  flags?: string;
  /** true when the VM's folder is in the driver's storage folder (it was defined here) */
  managed: boolean;
}

export interface ExportOptions {
  /** an xl.cfg on the host to export instead of the driver's own NAME.cfg (a VM defined by hand) */
  config?: string;
  /** replace files that exist in the local folder */
  force?: boolean;
}

// Statuses the driver's own remote scripts use for the states they check before acting.
const NOT_DEFINED = 97;
const RUNNING = 98;
const NOT_RUNNING = 99;
const EXISTS = 96;

/** how long `xl create -c` may take before its domain shows in `xl list` */
const CREATE_TIMEOUT_MS = 180_000;

/** quiet `xl domid NAME`: true (status 0) when the domain exists */
const IS_RUNNING = 'xl domid "$n" >/dev/null 2>&1';

/** What the xl driver does, as data (the drivers table, src/hosts/registry.ts, lists it). */
export const XEN_CAPABILITIES: DriverCapabilities = {
  operations: ['define', 'start', 'stop', 'kill', 'pause', 'resume', 'console', 'list', 'undefine', 'export'],
  // HVM guests boot SeaBIOS, or OVMF with firmware="uefi" (xl.cfg(5)); PV and PVH guests
  // have no firmware and start their kernel directly or through pygrub
  firmware: ['bios', 'uefi'],
  virtualization: ['pv', 'pvh', 'hvm'],
  // define converts every disk to raw on the way to the host, the one format every Xen
  // block backend reads (blkback and qdisk)
  diskFormats: ['raw'],
  accelerators: ['xen'],
};

export class XenDriver implements HypervisorDriver {
  readonly name = 'xen';
  readonly capabilities: DriverCapabilities = XEN_CAPABILITIES;
  readonly ssh: SshSession;
  readonly storageDir: string;
  #opts: XenDriverOptions;
  #notes = new Map<string, ConversionNote[]>();

  constructor(opts: XenDriverOptions) {
    this.#opts = opts;
    const address = parseXenUri(opts.uri);
    const dataDir = opts.dataDir ?? join(process.env.XDG_DATA_HOME || join(homedir(), '.local', 'share'), 'polyvisor');
    this.storageDir = opts.storageDir ?? '/var/lib/polyvisor';
    if (!posix.isAbsolute(this.storageDir) || this.storageDir.includes('\0')) throw new PolyvisorError('ERR_USAGE', `xen: storage folder ${JSON.stringify(this.storageDir)} must be an absolute path on the host`);
    this.ssh = new SshSession(address, {
      identityFile: opts.identityFile,
      knownHostsFile: opts.knownHostsFile ?? join(dataDir, 'known_hosts'),
      connectTimeoutSec: opts.connectTimeoutSec,
      ssh: opts.ssh,
    });
  }

  /** The host as messages name it. */
  get uri(): string {
    return this.ssh.uri;
  }

  /** The VM's folder on the host. */
  folderOf(name: string): string {
    return posix.join(this.storageDir, checkDomainName(name));
  }

  /** The VM's xl.cfg on the host. */
  configOf(name: string): string {
    return posix.join(this.folderOf(name), `${name}.cfg`);
  }

  /** What the xl codec could not carry over when the VM was defined (this session only). */
  notes(name: string): ConversionNote[] {
    return this.#notes.get(name) ?? [];
  }

  async define(input: DefineInput): Promise<void> {
    const spec = input.spec;
    const name = checkDomainName(spec.name);
    if (input.disks.length !== spec.disks.length) throw new PolyvisorError('ERR_INTERNAL', `xen: ${spec.disks.length} disks in the spec but ${input.disks.length} attachments`);
    const final = this.folderOf(name);
    const stage = posix.join(this.storageDir, `.${name}.partial-${crypto().randomBytes(4).toString('hex')}`);
    // a spec the xl codec refuses is refused before anything is copied
    xl.encode!({ spec, diskFiles: input.disks.map((a, i) => (a ? { file: posix.join(final, `disk${i}.raw`), format: 'raw', capacity: 0 } : undefined)), name, folder: final });
    await this.#script(`[ -e "$2" ] && exit ${EXISTS}; mkdir -p "$1" && mkdir -m 700 "$3"`, [this.storageDir, final, stage], ['mkdir', stage], name);
    try {
      const diskFiles: Array<{ file: string; format: string; capacity: number } | undefined> = [];
      for (const [i, att] of input.disks.entries()) {
        if (!att) {
          diskFiles.push(undefined);
          continue;
        }
        if (!att.path && !att.open) throw new PolyvisorError('ERR_UNSUPPORTED', `xen: disk ${i} is served over NBD (${att.nbdUri ?? 'no path'}); the xl driver copies disks from local files only`);
        const file = `disk${i}.raw`;
        const image = att.open ? await att.open() : await openImage(att.path!, { format: att.format });
        try {
          await uploadImage(this.ssh, image, posix.join(stage, file), this.#progress(`disk ${i}`));
          diskFiles.push({ file: posix.join(final, file), format: 'raw', capacity: image.virtualSize });
        } finally {
          await image.close();
        }
      }
      // a kernel and ramdisk started directly travel with the VM (xl reads them in dom0)
      const boot = spec.boot ? { ...spec.boot } : undefined;
      for (const key of ['kernel', 'ramdisk'] as const) {
        const local = boot?.[key];
        if (local === undefined) continue;
        await stat(local).catch((e) => {
          throw fromSystemError(e, local, `xen: the VM's ${key}`);
        });
        await uploadBytes(this.ssh, createReadStream(local), posix.join(stage, key));
        boot![key] = posix.join(final, key);
      }
      const encoded = xl.encode!({ spec: { ...spec, boot }, diskFiles, name, folder: final });
      this.#notes.set(name, encoded.notes);
      await uploadBytes(this.ssh, encoded.files[0]!.data as string, posix.join(stage, `${name}.cfg`));
      await this.#script(`[ -e "$2" ] && exit ${EXISTS}; mv -T "$1" "$2"`, [stage, final], ['mv', '-T', stage, final], name);
    } catch (e) {
      await this.ssh.run(['rm', '-rf', '--', stage]).catch(() => undefined);
      throw e;
    }
  }

  async start(name: string): Promise<void> {
    const cfg = this.configOf(name);
    await this.#script(`n=$2; [ -f "$1" ] || exit ${NOT_DEFINED}; ${IS_RUNNING} && exit ${RUNNING}; exec xl create "$1"`, [cfg, name], ['xl', 'create', cfg], name);
  }

  /**
   * Starts the VM with its console attached from the first byte (`xl create -c` on a
   * pseudo-terminal: xl waits until the console is connected before it unpauses the guest).
   * Resolves once the domain exists (or has already run and ended), with the console stream;
   * rejects with ERR_HOST quoting xl when the create fails.
   */
  async startWithConsole(name: string): Promise<ProcessConsole> {
    const cfg = this.configOf(name);
    const shown = ['xl', 'create', '-c', cfg];
    const child = await this.ssh.spawnTty(shellScript(`n=$2; [ -f "$1" ] || exit ${NOT_DEFINED}; ${IS_RUNNING} && exit ${RUNNING}; exec xl create -c "$1"`, [cfg, name]));
    const con = new ProcessConsole(child);
    let text = '';
    child.stdout!.on('data', (b: Buffer) => {
      text = (text + b.toString('utf8')).slice(-8192);
    });
    let exited: number | null | undefined;
    void con.exited.then((s) => (exited = s));
    // libxl builds the domain before xl attaches the console: a few seconds, more under load
    const deadline = Date.now() + CREATE_TIMEOUT_MS;
    for (;;) {
      if (exited !== undefined) {
        if (exited === 0) return con;
        con.destroy();
        this.#stateError(exited, name, { status: exited ?? 255, stdout: Buffer.alloc(0), stderr: text.replace(/\r/g, '') }, shown);
      }
      if (Date.now() > deadline) {
        con.destroy();
        throw new PolyvisorError('ERR_HOST', `host ${this.uri}: ${displayCommand(shown)}: the domain did not appear within ${CREATE_TIMEOUT_MS / 1000} s: ${text.replace(/\r/g, '').trim().slice(-2000) || 'no output'}`);
      }
      const r = await this.ssh.run(['xl', 'domid', name]);
      if (r.status === 0) return con;
      await Promise.race([con.exited, new Promise((res) => setTimeout(res, 500))]);
    }
  }

  /** Waits until the domain is gone (the guest powered off and xl cleaned up after it); false on timeout. */
  async waitForExit(name: string, timeoutMs: number): Promise<boolean> {
    const seconds = String(Math.max(1, Math.ceil(timeoutMs / 1000)));
    const argv = shellScript(`n=$1; i=0; while ${IS_RUNNING}; do [ "$i" -ge "$2" ] && exit 1; sleep 1; i=$((i+1)); done`, [checkDomainName(name), seconds]);
    const r = await this.ssh.run(argv);
    if (r.status > 1) throw this.ssh.failure(argv, r, `waiting for ${name} to end`);
    return r.status === 0;
  }

  async stop(name: string, options: StopOptions = {}): Promise<StopResult> {
    const seconds = Math.max(1, Math.ceil((options.timeoutMs ?? 30_000) / 1000));
    // xl shutdown -w waits until the domain is gone; -F falls back to an ACPI power button
    // event for an HVM guest without PV drivers (xl(1))
    const r = await this.ssh.run(shellScript(`n=$1; ${IS_RUNNING} || exit ${NOT_RUNNING}; exec timeout "$2" xl shutdown -w -F "$n"`, [checkDomainName(name), String(seconds)]));
    if (r.status === 0 || r.status === NOT_RUNNING) return 'graceful';
    // timed out (124), or the guest cannot be asked: cut the power
    await this.kill(name);
    return 'forced';
  }

  async kill(name: string): Promise<void> {
    await this.#script(`n=$1; ${IS_RUNNING} || exit 0; exec xl destroy "$n"`, [checkDomainName(name)], ['xl', 'destroy', name], name);
  }

  async pause(name: string): Promise<void> {
    await this.#script(`n=$1; ${IS_RUNNING} || exit ${NOT_RUNNING}; exec xl pause "$n"`, [checkDomainName(name)], ['xl', 'pause', name], name);
  }

  async resume(name: string): Promise<void> {
    await this.#script(`n=$1; ${IS_RUNNING} || exit ${NOT_RUNNING}; exec xl unpause "$n"`, [checkDomainName(name)], ['xl', 'unpause', name], name);
  }

  /** The guest's console (`xl console`, the PV console or an HVM guest's first serial port). */
  async console(name: string): Promise<ProcessConsole> {
    await this.#script(`n=$1; ${IS_RUNNING} || exit ${NOT_RUNNING}`, [checkDomainName(name)], ['xl', 'domid', name], name);
    return new ProcessConsole(await this.ssh.spawnTty(['xl', 'console', name]));
  }

  /** `xl list`, parsed (Domain-0 included). */
  async domains(): Promise<XlDomain[]> {
    return parseXlList(await this.ssh.exec(['xl', 'list']), this.uri);
  }

  async list(): Promise<XenListEntry[]> {
    // both at once; when both fail (the host does not answer), xl list's failure is the one
    // reported, whichever came back first
    const [d, f] = await Promise.allSettled([
      this.domains(),
      this.ssh.exec(shellScript('for d in "$1"/*/; do n=${d%/}; n=${n##*/}; [ -f "$d$n.cfg" ] && printf \'%s\\n\' "$n"; done; exit 0', [this.storageDir])),
    ]);
    if (d.status === 'rejected') throw d.reason;
    if (f.status === 'rejected') throw f.reason;
    const domains = d.value;
    const folders = f.value;
    const byName = new Map(domains.filter((d) => d.domid !== 0).map((d) => [d.name, d]));
    const out: XenListEntry[] = [];
    for (const name of folders.split('\n').filter(Boolean).sort()) {
      const d = byName.get(name);
      byName.delete(name);
      out.push({ name, state: d?.state ?? 'defined', domid: d?.domid, flags: d?.flags, managed: true });
    }
    for (const d of byName.values()) out.push({ name: d.name, state: d.state, domid: d.domid, flags: d.flags, managed: false });
    return out;
  }

  async undefine(name: string): Promise<void> {
    const dir = this.folderOf(name);
    await this.#script(`n=$2; [ -f "$1/$n.cfg" ] || exit ${NOT_DEFINED}; ${IS_RUNNING} && exit ${RUNNING}; exec rm -rf -- "$1"`, [dir, name], ['rm', '-rf', '--', dir], name);
    this.#notes.delete(name);
  }

  /**
   * Copies a stopped VM to the local `folder`: NAME.cfg re-written by the xl codec with the
   * local file names, the disks (in the format the host keeps them in) and a directly booted
   * kernel and ramdisk. Returns the spec with absolute local paths.
   */
  async export(name: string, folder: string, opts: ExportOptions = {}): Promise<VmSpec> {
    checkDomainName(name);
    const cfgPath = opts.config ?? this.configOf(name);
    if (!posix.isAbsolute(cfgPath)) throw new PolyvisorError('ERR_USAGE', `xen: the configuration to export must be an absolute path on the host, not ${JSON.stringify(cfgPath)}`);
    // one byte more than the codec accepts, so that an oversized file is reported as such
    const text = await this.#script(`n=$2; [ -f "$1" ] || exit ${NOT_DEFINED}; ${IS_RUNNING} && exit ${RUNNING}; exec head -c "$3" -- "$1"`, [cfgPath, name, String(MAX_XL_BYTES + 1)], ['cat', cfgPath], name, cfgPath);
    const { spec } = xl.decode!(text.stdout, `${this.uri}:${cfgPath}`);
    if (spec.name !== name) throw new PolyvisorError('ERR_USAGE', `xen: ${cfgPath} on host ${this.uri} defines ${JSON.stringify(spec.name)}, not ${name}`);
    const dir = resolve(folder);
    await mkdir(dir, { recursive: true });
    const cfgLocal = join(dir, `${name}.cfg`);
    if (!opts.force && (await stat(cfgLocal).then(() => true, () => false))) throw new PolyvisorError('ERR_EXISTS', 'xen: export would replace an existing configuration', { file: cfgLocal });

    const taken = new Set([`${name}.cfg`]);
    const localName = (remote: string, fallback: string) => {
      let n = basename(remote).replace(/[^A-Za-z0-9._-]/g, '_') || fallback;
      if (n.startsWith('.')) n = `_${n}`;
      for (let i = 2; taken.has(n); i++) n = `${i}-${n}`;
      taken.add(n);
      return n;
    };
    // xl opens relative paths from its working folder; the driver's own files are absolute
    const onHost = (p: string) => (posix.isAbsolute(p) ? p : posix.join(posix.dirname(cfgPath), p));
    const relSpec: VmSpec = structuredClone(spec);
    const absSpec: VmSpec = structuredClone(spec);
    const diskFiles: Array<{ file: string; format: string; capacity: number } | undefined> = [];
    for (const [i, d] of spec.disks.entries()) {
      if (!d.file) {
        diskFiles.push(undefined);
        continue;
      }
      const rel = localName(d.file, `disk${i}.raw`);
      const size = await downloadFile(this.ssh, onHost(d.file), join(dir, rel), this.#progress(`disk ${i}`), opts.force);
      const format = d.format ?? 'raw';
      diskFiles.push({ file: rel, format, capacity: size });
      relSpec.disks[i] = { ...d, file: rel, format };
      absSpec.disks[i] = { ...d, file: join(dir, rel), format };
    }
    for (const key of ['kernel', 'ramdisk'] as const) {
      const remote = spec.boot?.[key];
      if (remote === undefined) continue;
      const rel = localName(remote, key);
      await downloadFile(this.ssh, onHost(remote), join(dir, rel), undefined, opts.force);
      relSpec.boot![key] = rel;
      absSpec.boot![key] = join(dir, rel);
    }
    const encoded = xl.encode!({ spec: relSpec, diskFiles, name, folder: dir });
    const tmp = join(dir, `.${name}.cfg.${crypto().randomBytes(4).toString('hex')}.pv-partial`);
    await writeFile(tmp, encoded.files[0]!.data);
    await rename(tmp, cfgLocal).catch(async (e) => {
      await rm(tmp, { force: true });
      throw fromSystemError(e, cfgLocal, 'xen: export');
    });
    return absSpec;
  }

  /** Ends the SSH session. */
  async dispose(): Promise<void> {
    await this.ssh.close();
  }

  #progress(what: string): Progress | undefined {
    const cb = this.#opts.onProgress;
    return cb ? (done, total) => cb(what, done, total) : undefined;
  }

  /** Runs one of the driver's scripts, mapping its state statuses and xl's failures to errors. */
  async #script(script: string, args: string[], shown: string[], name: string, cfg?: string): Promise<RunResult> {
    const r = await this.ssh.run(shellScript(script, args));
    if (r.status !== 0) this.#stateError(r.status, name, r, shown, cfg);
    return r;
  }

  #stateError(status: number | null, name: string, r: RunResult, shown: string[], cfg = this.configOf(name)): never {
    const host = `host ${this.uri}`;
    if (status === NOT_DEFINED) throw new PolyvisorError('ERR_NOT_FOUND', `${host}: no VM named ${name} is defined (no ${cfg})`);
    if (status === RUNNING) throw new PolyvisorError('ERR_VM_STATE', `${host}: ${name} is running; stop it first`);
    if (status === NOT_RUNNING) throw new PolyvisorError('ERR_VM_STATE', `${host}: ${name} is not running`);
    if (status === EXISTS) throw new PolyvisorError('ERR_EXISTS', `${host}: a VM named ${name} is already defined (${this.folderOf(name)})`);
    throw this.ssh.failure(shown, r, displayCommand(shown));
  }
}
