/**
 * Windows guests end to end on a Windows Server 2019-like disk (fixture.ts: hives built by
 * hivexregedit --merge, an NTFS volume made by mkntfs and filled by ntfs-3g): inspection finds
 * the version, edition, control set, boot path, drivers with their Start values and files,
 * and VMware Tools; the verdicts follow; adaptation for hyperv-gen1 sets vmbus/storvsc/netvsc
 * to boot-start and disables VMware Tools (read back by hivexget from the hive ntfscat
 * extracts), adapting twice changes nothing, and `guest undo` gives back the disk byte for
 * byte (SHA-256); kvm without virtio-win reports the problem, with --virtio-win it refuses
 * clearly (no file can be created on NTFS). Nothing here was booted: no Windows image exists
 * on these machines.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { undoAdaptation } from '../../../src/guest/manifest.js';
import { virtioFolder } from '../../../src/guest/windows/adapt.js';
import { adaptGuest as adaptWindows } from '../../../src/guest/adapt.js';
import { driverFile, inspectWindows, windowsVerdicts } from '../../../src/guest/windows/inspect.js';
import { rejectsWith, tempDir } from '../../helpers.js';
import { sh } from '../oracle.js';
import { buildWindowsDisk, ntfscat } from './fixture.js';

const sha = async (p: string) => createHash('sha256').update(await readFile(p)).digest('hex');

function hivexget(dir: string, disk: string, key: string, value: string): string {
  const p = join(dir, `SYSTEM-${Math.random().toString(36).slice(2)}`);
  writeFileSync(p, ntfscat(dir, disk, '/Windows/System32/config/SYSTEM'));
  return sh('hivexget', [p, key, value]).trim();
}

test('inspection: version, edition, control set, boot path, drivers and start types, tools; verdicts per target', async (t) => {
  const dir = await tempDir(t);
  const fx = await buildWindowsDisk(dir);
  const f = await inspectWindows(fx.disk);
  assert.ok(f);
  assert.deepEqual(f.os, { family: 'windows', productName: 'Windows Server 2019 Standard', edition: 'ServerStandard', installationType: 'Server', version: '10.0', build: '17763', arch: 'AMD64' });
  assert.equal(f.controlSet, 'ControlSet001');
  assert.equal(f.volume, 'disk 0 partition 1');
  assert.deepEqual(f.boot.firmware, ['bios']);
  assert.deepEqual(f.boot.bios, { volume: 'disk 0 partition 1', bootmgr: true, bcd: true });
  assert.equal(f.boot.uefi, null);
  const d = (n: string) => f.drivers.find((x) => x.name === n)!;
  assert.deepEqual([d('pvscsi').start, d('pvscsi').atBoot, d('pvscsi').fileExists], [0, true, true]);
  assert.deepEqual([d('vmbus').start, d('vmbus').startName, d('vmbus').atBoot], [3, 'demand', false]);
  assert.deepEqual([d('stornvme').present, d('stornvme').fileExists], [true, false]);
  assert.deepEqual([d('viostor').present, d('xenbus').start], [false, 4]);
  assert.equal(d('storvsc').file, '/Windows/System32/drivers/storvsc.sys');
  const vmw = f.tools.find((x) => x.hypervisor === 'vmware')!;
  assert.ok(vmw.enabled);
  assert.deepEqual(vmw.services.map((s) => `${s.name}:${s.start}`).sort(), ['VMTools:2', 'vmci:0', 'vmhgfs:2']);
  assert.equal(f.tools.find((x) => x.hypervisor === 'xen')!.enabled, false);

  const v = windowsVerdicts(f);
  assert.equal(v.vmware.boots, true);
  assert.equal(v.vmware.controller, 'pvscsi');
  assert.equal(v.vmware.warnings.length, 0);
  assert.equal(v['xen-pv'].boots, false);
  assert.equal(v['xen-pv'].blockers[0]!.code, 'pv-kernel');
  assert.equal(v['hyperv-gen1'].boots, false);
  assert.ok(v['hyperv-gen1'].blockers.every((b) => b.code === 'storage-driver'));
  assert.equal(v['hyperv-gen2'].boots, false);
  assert.deepEqual(v['hyperv-gen2'].blockers.map((b) => b.code).sort(), ['storage-driver', 'storage-driver', 'uefi-loader']);
  assert.equal(v.kvm.boots, false);
  assert.match(v.kvm.blockers[0]!.fix, /virtio-win|Start to 0/);
  assert.ok(v.kvm.warnings.some((w) => w.code === 'agent' && /VMware Tools/.test(w.what)));
  assert.equal(v['xen-hvm'].boots, false);
});

test('driver files: ImagePath forms resolve inside the Windows volume', () => {
  assert.equal(driverFile('x', undefined), '/Windows/System32/drivers/x.sys');
  assert.equal(driverFile('x', '\\SystemRoot\\System32\\drivers\\X.SYS'), '/Windows/System32/drivers/X.SYS');
  assert.equal(driverFile('x', 'system32\\DRIVERS\\x.sys'), '/Windows/system32/DRIVERS/x.sys');
  assert.equal(driverFile('x', '\\??\\C:\\Windows\\system32\\drivers\\x.sys'), '/Windows/system32/drivers/x.sys');
  assert.equal(virtioFolder('10.0', '17763', true, 'AMD64'), '2k19/amd64');
  assert.equal(virtioFolder('10.0', '19045', false, 'AMD64'), 'w10/amd64');
  assert.equal(virtioFolder('6.1', '7601', false, 'x86'), 'w7/x86');
});

test('adapt for hyperv-gen1 in place: Start values (hivexget), twice changes nothing, undo restores every byte', async (t) => {
  const dir = await tempDir(t);
  const fx = await buildWindowsDisk(dir);
  const before = await sha(fx.disk);
  const r = await adaptWindows(fx.disk, { target: 'hyperv-gen1', inPlace: true, manifestPath: join(dir, 'm1.json') });
  assert.deepEqual(r.problems, []);
  assert.ok(r.changes.length > 0 && r.changes.every((c) => c.kind === 'raw'));
  const svc = (s: string) => hivexget(dir, fx.disk, `\\ControlSet001\\Services\\${s}`, 'Start');
  assert.deepEqual(['vmbus', 'storvsc', 'netvsc', 'VMTools', 'vmci', 'vmhgfs', 'pvscsi', 'xenbus'].map(svc), ['0', '0', '0', '4', '4', '4', '0', '4']);
  const f = (await inspectWindows(fx.disk))!;
  assert.equal(windowsVerdicts(f)['hyperv-gen1'].boots, true);
  assert.equal(windowsVerdicts(f)['hyperv-gen1'].warnings.length, 0);
  const afterFirst = await sha(fx.disk);
  const again = await adaptWindows(fx.disk, { target: 'hyperv-gen1', inPlace: true, manifestPath: join(dir, 'm2.json') });
  assert.equal(again.changes.length, 0);
  assert.equal(await sha(fx.disk), afterFirst, 'the second adaptation changed nothing');
  const u = await undoAdaptation(join(dir, 'm1.json'));
  assert.equal(u.method, 'exact');
  assert.equal(await sha(fx.disk), before, 'undo gives back the disk byte for byte');
});

test('adapt into an overlay for xen-hvm; kvm without virtio-win reports it, with --virtio-win refuses clearly', async (t) => {
  const dir = await tempDir(t);
  const fx = await buildWindowsDisk(dir);
  const before = await sha(fx.disk);
  const out = join(dir, 'hvm.qcow2');
  const r = await adaptWindows(fx.disk, { target: 'xen-hvm', out });
  assert.equal(await sha(fx.disk), before, 'the source is not written');
  const f = (await inspectWindows(out))!;
  for (const n of ['intelide', 'atapi', 'pciide', 'storahci']) assert.equal(f.drivers.find((d) => d.name === n)!.start, 0, n);
  assert.equal(windowsVerdicts(f)['xen-hvm'].boots, true);
  assert.match(r.notes.join('\n'), /VMTools Start 2 \(automatic\) -> 4 \(disabled\)/);

  const k = await adaptWindows(fx.disk, { target: 'kvm', out: join(dir, 'kvm.qcow2') });
  assert.match(k.problems.join('\n'), /no virtio-win storage driver/);
  const vw = join(dir, 'virtio-win', 'viostor', '2k19', 'amd64');
  await mkdir(vw, { recursive: true });
  await writeFile(join(vw, 'viostor.sys'), 'MZ viostor');
  await rejectsWith(adaptWindows(fx.disk, { target: 'kvm', out: join(dir, 'kvm2.qcow2'), virtioWin: join(dir, 'virtio-win') }), 'ERR_UNSUPPORTED', 'virtio-win', 'found', 'cannot create a new file on NTFS');
  assert.equal(await sha(fx.disk), before);
});
