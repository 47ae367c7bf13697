/**
 * Writes a Hyper-V VM as NAME.ps1: a PowerShell script that, run on a Hyper-V host from the
 * folder holding it and the .vhdx/.vhd disks, creates the VM with the Hyper-V module's cmdlets
 * (New-VM, Set-VMProcessor, Set-VMMemory, Add-VMHardDiskDrive, Add-VMDvdDrive,
 * Add-VMNetworkAdapter, Set-VMNetworkAdapter, Set-VMFirmware / Set-VMBios, Set-VMKeyProtector,
 * Enable-VMTPM, Set-VMComPort).
 *
 * Why a script and not a .vmcx: the .vmcx format is undocumented and Import-VM checks it
 * against the host; the cmdlets are Hyper-V's public interface and say what they do.
 *
 * Every string is a single-quoted PowerShell literal, in which nothing is expanded and the only
 * special characters are the single quotes (' and the typographic ‘ ’ ‚ ‛, which PowerShell also
 * takes as quotes): each is doubled. The file is UTF-8 with a byte-order mark, which Windows
 * PowerShell 5.1 needs to read non-ASCII names (without one it assumes the ANSI code page).
 */
import type { ConversionNote, EncodeInput, EncodeResult } from '../codec.js';
import type { VmDisk } from '../spec.js';

/** A PowerShell single-quoted literal. */
export function psQuote(s: string): string {
  return `'${s.replace(/['\u2018\u2019\u201a\u201b]/g, (q) => q + q)}'`;
}

const MiB = 1024 * 1024;

interface Placed {
  index: number;
  disk: VmDisk;
  file?: string;
  type: 'IDE' | 'SCSI';
  c: number;
  u: number;
}

export function encodeHypervPs1(input: EncodeInput): EncodeResult {
  const { spec } = input;
  const notes: ConversionNote[] = [];
  const gen = spec.firmware.type === 'uefi' ? 2 : 1;
  const L: string[] = [];
  const q = psQuote;

  for (const [codec, settings] of Object.entries(spec.extra)) {
    const n = Object.keys(settings).length;
    if (codec !== 'hyperv' && n > 0) notes.push({ setting: `extra.${codec}`, action: 'dropped', reason: `${n} setting(s) only ${codec} understands have no Hyper-V cmdlet` });
  }

  // --- what Hyper-V cannot express
  if (spec.virtualization !== 'hvm') {
    notes.push({
      setting: 'virtualization',
      action: 'changed',
      from: spec.virtualization,
      to: 'hvm',
      reason: `Hyper-V only runs fully virtualised guests: a Xen ${spec.virtualization.toUpperCase()} guest boots only if its disk has a bootloader (GRUB) and its kernel the Hyper-V drivers (hv_vmbus, hv_storvsc, hv_netvsc); its /etc/fstab and console must not name xvd*/hvc0`,
    });
  }
  for (const k of ['kernel', 'ramdisk', 'cmdline', 'bootloader', 'bootloaderArgs'] as const) {
    if (spec.boot?.[k] !== undefined) notes.push({ setting: `boot.${k}`, action: 'dropped', reason: 'Hyper-V boots from the guest disk through its firmware; it cannot load a kernel from the host' });
  }
  if (spec.uuid) notes.push({ setting: 'uuid', action: 'dropped', from: spec.uuid, reason: 'New-VM assigns a new VM ID and BIOS GUID; no cmdlet sets them, so the guest sees a new SMBIOS UUID' });
  if (spec.cpu.sockets !== undefined || (spec.cpu.cores !== undefined && spec.cpu.cores > 1) || (spec.cpu.threads !== undefined && spec.cpu.threads > 1)) {
    notes.push({ setting: 'cpu', action: 'dropped', from: { sockets: spec.cpu.sockets, cores: spec.cpu.cores, threads: spec.cpu.threads }, reason: 'Hyper-V sets a processor count; it derives the socket/core topology itself (from the NUMA settings)' });
  }
  if (spec.os.variant) notes.push({ setting: 'os.variant', action: 'dropped', from: spec.os.variant, reason: 'Hyper-V records no guest OS type' });
  if (spec.firmware.tpm && gen === 1) notes.push({ setting: 'firmware.tpm', action: 'dropped', reason: 'a virtual TPM needs a generation 2 (UEFI) VM' });
  if (spec.firmware.secureBoot && gen === 1) notes.push({ setting: 'firmware.secureBoot', action: 'dropped', reason: 'secure boot needs a generation 2 (UEFI) VM' });
  for (const g of spec.graphics) {
    if (g.type !== 'vga' && g.type !== 'rdp') notes.push({ setting: 'graphics', action: 'dropped', from: g.type, reason: 'Hyper-V shows the console through VMConnect (RDP); it has no VNC or SPICE server' });
  }

  // --- memory: Hyper-V wants multiples of 2 MiB
  const round2 = (b: number): number => Math.ceil(b / (2 * MiB)) * 2 * MiB;
  const startup = round2(spec.memory.bytes);
  if (startup !== spec.memory.bytes) notes.push({ setting: 'memory.bytes', action: 'changed', from: spec.memory.bytes, to: startup, reason: 'Hyper-V memory is a multiple of 2 MiB' });
  const max = spec.memory.maxBytes !== undefined && spec.memory.maxBytes > spec.memory.bytes ? round2(spec.memory.maxBytes) : undefined;

  // --- disks: generation 1 boots from IDE 0:0, DVD on IDE 1; generation 2 has only SCSI
  const placed: Placed[] = [];
  const taken = new Set<string>();
  const take = (type: 'IDE' | 'SCSI', c: number, u: number): boolean => {
    const k = `${type}${c}:${u}`;
    if (taken.has(k)) return false;
    taken.add(k);
    return true;
  };
  const ideSlots: Array<[number, number]> = [[0, 0], [0, 1], [1, 0], [1, 1]];
  const nextScsi = (): [number, number] | undefined => {
    for (let c = 0; c < 4; c++) for (let u = 0; u < 64; u++) if (!taken.has(`SCSI${c}:${u}`)) return [c, u];
    return undefined;
  };
  const withFile = spec.disks.map((d, i) => ({ d, i, file: input.diskFiles[i]?.file ?? d.file }));
  const bootIdx = (() => {
    const byOrder = withFile.filter((x) => x.d.device === 'disk' && x.d.bootOrder !== undefined).sort((a, b) => a.d.bootOrder! - b.d.bootOrder!)[0];
    return (byOrder ?? withFile.find((x) => x.d.device === 'disk'))?.i;
  })();
  // the boot disk first, then CD-ROMs (which can only be on IDE in generation 1), then the rest
  const rank = (x: { d: VmDisk; i: number }): number => (x.i === bootIdx ? 0 : x.d.device === 'cdrom' ? 1 : 2);
  const ordered = [...withFile].sort((a, b) => rank(a) - rank(b) || a.i - b.i);
  let floppy: { i: number; file: string } | undefined;
  for (const { d, i, file } of ordered) {
    if (d.device === 'floppy' || d.bus === 'fdc') {
      if (gen === 2 || !file || floppy) notes.push({ setting: `disks[${i}]`, action: 'dropped', reason: gen === 2 ? 'a generation 2 VM has no floppy drive' : file ? 'Hyper-V has one floppy drive' : 'an empty floppy drive' });
      else floppy = { i, file };
      continue;
    }
    if (d.device === 'disk' && !file) {
      notes.push({ setting: `disks[${i}]`, action: 'dropped', reason: 'a disk with no file' });
      continue;
    }
    if (d.bus === 'usb') {
      notes.push({ setting: `disks[${i}].bus`, action: 'dropped', from: 'usb', reason: 'Hyper-V attaches no USB disks' });
      continue;
    }
    let slot: Placed | undefined;
    if (gen === 1) {
      // IDE for the boot disk and CD-ROMs (and other disks while slots last): the BIOS boots only from IDE
      const prefer: Array<[number, number]> = d.device === 'cdrom' ? [[1, 0], [1, 1], [0, 1]] : i === bootIdx ? [[0, 0], [0, 1], [1, 1], [1, 0]] : ideSlots;
      const own = d.bus === 'ide' && d.controller !== undefined && d.unit !== undefined && d.controller < 2 && d.unit < 2 && i !== bootIdx ? [[d.controller, d.unit] as [number, number]] : [];
      for (const [c, u] of [...own, ...prefer]) {
        if (take('IDE', c, u)) {
          slot = { index: i, disk: d, file, type: 'IDE', c, u };
          break;
        }
      }
      if (!slot && d.device === 'cdrom') {
        notes.push({ setting: `disks[${i}]`, action: 'dropped', reason: 'a generation 1 VM has four IDE places and its DVD drives can only be on IDE' });
        continue;
      }
    }
    if (!slot) {
      const s = nextScsi();
      if (!s) {
        notes.push({ setting: `disks[${i}]`, action: 'dropped', reason: 'every SCSI location is taken' });
        continue;
      }
      take('SCSI', s[0], s[1]);
      slot = { index: i, disk: d, file, type: 'SCSI', c: s[0], u: s[1] };
      if (gen === 1 && d.device === 'disk') notes.push({ setting: `disks[${i}].bus`, action: 'changed', from: d.bus, to: 'scsi (Hyper-V synthetic)', reason: 'the four IDE places are taken; a generation 1 VM reads SCSI disks only once the guest runs its Hyper-V storage driver (storvsc), so this cannot be a boot disk' });
    }
    const was = d.bus === 'scsi' ? `scsi (${d.controllerModel ?? 'no model'})` : d.bus;
    const now = slot.type === 'IDE' ? 'ide' : 'scsi (hyperv-scsi)';
    const unchanged = (slot.type === 'IDE' && d.bus === 'ide') || (slot.type === 'SCSI' && d.bus === 'scsi' && d.controllerModel === 'hyperv-scsi');
    if (!unchanged && !(gen === 1 && slot.type === 'SCSI' && d.device === 'disk')) {
      notes.push({ setting: `disks[${i}].bus`, action: 'changed', from: was, to: now, reason: slot.type === 'IDE' ? 'a generation 1 VM boots from IDE (emulated PIIX4)' : 'a generation 2 VM has only the synthetic SCSI controller; the guest needs its storvsc driver (Linux 3.x+, Windows 2012+ inbox)' });
    }
    if (d.readOnly && d.device === 'disk') notes.push({ setting: `disks[${i}].readOnly`, action: 'dropped', reason: 'Hyper-V attaches virtual hard disks read-write' });
    placed.push(slot);
  }

  // --- the script
  L.push('#Requires -Version 5.1');
  L.push('#Requires -Modules Hyper-V');
  L.push(`<#`);
  L.push(`  Creates the Hyper-V VM ${spec.name.replace(/#>/g, '# >')} (generation ${gen}).`);
  L.push('  Written by Polyvisor. Run it on the Hyper-V host from the folder that holds it and the disk files,');
  L.push('  as an administrator:  .\\' + `${input.name}.ps1 -SwitchName 'External'`.replace(/#>/g, '# >'));
  L.push('  -SwitchName connects every network adapter to that virtual switch; without it each adapter');
  L.push('  joins the switch named as in the source when the host has one, and stays unconnected otherwise.');
  L.push('#>');
  L.push('[CmdletBinding()]');
  L.push('param(');
  L.push("  [string]$SwitchName = '',");
  L.push("  [string]$Path = ''");
  L.push(')');
  L.push("$ErrorActionPreference = 'Stop'");
  L.push('$here = $PSScriptRoot');
  L.push('');
  const newVm = [`New-VM -Name ${q(spec.name)}`, `-Generation ${gen}`, `-MemoryStartupBytes ${startup}`, '-NoVHD'];
  L.push(`$newVm = @{}`);
  L.push(`if ($Path) { $newVm['Path'] = $Path }`);
  L.push(`$vm = ${newVm.join(' ')} @newVm`);
  L.push(`Set-VMProcessor -VM $vm -Count ${spec.cpu.count}`);
  if (max !== undefined) L.push(`Set-VMMemory -VM $vm -DynamicMemoryEnabled $true -StartupBytes ${startup} -MinimumBytes ${startup} -MaximumBytes ${max}`);
  else L.push(`Set-VMMemory -VM $vm -DynamicMemoryEnabled $false`);
  if (spec.description) L.push(`Set-VM -VM $vm -Notes ${q(spec.description)}`);
  L.push('');
  L.push('# New-VM adds a network adapter (and on generation 1 a DVD drive); the source says which there are');
  L.push('Get-VMNetworkAdapter -VM $vm | Remove-VMNetworkAdapter');
  L.push('Get-VMDvdDrive -VM $vm | Remove-VMDvdDrive');
  L.push('');
  L.push('# Disks');
  for (const p of placed.sort((a, b) => (a.type === b.type ? a.c - b.c || a.u - b.u : a.type === 'IDE' ? -1 : 1))) {
    const loc = `-ControllerNumber ${p.c} -ControllerLocation ${p.u}`;
    const path = p.file ? `(Join-Path $here ${q(p.file)})` : undefined;
    if (p.type === 'SCSI' && p.c > 0) L.push(`while ((Get-VMScsiController -VM $vm).Count -le ${p.c}) { Add-VMScsiController -VM $vm }`);
    if (p.type === 'SCSI' && gen === 1 && p.c === 0) L.push(`if (-not (Get-VMScsiController -VM $vm)) { Add-VMScsiController -VM $vm }`);
    if (p.disk.device === 'cdrom') L.push(`Add-VMDvdDrive -VM $vm ${loc}${path ? ` -Path ${path}` : ''}`);
    else L.push(`Add-VMHardDiskDrive -VM $vm -ControllerType ${p.type} ${loc} -Path ${path}`);
  }
  if (floppy) L.push(`Set-VMFloppyDiskDrive -VM $vm -Path (Join-Path $here ${q(floppy.file)})`);
  L.push('');

  // --- NICs
  if (spec.nics.length > 0) L.push('# Network adapters');
  spec.nics.forEach((nic, i) => {
    let legacy = nic.model === 'hyperv-legacy';
    if (legacy && gen === 2) {
      legacy = false;
      notes.push({ setting: `nics[${i}].model`, action: 'changed', from: 'hyperv-legacy', to: 'hyperv-netvsc', reason: 'a generation 2 VM has no legacy network adapter' });
    } else if (nic.model && nic.model !== 'hyperv-netvsc' && nic.model !== 'hyperv-legacy') {
      notes.push({
        setting: `nics[${i}].model`,
        action: 'changed',
        from: nic.model,
        to: 'hyperv-netvsc',
        reason: `Hyper-V has no ${nic.model}; its synthetic adapter needs the guest's netvsc driver (Linux hv_netvsc, Windows inbox since 2008 R2)${gen === 1 ? '; a guest without one can use a legacy adapter (Add-VMNetworkAdapter -IsLegacy $true)' : ''}`,
      });
    }
    const v = `$nic${i}`;
    L.push(`${v} = Add-VMNetworkAdapter -VM $vm -Name ${q(`Network Adapter ${i + 1}`)}${legacy ? ' -IsLegacy $true' : ''} -Passthru`);
    if (nic.mac) L.push(`Set-VMNetworkAdapter -VMNetworkAdapter ${v} -StaticMacAddress ${q(nic.mac.replace(/:/g, '').toUpperCase())}`);
    if (nic.connection === 'none') {
      L.push(`# adapter ${i + 1} was not connected in the source`);
      L.push(`if ($SwitchName) { Connect-VMNetworkAdapter -VMNetworkAdapter ${v} -SwitchName $SwitchName }`);
    } else {
      const own = nic.network ?? '';
      L.push(`$sw = if ($SwitchName) { $SwitchName } else { ${q(own)} }`);
      L.push(`if ($sw -and (Get-VMSwitch -Name $sw -ErrorAction SilentlyContinue)) { Connect-VMNetworkAdapter -VMNetworkAdapter ${v} -SwitchName $sw }`);
      L.push(`elseif ($sw) { Write-Warning ("no virtual switch '{0}': adapter ${i + 1} stays unconnected" -f $sw) }`);
      if (nic.connection === 'nat' || nic.connection === 'bridge') {
        notes.push({ setting: `nics[${i}].connection`, action: 'changed', from: nic.connection, to: 'a named virtual switch', reason: 'Hyper-V connects adapters to virtual switches (External bridges, NAT needs a host NAT on an Internal switch); use -SwitchName' });
      }
    }
  });
  if (spec.nics.length > 0) L.push('');

  // --- firmware, boot order, TPM
  L.push('# Firmware');
  if (gen === 2) {
    if (spec.firmware.secureBoot) {
      // the source's own template when it came from Hyper-V; else Windows' for Windows, the UEFI CA (which signs Linux shims) otherwise
      const own = (spec.extra.hyperv as Record<string, unknown> | undefined)?.secure_boot_template;
      const template = typeof own === 'string' && /^(MicrosoftWindows|MicrosoftUEFICertificateAuthority|OpenSourceShieldedVM)$/.test(own) ? own : spec.os.family === 'windows' ? 'MicrosoftWindows' : 'MicrosoftUEFICertificateAuthority';
      L.push(`Set-VMFirmware -VM $vm -EnableSecureBoot On -SecureBootTemplate ${template}`);
    } else L.push('Set-VMFirmware -VM $vm -EnableSecureBoot Off');
    const boot = placed.find((p) => p.index === bootIdx);
    if (boot) L.push(`Set-VMFirmware -VM $vm -FirstBootDevice (Get-VMHardDiskDrive -VM $vm -ControllerType SCSI -ControllerNumber ${boot.c} -ControllerLocation ${boot.u})`);
    if (spec.firmware.tpm) {
      L.push('Set-VMKeyProtector -VM $vm -NewLocalKeyProtector');
      L.push('Enable-VMTPM -VM $vm');
    }
  } else {
    const map = { disk: 'IDE', cdrom: 'CD', network: 'LegacyNetworkAdapter', floppy: 'Floppy' } as const;
    const order = [...new Set([...(spec.boot?.order ?? ['disk', 'cdrom', 'network', 'floppy']).map((o) => map[o]), 'IDE', 'CD', 'LegacyNetworkAdapter', 'Floppy'])];
    L.push(`Set-VMBios -VM $vm -StartupOrder @(${order.map((o) => q(o)).join(', ')})`);
    if (spec.boot?.order?.includes('network') && !spec.nics.some((n) => n.model === 'hyperv-legacy')) {
      notes.push({ setting: 'boot.order', action: 'changed', from: 'network', to: 'LegacyNetworkAdapter', reason: 'a generation 1 VM boots from the network only through a legacy adapter' });
    }
  }

  // --- serial ports: Hyper-V has COM1 and COM2, backed by named pipes
  for (const c of spec.consoles) {
    if (c.type !== 'serial' || (c.port ?? 0) > 1) {
      notes.push({ setting: 'consoles', action: 'dropped', from: c.type === 'serial' ? `serial ${c.port}` : c.type, reason: c.type === 'serial' ? 'Hyper-V has COM1 and COM2 only' : `Hyper-V has no ${c.type} console; its text console is a COM port on a named pipe` });
      continue;
    }
    const n = (c.port ?? 0) + 1;
    L.push(`Set-VMComPort -VM $vm -Number ${n} -Path ${q(`\\\\.\\pipe\\${input.name}-com${n}`)}`);
  }
  L.push('');
  L.push('Write-Host ("Created VM {0}" -f $vm.Name)');

  const text = L.join('\r\n') + '\r\n';
  return { files: [{ name: `${input.name}.ps1`, data: Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(text, 'utf8')]) }], notes };
}
