/**
 * `polyvisor verify SOURCE [--expect TEXT] [--timeout S] [--out DIR] [--accel kvm|tcg] [--json]`: boots a VM headless on the local QEMU engine (its disks behind
 * temporary overlays, never written) and reports whether it came up. Exit 0 when the expected
 * text appeared, 1 otherwise; the console log and a screenshot are kept either way.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, Option } from 'commander';
import { PolyvisorError } from '../errors.js';
import { out, withSignal } from './run.js';

export function verifyCommand(): Command {
  return new Command('verify')
    .description('boot a VM headless on the local QEMU engine and check that it comes up (its disks are not written)')
    .argument('<source>', 'descriptor file, package, or exported VM folder')
    .option('--expect <text>', 'text the serial console must show (default: a login prompt)')
    .option('--timeout <seconds>', 'give up after this many seconds', '120')
    .option('--out <dir>', 'folder for console.log and screenshot.png (default: a new temporary folder)')
    .addOption(new Option('--accel <accel>', 'force the accelerator (default: kvm when a probe guest runs under it, else tcg)').choices(['kvm', 'tcg']))
    .option('--json', 'print machine-readable JSON')
    .option('--allow-outside-paths', "follow disk files outside the descriptor's folder")
    .action(async (path: string, o) => {
      const timeout = Number(o.timeout);
      if (!Number.isFinite(timeout) || timeout <= 0 || timeout > 86_400) throw new PolyvisorError('ERR_USAGE', `--timeout ${o.timeout}: give a number of seconds (at most 86400)`);
      const outDir: string = o.out ?? (await mkdtemp(join(tmpdir(), 'pv-verify-')));
      // loaded here, not at start-up: the VM layer is only needed when a VM is verified
      const { openVmSource } = await import('../vm/source.js');
      const { verifyVm } = await import('../verify/verify.js');
      const source = await openVmSource(path, { allowOutsidePaths: o.allowOutsidePaths });
      try {
        const r = await withSignal((signal) => verifyVm(source, { expect: o.expect, timeoutMs: timeout * 1000, outDir, signal, accel: o.accel, allowOutsidePaths: o.allowOutsidePaths }));
        if (o.json) out(JSON.stringify({ source: path, ...r }, null, 2));
        else {
          const what = r.ok ? `came up (${JSON.stringify(r.matched)})` : `FAILED: ${r.reason}${r.detail ? ` (${r.detail})` : ''}${r.matched ? `: ${r.matched}` : ''}`;
          out(`${source.spec.name}: ${what} after ${r.seconds} s`);
          for (const d of r.disks ?? []) out(`  disk ${d.index}: ${d.label} (${d.via === 'nbd' ? 'served over NBD' : 'read by QEMU'}, behind an overlay)`);
          out(`  console log: ${r.consoleLog}`);
          out(`  screenshot:  ${r.screenshot ?? '(none: QEMU had already ended)'}`);
        }
        if (!r.ok) process.exitCode = 1;
      } finally {
        await source.close();
      }
    });
}
