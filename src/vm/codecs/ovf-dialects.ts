/**
 * OVF's vocabulary, declared once: namespaces, CIM resource types, disk format URIs, device
 * subtypes, CIM operating system codes, allocation units, and which producer wrote a
 * descriptor. ovf-read.ts and ovf-write.ts look everything up here.
 *
 * Sources: DMTF DSP0243 (OVF 1.1 and 2.x); CIM_ResourceAllocationSettingData.ResourceType and
 * CIM_OperatingSystem.OsType value maps (CIM schema 2.x); DSP0004 programmatic units
 * ("byte * 2^20"); what ovftool / vSphere, VBoxManage export and XenCenter write.
 */
import { PolyvisorError } from '../../errors.js';
import type { VmSpec } from '../spec.js';

export const NS = {
  ovf1: 'http://schemas.dmtf.org/ovf/envelope/1',
  ovf2: 'http://schemas.dmtf.org/ovf/envelope/2',
  rasd: 'http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData',
  vssd: 'http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData',
  cim: 'http://schemas.dmtf.org/wbem/wscim/1/common',
  xsi: 'http://www.w3.org/2001/XMLSchema-instance',
  vmw: 'http://www.vmware.com/schema/ovf',
  vbox: 'http://www.virtualbox.org/ovf/machine',
  xenovf: 'http://schemas.citrix.com/ovf/envelope/1',
} as const;

/** CIM_ResourceAllocationSettingData.ResourceType values OVF descriptors use. */
export const RT = {
  other: 1,
  processor: 3,
  memory: 4,
  ide: 5,
  scsi: 6,
  ethernet: 10,
  floppy: 14,
  cd: 15,
  dvd: 16,
  disk: 17,
  storageExtent: 19, // XenCenter's VDIs
  otherStorage: 20, // SATA (AHCI) and NVMe controllers
  serial: 21,
  parallel: 22,
  usb: 23,
  graphics: 24,
  sound: 35, // "vendor reserved": VirtualBox's sound card
} as const;

export type Dialect = 'vmware' | 'virtualbox' | 'xenserver' | 'generic';

/** Who wrote the descriptor: from the extension namespaces it binds and the system type it names. */
export function detectDialect(text: string, systemType: string | undefined): Dialect {
  const t = systemType?.toLowerCase() ?? '';
  if (text.includes(NS.vbox) || t.startsWith('virtualbox')) return 'virtualbox';
  if (text.includes(NS.xenovf) || /^(xen|hvm)-/.test(t) || /^dmtf:xen/.test(t)) return 'xenserver';
  if (/\bvmx-\d+/.test(t) || /<vmw:|\svmw:/.test(text)) return 'vmware';
  return 'generic';
}

/** Disk format URIs (DiskSection/Disk ovf:format) → Polyvisor's disk format names. */
const FORMAT_URIS: Array<[RegExp, string]> = [
  [/vmware\.com\/.*vmdk/i, 'vmdk'],
  [/virtualserver|vhdspecs|LinkId=137171|vhd/i, 'vhd'],
  [/vhdx/i, 'vhdx'],
  [/qcow/i, 'qcow2'],
  [/virtualbox\.org\/.*vdi/i, 'vdi'],
  [/wikipedia\.org\/wiki\/Byte|\braw\b/i, 'raw'],
];

export function formatFromUri(uri: string): string | undefined {
  // vhdx before vhd: the vhd pattern also matches "vhdx"
  if (/vhdx/i.test(uri)) return 'vhdx';
  return FORMAT_URIS.find(([re]) => re.test(uri))?.[1];
}

export const STREAM_OPTIMIZED_URI = 'http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized';

export function uriForFormat(format: string): string | undefined {
  switch (format) {
    case 'vmdk':
      return STREAM_OPTIMIZED_URI;
    case 'vhd':
      return 'http://technet.microsoft.com/en-us/virtualserver/bb676673.aspx';
    case 'vhdx':
      return 'http://www.microsoft.com/en-us/download/details.aspx?id=34750#vhdx';
    case 'qcow2':
      return 'http://www.gnome.org/~markmc/qcow-image-format.html';
    case 'vdi':
      return 'http://www.virtualbox.org/manual/ch05.html#vdidetails';
    case 'raw':
      return 'http://en.wikipedia.org/wiki/Byte';
    default:
      return undefined;
  }
}

type ScsiModel = NonNullable<VmSpec['disks'][number]['controllerModel']>;

/** SCSI controller ResourceSubType (VMware's words; VirtualBox uses the same) → model. */
export function scsiModelFromSubtype(sub: string | undefined): ScsiModel | undefined {
  switch (sub?.toLowerCase()) {
    case 'lsilogic':
      return 'lsilogic';
    case 'lsilogicsas':
      return 'lsisas1068';
    case 'buslogic':
      return 'buslogic';
    case 'virtualscsi':
      return 'pvscsi';
    case 'virtio-scsi':
    case 'virtio':
      return 'virtio-scsi';
    default:
      return undefined;
  }
}

export function subtypeForScsiModel(model: ScsiModel | undefined): { subtype: string; exact: boolean } {
  switch (model) {
    case undefined:
    case 'lsilogic':
      return { subtype: 'lsilogic', exact: true };
    case 'lsisas1068':
      return { subtype: 'lsilogicsas', exact: true };
    case 'buslogic':
      return { subtype: 'buslogic', exact: true };
    case 'pvscsi':
      return { subtype: 'VirtualSCSI', exact: true };
    default:
      return { subtype: 'lsilogic', exact: false };
  }
}

type NicModel = NonNullable<VmSpec['nics'][number]['model']>;

/** Ethernet ResourceSubType → NIC model. VirtualBox writes its chip names for PCnet. */
export function nicModelFromSubtype(sub: string | undefined): NicModel | undefined {
  switch (sub?.toLowerCase()) {
    case 'e1000':
      return 'e1000';
    case 'e1000e':
      return 'e1000e';
    case 'vmxnet3':
      return 'vmxnet3';
    case 'vmxnet2':
    case 'vmxnet':
      return 'vmxnet2';
    case 'pcnet32':
    case 'am79c970a':
    case 'am79c973':
      return 'pcnet';
    case 'virtio':
    case 'virtio-net':
      return 'virtio';
    case 'rtl8139':
      return 'rtl8139';
    default:
      return undefined;
  }
}

export function subtypeForNicModel(model: NicModel | undefined): { subtype: string; exact: boolean } {
  switch (model) {
    case undefined:
    case 'e1000':
      return { subtype: 'E1000', exact: true };
    case 'e1000e':
      return { subtype: 'E1000e', exact: true };
    case 'vmxnet3':
      return { subtype: 'VmxNet3', exact: true };
    case 'vmxnet2':
      return { subtype: 'VmxNet2', exact: true };
    case 'pcnet':
      return { subtype: 'PCNet32', exact: true };
    default:
      // E1000 is the one adapter every OVF importer (ESXi, Workstation, VirtualBox, XenCenter) emulates
      return { subtype: 'E1000', exact: false };
  }
}

type OsFamily = VmSpec['os']['family'];

/**
 * CIM_OperatingSystem.OsType codes (OperatingSystemSection ovf:id) → family, with the code's
 * own name as a variant for codes that name a system.
 */
const CIM_OS: Record<number, [OsFamily, string]> = {
  0: ['unknown', 'Unknown'],
  1: ['other', 'Other'],
  2: ['other', 'MACOS'],
  14: ['other', 'MSDOS'],
  15: ['windows', 'WIN3x'],
  16: ['windows', 'WIN95'],
  17: ['windows', 'WIN98'],
  18: ['windows', 'WINNT'],
  29: ['solaris', 'Solaris'],
  30: ['solaris', 'SunOS'],
  36: ['linux', 'LINUX'],
  41: ['bsd', 'BSDUNIX'],
  42: ['bsd', 'FreeBSD'],
  43: ['bsd', 'NetBSD'],
  58: ['windows', 'Windows 2000'],
  63: ['windows', 'Windows (R) Me'],
  65: ['bsd', 'OpenBSD'],
  66: ['other', 'Not Applicable'],
  67: ['windows', 'Windows XP'],
  69: ['windows', 'Microsoft Windows Server 2003'],
  70: ['windows', 'Microsoft Windows Server 2003 64-Bit'],
  71: ['windows', 'Windows XP 64-Bit'],
  73: ['windows', 'Windows Vista'],
  74: ['windows', 'Windows Vista 64-Bit'],
  76: ['windows', 'Microsoft Windows Server 2008'],
  77: ['windows', 'Microsoft Windows Server 2008 64-Bit'],
  78: ['bsd', 'FreeBSD 64-Bit'],
  79: ['linux', 'RedHat Enterprise Linux'],
  80: ['linux', 'RedHat Enterprise Linux 64-Bit'],
  81: ['solaris', 'Solaris 64-Bit'],
  82: ['linux', 'SUSE'],
  83: ['linux', 'SUSE 64-Bit'],
  84: ['linux', 'SLES'],
  85: ['linux', 'SLES 64-Bit'],
  89: ['linux', 'Mandriva'],
  90: ['linux', 'Mandriva 64-Bit'],
  93: ['linux', 'Ubuntu'],
  94: ['linux', 'Ubuntu 64-Bit'],
  95: ['linux', 'Debian'],
  96: ['linux', 'Debian 64-Bit'],
  97: ['linux', 'Linux 2.4.x'],
  98: ['linux', 'Linux 2.4.x 64-Bit'],
  99: ['linux', 'Linux 2.6.x'],
  100: ['linux', 'Linux 2.6.x 64-Bit'],
  101: ['linux', 'Linux 64-Bit'],
  102: ['other', 'Other 64-Bit'],
  103: ['windows', 'Microsoft Windows Server 2008 R2'],
  104: ['other', 'VMware ESXi'],
  105: ['windows', 'Microsoft Windows 7'],
  106: ['linux', 'CentOS 32-bit'],
  107: ['linux', 'CentOS 64-bit'],
  108: ['linux', 'Oracle Enterprise Linux 32-bit'],
  109: ['linux', 'Oracle Enterprise Linux 64-bit'],
  111: ['windows', 'Microsoft Windows Server 2011'],
  112: ['windows', 'Microsoft Windows Server 2012'],
  113: ['windows', 'Microsoft Windows 8'],
  114: ['windows', 'Microsoft Windows 8 64-bit'],
  115: ['windows', 'Microsoft Windows Server 2012 R2'],
  116: ['windows', 'Microsoft Windows Server 2016'],
  117: ['windows', 'Microsoft Windows 8.1'],
  118: ['windows', 'Microsoft Windows 8.1 64-bit'],
  119: ['windows', 'Microsoft Windows 10'],
  120: ['windows', 'Microsoft Windows 10 64-bit'],
  121: ['windows', 'Microsoft Windows Server 2019'],
  122: ['windows', 'Microsoft Windows 11 64-bit'],
  123: ['windows', 'Microsoft Windows Server 2022'],
};

export function cimOs(code: number): [OsFamily, string] | undefined {
  return CIM_OS[code];
}

/** A family from a hypervisor's own OS name (vmw:osType, vbox:OSType, a description). */
export function familyFromName(name: string): OsFamily {
  const n = name.toLowerCase();
  if (/win|microsoft/.test(n)) return 'windows';
  if (/freebsd|netbsd|openbsd|bsd/.test(n)) return 'bsd';
  if (/solaris|sunos|illumos|opensolaris/.test(n)) return 'solaris';
  if (/linux|ubuntu|debian|rhel|redhat|centos|fedora|suse|sles|oracle|mandriva|turbo|gentoo|arch|alma|rocky|photon|coreos|asianux|amazon/.test(n)) return 'linux';
  return 'unknown';
}

/**
 * The OS section to write: a CIM code and a vmw:osType. The variant is kept when it is a
 * VMware guest id (the most widely read form); otherwise the family's generic 64-bit entry.
 */
export function osForSpec(os: VmSpec['os']): { code: number; vmwOsType: string; exact: boolean } {
  const v = os.variant ?? '';
  if (/Guest$/.test(v)) {
    const code = codeForVmwareGuest(v, os.family);
    return { code, vmwOsType: v, exact: true };
  }
  switch (os.family) {
    case 'linux':
      return { code: 101, vmwOsType: 'otherLinux64Guest', exact: !v };
    case 'windows':
      return { code: 120, vmwOsType: 'windows9_64Guest', exact: !v };
    case 'bsd':
      return { code: 78, vmwOsType: 'freebsd64Guest', exact: !v };
    case 'solaris':
      return { code: 81, vmwOsType: 'solaris11_64Guest', exact: !v };
    case 'other':
      return { code: 102, vmwOsType: 'other64Guest', exact: !v };
    default:
      return { code: 0, vmwOsType: 'other64Guest', exact: !v };
  }
}

const VMW_GUEST_CODES: Array<[RegExp, number]> = [
  [/^ubuntu64/, 94],
  [/^ubuntu/, 93],
  [/^debian\d*_64/, 96],
  [/^debian/, 95],
  [/^rhel\d*_64/, 80],
  [/^rhel/, 79],
  [/^centos\d*_?64/, 107],
  [/^centos/, 106],
  [/^oracleLinux\d*_?64/, 109],
  [/^sles\d*_?64/, 85],
  [/^sles/, 84],
  [/^freebsd\d*_?64/, 78],
  [/^freebsd/, 42],
  [/^solaris\d*_64/, 81],
  [/^windows2019srv/, 121],
  [/^windows2022srv/, 123],
  [/^windows11/, 122],
  [/^windows9Server/, 116],
  [/^windows9_64/, 120],
  [/^windows9/, 119],
  [/^windows8Server/, 112],
  [/^windows8_64/, 114],
  [/^windows8/, 113],
  [/^windows7Server/, 103],
  [/^windows7_64/, 105],
  [/^windows7/, 105],
  [/^winLonghorn64/, 77],
  [/^winLonghorn/, 76],
  [/^winNetStandard64|^winNetEnterprise64/, 70],
  [/^winNet/, 69],
  [/^winXPPro64/, 71],
  [/^winXP/, 67],
  [/^otherLinux64|^other\d+xLinux64|^other.*Linux64/, 101],
  [/^otherLinux|Linux/, 36],
  [/^other64/, 102],
];

function codeForVmwareGuest(id: string, family: OsFamily): number {
  const hit = VMW_GUEST_CODES.find(([re]) => re.test(id));
  if (hit) return hit[1];
  return family === 'windows' ? 1 : family === 'linux' ? 36 : 1;
}

/**
 * Reads a DSP0004 programmatic unit ("byte * 2^20", "byte*10^6", "bytes") or the spelled-out
 * units VirtualBox and older producers write ("MegaBytes", "MB") as a byte multiplier.
 * Returns undefined for anything else.
 */
export function unitMultiplier(units: string): number | undefined {
  const u = units.trim();
  const m = /^bytes?(?:\s*\*\s*(\d+)\s*\^\s*(-?\d+))?$/i.exec(u);
  if (m) {
    if (m[1] === undefined) return 1;
    const base = Number(m[1]);
    const exp = Number(m[2]);
    if ((base !== 2 && base !== 10) || exp < 0 || exp > 60) return undefined;
    return base ** exp;
  }
  const named: Record<string, number> = {
    kilobytes: 2 ** 10,
    kb: 2 ** 10,
    kib: 2 ** 10,
    megabytes: 2 ** 20,
    mb: 2 ** 20,
    mib: 2 ** 20,
    gigabytes: 2 ** 30,
    gb: 2 ** 30,
    gib: 2 ** 30,
    terabytes: 2 ** 40,
    tb: 2 ** 40,
  };
  return named[u.toLowerCase()];
}

/** quantity × units as bytes, or ERR_CORRUPT naming `where`. */
export function toBytes(quantity: string | undefined, units: string | undefined, defaultUnits: string, file: string, where: string): number {
  const mult = unitMultiplier(units ?? defaultUnits);
  if (mult === undefined) {
    throw new PolyvisorError('ERR_CORRUPT', `allocation units "${String(units).slice(0, 80)}" are not a byte unit (expected e.g. "byte * 2^20")`, { file, structure: where });
  }
  const q = (quantity ?? '').trim();
  if (!/^\d{1,20}$/.test(q)) {
    throw new PolyvisorError('ERR_CORRUPT', `quantity "${q.slice(0, 80)}" is not a whole number`, { file, structure: where });
  }
  const bytes = Number(q) * mult;
  if (!Number.isSafeInteger(bytes)) throw new PolyvisorError('ERR_CORRUPT', `${q} × ${units ?? defaultUnits} is too large`, { file, structure: where });
  return bytes;
}
