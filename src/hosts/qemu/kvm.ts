/**
 * Is KVM really usable? /dev/kvm opening read-write is not enough: under nested
 * virtualisation QEMU can abort creating the vCPU ("failed to set MSR 0x10a") or a guest can
 * hang. So the first start runs a probe under KVM with the CPU model real guests get: a
 * 64 KiB firmware whose reset vector writes one byte to QEMU's isa-debug-exit port, which ends
 * QEMU with status (0x31 << 1) | 1 = 99. Any other outcome within the time limit means TCG.
 *
 * The answer is kept for the life of the process, and on disk (cacheDir()/kvm-probe.json) for
 * as long as nothing it depends on changes: the QEMU binary (path, size, mtime), the running
 * kernel (boot id, release) and /dev/kvm itself (recreated, with a new ctime, whenever the kvm
 * module is reloaded, e.g. with other nested= settings). The probe costs a QEMU start, about
 * 40 ms, on every `polyvisor run` otherwise.
 */
import { spawn } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { release, tmpdir } from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { cacheDir } from '../../store/data-dir.js';
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

/** The binary as exec would find it: an absolute path, or the first match on $PATH. */
function whichBinary(binary: string): string | undefined {
  if (binary.includes('/')) return resolve(binary);
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, binary);
    try {
      if (statSync(p).isFile()) return p;
    } catch {
      // not in this folder
    }
  }
  return undefined;
}

/** What the probe's answer depends on, as one string; undefined when any part cannot be read. */
export function probeKey(binary: string): string | undefined {
  try {
    const path = whichBinary(binary);
    if (!path) return undefined;
    const bin = statSync(path);
    const kvm = statSync('/dev/kvm');
    const boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    return [path, bin.size, bin.mtimeMs, release(), boot, kvm.rdev, kvm.ctimeMs].join('|');
  } catch {
    return undefined;
  }
}

async function remembered(key: string): Promise<boolean | undefined> {
  try {
    const j = JSON.parse(await readFile(join(cacheDir(), 'kvm-probe.json'), 'utf8')) as { key?: unknown; works?: unknown };
    return j.key === key && typeof j.works === 'boolean' ? j.works : undefined;
  } catch {
    return undefined;
  }
}

async function remember(key: string, works: boolean): Promise<void> {
  try {
    const dir = cacheDir();
    await mkdir(dir, { recursive: true });
    const tmp = join(dir, `.kvm-probe.json.${process.pid}`);
    await writeFile(tmp, JSON.stringify({ key, works }) + '\n');
    await rename(tmp, join(dir, 'kvm-probe.json'));
  } catch {
    // an unwritable cache: the next process probes again
  }
}

export function kvmWorks(binary = 'qemu-system-x86_64'): Promise<boolean> {
  if (cached) return cached;
  if (!kvmUsable()) return (cached = Promise.resolve(false));
  cached = (async () => {
    const key = probeKey(binary);
    const known = key === undefined ? undefined : await remembered(key);
    if (known !== undefined) return known;
    const works = await probe(binary);
    if (key !== undefined) await remember(key, works);
    return works;
  })();
  return cached;
}

/** Runs the probe guest (see the module comment). */
async function probe(binary: string): Promise<boolean> {
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
}
