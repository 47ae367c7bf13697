/**
 * XVA: the package XenServer and XCP-ng write with `xe vm-export` and read with
 * `xe vm-import` (Xen Orchestra too). A tar file (xen-api ocaml/xapi/export.ml, stream_vdi.ml,
 * import.ml):
 *
 *   ova.xml                       the VM's metadata as one XML-RPC struct (xva-metadata.ts);
 *                                 XAPI refuses an archive that does not start with it
 *   Ref:N/00000000                1 MiB of raw disk bytes of the VDI whose id is Ref:N
 *   Ref:N/00000000.checksum       its SHA-1 (or Ref:N/00000000.xxhash: XXH64, newer XAPI)
 *   Ref:N/00000003 ...            chunks that read as zeroes are left out, but never the
 *                                 first nor the last
 *
 * VDIs follow each other in the lexicographic order of their ids (XAPI's importer reads them
 * in that order from a stream); CD-ROM VDIs are never streamed.
 *
 * Reading serves each disk in place from the tar (xva-disk.ts), with checksums verified as
 * chunks are first read; `verifyXva` verifies everything up front. Writing streams the tar with
 * tar-stream: ova.xml, then each disk's allocated chunks with a `.checksum` after each,
 * atomically (temporary name beside the destination, renamed when complete).
 *
 * Not supported, refused with ERR_UNSUPPORTED: compressed exports (`compress=true`: the whole
 * tar is gzip or zstd; decompress first), the first-generation XVA (ova.xml <appliance>,
 * gzipped chunk files), and compressed chunk members.
 */
import { createWriteStream } from 'node:fs';
import { stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { pack as tarPack, type Pack } from 'tar-stream';
import { PolyvisorError, fromSystemError, hex } from '../../errors.js';
import { mapChain } from '../../disk/chain.js';
import type { BlockImage } from '../../disk/image.js';
import { ImageFile, isZero } from '../../disk/io.js';
import { durableRename } from '../../disk/output.js';
import type { ConversionNote, PackageWriteOptions, SourceDisk, VmPackage, VmSource } from '../codec.js';
import type { VmSpec } from '../spec.js';
import { MAX_XML_BYTES } from '../xml.js';
import { BLOCK, TarArchive, quoteName, type TarMember } from './tar.js';
import { CHUNK_SIZE, XvaDisk, chunkIsZero, chunkDigest, type XvaChunk } from './xva-disk.js';
import { headerToSpec, parseOvaXml, renderOvaXml, specToHeader, type XvaDiskRef } from './xva-metadata.js';
import { crypto } from '../../util/builtins.js';

/**
 * Members an XVA index holds at most: a fully allocated 2 TiB disk is 4M members (a chunk and
 * its checksum per MiB); each costs about 200 bytes of memory.
 */
const MAX_XVA_MEMBERS = 4_200_000;

const CHUNK_NAME = /^(.+)\/(\d{1,12})$/;
const CHECKSUM_NAME = /^(.+)\/(\d{1,12})\.(checksum|xxhash)$/;

function tarHeaderNamed(head: Buffer, name: string): boolean {
  if (head.length < BLOCK) return false;
  const field = head.subarray(0, 100);
  const nul = field.indexOf(0);
  const n = field.subarray(0, nul < 0 ? 100 : nul).toString('latin1');
  if (n !== name && n !== `./${name}`) return false;
  // header checksum: bytes summed with the chksum field as spaces
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : head[i]!;
  const stored = parseInt(head.subarray(148, 156).toString('latin1').replace(/[\0 ]+$/, '').trim(), 8);
  return stored === sum;
}

function compression(head: Buffer): string | undefined {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  return undefined;
}

/** Where each chunk of VDI `vdiRef` lands, by the rule of XAPI's importer (see xva-disk.ts). */
async function layoutChunks(tar: TarArchive, ref: XvaDiskRef, byPrefix: Map<string, TarMember[]>): Promise<XvaChunk[]> {
  const path = tar.path;
  const members = byPrefix.get(ref.vdiRef) ?? [];
  const chunks: XvaChunk[] = [];
  let lastNo = -1;
  let end = 0;
  for (const m of members) {
    const cm = CHECKSUM_NAME.exec(m.name);
    if (cm) continue;
    const dm = CHUNK_NAME.exec(m.name)!;
    const no = Number(dm[2]);
    const where = { file: path, structure: `chunk ${m.name}`, offset: m.headerOffset };
    if (m.type !== 'file') throw new PolyvisorError('ERR_CORRUPT', `chunk ${quoteName(m.name)} is not a regular file`, where);
    if (no <= lastNo) throw new PolyvisorError('ERR_CORRUPT', `chunk ${quoteName(m.name)} follows chunk ${lastNo}: chunk numbers must increase`, where);
    if (m.size > CHUNK_SIZE) throw new PolyvisorError('ERR_CORRUPT', `chunk ${quoteName(m.name)} holds ${m.size} bytes, more than the 1 MiB chunk size`, where);
    const pos = end + (no - lastNo - 1) * CHUNK_SIZE;
    if (pos + m.size > ref.virtualSize) {
      // Xen Orchestra once wrote a trailing all-zero "last chunk" one number too far: harmless, skip it
      if (pos >= ref.virtualSize && (await chunkIsZero(tar.file, m))) {
        lastNo = no;
        continue;
      }
      throw new PolyvisorError('ERR_CORRUPT', `chunk ${quoteName(m.name)} (${m.size} bytes at guest offset ${hex(pos)}) lies past the end of the ${ref.virtualSize}-byte VDI`, where);
    }
    const sha = tar.get(`${m.name}.checksum`);
    const xxh = tar.get(`${m.name}.xxhash`);
    const cs = sha ?? xxh;
    chunks.push({ pos, member: m, ...(cs ? { checksum: { member: cs, algorithm: sha ? 'sha1' : 'xxh64' } } : {}) });
    lastNo = no;
    end = pos + m.size;
  }
  if (ref.virtualSize > 0 && chunks.length === 0) {
    throw new PolyvisorError('ERR_CORRUPT', `no chunks for VDI ${ref.vdiRef} ("${ref.name}"): the archive does not hold this disk`, { file: path, structure: `VDI ${ref.vdiRef}` });
  }
  return chunks;
}

interface OpenedXva {
  tar: TarArchive;
  spec: VmSpec;
  notes: ConversionNote[];
  disks: Array<{ ref: XvaDiskRef; chunks: XvaChunk[] }>;
}

async function openXva(path: string): Promise<OpenedXva> {
  const head = Buffer.alloc(BLOCK);
  const f = await ImageFile.open(path, false);
  try {
    await f.readInto(head, 0);
  } finally {
    await f.close();
  }
  const comp = compression(head);
  if (comp) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `this XVA is ${comp}-compressed (xe vm-export compress=true); disks cannot be read in place from a compressed stream: decompress it first (${comp === 'gzip' ? 'gunzip' : 'zstd -d'})`, { file: path, offset: 0 });
  }
  const tar = await TarArchive.open(path, { maxMembers: MAX_XVA_MEMBERS });
  try {
    const first = tar.members[0];
    if (!first || first.name !== 'ova.xml') {
      throw new PolyvisorError('ERR_CORRUPT', `an XVA starts with ova.xml, but the first member is ${first ? quoteName(first.name) : 'missing'}`, { file: path, structure: 'tar header', offset: first?.headerOffset ?? 0 });
    }
    const xml = await tar.readMember(first, MAX_XML_BYTES);
    const header = parseOvaXml(xml, `${path}: ova.xml`);
    const { spec, disks, notes } = headerToSpec(header, `${path}: ova.xml`);
    const byPrefix = new Map<string, TarMember[]>();
    const wanted = new Set(disks.map((d) => d.vdiRef));
    for (const m of tar.members) {
      if (m === first) continue;
      if (/\/\d+\.gz$/.test(m.name)) {
        throw new PolyvisorError('ERR_UNSUPPORTED', `member ${quoteName(m.name)} is a compressed chunk of the first-generation XVA layout`, { file: path, structure: 'tar header', offset: m.headerOffset });
      }
      const dm = CHUNK_NAME.exec(m.name);
      if (!dm || !wanted.has(dm[1]!)) continue;
      let list = byPrefix.get(dm[1]!);
      if (!list) byPrefix.set(dm[1]!, (list = []));
      list.push(m);
    }
    const out: OpenedXva['disks'] = [];
    for (const ref of disks) out.push({ ref, chunks: await layoutChunks(tar, ref, byPrefix) });
    return { tar, spec, notes, disks: out };
  } catch (e) {
    await tar.close();
    throw e;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Adds one member to the tar; resolves once tar-stream has taken it (backpressure). */
function addEntry(p: Pack, name: string, data: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    p.entry({ name, size: data.length, mode: 0o644, type: 'file', mtime: new Date() }, data, (err) => (err ? reject(err) : resolve()));
  });
}

/** Chunk numbers of `image` that may hold data: those overlapping a data extent of the chain. */
async function allocatedChunks(image: BlockImage): Promise<number[]> {
  const set = new Set<number>();
  const last = Math.ceil(image.virtualSize / CHUNK_SIZE) - 1;
  if (last < 0) return [];
  set.add(0);
  set.add(last);
  for await (const e of mapChain(image)) {
    if (e.kind !== 'data') continue;
    const a = Math.floor(e.offset / CHUNK_SIZE);
    const b = Math.floor((e.offset + e.length - 1) / CHUNK_SIZE);
    for (let i = a; i <= b; i++) set.add(i);
  }
  return [...set].sort((x, y) => x - y);
}

async function writeXva(source: VmSource, path: string, opts: PackageWriteOptions): Promise<{ notes: ConversionNote[] }> {
  if (!opts.force && (await exists(path))) {
    throw new PolyvisorError('ERR_EXISTS', 'destination exists; pass --force to replace it', { file: path });
  }
  const images = new Map<number, { disk: SourceDisk; image: BlockImage }>();
  const tmp = join(dirname(path), `.${basename(path)}.${crypto().randomBytes(4).toString('hex')}.pv-partial`);
  let written = false;
  try {
    for (const d of source.disks) images.set(d.index, { disk: d, image: await d.open() });
    const spec: VmSpec = structuredClone(source.spec);
    for (const [i, { image }] of images) if (spec.disks[i]) spec.disks[i]!.capacity = image.virtualSize;
    const { header, vdiRefs, notes } = specToHeader(spec, new Set(images.keys()));
    for (const d of source.disks) {
      if (!spec.disks[d.index]) throw new PolyvisorError('ERR_INTERNAL', `source disk ${d.label} has no entry ${d.index} in the VM's disks`, { file: source.path });
    }
    const total = [...vdiRefs.keys()].reduce((n, i) => n + images.get(i)!.image.virtualSize, 0);
    let done = 0;
    opts.onProgress?.(0, total);

    const p = tarPack();
    const out = createWriteStream(tmp, { flags: 'wx' });
    const piped = pipeline(p, out);
    piped.catch(() => {});
    written = true;
    try {
      await addEntry(p, 'ova.xml', Buffer.from(renderOvaXml(header), 'utf8'));
      // XAPI's importer reads the VDIs in the lexicographic order of their ids
      const order = [...vdiRefs.entries()].sort((a, b) => (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
      const buf = Buffer.alloc(CHUNK_SIZE);
      for (const [index, ref] of order) {
        const { image, disk } = images.get(index)!;
        const size = image.virtualSize;
        const lastNo = Math.ceil(size / CHUNK_SIZE) - 1;
        let reported = 0;
        for (const no of await allocatedChunks(image)) {
          if (opts.signal?.aborted) throw new PolyvisorError('ERR_ABORTED', 'XVA write cancelled', { file: path });
          const pos = no * CHUNK_SIZE;
          const len = Math.min(CHUNK_SIZE, size - pos);
          const data = buf.subarray(0, len);
          try {
            await image.read(data, pos);
          } catch (e) {
            throw e instanceof PolyvisorError ? e : fromSystemError(e, disk.label, `read at ${hex(pos)}`);
          }
          if (no === 0 || no === lastNo || !isZero(data)) {
            const name = `${ref}/${String(no).padStart(8, '0')}`;
            await addEntry(p, name, Buffer.from(data));
            await addEntry(p, `${name}.checksum`, Buffer.from(await chunkDigest(data, 'sha1'), 'latin1'));
          }
          done += pos + len - reported;
          reported = pos + len;
          opts.onProgress?.(done, total);
        }
        done += size - reported;
      }
      p.finalize();
      await piped;
    } catch (e) {
      p.destroy();
      out.destroy();
      await piped.catch(() => {});
      throw e;
    }
    opts.onProgress?.(total, total);
    await durableRename(tmp, path);
    written = false;
    return { notes };
  } catch (e) {
    if (written) await unlink(tmp).catch(() => {});
    throw e instanceof PolyvisorError ? e : fromSystemError(e, path, 'write XVA');
  } finally {
    for (const { image } of images.values()) await image.close().catch(() => {});
  }
}

/**
 * Verifies every chunk of every disk of an XVA against its checksum member (ERR_CHECKSUM at the
 * first that fails). Returns the counts.
 */
export async function verifyXva(path: string, opts: { signal?: AbortSignal; onProgress?: (done: number, total: number) => void } = {}): Promise<{ disks: number; chunks: number; verified: number }> {
  const x = await openXva(path);
  try {
    let chunks = 0;
    let verified = 0;
    const total = x.disks.reduce((n, d) => n + d.chunks.reduce((m, c) => m + c.member.size, 0), 0);
    let done = 0;
    for (const d of x.disks) {
      const disk = new XvaDisk(await ImageFile.open(path, false), d.ref.vdiRef, d.ref.virtualSize, d.chunks);
      try {
        const r = await disk.verify({ signal: opts.signal, onChunk: (n) => opts.onProgress?.((done += n), total) });
        chunks += r.chunks;
        verified += r.verified;
      } finally {
        await disk.close();
      }
    }
    return { disks: x.disks.length, chunks, verified };
  } finally {
    await x.tar.close();
  }
}

export const xva: VmPackage = {
  name: 'xva',
  description: 'XenServer / XCP-ng export (tar of ova.xml and 1 MiB checksummed disk chunks)',
  usedBy: 'XenServer, XCP-ng, Xen Orchestra',
  extensions: ['.xva'],
  probe(head: Buffer, path: string): number {
    try {
      if (tarHeaderNamed(head, 'ova.xml')) return 95;
      // a compressed export: claim it so that open() can say what to do
      if (compression(head) && /\.xva$/i.test(path)) return 60;
      return 0;
    } catch {
      return 0;
    }
  },
  async open(path: string): Promise<VmSource> {
    const x = await openXva(path);
    const disks: SourceDisk[] = x.disks.map(({ ref, chunks }) => ({
      index: ref.index,
      label: `${ref.vdiRef} ("${ref.name}") in ${basename(path)}`,
      open: async () => new XvaDisk(await ImageFile.open(path, false), ref.vdiRef, ref.virtualSize, chunks),
    }));
    return {
      path,
      kind: 'xva',
      spec: x.spec,
      disks,
      notes: x.notes,
      close: () => x.tar.close(),
    };
  },
  write: writeXva,
  verify: (path, opts) => verifyXva(path, opts),
};
