/**
 * LVM2, with LVM's own pvck as the oracle for the on-disk format.
 *
 * LVM's tools will not create a PV on a plain file (pvcreate needs a block device, and a
 * loop device is not something tests may count on), but `pvck --dump headers|metadata` reads
 * a file: every PV here is written by test/guest/lvm-pv.ts in pvcreate's layout and accepted
 * by pvck (label CRC, mda_header checksum, metadata checksum, text that parses), and carries
 * metadata that LVM 2.03 itself wrote (fixtures/lvm/vg0.meta: two PVs, a linear LV in two
 * segments on two PVs, a one-segment LV, and a two-stripe LV). Logical volumes must then map
 * onto the PV extents that metadata names: byte patterns per extent, a FAT file system copied
 * into the extents with dd and written through the LV (fsck.fat and mtools read the result
 * back), swap found by its signature inside an LV. Hostile labels, headers and metadata fail
 * with coded errors naming the PV.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openImage } from '../../src/disk/chain.js';
import type { BlockImage } from '../../src/disk/image.js';
import { PolyvisorError } from '../../src/errors.js';
import { FatFs } from '../../src/guest/fat.js';
import { logicalVolume, lvmCrc, parseMetadata, readPvLabel, readPvMetadata, scanVolumeGroups, type VolumeGroup } from '../../src/guest/lvm.js';
import { probeVolume } from '../../src/guest/probe.js';
import { imageVolume, type Volume } from '../../src/guest/volume.js';
import { patternBytes, rejectsWith, tempDir, throwsCode } from '../helpers.js';
import { pvStructures, writePv } from './lvm-pv.js';
import { FUZZ_ITER, fuzzMutants, memoryVolume, rng } from './mutants.js';
import { blkid, sh } from './oracle.js';

const MiB = 1 << 20;
const FIXTURE = readFileSync(join(process.cwd(), 'test/guest/fixtures/lvm/vg0.meta'), 'utf8');
const PV0 = 'juMxIP-JzUY-LWc6-6Ij4-VLln-l6EL-Dvw6G7';
const PV1 = 'ow3y71-5KQr-FDcf-jjRK-ooba-AWkL-sV3B3M';
const ENV = { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1' };


/** pvck's dump of a PV file's headers; fails on any "CHECK:" line (a checksum or field pvck rejects) */
function pvckHeaders(file: string): Record<string, string> {
  const r = spawnSync('pvck', ['--dump', 'headers', file], { encoding: 'utf8', env: ENV });
  const out = r.stdout + r.stderr;
  assert.doesNotMatch(out, /CHECK:/, out);
  const fields: Record<string, string> = {};
  for (const line of out.split('\n')) {
    const m = /^\s+([\w.[\]_]+) (\S+)/.exec(line);
    if (m) fields[m[1]!] = m[2]!;
  }
  return fields;
}

/** the metadata text pvck reads from a PV file */
function pvckMetadata(file: string, dir: string): string {
  const out = join(dir, `pvck-${Math.random().toString(36).slice(2)}.txt`);
  sh('pvck', ['--dump', 'metadata', '-f', out, file]);
  return readFileSync(out, 'utf8');
}

/** Two 64 MiB PVs carrying the real metadata (or `text`), each extent filled with its own pattern. */
async function makeVg(dir: string, text = FIXTURE, patterns = true): Promise<{ a: string; b: string }> {
  const a = join(dir, 'a.raw');
  const b = join(dir, 'b.raw');
  for (const [file, uuid, seed] of [
    [a, PV0, 100],
    [b, PV1, 200],
  ] as const) {
    const disk = Buffer.alloc(64 * MiB);
    for (let e = 0; patterns && e < 63; e++) patternBytes(MiB, seed + e).copy(disk, MiB + e * MiB);
    await writeFile(file, disk);
    await writePv(file, { uuid, size: 64 * MiB, text });
  }
  return { a, b };
}

async function openVolumes(t: { after(fn: () => Promise<void>): void }, files: string[], writable = false): Promise<Volume[]> {
  const images: BlockImage[] = [];
  for (const f of files) images.push(await openImage(f, { format: 'raw', writable }));
  t.after(async () => {
    for (const i of images) await i.close();
  });
  return images.map((i) => imageVolume(i));
}

test('PVs in pvcreate\'s layout: pvck accepts them, and Polyvisor reads the label and metadata pvck reads', async (t) => {
  const dir = await tempDir(t);
  const { a, b } = await makeVg(dir);
  const [va, vb] = await openVolumes(t, [a, b]);
  for (const [file, vol, uuid] of [
    [a, va!, PV0],
    [b, vb!, PV1],
  ] as const) {
    const h = pvckHeaders(file);
    const label = await readPvLabel(vol);
    assert.ok(label);
    assert.equal(label.uuid, uuid);
    assert.equal(label.uuid.replace(/-/g, ''), h['pv_header.pv_uuid']);
    assert.equal(label.sector, Number(h['label_header.sector']));
    assert.equal(label.deviceSize, Number(h['pv_header.device_size']));
    assert.deepEqual(label.dataAreas, [{ offset: Number(h['pv_header.disk_locn[0].offset']), size: Number(h['pv_header.disk_locn[0].size']) }]);
    assert.deepEqual(label.metadataAreas, [{ offset: Number(h['pv_header.disk_locn[2].offset']), size: Number(h['pv_header.disk_locn[2].size']) }]);
    const meta = await readPvMetadata(vol, label);
    assert.equal(meta!.text, pvckMetadata(file, dir));
    assert.equal(meta!.text, FIXTURE);
  }
});

test('metadata that wraps around the end of the metadata area\'s circular buffer reads as pvck reads it', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'wrap.raw');
  await writePv(file, { uuid: PV0, size: 64 * MiB, text: FIXTURE, mdaSize: 4096, textOffset: 3072 });
  const h = pvckHeaders(file);
  assert.ok(3072 + Number(h['mda_header_1.raw_locn[0].size']) > 4096, 'the text does wrap');
  const [v] = await openVolumes(t, [file]);
  const meta = await readPvMetadata(v!, (await readPvLabel(v!))!);
  assert.equal(meta!.text, pvckMetadata(file, dir));
});

test('the VG and its LVs: linear across two PVs, one segment, two stripes of 64 KiB', async (t) => {
  const dir = await tempDir(t);
  const { a, b } = await makeVg(dir);
  const vols = await openVolumes(t, [a, b]);
  const [vg] = await scanVolumeGroups(vols);
  assert.ok(vg);
  assert.equal(vg.name, 'vg0');
  assert.equal(vg.uuid, 'uu3sXP-R6ra-eNen-dLKd-7A3S-NwVP-dX4CxK');
  assert.equal(vg.seqno, 7);
  assert.equal(vg.extentSize, MiB);
  assert.deepEqual(
    vg.pvs.map((p) => [p.name, p.uuid, p.peStart, p.peCount, p.volume?.name]),
    [
      ['pv0', PV0, MiB, 63, a],
      ['pv1', PV1, MiB, 63, b],
    ],
  );
  assert.deepEqual(
    vg.lvs.map((l) => [l.name, l.size, l.visible, l.segments.length]),
    [
      ['root', 6 * MiB, true, 2],
      ['swap', 2 * MiB, true, 1],
      ['data', 4 * MiB, true, 1],
    ],
  );
  assert.deepEqual(vg.warnings, []);
  // what each LV must read, from the metadata by hand: pattern seed = 100/200 + extent
  const ext = (pv: number, e: number) => patternBytes(MiB, (pv === 0 ? 100 : 200) + e);
  const root = Buffer.concat([ext(0, 0), ext(0, 1), ext(0, 2), ext(1, 0), ext(1, 1), ext(1, 2)]);
  const swap = Buffer.concat([ext(0, 3), ext(0, 4)]);
  // dm-striped: chunk c of 64 KiB is chunk c/2 of stripe c%2; stripe areas pv0:5-6 and pv1:3-4
  const areas = [Buffer.concat([ext(0, 5), ext(0, 6)]), Buffer.concat([ext(1, 3), ext(1, 4)])];
  const chunks: Buffer[] = [];
  for (let c = 0; c < 64; c++) chunks.push(areas[c % 2]!.subarray((c >> 1) * 65536, ((c >> 1) + 1) * 65536));
  const data = Buffer.concat(chunks);
  for (const [name, want] of [
    ['root', root],
    ['swap', swap],
    ['data', data],
  ] as const) {
    const lv = logicalVolume(vg, name);
    assert.equal(lv.name, `vg0/${name}`);
    assert.ok((await lv.read(0, lv.size)).equals(want), `${name} reads its extents`);
    // an unaligned read across a segment, extent or stripe boundary
    const at = lv.size / 2 - 1000;
    assert.ok((await lv.read(at, 70000)).equals(want.subarray(at, at + 70000)), `${name} across a boundary`);
  }
  await rejectsWith(logicalVolume(vg, 'root').read(6 * MiB - 10, 11), 'ERR_RANGE', 'vg0/root');
  throwsCode(() => logicalVolume(vg, 'nosuch'), 'ERR_NOT_FOUND', 'nosuch');
});

test('writes through an LV land in the PV extents: a FAT file system in a two-segment LV, swap in another', async (t) => {
  const dir = await tempDir(t);
  const { a, b } = await makeVg(dir);
  // a FAT file system made for the 6 MiB root LV, copied by dd into pv0 extents 0-2 and pv1 extents 0-2
  const fat = join(dir, 'root.img');
  sh('truncate', ['-s', String(6 * MiB), fat]);
  sh('mkfs.vfat', ['-n', 'INLV', fat]);
  writeFileSync(join(dir, 'hello.txt'), 'hello from mtools\n');
  sh('mcopy', ['-i', fat, join(dir, 'hello.txt'), '::/hello.txt']);
  sh('dd', [`if=${fat}`, `of=${a}`, 'bs=1M', 'count=3', 'seek=1', 'conv=notrunc', 'status=none']);
  sh('dd', [`if=${fat}`, `of=${b}`, 'bs=1M', 'skip=3', 'count=3', 'seek=1', 'conv=notrunc', 'status=none']);
  const swapImg = join(dir, 'swap.img');
  sh('truncate', ['-s', String(2 * MiB), swapImg]);
  sh('mkswap', ['-L', 'lvswap', swapImg]);
  sh('dd', [`if=${swapImg}`, `of=${a}`, 'bs=1M', 'count=2', 'seek=4', 'conv=notrunc', 'status=none']);

  const vols = await openVolumes(t, [a, b], true);
  const [vg] = await scanVolumeGroups(vols);
  const swap = await probeVolume(logicalVolume(vg!, 'swap'));
  assert.equal(swap.type, 'swap');
  assert.equal(swap.uuid, blkid(swapImg).UUID);

  const fs = await FatFs.open(logicalVolume(vg!, 'root'));
  assert.equal(fs.label, 'INLV');
  assert.equal((await fs.readFile('/hello.txt')).toString(), 'hello from mtools\n');
  const big = patternBytes(4 * MiB + 123, 7);
  await fs.writeFile('/across the segment boundary.bin', big);
  await fs.flush();

  // reassemble the LV from the PV files with dd and let the FAT tools judge it
  const out = join(dir, 'out.img');
  sh('dd', [`if=${a}`, `of=${out}`, 'bs=1M', 'skip=1', 'count=3', 'status=none']);
  sh('dd', [`if=${b}`, `of=${out}`, 'bs=1M', 'skip=1', 'count=3', 'seek=3', 'status=none']);
  const fsck = spawnSync('fsck.vfat', ['-n', out], { encoding: 'utf8' });
  assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
  const copy = join(dir, 'copy.bin');
  sh('mcopy', ['-i', out, '::/across the segment boundary.bin', copy]);
  assert.ok((await readFile(copy)).equals(big));
});

// ---- hostile PVs and metadata ----

async function corruptPv(t: { after(fn: () => Promise<void>): void }, dir: string, name: string, patch: (pv: Buffer) => void, text = FIXTURE): Promise<{ file: string; vol: Volume }> {
  const file = join(dir, name);
  await writePv(file, { uuid: PV0, size: 8 * MiB, text });
  const pv = await readFile(file);
  patch(pv);
  await writeFile(file, pv);
  const [vol] = await openVolumes(t, [file]);
  return { file, vol: vol! };
}

/** recomputes the mda_header checksum after a patch of the header at 4096 */
function fixMda(pv: Buffer): void {
  pv.writeUInt32LE(lvmCrc(pv.subarray(4096 + 4, 4096 + 512)), 4096);
}

test('hostile PV headers: label CRC, mda_header checksum, metadata checksum, absurd raw_locn; pvck agrees each is broken', async (t) => {
  const dir = await tempDir(t);
  const label = await corruptPv(t, dir, 'label.raw', (pv) => (pv[512 + 100] ^= 1));
  await rejectsWith(readPvLabel(label.vol), 'ERR_CHECKSUM', 'label.raw', 'label_header.crc');
  assert.match(spawnSync('pvck', ['--dump', 'headers', label.file], { encoding: 'utf8', env: ENV }).stdout, /CHECK: label_header.crc/);

  const mda = await corruptPv(t, dir, 'mda.raw', (pv) => (pv[4096 + 30] ^= 1));
  await rejectsWith(readPvMetadata(mda.vol, (await readPvLabel(mda.vol))!), 'ERR_CHECKSUM', 'mda.raw', 'mda_header');

  const text = await corruptPv(t, dir, 'text.raw', (pv) => (pv[4096 + 512 + 40] ^= 1));
  await rejectsWith(readPvMetadata(text.vol, (await readPvLabel(text.vol))!), 'ERR_CHECKSUM', 'text.raw', 'metadata text');
  const pvck = spawnSync('pvck', ['--dump', 'metadata', text.file], { encoding: 'utf8', env: ENV });
  assert.match(pvck.stdout + pvck.stderr, /CHECK: metadata text at \d+ crc does not match/);

  const huge = await corruptPv(t, dir, 'huge.raw', (pv) => {
    pv.writeBigUInt64LE(1n << 40n, 4096 + 48);
    fixMda(pv);
  });
  await rejectsWith(readPvMetadata(huge.vol, (await readPvLabel(huge.vol))!), 'ERR_CORRUPT', 'huge.raw', 'raw_locn[0]', 'does not fit');

  const area = await corruptPv(t, dir, 'area.raw', (pv) => {
    pv.writeBigUInt64LE(1n << 30n, 512 + 112); // metadata area size past the end of the volume
    pv.writeUInt32LE(lvmCrc(pv.subarray(512 + 20, 1024)), 512 + 16);
  });
  await rejectsWith(readPvLabel(area.vol), 'ERR_CORRUPT', 'area.raw', 'past the end of the volume');
});

test('hostile metadata text: syntax, nesting, extents past the PV, gaps, unknown segment types, missing PVs', async (t) => {
  const dir = await tempDir(t);
  throwsCode(() => parseMetadata('vg0 {\nid = "x"\n', 'm'), 'ERR_CORRUPT', 'not closed');
  throwsCode(() => parseMetadata('a = "unterminated', 'm'), 'ERR_CORRUPT', 'unterminated string');
  throwsCode(() => parseMetadata('a { '.repeat(1000), 'm'), 'ERR_CORRUPT', 'nested too deeply');
  throwsCode(() => parseMetadata('a = [1, 2', 'm'), 'ERR_CORRUPT', 'array');
  throwsCode(() => parseMetadata('a = 1\na = 2\n', 'm'), 'ERR_CORRUPT', 'appears twice');
  throwsCode(() => parseMetadata('a = 123456789012345678901234567890\n', 'm'), 'ERR_CORRUPT', 'too large');
  const parsed = parseMetadata('# comment\nvg { s = "a \\"q\\" \\\\ b" # trailing\n n = -5 l = ["x", 1, []] inner { } }\n');
  const vg = parsed.sections.get('vg')!;
  assert.equal(vg.str('s'), 'a "q" \\ b');
  assert.equal(vg.num('n'), -5);
  assert.deepEqual(vg.list('l'), ['x', 1, []]);

  const scan = async (name: string, text: string, files?: string[]): Promise<VolumeGroup> => {
    const sub = join(dir, name);
    await mkdir(sub, { recursive: true });
    const { a, b } = await makeVg(sub, text, false);
    return (await scanVolumeGroups(await openVolumes(t, files ? files.map((f) => join(sub, f)) : [a, b])))[0]!;
  };

  const past = await scan('past', FIXTURE.replace('"pv0", 3\n', '"pv0", 62\n'));
  throwsCode(() => logicalVolume(past, 'swap'), 'ERR_CORRUPT', 'vg0/swap', 'past the end of pv0');

  await rejectsWith(scan('gap', FIXTURE.replace('start_extent = 3\n', 'start_extent = 4\n')), 'ERR_CORRUPT', 'a.raw', 'LV vg0/root', 'gap');

  const thin = await scan('thin', FIXTURE.replace('type = "striped"\nstripe_count = 1\n\nstripes = [\n"pv0", 3', 'type = "thin"\nstripe_count = 1\n\nstripes = [\n"pv0", 3'));
  assert.equal(thin.lvs.find((l) => l.name === 'swap')!.segments[0]!.type, 'thin');
  throwsCode(() => logicalVolume(thin, 'swap'), 'ERR_UNSUPPORTED', 'vg0/swap', '"thin"');

  await rejectsWith(scan('pecount', FIXTURE.replace('pe_count = 63', 'pe_count = 6300')), 'ERR_CORRUPT', 'a.raw', 'past the end of the volume');

  // pv1 is not among the volumes: LVs on pv0 alone still open
  const missing = await scan('missing', FIXTURE, ['a.raw']);
  assert.match(missing.warnings.join('\n'), /PV pv1 \(ow3y71-5KQr-FDcf-jjRK-ooba-AWkL-sV3B3M\) of VG vg0 is missing/);
  assert.equal(logicalVolume(missing, 'swap').size, 2 * MiB);
  throwsCode(() => logicalVolume(missing, 'root'), 'ERR_NOT_FOUND', 'vg0/root', 'pv1');
});

test('mutants of a PV\'s label and metadata area, and of its metadata text, are read or refused with a coded error', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'fuzz.raw');
  const small = FIXTURE.replace(/pe_count = 63/g, 'pe_count = 7');
  await writePv(file, { uuid: PV0, size: 8 * MiB, text: small });
  const open = async (v: Volume) => {
    for (const vg of await scanVolumeGroups([v])) {
      for (const lv of vg.lvs) {
        if (lv.segments.some((s) => s.stripes.some((st) => st.pv === 'pv1'))) continue;
        const l = logicalVolume(vg, lv.name);
        await l.read(l.size - 1, 1);
      }
    }
  };
  const headers = await fuzzMutants(await readFile(file), [[512, 1024], [4096, 4096 + 512]], 0x1f, open);
  t.diagnostic(`headers: ${JSON.stringify(headers)}`);
  // the text, mutated and written back with correct checksums, exercises the parser and the mapping
  const rnd = rng(12345);
  const alphabet = '{}[]=",#\n 0123456789-abcpv';
  const refused: Record<string, number> = {};
  const pv = Buffer.alloc(8 * MiB);
  for (let i = 0; i < FUZZ_ITER * 5; i++) {
    let s = small;
    for (let k = 1 + rnd(4); k > 0; k--) {
      const at = rnd(s.length);
      const c = alphabet[rnd(alphabet.length)]!;
      const op = rnd(3);
      s = op === 0 ? s.slice(0, at) + c + s.slice(at + 1) : op === 1 ? s.slice(0, at) + s.slice(at + 1) : s.slice(0, at) + c + s.slice(at);
    }
    for (const [at, b] of pvStructures({ uuid: PV0, size: pv.length, text: s })) b.copy(pv, at);
    try {
      await open(memoryVolume(pv, 'text mutant'));
    } catch (e) {
      assert.ok(e instanceof PolyvisorError, `text mutant ${i}: ${e instanceof Error ? e.stack : String(e)}\n${s}`);
      refused[e.code] = (refused[e.code] ?? 0) + 1;
    }
  }
  t.diagnostic(`text: ${JSON.stringify(refused)}`);
});
