/**
 * The kernel command line where the guest keeps it: the `linux` lines of GRUB 2's grub.cfg,
 * the `kernel` lines of GRUB legacy's menu.lst (which pygrub also reads) with its "# kopt="
 * template, and GRUB_CMDLINE_LINUX in /etc/default/grub, from which grub-mkconfig writes
 * grub.cfg the next time the guest runs update-grub.
 *
 * Two edits: root= and resume= name the device by UUID (as fstab, edit-fstab.ts), and
 * console= names the consoles of both hypervisors, the target's last, since the last
 * console= is the one /dev/console opens (Documentation/admin-guide/serial-console.rst):
 * kernel messages go to every console named, so the source's console keeps working.
 */
import { POSITIONAL_DEVICE, type LineChange, type StableName } from './edit-fstab.js';

export interface CmdlineEdit {
  stable: StableName;
  /** console= names the target needs, primary last */
  consoles: string[];
}

/** The console name of a console= value: "ttyS0" for "ttyS0,115200n8". */
function consoleName(value: string): string {
  return value.split(',')[0]!;
}

/** root= and resume= words made stable, every other word left where it is. */
function stableWords(args: string, stable: StableName): string {
  return args.replace(/(^|\s)(root|resume)=(\S+)/g, (all, sp: string, key: string, dev: string) => {
    const to = POSITIONAL_DEVICE.test(dev) ? stable(dev) : null;
    return to ? `${sp}${key}=${to}` : all;
  });
}

/**
 * Rewrites kernel arguments (whitespace-separated words; quoted words are kept as they are):
 * root=/resume= to stable names, then console= so that the target's consoles come last in
 * its order, the others staying before them in theirs.
 */
export function rewriteCmdline(args: string, edit: CmdlineEdit): string {
  const words = args.split(/\s+/).filter(Boolean);
  const out: string[] = [];
  const consoles: string[] = [];
  for (const w of words) {
    const m = /^(root|resume)=(.*)$/.exec(w);
    if (m && POSITIONAL_DEVICE.test(m[2]!)) {
      out.push(`${m[1]}=${edit.stable(m[2]!) ?? m[2]}`);
      continue;
    }
    if (w.startsWith('console=')) {
      consoles.push(w.slice('console='.length));
      continue;
    }
    out.push(w);
  }
  const wanted = new Set(edit.consoles);
  // the target's own entries keep their options (ttyS0,115200n8) when the guest had them
  const kept = consoles.filter((c) => !wanted.has(consoleName(c)));
  const targetEntries = edit.consoles.map((name) => consoles.find((c) => consoleName(c) === name) ?? name);
  const result = [...out, ...[...kept, ...targetEntries].map((c) => `console=${c}`)].join(' ');
  // the same words: the line stays as it was, spacing included
  return result === words.join(' ') ? args : result;
}

/**
 * grub.cfg (GRUB 2) and menu.lst (GRUB legacy): the arguments of every `linux`, `linux16`,
 * `linuxefi` and `kernel` line, and menu.lst's "# kopt=" template line.
 */
export function rewriteGrubConfig(text: string, edit: CmdlineEdit): { text: string; changes: LineChange[] } {
  const changes: LineChange[] = [];
  const lines = text.split('\n').map((line, i) => {
    let m = /^(\s*(?:linux|linux16|linuxefi|kernel)\s+)(\S+)(\s*)(.*?)(\s*)$/.exec(line);
    let next: string | null = null;
    if (m) {
      const args = rewriteCmdline(m[4]!, edit);
      next = `${m[1]}${m[2]}${args ? ' ' + args : ''}${m[5]}`;
      if (!m[4] && !args) next = line;
    } else if ((m = /^(#\s*kopt=)(.*?)(\s*)$/.exec(line))) {
      next = `${m[1]}${rewriteCmdline(m[2]!, edit)}${m[3]}`;
    }
    if (next === null || next === line) return line;
    changes.push({ line: i + 1, from: line.trim(), to: next.trim() });
    return next;
  });
  return { text: lines.join('\n'), changes };
}

/**
 * /etc/default/grub: consoles go into GRUB_CMDLINE_LINUX (used for every entry, recovery
 * ones included); a root= or resume= someone put there by hand is made stable too. A file
 * without the variable gets it appended.
 */
export function rewriteDefaultGrub(text: string, edit: CmdlineEdit): { text: string; changes: LineChange[] } {
  const changes: LineChange[] = [];
  let found = false;
  const lines = text.split('\n').map((line, i) => {
    const m = /^(\s*(?:export\s+)?GRUB_CMDLINE_LINUX(_DEFAULT)?=)(?:"([^"]*)"|'([^']*)'|(\S*))(.*)$/.exec(line);
    if (!m) return line;
    const isDefault = m[2] !== undefined;
    if (!isDefault) found = true;
    const quote = m[3] !== undefined ? '"' : m[4] !== undefined ? "'" : '"';
    const value = m[3] ?? m[4] ?? m[5] ?? '';
    // consoles only in GRUB_CMDLINE_LINUX (used by every entry, recovery ones included);
    // in _DEFAULT only root= and resume=, word for word
    const merged = isDefault ? stableWords(value, edit.stable) : rewriteCmdline(value, edit);
    if (merged === value) return line;
    const next = `${m[1]}${quote}${merged}${quote}${m[6]}`;
    changes.push({ line: i + 1, from: line.trim(), to: next.trim() });
    return next;
  });
  let out = lines.join('\n');
  if (!found && edit.consoles.length) {
    const add = `GRUB_CMDLINE_LINUX="${edit.consoles.map((c) => `console=${c}`).join(' ')}"`;
    out = out.length && !out.endsWith('\n') ? `${out}\n${add}\n` : `${out}${add}\n`;
    changes.push({ line: lines.length, from: '', to: add });
  }
  return { text: out, changes };
}
