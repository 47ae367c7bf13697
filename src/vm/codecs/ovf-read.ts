/**
 * OVF descriptor → VmSpec (DMTF DSP0243, OVF 1.x and 2.x envelopes).
 *
 * What the model names is read from the standard sections: References and DiskSection (the
 * disks' files, capacities and formats), NetworkSection, the first VirtualSystem's
 * OperatingSystemSection, VirtualHardwareSection Items (CIM RASD, by ResourceType) and
 * AnnotationSection. What it does not name — VMware's vmw:Config / vmw:ExtraConfig,
 * VirtualBox's vbox:Machine, XenServer's VirtualSystemOtherConfigurationData, ProductSection,
 * EulaSection, Items of unmodelled types — is kept in spec.extra.ovf, so that writing the same
 * format back loses nothing. Namespace prefixes are gone after parsing (xml.ts): the
 * producers bind ovf:, rasd:, vssd: differently, and elements are found by local name.
 */
import { PolyvisorError } from '../../errors.js';
import type { ConversionNote, DecodeResult } from '../codec.js';
import { emptySpec, normaliseMac, validateSpec, type VmDisk, type VmSpec } from '../spec.js';
import { attr, child, childText, children, parseXml, type XmlNode } from '../xml.js';
import { NS, RT, cimOs, detectDialect, familyFromName, formatFromUri, nicModelFromSubtype, scsiModelFromSubtype, toBytes, type Dialect } from './ovf-dialects.js';

export interface KeyValue {
  key: string;
  value: string;
}

/** The shape of spec.extra.ovf (JSON: it is part of the CLI's --json output). */
export interface OvfExtra {
  dialect: Dialect;
  /** the envelope's version: "1.0" for the /1 namespace, "2.0" for /2 */
  version: '1.0' | '2.0';
  /** VirtualSystem ovf:id when it differs from the name */
  systemId?: string;
  /** vssd:VirtualSystemType: vmx-13, virtualbox-2.2, hvm-3.0-unknown... */
  virtualSystemType?: string;
  os?: { id?: number; vmwOsType?: string; vboxOsType?: string; description?: string };
  /** VirtualHardwareSection-level vmw:Config entries the model does not name */
  config?: KeyValue[];
  /** vmw:ExtraConfig: the .vmx keys VMware carries */
  extraConfig?: KeyValue[];
  /** per device ("disks.0", "nics.1", "cpu", "memory", "graphics.0"): Item-level vmw:Config, XenServer's rasd:Connection */
  deviceConfig?: Record<string, KeyValue[]>;
  /** NetworkSection descriptions by network name */
  networks?: Record<string, string>;
  /** VirtualSystem sections the model does not name, as parsed (ProductSection, EulaSection...) */
  sections?: Record<string, unknown>;
  /** envelope-level sections the model does not name (DeploymentOptionSection...) */
  envelopeSections?: Record<string, unknown>;
  /** VirtualBox's complete machine configuration, as parsed */
  vboxMachine?: unknown;
  /** XenServer's VirtualSystemOtherConfigurationData */
  xenConfig?: Array<{ name: string; value: string }>;
  /** Items of types the model does not name (USB, sound, VMCI, parallel...), as parsed */
  items?: unknown[];
}

export interface OvfReference {
  id: string;
  href: string;
  size?: number;
}

export interface OvfReadResult extends DecodeResult {
  /** References/File entries, in order */
  references: OvfReference[];
}

const ARRAYS = [
  'File',
  'Disk',
  'Network',
  'Item',
  'StorageItem',
  'EthernetPortItem',
  'VirtualSystem',
  'VirtualSystemCollection',
  'VirtualHardwareSection',
  'Config',
  'ExtraConfig',
  'VirtualSystemOtherConfigurationData',
  'Configuration',
  'Property',
];

/** The envelope namespace version bound in the document, from the raw text (the parser drops xmlns). */
function envelopeVersion(textDoc: string, file: string): '1.0' | '2.0' {
  const m = /xmlns(?::[\w.-]+)?\s*=\s*["'](http:\/\/schemas\.dmtf\.org\/ovf\/envelope\/(\d+))["']/.exec(textDoc);
  if (!m) {
    const other = /xmlns(?::[\w.-]+)?\s*=\s*["']([^"']*ovf[^"']*envelope[^"']*)["']/i.exec(textDoc);
    throw new PolyvisorError(
      'ERR_UNSUPPORTED',
      other ? `OVF envelope namespace ${other[1]} is not OVF 1.x or 2.x (OVF 0.9 and earlier are not read)` : 'no OVF envelope namespace (http://schemas.dmtf.org/ovf/envelope/1 or /2) is bound',
      { file, structure: 'Envelope' },
    );
  }
  if (m[2] === '1') return '1.0';
  if (m[2] === '2') return '2.0';
  throw new PolyvisorError('ERR_UNSUPPORTED', `OVF envelope namespace ${m[1]} is not OVF 1.x or 2.x`, { file, structure: 'Envelope' });
}

function int(value: string | undefined, file: string, where: string): number | undefined {
  if (value === undefined || value.trim() === '') return undefined;
  const v = value.trim();
  if (!/^\d{1,15}$/.test(v)) throw new PolyvisorError('ERR_CORRUPT', `"${v.slice(0, 80)}" is not a whole number`, { file, structure: where });
  return Number(v);
}

/** vmw:Config / vmw:ExtraConfig children as key/value pairs. */
function keyValues(node: unknown, name: string): KeyValue[] {
  return children(node, name)
    .map((c) => ({ key: attr(c, 'key') ?? '', value: attr(c, 'value') ?? '' }))
    .filter((kv) => kv.key !== '');
}

interface Controller {
  bus: VmDisk['bus'];
  model?: VmDisk['controllerModel'];
  index: number;
}

/** "a=1;b=2" (XenServer's dictionaries) → map. */
function xenDict(s: string | undefined): Map<string, string> {
  const m = new Map<string, string>();
  for (const part of (s ?? '').split(/[;,]/)) {
    const eq = part.indexOf('=');
    if (eq > 0) m.set(part.slice(0, eq).trim(), part.slice(eq + 1).trim());
  }
  return m;
}

export function readOvf(data: Buffer | string, file: string): OvfReadResult {
  const raw = typeof data === 'string' ? data : data.toString('utf8');
  const doc = parseXml(raw, file, { arrays: ARRAYS });
  const env = child(doc, 'Envelope');
  if (!env) throw new PolyvisorError('ERR_CORRUPT', 'the document element is not an OVF Envelope', { file, structure: 'Envelope' });
  const version = envelopeVersion(raw, file);
  const notes: ConversionNote[] = [];

  // References: the files of the package, by ovf:id.
  const references: OvfReference[] = [];
  const fileById = new Map<string, OvfReference>();
  for (const [i, f] of children(child(env, 'References'), 'File').entries()) {
    const where = `References/File[${i}]`;
    const id = attr(f, 'id');
    const href = attr(f, 'href');
    if (!id || !href) throw new PolyvisorError('ERR_CORRUPT', 'File needs ovf:id and ovf:href', { file, structure: where });
    if (fileById.has(id)) throw new PolyvisorError('ERR_CORRUPT', `duplicate File id "${id}"`, { file, structure: where });
    const compression = attr(f, 'compression');
    if (compression && compression !== 'identity') {
      throw new PolyvisorError('ERR_UNSUPPORTED', `file "${href}" is ${compression}-compressed (ovftool --compress); re-export without compression`, { file, structure: where });
    }
    if (attr(f, 'chunkSize')) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `file "${href}" is split into chunks (ovf:chunkSize); re-export without --chunkSize`, { file, structure: where });
    }
    const ref: OvfReference = { id, href, size: int(attr(f, 'size'), file, where) };
    references.push(ref);
    fileById.set(id, ref);
  }

  // DiskSection: virtual disks, by ovf:diskId.
  const diskById = new Map<string, { capacity: number; href?: string; format?: string; uri?: string }>();
  for (const [i, d] of children(child(env, 'DiskSection'), 'Disk').entries()) {
    const where = `DiskSection/Disk[${i}]`;
    const id = attr(d, 'diskId');
    if (!id) throw new PolyvisorError('ERR_CORRUPT', 'Disk needs ovf:diskId', { file, structure: where });
    const capText = attr(d, 'capacity');
    if (capText !== undefined && capText.includes('${')) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `capacity "${capText}" refers to a ProductSection property; deployment-time sizes are not resolved`, { file, structure: where });
    }
    const capacity = toBytes(capText, attr(d, 'capacityAllocationUnits'), 'byte', file, `${where} (ovf:diskId ${id})`);
    const fileRef = attr(d, 'fileRef');
    let href: string | undefined;
    if (fileRef) {
      const f = fileById.get(fileRef);
      if (!f) throw new PolyvisorError('ERR_CORRUPT', `ovf:fileRef "${fileRef}" names no File in References`, { file, structure: where });
      href = f.href;
    }
    const uri = attr(d, 'format');
    const format = uri ? formatFromUri(uri) : undefined;
    if (uri && !format) notes.push({ setting: `ovf: Disk ${id} format`, action: 'dropped', from: uri, reason: 'the disk format URI names no format Polyvisor knows; the disk is probed when opened' });
    diskById.set(id, { capacity, href, format, uri });
  }

  // NetworkSection
  const networks: Record<string, string> = {};
  for (const n of children(child(env, 'NetworkSection'), 'Network')) {
    const name = attr(n, 'name');
    if (name) networks[name] = childText(n, 'Description') ?? '';
  }

  // The virtual system: the envelope's own, or the first one of a collection (nested collections included).
  const systems: XmlNode[] = [];
  const collect = (node: XmlNode) => {
    systems.push(...children(node, 'VirtualSystem'));
    for (const c of children(node, 'VirtualSystemCollection')) collect(c);
  };
  collect(env);
  const vs = systems[0];
  if (!vs) throw new PolyvisorError('ERR_CORRUPT', 'the envelope holds no VirtualSystem', { file, structure: 'Envelope' });
  for (const other of systems.slice(1)) {
    notes.push({ setting: `ovf: VirtualSystem ${attr(other, 'id') ?? '?'}`, action: 'dropped', reason: 'the package holds several virtual systems (a VirtualSystemCollection); only the first is read' });
  }

  const systemId = attr(vs, 'id');
  const name = (childText(vs, 'Name') ?? systemId ?? '').trim();
  const hwSections = children(vs, 'VirtualHardwareSection');
  const vhs = hwSections[0];
  if (!vhs) throw new PolyvisorError('ERR_CORRUPT', 'VirtualSystem has no VirtualHardwareSection', { file, structure: `VirtualSystem ${systemId ?? ''}`.trim() });
  if (hwSections.length > 1) notes.push({ setting: 'ovf: VirtualHardwareSection', action: 'dropped', reason: `${hwSections.length - 1} further hardware sections (alternatives for other hypervisors) are not read; the first is used` });
  const sys = child(vhs, 'System');
  const virtualSystemType = childText(sys, 'VirtualSystemType')?.trim();
  const dialect = detectDialect(raw, virtualSystemType);

  const spec: VmSpec = emptySpec(name || childText(sys, 'VirtualSystemIdentifier') || 'ovf-vm');
  const extra: OvfExtra = { dialect, version };
  if (systemId && systemId !== spec.name) extra.systemId = systemId;
  if (virtualSystemType) extra.virtualSystemType = virtualSystemType;
  if (Object.keys(networks).length) extra.networks = networks;

  // OperatingSystemSection: a CIM code, and the producers' own names for the guest.
  const oss = child(vs, 'OperatingSystemSection');
  if (oss) {
    const id = int(attr(oss, 'id'), file, 'OperatingSystemSection ovf:id');
    const vmwOsType = attr(oss, 'osType');
    const vboxOsType = childText(oss, 'OSType');
    const description = childText(oss, 'Description');
    extra.os = { id, vmwOsType, vboxOsType, description };
    for (const k of Object.keys(extra.os) as Array<keyof typeof extra.os>) if (extra.os[k] === undefined) delete extra.os[k];
    const cim = id !== undefined ? cimOs(id) : undefined;
    const variant = vmwOsType ?? vboxOsType ?? description ?? cim?.[1];
    let family = cim?.[0] ?? 'unknown';
    if ((family === 'unknown' || family === 'other') && variant) {
      const f = familyFromName(variant);
      if (f !== 'unknown') family = f;
    }
    spec.os = { family, ...(variant ? { variant } : {}) };
  }

  const annotation = childText(child(vs, 'AnnotationSection'), 'Annotation');
  if (annotation) spec.description = annotation;

  // Deployment options: Items bound to a configuration other than the default are skipped.
  const configs = children(child(env, 'DeploymentOptionSection'), 'Configuration');
  const defaultConfig = attr(configs.find((c) => attr(c, 'default') === 'true') ?? configs[0], 'id');

  const items = [...children(vhs, 'Item'), ...children(vhs, 'StorageItem'), ...children(vhs, 'EthernetPortItem')].filter((it) => {
    const cfg = attr(it, 'configuration');
    if (cfg && defaultConfig && !cfg.split(/\s+/).includes(defaultConfig)) return false;
    const bound = attr(it, 'bound');
    return bound === undefined || bound === 'normal';
  });

  const deviceConfig: Record<string, KeyValue[]> = {};
  const unknownItems: unknown[] = [];
  const controllers = new Map<string, Controller>();
  const busCount = new Map<string, number>();
  const itemName = (it: XmlNode, i: number) => `VirtualHardwareSection/Item[${i}] (InstanceID ${childText(it, 'InstanceID') ?? '?'})`;

  // Controllers first: devices refer to them by InstanceID, in any order.
  for (const [i, it] of items.entries()) {
    const type = int(childText(it, 'ResourceType'), file, itemName(it, i));
    const sub = childText(it, 'ResourceSubType')?.trim();
    let c: Omit<Controller, 'index'> | undefined;
    if (type === RT.ide) c = { bus: 'ide', model: 'piix3' };
    else if (type === RT.scsi) c = { bus: 'scsi', model: scsiModelFromSubtype(sub) ?? 'lsilogic' };
    else if (type === RT.otherStorage) {
      if (sub && /nvme/i.test(sub)) c = { bus: 'nvme' };
      else c = { bus: 'sata', model: 'ahci' };
    }
    if (!c) continue;
    const id = childText(it, 'InstanceID');
    if (!id) throw new PolyvisorError('ERR_CORRUPT', 'controller Item has no InstanceID', { file, structure: itemName(it, i) });
    const n = busCount.get(c.bus) ?? 0;
    busCount.set(c.bus, n + 1);
    const address = childText(it, 'Address');
    const index = address !== undefined && /^\d{1,3}$/.test(address.trim()) && Number(address) < 256 ? Number(address) : n;
    controllers.set(id, { ...c, index });
    const ctrlConfig = keyValues(it, 'Config');
    if (ctrlConfig.length) deviceConfig[`controllers.${c.bus}${index}`] = ctrlConfig;
    if (type === RT.scsi && sub && !scsiModelFromSubtype(sub)) {
      notes.push({ setting: `ovf: SCSI controller ${id} ResourceSubType`, action: 'changed', from: sub, to: 'lsilogic', reason: 'the SCSI controller subtype is not one Polyvisor knows; LSI Logic is assumed' });
    }
  }

  let graphicsIndex = 0;
  let serialIndex = 0;
  let sawCpu = false;
  let sawMemory = false;
  for (const [i, it] of items.entries()) {
    const where = itemName(it, i);
    const type = int(childText(it, 'ResourceType'), file, where);
    const sub = childText(it, 'ResourceSubType')?.trim();
    const itemConfig = keyValues(it, 'Config');
    const keep = (key: string, extraKv: KeyValue[] = []) => {
      const all = [...extraKv, ...itemConfig];
      if (all.length) deviceConfig[key] = all;
    };
    switch (type) {
      case RT.processor: {
        if (sawCpu) throw new PolyvisorError('ERR_CORRUPT', 'a second processor Item', { file, structure: where });
        sawCpu = true;
        const count = int(childText(it, 'VirtualQuantity'), file, where);
        if (count === undefined || count < 1) throw new PolyvisorError('ERR_CORRUPT', 'processor Item has no VirtualQuantity ≥ 1', { file, structure: where });
        spec.cpu = { count };
        const cores = int(childText(it, 'CoresPerSocket'), file, where);
        if (cores !== undefined && cores >= 1 && count % cores === 0) {
          spec.cpu.cores = cores;
          spec.cpu.sockets = count / cores;
        }
        keep('cpu');
        break;
      }
      case RT.memory: {
        if (sawMemory) throw new PolyvisorError('ERR_CORRUPT', 'a second memory Item', { file, structure: where });
        sawMemory = true;
        // DSP0243 gives no default unit; every producer we know of writes MB when it writes one.
        spec.memory = { bytes: toBytes(childText(it, 'VirtualQuantity'), childText(it, 'AllocationUnits'), 'byte * 2^20', file, where) };
        keep('memory');
        break;
      }
      case RT.ide:
      case RT.scsi:
      case RT.otherStorage:
        break; // read above
      case RT.disk:
      case RT.storageExtent:
      case RT.cd:
      case RT.dvd:
      case RT.floppy: {
        const device: VmDisk['device'] = type === RT.cd || type === RT.dvd ? 'cdrom' : type === RT.floppy ? 'floppy' : 'disk';
        const hostResource = childText(it, 'HostResource')?.trim();
        if (type === RT.storageExtent && !hostResource) {
          unknownItems.push(unmodelledItem(it));
          break;
        }
        const disk: VmDisk = { device, bus: 'ide' };
        const parentId = childText(it, 'Parent')?.trim();
        if (device === 'floppy') disk.bus = 'fdc';
        else if (parentId !== undefined) {
          const c = controllers.get(parentId);
          if (!c) throw new PolyvisorError('ERR_CORRUPT', `Parent ${parentId} is not a storage controller Item`, { file, structure: where });
          disk.bus = c.bus;
          if (c.model) disk.controllerModel = c.model;
          disk.controller = c.index;
        } else if (dialect === 'xenserver' && device === 'disk') {
          disk.bus = 'xen';
        }
        const unit = childText(it, 'AddressOnParent');
        if (unit !== undefined) {
          const u = int(unit, file, where);
          if (u !== undefined && u <= 255) disk.unit = u;
          // XenCenter numbers IDE devices across the two channels (Xen's userdevice: 0 hda ... 3 hdd)
          if (dialect === 'xenserver' && disk.bus === 'ide' && u !== undefined && u >= 2 && u <= 3) {
            disk.controller = (disk.controller ?? 0) + 1;
            disk.unit = u - 2;
          }
        }
        if (hostResource) {
          // "ovf:/disk/ID" (VirtualBox writes "/disk/ID"), or "ovf:/file/ID" for an ISO in References
          const m = /^(?:ovf:)?\/(disk|file)\/(.+)$/.exec(hostResource);
          if (!m) {
            if (device === 'disk') throw new PolyvisorError('ERR_CORRUPT', `HostResource "${hostResource.slice(0, 120)}" is neither ovf:/disk/ID nor ovf:/file/ID`, { file, structure: where });
            notes.push({ setting: `ovf: ${where} HostResource`, action: 'dropped', from: hostResource, reason: 'the media names a host device, not a file of the package; the drive is read as empty' });
          } else if (m[1] === 'disk') {
            const d = diskById.get(m[2]!);
            if (!d) throw new PolyvisorError('ERR_CORRUPT', `HostResource "${hostResource}" names no Disk in DiskSection`, { file, structure: where });
            if (d.href !== undefined) disk.file = d.href;
            if (d.format) disk.format = d.format;
            disk.capacity = d.capacity;
          } else {
            const f = fileById.get(m[2]!);
            if (!f) throw new PolyvisorError('ERR_CORRUPT', `HostResource "${hostResource}" names no File in References`, { file, structure: where });
            disk.file = f.href;
            if (device === 'cdrom') disk.format = 'raw';
          }
        } else if (device === 'disk') {
          throw new PolyvisorError('ERR_CORRUPT', 'disk Item has no HostResource', { file, structure: where });
        }
        if (device === 'cdrom') disk.readOnly = true;
        const connection = childText(it, 'Connection');
        keep(`disks.${spec.disks.length}`, connection !== undefined ? [{ key: 'rasd:Connection', value: connection }] : []);
        spec.disks.push(disk);
        break;
      }
      case RT.ethernet: {
        const nic: VmSpec['nics'][number] = {};
        const model = nicModelFromSubtype(sub);
        if (model) nic.model = model;
        else if (sub) notes.push({ setting: `nics[${spec.nics.length}].model`, action: 'dropped', from: sub, reason: 'the Ethernet adapter subtype is not one Polyvisor knows' });
        const address = childText(it, 'Address')?.trim();
        if (address) {
          const mac = normaliseMac(address);
          if (mac) nic.mac = mac;
          else notes.push({ setting: `nics[${spec.nics.length}].mac`, action: 'dropped', from: address, reason: 'rasd:Address is not a MAC address' });
        }
        const conn = childText(it, 'Connection')?.trim();
        if (conn) {
          nic.network = conn;
          const c = conn.toLowerCase();
          nic.connection = dialect === 'virtualbox' && c === 'nat' ? 'nat' : dialect === 'virtualbox' && c === 'bridged' ? 'bridge' : 'network';
        } else if (childText(it, 'AutomaticAllocation') === 'false') {
          nic.connection = 'none';
        }
        keep(`nics.${spec.nics.length}`);
        spec.nics.push(nic);
        break;
      }
      case RT.graphics:
        keep(`graphics.${graphicsIndex++}`);
        spec.graphics.push({ type: 'vga' });
        break;
      case RT.serial:
        keep(`consoles.${spec.consoles.length}`);
        spec.consoles.push({ type: 'serial', port: serialIndex++ });
        break;
      case undefined:
        throw new PolyvisorError('ERR_CORRUPT', 'Item has no ResourceType', { file, structure: where });
      default:
        unknownItems.push(unmodelledItem(it));
    }
  }
  if (!sawCpu) notes.push({ setting: 'cpu.count', action: 'changed', to: 1, reason: 'the descriptor has no processor Item; one virtual CPU is assumed' });
  if (!sawMemory) notes.push({ setting: 'memory.bytes', action: 'changed', to: spec.memory.bytes, reason: 'the descriptor has no memory Item; 512 MiB is assumed' });
  if (Object.keys(deviceConfig).length) extra.deviceConfig = deviceConfig;
  if (unknownItems.length) extra.items = unknownItems;

  // VMware: vmw:Config at the hardware section level (firmware, secure boot...), vmw:ExtraConfig.
  const config: KeyValue[] = [];
  for (const kv of keyValues(vhs, 'Config')) {
    if (kv.key === 'firmware') spec.firmware.type = /efi/i.test(kv.value) ? 'uefi' : 'bios';
    else if (kv.key === 'bootOptions.efiSecureBootEnabled') spec.firmware.secureBoot = kv.value === 'true';
    else config.push(kv);
  }
  if (config.length) extra.config = config;
  const extraConfig = keyValues(vhs, 'ExtraConfig');
  if (extraConfig.length) extra.extraConfig = extraConfig;

  // XenServer: VirtualSystemOtherConfigurationData Name= / Value.
  const xen = children(vhs, 'VirtualSystemOtherConfigurationData').map((d) => ({ name: attr(d, 'Name') ?? attr(d, 'name') ?? '', value: childText(d, 'Value') ?? '' }));
  if (xen.length) {
    extra.xenConfig = xen;
    readXenConfig(spec, xen);
  }
  if (virtualSystemType && /^xen-/i.test(virtualSystemType)) spec.virtualization = 'pv';

  // VirtualBox: the whole machine configuration rides along in vbox:Machine.
  const machine = child(vs, 'Machine');
  if (machine) {
    extra.vboxMachine = machine;
    readVboxMachine(spec, machine);
  }

  // Sections the model does not name, kept as parsed.
  const knownVs = new Set(['Info', 'Name', 'OperatingSystemSection', 'VirtualHardwareSection', 'AnnotationSection', 'Machine']);
  const sections: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(vs)) if (!k.startsWith('@') && !knownVs.has(k)) sections[k] = v;
  if (Object.keys(sections).length) extra.sections = sections;
  const knownEnv = new Set(['References', 'DiskSection', 'NetworkSection', 'VirtualSystem', 'VirtualSystemCollection']);
  const envelopeSections: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(env)) if (!k.startsWith('@') && !knownEnv.has(k)) envelopeSections[k] = v;
  if (Object.keys(envelopeSections).length) extra.envelopeSections = envelopeSections;

  spec.extra = { ovf: extra as unknown as Record<string, unknown> };
  return { spec: validateSpec(spec, file), notes, references };
}

/** An Item kept as parsed, without its InstanceID: the writer numbers Items afresh. */
function unmodelledItem(it: XmlNode): XmlNode {
  const { InstanceID: _id, ...rest } = it;
  return rest;
}

function readXenConfig(spec: VmSpec, xen: Array<{ name: string; value: string }>): void {
  const get = (n: string) => xen.find((x) => x.name === n)?.value;
  const policy = get('HVM_boot_policy');
  if (policy !== undefined) spec.virtualization = policy.trim() === '' ? 'pv' : 'hvm';
  const params = xenDict(get('HVM_boot_params'));
  if (params.get('firmware') === 'uefi') spec.firmware.type = 'uefi';
  const order = params.get('order');
  if (order && spec.virtualization === 'hvm') {
    const map: Record<string, 'disk' | 'cdrom' | 'network' | 'floppy'> = { c: 'disk', d: 'cdrom', n: 'network', a: 'floppy' };
    const devs = [...order].map((ch) => map[ch]).filter((d): d is 'disk' | 'cdrom' | 'network' | 'floppy' => !!d);
    if (devs.length) spec.boot = { ...spec.boot, order: [...new Set(devs)] };
  }
  const platform = xenDict(get('platform'));
  if (platform.get('secureboot') === 'true') spec.firmware.secureBoot = true;
  if (platform.get('vtpm') === 'true') spec.firmware.tpm = true;
  const pv: Record<string, 'bootloader' | 'cmdline' | 'kernel' | 'ramdisk'> = { PV_bootloader: 'bootloader', PV_args: 'cmdline', PV_kernel: 'kernel', PV_ramdisk: 'ramdisk' };
  if (spec.virtualization === 'pv') {
    for (const [k, field] of Object.entries(pv)) {
      const v = get(k);
      if (v) spec.boot = { ...spec.boot, [field]: v };
    }
  }
}

function readVboxMachine(spec: VmSpec, machine: XmlNode): void {
  const uuid = attr(machine, 'uuid')?.replace(/[{}]/g, '').toLowerCase();
  if (uuid && /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(uuid)) spec.uuid = uuid;
  const hw = child(machine, 'Hardware');
  const fw = attr(child(hw, 'Firmware'), 'type');
  if (fw && /^EFI/i.test(fw)) spec.firmware.type = 'uefi';
  const orders = children(child(hw, 'Boot'), 'Order')
    .map((o) => ({ pos: Number(attr(o, 'position') ?? 0), dev: attr(o, 'device') ?? 'None' }))
    .sort((a, b) => a.pos - b.pos);
  const map: Record<string, 'disk' | 'cdrom' | 'network' | 'floppy'> = { HardDisk: 'disk', DVD: 'cdrom', Network: 'network', Floppy: 'floppy' };
  const devs = orders.map((o) => map[o.dev]).filter((d): d is 'disk' | 'cdrom' | 'network' | 'floppy' => !!d);
  if (devs.length) spec.boot = { ...spec.boot, order: [...new Set(devs)] };
  // VirtualBox keeps MACs in the machine configuration, not in the OVF Items: adapters by slot, enabled ones in order.
  const adapters = children(child(hw, 'Network'), 'Adapter').filter((a) => attr(a, 'enabled') !== 'false');
  adapters.sort((a, b) => Number(attr(a, 'slot') ?? 0) - Number(attr(b, 'slot') ?? 0));
  adapters.forEach((a, i) => {
    const nic = spec.nics[i];
    const mac = normaliseMac(attr(a, 'MACAddress') ?? '');
    if (nic && !nic.mac && mac) nic.mac = mac;
  });
}

/** Kept for probe: an XML document whose Envelope is in the OVF namespace. */
export function looksLikeOvf(head: Buffer): boolean {
  const s = head.toString('utf8', 0, Math.min(head.length, 65536));
  // an XML document starts with markup (a tar holding an .ovf does not)
  if (!/^(\uFEFF)?\s*</.test(s)) return false;
  return /<(?:[\w.-]+:)?Envelope[\s>]/.test(s) && (s.includes(NS.ovf1) || s.includes(NS.ovf2));
}

