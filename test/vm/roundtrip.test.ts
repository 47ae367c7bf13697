/**
 * Every codec's fixtures, through every other codec and back.
 *
 * For a fixture read by codec A, each target B that can write is asked to encode it, and when
 * B can read its own output, the result goes back to A. Every setting the model names must
 * then either be unchanged, or be named by a note from one of the steps (dropped or changed,
 * with a reason): a target that loses a setting without saying so fails here.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ConversionNote, VmCodec } from '../../src/vm/codec.js';
import { CODECS } from '../../src/vm/registry.js';
import type { VmSpec } from '../../src/vm/spec.js';

const FIXTURES = join(process.cwd(), 'test', 'vm', 'fixtures');

/**
 * The settings compared, as paths into VmSpec; per-item paths use [i]. A value the source left
 * unspecified (undefined, an "unknown" OS) is not compared: a target may fill in its default.
 * Booleans are always concrete, so a target that turns one on is caught too.
 */
function settings(spec: VmSpec): Map<string, unknown> {
  const m = new Map<string, unknown>();
  const put = (k: string, v: unknown) => m.set(k, v);
  put('name', spec.name);
  put('uuid', spec.uuid);
  put('virtualization', spec.virtualization);
  put('firmware.type', spec.firmware.type);
  put('firmware.secureBoot', !!spec.firmware.secureBoot);
  put('firmware.tpm', !!spec.firmware.tpm);
  put('cpu.count', spec.cpu.count);
  put('memory.bytes', spec.memory.bytes);
  put('os.family', spec.os.family === 'unknown' ? undefined : spec.os.family);
  put('disks.length', spec.disks.length);
  spec.disks.forEach((d, i) => {
    put(`disks[${i}].device`, d.device);
    // a CD-ROM is read-only whether or not its descriptor says so
    put(`disks[${i}].readOnly`, !!d.readOnly || d.device === 'cdrom');
  });
  put('nics.length', spec.nics.length);
  spec.nics.forEach((n, i) => {
    put(`nics[${i}].mac`, n.mac);
    put(`nics[${i}].model`, n.model);
  });
  put('boot.kernel', spec.boot?.kernel);
  put('boot.cmdline', spec.boot?.cmdline);
  put('boot.bootloader', spec.boot?.bootloader);
  return m;
}

/** A note covers a setting when one path is a prefix of the other ("nics[1]" covers "nics[1].model"). */
function covered(setting: string, notes: ConversionNote[]): boolean {
  const norm = (s: string) => s.replace(/^[a-z]+:\s*/i, '');
  const list = (s: string) => (s.endsWith('.length') ? [s, s.slice(0, -'.length'.length)] : [s]);
  return notes.some((n) => {
    const ns = norm(n.setting);
    return list(setting).some((s) => s === ns || s.startsWith(ns + '.') || s.startsWith(ns + '[') || ns.startsWith(s + '.') || ns.startsWith(s + '['));
  });
}

async function fixturesOf(codec: VmCodec): Promise<string[]> {
  const dir = join(FIXTURES, codec.name);
  const names = await readdir(dir).catch(() => [] as string[]);
  return names
    .filter((n) => codec.extensions.some((e) => n.toLowerCase().endsWith(e)) && !n.includes('.out.') && !n.endsWith('.spec.json'))
    .map((n) => join(dir, n));
}

const readers = CODECS.filter((c) => c.decode);
const writers = CODECS.filter((c) => c.encode);

for (const a of readers) {
  test(`round trips: ${a.name} fixtures through every writer`, async (t) => {
    const files = await fixturesOf(a);
    if (files.length === 0) {
      t.diagnostic(`no ${a.name} fixtures`);
      return;
    }
    let checked = 0;
    for (const file of files) {
      const { spec } = a.decode!(await readFile(file), file);
      const before = settings(spec);
      const diskFiles = spec.disks.map((d, i) => (d.file ? { file: `disk${i}.img`, format: 'raw', capacity: d.capacity ?? 1 << 30 } : undefined));
      for (const b of writers) {
        const there = b.encode!({ spec, diskFiles, name: 'roundtrip', folder: '/srv/vms' });
        assert.ok(there.files.length > 0, `${a.name} -> ${b.name}: wrote nothing`);
        if (!b.decode || b.probe(Buffer.from(there.files[0]!.data), there.files[0]!.name) === 0) continue; // b cannot read its own output (hyperv writes a script)
        const mid = b.decode(Buffer.from(there.files[0]!.data), `${file} -> ${b.name}`);
        const notes = [...there.notes, ...mid.notes];
        let back = mid.spec;
        const again = a.encode && a !== b ? a.encode({ spec: mid.spec, diskFiles, name: 'roundtrip', folder: '/srv/vms' }) : undefined;
        const aReadsItself = again !== undefined && a.probe(Buffer.from(again.files[0]!.data), again.files[0]!.name) > 0;
        if (again && aReadsItself) {
          notes.push(...again.notes);
          const decoded = a.decode!(Buffer.from(again.files[0]!.data), `${file} -> ${b.name} -> ${a.name}`);
          notes.push(...decoded.notes);
          back = decoded.spec;
        }
        const after = settings(back);
        for (const [k, v] of before) {
          if (v === undefined || covered(k, notes)) continue;
          assert.deepEqual(after.get(k), v, `${file}: ${a.name} -> ${b.name}${aReadsItself ? ` -> ${a.name}` : ''}: ${k} changed with no note saying so`);
        }
        checked++;
      }
    }
    t.diagnostic(`${a.name}: ${files.length} fixtures, ${checked} round trips checked`);
  });
}
