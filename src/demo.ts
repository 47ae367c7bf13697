/**
 * The main job of `npm start`: a sample Linux VM, built from Debian's packages, taken through
 * the formats of the seed's hypervisors (VHD for Virtual Server and Hyper-V, XVA for
 * XenServer, OVA for VMware) and booted from each result on the local QEMU engine. Each step
 * runs the real `polyvisor` command and shows it, so the output doubles as a quick reference.
 *
 * Then it starts `polyvisor serve` on a store of its own with the sample VM imported (and its
 * OVA in the server's library), prints the URL and the first-run admin token, and keeps
 * running until Ctrl-C. `npm start -- --no-serve` ends after the tour; `npm start -- DIR`
 * works in DIR (default .cache/demo, emptied first).
 */
import { spawn, spawnSync } from 'node:child_process';
import { copyFile, mkdir, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeBootDisk } from './sample/bootdisk.js';
import { buildTestGuest } from './sample/guest.js';

const cli = fileURLToPath(new URL('../../bin/polyvisor', import.meta.url));
const args = process.argv.slice(2);
const serve = !args.includes('--no-serve');
const dir = resolve(args.find((a) => !a.startsWith('--')) ?? '.cache/demo');

function polyvisor(...args: string[]): number {
  process.stdout.write(`\n$ polyvisor ${args.join(' ')}\n`);
  const r = spawnSync(cli, [...args], { stdio: 'inherit', cwd: dir });
  return r.status ?? 1;
}

/**
 * The sample VM's disk: Debian's kernel and a busybox initramfs (./sample/guest.ts) on a
 * BIOS-bootable disk (./sample/bootdisk.ts). Booted, it prints POLYVISOR-GUEST-UP and the
 * SHA-256 of its own disk, so every converted copy proves by booting that it carries the same
 * bytes.
 */
async function makeSample(path: string): Promise<string> {
  process.stdout.write('\nBuilding the sample VM from Debian packages (linux-image, busybox-static; cached after the first run)...\n');
  const guest = await buildTestGuest();
  await makeBootDisk(path, { kernel: guest.kernel, initrd: guest.initrd });
  return guest.version;
}

/** A libvirt domain for the sample disk: the VM the tour converts for other hypervisors. */
const SAMPLE_DOMAIN = `<domain type='kvm'>
  <name>sample</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='sample.raw'/>
      <target dev='sda' bus='sata'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:00:00:01'/>
      <source network='default'/>
      <model type='e1000'/>
    </interface>
  </devices>
</domain>
`;

async function main(): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  process.stdout.write(`Working in ${dir}\n`);
  const kernel = await makeSample(join(dir, 'sample.raw'));
  let failed = 0;
  const step = (...args: string[]) => {
    if (polyvisor(...args) !== 0) failed++;
  };
  // the disk engine: the sample disk through formats and a cross-format chain
  step('disk', 'info', 'sample.raw');
  step('disk', 'convert', '-O', 'qcow2', 'sample.raw', 'sample.qcow2');
  step('disk', 'create', '-f', 'qcow2', '-b', 'sample.qcow2', '-F', 'qcow2', 'overlay.qcow2');
  step('disk', 'compare', 'sample.raw', 'overlay.qcow2');
  // the VM, described for libvirt, then converted for each hypervisor of the seed
  await writeFile(join(dir, 'sample.xml'), SAMPLE_DOMAIN);
  step('vm', 'inspect', 'sample.xml');
  step('vm', 'convert', 'sample.xml', '--to', 'hyperv', '--disk-format', 'vhd', '--out', 'for-hyperv');
  step('vm', 'convert', 'sample.xml', '--to', 'xva', '--out', 'for-xenserver');
  step('vm', 'convert', 'sample.xml', '--to', 'ova', '--out', 'for-vmware');
  // ... and each result booted on the local engine: the console shows the guest coming up
  // and the checksum of the disk it booted from, the same in every format
  step('run', 'for-hyperv/sample-disk0.vhd', '--timeout', '180');
  for (const pkg of ['for-xenserver/sample.xva', 'for-vmware/sample.ova']) {
    step('verify', pkg, '--expect', 'POLYVISOR-DISK', '--timeout', '180', '--out', `${pkg}.verify`);
  }
  process.stdout.write(
    failed === 0
      ? `\nThe sample VM (Debian kernel ${kernel}, busybox) was converted for Hyper-V and Virtual Server (VHD + PowerShell),\n` +
          'XenServer (XVA) and VMware (OVA), and each result booted on the local QEMU engine.\n' +
          `Files: ${dir}\n  for-hyperv/  for-xenserver/  for-vmware/  (boot logs and screenshots in *.verify/)\n` +
          'Next: polyvisor --help, and docs/cli.md.\n'
      : `\n${failed} step(s) failed.\n`,
  );
  process.exitCode = failed === 0 ? 0 : 1;
  if (failed === 0 && serve) await serveSample();
}

/** The server on the local engine, with the sample VM in its store: what the web console shows first. */
async function serveSample(): Promise<void> {
  const data = join(dir, 'server');
  await mkdir(join(data, 'library'), { recursive: true });
  await copyFile(join(dir, 'for-vmware', 'sample.ova'), join(data, 'library', 'sample.ova'));
  if (polyvisor('--data', data, 'vm', 'import', 'for-vmware/sample.ova', '--name', 'sample') !== 0) {
    process.exitCode = 1;
    return;
  }
  const listen = process.env.POLYVISOR_LISTEN ?? '127.0.0.1:8460';
  process.stdout.write(
    `\nStarting the server on the local QEMU engine, with the sample VM imported and its OVA in the library (${data}).\n` +
      'Open the URL below and sign in with the admin token it prints once; Ctrl-C stops the server.\n' +
      `\n$ polyvisor --data ${data} serve --listen ${listen}\n`,
  );
  const child = spawn(cli, ['--data', data, 'serve', '--listen', listen], { stdio: 'inherit', cwd: dir });
  // Ctrl-C reaches the server too (same process group); this process waits for it to end
  process.on('SIGINT', () => undefined);
  process.exitCode = await new Promise<number>((r) => child.once('exit', (code, signal) => r(signal === 'SIGINT' || code === 130 ? 0 : code ?? 1)));
}

await main();
