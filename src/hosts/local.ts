/**
 * The embedded default host: VMs in the store (../store/store.ts) running on the local QEMU
 * engine, each in its own folder under <data>/vms/<name>/ with its disk overlays, sockets,
 * serial log and UEFI variables.
 *
 * QEMU runs detached (in a session of its own): `polyvisor start` returns while the VM runs on, and any
 * later command finds it again by the pid the store recorded, checked against the VM's own
 * socket path (./qemu/process.ts), so a pid reused by another program is never mistaken for
 * the VM. Every command first reconciles the store with what really runs: a VM whose QEMU
 * ended while no Polyvisor process watched (the guest powered off, QEMU was killed, Polyvisor
 * itself was killed) is marked stopped.
 *
 * Disks (StoredDisk.mode): a source QEMU reads itself is used in place under a qcow2 overlay
 * in the VM's folder, so nothing is copied and the source is never written; `persist` hands
 * QEMU the source itself; a source QEMU cannot read (XVA chunks, a disk inside an OVA, a VHDX
 * differencing chain) is converted into the VM's folder at import, or, for the lifetime of one
 * `polyvisor run`, served by that process's NBD server ('nbd').
 */
import { execFile } from 'node:child_process';
import { mkdir, rename, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Duplex } from 'node:stream';
import { promisify } from 'node:util';
import type { BlockImage } from '../disk/image.js';
import { PolyvisorError } from '../errors.js';
import { Store, checkVmName, type StoredDisk, type StoredVm } from '../store/store.js';
import type { ConversionNote } from '../vm/codec.js';
import type { VmAdaptation } from '../vm/adapt.js';
import type { VmSpec } from '../vm/spec.js';
import type { DiskAttachment, StopResult } from './driver.js';
import type { NbdServer } from './nbd/server.js';
import { QemuDriver } from './qemu/driver.js';
import { qemuAlive } from './qemu/process.js';
import { trace } from '../util/trace.js';
import { crypto } from '../util/builtins.js';

const run = promisify(execFile);

/** What the store records of a new VM. */
type NewVmRecord = Parameters<Store['addVm']>[0];

/** The store's name for this host. */
export const LOCAL_HOST = 'local';

export interface LocalHostOptions {
  /** the data folder (see ../store/data-dir.ts) */
  dataDir: string;
  /** the store's database when not the SQLite file in `dataDir`: a PostgreSQL URL (../store/data-dir.ts) */
  database?: string;
  /** force an accelerator; default KVM when a probe guest runs under it */
  accel?: 'kvm' | 'tcg';
  qemuImg?: string;
}

export interface ImportOptions {
  name?: string;
  /** convert every disk into the VM's folder, even those QEMU reads in place */
  copy?: boolean;
  /** the guest writes to the source disks themselves */
  persist?: boolean;
  /**
   * for `polyvisor run`: disks QEMU cannot read are served by this process over NBD instead of
   * being converted; the VM then runs only while this process lives
   */
  transient?: boolean;
  allowOutsidePaths?: boolean;
  /**
   * adapt the guest for the local engine (KVM's devices) when it comes from another
   * hypervisor (default true; `run` does not adapt): see ../guest/adapt.ts
   */
  adapt?: boolean;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
}

export interface ImportResult {
  vm: StoredVm;
  notes: ConversionNote[];
  /** what guest adaptation did: the manifest `guest undo` takes, or why nothing was adapted */
  adaptation?: VmAdaptation;
}

/** What importAndStart gives: the VM running, its console attached before its CPUs ran. */
export interface StartedImport extends ImportResult {
  /** the serial console, attached while QEMU set the machine up: nothing the guest prints is missed */
  console: Duplex;
}

/** The hypervisor a VM source was made for (kept here for callers of this module; ../guest/route.ts decides). */
export { sourceHypervisor } from '../guest/route.js';

export class LocalHost {
  #store: Store | undefined;
  readonly dataDir: string;
  readonly #driver: QemuDriver;
  readonly #opts: LocalHostOptions;
  /** NBD servers of transient imports, by VM name */
  readonly #servers = new Map<string, { server: NbdServer; images: BlockImage[] }>();

  constructor(opts: LocalHostOptions) {
    this.#opts = opts;
    this.dataDir = resolve(opts.dataDir);
    this.#driver = new QemuDriver({ stateDir: join(this.dataDir, 'vms'), detached: true, pvpanic: true, accel: opts.accel });
  }

  /**
   * The VM store, opened on first use: `run` starts QEMU before it needs the store, and opens
   * it while QEMU sets the machine up (importAndStart).
   */
  get store(): Store {
    return (this.#store ??= Store.open(this.dataDir, { database: this.#opts.database }));
  }

  /** Notices of the engine (a fall-back to software emulation, said once per start). */
  get notices(): readonly string[] {
    return this.#driver.notices;
  }

  vmDir(name: string): string {
    return join(this.dataDir, 'vms', name);
  }

  /** The serial log of a VM: every byte its console printed since its last start. */
  serialLog(name: string): string {
    return join(this.vmDir(name), 'serial.log');
  }

  /** Brings a VM into the store from any descriptor, package or exported folder. */
  async import(sourcePath: string, opts: ImportOptions = {}): Promise<ImportResult> {
    const { record, notes, adaptation } = await this.#prepare(sourcePath, opts, { checkStore: true });
    return { vm: this.store.addVm(record), notes, adaptation };
  }

  /**
   * `polyvisor run`'s import and start in one, in the order that shows the guest soonest:
   * QEMU is spawned (paused) as soon as the VM's folder is ready, and while it sets the machine
   * up (it needs about 0.1 s before it takes a command) the serial console is connected and the
   * store opened and written; the CPUs are released the moment QEMU takes commands, once the
   * console is attached, so that the guest's first byte is seen. A name the store already
   * holds (a VM on another host: a local one owns its folder, which the import could not have
   * taken) is refused while QEMU starts, by the store's own unique name: QEMU is killed and the
   * folder removed, as for any failed import. `whileStarting`: more work for that wait (the
   * CLI writes V8's code cache there).
   */
  async importAndStart(sourcePath: string, opts: ImportOptions & { whileStarting?: () => void } = {}): Promise<StartedImport> {
    const { record, notes, adaptation } = await this.#prepare(sourcePath, opts, { checkStore: false });
    trace('imported (folder ready)');
    const name = record.name;
    let vm: StoredVm | undefined;
    let consoleStream: Promise<Duplex> | undefined;
    try {
      const disks: Array<DiskAttachment | undefined> = record.spec.disks.map(() => undefined);
      for (const d of record.disks) disks[d.index] = { path: d.path, format: d.format };
      await this.#driver.define({ spec: record.spec, disks });
      await this.#driver.start(name, {
        paused: true,
        whileStarting: () => {
          consoleStream = this.#driver.console(name, { whileStarting: true });
          // awaited when QEMU takes commands; a failure before that is reported there
          consoleStream.catch(() => undefined);
          vm = this.store.addVm({ ...record, state: 'paused', pid: this.#driver.pid(name), startedAt: new Date().toISOString() });
          trace('store written');
          opts.whileStarting?.();
        },
        resumeAfter: () => consoleStream!,
      });
      this.store.setState(name, 'running', { pid: vm!.pid, startedAt: vm!.startedAt });
      return { vm: this.store.getVm(name), notes, adaptation, console: await consoleStream! };
    } catch (e) {
      void consoleStream?.then((c) => c.destroy(), () => undefined);
      await this.#driver.kill(name).catch(() => undefined);
      if (vm) this.store.removeVm(name);
      // the folder is this run's: the import renamed it into place
      await rm(this.vmDir(name), { recursive: true, force: true }).catch(() => undefined);
      await this.#stopServing(name);
      throw e;
    }
  }

  /**
   * An import up to the store: the VM's folder (overlays, copies, adaptation) under its final
   * name, and the record to write. `checkStore`: refuse a name the store holds before doing
   * anything (import); importAndStart checks when it writes the record.
   */
  async #prepare(sourcePath: string, opts: ImportOptions, how: { checkStore: boolean }): Promise<{ record: NewVmRecord; notes: ConversionNote[]; adaptation?: VmAdaptation }> {
    if (opts.copy && opts.persist) throw new PolyvisorError('ERR_USAGE', '--copy and --persist exclude each other');
    // the disk engine and the VM layer load only when a VM is imported: ps, start, stop and
    // console start faster without them
    const [{ createImage }, { convert }, { openVmSource, withHostBootFiles }, { whyNotDirect }] = await Promise.all([
      import('../disk/chain.js'),
      import('../disk/convert.js'),
      import('../vm/source.js'),
      import('./attach.js'),
    ]);
    trace('import: modules loaded');
    const source = await openVmSource(sourcePath, { allowOutsidePaths: opts.allowOutsidePaths });
    trace('import: source opened');
    const opened: BlockImage[] = [];
    let dir: string | undefined;
    let final: string | undefined;
    try {
      const name = opts.name ?? storeName(source.spec.name);
      checkVmName(name);
      if (how.checkStore && this.store.findVm(name)) throw new PolyvisorError('ERR_EXISTS', `a VM named ${name} already exists (choose another with --name)`);
      final = this.vmDir(name);
      // built under a temporary name and renamed at the end: a failed import leaves nothing
      dir = join(this.dataDir, 'vms', `.import-${name}-${process.pid}`);
      // The folder, the boot files' lookup and the disks' opening at once: each is a few round
      // trips to the thread pool, on `run`'s way to QEMU. All settle before a failure is
      // handled, so that the clean-up below sees the folder and closes every image that opened.
      const [made, boot, ...openings] = await Promise.allSettled([
        rm(dir, { recursive: true, force: true }).then(() => mkdir(dir!, { recursive: true })),
        withHostBootFiles(source, { allowOutsidePaths: opts.allowOutsidePaths }),
        ...source.disks.map((d) => d.open()),
      ]);
      const images = openings.map((r) => (r.status === 'fulfilled' ? (r.value as BlockImage) : undefined));
      for (const image of images) if (image) opened.push(image);
      for (const r of [made, boot, ...openings]) if (r.status === 'rejected') throw r.reason;
      const spec = { ...(boot as PromiseFulfilledResult<VmSpec>).value, name };
      const disks: StoredDisk[] = [];
      const nbd: Array<{ index: number; image: BlockImage }> = [];
      for (const [i, d] of source.disks.entries()) {
        opts.signal?.throwIfAborted();
        const image = images[i]!;
        const why = await whyNotDirect(image, this.#opts.qemuImg);
        const file = `disk${d.index}.qcow2`;
        if (opts.persist) {
          if (why !== undefined) throw new PolyvisorError('ERR_UNSUPPORTED', `disk ${d.label} cannot be written in place (${why}); import it without --persist`, { file: image.path });
          disks.push({ index: d.index, label: d.label, mode: 'persist', path: resolve(image.path), format: image.format });
        } else if (why === undefined && !opts.copy) {
          // a qcow2 overlay that names the source by its absolute path: QEMU follows it read-only
          // the overlay takes the open source over and closes it with itself
          opened.splice(opened.indexOf(image), 1);
          const overlay = await createImage(join(dir, file), 'qcow2', undefined, { backingFile: resolve(image.path), backingFormat: image.format, backingImage: image, allowOutsidePaths: true, cache: 'unsafe' });
          await overlay.close();
          disks.push({ index: d.index, label: d.label, mode: 'overlay', path: join(final, file), format: 'qcow2', source: resolve(image.path) });
        } else if (opts.transient && !opts.copy) {
          nbd.push({ index: d.index, image });
          disks.push({ index: d.index, label: d.label, mode: 'overlay', path: join(final, file), format: 'qcow2', source: `nbd:${d.label}` });
        } else {
          await convert(image, join(dir, file), 'qcow2', { signal: opts.signal, onProgress: opts.onProgress });
          disks.push({ index: d.index, label: d.label, mode: 'copy', path: join(final, file), format: 'qcow2' });
        }
      }
      await rename(dir, final).catch((e) => {
        throw new PolyvisorError('ERR_EXISTS', `cannot create the VM folder: ${(e as Error).message}`, { file: final, cause: e });
      });
      dir = undefined;
      if (nbd.length) await this.#serve(name, nbd);
      for (const img of opened.splice(0).filter((i) => !nbd.some((n) => n.image === i))) await img.close();
      const adaptation = opts.adapt === false ? undefined : await this.adapt(final, source.kind, spec, disks, opts.signal);
      const record: NewVmRecord = { name, uuid: spec.uuid ?? crypto().randomUUID(), host: LOCAL_HOST, source: resolve(sourcePath), sourceKind: source.kind, spec, disks };
      return { record, notes: source.notes, adaptation };
    } catch (e) {
      if (dir) await rm(dir, { recursive: true, force: true });
      else if (final && !this.store.findVm(opts.name ?? storeName(source.spec.name))) await rm(final, { recursive: true, force: true }).catch(() => undefined);
      throw e;
    } finally {
      for (const img of opened) await img.close().catch(() => undefined);
      await source.close();
    }
  }

  /**
   * Adapts a guest from another hypervisor for the local engine, in the VM's own disks (the
   * overlays and copies in its folder: the source is not touched), with the manifest beside
   * them. A guest Polyvisor cannot adapt (no Linux root file system found, disks persisted
   * to the source or served over NBD) is imported as it is, and the result says why.
   */
  async adapt(dir: string, kind: string, spec: VmSpec, disks: StoredDisk[], signal?: AbortSignal): Promise<ImportResult['adaptation']> {
    const { sourceHypervisor, whyNotAdapt } = await import('../guest/route.js');
    const why = whyNotAdapt(sourceHypervisor(kind, spec), 'kvm');
    const none = (skipped: string): VmAdaptation => ({ target: 'kvm', changes: 0, skipped, problems: [], notes: [] });
    if (why) return none(why);
    if (disks.length === 0) return none('the VM has no disk');
    if (disks.some((d) => d.mode === 'persist' || d.source?.startsWith('nbd:'))) return none('its disks are the sources themselves or served over NBD (import it without --persist to adapt it)');
    const { adaptInPlace, guestDiskIndexes } = await import('../vm/adapt.js');
    const byIndex = new Map(disks.map((d) => [d.index, d.path]));
    const ordered = guestDiskIndexes(spec).flatMap((i) => (byIndex.has(i) ? [byIndex.get(i)!] : []));
    return adaptInPlace(ordered, { target: 'kvm', manifestPath: join(dir, 'adapt.manifest.json'), spec, signal });
  }

  /** Serves the disks QEMU cannot read from this process, and puts overlays over the exports. */
  async #serve(name: string, disks: Array<{ index: number; image: BlockImage }>): Promise<void> {
    const dir = this.vmDir(name);
    const { serveNbd } = await import('./nbd/server.js');
    const exports = Object.fromEntries(disks.map(({ index, image }) => [`disk${index}`, { image, writable: false, description: `source disk ${index}` }]));
    const server = await serveNbd({ socketPath: join(dir, 'nbd.sock'), exports });
    this.#servers.set(name, { server, images: disks.map((d) => d.image) });
    for (const { index, image } of disks) {
      // the size is given so qemu-img need not open the export; it runs as a child so this
      // process's server can answer if it does
      await run(this.#opts.qemuImg ?? 'qemu-img', ['create', '-q', '-f', 'qcow2', '-b', server.uri(`disk${index}`), '-F', 'raw', join(dir, `disk${index}.qcow2`), String(image.virtualSize)]);
    }
  }

  /**
   * The store's VMs with their state reconciled against the processes that really run.
   * A VM whose QEMU is gone is marked stopped (and its stale sockets removed).
   */
  list(): StoredVm[] {
    return this.store.listVms(LOCAL_HOST).map((vm) => this.#reconcile(vm));
  }

  get(name: string): StoredVm {
    return this.#reconcile(this.store.getVm(name));
  }

  #reconcile(vm: StoredVm): StoredVm {
    if (vm.state === 'stopped') return vm;
    if (vm.pid !== undefined && qemuAlive(vm.pid, join(this.vmDir(vm.name), 'qmp.sock'))) return vm;
    this.store.compareAndSetState(vm.name, vm.state, 'stopped');
    return { ...vm, state: 'stopped', pid: undefined, startedAt: undefined };
  }

  /** Registers the VM with the driver (and takes over its QEMU when it runs). */
  async #driverVm(vm: StoredVm): Promise<void> {
    const disks: Array<DiskAttachment | undefined> = vm.spec.disks.map(() => undefined);
    for (const d of vm.disks) disks[d.index] = { path: d.path, format: d.format };
    // a define for this process's driver only: it writes nothing but the VM's folder
    if (!(await this.#driver.list()).some((x) => x.name === vm.name)) await this.#driver.define({ spec: vm.spec, disks });
    if (vm.state !== 'stopped' && vm.pid !== undefined && !this.#driver.pid(vm.name)) await this.#driver.adopt(vm.name, vm.pid);
  }

  /** `paused`: the CPUs wait for resume(), so that a console attached first sees every byte */
  async start(name: string, opts: { paused?: boolean } = {}): Promise<StoredVm> {
    const vm = this.get(name);
    if (vm.state !== 'stopped') throw new PolyvisorError('ERR_VM_STATE', `${name} is already ${vm.state}`);
    const nbd = vm.disks.find((d) => d.source?.startsWith('nbd:'));
    if (nbd && !this.#servers.has(name)) {
      throw new PolyvisorError('ERR_VM_STATE', `${name}: disk ${nbd.label} was served by the polyvisor run that imported it, which has ended; import the VM again`);
    }
    await this.#driverVm(vm);
    await this.#driver.start(name, { paused: opts.paused });
    const pid = this.#driver.pid(name);
    this.store.setState(name, opts.paused ? 'paused' : 'running', { pid, startedAt: new Date().toISOString() });
    return this.store.getVm(name);
  }

  /** ACPI power-off, forced after `timeoutMs` (default 30 s). */
  async stop(name: string, opts: { timeoutMs?: number } = {}): Promise<StopResult> {
    const vm = this.get(name);
    if (vm.state === 'stopped') return 'graceful';
    await this.#driverVm(vm);
    const r = await this.#driver.stop(name, { timeoutMs: opts.timeoutMs });
    this.store.setState(name, 'stopped');
    return r;
  }

  async kill(name: string): Promise<void> {
    const vm = this.get(name);
    if (vm.state === 'stopped') return;
    await this.#driverVm(vm);
    await this.#driver.kill(name);
    this.store.setState(name, 'stopped');
  }

  async pause(name: string): Promise<void> {
    const vm = this.get(name);
    if (vm.state !== 'running') throw new PolyvisorError('ERR_VM_STATE', `${name} is ${vm.state}, not running`);
    await this.#driverVm(vm);
    await this.#driver.pause(name);
    this.store.setState(name, 'paused', { pid: vm.pid, startedAt: vm.startedAt });
  }

  async resume(name: string): Promise<void> {
    const vm = this.get(name);
    if (vm.state !== 'paused') throw new PolyvisorError('ERR_VM_STATE', `${name} is ${vm.state}, not paused`);
    await this.#driverVm(vm);
    await this.#driver.resume(name);
    this.store.setState(name, 'running', { pid: vm.pid, startedAt: vm.startedAt });
  }

  /** The serial console of a running VM, as a byte stream both ways. */
  async console(name: string): Promise<Duplex> {
    const vm = this.get(name);
    if (vm.state === 'stopped') throw new PolyvisorError('ERR_VM_STATE', `${name} is not running (polyvisor start ${name})`);
    await this.#driverVm(vm);
    return this.#driver.console(name);
  }

  /** Resolves when the VM's QEMU has ended; false when `timeoutMs` passed first. */
  async waitForStop(name: string, timeoutMs: number): Promise<boolean> {
    const vm = this.get(name);
    if (vm.state === 'stopped') return true;
    await this.#driverVm(vm);
    const ended = await this.#driver.waitForExit(name, timeoutMs);
    if (ended) this.store.compareAndSetState(name, this.store.getVm(name).state, 'stopped');
    return ended;
  }

  async screenshot(name: string, pngPath: string): Promise<void> {
    const vm = this.get(name);
    await this.#driverVm(vm);
    await this.#driver.screenshot(name, pngPath);
  }

  /** Removes a VM and its folder (overlays, copies); the source is not touched. */
  async remove(name: string, opts: { force?: boolean } = {}): Promise<void> {
    const vm = this.get(name);
    if (vm.state !== 'stopped') {
      if (!opts.force) throw new PolyvisorError('ERR_VM_STATE', `${name} is ${vm.state}; stop it first, or use --force`);
      await this.kill(name);
    }
    await this.#stopServing(name);
    this.store.removeVm(name);
    await this.#driver.undefine(name).catch(() => undefined);
    await rm(this.vmDir(name), { recursive: true, force: true });
  }

  /** Ends the NBD server of a transient import, if it has one. */
  async #stopServing(name: string): Promise<void> {
    const served = this.#servers.get(name);
    if (!served) return;
    this.#servers.delete(name);
    await served.server.close().catch(() => undefined);
    for (const img of served.images) await img.close().catch(() => undefined);
  }

  /** Closes this process's connections; VMs keep running. */
  async close(): Promise<void> {
    for (const [, s] of this.#servers) {
      await s.server.close().catch(() => undefined);
      for (const img of s.images) await img.close().catch(() => undefined);
    }
    this.#servers.clear();
    await this.#driver.dispose();
    this.#store?.close();
  }
}

/** A store name from a descriptor's VM name: what is left after unsafe characters go. */
export function storeName(specName: string): string {
  const n = specName.replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^[^A-Za-z0-9]+/, '').slice(0, 64);
  return n || 'vm';
}
