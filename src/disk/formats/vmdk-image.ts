/**
 * The VMDK BlockImage: a descriptor plus an ordered list of extents (Virtual Disk Format
 * 5.0, "Extent Descriptions") laid end to end in guest space. Each extent maps its range to
 * runs (data in a file, zero, unallocated, compressed grain); this class reads, writes and
 * reports allocation through them, resolving unallocated runs through the parent of a
 * delta disk. Flat and ZERO extents live here; sparse ones in vmdk-sparse.ts/vmdk-delta.ts.
 */
import { PolyvisorError } from '../../errors.js';
import { checkRange, readBacking } from '../backing.js';
import type { BackingRef, BlockImage, CheckResult, Extent } from '../image.js';
import type { ImageFile } from '../io.js';
import { CID_NOPARENT, formatDescriptor, type Descriptor, type ExtentAccess } from './vmdk-descriptor.js';
import { SECTOR, SparseExtent, type BaseReader, type Run, type VmdkExtent } from './vmdk-sparse.js';
import { crypto } from '../../util/builtins.js';

/** FLAT / VMFS extents: the guest bytes stored as is, from `offset` in their file. */
export class FlatExtent implements VmdkExtent {
  readonly file: ImageFile;
  readonly bytes: number;
  readonly grainBytes = 0;
  readonly compressed = false;
  readonly type: string;
  readonly #offset: number;

  constructor(type: string, file: ImageFile, bytes: number, offset: number) {
    this.type = type;
    this.file = file;
    this.bytes = bytes;
    this.#offset = offset;
  }

  async map(off: number, len: number): Promise<Run[]> {
    return [{ off, len, kind: 'data', host: this.#offset + off }];
  }

  async write(src: Uint8Array, off: number): Promise<void> {
    await this.file.writeAt(src, this.#offset + off);
  }

  async writeZeroes(off: number, len: number): Promise<void> {
    const z = Buffer.alloc(Math.min(len, 1 << 20));
    for (let p = 0; p < len; p += z.length) await this.file.writeAt(z.subarray(0, Math.min(z.length, len - p)), this.#offset + off + p);
  }

  async flush(): Promise<void> {}

  info(): Record<string, unknown> {
    return { type: this.type, offset: this.#offset / SECTOR };
  }
}

/** ZERO extents: read as zeroes, hold nothing. */
export class ZeroExtent implements VmdkExtent {
  readonly type = 'ZERO';
  readonly file = null;
  readonly grainBytes = 0;
  readonly compressed = false;
  readonly bytes: number;
  constructor(bytes: number) {
    this.bytes = bytes;
  }
  async map(off: number, len: number): Promise<Run[]> {
    return [{ off, len, kind: 'zero' }];
  }
  async flush(): Promise<void> {}
  info(): Record<string, unknown> {
    return { type: 'ZERO' };
  }
}

export interface PlacedExtent {
  /** guest byte offset where the extent starts */
  start: number;
  ext: VmdkExtent;
  access: ExtentAccess;
  /** the file name as the descriptor records it */
  name?: string;
  /** FLAT offset in sectors */
  offset: number;
}

export interface VmdkImageParams {
  main: ImageFile;
  desc: Descriptor;
  /** where the descriptor text lives: a separate file (max = Infinity) or embedded in the main extent */
  descFile: ImageFile;
  descOffset: number;
  descMax: number;
  extents: PlacedExtent[];
  /** files to close besides `main` */
  files: ImageFile[];
  readOnly: boolean;
  backing: BlockImage | null;
  backingRef: BackingRef | null;
  /** created by us: the CID is already fresh */
  created: boolean;
}

export class VmdkImage implements BlockImage {
  readonly format = 'vmdk';
  readonly readOnly: boolean;
  readonly virtualSize: number;
  readonly clusterSize: number;
  readonly backing: BlockImage | null;
  readonly backingRef: BackingRef | null;
  readonly #p: VmdkImageParams;
  readonly #desc: Descriptor;
  #cidStale: boolean;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;

  constructor(p: VmdkImageParams) {
    this.#p = p;
    this.#desc = p.desc;
    this.readOnly = p.readOnly;
    this.backing = p.backing;
    this.backingRef = p.backingRef;
    const last = p.extents[p.extents.length - 1]!;
    this.virtualSize = last.start + last.ext.bytes;
    this.clusterSize = p.extents.find((e) => e.ext.grainBytes > 0)?.ext.grainBytes ?? 65536;
    this.#cidStale = false;
    void p.created;
  }

  get path(): string {
    return this.#p.main.path;
  }

  get cid(): number {
    return this.#desc.cid;
  }

  #locked<T>(fn: () => Promise<T>): Promise<T> {
    if (this.readOnly) return fn();
    const p = this.#queue.then(fn);
    this.#queue = p.catch(() => undefined);
    return p;
  }

  /** Calls fn for each extent piece of guest [offset, offset+length). */
  async #each(offset: number, length: number, fn: (e: PlacedExtent, rel: number, n: number, at: number) => Promise<void>): Promise<void> {
    const exts = this.#p.extents;
    // binary search for the first extent
    let lo = 0;
    let hi = exts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (exts[mid]!.start <= offset) lo = mid;
      else hi = mid - 1;
    }
    let pos = offset;
    const end = offset + length;
    for (let i = lo; i < exts.length && pos < end; i++) {
      const e = exts[i]!;
      const eEnd = e.start + e.ext.bytes;
      if (eEnd <= pos) continue;
      const n = Math.min(eEnd, end) - pos;
      await fn(e, pos - e.start, n, pos - offset);
      pos += n;
    }
  }

  #noAccess(e: PlacedExtent): PolyvisorError {
    return new PolyvisorError('ERR_UNSUPPORTED', `extent "${e.name ?? e.ext.type}" is marked NOACCESS`, { file: this.path });
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    checkRange(this, offset, length, 'block status');
    return this.#locked(async () => {
      const out: Extent[] = [];
      const push = (x: Extent) => {
        const l = out[out.length - 1];
        if (l && l.kind === x.kind && !!l.compressed === !!x.compressed && (x.kind !== 'data' || x.compressed || (l.hostOffset !== undefined && x.hostOffset !== undefined && l.hostOffset + l.length === x.hostOffset) || (l.hostOffset === undefined && x.hostOffset === undefined))) {
          l.length += x.length;
        } else out.push(x);
      };
      await this.#each(offset, length, async (e, rel, n) => {
        if (e.access === 'NOACCESS') throw this.#noAccess(e);
        const own = e.ext.file === this.#p.main;
        for (const r of await e.ext.map(rel, n)) {
          const guest = e.start + r.off;
          if (r.kind === 'data') push(own ? { offset: guest, length: r.len, kind: 'data', hostOffset: r.host } : { offset: guest, length: r.len, kind: 'data' });
          else if (r.kind === 'compressed') push({ offset: guest, length: r.len, kind: 'data', compressed: true });
          else if (r.kind === 'memory') push({ offset: guest, length: r.len, kind: 'data' });
          else push({ offset: guest, length: r.len, kind: r.kind });
        }
      });
      return out;
    });
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    return this.#locked(() =>
      this.#each(offset, buf.length, async (e, rel, n, at) => {
        if (e.access === 'NOACCESS') throw this.#noAccess(e);
        for (const r of await e.ext.map(rel, n)) {
          const dst = buf.subarray(at + r.off - rel, at + r.off - rel + r.len);
          if (r.kind === 'data') await e.ext.file!.readInto(dst, r.host!);
          else if (r.kind === 'zero') dst.fill(0);
          else if (r.kind === 'memory') dst.set(r.data!);
          else if (r.kind === 'unallocated') await readBacking(this.backing, dst, e.start + r.off);
          else {
            const g = await e.ext.readGrain!(r.grain!);
            const inner = r.off - r.grain! * e.ext.grainBytes;
            dst.set(g.subarray(inner, inner + r.len));
          }
        }
      }),
    );
  }

  #base(e: PlacedExtent): BaseReader | null {
    const b = this.backing;
    return b ? (buf, off) => readBacking(b, buf, e.start + off) : null;
  }

  #writable(e: PlacedExtent, op: string): void {
    if (e.access !== 'RW') throw new PolyvisorError('ERR_READ_ONLY', `extent "${e.name ?? e.ext.type}" is ${e.access}; cannot ${op}`, { file: this.path });
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    if (this.readOnly) throw new PolyvisorError('ERR_READ_ONLY', 'image is open read-only', { file: this.path });
    checkRange(this, offset, buf.length, 'write');
    return this.#locked(async () => {
      await this.#each(offset, buf.length, async (e, rel, n, at) => {
        this.#writable(e, 'write');
        if (!e.ext.write) throw new PolyvisorError('ERR_UNSUPPORTED', `writing to ${e.ext.type} extents is not supported; convert to monolithicSparse to modify`, { file: this.path });
        await e.ext.write(buf.subarray(at, at + n), rel, this.#base(e));
      });
      this.#touch();
    });
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    if (this.readOnly) throw new PolyvisorError('ERR_READ_ONLY', 'image is open read-only', { file: this.path });
    checkRange(this, offset, length, 'write zeroes');
    return this.#locked(async () => {
      await this.#each(offset, length, async (e, rel, n) => {
        if (e.ext.type === 'ZERO') return;
        this.#writable(e, 'write zeroes');
        if (!e.ext.writeZeroes) throw new PolyvisorError('ERR_UNSUPPORTED', `writing to ${e.ext.type} extents is not supported`, { file: this.path });
        await e.ext.writeZeroes(rel, n, this.#base(e));
      });
      this.#touch();
    });
  }

  /**
   * Spec ("The Content ID"): the CID changes whenever the content does, so that a child whose
   * parentCID no longer matches knows its parent was modified under it. Like VMware and qemu,
   * a new random CID is recorded on the first write after an image is opened.
   */
  #touch(): void {
    if (this.#p.created || this.#cidStale) return;
    this.#cidStale = true;
    let cid = crypto().randomInt(0, 0xfffffffe);
    if (cid === this.#desc.cid) cid ^= 1;
    this.#desc.cid = cid;
  }

  async #writeDescriptor(): Promise<void> {
    const d = this.#desc;
    const text = Buffer.from(
      formatDescriptor({
        cid: d.cid,
        parentCid: d.parentCid,
        createType: d.createType,
        parentFileNameHint: d.parentFileNameHint,
        other: d.other,
        extents: d.extents.map((x) => ({ access: x.access, sectors: x.sectors, type: x.type, file: x.file, offset: x.offset })),
        ddb: Object.entries(d.ddb),
      }),
    );
    const p = this.#p;
    if (p.descMax !== Infinity) {
      if (text.length > p.descMax) {
        throw new PolyvisorError('ERR_UNSUPPORTED', `the updated descriptor (${text.length} bytes) does not fit its ${p.descMax}-byte area`, { file: p.descFile.path, structure: 'descriptor', offset: p.descOffset });
      }
      const area = Buffer.alloc(p.descMax);
      text.copy(area);
      await p.descFile.writeAt(area, p.descOffset);
    } else {
      await p.descFile.writeAt(text, 0);
      await p.descFile.truncate(text.length);
    }
  }

  async #flush(): Promise<void> {
    for (const e of this.#p.extents) await e.ext.flush();
    if (this.#cidStale) {
      await this.#writeDescriptor();
      this.#cidStale = false;
      this.#p.created = true; // CID refreshed once per open
    }
    for (const f of this.#files()) await f.sync();
  }

  #files(): ImageFile[] {
    return [this.#p.main, ...this.#p.files.filter((f) => f !== this.#p.main)];
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    return this.#locked(() => this.#flush());
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      if (!this.readOnly) await this.#locked(() => this.#flush());
    } finally {
      for (const f of this.#files()) await f.close();
      await this.backing?.close();
    }
  }

  formatInfo(): Record<string, unknown> {
    const d = this.#desc;
    const info: Record<string, unknown> = {
      'create-type': d.createType,
      subformat: d.createType,
      cid: d.cid,
      'parent-cid': d.parentCid,
      'adapter-type': d.ddb['adapterType'],
      hwversion: d.ddb['virtualHWVersion'],
    };
    if (d.parentFileNameHint !== undefined) info['parent-filename-hint'] = d.parentFileNameHint;
    if (d.ddb['toolsVersion'] !== undefined) info['tools-version'] = d.ddb['toolsVersion'];
    if (d.ddb['geometry.cylinders'] !== undefined) {
      info.geometry = { cylinders: Number(d.ddb['geometry.cylinders']), heads: Number(d.ddb['geometry.heads']), sectors: Number(d.ddb['geometry.sectors']) };
    }
    info.ddb = { ...d.ddb };
    if (Object.keys(d.other).length) info.other = { ...d.other };
    info.extents = this.#p.extents.map((e) => {
      const x: Record<string, unknown> = {
        file: e.name ?? null,
        filename: e.ext.file?.path ?? null,
        type: e.ext.type,
        access: e.access,
        sectors: e.ext.bytes / SECTOR,
        'virtual-size': e.ext.bytes,
        offset: e.offset,
        compressed: e.ext.compressed,
        ...e.ext.info(),
      };
      if (e.ext.grainBytes) x['grain-size'] = e.ext.grainBytes;
      return x;
    });
    return info;
  }

  async check(): Promise<CheckResult> {
    return this.#locked(async () => {
      const r: CheckResult = { corruptions: 0, leaks: 0, messages: [], allocatedClusters: 0, totalClusters: 0, compressedClusters: 0, imageEndOffset: this.#p.main.size };
      for (const e of this.#p.extents) {
        if (e.ext.check) {
          const c = await e.ext.check();
          r.corruptions += c.corruptions;
          r.leaks += c.leaks;
          r.messages.push(...c.messages);
          r.allocatedClusters! += c.allocated;
          r.totalClusters! += c.total;
          r.compressedClusters! += c.compressed;
          if (e.ext.file === this.#p.main && e.ext instanceof SparseExtent) r.imageEndOffset = Math.max(r.imageEndOffset!, e.ext.imageEnd);
        } else if (e.ext.type !== 'ZERO' && e.ext.file) {
          const need = e.offset * SECTOR + e.ext.bytes;
          if (e.ext.file.size < need) {
            r.messages.push(`${e.ext.file.path}: flat extent is ${e.ext.file.size} bytes, shorter than the ${need} bytes the descriptor gives it (the rest reads as zeroes)`);
          }
        }
      }
      return r;
    });
  }
}

export { CID_NOPARENT };
