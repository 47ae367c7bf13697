/**
 * `vm convert`: a VM from any source into the files a target hypervisor imports.
 *
 * For a descriptor target (xl, libvirt, vmx, ovf, hyperv) each disk is converted by the disk
 * engine into the target's disk format beside the descriptor, then the descriptor is written
 * naming them; for a package target (ova, xva) the package writer does both. With
 * `descriptorOnly`, disks are left where they are and the descriptor names them there.
 * Every file appears atomically; what the target cannot express comes back as notes.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rename, stat, unlink } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { PolyvisorError, fromSystemError } from '../errors.js';
import { resolveReferenced } from '../disk/chain.js';
import { convert } from '../disk/convert.js';
import { findFormat } from '../disk/registry.js';
import type { BlockImage } from '../disk/image.js';
import type { ConversionNote, EncodeInput, VmSource } from './codec.js';
import { findCodec, findPackage, unknownTarget } from './registry.js';
import { diskCandidates } from './source.js';

export interface ConvertVmOptions {
  /** disk format for the target (default: the target's own) */
  diskFormat?: string;
  /** translate the descriptor only; disks stay where they are */
  descriptorOnly?: boolean;
  /** replace existing files in the output folder */
  force?: boolean;
  allowOutsidePaths?: boolean;
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

export interface ConvertVmResult {
  target: string;
  /** files written, absolute paths, descriptor or package first */
  files: string[];
  notes: ConversionNote[];
}

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

  if (pkg) {
    if (opts.descriptorOnly) throw new PolyvisorError('ERR_USAGE', `--descriptor-only does not apply to ${pkg.name}: a package carries its disks`);
    const path = join(outDir, `${name}${pkg.extensions[0] ?? '.' + pkg.name}`);
    const r = await pkg.write(source, path, { onProgress: opts.onProgress, signal: opts.signal, force: opts.force });
    return { target, files: [resolve(path)], notes: [...notes, ...r.notes] };
  }

  const c = codec!;
  const diskFormat = opts.diskFormat ? findFormat(opts.diskFormat).name : c.defaultDiskFormat;
  if (!opts.descriptorOnly && !c.diskFormats.includes(diskFormat)) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `${c.name} targets take ${c.diskFormats.join(', ')} disks, not ${diskFormat}`);
  }
  const written: string[] = [];
  const diskFiles: EncodeInput['diskFiles'] = source.spec.disks.map(() => undefined);
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
      const opened: Array<{ index: number; img: BlockImage }> = [];
      try {
        for (const d of source.disks) opened.push({ index: d.index, img: await d.open() });
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
          diskFiles[index] = { file, format: diskFormat, capacity: r.virtualSize };
        }
      } finally {
        await Promise.all(opened.map((o) => o.img.close().catch(() => {})));
      }
    }
    const enc = c.encode!({ spec: source.spec, diskFiles, name, folder: resolve(outDir) });
    notes.push(...enc.notes);
    for (const f of enc.files) written.push(await writeAtomically(join(outDir, f.name), f.data, !!opts.force));
    if (c.name === 'ovf' && !opts.descriptorOnly) written.push(await writeAtomically(join(outDir, `${name}.mf`), await manifest(written), !!opts.force));
    return { target, files: written.map((f) => resolve(f)), notes };
  } catch (e) {
    // nothing half-done stays: files this run wrote are removed
    await Promise.all(written.map((f) => unlink(f).catch(() => {})));
    if (opts.signal?.aborted) throw new PolyvisorError('ERR_ABORTED', 'conversion cancelled; the files written so far were removed', { file: outDir });
    throw e;
  }
}

/** Writes a small file under a temporary name and renames it into place. */
async function writeAtomically(path: string, data: string | Buffer, force: boolean): Promise<string> {
  if (!force && (await stat(path).then(() => true, () => false))) {
    throw new PolyvisorError('ERR_EXISTS', 'file exists; pass --force to replace it', { file: path });
  }
  const tmp = join(resolve(path, '..'), `.${basename(path)}.${randomBytes(4).toString('hex')}.pv-partial`);
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
    const h = createHash('sha256');
    for await (const chunk of createReadStream(f)) h.update(chunk as Buffer);
    lines.push(`SHA256(${basename(f)})= ${h.digest('hex')}`);
  }
  return lines.join('\n') + '\n';
}
