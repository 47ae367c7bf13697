/**
 * The estate: every host Polyvisor manages and the VMs on them, behind one set of verbs, so the
 * CLI (and later the server) never asks which hypervisor a VM runs on. The local QEMU engine is
 * the host named "local" (./local.ts); hosts added with `polyvisor host add` are reached through
 * their driver (xl over SSH: ./xen/driver.ts). The store records which host each VM is on.
 *
 * Moving a VM between hosts goes through the same neutral pieces as everything else: the disks
 * through Polyvisor's disk engine (converted on the way to what the target keeps), the
 * descriptor through the VmSpec and the target's codec.
 *
 * A Linux guest going onto a Xen host from another hypervisor is adapted for Xen PV on the way
 * (../vm/adapt.ts, staged: the disks are adapted in overlays here before they travel, since
 * on the host they are raw files Polyvisor no longer edits), and an HVM spec becomes a PV
 * domain booted by pygrub, the way the xl driver runs guests on hosts without VT-x. The
 * manifest stays in the data folder, hosts/HOST/NAME/adapt.manifest.json, while the VM is there.
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { PolyvisorError } from '../errors.js';
import type { HostOptions, StoredDisk, StoredHost, StoredVm, StoredVmState } from '../store/store.js';
import type { StagedSource, VmAdaptation } from '../vm/adapt.js';
import type { ConversionNote, VmSource } from '../vm/codec.js';
import type { VmSpec } from '../vm/spec.js';
import type { DiskAttachment, StopResult } from './driver.js';
import { LOCAL_HOST, LocalHost, type ImportResult, type LocalHostOptions } from './local.js';
import type { XenDriver } from './xen/driver.js';
import { crypto } from '../util/builtins.js';

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
    const { sourceHypervisor } = await import('../guest/route.js');
    const driver = await this.driver(host);
    const src = await openVmSource(source, { allowOutsidePaths: opts.allowOutsidePaths });
    try {
      const name = opts.name ?? storeName(src.spec.name);
      checkVmName(name);
      if (this.store.findVm(name)) throw new PolyvisorError('ERR_EXISTS', `a VM named ${name} already exists (choose another with --name)`);
      const spec = { ...(await withHostBootFiles(src, { allowOutsidePaths: opts.allowOutsidePaths })), name };
      const r = await this.#defineOnXen(driver, host, { ...src, spec }, sourceHypervisor(src.kind, src.spec), opts);
      const vm = this.store.addVm({ name, uuid: spec.uuid ?? crypto().randomUUID(), host, source, sourceKind: src.kind, spec: r.spec, disks: r.disks });
      return { vm, notes: [...src.notes, ...r.notes], adaptation: r.adaptation };
    } finally {
      await src.close();
    }
  }

  /** Where the store keeps what belongs to a VM on a remote host (its adaptation manifest). */
  #recordDir(host: string, name: string): string {
    return join(this.#dataDir, 'hosts', host, name);
  }

  /**
   * Defines `source` (its spec named as the VM will be) on a Xen host: a guest from another
   * hypervisor (`from`, as ../guest/route.ts names them) is first adapted for Xen PV in staging
   * overlays, which then travel to the host as raw disks.
   */
  async #defineOnXen(
    driver: XenDriver,
    host: string,
    source: VmSource,
    from: string | undefined,
    opts: { adapt?: boolean; signal?: AbortSignal },
  ): Promise<{ spec: VmSpec; disks: StoredDisk[]; notes: ConversionNote[]; adaptation?: VmAdaptation }> {
    const name = source.spec.name;
    const record = this.#recordDir(host, name);
    let adaptation: VmAdaptation | undefined;
    let staged: StagedSource | undefined;
    let carried = source;
    let spec = source.spec;
    const notes: ConversionNote[] = [];
    try {
      if (opts.adapt !== false) {
        const { whyNotAdapt, asXenPv } = await import('../guest/route.js');
        const why = whyNotAdapt(from, 'xen-pv');
        if (why) adaptation = { target: 'xen-pv', changes: 0, problems: [], notes: [], skipped: why };
        else {
          const { stageAdapted } = await import('../vm/adapt.js');
          await rm(record, { recursive: true, force: true });
          await mkdir(record, { recursive: true });
          staged = await stageAdapted(source, join(record, `.stage-${crypto().randomBytes(4).toString('hex')}`), { target: 'xen-pv', manifestPath: join(record, 'adapt.manifest.json'), spec, signal: opts.signal });
          adaptation = staged.adaptation;
          carried = staged.source;
          if (adaptation.manifest && spec.virtualization === 'hvm') {
            if (adaptation.problems.length === 0) {
              spec = asXenPv(spec);
              notes.push({ setting: 'virtualization', action: 'changed', from: 'hvm', to: 'pv', reason: "the guest was adapted for Xen PV: pygrub boots the kernel named by the guest's own grub.cfg" });
            } else {
              notes.push({ setting: 'virtualization', action: 'kept', from: 'hvm', reason: `the guest was adapted for Xen PV but cannot boot as a PV guest yet (${adaptation.problems.join('; ')}): it stays an HVM guest, which needs a host with VT-x or AMD-V` });
            }
          }
        }
      }
      const disks: Array<DiskAttachment | undefined> = spec.disks.map(() => undefined);
      for (const d of carried.disks) disks[d.index] = { format: 'raw', open: () => d.open() };
      await driver.define({ spec, disks });
      return { spec, disks: this.#hostDisks(driver, name, disks), notes: [...notes, ...driver.notes(name)], adaptation };
    } catch (e) {
      await rm(record, { recursive: true, force: true });
      throw e;
    } finally {
      await staged?.dispose();
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
    await rm(this.#recordDir(vm.host, name), { recursive: true, force: true });
  }

  /**
   * Moves a stopped VM to another host: its disks are read through the disk engine and
   * written where the target keeps them, its descriptor re-encoded by the target's codec; the
   * VM is then removed from the host it left. Returns the notes of what the target could not
   * carry.
   */
  async move(name: string, to: string, opts: { adapt?: boolean; signal?: AbortSignal } = {}): Promise<ImportResult> {
    const vm = (await this.list()).find((v) => v.name === name);
    if (!vm) throw new PolyvisorError('ERR_NOT_FOUND', `no VM named ${name} (polyvisor ps -a lists them)`);
    if (vm.host === to) throw new PolyvisorError('ERR_USAGE', `${name} is already on ${to}`);
    if (vm.state !== 'stopped') throw new PolyvisorError('ERR_VM_STATE', `${name} is ${vm.state}; stop it before moving it`);
    if (to !== LOCAL_HOST) this.store.getHost(to);
    // a guest that ran on the local engine is adapted for Xen (what it ran there may have
    // changed since it came); one only passing through from another Xen host is not
    if (vm.host === LOCAL_HOST) return this.#toRemote(vm, to, 'kvm', opts);
    if (to === LOCAL_HOST) return this.#toLocal(vm, opts);
    // between two remote hosts: through a local copy, then on
    await this.#toLocal(vm, { ...opts, adapt: false });
    return this.#toRemote(this.store.getVm(name), to, 'xen-pv', opts);
  }

  async #toRemote(vm: StoredVm, to: string, from: string, opts: { adapt?: boolean; signal?: AbortSignal }): Promise<ImportResult> {
    const { openImage } = await import('../disk/chain.js');
    const driver = await this.driver(to);
    // the VM's own disks: overlays Polyvisor made over sources it already vetted at import
    const source: VmSource = {
      path: this.local.vmDir(vm.name),
      kind: 'local',
      spec: vm.spec,
      disks: vm.disks.map((d) => ({ index: d.index, label: d.label, open: () => openImage(d.path, { format: d.format, allowOutsidePaths: true }) })),
      notes: [],
      close: async () => undefined,
    };
    const r = await this.#defineOnXen(driver, to, source, from, opts);
    this.store.relocateVm(vm.name, { host: to, disks: r.disks, spec: r.spec });
    await rm(this.local.vmDir(vm.name), { recursive: true, force: true });
    return { vm: this.store.getVm(vm.name), notes: r.notes, adaptation: r.adaptation };
  }

  async #toLocal(vm: StoredVm, opts: { adapt?: boolean; signal?: AbortSignal }): Promise<ImportResult> {
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
    const adaptation = opts.adapt === false ? undefined : await this.local.adapt(dir, 'xl', spec, disks, opts.signal);
    this.store.relocateVm(vm.name, { host: LOCAL_HOST, disks, spec: { ...spec, name: vm.name } });
    await driver.undefine(vm.name);
    // its adaptation manifest on that host described disks that are no longer there
    await rm(this.#recordDir(vm.host, vm.name), { recursive: true, force: true });
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
