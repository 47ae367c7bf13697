/**
 * VMDK: VMware's virtual disk (VMware "Virtual Disk Format 5.0").
 *
 * Read: monolithicSparse, monolithicFlat, twoGbMaxExtentSparse/Flat, vmfs (flat on a
 * datastore), streamOptimized (compressed grains, markers, GD at the end via the footer),
 * ZERO extents, and ESXi deltas: vmfsSparse ("COWD") and seSparse, with their parent found
 * through parentFileNameHint and checked by CID.
 * Write: every subformat qemu-img writes plus vmfs; sparse deltas over a vmdk parent.
 *
 * Split by concept: vmdk-descriptor.ts (text descriptor), vmdk-sparse.ts (hosted sparse and
 * stream extents), vmdk-delta.ts (COWD, seSparse), vmdk-image.ts (the extent list as a
 * BlockImage). This file probes, opens and creates.
 *
 * Refused: VMFSRDM/VMFSRAW extents (raw device mappings: ERR_UNSUPPORTED), writing to
 * streamOptimized/v3/COWD/seSparse extents that exist (ERR_READ_ONLY/ERR_UNSUPPORTED),
 * out-of-order writes to a new streamOptimized image (ERR_UNSUPPORTED).
 */
import { basename, isAbsolute } from 'node:path';
import { PolyvisorError } from '../../errors.js';
import type { CreateContext, DiskFormat, OpenContext } from '../format.js';
import type { BackingRef, BlockImage } from '../image.js';
import { ImageFile } from '../io.js';
import { optionBool } from '../registry.js';
import { CID_NOPARENT, MAX_DESCRIPTOR_BYTES, formatDescriptor, looksLikeDescriptor, parseDescriptor, type Descriptor, type ExtentLine, type ExtentType } from './vmdk-descriptor.js';
import { COWD_GTES, CowdExtent, SESPARSE_MAGIC, SeSparseExtent } from './vmdk-delta.js';
import { FlatExtent, VmdkImage, ZeroExtent, type PlacedExtent } from './vmdk-image.js';
import { COWD, KDMV, SECTOR, SparseExtent, type VmdkExtent } from './vmdk-sparse.js';
import { crypto } from '../../util/builtins.js';

void COWD_GTES;

const SUBFORMATS = ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized', 'vmfs'] as const;
type Subformat = (typeof SUBFORMATS)[number];
/** ddb.adapterType values VMware defines; pvscsi is a controller type of the .vmx, not of the disk */
const ADAPTERS = ['ide', 'buslogic', 'lsilogic', 'legacyESX'] as const;
/**
 * twoGbMaxExtent* extents: VMware Workstation splits at 2047 MiB (4192256 sectors) so that a
 * fully allocated sparse extent, metadata included, stays under 2 GiB on file systems with
 * that limit. (qemu-img splits at exactly 2 GiB; both read either.)
 */
const SPLIT_SECTORS = 4192256;

function seSparseMagic(b: Uint8Array): boolean {
  return b.length >= 8 && Buffer.from(b.buffer, b.byteOffset, 8).readBigUInt64LE(0) === SESPARSE_MAGIC;
}

function probe(head: Uint8Array): number {
  try {
    if (head.length >= 4) {
      const m = Buffer.from(head.buffer, head.byteOffset, 4);
      if (m.equals(KDMV) || m.equals(COWD)) return 100;
    }
    if (seSparseMagic(head)) return 100;
    return looksLikeDescriptor(head) ? 90 : 0;
  } catch {
    return 0;
  }
}

// ---- open ------------------------------------------------------------------------------

async function openExtentFile(file: ImageFile, line: ExtentLine | null, writable: boolean): Promise<VmdkExtent> {
  const head = await file.readStructure(0, Math.min(8, file.size), 'extent header');
  if (head.length < 4) throw new PolyvisorError('ERR_TRUNCATED', 'extent file is too short to hold a header', { file: file.path, structure: 'extent header', offset: 0 });
  const m = head.subarray(0, 4);
  if (m.equals(KDMV)) return SparseExtent.open(file, { writable, name: line?.file ?? file.path });
  if (m.equals(COWD)) return CowdExtent.open(file);
  if (seSparseMagic(head)) return SeSparseExtent.open(file);
  throw new PolyvisorError('ERR_CORRUPT', `bad magic ${m.toString('hex')}: not a sparse extent (expected "KDMV", "COWD" or seSparse)`, { file: file.path, structure: 'extent header', offset: 0 });
}

async function openVmdk(ctx: OpenContext): Promise<BlockImage> {
  const main = ctx.file;
  if (main.size < 4) throw new PolyvisorError('ERR_TRUNCATED', 'file is too small to be a VMDK', { file: main.path, structure: 'header', offset: 0 });
  const head = await main.readStructure(0, Math.min(main.size, SECTOR), 'header');
  const files: ImageFile[] = [];
  const placed: PlacedExtent[] = [];
  let desc: Descriptor;
  let descOffset = 0;
  let descMax = Infinity;
  const writable = !ctx.readOnly;
  try {
    if (head.subarray(0, 4).equals(KDMV) || head.subarray(0, 4).equals(COWD) || seSparseMagic(head)) {
      // a sparse extent opened directly: monolithicSparse / streamOptimized embed their descriptor
      const ext = await openExtentFile(main, null, writable);
      let embedded: Descriptor | null = null;
      if (ext instanceof SparseExtent && ext.h.descriptorOffset > 0 && ext.h.descriptorSize > 0) {
        descOffset = ext.h.descriptorOffset * SECTOR;
        descMax = ext.h.descriptorSize * SECTOR;
        const raw = await main.readStructure(descOffset, descMax, 'embedded descriptor');
        embedded = parseDescriptor(raw, main.path, 'embedded descriptor', descOffset);
        const sum = embedded.extents.reduce((n, e) => n + e.sectors, 0);
        if (sum * SECTOR !== ext.bytes) {
          throw new PolyvisorError('ERR_CORRUPT', `extent sizes in the embedded descriptor sum to ${sum} sectors, but the header's capacity is ${ext.bytes / SECTOR}`, { file: main.path, structure: 'embedded descriptor', offset: descOffset });
        }
      }
      const type: ExtentType = ext.type as ExtentType;
      desc = embedded ?? {
        version: 1,
        cid: 0,
        parentCid: CID_NOPARENT,
        createType: ext.type === 'SPARSE' ? (ext.compressed ? 'streamOptimized' : 'monolithicSparse') : ext.type === 'VMFSSPARSE' ? 'vmfsSparse' : 'seSparse',
        extents: [{ access: 'RW', sectors: ext.bytes / SECTOR, type, file: basename(main.path), offset: 0, line: 0 }],
        ddb: {},
        other: {},
      };
      if (ext.compressed && desc.createType !== 'streamOptimized') desc.createType = 'streamOptimized';
      placed.push({ start: 0, ext, access: 'RW', name: desc.extents[0]?.file, offset: 0 });
    } else {
      if (main.size > MAX_DESCRIPTOR_BYTES) {
        throw new PolyvisorError('ERR_CORRUPT', `neither a sparse extent nor a descriptor: a ${main.size}-byte text descriptor is beyond the ${MAX_DESCRIPTOR_BYTES}-byte limit`, { file: main.path, structure: 'descriptor', offset: 0 });
      }
      const raw = await main.readStructure(0, main.size, 'descriptor');
      desc = parseDescriptor(raw, main.path);
      const known = ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized', 'vmfs', 'vmfsSparse', 'vmfsThin', 'vmfsPreallocated', 'vmfsEagerZeroedThick', 'seSparse', 'custom', 'fullDevice', 'partitionedDevice', 'vmfsRaw', 'vmfsRawDeviceMap', 'vmfsPassthroughRawDeviceMap'];
      if (!known.includes(desc.createType)) {
        throw new PolyvisorError('ERR_UNSUPPORTED', `createType "${desc.createType}" is not a VMDK create type Polyvisor knows`, { file: main.path, structure: 'descriptor' });
      }
      let start = 0;
      const opened = new Map<string, ImageFile>();
      for (const line of desc.extents) {
        const where = { file: main.path, structure: `descriptor line ${line.line}` };
        let ext: VmdkExtent;
        if (line.type === 'ZERO') ext = new ZeroExtent(line.sectors * SECTOR);
        else if (line.type === 'VMFSRDM' || line.type === 'VMFSRAW') {
          throw new PolyvisorError('ERR_UNSUPPORTED', `${line.type} extents map a raw device of the ESXi host; copy the device's content instead`, where);
        } else {
          if (line.access === 'NOACCESS') {
            placed.push({ start, ext: new ZeroExtent(line.sectors * SECTOR), access: 'NOACCESS', name: line.file, offset: 0 });
            start += line.sectors * SECTOR;
            continue;
          }
          if (opened.has(line.file!)) {
            throw new PolyvisorError('ERR_CORRUPT', `line ${line.line}: extent file "${line.file}" is named twice`, where);
          }
          const f = await ctx.openFile(line.file!);
          files.push(f);
          opened.set(line.file!, f);
          if (line.type === 'FLAT' || line.type === 'VMFS') ext = new FlatExtent(line.type, f, line.sectors * SECTOR, line.offset * SECTOR);
          else {
            ext = await openExtentFile(f, line, writable && line.access === 'RW');
            if (ext.bytes !== line.sectors * SECTOR) {
              throw new PolyvisorError('ERR_CORRUPT', `line ${line.line}: extent "${line.file}" is ${line.sectors} sectors in the descriptor but its header says ${ext.bytes / SECTOR}`, where);
            }
          }
        }
        placed.push({ start, ext, access: line.access, name: line.file, offset: line.offset });
        start += line.sectors * SECTOR;
      }
      if (!Number.isSafeInteger(start) || start > 2 ** 52) throw new PolyvisorError('ERR_CORRUPT', 'extent sizes sum beyond any real disk', { file: main.path, structure: 'descriptor' });
    }

    let backing: BlockImage | null = null;
    let backingRef: BackingRef | null = null;
    if (desc.parentFileNameHint !== undefined && desc.parentFileNameHint !== '') {
      const hint = desc.parentFileNameHint;
      backingRef = { name: hint, format: 'vmdk' };
      // ESXi records datastore paths ("/vmfs/volumes/…/base.vmdk"), Windows hosts drive paths:
      // when that path is not here, the parent is looked for beside the child
      const candidates = [hint];
      const base = hint.split(/[\\/]/).pop()!;
      if ((isAbsolute(hint) || hint.includes('\\')) && base && base !== hint) candidates.push(base);
      backing = await ctx.openBacking(candidates, 'vmdk');
      if (backing) {
        backingRef.resolved = backing.path;
        // Spec ("parentCID"): the child was made from the parent whose CID it records; another
        // CID means the parent changed since, and reading through it would mix two disks.
        // qemu refuses such reads too (vmdk_is_cid_valid), so we refuse at open, saying why.
        const pcid = (backing.formatInfo() as { cid?: number }).cid;
        if (desc.parentCid !== CID_NOPARENT && typeof pcid === 'number' && pcid !== desc.parentCid) {
          await backing.close();
          throw new PolyvisorError('ERR_CHAIN_MISMATCH', `parentCID ${desc.parentCid.toString(16)} does not match the CID ${pcid.toString(16)} of parent "${hint}": the parent was modified after this delta was taken`, { file: main.path, structure: 'descriptor' });
        }
      }
    }
    return new VmdkImage({ main, desc, descFile: main, descOffset, descMax, extents: placed, files, readOnly: ctx.readOnly, backing, backingRef, created: false });
  } catch (e) {
    for (const f of files) await f.close();
    throw e;
  }
}

// ---- create ----------------------------------------------------------------------------

function invalid(detail: string): PolyvisorError {
  return new PolyvisorError('ERR_INVALID_OPTION', `vmdk: ${detail}`);
}

/**
 * ddb.geometry as VMware writes it: IDE disks 16 heads, SCSI disks 255 heads, 63 sectors per
 * track; IDE cylinders stop at 16383 (the ATA CHS limit), SCSI cylinders are not limited.
 */
export function vmdkGeometry(bytes: number, adapter: string): { cylinders: number; heads: number; sectors: number } {
  const heads = adapter === 'ide' ? 16 : 255;
  let cylinders = Math.floor(bytes / (63 * heads * SECTOR));
  if (adapter === 'ide') cylinders = Math.min(cylinders, 16383);
  return { cylinders, heads, sectors: 63 };
}

async function createVmdk(ctx: CreateContext): Promise<BlockImage> {
  const o = ctx.options;
  const compress = optionBool(o, 'compress', false);
  let sub = (o.subformat ?? (compress ? 'streamOptimized' : 'monolithicSparse')) as Subformat;
  if (!SUBFORMATS.includes(sub)) throw invalid(`subformat "${sub}" is not one of ${SUBFORMATS.join(', ')}`);
  if (compress && sub !== 'streamOptimized') throw invalid(`compress=on needs subformat=streamOptimized, not ${sub}`);
  const adapter = o.adapter_type ?? 'ide';
  if (!(ADAPTERS as readonly string[]).includes(adapter)) throw invalid(`adapter_type "${adapter}" is not one of ${ADAPTERS.join(', ')}`);
  const compat6 = optionBool(o, 'compat6', false);
  if (compat6 && o.hwversion !== undefined) throw invalid('compat6 cannot be combined with hwversion');
  const hw = compat6 ? '6' : (o.hwversion ?? '4');
  const tools = o.toolsversion ?? '2147483647';
  const zeroedGrain = optionBool(o, 'zeroed_grain', false);
  const flat = sub === 'monolithicFlat' || sub === 'twoGbMaxExtentFlat' || sub === 'vmfs';
  const split = sub === 'twoGbMaxExtentSparse' || sub === 'twoGbMaxExtentFlat';
  const stream = sub === 'streamOptimized';
  if (flat && zeroedGrain) throw invalid(`${sub} has no grains: zeroed_grain needs a sparse subformat`);
  if (ctx.backing && (flat || stream)) throw invalid(`a ${sub} image cannot have a backing file; use monolithicSparse or twoGbMaxExtentSparse`);
  if (ctx.backing && ctx.backing.format !== 'vmdk') throw invalid(`the backing file must be a vmdk image, not ${ctx.backing.format}`);
  if (o.level !== undefined && !/^[0-9]$/.test(o.level)) throw invalid(`level "${o.level}" is not 0..9`);

  const sectors = Math.ceil(ctx.virtualSize / SECTOR);
  if (sectors === 0) throw invalid('a VMDK needs a size of at least one sector');
  if (!flat && sectors > 2 ** 32 * 64) throw invalid('the disk is larger than hosted sparse extents can describe');
  const name = basename(ctx.finalPath);
  const dot = name.lastIndexOf('.');
  const prefix = dot > 0 ? name.slice(0, dot) : name;
  const postfix = dot > 0 ? name.slice(dot) : '';
  const cid = crypto().randomInt(0, 0xfffffffe);
  const parentCid = ctx.backing ? ((ctx.backing.image.formatInfo() as { cid?: number }).cid ?? CID_NOPARENT) : CID_NOPARENT;
  const g = vmdkGeometry(sectors * SECTOR, adapter);
  const ddb: Array<[string, string]> = [
    ['virtualHWVersion', hw],
    ['geometry.cylinders', String(g.cylinders)],
    ['geometry.heads', String(g.heads)],
    ['geometry.sectors', String(g.sectors)],
    ['adapterType', adapter],
    ['toolsVersion', tools],
  ];

  // extent plan: [sectors, file name]
  const plan: Array<{ sectors: number; file: string }> = [];
  if (split) {
    for (let s = 0, i = 1; s < sectors; s += SPLIT_SECTORS, i++) {
      plan.push({ sectors: Math.min(SPLIT_SECTORS, sectors - s), file: `${prefix}-${flat ? 'f' : 's'}${String(i).padStart(3, '0')}${postfix}` });
    }
  } else if (flat) plan.push({ sectors, file: `${prefix}-flat${postfix}` });
  else plan.push({ sectors, file: name });
  const type: ExtentType = sub === 'vmfs' ? 'VMFS' : flat ? 'FLAT' : 'SPARSE';
  const fields = {
    cid,
    parentCid,
    createType: sub,
    parentFileNameHint: ctx.backing?.name,
    extents: plan.map((p) => ({ access: 'RW' as const, sectors: p.sectors, type, file: p.file, offset: 0 })),
    ddb,
  };
  const text = formatDescriptor(fields);
  const desc = parseDescriptor(Buffer.from(text), ctx.finalPath);

  const files: ImageFile[] = [];
  const main = await ImageFile.create(ctx.path, ctx.cache);
  try {
    const placed: PlacedExtent[] = [];
    let descMax = Infinity;
    let descOffset = 0;
    if (!flat && !split) {
      const ext = await SparseExtent.create(main, { capacity: sectors, zeroedGrain, stream, descriptor: text });
      if (stream && o.level !== undefined) ext.setCompressionLevel(Number(o.level));
      descOffset = ext.h.descriptorOffset * SECTOR;
      descMax = ext.h.descriptorSize * SECTOR;
      placed.push({ start: 0, ext, access: 'RW', name, offset: 0 });
    } else {
      await main.writeAt(Buffer.from(text), 0);
      let start = 0;
      for (const p of plan) {
        const f = await ctx.companion(p.file);
        files.push(f);
        let ext: VmdkExtent;
        if (flat) {
          await f.truncate(p.sectors * SECTOR);
          ext = new FlatExtent(type, f, p.sectors * SECTOR, 0);
        } else {
          ext = await SparseExtent.create(f, { capacity: p.sectors, zeroedGrain, stream: false, descriptor: null });
        }
        placed.push({ start, ext, access: 'RW', name: p.file, offset: 0 });
        start += p.sectors * SECTOR;
      }
    }
    const backingRef: BackingRef | null = ctx.backing ? { name: ctx.backing.name, format: 'vmdk', resolved: ctx.backing.image.path } : null;
    return new VmdkImage({ main, desc, descFile: main, descOffset, descMax, extents: placed, files, readOnly: false, backing: ctx.backing?.image ?? null, backingRef, created: true });
  } catch (e) {
    for (const f of [main, ...files]) await f.close();
    throw e;
  }
}

export const vmdk: DiskFormat = {
  name: 'vmdk',
  aliases: [],
  description: 'VMware virtual disk: monolithic/split sparse and flat, vmfs, streamOptimized (OVA), ESXi deltas (read)',
  usedBy: 'VMware ESXi, Workstation, Fusion; OVA/OVF packages; VirtualBox',
  capabilities: { read: true, write: true, backing: true, compression: true, zeroInit: true, check: true },
  createOptions: [
    { name: 'subformat', type: 'enum', values: SUBFORMATS, default: 'monolithicSparse', description: 'monolithicSparse (one growable file), monolithicFlat (descriptor + NAME-flat.vmdk), twoGbMaxExtentSparse/Flat (2 GB pieces), streamOptimized (compressed, for OVA), vmfs (ESXi datastore layout)' },
    { name: 'adapter_type', type: 'enum', values: ADAPTERS, default: 'ide', description: 'ddb.adapterType: ide, buslogic, lsilogic or legacyESX (sets the geometry: 16 or 255 heads)' },
    { name: 'hwversion', type: 'string', default: '4', description: 'ddb.virtualHWVersion (4 opens everywhere)' },
    { name: 'toolsversion', type: 'string', default: '2147483647', description: 'ddb.toolsVersion' },
    { name: 'compat6', type: 'bool', default: 'off', description: 'hwversion 6' },
    { name: 'zeroed_grain', type: 'bool', default: 'off', description: 'record zeroed grains in grain tables (version 2 sparse extents)' },
    { name: 'compress', type: 'bool', default: 'off', description: 'store compressed grains (convert -c): means subformat=streamOptimized' },
    { name: 'level', type: 'int', default: '6', description: 'streamOptimized zlib level, 0..9' },
    { name: 'backing_fmt', type: 'enum', values: ['vmdk'], description: 'must be vmdk when given' },
  ],
  probe,
  open: openVmdk,
  create: createVmdk,
};
