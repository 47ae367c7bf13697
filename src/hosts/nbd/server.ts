/**
 * An NBD server for any BlockImage: QEMU (or nbdkit's clients, libnbd, the kernel) reads
 * an image Polyvisor opened (an XVA's chunks, a VMDK inside an OVA, a VHDX differencing
 * chain) as a plain raw disk, with nothing copied first.
 *
 * Protocol (NetworkBlockDevice/nbd doc/proto.md), chosen for QEMU's NBD client, which is
 * the consumer that matters:
 * - Fixed newstyle negotiation only ("Fixed newstyle negotiation"): every client since
 *   2012 speaks it; oldstyle cannot name exports, non-fixed newstyle cannot report errors.
 *   NBD_FLAG_NO_ZEROES is offered so that NBD_OPT_EXPORT_NAME replies stay short.
 * - Options: NBD_OPT_GO and NBD_OPT_INFO (NBD_INFO_EXPORT, NBD_INFO_NAME,
 *   NBD_INFO_BLOCK_SIZE: minimum 1 because every BlockImage accepts any offset, preferred
 *   4 KiB, maximum payload 32 MiB, the size the spec says no client should exceed);
 *   NBD_OPT_EXPORT_NAME for old clients; NBD_OPT_LIST; NBD_OPT_ABORT;
 *   NBD_OPT_STRUCTURED_REPLY (QEMU asks for it first: it lets a read say "hole" without
 *   sending zeroes and lets errors carry a message); NBD_OPT_LIST_META_CONTEXT and
 *   NBD_OPT_SET_META_CONTEXT for `base:allocation` only (QEMU uses it for
 *   bdrv_block_status, so `qemu-img map`/`convert` through NBD skip holes). Anything else,
 *   NBD_OPT_STARTTLS included, gets NBD_REP_ERR_UNSUP: there is no TLS, which is why the
 *   server listens on a Unix socket and, optionally, on TCP bound to 127.0.0.1 only.
 * - Commands: READ (simple replies, or structured replies with OFFSET_DATA chunks of at most
 *   4 MiB and OFFSET_HOLE for ranges the chain says read as zeroes; NBD_CMD_FLAG_DF gives
 *   one data chunk), BLOCK_STATUS (from mapChain: zero/unallocated → HOLE|ZERO, data → 0),
 *   CACHE (a no-op), DISC; and when the export is writable WRITE, FLUSH, TRIM (as
 *   writeZeroes: a hint the spec lets us honour or ignore), WRITE_ZEROES (NO_HOLE writes
 *   real zero bytes), with FUA as a flush after the command. A read-only export advertises
 *   NBD_FLAG_READ_ONLY and answers writes with NBD_EPERM.
 * - Not supported: TLS, extended headers, NBD_CMD_FLAG_FAST_ZERO (not advertised, so the
 *   flag is NBD_EINVAL), resize, oldstyle.
 *
 * Hostile clients ("treat every byte as hostile", DESIGN.md): a bad magic, unknown client
 * flags, an option longer than 64 KiB, more than 1000 options, a write longer than 32 MiB
 * or a negotiation lasting over 30 s end the connection (a hard disconnect, which the spec
 * allows on a violation of a MUST or a denial of service); a read over 32 MiB gets
 * NBD_EOVERFLOW; a range beyond the export gets NBD_EINVAL (NBD_ENOSPC for writes, as
 * "Error values" asks); unknown commands and flags get NBD_EINVAL. At most 16 requests (and
 * 64 MiB of payload) are in flight per connection: beyond that the server stops reading the
 * socket, so TCP backpressure holds the client. Nothing a client sends throws out of the
 * server: problems are emitted as 'error' events (only when someone listens).
 *
 * Image access is serialised per export (one FIFO lock): formats are not written for
 * concurrent writers, and one lock also makes a FLUSH on one connection cover writes done
 * on another, so NBD_FLAG_CAN_MULTI_CONN is honest.
 */
import { EventEmitter, once } from 'node:events';
import { lstat, unlink } from 'node:fs/promises';
import net from 'node:net';
import { PolyvisorError, hex, isPolyvisorError } from '../../errors.js';
import { mapChain } from '../../disk/chain.js';
import type { BlockImage } from '../../disk/image.js';
import * as P from './protocol.js';

/** The largest READ/WRITE payload accepted (proto.md "Size constraints": 2^25 is always safe). */
export const MAX_PAYLOAD = 32 * 1024 * 1024;
/** structured READ replies send data in chunks of at most this many bytes */
const READ_CHUNK = 4 * 1024 * 1024;
const PREFERRED_BLOCK = 4096;
const MAX_OPTION_DATA = 64 * 1024;
const MAX_OPTIONS = 1000;
const MAX_INFLIGHT = 16;
const MAX_INFLIGHT_BYTES = 64 * 1024 * 1024;
/** block status replies stop after this many descriptors (the spec's SHOULD is 2^20) */
const MAX_DESCRIPTORS = 64 * 1024;
const NEGOTIATION_TIMEOUT_MS = 30_000;
const ZERO_PIECE = 1024 * 1024;
/** the one metadata context id this server hands out */
const ALLOCATION_CONTEXT_ID = 1;

export interface NbdExport {
  image: BlockImage;
  /** serve writes (the image must be open for writing); default read-only */
  writable?: boolean;
  /** NBD_INFO_DESCRIPTION is not sent; this is only for the 'connection' event and logs */
  description?: string;
}

export interface ServeNbdOptions {
  /** Unix socket to listen on; an existing socket file there is replaced */
  socketPath: string;
  exports: Record<string, NbdExport>;
  /** also listen on TCP 127.0.0.1:port (0 picks a free port); never on other addresses */
  tcpPort?: number;
  /** concurrent connections (default 64) */
  maxConnections?: number;
}

export interface NbdConnectionInfo {
  id: number;
  transport: 'unix' | 'tcp';
}

export interface NbdServer {
  /** `nbd+unix:///NAME?socket=PATH`, the URI qemu-img, qemu-io and nbdinfo accept */
  uri(name: string): string;
  /** `nbd://127.0.0.1:PORT/NAME` when TCP was asked for */
  tcpUri(name: string): string | undefined;
  readonly socketPath: string;
  readonly tcpPort: number | undefined;
  /** Stops listening, ends every connection (in-flight image operations finish) and removes the socket file. */
  close(): Promise<void>;
  on(event: 'error', listener: (err: Error, conn?: NbdConnectionInfo) => void): this;
  on(event: 'connection', listener: (conn: NbdConnectionInfo) => void): this;
  on(event: 'disconnect', listener: (conn: NbdConnectionInfo) => void): this;
}

interface ExportState {
  name: string;
  image: BlockImage;
  writable: boolean;
  lock: FifoLock;
}

/** A FIFO mutex: image operations of one export run one at a time, in arrival order. */
class FifoLock {
  #tail: Promise<void> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(fn);
    this.#tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }
}

/** Thrown inside a connection to end it; never leaves the server. */
class Disconnect extends Error {}

/**
 * Reads exact byte counts from a socket. While nobody waits, at most READ_HIGH_WATER bytes
 * are buffered and the socket is paused beyond that, so a client cannot make us buffer
 * more than one request's worth of data.
 */
class SocketReader {
  static readonly READ_HIGH_WATER = 1024 * 1024;
  #chunks: Buffer[] = [];
  #size = 0;
  #waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  #ended = false;

  constructor(private readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.#chunks.push(d);
      this.#size += d.length;
      const w = this.#waiter;
      if (w && this.#size >= w.n) {
        this.#waiter = null;
        w.resolve(this.#take(w.n));
      } else if (!w && this.#size > SocketReader.READ_HIGH_WATER) {
        socket.pause();
      }
    });
    const end = () => {
      this.#ended = true;
      const w = this.#waiter;
      this.#waiter = null;
      w?.reject(new Disconnect('client closed the connection'));
    };
    socket.on('end', end);
    socket.on('close', end);
  }

  read(n: number): Promise<Buffer> {
    if (this.#size >= n) return Promise.resolve(this.#take(n));
    if (this.#ended) return Promise.reject(new Disconnect('client closed the connection'));
    this.socket.resume();
    return new Promise((resolve, reject) => {
      this.#waiter = { n, resolve, reject };
    });
  }

  #take(n: number): Buffer {
    let out: Buffer;
    const first = this.#chunks[0];
    if (first && first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let at = 0;
      while (at < n) {
        const c = this.#chunks[0]!;
        const k = Math.min(c.length, n - at);
        c.copy(out, at, 0, k);
        at += k;
        if (k === c.length) this.#chunks.shift();
        else this.#chunks[0] = c.subarray(k);
      }
    }
    this.#size -= n;
    if (this.#size <= SocketReader.READ_HIGH_WATER && !this.#ended) this.socket.resume();
    return out;
  }
}

/** Starts an NBD server on `socketPath` (and optionally 127.0.0.1) for the given exports. */
export async function serveNbd(opts: ServeNbdOptions): Promise<NbdServer> {
  const exports = new Map<string, ExportState>();
  for (const [name, e] of Object.entries(opts.exports)) {
    if (Buffer.byteLength(name, 'utf8') > P.MAX_STRING) {
      throw new PolyvisorError('ERR_USAGE', `NBD export name is longer than ${P.MAX_STRING} bytes`);
    }
    const writable = !!e.writable;
    if (writable && e.image.readOnly) {
      throw new PolyvisorError('ERR_READ_ONLY', `NBD export "${name}" is writable but the image was opened read-only`, { file: e.image.path });
    }
    exports.set(name, { name, image: e.image, writable, lock: new FifoLock() });
  }
  const server = new NbdServerImpl(opts.socketPath, exports);
  await server.listen(opts.tcpPort, opts.maxConnections ?? 64);
  return server;
}

class NbdServerImpl extends EventEmitter implements NbdServer {
  readonly socketPath: string;
  tcpPort: number | undefined;
  #exports: Map<string, ExportState>;
  #servers: net.Server[] = [];
  #sockets = new Set<net.Socket>();
  #nextId = 1;
  #closing = false;
  #connections = new Set<Promise<void>>();

  constructor(socketPath: string, exports: Map<string, ExportState>) {
    super();
    this.socketPath = socketPath;
    this.#exports = exports;
  }

  uri(name: string): string {
    return `nbd+unix:///${encodeURIComponent(name)}?socket=${this.socketPath}`;
  }

  tcpUri(name: string): string | undefined {
    return this.tcpPort === undefined ? undefined : `nbd://127.0.0.1:${this.tcpPort}/${encodeURIComponent(name)}`;
  }

  /** 'error' events only go out when somebody listens: an unheard error must not throw. */
  report(err: unknown, conn?: NbdConnectionInfo): void {
    if (this.listenerCount('error') === 0) return;
    this.emit('error', err instanceof Error ? err : new Error(String(err)), conn);
  }

  async listen(tcpPort: number | undefined, maxConnections: number): Promise<void> {
    // A socket file left by a crashed server would make listen() fail; anything else at
    // that path is the user's file and is left alone.
    const st = await lstat(this.socketPath).catch(() => null);
    if (st) {
      if (!st.isSocket()) throw new PolyvisorError('ERR_EXISTS', 'exists and is not a socket', { file: this.socketPath });
      await unlink(this.socketPath);
    }
    const unix = this.#makeServer('unix', maxConnections);
    await listenOn(unix, { path: this.socketPath });
    if (tcpPort !== undefined) {
      const tcp = this.#makeServer('tcp', maxConnections);
      await listenOn(tcp, { host: '127.0.0.1', port: tcpPort });
      this.tcpPort = (tcp.address() as net.AddressInfo).port;
    }
  }

  #makeServer(transport: 'unix' | 'tcp', maxConnections: number): net.Server {
    const srv = net.createServer((socket) => {
      if (this.#closing) {
        socket.destroy();
        return;
      }
      const info: NbdConnectionInfo = { id: this.#nextId++, transport };
      this.#sockets.add(socket);
      socket.on('error', () => {}); // reported through the connection's own path
      socket.on('close', () => {
        this.#sockets.delete(socket);
        this.emit('disconnect', info);
      });
      if (transport === 'tcp') socket.setNoDelay(true);
      this.emit('connection', info);
      const done: Promise<void> = new Connection(this, socket, info, this.#exports)
        .run()
        .catch((e) => this.report(e, info))
        .finally(() => this.#connections.delete(done));
      this.#connections.add(done);
    });
    srv.maxConnections = maxConnections;
    srv.on('error', (e) => this.report(e));
    this.#servers.push(srv);
    return srv;
  }

  get closing(): boolean {
    return this.#closing;
  }

  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    const closed = this.#servers.map((s) => new Promise<void>((r) => s.close(() => r())));
    for (const s of this.#sockets) s.destroy();
    // Image operations already started finish before close() resolves, so the caller may
    // close the images right after.
    await Promise.allSettled([...this.#connections]);
    await Promise.all(closed);
    await unlink(this.socketPath).catch(() => undefined);
  }
}

function listenOn(srv: net.Server, where: net.ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (e: Error) => reject(e);
    srv.once('error', onError);
    srv.listen(where, () => {
      srv.off('error', onError);
      resolve();
    });
  });
}

/** Maps a failure of an image operation to an NBD error value (proto.md "Error values"). */
function nbdErrno(e: unknown): number {
  if (isPolyvisorError(e, 'ERR_READ_ONLY')) return P.NBD_EPERM;
  if (isPolyvisorError(e, 'ERR_RANGE')) return P.NBD_EINVAL;
  if (isPolyvisorError(e, 'ERR_UNSUPPORTED')) return P.NBD_ENOTSUP;
  if (e && typeof e === 'object' && 'code' in e && (e.code === 'ENOSPC' || e.code === 'EDQUOT' || e.code === 'EFBIG')) return P.NBD_ENOSPC;
  return P.NBD_EIO;
}

/** A request that failed: the NBD error value, and a message for structured error chunks. */
class RequestError extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
  }
}

class Connection {
  #reader: SocketReader;
  #structured = false;
  #noZeroes = false;
  /** export name the selected meta contexts belong to (proto.md: must match the GO name) */
  #metaExport: string | null = null;
  #metaAllocation = false;
  #inflight = 0;
  #inflightBytes = 0;
  #slotFreed: (() => void) | null = null;
  #pending = new Set<Promise<void>>();

  constructor(
    private readonly server: NbdServerImpl,
    private readonly socket: net.Socket,
    private readonly info: NbdConnectionInfo,
    private readonly exports: Map<string, ExportState>,
  ) {
    this.#reader = new SocketReader(socket);
  }

  async run(): Promise<void> {
    // A client that connects and never finishes negotiating would hold a connection slot forever.
    const timer = setTimeout(() => {
      this.server.report(new PolyvisorError('ERR_ABORTED', `client ${this.info.id}: negotiation took longer than ${NEGOTIATION_TIMEOUT_MS / 1000} s; disconnecting`, { structure: 'NBD protocol' }), this.info);
      this.socket.destroy();
    }, NEGOTIATION_TIMEOUT_MS);
    try {
      const exp = await this.#negotiate();
      clearTimeout(timer);
      if (!exp) return;
      await this.#transmit(exp);
    } catch (e) {
      if (!(e instanceof Disconnect)) this.server.report(e, this.info);
    } finally {
      clearTimeout(timer);
      await Promise.allSettled([...this.#pending]);
      this.socket.destroy();
    }
  }

  /** A hostile or broken client: report it and drop the connection (a hard disconnect). */
  #violation(detail: string): never {
    const err = new PolyvisorError('ERR_CORRUPT', `client ${this.info.id}: ${detail}; disconnecting`, { structure: 'NBD protocol' });
    this.server.report(err, this.info);
    this.socket.destroy();
    throw new Disconnect(detail);
  }

  /** Writes one whole message and waits while the socket's buffer is full. */
  async #send(...parts: Buffer[]): Promise<void> {
    if (this.socket.destroyed) throw new Disconnect('connection closed');
    let ok = true;
    for (const p of parts) ok = this.socket.write(p);
    if (!ok && !this.socket.destroyed) {
      try {
        await Promise.race([once(this.socket, 'drain'), once(this.socket, 'close')]);
      } catch {
        throw new Disconnect('connection failed while sending');
      }
      if (this.socket.destroyed) throw new Disconnect('connection closed');
    }
  }

  // --- Handshake phase (proto.md "Fixed newstyle negotiation", "Option types") ---

  /** Returns the export to serve, or null when the client aborted. */
  async #negotiate(): Promise<ExportState | null> {
    await this.#send(P.encodeGreeting(P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES));
    const clientFlags = (await this.#reader.read(4)).readUInt32BE(0);
    // "the server MUST drop the TCP connection if the client sets an unknown flag"
    if (clientFlags & ~(P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES)) this.#violation(`unknown client flags ${hex(clientFlags)}`);
    this.#noZeroes = (clientFlags & P.NBD_FLAG_C_NO_ZEROES) !== 0;

    for (let count = 0; ; count++) {
      if (count >= MAX_OPTIONS) this.#violation(`more than ${MAX_OPTIONS} options`);
      const h = await this.#reader.read(16);
      if (h.readBigUInt64BE(0) !== P.NBD_IHAVEOPT) this.#violation(`option magic ${hex(h.readBigUInt64BE(0))} is not IHAVEOPT`);
      const option = h.readUInt32BE(8);
      const length = h.readUInt32BE(12);
      if (length > MAX_OPTION_DATA) {
        // Skipping gigabytes to stay in step would be the denial of service itself.
        await this.#send(P.encodeOptionReply(option, P.NBD_REP_ERR_TOO_BIG, Buffer.from(`option data over ${MAX_OPTION_DATA} bytes`))).catch(() => undefined);
        this.#violation(`option ${option} carries ${length} bytes of data`);
      }
      const data = length ? await this.#reader.read(length) : Buffer.alloc(0);
      if (this.server.closing && option !== P.NBD_OPT_ABORT) {
        await this.#reply(option, P.NBD_REP_ERR_SHUTDOWN, 'server is shutting down');
        continue;
      }
      switch (option) {
        case P.NBD_OPT_EXPORT_NAME: {
          // No way to report an error here: the spec says the server MUST terminate the session.
          const exp = this.exports.get(data.toString('utf8'));
          if (!exp) this.#violation(`NBD_OPT_EXPORT_NAME for unknown export "${truncate(data.toString('utf8'))}"`);
          await this.#send(P.encodeExportNameReply(exp.image.virtualSize, this.#transmissionFlags(exp), this.#noZeroes));
          return exp;
        }
        case P.NBD_OPT_ABORT:
          await this.#reply(option, P.NBD_REP_ACK).catch(() => undefined);
          return null;
        case P.NBD_OPT_LIST:
          if (length !== 0) {
            await this.#reply(option, P.NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
            break;
          }
          for (const name of this.exports.keys()) await this.#reply(option, P.NBD_REP_SERVER, P.encodeRepServer(name));
          await this.#reply(option, P.NBD_REP_ACK);
          break;
        case P.NBD_OPT_STRUCTURED_REPLY:
          if (length !== 0) await this.#reply(option, P.NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
          else if (this.#structured) await this.#reply(option, P.NBD_REP_ERR_INVALID, 'structured replies are already negotiated');
          else {
            this.#structured = true;
            await this.#reply(option, P.NBD_REP_ACK);
          }
          break;
        case P.NBD_OPT_INFO:
        case P.NBD_OPT_GO: {
          const exp = await this.#infoOrGo(option, data);
          if (exp && option === P.NBD_OPT_GO) return exp;
          break;
        }
        case P.NBD_OPT_LIST_META_CONTEXT:
        case P.NBD_OPT_SET_META_CONTEXT:
          await this.#metaContext(option, data);
          break;
        default:
          // NBD_OPT_STARTTLS included: no TLS here (see the header).
          await this.#reply(option, P.NBD_REP_ERR_UNSUP, `option ${option} is not supported`);
      }
    }
  }

  #reply(option: number, type: number, data?: Buffer | string): Promise<void> {
    const payload = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    return this.#send(P.encodeOptionReply(option, type, payload));
  }

  #transmissionFlags(exp: ExportState): number {
    let f = P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_CAN_MULTI_CONN | P.NBD_FLAG_SEND_CACHE;
    if (exp.writable) f |= P.NBD_FLAG_SEND_FLUSH | P.NBD_FLAG_SEND_FUA | P.NBD_FLAG_SEND_TRIM | P.NBD_FLAG_SEND_WRITE_ZEROES;
    else f |= P.NBD_FLAG_READ_ONLY;
    // "MUST leave this flag clear if structured replies have not been negotiated"
    if (this.#structured) f |= P.NBD_FLAG_SEND_DF;
    return f;
  }

  /** NBD_OPT_INFO / NBD_OPT_GO: u32 name length, name, u16 count, count × u16 info types. */
  async #infoOrGo(option: number, data: Buffer): Promise<ExportState | null> {
    if (data.length < 6) {
      await this.#reply(option, P.NBD_REP_ERR_INVALID, 'option data shorter than 6 bytes');
      return null;
    }
    const nameLen = data.readUInt32BE(0);
    if (nameLen > data.length - 6) {
      await this.#reply(option, P.NBD_REP_ERR_INVALID, 'export name length runs past the option data');
      return null;
    }
    const name = data.toString('utf8', 4, 4 + nameLen);
    const count = data.readUInt16BE(4 + nameLen);
    if (4 + nameLen + 2 + 2 * count !== data.length) {
      await this.#reply(option, P.NBD_REP_ERR_INVALID, 'information request count does not match the option length');
      return null;
    }
    const exp = this.exports.get(name);
    if (!exp) {
      await this.#reply(option, P.NBD_REP_ERR_UNKNOWN, `no export named "${truncate(name)}"`);
      return null;
    }
    const wanted = new Set<number>();
    for (let i = 0; i < count; i++) wanted.add(data.readUInt16BE(4 + nameLen + 2 + 2 * i));
    await this.#reply(option, P.NBD_REP_INFO, P.encodeInfoExport(exp.image.virtualSize, this.#transmissionFlags(exp)));
    if (wanted.has(P.NBD_INFO_NAME)) await this.#reply(option, P.NBD_REP_INFO, P.encodeInfoName(exp.name));
    // Sent even unasked: the spec lets a server volunteer it, and our limits are the defaults.
    await this.#reply(option, P.NBD_REP_INFO, P.encodeInfoBlockSize(1, PREFERRED_BLOCK, MAX_PAYLOAD));
    await this.#reply(option, P.NBD_REP_ACK);
    return exp;
  }

  /**
   * NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: u32 name length, name,
   * u32 query count, then (u32 length, query) each. Only `base:allocation` exists.
   */
  async #metaContext(option: number, data: Buffer): Promise<void> {
    const set = option === P.NBD_OPT_SET_META_CONTEXT;
    // "Issuing this command replaces all previously-set metadata contexts (including when this command fails)"
    if (set) {
      this.#metaAllocation = false;
      this.#metaExport = null;
    }
    if (set && !this.#structured) {
      await this.#reply(option, P.NBD_REP_ERR_INVALID, 'negotiate structured replies first');
      return;
    }
    const invalid = (why: string) => this.#reply(option, P.NBD_REP_ERR_INVALID, why);
    if (data.length < 8) return invalid('option data shorter than 8 bytes');
    const nameLen = data.readUInt32BE(0);
    if (nameLen > data.length - 8) return invalid('export name length runs past the option data');
    const name = data.toString('utf8', 4, 4 + nameLen);
    let at = 4 + nameLen;
    const count = data.readUInt32BE(at);
    at += 4;
    const queries: string[] = [];
    for (let i = 0; i < count; i++) {
      if (at + 4 > data.length) return invalid(`query ${i} runs past the option data`);
      const qLen = data.readUInt32BE(at);
      at += 4;
      if (qLen > data.length - at) return invalid(`query ${i} runs past the option data`);
      queries.push(data.toString('utf8', at, at + qLen));
      at += qLen;
    }
    if (at !== data.length) return invalid('trailing bytes after the last query');
    if (!this.exports.has(name)) {
      await this.#reply(option, P.NBD_REP_ERR_UNKNOWN, `no export named "${truncate(name)}"`);
      return;
    }
    // "base:" is a wildcard when listing and ignored when setting; zero queries list everything.
    const matches = set
      ? queries.some((q) => q === P.BASE_ALLOCATION)
      : count === 0 || queries.some((q) => q === P.BASE_ALLOCATION || q === 'base:');
    if (matches) {
      await this.#reply(option, P.NBD_REP_META_CONTEXT, P.encodeRepMetaContext(set ? ALLOCATION_CONTEXT_ID : 0, P.BASE_ALLOCATION));
      if (set) {
        this.#metaAllocation = true;
        this.#metaExport = name;
      }
    }
    await this.#reply(option, P.NBD_REP_ACK);
  }

  // --- Transmission phase (proto.md "Transmission", "Request types") ---

  async #transmit(exp: ExportState): Promise<void> {
    if (this.#metaExport !== exp.name) this.#metaAllocation = false;
    for (;;) {
      const h = P.decodeRequestHeader(await this.#reader.read(P.REQUEST_HEADER_SIZE));
      if (h.magic !== P.NBD_REQUEST_MAGIC) this.#violation(`request magic ${hex(h.magic)} is not NBD_REQUEST_MAGIC`);
      if (h.type === P.NBD_CMD_DISC) {
        // "The server MUST handle all outstanding requests ... and close the TCP session."
        await Promise.allSettled([...this.#pending]);
        this.socket.end();
        throw new Disconnect('NBD_CMD_DISC');
      }
      let payload: Buffer | null = null;
      if (h.type === P.NBD_CMD_WRITE) {
        if (h.length > MAX_PAYLOAD) {
          // We cannot skip the payload without reading it all: error, then hard disconnect.
          await this.#sendError(h.cookie, P.NBD_EOVERFLOW, `write of ${h.length} bytes is over the ${MAX_PAYLOAD}-byte maximum payload`);
          this.#violation(`write payload of ${h.length} bytes`);
        }
        const release = await this.#slot(h.length);
        try {
          payload = await this.#reader.read(h.length);
        } catch (e) {
          release();
          throw e;
        }
        this.#start(exp, h, payload, release);
      } else {
        this.#start(exp, h, null, await this.#slot(h.type === P.NBD_CMD_READ ? Math.min(h.length, MAX_PAYLOAD) : 0));
      }
    }
  }

  /** Waits until one more request of `bytes` payload fits in the in-flight bounds. */
  async #slot(bytes: number): Promise<() => void> {
    while (this.#inflight >= MAX_INFLIGHT || (this.#inflight > 0 && this.#inflightBytes + bytes > MAX_INFLIGHT_BYTES)) {
      await new Promise<void>((r) => (this.#slotFreed = r));
    }
    this.#inflight++;
    this.#inflightBytes += bytes;
    return () => {
      this.#inflight--;
      this.#inflightBytes -= bytes;
      const f = this.#slotFreed;
      this.#slotFreed = null;
      f?.();
    };
  }

  #start(exp: ExportState, h: P.RequestHeader, payload: Buffer | null, release: () => void): void {
    const p = this.#handle(exp, h, payload)
      .catch((e) => {
        if (!(e instanceof Disconnect)) this.server.report(e, this.info);
        this.socket.destroy();
      })
      .finally(() => {
        release();
        this.#pending.delete(p);
      });
    this.#pending.add(p);
  }

  async #handle(exp: ExportState, h: P.RequestHeader, payload: Buffer | null): Promise<void> {
    try {
      await this.#dispatch(exp, h, payload);
    } catch (e) {
      if (e instanceof Disconnect) throw e;
      if (e instanceof RequestError) {
        await this.#sendError(h.cookie, e.errno, e.message);
        return;
      }
      // An image failure: the client gets an error value; the server's owner gets the details.
      this.server.report(e, this.info);
      await this.#sendError(h.cookie, nbdErrno(e), e instanceof Error ? e.message : String(e));
    }
  }

  async #sendError(cookie: Buffer, errno: number, message: string): Promise<void> {
    // With structured replies the error can carry a message (proto.md "NBD_REPLY_TYPE_ERROR").
    if (this.#structured) await this.#send(P.encodeErrorChunk(cookie, P.NBD_REPLY_FLAG_DONE, errno, message));
    else await this.#send(P.encodeSimpleReply(cookie, errno));
  }

  /** Checks the command flags and that [offset, offset+length) lies inside the export. */
  #check(exp: ExportState, h: P.RequestHeader, allowedFlags: number, beyondErrno = P.NBD_EINVAL): number {
    const bad = h.flags & ~(allowedFlags | P.NBD_CMD_FLAG_FUA);
    if (bad) throw new RequestError(P.NBD_EINVAL, `command flags ${hex(bad)} are not valid for command ${h.type}`);
    const size = BigInt(exp.image.virtualSize);
    if (h.offset > size || h.offset + BigInt(h.length) > size) {
      throw new RequestError(beyondErrno, `range ${hex(h.offset)}+${hex(h.length)} lies beyond the end of the ${exp.image.virtualSize}-byte export`);
    }
    return Number(h.offset);
  }

  #needWritable(exp: ExportState, what: string): void {
    if (!exp.writable) throw new RequestError(P.NBD_EPERM, `${what} on read-only export "${exp.name}"`);
  }

  async #dispatch(exp: ExportState, h: P.RequestHeader, payload: Buffer | null): Promise<void> {
    const ok = () => this.#send(P.encodeSimpleReply(h.cookie, 0));
    const fua = async () => {
      if (h.flags & P.NBD_CMD_FLAG_FUA && exp.writable) await exp.lock.run(() => exp.image.flush());
    };
    switch (h.type) {
      case P.NBD_CMD_READ: {
        if (h.length > MAX_PAYLOAD) throw new RequestError(P.NBD_EOVERFLOW, `read of ${h.length} bytes is over the ${MAX_PAYLOAD}-byte maximum payload`);
        const offset = this.#check(exp, h, this.#structured ? P.NBD_CMD_FLAG_DF : 0);
        if (this.#structured) return this.#structuredRead(exp, h, offset);
        const buf = Buffer.alloc(h.length);
        if (h.length) await exp.lock.run(() => exp.image.read(buf, offset));
        return this.#send(P.encodeSimpleReply(h.cookie, 0), buf);
      }
      case P.NBD_CMD_WRITE: {
        const offset = this.#check(exp, h, 0, P.NBD_ENOSPC);
        this.#needWritable(exp, 'write');
        if (h.length) await exp.lock.run(() => exp.image.write(payload!, offset));
        await fua();
        return ok();
      }
      case P.NBD_CMD_FLUSH:
        this.#check(exp, h, 0);
        if (exp.writable) await exp.lock.run(() => exp.image.flush());
        return ok();
      case P.NBD_CMD_TRIM: {
        const offset = this.#check(exp, h, 0);
        this.#needWritable(exp, 'trim');
        // A hint: honoured only where the format can drop data in its metadata.
        const wz = exp.image.writeZeroes?.bind(exp.image);
        if (wz && h.length) await exp.lock.run(() => wz(offset, h.length));
        await fua();
        return ok();
      }
      case P.NBD_CMD_WRITE_ZEROES: {
        const offset = this.#check(exp, h, P.NBD_CMD_FLAG_NO_HOLE, P.NBD_ENOSPC);
        this.#needWritable(exp, 'write zeroes');
        if (h.length) await this.#writeZeroes(exp, offset, h.length, (h.flags & P.NBD_CMD_FLAG_NO_HOLE) !== 0);
        await fua();
        return ok();
      }
      case P.NBD_CMD_CACHE:
        this.#check(exp, h, 0);
        return ok();
      case P.NBD_CMD_BLOCK_STATUS: {
        if (!this.#structured || !this.#metaAllocation) throw new RequestError(P.NBD_EINVAL, 'NBD_CMD_BLOCK_STATUS without a negotiated metadata context');
        const offset = this.#check(exp, h, P.NBD_CMD_FLAG_REQ_ONE);
        if (h.length === 0) throw new RequestError(P.NBD_EINVAL, 'block status of 0 bytes');
        return this.#blockStatus(exp, h, offset);
      }
      default:
        throw new RequestError(P.NBD_EINVAL, `unknown command ${h.type}`);
    }
  }

  /** WRITE_ZEROES: metadata zeroes when the format has them, unless NO_HOLE asks for provisioned zeroes. */
  async #writeZeroes(exp: ExportState, offset: number, length: number, noHole: boolean): Promise<void> {
    const img = exp.image;
    if (!noHole && img.writeZeroes) {
      await exp.lock.run(() => img.writeZeroes!(offset, length));
      return;
    }
    const zeroes = Buffer.alloc(Math.min(ZERO_PIECE, length));
    for (let pos = offset; pos < offset + length; pos += zeroes.length) {
      const n = Math.min(zeroes.length, offset + length - pos);
      await exp.lock.run(() => img.write(zeroes.subarray(0, n), pos));
    }
  }

  /**
   * Structured READ (proto.md "NBD_CMD_READ", structured replies): ranges the chain says
   * read as zeroes go out as OFFSET_HOLE, data as OFFSET_DATA of at most READ_CHUNK bytes.
   * Each piece is read before its chunk header is sent, so an I/O error never leaves a
   * chunk half sent; it ends the reply with an error chunk instead.
   */
  async #structuredRead(exp: ExportState, h: P.RequestHeader, offset: number): Promise<void> {
    const { image } = exp;
    const c = h.cookie;
    if (h.length === 0 || h.flags & P.NBD_CMD_FLAG_DF) {
      // "Don't fragment": one data chunk with zeroes included (needs a nonzero length: the chunk must describe a byte).
      if (h.length === 0) return this.#send(P.encodeChunkHeader(c, P.NBD_REPLY_FLAG_DONE, P.NBD_REPLY_TYPE_NONE, 0));
      const buf = Buffer.alloc(h.length);
      await exp.lock.run(() => image.read(buf, offset));
      return this.#send(P.encodeOffsetDataHeader(c, P.NBD_REPLY_FLAG_DONE, offset, buf.length), buf);
    }
    const extents = await exp.lock.run(async () => {
      const out: Array<{ offset: number; length: number; zero: boolean }> = [];
      for await (const e of mapChain(image, offset, h.length)) {
        const zero = e.kind === 'zero';
        const last = out[out.length - 1];
        if (last && last.zero === zero) last.length += e.length;
        else out.push({ offset: e.offset, length: e.length, zero });
      }
      return out;
    });
    for (const e of extents) {
      if (e.zero) {
        await this.#send(P.encodeOffsetHole(c, 0, e.offset, e.length));
        continue;
      }
      for (let pos = e.offset; pos < e.offset + e.length; pos += READ_CHUNK) {
        const buf = Buffer.alloc(Math.min(READ_CHUNK, e.offset + e.length - pos));
        await exp.lock.run(() => image.read(buf, pos));
        await this.#send(P.encodeOffsetDataHeader(c, 0, pos, buf.length), buf);
      }
    }
    await this.#send(P.encodeChunkHeader(c, P.NBD_REPLY_FLAG_DONE, P.NBD_REPLY_TYPE_NONE, 0));
  }

  /**
   * NBD_CMD_BLOCK_STATUS for base:allocation from the whole chain (mapChain): what reads as
   * zeroes (a hole, a zero cluster, past the end of a shorter parent) is HOLE|ZERO; data is 0.
   */
  async #blockStatus(exp: ExportState, h: P.RequestHeader, offset: number): Promise<void> {
    const reqOne = (h.flags & P.NBD_CMD_FLAG_REQ_ONE) !== 0;
    const descriptors = await exp.lock.run(async () => {
      const out: Array<[number, number]> = [];
      for await (const e of mapChain(exp.image, offset, h.length)) {
        const flags = e.kind === 'zero' ? P.NBD_STATE_HOLE | P.NBD_STATE_ZERO : 0;
        const last = out[out.length - 1];
        if (last && last[1] === flags) last[0] += e.length;
        else {
          if (reqOne && out.length === 1) break;
          if (out.length >= MAX_DESCRIPTORS) break;
          out.push([e.length, flags]);
        }
      }
      return out;
    });
    if (descriptors.length === 0) throw new RequestError(P.NBD_EIO, 'no allocation information for the range');
    await this.#send(P.encodeBlockStatus(h.cookie, P.NBD_REPLY_FLAG_DONE, ALLOCATION_CONTEXT_ID, descriptors));
  }
}

function truncate(s: string): string {
  return s.length > 80 ? s.slice(0, 80) + '…' : s;
}
