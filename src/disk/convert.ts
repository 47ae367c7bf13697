/**
 * The copy loop behind `disk convert`: allocated extents in, zero detection, a sequential
 * writer out, the destination written under a temporary name and renamed on success.
 *
 * Why it is fast and bounded:
 * - Only allocated ranges are read (mapChain skips holes, zero clusters and unallocated
 *   backing ranges), and zeroes found in data are not written into outputs that already
 *   read as zeroes, so sparse stays sparse.
 * - Reads run one chunk ahead of writes (two buffers), so the disk is never idle waiting
 *   for the other side; memory is two chunks plus the formats' metadata, whatever the size.
 * - Writes arrive in ascending guest order, which lets every writer append data runs
 *   contiguously and in one system call.
 */
import { PolyvisorError } from '../errors.js';
import { writeZeroBytes } from './backing.js';
import { mapChain } from './chain.js';
import { createOutput } from './output.js';
import type { BlockImage } from './image.js';
import { isZero } from './io.js';
import { findFormat } from './registry.js';
import type { CacheMode } from './format.js';

export interface ConvertOptions {
  /** `-o` options for the output format */
  options?: string | string[];
  /** `-c`: ask the output format to compress data */
  compress?: boolean;
  /** overwrite an existing destination */
  force?: boolean;
  /**
   * `-S`: runs of zeroes at least this long (and aligned to it) are not written to the
   * output; 0 writes every byte. Default 4 KiB, as qemu-img.
   */
  sparseSize?: number;
  /** called with bytes done and bytes total, at most a few times per second worth of chunks */
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
  /** 'writeback' (default): the output is durable before it is renamed; 'unsafe': no fdatasync, as qemu-img */
  cache?: CacheMode;
  /** chunk size for the copy loop (default 8 MiB) */
  chunkSize?: number;
}

export interface ConvertResult {
  path: string;
  format: string;
  virtualSize: number;
  /** guest bytes copied as data */
  bytesWritten: number;
  /** guest bytes skipped because they read as zeroes */
  bytesZero: number;
  /** every file written, the image first (a VMDK's extents follow it) */
  files: string[];
}

const DEFAULT_CHUNK = 8 << 20;

/** A piece of the copy plan: at most one chunk of guest data, or a run of zeroes. */
interface Piece {
  offset: number;
  length: number;
  zero: boolean;
}

async function* plan(src: BlockImage, chunk: number): AsyncGenerator<Piece> {
  for await (const e of mapChain(src)) {
    if (e.kind === 'zero') {
      yield { offset: e.offset, length: e.length, zero: true };
      continue;
    }
    // Cut data extents at chunk-aligned guest offsets, so that chunks line up with the
    // output's clusters whatever the extent boundaries are.
    let pos = e.offset;
    const end = e.offset + e.length;
    while (pos < end) {
      const next = Math.min(end, (Math.floor(pos / chunk) + 1) * chunk);
      yield { offset: pos, length: next - pos, zero: false };
      pos = next;
    }
  }
}

/** Converts `src` (an open image, with its chain) into a new image at `dstPath`. */
export async function convert(src: BlockImage, dstPath: string, outFormat: string, opts: ConvertOptions = {}): Promise<ConvertResult> {
  const format = findFormat(outFormat);
  const chunk = opts.chunkSize ?? DEFAULT_CHUNK;
  const sparse = opts.sparseSize ?? 4096;
  if (!Number.isSafeInteger(sparse) || sparse < 0 || (sparse > 0 && sparse % 512 !== 0)) {
    throw new PolyvisorError('ERR_USAGE', `-S ${sparse}: the sparse size must be 0 or a multiple of 512`);
  }
  const options = Array.isArray(opts.options) ? [...opts.options] : opts.options ? [opts.options] : [];
  if (opts.compress) {
    if (!format.capabilities.compression) throw new PolyvisorError('ERR_UNSUPPORTED', `${format.name} images cannot store compressed data (-c)`);
    options.push('compress=on');
  }
  opts.signal?.throwIfAborted();
  const output = await createOutput(dstPath, format.name, src.virtualSize, { options, cache: opts.cache, force: opts.force });
  try {
    const result = await copy(src, output.image, chunk, sparse, format.capabilities.zeroInit, opts);
    opts.signal?.throwIfAborted();
    await output.commit();
    return { path: dstPath, format: format.name, virtualSize: output.image.virtualSize, files: output.files(), ...result };
  } catch (e) {
    await output.abort();
    if (opts.signal?.aborted) throw new PolyvisorError('ERR_ABORTED', 'conversion cancelled; no destination was written', { file: dstPath });
    throw e;
  }
}

/**
 * Copies the guest content of `src` into `dst` (same or larger virtual size). Exposed for
 * callers that manage the destination themselves (an overlay, an NBD export).
 */
export async function copy(
  src: BlockImage,
  dst: BlockImage,
  chunk: number,
  sparse: number,
  zeroInit: boolean,
  opts: Pick<ConvertOptions, 'onProgress' | 'signal'> = {},
): Promise<{ bytesWritten: number; bytesZero: number }> {
  const total = src.virtualSize;
  let done = 0;
  let bytesWritten = 0;
  let bytesZero = 0;
  const bufs = [Buffer.allocUnsafe(chunk), Buffer.allocUnsafe(chunk)];
  let which = 0;

  const pieces = plan(src, chunk);
  // Read-ahead: the next data piece is being read while the current one is written.
  let pending: Promise<{ piece: Piece; data: Buffer | null } | null> = nextPiece();

  async function nextPiece(): Promise<{ piece: Piece; data: Buffer | null } | null> {
    const r = await pieces.next();
    if (r.done) return null;
    const piece = r.value;
    if (piece.zero) return { piece, data: null };
    const buf = bufs[which]!.subarray(0, piece.length);
    which ^= 1;
    await src.read(buf, piece.offset);
    return { piece, data: buf };
  }

  for (;;) {
    opts.signal?.throwIfAborted();
    const cur = await pending;
    if (!cur) break;
    pending = nextPiece();
    // Keep an unhandled rejection from surfacing before we await it on the next turn.
    pending.catch(() => {});
    const { piece, data } = cur;
    if (!data) {
      if (!zeroInit) await writeZeroes(dst, piece.offset, piece.length);
      bytesZero += piece.length;
    } else {
      const w = await writeSkippingZeroes(dst, data, piece.offset, sparse, zeroInit);
      bytesWritten += w;
      bytesZero += piece.length - w;
    }
    done += piece.length;
    opts.onProgress?.(done, total);
  }
  await dst.flush();
  return { bytesWritten, bytesZero };
}

/** Writes the non-zero runs of `data`; returns how many bytes were written. */
async function writeSkippingZeroes(dst: BlockImage, data: Buffer, offset: number, sparse: number, zeroInit: boolean): Promise<number> {
  if (sparse === 0 || !zeroInit) {
    await dst.write(data, offset);
    return data.length;
  }
  // Zero detection on sparse-size units aligned to guest offsets; adjacent non-zero units
  // are written together so the writer sees the longest possible runs.
  let written = 0;
  let runStart = -1;
  const len = data.length;
  let pos = 0;
  while (pos < len) {
    const unitEnd = Math.min(len, (Math.floor((offset + pos) / sparse) + 1) * sparse - offset);
    // Most units of real data have a non-zero first or last byte: decide those without memcmp.
    const zero = data[pos] === 0 && data[unitEnd - 1] === 0 && isZero(data.subarray(pos, unitEnd));
    if (!zero && runStart < 0) runStart = pos;
    if (zero && runStart >= 0) {
      await dst.write(data.subarray(runStart, pos), offset + runStart);
      written += pos - runStart;
      runStart = -1;
    }
    pos = unitEnd;
  }
  if (runStart >= 0) {
    await dst.write(data.subarray(runStart, len), offset + runStart);
    written += len - runStart;
  }
  return written;
}

/** Makes a range read as zeroes, through the format's writeZeroes when it has one. */
export async function writeZeroes(dst: BlockImage, offset: number, length: number): Promise<void> {
  if (dst.writeZeroes) return dst.writeZeroes(offset, length);
  return writeZeroBytes(dst, offset, length);
}
