/**
 * The sample guest (what `npm start` boots, and what the tests boot): Debian's kernel and a busybox initramfs whose
 * /init loads the storage drivers, prints a marker, prints the SHA-256 of the first disk it
 * finds and powers off. Cached under .cache/guests/<kernel version>/ ($POLYVISOR_CACHE/guests when set; git-ignored), so only the
 * first run pays for the download (~70 MB) and the build (a few seconds).
 *
 * Kernel command line switches read by /init:
 *   pv.hold   after the checksum, stay up printing "tick" every second instead of powering
 *             off (a guest that ignores ACPI: no acpid runs)
 *
 * Run as a script (`node dist/src/sample/guest.js`) to pre-build the cache.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The marker /init prints once the drivers are loaded. */
export const GUEST_MARKER = 'POLYVISOR-GUEST-UP';
/** /init prints `POLYVISOR-DISK <device> <sha256>` (or `POLYVISOR-DISK none -`). */
export const DISK_LINE = /POLYVISOR-DISK (\S+) (\S+)/;

/**
 * Storage drivers for every bus the QEMU engine attaches, and Xen's PV block and network
 * frontends (a PV guest on the xl driver sees its disk as xvda), loaded with their dependencies.
 */
const MODULES = ['virtio_pci', 'virtio_blk', 'virtio_scsi', 'sd_mod', 'sr_mod', 'ata_piix', 'ahci', 'nvme', 'vmw_pvscsi', 'megaraid_sas', 'sym53c8xx', 'xen_blkfront', 'xen_netfront'];

// bump when the initramfs recipe changes, so stale caches are rebuilt
const RECIPE = 'r2';

const INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.list); do insmod /modules/$m 2>/dev/null; done
echo ${GUEST_MARKER}
dev=none
i=0
while [ $i -lt 50 ]; do
  for d in vda sda nvme0n1 xvda; do
    if [ -b /dev/$d ]; then dev=$d; break 2; fi
  done
  sleep 0.1
  i=$((i+1))
done
if [ $dev = none ]; then echo "POLYVISOR-DISK none -"; else echo "POLYVISOR-DISK $dev $(sha256sum /dev/$dev | cut -d' ' -f1)"; fi
if grep -q pv.hold /proc/cmdline; then
  while true; do echo tick; sleep 1; done
fi
poweroff -f
`;

export interface TestGuest {
  kernel: string;
  initrd: string;
  version: string;
}

export function cacheRoot(): string {
  return resolve(process.env.POLYVISOR_CACHE ?? join(process.cwd(), '.cache'), 'guests');
}

async function sh(cmd: string, args: string[], cwd?: string): Promise<string> {
  const { stdout } = await run(cmd, args, { cwd, maxBuffer: 64 << 20 });
  return stdout;
}

/** The kernel package linux-image-amd64 points at, e.g. "6.1.0-56-amd64". */
async function kernelVersion(): Promise<string> {
  const out = await sh('apt-cache', ['depends', 'linux-image-amd64']);
  const m = /Depends:\s*linux-image-(\S+-amd64)/.exec(out);
  if (!m) throw new Error(`cannot resolve the kernel behind linux-image-amd64 from: ${out}`);
  return m[1]!;
}

async function download(dir: string, pkgs: string[]): Promise<void> {
  try {
    await sh('apt-get', ['download', ...pkgs], dir);
  } catch {
    await sh('apt-get', ['update']);
    await sh('apt-get', ['download', ...pkgs], dir);
  }
}

async function ensureTool(tool: string, pkg: string): Promise<void> {
  try {
    await sh('sh', ['-c', `command -v ${tool}`]);
  } catch {
    await sh('apt-get', ['install', '-y', pkg]).catch(async () => {
      await sh('apt-get', ['update']);
      await sh('apt-get', ['install', '-y', pkg]);
    });
  }
}

let building: Promise<TestGuest> | undefined;

/** Builds (or finds in the cache) the test guest. */
export function buildTestGuest(): Promise<TestGuest> {
  building ??= build();
  return building;
}

async function build(): Promise<TestGuest> {
  const version = await kernelVersion();
  const dir = join(cacheRoot(), `${version}-${RECIPE}`);
  const guest = { kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.gz'), version };
  if (existsSync(guest.kernel) && existsSync(guest.initrd)) return guest;

  await mkdir(cacheRoot(), { recursive: true });
  const work = await mkdtemp(join(cacheRoot(), 'build-'));
  try {
    await ensureTool('cpio', 'cpio');
    await ensureTool('depmod', 'kmod');
    await download(work, [`linux-image-${version}`, 'busybox-static']);
    const debs = await readdir(work);
    const k = join(work, 'k');
    const bb = join(work, 'bb');
    await sh('dpkg', ['-x', join(work, debs.find((d) => d.startsWith('linux-image-'))!), k]);
    await sh('dpkg', ['-x', join(work, debs.find((d) => d.startsWith('busybox-static'))!), bb]);

    // resolve each driver's dependencies in load order (RUNBOOK: sd_mod needs t10-pi and friends)
    await sh('depmod', ['-b', k, version]);
    const order: string[] = [];
    for (const mod of MODULES) {
      const out = await sh('modprobe', ['-d', k, '-S', version, '--show-depends', mod]);
      for (const line of out.split('\n')) {
        const m = /^insmod (\S+)/.exec(line);
        if (m && !order.includes(m[1]!)) order.push(m[1]!);
      }
    }

    // the initramfs: busybox, the modules flat in /modules, and /init loading them in order.
    // insmod in dependency order needs no modules.dep or modprobe inside the guest.
    const ir = join(work, 'ir');
    for (const d of ['bin', 'dev', 'proc', 'sys', 'modules']) await mkdir(join(ir, d), { recursive: true });
    await copyFile(join(bb, 'bin', 'busybox'), join(ir, 'bin', 'busybox'));
    await chmod(join(ir, 'bin', 'busybox'), 0o755);
    for (const f of order) await copyFile(f, join(ir, 'modules', basename(f)));
    await writeFile(join(ir, 'modules.list'), order.map((f) => basename(f)).join('\n') + '\n');
    await writeFile(join(ir, 'init'), INIT, { mode: 0o755 });
    await sh('sh', ['-c', 'find . | cpio -o -H newc --quiet | gzip -1 > ../initrd.gz'], ir);

    const out = join(work, 'out');
    await mkdir(out);
    const vmlinuz = (await readdir(join(k, 'boot'))).find((f) => f.startsWith('vmlinuz-'))!;
    await rename(join(k, 'boot', vmlinuz), join(out, 'vmlinuz'));
    await rename(join(work, 'initrd.gz'), join(out, 'initrd.gz'));
    await rm(dir, { recursive: true, force: true });
    await rename(out, dir); // atomic: a half-built guest is never found in the cache
    return guest;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/**
 * Writes a raw disk of `size` bytes with a known pattern (each 4 KiB block carries its index,
 * plus one zero MiB so the formats have something sparse) and returns its SHA-256.
 */
export async function makeTestDisk(path: string, size = 8 << 20): Promise<string> {
  const buf = Buffer.alloc(size);
  for (let off = 0; off < size; off += 4096) {
    if (off >= 2 << 20 && off < 3 << 20) continue;
    buf.write(`polyvisor block ${off / 4096}\n`, off, 'ascii');
    buf.fill((off / 4096) & 0xff, off + 64, off + 128);
  }
  await writeFile(path, buf);
  return createHash('sha256').update(buf).digest('hex');
}

if (process.argv[1] && resolve(process.argv[1]) === resolve(new URL(import.meta.url).pathname)) {
  buildTestGuest().then(
    (g) => console.log(JSON.stringify(g)),
    (e) => {
      console.error(e);
      process.exitCode = 1;
    },
  );
}
