/**
 * VMs that arrive as packages or bare disks boot on the local engine, with nothing converted
 * before the boot when `run` is used (a disk inside an OVA, XVA chunks: served over NBD) and
 * with the disks converted into the store when they are imported. The guest boots from its own
 * disk (SeaBIOS → SYSLINUX) and prints the SHA-256 of that disk, which must equal the source
 * disk's content whatever the package.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LocalHost } from '../../src/hosts/local.js';
import { tempDir } from '../helpers.js';
import { buildBootableDisk } from '../guests/bootable.js';
import { DISK_LINE, GUEST_MARKER } from '../guests/build.js';

const CLI = fileURLToPath(new URL('../../../bin/polyvisor', import.meta.url));

function pv(data: string, ...args: string[]) {
  const r = spawnSync(CLI, [...args], { encoding: 'utf8', env: { ...process.env, POLYVISOR_DATA: data }, timeout: 180_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function sha256(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}

/** A libvirt VM around the bootable disk, and the disk's SHA-256. */
async function sampleVm(dir: string): Promise<{ xml: string; disk: string; digest: string }> {
  const disk = join(dir, 'boot.raw');
  await copyFile(await buildBootableDisk(), disk);
  const xml = join(dir, 'sample.xml');
  await writeFile(
    xml,
    `<domain type='kvm'>
  <name>sample</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='boot.raw'/><target dev='sda' bus='sata'/></disk>
  </devices>
</domain>
`,
  );
  return { xml, disk, digest: await sha256(disk) };
}

function bootedWith(stdout: string, digest: string): void {
  assert.match(stdout, new RegExp(GUEST_MARKER), stdout.slice(-2000));
  const m = DISK_LINE.exec(stdout);
  assert.ok(m, stdout.slice(-2000));
  assert.equal(m![2], digest, 'the guest read the same disk content');
}

describe('booting packages and bare disks on the local engine (real TCG boots)', { concurrency: false, timeout: 900_000 }, () => {
  test('run an OVA (its streamOptimized disk served over NBD from inside the package), a VHD and a qcow2 alone', async (t) => {
    const dir = await tempDir(t);
    const data = join(dir, 'data');
    const { xml, disk, digest } = await sampleVm(dir);
    const conv = pv(data, 'vm', 'convert', xml, '--to', 'ova', '--out', join(dir, 'ova'));
    assert.equal(conv.status, 0, conv.stderr);
    const ova = join(dir, 'ova', 'sample.ova');
    const before = await sha256(ova);
    const r = pv(data, 'run', ova, '--accel', 'tcg', '--timeout', '120');
    assert.equal(r.status, 0, r.stderr);
    bootedWith(r.stdout, digest);
    assert.equal(await sha256(ova), before, 'the package is unchanged');

    // a disk alone is a VM with default settings (Hyper-V's and Virtual Server's VHD, a cloud qcow2)
    for (const fmt of ['vhd', 'qcow2']) {
      const img = join(dir, `sample.${fmt}`);
      assert.equal(pv(data, 'disk', 'convert', '-O', fmt === 'vhd' ? 'vpc' : fmt, disk, img).status, 0);
      const b = pv(data, 'run', img, '--accel', 'tcg', '--timeout', '120');
      assert.equal(b.status, 0, b.stderr);
      bootedWith(b.stdout, digest);
    }
    assert.equal(JSON.parse(pv(data, 'ps', '--json').stdout).length, 0);
  });

  test('import an XVA (disks converted into the store), start it, read its console log, rm', async (t) => {
    const dir = await tempDir(t);
    const data = join(dir, 'data');
    const { xml, digest } = await sampleVm(dir);
    assert.equal(pv(data, 'vm', 'convert', xml, '--to', 'xva', '--out', join(dir, 'xva')).status, 0);
    const xva = join(dir, 'xva', 'sample.xva');
    const imp = pv(data, 'vm', 'import', xva, '--name', 'from-xva', '--json');
    assert.equal(imp.status, 0, imp.stderr);
    assert.equal(JSON.parse(imp.stdout).disks[0].mode, 'copy', 'QEMU cannot read XVA chunks: the disk is converted at import');
    const host = new LocalHost({ dataDir: data, accel: 'tcg' });
    t.after(() => host.close());
    await host.start('from-xva');
    // the guest powers itself off after printing its checksum
    assert.ok(await host.waitForStop('from-xva', 240_000), 'the guest powered off');
    bootedWith(await readFile(host.serialLog('from-xva'), 'utf8'), digest);
    assert.equal(host.get('from-xva').state, 'stopped');
    await host.remove('from-xva');
    assert.equal(host.list().length, 0);
  });
});
