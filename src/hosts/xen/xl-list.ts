/**
 * `xl list` output (xl(1), "list"): a header line, then one line per domain:
 *
 *   Name                                        ID   Mem VCPUs	State	Time(s)
 *   Domain-0                                     0  1024     2     r-----     146.3
 *
 * xl prints the name left-aligned in 40 columns and may let a long name (or one with spaces)
 * run into the next column, so each line is read from the right: the last five fields are
 * fixed, and the name is whatever comes before them.
 *
 * State holds one letter per flag, '-' when clear, in this order (xl(1)):
 *   r running, b blocked (idle or waiting for I/O), p paused, s shut down (the guest asked and
 *   the domain is being torn down), c crashed, d dying.
 */
import { PolyvisorError } from '../../errors.js';
import type { VmState } from '../driver.js';

export interface XlDomain {
  name: string;
  domid: number;
  memoryMiB: number;
  vcpus: number;
  /** the State column as printed: "r-----" */
  flags: string;
  /**
   * What the flags mean for the driver: 'defined' when the domain is ending (shut down,
   * crashed or dying: it runs no more and only waits to be cleaned up); paused when p is set;
   * running otherwise (r, b, or nothing: runnable and waiting for a CPU).
   */
  state: VmState;
  cpuSeconds: number;
}

const LINE = /^(.*?)\s+(\d{1,10})\s+(\d{1,12})\s+(\d{1,6})\s+([-a-z]{6})\s+(\d{1,15}(?:\.\d+)?)\s*$/;
/** more lines than any host has domains (Xen's domid space is 0..32751) */
const MAX_LINES = 40_000;

function stateOf(flags: string): VmState {
  // Xen pauses a domain once it has shut down: "--ps--" is ending, not paused by a user
  if (/[scd]/.test(flags)) return 'defined';
  if (flags.includes('p')) return 'paused';
  return 'running';
}

/** Parses `xl list`; ERR_HOST naming the line when the output is not what xl prints. */
export function parseXlList(text: string, host: string): XlDomain[] {
  const lines = text.split('\n').map((l) => l.replace(/\r$/, ''));
  while (lines.length && lines[lines.length - 1]!.trim() === '') lines.pop();
  if (lines.length > MAX_LINES) throw new PolyvisorError('ERR_HOST', `host ${host}: xl list printed ${lines.length} lines, more than a host has domains`);
  const header = lines.shift() ?? '';
  if (!/^Name\s+ID\s+Mem\s+VCPUs\s+State\s+Time\(s\)/.test(header)) {
    throw new PolyvisorError('ERR_HOST', `host ${host}: xl list printed an unexpected header: ${JSON.stringify(header.slice(0, 120))}`);
  }
  return lines.map((line, i) => {
    const m = LINE.exec(line);
    if (!m || m[1]!.trim() === '') throw new PolyvisorError('ERR_HOST', `host ${host}: xl list line ${i + 2} is not a domain line: ${JSON.stringify(line.slice(0, 120))}`);
    const flags = m[5]!;
    return {
      name: m[1]!.trim(),
      domid: Number(m[2]),
      memoryMiB: Number(m[3]),
      vcpus: Number(m[4]),
      flags,
      state: stateOf(flags),
      cpuSeconds: Number(m[6]),
    };
  });
}
