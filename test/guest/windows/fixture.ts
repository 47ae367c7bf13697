/**
 * Test fixture: a Windows Server 2019-like disk (raw, MBR, one NTFS partition at 1 MiB)
 * whose SYSTEM and SOFTWARE hives hivexregedit --merge builds from .reg text written here,
 * with bootmgr, Boot\BCD and a few drivers' .sys files. No Windows image can be had here:
 * the layout follows what Windows Server 2019 holds (Select, ControlSet001\Services\...,
 * Microsoft\Windows NT\CurrentVersion) for a VM that comes from VMware (PVSCSI boot disk,
 * VMware Tools installed; the in-box Hyper-V and IDE drivers present but demand-start).
 *
 * The NTFS volume is made by mkntfs in a file of its own. ntfs-3g's command-line tools
 * cannot make a directory (ntfscp only writes into folders that exist), so the tree is put
 * in through ntfs-3g's FUSE driver (needs /dev/fuse and root or fusermount) and unmounted;
 * the tests then read it back with ntfscat. Hive files are padded to a multiple of 256 KiB
 * after their bins, as Windows' own hive files are, which leaves room for edits in place.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, openSync, closeSync, readFileSync, writeFileSync, writeSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Hive } from '../../../src/guest/windows/regf.js';
import { REG, dword, multiSz, sz } from '../../../src/guest/windows/regf-values.js';
import { sh } from '../oracle.js';
import { mergeReg, type Tree, type TreeValue } from './hivex.js';

const MiB = 1 << 20;
export const PARTITION_START = MiB;

const D = (n: number): TreeValue => ({ type: REG.DWORD, data: dword(n) });
const S = (s: string): TreeValue => ({ type: REG.SZ, data: sz(s) });
const X = (s: string): TreeValue => ({ type: REG.EXPAND_SZ, data: sz(s) });

/** A service key: Type 1 (kernel driver) or 0x10 (own-process service). */
function service(start: number, image: string, type = 1, group?: string): Map<string, TreeValue> {
  const m = new Map<string, TreeValue>([
    ['Type', D(type)],
    ['Start', D(start)],
    ['ErrorControl', D(1)],
    ['ImagePath', X(image)],
  ]);
  if (group) m.set('Group', S(group));
  return m;
}

/** Services of the SYSTEM hive: name -> [Start, ImagePath, Type, Group]. */
export const SERVICES: Record<string, [number, string, number?, string?]> = {
  intelide: [3, 'System32\\drivers\\intelide.sys', 1, 'System Bus Extender'],
  atapi: [3, 'System32\\drivers\\atapi.sys', 1, 'SCSI miniport'],
  pciide: [3, 'System32\\drivers\\pciide.sys', 1, 'System Bus Extender'],
  storahci: [3, 'System32\\drivers\\storahci.sys', 1, 'SCSI miniport'],
  stornvme: [3, 'System32\\drivers\\stornvme.sys', 1, 'SCSI miniport'],
  LSI_SAS: [3, 'System32\\drivers\\lsi_sas.sys', 1, 'SCSI miniport'],
  pvscsi: [0, 'System32\\drivers\\pvscsi.sys', 1, 'SCSI miniport'],
  vmbus: [3, 'System32\\drivers\\vmbus.sys', 1, 'System Bus Extender'],
  storvsc: [3, 'System32\\drivers\\storvsc.sys', 1, 'SCSI miniport'],
  netvsc: [3, 'System32\\drivers\\netvsc.sys', 1, 'NDIS'],
  vmci: [0, 'System32\\drivers\\vmci.sys', 1, 'System Bus Extender'],
  vmhgfs: [2, 'System32\\drivers\\vmhgfs.sys', 2],
  VMTools: [2, '"C:\\Program Files\\VMware\\VMware Tools\\vmtoolsd.exe"', 0x10],
  // a leftover of a Xen past: the PV bus driver, disabled already
  xenbus: [4, 'System32\\drivers\\xenbus.sys', 1, 'Boot Bus Extender'],
};

/** .sys files present in System32\drivers (stornvme's and xenbus's are missing on purpose). */
export const DRIVER_FILES = ['intelide.sys', 'atapi.sys', 'pciide.sys', 'storahci.sys', 'lsi_sas.sys', 'pvscsi.sys', 'vmbus.sys', 'storvsc.sys', 'netvsc.sys', 'vmci.sys', 'vmhgfs.sys'];

export function systemTree(): Tree {
  const t: Tree = new Map();
  t.set('Select', new Map([['Current', D(1)], ['Default', D(1)], ['Failed', D(0)], ['LastKnownGood', D(1)]]));
  t.set('ControlSet001', new Map());
  t.set('ControlSet001\\Control', new Map([['SystemStartOptions', S(' NOEXECUTE=OPTOUT FVEBOOT=2621440')]]));
  t.set('ControlSet001\\Control\\Session Manager', new Map());
  t.set('ControlSet001\\Control\\Session Manager\\Environment', new Map([['PROCESSOR_ARCHITECTURE', S('AMD64')], ['NUMBER_OF_PROCESSORS', S('2')]]));
  t.set('ControlSet001\\Services', new Map());
  for (const [name, [start, image, type, group]] of Object.entries(SERVICES)) t.set(`ControlSet001\\Services\\${name}`, service(start, image, type, group));
  t.set('ControlSet001\\Services\\Tcpip', new Map([['Start', D(1)], ['DependOnService', { type: REG.MULTI_SZ, data: multiSz(['NDIS']) }]]));
  t.set('MountedDevices', new Map([['\\DosDevices\\C:', { type: REG.BINARY, data: Buffer.from('1234567800001000', 'hex') }]]));
  return t;
}

export function softwareTree(): Tree {
  const t: Tree = new Map();
  t.set('Microsoft', new Map());
  t.set('Microsoft\\Windows NT', new Map());
  t.set(
    'Microsoft\\Windows NT\\CurrentVersion',
    new Map([
      ['ProductName', S('Windows Server 2019 Standard')],
      ['EditionID', S('ServerStandard')],
      ['InstallationType', S('Server')],
      ['CurrentVersion', S('6.3')],
      ['CurrentBuild', S('17763')],
      ['CurrentBuildNumber', S('17763')],
      ['CurrentMajorVersionNumber', D(10)],
      ['CurrentMinorVersionNumber', D(0)],
      ['ReleaseId', S('1809')],
      ['SystemRoot', S('C:\\Windows')],
    ]),
  );
  t.set('VMware, Inc.', new Map());
  t.set('VMware, Inc.\\VMware Tools', new Map([['InstallPath', S('C:\\Program Files\\VMware\\VMware Tools\\')]]));
  return t;
}

/** A hive file built by hivexregedit --merge into an empty hive, padded to 256 KiB steps. */
export function buildHive(dir: string, name: string, tree: Tree): Buffer {
  const p = join(dir, name);
  writeFileSync(p, Hive.create(name).toBuffer());
  mergeReg(p, tree, dir);
  const b = readFileSync(p);
  const padded = Buffer.alloc(Math.ceil(b.length / (256 << 10)) * (256 << 10));
  b.copy(padded);
  writeFileSync(p, padded);
  return padded;
}

export interface WindowsFixture {
  disk: string;
  size: number;
  system: Buffer;
  software: Buffer;
}

/** Writes an MBR with one NTFS (type 0x07) partition, active, at 1 MiB. */
function writeMbr(path: string, diskSize: number): void {
  const mbr = Buffer.alloc(512);
  mbr.fill(0x90, 0, 16); // boot code need only be non-zero for the checks here
  mbr.writeUInt32LE(0x1a2b3c4d, 440);
  const e = 446;
  mbr[e] = 0x80;
  mbr[e + 4] = 0x07;
  mbr.writeUInt32LE(PARTITION_START / 512, e + 8);
  mbr.writeUInt32LE((diskSize - PARTITION_START) / 512, e + 12);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, mbr, 0, 512, 0);
  } finally {
    closeSync(fd);
  }
}

/** Builds the disk in `dir`; `extra` adds files (NTFS path -> bytes) to the tree. */
export async function buildWindowsDisk(dir: string, extra: Record<string, Buffer> = {}, size = 48 * MiB): Promise<WindowsFixture> {
  const system = buildHive(dir, 'SYSTEM', systemTree());
  const software = buildHive(dir, 'SOFTWARE', softwareTree());
  const part = join(dir, 'ntfs.img');
  execFileSync('truncate', ['-s', String(size - PARTITION_START), part]);
  sh('mkntfs', ['-F', '-f', '-q', '-s', '512', '-p', String(PARTITION_START / 512), '-H', '255', '-S', '63', '-L', 'Windows', part]);
  const files: Record<string, Buffer> = {
    'bootmgr': Buffer.alloc(0),
    'Boot/BCD': Buffer.alloc(0),
    'Windows/System32/config/SYSTEM': system,
    'Windows/System32/config/SOFTWARE': software,
    'Windows/System32/ntoskrnl.exe': Buffer.from('MZ not a kernel'),
    ...Object.fromEntries(DRIVER_FILES.map((f) => [`Windows/System32/drivers/${f}`, Buffer.from(`MZ ${f}`)])),
    ...extra,
  };
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt, { recursive: true });
  await populate(part, mnt, files);
  rmSync(mnt, { recursive: true, force: true });
  const disk = join(dir, 'windows.raw');
  execFileSync('truncate', ['-s', String(size), disk]);
  writeMbr(disk, size);
  execFileSync('dd', [`if=${part}`, `of=${disk}`, 'bs=1M', `seek=${PARTITION_START / MiB}`, 'conv=notrunc,sparse', 'status=none']);
  rmSync(part);
  return { disk, size, system, software };
}

/**
 * Mounts the volume with ntfs-3g in the foreground (no_detach), so that its exit, after the
 * unmount, says every byte is on the file.
 */
async function populate(part: string, mnt: string, files: Record<string, Buffer>): Promise<void> {
  const child = spawn('ntfs-3g', ['-o', 'no_detach', part, mnt], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  const mounted = () => readFileSync('/proc/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === mnt);
  for (let i = 0; i < 200 && !mounted(); i++) {
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  if (!mounted()) {
    child.kill();
    throw new Error(`ntfs-3g could not mount the fixture volume (it needs /dev/fuse and root or fusermount): ${stderr}`);
  }
  try {
    for (const [p, data] of Object.entries(files)) {
      mkdirSync(join(mnt, p, '..'), { recursive: true });
      writeFileSync(join(mnt, p), data);
    }
  } finally {
    try {
      sh('fusermount', ['-u', mnt]);
    } catch {
      sh('umount', [mnt]);
    }
    await exited;
  }
}

/** A file of the NTFS partition of `disk`, read by ntfscat (the oracle). */
export function ntfscat(dir: string, disk: string, path: string): Buffer {
  const part = join(dir, `part-${Math.random().toString(36).slice(2)}.img`);
  execFileSync('dd', [`if=${disk}`, `of=${part}`, 'bs=1M', `skip=${PARTITION_START / MiB}`, 'status=none']);
  try {
    return execFileSync('ntfscat', [part, path], { maxBuffer: 1 << 28, stdio: ['ignore', 'pipe', 'pipe'] });
  } finally {
    rmSync(part);
  }
}
