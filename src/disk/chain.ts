/**
 * Opening images with their backing chains, creating images, and walking a chain's
 * allocation. Chains may mix formats (a qcow2 over a VHD parent): each layer is opened
 * by its own format, and only the recorded name and format cross between them.
 *
 * Rules every chain obeys, whatever the format (DESIGN.md, "Binary parsing"):
 * - a backing name is resolved relative to the folder of the image that records it;
 * - the resolved file must lie inside that folder (symlinks resolved), unless the user
 *   passes allowOutsidePaths: an image must not make us read a host file the user did
 *   not name;
 * - protocol names (nbd:, json:, http:) are refused: a disk file never opens sockets;
 * - a chain is at most maxChainDepth images deep, and no file appears twice.
 */
import { realpath } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, resolve, sep } from 'node:path';
import { PolyvisorError, fromSystemError } from '../errors.js';
import type { BlockImage, Extent } from './image.js';
import type { CacheMode, DiskFormat, OpenContext, OpenOptions } from './format.js';
import { ImageFile } from './io.js';
import { findFormat, parseCreateOptions, probeFormat } from './registry.js';

export const DEFAULT_MAX_CHAIN_DEPTH = 128;
const PROBE_HEAD = 64 * 1024;
const PROBE_TAIL = 512;

interface ChainState {
  depth: number;
  seen: Set<string>;
}

/** Opens an image (probing its format unless given) and its whole backing chain. */
export async function openImage(path: string, opts: OpenOptions = {}): Promise<BlockImage> {
  return openLayer(path, opts.format, opts, { depth: 1, seen: new Set() });
}

/** Reads the first bytes and the last sector of a file and asks every format. */
export async function detectFormat(path: string): Promise<DiskFormat> {
  const file = await ImageFile.open(path, false);
  try {
    return await probeFile(file);
  } finally {
    await file.close();
  }
}

async function probeFile(file: ImageFile): Promise<DiskFormat> {
  const head = Buffer.alloc(Math.min(PROBE_HEAD, file.size));
  await file.readInto(head, 0);
  const tailLen = Math.min(PROBE_TAIL, file.size);
  const tail = Buffer.alloc(tailLen);
  await file.readInto(tail, file.size - tailLen);
  try {
    return probeFormat(head, tail, file.size).format;
  } catch (e) {
    throw e instanceof PolyvisorError ? new PolyvisorError(e.code, e.message, { file: file.path }) : e;
  }
}

async function openLayer(path: string, formatName: string | undefined, opts: OpenOptions, chain: ChainState): Promise<BlockImage> {
  const maxDepth = opts.maxChainDepth ?? DEFAULT_MAX_CHAIN_DEPTH;
  if (chain.depth > maxDepth) {
    throw new PolyvisorError('ERR_CHAIN_DEPTH', `backing chain is deeper than ${maxDepth} images`, { file: path });
  }
  let real: string;
  try {
    real = await realpath(path);
  } catch (e) {
    throw fromSystemError(e, path, 'open');
  }
  if (chain.seen.has(real)) {
    throw new PolyvisorError('ERR_CHAIN_CYCLE', 'backing chain refers back to this file', { file: path });
  }
  chain.seen.add(real);

  // Only the top image is opened for writing; backing files are always read-only.
  const writable = chain.depth === 1 && !!opts.writable;
  const file = await ImageFile.open(path, writable, chain.depth === 1 ? opts.window : undefined);
  try {
    const format = formatName ? findFormat(formatName) : await probeFile(file);
    if (!format.capabilities.read) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `${format.name} images cannot be read`, { file: path });
    }
    const ctx: OpenContext = {
      file,
      readOnly: !writable,
      openBacking: async (candidates, backingFormat) => {
        if (opts.noBacking) return null;
        if (opts.window && chain.depth === 1) {
          throw new PolyvisorError('ERR_UNSUPPORTED', `an image inside a package cannot have a backing file ("${candidates[0] ?? ''}")`, { file: path });
        }
        const target = await resolveReferenced(path, candidates, opts, 'backing file');
        return openLayer(target, backingFormat, opts, { depth: chain.depth + 1, seen: chain.seen });
      },
      openFile: async (name) => {
        // An image read from inside a package has no folder of its own: a descriptor there
        // must not reach files lying beside the package.
        if (opts.window && chain.depth === 1) {
          throw new PolyvisorError('ERR_UNSUPPORTED', `an image inside a package cannot refer to other files ("${name}")`, { file: path });
        }
        const target = await resolveReferenced(path, [name], opts, 'extent file');
        return ImageFile.open(target, writable);
      },
    };
    return await format.open(ctx);
  } catch (e) {
    await file.close();
    throw e;
  }
}

/**
 * Picks the first candidate name that exists, enforcing the folder rule: relative names are
 * resolved against the folder of `childPath` (the file that records them), and the result
 * must lie inside that folder unless `opts.allowOutsidePaths`. `what` names the reference in
 * errors ("backing file", "extent file", "disk file").
 */
export async function resolveReferenced(childPath: string, candidates: string[], opts: OpenOptions, what: string): Promise<string> {
  const folder = dirname(resolve(childPath));
  const tried: string[] = [];
  for (const name of candidates) {
    if (!name) continue;
    // "nbd://host", "json:{...}", "http:..." are protocols; a single letter before the colon
    // is a Windows drive ("C:\\vms\\parent.vhd"), which a VHD parent locator may hold.
    if (/^[a-z][a-z0-9+.-]+:/i.test(name)) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `${what} "${name}" is a protocol or json: name; only plain files are followed`, { file: childPath });
    }
    const abs = isAbsolute(name) ? name : resolve(folder, name);
    let real: string;
    try {
      real = await realpath(abs);
    } catch {
      tried.push(name);
      continue;
    }
    if (!opts.allowOutsidePaths) {
      const realFolder = await realpath(folder).catch(() => folder);
      if (real !== realFolder && !real.startsWith(realFolder.endsWith(sep) ? realFolder : realFolder + sep)) {
        throw new PolyvisorError(
          'ERR_PATH_OUTSIDE',
          `${what} "${name}" resolves to ${real}, outside the image's folder ${realFolder}; pass --allow-outside-paths (or allowOutsidePaths) to follow it`,
          { file: childPath },
        );
      }
    }
    return abs;
  }
  throw new PolyvisorError('ERR_NOT_FOUND', `${what} not found (tried: ${tried.map((t) => `"${t}"`).join(', ') || 'no names recorded'})`, { file: childPath });
}

export interface CreateImageOptions {
  /** `-o` options, as "key=value,..." text or already split */
  options?: string | string[];
  /** backing file name to record (relative names are relative to the new image's folder) */
  backingFile?: string;
  backingFormat?: string;
  /**
   * The backing file, already open (a caller that has just probed it): the new image takes
   * it over, closing it when it is closed, instead of opening the file again.
   */
  backingImage?: BlockImage;
  allowOutsidePaths?: boolean;
  cache?: CacheMode;
  /** the name the image will have when complete (default: path); see CreateContext.finalPath */
  finalPath?: string;
  /** creates companion files (default: directly at their final names); see CreateContext.companion */
  companion?: (name: string) => Promise<ImageFile>;
}

/**
 * Creates a new image and returns it open for writing. `size` may be omitted when a
 * backing file gives it. The file must not exist.
 */
export async function createImage(path: string, formatName: string, size: number | undefined, opts: CreateImageOptions = {}): Promise<BlockImage> {
  let format: DiskFormat;
  let options: Record<string, string>;
  try {
    format = findFormat(formatName);
    if (!format.capabilities.write) throw new PolyvisorError('ERR_UNSUPPORTED', `${format.name} images cannot be created`, { file: path });
    options = parseCreateOptions(format, opts.options);
    if (opts.backingFile !== undefined && !format.capabilities.backing) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `${format.name} images cannot have a backing file`, { file: path });
    }
    if (opts.backingImage && opts.backingFile === undefined) throw new PolyvisorError('ERR_INTERNAL', 'a backing image was handed over without the backing file name to record', { file: path });
  } catch (e) {
    // a backing image handed over is this function's to close, whatever happens
    await opts.backingImage?.close();
    throw e;
  }
  let backing: { name: string; format: string; image: BlockImage } | undefined;
  if (opts.backingFile !== undefined) {
    // The user named this file: the folder rule applies to what images record, not to it.
    const backingPath = isAbsolute(opts.backingFile) ? opts.backingFile : resolve(dirname(resolve(path)), opts.backingFile);
    const image = opts.backingImage ?? (await openImage(backingPath, { format: opts.backingFormat, allowOutsidePaths: opts.allowOutsidePaths }));
    backing = { name: opts.backingFile, format: image.format, image };
  }
  const virtualSize = size ?? backing?.image.virtualSize;
  if (virtualSize === undefined) {
    await backing?.image.close();
    throw new PolyvisorError('ERR_USAGE', 'a size is needed when there is no backing file', { file: path });
  }
  if (!Number.isSafeInteger(virtualSize) || virtualSize < 0) {
    await backing?.image.close();
    throw new PolyvisorError('ERR_USAGE', `invalid size ${virtualSize}`, { file: path });
  }
  try {
    const companion = opts.companion ?? ((name: string) => ImageFile.create(companionPath(path, name), opts.cache));
    return await format.create({ path, virtualSize, options, backing, cache: opts.cache, finalPath: opts.finalPath ?? path, companion });
  } catch (e) {
    await backing?.image.close();
    throw e;
  }
}

/**
 * Where a companion file named `name` goes: beside the image. Only plain file names are
 * accepted, so a format can never be made to write outside the destination folder.
 */
export function companionPath(imagePath: string, name: string): string {
  if (!name || name !== basename(name) || name === '.' || name === '..' || name.includes('\\')) {
    throw new PolyvisorError('ERR_INTERNAL', `companion file name "${name}" is not a plain file name`, { file: imagePath });
  }
  return join(dirname(resolve(imagePath)), name);
}

/** An extent of guest data after resolving the chain: where it comes from, and whether it is data. */
export interface MappedExtent {
  offset: number;
  length: number;
  /** 'data' may still contain zero bytes; 'zero' is known to read as zeroes */
  kind: 'data' | 'zero';
  /** 0 for the top image, 1 for its backing file, ... */
  depth: number;
  /** the layer that holds it (absent for zeroes past the end of the chain) */
  image?: BlockImage;
  hostOffset?: number;
  compressed?: boolean;
}

/** Guest ranges are walked in windows so that metadata for huge images is never all in memory. */
const MAP_WINDOW = 1 << 30;

/**
 * Walks the whole chain's allocation over [offset, offset+length): every byte of the
 * range is covered once, in ascending order. Unallocated ranges of one layer are looked up
 * in its backing; past the end of a shorter backing image, or with none, they are zero.
 */
export async function* mapChain(image: BlockImage, offset = 0, length = image.virtualSize - offset): AsyncGenerator<MappedExtent> {
  const end = offset + length;
  for (let pos = offset; pos < end; pos += MAP_WINDOW) {
    const win = Math.min(MAP_WINDOW, end - pos);
    yield* mapLayer(image, pos, win, 0);
  }
}

async function* mapLayer(image: BlockImage, offset: number, length: number, depth: number): AsyncGenerator<MappedExtent> {
  const extents: Extent[] = await image.blockStatus(offset, length);
  for (const e of extents) {
    if (e.kind === 'data') {
      yield { offset: e.offset, length: e.length, kind: 'data', depth, image, hostOffset: e.hostOffset, compressed: e.compressed };
    } else if (e.kind === 'zero') {
      yield { offset: e.offset, length: e.length, kind: 'zero', depth, image };
    } else if (image.backing) {
      const b = image.backing;
      const inB = Math.max(0, Math.min(e.offset + e.length, b.virtualSize) - e.offset);
      if (inB > 0) yield* mapLayer(b, e.offset, inB, depth + 1);
      if (inB < e.length) yield { offset: e.offset + inB, length: e.length - inB, kind: 'zero', depth: depth + 1 };
    } else {
      yield { offset: e.offset, length: e.length, kind: 'zero', depth };
    }
  }
}

/** Every image of a chain, top first. */
export function chainOf(image: BlockImage): BlockImage[] {
  const out: BlockImage[] = [];
  for (let i: BlockImage | null = image; i; i = i.backing) out.push(i);
  return out;
}
