/**
 * The formats table. Adding a format is one file in formats/ and one line here; the CLI's
 * help, option validation, probing and the README's support matrix all read this table.
 */
import { PolyvisorError } from '../errors.js';
import { parseSize } from '../util/size.js';
import type { DiskFormat } from './format.js';
import { raw } from './formats/raw.js';
import { qcow2 } from './formats/qcow2.js';
import { vhd } from './formats/vhd.js';
import { vhdx } from './formats/vhdx.js';
import { vmdk } from './formats/vmdk.js';
import { vdi } from './formats/vdi.js';

export const FORMATS: readonly DiskFormat[] = [raw, qcow2, vhd, vhdx, vmdk, vdi];

export function findFormat(name: string): DiskFormat {
  const n = name.toLowerCase();
  const f = FORMATS.find((x) => x.name === n || x.aliases.includes(n));
  if (!f) {
    const names = FORMATS.map((x) => [x.name, ...x.aliases].join('/')).join(', ');
    throw new PolyvisorError('ERR_FORMAT_UNKNOWN', `unknown format "${name}" (known: ${names})`);
  }
  return f;
}

/** Picks the format whose probe is most confident; raw always answers with a low score. */
export function probeFormat(head: Uint8Array, tail: Uint8Array, fileSize: number): { format: DiskFormat; score: number } {
  let best: { format: DiskFormat; score: number } | null = null;
  for (const format of FORMATS) {
    let score = 0;
    try {
      score = format.probe(head, tail, fileSize);
    } catch {
      score = 0; // a probe must not throw; a broken one simply does not claim the file
    }
    if (score > 0 && (!best || score > best.score)) best = { format, score };
  }
  if (!best) throw new PolyvisorError('ERR_FORMAT_UNKNOWN', 'no format recognises this file');
  return best;
}

/**
 * Parses "key=value,key=value" (qemu-img's -o syntax, where ",," escapes a comma) and
 * validates every key and value against the format's option table.
 */
export function parseCreateOptions(format: DiskFormat, text: string | string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  const items = (Array.isArray(text) ? text : text ? [text] : []).flatMap(splitOptions);
  for (const item of items) {
    if (item === '') continue;
    const eq = item.indexOf('=');
    const key = (eq < 0 ? item : item.slice(0, eq)).trim();
    const value = eq < 0 ? 'on' : item.slice(eq + 1);
    const spec = format.createOptions.find((o) => o.name === key);
    if (!spec) {
      const known = format.createOptions.map((o) => o.name).join(', ') || 'none';
      throw new PolyvisorError('ERR_INVALID_OPTION', `${format.name} has no option "${key}" (options: ${known})`);
    }
    switch (spec.type) {
      case 'size':
        try {
          parseSize(value, key);
        } catch {
          throw new PolyvisorError('ERR_INVALID_OPTION', `${format.name} option ${key}: "${value}" is not a size`);
        }
        break;
      case 'int':
        if (!/^\d+$/.test(value)) throw new PolyvisorError('ERR_INVALID_OPTION', `${format.name} option ${key}: "${value}" is not a whole number`);
        break;
      case 'bool':
        if (!['on', 'off', 'true', 'false', 'yes', 'no', '1', '0'].includes(value)) {
          throw new PolyvisorError('ERR_INVALID_OPTION', `${format.name} option ${key}: "${value}" is not on or off`);
        }
        break;
      case 'enum':
        if (!spec.values?.includes(value)) {
          throw new PolyvisorError('ERR_INVALID_OPTION', `${format.name} option ${key}: "${value}" is not one of ${spec.values?.join(', ')}`);
        }
        break;
      case 'string':
        break;
    }
    out[key] = value;
  }
  return out;
}

function splitOptions(text: string): string[] {
  const items: string[] = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === ',' && text[i + 1] === ',') {
      cur += ',';
      i++;
    } else if (c === ',') {
      items.push(cur);
      cur = '';
    } else cur += c;
  }
  items.push(cur);
  return items;
}

export function optionBool(options: Readonly<Record<string, string>>, key: string, dflt: boolean): boolean {
  const v = options[key];
  if (v === undefined) return dflt;
  return ['on', 'true', 'yes', '1'].includes(v);
}

export function optionSize(options: Readonly<Record<string, string>>, key: string, dflt: number): number {
  const v = options[key];
  return v === undefined ? dflt : parseSize(v, key);
}
