/** The jobs: every long operation, newest first, with its progress; one job's page follows it live. */
import { useState } from 'react';
import { api } from './api';
import { when } from './format';
import { JobPanel } from './JobPanel';
import { Link } from './router';
import { useSession } from './session';
import { ENDED, type Job } from './types';
import { usePoll } from './usePoll';
import { ErrorMessage, ProgressBar, StateBadge } from './widgets';

export function JobsPage() {
  const { can } = useSession();
  const [state, setState] = useState('');
  const [error, setError] = useState<unknown>(null);
  const { data, error: loadError, reload } = usePoll(
    (signal) => api<{ items: Job[] }>('GET', `/api/jobs?limit=100${state ? `&state=${state}` : ''}`, undefined, { signal }),
    2000,
    [state],
  );
  return (
    <section aria-labelledby="jobs-title">
      <h1 id="jobs-title">Jobs</h1>
      <div className="filters">
        <label>
          State
          <select value={state} onChange={(e) => setState(e.target.value)}>
            <option value="">any</option>
            {['queued', 'running', 'succeeded', 'failed', 'cancelled'].map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </label>
      </div>
      <ErrorMessage error={loadError ?? error} />
      {data && (
        <table className="jobs">
          <caption className="sr-only">Jobs</caption>
          <thead>
            <tr>
              <th scope="col">Job</th>
              <th scope="col">State</th>
              <th scope="col">Progress</th>
              <th scope="col">By</th>
              <th scope="col">Created</th>
              <th scope="col">
                <span className="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {data.items.map((j) => (
              <tr key={j.id} data-job-id={j.id}>
                <th scope="row">
                  <Link to={`/jobs/${j.id}`}>
                    {j.kind} {j.target}
                  </Link>
                </th>
                <td>
                  <StateBadge state={j.state} />
                  {j.error && <div className="muted small">{j.error.message}</div>}
                </td>
                <td className="progress-cell">
                  <ProgressBar done={j.state === 'succeeded' && j.total ? j.total : j.done} total={j.total} label={`${j.kind} ${j.target} progress`} />
                </td>
                <td>{j.createdBy ?? '–'}</td>
                <td>{when(j.createdAt)}</td>
                <td>
                  {!ENDED.has(j.state) && can('operator') && (
                    <button type="button" onClick={() => api('POST', `/api/jobs/${j.id}/cancel`).then(reload, setError)} aria-label={`cancel ${j.kind} ${j.target}`}>
                      Cancel
                    </button>
                  )}
                </td>
              </tr>
            ))}
            {data.items.length === 0 && (
              <tr>
                <td colSpan={6} className="empty">
                  No jobs.
                </td>
              </tr>
            )}
          </tbody>
        </table>
      )}
    </section>
  );
}

export function JobPage({ id }: { id: string }) {
  const { data: job, error } = usePoll((signal) => api<Job>('GET', `/api/jobs/${encodeURIComponent(id)}`, undefined, { signal }), 60_000, [id]);
  return (
    <section aria-labelledby="job-title">
      <p>
        <Link to="/jobs">← All jobs</Link>
      </p>
      <h1 id="job-title">{job ? `${job.kind} ${job.target}` : 'Job'}</h1>
      <ErrorMessage error={error} />
      {job && (
        <dl className="settings">
          <dt>Id</dt>
          <dd>
            <code>{job.id}</code>
          </dd>
          <dt>By</dt>
          <dd>{job.createdBy ?? '–'}</dd>
          <dt>Created</dt>
          <dd>{when(job.createdAt)}</dd>
          <dt>Started</dt>
          <dd>{when(job.startedAt)}</dd>
          <dt>Ended</dt>
          <dd>{when(job.endedAt)}</dd>
          {job.kind === 'import' && job.result?.vm && (
            <>
              <dt>VM</dt>
              <dd>
                <Link to={`/vms/${encodeURIComponent(job.result.vm)}`}>{job.result.vm}</Link>
              </dd>
            </>
          )}
        </dl>
      )}
      <JobPanel id={id} />
      {job?.result && (
        <details>
          <summary>Result</summary>
          <pre className="json">{JSON.stringify(job.result, null, 2)}</pre>
        </details>
      )}
    </section>
  );
}
