/**
 * QEMU processes known by their pid: a detached QEMU outlives the Polyvisor process that
 * started it, and a later command finds it again by the pid the store recorded. A pid alone can be reused by the
 * system after QEMU ends, so a pid counts as "our QEMU" only while /proc/<pid>/cmdline still
 * names the VM's own QMP socket: no other process has that path on its command line.
 */
import { readFileSync } from 'node:fs';

/** True while `pid` runs and its command line names `marker` (the VM's QMP socket path). */
export function qemuAlive(pid: number, marker: string): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 1) return false;
  try {
    // arguments are NUL-separated; QEMU's own option values contain the path verbatim
    return readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes(marker);
  } catch {
    return false;
  }
}

/**
 * Resolves once the process is gone (polled: it is not our child, so there is no exit event).
 * The first look is after `intervalMs`: callers have just started the process or seen it
 * alive, and reading /proc/<pid>/cmdline of a QEMU that is loading its libraries waits for
 * its memory map lock (about 2 ms of every start).
 */
export function whenGone(pid: number, marker: string, intervalMs = 100): { done: Promise<void>; cancel(): void } {
  let timer: NodeJS.Timeout | undefined;
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  const poll = () => {
    if (!qemuAlive(pid, marker)) return resolveDone();
    // a ref'd timer: a caller awaiting `done` (a kill, a stop) keeps the process alive until
    // QEMU is gone; cancel() ends the polling
    timer = setTimeout(poll, intervalMs);
  };
  timer = setTimeout(poll, intervalMs);
  return {
    done,
    cancel: () => {
      if (timer) clearTimeout(timer);
      resolveDone();
    },
  };
}
