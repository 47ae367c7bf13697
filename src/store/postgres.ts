/**
 * The store on a PostgreSQL server (./db.ts for the interface), for deployments that outgrow
 * one machine: the data folder still holds the VMs' folders (disks, sockets); only the
 * database moves. Statements go through the synchronous bridge (./pg-sync.ts), with `?`
 * parameters numbered as `$n`; transactions are BEGIN … COMMIT on the bridge's one connection.
 */
import { checkParams, positionalParams, type Db, type SqlParam, type Statement, type TransactionMode } from './db.js';
import { PgSync, type PgParam, type PgSyncOptions } from './pg-sync.js';

/**
 * The advisory lock an immediate transaction takes first (any fixed 64-bit key; it reads
 * "polyv" in ASCII). SQLite's BEGIN IMMEDIATE makes writers that read before writing take
 * turns; PostgreSQL's default READ COMMITTED does not, so two writers could both read the
 * same MAX(seq). Advisory locks are per database (postgresql.org/docs/15/explicit-locking.html
 * §13.3.5) and end with the transaction; waiting for one is bounded by lock_timeout.
 */
const WRITE_LOCK = 'SELECT pg_advisory_xact_lock(482571105398)';

export class PostgresDb implements Db {
  readonly dialect = 'postgres';
  readonly location: string;
  readonly #pg: PgSync;
  #depth = 0;

  constructor(url: string, opts: PgSyncOptions = {}) {
    this.#pg = PgSync.connect(url, opts);
    this.location = this.#pg.url;
  }

  prepare(sql: string): Statement {
    const text = positionalParams(sql);
    const run = (params: SqlParam[]) => {
      checkParams(params, this.location);
      return this.#pg.query(text, params.map((p): PgParam => (typeof p === 'bigint' ? p.toString() : p)));
    };
    return {
      get: (...params) => run(params).rows[0],
      all: (...params) => run(params).rows,
      run: (...params) => ({ changes: run(params).rowCount }),
    };
  }

  exec(sql: string): void {
    this.#pg.exec(sql);
  }

  transaction<T>(fn: () => T, mode: TransactionMode = 'deferred'): T {
    if (this.#depth > 0) return this.#savepoint(fn);
    this.#pg.begin();
    this.#depth = 1;
    try {
      if (mode === 'immediate') this.#pg.query(WRITE_LOCK);
      const r = fn();
      // as better-sqlite3: the transaction must end before the function's promise would
      if (r instanceof Promise) throw new TypeError('a transaction function cannot return a promise');
      this.#pg.commit();
      return r;
    } catch (e) {
      try {
        this.#pg.rollback();
      } catch {
        // the connection is gone: the server rolled the transaction back itself
      }
      throw e;
    } finally {
      this.#depth = 0;
    }
  }

  #savepoint<T>(fn: () => T): T {
    const name = `pv_${this.#depth}`;
    this.#pg.exec(`SAVEPOINT ${name}`);
    this.#depth++;
    try {
      const r = fn();
      this.#pg.exec(`RELEASE SAVEPOINT ${name}`);
      return r;
    } catch (e) {
      try {
        this.#pg.exec(`ROLLBACK TO SAVEPOINT ${name}`);
        this.#pg.exec(`RELEASE SAVEPOINT ${name}`);
      } catch {
        // the outer transaction fails in turn
      }
      throw e;
    } finally {
      this.#depth--;
    }
  }

  hasTable(name: string): boolean {
    return this.#pg.query('SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1', [name]).rows.length > 0;
  }

  /**
   * SQLite compares TEXT byte by byte (the BINARY collation, sqlite.org/datatype3.html §7);
   * PostgreSQL by the database's locale unless a column says otherwise, which would order
   * names, keyset pages (`name > ?`) and tags differently. "C" compares bytes too
   * (postgresql.org/docs/15/collation.html), so both databases list in one order.
   */
  schemaSql(ddl: string): string {
    return ddl.replace(/\bTEXT\b/g, 'TEXT COLLATE "C"');
  }

  close(): void {
    this.#pg.close();
  }
}
