/**
 * Builds qemu-system-x86_64's command line from a VmSpec.
 *
 * Option syntax per QEMU's "Invocation" manual (docs/system/invocation.rst) and
 * `qemu-system-x86_64 -device help`. Everything the engine does not carry over exactly is
 * reported as a ConversionNote, never dropped silently. The builder is pure (no process is
 * started, no file written) except for the /dev/kvm probe, which callers can override.
 */
import { existsSync, openSync, closeSync, constants as fsConst } from 'node:fs';
import { PolyvisorError } from '../../errors.js';
import type { ConversionNote } from '../../vm/codec.js';
import type { VmDisk, VmNic, VmSpec } from '../../vm/spec.js';
import type { DiskAttachment } from '../driver.js';

/** Debian's `ovmf` package (edk2 built with 4 MiB flash). */
export const OVMF = {
  code: '/usr/share/OVMF/OVMF_CODE_4M.fd',
  vars: '/usr/share/OVMF/OVMF_VARS_4M.fd',
  /** Secure Boot: the SMM-protected build, and variables with Microsoft's keys enrolled */
  secureCode: '/usr/share/OVMF/OVMF_CODE_4M.secboot.fd',
  secureVars: '/usr/share/OVMF/OVMF_VARS_4M.ms.fd',
} as const;

/** Polyvisor's registry names → QEMU's block driver names (block/*.c `format_name`). */
export const QEMU_FORMATS: Record<string, string> = { raw: 'raw', qcow2: 'qcow2', vmdk: 'vmdk', vhd: 'vpc', vpc: 'vpc', vhdx: 'vhdx', vdi: 'vdi' };

export interface QemuRuntime {
  qmpSocket: string;
  /** a second QMP monitor, for other processes while the first is held (QEMU serves one client per monitor) */
  qmpControlSocket?: string;
  serialSocket: string;
  /** everything the guest writes to serial0 is also kept here (the chardev `logfile` option) */
  serialLog?: string;
  pidfile?: string;
  /** VNC display number (port 5900+N), always bound to 127.0.0.1; takes precedence over vncSocket */
  vncDisplay?: number;
  /**
   * a Unix socket for the VNC server (`-vnc unix:PATH`): reachable only through the file
   * system, so no port is allocated and nothing listens on the network; the web console
   * proxies it (../../server/console-proxy.ts). Neither this nor vncDisplay: no VNC server.
   */
  vncSocket?: string;
  /** the per-VM copy of the UEFI variable store; required when firmware is UEFI */
  uefiVars?: string;
  noReboot?: boolean;
  /** `-S`: the CPUs wait for a QMP `cont`, so a console can attach before the guest prints anything */
  startPaused?: boolean;
  /**
   * add a pvpanic device (QEMU's docs/specs/pvpanic.rst): a guest with the driver reports its
   * kernel panic to the host as a GUEST_PANICKED event instead of only printing it
   */
  pvpanic?: boolean;
}

export interface ArgvOptions {
  /** force an accelerator; default: kvm when /dev/kvm opens read-write, else tcg */
  accel?: 'kvm' | 'tcg';
  /** override the OVMF paths (tests, other distributions) */
  ovmf?: { code: string; vars: string; secureCode: string; secureVars: string };
}

export interface QemuArgv {
  argv: string[];
  notes: ConversionNote[];
  accel: 'kvm' | 'tcg';
  machine: 'pc' | 'q35';
  /** one line for the user when the engine falls back to emulation */
  notice?: string;
  /** the variable-store template the caller copies to runtime.uefiVars before starting */
  uefiVarsTemplate?: string;
}

/** True when /dev/kvm can be opened read-write: what QEMU itself needs for -accel kvm. */
export function kvmUsable(device = '/dev/kvm'): boolean {
  try {
    closeSync(openSync(device, fsConst.O_RDWR));
    return true;
  } catch {
    return false;
  }
}

/** QEMU option values escape a comma by doubling it (QemuOpts syntax). */
export function optValue(s: string): string {
  return s.replace(/,/g, ',,');
}

const NIC_DEVICES: Record<string, string> = {
  virtio: 'virtio-net-pci',
  e1000: 'e1000',
  e1000e: 'e1000e',
  rtl8139: 'rtl8139',
  pcnet: 'pcnet',
  vmxnet3: 'vmxnet3',
  ne2k: 'ne2k_pci',
  // Hyper-V's legacy adapter is an emulated DEC 21140 ("tulip")
  'hyperv-legacy': 'tulip',
};

/** SCSI controller models QEMU emulates itself, and the nearest one for those it does not. */
const SCSI_CONTROLLERS: Record<string, { device: string; reason?: string }> = {
  'virtio-scsi': { device: 'virtio-scsi-pci' },
  megasas: { device: 'megasas-gen2' },
  pvscsi: { device: 'pvscsi' },
  lsilogic: { device: 'lsi53c895a', reason: "QEMU emulates no LSI 53c1030; its LSI 53c895a is the nearest parallel SCSI HBA" },
  lsisas1068: { device: 'lsi53c895a', reason: "QEMU's mptsas1068 did not show its disk to a Linux guest in our probe; the LSI 53c895a does" },
  buslogic: { device: 'lsi53c895a', reason: 'QEMU emulates no BusLogic HBA' },
  'hyperv-scsi': { device: 'virtio-scsi-pci', reason: 'QEMU emulates no Hyper-V synthetic SCSI (storvsc)' },
  'xen-pv': { device: 'virtio-scsi-pci', reason: 'QEMU emulates no Xen PV devices' },
};

export function buildQemuArgv(spec: VmSpec, disks: Array<DiskAttachment | undefined>, rt: QemuRuntime, opts: ArgvOptions = {}): QemuArgv {
  const notes: ConversionNote[] = [];
  const a: string[] = [];
  const ovmf = opts.ovmf ?? OVMF;
  if (disks.length !== spec.disks.length) {
    throw new PolyvisorError('ERR_INVALID_OPTION', `qemu: ${spec.disks.length} disks in the spec but ${disks.length} attachments`);
  }

  // --- machine: q35 where the pc (i440FX/PIIX) cannot: UEFI Secure Boot's SMM, AHCI, NVMe on PCIe
  const uefi = spec.firmware.type === 'uefi';
  const needsQ35 = uefi || spec.disks.some((d) => d.bus === 'sata' || d.bus === 'nvme' || d.controllerModel === 'ahci');
  const machine: 'pc' | 'q35' = needsQ35 ? 'q35' : 'pc';
  const secure = uefi && spec.firmware.secureBoot === true;
  a.push('-machine', machine + (secure ? ',smm=on' : ''));

  // --- accelerator and CPU model
  const accel = opts.accel ?? (kvmUsable() ? 'kvm' : 'tcg');
  let notice: string | undefined;
  if (accel === 'tcg' && opts.accel === undefined) notice = 'qemu: /dev/kvm is not usable; running under TCG software emulation (slow)';
  a.push('-accel', accel);
  // KVM: pass the host CPU through. TCG: `max` enables every feature TCG emulates; Linux guests boot with it
  a.push('-cpu', accel === 'kvm' ? 'host' : 'max');
  const c = spec.cpu;
  let smp = `cpus=${c.count}`;
  if (c.sockets) smp += `,sockets=${c.sockets}`;
  if (c.cores) smp += `,cores=${c.cores}`;
  if (c.threads) smp += `,threads=${c.threads}`;
  a.push('-smp', smp);
  a.push('-m', `${Math.ceil(spec.memory.bytes / (1 << 20))}M`);
  if (spec.memory.maxBytes !== undefined && spec.memory.maxBytes !== spec.memory.bytes) {
    notes.push({ setting: 'memory.maxBytes', action: 'dropped', from: spec.memory.maxBytes, reason: 'the QEMU engine starts guests with fixed memory (no balloon ceiling)' });
  }

  // --- firmware: SeaBIOS is QEMU's default; UEFI is OVMF on two pflash units (code read-only, per-VM vars)
  let uefiVarsTemplate: string | undefined;
  if (uefi) {
    if (!rt.uefiVars) throw new PolyvisorError('ERR_INVALID_OPTION', 'qemu: UEFI firmware needs a per-VM variable store path (runtime.uefiVars)');
    const code = secure ? ovmf.secureCode : ovmf.code;
    uefiVarsTemplate = secure ? ovmf.secureVars : ovmf.vars;
    if (secure) {
      // the secboot build only runs with SMM, and its flash must be writable from SMM only (QEMU docs: OVMF README)
      a.push('-global', 'driver=cfi.pflash01,property=secure,value=on');
    }
    a.push('-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${optValue(code)}`);
    a.push('-drive', `if=pflash,format=raw,unit=1,file=${optValue(rt.uefiVars)}`);
  }
  if (spec.firmware.tpm) notes.push({ setting: 'firmware.tpm', action: 'dropped', reason: 'the QEMU engine has no TPM emulator (swtpm) wired up' });

  // --- direct kernel boot: how a PV/PVH guest's kernel is started without Xen
  const boot = spec.boot;
  if (spec.virtualization !== 'hvm') {
    notes.push({ setting: 'virtualization', action: 'changed', from: spec.virtualization, to: 'hvm', reason: 'QEMU runs every guest fully virtualised; a Xen PV kernel is started by direct kernel boot' });
  }
  if (boot?.kernel) {
    if (existsSync(boot.kernel)) {
      a.push('-kernel', boot.kernel);
      if (boot.ramdisk) {
        if (existsSync(boot.ramdisk)) a.push('-initrd', boot.ramdisk);
        else notes.push({ setting: 'boot.ramdisk', action: 'dropped', from: boot.ramdisk, reason: 'the ramdisk is not on this host' });
      }
      let cmdline = boot.cmdline ?? '';
      // A Xen PV kernel writes to hvc0, which QEMU does not have. The last console= is the
      // one /dev/console (and so init's output) goes to (Documentation/admin-guide/
      // serial-console.rst): hvc0 becomes the first serial port, or one is added.
      const serial = consoleForQemu(cmdline);
      if (serial !== cmdline) {
        cmdline = serial;
        notes.push({ setting: 'boot.cmdline', action: 'changed', from: boot.cmdline, to: cmdline, reason: 'the console is the first serial port under QEMU (Xen\'s hvc0 does not exist there)' });
      }
      a.push('-append', cmdline);
    } else {
      notes.push({ setting: 'boot.kernel', action: 'dropped', from: boot.kernel, reason: 'the kernel is not on this host; the guest boots from its disks through the firmware' });
    }
  } else if (boot?.bootloader) {
    notes.push({ setting: 'boot.bootloader', action: 'changed', from: boot.bootloader, to: 'firmware', reason: "the firmware boots the disk's own boot loader" });
  }

  // --- disks
  const state: BusState = { scsi: new Map(), ideNext: 0, ahciNext: 0, usb: false, nvme: 0 };
  spec.disks.forEach((d, i) => addDisk(a, notes, state, machine, d, disks[i], i));

  // --- NICs: user-mode networking (slirp): no host bridge or privilege needed
  spec.nics.forEach((n, i) => addNic(a, notes, n, i));
  if (spec.nics.length === 0) a.push('-nic', 'none');

  // --- display: headless; VNC only on the loopback interface
  a.push('-display', 'none');
  for (const [i, g] of spec.graphics.entries()) {
    if (g.type !== 'vnc' && g.type !== 'vga') {
      notes.push({ setting: `graphics[${i}].type`, action: 'changed', from: g.type, to: 'vnc', reason: 'the QEMU engine offers VNC on 127.0.0.1 only' });
    } else if (g.type === 'vnc' && g.listen && g.listen !== '127.0.0.1' && g.listen !== 'localhost') {
      notes.push({ setting: `graphics[${i}].listen`, action: 'changed', from: g.listen, to: '127.0.0.1', reason: 'the QEMU engine never exposes a console beyond the loopback interface' });
    }
  }
  a.push('-vnc', rt.vncDisplay !== undefined ? `127.0.0.1:${rt.vncDisplay}` : rt.vncSocket ? `unix:${optValue(rt.vncSocket)}` : 'none');

  // --- serial console on a Unix socket; server=on,wait=off so QEMU starts without a client
  let chardev = `socket,id=serial0,path=${optValue(rt.serialSocket)},server=on,wait=off`;
  if (rt.serialLog) chardev += `,logfile=${optValue(rt.serialLog)},logappend=on`;
  a.push('-chardev', chardev, '-serial', 'chardev:serial0');
  for (const [i, con] of spec.consoles.entries()) {
    if (con.type !== 'serial') notes.push({ setting: `consoles[${i}].type`, action: 'changed', from: con.type, to: 'serial', reason: 'the QEMU engine gives the guest one serial console' });
  }

  a.push('-qmp', `unix:${optValue(rt.qmpSocket)},server=on,wait=off`);
  if (rt.qmpControlSocket) a.push('-qmp', `unix:${optValue(rt.qmpControlSocket)},server=on,wait=off`);
  if (rt.pidfile) a.push('-pidfile', rt.pidfile);
  if (rt.noReboot) a.push('-no-reboot');
  if (rt.pvpanic) a.push('-device', 'pvpanic');
  if (rt.startPaused) a.push('-S');
  // no stray state: defaults off for monitor/parallel, which would otherwise grab stdio
  a.push('-monitor', 'none', '-parallel', 'none');
  return { argv: a, notes, accel, machine, notice, uefiVarsTemplate };
}

interface BusState {
  /** SCSI controllers by "<model>/<controller index>" → QEMU id */
  scsi: Map<string, string>;
  ideNext: number;
  ahciNext: number;
  usb: boolean;
  nvme: number;
}

function addDisk(a: string[], notes: ConversionNote[], st: BusState, machine: 'pc' | 'q35', d: VmDisk, att: DiskAttachment | undefined, i: number): void {
  const id = `disk${i}`;
  const cd = d.device === 'cdrom';
  if (d.device === 'floppy' || d.bus === 'fdc') {
    notes.push({ setting: `disks[${i}]`, action: 'dropped', reason: 'the QEMU engine attaches no floppy drives' });
    return;
  }
  let drive: string | undefined;
  if (att) {
    const fmt = QEMU_FORMATS[att.format];
    if (!fmt) throw new PolyvisorError('ERR_UNSUPPORTED', `qemu: disks[${i}]: QEMU does not read ${att.format} images in place`);
    const file = att.nbdUri ?? att.path;
    if (!file) throw new PolyvisorError('ERR_INVALID_OPTION', `qemu: disks[${i}]: an attachment needs a path or an nbdUri`);
    const ro = att.readOnly || d.readOnly || cd;
    a.push('-drive', `if=none,id=${id},format=${fmt},file=${optValue(file)}${ro ? ',readonly=on' : ''}`);
    drive = `drive=${id}`;
  } else if (!cd) {
    throw new PolyvisorError('ERR_INVALID_OPTION', `qemu: disks[${i}] is a disk with no file`);
  }
  const bootindex = d.bootOrder !== undefined ? `,bootindex=${d.bootOrder}` : '';
  const dev = (s: string) => a.push('-device', [s, drive].filter(Boolean).join(',') + bootindex);

  let bus = d.bus;
  if (bus === 'xen') {
    notes.push({ setting: `disks[${i}].bus`, action: 'changed', from: 'xen', to: cd ? 'ide' : 'virtio', reason: 'QEMU emulates no Xen PV disks; virtio-blk is the paravirtual disk it offers' });
    bus = cd ? 'ide' : 'virtio';
  }
  if (cd && (bus === 'virtio' || bus === 'nvme' || bus === 'usb')) {
    notes.push({ setting: `disks[${i}].bus`, action: 'changed', from: bus, to: 'ide', reason: `a CD-ROM cannot hang off ${bus} in QEMU` });
    bus = 'ide';
  }
  switch (bus) {
    case 'virtio':
      return void dev(`virtio-blk-pci,id=${id}dev`);
    case 'nvme':
      // an NVMe controller per disk; the serial number is required by QEMU's nvme device
      return void dev(`nvme,id=${id}dev,serial=pv${i}`);
    case 'usb':
      if (!st.usb) a.push('-device', 'qemu-xhci,id=xhci');
      st.usb = true;
      return void dev(`usb-storage,bus=xhci.0,id=${id}dev`);
    case 'scsi': {
      const model = d.controllerModel ?? 'virtio-scsi';
      const ctl = SCSI_CONTROLLERS[model] ?? { device: 'virtio-scsi-pci', reason: `${model} is not a SCSI controller` };
      const key = `${ctl.device}/${d.controller ?? 0}`;
      let hba = st.scsi.get(key);
      if (!hba) {
        hba = `scsi${st.scsi.size}`;
        st.scsi.set(key, hba);
        a.push('-device', `${ctl.device},id=${hba}`);
        if (ctl.reason) notes.push({ setting: `disks[${i}].controllerModel`, action: 'changed', from: model, to: ctl.device, reason: ctl.reason });
      }
      const unit = d.unit !== undefined ? `,scsi-id=${d.unit}` : '';
      return void dev(`${cd ? 'scsi-cd' : 'scsi-hd'},bus=${hba}.0${unit},id=${id}dev`);
    }
    case 'ide':
    case 'sata': {
      const kind = cd ? 'ide-cd' : 'ide-hd';
      if (machine === 'q35') {
        // q35's ICH9 AHCI has six ports, ide.0..ide.5, one device each
        if (bus === 'ide') notes.push({ setting: `disks[${i}].bus`, action: 'changed', from: 'ide', to: 'sata', reason: 'the q35 machine (needed here for UEFI, SATA or NVMe) has AHCI, not PIIX IDE' });
        const port = st.ahciNext++;
        if (port > 5) throw new PolyvisorError('ERR_UNSUPPORTED', `qemu: disks[${i}]: q35's AHCI has six ports`);
        return void dev(`${kind},bus=ide.${port},id=${id}dev`);
      }
      // the PIIX has two channels (ide.0, ide.1) with a master (unit 0) and a slave (unit 1)
      const n = st.ideNext++;
      if (n > 3) throw new PolyvisorError('ERR_UNSUPPORTED', `qemu: disks[${i}]: the PIIX IDE controller takes four devices`);
      return void dev(`${kind},bus=ide.${n >> 1},unit=${n & 1},id=${id}dev`);
    }
    default:
      throw new PolyvisorError('ERR_UNSUPPORTED', `qemu: disks[${i}]: bus ${bus}`);
  }
}

function addNic(a: string[], notes: ConversionNote[], n: VmNic, i: number): void {
  const model = n.model ?? 'virtio';
  let device = NIC_DEVICES[model];
  if (!device) {
    device = model === 'vmxnet2' ? 'vmxnet3' : 'virtio-net-pci';
    notes.push({ setting: `nics[${i}].model`, action: 'changed', from: model, to: device, reason: `QEMU emulates no ${model}` });
  }
  let netdev = `user,id=net${i}`;
  if (n.connection === 'none') {
    // slirp with restrict=on: the link is up but nothing leaves the VM
    netdev += ',restrict=on';
  } else if (n.connection === 'bridge' || n.connection === 'network') {
    notes.push({ setting: `nics[${i}].connection`, action: 'changed', from: n.network ? `${n.connection} ${n.network}` : n.connection, to: 'nat', reason: 'the QEMU engine uses user-mode networking (no host bridges)' });
  }
  a.push('-netdev', netdev);
  a.push('-device', `${device},netdev=net${i}${n.mac ? `,mac=${n.mac}` : ''}`);
}

/** A kernel command line whose consoles QEMU has: hvc0 → ttyS0 (once), ttyS0 added when no serial console is named. */
export function consoleForQemu(cmdline: string): string {
  const words = cmdline.split(/\s+/).filter(Boolean);
  const out: string[] = [];
  for (const w of words) {
    const m = /^console=hvc0(,.*)?$/.exec(w);
    const next = m ? 'console=ttyS0' : w;
    if (next === 'console=ttyS0' && out.includes(next)) continue;
    out.push(next);
  }
  if (!out.some((w) => w.startsWith('console=ttyS'))) out.push('console=ttyS0');
  return out.join(' ');
}
