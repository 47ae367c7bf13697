/**
 * Adaptation as a step of `vm import`: a real Xen PV guest (Debian 12: xen-blkfront only,
 * /dev/xvda1, hvc0, pygrub, no boot code), described by an xl.cfg, is imported onto the local
 * engine and boots there from its own disk; its source is not touched; the manifest lets
 * `guest undo` take the changes back; `--no-adapt` imports it as it is.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { qemuImg, tempDir } from '../helpers.js';
import { buildDebianGuest, DEBIAN_MARKER } from '../guests/debian.js';
import { LocalHost } from '../../src/hosts/local.js';

const CLI = fileURLToPath(new URL('../../../bin/polyvisor', import.meta.url));

test('vm import adapts a Xen PV guest for the local engine, where it then boots from its own disk', { timeout: 900_000 }, async (t) => {
  const dir = await tempDir(t);
  const data = join(dir, 'data');
  const guest = await buildDebianGuest('xen-pv');
  // the source: a qcow2 overlay over the cached guest, so the cache is never at risk
  const disk = join(dir, 'xenpv.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', '-b', guest.disk, '-F', 'raw', disk);
  const before = (await qemuImg('info', '--output=json', disk)).length;
  const cfg = join(dir, 'xenpv.cfg');
  await writeFile(cfg, ['name = "xenpv"', 'type = "pv"', 'bootloader = "pygrub"', 'memory = 1024', 'vif = [ "mac=00:16:3e:12:34:56" ]', 'disk = [ "format=qcow2,vdev=xvda,access=rw,target=xenpv.qcow2" ]', ''].join('\n'));
  const pv = (...args: string[]) => spawnSync(CLI, [...args], { env: { ...process.env, POLYVISOR_DATA: data }, encoding: 'utf8', timeout: 600_000 });

  const plain = pv('vm', 'import', cfg, '--name', 'as-is', '--no-adapt', '--allow-outside-paths', '--json');
  assert.equal(plain.status, 0, plain.stderr);
  assert.equal(JSON.parse(plain.stdout).adaptation, null);

  const r = pv('vm', 'import', cfg, '--allow-outside-paths', '--json');
  assert.equal(r.status, 0, r.stderr);
  const imported = JSON.parse(r.stdout);
  assert.ok(imported.adaptation.changes > 0, r.stdout);
  assert.ok(existsSync(imported.adaptation.manifest), 'the manifest is kept in the VM folder');
  assert.equal((await qemuImg('info', '--output=json', disk)).length, before);
  assert.equal(spawnSync('qemu-img', ['compare', '-q', disk, guest.disk]).status, 0, 'the source reads as before');

  const host = new LocalHost({ dataDir: data, accel: 'tcg' });
  t.after(() => host.close());
  await host.start('xenpv');
  let log = '';
  for (let i = 0; i < 600 && !log.includes(DEBIAN_MARKER); i++) {
    await new Promise((res) => setTimeout(res, 500));
    log = await readFile(host.serialLog('xenpv'), 'utf8').catch(() => '');
  }
  await host.kill('xenpv');
  assert.match(log, new RegExp(`${DEBIAN_MARKER} xen-pv /dev/vda1`), log.slice(-3000));
  await host.remove('xenpv');
  await host.remove('as-is');
});
