/**
 * Hyper-V cannot run here (QEMU emulates no VMBus storage), so adaptation for it is shown by
 * what the adapted disk holds, checked with the real tools that will read it:
 *
 *  - the initramfs carries hv_vmbus, hv_storvsc, hv_netvsc and sd_mod with every module
 *    modules.dep and modules.softdep say they need; the host's kmod modprobe, pointed at the
 *    initramfs's module tree, resolves each one's dependencies to files that are there and its
 *    aliases to it (so the .bin indexes written are what kmod reads);
 *  - the kmod indexes are byte for byte what the guest's own depmod wrote, given the same
 *    lines (the guest's full tree is the oracle);
 *  - fstab names the root by UUID; generation 1 (BIOS) gets GRUB in the MBR; generation 2
 *    (UEFI) reports that the guest has no EFI system partition, and writes no BIOS boot code;
 *  - guest inspection (src/guest/inspect.ts, written separately) agrees: the adapted disk
 *    boots on hyperv-gen1, the source does not.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { copyFile, mkdir, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { openImage } from '../../src/disk/chain.js';
import { adaptGuest } from '../../src/guest/adapt.js';
import { readInitramfs, type Initramfs } from '../../src/guest/initramfs.js';
import { inspect } from '../../src/guest/inspect.js';
import { buildModuleIndexes } from '../../src/guest/kmod-index.js';
import { undoAdaptation } from '../../src/guest/manifest.js';
import { readKernelModules } from '../../src/guest/modules.js';
import { TARGETS } from '../../src/guest/targets.js';
import { qemuCompare, rawCopy, readGuest, useDebian } from './adapt-fixtures.js';

const run = promisify(execFile);
const HV = ['hv_vmbus', 'hv_storvsc', 'hv_netvsc', 'sd_mod'];

/** The initramfs's module tree written out as lib/modules/<version> (lib -> usr/lib, as in the image). */
async function extractModules(ir: Initramfs, version: string, root: string): Promise<void> {
  const prefix = `/usr/lib/modules/${version}/`;
  for (const [path, e] of ir.files) {
    if (!path.startsWith(prefix) || e.type !== 'file') continue;
    const out = join(root, path);
    await mkdir(dirname(out), { recursive: true });
    await writeFile(out, e.data);
  }
  await symlink('usr/lib', join(root, 'lib'));
}

async function modprobe(root: string, version: string, ...args: string[]): Promise<string> {
  const { stdout } = await run('modprobe', ['-d', root, '-S', version, ...args]);
  return stdout;
}

async function inspectVerdicts(file: string) {
  const img = await openImage(file, { allowOutsidePaths: true });
  try {
    return (await inspect([img])).verdicts;
  } finally {
    await img.close();
  }
}

describe('guest adapt: Hyper-V generation 1 and 2', () => {
  const ctx = useDebian('xen-pv');

  test('kmod indexes built from the guest\'s depmod text are the guest\'s own .bin files, byte for byte', async () => {
    await readGuest(ctx.g.disk, async (x) => {
      const d = `/lib/modules/${ctx.g.kernelVersion}`;
      const text = async (f: string) => (await x.readFile(`${d}/${f}`)).toString('latin1');
      const built = buildModuleIndexes({ dep: await text('modules.dep'), alias: await text('modules.alias'), symbols: await text('modules.symbols') });
      for (const k of ['dep', 'alias', 'symbols'] as const) {
        const own = await x.readFile(`${d}/modules.${k}.bin`);
        assert.ok(built[k].equals(own), `modules.${k}.bin: ${built[k].length} bytes built, ${own.length} in the guest`);
      }
    });
  });

  test('hyperv-gen1: the Hyper-V drivers and their dependencies in the initramfs, as modprobe resolves them', async () => {
    const out = join(ctx.dir, 'gen1.qcow2');
    const r = await adaptGuest([ctx.g.disk], { target: 'hyperv-gen1', out });
    assert.deepEqual(r.problems, []);
    assert.ok(r.changes.some((c) => c.kind === 'raw' && c.offset === 0), 'GRUB in the MBR for the BIOS');
    const { fstab, initrd } = await readGuest(out, async (x) => ({
      fstab: (await x.readFile('/etc/fstab')).toString(),
      initrd: await x.readFile(`/boot/initrd.img-${ctx.g.kernelVersion}`),
    }));
    assert.match(fstab, new RegExp(`^UUID=${ctx.g.rootUuid} / `, 'm'));
    const ir = await readInitramfs(initrd);
    const names = new Set(ir.modules.map((m) => m.name));
    for (const n of [...HV, 'scsi_transport_fc', 'scsi_mod', 't10_pi', 'xen_blkfront']) assert.ok(names.has(n), `the initramfs carries ${n}`);
    assert.match(ir.files.get('/conf/modules')!.data.toString(), /^hv_storvsc$/m);

    const tree = join(ctx.dir, 'gen1-tree');
    await extractModules(ir, ctx.g.kernelVersion, tree);
    for (const n of HV) {
      const lines = (await modprobe(tree, ctx.g.kernelVersion, '--show-depends', n)).trim().split('\n');
      assert.ok(lines.length >= 1 && lines.every((l) => l.startsWith('insmod ')), `${n}: ${lines.join('; ')}`);
      for (const l of lines) {
        const file = l.split(/\s+/)[1]!;
        assert.ok(ir.files.has(file.slice(tree.length).replace(/^\/lib\//, '/usr/lib/')), `${n} needs ${file}, which the initramfs has`);
      }
      assert.match(lines[lines.length - 1]!, new RegExp(`/${n.replace(/_/g, '[-_]')}\\.ko\\s*$`));
    }
    // udev loads drivers by alias: the VMBus device classes resolve to the drivers
    const alias = (m: string) => ir.files.get(`/usr/lib/modules/${ctx.g.kernelVersion}/modules.alias`)!.data.toString().match(new RegExp(`^alias (\\S+) ${m}$`, 'm'))?.[1];
    for (const n of ['hv_storvsc', 'hv_netvsc']) {
      const a = alias(n);
      assert.ok(a, `modules.alias has an alias for ${n}`);
      assert.match(await modprobe(tree, ctx.g.kernelVersion, '--resolve-alias', a!), new RegExp(`^${n}$`, 'm'));
    }

    assert.equal((await inspectVerdicts(ctx.g.disk))['hyperv-gen1'].boots, false, 'guest inspection: the source does not boot there');
    const v = (await inspectVerdicts(out))['hyperv-gen1'];
    assert.ok(v.boots, `guest inspection: the adapted disk boots on hyperv-gen1 (${v.blockers.map((b) => b.what).join('; ')})`);
  });

  test('hyperv-gen2 on a GPT disk with an EFI system partition: the fallback loader is put where new firmware looks', async () => {
    const v = ctx.g.kernelVersion;
    const work = join(ctx.dir, 'uefi');
    const root = join(work, 'root');
    // a small installed system: the xen-pv guest's kernel, initramfs and the modules Hyper-V
    // needs, read out of the guest by Polyvisor itself
    await readGuest(ctx.g.disk, async (x) => {
      const km = await readKernelModules(x, v);
      const t = TARGETS['hyperv-gen2'];
      const wanted = [];
      for (const n of [...t.storage, ...t.network, ...t.extras]) if ((await km.status(n)) === 'module') wanted.push(n);
      const need = await km.resolveDeps(wanted, { softdeps: true });
      const files = ['modules.dep', 'modules.alias', 'modules.symbols', 'modules.softdep', 'modules.builtin', 'modules.order', 'modules.devname'].map((f) => `${km.dir}/${f}`);
      for (const f of [...files, ...need.map((n) => km.path(n)!)]) {
        await mkdir(dirname(join(root, f)), { recursive: true });
        await writeFile(join(root, f), await x.readFile(f));
      }
    });
    await mkdir(join(root, 'etc'), { recursive: true });
    await mkdir(join(root, 'boot/efi'), { recursive: true });
    await writeFile(join(root, 'etc/os-release'), 'ID=debian\nVERSION_ID="12"\n');
    await writeFile(join(root, 'etc/fstab'), `/dev/sda2 / ext4 errors=remount-ro 0 1\nUUID=1234-ABCD /boot/efi vfat umask=0077 0 1\n`);
    await copyFile(ctx.g.kernel, join(root, `boot/vmlinuz-${v}`));
    await copyFile(ctx.g.initrd, join(root, `boot/initrd.img-${v}`));
    const loader = Buffer.concat([Buffer.from('MZ'), Buffer.alloc(4094, 0x5a)]);
    await writeFile(join(work, 'grubx64.efi'), loader);

    const disk = join(work, 'gpt.raw');
    await run('truncate', ['-s', '320M', disk]);
    const table = 'label: gpt\nunit: sectors\nstart=2048, size=131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\nstart=133120, size=512000, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n';
    execFileSync('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', disk], { input: table });
    await run('mkfs.vfat', ['-F', '16', '-i', '1234ABCD', '--offset', '2048', disk, '65536']);
    await run('mmd', ['-i', `${disk}@@1M`, '::/EFI', '::/EFI/debian']);
    await run('mcopy', ['-i', `${disk}@@1M`, join(work, 'grubx64.efi'), '::/EFI/debian/grubx64.efi']);
    await run('mke2fs', ['-q', '-t', 'ext4', '-d', root, '-E', `offset=${133120 * 512}`, '-F', disk, '256000k']);

    const r = await adaptGuest([disk], { target: 'hyperv-gen2', out: join(work, 'gpt.hyperv.qcow2') });
    assert.deepEqual(r.problems, []);
    assert.ok(r.changes.some((c) => c.kind === 'file' && c.guestPath === '/boot/efi/EFI/BOOT/BOOTX64.EFI'), r.changes.map((c) => c.why).join('\n'));
    assert.ok(r.changes.some((c) => c.kind === 'file' && c.guestPath === '/etc/fstab' && /\/dev\/sda2 -> UUID=/.test(c.why)));
    // mtools and fsck.vfat read the ESP Polyvisor wrote
    const raw = await rawCopy(r.outputs[0]!, join(work, 'adapted.raw'));
    const { stdout } = await run('mtype', ['-i', `${raw}@@1M`, '::/EFI/BOOT/BOOTX64.EFI'], { encoding: 'buffer', maxBuffer: 1 << 20 });
    assert.ok(Buffer.from(stdout).equals(loader), 'BOOTX64.EFI is the distribution\'s loader');
    await run('dd', [`if=${raw}`, `of=${join(work, 'esp.img')}`, 'bs=1M', 'skip=1', 'count=64', 'status=none']);
    await run('fsck.vfat', ['-n', join(work, 'esp.img')]);

    assert.equal((await undoAdaptation(r.manifest)).method, 'exact');
    const cmp = await qemuCompare(disk, r.outputs[0]!);
    assert.equal(cmp.status, 0, cmp.text);
  });

  test('hyperv-gen2: drivers added, and the missing EFI system partition reported as the boot path missing', async () => {
    const out = join(ctx.dir, 'gen2.qcow2');
    const r = await adaptGuest([ctx.g.disk], { target: 'hyperv-gen2', out });
    assert.equal(r.problems.length, 1, r.problems.join('\n'));
    assert.match(r.problems[0]!, /no EFI system partition/);
    assert.ok(!r.changes.some((c) => c.kind === 'raw'), 'no BIOS boot code for a UEFI target');
    const ir = await readGuest(out, async (x) => readInitramfs(await x.readFile(`/boot/initrd.img-${ctx.g.kernelVersion}`)));
    const names = new Set(ir.modules.map((m) => m.name));
    for (const n of HV) assert.ok(names.has(n), `the initramfs carries ${n}`);
  });
});
