/**
 * NBD wire constants and message encoding, in the words of the NBD protocol
 * specification (NetworkBlockDevice/nbd, doc/proto.md). Only what the server in
 * server.ts speaks is declared here; every number carries the section it comes from.
 *
 * All integers on the wire are big-endian ("network byte order", proto.md "Conventions").
 */

// --- Handshake (proto.md "Newstyle negotiation", "Fixed newstyle negotiation") ---

/** 'NBDMAGIC', first 8 bytes the server sends */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT', the newstyle magic, also the magic of every option the client sends */
export const NBD_IHAVEOPT = 0x49484156454f5054n;
/** magic of every option reply (fixed newstyle) */
export const NBD_REP_MAGIC = 0x3e889045565a9n;

// Handshake flags (proto.md "Handshake flags")
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
// Client flags (proto.md "Client flags")
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// Transmission flags (proto.md "Transmission flags")
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_CACHE = 1 << 10;

// Option types (proto.md "Option types")
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;

// Option reply types (proto.md "Option reply types"); errors have bit 31 set
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
export const NBD_REP_ERR_UNSUP = 0x80000001;
export const NBD_REP_ERR_POLICY = 0x80000002;
export const NBD_REP_ERR_INVALID = 0x80000003;
export const NBD_REP_ERR_UNKNOWN = 0x80000006;
export const NBD_REP_ERR_SHUTDOWN = 0x80000007;
export const NBD_REP_ERR_TOO_BIG = 0x80000009;

// Information types inside NBD_REP_INFO (proto.md "NBD_REP_INFO")
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_BLOCK_SIZE = 3;

// --- Transmission (proto.md "Request message", "Simple reply message", "Structured reply chunk message") ---

export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;
/** magic(4) flags(2) type(2) cookie(8) offset(8) length(4) */
export const REQUEST_HEADER_SIZE = 28;

// Command flags (proto.md "Command flags")
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// Request types (proto.md "Request types")
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

// Structured reply flags and types (proto.md "Structured reply flags", "Structured reply types")
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = (1 << 15) + 1;

// base:allocation flags (proto.md "base:allocation metadata context")
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;
export const BASE_ALLOCATION = 'base:allocation';

// Error values (proto.md "Error values")
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

/** Strings in the protocol are at most 4096 bytes (proto.md "Conventions"). */
export const MAX_STRING = 4096;

// --- Encoding ---

/** The server's first message: NBDMAGIC, IHAVEOPT, handshake flags. */
export function encodeGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.alloc(18);
  b.writeBigUInt64BE(NBD_MAGIC, 0);
  b.writeBigUInt64BE(NBD_IHAVEOPT, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

/** One option reply (fixed newstyle): magic, option, reply type, length, data. */
export function encodeOptionReply(option: number, type: number, data: Uint8Array = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(20 + data.length);
  b.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  b.set(data, 20);
  return b;
}

/** NBD_INFO_EXPORT payload: type, size (u64), transmission flags. */
export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(NBD_INFO_EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(transmissionFlags, 10);
  return b;
}

/** NBD_INFO_BLOCK_SIZE payload: type, minimum, preferred, maximum payload. */
export function encodeInfoBlockSize(min: number, preferred: number, maxPayload: number): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(min, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(maxPayload, 10);
  return b;
}

/** NBD_INFO_NAME payload: type, then the export's canonical name. */
export function encodeInfoName(name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(2 + n.length);
  b.writeUInt16BE(NBD_INFO_NAME, 0);
  b.set(n, 2);
  return b;
}

/** NBD_REP_SERVER payload: name length, name. */
export function encodeRepServer(name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length);
  b.writeUInt32BE(n.length, 0);
  b.set(n, 4);
  return b;
}

/** NBD_REP_META_CONTEXT payload: context id, name. */
export function encodeRepMetaContext(id: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length);
  b.writeUInt32BE(id, 0);
  b.set(n, 4);
  return b;
}

/** The reply to NBD_OPT_EXPORT_NAME: size, transmission flags, 124 zeroes unless NO_ZEROES. */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

export interface RequestHeader {
  magic: number;
  flags: number;
  type: number;
  /** opaque: echoed as-is in every reply */
  cookie: Buffer;
  /** u64 on the wire; a bigint so that a hostile 2^64-1 is not rounded */
  offset: bigint;
  length: number;
}

export function decodeRequestHeader(b: Buffer): RequestHeader {
  return {
    magic: b.readUInt32BE(0),
    flags: b.readUInt16BE(4),
    type: b.readUInt16BE(6),
    cookie: Buffer.from(b.subarray(8, 16)),
    offset: b.readBigUInt64BE(16),
    length: b.readUInt32BE(24),
  };
}

/** Simple reply header: magic, error, cookie (the read data, if any, follows). */
export function encodeSimpleReply(cookie: Buffer, error: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  cookie.copy(b, 8);
  return b;
}

/** Structured reply chunk header: magic, flags, type, cookie, payload length. */
export function encodeChunkHeader(cookie: Buffer, flags: number, type: number, payloadLength: number): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  cookie.copy(b, 8);
  b.writeUInt32BE(payloadLength, 16);
  return b;
}

/** NBD_REPLY_TYPE_OFFSET_DATA header and offset; the data follows (length - 8 bytes). */
export function encodeOffsetDataHeader(cookie: Buffer, flags: number, offset: number, dataLength: number): Buffer {
  const b = Buffer.alloc(28);
  encodeChunkHeader(cookie, flags, NBD_REPLY_TYPE_OFFSET_DATA, 8 + dataLength).copy(b, 0);
  b.writeBigUInt64BE(BigInt(offset), 20);
  return b;
}

/** NBD_REPLY_TYPE_OFFSET_HOLE: offset, hole size (nonzero, < 2^32). */
export function encodeOffsetHole(cookie: Buffer, flags: number, offset: number, length: number): Buffer {
  const b = Buffer.alloc(32);
  encodeChunkHeader(cookie, flags, NBD_REPLY_TYPE_OFFSET_HOLE, 12).copy(b, 0);
  b.writeBigUInt64BE(BigInt(offset), 20);
  b.writeUInt32BE(length, 28);
  return b;
}

/** NBD_REPLY_TYPE_BLOCK_STATUS: context id, then (length, flags) descriptors. */
export function encodeBlockStatus(cookie: Buffer, flags: number, contextId: number, descriptors: Array<[number, number]>): Buffer {
  const payload = 4 + 8 * descriptors.length;
  const b = Buffer.alloc(20 + payload);
  encodeChunkHeader(cookie, flags, NBD_REPLY_TYPE_BLOCK_STATUS, payload).copy(b, 0);
  b.writeUInt32BE(contextId, 20);
  let at = 24;
  for (const [len, st] of descriptors) {
    b.writeUInt32BE(len, at);
    b.writeUInt32BE(st, at + 4);
    at += 8;
  }
  return b;
}

/** NBD_REPLY_TYPE_ERROR: error, message length, message (at most MAX_STRING bytes). */
export function encodeErrorChunk(cookie: Buffer, flags: number, error: number, message: string): Buffer {
  let m = Buffer.from(message, 'utf8');
  if (m.length > MAX_STRING) m = m.subarray(0, MAX_STRING);
  const payload = 6 + m.length;
  const b = Buffer.alloc(20 + payload);
  encodeChunkHeader(cookie, flags, NBD_REPLY_TYPE_ERROR, payload).copy(b, 0);
  b.writeUInt32BE(error, 20);
  b.writeUInt16BE(m.length, 24);
  m.copy(b, 26);
  return b;
}
