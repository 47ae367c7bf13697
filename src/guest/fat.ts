/**
 * FAT12, FAT16 and FAT32 as a GuestFs: the EFI system partition, boot partitions, and the
 * small FAT volumes guest adaptation edits (bootloader configuration, drivers for Windows'
 * first boot).
 *
 * Source: Microsoft's "FAT: General Overview of On-Disk Format" (fatgen103): the BPB
 * (fat-bpb.ts), the FAT itself (fat-table.ts), directory entries and VFAT long names
 * (fat-dir.ts), and here the file-system walk and writes: the fixed root directory of
 * FAT12/16 (section 6) or the root cluster chain of FAT32 (BPB_RootClus), directories of at
 * most 65536 entries, and the FAT32 FSInfo sector (section 5), whose free count is kept right
 * as clusters are allocated and freed.
 *
 * Writes keep the volume consistent after every call: file data first, then the FAT (every
 * mirrored copy), then the directory entry, then FSInfo; `fsck.fat -n` finds nothing to fix.
 * FAT has no owners, permissions or symbolic links: stat synthesises 0755 for directories and
 * 0644 for files (0444 with the read-only attribute), owned by 0:0, and times are read and
 * written as UTC, since FAT stores no time zone.
 */
import { PolyvisorError } from '../errors.js';
import type { GuestDirEntry, GuestFs, GuestStat } from './fs.js';
import { parseBpb, type FatGeometry, type FatType } from './fat-bpb.js';
import { FatTable } from './fat-table.js';
import { ATTR, ENTRY, chooseShortName, decodeDirectory, encodeLongEntries, encodeShortEntry, invalidLongName, sameName, type DirEntry } from './fat-dir.js';
import type { Volume } from './volume.js';

/** fatgen103 section 6: a directory holds at most 65536 entries */
const MAX_DIR_ENTRIES = 65536;
/** decoded directories kept in memory, in bytes; beyond it the cache starts again empty */
const DIR_CACHE_BYTES = 32 * 1024 * 1024;
/** the largest single write of file data */
const WRITE_RUN = 4 * 1024 * 1024;
/** FAT file sizes are 32-bit */
const MAX_FILE_SIZE = 0xffffffff;

/** FSInfo sector (fatgen103 section 5) */
const FSI = {
  leadSig: 0,
  strucSig: 484,
  freeCount: 488,
  nxtFree: 492,
  trailSig: 508,
  LEAD: 0x41615252,
  STRUC: 0x61417272,
  TRAIL: 0xaa550000,
  UNKNOWN: 0xffffffff,
} as const;

/** One loaded directory: its bytes and where each 32-byte slot lies on the volume. */
interface Dir {
  /** cluster numbers of a cluster-chain directory; null for the fixed FAT12/16 root */
  clusters: number[] | null;
  /** the number ".." entries of its subdirectories record: 0 for the root */
  cluster: number;
  buf: Buffer;
  entries: DirEntry[];
  label?: string;
}

export class FatFs implements GuestFs {
  readonly type = 'vfat';
  readonly uuid?: string;
  readonly readOnly: boolean;
  readonly fatType: FatType;
  readonly #v: Volume;
  readonly #g: FatGeometry;
  readonly #fat: FatTable;
  #label: string | undefined;
  /**
   * Directories by first cluster (0 for the root), so that a walk over a tree reads each
   * directory once. Writes go through the same objects, so the cache stays the volume's
   * truth as long as nothing else writes the volume while it is open.
   */
  readonly #dirs = new Map<number, Dir>();
  #dirBytes = 0;
  /** FAT32 FSInfo free count, when the sector is valid and its count known */
  #freeCount: number | undefined;

  private constructor(v: Volume, g: FatGeometry) {
    this.#v = v;
    this.#g = g;
    this.#fat = new FatTable(v, g);
    this.readOnly = v.readOnly;
    this.fatType = g.fatType;
    if (g.volumeId) this.uuid = g.volumeId;
  }

  /** the root directory's volume-ID entry (what blkid and Windows show), else BS_VolLab */
  get label(): string | undefined {
    return this.#label;
  }

  /** Opens the FAT file system on `v`; ERR_CORRUPT when its boot sector is not a valid BPB. */
  static async open(v: Volume): Promise<FatFs> {
    if (v.size < 512) throw new PolyvisorError('ERR_TRUNCATED', 'the volume is smaller than a boot sector', { file: v.name });
    const g = parseBpb(v, await v.read(0, 512));
    const fs = new FatFs(v, g);
    if (g.fsInfoOffset && g.fsInfoOffset + 512 <= g.fatOffset) {
      const s = await v.read(g.fsInfoOffset, 512);
      if (s.readUInt32LE(FSI.leadSig) === FSI.LEAD && s.readUInt32LE(FSI.strucSig) === FSI.STRUC && s.readUInt32LE(FSI.trailSig) === FSI.TRAIL) {
        const free = s.readUInt32LE(FSI.freeCount);
        if (free <= g.clusterCount) fs.#freeCount = free;
        const next = s.readUInt32LE(FSI.nxtFree);
        if (fs.#fat.valid(next)) fs.#fat.nextFree = next;
      } else g.fsInfoOffset = 0;
    } else g.fsInfoOffset = 0;
    const root = await fs.#loadDir(0, '/');
    fs.#label = root.label ?? g.bpbLabel;
    return fs;
  }

  /** for `disk info`-like reports */
  get geometry(): Readonly<FatGeometry> {
    return this.#g;
  }

  #err(code: 'ERR_NOT_FOUND' | 'ERR_CORRUPT' | 'ERR_EXISTS' | 'ERR_UNSUPPORTED' | 'ERR_RANGE', path: string, detail: string): PolyvisorError {
    return new PolyvisorError(code, `${path}: ${detail}`, { file: this.#v.name });
  }

  #clusterOffset(c: number): number {
    return this.#g.dataOffset + (c - 2) * this.#g.clusterSize;
  }

  /** Reads the runs of consecutive clusters of `clusters` ([first..] in order), `length` bytes in all. */
  async #readClusters(clusters: number[], length: number): Promise<Buffer> {
    const out = Buffer.alloc(length);
    const cs = this.#g.clusterSize;
    let done = 0;
    for (let i = 0; i < clusters.length && done < length; ) {
      let j = i + 1;
      while (j < clusters.length && clusters[j] === clusters[j - 1]! + 1) j++;
      const n = Math.min((j - i) * cs, length - done);
      (await this.#v.read(this.#clusterOffset(clusters[i]!), n)).copy(out, done);
      done += n;
      i = j;
    }
    return out;
  }

  async #writeClusters(clusters: number[], data: Uint8Array): Promise<void> {
    const cs = this.#g.clusterSize;
    let done = 0;
    for (let i = 0; i < clusters.length; ) {
      // runs of consecutive clusters, at most WRITE_RUN bytes each
      let j = i + 1;
      while (j < clusters.length && clusters[j] === clusters[j - 1]! + 1 && (j - i) * cs < WRITE_RUN) j++;
      const n = (j - i) * cs;
      const chunk = Buffer.alloc(n);
      // the tail of the last cluster is zeroed: no stale bytes of an older file stay reachable
      chunk.set(data.subarray(done, Math.min(done + n, data.length)));
      await this.#v.write(this.#clusterOffset(clusters[i]!), chunk);
      done += n;
      i = j;
    }
  }

  async #loadDir(cluster: number, path: string): Promise<Dir> {
    // FAT32's root is reached by 0 ("..") and by BPB_RootClus alike: one object for both
    if (this.#g.fatType === 32 && cluster === this.#g.rootCluster) cluster = 0;
    const cached = this.#dirs.get(cluster);
    if (cached) return cached;
    let clusters: number[] | null;
    let buf: Buffer;
    if (cluster === 0 && this.#g.fatType !== 32) {
      clusters = null;
      buf = await this.#v.read(this.#g.rootDirOffset, this.#g.rootEntries * ENTRY);
    } else {
      const first = cluster === 0 ? this.#g.rootCluster : cluster;
      const max = Math.max(1, Math.ceil((MAX_DIR_ENTRIES * ENTRY) / this.#g.clusterSize));
      clusters = await this.#fat.chain(first, `directory ${path}`, undefined, max);
      buf = await this.#readClusters(clusters, clusters.length * this.#g.clusterSize);
    }
    const dir: Dir = { clusters, cluster, buf, entries: [] };
    dir.entries = decodeDirectory(buf, cluster === 0 ? (l) => (dir.label ??= l) : undefined);
    if (this.#dirBytes + buf.length > DIR_CACHE_BYTES) {
      this.#dirs.clear();
      this.#dirBytes = 0;
    }
    this.#dirs.set(cluster, dir);
    this.#dirBytes += buf.length;
    return dir;
  }

  #slotOffset(dir: Dir, slot: number): number {
    const at = slot * ENTRY;
    if (!dir.clusters) return this.#g.rootDirOffset + at;
    const cs = this.#g.clusterSize;
    return this.#clusterOffset(dir.clusters[Math.floor(at / cs)]!) + (at % cs);
  }

  async #writeSlots(dir: Dir, first: number, entries: Buffer[]): Promise<void> {
    for (let k = 0; k < entries.length; k++) {
      entries[k]!.copy(dir.buf, (first + k) * ENTRY);
      await this.#v.write(this.#slotOffset(dir, first + k), entries[k]!);
    }
    dir.entries = decodeDirectory(dir.buf);
  }

  /** [".", "..", "a", "b"] of an absolute guest path, without empty parts */
  #parts(path: string): string[] {
    if (path.includes('\0')) throw this.#err('ERR_NOT_FOUND', JSON.stringify(path), 'a path may not hold NUL');
    return path.split('/').filter((p) => p !== '' && p !== '.');
  }

  /** the entry a path names, null for the root directory */
  async #walk(path: string): Promise<{ entry: DirEntry | null }> {
    const stack: { entry: DirEntry | null }[] = [{ entry: null }];
    const parts = this.#parts(path);
    if (parts.length > 4096) throw this.#err('ERR_NOT_FOUND', path, 'the path is too deep');
    for (const part of parts) {
      if (part === '..') {
        if (stack.length > 1) stack.pop();
        continue;
      }
      const here = stack[stack.length - 1]!;
      if (here.entry && !(here.entry.attr & ATTR.directory)) throw this.#err('ERR_NOT_FOUND', path, `${here.entry.name} is not a directory`);
      const dir = await this.#loadDir(here.entry ? here.entry.firstCluster : 0, path);
      const entry = dir.entries.find((e) => (sameName(e.name, part) || sameName(e.shortName, part)) && e.name !== '.' && e.name !== '..');
      if (!entry) throw this.#err('ERR_NOT_FOUND', path, 'no such file or directory');
      if (entry.attr & ATTR.directory && entry.firstCluster === 0) throw this.#err('ERR_CORRUPT', path, 'a directory entry without a first cluster');
      stack.push({ entry });
    }
    return stack[stack.length - 1]!;
  }

  #statOf(entry: DirEntry | null): GuestStat {
    if (!entry) return { type: 'directory', size: 0, mode: 0o40755, uid: 0, gid: 0, mtime: 0 };
    const dir = (entry.attr & ATTR.directory) !== 0;
    const perm = dir ? 0o755 : entry.attr & ATTR.readOnly ? 0o444 : 0o644;
    return { type: dir ? 'directory' : 'file', size: dir ? 0 : entry.size, mode: (dir ? 0o40000 : 0o100000) | perm, uid: 0, gid: 0, mtime: entry.mtime };
  }

  async stat(path: string): Promise<GuestStat> {
    return this.#statOf((await this.#walk(path)).entry);
  }

  /** FAT has no symbolic links: the same as stat */
  async lstat(path: string): Promise<GuestStat> {
    return this.stat(path);
  }

  async exists(path: string): Promise<boolean> {
    try {
      await this.#walk(path);
      return true;
    } catch (e) {
      if (e instanceof PolyvisorError && e.code === 'ERR_NOT_FOUND') return false;
      throw e;
    }
  }

  async #dirOf(path: string): Promise<Dir> {
    const { entry } = await this.#walk(path);
    if (entry && !(entry.attr & ATTR.directory)) throw this.#err('ERR_NOT_FOUND', path, 'is not a directory');
    return this.#loadDir(entry ? entry.firstCluster : 0, path);
  }

  async readdir(path: string): Promise<GuestDirEntry[]> {
    const dir = await this.#dirOf(path);
    return dir.entries.filter((e) => e.name !== '.' && e.name !== '..').map((e) => ({ name: e.name, type: e.attr & ATTR.directory ? 'directory' : 'file' }));
  }

  async readlink(path: string): Promise<string> {
    await this.#walk(path);
    throw this.#err('ERR_UNSUPPORTED', path, 'is not a symbolic link (FAT has none)');
  }

  async readFile(path: string): Promise<Buffer> {
    const { entry } = await this.#walk(path);
    if (!entry || entry.attr & ATTR.directory) throw this.#err('ERR_NOT_FOUND', path, 'is a directory, not a file');
    if (entry.size === 0) return Buffer.alloc(0);
    if (entry.firstCluster === 0) throw this.#err('ERR_CORRUPT', path, `a file of ${entry.size} bytes without a first cluster`);
    const clusters = await this.#fat.chain(entry.firstCluster, `file ${path}`, Math.ceil(entry.size / this.#g.clusterSize));
    return this.#readClusters(clusters, entry.size);
  }

  #checkWritable(): void {
    if (this.readOnly) throw new PolyvisorError('ERR_READ_ONLY', 'the file system was opened read-only', { file: this.#v.name });
  }

  /** the directory a new entry goes into, and the new entry's name */
  async #parentFor(path: string): Promise<{ dir: Dir; name: string; existing: DirEntry | undefined }> {
    const parts = this.#parts(path);
    const name = parts.pop();
    if (name === undefined || name === '..') throw this.#err('ERR_EXISTS', path, 'names a directory');
    const why = invalidLongName(name);
    if (why) throw this.#err('ERR_UNSUPPORTED', path, `the name "${name}" ${why}`);
    const dir = await this.#dirOf('/' + parts.join('/'));
    const existing = dir.entries.find((e) => sameName(e.name, name) || sameName(e.shortName, name));
    return { dir, name, existing };
  }

  async writeFile(path: string, data: Uint8Array): Promise<void> {
    this.#checkWritable();
    if (data.length > MAX_FILE_SIZE) throw this.#err('ERR_RANGE', path, `${data.length} bytes exceed FAT's 4 GiB - 1 file size limit`);
    const { dir, name, existing } = await this.#parentFor(path);
    if (existing && existing.attr & ATTR.directory) throw this.#err('ERR_EXISTS', path, 'is a directory');
    const now = Math.floor(Date.now() / 1000);
    const need = Math.ceil(data.length / this.#g.clusterSize);
    let freed = 0;
    let clusters: number[];
    try {
      if (existing && existing.firstCluster !== 0) {
        const old = await this.#fat.chain(existing.firstCluster, `file ${path}`);
        await this.#fat.free(old);
        freed = old.length;
      }
      clusters = await this.#fat.allocate(need);
    } catch (e) {
      this.#fat.discard();
      throw e;
    }
    await this.#writeClusters(clusters, data);
    await this.#fat.commit();
    const first = clusters[0] ?? 0;
    if (existing) {
      const e = encodeShortEntry(existing.rawShort, dir.buf[existing.slot * ENTRY + 12]!, existing.attr | ATTR.archive, first, data.length, now);
      // keep the creation time the entry had
      dir.buf.copy(e, 13, existing.slot * ENTRY + 13, existing.slot * ENTRY + 18);
      await this.#writeSlots(dir, existing.slot, [e]);
    } else {
      await this.#addEntry(dir, name, ATTR.archive, first, data.length, now);
    }
    await this.#updateFsInfo(freed - need);
  }

  /** Creates a directory (its parent must exist). */
  async mkdir(path: string): Promise<void> {
    this.#checkWritable();
    const { dir, name, existing } = await this.#parentFor(path);
    if (existing) throw this.#err('ERR_EXISTS', path, 'exists');
    const now = Math.floor(Date.now() / 1000);
    const [c] = await this.#fat.allocate(1);
    const body = Buffer.alloc(this.#g.clusterSize);
    // "." and ".." (fatgen103 section 6.7); ".." of a child of the root records cluster 0
    encodeShortEntry(Buffer.from('.          ', 'latin1'), 0, ATTR.directory, c!, 0, now).copy(body, 0);
    encodeShortEntry(Buffer.from('..         ', 'latin1'), 0, ATTR.directory, dir.cluster, 0, now).copy(body, ENTRY);
    await this.#writeClusters([c!], body);
    await this.#fat.commit();
    await this.#addEntry(dir, name, ATTR.directory, c!, 0, now);
    await this.#updateFsInfo(-1);
  }

  /** Writes the long entries and the short entry of a new name into `dir`, growing it if needed. */
  async #addEntry(dir: Dir, name: string, attr: number, first: number, size: number, now: number): Promise<void> {
    const taken = new Set(dir.entries.map((e) => e.rawShort.toString('latin1')));
    const choice = chooseShortName(name, taken);
    const entries = [...(choice.needsLong ? encodeLongEntries(name, choice.raw) : []), encodeShortEntry(choice.raw, choice.ntres, attr, first, size, now)];
    let slot = this.#freeRun(dir, entries.length);
    while (slot < 0) {
      await this.#growDir(dir);
      slot = this.#freeRun(dir, entries.length);
    }
    const endMark = this.#endMark(dir);
    await this.#writeSlots(dir, slot, entries);
    // Entries past the end mark should all be zero; should one not be, the slot after ours
    // becomes the new end mark, so that no stale bytes turn into entries.
    const after = slot + entries.length;
    if (slot >= endMark && after * ENTRY < dir.buf.length && dir.buf[after * ENTRY] !== 0) await this.#writeSlots(dir, after, [Buffer.alloc(ENTRY)]);
  }

  /** the slot holding the end-of-directory mark (first byte 0), or the slot count */
  #endMark(dir: Dir): number {
    const slots = dir.buf.length / ENTRY;
    for (let s = 0; s < slots; s++) if (dir.buf[s * ENTRY] === 0) return s;
    return slots;
  }

  /** the first slot of `n` consecutive free entries (deleted, or at/after the end mark), or -1 */
  #freeRun(dir: Dir, n: number): number {
    const slots = dir.buf.length / ENTRY;
    let run = 0;
    let ended = false;
    for (let s = 0; s < slots; s++) {
      const b = dir.buf[s * ENTRY]!;
      if (b === 0) ended = true;
      if (ended || b === 0xe5) {
        if (++run === n) return s - n + 1;
      } else run = 0;
    }
    return -1;
  }

  async #growDir(dir: Dir): Promise<void> {
    const cs = this.#g.clusterSize;
    if (!dir.clusters) throw this.#err('ERR_RANGE', '/', `the root directory is full (${this.#g.rootEntries} entries)`);
    if ((dir.clusters.length + 1) * cs > MAX_DIR_ENTRIES * ENTRY) throw this.#err('ERR_RANGE', 'directory', `a directory holds at most ${MAX_DIR_ENTRIES} entries`);
    const [c] = await this.#fat.allocate(1);
    await this.#fat.set(dir.clusters[dir.clusters.length - 1]!, c!);
    await this.#writeClusters([c!], Buffer.alloc(0));
    await this.#fat.commit();
    await this.#updateFsInfo(-1);
    dir.clusters.push(c!);
    dir.buf = Buffer.concat([dir.buf, Buffer.alloc(cs)]);
    this.#dirBytes += cs;
  }

  /** FAT32: FSI_Free_Count by `delta`, and FSI_Nxt_Free (fatgen103 section 5) */
  async #updateFsInfo(delta: number): Promise<void> {
    if (!this.#g.fsInfoOffset) return;
    const b = Buffer.alloc(8);
    if (this.#freeCount !== undefined) this.#freeCount += delta;
    b.writeUInt32LE(this.#freeCount ?? FSI.UNKNOWN, 0);
    b.writeUInt32LE(this.#fat.nextFree, 4);
    await this.#v.write(this.#g.fsInfoOffset + FSI.freeCount, b);
  }

  /** free clusters, counted from the FAT */
  async freeClusters(): Promise<number> {
    return this.#fat.countFree();
  }

  async flush(): Promise<void> {
    await this.#fat.commit();
    await this.#v.flush();
  }
}

/** Opens the FAT file system on a volume. */
export function openFat(v: Volume): Promise<FatFs> {
  return FatFs.open(v);
}
