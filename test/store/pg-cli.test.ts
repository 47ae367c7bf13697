/**
 * The CLI on PostgreSQL: `--database URL` (or $POLYVISOR_DATABASE) moves the store's database,
 * and every command sees the same hosts; the SQLite file of the data folder is not used.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tempDir } from '../helpers.js';
import { startPostgres } from './pg-server.js';

const CLI = fileURLToPath(new URL('../../../bin/polyvisor', import.meta.url));

function cli(args: string[], env: Record<string, string> = {}): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(CLI, [...args], { encoding: 'utf8', env: { ...process.env, ...env } });
}

test('polyvisor --database postgresql://... keeps hosts and VMs on PostgreSQL for every command', async (t) => {
  const pg = startPostgres();
  t.after(() => pg.destroy());
  const dir = await tempDir(t);
  const data = join(dir, 'data');
  const { name, url } = pg.createDatabase();

  const add = cli(['--data', data, '--database', url, 'host', 'add', 'xen+ssh://root@192.0.2.7', '--name', 'xen7', '--no-check']);
  assert.equal(add.status, 0, add.stderr);
  // the same database through the environment variable
  const ls = cli(['--data', data, 'host', 'ls', '--json'], { POLYVISOR_DATABASE: url });
  assert.equal(ls.status, 0, ls.stderr);
  assert.deepEqual((JSON.parse(ls.stdout) as { name: string }[]).map((h) => h.name).filter((n) => n !== 'local'), ['xen7']);
  assert.match(pg.psql(name, 'SELECT name FROM hosts'), /xen7/);
  assert.equal(existsSync(join(data, 'polyvisor.db')), false, 'no SQLite store was made');
  // without the URL: the data folder's own SQLite store, which has no such host
  const local = cli(['--data', data, 'host', 'ls', '--json']);
  assert.equal(local.status, 0, local.stderr);
  assert.deepEqual((JSON.parse(local.stdout) as { name: string }[]).map((h) => h.name).filter((n) => n !== 'local'), []);

  const bad = cli(['--data', data, '--database', 'mysql://x/y', 'ps']);
  assert.equal(bad.status, 2, 'not a PostgreSQL URL: a usage error');
  const dead = cli(['--data', data, '--database', 'postgresql://pv@127.0.0.1:1/nope', 'ps']);
  assert.equal(dead.status, 1);
  assert.match(dead.stderr, /ERR_IO/);
});
