/**
 * The `polyvisor disk` command as a script sees it: output, --json, and exit statuses.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { patternBytes, qemuImg, qemuImgStatus, qemuInfo, qemuIo, tempDir } from '../helpers.js';

const CLI = fileURLToPath(new URL('../../../bin/polyvisor', import.meta.url));

function pv(cwd: string, ...args: string[]) {
  const r = spawnSync(CLI, [...args], { cwd, encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('--help lists the disk verbs; a wrong command line exits 2', async (t) => {
  const dir = await tempDir(t);
  const h = pv(dir, 'disk', '--help');
  assert.equal(h.status, 0);
  for (const verb of ['info', 'create', 'convert', 'check', 'compare', 'map']) assert.match(h.stdout, new RegExp(`\\b${verb}\\b`));
  assert.equal(pv(dir, 'disk', 'convert', '--no-such-flag', 'a', 'b').status, 2);
  assert.equal(pv(dir, 'disk', 'info').status, 2);
  const badSize = pv(dir, 'disk', 'create', '-f', 'raw', 'x.raw', '12Q');
  assert.equal(badSize.status, 2);
  assert.match(badSize.stderr, /ERR_USAGE/);
});

test('disk create takes qemu-img sizes, options and backing files', async (t) => {
  const dir = await tempDir(t);
  const r = pv(dir, 'disk', 'create', '-f', 'qcow2', '-o', 'cluster_size=4k', 'a.qcow2', '1G');
  assert.equal(r.status, 0, r.stderr);
  const qi = await qemuInfo(join(dir, 'a.qcow2'));
  assert.equal(qi['virtual-size'], 1 << 30);
  assert.equal(qi['cluster-size'], 4096);
  const over = pv(dir, 'disk', 'create', '-f', 'qcow2', '-b', 'a.qcow2', '-F', 'qcow2', 'b.qcow2');
  assert.equal(over.status, 0, over.stderr);
  const bi = await qemuInfo(join(dir, 'b.qcow2'));
  assert.equal(bi['backing-filename'], 'a.qcow2');
  assert.equal(bi['virtual-size'], 1 << 30);
  // existing file: refused, untouched
  await writeFile(join(dir, 'keep.raw'), 'keep me');
  const ex = pv(dir, 'disk', 'create', '-f', 'raw', 'keep.raw', '1M');
  assert.equal(ex.status, 1);
  assert.match(ex.stderr, /ERR_EXISTS/);
  assert.equal(await readFile(join(dir, 'keep.raw'), 'utf8'), 'keep me');
  // bad -o: named, exit 2
  const bad = pv(dir, 'disk', 'create', '-f', 'qcow2', '-o', 'cluster_sise=4k', 'c.qcow2', '1M');
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /cluster_sise/);
  const help = pv(dir, 'disk', 'create', '-f', 'vhd', '-o', 'help', 'unused.vhd');
  assert.equal(help.status, 0);
  assert.match(help.stdout, /subformat/);
});

test('disk info --json agrees with qemu-img info', async (t) => {
  const dir = await tempDir(t);
  const f = join(dir, 'a.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=128k', f, '3G');
  const r = pv(dir, 'disk', 'info', '--json', 'a.qcow2');
  assert.equal(r.status, 0, r.stderr);
  const ours = JSON.parse(r.stdout);
  const theirs = await qemuInfo(f);
  assert.equal(ours.format, 'qcow2');
  assert.equal(ours['virtual-size'], theirs['virtual-size']);
  assert.equal(ours['cluster-size'], theirs['cluster-size']);
  const human = pv(dir, 'disk', 'info', 'a.qcow2');
  assert.match(human.stdout, /virtual size: 3 GiB \(3221225472 bytes\)/);
  const missing = pv(dir, 'disk', 'info', '--json', 'nope.img');
  assert.equal(missing.status, 1);
  assert.equal(JSON.parse(missing.stdout).error.code, 'ERR_NOT_FOUND');
});

test('disk convert and compare: exit statuses as qemu-img', async (t) => {
  const dir = await tempDir(t);
  await qemuImg('create', '-q', '-f', 'qcow2', join(dir, 'a.qcow2'), '64M');
  await qemuIo(join(dir, 'a.qcow2'), 'qcow2', 'write -P 0x61 0 1M', 'write -P 0x62 40M 64k');
  const c = pv(dir, 'disk', 'convert', '-O', 'vpc', '--json', 'a.qcow2', 'a.vhd');
  assert.equal(c.status, 0, c.stderr);
  assert.equal(JSON.parse(c.stdout).format, 'vhd');
  assert.equal(pv(dir, 'disk', 'compare', 'a.qcow2', 'a.vhd').status, 0);
  assert.equal(qemuImgStatus('compare', join(dir, 'a.qcow2'), join(dir, 'a.vhd')).status, 0);
  await qemuIo(join(dir, 'a.qcow2'), 'qcow2', 'write -P 0x63 40M 512');
  const diff = pv(dir, 'disk', 'compare', 'a.qcow2', 'a.vhd');
  assert.equal(diff.status, 1);
  assert.match(diff.stdout, /Content mismatch at offset 41943040!/);
  assert.equal(pv(dir, 'disk', 'compare', 'a.qcow2', 'missing.vhd').status, 2);
  // an existing destination is not overwritten without --force
  const again = pv(dir, 'disk', 'convert', '-O', 'raw', 'a.qcow2', 'a.vhd');
  assert.equal(again.status, 1);
  assert.match(again.stderr, /--force/);
  assert.equal(pv(dir, 'disk', 'convert', '-O', 'raw', '--force', '-q', 'a.qcow2', 'a.vhd').status, 0);
  assert.equal((await qemuInfo(join(dir, 'a.vhd'))).format, 'raw');
});

test('disk check: 0 on a clean image, 63 for a format without a check', async (t) => {
  const dir = await tempDir(t);
  await qemuImg('create', '-q', '-f', 'qcow2', join(dir, 'a.qcow2'), '8M');
  await qemuIo(join(dir, 'a.qcow2'), 'qcow2', 'write -P 1 0 1M');
  const r = pv(dir, 'disk', 'check', '--json', 'a.qcow2');
  assert.equal(r.status, 0, r.stdout + r.stderr);
  const j = JSON.parse(r.stdout);
  assert.equal(j.corruptions, 0);
  assert.equal(j.leaks, 0);
  await writeFile(join(dir, 'b.raw'), Buffer.alloc(4096));
  assert.equal(pv(dir, 'disk', 'check', 'b.raw').status, 63);
});

test('disk map --json reports what qemu-img map reports', async (t) => {
  const dir = await tempDir(t);
  const f = join(dir, 'a.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', f, '16M');
  await qemuIo(f, 'qcow2', 'write -P 1 1M 192k', 'write -z 4M 64k', 'write -P 2 8M 64k');
  const r = pv(dir, 'disk', 'map', '--json', 'a.qcow2');
  assert.equal(r.status, 0, r.stderr);
  const ours = JSON.parse(r.stdout) as Array<{ start: number; length: number; data: boolean; zero: boolean }>;
  const theirs = JSON.parse(await qemuImg('map', '--output=json', f)) as Array<{ start: number; length: number; data: boolean; zero: boolean }>;
  const dataRanges = (m: typeof ours) => m.filter((e) => e.data).map((e) => [e.start, e.length]);
  assert.deepEqual(dataRanges(ours), dataRanges(theirs));
  let covered = 0;
  for (const e of ours) covered += e.length;
  assert.equal(covered, 16 << 20);
});

test('Ctrl-C during convert leaves no destination and no temporary file', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'big.raw'), patternBytes(192 << 20, 9));
  const child = spawn(CLI, ['disk', 'convert', '-p', '-O', 'qcow2', 'big.raw', 'out.qcow2'], { cwd: dir });
  let err = '';
  let sent = false;
  child.stderr.on('data', (d) => {
    err += d;
    // progress lines arrive on a pipe every 10%: interrupt after the first one past 0%
    if (!sent && /convert: [1-9]0%/.test(err)) {
      sent = true;
      child.kill('SIGINT');
    }
  });
  const status = await new Promise<number | null>((res) => child.on('close', res));
  assert.equal(status, 130, err);
  assert.match(err, /ERR_ABORTED/);
  assert.deepEqual(await readdir(dir), ['big.raw']);
});

test('-p draws a progress bar on a terminal (a pseudo-terminal made by script(1))', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'src.raw'), patternBytes(32 << 20, 17));
  const cmd = `${CLI} disk convert -p -O qcow2 src.raw out.qcow2`;
  const r = spawnSync('script', ['-qec', cmd, '/dev/null'], { cwd: dir, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  const screen = r.stdout.replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1b[78]/g, '');
  assert.match(screen, /convert \[[█░]+\] 100% \| 32 MiB \/ 32 MiB/);
  assert.match(screen, /converted src\.raw \(raw\) to out\.qcow2 \(qcow2\)/);
});
