/**
 * VmSpec → OVF descriptor. OVF 1.0 by default: the version every importer reads (ESXi and
 * vCenter, Workstation/Fusion, VirtualBox, XenCenter); 2.0 on request (same content, the /2
 * envelope namespace).
 *
 * The hardware is written the way ovftool writes it, so that VMware accepts it unchanged:
 * - Items carry their rasd: elements in the CIM schema's (alphabetical) sequence order, since
 *   schema-validating importers reject any other order;
 * - InstanceIDs are numbered from 1; disks and CD-ROMs name their controller by Parent and
 *   their unit by AddressOnParent; disks point into DiskSection by ovf:/disk/ID;
 * - CDs, graphics and serial ports are ovf:required="false", so that an importer that cannot
 *   build them still imports the VM;
 * - firmware and secure boot are vmw:Config keys (VirtualBox reads them too).
 * What spec.extra.ovf kept from a descriptor of this format is written back.
 */
import { PolyvisorError } from '../../errors.js';
import type { ConversionNote, EncodeInput, EncodeResult } from '../codec.js';
import type { VmDisk } from '../spec.js';
import { buildXml, type XmlNode } from '../xml.js';
import { NS, RT, cimOs, osForSpec, subtypeForNicModel, subtypeForScsiModel, uriForFormat } from './ovf-dialects.js';
import type { KeyValue, OvfExtra } from './ovf-read.js';

export interface OvfWriteOptions {
  /** "1.0" (default) or "2.0" */
  version?: '1.0' | '2.0';
  /** the byte size of each disk's file (ovf:size in References), when known (an OVA knows) */
  fileSizes?: Array<number | undefined>;
}

/** VMware's hardware version 10 (ESXi 5.5, Workstation 10): recent enough for EFI and SATA, old enough for every current importer. */
export const DEFAULT_SYSTEM_TYPE = 'vmx-10';

/** Units per controller, and the unit a controller keeps for itself. */
const BUS_UNITS: Record<string, { units: number; reserved?: number; max: number }> = {
  ide: { units: 2, max: 2 },
  scsi: { units: 16, reserved: 7, max: 4 },
  sata: { units: 30, max: 4 },
  nvme: { units: 15, max: 4 },
};

type OvfBus = 'ide' | 'scsi' | 'sata' | 'nvme';

/** Attributes of a parsed OVF section (local names) → OVF-qualified names for writing. */
function qualifyOvf(node: unknown, attrPrefix: string): unknown {
  if (Array.isArray(node)) return node.map((n) => qualifyOvf(n, attrPrefix));
  if (!node || typeof node !== 'object') return node;
  const out: XmlNode = {};
  for (const [k, v] of Object.entries(node as XmlNode)) {
    if (k.startsWith('@')) {
      const local = k.slice(1);
      if (local === 'lang') out['@xml:lang'] = v;
      else if (local === 'required' || attrPrefix === 'ovf') out[`@ovf:${local}`] = v;
      else out[`@${attrPrefix}:${local}`] = v;
    } else out[k] = qualifyOvf(v, attrPrefix);
  }
  return out;
}

/** rasd fields in schema order, then the extension elements. */
function item(rasd: Record<string, string | number | undefined>, attrs: XmlNode = {}, ext: XmlNode = {}): XmlNode {
  const out: XmlNode = { ...attrs };
  for (const k of Object.keys(rasd).sort()) {
    const v = rasd[k];
    if (v !== undefined) out[`rasd:${k}`] = String(v);
  }
  return { ...out, ...ext };
}

const vmwConfig = (kvs: KeyValue[]) => kvs.map((kv) => ({ '@ovf:required': 'false', '@vmw:key': kv.key, '@vmw:value': kv.value }));

/** capacity with the largest of GiB / MiB / byte units that divides it, as ovftool writes it. */
function capacity(bytes: number): { capacity: string; units: string } {
  if (bytes > 0 && bytes % 2 ** 30 === 0) return { capacity: String(bytes / 2 ** 30), units: 'byte * 2^30' };
  if (bytes > 0 && bytes % 2 ** 20 === 0) return { capacity: String(bytes / 2 ** 20), units: 'byte * 2^20' };
  return { capacity: String(bytes), units: 'byte' };
}

export function encodeOvf(input: EncodeInput, opts: OvfWriteOptions = {}): EncodeResult {
  const { spec } = input;
  const version = opts.version ?? '1.0';
  const ns = version === '2.0' ? NS.ovf2 : NS.ovf1;
  const notes: ConversionNote[] = [];
  const extra = (spec.extra.ovf ?? {}) as Partial<OvfExtra>;
  const deviceConfig = extra.deviceConfig ?? {};
  const dc = (key: string) => {
    const all = deviceConfig[key] ?? [];
    return { connection: all.find((kv) => kv.key === 'rasd:Connection')?.value, config: all.filter((kv) => kv.key !== 'rasd:Connection') };
  };

  const references: XmlNode[] = [];
  const disks: XmlNode[] = [];
  const items: XmlNode[] = [];
  let nextId = 1;
  const newId = () => String(nextId++);

  // Processor and memory.
  const cpu = dc('cpu');
  const cpuExt: XmlNode = {};
  if (spec.cpu.cores && spec.cpu.cores > 1) cpuExt['vmw:CoresPerSocket'] = { '@ovf:required': 'false', '#text': String(spec.cpu.cores) };
  if (cpu.config.length) cpuExt['vmw:Config'] = vmwConfig(cpu.config);
  if (spec.cpu.threads && spec.cpu.threads > 1) notes.push({ setting: 'cpu.threads', action: 'dropped', from: spec.cpu.threads, reason: 'OVF has no threads-per-core setting' });
  items.push(
    item(
      { AllocationUnits: 'hertz * 10^6', Description: 'Number of Virtual CPUs', ElementName: `${spec.cpu.count} virtual CPU(s)`, InstanceID: newId(), ResourceType: RT.processor, VirtualQuantity: spec.cpu.count },
      {},
      cpuExt,
    ),
  );
  const mib = Math.ceil(spec.memory.bytes / 2 ** 20);
  if (mib * 2 ** 20 !== spec.memory.bytes) notes.push({ setting: 'memory.bytes', action: 'changed', from: spec.memory.bytes, to: mib * 2 ** 20, reason: 'OVF memory is written in MiB; rounded up' });
  if (spec.memory.maxBytes !== undefined && spec.memory.maxBytes !== spec.memory.bytes) notes.push({ setting: 'memory.maxBytes', action: 'dropped', from: spec.memory.maxBytes, reason: 'OVF has no balloon maximum' });
  const mem = dc('memory');
  items.push(
    item(
      { AllocationUnits: 'byte * 2^20', Description: 'Memory Size', ElementName: `${mib}MB of memory`, InstanceID: newId(), ResourceType: RT.memory, VirtualQuantity: mib },
      {},
      mem.config.length ? { 'vmw:Config': vmwConfig(mem.config) } : {},
    ),
  );

  // Storage: the controllers disks hang off, then the drives.
  interface Placed {
    index: number;
    disk: VmDisk;
    bus: OvfBus | 'fdc';
    controller: number;
    unit: number;
  }
  const placed: Placed[] = [];
  const used = new Map<string, Set<number>>();
  const ctrlModel = new Map<string, VmDisk['controllerModel']>();
  for (const [index, disk] of spec.disks.entries()) {
    let bus: OvfBus | 'fdc';
    if (disk.device === 'floppy' || disk.bus === 'fdc') bus = 'fdc';
    else if (disk.bus === 'ide' || disk.bus === 'sata' || disk.bus === 'scsi' || disk.bus === 'nvme') bus = disk.bus;
    else if (disk.bus === 'usb') {
      notes.push({ setting: `disks[${index}].bus`, action: 'dropped', from: 'usb', reason: 'OVF hardware has no USB storage; the drive is not written' });
      continue;
    } else {
      bus = disk.device === 'cdrom' ? 'ide' : 'scsi';
      notes.push({ setting: `disks[${index}].bus`, action: 'changed', from: disk.bus, to: bus, reason: `OVF importers build no ${disk.bus} controller; ${bus === 'scsi' ? 'an LSI Logic SCSI controller' : 'IDE'} is the nearest every one of them emulates` });
    }
    if (bus === 'fdc') {
      placed.push({ index, disk, bus, controller: 0, unit: 0 });
      continue;
    }
    const limits = BUS_UNITS[bus]!;
    let controller = disk.bus === bus ? (disk.controller ?? 0) : 0;
    if (controller >= limits.max) {
      notes.push({ setting: `disks[${index}].controller`, action: 'changed', from: controller, to: 0, reason: `OVF importers build at most ${limits.max} ${bus} controllers` });
      controller = 0;
    }
    const key = `${bus}${controller}`;
    if (bus === 'scsi') {
      const model = disk.bus === 'scsi' ? disk.controllerModel : undefined;
      const prev = ctrlModel.get(key);
      if (prev === undefined) ctrlModel.set(key, model);
      else if (model !== undefined && model !== prev) notes.push({ setting: `disks[${index}].controllerModel`, action: 'changed', from: model, to: prev, reason: 'another disk on the same controller names a different model; the first one wins' });
    }
    const taken = used.get(key) ?? new Set<number>();
    used.set(key, taken);
    let unit = disk.bus === bus ? disk.unit : undefined;
    const free = (u: number) => u < limits.units && u !== limits.reserved && !taken.has(u);
    if (unit === undefined || !free(unit)) {
      const wanted = unit;
      unit = undefined;
      for (let u = 0; u < limits.units; u++) {
        if (free(u)) {
          unit = u;
          break;
        }
      }
      if (unit === undefined) {
        notes.push({ setting: `disks[${index}]`, action: 'dropped', reason: `${bus} controller ${controller} has no free unit left` });
        continue;
      }
      if (wanted !== undefined) notes.push({ setting: `disks[${index}].unit`, action: 'changed', from: wanted, to: unit, reason: `unit ${wanted} is taken or out of range on ${bus} controller ${controller}` });
    }
    taken.add(unit);
    placed.push({ index, disk, bus, controller, unit });
  }

  // Controller Items, in bus order, numbered by their Address.
  const ctrlIds = new Map<string, string>();
  const busOrder: OvfBus[] = ['scsi', 'ide', 'sata', 'nvme'];
  for (const bus of busOrder) {
    const ctrls = [...new Set(placed.filter((p) => p.bus === bus).map((p) => p.controller))].sort((a, b) => a - b);
    for (const c of ctrls) {
      const id = newId();
      ctrlIds.set(`${bus}${c}`, id);
      const cc = dc(`controllers.${bus}${c}`).config;
      const ext: XmlNode = cc.length ? { 'vmw:Config': vmwConfig(cc) } : {};
      if (bus === 'ide') items.push(item({ Address: c, Description: `IDE Controller`, ElementName: `VirtualIDEController ${c}`, InstanceID: id, ResourceType: RT.ide }, {}, ext));
      else if (bus === 'scsi') {
        const model = ctrlModel.get(`scsi${c}`);
        const { subtype, exact } = subtypeForScsiModel(model);
        if (!exact) notes.push({ setting: `scsi controller ${c}`, action: 'changed', from: model, to: 'lsilogic', reason: `OVF importers have no ${model} controller; LSI Logic is the nearest they all emulate` });
        items.push(item({ Address: c, Description: 'SCSI Controller', ElementName: `SCSI controller ${c}`, InstanceID: id, ResourceSubType: subtype, ResourceType: RT.scsi }, {}, ext));
      } else if (bus === 'sata') items.push(item({ Address: c, Description: 'SATA Controller', ElementName: `SATA controller ${c}`, InstanceID: id, ResourceSubType: 'vmware.sata.ahci', ResourceType: RT.otherStorage }, {}, ext));
      else items.push(item({ Address: c, Description: 'NVME Controller', ElementName: `NVME controller ${c}`, InstanceID: id, ResourceSubType: 'vmware.nvme.controller', ResourceType: RT.otherStorage }, {}, ext));
    }
  }

  // Drives.
  let diskN = 0;
  let fileN = 0;
  let cdN = 0;
  let floppyN = 0;
  for (const p of placed) {
    const { disk, index } = p;
    const df = input.diskFiles[index];
    const cfg = dc(`disks.${index}`);
    const ext: XmlNode = cfg.config.length ? { 'vmw:Config': vmwConfig(cfg.config) } : {};
    const parent = p.bus === 'fdc' ? undefined : ctrlIds.get(`${p.bus}${p.controller}`);
    const addressOnParent = p.bus === 'fdc' ? undefined : p.unit;
    if (disk.bootOrder !== undefined) notes.push({ setting: `disks[${index}].bootOrder`, action: 'dropped', from: disk.bootOrder, reason: 'OVF has no per-device boot order' });
    if (disk.device === 'disk') {
      if (disk.readOnly) notes.push({ setting: `disks[${index}].readOnly`, action: 'dropped', reason: 'OVF disks are always writable' });
      const cap = df?.capacity ?? disk.capacity;
      if (cap === undefined) {
        notes.push({ setting: `disks[${index}]`, action: 'dropped', reason: 'the disk has neither a file nor a capacity to describe' });
        continue;
      }
      const diskId = `vmdisk${++diskN}`;
      const c = capacity(cap);
      const d: XmlNode = { '@ovf:capacity': c.capacity, '@ovf:capacityAllocationUnits': c.units, '@ovf:diskId': diskId };
      if (df) {
        const uri = uriForFormat(df.format);
        if (!uri) throw new PolyvisorError('ERR_UNSUPPORTED', `OVF has no format URI for ${df.format} disks; convert the disk to vmdk`, { file: df.file });
        const fileId = `file${++fileN}`;
        const size = opts.fileSizes?.[index];
        references.push({ '@ovf:href': df.file, '@ovf:id': fileId, ...(size !== undefined ? { '@ovf:size': String(size) } : {}) });
        d['@ovf:fileRef'] = fileId;
        d['@ovf:format'] = uri;
      }
      disks.push(d);
      items.push(
        item(
          { AddressOnParent: addressOnParent, Connection: cfg.connection, ElementName: `Hard disk ${diskN}`, HostResource: `ovf:/disk/${diskId}`, InstanceID: newId(), Parent: parent, ResourceType: RT.disk },
          {},
          ext,
        ),
      );
      continue;
    }
    // CD-ROM and floppy: media is a File of the package when one is given, else the drive is empty.
    let hostResource: string | undefined;
    if (df) {
      const fileId = `file${++fileN}`;
      const size = opts.fileSizes?.[index];
      references.push({ '@ovf:href': df.file, '@ovf:id': fileId, ...(size !== undefined ? { '@ovf:size': String(size) } : {}) });
      hostResource = `ovf:/file/${fileId}`;
    } else if (disk.file) {
      notes.push({ setting: `disks[${index}].file`, action: 'dropped', from: disk.file, reason: `the ${disk.device} image is not carried; the drive is written empty` });
    }
    const cd = disk.device === 'cdrom';
    items.push(
      item(
        {
          AddressOnParent: addressOnParent,
          AutomaticAllocation: 'false',
          Connection: cfg.connection,
          ElementName: cd ? `CD/DVD drive ${++cdN}` : `Floppy drive ${++floppyN}`,
          HostResource: hostResource,
          InstanceID: newId(),
          Parent: parent,
          ResourceType: cd ? RT.cd : RT.floppy,
        },
        { '@ovf:required': 'false' },
        ext,
      ),
    );
  }

  // Network adapters, and the networks they join.
  const networks = new Map<string, string>();
  for (const [i, nic] of spec.nics.entries()) {
    const { subtype, exact } = subtypeForNicModel(nic.model);
    if (!exact) notes.push({ setting: `nics[${i}].model`, action: 'changed', from: nic.model, to: 'e1000', reason: `OVF importers have no ${nic.model} adapter; E1000 is the one they all emulate` });
    const network = nic.network ?? (nic.connection === 'nat' ? 'NAT' : 'VM Network');
    if (nic.connection !== 'none') networks.set(network, extra.networks?.[network] ?? `The ${network} network`);
    const cfg = dc(`nics.${i}`);
    items.push(
      item(
        {
          Address: nic.mac,
          AutomaticAllocation: nic.connection === 'none' ? 'false' : 'true',
          Connection: nic.connection === 'none' ? undefined : network,
          Description: `${subtype} ethernet adapter on "${network}"`,
          ElementName: `Network adapter ${i + 1}`,
          InstanceID: newId(),
          ResourceSubType: subtype,
          ResourceType: RT.ethernet,
        },
        {},
        cfg.config.length ? { 'vmw:Config': vmwConfig(cfg.config) } : {},
      ),
    );
  }

  for (const [i, g] of spec.graphics.entries()) {
    if (g.type !== 'vga' || g.port !== undefined || g.listen !== undefined) {
      notes.push({ setting: `graphics[${i}]`, action: 'changed', from: g, to: { type: 'vga' }, reason: 'OVF describes a video card, not a remote display; the console is the importer\'s own' });
    }
    if (i > 0) continue; // one video card
    const cfg = dc(`graphics.${i}`);
    items.push(item({ AutomaticAllocation: 'false', ElementName: 'Video card', InstanceID: newId(), ResourceType: RT.graphics }, { '@ovf:required': 'false' }, cfg.config.length ? { 'vmw:Config': vmwConfig(cfg.config) } : {}));
  }

  let serialN = 0;
  for (const [i, c] of spec.consoles.entries()) {
    if (c.type !== 'serial') {
      notes.push({ setting: `consoles[${i}]`, action: 'dropped', from: c.type, reason: `OVF has no ${c.type} console; only serial ports` });
      continue;
    }
    const cfg = dc(`consoles.${i}`);
    items.push(item({ AutomaticAllocation: 'false', ElementName: `Serial port ${++serialN}`, InstanceID: newId(), ResourceType: RT.serial }, { '@ovf:required': 'false' }, cfg.config.length ? { 'vmw:Config': vmwConfig(cfg.config) } : {}));
  }

  // Items of types the model does not name, as they were read; InstanceIDs are renumbered.
  for (const raw of extra.items ?? []) {
    if (!raw || typeof raw !== 'object') continue;
    const r = raw as XmlNode;
    const rasd: Record<string, string> = {};
    const attrs: XmlNode = {};
    let config: KeyValue[] = [];
    for (const [k, v] of Object.entries(r)) {
      if (k.startsWith('@')) attrs[`@ovf:${k.slice(1)}`] = v;
      else if (k === 'Config') config = (Array.isArray(v) ? v : [v]).map((c) => ({ key: String((c as XmlNode)['@key'] ?? ''), value: String((c as XmlNode)['@value'] ?? '') }));
      else if (k === 'Parent') notes.push({ setting: `ovf: Item ${String(r['InstanceID'] ?? '')} Parent`, action: 'dropped', reason: 'InstanceIDs are renumbered; the parent link of an unmodelled device is not kept' });
      else if (k !== 'InstanceID' && (typeof v === 'string' || typeof v === 'number')) rasd[k] = String(v);
    }
    rasd['InstanceID'] = newId();
    items.push(item(rasd, attrs, config.length ? { 'vmw:Config': vmwConfig(config) } : {}));
  }

  // Hardware-section settings: firmware, then what was kept.
  const hwConfig: KeyValue[] = [{ key: 'firmware', value: spec.firmware.type === 'uefi' ? 'efi' : 'bios' }];
  if (spec.firmware.secureBoot) {
    if (spec.firmware.type === 'uefi') hwConfig.push({ key: 'bootOptions.efiSecureBootEnabled', value: 'true' });
    else notes.push({ setting: 'firmware.secureBoot', action: 'dropped', reason: 'secure boot needs UEFI firmware' });
  }
  hwConfig.push(...(extra.config ?? []).filter((kv) => kv.key !== 'firmware' && kv.key !== 'bootOptions.efiSecureBootEnabled'));
  const carriedByExtension = !!extra.vboxMachine || !!extra.xenConfig?.length;
  if (spec.firmware.tpm && !extra.xenConfig?.length) notes.push({ setting: 'firmware.tpm', action: 'dropped', reason: 'OVF packages carry no virtual TPM (VMware exports leave it out too)' });
  if (spec.uuid && !extra.vboxMachine) notes.push({ setting: 'uuid', action: 'dropped', from: spec.uuid, reason: 'importers give the VM a new identity' });
  if (spec.boot?.order && !carriedByExtension) notes.push({ setting: 'boot.order', action: 'dropped', from: spec.boot.order, reason: 'OVF has no BIOS boot order' });
  for (const k of ['kernel', 'ramdisk', 'cmdline', 'bootloader', 'bootloaderArgs'] as const) {
    if (spec.boot?.[k] !== undefined && !extra.xenConfig?.length) notes.push({ setting: `boot.${k}`, action: 'dropped', reason: 'OVF describes fully virtualised hardware; a paravirtual boot is not carried' });
  }

  let systemType = extra.virtualSystemType ?? DEFAULT_SYSTEM_TYPE;
  if (spec.virtualization !== 'hvm' && !/^xen-/i.test(systemType)) {
    notes.push({ setting: 'virtualization', action: 'changed', from: spec.virtualization, to: 'hvm', reason: `OVF system type ${systemType} is fully virtualised; the guest must boot on emulated hardware` });
  } else if (spec.virtualization === 'hvm' && /^xen-/i.test(systemType)) {
    systemType = 'hvm-3.0-unknown';
  }

  const hw: XmlNode = {
    Info: 'Virtual hardware requirements',
    System: {
      'vssd:ElementName': 'Virtual Hardware Family',
      'vssd:InstanceID': '0',
      'vssd:VirtualSystemIdentifier': spec.name,
      'vssd:VirtualSystemType': systemType,
    },
    Item: items,
    'vmw:Config': vmwConfig(hwConfig),
  };
  if (extra.extraConfig?.length) hw['vmw:ExtraConfig'] = vmwConfig(extra.extraConfig);
  if (extra.xenConfig?.length) hw['xenovf:VirtualSystemOtherConfigurationData'] = extra.xenConfig.map((x) => ({ '@Name': x.name, 'xenovf:Value': x.value }));

  // Operating system: what was read, when the model still says the same; else from the model.
  const os: XmlNode = {};
  const eos = extra.os;
  const readVariant = eos ? (eos.vmwOsType ?? eos.vboxOsType ?? eos.description ?? (eos.id !== undefined ? cimOs(eos.id)?.[1] : undefined)) : undefined;
  if (eos && readVariant === spec.os.variant) {
    if (eos.id !== undefined) os['@ovf:id'] = String(eos.id);
    if (eos.vmwOsType) os['@vmw:osType'] = eos.vmwOsType;
    os['Info'] = 'The kind of installed guest operating system';
    if (eos.description) os['Description'] = eos.description;
    if (eos.vboxOsType) os['vbox:OSType'] = { '@ovf:required': 'false', '#text': eos.vboxOsType };
  } else {
    const o = osForSpec(spec.os);
    if (!o.exact) notes.push({ setting: 'os.variant', action: 'changed', from: spec.os.variant, to: o.vmwOsType, reason: 'OVF names guests by CIM code and VMware guest id; the nearest generic entry is written' });
    os['@ovf:id'] = String(o.code);
    os['@vmw:osType'] = o.vmwOsType;
    os['Info'] = 'The kind of installed guest operating system';
    if (spec.os.variant) os['Description'] = spec.os.variant;
  }

  const vs: XmlNode = {
    '@ovf:id': extra.systemId ?? spec.name,
    Info: 'A virtual machine',
    Name: spec.name,
    OperatingSystemSection: os,
    VirtualHardwareSection: hw,
  };
  if (spec.description) vs['AnnotationSection'] = { '@ovf:required': 'false', Info: 'A human-readable annotation', Annotation: spec.description };
  const VMW_SECTIONS = new Set(['StorageGroupSection', 'StorageSection', 'IpAssignmentSection']);
  for (const [k, v] of Object.entries(extra.sections ?? {})) {
    if (k === 'BootOrderSection') {
      notes.push({ setting: 'ovf: vmw:BootOrderSection', action: 'dropped', reason: 'it names devices by InstanceID, which are renumbered' });
      continue;
    }
    if (VMW_SECTIONS.has(k)) vs[`vmw:${k}`] = qualifyOvf(v, 'vmw');
    else vs[k] = qualifyOvf(v, 'ovf');
  }
  if (extra.vboxMachine && typeof extra.vboxMachine === 'object') {
    const m: XmlNode = { ...(extra.vboxMachine as XmlNode) };
    delete m['@required'];
    vs['vbox:Machine'] = { '@ovf:required': 'false', ...m };
  }

  const envelope: XmlNode = {
    '@xmlns': ns,
    '@xmlns:ovf': ns,
    '@xmlns:cim': NS.cim,
    '@xmlns:rasd': NS.rasd,
    '@xmlns:vmw': NS.vmw,
    '@xmlns:vssd': NS.vssd,
    '@xmlns:xsi': NS.xsi,
  };
  if (extra.vboxMachine || eos?.vboxOsType) envelope['@xmlns:vbox'] = NS.vbox;
  if (extra.xenConfig?.length) envelope['@xmlns:xenovf'] = NS.xenovf;
  envelope['@ovf:version'] = version;
  envelope['References'] = references.length ? { File: references } : '';
  if (disks.length) envelope['DiskSection'] = { Info: 'Virtual disk information', Disk: disks };
  if (networks.size) {
    envelope['NetworkSection'] = { Info: 'The list of logical networks', Network: [...networks].map(([name, description]) => ({ '@ovf:name': name, Description: description })) };
  }
  for (const [k, v] of Object.entries(extra.envelopeSections ?? {})) envelope[k] = qualifyOvf(v, 'ovf');
  envelope['VirtualSystem'] = vs;

  const xml = buildXml({ Envelope: envelope });
  return { files: [{ name: `${input.name}.ovf`, data: xml }], notes };
}
