/**
 * Windows guests, adapted offline: the disk drivers the target's boot disk needs set to start
 * at boot, and other hypervisors' tools disabled, by editing the SYSTEM hive's current control
 * set (inspect.ts explains Start values and why the boot disk's driver must be 0).
 *
 * Per target (virt-v2v's convert_windows.ml and Microsoft's storage driver documentation):
 * - hyperv-gen1/gen2: vmbus, storvsc and netvsc (the in-box VMBus stack) Start=0;
 * - xen-hvm: the emulated disks' drivers intelide, atapi, pciide, storahci Start=0;
 * - vmware: pvscsi and LSI_SAS Start=0 where installed;
 * - kvm: viostor and vioscsi Start=0 where virtio-win is installed, and storahci Start=0 so
 *   that the guest boots at least on a SATA disk. Injecting viostor.sys from a virtio-win
 *   folder needs a new file on NTFS, which Polyvisor cannot create yet: refused, saying so;
 * - xen-pv: Windows cannot run there; nothing is changed.
 * Leaving VMware or Xen, their tools' services are disabled (Start=4), never deleted.
 *
 * The hive is edited in memory with its size kept (regf.ts, growable: false) and only the
 * 4 KiB blocks that differ are written back over the hive file's own clusters (ntfs.ts,
 * dataExtents), each recorded as a raw change in the manifest (manifest.ts), below the
 * journal that lets `guest undo` restore every byte. Editing only what differs makes a second
 * adaptation change nothing. A dirty hive (its last write incomplete, logs not replayed) is
 * refused: writing over it would lose what the logs hold.
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { PolyvisorError } from '../../errors.js';
import type { GuestEditor } from '../manifest.js';
import { findTarget, type TargetName } from '../targets.js';
import { SYSTEM_HIVE, TOOLS, currentControlSet, findWindows, readHive, startName, windowsFacts, type WindowsSystem } from './inspect.js';
import type { Hive } from './regf.js';
import { REG, dword } from './regf-values.js';

const BLOCK = 4096;

/** What adaptGuest (../adapt.ts) passes on for a Windows guest. */
export interface WindowsAdaptOptions {
  target: string;
  /** a virtio-win folder (or ISO) to take viostor from, for kvm */
  virtioWin?: string;
}

/** virtio-win's folder names by Windows version: [major.minor, build from, server?, folder]. */
const VIRTIO_OS: [string, number, boolean, string][] = [
  ['10.0', 22000, false, 'w11'],
  ['10.0', 20348, true, '2k22'],
  ['10.0', 17763, true, '2k19'],
  ['10.0', 14393, true, '2k16'],
  ['10.0', 0, false, 'w10'],
  ['6.3', 0, true, '2k12R2'],
  ['6.3', 0, false, 'w8.1'],
  ['6.2', 0, true, '2k12'],
  ['6.2', 0, false, 'w8'],
  ['6.1', 0, true, '2k8R2'],
  ['6.1', 0, false, 'w7'],
];

/** The virtio-win folder for a Windows version and architecture ("2k19/amd64"), or null. */
export function virtioFolder(version: string | undefined, build: string | undefined, server: boolean, arch: string | undefined): string | null {
  const a = arch === 'AMD64' ? 'amd64' : arch === 'x86' ? 'x86' : arch === 'ARM64' ? 'ARM64' : null;
  if (!version || !a) return null;
  const b = Number(build ?? 0);
  const hit = VIRTIO_OS.find(([v, from, srv]) => v === version && b >= from && (srv === server || (!server && from === 0 && v === '10.0')));
  return hit ? `${hit[3]}/${a}` : null;
}

interface Edit {
  service: string;
  from: number | undefined;
  to: number;
}

function setStart(hive: Hive, cs: string, name: string, to: number, edits: Edit[]): void {
  const key = hive.key(`${cs}\\Services\\${name}`);
  if (!key) return;
  const from = key.get('Start');
  const cur = typeof from === 'number' ? from : undefined;
  if (hive.setValue(key.path, 'Start', REG.DWORD, dword(to))) edits.push({ service: key.name, from: cur, to });
}

/** The registry edits for `target` (in memory); returns problems and notes. */
async function planEdits(win: WindowsSystem, hive: Hive, target: TargetName, opts: WindowsAdaptOptions, edits: Edit[]): Promise<{ problems: string[]; notes: string[] }> {
  const t = findTarget(target);
  const problems: string[] = [];
  const notes: string[] = [];
  const cs = currentControlSet(hive);
  const has = (s: string) => !!hive.key(`${cs}\\Services\\${s}`);
  const boot = (names: string[]) => names.forEach((n) => setStart(hive, cs, n, 0, edits));
  switch (target) {
    case 'hyperv-gen1':
    case 'hyperv-gen2':
      if (!has('vmbus') || !has('storvsc')) problems.push('the guest lacks the in-box Hyper-V drivers (vmbus, storvsc): Windows before Vista/2008 needs the Integration Services installed');
      boot(['vmbus', 'storvsc', 'netvsc']);
      break;
    case 'xen-hvm':
      boot(['intelide', 'atapi', 'pciide', 'storahci']);
      break;
    case 'vmware':
      if (!has('pvscsi') && !has('LSI_SAS')) notes.push('neither pvscsi nor LSI_SAS is installed: give the VM a SATA disk, or install VMware Tools');
      boot(['pvscsi', 'LSI_SAS']);
      break;
    case 'kvm': {
      const present: string[] = [];
      for (const s of ['viostor', 'vioscsi']) if (has(s) && (await win.fs.exists(`/Windows/System32/drivers/${s}.sys`))) present.push(s);
      boot(present);
      // SATA is the controller every KVM machine type offers: the guest boots there without virtio-win
      boot(['storahci']);
      if (!present.length) {
        if (opts.virtioWin) await refuseVirtioInjection(win, opts.virtioWin);
        problems.push('the guest has no virtio-win storage driver (viostor or vioscsi): on KVM give it a SATA disk (storahci now starts at boot), or adapt with --virtio-win PATH, or install virtio-win in the guest first');
      }
      break;
    }
    case 'xen-pv':
      problems.push('Windows cannot run as a Xen PV guest: adapt for xen-hvm instead');
      break;
  }
  // other hypervisors' tools: disabled, never deleted
  for (const tool of TOOLS) {
    if (tool.hypervisor === t.hypervisor || (tool.hypervisor !== 'vmware' && tool.hypervisor !== 'xen')) continue;
    for (const s of tool.services) {
      const k = hive.key(`${cs}\\Services\\${s}`);
      const start = k?.get('Start');
      if (k && start !== 4) setStart(hive, cs, s, 4, edits);
    }
  }
  return { problems, notes };
}

/** Checks the virtio-win source, then refuses: the driver file would be a new file on NTFS. */
async function refuseVirtioInjection(win: WindowsSystem, source: string): Promise<never> {
  const st = await stat(source).catch(() => null);
  if (!st) throw new PolyvisorError('ERR_NOT_FOUND', '--virtio-win: no such folder or ISO', { file: source });
  if (!st.isDirectory()) throw new PolyvisorError('ERR_UNSUPPORTED', '--virtio-win names a file: Polyvisor does not read ISO 9660 images; extract the ISO and give its folder', { file: source });
  const f = await windowsFacts(win);
  const folder = virtioFolder(f.os.version, f.os.build, f.os.installationType === 'Server', f.os.arch);
  const path = folder ? join(source, 'viostor', folder, 'viostor.sys') : null;
  const found = path ? await stat(path).then(() => true, () => false) : false;
  throw new PolyvisorError(
    'ERR_UNSUPPORTED',
    `${found ? `found ${path}, but ` : folder ? `no viostor/${folder}/viostor.sys in the virtio-win folder, and ` : `no virtio-win folder matches Windows ${f.os.version ?? '?'} ${f.os.arch ?? '?'}, and `}Polyvisor cannot create a new file on NTFS (only overwrite existing ones), so viostor.sys cannot be copied into System32\\drivers: install virtio-win inside the guest before moving it, or adapt without --virtio-win and give the VM a SATA disk`,
    { file: source },
  );
}

/** Writes the blocks of `next` that differ from the hive file's bytes over the file's own clusters, through the editor. */
async function writeHive(editor: GuestEditor, win: WindowsSystem, path: string, old: Buffer, next: Buffer, why: string): Promise<number> {
  if (win.volume.lv || win.volume.disk === undefined) throw new PolyvisorError('ERR_UNSUPPORTED', `${win.volume.name}: Windows on a logical volume is not adapted`);
  const base = win.volume.partition?.start ?? 0;
  const { size, extents } = await win.fs.dataExtents(path);
  if (size !== next.length || old.length !== next.length) throw new PolyvisorError('ERR_INTERNAL', `${path}: the edited hive changed size`);
  let written = 0;
  let fileAt = 0;
  for (const e of extents) {
    for (let o = 0; o < e.length; o += BLOCK) {
      const a = fileAt + o;
      const n = Math.min(BLOCK, e.length - o);
      if (old.subarray(a, a + n).equals(next.subarray(a, a + n))) continue;
      if (await editor.writeRaw(win.volume.disk, base + e.offset + o, Buffer.from(next.subarray(a, a + n)), why)) written += n;
    }
    fileAt += e.length;
  }
  return written;
}

/**
 * The adaptation steps for a Windows guest opened through `editor` (its disks writable, under
 * a journal): the entry point adaptGuest (src/guest/adapt.ts) calls when the guest is Windows.
 */
export async function adaptWindowsSteps(editor: GuestEditor, target: TargetName, opts: WindowsAdaptOptions): Promise<{ problems: string[]; notes: string[] }> {
  const win = await findWindows(editor.guest, true);
  if (!win) throw new PolyvisorError('ERR_NOT_FOUND', 'no Windows system (\\Windows\\System32\\config\\SYSTEM on an NTFS volume) on the guest\'s disks', { file: editor.guest.source });
  const old = await win.fs.readFile(SYSTEM_HIVE);
  const hive = await readHive(win.fs, SYSTEM_HIVE, { growable: false });
  if (hive.notes.some((n) => n.includes('dirty'))) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `the SYSTEM hive is dirty (${hive.notes.join('; ')}): start Windows once and shut it down cleanly, then adapt`, { file: hive.name });
  }
  const edits: Edit[] = [];
  const r = await planEdits(win, hive, target, opts, edits);
  if (edits.length) {
    const next = hive.toBuffer();
    const summary = edits.map((e) => `${e.service} Start ${e.from ?? 'absent'} (${startName(e.from)}) -> ${e.to} (${startName(e.to)})`).join('; ');
    await writeHive(editor, win, SYSTEM_HIVE, old, next, `SYSTEM hive ${hive.key('Select') ? currentControlSet(hive) : ''}: ${summary}`);
    r.notes.push(`SYSTEM hive: ${summary}`);
  }
  return r;
}
