/**
 * The consoles of running VMs over WebSockets (RFC 6455), for the web console:
 *
 * - `GET /api/vms/:name/console/vnc?token=T`: the VM's VNC server, byte for byte (the RFB
 *   protocol, RFC 6143, spoken by noVNC in the browser and by QEMU at the other end). The local
 *   engine's VNC server listens on a Unix socket in the VM's folder (../hosts/qemu/driver.ts
 *   VNC_SOCKET), so it is reachable only through this proxy: no port, nothing on the network.
 * - `GET /api/vms/:name/console/serial?token=T[&scrollback=BYTES]`: the guest's serial
 *   console, both ways (../hosts/estate.ts console()), preceded by the last bytes of its serial
 *   log for a local VM, so a console opened after boot still shows what the guest printed.
 *   QEMU serves one client per serial socket: a second session (or `polyvisor console`) waits
 *   until the first ends; VNC sessions share the screen.
 *
 * A browser cannot put an Authorization header on a WebSocket, so these routes take the
 * short-lived single-use console token that POST /api/vms/:name/console-token issues to an
 * operator (./auth.ts). The token is checked and spent in preValidation, before the upgrade:
 * a refused request gets the API's JSON error and never a socket. A session is recorded in the
 * audit log (it can type into the guest), without its token.
 *
 * Both directions respect backpressure (a slow browser pauses the VM's socket, a slow socket
 * pauses the WebSocket), and a ping every PING_MS ends a session whose client vanished.
 */
import { createConnection, type Socket } from 'node:net';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import websocket from '@fastify/websocket';
import { PolyvisorError } from '../errors.js';
import { VNC_SOCKET } from '../hosts/qemu/driver.js';
import { LOCAL_HOST } from '../hosts/local.js';
import { VM_NAME } from '../store/store.js';
import { allows, type Principal } from './auth.js';
import { ServerError } from './http-errors.js';

/** The largest message a client may send (keystrokes and pointer events are a few bytes). */
const MAX_CLIENT_MESSAGE = 64 * 1024;
/** Bytes queued towards a browser before the VM's socket is paused. */
const HIGH_WATER = 1 << 20;
/** How often a session is pinged; one without a pong by the next ping is ended. */
const PING_MS = 30_000;
/** The serial log's tail a session starts with: by default, and at most. */
const SCROLLBACK_DEFAULT = 64 * 1024;
const SCROLLBACK_MAX = 1 << 20;
const TOKEN = /^[A-Za-z0-9_-]{1,128}$/;

export type ConsoleKind = 'vnc' | 'serial';

/** What the proxy uses of a `ws` WebSocket (the ws package ships no types; @types/ws is not a dependency). */
export interface ConsoleSocket {
  readonly readyState: number;
  readonly OPEN: number;
  readonly CONNECTING: number;
  readonly bufferedAmount: number;
  send(data: Buffer, opts: { binary: boolean }, cb?: (err?: Error) => void): void;
  close(code?: number, reason?: string): void;
  terminate(): void;
  ping(): void;
  pause(): void;
  resume(): void;
  on(event: 'message', fn: (data: Buffer | ArrayBuffer | Buffer[]) => void): void;
  on(event: 'pong' | 'close', fn: () => void): void;
  on(event: 'error', fn: (e: Error) => void): void;
}

interface Opened {
  vm: string;
  principal: Principal;
}

declare module 'fastify' {
  interface FastifyRequest {
    consoleSession?: Opened;
  }
}

/** Checks a console request and spends its token; throws the error its answer carries. */
function authorize(request: FastifyRequest, kind: ConsoleKind): Opened {
  const ctx = request.server.polyvisor;
  const { name } = request.params as { name: string };
  const { token } = request.query as { token?: unknown };
  if (!VM_NAME.test(name)) throw new PolyvisorError('ERR_USAGE', `params.name: ${JSON.stringify(name)} is not a VM name`);
  if (typeof token !== 'string' || !TOKEN.test(token)) throw new ServerError('ERR_AUTH', `a console needs ?token=, the token POST /api/vms/${name}/console-token returns`);
  // WebSockets are not bound by the same-origin policy (RFC 6455 §10.2): the token, not a
  // cookie, is what opens a console, but a page of another site is refused all the same
  const origin = request.headers.origin;
  if (origin !== undefined) {
    let host: string | undefined;
    try {
      host = new URL(origin).host;
    } catch {
      host = undefined;
    }
    if (host !== request.headers.host) throw new ServerError('ERR_FORBIDDEN', `a console opens only from this server's own pages (origin ${origin})`);
  }
  const principal = ctx.auth.useConsoleToken(token, name);
  if (!principal) throw new ServerError('ERR_AUTH', 'the console token is unknown, used, expired or for another VM; ask for a new one');
  // the role may have changed since the token was issued
  if (!allows(principal.role, 'operator')) throw new ServerError('ERR_FORBIDDEN', `${principal.name} is a ${principal.role}; a console needs the operator role`);
  const stored = ctx.store.getVm(name);
  const vm = stored.host === LOCAL_HOST ? ctx.estate.local.get(name) : stored;
  if (vm.state === 'stopped') throw new PolyvisorError('ERR_VM_STATE', `${name} is not running; start it to open its console`);
  if (kind === 'vnc' && vm.host !== LOCAL_HOST) throw new PolyvisorError('ERR_UNSUPPORTED', `${name} is on host ${vm.host}; the web console shows the graphical console of local VMs only (its serial console works)`);
  return { vm: name, principal };
}

/** The last `bytes` of a file (at most SCROLLBACK_MAX); empty when there is none. */
async function tail(path: string, bytes: number): Promise<Buffer> {
  const fh = await open(path, 'r').catch(() => undefined);
  if (!fh) return Buffer.alloc(0);
  try {
    const { size } = await fh.stat();
    const length = Math.min(size, bytes, SCROLLBACK_MAX);
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, size - length);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

function connectUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = createConnection({ path });
    sock.once('connect', () => resolve(sock));
    sock.once('error', (e) => reject(new PolyvisorError('ERR_IO', `console: cannot reach ${path}: ${e.message}`, { file: path, cause: e })));
  });
}

function asBuffer(data: Buffer | ArrayBuffer | Buffer[]): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/**
 * Joins a WebSocket and a byte stream until either ends. `first` is sent before the stream's
 * own bytes (the serial scrollback).
 */
export function bridge(ws: ConsoleSocket, stream: Duplex, first?: Buffer): void {
  let ended = false;
  let alive = true;
  const end = (code: number, reason: string) => {
    if (ended) return;
    ended = true;
    clearInterval(ping);
    stream.destroy();
    if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.close(code, reason.slice(0, 120));
  };
  const ping = setInterval(() => {
    if (!alive) return void ws.terminate();
    alive = false;
    ws.ping();
  }, PING_MS);
  ws.on('pong', () => (alive = true));

  if (first?.length) ws.send(first, { binary: true });
  stream.on('data', (chunk: Buffer) => {
    ws.send(chunk, { binary: true }, () => {
      if (stream.isPaused() && ws.bufferedAmount < HIGH_WATER / 2) stream.resume();
    });
    if (ws.bufferedAmount >= HIGH_WATER) stream.pause();
  });
  stream.on('end', () => end(1000, 'the console closed (the VM stopped)'));
  stream.on('close', () => end(1000, 'the console closed'));
  stream.on('error', (e) => end(1011, `console: ${e.message}`));

  ws.on('message', (data) => {
    const buf = asBuffer(data);
    if (!stream.write(buf)) {
      ws.pause();
      stream.once('drain', () => ws.resume());
    }
  });
  ws.on('close', () => end(1000, ''));
  ws.on('error', () => end(1011, 'websocket error'));
}

/**
 * The console routes, as a Fastify plugin over an application made by ./app.ts (it reads
 * `app.polyvisor`). Register it once: `await app.register(consoleProxy)`.
 */
export async function consoleProxy(app: FastifyInstance): Promise<void> {
  await app.register(websocket, { options: { maxPayload: MAX_CLIENT_MESSAGE } });
  app.decorateRequest('consoleSession', undefined);

  const open = async (kind: ConsoleKind, ws: ConsoleSocket, request: FastifyRequest) => {
    const ctx = request.server.polyvisor;
    const session = request.consoleSession!;
    ctx.audit.record({ user: session.principal.name, role: session.principal.role, method: 'GET', route: `/api/vms/:name/console/${kind}`, target: { name: session.vm }, status: 101 });
    try {
      if (kind === 'vnc') {
        bridge(ws, await connectUnix(join(ctx.estate.local.vmDir(session.vm), VNC_SOCKET)));
      } else {
        const { scrollback } = request.query as { scrollback?: string };
        const wanted = scrollback === undefined ? SCROLLBACK_DEFAULT : Math.max(0, Math.min(SCROLLBACK_MAX, Number(scrollback) || 0));
        const stream = await ctx.estate.console(session.vm);
        // the log is read after the socket is connected: a byte printed in between may show
        // twice, none is lost
        const local = ctx.store.getVm(session.vm).host === LOCAL_HOST;
        const back = local && wanted > 0 ? await tail(ctx.estate.serialLog(session.vm), wanted) : undefined;
        bridge(ws, stream, back);
      }
    } catch (e) {
      ws.close(1011, `console: ${(e as Error).message}`.slice(0, 120));
    }
  };

  for (const kind of ['vnc', 'serial'] as const) {
    app.route({
      method: 'GET',
      url: `/api/vms/:name/console/${kind}`,
      // the bearer check of ./app.ts does not apply: a browser's WebSocket carries the console token instead
      config: { access: undefined },
      preValidation: async (request) => {
        request.consoleSession = authorize(request, kind);
      },
      handler: async (_request, reply) => {
        // reached only by a plain HTTP GET (no Upgrade header)
        void reply.code(426).header('upgrade', 'websocket').send({ error: { code: 'ERR_USAGE', message: 'this is a WebSocket endpoint: open it with Upgrade: websocket' } });
      },
      wsHandler: (ws, request) => void open(kind, ws, request),
    });
  }
}
