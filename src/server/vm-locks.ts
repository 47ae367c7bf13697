/**
 * One operation at a time per VM. Two requests that change the same VM at once (a start while
 * a move copies its disks, two stops) would race in the host layer; the second is refused with
 * ERR_VM_STATE (409) naming what holds the VM, instead of waiting behind a job that may take
 * minutes. Held for the whole of a job on the VM, or of a quick operation's request.
 */
import { PolyvisorError } from '../errors.js';

export class VmLocks {
  readonly #held = new Map<string, string>();

  /** Takes the VM for `holder` ("start", "job 1234..."); throws when something else holds it. */
  acquire(name: string, holder: string): () => void {
    const by = this.#held.get(name);
    if (by !== undefined) throw new PolyvisorError('ERR_VM_STATE', `${name} is busy: ${by} is in progress`);
    this.#held.set(name, holder);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#held.delete(name);
    };
  }

  async with<T>(name: string, holder: string, fn: () => Promise<T>): Promise<T> {
    const release = this.acquire(name, holder);
    try {
      return await fn();
    } finally {
      release();
    }
  }
}
