/**
 * The console's shell: the login page until a token is accepted, then the navigation and the
 * page the path names. A token the server stops accepting (401 anywhere) signs the user out.
 */
import { useCallback, useEffect, useMemo, useState } from 'react';
import { api, onUnauthorized, storedToken, storeToken } from './api';
import { ImportPage } from './ImportPage';
import { Inventory } from './Inventory';
import { JobPage, JobsPage } from './JobsPage';
import { Login } from './Login';
import { Link, match, navigate, usePath } from './router';
import { makeSession, SessionContext } from './session';
import type { Me } from './types';
import { VmPage } from './VmPage';

const NAV = [
  { to: '/', label: 'Inventory', active: (p: string) => p === '/' || p.startsWith('/vms/') },
  { to: '/import', label: 'Import', active: (p: string) => p === '/import' },
  { to: '/jobs', label: 'Jobs', active: (p: string) => p.startsWith('/jobs') },
];

export function App() {
  const path = usePath();
  const [me, setMe] = useState<Me | null>(null);
  const [checking, setChecking] = useState(() => storedToken() !== null);

  const signOut = useCallback(() => {
    storeToken(null);
    setMe(null);
  }, []);
  useEffect(() => onUnauthorized(signOut), [signOut]);

  // a token kept from earlier in this tab: check it once
  useEffect(() => {
    if (!storedToken()) return;
    api<Me>('GET', '/api/me')
      .then(setMe, () => storeToken(null))
      .finally(() => setChecking(false));
  }, []);

  const session = useMemo(() => (me ? makeSession(me, signOut) : null), [me, signOut]);
  if (checking) return <p className="loading" role="status">Checking your token…</p>;
  if (!session) return <Login onSignedIn={setMe} />;

  let page;
  let params: Record<string, string> | undefined;
  if (match('/', path)) page = <Inventory />;
  else if ((params = match('/vms/:name', path))) page = <VmPage key={params.name} name={params.name!} />;
  else if (match('/import', path)) page = <ImportPage />;
  else if (match('/jobs', path)) page = <JobsPage />;
  else if ((params = match('/jobs/:id', path))) page = <JobPage key={params.id} id={params.id!} />;
  else
    page = (
      <section>
        <h1>Not found</h1>
        <p>
          Nothing is at {path}. <Link to="/">Back to the inventory</Link>.
        </p>
      </section>
    );

  return (
    <SessionContext.Provider value={session}>
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="top">
        <Link to="/" className="brand">
          Polyvisor
        </Link>
        <nav aria-label="Main">
          <ul>
            {NAV.map((n) => (
              <li key={n.to}>
                <Link to={n.to} aria-current={n.active(path) ? 'page' : undefined}>
                  {n.label}
                </Link>
              </li>
            ))}
          </ul>
        </nav>
        <div className="who">
          <span>
            {session.me.name} <span className="role">({session.me.role})</span>
          </span>
          <button
            type="button"
            className="link"
            onClick={() => {
              signOut();
              navigate('/');
            }}
          >
            Sign out
          </button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        {page}
      </main>
    </SessionContext.Provider>
  );
}
