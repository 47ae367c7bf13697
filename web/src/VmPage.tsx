/**
 * One VM: its settings (the VmSpec), its disks, its consoles, and the actions its state allows:
 * start, stop (ACPI, forced after a timeout), kill and remove (confirmed), pause and resume, and
 * the long ones as jobs (export/convert for another hypervisor, move to another host, verify).
 * Actions are shown to operators and admins only; the server enforces the same rule.
 */
import { lazy, Suspense, useState, type ReactNode } from 'react';
import { api, ApiError } from './api';
import { Confirm } from './Confirm';
import { bytes, when } from './format';
import { JobPanel } from './JobPanel';
import { navigate } from './router';
import { SerialConsole } from './SerialConsole';
import { useSession } from './session';
import type { Host, Job, Vm } from './types';
import { usePoll } from './usePoll';
import { ErrorMessage, StateBadge, Tags } from './widgets';

// noVNC is most of the bundle: loaded when a console is first opened
const VncConsole = lazy(() => import('./VncConsole').then((m) => ({ default: m.VncConsole })));

const TABS = ['settings', 'disks', 'console', 'serial'] as const;
type Tab = (typeof TABS)[number];
const TAB_LABELS: Record<Tab, string> = { settings: 'Settings', disks: 'Disks', console: 'Console', serial: 'Serial console' };
const TARGETS = ['xva', 'ova', 'ovf', 'xl', 'libvirt', 'vmx', 'hyperv'];

type Dialog = 'stop' | 'kill' | 'remove' | 'export' | 'move' | 'verify' | 'tags' | null;

export function VmPage({ name }: { name: string }) {
  const { can } = useSession();
  const path = `/api/vms/${encodeURIComponent(name)}`;
  const { data: vm, error: loadError, reload } = usePoll((signal) => api<Vm>('GET', path, undefined, { signal }), 3000, [path]);
  const [tab, setTab] = useState<Tab>('settings');
  const [busy, setBusy] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [dialog, setDialog] = useState<Dialog>(null);
  const [jobs, setJobs] = useState<Job[]>([]);
  // dialog fields
  const [timeout, setTimeoutSeconds] = useState(30);
  const [target, setTarget] = useState('xva');
  const [out, setOut] = useState('');
  const [force, setForce] = useState(false);
  const [moveTo, setMoveTo] = useState('');
  const [expect, setExpect] = useState('');
  const [verifyTimeout, setVerifyTimeout] = useState(120);
  const [tagText, setTagText] = useState('');
  const { data: hosts } = usePoll((signal) => api<{ items: Host[] }>('GET', '/api/hosts', undefined, { signal }), 60_000, []);

  const act = async (label: string, fn: () => Promise<unknown>) => {
    setDialog(null);
    setBusy(label);
    setError(null);
    try {
      const r = await fn();
      if (r && typeof r === 'object' && 'id' in r && 'kind' in r) setJobs((j) => [r as Job, ...j]);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(null);
      reload();
    }
  };

  if (loadError instanceof ApiError && loadError.status === 404) {
    return (
      <section>
        <h1>{name}</h1>
        <p>There is no VM named {name}.</p>
      </section>
    );
  }
  if (!vm) return <section>{loadError ? <ErrorMessage error={loadError} /> : <p role="status">Loading {name}…</p>}</section>;

  const stopped = vm.state === 'stopped';
  const running = vm.state === 'running';
  const paused = vm.state === 'paused';
  const operator = can('operator');
  const post = (verb: string, body?: unknown) => () => api('POST', `${path}/${verb}`, body ?? (verb === 'stop' ? {} : undefined));

  return (
    <section aria-labelledby="vm-title" data-vm-state={vm.state}>
      <div className="title-row">
        <h1 id="vm-title">
          {vm.name} <StateBadge state={vm.state} />
        </h1>
        <Tags tags={vm.tags} />
      </div>
      <p className="muted">
        on host <strong>{vm.host}</strong> · from {vm.sourceKind} <code>{vm.source}</code>
        {vm.startedAt && !stopped ? ` · started ${when(vm.startedAt)}` : ''}
        {vm.pid ? ` · pid ${vm.pid}` : ''}
      </p>

      {operator && (
        <div className="actions" role="toolbar" aria-label="VM actions">
          <button type="button" className="primary" disabled={!stopped || !!busy} onClick={() => act('start', post('start'))}>
            Start
          </button>
          <button type="button" disabled={stopped || !!busy} onClick={() => setDialog('stop')}>
            Stop…
          </button>
          {running && (
            <button type="button" disabled={!!busy} onClick={() => act('pause', post('pause'))}>
              Pause
            </button>
          )}
          {paused && (
            <button type="button" disabled={!!busy} onClick={() => act('resume', post('resume'))}>
              Resume
            </button>
          )}
          <button type="button" className="danger" disabled={stopped || !!busy} onClick={() => setDialog('kill')}>
            Kill…
          </button>
          <span className="sep" aria-hidden="true" />
          <button type="button" disabled={!stopped || !!busy} onClick={() => setDialog('export')} title="convert the VM for another hypervisor, into the library">
            Export / convert…
          </button>
          <button type="button" disabled={!stopped || !!busy} onClick={() => setDialog('move')}>
            Move…
          </button>
          <button type="button" disabled={!stopped || !!busy} onClick={() => setDialog('verify')}>
            Verify…
          </button>
          <button
            type="button"
            disabled={!!busy}
            onClick={() => {
              setTagText(vm.tags.join(', '));
              setDialog('tags');
            }}
          >
            Tags…
          </button>
          <button type="button" className="danger" disabled={!!busy} onClick={() => setDialog('remove')}>
            Remove…
          </button>
          {busy && (
            <span role="status" className="muted">
              {busy}…
            </span>
          )}
        </div>
      )}
      <ErrorMessage error={error} />

      {jobs.map((j) => (
        <JobPanel key={j.id} id={j.id} title={`${j.kind} ${j.target}`} />
      ))}

      <div role="tablist" aria-label="VM views" className="tabs">
        {TABS.map((t) => (
          <button
            key={t}
            type="button"
            role="tab"
            id={`tab-${t}`}
            aria-selected={tab === t}
            aria-controls={`panel-${t}`}
            tabIndex={tab === t ? 0 : -1}
            onClick={() => setTab(t)}
            onKeyDown={(e) => {
              const i = TABS.indexOf(tab);
              if (e.key === 'ArrowRight' || e.key === 'ArrowLeft') {
                const next = TABS[(i + (e.key === 'ArrowRight' ? 1 : TABS.length - 1)) % TABS.length]!;
                setTab(next);
                document.getElementById(`tab-${next}`)?.focus();
              }
            }}
          >
            {TAB_LABELS[t]}
          </button>
        ))}
      </div>
      <div role="tabpanel" id={`panel-${tab}`} aria-labelledby={`tab-${tab}`} className="panel">
        {tab === 'settings' && <Settings vm={vm} />}
        {tab === 'disks' && <Disks vm={vm} />}
        {(tab === 'console' || tab === 'serial') &&
          (!operator ? (
            <p>Opening a console needs the operator role.</p>
          ) : stopped ? (
            <p>{vm.name} is stopped; start it to open its console.</p>
          ) : tab === 'console' ? (
            <Suspense fallback={<p role="status">Loading the console…</p>}>
              <VncConsole vm={vm.name} />
            </Suspense>
          ) : (
            <SerialConsole vm={vm.name} />
          ))}
      </div>

      <Confirm open={dialog === 'stop'} title={`Stop ${vm.name}`} confirmLabel="Stop" onCancel={() => setDialog(null)} onConfirm={() => act('stopping', post('stop', { timeoutSeconds: timeout }))}>
        <p>The guest is asked to power off (ACPI). If it has not after the timeout, it is forced off.</p>
        <label>
          Seconds before forcing it off
          <input type="number" min={0} max={600} value={timeout} onChange={(e) => setTimeoutSeconds(Number(e.target.value))} />
        </label>
      </Confirm>
      <Confirm open={dialog === 'kill'} danger title={`Kill ${vm.name}?`} confirmLabel="Kill" onCancel={() => setDialog(null)} onConfirm={() => act('killing', post('kill'))}>
        <p>The power is cut at once: the guest cannot save anything it has not written.</p>
      </Confirm>
      <Confirm
        open={dialog === 'remove'}
        danger
        title={`Remove ${vm.name}?`}
        confirmLabel="Remove"
        onCancel={() => setDialog(null)}
        onConfirm={() =>
          act('removing', async () => {
            await api('DELETE', `${path}${stopped ? '' : '?force=true'}`);
            navigate('/');
          })
        }
      >
        <p>
          The VM, its overlays and its converted disks are removed{stopped ? '' : ', after it is killed'}. Its source (<code>{vm.source}</code>) is not touched.
        </p>
      </Confirm>
      <Confirm
        open={dialog === 'export'}
        title={`Export ${vm.name}`}
        confirmLabel="Export"
        onCancel={() => setDialog(null)}
        onConfirm={() => act('exporting', post('export', { target, ...(out.trim() ? { out: out.trim() } : {}), force }))}
      >
        <p>Converts the VM, as its disks are now, for another hypervisor into a library folder.</p>
        <label>
          Target
          <select value={target} onChange={(e) => setTarget(e.target.value)}>
            {TARGETS.map((t) => (
              <option key={t} value={t}>
                {t}
              </option>
            ))}
          </select>
        </label>
        <label>
          Library folder (default exports/{vm.name}-{target})
          <input value={out} onChange={(e) => setOut(e.target.value)} placeholder={`exports/${vm.name}-${target}`} />
        </label>
        <label className="inline">
          <input type="checkbox" checked={force} onChange={(e) => setForce(e.target.checked)} /> replace files already there
        </label>
      </Confirm>
      <Confirm open={dialog === 'move'} title={`Move ${vm.name}`} confirmLabel="Move" onCancel={() => setDialog(null)} onConfirm={() => act('moving', post('move', { to: moveTo }))}>
        <label>
          To host
          <select value={moveTo} onChange={(e) => setMoveTo(e.target.value)} required>
            <option value="">choose a host</option>
            {(hosts?.items ?? [])
              .filter((h) => h.name !== vm.host)
              .map((h) => (
                <option key={h.name} value={h.name}>
                  {h.name} ({h.driver})
                </option>
              ))}
          </select>
        </label>
      </Confirm>
      <Confirm
        open={dialog === 'verify'}
        title={`Verify ${vm.name}`}
        confirmLabel="Verify"
        onCancel={() => setDialog(null)}
        onConfirm={() => act('verifying', post('verify', { ...(expect.trim() ? { expect: expect.trim() } : {}), timeoutSeconds: verifyTimeout }))}
      >
        <p>Boots the VM headless behind overlays (its disks are not written) and checks that it comes up.</p>
        <label>
          Text the console must show (default: a login prompt)
          <input value={expect} onChange={(e) => setExpect(e.target.value)} />
        </label>
        <label>
          Timeout (seconds)
          <input type="number" min={1} max={3600} value={verifyTimeout} onChange={(e) => setVerifyTimeout(Number(e.target.value))} />
        </label>
      </Confirm>
      <Confirm
        open={dialog === 'tags'}
        title={`Tags of ${vm.name}`}
        confirmLabel="Save"
        onCancel={() => setDialog(null)}
        onConfirm={() => act('saving tags', () => api('PUT', `${path}/tags`, { tags: tagText.split(/[,\s]+/).filter(Boolean) }))}
      >
        <label>
          Tags, separated by commas
          <input value={tagText} onChange={(e) => setTagText(e.target.value)} />
        </label>
      </Confirm>
    </section>
  );
}

function Row({ label, children }: { label: string; children: ReactNode }) {
  return (
    <>
      <dt>{label}</dt>
      <dd>{children}</dd>
    </>
  );
}

function Settings({ vm }: { vm: Vm }) {
  const s = vm.spec;
  const extra = Object.entries(s.extra ?? {}).filter(([, v]) => Object.keys(v).length > 0);
  return (
    <>
      <dl className="settings">
        <Row label="Name">{s.name}</Row>
        {s.uuid && <Row label="UUID">{s.uuid}</Row>}
        {s.description && <Row label="Description">{s.description}</Row>}
        <Row label="Guest OS">
          {s.os.family}
          {s.os.variant ? ` (${s.os.variant})` : ''}
        </Row>
        <Row label="Virtualization">{s.virtualization}</Row>
        <Row label="Firmware">
          {s.firmware.type}
          {s.firmware.secureBoot ? ' + Secure Boot' : ''}
          {s.firmware.tpm ? ' + TPM' : ''}
        </Row>
        <Row label="CPUs">
          {s.cpu.count}
          {s.cpu.sockets ? ` (${s.cpu.sockets} sockets × ${s.cpu.cores ?? 1} cores)` : ''}
        </Row>
        <Row label="Memory">
          {bytes(s.memory.bytes)}
          {s.memory.maxBytes ? ` (up to ${bytes(s.memory.maxBytes)})` : ''}
        </Row>
        <Row label="NICs">{s.nics.length ? s.nics.map((n, i) => <div key={i}>{[n.model ?? 'default model', n.mac, n.network && `on ${n.network}`].filter(Boolean).join(' ')}</div>) : 'none'}</Row>
        <Row label="Consoles">{s.consoles.map((c) => c.type).join(', ') || 'none'}</Row>
        <Row label="Graphics">{s.graphics.map((g) => g.type).join(', ') || 'none'}</Row>
        {s.boot && (
          <Row label="Boot">
            {[s.boot.order?.length ? `order ${s.boot.order.join(', ')}` : '', s.boot.kernel ? `kernel ${s.boot.kernel}` : '', s.boot.bootloader ? `bootloader ${s.boot.bootloader}` : '', s.boot.cmdline ? `cmdline ${s.boot.cmdline}` : ''].filter(Boolean).join(' · ') || '–'}
          </Row>
        )}
      </dl>
      {extra.length > 0 && (
        <details>
          <summary>Settings kept from the source ({extra.map(([k]) => k).join(', ')})</summary>
          <pre className="json">{JSON.stringify(Object.fromEntries(extra), null, 2)}</pre>
        </details>
      )}
    </>
  );
}

function Disks({ vm }: { vm: Vm }) {
  return (
    <table>
      <caption className="sr-only">Disks</caption>
      <thead>
        <tr>
          <th scope="col">#</th>
          <th scope="col">Device</th>
          <th scope="col">Bus</th>
          <th scope="col">Source</th>
          <th scope="col">Mode</th>
          <th scope="col">Format</th>
          <th scope="col">Size</th>
        </tr>
      </thead>
      <tbody>
        {vm.spec.disks.map((d, i) => {
          const stored = vm.disks.find((x) => x.index === i);
          return (
            <tr key={i}>
              <td>{i}</td>
              <td>
                {d.device}
                {d.target ? ` (${d.target})` : ''}
              </td>
              <td>
                {d.bus}
                {d.controllerModel ? `/${d.controllerModel}` : ''}
              </td>
              <td>
                <code>{stored?.label ?? d.file ?? '(empty)'}</code>
              </td>
              <td>{stored?.mode ?? '–'}</td>
              <td>{stored?.format ?? d.format ?? '–'}</td>
              <td>{bytes(d.capacity)}</td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}
