/**
 * The VHDX log (MS-VHDX 2.3): a circular buffer of 4 KiB sectors in which a writer records
 * metadata updates before making them in place, so that a crash leaves either the old or
 * the new metadata. When the current header's LogGuid is non-zero the log may hold entries
 * that were not yet applied: "the log MUST be replayed" before the region tables, metadata
 * or BAT are trusted (2.3.3), even by a reader.
 *
 * Polyvisor replays:
 * - read-only: into a LogOverlay, a map of file offset -> 4 KiB sector (plus zeroed ranges)
 *   that every read of the file consults; the file is never written;
 * - writable: into the file, then flushes, then clears LogGuid in a new header (2.3.3).
 *
 * Polyvisor never writes log entries itself: updates to an existing image are made in place
 * (see vhdx-image.ts). `writeLogEntryForTest` exists so that tests can prove replay.
 */
import { open } from 'node:fs/promises';
import { PolyvisorError, hex } from '../../errors.js';
import type { ImageFile } from '../io.js';
import {
  HEADER_OFFSETS,
  HEADER_SIZE,
  MiB,
  REGION_TABLE_OFFSETS,
  buildHeader,
  checksumWithHole,
  isZeroGuid,
  newGuid,
  parseHeader,
  sealChecksum,
  u64,
  writeU64,
  type Header,
} from './vhdx-structs.js';

export const LOG_SECTOR = 4096;
const ENTRY_SIGNATURE = 0x65676f6c; // "loge"
const DESC_SIGNATURE = 0x63736564; // "desc"
const ZERO_SIGNATURE = 0x6f72657a; // "zero"
const DATA_SIGNATURE = 0x61746164; // "data"
/** Logs are 1 MiB in practice; a larger one is read whole, up to this size. */
const MAX_LOG_IN_MEMORY = 256 * MiB;

/** What a replayed log does to the file: whole 4 KiB sectors and zeroed ranges. */
export class LogOverlay {
  /** file offset (4 KiB aligned) -> the sector's new content */
  readonly sectors = new Map<number, Buffer>();
  /** [start, end) file ranges that read as zeroes (older than any sector they cover) */
  readonly zeroes: Array<[number, number]> = [];
  /** the file's size once the log is applied (2.3.1.1 LastFileOffset) */
  size = 0;

  get empty(): boolean {
    return this.sectors.size === 0 && this.zeroes.length === 0;
  }

  setSector(offset: number, data: Buffer): void {
    this.sectors.set(offset, data);
  }

  setZero(start: number, end: number): void {
    // A later zero descriptor overrides earlier sectors in its range.
    if ((end - start) / LOG_SECTOR < this.sectors.size) {
      for (let s = start; s < end; s += LOG_SECTOR) this.sectors.delete(s);
    } else {
      for (const k of [...this.sectors.keys()]) if (k >= start && k < end) this.sectors.delete(k);
    }
    this.zeroes.push([start, end]);
  }

  /** Patches `buf` (file bytes read at `offset`) with what the log says is there. */
  apply(buf: Uint8Array, offset: number): void {
    const end = offset + buf.length;
    for (const [a, z] of this.zeroes) {
      const lo = Math.max(a, offset);
      const hi = Math.min(z, end);
      if (lo < hi) buf.fill(0, lo - offset, hi - offset);
    }
    const patch = (s: number, data: Buffer): void => {
      const lo = Math.max(s, offset);
      const hi = Math.min(s + LOG_SECTOR, end);
      if (lo < hi) buf.set(data.subarray(lo - s, hi - s), lo - offset);
    };
    const first = Math.floor(offset / LOG_SECTOR) * LOG_SECTOR;
    if ((end - first) / LOG_SECTOR <= this.sectors.size) {
      for (let s = first; s < end; s += LOG_SECTOR) {
        const d = this.sectors.get(s);
        if (d) patch(s, d);
      }
    } else {
      for (const [s, d] of this.sectors) if (s + LOG_SECTOR > offset && s < end) patch(s, d);
    }
  }
}

interface Descriptor {
  kind: 'data' | 'zero';
  fileOffset: number;
  /** zero: bytes to zero; data: 4096 */
  length: number;
  /** data: the whole 4 KiB sector (leading bytes + data + trailing bytes) */
  sector?: Buffer;
}

interface LogEntry {
  /** offset of the entry in the log */
  pos: number;
  length: number;
  tail: number;
  seq: bigint;
  flushedFileOffset: number;
  lastFileOffset: number;
  descriptors: Descriptor[];
}

type Parsed = { ok: true; entry: LogEntry } | { ok: false; claimed: boolean; problem?: string; checksum?: boolean };

export interface LogReplay {
  overlay: LogOverlay;
  entries: number;
  headSequence: bigint;
}

/**
 * Finds the active sequence of the log (2.3.3) and turns it into a LogOverlay. Returns null
 * when the header says the log is empty (LogGuid zero) or no entry carries its LogGuid.
 * Throws ERR_CHECKSUM / ERR_CORRUPT when entries carry the LogGuid but none forms a valid
 * sequence: such a log cannot be told apart from a damaged one, and is never guessed at.
 */
export async function readLog(file: ImageFile, header: Header, fileSize: number): Promise<LogReplay | null> {
  if (isZeroGuid(header.logGuid) || header.logLength === 0) return null;
  const path = file.path;
  const n = header.logLength;
  const ctx = { file: path, structure: 'log', offset: header.logOffset };
  if (n > MAX_LOG_IN_MEMORY) throw new PolyvisorError('ERR_UNSUPPORTED', `a ${n}-byte log to replay is larger than Polyvisor replays (${MAX_LOG_IN_MEMORY})`, ctx);
  const log = await file.readStructure(header.logOffset, n, 'log');

  /** Reads `len` bytes at log offset `pos`, wrapping at the end of the circular log. */
  const slice = (pos: number, len: number): Buffer => (pos + len <= n ? log.subarray(pos, pos + len) : Buffer.concat([log.subarray(pos), log.subarray(0, pos + len - n)]));

  const cache = new Map<number, Parsed>();
  const parseAt = (pos: number): Parsed => {
    let r = cache.get(pos);
    if (!r) {
      r = parseEntry(slice, pos, n, header.logGuid);
      cache.set(pos, r);
    }
    return r;
  };

  // Walk every sector; from each one not already inside a chain, follow entries with
  // consecutive sequence numbers. A chain is a valid sequence when its last entry (the
  // head) names, in its Tail field, an entry of the chain: the sequence runs from there.
  let best: LogEntry[] | null = null;
  const visited = new Set<number>();
  let firstProblem: { pos: number; problem: string; checksum: boolean } | null = null;
  for (let p = 0; p < n; p += LOG_SECTOR) {
    if (visited.has(p)) continue;
    const chain: LogEntry[] = [];
    let q = p;
    let total = 0;
    for (;;) {
      const r = parseAt(q);
      if (!r.ok) {
        if (r.claimed && !firstProblem) firstProblem = { pos: q, problem: r.problem ?? 'invalid', checksum: !!r.checksum };
        break;
      }
      const prev = chain[chain.length - 1];
      if (prev && r.entry.seq !== prev.seq + 1n) break;
      if (total + r.entry.length > n) break;
      chain.push(r.entry);
      visited.add(q);
      total += r.entry.length;
      q = (q + r.entry.length) % n;
      if (q === p) break;
    }
    if (chain.length === 0) continue;
    const head = chain[chain.length - 1]!;
    const from = chain.findIndex((e) => e.pos === head.tail);
    if (from < 0) {
      if (!firstProblem) firstProblem = { pos: head.pos, problem: `head entry's Tail ${hex(head.tail)} names no entry of its sequence`, checksum: false };
      continue;
    }
    const seq = chain.slice(from);
    if (!best || head.seq > best[best.length - 1]!.seq) best = seq;
  }
  if (!best) {
    if (!firstProblem) return null; // nothing carries this LogGuid: an empty log (as qemu reads it)
    throw new PolyvisorError(
      firstProblem.checksum ? 'ERR_CHECKSUM' : 'ERR_CORRUPT',
      `the header's LogGuid asks for a replay, but no valid log sequence was found (${firstProblem.problem}); the log is not guessed at`,
      { file: path, structure: 'log entry', offset: header.logOffset + firstProblem.pos },
    );
  }

  const head = best[best.length - 1]!;
  if (head.flushedFileOffset > fileSize) {
    throw new PolyvisorError('ERR_TRUNCATED', `the log's FlushedFileOffset is ${hex(head.flushedFileOffset)} but the file ends at ${hex(fileSize)}: it was cut after the log was written`, {
      file: path,
      structure: 'log entry',
      offset: header.logOffset + head.pos,
    });
  }
  const overlay = new LogOverlay();
  overlay.size = Math.max(fileSize, head.lastFileOffset);
  const limit = Math.max(fileSize, head.lastFileOffset) + MiB;
  for (const e of best) {
    e.descriptors.forEach((d, i) => {
      const dctx = { file: path, structure: `log entry descriptor ${i}`, offset: header.logOffset + e.pos };
      const end = d.fileOffset + d.length;
      // The log updates region tables, metadata and the BAT; never the file identifier or
      // the headers (2.3: headers are updated by alternation, not through the log), and
      // never the log itself.
      if (d.fileOffset < REGION_TABLE_OFFSETS[0]) throw new PolyvisorError('ERR_CORRUPT', `writes at ${hex(d.fileOffset)}, into the file identifier or headers`, dctx);
      if (d.fileOffset < header.logOffset + n && header.logOffset < end) throw new PolyvisorError('ERR_CORRUPT', `writes at ${hex(d.fileOffset)}, into the log itself`, dctx);
      if (end > limit) throw new PolyvisorError('ERR_CORRUPT', `writes at ${hex(d.fileOffset)}..${hex(end)}, past the file's last offset ${hex(limit - MiB)}`, dctx);
      if (d.kind === 'data') overlay.setSector(d.fileOffset, d.sector!);
      else overlay.setZero(d.fileOffset, end);
    });
  }
  return { overlay, entries: best.length, headSequence: head.seq };
}

/** Parses and fully validates the log entry at `pos` (2.3.1): header, CRC, descriptors, data sectors. */
function parseEntry(slice: (pos: number, len: number) => Buffer, pos: number, n: number, logGuid: Buffer): Parsed {
  const h = slice(pos, 64);
  if (h.readUInt32LE(0) !== ENTRY_SIGNATURE) return { ok: false, claimed: false };
  // Only entries carrying the header's LogGuid belong to this log (2.2.2 LogGuid).
  if (!h.subarray(32, 48).equals(logGuid)) return { ok: false, claimed: false };
  const length = h.readUInt32LE(8);
  const tail = h.readUInt32LE(12);
  const seq = h.readBigUInt64LE(16);
  const count = h.readUInt32LE(24);
  if (length === 0 || length % LOG_SECTOR !== 0 || length > n) return { ok: false, claimed: true, problem: `EntryLength ${length} is not a whole number of 4 KiB sectors within the log` };
  if (tail % LOG_SECTOR !== 0 || tail >= n) return { ok: false, claimed: true, problem: `Tail ${hex(tail)} is not a sector of the log` };
  if (seq === 0n) return { ok: false, claimed: true, problem: 'SequenceNumber is 0' };
  // The header takes the room of two descriptors in the first sector (2.3.1.1).
  const descSectors = Math.ceil((count + 2) / 128);
  if (descSectors * LOG_SECTOR > length) return { ok: false, claimed: true, problem: `${count} descriptors do not fit in the ${length}-byte entry` };
  const entry = slice(pos, length);
  const stored = entry.readUInt32LE(4);
  const computed = checksumWithHole(entry, 4);
  if (stored !== computed) return { ok: false, claimed: true, checksum: true, problem: `checksum is ${hex(stored)} but the entry sums to ${hex(computed)}` };
  const ctx = { file: '', structure: 'log entry', offset: pos };
  let flushedFileOffset: number;
  let lastFileOffset: number;
  try {
    flushedFileOffset = u64(entry, 48, ctx, 'FlushedFileOffset');
    lastFileOffset = u64(entry, 56, ctx, 'LastFileOffset');
  } catch {
    return { ok: false, claimed: true, problem: 'FlushedFileOffset or LastFileOffset is beyond any real file' };
  }
  const descriptors: Descriptor[] = [];
  let dataIndex = 0;
  for (let i = 0; i < count; i++) {
    const at = 64 + i * 32;
    const sig = entry.readUInt32LE(at);
    if (entry.readBigUInt64LE(at + 24) !== seq) return { ok: false, claimed: true, problem: `descriptor ${i} has another sequence number than its entry` };
    const off = entry.readBigUInt64LE(at + 16);
    if (off % BigInt(LOG_SECTOR) !== 0n || off > BigInt(Number.MAX_SAFE_INTEGER)) return { ok: false, claimed: true, problem: `descriptor ${i} FileOffset ${hex(off)} is not a 4 KiB-aligned file offset` };
    const fileOffset = Number(off);
    if (sig === ZERO_SIGNATURE) {
      const zl = entry.readBigUInt64LE(at + 8);
      if (zl % BigInt(LOG_SECTOR) !== 0n || zl > BigInt(Number.MAX_SAFE_INTEGER)) return { ok: false, claimed: true, problem: `zero descriptor ${i} ZeroLength ${hex(zl)} is not whole sectors` };
      descriptors.push({ kind: 'zero', fileOffset, length: Number(zl) });
    } else if (sig === DESC_SIGNATURE) {
      const dat = (descSectors + dataIndex) * LOG_SECTOR;
      dataIndex++;
      if (dat + LOG_SECTOR > length) return { ok: false, claimed: true, problem: `data descriptor ${i} has no data sector inside the entry` };
      const d = entry.subarray(dat, dat + LOG_SECTOR);
      const dseq = (BigInt(d.readUInt32LE(4)) << 32n) | BigInt(d.readUInt32LE(4092));
      if (d.readUInt32LE(0) !== DATA_SIGNATURE || dseq !== seq) return { ok: false, claimed: true, problem: `data sector of descriptor ${i} has no "data" signature or another sequence number` };
      // 2.3.1.3: the sector's first 8 and last 4 bytes live in the descriptor, where the
      // data sector carries its signature and sequence number.
      const sector = Buffer.allocUnsafe(LOG_SECTOR);
      entry.copy(sector, 0, at + 8, at + 16);
      d.copy(sector, 8, 8, 4092);
      entry.copy(sector, 4092, at + 4, at + 8);
      descriptors.push({ kind: 'data', fileOffset, length: LOG_SECTOR, sector });
    } else {
      return { ok: false, claimed: true, problem: `descriptor ${i} has neither a "desc" nor a "zero" signature` };
    }
  }
  return { ok: true, entry: { pos, length, tail, seq, flushedFileOffset, lastFileOffset, descriptors } };
}

/** Builds one log entry (2.3.1) holding `writes` (4 KiB-aligned file offsets, whole sectors) and zeroed ranges. */
export function buildLogEntry(
  logGuid: Buffer,
  seq: bigint,
  tail: number,
  fileSize: number,
  writes: Array<{ fileOffset: number; data: Buffer }>,
  zeroes: Array<{ fileOffset: number; length: number }> = [],
): Buffer {
  const sectors: Array<{ fileOffset: number; data: Buffer }> = [];
  for (const w of writes) {
    if (w.fileOffset % LOG_SECTOR !== 0 || w.data.length % LOG_SECTOR !== 0) throw new PolyvisorError('ERR_INTERNAL', 'log writes are whole 4 KiB sectors');
    for (let k = 0; k < w.data.length; k += LOG_SECTOR) sectors.push({ fileOffset: w.fileOffset + k, data: w.data.subarray(k, k + LOG_SECTOR) });
  }
  const count = sectors.length + zeroes.length;
  const descSectors = Math.ceil((count + 2) / 128);
  const length = (descSectors + sectors.length) * LOG_SECTOR;
  const b = Buffer.alloc(length);
  b.writeUInt32LE(ENTRY_SIGNATURE, 0);
  b.writeUInt32LE(length, 8);
  b.writeUInt32LE(tail, 12);
  b.writeBigUInt64LE(seq, 16);
  b.writeUInt32LE(count, 24);
  logGuid.copy(b, 32);
  writeU64(b, fileSize, 48);
  writeU64(b, fileSize, 56);
  let i = 0;
  sectors.forEach((s, k) => {
    const at = 64 + i++ * 32;
    b.writeUInt32LE(DESC_SIGNATURE, at);
    s.data.copy(b, at + 4, 4092, 4096); // trailing bytes
    s.data.copy(b, at + 8, 0, 8); // leading bytes
    writeU64(b, s.fileOffset, at + 16);
    b.writeBigUInt64LE(seq, at + 24);
    const d = (descSectors + k) * LOG_SECTOR;
    b.writeUInt32LE(DATA_SIGNATURE, d);
    b.writeUInt32LE(Number(seq >> 32n), d + 4);
    s.data.copy(b, d + 8, 8, 4092);
    b.writeUInt32LE(Number(seq & 0xffffffffn), d + 4092);
  });
  for (const z of zeroes) {
    const at = 64 + i++ * 32;
    b.writeUInt32LE(ZERO_SIGNATURE, at);
    writeU64(b, z.length, at + 8);
    writeU64(b, z.fileOffset, at + 16);
    b.writeBigUInt64LE(seq, at + 24);
  }
  sealChecksum(b, 4);
  return b;
}

/**
 * Test-only: leaves a VHDX with a log to replay, as a writer that crashed after logging an
 * update but before making it in place would. Appends one entry (a one-entry sequence at the
 * start of the log) holding `writes` and `zeroes`, and writes a new header whose LogGuid
 * names it; the data is NOT applied at its final location.
 */
export async function writeLogEntryForTest(
  path: string,
  writes: Array<{ fileOffset: number; data: Buffer }>,
  zeroes: Array<{ fileOffset: number; length: number }> = [],
  opts: { corruptChecksum?: boolean; sequence?: bigint } = {},
): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    const size = (await fh.stat()).size;
    const headers: Array<{ slot: number; header: Header }> = [];
    for (let slot = 0; slot < 2; slot++) {
      const buf = Buffer.alloc(HEADER_SIZE);
      await fh.read(buf, 0, HEADER_SIZE, HEADER_OFFSETS[slot]);
      const st = parseHeader(buf, { file: path, structure: `header ${slot + 1}`, offset: HEADER_OFFSETS[slot]! });
      if (st.ok) headers.push({ slot, header: st.header });
    }
    if (headers.length === 0) throw new PolyvisorError('ERR_CORRUPT', 'no valid header', { file: path });
    headers.sort((a, b) => (a.header.sequenceNumber < b.header.sequenceNumber ? 1 : -1));
    const cur = headers[0]!;
    const logGuid = newGuid();
    const entry = buildLogEntry(logGuid, opts.sequence ?? 1n, 0, size, writes, zeroes);
    if (entry.length > cur.header.logLength) throw new PolyvisorError('ERR_INTERNAL', 'log entry larger than the log', { file: path });
    if (opts.corruptChecksum) entry.writeUInt32LE((entry.readUInt32LE(4) ^ 0x5a5a5a5a) >>> 0, 4);
    await fh.write(entry, 0, entry.length, cur.header.logOffset);
    await fh.datasync();
    const next: Header = { ...cur.header, sequenceNumber: cur.header.sequenceNumber + 1n, logGuid };
    await fh.write(buildHeader(next), 0, HEADER_SIZE, HEADER_OFFSETS[1 - cur.slot]);
    await fh.datasync();
  } finally {
    await fh.close();
  }
}
