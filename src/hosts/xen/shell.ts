/**
 * Quoting for the remote shell. ssh sends the command as ONE string that the remote user's
 * login shell parses (sshd runs `$SHELL -c "<string>"`), so every argument must be quoted for
 * a POSIX shell, whatever it contains: quotes, $( ), backquotes, spaces, newlines, globs.
 *
 * Single quotes are the one POSIX quoting with no special characters inside (XCU 2.2.2,
 * "Single-Quotes"): everything up to the next ' is literal, newlines included. A ' itself is
 * written by closing the quote, adding an escaped \' and reopening: it's → 'it'\''s'.
 * The login shell must be a POSIX shell (sh, dash, bash, ksh, zsh); csh and fish parse
 * differently and are not supported.
 */
import { PolyvisorError } from '../../errors.js';

/** Characters that never mean anything to a POSIX shell, whatever their position in a word. */
const PLAIN = /^[A-Za-z0-9_/.,:@+-]+$/;

/** One argument, quoted so that the remote shell passes it through byte for byte. */
export function shellQuote(arg: string): string {
  // a C string (argv) cannot hold a NUL: refuse rather than let it be cut short silently
  if (arg.includes('\0')) throw new PolyvisorError('ERR_USAGE', `an argument for the remote shell contains a NUL byte: ${JSON.stringify(arg.slice(0, 64))}`);
  if (PLAIN.test(arg)) return arg;
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** A whole command line for the remote shell: each argument quoted, joined by spaces. */
export function shellCommand(argv: readonly string[]): string {
  if (argv.length === 0) throw new PolyvisorError('ERR_INTERNAL', 'an empty remote command');
  return argv.map(shellQuote).join(' ');
}

/**
 * A POSIX sh script run with positional parameters: `sh -c SCRIPT sh ARG1 ARG2...`. The script
 * is a constant of this program and reads its inputs as "$1", "$2"..., so that no input is ever
 * pasted into shell code.
 */
export function shellScript(script: string, args: readonly string[]): string[] {
  return ['sh', '-c', script, 'sh', ...args];
}
