/**
 * `polyvisor guest inspect SOURCE [--json]`: what an installed guest is and whether it boots
 * on each hypervisor, read offline from its disks (a disk image of any format, a VM
 * descriptor, a package or an exported VM folder). Nothing is written and nothing from the
 * guest is run.
 */
import { Command } from 'commander';
import type { GuestReport, KernelReport } from '../guest/inspect.js';
import { TARGETS } from '../guest/verdict.js';
import { out } from './run.js';
import type { WindowsFacts } from '../guest/windows/inspect.js';

function size(n: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} bytes` : `${v.toFixed(1)} ${units[u]}`;
}

function kernelLines(k: KernelReport): string[] {
  const lines = [`  ${k.version}${k.default ? ' (default)' : ''}${k.image ? `  ${k.image}` : '  (no kernel image in /boot)'}`];
  const hv = k.drivers.filter((d) => d.family !== 'fs');
  const builtin = hv.filter((d) => d.status === 'builtin').map((d) => d.name);
  const modules = hv.filter((d) => d.status === 'module').map((d) => d.name);
  const absent = hv.filter((d) => d.status === 'absent').map((d) => d.name);
  if (builtin.length) lines.push(`    built in:   ${builtin.join(' ')}`);
  if (modules.length) lines.push(`    modules:    ${modules.join(' ')}`);
  if (absent.length) lines.push(`    absent:     ${absent.join(' ')}`);
  if (k.initramfs) {
    const ir = k.initramfs;
    if (ir.error) lines.push(`    initramfs ${ir.path}: not read: ${ir.error}`);
    else {
      const segs = ir.segments.map((s) => `${s.compression} ${size(s.length)}${s.compression === 'none' ? '' : ` -> ${size(s.size)}`}, ${s.entries} entries`).join(' + ');
      lines.push(`    initramfs ${ir.path}: ${ir.generator}, ${ir.compression}${ir.microcode ? ', early microcode' : ''} (${segs})`);
      const carried = k.drivers.filter((d) => d.initramfs === 'included' && d.family !== 'fs').map((d) => d.name);
      lines.push(`      carries ${carried.length ? carried.join(' ') : 'no hypervisor disk or NIC driver'}; ${ir.modules.length} modules in all`);
      for (const d of ir.missingDeps) lines.push(`      ${d.module} lacks its dependencies ${d.missing.join(' ')}`);
    }
  }
  for (const w of k.warnings) lines.push(`    note: ${w}`);
  return lines;
}

/** The report as text for a terminal. */
export function formatReport(r: GuestReport): string {
  const L: string[] = [];
  L.push(`Guest: ${r.source}`);
  for (const d of r.disks) L.push(`  disk ${d.index}: ${d.label} (${d.format}, ${size(d.virtualSize)}, ${d.partitionScheme === 'none' ? 'no partition table' : d.partitionScheme.toUpperCase()}${d.diskId ? ` ${d.diskId}` : ''})`);
  for (const v of r.volumes) {
    const id = [v.uuid && `UUID=${v.uuid}`, v.label && `LABEL=${v.label}`, v.partuuid && `PARTUUID=${v.partuuid}`].filter(Boolean).join(' ');
    L.push(`  ${v.name}: ${v.type}, ${size(v.size)}${id ? `, ${id}` : ''}${v.mountPoint ? `, mounted at ${v.mountPoint}` : ''}${v.readable ? '' : ' (not read)'}`);
  }
  const os = r.os;
  L.push('', `OS: ${os.prettyName ?? os.name ?? os.family}${os.distribution ? ` (${os.distribution}${os.version ? ` ${os.version}` : ''}${os.debianVersion ? `, debian_version ${os.debianVersion}` : ''})` : ''}`);
  if (r.windows) L.push(...windowsLines(r.windows));
  if (r.kernels.length) {
    L.push('', 'Kernels:');
    for (const k of r.kernels) L.push(...kernelLines(k));
  }
  const b = r.boot;
  if (r.windows) {
    L.push(...verdictLines(r));
    return L.join('\n');
  }
  const mbr = b.mbr.present ? `boot code in the MBR${b.mbr.loader ? ` (${b.mbr.loader}${b.mbr.coreImage ? `, core.img at sector ${b.mbr.coreImage.lba}${b.mbr.coreImage.present ? '' : ' MISSING'}` : ''})` : ' (not recognised)'}` : 'no boot code in the MBR';
  L.push('', `Boot: ${b.style}, firmware ${b.firmware}; ${mbr}`);
  for (const e of b.esps) L.push(`  EFI system partition ${e.volume}: ${e.loaders.length ? e.loaders.join(' ') : 'no loader'}${e.removable ? '' : ' (no EFI/BOOT/BOOTX64.EFI)'}`);
  for (const c of b.configs) L.push(`  ${c.kind} configuration ${c.path} on ${c.volume}`);
  L.push(`  pygrub can read a configuration: ${b.pygrubReadable ? 'yes' : 'no'}`);
  for (const e of b.entries) L.push(`  entry ${e.id}${e.id === b.defaultEntry ? ' (default)' : ''}: ${e.title}: ${e.kernel ?? '(no kernel)'} ${e.cmdline}`);
  if (r.naming.length) {
    L.push('', 'Device names:');
    for (const n of r.naming) L.push(`  ${n.where}: ${n.spec}${n.target ? ` (${n.target})` : ''}: by ${n.naming}${n.prefix ? ` /dev/${n.prefix}*` : ''}${n.volume ? ` -> ${n.volume}` : ''}${n.optional ? ', optional' : ''}`);
  }
  if (r.cmdline.grubDefault !== undefined) L.push(`  /etc/default/grub: ${r.cmdline.grubDefault || '(empty)'}`);
  const c = r.consoles;
  L.push('', `Consoles: kernel ${c.cmdline.length ? c.cmdline.join(', ') : '(no console=)'}; gettys ${c.gettys.length ? c.gettys.join(', ') : 'none enabled'}${c.inittab.length ? `; inittab ${c.inittab.join(', ')}` : ''}`);
  const n = r.network;
  L.push(`Network: ${n.interfaces.length ? n.interfaces.map((i) => `${i.name} (${i.source}${i.method ? ` ${i.method}` : ''}${i.mac ? ` ${i.mac}` : ''})`).join(', ') : 'no interface configured besides lo'}; predictable names: ${n.predictableNames === true ? 'yes' : n.predictableNames === false ? 'no' : 'unknown'} (${n.predictableReason})`);
  for (const p of n.persistentRules) L.push(`  ${p.file}: ${p.name} = ${p.mac}`);
  L.push(`Packages: ${r.packages.manager === 'none' ? 'no package database found' : `${r.packages.manager}${r.packages.count ? `, ${r.packages.count} installed` : ''}`}${r.packages.note ? ` (${r.packages.note})` : ''}`);
  L.push(`Hypervisor agents: ${r.agents.length ? '' : 'none'}`);
  for (const a of r.agents) L.push(`  ${a.name} (${a.hypervisor})${a.version ? ` ${a.version}` : ''}: ${a.services.map((s) => `${s.unit} ${s.enabled ? 'enabled' : 'not enabled'}`).join(', ') || 'no units'}`);
  L.push(...verdictLines(r));
  return L.join('\n');
}

function verdictLines(r: GuestReport): string[] {
  const L: string[] = ['', 'Verdicts:'];
  for (const t of TARGETS) {
    const v = r.verdicts[t];
    L.push(`  ${t.padEnd(12)} ${v.boots ? 'boots' : 'BLOCKED'} (disk on ${v.controller}, ${v.firmware === 'pv' ? 'PV boot' : v.firmware.toUpperCase()})`);
    for (const x of v.blockers) L.push(`    x ${x.what}`, `      why: ${x.why}`, `      fix: ${x.fix}`);
    for (const x of v.warnings) L.push(`    ! ${x.what}`, `      why: ${x.why}`, `      fix: ${x.fix}`);
  }
  if (r.warnings.length) {
    L.push('', 'Warnings:');
    for (const w of r.warnings) L.push(`  ${w}`);
  }
  return L;
}

/** A Windows guest: what its registry says (the Linux sections do not apply). */
function windowsLines(w: WindowsFacts): string[] {
  const o = w.os;
  const L = [`  ${[o.edition && `edition ${o.edition}`, o.installationType, o.build && `build ${o.build}`, o.arch].filter(Boolean).join(', ')}; Windows on ${w.volume}, ${w.controlSet}`];
  const b = w.boot;
  L.push('', `Boot: ${b.bios ? `BIOS (${b.bios.bootmgr ? 'bootmgr' : 'no bootmgr'} on ${b.bios.volume}${b.bios.bcd ? ', BCD present' : ', no BCD'})` : 'no BIOS boot files'}; ${b.uefi ? `UEFI (ESP ${b.uefi.volume}${b.uefi.loader ? `, ${b.uefi.loader}` : ', no loader'})` : 'no UEFI boot files'}`);
  L.push('', 'Storage, bus and network drivers (start type, file):');
  for (const d of w.drivers) L.push(`  ${d.name.padEnd(10)} ${d.what}: ${d.present ? `${d.startName}${d.file ? `, ${d.file}${d.fileExists ? '' : ' MISSING'}` : ''}${d.atBoot ? ', loaded at boot' : ''}` : 'not installed'}`);
  L.push('', `Hypervisor tools: ${w.tools.length ? '' : 'none'}`);
  for (const t of w.tools) L.push(`  ${t.name} (${t.hypervisor}): ${t.enabled ? 'enabled' : 'disabled'} (${t.services.map((s) => `${s.name} ${s.start}`).join(', ')})`);
  return L;
}

export function guestCommand(): Command {
  const guest = new Command('guest').description('look inside a VM\'s guest operating system offline (no appliance, nothing from the guest is run)');
  guest
    .command('inspect')
    .description('report the guest OS, kernels and drivers, initramfs, boot path, device names, consoles, network and agents, and whether it boots on each hypervisor')
    .argument('<source>', 'a disk image (any format), a VM descriptor, a package or an exported VM folder')
    .option('--json', 'print machine-readable JSON')
    .option('--allow-outside-paths', "follow disk files outside the descriptor's folder")
    .action(async (source: string, o: { json?: boolean; allowOutsidePaths?: boolean }) => {
      // loaded here: only guest commands need the guest readers
      const { inspect } = await import('../guest/inspect.js');
      const report = await inspect(source, { allowOutsidePaths: o.allowOutsidePaths });
      out(o.json ? JSON.stringify(report, null, 2) : formatReport(report));
    });
  return guest;
}
