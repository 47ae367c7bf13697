/**
 * Microsoft Virtual Server 2005 (R2) and Virtual PC 2004/2007 .vmc: read only.
 *
 * A .vmc is XML, written by both products in UTF-16 LE with a byte-order mark, rooted at
 * <preferences>; every value element carries its type in an attribute (`<ram_size
 * type="integer">512</ram_size>`). The VM's name is the file's name (Virtual Server's
 * documentation: "the name of the virtual machine, which is also the name of the virtual
 * machine configuration file"). Hardware is fixed by the products: one CPU, BIOS, an Intel
 * 440BX board with PIIX4 IDE (two channels, two drives each), an emulated DEC 21140 NIC, and on
 * Virtual Server an Adaptec 7870 SCSI adapter (up to four, seven disks each).
 *
 * Writing .vmc is not offered: nothing runs Virtual Server or Virtual PC today.
 */
import { basename } from 'node:path';
import { PolyvisorError } from '../../errors.js';
import type { ConversionNote, DecodeResult, VmCodec } from '../codec.js';
import { emptySpec, normaliseMac, validateSpec, type VmDisk } from '../spec.js';
import { attr, child, childText, children, parseXml, type XmlNode, xmlText } from '../xml.js';

/** Virtual Server's ceiling is 3.6 GB and Virtual PC's 4 GB; past 64 GiB the file is damaged. */
const MAX_RAM_MIB = 65536;

/** Windows path → the file name, and a relative ".\disk.vhd" → "disk.vhd" with forward slashes. */
export function windowsRelative(p: string): string {
  return p.replace(/\\/g, '/').replace(/^(\.\/)+/, '');
}
export function windowsBasename(p: string): string {
  const parts = p.split(/[\\/]/);
  return parts[parts.length - 1] ?? p;
}

function vmcPathname(loc: XmlNode): { file?: string; absolute?: string } {
  const pn = child(loc, 'pathname');
  const relative = childText(pn, 'relative')?.trim();
  const absolute = childText(pn, 'absolute')?.trim();
  if (relative) return { file: windowsRelative(relative), absolute: absolute || undefined };
  if (absolute) return { file: windowsBasename(absolute), absolute };
  return {};
}

function decodeVmc(data: Buffer, path: string): DecodeResult {
  const doc = parseXml(xmlText(data), path, { arrays: ['ide_controller', 'location', 'ethernet_controller', 'scsi_adapter', 'floppy', 'serial_port'] });
  const root = child(doc, 'preferences');
  if (!root) throw new PolyvisorError('ERR_CORRUPT', 'not a Virtual PC / Virtual Server configuration: the root element is not <preferences>', { file: path, structure: 'root element' });
  const notes: ConversionNote[] = [];
  const name = basename(path).replace(/\.vmc$/i, '') || 'vm';
  const spec = emptySpec(name);
  const extra: Record<string, unknown> = {};
  const hardware = child(root, 'hardware');

  const ramText = childText(child(hardware, 'memory'), 'ram_size');
  if (ramText !== undefined) {
    const mib = Number(ramText.trim());
    if (!/^\d+$/.test(ramText.trim()) || mib < 1 || mib > MAX_RAM_MIB) {
      throw new PolyvisorError('ERR_CORRUPT', `ram_size "${ramText.slice(0, 40)}" is not a whole number of MiB in 1..${MAX_RAM_MIB}`, { file: path, structure: 'hardware/memory/ram_size' });
    }
    spec.memory.bytes = mib * 1024 * 1024;
  }

  const version = childText(root, 'version');
  if (version) extra.version = version;
  const bios = child(hardware, 'bios');
  const biosGuid = childText(bios, 'bios_guid')?.trim().replace(/[{}]/g, '').toLowerCase();
  if (biosGuid && /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(biosGuid)) spec.uuid = biosGuid;

  // Guest OS: what the user picked (settings/guest_os), else what the Additions reported.
  const settings = child(root, 'settings');
  const reported = child(child(child(child(root, 'integration'), 'microsoft'), 'version'), 'guest_os');
  const guest = childText(settings, 'guest_os')?.trim() || childText(reported, 'long_name')?.trim() || childText(reported, 'short_name')?.trim();
  if (guest) {
    spec.os = { family: /windows|win\s?(xp|2k|nt|9x|me)|ms-?dos/i.test(guest) ? (/dos/i.test(guest) ? 'other' : 'windows') : /linux/i.test(guest) ? 'linux' : /os\/2|other/i.test(guest) ? 'other' : 'unknown', variant: guest };
  }
  const notesText = childText(settings, 'notes');
  if (notesText) spec.description = notesText;
  const undo = childText(child(child(settings, 'undo_drives'), 'enabled'), 'enable') ?? childText(child(settings, 'undo_drives'), 'enabled');
  if (undo && /true/i.test(undo)) {
    notes.push({ setting: 'vmc: settings/undo_drives', action: 'dropped', reason: 'undo disks (.vud) are enabled: changes since the session began live in the .vud, not in the .vhd; commit or discard them in Virtual Server before converting' });
  }

  const pci = child(hardware, 'pci_bus');
  // IDE: PIIX4, controllers 0-1 × locations 0-1; drive_type 0 none, 1 hard disk, 2 CD/DVD.
  for (const ctl of children(child(pci, 'ide_adapter'), 'ide_controller')) {
    const c = Number(attr(ctl, 'id') ?? '0');
    for (const loc of children(ctl, 'location')) {
      const u = Number(attr(loc, 'id') ?? '0');
      if ((c !== 0 && c !== 1) || (u !== 0 && u !== 1)) throw new PolyvisorError('ERR_CORRUPT', `IDE controller ${attr(ctl, 'id')} location ${attr(loc, 'id')} does not exist on the PIIX4`, { file: path, structure: 'ide_adapter' });
      const type = childText(loc, 'drive_type')?.trim() ?? '0';
      if (type === '0') continue;
      const p = vmcPathname(loc);
      const disk: VmDisk = { device: type === '2' ? 'cdrom' : 'disk', bus: 'ide', controllerModel: 'piix3', controller: c, unit: u };
      if (type === '1') {
        if (!p.file) throw new PolyvisorError('ERR_CORRUPT', `IDE ${c}:${u} is a hard disk with no pathname`, { file: path, structure: `ide_controller ${c} location ${u}` });
        disk.file = p.file;
        disk.format = 'vhd';
      } else if (type === '2') {
        // a CD drive holds an .iso image or the host's drive ("D:"); only an image is a file
        if (p.file && /\.iso$/i.test(p.file)) {
          disk.file = p.file;
          disk.format = 'raw';
        }
      } else {
        notes.push({ setting: `vmc: ide ${c}:${u} drive_type`, action: 'dropped', from: type, reason: 'unknown drive_type' });
        continue;
      }
      if (p.absolute && !childText(child(loc, 'pathname'), 'relative')?.trim() && disk.file) {
        notes.push({ setting: `disks[${spec.disks.length}].file`, action: 'changed', from: p.absolute, to: disk.file, reason: 'the .vmc records only an absolute Windows path; the file is looked for by its name beside the .vmc' });
      }
      spec.disks.push(disk);
    }
  }
  // SCSI (Virtual Server only): an emulated Adaptec AIC-7870 per scsi_adapter, locations are SCSI IDs.
  for (const ad of children(pci, 'scsi_adapter')) {
    const c = Number(attr(ad, 'id') ?? '0');
    for (const loc of children(ad, 'location')) {
      const u = Number(attr(loc, 'id') ?? '0');
      const type = childText(loc, 'drive_type')?.trim() ?? '0';
      if (type !== '1') continue;
      const p = vmcPathname(loc);
      if (!p.file) continue;
      if (!Number.isInteger(c) || !Number.isInteger(u) || c < 0 || c > 3 || u < 0 || u > 15) throw new PolyvisorError('ERR_CORRUPT', `SCSI adapter ${c} location ${u} out of range`, { file: path, structure: 'scsi_adapter' });
      if (p.absolute && !childText(child(loc, 'pathname'), 'relative')?.trim()) {
        notes.push({ setting: `disks[${spec.disks.length}].file`, action: 'changed', from: p.absolute, to: p.file, reason: 'the .vmc records only an absolute Windows path; the file is looked for by its name beside the .vmc' });
      }
      spec.disks.push({ device: 'disk', bus: 'scsi', controller: c, unit: u, file: p.file, format: 'vhd' });
      notes.push({ setting: `disks[${spec.disks.length - 1}].controllerModel`, action: 'dropped', from: 'Adaptec AIC-7870', reason: 'the model names no Adaptec SCSI controller; the target chooses its own SCSI controller' });
    }
  }
  // Floppy image
  for (const f of children(child(hardware, 'super_io'), 'floppy')) {
    const p = vmcPathname(f);
    if (p.file && /\.vfd$/i.test(p.file)) spec.disks.push({ device: 'floppy', bus: 'fdc', unit: Number(attr(f, 'id') ?? '0'), file: p.file, format: 'raw' });
  }

  // NICs: an emulated DEC 21140; ethernet_card_address is 12 hex digits.
  for (const ec of children(child(pci, 'ethernet_adapter'), 'ethernet_controller')) {
    const nic: (typeof spec.nics)[number] = {};
    const addr = childText(ec, 'ethernet_card_address');
    if (addr && addr.trim() !== '') {
      const mac = normaliseMac(addr);
      if (!mac) throw new PolyvisorError('ERR_CORRUPT', `ethernet_card_address "${addr.slice(0, 40)}" is not a MAC address`, { file: path, structure: `ethernet_controller ${attr(ec, 'id')}` });
      nic.mac = mac;
    }
    const net = childText(child(ec, 'virtual_network'), 'name')?.trim();
    if (net) {
      nic.network = net;
      nic.connection = /shared networking|\bnat\b/i.test(net) ? 'nat' : 'network';
    } else nic.connection = 'none';
    spec.nics.push(nic);
    notes.push({ setting: `nics[${spec.nics.length - 1}].model`, action: 'dropped', from: 'DEC 21140', reason: 'the model names no DEC 21140 (tulip); the target chooses its own NIC' });
  }
  // COM ports
  children(child(hardware, 'super_io'), 'serial_port').forEach((sp, i) => {
    const port = Number(attr(sp, 'id') ?? String(i));
    const t = childText(sp, 'port_type') ?? childText(sp, 'type');
    if (t !== undefined && t.trim() !== '0') spec.consoles.push({ type: 'serial', port: Number.isInteger(port) ? port : i });
  });

  const additions = childText(child(child(child(root, 'integration'), 'microsoft'), 'version'), 'additions_number');
  if (additions) extra.additions = additions;
  if (Object.keys(extra).length > 0) spec.extra.vmc = extra;
  return { spec: validateSpec(spec, path), notes };
}

function probeVmc(head: Buffer, path: string): number {
  try {
    const t = xmlText(head).slice(0, 8192);
    if (!/<preferences[\s>]/.test(t)) return 0;
    if (/Microsoft Virtual Machine|<ram_size|<ide_adapter|<pci_bus|<virtual_network/.test(t)) return 90;
    return /\.vmc$/i.test(path) ? 60 : 20;
  } catch {
    return 0;
  }
}

export const vmc: VmCodec = {
  name: 'vmc',
  description: 'Microsoft Virtual Server 2005 / Virtual PC .vmc (read only)',
  usedBy: 'Microsoft Virtual Server 2005 R2, Virtual PC 2004/2007',
  extensions: ['.vmc'],
  defaultDiskFormat: 'vhd',
  diskFormats: ['vhd'],
  probe: probeVmc,
  decode: decodeVmc,
};
