/**
 * The store's default database: one SQLite file in the data folder, through better-sqlite3
 * (./db.ts for the interface). Every command of the CLI and the server open the same file, so
 * they all see the same VMs.
 */
import type Database from 'better-sqlite3';
import { PolyvisorError } from '../errors.js';
import { nodeModule } from '../util/builtins.js';
import { checkParams, type Db, type SqlParam, type Statement, type TransactionMode } from './db.js';

export class SqliteDb implements Db {
  readonly dialect = 'sqlite';
  readonly location: string;
  readonly #db: Database.Database;

  constructor(file: string) {
    this.location = file;
    try {
      // loaded when a store opens, not with this module: `polyvisor run` loads the store's
      // modules before it starts QEMU and opens the store while QEMU starts (../hosts/local.ts)
      const open = nodeModule().createRequire(import.meta.url)('better-sqlite3') as typeof Database;
      this.#db = new open(file);
      // WAL: readers (ps) never wait for a writer; busy_timeout: two commands at once wait their turn
      this.#db.pragma('journal_mode = WAL');
      // NORMAL: in WAL mode a commit is not synced to disk until a checkpoint; the store cannot
      // be corrupted that way (sqlite.org/pragma.html#pragma_synchronous), only the latest
      // state change lost to a power cut, which the next command's reconciliation corrects.
      // It keeps three fsyncs out of `polyvisor run`'s path to the guest's first output.
      this.#db.pragma('synchronous = NORMAL');
      this.#db.pragma('busy_timeout = 5000');
      this.#db.pragma('foreign_keys = ON');
    } catch (e) {
      throw new PolyvisorError('ERR_IO', `cannot open the store: ${(e as Error).message}`, { file, cause: e });
    }
  }

  prepare(sql: string): Statement {
    const st = this.#db.prepare(sql);
    const where = this.location;
    return {
      get: (...params: SqlParam[]) => (checkParams(params, where), st.get(...params)),
      all: (...params: SqlParam[]) => (checkParams(params, where), st.all(...params)),
      run: (...params: SqlParam[]) => (checkParams(params, where), { changes: st.run(...params).changes }),
    };
  }

  exec(sql: string): void {
    this.#db.exec(sql);
  }

  transaction<T>(fn: () => T, mode: TransactionMode = 'deferred'): T {
    // BEGIN IMMEDIATE takes the write lock at once (sqlite.org/lang_transaction.html); nested,
    // better-sqlite3 makes it a savepoint
    return this.#db.transaction(fn)[mode]();
  }

  hasTable(name: string): boolean {
    return this.#db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(name) !== undefined;
  }

  schemaSql(ddl: string): string {
    return ddl;
  }

  close(): void {
    this.#db.close();
  }
}
