/**
 * LVM2: physical volume labels, the text metadata in their metadata areas, and logical
 * volumes exposed as Volumes.
 *
 * On-disk layout, as LVM2 writes it (lib/format_text/layout.h and lib/label/label.h in the
 * LVM2 sources, and the "LVM2 on-disk format" notes in its doc/ folder):
 * - a 512-byte label in one of the first four sectors: label_header ("LABELONE", the sector
 *   it sits in, a CRC over the rest of the sector, the offset of the contents, "LVM2 001"),
 *   then pv_header: the PV UUID, the device size, and two zero-terminated lists of
 *   disk_locn {offset, size}: the data areas (where extents start) and the metadata areas;
 * - each metadata area starts with an mda_header (checksum, magic " LVM2 x[5A%r0N*>",
 *   version 1, its own start and size, and raw_locn slots) and is otherwise a circular
 *   buffer: raw_locn[0] says where the committed metadata text lies (offset from the area's
 *   start, size, checksum), and text reaching the area's end continues after the header;
 * - the metadata is LVM's text configuration format: `key = value`, `name { ... }` sections
 *   and `[ ... ]` arrays of strings and integers.
 * Checksums are LVM's calc_crc: CRC-32 (reflected 0xEDB88320) seeded with 0xf597a6cf and not
 * inverted at the end.
 *
 * A logical volume's segments map its logical extents onto physical extents of the PVs
 * (extent_size in sectors, each PV's pe_start in sectors); linear volumes are "striped"
 * segments with one stripe, and segments with several stripes spread stripe_size chunks over
 * them in turn. Writes through a logical volume go to the same PV ranges reads come from.
 */
import { crc32 } from 'node:zlib';
import { PolyvisorError } from '../errors.js';
import type { Volume } from './volume.js';

const SECTOR = 512;
/** LABEL_SCAN_SECTORS: the label is in one of the first four sectors */
const LABEL_SCAN_SECTORS = 4;
const LABEL_ID = 'LABELONE';
const LABEL_TYPE = 'LVM2 001';
const MDA_MAGIC = ' LVM2 x[5A%r0N*>';
/** MDA_HEADER_SIZE: the circular buffer starts after it */
const MDA_HEADER_SIZE = 512;
const INITIAL_CRC = 0xf597a6cf;
/** raw_locn.flags: RAW_LOCN_IGNORED (pvchange --metadataignore) */
const RAW_LOCN_IGNORED = 1;
/** No real VG's metadata text comes near this; a hostile raw_locn cannot make us read more. */
const MAX_METADATA_TEXT = 16 * 1024 * 1024;
const MAX_DEPTH = 32;
const MAX_LOCN = 16;
const MAX_SEGMENTS = 65536;
const MAX_STRIPES = 128;

/** LVM's calc_crc (lib/misc/crc.c): the standard table CRC with a given seed and no final inversion. */
export function lvmCrc(buf: Uint8Array, seed = INITIAL_CRC): number {
  return ~crc32(buf, ~seed >>> 0) >>> 0;
}

export interface DiskLocn {
  /** bytes from the start of the PV */
  offset: number;
  /** bytes; 0 for a data area means "to the end of the device" */
  size: number;
}

export interface PvLabel {
  /** the PV UUID as LVM prints it (6-4-4-4-4-4-6 characters) */
  uuid: string;
  /** the sector of the label (0-3) */
  sector: number;
  deviceSize: number;
  dataAreas: DiskLocn[];
  metadataAreas: DiskLocn[];
}

export type MetaValue = string | number | MetaValue[];

/** One `name { ... }` section of LVM's text metadata, in file order. */
export class MetaSection {
  readonly values = new Map<string, MetaValue>();
  readonly sections = new Map<string, MetaSection>();
  constructor(readonly name: string) {}

  num(key: string): number | undefined {
    const v = this.values.get(key);
    return typeof v === 'number' ? v : undefined;
  }

  str(key: string): string | undefined {
    const v = this.values.get(key);
    return typeof v === 'string' ? v : undefined;
  }

  list(key: string): MetaValue[] | undefined {
    const v = this.values.get(key);
    return Array.isArray(v) ? v : undefined;
  }
}

export interface LvSegmentStripe {
  /** the VG's name for the PV: "pv0" */
  pv: string;
  /** first physical extent on that PV */
  startExtent: number;
}

export interface LvSegment {
  startExtent: number;
  extentCount: number;
  /** "striped" (linear is striped with one stripe), or another type we list but do not map */
  type: string;
  /** bytes; 0 with one stripe */
  stripeSize: number;
  stripes: LvSegmentStripe[];
}

export interface LogicalVolume {
  name: string;
  uuid: string;
  /** bytes */
  size: number;
  status: string[];
  /** false for LVs LVM keeps out of sight (thin pool internals, mirror legs, ...) */
  visible: boolean;
  segments: LvSegment[];
}

export interface VgPhysicalVolume {
  /** the VG's own name for it: "pv0" */
  name: string;
  uuid: string;
  /** the device the host last saw it on (a hint only) */
  device?: string;
  /** bytes from the PV's start to its first extent */
  peStart: number;
  peCount: number;
  /** where we found it; undefined when the PV is missing */
  volume?: Volume;
}

export interface VolumeGroup {
  name: string;
  uuid: string;
  seqno: number;
  /** bytes */
  extentSize: number;
  status: string[];
  pvs: VgPhysicalVolume[];
  lvs: LogicalVolume[];
  warnings: string[];
}

function corrupt(v: Volume, structure: string, offset: number | undefined, detail: string): PolyvisorError {
  return new PolyvisorError('ERR_CORRUPT', detail, { file: v.name, structure, offset });
}

function u64(b: Buffer, o: number, v: Volume, structure: string, at: number): number {
  const x = b.readBigUInt64LE(o);
  if (x > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(v, structure, at + o, `value ${x} is too large`);
  return Number(x);
}

/** "z2pxBiSpstGZAYiXHoGHwNMJsMHdBRLY" -> "z2pxBi-Spst-GZAY-iXHo-GHwN-MJsM-HdBRLY" (id_write_format) */
export function formatLvmUuid(raw: string): string {
  const groups = [6, 4, 4, 4, 4, 4, 6];
  const out: string[] = [];
  let i = 0;
  for (const g of groups) {
    out.push(raw.slice(i, i + g));
    i += g;
  }
  return out.join('-');
}

/** The PV label of a volume, or null when it has none. */
export async function readPvLabel(v: Volume): Promise<PvLabel | null> {
  for (let sector = 0; sector < LABEL_SCAN_SECTORS; sector++) {
    const at = sector * SECTOR;
    if (at + SECTOR > v.size) return null;
    const b = await v.read(at, SECTOR);
    if (b.toString('latin1', 0, 8) !== LABEL_ID) continue;
    const structure = 'LVM2 label_header';
    if (Number(b.readBigUInt64LE(8)) !== sector) throw corrupt(v, structure, at, `label_header.sector says ${b.readBigUInt64LE(8)}, but the label is in sector ${sector}`);
    if (lvmCrc(b.subarray(20)) !== b.readUInt32LE(16)) {
      throw new PolyvisorError('ERR_CHECKSUM', 'label_header.crc does not match the sector', { file: v.name, structure, offset: at });
    }
    if (b.toString('latin1', 24, 32) !== LABEL_TYPE) throw new PolyvisorError('ERR_UNSUPPORTED', `label type "${b.toString('latin1', 24, 32)}" is not "${LABEL_TYPE}"`, { file: v.name, structure, offset: at });
    const contents = b.readUInt32LE(20);
    if (contents < 32 || contents + 40 + 32 > SECTOR) throw corrupt(v, structure, at, `label_header.offset ${contents} does not leave room for the pv_header`);
    const ph = 'LVM2 pv_header';
    const uuid = b.toString('latin1', contents, contents + 32);
    if (!/^[A-Za-z0-9!#]{32}$/.test(uuid)) throw corrupt(v, ph, at + contents, 'pv_header.pv_uuid is not a PV UUID');
    const deviceSize = u64(b, contents + 32, v, ph, at);
    // disk_locn lists (data areas, then metadata areas), each ending with a zero entry
    let o = contents + 40;
    const lists: DiskLocn[][] = [[], []];
    for (const list of lists) {
      for (;;) {
        if (o + 16 > SECTOR) throw corrupt(v, ph, at + o, 'a disk_locn list runs past the end of the label sector');
        const offset = u64(b, o, v, ph, at);
        const size = u64(b, o + 8, v, ph, at);
        o += 16;
        if (offset === 0) break;
        if (list.length >= MAX_LOCN) throw corrupt(v, ph, at + o, `more than ${MAX_LOCN} disk_locn entries`);
        if (offset + size > v.size) throw corrupt(v, ph, at + o - 16, `area at ${offset} (${size} bytes) lies past the end of the volume (${v.size} bytes)`);
        list.push({ offset, size });
      }
    }
    return { uuid: formatLvmUuid(uuid), sector, deviceSize, dataAreas: lists[0]!, metadataAreas: lists[1]! };
  }
  return null;
}

export interface PvMetadata {
  /** the metadata text, without its terminating NUL */
  text: string;
  /** where it was read from: the metadata area's offset */
  area: number;
}

/**
 * The committed metadata text of a PV: from the first metadata area whose header and text
 * check out. A bad first area with a good second one is reported in `warnings`.
 */
export async function readPvMetadata(v: Volume, label: PvLabel, warnings: string[] = []): Promise<PvMetadata | null> {
  const errors: PolyvisorError[] = [];
  for (const mda of label.metadataAreas) {
    try {
      const text = await readMetadataArea(v, mda);
      if (text === null) continue;
      for (const e of errors) warnings.push(`${e.message}; another metadata area was used`);
      return { text, area: mda.offset };
    } catch (e) {
      if (!(e instanceof PolyvisorError)) throw e;
      errors.push(e);
    }
  }
  if (errors.length > 0) throw errors[0]!;
  return null;
}

async function readMetadataArea(v: Volume, mda: DiskLocn): Promise<string | null> {
  const structure = 'LVM2 mda_header';
  if (mda.size < MDA_HEADER_SIZE * 2) throw corrupt(v, structure, mda.offset, `metadata area of ${mda.size} bytes is too small`);
  const h = await v.read(mda.offset, MDA_HEADER_SIZE);
  if (h.toString('latin1', 4, 20) !== MDA_MAGIC) throw corrupt(v, structure, mda.offset, 'bad mda_header magic');
  if (lvmCrc(h.subarray(4)) !== h.readUInt32LE(0)) throw new PolyvisorError('ERR_CHECKSUM', 'mda_header.checksum does not match', { file: v.name, structure, offset: mda.offset });
  if (h.readUInt32LE(20) !== 1) throw new PolyvisorError('ERR_UNSUPPORTED', `mda_header.version ${h.readUInt32LE(20)}`, { file: v.name, structure, offset: mda.offset });
  const start = u64(h, 24, v, structure, mda.offset);
  const size = u64(h, 32, v, structure, mda.offset);
  if (start !== mda.offset || size !== mda.size) throw corrupt(v, structure, mda.offset, `mda_header says start ${start} size ${size}, the pv_header says ${mda.offset} and ${mda.size}`);
  // raw_locn[0]: the committed metadata
  const offset = u64(h, 40, v, structure, mda.offset);
  const length = u64(h, 48, v, structure, mda.offset);
  const checksum = h.readUInt32LE(56);
  const flags = h.readUInt32LE(60);
  if (offset === 0 || length === 0 || flags & RAW_LOCN_IGNORED) return null;
  const rl = 'LVM2 raw_locn[0]';
  if (offset < MDA_HEADER_SIZE || offset >= size) throw corrupt(v, rl, mda.offset + 40, `offset ${offset} lies outside the metadata area's buffer (${MDA_HEADER_SIZE}-${size})`);
  if (length > size - MDA_HEADER_SIZE || length > MAX_METADATA_TEXT) throw corrupt(v, rl, mda.offset + 40, `size ${length} does not fit the metadata area (${size} bytes)`);
  // circular buffer: text that reaches the area's end continues just after the mda_header
  const first = Math.min(length, size - offset);
  const parts = [await v.read(mda.offset + offset, first)];
  if (first < length) parts.push(await v.read(mda.offset + MDA_HEADER_SIZE, length - first));
  const text = Buffer.concat(parts);
  if (lvmCrc(text) !== checksum) throw new PolyvisorError('ERR_CHECKSUM', 'the metadata text does not match raw_locn[0].checksum', { file: v.name, structure: 'LVM2 metadata text', offset: mda.offset + offset });
  let end = text.length;
  while (end > 0 && text[end - 1] === 0) end--;
  return text.toString('utf8', 0, end);
}

/**
 * Parses LVM's text metadata (libdevmapper's config syntax): `key = value`, `name { ... }`,
 * arrays `[a, b]`, double-quoted strings with backslash escapes, integers, `#` comments.
 * Bounded: nesting depth, and the text's own length.
 */
export function parseMetadata(text: string, file = 'LVM2 metadata'): MetaSection {
  let i = 0;
  const fail = (detail: string): never => {
    const line = text.slice(0, i).split('\n').length;
    throw new PolyvisorError('ERR_CORRUPT', `line ${line}: ${detail}`, { file, structure: 'LVM2 metadata text' });
  };
  const skip = () => {
    while (i < text.length) {
      const c = text[i]!;
      if (c === '#') {
        while (i < text.length && text[i] !== '\n') i++;
      } else if (c === ' ' || c === '\t' || c === '\n' || c === '\r') i++;
      else break;
    }
  };
  const ident = (): string => {
    const m = /^[^\s{}[\]=",#]+/.exec(text.slice(i, i + 1024));
    if (!m) return fail(`expected a name, found ${JSON.stringify(text.slice(i, i + 10))}`);
    i += m[0].length;
    return m[0];
  };
  const value = (depth: number): MetaValue => {
    skip();
    const c = text[i];
    if (c === '"') {
      i++;
      let s = '';
      for (;;) {
        if (i >= text.length) fail('unterminated string');
        const d = text[i++]!;
        if (d === '"') break;
        if (d === '\\') {
          if (i >= text.length) fail('unterminated string');
          s += text[i++];
        } else s += d;
      }
      return s;
    }
    if (c === '[') {
      if (depth >= MAX_DEPTH) fail('arrays nested too deeply');
      i++;
      const arr: MetaValue[] = [];
      skip();
      if (text[i] === ']') {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(value(depth + 1));
        skip();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return arr;
        }
        fail('expected "," or "]" in an array');
      }
    }
    const m = /^[-+]?[0-9]+(\.[0-9]+)?/.exec(text.slice(i, i + 64));
    if (!m) return fail(`expected a value, found ${JSON.stringify(text.slice(i, i + 10))}`);
    i += m[0].length;
    const n = Number(m[0]);
    if (!m[1] && !Number.isSafeInteger(n)) fail(`integer ${m[0]} is too large`);
    return n;
  };
  const section = (s: MetaSection, depth: number, closing: boolean): MetaSection => {
    for (;;) {
      skip();
      if (i >= text.length) {
        if (closing) fail(`section "${s.name}" is not closed`);
        return s;
      }
      if (text[i] === '}') {
        if (!closing) fail('unexpected "}"');
        i++;
        return s;
      }
      const name = ident();
      skip();
      if (text[i] === '{') {
        if (depth >= MAX_DEPTH) fail('sections nested too deeply');
        i++;
        if (s.sections.has(name) || s.values.has(name)) fail(`"${name}" appears twice in "${s.name}"`);
        s.sections.set(name, section(new MetaSection(name), depth + 1, true));
      } else if (text[i] === '=') {
        i++;
        if (s.sections.has(name) || s.values.has(name)) fail(`"${name}" appears twice in "${s.name}"`);
        s.values.set(name, value(depth));
      } else fail(`expected "=" or "{" after "${name}"`);
    }
  };
  return section(new MetaSection(''), 0, false);
}

function strings(v: MetaValue[] | undefined): string[] {
  return (v ?? []).filter((x): x is string => typeof x === 'string');
}

/** The VG described by a metadata text (its one top-level section). */
export function volumeGroupFromMetadata(text: string, file: string): VolumeGroup {
  const root = parseMetadata(text, file);
  const sections = [...root.sections.values()];
  if (sections.length !== 1) throw new PolyvisorError('ERR_CORRUPT', `expected one volume group section, found ${sections.length}`, { file, structure: 'LVM2 metadata text' });
  const vg = sections[0]!;
  const where = (what: string) => ({ file, structure: `LVM2 metadata: ${what}` });
  const need = (s: MetaSection, key: string, what: string, min = 0): number => {
    const n = s.num(key);
    if (n === undefined || n < min) throw new PolyvisorError('ERR_CORRUPT', `${key} is missing or below ${min}`, where(what));
    return n;
  };
  const extentSectors = need(vg, 'extent_size', `VG ${vg.name}`, 1);
  const extentSize = extentSectors * SECTOR;
  const pvs: VgPhysicalVolume[] = [];
  for (const pv of vg.sections.get('physical_volumes')?.sections.values() ?? []) {
    const id = pv.str('id');
    if (!id) throw new PolyvisorError('ERR_CORRUPT', 'id is missing', where(`PV ${pv.name}`));
    pvs.push({ name: pv.name, uuid: id, device: pv.str('device'), peStart: need(pv, 'pe_start', `PV ${pv.name}`) * SECTOR, peCount: need(pv, 'pe_count', `PV ${pv.name}`) });
  }
  const lvs: LogicalVolume[] = [];
  for (const lv of vg.sections.get('logical_volumes')?.sections.values() ?? []) {
    const what = `LV ${vg.name}/${lv.name}`;
    const segments: LvSegment[] = [];
    for (const seg of lv.sections.values()) {
      if (segments.length >= MAX_SEGMENTS) throw new PolyvisorError('ERR_CORRUPT', `more than ${MAX_SEGMENTS} segments`, where(what));
      const sw = `${what} ${seg.name}`;
      const type = seg.str('type') ?? '';
      const stripesList = seg.list('stripes') ?? [];
      const stripes: LvSegmentStripe[] = [];
      if (stripesList.length % 2 !== 0 || stripesList.length / 2 > MAX_STRIPES) throw new PolyvisorError('ERR_CORRUPT', 'stripes is not a list of "pvN", extent pairs', where(sw));
      for (let k = 0; k < stripesList.length; k += 2) {
        const pv = stripesList[k];
        const pe = stripesList[k + 1];
        if (typeof pv !== 'string' || typeof pe !== 'number' || pe < 0) throw new PolyvisorError('ERR_CORRUPT', 'stripes is not a list of "pvN", extent pairs', where(sw));
        stripes.push({ pv, startExtent: pe });
      }
      segments.push({
        startExtent: need(seg, 'start_extent', sw),
        extentCount: need(seg, 'extent_count', sw, 1),
        type,
        stripeSize: (seg.num('stripe_size') ?? 0) * SECTOR,
        stripes,
      });
    }
    segments.sort((a, b) => a.startExtent - b.startExtent);
    // segments cover the LV's extents from 0 without gaps or overlaps
    let next = 0;
    for (const s of segments) {
      if (s.startExtent !== next) throw new PolyvisorError('ERR_CORRUPT', `segments leave a gap or overlap at extent ${Math.min(next, s.startExtent)}`, where(what));
      next += s.extentCount;
    }
    const status = strings(lv.list('status'));
    const size = next * extentSize;
    if (!Number.isSafeInteger(size)) throw new PolyvisorError('ERR_CORRUPT', `size of ${next} extents is too large`, where(what));
    lvs.push({ name: lv.name, uuid: lv.str('id') ?? '', size, status, visible: status.includes('VISIBLE'), segments });
  }
  return { name: vg.name, uuid: vg.str('id') ?? '', seqno: vg.num('seqno') ?? 0, extentSize, status: strings(vg.list('status')), pvs, lvs, warnings: [] };
}

/**
 * Finds the LVM2 PVs among `volumes` (partitions, whole disks) and assembles their volume
 * groups. Each VG's metadata is taken from the PV holding the highest seqno; a PV the VG
 * names but that is not among the volumes stays without a `volume` (its LVs cannot be opened).
 */
export async function scanVolumeGroups(volumes: Volume[]): Promise<VolumeGroup[]> {
  const found: { volume: Volume; label: PvLabel; vg: VolumeGroup | null }[] = [];
  const warnings: string[] = [];
  for (const volume of volumes) {
    const label = await readPvLabel(volume);
    if (!label) continue;
    const meta = await readPvMetadata(volume, label, warnings);
    found.push({ volume, label, vg: meta ? volumeGroupFromMetadata(meta.text, volume.name) : null });
  }
  const byId = new Map<string, VolumeGroup>();
  for (const f of found) {
    if (!f.vg) continue;
    const have = byId.get(f.vg.uuid);
    if (!have || f.vg.seqno > have.seqno) {
      if (have) f.vg.warnings.push(`PVs of VG ${f.vg.name} hold metadata of different seqno (${have.seqno} and ${f.vg.seqno}): the newest was used`);
      byId.set(f.vg.uuid, f.vg);
    }
  }
  const groups = [...byId.values()];
  for (const vg of groups) {
    vg.warnings.unshift(...warnings);
    for (const pv of vg.pvs) {
      const f = found.find((x) => x.label.uuid === pv.uuid);
      if (!f) {
        vg.warnings.push(`PV ${pv.name} (${pv.uuid}) of VG ${vg.name} is missing`);
        continue;
      }
      const end = pv.peStart + pv.peCount * vg.extentSize;
      if (end > f.volume.size) {
        throw new PolyvisorError('ERR_CORRUPT', `PV ${pv.name}: ${pv.peCount} extents of ${vg.extentSize} bytes from ${pv.peStart} reach past the end of the volume (${f.volume.size} bytes)`, { file: f.volume.name, structure: `LVM2 metadata: VG ${vg.name}` });
      }
      pv.volume = f.volume;
    }
  }
  return groups;
}

interface Piece {
  pv: VgPhysicalVolume & { volume: Volume };
  /** byte offset on the PV */
  at: number;
  length: number;
}

/** A logical volume as a Volume named "vg/lv"; reads and writes go to the PVs' extents. */
export function logicalVolume(vg: VolumeGroup, lvName: string): Volume {
  const lv = vg.lvs.find((l) => l.name === lvName);
  const name = `${vg.name}/${lvName}`;
  if (!lv) throw new PolyvisorError('ERR_NOT_FOUND', `VG ${vg.name} has no logical volume "${lvName}"`, { file: name });
  const ext = vg.extentSize;
  const pvByName = new Map(vg.pvs.map((p) => [p.name, p]));
  type Mapped = LvSegment & { pvs: (VgPhysicalVolume & { volume: Volume })[]; start: number; end: number };
  const segs: Mapped[] = lv.segments.map((s) => {
    const where = { file: name, structure: `segment at extent ${s.startExtent}` };
    if (s.type !== 'striped' && s.type !== 'linear') throw new PolyvisorError('ERR_UNSUPPORTED', `segment type "${s.type}" is not supported (linear and striped are)`, where);
    const n = s.stripes.length;
    if (n === 0 || s.extentCount % n !== 0) throw new PolyvisorError('ERR_CORRUPT', `${s.extentCount} extents do not divide among ${n} stripes`, where);
    if (n > 1 && (s.stripeSize <= 0 || ext % s.stripeSize !== 0)) throw new PolyvisorError('ERR_CORRUPT', `stripe_size ${s.stripeSize} bytes does not divide the extent size`, where);
    const perStripe = s.extentCount / n;
    const pvs = s.stripes.map((st) => {
      const pv = pvByName.get(st.pv);
      if (!pv) throw new PolyvisorError('ERR_CORRUPT', `names PV "${st.pv}", which the VG does not list`, where);
      if (!pv.volume) throw new PolyvisorError('ERR_NOT_FOUND', `PV ${st.pv} (${pv.uuid}) is missing`, where);
      if (st.startExtent + perStripe > pv.peCount) throw new PolyvisorError('ERR_CORRUPT', `extents ${st.startExtent}-${st.startExtent + perStripe - 1} lie past the end of ${st.pv} (${pv.peCount} extents)`, where);
      return pv as VgPhysicalVolume & { volume: Volume };
    });
    return { ...s, pvs, start: s.startExtent * ext, end: (s.startExtent + s.extentCount) * ext };
  });

  /** the PV pieces behind [offset, offset+length) of the LV, in order */
  function pieces(offset: number, length: number): Piece[] {
    const out: Piece[] = [];
    let pos = offset;
    const stop = offset + length;
    let k = segs.findIndex((s) => s.end > pos);
    while (pos < stop && k >= 0 && k < segs.length) {
      const s = segs[k]!;
      const within = pos - s.start;
      const n = s.stripes.length;
      let at: number;
      let room: number;
      let idx: number;
      if (n === 1) {
        idx = 0;
        at = within;
        room = s.end - pos;
      } else {
        // chunk c goes to stripe c % n, row c / n of that stripe's area
        const chunk = Math.floor(within / s.stripeSize);
        idx = chunk % n;
        const inChunk = within % s.stripeSize;
        at = Math.floor(chunk / n) * s.stripeSize + inChunk;
        room = s.stripeSize - inChunk;
      }
      const len = Math.min(room, stop - pos);
      const pv = s.pvs[idx]!;
      out.push({ pv, at: pv.peStart + s.stripes[idx]!.startExtent * ext + at, length: len });
      pos += len;
      if (pos >= s.end) k++;
    }
    return out;
  }

  const check = (offset: number, length: number, what: string) => {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > lv.size) {
      throw new PolyvisorError('ERR_RANGE', `${what} of ${length} bytes at ${offset} lies outside the logical volume (${lv.size} bytes)`, { file: name });
    }
  };
  const members = [...new Set(segs.flatMap((s) => s.pvs.map((p) => p.volume)))];
  return {
    name,
    size: lv.size,
    readOnly: members.some((m) => m.readOnly),
    async read(offset, length) {
      check(offset, length, 'read');
      const out = Buffer.alloc(length);
      let o = 0;
      for (const p of pieces(offset, length)) {
        (await p.pv.volume.read(p.at, p.length)).copy(out, o);
        o += p.length;
      }
      return out;
    },
    async write(offset, data) {
      check(offset, data.length, 'write');
      let o = 0;
      for (const p of pieces(offset, data.length)) {
        await p.pv.volume.write(p.at, data.subarray(o, o + p.length));
        o += p.length;
      }
    },
    async flush() {
      for (const m of members) await m.flush();
    },
  };
}
