/**
 * `polyvisor guest adapt` and `polyvisor guest undo`: make a guest boot on another
 * hypervisor, offline, and take it back. Parses, calls the library (src/guest/adapt.ts,
 * src/guest/manifest.ts), prints.
 */
import { Command } from 'commander';
import { open } from 'node:fs/promises';
import { PolyvisorError } from '../errors.js';
import { adaptGuest, resolveAdaptSource } from '../guest/adapt.js';
import { findManifestFor, undoAdaptation, type Change } from '../guest/manifest.js';
import { normalizeMac } from '../guest/edit-network.js';
import { TARGET_NAMES } from '../guest/targets.js';
import { out, withSignal } from './run.js';

function changeLine(c: Change): string {
  if (c.kind === 'raw') return `  raw       disk ${c.disk} bytes ${c.offset}-${c.offset + c.length - 1}: ${c.why}`;
  return `  ${c.kind.padEnd(9)} ${c.guestPath}: ${c.why}`;
}

/** One line per change, runs of more than three alike (GRUB's modules) as one line for their folder. */
function changeLines(changes: Change[]): string[] {
  const lines: string[] = [];
  for (let i = 0; i < changes.length; ) {
    const c = changes[i]!;
    let j = i + 1;
    while (j < changes.length && changes[j]!.kind === c.kind && changes[j]!.why === c.why && c.kind !== 'raw') j++;
    if (j - i > 3 && c.kind !== 'raw') {
      const dir = c.guestPath.slice(0, c.guestPath.lastIndexOf('/') + 1);
      lines.push(`  ${c.kind.padEnd(9)} ${dir} (${j - i} files): ${c.why}`);
    } else for (let k = i; k < j; k++) lines.push(changeLine(changes[k]!));
    i = j;
  }
  return lines;
}

function collectMac(value: string, previous: string[]): string[] {
  const m = normalizeMac(value);
  if (!m) throw new PolyvisorError('ERR_USAGE', `--mac ${value}: not a MAC address (aa:bb:cc:dd:ee:ff)`);
  return [...previous, m];
}

/** Is `path` a manifest (JSON) rather than a disk? Disk images never start with "{". */
async function isManifest(path: string): Promise<boolean> {
  if (path.toLowerCase().endsWith('.json')) return true;
  try {
    const fh = await open(path, 'r');
    try {
      const b = Buffer.alloc(1);
      await fh.read(b, 0, 1, 0);
      return b[0] === 0x7b;
    } finally {
      await fh.close();
    }
  } catch {
    return false;
  }
}

/** Adds `adapt` and `undo` to the `guest` command group. */
export function addAdaptCommands(guest: Command): void {
  guest
    .command('adapt')
    .description('make a guest boot on another hypervisor (Linux: drivers into its initramfs, devices by UUID, consoles, boot loader, network names, agents; Windows: which storage drivers start at boot, other hypervisors\' tools disabled); every change recorded for undo')
    .argument('<source>', "the guest's disk image, or a VM descriptor (its disks and NIC MACs are used)")
    .requiredOption('--for <target>', `the hypervisor to adapt it for: ${TARGET_NAMES.join(', ')}`)
    .option('--in-place', 'write into the source disks themselves (default: a qcow2 overlay over each, the source untouched)')
    .option('--out <path>', 'the overlay file (one disk) or folder (several); default beside the source, <name>.<target>.qcow2')
    .option('--manifest <path>', 'where the manifest goes (default beside the output, <output>.manifest.json)')
    .option('--mac <address>', "the NIC's MAC address, once per NIC in order (default: from the VM descriptor)", collectMac, [] as string[])
    .option('--virtio-win <folder>', "Windows for kvm: an extracted virtio-win ISO, whose viostor drivers the guest needs (none ships with Polyvisor)")
    .option('--json', 'print machine-readable JSON')
    .option('--allow-outside-paths', "follow disk files and backing files outside their descriptor's or image's folder")
    .action(async (source: string, o) => {
      const src = await resolveAdaptSource(source, { allowOutsidePaths: o.allowOutsidePaths });
      const macs: string[] = o.mac;
      const r = await withSignal((signal) => adaptGuest(src.disks, {
        target: o.for,
        inPlace: !!o.inPlace,
        out: o.out,
        manifestPath: o.manifest,
        nics: macs.length ? macs.map((mac) => ({ mac })) : src.nics,
        allowOutsidePaths: o.allowOutsidePaths,
        virtioWin: o.virtioWin,
        signal,
      }));
      if (o.json) {
        out(JSON.stringify({ source, ...r }, null, 2));
        return;
      }
      out(`adapted ${source} for ${r.target} in ${r.seconds.toFixed(1)} s: ${r.changes.length} change${r.changes.length === 1 ? '' : 's'}${r.changes.length === 0 ? ' (it was adapted already)' : ''}`);
      for (const l of changeLines(r.changes)) out(l);
      out(`output:   ${r.outputs.join(', ')}`);
      out(`manifest: ${r.manifest}  (polyvisor guest undo ${r.manifest})`);
      for (const n of r.notes) out(`note: ${n}`);
      for (const p of r.problems) process.stderr.write(`polyvisor: warning: ${p}\n`);
    });

  guest
    .command('undo')
    .description('take back an adaptation: the disk as it was, byte for byte when nothing wrote to it since, else file by file')
    .argument('<manifest>', 'the manifest adapt wrote, or the adapted disk (its manifest is found beside it)')
    .option('--json', 'print machine-readable JSON')
    .action(async (arg: string, o) => {
      const manifest = (await isManifest(arg)) ? arg : await findManifestFor(arg);
      const r = await undoAdaptation(manifest);
      if (o.json) {
        out(JSON.stringify(r, null, 2));
        return;
      }
      if (r.method === 'nothing') out(`nothing to undo: ${r.skipped.join('; ')}`);
      else if (r.method === 'exact') out(`undone exactly: ${r.bytes} bytes put back; the disk is as it was before adaptation (${r.manifest})`);
      else {
        out(`undone change by change: ${r.restored} restored, ${r.skipped.length} left alone (${r.manifest})`);
        for (const s of r.skipped) out(`  left alone: ${s}`);
      }
    });
}
