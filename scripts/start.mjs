#!/usr/bin/env node
/**
 * `npm start`: installs what is missing, builds, and runs the main job.
 *
 * 1. Debian packages the project needs (qemu-utils: the oracle the tests compare against
 *    and the peer the benchmark measures; g++/make/python3 for the small native addon):
 *    installed with apt-get when running as root, otherwise named in a clear message.
 * 2. npm dependencies, when node_modules is missing or older than package-lock.json.
 * 3. The TypeScript build.
 * 4. The main job: for now, a tour of the disk engine on a sample disk it makes.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
process.chdir(root);

const DEBIAN = [
  { cmd: 'qemu-img', pkg: 'qemu-utils', why: 'the tests use qemu-img as the oracle and the benchmark as the peer' },
  { cmd: 'g++', pkg: 'g++', why: 'builds the native lseek(SEEK_DATA/SEEK_HOLE) addon' },
  { cmd: 'make', pkg: 'make', why: 'builds the native addon' },
  { cmd: 'python3', pkg: 'python3', why: 'node-gyp needs it to build the native addon' },
  { cmd: 'virt-xml-validate', pkg: 'libvirt-clients', why: 'the tests check libvirt XML against libvirt\'s own schema' },
  { cmd: 'xmllint', pkg: 'libxml2-utils', why: 'virt-xml-validate runs it' },
  { cmd: 'qemu-system-x86_64', pkg: 'qemu-system-x86', why: 'the local engine that runs VMs (and boots the tests\' guests)' },
  { cmd: 'cpio', pkg: 'cpio', why: 'builds the test guest\'s initramfs' },
  { cmd: 'depmod', pkg: 'kmod', why: 'resolves the test guest\'s kernel modules' },
  { cmd: 'nbdinfo', pkg: 'libnbd-bin', why: 'an independent NBD client for the tests' },
];

function have(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

function step(text) {
  process.stdout.write(`\n== ${text}\n`);
}

const missing = DEBIAN.filter((d) => !have(d.cmd));
if (!existsSync('/usr/share/OVMF/OVMF_CODE_4M.fd')) missing.push({ cmd: 'OVMF', pkg: 'ovmf', why: 'UEFI firmware for the local engine' });
if (missing.length) {
  const pkgs = [...new Set(missing.map((m) => m.pkg))];
  if (process.getuid && process.getuid() === 0 && have('apt-get')) {
    step(`installing Debian packages: ${pkgs.join(' ')}`);
    execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit' });
    execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...pkgs], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  } else {
    console.error('Polyvisor needs these Debian packages, which are not installed:');
    for (const m of missing) console.error(`  ${m.pkg.padEnd(12)} (${m.cmd}: ${m.why})`);
    console.error(`Install them with:  sudo apt-get install ${pkgs.join(' ')}`);
    const forTestsOnly = ['qemu-utils', 'libvirt-clients', 'libxml2-utils', 'qemu-system-x86', 'cpio', 'kmod', 'libnbd-bin', 'ovmf'];
    if (missing.some((m) => !forTestsOnly.includes(m.pkg))) process.exit(1);
    console.error(`Continuing without ${missing.map((m) => m.pkg).join(', ')}: Polyvisor works, but the tests and benchmark need them.\n`);
  }
}

const stamp = (p) => (existsSync(p) ? statSync(p).mtimeMs : 0);
if (!existsSync('node_modules') || stamp('package-lock.json') > stamp('node_modules/.package-lock.json')) {
  step('installing npm dependencies');
  execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { stdio: 'inherit' });
} else if (!existsSync('build/Release/polyvisor_seek.node')) {
  step('building the native addon');
  spawnSync('npm', ['rebuild'], { stdio: 'inherit' });
}

step('building');
execFileSync('npm', ['run', '--silent', 'build'], { stdio: 'inherit' });

step('main job: a tour of the disk engine');
const r = spawnSync(process.execPath, ['dist/src/demo.js', ...process.argv.slice(2)], { stdio: 'inherit' });
process.exit(r.status ?? 1);
