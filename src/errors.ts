/**
 * One error class for the whole library. Every failure a user can meet carries a
 * stable `code` (scripts and the CLI's exit status depend on it, so codes are never
 * renamed) and a message that names the file, the structure and the offset or field.
 *
 * The table below is the single source of truth: the CLI maps codes to exit statuses
 * from it (1 for a failure, 2 for a wrong command line, 130 when cancelled; `disk compare`
 * and `disk check` keep qemu-img's own statuses), the docs list it, and test/errors.test.ts keeps the three in step.
 */

export const ERROR_CODES = {
  ERR_USAGE: { exit: 2, summary: 'the command line is wrong (unknown option, missing argument, bad value)' },
  ERR_INVALID_OPTION: { exit: 2, summary: 'a -o key=value option is unknown or has a bad value for this format' },
  ERR_NOT_FOUND: { exit: 1, summary: 'a file the user named (or an image references) does not exist' },
  ERR_EXISTS: { exit: 1, summary: 'the destination exists and --force was not given' },
  ERR_FORMAT_UNKNOWN: { exit: 1, summary: 'the format name is unknown, or probing found no format' },
  ERR_TRUNCATED: { exit: 1, summary: 'a structure extends past the end of the file' },
  ERR_CORRUPT: { exit: 1, summary: 'a structure holds an invalid value (bad magic, field out of range, overlapping tables)' },
  ERR_CHECKSUM: { exit: 1, summary: 'a structure fails its checksum' },
  ERR_UNSUPPORTED: { exit: 1, summary: 'the image uses a feature Polyvisor does not implement; no data was guessed' },
  ERR_CHAIN_DEPTH: { exit: 1, summary: 'a backing chain is deeper than the limit' },
  ERR_CHAIN_CYCLE: { exit: 1, summary: 'a backing chain refers back to one of its own members' },
  ERR_CHAIN_MISMATCH: { exit: 1, summary: 'a backing file is not the parent its child records (identifier or size differ)' },
  ERR_PATH_OUTSIDE: { exit: 1, summary: "an image refers to a file outside its own folder and the user did not allow it" },
  ERR_READ_ONLY: { exit: 1, summary: 'a write was attempted on an image opened read-only' },
  ERR_RANGE: { exit: 1, summary: 'a read or write lies outside the virtual disk' },
  ERR_IO: { exit: 1, summary: 'the operating system reported an I/O error' },
  ERR_HOST: { exit: 1, summary: "a hypervisor host refused a command; the message quotes the host's own words and the command" },
  ERR_VM_STATE: { exit: 1, summary: 'the VM is not in a state that allows the operation (starting a running VM, removing one that runs)' },
  ERR_ABORTED: { exit: 130, summary: 'the operation was cancelled' },
  ERR_INTERNAL: { exit: 70, summary: 'a bug in Polyvisor: please report it with the command line' },
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface ErrorContext {
  /** The file the error is about, as the user (or the referring image) named it. */
  file?: string;
  /** The on-disk structure, in the spec's words: "L2 table", "dynamic disk header", "BAT entry 7". */
  structure?: string;
  /** Byte offset of the structure in the file. */
  offset?: number;
  /** Anything below this error that explains it. */
  cause?: unknown;
}

export class PolyvisorError extends Error {
  readonly code: ErrorCode;
  readonly file?: string;
  readonly structure?: string;
  readonly offset?: number;

  constructor(code: ErrorCode, detail: string, ctx: ErrorContext = {}) {
    super(formatMessage(detail, ctx), ctx.cause === undefined ? undefined : { cause: ctx.cause });
    this.name = 'PolyvisorError';
    this.code = code;
    this.file = ctx.file;
    this.structure = ctx.structure;
    this.offset = ctx.offset;
  }

  toJSON(): Record<string, unknown> {
    return { code: this.code, message: this.message, file: this.file, structure: this.structure, offset: this.offset };
  }
}

export function hex(n: number | bigint): string {
  return '0x' + n.toString(16);
}

function formatMessage(detail: string, ctx: ErrorContext): string {
  // "disk.vhd: BAT entry 7 at 0x600: points past end of file"
  let where = '';
  if (ctx.structure) where += ctx.structure;
  if (ctx.offset !== undefined) where += (where ? ' at ' : 'at ') + hex(ctx.offset);
  const parts = [ctx.file, where, detail].filter((p) => p !== undefined && p !== '');
  return parts.join(': ');
}

export function isPolyvisorError(e: unknown, code?: ErrorCode): e is PolyvisorError {
  return e instanceof PolyvisorError && (code === undefined || e.code === code);
}

/**
 * Wraps an operating-system error (ENOENT, EACCES, EIO...) into a PolyvisorError that
 * names the file; PolyvisorErrors pass through unchanged.
 */
export function fromSystemError(e: unknown, file: string, action: string): PolyvisorError {
  if (e instanceof PolyvisorError) return e;
  const err = e as NodeJS.ErrnoException;
  if (err && err.code === 'ENOENT') return new PolyvisorError('ERR_NOT_FOUND', `${action}: no such file`, { file, cause: e });
  if (err && err.code === 'EEXIST') return new PolyvisorError('ERR_EXISTS', `${action}: file exists`, { file, cause: e });
  if (err && err.code === 'ABORT_ERR') return new PolyvisorError('ERR_ABORTED', `${action}: cancelled`, { file, cause: e });
  const msg = err && err.message ? err.message : String(e);
  return new PolyvisorError('ERR_IO', `${action}: ${msg}`, { file, cause: e });
}
