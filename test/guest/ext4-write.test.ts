/**
 * ext2/3/4 writing, checked by e2fsprogs: after every batch of changes `e2fsck -fn` must find
 * nothing to fix, and debugfs must read the new bytes, modes and links; our own reader, reopened,
 * must agree. The changes are the ones guest adaptation makes: replace an initramfs and config
 * files, add a modules-load.d file and a systemd unit symlink, remove and rename for undo.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { link, mkdir, open, rm, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { openExt } from '../../src/guest/ext4.js';
import { patternBytes, rejectsWith, tempDir } from '../helpers.js';
import { assertFsckClean, bytes, debugfs, debugfsCat, debugfsScript, mkfs, openVolume, rng, tool, type MkfsOptions } from './ext4-fixtures.js';

const VARIANTS: { name: string; o: Omit<MkfsOptions, 'src' | 'size'> }[] = [
  { name: 'ext4 (4K, 64bit, metadata_csum)', o: { type: 'ext4', blockSize: 4096 } },
  { name: 'ext4 1K', o: { type: 'ext4', blockSize: 1024 } },
  { name: 'ext4 without metadata_csum (gdt_csum)', o: { type: 'ext4', features: '^metadata_csum,uninit_bg' } },
  { name: 'ext4 without metadata_csum and 64bit (gdt_csum, 32-byte descriptors)', o: { type: 'ext4', blockSize: 1024, features: '^metadata_csum,^64bit,uninit_bg' } },
  { name: 'ext4 without any checksums', o: { type: 'ext4', features: '^metadata_csum' } },
  { name: 'ext4 metadata_csum without 64bit', o: { type: 'ext4', features: '^64bit' } },
  { name: 'ext4 meta_bg', o: { type: 'ext4', blockSize: 1024, features: 'meta_bg,^resize_inode' } },
  { name: 'ext4 without flex_bg', o: { type: 'ext4', features: '^flex_bg' } },
  { name: 'ext4 128-byte inodes', o: { type: 'ext4', inodeSize: 128 } },
  { name: 'ext4 64K blocks', o: { type: 'ext4', blockSize: 65536 } },
  { name: 'ext3 4K', o: { type: 'ext3', blockSize: 4096 } },
  { name: 'ext3 1K', o: { type: 'ext3', blockSize: 1024 } },
  { name: 'ext2 4K', o: { type: 'ext2', blockSize: 4096 } },
  { name: 'ext2 1K', o: { type: 'ext2', blockSize: 1024 } },
];

/** A small Debian-like root: what adaptation touches, plus a hash-indexed folder. */
async function guestTree(src: string): Promise<void> {
  for (const d of ['etc/default', 'etc/systemd/system', 'boot/grub', 'big', 'emptydir', 'srv/a/b', 'opt', 'run', 'lib/systemd/system']) await mkdir(join(src, d), { recursive: true });
  await writeFile(join(src, 'etc/fstab'), 'UUID=old / ext4 defaults 0 1\n');
  await writeFile(join(src, 'etc/default/grub'), 'GRUB_CMDLINE_LINUX=""\n');
  await writeFile(join(src, 'etc/old.conf'), 'old\n');
  await writeFile(join(src, 'boot/grub/grub.cfg'), 'menuentry "Debian" {\n' + 'x'.repeat(10000) + '\n}\n');
  await writeFile(join(src, 'boot/initrd.img-6.1.0-1-amd64'), patternBytes(2 << 20, 5));
  await writeFile(join(src, 'lib/systemd/system/foo.service'), '[Unit]\nDescription=foo\n');
  await writeFile(join(src, 'srv/a/b/file'), 'deep\n');
  await symlink('/run/resolv.conf', join(src, 'etc/resolv.conf'));
  // 3000 entries: with 1 KiB blocks e2fsck -D gives them a two-level hash index (dx nodes)
  for (let i = 0; i < 3000; i++) await writeFile(join(src, 'big', `entry-${i}-${'q'.repeat(i % 40)}`), `${i}\n`);
  await writeFile(join(src, 'hard1'), 'hard link\n');
  await link(join(src, 'hard1'), join(src, 'hard2'));
}

let shared: Promise<string> | undefined;
/** One guest tree for every variant, built once per run. */
function sharedTree(): Promise<string> {
  shared ??= (async () => {
    const src = join(await tempDir(), 'src');
    await guestTree(src);
    return src;
  })();
  return shared;
}
test.after(async () => {
  if (shared) await rm(dirname(await shared), { recursive: true, force: true });
});

for (const v of VARIANTS) {
  test(`ext write: ${v.name}: adaptation changes leave a file system e2fsck finds clean`, async (t) => {
    const dir = await tempDir(t);
    const src = await sharedTree();
    const img = join(dir, 'fs.img');
    mkfs(img, { ...v.o, size: v.o.blockSize === 65536 ? '512M' : '64M', src, index: true });
    assertFsckClean(img);
    const blockSize = Number(tool('dumpe2fs', ['-h', img]).stdout.match(/Block size:\s+(\d+)/)![1]);
    assert.match(debugfs(img, 'htree /big'), blockSize === 1024 ? /Indirect levels: 1/ : /Indirect levels: 0/);
    const { volume, image } = await openVolume(img, true);
    const fs = await openExt(volume);
    assert.equal(fs.readOnly, false, fs.readOnlyReason ?? '');
    const bs = fs.blockSize;
    const fstab = Buffer.from('UUID=new / ext4 errors=remount-ro 0 1\n/dev/vdb none swap sw 0 0\n');
    const initrd = patternBytes(3 << 20, 77);
    const grubCfg = Buffer.from('menuentry "Debian" { linux /vmlinuz root=/dev/vda1 }\n');
    const defaults = Buffer.from('GRUB_CMDLINE_LINUX="console=ttyS0"\n');
    const longTarget = '/lib/systemd/system/' + 'long-'.repeat(60) + 'unit.service';
    await fs.writeFile('/etc/fstab', fstab);
    await fs.writeFile('/boot/initrd.img-6.1.0-1-amd64', initrd);
    await fs.writeFile('/boot/grub/grub.cfg', grubCfg);
    await fs.mkdir('/etc/modules-load.d');
    await fs.writeFile('/etc/modules-load.d/virtio.conf', Buffer.from('virtio_blk\nvirtio_net\n'), { mode: 0o640 });
    await fs.mkdir('/etc/systemd/system/multi-user.target.wants');
    await fs.symlink('/lib/systemd/system/foo.service', '/etc/systemd/system/multi-user.target.wants/foo.service');
    await fs.symlink(longTarget, '/etc/long-link');
    await fs.writeFile('/big/new-entry', Buffer.from('added to an indexed folder\n'));
    await fs.unlink('/big/entry-5-qqqqq');
    await fs.unlink('/etc/old.conf');
    await fs.unlink('/hard1');
    await fs.rename('/etc/default/grub', '/etc/default/grub.orig');
    await fs.writeFile('/etc/default/grub', defaults);
    await fs.chmod('/etc/fstab', 0o600);
    await fs.writeFile('/empty', Buffer.alloc(0));
    await fs.writeFile('/exact', bytes(bs, 1));
    await fs.writeFile('/plus1', bytes(bs + 1, 2));
    await fs.rmdir('/emptydir');
    await fs.rename('/srv/a', '/opt/a');
    await fs.writeFile('/etc/resolv.conf', Buffer.from('nameserver 10.0.2.3\n'));
    await fs.writeFile('/etc/fstab', fstab); // a second replace of the same file
    await fs.flush();
    await image.close();

    assertFsckClean(img);
    const expect: [string, Buffer][] = [
      ['/etc/fstab', fstab],
      ['/boot/initrd.img-6.1.0-1-amd64', initrd],
      ['/boot/grub/grub.cfg', grubCfg],
      ['/etc/modules-load.d/virtio.conf', Buffer.from('virtio_blk\nvirtio_net\n')],
      ['/big/new-entry', Buffer.from('added to an indexed folder\n')],
      ['/etc/default/grub.orig', Buffer.from('GRUB_CMDLINE_LINUX=""\n')],
      ['/etc/default/grub', defaults],
      ['/empty', Buffer.alloc(0)],
      ['/exact', bytes(bs, 1)],
      ['/plus1', bytes(bs + 1, 2)],
      ['/opt/a/b/file', Buffer.from('deep\n')],
      ['/run/resolv.conf', Buffer.from('nameserver 10.0.2.3\n')],
      ['/hard2', Buffer.from('hard link\n')],
    ];
    for (const [p, want] of expect) assert.ok(debugfsCat(img, p).equals(want), `debugfs cat ${p}`);
    assert.match(debugfs(img, 'stat /etc/fstab'), /Mode:\s+0600/);
    assert.match(debugfs(img, 'stat /etc/modules-load.d/virtio.conf'), /Mode:\s+0640/);
    assert.match(debugfs(img, 'stat /etc/systemd/system/multi-user.target.wants/foo.service'), /Fast link dest: "\/lib\/systemd\/system\/foo.service"/);
    assert.match(debugfs(img, 'stat /hard2'), /Links: 1/);
    const ls = debugfs(img, 'ls /');
    assert.doesNotMatch(ls, /emptydir|hard1/);
    assert.doesNotMatch(debugfs(img, 'ls /big'), /entry-5-qqqqq\b/);
    assert.doesNotMatch(debugfs(img, 'stat /big'), /Flags: 0x8?1000\b/, 'the folder that gained an entry lost its hash index');
    assert.match(debugfs(img, 'ls -l /opt/a'), /\.\.\s/);

    // and our reader, reopened, sees the same
    const again = await openVolume(img, false);
    t.after(() => again.image.close());
    const fs2 = await openExt(again.volume);
    for (const [p, want] of expect) assert.ok((await fs2.readFile(p)).equals(want), p);
    assert.equal(await fs2.readlink('/etc/long-link'), longTarget);
    assert.equal(await fs2.readlink('/etc/systemd/system/multi-user.target.wants/foo.service'), '/lib/systemd/system/foo.service');
    assert.equal((await fs2.readFile('/etc/systemd/system/multi-user.target.wants/foo.service')).toString(), '[Unit]\nDescription=foo\n');
    assert.equal((await fs2.readdir('/big')).length, 3000);
    assert.equal(await fs2.exists('/srv/a'), false);
    assert.equal((await fs2.stat('/opt/a/b/..')).type, 'directory');
  });
}

/** An image whose free space is a thousand one-block holes (plus a little), made by debugfs. */
async function fragmented(dir: string, type: 'ext2' | 'ext4'): Promise<string> {
  const src = join(dir, 'src');
  await mkdir(join(src, 'frag'), { recursive: true });
  for (let i = 0; i < 2000; i++) await writeFile(join(src, 'frag', `f${i}`), bytes(1024, i + 1));
  const img = join(dir, `${type}.img`);
  mkfs(img, { type, blockSize: 1024, size: '16M', src });
  const free = Number(tool('dumpe2fs', ['-h', img]).stdout.match(/Free blocks:\s+(\d+)/)![1]);
  await writeFile(join(dir, 'filler'), Buffer.alloc((free - 40) * 1024, 1));
  debugfsScript(img, [`write ${join(dir, 'filler')} /filler`, ...Array.from({ length: 1000 }, (_, i) => `rm /frag/f${i * 2}`)]);
  assertFsckClean(img);
  return img;
}

test('ext write: a file written into a thousand holes gets an extent tree of depth 2 (ext4) and indirect blocks (ext2)', async (t) => {
  const dir = await tempDir(t);
  for (const type of ['ext4', 'ext2'] as const) {
    const img = await fragmented(dir, type);
    const { volume, image } = await openVolume(img, true);
    const fs = await openExt(volume);
    const data = patternBytes(700 * 1024, 42);
    await fs.writeFile('/frag/f1', data); // replaces a 1 KiB file
    await image.close();
    assertFsckClean(img);
    assert.ok(debugfsCat(img, '/frag/f1').equals(data), type);
    if (type === 'ext4') assert.match(debugfs(img, 'ex /frag/f1'), /^\s*2\/\s*2/m, 'depth 2');
    else assert.match(debugfs(img, 'stat /frag/f1'), /\(DIND\)/, 'a double-indirect block');
  }
});

test('ext write: running out of space is ERR_UNSUPPORTED "no space left", and the file system stays clean and writable', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'keep'), 'keep\n');
  const img = join(dir, 'fs.img');
  mkfs(img, { type: 'ext4', size: '8M', src });
  const { volume, image } = await openVolume(img, true);
  const fs = await openExt(volume);
  await rejectsWith(fs.writeFile('/huge', Buffer.alloc(16 << 20)), 'ERR_UNSUPPORTED', img, 'no space left');
  await fs.writeFile('/keep', Buffer.from('still writable\n'));
  await image.close();
  assertFsckClean(img);
  assert.equal(debugfsCat(img, '/keep').toString(), 'still writable\n');
});

test('ext write: refusals: read-only opening, unknown ro_compat features, immutable files, names that exist, non-empty folders', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(join(src, 'full'), { recursive: true });
  await writeFile(join(src, 'full/x'), 'x');
  await writeFile(join(src, 'locked'), 'locked\n');
  const img = join(dir, 'fs.img');
  mkfs(img, { type: 'ext4', size: '8M', src });
  debugfs(img, 'sif /locked flags 0x80010', true);
  {
    const { volume, image } = await openVolume(img, true);
    t.after(() => image.close());
    const ro = await openExt(volume, { readOnly: true });
    await rejectsWith(ro.writeFile('/a', Buffer.from('a')), 'ERR_READ_ONLY', img);
    const fs = await openExt(volume);
    await rejectsWith(fs.writeFile('/locked', Buffer.from('no')), 'ERR_UNSUPPORTED', img, 'immutable');
    await rejectsWith(fs.mkdir('/full'), 'ERR_EXISTS', img);
    await rejectsWith(fs.symlink('x', '/locked'), 'ERR_EXISTS', img);
    await rejectsWith(fs.rmdir('/full'), 'ERR_EXISTS', img, 'not empty');
    await rejectsWith(fs.unlink('/full'), 'ERR_EXISTS', img, 'directory');
    await rejectsWith(fs.writeFile('/full', Buffer.from('x')), 'ERR_EXISTS', img, 'is a directory');
    await rejectsWith(fs.rename('/full', '/full/x/y'), 'ERR_NOT_FOUND', img);
    await rejectsWith(fs.writeFile('/nodir/file', Buffer.from('x')), 'ERR_NOT_FOUND', img);
    await rejectsWith(fs.writeFile('/' + 'n'.repeat(256), Buffer.from('x')), 'ERR_UNSUPPORTED', img, 'cannot be a file name');
  }
  assertFsckClean(img);
  // an ro_compat feature Polyvisor does not know: readable, never writable
  debugfs(img, 'ssv feature_ro_compat 0x80000472', true);
  const { volume, image } = await openVolume(img, true);
  t.after(() => image.close());
  const fs = await openExt(volume);
  assert.equal(fs.readOnly, true);
  assert.match(fs.readOnlyReason ?? '', /read-only-compatible feature 0x80000000/);
  assert.equal((await fs.readFile('/locked')).toString(), 'locked\n');
  await rejectsWith(fs.writeFile('/a', Buffer.from('a')), 'ERR_UNSUPPORTED', img, 'feature 0x80000000');
});

test('ext write: rename over an existing file releases it; a folder moved into itself is refused', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(join(src, 'd/sub'), { recursive: true });
  await writeFile(join(src, 'a'), 'a\n');
  await writeFile(join(src, 'b'), patternBytes(100000, 3));
  const img = join(dir, 'fs.img');
  mkfs(img, { type: 'ext4', size: '8M', src });
  const { volume, image } = await openVolume(img, true);
  const fs = await openExt(volume);
  await fs.rename('/a', '/b');
  await rejectsWith(fs.rename('/d', '/d/sub/d2'), 'ERR_UNSUPPORTED', img, 'into itself');
  await fs.mkdir('/e');
  await fs.rename('/d/sub', '/e/sub');
  await fs.mkdir('/f');
  await fs.rename('/e/sub', '/f'); // over an empty folder
  await image.close();
  assertFsckClean(img);
  assert.equal(debugfsCat(img, '/b').toString(), 'a\n');
  assert.doesNotMatch(debugfs(img, 'ls /e') + debugfs(img, 'ls /d'), /\bsub\b/);
  assert.match(debugfs(img, 'stat /f'), /Type: directory/);
  assert.match(debugfs(img, 'stat /d'), /Links: 2\b/);
});

test('ext write: allocating into BLOCK_UNINIT and INODE_UNINIT groups initialises their bitmaps and clears the flags', async (t) => {
  const dir = await tempDir(t);
  for (const features of [undefined, '^metadata_csum,uninit_bg', 'meta_bg,^resize_inode', '^flex_bg']) {
    const img = join(dir, `uninit-${features ?? 'default'}.img`);
    mkfs(img, { type: 'ext4', blockSize: 1024, size: '64M', features });
    const before = tool('dumpe2fs', [img]).stdout;
    assert.match(before, /Group 3: .*BLOCK_UNINIT/);
    const { volume, image } = await openVolume(img, true);
    const fs = await openExt(volume);
    // 30 MiB does not fit group 0 (8 MiB groups): the file spills into never-written groups
    const big = patternBytes(30 << 20, 8);
    await fs.writeFile('/big', big);
    // more files than group 0 has inodes: new inodes come from INODE_UNINIT groups
    await fs.mkdir('/many');
    for (let i = 0; i < 2100; i++) await fs.writeFile(`/many/f${i}`, Buffer.from(`${i}\n`));
    await image.close();
    assertFsckClean(img);
    const after = tool('dumpe2fs', [img]).stdout;
    assert.doesNotMatch(after.match(/Group 1: [^\n]*/)![0], /INODE_UNINIT/, features);
    assert.ok(debugfsCat(img, '/big').equals(big), features);
    assert.equal(debugfsCat(img, '/many/f2099').toString(), '2099\n');
  }
});

test('ext write: extended attribute blocks: kept on replace, shared ones lose a reference, the last user frees them', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  for (const n of ['f', 'g', 'h']) await writeFile(join(src, n), `${n}\n`);
  const img = join(dir, 'fs.img');
  // 128-byte inodes: no room in the inode, so attributes get a block of their own
  mkfs(img, { type: 'ext4', blockSize: 1024, inodeSize: 128, size: '8M', src });
  debugfsScript(img, ['ea_set /f user.a shared-value', 'ea_set /g user.a shared-value', 'ea_set /h user.b own-value']);
  const acl = (p: string) => Number(debugfs(img, `stat ${p}`).match(/File ACL: (\d+)/)![1]);
  // share /f's block with /g (refcount 2), as the kernel does for identical attributes; e2fsck -fy seals it
  const shared = acl('/f');
  const spare = acl('/g');
  const fh = await open(img, 'r+');
  const two = Buffer.alloc(4);
  two.writeUInt32LE(2);
  await fh.write(two, 0, 4, shared * 1024 + 4);
  await fh.close();
  debugfsScript(img, [`sif /g file_acl ${shared}`, `freeb ${spare}`]);
  assert.ok(tool('e2fsck', ['-fy', img]).status <= 1);
  assertFsckClean(img);
  const { volume, image } = await openVolume(img, true);
  const fs = await openExt(volume);
  await fs.writeFile('/h', patternBytes(5000, 1)); // replaced: its attribute block stays, counted in i_blocks
  await fs.unlink('/f'); // shared: refcount 2 → 1
  await image.close();
  assertFsckClean(img);
  assert.match(debugfs(img, 'ea_list /g'), /user.a.*shared-value/);
  assert.match(debugfs(img, 'ea_list /h'), /user.b.*own-value/);
  const again = await openVolume(img, true);
  const fs2 = await openExt(again.volume);
  await fs2.unlink('/g'); // the last user: freed
  await fs2.unlink('/h');
  await again.image.close();
  assertFsckClean(img);
  assert.match(debugfs(img, `testb ${shared}`), /not in use/);
});

test('ext write: 400 random operations against a model, then e2fsck finds nothing and every file reads back', async (t) => {
  const dir = await tempDir(t);
  for (const type of ['ext4', 'ext2'] as const) {
    const img = join(dir, `${type}.img`);
    mkfs(img, { type, blockSize: 1024, size: '32M' });
    const rand = rng(type === 'ext4' ? 12345 : 777);
    type Node = { kind: 'file'; data: Buffer } | { kind: 'dir' } | { kind: 'link'; target: string };
    const model = new Map<string, Node>([['/', { kind: 'dir' }]]);
    const dirs = () => [...model].filter(([, n]) => n.kind === 'dir').map(([p]) => p);
    const join2 = (d: string, n: string) => (d === '/' ? `/${n}` : `${d}/${n}`);
    const children = (d: string) => [...model.keys()].filter((p) => p !== d && p.startsWith(d === '/' ? '/' : `${d}/`) && !p.slice(d === '/' ? 1 : d.length + 1).includes('/'));
    const { volume, image } = await openVolume(img, true);
    const fs = await openExt(volume);
    for (let i = 0; i < 400; i++) {
      const op = rand(10);
      const d = dirs()[rand(dirs().length)]!;
      const p = join2(d, `${['f', 'g', 'l', 'd'][rand(4)]}${rand(120)}`);
      const node = model.get(p);
      if (op < 5) {
        if (node && node.kind !== 'file') continue;
        const size = [0, 1, 1023, 1024, 1025, 5000, 70000, 300000][rand(8)]!;
        const data = patternBytes(Math.max(size, 4), i).subarray(0, size);
        await fs.writeFile(p, data);
        model.set(p, { kind: 'file', data: Buffer.from(data) });
      } else if (op === 5 && !node) {
        await fs.mkdir(p);
        model.set(p, { kind: 'dir' });
      } else if (op === 6 && !node) {
        const target = rand(2) ? `/target/${i}` : 'x'.repeat(1 + rand(300));
        await fs.symlink(target, p);
        model.set(p, { kind: 'link', target });
      } else if (op === 7 && node && node.kind !== 'dir') {
        await fs.unlink(p);
        model.delete(p);
      } else if (op === 8 && node?.kind === 'dir' && children(p).length === 0) {
        await fs.rmdir(p);
        model.delete(p);
      } else if (op === 9 && node && node.kind !== 'dir') {
        const to = join2(dirs()[rand(dirs().length)]!, `r${rand(50)}`);
        if (model.get(to)?.kind === 'dir') continue;
        await fs.rename(p, to);
        model.set(to, node);
        model.delete(p);
      }
    }
    await image.close();
    assertFsckClean(img);
    const again = await openVolume(img, false);
    t.after(() => again.image.close());
    const fs2 = await openExt(again.volume);
    for (const [p, n] of model) {
      if (n.kind === 'file') assert.ok((await fs2.readFile(p)).equals(n.data), `${type} ${p}`);
      else if (n.kind === 'link') assert.equal(await fs2.readlink(p), n.target, `${type} ${p}`);
      else {
        const names = (await fs2.readdir(p)).map((e) => e.name).filter((n2) => n2 !== 'lost+found').sort();
        assert.deepEqual(names, children(p).map((c) => c.slice(c.lastIndexOf('/') + 1)).sort(), `${type} ${p}`);
      }
    }
    const someFile = [...model].find(([, n]) => n.kind === 'file' && n.data.length > 60000);
    if (someFile) assert.ok(debugfsCat(img, someFile[0]).equals((someFile[1] as { data: Buffer }).data));
  }
});
