/** tar index reader: members and offsets of archives made by system tar; hostile archives refused. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { TarArchive } from '../../src/vm/packages/tar.js';
import { patternBytes, rejectsWith, tempDir } from '../helpers.js';

const run = promisify(execFile);

const LONG_DIR = 'a-directory-with-a-rather-long-name-to-push-past-the-ustar-limits';
const LONG_FILE = 'and-a-file-name-that-is-also-long-enough-to-need-an-extension-of-the-header-' + 'x'.repeat(60) + '.bin';

async function makeTree(dir: string): Promise<Record<string, Buffer>> {
  const files: Record<string, Buffer> = {
    'ova.xml': Buffer.from('<value><struct/></value>\n'),
    'empty.txt': Buffer.alloc(0),
    'block.bin': patternBytes(512, 3),
    'odd.bin': patternBytes(70_001, 4),
    [`${LONG_DIR}/${LONG_FILE}`]: patternBytes(1234, 5),
  };
  await mkdir(join(dir, 'src', LONG_DIR), { recursive: true });
  for (const [name, data] of Object.entries(files)) await writeFile(join(dir, 'src', name), data);
  return files;
}

for (const format of ['pax', 'gnu', 'ustar-prefix'] as const) {
  test(`tar: index of a ${format} archive made by system tar; data at each offset is the file`, async (t) => {
    const dir = await tempDir(t);
    const files = await makeTree(dir);
    const tarFile = join(dir, 'a.tar');
    const names = Object.keys(files);
    if (format === 'ustar-prefix') {
      // ustar keeps names up to 255 bytes by splitting them at a "/" into prefix + name
      const shortFile = 'f'.repeat(90) + '.bin';
      await writeFile(join(dir, 'src', LONG_DIR, shortFile), files[`${LONG_DIR}/${LONG_FILE}`]!);
      delete files[`${LONG_DIR}/${LONG_FILE}`];
      files[`${LONG_DIR}/${shortFile}`] = patternBytes(1234, 5);
      await run('tar', ['--format=ustar', '-cf', tarFile, '-C', join(dir, 'src'), 'ova.xml', 'empty.txt', 'block.bin', 'odd.bin', `${LONG_DIR}/${shortFile}`]);
    } else {
      await run('tar', [`--format=${format}`, '-cf', tarFile, '-C', join(dir, 'src'), ...names]);
    }
    const tar = await TarArchive.open(tarFile);
    t.after(() => tar.close());
    assert.deepEqual(tar.members.map((m) => m.name), Object.keys(files));
    assert.equal(tar.members[0]!.name, 'ova.xml');
    for (const [name, data] of Object.entries(files)) {
      const m = tar.expectFile(name);
      assert.equal(m.size, data.length, name);
      assert.equal(m.offset % 512, 0);
      const raw = (await readFile(tarFile)).subarray(m.offset, m.offset + m.size);
      assert.ok(raw.equals(data), `bytes at the offset of ${name}`);
      assert.ok((await tar.readMember(m, 1 << 20)).equals(data));
      assert.equal(await tar.hashMember(m, 'sha256'), createHash('sha256').update(data).digest('hex'));
      assert.equal(await tar.hashMember(m, 'sha1'), createHash('sha1').update(data).digest('hex'));
    }
    await rejectsWith(tar.readMember(tar.expectFile('odd.bin'), 1000), 'ERR_UNSUPPORTED', tarFile, 'odd.bin', 'limit');
    await rejectsWith(Promise.resolve().then(() => tar.expectFile('missing')), 'ERR_NOT_FOUND', tarFile, 'missing');
  });
}

test('tar: directories, "./" prefixes and symlinks are indexed; a directory is not a file', async (t) => {
  const dir = await tempDir(t);
  await makeTree(dir);
  await run('ln', ['-s', 'ova.xml', join(dir, 'src', 'link')]);
  const tarFile = join(dir, 'b.tar');
  await run('tar', ['--format=gnu', '-cf', tarFile, '-C', join(dir, 'src'), '.']);
  const tar = await TarArchive.open(tarFile);
  t.after(() => tar.close());
  const dirMember = tar.get(LONG_DIR)!;
  assert.equal(dirMember.type, 'directory');
  assert.equal(tar.get('link')!.type, 'symlink');
  assert.equal(tar.get('link')!.linkName, 'ova.xml');
  assert.equal(tar.expectFile('ova.xml').type, 'file');
  await rejectsWith(Promise.resolve().then(() => tar.expectFile(LONG_DIR)), 'ERR_CORRUPT', tarFile, 'directory', 'regular file');
  await rejectsWith(Promise.resolve().then(() => tar.expectFile('link')), 'ERR_CORRUPT', tarFile, 'symlink');
});

// ---- hostile archives, crafted header by header ----

function header(name: string, size: number, opts: { type?: string; badSum?: boolean; sizeText?: string } = {}): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100, 'utf8');
  h.write('0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h.write(opts.sizeText ?? size.toString(8).padStart(11, '0') + '\0', 124, 12, 'latin1');
  h.write('00000000000\0', 136);
  h.write(opts.type ?? '0', 156);
  h.write('ustar\0', 257, 'latin1');
  h.write('00', 263);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  if (opts.badSum) sum += 1;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
  return h;
}

function member(name: string, data: Buffer, opts: { type?: string } = {}): Buffer {
  return Buffer.concat([header(name, data.length, opts), data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
}

const END = Buffer.alloc(1024);

async function hostile(t: { after(fn: () => Promise<void> | void): void }, name: string, bytes: Buffer): Promise<string> {
  const dir = await tempDir(t);
  const f = join(dir, name);
  await writeFile(f, bytes);
  return f;
}

test('tar: hostile names are refused, naming the member and the header offset', async (t) => {
  const first = member('ok.txt', Buffer.from('fine'));
  for (const bad of ['../x', 'a/../../etc/passwd', '/abs', '/etc/shadow']) {
    const f = await hostile(t, 'names.tar', Buffer.concat([first, member(bad, Buffer.from('evil')), END]));
    await rejectsWith(TarArchive.open(f), 'ERR_CORRUPT', f, JSON.stringify(bad), 'at 0x400', bad.startsWith('/') ? 'absolute' : '".."');
  }
  // the same name twice, once as "./name"
  const dup = await hostile(t, 'dup.tar', Buffer.concat([first, member('a.bin', Buffer.from('1')), member('./a.bin', Buffer.from('2')), END]));
  await rejectsWith(TarArchive.open(dup), 'ERR_CORRUPT', dup, 'duplicate', '"a.bin"', 'at 0x800');
});

test('tar: a bad header checksum, a size past the end, garbage and truncation are refused', async (t) => {
  const first = member('ok.txt', Buffer.from('fine'));
  const bad = await hostile(t, 'sum.tar', Buffer.concat([first, header('b.bin', 4, { badSum: true }), Buffer.alloc(512), END]));
  await rejectsWith(TarArchive.open(bad), 'ERR_CHECKSUM', bad, 'checksum', '"b.bin"', 'at 0x400');

  const past = await hostile(t, 'past.tar', Buffer.concat([first, header('big.bin', 1 << 20), Buffer.alloc(512), END]));
  await rejectsWith(TarArchive.open(past), 'ERR_TRUNCATED', past, '"big.bin"', 'past the end', 'at 0x400');

  const notNumber = await hostile(t, 'nan.tar', Buffer.concat([header('n.bin', 0, { sizeText: '12x45\0' }), END]));
  await rejectsWith(TarArchive.open(notNumber), 'ERR_CORRUPT', notNumber, '"n.bin"', 'size');

  const garbage = await hostile(t, 'garbage.tar', patternBytes(4096, 9));
  await rejectsWith(TarArchive.open(garbage), 'ERR_CORRUPT', garbage, 'not a tar archive');

  const empty = await hostile(t, 'empty.tar', Buffer.alloc(0));
  await rejectsWith(TarArchive.open(empty), 'ERR_CORRUPT', empty, 'not a tar');

  // cut inside the data of the second member, and cut exactly after it (no end blocks)
  const whole = Buffer.concat([first, member('data.bin', patternBytes(3000, 1)), END]);
  const cut = await hostile(t, 'cut.tar', whole.subarray(0, 1024 + 1000));
  await rejectsWith(TarArchive.open(cut), 'ERR_TRUNCATED', cut, '"data.bin"');
  const noEnd = await hostile(t, 'noend.tar', whole.subarray(0, whole.length - END.length));
  await rejectsWith(TarArchive.open(noEnd), 'ERR_TRUNCATED', noEnd, 'end-of-archive');
  const halfHeader = await hostile(t, 'half.tar', Buffer.concat([first, header('x', 0).subarray(0, 300)]));
  await truncate(halfHeader, 1024 + 300);
  await rejectsWith(TarArchive.open(halfHeader), 'ERR_TRUNCATED', halfHeader, 'inside a tar header');
});

test('tar: pax and GNU long-name records are bounded; member count is bounded; device members are not files', async (t) => {
  const first = member('ok.txt', Buffer.from('fine'));
  const hugePax = await hostile(t, 'pax.tar', Buffer.concat([first, header('PaxHeader', 2 << 20, { type: 'x' }), END]));
  await rejectsWith(TarArchive.open(hugePax), 'ERR_UNSUPPORTED', hugePax, 'pax extended header', 'limit');

  const paxRec = (k: string, v: string) => {
    const body = ` ${k}=${v}\n`;
    let len = body.length + 1;
    if (String(len).length + body.length !== len) len = String(len + 1).length + body.length;
    return `${len}${body}`;
  };
  const paxData = Buffer.from(paxRec('path', '../escape'));
  const paxEscape = await hostile(t, 'paxesc.tar', Buffer.concat([first, member('PaxHeader', paxData, { type: 'x' }), member('innocent', Buffer.from('x')), END]));
  await rejectsWith(TarArchive.open(paxEscape), 'ERR_CORRUPT', paxEscape, '"../escape"');

  const longName = await hostile(t, 'gnul.tar', Buffer.concat([first, member('././@LongLink', Buffer.from('/abs/long\0'), { type: 'L' }), member('short', Buffer.from('x')), END]));
  await rejectsWith(TarArchive.open(longName), 'ERR_CORRUPT', longName, '"/abs/long"', 'absolute');

  const many = await hostile(t, 'many.tar', Buffer.concat([first, member('b', Buffer.from('1')), member('c', Buffer.from('2')), END]));
  await rejectsWith(TarArchive.open(many, { maxMembers: 2 }), 'ERR_UNSUPPORTED', many, 'more than 2 members');

  const fifo = await hostile(t, 'fifo.tar', Buffer.concat([first, member('pipe', Buffer.alloc(0), { type: '6' }), END]));
  const tar = await TarArchive.open(fifo);
  t.after(() => tar.close());
  await rejectsWith(Promise.resolve().then(() => tar.expectFile('pipe')), 'ERR_CORRUPT', fifo, '"pipe"', "type '6'");
});
