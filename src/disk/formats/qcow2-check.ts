/**
 * qcow2 consistency check, in the spirit of `qemu-img check`: walk every structure that
 * references host clusters (header, refcount table and blocks, the active L1 and its L2
 * tables, every snapshot's L1/L2 tables, the snapshot table, persistent bitmaps), count the
 * references each host cluster should have, and compare with the stored refcounts.
 *
 *  - stored < expected (including a referenced cluster with refcount 0): corruption
 *  - stored > expected: leak (space wasted, data safe)
 *  - OFLAG_COPIED set where the refcount is not exactly 1 (or missing where it is): corruption
 */
import { PolyvisorError, hex } from '../../errors.js';
import type { CheckResult } from '../image.js';
import type { ImageFile } from '../io.js';
import {
  AUTOCLEAR_BITMAPS,
  MAX_L1_ENTRIES,
  OFLAG_COMPRESSED,
  OFLAG_COPIED,
  OFLAG_ZERO,
  TWO32,
  compressedOffset,
  compressedSize,
  entryOffset,
  type Qcow2Header,
} from './qcow2-header.js';
import { readRefcount } from './qcow2-refcount.js';

/** Beyond this many host clusters the expected-refcount array would be unreasonable. */
const MAX_CHECK_CLUSTERS = 2 ** 30;
const MAX_MESSAGES = 1000;

export async function checkImage(file: ImageFile, h: Qcow2Header): Promise<CheckResult> {
  const cb = h.clusterBits;
  const cs = 2 ** cb;
  const l2Entries = cs / 8;
  const fileSize = file.size;
  const nClusters = Math.ceil(fileSize / cs);
  if (nClusters > MAX_CHECK_CLUSTERS) {
    throw new PolyvisorError('ERR_UNSUPPORTED', `check of ${nClusters} host clusters is beyond the ${MAX_CHECK_CLUSTERS} this checker handles`, { file: file.path });
  }
  const expected = new Uint32Array(nClusters);
  const messages: string[] = [];
  let corruptions = 0;
  let leaks = 0;
  const error = (m: string): void => {
    corruptions++;
    if (messages.length < MAX_MESSAGES) messages.push(`ERROR ${m}`);
  };
  const inc = (offset: number, length: number, what: string): void => {
    if (length <= 0) return;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + length - 1) / cs);
    for (let c = first; c <= last; c++) {
      if (c >= nClusters) {
        error(`${what} at ${hex(offset)} points past end of file (${hex(fileSize)})`);
        return;
      }
      expected[c]!++;
    }
  };
  const read = async (offset: number, length: number, structure: string): Promise<Buffer | null> => {
    try {
      return await file.readStructure(offset, length, structure);
    } catch (e) {
      error(`${structure} at ${hex(offset)}: ${(e as Error).message}`);
      return null;
    }
  };

  // ---- stored refcounts
  const bits = 2 ** h.refcountOrder;
  const perBlock = 2 ** (cb + 3 - h.refcountOrder);
  const blocks = new Map<number, Buffer>();
  inc(h.refcountTableOffset, h.refcountTableClusters * cs, 'refcount table');
  const rt = await read(h.refcountTableOffset, h.refcountTableClusters * cs, 'refcount table');
  if (rt) {
    for (let i = 0; i < rt.length / 8; i++) {
      const hi = rt.readUInt32BE(i * 8);
      const lo = rt.readUInt32BE(i * 8 + 4);
      if (hi === 0 && lo === 0) continue;
      const off = hi * TWO32 + lo;
      if (off % cs !== 0) {
        error(`refcount table entry ${i} holds unaligned offset ${hex(off)}`);
        continue;
      }
      if (off + cs > fileSize) {
        error(`refcount block ${i} at ${hex(off)} is outside the image`);
        continue;
      }
      inc(off, cs, `refcount block ${i}`);
      const b = await read(off, cs, `refcount block ${i}`);
      if (b) blocks.set(i, b);
    }
  }
  const stored = (c: number): number => {
    const b = blocks.get(Math.floor(c / perBlock));
    return b ? readRefcount(b, c % perBlock, bits) : 0;
  };

  // ---- references
  inc(0, cs, 'header');
  let allocated = 0;
  let compressed = 0;
  let fragmented = 0;

  const walkL1 = async (l1Offset: number, l1Size: number, active: boolean, name: string): Promise<void> => {
    if (l1Size === 0) return;
    if (l1Size > MAX_L1_ENTRIES || l1Offset % cs !== 0) {
      error(`${name} (${l1Size} entries at ${hex(l1Offset)}) is invalid`);
      return;
    }
    inc(l1Offset, l1Size * 8, name);
    const l1 = await read(l1Offset, l1Size * 8, name);
    if (!l1) return;
    let nextContiguous = 0;
    for (let i = 0; i < l1Size; i++) {
      const hi = l1.readUInt32BE(i * 8);
      const lo = l1.readUInt32BE(i * 8 + 4);
      const l2Off = entryOffset(hi, lo);
      if (l2Off === 0) continue;
      if (l2Off % cs !== 0) {
        error(`${name} entry ${i}: L2 table offset ${hex(l2Off)} is not cluster-aligned`);
        continue;
      }
      inc(l2Off, cs, `L2 table (${name} entry ${i})`);
      if (l2Off >= fileSize) continue;
      if (active && ((hi & OFLAG_COPIED) !== 0) !== (stored(l2Off / cs) === 1)) {
        error(`OFLAG_COPIED L2 cluster: ${name} entry ${i} (${hex(l2Off)}) refcount=${stored(l2Off / cs)}`);
      }
      const l2 = await read(l2Off, cs, `L2 table (${name} entry ${i})`);
      if (!l2) continue;
      for (let j = 0; j < l2Entries; j++) {
        const ehi = l2.readUInt32BE(j * 8);
        const elo = l2.readUInt32BE(j * 8 + 4);
        if (ehi === 0 && elo === 0) continue;
        const inDisk = (i * l2Entries + j) * cs < h.size;
        const where = `L2 entry ${j} of the table at ${hex(l2Off)}`;
        if (ehi & OFLAG_COMPRESSED) {
          if (ehi & OFLAG_COPIED) error(`${where}: compressed cluster has OFLAG_COPIED set`);
          inc(compressedOffset(ehi, elo, cb), compressedSize(ehi, elo, cb), `compressed cluster (${where})`);
          if (active && inDisk) {
            allocated++;
            compressed++;
            fragmented++; // compressed clusters are fragmented by nature
          }
          continue;
        }
        if (elo & OFLAG_ZERO && h.version < 3) error(`${where}: zero flag set in a version 2 image`);
        const host = entryOffset(ehi, elo);
        if (host === 0) continue;
        if (host % cs !== 0) {
          error(`${where}: data cluster offset ${hex(host)} is not cluster-aligned`);
          continue;
        }
        inc(host, cs, `data cluster (${where})`);
        if (active) {
          if (host < fileSize && ((ehi & OFLAG_COPIED) !== 0) !== (stored(host / cs) === 1)) {
            error(`OFLAG_COPIED data cluster: ${where} (${hex(host)}) refcount=${stored(host / cs)}`);
          }
          if (inDisk) {
            allocated++;
            if (nextContiguous !== 0 && host !== nextContiguous) fragmented++;
            nextContiguous = host + cs;
          }
        }
      }
    }
  };

  await walkL1(h.l1TableOffset, h.l1Size, true, 'L1 table');

  // Snapshot table: entries of variable length ("Snapshot table entry"), bounded by count.
  if (h.nbSnapshots > 0) {
    let pos = h.snapshotsOffset;
    const snaps: { l1Offset: number; l1Size: number }[] = [];
    for (let s = 0; s < h.nbSnapshots; s++) {
      const e = await read(pos, 40, `snapshot table entry ${s}`);
      if (!e) break;
      const idLen = e.readUInt16BE(12);
      const nameLen = e.readUInt16BE(14);
      const extra = e.readUInt32BE(36);
      if (extra > 1024) {
        error(`snapshot table entry ${s} at ${hex(pos)} has ${extra} bytes of extra data (at most 1024)`);
        break;
      }
      const l1Off = e.readBigUInt64BE(0);
      if (l1Off > BigInt(Number.MAX_SAFE_INTEGER)) error(`snapshot ${s} L1 table offset ${hex(l1Off)} is out of range`);
      else snaps.push({ l1Offset: Number(l1Off), l1Size: e.readUInt32BE(8) });
      pos += Math.ceil((40 + extra + idLen + nameLen) / 8) * 8;
    }
    inc(h.snapshotsOffset, pos - h.snapshotsOffset, 'snapshot table');
    for (let s = 0; s < snaps.length; s++) await walkL1(snaps[s]!.l1Offset, snaps[s]!.l1Size, false, `snapshot ${s} L1 table`);
  }

  // Persistent bitmaps count only when the extension is consistent (autoclear bit 0), as in qemu.
  if (h.bitmaps && h.autoclearFeatures & AUTOCLEAR_BITMAPS) {
    const { directoryOffset, directorySize, nbBitmaps } = h.bitmaps;
    if (directorySize > 64 << 20 || directoryOffset % cs !== 0) error(`bitmap directory (${directorySize} bytes at ${hex(directoryOffset)}) is invalid`);
    else {
      inc(directoryOffset, directorySize, 'bitmap directory');
      const dir = await read(directoryOffset, directorySize, 'bitmap directory');
      let pos = 0;
      for (let b = 0; dir && b < nbBitmaps && pos + 24 <= dir.length; b++) {
        const tOff = entryOffset(dir.readUInt32BE(pos), dir.readUInt32BE(pos + 4));
        const tSize = dir.readUInt32BE(pos + 8);
        const nameLen = dir.readUInt16BE(pos + 18);
        const extra = dir.readUInt32BE(pos + 20);
        pos += Math.ceil((24 + extra + nameLen) / 8) * 8;
        if (tSize === 0) continue;
        inc(tOff, tSize * 8, `bitmap ${b} table`);
        const t = tSize * 8 <= fileSize ? await read(tOff, tSize * 8, `bitmap ${b} table`) : null;
        for (let k = 0; t && k < tSize; k++) {
          const off = entryOffset(t.readUInt32BE(k * 8), t.readUInt32BE(k * 8 + 4));
          if (off !== 0) inc(off, cs, `bitmap ${b} data cluster`);
        }
      }
    }
  }

  // ---- compare
  let imageEnd = 0;
  let maxStored = nClusters;
  for (const idx of blocks.keys()) maxStored = Math.max(maxStored, (idx + 1) * perBlock);
  for (let c = 0; c < maxStored; c++) {
    if (c >= nClusters && !blocks.has(Math.floor(c / perBlock))) {
      c = (Math.floor(c / perBlock) + 1) * perBlock - 1;
      continue;
    }
    const want = c < nClusters ? expected[c]! : 0;
    const have = stored(c);
    if (want > 0) imageEnd = c + 1;
    if (want === have) continue;
    if (have < want) error(`cluster ${c} (${hex(c * cs)}) refcount=${have} reference=${want}`);
    else {
      leaks++;
      if (messages.length < MAX_MESSAGES) messages.push(`Leaked cluster ${c} (${hex(c * cs)}) refcount=${have} reference=${want}`);
    }
  }

  return {
    corruptions,
    leaks,
    messages,
    allocatedClusters: allocated,
    totalClusters: Math.ceil(h.size / cs),
    compressedClusters: compressed,
    fragmentedClusters: fragmented,
    imageEndOffset: imageEnd * cs,
  };
}
