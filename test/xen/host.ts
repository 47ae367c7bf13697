/**
 * A real Xen host for tests: Debian's Xen 4.17 hypervisor with a Debian 12 dom0 (systemd, the
 * xl toolstack, OpenSSH), run under QEMU and reached over SSH on a loopback port, the way an
 * administrator reaches a real dom0 (RUNBOOK: "A real Xen host under software emulation").
 *
 * Built once and cached under .cache/xen/<RECIPE>/ (git-ignored): the hypervisor, the dom0
 * kernel and initramfs, an SSH key pair and dom0.img, an ext4 image of a debootstrapped root
 * (about 2 to 5 minutes, mostly debootstrap). Every boot runs on a qcow2 overlay in a fresh
 * temporary folder, so the cached image is never written and each run starts clean.
 *
 * Only PV guests run on this host: the emulated CPU has no VT-x, so PVH and HVM guests fail
 * at `xl create` ("neither hap nor shadow paging available").
 *
 * Nothing is left behind: stop() kills QEMU and removes the run folder; so does a hook when
 * Node exits or is interrupted, and a QEMU left by a process that was killed outright is
 * found and ended at the next start.
 *
 * By hand: `node dist/test/xen/host.js up` boots one and prints how to reach it,
 * `node dist/test/xen/host.js down` stops it (docs/xen-host.md).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, open, readdir, readFile, rename, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { SshSession } from '../../src/hosts/xen/ssh.js';
import { formatXenUri } from '../../src/hosts/xen/uri.js';

const run = promisify(execFile);

/** Bump when anything below changes what is built, so that stale caches are rebuilt. */
export const RECIPE = 'dom0-bookworm-r1';
/** the dom0's Debian release; its Xen and kernel come from this suite, whatever the machine runs */
const SUITE = 'bookworm';
const PACKAGES = [
  'xen-hypervisor-4.17-amd64', // the hypervisor from the same build as the tools (libxc and Xen must agree)
  'xen-utils-4.17',
  'linux-image-amd64',
  'openssh-server',
  'systemd-sysv',
  'kmod',
  'udev',
  'iproute2',
];
/** units a disposable test host does not need; masked to shorten the boot */
const MASKED = ['e2scrub_reap.service', 'apt-daily.timer', 'apt-daily-upgrade.timer', 'xendomains.service'];
const DOM0_IMAGE_SIZE = '3G';
/** QEMU's user network: the dom0 always gets this address (no DHCP wait) */
const NETWORK = '[Match]\nName=en* eth*\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\nDNS=10.0.2.3\n';
/** bounded wait for `xl info` to answer after QEMU starts (about 40-70 s on 2 cores) */
const BOOT_TIMEOUT_MS = Number(process.env.POLYVISOR_XEN_BOOT_TIMEOUT_MS ?? 300_000);

export interface XenHostImage {
  dir: string;
  xen: string;
  kernel: string;
  initrd: string;
  dom0: string;
  key: string;
  /** seconds the build took, when this call built it (undefined when it came from the cache) */
  builtSeconds?: number;
}

export interface SshTarget {
  user: string;
  host: string;
  port: number;
  /** the private key */
  identityFile: string;
  /** host keys seen by this run */
  knownHostsFile: string;
}

export interface XenHost {
  /** xen+ssh://root@127.0.0.1:PORT, what XenDriver takes */
  uri: string;
  sshTarget: SshTarget;
  /** an SSH session for commands (src/hosts/xen/ssh.ts) */
  ssh: SshSession;
  /** seconds from QEMU's start until `xl info` answered */
  bootSeconds: number;
  /** runs a command in dom0 (argv, quoted for the remote shell); stdout, or ERR_HOST */
  exec(argv: string[]): Promise<string>;
  /** copies a local file into dom0 (scp) */
  copyIn(localPath: string, remotePath: string): Promise<void>;
  /** the last lines of the machine's serial console (Xen's and dom0's boot messages) */
  consoleTail(lines?: number): string;
  /** `ssh ...` as a user types it */
  sshCommand(): string;
  /** powers the machine off, kills QEMU, removes the run folder; safe to call twice */
  stop(): Promise<void>;
}

export function cacheRoot(): string {
  return resolve(process.env.POLYVISOR_CACHE ?? join(process.cwd(), '.cache'), 'xen');
}

async function sh(cmd: string, args: string[], opts: { cwd?: string; timeout?: number } = {}): Promise<string> {
  const { stdout } = await run(cmd, args, { cwd: opts.cwd, timeout: opts.timeout, maxBuffer: 64 << 20 });
  return stdout;
}

async function ensureTool(tool: string, pkg: string): Promise<void> {
  try {
    await sh('sh', ['-c', `command -v ${tool} || test -x /usr/sbin/${tool}`]);
  } catch {
    await sh('apt-get', ['install', '-y', '-q', pkg]).catch(async () => {
      await sh('apt-get', ['update', '-q']);
      await sh('apt-get', ['install', '-y', '-q', pkg]);
    });
  }
}

/** The machine's own Debian mirror (deb822 sources first, then sources.list), for debootstrap. */
export function debianMirror(): string {
  const deb822 = '/etc/apt/sources.list.d/debian.sources';
  if (existsSync(deb822)) {
    for (const stanza of readFileSync(deb822, 'utf8').split(/\n\s*\n/)) {
      const uris = /^URIs:\s*(\S+)/m.exec(stanza)?.[1];
      const suites = /^Suites:\s*(.+)$/m.exec(stanza)?.[1]?.split(/\s+/) ?? [];
      if (uris && /^(Types:.*\bdeb\b)/m.test(stanza) && suites.some((s) => !s.includes('-'))) return uris;
    }
  }
  const list = '/etc/apt/sources.list';
  if (existsSync(list)) {
    const m = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+[a-z]+\s/m.exec(readFileSync(list, 'utf8'));
    if (m && !m[1]!.includes('security')) return m[1]!;
  }
  return 'http://deb.debian.org/debian';
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Holds `<path>` as a lock file with our pid; waits while a live process holds it. */
async function withLock<T>(path: string, fn: () => Promise<T>): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      const fh = await open(path, 'wx');
      await fh.writeFile(String(process.pid));
      await fh.close();
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const holder = Number(await readFile(path, 'utf8').catch(() => '0'));
      if (!holder || !alive(holder)) await unlink(path).catch(() => undefined);
      else if (i > 1800) throw new Error(`${path}: still held by process ${holder} after 30 minutes`);
      else await new Promise((r) => setTimeout(r, 1000));
    }
  }
  try {
    return await fn();
  } finally {
    await unlink(path).catch(() => undefined);
  }
}

let building: Promise<XenHostImage> | undefined;

/** Builds the host's files, or finds them in the cache. */
export function buildXenHost(): Promise<XenHostImage> {
  building ??= (async () => {
    await mkdir(cacheRoot(), { recursive: true });
    return withLock(join(cacheRoot(), `${RECIPE}.lock`), build);
  })();
  return building;
}

function imageIn(dir: string): XenHostImage {
  return { dir, xen: join(dir, 'xen.elf'), kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.img'), dom0: join(dir, 'dom0.img'), key: join(dir, 'id_ed25519') };
}

async function build(): Promise<XenHostImage> {
  const dir = join(cacheRoot(), RECIPE);
  const img = imageIn(dir);
  if ([img.xen, img.kernel, img.initrd, img.dom0, img.key].every((f) => existsSync(f))) return img;

  const started = Date.now();
  await ensureTool('debootstrap', 'debootstrap');
  await ensureTool('mke2fs', 'e2fsprogs');
  await ensureTool('ssh-keygen', 'openssh-client');
  const work = await mkdtemp(join(cacheRoot(), 'build-'));
  try {
    const root = join(work, 'root');
    // minbase: only what the packages need; their Recommends are left out
    await sh('debootstrap', ['--variant=minbase', `--include=${PACKAGES.join(',')}`, SUITE, root, debianMirror()], { timeout: 30 * 60_000 });

    // the key the tests log in with
    const out = join(work, 'out');
    await mkdir(out);
    await sh('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'polyvisor-xen-test-host', '-f', join(out, 'id_ed25519')]);
    await mkdir(join(root, 'root', '.ssh'), { recursive: true });
    await chmod(join(root, 'root', '.ssh'), 0o700);
    await copyFile(join(out, 'id_ed25519.pub'), join(root, 'root', '.ssh', 'authorized_keys'));
    await chmod(join(root, 'root', '.ssh', 'authorized_keys'), 0o600);

    await writeFile(join(root, 'etc', 'fstab'), '/dev/vda / ext4 defaults,noatime 0 1\n');
    await writeFile(join(root, 'etc', 'hostname'), 'xenhost\n');
    await writeFile(join(root, 'etc', 'hosts'), '127.0.0.1 localhost\n127.0.1.1 xenhost\n');
    await writeFile(join(root, 'etc', 'systemd', 'network', '50-qemu-user.network'), NETWORK);
    const wants = join(root, 'etc', 'systemd', 'system', 'multi-user.target.wants');
    await mkdir(wants, { recursive: true });
    await symlink('/lib/systemd/system/systemd-networkd.service', join(wants, 'systemd-networkd.service')).catch(() => undefined);
    for (const unit of MASKED) await symlink('/dev/null', join(root, 'etc', 'systemd', 'system', unit)).catch(() => undefined);

    // the hypervisor is a gzip'd multiboot ELF; QEMU's -kernel wants it plain
    const boot = await readdir(join(root, 'boot'));
    const pick = (prefix: string) => {
      const f = boot.find((n) => n.startsWith(prefix));
      if (!f) throw new Error(`debootstrap left no ${prefix}* in ${join(root, 'boot')}: ${boot.join(' ')}`);
      return join(root, 'boot', f);
    };
    await sh('sh', ['-c', 'zcat "$1" > "$2"', 'sh', pick('xen-4.17-amd64.gz'), join(out, 'xen.elf')]);
    await copyFile(pick('vmlinuz-'), join(out, 'vmlinuz'));
    await copyFile(pick('initrd.img-'), join(out, 'initrd.img'));

    // an ext4 image filled from the folder: no loop device, no mount
    await sh('mke2fs', ['-q', '-t', 'ext4', '-L', 'dom0', '-d', root, '-F', join(out, 'dom0.img'), DOM0_IMAGE_SIZE]);
    await writeFile(join(out, 'build.json'), JSON.stringify({ recipe: RECIPE, suite: SUITE, packages: PACKAGES, seconds: (Date.now() - started) / 1000, kernel: pick('vmlinuz-') }, null, 2) + '\n');
    await rm(dir, { recursive: true, force: true });
    await rename(out, dir); // atomic: a half-built host is never found in the cache
    return { ...img, builtSeconds: (Date.now() - started) / 1000 };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** A free TCP port on the loopback interface. */
async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolvePort(port));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// leftovers: a record per running QEMU, so that one whose owner was killed outright is ended

interface RunRecord {
  qemuPid: number;
  /** the Node process that owns it; 0 for a host started by `up` (owned by the user until `down`) */
  ownerPid: number;
  runDir: string;
  port: number;
  key: string;
}

const recordsDir = () => join(cacheRoot(), 'running');

/** True when `pid` is a QEMU started for `runDir` (pids are reused). */
function isOurQemu(pid: number, runDir: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(runDir);
  } catch {
    return false;
  }
}

async function reapLeftovers(): Promise<void> {
  const files = await readdir(recordsDir()).catch(() => [] as string[]);
  for (const f of files) {
    const path = join(recordsDir(), f);
    let rec: RunRecord;
    try {
      rec = JSON.parse(await readFile(path, 'utf8'));
    } catch {
      await rm(path, { force: true });
      continue;
    }
    if (rec.ownerPid === 0 || alive(rec.ownerPid)) continue;
    if (isOurQemu(rec.qemuPid, rec.runDir)) process.kill(rec.qemuPid, 'SIGKILL');
    await rm(rec.runDir, { recursive: true, force: true });
    await rm(path, { force: true });
  }
}

const live = new Set<() => void>();
let hooks = false;
function installHooks(): void {
  if (hooks) return;
  hooks = true;
  process.on('exit', () => {
    for (const end of live) end();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      for (const end of live) end();
      process.kill(process.pid, sig); // the default action now that this handler is gone
    });
  }
}

export interface StartOptions {
  /** leave QEMU running after this process exits (the `up` command) */
  detached?: boolean;
}

/** Boots the host (building it first if the cache lacks it) and waits until `xl info` answers. */
export async function startXenHost(opts: StartOptions = {}): Promise<XenHost> {
  const img = await buildXenHost();
  await mkdir(recordsDir(), { recursive: true });
  await reapLeftovers();
  const runDir = await mkdtemp(join(tmpdir(), 'pv-xenhost-'));
  const overlay = join(runDir, 'dom0.qcow2');
  const consoleLog = join(runDir, 'console.log');
  const knownHostsFile = join(runDir, 'known_hosts');
  await sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', img.dom0, overlay]);
  const port = await freePort();
  const argv = [
    '-name', 'polyvisor-xen-host',
    '-machine', 'pc',
    '-m', '2048',
    '-smp', '2',
    // plain -cpu max crashes dom0 at its first instructions (RUNBOOK)
    '-cpu', 'qemu64',
    '-display', 'none',
    '-monitor', 'none',
    '-no-reboot',
    '-serial', `file:${consoleLog}`,
    '-kernel', img.xen,
    '-append', 'console=com1 dom0_mem=1024M,max:1024M',
    // multiboot modules, comma-separated: the dom0 kernel with its command line, then its initramfs
    '-initrd', `${img.kernel} root=/dev/vda rw console=hvc0,${img.initrd}`,
    '-drive', `file=${overlay},format=qcow2,if=virtio,cache=unsafe`,
    '-nic', `user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:${port}-:22`,
  ];
  const started = Date.now();
  // stderr to a file: a detached QEMU outlives this process and any pipe to it
  const errFile = join(runDir, 'qemu.stderr');
  const errFd = await open(errFile, 'w');
  const qemu: ChildProcess = spawn('qemu-system-x86_64', argv, { stdio: ['ignore', 'ignore', errFd.fd], detached: opts.detached });
  await errFd.close();
  let spawnError = '';
  let exited = false;
  qemu.once('exit', () => (exited = true));
  qemu.once('error', (e) => {
    exited = true;
    spawnError = e.message;
  });
  const qemuErr = () => spawnError || (() => {
    try {
      return readFileSync(errFile, 'utf8').slice(-4096);
    } catch {
      return '';
    }
  })();
  const record: RunRecord = { qemuPid: qemu.pid ?? -1, ownerPid: opts.detached ? 0 : process.pid, runDir, port, key: img.key };
  const recordPath = join(recordsDir(), `${record.qemuPid}.json`);
  await writeFile(recordPath, JSON.stringify(record));

  const endNow = () => {
    if (!exited) qemu.kill('SIGKILL');
    rmSync(runDir, { recursive: true, force: true });
    rmSync(recordPath, { force: true });
  };
  if (!opts.detached) {
    installHooks();
    live.add(endNow);
  }

  const sshTarget: SshTarget = { user: 'root', host: '127.0.0.1', port, identityFile: img.key, knownHostsFile };
  const address = { user: 'root', host: '127.0.0.1', port };
  const ssh = new SshSession(address, { identityFile: img.key, knownHostsFile, connectTimeoutSec: 10 });
  const consoleTail = (lines = 40) => {
    try {
      return readFileSync(consoleLog, 'utf8').replace(/\r/g, '').split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  };
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    live.delete(endNow);
    await ssh.close();
    if (!exited) {
      // the overlay is thrown away, so there is nothing to shut down cleanly for: cut the power
      const gone = new Promise<void>((r) => (exited ? r() : qemu.once('exit', () => r())));
      qemu.kill('SIGTERM');
      const t = setTimeout(() => qemu.kill('SIGKILL'), 5000);
      await gone;
      clearTimeout(t);
    }
    await rm(runDir, { recursive: true, force: true });
    await rm(recordPath, { force: true });
  };

  // wait for the toolstack: ssh answers once sshd runs, xl info once xenstored runs
  let last = '';
  try {
    for (;;) {
      if (exited) throw new Error(`QEMU exited while the Xen host booted: ${qemuErr().trim() || 'no message'}`);
      if (Date.now() - started > BOOT_TIMEOUT_MS) throw new Error(`the Xen host did not answer \`xl info\` over SSH within ${BOOT_TIMEOUT_MS / 1000} s (last: ${last.trim() || 'nothing'})`);
      const r = await ssh.run(['xl', 'info'], { timeoutMs: 30_000 }).catch((e: Error) => ({ status: -1, stdout: Buffer.alloc(0), stderr: e.message }));
      if (r.status === 0 && r.stdout.toString().includes('xen_major')) break;
      last = r.stderr;
      await new Promise((r2) => setTimeout(r2, 2000));
    }
  } catch (e) {
    const tail = consoleTail(40);
    await stop();
    throw new Error(`${(e as Error).message}\n--- last console lines ---\n${tail}`);
  }
  if (opts.detached) qemu.unref();

  const host: XenHost = {
    uri: formatXenUri(address),
    sshTarget,
    ssh,
    bootSeconds: (Date.now() - started) / 1000,
    exec: (args) => ssh.exec(args),
    copyIn: async (localPath, remotePath) => {
      const o = ssh.commonOptions().filter((a, i, all) => a !== '-p' && all[i - 1] !== '-p' && a !== '-l' && all[i - 1] !== '-l');
      await sh('scp', ['-q', '-P', String(port), ...o, '--', localPath, `root@127.0.0.1:${remotePath}`]);
    },
    consoleTail,
    sshCommand: () => `ssh -i ${img.key} -p ${port} -o UserKnownHostsFile=${knownHostsFile} -o StrictHostKeyChecking=accept-new root@127.0.0.1`,
    stop,
  };
  return host;
}

// ---------------------------------------------------------------------------------------------
// by hand: up | down | build

const upFile = () => join(cacheRoot(), 'up.json');

async function main(cmd: string | undefined): Promise<void> {
  if (cmd === 'build') {
    const img = await buildXenHost();
    console.log(img.builtSeconds === undefined ? `cached: ${img.dir}` : `built in ${img.builtSeconds.toFixed(0)} s: ${img.dir}`);
  } else if (cmd === 'up') {
    if (existsSync(upFile())) throw new Error(`a host is already up (${upFile()}); run \`down\` first`);
    const host = await startXenHost({ detached: true });
    await host.ssh.close();
    const rec = { uri: host.uri, ...host.sshTarget, bootSeconds: host.bootSeconds, ssh: host.sshCommand(), runDir: resolve(host.sshTarget.knownHostsFile, '..') };
    await writeFile(upFile(), JSON.stringify(rec, null, 2) + '\n');
    console.log(`Xen host up in ${host.bootSeconds.toFixed(0)} s: ${host.uri}`);
    console.log(`  ssh in:   ${host.sshCommand()}`);
    console.log(`  driver:   new XenDriver({ uri: '${host.uri}', identityFile: '${host.sshTarget.identityFile}' })`);
    console.log(`  stop it:  node dist/test/xen/host.js down`);
  } else if (cmd === 'down') {
    if (!existsSync(upFile())) {
      console.log('no host is up');
      return;
    }
    const rec = JSON.parse(await readFile(upFile(), 'utf8')) as { runDir: string };
    for (const f of await readdir(recordsDir()).catch(() => [] as string[])) {
      const r = JSON.parse(await readFile(join(recordsDir(), f), 'utf8')) as RunRecord;
      if (r.runDir !== rec.runDir) continue;
      if (isOurQemu(r.qemuPid, r.runDir)) process.kill(r.qemuPid, 'SIGKILL');
      await rm(join(recordsDir(), f), { force: true });
    }
    await rm(rec.runDir, { recursive: true, force: true });
    await rm(upFile(), { force: true });
    console.log('Xen host stopped');
  } else {
    console.error('usage: node dist/test/xen/host.js up|down|build');
    process.exitCode = 2;
  }
}

if (process.argv[1] && resolve(process.argv[1]) === resolve(new URL(import.meta.url).pathname)) {
  main(process.argv[2]).catch((e) => {
    console.error((e as Error).message);
    process.exitCode = 1;
  });
}
