/**
 * kmod's binary module indexes (modules.dep.bin, modules.alias.bin, modules.symbols.bin),
 * written from the text files depmod writes beside them.
 *
 * libkmod (modprobe, udev's module autoloading) reads only the .bin indexes, never the text
 * modules.dep (libkmod/libkmod.c, kmod_search_moddep opens "modules.dep.bin"), so an
 * initramfs that gains modules needs new .bin files, not just new text.
 *
 * Format (kmod libkmod/libkmod-index.c, "Disk format"): three big-endian u32 words (magic
 * 0xB007F457, version 0x00020001, root node offset), then a Patricia trie whose nodes are
 * addressed by offset | flags (0x80000000 a NUL-terminated prefix follows, 0x40000000 values,
 * 0x20000000 children). A node is: prefix; u8 first, u8 last, (last-first+1) u32 child offsets
 * (0 = none); u32 value count, then per value a u32 priority and a NUL-terminated string.
 * Values are kept sorted by priority, a new value going before the equal ones already there.
 * Keys and values are 7-bit ASCII (a child array has 128 slots).
 *
 * Nodes are written children first (post-order), the way depmod of kmod 30 (Debian 12)
 * writes them, so that for the same input lines the output is byte-for-byte what the guest's
 * own depmod wrote: the tests compare against the guest's files. Readers accept any order.
 */
import { PolyvisorError } from '../errors.js';
import { moduleName } from './modules.js';

const INDEX_MAGIC = 0xb007f457;
const INDEX_VERSION = 0x00020001;
const NODE_PREFIX = 0x80000000;
const NODE_VALUES = 0x40000000;
const NODE_CHILDS = 0x20000000;
/** offsets share their u32 with the flags: the file must stay below 256 MiB */
const NODE_MASK = 0x0fffffff;
const CHILD_MAX = 128;

interface IndexValue {
  priority: number;
  value: string;
}

class IndexNode {
  prefix: string;
  children: (IndexNode | undefined)[] = [];
  first = CHILD_MAX;
  last = 0;
  values: IndexValue[] = [];
  constructor(prefix: string) {
    this.prefix = prefix;
  }
  hasChildren(): boolean {
    return this.first < CHILD_MAX;
  }
}

function checkAscii(s: string, what: string): void {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= CHILD_MAX || c === 0) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `kmod index: ${what} "${s.slice(0, 80)}" holds a character (0x${c.toString(16)}) other than 7-bit ASCII`);
    }
  }
}

/** A module index being built; `insert` in the order depmod inserts, then `serialize`. */
export class KmodIndex {
  readonly #root = new IndexNode('');

  insert(key: string, value: string, priority: number): void {
    checkAscii(key, 'key');
    checkAscii(value, 'value');
    let node = this.#root;
    let i = 0;
    for (;;) {
      let j = 0;
      for (; j < node.prefix.length; j++) {
        if (node.prefix[j] !== key[i + j]) {
          // split: the node keeps prefix[0..j), a new child at prefix[j] takes the rest
          const tail = new IndexNode(node.prefix.slice(j + 1));
          tail.children = node.children;
          tail.first = node.first;
          tail.last = node.last;
          tail.values = node.values;
          const ch = node.prefix.charCodeAt(j);
          node.prefix = node.prefix.slice(0, j);
          node.children = [];
          node.children[ch] = tail;
          node.first = ch;
          node.last = ch;
          node.values = [];
          break;
        }
      }
      i += j;
      if (i === key.length) {
        addValue(node.values, value, priority);
        return;
      }
      const ch = key.charCodeAt(i);
      const child = node.children[ch];
      if (!child) {
        const leaf = new IndexNode(key.slice(i + 1));
        addValue(leaf.values, value, priority);
        node.children[ch] = leaf;
        if (ch < node.first) node.first = ch;
        if (ch > node.last) node.last = ch;
        return;
      }
      node = child;
      i++;
    }
  }

  serialize(): Buffer {
    const parts: Buffer[] = [];
    let size = 12;
    const emit = (b: Buffer) => {
      parts.push(b);
      size += b.length;
    };
    const write = (node: IndexNode): number => {
      const childOffsets: number[] = [];
      if (node.hasChildren()) {
        for (let c = node.first; c <= node.last; c++) {
          const child = node.children[c];
          childOffsets.push(child ? write(child) : 0);
        }
      }
      const at = size;
      if (at > NODE_MASK) throw new PolyvisorError('ERR_UNSUPPORTED', `kmod index: more than ${NODE_MASK} bytes`);
      let flags = 0;
      if (node.prefix.length) {
        emit(Buffer.from(node.prefix + '\0', 'latin1'));
        flags |= NODE_PREFIX;
      }
      if (childOffsets.length) {
        const b = Buffer.alloc(2 + 4 * childOffsets.length);
        b[0] = node.first;
        b[1] = node.last;
        childOffsets.forEach((o, k) => b.writeUInt32BE(o >>> 0, 2 + 4 * k));
        emit(b);
        flags |= NODE_CHILDS;
      }
      if (node.values.length) {
        const count = Buffer.alloc(4);
        count.writeUInt32BE(node.values.length);
        emit(count);
        for (const v of node.values) {
          const b = Buffer.alloc(4 + v.value.length + 1);
          b.writeUInt32BE(v.priority >>> 0, 0);
          b.write(v.value, 4, 'latin1');
          emit(b);
        }
        flags |= NODE_VALUES;
      }
      return (at | flags) >>> 0;
    };
    const root = write(this.#root);
    const head = Buffer.alloc(12);
    head.writeUInt32BE(INDEX_MAGIC, 0);
    head.writeUInt32BE(INDEX_VERSION, 4);
    head.writeUInt32BE(root, 8);
    return Buffer.concat([head, ...parts]);
  }
}

/** kmod's add_value: before the first value whose priority is not lower */
function addValue(values: IndexValue[], value: string, priority: number): void {
  let k = 0;
  while (k < values.length && values[k]!.priority < priority) k++;
  values.splice(k, 0, { priority, value });
}

/**
 * kmod's alias_normalize (shared/util.c): dashes become underscores except inside a
 * bracket expression; an unbalanced "]" or "[" makes the alias unusable (null).
 */
export function normalizeAlias(alias: string): string | null {
  let out = '';
  for (let i = 0; i < alias.length; i++) {
    const c = alias[i]!;
    if (c === ']') return null;
    if (c === '[') {
      const end = alias.indexOf(']', i);
      if (end < 0) return null;
      out += alias.slice(i, end + 1);
      i = end;
      continue;
    }
    out += c === '-' ? '_' : c;
  }
  return out;
}

/** The module files depmod wrote for a tree, as text (the inputs of the .bin files). */
export interface ModuleIndexText {
  /** modules.dep: "path: dep dep" per module, in depmod's module order */
  dep: string;
  /** modules.alias: "alias <pattern> <modname>" lines */
  alias: string;
  /** modules.symbols: "alias symbol:<name> <modname>" lines */
  symbols: string;
}

/** Lines that are neither empty nor comments. */
function contentLines(text: string): string[] {
  return text.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('#'));
}

/**
 * modules.dep.bin, modules.alias.bin and modules.symbols.bin for the text files, as depmod
 * builds them (tools/depmod.c output_deps_bin, output_aliases_bin, output_symbols_bin): each
 * module's priority is its line number in modules.dep, aliases and symbols take their
 * module's priority, and alias keys are normalized.
 */
export function buildModuleIndexes(text: ModuleIndexText, file = 'modules.dep'): { dep: Buffer; alias: Buffer; symbols: Buffer } {
  const dep = new KmodIndex();
  const priority = new Map<string, number>();
  contentLines(text.dep).forEach((line, idx) => {
    const colon = line.indexOf(':');
    if (colon <= 0) throw new PolyvisorError('ERR_CORRUPT', `line ${idx + 1} has no "path:" ("${line.slice(0, 80)}")`, { file });
    const path = line.slice(0, colon);
    const name = moduleName(path);
    if (!priority.has(name)) priority.set(name, idx);
    // depmod's line: "path:" then " dep" per dependency, single spaces
    const deps = line.slice(colon + 1).trim().split(/\s+/).filter(Boolean);
    dep.insert(name, [`${path}:`, ...deps].join(' '), idx);
  });
  const byModule = (t: string, what: string): KmodIndex => {
    const index = new KmodIndex();
    for (const line of contentLines(t)) {
      const m = /^alias\s+(\S+)\s+(\S+)\s*$/.exec(line);
      if (!m) continue;
      const key = what === 'alias' ? normalizeAlias(m[1]!) : m[1]!;
      if (key === null) continue; // depmod warns and skips such an alias
      index.insert(key, m[2]!, priority.get(m[2]!) ?? 0);
    }
    return index;
  };
  return { dep: dep.serialize(), alias: byModule(text.alias, 'alias').serialize(), symbols: byModule(text.symbols, 'symbol').serialize() };
}
