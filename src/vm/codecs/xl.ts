/**
 * Xen's xl domain configuration (xl.cfg(5)), also reading the xm/xend files that came before
 * it. The file syntax is in xl-syntax.ts, the disk and network mini-languages in xl-disk.ts
 * and xl-vif.ts; this file maps settings to and from VmSpec.
 *
 * What the model does not name is kept in `extra.xl` and written back when the target is xl
 * again: `keys` holds every setting the decoder did not map, as the text it was written as;
 * `disks` (by vdev) and `vifs` (by MAC, or "#index") hold the per-device options (backendtype=,
 * script=, vifname=, ip=, rate=...); `vfb` the framebuffer options outside the model.
 */
import { PolyvisorError } from '../../errors.js';
import type { ConversionNote, DecodeResult, EncodeInput, EncodeResult, VmCodec } from '../codec.js';
import { emptySpec, normaliseMac, validateSpec, type VmDisk, type VmNic, type VmSpec } from '../spec.js';
import { formatDiskSpec, parseDiskSpec } from './xl-disk.js';
import { formatVifSpec, parseVifSpec, splitKeyValues } from './xl-vif.js';
import { MAX_XL_BYTES, parseXlConfig, quoteXl, quoteXlSingle, type XlEntry, type XlValue } from './xl-syntax.js';

const MiB = 1 << 20;
/** Larger than any host Xen runs on (Xen's own limit is 16 TiB of guest RAM on x86): past it the value is damage, not a guest. */
const MAX_MEMORY_MIB = 64 * 1024 * 1024;

/** what extra.xl holds */
interface XlExtra {
  keys?: Record<string, string>;
  disks?: Record<string, string[]>;
  vifs?: Record<string, string[]>;
  vfb?: string[];
}

/** xl vif model= values and what the guest sees. */
const NIC_FROM_XL: Record<string, NonNullable<VmNic['model']>> = {
  rtl8139: 'rtl8139',
  e1000: 'e1000',
  e1000e: 'e1000e',
  virtio: 'virtio',
  'virtio-net': 'virtio',
  'virtio-net-pci': 'virtio',
  vmxnet3: 'vmxnet3',
  pcnet: 'pcnet',
  ne2k_pci: 'ne2k',
  netfront: 'xen-netfront',
};

const BOOT_LETTERS: Record<string, 'disk' | 'cdrom' | 'network' | 'floppy'> = { c: 'disk', d: 'cdrom', n: 'network', a: 'floppy' };
const LETTER_OF: Record<string, string> = { disk: 'c', cdrom: 'd', network: 'n', floppy: 'a' };

function corrupt(file: string, e: XlEntry | undefined, detail: string): PolyvisorError {
  return new PolyvisorError('ERR_CORRUPT', detail, { file, structure: e ? `line ${e.line}: ${e.key}` : undefined });
}

class Settings {
  readonly map = new Map<string, XlEntry>();
  readonly used = new Set<string>();
  constructor(
    entries: XlEntry[],
    readonly file: string,
  ) {
    for (const e of entries) {
      const prev = this.map.get(e.key);
      if (e.op === '+=' && prev) {
        // xl's += appends to a list (or a string); the raw text is then the merged value's
        const a = prev.value;
        const b = e.value;
        let value: XlValue;
        if (a.kind === 'list') value = { ...a, items: [...a.items, ...(b.kind === 'list' ? b.items : [b])] };
        else if (a.kind === 'string' && b.kind === 'string') value = { ...a, value: a.value + b.value };
        else throw corrupt(file, e, '"+=" on a value that is neither a list nor a string');
        this.map.set(e.key, { ...prev, value, raw: rawOf(value) });
      } else this.map.set(e.key, e); // the last setting wins, as in xl
    }
  }
  has(k: string): boolean {
    return this.map.has(k);
  }
  entry(k: string): XlEntry | undefined {
    return this.map.get(k);
  }
  str(k: string): string | undefined {
    const e = this.map.get(k);
    if (!e) return undefined;
    this.used.add(k);
    if (e.value.kind === 'string') return e.value.value;
    if (e.value.kind === 'number') return e.value.text;
    throw corrupt(this.file, e, 'expected a string, found a list');
  }
  num(k: string): number | undefined {
    const e = this.map.get(k);
    if (!e) return undefined;
    this.used.add(k);
    if (e.value.kind === 'number') return e.value.value;
    if (e.value.kind === 'string' && /^\s*\d+\s*$/.test(e.value.value)) return Number(e.value.value); // xm wrote memory = "512" too
    throw corrupt(this.file, e, `expected a number, found ${e.value.kind === 'list' ? 'a list' : `"${e.value.value}"`}`);
  }
  bool(k: string): boolean | undefined {
    const v = this.num(k);
    return v === undefined ? undefined : v !== 0;
  }
  /** a list of strings; a single string is accepted as a list of one (xl does so for serial, xm for many) */
  strings(k: string): string[] | undefined {
    const e = this.map.get(k);
    if (!e) return undefined;
    this.used.add(k);
    const items = e.value.kind === 'list' ? e.value.items : [e.value];
    return items.map((it, i) => {
      if (it.kind === 'string') return it.value;
      if (it.kind === 'number') return it.text;
      throw corrupt(this.file, e, `item ${i}: expected a string, found a list`);
    });
  }
}

function rawOf(v: XlValue): string {
  if (v.kind === 'string') return quoteXl(v.value);
  if (v.kind === 'number') return v.text;
  return `[ ${v.items.map(rawOf).join(', ')} ]`;
}

function busOfVdev(vdev: string): VmDisk['bus'] {
  if (/^hd[a-z]/.test(vdev)) return 'ide';
  if (/^sd[a-z]/.test(vdev)) return 'scsi';
  return 'xen'; // xvdX, and the numeric forms of xen-vbd-interface(7)
}

function parseVncListen(v: string): { listen?: string; display?: number } {
  // "ADDRESS[:DISPLAYNUM]"; an IPv6 address keeps its colons
  const m = /^(.*):(\d+)$/.exec(v);
  if (m && !m[1]!.includes(':')) return { listen: m[1] || undefined, display: Number(m[2]) };
  return { listen: v || undefined };
}

function decode(data: Buffer, path: string): DecodeResult {
  if (data.length > MAX_XL_BYTES) throw new PolyvisorError('ERR_UNSUPPORTED', `xl configuration of ${data.length} bytes is over the ${MAX_XL_BYTES}-byte limit for a domain configuration`, { file: path });
  const cfg = parseXlConfig(data.toString('utf8'), path);
  const s = new Settings(cfg.entries, path);
  const notes: ConversionNote[] = [];
  const extra: XlExtra = {};

  const name = s.str('name');
  if (!name) throw new PolyvisorError('ERR_CORRUPT', 'no name = "..." setting: xl requires one', { file: path, structure: 'name' });
  const spec: VmSpec = emptySpec(name);

  const uuid = s.str('uuid');
  if (uuid !== undefined) {
    const u = uuid.trim().toLowerCase();
    if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(u)) throw corrupt(path, s.entry('uuid'), `"${uuid}" is not a UUID`);
    spec.uuid = u;
  }

  // type= (xl), builder= (xm, deprecated since Xen 4.10), pvh=1 (Xen 4.9's PVH switch)
  const type = s.str('type');
  const builder = s.str('builder');
  let virt: VmSpec['virtualization'] = 'pv';
  if (builder !== undefined) {
    if (builder === 'hvm') virt = 'hvm';
    else if (builder !== 'generic') throw corrupt(path, s.entry('builder'), `unknown builder "${builder}" (hvm or generic)`);
  }
  if (type !== undefined) {
    if (type !== 'pv' && type !== 'pvh' && type !== 'hvm') throw corrupt(path, s.entry('type'), `unknown domain type "${type}" (pv, pvh or hvm)`);
    if (builder !== undefined && (builder === 'hvm') !== (type === 'hvm')) throw corrupt(path, s.entry('builder'), `builder="${builder}" contradicts type="${type}"`);
    virt = type;
  }
  if (s.has('pvh') && type === undefined && s.bool('pvh')) virt = 'pvh';
  spec.virtualization = virt;
  const hvm = virt === 'hvm';

  // memory and maxmem are MiB (xl.cfg(5)); libxl's default is 32 MiB
  const memMiB = s.num('memory') ?? 32;
  const maxMiB = s.num('maxmem');
  for (const [k, v] of [['memory', memMiB], ['maxmem', maxMiB]] as const) {
    if (v === undefined) continue;
    if (v < 1 || v > MAX_MEMORY_MIB) throw corrupt(path, s.entry(k), `${v} MiB is outside 1..${MAX_MEMORY_MIB} MiB`);
  }
  spec.memory = { bytes: memMiB * MiB };
  if (maxMiB !== undefined && maxMiB !== memMiB) spec.memory.maxBytes = maxMiB * MiB;

  const vcpus = s.num('vcpus');
  if (vcpus !== undefined) {
    if (vcpus < 1 || vcpus > 4096) throw corrupt(path, s.entry('vcpus'), `${vcpus} is outside 1..4096`);
    spec.cpu = { count: vcpus };
  }

  // boot: kernel/ramdisk/cmdline (direct boot: PV, PVH, and HVM since Xen 4.5), bootloader (pygrub)
  const boot: NonNullable<VmSpec['boot']> = {};
  const kernel = s.str('kernel');
  if (kernel !== undefined) {
    if (hvm && /(^|\/)hvmloader$/.test(kernel)) {
      notes.push({ setting: 'xl: kernel', action: 'dropped', from: kernel, reason: 'xm named the HVM firmware loader as the kernel; xl loads hvmloader itself and ignores this' });
    } else boot.kernel = kernel;
  }
  const ramdisk = s.str('ramdisk');
  if (ramdisk !== undefined) boot.ramdisk = ramdisk;
  const cmdline = s.str('cmdline');
  const root = s.str('root');
  const extraArgs = s.str('extra');
  // xl_parse.c parse_cmdline: cmdline wins; otherwise "root=ROOT EXTRA"
  if (cmdline !== undefined) boot.cmdline = cmdline;
  else if (root !== undefined && extraArgs !== undefined) boot.cmdline = `root=${root} ${extraArgs}`;
  else if (root !== undefined) boot.cmdline = `root=${root}`;
  else if (extraArgs !== undefined) boot.cmdline = extraArgs;
  const bootloader = s.str('bootloader');
  if (bootloader !== undefined) boot.bootloader = bootloader;
  if (s.has('bootloader_args')) {
    const e = s.entry('bootloader_args')!;
    // xl takes a list; xm took one string of arguments
    boot.bootloaderArgs = e.value.kind === 'list' ? s.strings('bootloader_args')! : s.str('bootloader_args')!.split(/\s+/).filter(Boolean);
  }

  // firmware (HVM): firmware= (Xen 4.10+) or bios=
  if (hvm) {
    const fw = s.map.get('firmware');
    const fwv = fw && fw.value.kind === 'string' ? fw.value.value : undefined;
    if (fwv === 'uefi' || fwv === 'ovmf') {
      s.used.add('firmware');
      spec.firmware = { type: 'uefi' };
    } else if (fwv === 'bios' || fwv === 'seabios' || fwv === 'rombios') s.used.add('firmware');
    const bios = s.map.get('bios');
    const biosv = bios && bios.value.kind === 'string' ? bios.value.value : undefined;
    if (biosv === 'ovmf') {
      s.used.add('bios');
      spec.firmware = { type: 'uefi' };
    } else if (biosv === 'seabios' || biosv === 'rombios') s.used.add('bios');

    const order = s.str('boot');
    if (order !== undefined) {
      const o: NonNullable<NonNullable<VmSpec['boot']>['order']> = [];
      for (const ch of order) {
        const d = BOOT_LETTERS[ch];
        if (!d) throw corrupt(path, s.entry('boot'), `unknown boot device "${ch}" (c, d, n or a)`);
        if (!o.includes(d)) o.push(d);
      }
      if (o.length) boot.order = o;
    }
  }
  if (Object.keys(boot).length) spec.boot = boot;

  // disks
  const disks = s.strings('disk') ?? [];
  if (disks.length > 256) throw corrupt(path, s.entry('disk'), `${disks.length} disks: more than 256`);
  disks.forEach((text, i) => {
    let d;
    try {
      d = parseDiskSpec(text);
    } catch (e) {
      throw corrupt(path, s.entry('disk'), `disk ${i} "${text}": ${(e as Error).message}`);
    }
    const vdev = d.vdev!;
    const disk: VmDisk = { device: d.cdrom ? 'cdrom' : 'disk', bus: hvm ? busOfVdev(vdev) : 'xen', target: vdev };
    if (d.target !== undefined && d.format !== 'empty') {
      disk.file = d.target;
      disk.format = d.format ?? 'raw';
    }
    if (d.access === 'ro') disk.readOnly = true;
    spec.disks.push(disk);
    if (d.options.length) (extra.disks ??= {})[vdev] = d.options;
  });

  // NICs
  const vifs = s.strings('vif') ?? [];
  if (vifs.length > 64) throw corrupt(path, s.entry('vif'), `${vifs.length} NICs: more than 64`);
  vifs.forEach((text, i) => {
    let v;
    try {
      v = parseVifSpec(text);
    } catch (e) {
      throw corrupt(path, s.entry('vif'), `vif ${i} "${text}": ${(e as Error).message}`);
    }
    const nic: VmNic = {};
    const options = [...v.options];
    if (v.mac !== undefined) {
      const m = normaliseMac(v.mac);
      if (!m) throw corrupt(path, s.entry('vif'), `vif ${i}: mac "${v.mac}" is not a MAC address`);
      nic.mac = m;
    }
    if (hvm) {
      // type=vif: PV only; type=ioemu (default): the emulated model plus the PV device
      if (v.type === 'vif') nic.model = 'xen-netfront';
      else if (v.type !== undefined && v.type !== 'ioemu') throw corrupt(path, s.entry('vif'), `vif ${i}: unknown type "${v.type}" (ioemu or vif)`);
      else if (v.model === undefined) nic.model = 'rtl8139'; // xl-network-configuration(5): the default
      else if (NIC_FROM_XL[v.model]) nic.model = NIC_FROM_XL[v.model];
      else options.push(`model=${v.model}`);
      if (v.type === 'vif' && v.model !== undefined) options.push(`model=${v.model}`);
    } else {
      // PV and PVH guests see netfront only; type= and model= are ignored by xl for them
      nic.model = 'xen-netfront';
      if (v.type !== undefined) options.push(`type=${v.type}`);
      if (v.model !== undefined) options.push(`model=${v.model}`);
    }
    const script = v.script ?? '';
    if (/vif-nat$/.test(script)) nic.connection = 'nat';
    else if (!/vif-route$/.test(script)) {
      nic.connection = 'bridge';
      nic.network = v.bridge ?? 'xenbr0'; // the documented default
    } else if (v.bridge) options.push(`bridge=${v.bridge}`);
    spec.nics.push(nic);
    if (options.length) (extra.vifs ??= {})[nic.mac ?? `#${i}`] = options;
  });

  // consoles: every PV/PVH guest has the Xen PV console; serial= is HVM's emulated UART
  if (!hvm) spec.consoles.push({ type: 'xen' });
  const serial = s.map.get('serial');
  if (serial) {
    const items = serial.value.kind === 'list' ? serial.value.items : [serial.value];
    if (items.every((it) => it.kind === 'string' && it.value === 'pty')) {
      s.used.add('serial');
      items.forEach((_, port) => spec.consoles.push({ type: 'serial', port }));
    }
  }

  // graphics
  if (hvm) {
    // libxl enables VNC for HVM unless vnc=0 (or nographic=1)
    const nographic = s.bool('nographic') ?? false;
    const vncOn = s.bool('vnc') ?? !nographic;
    const listenRaw = s.str('vnclisten');
    const display = s.num('vncdisplay');
    if (vncOn) {
      const g: VmSpec['graphics'][number] = { type: 'vnc' };
      const l = listenRaw !== undefined ? parseVncListen(listenRaw) : {};
      const disp = display ?? l.display;
      if (disp !== undefined) g.port = 5900 + disp;
      if (l.listen) g.listen = l.listen;
      spec.graphics.push(g);
    }
    if (s.bool('sdl')) spec.graphics.push({ type: 'sdl' });
    if (s.bool('spice')) {
      const g: VmSpec['graphics'][number] = { type: 'spice' };
      const port = s.num('spiceport');
      const host = s.str('spicehost');
      if (port !== undefined) g.port = port;
      if (host) g.listen = host;
      spec.graphics.push(g);
    }
  } else {
    // PV framebuffer: vfb = [ 'vnc=1, ...' ], or the HVM-style keys, which xl folds into one vfb
    const vfbs = s.strings('vfb') ?? [];
    if (!vfbs.length && (s.has('vnc') || s.has('sdl'))) {
      const parts: string[] = [];
      for (const k of ['vnc', 'vnclisten', 'vncdisplay', 'sdl']) if (s.has(k)) parts.push(`${k}=${s.str(k)}`);
      vfbs.push(parts.join(','));
    }
    for (const v of vfbs) {
      const kv = new Map(splitKeyValues(v));
      const rest: string[] = [];
      for (const [k, val] of kv) if (!['vnc', 'vnclisten', 'vncdisplay', 'sdl'].includes(k)) rest.push(val === undefined ? k : `${k}=${val}`);
      if (kv.get('vnc') === '1') {
        const g: VmSpec['graphics'][number] = { type: 'vnc' };
        const l = kv.has('vnclisten') ? parseVncListen(kv.get('vnclisten') ?? '') : {};
        const disp = kv.has('vncdisplay') ? Number(kv.get('vncdisplay')) : l.display;
        if (disp !== undefined && Number.isInteger(disp) && disp >= 0 && disp < 60000) g.port = 5900 + disp;
        if (l.listen) g.listen = l.listen;
        spec.graphics.push(g);
      }
      if (kv.get('sdl') === '1') spec.graphics.push({ type: 'sdl' });
      if (rest.length) (extra.vfb ??= []).push(...rest);
    }
  }

  // vtpm: the guest has a TPM (a vTPM stub domain serves it); its spec strings stay in extra
  if (s.has('vtpm')) spec.firmware = { ...spec.firmware, tpm: true };

  // everything else, verbatim
  for (const [k, e] of s.map) {
    if (s.used.has(k)) continue;
    (extra.keys ??= {})[k] = e.raw;
  }
  if (Object.keys(extra).length) spec.extra.xl = extra as Record<string, unknown>;
  if (cfg.xm) notes.push({ setting: 'xl: syntax', action: 'changed', reason: 'read as an xm (xend) configuration: Python literals such as True, tuples or adjacent strings were accepted; xl itself would refuse them' });
  return { spec: validateSpec(spec, path), notes };
}

// ---------------------------------------------------------------------------------------------
// encode

/** Hands out guest device names (vdevs), keeping the spec's own name when it fits. */
function allocator(hvm: boolean) {
  const used = new Set<string>();
  const take = (prefix: 'xvd' | 'hd' | 'sd', wanted: string | undefined): string => {
    // a PV guest may keep any vdev xen-vbd-interface(7) accepts; an HVM guest one of the chosen kind
    const fits = wanted !== undefined && (hvm ? new RegExp(`^${prefix}[a-z]+$`).test(wanted) : /^(xvd|hd|sd)[a-z]+\d*$/.test(wanted));
    if (fits && !used.has(wanted!)) {
      used.add(wanted!);
      return wanted!;
    }
    const max = prefix === 'hd' ? 4 : 26 * 27; // hda..hdd: two IDE channels, two drives each
    for (let i = 0; i < max; i++) {
      const suffix = i < 26 ? String.fromCharCode(97 + i) : String.fromCharCode(96 + Math.floor(i / 26)) + String.fromCharCode(97 + (i % 26));
      const name = prefix + suffix;
      if (!used.has(name)) {
        used.add(name);
        return name;
      }
    }
    if (prefix !== 'xvd') return take('xvd', undefined);
    throw new PolyvisorError('ERR_UNSUPPORTED', 'more disks than xl has device names for');
  };
  return take;
}

const XL_FORMATS = new Set(['raw', 'qcow', 'qcow2', 'vhd', 'qed']);

function encode(input: EncodeInput): EncodeResult {
  const { spec } = input;
  const notes: ConversionNote[] = [];
  const ex = (spec.extra.xl ?? {}) as XlExtra;
  const lines: string[] = [];
  const emitted = new Set<string>();
  const set = (k: string, v: string) => {
    lines.push(`${k} = ${v}`);
    emitted.add(k);
  };
  const virt = spec.virtualization;
  const hvm = virt === 'hvm';

  lines.push(`# Xen xl domain configuration (xl.cfg(5)) for "${spec.name.replace(/[\r\n]/g, ' ')}", written by Polyvisor.`);
  lines.push('# Disk and network entries use the key=value forms of xl-disk-configuration(5) and xl-network-configuration(5).');
  lines.push('');
  set('name', quoteXl(spec.name));
  if (spec.uuid) set('uuid', quoteXl(spec.uuid));
  set('type', quoteXl(virt));

  const memMiB = Math.ceil(spec.memory.bytes / MiB);
  if (memMiB * MiB !== spec.memory.bytes) notes.push({ setting: 'memory.bytes', action: 'changed', from: spec.memory.bytes, to: memMiB * MiB, reason: 'xl sets memory in whole MiB; rounded up' });
  set('memory', String(memMiB));
  if (spec.memory.maxBytes !== undefined) set('maxmem', String(Math.ceil(spec.memory.maxBytes / MiB)));
  set('vcpus', String(spec.cpu.count));
  if ((spec.cpu.cores ?? 1) > 1 || (spec.cpu.threads ?? 1) > 1 || (spec.cpu.sockets ?? 1) > 1) {
    notes.push({ setting: 'cpu', action: 'dropped', from: { sockets: spec.cpu.sockets, cores: spec.cpu.cores, threads: spec.cpu.threads }, reason: 'xl has no CPU topology setting; the guest sees its vcpus as separate processors' });
  }
  if (spec.description) notes.push({ setting: 'description', action: 'dropped', reason: 'xl.cfg has no description setting' });
  if (spec.os.family !== 'unknown') notes.push({ setting: 'os.family', action: 'dropped', from: spec.os.family, reason: 'xl.cfg has no guest OS setting' });
  if (spec.os.variant) notes.push({ setting: 'os.variant', action: 'dropped', from: spec.os.variant, reason: 'xl.cfg has no guest OS setting' });

  // firmware
  if (hvm) {
    if (spec.firmware.type === 'uefi') set('firmware', quoteXl('uefi'));
  } else if (spec.firmware.type === 'uefi') {
    notes.push({ setting: 'firmware.type', action: 'dropped', from: 'uefi', reason: `a Xen ${virt.toUpperCase()} guest has no firmware: it boots its kernel directly or through a bootloader` });
  }
  if (spec.firmware.secureBoot) notes.push({ setting: 'firmware.secureBoot', action: 'dropped', from: true, reason: "xl's OVMF has no Secure Boot setting (no SMM-protected variable store)" });
  if (spec.firmware.tpm && !ex.keys?.vtpm) {
    notes.push({ setting: 'firmware.tpm', action: 'dropped', from: true, reason: 'xl offers a TPM only through vtpm=, which needs a vTPM stub domain and vtpmmgr set up on the host; none was written' });
  }

  // boot
  const b = spec.boot ?? {};
  if (b.kernel !== undefined) set('kernel', quoteXl(b.kernel));
  if (b.ramdisk !== undefined) set('ramdisk', quoteXl(b.ramdisk));
  if (b.cmdline !== undefined) set('cmdline', quoteXl(b.cmdline));
  if (b.bootloader !== undefined) {
    if (hvm) notes.push({ setting: 'boot.bootloader', action: 'dropped', from: b.bootloader, reason: 'xl runs a bootloader such as pygrub only for PV and PVH guests' });
    else {
      set('bootloader', quoteXl(b.bootloader));
      if (b.bootloaderArgs?.length) set('bootloader_args', `[ ${b.bootloaderArgs.map(quoteXl).join(', ')} ]`);
    }
  }
  if (!hvm && b.kernel === undefined && b.bootloader === undefined && !ex.keys?.firmware) {
    notes.push({ setting: 'boot', action: 'changed', to: 'pygrub', reason: `a Xen ${virt.toUpperCase()} guest needs a kernel or a bootloader; pygrub reads the guest's own GRUB configuration` });
    set('bootloader', quoteXl('pygrub'));
  }
  let order = b.order;
  const diskBoot = spec.disks.map((d, i) => ({ d, i })).filter((x) => x.d.bootOrder !== undefined);
  if (diskBoot.length) {
    if (!order) {
      order = [];
      for (const { d } of diskBoot.sort((a, z) => a.d.bootOrder! - z.d.bootOrder!)) {
        const dev = d.device === 'floppy' ? 'floppy' : d.device === 'cdrom' ? 'cdrom' : 'disk';
        if (!order.includes(dev)) order.push(dev);
      }
    }
    notes.push({ setting: 'disks[].bootOrder', action: 'changed', to: order.map((o) => LETTER_OF[o]).join(''), reason: 'xl orders boot devices by kind (boot="cdn"), not per disk' });
  }
  if (order?.length) {
    if (hvm) set('boot', quoteXl(order.map((o) => LETTER_OF[o]).join('')));
    else notes.push({ setting: 'boot.order', action: 'dropped', from: order, reason: 'boot= applies to HVM guests only' });
  }

  // disks
  const take = allocator(hvm);
  const diskSpecs: string[] = [];
  spec.disks.forEach((d, i) => {
    const df = input.diskFiles[i];
    const file = df?.file ?? d.file;
    const format = df?.format ?? d.format ?? (file !== undefined ? 'raw' : undefined);
    if (format !== undefined && file !== undefined && !XL_FORMATS.has(format)) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `disk ${i}: xl cannot use ${format} images (it reads raw, qcow, qcow2, vhd and qed); convert the disk first`, { structure: `disks[${i}].format` });
    }
    // HVM: hdX is an emulated IDE disk, sdX emulated SCSI, xvdX a PV disk (the emulated ones
    // are also offered through PV drivers once the guest loads them); PV and PVH: all PV
    let prefix: 'xvd' | 'hd' | 'sd' = 'xvd';
    if (hvm && (d.bus === 'ide' || d.bus === 'sata' || (d.device === 'cdrom' && d.bus !== 'xen'))) prefix = 'hd';
    else if (hvm && d.bus === 'scsi') prefix = 'sd';
    const vdev = take(prefix, d.target);
    const bus = !hvm ? 'xen' : vdev.startsWith('hd') ? 'ide' : vdev.startsWith('sd') ? 'scsi' : 'xen';
    if (d.bus !== bus) {
      notes.push({
        setting: `disks[${i}].bus`,
        action: 'changed',
        from: d.bus,
        to: bus,
        reason: bus === 'ide' ? `xl's HVM guests see emulated disks on IDE (${vdev})` : `xl gives the guest a Xen PV disk (${vdev}); the guest needs Xen PV block drivers (blkfront)`,
      });
    }
    if (d.controllerModel && d.controllerModel !== 'xen-pv' && d.controllerModel !== 'piix3') {
      notes.push({ setting: `disks[${i}].controllerModel`, action: 'dropped', from: d.controllerModel, reason: 'xl has no storage controller model setting' });
    }
    const cdrom = d.device === 'cdrom';
    if (d.device === 'floppy') notes.push({ setting: `disks[${i}].device`, action: 'changed', from: 'floppy', to: 'disk', reason: 'xl has no floppy drives' });
    const access = d.readOnly || d.device === 'cdrom' ? 'ro' : 'rw';
    diskSpecs.push(formatDiskSpec({ target: file, format, vdev, access, cdrom, options: (d.target && ex.disks?.[d.target]) || undefined }));
  });
  if (diskSpecs.length) set('disk', `[\n${diskSpecs.map((x) => `    ${quoteXlSingle(x)},`).join('\n')}\n]`);

  // NICs
  const vifSpecs: string[] = [];
  spec.nics.forEach((n, i) => {
    const options = [...((n.mac && ex.vifs?.[n.mac]) || ex.vifs?.[`#${i}`] || [])];
    const v: { mac?: string; bridge?: string; model?: string; type?: string; options: string[] } = { mac: n.mac, options };
    const hasScript = options.some((o) => o.startsWith('script='));
    switch (n.connection) {
      case 'nat':
        if (!hasScript) {
          options.push('script=vif-nat');
          notes.push({ setting: `nics[${i}].connection`, action: 'changed', from: 'nat', to: 'vif-nat', reason: "xl does NAT through the vif-nat hotplug script, which routes the guest's traffic through dom0" });
        }
        break;
      case 'none':
        v.bridge = 'xenbr0';
        notes.push({ setting: `nics[${i}].connection`, action: 'changed', from: 'none', to: 'bridge xenbr0', reason: 'an xl vif always joins a bridge or a routed network; it joins xenbr0' });
        break;
      case 'network':
        v.bridge = n.network ?? 'xenbr0';
        notes.push({ setting: `nics[${i}].connection`, action: 'changed', from: `network ${n.network ?? ''}`.trim(), to: `bridge ${v.bridge}`, reason: 'xl joins host bridges only; the network name was written as a bridge name, which must exist in dom0' });
        break;
      default:
        if (!hasScript || n.network) v.bridge = n.network ?? 'xenbr0';
    }
    if (hvm) {
      if (n.model === 'xen-netfront') v.type = 'vif';
      else if (n.model === 'rtl8139' || n.model === 'e1000') v.model = n.model;
      else if (n.model !== undefined) {
        v.model = 'e1000';
        notes.push({ setting: `nics[${i}].model`, action: 'changed', from: n.model, to: 'e1000', reason: `xl documents rtl8139 and e1000 as the emulated NIC models; e1000 is the nearest to ${n.model} with drivers in most guests (the guest also sees a Xen PV NIC)` });
      }
    } else if (n.model !== undefined && n.model !== 'xen-netfront') {
      notes.push({ setting: `nics[${i}].model`, action: 'changed', from: n.model, to: 'xen-netfront', reason: `a Xen ${virt.toUpperCase()} guest sees only the PV network device (netfront)` });
    }
    vifSpecs.push(formatVifSpec(v));
  });
  if (vifSpecs.length) set('vif', `[\n${vifSpecs.map((x) => `    ${quoteXlSingle(x)},`).join('\n')}\n]`);

  // graphics
  const vnc = spec.graphics.find((g) => g.type === 'vnc');
  const displayOf = (port: number | undefined) => (port !== undefined && port >= 5900 ? port - 5900 : undefined);
  for (const [i, g] of spec.graphics.entries()) {
    if (g.type === 'rdp' || g.type === 'vga' || (g.type === 'spice' && !hvm)) notes.push({ setting: `graphics[${i}]`, action: 'dropped', from: g.type, reason: `xl has no ${g.type} display for ${virt.toUpperCase()} guests` });
    if (g.type === 'vnc' && g !== vnc) notes.push({ setting: `graphics[${i}]`, action: 'dropped', from: 'vnc', reason: 'xl offers one VNC display' });
    if (g.type === 'vnc' && g.port !== undefined && g.port !== -1 && g.port < 5900) notes.push({ setting: `graphics[${i}].port`, action: 'dropped', from: g.port, reason: 'xl sets VNC by display number (port 5900 + N)' });
  }
  const sdl = spec.graphics.some((g) => g.type === 'sdl');
  if (hvm) {
    if (vnc) {
      set('vnc', '1');
      if (vnc.listen) set('vnclisten', quoteXl(vnc.listen));
      const disp = displayOf(vnc.port);
      if (disp !== undefined) set('vncdisplay', String(disp));
    } else set('vnc', '0');
    if (sdl) set('sdl', '1');
    const spice = spec.graphics.find((g) => g.type === 'spice');
    if (spice) {
      set('spice', '1');
      if (spice.listen) set('spicehost', quoteXl(spice.listen));
      if (spice.port !== undefined && spice.port > 0) set('spiceport', String(spice.port));
    }
  } else if (vnc || sdl || ex.vfb?.length) {
    const parts: string[] = [];
    if (vnc) {
      parts.push('vnc=1');
      if (vnc.listen) parts.push(`vnclisten=${vnc.listen}`);
      const disp = displayOf(vnc.port);
      if (disp !== undefined) parts.push(`vncdisplay=${disp}`);
    }
    if (sdl) parts.push('sdl=1');
    parts.push(...(ex.vfb ?? []));
    set('vfb', `[ ${quoteXlSingle(parts.join(', '))} ]`);
  }

  // consoles
  const serials = spec.consoles.filter((c) => c.type === 'serial');
  for (const [i, c] of spec.consoles.entries()) {
    if (c.type === 'virtio') notes.push({ setting: `consoles[${i}]`, action: 'dropped', from: 'virtio', reason: 'xl has no virtio console; the guest has the Xen PV console (hvc0)' });
    if (c.type === 'serial' && !hvm) notes.push({ setting: `consoles[${i}]`, action: 'changed', from: 'serial', to: 'xen', reason: 'a PV or PVH guest has no emulated serial port; its console is the Xen PV console (hvc0)' });
  }
  if (hvm && serials.length) set('serial', serials.length === 1 ? quoteXl('pty') : `[ ${serials.map(() => quoteXl('pty')).join(', ')} ]`);

  // what xl said that the model does not name, verbatim
  // (the decoder keeps only keys it did not map, so a key is skipped only when this encoder wrote it)
  const rest = Object.entries(ex.keys ?? {}).filter(([k]) => !emitted.has(k));
  if (rest.length) {
    lines.push('');
    lines.push('# Settings carried over from the source xl configuration');
    for (const [k, raw] of rest) lines.push(`${k} = ${raw}`);
  }

  return { files: [{ name: `${input.name}.cfg`, data: lines.join('\n') + '\n' }], notes };
}

function probe(head: Buffer): number {
  const text = head.toString('latin1');
  if (/^\s*</.test(text)) return 0;
  if (text.includes('\0')) return 0;
  const hasName = /^[ \t]*name[ \t]*=[ \t]*["']/m.test(text);
  const xlKeys = /^[ \t]*(memory|maxmem|vcpus|kernel|ramdisk|bootloader|builder|type|vif|uuid|on_crash|on_reboot)[ \t]*=/m.test(text) || /^[ \t]*disk[ \t]*=[ \t]*\[/m.test(text);
  if (hasName && xlKeys) return 80;
  if (xlKeys && /^[ \t]*disk[ \t]*=[ \t]*\[/m.test(text)) return 50;
  return 0;
}

export const xl: VmCodec = {
  name: 'xl',
  description: "Xen xl domain configuration (xl.cfg), also reading xm/xend-era files",
  usedBy: 'Xen (xl toolstack; xm/xend on read)',
  extensions: ['.cfg', '.xl', '.xm'],
  // raw: every Xen block backend reads it (blkback "phy" and the qdisk backend alike), so a PV
  // guest gets the fastest path, and it needs no qemu; qcow2 works only through qdisk.
  defaultDiskFormat: 'raw',
  diskFormats: ['raw', 'qcow2', 'vhd'],
  probe,
  decode,
  encode,
};
