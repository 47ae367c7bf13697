/**
 * POLYVISOR_TRACE=1: one line on standard error at each step of a command's critical path,
 * stamped with the milliseconds since this process began (performance.now() counts from the
 * time origin Node sets as it starts), so a user or a benchmark sees where start-up time goes.
 */
import { writeSync } from 'node:fs';

const enabled = process.env.POLYVISOR_TRACE === '1';

export function trace(step: string): void {
  if (!enabled) return;
  // straight to file descriptor 2: process.stderr is a stream whose set-up, on first use,
  // would itself be part of the timeline it prints (several ms)
  try {
    writeSync(2, `polyvisor: trace +${performance.now().toFixed(1)} ms ${step}\n`);
  } catch {
    // a full or closed pipe: the timeline is not worth failing the command for
  }
}
