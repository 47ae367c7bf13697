/**
 * A QMP (QEMU Machine Protocol) client over a Unix socket.
 *
 * Protocol, per QEMU's docs/interop/qmp-spec.rst: the server speaks first with a greeting
 * `{"QMP": {"version": ..., "capabilities": [...]}}`; the client must send
 * `qmp_capabilities` before any other command ("capabilities negotiation" mode); then each
 * command `{"execute": name, "arguments": {...}, "id": X}` gets exactly one
 * `{"return": ..., "id": X}` or `{"error": {"class", "desc"}, "id": X}`, and the server may send
 * asynchronous `{"event": NAME, "data": ..., "timestamp": {...}}` messages at any time. Every
 * message is one JSON object ended by CRLF.
 *
 * The peer is treated as untrusted: a line longer than `maxLineBytes` or a line that is not a
 * JSON object closes the connection with ERR_IO instead of buffering or crashing.
 */
import { EventEmitter } from 'node:events';
import { createConnection, type Socket } from 'node:net';
import { PolyvisorError } from '../../errors.js';

/** The events the engine acts on (QEMU's qapi/run-state.json); others are emitted too. */
export const QMP_EVENTS = ['SHUTDOWN', 'RESET', 'GUEST_PANICKED', 'STOP', 'RESUME', 'POWERDOWN'] as const;

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package?: string };
  capabilities: string[];
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpOptions {
  /** for the greeting and the negotiation; default 5 s */
  connectTimeoutMs?: number;
  /**
   * Called once, right after `qmp_capabilities` is sent and before its answer: commands sent
   * from here go out behind it and QEMU answers them together once it takes commands (a VM's
   * `cont`, without the round trip of waiting for the negotiation first).
   */
  onNegotiating?: (client: QmpClient) => void;
  /** default per-command timeout; default 10 s */
  commandTimeoutMs?: number;
  /** the longest message accepted; default 1 MiB */
  maxLineBytes?: number;
}

interface Pending {
  command: string;
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/**
 * Events: 'event' (QmpEvent) for every asynchronous event, plus one named after the event
 * (`'SHUTDOWN'`, data, event); 'close' (error | undefined) once, when the connection ends.
 */
export class QmpClient extends EventEmitter {
  readonly path: string;
  #socket: Socket;
  #greeting: QmpGreeting | undefined;
  #chunks: Buffer[] = [];
  #buffered = 0;
  #maxLine: number;
  #commandTimeout: number;
  #nextId = 1;
  #pending = new Map<string, Pending>();
  #closed = false;
  #closeError: Error | undefined;
  #onGreeting: ((g: QmpGreeting) => void) | undefined;

  private constructor(path: string, socket: Socket, opts: QmpOptions) {
    super();
    this.path = path;
    this.#socket = socket;
    this.#maxLine = opts.maxLineBytes ?? 1 << 20;
    this.#commandTimeout = opts.commandTimeoutMs ?? 10_000;
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (e) => this.#fail(new PolyvisorError('ERR_IO', `QMP socket: ${e.message}`, { file: path, cause: e })));
    socket.on('close', () => this.#fail(undefined));
  }

  /** Connects, reads the greeting and leaves capabilities negotiation mode. */
  static async connect(path: string, opts: QmpOptions = {}): Promise<QmpClient> {
    const timeout = opts.connectTimeoutMs ?? 5000;
    const socket = createConnection({ path });
    const client = new QmpClient(path, socket, opts);
    let timer: NodeJS.Timeout | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        timer = setTimeout(() => reject(new PolyvisorError('ERR_IO', `QMP: no greeting within ${timeout} ms`, { file: path })), timeout);
        client.#onGreeting = () => resolve();
        client.once('close', (e?: Error) => reject(e ?? new PolyvisorError('ERR_IO', 'QMP: connection closed before the greeting', { file: path })));
      });
      const negotiated = client.execute('qmp_capabilities', undefined, { timeoutMs: timeout });
      // awaited below; handled now, so that a hook that throws leaves no rejection unhandled
      negotiated.catch(() => undefined);
      opts.onNegotiating?.(client);
      await negotiated;
      return client;
    } catch (e) {
      client.close();
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  get greeting(): QmpGreeting {
    return this.#greeting!;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Runs one command. Resolves with its `return` value; a QMP error response rejects with
   * ERR_IO naming the command and QMP's error class and description.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<T> {
    if (this.#closed) {
      return Promise.reject(this.#closeError ?? new PolyvisorError('ERR_IO', `QMP ${command}: connection is closed`, { file: this.path }));
    }
    const id = `pv-${this.#nextId++}`;
    const timeoutMs = opts.timeoutMs ?? this.#commandTimeout;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        // the id is forgotten, so a late answer is ignored rather than matched to another command
        this.#pending.delete(id);
        reject(new PolyvisorError('ERR_IO', `QMP ${command}: no answer within ${timeoutMs} ms`, { file: this.path }));
      }, timeoutMs);
      this.#pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      const msg: Record<string, unknown> = { execute: command, id };
      if (args !== undefined) msg.arguments = args;
      this.#socket.write(JSON.stringify(msg) + '\r\n');
    });
  }

  /** Closes the connection; pending commands reject with ERR_ABORTED. */
  close(): void {
    if (this.#closed) return;
    this.#fail(new PolyvisorError('ERR_ABORTED', 'QMP connection closed by the client', { file: this.path }), true);
  }

  #onData(chunk: Buffer): void {
    if (this.#closed) return;
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl < 0) break;
      const part = chunk.subarray(start, nl);
      if (this.#buffered + part.length > this.#maxLine) return this.#tooLong();
      const line = this.#chunks.length ? Buffer.concat([...this.#chunks, part]) : part;
      this.#chunks = [];
      this.#buffered = 0;
      start = nl + 1;
      this.#onLine(line.toString('utf8').trim());
      if (this.#closed) return;
    }
    const rest = chunk.subarray(start);
    if (rest.length) {
      // the bound: whatever the peer sends, at most maxLineBytes wait for their newline
      if (this.#buffered + rest.length > this.#maxLine) return this.#tooLong();
      this.#chunks.push(rest);
      this.#buffered += rest.length;
    }
  }

  #tooLong(): void {
    this.#fail(new PolyvisorError('ERR_IO', `QMP: peer sent a message longer than ${this.#maxLine} bytes`, { file: this.path }));
  }

  #onLine(line: string): void {
    if (line === '') return;
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch {
      return this.#fail(new PolyvisorError('ERR_IO', `QMP: peer sent a line that is not JSON: ${JSON.stringify(line.slice(0, 80))}`, { file: this.path }));
    }
    if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) {
      return this.#fail(new PolyvisorError('ERR_IO', 'QMP: peer sent a message that is not a JSON object', { file: this.path }));
    }
    const m = msg as Record<string, unknown>;
    if (this.#greeting === undefined) {
      const g = m.QMP as QmpGreeting | undefined;
      if (!g || typeof g !== 'object') return this.#fail(new PolyvisorError('ERR_IO', 'QMP: the first message is not a QMP greeting', { file: this.path }));
      this.#greeting = g;
      this.#onGreeting?.(g);
      return;
    }
    if (typeof m.event === 'string') {
      const ev = m as unknown as QmpEvent;
      this.emit('event', ev);
      this.emit(ev.event, ev.data ?? {}, ev);
      return;
    }
    const id = typeof m.id === 'string' ? m.id : undefined;
    const p = id === undefined ? undefined : this.#pending.get(id);
    if (!p) return; // an answer to a timed-out command, or to nothing we asked: ignored
    this.#pending.delete(id!);
    clearTimeout(p.timer);
    if ('error' in m) {
      const err = (m.error ?? {}) as { class?: unknown; desc?: unknown };
      p.reject(new PolyvisorError('ERR_IO', `QMP ${p.command}: ${String(err.class ?? 'GenericError')}: ${String(err.desc ?? '')}`, { file: this.path }));
    } else {
      p.resolve(m.return);
    }
  }

  #fail(err: Error | undefined, byClient = false): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeError = err;
    this.#chunks = [];
    this.#buffered = 0;
    const reason = err ?? new PolyvisorError('ERR_IO', 'QMP: connection closed by QEMU', { file: this.path });
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(reason);
    }
    this.#pending.clear();
    this.#socket.destroy();
    this.emit('close', byClient ? undefined : err);
  }
}
