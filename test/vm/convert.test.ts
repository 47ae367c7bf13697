/**
 * `polyvisor vm inspect` and `vm convert` end to end: a small VM described by libvirt XML with
 * a real qcow2 disk goes to every target; the disks that come out are compared with the
 * source by qemu-img, packages verify, and descriptors read back.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { targetNames } from '../../src/vm/registry.js';
import { qemuImg, qemuImgStatus, qemuIo, tempDir } from '../helpers.js';

const CLI = fileURLToPath(new URL('../../../bin/polyvisor', import.meta.url));

function pv(cwd: string, ...args: string[]) {
  const r = spawnSync(CLI, [...args], { cwd, encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const DOMAIN = (disk: string) => `<domain type='kvm'>
  <name>web01</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  <memory unit='MiB'>1024</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <mac address='52:54:00:12:34:56'/>
      <source bridge='br0'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'><target port='0'/></serial>
  </devices>
</domain>
`;

async function makeVm(dir: string): Promise<string> {
  const disk = join(dir, 'web01.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', disk, '16M');
  await qemuIo(disk, 'qcow2', 'write -P 0x61 0 1M', 'write -P 0x62 9M 300k');
  const xml = join(dir, 'web01.xml');
  await writeFile(xml, DOMAIN('web01.qcow2'));
  return xml;
}

test('vm inspect reads a libvirt domain and its disk', async (t) => {
  const dir = await tempDir(t);
  await makeVm(dir);
  const r = pv(dir, 'vm', 'inspect', '--json', 'web01.xml');
  assert.equal(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.equal(j.kind, 'libvirt');
  assert.equal(j.spec.name, 'web01');
  assert.equal(j.spec.cpu.count, 2);
  assert.equal(j.spec.memory.bytes, 1 << 30);
  assert.equal(j.disks[0].format, 'qcow2');
  assert.equal(j.disks[0]['virtual-size'], 16 << 20);
  const human = pv(dir, 'vm', 'inspect', 'web01.xml');
  assert.equal(human.status, 0, human.stderr);
  assert.match(human.stdout, /web01/);
});

for (const target of ['xl', 'libvirt', 'vmx', 'ovf', 'hyperv', 'ova', 'xva']) {
  test(`vm convert --to ${target}: disks equal the source, nothing left half-written`, async (t) => {
    assert.ok(targetNames().includes(target), `${target} is a target`);
    const dir = await tempDir(t);
    await makeVm(dir);
    const out = join(dir, 'out');
    const r = pv(dir, 'vm', 'convert', '--json', 'web01.xml', '--to', target, '--out', out);
    assert.equal(r.status, 0, r.stderr + r.stdout);
    const j = JSON.parse(r.stdout) as { files: string[]; notes: unknown[] };
    assert.ok(j.files.length >= 1);
    const names = await readdir(out);
    assert.deepEqual(names.filter((n) => n.includes('pv-partial')), [], 'no temporary files');
    if (target === 'ova' || target === 'xva') {
      // the package reads back, and its disk equals the source
      const ins = pv(dir, 'vm', 'inspect', '--json', j.files[0]!);
      assert.equal(ins.status, 0, ins.stderr);
      const back = JSON.parse(ins.stdout);
      assert.equal(back.spec.name, 'web01');
      const raw = join(dir, 'back.raw');
      const c = pv(dir, 'vm', 'convert', j.files[0]!, '--to', 'libvirt', '--out', join(dir, 'back'), '--disk-format', 'raw');
      assert.equal(c.status, 0, c.stderr);
      const disk = (await readdir(join(dir, 'back'))).find((n) => n.endsWith('.img'))!;
      await qemuImg('convert', '-f', 'raw', '-O', 'raw', join(dir, 'back', disk), raw);
      assert.equal(qemuImgStatus('compare', '-f', 'qcow2', '-F', 'raw', join(dir, 'web01.qcow2'), raw).status, 0);
      return;
    }
    const diskFiles = names.filter((n) => /-disk\d+\./.test(n));
    assert.equal(diskFiles.length, 1, `one disk in ${names.join(', ')}`);
    const cmp = qemuImgStatus('compare', '-f', 'qcow2', join(dir, 'web01.qcow2'), join(out, diskFiles[0]!));
    assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
    if (target === 'ovf') {
      // the manifest lists every file with its SHA-256, and sha256sum agrees
      const mf = await readFile(join(out, names.find((n) => n.endsWith('.mf'))!), 'utf8');
      for (const line of mf.trim().split('\n')) {
        const m = /^SHA256\((.+)\)= ([0-9a-f]{64})$/.exec(line);
        assert.ok(m, line);
        const sum = spawnSync('sha256sum', [join(out, m[1]!)], { encoding: 'utf8' }).stdout.split(' ')[0];
        assert.equal(sum, m[2]);
      }
    }
    if (target !== 'hyperv') {
      // the descriptor reads back as the same VM
      const ins = pv(out, 'vm', 'inspect', '--json', j.files.find((f) => !/-disk\d+\.|\.mf$/.test(f))!);
      assert.equal(ins.status, 0, ins.stderr);
      const back = JSON.parse(ins.stdout);
      assert.equal(back.spec.name, 'web01');
      assert.equal(back.spec.cpu.count, 2);
      assert.equal(back.spec.memory.bytes, 1 << 30);
    }
  });
}

test('vm convert --descriptor-only leaves the disks where they are', async (t) => {
  const dir = await tempDir(t);
  await makeVm(dir);
  const out = join(dir, 'out');
  const r = pv(dir, 'vm', 'convert', '--json', '--descriptor-only', 'web01.xml', '--to', 'xl', '--out', out);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(await readdir(out), ['web01.cfg']);
  const cfg = await readFile(join(out, 'web01.cfg'), 'utf8');
  assert.ok(cfg.includes(join(dir, 'web01.qcow2')), cfg);
  // a target that cannot open the disk's format is told so, not left to fail at start-up
  const vmx = pv(dir, 'vm', 'convert', '--json', '--descriptor-only', 'web01.xml', '--to', 'vmx', '--out', join(dir, 'vmx'));
  assert.equal(vmx.status, 0, vmx.stderr);
  const notes = JSON.parse(vmx.stdout).notes as Array<{ setting: string; action: string }>;
  assert.ok(notes.some((n) => n.setting === 'disks[0].format' && n.action === 'kept'), JSON.stringify(notes));
});

test('a descriptor naming a disk outside its folder is refused unless allowed', async (t) => {
  const dir = await tempDir(t);
  await mkdir(join(dir, 'vm'));
  await qemuImg('create', '-q', '-f', 'qcow2', join(dir, 'outside.qcow2'), '1M');
  await writeFile(join(dir, 'vm', 'evil.xml'), DOMAIN('../outside.qcow2'));
  const r = pv(dir, 'vm', 'convert', join(dir, 'vm', 'evil.xml'), '--to', 'xl', '--out', join(dir, 'out'));
  assert.equal(r.status, 1);
  assert.match(r.stderr, /ERR_PATH_OUTSIDE/);
  const ok = pv(dir, 'vm', 'convert', '--allow-outside-paths', join(dir, 'vm', 'evil.xml'), '--to', 'xl', '--out', join(dir, 'out'));
  assert.equal(ok.status, 0, ok.stderr);
});
