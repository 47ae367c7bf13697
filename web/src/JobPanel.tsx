/** One job, live: state, progress bar, log, and what it produced; cancel while it runs. */
import { useEffect, useRef, useState } from 'react';
import { api, libraryUrl } from './api';
import { Link } from './router';
import { useSession } from './session';
import { ENDED } from './types';
import { useJob } from './useJob';
import { ErrorMessage, ProgressBar, StateBadge } from './widgets';

export function JobPanel({ id, title }: { id: string; title?: string }) {
  const { job, done, total, log, error } = useJob(id);
  const { can } = useSession();
  const [cancelError, setCancelError] = useState<unknown>(null);
  const logRef = useRef<HTMLPreElement>(null);
  useEffect(() => {
    const el = logRef.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [log.length]);
  const ended = job ? ENDED.has(job.state) : false;
  const files: string[] = Array.isArray(job?.result?.files) ? job!.result.files : [];
  return (
    <section className="job" aria-label={title ?? `job ${id}`} data-job-id={id} data-job-state={job?.state ?? 'loading'}>
      <div className="title-row">
        <h3>
          {title ?? (job ? `${job.kind} ${job.target}` : 'Job')} {job && <StateBadge state={job.state} />}
        </h3>
        <div className="buttons">
          {job && !ended && can('operator') && (
            <button type="button" onClick={() => api('POST', `/api/jobs/${id}/cancel`).catch(setCancelError)}>
              Cancel
            </button>
          )}
          <Link to={`/jobs/${id}`}>Details</Link>
        </div>
      </div>
      <ProgressBar done={job?.state === 'succeeded' && total ? total : done} total={total} label={`${job?.kind ?? 'job'} progress`} />
      {job?.error && (
        <p className="error" role="alert">
          <code>{job.error.code}</code> {job.error.message}
        </p>
      )}
      <ErrorMessage error={error ?? cancelError} />
      {files.length > 0 && (
        <div>
          <h4>Files written</h4>
          <ul className="files">
            {files.map((f) => (
              <li key={f}>
                <DownloadLink path={f} />
              </li>
            ))}
          </ul>
        </div>
      )}
      <details open={!ended || job?.state !== 'succeeded'}>
        <summary>Log ({log.length} lines)</summary>
        <pre className="log" ref={logRef} tabIndex={0} aria-label="job log" aria-live="off">
          {log.map((l) => l.line).join('\n')}
        </pre>
      </details>
    </section>
  );
}

/** A library file downloaded with the token (a plain link cannot carry it). */
export function DownloadLink({ path }: { path: string }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const download = async () => {
    setBusy(true);
    setError(null);
    try {
      const token = sessionStorage.getItem('polyvisor.token');
      const res = await fetch(`/api/library/files/${libraryUrl(path)}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
      if (!res.ok) throw new Error(`download failed: HTTP ${res.status}`);
      const url = URL.createObjectURL(await res.blob());
      const a = document.createElement('a');
      a.href = url;
      a.download = path.split('/').pop() ?? 'download';
      a.click();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <>
      <code className="path">{path}</code>{' '}
      <button type="button" className="link" onClick={download} disabled={busy} aria-label={`download ${path}`}>
        {busy ? 'downloading…' : 'download'}
      </button>
      <ErrorMessage error={error} />
    </>
  );
}
