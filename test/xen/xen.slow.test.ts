/**
 * The xl driver against a real Xen host: Debian's Xen 4.17 under QEMU (./host.ts), reached
 * over SSH. The tiny test guest (test/guests/build.ts) boots as a PV guest, prints its marker
 * and the SHA-256 of its xvda, and the driver's whole cycle runs on it: define (a qcow2 disk
 * converted to raw on the way), start with the console from the first byte, list, console,
 * pause, resume, stop, kill, export, undefine; then the exported VM boots on the local QEMU
 * engine and shows the same disk checksum. The host's storage folder is named with spaces,
 * quotes and $( ) so that every remote command is shown to quote its arguments.
 *
 * The first run builds the host (debootstrap, a few minutes); later runs boot it from the
 * cache in about a minute.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFile, spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { isPolyvisorError } from '../../src/errors.js';
import { XenDriver } from '../../src/hosts/xen/driver.js';
import { openVmSource } from '../../src/vm/source.js';
import { emptySpec, type VmSpec } from '../../src/vm/spec.js';
import { verifyVm } from '../../src/verify/verify.js';
import { buildTestGuest, makeTestDisk, DISK_LINE, GUEST_MARKER, type TestGuest } from '../guests/build.js';
import { qemuImg, tempDir } from '../helpers.js';
import { startXenHost, type XenHost } from './host.js';
import { readUntil } from './console-text.js';

const run = promisify(execFile);
const CLI = fileURLToPath(new URL('../../../bin/polyvisor', import.meta.url));

/** a PV guest writes to hvc0; the same command line on QEMU falls back to ttyS0 */
const CMDLINE = 'console=ttyS0 console=hvc0 quiet panic=-1';
const STORAGE = "/var/lib/poly visor/it's $(touch /tmp/pv-pwned)";

function pvSpec(name: string, guest: TestGuest, extra = ''): VmSpec {
  return {
    ...emptySpec(name),
    virtualization: 'pv',
    memory: { bytes: 128 << 20 },
    consoles: [{ type: 'xen' }],
    boot: { kernel: guest.kernel, ramdisk: guest.initrd, cmdline: `${CMDLINE}${extra}` },
    disks: [{ device: 'disk', bus: 'xen', target: 'xvda' }],
  };
}

async function sha256(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

/**
 * A disk that boots through pygrub: an MBR partition table with one ext4 partition holding
 * /boot/grub/grub.cfg, the kernel and the initramfs, written without loop devices or mounts
 * (sfdisk on the image file, mke2fs -d at the partition's offset). Returns its SHA-256.
 */
async function grubDisk(dir: string, guest: TestGuest): Promise<{ path: string; sha: string }> {
  const path = join(dir, 'grub.raw');
  const root = join(dir, 'grub-root');
  await mkdir(join(root, 'boot', 'grub'), { recursive: true });
  await copyFile(guest.kernel, join(root, 'boot', 'vmlinuz'));
  await copyFile(guest.initrd, join(root, 'boot', 'initrd.gz'));
  await writeFile(
    join(root, 'boot', 'grub', 'grub.cfg'),
    "set default=0\nset timeout=0\nmenuentry 'Polyvisor test guest' {\n  linux /boot/vmlinuz console=hvc0 quiet panic=-1\n  initrd /boot/initrd.gz\n}\n",
  );
  await run('truncate', ['-s', '32M', path]);
  await run('sh', ['-c', 'printf "label: dos\\nstart=2048, type=83, bootable\\n" | sfdisk -q "$1"', 'sh', path]);
  await run('mke2fs', ['-q', '-t', 'ext4', '-d', root, '-E', `offset=${2048 * 512}`, '-F', path, '31M']);
  return { path, sha: await sha256(path) };
}

describe('xl driver on a real Xen 4.17 host (nested, under TCG)', () => {
  let host: XenHost;
  let driver: XenDriver;
  let dir: string;
  let guest: TestGuest;
  let diskSha: string;
  let qcow2: string;

  before(async () => {
    guest = await buildTestGuest();
    host = await startXenHost();
    dir = await tempDir();
    diskSha = await makeTestDisk(join(dir, 'disk.raw'), 2 << 20);
    qcow2 = join(dir, 'disk.qcow2');
    await qemuImg('convert', '-f', 'raw', '-O', 'qcow2', join(dir, 'disk.raw'), qcow2);
    driver = new XenDriver({ uri: host.uri, identityFile: host.sshTarget.identityFile, knownHostsFile: join(dir, 'known_hosts'), storageDir: STORAGE });
  });

  after(async () => {
    await driver?.dispose();
    await host?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('define a PV guest from a qcow2 disk; boot it with its console from the first byte; list, console, pause, resume, stop', async () => {
    await driver.define({ spec: pvSpec('pv1', guest, ' pv.hold'), disks: [{ path: qcow2, format: 'qcow2' }] });
    assert.deepEqual(
      (await driver.list()).map((e) => [e.name, e.state, e.managed]),
      [['pv1', 'defined', true]],
    );
    // the config on the host is the xl codec's, with the disk as raw beside it
    const cfg = await host.exec(['cat', driver.configOf('pv1')]);
    assert.match(cfg, /type = "pv"/);
    // xl.cfg's single-quoted string escapes the quote in the folder name (xl-syntax.ts)
    assert.ok(cfg.includes(`format=raw, vdev=xvda, access=rw, target=${STORAGE.replace(/'/g, "\\'")}/pv1/disk0.raw`), cfg);

    const con = await driver.startWithConsole('pv1');
    const text = await readUntil(con, /POLYVISOR-DISK \S+ \S+\n/, 240_000);
    assert.ok(text.includes(GUEST_MARKER), text);
    assert.deepEqual(DISK_LINE.exec(text)?.slice(1), ['xvda', diskSha], text);
    await readUntil(con, /tick/, 30_000);
    con.destroy();

    const entry = (await driver.list()).find((e) => e.name === 'pv1')!;
    assert.equal(entry.state, 'running');
    assert.ok(entry.domid! > 0);

    // a second console on the running guest: it keeps printing "tick"
    const con2 = await driver.console('pv1');
    await readUntil(con2, /tick/, 30_000);
    con2.destroy();

    await driver.pause('pv1');
    assert.equal((await driver.list()).find((e) => e.name === 'pv1')!.state, 'paused');
    await driver.resume('pv1');
    assert.equal((await driver.list()).find((e) => e.name === 'pv1')!.state, 'running');

    // the initramfs has no power-off handler for Xen's shutdown request: the power is cut
    assert.equal(await driver.stop('pv1', { timeoutMs: 3000 }), 'forced');
    assert.equal((await driver.list()).find((e) => e.name === 'pv1')!.state, 'defined');

    // nothing in the hostile folder name ran as a command
    assert.equal((await host.ssh.run(['test', '-e', '/tmp/pv-pwned'])).status, 1);
  });

  test('kill cuts a running guest at once; start, kill, pause, define and undefine refuse the wrong state', async () => {
    await driver.start('pv1');
    await assert.rejects(driver.start('pv1'), (e) => isPolyvisorError(e, 'ERR_VM_STATE') && e.message.includes('pv1 is running'));
    await assert.rejects(driver.undefine('pv1'), (e) => isPolyvisorError(e, 'ERR_VM_STATE'));
    await driver.kill('pv1');
    assert.equal(await driver.waitForExit('pv1', 60_000), true);
    assert.equal((await driver.list()).find((e) => e.name === 'pv1')!.state, 'defined');
    await driver.kill('pv1'); // a stopped VM: nothing to do
    await assert.rejects(driver.pause('pv1'), (e) => isPolyvisorError(e, 'ERR_VM_STATE') && e.message.includes('not running'));
    await assert.rejects(driver.console('pv1'), (e) => isPolyvisorError(e, 'ERR_VM_STATE'));
    await assert.rejects(driver.define({ spec: pvSpec('pv1', guest), disks: [{ path: qcow2, format: 'qcow2' }] }), (e) => isPolyvisorError(e, 'ERR_EXISTS'));
    await assert.rejects(driver.start('nosuchvm'), (e) => isPolyvisorError(e, 'ERR_NOT_FOUND') && e.message.includes(host.uri));
  });

  test('export: the xl.cfg parses, the disk has the same checksum, and the VM boots on the local QEMU engine', async () => {
    const out = join(dir, 'exported');
    const spec = await driver.export('pv1', out);
    assert.equal(spec.disks[0]!.file, join(out, 'disk0.raw'));
    assert.equal(await sha256(join(out, 'disk0.raw')), diskSha);
    assert.equal(await sha256(spec.boot!.kernel!), await sha256(guest.kernel));
    assert.equal(await sha256(spec.boot!.ramdisk!), await sha256(guest.initrd));

    const source = await openVmSource(join(out, 'pv1.cfg'));
    assert.equal(source.kind, 'xl');
    assert.equal(source.spec.virtualization, 'pv');
    assert.equal(source.spec.disks[0]!.file, 'disk0.raw');
    assert.equal(source.spec.boot?.cmdline, `${CMDLINE} pv.hold`);

    const result = await verifyVm(source, { expect: /POLYVISOR-DISK \S+ [0-9a-f]{64}/, outDir: join(dir, 'verify'), accel: 'tcg', timeoutMs: 180_000 });
    const log = await readFile(result.consoleLog, 'utf8');
    assert.equal(result.ok, true, `${result.reason} ${result.detail ?? ''}\n${log.slice(-3000)}`);
    assert.ok(log.includes(GUEST_MARKER));
    assert.deepEqual(DISK_LINE.exec(result.matched!)?.slice(1), ['vda', diskSha]);
    await source.close();
  });

  test("an xl failure is ERR_HOST quoting the host, the command and xl's own words", async () => {
    const fake = join(dir, 'not-a-kernel');
    await writeFile(fake, 'not a kernel\n');
    const spec: VmSpec = { ...emptySpec('broken'), virtualization: 'pv', memory: { bytes: 64 << 20 }, boot: { kernel: fake } };
    await driver.define({ spec, disks: [] });
    // the kernel goes missing on the host
    await host.exec(['rm', '--', `${driver.folderOf('broken')}/kernel`]);
    for (const attempt of [() => driver.start('broken'), () => driver.startWithConsole('broken')]) {
      await assert.rejects(attempt(), (e) => {
        assert.ok(isPolyvisorError(e, 'ERR_HOST'), String(e));
        assert.ok(e.message.includes(`host ${host.uri}`), e.message);
        assert.ok(e.message.includes(`xl create`) && e.message.includes('/broken/broken.cfg'), e.message);
        // xl's own report of the missing file
        assert.match(e.message, /No such file or directory|cannot|failed/i);
        return true;
      });
    }
    await driver.undefine('broken');
  });

  test('a PV guest booted by pygrub from the grub.cfg on its own disk', async () => {
    const disk = await grubDisk(dir, guest);
    const spec: VmSpec = {
      ...emptySpec('grub1'),
      virtualization: 'pv',
      memory: { bytes: 128 << 20 },
      // without a terminal to answer pygrub's menu, -q (RUNBOOK)
      boot: { bootloader: 'pygrub', bootloaderArgs: ['-q'] },
      disks: [{ device: 'disk', bus: 'xen', target: 'xvda' }],
    };
    await driver.define({ spec, disks: [{ path: disk.path, format: 'raw' }] });
    const cfg = await host.exec(['cat', driver.configOf('grub1')]);
    assert.match(cfg, /bootloader = "pygrub"/);
    assert.match(cfg, /bootloader_args = \[ "-q" \]/);
    const con = await driver.startWithConsole('grub1');
    const text = await readUntil(con, /POLYVISOR-DISK \S+ \S+\n/, 240_000);
    assert.ok(text.includes(GUEST_MARKER), text);
    assert.deepEqual(DISK_LINE.exec(text)?.slice(1), ['xvda', disk.sha], text);
    await con.exited;
    assert.equal(await driver.waitForExit('grub1', 60_000), true);
    await driver.undefine('grub1');
  });

  test('undefine removes the VM and its folder', async () => {
    await driver.undefine('pv1');
    assert.deepEqual(await driver.list(), []);
    await assert.rejects(driver.undefine('pv1'), (e) => isPolyvisorError(e, 'ERR_NOT_FOUND'));
    assert.equal((await host.ssh.run(['test', '-e', `${STORAGE}/pv1`])).status, 1);
  });

  test('through the CLI: host add; a VM made on the local engine moves onto Xen, boots there, and moves back', async (t) => {
    const data = join(dir, 'cli-data');
    const pv = (...args: string[]) => {
      const r = spawnSync(CLI, [...args], { env: { ...process.env, POLYVISOR_DATA: data }, encoding: 'utf8', timeout: 900_000 });
      return { status: r.status, stdout: r.stdout, stderr: r.stderr };
    };
    const ok = (...args: string[]) => {
      const r = pv(...args);
      assert.equal(r.status, 0, `polyvisor ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    const vmDir = join(dir, 'mover');
    await mkdir(vmDir);
    await copyFile(guest.kernel, join(vmDir, 'vmlinuz'));
    await copyFile(guest.initrd, join(vmDir, 'initrd.gz'));
    await copyFile(qcow2, join(vmDir, 'disk.qcow2'));
    const cfg = join(vmDir, 'mover.cfg');
    await writeFile(cfg, ['name = "mover"', 'type = "pv"', 'kernel = "vmlinuz"', 'ramdisk = "initrd.gz"', `extra = "${CMDLINE} pv.hold"`, 'memory = 128', 'disk = [ "format=qcow2,vdev=xvda,access=rw,target=disk.qcow2" ]', ''].join('\n'));
    const ps = () => JSON.parse(ok('ps', '--json')) as Array<{ name: string; host: string; state: string }>;
    t.after(() => void pv('rm', '-f', 'mover'));
    const serial = join(data, 'vms', 'mover', 'serial.log');
    const waitLog = async (re: RegExp) => {
      for (let i = 0; i < 600; i++) {
        const text = await readFile(serial, 'utf8').catch(() => '');
        if (re.test(text)) return text;
        await new Promise((r) => setTimeout(r, 500));
      }
      assert.fail(`no ${re} in ${serial}`);
    };

    ok('host', 'add', host.uri, '--name', 'xen1', '-i', host.sshTarget.identityFile);
    assert.match(ok('host', 'ls'), /xen1\s+xen\s+xen\+ssh:/);
    const bad = pv('host', 'add', 'xen+ssh://root@127.0.0.1:1', '-i', host.sshTarget.identityFile);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /ERR_HOST/);

    // made and booted on the local engine
    ok('vm', 'import', cfg);
    ok('start', 'mover', '--accel', 'tcg');
    assert.deepEqual(DISK_LINE.exec(await waitLog(/POLYVISOR-DISK \S+ \S+\r?\n/))?.slice(1), ['vda', diskSha]);
    ok('kill', 'mover');

    // moved onto Xen: the disk goes through the engine to raw on the host, the kernel along
    const moved = JSON.parse(ok('move', 'mover', '--to', 'xen1', '--json'));
    assert.equal(moved.host, 'xen1');
    assert.equal(moved.disks[0].mode, 'host');
    assert.deepEqual(ps().map((v) => [v.name, v.host, v.state]), [['mover', 'xen1', 'stopped']]);
    ok('start', 'mover');
    assert.equal(ps()[0]!.state, 'running');
    // its console, through the CLI: the guest prints "tick" once it has checksummed its xvda
    const con = spawn(CLI, ['console', 'mover'], { env: { ...process.env, POLYVISOR_DATA: data }, stdio: ['pipe', 'pipe', 'pipe'] });
    let text = '';
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no tick on the Xen console: ${text.slice(-1000)}`)), 240_000);
      con.stdout!.on('data', (b: Buffer) => {
        text += b.toString();
        if (text.includes('tick')) {
          clearTimeout(t);
          resolve();
        }
      });
    });
    con.stdin!.write(Buffer.from([0x1d]));
    await new Promise((r) => con.once('exit', r));
    ok('kill', 'mover');
    assert.equal(ps()[0]!.state, 'stopped');

    // and back: exported from the host, booted on the local engine with the same disk content
    assert.equal(JSON.parse(ok('move', 'mover', '--to', 'local', '--json')).host, 'local');
    assert.equal((await host.ssh.run(['test', '-e', '/var/lib/polyvisor/mover'])).status, 1, 'the VM left the Xen host');
    ok('start', 'mover', '--accel', 'tcg');
    assert.deepEqual(DISK_LINE.exec(await waitLog(/POLYVISOR-DISK \S+ \S+\r?\n/))?.slice(1), ['vda', diskSha]);
    ok('rm', '-f', 'mover');
    ok('host', 'rm', 'xen1');
  });
});
