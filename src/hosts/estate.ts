/**
 * The estate: every host Polyvisor manages and the VMs on them, behind one set of verbs, so the
 * CLI (and later the server) never asks which hypervisor a VM runs on. The local QEMU engine is
 * the host named "local" (./local.ts); hosts added with `polyvisor host add` are reached through
 * their driver (xl over SSH: ./xen/driver.ts). The store records which host each VM is on.
 *
 * Moving a VM between hosts goes through the same neutral pieces as everything else: the disks
 * through Polyvisor's disk engine (converted on the way to what the target keeps), the
 * descriptor through the VmSpec and the target's codec.
 */
import { randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { PolyvisorError } from '../errors.js';
import type { HostOptions, StoredDisk, StoredHost, StoredVm, StoredVmState } from '../store/store.js';
import type { ConversionNote } from '../vm/codec.js';
import type { DiskAttachment, StopResult } from './driver.js';
import { LOCAL_HOST, LocalHost, type ImportResult, type LocalHostOptions } from './local.js';
import type { XenDriver } from './xen/driver.js';

/** Host names: what the store and messages use (the local engine is "local"). */
const HOST_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export interface EstateVm extends StoredVm {
  /** set when the VM's host could not be asked; `state` is then the last one recorded */
  unreachable?: string;
}

export class Estate {
  readonly local: LocalHost;
  readonly #drivers = new Map<string, XenDriver>();
  readonly #dataDir: string;

  constructor(opts: LocalHostOptions) {
    this.local = new LocalHost(opts);
    this.#dataDir = this.local.dataDir;
  }

  get store() {
    return this.local.store;
  }

  // ---------- hosts ----------

  /** Adds a host after checking that its toolstack answers (unless `check` is false). */
  async addHost(name: string, uri: string, options: HostOptions & { check?: boolean } = {}): Promise<StoredHost> {
    if (!HOST_NAME.test(name) || name === LOCAL_HOST) throw new PolyvisorError('ERR_USAGE', `host name ${JSON.stringify(name)}: use letters, digits, '.', '_' and '-' ("local" is the local engine)`);
    if (!uri.startsWith('xen+ssh://')) throw new PolyvisorError('ERR_USAGE', `host URI ${JSON.stringify(uri)}: Polyvisor reaches Xen hosts as xen+ssh://[user@]host[:port]`);
    const { parseXenUri } = await import('./xen/uri.js');
    parseXenUri(uri);
    const host = { name, uri, driver: 'xen', options: { identityFile: options.identityFile, storageDir: options.storageDir } };
    if (options.check !== false) {
      const driver = await this.#newDriver(host);
      try {
        await driver.domains();
      } finally {
        await driver.dispose();
      }
    }
    return this.store.addHost(host);
  }

  async #newDriver(host: { uri: string; options: HostOptions }): Promise<XenDriver> {
    const { XenDriver } = await import('./xen/driver.js');
    return new XenDriver({ uri: host.uri, identityFile: host.options.identityFile, storageDir: host.options.storageDir, dataDir: this.#dataDir });
  }

  /** The driver of a remote host (one SSH session per host per process). */
  async driver(hostName: string): Promise<XenDriver> {
    let d = this.#drivers.get(hostName);
    if (!d) {
      d = await this.#newDriver(this.store.getHost(hostName));
      this.#drivers.set(hostName, d);
    }
    return d;
  }

  // ---------- VMs ----------

  /** Brings a VM from any source onto `host` (default: the local engine). */
  async import(source: string, opts: Parameters<LocalHost['import']>[1] & { host?: string } = {}): Promise<ImportResult> {
    const host = opts.host ?? LOCAL_HOST;
    if (host === LOCAL_HOST) return this.local.import(source, opts);
    const { storeName } = await import('./local.js');
    const { openVmSource, withHostBootFiles } = await import('../vm/source.js');
    const { checkVmName } = await import('../store/store.js');
    const driver = await this.driver(host);
    const src = await openVmSource(source, { allowOutsidePaths: opts.allowOutsidePaths });
    try {
      const name = opts.name ?? storeName(src.spec.name);
      checkVmName(name);
      if (this.store.findVm(name)) throw new PolyvisorError('ERR_EXISTS', `a VM named ${name} already exists (choose another with --name)`);
      const spec = { ...(await withHostBootFiles(src, { allowOutsidePaths: opts.allowOutsidePaths })), name };
      const disks: Array<DiskAttachment | undefined> = spec.disks.map(() => undefined);
      for (const d of src.disks) disks[d.index] = { format: 'raw', open: () => d.open() };
      await driver.define({ spec, disks });
      return { vm: this.store.addVm({ name, uuid: spec.uuid ?? randomUUID(), host, source, sourceKind: src.kind, spec, disks: this.#hostDisks(driver, name, disks) }), notes: [...src.notes, ...driver.notes(name)] };
    } finally {
      await src.close();
    }
  }

  #hostDisks(driver: XenDriver, name: string, disks: Array<DiskAttachment | undefined>): StoredDisk[] {
    const out: StoredDisk[] = [];
    disks.forEach((d, index) => {
      if (d) out.push({ index, label: `disk${index}`, mode: 'host', path: `${driver.folderOf(name)}/disk${index}.raw`, format: 'raw' });
    });
    return out;
  }

  /** Every VM of every host, with its state as the host reports it now. */
  async list(): Promise<EstateVm[]> {
    const all: EstateVm[] = this.local.list();
    const remote = this.store.listVms().filter((v) => v.host !== LOCAL_HOST);
    const hosts = [...new Set(remote.map((v) => v.host))];
    await Promise.all(
      hosts.map(async (h) => {
        const vms = remote.filter((v) => v.host === h);
        try {
          const seen = new Map((await (await this.driver(h)).list()).map((e) => [e.name, e.state]));
          for (const v of vms) {
            const state: StoredVmState = seen.get(v.name) === 'running' ? 'running' : seen.get(v.name) === 'paused' ? 'paused' : 'stopped';
            if (state !== v.state) this.store.setState(v.name, state);
            all.push({ ...v, state, pid: undefined });
          }
        } catch (e) {
          for (const v of vms) all.push({ ...v, unreachable: (e as Error).message });
        }
      }),
    );
    return all.sort((a, b) => a.name.localeCompare(b.name));
  }

  #vm(name: string): StoredVm {
    return this.store.getVm(name);
  }

  async start(name: string): Promise<StoredVm> {
    const vm = this.#vm(name);
    if (vm.host === LOCAL_HOST) return this.local.start(name);
    await (await this.driver(vm.host)).start(name);
    this.store.setState(name, 'running', { startedAt: new Date().toISOString() });
    return this.store.getVm(name);
  }

  async stop(name: string, opts: { timeoutMs?: number } = {}): Promise<StopResult> {
    const vm = this.#vm(name);
    if (vm.host === LOCAL_HOST) return this.local.stop(name, opts);
    const r = await (await this.driver(vm.host)).stop(name, opts);
    this.store.setState(name, 'stopped');
    return r;
  }

  async kill(name: string): Promise<void> {
    const vm = this.#vm(name);
    if (vm.host === LOCAL_HOST) return this.local.kill(name);
    await (await this.driver(vm.host)).kill(name);
    this.store.setState(name, 'stopped');
  }

  async pause(name: string): Promise<void> {
    const vm = this.#vm(name);
    if (vm.host === LOCAL_HOST) return this.local.pause(name);
    await (await this.driver(vm.host)).pause(name);
    this.store.setState(name, 'paused');
  }

  async resume(name: string): Promise<void> {
    const vm = this.#vm(name);
    if (vm.host === LOCAL_HOST) return this.local.resume(name);
    await (await this.driver(vm.host)).resume(name);
    this.store.setState(name, 'running');
  }

  async console(name: string): Promise<Duplex> {
    const vm = this.#vm(name);
    if (vm.host === LOCAL_HOST) return this.local.console(name);
    return (await this.driver(vm.host)).console(name);
  }

  /** Removes a VM from the store and from its host (its files there included). */
  async remove(name: string, opts: { force?: boolean } = {}): Promise<void> {
    const vm = this.#vm(name);
    if (vm.host === LOCAL_HOST) return this.local.remove(name, opts);
    const driver = await this.driver(vm.host);
    if (opts.force) await driver.kill(name);
    await driver.undefine(name);
    this.store.removeVm(name);
  }

  /**
   * Moves a stopped VM to another host: its disks are read through the disk engine and
   * written where the target keeps them, its descriptor re-encoded by the target's codec; the
   * VM is then removed from the host it left. Returns the notes of what the target could not
   * carry.
   */
  async move(name: string, to: string): Promise<ImportResult> {
    const vm = (await this.list()).find((v) => v.name === name);
    if (!vm) throw new PolyvisorError('ERR_NOT_FOUND', `no VM named ${name} (polyvisor ps -a lists them)`);
    if (vm.host === to) throw new PolyvisorError('ERR_USAGE', `${name} is already on ${to}`);
    if (vm.state !== 'stopped') throw new PolyvisorError('ERR_VM_STATE', `${name} is ${vm.state}; stop it before moving it`);
    if (to !== LOCAL_HOST) this.store.getHost(to);
    if (vm.host === LOCAL_HOST) return this.#toRemote(vm, to);
    if (to === LOCAL_HOST) return this.#toLocal(vm);
    // between two remote hosts: through a local copy, then on
    await this.#toLocal(vm);
    return this.#toRemote(this.store.getVm(name), to);
  }

  async #toRemote(vm: StoredVm, to: string): Promise<{ vm: StoredVm; notes: ConversionNote[] }> {
    const { openImage } = await import('../disk/chain.js');
    const driver = await this.driver(to);
    const disks: Array<DiskAttachment | undefined> = vm.spec.disks.map(() => undefined);
    // the VM's own disks: overlays Polyvisor made over sources it already vetted at import
    for (const d of vm.disks) disks[d.index] = { format: d.format, open: () => openImage(d.path, { format: d.format, allowOutsidePaths: true }) };
    await driver.define({ spec: vm.spec, disks });
    const spec = vm.spec;
    this.store.relocateVm(vm.name, { host: to, disks: this.#hostDisks(driver, vm.name, disks), spec });
    await rm(this.local.vmDir(vm.name), { recursive: true, force: true });
    return { vm: this.store.getVm(vm.name), notes: driver.notes(vm.name) };
  }

  async #toLocal(vm: StoredVm): Promise<ImportResult> {
    const driver = await this.driver(vm.host);
    const dir = this.local.vmDir(vm.name);
    let spec;
    try {
      spec = await driver.export(vm.name, dir);
    } catch (e) {
      await rm(dir, { recursive: true, force: true });
      throw e;
    }
    const disks: StoredDisk[] = [];
    spec.disks.forEach((d, index) => {
      if (d.file) disks.push({ index, label: d.file, mode: 'copy', path: d.file, format: d.format ?? 'raw' });
    });
    // a guest from Xen is adapted for the local engine, as an import is
    const adaptation = await this.local.adapt(dir, 'xl', spec, disks);
    this.store.relocateVm(vm.name, { host: LOCAL_HOST, disks, spec: { ...spec, name: vm.name } });
    await driver.undefine(vm.name);
    return { vm: this.store.getVm(vm.name), notes: [], adaptation };
  }

  /** Where a local VM's console log is. */
  serialLog(name: string): string {
    return join(this.local.vmDir(name), 'serial.log');
  }

  async close(): Promise<void> {
    for (const d of this.#drivers.values()) await d.dispose().catch(() => undefined);
    this.#drivers.clear();
    await this.local.close();
  }
}
