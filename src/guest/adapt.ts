/**
 * Guest adaptation: make a Linux guest boot on another hypervisor, offline.
 *
 * virt-v2v starts a helper appliance VM and runs the guest's own update-initramfs and
 * grub2-mkconfig inside it. Polyvisor opens the guest's disks through its own disk engine and
 * file-system writers, runs nothing from the guest, and records every byte it changes so the
 * adaptation can be undone (manifest.ts). The steps, each a file of its own:
 *
 *   agents     other hypervisors' agents masked            edit-agents.ts
 *   consoles   a login on the target's serial console      edit-agents.ts
 *   network    interface names bound to the NIC's MAC      edit-network.ts
 *   devices    fstab, crypttab, resume by UUID             edit-fstab.ts
 *   cmdline    root= by UUID, console= for both sides      edit-grub.ts
 *   initramfs  the target's drivers appended               edit-initramfs.ts
 *   boot       GRUB in the MBR for a BIOS, what pygrub needs for Xen PV, the EFI
 *              fallback path for UEFI                      bootloader.ts, here
 *
 * Without `inPlace` the source disks are never written: a qcow2 overlay is created over each
 * (Polyvisor's own qcow2 writer, the source as its backing file) and adaptation writes there.
 * The overlay appears under its final name only once adaptation succeeded; with `inPlace`, a
 * failure puts back every sector written (journal.ts).
 */
import { rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { createImage, detectFormat, openImage } from '../disk/chain.js';
import { PolyvisorError, isPolyvisorError } from '../errors.js';
import { findVolume, openGuest, readTextFile, type Guest } from './open.js';
import { installGrubBios, hasGrubConfig } from './bootloader.js';
import { maskAgents, enableConsoles } from './edit-agents.js';
import { POSITIONAL_DEVICE, rewriteCrypttab, rewriteFstab, rewriteResume, type StableName } from './edit-fstab.js';
import { rewriteDefaultGrub, rewriteGrubConfig, type CmdlineEdit } from './edit-grub.js';
import { adaptInitramfs, findKernels } from './edit-initramfs.js';
import { adaptNetwork, type NicInfo } from './edit-network.js';
import { JournalImage } from './journal.js';
import { GuestEditor, writeManifest, type Change } from './manifest.js';
import { parseKernelConfig } from './modules.js';
import { findTarget, type Target, type TargetName } from './targets.js';

export interface AdaptOptions {
  /** a target name (targets.ts) or an alias such as "hyperv" */
  target: string;
  /** write into the source disks themselves (default: into a qcow2 overlay over each) */
  inPlace?: boolean;
  /**
   * Where the overlay goes: a file for one disk, a folder for several (default: beside each
   * source, "<name>.<target>.qcow2").
   */
  out?: string;
  /** default: "<first output>.manifest.json" (made unique when one exists) */
  manifestPath?: string;
  /** the VM's NICs, in order: their MACs bind the guest's interface names */
  nics?: NicInfo[];
  allowOutsidePaths?: boolean;
  /** a virtio-win folder to take Windows' virtio storage drivers from (kvm) */
  virtioWin?: string;
  /** stops between steps; what was written is then taken back as on any failure */
  signal?: AbortSignal;
}

export interface AdaptResult {
  target: TargetName;
  manifest: string;
  /** the images written: overlays, or the sources with inPlace */
  outputs: string[];
  changes: Change[];
  /** what stands between the guest and a boot on the target */
  problems: string[];
  /** what is worth knowing but does not stop the boot */
  notes: string[];
  seconds: number;
}

const MAX_CONFIG = 1 << 20;
/** blkid types whose UUID fstab, crypttab and root= may name */
const UUID_TYPES = new Set(['ext2', 'ext3', 'ext4', 'xfs', 'btrfs', 'vfat', 'swap', 'crypto_LUKS', 'ntfs']);

/** Positional names to UUID= (or PARTUUID=) for the volumes of this guest. */
function stableNames(guest: Guest): StableName {
  return (dev) => {
    const v = findVolume(guest.volumes, dev);
    if (!v) return null;
    if (v.probe.uuid && UUID_TYPES.has(v.probe.type)) return `UUID=${v.probe.uuid}`;
    if (v.partition) return `PARTUUID=${v.partition.uuid}`;
    return null;
  };
}

async function optionalText(editor: GuestEditor, path: string): Promise<string | null> {
  try {
    return await readTextFile(editor.guest, path, MAX_CONFIG);
  } catch (e) {
    if (isPolyvisorError(e, 'ERR_NOT_FOUND')) return null;
    throw e;
  }
}

/** Edits a text file with `fn` and writes it back when it changed. */
async function editText(editor: GuestEditor, path: string, fn: (t: string) => { text: string; changes: { from: string; to: string }[] }, why: string): Promise<void> {
  const t = await optionalText(editor, path);
  if (t === null) return;
  const r = fn(t);
  if (r.changes.length === 0 || r.text === t) return;
  const summary = r.changes.map((c) => (c.from ? `${c.from} -> ${c.to}` : `+ ${c.to}`)).join('; ');
  await editor.writeFile(path, Buffer.from(r.text, 'utf8'), `${why}: ${summary.length > 300 ? summary.slice(0, 300) + '...' : summary}`);
}

/** The consoles the kernel command line names: the target's, after any the guest has. */
function cmdlineEdit(target: Target, stable: StableName): CmdlineEdit {
  return { stable, consoles: target.consoles };
}

/**
 * A grub.cfg for a guest that has none (a Xen PV guest started with xl's kernel=): one entry
 * per installed kernel, newest first, paths relative to the file system holding /boot.
 */
async function writeGrubConfig(editor: GuestEditor, target: Target, stable: StableName): Promise<boolean> {
  const kernels = await findKernels(editor);
  if (kernels.length === 0) return false;
  const bootFs = await editor.guest.fs('/boot');
  const prefix = bootFs.mountPoint === '/boot' ? '' : '/boot';
  const rootEntry = editor.guest.fstab.find((e) => e.file === '/');
  const root = editor.guest.root;
  const rootSpec = rootEntry ? (stable(rootEntry.spec) ?? rootEntry.spec) : root?.probe.uuid ? `UUID=${root.probe.uuid}` : null;
  if (!rootSpec) return false;
  const args = [`root=${rootSpec}`, 'ro', ...target.consoles.map((c) => `console=${c}`)].join(' ');
  const entries = [...kernels].reverse().map((k) => [
    `menuentry 'Linux ${k.version}' {`,
    `  linux ${prefix}/vmlinuz-${k.version} ${args}`,
    `  initrd ${prefix}${k.initrd.slice('/boot'.length)}`,
    '}',
  ].join('\n'));
  const cfg = ['# written by Polyvisor: the guest had no boot loader configuration', 'set default=0', 'set timeout=1', '', ...entries, ''].join('\n');
  await editor.writeFile('/boot/grub/grub.cfg', Buffer.from(cfg), 'boot: a grub.cfg for the installed kernels (the guest had none)');
  return true;
}

/** The kernel the boot loader configuration starts by default ("set default=N", else the first entry). */
function defaultKernel(cfg: string): string | null {
  const def = /^\s*set\s+default=["']?(\d+)["']?\s*$/m.exec(cfg);
  const n = def ? Number(def[1]) : 0;
  const kernels = [...cfg.matchAll(/^\s*(?:linux|linux16|linuxefi|kernel)\s+(\S+)/gm)].map((m) => m[1]!);
  return kernels[n] ?? kernels[0] ?? null;
}

/** Xen PV: pygrub boots the default entry of the guest's grub.cfg, whose kernel must run as a PV guest. */
async function checkPygrub(editor: GuestEditor, cfgPath: string, problems: string[]): Promise<void> {
  const cfg = (await optionalText(editor, cfgPath)) ?? '';
  const kernel = defaultKernel(cfg);
  if (!kernel) {
    problems.push(`${cfgPath} has no kernel entry for pygrub to boot`);
    return;
  }
  const version = /vmlinu[xz]-(.+)$/.exec(kernel)?.[1];
  const config = version ? await optionalText(editor, `/boot/config-${version}`) : null;
  if (!config) return;
  const c = parseKernelConfig(config);
  if (c.get('XEN_PV') !== 'y' && c.get('XEN') !== 'y') problems.push(`the default kernel ${kernel} is not built for Xen PV (CONFIG_XEN_PV is not set in /boot/config-${version})`);
}

/** UEFI: an EFI system partition with the fallback loader \EFI\BOOT\BOOTX64.EFI, copied from the distribution's own when missing. */
async function ensureUefi(editor: GuestEditor, target: Target, problems: string[], notes: string[]): Promise<void> {
  const guest = editor.guest;
  const esp = guest.volumes.find((v) => v.partition?.typeName === 'efi');
  if (!esp) {
    problems.push(`the guest has no EFI system partition: ${target.title} boots by UEFI only, so it has no boot path (use a BIOS target such as hyperv-gen1, or give the guest an ESP)`);
    return;
  }
  if (!esp.fs || !esp.mountPoint) {
    problems.push(`the EFI system partition (${esp.name}) is ${esp.fs ? 'not mounted by the guest\'s fstab' : `not readable (${esp.fsError ?? esp.probe.type})`}: its boot path was not checked`);
    return;
  }
  const root = esp.mountPoint;
  const fallback = `${root}/EFI/BOOT/BOOTX64.EFI`;
  if (await guest.exists(fallback)) return;
  // the firmware's boot entries (NVRAM) stay behind with the old VM: the fallback path is what a new VM boots
  let dirs: string[] = [];
  try {
    dirs = (await guest.readdir(`${root}/EFI`)).filter((e) => e.type === 'directory' && e.name.toUpperCase() !== 'BOOT').map((e) => e.name);
  } catch (e) {
    if (!isPolyvisorError(e, 'ERR_NOT_FOUND')) throw e;
  }
  for (const d of dirs) {
    for (const loader of ['shimx64.efi', 'grubx64.efi']) {
      const src = `${root}/EFI/${d}/${loader}`;
      if (!(await guest.exists(src))) continue;
      await editor.writeFile(fallback, await guest.readFile(src), `boot: the UEFI fallback loader, from EFI/${d}/${loader} (firmware boot entries do not travel with the disk)`);
      if (loader === 'shimx64.efi' && (await guest.exists(`${root}/EFI/${d}/grubx64.efi`))) {
        // shim starts grubx64.efi from its own folder
        await editor.writeFile(`${root}/EFI/BOOT/grubx64.efi`, await guest.readFile(`${root}/EFI/${d}/grubx64.efi`), 'boot: grubx64.efi beside the fallback shim');
      }
      notes.push(`EFI/BOOT/BOOTX64.EFI was missing: copied from EFI/${d}/${loader}`);
      return;
    }
  }
  problems.push(`the EFI system partition has no boot loader (no EFI/BOOT/BOOTX64.EFI, no shimx64.efi or grubx64.efi in ${dirs.length ? dirs.map((d) => `EFI/${d}`).join(', ') : 'EFI/'})`);
}

/** Runs every step on an opened guest; returns the problems and notes. */
async function adaptSteps(editor: GuestEditor, target: Target, nics: NicInfo[], signal?: AbortSignal): Promise<{ problems: string[]; notes: string[] }> {
  const guest = editor.guest;
  const step = () => {
    if (signal?.aborted) throw new PolyvisorError('ERR_ABORTED', 'adaptation cancelled: every change made so far is taken back', { file: guest.source });
  };
  const problems: string[] = [];
  const notes: string[] = [];
  const stable = stableNames(guest);

  const masked = await maskAgents(editor, target);
  if (masked.length) notes.push(`masked: ${masked.join(', ')}`);
  step();
  const consoles = await enableConsoles(editor, target);
  notes.push(...consoles.notes);
  step();
  const net = await adaptNetwork(editor, target, nics);
  notes.push(...net.notes);

  step();
  await editText(editor, '/etc/fstab', (t) => rewriteFstab(t, stable), 'fstab: devices by UUID');
  await editText(editor, '/etc/crypttab', (t) => rewriteCrypttab(t, stable), 'crypttab: devices by UUID');
  await editText(editor, '/etc/initramfs-tools/conf.d/resume', (t) => rewriteResume(t, stable), 'resume: device by UUID');
  for (const e of guest.fstab) {
    if (/^\/dev\/disk\/by-(id|path)\//.test(e.spec)) notes.push(`/etc/fstab line ${e.line} names ${e.spec}, which depends on the hypervisor's controller: check it on ${target.title}`);
    else if (POSITIONAL_DEVICE.test(e.spec) && !stable(e.spec)) notes.push(`/etc/fstab line ${e.line} names ${e.spec}, no volume of this VM's disks: left as it is (on ${target.title} disks are ${target.diskPrefix}a, ${target.diskPrefix}b...)`);
  }

  step();
  const edit = cmdlineEdit(target, stable);
  let cfg = await hasGrubConfig(editor);
  if (!cfg && (target.boot === 'bios' || target.boot === 'pygrub')) {
    if (await writeGrubConfig(editor, target, stable)) cfg = '/boot/grub/grub.cfg';
  }
  for (const p of ['/boot/grub/grub.cfg', '/boot/grub2/grub.cfg', '/boot/grub/menu.lst', '/boot/grub/grub.conf']) {
    await editText(editor, p, (t) => rewriteGrubConfig(t, edit), 'kernel command line');
  }
  await editText(editor, '/etc/default/grub', (t) => rewriteDefaultGrub(t, edit), 'kernel command line for update-grub');

  step();
  const ir = await adaptInitramfs(editor, { target, stable, links: net.links });
  problems.push(...ir.problems);
  notes.push(...ir.notes);

  step();
  if (target.boot === 'bios') {
    const r = await installGrubBios(editor);
    if (r.problem) problems.push(`boot: ${r.problem}`);
    if (r.note) notes.push(`boot: ${r.note}`);
  } else if (target.boot === 'pygrub') {
    if (!cfg) problems.push('boot: no grub.cfg or menu.lst for pygrub, and no kernel to write one for');
    else await checkPygrub(editor, cfg, problems);
  } else {
    await ensureUefi(editor, target, problems, notes);
  }
  step();
  return { problems, notes };
}

interface Output {
  image: JournalImage;
  source: string;
  /** overlay: created at tmp, renamed to final on success */
  tmp?: string;
  final: string;
}

function overlayName(source: string, target: TargetName, dir?: string): string {
  const base = basename(source, extname(source));
  return join(dir ?? dirname(resolve(source)), `${base}.${target}.qcow2`);
}

const exists = (path: string): Promise<boolean> => stat(path).then(() => true, () => false);

/** "<out>.manifest.json", or "<out>.manifest-2.json"... when taken. */
async function freeManifestPath(first: string): Promise<string> {
  const base = first.replace(/\.qcow2$/i, '');
  for (let n = 1; n < 1000; n++) {
    const p = `${base}${n === 1 ? '' : `-${n}`}.manifest.json`;
    if (!(await exists(p))) return p;
  }
  throw new PolyvisorError('ERR_EXISTS', `no free manifest name beside ${first}`);
}

async function openOutputs(disks: string[], target: TargetName, opts: AdaptOptions): Promise<Output[]> {
  const outputs: Output[] = [];
  try {
    for (const src of disks) {
      if (opts.inPlace) {
        const image = await openImage(src, { writable: true, allowOutsidePaths: opts.allowOutsidePaths });
        outputs.push({ image: new JournalImage(image), source: src, final: resolve(src) });
        continue;
      }
      let final: string;
      if (opts.out && disks.length === 1 && !(await stat(opts.out).then((s) => s.isDirectory()).catch(() => false))) final = resolve(opts.out);
      else final = overlayName(src, target, opts.out ? resolve(opts.out) : undefined);
      if (await exists(final)) throw new PolyvisorError('ERR_EXISTS', 'the adapted overlay exists already: remove it or give --out', { file: final });
      const format = (await detectFormat(src)).name;
      const tmp = join(dirname(final), `.${basename(final)}.${process.pid}.tmp`);
      // the backing name as the overlay records it: relative when the source is beside it
      const backingFile = dirname(resolve(src)) === dirname(final) ? basename(src) : resolve(src);
      const image = await createImage(tmp, 'qcow2', undefined, { backingFile, backingFormat: format, finalPath: final, allowOutsidePaths: opts.allowOutsidePaths });
      outputs.push({ image: new JournalImage(image), source: src, tmp, final });
    }
    return outputs;
  } catch (e) {
    await closeOutputs(outputs, false);
    throw e;
  }
}

async function closeOutputs(outputs: Output[], ok: boolean): Promise<void> {
  for (const o of outputs) {
    if (!ok && !o.tmp) await o.image.rollBack().catch(() => undefined);
    await o.image.close().catch(() => undefined);
    if (!ok && o.tmp) await rm(o.tmp, { force: true });
  }
}

/**
 * Adapts the guest on `guestDisks` (image paths, the VM's first disk first, as the guest
 * numbers them) for `options.target`; returns every change made, recorded in the manifest.
 */
export async function adaptGuest(guestDisks: string | readonly string[], options: AdaptOptions): Promise<AdaptResult> {
  const t0 = Date.now();
  const target = findTarget(options.target);
  const disks = typeof guestDisks === 'string' ? [guestDisks] : [...guestDisks];
  if (disks.length === 0) throw new PolyvisorError('ERR_USAGE', 'no disk to adapt');
  if (options.manifestPath && (await exists(options.manifestPath))) throw new PolyvisorError('ERR_EXISTS', 'the manifest exists already: it records an earlier adaptation', { file: options.manifestPath });
  const outputs = await openOutputs(disks, target.name, options);
  let ok = false;
  try {
    const guest = await openGuest(outputs.map((o) => o.image), { writable: true });
    let steps: { problems: string[]; notes: string[] };
    const editor = new GuestEditor(guest);
    try {
      if (!guest.root && guest.volumes.some((v) => v.probe.type === 'ntfs')) {
        // a Windows guest: its registry, not its files, decides what starts at boot
        const { adaptWindowsSteps } = await import('./windows/adapt.js');
        steps = await adaptWindowsSteps(editor, target.name, { target: options.target, virtioWin: options.virtioWin });
      } else {
        if (!guest.root) throw new PolyvisorError('ERR_NOT_FOUND', `no Linux root file system found on the guest's disks${guest.warnings.length ? ` (${guest.warnings.join('; ')})` : ''}`, { file: disks[0] });
        const rootFs = guest.root.fs as { readOnlyReason?: string | null } | undefined;
        if (rootFs?.readOnlyReason) throw new PolyvisorError('ERR_UNSUPPORTED', `the root file system cannot be written: ${rootFs.readOnlyReason}`, { file: disks[0] });
        steps = await adaptSteps(editor, target, options.nics ?? [], options.signal);
      }
    } finally {
      await guest.close();
    }
    for (const o of outputs) await o.image.flush();
    const manifestPath = resolve(options.manifestPath ?? (await freeManifestPath(outputs[0]!.final)));
    await writeManifest({
      path: manifestPath,
      target: target.name,
      inPlace: !!options.inPlace,
      sources: disks,
      // by their final names: an overlay is renamed into place once the manifest is written
      disks: outputs.map((o) => ({ image: o.image, source: o.tmp ? o.source : undefined, path: o.final })),
      editor,
      problems: steps.problems,
    });
    for (const o of outputs) await o.image.close();
    for (const o of outputs) if (o.tmp) await rename(o.tmp, o.final);
    ok = true;
    return {
      target: target.name,
      manifest: manifestPath,
      outputs: outputs.map((o) => o.final),
      changes: editor.changes,
      problems: steps.problems,
      notes: [...guest.warnings, ...steps.notes],
      seconds: (Date.now() - t0) / 1000,
    };
  } finally {
    if (!ok) await closeOutputs(outputs, false);
  }
}

/**
 * What `guest adapt SOURCE` adapts: a disk image itself, or the disk files and NIC MACs of a
 * VM descriptor (xl.cfg, .vmx, libvirt XML...). Packages (OVA, XVA) hold their disks inside an
 * archive, which an overlay cannot sit on: convert them first (`vm convert`), then adapt the
 * converted disks.
 */
export async function resolveAdaptSource(source: string, opts: { allowOutsidePaths?: boolean } = {}): Promise<{ disks: string[]; nics: NicInfo[]; vm?: string }> {
  const { openVmSource } = await import('../vm/source.js');
  let vm;
  try {
    vm = await openVmSource(source, { allowOutsidePaths: opts.allowOutsidePaths });
  } catch (e) {
    if (!isPolyvisorError(e, 'ERR_FORMAT_UNKNOWN')) throw e;
    return { disks: [source], nics: [] };
  }
  try {
    const disks: string[] = [];
    for (const d of vm.disks) {
      if (vm.spec.disks[d.index]?.device !== 'disk') continue;
      const img = await d.open();
      const path = img.path;
      await img.close();
      if (!(await exists(path))) {
        throw new PolyvisorError('ERR_UNSUPPORTED', `${d.label} lies inside a ${vm.kind} package: convert the VM first (polyvisor vm convert), then adapt the converted disks`, { file: source });
      }
      disks.push(path);
    }
    const nics = vm.spec.nics.filter((n) => n.mac).map((n) => ({ mac: n.mac! }));
    return { disks, nics, vm: vm.path };
  } finally {
    await vm.close();
  }
}
