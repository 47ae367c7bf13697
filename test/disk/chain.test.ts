/**
 * Backing chains: mixed formats, and the rules that keep a hostile image from making us
 * read files the user did not name (outside the folder, symlinks, protocols), loop
 * (cycles) or exhaust resources (depth).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { chainOf, createImage, openImage } from '../../src/disk/chain.js';
import { convert } from '../../src/disk/convert.js';
import { isPolyvisorError } from '../../src/errors.js';
import { imageDigest, patternBytes, qemuDigest, qemuImg, qemuImgStatus, qemuIo, tempDir } from '../helpers.js';

test('a qcow2 overlay over a VHD parent reads as qemu-img reads it', async (t) => {
  const dir = await tempDir(t);
  const rawPath = join(dir, 'base.raw');
  await writeFile(rawPath, patternBytes(16 << 20, 11));
  const raw = await openImage(rawPath);
  await convert(raw, join(dir, 'parent.vhd'), 'vhd');
  await raw.close();
  // overlay made by qemu-img over Polyvisor's VHD, written by qemu-io
  const top = join(dir, 'top.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'parent.vhd', '-F', 'vpc', top);
  await qemuIo(top, 'qcow2', 'write -P 0x99 1M 64k', 'write -z 4M 1M', 'write -P 0x42 15M 100k');
  const img = await openImage(top);
  t.after(() => img.close());
  assert.deepEqual(chainOf(img).map((i) => i.format), ['qcow2', 'vhd']);
  assert.equal(await imageDigest(img), await qemuDigest(top, 'qcow2', dir));
});

test('an overlay Polyvisor creates over a VHD is written by qemu-io and read back by both', async (t) => {
  const dir = await tempDir(t);
  const rawPath = join(dir, 'base.raw');
  await writeFile(rawPath, patternBytes(8 << 20, 12));
  const raw = await openImage(rawPath);
  await convert(raw, join(dir, 'parent.vhd'), 'vhd');
  await raw.close();
  const top = join(dir, 'top.qcow2');
  const created = await createImage(top, 'qcow2', undefined, { backingFile: 'parent.vhd', backingFormat: 'vhd' });
  assert.equal(created.virtualSize, 8 << 20);
  await created.close();
  await qemuIo(top, 'qcow2', 'write -P 0x17 3M 5k');
  assert.equal(qemuImgStatus('check', top).status, 0);
  const img = await openImage(top);
  t.after(() => img.close());
  assert.equal(await imageDigest(img), await qemuDigest(top, 'qcow2', dir));
});

test('an overlay made over a backing image already open takes it over: closed with the overlay, or when creation fails', async (t) => {
  const dir = await tempDir(t);
  const base = join(dir, 'base.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', base, '4M');
  await qemuIo(base, 'qcow2', 'write -P 0x5a 1M 64k');
  const probed = await openImage(base);
  const top = join(dir, 'top.qcow2');
  const created = await createImage(top, 'qcow2', undefined, { backingFile: base, backingFormat: 'qcow2', backingImage: probed, allowOutsidePaths: true });
  assert.equal(created.virtualSize, 4 << 20);
  await created.close();
  // the overlay closed the image it was given
  await assert.rejects(probed.read(Buffer.alloc(512), 1 << 20));
  assert.equal(qemuImgStatus('check', top).status, 0);
  const img = await openImage(top);
  t.after(() => img.close());
  assert.equal(await imageDigest(img), await qemuDigest(top, 'qcow2', dir));

  // refused options, found before or while the format creates: the image handed over is closed all the same
  for (const options of ['nosuch=1', 'cluster_size=3']) {
    const again = await openImage(base);
    await assert.rejects(createImage(join(dir, 'bad.qcow2'), 'qcow2', undefined, { backingFile: base, backingImage: again, options }), (e) => isPolyvisorError(e, 'ERR_INVALID_OPTION'));
    await assert.rejects(again.read(Buffer.alloc(512), 1 << 20), `${options}: the image was left open`);
  }
  // an image handed over with no backing file name to record: refused, and closed
  const stray = await openImage(base);
  await assert.rejects(createImage(join(dir, 'stray.qcow2'), 'qcow2', 4 << 20, { backingImage: stray }), (e) => isPolyvisorError(e, 'ERR_INTERNAL'));
  await assert.rejects(stray.read(Buffer.alloc(512), 1 << 20), 'the stray image was left open');
});

test('a long chain is followed; a chain deeper than the limit is refused', async (t) => {
  const dir = await tempDir(t);
  await qemuImg('create', '-q', '-f', 'raw', join(dir, 'l0.img'), '1M');
  await qemuIo(join(dir, 'l0.img'), 'raw', 'write -P 0x01 0 4k');
  for (let i = 1; i <= 12; i++) {
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', `l${i - 1}.img`, '-F', i === 1 ? 'raw' : 'qcow2', join(dir, `l${i}.img`));
    await qemuIo(join(dir, `l${i}.img`), 'qcow2', `write -P ${i + 1} ${i * 4}k 4k`);
  }
  const img = await openImage(join(dir, 'l12.img'));
  assert.equal(chainOf(img).length, 13);
  assert.equal(await imageDigest(img), await qemuDigest(join(dir, 'l12.img'), 'qcow2', dir));
  await img.close();
  await assert.rejects(openImage(join(dir, 'l12.img'), { maxChainDepth: 5 }), (e) => isPolyvisorError(e, 'ERR_CHAIN_DEPTH') && /l\d+\.img/.test(e.message));
});

test('a chain that loops back on itself is refused', async (t) => {
  const dir = await tempDir(t);
  const a = join(dir, 'a.qcow2');
  const b = join(dir, 'b.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', a, '1M');
  await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'a.qcow2', '-F', 'qcow2', b);
  // -u rewrites the backing name without opening it: a now points at b, its own child
  await qemuImg('rebase', '-u', '-f', 'qcow2', '-b', 'b.qcow2', '-F', 'qcow2', a);
  await assert.rejects(openImage(b), (e) => isPolyvisorError(e, 'ERR_CHAIN_CYCLE'));
  await qemuImg('rebase', '-u', '-f', 'qcow2', '-b', 'a.qcow2', '-F', 'qcow2', a);
  await assert.rejects(openImage(a), (e) => isPolyvisorError(e, 'ERR_CHAIN_CYCLE'));
});

test('backing files outside the image folder are refused unless allowed', async (t) => {
  const dir = await tempDir(t);
  await mkdir(join(dir, 'vm'));
  await writeFile(join(dir, 'outside.raw'), patternBytes(1 << 20, 2));
  const child = join(dir, 'vm', 'child.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', '-b', '../outside.raw', '-F', 'raw', child);
  await assert.rejects(openImage(child), (e) => isPolyvisorError(e, 'ERR_PATH_OUTSIDE') && e.message.includes('child.qcow2'));
  const ok = await openImage(child, { allowOutsidePaths: true });
  assert.equal(ok.backing?.format, 'raw');
  await ok.close();

  // an absolute name of a host file
  const abs = join(dir, 'vm', 'abs.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', '/etc/passwd', '-F', 'raw', abs, '1M');
  await assert.rejects(openImage(abs), (e) => isPolyvisorError(e, 'ERR_PATH_OUTSIDE'));

  // a symlink inside the folder that points outside it
  await symlink(join(dir, 'outside.raw'), join(dir, 'vm', 'link.raw'));
  const viaLink = join(dir, 'vm', 'via-link.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', 'link.raw', '-F', 'raw', viaLink, '1M');
  await assert.rejects(openImage(viaLink), (e) => isPolyvisorError(e, 'ERR_PATH_OUTSIDE'));

  // info without the chain still works, and names what it would have opened
  const info = await openImage(child, { noBacking: true });
  assert.equal(info.backingRef?.name, '../outside.raw');
  await info.close();
});

test('protocol backing names are never followed; a missing backing file is named', async (t) => {
  const dir = await tempDir(t);
  const nbd = join(dir, 'nbd.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', 'nbd://127.0.0.1:10809/x', '-F', 'raw', nbd, '1M');
  await assert.rejects(openImage(nbd), (e) => isPolyvisorError(e, 'ERR_UNSUPPORTED') && e.message.includes('nbd://'));
  const missing = join(dir, 'missing.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', 'gone.raw', '-F', 'raw', missing, '1M');
  await assert.rejects(openImage(missing), (e) => isPolyvisorError(e, 'ERR_NOT_FOUND') && e.message.includes('gone.raw'));
});

test('a qcow2 overlay over a VMDK that Polyvisor wrote reads as qemu-img reads it', async (t) => {
  const dir = await tempDir(t);
  const rawPath = join(dir, 'base.raw');
  await writeFile(rawPath, patternBytes(8 << 20, 21));
  const raw = await openImage(rawPath);
  await convert(raw, join(dir, 'parent.vmdk'), 'vmdk');
  await raw.close();
  const top = join(dir, 'top.qcow2');
  await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'parent.vmdk', '-F', 'vmdk', top);
  await qemuIo(top, 'qcow2', 'write -P 0x5e 2M 100k', 'write -z 5M 64k');
  const img = await openImage(top);
  t.after(() => img.close());
  assert.deepEqual(chainOf(img).map((i) => i.format), ['qcow2', 'vmdk']);
  assert.equal(await imageDigest(img), await qemuDigest(top, 'qcow2', dir));
});

test('a VHDX child over a VHDX parent, written through the library, flattens to what the guest saw', async (t) => {
  const dir = await tempDir(t);
  const rawPath = join(dir, 'base.raw');
  const base = patternBytes(8 << 20, 22);
  await writeFile(rawPath, base);
  const raw = await openImage(rawPath);
  await convert(raw, join(dir, 'parent.vhdx'), 'vhdx', { options: 'block_size=1M' });
  await raw.close();
  const child = await createImage(join(dir, 'child.avhdx'), 'vhdx', undefined, { backingFile: 'parent.vhdx', backingFormat: 'vhdx' });
  const patch = patternBytes(300_000, 23);
  await child.write(patch, 3_000_000);
  await child.close();
  const expected = Buffer.from(base);
  patch.copy(expected, 3_000_000);
  const img = await openImage(join(dir, 'child.avhdx'));
  t.after(() => img.close());
  assert.deepEqual(chainOf(img).map((i) => i.format), ['vhdx', 'vhdx']);
  // flattened by Polyvisor into a plain VHDX, which qemu-img can read (it cannot read differencing VHDX)
  await convert(img, join(dir, 'flat.vhdx'), 'vhdx');
  await writeFile(join(dir, 'expected.raw'), expected);
  assert.equal(qemuImgStatus('compare', '-f', 'raw', '-F', 'vhdx', join(dir, 'expected.raw'), join(dir, 'flat.vhdx')).status, 0);
});
