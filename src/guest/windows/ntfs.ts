/**
 * NTFS, read through the GuestFs interface, plus one kind of write: overwriting a file's
 * existing non-resident data with data of the same length (what writing back an edited
 * registry hive needs; see regf.ts's `growable: false`).
 *
 * Reading follows the Linux-NTFS documentation (ntfs-record.ts): the boot sector locates the
 * $MFT; record 0's $DATA (and, for a fragmented $MFT, the extents its $ATTRIBUTE_LIST names)
 * maps every MFT record; a file's attributes are gathered across its attribute list; a
 * non-resident attribute is read through its data runs (bytes past the initialized size read
 * as zeros, sparse runs as zeros); a directory is its "$I30" index: the $INDEX_ROOT's entries
 * and, for a large directory, the INDX records of $INDEX_ALLOCATION they point to, walked with
 * every visited node remembered (a hostile index that loops is refused).
 *
 * Names compare as Windows compares them: code unit by code unit through the volume's own
 * $UpCase table (MFT record 10), or through String.toUpperCase when that table cannot be read.
 * DOS 8.3 names are found but not listed. Reparse points (junctions, symbolic links) are
 * reported as "other" and not followed.
 *
 * Not supported (ERR_UNSUPPORTED, nothing written): creating, renaming, deleting or resizing
 * files; writing resident, compressed, encrypted or sparse data. An overwrite changes no
 * metadata: the file's times stay as they were.
 */
import { PolyvisorError, isPolyvisorError } from '../../errors.js';
import type { GuestDirEntry, GuestFs, GuestStat } from '../fs.js';
import type { Volume } from '../volume.js';
import {
  ATTR,
  ATTR_COMPRESSED,
  ATTR_ENCRYPTED,
  ATTR_SPARSE,
  RECORD_DIRECTORY,
  RECORD_IN_USE,
  applyFixups,
  parseAttributeList,
  parseAttributes,
  parseBootSector,
  parseIndexNode,
  type Attribute,
  type BootSector,
  type IndexEntry,
  type Run,
} from './ntfs-record.js';

const ROOT_RECORD = 5;
const UPCASE_RECORD = 10;
const VOLUME_RECORD = 3;
const MAX_FILE = 1 << 30;
const MAX_PATH_COMPONENTS = 256;
const RECORD_CACHE = 512;

/** A file's data attribute, its extents merged. */
interface DataStream {
  resident: boolean;
  flags: number;
  value?: Buffer;
  runs: Run[];
  dataSize: number;
  initializedSize: number;
}

/** A byte range of the volume. */
export interface VolumeExtent {
  offset: number;
  length: number;
}

export class NtfsFs implements GuestFs {
  readonly type = 'ntfs';
  readonly uuid: string;
  label?: string;
  readonly readOnly: boolean;
  readonly volume: Volume;
  readonly boot: BootSector;
  readonly #totalClusters: number;
  #mftRuns: Run[] = [];
  #upcase: Uint16Array | null = null;
  readonly #records = new Map<number, Buffer>();

  private constructor(volume: Volume, boot: BootSector, readOnly: boolean) {
    this.volume = volume;
    this.boot = boot;
    this.uuid = boot.serial;
    this.readOnly = readOnly;
    this.#totalClusters = Math.floor(volume.size / boot.clusterSize);
  }

  static async open(volume: Volume, options: { readOnly?: boolean } = {}): Promise<NtfsFs> {
    if (volume.size < 4096) throw new PolyvisorError('ERR_TRUNCATED', 'too small for NTFS', { file: volume.name });
    const boot = parseBootSector(await volume.read(0, 512), volume.size, volume.name);
    const fs = new NtfsFs(volume, boot, options.readOnly ?? volume.readOnly);
    await fs.#loadMft();
    try {
      const up = await fs.#readStream(await fs.#dataStream(UPCASE_RECORD, ''), 'the $UpCase table');
      if (up.length === 131072) fs.#upcase = new Uint16Array(up.buffer.slice(up.byteOffset, up.byteOffset + up.length));
    } catch (e) {
      if (!isPolyvisorError(e)) throw e;
    }
    try {
      const name = (await fs.#attributes(VOLUME_RECORD)).find((a) => a.type === 0x60 && a.resident);
      if (name?.value?.length) fs.label = name.value.toString('utf16le');
    } catch (e) {
      if (!isPolyvisorError(e)) throw e;
    }
    return fs;
  }

  #corrupt(detail: string, structure: string, offset?: number): PolyvisorError {
    return new PolyvisorError('ERR_CORRUPT', detail, { file: this.volume.name, structure, ...(offset !== undefined ? { offset } : {}) });
  }

  /** $MFT's own data runs: record 0's, then the extents its attribute list places in other records. */
  async #loadMft(): Promise<void> {
    const { clusterSize, recordSize, mftLcn } = this.boot;
    const at = mftLcn * clusterSize;
    const rec = await this.volume.read(at, recordSize);
    applyFixups(rec, 'FILE', 'MFT record 0 ($MFT)', this.volume.name, at);
    const attrs = parseAttributes(rec, this.#totalClusters, this.volume.name, 0, at);
    const data = attrs.find((a) => a.type === ATTR.DATA && a.name === '' && !a.resident);
    if (!data?.runs?.length) throw this.#corrupt('the $MFT has no non-resident $DATA', 'MFT record 0', at);
    this.#mftRuns = [...data.runs];
    const list = attrs.find((a) => a.type === ATTR.ATTRIBUTE_LIST);
    if (list) {
      const entries = parseAttributeList(await this.#readAttr(list, 'the $MFT attribute list'), this.volume.name, 0);
      const extents = entries.filter((e) => e.type === ATTR.DATA && e.name === '' && e.record !== 0).sort((a, b) => a.startVcn - b.startVcn);
      for (const e of extents) {
        const more = parseAttributes(await this.#record(e.record), this.#totalClusters, this.volume.name, e.record, 0).find((a) => a.type === ATTR.DATA && a.name === '' && !a.resident);
        if (more?.runs) this.#mftRuns.push(...more.runs);
      }
    }
  }

  /** MFT record `n`, fixups applied (cached). */
  async #record(n: number): Promise<Buffer> {
    const hit = this.#records.get(n);
    if (hit) return hit;
    const size = this.boot.recordSize;
    if (!Number.isSafeInteger(n) || n < 0) throw this.#corrupt(`MFT record number ${n}`, 'file reference');
    const ext = this.#map(this.#mftRuns, n * size, size, `MFT record ${n}`);
    const parts = await Promise.all(ext.map((e) => (e.offset < 0 ? Buffer.alloc(e.length) : this.volume.read(e.offset, e.length))));
    const rec = Buffer.concat(parts);
    applyFixups(rec, 'FILE', `MFT record ${n}`, this.volume.name, ext[0]!.offset);
    if (this.#records.size >= RECORD_CACHE) this.#records.delete(this.#records.keys().next().value!);
    this.#records.set(n, rec);
    return rec;
  }

  /** Volume byte ranges of bytes [off, off+len) of a stream mapped by `runs` (offset -1: sparse). */
  #map(runs: Run[], off: number, len: number, what: string): VolumeExtent[] {
    const cs = this.boot.clusterSize;
    const out: VolumeExtent[] = [];
    let pos = off;
    const end = off + len;
    for (const r of runs) {
      if (pos >= end) break;
      const rs = r.vcn * cs;
      const re = rs + r.length * cs;
      if (re <= pos || rs >= end) continue;
      if (rs > pos) throw this.#corrupt(`no data run maps byte ${pos} of ${what}`, 'data runs');
      const n = Math.min(end, re) - pos;
      out.push({ offset: r.lcn === null ? -1 : r.lcn * cs + (pos - rs), length: n });
      pos += n;
    }
    if (pos < end) throw this.#corrupt(`the data runs of ${what} stop at byte ${pos}, before ${end}`, 'data runs');
    return out;
  }

  async #readAttr(a: Attribute, what: string): Promise<Buffer> {
    if (a.resident) return Buffer.from(a.value!);
    return this.#readStream({ resident: false, flags: a.flags, runs: a.runs!, dataSize: a.dataSize!, initializedSize: a.initializedSize! }, what);
  }

  async #readStream(s: DataStream, what: string): Promise<Buffer> {
    if (s.resident) return Buffer.from(s.value!);
    if (s.flags & (ATTR_COMPRESSED | ATTR_ENCRYPTED)) throw new PolyvisorError('ERR_UNSUPPORTED', `${what} is ${s.flags & ATTR_COMPRESSED ? 'compressed' : 'encrypted'}; Polyvisor reads neither`, { file: this.volume.name });
    if (s.dataSize > MAX_FILE) throw new PolyvisorError('ERR_UNSUPPORTED', `${what} is ${s.dataSize} bytes, more than the ${MAX_FILE} read at once`, { file: this.volume.name });
    const init = Math.min(s.initializedSize, s.dataSize);
    const out = Buffer.alloc(s.dataSize);
    let at = 0;
    for (const e of this.#map(s.runs, 0, init, what)) {
      if (e.offset >= 0) (await this.volume.read(e.offset, e.length)).copy(out, at);
      at += e.length;
    }
    return out;
  }

  /** Every attribute of a file, its attribute list followed into extension records. */
  async #attributes(n: number): Promise<Attribute[]> {
    const rec = await this.#record(n);
    const attrs = parseAttributes(rec, this.#totalClusters, this.volume.name, n, 0);
    const list = attrs.find((a) => a.type === ATTR.ATTRIBUTE_LIST);
    if (!list) return attrs;
    const out = attrs.filter((a) => a.type !== ATTR.ATTRIBUTE_LIST);
    const others = new Set(parseAttributeList(await this.#readAttr(list, `the attribute list of MFT record ${n}`), this.volume.name, n).map((e) => e.record).filter((r) => r !== n));
    if (others.size > 4096) throw this.#corrupt(`an attribute list naming ${others.size} records`, `MFT record ${n}`);
    for (const r of others) {
      const ext = await this.#record(r);
      if (Number(ext.readBigUInt64LE(0x20) & 0xffffffffffffn) !== n) throw this.#corrupt(`extension record ${r} does not name record ${n} as its base`, `MFT record ${r}`);
      out.push(...parseAttributes(ext, this.#totalClusters, this.volume.name, r, 0));
    }
    return out;
  }

  /** The named data stream ("" for the file's data) with its extents merged in VCN order. */
  async #dataStream(n: number, name: string, type: number = ATTR.DATA): Promise<DataStream> {
    const parts = (await this.#attributes(n)).filter((a) => a.type === type && a.name === name);
    if (!parts.length) throw new PolyvisorError('ERR_NOT_FOUND', `MFT record ${n} has no ${type === ATTR.DATA ? '$DATA' : `attribute 0x${type.toString(16)}`}${name ? ` "${name}"` : ''}`, { file: this.volume.name });
    const res = parts.find((a) => a.resident);
    if (res) return { resident: true, flags: res.flags, value: res.value!, runs: [], dataSize: res.value!.length, initializedSize: res.value!.length };
    parts.sort((a, b) => a.startVcn! - b.startVcn!);
    const first = parts[0]!;
    if (first.startVcn !== 0) throw this.#corrupt(`the first extent of a stream starts at VCN ${first.startVcn}`, `MFT record ${n}`);
    return { resident: false, flags: first.flags, runs: parts.flatMap((p) => p.runs!), dataSize: first.dataSize!, initializedSize: first.initializedSize! };
  }

  #upper(s: string): string {
    const t = this.#upcase;
    if (!t) return s.toUpperCase();
    let out = '';
    for (let i = 0; i < s.length; i++) out += String.fromCharCode(t[s.charCodeAt(i)]!);
    return out;
  }

  /** Every entry of directory `n`'s "$I30" index. */
  async #dirEntries(n: number): Promise<IndexEntry[]> {
    const rec = await this.#record(n);
    if (!(rec.readUInt16LE(0x16) & RECORD_DIRECTORY)) throw new PolyvisorError('ERR_NOT_FOUND', `MFT record ${n} is not a directory`, { file: this.volume.name });
    const attrs = await this.#attributes(n);
    const root = attrs.find((a) => a.type === ATTR.INDEX_ROOT && a.name === '$I30' && a.resident);
    if (!root?.value || root.value.length < 32) throw this.#corrupt('a directory without an $INDEX_ROOT "$I30"', `MFT record ${n}`);
    const indexRecordSize = root.value.readUInt32LE(8);
    const rootNode = parseIndexNode(root.value, 16, this.volume.name, `$INDEX_ROOT of MFT record ${n}`, 0);
    const out = [...rootNode.entries];
    const pending = [...rootNode.entries.map((e) => e.subnode), rootNode.end].filter((v): v is number => v !== undefined);
    if (!pending.length) return out;
    if (indexRecordSize < 512 || indexRecordSize > 65536 || (indexRecordSize & (indexRecordSize - 1)) !== 0) throw this.#corrupt(`index record size ${indexRecordSize}`, `$INDEX_ROOT of MFT record ${n}`);
    const alloc = attrs.filter((a) => a.type === ATTR.INDEX_ALLOCATION && a.name === '$I30' && !a.resident).sort((a, b) => a.startVcn! - b.startVcn!);
    if (!alloc.length) throw this.#corrupt('the index root points into an $INDEX_ALLOCATION the directory lacks', `MFT record ${n}`);
    const runs = alloc.flatMap((a) => a.runs!);
    const allocSize = alloc[0]!.dataSize!;
    // ntfs-3g's index_vcn_size: VCNs count clusters, or 512-byte blocks when index records are smaller than a cluster
    const vcnSize = indexRecordSize >= this.boot.clusterSize ? this.boot.clusterSize : 512;
    const seen = new Set<number>();
    const maxNodes = Math.floor(allocSize / indexRecordSize) + 1;
    while (pending.length) {
      const vcn = pending.pop()!;
      if (seen.has(vcn)) throw this.#corrupt(`index node VCN ${vcn} is reached twice (a loop)`, `$INDEX_ALLOCATION of MFT record ${n}`);
      seen.add(vcn);
      if (seen.size > maxNodes) throw this.#corrupt('more index nodes than the allocation holds', `$INDEX_ALLOCATION of MFT record ${n}`);
      const off = vcn * vcnSize;
      if (!Number.isSafeInteger(off) || off + indexRecordSize > allocSize) throw this.#corrupt(`index node VCN ${vcn} lies past the allocation (${allocSize} bytes)`, `$INDEX_ALLOCATION of MFT record ${n}`);
      const ext = this.#map(runs, off, indexRecordSize, `the index of MFT record ${n}`);
      const node = Buffer.concat(await Promise.all(ext.map((e) => (e.offset < 0 ? Buffer.alloc(e.length) : this.volume.read(e.offset, e.length)))));
      applyFixups(node, 'INDX', `index record VCN ${vcn} of MFT record ${n}`, this.volume.name, ext[0]!.offset);
      const parsed = parseIndexNode(node, 0x18, this.volume.name, `index record VCN ${vcn} of MFT record ${n}`, ext[0]!.offset);
      out.push(...parsed.entries);
      for (const e of parsed.entries) if (e.subnode !== undefined) pending.push(e.subnode);
      if (parsed.end !== undefined) pending.push(parsed.end);
    }
    return out;
  }

  /** The MFT record of a path ("/Windows/System32", "\\Windows\\System32"). */
  async #lookup(path: string): Promise<number> {
    const parts = path.split(/[\\/]+/).filter((c) => c !== '' && c !== '.');
    if (parts.length > MAX_PATH_COMPONENTS) throw new PolyvisorError('ERR_UNSUPPORTED', `${path}: more than ${MAX_PATH_COMPONENTS} components`, { file: this.volume.name });
    let n = ROOT_RECORD;
    const trail = [n];
    for (const [i, c] of parts.entries()) {
      if (c === '..') {
        if (trail.length > 1) trail.pop();
        n = trail[trail.length - 1]!;
        continue;
      }
      const u = this.#upper(c);
      let found: IndexEntry | undefined;
      try {
        found = (await this.#dirEntries(n)).find((e) => this.#upper(e.name) === u);
      } catch (e) {
        if (isPolyvisorError(e, 'ERR_NOT_FOUND')) throw new PolyvisorError('ERR_NOT_FOUND', `${path}: /${parts.slice(0, i).join('/')} is not a directory`, { file: this.volume.name });
        throw e;
      }
      if (!found) throw new PolyvisorError('ERR_NOT_FOUND', `${path}: no such file or directory`, { file: this.volume.name });
      n = found.record;
      trail.push(n);
    }
    return n;
  }

  async stat(path: string): Promise<GuestStat> {
    return this.lstat(path);
  }

  async lstat(path: string): Promise<GuestStat> {
    const n = await this.#lookup(path);
    const rec = await this.#record(n);
    const flags = rec.readUInt16LE(0x16);
    if (!(flags & RECORD_IN_USE)) throw this.#corrupt(`${path} names MFT record ${n}, which is not in use`, `MFT record ${n}`);
    const attrs = await this.#attributes(n);
    const si = attrs.find((a) => a.type === ATTR.STANDARD_INFORMATION && a.resident);
    const mtime = si?.value && si.value.length >= 16 ? Number((si.value.readBigUInt64LE(8) - 116444736000000000n) / 10000000n) : 0;
    const dir = (flags & RECORD_DIRECTORY) !== 0;
    const reparse = attrs.some((a) => a.type === ATTR.REPARSE_POINT);
    let size = 0;
    if (!dir) {
      const d = attrs.find((a) => a.type === ATTR.DATA && a.name === '' && (a.resident || a.startVcn === 0));
      size = d ? (d.resident ? d.value!.length : d.dataSize!) : 0;
    }
    return { type: reparse ? 'other' : dir ? 'directory' : 'file', size, mode: dir ? 0o40755 : 0o100644, uid: 0, gid: 0, mtime };
  }

  async exists(path: string): Promise<boolean> {
    try {
      await this.#lookup(path);
      return true;
    } catch (e) {
      if (isPolyvisorError(e, 'ERR_NOT_FOUND')) return false;
      throw e;
    }
  }

  async readdir(path: string): Promise<GuestDirEntry[]> {
    const n = await this.#lookup(path);
    const out: GuestDirEntry[] = [];
    const seen = new Set<string>();
    for (const e of await this.#dirEntries(n)) {
      // the DOS 8.3 alias of a long name is a second entry for the same file
      if (e.namespace === 2) continue;
      if (seen.has(e.name)) continue;
      seen.add(e.name);
      let type: GuestDirEntry['type'] = 'file';
      try {
        const rec = await this.#record(e.record);
        type = rec.readUInt16LE(0x16) & RECORD_DIRECTORY ? 'directory' : 'file';
      } catch (err) {
        if (!isPolyvisorError(err)) throw err;
        type = 'other';
      }
      out.push({ name: e.name, type });
    }
    return out;
  }

  async readlink(path: string): Promise<string> {
    throw new PolyvisorError('ERR_UNSUPPORTED', `${path}: Polyvisor does not follow NTFS reparse points`, { file: this.volume.name });
  }

  async readFile(path: string): Promise<Buffer> {
    const n = await this.#lookup(path);
    const st = await this.lstat(path);
    if (st.type !== 'file') throw new PolyvisorError('ERR_NOT_FOUND', `${path} is a ${st.type}, not a file`, { file: this.volume.name });
    return this.#readStream(await this.#dataStream(n, ''), path);
  }

  /**
   * Where a file's data lies on the volume, for an overwrite in place: refused (ERR_UNSUPPORTED)
   * for resident, compressed, encrypted or sparse data and for data not initialized to its end.
   */
  async dataExtents(path: string): Promise<{ size: number; extents: VolumeExtent[] }> {
    const n = await this.#lookup(path);
    const s = await this.#dataStream(n, '');
    const why = s.resident
      ? 'its data is resident in its MFT record'
      : s.flags & ATTR_COMPRESSED
        ? 'it is compressed'
        : s.flags & ATTR_ENCRYPTED
          ? 'it is encrypted'
          : s.flags & ATTR_SPARSE || s.runs.some((r) => r.lcn === null)
            ? 'it is sparse'
            : s.initializedSize < s.dataSize
              ? 'its data is not initialized to its end'
              : null;
    if (why) throw new PolyvisorError('ERR_UNSUPPORTED', `${path}: cannot be overwritten in place: ${why}`, { file: this.volume.name });
    return { size: s.dataSize, extents: this.#map(s.runs, 0, s.dataSize, path) };
  }

  /** Overwrites an existing file's data with data of the same length (the only write NTFS offers here). */
  async writeFile(path: string, data: Uint8Array): Promise<void> {
    if (this.readOnly) throw new PolyvisorError('ERR_READ_ONLY', 'the NTFS volume was opened read-only', { file: this.volume.name });
    let target: { size: number; extents: VolumeExtent[] };
    try {
      target = await this.dataExtents(path);
    } catch (e) {
      if (isPolyvisorError(e, 'ERR_NOT_FOUND')) throw new PolyvisorError('ERR_UNSUPPORTED', `${path}: Polyvisor cannot create files on NTFS, only overwrite existing ones`, { file: this.volume.name });
      throw e;
    }
    if (data.length !== target.size) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `${path}: Polyvisor overwrites NTFS files only with data of their own length (${target.size} bytes, not ${data.length})`, { file: this.volume.name });
    }
    let at = 0;
    for (const e of target.extents) {
      await this.volume.write(e.offset, data.subarray(at, at + e.length));
      at += e.length;
    }
  }

  async flush(): Promise<void> {
    await this.volume.flush();
  }
}

/** Opens the NTFS file system on `volume` (the entry point open.ts would call). */
export function openNtfs(volume: Volume, options: { readOnly?: boolean } = {}): Promise<NtfsFs> {
  return NtfsFs.open(volume, options);
}
