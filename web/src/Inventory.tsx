/** The inventory: hosts, and every VM across them with its state, searchable by name, host, state and tag. */
import { useMemo, useState } from 'react';
import { api } from './api';
import { bytes } from './format';
import { Link } from './router';
import type { Host, VmSummary } from './types';
import { usePoll } from './usePoll';
import { ErrorMessage, StateBadge, Tags } from './widgets';

export function Inventory() {
  const { data, error } = usePoll(
    async (signal) => {
      const [hosts, vms] = await Promise.all([
        api<{ items: Host[] }>('GET', '/api/hosts', undefined, { signal }),
        api<{ items: VmSummary[]; total: number }>('GET', '/api/vms?limit=1000', undefined, { signal }),
      ]);
      return { hosts: hosts.items, vms: vms.items, total: vms.total };
    },
    5000,
    [],
  );
  const [query, setQuery] = useState('');
  const [state, setState] = useState('');
  const [host, setHost] = useState('');

  const shown = useMemo(() => {
    const words = query.toLowerCase().split(/\s+/).filter(Boolean);
    return (data?.vms ?? []).filter((v) => {
      if (state && v.state !== state) return false;
      if (host && v.host !== host) return false;
      const hay = [v.name, v.host, v.state, v.sourceKind, ...v.tags].join(' ').toLowerCase();
      return words.every((w) => hay.includes(w));
    });
  }, [data, query, state, host]);

  return (
    <section aria-labelledby="inv-title">
      <div className="title-row">
        <h1 id="inv-title">Inventory</h1>
        <Link to="/import" className="button primary">
          Import a VM
        </Link>
      </div>
      <ErrorMessage error={error} />
      {data && (
        <ul className="hosts" aria-label="hosts">
          {data.hosts.map((h) => (
            <li key={h.name}>
              <button type="button" className={`host ${host === h.name ? 'selected' : ''}`} aria-pressed={host === h.name} onClick={() => setHost(host === h.name ? '' : h.name)}>
                <strong>{h.name}</strong> <span className="muted">{h.driver}</span> <span className="count">{h.vms} VM{h.vms === 1 ? '' : 's'}</span>
              </button>
            </li>
          ))}
        </ul>
      )}
      <div className="filters" role="search">
        <label>
          Search
          <input type="search" value={query} onChange={(e) => setQuery(e.target.value)} placeholder="name, host, tag…" />
        </label>
        <label>
          State
          <select value={state} onChange={(e) => setState(e.target.value)}>
            <option value="">any</option>
            <option value="running">running</option>
            <option value="paused">paused</option>
            <option value="stopped">stopped</option>
          </select>
        </label>
      </div>
      {!data && !error && <p role="status">Loading…</p>}
      {data && (
        <table className="vms">
          <caption className="sr-only">Virtual machines</caption>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">State</th>
              <th scope="col">Host</th>
              <th scope="col">CPUs</th>
              <th scope="col">Memory</th>
              <th scope="col">From</th>
              <th scope="col">Tags</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((v) => (
              <tr key={v.name}>
                <th scope="row">
                  <Link to={`/vms/${encodeURIComponent(v.name)}`}>{v.name}</Link>
                </th>
                <td>
                  <StateBadge state={v.state} />
                </td>
                <td>{v.host}</td>
                <td>{v.cpus}</td>
                <td>{bytes(v.memoryBytes)}</td>
                <td>{v.sourceKind}</td>
                <td>
                  <Tags tags={v.tags} />
                </td>
              </tr>
            ))}
            {shown.length === 0 && (
              <tr>
                <td colSpan={7} className="empty">
                  {data.vms.length === 0 ? (
                    <>
                      No VMs yet. <Link to="/import">Import one</Link>.
                    </>
                  ) : (
                    'No VM matches.'
                  )}
                </td>
              </tr>
            )}
          </tbody>
        </table>
      )}
      {data && (
        <p className="muted" aria-live="polite">
          {shown.length} of {data.total} VM{data.total === 1 ? '' : 's'}
        </p>
      )}
    </section>
  );
}
