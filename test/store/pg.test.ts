/**
 * The store on both of its databases: the same test bodies run on the embedded SQLite file
 * and on a real PostgreSQL server (./pg-server.ts, a throw-away cluster for this file), so
 * every Store method is shown to behave the same on both: VMs, hosts, the inventory's order
 * and pages, tags, users and tokens, the audit log, jobs, transactions, migrations, hostile
 * values, two processes writing at once. Then what only PostgreSQL has: a URL whose password
 * never reaches a message, a server that dies, restarts or never answers (ERR_IO, no hang),
 * and the synchronous bridge's round trip (./src/store/pg-sync.ts).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { positionalParams } from '../../src/store/db.js';
import { databaseUrl } from '../../src/store/data-dir.js';
import { redactUrl } from '../../src/store/pg-sync.js';
import { MIGRATIONS } from '../../src/store/schema.js';
import { Store, type StoredVm } from '../../src/store/store.js';
import { emptySpec } from '../../src/vm/spec.js';
import { tempDir, throwsCode } from '../helpers.js';
import { startPostgres, type PgServer } from './pg-server.js';

type T = { after(fn: () => Promise<void> | void): void; diagnostic(message: string): void };

/** An open store on one backend, and a way around it to the database (the oracle). */
interface Opened {
  store: Store;
  dir: string;
  /** the `database` option the store was opened with */
  database?: string;
  /** runs SQL directly on the database, outside the store */
  raw(sql: string): void;
  /** the first column of the first row of a query run outside the store, as text */
  scalar(sql: string): string;
}

interface Backend {
  name: string;
  open(t: T): Promise<Opened>;
}

let pg: PgServer;

const sqlite: Backend = {
  name: 'SQLite',
  async open(t) {
    const dir = await tempDir(t);
    const store = Store.open(dir);
    t.after(() => store.close());
    const file = join(dir, 'polyvisor.db');
    const withDb = <R>(fn: (db: Database.Database) => R): R => {
      const db = new Database(file);
      try {
        return fn(db);
      } finally {
        db.close();
      }
    };
    return {
      store,
      dir,
      raw: (sql) => withDb((db) => db.exec(sql)),
      scalar: (sql) => withDb((db) => String(db.prepare(sql).pluck().get())),
    };
  },
};

const postgres: Backend = {
  name: 'PostgreSQL',
  async open(t) {
    const dir = await tempDir(t);
    const { name, url } = pg.createDatabase();
    const store = Store.open(dir, { database: url });
    t.after(() => store.close());
    return { store, dir, database: url, raw: (sql) => void pg.psql(name, sql), scalar: (sql) => pg.psql(name, sql).replace(/\n$/, '') };
  },
};

function vm(name: string, over: Partial<StoredVm> = {}): Omit<StoredVm, 'createdAt' | 'updatedAt' | 'state'> {
  return { name, uuid: `uuid-${name}`, host: 'local', source: `/src/${name}.qcow2`, sourceKind: 'disk', spec: emptySpec(name), disks: [{ index: 0, label: 'd', mode: 'overlay', path: '/p', format: 'qcow2', source: '/s' }], ...over };
}

const at = (n: number) => new Date(Date.UTC(2030, 0, 1, 0, 0, n)).toISOString();

before(() => {
  pg = startPostgres();
});
after(() => pg?.destroy());

for (const backend of [sqlite, postgres]) {
  describe(`the store on ${backend.name}`, () => {
    test('VMs: add, find, list by host, state changes, compare-and-set, relocate, remove; duplicates and missing ones refused', async (t) => {
      const { store } = await backend.open(t);
      const a = store.addVm(vm('a', { pid: 42, startedAt: at(1), state: 'running' }));
      assert.equal(a.state, 'running');
      assert.equal(a.pid, 42);
      assert.equal(a.startedAt, at(1));
      assert.deepEqual(a.spec, emptySpec('a'));
      assert.equal(a.disks[0]!.source, '/s');
      store.addVm(vm('b', { host: 'xen1' }));
      throwsCode(() => store.addVm(vm('a')), 'ERR_EXISTS', 'a VM named a');
      throwsCode(() => store.addVm(vm('-bad')), 'ERR_USAGE');
      assert.deepEqual(store.listVms().map((v) => v.name), ['a', 'b']);
      assert.deepEqual(store.listVms('xen1').map((v) => v.name), ['b']);
      assert.equal(store.findVm('nope'), undefined);
      throwsCode(() => store.getVm('nope'), 'ERR_NOT_FOUND', 'nope');

      store.setState('b', 'running', { pid: 7, startedAt: at(2) });
      assert.deepEqual([store.getVm('b').state, store.getVm('b').pid, store.getVm('b').startedAt], ['running', 7, at(2)]);
      store.setState('b', 'stopped', { pid: 8 });
      assert.deepEqual([store.getVm('b').pid, store.getVm('b').startedAt], [undefined, undefined], 'a stopped VM keeps no pid');
      throwsCode(() => store.setState('nope', 'paused'), 'ERR_NOT_FOUND');
      assert.equal(store.compareAndSetState('a', 'paused', 'stopped'), false, 'a is running, not paused');
      assert.equal(store.compareAndSetState('a', 'running', 'stopped'), true);
      assert.equal(store.getVm('a').state, 'stopped');

      const spec = { ...emptySpec('a'), cpu: { count: 4 } };
      store.relocateVm('a', { host: 'xen1', disks: [{ index: 0, label: 'd', mode: 'host', path: '/srv/a.img', format: 'raw' }], spec });
      const moved = store.getVm('a');
      assert.deepEqual([moved.host, moved.disks[0]!.mode, moved.spec.cpu.count], ['xen1', 'host', 4]);
      throwsCode(() => store.relocateVm('nope', { host: 'x', disks: [], spec }), 'ERR_NOT_FOUND');
      assert.ok(moved.updatedAt >= moved.createdAt);
      store.removeVm('a');
      store.removeVm('a');
      assert.deepEqual(store.listVms().map((v) => v.name), ['b']);
    });

    test('hosts: add with options, list in name order, get, refuse duplicates and removing one that has VMs', async (t) => {
      const { store } = await backend.open(t);
      store.addHost({ name: 'xen2', uri: 'xen+ssh://root@192.0.2.2', driver: 'xen', options: {} });
      const h = store.addHost({ name: 'xen1', uri: 'xen+ssh://192.0.2.1:2222', driver: 'xen', options: { identityFile: '/k', storageDir: '/srv' } });
      throwsCode(() => store.addHost({ name: 'xen1', uri: 'x', driver: 'xen', options: {} }), 'ERR_EXISTS');
      assert.deepEqual(store.listHosts().map((x) => x.name), ['xen1', 'xen2']);
      assert.deepEqual(store.getHost('xen1'), h);
      throwsCode(() => store.getHost('nope'), 'ERR_NOT_FOUND');
      store.addVm(vm('v', { host: 'xen1' }));
      throwsCode(() => store.removeHost('xen1'), 'ERR_VM_STATE', 'still has 1 VM');
      store.removeHost('xen2');
      assert.deepEqual(store.listHosts().map((x) => x.name), ['xen1']);
      assert.deepEqual([...store.countVmsByHost()], [['xen1', 1]]);
    });

    test('inventory: byte order of names (as SQLite compares), keyset pages, filters by host, state and tag, totals; tags', async (t) => {
      const { store } = await backend.open(t);
      // a linguistic collation would put these as 0x, a, B, vm_0, vm-1, vm.2, Vm_1, Z
      const names = ['Z', 'a', 'B', 'vm-1', 'vm_0', 'Vm_1', '0x', 'vm.2'];
      store.batch(() => {
        names.forEach((n, i) => store.addVm(vm(n, { host: i % 2 ? 'h1' : 'h2', spec: { ...emptySpec(n), cpu: { count: i + 1 } } })));
      });
      const bytes = [...names].sort((x, y) => (Buffer.from(x) < Buffer.from(y) ? -1 : 1));
      assert.deepEqual(bytes, ['0x', 'B', 'Vm_1', 'Z', 'a', 'vm-1', 'vm.2', 'vm_0']);
      assert.deepEqual(store.listVms().map((v) => v.name), bytes);
      const seen: string[] = [];
      let after: string | undefined;
      for (let i = 0; i < 10; i++) {
        const page = store.listVmSummaries({ limit: 3, after });
        assert.equal(page.total, names.length);
        seen.push(...page.items.map((v) => v.name));
        if (page.items.length < 3) break;
        after = page.items[page.items.length - 1]!.name;
      }
      assert.deepEqual(seen, bytes, 'keyset pages in the same order as the listing');
      const b = store.listVmSummaries({ limit: 10, host: 'h1' });
      assert.deepEqual([b.total, b.items.map((v) => v.name)], [4, ['Vm_1', 'a', 'vm-1', 'vm.2']]);
      assert.equal(b.items[0]!.cpus, 6);
      assert.equal(b.items[0]!.memoryBytes, 512 << 20);
      store.setState('a', 'running', { pid: 1 });
      assert.deepEqual(store.listVmSummaries({ limit: 10, state: 'running' }).items.map((v) => [v.name, v.pid]), [['a', 1]]);
      store.setTags('a', ['web', 'Web', 'env=prod', 'web']);
      store.setTags('B', ['web']);
      assert.deepEqual(store.tagsOf(['a', 'B', 'nope']), new Map([['B', ['web']], ['a', ['Web', 'env=prod', 'web']]]));
      assert.deepEqual(store.listVmSummaries({ limit: 10, tag: 'web' }).items.map((v) => [v.name, v.tags]), [['B', ['web']], ['a', ['Web', 'env=prod', 'web']]]);
      throwsCode(() => store.setTags('nope', ['x']), 'ERR_NOT_FOUND');
      store.setTags('a', []);
      assert.equal(store.tagsOf(['a']).size, 0);
      store.removeVm('B');
      assert.equal(store.tagsOf(['B']).size, 0, "a VM's tags go with it");
      assert.deepEqual([...store.countVmsByHost()].sort(), [['h1', 4], ['h2', 3]]);
      // a listing after a VM's spec changed shows the new size
      assert.equal(store.listVmSummaries({ limit: 1, after: 'Y' }).items[0]!.cpus, 1);
      store.relocateVm('Z', { host: 'h3', disks: [], spec: { ...emptySpec('Z'), cpu: { count: 16 } } });
      assert.equal(store.listVmSummaries({ limit: 1, after: 'Y' }).items[0]!.cpus, 16);
    });

    test('users and tokens: a user with its first token in one transaction, roles, the last admin stays, single-use console tokens', async (t) => {
      const { store } = await backend.open(t);
      assert.equal(store.countUsers(), 0);
      store.addUser({ name: 'admin', role: 'admin' }, { hash: 'h-admin', kind: 'api' });
      throwsCode(() => store.addUser({ name: 'admin', role: 'viewer' }, { hash: 'h-other', kind: 'api' }), 'ERR_EXISTS');
      assert.equal(store.userOfToken('h-other'), undefined, "a refused user's token was rolled back with it");
      assert.throws(() => store.addUser({ name: 'ops', role: 'operator' }, { hash: 'h-admin', kind: 'api' }), /./, 'a token hash is unique');
      assert.equal(store.findUser('ops'), undefined, 'the user of a refused token was rolled back with it');
      store.addUser({ name: 'ops', role: 'operator', createdBy: 'admin' });
      store.addToken({ hash: 'h-ops', kind: 'api', user: 'ops' });
      assert.deepEqual(store.listUsers().map((u) => [u.name, u.role, u.createdBy]), [['admin', 'admin', undefined], ['ops', 'operator', 'admin']]);
      assert.equal(store.userOfToken('h-ops')?.role, 'operator');
      assert.equal(store.userOfToken('nope'), undefined);

      store.addToken({ hash: 'c1', kind: 'console', user: 'ops', vm: 'web', expiresAt: at(10) });
      store.addToken({ hash: 'c2', kind: 'console', user: 'ops', vm: 'web', expiresAt: at(10) });
      assert.equal(store.userOfToken('c1'), undefined, 'a console token is no API token');
      assert.equal(store.useConsoleToken('c1', 'other', at(5)), undefined, 'for another VM');
      assert.equal(store.useConsoleToken('c1', 'web', at(11)), undefined, 'expired');
      assert.equal(store.useConsoleToken('c1', 'web', at(5)), 'ops');
      assert.equal(store.useConsoleToken('c1', 'web', at(6)), undefined, 'used once only');
      store.pruneTokens(at(20));
      assert.equal(store.useConsoleToken('c2', 'web', at(5)), undefined, 'pruned');

      throwsCode(() => store.removeUser('admin'), 'ERR_VM_STATE', 'last admin');
      throwsCode(() => store.removeUser('nope'), 'ERR_NOT_FOUND');
      store.removeUser('ops');
      assert.equal(store.userOfToken('h-ops'), undefined, "a removed user's tokens go");
      assert.equal(store.countUsers(), 1);
    });

    test('audit log: sequence numbers follow each other, newest first, pages back, by user', async (t) => {
      const { store } = await backend.open(t);
      const seqs = [1, 2, 3, 4].map((i) => store.addAudit({ at: at(i), user: i % 2 ? 'ann' : undefined, role: i % 2 ? 'admin' : undefined, method: 'POST', route: '/api/vms', target: JSON.stringify({ i }), status: 200 + i, job: i === 4 ? 'j' : undefined }));
      assert.deepEqual(seqs, [1, 2, 3, 4]);
      const all = store.listAudit({ limit: 10 });
      assert.deepEqual(all.map((e) => e.seq), [4, 3, 2, 1]);
      assert.deepEqual(all[0], { seq: 4, at: at(4), user: undefined, role: undefined, method: 'POST', route: '/api/vms', target: '{"i":4}', status: 204, job: 'j' });
      assert.deepEqual(store.listAudit({ limit: 2, before: 4 }).map((e) => e.seq), [3, 2]);
      assert.deepEqual(store.listAudit({ limit: 10, user: 'ann' }).map((e) => e.seq), [3, 1]);
      assert.equal(typeof all[0]!.seq, 'number', 'BIGINT columns come back as numbers');
    });

    test('jobs: add, list newest first by state and time, progress past 2^32, error and result, orphans failed, the log', async (t) => {
      const { store } = await backend.open(t);
      const ids = ['11111111-1111-4111-8111-111111111111', '22222222-2222-4222-8222-222222222222', '33333333-3333-4333-8333-333333333333'];
      for (const id of ids) {
        store.addJob({ id, kind: 'import', target: 'web', createdBy: 'admin' });
        await new Promise((r) => setTimeout(r, 2));
      }
      assert.equal(store.getJob(ids[0]!).state, 'queued');
      throwsCode(() => store.getJob('nope'), 'ERR_NOT_FOUND');
      store.updateJob(ids[0]!, { state: 'succeeded', done: 2 ** 40 + 0.4, total: 2 ** 40, startedAt: at(1), endedAt: at(2), result: { vm: 'web', files: ['a'] } });
      store.updateJob(ids[1]!, { state: 'running' });
      store.updateJob(ids[2]!, {});
      const j = store.getJob(ids[0]!);
      assert.deepEqual([j.done, j.total, j.startedAt, j.endedAt, j.result], [2 ** 40, 2 ** 40, at(1), at(2), { vm: 'web', files: ['a'] }]);
      assert.deepEqual(store.listJobs({ limit: 10 }).map((x) => x.id), [...ids].reverse());
      assert.deepEqual(store.listJobs({ limit: 10, state: 'running' }).map((x) => x.id), [ids[1]]);
      assert.deepEqual(store.listJobs({ limit: 10, before: store.getJob(ids[1]!).createdAt }).map((x) => x.id), [ids[0]]);
      assert.equal(store.failOrphanJobs('the server stopped'), 2);
      assert.deepEqual(store.getJob(ids[2]!).error, { code: 'ERR_ABORTED', message: 'the server stopped' });
      for (let i = 0; i < 5; i++) store.addJobLog(ids[0]!, i, `line ${i}`);
      store.addJobLog(ids[0]!, 5, 'a NUL \0 in a tool\'s output');
      assert.deepEqual(store.jobLog(ids[0]!, 3).map((l) => [l.seq, l.line]), [[0, 'line 0'], [1, 'line 1'], [2, 'line 2']]);
      assert.equal(store.jobLog(ids[0]!, 10)[5]!.line, "a NUL \uFFFD in a tool's output");
      assert.throws(() => store.addJobLog('no-such-job', 0, 'x'), /./, 'a log line needs its job (foreign key)');
      assert.throws(() => store.addJobLog(ids[0]!, 0, 'again'), /./, 'one line per sequence number');
    });

    test('transactions: a batch is all or nothing, nests, and may not return a promise', async (t) => {
      const { store } = await backend.open(t);
      assert.throws(() =>
        store.batch(() => {
          store.addVm(vm('kept-not'));
          store.addHost({ name: 'h', uri: 'u', driver: 'xen', options: {} });
          throw new Error('changed my mind');
        }),
      /changed my mind/);
      assert.deepEqual([store.listVms().length, store.listHosts().length], [0, 0], 'nothing of a failed batch stays');
      store.batch(() => {
        store.addVm(vm('outer'));
        assert.throws(() => store.batch(() => (store.addVm(vm('inner')), store.addVm(vm('outer')))), /already exists/);
        store.setTags('outer', ['t']);
      });
      assert.deepEqual(store.listVms().map((v) => v.name), ['outer'], 'the failed inner batch is undone, the outer one kept');
      assert.deepEqual(store.tagsOf(['outer']).get('outer'), ['t']);
      assert.throws(() => store.batch(() => Promise.resolve(1) as unknown as number), /promise/);
      assert.equal(store.batch(() => 7), 7);
    });

    test('hostile values: quotes, placeholders, comments, backslashes, non-ASCII and 1 MiB come back as stored; NUL is refused', async (t) => {
      const { store } = await backend.open(t);
      const nasty = `it's "quoted" ? $1 $$ -- not a comment /* nor this */ \\ \\x00 '); DROP TABLE vms; -- é 日本 🐧`;
      const long = 'x'.repeat(1 << 20) + nasty;
      store.addVm(vm('h1', { source: nasty, sourceKind: long, spec: { ...emptySpec('h1'), extra: { odd: { text: nasty } } } }));
      const back = store.getVm('h1');
      assert.equal(back.source, nasty);
      assert.equal(back.sourceKind.length, long.length);
      assert.equal(back.sourceKind, long);
      assert.deepEqual(back.spec.extra, { odd: { text: nasty } });
      store.setTags('h1', [nasty, '?']);
      assert.deepEqual(store.tagsOf(['h1']).get('h1'), [nasty, '?'].sort((x, y) => (Buffer.from(x) < Buffer.from(y) ? -1 : 1)));
      assert.deepEqual(store.listVmSummaries({ limit: 5, tag: nasty }).items.map((v) => v.name), ['h1']);
      store.addHost({ name: "o'brien", uri: nasty, driver: 'xen', options: { storageDir: nasty } });
      assert.deepEqual(store.getHost("o'brien").options.storageDir, nasty);
      throwsCode(() => store.addVm(vm('nul', { source: 'a\0b' })), 'ERR_USAGE', 'NUL');
      assert.equal(store.findVm('nul'), undefined);
      throwsCode(() => store.addHost({ name: 'n\0', uri: 'x', driver: 'xen', options: {} }), 'ERR_USAGE');
      // inside JSON a NUL is the escape \u0000, which both databases keep
      store.relocateVm('h1', { host: 'local', disks: [], spec: { ...emptySpec('h1'), extra: { nul: { text: 'a\0b' } } } });
      assert.deepEqual(store.getVm('h1').spec.extra, { nul: { text: 'a\0b' } });
    });

    test('migrations: a new store is at the latest version; reopening keeps its data; a corrupt record and a newer schema are refused', async (t) => {
      const o = await backend.open(t);
      assert.equal(o.scalar('SELECT version FROM schema_version'), String(MIGRATIONS.length));
      assert.equal(o.scalar('SELECT COUNT(*) FROM schema_version'), '1');
      o.store.addVm(vm('keep'));
      const again = Store.open(o.dir, { database: o.database });
      assert.deepEqual(again.listVms().map((v) => v.name), ['keep']);
      again.close();
      o.raw(`UPDATE vms SET spec = '{"name": 1}' WHERE name = 'keep'`);
      throwsCode(() => o.store.getVm('keep'), 'ERR_CORRUPT', 'VM keep', 'vms.spec', o.store.file);
      o.raw(`UPDATE schema_version SET version = ${MIGRATIONS.length + 1}`);
      throwsCode(() => Store.open(o.dir, { database: o.database }), 'ERR_UNSUPPORTED', 'newer than this Polyvisor knows');
    });

    test('two processes writing at once (both opening a new store): every write kept, audit numbers unique and consecutive', async (t) => {
      const dir = await tempDir(t);
      const database = backend === postgres ? pg.createDatabase().url : undefined;
      const script = join(dir, 'writer.mjs');
      writeFileSync(
        script,
        `import { Store } from ${JSON.stringify(new URL('../../src/store/store.js', import.meta.url).href)};
import { emptySpec } from ${JSON.stringify(new URL('../../src/vm/spec.js', import.meta.url).href)};
const [dir, database, who, n] = process.argv.slice(2);
const s = Store.open(dir, database ? { database } : {});
for (let i = 0; i < Number(n); i++) {
  const name = who + '-' + i;
  s.addAudit({ at: new Date().toISOString(), method: 'POST', route: '/w', target: JSON.stringify({ who, i }), status: 200 });
  s.addVm({ name, uuid: name, host: 'local', source: '/x', sourceKind: 'disk', spec: emptySpec(name), disks: [] });
  s.setTags(name, [who, 'all']);
  s.setState(name, 'running', { pid: i + 1 });
}
s.close();
`,
      );
      const n = 60;
      const run = (who: string) =>
        new Promise<void>((resolve, reject) => {
          const p = spawn(process.execPath, [script, join(dir, 'data'), database ?? '', who, String(n)], { stdio: ['ignore', 'ignore', 'pipe'] });
          let err = '';
          p.stderr.on('data', (d) => (err += d));
          p.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`writer ${who} exited ${code}: ${err}`))));
        });
      await Promise.all([run('p'), run('q')]);
      const store = Store.open(join(dir, 'data'), { database });
      t.after(() => store.close());
      assert.deepEqual(store.listAudit({ limit: 1000 }).map((e) => e.seq), Array.from({ length: 2 * n }, (_, i) => 2 * n - i));
      const vms = store.listVms();
      assert.equal(vms.length, 2 * n);
      assert.ok(vms.every((v) => v.state === 'running' && v.pid !== undefined));
      assert.equal(store.listVmSummaries({ limit: 1, tag: 'all' }).total, 2 * n);
    });

    test('the round trip of a query (a figure, not asserted)', async (t) => {
      const { store } = await backend.open(t);
      store.addVm(vm('web'));
      for (let i = 0; i < 100; i++) store.findVm('web');
      const rounds = 2000;
      let t0 = performance.now();
      for (let i = 0; i < rounds; i++) store.countUsers();
      const count = ((performance.now() - t0) * 1000) / rounds;
      t0 = performance.now();
      for (let i = 0; i < rounds; i++) store.findVm('web');
      const find = ((performance.now() - t0) * 1000) / rounds;
      t0 = performance.now();
      for (let i = 0; i < 200; i++) store.setState('web', i % 2 ? 'running' : 'stopped', { pid: 1 });
      const write = ((performance.now() - t0) * 1000) / 200;
      t.diagnostic(`${backend.name}: countUsers ${count.toFixed(0)} µs, findVm ${find.toFixed(0)} µs, setState (a commit) ${write.toFixed(0)} µs`);
    });
  });
}

describe('the store on PostgreSQL: what SQLite does not have', () => {
  test('the URL: the password never reaches the store\'s name or a message; other schemes are refused', async (t) => {
    const dir = await tempDir(t);
    const { url } = pg.createDatabase({ password: 'hunter2' });
    const store = Store.open(dir, { database: url });
    t.after(() => store.close());
    assert.equal(store.dialect, 'postgres');
    assert.ok(url.includes('hunter2') && !store.file.includes('hunter2'), store.file);
    assert.match(store.file, /^postgresql:\/\/pv@\//);
    assert.equal(redactUrl('postgres://u:p%40ss@db.example:5432/pv?sslmode=require&password=x&application_name=a'), 'postgres://u@db.example:5432/pv?sslmode=require&application_name=a');
    assert.equal(redactUrl('postgresql:///pv?password=x'), 'postgresql:///pv');
    throwsCode(() => Store.open(dir, { database: 'mysql://root@localhost/pv' }), 'ERR_USAGE', 'PostgreSQL URL');
    throwsCode(() => Store.open(dir, { database: pg.url('no_such_database', { password: 'hunter2' }) }), 'ERR_IO', 'cannot connect', 'no_such_database', '3D000');
    assert.throws(() => Store.open(dir, { database: pg.url('no_such_database', { password: 'hunter2' }) }), (e: Error) => !e.message.includes('hunter2'));
  });

  test('`?` placeholders become $n outside literals, quoted names and comments', () => {
    assert.equal(positionalParams(`SELECT '?', "a?" FROM t WHERE x = ? -- ?\nAND y = ? /* ? */ AND z = 'it''s ?' AND w = ?`), `SELECT '?', "a?" FROM t WHERE x = $1 -- ?\nAND y = $2 /* ? */ AND z = 'it''s ?' AND w = $3`);
  });

  test('--database and $POLYVISOR_DATABASE choose the database; anything but a PostgreSQL URL is refused', () => {
    assert.equal(databaseUrl(undefined, {}), undefined);
    assert.equal(databaseUrl(undefined, { POLYVISOR_DATABASE: 'postgres://pv@db/pv' }), 'postgres://pv@db/pv');
    assert.equal(databaseUrl('postgresql://a@b/c', { POLYVISOR_DATABASE: 'postgres://pv@db/pv' }), 'postgresql://a@b/c');
    assert.equal(databaseUrl(undefined, { POLYVISOR_DATABASE: '' }), undefined);
    throwsCode(() => databaseUrl('/var/lib/polyvisor.db', {}), 'ERR_USAGE', '--database');
  });

  test('a server that dies: ERR_IO naming the URL (without its password), no hang; after its restart the store carries on', async (t) => {
    const dir = await tempDir(t);
    const { url } = pg.createDatabase({ password: 'hunter2' });
    const store = Store.open(dir, { database: url, timeouts: { connectTimeoutMs: 3000, queryTimeoutMs: 10_000 } });
    t.after(() => store.close());
    store.addVm(vm('survivor'));
    pg.stop();
    try {
      for (let i = 0; i < 2; i++) {
        assert.throws(() => store.listVms(), (e: any) => {
          assert.equal(e.code, 'ERR_IO', e.message);
          assert.ok(e.message.includes(store.file) && !e.message.includes('hunter2'), e.message);
          return true;
        });
      }
      throwsCode(() => store.batch(() => store.addVm(vm('lost'))), 'ERR_IO');
    } finally {
      pg.start();
    }
    assert.deepEqual(store.listVms().map((v) => v.name), ['survivor'], 'connected again, nothing of the failed batch');

    // the server restarts in the middle of a transaction: what follows in it must not run on the
    // new connection as statements of their own (each would commit); the whole batch fails
    throwsCode(
      () =>
        store.batch(() => {
          store.addVm(vm('before-restart'));
          pg.stop();
          pg.start();
          assert.throws(() => store.addVm(vm('during')), (e: any) => e.code === 'ERR_IO');
          store.addVm(vm('after-restart'));
        }),
      'ERR_IO',
      'lost inside a transaction',
    );
    assert.deepEqual(store.listVms().map((v) => v.name), ['survivor'], 'nothing of the interrupted transaction stays');
  });

  test('a server that never answers, or none at all: ERR_IO within the connection timeout', async (t) => {
    const dir = await tempDir(t);
    // a socket that accepts (the kernel completes the connection while this thread waits) and never speaks
    const sockets = new Set<Socket>();
    const silent = createServer((s) => void sockets.add(s));
    await new Promise<void>((r) => silent.listen(join(dir, '.s.PGSQL.5432'), r));
    t.after(() => {
      for (const s of sockets) s.destroy();
      silent.close();
    });
    throwsCode(() => Store.open(join(dir, 'data'), { database: `postgresql://pv:pw@/pv?host=${encodeURIComponent(dir)}&port=5432`, timeouts: { connectTimeoutMs: 1000 } }), 'ERR_IO', 'cannot connect', `host=`);
    throwsCode(() => Store.open(join(dir, 'data'), { database: `postgresql://pv@/pv?host=${encodeURIComponent(dir)}&port=1`, timeouts: { connectTimeoutMs: 1000 } }), 'ERR_IO', 'cannot connect');
  });
});
