/**
 * Hyper-V virtual machine configuration, as a tree: the XML of Windows Server 2008–2012 R2
 * (`Virtual Machines/<GUID>.xml`, UTF-16 LE, root <configuration>, every value element typed:
 * `<name type="string">`) and the binary .vmcx of 2016+ (hyperv-vmcx.ts) carry the same tree
 * of keys, so both are read into one shape (HvTree) and mapped to VmSpec here.
 *
 * The tree's layout (key names from Hyper-V's own files):
 *   properties/{name, global_id, subtype (0 = generation 1, 1 = generation 2), notes, version}
 *   settings/memory/bank/{size, limit, reservation (MiB), dynamic_memory_enabled}
 *   settings/processors/count
 *   manifest/vdevNNN/{device (type GUID), instance (GUID), name}: the VM's devices
 *   _<instance GUID>_: each device's own settings, e.g.
 *     _83f8638b-8dca-4152-9eda-2ca8b33039b4_/controllerN/driveM/{pathname, type VHD|ISO|NONE}  (IDE)
 *     _<SCSI instance>_/controller0/driveM/...             (synthetic SCSI, device d422512d-...)
 *     _<NIC instance>_/{MacAddress, MacAddressIsStatic, ChannelInstanceGuid, Connection/AltSwitchName}
 *     _8e3a359f-559a-4b6a-98a9-1690a6100ed7_/portN/connection (COM1, COM2)
 *     _ac6b8dc1-3257-4a70-b1b2-a9c9215659ad_/{bios_guid, boot/deviceN, secure_boot_enabled}
 */
import { PolyvisorError } from '../../errors.js';
import type { ConversionNote, DecodeResult } from '../codec.js';
import { emptySpec, normaliseMac, validateSpec, type VmDisk, type VmNic, type VmSpec } from '../spec.js';
import { parseXml, type XmlNode } from '../xml.js';
import { windowsBasename } from './vmc.js';
import { xmlText } from '../xml.js';

export type HvValue = string | number | boolean | HvTree;
export interface HvTree {
  [key: string]: HvValue;
}

export const IDE_DEVICE = '83f8638b-8dca-4152-9eda-2ca8b33039b4';
export const SCSI_DEVICE = 'd422512d-2bf2-4752-809d-7b82b5fcb1b4';
export const SYNTHETIC_NIC_DEVICE = '2fc216b0-d2e2-4967-9b6d-b8a5c9ca2778';
const COM_DEVICE = '8e3a359f-559a-4b6a-98a9-1690a6100ed7';
const FLOPPY_DEVICE = '8f0d2762-0b00-4e04-af4f-19010527cb93';
const BIOS_DEVICE = 'ac6b8dc1-3257-4a70-b1b2-a9c9215659ad';

const MAX_DEPTH = 32;
/** Hyper-V's ceiling is 12 TiB (2016+; 1 TiB on 2012 R2); past 16 TiB the file is damaged. */
const MAX_MEMORY_MIB = 16 * 1024 * 1024;

// ---------------------------------------------------------------------------------------
// XML → tree

function xmlToTree(node: XmlNode, depth: number, file: string): HvTree {
  if (depth > MAX_DEPTH) throw new PolyvisorError('ERR_UNSUPPORTED', `elements nested deeper than ${MAX_DEPTH}`, { file });
  const out: HvTree = {};
  for (const [k, v] of Object.entries(node)) {
    if (k.startsWith('@') || k === '#text') continue;
    const one = Array.isArray(v) ? v[0] : v; // Hyper-V never repeats a key; keep the first if a file does
    if (one === null || one === undefined) out[k] = '';
    else if (typeof one !== 'object') out[k] = String(one);
    else {
      const o = one as XmlNode;
      const kids = Object.keys(o).filter((x) => !x.startsWith('@') && x !== '#text');
      out[k] = kids.length === 0 ? (o['#text'] === undefined ? '' : String(o['#text'])) : xmlToTree(o, depth + 1, file);
    }
  }
  return out;
}

export function parseHypervXml(data: Buffer, file: string): HvTree {
  const doc = parseXml(xmlText(data), file);
  if (doc.DECLARATIONS || doc.DECLARATION || doc.CIM) {
    throw new PolyvisorError(
      'ERR_UNSUPPORTED',
      'a Windows Server 2008/2008 R2 export (.exp, CIM-XML) is not read: import it on a Hyper-V host and use the configuration XML from "Virtual Machines\\<GUID>.xml", or export again from Windows Server 2012/2012 R2',
      { file, structure: 'root element' },
    );
  }
  const cfg = doc.configuration;
  if (!cfg || typeof cfg !== 'object') throw new PolyvisorError('ERR_CORRUPT', 'not a Hyper-V configuration: the root element is not <configuration>', { file, structure: 'root element' });
  return { configuration: xmlToTree(cfg as XmlNode, 0, file) };
}

// ---------------------------------------------------------------------------------------
// Tree helpers: key lookups are case-insensitive (2008 R2 and 2012 R2 differ in case for a few keys)

function sub(t: HvValue | undefined, key: string): HvTree | undefined {
  if (!t || typeof t !== 'object') return undefined;
  const v = t[key] ?? t[Object.keys(t).find((k) => k.toLowerCase() === key.toLowerCase()) ?? ''];
  return v !== undefined && typeof v === 'object' ? v : undefined;
}
function leaf(t: HvValue | undefined, key: string): string | undefined {
  if (!t || typeof t !== 'object') return undefined;
  const v = t[key] ?? t[Object.keys(t).find((k) => k.toLowerCase() === key.toLowerCase()) ?? ''];
  if (v === undefined || typeof v === 'object') return undefined;
  return String(v);
}
function isTrue(v: string | undefined): boolean {
  return v !== undefined && /^(true|1)$/i.test(v.trim());
}
function guidOf(text: string | undefined): string | undefined {
  const g = text?.trim().replace(/^\{|\}$/g, '').toLowerCase();
  return g && /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(g) ? g : undefined;
}
/** The top-level device node `_<guid>_` for an instance GUID. */
function deviceNode(cfg: HvTree, guid: string): HvTree | undefined {
  const k = Object.keys(cfg).find((x) => x.toLowerCase() === `_${guid}_`);
  return k ? sub(cfg, k) : undefined;
}
function numbered(t: HvTree | undefined, prefix: string): Array<[number, HvTree]> {
  if (!t) return [];
  const out: Array<[number, HvTree]> = [];
  for (const k of Object.keys(t)) {
    const m = new RegExp(`^${prefix}(\\d+)$`, 'i').exec(k);
    const v = t[k];
    if (m && v && typeof v === 'object') out.push([Number(m[1]), v]);
  }
  return out.sort((a, b) => a[0] - b[0]);
}
function intLeaf(t: HvTree | undefined, key: string, file: string, where: string, max: number): number | undefined {
  const s = leaf(t, key)?.trim();
  if (s === undefined || s === '') return undefined;
  if (!/^\d+$/.test(s) || Number(s) > max) throw new PolyvisorError('ERR_CORRUPT', `${where}/${key} = "${s.slice(0, 40)}" is not a whole number in 0..${max}`, { file, structure: `${where}/${key}` });
  return Number(s);
}

// ---------------------------------------------------------------------------------------
// Tree → VmSpec

export function hypervTreeToSpec(tree: HvTree, file: string, kind: 'xml' | 'vmcx'): DecodeResult {
  const cfg = sub(tree, 'configuration');
  if (!cfg) throw new PolyvisorError('ERR_CORRUPT', 'no configuration node', { file, structure: 'configuration' });
  const props = sub(cfg, 'properties');
  const settings = sub(cfg, 'settings');
  const notes: ConversionNote[] = [];
  const name = leaf(props, 'name')?.trim();
  if (!name) throw new PolyvisorError('ERR_CORRUPT', 'the VM has no name (configuration/properties/name)', { file, structure: 'properties/name' });
  const spec: VmSpec = emptySpec(name);
  const extra: Record<string, unknown> = { source: kind };

  const globalId = guidOf(leaf(props, 'global_id')) ?? guidOf(leaf(sub(settings, 'global'), 'logical_id'));
  const bios = deviceNode(cfg, BIOS_DEVICE);
  const biosGuid = guidOf(leaf(bios, 'bios_guid'));
  // The guest sees the BIOS GUID as its SMBIOS UUID (what other hypervisors call the VM's
  // UUID); the VM ID (global_id) is Hyper-V's own handle and is kept in extra.
  spec.uuid = biosGuid ?? globalId;
  if (globalId) extra.global_id = globalId;
  if (biosGuid) extra.bios_guid = biosGuid;
  const version = leaf(props, 'version');
  if (version) extra.version = version;
  const notesText = leaf(props, 'notes');
  if (notesText) spec.description = notesText;

  const subtype = leaf(props, 'subtype')?.trim();
  const generation = subtype === '1' ? 2 : 1;
  extra.generation = generation;
  if (generation === 2) spec.firmware = { type: 'uefi' };
  const sb = findLeaf(cfg, 'secure_boot_enabled', 0);
  if (generation === 2 && sb !== undefined) spec.firmware.secureBoot = isTrue(sb);
  const template = findLeaf(cfg, 'secure_boot_template', 0);
  if (template) extra.secure_boot_template = template;

  // memory: MiB; with dynamic memory, limit is the ceiling the guest may balloon to
  const bank = sub(sub(settings, 'memory'), 'bank');
  const size = intLeaf(bank, 'size', file, 'settings/memory/bank', MAX_MEMORY_MIB);
  if (size !== undefined) {
    if (size < 1) throw new PolyvisorError('ERR_CORRUPT', 'settings/memory/bank/size is 0', { file, structure: 'settings/memory/bank/size' });
    spec.memory.bytes = size * 1024 * 1024;
  }
  if (isTrue(leaf(bank, 'dynamic_memory_enabled'))) {
    const limit = intLeaf(bank, 'limit', file, 'settings/memory/bank', MAX_MEMORY_MIB);
    if (limit !== undefined && limit * 1024 * 1024 > spec.memory.bytes) spec.memory.maxBytes = limit * 1024 * 1024;
    const reservation = intLeaf(bank, 'reservation', file, 'settings/memory/bank', MAX_MEMORY_MIB);
    if (reservation !== undefined) extra.memory_minimum_mib = reservation;
  }
  const count = intLeaf(sub(settings, 'processors'), 'count', file, 'settings/processors', 2048);
  if (count !== undefined && count >= 1) spec.cpu.count = count;

  // BIOS boot order (generation 1)
  const boot = sub(bios, 'boot');
  if (generation === 1 && boot) {
    const map: Record<string, 'disk' | 'cdrom' | 'network' | 'floppy'> = { harddrive: 'disk', optical: 'cdrom', network: 'network', floppy: 'floppy' };
    const order = Object.keys(boot)
      .filter((k) => /^device\d+$/i.test(k))
      .sort((a, b) => Number(a.slice(6)) - Number(b.slice(6)))
      .map((k) => map[String(boot[k]).toLowerCase()])
      .filter((x): x is 'disk' | 'cdrom' | 'network' | 'floppy' => x !== undefined);
    if (order.length > 0) spec.boot = { order };
  }

  // Devices, in the manifest's order where there is one.
  const manifest = sub(cfg, 'manifest');
  const devices: Array<{ type?: string; instance: string; name?: string }> = [];
  for (const [, v] of numbered(manifest, 'vdev')) {
    const inst = guidOf(leaf(v, 'instance'));
    if (inst) devices.push({ type: guidOf(leaf(v, 'device')), instance: inst, name: leaf(v, 'name') });
  }
  const listed = new Set(devices.map((d) => d.instance));
  for (const k of Object.keys(cfg)) {
    const g = guidOf(/^_(.+)_$/.exec(k)?.[1]);
    if (g && !listed.has(g)) devices.push({ instance: g, type: g === IDE_DEVICE || g === SCSI_DEVICE ? g : undefined });
  }

  const addDrive = (drive: HvTree, bus: VmDisk['bus'], model: VmDisk['controllerModel'], c: number, u: number, where: string): void => {
    const type = (leaf(drive, 'type') ?? '').trim().toUpperCase();
    const pathname = (leaf(drive, 'pathname') ?? '').trim();
    if (type === 'NONE' || type === '') return;
    const disk: VmDisk = { device: 'disk', bus, controllerModel: model, controller: c, unit: u };
    if (type === 'VHD') {
      if (!pathname) return;
      disk.file = windowsBasename(pathname);
      disk.format = /\.vhdx$/i.test(pathname) ? 'vhdx' : /\.vhd$/i.test(pathname) ? 'vhd' : undefined;
      if (/\.avhdx?$/i.test(pathname)) {
        disk.format = /x$/i.test(pathname) ? 'vhdx' : 'vhd';
        notes.push({ setting: `disks[${spec.disks.length}].file`, action: 'changed', from: pathname, to: disk.file, reason: 'the VM runs on a checkpoint (differencing .avhd/.avhdx): its parent chain must travel with it' });
      }
    } else if (type === 'ISO') {
      disk.device = 'cdrom';
      if (pathname) {
        disk.file = windowsBasename(pathname);
        disk.format = 'raw';
      }
    } else if (type === 'VFD') {
      if (!pathname) return;
      Object.assign(disk, { device: 'floppy', bus: 'fdc', controllerModel: undefined, controller: undefined, file: windowsBasename(pathname), format: 'raw' });
      delete disk.controllerModel;
      delete disk.controller;
    } else {
      notes.push({ setting: `hyperv: ${where}`, action: 'dropped', from: type, reason: 'a pass-through host disk, not a file' });
      return;
    }
    if (pathname && disk.file && pathname !== disk.file) {
      notes.push({
        setting: `disks[${spec.disks.length}].file`,
        action: 'changed',
        from: pathname,
        to: disk.file,
        reason: 'the configuration records the absolute path on the source host; in an export the file is in the export folder\'s "Virtual Hard Disks" (ISOs where they were)',
      });
    }
    spec.disks.push(disk);
  };

  const comPorts: Record<string, string> = {};
  let scsiIndex = 0;
  for (const dev of devices) {
    const node = deviceNode(cfg, dev.instance);
    if (!node) continue;
    const where = `_${dev.instance}_`;
    if (dev.instance === IDE_DEVICE || dev.type === IDE_DEVICE) {
      for (const [c, ctl] of numbered(node, 'controller')) {
        if (c > 1) throw new PolyvisorError('ERR_CORRUPT', `IDE controller${c}: generation 1 has two`, { file, structure: where });
        for (const [u, drive] of numbered(ctl, 'drive')) {
          if (u > 1) throw new PolyvisorError('ERR_CORRUPT', `IDE controller${c}/drive${u}: an IDE channel has two`, { file, structure: where });
          addDrive(drive, 'ide', 'piix3', c, u, `${where}/controller${c}/drive${u}`);
        }
      }
    } else if (dev.type === SCSI_DEVICE || dev.instance === SCSI_DEVICE || (leaf(node, 'ChannelInstanceGuid') !== undefined && sub(node, 'controller0') && !leaf(node, 'MacAddress'))) {
      const c = scsiIndex++;
      for (const [, ctl] of numbered(node, 'controller')) {
        for (const [u, drive] of numbered(ctl, 'drive')) {
          if (u > 63) throw new PolyvisorError('ERR_CORRUPT', `SCSI drive${u}: a Hyper-V SCSI controller has 64 locations`, { file, structure: where });
          addDrive(drive, 'scsi', 'hyperv-scsi', c, u, `${where}/drive${u}`);
        }
      }
    } else if (dev.instance === FLOPPY_DEVICE || dev.type === FLOPPY_DEVICE) {
      for (const [, ctl] of numbered(node, 'controller')) for (const [u, drive] of numbered(ctl, 'drive')) addDrive(drive, 'fdc', undefined, 0, u, `${where}/drive${u}`);
    } else if (dev.instance === COM_DEVICE || dev.type === COM_DEVICE) {
      for (const [p, port] of numbered(node, 'port')) {
        const conn = leaf(port, 'connection')?.trim();
        if (conn) {
          spec.consoles.push({ type: 'serial', port: p });
          comPorts[`COM${p + 1}`] = conn;
        }
      }
    } else if (leaf(node, 'MacAddress') !== undefined || (leaf(node, 'address') !== undefined && normaliseMac(leaf(node, 'address')!) && sub(node, 'Connection'))) {
      const nic: VmNic = {};
      const synthetic = dev.type === SYNTHETIC_NIC_DEVICE || /synthetic/i.test(dev.name ?? '') || (!/emulated|legacy/i.test(dev.name ?? '') && leaf(node, 'ChannelInstanceGuid') !== undefined);
      nic.model = synthetic ? 'hyperv-netvsc' : 'hyperv-legacy';
      const macText = leaf(node, 'MacAddress') ?? leaf(node, 'address');
      if (macText && macText.trim() !== '') {
        const mac = normaliseMac(macText);
        if (!mac) throw new PolyvisorError('ERR_CORRUPT', `MAC address "${macText.slice(0, 40)}" is not six hex bytes`, { file, structure: `${where}/MacAddress` });
        if (mac !== '00:00:00:00:00:00') nic.mac = mac;
      }
      const conn = sub(node, 'Connection');
      const sw = leaf(conn, 'AltSwitchName')?.trim();
      if (sw) {
        nic.network = sw;
        nic.connection = 'network';
      } else nic.connection = 'none';
      spec.nics.push(nic);
    }
  }

  if (Object.keys(comPorts).length > 0) extra.com_ports = comPorts;
  spec.extra.hyperv = extra;
  return { spec: validateSpec(spec, file), notes };
}

/** The first leaf named `key` anywhere in the top two levels of device nodes (firmware keys move between versions). */
function findLeaf(t: HvTree, key: string, depth: number): string | undefined {
  const own = leaf(t, key);
  if (own !== undefined) return own;
  if (depth >= 2) return undefined;
  for (const v of Object.values(t)) {
    if (v && typeof v === 'object') {
      const r = findLeaf(v, key, depth + 1);
      if (r !== undefined) return r;
    }
  }
  return undefined;
}
