/**
 * Guest adaptation on a VM's way to another hypervisor (../guest/adapt.ts does the work; this
 * file decides where it writes). Two ways, and the source is never written by either:
 *
 * - in place, on the VM's new disks: the files `vm convert` just wrote, the disks `vm import`
 *   put in the VM's folder. The manifest names those disks, so `guest undo` works on them.
 * - staged, for disks that are packed or sent elsewhere once written (an OVA or XVA, a
 *   streamOptimized VMDK, which is append-only, a disk on its way to a Xen host): the guest is
 *   adapted into a qcow2 overlay over each source disk in a staging folder (or into a staging
 *   copy, for a disk that lies inside a package and so cannot back an overlay), and the
 *   target is written from those. The manifest still records every change; the disks it
 *   names are the staging images, removed once the target is written.
 *
 * A guest Polyvisor cannot adapt (no Linux root file system on its disks, a root file system
 * it cannot write) goes as it is, and the result says why: a Windows guest still converts.
 */
import { mkdir, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { openImage } from '../disk/chain.js';
import { convert } from '../disk/convert.js';
import type { BlockImage } from '../disk/image.js';
import { isPolyvisorError } from '../errors.js';
import type { TargetName } from '../guest/targets.js';
import type { VmSource } from './codec.js';
import { findPackage } from './registry.js';
import type { VmSpec } from './spec.js';

export interface VmAdaptation {
  /** absent when no target applies (nothing was adapted) */
  target?: TargetName;
  /** the manifest of the changes (`guest undo` takes them back); absent when nothing was adapted */
  manifest?: string;
  changes: number;
  /** what still stands between the guest and a boot on the target */
  problems: string[];
  notes: string[];
  /** why the guest was not adapted */
  skipped?: string;
  /**
   * the guest was adapted in staging images, gone once the target was written: the manifest
   * records the changes, but `guest undo` has no disk to take them back from
   */
  staged?: boolean;
}

export interface AdaptDisksOptions {
  target: TargetName;
  manifestPath: string;
  spec: VmSpec;
  signal?: AbortSignal;
}

/** Errors that mean "this guest cannot be adapted", not "adaptation failed". */
function cannotAdapt(e: unknown): boolean {
  // ERR_NOT_FOUND: no Linux root; ERR_UNSUPPORTED: a root Polyvisor cannot write (or a disk
  // layout it does not read); ERR_READ_ONLY: an image format opened read-only only
  return isPolyvisorError(e, 'ERR_NOT_FOUND') || isPolyvisorError(e, 'ERR_UNSUPPORTED') || isPolyvisorError(e, 'ERR_READ_ONLY');
}

/** The MACs carry over: the guest's interface names follow them (edit-network.ts). */
function nicsOf(spec: VmSpec) {
  return spec.nics.flatMap((n) => (n.mac ? [{ mac: n.mac }] : []));
}

/** The indexes of the spec's disks the guest boots from and mounts (CD-ROMs and floppies hold no root). */
export function guestDiskIndexes(spec: VmSpec): number[] {
  return spec.disks.flatMap((d, i) => (d.device === 'disk' ? [i] : []));
}

/**
 * Adapts the guest in `disks` themselves (paths, the guest's first disk first). The caller
 * made these disks (never a source); a failure part-way puts back every sector written.
 */
export async function adaptInPlace(disks: string[], opts: AdaptDisksOptions): Promise<VmAdaptation> {
  if (disks.length === 0) return { target: opts.target, changes: 0, problems: [], notes: [], skipped: 'the VM has no disk' };
  const { adaptGuest } = await import('../guest/adapt.js');
  try {
    const r = await adaptGuest(disks, { target: opts.target, inPlace: true, manifestPath: opts.manifestPath, allowOutsidePaths: true, nics: nicsOf(opts.spec), signal: opts.signal });
    return { target: r.target, manifest: r.manifest, changes: r.changes.length, problems: r.problems, notes: r.notes };
  } catch (e) {
    if (cannotAdapt(e)) return { target: opts.target, changes: 0, problems: [], notes: [], skipped: (e as Error).message };
    throw e;
  }
}

export interface StagedSource {
  /** the source with its guest disks reading the adapted staging images */
  source: VmSource;
  adaptation: VmAdaptation;
  /** removes the staging folder (the target is written by then) */
  dispose(): Promise<void>;
}

/**
 * Adapts the guest of `source` into images under `stageDir` (created, and removed by
 * dispose()) and returns a VmSource reading them, for a writer to carry wherever it goes.
 * When the guest cannot be adapted, the source comes back as it is, with the reason.
 */
export async function stageAdapted(source: VmSource, stageDir: string, opts: AdaptDisksOptions & { onProgress?: (done: number, total: number) => void }): Promise<StagedSource> {
  const dir = resolve(stageDir);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const dispose = () => rm(dir, { recursive: true, force: true });
  try {
    const indexes = new Set(guestDiskIndexes(source.spec));
    const disks = source.disks.filter((d) => indexes.has(d.index)).sort((a, b) => a.index - b.index);
    const unchanged = (skipped: string): StagedSource => ({ source, adaptation: { target: opts.target, changes: 0, problems: [], notes: [], skipped }, dispose });
    if (disks.length === 0) return unchanged('the VM has no disk');
    const { adaptGuest } = await import('../guest/adapt.js');
    // a disk inside a package (an OVA member, XVA chunks) cannot back an overlay: it is copied out first
    const packed = findPackage(source.kind) !== undefined;
    const paths: string[] = [];
    let total = 0;
    const opened: BlockImage[] = [];
    try {
      for (const d of disks) opened.push(await d.open());
      total = opened.reduce((n, i) => n + i.virtualSize, 0);
      let base = 0;
      for (const [k, img] of opened.entries()) {
        opts.signal?.throwIfAborted();
        if (!packed) {
          paths.push(resolve(img.path));
          continue;
        }
        const copy = join(dir, `disk${disks[k]!.index}.qcow2`);
        await convert(img, copy, 'qcow2', { cache: 'unsafe', signal: opts.signal, onProgress: (done) => opts.onProgress?.(base + done, total) });
        base += img.virtualSize;
        paths.push(copy);
      }
    } finally {
      await Promise.all(opened.map((i) => i.close().catch(() => undefined)));
    }
    let staged: string[];
    let adaptation: VmAdaptation;
    try {
      const r = await adaptGuest(paths, {
        target: opts.target,
        inPlace: packed,
        out: packed ? undefined : dir,
        manifestPath: opts.manifestPath,
        // the sources were vetted when the VM source opened them
        allowOutsidePaths: true,
        nics: nicsOf(opts.spec),
        signal: opts.signal,
      });
      staged = r.outputs;
      adaptation = { target: r.target, manifest: r.manifest, changes: r.changes.length, problems: r.problems, notes: r.notes, staged: true };
    } catch (e) {
      if (cannotAdapt(e)) return unchanged((e as Error).message);
      throw e;
    }
    const byIndex = new Map(disks.map((d, k) => [d.index, staged[k]!]));
    const adapted: VmSource = {
      ...source,
      disks: source.disks.map((d) => {
        const file = byIndex.get(d.index);
        return file ? { index: d.index, label: d.label, open: () => openImage(file, { allowOutsidePaths: true }) } : d;
      }),
      // the caller closes the original source; the staging images go with dispose()
      close: async () => undefined,
    };
    return { source: adapted, adaptation, dispose };
  } catch (e) {
    await dispose();
    throw e;
  }
}
