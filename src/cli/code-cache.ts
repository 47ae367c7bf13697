/**
 * Asks the launcher (./main.cts) to write V8's code cache now rather than when the process
 * exits. The launcher writes the cache on the first run after a build, with the code compiled
 * by then; every later start loads all of it before running anything. `polyvisor run` asks
 * while QEMU sets the machine up, so that the cache holds the code on its way to the guest's
 * start and not the code of the hours the guest may then run: less to load on each start.
 * Does nothing when the launcher is not writing a cache this run (or the CLI runs from its
 * modules).
 */
const KEY = Symbol.for('polyvisor.saveCodeCache');

export function saveCodeCache(): void {
  const save = (globalThis as Record<symbol, unknown>)[KEY];
  if (typeof save === 'function') save();
}
