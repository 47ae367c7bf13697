/** How the CLI shows what guest adaptation did inside vm convert, vm import and move. */
import type { VmAdaptation } from '../vm/adapt.js';

/** What adaptation did, in lines: the manifest and its changes, or why nothing was adapted; then its warnings. */
export function adaptationLines(a: VmAdaptation | undefined): string[] {
  if (!a) return [];
  const lines: string[] = [];
  if (a.manifest) {
    const undo = a.staged ? 'a record: the adapted disks were packed or sent on' : 'polyvisor guest undo takes them back';
    lines.push(`  guest adapted for ${a.target}: ${a.changes} change(s), recorded in ${a.manifest} (${undo})`);
  }
  else if (a.skipped) lines.push(`  guest not adapted: ${a.skipped}`);
  for (const p of a.problems) lines.push(`  warning: ${p}`);
  return lines;
}
