/**
 * How the server answers a failure: one table from error codes to HTTP statuses, and the one
 * error body every route returns, `{ error: { code, message, field? } }`, so a client reads the
 * same stable codes the CLI turns into exit statuses (../errors.ts).
 *
 * The three codes only a server meets (no token, a role too low, an upload too large) live
 * here until they join ../errors.ts's table.
 */
import { ERROR_CODES, PolyvisorError, type ErrorCode } from '../errors.js';

export const SERVER_ERROR_CODES = {
  ERR_AUTH: { status: 401, summary: 'the request carries no token, or one the server does not know' },
  ERR_FORBIDDEN: { status: 403, summary: "the user's role does not allow the operation" },
  ERR_TOO_LARGE: { status: 413, summary: 'an upload or request body is larger than the server accepts' },
} as const;
export type ServerErrorCode = keyof typeof SERVER_ERROR_CODES;

/** RFC 9110 §15: the status whose meaning fits each library error code. */
export const HTTP_STATUS: Record<ErrorCode, number> = {
  ERR_USAGE: 400,
  ERR_INVALID_OPTION: 400,
  ERR_NOT_FOUND: 404,
  ERR_EXISTS: 409,
  ERR_VM_STATE: 409,
  ERR_READ_ONLY: 409,
  ERR_ABORTED: 409,
  // the request was well-formed but names content Polyvisor cannot take (§15.5.21)
  ERR_FORMAT_UNKNOWN: 422,
  ERR_TRUNCATED: 422,
  ERR_CORRUPT: 422,
  ERR_CHECKSUM: 422,
  ERR_UNSUPPORTED: 422,
  ERR_CHAIN_DEPTH: 422,
  ERR_CHAIN_CYCLE: 422,
  ERR_CHAIN_MISMATCH: 422,
  ERR_PATH_OUTSIDE: 422,
  ERR_RANGE: 422,
  // a hypervisor host behind the server failed (§15.6.3)
  ERR_HOST: 502,
  ERR_IO: 500,
  ERR_INTERNAL: 500,
};

export type ApiErrorCode = ErrorCode | ServerErrorCode;

/** A failure that only exists at the HTTP layer. */
export class ServerError extends Error {
  readonly code: ServerErrorCode;
  readonly statusCode: number;
  constructor(code: ServerErrorCode, message: string) {
    super(message);
    this.name = 'ServerError';
    this.code = code;
    this.statusCode = SERVER_ERROR_CODES[code].status;
  }
}

/** A request part that failed its schema: `field` names it as `body.cpu.count`. */
export class ValidationError extends Error {
  readonly statusCode = 400;
  readonly field: string;
  constructor(field: string, message: string) {
    super(`${field}: ${message}`);
    this.name = 'ValidationError';
    this.field = field;
  }
}

export interface ErrorBody {
  error: { code: ApiErrorCode; message: string; field?: string };
}

/** The status and body for anything a handler threw. `internal` is true for a bug (logged). */
export function errorReply(e: unknown): { status: number; body: ErrorBody; internal: boolean } {
  if (e instanceof PolyvisorError) return { status: HTTP_STATUS[e.code] ?? 500, body: { error: { code: e.code, message: e.message } }, internal: e.code === 'ERR_INTERNAL' };
  if (e instanceof ServerError) return { status: e.statusCode, body: { error: { code: e.code, message: e.message } }, internal: false };
  if (e instanceof ValidationError) return { status: 400, body: { error: { code: 'ERR_USAGE', message: e.message, field: e.field } }, internal: false };
  const fe = e as { code?: string; statusCode?: number; message?: string; validationContext?: string };
  // Fastify's own refusals of a request (unparsable JSON, wrong content type, body too large)
  if (fe?.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return { status: 413, body: { error: { code: 'ERR_TOO_LARGE', message: fe.message ?? 'request body too large' } }, internal: false };
  if (typeof fe?.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    const status = fe.statusCode === 415 ? 415 : 400;
    const code: ApiErrorCode = fe.statusCode === 404 ? 'ERR_NOT_FOUND' : 'ERR_USAGE';
    return { status: fe.statusCode === 404 ? 404 : status, body: { error: { code, message: fe.message ?? 'bad request' } }, internal: false };
  }
  return { status: 500, body: { error: { code: 'ERR_INTERNAL', message: `internal error: ${(e as Error)?.message ?? String(e)}` } }, internal: true };
}

export { ERROR_CODES };
