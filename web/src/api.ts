/**
 * The console's client of the REST API (the server's OpenAPI document, /api/openapi.json, is
 * the reference for every shape here). The token is the user's API token, kept in
 * sessionStorage: it lasts as long as the tab, and other sites cannot read it.
 *
 * Job events are server-sent events (HTML Living Standard §9.2), read with fetch rather than
 * EventSource, which cannot send the Authorization header.
 */
import type { Job, JobEventHandlers } from './types';

const TOKEN_KEY = 'polyvisor.token';

export function storedToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function storeToken(token: string | null): void {
  if (token === null) sessionStorage.removeItem(TOKEN_KEY);
  else sessionStorage.setItem(TOKEN_KEY, token);
}

/** A failed request: the API's stable error code and its message. */
export class ApiError extends Error {
  readonly code: string;
  readonly status: number;
  readonly field?: string;
  constructor(status: number, code: string, message: string, field?: string) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

/** Listeners told when the token is refused (the app shows the login page again). */
const unauthorized = new Set<() => void>();
export function onUnauthorized(fn: () => void): () => void {
  unauthorized.add(fn);
  return () => unauthorized.delete(fn);
}

async function failure(res: Response): Promise<ApiError> {
  let body: { error?: { code?: string; message?: string; field?: string } } | undefined;
  try {
    body = await res.json();
  } catch {
    body = undefined;
  }
  const e = new ApiError(res.status, body?.error?.code ?? `HTTP_${res.status}`, body?.error?.message ?? res.statusText, body?.error?.field);
  if (res.status === 401) for (const fn of unauthorized) fn();
  return e;
}

function headers(token: string | null, extra: Record<string, string> = {}): Record<string, string> {
  return token ? { authorization: `Bearer ${token}`, ...extra } : extra;
}

/** A JSON request; resolves with the parsed body (undefined for 204). */
export async function api<T>(method: string, path: string, body?: unknown, opts: { token?: string | null; signal?: AbortSignal } = {}): Promise<T> {
  const token = opts.token === undefined ? storedToken() : opts.token;
  const res = await fetch(path, {
    method,
    headers: headers(token, body === undefined ? {} : { 'content-type': 'application/json' }),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: opts.signal,
  });
  if (!res.ok) throw await failure(res);
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

/** A path segment or a library path, escaped for a URL (slashes kept between segments). */
export function libraryUrl(path: string): string {
  return path.split('/').map(encodeURIComponent).join('/');
}

/**
 * Uploads a file into the library with progress (fetch reports no upload progress; XHR does).
 * Resolves with the server's record of the file.
 */
export function upload(
  file: Blob,
  libraryPath: string,
  opts: { overwrite?: boolean; onProgress?: (done: number, total: number) => void; signal?: AbortSignal } = {},
): Promise<{ path: string; size: number; sha256: string }> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('PUT', `/api/library/files/${libraryUrl(libraryPath)}${opts.overwrite ? '?overwrite=true' : ''}`);
    const token = storedToken();
    if (token) xhr.setRequestHeader('authorization', `Bearer ${token}`);
    xhr.setRequestHeader('content-type', 'application/octet-stream');
    xhr.upload.onprogress = (e) => opts.onProgress?.(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onload = () => {
      let body: any;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = undefined;
      }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      if (xhr.status === 401) for (const fn of unauthorized) fn();
      reject(new ApiError(xhr.status, body?.error?.code ?? `HTTP_${xhr.status}`, body?.error?.message ?? xhr.statusText));
    };
    xhr.onerror = () => reject(new ApiError(0, 'ERR_NETWORK', 'the upload was cut off (network error)'));
    xhr.onabort = () => reject(new ApiError(0, 'ERR_ABORTED', 'the upload was cancelled'));
    opts.signal?.addEventListener('abort', () => xhr.abort(), { once: true });
    xhr.send(file);
  });
}

/**
 * Follows a job's events until it ends or `signal` aborts. Reconnects (with Last-Event-ID, so
 * no log line comes twice) when the stream breaks before the job has ended. Resolves with the
 * job as it ended.
 */
export async function followJob(id: string, on: JobEventHandlers, signal: AbortSignal): Promise<Job | undefined> {
  let lastId = '';
  let last: Job | undefined;
  for (let attempt = 0; attempt < 50 && !signal.aborted; attempt++) {
    try {
      const res = await fetch(`/api/jobs/${encodeURIComponent(id)}/events`, {
        headers: headers(storedToken(), { accept: 'text/event-stream', ...(lastId ? { 'last-event-id': lastId } : {}) }),
        signal,
      });
      if (!res.ok || !res.body) throw await failure(res);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut: number;
        // events end with a blank line
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let event = 'message';
          let data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) event = line.slice(6).trim();
            else if (line.startsWith('data:')) data += line.slice(5).trimStart();
            else if (line.startsWith('id:')) lastId = line.slice(3).trim();
          }
          if (!data) continue;
          const payload = JSON.parse(data);
          if (event === 'state') {
            last = payload as Job;
            on.state?.(last);
          } else if (event === 'progress') on.progress?.(payload.done, payload.total);
          else if (event === 'log') on.log?.(payload);
        }
      }
      if (last && ['succeeded', 'failed', 'cancelled'].includes(last.state)) return last;
    } catch (e) {
      if (signal.aborted) return last;
      if (e instanceof ApiError && e.status >= 400 && e.status < 500) throw e;
    }
    await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** attempt)));
  }
  return last;
}

/** The WebSocket URL of a VM's console (vnc or serial), opened with a fresh console token. */
export async function consoleUrl(vm: string, kind: 'vnc' | 'serial'): Promise<string> {
  const t = await api<{ token: string }>('POST', `/api/vms/${encodeURIComponent(vm)}/console-token`);
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/api/vms/${encodeURIComponent(vm)}/console/${kind}?token=${encodeURIComponent(t.token)}`;
}
