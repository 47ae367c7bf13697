/**
 * A synchronous PostgreSQL connection: the store keeps one synchronous API for both of its
 * databases (./db.ts), as better-sqlite3 is synchronous, and a control plane's queries are
 * short. `pg` is asynchronous, so it runs in a worker thread (./pg-worker.ts); the calling
 * thread posts each request on a MessagePort and sleeps in Atomics.wait on a shared counter
 * until the worker has posted the answer and bumped the counter, then takes the answer off the
 * port with receiveMessageOnPort. The event loop of the calling thread is blocked for the
 * query's round trip, exactly as it is for an SQLite query.
 *
 * Nothing waits forever: the worker bounds the connection, each statement and each lock; the
 * calling thread gives up a little after those bounds in any case (a worker that stopped
 * answering), and every such failure is an ERR_IO naming the database by its URL without its
 * password.
 */
import type { MessagePort, Worker } from 'node:worker_threads';
import { workerThreads as threads } from '../util/builtins.js';
import { PolyvisorError } from '../errors.js';

export type PgParam = string | number | bigint | null;

export type PgRequest = { id: number; op: 'query'; sql: string; params?: PgParam[] } | { id: number; op: 'close' };

export type PgAnswer =
  | { id: number; ok: true; rows: Record<string, unknown>[]; rowCount: number }
  | { id: number; ok: false; error: { message: string; code?: string; detail?: string; connecting: boolean } };

export interface PgWorkerData {
  url: string;
  port: MessagePort;
  signal: SharedArrayBuffer;
  connectTimeoutMs: number;
  queryTimeoutMs: number;
  lockTimeoutMs: number;
}

export interface PgSyncOptions {
  /** establishing the connection (default 10 s) */
  connectTimeoutMs?: number;
  /** one statement, on the server and for its answer (default 30 s) */
  queryTimeoutMs?: number;
  /** waiting for a row or table lock (default 5 s, the SQLite store's busy_timeout) */
  lockTimeoutMs?: number;
}

/** Whether a database location is a PostgreSQL connection URL (libpq's two URI schemes). */
export function isPostgresUrl(location: string): boolean {
  return /^postgres(?:ql)?:\/\//i.test(location);
}

/**
 * The URL as messages show it: the user stays (it says which role), the password goes, from the
 * user-info part and from a `password` query parameter alike (libpq accepts both,
 * postgresql.org/docs/15/libpq-connect.html#LIBPQ-CONNSTRING).
 */
export function redactUrl(url: string): string {
  const m = /^([a-z]+:\/\/)([^/?#]*)(.*)$/is.exec(url);
  if (!m) return url.replace(/:[^:@/]*@/, '@');
  let authority = m[2]!;
  const at = authority.lastIndexOf('@');
  if (at >= 0) {
    const user = authority.slice(0, at).split(':')[0];
    authority = `${user}@${authority.slice(at + 1)}`;
  }
  const rest = m[3]!.replace(/([?&])password=[^&#]*&?/gi, '$1').replace(/[?&]$/, '');
  return m[1]! + authority + rest;
}

/** Answers the calling thread waits for beyond the worker's own bounds (the worker's start, a stuck connection). */
const MARGIN_MS = 5000;

/** The SQLSTATE of an error a query raised (23505: unique_violation, …), to decide on it like SQLite's codes. */
export class PgQueryError extends Error {
  readonly code: string;
  readonly detail?: string;
  constructor(message: string, code: string, detail?: string) {
    super(message);
    this.name = 'PgQueryError';
    this.code = code;
    this.detail = detail;
  }
}

export class PgSync {
  /** the database's URL without its password */
  readonly url: string;
  readonly #worker: Worker;
  readonly #port: MessagePort;
  readonly #counter: Int32Array;
  readonly #opts: Required<PgSyncOptions>;
  #next = 1;
  #broken: string | undefined;
  #closed = false;

  /** Starts the worker and connects (a first round trip), so that a wrong URL fails here. */
  static connect(url: string, opts: PgSyncOptions = {}): PgSync {
    const c = new PgSync(url, opts);
    try {
      c.query('SELECT 1');
    } catch (e) {
      c.close();
      throw e;
    }
    return c;
  }

  private constructor(url: string, opts: PgSyncOptions) {
    this.url = redactUrl(url);
    this.#opts = { connectTimeoutMs: opts.connectTimeoutMs ?? 10_000, queryTimeoutMs: opts.queryTimeoutMs ?? 30_000, lockTimeoutMs: opts.lockTimeoutMs ?? 5000 };
    const signal = new SharedArrayBuffer(4);
    this.#counter = new Int32Array(signal);
    const { MessageChannel, Worker } = threads();
    const { port1, port2 } = new MessageChannel();
    this.#port = port1;
    const workerData: PgWorkerData = { url, port: port2, signal, ...this.#opts };
    // '../store/': this module may run from the CLI's bundle in dist/src/cli/, whose URL then
    // stands in for this file's (scripts/bundle.mjs); from either the worker is dist/src/store/
    this.#worker = new Worker(new URL('../store/pg-worker.js', import.meta.url), { workerData, transferList: [port2] });
    // an open store never keeps a finished command alive; the worker ends with the process
    this.#worker.unref();
    this.#worker.on('error', (e) => (this.#broken ??= `its worker failed: ${e.message}`));
  }

  /** Runs one statement with `$1…$n` parameters; without `params`, several statements (the simple query protocol). */
  query(sql: string, params?: PgParam[]): { rows: Record<string, unknown>[]; rowCount: number } {
    const a = this.#call({ id: this.#next++, op: 'query', sql, params }, this.#opts.connectTimeoutMs + this.#opts.queryTimeoutMs + MARGIN_MS);
    if (!a.ok) {
      const { message, code, detail, connecting } = a.error;
      // SQL errors keep their SQLSTATE for the caller; failing to connect (no server, no such
      // database, a refused login), a lost connection or a timeout is I/O (class 08
      // connection exception, 57014 query_canceled by statement_timeout, 57P operator
      // intervention, 55P03 lock_not_available by lock_timeout)
      if (code && !connecting && !/^(08|57|55P03)/.test(code)) throw new PgQueryError(`${this.url}: ${message}`, code, detail);
      const what = connecting ? 'cannot connect to PostgreSQL at' : 'PostgreSQL at';
      throw new PolyvisorError('ERR_IO', `${what} ${this.url}: ${message}${code ? ` (SQLSTATE ${code})` : ''}`);
    }
    return { rows: a.rows, rowCount: a.rowCount };
  }

  exec(sql: string): void {
    this.query(sql);
  }

  begin(): void {
    this.exec('BEGIN');
  }

  commit(): void {
    this.exec('COMMIT');
  }

  rollback(): void {
    this.exec('ROLLBACK');
  }

  /** Ends the connection and the worker. */
  close(): void {
    if (this.#closed) return;
    if (!this.#broken) {
      try {
        this.#call({ id: this.#next++, op: 'close' }, this.#opts.queryTimeoutMs);
      } catch {
        // closing a connection that is gone is no error
      }
    }
    this.#closed = true;
    this.#port.close();
    void this.#worker.terminate();
  }

  #call(req: PgRequest, timeoutMs: number): PgAnswer {
    if (this.#closed) throw new PolyvisorError('ERR_IO', `PostgreSQL at ${this.url}: the connection is closed`);
    if (this.#broken) throw new PolyvisorError('ERR_IO', `PostgreSQL at ${this.url}: the connection was given up (${this.#broken})`);
    const seen = Atomics.load(this.#counter, 0);
    this.#port.postMessage(req);
    const deadline = Date.now() + timeoutMs;
    let last = seen;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      Atomics.wait(this.#counter, 0, last, left);
      const now = Atomics.load(this.#counter, 0);
      if (now === last) continue;
      last = now;
      // answers to requests given up on earlier may come first: drop them
      const { receiveMessageOnPort } = threads();
      for (let m = receiveMessageOnPort(this.#port); m; m = receiveMessageOnPort(this.#port)) {
        const a = m.message as PgAnswer;
        if (a.id === req.id) return a;
      }
    }
    // the worker did not answer within its own bounds: it is stuck or gone, and a later
    // answer could no longer be matched to its request, so this connection is given up
    this.#broken = `no answer within ${timeoutMs} ms`;
    void this.#worker.terminate();
    throw new PolyvisorError('ERR_IO', `PostgreSQL at ${this.url}: no answer within ${timeoutMs} ms`);
  }
}
