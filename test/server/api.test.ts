/**
 * The REST API through app.inject, every answer checked against /api/openapi.json: tokens
 * (401), roles on every route (403), validation (400 naming the field), hosts, the library
 * (streamed uploads, limits, paths), VMs and their jobs (import, export, convert; no guest is
 * booted here: test/server/boot.test.ts boots one), users, the audit log, and paging.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { qemuImg, qemuIo, tempDir } from '../helpers.js';
import { REACHED, settled, startServer, storeBytes, type TestServer } from './helpers.js';

/** A qcow2 disk with a recognisable pattern: a disk image alone is a VM source. */
async function diskImage(dir: string, name = 'web.qcow2'): Promise<Buffer> {
  const file = join(dir, name);
  await qemuImg('create', '-q', '-f', 'qcow2', file, '16M');
  await qemuIo(file, 'qcow2', 'write -P 0x5a 0 1M');
  return readFileSync(file);
}

/** A URL for a route with its parameters filled in. */
function sampleUrl(url: string): string {
  return url.replace(':name', 'web').replace(':id', '00000000-0000-4000-8000-000000000000').replace(/\*$/, 'some/file.img');
}

async function upload(s: TestServer, path: string, data: Buffer, token?: string) {
  return s.call('PUT', `/api/library/files/${path}`, { payload: data, headers: { 'content-type': 'application/octet-stream' }, token });
}

async function importVm(s: TestServer, body: Record<string, unknown>) {
  const r = await s.call('POST', '/api/vms', { body });
  assert.equal(r.status, 202, r.raw);
  assert.equal(r.body.kind, 'import');
  return settled(s, r.body.id);
}

describe('the REST API', { concurrency: false }, () => {
  test('health and the OpenAPI document are public; every other route needs a valid bearer token', async (t) => {
    const s = await startServer(t);
    const h = await s.call('GET', '/api/health', { token: null });
    assert.equal(h.status, 200);
    const doc = (await s.call('GET', '/api/openapi.json', { token: null })).body;
    assert.equal(doc.openapi, '3.1.0');
    const ids = new Set<string>();
    for (const [path, ops] of Object.entries<any>(doc.paths)) {
      for (const [method, op] of Object.entries<any>(ops)) {
        assert.ok(op.operationId && !ids.has(op.operationId), `${method} ${path}: a unique operationId`);
        ids.add(op.operationId);
        assert.ok(['public', 'viewer', 'operator', 'admin'].includes(op['x-polyvisor-role']), `${method} ${path} declares its role`);
      }
    }
    assert.equal(ids.size, s.app.apiRoutes.length);
    for (const r of s.app.apiRoutes) {
      if (r.access === 'public') continue;
      const url = sampleUrl(r.url);
      for (const [token, words] of [
        [null, /needs a token/],
        ['pv_not-a-token', /unknown token/],
      ] as const) {
        const res = await s.call(r.method, url, { token });
        assert.equal(res.status, 401, `${r.method} ${url} without a valid token`);
        assert.equal(res.body.error.code, 'ERR_AUTH');
        assert.match(res.body.error.message, words);
      }
      const bad = await s.call(r.method, url, { token: null, headers: { authorization: 'Basic YWRtaW46YWRtaW4=' } });
      assert.equal(bad.status, 401);
    }
  });

  test('roles on every route: a viewer cannot change anything (nor start a VM); an operator cannot add users or hosts', async (t) => {
    const s = await startServer(t);
    const viewer = await s.user('vera', 'viewer');
    const operator = await s.user('otto', 'operator');
    for (const r of s.app.apiRoutes) {
      const url = sampleUrl(r.url);
      if (r.access === 'operator' || r.access === 'admin') {
        const res = await s.call(r.method, url, { token: viewer, body: r.body ? {} : undefined });
        assert.equal(res.status, 403, `viewer: ${r.method} ${url}`);
        assert.equal(res.body.error.code, 'ERR_FORBIDDEN');
      }
      if (r.access === 'admin') {
        const res = await s.call(r.method, url, { token: operator, body: r.body ? {} : undefined });
        assert.equal(res.status, 403, `operator: ${r.method} ${url}`);
      }
    }
    const start = await s.call('POST', '/api/vms/web/start', { token: viewer });
    assert.equal(start.status, 403);
    assert.match(start.body.error.message, /vera is a viewer; this needs the operator role/);
    const add = await s.call('POST', '/api/users', { token: operator, body: { name: 'mallory', role: 'admin' } });
    assert.equal(add.status, 403);
    assert.match(add.body.error.message, /otto is a operator; this needs the admin role/);
    assert.equal((await s.call('GET', '/api/users', { token: operator })).status, 403);
    assert.equal((await s.call('GET', '/api/audit', { token: operator })).status, 403);
    // what each may do
    assert.equal((await s.call('GET', '/api/vms', { token: viewer })).status, 200);
    assert.deepEqual((await s.call('GET', '/api/me', { token: viewer })).body, { name: 'vera', role: 'viewer' });
    assert.equal((await s.call('GET', '/api/vms/web', { token: operator })).status, 404, 'an operator passes the role check (and meets a missing VM)');
    assert.equal(s.app.polyvisor.store.findUser('mallory'), undefined);
  });

  test('users: add with a role, list, remove; tokens are kept as SHA-256 only; the last admin stays', async (t) => {
    const s = await startServer(t);
    const r = await s.call('POST', '/api/users', { body: { name: 'ops', role: 'operator' } });
    assert.equal(r.status, 201);
    assert.equal(r.body.user.createdBy, 'admin');
    const token = r.body.token as string;
    assert.deepEqual((await s.call('GET', '/api/me', { token })).body, { name: 'ops', role: 'operator' });
    assert.equal((await s.call('POST', '/api/users', { body: { name: 'ops', role: 'viewer' } })).status, 409);
    const list = await s.call('GET', '/api/users');
    assert.deepEqual(list.body.items.map((u: any) => [u.name, u.role]), [['admin', 'admin'], ['ops', 'operator']]);
    // the database holds hashes, never the tokens
    const db = storeBytes(s);
    assert.equal(db.includes(token), false, 'the token is not in the store');
    assert.equal(db.includes(s.adminToken), false);
    assert.ok(db.includes(createHash('sha256').update(token).digest('hex')), 'its SHA-256 is');
    assert.equal((await s.call('DELETE', '/api/users/ops')).status, 204);
    assert.equal((await s.call('GET', '/api/me', { token })).status, 401, "a removed user's token opens nothing");
    assert.equal((await s.call('DELETE', '/api/users/ops')).status, 404);
    const last = await s.call('DELETE', '/api/users/admin');
    assert.equal(last.status, 409);
    assert.match(last.body.error.message, /last admin/);
  });

  test('malformed requests: 400 with a message naming the field; too large: 413', async (t) => {
    const s = await startServer(t, { bodyLimit: 4096 });
    const cases: Array<[string, string, Parameters<TestServer['call']>[2], RegExp]> = [
      ['POST', '/api/users', { payload: '{"name": "x", ', headers: { 'content-type': 'application/json' } }, /not valid JSON/],
      ['POST', '/api/users', { body: { name: 'x' } }, /^body\.role: /],
      ['POST', '/api/users', { body: { name: 'x', role: 'root' } }, /^body\.role: Invalid option/],
      ['POST', '/api/users', { body: { name: '-x', role: 'viewer' } }, /^body\.name: a user name/],
      ['POST', '/api/users', { body: { name: 'x', role: 'viewer', admin: true } }, /^body: Unrecognized key.*admin/],
      ['POST', '/api/users', { body: [1, 2] }, /^body: Invalid input: expected object/],
      ['POST', '/api/vms', { body: { source: 'a.cfg', copy: 'yes' } }, /^body\.copy: Invalid input: expected boolean/],
      ['POST', '/api/vms', { body: {} }, /^body\.source: /],
      ['POST', '/api/vms/web/stop', { body: { timeoutSeconds: -1 } }, /^body\.timeoutSeconds: Too small/],
      ['POST', '/api/hosts', { body: { uri: 'http://example' } }, /^body\.uri: a Xen host URI/],
      ['PUT', '/api/vms/web/tags', { body: { tags: ['ok', 'not ok'] } }, /^body\.tags\.1: a tag/],
      ['GET', '/api/vms?limit=0', {}, /^query\.limit: Too small/],
      ['GET', '/api/vms?limit=ten', {}, /^query\.limit: Invalid input: expected number/],
      ['GET', '/api/vms?color=red', {}, /^query: Unrecognized key.*color/],
      ['GET', '/api/vms/bad%20name', {}, /^params\.name: a VM name/],
      ['GET', '/api/jobs/42', {}, /^params\.id: a job id/],
      ['GET', '/api/audit?before=x', {}, /^query\.before: /],
      ['POST', '/api/vms', { body: { source: '../etc/passwd' } }, /without '\.\.'/],
      ['GET', '/api/library?under=.hidden', {}, /reserved/],
    ];
    for (const [method, url, o, message] of cases) {
      const r = await s.call(method, url, o);
      assert.equal(r.status, 400, `${method} ${url} ${JSON.stringify(o)}: ${r.raw}`);
      assert.equal(r.body.error.code, 'ERR_USAGE');
      assert.match(r.body.error.message, message, `${method} ${url}`);
    }
    const big = await s.call('POST', '/api/users', { body: { name: 'x'.repeat(5000), role: 'viewer' } });
    assert.equal(big.status, 413);
    assert.equal(big.body.error.code, 'ERR_TOO_LARGE');
    const unknown = await s.call('GET', '/api/nothing-here');
    assert.equal(unknown.status, 404);
  });

  test('hosts: the local engine, add a Xen host (without connecting), refuse duplicates and removing a host with VMs', async (t) => {
    const s = await startServer(t);
    const list0 = await s.call('GET', '/api/hosts');
    assert.deepEqual(list0.body.items.map((h: any) => h.name), ['local']);
    // check: false: nothing is contacted (192.0.2.0/24 is TEST-NET-1, RFC 5737)
    const add = await s.call('POST', '/api/hosts', { body: { uri: 'xen+ssh://root@192.0.2.10', check: false, storageDir: '/srv/vms' } });
    assert.equal(add.status, 201, add.raw);
    assert.equal(add.body.name, '192.0.2.10');
    assert.equal(add.body.options.storageDir, '/srv/vms');
    assert.equal((await s.call('POST', '/api/hosts', { body: { uri: 'xen+ssh://root@192.0.2.10', check: false } })).status, 409);
    const named = await s.call('POST', '/api/hosts', { body: { uri: 'xen+ssh://192.0.2.11:2222', name: 'xen2', check: false } });
    assert.equal(named.status, 201);
    const badName = await s.call('POST', '/api/hosts', { body: { uri: 'xen+ssh://192.0.2.12', name: 'local', check: false } });
    assert.equal(badName.status, 400);
    // a VM recorded on xen2 keeps it
    const local = (await s.app.polyvisor.store.listVms()).length;
    assert.equal(local, 0);
    s.app.polyvisor.store.addVm({ name: 'remote1', uuid: '0c4d7a1e-0000-4000-8000-000000000001', host: 'xen2', source: '/x.cfg', sourceKind: 'xl', spec: { name: 'remote1', firmware: { type: 'bios' }, virtualization: 'pv', cpu: { count: 2 }, memory: { bytes: 1 << 30 }, disks: [], nics: [], consoles: [], graphics: [], os: { family: 'linux' }, extra: {} }, disks: [] });
    const hosts = await s.call('GET', '/api/hosts');
    assert.deepEqual(hosts.body.items.map((h: any) => [h.name, h.vms]), [['local', 0], ['192.0.2.10', 0], ['xen2', 1]]);
    const busy = await s.call('DELETE', '/api/hosts/xen2');
    assert.equal(busy.status, 409);
    assert.match(busy.body.error.message, /still has 1 VM/);
    assert.equal((await s.call('DELETE', '/api/hosts/192.0.2.10')).status, 204);
    assert.equal((await s.call('DELETE', '/api/hosts/192.0.2.10')).status, 404);
    assert.equal((await s.call('DELETE', '/api/hosts/local')).status, 404);
    // the remote VM shows its last recorded state; export and verify need it local
    const vm = await s.call('GET', '/api/vms/remote1');
    assert.equal(vm.body.host, 'xen2');
    assert.equal(vm.body.cpus, 2);
    const exp = await s.call('POST', '/api/vms/remote1/export', { body: { target: 'libvirt' } });
    assert.equal(exp.status, 422);
    assert.match(exp.body.error.message, /move it to the local engine/);
    const mv = await s.call('POST', '/api/vms/remote1/move', { body: { to: 'nowhere' } });
    assert.equal(mv.status, 404);
    const same = await s.call('POST', '/api/vms/remote1/move', { body: { to: 'xen2' } });
    assert.equal(same.status, 400);
    assert.match(same.body.error.message, /already on xen2/);
  });

  test('library: uploads stream to disk (hidden until complete), list, download, overwrite, size limit, paths outside refused', async (t) => {
    const s = await startServer(t, { uploadLimit: 4 << 20 });
    const data = Buffer.alloc(3 << 20, 0xa7);
    const up = await upload(s, 'images/a.img', data);
    assert.equal(up.status, 201, up.raw);
    assert.deepEqual(up.body, { path: 'images/a.img', size: data.length, sha256: createHash('sha256').update(data).digest('hex') });
    assert.equal((await upload(s, 'images/a.img', data)).status, 409, 'an existing file is kept');
    const over = await s.call('PUT', '/api/library/files/images/a.img?overwrite=true', { payload: Buffer.from('new'), headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(over.status, 201);
    assert.equal(over.body.size, 3);
    const dl = await s.app.inject({ method: 'GET', url: '/api/library/files/images/a.img', headers: { authorization: `Bearer ${s.adminToken}` } });
    assert.equal(dl.statusCode, 200);
    assert.equal(dl.body, 'new');
    await s.call('GET', '/api/library/files/images/a.img');
    assert.equal((await s.call('GET', '/api/library/files/images')).status, 400, 'a folder is not downloaded');
    const list = await s.call('GET', '/api/library');
    assert.deepEqual(list.body.items.map((e: any) => [e.path, e.type, e.size]), [['images', 'folder', 0], ['images/a.img', 'file', 3]]);
    assert.equal((await s.call('GET', '/api/library?under=images')).body.items.length, 1);
    assert.equal((await s.call('GET', '/api/library?under=nope')).status, 404);

    // too large: refused from Content-Length before a byte is read, or while streaming
    const tooBig = await upload(s, 'big.img', Buffer.alloc((4 << 20) + 1));
    assert.equal(tooBig.status, 413);
    assert.equal(tooBig.body.error.code, 'ERR_TOO_LARGE');
    const chunks = Readable.from((function* () {
      for (let i = 0; i < 5; i++) yield Buffer.alloc(1 << 20, i);
    })());
    const streamed = await s.call('PUT', '/api/library/files/big2.img', { payload: chunks, headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(streamed.status, 413, streamed.raw);
    const root = join(s.data, 'library');
    assert.deepEqual(readdirSync(root).sort(), ['images'], 'nothing of a refused upload is left, not even its hidden part');

    // streamed: the hidden part grows on disk while the client is still sending
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const slow = Readable.from((async function* () {
      yield Buffer.alloc(1 << 20, 1);
      await gate;
      yield Buffer.alloc(1 << 20, 2);
    })());
    const pending = s.call('PUT', '/api/library/files/images/slow.img', { payload: slow, headers: { 'content-type': 'application/octet-stream' } });
    const partSize = () => readdirSync(join(root, 'images')).filter((n) => n.startsWith('.upload-')).map((n) => statSync(join(root, 'images', n)).size)[0] ?? 0;
    for (let i = 0; i < 500 && partSize() < 1 << 20; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(partSize(), 1 << 20, 'the first MiB is on disk before the upload ends');
    assert.equal(existsSync(join(root, 'images', 'slow.img')), false, 'the file appears only once complete');
    release();
    assert.equal((await pending).status, 201);
    assert.equal(statSync(join(root, 'images', 'slow.img')).size, 2 << 20);

    for (const bad of ['..%2Fescape.img', 'images/..%2F..%2Fescape.img', '.hidden', 'images/.x']) {
      const r = await upload(s, bad, Buffer.from('x'));
      assert.equal(r.status, 400, `${bad}: ${r.raw}`);
    }
    assert.equal((await s.call('DELETE', '/api/library/files/images/slow.img')).status, 204);
    assert.equal((await s.call('DELETE', '/api/library/files/images/slow.img')).status, 404);
    assert.equal((await s.call('DELETE', '/api/library/files/images')).status, 204);
    assert.deepEqual((await s.call('GET', '/api/library')).body.items, []);
  });

  test('VMs: import (a job), list, get with the VmSpec, tags, export and convert (jobs), busy and state refusals, remove', async (t) => {
    const s = await startServer(t);
    const dir = await tempDir(t);
    const disk = await diskImage(dir);
    assert.equal((await upload(s, 'src/web.qcow2', disk)).status, 201);
    assert.equal((await upload(s, 'src/bad.cfg', Buffer.from('this is not a descriptor\n'))).status, 201);

    const missing = await s.call('POST', '/api/vms', { body: { source: 'src/none.qcow2' } });
    assert.equal(missing.status, 404);
    const bad = await s.call('POST', '/api/vms', { body: { source: 'src/bad.cfg' } });
    assert.equal(bad.status, 422);
    assert.equal(bad.body.error.code, 'ERR_FORMAT_UNKNOWN');
    assert.equal((await s.call('POST', '/api/vms', { body: { source: 'src/web.qcow2', host: 'nohost' } })).status, 404);

    const job = await importVm(s, { source: 'src/web.qcow2', adapt: false });
    assert.equal(job.state, 'succeeded', JSON.stringify(job));
    assert.equal(job.target, 'web');
    assert.equal(job.result.vm, 'web');
    assert.ok(job.log.some((l: any) => /disk 0: .*web\.qcow2: overlay/.test(l.line)), JSON.stringify(job.log));
    assert.equal((await s.call('POST', '/api/vms', { body: { source: 'src/web.qcow2' } })).status, 409, 'the name is taken');
    const second = await importVm(s, { source: 'src/web.qcow2', name: 'web2', copy: true, adapt: false });
    assert.equal(second.state, 'succeeded');

    const list = await s.call('GET', '/api/vms');
    assert.deepEqual(list.body.items.map((v: any) => [v.name, v.state, v.host, v.cpus, v.memoryBytes]), [['web', 'stopped', 'local', 1, 1 << 30], ['web2', 'stopped', 'local', 1, 1 << 30]]);
    assert.equal(list.body.total, 2);
    const vm = await s.call('GET', '/api/vms/web');
    assert.equal(vm.body.spec.disks[0].bus, 'sata');
    assert.equal(vm.body.disks[0].mode, 'overlay');
    assert.equal(vm.body.sourceKind, 'disk');
    assert.equal((await s.call('GET', '/api/vms/nope')).status, 404);

    const tags = await s.call('PUT', '/api/vms/web/tags', { body: { tags: ['env=prod', 'web'] } });
    assert.deepEqual(tags.body.tags, ['env=prod', 'web']);
    assert.deepEqual((await s.call('GET', '/api/vms?tag=web')).body.items.map((v: any) => v.name), ['web']);
    assert.equal((await s.call('PUT', '/api/vms/nope/tags', { body: { tags: [] } })).status, 404);

    // state refusals: these VMs are stopped
    for (const verb of ['pause', 'resume']) {
      const r = await s.call('POST', `/api/vms/web/${verb}`);
      assert.equal(r.status, 409, `${verb}: ${r.raw}`);
      assert.equal(r.body.error.code, 'ERR_VM_STATE');
    }
    assert.equal((await s.call('POST', '/api/vms/web/console-token')).status, 409);
    assert.equal((await s.call('POST', '/api/vms/nope/start')).status, 404);
    assert.equal((await s.call('POST', '/api/vms/nope/kill')).status, 404);
    assert.equal((await s.call('POST', '/api/vms/nope/stop', { body: {} })).status, 404);
    assert.equal((await s.call('POST', '/api/vms/nope/verify', { body: {} })).status, 404);
    // a stopped VM: stop is graceful at once, kill does nothing
    const stop = await s.call('POST', '/api/vms/web/stop', { body: {} });
    assert.equal(stop.body.stop, 'graceful');
    assert.equal((await s.call('POST', '/api/vms/web/kill')).body.state, 'stopped');
    const moved = await s.call('POST', '/api/vms/web/move', { body: { to: 'local' } });
    assert.equal(moved.status, 400);

    // a VM held by a job refuses other operations
    const release = s.app.polyvisor.locks.acquire('web', 'a test');
    const busy = await s.call('POST', '/api/vms/web/start');
    assert.equal(busy.status, 409);
    assert.match(busy.body.error.message, /web is busy: a test is in progress/);
    assert.equal((await s.call('POST', '/api/vms/web/export', { body: { target: 'libvirt' } })).status, 409);
    release();

    const unknownTarget = await s.call('POST', '/api/vms/web/export', { body: { target: 'floppy' } });
    assert.equal(unknownTarget.status, 400);
    assert.match(unknownTarget.body.error.message, /unknown target "floppy"/);
    const exp = await s.call('POST', '/api/vms/web/export', { body: { target: 'libvirt', diskFormat: 'raw' } });
    assert.equal(exp.status, 202, exp.raw);
    const expJob = await settled(s, exp.body.id);
    assert.equal(expJob.state, 'succeeded', JSON.stringify(expJob));
    assert.deepEqual(expJob.result.files.sort(), ['exports/web-libvirt/web-disk0.img', 'exports/web-libvirt/web.xml']);
    const raw = readFileSync(join(s.data, 'library', 'exports/web-libvirt/web-disk0.img'));
    assert.equal(raw.length, 16 << 20);
    assert.ok(raw.subarray(0, 1 << 20).every((b) => b === 0x5a), 'the exported disk holds what the VM holds');
    assert.equal((await s.call('POST', '/api/vms/web/export', { body: { target: 'libvirt' } })).status, 202, 'the same folder again');

    // what an import would read, and what the vmx target would not carry, before any job
    const seen = await s.call('POST', '/api/library/inspect', { body: { source: 'src/web.qcow2', target: 'vmx' } });
    assert.equal(seen.status, 200, seen.raw);
    assert.equal(seen.body.disks.length, 1);
    assert.equal(seen.body.disks[0].format, 'qcow2');
    assert.ok(Array.isArray(seen.body.targetNotes));
    assert.equal((await s.call('POST', '/api/library/inspect', { body: { source: '../../etc/passwd' } })).status >= 400, true, 'outside the library is refused');
    const conv = await s.call('POST', '/api/library/convert', { body: { source: 'src/web.qcow2', target: 'vmx', out: 'vmware/web' } });
    assert.equal(conv.status, 202);
    const convJob = await settled(s, conv.body.id);
    assert.equal(convJob.state, 'succeeded', JSON.stringify(convJob));
    assert.ok(convJob.result.files.includes('vmware/web/web.vmx'));
    assert.ok(convJob.done > 0 && convJob.done === convJob.total, 'progress reached the end');
    const again = await settled(s, (await s.call('POST', '/api/library/convert', { body: { source: 'src/web.qcow2', target: 'vmx', out: 'vmware/web' } })).body.id);
    assert.equal(again.state, 'failed', 'existing files are not replaced without force');
    assert.equal(again.error.code, 'ERR_EXISTS');
    assert.equal((await s.call('POST', '/api/library/convert', { body: { source: 'src/web.qcow2', target: 'nope', out: 'x' } })).status, 400);

    const jobs = await s.call('GET', '/api/jobs');
    assert.deepEqual(jobs.body.items.map((j: any) => j.kind).sort(), ['convert', 'convert', 'export', 'export', 'import', 'import']);
    assert.equal((await s.call('GET', '/api/jobs?state=failed')).body.items.length >= 1, true);
    const page = await s.call('GET', '/api/jobs?limit=2');
    assert.equal(page.body.items.length, 2);
    assert.ok(page.body.next);

    assert.equal((await s.call('DELETE', '/api/vms/web')).status, 204);
    assert.equal((await s.call('GET', '/api/vms/web')).status, 404);
    assert.equal((await s.call('DELETE', '/api/vms/web')).status, 404);
    assert.equal(existsSync(join(s.data, 'vms', 'web')), false);
    assert.equal((await s.call('DELETE', '/api/vms/web2?force=true')).status, 204);
  });

  test('jobs: progress and log, cancel of a running and a queued job (the signal fires), cancel of an ended job changes nothing', async (t) => {
    const s = await startServer(t, { jobConcurrency: 1 });
    const { jobs } = s.app.polyvisor;
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    const a = jobs.start('test', 'a', 'admin', async (ctx) => {
      ctx.log('first line\nsecond line');
      ctx.progress(5, 10);
      started();
      await new Promise<void>((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason)));
    });
    const b = jobs.start('test', 'b', 'admin', async () => 'never');
    await running;
    assert.equal((await s.call('GET', `/api/jobs/${b.id}`)).body.state, 'queued');
    const cancelB = await s.call('POST', `/api/jobs/${b.id}/cancel`);
    assert.equal(cancelB.status, 202);
    const cancelA = await s.call('POST', `/api/jobs/${a.id}/cancel`);
    assert.equal(cancelA.status, 202);
    const ja = await settled(s, a.id);
    const jb = await settled(s, b.id);
    assert.equal(ja.state, 'cancelled');
    assert.equal(ja.error.code, 'ERR_ABORTED');
    assert.deepEqual(ja.log.map((l: any) => l.line), ['first line', 'second line', 'cancelled: cancelled by a user']);
    assert.equal(ja.done, 5);
    assert.equal(jb.state, 'cancelled');
    assert.equal(jb.startedAt, null, 'a queued job never started');
    const again = await s.call('POST', `/api/jobs/${a.id}/cancel`);
    assert.equal(again.body.state, 'cancelled');
    assert.equal((await s.call('POST', '/api/jobs/00000000-0000-4000-8000-000000000000/cancel')).status, 404);
    assert.equal((await s.call('GET', '/api/jobs/00000000-0000-4000-8000-000000000000')).status, 404);
    const failing = jobs.start('test', 'c', 'admin', async () => {
      throw new Error('boom');
    });
    const jc = await settled(s, failing.id);
    assert.equal(jc.state, 'failed');
    assert.deepEqual(jc.error, { code: 'ERR_INTERNAL', message: 'boom' });
  });

  test('the audit log records every state-changing request, allowed or refused: who, what, when, status; reads are not recorded', async (t) => {
    const s = await startServer(t);
    const viewer = await s.user('vera', 'viewer');
    const before = Date.now();
    await s.call('POST', '/api/vms/web/start', { token: viewer });
    await s.call('POST', '/api/users', { token: null, body: { name: 'x', role: 'admin' } });
    await s.call('GET', '/api/vms', { token: viewer });
    await s.call('PUT', '/api/library/files/a/b.txt', { payload: Buffer.from('hello'), headers: { 'content-type': 'application/octet-stream' } });
    const log = await s.call('GET', '/api/audit');
    const items = log.body.items as any[];
    assert.deepEqual(
      items.map((e) => [e.user, e.role, e.method, e.route, e.target, e.status]),
      [
        ['admin', 'admin', 'PUT', '/api/library/files/*', { path: 'a/b.txt', size: 5, sha256: createHash('sha256').update('hello').digest('hex') }, 201],
        [null, null, 'POST', '/api/users', {}, 401],
        ['vera', 'viewer', 'POST', '/api/vms/:name/start', { name: 'web' }, 403],
        ['admin', 'admin', 'POST', '/api/users', { name: 'vera', role: 'viewer' }, 201],
      ],
    );
    assert.ok(items.every((e) => Date.parse(e.at) >= before - 60_000 && Date.parse(e.at) <= Date.now()));
    assert.ok(items[0].seq > items[1].seq, 'newest first');
    const page = await s.call('GET', `/api/audit?limit=1&before=${items[0].seq}`);
    assert.equal(page.body.items[0].seq, items[1].seq);
    assert.equal(page.body.next, items[1].seq);
    assert.deepEqual((await s.call('GET', '/api/audit?user=vera')).body.items.map((e: any) => e.status), [403]);

    // a job's request names the job
    const dir = await tempDir(t);
    await upload(s, 'w.qcow2', await diskImage(dir, 'w.qcow2'));
    const job = await importVm(s, { source: 'w.qcow2', adapt: false });
    const top = (await s.call('GET', '/api/audit?limit=1')).body.items[0];
    assert.deepEqual([top.route, top.status, top.job, top.target], ['/api/vms', 202, job.id, { source: 'w.qcow2', name: 'w', host: 'local' }]);
  });

  test('inventory paging: name order, keyset pages, filters and totals over 250 VMs on 5 hosts', async (t) => {
    const s = await startServer(t);
    const { store } = s.app.polyvisor;
    store.batch(() => {
      for (let h = 0; h < 5; h++) store.addHost({ name: `xen${h}`, uri: `xen+ssh://192.0.2.${h + 1}`, driver: 'xen', options: {} });
      for (let i = 0; i < 250; i++) {
        const name = `vm-${String(i).padStart(4, '0')}`;
        store.addVm({ name, uuid: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`, host: `xen${i % 5}`, source: '/x', sourceKind: 'xl', spec: { name, firmware: { type: 'bios' }, virtualization: 'pv', cpu: { count: 1 + (i % 4) }, memory: { bytes: 256 << 20 }, disks: [], nics: [], consoles: [], graphics: [], os: { family: 'linux' }, extra: {} }, disks: [] });
      }
    });
    const seen: string[] = [];
    let after: string | null = null;
    for (let i = 0; i < 10; i++) {
      const r: any = await s.call('GET', `/api/vms?limit=100${after ? `&after=${after}` : ''}`, { token: s.adminToken });
      assert.equal(r.body.total, 250);
      seen.push(...r.body.items.map((v: any) => v.name));
      after = r.body.next;
      if (!after) break;
    }
    assert.equal(seen.length, 250);
    assert.deepEqual(seen, [...seen].sort());
    const xen3 = await s.call('GET', '/api/vms?host=xen3&limit=1000');
    assert.equal(xen3.body.total, 50);
    assert.ok(xen3.body.items.every((v: any) => v.host === 'xen3'));
    assert.equal(xen3.body.next, null);
    assert.equal((await s.call('GET', '/api/vms?state=running')).body.total, 0);
  });

  test('every operation of the OpenAPI document was reached by a test (boot.test.ts reaches the running-VM successes)', async (t) => {
    const s = await startServer(t);
    const all = [
      'GET /api/health', 'GET /api/openapi.json', 'GET /api/me', 'GET /api/hosts', 'POST /api/hosts', 'DELETE /api/hosts/{name}',
      'GET /api/vms', 'GET /api/vms/{name}', 'POST /api/vms', 'POST /api/vms/{name}/start', 'POST /api/vms/{name}/stop', 'POST /api/vms/{name}/kill',
      'POST /api/vms/{name}/pause', 'POST /api/vms/{name}/resume', 'DELETE /api/vms/{name}', 'PUT /api/vms/{name}/tags', 'POST /api/vms/{name}/move',
      'POST /api/vms/{name}/export', 'POST /api/vms/{name}/verify', 'POST /api/vms/{name}/console-token', 'GET /api/library', 'GET /api/library/files/{path}',
      'DELETE /api/library/files/{path}', 'POST /api/library/convert', 'GET /api/jobs', 'GET /api/jobs/{id}', 'POST /api/jobs/{id}/cancel',
      'GET /api/jobs/{id}/events', 'GET /api/users', 'POST /api/users', 'DELETE /api/users/{name}', 'GET /api/audit', 'PUT /api/library/files/{path}',
      'POST /api/library/inspect',
    ];
    assert.deepEqual([...all].sort(), s.operations().sort(), 'the list above names every operation');
    assert.deepEqual([...all].sort().filter((o) => !REACHED.has(o)), []);
  });
});
