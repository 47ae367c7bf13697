/**
 * ext2, ext3 and ext4 file systems, read and written offline through a Volume (GuestFs).
 *
 * The on-disk format is the kernel's (Documentation/filesystems/ext4/): superblock
 * (ext4-superblock.ts), block groups and their descriptors (ext4-group.ts, ext4-alloc.ts),
 * inodes (ext4-inode.ts), extent trees and classic block maps (ext4-extents.ts,
 * ext4-blockmap.ts), directories (ext4-dir.ts) and the jbd2 journal (ext4-journal.ts).
 *
 * Reading: block sizes 1 to 64 KiB, 32- and 64-byte group descriptors, flex_bg, meta_bg,
 * 128-byte and larger inodes, extents, block maps, inline data, hash-tree directories (read
 * linearly: their leaves are ordinary directory blocks), fast and slow symlinks, holes and
 * uninitialized extents (zeroes). With metadata_csum every superblock, group descriptor,
 * inode, extent block, directory block and bitmap read is checked. A journal that needs
 * recovery is replayed into memory, never onto the disk; the file system then reads as the
 * guest would see it after a reboot, and refuses writes.
 *
 * Paths are resolved inside this file system only: an absolute symlink target starts again at
 * this file system's root, ".." at the root stays there, and 40 symlinks at most are followed
 * per lookup (Linux's limit), so no guest can send a lookup to the host or around in circles.
 *
 * Writing: files are written copy-on-write: new blocks are allocated and written, then the
 * inode is pointed at them, then the old blocks are freed, then bitmaps, group descriptors
 * (with checksums) and the superblock are written. The journal is not used: the file system is
 * offline and is left as e2fsck -f expects a cleanly unmounted one. A directory with a hash
 * index that gains an entry is turned into a linear directory (its index blocks become empty
 * leaves and EXT4_INDEX_FL is cleared), which e2fsck accepts and the kernel reads; removing
 * entries keeps the index.
 */
import { PolyvisorError, isPolyvisorError } from '../errors.js';
import { Groups } from './ext4-alloc.js';
import { blockMapBlocks, blockMapLimit, buildBlockMap, readBlockMap } from './ext4-blockmap.js';
import {
  FT_DIR,
  FT_REG_FILE,
  FT_SYMLINK,
  dxChecksum,
  dxCountOffset,
  emptyLeaf,
  fileTypeOfMode,
  insertEntry,
  newDirBlock,
  parseDirBlock,
  removeEntry,
  sealLeaf,
  unindexBlock,
  verifyDirBlock,
  writeEntry,
  type DirEntry,
  type DirFormat,
} from './ext4-dir.js';
import { ExtDisk } from './ext4-disk.js';
import { buildExtentTree, extentTreeBlocks, readExtentTree, toExtents, type Run } from './ext4-extents.js';
import { BG_INODE_UNINIT, groupFirstBlock } from './ext4-group.js';
import {
  FL_CASEFOLD,
  FL_EA_INODE,
  FL_ENCRYPT,
  FL_EXTENTS,
  FL_INDEX,
  FL_INLINE_DATA,
  FL_VERITY,
  I_BLOCK_SIZE,
  Inode,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  inodeCsumSeed,
  newInode,
  sealInode,
  verifyInode,
} from './ext4-inode.js';
import { replayJournal } from './ext4-journal.js';
import { XATTR_INDEX_SYSTEM, ibodyValue, releaseXattrBlock } from './ext4-xattr.js';
import { COMPAT, INCOMPAT, RO_COMPAT, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, parseSuperblock, type Superblock } from './ext4-superblock.js';
import type { GuestDirEntry, GuestFileType, GuestFs, GuestStat, WriteFileOptions } from './fs.js';
import type { Volume } from './volume.js';

export { probeExt } from './ext4-superblock.js';

const ROOT_INO = 2;
/** Linux's MAXSYMLINKS: symlinks followed in one lookup */
const MAX_SYMLINKS = 40;
/** PATH_MAX less the terminating NUL: the longest symlink target Linux creates */
const MAX_TARGET = 4095;
const NAME_MAX = 255;
/** ext2's EXT2_LINK_MAX, and ext4's EXT4_LINK_MAX (past which dir_nlink records 1) */
const EXT2_LINK_MAX = 32000;
const EXT4_LINK_MAX = 65000;
/** readFile builds one Buffer; past this, refuse rather than fail to allocate */
const MAX_READ = 2 ** 31 - 1;
/** data read per volume call */
const READ_CHUNK = 16 * 1024 * 1024;
/** i_flags that forbid changing a file (chattr +i, +a) */
const FL_IMMUTABLE = 0x10;
const FL_APPEND = 0x20;

export interface ExtOpenOptions {
  /** never write, even when the volume is writable */
  readOnly?: boolean;
}

export interface ExtFs extends GuestFs {
  readonly blockSize: number;
  /** the journal needed recovery and was replayed in memory (the volume is unchanged) */
  readonly journalReplayed: boolean;
  /** things a caller may want to tell the user (journal replayed, file system bigger than its volume...) */
  readonly warnings: readonly string[];
  /** why writes are refused even though the volume is writable, or null */
  readonly readOnlyReason: string | null;
  symlink(target: string, path: string): Promise<void>;
  mkdir(path: string, mode?: number): Promise<void>;
  /** removes a name that is not a directory (the inode goes when its last link does) */
  unlink(path: string): Promise<void>;
  /** removes an empty directory */
  rmdir(path: string): Promise<void>;
  /** moves or renames; replaces a non-directory (or an empty directory, for a directory) at `to` */
  rename(from: string, to: string): Promise<void>;
  /** sets the permission bits (0o7777) of what `path` resolves to */
  chmod(path: string, mode: number): Promise<void>;
}

/** What a path resolved to: the directories walked to its parent, its name there, and the inode if it exists. */
interface Resolved {
  /** inode numbers from the root to the parent directory */
  stack: number[];
  /** the last component, or null when the path names the root (or ends in "..") */
  name: string | null;
  ino: number;
  inode: Inode | null;
}

interface Listing {
  entries: { name: Buffer; inode: number; fileType: number }[];
  byName: Map<string, { inode: number; fileType: number }>;
}

function formatUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** blkid's naming: ext4 when a feature ext3 lacks is on, ext3 with a journal, else ext2. */
function fsType(sb: Superblock): string {
  const ext3Incompat = INCOMPAT.filetype | INCOMPAT.recover | INCOMPAT.meta_bg;
  const ext3RoCompat = RO_COMPAT.sparse_super | RO_COMPAT.large_file | RO_COMPAT.btree_dir;
  if (sb.incompat & ~ext3Incompat || sb.roCompat & ~ext3RoCompat) return 'ext4';
  return sb.compat & COMPAT.has_journal ? 'ext3' : 'ext2';
}

function typeOf(mode: number): GuestFileType {
  switch (mode & S_IFMT) {
    case S_IFREG: return 'file';
    case S_IFDIR: return 'directory';
    case S_IFLNK: return 'symlink';
    default: return 'other';
  }
}

function ftType(ft: number): GuestFileType {
  return ft === FT_REG_FILE ? 'file' : ft === FT_DIR ? 'directory' : ft === FT_SYMLINK ? 'symlink' : 'other';
}

async function readSuperblockRaw(volume: Volume, overlay?: Map<number, Buffer>, blockSize?: number): Promise<Buffer> {
  if (volume.size < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE) {
    throw new PolyvisorError('ERR_TRUNCATED', `the volume (${volume.size} bytes) is too small to hold an ext2/3/4 superblock`, { file: volume.name });
  }
  if (overlay && blockSize) {
    const blk = Math.floor(SUPERBLOCK_OFFSET / blockSize);
    const o = overlay.get(blk);
    if (o) {
      const at = SUPERBLOCK_OFFSET - blk * blockSize;
      return Buffer.from(o.subarray(at, at + SUPERBLOCK_SIZE));
    }
  }
  return volume.read(SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE);
}

/** Opens an ext2/3/4 file system on `volume`. */
export async function openExt(volume: Volume, options: ExtOpenOptions = {}): Promise<ExtFs> {
  const fs = new ExtFileSystem(volume, options);
  await fs.init();
  return fs;
}

class ExtFileSystem implements ExtFs {
  readonly #volume: Volume;
  readonly #wantReadOnly: boolean;
  #sb!: Superblock;
  #disk!: ExtDisk;
  #groups!: Groups;
  #needsRecovery = false;
  #journalReplayed = false;
  #sizeProblem: string | null = null;
  readonly #warnings: string[] = [];
  readonly #dirCache = new Map<number, Listing>();
  #queue: Promise<unknown> = Promise.resolve();

  constructor(volume: Volume, options: ExtOpenOptions) {
    this.#volume = volume;
    this.#wantReadOnly = !!options.readOnly || volume.readOnly;
  }

  get type(): string { return fsType(this.#sb); }
  get uuid(): string { return formatUuid(this.#sb.uuid); }
  get label(): string | undefined { return this.#sb.volumeName || undefined; }
  get blockSize(): number { return this.#sb.blockSize; }
  get journalReplayed(): boolean { return this.#journalReplayed; }
  get warnings(): readonly string[] { return this.#warnings; }
  get readOnlyReason(): string | null {
    if (this.#needsRecovery) return 'its journal needs recovery (the guest was not shut down cleanly): run e2fsck on it, or boot and shut down the guest once';
    return this.#sizeProblem ?? this.#sb.readOnlyReason;
  }
  get readOnly(): boolean { return this.#wantReadOnly || this.readOnlyReason !== null; }

  get #name(): string { return this.#volume.name; }

  async init(): Promise<void> {
    await this.#guard(async () => {
      const sb = parseSuperblock(await readSuperblockRaw(this.#volume), this.#name);
      this.#disk = new ExtDisk(this.#volume, sb.blockSize, sb.blocksCount);
      this.#sb = sb;
      this.#checkSize();
      this.#groups = await Groups.load(sb, this.#disk);
      if (sb.incompat & INCOMPAT.recover) {
        this.#needsRecovery = true;
        await this.#replay();
      }
    });
  }

  /** A file system bigger than its volume (a partition table or a resize gone wrong) is read, never written. */
  #checkSize(): void {
    const sb = this.#sb;
    if (sb.blocksCount * sb.blockSize <= this.#volume.size || this.#sizeProblem) return;
    this.#sizeProblem = `the file system (${sb.blocksCount * sb.blockSize} bytes) is bigger than its volume (${this.#volume.size} bytes)`;
    this.#warnings.push(this.#sizeProblem);
  }

  async #replay(): Promise<void> {
    const sb = this.#sb;
    if (!(sb.compat & COMPAT.has_journal) || sb.journalInum === 0) {
      this.#warnings.push('the file system needs recovery but has no internal journal to replay: it is read as it is on disk');
      return;
    }
    const jinode = await this.#readInode(sb.journalInum, 'the journal inode');
    const jblocks = Math.floor(jinode.size / sb.blockSize);
    const { runs } = await this.#fileMap(jinode, jblocks);
    const r = await replayJournal(this.#disk, runs, jblocks, sb.blocksCount);
    for (const [block, data] of r.blocks) this.#disk.overlay.set(block, data);
    this.#disk.dropCache();
    // the superblock and descriptors may themselves have been in the journal
    const replayed = parseSuperblock(await readSuperblockRaw(this.#volume, this.#disk.overlay, sb.blockSize), this.#name);
    if (replayed.blockSize !== sb.blockSize) {
      throw new PolyvisorError('ERR_CORRUPT', `the journal replays a superblock with ${replayed.blockSize}-byte blocks over one with ${sb.blockSize}-byte blocks`, { file: this.#name, structure: 'journal' });
    }
    this.#sb = replayed;
    this.#disk.blocksCount = replayed.blocksCount;
    this.#checkSize();
    this.#groups = await Groups.load(this.#sb, this.#disk);
    this.#journalReplayed = true;
    this.#warnings.push(
      `the journal needed recovery: ${r.transactions} transaction(s), ${r.blocks.size} block(s) replayed in memory; the volume was not changed` +
        (r.skipped ? `; ${r.skipped} block(s) failed their journal checksum and were left out` : ''),
    );
  }

  /** Re-reads superblock and descriptors from the volume after a failed write. */
  async #reload(): Promise<void> {
    this.#disk.dropCache();
    this.#dirCache.clear();
    this.#sb = parseSuperblock(await readSuperblockRaw(this.#volume), this.#name);
    this.#groups = await Groups.load(this.#sb, this.#disk);
  }

  /** Any error that is not a PolyvisorError is a bug here: report it as one, never as a raw exception. */
  async #guard<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (isPolyvisorError(e)) throw e;
      throw new PolyvisorError('ERR_INTERNAL', `ext reader: ${(e as Error)?.message ?? String(e)}`, { file: this.#name, cause: e });
    }
  }

  // ---- inodes ------------------------------------------------------------------------------

  #inodeLocation(ino: number, why: string): { offset: number; block: number; within: number } {
    const sb = this.#sb;
    if (!Number.isSafeInteger(ino) || ino < 1 || ino > sb.inodesCount) {
      throw new PolyvisorError('ERR_CORRUPT', `${why}: inode ${ino} is out of range (1..${sb.inodesCount})`, { file: this.#name });
    }
    const g = Math.floor((ino - 1) / sb.inodesPerGroup);
    const idx = (ino - 1) % sb.inodesPerGroup;
    const d = this.#groups.desc(g);
    const byte = idx * sb.inodeSize;
    const block = d.inodeTable + Math.floor(byte / sb.blockSize);
    return { offset: block * sb.blockSize + (byte % sb.blockSize), block, within: byte % sb.blockSize };
  }

  async #readInode(ino: number, why: string): Promise<Inode> {
    const sb = this.#sb;
    const loc = this.#inodeLocation(ino, why);
    const g = Math.floor((ino - 1) / sb.inodesPerGroup);
    const d = this.#groups.desc(g);
    const idx = (ino - 1) % sb.inodesPerGroup;
    if (this.#groups.flags(d) & BG_INODE_UNINIT || (sb.groupCsum && idx >= sb.inodesPerGroup - d.itableUnused)) {
      throw new PolyvisorError('ERR_CORRUPT', `${why}: inode ${ino} lies in the unused part of group ${g}'s inode table`, { file: this.#name, structure: `inode ${ino}` });
    }
    const buf = await this.#disk.readBlock(loc.block, `inode table of group ${g}`);
    const inode = new Inode(ino, Buffer.from(buf.subarray(loc.within, loc.within + sb.inodeSize)));
    verifyInode(sb, inode, this.#name, loc.offset);
    return inode;
  }

  async #writeInode(inode: Inode): Promise<void> {
    sealInode(this.#sb, inode);
    const loc = this.#inodeLocation(inode.ino, 'writing');
    await this.#disk.writeBytes(loc.offset, inode.raw);
  }

  // ---- file data ---------------------------------------------------------------------------

  /** Runs of an inode up to logical block `limit`, and the blocks its map itself occupies. */
  async #fileMap(inode: Inode, limit: number): Promise<{ runs: Run[]; meta: number[] }> {
    if (inode.flags & FL_EXTENTS) {
      const t = await readExtentTree(this.#disk, this.#sb, inode);
      return { runs: t.runs, meta: t.treeBlocks };
    }
    const m = await readBlockMap(this.#disk, this.#sb, inode, limit);
    return { runs: m.runs, meta: m.mapBlocks };
  }

  /** The bytes of an inode with inline data (i_block, then system.data), `size` of them. */
  #inlineData(inode: Inode): Buffer {
    const size = inode.size;
    const head = inode.iBlock;
    if (size <= I_BLOCK_SIZE) return Buffer.from(head.subarray(0, size));
    const tail = ibodyValue(inode, XATTR_INDEX_SYSTEM, 'data', this.#name);
    if (!tail || I_BLOCK_SIZE + tail.length < size) {
      throw new PolyvisorError('ERR_CORRUPT', `inline data of ${size} bytes does not fit i_block and system.data`, { file: this.#name, structure: `inode ${inode.ino}` });
    }
    return Buffer.concat([head, tail]).subarray(0, size);
  }

  async #readData(inode: Inode): Promise<Buffer> {
    const sb = this.#sb;
    const size = inode.size;
    if (inode.flags & FL_ENCRYPT) throw new PolyvisorError('ERR_UNSUPPORTED', `inode ${inode.ino} is encrypted`, { file: this.#name });
    if (size > MAX_READ) throw new PolyvisorError('ERR_UNSUPPORTED', `inode ${inode.ino} holds ${size} bytes, more than Polyvisor reads into memory at once`, { file: this.#name });
    if (inode.flags & FL_INLINE_DATA) return this.#inlineData(inode);
    const nblocks = Math.ceil(size / sb.blockSize);
    const out = Buffer.alloc(size);
    if (nblocks === 0) return out;
    const { runs } = await this.#fileMap(inode, nblocks);
    const maxBlocks = Math.max(1, Math.floor(READ_CHUNK / sb.blockSize));
    for (const r of runs) {
      if (r.uninit) continue; // uninitialized extents read as zeroes
      const end = Math.min(r.logical + r.length, nblocks);
      for (let l = r.logical; l < end; l += maxBlocks) {
        const n = Math.min(maxBlocks, end - l);
        const data = await this.#disk.readBlocks(r.physical + (l - r.logical), n, `data of inode ${inode.ino}`);
        const at = l * sb.blockSize;
        data.copy(out, at, 0, Math.min(data.length, size - at));
      }
    }
    return out;
  }

  /** ext4_inode_is_fast_symlink: the target lives in i_block. */
  #isFastSymlink(inode: Inode): boolean {
    if (inode.flags & FL_INLINE_DATA) return false;
    if (inode.flags & FL_EA_INODE) return inode.size > 0 && inode.size < I_BLOCK_SIZE;
    const eaBlocks = inode.fileAcl ? this.#sb.blockSize / 512 : 0;
    return inode.blocks512(this.#sb) - eaBlocks === 0;
  }

  async #linkTarget(inode: Inode): Promise<string> {
    const size = inode.size;
    if (size > Math.max(MAX_TARGET, this.#sb.blockSize)) {
      throw new PolyvisorError('ERR_CORRUPT', `symlink of ${size} bytes is longer than any target can be`, { file: this.#name, structure: `inode ${inode.ino}` });
    }
    let bytes: Buffer;
    if (this.#isFastSymlink(inode)) {
      if (size >= I_BLOCK_SIZE) throw new PolyvisorError('ERR_CORRUPT', `fast symlink of ${size} bytes does not fit i_block`, { file: this.#name, structure: `inode ${inode.ino}` });
      bytes = inode.iBlock.subarray(0, size);
    } else {
      bytes = await this.#readData(inode);
    }
    return bytes.toString('utf8');
  }

  // ---- directories -------------------------------------------------------------------------

  get #dirFormat(): DirFormat {
    const sb = this.#sb;
    return { blockSize: sb.blockSize, filetype: (sb.incompat & INCOMPAT.filetype) !== 0, metadataCsum: sb.metadataCsum, inodesCount: sb.inodesCount };
  }

  #notDir(path: string): PolyvisorError {
    return new PolyvisorError('ERR_NOT_FOUND', `${path}: not a directory`, { file: this.#name });
  }

  /** The mapped blocks of a directory in logical order (checked to be a sane directory size). */
  async #dirBlocks(dir: Inode): Promise<{ logical: number; physical: number }[]> {
    const sb = this.#sb;
    const size = dir.size;
    // a directory is whole blocks, and no bigger than the file system (nor 4 GiB without large_dir)
    const limit = Math.min(sb.incompat & INCOMPAT.large_dir ? 2 ** 44 : 2 ** 32, sb.blocksCount * sb.blockSize);
    if (size % sb.blockSize !== 0 || size > limit) {
      throw new PolyvisorError('ERR_CORRUPT', `directory size ${size} is not a whole number of blocks up to ${limit}`, { file: this.#name, structure: `inode ${dir.ino}` });
    }
    const nblocks = size / sb.blockSize;
    const { runs } = await this.#fileMap(dir, nblocks);
    const out: { logical: number; physical: number }[] = [];
    for (const r of runs) {
      if (r.uninit) continue;
      for (let i = 0; i < r.length && r.logical + i < nblocks; i++) out.push({ logical: r.logical + i, physical: r.physical + i });
    }
    return out;
  }

  /** One directory block, read, checksum-verified and parsed. */
  async #dirBlock(dir: Inode, logical: number, physical: number): Promise<{ buf: Buffer; entries: DirEntry[] }> {
    const where = `directory block ${logical} (block ${physical}) of inode ${dir.ino}`;
    const buf = await this.#disk.readBlock(physical, where);
    if (this.#sb.metadataCsum) verifyDirBlock(inodeCsumSeed(this.#sb, dir.ino, dir.generation), buf, (dir.flags & FL_INDEX) !== 0, this.#name, where);
    return { buf, entries: parseDirBlock(buf, this.#dirFormat, this.#name, where) };
  }

  async #list(dir: Inode): Promise<Listing> {
    const hit = this.#dirCache.get(dir.ino);
    if (hit) return hit;
    if ((dir.mode & S_IFMT) !== S_IFDIR) throw this.#notDir(`inode ${dir.ino}`);
    if (dir.flags & FL_ENCRYPT) throw new PolyvisorError('ERR_UNSUPPORTED', `directory inode ${dir.ino} is encrypted`, { file: this.#name });
    const entries: Listing['entries'] = [];
    if (dir.flags & FL_INLINE_DATA) {
      // inline_data.rst: the parent's inode number, then entries in the rest of i_block and in system.data
      const f = this.#dirFormat;
      entries.push({ name: Buffer.from('.'), inode: dir.ino, fileType: FT_DIR });
      entries.push({ name: Buffer.from('..'), inode: dir.iBlock.readUInt32LE(0), fileType: FT_DIR });
      const regions = [dir.iBlock.subarray(4)];
      const tail = dir.size > I_BLOCK_SIZE ? ibodyValue(dir, XATTR_INDEX_SYSTEM, 'data', this.#name) : null;
      if (tail && tail.length > 0) regions.push(tail);
      for (const region of regions) {
        for (const e of parseDirBlock(region, { ...f, blockSize: region.length }, this.#name, `inline directory of inode ${dir.ino}`)) {
          if (e.inode) entries.push({ name: e.name, inode: e.inode, fileType: e.fileType });
        }
      }
    } else {
      for (const { logical, physical } of await this.#dirBlocks(dir)) {
        const { entries: es } = await this.#dirBlock(dir, logical, physical);
        for (const e of es) if (e.inode) entries.push({ name: Buffer.from(e.name), inode: e.inode, fileType: e.fileType });
      }
    }
    const byName = new Map<string, { inode: number; fileType: number }>();
    for (const e of entries) {
      const key = e.name.toString('latin1');
      if (!byName.has(key)) byName.set(key, { inode: e.inode, fileType: e.fileType });
    }
    const listing = { entries, byName };
    if (this.#dirCache.size >= 256) this.#dirCache.delete(this.#dirCache.keys().next().value!);
    this.#dirCache.set(dir.ino, listing);
    return listing;
  }

  // ---- paths -------------------------------------------------------------------------------

  /**
   * Resolves a guest path. Symlinks in every component but the last are followed; the last one
   * too when `followLast`. With `missingOk`, a missing last component resolves with ino 0.
   */
  async #resolve(path: string, followLast: boolean, missingOk = false): Promise<Resolved> {
    if (typeof path !== 'string' || path.includes('\0')) throw new PolyvisorError('ERR_NOT_FOUND', `${String(path)}: not a valid path`, { file: this.#name });
    const split = (p: string) => p.split('/').filter((c) => c !== '' && c !== '.');
    let comps = split(path);
    let stack = [ROOT_INO];
    let hops = 0;
    while (comps.length > 0) {
      const c = comps.shift()!;
      if (c === '..') {
        if (stack.length > 1) stack.pop();
        continue;
      }
      const dirIno = stack[stack.length - 1]!;
      const dir = await this.#readInode(dirIno, path);
      if ((dir.mode & S_IFMT) !== S_IFDIR) throw this.#notDir(path);
      const found = (await this.#list(dir)).byName.get(Buffer.from(c, 'utf8').toString('latin1'));
      const last = comps.length === 0;
      if (!found) {
        if (last && missingOk) return { stack, name: c, ino: 0, inode: null };
        throw new PolyvisorError('ERR_NOT_FOUND', `${path}: no such file or directory`, { file: this.#name });
      }
      const child = await this.#readInode(found.inode, `${path}: entry "${c}" of directory inode ${dirIno}`);
      if ((child.mode & S_IFMT) === S_IFLNK && (!last || followLast)) {
        if (++hops > MAX_SYMLINKS) throw new PolyvisorError('ERR_CORRUPT', `${path}: too many levels of symbolic links (more than ${MAX_SYMLINKS})`, { file: this.#name });
        const target = await this.#linkTarget(child);
        if (target === '') throw new PolyvisorError('ERR_NOT_FOUND', `${path}: symbolic link "${c}" is empty`, { file: this.#name });
        // the target is resolved inside this file system: "/" is its root, never the host's
        if (target.startsWith('/')) stack = [ROOT_INO];
        comps = [...split(target), ...comps];
        if (comps.length === 0) return { stack: stack.slice(0, -1), name: null, ino: stack[stack.length - 1]!, inode: null };
        continue;
      }
      if (last) return { stack, name: c, ino: found.inode, inode: child };
      if ((child.mode & S_IFMT) !== S_IFDIR) throw this.#notDir(path);
      stack = [...stack, found.inode];
    }
    return { stack: stack.slice(0, -1), name: null, ino: stack[stack.length - 1]!, inode: null };
  }

  async #resolveInode(path: string, followLast: boolean): Promise<Inode> {
    const r = await this.#resolve(path, followLast);
    return r.inode ?? (await this.#readInode(r.ino, path));
  }

  #stat(inode: Inode): GuestStat {
    return { type: typeOf(inode.mode), size: inode.size, mode: inode.mode, uid: inode.uid, gid: inode.gid, mtime: inode.mtime };
  }

  // ---- GuestFs: reading --------------------------------------------------------------------

  stat(path: string): Promise<GuestStat> {
    return this.#guard(async () => this.#stat(await this.#resolveInode(path, true)));
  }

  lstat(path: string): Promise<GuestStat> {
    return this.#guard(async () => this.#stat(await this.#resolveInode(path, false)));
  }

  exists(path: string): Promise<boolean> {
    return this.#guard(async () => {
      try {
        await this.#resolve(path, true);
        return true;
      } catch (e) {
        if (isPolyvisorError(e, 'ERR_NOT_FOUND')) return false;
        throw e;
      }
    });
  }

  readdir(path: string): Promise<GuestDirEntry[]> {
    return this.#guard(async () => {
      const dir = await this.#resolveInode(path, true);
      if ((dir.mode & S_IFMT) !== S_IFDIR) throw this.#notDir(path);
      const out: GuestDirEntry[] = [];
      const filetype = (this.#sb.incompat & INCOMPAT.filetype) !== 0;
      for (const e of (await this.#list(dir)).entries) {
        const name = e.name.toString('utf8');
        if (name === '.' || name === '..') continue;
        const type = filetype && e.fileType !== 0 ? ftType(e.fileType) : typeOf((await this.#readInode(e.inode, `${path}/${name}`)).mode);
        out.push({ name, type });
      }
      return out;
    });
  }

  readlink(path: string): Promise<string> {
    return this.#guard(async () => {
      const inode = await this.#resolveInode(path, false);
      if ((inode.mode & S_IFMT) !== S_IFLNK) throw new PolyvisorError('ERR_NOT_FOUND', `${path}: not a symbolic link`, { file: this.#name });
      return this.#linkTarget(inode);
    });
  }

  readFile(path: string): Promise<Buffer> {
    return this.#guard(async () => {
      const inode = await this.#resolveInode(path, true);
      if ((inode.mode & S_IFMT) === S_IFDIR) throw new PolyvisorError('ERR_NOT_FOUND', `${path}: is a directory, not a file`, { file: this.#name });
      if ((inode.mode & S_IFMT) !== S_IFREG) throw new PolyvisorError('ERR_UNSUPPORTED', `${path}: not a regular file`, { file: this.#name });
      return this.#readData(inode);
    });
  }

  flush(): Promise<void> {
    return this.#guard(() => this.#volume.flush());
  }

  // ---- writing -----------------------------------------------------------------------------

  /** Runs `fn` alone (writes never interleave), commits allocation state, and reloads it on failure. */
  #mutate<T>(fn: (now: number) => Promise<T>): Promise<T> {
    const run = this.#queue.then(() =>
      this.#guard(async () => {
        if (this.#wantReadOnly) throw new PolyvisorError('ERR_READ_ONLY', 'the file system was opened read-only', { file: this.#name });
        const reason = this.readOnlyReason;
        if (reason) throw new PolyvisorError('ERR_UNSUPPORTED', `cannot write to this file system: ${reason}`, { file: this.#name });
        const now = Date.now() / 1000;
        try {
          const out = await fn(now);
          await this.#groups.commit(Math.floor(now));
          return out;
        } catch (e) {
          await this.#reload();
          throw e;
        }
      }),
    );
    this.#queue = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /** Refuses inodes whose content Polyvisor cannot rewrite correctly. */
  #checkWritable(inode: Inode, path: string): void {
    const f = inode.flags;
    const why =
      f & FL_IMMUTABLE ? 'is immutable (chattr +i)' :
      f & FL_APPEND ? 'is append-only (chattr +a)' :
      f & FL_ENCRYPT ? 'is encrypted' :
      f & FL_VERITY ? 'is protected by fs-verity' :
      f & FL_CASEFOLD ? 'is a case-insensitive directory' :
      f & FL_INLINE_DATA ? 'keeps its data inline in the inode, which Polyvisor does not rewrite' :
      null;
    if (why) throw new PolyvisorError('ERR_UNSUPPORTED', `${path}: ${why}`, { file: this.#name, structure: `inode ${inode.ino}` });
  }

  #checkName(name: string, path: string): Buffer {
    const b = Buffer.from(name, 'utf8');
    if (b.length === 0 || b.length > NAME_MAX || name === '.' || name === '..' || name.includes('/')) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `${path}: "${name}" cannot be a file name (1 to ${NAME_MAX} bytes, not "." or "..")`, { file: this.#name });
    }
    return b;
  }

  #useExtents(): boolean {
    return (this.#sb.incompat & INCOMPAT.extent) !== 0;
  }

  /**
   * Gives `inode` the map `runs` (logical order, initialized data): builds an extent tree or a
   * block map in freshly allocated blocks, sets i_block and i_blocks, and frees `oldMeta`.
   */
  async #setMap(inode: Inode, runs: Run[], goal: number): Promise<void> {
    const sb = this.#sb;
    const bs = sb.blockSize;
    const dataBlocks = runs.reduce((n, r) => n + r.length, 0);
    let metaCount: number;
    let built: { iBlock: Buffer; blocks: { block: number; data: Buffer }[] };
    if (this.#useExtents()) {
      const extents = toExtents(runs);
      metaCount = extentTreeBlocks(extents.length, bs);
      const meta = await this.#allocList(metaCount, goal);
      built = buildExtentTree(sb, inode, extents, meta);
      inode.flags = inode.flags | FL_EXTENTS;
    } else {
      const n = runs.length ? runs[runs.length - 1]!.logical + runs[runs.length - 1]!.length : 0;
      if (n > blockMapLimit(bs / 4)) throw new PolyvisorError('ERR_UNSUPPORTED', `a block-mapped file cannot have ${n} blocks`, { file: this.#name });
      metaCount = blockMapBlocks(n, bs / 4);
      const meta = await this.#allocList(metaCount, goal);
      const phys = new Float64Array(n);
      for (const r of runs) for (let i = 0; i < r.length; i++) phys[r.logical + i] = r.physical + i;
      built = buildBlockMap(bs, n, (l) => phys[l]!, meta);
      inode.flags = inode.flags & ~FL_EXTENTS;
    }
    for (const b of built.blocks) await this.#disk.writeBlocks(b.block, b.data, `map of inode ${inode.ino}`);
    built.iBlock.copy(inode.iBlock);
    const ea = inode.fileAcl ? 1 : 0;
    inode.setBlocks512(sb, (dataBlocks + metaCount + ea) * (bs / 512));
  }

  async #allocList(count: number, goal: number): Promise<number[]> {
    const out: number[] = [];
    for (const s of await this.#groups.allocBlocks(count, goal)) for (let i = 0; i < s.length; i++) out.push(s.start + i);
    return out;
  }

  /** Frees a file's data runs and map blocks. */
  async #freeMap(runs: Run[], meta: number[]): Promise<void> {
    for (const r of runs) await this.#groups.freeBlocks(r.physical, r.length);
    for (const b of meta) await this.#groups.freeBlocks(b, 1);
  }

  #goalFor(ino: number): number {
    return groupFirstBlock(this.#sb, this.#groups.groupOfInode(ino));
  }

  /** Writes `data` into newly allocated blocks and points `inode` at them (size, map, i_blocks). */
  async #placeData(inode: Inode, data: Uint8Array): Promise<void> {
    const sb = this.#sb;
    const bs = sb.blockSize;
    const n = Math.ceil(data.length / bs);
    const spans = await this.#groups.allocBlocks(n, this.#goalFor(inode.ino));
    const runs: Run[] = [];
    let logical = 0;
    for (const s of spans) {
      const from = logical * bs;
      const to = Math.min(data.length, (logical + s.length) * bs);
      const whole = Math.floor((to - from) / bs) * bs;
      if (whole > 0) await this.#disk.writeBlocks(s.start, data.subarray(from, from + whole), `data of inode ${inode.ino}`);
      if (whole < to - from) {
        // the last block: padded with zeroes, so no stale bytes sit past the end of the file
        const last = Buffer.alloc(bs);
        Buffer.from(data.buffer, data.byteOffset + from + whole, to - from - whole).copy(last);
        await this.#disk.writeBlocks(s.start + whole / bs, last, `data of inode ${inode.ino}`);
      }
      runs.push({ logical, physical: s.start, length: s.length, uninit: false });
      logical += s.length;
    }
    const lastSpan = spans[spans.length - 1];
    await this.#setMap(inode, runs, lastSpan ? lastSpan.start + lastSpan.length : this.#goalFor(inode.ino));
    inode.size = data.length;
    if (data.length >= 2 ** 31 && !(sb.roCompat & RO_COMPAT.large_file)) {
      sb.roCompat |= RO_COMPAT.large_file;
      this.#groups.touchSuperblock();
    }
  }

  /** Everything an inode owns on disk, for freeing: data runs, map blocks. */
  async #ownedBlocks(inode: Inode): Promise<{ runs: Run[]; meta: number[] }> {
    const type = inode.mode & S_IFMT;
    if (inode.flags & FL_INLINE_DATA) return { runs: [], meta: [] };
    if (type === S_IFLNK && this.#isFastSymlink(inode)) return { runs: [], meta: [] };
    if (type !== S_IFREG && type !== S_IFDIR && type !== S_IFLNK) return { runs: [], meta: [] };
    return this.#fileMap(inode, Infinity);
  }

  /** Frees an inode whose last link is gone: its blocks, its attribute block, the inode itself. */
  async #release(inode: Inode, now: number): Promise<void> {
    if (this.#sb.incompat & INCOMPAT.ea_inode && (inode.fileAcl || inode.ibodyXattrs())) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `inode ${inode.ino} has extended attributes on an ea_inode file system, which Polyvisor does not release`, { file: this.#name });
    }
    const owned = await this.#ownedBlocks(inode);
    await this.#freeMap(owned.runs, owned.meta);
    await releaseXattrBlock(this.#disk, this.#sb, this.#groups, inode);
    inode.linksCount = 0;
    inode.dtime = Math.floor(now);
    inode.touch(now, { c: true });
    await this.#writeInode(inode);
    await this.#groups.freeInode(inode.ino, (inode.mode & S_IFMT) === S_IFDIR);
  }

  /** Makes a hash-indexed directory linear (see the header comment), before adding to it. */
  async #unindex(dir: Inode): Promise<void> {
    const f = this.#dirFormat;
    const seed = inodeCsumSeed(this.#sb, dir.ino, dir.generation);
    for (const { logical, physical } of await this.#dirBlocks(dir)) {
      const where = `directory block ${logical} of inode ${dir.ino}`;
      const buf = Buffer.from(await this.#disk.readBlock(physical, where));
      const co = dxCountOffset(buf, f.blockSize);
      if (co === null || (logical === 0) !== (co === 32)) continue;
      unindexBlock(buf, f, logical);
      if (f.metadataCsum) sealLeaf(seed, buf);
      await this.#disk.writeBlocks(physical, buf, where);
    }
    dir.flags = dir.flags & ~FL_INDEX;
  }

  /** Adds `name` → `ino` to a directory: into a block with room, else into a new block. Writes the directory inode. */
  async #addEntry(dir: Inode, name: Buffer, ino: number, fileType: number, now: number): Promise<void> {
    const sb = this.#sb;
    const f = this.#dirFormat;
    if (dir.flags & FL_INLINE_DATA) throw new PolyvisorError('ERR_UNSUPPORTED', `directory inode ${dir.ino} keeps its entries inline, which Polyvisor does not rewrite`, { file: this.#name });
    this.#checkWritable(dir, `directory inode ${dir.ino}`);
    if ((await this.#list(dir)).byName.has(name.toString('latin1'))) {
      throw new PolyvisorError('ERR_EXISTS', `"${name.toString('utf8')}" exists already in directory inode ${dir.ino}`, { file: this.#name });
    }
    this.#dirCache.delete(dir.ino);
    if (dir.flags & FL_INDEX) await this.#unindex(dir);
    const seed = inodeCsumSeed(sb, dir.ino, dir.generation);
    const blocks = await this.#dirBlocks(dir);
    let placed = false;
    for (const { logical, physical } of blocks) {
      const { buf, entries } = await this.#dirBlock(dir, logical, physical);
      const copy = Buffer.from(buf);
      if (!insertEntry(copy, f, entries, name, ino, fileType)) continue;
      if (f.metadataCsum) sealLeaf(seed, copy);
      await this.#disk.writeBlocks(physical, copy, `directory block ${logical} of inode ${dir.ino}`);
      placed = true;
      break;
    }
    if (!placed) {
      const lastPhys = blocks.length ? blocks[blocks.length - 1]!.physical + 1 : this.#goalFor(dir.ino);
      const [block] = await this.#allocList(1, lastPhys);
      const leaf = emptyLeaf(f, name, ino, fileType);
      if (f.metadataCsum) sealLeaf(seed, leaf);
      await this.#disk.writeBlocks(block!, leaf, `new directory block of inode ${dir.ino}`);
      const old = await this.#fileMap(dir, dir.size / sb.blockSize);
      const runs = [...old.runs, { logical: dir.size / sb.blockSize, physical: block!, length: 1, uninit: false }];
      await this.#setMap(dir, runs, block! + 1);
      for (const m of old.meta) await this.#groups.freeBlocks(m, 1);
      dir.size = dir.size + sb.blockSize;
    }
    dir.touch(now, { c: true, m: true });
    await this.#writeInode(dir);
  }

  /** Finds `name` in a directory's blocks: the block and the entry's index there. */
  async #findEntry(dir: Inode, name: Buffer): Promise<{ logical: number; physical: number; buf: Buffer; entries: DirEntry[]; i: number } | null> {
    for (const { logical, physical } of await this.#dirBlocks(dir)) {
      const { buf, entries } = await this.#dirBlock(dir, logical, physical);
      const i = entries.findIndex((e) => e.inode !== 0 && e.name.equals(name));
      if (i >= 0) return { logical, physical, buf: Buffer.from(buf), entries, i };
    }
    return null;
  }

  /** Removes `name` from a directory (hash index kept: only a leaf changes). Writes the directory inode. */
  async #removeEntry(dir: Inode, name: Buffer, now: number): Promise<void> {
    if (dir.flags & FL_INLINE_DATA) throw new PolyvisorError('ERR_UNSUPPORTED', `directory inode ${dir.ino} keeps its entries inline, which Polyvisor does not rewrite`, { file: this.#name });
    this.#checkWritable(dir, `directory inode ${dir.ino}`);
    const hit = await this.#findEntry(dir, name);
    if (!hit) throw new PolyvisorError('ERR_NOT_FOUND', `"${name.toString('utf8')}" is not in directory inode ${dir.ino}`, { file: this.#name });
    this.#dirCache.delete(dir.ino);
    removeEntry(hit.buf, this.#dirFormat, hit.entries, hit.i);
    if (this.#sb.metadataCsum) sealLeaf(inodeCsumSeed(this.#sb, dir.ino, dir.generation), hit.buf);
    await this.#disk.writeBlocks(hit.physical, hit.buf, `directory block ${hit.logical} of inode ${dir.ino}`);
    dir.touch(now, { c: true, m: true });
    await this.#writeInode(dir);
  }

  /** Points an existing entry at another inode (rename over an existing name). */
  async #setEntry(dir: Inode, name: Buffer, ino: number, fileType: number, now: number): Promise<void> {
    if (dir.flags & FL_INLINE_DATA) throw new PolyvisorError('ERR_UNSUPPORTED', `directory inode ${dir.ino} keeps its entries inline, which Polyvisor does not rewrite`, { file: this.#name });
    const hit = await this.#findEntry(dir, name);
    if (!hit) throw new PolyvisorError('ERR_NOT_FOUND', `"${name.toString('utf8')}" is not in directory inode ${dir.ino}`, { file: this.#name });
    this.#dirCache.delete(dir.ino);
    const e = hit.entries[hit.i]!;
    writeEntry(hit.buf, this.#dirFormat, e.offset, e.recLen, name, ino, fileType);
    if (this.#sb.metadataCsum) sealLeaf(inodeCsumSeed(this.#sb, dir.ino, dir.generation), hit.buf);
    await this.#disk.writeBlocks(hit.physical, hit.buf, `directory block ${hit.logical} of inode ${dir.ino}`);
    dir.touch(now, { c: true, m: true });
    await this.#writeInode(dir);
  }

  #linkMax(): number {
    return this.#sb.roCompat & RO_COMPAT.dir_nlink ? EXT4_LINK_MAX : EXT2_LINK_MAX;
  }

  /** One more subdirectory: i_links_count + 1, or 1 ("many") past the limit with dir_nlink. */
  #addSubdirLink(dir: Inode): void {
    if (dir.linksCount === 1 && this.#sb.roCompat & RO_COMPAT.dir_nlink) return;
    if (dir.linksCount + 1 >= this.#linkMax()) {
      if (!(this.#sb.roCompat & RO_COMPAT.dir_nlink)) throw new PolyvisorError('ERR_UNSUPPORTED', `directory inode ${dir.ino} has too many subdirectories`, { file: this.#name });
      dir.linksCount = 1;
      return;
    }
    dir.linksCount = dir.linksCount + 1;
  }

  #dropSubdirLink(dir: Inode): void {
    if (dir.linksCount > 2) dir.linksCount = dir.linksCount - 1;
  }

  /** The parent directory of a resolved path, checked to be writable. */
  async #parentOf(r: Resolved, path: string): Promise<Inode> {
    const parent = await this.#readInode(r.stack[r.stack.length - 1]!, path);
    if ((parent.mode & S_IFMT) !== S_IFDIR) throw this.#notDir(path);
    this.#checkWritable(parent, path);
    return parent;
  }

  /** A new inode in the parent's group (or the next one with room), written once filled in by the caller. */
  async #newInode(parent: Inode, mode: number, isDir: boolean, now: number, flags: number): Promise<Inode> {
    const ino = await this.#groups.allocInode(this.#groups.groupOfInode(parent.ino), isDir);
    return newInode(this.#sb, ino, mode, now, flags);
  }

  writeFile(path: string, data: Uint8Array, options: WriteFileOptions = {}): Promise<void> {
    return this.#mutate(async (now) => {
      const r = await this.#resolve(path, true, true);
      if (r.name === null || (r.inode && (r.inode.mode & S_IFMT) === S_IFDIR)) {
        throw new PolyvisorError('ERR_EXISTS', `${path}: is a directory`, { file: this.#name });
      }
      if (r.inode) {
        const inode = r.inode;
        if ((inode.mode & S_IFMT) !== S_IFREG) throw new PolyvisorError('ERR_UNSUPPORTED', `${path}: not a regular file`, { file: this.#name });
        this.#checkWritable(inode, path);
        const old = await this.#ownedBlocks(inode);
        await this.#placeData(inode, data);
        inode.touch(now, { c: true, m: true });
        await this.#writeInode(inode);
        await this.#freeMap(old.runs, old.meta);
        return;
      }
      const parent = await this.#parentOf(r, path);
      const name = this.#checkName(r.name, path);
      const inode = await this.#newInode(parent, S_IFREG | ((options.mode ?? 0o644) & 0o7777), false, now, this.#useExtents() ? FL_EXTENTS : 0);
      await this.#placeData(inode, data);
      await this.#writeInode(inode);
      await this.#addEntry(parent, name, inode.ino, FT_REG_FILE, now);
    });
  }

  symlink(target: string, path: string): Promise<void> {
    return this.#mutate(async (now) => {
      const bytes = Buffer.from(target, 'utf8');
      if (bytes.length === 0 || bytes.length > Math.min(MAX_TARGET, this.#sb.blockSize - 1) || bytes.includes(0)) {
        throw new PolyvisorError('ERR_UNSUPPORTED', `symlink target of ${bytes.length} bytes: it must be 1 to ${Math.min(MAX_TARGET, this.#sb.blockSize - 1)} bytes without NUL`, { file: this.#name });
      }
      const r = await this.#resolve(path, false, true);
      if (r.ino !== 0 || r.name === null) throw new PolyvisorError('ERR_EXISTS', `${path}: exists already`, { file: this.#name });
      const parent = await this.#parentOf(r, path);
      const name = this.#checkName(r.name, path);
      const inode = await this.#newInode(parent, S_IFLNK | 0o777, false, now, 0);
      if (bytes.length < I_BLOCK_SIZE) {
        // a fast symlink: the target in i_block, no blocks and no extent flag (e2fsck insists)
        bytes.copy(inode.iBlock);
        inode.size = bytes.length;
      } else {
        await this.#placeData(inode, bytes);
      }
      await this.#writeInode(inode);
      await this.#addEntry(parent, name, inode.ino, FT_SYMLINK, now);
    });
  }

  mkdir(path: string, mode = 0o755): Promise<void> {
    return this.#mutate(async (now) => {
      const r = await this.#resolve(path, false, true);
      if (r.ino !== 0 || r.name === null) throw new PolyvisorError('ERR_EXISTS', `${path}: exists already`, { file: this.#name });
      const parent = await this.#parentOf(r, path);
      const name = this.#checkName(r.name, path);
      this.#addSubdirLink(parent); // checked before anything is allocated
      const inode = await this.#newInode(parent, S_IFDIR | (mode & 0o7777), true, now, this.#useExtents() ? FL_EXTENTS : 0);
      inode.linksCount = 2;
      const [block] = await this.#allocList(1, this.#goalFor(inode.ino));
      const buf = newDirBlock(this.#dirFormat, inode.ino, parent.ino);
      if (this.#sb.metadataCsum) sealLeaf(inodeCsumSeed(this.#sb, inode.ino, inode.generation), buf);
      await this.#disk.writeBlocks(block!, buf, `first block of directory inode ${inode.ino}`);
      await this.#setMap(inode, [{ logical: 0, physical: block!, length: 1, uninit: false }], block! + 1);
      inode.size = this.#sb.blockSize;
      await this.#writeInode(inode);
      await this.#addEntry(parent, name, inode.ino, FT_DIR, now);
    });
  }

  unlink(path: string): Promise<void> {
    return this.#mutate(async (now) => {
      const r = await this.#resolve(path, false);
      if (r.name === null || !r.inode) throw new PolyvisorError('ERR_EXISTS', `${path}: is a directory`, { file: this.#name });
      const inode = r.inode;
      if ((inode.mode & S_IFMT) === S_IFDIR) throw new PolyvisorError('ERR_EXISTS', `${path}: is a directory (use rmdir)`, { file: this.#name });
      this.#checkWritable(inode, path);
      const parent = await this.#parentOf(r, path);
      await this.#removeEntry(parent, Buffer.from(r.name, 'utf8'), now);
      await this.#dropLink(inode, now);
    });
  }

  async #dropLink(inode: Inode, now: number): Promise<void> {
    if (inode.linksCount > 1) {
      inode.linksCount = inode.linksCount - 1;
      inode.touch(now, { c: true });
      await this.#writeInode(inode);
    } else {
      await this.#release(inode, now);
    }
  }

  async #checkEmptyDir(dir: Inode, path: string): Promise<void> {
    const entries = (await this.#list(dir)).entries.filter((e) => !e.name.equals(Buffer.from('.')) && !e.name.equals(Buffer.from('..')));
    if (entries.length > 0) throw new PolyvisorError('ERR_EXISTS', `${path}: directory is not empty`, { file: this.#name });
  }

  rmdir(path: string): Promise<void> {
    return this.#mutate(async (now) => {
      const r = await this.#resolve(path, false);
      if (r.name === null || !r.inode) throw new PolyvisorError('ERR_UNSUPPORTED', `${path}: cannot remove the root directory`, { file: this.#name });
      const dir = r.inode;
      if ((dir.mode & S_IFMT) !== S_IFDIR) throw this.#notDir(path);
      this.#checkWritable(dir, path);
      await this.#checkEmptyDir(dir, path);
      const parent = await this.#parentOf(r, path);
      await this.#removeEntry(parent, Buffer.from(r.name, 'utf8'), now);
      this.#dropSubdirLink(parent);
      await this.#writeInode(parent);
      this.#dirCache.delete(dir.ino);
      await this.#release(dir, now);
    });
  }

  rename(from: string, to: string): Promise<void> {
    return this.#mutate(async (now) => {
      const src = await this.#resolve(from, false);
      if (src.name === null || !src.inode) throw new PolyvisorError('ERR_UNSUPPORTED', `${from}: cannot move the root directory`, { file: this.#name });
      const dst = await this.#resolve(to, false, true);
      if (dst.name === null) throw new PolyvisorError('ERR_EXISTS', `${to}: is a directory`, { file: this.#name });
      const moving = src.inode;
      if (dst.ino === moving.ino) return;
      const isDir = (moving.mode & S_IFMT) === S_IFDIR;
      this.#checkWritable(moving, from);
      if (isDir && (dst.stack.includes(moving.ino))) throw new PolyvisorError('ERR_UNSUPPORTED', `${to}: cannot move a directory into itself`, { file: this.#name });
      const srcParent = await this.#parentOf(src, from);
      const sameParent = dst.stack[dst.stack.length - 1] === srcParent.ino;
      const dstParent = sameParent ? srcParent : await this.#parentOf(dst, to);
      const dstName = this.#checkName(dst.name, to);
      const ft = fileTypeOfMode(moving.mode);
      if (dst.inode) {
        const victim = dst.inode;
        const victimIsDir = (victim.mode & S_IFMT) === S_IFDIR;
        if (victimIsDir !== isDir) throw new PolyvisorError('ERR_EXISTS', `${to}: ${victimIsDir ? 'is a directory' : 'is not a directory'}`, { file: this.#name });
        this.#checkWritable(victim, to);
        if (victimIsDir) await this.#checkEmptyDir(victim, to);
        await this.#setEntry(dstParent, dstName, moving.ino, ft, now);
        if (victimIsDir) {
          // the victim's ".." link goes; a directory from elsewhere brings its own
          if (sameParent) this.#dropSubdirLink(dstParent);
          this.#dirCache.delete(victim.ino);
          await this.#release(victim, now);
        } else {
          await this.#dropLink(victim, now);
        }
      } else {
        if (isDir && !sameParent) this.#addSubdirLink(dstParent);
        await this.#addEntry(dstParent, dstName, moving.ino, ft, now);
      }
      await this.#removeEntry(srcParent, Buffer.from(src.name, 'utf8'), now);
      if (isDir && !sameParent) {
        await this.#setDotDot(moving, dstParent.ino);
        this.#dropSubdirLink(srcParent);
        await this.#writeInode(srcParent);
        await this.#writeInode(dstParent);
      }
      moving.touch(now, { c: true });
      await this.#writeInode(moving);
    });
  }

  /** Points a directory's ".." at a new parent. */
  async #setDotDot(dir: Inode, parent: number): Promise<void> {
    if (dir.flags & FL_INLINE_DATA) throw new PolyvisorError('ERR_UNSUPPORTED', `directory inode ${dir.ino} keeps its entries inline, which Polyvisor does not rewrite`, { file: this.#name });
    const [first] = await this.#dirBlocks(dir);
    if (!first) throw new PolyvisorError('ERR_CORRUPT', `directory inode ${dir.ino} has no blocks`, { file: this.#name });
    const { buf, entries } = await this.#dirBlock(dir, first.logical, first.physical);
    const dotdot = entries[1];
    if (!dotdot || !dotdot.name.equals(Buffer.from('..'))) throw new PolyvisorError('ERR_CORRUPT', `directory inode ${dir.ino} has no ".." second entry`, { file: this.#name });
    const copy = Buffer.from(buf);
    copy.writeUInt32LE(parent, dotdot.offset);
    const seed = inodeCsumSeed(this.#sb, dir.ino, dir.generation);
    if (this.#sb.metadataCsum) {
      if (dir.flags & FL_INDEX && dxCountOffset(copy, copy.length) === 32) copy.writeUInt32LE(dxChecksum(seed, copy, 32, this.#name, `htree root of inode ${dir.ino}`), 32 + copy.readUInt16LE(32) * 8 + 4);
      else sealLeaf(seed, copy);
    }
    await this.#disk.writeBlocks(first.physical, copy, `first block of directory inode ${dir.ino}`);
    this.#dirCache.delete(dir.ino);
  }

  chmod(path: string, mode: number): Promise<void> {
    return this.#mutate(async (now) => {
      const inode = await this.#resolveInode(path, true);
      inode.mode = (inode.mode & S_IFMT) | (mode & 0o7777);
      inode.touch(now, { c: true });
      await this.#writeInode(inode);
    });
  }
}
