/**
 * `polyvisor serve`: listens on loopback, prints the first admin's token once on a line of
 * its own, serves the same store as the CLI, and stops on SIGTERM. A second start on the same
 * data folder prints no token.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseListen } from '../../src/cli/serve.js';
import { Store } from '../../src/store/store.js';
import { tempDir, throwsCode } from '../helpers.js';

const SERVE = fileURLToPath(new URL('../../../bin/polyvisor', import.meta.url));

function serve(data: string): Promise<{ url: string; stdout: () => string; stop: () => Promise<number | null> }> {
  const child = spawn(SERVE, ['--data', data, 'serve', '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve did not start: ${err}`)), 30_000);
    child.stderr.setEncoding('utf8').on('data', (s: string) => {
      err += s;
      const m = /listening on (http:\/\/\S+)/.exec(err);
      if (m) {
        clearTimeout(timer);
        resolve({ url: m[1]!, stdout: () => out, stop: () => (child.kill('SIGTERM'), exited) });
      }
    });
    void exited.then((code) => reject(new Error(`serve exited (${code}): ${err}`)));
  });
}

describe('polyvisor serve', () => {
  test('--listen is HOST:PORT', () => {
    assert.deepEqual(parseListen('127.0.0.1:8460'), { host: '127.0.0.1', port: 8460 });
    assert.deepEqual(parseListen('[::1]:9000'), { host: '::1', port: 9000 });
    assert.deepEqual(parseListen(':9000'), { host: '127.0.0.1', port: 9000 });
    for (const bad of ['8460', 'host:', 'host:99999', '[::1:80', 'a:b:80']) throwsCode(() => parseListen(bad), 'ERR_USAGE', '--listen');
  });

  test('first start prints "admin token: TOKEN" once; the token works; the CLI store is the same; SIGTERM stops it', async (t) => {
    const dir = await tempDir(t);
    const data = join(dir, 'data');
    // a host the CLI added is one the server lists
    const store = Store.open(data);
    store.addHost({ name: 'xen1', uri: 'xen+ssh://192.0.2.1', driver: 'xen', options: {} });
    store.close();

    const first = await serve(data);
    const anon = await fetch(`${first.url}/api/hosts`);
    assert.equal(anon.status, 401);
    const lines = first.stdout().split('\n').filter((l) => l.startsWith('admin token: '));
    assert.equal(lines.length, 1, first.stdout());
    const token = /^admin token: (pv_[A-Za-z0-9_-]{43})$/.exec(lines[0]!)?.[1];
    assert.ok(token, lines[0]);
    const hosts = await fetch(`${first.url}/api/hosts`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(hosts.status, 200);
    assert.deepEqual(((await hosts.json()) as any).items.map((h: any) => h.name), ['local', 'xen1']);
    assert.equal(await first.stop(), 0);

    const second = await serve(data);
    const me = await fetch(`${second.url}/api/me`, { headers: { authorization: `Bearer ${token}` } });
    assert.deepEqual(await me.json(), { name: 'admin', role: 'admin' });
    assert.equal(second.stdout().includes('admin token:'), false, 'no second token');
    assert.equal(await second.stop(), 0);
  });
});
