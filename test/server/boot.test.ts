/**
 * A real guest through the API (two TCG boots): uploaded into the library, imported (a job),
 * started, its console token spent once, paused, resumed, stopped (forced: the guest ignores
 * ACPI), verified by booting it again behind overlays (a job, the console log in the
 * library), removed; no QEMU left behind.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { buildTestGuest, GUEST_MARKER } from '../guests/build.js';
import { qemuImg, qemuIo, tempDir } from '../helpers.js';
import { settled, startServer, type TestServer } from './helpers.js';

const run = promisify(execFile);

async function qemusUnder(needle: string): Promise<string[]> {
  try {
    const { stdout } = await run('pgrep', ['-f', `qemu-system.*${needle}`]);
    return stdout.split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

async function put(s: TestServer, path: string, data: Buffer): Promise<void> {
  const r = await s.call('PUT', `/api/library/files/${path}`, { payload: data, headers: { 'content-type': 'application/octet-stream' } });
  assert.equal(r.status, 201, r.raw);
}

describe('a real guest through the API (TCG boots)', { timeout: 600_000 }, () => {
  test('upload, import, start, console token, pause, resume, stop, verify, remove', async (t) => {
    const s = await startServer(t);
    t.after(async () => {
      await s.app.polyvisor.estate.remove('held', { force: true }).catch(() => undefined);
    });
    const dir = await tempDir(t);
    const g = await buildTestGuest();
    const disk = join(dir, 'disk.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', disk, '16M');
    await qemuIo(disk, 'qcow2', 'write -P 0x5a 0 1M');
    const cfg = ['name = "held"', 'type = "pv"', 'kernel = "vmlinuz"', 'ramdisk = "initrd.gz"', 'extra = "console=hvc0 quiet panic=-1 pv.hold"', 'memory = 256', 'disk = [ "format=qcow2,vdev=xvda,access=rw,target=disk.qcow2" ]', ''].join('\n');
    await writeFile(join(dir, 'held.cfg'), cfg);
    for (const [name, file] of [['vmlinuz', g.kernel], ['initrd.gz', g.initrd], ['disk.qcow2', disk], ['held.cfg', join(dir, 'held.cfg')]] as const) await put(s, `guest/${name}`, readFileSync(file));

    const imp = await s.call('POST', '/api/vms', { body: { source: 'guest/held.cfg', adapt: false } });
    assert.equal(imp.status, 202, imp.raw);
    const job = await settled(s, imp.body.id);
    assert.equal(job.state, 'succeeded', JSON.stringify(job));

    const viewer = await s.user('vera', 'viewer');
    assert.equal((await s.call('POST', '/api/vms/held/start', { token: viewer })).status, 403, 'a viewer cannot start a VM');
    const started = await s.call('POST', '/api/vms/held/start');
    assert.equal(started.status, 200, started.raw);
    assert.equal(started.body.state, 'running');
    assert.ok(started.body.pid > 1);
    assert.equal((await s.call('POST', '/api/vms/held/start')).status, 409, 'already running');
    const log = join(s.data, 'vms', 'held', 'serial.log');
    for (let i = 0; i < 1200 && !(existsSync(log) && readFileSync(log, 'utf8').includes(GUEST_MARKER)); i++) await new Promise((r) => setTimeout(r, 100));
    assert.match(readFileSync(log, 'utf8'), new RegExp(GUEST_MARKER), 'the guest came up');
    assert.equal((await s.call('GET', '/api/vms?state=running', { token: viewer })).body.items[0].name, 'held');
    assert.equal((await s.call('POST', '/api/vms/held/export', { body: { target: 'libvirt' } })).status, 409, 'a running VM is not exported');
    assert.equal((await s.call('POST', '/api/vms/held/verify', { body: {} })).status, 409);
    assert.equal((await s.call('POST', '/api/vms/held/move', { body: { to: 'elsewhere' } })).status, 404);

    // a console token: short-lived, for this VM, spent once
    const ct = await s.call('POST', '/api/vms/held/console-token');
    assert.equal(ct.status, 201);
    assert.ok(Date.parse(ct.body.expiresAt) - Date.now() <= 60_000);
    const { auth } = s.app.polyvisor;
    assert.equal(auth.useConsoleToken(ct.body.token, 'other'), undefined, 'not for another VM');
    assert.deepEqual(auth.useConsoleToken(ct.body.token, 'held'), { name: 'admin', role: 'admin' });
    assert.equal(auth.useConsoleToken(ct.body.token, 'held'), undefined, 'single use');
    const late = await s.call('POST', '/api/vms/held/console-token');
    assert.equal(auth.useConsoleToken(late.body.token, 'held', Date.now() + 61_000), undefined, 'expired after 60 s');
    assert.equal((await s.call('GET', '/api/me', { token: late.body.token })).status, 401, 'a console token is no API token');

    assert.equal((await s.call('POST', '/api/vms/held/pause')).body.state, 'paused');
    assert.equal((await s.call('GET', '/api/vms/held')).body.state, 'paused');
    assert.equal((await s.call('POST', '/api/vms/held/resume')).body.state, 'running');
    const stop = await s.call('POST', '/api/vms/held/stop', { body: { timeoutSeconds: 1 } });
    assert.equal(stop.status, 200, stop.raw);
    assert.equal(stop.body.stop, 'forced', 'no acpid in this guest');
    assert.equal(stop.body.vm.state, 'stopped');
    assert.deepEqual(await qemusUnder(s.data), []);

    const v = await s.call('POST', '/api/vms/held/verify', { body: { expect: GUEST_MARKER, timeoutSeconds: 180 } });
    assert.equal(v.status, 202, v.raw);
    const vj = await settled(s, v.body.id);
    assert.equal(vj.state, 'succeeded', JSON.stringify(vj));
    assert.equal(vj.result.ok, true, JSON.stringify(vj.result));
    assert.equal(vj.result.reason, 'expected-text');
    assert.equal(vj.result.consoleLog, 'verify/held/console.log');
    assert.ok(vj.log.some((l: any) => l.line.includes(GUEST_MARKER)), 'the console reached the job log');
    assert.match(readFileSync(join(s.data, 'library', 'verify/held/console.log'), 'utf8'), new RegExp(GUEST_MARKER));
    assert.equal((await s.call('GET', '/api/vms/held')).body.state, 'stopped', 'verify left the VM as it was');

    assert.equal((await s.call('POST', '/api/vms/held/kill')).status, 200);
    assert.equal((await s.call('DELETE', '/api/vms/held')).status, 204);
    assert.deepEqual(await qemusUnder(s.data), [], 'no QEMU left behind');
  });
});
