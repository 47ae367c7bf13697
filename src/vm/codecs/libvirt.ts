/**
 * libvirt domain XML (https://libvirt.org/formatdomain.html), for domain types kvm, qemu
 * (TCG) and xen (the libxl driver: PV with os type "linux", PVH with "xenpvh", HVM).
 *
 * What the model does not name stays in `extra.libvirt` as the parsed XML subtrees, so that a
 * libvirt → libvirt conversion writes an equivalent domain:
 *   type      the domain type (kvm, qemu, xen...)
 *   elements  top-level elements outside the model (features, clock, on_*, pm, cpu's mode and
 *             model, title, memoryBacking...), by name
 *   os        <os> minus what the model holds (type's arch/machine, loader, nvram, bootmenu...)
 *   vcpu      <vcpu>'s attributes (placement, current, cpuset)
 *   devices   device elements outside the model (controllers, channels, input, video, sound,
 *             rng, memballoon, tpm, network disks...), as [tag, node] in document order per tag
 *   disks     per disk (by target dev): what is left of <disk> (driver cache/discard, address, serial...)
 *   nics      per NIC (by MAC, or "#index"): what is left of <interface> (address, boot, link...)
 *   graphics  per graphics type: what is left of <graphics> (image compression, passwd...)
 *   serials   per serial port: non-pty serial elements, whole
 */
import { isAbsolute, join } from 'node:path';
import { PolyvisorError } from '../../errors.js';
import type { ConversionNote, DecodeResult, EncodeInput, EncodeResult, VmCodec } from '../codec.js';
import { emptySpec, normaliseMac, validateSpec, type VmDisk, type VmNic, type VmSpec } from '../spec.js';
import { attr, buildXml, child, childText, children, parseXml, text, type XmlNode } from '../xml.js';

/** Past this a memory size is damage, not a guest (the largest hosts have tens of TiB). */
const MAX_MEMORY_BYTES = 2 ** 46; // 64 TiB

interface LibvirtExtra {
  type?: string;
  elements?: Record<string, unknown>;
  os?: XmlNode;
  vcpu?: XmlNode;
  devices?: Array<[string, unknown]>;
  disks?: Record<string, XmlNode>;
  nics?: Record<string, XmlNode>;
  graphics?: Record<string, XmlNode>;
  serials?: Record<string, XmlNode>;
}

/** formatdomain "Memory Allocation": unit names and their sizes */
const UNITS: Record<string, number> = {
  b: 1, bytes: 1,
  kb: 1e3, k: 1024, kib: 1024,
  mb: 1e6, m: 2 ** 20, mib: 2 ** 20,
  gb: 1e9, g: 2 ** 30, gib: 2 ** 30,
  tb: 1e12, t: 2 ** 40, tib: 2 ** 40,
  pb: 1e15, p: 2 ** 50, pib: 2 ** 50,
  eb: 1e18, e: 2 ** 60, eib: 2 ** 60,
};

const NIC_FROM_LIBVIRT: Record<string, NonNullable<VmNic['model']>> = {
  virtio: 'virtio',
  'virtio-transitional': 'virtio',
  'virtio-non-transitional': 'virtio',
  e1000: 'e1000',
  e1000e: 'e1000e',
  rtl8139: 'rtl8139',
  pcnet: 'pcnet',
  vmxnet3: 'vmxnet3',
  ne2k_pci: 'ne2k',
  netfront: 'xen-netfront',
};

const SCSI_FROM_LIBVIRT: Record<string, NonNullable<VmDisk['controllerModel']>> = {
  'virtio-scsi': 'virtio-scsi',
  'virtio-transitional': 'virtio-scsi',
  'virtio-non-transitional': 'virtio-scsi',
  lsilogic: 'lsilogic',
  lsisas1068: 'lsisas1068',
  lsisas1078: 'megasas',
  vmpvscsi: 'pvscsi',
  buslogic: 'buslogic',
};

const BOOT_DEV: Record<string, 'disk' | 'cdrom' | 'network' | 'floppy'> = { hd: 'disk', cdrom: 'cdrom', network: 'network', fd: 'floppy' };
const BOOT_DEV_OF: Record<string, string> = { disk: 'hd', cdrom: 'cdrom', network: 'network', floppy: 'fd' };

/** libvirt's driver type names where they differ from Polyvisor's registry names */
const FORMAT_FROM_LIBVIRT: Record<string, string> = { vpc: 'vhd' };
const FORMAT_TO_LIBVIRT: Record<string, string> = { vhd: 'vpc' };

/** Debian/Ubuntu's ovmf package: 4 MiB variable store builds */
const OVMF = {
  code: '/usr/share/OVMF/OVMF_CODE_4M.fd',
  vars: '/usr/share/OVMF/OVMF_VARS_4M.fd',
  secureCode: '/usr/share/OVMF/OVMF_CODE_4M.secboot.fd',
  /** the variable store with Microsoft's keys enrolled, which Secure Boot of Windows and shim-signed Linux needs */
  secureVars: '/usr/share/OVMF/OVMF_VARS_4M.ms.fd',
};

/** Elements of <domain> the codec maps; every other one goes to extra.elements. */
const MAPPED_TOP = new Set(['@type', '@id', 'name', 'uuid', 'description', 'metadata', 'memory', 'currentMemory', 'vcpu', 'cpu', 'os', 'bootloader', 'bootloader_args', 'devices', '#text']);

function without(node: XmlNode, keys: readonly string[]): XmlNode | undefined {
  const out: XmlNode = {};
  for (const [k, v] of Object.entries(node)) if (!keys.includes(k)) out[k] = v;
  return Object.keys(out).length ? out : undefined;
}

function asNode(v: unknown): XmlNode {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as XmlNode) : v === undefined || v === '' ? {} : { '#text': String(v) };
}

function corrupt(file: string, field: string, detail: string): PolyvisorError {
  return new PolyvisorError('ERR_CORRUPT', detail, { file, structure: field });
}

function memoryBytes(node: XmlNode, field: string, file: string): number {
  const t = (text(node) ?? '').trim();
  const unit = (attr(node, 'unit') ?? 'KiB').toLowerCase();
  const mul = UNITS[unit];
  if (mul === undefined) throw corrupt(file, field, `unknown memory unit "${attr(node, 'unit')}"`);
  if (!/^\d{1,20}$/.test(t)) throw corrupt(file, field, `"${t}" is not a memory size`);
  const bytes = Number(t) * mul;
  if (!Number.isSafeInteger(bytes) || bytes > MAX_MEMORY_BYTES) throw corrupt(file, field, `${t} ${attr(node, 'unit') ?? 'KiB'} is beyond any machine (limit ${MAX_MEMORY_BYTES / 2 ** 40} TiB)`);
  if (bytes < 1 << 20) throw corrupt(file, field, `${t} ${attr(node, 'unit') ?? 'KiB'} is less than 1 MiB`);
  return bytes;
}

function intAttr(node: unknown, name: string, field: string, file: string, max = 65535): number | undefined {
  const v = attr(node, name);
  if (v === undefined) return undefined;
  const n = /^-?\d+$/.test(v.trim()) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n > max) throw corrupt(file, field, `${name}="${v}" is not a number up to ${max}`);
  return n;
}

/** libosinfo's id for a Linux guest of no particular distribution ("linux2022" in osinfo-db). */
const GENERIC_LINUX_OSINFO = 'http://libosinfo.org/linux/2022';

/** libosinfo ids name the guest OS: http://ubuntu.com/ubuntu/22.04, http://microsoft.com/win/11 */
function familyOfOsinfo(id: string): VmSpec['os']['family'] {
  if (/microsoft\.com/.test(id)) return 'windows';
  if (/(freebsd|openbsd|netbsd|dragonflybsd)\.org/.test(id)) return 'bsd';
  if (/(oracle\.com\/solaris|sun\.com|illumos|openindiana)/.test(id)) return 'solaris';
  if (/(ubuntu|debian|fedoraproject|redhat|centos|rockylinux|almalinux|opensuse|suse|archlinux|alpinelinux|gentoo|linux)/.test(id)) return 'linux';
  return 'other';
}

function decode(data: Buffer, path: string): DecodeResult {
  const doc = parseXml(data, path);
  const dom = child(doc, 'domain');
  if (!dom) throw corrupt(path, 'domain', 'no <domain> root element: not a libvirt domain');
  const notes: ConversionNote[] = [];
  const ex: LibvirtExtra = {};
  const dtype = attr(dom, 'type');
  if (!dtype) throw corrupt(path, 'domain@type', '<domain> has no type attribute');
  ex.type = dtype;

  const name = childText(dom, 'name');
  if (!name) throw corrupt(path, 'name', 'no <name>');
  const spec: VmSpec = emptySpec(name);
  const uuid = childText(dom, 'uuid');
  if (uuid !== undefined) {
    const u = uuid.trim().toLowerCase();
    // libvirt also accepts the 32 hex digits without dashes
    const hex = u.replace(/-/g, '');
    if (!/^[0-9a-f]{32}$/.test(hex)) throw corrupt(path, 'uuid', `"${uuid}" is not a UUID`);
    spec.uuid = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }
  const desc = childText(dom, 'description');
  if (desc !== undefined) spec.description = desc;

  // <metadata>: libosinfo's OS id is the guest OS; other applications' metadata live in their
  // own XML namespaces, which the safe parser removes, so it cannot be written back faithfully
  const md = child(dom, 'metadata');
  if (md) {
    const osId = attr(child(child(md, 'libosinfo'), 'os'), 'id');
    if (osId) spec.os = { family: familyOfOsinfo(osId), variant: osId };
    const others = Object.keys(md).filter((k) => k !== 'libosinfo');
    if (others.length) notes.push({ setting: 'libvirt: metadata', action: 'dropped', from: others, reason: 'application metadata in other XML namespaces is not carried over' });
  }

  // memory: <memory> is the boot-time maximum, <currentMemory> the balloon target
  const memNode = child(dom, 'memory');
  if (!memNode) throw corrupt(path, 'memory', 'no <memory>');
  const maxBytes = memoryBytes(memNode, 'memory', path);
  const curNode = child(dom, 'currentMemory');
  const cur = curNode ? memoryBytes(curNode, 'currentMemory', path) : maxBytes;
  spec.memory = { bytes: Math.min(cur, maxBytes) };
  if (maxBytes > cur) spec.memory.maxBytes = maxBytes;

  const vcpu = child(dom, 'vcpu');
  if (vcpu) {
    const n = Number((text(vcpu) ?? '').trim());
    if (!Number.isInteger(n) || n < 1 || n > 4096) throw corrupt(path, 'vcpu', `"${text(vcpu)}" is not a vCPU count (1..4096)`);
    spec.cpu = { count: n };
    const rest = without(vcpu, ['#text']);
    if (rest) ex.vcpu = rest;
  }
  const cpu = child(dom, 'cpu');
  if (cpu) {
    const topo = child(cpu, 'topology');
    if (topo) {
      const sockets = intAttr(topo, 'sockets', 'cpu/topology', path, 4096);
      const cores = intAttr(topo, 'cores', 'cpu/topology', path, 4096);
      const threads = intAttr(topo, 'threads', 'cpu/topology', path, 16);
      if (sockets) spec.cpu.sockets = sockets;
      if (cores) spec.cpu.cores = cores;
      if (threads) spec.cpu.threads = threads;
      const restTopo = without(topo, ['@sockets', '@cores', '@threads']);
      const restCpu = without(cpu, ['topology']);
      if (restCpu || restTopo) (ex.elements ??= {}).cpu = { ...(restCpu ?? {}), ...(restTopo ? { topology: restTopo } : {}) };
    } else (ex.elements ??= {}).cpu = cpu;
  }

  // os
  const os = child(dom, 'os');
  if (!os) throw corrupt(path, 'os', 'no <os>');
  const osType = (childText(os, 'type') ?? '').trim();
  if (dtype === 'xen' && (osType === 'linux' || osType === 'xen')) spec.virtualization = 'pv';
  else if (dtype === 'xen' && osType === 'xenpvh') spec.virtualization = 'pvh';
  else if (osType === 'hvm') spec.virtualization = 'hvm';
  else throw new PolyvisorError('ERR_UNSUPPORTED', `os type "${osType}" on a ${dtype} domain is not a virtual machine Polyvisor converts (hvm, or linux/xenpvh on xen)`, { file: path, structure: 'os/type' });
  const typeNode = asNode(child(os, 'type'));
  const loader = child(os, 'loader');
  const loaderPath = loader ? text(loader) : undefined;
  const fwAttr = attr(os, 'firmware');
  const uefi = fwAttr === 'efi' || attr(loader, 'type') === 'pflash' || /ovmf|edk2|aavmf|uefi/i.test(loaderPath ?? '');
  if (uefi) {
    spec.firmware = { type: 'uefi' };
    const sbFeature = children(child(os, 'firmware'), 'feature').find((f) => attr(f, 'name') === 'secure-boot');
    if (attr(loader, 'secure') === 'yes' || attr(sbFeature, 'enabled') === 'yes') spec.firmware.secureBoot = true;
    else if (attr(sbFeature, 'enabled') === 'no' || attr(loader, 'secure') === 'no') spec.firmware.secureBoot = false;
  }
  const boot: NonNullable<VmSpec['boot']> = {};
  const kernel = childText(os, 'kernel');
  if (kernel) boot.kernel = kernel;
  const initrd = childText(os, 'initrd');
  if (initrd) boot.ramdisk = initrd;
  const cmdline = childText(os, 'cmdline');
  if (cmdline !== undefined) boot.cmdline = cmdline;
  const order: NonNullable<NonNullable<VmSpec['boot']>['order']> = [];
  for (const b of children(os, 'boot')) {
    const d = BOOT_DEV[attr(b, 'dev') ?? ''];
    if (!d) throw corrupt(path, 'os/boot', `unknown boot dev "${attr(b, 'dev')}" (hd, cdrom, network, fd)`);
    if (!order.includes(d)) order.push(d);
  }
  if (order.length) boot.order = order;
  const bl = childText(dom, 'bootloader');
  if (bl) boot.bootloader = bl;
  const bla = childText(dom, 'bootloader_args');
  if (bla) boot.bootloaderArgs = bla.split(/\s+/).filter(Boolean);
  if (Object.keys(boot).length) spec.boot = boot;
  const osRest = without(os, ['type', 'boot', 'kernel', 'initrd', 'cmdline']);
  const typeRest = without(typeNode, ['#text']);
  if (osRest || typeRest) ex.os = { ...(typeRest ? { type: typeRest } : {}), ...(osRest ?? {}) };

  // top-level elements outside the model, verbatim
  for (const [k, v] of Object.entries(dom)) {
    if (MAPPED_TOP.has(k) || k.startsWith('@')) continue;
    if (k === 'commandline' || k === 'capabilities' || k === 'deprecation' || k === 'override') {
      notes.push({ setting: `libvirt: ${k}`, action: 'dropped', reason: 'hypervisor-specific passthrough (qemu: namespace) is not carried over' });
      continue;
    }
    (ex.elements ??= {})[k] = v;
  }

  // devices
  const devices = child(dom, 'devices') ?? {};
  const scsiModels = new Map<number, VmDisk['controllerModel']>();
  for (const c of children(devices, 'controller')) {
    if (attr(c, 'type') !== 'scsi') continue;
    const m = SCSI_FROM_LIBVIRT[attr(c, 'model') ?? ''];
    scsiModels.set(intAttr(c, 'index', 'controller', path) ?? 0, m);
  }
  const keep = (tag: string, node: unknown) => (ex.devices ??= []).push([tag, node]);
  for (const [tag, v] of Object.entries(devices)) {
    const list = Array.isArray(v) ? v : [v];
    for (const raw of list) {
      const node = asNode(raw);
      switch (tag) {
        case 'disk':
          decodeDisk(node, spec, ex, notes, scsiModels, path) || keep(tag, raw);
          break;
        case 'interface':
          decodeNic(node, spec, ex, path, spec.nics.length) || keep(tag, raw);
          break;
        case 'serial': {
          const port = intAttr(child(node, 'target'), 'port', 'serial/target', path, 255) ?? spec.consoles.filter((c) => c.type === 'serial').length;
          spec.consoles.push({ type: 'serial', port });
          // anything beyond a plain pty with a port number (target type, model, source, log) is kept whole
          const tgt = child(node, 'target');
          const plain = attr(node, 'type') === 'pty' && Object.keys(node).every((k) => k === '@type' || k === 'target') && Object.keys(tgt ?? {}).every((k) => k === '@port');
          if (!plain) (ex.serials ??= {})[String(port)] = node;
          break;
        }
        case 'console': {
          const t = attr(child(node, 'target'), 'type');
          if (t === 'xen' || t === 'virtio') {
            const port = intAttr(child(node, 'target'), 'port', 'console/target', path, 255);
            if (!spec.consoles.some((c) => c.type === t && c.port === port)) spec.consoles.push(port === undefined ? { type: t } : { type: t, port });
          } else if (t !== undefined && t !== 'serial') keep(tag, raw);
          // target type serial (or none): the console of the first serial port, written again from it
          break;
        }
        case 'graphics': {
          const gt = attr(node, 'type');
          if (gt !== 'vnc' && gt !== 'spice' && gt !== 'sdl' && gt !== 'rdp') {
            keep(tag, raw);
            break;
          }
          const g: VmSpec['graphics'][number] = { type: gt };
          const port = intAttr(node, 'port', 'graphics', path);
          if (gt === 'vnc' || gt === 'spice') {
            g.port = attr(node, 'autoport') === 'yes' || port === undefined ? -1 : port;
            const listenEl = child(node, 'listen');
            const lt = attr(listenEl, 'type');
            let rest = without(node, ['@type', '@port', '@autoport', '@listen', 'listen']);
            if (listenEl && lt !== 'address') rest = { ...(rest ?? {}), listen: listenEl };
            else g.listen = attr(node, 'listen') ?? attr(listenEl, 'address') ?? '127.0.0.1'; // qemu.conf's vnc_listen/spice_listen default
            if (rest) (ex.graphics ??= {})[gt] = rest;
          } else {
            const rest = without(node, ['@type']);
            if (rest) (ex.graphics ??= {})[gt] = rest;
          }
          spec.graphics.push(g);
          break;
        }
        case 'tpm':
          spec.firmware = { ...spec.firmware, tpm: true };
          keep(tag, raw);
          break;
        default:
          keep(tag, raw);
      }
    }
  }
  if (spec.virtualization !== 'hvm' && !spec.consoles.some((c) => c.type === 'xen')) spec.consoles.unshift({ type: 'xen' });

  spec.extra.libvirt = ex as Record<string, unknown>;
  return { spec: validateSpec(spec, path), notes };
}

function decodeDisk(node: XmlNode, spec: VmSpec, ex: LibvirtExtra, notes: ConversionNote[], scsiModels: Map<number, VmDisk['controllerModel']>, file: string): boolean {
  const i = spec.disks.length;
  const type = attr(node, 'type') ?? 'file';
  const device = attr(node, 'device') ?? 'disk';
  const target = child(node, 'target');
  const dev = attr(target, 'dev');
  const bus = attr(target, 'bus');
  if (!dev) throw corrupt(file, `disk ${i}/target`, '<disk> without <target dev=...>');
  if ((type !== 'file' && type !== 'block') || (device !== 'disk' && device !== 'cdrom' && device !== 'floppy')) {
    notes.push({ setting: `libvirt: disk ${dev}`, action: 'dropped', from: `${type} ${device}`, reason: 'only file and block disks, CD-ROMs and floppies are converted; this one is kept for libvirt targets only' });
    return false;
  }
  let b: VmDisk['bus'];
  if (bus === undefined) b = /^vd/.test(dev) ? 'virtio' : /^xvd/.test(dev) ? 'xen' : /^hd/.test(dev) ? 'ide' : /^fd/.test(dev) ? 'fdc' : /^nvme/.test(dev) ? 'nvme' : 'scsi';
  else if (['ide', 'sata', 'scsi', 'virtio', 'xen', 'usb', 'fdc', 'nvme'].includes(bus)) b = bus as VmDisk['bus'];
  else {
    notes.push({ setting: `libvirt: disk ${dev}`, action: 'dropped', from: bus, reason: `bus ${bus} is not one Polyvisor converts; kept for libvirt targets only` });
    return false;
  }
  const d: VmDisk = { device, bus: b, target: dev };
  const source = child(node, 'source');
  const f = type === 'file' ? attr(source, 'file') : attr(source, 'dev');
  const driver = child(node, 'driver');
  if (f) {
    d.file = f;
    const fmt = attr(driver, 'type') ?? 'raw';
    d.format = FORMAT_FROM_LIBVIRT[fmt] ?? fmt;
  }
  if (child(node, 'readonly') !== undefined || node.readonly !== undefined) d.readOnly = true;
  const order = intAttr(child(node, 'boot'), 'order', `disk ${dev}/boot`, file, 64);
  if (order !== undefined) {
    if (order < 1) throw corrupt(file, `disk ${dev}/boot`, `boot order ${order} is below 1`);
    d.bootOrder = order;
  }
  const addr = child(node, 'address');
  if (attr(addr, 'type') === 'drive') {
    const c = intAttr(addr, 'controller', `disk ${dev}/address`, file, 255);
    const u = intAttr(addr, 'unit', `disk ${dev}/address`, file, 255);
    if (c !== undefined) d.controller = c;
    if (u !== undefined) d.unit = u;
  }
  if (b === 'scsi') {
    const m = scsiModels.get(d.controller ?? 0);
    if (m) d.controllerModel = m;
  }
  spec.disks.push(d);
  // what is left: driver attributes other than type, source's other attributes, address, serial...
  const rest: XmlNode = {};
  const driverRest = driver ? (f ? without(driver, ['@type']) : driver) : undefined;
  if (driverRest) rest.driver = driverRest;
  const sourceRest = source ? without(source, ['@file', '@dev']) : undefined;
  if (sourceRest) rest.source = sourceRest;
  const targetRest = target ? without(target, ['@dev', '@bus']) : undefined;
  if (targetRest) rest.target = targetRest;
  Object.assign(rest, without(node, ['@type', '@device', 'driver', 'source', 'target', 'readonly', 'boot']) ?? {});
  if (Object.keys(rest).length) (ex.disks ??= {})[dev] = rest;
  return true;
}

function decodeNic(node: XmlNode, spec: VmSpec, ex: LibvirtExtra, file: string, i: number): boolean {
  const type = attr(node, 'type');
  const n: VmNic = {};
  const macA = attr(child(node, 'mac'), 'address');
  if (macA !== undefined) {
    const m = normaliseMac(macA);
    if (!m) throw corrupt(file, `interface ${i}/mac`, `"${macA}" is not a MAC address`);
    n.mac = m;
  }
  const source = child(node, 'source');
  const sourceDrop: string[] = [];
  if (type === 'bridge') {
    n.connection = 'bridge';
    n.network = attr(source, 'bridge');
    sourceDrop.push('@bridge');
  } else if (type === 'network') {
    n.connection = 'network';
    n.network = attr(source, 'network');
    sourceDrop.push('@network');
  } else if (type === 'user') n.connection = 'nat';
  else if (type !== 'direct' && type !== 'ethernet') return false; // hostdev, vhostuser, vdpa...: kept verbatim
  if (n.network === undefined) delete n.network;
  const modelT = attr(child(node, 'model'), 'type');
  let keepModel = false;
  if (modelT !== undefined) {
    if (NIC_FROM_LIBVIRT[modelT]) n.model = NIC_FROM_LIBVIRT[modelT];
    else keepModel = true;
  } else if (spec.virtualization !== 'hvm') n.model = 'xen-netfront';
  spec.nics.push(n);
  const rest: XmlNode = {};
  Object.assign(rest, without(node, ['mac', 'source', 'model', ...(n.connection ? ['@type'] : [])]) ?? {});
  const sourceRest = source ? without(source, sourceDrop) : undefined;
  if (sourceRest) rest.source = sourceRest;
  if (keepModel) rest.model = child(node, 'model');
  if (Object.keys(rest).length) (ex.nics ??= {})[n.mac ?? `#${i}`] = rest;
  return true;
}

// ---------------------------------------------------------------------------------------------
// encode

const DEV_PREFIX: Record<VmDisk['bus'], string> = { virtio: 'vd', sata: 'sd', scsi: 'sd', usb: 'sd', ide: 'hd', fdc: 'fd', xen: 'xvd', nvme: 'vd' };

function devName(prefix: string, i: number): string {
  return i < 26 ? prefix + String.fromCharCode(97 + i) : prefix + String.fromCharCode(96 + Math.floor(i / 26)) + String.fromCharCode(97 + (i % 26));
}

function encode(input: EncodeInput): EncodeResult {
  const { spec } = input;
  const notes: ConversionNote[] = [];
  const ex = (spec.extra.libvirt ?? {}) as LibvirtExtra;
  const virt = spec.virtualization;
  // xen for PV/PVH (only Xen runs them) and for a domain that was xen; otherwise kvm, or what the source said (qemu)
  let dtype = virt !== 'hvm' ? 'xen' : ex.type && ex.type !== 'xen' ? ex.type : ex.type === 'xen' ? 'xen' : 'kvm';
  if (virt !== 'hvm' && ex.type && ex.type !== 'xen') dtype = 'xen';
  const xen = dtype === 'xen';
  const uefi = spec.firmware.type === 'uefi';
  const secure = uefi && spec.firmware.secureBoot === true;

  // disks first: the machine type depends on whether IDE is needed
  type Planned = { i: number; bus: VmDisk['bus']; device: VmDisk['device'] };
  const planned: Planned[] = spec.disks.map((d, i) => {
    let bus = d.bus;
    let device = d.device;
    if (xen) {
      if (virt !== 'hvm') bus = 'xen';
      else if (bus !== 'ide' && bus !== 'xen') bus = d.device === 'cdrom' ? 'ide' : 'xen';
      if (device === 'floppy') device = 'disk';
    } else {
      if (bus === 'xen') bus = 'virtio';
      if (bus === 'nvme') bus = 'virtio';
      if (d.device === 'cdrom' && bus === 'virtio') bus = 'sata';
      if (d.device === 'floppy') bus = 'fdc';
    }
    if (bus !== d.bus) {
      const why = xen
        ? 'the Xen guest sees PV (xen) disks, or emulated IDE ones on HVM'
        : d.bus === 'xen'
          ? 'KVM has no Xen PV block device; virtio-blk is its paravirtual disk (the guest needs virtio drivers)'
          : d.bus === 'nvme'
            ? 'NVMe disks need libvirt 10.3 or later; virtio-blk is the portable paravirtual disk'
            : d.device === 'cdrom'
              ? 'a CD-ROM cannot be a virtio-blk device'
              : 'floppies hang off the floppy controller';
      notes.push({ setting: `disks[${i}].bus`, action: 'changed', from: d.bus, to: bus, reason: why });
    }
    if (device !== d.device) notes.push({ setting: `disks[${i}].device`, action: 'changed', from: d.device, to: device, reason: 'Xen guests under libvirt have no floppy drives' });
    return { i, bus, device };
  });
  // q35 (PCIe, AHCI, SMM for Secure Boot: what virt-install picks for new x86 guests) unless the
  // guest has IDE disks, which only the i440fx "pc" machine has (q35 refuses bus='ide')
  const storedMachine = attr(ex.os?.type, 'machine');
  let machine = 'q35';
  if (!xen && planned.some((p) => p.bus === 'ide')) {
    if (secure) {
      for (const p of planned) {
        if (p.bus !== 'ide') continue;
        p.bus = 'sata';
        notes.push({ setting: `disks[${p.i}].bus`, action: 'changed', from: 'ide', to: 'sata', reason: 'Secure Boot needs the q35 machine (SMM), which has no IDE; its AHCI (SATA) controller replaces it' });
      }
    } else machine = 'pc';
  }
  if (storedMachine && !xen && (/q35/.test(storedMachine) ? machine === 'q35' : /pc|i440fx/.test(storedMachine) ? machine === 'pc' : true)) machine = storedMachine;

  const dom: XmlNode = { '@type': dtype, name: spec.name };
  if (spec.uuid) dom.uuid = spec.uuid;
  const el = { ...(ex.elements ?? {}) };
  const takeEl = (k: string) => {
    const v = el[k];
    delete el[k];
    return v;
  };
  if (el.title !== undefined) dom.title = takeEl('title');
  if (spec.description !== undefined) dom.description = spec.description;
  // libvirt records the guest OS only as a libosinfo id. A variant that is not one is replaced
  // by libosinfo's generic id for the family where there is one (Linux), else reported.
  const osinfoId = spec.os.variant && /^https?:\/\//.test(spec.os.variant) ? spec.os.variant : spec.os.family === 'linux' ? GENERIC_LINUX_OSINFO : undefined;
  if (osinfoId) {
    dom.metadata = { 'libosinfo:libosinfo': { '@xmlns:libosinfo': 'http://libosinfo.org/xmlns/libvirt/domain/1.0', 'libosinfo:os': { '@id': osinfoId } } };
    if (osinfoId !== spec.os.variant && spec.os.variant) notes.push({ setting: 'os.variant', action: 'changed', from: spec.os.variant, to: osinfoId, reason: 'libvirt records the guest OS as a libosinfo id; this variant is not one, so the generic Linux id stands for it' });
  } else if (spec.os.family !== 'unknown') {
    notes.push({ setting: 'os', action: 'dropped', from: spec.os, reason: 'libvirt records the guest OS only as a libosinfo id, and there is no generic one for this guest' });
  }
  const maxBytes = Math.max(spec.memory.maxBytes ?? spec.memory.bytes, spec.memory.bytes);
  const kib = (b: number) => String(Math.ceil(b / 1024));
  if (spec.memory.bytes % 1024 || maxBytes % 1024) notes.push({ setting: 'memory.bytes', action: 'changed', reason: 'written in KiB, rounded up' });
  if (el.maxMemory !== undefined) dom.maxMemory = takeEl('maxMemory');
  dom.memory = { '@unit': 'KiB', '#text': kib(maxBytes) };
  dom.currentMemory = { '@unit': 'KiB', '#text': kib(spec.memory.bytes) };
  for (const k of ['blkiotune', 'memtune', 'memoryBacking']) if (el[k] !== undefined) dom[k] = takeEl(k);
  dom.vcpu = { ...(ex.vcpu ?? (spec.extra.libvirt ? {} : { '@placement': 'static' })), '#text': String(spec.cpu.count) };
  for (const k of ['vcpus', 'iothreads', 'iothreadids', 'cputune', 'numatune', 'resource']) if (el[k] !== undefined) dom[k] = takeEl(k);

  const b = spec.boot ?? {};
  if (b.bootloader !== undefined) {
    if (xen && virt !== 'hvm') {
      dom.bootloader = b.bootloader;
      if (b.bootloaderArgs?.length) dom.bootloader_args = b.bootloaderArgs.join(' ');
    } else notes.push({ setting: 'boot.bootloader', action: 'dropped', from: b.bootloader, reason: 'a host-side bootloader (pygrub) runs only for Xen PV and PVH guests' });
  } else if (xen && virt !== 'hvm' && b.kernel === undefined) {
    dom.bootloader = '/usr/lib/xen/bin/pygrub';
    notes.push({ setting: 'boot', action: 'changed', to: 'pygrub', reason: "a Xen PV guest needs a kernel or a bootloader; pygrub reads the guest's own GRUB configuration" });
  }

  // <os>
  const osEx = { ...(ex.os ?? {}) };
  const exTypeAttrs = without(asNode(osEx.type), ['@machine']) ?? {};
  delete osEx.type;
  const os: XmlNode = {};
  const osTypeText = virt === 'pv' ? 'linux' : virt === 'pvh' ? 'xenpvh' : 'hvm';
  const typeAttrs: XmlNode = { '@arch': 'x86_64', ...exTypeAttrs };
  if (!xen) typeAttrs['@machine'] = machine;
  else if (storedMachine) typeAttrs['@machine'] = storedMachine;
  os.type = { ...typeAttrs, '#text': osTypeText };
  // the firmware as the source wrote it is kept when it still says the same thing
  const exUefi = osEx['@firmware'] === 'efi' || attr(osEx.loader, 'type') === 'pflash' || /ovmf|edk2|aavmf|uefi/i.test(text(osEx.loader) ?? '');
  const exSecure = attr(osEx.loader, 'secure') === 'yes' || children(osEx.firmware, 'feature').some((f) => attr(f, 'name') === 'secure-boot' && attr(f, 'enabled') === 'yes');
  const keepFw = virt === 'hvm' && exUefi === uefi && (!uefi || exSecure === secure);
  if (!keepFw) {
    delete osEx['@firmware'];
    delete osEx.firmware;
    delete osEx.loader;
    delete osEx.nvram;
  }
  if (osEx['@firmware'] !== undefined) os['@firmware'] = osEx['@firmware'];
  if (osEx.firmware !== undefined) os.firmware = osEx.firmware;
  if (keepFw && (osEx.loader !== undefined || osEx['@firmware'] !== undefined)) {
    if (osEx.loader !== undefined) os.loader = osEx.loader;
    if (osEx.nvram !== undefined) os.nvram = osEx.nvram;
  } else if (virt === 'hvm' && uefi) {
    if (xen) os.loader = { '@type': 'pflash', '#text': '/usr/lib/xen/boot/ovmf.bin' };
    else {
      os.loader = { '@readonly': 'yes', ...(secure ? { '@secure': 'yes' } : {}), '@type': 'pflash', '#text': secure ? OVMF.secureCode : OVMF.code };
      os.nvram = { '@template': secure ? OVMF.secureVars : OVMF.vars, '#text': `/var/lib/libvirt/qemu/nvram/${spec.name}_VARS.fd` };
    }
  } else if (virt === 'hvm' && xen) os.loader = { '@type': 'rom', '#text': '/usr/lib/xen/boot/hvmloader' };
  if (!uefi && spec.firmware.secureBoot) notes.push({ setting: 'firmware.secureBoot', action: 'dropped', reason: 'Secure Boot needs UEFI firmware' });
  if (secure && xen) notes.push({ setting: 'firmware.secureBoot', action: 'dropped', from: true, reason: "Xen's OVMF has no Secure Boot" });
  if (virt !== 'hvm' && uefi) notes.push({ setting: 'firmware.type', action: 'dropped', from: 'uefi', reason: 'Xen PV and PVH guests have no firmware' });
  if (b.kernel !== undefined) os.kernel = b.kernel;
  if (b.ramdisk !== undefined) os.initrd = b.ramdisk;
  if (b.cmdline !== undefined) os.cmdline = b.cmdline;
  // per-device <boot order> and <os><boot dev> cannot be mixed (formatdomain "BIOS bootloader")
  const perDevice = spec.disks.some((d) => d.bootOrder !== undefined);
  if (b.order?.length && virt === 'hvm') {
    if (perDevice) notes.push({ setting: 'boot.order', action: 'dropped', from: b.order, reason: 'the disks carry their own boot order, which libvirt does not allow together with <boot dev>' });
    else os.boot = b.order.map((o) => ({ '@dev': BOOT_DEV_OF[o] }));
  }
  for (const [k, v] of Object.entries(osEx)) if (!(k in os) && k !== 'loader' && k !== 'nvram') os[k] = v;
  dom.os = os;

  // features (kept from the source, else the defaults virt-install writes); SMM for Secure Boot
  let features = el.features !== undefined ? asNode(takeEl('features')) : virt === 'hvm' ? (xen ? { acpi: '', apic: '', pae: '' } : { acpi: '', apic: '' }) : undefined;
  if (secure && !xen) features = { ...(features ?? {}), smm: { '@state': 'on' } };
  if (features) dom.features = features;

  // CPU topology
  const cpuEx = el.cpu !== undefined ? asNode(takeEl('cpu')) : undefined;
  const { sockets, cores, threads } = spec.cpu;
  if (sockets || cores || threads || cpuEx) {
    const cpu: XmlNode = { ...(cpuEx ?? {}) };
    if (sockets || cores || threads) {
      const s = sockets ?? Math.max(1, Math.floor(spec.cpu.count / ((cores ?? 1) * (threads ?? 1))));
      cpu.topology = { '@sockets': String(s), ...(asNode(cpuEx?.topology) ?? {}), '@cores': String(cores ?? 1), '@threads': String(threads ?? 1) };
    }
    dom.cpu = cpu;
  }
  for (const k of ['clock', 'on_poweroff', 'on_reboot', 'on_crash', 'pm']) if (el[k] !== undefined) dom[k] = takeEl(k);

  // devices
  const devices: XmlNode = {};
  const push = (tag: string, node: unknown) => {
    const cur = devices[tag];
    devices[tag] = cur === undefined ? [node] : [...(cur as unknown[]), node];
  };
  const exDevices = (ex.devices ?? []).filter(([tag]) => !(tag === 'tpm' && !spec.firmware.tpm));
  const emulator = exDevices.find(([t]) => t === 'emulator');
  if (emulator) devices.emulator = emulator[1];

  const used = new Set<string>();
  const counters = new Map<string, number>();
  const scsiControllers = new Map<number, VmDisk['controllerModel']>();
  const fmtAllowed = xen ? ['raw', 'qcow', 'qcow2', 'vhd', 'qed'] : ['raw', 'qcow2', 'qcow', 'qed', 'vmdk', 'vhd', 'vhdx', 'vdi'];
  for (const p of planned) {
    const d = spec.disks[p.i]!;
    const df = input.diskFiles[p.i];
    // libvirt's schema takes absolute paths only: relative names are resolved against the
    // folder the domain is written to, when the caller says where that is.
    const named = df?.file ?? d.file;
    const file = named !== undefined && !isAbsolute(named) && input.folder ? join(input.folder, named) : named;
    const format = df?.format ?? d.format ?? 'raw';
    if (file !== undefined && !fmtAllowed.includes(format)) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `disk ${p.i}: a ${dtype} domain cannot use ${format} images (it takes ${fmtAllowed.join(', ')}); convert the disk first`, { structure: `disks[${p.i}].format` });
    }
    const prefix = DEV_PREFIX[p.bus];
    let dev = d.target && d.target.startsWith(prefix) && /^[a-z]+\d*$/.test(d.target.slice(prefix.length)) && !used.has(d.target) ? d.target : undefined;
    while (!dev) {
      const n = counters.get(prefix) ?? 0;
      counters.set(prefix, n + 1);
      const cand = devName(prefix, n);
      if (!used.has(cand) && !spec.disks.some((o, j) => j > p.i && o.target === cand)) dev = cand;
    }
    used.add(dev);
    const rest = asNode(d.target ? ex.disks?.[d.target] : undefined);
    const block = file !== undefined && file.startsWith('/dev/');
    const node: XmlNode = { '@type': block ? 'block' : 'file', '@device': p.device };
    const driverName = xen && block ? 'phy' : 'qemu';
    if (file !== undefined) node.driver = { '@name': driverName, ...(asNode(rest.driver) ?? {}), '@type': FORMAT_TO_LIBVIRT[format] ?? format };
    else if (rest.driver !== undefined) node.driver = rest.driver;
    if (file !== undefined) node.source = { ...(asNode(rest.source) ?? {}), [block ? '@dev' : '@file']: file };
    node.target = { '@dev': dev, '@bus': p.bus, ...(asNode(rest.target) ?? {}) };
    if (d.bootOrder !== undefined) node.boot = { '@order': String(d.bootOrder) };
    if (d.readOnly || p.device === 'cdrom') node.readonly = '';
    for (const [k, v] of Object.entries(rest)) if (!['driver', 'source', 'target'].includes(k)) node[k] = v;
    if (node.address === undefined && d.unit !== undefined && (p.bus === 'scsi' || p.bus === 'sata') && p.bus === d.bus) {
      node.address = { '@type': 'drive', '@controller': String(d.controller ?? 0), '@bus': '0', '@target': '0', '@unit': String(d.unit) };
    }
    if (p.bus === 'scsi') scsiControllers.set(d.controller ?? 0, d.controllerModel);
    push('disk', node);
  }
  for (const [tag, node] of exDevices) if (tag === 'disk') push('disk', node);

  // SCSI controllers the disks need, unless the source's own are kept
  const kept = exDevices.filter(([t]) => t === 'controller').map(([, n]) => n);
  for (const [index, model] of scsiControllers) {
    if (kept.some((c) => attr(c, 'type') === 'scsi' && Number(attr(c, 'index') ?? 0) === index)) continue;
    let m = 'virtio-scsi';
    if (model === 'lsilogic' || model === 'lsisas1068') m = model;
    else if (model === 'pvscsi') m = 'vmpvscsi';
    else if (model === 'megasas') m = 'lsisas1078';
    else if (model !== undefined && model !== 'virtio-scsi') {
      notes.push({ setting: `controller scsi ${index}`, action: 'changed', from: model, to: 'virtio-scsi', reason: `QEMU does not emulate ${model}; virtio-scsi is its paravirtual SCSI controller (the guest needs its driver)` });
    }
    push('controller', { '@type': 'scsi', '@index': String(index), '@model': m });
  }
  for (const c of kept) push('controller', c);

  // NICs
  spec.nics.forEach((n, i) => {
    const rest = asNode((n.mac && ex.nics?.[n.mac]) || ex.nics?.[`#${i}`]);
    const node: XmlNode = { '@type': 'network' };
    if (n.mac) node.mac = { '@address': n.mac };
    const restType = attr(rest, 'type');
    switch (n.connection) {
      case 'network':
        node['@type'] = 'network';
        node.source = { '@network': n.network ?? 'default' };
        break;
      case 'nat':
        node['@type'] = 'user';
        break;
      case 'none':
        node['@type'] = 'network';
        node.source = { '@network': 'default' };
        node.link = { '@state': 'down' };
        notes.push({ setting: `nics[${i}].connection`, action: 'changed', from: 'none', to: 'network default, link down', reason: 'libvirt NICs always join a network; this one is written with its link down' });
        break;
      case 'bridge':
        node['@type'] = 'bridge';
        node.source = { '@bridge': n.network ?? (xen ? 'xenbr0' : 'virbr0') };
        break;
      default:
        if (restType) {
          node['@type'] = restType;
        } else if (n.network) {
          node['@type'] = 'bridge';
          node.source = { '@bridge': n.network };
        } else {
          node['@type'] = 'network';
          node.source = { '@network': 'default' };
        }
    }
    if (rest.source !== undefined) node.source = { ...(asNode(node.source) ?? {}), ...asNode(rest.source) };
    let model: string | undefined;
    const m = n.model;
    if (xen) {
      if (virt !== 'hvm') {
        model = 'netfront';
        if (m !== undefined && m !== 'xen-netfront') notes.push({ setting: `nics[${i}].model`, action: 'changed', from: m, to: 'xen-netfront', reason: 'a Xen PV or PVH guest sees only the PV network device (netfront)' });
      } else if (m === 'xen-netfront') model = 'netfront';
      else if (m === 'rtl8139' || m === 'e1000' || m === undefined) model = m;
      else {
        model = 'e1000';
        notes.push({ setting: `nics[${i}].model`, action: 'changed', from: m, to: 'e1000', reason: 'Xen HVM emulates rtl8139 and e1000; e1000 is the nearest with drivers in most guests' });
      }
    } else if (m === 'xen-netfront' || m === 'hyperv-netvsc') {
      model = 'virtio';
      notes.push({ setting: `nics[${i}].model`, action: 'changed', from: m, to: 'virtio', reason: `${m === 'xen-netfront' ? 'Xen' : 'Hyper-V'}'s paravirtual NIC does not exist under KVM; virtio-net is its paravirtual NIC (the guest needs virtio drivers)` });
    } else if (m === 'vmxnet2' || m === 'hyperv-legacy') {
      model = 'e1000';
      notes.push({ setting: `nics[${i}].model`, action: 'changed', from: m, to: 'e1000', reason: `QEMU does not emulate ${m}; e1000 has drivers in most guests` });
    } else if (m === 'ne2k') model = 'ne2k_pci';
    else model = m;
    if (model) node.model = { '@type': model };
    for (const [k, v] of Object.entries(rest)) if (!k.startsWith('@') && k !== 'source' && k !== 'model' && node[k] === undefined) node[k] = v;
    if (rest.model !== undefined && n.model === undefined) node.model = rest.model;
    push('interface', node);
  });
  for (const [tag, node] of exDevices) if (tag === 'interface') push('interface', node);

  // consoles: serial ports (with the console on the first, as virt-install writes), Xen PV and virtio consoles
  const serials = spec.consoles.filter((c) => c.type === 'serial');
  serials.forEach((c, k) => {
    const port = c.port ?? k;
    const keptSerial = ex.serials?.[String(port)];
    push('serial', keptSerial ?? { '@type': 'pty', target: { '@port': String(port) } });
  });
  if (serials.length && !xen) push('console', { '@type': 'pty', target: { '@type': 'serial', '@port': String(serials[0]!.port ?? 0) } });
  for (const [i, c] of spec.consoles.entries()) {
    if (c.type === 'xen') {
      if (xen) push('console', { '@type': 'pty', target: { '@type': 'xen', '@port': String(c.port ?? 0) } });
      // under KVM the Xen console has no meaning: the guest's console is whatever else it has
    } else if (c.type === 'virtio') {
      if (xen) notes.push({ setting: `consoles[${i}]`, action: 'dropped', from: 'virtio', reason: 'Xen has no virtio console; the guest has the Xen PV console (hvc0)' });
      else push('console', { '@type': 'pty', target: { '@type': 'virtio', '@port': String(c.port ?? 0) } });
    }
  }
  if (serials.length && xen && virt === 'hvm') {
    // libxl shows the HVM serial port as the domain console
    push('console', { '@type': 'pty', target: { '@type': 'serial', '@port': String(serials[0]!.port ?? 0) } });
  }
  if (xen && virt !== 'hvm' && !spec.consoles.some((c) => c.type === 'xen')) push('console', { '@type': 'pty', target: { '@type': 'xen', '@port': '0' } });
  if (serials.length && xen && virt !== 'hvm') notes.push({ setting: 'consoles', action: 'changed', from: 'serial', to: 'xen', reason: 'a Xen PV guest has no emulated serial port; its console is the Xen PV console' });

  // the source's other devices (channels, input, sound, video, rng, memballoon, tpm...) in their order
  for (const [tag, node] of exDevices) if (!['emulator', 'disk', 'controller', 'interface'].includes(tag)) push(tag, node);
  if (spec.firmware.tpm && !exDevices.some(([t]) => t === 'tpm')) {
    if (xen) notes.push({ setting: 'firmware.tpm', action: 'dropped', from: true, reason: "libvirt's Xen driver has no emulated TPM" });
    else push('tpm', { '@model': 'tpm-crb', backend: { '@type': 'emulator', '@version': '2.0' } });
  }

  // graphics
  spec.graphics.forEach((g, i) => {
    if (g.type === 'vga' || (g.type === 'rdp' && dtype !== 'vbox')) {
      notes.push({ setting: `graphics[${i}]`, action: 'dropped', from: g.type, reason: `libvirt's ${dtype} driver has no ${g.type} display` });
      return;
    }
    if (g.type === 'spice' && xen && virt !== 'hvm') {
      notes.push({ setting: `graphics[${i}]`, action: 'dropped', from: 'spice', reason: 'Xen PV guests have VNC or SDL framebuffers only' });
      return;
    }
    const rest = asNode(ex.graphics?.[g.type]);
    const node: XmlNode = { '@type': g.type };
    if (g.type === 'vnc' || g.type === 'spice') {
      const auto = g.port === undefined || g.port === -1;
      node['@port'] = auto ? '-1' : String(g.port);
      node['@autoport'] = auto ? 'yes' : 'no';
      if (rest.listen === undefined) {
        const listen = g.listen ?? '127.0.0.1';
        node['@listen'] = listen;
        node.listen = { '@type': 'address', '@address': listen };
      }
    }
    Object.assign(node, rest);
    push('graphics', node);
  });

  dom.devices = devices;
  // anything else the source had at the top level (seclabel, sysinfo, keywrap...)
  for (const [k, v] of Object.entries(el)) dom[k] = v;
  if (dom.cpu === undefined && cpuEx) dom.cpu = cpuEx;

  const xml = buildXml({ domain: dom }, { declaration: false });
  return { files: [{ name: `${input.name}.xml`, data: xml }], notes };
}

function probe(head: Buffer): number {
  const t = head.toString('utf8');
  if (!/^\s*(<\?xml[^>]*\?>\s*)?(<!--[\s\S]*?-->\s*)*<domain[\s>]/.test(t)) return 0;
  return /<domain\s[^>]*\btype\s*=\s*["'][a-z]+["']/.test(t) ? 95 : 60;
}

export const libvirt: VmCodec = {
  name: 'libvirt',
  description: 'libvirt domain XML (types kvm, qemu and xen)',
  usedBy: 'KVM/QEMU and Xen through libvirt (virsh define, virt-manager, virt-install)',
  extensions: ['.xml'],
  defaultDiskFormat: 'qcow2',
  // QEMU reads all of these (driver type vmdk, vpc, vhdx, vdi), but only raw and qcow2 are
  // first-class (snapshots, discard, backing chains); qcow2 stays the default
  diskFormats: ['raw', 'qcow2', 'vmdk', 'vhd', 'vhdx', 'vdi'],
  probe,
  decode,
  encode,
};
