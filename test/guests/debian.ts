/**
 * Real installed Debian 12 guests for the guest-adaptation tests, built from Debian's own
 * packages: one base root made by debootstrap (minbase with a kernel, systemd, udev, kmod,
 * initramfs-tools and ifupdown), then one variant per hypervisor, each the way an installer on
 * that hypervisor leaves it:
 *
 *   xen-pv  a Xen PV guest: initramfs with xen-blkfront as its only storage driver, root named
 *           /dev/xvda1, console and getty on hvc0, a pygrub-style /boot/grub/grub.cfg and no
 *           boot code in the MBR (Xen PV loads the kernel from outside: pygrub or xl's kernel=)
 *   kvm     a KVM guest: virtio drivers only, root /dev/vda1, console ttyS0, GRUB 2 in the MBR
 *   vmware  a VMware guest: vmw_pvscsi (with sd_mod) and vmxnet3 only, root /dev/sda1,
 *           open-vm-tools, consoles tty0 and ttyS0, GRUB 2 in the MBR
 *
 * Each is a raw disk: an MBR with one ext4 partition at 1 MiB. Once booted into its installed
 * system, a systemd unit prints `POLYVISOR-DEBIAN-UP <kind> <root device>` on its consoles and
 * powers the machine off. Before adaptation, each fails on the other hypervisors' devices.
 *
 * Nothing needs a loop device or a mount: the file system is filled with `mke2fs -d` at the
 * partition's offset, the initramfs is regenerated in a chroot without /proc, /sys or /dev
 * mounted, and GRUB's boot.img and core.img are written into the image file the way
 * grub-install's setup does (grub-core/boot/i386/pc/boot.S, util/setup.c).
 *
 * Cached under .cache/debian/<recipe>/ (git-ignored): base.tar (the debootstrapped root) and one
 * folder per kind. Bump RECIPE when anything below changes what is built. Builds in several
 * processes at once (node --test runs test files in parallel) wait on a lock file instead of
 * debootstrapping twice.
 *
 * Host packages: debootstrap, grub-pc-bin (grub-common), fdisk (sfdisk), e2fsprogs, tar; and
 * python3 for pygrub (below), which is unpacked from Debian's xen-utils-4.17 on first use.
 *
 * Run as a script to pre-build: `node dist/test/guests/debian.js [xen-pv|kvm|vmware ...]`.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, open, readdir, readFile, rename, rm, stat, symlink, truncate, unlink, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export type DebianKind = 'xen-pv' | 'kvm' | 'vmware';
export const DEBIAN_KINDS: readonly DebianKind[] = ['xen-pv', 'kvm', 'vmware'];

/** The line the guest prints once its installed system is up: `<marker> <kind> <root device>`. */
export const DEBIAN_MARKER = 'POLYVISOR-DEBIAN-UP';

export interface DebianGuest {
  /** the raw disk image (cached: attach it through an overlay, never write it) */
  disk: string;
  kind: DebianKind;
  /** e.g. "6.1.0-50-amd64" */
  kernelVersion: string;
  /** copies of the installed kernel and initramfs, for booting with -kernel/-initrd or xl */
  kernel: string;
  initrd: string;
  /** the ext4 file system's UUID (fixed per kind) */
  rootUuid: string;
  /** the device the guest's fstab and kernel command line name as root */
  rootDevice: string;
  /** the whole line the guest prints when up, e.g. "POLYVISOR-DEBIAN-UP kvm /dev/vda1" */
  marker: string;
}

// bump when the recipe changes, so stale caches are rebuilt
const RECIPE = 'd1';

const SUITE = 'bookworm';
const BASE_PACKAGES = ['linux-image-amd64', 'systemd-sysv', 'udev', 'kmod', 'initramfs-tools', 'ifupdown'];

/** The disk: 2 GiB virtual, one partition from 1 MiB to the end (sectors of 512 bytes). */
const DISK_SIZE = 2 * 1024 ** 3;
const PART_START = 2048;
const SECTOR = 512;

/** Where host grub-pc-bin keeps the i386-pc boot images and modules. */
const GRUB_I386_PC = '/usr/lib/grub/i386-pc';

interface Recipe {
  rootDevice: string;
  /** /etc/initramfs-tools/modules with MODULES=list: nothing else gets in but hooks' extras */
  modules: string[];
  /** kernel console= arguments, in order: the last one becomes /dev/console */
  consoles: string[];
  /** serial-getty@ units to enable */
  gettys: string[];
  packages: string[];
  /** 'mbr': GRUB 2 in the MBR; 'pygrub': a grub.cfg for pygrub and no boot code */
  boot: 'mbr' | 'pygrub';
  uuid: string;
  /** the MBR's disk signature (sfdisk label-id), fixed so images are reproducible */
  labelId: string;
}

// ext4 goes in every list: with MODULES=list initramfs-tools adds no file system of its own
// (hook-functions only adds the root's file system for MODULES=dep), and ext4 is a module here.
const RECIPES: Record<DebianKind, Recipe> = {
  'xen-pv': {
    rootDevice: '/dev/xvda1',
    modules: ['xen_blkfront', 'xen_netfront', 'ext4'],
    consoles: ['hvc0'],
    gettys: ['hvc0'],
    packages: [],
    boot: 'pygrub',
    uuid: '5e1f0a01-0000-4000-8000-00000000a001',
    labelId: '0x5e1f0a01',
  },
  kvm: {
    rootDevice: '/dev/vda1',
    modules: ['virtio_pci', 'virtio_blk', 'virtio_net', 'virtio_scsi', 'ext4'],
    consoles: ['ttyS0'],
    gettys: ['ttyS0'],
    packages: [],
    boot: 'mbr',
    uuid: '5e1f0a01-0000-4000-8000-00000000a002',
    labelId: '0x5e1f0a02',
  },
  vmware: {
    rootDevice: '/dev/sda1',
    // sd_mod pulls in t10-pi and its CRC modules (RUNBOOK); initramfs-tools resolves them
    modules: ['vmw_pvscsi', 'sd_mod', 'vmxnet3', 'ext4'],
    consoles: ['tty0', 'ttyS0'],
    gettys: ['ttyS0'],
    packages: ['open-vm-tools'],
    boot: 'mbr',
    uuid: '5e1f0a01-0000-4000-8000-00000000a003',
    labelId: '0x5e1f0a03',
  },
};

export function debianCacheRoot(): string {
  return resolve(process.env.POLYVISOR_CACHE ?? join(process.cwd(), '.cache'), 'debian', RECIPE);
}

/** The device a kind's guest names as root (fstab, kernel command line). */
export function debianRootDevice(kind: DebianKind): string {
  return RECIPES[kind].rootDevice;
}

const CHROOT_ENV = {
  PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
  LC_ALL: 'C',
  DEBIAN_FRONTEND: 'noninteractive',
  HOME: '/root',
};

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

/** Runs `args` inside the chroot `root` (no /proc, /sys or /dev mounts: none is needed). */
function inChroot(root: string, args: string[], timeout?: number): Promise<string> {
  return sh('chroot', [root, ...args], { env: CHROOT_ENV, timeout });
}

const HOST_TOOLS: Array<[string, string]> = [
  ['debootstrap', 'debootstrap'],
  ['grub-mkimage', 'grub-common'],
  ['sfdisk', 'fdisk'],
  ['mke2fs', 'e2fsprogs'],
  ['tar', 'tar'],
  ['chroot', 'coreutils'],
];

async function checkHostTools(): Promise<void> {
  const missing: string[] = [];
  for (const [tool, pkg] of HOST_TOOLS) {
    try {
      await sh('sh', ['-c', `command -v ${tool}`]);
    } catch {
      missing.push(pkg);
    }
  }
  if (!existsSync(join(GRUB_I386_PC, 'boot.img'))) missing.push('grub-pc-bin');
  if (missing.length) throw new Error(`the Debian test guests need: apt-get install ${[...new Set(missing)].join(' ')}`);
}

/** The Debian mirror this host's apt uses (deb822 or one-line sources), else deb.debian.org. */
function debianMirror(): string {
  const files = ['/etc/apt/sources.list'];
  try {
    const dir = '/etc/apt/sources.list.d';
    for (const f of readdirSync(dir).sort()) if (f.endsWith('.sources') || f.endsWith('.list')) files.push(join(dir, f));
  } catch {
    // no sources.list.d
  }
  for (const f of files) {
    let text: string;
    try {
      text = readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    // deb822 stanza: URIs + Suites naming bookworm; one-line: "deb URI bookworm main"
    for (const stanza of text.split(/\n\s*\n/)) {
      const uris = /^URIs:\s*(\S+)/m.exec(stanza);
      const suites = /^Suites:\s*(.*)$/m.exec(stanza);
      if (uris && suites && suites[1]!.split(/\s+/).includes(SUITE) && /^Types:.*\bdeb\b/m.test(stanza)) return uris[1]!;
    }
    const line = new RegExp(`^deb\\s+(?:\\[[^\\]]*\\]\\s+)?(\\S+)\\s+${SUITE}\\s`, 'm').exec(text);
    if (line) return line[1]!;
  }
  return 'http://deb.debian.org/debian';
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Runs `fn` holding the lock file `path` (created exclusively, holding our pid). Another
 * process's lock is waited for; a lock whose process is gone is stale and taken over.
 */
async function withLock<T>(path: string, fn: () => Promise<T>, waitMs = 45 * 60_000): Promise<T> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      const fh = await open(path, 'wx');
      await fh.writeFile(String(process.pid));
      await fh.close();
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = Number((await readFile(path, 'utf8').catch(() => '')).trim());
      if (Number.isSafeInteger(pid) && pid > 0 && !pidAlive(pid)) {
        await unlink(path).catch(() => undefined);
        continue;
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${path} (held by pid ${pid})`);
      await sleep(2000);
    }
  }
  try {
    return await fn();
  } finally {
    await unlink(path).catch(() => undefined);
  }
}

/**
 * Removes work folders `<prefix>XXXXXX` that a killed build left in the cache. Called with the
 * lock held, so no live build owns them.
 */
async function removeLeftovers(prefix: string): Promise<void> {
  for (const f of await readdir(debianCacheRoot())) {
    if (f.startsWith(prefix) && /^[A-Za-z0-9]{6}$/.test(f.slice(prefix.length))) {
      await rm(join(debianCacheRoot(), f), { recursive: true, force: true });
    }
  }
}

let basePromise: Promise<string> | undefined;

/** The debootstrapped base root as a tarball (built once, about two to five minutes). */
function ensureBase(): Promise<string> {
  basePromise ??= (async () => {
    const dir = debianCacheRoot();
    const tarball = join(dir, 'base.tar');
    if (existsSync(tarball)) return tarball;
    await mkdir(dir, { recursive: true });
    return withLock(join(dir, 'base.lock'), async () => {
      if (existsSync(tarball)) return tarball; // another process built it while we waited
      await removeLeftovers('base-');
      const work = await mkdtemp(join(dir, 'base-'));
      try {
        const root = join(work, 'root');
        await sh(
          'debootstrap',
          ['--variant=minbase', `--include=${BASE_PACKAGES.join(',')}`, SUITE, root, debianMirror()],
          { timeout: 40 * 60_000 },
        );
        // the downloaded .debs are not part of an installed system; the package lists stay,
        // so variants can apt-get install more
        await sh('sh', ['-c', 'rm -f var/cache/apt/archives/*.deb var/cache/apt/*.bin'], { cwd: root });
        const tmp = join(work, 'base.tar');
        await sh('tar', ['--numeric-owner', '-C', root, '-cf', tmp, '.'], { timeout: 10 * 60_000 });
        await rename(tmp, tarball); // atomic: a half-written base is never found
        return tarball;
      } finally {
        await rm(work, { recursive: true, force: true });
      }
    });
  })();
  basePromise.catch(() => (basePromise = undefined));
  return basePromise;
}

/** The shell script the marker unit runs (a oneshot unit ordered after local-fs.target). */
function markerScript(kind: DebianKind): string {
  return `#!/bin/sh
# Polyvisor test guest: say that the installed system is up, from which root, then power off.
root=$(findmnt -n -o SOURCE /)
line="${DEBIAN_MARKER} ${kind} $root"
for c in /dev/console /dev/ttyS0 /dev/hvc0; do
  # a port with no device behind it fails to open; timeout guards against a blocked one
  [ -c "$c" ] && timeout 5 sh -c 'echo "$1" > "$2"' sh "$line" "$c" 2>/dev/null
done
systemctl poweroff
`;
}

const MARKER_UNIT = `[Unit]
Description=Polyvisor test guest marker
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/polyvisor-marker

[Install]
WantedBy=multi-user.target
`;

function kernelCmdline(r: Recipe): string {
  return [`root=${r.rootDevice}`, 'ro', ...r.consoles.map((c) => `console=${c}`)].join(' ');
}

/** /boot/grub/grub.cfg: GRUB 2 proper for 'mbr' guests, the plain form pygrub reads for Xen PV. */
function grubCfg(kind: DebianKind, r: Recipe, version: string): string {
  const entry = [
    `menuentry 'Debian GNU/Linux 12 (${kind}), with Linux ${version}' {`,
    ...(r.boot === 'mbr'
      ? ['  insmod part_msdos', '  insmod ext2', `  search --no-floppy --fs-uuid --set=root ${r.uuid}`]
      : []),
    `  linux /boot/vmlinuz-${version} ${kernelCmdline(r)}`,
    `  initrd /boot/initrd.img-${version}`,
    '}',
  ];
  const head =
    r.boot === 'mbr'
      ? ['serial --unit=0 --speed=115200', 'terminal_input serial console', 'terminal_output serial console']
      : [];
  return [...head, 'set default=0', 'set timeout=1', '', ...entry, ''].join('\n');
}

/** Writes the variant's configuration into the extracted root `root`. */
async function configure(kind: DebianKind, r: Recipe, root: string): Promise<void> {
  const etc = (p: string) => join(root, 'etc', p);
  await writeFile(etc('fstab'), `# <file system> <mount point> <type> <options> <dump> <pass>\n${r.rootDevice} / ext4 errors=remount-ro 0 1\n`);
  await writeFile(etc('hostname'), `polyvisor-${kind}\n`);
  await writeFile(etc('hosts'), `127.0.0.1\tlocalhost\n127.0.1.1\tpolyvisor-${kind}\n`);
  // a fixed machine id per kind: no first-boot logic, reproducible images
  await writeFile(etc('machine-id'), createHash('sha256').update(`polyvisor-debian-${kind}`).digest('hex').slice(0, 32) + '\n');
  await writeFile(etc('network/interfaces'), 'auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n');

  // initramfs-tools: only the listed drivers (initramfs-tools(8), initramfs.conf(5) MODULES=list)
  const conf = await readFile(etc('initramfs-tools/initramfs.conf'), 'utf8');
  if (!/^MODULES=/m.test(conf)) throw new Error('initramfs.conf has no MODULES= line');
  await writeFile(etc('initramfs-tools/initramfs.conf'), conf.replace(/^MODULES=.*$/m, 'MODULES=list'));
  const mods = await readFile(etc('initramfs-tools/modules'), 'utf8');
  await writeFile(etc('initramfs-tools/modules'), mods + r.modules.join('\n') + '\n');

  await mkdir(join(root, 'usr/local/sbin'), { recursive: true });
  await writeFile(join(root, 'usr/local/sbin/polyvisor-marker'), markerScript(kind), { mode: 0o755 });
  await writeFile(etc('systemd/system/polyvisor-marker.service'), MARKER_UNIT);
  const wants = etc('systemd/system/multi-user.target.wants');
  await mkdir(wants, { recursive: true });
  await symlink('/etc/systemd/system/polyvisor-marker.service', join(wants, 'polyvisor-marker.service'));
  const gettyWants = etc('systemd/system/getty.target.wants');
  await mkdir(gettyWants, { recursive: true });
  for (const tty of r.gettys) {
    await symlink('/lib/systemd/system/serial-getty@.service', join(gettyWants, `serial-getty@${tty}.service`));
  }
}

/** Installs `packages` in the chroot with no service started (policy-rc.d, invoke-rc.d(8)). */
async function installPackages(root: string, packages: string[]): Promise<void> {
  if (packages.length === 0) return;
  const policy = join(root, 'usr/sbin/policy-rc.d');
  await writeFile(policy, '#!/bin/sh\nexit 101\n', { mode: 0o755 });
  try {
    const install = ['apt-get', 'install', '-y', '-q', '--no-install-recommends', ...packages];
    try {
      await inChroot(root, install);
    } catch {
      // the base's package lists may name versions the mirror has dropped since
      await inChroot(root, ['apt-get', 'update', '-q']);
      await inChroot(root, install);
    }
    await inChroot(root, ['apt-get', 'clean']);
  } finally {
    await rm(policy, { force: true });
  }
}

/**
 * Puts GRUB 2 into the image the way grub-install's setup does for an MBR disk
 * (util/setup.c): core.img right after the MBR (sector 1, inside the 1 MiB gap before the
 * partition), and boot.img's first 440 bytes into the MBR with the disk's own BPB area and
 * partition table kept. Offsets are boot.S's: kernel_sector at 0x5c (the LBA of core.img's
 * first sector), boot_drive at 0x64 (0xff: the drive the BIOS booted from), and the jump at
 * 0x66 replaced by two NOPs on hard disks (the workaround for BIOSes that pass a wrong drive).
 * core.img's first sector is diskboot.img, whose blocklist (the last 12 bytes of that sector:
 * start LBA u64, sector count u16, load segment u16) says where the rest of core.img lies.
 */
async function installGrubMbr(disk: string, core: Buffer): Promise<void> {
  const boot = await readFile(join(GRUB_I386_PC, 'boot.img'));
  if (boot.length !== SECTOR || boot.readUInt16LE(510) !== 0xaa55) throw new Error(`${GRUB_I386_PC}/boot.img is not a 512-byte boot sector`);
  const coreSector = 1;
  const coreSectors = Math.ceil(core.length / SECTOR);
  if (core.length < SECTOR || coreSector + coreSectors > PART_START) {
    throw new Error(`core.img of ${core.length} bytes does not fit the ${PART_START - 1} sectors before the partition`);
  }
  const bl = SECTOR - 12;
  const restSectors = core.readUInt16LE(bl + 8);
  if (restSectors !== coreSectors - 1) throw new Error(`core.img's blocklist counts ${restSectors} sectors, expected ${coreSectors - 1}`);
  const patched = Buffer.from(core);
  patched.writeBigUInt64LE(BigInt(coreSector + 1), bl);

  const fh = await open(disk, 'r+');
  try {
    const mbr = Buffer.alloc(SECTOR);
    await fh.read(mbr, 0, SECTOR, 0);
    if (mbr.readUInt16LE(510) !== 0xaa55) throw new Error(`${disk}: no MBR signature after sfdisk`);
    const code = Buffer.from(boot.subarray(0, 440));
    mbr.copy(code, 0x03, 0x03, 0x5a); // the BPB area is the disk's, not boot.img's
    code.writeBigUInt64LE(BigInt(coreSector), 0x5c);
    code[0x64] = 0xff;
    code[0x66] = 0x90;
    code[0x67] = 0x90;
    await fh.write(code, 0, 440, 0);
    await fh.write(patched, 0, patched.length, coreSector * SECTOR);
  } finally {
    await fh.close();
  }
}

/** Builds the core image and copies GRUB's modules into /boot/grub/i386-pc as grub-install does. */
async function grubCore(root: string, work: string): Promise<Buffer> {
  const core = join(work, 'core.img');
  // biosdisk, part_msdos and ext2 let core.img read its prefix; everything else (normal,
  // linux, search, serial...) loads from /boot/grub/i386-pc like a grub-install'ed system
  await sh('grub-mkimage', ['-O', 'i386-pc', '-o', core, '-p', '(hd0,msdos1)/boot/grub', 'biosdisk', 'part_msdos', 'ext2']);
  const dest = join(root, 'boot/grub/i386-pc');
  await mkdir(dest, { recursive: true });
  for (const f of await readdir(GRUB_I386_PC)) {
    if (f.endsWith('.mod') || f.endsWith('.lst') || f === 'boot.img') await copyFile(join(GRUB_I386_PC, f), join(dest, f));
  }
  await copyFile(core, join(dest, 'core.img'));
  return readFile(core);
}

async function buildVariant(kind: DebianKind, dir: string): Promise<DebianGuest> {
  const r = RECIPES[kind];
  const base = await ensureBase();
  const parent = debianCacheRoot();
  const work = await mkdtemp(join(parent, `${kind}-`));
  try {
    const root = join(work, 'root');
    await mkdir(root);
    await sh('tar', ['--numeric-owner', '-xpf', base, '-C', root], { timeout: 10 * 60_000 });

    await installPackages(root, r.packages);
    await configure(kind, r, root);
    await inChroot(root, ['update-initramfs', '-u', '-k', 'all']);

    const versions = (await readdir(join(root, 'boot'))).filter((f) => f.startsWith('vmlinuz-')).map((f) => f.slice('vmlinuz-'.length));
    if (versions.length !== 1) throw new Error(`expected one kernel in the base root, found: ${versions.join(', ') || 'none'}`);
    const version = versions[0]!;
    await mkdir(join(root, 'boot/grub'), { recursive: true });
    await writeFile(join(root, 'boot/grub/grub.cfg'), grubCfg(kind, r, version));
    const core = r.boot === 'mbr' ? await grubCore(root, work) : undefined;

    const out = join(work, 'out');
    await mkdir(out);
    const disk = join(out, 'disk.raw');
    await writeFile(disk, '');
    await truncate(disk, DISK_SIZE); // sparse: only what mke2fs and GRUB write is allocated
    const table = `label: dos\nlabel-id: ${r.labelId}\nunit: sectors\n\nstart=${PART_START}, type=83, bootable\n`;
    await sfdisk(disk, table);
    const partBytes = DISK_SIZE - PART_START * SECTOR;
    await sh('mke2fs', [
      '-q', '-t', 'ext4', '-d', root, '-U', r.uuid, '-L', 'root',
      '-E', `offset=${PART_START * SECTOR},hash_seed=${r.uuid}`,
      '-F', disk, `${partBytes / 1024}k`,
    ]);
    if ((await stat(disk)).size !== DISK_SIZE) throw new Error(`${disk}: mke2fs changed the image's size`);
    if (core) await installGrubMbr(disk, core);

    await copyFile(join(root, 'boot', `vmlinuz-${version}`), join(out, 'vmlinuz'));
    await copyFile(join(root, 'boot', `initrd.img-${version}`), join(out, 'initrd.img'));
    const guest: DebianGuest = {
      disk: join(dir, 'disk.raw'),
      kind,
      kernelVersion: version,
      kernel: join(dir, 'vmlinuz'),
      initrd: join(dir, 'initrd.img'),
      rootUuid: r.uuid,
      rootDevice: r.rootDevice,
      marker: `${DEBIAN_MARKER} ${kind} ${r.rootDevice}`,
    };
    await writeFile(join(out, 'guest.json'), JSON.stringify(guest, null, 2) + '\n');
    await rm(dir, { recursive: true, force: true });
    await rename(out, dir); // atomic: a half-built guest is never found in the cache
    return guest;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

function sfdisk(disk: string, script: string): Promise<void> {
  return new Promise((res, rej) => {
    const child = execFile('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', disk], { timeout: 60_000 }, (err, _out, stderr) =>
      err ? rej(new Error(`sfdisk ${disk} failed: ${stderr || err.message}`)) : res(),
    );
    child.stdin!.end(script);
  });
}

const building = new Map<DebianKind, Promise<DebianGuest>>();

/** Builds (or finds in the cache) the Debian guest of `kind`. */
export function buildDebianGuest(kind: DebianKind): Promise<DebianGuest> {
  if (!RECIPES[kind]) return Promise.reject(new Error(`unknown Debian guest kind ${String(kind)}`));
  let p = building.get(kind);
  if (!p) {
    p = (async () => {
      const dir = join(debianCacheRoot(), kind);
      const cached = await readGuest(dir);
      if (cached) return cached;
      await checkHostTools();
      await mkdir(debianCacheRoot(), { recursive: true });
      return withLock(join(debianCacheRoot(), `${kind}.lock`), async () => {
        const again = await readGuest(dir);
        if (again) return again; // another process built it while we waited
        await removeLeftovers(`${kind}-`);
        return buildVariant(kind, dir);
      });
    })();
    p.catch(() => building.delete(kind));
    building.set(kind, p);
  }
  return p;
}

async function readGuest(dir: string): Promise<DebianGuest | undefined> {
  try {
    const g = JSON.parse(await readFile(join(dir, 'guest.json'), 'utf8')) as DebianGuest;
    return existsSync(g.disk) && existsSync(g.kernel) && existsSync(g.initrd) ? g : undefined;
  } catch {
    return undefined;
  }
}

export interface PygrubChoice {
  /** the kernel and ramdisk pygrub copied out of the disk, and the command line it chose */
  kernel?: string;
  ramdisk?: string;
  args: string;
}

let pygrubPromise: Promise<string> | undefined;

/**
 * Xen's own pygrub (xen-utils-4.17) and the file-system library it reads disks with
 * (libxenfsimage in libxenmisc4.17), unpacked from Debian's packages with dpkg -x rather than
 * installed: installing xen-utils would bring Xen's init scripts onto the host.
 */
function pygrubRoot(): Promise<string> {
  pygrubPromise ??= (async () => {
    const dir = join(debianCacheRoot(), 'pygrub');
    if (existsSync(join(dir, 'usr/lib/xen-4.17/bin/pygrub'))) return dir;
    await mkdir(debianCacheRoot(), { recursive: true });
    return withLock(join(debianCacheRoot(), 'pygrub.lock'), async () => {
      if (existsSync(join(dir, 'usr/lib/xen-4.17/bin/pygrub'))) return dir;
      await removeLeftovers('pygrub-');
      const work = await mkdtemp(join(debianCacheRoot(), 'pygrub-'));
      try {
        const pkgs = ['xen-utils-4.17', 'libxenmisc4.17'];
        try {
          await sh('apt-get', ['download', ...pkgs], { cwd: work });
        } catch {
          await sh('apt-get', ['update', '-q']);
          await sh('apt-get', ['download', ...pkgs], { cwd: work });
        }
        const out = join(work, 'root');
        for (const deb of (await readdir(work)).filter((f) => f.endsWith('.deb'))) await sh('dpkg', ['-x', join(work, deb), out]);
        await rm(dir, { recursive: true, force: true });
        await rename(out, dir);
        return dir;
      } finally {
        await rm(work, { recursive: true, force: true });
      }
    });
  })();
  pygrubPromise.catch(() => (pygrubPromise = undefined));
  return pygrubPromise;
}

/**
 * What Xen's pygrub boots from `disk` (`bootloader = "pygrub"` in xl.cfg): it reads the
 * disk's grub.cfg and, unless `notReally`, copies the chosen kernel and ramdisk into `outDir`.
 */
export async function pygrub(disk: string, outDir: string, notReally = false): Promise<PygrubChoice> {
  const root = await pygrubRoot();
  const xen = join(root, 'usr/lib/xen-4.17');
  const out = await sh(
    'python3',
    [join(xen, 'bin/pygrub'), '-q', ...(notReally ? ['-n'] : []), '--output-format=simple', `--output-directory=${outDir}`, disk],
    {
      env: {
        ...process.env,
        PYTHONPATH: join(xen, 'lib/python'),
        LD_LIBRARY_PATH: join(xen, 'lib/x86_64-linux-gnu'),
        // libxenfsimage looks for its file-system plugins here before its built-in path
        XEN_FSIMAGE_FSDIR: join(xen, 'lib/x86_64-linux-gnu/xenfsimage'),
      },
      timeout: 120_000,
    },
  );
  const field = (name: string) => new RegExp(`^${name} (.*)$`, 'm').exec(out)?.[1]?.trim();
  const kernel = field('kernel');
  const args = field('args');
  if (args === undefined) throw new Error(`pygrub chose nothing on ${disk}:\n${out}`);
  return { kernel: kernel === 'None' ? undefined : kernel, ramdisk: field('ramdisk'), args };
}

/** How a target hypervisor attaches a guest's disk, as QEMU device models (RUNBOOK table). */
export type DiskBus = 'virtio' | 'pvscsi';

/** QEMU arguments attaching the qcow2 `file` as the first disk on `bus`. */
export function qemuDiskArgs(bus: DiskBus, file: string): string[] {
  const drive = `file=${file},format=qcow2`;
  if (bus === 'virtio') return ['-drive', `${drive},if=virtio`];
  return ['-device', 'pvscsi,id=pvscsi0', '-drive', `${drive},if=none,id=disk0`, '-device', 'scsi-hd,drive=disk0,bus=pvscsi0.0'];
}

export interface ConsoleRun {
  /** everything QEMU wrote (serial console on stdout with -nographic, plus stderr) */
  output: string;
  /** the first of `until` that matched, or 'silence' / 'timeout' / 'exit' */
  stop: RegExp | 'silence' | 'timeout' | 'exit';
  /** seconds from QEMU's start to the match (or to the stop) */
  seconds: number;
  /** whether QEMU ended by itself (the guest powered off), and its status */
  exited: boolean;
  exitCode: number | null;
}

/**
 * Runs qemu-system-x86_64 with `args` and watches its console until one of `until` matches,
 * QEMU exits, `silenceMs` pass with no output once `silenceAfter` has appeared (a machine
 * that stopped talking), or `timeoutMs` pass. With `waitExit`, after a match QEMU is given
 * that many more milliseconds to end by itself (a guest powering off). QEMU is always killed
 * before this returns.
 */
export async function runQemuConsole(
  args: string[],
  opts: { until: RegExp[]; timeoutMs: number; waitExitMs?: number; silenceAfter?: RegExp; silenceMs?: number },
): Promise<ConsoleRun> {
  const t0 = Date.now();
  const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  let exited = false;
  let exitCode: number | null = null;
  const ended = new Promise<void>((res) => child.on('close', (code) => ((exited = true), (exitCode = code), res())));
  child.on('error', (e) => (output += `\nspawn error: ${e.message}\n`));
  try {
    const stop = await new Promise<ConsoleRun['stop']>((res) => {
      let quiet: NodeJS.Timeout | undefined;
      const timer = setTimeout(() => res('timeout'), opts.timeoutMs);
      const done = (why: ConsoleRun['stop']) => {
        clearTimeout(timer);
        if (quiet) clearTimeout(quiet);
        res(why);
      };
      const onData = (b: Buffer) => {
        output += b.toString('latin1');
        const hit = opts.until.find((re) => re.test(output));
        if (hit) return done(hit);
        if (opts.silenceAfter && opts.silenceMs && opts.silenceAfter.test(output)) {
          if (quiet) clearTimeout(quiet);
          quiet = setTimeout(() => done('silence'), opts.silenceMs);
        }
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      void ended.then(() => done('exit'));
    });
    const seconds = (Date.now() - t0) / 1000;
    if (stop instanceof RegExp && opts.waitExitMs) {
      // an unref'd timer: once the guest has ended, nothing keeps the test process waiting
      await Promise.race([ended, new Promise<void>((r) => setTimeout(r, opts.waitExitMs).unref())]);
    }
    return { output, stop, seconds, exited, exitCode };
  } finally {
    if (!exited) {
      child.kill('SIGKILL');
      await ended;
    }
  }
}

if (process.argv[1] && resolve(process.argv[1]) === resolve(new URL(import.meta.url).pathname)) {
  const kinds = process.argv.slice(2) as DebianKind[];
  (async () => {
    for (const kind of kinds.length ? kinds : DEBIAN_KINDS) {
      if (!DEBIAN_KINDS.includes(kind)) throw new Error(`unknown kind ${kind}; one of ${DEBIAN_KINDS.join(', ')}`);
      const t0 = Date.now();
      const g = await buildDebianGuest(kind);
      console.log(JSON.stringify({ ...g, seconds: (Date.now() - t0) / 1000 }));
    }
  })().catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exitCode = 1;
  });
}
