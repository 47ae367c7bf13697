/**
 * Initramfs images, with GNU cpio and Debian's lsinitramfs as the oracles: archives made by
 * `cpio -o -H newc` (and -H crc), compressed by the real gzip, zstd, xz, lzma, lz4 (frame and
 * legacy) and bzip2 tools and put after an uncompressed early-microcode archive as Debian and
 * dracut make them, must list as `cpio -it` and lsinitramfs list them and hold the same bytes;
 * what writeCpio writes must extract with `cpio -idv` and list with lsinitramfs. Hostile
 * archives (truncated, huge names, sizes past the end, bad magic, bombs) fail with clear codes.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { linkSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { appendSegment, DEFAULT_MAX_INITRAMFS, detectCompression, parseCpio, readInitramfs, writeCpio, type Compression, type CpioInput } from '../../src/guest/initramfs.js';
import { isPolyvisorError, type ErrorCode } from '../../src/errors.js';
import { buildDebianGuest, DEBIAN_KINDS } from '../guests/debian.js';
import { patternBytes, tempDir } from '../helpers.js';

function run(cmd: string, args: string[], opts: { cwd?: string; input?: Buffer } = {}): Buffer {
  return execFileSync(cmd, args, { cwd: opts.cwd, input: opts.input, maxBuffer: 1 << 30, stdio: ['pipe', 'pipe', 'pipe'] });
}

/** `find . | sort | cpio -o -H <format>` in `dir`, as mkinitramfs runs it */
function cpioOf(dir: string, format = 'newc'): Buffer {
  return run('sh', ['-c', `find . | LC_ALL=C sort | cpio -o -H ${format} --quiet`], { cwd: dir });
}

function cpioList(archive: Buffer): string[] {
  return run('cpio', ['-it', '--quiet'], { input: archive }).toString('utf8').split('\n').filter(Boolean);
}

function lsinitramfs(image: string): string[] {
  return run('lsinitramfs', [image]).toString('utf8').split('\n').filter(Boolean);
}

/** The compressors the kernel reads, as the initramfs generators call them (xz with CRC32: the kernel's xz only checks that). */
const COMPRESSORS: [Compression, string, string[]][] = [
  ['gzip', 'gzip', ['-n', '-9', '-c']],
  ['zstd', 'zstd', ['-q', '-19', '-c']],
  ['xz', 'xz', ['--check=crc32', '-c']],
  ['lzma', 'xz', ['--format=lzma', '-c']],
  ['lz4-legacy', 'lz4', ['-l', '-q', '-c']],
  ['lz4', 'lz4', ['-q', '-c']],
  ['bzip2', 'bzip2', ['-c']],
];

function compress(tool: string, args: string[], data: Buffer): Buffer {
  return run(tool, args, { input: data });
}

/** An early-microcode tree and an initramfs-tools-like main tree with a few kernel modules. */
function makeTrees(dir: string): { early: string; main: string; files: Record<string, Buffer> } {
  const early = join(dir, 'early');
  const main = join(dir, 'main');
  const files: Record<string, Buffer> = {};
  const put = (root: string, rel: string, data: Buffer) => {
    mkdirSync(join(root, rel, '..'), { recursive: true });
    writeFileSync(join(root, rel), data);
    files[rel] = data;
  };
  put(early, 'kernel/x86/microcode/GenuineIntel.bin', patternBytes(3000, 1));
  put(main, 'init', Buffer.from('#!/bin/sh\nexec /sbin/init\n'));
  put(main, 'conf/initramfs.conf', Buffer.from('MODULES=list\nBUSYBOX=auto\n'));
  put(main, 'scripts/init-top/udev', Buffer.from('#!/bin/sh\n'));
  put(main, 'usr/lib/modules/6.1.0-99-amd64/kernel/drivers/block/virtio_blk.ko', patternBytes(40_000, 2));
  put(main, 'usr/lib/modules/6.1.0-99-amd64/kernel/drivers/block/xen-blkfront.ko', patternBytes(50_001, 3));
  put(main, 'usr/lib/modules/6.1.0-99-amd64/modules.dep', Buffer.from('kernel/drivers/block/virtio_blk.ko:\nkernel/drivers/block/xen-blkfront.ko:\n'));
  put(main, 'usr/bin/big', patternBytes(1_500_000, 4));
  put(main, 'etc/empty', Buffer.alloc(0));
  symlinkSync('usr/lib', join(main, 'lib'));
  symlinkSync('usr/bin', join(main, 'bin'));
  linkSync(join(main, 'usr/bin/big'), join(main, 'usr/bin/big-link'));
  files['usr/bin/big-link'] = files['usr/bin/big']!;
  return { early, main, files };
}

async function rejectsCode(p: Promise<unknown> | (() => unknown), code: ErrorCode, ...words: string[]): Promise<void> {
  const check = (e: unknown) => {
    assert.ok(isPolyvisorError(e), `expected a PolyvisorError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    for (const w of words) assert.ok(e.message.includes(w), `message mentions "${w}": ${e.message}`);
    return true;
  };
  if (typeof p === 'function') assert.throws(p, check);
  else await assert.rejects(p, check);
}

describe('cpio newc, read against GNU cpio', () => {
  test('files, folders, symlinks, a hard link and an empty file list as cpio -it lists them, with the same bytes', async (t) => {
    const dir = await tempDir(t);
    const { main, files } = makeTrees(dir);
    const archive = cpioOf(main);
    const entries = parseCpio(archive);
    assert.deepEqual(entries.map((e) => e.name), cpioList(archive));
    for (const e of entries) {
      const host = join(main, e.name);
      const st = lstatSync(host);
      assert.equal(e.mode, st.mode, e.name);
      if (e.type === 'file') assert.ok(e.data.equals(readFileSync(host)), `${e.name}: data`);
      if (e.type === 'symlink') assert.equal(e.target, readlinkSync(host));
      if (e.type === 'directory') assert.ok(st.isDirectory());
    }
    // newc stores a hard link's data once; both names read it
    const big = entries.filter((e) => e.name === 'usr/bin/big' || e.name === 'usr/bin/big-link');
    assert.equal(big.length, 2);
    for (const e of big) assert.ok(e.data.equals(files['usr/bin/big']!), e.name);
    assert.equal(entries.find((e) => e.name === '.')!.path, '/');
    assert.equal(entries.find((e) => e.name === 'usr/lib')!.path, '/usr/lib');
  });

  test('the crc format (070702): data sums are checked; a changed byte is ERR_CHECKSUM', async (t) => {
    const dir = await tempDir(t);
    const { main } = makeTrees(dir);
    const archive = cpioOf(main, 'crc');
    assert.equal(archive.toString('latin1', 0, 6), '070702');
    assert.deepEqual(parseCpio(archive).map((e) => e.name), cpioList(archive));
    const init = parseCpio(archive).find((e) => e.name === 'init')!;
    const bad = Buffer.from(archive);
    bad[init.offset + 110 + 8] ^= 0xff; // "init\0" padded to 4 bytes after the header: the data's first byte
    await rejectsCode(() => parseCpio(bad), 'ERR_CHECKSUM', '"init"');
  });
});

describe('initramfs images: an uncompressed early archive, then a compressed main one', () => {
  for (const [comp, tool, args] of COMPRESSORS) {
    test(`${comp}: segments, entries and bytes as cpio -it and lsinitramfs see them`, async (t) => {
      const dir = await tempDir(t);
      const { early, main, files } = makeTrees(dir);
      const earlyCpio = cpioOf(early);
      const mainCpio = cpioOf(main);
      const image = Buffer.concat([earlyCpio, compress(tool, args, mainCpio)]);
      const file = join(dir, 'initrd.img');
      writeFileSync(file, image);
      assert.equal(detectCompression(image.subarray(earlyCpio.length)), comp);
      const ir = await readInitramfs(image, { name: file });
      assert.deepEqual(ir.segments.map((s) => s.compression), ['none', comp]);
      // the early archive ends at its trailer; cpio's padding to 512 bytes lies between the segments
      assert.ok(ir.segments[0]!.length <= earlyCpio.length && earlyCpio.subarray(ir.segments[0]!.length).every((b) => b === 0));
      assert.equal(ir.segments[1]!.offset, earlyCpio.length);
      assert.equal(ir.segments[1]!.offset + ir.segments[1]!.length, image.length);
      assert.equal(ir.segments[1]!.size, mainCpio.length);
      assert.deepEqual(ir.segments[0]!.entries.map((e) => e.name), cpioList(earlyCpio));
      assert.deepEqual(ir.segments[1]!.entries.map((e) => e.name), cpioList(mainCpio));
      assert.deepEqual(ir.segments.flatMap((s) => s.entries.map((e) => e.name)), lsinitramfs(file));
      for (const [rel, data] of Object.entries(files)) assert.ok(ir.files.get(`/${rel}`)!.data.equals(data), rel);
      assert.equal(ir.compression, comp);
      assert.equal(ir.generator, 'initramfs-tools');
      assert.equal(ir.microcode, true);
      assert.deepEqual(ir.kernelVersions, ['6.1.0-99-amd64']);
      assert.deepEqual(ir.modules.map((m) => m.name), ['virtio_blk', 'xen_blkfront']);
      assert.equal(ir.modules[1]!.path, '/usr/lib/modules/6.1.0-99-amd64/kernel/drivers/block/xen-blkfront.ko');
    });
  }

  test('several gzip members, zstd frames and zero padding between segments read as the kernel reads them', async (t) => {
    const dir = await tempDir(t);
    const { early, main } = makeTrees(dir);
    const earlyCpio = cpioOf(early);
    const mainCpio = cpioOf(main);
    const half = mainCpio.length >> 1;
    // one archive split across two gzip members (pigz and appended streams do this), then padding, then zstd frames
    const gz = Buffer.concat([gzipSync(mainCpio.subarray(0, half)), gzipSync(mainCpio.subarray(half))]);
    const zs = Buffer.concat([compress('zstd', ['-q', '-c'], earlyCpio.subarray(0, 300)), compress('zstd', ['-q', '-c'], earlyCpio.subarray(300))]);
    const image = Buffer.concat([earlyCpio, Buffer.alloc(512), gz, Buffer.alloc(3), zs, Buffer.alloc(16)]);
    const ir = await readInitramfs(image);
    assert.deepEqual(ir.segments.map((s) => s.compression), ['none', 'gzip', 'zstd']);
    assert.deepEqual(ir.segments[1]!.entries.map((e) => e.name), cpioList(mainCpio));
    assert.deepEqual(ir.segments[2]!.entries.map((e) => e.name), cpioList(earlyCpio));
    assert.equal(ir.segments[1]!.offset, earlyCpio.length + 512);
    assert.equal(ir.segments[1]!.length, gz.length);
  });

  test('a dracut image is told from an initramfs-tools one', async (t) => {
    const dir = await tempDir(t);
    const root = join(dir, 'root');
    mkdirSync(join(root, 'usr/lib/dracut'), { recursive: true });
    writeFileSync(join(root, 'usr/lib/dracut/build-parameter.txt'), '--kver 6.1.0-99-amd64\n');
    writeFileSync(join(root, 'init'), '#!/bin/sh\n');
    const ir = await readInitramfs(compress('xz', ['--check=crc32', '-c'], cpioOf(root)));
    assert.equal(ir.generator, 'dracut');
    assert.equal(ir.compression, 'xz');
    assert.equal(ir.microcode, false);
  });

  test("the Debian test guests' initramfs images list entry for entry as lsinitramfs lists them", async () => {
    for (const kind of DEBIAN_KINDS) {
      const g = await buildDebianGuest(kind);
      const ir = await readInitramfs(readFileSync(g.initrd), { name: g.initrd });
      assert.deepEqual(ir.segments.flatMap((s) => s.entries.map((e) => e.name)), lsinitramfs(g.initrd), kind);
      assert.equal(ir.generator, 'initramfs-tools');
      assert.deepEqual(ir.kernelVersions, [g.kernelVersion]);
      assert.ok(ir.modules.some((m) => m.name === 'ext4'), kind);
    }
  });
});

describe('writeCpio', () => {
  const entries: CpioInput[] = [
    { name: 'etc', mode: 0o040755 },
    { name: 'etc/modules', mode: 0o100644, data: Buffer.from('virtio_blk\nvirtio_pci\n'), mtime: 1_700_000_000 },
    { name: 'usr/lib/modules/6.1.0-99-amd64/kernel/drivers/block', mode: 0o040755 },
    { name: 'usr/lib/modules/6.1.0-99-amd64/kernel/drivers/block/virtio_blk.ko', mode: 0o100600, data: patternBytes(70_001, 9), uid: 1, gid: 2 },
    { name: 'bin', mode: 0o120777, target: 'usr/bin' },
    { name: 'empty', mode: 0o100644 },
    { name: 'dev/console', mode: 0o020600, rdevMajor: 5, rdevMinor: 1 },
    { name: 'scripts/na me with spaces', mode: 0o100755, data: Buffer.from('#!/bin/sh\n') },
  ];

  test('cpio -idv extracts what it writes: contents, modes, owners, times, symlinks and device numbers', async (t) => {
    const dir = await tempDir(t);
    const archive = writeCpio([{ name: 'dev', mode: 0o040755 }, { name: 'usr/lib/modules/6.1.0-99-amd64/kernel/drivers', mode: 0o040755 }, { name: 'scripts', mode: 0o040755 }, ...entries]);
    const out = join(dir, 'x');
    mkdirSync(out);
    // --no-absolute-filenames and -d: as anyone extracting an initramfs would
    const listing = run('cpio', ['-idv', '--quiet', '--no-absolute-filenames', '--preserve-modification-time'], { cwd: out, input: archive }).toString() + '';
    assert.equal(listing, '');
    for (const e of entries) {
      const p = join(out, e.name);
      const st = lstatSync(p);
      assert.equal(st.mode, e.mode, e.name);
      if ((e.mode & 0o170000) === 0o100000) assert.ok(readFileSync(p).equals(Buffer.from(e.data ?? [])), e.name);
      if (e.target) assert.equal(readlinkSync(p), e.target);
      if (e.mtime) assert.equal(st.mtimeMs / 1000, e.mtime);
      if (e.uid) assert.deepEqual([st.uid, st.gid], [e.uid, e.gid]);
      if (e.rdevMajor) assert.equal(st.rdev, (e.rdevMajor << 8) | e.rdevMinor!);
    }
    assert.deepEqual(cpioList(archive), ['dev', 'usr/lib/modules/6.1.0-99-amd64/kernel/drivers', 'scripts', ...entries.map((e) => e.name)]);
  });

  test('lsinitramfs lists it as an early archive before a compressed one, and compressed after one; padTo pads as cpio does', async (t) => {
    const dir = await tempDir(t);
    const archive = writeCpio(entries, { padTo: 512 });
    assert.equal(archive.length % 512, 0);
    const { main } = makeTrees(dir);
    const mainCpio = cpioOf(main);
    // lsinitramfs (unmkinitramfs) wants a main archive after the uncompressed ones
    const first = join(dir, 'first.img');
    writeFileSync(first, Buffer.concat([archive, gzipSync(mainCpio)]));
    assert.deepEqual(lsinitramfs(first), [...entries.map((e) => e.name), ...cpioList(mainCpio)]);
    const early = writeCpio([{ name: 'kernel/x86/microcode/AuthenticAMD.bin', mode: 0o100644, data: patternBytes(999, 5) }]);
    const second = join(dir, 'second.img');
    writeFileSync(second, Buffer.concat([early, gzipSync(writeCpio(entries))]));
    assert.deepEqual(lsinitramfs(second), ['kernel/x86/microcode/AuthenticAMD.bin', ...entries.map((e) => e.name)]);
    // and what it writes reads back the same here
    const back = parseCpio(archive);
    assert.deepEqual(back.map((e) => [e.name, e.mode, e.size]), entries.map((e) => [e.name, e.mode, e.target ? e.target.length : (e.data?.length ?? 0)]));
  });

  test('a segment appended to a real initramfs replaces the file it names, as the kernel unpacks it', async () => {
    const g = await buildDebianGuest('xen-pv');
    const original = readFileSync(g.initrd);
    const modules = Buffer.from('xen_blkfront\nvirtio_blk\n');
    // the kernel takes an uncompressed archive only at a 4-byte boundary: appendSegment pads
    const segment = writeCpio([{ name: 'conf/modules', mode: 0o100644, data: modules }]);
    // a gzip image that ends off a 4-byte boundary: without the padding the archive is not taken
    let odd = gzipSync(tiny());
    for (let n = 1; odd.length % 4 === 0; n++) odd = gzipSync(Buffer.concat([tiny(), Buffer.alloc(n)]));
    await rejectsCode(readInitramfs(Buffer.concat([odd, segment])), 'ERR_CORRUPT', 'not a multiple of 4');
    assert.ok((await readInitramfs(appendSegment(odd, segment))).files.has('/conf/modules'));
    const image = appendSegment(original, segment);
    const ir = await readInitramfs(image);
    assert.deepEqual(ir.segments.map((s) => s.compression), ['gzip', 'none']);
    assert.ok(ir.files.get('/conf/modules')!.data.equals(modules));
    assert.equal(ir.generator, 'initramfs-tools');
  });

  test('refuses what a newc header cannot carry', async () => {
    await rejectsCode(() => writeCpio([{ name: 'x', mode: 0o100644, data: Buffer.alloc(1) }], { padTo: 3 }), 'ERR_RANGE', 'padTo');
    await rejectsCode(() => writeCpio([{ name: '', mode: 0o100644 }]), 'ERR_RANGE', 'empty name');
    await rejectsCode(() => writeCpio([{ name: 'a\0b', mode: 0o100644 }]), 'ERR_RANGE', 'NUL');
    await rejectsCode(() => writeCpio([{ name: 'x'.repeat(5000), mode: 0o100644 }]), 'ERR_RANGE', 'longer than');
    await rejectsCode(() => writeCpio([{ name: 'TRAILER!!!', mode: 0o100644 }]), 'ERR_RANGE', 'ends the archive');
    await rejectsCode(() => writeCpio([{ name: 'l', mode: 0o120777 }]), 'ERR_RANGE', 'symlink needs a target');
    await rejectsCode(() => writeCpio([{ name: 'd', mode: 0o040755, data: Buffer.alloc(1) }]), 'ERR_RANGE', 'only files and symlinks');
    await rejectsCode(() => writeCpio([{ name: 'm', mode: 0o644 }]), 'ERR_RANGE', 'no file type bits');
    await rejectsCode(() => writeCpio([{ name: 't', mode: 0o100644, mtime: 2 ** 33 }]), 'ERR_RANGE', 'mtime');
  });
});

/** A one-file newc archive, for corrupting. */
function tiny(): Buffer {
  return writeCpio([{ name: 'hello', mode: 0o100644, data: Buffer.from('hello world\n') }]);
}

describe('hostile archives and images', () => {
  test('truncated anywhere: in a header, in a name, in data, or before the trailer', async () => {
    const a = tiny();
    await rejectsCode(() => parseCpio(a.subarray(0, 60)), 'ERR_TRUNCATED', 'header');
    await rejectsCode(() => parseCpio(a.subarray(0, 112)), 'ERR_TRUNCATED', 'name');
    await rejectsCode(() => parseCpio(a.subarray(0, 120)), 'ERR_TRUNCATED', 'past the end');
    const trailer = a.indexOf('070701', 6);
    await rejectsCode(() => parseCpio(a.subarray(0, trailer)), 'ERR_TRUNCATED', 'TRAILER!!!');
    await rejectsCode(readInitramfs(gzipSync(a.subarray(0, trailer))), 'ERR_TRUNCATED', 'TRAILER!!!');
  });

  test('a huge or zero namesize, a file size past the end, non-hex fields, bad and old magic', async (t) => {
    const field = (b: Buffer, index: number, value: string) => {
      const c = Buffer.from(b);
      c.write(value, 6 + index * 8, 'latin1');
      return c;
    };
    await rejectsCode(() => parseCpio(field(tiny(), 11, 'FFFFFFFF')), 'ERR_CORRUPT', 'namesize 4294967295');
    await rejectsCode(() => parseCpio(field(tiny(), 11, '00000000')), 'ERR_CORRUPT', 'namesize 0');
    await rejectsCode(() => parseCpio(field(tiny(), 11, '00000003')), 'ERR_CORRUPT', 'NUL-terminated');
    await rejectsCode(() => parseCpio(field(tiny(), 6, '7FFFFFFF')), 'ERR_TRUNCATED', '2147483647 bytes of data run past the end');
    await rejectsCode(() => parseCpio(field(tiny(), 1, '0000G644')), 'ERR_CORRUPT', 'mode field is not 8 hex digits');
    const bad = Buffer.from(tiny());
    bad.write('070799', 0, 'latin1');
    await rejectsCode(() => parseCpio(bad), 'ERR_CORRUPT', 'bad magic');
    const odc = run('sh', ['-c', 'echo hi > f && echo f | cpio -o -H odc --quiet && rm f'], { cwd: await tempDir(t) });
    await rejectsCode(() => parseCpio(odc), 'ERR_UNSUPPORTED', 'newc');
    const symlink = writeCpio([{ name: 'l', mode: 0o120777, target: 'x' }]);
    const hugeLink = Buffer.concat([field(symlink, 6, '00001000').subarray(0, 112), Buffer.alloc(4096, 0x61), Buffer.alloc(200)]);
    await rejectsCode(() => parseCpio(hugeLink), 'ERR_CORRUPT', 'symlink target of 4096 bytes');
  });

  test('garbage between segments, a misaligned archive, LZO, and broken compressed data', async () => {
    const a = tiny();
    await rejectsCode(readInitramfs(Buffer.concat([a, Buffer.from('garbage!')])), 'ERR_CORRUPT', 'neither a cpio archive nor compressed data');
    await rejectsCode(readInitramfs(Buffer.concat([a, Buffer.alloc(2), a])), 'ERR_CORRUPT', 'not a multiple of 4');
    await rejectsCode(readInitramfs(Buffer.from([0x89, 0x4c, 0x5a, 0x4f, 0, 0x0d, 0x0a, 0x1a, 0x0a])), 'ERR_UNSUPPORTED', 'LZO');
    await rejectsCode(readInitramfs(Buffer.alloc(4096)), 'ERR_CORRUPT', 'empty');
    const gz = gzipSync(a);
    await rejectsCode(readInitramfs(gz.subarray(0, gz.length - 20)), 'ERR_TRUNCATED', 'gzip');
    const badCrc = Buffer.from(gz);
    badCrc[badCrc.length - 6] ^= 0xff;
    await rejectsCode(readInitramfs(badCrc), 'ERR_CHECKSUM', 'CRC-32');
    const zs = compress('zstd', ['-q', '-c'], a);
    await rejectsCode(readInitramfs(zs.subarray(0, zs.length - 5)), 'ERR_TRUNCATED', 'zstd frame');
    const xz = compress('xz', ['--check=crc32', '-c'], Buffer.concat([a, patternBytes(10_000, 7)]));
    xz[xz.length >> 1] ^= 0x55;
    await rejectsCode(readInitramfs(xz), 'ERR_CORRUPT', 'xz could not decompress it');
  });

  test(`decompression bombs stop at the limit (by default ${DEFAULT_MAX_INITRAMFS} bytes, 1 GiB)`, async () => {
    assert.equal(DEFAULT_MAX_INITRAMFS, 1 << 30);
    const zeros = Buffer.alloc(64 << 20);
    const limit = 8 << 20;
    await rejectsCode(readInitramfs(gzipSync(zeros), { maxBytes: limit }), 'ERR_UNSUPPORTED', 'decompression bomb', String(limit));
    for (const [comp, tool, args] of COMPRESSORS.filter(([c]) => c === 'zstd' || c === 'xz' || c === 'bzip2')) {
      await rejectsCode(readInitramfs(compress(tool, args, zeros), { maxBytes: limit }), 'ERR_UNSUPPORTED', 'decompression bomb');
      void comp;
    }
    // the limit counts across segments
    const seg = gzipSync(Buffer.concat([tiny(), Buffer.alloc(5 << 20)]));
    await rejectsCode(readInitramfs(Buffer.concat([seg, seg]), { maxBytes: limit }), 'ERR_UNSUPPORTED', 'decompression bomb');
    assert.equal((await readInitramfs(seg, { maxBytes: limit })).segments.length, 1);
  });

  test('names with "..": entries are data, never paths on the host', async (t) => {
    const dir = await tempDir(t);
    const archive = writeCpio([{ name: '../../escape', mode: 0o100644, data: Buffer.from('x') }]);
    const ir = await readInitramfs(archive);
    assert.equal(ir.segments[0]!.entries[0]!.name, '../../escape');
    // ".." at the root stays at the root, as when the kernel unpacks it
    assert.equal(ir.segments[0]!.entries[0]!.path, '/escape');
    assert.ok(ir.files.has('/escape'));
    assert.deepEqual(readdirSync(dir), []);
  });
});
