/**
 * Windows registry hives (regf), with hivex (libhivex-bin) as the oracle: hives that
 * hivexregedit --merge fills (starting from an empty hive Polyvisor writes) read exactly as
 * hivexregedit --export shows them; hives Polyvisor writes and edits (keys added and deleted,
 * values added, replaced, grown, shrunk and deleted, big data, Unicode names) export from
 * hivex exactly as intended; round trips keep every byte; a hive that must keep its size
 * takes edits into free cells or refuses them with ERR_UNSUPPORTED; hostile hives (truncated,
 * bad offsets, cycles, random mutants) fail with coded errors, never a crash.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { isPolyvisorError } from '../../../src/errors.js';
import { BASE, baseChecksum } from '../../../src/guest/windows/regf-base.js';
import { Hive, lhHash } from '../../../src/guest/windows/regf.js';
import { REG, decodeValue, dword, multiSz, sz } from '../../../src/guest/windows/regf-values.js';
import { rng, tempDir, throwsCode } from '../../helpers.js';
import { sh } from '../oracle.js';
import { canonical, exportTree, mergeReg, readTree, type Tree } from './hivex.js';

const FUZZ = Number(process.env.POLYVISOR_FUZZ_ITER ?? 150);

/** A random tree: nested keys, every value type, empty and big values, names that differ only in case across keys. */
function randomTree(seed: number, keys = 40): Tree {
  const r = rng(seed);
  const tree: Tree = new Map([['', new Map()]]);
  const paths = [''];
  const word = () => ['Services', 'Control', 'vmbus', 'storvsc', 'Enum', 'Parameters', 'Tcpip', 'Select', 'CurrentVersion', 'Ünïcödé', 'Key With Spaces', 'x'][r(12)]! + r(1000);
  for (let i = 0; i < keys; i++) {
    const parent = paths[r(paths.length)]!;
    const p = parent ? `${parent}\\${word()}` : word();
    if (tree.has(p)) continue;
    paths.push(p);
    const vals = new Map<string, { type: number; data: Buffer }>();
    const n = r(6);
    for (let j = 0; j < n; j++) {
      const kind = r(8);
      const name = j === 0 && r(4) === 0 ? '' : `Value${j}${kind === 7 ? 'Ω' : ''}`;
      if (kind === 0) vals.set(name, { type: REG.DWORD, data: dword(r(0x7fffffff)) });
      else if (kind === 1) vals.set(name, { type: REG.SZ, data: sz(`text ${r(1e6)}`) });
      else if (kind === 2) vals.set(name, { type: REG.EXPAND_SZ, data: sz('%SystemRoot%\\system32\\drivers\\x.sys') });
      else if (kind === 3) vals.set(name, { type: REG.MULTI_SZ, data: multiSz(['a', 'bb', 'ccc']) });
      else if (kind === 4) vals.set(name, { type: REG.BINARY, data: Buffer.from(Array.from({ length: r(300) }, () => r(256))) });
      else if (kind === 5) vals.set(name, { type: REG.QWORD, data: Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]) });
      else if (kind === 6) vals.set(name, { type: REG.NONE, data: Buffer.alloc(0) });
      else vals.set(name, { type: REG.BINARY, data: Buffer.alloc(3, 7) });
    }
    tree.set(p, vals);
  }
  return tree;
}

/** Writes `tree` with Polyvisor's writer into hive `h`. */
function writeTree(h: Hive, tree: Tree): void {
  for (const [k, vals] of tree) {
    h.createKey(k);
    for (const [n, v] of vals) h.setValue(k, n, v.type, v.data);
  }
}

test('an empty hive Polyvisor makes opens in hivexsh and exports as a bare root', async (t) => {
  const dir = await tempDir(t);
  const p = join(dir, 'empty');
  const buf = Hive.create('SYSTEM').toBuffer();
  assert.equal(buf.length, 8192);
  writeFileSync(p, buf);
  assert.equal(sh('hivexsh', [p], 'ls\nlsval\n').trim(), '');
  assert.deepEqual(canonical(exportTree(p)), ['[]']);
  const back = Hive.parse(buf, p);
  assert.deepEqual(back.notes, []);
  assert.equal(back.root.subkeys().length, 0);
});

test('hives filled by hivexregedit --merge read exactly as hivexregedit --export shows them', async (t) => {
  const dir = await tempDir(t);
  for (const seed of [1, 2, 3]) {
    const p = join(dir, `merged-${seed}`);
    writeFileSync(p, Hive.create('SOFTWARE').toBuffer());
    const tree = randomTree(seed, 60);
    // a big value: hivex stores it in one cell, Windows (1.5) in "db" segments; both read
    tree.get('')!.set('Big', { type: REG.BINARY, data: Buffer.alloc(40000, seed) });
    mergeReg(p, tree, dir);
    const h = Hive.parse(readFileSync(p), p);
    assert.deepEqual(canonical(readTree(h)), canonical(exportTree(p)), `seed ${seed}`);
    assert.deepEqual(canonical(readTree(h)), canonical(tree), `seed ${seed}`);
  }
});

test('hives Polyvisor writes export from hivex exactly as written (big data in "db" segments, Unicode names)', async (t) => {
  const dir = await tempDir(t);
  for (const seed of [11, 12]) {
    const h = Hive.create('SYSTEM');
    const tree = randomTree(seed, 80);
    tree.get('')!.set('Big', { type: REG.BINARY, data: Buffer.from(Array.from({ length: 50000 }, (_, i) => i & 0xff)) });
    tree.get('')!.set('Ωmega', { type: REG.SZ, data: sz('unicode name') });
    writeTree(h, tree);
    const p = join(dir, `written-${seed}`);
    writeFileSync(p, h.toBuffer());
    assert.deepEqual(canonical(exportTree(p)), canonical(tree), `seed ${seed}`);
    // hivexsh finds keys through the lh lists: their order and hashes must be right
    const first = [...tree.keys()].find((k) => k.includes('\\'))!;
    assert.equal(sh('hivexsh', [p], `cd ${first.replace(/ /g, '\\ ')}\n`).trim(), '');
    assert.deepEqual(canonical(readTree(Hive.parse(readFileSync(p), p))), canonical(tree));
  }
});

test('edits of a hivex-made hive: replace (grow, shrink, type), delete values and keys, add keys', async (t) => {
  const dir = await tempDir(t);
  const p = join(dir, 'edit');
  writeFileSync(p, Hive.create('SYSTEM').toBuffer());
  const tree = randomTree(21, 50);
  tree.set('ControlSet001', new Map());
  tree.set('ControlSet001\\Services', new Map());
  tree.set('ControlSet001\\Services\\vmbus', new Map([['Start', { type: REG.DWORD, data: dword(3) }], ['ImagePath', { type: REG.EXPAND_SZ, data: sz('System32\\drivers\\vmbus.sys') }]]));
  tree.set('ControlSet001\\Services\\gone', new Map([['A', { type: REG.SZ, data: sz('x') }]]));
  tree.set('ControlSet001\\Services\\gone\\Sub', new Map([['B', { type: REG.DWORD, data: dword(1) }]]));
  mergeReg(p, tree, dir);
  const h = Hive.parse(readFileSync(p), p);
  const r = rng(5);
  const keys = [...tree.keys()];
  for (let i = 0; i < 60; i++) {
    const k = keys[r(keys.length)]!;
    if (!tree.has(k)) continue;
    const vals = tree.get(k)!;
    const names = [...vals.keys()];
    const op = r(4);
    if (op === 0 && names.length) {
      const n = names[r(names.length)]!;
      assert.equal(h.deleteValue(k, n), true);
      vals.delete(n);
    } else if (op === 1 && names.length) {
      const n = names[r(names.length)]!;
      const v = { type: REG.BINARY, data: Buffer.alloc(r(3) === 0 ? 20000 : r(600), i) };
      h.setValue(k, n, v.type, v.data);
      vals.set(n, v);
    } else if (op === 2) {
      const v = { type: REG.DWORD, data: dword(i) };
      h.setValue(k, `New${i}`, v.type, v.data);
      vals.set(`New${i}`, v);
    } else {
      const nk = k ? `${k}\\Added${i}` : `Added${i}`;
      h.createKey(nk);
      tree.set(nk, new Map());
    }
  }
  assert.equal(h.setValue('ControlSet001\\Services\\vmbus', 'Start', REG.DWORD, dword(0)), true);
  assert.equal(h.setValue('controlset001\\services\\VMBUS', 'start', REG.DWORD, dword(0)), false, 'the same value again changes nothing');
  tree.get('ControlSet001\\Services\\vmbus')!.set('Start', { type: REG.DWORD, data: dword(0) });
  assert.equal(h.deleteKey('ControlSet001\\Services\\gone'), true);
  tree.delete('ControlSet001\\Services\\gone');
  tree.delete('ControlSet001\\Services\\gone\\Sub');
  const out = join(dir, 'edited');
  writeFileSync(out, h.toBuffer());
  assert.deepEqual(canonical(exportTree(out)), canonical(tree));
  assert.equal(sh('hivexget', [out, '\\ControlSet001\\Services\\vmbus', 'Start']).trim(), '0');
  assert.equal(decodeValue(REG.DWORD, Hive.parse(readFileSync(out), out).key('ControlSet001\\Services\\vmbus')!.value('Start')!.data), 0);
});

test('round trip: an unedited hive gives back its bytes; an edited one bumps both sequence numbers and its checksum holds', async (t) => {
  const dir = await tempDir(t);
  const p = join(dir, 'rt');
  writeFileSync(p, Hive.create('SYSTEM').toBuffer());
  mergeReg(p, randomTree(31, 30), dir);
  const orig = readFileSync(p);
  const h = Hive.parse(orig, p);
  assert.ok(h.toBuffer().equals(orig));
  h.createKey('A\\B\\C');
  const b = h.toBuffer();
  const seq = orig.readUInt32LE(BASE.primarySequenceNumber);
  assert.equal(b.readUInt32LE(BASE.primarySequenceNumber), seq + 1);
  assert.equal(b.readUInt32LE(BASE.secondarySequenceNumber), seq + 1);
  assert.equal(b.readUInt32LE(BASE.checksum), baseChecksum(b));
  assert.equal(b.readUInt32LE(BASE.hiveBinsDataSize) + 4096, b.length);
  const again = Hive.parse(b, p);
  assert.deepEqual(canonical(readTree(again)), canonical(readTree(h)));
  assert.ok(again.toBuffer().equals(b));
});

test('a hive that must keep its size takes edits into free cells, refuses the rest with ERR_UNSUPPORTED', async () => {
  const base = Hive.create('SYSTEM');
  base.createKey('ControlSet001\\Services\\vmbus');
  base.setValue('ControlSet001\\Services\\vmbus', 'Start', REG.DWORD, dword(3));
  const buf = base.toBuffer();
  const h = Hive.parse(buf, 'SYSTEM', { growable: false });
  assert.ok(h.freeBytes > 1000);
  h.setValue('ControlSet001\\Services\\vmbus', 'Start', REG.DWORD, dword(0));
  h.createKey('ControlSet001\\Services\\storvsc');
  h.setValue('ControlSet001\\Services\\storvsc', 'Group', REG.SZ, sz('SCSI miniport'));
  const out = h.toBuffer();
  assert.equal(out.length, buf.length);
  const big = Hive.parse(out, 'SYSTEM', { growable: false });
  throwsCode(() => big.setValue('', 'Huge', REG.BINARY, Buffer.alloc(100000)), 'ERR_UNSUPPORTED', 'SYSTEM', 'keep its size');
  // slack after the last bin (hive files are often larger than their bins) takes a new bin
  const slack = Buffer.concat([out, Buffer.alloc(65536)]);
  const roomy = Hive.parse(slack, 'SYSTEM', { growable: false });
  roomy.setValue('', 'Huge', REG.BINARY, Buffer.alloc(30000, 1));
  const grown = roomy.toBuffer();
  assert.equal(grown.length, slack.length);
  assert.equal(Hive.parse(grown, 'SYSTEM').root.value('Huge')!.data.length, 30000);
});

test('lh hashes are Windows\' (h * 37 + upper-cased code unit)', () => {
  assert.equal(lhHash('a'), 65);
  assert.equal(lhHash('AB'), (65 * 37 + 66) >>> 0);
});

function resealed(b: Buffer): Buffer {
  const c = Buffer.from(b);
  c.writeUInt32LE(baseChecksum(c), BASE.checksum);
  return c;
}

/** Every key and value read; any error must be a PolyvisorError. */
function readAll(buf: Buffer, name: string): void {
  const h = Hive.parse(buf, name);
  readTree(h, 5000);
}

test('hostile hives fail with coded errors naming the file and offset', () => {
  const h = Hive.create('SYSTEM');
  h.createKey('A\\B');
  h.setValue('A', 'V', REG.BINARY, Buffer.alloc(100, 1));
  const good = h.toBuffer();
  throwsCode(() => Hive.parse(good.subarray(0, 2000), 'trunc.hive'), 'ERR_TRUNCATED', 'trunc.hive');
  throwsCode(() => Hive.parse(good.subarray(0, 6000), 'trunc.hive'), 'ERR_TRUNCATED', 'trunc.hive', 'hive bins');
  const badSum = Buffer.from(good);
  badSum[100] = 1;
  throwsCode(() => Hive.parse(badSum, 'sum.hive'), 'ERR_CHECKSUM', 'sum.hive');
  const badRoot = resealed(good);
  badRoot.writeUInt32LE(0x12345, BASE.rootCellOffset);
  throwsCode(() => Hive.parse(resealed(badRoot), 'root.hive'), 'ERR_CORRUPT', 'root.hive', 'key node');
  // dirty: sequence numbers differ -> read, with a note
  const dirty = Buffer.from(good);
  dirty.writeUInt32LE(dirty.readUInt32LE(BASE.primarySequenceNumber) + 1, BASE.primarySequenceNumber);
  const d = Hive.parse(resealed(dirty), 'dirty.hive');
  assert.match(d.notes.join(), /dirty/);
  assert.ok(d.key('A\\B'));
  // a cycle: A's subkey list names the root
  const parsed = Hive.parse(good, 'cycle.hive');
  const a = parsed.key('A')!;
  const list = parsed.nk(a.offset).subkeysList;
  const cyc = Buffer.from(good);
  cyc.writeUInt32LE(parsed.root.offset, 4096 + list + 4 + 4);
  const c = Hive.parse(resealed(cyc), 'cycle.hive');
  throwsCode(() => readTree(c), 'ERR_CORRUPT', 'cycle.hive', 'cycle');
  // a value offset into the middle of a cell
  const mid = Buffer.from(good);
  const vlist = parsed.nk(a.offset).valuesList;
  mid.writeUInt32LE(vlist + 8, 4096 + vlist + 4);
  throwsCode(() => readAll(resealed(mid), 'mid.hive'), 'ERR_CORRUPT', 'mid.hive', 'allocated cell');
});

test(`${FUZZ} random mutants of a hivex-made hive: read or refused with a coded error, never a crash`, async (t) => {
  const dir = await tempDir(t);
  const p = join(dir, 'fuzz');
  writeFileSync(p, Hive.create('SYSTEM').toBuffer());
  const tree = randomTree(41, 40);
  tree.get('')!.set('Big', { type: REG.BINARY, data: Buffer.alloc(20000, 3) });
  mergeReg(p, tree, dir);
  const big = Hive.parse(readFileSync(p), p);
  big.setValue('', 'Db', REG.BINARY, Buffer.alloc(40000, 9));
  const base = big.toBuffer();
  const r = rng(0xfeed);
  let refused = 0;
  for (let i = 0; i < FUZZ; i++) {
    const m = Buffer.from(base);
    const n = 1 + r(8);
    for (let j = 0; j < n; j++) {
      const at = r(3) === 0 ? 4096 + r(64) * 8 + r(8) : 4096 + r(m.length - 4096);
      m[at] = r(2) ? r(256) : m[at]! ^ (1 << r(8));
    }
    try {
      readAll(resealed(m), `mutant-${i}`);
      const h = Hive.parse(resealed(m), `mutant-${i}`);
      h.createKey('Fuzz\\Key');
      h.setValue('Fuzz\\Key', 'V', REG.SZ, sz('x'));
      Hive.parse(h.toBuffer(), `mutant-${i} edited`);
    } catch (e) {
      assert.ok(isPolyvisorError(e), `mutant ${i}: ${String((e as Error).stack)}`);
      refused++;
    }
  }
  assert.ok(refused > 0 && refused < FUZZ, `${refused} of ${FUZZ} refused`);
});
