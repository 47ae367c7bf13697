/**
 * Where Polyvisor keeps its state: the `--data DIR` option, else $POLYVISOR_DATA, else the XDG
 * data folder ($XDG_DATA_HOME/polyvisor, by default ~/.local/share/polyvisor), as other
 * per-user tools do. Every command of the CLI (and later the server) uses the same folder, so
 * they all see the same VMs.
 */
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

export function dataDir(option?: string, env: NodeJS.ProcessEnv = process.env): string {
  if (option) return resolve(option);
  if (env.POLYVISOR_DATA) return resolve(env.POLYVISOR_DATA);
  const xdg = env.XDG_DATA_HOME && env.XDG_DATA_HOME.startsWith('/') ? env.XDG_DATA_HOME : join(homedir(), '.local', 'share');
  return join(xdg, 'polyvisor');
}

/**
 * Where Polyvisor keeps what it can compute again (the CLI's compiled code, the KVM probe's
 * answer): $XDG_CACHE_HOME/polyvisor, by default ~/.cache/polyvisor. Deleting it is harmless.
 */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_CACHE_HOME && env.XDG_CACHE_HOME.startsWith('/') ? env.XDG_CACHE_HOME : join(homedir(), '.cache');
  return join(xdg, 'polyvisor');
}
