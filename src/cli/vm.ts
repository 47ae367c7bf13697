/**
 * `polyvisor vm ...`: inspect a VM from any descriptor, package or exported folder, and
 * convert it into what another hypervisor imports. Parses, calls the library, prints.
 */
import { Command, Option } from 'commander';
import { formatSize } from '../util/size.js';
import { adaptationLines } from './adaptation.js';
import type { ConversionNote, VmSource } from '../vm/codec.js';
import { convertVm } from '../vm/convert.js';
import { CODECS, PACKAGES, targetNames } from '../vm/registry.js';
import { openVmSource } from '../vm/source.js';
import { openEstate } from './machines.js';
import { createProgress } from './progress.js';
import { out, withSignal } from './run.js';

async function withSource<T>(path: string, opts: { allowOutsidePaths?: boolean; kind?: string }, fn: (s: VmSource) => Promise<T>): Promise<T> {
  const s = await openVmSource(path, opts);
  try {
    return await fn(s);
  } finally {
    await s.close();
  }
}

function noteLine(n: ConversionNote): string {
  const change = n.action === 'changed' ? ` (${JSON.stringify(n.from)} -> ${JSON.stringify(n.to)})` : '';
  return `  ${n.action} ${n.setting}${change}: ${n.reason}`;
}

export function vmCommand(): Command {
  const vm = new Command('vm').description('inspect VMs from any hypervisor\'s descriptor or package, and convert them for another');
  const kinds = [...CODECS.filter((c) => c.decode).map((c) => c.name), ...PACKAGES.map((p) => p.name), 'disk'];

  vm.command('inspect')
    .description('show the VM a descriptor, package (.ova, .xva) or exported folder describes')
    .argument('<source>', 'descriptor file, package, or exported VM folder')
    .addOption(new Option('--kind <kind>', 'force the descriptor or package kind instead of probing').choices(kinds))
    .option('--json', 'print machine-readable JSON (numbers are bytes)')
    .option('--verify', 'read the whole package and verify every checksum it carries (XVA chunks; OVA manifests are always verified)')
    .option('--allow-outside-paths', "follow disk files outside the descriptor's folder")
    .action(async (path: string, o) => {
      await withSource(path, { allowOutsidePaths: o.allowOutsidePaths, kind: o.kind }, async (s) => {
        if (o.verify) {
          const pkg = PACKAGES.find((p) => p.name === s.kind);
          if (pkg?.verify) {
            const progress = await createProgress(!process.stdout.isTTY ? false : true, 'verify');
            const v = await withSignal((signal) => pkg.verify!(path, { signal, onProgress: (d, t) => progress.update(d, t) })).finally(() => progress.stop());
            if (!o.json) out(`verified ${v.verified} checksums in ${path}`);
          }
        }
        const disks: Array<Record<string, unknown>> = [];
        for (const d of s.disks) {
          const entry: Record<string, unknown> = { index: d.index, file: d.label };
          try {
            const img = await d.open();
            entry.format = img.format;
            entry['virtual-size'] = img.virtualSize;
            await img.close();
          } catch (e) {
            entry.error = (e as Error).message;
          }
          disks.push(entry);
        }
        if (o.json) {
          out(JSON.stringify({ source: path, kind: s.kind, spec: s.spec, disks, notes: s.notes }, null, 2));
          return;
        }
        const sp = s.spec;
        out(`${sp.name} (${s.kind}${sp.uuid ? `, ${sp.uuid}` : ''})`);
        out(`  guest:    ${sp.os.family}${sp.os.variant ? ` (${sp.os.variant})` : ''}, ${sp.virtualization}`);
        out(`  firmware: ${sp.firmware.type}${sp.firmware.secureBoot ? ' + secure boot' : ''}${sp.firmware.tpm ? ' + TPM' : ''}`);
        out(`  cpus:     ${sp.cpu.count}${sp.cpu.sockets ? ` (${sp.cpu.sockets} sockets x ${sp.cpu.cores ?? 1} cores)` : ''}`);
        out(`  memory:   ${formatSize(sp.memory.bytes)}${sp.memory.maxBytes ? ` (up to ${formatSize(sp.memory.maxBytes)})` : ''}`);
        sp.disks.forEach((d, i) => {
          const info = disks.find((x) => x.index === i);
          const size = info?.['virtual-size'] !== undefined ? `, ${formatSize(info['virtual-size'] as number)}` : '';
          const err = info?.error ? `  [cannot open: ${info.error}]` : '';
          out(`  disk ${i}:   ${d.device} on ${d.bus}${d.controllerModel ? `/${d.controllerModel}` : ''}${d.target ? ` as ${d.target}` : ''}: ${d.file ?? '(empty)'}${info?.format ? ` (${info.format}${size})` : ''}${err}`);
        });
        sp.nics.forEach((n, i) => out(`  nic ${i}:    ${n.model ?? 'default model'}${n.mac ? ` ${n.mac}` : ''}${n.network ? ` on ${n.network}` : ''}`));
        for (const n of s.notes) out(noteLine(n));
      });
    });

  vm.command('convert')
    .description('convert a VM into the descriptor and disks (or package) another hypervisor imports')
    .argument('<source>', 'descriptor file, package, or exported VM folder')
    .requiredOption('--to <target>', `target: ${targetNames().join(', ')}`)
    .requiredOption('--out <dir>', 'output folder (created if missing)')
    .option('--disk-format <fmt>', 'disk format for the target (default: the target\'s own)')
    .option('--descriptor-only', 'translate the descriptor alone; disks stay where they are')
    .option('--no-adapt', 'convert the guest as it is (default: a Linux guest from another hypervisor is adapted for the target in the converted disks: see polyvisor guest adapt)')
    .option('--adapt-for <target>', 'adapt for this target instead of the one the output implies (kvm, xen-pv, xen-hvm, vmware, hyperv-gen1, hyperv-gen2); xen-pv makes an HVM VM a PV one booted by pygrub')
    .option('-p, --progress', 'show a progress bar')
    .option('--force', 'replace existing files in the output folder')
    .option('--json', 'print machine-readable JSON')
    .option('--allow-outside-paths', "follow disk files outside the descriptor's folder")
    .action(async (path: string, o) => {
      await withSource(path, { allowOutsidePaths: o.allowOutsidePaths }, async (s) => {
        const progress = await createProgress(!!o.progress, 'convert');
        const r = await withSignal((signal) =>
          convertVm(s, o.to, o.out, {
            diskFormat: o.diskFormat,
            descriptorOnly: !!o.descriptorOnly,
            force: !!o.force,
            allowOutsidePaths: o.allowOutsidePaths,
            adapt: o.adapt,
            adaptFor: o.adaptFor,
            signal,
            onProgress: (d, t) => progress.update(d, t),
          }),
        ).finally(() => progress.stop());
        if (o.json) {
          out(JSON.stringify({ source: path, kind: s.kind, ...r, adaptation: r.adaptation ?? null }, null, 2));
          return;
        }
        out(`converted ${s.spec.name} (${s.kind}) for ${r.target}:`);
        for (const f of r.files) out(`  wrote ${f}`);
        for (const l of adaptationLines(r.adaptation)) out(l);
        if (r.notes.length) {
          out(`${r.notes.length} setting(s) the target could not carry as they were:`);
          for (const n of r.notes) out(noteLine(n));
        } else out('every setting was carried across.');
      });
    });
  vm.command('import')
    .description('bring a VM into the store from any descriptor, package or exported folder, ready to start')
    .argument('<source>', 'descriptor file, package, or exported VM folder')
    .option('--name <name>', "the VM's name in the store (default: from the descriptor)")
    .option('--host <host>', 'put it on this host (default: the local engine; polyvisor host ls lists them)')
    .option('--copy', "convert every disk into the store (default: disks QEMU reads stay where they are, behind an overlay; others are converted)")
    .option('--persist', 'the guest writes to the source disks themselves (default: they are never written)')
    .option('--no-adapt', 'import the guest as it is (default: a Linux guest from another hypervisor is adapted for the host: KVM on the local engine, Xen PV on a Xen host; see polyvisor guest adapt)')
    .option('-p, --progress', 'show a progress bar while disks are converted')
    .option('--json', 'print machine-readable JSON')
    .option('--allow-outside-paths', "follow files outside the descriptor's folder")
    .action(async (path: string, _o, cmd: Command) => {
      const o = cmd.optsWithGlobals();
      const host = await openEstate(o);
      try {
        const progress = await createProgress(!!o.progress, 'import');
        const r = await withSignal((signal) =>
          host.import(path, { host: o.host, name: o.name, adapt: o.adapt, copy: !!o.copy, persist: !!o.persist, allowOutsidePaths: o.allowOutsidePaths, signal, onProgress: (d, t) => progress.update(d, t) }),
        ).finally(() => progress.stop());
        if (o.json) {
          out(JSON.stringify({ name: r.vm.name, uuid: r.vm.uuid, source: r.vm.source, sourceKind: r.vm.sourceKind, disks: r.vm.disks, notes: r.notes, adaptation: r.adaptation ?? null }, null, 2));
          return;
        }
        out(`imported ${r.vm.name} from ${path} (${r.vm.sourceKind}) onto ${r.vm.host}`);
        for (const d of r.vm.disks) {
          const how = { overlay: 'read in place, guest writes go to an overlay', copy: 'converted into the store', persist: 'read and written in place (--persist)', host: `copied to ${r.vm.host} as ${d.path}` }[d.mode];
          out(`  disk ${d.index}: ${d.label}: ${how}`);
        }
        for (const n of r.notes) out(noteLine(n));
        for (const l of adaptationLines(r.adaptation)) out(l);
        out(`start it with: polyvisor start ${r.vm.name}`);
      } finally {
        await host.close();
      }
    });
  return vm;
}
