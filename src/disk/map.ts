/**
 * `disk map`: the allocation of a whole chain, in qemu-img map's JSON shape so that
 * scripts written for it keep working: start, length, depth, present, zero, data, offset.
 */
import { chainOf, mapChain } from './chain.js';
import type { BlockImage } from './image.js';

export interface MapEntry {
  start: number;
  length: number;
  /** 0 = top image, 1 = its backing file... */
  depth: number;
  /** some layer of the chain allocates this range */
  present: boolean;
  /** reads as zeroes */
  zero: boolean;
  /** stored as data */
  data: boolean;
  /** host offset in `filename`, when the data is stored contiguously and uncompressed */
  offset?: number;
  compressed?: boolean;
  filename?: string;
}

export async function* mapImage(image: BlockImage): AsyncGenerator<MapEntry> {
  const chainLength = chainOf(image).length;
  let pending: MapEntry | null = null;
  for await (const e of mapChain(image)) {
    const entry: MapEntry = {
      start: e.offset,
      length: e.length,
      depth: e.depth,
      // Zeroes beyond every layer (no image holds them) are not "present", as in qemu-img.
      present: e.image !== undefined && !(e.kind === 'zero' && e.depth >= chainLength),
      zero: e.kind === 'zero',
      data: e.kind === 'data',
    };
    if (e.kind === 'data' && e.hostOffset !== undefined && !e.compressed) entry.offset = e.hostOffset;
    if (e.compressed) entry.compressed = true;
    if (e.image) entry.filename = e.image.path;
    if (pending && mergeable(pending, entry)) {
      pending.length += entry.length;
      continue;
    }
    if (pending) yield pending;
    pending = entry;
  }
  if (pending) yield pending;
}

function mergeable(a: MapEntry, b: MapEntry): boolean {
  if (a.depth !== b.depth || a.present !== b.present || a.zero !== b.zero || a.data !== b.data || a.filename !== b.filename) return false;
  if (a.compressed || b.compressed) return false;
  if (a.offset === undefined && b.offset === undefined) return true;
  return a.offset !== undefined && b.offset !== undefined && a.offset + a.length === b.offset;
}
