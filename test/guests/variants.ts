/**
 * Variants of the test guest (./build.ts) for boot verification: the same kernel and initramfs
 * with a different /init. Linux unpacks concatenated cpio archives in order and a later file
 * replaces an earlier one (Documentation/driver-api/early-userspace/buffer-format.rst), so a
 * variant is the cached initrd.gz followed by a small gzip'd cpio holding only the new /init.
 *
 *   all-disks  loads the drivers, prints `POLYVISOR-DISK <dev> <sha256>` for every virtio disk,
 *              then `POLYVISOR-DONE`, and powers off (with `pv.hold` on the command line it
 *              stays up instead)
 *   panic      prints a line and exits: the kernel panics with "Attempted to kill init"
 *   hang       prints nothing and sleeps for ever
 *   reboot     prints a line and reboots at once, every boot (a reboot loop)
 *   pvpanic    tells the host it panicked through the pvpanic device (ISA port 0x505, written
 *              through /dev/port: QEMU's docs/specs/pvpanic.rst), printing no panic text, then
 *              sleeps: only the GUEST_PANICKED event can reveal it
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { buildTestGuest, cacheRoot, type TestGuest } from './build.js';

const run = promisify(execFile);

export type GuestVariant = 'all-disks' | 'panic' | 'hang' | 'reboot' | 'pvpanic';

export const DONE_MARKER = 'POLYVISOR-DONE';

const INITS: Record<GuestVariant, string> = {
  'all-disks': `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.list); do insmod /modules/$m 2>/dev/null; done
i=0
while [ $i -lt 50 ] && [ ! -b /dev/vda ]; do sleep 0.1; i=$((i+1)); done
for d in /dev/vd?; do
  [ -b $d ] && echo "POLYVISOR-DISK \${d#/dev/} $(sha256sum $d | cut -d' ' -f1)"
done
echo ${DONE_MARKER}
if grep -q pv.hold /proc/cmdline; then while true; do sleep 1; done; fi
poweroff -f
`,
  panic: `#!/bin/busybox sh
echo POLYVISOR-GOING-DOWN
exit 1
`,
  reboot: `#!/bin/busybox sh
echo POLYVISOR-REBOOTING
/bin/busybox reboot -f
`,
  pvpanic: `#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
echo POLYVISOR-SIGNALLING
printf '\\001' | /bin/busybox dd of=/dev/port bs=1 seek=1285 count=1 2>/dev/null
while true; do /bin/busybox sleep 1000; done
`,
  hang: `#!/bin/busybox sh
while true; do /bin/busybox sleep 1000; done
`,
};

const RECIPE = 'v1';

/** The test guest with `variant`'s /init; the initrd is cached beside the base guest's. */
export async function buildVariantGuest(variant: GuestVariant): Promise<TestGuest> {
  const base = await buildTestGuest();
  const initrd = join(dirname(base.initrd), `initrd-${variant}-${RECIPE}.gz`);
  if (existsSync(initrd)) return { ...base, initrd };
  const work = await mkdtemp(join(cacheRoot(), 'variant-'));
  try {
    const ir = join(work, 'ir');
    await mkdir(ir);
    await writeFile(join(ir, 'init'), INITS[variant], { mode: 0o755 });
    await run('sh', ['-c', 'find . | cpio -o -H newc --quiet | gzip -1 > ../extra.gz'], { cwd: ir });
    const joined = Buffer.concat([await readFile(base.initrd), await readFile(join(work, 'extra.gz'))]);
    const tmp = join(work, 'initrd.gz');
    await writeFile(tmp, joined);
    await rename(tmp, initrd); // atomic: a half-written variant is never found
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return { ...base, initrd };
}
