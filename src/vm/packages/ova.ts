/**
 * OVA: an OVF descriptor and its disks in one tar file (DSP0243 §5.3, "OVF package in a single
 * file"). The members are, in this order: the descriptor (.ovf) first, then the optional
 * manifest (.mf: one "SHA256(name)= hex" line per file) and certificate (.cert), then the files
 * References names. VMware refuses packages whose .ovf is not first or whose .mf is not
 * second, so that order is what Polyvisor writes and what it expects.
 *
 * Reading: the tar is indexed (tar.ts: absolute names, ".." components and duplicates are
 * refused), every file the manifest lists is hashed over its byte range in the tar and must
 * match, every href in References must be a member of the package (never a host file), and
 * disks are read in place through the disk engine (OpenOptions.window), never extracted.
 *
 * Writing: each disk is converted to a streamOptimized VMDK in a temporary file beside the
 * destination, hashed, then the tar is streamed (descriptor, manifest, disks) to a temporary
 * name and renamed into place; temporaries are removed whatever happens.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { pack } from 'tar-stream';
import { PolyvisorError, fromSystemError, isPolyvisorError } from '../../errors.js';
import { openImage } from '../../disk/chain.js';
import { convert } from '../../disk/convert.js';
import { durableRename } from '../../disk/output.js';
import type { BlockImage } from '../../disk/image.js';
import type { ConversionNote, SourceDisk, VmPackage, VmSource } from '../codec.js';
import { readOvf } from '../codecs/ovf-read.js';
import { encodeOvf } from '../codecs/ovf-write.js';
import { TarArchive, quoteName, type TarMember } from './tar.js';
import { crypto } from '../../util/builtins.js';

/** A descriptor larger than this is not an OVF anyone wrote. */
const MAX_DESCRIPTOR_BYTES = 16 << 20;
const MAX_MANIFEST_BYTES = 1 << 20;

type Algorithm = 'sha1' | 'sha256' | 'sha512';

interface ManifestEntry {
  algorithm: Algorithm;
  name: string;
  digest: string;
  line: number;
}

/** Parses "SHA256(disk1.vmdk)= 0123..." lines (ovftool, VirtualBox, XenCenter all write this form). */
export function parseManifest(text: string, file: string): ManifestEntry[] {
  const out: ManifestEntry[] = [];
  const lines = text.split(/\r?\n/);
  for (const [i, line] of lines.entries()) {
    if (line.trim() === '') continue;
    const m = /^\s*(SHA1|SHA256|SHA512)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$/.exec(line);
    if (!m) throw new PolyvisorError('ERR_CORRUPT', `line ${i + 1} is not "SHA256(name)= digest": ${quoteName(line)}`, { file, structure: 'manifest' });
    const algorithm = m[1]!.toLowerCase() as Algorithm;
    const len = { sha1: 40, sha256: 64, sha512: 128 }[algorithm];
    if (m[3]!.length !== len) throw new PolyvisorError('ERR_CORRUPT', `line ${i + 1}: a ${m[1]} digest has ${len} hex digits, not ${m[3]!.length}`, { file, structure: 'manifest' });
    out.push({ algorithm, name: m[2]!, digest: m[3]!.toLowerCase(), line: i + 1 });
  }
  return out;
}

async function hashMember(tar: TarArchive, m: TarMember, algorithm: Algorithm, signal?: AbortSignal): Promise<string> {
  const h = crypto().createHash(algorithm);
  const piece = 1 << 20;
  const buf = Buffer.allocUnsafe(Math.min(piece, Math.max(1, m.size)));
  for (let done = 0; done < m.size; done += piece) {
    if (signal?.aborted) throw new PolyvisorError('ERR_ABORTED', 'manifest check cancelled', { file: tar.path });
    const b = buf.subarray(0, Math.min(piece, m.size - done));
    await tar.readAt(m, b, done);
    h.update(b);
  }
  return h.digest('hex');
}

/** An href must be a plain member name: no folders, no absolute paths, no protocols. */
function checkHref(href: string, file: string): void {
  if (/^[a-z][a-z0-9+.-]+:/i.test(href)) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `References names ${quoteName(href)}, a URL; an OVA's files must be members of the package`, { file, structure: 'References' });
  }
  const parts = href.split(/[\\/]/);
  if (href.startsWith('/') || href.startsWith('\\') || /^[A-Za-z]:/.test(href) || parts.includes('..')) {
    throw new PolyvisorError('ERR_PATH_OUTSIDE', `References names ${quoteName(href)}, outside the package; an OVA's files must be members of it`, { file, structure: 'References' });
  }
}

async function openOva(path: string): Promise<VmSource> {
  const tar = await TarArchive.open(path);
  try {
    const members = tar.members.filter((m) => m.type !== 'directory');
    const first = members[0];
    if (!first || !first.name.toLowerCase().endsWith('.ovf')) {
      throw new PolyvisorError('ERR_CORRUPT', `the first member is ${first ? quoteName(first.name) : 'missing'}, not the .ovf descriptor`, { file: path, structure: 'tar header', offset: first?.headerOffset ?? 0 });
    }
    // Manifest first: every digest it lists must match (the .ovf's included) before anything is parsed.
    const stem = first.name.replace(/\.ovf$/i, '');
    const mf = tar.get(`${stem}.mf`) ?? members.find((m) => m.name.toLowerCase().endsWith('.mf'));
    if (mf) {
      const entries = parseManifest((await tar.readMember(mf, MAX_MANIFEST_BYTES)).toString('utf8'), `${path}: ${mf.name}`);
      for (const e of entries) {
        const m = tar.get(e.name);
        if (!m) throw new PolyvisorError('ERR_CORRUPT', `the manifest lists ${quoteName(e.name)} (line ${e.line}), which is not in the package`, { file: path, structure: mf.name });
        const actual = await hashMember(tar, m, e.algorithm);
        if (actual !== e.digest) {
          throw new PolyvisorError('ERR_CHECKSUM', `member ${quoteName(e.name)}: ${e.algorithm.toUpperCase()} is ${actual}, the manifest says ${e.digest}`, { file: path, structure: `member ${e.name}`, offset: m.offset });
        }
      }
    }
    const descriptor = await tar.readMember(first, MAX_DESCRIPTOR_BYTES);
    const label = `${path}: ${first.name}`;
    const { spec, notes, references } = readOvf(descriptor, label);

    if (!mf) notes.push({ setting: 'ova: manifest', action: 'dropped', reason: 'the package has no .mf manifest; its members are not checked against digests' });
    if (members.some((m) => m.name.toLowerCase().endsWith('.cert'))) {
      notes.push({ setting: 'ova: certificate', action: 'dropped', reason: 'the package is signed; Polyvisor checks the manifest digests, not the signature' });
    }

    // Every file the descriptor references must be a member, of the size it claims.
    for (const r of references) {
      checkHref(r.href, label);
      const m = tar.get(r.href);
      if (!m) throw new PolyvisorError('ERR_CORRUPT', `References names ${quoteName(r.href)}, which is not a member of the package`, { file: label, structure: `References/File ${r.id}` });
      if (r.size !== undefined && r.size !== m.size) {
        throw new PolyvisorError('ERR_CORRUPT', `References gives ${quoteName(r.href)} ${r.size} bytes, the member has ${m.size}`, { file: label, structure: `References/File ${r.id}` });
      }
    }

    const disks: SourceDisk[] = [];
    for (const [index, d] of spec.disks.entries()) {
      if (!d.file) continue;
      const m = tar.expectFile(d.file, 'disk file');
      const window = { offset: m.offset, length: m.size };
      const format = d.format;
      disks.push({
        index,
        label: `${d.file} in ${path}`,
        async open(): Promise<BlockImage> {
          // noBacking: a disk in a package has no parent, and must not make us open files beside the package
          const img = await openImage(path, { format, window, noBacking: true });
          if (img.backingRef) {
            await img.close();
            throw new PolyvisorError('ERR_UNSUPPORTED', `disk ${quoteName(d.file!)} is a delta of a backing image, which a package cannot carry`, { file: path, structure: `member ${d.file}` });
          }
          return img;
        },
      });
    }
    return { path, kind: 'ova', spec, disks, notes, close: async () => {} };
  } finally {
    await tar.close();
  }
}

/** A member name from a VM name: letters, digits, ".", "_" and "-", at most 64 characters. */
function memberStem(name: string): string {
  const s = name.replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^[-.]+/, '').slice(0, 64);
  return s || 'vm';
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

async function sha256File(p: string, signal?: AbortSignal): Promise<string> {
  const h = crypto().createHash('sha256');
  await pipeline(createReadStream(p), h, { signal });
  return h.digest('hex');
}

async function writeOva(source: VmSource, path: string, opts: Parameters<VmPackage['write']>[2]): Promise<{ notes: ConversionNote[] }> {
  const { signal } = opts;
  if (!opts.force && (await exists(path))) throw new PolyvisorError('ERR_EXISTS', 'destination exists; pass --force to replace it', { file: path });
  const dir = dirname(path);
  const tag = crypto().randomBytes(4).toString('hex');
  const tmpOva = join(dir, `.${basename(path)}.${tag}.pv-partial`);
  const temps: string[] = [];
  const notes: ConversionNote[] = [];
  const spec = source.spec;
  const stem = memberStem(basename(path).replace(/\.ova$/i, '') || spec.name);
  const cancelled = () => new PolyvisorError('ERR_ABORTED', 'OVA writing cancelled; no package was written', { file: path });

  try {
    // 1. Disks → streamOptimized VMDKs beside the destination.
    const byIndex = new Map(source.disks.map((d) => [d.index, d]));
    const images: Array<{ index: number; member: string; tmp: string; virtualSize: number }> = [];
    let total = 0;
    const opened: Array<{ index: number; img: BlockImage; sd: SourceDisk }> = [];
    try {
      for (const [i, d] of spec.disks.entries()) {
        const sd = byIndex.get(i);
        if (d.device !== 'disk' || !sd) continue;
        const img = await sd.open();
        opened.push({ index: i, img, sd });
        total += img.virtualSize;
      }
      let before = 0;
      let n = 0;
      for (const { index, img, sd } of opened) {
        if (signal?.aborted) throw cancelled();
        const member = `${stem}-disk${++n}.vmdk`;
        const tmp = join(dir, `.${basename(path)}.${tag}.disk${n}.vmdk`);
        temps.push(tmp);
        const base = before;
        try {
          await convert(img, tmp, 'vmdk', { options: ['subformat=streamOptimized'], signal, onProgress: (done) => opts.onProgress?.(base + done, total) });
        } catch (e) {
          throw isPolyvisorError(e) ? e : fromSystemError(e, sd.label, 'convert');
        }
        before += img.virtualSize;
        images.push({ index, member, tmp, virtualSize: img.virtualSize });
      }
    } finally {
      await Promise.all(opened.map((o) => o.img.close().catch(() => {})));
    }
    for (const [i, d] of spec.disks.entries()) {
      if (d.device !== 'disk' && byIndex.has(i)) notes.push({ setting: `disks[${i}].file`, action: 'dropped', from: d.file, reason: `the ${d.device} media is not packaged; the drive is written empty` });
      else if (d.device === 'disk' && !byIndex.has(i) && d.file) notes.push({ setting: `disks[${i}].file`, action: 'dropped', from: d.file, reason: 'the source has no content for this disk; an empty disk of its capacity is described' });
    }

    // 2. Descriptor and manifest.
    const diskFiles = spec.disks.map(() => undefined as { file: string; format: string; capacity: number } | undefined);
    const fileSizes = spec.disks.map(() => undefined as number | undefined);
    const digests = new Map<string, string>();
    for (const im of images) {
      if (signal?.aborted) throw cancelled();
      diskFiles[im.index] = { file: im.member, format: 'vmdk', capacity: im.virtualSize };
      fileSizes[im.index] = (await stat(im.tmp)).size;
      digests.set(im.member, await sha256File(im.tmp, signal));
    }
    const encoded = encodeOvf({ spec, diskFiles, name: stem }, { fileSizes });
    notes.push(...encoded.notes);
    const ovfName = `${stem}.ovf`;
    const ovfData = Buffer.from(encoded.files[0]!.data);
    const mfLines = [`SHA256(${ovfName})= ${crypto().createHash('sha256').update(ovfData).digest('hex')}`, ...images.map((im) => `SHA256(${im.member})= ${digests.get(im.member)}`)];
    const mfData = Buffer.from(mfLines.join('\n') + '\n');

    // 3. The tar, streamed with backpressure: .ovf, .mf, then the disks.
    if (signal?.aborted) throw cancelled();
    const tarPack = pack();
    const mtime = new Date();
    const header = (name: string, size: number) => ({ name, size, mode: 0o644, mtime, type: 'file' as const, uid: 0, gid: 0 });
    const out = pipeline(tarPack, createWriteStream(tmpOva, { flags: 'wx' }), { signal });
    const feed = (async () => {
      const put = (name: string, data: Buffer) =>
        new Promise<void>((resolve, reject) => {
          tarPack.entry(header(name, data.length), data, (err) => (err ? reject(err) : resolve()));
        });
      await put(ovfName, ovfData);
      await put(`${stem}.mf`, mfData);
      for (const im of images) {
        const size = (await stat(im.tmp)).size;
        const entry = tarPack.entry(header(im.member, size));
        await pipeline(createReadStream(im.tmp), entry, { signal });
      }
      tarPack.finalize();
    })();
    temps.push(tmpOva);
    try {
      await Promise.all([feed, out]);
    } catch (e) {
      tarPack.destroy();
      await Promise.allSettled([feed, out]);
      throw e;
    }
    if (signal?.aborted) throw cancelled();
    await durableRename(tmpOva, path);
    temps.pop();
    opts.onProgress?.(total, total);
    return { notes };
  } catch (e) {
    if (signal?.aborted) throw cancelled();
    throw isPolyvisorError(e) ? e : fromSystemError(e, path, 'write OVA');
  } finally {
    await Promise.all(temps.map((t) => unlink(t).catch(() => {})));
  }
}

export const ova: VmPackage = {
  name: 'ova',
  description: 'Open Virtual Appliance: an OVF descriptor, its SHA-256 manifest and streamOptimized VMDK disks in one tar',
  usedBy: 'VMware ESXi/vCenter/Workstation/Fusion, VirtualBox, XenServer/XCP-ng (XenCenter), Proxmox, oVirt',
  extensions: ['.ova'],
  probe(head: Buffer): number {
    // A ustar header at 0 whose member name ends in .ovf.
    if (head.length < 512) return 0;
    if (head.toString('latin1', 257, 262) !== 'ustar') return 0;
    const nul = head.indexOf(0, 0);
    const name = head.toString('utf8', 0, nul < 0 || nul > 100 ? 100 : nul);
    return /\.ovf$/i.test(name) ? 95 : 0;
  },
  open(path: string): Promise<VmSource> {
    return openOva(path);
  },
  write: writeOva,
};
