/**
 * Test helper: running the Debian tools the guest tests take as oracles (util-linux, dosfstools,
 * mtools, LVM2, e2fsprogs...), and reading blkid's answer.
 */
import { execFileSync } from 'node:child_process';

/** Runs a tool, feeding it `input`; its stdout, or an exception with its stderr. */
export function sh(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, {
    encoding: 'utf8',
    input,
    stdio: ['pipe', 'pipe', 'pipe'],
    // LVM complains about inherited descriptors; mtools about geometry of plain files
    env: { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1', MTOOLS_SKIP_CHECK: '1' },
  });
}

/** `blkid -p -o export` (low-level probing of the content, at `offset` if given) as a record */
export function blkid(file: string, offset?: number): Record<string, string> {
  const out: Record<string, string> = {};
  const args = ['-p', '-o', 'export', ...(offset === undefined ? [] : ['-O', String(offset)]), file];
  for (const line of sh('blkid', args).split('\n')) {
    const eq = line.indexOf('=');
    // export format: shell-quoted values ("F16\ LABEL")
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1).replace(/\\(.)/g, '$1');
  }
  return out;
}
