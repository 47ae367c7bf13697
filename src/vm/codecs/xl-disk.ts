/**
 * xl's disk specification mini-language (xl-disk-configuration(5)), the string in each entry
 * of `disk = [ ... ]`:
 *
 *   [<key>=<value>|<flag>,]*, [<target>, [<format>, [<vdev>, [<access>]]]], [<key>=<value>|<flag>,]* [target=<target>]
 *
 * and the deprecated xend form `[<format>:][<target>],<vdev>[:<devtype>],<access>` with its
 * prefixes (phy:, file:, tap:aio:, qcow2:, iscsi: ...). The rules follow libxl's scanner
 * (tools/libs/util/libxlu_disk_l.l): positional parameters fill target, format, vdev, access in
 * that order, except that after a deprecated prefix there is no format position; `target=`
 * swallows the rest of the string; an empty target with a vdev in the format position is an
 * empty CD-ROM drive.
 */

export interface XlDiskSpec {
  /** the image path or device; '' or absent for an empty CD-ROM */
  target?: string;
  /** raw, qcow, qcow2, vhd, qed, or 'empty' */
  format?: string;
  vdev?: string;
  access?: 'ro' | 'rw';
  cdrom: boolean;
  /** settings outside the model (backendtype=, script=, discard...), verbatim */
  options: string[];
  /** the xend form was used (prefixes, hdc:cdrom) */
  deprecated: boolean;
}

const FORMATS = new Set(['raw', 'qcow', 'qcow2', 'vhd', 'qed', 'empty']);
/** key=value parameters xl knows and the model does not name: kept as written */
const KEPT_KEYS = new Set(['backend', 'backendtype', 'specification', 'script', 'colo-host', 'colo-port', 'colo-export', 'active-disk', 'hidden-disk', 'grant_usage']);
const KEPT_FLAGS = new Set(['direct-io-safe', 'discard', 'no-discard', 'colo', 'no-colo', 'trusted', 'untrusted']);

function setFormat(d: XlDiskSpec, v: string): void {
  const f = v.trim().toLowerCase();
  if (f === '') {
    d.format = 'raw';
    return;
  }
  if (!FORMATS.has(f)) throw new Error(`unknown disk format "${v}" (xl knows raw, qcow, qcow2, vhd, qed)`);
  d.format = f;
}

function setAccess(d: XlDiskSpec, v: string): void {
  const a = v.trim().toLowerCase();
  if (a === '') return; // an empty value takes the default: rw, or ro for a CD-ROM
  if (a === 'rw' || a === 'w' || a === 'w!') d.access = 'rw';
  else if (a === 'r' || a === 'ro') d.access = 'ro';
  else throw new Error(`unknown access "${v}" (ro, r, rw or w)`);
}

/** "hdc:cdrom" / "xvda:disk" */
function vdevAndDevtype(d: XlDiskSpec, v: string): boolean {
  const m = /^([^:]+):(cdrom|disk)$/.exec(v);
  if (!m) return false;
  d.vdev = m[1];
  d.cdrom = m[2] === 'cdrom';
  d.deprecated = true;
  return true;
}

/** Parses one DISKSPEC. Throws Error with a message naming what is wrong. */
export function parseDiskSpec(spec: string): XlDiskSpec {
  const d: XlDiskSpec = { cdrom: false, options: [], deprecated: false };
  let s = spec;
  let formatSet = false;
  let accessSet = false;
  let targetSet = false;
  while (s.length > 0) {
    s = s.replace(/^[ \t\n]+/, '');
    if (s.length === 0) break;
    if (s.startsWith('target=')) {
      d.target = s.slice('target='.length).replace(/,$/, '');
      targetSet = true;
      break;
    }
    // deprecated prefixes take precedence over everything but target= (libxlu_disk_l.l)
    const prefix = /^([a-z][a-z0-9]*):(?![a-z0-9])/.exec(s) ?? /^(raw|qcow2?|vhd|tapdisk|tap2?|aio|ioemu|file|phy|iscsi|e?nbd|drbd):/.exec(s);
    if (prefix) {
      const p = prefix[1]!;
      s = s.slice(p.length + 1);
      d.deprecated = true;
      if (p === 'raw' || p === 'qcow' || p === 'qcow2' || p === 'vhd') {
        setFormat(d, p);
        formatSet = true;
      }
      else if (p === 'iscsi' || p === 'nbd' || p === 'enbd' || p === 'drbd') d.options.push(`script=block-${p}`);
      else if (!['tapdisk', 'tap', 'tap2', 'aio', 'ioemu', 'file', 'phy'].includes(p)) throw new Error(`unknown deprecated disk prefix "${p}:"`);
      continue;
    }
    const comma = s.indexOf(',');
    const tok = comma < 0 ? s : s.slice(0, comma);
    s = comma < 0 ? '' : s.slice(comma + 1);
    const kv = /^([a-z][-a-z0-9_]*)=(.*)$/s.exec(tok);
    if (kv) {
      const [, k, v] = kv as unknown as [string, string, string];
      if (k === 'format') {
        setFormat(d, v);
        formatSet = true;
      } else if (k === 'access') {
        setAccess(d, v);
        accessSet = true;
      }
      else if (k === 'vdev') d.vdev = v.trim();
      else if (k === 'devtype') {
        if (v === 'cdrom') d.cdrom = true;
        else if (v === 'disk') d.cdrom = false;
        else throw new Error(`unknown devtype "${v}" (cdrom or disk)`);
      } else if (KEPT_KEYS.has(k)) d.options.push(`${k}=${v}`);
      else throw new Error(`unknown parameter "${k}"`);
      continue;
    }
    const flag = tok.trim();
    if (flag === 'cdrom') {
      d.cdrom = true;
      continue;
    }
    if (KEPT_FLAGS.has(flag)) {
      d.options.push(flag);
      continue;
    }
    if (tok.includes('=')) throw new Error(`bad parameter "${tok}"`);
    // positional
    if (!targetSet) {
      d.target = tok;
      targetSet = true;
    } else if (!d.deprecated && !formatSet) {
      if (d.target === '' && vdevAndDevtype(d, tok)) {
        d.format = 'empty';
        d.deprecated = false;
      } else setFormat(d, tok);
      formatSet = true;
    } else if (d.vdev === undefined) {
      if (!vdevAndDevtype(d, tok)) d.vdev = tok.trim();
    } else if (!accessSet) {
      setAccess(d, tok);
      accessSet = true;
    } else throw new Error(`too many positional parameters ("${tok}")`);
  }
  if (d.target === '') d.target = undefined;
  if (!d.vdev) throw new Error('no vdev (the guest device name, such as xvda or hdc)');
  if (d.access === undefined) d.access = d.cdrom ? 'ro' : 'rw';
  return d;
}

/** Writes a DISKSPEC in the documented key=value form, target last (it swallows the rest). */
export function formatDiskSpec(d: { target?: string; format?: string; vdev: string; access: 'ro' | 'rw'; cdrom: boolean; options?: readonly string[] }): string {
  const parts: string[] = [];
  if (d.target !== undefined && d.format) parts.push(`format=${d.format}`);
  parts.push(`vdev=${d.vdev}`, `access=${d.access}`);
  if (d.cdrom) parts.push('devtype=cdrom');
  parts.push(...(d.options ?? []));
  if (d.target !== undefined) parts.push(`target=${d.target}`);
  return parts.join(', ');
}
