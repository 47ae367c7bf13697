/**
 * Opening a guest offline: all of a VM's disks through the disk engine (any format, never
 * copied, never mounted by the host), their partitions and LVM logical volumes, what each
 * volume holds, the file systems Polyvisor reads (ext2/3/4, FAT), the root file system, and
 * the guest's own mount table (/etc/fstab) mapped onto those volumes, so that a guest path
 * such as /boot/grub/grub.cfg resolves on the file system the guest would find it on.
 *
 * Exported API (used by inspection and adaptation; names are kept stable):
 *   openGuest(source, { writable })  -> Guest, from a disk path, a VM (descriptor, package,
 *                                       exported folder, or an opened VmSource) or BlockImages
 *   Guest.readFile / writeFile / exists / stat / lstat / readdir / readlink (guest paths)
 *   Guest.resolve(path)              -> the path with every symlink resolved inside the guest
 *   Guest.fs(path)                   -> { fs, path, volume, mountPoint }: the file system that
 *                                       holds a guest path and the path inside it
 *   Guest.disks, Guest.volumes (each with its probe, names and mount point), Guest.root,
 *   Guest.mounts, Guest.fstab, Guest.warnings, Guest.close()
 *   parseFstab(text), parseDeviceName(spec), findVolume(guest, spec), readTextFile(files, path, max)
 *   GuestFiles: the read-only file interface that a Guest and any GuestFs both offer
 *
 * Paths are resolved here, component by component, across mount points: a symlink's target
 * is read on the file system that holds the link and resolved from the guest's root (an
 * absolute target) or from the link's folder, ".." at the root stays at the root, and at most
 * 40 links are followed per lookup (Linux's MAXSYMLINKS). So /lib/modules works through
 * Debian's /lib -> usr/lib, /vmlinuz -> boot/vmlinuz-... works when /boot is its own
 * partition, and no link in a hostile guest reaches the host or loops.
 *
 * Device names in fstab are the guest's: UUID=, LABEL=, PARTUUID=, PARTLABEL= and their
 * /dev/disk/by-* forms match the volumes' own identifiers; /dev/sdXN, /dev/vdXN, /dev/xvdXN,
 * /dev/hdXN and /dev/nvmeMnNpP match disk X (a = the VM's first disk) and partition N;
 * /dev/mapper/VG-LV and /dev/VG/LV match logical volumes.
 */
import type { BlockImage } from '../disk/image.js';
import { openImage } from '../disk/chain.js';
import { PolyvisorError, isPolyvisorError } from '../errors.js';
import type { VmSource } from '../vm/codec.js';
import { openExt } from './ext4.js';
import { openFat } from './fat.js';
import type { GuestDirEntry, GuestFs, GuestStat, WriteFileOptions } from './fs.js';
import { logicalVolume, scanVolumeGroups } from './lvm.js';
import { partitionVolume, readPartitions, type Partition, type PartitionTable } from './partition.js';
import { probeVolume, type ProbeResult } from './probe.js';
import { imageVolume, type Volume } from './volume.js';
import { openNtfs } from './windows/ntfs.js';

/** What inspection and module readers need from a guest: a Guest and a single GuestFs both offer it. */
export type GuestFiles = Pick<GuestFs, 'readFile' | 'exists' | 'readdir' | 'stat' | 'lstat' | 'readlink'>;

export type GuestSource = string | VmSource | readonly BlockImage[];

export interface OpenGuestOptions {
  /** open the disks for writing (a disk path or BlockImages opened writable; default read-only) */
  writable?: boolean;
  /** follow a descriptor's disk files outside its folder */
  allowOutsidePaths?: boolean;
}

export interface GuestDisk {
  /** 0 is the VM's first disk, the one the guest calls sda, vda or xvda */
  index: number;
  /** the file, or "disk1.vmdk in web.ova" */
  label: string;
  image: BlockImage;
  volume: Volume;
  table: PartitionTable;
}

export interface GuestVolume {
  /** "disk 0 partition 1", "disk 0" (a whole disk), "vg0/root" */
  name: string;
  volume: Volume;
  /** the disk it lies on (a partition or whole disk) */
  disk?: number;
  partition?: Partition;
  /** a logical volume */
  lv?: { vg: string; name: string };
  probe: ProbeResult;
  /** open when Polyvisor reads its file system (ext2/3/4, vfat) */
  fs?: GuestFs;
  /** why a file system Polyvisor reads did not open */
  fsError?: string;
  /** where the guest mounts it: "/" for the root, else from its fstab */
  mountPoint?: string;
  /** the stable names it answers to: "UUID=...", "LABEL=...", "PARTUUID=...", "/dev/mapper/vg-root" */
  names: string[];
}

export interface FstabEntry {
  /** the first field as written: "UUID=...", "/dev/xvda1" */
  spec: string;
  file: string;
  vfstype: string;
  options: string[];
  freq: number;
  passno: number;
  /** 1-based line in /etc/fstab */
  line: number;
}

export interface GuestMount {
  mountPoint: string;
  volume: GuestVolume;
  fs: GuestFs;
  /** how it was found: the fstab spec, or "(root file system)" */
  spec: string;
}

export type DeviceNaming = 'uuid' | 'label' | 'partuuid' | 'partlabel' | 'lvm' | 'mapper' | 'device' | 'by-id' | 'by-path' | 'root' | 'other';
/** The kernel's name prefix for a disk: xvd (Xen blkfront), vd (virtio-blk), sd (SCSI, SATA, libata IDE), hd (the old IDE driver), nvme */
export type DiskPrefix = 'xvd' | 'vd' | 'sd' | 'hd' | 'nvme';

export interface DeviceName {
  spec: string;
  naming: DeviceNaming;
  /** the UUID, label, PARTUUID or PARTLABEL the spec names */
  value?: string;
  /** for /dev/<prefix><letters><n>: the prefix, the disk index (a = 0) and the partition (none for a whole disk) */
  prefix?: DiskPrefix;
  diskIndex?: number;
  partition?: number;
  /** /dev/mapper/VG-LV, /dev/VG/LV */
  vg?: string;
  lv?: string;
  /** /dev/mapper/NAME (a crypttab or LVM name) */
  mapper?: string;
}

/** Linux's MAXSYMLINKS */
const MAX_SYMLINKS = 40;
const MAX_PATH_COMPONENTS = 4096;
const MAX_FSTAB = 1 << 20;
const MAX_FSTAB_LINES = 4096;
/** fs types Polyvisor mounts; the rest are listed but not opened */
const READABLE = new Set(['ext2', 'ext3', 'ext4', 'vfat', 'ntfs']);

/** Reads a guest text file of at most `max` bytes (ERR_UNSUPPORTED beyond: a hostile guest's huge file is not loaded). */
export async function readTextFile(files: GuestFiles, path: string, max: number): Promise<string> {
  const st = await files.stat(path);
  if (st.type !== 'file') throw new PolyvisorError('ERR_NOT_FOUND', `${path} is a ${st.type}, not a file`);
  if (st.size > max) throw new PolyvisorError('ERR_UNSUPPORTED', `${path} is ${st.size} bytes, more than the ${max} read from such a file`);
  return (await files.readFile(path)).toString('utf8');
}

/** fstab(5) fields: octal escapes (\040 for a space) decoded. */
function unescapeOctal(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** /etc/fstab (fstab(5)): six whitespace-separated fields, the last two optional; comments and blank lines skipped. */
export function parseFstab(text: string): FstabEntry[] {
  const out: FstabEntry[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length && i < MAX_FSTAB_LINES; i++) {
    const t = lines[i]!.trim();
    if (!t || t.startsWith('#')) continue;
    const f = t.split(/\s+/);
    if (f.length < 3) continue;
    out.push({
      spec: unescapeOctal(f[0]!),
      file: unescapeOctal(f[1]!),
      vfstype: f[2]!,
      options: (f[3] ?? 'defaults').split(','),
      freq: Number(f[4] ?? 0) || 0,
      passno: Number(f[5] ?? 0) || 0,
      line: i + 1,
    });
  }
  return out;
}

/** "a" -> 0, "z" -> 25, "aa" -> 26 (the kernel's sd_format_disk_name, inverted) */
function diskIndexOf(letters: string): number {
  let n = 0;
  for (const c of letters) n = n * 26 + (c.charCodeAt(0) - 96);
  return n - 1;
}

/** udev's by-label escaping: \x20 for a space */
function unescapeUdev(s: string): string {
  return s.replace(/\\x([0-9a-fA-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
}

/** What a device spec (fstab, crypttab, root=, resume=) names, and how. */
export function parseDeviceName(spec: string): DeviceName {
  const s = spec.trim().replace(/^"(.*)"$/, '$1');
  const tag = /^(UUID|LABEL|PARTUUID|PARTLABEL)=(.*)$/i.exec(s);
  if (tag) return { spec, naming: tag[1]!.toLowerCase() as DeviceNaming, value: tag[2]!.replace(/^"(.*)"$/, '$1') };
  const by = /^\/dev\/disk\/by-(uuid|label|partuuid|partlabel|id|path)\/(.+)$/.exec(s);
  if (by) {
    const kind = by[1]!;
    if (kind === 'id' || kind === 'path') return { spec, naming: `by-${kind}` as DeviceNaming, value: by[2]! };
    return { spec, naming: kind as DeviceNaming, value: unescapeUdev(by[2]!) };
  }
  const dev = /^\/dev\/(xvd|vd|sd|hd)([a-z]{1,3})(\d*)$/.exec(s);
  if (dev) {
    return { spec, naming: 'device', prefix: dev[1] as DiskPrefix, diskIndex: diskIndexOf(dev[2]!), ...(dev[3] ? { partition: Number(dev[3]) } : {}) };
  }
  const nvme = /^\/dev\/nvme(\d+)n(\d+)(?:p(\d+))?$/.exec(s);
  if (nvme) {
    // one controller per disk (VMware, QEMU) or namespaces of controller 0
    const ctrl = Number(nvme[1]);
    const ns = Number(nvme[2]);
    return { spec, naming: 'device', prefix: 'nvme', diskIndex: ctrl > 0 ? ctrl : ns - 1, ...(nvme[3] ? { partition: Number(nvme[3]) } : {}) };
  }
  const mapper = /^\/dev\/mapper\/(.+)$/.exec(s);
  if (mapper) {
    const name = mapper[1]!;
    // device-mapper names of LVs: VG-LV with "-" inside either name doubled (lvm's dm_build_dm_name)
    const m = /^((?:[^-]|--)+)-((?:[^-]|--)+)$/.exec(name);
    if (m) return { spec, naming: 'lvm', vg: m[1]!.replace(/--/g, '-'), lv: m[2]!.replace(/--/g, '-'), mapper: name };
    return { spec, naming: 'mapper', mapper: name };
  }
  if (s === '/dev/root') return { spec, naming: 'root' };
  const vglv = /^\/dev\/([A-Za-z0-9+_.][A-Za-z0-9+_.-]*)\/([A-Za-z0-9+_.][A-Za-z0-9+_.-]*)$/.exec(s);
  if (vglv && !['disk', 'mapper', 'block', 'char', 'input', 'bus', 'snd', 'net', 'pts', 'shm'].includes(vglv[1]!)) return { spec, naming: 'lvm', vg: vglv[1]!, lv: vglv[2]! };
  return { spec, naming: 'other' };
}

/** The volume a device spec names, when it names one of the guest's volumes. */
export function findVolume(volumes: readonly GuestVolume[], spec: string): GuestVolume | undefined {
  const d = parseDeviceName(spec);
  const eq = (a: string | undefined, b: string | undefined) => a !== undefined && b !== undefined && a.toLowerCase() === b.toLowerCase();
  switch (d.naming) {
    case 'uuid':
      return volumes.find((v) => eq(v.probe.uuid, d.value));
    case 'label':
      return volumes.find((v) => v.probe.label !== undefined && v.probe.label === d.value);
    case 'partuuid':
      return volumes.find((v) => eq(v.partition?.uuid, d.value));
    case 'partlabel':
      return volumes.find((v) => v.partition?.name !== undefined && v.partition.name === d.value);
    case 'device':
      return volumes.find((v) => v.disk === d.diskIndex && !v.lv && (d.partition === undefined ? !v.partition : v.partition?.number === d.partition));
    case 'lvm':
      return volumes.find((v) => v.lv?.vg === d.vg && v.lv?.name === d.lv);
    default:
      return undefined;
  }
}

function namesOf(v: Omit<GuestVolume, 'names'>): string[] {
  const out: string[] = [];
  if (v.probe.uuid) out.push(`UUID=${v.probe.uuid}`);
  if (v.probe.label) out.push(`LABEL=${v.probe.label}`);
  if (v.partition) out.push(`PARTUUID=${v.partition.uuid}`);
  if (v.partition?.name) out.push(`PARTLABEL=${v.partition.name}`);
  if (v.lv) out.push(`/dev/mapper/${v.lv.vg.replace(/-/g, '--')}-${v.lv.name.replace(/-/g, '--')}`, `/dev/${v.lv.vg}/${v.lv.name}`);
  return out;
}

const split = (p: string) => p.split('/').filter((c) => c !== '' && c !== '.');

/** A guest opened offline. */
export class Guest implements GuestFiles {
  readonly disks: GuestDisk[];
  readonly volumes: GuestVolume[];
  /** the root file system's volume; undefined when none was found (see warnings) */
  readonly root: GuestVolume | undefined;
  /** the guest's /etc/fstab, parsed (empty without one) */
  readonly fstab: FstabEntry[];
  /** mounted file systems, longest mount point first */
  readonly mounts: GuestMount[];
  readonly warnings: string[];
  readonly writable: boolean;
  /** where the disks came from: the VM or disk path the user gave */
  readonly source: string;
  /** the VM, when the guest was opened from one */
  readonly vm: VmSource | undefined;
  readonly #closers: (() => Promise<void>)[];
  #closed = false;

  constructor(init: { disks: GuestDisk[]; volumes: GuestVolume[]; root: GuestVolume | undefined; fstab: FstabEntry[]; mounts: GuestMount[]; warnings: string[]; writable: boolean; source: string; vm?: VmSource; closers: (() => Promise<void>)[] }) {
    this.disks = init.disks;
    this.volumes = init.volumes;
    this.root = init.root;
    this.fstab = init.fstab;
    this.mounts = [...init.mounts].sort((a, b) => b.mountPoint.length - a.mountPoint.length);
    this.warnings = init.warnings;
    this.writable = init.writable;
    this.source = init.source;
    this.vm = init.vm;
    this.#closers = init.closers;
  }

  /** The mount holding an already resolved absolute path, and the path inside it. */
  #mountOf(abs: string): { mount: GuestMount; rel: string } {
    for (const m of this.mounts) {
      if (m.mountPoint === '/') return { mount: m, rel: abs };
      if (abs === m.mountPoint || abs.startsWith(m.mountPoint + '/')) return { mount: m, rel: abs.slice(m.mountPoint.length) || '/' };
    }
    throw new PolyvisorError('ERR_NOT_FOUND', `${abs}: the guest has no root file system that Polyvisor reads`, { file: this.source });
  }

  /**
   * The path with every symlink resolved inside the guest, across mount points; the last
   * component is followed when `followLast`. A missing component ends resolution: the rest
   * is appended as given (a file about to be created, or ERR_NOT_FOUND on use).
   */
  async resolve(path: string, followLast = true): Promise<string> {
    if (typeof path !== 'string' || path.includes('\0')) throw new PolyvisorError('ERR_NOT_FOUND', `${String(path)}: not a valid path`, { file: this.source });
    let queue = split(path);
    let stack: string[] = [];
    let hops = 0;
    while (queue.length > 0) {
      const c = queue.shift()!;
      if (c === '..') {
        stack.pop(); // ".." at the root stays at the root
        continue;
      }
      if (stack.length >= MAX_PATH_COMPONENTS) throw new PolyvisorError('ERR_NOT_FOUND', `${path}: more than ${MAX_PATH_COMPONENTS} components`, { file: this.source });
      const here = '/' + [...stack, c].join('/');
      if (queue.length === 0 && !followLast) {
        stack.push(c);
        break;
      }
      const { mount, rel } = this.#mountOf(here);
      let st: GuestStat;
      try {
        st = await mount.fs.lstat(rel);
      } catch (e) {
        if (!isPolyvisorError(e, 'ERR_NOT_FOUND')) throw e;
        return '/' + [...stack, c, ...queue.filter((q) => q !== '.')].join('/');
      }
      if (st.type !== 'symlink') {
        stack.push(c);
        continue;
      }
      if (++hops > MAX_SYMLINKS) throw new PolyvisorError('ERR_CORRUPT', `${path}: too many levels of symbolic links (more than ${MAX_SYMLINKS})`, { file: this.source });
      const target = await mount.fs.readlink(rel);
      if (target === '') throw new PolyvisorError('ERR_NOT_FOUND', `${path}: symbolic link ${here} is empty`, { file: this.source });
      // an absolute target starts again at the guest's root, never the host's
      if (target.startsWith('/')) stack = [];
      queue = [...split(target), ...queue];
    }
    return '/' + stack.join('/');
  }

  /** The file system that holds `path` (symlinks resolved), the path inside it, and its volume. */
  async fs(path: string, options: { followLast?: boolean } = {}): Promise<{ fs: GuestFs; path: string; volume: GuestVolume; mountPoint: string }> {
    const abs = await this.resolve(path, options.followLast ?? true);
    const { mount, rel } = this.#mountOf(abs);
    return { fs: mount.fs, path: rel, volume: mount.volume, mountPoint: mount.mountPoint };
  }

  async readFile(path: string): Promise<Buffer> {
    const r = await this.fs(path);
    return r.fs.readFile(r.path);
  }

  async writeFile(path: string, data: Uint8Array, options?: WriteFileOptions): Promise<void> {
    if (!this.writable) throw new PolyvisorError('ERR_READ_ONLY', `${path}: the guest was opened read-only`, { file: this.source });
    const r = await this.fs(path);
    await r.fs.writeFile(r.path, data, options);
  }

  async exists(path: string): Promise<boolean> {
    try {
      const r = await this.fs(path);
      return await r.fs.exists(r.path);
    } catch (e) {
      if (isPolyvisorError(e, 'ERR_NOT_FOUND')) return false;
      throw e;
    }
  }

  async stat(path: string): Promise<GuestStat> {
    const r = await this.fs(path);
    return r.fs.stat(r.path);
  }

  async lstat(path: string): Promise<GuestStat> {
    const r = await this.fs(path, { followLast: false });
    return r.fs.lstat(r.path);
  }

  async readdir(path: string): Promise<GuestDirEntry[]> {
    const abs = await this.resolve(path);
    const r = this.#mountOf(abs);
    const entries = await r.mount.fs.readdir(r.rel);
    // a mount point hides what the parent file system has at that name: its type is a directory
    const prefix = abs === '/' ? '/' : abs + '/';
    const mounted = new Set(this.mounts.filter((m) => m.mountPoint !== abs && m.mountPoint.startsWith(prefix) && !m.mountPoint.slice(prefix.length).includes('/')).map((m) => m.mountPoint.slice(prefix.length)));
    return entries.map((e) => (mounted.has(e.name) ? { name: e.name, type: 'directory' as const } : e));
  }

  async readlink(path: string): Promise<string> {
    const r = await this.fs(path, { followLast: false });
    return r.fs.readlink(r.path);
  }

  /** Flushes what was written and closes every disk this guest opened. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    let first: unknown;
    if (this.writable) {
      for (const v of this.volumes) {
        if (v.fs && !v.fs.readOnly) await v.fs.flush().catch((e) => (first ??= e));
      }
    }
    for (const c of this.#closers) await c().catch((e) => (first ??= e));
    if (first) throw first;
  }
}

interface OpenedDisks {
  images: { image: BlockImage; label: string }[];
  source: string;
  vm?: VmSource;
  closers: (() => Promise<void>)[];
}

async function openDisks(source: GuestSource, options: OpenGuestOptions): Promise<OpenedDisks> {
  if (Array.isArray(source)) {
    const images = source as readonly BlockImage[];
    return { images: images.map((image) => ({ image, label: image.path })), source: images[0]?.path ?? '(no disk)', closers: [] };
  }
  if (typeof source !== 'string') return openVmDisks(source as VmSource, options, []);
  // the VM layer first: a descriptor, package or exported folder; anything else is a disk image
  const { openVmSource } = await import('../vm/source.js');
  let vm: VmSource | undefined;
  try {
    vm = await openVmSource(source, { allowOutsidePaths: options.allowOutsidePaths });
  } catch (e) {
    if (!isPolyvisorError(e, 'ERR_FORMAT_UNKNOWN')) throw e;
  }
  if (vm && vm.kind !== 'disk') {
    const opened = vm;
    return openVmDisks(opened, options, [() => opened.close()]);
  }
  // a disk image alone: opened here, so that it can be opened for writing
  const format = vm?.spec.disks[0]?.format;
  await vm?.close();
  const image = await openImage(source, { writable: !!options.writable, allowOutsidePaths: options.allowOutsidePaths, ...(format ? { format } : {}) });
  return { images: [{ image, label: source }], source, closers: [() => image.close()] };
}

async function openVmDisks(vm: VmSource, options: OpenGuestOptions, closers: (() => Promise<void>)[]): Promise<OpenedDisks> {
  const images: { image: BlockImage; label: string }[] = [];
  const mine = [...closers];
  try {
    for (const d of vm.disks) {
      if (vm.spec.disks[d.index]?.device !== 'disk') continue;
      const image = await d.open();
      mine.unshift(() => image.close());
      if (options.writable && image.readOnly) {
        throw new PolyvisorError('ERR_READ_ONLY', `${d.label}: a VM's disks open read-only; to write into the guest, open its disk files (or writable images) instead`, { file: vm.path });
      }
      images.push({ image, label: d.label });
    }
  } catch (e) {
    for (const c of mine) await c().catch(() => undefined);
    throw e;
  }
  return { images, source: vm.path, vm, closers: mine };
}

async function openFs(v: Omit<GuestVolume, 'names'>, writable: boolean, warnings: string[]): Promise<void> {
  const type = v.probe.type;
  if (!READABLE.has(type)) return;
  try {
    if (type === 'vfat') v.fs = await openFat(v.volume);
    else if (type === 'ntfs') v.fs = await openNtfs(v.volume, { readOnly: !writable });
    else {
      const fs = await openExt(v.volume, { readOnly: !writable });
      for (const w of fs.warnings) warnings.push(`${v.name}: ${w}`);
      v.fs = fs;
    }
  } catch (e) {
    if (!isPolyvisorError(e)) throw e;
    v.fsError = e.message;
    warnings.push(`${v.name}: its ${type} file system could not be opened: ${e.message}`);
  }
}

/** Markers of a Linux root file system, looked up inside one file system (lstat: a link to a separate /usr still counts). */
const ROOT_MARKERS: [string, number][] = [
  ['/etc/os-release', 4],
  ['/etc/fstab', 4],
  ['/sbin/init', 1],
  ['/usr/sbin/init', 1],
  ['/lib/systemd/systemd', 1],
  ['/bin/sh', 1],
];

async function rootScore(fs: GuestFs): Promise<number> {
  let score = 0;
  for (const [p, w] of ROOT_MARKERS) {
    try {
      await fs.lstat(p);
      score += w;
    } catch (e) {
      if (!isPolyvisorError(e)) throw e;
    }
  }
  return score;
}

/** Opens every disk of `source` and finds the guest's volumes, root and mounts. */
export async function openGuest(source: GuestSource, options: OpenGuestOptions = {}): Promise<Guest> {
  const opened = await openDisks(source, options);
  const writable = !!options.writable;
  try {
    if (opened.images.length === 0) throw new PolyvisorError('ERR_NOT_FOUND', 'the VM has no disk to inspect', { file: opened.source });
    const warnings: string[] = [];
    const disks: GuestDisk[] = [];
    const found: Omit<GuestVolume, 'names'>[] = [];
    for (const [index, { image, label }] of opened.images.entries()) {
      const volume = imageVolume(image, label);
      const table = await readPartitions(volume);
      for (const w of table.warnings) warnings.push(`${label}: ${w}`);
      disks.push({ index, label, image, volume, table });
      if (table.scheme === 'none') {
        found.push({ name: `disk ${index}`, volume, disk: index, probe: await probeVolume(volume) });
        continue;
      }
      for (const p of table.partitions) {
        if (p.typeName === 'extended') continue;
        const pv = partitionVolume(volume, p);
        found.push({ name: `disk ${index} partition ${p.number}`, volume: pv, disk: index, partition: p, probe: await probeVolume(pv) });
      }
    }
    const pvs = found.filter((v) => v.probe.type === 'LVM2_member').map((v) => v.volume);
    if (pvs.length) {
      for (const vg of await scanVolumeGroups(pvs)) {
        for (const w of vg.warnings) warnings.push(`VG ${vg.name}: ${w}`);
        for (const lv of vg.lvs) {
          if (!lv.visible) continue;
          try {
            const volume = logicalVolume(vg, lv.name);
            found.push({ name: `${vg.name}/${lv.name}`, volume, lv: { vg: vg.name, name: lv.name }, probe: await probeVolume(volume) });
          } catch (e) {
            if (!isPolyvisorError(e)) throw e;
            warnings.push(`LV ${vg.name}/${lv.name}: ${e.message}`);
          }
        }
      }
    }
    for (const v of found) await openFs(v, writable, warnings);
    const volumes: GuestVolume[] = found.map((v) => ({ ...v, names: namesOf(v) }));
    for (const v of volumes) {
      if (v.probe.type === 'crypto_LUKS') warnings.push(`${v.name}: a LUKS-encrypted volume; what it holds cannot be read offline without its key`);
    }

    // the root: the file system with the most Linux root markers
    let root: GuestVolume | undefined;
    let best = 0;
    const candidates: string[] = [];
    for (const v of volumes) {
      if (!v.fs) continue;
      const s = await rootScore(v.fs);
      if (s >= 4) candidates.push(v.name);
      if (s >= 4 && s > best) {
        best = s;
        root = v;
      }
    }
    if (candidates.length > 1) warnings.push(`several volumes hold a Linux root file system (${candidates.join(', ')}): ${root!.name} was taken as the root`);
    const mounts: GuestMount[] = [];
    let fstab: FstabEntry[] = [];
    if (!root) warnings.push('no Linux root file system was found (no file system Polyvisor reads holds /etc/os-release or /etc/fstab)');
    else {
      root.mountPoint = '/';
      mounts.push({ mountPoint: '/', volume: root, fs: root.fs!, spec: '(root file system)' });
      fstab = await readFstab(root.fs!, warnings);
      for (const e of fstab) {
        if (!e.file.startsWith('/') || e.file === '/' || e.options.includes('bind')) continue;
        if (['swap', 'proc', 'sysfs', 'tmpfs', 'devpts', 'nfs', 'nfs4', 'cifs', 'none'].includes(e.vfstype)) continue;
        const v = findVolume(volumes, e.spec);
        if (!v) {
          if (!e.options.includes('noauto') && !e.options.includes('nofail')) warnings.push(`/etc/fstab line ${e.line}: ${e.spec} (${e.file}) names no volume of this VM's disks`);
          continue;
        }
        const mountPoint = '/' + split(e.file).join('/');
        if (!v.fs) {
          if (READABLE.has(v.probe.type) || v.probe.type === 'unknown') warnings.push(`/etc/fstab line ${e.line}: ${e.file} on ${v.name} cannot be read: ${v.fsError ?? `it holds ${v.probe.type}`}`);
          continue;
        }
        if (mounts.some((m) => m.mountPoint === mountPoint)) continue;
        v.mountPoint ??= mountPoint;
        mounts.push({ mountPoint, volume: v, fs: v.fs, spec: e.spec });
      }
      const rootEntry = fstab.find((e) => e.file === '/');
      if (rootEntry && findVolume(volumes, rootEntry.spec) && findVolume(volumes, rootEntry.spec) !== root) {
        warnings.push(`/etc/fstab names ${rootEntry.spec} as the root, but ${root.name} holds the root file system that was found`);
      }
    }
    return new Guest({ disks, volumes, root, fstab, mounts, warnings, writable, source: opened.source, vm: opened.vm, closers: opened.closers });
  } catch (e) {
    for (const c of opened.closers) await c().catch(() => undefined);
    throw e;
  }
}

async function readFstab(fs: GuestFs, warnings: string[]): Promise<FstabEntry[]> {
  try {
    return parseFstab(await readTextFile(fs, '/etc/fstab', MAX_FSTAB));
  } catch (e) {
    if (!isPolyvisorError(e)) throw e;
    if (e.code !== 'ERR_NOT_FOUND') warnings.push(`/etc/fstab: ${e.message}`);
    return [];
  }
}
