/**
 * `vm convert`: a VM from any source into the files a target hypervisor imports.
 *
 * For a descriptor target (xl, libvirt, vmx, ovf, hyperv) each disk is converted by the disk
 * engine into the target's disk format beside the descriptor, then the descriptor is written
 * naming them; for a package target (ova, xva) the package writer does both. With
 * `descriptorOnly`, disks are left where they are and the descriptor names them there.
 * Every file appears atomically; what the target cannot express comes back as notes.
 *
 * A Linux guest from another hypervisor is adapted for the target on the way (./adapt.ts,
 * unless `adapt: false`): in the converted disks themselves once they are written and before
 * the descriptor that names them, or, where the written disk cannot be edited (an OVA or XVA
 * packs it, a streamOptimized VMDK is append-only), in staging overlays the disks are then
 * written from. The manifest goes beside the output, NAME.adapt.manifest.json.
 */
import { createReadStream } from 'node:fs';
import { mkdir, open, rename, rm, stat, unlink } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { PolyvisorError, fromSystemError, isPolyvisorError } from '../errors.js';
import { createImage, openImage, resolveReferenced } from '../disk/chain.js';
import { convert } from '../disk/convert.js';
import { findFormat } from '../disk/registry.js';
import type { BlockImage } from '../disk/image.js';
import { asXenPv, sourceHypervisor, targetForOutput, whyNotAdapt } from '../guest/route.js';
import { findTarget, type TargetName } from '../guest/targets.js';
import { adaptInPlace, guestDiskIndexes, stageAdapted, type StagedSource, type VmAdaptation } from './adapt.js';
import type { ConversionNote, EncodeInput, VmSource } from './codec.js';
import { findCodec, findPackage, unknownTarget } from './registry.js';
import { diskCandidates } from './source.js';
import { crypto } from '../util/builtins.js';

export interface ConvertVmOptions {
  /** disk format for the target (default: the target's own) */
  diskFormat?: string;
  /** translate the descriptor only; disks stay where they are */
  descriptorOnly?: boolean;
  /** replace existing files in the output folder */
  force?: boolean;
  allowOutsidePaths?: boolean;
  /** adapt a guest from another hypervisor for the target (default true) */
  adapt?: boolean;
  /** the adaptation target (../guest/targets.ts), instead of the one the output implies */
  adaptFor?: string;
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

export interface ConvertVmResult {
  target: string;
  /** files written, absolute paths, descriptor or package first */
  files: string[];
  notes: ConversionNote[];
  /** what guest adaptation did, or why it did nothing; absent with `adapt: false` */
  adaptation?: VmAdaptation;
}

/** What adaptation a conversion runs: none (and why), or for which target. */
type AdaptPlan = { target: TargetName; skipped?: undefined } | { target?: TargetName; skipped: string };

function planAdaptation(source: VmSource, output: string, opts: ConvertVmOptions): AdaptPlan | undefined {
  if (opts.adapt === false) return undefined;
  if (opts.descriptorOnly) return { skipped: 'the disks were not converted (--descriptor-only): adapt them with polyvisor guest adapt' };
  // asked for by name: adapted whatever the source (the user knows the guest better than its descriptor)
  if (opts.adaptFor) return { target: findTarget(opts.adaptFor).name };
  const target = targetForOutput(output, source.spec);
  if (!target) return { skipped: `no adaptation target is known for ${output}` };
  const why = whyNotAdapt(sourceHypervisor(source.kind, source.spec), target);
  return why ? { target, skipped: why } : { target };
}

/**
 * The spec the target is written with: a guest adapted for Xen PV from an HVM spec becomes a PV
 * domain booted by pygrub (what the adaptation prepared), with a note saying so.
 */
function adaptedSpec(spec: EncodeInput['spec'], a: VmAdaptation | undefined, notes: ConversionNote[]): EncodeInput['spec'] {
  if (!a?.manifest || a.target !== 'xen-pv' || spec.virtualization !== 'hvm') return spec;
  notes.push({ setting: 'virtualization', action: 'changed', from: 'hvm', to: 'pv', reason: "the guest was adapted for Xen PV: pygrub boots the kernel named by the guest's own grub.cfg" });
  return asXenPv(spec);
}

/** Whether images of `format` made with `options` can be opened for writing by the disk engine (a streamOptimized VMDK cannot). */
async function editableOutput(format: string, options: string[] | undefined, dir: string): Promise<boolean> {
  // in a folder of its own: a format may make companion files beside its image (VMDK extents)
  const folder = join(dir, `.pv-probe-${crypto().randomBytes(4).toString('hex')}`);
  const probe = join(folder, 'probe');
  try {
    await mkdir(folder);
    const img = await createImage(probe, format, 1 << 20, { options, cache: 'unsafe' });
    await img.close();
    const again = await openImage(probe, { format, writable: true });
    await again.close();
    return true;
  } catch (e) {
    if (isPolyvisorError(e, 'ERR_READ_ONLY') || isPolyvisorError(e, 'ERR_UNSUPPORTED')) return false;
    throw e;
  } finally {
    await rm(folder, { recursive: true, force: true });
  }
}

/** The manifest path beside the output, refused when it exists unless `force` (then the old one goes). */
async function manifestPathFor(outDir: string, name: string, force: boolean): Promise<string> {
  const path = resolve(outDir, `${name}.adapt.manifest.json`);
  const { manifestDataDir } = await import('../guest/manifest.js');
  if (await stat(path).then(() => true, () => false)) {
    if (!force) throw new PolyvisorError('ERR_EXISTS', 'an adaptation manifest of an earlier conversion is in the output folder; pass --force to replace it', { file: path });
    await rm(path, { force: true });
    await rm(manifestDataDir(path), { recursive: true, force: true });
  }
  return path;
}

async function removeManifest(a: VmAdaptation | undefined): Promise<void> {
  if (!a?.manifest) return;
  const { manifestDataDir } = await import('../guest/manifest.js');
  await rm(a.manifest, { force: true });
  await rm(manifestDataDir(a.manifest), { recursive: true, force: true });
}

const skippedBy = (plan: AdaptPlan | undefined): VmAdaptation | undefined =>
  plan?.skipped !== undefined ? { target: plan.target, changes: 0, problems: [], notes: [], skipped: plan.skipped } : undefined;

/** Disk options each target's hypervisor needs from the disk engine. */
const DISK_OPTIONS: Record<string, Record<string, string[]>> = {
  // VMware Workstation runs monolithicSparse; OVF/OVA carry streamOptimized (what ESXi imports)
  vmx: { vmdk: ['subformat=monolithicSparse'] },
  ovf: { vmdk: ['subformat=streamOptimized'] },
  hyperv: { vhdx: ['subformat=dynamic'], vhd: ['subformat=dynamic'] },
};

const EXTENSIONS: Record<string, string> = { raw: 'img', qcow2: 'qcow2', vhd: 'vhd', vhdx: 'vhdx', vmdk: 'vmdk', vdi: 'vdi' };

/** A name safe as a file name on every host: letters, digits, dot, dash, underscore. */
export function fileSafeName(name: string): string {
  const s = name.replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^[-.]+|-+$/g, '');
  return s.slice(0, 100) || 'vm';
}

export async function convertVm(source: VmSource, target: string, outDir: string, opts: ConvertVmOptions = {}): Promise<ConvertVmResult> {
  const codec = findCodec(target);
  const pkg = findPackage(target);
  if (!pkg && !codec?.encode) throw unknownTarget(target);
  await mkdir(outDir, { recursive: true }).catch((e) => {
    throw fromSystemError(e, outDir, 'create folder');
  });
  const name = fileSafeName(source.spec.name);
  const notes: ConversionNote[] = [...source.notes];

  const plan = planAdaptation(source, pkg?.name ?? codec!.name, opts);
  let adaptation = skippedBy(plan);

  if (pkg) {
    if (opts.descriptorOnly) throw new PolyvisorError('ERR_USAGE', `--descriptor-only does not apply to ${pkg.name}: a package carries its disks`);
    const path = join(outDir, `${name}${pkg.extensions[0] ?? '.' + pkg.name}`);
    if (!opts.force && (await stat(path).then(() => true, () => false))) throw new PolyvisorError('ERR_EXISTS', 'file exists; pass --force to replace it', { file: path });
    // the package writer packs each disk as it reads it: the guest is adapted before, in staging overlays
    let staged: StagedSource | undefined;
    try {
      let src = source;
      if (plan?.target && !plan.skipped) {
        const manifestPath = await manifestPathFor(outDir, name, !!opts.force);
        staged = await stageAdapted(source, join(outDir, `.${name}.adapt-${crypto().randomBytes(4).toString('hex')}`), { target: plan.target, manifestPath, spec: source.spec, signal: opts.signal });
        adaptation = staged.adaptation;
        src = { ...staged.source, spec: adaptedSpec(source.spec, adaptation, notes) };
      }
      const r = await pkg.write(src, path, { onProgress: opts.onProgress, signal: opts.signal, force: opts.force });
      return { target, files: [resolve(path)], notes: [...notes, ...r.notes], adaptation };
    } catch (e) {
      await removeManifest(adaptation);
      throw e;
    } finally {
      await staged?.dispose();
    }
  }

  const c = codec!;
  const diskFormat = opts.diskFormat ? findFormat(opts.diskFormat).name : c.defaultDiskFormat;
  if (!opts.descriptorOnly && !c.diskFormats.includes(diskFormat)) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `${c.name} targets take ${c.diskFormats.join(', ')} disks, not ${diskFormat}`);
  }
  const written: string[] = [];
  const diskFiles: EncodeInput['diskFiles'] = source.spec.disks.map(() => undefined);
  let staged: StagedSource | undefined;
  let spec = source.spec;
  try {
    // Disks first: the descriptor is only written once every disk it names is in place.
    if (opts.descriptorOnly) {
      for (const d of source.disks) {
        const spec = source.spec.disks[d.index]!;
        const file = await resolveReferenced(source.path, diskCandidates(d.label), { allowOutsidePaths: opts.allowOutsidePaths }, 'disk file').catch(() => d.label);
        const format = spec.format ?? 'raw';
        diskFiles[d.index] = { file: resolve(file), format, capacity: spec.capacity ?? 0 };
        if (spec.device === 'disk' && !c.diskFormats.includes(format)) {
          notes.push({
            setting: `disks[${d.index}].format`,
            action: 'kept',
            from: format,
            reason: `${c.name} targets take ${c.diskFormats.join(', ')} disks; this ${format} disk is named as it is (--descriptor-only): convert it before the VM can start`,
          });
        }
      }
    } else {
      // the disks are adapted once written, in place, unless their format cannot be edited:
      // then they are written from staging overlays adapted first
      let from = source;
      let manifestPath: string | undefined;
      let inPlace = false;
      if (plan?.target && !plan.skipped) {
        manifestPath = await manifestPathFor(outDir, name, !!opts.force);
        inPlace = await editableOutput(diskFormat, DISK_OPTIONS[c.name]?.[diskFormat], outDir);
        if (!inPlace) {
          staged = await stageAdapted(source, join(outDir, `.${name}.adapt-${crypto().randomBytes(4).toString('hex')}`), { target: plan.target, manifestPath, spec: source.spec, signal: opts.signal });
          adaptation = staged.adaptation;
          from = staged.source;
        }
      }
      const opened: Array<{ index: number; img: BlockImage }> = [];
      const paths = new Map<number, string>();
      try {
        for (const d of from.disks) opened.push({ index: d.index, img: await d.open() });
        const total = opened.reduce((n, o) => n + o.img.virtualSize, 0);
        let base = 0;
        for (const { index, img } of opened) {
          opts.signal?.throwIfAborted();
          const file = `${name}-disk${index}.${EXTENSIONS[diskFormat] ?? diskFormat}`;
          const r = await convert(img, join(outDir, file), diskFormat, {
            options: DISK_OPTIONS[c.name]?.[diskFormat],
            force: opts.force,
            signal: opts.signal,
            onProgress: (done) => opts.onProgress?.(base + done, total),
          });
          base += img.virtualSize;
          written.push(...r.files);
          paths.set(index, resolve(r.path));
          diskFiles[index] = { file, format: diskFormat, capacity: r.virtualSize };
        }
      } finally {
        await Promise.all(opened.map((o) => o.img.close().catch(() => {})));
      }
      if (inPlace && plan?.target) {
        const guestDisks = guestDiskIndexes(source.spec).flatMap((i) => (paths.has(i) ? [paths.get(i)!] : []));
        adaptation = await adaptInPlace(guestDisks, { target: plan.target, manifestPath: manifestPath!, spec: source.spec, signal: opts.signal });
      }
      spec = adaptedSpec(source.spec, adaptation, notes);
    }
    const enc = c.encode!({ spec, diskFiles, name, folder: resolve(outDir) });
    notes.push(...enc.notes);
    for (const f of enc.files) written.push(await writeAtomically(join(outDir, f.name), f.data, !!opts.force));
    if (c.name === 'ovf' && !opts.descriptorOnly) written.push(await writeAtomically(join(outDir, `${name}.mf`), await manifest(written), !!opts.force));
    return { target, files: written.map((f) => resolve(f)), notes, adaptation };
  } catch (e) {
    // nothing half-done stays: files this run wrote are removed
    await Promise.all(written.map((f) => unlink(f).catch(() => {})));
    await removeManifest(adaptation);
    if (opts.signal?.aborted) throw new PolyvisorError('ERR_ABORTED', 'conversion cancelled; the files written so far were removed', { file: outDir });
    throw e;
  } finally {
    await staged?.dispose();
  }
}

/** Writes a small file under a temporary name and renames it into place. */
async function writeAtomically(path: string, data: string | Buffer, force: boolean): Promise<string> {
  if (!force && (await stat(path).then(() => true, () => false))) {
    throw new PolyvisorError('ERR_EXISTS', 'file exists; pass --force to replace it', { file: path });
  }
  const tmp = join(resolve(path, '..'), `.${basename(path)}.${crypto().randomBytes(4).toString('hex')}.pv-partial`);
  try {
    const fh = await open(tmp, 'wx');
    try {
      await fh.writeFile(data);
      await fh.datasync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw fromSystemError(e, path, 'write');
  }
  return path;
}

/** An OVF manifest (.mf): SHA256(name)= digest for every file of the package. */
async function manifest(files: string[]): Promise<string> {
  const lines: string[] = [];
  for (const f of files) {
    const h = crypto().createHash('sha256');
    for await (const chunk of createReadStream(f)) h.update(chunk as Buffer);
    lines.push(`SHA256(${basename(f)})= ${h.digest('hex')}`);
  }
  return lines.join('\n') + '\n';
}
