/**
 * The main job of `npm start` for now: a tour of the disk engine on a sample disk that it
 * makes. Each step runs the real `polyvisor` command and shows it, so the output doubles as
 * a quick reference. Later issues replace this with the server and a sample VM.
 */
import { spawnSync } from 'node:child_process';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const cli = fileURLToPath(new URL('./cli/main.js', import.meta.url));
const dir = resolve(process.argv[2] ?? '.cache/demo');

function polyvisor(...args: string[]): number {
  process.stdout.write(`\n$ polyvisor ${args.join(' ')}\n`);
  const r = spawnSync(process.execPath, [cli, ...args], { stdio: 'inherit', cwd: dir });
  return r.status ?? 1;
}

/** A 256 MiB sample disk: an MBR with one partition, and a few MiB of recognisable data. */
async function makeSample(path: string): Promise<void> {
  const size = 256 << 20;
  await writeFile(path, '');
  const { open } = await import('node:fs/promises');
  const fh = await open(path, 'r+');
  try {
    await fh.truncate(size);
    const mbr = Buffer.alloc(512);
    // one Linux partition (type 0x83) from sector 2048 to the end (MBR partition entry 1 at 446)
    mbr[446] = 0x80;
    mbr[446 + 4] = 0x83;
    mbr.writeUInt32LE(2048, 446 + 8);
    mbr.writeUInt32LE(size / 512 - 2048, 446 + 12);
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    await fh.write(mbr, 0, 512, 0);
    const text = Buffer.from('Polyvisor sample disk: this block must survive every conversion.\n'.repeat(16384));
    await fh.write(text, 0, text.length, 1 << 20);
    await fh.write(text, 0, text.length, 200 << 20);
  } finally {
    await fh.close();
  }
}

/** A libvirt domain for the sample disk: the VM the tour converts for other hypervisors. */
const SAMPLE_DOMAIN = `<domain type='kvm'>
  <name>sample</name>
  <memory unit='MiB'>512</memory>
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
  await makeSample(join(dir, 'sample.raw'));
  let failed = 0;
  const step = (...args: string[]) => {
    if (polyvisor(...args) !== 0) failed++;
  };
  step('disk', 'info', 'sample.raw');
  step('disk', 'convert', '-O', 'qcow2', 'sample.raw', 'sample.qcow2');
  step('disk', 'convert', '-O', 'vhd', '-o', 'subformat=dynamic', 'sample.qcow2', 'sample.vhd');
  step('disk', 'create', '-f', 'qcow2', '-b', 'sample.vhd', '-F', 'vhd', 'overlay.qcow2');
  step('disk', 'info', '--backing-chain', 'overlay.qcow2');
  step('disk', 'map', 'overlay.qcow2');
  step('disk', 'check', 'sample.qcow2');
  step('disk', 'compare', 'sample.raw', 'overlay.qcow2');
  // The same disk as a VM: described for libvirt, then packaged for VMware and XenServer.
  await writeFile(join(dir, 'sample.xml'), SAMPLE_DOMAIN);
  step('vm', 'inspect', 'sample.xml');
  step('vm', 'convert', 'sample.xml', '--to', 'ova', '--out', 'for-vmware');
  step('vm', 'convert', 'sample.xml', '--to', 'xva', '--out', 'for-xenserver');
  step('vm', 'convert', 'sample.xml', '--to', 'hyperv', '--out', 'for-hyperv');
  step('vm', 'inspect', 'for-vmware/sample.ova');
  process.stdout.write(
    failed === 0
      ? '\nThe sample disk went raw -> qcow2 -> VHD, a qcow2 overlay over the VHD reads identical to the original,\n' +
          'and the sample VM was packaged for VMware (OVA), XenServer (XVA) and Hyper-V (VHDX + PowerShell) in ' +
          `${dir}.\n`
      : `\n${failed} step(s) failed.\n`,
  );
  process.exitCode = failed === 0 ? 0 : 1;
}

await main();
