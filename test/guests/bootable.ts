/**
 * The test guest (./build.ts) on a BIOS-bootable disk of its own (src/sample/bootdisk.ts):
 * SeaBIOS → SYSLINUX → the kernel and initramfs, which print the marker and the SHA-256 of
 * the disk they booted from. Package formats (OVA, XVA) have no direct-kernel-boot field, so
 * a VM read from one must boot from its disk. Cached beside the test guest.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { makeBootDisk } from '../../src/sample/bootdisk.js';
import { buildTestGuest, cacheRoot } from './build.js';

const RECIPE = 'b1';

export async function buildBootableDisk(): Promise<string> {
  const g = await buildTestGuest();
  const out = join(cacheRoot(), `${g.version}-boot-${RECIPE}.raw`);
  if (!existsSync(out)) await makeBootDisk(out, { kernel: g.kernel, initrd: g.initrd });
  return out;
}
