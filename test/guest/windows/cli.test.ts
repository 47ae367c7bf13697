/**
 * Windows guests through the CLI: `guest inspect` reports the Windows facts and verdicts (text
 * and JSON), and `guest adapt --for hyperv-gen1` writes an overlay that `guest undo` takes back,
 * the source untouched throughout. The fixture is fixture.ts's Server 2019-like disk.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tempDir } from '../../helpers.js';
import { buildWindowsDisk } from './fixture.js';

const CLI = fileURLToPath(new URL('../../../../bin/polyvisor', import.meta.url));
const sha = async (p: string) => createHash('sha256').update(await readFile(p)).digest('hex');

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(CLI, [...args], { encoding: 'utf8' });
}

test('polyvisor guest inspect and adapt on a Windows guest', async (t) => {
  const dir = await tempDir(t);
  const fx = await buildWindowsDisk(dir);
  const before = await sha(fx.disk);

  const text = cli(['guest', 'inspect', fx.disk]);
  assert.equal(text.status, 0, text.stderr);
  assert.match(text.stdout, /OS: Windows Server 2019 Standard/);
  assert.match(text.stdout, /edition ServerStandard, Server, build 17763, AMD64/);
  assert.match(text.stdout, /Boot: BIOS \(bootmgr on /);
  assert.match(text.stdout, /VMware Tools \(vmware\): enabled/);
  assert.match(text.stdout, /vmware +boots/);
  assert.match(text.stdout, /xen-pv +BLOCKED/);

  const json = cli(['guest', 'inspect', '--json', fx.disk]);
  assert.equal(json.status, 0, json.stderr);
  const r = JSON.parse(json.stdout) as { os: { family: string; version: string }; windows: { drivers: { name: string; start?: number }[] }; verdicts: Record<string, { boots: boolean }> };
  assert.equal(r.os.family, 'windows');
  assert.equal(r.os.version, '10.0.17763');
  assert.equal(r.verdicts.vmware!.boots, true);
  assert.equal(r.verdicts['hyperv-gen1']!.boots, false);
  assert.ok(r.windows.drivers.some((d) => d.name === 'storvsc'));

  const out = join(dir, 'hv.qcow2');
  const a = cli(['guest', 'adapt', fx.disk, '--for', 'hyperv-gen1', '--out', out, '--json']);
  assert.equal(a.status, 0, a.stderr);
  const res = JSON.parse(a.stdout) as { manifest: string; changes: unknown[]; outputs: string[] };
  assert.deepEqual(res.outputs, [out]);
  assert.ok(res.changes.length > 0);
  const after = JSON.parse(cli(['guest', 'inspect', '--json', out]).stdout) as { verdicts: Record<string, { boots: boolean }> };
  assert.equal(after.verdicts['hyperv-gen1']!.boots, true, 'the adapted overlay boots on Hyper-V by its registry');
  assert.equal(await sha(fx.disk), before, 'the source is untouched');

  const u = cli(['guest', 'undo', res.manifest]);
  assert.equal(u.status, 0, u.stderr);
  const undone = JSON.parse(cli(['guest', 'inspect', '--json', out]).stdout) as { verdicts: Record<string, { boots: boolean }> };
  assert.equal(undone.verdicts['hyperv-gen1']!.boots, false, 'undo took the registry changes back out of the overlay');
  assert.equal(await sha(fx.disk), before);
});
