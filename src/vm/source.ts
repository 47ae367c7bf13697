/**
 * Opening a VM from whatever the user has: a descriptor file (.cfg, .xml, .vmx, .ovf, .vmc),
 * a package (.ova, .xva), or an exported VM's folder (a Hyper-V export, a VMware VM folder).
 * The codec or package is chosen by probing; disk files named by a descriptor are resolved
 * relative to it and must lie inside its folder unless the user allows otherwise.
 */
import { open, readdir, stat } from 'node:fs/promises';
import { basename, extname, join, relative } from 'node:path';
import { PolyvisorError, fromSystemError, isPolyvisorError } from '../errors.js';
import { detectFormat, openImage, resolveReferenced } from '../disk/chain.js';
import type { ConversionNote, SourceDisk, VmCodec, VmPackage, VmSource } from './codec.js';
import { CODECS, PACKAGES } from './registry.js';
import { emptySpec, type VmSpec } from './spec.js';

export interface OpenVmOptions {
  /** follow disk files outside the descriptor's folder */
  allowOutsidePaths?: boolean;
  /** force a codec or package by name instead of probing */
  kind?: string;
}

const HEAD = 64 * 1024;
/** Descriptors are small; anything bigger is not one (and is not read whole into memory). */
const MAX_DESCRIPTOR = 16 << 20;
/** How deep and how wide a folder is searched for a descriptor. */
const MAX_DEPTH = 3;
const MAX_ENTRIES = 10_000;

type Candidate = { kind: 'codec'; codec: VmCodec; score: number } | { kind: 'package'; pkg: VmPackage; score: number };

async function readHead(path: string): Promise<Buffer> {
  const fh = await open(path, 'r').catch((e) => {
    throw fromSystemError(e, path, 'open');
  });
  try {
    const buf = Buffer.alloc(HEAD);
    const { bytesRead } = await fh.read(buf, 0, HEAD, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

function best(head: Buffer, path: string, kind?: string): Candidate | null {
  let top: Candidate | null = null;
  const consider = (c: Candidate) => {
    if (c.score > 0 && (!top || c.score > top.score)) top = c;
  };
  for (const pkg of PACKAGES) {
    if (kind && kind !== pkg.name) continue;
    let score = 0;
    try {
      score = pkg.probe(head, path);
    } catch {
      score = 0;
    }
    consider({ kind: 'package', pkg, score: kind ? Math.max(score, 1) : score });
  }
  for (const codec of CODECS) {
    if (!codec.decode || (kind && kind !== codec.name)) continue;
    let score = 0;
    try {
      score = codec.probe(head, path);
    } catch {
      score = 0;
    }
    consider({ kind: 'codec', codec, score: kind ? Math.max(score, 1) : score });
  }
  return top;
}

/** Opens a VM source: a descriptor, a package or an exported VM's folder. */
export async function openVmSource(path: string, opts: OpenVmOptions = {}): Promise<VmSource> {
  let st;
  try {
    st = await stat(path);
  } catch (e) {
    throw fromSystemError(e, path, 'open');
  }
  if (st.isDirectory()) return openVmSource(await findDescriptor(path, opts), opts);
  const head = await readHead(path);
  const pick = best(head, path, opts.kind);
  if (!pick && (opts.kind === 'disk' || !opts.kind)) {
    const disk = await openBareDisk(path, opts);
    if (disk) return disk;
  }
  if (!pick) {
    throw new PolyvisorError('ERR_FORMAT_UNKNOWN', 'not a VM descriptor or package that Polyvisor reads (xl.cfg, libvirt XML, .vmx, OVF/OVA, XVA, .vmc, Hyper-V XML)', { file: path });
  }
  if (pick.kind === 'package') return pick.pkg.open(path, { allowOutsidePaths: opts.allowOutsidePaths });
  return openDescriptor(path, st.size, pick.codec, opts, head);
}

/** File name endings taken as a raw disk; raw has no signature, so any other file is not guessed to be one. */
const RAW_ENDINGS = ['.raw', '.img', '.bin', '.dd'];

/**
 * A disk image on its own (a .vhd from Virtual Server, a .qcow2 from a cloud, a .raw) is a VM
 * too: one disk, BIOS, 1 CPU and 1 GiB, the disk on SATA (AHCI), which every current Linux and
 * Windows has a driver for. The defaults are reported as notes, so the user knows they were
 * chosen, not read. Undefined when the file is not a disk image the engine recognises.
 */
async function openBareDisk(path: string, opts: OpenVmOptions): Promise<VmSource | undefined> {
  let format: string;
  try {
    format = (await detectFormat(path)).name;
  } catch {
    return undefined;
  }
  if (format === 'raw' && opts.kind !== 'disk' && !RAW_ENDINGS.includes(extname(path).toLowerCase())) return undefined;
  const name = basename(path, extname(path)) || 'disk';
  const spec = emptySpec(name);
  spec.memory.bytes = 1 << 30;
  spec.disks.push({ device: 'disk', bus: 'sata', file: basename(path), format, bootOrder: 1 });
  const why = 'a disk image alone names no VM settings: the default was chosen';
  const notes: ConversionNote[] = [
    { setting: 'memory.bytes', action: 'changed', to: spec.memory.bytes, reason: why },
    { setting: 'disks[0].bus', action: 'changed', to: 'sata', reason: `${why} (AHCI: every current Linux and Windows has its driver)` },
  ];
  const disks: SourceDisk[] = [{ index: 0, label: path, open: () => openImage(path, { format, allowOutsidePaths: opts.allowOutsidePaths }) }];
  return { path, kind: 'disk', spec, disks, notes, close: async () => {} };
}

/** `head`: the file's start as probed; when it holds the whole file (all `size` bytes) it is not read again. */
async function openDescriptor(path: string, size: number, codec: VmCodec, opts: OpenVmOptions, head: Buffer): Promise<VmSource> {
  if (size > MAX_DESCRIPTOR) throw new PolyvisorError('ERR_UNSUPPORTED', `a ${size}-byte file is too large to be a ${codec.name} descriptor`, { file: path });
  let data = head;
  // a larger file, or a short read (network file systems may return fewer bytes than asked),
  // is read again whole
  if (head.length !== size) {
    const fh = await open(path, 'r');
    try {
      data = await fh.readFile();
    } finally {
      await fh.close();
    }
  }
  const { spec, notes } = codec.decode!(data, path);
  const disks: SourceDisk[] = [];
  spec.disks.forEach((d, index) => {
    if (!d.file) return;
    const recorded = d.file;
    disks.push({
      index,
      label: recorded,
      open: async () => {
        const file = await resolveReferenced(path, diskCandidates(recorded), { allowOutsidePaths: opts.allowOutsidePaths }, 'disk file');
        return openImage(file, { format: d.format, allowOutsidePaths: opts.allowOutsidePaths });
      },
    });
  });
  return { path, kind: codec.name, spec, disks, notes, close: async () => {} };
}

/**
 * Where a recorded disk name may be found. Descriptors exported from another host record that
 * host's paths (Hyper-V: "C:\VMs\web\Virtual Hard Disks\web.vhdx"; ESXi: "/vmfs/volumes/..."):
 * after the name as recorded, the same file name is looked for beside the descriptor and in an
 * export's "Virtual Hard Disks" folder.
 */
export function diskCandidates(recorded: string): string[] {
  const base = basename(recorded.replace(/\\/g, '/'));
  const out = [recorded];
  if (/^[a-z]:[\\/]/i.test(recorded) || recorded.includes('\\')) out[0] = recorded.replace(/\\/g, '/').replace(/^[a-z]:/i, '');
  for (const c of [base, join('..', 'Virtual Hard Disks', base)]) if (!out.includes(c)) out.push(c);
  return out;
}

/** Finds the one VM descriptor in an exported folder; refuses a folder with none or several. */
async function findDescriptor(dir: string, opts: OpenVmOptions): Promise<string> {
  const found: Array<{ path: string; score: number }> = [];
  let seen = 0;
  const walk = async (d: string, depth: number): Promise<void> => {
    const entries = await readdir(d, { withFileTypes: true }).catch((e) => {
      throw fromSystemError(e, d, 'list folder');
    });
    for (const e of entries) {
      if (++seen > MAX_ENTRIES) throw new PolyvisorError('ERR_UNSUPPORTED', `more than ${MAX_ENTRIES} files: not an exported VM folder`, { file: dir });
      const p = join(d, e.name);
      if (e.isDirectory()) {
        if (depth < MAX_DEPTH) await walk(p, depth + 1);
        continue;
      }
      if (!e.isFile()) continue;
      const ext = extname(e.name).toLowerCase();
      const known = [...CODECS.filter((c) => c.decode), ...PACKAGES].some((c) => c.extensions.includes(ext));
      if (!known) continue;
      const pick = best(await readHead(p), p, opts.kind);
      if (pick) found.push({ path: p, score: pick.score });
    }
  };
  await walk(dir, 0);
  if (found.length === 0) throw new PolyvisorError('ERR_FORMAT_UNKNOWN', 'no VM descriptor or package found in this folder', { file: dir });
  found.sort((a, b) => b.score - a.score);
  const top = found.filter((f) => f.score === found[0]!.score);
  if (top.length > 1) {
    const names = top.map((f) => relative(dir, f.path)).join(', ');
    throw new PolyvisorError('ERR_USAGE', `the folder holds several VMs (${names}); name the descriptor`, { file: dir });
  }
  return found[0]!.path;
}

/**
 * The spec with its direct-boot kernel and ramdisk resolved to real host files. A descriptor
 * names them as its own host saw them (a Xen dom0's /var/lib/xen/images/vmlinuz): they are
 * found by the same folder rule as disks (relative to the descriptor, or by file name beside
 * it), so that a descriptor from elsewhere cannot make the engine read a host file the user
 * did not name. A missing file is left as recorded: the engine notes that it cannot boot it.
 */
export async function withHostBootFiles(source: VmSource, opts: { allowOutsidePaths?: boolean } = {}): Promise<VmSpec> {
  const b = source.spec.boot;
  if (!b || (b.kernel === undefined && b.ramdisk === undefined)) return source.spec;
  const find = async (recorded: string | undefined, what: string) => {
    if (recorded === undefined) return undefined;
    try {
      return await resolveReferenced(source.path, diskCandidates(recorded), { allowOutsidePaths: opts.allowOutsidePaths }, what);
    } catch (e) {
      if (isPolyvisorError(e, 'ERR_NOT_FOUND')) return recorded;
      throw e;
    }
  };
  const [kernel, ramdisk] = await Promise.all([find(b.kernel, 'kernel'), find(b.ramdisk, 'ramdisk')]);
  return { ...source.spec, boot: { ...b, kernel, ramdisk } };
}

