/**
 * The VM store and the local engine through the CLI, as a user and a script meet them:
 * run, import, start, ps, console, stop, kill, rm; state that survives Polyvisor being killed;
 * sources never written; no QEMU left behind. Real guests boot under TCG.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import { existsSync, readdirSync, readlinkSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { LocalHost } from '../../src/hosts/local.js';
import { Store } from '../../src/store/store.js';
import { isPolyvisorError } from '../../src/errors.js';
import { qemuDigest, qemuImg, qemuIo, tempDir } from '../helpers.js';
import { buildTestGuest, DISK_LINE, GUEST_MARKER } from '../guests/build.js';

const run = promisify(execFile);
const CLI = fileURLToPath(new URL('../../../bin/polyvisor', import.meta.url));

function pv(data: string, ...args: string[]) {
  const r = spawnSync(CLI, [...args], { encoding: 'utf8', env: { ...process.env, POLYVISOR_DATA: data }, timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

interface Running {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
  /** resolves when stdout has shown `text` (rejects if the process ends first) */
  waitFor(text: string | RegExp, ms?: number): Promise<void>;
}

function pvSpawn(data: string, ...args: string[]): Running {
  const child = spawn(CLI, [...args], { env: { ...process.env, POLYVISOR_DATA: data }, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const waiters: Array<() => void> = [];
  child.stdout!.setEncoding('utf8').on('data', (s: string) => {
    out += s;
    waiters.forEach((w) => w());
  });
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (err += s));
  const exited = new Promise<number | null>((r) => child.once('exit', (code, sig) => r(code ?? (sig ? -1 : null))));
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    waitFor(text, ms = 90_000) {
      const seen = () => (typeof text === 'string' ? out.includes(text) : text.test(out));
      return new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`timed out waiting for ${text}; stdout: ${out.slice(-500)} stderr: ${err.slice(-500)}`)), ms);
        const check = () => {
          if (seen()) {
            clearTimeout(t);
            resolve();
          }
        };
        waiters.push(check);
        void exited.then(() => {
          if (!seen()) {
            clearTimeout(t);
            reject(new Error(`exited before ${text}; stdout: ${out.slice(-500)} stderr: ${err.slice(-500)}`));
          }
        });
        check();
      });
    },
  };
}

/** QEMU processes whose command line names `needle` (the data folder). */
async function qemusUnder(needle: string): Promise<string[]> {
  try {
    const { stdout } = await run('pgrep', ['-f', `qemu-system.*${needle}`]);
    return stdout.split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

async function sha256(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}

/** A folder with the test guest as an xl.cfg PV VM: its kernel and initrd beside it, one qcow2 disk. */
async function guestFolder(dir: string, name: string, extra = ''): Promise<{ cfg: string; disk: string }> {
  const g = await buildTestGuest();
  await copyFile(g.kernel, join(dir, 'vmlinuz'));
  await copyFile(g.initrd, join(dir, 'initrd.gz'));
  const disk = join(dir, 'disk.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', disk, '16M');
  await qemuIo(disk, 'qcow2', 'write -P 0x5a 0 1M', 'write -P 0xa5 8M 64k');
  const cfg = join(dir, `${name}.cfg`);
  await writeFile(
    cfg,
    [`name = "${name}"`, 'type = "pv"', 'kernel = "vmlinuz"', 'ramdisk = "initrd.gz"', `extra = "console=hvc0 quiet panic=-1 ${extra}"`, 'memory = 256', 'disk = [ "format=qcow2,vdev=xvda,access=rw,target=disk.qcow2" ]', ''].join('\n'),
  );
  return { cfg, disk };
}

function psJson(data: string): Array<{ name: string; state: string; pid: number | null }> {
  const r = pv(data, 'ps', '--json');
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
}

describe('the VM store on the local engine (real TCG boots)', { concurrency: false, timeout: 600_000 }, () => {
  test('run: the console reaches stdout, the guest sees its disk, the source is not modified, nothing is left', async (t) => {
    const dir = await tempDir(t);
    const data = join(dir, 'data');
    const { cfg, disk } = await guestFolder(dir, 'runner');
    const before = await sha256(disk);
    const expected = await qemuDigest(disk, 'qcow2', dir);
    const r = pv(data, 'run', cfg, '--accel', 'tcg');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(GUEST_MARKER));
    const m = DISK_LINE.exec(r.stdout);
    assert.ok(m, r.stdout);
    assert.equal(m![2], expected, 'the guest reads the same disk content as qemu-img');
    assert.equal(await sha256(disk), before, 'the source disk is byte-for-byte unchanged');
    assert.deepEqual(psJson(data), [], 'run removes its VM');
    assert.deepEqual(await qemusUnder(data), [], 'no QEMU left behind');
  });

  test('import, start, ps, console (detach with Ctrl-]), stop (forced after the timeout), kill, rm', async (t) => {
    const dir = await tempDir(t);
    const data = join(dir, 'data');
    const { cfg, disk } = await guestFolder(dir, 'held', 'pv.hold');
    const before = await sha256(disk);
    t.after(() => void pv(data, 'rm', '--force', 'held'));

    const imp = pv(data, 'vm', 'import', cfg, '--json');
    assert.equal(imp.status, 0, imp.stderr);
    const imported = JSON.parse(imp.stdout);
    assert.equal(imported.name, 'held');
    assert.equal(imported.disks[0].mode, 'overlay');
    assert.equal(psJson(data)[0]!.state, 'stopped');
    assert.equal(pv(data, 'vm', 'import', cfg).status, 1, 'a second VM of the same name is refused');

    const st = pv(data, 'start', 'held', '--accel', 'tcg', '--json');
    assert.equal(st.status, 0, st.stderr);
    const pid = JSON.parse(st.stdout).pid as number;
    assert.ok(pid > 1);
    let ps = psJson(data);
    assert.equal(ps[0]!.state, 'running');
    assert.equal(ps[0]!.pid, pid);
    assert.equal(pv(data, 'start', 'held').status, 1, 'starting a running VM is refused');
    assert.equal(pv(data, 'rm', 'held').status, 1, 'removing a running VM needs --force');

    // the console: this guest prints "tick" every second once up
    const con = pvSpawn(data, 'console', 'held');
    await con.waitFor('tick');
    con.child.stdin!.write(Buffer.from([0x1d]));
    assert.equal(await con.exited, 0, con.stderr());
    assert.equal(psJson(data)[0]!.state, 'running', 'detaching leaves the VM running');

    // pause and resume go through the control socket
    assert.equal(pv(data, 'pause', 'held').status, 0);
    assert.equal(psJson(data)[0]!.state, 'paused');
    assert.equal(pv(data, 'resume', 'held').status, 0);

    // no acpid in this guest: the ACPI request is ignored and the VM is forced off
    const stop = pv(data, 'stop', 'held', '--timeout', '1', '--json');
    assert.equal(stop.status, 0, stop.stderr);
    assert.equal(JSON.parse(stop.stdout).stop, 'forced');
    ps = psJson(data);
    assert.equal(ps[0]!.state, 'stopped');
    assert.equal(ps[0]!.pid, null);
    assert.deepEqual(await qemusUnder(data), []);

    assert.equal(pv(data, 'start', 'held', '--accel', 'tcg').status, 0);
    assert.equal(pv(data, 'kill', 'held').status, 0);
    assert.equal(psJson(data)[0]!.state, 'stopped');
    assert.deepEqual(await qemusUnder(data), []);

    assert.equal(pv(data, 'rm', 'held').status, 0);
    assert.deepEqual(psJson(data), []);
    assert.equal(existsSync(join(data, 'vms', 'held')), false, 'the VM folder is gone');
    assert.equal(await sha256(disk), before, 'the source disk is unchanged');
  });

  test('Polyvisor killed while a VM runs: ps shows it running, then stopped once its QEMU ends', async (t) => {
    const dir = await tempDir(t);
    const data = join(dir, 'data');
    const { cfg } = await guestFolder(dir, 'orphan', 'pv.hold');
    t.after(() => void pv(data, 'rm', '--force', 'orphan'));
    const r = pvSpawn(data, 'run', cfg, '--accel', 'tcg');
    await r.waitFor('tick');
    r.child.kill('SIGKILL');
    await r.exited;
    const ps = psJson(data);
    assert.equal(ps.length, 1);
    assert.equal(ps[0]!.state, 'running', 'the guest runs on in its own QEMU');
    const qemus = await qemusUnder(data);
    assert.deepEqual(qemus, [String(ps[0]!.pid)]);
    // QEMU dies behind the store's back: the next command sees it
    process.kill(ps[0]!.pid!, 'SIGKILL');
    for (let i = 0; i < 50 && (await qemusUnder(data)).length; i++) await new Promise((res) => setTimeout(res, 100));
    assert.equal(psJson(data)[0]!.state, 'stopped');
    assert.equal(pv(data, 'rm', 'orphan').status, 0);
  });

  test('run interrupted (SIGINT): the VM is killed and removed, exit status 130', async (t) => {
    const dir = await tempDir(t);
    const data = join(dir, 'data');
    const { cfg, disk } = await guestFolder(dir, 'interrupted', 'pv.hold');
    const before = await sha256(disk);
    const r = pvSpawn(data, 'run', cfg, '--accel', 'tcg');
    await r.waitFor('tick');
    r.child.kill('SIGINT');
    assert.equal(await r.exited, 130);
    assert.deepEqual(psJson(data), []);
    assert.deepEqual(await qemusUnder(data), []);
    assert.equal(await sha256(disk), before);
  });

  test('run --persist: the guest writes to the source itself', async (t) => {
    const dir = await tempDir(t);
    const data = join(dir, 'data');
    const { cfg, disk } = await guestFolder(dir, 'persisted');
    // the guest only reads its disk; QEMU opening it read-write shows as an unchanged image
    // that QEMU held open for writing: check the store recorded the mode and the run worked
    const r = pv(data, 'run', cfg, '--persist', '--keep', '--accel', 'tcg');
    assert.equal(r.status, 0, r.stderr);
    const vm = JSON.parse(pv(data, 'ps', '--json').stdout)[0];
    assert.equal(vm.disks[0].mode, 'persist');
    assert.equal(vm.disks[0].path, disk);
    assert.equal(pv(data, 'rm', 'persisted').status, 0);
    assert.ok(existsSync(disk), 'rm does not remove a persisted source');
  });
});

describe('the store without booting', () => {
  test('a pid that is not the VM\'s QEMU is not taken for it (pid reuse)', async (t) => {
    const dir = await tempDir(t);
    const data = join(dir, 'data');
    const { cfg } = await guestFolder(dir, 'ghost');
    const host = new LocalHost({ dataDir: data, accel: 'tcg' });
    try {
      await host.import(cfg);
      // the store says running with a pid that is alive but is not this VM's QEMU
      host.store.setState('ghost', 'running', { pid: process.pid, startedAt: new Date().toISOString() });
      assert.equal(host.get('ghost').state, 'stopped');
      assert.equal(host.store.getVm('ghost').state, 'stopped', 'and the store is corrected');
    } finally {
      await host.close();
    }
  });

  test('names are checked; a kernel outside the descriptor folder is refused unless allowed', async (t) => {
    const dir = await tempDir(t);
    const data = join(dir, 'data');
    const { cfg } = await guestFolder(dir, 'named');
    const host = new LocalHost({ dataDir: data });
    try {
      await assert.rejects(host.import(cfg, { name: '../escape' }), (e) => isPolyvisorError(e, 'ERR_USAGE'));
      await assert.rejects(host.import(cfg, { name: 'a b' }), (e) => isPolyvisorError(e, 'ERR_USAGE'));
      const hostile = join(dir, 'hostile.cfg');
      await writeFile(hostile, (await readFile(cfg, 'utf8')).replace('kernel = "vmlinuz"', 'kernel = "/etc/passwd"').replace('name = "named"', 'name = "hostile"'));
      // /etc/passwd is not beside the descriptor: the folder rule refuses it, nothing is imported
      await assert.rejects(host.import(hostile), (e) => isPolyvisorError(e, 'ERR_PATH_OUTSIDE'));
      assert.equal(host.list().length, 0);
      assert.equal(existsSync(join(data, 'vms', 'hostile')), false);
    } finally {
      await host.close();
    }
  });

  test('run: a name another host\'s VM holds is refused once QEMU has started: QEMU killed, folder removed, that VM kept', async (t) => {
    const dir = await tempDir(t);
    const data = join(dir, 'data');
    const { cfg } = await guestFolder(dir, 'first');
    const host = new LocalHost({ dataDir: data, accel: 'tcg' });
    try {
      await host.import(cfg);
      const { createdAt: _c, updatedAt: _u, state: _s, ...first } = host.store.getVm('first');
      // a VM of a remote host has no folder here, so nothing stops the import before the store
      host.store.addVm({ ...first, name: 'taken', host: 'xen7', disks: [] });
      await assert.rejects(host.importAndStart(cfg, { name: 'taken', transient: true, adapt: false }), (e) => isPolyvisorError(e, 'ERR_EXISTS'));
      assert.equal(host.store.getVm('taken').host, 'xen7');
      assert.equal(existsSync(join(data, 'vms', 'taken')), false);
      const left = spawnSync('pgrep', ['-f', join(data, 'vms', 'taken')], { encoding: 'utf8' });
      assert.equal(left.stdout.trim(), '', 'no QEMU of the refused run is left');
      assert.deepEqual(host.list().map((v) => v.name), ['first']);
    } finally {
      await host.close();
    }
  });

  test('an import whose second disk cannot be opened leaves nothing: no folder, the first disk closed', async (t) => {
    const dir = await tempDir(t);
    const data = join(dir, 'data');
    const { cfg, disk } = await guestFolder(dir, 'twodisks');
    // a qcow2 magic and version, then nothing: the disk engine refuses it
    await writeFile(join(dir, 'bad.qcow2'), Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]));
    await writeFile(cfg, (await readFile(cfg, 'utf8')).replace('target=disk.qcow2" ]', 'target=disk.qcow2", "format=qcow2,vdev=xvdb,access=rw,target=bad.qcow2" ]'));
    const host = new LocalHost({ dataDir: data });
    try {
      await assert.rejects(host.import(cfg), (e) => isPolyvisorError(e) && e.file === join(dir, 'bad.qcow2'));
      assert.deepEqual(existsSync(join(data, 'vms')) ? readdirSync(join(data, 'vms')) : [], [], 'no folder is left');
      // the disks open at once: the one that opened is closed all the same
      const open = readdirSync('/proc/self/fd').flatMap((fd) => {
        try {
          return [readlinkSync(join('/proc/self/fd', fd))];
        } catch {
          return [];
        }
      });
      assert.ok(!open.includes(realpathSync(disk)), `${disk} is still open`);
      assert.equal(host.list().length, 0);
    } finally {
      await host.close();
    }
  });

  test('a store from a newer Polyvisor is refused, not damaged', async (t) => {
    const dir = await tempDir(t);
    const s = Store.open(dir);
    s.close();
    const Database = (await import('better-sqlite3')).default;
    const db = new Database(join(dir, 'polyvisor.db'));
    db.prepare('UPDATE schema_version SET version = 99').run();
    db.close();
    assert.throws(() => Store.open(dir), (e) => isPolyvisorError(e, 'ERR_UNSUPPORTED') && /newer/.test((e as Error).message));
  });
});
