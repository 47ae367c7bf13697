/**
 * A Linux guest kernel's modules: what /lib/modules/<version>/ says (modules.dep,
 * modules.builtin, modules.softdep, modules.alias) and /boot/config-<version>, and the table of
 * the hypervisor drivers Polyvisor cares about.
 *
 * Exported API (used by inspection and adaptation; names are kept stable):
 *   DRIVERS                                  the driver groups table, modprobe's module names
 *   KCONFIG                                  each DRIVERS module's Kconfig symbol
 *   readKernelModules(files, version)        -> KernelModules (reads the tree through any GuestFiles)
 *   KernelModules.status(name)               -> 'builtin' | 'module' | 'absent'
 *   KernelModules.resolveDeps(names, opts)   -> module names in load order (dependencies first)
 *   KernelModules.path(name)                 -> the module file's guest path
 *   moduleName(pathOrName)                   -> "xen_blkfront" for "kernel/drivers/block/xen-blkfront.ko.xz"
 *   parseModulesDep / parseModulesBuiltin / parseKernelConfig / parseSoftdeps: the file parsers
 *
 * File formats are kmod's and depmod's (depmod(8), modules.dep(5), modprobe.d(5)):
 * modules.dep has one line per module, "path: dep dep ...", paths relative to the version's
 * folder and dependencies listed so that modprobe loads them from the last to the first;
 * modules.builtin lists the paths of modules built into the kernel; modules.softdep holds
 * "softdep MOD pre: A B post: C" lines; modules.alias "alias PATTERN MODULE". Module names
 * compare as modprobe compares them: "-" and "_" are the same character.
 *
 * A driver counts as present when it is built in (modules.builtin, or CONFIG_X=y in
 * /boot/config-<version>) or when its module file exists. Paths go through the guest's own
 * symlinks (Debian's /lib -> usr/lib), resolved inside the guest by the GuestFiles given.
 */
import { PolyvisorError, isPolyvisorError } from '../errors.js';
import type { GuestFiles } from './open.js';
import { readTextFile } from './open.js';

/** The hypervisor and controller drivers, by family and role, in modprobe's names. */
export const DRIVERS = {
  /** KVM and QEMU: virtio over PCI; virtio_pci is the transport every virtio device needs */
  virtio: { storage: ['virtio_blk', 'virtio_scsi'], network: ['virtio_net'], bus: ['virtio_pci'] },
  /** Xen's paravirtual front ends (PV, PVH, and HVM with PV drivers) */
  xen: { storage: ['xen_blkfront'], network: ['xen_netfront'], bus: [] },
  /** Hyper-V's synthetic devices on VMBus; hv_utils carries the integration services */
  hyperv: { storage: ['hv_storvsc'], network: ['hv_netvsc'], bus: ['hv_vmbus', 'hv_utils'] },
  /** VMware's paravirtual SCSI and NIC */
  vmware: { storage: ['vmw_pvscsi'], network: ['vmxnet3'], bus: [] },
  /** LSI Logic parallel SCSI and SAS (VMware, VirtualBox, Virtual Server) */
  lsi: { storage: ['mptspi', 'mptsas'], network: [], bus: [] },
  /** SATA AHCI (VMware SATA, QEMU q35, VirtualBox) */
  ahci: { storage: ['ahci'], network: [], bus: [] },
  nvme: { storage: ['nvme'], network: [], bus: [] },
  /** IDE on the PC's PIIX3/4 under libata (Xen HVM, Hyper-V Gen 1, QEMU pc) */
  ide: { storage: ['ata_piix', 'ata_generic'], network: [], bus: [] },
  /** SCSI disks: every SCSI, SATA and IDE disk under libata reaches the guest through sd_mod */
  scsi: { storage: ['sd_mod'], network: [], bus: [] },
  /** emulated NICs hypervisors offer besides their paravirtual ones */
  emulated: { storage: [], network: ['e1000', 'e1000e'], bus: [] },
} as const satisfies Record<string, { storage: readonly string[]; network: readonly string[]; bus: readonly string[] }>;

export type DriverFamily = keyof typeof DRIVERS;
export type DriverRole = 'storage' | 'network' | 'bus';

/** Each DRIVERS module's Kconfig symbol (the kernel's Kconfig files), for kernels that record a config but no modules.builtin. */
export const KCONFIG: Record<string, string> = {
  virtio_blk: 'VIRTIO_BLK',
  virtio_scsi: 'SCSI_VIRTIO',
  virtio_net: 'VIRTIO_NET',
  virtio_pci: 'VIRTIO_PCI',
  xen_blkfront: 'XEN_BLKDEV_FRONTEND',
  xen_netfront: 'XEN_NETDEV_FRONTEND',
  hv_storvsc: 'HYPERV_STORAGE',
  hv_netvsc: 'HYPERV_NET',
  hv_vmbus: 'HYPERV',
  hv_utils: 'HYPERV_UTILS',
  vmw_pvscsi: 'VMWARE_PVSCSI',
  vmxnet3: 'VMXNET3',
  mptspi: 'FUSION_SPI',
  mptsas: 'FUSION_SAS',
  ahci: 'SATA_AHCI',
  nvme: 'BLK_DEV_NVME',
  ata_piix: 'ATA_PIIX',
  ata_generic: 'ATA_GENERIC',
  sd_mod: 'BLK_DEV_SD',
  e1000: 'E1000',
  e1000e: 'E1000E',
  ext4: 'EXT4_FS',
  xfs: 'XFS_FS',
  btrfs: 'BTRFS_FS',
  vfat: 'VFAT_FS',
  dm_mod: 'BLK_DEV_DM',
  dm_crypt: 'DM_CRYPT',
};

/** Every module named in DRIVERS, with its family and role. */
export function driverList(): { name: string; family: DriverFamily; role: DriverRole }[] {
  const out: { name: string; family: DriverFamily; role: DriverRole }[] = [];
  for (const family of Object.keys(DRIVERS) as DriverFamily[]) {
    for (const role of ['storage', 'network', 'bus'] as const) {
      for (const name of DRIVERS[family][role] as readonly string[]) out.push({ name, family, role });
    }
  }
  return out;
}

export type ModuleStatus = 'builtin' | 'module' | 'absent';

export interface ModuleEntry {
  name: string;
  /** as modules.dep lists it: relative to the version's folder ("kernel/fs/ext4/ext4.ko") */
  path: string;
  /** module names, in modules.dep's order (modprobe loads them last to first) */
  deps: string[];
}

export interface Softdep {
  pre: string[];
  post: string[];
}

export interface ResolveOptions {
  /** also bring the modules modules.softdep names ("softdep ext4 pre: crypto-crc32c"), resolved through modules.alias */
  softdeps?: boolean;
}

/** The largest modules.* file read (Debian's modules.alias is 1.3 MiB). */
const MAX_INDEX_FILE = 64 << 20;
const MAX_CONFIG = 16 << 20;
/** Depth of the dependency walk: real chains are under 10. */
const MAX_DEPTH = 64;
/** Files listed when modules.dep is missing and the tree is walked instead. */
const MAX_WALK = 100_000;

/** modprobe's name: dashes become underscores, the folder and ".ko[.xz|.zst|.gz]" go. */
export function moduleName(pathOrName: string): string {
  const base = pathOrName.slice(pathOrName.lastIndexOf('/') + 1);
  return base.replace(/\.ko(\.(xz|zst|gz))?$/, '').replace(/-/g, '_');
}

/** modules.dep: "kernel/a.ko: kernel/b.ko kernel/c.ko" per line. */
export function parseModulesDep(text: string, file = 'modules.dep'): Map<string, ModuleEntry> {
  const out = new Map<string, ModuleEntry>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (!line || line.startsWith('#')) continue;
    const colon = line.indexOf(':');
    if (colon <= 0) throw new PolyvisorError('ERR_CORRUPT', `line ${i + 1} has no "module: dependencies" form`, { file });
    const path = line.slice(0, colon).trim();
    const deps = line.slice(colon + 1).trim().split(/\s+/).filter(Boolean).map(moduleName);
    const name = moduleName(path);
    // depmod lists each module once; a duplicate (a hand-edited file) keeps the first, as modprobe does
    if (!out.has(name)) out.set(name, { name, path, deps });
  }
  return out;
}

/** modules.builtin: one module path per line. */
export function parseModulesBuiltin(text: string): Set<string> {
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    const t = line.trim();
    if (t && !t.startsWith('#')) out.add(moduleName(t));
  }
  return out;
}

/** A kernel .config: CONFIG_X=y / =m / ="string", and "# CONFIG_X is not set" as "n". */
export function parseKernelConfig(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of text.matchAll(/^(?:CONFIG_([A-Za-z0-9_]+)=(.*)|# CONFIG_([A-Za-z0-9_]+) is not set)$/gm)) {
    if (m[1]) out.set(m[1], m[2]!.trim());
    else out.set(m[3]!, 'n');
  }
  return out;
}

/**
 * modules.softdep (and modprobe.d's softdep lines): "softdep MOD pre: A B post: C". As kmod
 * does (libkmod-module.c, kmod_module_get_softdeps takes the first match), only the first line
 * for a module counts: depmod writes one line per MODULE_SOFTDEP, and modprobe loads the first.
 */
export function parseSoftdeps(text: string): Map<string, Softdep> {
  const out = new Map<string, Softdep>();
  for (const line of text.split('\n')) {
    const words = line.trim().split(/\s+/);
    if (words[0] !== 'softdep' || words.length < 3) continue;
    const mod = moduleName(words[1]!);
    if (out.has(mod)) continue;
    const sd: Softdep = { pre: [], post: [] };
    let into: string[] = sd.pre; // kmod: names before any "pre:"/"post:" count as pre
    for (const w of words.slice(2)) {
      if (w === 'pre:') into = sd.pre;
      else if (w === 'post:') into = sd.post;
      else into.push(w);
    }
    out.set(mod, sd);
  }
  return out;
}

/** modules.alias: exact (non-glob) aliases only, which is what softdeps name. */
function parseAliases(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const m of text.matchAll(/^alias\s+(\S+)\s+(\S+)\s*$/gm)) {
    const alias = m[1]!;
    if (/[*?[]/.test(alias)) continue;
    const mods = out.get(alias) ?? [];
    mods.push(moduleName(m[2]!));
    out.set(alias, mods);
  }
  return out;
}

export interface KernelModulesInit {
  version: string;
  /** the tree's folder in the guest: "/lib/modules/6.1.0-50-amd64" */
  dir: string;
  /** from modules.dep (or, without it, from walking the folder: then no dependencies are known) */
  modules: Map<string, ModuleEntry>;
  builtin: Set<string>;
  /** /boot/config-<version>, when the guest has it */
  config: Map<string, string> | null;
  softdeps: Map<string, Softdep>;
  /** things the report should say: a missing modules.dep, a missing tree */
  warnings: string[];
}

/** The modules of one installed kernel. */
export class KernelModules implements KernelModulesInit {
  declare readonly version: string;
  declare readonly dir: string;
  declare readonly modules: Map<string, ModuleEntry>;
  declare readonly builtin: Set<string>;
  declare readonly config: Map<string, string> | null;
  declare readonly softdeps: Map<string, Softdep>;
  declare readonly warnings: string[];
  readonly #files: GuestFiles;
  readonly #exists = new Map<string, boolean>();
  #aliases: Map<string, string[]> | undefined;

  constructor(files: GuestFiles, init: KernelModulesInit) {
    this.#files = files;
    Object.assign(this, init);
  }

  /** The module file's path in the guest, when the tree lists it. */
  path(name: string): string | undefined {
    const m = this.modules.get(moduleName(name));
    return m ? `${this.dir}/${m.path}` : undefined;
  }

  isBuiltin(name: string): boolean {
    const n = moduleName(name);
    if (this.builtin.has(n)) return true;
    const sym = KCONFIG[n];
    return !!(sym && this.config?.get(sym) === 'y');
  }

  /** built in, present as a module file, or absent */
  async status(name: string): Promise<ModuleStatus> {
    if (this.isBuiltin(name)) return 'builtin';
    const path = this.path(name);
    if (!path) return 'absent';
    let ok = this.#exists.get(path);
    if (ok === undefined) {
      ok = await this.#files.exists(path);
      this.#exists.set(path, ok);
    }
    return ok ? 'module' : 'absent';
  }

  /**
   * The modules to load for `names`, dependencies first, each once; built-in modules are left
   * out (there is nothing to load). An unknown name is ERR_NOT_FOUND; a dependency loop is
   * ERR_CORRUPT.
   */
  async resolveDeps(names: readonly string[], options: ResolveOptions = {}): Promise<string[]> {
    const order: string[] = [];
    const done = new Set<string>();
    const active = new Set<string>();
    const aliases = options.softdeps ? await this.#loadAliases() : undefined;
    const expand = (n: string): string[] => {
      const m = moduleName(n);
      if (this.modules.has(m) || this.isBuiltin(m)) return [m];
      return aliases?.get(n) ?? aliases?.get(m) ?? [];
    };
    const visit = (name: string, depth: number, from: string | null, optional: boolean) => {
      const n = moduleName(name);
      if (done.has(n)) return;
      // a soft dependency back onto a module being loaded is skipped, as kmod's visited flag skips it
      if (active.has(n) && optional) return;
      if (active.has(n)) throw new PolyvisorError('ERR_CORRUPT', `module ${n} depends on itself (through ${from})`, { file: `${this.dir}/modules.dep` });
      if (depth > MAX_DEPTH) throw new PolyvisorError('ERR_CORRUPT', `dependencies of ${n} are nested deeper than ${MAX_DEPTH}`, { file: `${this.dir}/modules.dep` });
      if (this.isBuiltin(n) && !this.modules.has(n)) {
        done.add(n);
        return;
      }
      const m = this.modules.get(n);
      if (!m) {
        if (optional) return;
        throw new PolyvisorError('ERR_NOT_FOUND', `kernel ${this.version} has no module ${n}${from ? ` (needed by ${from})` : ''}`, { file: `${this.dir}/modules.dep` });
      }
      active.add(n);
      // modules.dep lists dependencies so that modprobe loads them from the last to the first;
      // then the module's own "pre" soft dependencies, the module, its "post" ones (kmod's
      // __kmod_module_get_probe_list order)
      for (let i = m.deps.length - 1; i >= 0; i--) visit(m.deps[i]!, depth + 1, n, false);
      const sd = options.softdeps ? this.softdeps.get(n) : undefined;
      for (const pre of sd?.pre ?? []) for (const x of expand(pre)) visit(x, depth + 1, n, true);
      active.delete(n);
      done.add(n);
      if (!this.isBuiltin(n)) order.push(n);
      for (const post of sd?.post ?? []) for (const x of expand(post)) visit(x, depth + 1, n, true);
    };
    for (const n of names) visit(n, 0, null, false);
    return order;
  }

  async #loadAliases(): Promise<Map<string, string[]>> {
    if (!this.#aliases) {
      const text = await readTextFile(this.#files, `${this.dir}/modules.alias`, MAX_INDEX_FILE).catch((e) => {
        if (isPolyvisorError(e, 'ERR_NOT_FOUND')) return '';
        throw e;
      });
      this.#aliases = parseAliases(text);
    }
    return this.#aliases;
  }
}

async function optionalText(files: GuestFiles, path: string, max: number): Promise<string | null> {
  try {
    return await readTextFile(files, path, max);
  } catch (e) {
    if (isPolyvisorError(e, 'ERR_NOT_FOUND')) return null;
    throw e;
  }
}

/**
 * Reads the module tree of kernel `version`: /lib/modules/<version> (the guest's /lib may be a
 * symlink to usr/lib: `files` resolves it) and /boot/config-<version>.
 */
export async function readKernelModules(files: GuestFiles, version: string): Promise<KernelModules> {
  if (!/^[A-Za-z0-9._+~-]+$/.test(version) || version === '.' || version === '..') {
    throw new PolyvisorError('ERR_RANGE', `"${version}" is not a kernel version`);
  }
  const dir = `/lib/modules/${version}`;
  const warnings: string[] = [];
  const configText = await optionalText(files, `/boot/config-${version}`, MAX_CONFIG);
  const config = configText === null ? null : parseKernelConfig(configText);
  if (!(await files.exists(dir))) {
    warnings.push(`kernel ${version} has no ${dir} folder: only what it has built in is known`);
    return new KernelModules(files, { version, dir, modules: new Map(), builtin: new Set(), config, softdeps: new Map(), warnings });
  }
  const depText = await optionalText(files, `${dir}/modules.dep`, MAX_INDEX_FILE);
  let modules: Map<string, ModuleEntry>;
  if (depText === null) {
    warnings.push(`${dir}/modules.dep is missing (depmod was not run): module dependencies are unknown`);
    modules = await walkModules(files, dir);
  } else modules = parseModulesDep(depText, `${dir}/modules.dep`);
  const builtinText = await optionalText(files, `${dir}/modules.builtin`, MAX_INDEX_FILE);
  if (builtinText === null && !config) warnings.push(`kernel ${version} has neither modules.builtin nor /boot/config-${version}: built-in drivers are unknown`);
  const softText = await optionalText(files, `${dir}/modules.softdep`, MAX_INDEX_FILE);
  return new KernelModules(files, {
    version,
    dir,
    modules,
    builtin: builtinText === null ? new Set() : parseModulesBuiltin(builtinText),
    config,
    softdeps: softText === null ? new Map() : parseSoftdeps(softText),
    warnings,
  });
}

/** Without modules.dep: every *.ko* file under the tree, with no dependencies known. */
async function walkModules(files: GuestFiles, dir: string): Promise<Map<string, ModuleEntry>> {
  const out = new Map<string, ModuleEntry>();
  const stack = [''];
  let seen = 0;
  while (stack.length) {
    const rel = stack.pop()!;
    for (const e of await files.readdir(rel ? `${dir}/${rel}` : dir)) {
      if (++seen > MAX_WALK) throw new PolyvisorError('ERR_UNSUPPORTED', `more than ${MAX_WALK} files under ${dir}`, { file: dir });
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (e.type === 'directory') stack.push(p);
      else if (e.type === 'file' && /\.ko(\.(xz|zst|gz))?$/.test(e.name)) {
        const name = moduleName(e.name);
        if (!out.has(name)) out.set(name, { name, path: p, deps: [] });
      }
    }
  }
  return out;
}
