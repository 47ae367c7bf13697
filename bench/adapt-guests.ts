/**
 * The guests of `bench/adapt.ts`: the Debian 12 Xen PV test guest (test/guests/debian.ts) and
 * the same guest with Debian's grub-pc installed in it, which is what a Xen PV guest whose
 * owner ran `apt-get install grub-pc` looks like: GRUB 2's tools and i386-pc modules in the
 * guest (grub-mkconfig, grub-install), /etc/default/grub, and still no boot code in the MBR,
 * because pygrub reads /boot/grub/grub.cfg from outside and no one ran grub-install on a
 * BIOS disk the guest never had.
 *
 * The variant is built the way the test guests are (Debian's packages in a chroot, no mount,
 * no loop device): the debootstrapped base root that buildDebianGuest left in the cache,
 * grub-pc installed into it with apt-get, then the Xen PV guest's own configuration read out
 * of its disk with debugfs (so the variant cannot drift from the recipe: fstab, hostname,
 * initramfs-tools settings, the marker unit and getty, the initramfs and grub.cfg), and a disk
 * made like the guest's: its first MiB (MBR, partition table, disk signature) copied, then
 * `mke2fs -d` at the partition's offset with the same UUID.
 *
 * grub-pc is installed before the guest's grub.cfg is put in place: its postinst runs
 * update-grub only when /boot/grub/grub.cfg exists, and grub-mkconfig cannot probe the root
 * device in a chroot with no /dev. Its grub-install step is skipped by debconf's empty
 * install_devices (noninteractive), which is also why the MBR stays empty.
 *
 * Host packages: those of test/guests/debian.ts, and e2fsprogs' debugfs.
 *
 * Cached under .cache/debian/<recipe>/bench-xen-pv-grub-pc-<RECIPE>/ (git-ignored).
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, open, readFile, rename, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { buildDebianGuest, debianCacheRoot, DEBIAN_MARKER, type DebianGuest } from '../test/guests/debian.js';

const run = promisify(execFile);

// bump when what is built below changes
const RECIPE = 'g1';

/** The partition starts at 1 MiB on the test guests' disks (test/guests/debian.ts). */
const PART_OFFSET = 1024 * 1024;

export interface BenchGuest {
  /** short name for tables: "(a) xen-pv" */
  label: string;
  /** the raw disk (cached: never written; tools read it or work behind an overlay) */
  disk: string;
  kernelVersion: string;
  kernel: string;
  initrd: string;
  rootUuid: string;
  rootDevice: string;
  /** the line the guest prints when its installed system is up */
  marker: string;
}

const CHROOT_ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C', DEBIAN_FRONTEND: 'noninteractive', HOME: '/root' };

async function sh(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeout?: number } = {}): Promise<string> {
  try {
    const { stdout } = await run(cmd, args, { maxBuffer: 256 << 20, timeout: opts.timeout ?? 10 * 60_000, ...opts });
    return stdout;
  } catch (e) {
    const err = e as { stderr?: string; stdout?: string; message: string };
    const tail = `${err.stdout ?? ''}\n${err.stderr ?? ''}`.trim().split('\n').slice(-25).join('\n');
    throw new Error(`${cmd} ${args.join(' ')} failed: ${err.message.split('\n')[0]}\n${tail}`);
  }
}

function fromDebian(g: DebianGuest, label: string): BenchGuest {
  return { label, disk: g.disk, kernelVersion: g.kernelVersion, kernel: g.kernel, initrd: g.initrd, rootUuid: g.rootUuid, rootDevice: g.rootDevice, marker: g.marker };
}

/** (a) the Debian 12 Xen PV guest, as test/guests/debian.ts builds it. */
export async function xenPvGuest(): Promise<BenchGuest> {
  return fromDebian(await buildDebianGuest('xen-pv'), '(a) Debian 12 Xen PV');
}

/** debugfs on the guest's file system, read-only, at the partition's offset (unix_io "offset="). */
function debugfs(disk: string, request: string): Promise<string> {
  return sh('debugfs', ['-R', request, `${disk}?offset=${PART_OFFSET}`]);
}

/** The paths of the Xen PV guest that its recipe writes (configure() in test/guests/debian.ts). */
const CONFIG_FILES = ['/etc/fstab', '/etc/hostname', '/etc/hosts', '/etc/machine-id', '/etc/network/interfaces', '/boot/grub/grub.cfg'];
const CONFIG_DIRS = ['/etc/systemd/system', '/etc/initramfs-tools', '/usr/local/sbin'];

async function buildGrubPc(g: DebianGuest, dir: string): Promise<BenchGuest> {
  const parent = debianCacheRoot();
  const base = join(parent, 'base.tar');
  if (!existsSync(base)) throw new Error(`${base} is missing: buildDebianGuest('xen-pv') should have left it`);
  const work = await mkdtemp(join(parent, 'bench-grub-pc-'));
  try {
    const root = join(work, 'root');
    await mkdir(root);
    await sh('tar', ['--numeric-owner', '-xpf', base, '-C', root], { timeout: 10 * 60_000 });

    // grub-pc, with no service started (policy-rc.d, invoke-rc.d(8))
    const policy = join(root, 'usr/sbin/policy-rc.d');
    await writeFile(policy, '#!/bin/sh\nexit 101\n', { mode: 0o755 });
    const install = [root, 'apt-get', 'install', '-y', '-q', '--no-install-recommends', 'grub-pc'];
    try {
      await sh('chroot', install, { env: CHROOT_ENV });
    } catch {
      // the base's package lists may name versions the mirror has dropped since
      await sh('chroot', [root, 'apt-get', 'update', '-q'], { env: CHROOT_ENV });
      await sh('chroot', install, { env: CHROOT_ENV });
    }
    await sh('chroot', [root, 'apt-get', 'clean'], { env: CHROOT_ENV });
    await rm(policy, { force: true });

    // the Xen PV guest's own configuration, read from its disk
    const dump = join(work, 'dump');
    await mkdir(dump);
    for (const d of CONFIG_DIRS) {
      const to = join(dump, d);
      await mkdir(join(to, '..'), { recursive: true });
      // rdump makes <to>, refusing one that exists; permissions and owners are the guest's
      await debugfs(g.disk, `rdump ${d} ${join(to, '..')}`);
      if (!existsSync(to)) throw new Error(`debugfs could not read ${d} from ${g.disk}`);
      await sh('cp', ['-a', `${to}/.`, join(root, d)]);
    }
    for (const f of CONFIG_FILES) {
      await mkdir(join(root, f, '..'), { recursive: true });
      await debugfs(g.disk, `dump -p ${f} ${join(root, f)}`);
      if (!existsSync(join(root, f))) throw new Error(`debugfs could not read ${f} from ${g.disk}`);
    }
    // the initramfs the recipe regenerated with the Xen PV driver list
    await copyFile(g.initrd, join(root, 'boot', `initrd.img-${g.kernelVersion}`));

    const out = join(work, 'out');
    await mkdir(out);
    const disk = join(out, 'disk.raw');
    const size = (await stat(g.disk)).size;
    await writeFile(disk, '');
    await truncate(disk, size);
    // the first MiB: MBR with its partition table and disk signature, and no boot code
    const head = Buffer.alloc(PART_OFFSET);
    const src = await open(g.disk, 'r');
    try {
      await src.read(head, 0, PART_OFFSET, 0);
    } finally {
      await src.close();
    }
    const dst = await open(disk, 'r+');
    try {
      await dst.write(head, 0, PART_OFFSET, 0);
    } finally {
      await dst.close();
    }
    // the same mke2fs as the recipe's: label "root", the guest's UUID, hash seed from it
    await sh('mke2fs', [
      '-q', '-t', 'ext4', '-d', root, '-U', g.rootUuid, '-L', 'root',
      '-E', `offset=${PART_OFFSET},hash_seed=${g.rootUuid}`,
      '-F', disk, `${(size - PART_OFFSET) / 1024}k`,
    ]);
    if ((await stat(disk)).size !== size) throw new Error(`${disk}: mke2fs changed the image's size`);
    await copyFile(g.kernel, join(out, 'vmlinuz'));
    await copyFile(g.initrd, join(out, 'initrd.img'));
    const guest: BenchGuest = {
      label: '(a)+grub-pc',
      disk: join(dir, 'disk.raw'),
      kernelVersion: g.kernelVersion,
      kernel: join(dir, 'vmlinuz'),
      initrd: join(dir, 'initrd.img'),
      rootUuid: g.rootUuid,
      rootDevice: g.rootDevice,
      marker: `${DEBIAN_MARKER} xen-pv ${g.rootDevice}`,
    };
    await writeFile(join(out, 'guest.json'), JSON.stringify(guest, null, 2) + '\n');
    await rm(dir, { recursive: true, force: true });
    await rename(out, dir); // atomic: a half-built guest is never found in the cache
    return guest;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** (a)+grub-pc: the Xen PV guest with Debian's grub-pc installed (about a minute the first time). */
export async function xenPvGrubPcGuest(): Promise<BenchGuest> {
  const g = await buildDebianGuest('xen-pv');
  const dir = join(debianCacheRoot(), `bench-xen-pv-grub-pc-${RECIPE}`);
  try {
    const cached = JSON.parse(await readFile(join(dir, 'guest.json'), 'utf8')) as BenchGuest;
    if (existsSync(cached.disk) && existsSync(cached.kernel) && existsSync(cached.initrd)) return cached;
  } catch {
    // not built yet
  }
  return buildGrubPc(g, dir);
}
