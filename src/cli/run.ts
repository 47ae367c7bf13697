/** Shared plumbing for CLI actions: output, cancellation on Ctrl-C, error reporting. */
import { ERROR_CODES, PolyvisorError } from '../errors.js';

/** Writes a line (or raw text) to standard output. */
export function out(text: string, newline = true): void {
  process.stdout.write(newline ? text + '\n' : text);
}

/**
 * Runs `fn` with an AbortSignal that fires on SIGINT/SIGTERM, so that long work stops
 * cleanly (temporary files removed, no half-written destination) instead of dying mid-write.
 */
export async function withSignal<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  const onSig = () => ac.abort();
  process.once('SIGINT', onSig);
  process.once('SIGTERM', onSig);
  try {
    return await fn(ac.signal);
  } finally {
    process.off('SIGINT', onSig);
    process.off('SIGTERM', onSig);
  }
}

/**
 * Prints an error and sets the exit status. PolyvisorErrors print their message and code;
 * anything else is a bug, printed with its stack. Commands that keep qemu-img's statuses
 * (compare: 2, check: 1) set process.exitCode before they start and it is kept.
 */
export function reportError(e: unknown, json: boolean): void {
  if (e instanceof PolyvisorError) {
    if (json) process.stdout.write(JSON.stringify({ error: e.toJSON() }, null, 2) + '\n');
    process.stderr.write(`polyvisor: ${e.message} [${e.code}]\n`);
    if (!process.exitCode) process.exitCode = ERROR_CODES[e.code].exit;
    return;
  }
  process.stderr.write(`polyvisor: internal error: ${(e as Error)?.stack ?? String(e)}\n`);
  process.exitCode = ERROR_CODES.ERR_INTERNAL.exit;
}
