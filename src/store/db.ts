/**
 * The store's database, as the store (./store.ts) uses it: prepared statements with `?`
 * parameters, scripts, and transactions, all synchronous. Two databases stand behind it: the
 * embedded SQLite file in the data folder (./sqlite.ts, the default) and a PostgreSQL server
 * named by a URL (./postgres.ts), for deployments that outgrow one machine. The store's SQL
 * keeps to what both run (./schema.ts); what differs between them is decided here and in the
 * two implementations, never in the store's methods.
 */
import { PolyvisorError } from '../errors.js';

export type SqlParam = string | number | bigint | null;

/** Rows come back as the columns' values by name (better-sqlite3's and `pg`'s shape); the store names their types. */
export interface Statement {
  get(...params: SqlParam[]): unknown;
  all(...params: SqlParam[]): unknown[];
  /** `changes`: the rows the statement inserted, updated or deleted */
  run(...params: SqlParam[]): { changes: number };
}

/**
 * deferred: locks are taken as statements need them;
 * immediate: the database's write lock first, so that a read-then-write (the next audit
 * sequence number, the last-admin check) cannot interleave with another writer's
 */
export type TransactionMode = 'deferred' | 'immediate';

export interface Db {
  readonly dialect: 'sqlite' | 'postgres';
  /** where the database is, for messages: its file, or its URL without the password */
  readonly location: string;
  prepare(sql: string): Statement;
  /** runs a script of statements without parameters */
  exec(sql: string): void;
  /** runs `fn` as one transaction (nested: a savepoint); a throw rolls it back */
  transaction<T>(fn: () => T, mode?: TransactionMode): T;
  hasTable(name: string): boolean;
  /** a migration's DDL as this database runs it (./schema.ts) */
  schemaSql(ddl: string): string;
  close(): void;
}

/** A primary key or unique constraint refused a row (SQLite's extended codes, PostgreSQL's SQLSTATE 23505). */
export function isUniqueViolation(e: unknown): boolean {
  const code = (e as { code?: unknown } | null)?.code;
  return code === 'SQLITE_CONSTRAINT_PRIMARYKEY' || code === 'SQLITE_CONSTRAINT_UNIQUE' || code === '23505';
}

/**
 * Parameters are checked the same way for both databases, so a value one of them would store
 * and the other refuse is refused by both: PostgreSQL's text cannot hold U+0000
 * (postgresql.org/docs/15/datatype-character.html), SQLite's can.
 */
export function checkParams(params: readonly SqlParam[], location: string): void {
  for (let i = 0; i < params.length; i++) {
    const p = params[i];
    if (typeof p === 'string' && p.includes('\0')) {
      throw new PolyvisorError('ERR_USAGE', `a value holds a NUL character, which the store does not keep (parameter ${i + 1})`, { file: location });
    }
  }
}

/**
 * `?` parameters numbered as PostgreSQL's `$1…$n`, outside string literals, quoted names and
 * comments (postgresql.org/docs/15/sql-syntax-lexical.html): a `?` inside `'…'` is text.
 */
export function positionalParams(sql: string): string {
  let out = '';
  let n = 0;
  for (let i = 0; i < sql.length; i++) {
    const c = sql[i]!;
    if (c === "'" || c === '"') {
      // a doubled quote inside is the quote itself: scanning to the next one and on covers it
      const end = sql.indexOf(c, i + 1);
      const stop = end < 0 ? sql.length : end + 1;
      out += sql.slice(i, stop);
      i = stop - 1;
    } else if (c === '-' && sql[i + 1] === '-') {
      const end = sql.indexOf('\n', i);
      const stop = end < 0 ? sql.length : end;
      out += sql.slice(i, stop);
      i = stop - 1;
    } else if (c === '/' && sql[i + 1] === '*') {
      const end = sql.indexOf('*/', i + 2);
      const stop = end < 0 ? sql.length : end + 2;
      out += sql.slice(i, stop);
      i = stop - 1;
    } else if (c === '?') {
      out += `$${++n}`;
    } else {
      out += c;
    }
  }
  return out;
}
