/**
 * Test helper: hivex (Debian libhivex-bin) as the oracle for registry hives. Trees are held
 * as path -> values, written to .reg text that hivexregedit --merge imports, and read back
 * from hivexregedit --export (every value as hex(TYPE):bytes, so no encoding is guessed).
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Hive, RegKey } from '../../../src/guest/windows/regf.js';
import { sh } from '../oracle.js';

export interface TreeValue {
  type: number;
  data: Buffer;
}
/** key path ("" for the root, "A\\B" below it) -> value name (case as written) -> value */
export type Tree = Map<string, Map<string, TreeValue>>;

const quote = (s: string) => `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
const hexBytes = (b: Buffer) => [...b].map((x) => x.toString(16).padStart(2, '0')).join(',');

/** .reg text for hivexregedit --merge: every key (parents first), every value as hex(TYPE). */
export function toReg(tree: Tree): string {
  const lines = ['Windows Registry Editor Version 5.00', ''];
  const keys = [...tree.keys()].sort((a, b) => a.split('\\').length - b.split('\\').length || (a < b ? -1 : 1));
  for (const k of keys) {
    lines.push(`[\\${k}]`);
    for (const [name, v] of tree.get(k)!) lines.push(`${name === '' ? '@' : quote(name)}=hex(${v.type.toString(16)}):${hexBytes(v.data)}`);
    lines.push('');
  }
  return lines.join('\r\n');
}

export function mergeReg(hivePath: string, tree: Tree, dir: string): void {
  const reg = join(dir, `merge-${Math.random().toString(36).slice(2)}.reg`);
  writeFileSync(reg, toReg(tree));
  sh('hivexregedit', ['--merge', hivePath, reg]);
}

function unquote(s: string): string {
  return s.replace(/\\(.)/g, '$1');
}

/** hivexregedit --export, parsed into a tree (key paths without the leading "\"). */
export function exportTree(hivePath: string): Tree {
  // hivex prints a Latin-1 ("compressed") key name as its raw bytes and a UTF-16 name as UTF-8: decode line by line
  const raw = execFileSync('hivexregedit', ['--export', hivePath, '\\'], { stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 28 });
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  const text = raw
    .toString('latin1')
    .split('\n')
    .map((l) => {
      try {
        return utf8.decode(Buffer.from(l, 'latin1'));
      } catch {
        return l;
      }
    })
    .join('\n');
  const tree: Tree = new Map();
  let cur: Map<string, TreeValue> | undefined;
  // hex data continues on the next line after a trailing backslash
  const joined = text.replace(/\\\r?\n\s*/g, '');
  for (const line of joined.split(/\r?\n/)) {
    const key = /^\[\\(.*)\]$/.exec(line);
    if (key) {
      cur = new Map();
      tree.set(key[1]!, cur);
      continue;
    }
    const val = /^(@|"((?:[^"\\]|\\.)*)")=(.*)$/.exec(line);
    if (!val || !cur) continue;
    const name = val[1] === '@' ? '' : unquote(val[2]!);
    const rhs = val[3]!;
    let m: RegExpExecArray | null;
    if ((m = /^hex\(([0-9a-f]+)\):(.*)$/i.exec(rhs))) cur.set(name, { type: parseInt(m[1]!, 16), data: Buffer.from(m[2]!.replace(/,/g, ''), 'hex') });
    else if ((m = /^hex:(.*)$/i.exec(rhs))) cur.set(name, { type: 3, data: Buffer.from(m[1]!.replace(/,/g, ''), 'hex') });
    else if ((m = /^dword:([0-9a-f]{8})$/i.exec(rhs))) {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(parseInt(m[1]!, 16));
      cur.set(name, { type: 4, data: b });
    } else throw new Error(`hivexregedit exported a value this helper does not parse: ${line}`);
  }
  return tree;
}

/** The same tree, read by Polyvisor's reader (bounded: at most `max` keys). */
export function readTree(hive: Hive, max = 100000): Tree {
  const tree: Tree = new Map();
  const walk = (k: RegKey) => {
    if (tree.size >= max) throw new Error('too many keys');
    tree.set(k.path, new Map(k.values().map((v) => [v.name, { type: v.type, data: v.data }])));
    for (const s of k.subkeys()) walk(s);
  };
  walk(hive.root);
  return tree;
}

/** A comparable, order-independent form (names compared as Windows does: case-insensitively). */
export function canonical(tree: Tree): string[] {
  const out: string[] = [];
  for (const [k, vals] of tree) {
    out.push(`[${k.toUpperCase()}]`);
    for (const [n, v] of vals) out.push(`[${k.toUpperCase()}] ${JSON.stringify(n.toUpperCase())}=${v.type}:${v.data.toString('hex')}`);
  }
  return out.sort();
}
