/**
 * Where Polyvisor keeps its state: the `--data DIR` option, else $POLYVISOR_DATA, else the XDG
 * data folder ($XDG_DATA_HOME/polyvisor, by default ~/.local/share/polyvisor), as other
 * per-user tools do. Every command of the CLI (and later the server) uses the same folder, so
 * they all see the same VMs.
 */
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { PolyvisorError } from '../errors.js';

export function dataDir(option?: string, env: NodeJS.ProcessEnv = process.env): string {
  if (option) return resolve(option);
  if (env.POLYVISOR_DATA) return resolve(env.POLYVISOR_DATA);
  const xdg = env.XDG_DATA_HOME && env.XDG_DATA_HOME.startsWith('/') ? env.XDG_DATA_HOME : join(homedir(), '.local', 'share');
  return join(xdg, 'polyvisor');
}

/**
 * Where the store's database is, when not in the data folder: the `--database URL` option,
 * else $POLYVISOR_DATABASE, else none (the SQLite file in the data folder). A PostgreSQL URL
 * (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE, or postgresql://…; libpq's form, with
 * ?host=/socket/dir for a Unix socket) lets the CLI and servers on several machines share
 * one inventory; each machine's data folder still holds its own VMs' disks and sockets.
 */
export function databaseUrl(option?: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const url = option || env.POLYVISOR_DATABASE || undefined;
  if (url !== undefined && !/^postgres(?:ql)?:\/\//i.test(url)) {
    const from = option ? '--database' : '$POLYVISOR_DATABASE';
    throw new PolyvisorError('ERR_USAGE', `${from}: give a PostgreSQL URL (postgres://USER@HOST/DATABASE); without it the store is the SQLite file in the data folder`);
  }
  return url;
}

/**
 * Where Polyvisor keeps what it can compute again (the CLI's compiled code, the KVM probe's
 * answer): $XDG_CACHE_HOME/polyvisor, by default ~/.cache/polyvisor. Deleting it is harmless.
 */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_CACHE_HOME && env.XDG_CACHE_HOME.startsWith('/') ? env.XDG_CACHE_HOME : join(homedir(), '.cache');
  return join(xdg, 'polyvisor');
}
