/**
 * Is KVM really usable? /dev/kvm opening read-write is not enough: under nested
 * virtualisation QEMU can abort creating the vCPU ("failed to set MSR 0x10a") or a guest can
 * hang. So the first start runs a probe under KVM with the CPU model real guests get: a
 * 64 KiB firmware whose reset vector writes one byte to QEMU's isa-debug-exit port, which ends
 * QEMU with status (0x31 << 1) | 1 = 99. Any other outcome within the time limit means TCG.
 * The answer is kept for the life of the process.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { kvmUsable } from './argv.js';

const PROBE_EXIT = (0x31 << 1) | 1;
const PROBE_TIMEOUT_MS = 5000;
let cached: Promise<boolean> | undefined;

/** The probe firmware: real-mode code at the reset vector (physical 0xFFFF0, the image's last 16 bytes). */
function probeFirmware(): Buffer {
  const bios = Buffer.alloc(64 * 1024, 0xf4); // hlt everywhere else
  // mov al, 0x31 ; out 0xf4, al ; hlt ; jmp back to the hlt
  Buffer.from([0xb0, 0x31, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd]).copy(bios, 0xfff0);
  return bios;
}

export function kvmWorks(binary = 'qemu-system-x86_64'): Promise<boolean> {
  if (cached) return cached;
  if (!kvmUsable()) return (cached = Promise.resolve(false));
  cached = (async () => {
    const dir = await mkdtemp(join(tmpdir(), 'pv-kvm-probe-'));
    try {
      const bios = join(dir, 'probe.bin');
      await writeFile(bios, probeFirmware());
      const args = ['-accel', 'kvm', '-cpu', 'host', '-machine', 'pc', '-m', '16', '-display', 'none', '-serial', 'none', '-monitor', 'none'];
      args.push('-nodefaults', '-no-reboot', '-bios', bios, '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04');
      const child = spawn(binary, args, { stdio: 'ignore' });
      const code = await new Promise<number | null>((resolve) => {
        const timer = setTimeout(() => {
          child.kill('SIGKILL');
          resolve(null);
        }, PROBE_TIMEOUT_MS);
        child.once('exit', (c) => {
          clearTimeout(timer);
          resolve(c);
        });
        child.once('error', () => {
          clearTimeout(timer);
          resolve(null);
        });
      });
      return code === PROBE_EXIT;
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  })();
  return cached;
}
