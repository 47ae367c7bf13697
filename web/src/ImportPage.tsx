/**
 * Import a VM: its source is a file uploaded into the library (with a progress bar) or a path
 * already in the library (any descriptor, package or exported folder the server reads). The page
 * shows what `vm inspect` finds in it and what the chosen host would not carry as it is, then
 * runs the import as a job and follows it live.
 */
import { useEffect, useId, useRef, useState, type FormEvent } from 'react';
import { api, ApiError, upload } from './api';
import { bytes } from './format';
import { JobPanel } from './JobPanel';
import { Link } from './router';
import { useSession } from './session';
import type { ConversionNote, Host, Inspection, Job, LibraryEntry } from './types';
import { useJob } from './useJob';
import { usePoll } from './usePoll';
import { ErrorMessage, ProgressBar } from './widgets';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
// the same rule as an HTML pattern (compiled with the v flag, where '-' in a class is escaped)
const NAME_PATTERN = '[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}';

export function ImportPage() {
  const { can } = useSession();
  const [mode, setMode] = useState<'upload' | 'library'>('upload');
  const [source, setSource] = useState<string>('');
  const [file, setFile] = useState<File | null>(null);
  const [overwrite, setOverwrite] = useState(false);
  const [sent, setSent] = useState<{ done: number; total: number } | null>(null);
  const [uploading, setUploading] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [libraryPath, setLibraryPath] = useState('');
  const [host, setHost] = useState('local');
  const [inspection, setInspection] = useState<Inspection | null>(null);
  const [inspectError, setInspectError] = useState<unknown>(null);
  const [inspecting, setInspecting] = useState(false);
  const [name, setName] = useState('');
  const [copy, setCopy] = useState(false);
  const [adapt, setAdapt] = useState(true);
  const [job, setJob] = useState<Job | null>(null);
  const [starting, setStarting] = useState(false);
  const uploadAbort = useRef<AbortController | null>(null);
  const ids = { file: useId(), lib: useId(), name: useId(), host: useId() };

  const { data: hosts } = usePoll((signal) => api<{ items: Host[] }>('GET', '/api/hosts', undefined, { signal }), 60_000, []);
  const { data: library } = usePoll((signal) => api<{ items: LibraryEntry[] }>('GET', '/api/library', undefined, { signal }), 30_000, [source]);

  // inspect the chosen source for the chosen host
  useEffect(() => {
    if (!source) return;
    const ac = new AbortController();
    setInspecting(true);
    setInspectError(null);
    api<Inspection>('POST', '/api/library/inspect', { source, target: host === 'local' ? 'local' : 'xl' }, { signal: ac.signal })
      .then(
        (r) => {
          setInspection(r);
          setName((n) => n || suggestName(r.spec.name));
        },
        (e) => !ac.signal.aborted && (setInspection(null), setInspectError(e)),
      )
      .finally(() => !ac.signal.aborted && setInspecting(false));
    return () => ac.abort();
  }, [source, host]);

  const doUpload = async (e: FormEvent) => {
    e.preventDefault();
    if (!file) return setError(new Error('Choose a file to upload.'));
    const ac = new AbortController();
    uploadAbort.current = ac;
    setUploading(true);
    setError(null);
    setSent({ done: 0, total: file.size });
    try {
      const r = await upload(file, `uploads/${file.name}`, { overwrite, signal: ac.signal, onProgress: (done, total) => setSent({ done, total }) });
      setSent({ done: r.size, total: r.size });
      setName('');
      setSource(r.path);
    } catch (err) {
      setError(err);
    } finally {
      setUploading(false);
      uploadAbort.current = null;
    }
  };

  const doImport = async (e: FormEvent) => {
    e.preventDefault();
    setStarting(true);
    setError(null);
    try {
      const j = await api<Job>('POST', '/api/vms', { source, ...(name ? { name } : {}), host, copy, adapt });
      setJob(j);
    } catch (err) {
      setError(err);
    } finally {
      setStarting(false);
    }
  };

  if (!can('operator')) {
    return (
      <section>
        <h1>Import a VM</h1>
        <p>Importing needs the operator role.</p>
      </section>
    );
  }

  const candidates = (library?.items ?? []).filter((i) => i.type === 'folder' || /\.(ova|xva|ovf|vmx|vmc|xml|cfg|qcow2|vhdx?|vmdk|vdi|raw|img)$/i.test(i.path));

  return (
    <section aria-labelledby="import-title">
      <h1 id="import-title">Import a VM</h1>
      <fieldset className="choice">
        <legend>Where the VM comes from</legend>
        <label className="inline">
          <input type="radio" name="mode" checked={mode === 'upload'} onChange={() => setMode('upload')} /> Upload a file (OVA, XVA, a disk image…)
        </label>
        <label className="inline">
          <input type="radio" name="mode" checked={mode === 'library'} onChange={() => setMode('library')} /> A file or folder already on the server (the library)
        </label>
      </fieldset>

      {mode === 'upload' ? (
        <form onSubmit={doUpload} className="card">
          <label htmlFor={ids.file}>File</label>
          <input id={ids.file} type="file" onChange={(e) => setFile(e.target.files?.[0] ?? null)} />
          <label className="inline">
            <input type="checkbox" checked={overwrite} onChange={(e) => setOverwrite(e.target.checked)} /> replace a file of the same name
          </label>
          <div className="buttons">
            <button type="submit" className="primary" disabled={!file || uploading}>
              Upload
            </button>
            {uploading && (
              <button type="button" onClick={() => uploadAbort.current?.abort()}>
                Cancel upload
              </button>
            )}
          </div>
          {sent && <ProgressBar done={sent.done} total={sent.total} label="upload progress" />}
          {source && !uploading && sent && <p role="status">Uploaded as <code>{source}</code>.</p>}
        </form>
      ) : (
        <form
          className="card"
          onSubmit={(e) => {
            e.preventDefault();
            setName('');
            setSource(libraryPath.trim());
          }}
        >
          <label htmlFor={ids.lib}>Path in the library</label>
          <input id={ids.lib} list={`${ids.lib}-list`} value={libraryPath} onChange={(e) => setLibraryPath(e.target.value)} placeholder="uploads/web01.ova" spellCheck={false} />
          <datalist id={`${ids.lib}-list`}>
            {candidates.map((c) => (
              <option key={c.path} value={c.path}>
                {c.type === 'folder' ? 'folder' : bytes(c.size)}
              </option>
            ))}
          </datalist>
          <div className="buttons">
            <button type="submit" className="primary" disabled={!libraryPath.trim()}>
              Inspect
            </button>
          </div>
        </form>
      )}
      <ErrorMessage error={error} />

      {source && (
        <section className="card" aria-labelledby="inspect-title" aria-busy={inspecting}>
          <h2 id="inspect-title">
            What <code>{source}</code> holds
          </h2>
          {inspecting && <p role="status">Inspecting…</p>}
          {inspectError instanceof ApiError && inspectError.status === 404 && inspectError.code === 'ERR_NOT_FOUND' && inspectError.message.startsWith('no route') ? (
            <p className="muted">This server cannot inspect sources before importing (no /api/library/inspect); the import job lists what it could not carry.</p>
          ) : (
            <ErrorMessage error={inspectError} />
          )}
          {inspection && <InspectionView inspection={inspection} host={host} />}
        </section>
      )}

      {source && !job && (
        <form onSubmit={doImport} className="card" aria-labelledby="run-title">
          <h2 id="run-title">Import</h2>
          <label htmlFor={ids.name}>Name</label>
          <input id={ids.name} value={name} onChange={(e) => setName(e.target.value)} pattern={NAME_PATTERN} title="letters, digits, '.', '_' and '-'" placeholder="from the descriptor" />
          <label htmlFor={ids.host}>Host</label>
          <select id={ids.host} value={host} onChange={(e) => setHost(e.target.value)}>
            {(hosts?.items ?? [{ name: 'local', driver: 'qemu' } as Host]).map((h) => (
              <option key={h.name} value={h.name}>
                {h.name} ({h.driver})
              </option>
            ))}
          </select>
          <label className="inline">
            <input type="checkbox" checked={copy} onChange={(e) => setCopy(e.target.checked)} /> copy every disk into the store (default: use disks QEMU reads in place, under an overlay)
          </label>
          <label className="inline">
            <input type="checkbox" checked={adapt} onChange={(e) => setAdapt(e.target.checked)} /> adapt a Linux guest from another hypervisor for this one
          </label>
          <div className="buttons">
            <button type="submit" className="primary" disabled={starting}>
              {starting ? 'Starting…' : 'Import'}
            </button>
          </div>
        </form>
      )}
      {job && <ImportJob job={job} />}
    </section>
  );
}

function ImportJob({ job }: { job: Job }) {
  const live = useJob(job.id);
  const vm: string | undefined = live.job?.state === 'succeeded' ? live.job.result?.vm : undefined;
  return (
    <>
      <JobPanel id={job.id} title={`Importing ${job.target}`} />
      {vm && (
        <p role="status" className="done">
          Imported. <Link to={`/vms/${encodeURIComponent(vm)}`}>Open {vm}</Link>
        </p>
      )}
    </>
  );
}

function suggestName(specName: string): string {
  const n = specName.replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^[^A-Za-z0-9]+/, '').slice(0, 64);
  return NAME.test(n) ? n : '';
}

function Notes({ notes, empty }: { notes: ConversionNote[]; empty: string }) {
  if (!notes.length) return <p className="muted">{empty}</p>;
  return (
    <ul className="notes">
      {notes.map((n, i) => (
        <li key={i} className={`note note-${n.action}`}>
          <strong>{n.action}</strong> <code>{n.setting}</code>
          {n.action === 'changed' && (
            <>
              {' '}
              ({JSON.stringify(n.from)} → {JSON.stringify(n.to)})
            </>
          )}
          : {n.reason}
        </li>
      ))}
    </ul>
  );
}

function InspectionView({ inspection: r, host }: { inspection: Inspection; host: string }) {
  const s = r.spec;
  return (
    <div data-testid="inspection">
      <dl className="settings">
        <dt>VM</dt>
        <dd>
          {s.name} <span className="muted">({r.kind})</span>
        </dd>
        <dt>Guest</dt>
        <dd>
          {s.os.family}
          {s.os.variant ? ` (${s.os.variant})` : ''}, {s.virtualization}, {s.firmware.type}
        </dd>
        <dt>CPUs and memory</dt>
        <dd>
          {s.cpu.count} CPU{s.cpu.count === 1 ? '' : 's'}, {bytes(s.memory.bytes)}
        </dd>
        <dt>Disks</dt>
        <dd>
          <ul>
            {r.disks.map((d) => (
              <li key={d.index}>
                {d.index}: {s.disks[d.index]?.device} on {s.disks[d.index]?.bus} · <code>{d.file}</code> {d.format ? `(${d.format}, ${bytes(d.virtualSize)})` : ''}
                {d.error && <span className="error"> cannot open: {d.error}</span>}
              </li>
            ))}
          </ul>
        </dd>
        <dt>NICs</dt>
        <dd>{s.nics.map((n) => [n.model, n.mac].filter(Boolean).join(' ') || 'default').join('; ') || 'none'}</dd>
      </dl>
      <h3>Read from the source</h3>
      <Notes notes={r.notes} empty="Everything in the source was understood." />
      <h3>What {host === 'local' ? 'the local engine' : `host ${host}`} would not carry as it is</h3>
      {r.targetNotes ? <Notes notes={r.targetNotes} empty="Every setting carries across." /> : <p className="muted">Known when the import runs (its log lists it).</p>}
    </div>
  );
}
