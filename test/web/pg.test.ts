/**
 * The browser end-to-end flow (./console-flow.test.ts) again with the server's store on
 * PostgreSQL (a throw-away server, ../store/pg-server.ts): the same test, unchanged.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startConsoleServer } from './helpers.js';

// read by startConsoleServer() when each test runs
process.env.POLYVISOR_TEST_DATABASE = 'pg';
await import('./console-flow.test.js');

test('the console server of this file keeps its store on PostgreSQL', async (t) => {
  const s = await startConsoleServer(t);
  assert.equal(s.app.polyvisor.store.dialect, 'postgres');
});
