/**
 * The thread behind ./pg-sync.ts: it owns the one `pg` client of a PostgreSQL store and runs
 * the requests the main thread posts, one after the other, while the main thread sleeps in
 * Atomics.wait. Each answer is posted back on the request's port and then announced by bumping
 * the shared counter (./pg-sync.ts reads the answer with receiveMessageOnPort once woken).
 *
 * The client connects on the first request and again after it lost its connection (a server
 * restart, a network cut), so the store of a long-running `polyvisor serve` outlives a
 * PostgreSQL restart (never in the middle of a transaction: see `lostTransaction`). Every wait
 * is bounded: the connection (connectionTimeoutMillis), each statement on the server
 * (statement_timeout), each answer on the client (query_timeout), each lock (lock_timeout, as
 * SQLite's busy_timeout).
 */
import { workerData, type MessagePort } from 'node:worker_threads';
import type pg from 'pg';
import type { PgAnswer, PgRequest, PgWorkerData } from './pg-sync.js';

const data = workerData as PgWorkerData;
const port: MessagePort = data.port;
const counter = new Int32Array(data.signal);

// PostgreSQL's type OIDs (src/include/catalog/pg_type.dat): int8 is what COUNT(*), BIGINT
// columns and their arithmetic yield; numeric what SUM(BIGINT) yields. `pg` hands both over as
// text (they may exceed a double); the store's values stay far below 2^53, as SQLite's do,
// so they become numbers, the type better-sqlite3 gives; a larger one stays exact as a BigInt.
const INT8 = 20;
const NUMERIC = 1700;

function int8(text: string): number | bigint {
  const n = Number(text);
  return Number.isSafeInteger(n) ? n : BigInt(text);
}

// loaded on the first request, not at the worker's start: a missing or broken `pg` becomes that
// request's answer (the calling thread is asleep and cannot see the worker's 'error' event)
let driver: typeof pg | undefined;
let client: pg.Client | undefined;
/** the client was inside a transaction after the last request (ReadyForQuery's status T or E) */
let inTransaction = false;
/**
 * the connection broke inside a transaction: the server rolled it back, so the statements the
 * calling thread still sends for it must not run on a new connection as if nothing happened
 * (each would commit on its own); they fail until its ROLLBACK arrives
 */
let lostTransaction = false;

function forget(c: pg.Client): void {
  if (client !== c) return;
  client = undefined;
  if (inTransaction) lostTransaction = true;
  inTransaction = false;
  c.end().catch(() => undefined);
}

async function connected(): Promise<pg.Client> {
  if (client) return client;
  driver ??= (await import('pg')).default;
  const builtin = driver.types.getTypeParser as (oid: number, format?: 'text' | 'binary') => unknown;
  const types = {
    getTypeParser(oid: number, format?: 'text' | 'binary') {
      if (oid === INT8) return int8;
      if (oid === NUMERIC) return (text: string) => Number(text);
      return builtin(oid, format);
    },
  };
  const c = new driver.Client({
    connectionString: data.url,
    connectionTimeoutMillis: data.connectTimeoutMs,
    query_timeout: data.queryTimeoutMs,
    statement_timeout: data.queryTimeoutMs,
    lock_timeout: data.lockTimeoutMs,
    application_name: 'polyvisor',
    keepAlive: true,
    types: types as pg.ClientConfig['types'],
  });
  // a connection that breaks between requests: forget it, the next request connects again
  c.on('error', () => forget(c));
  try {
    await c.connect();
  } catch (e) {
    await c.end().catch(() => undefined);
    throw e;
  }
  client = c;
  return c;
}

/**
 * Errors after which the connection is not used again: no SQLSTATE (the socket failed), class
 * 08 (connection exception), 57P (operator intervention), and 0A000 "cached plan must not
 * change result type": a newer Polyvisor migrated the schema under this connection's prepared
 * statements, which a new connection prepares afresh.
 */
function connectionLost(e: unknown): boolean {
  const code = (e as { code?: unknown }).code;
  return typeof code !== 'string' || code.startsWith('08') || code.startsWith('57P') || code === '0A000';
}

/**
 * Statements with parameters are prepared once per connection under a name (the extended
 * query protocol's named statements, postgresql.org/docs/15/protocol-flow.html §55.2.3): the
 * store runs the same few dozen texts over and over. Bounded, as the store's own cache is; a
 * text past the bound runs unnamed (parsed each time).
 */
const names = new Map<string, string>();

function statementName(text: string): string | undefined {
  let name = names.get(text);
  if (name === undefined && names.size < 512) names.set(text, (name = `pv${names.size}`));
  return name;
}

async function run(req: PgRequest): Promise<PgAnswer> {
  if (req.op === 'close') {
    const c = client;
    client = undefined;
    if (c) await c.end().catch(() => undefined);
    return { id: req.id, ok: true, rows: [], rowCount: 0 };
  }
  if (lostTransaction) {
    if (/^\s*ROLLBACK\s*$/i.test(req.sql)) {
      lostTransaction = false;
      return { id: req.id, ok: true, rows: [], rowCount: 0 };
    }
    return answerOf(req.id, Object.assign(new Error('the connection was lost inside a transaction, which the server rolled back'), { code: '08006' }));
  }
  let c: pg.Client;
  try {
    c = await connected();
  } catch (e) {
    return answerOf(req.id, e, true);
  }
  try {
    // without values `pg` uses the simple query protocol, which runs several statements (a migration)
    const r = req.params === undefined ? await c.query(req.sql) : await c.query({ text: req.sql, values: req.params, name: statementName(req.sql) });
    const last = Array.isArray(r) ? r[r.length - 1] : r;
    return { id: req.id, ok: true, rows: last?.rows ?? [], rowCount: last?.rowCount ?? 0 };
  } catch (e) {
    if (connectionLost(e)) forget(c);
    throw e;
  } finally {
    if (client === c) inTransaction = c.getTransactionStatus() !== 'I';
  }
}

function answerOf(id: number, e: unknown, connecting = false): PgAnswer {
  const err = e as { message?: unknown; code?: unknown; detail?: unknown };
  return {
    id,
    ok: false,
    error: {
      connecting,
      message: typeof err.message === 'string' && err.message ? err.message : String(e),
      code: typeof err.code === 'string' ? err.code : undefined,
      detail: typeof err.detail === 'string' ? err.detail : undefined,
    },
  };
}

// one request at a time, in order: the main thread waits for each answer, but a request it gave
// up on (its own deadline passed) may still be running when the next one arrives
let queue: Promise<void> = Promise.resolve();

port.on('message', (req: PgRequest) => {
  queue = queue.then(async () => {
    let answer: PgAnswer;
    try {
      answer = await run(req);
    } catch (e) {
      answer = answerOf(req.id, e);
    }
    try {
      port.postMessage(answer);
    } catch (e) {
      // a row the structured clone cannot carry: still an answer, never a silent hang
      port.postMessage(answerOf(req.id, e));
    }
    Atomics.add(counter, 0, 1);
    Atomics.notify(counter, 0);
  });
});
