/**
 * `guest inspect`: what an installed guest is and what it needs to boot elsewhere, read
 * offline from its disks (open.ts) with no appliance and nothing run from the guest.
 *
 * Exported API (used by the CLI and by adaptation; names are kept stable):
 *   inspectGuest(guest)  -> GuestReport (verdicts included)
 *   inspect(source)      -> GuestReport, opening and closing the guest
 *   parseShellAssignments(text), parseCmdline(text), parseGrubCfg(text), parseDpkgStatus(text)
 *
 * What is read, and from where (each part is guarded: a missing or unreadable file becomes a
 * warning, never a failed inspection):
 * - OS: /etc/os-release (os-release(5)), /etc/debian_version;
 * - kernels: /boot/vmlinuz-*, /lib/modules/* (through Debian's /lib -> usr/lib), and for each
 *   the hypervisor drivers it has (modules.ts); its initramfs (initramfs.ts): generator,
 *   compression, the modules it carries, and modules whose dependencies it lacks;
 * - boot: disk 0's MBR boot code (partition.ts) and GRUB's core.img after it, EFI system
 *   partitions and their loaders, the boot loader configurations pygrub reads
 *   (grub.cfg, menu.lst, extlinux.conf), systemd-boot entries; the boot entries and the default;
 * - device naming: /etc/fstab, /etc/crypttab, /etc/initramfs-tools/conf.d/resume, root= and
 *   resume= on each entry's command line, GRUB_CMDLINE_LINUX* in /etc/default/grub;
 * - consoles: console= on the default entry, getty units enabled under /etc/systemd/system,
 *   /etc/inittab;
 * - network: ifupdown (interfaces and interfaces.d), netplan, NetworkManager keyfiles,
 *   systemd-networkd .network and .link files, udev persistent-net rules, net.ifnames;
 * - hypervisor agents: /var/lib/dpkg/status (RPM databases are not read: on RPM guests agents
 *   are found by their unit files only, which the report says) and the units enabled.
 */
import { PolyvisorError, isPolyvisorError } from '../errors.js';
import { driverList, readKernelModules, type DriverFamily, type DriverRole, type KernelModules, type ModuleStatus } from './modules.js';
import { readInitramfs, type Compression, type InitramfsGenerator } from './initramfs.js';
import { findVolume, openGuest, parseDeviceName, readTextFile, type DeviceNaming, type DiskPrefix, type Guest, type GuestSource, type OpenGuestOptions } from './open.js';
import type { BootLoader, PartitionScheme } from './partition.js';
import { ROOT_FS_MODULES, verdicts, type Target, type Verdict } from './verdict.js';
import { inspectWindows, windowsVerdicts, type WindowsFacts } from './windows/inspect.js';

export interface DiskReport {
  index: number;
  label: string;
  format: string;
  virtualSize: number;
  partitionScheme: PartitionScheme;
  diskId?: string;
}

export interface VolumeReport {
  name: string;
  kind: 'disk' | 'partition' | 'lv';
  size: number;
  type: string;
  uuid?: string;
  label?: string;
  partuuid?: string;
  partlabel?: string;
  partitionType?: string;
  mountPoint?: string;
  /** Polyvisor reads its file system */
  readable: boolean;
  names: string[];
}

export interface OsReport {
  family: 'linux' | 'windows' | 'unknown';
  /** os-release ID: "debian" */
  distribution?: string;
  /** os-release NAME */
  name?: string;
  /** os-release VERSION_ID */
  version?: string;
  prettyName?: string;
  codename?: string;
  idLike?: string[];
  /** /etc/debian_version */
  debianVersion?: string;
}

export interface DriverReport {
  name: string;
  family: DriverFamily | 'fs';
  role: DriverRole | 'fs';
  /** in the installed kernel: built in, a module file, or absent */
  status: ModuleStatus;
  /** in the kernel's initramfs: carried as a module, built into the kernel, or not there */
  initramfs?: 'included' | 'builtin' | 'absent';
}

export interface InitramfsReport {
  path: string;
  size: number;
  generator: InitramfsGenerator;
  compression: Compression;
  segments: { offset: number; length: number; compression: Compression; size: number; entries: number }[];
  microcode: boolean;
  /** module names it carries */
  modules: string[];
  /** carried modules whose dependencies (modules.dep) it does not carry, nor the kernel build in */
  missingDeps: { module: string; missing: string[] }[];
  /** why it could not be read, when it could not */
  error?: string;
}

export interface KernelReport {
  version: string;
  /** /boot/vmlinuz-<version> */
  image?: string;
  /** /lib/modules/<version>, when present */
  modules?: string;
  config?: string;
  /** the kernel the default boot entry starts (or the newest one) */
  default: boolean;
  /** the kernel can run as a Xen PV guest (CONFIG_XEN_PV=y; CONFIG_XEN=y before Linux 4.14 split it); 'unknown' without its config */
  xenPv: boolean | 'unknown';
  drivers: DriverReport[];
  initramfs?: InitramfsReport;
  warnings: string[];
}

export interface BootEntry {
  /** "0", "1>2" for an entry of a submenu */
  id: string;
  title: string;
  /** the kernel as a guest path */
  kernel?: string;
  initrd?: string[];
  cmdline: string;
  /** the configuration file, as a guest path */
  source: string;
}

export type BootConfigKind = 'grub2' | 'grub-legacy' | 'extlinux' | 'systemd-boot';

export interface BootReport {
  /** what the disks can be booted with: BIOS (MBR boot code), UEFI (an ESP with a loader), both, or none (Xen PV's pygrub or a kernel given from outside) */
  firmware: 'bios' | 'uefi' | 'bios+uefi' | 'none';
  /** a summary: grub-bios, syslinux-bios, grub-uefi, systemd-boot, pygrub (a configuration and no boot code), none */
  style: string;
  partitionScheme: PartitionScheme;
  mbr: { present: boolean; loader?: BootLoader; coreImage?: { lba: number; present: boolean } };
  biosBootPartition: boolean;
  esps: { volume: string; loaders: string[]; removable: boolean }[];
  /** boot loader configurations found on each readable file system (pygrub looks at these) */
  configs: { volume: string; path: string; kind: BootConfigKind }[];
  /** a configuration pygrub reads, on a file system it reads */
  pygrubReadable: boolean;
  entries: BootEntry[];
  defaultEntry?: string;
}

export type NamingUse = 'fstab' | 'crypttab' | 'resume' | 'cmdline-root' | 'cmdline-resume' | 'default-grub';

export interface NamedDevice {
  use: NamingUse;
  /** where: "/etc/fstab line 2", "grub.cfg entry 0" */
  where: string;
  spec: string;
  naming: DeviceNaming;
  prefix?: DiskPrefix;
  /** the mount point, swap, the crypttab name */
  target?: string;
  /** fstab: the guest goes on booting without it (nofail, noauto) */
  optional?: boolean;
  /** the volume it names, when it names one of the VM's volumes */
  volume?: string;
  /** for a kernel command line: the boot entry's id */
  entry?: string;
}

export interface ConsoleReport {
  /** console= of the default entry, in order (the last one is /dev/console) */
  cmdline: string[];
  /** getty units enabled: "serial-getty@hvc0.service" */
  gettys: string[];
  /** terminals /etc/inittab runs a getty on */
  inittab: string[];
}

export interface NetInterface {
  name: string;
  /** ifupdown, netplan, networkmanager, networkd, udev */
  source: string;
  file: string;
  mac?: string;
  method?: string;
}

export interface NetworkReport {
  interfaces: NetInterface[];
  /** systemd-udevd's predictable names (net.ifnames): false when turned off */
  predictableNames: boolean | 'unknown';
  predictableReason: string;
  /** names pinned to MAC addresses (70-persistent-net.rules, .link files) */
  persistentRules: { file: string; mac: string; name: string }[];
  configFiles: string[];
}

export interface AgentReport {
  name: string;
  hypervisor: 'vmware' | 'xen' | 'hyperv' | 'kvm';
  installed: boolean;
  version?: string;
  /** its units and whether each is enabled */
  services: { unit: string; enabled: boolean }[];
}

export interface GuestReport {
  source: string;
  /** a Windows guest: what its registry says (./windows/inspect.ts); the Linux parts are then empty */
  windows?: WindowsFacts;
  disks: DiskReport[];
  volumes: VolumeReport[];
  root?: string;
  os: OsReport;
  kernels: KernelReport[];
  defaultKernel?: string;
  boot: BootReport;
  naming: NamedDevice[];
  /** kernel command line of the default entry, and GRUB_CMDLINE_LINUX(_DEFAULT) */
  cmdline: { default?: string; grubDefault?: string };
  consoles: ConsoleReport;
  network: NetworkReport;
  packages: { manager: 'dpkg' | 'rpm' | 'none'; count: number; note?: string };
  agents: AgentReport[];
  verdicts: Record<Target, Verdict>;
  warnings: string[];
}

/** What verdicts are drawn from: the report without them. */
export type GuestFacts = Omit<GuestReport, 'verdicts'>;

const KiB = 1024;
const MAX_CONFIG_FILE = 4 << 20;
const MAX_DPKG_STATUS = 64 << 20;
const MAX_INITRAMFS_FILE = 512 << 20;
const MAX_DIR_ENTRIES = 10_000;
const MAX_INCLUDES = 64;
const MAX_KERNELS = 16;

/** The boot loader configurations pygrub looks for on each file system (tools/pygrub/src/pygrub, cfg_list). */
const PYGRUB_CONFIGS: [string, BootConfigKind][] = [
  ['/boot/grub/grub.cfg', 'grub2'],
  ['/grub/grub.cfg', 'grub2'],
  ['/boot/grub2/grub.cfg', 'grub2'],
  ['/grub2/grub.cfg', 'grub2'],
  ['/boot/grub/menu.lst', 'grub-legacy'],
  ['/boot/grub/grub.conf', 'grub-legacy'],
  ['/grub/menu.lst', 'grub-legacy'],
  ['/grub/grub.conf', 'grub-legacy'],
  ['/boot/extlinux/extlinux.conf', 'extlinux'],
  ['/boot/extlinux.conf', 'extlinux'],
  ['/extlinux/extlinux.conf', 'extlinux'],
  ['/extlinux.conf', 'extlinux'],
];
/** file systems libxenfsimage (pygrub) reads */
const PYGRUB_FS = new Set(['ext2', 'ext3', 'ext4', 'vfat', 'xfs', 'btrfs']);

const AGENTS: { name: string; hypervisor: AgentReport['hypervisor']; packages: string[]; units: string[] }[] = [
  { name: 'open-vm-tools', hypervisor: 'vmware', packages: ['open-vm-tools'], units: ['open-vm-tools.service', 'vmtoolsd.service', 'vgauth.service'] },
  { name: 'xe-guest-utilities', hypervisor: 'xen', packages: ['xe-guest-utilities'], units: ['xe-linux-distribution.service', 'xe-daemon.service'] },
  { name: 'xen-guest-agent', hypervisor: 'xen', packages: ['xen-guest-agent'], units: ['xen-guest-agent.service'] },
  { name: 'hyperv-daemons', hypervisor: 'hyperv', packages: ['hyperv-daemons'], units: ['hv-kvp-daemon.service', 'hv-vss-daemon.service', 'hv-fcopy-daemon.service', 'hypervkvpd.service', 'hypervvssd.service', 'hypervfcopyd.service'] },
  { name: 'qemu-guest-agent', hypervisor: 'kvm', packages: ['qemu-guest-agent'], units: ['qemu-guest-agent.service'] },
];

// ---------------------------------------------------------------------------------------
// small parsers

/** KEY=value lines as a POSIX shell assigns them (os-release(5), /etc/default/grub, initramfs-tools conf.d). */
export function parseShellAssignments(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m) continue;
    let rest = m[2]!.trim();
    let value = '';
    while (rest.length) {
      const c = rest[0]!;
      if (c === '"') {
        let i = 1;
        for (; i < rest.length && rest[i] !== '"'; i++) {
          if (rest[i] === '\\' && i + 1 < rest.length && '"\\$`'.includes(rest[i + 1]!)) i++;
          value += rest[i];
        }
        rest = rest.slice(i + 1);
      } else if (c === "'") {
        const end = rest.indexOf("'", 1);
        value += end < 0 ? rest.slice(1) : rest.slice(1, end);
        rest = end < 0 ? '' : rest.slice(end + 1);
      } else if (/\s/.test(c) || c === '#' || c === ';') break;
      else {
        const m2 = /^[^\s"'#;]+/.exec(rest)!;
        value += m2[0];
        rest = rest.slice(m2[0].length);
      }
    }
    out.set(m[1]!, value);
  }
  return out;
}

/** A kernel command line's words (double quotes group, as the kernel's next_arg does). */
export function parseCmdline(text: string): string[] {
  const out: string[] = [];
  const re = /(?:[^\s"]+|"[^"]*")+/g;
  for (const m of text.matchAll(re)) out.push(m[0].replace(/"/g, ''));
  return out;
}

function cmdlineValues(words: string[], key: string): string[] {
  return words.filter((w) => w.startsWith(key + '=')).map((w) => w.slice(key.length + 1));
}

export interface GrubConfig {
  entries: Omit<BootEntry, 'source'>[];
  default?: string;
}

/** Words of a GRUB script line, with its quoting ('...', "...", \x). */
function grubWords(line: string): string[] {
  const out: string[] = [];
  let cur = '';
  let has = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (c === "'") {
      const end = line.indexOf("'", i + 1);
      cur += end < 0 ? line.slice(i + 1) : line.slice(i + 1, end);
      i = end < 0 ? line.length : end;
      has = true;
    } else if (c === '"') {
      let j = i + 1;
      for (; j < line.length && line[j] !== '"'; j++) {
        if (line[j] === '\\' && j + 1 < line.length) j++;
        cur += line[j];
      }
      i = j;
      has = true;
    } else if (c === '\\' && i + 1 < line.length) {
      cur += line[++i];
      has = true;
    } else if (/\s/.test(c)) {
      if (has) out.push(cur);
      cur = '';
      has = false;
    } else if (c === '#' && !has) break;
    else {
      cur += c;
      has = true;
    }
  }
  if (has) out.push(cur);
  return out;
}

/**
 * GRUB 2's grub.cfg (menuentry and submenu blocks, linux/linux16/linuxefi and initrd lines,
 * set default=) and GRUB Legacy's menu.lst (title, kernel, initrd, default N). Other commands
 * are left alone: this reads what entries exist, it does not run the script.
 */
export function parseGrubCfg(text: string): GrubConfig {
  const entries: Omit<BootEntry, 'source'>[] = [];
  let dflt: string | undefined;
  const stack: { kind: 'entry' | 'submenu' | 'other'; id: string; next: number; entry?: Omit<BootEntry, 'source'> }[] = [];
  let top = 0;
  let legacy: Omit<BootEntry, 'source'> | undefined;
  const lines = text.split('\n');
  for (let n = 0; n < lines.length && n < 100_000; n++) {
    const w = grubWords(lines[n]!.trim());
    if (w.length === 0) continue;
    const cmd = w[0]!;
    const inEntry = [...stack].reverse().find((s) => s.kind === 'entry')?.entry;
    if (cmd === 'menuentry' || cmd === 'submenu') {
      const parent = [...stack].reverse().find((s) => s.kind === 'submenu');
      const index = parent ? parent.next++ : top++;
      const id = parent ? `${parent.id}>${index}` : String(index);
      const title = w[1] ?? '';
      if (cmd === 'menuentry') {
        const entry = { id, title, cmdline: '' };
        entries.push(entry);
        stack.push({ kind: 'entry', id, next: 0, entry });
      } else stack.push({ kind: 'submenu', id, next: 0 });
      if (!w.includes('{')) stack.pop();
      continue;
    }
    if (cmd === '}') {
      stack.pop();
      continue;
    }
    if (w[w.length - 1] === '{') {
      // if/for/function blocks
      stack.push({ kind: 'other', id: '', next: 0 });
      continue;
    }
    if (cmd === 'fi' || cmd === 'done') continue;
    if (cmd === 'set' && w[1]?.startsWith('default=') && stack.length === 0) dflt = w[1].slice('default='.length);
    if (/^(linux|linux16|linuxefi|kernel)$/.test(cmd) && w[1]) {
      const target = inEntry ?? legacy;
      if (target) {
        target.kernel = w[1];
        target.cmdline = w.slice(2).join(' ');
      }
    }
    if (/^(initrd|initrd16|initrdefi)$/.test(cmd) && w[1]) {
      const target = inEntry ?? legacy;
      if (target) target.initrd = w.slice(1);
    }
    // GRUB Legacy
    if (cmd === 'title' && stack.length === 0) {
      legacy = { id: String(top++), title: lines[n]!.trim().slice(5).trim(), cmdline: '' };
      entries.push(legacy);
    }
    if (cmd === 'default' && w[1] && stack.length === 0) dflt = w[1];
  }
  return { entries, default: dflt };
}

/** extlinux.conf / syslinux.cfg: LABEL, KERNEL/LINUX, INITRD, APPEND (initrd= inside it), DEFAULT. */
function parseExtlinux(text: string): GrubConfig {
  const entries: Omit<BootEntry, 'source'>[] = [];
  let dflt: string | undefined;
  let cur: Omit<BootEntry, 'source'> | undefined;
  for (const raw of text.split('\n').slice(0, 100_000)) {
    const m = /^\s*(\S+)\s*(.*)$/.exec(raw);
    if (!m || m[1]!.startsWith('#')) continue;
    const key = m[1]!.toLowerCase();
    const val = m[2]!.trim();
    if (key === 'default') dflt = val;
    else if (key === 'label') {
      cur = { id: String(entries.length), title: val, cmdline: '' };
      entries.push(cur);
    } else if (cur && (key === 'kernel' || key === 'linux')) cur.kernel = val;
    else if (cur && key === 'initrd') cur.initrd = val.split(',');
    else if (cur && key === 'append') {
      const words = parseCmdline(val);
      const initrd = cmdlineValues(words, 'initrd');
      if (initrd.length) cur.initrd = initrd.flatMap((i) => i.split(','));
      cur.cmdline = words.filter((x) => !x.startsWith('initrd=')).join(' ');
    }
  }
  const d = dflt === undefined ? undefined : entries.find((e) => e.title === dflt)?.id;
  return { entries, default: d };
}

/** /var/lib/dpkg/status: installed packages and their versions (deb-control(5) stanzas). */
export function parseDpkgStatus(text: string): Map<string, string> {
  const out = new Map<string, string>();
  let n = 0;
  for (const stanza of text.split(/\n\s*\n/)) {
    if (++n > 500_000) break;
    const pkg = /^Package:\s*(\S+)/m.exec(stanza)?.[1];
    const status = /^Status:\s*(.*)$/m.exec(stanza)?.[1]?.trim().split(/\s+/);
    if (!pkg || !status || status[2] !== 'installed') continue;
    out.set(pkg, /^Version:\s*(\S+)/m.exec(stanza)?.[1] ?? '');
  }
  return out;
}

/** An INI-style file (systemd units, NetworkManager keyfiles): section -> key -> values. */
function parseIni(text: string): Map<string, Map<string, string[]>> {
  const out = new Map<string, Map<string, string[]>>();
  let sec = '';
  for (const raw of text.split('\n').slice(0, 100_000)) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const s = /^\[(.+)\]$/.exec(line);
    if (s) {
      sec = s[1]!;
      continue;
    }
    const eq = line.indexOf('=');
    if (eq < 0) continue;
    const key = line.slice(0, eq).trim();
    const m = out.get(sec) ?? new Map<string, string[]>();
    m.set(key, [...(m.get(key) ?? []), line.slice(eq + 1).trim()]);
    out.set(sec, m);
  }
  return out;
}

/** Version strings compared as `sort -V` roughly does: numbers by value. */
function compareVersions(a: string, b: string): number {
  const pa = a.split(/(\d+)/);
  const pb = b.split(/(\d+)/);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? '';
    const y = pb[i] ?? '';
    if (x === y) continue;
    if (/^\d+$/.test(x) && /^\d+$/.test(y)) return Number(x) - Number(y);
    return x < y ? -1 : 1;
  }
  return 0;
}

// ---------------------------------------------------------------------------------------
// reading the guest

class Reader {
  readonly warnings: string[] = [];
  constructor(readonly guest: Guest) {}

  /** `fn`'s result, or `fallback` with a warning when the guest's data makes it fail. */
  async guard<T>(what: string, fallback: T, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (!isPolyvisorError(e)) throw e;
      if (e.code !== 'ERR_NOT_FOUND') this.warnings.push(`${what}: ${e.message}`);
      return fallback;
    }
  }

  async text(path: string, max = MAX_CONFIG_FILE): Promise<string | null> {
    return this.guard(path, null, () => readTextFile(this.guest, path, max));
  }

  async list(dir: string): Promise<{ name: string; type: string }[]> {
    const entries = await this.guard(dir, [], () => this.guest.readdir(dir));
    if (entries.length > MAX_DIR_ENTRIES) {
      this.warnings.push(`${dir}: ${entries.length} entries, only the first ${MAX_DIR_ENTRIES} were looked at`);
      return entries.slice(0, MAX_DIR_ENTRIES);
    }
    return entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  async exists(path: string): Promise<boolean> {
    return this.guard(path, false, () => this.guest.exists(path));
  }

  async linksToDevNull(path: string): Promise<boolean> {
    return this.guard(path, false, async () => (await this.guest.lstat(path)).type === 'symlink' && (await this.guest.readlink(path)) === '/dev/null');
  }
}

async function osReport(r: Reader): Promise<OsReport> {
  if (!r.guest.root) return { family: r.guest.volumes.some((v) => v.probe.type === 'ntfs') ? 'windows' : 'unknown' };
  const text = (await r.text('/etc/os-release')) ?? (await r.text('/usr/lib/os-release'));
  const os: OsReport = { family: 'linux' };
  if (text !== null) {
    const kv = parseShellAssignments(text);
    const set = (k: keyof OsReport, key: string) => {
      const v = kv.get(key);
      if (v) (os as unknown as Record<string, unknown>)[k] = v;
    };
    set('distribution', 'ID');
    set('name', 'NAME');
    set('version', 'VERSION_ID');
    set('prettyName', 'PRETTY_NAME');
    set('codename', 'VERSION_CODENAME');
    const like = kv.get('ID_LIKE');
    if (like) os.idLike = like.split(/\s+/).filter(Boolean);
  }
  const deb = await r.text('/etc/debian_version', 4 * KiB);
  if (deb !== null) {
    os.debianVersion = deb.trim();
    os.distribution ??= 'debian';
  }
  return os;
}

/** Kernel versions from /boot's images and /lib/modules' folders, newest first. */
async function kernelVersions(r: Reader): Promise<{ version: string; image?: string }[]> {
  const found = new Map<string, string | undefined>();
  for (const e of await r.list('/boot')) {
    const m = /^(?:vmlinuz|vmlinux|kernel|bzImage)-(.+)$/.exec(e.name);
    if (m && e.type !== 'directory') found.set(m[1]!, `/boot/${e.name}`);
  }
  for (const e of await r.list('/lib/modules')) {
    if (e.type === 'directory' && !found.has(e.name)) found.set(e.name, undefined);
  }
  return [...found].map(([version, image]) => (image ? { version, image } : { version })).sort((a, b) => compareVersions(b.version, a.version));
}

/** Boot configurations on every readable file system, and the entries of the one the guest boots with. */
async function bootReport(r: Reader): Promise<BootReport> {
  const g = r.guest;
  const disk0 = g.disks[0]!;
  const table = disk0.table;
  const mbr: BootReport['mbr'] = { ...table.bootCode };
  if (table.bootCode.loader === 'grub2') {
    // boot.S: kernel_sector (the LBA of core.img's first sector, diskboot.img) at 0x5c
    const sector = await disk0.volume.read(0, 512);
    const lba = Number(sector.readBigUInt64LE(0x5c));
    let present = false;
    if (lba > 0 && Number.isSafeInteger(lba) && (lba + 1) * 512 <= disk0.volume.size) {
      present = !(await disk0.volume.read(lba * 512, 512)).every((b) => b === 0);
    }
    mbr.coreImage = { lba, present };
  }
  const esps: BootReport['esps'] = [];
  const configs: BootReport['configs'] = [];
  let pygrubReadable = false;
  for (const v of g.volumes) {
    if (!v.fs) continue;
    const fs = v.fs;
    const isEsp = v.partition?.typeName === 'efi' || (v.probe.type === 'vfat' && (v.mountPoint === '/boot/efi' || v.mountPoint === '/efi'));
    if (isEsp) {
      const loaders: string[] = [];
      await r.guard(`${v.name}: /EFI`, undefined, async () => {
        for (const d of (await fs.readdir('/EFI')).slice(0, 256)) {
          if (d.type !== 'directory') continue;
          for (const f of (await fs.readdir(`/EFI/${d.name}`)).slice(0, 256)) {
            if (f.type === 'file' && /\.efi$/i.test(f.name)) loaders.push(`EFI/${d.name}/${f.name}`);
          }
        }
      });
      // what a firmware with no boot entries of its own starts (UEFI 2.10 section 3.5.1.1)
      loaders.sort();
      const removable = loaders.some((l) => /^EFI\/BOOT\/BOOTX64\.EFI$/i.test(l));
      esps.push({ volume: v.name, loaders, removable });
      if (await r.guard(`${v.name}: /loader/entries`, false, () => fs.exists('/loader/entries'))) configs.push({ volume: v.name, path: '/loader/entries', kind: 'systemd-boot' });
    }
    for (const [path, kind] of PYGRUB_CONFIGS) {
      if (await r.guard(`${v.name}: ${path}`, false, () => fs.exists(path))) {
        configs.push({ volume: v.name, path, kind });
        if (PYGRUB_FS.has(v.probe.type)) pygrubReadable = true;
      }
    }
  }
  const biosBootPartition = table.partitions.some((p) => p.typeName === 'bios-boot');
  const { entries, defaultEntry } = await bootEntries(r, configs);
  const bios = table.bootCode.present;
  const uefi = esps.some((e) => e.loaders.length > 0);
  const firmware = bios && uefi ? 'bios+uefi' : bios ? 'bios' : uefi ? 'uefi' : 'none';
  let style = 'none';
  if (bios) style = table.bootCode.loader === 'grub2' || table.bootCode.loader === 'grub-legacy' ? 'grub-bios' : table.bootCode.loader ? `${table.bootCode.loader}-bios` : 'unknown-bios';
  else if (uefi) style = configs.some((c) => c.kind === 'systemd-boot') ? 'systemd-boot' : 'grub-uefi';
  else if (configs.length) style = 'pygrub';
  return { firmware, style, partitionScheme: table.scheme, mbr, biosBootPartition, esps, configs, pygrubReadable, entries, defaultEntry };
}

/** Entries of the configuration the guest boots with: GRUB 2 first, then GRUB Legacy, extlinux, systemd-boot. */
async function bootEntries(r: Reader, configs: BootReport['configs']): Promise<{ entries: BootEntry[]; defaultEntry?: string }> {
  const g = r.guest;
  // a configuration as the guest sees it (through its mounts), where one is mounted
  const guestPaths: [string, BootConfigKind][] = PYGRUB_CONFIGS.filter(([p]) => p.startsWith('/boot/'));
  for (const [path, kind] of guestPaths) {
    const text = await r.text(path);
    if (text === null) continue;
    const parsed = kind === 'extlinux' ? parseExtlinux(text) : parseGrubCfg(text);
    const { mountPoint } = await g.fs(path);
    const base = mountPoint === '/' ? '' : mountPoint;
    const entries = await Promise.all(parsed.entries.map(async (e) => ({ ...e, kernel: e.kernel && (await guestPath(r, e.kernel, base)), initrd: e.initrd && (await Promise.all(e.initrd.map((i) => guestPath(r, i, base)))), source: path })));
    return { entries, defaultEntry: pickDefault(parsed, entries) };
  }
  // systemd-boot on an ESP: loader/entries/*.conf (Boot Loader Specification, type 1)
  const sd = configs.find((c) => c.kind === 'systemd-boot');
  const esp = sd && g.volumes.find((v) => v.name === sd.volume);
  if (esp?.fs) {
    const fs = esp.fs;
    const entries: BootEntry[] = [];
    const files = await r.guard(`${esp.name}: /loader/entries`, [], () => fs.readdir('/loader/entries'));
    for (const f of files.filter((x) => x.name.endsWith('.conf')).slice(0, 256)) {
      const text = await r.guard(`${esp.name}: ${f.name}`, '', async () => (await fs.readFile(`/loader/entries/${f.name}`)).subarray(0, MAX_CONFIG_FILE).toString('utf8'));
      const kv = new Map<string, string[]>();
      for (const line of text.split('\n')) {
        const m = /^\s*(\S+)\s+(.*)$/.exec(line);
        if (m && !m[1]!.startsWith('#')) kv.set(m[1]!, [...(kv.get(m[1]!) ?? []), m[2]!.trim()]);
      }
      entries.push({ id: String(entries.length), title: kv.get('title')?.[0] ?? f.name, kernel: kv.get('linux')?.[0], initrd: kv.get('initrd'), cmdline: (kv.get('options') ?? []).join(' '), source: `${esp.name}: /loader/entries/${f.name}` });
    }
    return { entries, defaultEntry: entries[0]?.id };
  }
  return { entries: [] };
}

/** A boot loader path ("(hd0,msdos1)/boot/vmlinuz-x", "/vmlinuz-x" on a separate /boot) as a guest path. */
async function guestPath(r: Reader, path: string, base: string): Promise<string> {
  const p = path.replace(/^\([^)]*\)/, '');
  const abs = p.startsWith('/') ? p : `/${p}`;
  if (base && !(await r.exists(abs))) return base + abs;
  return abs;
}

function pickDefault(cfg: GrubConfig, entries: BootEntry[]): string | undefined {
  if (entries.length === 0) return undefined;
  const d = cfg.default;
  if (d === undefined || d === '' || d.includes('$') || d === 'saved') return entries[0]!.id;
  const byId = entries.find((e) => e.id === d);
  if (byId) return byId.id;
  return entries.find((e) => e.title === d)?.id ?? entries[0]!.id;
}

function versionOfImage(path: string | undefined): string | undefined {
  const m = path && /\/(?:vmlinuz|vmlinux|kernel|bzImage)-([^/]+)$/.exec(path);
  return m ? m[1] : undefined;
}

/** Where a kernel's initramfs is: the default entry's initrd line, else Debian's, dracut's and SUSE's names. */
async function findInitramfs(r: Reader, version: string, entry: BootEntry | undefined): Promise<string | undefined> {
  const named = entry?.initrd?.filter((p) => !/ucode|microcode/i.test(p)) ?? [];
  for (const p of [...named, `/boot/initrd.img-${version}`, `/boot/initramfs-${version}.img`, `/boot/initrd-${version}`, `/boot/initramfs-${version}`]) {
    if (await r.exists(p)) return p;
  }
  return undefined;
}

async function initramfsReport(r: Reader, path: string, tree: KernelModules): Promise<InitramfsReport> {
  const st = await r.guest.stat(path);
  const base = { path, size: st.size };
  try {
    if (st.size > MAX_INITRAMFS_FILE) throw new PolyvisorError('ERR_UNSUPPORTED', `${st.size} bytes: larger than the ${MAX_INITRAMFS_FILE} read from an initramfs`, { file: path });
    const ir = await readInitramfs(await r.guest.readFile(path), { name: path });
    const carried = new Set(ir.modules.map((m) => m.name));
    const missingDeps: InitramfsReport['missingDeps'] = [];
    for (const name of carried) {
      const entry = tree.modules.get(name);
      if (!entry) continue;
      const order = await tree.resolveDeps([name]).catch(() => [] as string[]);
      const missing = order.filter((d) => d !== name && !carried.has(d) && !tree.isBuiltin(d));
      if (missing.length) missingDeps.push({ module: name, missing });
    }
    return {
      ...base,
      generator: ir.generator === 'unknown' ? await installedGenerator(r) : ir.generator,
      compression: ir.compression,
      segments: ir.segments.map((s) => ({ offset: s.offset, length: s.length, compression: s.compression, size: s.size, entries: s.entries.length })),
      microcode: ir.microcode,
      modules: [...carried].sort(),
      missingDeps,
    };
  } catch (e) {
    if (!isPolyvisorError(e)) throw e;
    r.warnings.push(`${path}: ${e.message}`);
    return { ...base, generator: 'unknown', compression: 'none', segments: [], microcode: false, modules: [], missingDeps: [], error: e.message };
  }
}

/** The generator the guest has installed, for an image that does not say which made it. */
async function installedGenerator(r: Reader): Promise<InitramfsGenerator> {
  if ((await r.exists('/etc/dracut.conf')) || (await r.exists('/etc/dracut.conf.d'))) return 'dracut';
  if (await r.exists('/etc/initramfs-tools/initramfs.conf')) return 'initramfs-tools';
  if (await r.exists('/etc/mkinitcpio.conf')) return 'mkinitcpio';
  return 'unknown';
}

async function kernelReports(r: Reader, boot: BootReport): Promise<{ kernels: KernelReport[]; defaultKernel?: string }> {
  const versions = await kernelVersions(r);
  const entry = boot.entries.find((e) => e.id === boot.defaultEntry);
  let dflt = versionOfImage(entry?.kernel);
  if (entry?.kernel && !dflt) {
    // "/vmlinuz" -> boot/vmlinuz-6.1.0-50-amd64
    dflt = versionOfImage(await r.guard(entry.kernel, undefined as string | undefined, () => r.guest.resolve(entry.kernel!)));
  }
  if (!dflt || !versions.some((v) => v.version === dflt)) dflt = versions.find((v) => v.image)?.version ?? versions[0]?.version;
  const kernels: KernelReport[] = [];
  // the default and the newest others: a guest with hundreds of kernels is not read whole
  const examined = [...versions.filter((v) => v.version === dflt), ...versions.filter((v) => v.version !== dflt).slice(0, MAX_KERNELS - 1)];
  if (examined.length < versions.length) r.warnings.push(`${versions.length} kernels are installed: the default and the ${MAX_KERNELS - 1} newest others were examined`);
  for (const { version, image } of versions.filter((v) => examined.includes(v))) {
    const isDefault = version === dflt;
    const tree = await r.guard(`kernel ${version}`, undefined, () => readKernelModules(r.guest, version));
    const cfg = tree?.config;
    const xenPv = !cfg ? 'unknown' : cfg.has('XEN_PV') ? cfg.get('XEN_PV') === 'y' : cfg.get('XEN') === 'y';
    const k: KernelReport = { version, ...(image ? { image } : {}), default: isDefault, xenPv, drivers: [], warnings: [...(tree?.warnings ?? [])] };
    if (tree?.modules.size) k.modules = tree.dir;
    if (tree?.config) k.config = `/boot/config-${version}`;
    const list: { name: string; family: DriverFamily | 'fs'; role: DriverRole | 'fs' }[] = [...driverList(), ...[...new Set(Object.values(ROOT_FS_MODULES).flat())].map((name) => ({ name, family: 'fs' as const, role: 'fs' as const }))];
    for (const d of list) k.drivers.push({ ...d, status: tree ? await tree.status(d.name) : 'absent' });
    if (tree) {
      const irPath = await findInitramfs(r, version, isDefault ? entry : undefined);
      if (irPath) {
        k.initramfs = await initramfsReport(r, irPath, tree);
        const carried = new Set(k.initramfs.modules);
        for (const d of k.drivers) d.initramfs = d.status === 'builtin' ? 'builtin' : carried.has(d.name) ? 'included' : 'absent';
      } else k.warnings.push(`no initramfs found for kernel ${version}`);
    }
    kernels.push(k);
  }
  return { kernels, defaultKernel: dflt };
}

function named(volumes: Guest['volumes'], use: NamingUse, where: string, spec: string, extra: Partial<NamedDevice> = {}): NamedDevice {
  const d = parseDeviceName(spec);
  const v = findVolume(volumes, spec);
  return { use, where, spec, naming: d.naming, ...(d.prefix ? { prefix: d.prefix } : {}), ...extra, ...(v ? { volume: v.name } : {}) };
}

async function namingReport(r: Reader, boot: BootReport): Promise<{ naming: NamedDevice[]; cmdline: GuestReport['cmdline'] }> {
  const g = r.guest;
  const out: NamedDevice[] = [];
  for (const e of g.fstab) {
    if (!e.spec.startsWith('/dev/') && !/^(UUID|LABEL|PARTUUID|PARTLABEL)=/i.test(e.spec)) continue;
    const optional = e.options.includes('nofail') || e.options.includes('noauto');
    out.push(named(g.volumes, 'fstab', `/etc/fstab line ${e.line}`, e.spec, { target: e.vfstype === 'swap' ? 'swap' : e.file, ...(optional ? { optional } : {}) }));
  }
  const crypttab = await r.text('/etc/crypttab');
  if (crypttab !== null) {
    crypttab.split('\n').forEach((line, i) => {
      const f = line.trim().split(/\s+/);
      if (!f[0] || f[0].startsWith('#') || !f[1]) return;
      out.push(named(g.volumes, 'crypttab', `/etc/crypttab line ${i + 1}`, f[1], { target: f[0] }));
    });
  }
  for (const path of ['/etc/initramfs-tools/conf.d/resume', '/etc/uswsusp.conf']) {
    const text = await r.text(path);
    const resume = text === null ? undefined : parseShellAssignments(text).get('RESUME');
    if (resume && resume !== 'none' && resume !== 'auto') out.push(named(g.volumes, 'resume', path, resume));
  }
  for (const e of boot.entries) {
    const words = parseCmdline(e.cmdline);
    for (const root of cmdlineValues(words, 'root')) out.push(named(g.volumes, 'cmdline-root', `${e.source} entry ${e.id}`, root, { target: '/', entry: e.id }));
    for (const res of cmdlineValues(words, 'resume')) out.push(named(g.volumes, 'cmdline-resume', `${e.source} entry ${e.id}`, res, { entry: e.id }));
  }
  const cmdline: GuestReport['cmdline'] = {};
  const entry = boot.entries.find((x) => x.id === boot.defaultEntry);
  if (entry) cmdline.default = entry.cmdline;
  const dg = await r.text('/etc/default/grub');
  if (dg !== null) {
    const kv = parseShellAssignments(dg);
    const words = [kv.get('GRUB_CMDLINE_LINUX') ?? '', kv.get('GRUB_CMDLINE_LINUX_DEFAULT') ?? ''].join(' ').trim();
    cmdline.grubDefault = words;
    for (const root of cmdlineValues(parseCmdline(words), 'root')) out.push(named(g.volumes, 'default-grub', '/etc/default/grub', root, { target: '/' }));
    for (const res of cmdlineValues(parseCmdline(words), 'resume')) out.push(named(g.volumes, 'default-grub', '/etc/default/grub', res));
  }
  return { naming: out, cmdline };
}

/** Units enabled by a symlink in /etc/systemd/system/*.wants or *.requires (systemctl enable's links). */
async function enabledUnits(r: Reader): Promise<Set<string>> {
  const out = new Set<string>();
  for (const d of await r.list('/etc/systemd/system')) {
    if (!/\.(wants|requires)$/.test(d.name)) continue;
    for (const u of await r.list(`/etc/systemd/system/${d.name}`)) out.add(u.name);
  }
  // an alias link (vmtoolsd.service -> open-vm-tools.service) enables nothing by itself; SysV rc links do
  for (const rc of ['/etc/rc2.d', '/etc/rc3.d', '/etc/rc5.d']) {
    for (const f of await r.list(rc)) {
      const m = /^S\d\d(.+)$/.exec(f.name);
      if (m) out.add(`${m[1]}.service`);
    }
  }
  return out;
}

async function consoleReport(r: Reader, boot: BootReport, units: Set<string>): Promise<ConsoleReport> {
  const entry = boot.entries.find((e) => e.id === boot.defaultEntry);
  const cmdline = entry ? cmdlineValues(parseCmdline(entry.cmdline), 'console').map((c) => c.split(',')[0]!) : [];
  const gettys = [...units].filter((u) => /^(serial-)?getty@.+\.service$/.test(u) || u === 'console-getty.service').sort();
  const inittab: string[] = [];
  const text = await r.text('/etc/inittab');
  if (text !== null) {
    for (const line of text.split('\n')) {
      const f = line.trim().split(':');
      if (f.length < 4 || line.trim().startsWith('#') || !/getty/.test(f[3]!)) continue;
      const tty = f[3]!.split(/\s+/).find((w) => /^(tty|hvc|xvc|console)/.test(w));
      if (tty) inittab.push(tty);
    }
  }
  return { cmdline, gettys, inittab };
}

/** /etc/network/interfaces and what it sources (ifupdown's interfaces(5)). */
async function ifupdown(r: Reader, out: NetInterface[], files: string[]): Promise<void> {
  const queue = ['/etc/network/interfaces'];
  const seen = new Set<string>();
  while (queue.length && seen.size < MAX_INCLUDES) {
    const file = queue.shift()!;
    if (seen.has(file)) continue;
    seen.add(file);
    const text = await r.text(file);
    if (text === null) continue;
    files.push(file);
    let cur: NetInterface | undefined;
    for (const raw of text.split('\n')) {
      const w = raw.trim().split(/\s+/);
      if (!w[0] || w[0].startsWith('#')) continue;
      if (w[0] === 'source' || w[0] === 'source-directory') {
        for (const arg of w.slice(1)) {
          const p = arg.startsWith('/') ? arg : `/etc/network/${arg}`;
          const dir = w[0] === 'source-directory' ? p : p.endsWith('/*') ? p.slice(0, -2) : undefined;
          if (dir) {
            for (const f of await r.list(dir)) if (f.type === 'file' && (w[0] === 'source' || /^[a-zA-Z0-9_-]+$/.test(f.name))) queue.push(`${dir}/${f.name}`);
          } else queue.push(p);
        }
      } else if (w[0] === 'iface' && w[1]) {
        cur = out.find((i) => i.name === w[1] && i.source === 'ifupdown');
        if (cur) Object.assign(cur, { file, ...(w[3] ? { method: w[3] } : {}) });
        else {
          cur = { name: w[1], source: 'ifupdown', file, ...(w[3] ? { method: w[3] } : {}) };
          if (w[1] !== 'lo') out.push(cur);
        }
      } else if ((w[0] === 'hwaddress' || w[0] === 'hwaddr') && cur) cur.mac = w[w.length - 1]!.toLowerCase();
      else if (/^(auto|allow-)/.test(w[0])) {
        for (const n of w.slice(1)) if (n !== 'lo' && !out.some((i) => i.name === n && i.source === 'ifupdown')) out.push({ name: n, source: 'ifupdown', file });
      }
    }
  }
}

/** netplan's YAML, read for interface names only: keys under network.ethernets/bonds/bridges/vlans/wifis. */
function netplanInterfaces(text: string, file: string): NetInterface[] {
  const out: NetInterface[] = [];
  const path: { indent: number; key: string }[] = [];
  for (const raw of text.split('\n').slice(0, 100_000)) {
    if (!raw.trim() || raw.trim().startsWith('#')) continue;
    const m = /^(\s*)([A-Za-z0-9_."'-]+)\s*:\s*(.*?)\s*$/.exec(raw);
    if (!m) continue;
    const indent = m[1]!.length;
    while (path.length && path[path.length - 1]!.indent >= indent) path.pop();
    const key = m[2]!.replace(/^["']|["']$/g, '');
    path.push({ indent, key });
    const keys = path.map((p) => p.key);
    if (keys.length === 3 && keys[0] === 'network' && /^(ethernets|bonds|bridges|vlans|wifis)$/.test(keys[1]!)) out.push({ name: key, source: 'netplan', file });
    const iface = out[out.length - 1];
    const val = m[3]!.replace(/^["']|["']$/g, '');
    if (iface && keys.length >= 4 && keys[2] === iface.name) {
      if (keys[3] === 'match' && keys[4] === 'macaddress') iface.mac = val.toLowerCase();
      if (keys[3] === 'set-name' && val) iface.name = val;
      if (keys[3] === 'dhcp4' && /^(true|yes)$/.test(val)) iface.method = 'dhcp';
    }
  }
  return out;
}

async function networkReport(r: Reader, boot: BootReport): Promise<NetworkReport> {
  const interfaces: NetInterface[] = [];
  const configFiles: string[] = [];
  const persistentRules: NetworkReport['persistentRules'] = [];
  await ifupdown(r, interfaces, configFiles);
  for (const f of await r.list('/etc/netplan')) {
    if (!/\.ya?ml$/.test(f.name)) continue;
    const file = `/etc/netplan/${f.name}`;
    const text = await r.text(file);
    if (text === null) continue;
    configFiles.push(file);
    interfaces.push(...netplanInterfaces(text, file));
  }
  for (const f of await r.list('/etc/NetworkManager/system-connections')) {
    const file = `/etc/NetworkManager/system-connections/${f.name}`;
    const text = await r.text(file);
    if (text === null) continue;
    configFiles.push(file);
    const ini = parseIni(text);
    const name = ini.get('connection')?.get('interface-name')?.[0];
    const mac = ini.get('ethernet')?.get('mac-address')?.[0];
    if (name || mac) interfaces.push({ name: name ?? '(any)', source: 'networkmanager', file, ...(mac ? { mac: mac.toLowerCase() } : {}) });
  }
  let defaultLinkOff = false;
  for (const f of await r.list('/etc/systemd/network')) {
    const file = `/etc/systemd/network/${f.name}`;
    if (f.name === '99-default.link' && (await r.linksToDevNull(file))) {
      defaultLinkOff = true;
      continue;
    }
    if (!/\.(network|link)$/.test(f.name)) continue;
    const text = await r.text(file);
    if (text === null) continue;
    configFiles.push(file);
    const ini = parseIni(text);
    const match = ini.get('Match');
    const mac = match?.get('MACAddress')?.[0]?.split(/\s+/)[0]?.toLowerCase();
    if (f.name.endsWith('.network')) {
      for (const n of (match?.get('Name') ?? []).flatMap((x) => x.split(/\s+/))) interfaces.push({ name: n, source: 'networkd', file, ...(mac ? { mac } : {}) });
      if (!match?.get('Name') && mac) interfaces.push({ name: '(any)', source: 'networkd', file, mac });
    } else {
      const name = ini.get('Link')?.get('Name')?.[0];
      if (name && mac) persistentRules.push({ file, mac, name });
    }
  }
  const rules = '/etc/udev/rules.d/70-persistent-net.rules';
  const udev = await r.text(rules);
  if (udev !== null) {
    configFiles.push(rules);
    for (const line of udev.split('\n')) {
      const mac = /ATTR\{address\}=="([^"]+)"/.exec(line)?.[1];
      const name = /NAME="([^"]+)"/.exec(line)?.[1];
      if (mac && name && !line.trim().startsWith('#')) persistentRules.push({ file: rules, mac: mac.toLowerCase(), name });
    }
  }
  // net.ifnames (systemd.net-naming-scheme(7)): off by net.ifnames=0 or by masking the default policy
  const entry = boot.entries.find((e) => e.id === boot.defaultEntry);
  const words = parseCmdline(entry?.cmdline ?? '');
  let predictableNames: boolean | 'unknown' = 'unknown';
  let predictableReason = 'no udev net-setup-link rules were found';
  if (cmdlineValues(words, 'net.ifnames').includes('0')) {
    predictableNames = false;
    predictableReason = 'net.ifnames=0 on the kernel command line';
  } else if (defaultLinkOff) {
    predictableNames = false;
    predictableReason = '/etc/systemd/network/99-default.link is linked to /dev/null';
  } else if (await r.linksToDevNull('/etc/udev/rules.d/80-net-setup-link.rules')) {
    predictableNames = false;
    predictableReason = '/etc/udev/rules.d/80-net-setup-link.rules is linked to /dev/null';
  } else if (await r.exists('/lib/udev/rules.d/80-net-setup-link.rules')) {
    predictableNames = true;
    predictableReason = "udev's 80-net-setup-link.rules names NICs by their position (ens3, enp1s0, ens192...)";
  }
  return { interfaces, predictableNames, predictableReason, persistentRules, configFiles };
}

async function packagesAndAgents(r: Reader, units: Set<string>): Promise<{ packages: GuestReport['packages']; agents: AgentReport[] }> {
  let installed = new Map<string, string>();
  let packages: GuestReport['packages'] = { manager: 'none', count: 0 };
  const status = await r.text('/var/lib/dpkg/status', MAX_DPKG_STATUS);
  if (status !== null) {
    installed = parseDpkgStatus(status);
    packages = { manager: 'dpkg', count: installed.size };
  } else if ((await r.exists('/var/lib/rpm')) || (await r.exists('/usr/lib/sysimage/rpm'))) {
    packages = { manager: 'rpm', count: 0, note: 'the RPM database is not read: agents are found by their unit files only' };
  }
  const agents: AgentReport[] = [];
  for (const a of AGENTS) {
    const pkg = a.packages.find((p) => installed.has(p));
    const services: AgentReport['services'] = [];
    for (const unit of a.units) {
      const file = (await r.exists(`/lib/systemd/system/${unit}`)) || (await r.exists(`/etc/systemd/system/${unit}`));
      if (file || units.has(unit)) services.push({ unit, enabled: units.has(unit) });
    }
    const byUnits = packages.manager !== 'dpkg' && services.length > 0;
    if (!pkg && !byUnits) continue;
    agents.push({ name: a.name, hypervisor: a.hypervisor, installed: true, ...(pkg ? { version: installed.get(pkg) } : {}), services });
  }
  return { packages, agents };
}

/** Everything `guest inspect` reports about an opened guest. */
export async function inspectGuest(guest: Guest): Promise<GuestReport> {
  const r = new Reader(guest);
  const disks: DiskReport[] = guest.disks.map((d) => ({ index: d.index, label: d.label, format: d.image.format, virtualSize: d.image.virtualSize, partitionScheme: d.table.scheme, ...(d.table.diskId ? { diskId: d.table.diskId } : {}) }));
  const volumes: VolumeReport[] = guest.volumes.map((v) => ({
    name: v.name,
    kind: v.lv ? ('lv' as const) : v.partition ? ('partition' as const) : ('disk' as const),
    size: v.volume.size,
    type: v.probe.type,
    ...(v.probe.uuid ? { uuid: v.probe.uuid } : {}),
    ...(v.probe.label ? { label: v.probe.label } : {}),
    ...(v.partition ? { partuuid: v.partition.uuid, partitionType: v.partition.typeName } : {}),
    ...(v.partition?.name ? { partlabel: v.partition.name } : {}),
    ...(v.mountPoint ? { mountPoint: v.mountPoint } : {}),
    readable: !!v.fs,
    names: v.names,
  }));
  const os = await osReport(r);
  const boot = await bootReport(r);
  const facts: GuestFacts = {
    source: guest.source,
    disks,
    volumes,
    ...(guest.root ? { root: guest.root.name } : {}),
    os,
    kernels: [],
    boot,
    naming: [],
    cmdline: {},
    consoles: { cmdline: [], gettys: [], inittab: [] },
    network: { interfaces: [], predictableNames: 'unknown', predictableReason: '', persistentRules: [], configFiles: [] },
    packages: { manager: 'none', count: 0 },
    agents: [],
    warnings: r.warnings,
  };
  if (guest.root) {
    const { kernels, defaultKernel } = await kernelReports(r, boot);
    facts.kernels = kernels;
    if (defaultKernel) facts.defaultKernel = defaultKernel;
    const naming = await namingReport(r, boot);
    facts.naming = naming.naming;
    facts.cmdline = naming.cmdline;
    const units = await enabledUnits(r);
    facts.consoles = await consoleReport(r, boot, units);
    facts.network = await networkReport(r, boot);
    const pa = await packagesAndAgents(r, units);
    facts.packages = pa.packages;
    facts.agents = pa.agents;
  }
  facts.warnings = [...guest.warnings, ...r.warnings];
  if (!guest.root && os.family === 'windows') {
    const windows = await inspectWindows(guest);
    if (windows) {
      const w = windows.os;
      facts.os = { family: 'windows', ...(w.productName ? { name: w.productName, prettyName: w.productName } : {}), ...(w.version ? { version: w.build ? `${w.version}.${w.build}` : w.version } : {}) };
      return { ...facts, warnings: [...facts.warnings, ...windows.notes], windows, verdicts: windowsVerdicts(windows) };
    }
    facts.warnings.push(`no Windows system found: no NTFS volume holds \\Windows\\System32\\config\\SYSTEM${guest.volumes.some((v) => v.probe.type === 'ntfs' && !v.fs) ? ' (some NTFS volumes could not be read)' : ''}`);
  }
  return { ...facts, verdicts: verdicts(facts) };
}

/** Opens `source`, inspects it and closes it. */
export async function inspect(source: GuestSource, options: OpenGuestOptions = {}): Promise<GuestReport> {
  const guest = await openGuest(source, { ...options, writable: false });
  try {
    return await inspectGuest(guest);
  } finally {
    await guest.close();
  }
}
