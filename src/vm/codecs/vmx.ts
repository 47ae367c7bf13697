/**
 * VMware .vmx: the configuration file of Workstation, Fusion, Player and ESXi.
 *
 * Syntax (as VMware writes it and libvirt's src/vmx/vmx.c reads it): one `key = "value"` per
 * line, `#` starts a comment line, keys are case-insensitive dotted names (`scsi0:1.fileName`),
 * values are double-quoted strings in which VMware writes a byte it cannot put inside quotes
 * as `|XX` (two hex digits: `|22` for a quote, `|7C` for the pipe itself, `|0A` for a newline
 * in `annotation`). `.encoding` names the file's character set (UTF-8 on every current product;
 * older Workstation wrote windows-1252, Chinese installs GBK).
 *
 * What the model names is mapped; every other key is kept verbatim in `extra.vmx` and written
 * back, so a .vmx → .vmx round trip loses nothing.
 */
import { basename } from 'node:path';
import { PolyvisorError } from '../../errors.js';
import type { ConversionNote, DecodeResult, EncodeInput, EncodeResult, VmCodec } from '../codec.js';
import { emptySpec, normaliseMac, validateSpec, type VmDisk, type VmNic, type VmSpec } from '../spec.js';

/** A .vmx of a few KiB is normal; a megabyte of guestinfo is odd; past this it is not a .vmx. */
export const MAX_VMX_BYTES = 8 << 20;
/** ESXi 8's ceiling is 24 TiB of guest memory; a memsize beyond is a damaged file. */
const MAX_MEMSIZE_MIB = 24 * 1024 * 1024;
const MAX_VCPUS = 768;

/**
 * virtualHW.version written when the source does not say: 14 is the first hardware version
 * with a virtual TPM (and it has NVMe and EFI secure boot, which came with 13), so it can
 * express everything VmSpec names; it runs on ESXi 6.7+, Workstation 14+ and Fusion 10+.
 */
export const DEFAULT_VIRTUAL_HW = '14';

interface Entry {
  key: string;
  value: string;
  line: number;
}

// ---------------------------------------------------------------------------------------
// Syntax

/** `|XX` → the byte XX; VMware's own escape inside quoted values. */
function unescapeValue(v: string): string {
  if (!v.includes('|')) return v;
  const bytes: number[] = [];
  const raw = Buffer.from(v, 'utf8');
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i]!;
    if (c === 0x7c && i + 2 < raw.length && /^[0-9a-fA-F]{2}$/.test(String.fromCharCode(raw[i + 1]!, raw[i + 2]!))) {
      bytes.push(parseInt(String.fromCharCode(raw[i + 1]!, raw[i + 2]!), 16));
      i += 2;
    } else bytes.push(c);
  }
  return Buffer.from(bytes).toString('utf8');
}

/** The inverse: quote, pipe and control characters as `|XX`, as VMware writes them. */
export function escapeValue(v: string): string {
  let out = '';
  for (const ch of v) {
    const code = ch.codePointAt(0)!;
    if (ch === '"' || ch === '|' || code < 0x20 || code === 0x7f) out += '|' + code.toString(16).toUpperCase().padStart(2, '0');
    else out += ch;
  }
  return out;
}

const KEY_RE = /^[A-Za-z0-9_.:\-[\]/]+$/;

/** Decodes the file's bytes by its `.encoding` (looked up in a Latin-1 view, which cannot fail). */
function decodeText(data: Buffer, file: string): string {
  let b = data;
  if (b.length >= 3 && b[0] === 0xef && b[1] === 0xbb && b[2] === 0xbf) b = b.subarray(3);
  const m = /^[ \t]*\.encoding[ \t]*=[ \t]*"([^"\r\n]*)"/im.exec(b.toString('latin1'));
  const enc = (m?.[1] ?? 'UTF-8').trim();
  if (/^utf-?8$/i.test(enc)) return b.toString('utf8');
  let dec: TextDecoder;
  try {
    dec = new TextDecoder(enc);
  } catch {
    throw new PolyvisorError('ERR_UNSUPPORTED', `.encoding "${enc}" is not a character set this Node.js knows`, { file, structure: '.encoding' });
  }
  return dec.decode(b);
}

/** Parses the lines; a line that is neither blank, a comment nor `key = value` is ERR_CORRUPT naming its number. */
export function parseVmx(data: Buffer, file: string): Entry[] {
  if (data.length > MAX_VMX_BYTES) throw new PolyvisorError('ERR_UNSUPPORTED', `a .vmx of ${data.length} bytes is over the ${MAX_VMX_BYTES}-byte limit`, { file });
  const text = decodeText(data, file);
  const lines = text.split(/\r\n|\n|\r/);
  const out: Entry[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '' || line.startsWith('#')) continue;
    const where = { file, structure: `line ${i + 1}` };
    const eq = line.indexOf('=');
    if (eq <= 0) throw new PolyvisorError('ERR_CORRUPT', `not a "key = value" line: ${JSON.stringify(line.slice(0, 80))}`, where);
    const key = line.slice(0, eq).trim();
    if (!KEY_RE.test(key)) throw new PolyvisorError('ERR_CORRUPT', `invalid key ${JSON.stringify(key.slice(0, 80))}`, where);
    const rest = line.slice(eq + 1).trim();
    let value: string;
    if (rest.startsWith('"')) {
      const close = rest.indexOf('"', 1);
      if (close < 0) throw new PolyvisorError('ERR_CORRUPT', `value of ${key} has no closing quote`, where);
      const tail = rest.slice(close + 1).trim();
      if (tail !== '' && !tail.startsWith('#')) throw new PolyvisorError('ERR_CORRUPT', `text after the closing quote of ${key}: ${JSON.stringify(tail.slice(0, 40))}`, where);
      value = unescapeValue(rest.slice(1, close));
    } else {
      // VMware itself writes `ide1:0.fileName = ` (empty, unquoted) in old files; accept bare words.
      if (rest.includes('"')) throw new PolyvisorError('ERR_CORRUPT', `stray quote in the value of ${key}`, where);
      value = rest;
    }
    out.push({ key, value, line: i + 1 });
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Tables

/** guestOS → family. Variant keeps VMware's own id. */
export function vmxGuestFamily(guestOS: string): VmSpec['os']['family'] {
  const g = guestOS.toLowerCase();
  if (g.startsWith('win') || g.startsWith('longhorn')) return 'windows';
  if (/freebsd|netbsd|openbsd|darwin/.test(g)) return 'bsd';
  if (g.startsWith('solaris')) return 'solaris';
  if (
    /linux|rhel|centos|ubuntu|debian|sles|suse|fedora|mandrake|mandriva|redhat|asianux|oracle|photon|coreos|amazonlinux|almalinux|rockylinux|turbolinux|nld|oes|miraclelinux|crxpod|vmwarephoton|opensuse/.test(
      g,
    )
  )
    return 'linux';
  if (g.startsWith('other') || g === 'dos' || g.startsWith('netware') || g.startsWith('os2')) return 'other';
  return 'unknown';
}

/** Family → the guestOS VMware's UI offers for an unspecified member of that family. */
const FAMILY_GUEST: Record<VmSpec['os']['family'], string> = {
  windows: 'windows9srv-64',
  linux: 'otherlinux-64',
  bsd: 'freebsd-64',
  solaris: 'solaris11-64',
  other: 'other-64',
  unknown: 'other-64',
};

/** A few names other hypervisors' descriptors use (libvirt/osinfo, Hyper-V), to VMware's ids. */
const FOREIGN_GUEST: Array<[RegExp, string]> = [
  [/^(win2k22|windows ?server ?2022)/i, 'windows2019srvNext-64'],
  [/^(win2k19|windows ?server ?2019)/i, 'windows2019srv-64'],
  [/^(win2k16|windows ?server ?2016)/i, 'windows9srv-64'],
  [/^(win2k12r2|win2k12|windows ?server ?2012)/i, 'windows8srv-64'],
  [/^(win2k8r2|windows ?server ?2008 ?r2)/i, 'windows7srv-64'],
  [/^(win2k3|windows ?server ?2003)/i, 'winNetStandard'],
  [/^(win11|windows ?11)/i, 'windows11-64'],
  [/^(win10|windows ?10)/i, 'windows9-64'],
  [/^(winxp|windows ?xp)/i, 'winXPPro'],
  [/^rhel ?9/i, 'rhel9-64'],
  [/^rhel ?8/i, 'rhel8-64'],
  [/^rhel ?7/i, 'rhel7-64'],
  [/^ubuntu/i, 'ubuntu-64'],
  [/^debian ?12/i, 'debian12-64'],
  [/^debian ?11/i, 'debian11-64'],
  [/^debian ?10/i, 'debian10-64'],
  [/^debian/i, 'debian10-64'],
];

/** VMware's own guestOS ids (from its guest OS compatibility tables), by family, with their "-64" twins. */
const VMWARE_GUEST_IDS = [
  /^(winXPPro|winXPHome|winNetStandard|winNetEnterprise|winNetWeb|winNetBusiness|winNetDatacenter|winVista|windows7|windows7srv|windows8|windows8srv|windows9|windows9srv|windows2019srv|windows2019srvNext|windows2022srvNext|windows11|windows12|longhorn|win2000Serv|win2000AdvServ|win2000Pro|winNT|win98|win95|win31|winMe)(-64)?$/,
  /^(rhel[2-9]|centos[6-9]?|ubuntu|debian([4-9]|1[0-3])|sles(1[0-6])?|oracleLinux[6-9]?|fedora|opensuse|otherlinux|other(24|26|3|4|5|6)xlinux|asianux[3-9]|coreos|vmwarePhoton|amazonlinux[23]|almalinux|rockylinux|mandrake|mandriva|turbolinux|redhat)(-64)?$/,
  /^(freebsd([1-9][0-9]?)?|darwin[0-9]*|solaris(8|9|10|11)|other|otherGuest|dos|netware[4-6]|os2)(-64)?$/,
];
function isVmwareGuestId(v: string): boolean {
  return VMWARE_GUEST_IDS.some((re) => re.test(v));
}

const SCSI_MODELS: Record<string, VmDisk['controllerModel']> = { lsilogic: 'lsilogic', lsisas1068: 'lsisas1068', pvscsi: 'pvscsi', buslogic: 'buslogic' };
const NIC_IN: Record<string, VmNic['model']> = { e1000: 'e1000', e1000e: 'e1000e', vmxnet3: 'vmxnet3', enhancedvmxnet: 'vmxnet2', vlance: 'pcnet' };
const NIC_OUT: Partial<Record<NonNullable<VmNic['model']>, string>> = { e1000: 'e1000', e1000e: 'e1000e', vmxnet3: 'vmxnet3', vmxnet2: 'enhancedvmxnet', pcnet: 'vlance' };
const BOOT_IN: Record<string, 'disk' | 'cdrom' | 'network' | 'floppy'> = { hdd: 'disk', cdrom: 'cdrom', ethernet: 'network', floppy: 'floppy' };
const BOOT_OUT = { disk: 'hdd', cdrom: 'cdrom', network: 'ethernet', floppy: 'floppy' } as const;

/** Unit numbers each controller kind has, as VMware numbers them (SCSI 7 is the adapter itself). */
const BUS_LIMITS = {
  ide: { controllers: 2, units: 2, skip: -1 },
  scsi: { controllers: 4, units: 16, skip: 7 },
  sata: { controllers: 4, units: 30, skip: -1 },
  nvme: { controllers: 4, units: 15, skip: -1 },
} as const;
type VmxBus = keyof typeof BUS_LIMITS;

// ---------------------------------------------------------------------------------------
// Decode

function isTrue(v: string | undefined): boolean {
  return v !== undefined && /^(true|yes|1)$/i.test(v.trim());
}

function intValue(map: Map<string, Entry>, key: string, file: string, min: number, max: number): number | undefined {
  const e = map.get(key.toLowerCase());
  if (!e) return undefined;
  const s = e.value.trim();
  if (!/^\d+$/.test(s) || Number(s) < min || Number(s) > max) {
    throw new PolyvisorError('ERR_CORRUPT', `${e.key} = "${e.value.slice(0, 40)}" is not a whole number in ${min}..${max}`, { file, structure: `line ${e.line} (${e.key})` });
  }
  return Number(s);
}

/** "56 4d 09 6b b0 ff 56 dd-bd 74 a4 03 97 2b f3 37" → RFC 4122 text. */
function parseVmxUuid(v: string): string | undefined {
  const hex = v.replace(/[\s-]/g, '').toLowerCase();
  if (!/^[0-9a-f]{32}$/.test(hex)) return undefined;
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function formatVmxUuid(uuid: string): string {
  const hex = uuid.replace(/-/g, '');
  const pairs = hex.match(/../g)!;
  return `${pairs.slice(0, 8).join(' ')}-${pairs.slice(8).join(' ')}`;
}

function decodeVmx(data: Buffer, path: string): DecodeResult {
  const entries = parseVmx(data, path);
  const map = new Map<string, Entry>();
  for (const e of entries) map.set(e.key.toLowerCase(), e); // the last of duplicate keys wins, as in VMware
  const used = new Set<string>();
  const get = (k: string): string | undefined => map.get(k.toLowerCase())?.value;
  const use = (...keys: string[]): void => keys.forEach((k) => used.add(k.toLowerCase()));
  const notes: ConversionNote[] = [];

  use('.encoding', 'config.version');
  const name = get('displayName') || basename(path).replace(/\.vmx$/i, '') || 'vm';
  use('displayName');
  const spec = emptySpec(name);

  const annotation = get('annotation');
  if (annotation) {
    spec.description = annotation;
    use('annotation');
  }
  const uuid = get('uuid.bios');
  if (uuid !== undefined) {
    const u = parseVmxUuid(uuid);
    if (!u) throw new PolyvisorError('ERR_CORRUPT', `uuid.bios "${uuid.slice(0, 60)}" is not 16 hex bytes`, { file: path, structure: 'uuid.bios' });
    spec.uuid = u;
    use('uuid.bios');
  }

  const memsize = intValue(map, 'memsize', path, 1, MAX_MEMSIZE_MIB);
  if (memsize !== undefined) {
    spec.memory.bytes = memsize * 1024 * 1024;
    use('memsize');
  }
  const vcpus = intValue(map, 'numvcpus', path, 1, MAX_VCPUS);
  if (vcpus !== undefined) use('numvcpus');
  spec.cpu.count = vcpus ?? 1;
  const cps = intValue(map, 'cpuid.coresPerSocket', path, 1, MAX_VCPUS);
  if (cps !== undefined) {
    use('cpuid.coresPerSocket');
    spec.cpu.cores = cps;
    if (spec.cpu.count % cps === 0) spec.cpu.sockets = spec.cpu.count / cps;
  }

  const firmware = get('firmware');
  if (firmware !== undefined && /^(efi|bios)$/i.test(firmware)) {
    spec.firmware.type = firmware.toLowerCase() === 'efi' ? 'uefi' : 'bios';
    use('firmware');
  }
  const sb = get('uefi.secureBoot.enabled');
  if (sb !== undefined) {
    spec.firmware.secureBoot = isTrue(sb);
    use('uefi.secureBoot.enabled');
  }
  const vtpm = get('vtpm.present');
  if (vtpm !== undefined) {
    spec.firmware.tpm = isTrue(vtpm);
    use('vtpm.present');
  }

  const guestOS = get('guestOS');
  if (guestOS) {
    spec.os = { family: vmxGuestFamily(guestOS), variant: guestOS };
    use('guestOS');
  }

  const order = get('bios.bootOrder');
  if (order !== undefined) {
    const items = order.split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);
    if (items.length > 0 && items.length <= 8 && items.every((s) => s in BOOT_IN)) {
      spec.boot = { order: items.map((s) => BOOT_IN[s]!) };
      use('bios.bootOrder');
    }
  }

  // Controllers and their disks. Units are found by their keys, so gaps (scsi0:3 only) are fine.
  const controllerModels = new Map<string, VmDisk['controllerModel']>();
  for (const e of entries) {
    const m = /^(scsi|sata|nvme)(\d+)\.(present|virtualdev)$/i.exec(e.key);
    if (!m) continue;
    const id = `${m[1]!.toLowerCase()}${m[2]}`;
    if (!isTrue(get(`${id}.present`))) continue;
    use(`${id}.present`);
    if (m[1]!.toLowerCase() === 'sata') controllerModels.set(id, 'ahci');
    if (m[1]!.toLowerCase() === 'scsi') {
      const dev = get(`${id}.virtualDev`)?.toLowerCase();
      if (dev && SCSI_MODELS[dev]) {
        controllerModels.set(id, SCSI_MODELS[dev]);
        use(`${id}.virtualDev`);
      }
    }
  }
  const seenUnits = new Set<string>();
  for (const e of entries) {
    const m = /^(ide|scsi|sata|nvme)(\d+):(\d+)\./i.exec(e.key);
    if (!m) continue;
    const bus = m[1]!.toLowerCase() as VmxBus;
    const c = Number(m[2]);
    const u = Number(m[3]);
    const id = `${bus}${c}:${u}`;
    if (seenUnits.has(id)) continue;
    seenUnits.add(id);
    if (!isTrue(get(`${id}.present`))) continue; // present = FALSE: kept in extra, not in the model
    if (c >= BUS_LIMITS[bus].controllers || u >= BUS_LIMITS[bus].units) {
      throw new PolyvisorError('ERR_CORRUPT', `${id}: no such ${bus} slot on VMware's virtual hardware`, { file: path, structure: `line ${e.line} (${e.key})` });
    }
    if (bus !== 'ide' && !isTrue(get(`${bus}${c}.present`))) {
      notes.push({ setting: `vmx: ${id}`, action: 'dropped', reason: `${bus}${c}.present is not TRUE, so VMware does not attach this unit` });
      continue;
    }
    const deviceType = (get(`${id}.deviceType`) ?? '').toLowerCase();
    const fileName = get(`${id}.fileName`);
    const disk: VmDisk = { device: 'disk', bus, controller: c, unit: u };
    const model = controllerModels.get(`${bus}${c}`);
    if (model) disk.controllerModel = model;
    use(`${id}.present`);
    if (deviceType.includes('cdrom')) {
      disk.device = 'cdrom';
      if (deviceType === 'cdrom-image' && fileName) {
        disk.file = fileName;
        if (/\.iso$/i.test(fileName)) disk.format = 'raw';
        use(`${id}.deviceType`, `${id}.fileName`);
      }
      // atapi-cdrom / cdrom-raw: a host drive; its name stays in extra, the model has an empty CD-ROM
    } else if (deviceType === '' || deviceType === 'disk' || deviceType.endsWith('harddisk') || deviceType === 'plaindisk') {
      if (!fileName) {
        notes.push({ setting: `vmx: ${id}`, action: 'dropped', reason: 'a disk with no fileName' });
        continue;
      }
      disk.file = fileName;
      if (/\.vmdk$/i.test(fileName)) disk.format = 'vmdk';
      use(`${id}.fileName`); // deviceType (ESXi's "scsi-hardDisk") stays in extra and is written back
    } else {
      // rawDisk, scsi-passthru...: host devices the model cannot carry; kept in extra
      notes.push({ setting: `vmx: ${id}.deviceType`, action: 'dropped', from: deviceType, reason: 'a host device pass-through, not a disk file; kept in extra.vmx only' });
      continue;
    }
    spec.disks.push(disk);
  }

  // Floppies with an image file.
  for (let f = 0; f < 2; f++) {
    if (!isTrue(get(`floppy${f}.present`)) || (get(`floppy${f}.fileType`) ?? '').toLowerCase() !== 'file') continue;
    const fileName = get(`floppy${f}.fileName`);
    if (!fileName) continue;
    spec.disks.push({ device: 'floppy', bus: 'fdc', unit: f, file: fileName, format: 'raw' });
    use(`floppy${f}.present`, `floppy${f}.fileType`, `floppy${f}.fileName`);
  }

  // NICs
  const nicIds = new Set<number>();
  for (const e of entries) {
    const m = /^ethernet(\d+)\./i.exec(e.key);
    if (m) nicIds.add(Number(m[1]));
  }
  for (const n of [...nicIds].sort((a, b) => a - b)) {
    const id = `ethernet${n}`;
    if (!isTrue(get(`${id}.present`))) continue;
    use(`${id}.present`);
    const nic: VmNic = {};
    const dev = get(`${id}.virtualDev`)?.toLowerCase();
    if (dev && NIC_IN[dev]) {
      nic.model = NIC_IN[dev];
      use(`${id}.virtualDev`);
    }
    const type = (get(`${id}.addressType`) ?? 'generated').toLowerCase();
    const macKey = type === 'static' ? `${id}.address` : `${id}.generatedAddress`;
    const macText = get(macKey);
    if (macText !== undefined) {
      const mac = normaliseMac(macText);
      if (!mac) throw new PolyvisorError('ERR_CORRUPT', `${macKey} "${macText.slice(0, 40)}" is not a MAC address`, { file: path, structure: macKey });
      nic.mac = mac;
      use(macKey);
    }
    const conn = get(`${id}.connectionType`)?.toLowerCase();
    const networkName = get(`${id}.networkName`);
    if (conn === 'bridged') nic.connection = 'bridge';
    else if (conn === 'nat') nic.connection = 'nat';
    else if (conn === 'hostonly') {
      nic.connection = 'network';
      nic.network = 'hostonly';
    } else if (conn === 'custom' && get(`${id}.vnet`)) {
      nic.connection = 'network';
      nic.network = get(`${id}.vnet`);
      use(`${id}.vnet`);
    }
    if (nic.connection) use(`${id}.connectionType`);
    if (networkName) {
      nic.network = networkName;
      nic.connection ??= 'network';
      use(`${id}.networkName`);
    }
    spec.nics.push(nic);
  }

  // Serial ports (their backing, fileType/fileName, stays in extra)
  for (let s = 0; s < 32; s++) {
    if (!isTrue(get(`serial${s}.present`))) continue;
    spec.consoles.push({ type: 'serial', port: s });
    use(`serial${s}.present`);
  }

  // A duplicate key keeps only its last value, as in VMware.
  const extra: Record<string, string> = {};
  for (const e of map.values()) if (!used.has(e.key.toLowerCase())) extra[e.key] = e.value;
  if (Object.keys(extra).length > 0) spec.extra.vmx = extra;

  return { spec: validateSpec(spec, path), notes };
}

// ---------------------------------------------------------------------------------------
// Encode

function isVmwareStaticMac(mac: string): boolean {
  // VMware's static range: 00:50:56:00:00:00 – 00:50:56:3F:FF:FF
  return mac.startsWith('00:50:56:') && parseInt(mac.slice(9, 11), 16) <= 0x3f;
}

function scsiModelFor(spec: VmSpec): 'pvscsi' | 'lsisas1068' | 'lsilogic' {
  // pvscsi's driver is in Linux since 2.6.33 but not in Windows (VMware Tools brings it),
  // and Windows since 2008 has no driver for the parallel LSI Logic: its inbox one is the SAS.
  if (spec.os.family === 'linux') return 'pvscsi';
  if (spec.os.family === 'windows') return 'lsisas1068';
  return 'lsilogic';
}

function encodeVmx(input: EncodeInput): EncodeResult {
  const { spec } = input;
  const notes: ConversionNote[] = [];
  const source = (spec.extra.vmx ?? {}) as Record<string, unknown>;
  const extra = new Map<string, [string, string]>();
  for (const [k, v] of Object.entries(source)) extra.set(k.toLowerCase(), [k, String(v)]);
  for (const [codec, settings] of Object.entries(spec.extra)) {
    if (codec === 'vmx') continue;
    const n = Object.keys(settings).length;
    if (n > 0) notes.push({ setting: `extra.${codec}`, action: 'dropped', reason: `${n} setting(s) only ${codec} understands have no .vmx equivalent` });
  }

  const out = new Map<string, [string, string]>();
  /** A key the model owns: always written. */
  const set = (k: string, v: string): void => {
    out.set(k.toLowerCase(), [k, v]);
  };
  /** A default: written unless the source's extra keys say otherwise. */
  const setDefault = (k: string, v: string): void => {
    if (!extra.has(k.toLowerCase())) out.set(k.toLowerCase(), [k, v]);
  };

  set('.encoding', 'UTF-8');
  set('config.version', '8');
  set('virtualHW.version', extra.get('virtualhw.version')?.[1] ?? DEFAULT_VIRTUAL_HW);
  set('displayName', spec.name);

  // guest OS
  let guest: string;
  const variant = spec.os.variant;
  if (variant && isVmwareGuestId(variant)) guest = variant;
  else {
    const foreign = variant ? FOREIGN_GUEST.find(([re]) => re.test(variant))?.[1] : undefined;
    guest = foreign ?? FAMILY_GUEST[spec.os.family];
    if (variant && !foreign) notes.push({ setting: 'os.variant', action: 'changed', from: variant, to: guest, reason: `VMware has no guestOS "${variant}"; the generic ${spec.os.family} entry is written` });
  }
  set('guestOS', guest);
  if (spec.description) set('annotation', spec.description);
  if (spec.uuid) set('uuid.bios', formatVmxUuid(spec.uuid));

  // memory and CPUs
  const mib = Math.ceil(spec.memory.bytes / (1024 * 1024));
  if (mib * 1024 * 1024 !== spec.memory.bytes) notes.push({ setting: 'memory.bytes', action: 'changed', from: spec.memory.bytes, to: mib * 1024 * 1024, reason: 'memsize is in whole MiB' });
  const memsize = Math.ceil(mib / 4) * 4;
  if (memsize !== mib) notes.push({ setting: 'memory.bytes', action: 'changed', from: mib, to: memsize, reason: 'VMware requires memsize to be a multiple of 4 MiB' });
  set('memsize', String(memsize));
  if (spec.memory.maxBytes !== undefined && spec.memory.maxBytes !== spec.memory.bytes) {
    notes.push({ setting: 'memory.maxBytes', action: 'dropped', from: spec.memory.maxBytes, reason: 'VMware gives the guest memsize and balloons below it; there is no larger ceiling to grow into' });
  }
  set('numvcpus', String(spec.cpu.count));
  if (spec.cpu.cores !== undefined && spec.cpu.cores > 1) {
    if (spec.cpu.count % spec.cpu.cores === 0) set('cpuid.coresPerSocket', String(spec.cpu.cores));
    else notes.push({ setting: 'cpu.cores', action: 'dropped', from: spec.cpu.cores, reason: `numvcpus ${spec.cpu.count} is not a multiple of ${spec.cpu.cores} cores per socket` });
  }
  if (spec.cpu.threads !== undefined && spec.cpu.threads > 1) notes.push({ setting: 'cpu.threads', action: 'dropped', from: spec.cpu.threads, reason: 'VMware presents no SMT threads to a guest; every vCPU is a core' });

  // firmware
  if (spec.firmware.type === 'uefi') set('firmware', 'efi');
  else if (extra.has('firmware')) set('firmware', 'bios');
  if (spec.firmware.secureBoot !== undefined) {
    if (spec.firmware.type === 'uefi') set('uefi.secureBoot.enabled', spec.firmware.secureBoot ? 'TRUE' : 'FALSE');
    else if (spec.firmware.secureBoot) notes.push({ setting: 'firmware.secureBoot', action: 'dropped', reason: 'secure boot needs EFI firmware; this VM boots BIOS' });
  }
  if (spec.firmware.tpm) {
    set('vtpm.present', 'TRUE');
    // a VM that had its vTPM on VMware is already encrypted (its keys are in extra.vmx)
    if (!spec.extra.vmx) notes.push({
      setting: 'firmware.tpm',
      action: 'changed',
      from: true,
      to: 'vtpm.present = "TRUE"',
      reason: 'a VMware vTPM only powers on in an encrypted VM: ESXi needs a key provider configured in vCenter, Workstation encrypts the VM when the TPM is added',
    });
  } else if (spec.firmware.tpm === false && extra.has('vtpm.present')) set('vtpm.present', 'FALSE');

  if (spec.virtualization !== 'hvm') {
    notes.push({
      setting: 'virtualization',
      action: 'changed',
      from: spec.virtualization,
      to: 'hvm',
      reason: `VMware only runs fully virtualised guests: a Xen ${spec.virtualization.toUpperCase()} guest needs a kernel with the VMware/SCSI/NIC drivers and a bootloader on its disk before it boots here`,
    });
  }
  for (const k of ['kernel', 'ramdisk', 'cmdline', 'bootloader', 'bootloaderArgs'] as const) {
    if (spec.boot?.[k] !== undefined) notes.push({ setting: `boot.${k}`, action: 'dropped', reason: 'VMware boots from the guest disk through its firmware; it cannot load a kernel from the host' });
  }
  if (spec.boot?.order && spec.boot.order.length > 0) set('bios.bootOrder', spec.boot.order.map((o) => BOOT_OUT[o]).join(','));

  // disks
  const taken = new Set<string>();
  const scsiModels = new Map<number, string>();
  const controllersUsed = new Set<string>();
  const alloc = (bus: VmxBus, want?: { c?: number; u?: number }): { c: number; u: number } | undefined => {
    const lim = BUS_LIMITS[bus];
    if (want?.c !== undefined && want.u !== undefined && want.c < lim.controllers && want.u < lim.units && want.u !== lim.skip && !taken.has(`${bus}${want.c}:${want.u}`)) {
      return { c: want.c, u: want.u };
    }
    for (let c = 0; c < lim.controllers; c++) for (let u = 0; u < lim.units; u++) if (u !== lim.skip && !taken.has(`${bus}${c}:${u}`)) return { c, u };
    return undefined;
  };
  spec.disks.forEach((d, i) => {
    const file = input.diskFiles[i]?.file ?? d.file;
    if (d.device === 'floppy' || d.bus === 'fdc') {
      const f = [0, 1].find((n) => !taken.has(`floppy${n}`));
      if (f === undefined || !file) {
        notes.push({ setting: `disks[${i}]`, action: 'dropped', reason: f === undefined ? 'VMware has two floppy drives' : 'an empty floppy drive' });
        return;
      }
      taken.add(`floppy${f}`);
      set(`floppy${f}.present`, 'TRUE');
      set(`floppy${f}.fileType`, 'file');
      set(`floppy${f}.fileName`, file);
      return;
    }
    let bus: VmxBus;
    let model: string | undefined;
    if (d.bus === 'ide' || d.bus === 'sata' || d.bus === 'nvme') bus = d.bus;
    else if (d.bus === 'scsi' || d.bus === 'virtio' || d.bus === 'xen') {
      bus = 'scsi';
      const own = d.bus === 'scsi' && d.controllerModel && SCSI_MODELS[d.controllerModel] ? d.controllerModel : undefined;
      model = own ?? scsiModelFor(spec);
      if (!own) {
        const from = d.bus === 'scsi' ? `scsi (${d.controllerModel ?? 'no model'})` : d.bus;
        notes.push({ setting: `disks[${i}].bus`, action: 'changed', from, to: `scsi (${model})`, reason: `VMware has no ${from} controller; ${model} is the SCSI controller a ${spec.os.family} guest has a driver for` });
      }
    } else {
      notes.push({ setting: `disks[${i}].bus`, action: 'dropped', from: d.bus, reason: `VMware cannot attach a ${d.bus} disk from the .vmx` });
      return;
    }
    const slot = alloc(bus, d.bus === bus ? { c: d.controller, u: d.unit } : undefined);
    if (!slot) {
      notes.push({ setting: `disks[${i}]`, action: 'dropped', reason: `every ${bus} slot is taken` });
      return;
    }
    const id = `${bus}${slot.c}:${slot.u}`;
    taken.add(id);
    if (d.bus === bus && ((d.controller !== undefined && d.controller !== slot.c) || (d.unit !== undefined && d.unit !== slot.u))) {
      notes.push({ setting: `disks[${i}].unit`, action: 'changed', from: `${d.controller ?? 0}:${d.unit ?? 0}`, to: `${slot.c}:${slot.u}`, reason: `that ${bus} slot does not exist on VMware or is taken` });
    }
    if (bus !== 'ide') controllersUsed.add(`${bus}${slot.c}`);
    if (bus === 'scsi') {
      const prev = scsiModels.get(slot.c);
      if (prev && model && prev !== model) notes.push({ setting: `disks[${i}].controllerModel`, action: 'changed', from: model, to: prev, reason: `scsi${slot.c} is already a ${prev}; one controller has one model` });
      if (!prev && model) scsiModels.set(slot.c, model);
    }
    set(`${id}.present`, 'TRUE');
    if (d.device === 'cdrom') {
      if (file) {
        set(`${id}.deviceType`, 'cdrom-image');
        set(`${id}.fileName`, file);
      } else {
        setDefault(`${id}.deviceType`, bus === 'scsi' ? 'cdrom-raw' : 'atapi-cdrom');
        setDefault(`${id}.fileName`, 'auto detect');
        setDefault(`${id}.startConnected`, 'FALSE');
      }
    } else {
      if (!file) {
        notes.push({ setting: `disks[${i}]`, action: 'dropped', reason: 'a disk with no file' });
        out.delete(`${id}.present`.toLowerCase());
        return;
      }
      set(`${id}.fileName`, file);
    }
    if (d.readOnly && d.device === 'disk') notes.push({ setting: `disks[${i}].readOnly`, action: 'dropped', reason: 'VMware has no read-only disk; independent-nonpersistent discards writes at power-off instead, and is not set here' });
  });
  for (const c of [...controllersUsed].sort()) {
    set(`${c}.present`, 'TRUE');
    if (c.startsWith('scsi')) set(`${c}.virtualDev`, scsiModels.get(Number(c.slice(4))) ?? 'lsilogic');
  }

  // NICs
  spec.nics.forEach((nic, i) => {
    const id = `ethernet${i}`;
    set(`${id}.present`, 'TRUE');
    let dev = nic.model ? NIC_OUT[nic.model] : undefined;
    if (!dev) {
      dev = spec.os.family === 'windows' ? 'e1000e' : 'vmxnet3';
      if (nic.model) {
        notes.push({
          setting: `nics[${i}].model`,
          action: 'changed',
          from: nic.model,
          to: dev,
          reason: dev === 'vmxnet3' ? `VMware has no ${nic.model}; vmxnet3 is its paravirtual NIC (driver in Linux since 2.6.32)` : `VMware has no ${nic.model}; Windows has an inbox driver for e1000e, not for vmxnet3`,
        });
      }
    }
    set(`${id}.virtualDev`, dev);
    if (nic.mac) {
      const own = (extra.get(`${id}.addresstype`)?.[1] ?? '').toLowerCase();
      if (own === 'generated' || own === 'vpx') set(`${id}.generatedAddress`, nic.mac);
      else {
        setDefault(`${id}.addressType`, 'static');
        set(`${id}.address`, nic.mac);
        if (own !== 'static' && !isVmwareStaticMac(nic.mac)) {
          // Keeping the guest's MAC keeps its DHCP reservations, licences and udev/Windows NIC
          // names; ESXi refuses a static MAC outside its range unless checkMACAddress is off.
          setDefault(`${id}.checkMACAddress`, 'FALSE');
          notes.push({
            setting: `nics[${i}].mac`,
            action: 'changed',
            from: nic.mac,
            to: `static ${nic.mac} with ${id}.checkMACAddress = "FALSE"`,
            reason: 'the MAC is outside VMware\'s static range 00:50:56:00:00:00–00:50:56:3F:FF:FF; ESXi powers such a VM on only with checkMACAddress off. To take a VMware MAC instead, remove ethernet address/addressType and let VMware generate one',
          });
        }
      }
    } else setDefault(`${id}.addressType`, 'generated');
    if (nic.connection === 'bridge') set(`${id}.connectionType`, 'bridged');
    else if (nic.connection === 'nat') set(`${id}.connectionType`, 'nat');
    else if (nic.connection === 'none') {
      setDefault(`${id}.startConnected`, 'FALSE');
      notes.push({ setting: `nics[${i}].connection`, action: 'changed', from: 'none', to: 'startConnected = "FALSE"', reason: 'VMware has no unconnected NIC; this one is not connected at power-on' });
    }
    if (nic.connection === 'network' && nic.network === 'hostonly') set(`${id}.connectionType`, 'hostonly');
    else if (nic.connection === 'network' && nic.network && /^vmnet\d+$/i.test(nic.network)) {
      set(`${id}.connectionType`, 'custom');
      set(`${id}.vnet`, nic.network);
    } else if (nic.network) set(`${id}.networkName`, nic.network);
  });

  // consoles and graphics
  for (const c of spec.consoles) {
    if (c.type !== 'serial') {
      notes.push({ setting: 'consoles', action: 'dropped', from: c.type, reason: `VMware has no ${c.type} console; a serial port is its text console` });
      continue;
    }
    const n = c.port ?? 0;
    if (n > 31) continue;
    set(`serial${n}.present`, 'TRUE');
    setDefault(`serial${n}.fileType`, 'file');
    setDefault(`serial${n}.fileName`, `${input.name}-serial${n}.log`);
  }
  for (const g of spec.graphics) {
    if (g.type === 'vga') continue;
    notes.push({ setting: 'graphics', action: 'dropped', from: g.type, reason: 'VMware shows the console through its own remote console (MKS); ESXi 6.5+ has no VNC server' });
  }

  for (const [lc, kv] of extra) if (!out.has(lc)) out.set(lc, kv);
  const text = [...out.values()].map(([k, v]) => `${k} = "${escapeValue(v)}"`).join('\n') + '\n';
  return { files: [{ name: `${input.name}.vmx`, data: text }], notes };
}

// ---------------------------------------------------------------------------------------

function probeVmx(head: Buffer, path: string): number {
  try {
    if (head.includes(0)) return 0;
    const t = head.subarray(0, 16384).toString('latin1');
    const line = /^[ \t]*(\.encoding|config\.version|virtualHW\.version|displayName)[ \t]*=[ \t]*"/im;
    if (line.test(t)) return 85;
    if (/\.vmx$/i.test(path) && /^[ \t]*[A-Za-z0-9_.:]+[ \t]*=[ \t]*"/m.test(t)) return 40;
    return 0;
  } catch {
    return 0;
  }
}

export const vmx: VmCodec = {
  name: 'vmx',
  description: 'VMware .vmx configuration (Workstation, Fusion, Player, ESXi)',
  usedBy: 'VMware Workstation, Fusion, Player, ESXi',
  extensions: ['.vmx'],
  defaultDiskFormat: 'vmdk',
  diskFormats: ['vmdk'],
  probe: probeVmx,
  decode: decodeVmx,
  encode: encodeVmx,
};
