/**
 * The REST API suite (./api.test.ts) again, with every server's store on PostgreSQL: a
 * throw-away server for this file (../store/pg-server.ts), a fresh database per test server.
 * The same tests, unchanged, pass on both databases.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './helpers.js';

// read by startServer() (./helpers.ts) when each test runs; set before the suite is loaded all the same
process.env.POLYVISOR_TEST_DATABASE = 'pg';
await import('./api.test.js');

test('the servers of this file keep their store on PostgreSQL', async (t) => {
  const s = await startServer(t);
  assert.equal(s.app.polyvisor.store.dialect, 'postgres');
  assert.match(s.app.polyvisor.store.file, /^postgresql:\/\//);
  assert.equal((await s.call('GET', '/api/me')).body.name, 'admin');
});
