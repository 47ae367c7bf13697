/**
 * POLYVISOR_TRACE=1: one line on standard error at each step of a command's critical path,
 * stamped with the milliseconds since this process began (performance.now() counts from the
 * time origin Node sets as it starts), so a user or a benchmark sees where start-up time goes.
 */
const enabled = process.env.POLYVISOR_TRACE === '1';

export function trace(step: string): void {
  if (enabled) process.stderr.write(`polyvisor: trace +${performance.now().toFixed(1)} ms ${step}\n`);
}
