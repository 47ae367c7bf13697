/** Small presentational pieces shared by the pages: state badges, progress bars, error lines. */
import { percent } from './format';
import { bytes } from './format';

export function StateBadge({ state }: { state: string }) {
  return <span className={`badge state-${state}`}>{state}</span>;
}

export function ProgressBar({ done, total, label }: { done: number; total: number; label: string }) {
  const p = percent(done, total);
  return (
    <div className="progress">
      <div
        className="bar"
        role="progressbar"
        aria-label={label}
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={total > 0 ? p : undefined}
        aria-valuetext={total > 0 ? `${p}% (${bytes(done)} of ${bytes(total)})` : 'waiting'}
      >
        <div className="fill" style={{ width: `${total > 0 ? p : 0}%` }} />
      </div>
      <span className="figures">{total > 0 ? `${p}% · ${bytes(done)} of ${bytes(total)}` : '…'}</span>
    </div>
  );
}

export function ErrorMessage({ error }: { error: unknown }) {
  if (!error) return null;
  const e = error as { code?: string; message?: string };
  return (
    <p className="error" role="alert">
      {e.code ? <code>{e.code}</code> : null} {e.message ?? String(error)}
    </p>
  );
}

export function Tags({ tags }: { tags: string[] }) {
  if (!tags.length) return null;
  return (
    <ul className="tags" aria-label="tags">
      {tags.map((t) => (
        <li key={t} className="tag">
          {t}
        </li>
      ))}
    </ul>
  );
}
