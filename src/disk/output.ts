/**
 * Outputs that appear atomically. A new image (and every companion file it has, such as a
 * VMDK's extents) is written under temporary names beside the destination; commit() makes
 * each durable (unless cache mode 'unsafe') and renames it into place, companions first and
 * the image last; abort() removes them all. A failed or interrupted run therefore leaves
 * no half-written destination, and never overwrites a file without `force`.
 */
import { open, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { PolyvisorError, fromSystemError } from '../errors.js';
import { companionPath, createImage, type CreateImageOptions } from './chain.js';
import type { CacheMode } from './format.js';
import type { BlockImage } from './image.js';
import { ImageFile } from './io.js';
import { crypto } from '../util/builtins.js';

export interface Output {
  image: BlockImage;
  /** every file of the output, final names, the image first */
  files(): string[];
  /** closes the image if still open, makes the files durable and renames them into place */
  commit(): Promise<void>;
  /** closes the image if still open and removes every temporary file */
  abort(): Promise<void>;
}

export interface OutputOptions extends CreateImageOptions {
  /** replace existing files */
  force?: boolean;
}

const tmpName = (final: string) => join(dirname(final), `.${basename(final)}.${crypto().randomBytes(4).toString('hex')}.pv-partial`);

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

export async function createOutput(dstPath: string, formatName: string, size: number | undefined, opts: OutputOptions = {}): Promise<Output> {
  if (!opts.force && (await exists(dstPath))) {
    throw new PolyvisorError('ERR_EXISTS', 'destination exists; pass --force to replace it', { file: dstPath });
  }
  const cache: CacheMode = opts.cache ?? 'writeback';
  const pairs: Array<{ tmp: string; final: string }> = [];
  const main = { tmp: tmpName(dstPath), final: dstPath };
  const companion = async (name: string): Promise<ImageFile> => {
    const final = companionPath(dstPath, name);
    if (final === dstPath || pairs.some((p) => p.final === final)) {
      throw new PolyvisorError('ERR_INTERNAL', `companion file "${name}" is created twice`, { file: dstPath });
    }
    if (!opts.force && (await exists(final))) {
      throw new PolyvisorError('ERR_EXISTS', 'a file of the output exists; pass --force to replace it', { file: final });
    }
    const pair = { tmp: tmpName(final), final };
    pairs.push(pair);
    return ImageFile.create(pair.tmp, cache);
  };
  let image: BlockImage;
  try {
    image = await createImage(main.tmp, formatName, size, { ...opts, cache, finalPath: dstPath, companion });
  } catch (e) {
    await Promise.all([main, ...pairs].map((p) => unlink(p.tmp).catch(() => {})));
    throw e;
  }
  let closed = false;
  const close = async () => {
    if (!closed) {
      closed = true;
      await image.close();
    }
  };
  return {
    image,
    files: () => [dstPath, ...pairs.map((p) => p.final)],
    async commit() {
      await close();
      // main may be absent when a format writes only companions (it always writes the main file today)
      for (const p of [...pairs, main]) await durableRename(p.tmp, p.final, cache);
      if (cache !== 'unsafe') await syncDir(dirname(dstPath));
    },
    async abort() {
      await close().catch(() => {});
      await Promise.all([main, ...pairs].map((p) => unlink(p.tmp).catch(() => {})));
    },
  };
}

/**
 * Makes a finished temporary file durable (unless 'unsafe') and renames it over the
 * destination: after a crash there is either the old destination or the whole new one.
 */
export async function durableRename(tmp: string, dst: string, cache: CacheMode = 'writeback'): Promise<void> {
  try {
    if (cache !== 'unsafe') {
      const fh = await open(tmp, 'r+');
      try {
        await fh.datasync();
      } finally {
        await fh.close();
      }
    }
    await rename(tmp, dst);
  } catch (e) {
    throw fromSystemError(e, dst, 'write into place');
  }
}

/** Makes renames in a folder durable; some file systems cannot, and the renames stay atomic. */
async function syncDir(dir: string): Promise<void> {
  try {
    const fh = await open(dir, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch {
    // not supported here
  }
}
