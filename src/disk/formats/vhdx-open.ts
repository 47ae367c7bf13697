/**
 * Opening and creating VHDX images (MS-VHDX). Every offset and length read from the file is
 * validated against the file and against the other structures before it is used.
 */
import { dirname, relative, resolve } from 'node:path';
import { PolyvisorError, hex } from '../../errors.js';
import type { CreateContext, OpenContext } from '../format.js';
import { ImageFile, alignUp } from '../io.js';
import { optionBool, optionSize } from '../registry.js';
import { FileView, type Region, checkRegionsApart, throwReport, validateBat } from './vhdx-layout.js';
import { readLog } from './vhdx-log.js';
import { type LogState, type VhdxLayout, VhdxImage } from './vhdx-image.js';
import {
  BAT_GUID,
  FILE_ID_SIGNATURE,
  FILE_PARAMETERS_GUID,
  HEADER_OFFSETS,
  HEADER_SECTION_SIZE,
  HEADER_SIZE,
  type Header,
  LOGICAL_SECTOR_SIZE_GUID,
  MAX_BLOCK_SIZE,
  MAX_METADATA_ITEM,
  MAX_TABLE_ENTRIES,
  MAX_VIRTUAL_SIZE,
  METADATA_GUID,
  METADATA_SIGNATURE,
  METADATA_TABLE_SIZE,
  MIN_BLOCK_SIZE,
  MiB,
  type MetadataEntry,
  PARENT_LOCATOR_GUID,
  PAYLOAD_BLOCK_FULLY_PRESENT,
  PAYLOAD_BLOCK_ZERO,
  PHYSICAL_SECTOR_SIZE_GUID,
  REGION_TABLE_OFFSETS,
  REGION_TABLE_SIZE,
  type RegionEntry,
  VIRTUAL_DISK_ID_GUID,
  VIRTUAL_DISK_SIZE_GUID,
  batGeometry,
  buildFileIdentifier,
  buildHeader,
  buildMetadataTable,
  buildParentLocator,
  buildRegionTable,
  guidText,
  isPowerOfTwo,
  newGuid,
  parseGuidText,
  parseHeader,
  parseParentLocator,
  parseRegionTable,
  payloadIndex,
  setBatEntry,
  u64,
} from './vhdx-structs.js';

const KNOWN_ITEMS: Array<[Buffer, string]> = [
  [FILE_PARAMETERS_GUID, 'File Parameters'],
  [VIRTUAL_DISK_SIZE_GUID, 'Virtual Disk Size'],
  [VIRTUAL_DISK_ID_GUID, 'Virtual Disk ID'],
  [LOGICAL_SECTOR_SIZE_GUID, 'Logical Sector Size'],
  [PHYSICAL_SECTOR_SIZE_GUID, 'Physical Sector Size'],
  [PARENT_LOCATOR_GUID, 'Parent Locator'],
];

function knownItem(id: Buffer): string | undefined {
  for (const [g, name] of KNOWN_ITEMS) if (g.equals(id)) return name;
  return undefined;
}

/** Picks the current header (2.2.2.1): the valid one with the highest SequenceNumber. */
async function readHeaders(file: ImageFile): Promise<{ header: Header; slot: number; notes: string[] }> {
  const path = file.path;
  const valid: Array<{ header: Header; slot: number }> = [];
  const notes: string[] = [];
  let bad: { slot: number; stored: number; computed: number } | null = null;
  for (let slot = 0; slot < 2; slot++) {
    const at = HEADER_OFFSETS[slot]!;
    const structure = `header ${slot + 1}`;
    const st = parseHeader(await file.readStructure(at, HEADER_SIZE, structure), { file: path, structure, offset: at });
    if (st.ok) valid.push({ header: st.header, slot });
    else {
      notes.push(`${structure} at ${hex(at)} is not valid (${st.why === 'bad-checksum' ? 'checksum mismatch' : 'no "head" signature'}); the other header was used`);
      if (st.why === 'bad-checksum' && !bad) bad = { slot, stored: st.stored!, computed: st.computed! };
    }
  }
  if (valid.length === 0) {
    if (bad) {
      throw new PolyvisorError('ERR_CHECKSUM', `neither header is valid: checksum is ${hex(bad.stored)} but the header sums to ${hex(bad.computed)}`, { file: path, structure: `header ${bad.slot + 1}`, offset: HEADER_OFFSETS[bad.slot] });
    }
    throw new PolyvisorError('ERR_CORRUPT', 'neither header has the "head" signature', { file: path, structure: 'header 1', offset: HEADER_OFFSETS[0] });
  }
  valid.sort((a, b) => (a.header.sequenceNumber > b.header.sequenceNumber ? -1 : a.header.sequenceNumber < b.header.sequenceNumber ? 1 : a.slot - b.slot));
  const cur = valid[0]!;
  const h = cur.header;
  const ctx = { file: path, structure: `header ${cur.slot + 1}`, offset: HEADER_OFFSETS[cur.slot] };
  if (h.version !== 1) throw new PolyvisorError('ERR_UNSUPPORTED', `Version ${h.version} (only version 1 is defined)`, ctx);
  if (h.logVersion !== 0) throw new PolyvisorError('ERR_UNSUPPORTED', `LogVersion ${h.logVersion} (only version 0 is defined)`, ctx);
  if (h.logLength % MiB !== 0 || h.logOffset % MiB !== 0) throw new PolyvisorError('ERR_CORRUPT', `log at ${hex(h.logOffset)}, ${h.logLength} bytes, is not on 1 MiB boundaries`, ctx);
  if (h.logLength > 0 && h.logOffset < HEADER_SECTION_SIZE) throw new PolyvisorError('ERR_CORRUPT', `log at ${hex(h.logOffset)} lies in the header section`, ctx);
  if (h.logOffset + h.logLength > file.size) {
    throw new PolyvisorError('ERR_TRUNCATED', `log at ${hex(h.logOffset)} (${h.logLength} bytes) ends past the end of the file at ${hex(file.size)}`, ctx);
  }
  return { header: h, slot: cur.slot, notes };
}

/** The first valid region table (2.2.3), its entries checked against the file. */
async function readRegions(view: FileView, header: Header, notes: string[]): Promise<{ bat: RegionEntry; metadata: RegionEntry; regions: Region[] }> {
  const path = view.path;
  let table: RegionEntry[] | null = null;
  let tableAt = 0;
  let bad: { n: number; stored: number; computed: number } | null = null;
  for (let n = 0; n < 2 && !table; n++) {
    const at = REGION_TABLE_OFFSETS[n]!;
    const structure = `region table ${n + 1}`;
    const st = parseRegionTable(await view.readStructure(at, REGION_TABLE_SIZE, structure), { file: path, structure, offset: at });
    if (st.ok) {
      table = st.entries;
      tableAt = at;
    } else {
      notes.push(`${structure} at ${hex(at)} is not valid (${st.why === 'bad-checksum' ? 'checksum mismatch' : 'no "regi" signature'})`);
      if (st.why === 'bad-checksum' && !bad) bad = { n, stored: st.stored!, computed: st.computed! };
    }
  }
  if (!table) {
    if (bad) throw new PolyvisorError('ERR_CHECKSUM', `neither region table is valid: checksum is ${hex(bad.stored)} but the table sums to ${hex(bad.computed)}`, { file: path, structure: `region table ${bad.n + 1}`, offset: REGION_TABLE_OFFSETS[bad.n] });
    throw new PolyvisorError('ERR_CORRUPT', 'neither region table has the "regi" signature', { file: path, structure: 'region table 1', offset: REGION_TABLE_OFFSETS[0] });
  }
  const regions: Region[] = [{ start: 0, end: HEADER_SECTION_SIZE, name: 'header section' }];
  if (header.logLength > 0) regions.push({ start: header.logOffset, end: header.logOffset + header.logLength, name: 'log' });
  let bat: RegionEntry | null = null;
  let metadata: RegionEntry | null = null;
  table.forEach((e, i) => {
    const name = e.guid.equals(BAT_GUID) ? 'BAT region' : e.guid.equals(METADATA_GUID) ? 'metadata region' : `region ${guidText(e.guid)}`;
    const ctx = { file: path, structure: `region table entry ${i} (${name})`, offset: tableAt + 16 + i * 32 };
    if (name.startsWith('region ') && e.required) throw new PolyvisorError('ERR_UNSUPPORTED', `required region ${guidText(e.guid)} is not one Polyvisor knows`, ctx);
    if (e.fileOffset % MiB !== 0 || e.length % MiB !== 0 || e.length === 0) throw new PolyvisorError('ERR_CORRUPT', `region at ${hex(e.fileOffset)} of ${e.length} bytes is not whole MiB on 1 MiB boundaries`, ctx);
    if (e.fileOffset + e.length > view.size) throw new PolyvisorError('ERR_TRUNCATED', `region at ${hex(e.fileOffset)} of ${e.length} bytes ends past the end of the file at ${hex(view.size)}`, ctx);
    if ((name === 'BAT region' && bat) || (name === 'metadata region' && metadata)) throw new PolyvisorError('ERR_CORRUPT', `a second ${name}`, ctx);
    if (name === 'BAT region') bat = e;
    if (name === 'metadata region') metadata = e;
    regions.push({ start: e.fileOffset, end: e.fileOffset + e.length, name });
  });
  if (!bat || !metadata) throw new PolyvisorError('ERR_CORRUPT', `the region table has no ${bat ? 'metadata' : 'BAT'} region`, { file: path, structure: 'region table', offset: tableAt });
  checkRegionsApart(regions, path);
  return { bat, metadata, regions };
}

interface Metadata {
  blockSize: number;
  leaveBlocksAllocated: boolean;
  hasParent: boolean;
  virtualSize: number;
  virtualDiskId: Buffer;
  logicalSectorSize: number;
  physicalSectorSize: number;
  locator: Map<string, string> | null;
}

/** The metadata table (2.6.1) and the system items (2.6.2). */
async function readMetadata(view: FileView, region: RegionEntry): Promise<Metadata> {
  const path = view.path;
  const base = region.fileOffset;
  const tctx = { file: path, structure: 'metadata table', offset: base };
  if (region.length < METADATA_TABLE_SIZE) throw new PolyvisorError('ERR_CORRUPT', `the metadata region (${region.length} bytes) cannot hold its 64 KiB table`, tctx);
  const t = await view.readStructure(base, METADATA_TABLE_SIZE, 'metadata table');
  if (!t.subarray(0, 8).equals(METADATA_SIGNATURE)) throw new PolyvisorError('ERR_CORRUPT', 'no "metadata" signature', tctx);
  const count = t.readUInt16LE(10);
  if (count > MAX_TABLE_ENTRIES) throw new PolyvisorError('ERR_CORRUPT', `EntryCount is ${count}, more than the ${MAX_TABLE_ENTRIES} allowed`, tctx);
  const items = new Map<string, { entry: MetadataEntry; data: Buffer; at: number }>();
  const spans: Region[] = [];
  for (let i = 0; i < count; i++) {
    const at = 32 + i * 32;
    const e: MetadataEntry = {
      itemId: Buffer.from(t.subarray(at, at + 16)),
      offset: t.readUInt32LE(at + 16),
      length: t.readUInt32LE(at + 20),
      isUser: (t[at + 24]! & 1) !== 0,
      isVirtualDisk: (t[at + 24]! & 2) !== 0,
      isRequired: (t[at + 24]! & 4) !== 0,
    };
    const name = (!e.isUser && knownItem(e.itemId)) || `item ${guidText(e.itemId)}`;
    const ctx = { file: path, structure: `metadata table entry ${i} (${name})`, offset: base + at };
    if (e.length > 0) {
      if (e.offset < METADATA_TABLE_SIZE || e.length > MAX_METADATA_ITEM || e.offset + e.length > region.length) {
        throw new PolyvisorError('ERR_CORRUPT', `item at region offset ${hex(e.offset)} of ${e.length} bytes lies outside the metadata region's item area (64 KiB..${hex(region.length)}, at most 1 MiB)`, ctx);
      }
      spans.push({ start: e.offset, end: e.offset + e.length, name: `metadata item ${name}` });
    }
    if (e.isUser) {
      if (e.isRequired) throw new PolyvisorError('ERR_UNSUPPORTED', `required user metadata item ${guidText(e.itemId)} is not one Polyvisor knows`, ctx);
      continue;
    }
    if (!knownItem(e.itemId)) {
      if (e.isRequired) throw new PolyvisorError('ERR_UNSUPPORTED', `required metadata item ${guidText(e.itemId)} is not one Polyvisor knows`, ctx);
      continue;
    }
    if (items.has(name)) throw new PolyvisorError('ERR_CORRUPT', `a second ${name} item`, ctx);
    items.set(name, { entry: e, data: e.length ? await view.readStructure(base + e.offset, e.length, `metadata item ${name}`) : Buffer.alloc(0), at: base + e.offset });
  }
  checkRegionsApart(
    spans.map((s) => ({ ...s, start: base + s.start, end: base + s.end })),
    path,
  );
  const item = (name: string, min: number): { data: Buffer; ctx: { file: string; structure: string; offset: number } } => {
    const it = items.get(name);
    if (!it) throw new PolyvisorError('ERR_CORRUPT', `the required ${name} item is missing`, tctx);
    const ctx = { file: path, structure: `metadata item ${name}`, offset: it.at };
    if (it.data.length < min) throw new PolyvisorError('ERR_CORRUPT', `${it.data.length} bytes, ${min} needed`, ctx);
    return { data: it.data, ctx };
  };
  const fp = item('File Parameters', 8);
  const blockSize = fp.data.readUInt32LE(0);
  const flags = fp.data.readUInt32LE(4);
  if (!isPowerOfTwo(blockSize) || blockSize < MIN_BLOCK_SIZE || blockSize > MAX_BLOCK_SIZE) {
    throw new PolyvisorError('ERR_CORRUPT', `BlockSize ${blockSize} is not a power of two from 1 MiB to 256 MiB`, fp.ctx);
  }
  const ls = item('Logical Sector Size', 4);
  const logicalSectorSize = ls.data.readUInt32LE(0);
  if (logicalSectorSize !== 512 && logicalSectorSize !== 4096) throw new PolyvisorError('ERR_CORRUPT', `LogicalSectorSize ${logicalSectorSize} is neither 512 nor 4096`, ls.ctx);
  const ps = item('Physical Sector Size', 4);
  const physicalSectorSize = ps.data.readUInt32LE(0);
  if (physicalSectorSize !== 512 && physicalSectorSize !== 4096) throw new PolyvisorError('ERR_CORRUPT', `PhysicalSectorSize ${physicalSectorSize} is neither 512 nor 4096`, ps.ctx);
  const vs = item('Virtual Disk Size', 8);
  const virtualSize = u64(vs.data, 0, vs.ctx, 'VirtualDiskSize');
  if (virtualSize > MAX_VIRTUAL_SIZE || virtualSize % logicalSectorSize !== 0) {
    throw new PolyvisorError('ERR_CORRUPT', `VirtualDiskSize ${virtualSize} is not a multiple of the ${logicalSectorSize}-byte logical sector up to 64 TiB`, vs.ctx);
  }
  const id = item('Virtual Disk ID', 16);
  const hasParent = (flags & 2) !== 0;
  let locator: Map<string, string> | null = null;
  if (hasParent) {
    const pl = item('Parent Locator', 20);
    locator = parseParentLocator(pl.data, pl.ctx);
  }
  return { blockSize, leaveBlocksAllocated: (flags & 1) !== 0, hasParent, virtualSize, virtualDiskId: Buffer.from(id.data.subarray(0, 16)), logicalSectorSize, physicalSectorSize, locator };
}

/** A Windows path from a parent locator as a name to resolve here ("C:\a\b" -> "C:/a/b", ".\p" -> "p"). */
function locatorName(v: string): string {
  let s = v.replace(/\\/g, '/');
  while (s.startsWith('./')) s = s.slice(2);
  return s;
}

export async function openVhdx(ctx: OpenContext): Promise<VhdxImage> {
  const file = ctx.file;
  const path = file.path;
  if (file.size < REGION_TABLE_OFFSETS[1] + REGION_TABLE_SIZE) {
    throw new PolyvisorError('ERR_TRUNCATED', `the file has ${file.size} bytes, too few for the VHDX header section`, { file: path, structure: 'header section', offset: 0 });
  }
  const id = await file.readStructure(0, 8, 'file type identifier');
  if (!id.equals(FILE_ID_SIGNATURE)) throw new PolyvisorError('ERR_CORRUPT', 'no "vhdxfile" signature: not a VHDX', { file: path, structure: 'file type identifier', offset: 0 });
  const hs = await readHeaders(file);
  let header = hs.header;
  let slot = hs.slot;
  const notes = hs.notes;

  // 2.3.3: replay the log before trusting anything it may have been updating.
  const view = new FileView(file, null);
  let logState: LogState = 'clean';
  let logEntries = 0;
  const replay = await readLog(file, header, file.size);
  if (replay) {
    logEntries = replay.entries;
    if (ctx.readOnly) {
      view.overlay = replay.overlay;
      logState = 'replayed-in-memory';
    } else {
      const ov = replay.overlay;
      const writes: Promise<void>[] = [];
      for (const [a, z] of ov.zeroes) {
        for (let p = a; p < z; p += MiB) writes.push(file.writeAt(Buffer.alloc(Math.min(MiB, z - p)), p));
      }
      await Promise.all(writes);
      await Promise.all([...ov.sectors].map(([off, data]) => file.writeAt(data, off)));
      if (file.size < ov.size) await file.truncate(ov.size);
      await file.sync();
      // The log is applied: a new header with LogGuid zero says so; written to both slots
      // so that no valid header still asks for the replay.
      for (let k = 0; k < 2; k++) {
        header = { ...header, sequenceNumber: header.sequenceNumber + 1n, logGuid: Buffer.alloc(16) };
        slot = 1 - slot;
        await file.writeAt(buildHeader(header), HEADER_OFFSETS[slot]!);
        await file.sync();
      }
      logState = 'replayed';
    }
  }

  const { bat: batRegion, metadata: metaRegion, regions } = await readRegions(view, header, notes);
  const md = await readMetadata(view, metaRegion);
  const g = batGeometry(md.virtualSize, md.blockSize, md.logicalSectorSize, md.hasParent);
  const bctx = { file: path, structure: 'BAT region', offset: batRegion.fileOffset };
  if (g.entries * 8 > batRegion.length) throw new PolyvisorError('ERR_CORRUPT', `${g.entries} BAT entries are needed for the ${md.virtualSize}-byte disk, but the BAT region holds ${batRegion.length / 8}`, bctx);
  const bat = await view.readStructure(batRegion.fileOffset, g.entries * 8, 'BAT');
  const checked = validateBat(bat, g, md.hasParent, md.virtualSize, batRegion.fileOffset, regions, view.size, path, throwReport);
  const layout: VhdxLayout = {
    logOffset: header.logOffset,
    logLength: header.logLength,
    batOffset: batRegion.fileOffset,
    batLength: batRegion.length,
    metadataOffset: metaRegion.fileOffset,
    metadataLength: metaRegion.length,
    regions,
  };
  // New blocks go past everything: the file's end, every region and every block.
  const nextFree = alignUp(Math.max(view.size, checked.end, ...regions.map((r) => r.end)), MiB);
  const image = new VhdxImage({
    view,
    readOnly: ctx.readOnly,
    header,
    headerSlot: slot,
    logState,
    logEntries,
    virtualSize: md.virtualSize,
    blockSize: md.blockSize,
    logicalSectorSize: md.logicalSectorSize,
    physicalSectorSize: md.physicalSectorSize,
    leaveBlocksAllocated: md.leaveBlocksAllocated,
    hasParent: md.hasParent,
    virtualDiskId: md.virtualDiskId,
    locator: md.locator,
    geometry: g,
    layout,
    bat,
    nextFree,
    fresh: false,
    notes,
  });

  if (md.hasParent && md.locator) {
    // 2.6.2.6.2: relative_path first (it survives moving the chain), then the absolute
    // and volume paths, then the parent's bare file name beside us.
    const loc = md.locator;
    const candidates: string[] = [];
    for (const k of ['relative_path', 'absolute_win32_path', 'volume_path']) {
      const v = loc.get(k);
      if (v) {
        const n = locatorName(v);
        if (!candidates.includes(n)) candidates.push(n);
      }
    }
    const abs = loc.get('absolute_win32_path');
    if (abs) {
      const bare = locatorName(abs).split('/').pop();
      if (bare && !candidates.includes(bare)) candidates.push(bare);
    }
    const recorded = candidates[0] ?? '';
    image.backingRef = { name: recorded, format: 'vhdx' };
    const lctx = { file: path, structure: 'metadata item Parent Locator', offset: layout.metadataOffset };
    const linkage = [loc.get('parent_linkage'), loc.get('parent_linkage2')].filter((x): x is string => !!x);
    if (linkage.length === 0) throw new PolyvisorError('ERR_CORRUPT', 'the parent locator has no parent_linkage', lctx);
    if (candidates.length === 0) throw new PolyvisorError('ERR_CORRUPT', 'the parent locator names no parent path', lctx);
    const parent = await ctx.openBacking(candidates, 'vhdx');
    if (parent) {
      const got = parent instanceof VhdxImage ? parent.dataWriteGuid : null;
      const ok = got !== null && linkage.some((l) => parseGuidText(l)?.equals(got));
      if (!ok) {
        const gotText = got ? `DataWriteGuid {${guidText(got)}}` : `is a ${parent.format} image`;
        await parent.close();
        throw new PolyvisorError('ERR_CHAIN_MISMATCH', `parent ${parent.path} has ${gotText}, but this differencing disk records parent_linkage ${linkage.join(' / ')}: the parent was changed or is another disk`, lctx);
      }
      image.backing = parent;
      image.backingRef = { name: recorded, format: 'vhdx', resolved: parent.path };
    }
  }
  return image;
}

// ---- creating ---------------------------------------------------------------------------

function invalid(detail: string, path: string): PolyvisorError {
  return new PolyvisorError('ERR_INVALID_OPTION', `vhdx: ${detail}`, { file: path });
}

/** Windows-style path from the child's folder to the parent, as relative_path holds it. */
function windowsRelative(fromDir: string, to: string): string {
  const rel = relative(fromDir, to).replace(/\//g, '\\');
  return rel.startsWith('..') ? rel : `.\\${rel}`;
}

export const DEFAULT_BLOCK_SIZE = 32 * MiB;

export async function createVhdx(ctx: CreateContext): Promise<VhdxImage> {
  const o = ctx.options;
  const path = ctx.path;
  const parent = ctx.backing?.image;
  if (ctx.backing && !(parent instanceof VhdxImage)) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `a differencing VHDX needs a VHDX parent; ${ctx.backing.name} is ${ctx.backing.format}`, { file: path });
  }
  const vparent = parent instanceof VhdxImage ? parent : null;
  if (vparent && o.subformat === 'fixed') throw invalid('a differencing disk (backing file) is dynamic; subformat=fixed does not apply', path);
  const fixed = o.subformat === 'fixed';
  const blockSize = optionSize(o, 'block_size', DEFAULT_BLOCK_SIZE);
  if (!isPowerOfTwo(blockSize) || blockSize < MIN_BLOCK_SIZE || blockSize > MAX_BLOCK_SIZE) throw invalid(`block_size ${blockSize} must be a power of two from 1M to 256M`, path);
  const logSize = optionSize(o, 'log_size', MiB);
  if (logSize < MiB || logSize % MiB !== 0 || logSize > 4095 * MiB) throw invalid(`log_size ${logSize} must be a multiple of 1M, from 1M to 4095M`, path);
  let lss = o.logical_sector_size !== undefined ? Number(o.logical_sector_size) : vparent ? vparent.logicalSectorSize : 512;
  if (lss !== 512 && lss !== 4096) throw invalid(`logical_sector_size ${o.logical_sector_size} must be 512 or 4096`, path);
  if (vparent && lss !== vparent.logicalSectorSize) throw invalid(`logical_sector_size ${lss} differs from the parent's ${vparent.logicalSectorSize}`, path);
  const zeroState = optionBool(o, 'block_state_zero', false);
  if (vparent && zeroState) throw invalid('block_state_zero=on would hide the parent: a differencing disk starts with every block NOT_PRESENT', path);
  lss = lss === 4096 ? 4096 : 512;

  const virtualSize = vparent ? vparent.virtualSize : alignUp(ctx.virtualSize, lss);
  if (vparent && ctx.virtualSize !== vparent.virtualSize) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `a differencing VHDX has its parent's size (${vparent.virtualSize} bytes), not ${ctx.virtualSize}`, { file: path });
  }
  if (virtualSize > MAX_VIRTUAL_SIZE) throw new PolyvisorError('ERR_UNSUPPORTED', `a VHDX is at most 64 TiB; ${virtualSize} bytes asked`, { file: path });
  const hasParent = !!vparent;
  const g = batGeometry(virtualSize, blockSize, lss, hasParent);

  // Layout: header section | log | metadata region (1 MiB) | BAT region | blocks...
  const logOffset = HEADER_SECTION_SIZE;
  const metadataOffset = logOffset + logSize;
  const metadataLength = MiB;
  const batOffset = metadataOffset + metadataLength;
  const batLength = alignUp(Math.max(8, g.entries * 8), MiB);
  const dataStart = batOffset + batLength;
  if (batLength > 0xfff00000) throw new PolyvisorError('ERR_UNSUPPORTED', `a ${batLength}-byte BAT region does not fit the region table's 32-bit length`, { file: path });

  // Metadata items (2.6.2), packed after the 64 KiB table as qemu and Hyper-V do.
  const items: Array<{ id: Buffer; data: Buffer; virtualDisk: boolean }> = [];
  const fp = Buffer.alloc(8);
  fp.writeUInt32LE(blockSize, 0);
  fp.writeUInt32LE((fixed ? 1 : 0) | (hasParent ? 2 : 0), 4);
  items.push({ id: FILE_PARAMETERS_GUID, data: fp, virtualDisk: false });
  const vs = Buffer.alloc(8);
  vs.writeBigUInt64LE(BigInt(virtualSize), 0);
  items.push({ id: VIRTUAL_DISK_SIZE_GUID, data: vs, virtualDisk: true });
  const virtualDiskId = newGuid();
  items.push({ id: VIRTUAL_DISK_ID_GUID, data: virtualDiskId, virtualDisk: true });
  const ls = Buffer.alloc(4);
  ls.writeUInt32LE(lss, 0);
  items.push({ id: LOGICAL_SECTOR_SIZE_GUID, data: ls, virtualDisk: true });
  const ps = Buffer.alloc(4);
  ps.writeUInt32LE(4096, 0);
  items.push({ id: PHYSICAL_SECTOR_SIZE_GUID, data: ps, virtualDisk: true });
  let locator: Map<string, string> | null = null;
  if (vparent) {
    // Names are recorded for the final path, never the temporary one we write under.
    const abs = resolve(vparent.path);
    const pairs: Array<[string, string]> = [
      ['parent_linkage', `{${guidText(vparent.dataWriteGuid)}}`],
      ['relative_path', windowsRelative(dirname(resolve(ctx.finalPath)), abs)],
      ['absolute_win32_path', abs.replace(/\//g, '\\')],
    ];
    locator = new Map(pairs);
    items.push({ id: PARENT_LOCATOR_GUID, data: buildParentLocator(pairs), virtualDisk: false });
  }
  const entries: MetadataEntry[] = [];
  let pos = METADATA_TABLE_SIZE;
  for (const it of items) {
    entries.push({ itemId: it.id, offset: pos, length: it.data.length, isUser: false, isVirtualDisk: it.virtualDisk, isRequired: true });
    pos = alignUp(pos + it.data.length, 8);
  }
  if (pos > metadataLength) throw new PolyvisorError('ERR_UNSUPPORTED', 'the parent locator is too long for the metadata region', { file: path });
  const meta = Buffer.alloc(pos);
  buildMetadataTable(entries).copy(meta, 0);
  items.forEach((it, i) => it.data.copy(meta, entries[i]!.offset));

  const regionTable = buildRegionTable([
    { guid: BAT_GUID, fileOffset: batOffset, length: batLength, required: true },
    { guid: METADATA_GUID, fileOffset: metadataOffset, length: metadataLength, required: true },
  ]);
  const header: Header = {
    sequenceNumber: 1n,
    fileWriteGuid: newGuid(),
    dataWriteGuid: newGuid(),
    logGuid: Buffer.alloc(16),
    logVersion: 0,
    version: 1,
    logLength: logSize,
    logOffset,
  };
  const head = Buffer.alloc(REGION_TABLE_OFFSETS[1] + REGION_TABLE_SIZE);
  buildFileIdentifier('Polyvisor').copy(head, 0);
  buildHeader(header).copy(head, HEADER_OFFSETS[0]);
  const header2 = { ...header, sequenceNumber: 2n };
  buildHeader(header2).copy(head, HEADER_OFFSETS[1]);
  regionTable.copy(head, REGION_TABLE_OFFSETS[0]);
  regionTable.copy(head, REGION_TABLE_OFFSETS[1]);

  // BAT: a dynamic or differencing disk starts NOT_PRESENT (all zero bytes: a hole), or
  // ZERO with block_state_zero as qemu does; a fixed disk has every block in place.
  const bat = Buffer.alloc(g.entries * 8);
  let end = dataStart;
  if (fixed) {
    for (let b = 0; b < g.payloadBlocks; b++) setBatEntry(bat, payloadIndex(g, b), PAYLOAD_BLOCK_FULLY_PRESENT, (dataStart + b * blockSize) / MiB);
    end = dataStart + g.payloadBlocks * blockSize;
  } else if (zeroState) {
    for (let b = 0; b < g.payloadBlocks; b++) setBatEntry(bat, payloadIndex(g, b), PAYLOAD_BLOCK_ZERO, 0);
  }

  const file = await ImageFile.create(path, ctx.cache);
  try {
    await file.writeAt(head, 0);
    await file.writeAt(meta, metadataOffset);
    if (fixed || zeroState) await file.writeAt(bat, batOffset);
    // The log region stays zeroes (a hole) with LogGuid zero: an empty log (2.3).
    await file.truncate(end);
    const regions: Region[] = [
      { start: 0, end: HEADER_SECTION_SIZE, name: 'header section' },
      { start: logOffset, end: logOffset + logSize, name: 'log' },
      { start: metadataOffset, end: metadataOffset + metadataLength, name: 'metadata region' },
      { start: batOffset, end: batOffset + batLength, name: 'BAT region' },
    ];
    const image = new VhdxImage({
      view: new FileView(file, null),
      readOnly: false,
      header: header2,
      headerSlot: 1,
      logState: 'clean',
      logEntries: 0,
      virtualSize,
      blockSize,
      logicalSectorSize: lss,
      physicalSectorSize: 4096,
      leaveBlocksAllocated: fixed,
      hasParent,
      virtualDiskId,
      locator,
      geometry: g,
      layout: { logOffset, logLength: logSize, batOffset, batLength, metadataOffset, metadataLength, regions },
      bat,
      nextFree: end,
      fresh: true,
      notes: [],
    });
    if (vparent && ctx.backing) {
      image.backing = vparent;
      image.backingRef = { name: locator!.get('relative_path')!.replace(/\\/g, '/').replace(/^\.\//, ''), format: 'vhdx', resolved: vparent.path };
    }
    return image;
  } catch (e) {
    await file.close();
    throw e;
  }
}

