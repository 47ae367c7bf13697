/**
 * OVA package: written by Polyvisor from a small VmSource and checked with the system's own
 * tools (tar, sha256sum, qemu-img), read back through ova.open(); hostile packages refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { copyFile, open, readFile, readdir, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { pack } from 'tar-stream';
import { openImage } from '../../src/disk/chain.js';
import { ova } from '../../src/vm/packages/ova.js';
import { TarArchive } from '../../src/vm/packages/tar.js';
import { ovf } from '../../src/vm/codecs/ovf.js';
import { encodeOvf } from '../../src/vm/codecs/ovf-write.js';
import { emptySpec, type VmSpec } from '../../src/vm/spec.js';
import type { VmSource } from '../../src/vm/codec.js';
import { imageDigest, qemuImg, qemuImgStatus, qemuIo, rejectsWith, tempDir } from '../helpers.js';

const run = promisify(execFile);

function sourceSpec(): VmSpec {
  const s = emptySpec('web-01');
  s.cpu = { count: 2 };
  s.memory = { bytes: 1 << 30 };
  s.firmware = { type: 'uefi' };
  s.disks = [
    { device: 'disk', bus: 'scsi', controllerModel: 'lsilogic', controller: 0, unit: 0, file: 'root.qcow2', format: 'qcow2' },
    { device: 'cdrom', bus: 'ide', controller: 1, unit: 0 },
    { device: 'disk', bus: 'sata', controllerModel: 'ahci', controller: 0, unit: 1, file: 'data.qcow2', format: 'qcow2' },
  ];
  s.nics = [{ model: 'vmxnet3', mac: '00:50:56:01:02:03', network: 'LAN', connection: 'network' }];
  s.os = { family: 'linux', variant: 'debian11_64Guest' };
  return s;
}

/** A VmSource over two qcow2 images with patterns written by qemu-io. */
async function makeSource(dir: string): Promise<VmSource> {
  const root = join(dir, 'root.qcow2');
  const data = join(dir, 'data.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', root, '8M');
  await qemuIo(root, 'qcow2', 'write -P 0xa5 0 1M', 'write -P 0x3c 3M 64k', 'write -P 0x11 8128k 64k');
  await qemuImg('create', '-q', '-f', 'qcow2', data, '3M');
  await qemuIo(data, 'qcow2', 'write -P 0x7e 1M 512k');
  const spec = sourceSpec();
  return {
    path: dir,
    kind: 'test',
    spec,
    disks: [
      { index: 0, label: root, open: () => openImage(root) },
      { index: 2, label: data, open: () => openImage(data) },
    ],
    notes: [],
    close: async () => {},
  };
}

test('ova write: member order, manifest, USTAR headers and disks, checked with tar, sha256sum and qemu-img', async (t) => {
  const dir = await tempDir(t);
  const src = await makeSource(dir);
  const out = join(dir, 'web-01.ova');
  const progress: Array<[number, number]> = [];
  const { notes } = await ova.write(src, out, { onProgress: (d, tot) => progress.push([d, tot]) });
  assert.ok(progress.length > 0 && progress.at(-1)![0] === progress.at(-1)![1], 'progress reaches the total');
  assert.ok(notes.every((n) => n.setting !== 'os.variant'), 'a VMware guest id is carried as it is');
  assert.deepEqual((await readdir(dir)).sort(), ['data.qcow2', 'root.qcow2', 'web-01.ova'], 'no temporary file is left');

  const head = Buffer.alloc(65536);
  const fh = await open(out, 'r');
  await fh.read(head, 0, head.length, 0);
  await fh.close();
  assert.equal(ova.probe(head, out), 95);
  assert.equal(ovf.probe(head, out), 0);

  // the system tar lists the members in the order VMware requires
  const { stdout: list } = await run('tar', ['-tf', out]);
  assert.deepEqual(list.trim().split('\n'), ['web-01.ovf', 'web-01.mf', 'web-01-disk1.vmdk', 'web-01-disk2.vmdk']);

  // USTAR headers, 512-byte aligned members
  const tar = await TarArchive.open(out);
  try {
    for (const m of tar.members) {
      assert.equal(m.offset % 512, 0);
      const h = Buffer.alloc(512);
      await tar.file.readInto(h, m.headerOffset);
      assert.equal(h.toString('latin1', 257, 263), 'ustar\0', `${m.name}: ustar magic`);
    }
  } finally {
    await tar.close();
  }

  // extract, check the manifest with sha256sum, the disks with qemu-img
  const x = join(dir, 'x');
  await run('mkdir', [x]);
  await run('tar', ['-xf', out, '-C', x]);
  const mf = await readFile(join(x, 'web-01.mf'), 'utf8');
  const lines = mf.trim().split('\n');
  assert.equal(lines.length, 3);
  for (const line of lines) {
    const m = /^SHA256\((.+)\)= ([0-9a-f]{64})$/.exec(line);
    assert.ok(m, line);
    const { stdout } = await run('sha256sum', [join(x, m[1]!)]);
    assert.equal(stdout.split(' ')[0], m[2], `sha256sum of ${m[1]}`);
  }
  for (const [vmdk, qcow] of [
    ['web-01-disk1.vmdk', 'root.qcow2'],
    ['web-01-disk2.vmdk', 'data.qcow2'],
  ] as const) {
    const info = JSON.parse(await qemuImg('info', '--output=json', join(x, vmdk)));
    assert.equal(info.format, 'vmdk');
    assert.equal(info['format-specific']?.data?.['create-type'], 'streamOptimized');
    const cmp = qemuImgStatus('compare', '-f', 'qcow2', '-F', 'vmdk', join(dir, qcow), join(x, vmdk));
    assert.equal(cmp.status, 0, `qemu-img compare ${vmdk}: ${cmp.stdout}${cmp.stderr}`);
    const chk = qemuImgStatus('check', '-f', 'vmdk', join(x, vmdk));
    assert.equal(chk.status, 0, `qemu-img check ${vmdk}: ${chk.stdout}${chk.stderr}`);
  }

  // read back: the same machine, the same disk content, read in place
  const back = await ova.open(out, {});
  try {
    assert.equal(back.kind, 'ova');
    const s = back.spec;
    assert.equal(s.name, 'web-01');
    assert.deepEqual(s.cpu, { count: 2 });
    assert.equal(s.memory.bytes, 1 << 30);
    assert.equal(s.firmware.type, 'uefi');
    assert.deepEqual(s.nics, src.spec.nics);
    assert.deepEqual(s.os, src.spec.os);
    assert.deepEqual(
      s.disks.map((d) => [d.device, d.bus, d.controllerModel, d.controller, d.unit, d.file, d.capacity]),
      [
        ['disk', 'scsi', 'lsilogic', 0, 0, 'web-01-disk1.vmdk', 8 << 20],
        ['cdrom', 'ide', 'piix3', 1, 0, undefined, undefined],
        ['disk', 'sata', 'ahci', 0, 1, 'web-01-disk2.vmdk', 3 << 20],
      ],
    );
    assert.deepEqual(
      back.disks.map((d) => d.index),
      [0, 2],
    );
    for (const [i, qcow] of [
      [0, 'root.qcow2'],
      [1, 'data.qcow2'],
    ] as const) {
      const img = await back.disks[i]!.open();
      const ref = await openImage(join(dir, qcow));
      try {
        assert.equal(img.format, 'vmdk');
        assert.equal(img.virtualSize, ref.virtualSize);
        assert.equal(await imageDigest(img), await imageDigest(ref), `content of disk ${i}`);
      } finally {
        await img.close();
        await ref.close();
      }
    }
  } finally {
    await back.close();
  }

  // an existing destination is not replaced without force
  await rejectsWith(ova.write(src, out, {}), 'ERR_EXISTS', out);
  await ova.write(src, out, { force: true });
});

test('ova write: cancelled before it starts leaves nothing behind', async (t) => {
  const dir = await tempDir(t);
  const src = await makeSource(dir);
  const ac = new AbortController();
  ac.abort();
  const out = join(dir, 'c.ova');
  await rejectsWith(ova.write(src, out, { signal: ac.signal }), 'ERR_ABORTED', out);
  assert.deepEqual((await readdir(dir)).sort(), ['data.qcow2', 'root.qcow2']);
});

/** Writes a tar of the given members, in order, with tar-stream (names written as given). */
async function makeTar(path: string, members: Array<{ name: string; data: Buffer }>): Promise<void> {
  const p = pack();
  const done = pipeline(p, createWriteStream(path));
  for (const m of members) {
    await new Promise<void>((resolve, reject) => p.entry({ name: m.name, size: m.data.length, mode: 0o644 }, m.data, (e) => (e ? reject(e) : resolve())));
  }
  p.finalize();
  await done;
}

function descriptorFor(href: string): Buffer {
  const spec = emptySpec('evil');
  spec.disks = [{ device: 'disk', bus: 'scsi' }];
  const out = encodeOvf({ spec, diskFiles: [{ file: href, format: 'vmdk', capacity: 1 << 20 }], name: 'evil' });
  return Buffer.from(out.files[0]!.data);
}

test('ova hostile: a tampered member fails the manifest, naming the member', async (t) => {
  const dir = await tempDir(t);
  const src = await makeSource(dir);
  const good = join(dir, 'good.ova');
  await ova.write(src, good, {});
  const bad = join(dir, 'bad.ova');
  await copyFile(good, bad);
  const tar = await TarArchive.open(bad);
  const m = tar.get('good-disk2.vmdk')!;
  await tar.close();
  const fh = await open(bad, 'r+');
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, m.offset + 700);
  b[0] = b[0]! ^ 0xff;
  await fh.write(b, 0, 1, m.offset + 700);
  await fh.close();
  await rejectsWith(ova.open(bad, {}), 'ERR_CHECKSUM', bad, 'good-disk2.vmdk');

  // the descriptor is covered too
  const bad2 = join(dir, 'bad2.ova');
  await copyFile(good, bad2);
  const fh2 = await open(bad2, 'r+');
  await fh2.write(Buffer.from('<'), 0, 1, 512 + 40); // breaks the XML: the digest is checked before parsing
  await fh2.close();
  await rejectsWith(ova.open(bad2, {}), 'ERR_CHECKSUM', bad2, 'good.ovf');

  // truncated: the file ends inside the last disk
  const cut = join(dir, 'cut.ova');
  await copyFile(good, cut);
  await truncate(cut, m.offset + 1024);
  await rejectsWith(ova.open(cut, {}), 'ERR_TRUNCATED', cut);
});

test('ova hostile: member names with paths, absolute names and duplicates are refused', async (t) => {
  const dir = await tempDir(t);
  const ovfData = descriptorFor('d.vmdk');
  const disk = Buffer.alloc(1024);
  for (const [name, evil] of [
    ['dotdot.ova', '../evil'],
    ['abs.ova', '/etc/x'],
  ] as const) {
    const p = join(dir, name);
    await makeTar(p, [
      { name: 'evil.ovf', data: ovfData },
      { name: evil, data: disk },
      { name: 'd.vmdk', data: disk },
    ]);
    await rejectsWith(ova.open(p, {}), 'ERR_CORRUPT', p, 'refused');
  }
  const dup = join(dir, 'dup.ova');
  await makeTar(dup, [
    { name: 'evil.ovf', data: ovfData },
    { name: 'd.vmdk', data: disk },
    { name: 'd.vmdk', data: disk },
  ]);
  await rejectsWith(ova.open(dup, {}), 'ERR_CORRUPT', dup, 'duplicate');

  const notFirst = join(dir, 'order.ova');
  await makeTar(notFirst, [
    { name: 'd.vmdk', data: disk },
    { name: 'evil.ovf', data: ovfData },
  ]);
  await rejectsWith(ova.open(notFirst, {}), 'ERR_CORRUPT', notFirst, '.ovf');
});

test('ova hostile: disk hrefs must be members of the package, never host files', async (t) => {
  const dir = await tempDir(t);
  const disk = Buffer.alloc(1024);
  for (const [name, href, code] of [
    ['host.ova', '/etc/passwd', 'ERR_PATH_OUTSIDE'],
    ['up.ova', '../outside.vmdk', 'ERR_PATH_OUTSIDE'],
    ['url.ova', 'http://example.com/d.vmdk', 'ERR_UNSUPPORTED'],
    ['missing.ova', 'beside.vmdk', 'ERR_CORRUPT'],
  ] as const) {
    const p = join(dir, name);
    await makeTar(p, [
      { name: 'evil.ovf', data: descriptorFor(href) },
      { name: 'd.vmdk', data: disk },
    ]);
    await rejectsWith(ova.open(p, {}), code, p);
  }
  // a file beside the package with the href's name is still not read
  await makeTar(join(dir, 'beside.vmdk'), []);
  await rejectsWith(ova.open(join(dir, 'missing.ova'), {}), 'ERR_CORRUPT', 'missing.ova', 'not a member');
});
