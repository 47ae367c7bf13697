/** A job followed live: its record, progress and log, from the job's server-sent events. */
import { useEffect, useState } from 'react';
import { api, followJob } from './api';
import type { Job, JobLogLine } from './types';

export interface LiveJob {
  job: Job | undefined;
  done: number;
  total: number;
  log: JobLogLine[];
  error: unknown;
}

/** The most lines kept in the page (the server keeps the whole log). */
const MAX_LINES = 2000;

export function useJob(id: string | undefined): LiveJob {
  const [state, setState] = useState<LiveJob>({ job: undefined, done: 0, total: 0, log: [], error: null });
  useEffect(() => {
    if (!id) return;
    const ac = new AbortController();
    setState({ job: undefined, done: 0, total: 0, log: [], error: null });
    followJob(
      id,
      {
        state: (job) => setState((s) => ({ ...s, job, done: Math.max(s.done, job.done), total: job.total || s.total })),
        progress: (done, total) => setState((s) => ({ ...s, done, total })),
        log: (line) => setState((s) => ({ ...s, log: [...s.log, line].slice(-MAX_LINES) })),
      },
      ac.signal,
    )
      .then(async (last) => {
        // the final record carries the result (files written, notes)
        if (last && !ac.signal.aborted) {
          const full = await api<Job>('GET', `/api/jobs/${encodeURIComponent(id)}`, undefined, { signal: ac.signal });
          setState((s) => ({ ...s, job: full, done: full.state === 'succeeded' && full.total ? full.total : s.done }));
        }
      })
      .catch((error) => !ac.signal.aborted && setState((s) => ({ ...s, error })));
    return () => ac.abort();
  }, [id]);
  return state;
}
