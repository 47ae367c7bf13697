/**
 * XVA metadata: the `ova.xml` member that starts every XenServer / XCP-ng export, to and from
 * VmSpec.
 *
 * ova.xml is one XML-RPC value (xen-api ocaml/xapi/importexport.ml, `header`):
 *   struct { version: struct { hostname, date, product_version, product_brand, build_number,
 *                              xapi_major, xapi_minor, export_vsn },
 *            objects: array of struct { class: "VM" | "VBD" | "VDI" | "VIF" | "network" | "SR" | ...,
 *                                       id: "Ref:N" (an opaque reference local to the file),
 *                                       snapshot: the object's XenAPI record } }
 * Records cross-reference each other by those "Ref:N" ids (VBD.VM, VBD.VDI, VIF.network,
 * VDI.SR); references to objects that are not exported read "OpaqueRef:NULL" or a real
 * "OpaqueRef:uuid". XenAPI sends int64 fields as strings (`<value>1073741824</value>`),
 * booleans as `<boolean>0|1</boolean>`, floats as `<double>`, dates as `<dateTime.iso8601>`.
 *
 * What VmSpec names is read into it; every other field of the VM, VBD, VDI, VIF and network
 * records is kept in spec.extra.xva (minus references, which are renumbered on write), so
 * that xva → VmSpec → xva loses nothing XAPI would import.
 */
import { PolyvisorError } from '../../errors.js';
import type { ConversionNote } from '../codec.js';
import { emptySpec, normaliseMac, validateSpec, type VmDisk, type VmNic, type VmSpec } from '../spec.js';
import { parseXml, type XmlNode } from '../xml.js';
import { crypto } from '../../util/builtins.js';

/**
 * An XML-RPC value as read. Integers are kept as text (XenAPI sends its int64s as strings, and
 * typed <int>/<i8> values are read the same way); a JS number is always a <double>.
 */
export type RpcValue = string | number | boolean | RpcValue[] | { [key: string]: RpcValue };
export type RpcStruct = { [key: string]: RpcValue };

export interface XvaObject {
  cls: string;
  id: string;
  snapshot: RpcStruct;
}

export interface XvaHeader {
  version: RpcStruct;
  objects: XvaObject[];
}

const MAX_DEPTH = 64;

// ---------------------------------------------------------------- XML-RPC reading

function rpcOf(node: unknown, file: string, depth: number): RpcValue {
  if (depth > MAX_DEPTH) throw new PolyvisorError('ERR_UNSUPPORTED', `XML-RPC values nested deeper than ${MAX_DEPTH}`, { file, structure: 'ova.xml' });
  if (node === undefined || node === null) return '';
  if (typeof node !== 'object') return String(node);
  const n = node as XmlNode;
  const keys = Object.keys(n).filter((k) => !k.startsWith('@'));
  if (keys.length === 0) return '';
  if (keys.length === 1 && keys[0] === '#text') return String(n['#text']);
  const tag = keys.find((k) => k !== '#text')!;
  const inner = n[tag];
  const txt = (v: unknown) => (v === undefined || v === null ? '' : typeof v === 'object' ? String((v as XmlNode)['#text'] ?? '') : String(v));
  switch (tag) {
    case 'string':
    case 'dateTime.iso8601':
    case 'base64':
      return txt(inner);
    case 'boolean': {
      const t = txt(inner).trim();
      return t === '1' || t === 'true';
    }
    case 'int':
    case 'i4':
    case 'i8': {
      // kept as text, the way XenAPI carries its int64s, so that they are written back as XAPI writes them
      const t = txt(inner).trim();
      if (!/^-?\d{1,20}$/.test(t)) throw new PolyvisorError('ERR_CORRUPT', `XML-RPC <${tag}> holds "${t.slice(0, 40)}"`, { file, structure: 'ova.xml' });
      return t;
    }
    case 'double': {
      const t = txt(inner).trim();
      const v = Number(t);
      if (t === '' || !Number.isFinite(v)) throw new PolyvisorError('ERR_CORRUPT', `XML-RPC <double> holds "${t.slice(0, 40)}"`, { file, structure: 'ova.xml' });
      return v;
    }
    case 'nil':
      return '';
    case 'struct': {
      const out: RpcStruct = {};
      const members = inner && typeof inner === 'object' ? ((inner as XmlNode).member as unknown[] | undefined) ?? [] : [];
      for (const m of members) {
        const mm = (m ?? {}) as XmlNode;
        const name = txt(mm.name);
        const values = (mm.value as unknown[] | undefined) ?? [''];
        if (name === '__proto__') continue;
        out[name] = rpcOf(values[0], file, depth + 1);
      }
      return out;
    }
    case 'array': {
      const data = inner && typeof inner === 'object' ? (inner as XmlNode).data : undefined;
      const values = data && typeof data === 'object' ? ((data as XmlNode).value as unknown[] | undefined) ?? [] : [];
      return values.map((v) => rpcOf(v, file, depth + 1));
    }
    default:
      throw new PolyvisorError('ERR_CORRUPT', `unknown XML-RPC value type <${tag}>`, { file, structure: 'ova.xml' });
  }
}

function isStruct(v: RpcValue | undefined): v is RpcStruct {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Parses ova.xml into its version record and objects. */
export function parseOvaXml(data: Buffer, file: string): XvaHeader {
  const doc = parseXml(data, file, { arrays: ['member', 'value'] });
  if (doc.appliance !== undefined) {
    throw new PolyvisorError(
      'ERR_UNSUPPORTED',
      'this is an XVA of the first generation (ova.xml <appliance>, disks as gzipped chunk files, XenServer 3.x); import it into XenServer and export it again',
      { file, structure: 'ova.xml' },
    );
  }
  const root = (doc.value as unknown[] | undefined)?.[0];
  if (root === undefined) throw new PolyvisorError('ERR_CORRUPT', 'ova.xml is not an XML-RPC <value>', { file, structure: 'ova.xml' });
  const top = rpcOf(root, file, 0);
  if (!isStruct(top) || !isStruct(top.version) || !Array.isArray(top.objects)) {
    throw new PolyvisorError('ERR_CORRUPT', 'ova.xml lacks the version and objects members', { file, structure: 'ova.xml' });
  }
  const objects: XvaObject[] = [];
  top.objects.forEach((o, i) => {
    if (!isStruct(o) || typeof o.class !== 'string' || typeof o.id !== 'string' || !isStruct(o.snapshot)) {
      throw new PolyvisorError('ERR_CORRUPT', `object ${i} lacks class, id or snapshot`, { file, structure: 'ova.xml objects' });
    }
    objects.push({ cls: o.class, id: o.id, snapshot: o.snapshot });
  });
  return { version: top.version, objects };
}

// ---------------------------------------------------------------- XML-RPC writing

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!);
}

/**
 * Serialises a value the way XAPI's XML-RPC writer does: compact, strings without a <string>
 * tag, int64s as strings.
 */
export function rpcToXml(v: RpcValue): string {
  if (Array.isArray(v)) return `<value><array><data>${v.map(rpcToXml).join('')}</data></array></value>`;
  if (typeof v === 'boolean') return `<value><boolean>${v ? 1 : 0}</boolean></value>`;
  if (typeof v === 'number') return `<value><double>${v}</double></value>`;
  if (typeof v === 'object') {
    return `<value><struct>${Object.entries(v)
      .map(([k, x]) => `<member><name>${esc(k)}</name>${rpcToXml(x)}</member>`)
      .join('')}</struct></value>`;
  }
  return `<value>${esc(v)}</value>`;
}

export function renderOvaXml(h: XvaHeader): string {
  return rpcToXml({ version: h.version, objects: h.objects.map((o) => ({ class: o.cls, id: o.id, snapshot: o.snapshot })) });
}

// ---------------------------------------------------------------- ova.xml → VmSpec

const isRef = (v: RpcValue | undefined): boolean => typeof v === 'string' && (v.startsWith('Ref:') || v.startsWith('OpaqueRef:'));

/** A record without the fields VmSpec models and without references (renumbered on write). */
function rest(rec: RpcStruct, modelled: readonly string[]): RpcStruct {
  const out: RpcStruct = {};
  for (const [k, v] of Object.entries(rec)) {
    if (modelled.includes(k)) continue;
    if (isRef(v)) continue;
    if (Array.isArray(v) && v.length > 0 && v.every((x) => isRef(x))) continue;
    out[k] = v;
  }
  return out;
}

const str = (v: RpcValue | undefined): string => (v === undefined ? '' : typeof v === 'object' ? '' : String(v));
function int(v: RpcValue | undefined, field: string, file: string): number | undefined {
  const s = str(v).trim();
  if (s === '') return undefined;
  if (!/^-?\d+$/.test(s) || !Number.isSafeInteger(Number(s))) {
    throw new PolyvisorError('ERR_CORRUPT', `${field} is "${s.slice(0, 40)}", not an integer`, { file, structure: field });
  }
  return Number(s);
}
const bool = (v: RpcValue | undefined): boolean => v === true || v === 'true' || v === '1';
const map = (v: RpcValue | undefined): RpcStruct => (isStruct(v) ? v : {});

const VM_MODELLED = [
  'name_label', 'name_description', 'uuid', 'VCPUs_at_startup', 'memory_static_max', 'memory_dynamic_max',
  'HVM_boot_policy', 'HVM_boot_params', 'platform', 'domain_type', 'PV_bootloader', 'PV_bootloader_args', 'PV_kernel', 'PV_ramdisk', 'PV_args',
] as const;
const VBD_MODELLED = ['userdevice', 'device', 'type', 'mode', 'bootable', 'empty'] as const;
const VDI_MODELLED = ['virtual_size'] as const;
const VIF_MODELLED = ['device', 'MAC'] as const;
const NET_MODELLED = ['name_label'] as const;

const BOOT_DEVICES: Record<string, 'disk' | 'cdrom' | 'network' | 'floppy'> = { c: 'disk', d: 'cdrom', n: 'network', a: 'floppy' };

/** A disk of the VM whose content is in the XVA, by the VDI's reference (the chunk folder). */
export interface XvaDiskRef {
  /** index into spec.disks */
  index: number;
  vdiRef: string;
  virtualSize: number;
  name: string;
}

function guessFamily(text: string): VmSpec['os']['family'] {
  const t = text.toLowerCase();
  if (/windows|win\d/.test(t)) return 'windows';
  if (/bsd/.test(t)) return 'bsd';
  if (/solaris/.test(t)) return 'solaris';
  if (/linux|debian|ubuntu|centos|rhel|red hat|suse|sles|fedora|alpine|oracle|rocky|alma|coreos|gentoo|arch|xenserver|citrix/.test(t)) return 'linux';
  return t ? 'other' : 'unknown';
}

const letter = (n: number): string => (n < 26 ? String.fromCharCode(97 + n) : letter(Math.floor(n / 26) - 1) + String.fromCharCode(97 + (n % 26)));

/**
 * Reads the exported VM out of the objects. An export of a VM with snapshots holds several
 * VM records: the one that is not a snapshot is the VM (its snapshots are noted and dropped).
 */
export function headerToSpec(h: XvaHeader, file: string): { spec: VmSpec; disks: XvaDiskRef[]; notes: ConversionNote[] } {
  const notes: ConversionNote[] = [];
  const byId = new Map(h.objects.map((o) => [o.id, o]));
  const vms = h.objects.filter((o) => o.cls === 'VM' && !bool(o.snapshot.is_control_domain));
  if (vms.length === 0) throw new PolyvisorError('ERR_CORRUPT', 'ova.xml holds no VM object', { file, structure: 'ova.xml objects' });
  const vmObj = vms.find((o) => !bool(o.snapshot.is_a_snapshot)) ?? vms[0]!;
  for (const o of vms) {
    if (o !== vmObj) notes.push({ setting: `xva: VM ${o.id}`, action: 'dropped', from: str(o.snapshot.name_label), reason: 'snapshots of the VM are not carried (only the VM itself)' });
  }
  const vm = vmObj.snapshot;
  const spec = emptySpec(str(vm.name_label) || 'xva-vm');
  const uuid = str(vm.uuid).toLowerCase();
  if (/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(uuid)) spec.uuid = uuid;
  if (str(vm.name_description)) spec.description = str(vm.name_description);

  const platform = map(vm.platform);
  const hvmParams = map(vm.HVM_boot_params);
  const domainType = str(vm.domain_type);
  const hvmPolicy = str(vm.HVM_boot_policy);
  spec.virtualization = domainType === 'pv' ? 'pv' : domainType === 'pvh' ? 'pvh' : domainType === 'hvm' ? 'hvm' : hvmPolicy ? 'hvm' : 'pv';
  const fw = (str(hvmParams.firmware) || str(platform.firmware)).toLowerCase();
  spec.firmware = { type: fw === 'uefi' ? 'uefi' : 'bios' };
  if (str(platform.secureboot) === 'true') spec.firmware.secureBoot = true;
  const vtpms = vm.VTPMs;
  if (Array.isArray(vtpms) && vtpms.length > 0) spec.firmware.tpm = true;

  const count = int(vm.VCPUs_at_startup, 'VM.VCPUs_at_startup', file) ?? int(vm.VCPUs_max, 'VM.VCPUs_max', file) ?? 1;
  spec.cpu = { count };
  const cps = int(platform['cores-per-socket'], 'VM.platform.cores-per-socket', file);
  if (cps && cps > 0 && count % cps === 0) spec.cpu = { count, sockets: count / cps, cores: cps };

  const dynMax = int(vm.memory_dynamic_max, 'VM.memory_dynamic_max', file);
  const statMax = int(vm.memory_static_max, 'VM.memory_static_max', file);
  const bytes = dynMax ?? statMax;
  if (bytes === undefined) throw new PolyvisorError('ERR_CORRUPT', 'VM record has no memory_dynamic_max or memory_static_max', { file, structure: 'VM.memory_static_max' });
  spec.memory = { bytes };
  if (statMax !== undefined && statMax > bytes) spec.memory.maxBytes = statMax;

  const order = [...str(hvmParams.order)].map((c) => BOOT_DEVICES[c.toLowerCase()]).filter((x): x is NonNullable<typeof x> => !!x);
  const boot: NonNullable<VmSpec['boot']> = {};
  if (spec.virtualization === 'hvm' && order.length) boot.order = [...new Set(order)];
  if (str(vm.PV_bootloader)) boot.bootloader = str(vm.PV_bootloader);
  if (str(vm.PV_bootloader_args)) boot.bootloaderArgs = [str(vm.PV_bootloader_args)];
  if (str(vm.PV_kernel)) boot.kernel = str(vm.PV_kernel);
  if (str(vm.PV_ramdisk)) boot.ramdisk = str(vm.PV_ramdisk);
  if (str(vm.PV_args)) boot.cmdline = str(vm.PV_args);
  if (Object.keys(boot).length) spec.boot = boot;

  const otherConfig = map(vm.other_config);
  const osText = str(vm.reference_label) || str(otherConfig.base_template_name);
  spec.os = { family: guessFamily(osText) };
  if (osText) spec.os.variant = osText.slice(0, 128);
  // XAPI gives every VM a console of its own: VNC on the emulated display for HVM, the PV text console otherwise
  if (spec.virtualization === 'hvm') spec.graphics = [{ type: 'vnc' }];
  else spec.consoles = [{ type: 'xen' }];

  // ---- disks: the VM's VBDs, by userdevice
  const vbds = h.objects.filter((o) => o.cls === 'VBD' && o.snapshot.VM === vmObj.id);
  const ud = (o: XvaObject) => {
    const n = Number(str(o.snapshot.userdevice));
    return Number.isInteger(n) && n >= 0 ? n : Number.MAX_SAFE_INTEGER;
  };
  vbds.sort((a, b) => ud(a) - ud(b));
  const diskRefs: XvaDiskRef[] = [];
  const extraDisks: RpcStruct[] = [];
  for (const vbdObj of vbds) {
    const vbd = vbdObj.snapshot;
    const type = str(vbd.type);
    const device: VmDisk['device'] = type === 'CD' ? 'cdrom' : type === 'Floppy' ? 'floppy' : 'disk';
    const userdevice = ud(vbdObj);
    const unit = userdevice === Number.MAX_SAFE_INTEGER ? undefined : userdevice;
    const hvmEmulated = spec.virtualization === 'hvm' && unit !== undefined && unit < 4;
    const disk: VmDisk = { device, bus: device === 'cdrom' && spec.virtualization === 'hvm' ? 'ide' : hvmEmulated ? 'ide' : 'xen' };
    if (unit !== undefined && unit <= 255) disk.unit = unit;
    const target = str(vbd.device) || (unit === undefined ? '' : hvmEmulated ? `hd${letter(unit)}` : `xvd${letter(unit)}`);
    if (target) disk.target = target.slice(0, 64);
    if (str(vbd.mode) === 'RO') disk.readOnly = true;
    const extra: RpcStruct = { vbd: rest(vbd, [...VBD_MODELLED, 'VM', 'VDI']) };
    if (str(vbd.userdevice) && unit === undefined) (extra.vbd as RpcStruct).userdevice = str(vbd.userdevice);
    if (bool(vbd.bootable)) extra.bootable = true;
    const vdiObj = !bool(vbd.empty) && isRef(vbd.VDI) ? byId.get(str(vbd.VDI)) : undefined;
    if (vdiObj && vdiObj.cls === 'VDI') {
      const size = int(vdiObj.snapshot.virtual_size, `VDI ${vdiObj.id} virtual_size`, file);
      if (size === undefined || size < 0) throw new PolyvisorError('ERR_CORRUPT', `VDI ${vdiObj.id} has no virtual_size`, { file, structure: 'ova.xml VDI' });
      disk.capacity = size;
      extra.vdi = rest(vdiObj.snapshot, [...VDI_MODELLED, 'SR', 'VBDs']);
      // XAPI streams every VDI except those behind a CD drive (import.ml, non_cdrom_vdis)
      if (device !== 'cdrom') diskRefs.push({ index: spec.disks.length, vdiRef: vdiObj.id, virtualSize: size, name: str(vdiObj.snapshot.name_label) });
    }
    spec.disks.push(disk);
    extraDisks.push(extra);
  }
  // bootable VBDs, in userdevice order, boot first (pygrub reads the first bootable one)
  let bootIdx = 1;
  extraDisks.forEach((e, i) => {
    if (e.bootable === true) {
      spec.disks[i]!.bootOrder = bootIdx++;
      delete e.bootable;
    }
  });

  // ---- NICs: the VM's VIFs, by device number
  const vifs = h.objects.filter((o) => o.cls === 'VIF' && o.snapshot.VM === vmObj.id);
  vifs.sort((a, b) => Number(str(a.snapshot.device)) - Number(str(b.snapshot.device)));
  const extraNics: RpcStruct[] = [];
  for (const vifObj of vifs) {
    const vif = vifObj.snapshot;
    const nic: VmNic = {};
    const mac = normaliseMac(str(vif.MAC));
    if (mac) nic.mac = mac;
    const extra: RpcStruct = { vif: rest(vif, [...VIF_MODELLED, 'VM', 'network']) };
    const net = byId.get(str(vif.network));
    if (net && net.cls === 'network') {
      const label = str(net.snapshot.name_label);
      const bridge = str(net.snapshot.bridge);
      if (label) {
        nic.network = label.slice(0, 256);
        nic.connection = 'network';
      } else if (bridge) {
        nic.network = bridge.slice(0, 256);
        nic.connection = 'bridge';
      }
      extra.network = rest(net.snapshot, [...NET_MODELLED, 'VIFs', 'PIFs']);
    }
    spec.nics.push(nic);
    extraNics.push(extra);
  }

  const vmRest = rest(vm, [...VM_MODELLED, 'VBDs', 'VIFs', 'VTPMs', 'consoles']);
  const restPlatform = { ...platform };
  delete restPlatform.secureboot;
  delete restPlatform['cores-per-socket'];
  const restHvm = { ...hvmParams };
  delete restHvm.order;
  delete restHvm.firmware;
  spec.extra.xva = {
    vm: vmRest,
    platform: restPlatform,
    HVM_boot_params: restHvm,
    ...(spec.virtualization === 'hvm' && hvmPolicy && hvmPolicy !== 'BIOS order' ? { HVM_boot_policy: hvmPolicy } : {}),
    disks: extraDisks,
    nics: extraNics,
  };
  return { spec: validateSpec(spec, file), disks: diskRefs, notes };
}

// ---------------------------------------------------------------- VmSpec → ova.xml

/** The XAPI version record written: XCP-ng 8.2-era numbers, export_vsn 2 (inline checksums, no trailing table). */
function versionRecord(): RpcStruct {
  return {
    hostname: 'polyvisor',
    date: new Date().toISOString().slice(0, 10),
    product_version: '8.2.1',
    product_brand: 'XCP-ng',
    build_number: 'polyvisor',
    xapi_major: '1',
    xapi_minor: '20',
    export_vsn: '2',
  };
}

const NULL_REF = 'OpaqueRef:NULL';

/**
 * Defaults for the VM record: the fields XenAPI's VM record has and XAPI's importer reads,
 * at the values a freshly created halted VM has. Overlaid by what spec.extra.xva kept and
 * then by what VmSpec says.
 */
function defaultVm(): RpcStruct {
  return {
    actions_after_crash: 'restart', actions_after_reboot: 'restart', actions_after_shutdown: 'destroy',
    affinity: NULL_REF, allowed_operations: [], appliance: NULL_REF, attached_PCIs: [], blobs: {}, blocked_operations: {},
    children: [], consoles: [], crash_dumps: [], current_operations: {}, domarch: '', domid: '-1',
    generation_id: '', guest_metrics: NULL_REF, ha_always_run: false, ha_restart_priority: '', hardware_platform_version: '0',
    has_vendor_device: false, HVM_shadow_multiplier: 1, is_a_template: false, is_control_domain: false,
    is_default_template: false, is_snapshot_from_vmpp: false, is_vmss_snapshot: false, last_booted_record: '', last_boot_CPU_flags: {},
    memory_overhead: '0', memory_target: '0', metrics: NULL_REF, NVRAM: {}, order: '0', other_config: {}, parent: NULL_REF, PCI_bus: '',
    power_state: 'Halted', PV_legacy_args: '', recommendations: '', reference_label: '', requires_reboot: false,
    resident_on: NULL_REF, scheduled_to_be_resident_on: NULL_REF, shutdown_delay: '0', snapshot_info: {}, snapshot_metadata: '',
    snapshot_of: NULL_REF, snapshot_time: '19700101T00:00:00Z', snapshots: [], start_delay: '0', suspend_SR: NULL_REF, suspend_VDI: NULL_REF,
    tags: [], transportable_snapshot_id: '', user_version: '1', VCPUs_params: {}, version: '0', VGPUs: [], VUSBs: [], xenstore_data: {},
    is_a_snapshot: false,
  };
}

function defaultVbd(): RpcStruct {
  return {
    allowed_operations: [], current_operations: {}, currently_attached: false, metrics: NULL_REF, other_config: {},
    qos_algorithm_params: {}, qos_algorithm_type: '', qos_supported_algorithms: [], runtime_properties: {},
    status_code: '0', status_detail: '', storage_lock: false, unpluggable: false,
  };
}

function defaultVdi(): RpcStruct {
  return {
    allow_caching: false, allowed_operations: [], cbt_enabled: false, current_operations: {}, is_a_snapshot: false, location: '',
    managed: true, metrics: NULL_REF, missing: false, name_description: '', name_label: '', on_boot: 'persist', other_config: {},
    parent: NULL_REF, physical_utilisation: '0', read_only: false, sharable: false, sm_config: {}, snapshot_of: NULL_REF,
    snapshot_time: '19700101T00:00:00Z', snapshots: [], storage_lock: false, tags: [], type: 'user', xenstore_data: {},
  };
}

function defaultVif(): RpcStruct {
  return {
    allowed_operations: [], current_operations: {}, currently_attached: false, ipv4_addresses: [], ipv4_allowed: [],
    ipv4_configuration_mode: 'None', ipv4_gateway: '', ipv6_addresses: [], ipv6_allowed: [], ipv6_configuration_mode: 'None',
    ipv6_gateway: '', locking_mode: 'network_default', MAC_autogenerated: false, metrics: NULL_REF, MTU: '1500', other_config: {},
    qos_algorithm_params: {}, qos_algorithm_type: '', qos_supported_algorithms: [], runtime_properties: {}, status_code: '0', status_detail: '',
  };
}

function defaultNetwork(): RpcStruct {
  return {
    allowed_operations: [], assigned_ips: {}, blobs: {}, bridge: '', current_operations: {}, default_locking_mode: 'unlocked',
    managed: true, MTU: '1500', name_description: '', other_config: {}, purpose: [], tags: [],
  };
}

function xvaExtra(spec: VmSpec): { vm: RpcStruct; platform: RpcStruct; hvm: RpcStruct; hvmPolicy?: string; disks: RpcStruct[]; nics: RpcStruct[] } {
  const x = (spec.extra.xva ?? {}) as Record<string, unknown>;
  const s = (v: unknown): RpcStruct => (v && typeof v === 'object' && !Array.isArray(v) ? (v as RpcStruct) : {});
  const a = (v: unknown): RpcStruct[] => (Array.isArray(v) ? v.map(s) : []);
  return { vm: s(x.vm), platform: s(x.platform), hvm: s(x.HVM_boot_params), hvmPolicy: typeof x.HVM_boot_policy === 'string' ? x.HVM_boot_policy : undefined, disks: a(x.disks), nics: a(x.nics) };
}

export interface EncodedXva {
  header: XvaHeader;
  /** for each spec disk whose content is written: the VDI reference (the chunk folder) */
  vdiRefs: Map<number, string>;
  notes: ConversionNote[];
}

const ORDER_LETTERS: Record<string, string> = { disk: 'c', cdrom: 'd', network: 'n', floppy: 'a' };

/**
 * Builds the ova.xml objects for `spec`. `withContent` lists the spec disks that have content
 * to stream (every disk of a VmSource); a CD-ROM without content becomes an empty CD drive.
 */
export function specToHeader(spec: VmSpec, withContent: ReadonlySet<number>): EncodedXva {
  const notes: ConversionNote[] = [];
  const x = xvaExtra(spec);
  let next = 0;
  const ref = () => `Ref:${next++}`;
  const objects: XvaObject[] = [];
  const vmId = ref();

  // ---- VM
  const vm: RpcStruct = { ...defaultVm(), ...x.vm };
  vm.name_label = spec.name;
  vm.name_description = spec.description ?? '';
  vm.uuid = spec.uuid ?? crypto().randomUUID();
  vm.VCPUs_at_startup = String(spec.cpu.count);
  const oldMax = Number(str(x.vm.VCPUs_max));
  vm.VCPUs_max = String(Number.isInteger(oldMax) && oldMax > spec.cpu.count ? oldMax : spec.cpu.count);
  const bytes = spec.memory.bytes;
  const statMax = Math.max(bytes, spec.memory.maxBytes ?? bytes);
  const dynMin = Number(str(x.vm.memory_dynamic_min));
  const statMin = Number(str(x.vm.memory_static_min));
  const dmin = Number.isSafeInteger(dynMin) && dynMin > 0 && dynMin <= bytes ? dynMin : bytes;
  const smin = Number.isSafeInteger(statMin) && statMin > 0 && statMin <= dmin ? statMin : dmin;
  Object.assign(vm, { memory_static_max: String(statMax), memory_dynamic_max: String(bytes), memory_dynamic_min: String(dmin), memory_static_min: String(smin) });

  const platform: RpcStruct = { ...x.platform };
  const hvm: RpcStruct = { ...x.hvm };
  const boot = spec.boot ?? {};
  if (spec.virtualization === 'hvm') {
    vm.HVM_boot_policy = x.hvmPolicy ?? 'BIOS order';
    vm.domain_type = 'hvm';
    const order = (boot.order ?? (spec.disks.some((d) => d.device === 'cdrom') ? ['disk', 'cdrom', 'network'] : ['disk', 'network'])).map((o) => ORDER_LETTERS[o]).join('');
    hvm.order = order || 'cd';
    hvm.firmware = spec.firmware.type;
    if (Object.keys(x.platform).length === 0) Object.assign(platform, { 'device-model': 'qemu-upstream-compat', acpi: '1', apic: 'true', pae: 'true', nx: 'true', viridian: spec.os.family === 'windows' ? 'true' : 'false', timeoffset: '0' });
  } else {
    vm.HVM_boot_policy = '';
    vm.domain_type = spec.virtualization;
    if (spec.firmware.type === 'uefi') notes.push({ setting: 'firmware.type', action: 'dropped', from: 'uefi', reason: `a ${spec.virtualization.toUpperCase()} guest on XAPI boots without firmware` });
  }
  if (spec.firmware.secureBoot) {
    if (spec.firmware.type === 'uefi' && spec.virtualization === 'hvm') platform.secureboot = 'true';
    else notes.push({ setting: 'firmware.secureBoot', action: 'dropped', from: true, reason: 'XAPI enforces secure boot only for UEFI HVM guests' });
  } else if (spec.firmware.type === 'uefi' && spec.virtualization === 'hvm') {
    platform.secureboot = 'false';
  }
  if (spec.firmware.tpm) {
    notes.push({ setting: 'firmware.tpm', action: 'dropped', from: true, reason: 'an XVA carries no vTPM state; after import add one with `xe vtpm-create vm-uuid=...`' });
  }
  if (spec.cpu.cores && spec.cpu.count % spec.cpu.cores === 0) platform['cores-per-socket'] = String(spec.cpu.cores);
  if (spec.cpu.threads && spec.cpu.threads > 1) notes.push({ setting: 'cpu.threads', action: 'dropped', from: spec.cpu.threads, reason: 'XAPI exposes sockets and cores per socket only' });
  vm.platform = platform;
  vm.HVM_boot_params = hvm;
  vm.PV_bootloader = boot.bootloader ?? '';
  vm.PV_bootloader_args = (boot.bootloaderArgs ?? []).join(' ');
  vm.PV_kernel = boot.kernel ?? '';
  vm.PV_ramdisk = boot.ramdisk ?? '';
  vm.PV_args = boot.cmdline ?? '';
  if (spec.virtualization === 'hvm' && (boot.kernel || boot.bootloader)) {
    notes.push({ setting: 'boot.kernel', action: 'dropped', from: boot.kernel ?? boot.bootloader, reason: 'XAPI boots HVM guests from their disks; PV_kernel and PV_bootloader apply to PV guests only' });
  }
  if (spec.consoles.some((c) => c.type === 'serial')) notes.push({ setting: 'consoles', action: 'dropped', reason: 'XAPI gives each VM its own console; serial ports are set with platform:hvm_serial after import' });
  if (spec.graphics.some((g) => g.type !== 'vnc' && g.type !== 'vga')) notes.push({ setting: 'graphics', action: 'changed', to: 'vnc', reason: 'XAPI offers the VM display over VNC only' });
  const vmObj: XvaObject = { cls: 'VM', id: vmId, snapshot: vm };
  objects.push(vmObj);

  // ---- one SR holding the VDIs (XAPI maps it to the SR chosen at import)
  const srId = ref();
  const sr: RpcStruct = {
    uuid: crypto().randomUUID(), name_label: 'Polyvisor export', name_description: '', allowed_operations: [], current_operations: {},
    VDIs: [], PBDs: [], virtual_allocation: '0', physical_utilisation: '0', physical_size: '0', type: 'ext', content_type: 'user',
    shared: false, other_config: {}, tags: [], sm_config: {}, blobs: {}, local_cache_enabled: false, introduced_by: NULL_REF, clustered: false, is_tools_sr: false,
  };
  objects.push({ cls: 'SR', id: srId, snapshot: sr });

  // ---- VBDs and VDIs
  const vdiRefs = new Map<number, string>();
  const vbdIds: string[] = [];
  const used = new Set<number>();
  const wanted = spec.disks.map((d) => d.unit);
  spec.disks.forEach((d, i) => {
    let userdevice = d.unit !== undefined && (d.bus === 'xen' || d.bus === 'ide') && !used.has(d.unit) && wanted.indexOf(d.unit) === i ? d.unit : -1;
    if (userdevice < 0) {
      userdevice = d.device === 'cdrom' && !used.has(3) && !wanted.includes(3) ? 3 : 0;
      while (used.has(userdevice) || (wanted.includes(userdevice) && wanted.indexOf(userdevice) !== i)) userdevice++;
    }
    used.add(userdevice);
    if (d.bus !== 'xen' && d.bus !== 'ide') {
      notes.push({ setting: `disks[${i}].bus`, action: 'changed', from: d.bus, to: userdevice < 4 && spec.virtualization === 'hvm' ? 'ide' : 'xen', reason: 'XAPI attaches disks as Xen PV devices (emulated IDE for the first four of an HVM guest) by userdevice number' });
    }
    if (d.controllerModel && d.controllerModel !== 'piix3' && d.controllerModel !== 'xen-pv') {
      notes.push({ setting: `disks[${i}].controllerModel`, action: 'dropped', from: d.controllerModel, reason: 'XAPI has no storage controller models' });
    }
    const ex = x.disks[i] ?? {};
    const vbdId = ref();
    vbdIds.push(vbdId);
    const vbd: RpcStruct = { ...defaultVbd(), ...((ex.vbd as RpcStruct) ?? {}) };
    if (vbd.uuid === undefined) vbd.uuid = crypto().randomUUID();
    vbd.VM = vmId;
    vbd.userdevice = String(userdevice);
    vbd.device = d.target ?? '';
    vbd.type = d.device === 'cdrom' ? 'CD' : d.device === 'floppy' ? 'Floppy' : 'Disk';
    vbd.mode = d.readOnly || d.device === 'cdrom' ? 'RO' : 'RW';
    vbd.bootable = d.bootOrder !== undefined;
    const hasContent = withContent.has(i) && d.device !== 'cdrom';
    if (withContent.has(i) && d.device === 'cdrom') {
      notes.push({ setting: `disks[${i}]`, action: 'dropped', reason: 'XAPI does not stream CD-ROM images in an XVA; the drive is written empty (insert the ISO from an ISO SR after import)' });
    }
    vbd.empty = !hasContent;
    if (hasContent) {
      const vdiId = ref();
      const vdi: RpcStruct = { ...defaultVdi(), ...((ex.vdi as RpcStruct) ?? {}) };
      if (vdi.uuid === undefined) vdi.uuid = crypto().randomUUID();
      if (!str(vdi.name_label)) vdi.name_label = `${spec.name} disk ${i}`;
      vdi.virtual_size = String(d.capacity ?? 0);
      vdi.SR = srId;
      vdi.VBDs = [vbdId];
      vdi.read_only = d.readOnly ?? false;
      objects.push({ cls: 'VDI', id: vdiId, snapshot: vdi });
      (sr.VDIs as RpcValue[]).push(vdiId);
      vbd.VDI = vdiId;
      vdiRefs.set(i, vdiId);
    } else {
      vbd.VDI = NULL_REF;
    }
    objects.push({ cls: 'VBD', id: vbdId, snapshot: vbd });
  });
  vm.VBDs = vbdIds;

  // ---- VIFs and their networks (one network object per distinct name)
  const vifIds: string[] = [];
  const nets = new Map<string, XvaObject>();
  spec.nics.forEach((n, i) => {
    if (n.model && n.model !== 'xen-netfront') {
      notes.push({ setting: `nics[${i}].model`, action: 'dropped', from: n.model, reason: 'XAPI chooses the emulated NIC (and the guest uses the Xen PV NIC once its drivers load)' });
    }
    const ex = x.nics[i] ?? {};
    const exNet = (ex.network as RpcStruct) ?? {};
    const key = `${n.connection ?? ''}:${n.network ?? ''}:${str(exNet.uuid)}`;
    let net = nets.get(key);
    if (!net) {
      const rec: RpcStruct = { ...defaultNetwork(), ...exNet };
      if (rec.uuid === undefined) rec.uuid = crypto().randomUUID();
      rec.name_label = n.connection === 'bridge' && !str(exNet.name_label) ? '' : n.network ?? `Pool-wide network associated with eth${i}`;
      if (n.connection === 'bridge' && n.network && !str(rec.bridge)) rec.bridge = n.network;
      rec.VIFs = [];
      rec.PIFs = [];
      net = { cls: 'network', id: ref(), snapshot: rec };
      nets.set(key, net);
      objects.push(net);
    }
    const vifId = ref();
    vifIds.push(vifId);
    const vif: RpcStruct = { ...defaultVif(), ...((ex.vif as RpcStruct) ?? {}) };
    if (vif.uuid === undefined) vif.uuid = crypto().randomUUID();
    vif.device = String(i);
    vif.MAC = n.mac ?? '';
    if (!n.mac) vif.MAC_autogenerated = true;
    vif.VM = vmId;
    vif.network = net.id;
    (net.snapshot.VIFs as RpcValue[]).push(vifId);
    objects.push({ cls: 'VIF', id: vifId, snapshot: vif });
  });
  vm.VIFs = vifIds;
  vm.VTPMs = [];
  vm.consoles = [];
  return { header: { version: versionRecord(), objects }, vdiRefs, notes };
}
