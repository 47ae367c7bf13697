/**
 * A throw-away PostgreSQL server for tests: its own cluster in a temporary folder (initdb),
 * reached only through a Unix socket in that folder (no TCP port, so test files running at
 * once never collide), stopped and removed when the test file ends. Debian's `postgresql`
 * package provides the programs; a missing one fails the test file, it does not skip it.
 *
 * initdb and the server refuse to run as root: as root they run as the `postgres` user the
 * package creates, on a folder handed to it.
 *
 * The cluster's collation is ICU's linguistic "en", not "C": the store must list names in the
 * same (byte) order as SQLite whatever the database's locale (../../src/store/postgres.ts).
 */
import { execFileSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface PgServer {
  /** the folder of the cluster, its log and its socket */
  dir: string;
  port: number;
  /** a new, empty database and its URL (a password in it, when given, is ignored by the trust login) */
  createDatabase(opts?: { password?: string }): { name: string; url: string };
  url(database: string, opts?: { password?: string }): string;
  /** runs SQL through psql (the oracle) and returns its unaligned output */
  psql(database: string, sql: string): string;
  /** the database as pg_dump writes it */
  dump(database: string): Buffer;
  /** stops at once (as a crash would: `pg_ctl stop -m immediate`) */
  stop(): void;
  start(): void;
  /** stops and removes the cluster */
  destroy(): void;
}

/** The programs of the newest PostgreSQL Debian installs (/usr/lib/postgresql/<major>/bin). */
export function postgresBin(): string {
  const root = '/usr/lib/postgresql';
  const majors = existsSync(root) ? readdirSync(root).filter((v) => /^\d+$/.test(v) && existsSync(join(root, v, 'bin', 'initdb'))) : [];
  majors.sort((a, b) => Number(b) - Number(a));
  if (!majors.length) throw new Error(`PostgreSQL is not installed (no ${root}/<major>/bin/initdb): install the Debian package postgresql`);
  return join(root, majors[0]!, 'bin');
}

const PORT = 5432;
let databases = 0;

export function startPostgres(): PgServer {
  const bin = postgresBin();
  const dir = mkdtempSync(join(tmpdir(), 'pv-pg-'));
  const root = process.getuid?.() === 0;
  const asOwner = (program: string, args: string[]) => {
    const [file, argv] = root ? ['runuser', ['-u', 'postgres', '--', join(bin, program), ...args]] : [join(bin, program), args];
    return execFileSync(file, argv, { stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
  };
  if (root) {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
    chownSync(dir, uid, gid);
  }
  const data = join(dir, 'db');
  // -N: no fsync of a cluster that lives for one test file
  asOwner('initdb', ['-D', data, '-A', 'trust', '-U', 'pv', '-N', '-E', 'UTF8', '--locale-provider=icu', '--icu-locale=en', '--locale=C.UTF-8']);
  const server = ['-D', data, '-l', join(dir, 'log')];
  let running = false;
  const start = () => {
    asOwner('pg_ctl', [...server, '-w', '-o', `-k ${dir} -p ${PORT} -c listen_addresses='' -c fsync=off`, 'start']);
    running = true;
  };
  const stop = () => {
    if (!running) return;
    running = false;
    asOwner('pg_ctl', [...server, '-w', '-m', 'immediate', 'stop']);
  };
  // a test process that ends without destroy() (one server shared by a file's tests) still
  // leaves no server and no folder behind
  const atExit = () => {
    try {
      stop();
    } catch {
      // already gone
    }
    rmSync(dir, { recursive: true, force: true });
  };
  process.on('exit', atExit);
  start();
  const url = (database: string, opts: { password?: string } = {}) =>
    `postgresql://pv${opts.password ? `:${encodeURIComponent(opts.password)}` : ''}@/${database}?host=${encodeURIComponent(dir)}&port=${PORT}`;
  const psqlArgs = (database: string) => ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', dir, '-p', String(PORT), '-U', 'pv', '-d', database];
  const psql = (database: string, sql: string) => execFileSync(join(bin, 'psql'), [...psqlArgs(database), '-c', sql], { encoding: 'utf8', timeout: 60_000 });
  return {
    dir,
    port: PORT,
    url,
    psql,
    createDatabase(opts = {}) {
      const name = `pv_${process.pid}_${++databases}`;
      psql('postgres', `CREATE DATABASE ${name}`);
      return { name, url: url(name, opts) };
    },
    dump: (database) => execFileSync(join(bin, 'pg_dump'), ['-h', dir, '-p', String(PORT), '-U', 'pv', '-d', database], { timeout: 60_000, maxBuffer: 256 << 20 }),
    stop,
    start,
    destroy() {
      process.off('exit', atExit);
      atExit();
    },
  };
}
