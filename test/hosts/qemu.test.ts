/**
 * The local QEMU engine: the driver table, the argv builder (unit), the QMP client against a
 * real QEMU and against a hostile peer, and real boots of a tiny Linux guest under TCG.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { isPolyvisorError } from '../../src/errors.js';
import { invoke, operationsOf, supports, type HypervisorDriver } from '../../src/hosts/driver.js';
import { consoleForQemu, buildQemuArgv, kvmUsable, type QemuRuntime } from '../../src/hosts/qemu/argv.js';
import { QemuDriver, ppmToPng } from '../../src/hosts/qemu/driver.js';
import { QmpClient, type QmpEvent } from '../../src/hosts/qemu/qmp.js';
import { emptySpec, type VmSpec } from '../../src/vm/spec.js';
import { buildTestGuest, makeTestDisk, GUEST_MARKER, DISK_LINE, type TestGuest } from '../guests/build.js';
import { tempDir, qemuImg } from '../helpers.js';

const HAVE_QEMU = spawnSync('qemu-system-x86_64', ['--version']).status === 0;
const HAVE_OVMF = existsSync('/usr/share/OVMF/OVMF_CODE_4M.fd');
const RT: QemuRuntime = { qmpSocket: '/run/pv/q.sock', serialSocket: '/run/pv/s.sock', pidfile: '/run/pv/q.pid', uefiVars: '/run/pv/vars.fd' };

function spec(patch: Partial<VmSpec> = {}): VmSpec {
  return { ...emptySpec('t'), ...patch };
}

/** The -device values, for matching. */
function devices(argv: string[]): string[] {
  return argv.flatMap((a, i) => (argv[i - 1] === '-device' ? [a] : []));
}
function opt(argv: string[], name: string): string | undefined {
  const i = argv.indexOf(name);
  return i < 0 ? undefined : argv[i + 1];
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('HypervisorDriver table', () => {
  test('an empty slot gives the one uniform ERR_UNSUPPORTED', async () => {
    const d: HypervisorDriver = { name: 'toy', capabilities: { operations: ['list'], firmware: ['bios'], virtualization: ['hvm'], diskFormats: ['raw'], accelerators: [] }, list: async () => [] };
    assert.deepEqual(await invoke(d, 'list'), []);
    assert.equal(supports(d, 'pause'), false);
    await assert.rejects(invoke(d, 'pause', 'vm1'), (e) => isPolyvisorError(e, 'ERR_UNSUPPORTED') && e.message === 'toy cannot pause');
    assert.deepEqual(operationsOf(d), d.capabilities.operations);
  });

  test("the QEMU driver's manifest lists exactly its filled slots", () => {
    const d = new QemuDriver();
    assert.deepEqual(d.capabilities.operations, operationsOf(d));
    assert.deepEqual(d.capabilities.diskFormats.sort(), ['qcow2', 'raw', 'vdi', 'vhd', 'vhdx', 'vmdk']);
  });
});

describe('qemu argv', () => {
  const disk = { path: '/img/a.qcow2', format: 'qcow2' };

  test('accelerator: kvm passes the host CPU, tcg uses max; /dev/kvm probe', () => {
    const k = buildQemuArgv(spec(), [], RT, { accel: 'kvm' });
    assert.equal(opt(k.argv, '-accel'), 'kvm');
    assert.equal(opt(k.argv, '-cpu'), 'host');
    const t = buildQemuArgv(spec(), [], RT, { accel: 'tcg' });
    assert.equal(opt(t.argv, '-accel'), 'tcg');
    assert.equal(opt(t.argv, '-cpu'), 'max');
    assert.equal(t.notice, undefined, 'a forced accelerator is no fallback');
    assert.equal(kvmUsable('/nonexistent/kvm'), false);
    const auto = buildQemuArgv(spec(), [], RT);
    assert.equal(auto.accel, kvmUsable() ? 'kvm' : 'tcg');
    if (auto.accel === 'tcg') assert.match(auto.notice!, /TCG/);
  });

  test('cpu topology, memory, pc machine and SeaBIOS by default', () => {
    const r = buildQemuArgv(spec({ cpu: { count: 4, sockets: 2, cores: 2, threads: 1 }, memory: { bytes: 1 << 30, maxBytes: 2 << 30 } }), [], RT, { accel: 'tcg' });
    assert.equal(opt(r.argv, '-smp'), 'cpus=4,sockets=2,cores=2,threads=1');
    assert.equal(opt(r.argv, '-m'), '1024M');
    assert.equal(opt(r.argv, '-machine'), 'pc');
    assert.ok(!r.argv.some((a) => a.includes('pflash')));
    assert.ok(r.notes.some((n) => n.setting === 'memory.maxBytes'));
  });

  test('disks by bus: virtio, scsi controllers, ide on the piix, cdrom, xen → virtio', () => {
    const s = spec({
      disks: [
        { device: 'disk', bus: 'virtio', bootOrder: 1 },
        { device: 'disk', bus: 'scsi', controllerModel: 'pvscsi', unit: 1 },
        { device: 'disk', bus: 'scsi', controllerModel: 'megasas' },
        { device: 'disk', bus: 'scsi' },
        { device: 'disk', bus: 'ide' },
        { device: 'cdrom', bus: 'ide' },
        { device: 'disk', bus: 'xen' },
        { device: 'disk', bus: 'scsi', controllerModel: 'lsilogic' },
      ],
    });
    const r = buildQemuArgv(s, [disk, disk, disk, { path: '/img/b,c.raw', format: 'raw', readOnly: true }, { path: '/img/d.vhd', format: 'vhd' }, undefined, disk, disk], RT, { accel: 'tcg' });
    const dev = devices(r.argv);
    assert.equal(r.machine, 'pc');
    assert.ok(dev.includes('virtio-blk-pci,id=disk0dev,drive=disk0,bootindex=1'));
    assert.ok(dev.includes('pvscsi,id=scsi0'));
    assert.ok(dev.includes('scsi-hd,bus=scsi0.0,scsi-id=1,id=disk1dev,drive=disk1'));
    assert.ok(dev.includes('megasas-gen2,id=scsi1'));
    assert.ok(dev.includes('virtio-scsi-pci,id=scsi2'));
    assert.ok(dev.includes('ide-hd,bus=ide.0,unit=0,id=disk4dev,drive=disk4'));
    assert.ok(dev.includes('ide-cd,bus=ide.0,unit=1,id=disk5dev'), 'an empty CD-ROM has no drive');
    assert.ok(dev.includes('virtio-blk-pci,id=disk6dev,drive=disk6'));
    assert.ok(dev.includes('lsi53c895a,id=scsi3'));
    assert.ok(r.argv.includes('if=none,id=disk3,format=raw,file=/img/b,,c.raw,readonly=on'), 'commas in paths are doubled');
    assert.ok(r.argv.includes('if=none,id=disk4,format=vpc,file=/img/d.vhd'));
    assert.ok(r.notes.some((n) => n.setting === 'disks[6].bus' && n.to === 'virtio'));
    assert.ok(r.notes.some((n) => n.setting === 'disks[7].controllerModel'));
  });

  test('sata and nvme select q35; ide then sits on its AHCI; nbd URIs pass through', () => {
    const s = spec({ disks: [{ device: 'disk', bus: 'sata' }, { device: 'disk', bus: 'nvme' }, { device: 'disk', bus: 'ide' }] });
    const r = buildQemuArgv(s, [disk, { nbdUri: 'nbd+unix:///e?socket=/run/n.sock', format: 'raw' }, disk], RT, { accel: 'tcg' });
    assert.equal(r.machine, 'q35');
    const dev = devices(r.argv);
    assert.ok(dev.includes('ide-hd,bus=ide.0,id=disk0dev,drive=disk0'));
    assert.ok(dev.includes('nvme,id=disk1dev,serial=pv1,drive=disk1'));
    assert.ok(dev.includes('ide-hd,bus=ide.1,id=disk2dev,drive=disk2'));
    assert.ok(r.argv.includes('if=none,id=disk1,format=raw,file=nbd+unix:///e?socket=/run/n.sock'));
    assert.ok(r.notes.some((n) => n.setting === 'disks[2].bus'));
  });

  test('a format QEMU cannot read in place is refused; attachments must match the disks', () => {
    const s = spec({ disks: [{ device: 'disk', bus: 'virtio' }] });
    assert.throws(() => buildQemuArgv(s, [{ path: '/x.img', format: 'qed2' }], RT, { accel: 'tcg' }), (e) => isPolyvisorError(e, 'ERR_UNSUPPORTED'));
    assert.throws(() => buildQemuArgv(s, [], RT, { accel: 'tcg' }), (e) => isPolyvisorError(e, 'ERR_INVALID_OPTION'));
  });

  test('NICs: models, MACs, user networking, foreign models mapped with a note', () => {
    const s = spec({
      nics: [
        { model: 'e1000', mac: '52:54:00:12:34:56' },
        { model: 'vmxnet3' },
        { model: 'xen-netfront', connection: 'bridge', network: 'xenbr0' },
        { model: 'hyperv-netvsc', connection: 'none' },
        { model: 'rtl8139' },
        { model: 'e1000e' },
        { model: 'pcnet' },
        {},
      ],
    });
    const r = buildQemuArgv(s, [], RT, { accel: 'tcg' });
    const dev = devices(r.argv);
    assert.deepEqual(dev, [
      'e1000,netdev=net0,mac=52:54:00:12:34:56',
      'vmxnet3,netdev=net1',
      'virtio-net-pci,netdev=net2',
      'virtio-net-pci,netdev=net3',
      'rtl8139,netdev=net4',
      'e1000e,netdev=net5',
      'pcnet,netdev=net6',
      'virtio-net-pci,netdev=net7',
    ]);
    assert.equal(opt(r.argv, '-netdev'), 'user,id=net0');
    assert.ok(r.argv.includes('user,id=net3,restrict=on'));
    assert.ok(r.notes.some((n) => n.setting === 'nics[2].model') && r.notes.some((n) => n.setting === 'nics[2].connection'));
    assert.ok(r.notes.some((n) => n.setting === 'nics[3].model'));
    assert.equal(opt(buildQemuArgv(spec(), [], RT, { accel: 'tcg' }).argv, '-nic'), 'none');
  });

  test('UEFI: OVMF code read-only + per-VM vars on pflash, q35; Secure Boot adds SMM', () => {
    const r = buildQemuArgv(spec({ firmware: { type: 'uefi' } }), [], RT, { accel: 'tcg' });
    assert.equal(r.machine, 'q35');
    assert.ok(r.argv.includes('if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd'));
    assert.ok(r.argv.includes('if=pflash,format=raw,unit=1,file=/run/pv/vars.fd'));
    assert.equal(r.uefiVarsTemplate, '/usr/share/OVMF/OVMF_VARS_4M.fd');
    const sb = buildQemuArgv(spec({ firmware: { type: 'uefi', secureBoot: true, tpm: true } }), [], RT, { accel: 'tcg' });
    assert.equal(opt(sb.argv, '-machine'), 'q35,smm=on');
    assert.ok(sb.argv.includes('driver=cfi.pflash01,property=secure,value=on'));
    assert.ok(sb.argv.includes('if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd'));
    assert.equal(sb.uefiVarsTemplate, '/usr/share/OVMF/OVMF_VARS_4M.ms.fd');
    assert.ok(sb.notes.some((n) => n.setting === 'firmware.tpm'));
    assert.throws(() => buildQemuArgv(spec({ firmware: { type: 'uefi' } }), [], { ...RT, uefiVars: undefined }, { accel: 'tcg' }), (e) => isPolyvisorError(e, 'ERR_INVALID_OPTION'));
  });

  test('headless: VNC on 127.0.0.1 only, serial and QMP on Unix sockets, pidfile', () => {
    const s = spec({ graphics: [{ type: 'vnc', listen: '0.0.0.0', port: 5901 }] });
    const r = buildQemuArgv(s, [], { ...RT, vncDisplay: 3, serialLog: '/run/pv/s.log', noReboot: true }, { accel: 'tcg' });
    assert.equal(opt(r.argv, '-display'), 'none');
    assert.equal(opt(r.argv, '-vnc'), '127.0.0.1:3');
    assert.ok(!r.argv.some((a) => a.includes('0.0.0.0')));
    assert.ok(r.notes.some((n) => n.setting === 'graphics[0].listen' && n.to === '127.0.0.1'));
    assert.equal(opt(r.argv, '-chardev'), 'socket,id=serial0,path=/run/pv/s.sock,server=on,wait=off,logfile=/run/pv/s.log,logappend=on');
    assert.equal(opt(r.argv, '-serial'), 'chardev:serial0');
    assert.equal(opt(r.argv, '-qmp'), 'unix:/run/pv/q.sock,server=on,wait=off');
    assert.equal(opt(r.argv, '-pidfile'), '/run/pv/q.pid');
    assert.ok(r.argv.includes('-no-reboot'));
    assert.ok(!r.argv.includes('-nographic'));
    assert.equal(opt(buildQemuArgv(spec(), [], RT, { accel: 'tcg' }).argv, '-vnc'), 'none');
  });

  test('PV guest: direct kernel boot when the kernel is on the host, console moved to ttyS0', async (t) => {
    const dir = await tempDir(t);
    const k = join(dir, 'vmlinuz');
    await (await import('node:fs/promises')).writeFile(k, 'k');
    const r = buildQemuArgv(spec({ virtualization: 'pv', boot: { kernel: k, ramdisk: join(dir, 'missing'), cmdline: 'root=/dev/xvda console=hvc0' } }), [], RT, { accel: 'tcg' });
    assert.equal(opt(r.argv, '-kernel'), k);
    assert.equal(opt(r.argv, '-initrd'), undefined);
    assert.equal(opt(r.argv, '-append'), 'root=/dev/xvda console=ttyS0');
    // the last console= is /dev/console: hvc0 after ttyS0 would send init's output nowhere
    assert.equal(consoleForQemu('console=ttyS0 console=hvc0 quiet'), 'console=ttyS0 quiet');
    assert.equal(consoleForQemu('console=tty0 console=hvc0,115200 ro'), 'console=tty0 console=ttyS0 ro');
    assert.equal(consoleForQemu('quiet'), 'quiet console=ttyS0');
    assert.ok(r.notes.some((n) => n.setting === 'virtualization'));
    assert.ok(r.notes.some((n) => n.setting === 'boot.ramdisk' && n.action === 'dropped'));
    const gone = buildQemuArgv(spec({ virtualization: 'pv', boot: { kernel: '/nonexistent/vmlinuz' } }), [], RT, { accel: 'tcg' });
    assert.equal(opt(gone.argv, '-kernel'), undefined);
    assert.ok(gone.notes.some((n) => n.setting === 'boot.kernel'));
  });
});

describe('PPM → PNG', () => {
  test('a 2x1 image encodes with signature, IHDR and a valid chunk CRC', async () => {
    const { inflateSync, crc32 } = await import('node:zlib');
    const ppm = Buffer.concat([Buffer.from('P6\n# c\n2 1\n255\n'), Buffer.from([255, 0, 0, 0, 0, 255])]);
    const png = ppmToPng(ppm);
    assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    assert.equal(png.toString('ascii', 12, 16), 'IHDR');
    assert.equal(png.readUInt32BE(16), 2);
    assert.equal(png.readUInt32BE(20), 1);
    if (typeof crc32 === 'function') assert.equal(png.readUInt32BE(29), crc32(png.subarray(12, 29)));
    const idatLen = png.readUInt32BE(33);
    assert.deepEqual([...inflateSync(png.subarray(41, 41 + idatLen))], [0, 255, 0, 0, 0, 0, 255]);
    assert.throws(() => ppmToPng(Buffer.from('P6\n2 2\n255\n\0\0')), (e) => isPolyvisorError(e, 'ERR_TRUNCATED'));
    assert.throws(() => ppmToPng(Buffer.from('P3\n1 1\n255\n')), (e) => isPolyvisorError(e, 'ERR_CORRUPT'));
  });
});

test('qemu-system-x86_64 and OVMF are installed (.ci/run and npm start install them)', () => {
  assert.ok(HAVE_QEMU, 'qemu-system-x86_64 is missing: apt-get install qemu-system-x86');
  assert.ok(HAVE_OVMF, 'OVMF is missing: apt-get install ovmf');
});

describe('QMP client', () => {
  test('against a real QEMU (-machine none): greeting, commands, errors, events, close', async (t) => {
    const dir = await tempDir(t);
    const sock = join(dir, 'qmp.sock');
    const child = spawn('qemu-system-x86_64', ['-machine', 'none', '-display', 'none', '-qmp', `unix:${sock},server=on,wait=off`], { stdio: 'ignore' });
    t.after(() => {
      child.kill('SIGKILL');
    });
    let qmp: QmpClient | undefined;
    for (let i = 0; i < 100 && !qmp; i++) {
      qmp = await QmpClient.connect(sock).catch(() => undefined);
      if (!qmp) await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(qmp, 'connected');
    assert.ok(qmp.greeting.version.qemu.major >= 7);
    const status = await qmp.execute<{ status: string; running: boolean }>('query-status');
    assert.equal(typeof status.running, 'boolean');
    await assert.rejects(qmp.execute('no-such-command'), (e) => isPolyvisorError(e, 'ERR_IO') && /CommandNotFound/.test(e.message));
    const events: QmpEvent[] = [];
    qmp.on('event', (e: QmpEvent) => events.push(e));
    const stopped = new Promise((r) => qmp!.once('STOP', r));
    await qmp.execute('stop');
    await stopped;
    assert.ok(events.some((e) => e.event === 'STOP'));
    const closed = new Promise((r) => qmp!.once('close', r));
    const exit = new Promise((r) => child.once('exit', r));
    await qmp.execute('quit');
    await Promise.all([closed, exit]);
    await assert.rejects(qmp.execute('query-status'), (e) => isPolyvisorError(e));
  });

  async function bogusPeer(t: { after(fn: () => unknown): void }, behave: (s: Socket) => void): Promise<string> {
    const dir = await tempDir(t);
    const path = join(dir, 'bogus.sock');
    const server = createServer(behave);
    await new Promise<void>((r) => server.listen(path, r));
    t.after(() => new Promise<void>((r) => server.close(() => r())));
    return path;
  }

  test('a command sent while negotiating goes out behind qmp_capabilities, before its answer', async (t) => {
    // this peer answers nothing until it has both lines: a client that waited for the
    // negotiation's answer before sending would never get one
    const seen: Array<{ execute: string; id: string }> = [];
    const peer = await bogusPeer(t, (s) => {
      s.write('{"QMP": {"version": {"qemu": {"major": 8, "minor": 2, "micro": 0}}, "capabilities": []}}\r\n');
      let buf = '';
      s.on('data', (d: Buffer) => {
        buf += d.toString();
        const lines = buf.split('\n').filter((l) => l.trim());
        if (lines.length < 2 || seen.length) return;
        for (const l of lines) seen.push(JSON.parse(l) as { execute: string; id: string });
        for (const m of seen) s.write(`{"return": {}, "id": ${JSON.stringify(m.id)}}\r\n`);
      });
    });
    let cont: Promise<unknown> | undefined;
    const qmp = await QmpClient.connect(peer, { connectTimeoutMs: 3000, onNegotiating: (c) => (cont = c.execute('cont', undefined, { timeoutMs: 3000 })) });
    try {
      assert.deepEqual(await cont, {});
      assert.deepEqual(seen.map((m) => m.execute), ['qmp_capabilities', 'cont']);
    } finally {
      // before the peer's server closes, which waits for its connections to end
      qmp.close();
    }
    // a hook that throws fails the connection with its error, and leaves no rejection unhandled
    await assert.rejects(
      QmpClient.connect(peer, {
        connectTimeoutMs: 3000,
        onNegotiating: () => {
          throw new Error('hook failed');
        },
      }),
      /hook failed/,
    );
  });

  test('a bogus peer: garbage, a non-greeting, an endless line, a command timeout', async (t) => {
    const garbage = await bogusPeer(t, (s) => s.end('hello, I am not QEMU\r\n'));
    await assert.rejects(QmpClient.connect(garbage), (e) => isPolyvisorError(e, 'ERR_IO') && /not JSON/.test(e.message));

    const notGreeting = await bogusPeer(t, (s) => s.write('{"return": {}}\r\n'));
    await assert.rejects(QmpClient.connect(notGreeting), (e) => isPolyvisorError(e, 'ERR_IO') && /greeting/.test(e.message));

    // 8 MiB without a newline, in 64 KiB writes: the client must give up at its 64 KiB bound
    let sent = 0;
    const endless = await bogusPeer(t, (s) => {
      const chunk = Buffer.alloc(64 << 10, 0x61);
      const pump = () => {
        while (sent < 8 << 20 && !s.destroyed) {
          sent += chunk.length;
          if (!s.write(chunk)) return void s.once('drain', pump);
        }
      };
      s.on('error', () => undefined);
      pump();
    });
    await assert.rejects(QmpClient.connect(endless, { maxLineBytes: 64 << 10 }), (e) => isPolyvisorError(e, 'ERR_IO') && /longer than 65536/.test(e.message));
    assert.ok(sent < 8 << 20, 'the client hung up before the peer sent everything');

    // a greeting, capabilities accepted, then silence: per-command timeout, later an oversized line
    let peer: Socket | undefined;
    const silent = await bogusPeer(t, (s) => {
      peer = s;
      s.write('{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}\r\n');
      s.once('data', (d) => s.write(JSON.stringify({ return: {}, id: JSON.parse(d.toString()).id }) + '\r\n'));
    });
    const qmp = await QmpClient.connect(silent, { maxLineBytes: 1024 });
    await assert.rejects(qmp.execute('query-status', undefined, { timeoutMs: 100 }), (e) => isPolyvisorError(e, 'ERR_IO') && /within 100 ms/.test(e.message));
    const pending = qmp.execute('query-status');
    const closed = new Promise<Error | undefined>((r) => qmp.once('close', r));
    peer!.write('{"event": "RESET", "data": {}}\r\n' + 'x'.repeat(2000));
    await assert.rejects(pending, (e) => isPolyvisorError(e, 'ERR_IO') && /longer than 1024/.test(e.message));
    assert.ok(isPolyvisorError(await closed, 'ERR_IO'));
  });
});

describe('real boots under TCG', () => {
  let guest: TestGuest;
  let dir: string;
  let sum: string;
  const driver = new QemuDriver({ accel: 'tcg', noReboot: true });
  const timings: string[] = [];

  before(async () => {
    guest = await buildTestGuest();
    dir = await tempDir();
    sum = await makeTestDisk(join(dir, 'disk.raw'));
    await qemuImg('convert', '-f', 'raw', '-O', 'qcow2', join(dir, 'disk.raw'), join(dir, 'disk.qcow2'));
    await qemuImg('convert', '-f', 'raw', '-O', 'vmdk', join(dir, 'disk.raw'), join(dir, 'disk.vmdk'));
  });
  after(async () => {
    await driver.dispose();
    await rm(dir, { recursive: true, force: true });
    if (timings.length) console.log(`# boot timings (TCG): ${timings.join(', ')}`);
  });

  function guestSpec(name: string, disk: VmSpec['disks'][number], extraCmdline = ''): VmSpec {
    return spec({
      name,
      memory: { bytes: 256 << 20 },
      disks: [disk],
      boot: { kernel: guest.kernel, ramdisk: guest.initrd, cmdline: `console=ttyS0 quiet panic=-1 ${extraCmdline}`.trim() },
    });
  }

  async function waitForLog(name: string, re: RegExp, ms: number): Promise<string> {
    const log = driver.paths(name).serialLog;
    const end = Date.now() + ms;
    for (;;) {
      const text = existsSync(log) ? readFileSync(log, 'utf8') : '';
      if (re.test(text)) return text;
      if (Date.now() > end) throw new Error(`no ${re} in the serial log within ${ms} ms:\n${text.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  const cases: Array<[string, string, VmSpec['disks'][number], string, ('bios' | 'uefi')?]> = [
    ['raw-virtio', 'raw', { device: 'disk', bus: 'virtio' }, 'vda'],
    ['qcow2-virtio', 'qcow2', { device: 'disk', bus: 'virtio' }, 'vda'],
    ['vmdk-virtio', 'vmdk', { device: 'disk', bus: 'virtio' }, 'vda'],
    ['qcow2-ide', 'qcow2', { device: 'disk', bus: 'ide' }, 'sda'],
    ['vmdk-sata', 'vmdk', { device: 'disk', bus: 'sata' }, 'sda'],
    ['raw-scsi', 'raw', { device: 'disk', bus: 'scsi', controllerModel: 'virtio-scsi' }, 'sda'],
    ['qcow2-nvme-uefi', 'qcow2', { device: 'disk', bus: 'nvme' }, 'nvme0n1', 'uefi'],
  ];
  for (const [name, format, disk, devName, firmware = 'bios'] of cases) {
    test(`${format} on ${disk.bus} (${firmware}): the guest reads the same checksum and powers off`, async () => {
      await driver.define({ spec: { ...guestSpec(name, disk), firmware: { type: firmware } }, disks: [{ path: join(dir, `disk.${format}`), format }] });
      const t0 = Date.now();
      await driver.start(name);
      const pid = (await driver.list()).find((v) => v.name === name)!.pid!;
      assert.ok(alive(pid));
      const exited = await driver.waitForExit(name, 30_000);
      const secs = ((Date.now() - t0) / 1000).toFixed(1);
      timings.push(`${name} ${secs}s`);
      const log = readFileSync(driver.paths(name).serialLog, 'utf8');
      assert.ok(exited, `the guest did not power off:\n${log.slice(-2000)}`);
      assert.ok(log.includes(GUEST_MARKER), log.slice(-2000));
      const m = DISK_LINE.exec(log);
      assert.ok(m, log.slice(-2000));
      assert.equal(m[1], devName);
      assert.equal(m[2], sum);
      assert.equal(alive(pid), false, 'no qemu process is left');
      if (firmware === 'uefi') assert.ok(existsSync(driver.paths(name).uefiVars), 'a per-VM copy of the UEFI variable store');
      await driver.undefine(name);
    });
  }

  test('console, pause/resume, screenshot, and a forced stop of a guest that ignores ACPI', async (t) => {
    const name = 'hold';
    await driver.define({ spec: { ...guestSpec(name, { device: 'disk', bus: 'virtio' }, 'pv.hold'), graphics: [{ type: 'vga' }] }, disks: [{ path: join(dir, 'disk.raw'), format: 'raw', readOnly: true }] });
    await driver.start(name);
    const pid = (await driver.list()).find((v) => v.name === name)!.pid!;
    t.after(() => driver.kill(name));
    await waitForLog(name, /tick/, 30_000);

    const con = await driver.console(name);
    const got = await new Promise<string>((resolve, reject) => {
      let text = '';
      const timer = setTimeout(() => reject(new Error(`no tick on the console: ${text}`)), 5000);
      con.on('data', (d: Buffer) => {
        text += d.toString();
        if (text.includes('tick')) {
          clearTimeout(timer);
          resolve(text);
        }
      });
    });
    assert.match(got, /tick/);
    con.destroy();

    await driver.pause(name);
    assert.equal((await driver.list()).find((v) => v.name === name)!.state, 'paused');
    await driver.resume(name);
    assert.equal((await driver.list()).find((v) => v.name === name)!.state, 'running');

    const png = join(dir, 'screen.png');
    await driver.screenshot(name, png);
    const b = readFileSync(png);
    assert.deepEqual([...b.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    assert.equal(b.toString('ascii', 12, 16), 'IHDR');
    const w = b.readUInt32BE(16);
    const h = b.readUInt32BE(20);
    assert.ok(w >= 320 && h >= 200, `${w}x${h}`);

    const t0 = Date.now();
    assert.equal(await driver.stop(name, { timeoutMs: 1500 }), 'forced');
    const took = Date.now() - t0;
    timings.push(`forced stop ${(took / 1000).toFixed(1)}s`);
    assert.equal(alive(pid), false, 'no qemu process is left');
    assert.equal((await driver.list()).find((v) => v.name === name)!.state, 'defined');
    await assert.rejects(driver.pause(name), (e) => isPolyvisorError(e, 'ERR_VM_STATE'));
  });

  test('a QEMU that cannot start reports its own message', async () => {
    const name = 'broken';
    await driver.define({ spec: guestSpec(name, { device: 'disk', bus: 'virtio' }), disks: [{ path: join(dir, 'missing.raw'), format: 'raw' }] });
    await assert.rejects(driver.start(name), (e) => isPolyvisorError(e, 'ERR_IO') && /missing\.raw/.test(e.message));
    assert.equal((await driver.list()).find((v) => v.name === name)!.pid, undefined);
    await driver.undefine(name);
  });

  test('a missing QEMU binary is an ERR_IO, not a hang', async () => {
    for (const detached of [false, true]) {
      const d = new QemuDriver({ accel: 'tcg', binary: '/nonexistent/qemu-system-x86_64', detached, stateDir: join(dir, `nobin-${detached}`) });
      await d.define({ spec: spec({ name: 'nobin' }), disks: [] });
      await assert.rejects(d.start('nobin'), (e) => isPolyvisorError(e, 'ERR_IO') && /ENOENT/.test(e.message), `detached: ${detached}`);
      assert.equal((await d.list())[0]!.state, 'defined');
      await d.dispose();
    }
  });

  test('a detached QEMU that cannot start reports its own message, from its log file', async () => {
    const d = new QemuDriver({ accel: 'tcg', detached: true, stateDir: join(dir, 'detached') });
    await d.define({ spec: guestSpec('broken-detached', { device: 'disk', bus: 'virtio' }), disks: [{ path: join(dir, 'missing-detached.raw'), format: 'raw' }] });
    await assert.rejects(d.start('broken-detached'), (e) => isPolyvisorError(e, 'ERR_IO') && /missing-detached\.raw/.test(e.message));
    assert.match(readFileSync(join(dir, 'detached', 'broken-detached', 'qemu.log'), 'utf8'), /missing-detached\.raw/);
    await d.dispose();
  });
});

test('KVM is used only when a probe guest really runs under it', async () => {
  const { kvmWorks } = await import('../../src/hosts/qemu/kvm.js');
  const { kvmUsable } = await import('../../src/hosts/qemu/argv.js');
  const works = await kvmWorks();
  // no /dev/kvm: never KVM. With one, the probe decides; here it is either answer, but it must
  // agree with a real boot under KVM, which this test then runs.
  if (!kvmUsable()) assert.equal(works, false);
  const G = await buildTestGuest();
  const r = spawnSync('qemu-system-x86_64', ['-accel', 'kvm', '-cpu', 'host', '-m', '256', '-display', 'none', '-serial', 'stdio', '-no-reboot',
    '-kernel', G.kernel, '-initrd', G.initrd, '-append', 'console=ttyS0 quiet panic=-1'], { encoding: 'utf8', timeout: 30_000 });
  const booted = (r.stdout ?? '').includes(GUEST_MARKER);
  assert.equal(works, booted, `probe says ${works}, a real KVM boot ${booted ? 'reached' : 'did not reach'} the guest's marker`);
});
