/** Windows: a disk stored inside another file (an OVA member) opens in place, read-only. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openImage } from '../../src/disk/chain.js';
import { isPolyvisorError } from '../../src/errors.js';
import { imageDigest, patternBytes, qemuDigest, qemuImg, qemuIo, tempDir } from '../helpers.js';

for (const fmt of ['qcow2', 'vmdk', 'raw']) {
  test(`a ${fmt} image inside a larger file reads as the image itself`, async (t) => {
    const dir = await tempDir(t);
    const img = join(dir, `disk.${fmt}`);
    await qemuImg('create', '-q', '-f', fmt, img, '8M');
    await qemuIo(img, fmt, 'write -P 0x3c 1M 300k', 'write -P 0x3d 7M 64k');
    const bytes = await readFile(img);
    const before = patternBytes(3 * 512, 1);
    const after = patternBytes(4096, 2);
    const pkg = join(dir, 'package.bin');
    await writeFile(pkg, Buffer.concat([before, bytes, after]));
    const w = await openImage(pkg, { format: fmt, window: { offset: before.length, length: bytes.length } });
    t.after(() => w.close());
    assert.equal(w.format, fmt);
    assert.equal(await imageDigest(w), await qemuDigest(img, fmt, dir));
    await assert.rejects(w.write(Buffer.alloc(1), 0), (e) => isPolyvisorError(e, 'ERR_READ_ONLY'));
    // probing works inside the window too
    const probed = await openImage(pkg, { window: { offset: before.length, length: bytes.length } });
    assert.equal(probed.format, fmt);
    await probed.close();
  });
}

test('a window past the end of the file, or a writable window, is refused', async (t) => {
  const dir = await tempDir(t);
  const f = join(dir, 'small.bin');
  await writeFile(f, Buffer.alloc(4096));
  await assert.rejects(openImage(f, { window: { offset: 1024, length: 4096 } }), (e) => isPolyvisorError(e, 'ERR_TRUNCATED') && e.message.includes(f));
  await assert.rejects(openImage(f, { writable: true, window: { offset: 0, length: 512 } }), (e) => isPolyvisorError(e, 'ERR_READ_ONLY'));
});

test('an image inside a package cannot reach files beside the package', async (t) => {
  const dir = await tempDir(t);
  // a VMDK text descriptor whose extent names a file that does exist beside the "package"
  await writeFile(join(dir, 'secret-flat.vmdk'), Buffer.alloc(1 << 20, 0x41));
  const descriptor = Buffer.from(
    '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\nRW 2048 FLAT "secret-flat.vmdk" 0\n\nddb.virtualHWVersion = "4"\n',
  );
  const pkg = join(dir, 'package.bin');
  await writeFile(pkg, Buffer.concat([Buffer.alloc(512), descriptor]));
  await assert.rejects(openImage(pkg, { format: 'vmdk', window: { offset: 512, length: descriptor.length } }), (e) => isPolyvisorError(e, 'ERR_UNSUPPORTED'));
});
