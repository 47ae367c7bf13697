/**
 * A guest is hostile input. Its symlinks are followed inside the guest only, even when they
 * name host paths; loops and corrupt structures end adaptation with a clear PolyvisorError,
 * leaving no half-written overlay and, in place, every sector put back; a tampered manifest
 * is refused rather than obeyed.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { adaptGuest } from '../../src/guest/adapt.js';
import { readManifest, undoAdaptation } from '../../src/guest/manifest.js';
import { rejectsWith } from '../helpers.js';
import { editGuest, overlayOf, qemuCompare, readGuest, rootFs, sha256File, useDebian } from './adapt-fixtures.js';

describe('guest adapt: hostile guests and manifests', () => {
  const ctx = useDebian('kvm');

  test('a symlink pointing out of the guest is resolved inside it: the guest file is edited, the host file is not', async () => {
    const hostFile = join('/tmp', `polyvisor-hostile-fstab-${process.pid}`);
    const content = '/dev/vda1 / ext4 errors=remount-ro 0 1\n';
    await writeFile(hostFile, content);
    try {
      const src = await overlayOf(ctx.dir, ctx.g, 'symlink.qcow2');
      await editGuest(src, async (x) => {
        const fs = rootFs(x);
        await fs.writeFile(hostFile, Buffer.from(content));
        await fs.unlink('/etc/fstab');
        await fs.symlink(`/../../../../../..${hostFile}`, '/etc/fstab');
      });
      const r = await adaptGuest([src], { target: 'vmware', allowOutsidePaths: true });
      const fstab = r.changes.find((c) => c.kind === 'file' && /fstab/.test(c.why));
      assert.ok(fstab && fstab.kind === 'file', 'the fstab the guest reads was edited');
      assert.equal(fstab.guestPath, hostFile, 'through the link, at its target inside the guest');
      assert.equal(await readFile(hostFile, 'utf8'), content, "the host's file of the same name is untouched");
      await readGuest(r.outputs[0]!, async (x) => {
        assert.equal(await x.readlink('/etc/fstab'), `/../../../../../..${hostFile}`, 'the link itself stays');
        assert.match((await x.readFile('/etc/fstab')).toString(), new RegExp(`^UUID=${ctx.g.rootUuid} / ext4`, 'm'));
      });
    } finally {
      await rm(hostFile, { force: true });
    }
  });

  test('a symlink loop is refused with ERR_CORRUPT and no overlay is left', async () => {
    const src = await overlayOf(ctx.dir, ctx.g, 'loop.qcow2');
    await editGuest(src, async (x) => {
      const fs = rootFs(x);
      await fs.unlink('/etc/fstab');
      await fs.symlink('/etc/fstab.d/a', '/etc/fstab');
      await fs.mkdir('/etc/fstab.d');
      await fs.symlink('../fstab', '/etc/fstab.d/a');
    });
    const before = await readdir(ctx.dir);
    await rejectsWith(adaptGuest([src], { target: 'vmware', allowOutsidePaths: true }), 'ERR_CORRUPT', '', 'symbolic links');
    assert.deepEqual((await readdir(ctx.dir)).sort(), before.sort(), 'nothing left behind');
  });

  test('a corrupt initramfs stops an in-place adaptation, and every sector written before is put back', async () => {
    const src = await overlayOf(ctx.dir, ctx.g, 'corrupt.qcow2');
    await editGuest(src, async (x) => {
      await rootFs(x).writeFile(`/boot/initrd.img-${ctx.g.kernelVersion}`, Buffer.from('0707' + 'Z'.repeat(4092)));
    });
    const reference = join(ctx.dir, 'corrupt-before.qcow2');
    await copyFile(src, reference);
    await rejectsWith(adaptGuest([src], { target: 'vmware', inPlace: true, allowOutsidePaths: true }), 'ERR_CORRUPT', `/boot/initrd.img-${ctx.g.kernelVersion}`, 'cpio');
    const cmp = await qemuCompare(reference, src);
    assert.equal(cmp.status, 0, `the disk reads as before: ${cmp.text}`);
    assert.ok(!(await readdir(ctx.dir)).some((f) => f.startsWith('corrupt') && f.endsWith('.json')), 'no manifest for a failed adaptation');
  });

  test('cancelled half-way in place: ERR_ABORTED, and what was written is put back', async () => {
    const src = await overlayOf(ctx.dir, ctx.g, 'abort.qcow2');
    const reference = join(ctx.dir, 'abort-before.qcow2');
    await copyFile(src, reference);
    // aborted at the third check between steps: the login on hvc0 is written by then
    let checks = 0;
    const signal = { get aborted() { return ++checks >= 3; } } as AbortSignal;
    await rejectsWith(adaptGuest([src], { target: 'xen-pv', inPlace: true, allowOutsidePaths: true, signal }), 'ERR_ABORTED', src, 'taken back');
    const cmp = await qemuCompare(reference, src);
    assert.equal(cmp.status, 0, cmp.text);
  });

  test('a truncated initramfs is ERR_TRUNCATED, named', async () => {
    const src = await overlayOf(ctx.dir, ctx.g, 'truncated.qcow2');
    await editGuest(src, async (x) => {
      const fs = rootFs(x);
      const p = `/boot/initrd.img-${ctx.g.kernelVersion}`;
      const b = await fs.readFile(p);
      await fs.writeFile(p, b.subarray(0, b.length >> 1));
    });
    await rejectsWith(adaptGuest([src], { target: 'vmware', allowOutsidePaths: true }), 'ERR_TRUNCATED', `/boot/initrd.img-${ctx.g.kernelVersion}`);
  });

  test('a manifest naming a file outside its folder, or with a tampered journal, is refused', async () => {
    const src = await overlayOf(ctx.dir, ctx.g, 'manifest.qcow2');
    const r = await adaptGuest([src], { target: 'vmware', allowOutsidePaths: true });
    const text = await readFile(r.manifest, 'utf8');
    const m = JSON.parse(text);
    const evil = join(ctx.dir, 'evil.manifest.json');
    const c = m.changes.find((x: { before: unknown }) => typeof x.before === 'object' && x.before && 'saved' in (x.before as object));
    c.before.saved = '../../../../etc/passwd';
    await writeFile(evil, JSON.stringify(m));
    await rejectsWith(readManifest(evil), 'ERR_CORRUPT', evil, 'not one of the manifest\'s own files');
    await rejectsWith(undoAdaptation(evil), 'ERR_CORRUPT', evil);

    // the saved sectors no longer match their SHA-256: exact undo stops before writing anything
    const journal = join(r.manifest.replace(/\.json$/, '.d'), 'disk0.journal.gz');
    const { gunzipSync, gzipSync } = await import('node:zlib');
    const blob = gunzipSync(await readFile(journal));
    blob[0] = blob[0]! ^ 0xff;
    await writeFile(journal, gzipSync(blob));
    const sha = await sha256File(r.outputs[0]!);
    await rejectsWith(undoAdaptation(r.manifest), 'ERR_CHECKSUM', journal);
    assert.equal(await sha256File(r.outputs[0]!), sha, 'the disk was not written');
    assert.equal((await readManifest(r.manifest)).undone, undefined);
  });
});
