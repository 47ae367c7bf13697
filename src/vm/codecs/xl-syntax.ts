/**
 * The xl domain configuration file syntax (xl.cfg(5) "SYNTAX"), and the older xm/xend files
 * it grew out of, which were Python.
 *
 * xl's grammar (tools/libs/util/libxlu_cfg_y.y, libxlu_cfg_l.l): a file is a series of
 * `KEY = VALUE` or `KEY += VALUE` settings separated by newlines or `;`; a VALUE is a quoted
 * string ('...' or "..." with C-like backslash escapes), a NUMBER (decimal, 0-prefixed octal,
 * 0x hex), or a `[ ... ]` list of values, which may span lines and end in a trailing comma.
 * `#` starts a comment to the end of the line.
 *
 * xm files were executed by Python, so real ones also carry `True`/`False`, tuples `( ... )`,
 * negative numbers, adjacent string literals, triple-quoted strings and backslash line
 * continuations; those are read here too. Python *code* (imports, `if`, expressions such as
 * `'/usr/' + arch_libdir`) cannot be read without running it: it is refused, as xl refuses it.
 *
 * Every value remembers the source text it was written as, so that keys the codec does not
 * model are written back verbatim.
 */
import { PolyvisorError } from '../../errors.js';

/** xl.cfg files are a few KiB; anything past this is not a domain configuration. */
export const MAX_XL_BYTES = 1 << 20;
/** lists nest (xl allows it); a depth beyond this is hostile, not a configuration */
const MAX_DEPTH = 16;

export type XlValue =
  | { kind: 'string'; value: string; line: number }
  | { kind: 'number'; value: number; text: string; line: number }
  | { kind: 'list'; items: XlValue[]; line: number };

export interface XlEntry {
  key: string;
  op: '=' | '+=';
  value: XlValue;
  /** line (1-based) of the key */
  line: number;
  /** the value's source text, verbatim */
  raw: string;
}

export interface XlConfig {
  entries: XlEntry[];
  /** true when xm-only (Python) syntax was met: True/False, tuples, negative numbers... */
  xm: boolean;
}

type Tok =
  | { t: 'ident'; v: string; line: number; start: number; end: number }
  | { t: 'string'; v: string; line: number; start: number; end: number }
  | { t: 'number'; v: string; line: number; start: number; end: number }
  | { t: 'punct'; v: '[' | ']' | '(' | ')' | ',' | '=' | '+=' | ';'; line: number; start: number; end: number }
  | { t: 'nl'; line: number; start: number; end: number }
  | { t: 'eof'; line: number; start: number; end: number };

/** Python statements met in xmexample files; reading them would mean running them. */
const PYTHON_KEYWORDS = new Set(['import', 'from', 'if', 'elif', 'else', 'def', 'for', 'while', 'print', 'try', 'except', 'return', 'class', 'with', 'global', 'lambda']);

function corrupt(file: string, line: number, detail: string): PolyvisorError {
  return new PolyvisorError('ERR_CORRUPT', detail, { file, structure: `line ${line}` });
}

function python(file: string, line: number, detail: string): PolyvisorError {
  return new PolyvisorError('ERR_UNSUPPORTED', `${detail}: this is xm-era Python code, which is only read by running it (xl refuses it too); replace it with plain KEY = VALUE settings`, {
    file,
    structure: `line ${line}`,
  });
}

class Lexer {
  #pos = 0;
  #line = 1;
  #depth = 0;
  #openLines: number[] = [];
  /** xm (Python) constructs met so far */
  xmCount = 0;
  get xm(): boolean {
    return this.xmCount > 0;
  }
  markXm(): void {
    this.xmCount++;
  }
  constructor(
    readonly text: string,
    readonly file: string,
  ) {}

  next(): Tok {
    const s = this.text;
    for (;;) {
      const c = s[this.#pos];
      if (c === undefined) {
        if (this.#depth > 0) throw corrupt(this.file, this.#openLines[this.#openLines.length - 1]!, 'unterminated list: no closing bracket before the end of the file');
        return { t: 'eof', line: this.#line, start: this.#pos, end: this.#pos };
      }
      if (c === ' ' || c === '\t' || c === '\r' || c === '\f') {
        this.#pos++;
        continue;
      }
      if (c === '#') {
        while (this.#pos < s.length && s[this.#pos] !== '\n') this.#pos++;
        continue;
      }
      if (c === '\\' && (s[this.#pos + 1] === '\n' || (s[this.#pos + 1] === '\r' && s[this.#pos + 2] === '\n'))) {
        // Python's explicit line joining
        this.markXm();
        this.#pos += s[this.#pos + 1] === '\n' ? 2 : 3;
        this.#line++;
        continue;
      }
      if (c === '\n') {
        const start = this.#pos++;
        const line = this.#line++;
        if (this.#depth > 0) continue; // inside [ ] newlines separate nothing
        return { t: 'nl', line, start, end: start };
      }
      const start = this.#pos;
      const line = this.#line;
      if (c === '"' || c === "'") return this.#string(c, start, line);
      if (/[A-Za-z_]/.test(c)) {
        let e = start + 1;
        while (e < s.length && /[A-Za-z0-9_.]/.test(s[e]!)) e++;
        // Python string prefixes: r'..', u'..'
        if ((s[e] === '"' || s[e] === "'") && /^[rRuU]$/.test(s.slice(start, e))) {
          this.markXm();
          this.#pos = e;
          const tok = this.#string(s[e] as '"' | "'", e, line, /^[rR]$/.test(s.slice(start, e)));
          return { ...tok, start };
        }
        this.#pos = e;
        return { t: 'ident', v: s.slice(start, e), line, start, end: e };
      }
      if (/[0-9]/.test(c) || (c === '-' && /[0-9]/.test(s[start + 1] ?? ''))) {
        let e = start + 1;
        while (e < s.length && /[0-9A-Za-z.]/.test(s[e]!)) e++;
        if (c === '-') this.markXm();
        this.#pos = e;
        return { t: 'number', v: s.slice(start, e), line, start, end: e };
      }
      if (c === '+' && s[start + 1] === '=') {
        this.#pos += 2;
        return { t: 'punct', v: '+=', line, start, end: this.#pos };
      }
      if (c === '[' || c === '(') {
        if (this.#depth >= MAX_DEPTH) throw corrupt(this.file, line, `lists nested deeper than ${MAX_DEPTH}`);
        this.#depth++;
        this.#openLines.push(line);
        this.#pos++;
        return { t: 'punct', v: c, line, start, end: this.#pos };
      }
      if (c === ']' || c === ')') {
        if (this.#depth === 0) throw corrupt(this.file, line, `"${c}" with no list open`);
        this.#depth--;
        this.#openLines.pop();
        this.#pos++;
        return { t: 'punct', v: c, line, start, end: this.#pos };
      }
      if (c === ',' || c === '=' || c === ';') {
        this.#pos++;
        return { t: 'punct', v: c, line, start, end: this.#pos };
      }
      if ('+-*/%.:{}<>!&|'.includes(c)) throw python(this.file, line, `operator "${c}"`);
      const shown = c.charCodeAt(0) < 32 || c.charCodeAt(0) === 127 ? `byte 0x${c.charCodeAt(0).toString(16).padStart(2, '0')}` : `"${c}"`;
      throw corrupt(this.file, line, `unexpected character ${shown}`);
    }
  }

  #string(q: '"' | "'", start: number, line: number, rawPrefix = false): Tok {
    const s = this.text;
    const triple = s.startsWith(q + q + q, start);
    if (triple) this.markXm();
    let i = start + (triple ? 3 : 1);
    let out = '';
    for (;;) {
      const c = s[i];
      if (c === undefined) throw corrupt(this.file, line, `unterminated string: no closing ${q}`);
      if (triple ? s.startsWith(q + q + q, i) : c === q) {
        this.#pos = i + (triple ? 3 : 1);
        return { t: 'string', v: out, line, start, end: this.#pos };
      }
      if (c === '\n') {
        if (!triple) throw corrupt(this.file, line, `unterminated string: no closing ${q} before the end of the line`);
        this.#line++;
        out += c;
        i++;
        continue;
      }
      if (c === '\\' && !rawPrefix) {
        const n = s[i + 1];
        if (n === undefined) throw corrupt(this.file, line, `unterminated string: no closing ${q}`);
        const simple: Record<string, string> = { '"': '"', "'": "'", '\\': '\\', a: '\x07', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v' };
        if (n in simple) {
          out += simple[n];
          i += 2;
          continue;
        }
        if (n === 'x') {
          const m = /^[0-9a-fA-F]{1,2}/.exec(s.slice(i + 2, i + 4));
          if (!m) throw corrupt(this.file, line, 'invalid \\x escape in a quoted string');
          out += String.fromCharCode(parseInt(m[0], 16));
          i += 2 + m[0].length;
          continue;
        }
        if (/[0-7]/.test(n)) {
          const m = /^[0-7]{1,3}/.exec(s.slice(i + 1, i + 4))!;
          out += String.fromCharCode(parseInt(m[0], 8));
          i += 1 + m[0].length;
          continue;
        }
        if (n === '\n') {
          this.#line++;
          i += 2;
          continue;
        }
        throw corrupt(this.file, line, `invalid escape "\\${n}" in a quoted string`);
      }
      out += c;
      i++;
    }
  }
}

/** Parses an xl NUMBER as strtoul(…, 0) does: decimal, 0-prefixed octal, 0x hex. */
export function parseXlNumber(text: string): number | undefined {
  const neg = text.startsWith('-');
  const t = neg ? text.slice(1) : text;
  let v: number;
  if (/^0[xX][0-9a-fA-F]+$/.test(t)) v = parseInt(t.slice(2), 16);
  else if (/^0[0-7]*$/.test(t)) v = t.length > 1 ? parseInt(t.slice(1), 8) : 0;
  else if (/^[1-9][0-9]*$/.test(t)) v = Number(t);
  else return undefined;
  if (!Number.isSafeInteger(v)) return undefined;
  return neg ? -v : v;
}

class Parser {
  #tok: Tok;
  constructor(
    readonly lx: Lexer,
    readonly file: string,
  ) {
    this.#tok = lx.next();
  }

  #advance(): Tok {
    const t = this.#tok;
    this.#tok = this.lx.next();
    return t;
  }

  #describe(t: Tok): string {
    switch (t.t) {
      case 'eof':
        return 'the end of the file';
      case 'nl':
        return 'the end of the line';
      case 'string':
        return 'a string';
      default:
        return `"${t.v}"`;
    }
  }

  parse(): XlEntry[] {
    const entries: XlEntry[] = [];
    for (;;) {
      const t = this.#tok;
      if (t.t === 'eof') return entries;
      if (t.t === 'nl' || (t.t === 'punct' && t.v === ';')) {
        this.#advance();
        continue;
      }
      if (t.t !== 'ident') throw corrupt(this.file, t.line, `expected a setting name, found ${this.#describe(t)}`);
      if (PYTHON_KEYWORDS.has(t.v)) throw python(this.file, t.line, `"${t.v}" statement`);
      this.#advance();
      const op = this.#tok;
      if (op.t !== 'punct' || (op.v !== '=' && op.v !== '+=')) {
        if (op.t === 'punct' && op.v === '(') throw python(this.file, t.line, `call of ${t.v}()`);
        throw corrupt(this.file, t.line, `expected "=" after "${t.v}", found ${this.#describe(op)}`);
      }
      this.#advance();
      const startTok = this.#tok;
      const xmBefore = this.lx.xmCount;
      const value = this.#value(0);
      const xmValue = this.lx.xmCount !== xmBefore;
      const endPos = this.#lastEnd;
      const after = this.#tok;
      if (!(after.t === 'nl' || after.t === 'eof' || (after.t === 'punct' && after.v === ';'))) {
        if (after.t === 'ident' || after.t === 'punct') throw python(this.file, after.line, `expression after the value of "${t.v}"`);
        throw corrupt(this.file, after.line, `expected the end of the line after the value of "${t.v}", found ${this.#describe(after)}`);
      }
      if (value === null) continue; // xm's None: the key is not set
      if (!/^[a-z][._0-9a-z]*$/.test(t.v) && !/^[A-Za-z_][A-Za-z0-9_]*$/.test(t.v)) throw corrupt(this.file, t.line, `bad setting name "${t.v}"`);
      // a value written with Python-only syntax is kept in xl's own form, which xl can read
      entries.push({ key: t.v, op: op.v, value, line: t.line, raw: xmValue ? formatXlValue(value) : this.lx.text.slice(startTok.start, endPos) });
    }
  }

  #lastEnd = 0;

  /** null for xm's None */
  #value(depth: number): XlValue | null {
    const t = this.#advance();
    this.#lastEnd = t.end;
    if (t.t === 'string') {
      let v = t.v;
      // Python joins adjacent string literals
      while (this.#tok.t === 'string') {
        this.lx.markXm();
        const n = this.#advance();
        v += (n as { v: string }).v;
        this.#lastEnd = n.end;
      }
      return { kind: 'string', value: v, line: t.line };
    }
    if (t.t === 'number') {
      const v = parseXlNumber(t.v);
      if (v === undefined) throw corrupt(this.file, t.line, `bad number "${t.v}"`);
      return { kind: 'number', value: v, text: t.v, line: t.line };
    }
    if (t.t === 'ident') {
      if (t.v === 'True' || t.v === 'False') {
        this.lx.markXm();
        return { kind: 'number', value: t.v === 'True' ? 1 : 0, text: t.v === 'True' ? '1' : '0', line: t.line };
      }
      if (t.v === 'None' && depth === 0) {
        this.lx.markXm();
        return null;
      }
      throw python(this.file, t.line, `name "${t.v}" used as a value`);
    }
    if (t.t === 'punct' && (t.v === '[' || t.v === '(')) {
      if (t.v === '(') this.lx.markXm();
      const close = t.v === '[' ? ']' : ')';
      const items: XlValue[] = [];
      for (;;) {
        const n = this.#tok;
        if (n.t === 'punct' && n.v === close) {
          this.#advance();
          this.#lastEnd = n.end;
          return { kind: 'list', items, line: t.line };
        }
        if (n.t === 'ident' && n.v !== 'True' && n.v !== 'False') {
          throw corrupt(this.file, t.line, `unterminated list: "${n.v}" on line ${n.line} comes before the closing "${close}"`);
        }
        const item = this.#value(depth + 1);
        if (item === null) throw python(this.file, t.line, 'None inside a list');
        items.push(item);
        const sep = this.#tok;
        if (sep.t === 'punct' && sep.v === ',') {
          this.#advance();
          continue;
        }
        if (sep.t === 'punct' && sep.v === close) continue;
        throw corrupt(this.file, sep.line, `expected "," or "${close}" in the list opened on line ${t.line}, found ${this.#describe(sep)}`);
      }
    }
    throw corrupt(this.file, t.line, `expected a value, found ${this.#describe(t)}`);
  }
}

/** Parses an xl.cfg (or xm) file. Errors name the line. */
export function parseXlConfig(text: string, file: string): XlConfig {
  if (text.length > MAX_XL_BYTES) throw new PolyvisorError('ERR_UNSUPPORTED', `xl configuration of ${text.length} bytes is over the ${MAX_XL_BYTES}-byte limit for a domain configuration`, { file });
  const nul = text.indexOf('\0');
  if (nul >= 0) throw corrupt(file, text.slice(0, nul).split('\n').length, 'NUL byte: this is not a text file');
  const lx = new Lexer(text, file);
  const entries = new Parser(lx, file).parse();
  return { entries, xm: lx.xm };
}

/** Quotes a string for an xl.cfg file, escaping what xl's dequoting reads back. */
export function quoteXl(s: string): string {
  const body = s.replace(/[\\"\n\r\t]/g, (c) => ({ '\\': '\\\\', '"': '\\"', '\n': '\\n', '\r': '\\r', '\t': '\\t' })[c]!);
  return `"${body}"`;
}

/** Single-quoted form, as xl.cfg(5) writes device spec strings. */
export function quoteXlSingle(s: string): string {
  const body = s.replace(/[\\'\n\r\t]/g, (c) => ({ '\\': '\\\\', "'": "\\'", '\n': '\\n', '\r': '\\r', '\t': '\\t' })[c]!);
  return `'${body}'`;
}

/** Writes a value in xl syntax. */
export function formatXlValue(v: XlValue): string {
  if (v.kind === 'string') return quoteXl(v.value);
  if (v.kind === 'number') return String(v.value);
  return `[ ${v.items.map(formatXlValue).join(', ')} ]`;
}
