/**
 * Jobs: every long operation (import, convert, export, move, verify) runs as a job, so a
 * request returns at once (202 with the job) and clients follow it: its state, progress
 * (bytes done of total), log lines, and its result or error. The job's record and log are in
 * the store, so they outlive the connection that started it; the live events go to
 * subscribers (the SSE stream, ./routes/jobs.ts).
 *
 * Cancellation is an AbortSignal handed to the operation, which stops cleanly (temporary
 * files removed) and fails with ERR_ABORTED; the job then ends `cancelled`. At most
 * `concurrency` jobs run at once (the machine's disks and CPUs, not the API, set the pace);
 * the others wait `queued`. A server that starts finds jobs a stopped server left queued or
 * running and marks them failed: nothing runs them any more.
 */
import { randomUUID } from 'node:crypto';
import { isPolyvisorError, PolyvisorError } from '../errors.js';
import type { JobLogLine, Store, StoredJob } from '../store/store.js';

export interface JobContext {
  signal: AbortSignal;
  progress(done: number, total: number): void;
  log(line: string): void;
}

export type JobEvent =
  | { type: 'state'; job: StoredJob }
  | { type: 'progress'; done: number; total: number }
  | { type: 'log'; line: JobLogLine };

type Listener = (e: JobEvent) => void;

interface Live {
  controller: AbortController;
  listeners: Set<Listener>;
  logSeq: number;
  lastSaved: number;
  run: () => Promise<void>;
  finished: Promise<void>;
}

/** Lines kept per job, and the length of one: a chatty operation cannot fill the store. */
export const MAX_LOG_LINES = 10_000;
const MAX_LINE = 4096;
/** Progress reaches the store at most this often (subscribers get every event). */
const SAVE_EVERY_MS = 1000;

export class Jobs {
  readonly #store: Store;
  readonly #live = new Map<string, Live>();
  readonly #queue: string[] = [];
  readonly #concurrency: number;
  #running = 0;
  #closed = false;

  constructor(store: Store, opts: { concurrency?: number } = {}) {
    this.#store = store;
    this.#concurrency = Math.max(1, opts.concurrency ?? 2);
    store.failOrphanJobs('the server stopped while this job was queued or running');
  }

  /** Creates a job and schedules `work`; returns its record at once. */
  start(kind: string, target: string, createdBy: string | undefined, work: (ctx: JobContext) => Promise<unknown>): StoredJob {
    if (this.#closed) throw new PolyvisorError('ERR_VM_STATE', 'the server is shutting down');
    const id = randomUUID();
    const job = this.#store.addJob({ id, kind, target, createdBy });
    const controller = new AbortController();
    let finish!: () => void;
    const live: Live = {
      controller,
      listeners: new Set(),
      logSeq: 0,
      lastSaved: 0,
      finished: new Promise<void>((r) => (finish = r)),
      run: async () => {
        try {
          await this.#run(id, live, work);
        } finally {
          finish();
        }
      },
    };
    this.#live.set(id, live);
    this.#queue.push(id);
    this.#pump();
    return job;
  }

  #pump(): void {
    while (this.#running < this.#concurrency && this.#queue.length) {
      const id = this.#queue.shift()!;
      const live = this.#live.get(id);
      if (!live) continue;
      this.#running++;
      void live.run().finally(() => {
        this.#running--;
        this.#live.delete(id);
        this.#pump();
      });
    }
  }

  async #run(id: string, live: Live, work: (ctx: JobContext) => Promise<unknown>): Promise<void> {
    const signal = live.controller.signal;
    const emit = (e: JobEvent) => {
      for (const l of live.listeners) l(e);
    };
    const setState = (change: Parameters<Store['updateJob']>[1]) => {
      this.#store.updateJob(id, change);
      emit({ type: 'state', job: this.#store.getJob(id) });
    };
    if (signal.aborted) {
      setState({ state: 'cancelled', endedAt: new Date().toISOString(), error: { code: 'ERR_ABORTED', message: 'cancelled before it started' } });
      return;
    }
    setState({ state: 'running', startedAt: new Date().toISOString() });
    let done = 0;
    let total = 0;
    const ctx: JobContext = {
      signal,
      progress: (d, t) => {
        done = Math.max(0, d);
        total = Math.max(0, t);
        emit({ type: 'progress', done, total });
        const now = Date.now();
        if (now - live.lastSaved >= SAVE_EVERY_MS) {
          live.lastSaved = now;
          this.#store.updateJob(id, { done, total });
        }
      },
      log: (text) => {
        for (const raw of text.split('\n')) {
          if (live.logSeq >= MAX_LOG_LINES) return;
          const seq = ++live.logSeq;
          const line = seq === MAX_LOG_LINES ? `(log cut at ${MAX_LOG_LINES} lines)` : raw.slice(0, MAX_LINE);
          this.#store.addJobLog(id, seq, line);
          emit({ type: 'log', line: { seq, at: new Date().toISOString(), line } });
        }
      },
    };
    try {
      const result = await work(ctx);
      setState({ state: 'succeeded', done, total, endedAt: new Date().toISOString(), result: result ?? null });
    } catch (e) {
      const cancelled = signal.aborted || isPolyvisorError(e, 'ERR_ABORTED');
      const error = e instanceof PolyvisorError ? { code: e.code, message: e.message } : { code: cancelled ? 'ERR_ABORTED' : 'ERR_INTERNAL', message: (e as Error)?.message ?? String(e) };
      if (cancelled) error.code = 'ERR_ABORTED';
      ctx.log(`${cancelled ? 'cancelled' : 'failed'}: ${error.message}`);
      setState({ state: cancelled ? 'cancelled' : 'failed', done, total, endedAt: new Date().toISOString(), error });
    }
  }

  /** Asks a queued or running job to stop; false when it has ended already. */
  cancel(id: string): boolean {
    const live = this.#live.get(id);
    if (!live) return false;
    live.controller.abort(new PolyvisorError('ERR_ABORTED', 'cancelled by a user'));
    const queued = this.#queue.indexOf(id);
    if (queued >= 0) {
      // a queued job never starts: it ends here
      this.#queue.splice(queued, 1);
      this.#running++;
      void live.run().finally(() => {
        this.#running--;
        this.#live.delete(id);
        this.#pump();
      });
    }
    return true;
  }

  /** Live events of a job; returns the unsubscribe function, or undefined when it has ended. */
  subscribe(id: string, listener: Listener): (() => void) | undefined {
    const live = this.#live.get(id);
    if (!live) return undefined;
    live.listeners.add(listener);
    return () => live.listeners.delete(listener);
  }

  /** Resolves when the job has ended (at once when it is not live). */
  async settled(id: string): Promise<StoredJob> {
    await this.#live.get(id)?.finished;
    return this.#store.getJob(id);
  }

  /** Cancels every job and waits for them to end. */
  async close(): Promise<void> {
    this.#closed = true;
    const ids = [...this.#live.keys()];
    for (const id of ids) this.cancel(id);
    await Promise.all(ids.map((id) => this.#live.get(id)?.finished));
  }
}

