/**
 * `guest inspect` on real installed guests: the three Debian 12 test guests (test/guests/
 * debian.ts: xen-pv, kvm, vmware) read from their raw disks and from qcow2 and VMDK copies
 * made by qemu-img (and through VM descriptors naming those copies), so the same report comes
 * through any disk format without a copy; what each guest is known to hold (the structure
 * test reads it with debugfs and lsinitramfs) must be found, and the verdicts must say where
 * each boots. A second guest, built here with sfdisk, mke2fs, mkfs.vfat and mtools, has what
 * the Debian guests lack: GPT, an EFI system partition, /boot on its own partition, the root
 * on LVM, crypttab, resume, networking and agents. Hostile guests (symlink escapes and loops,
 * a broken initramfs, NTFS) are inspected without harm.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { open as openFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { writeCpio, type CpioInput } from '../../src/guest/initramfs.js';
import { inspect, parseCmdline, parseGrubCfg, parseShellAssignments, type GuestReport } from '../../src/guest/inspect.js';
import { openGuest, parseDeviceName } from '../../src/guest/open.js';
import { TARGETS, type Target } from '../../src/guest/verdict.js';
import { pvStructures } from './lvm-pv.js';
import { makeDisk, makeExt4, writeTree } from './guest-image.js';
import { buildDebianGuest, DEBIAN_KINDS, type DebianGuest, type DebianKind } from '../guests/debian.js';
import { isPolyvisorError } from '../../src/errors.js';
import { patternBytes, qemuImg, tempDir } from '../helpers.js';

const MiB = 1 << 20;

/** What each Debian guest is known to hold (test/guests/debian.ts and its structure test). */
const KNOWN: Record<DebianKind, { root: string; prefix: string; storage: string[]; nics: string[]; consoles: string[]; gettys: string[]; boot: string; agents: string[]; boots: Target[] }> = {
  'xen-pv': { root: '/dev/xvda1', prefix: 'xvd', storage: ['xen_blkfront'], nics: ['xen_netfront'], consoles: ['hvc0'], gettys: ['serial-getty@hvc0.service'], boot: 'pygrub', agents: [], boots: ['xen-pv'] },
  kvm: { root: '/dev/vda1', prefix: 'vd', storage: ['virtio_blk', 'virtio_scsi'], nics: ['virtio_net'], consoles: ['ttyS0'], gettys: ['serial-getty@ttyS0.service'], boot: 'grub-bios', agents: [], boots: ['kvm'] },
  vmware: { root: '/dev/sda1', prefix: 'sd', storage: ['vmw_pvscsi', 'sd_mod'], nics: ['vmxnet3'], consoles: ['tty0', 'ttyS0'], gettys: ['serial-getty@ttyS0.service'], boot: 'grub-bios', agents: ['open-vm-tools'], boots: ['vmware'] },
};

const STORAGE = ['xen_blkfront', 'virtio_blk', 'virtio_scsi', 'vmw_pvscsi', 'sd_mod', 'ahci', 'ata_piix', 'nvme', 'hv_storvsc', 'mptspi', 'mptsas'];
const NICS = ['xen_netfront', 'virtio_net', 'vmxnet3', 'e1000', 'e1000e', 'hv_netvsc'];

function codes(r: GuestReport, t: Target): string[] {
  return r.verdicts[t].blockers.map((b) => b.code);
}

/** The report with what names the disk files taken out, for comparing reports of one guest in several formats. */
function contentOf(r: GuestReport): unknown {
  return JSON.parse(JSON.stringify({ ...r, source: '', disks: r.disks.map((d) => ({ ...d, label: '', format: '' })) }));
}

async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; seconds: number }> {
  const t0 = process.hrtime.bigint();
  const value = await fn();
  return { value, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}

describe('the Debian test guests', () => {
  const guests = {} as Record<DebianKind, DebianGuest>;
  const reports = {} as Record<DebianKind, GuestReport>;
  let dir: string;
  before(async () => {
    dir = await tempDir();
    for (const kind of DEBIAN_KINDS) guests[kind] = await buildDebianGuest(kind);
  });
  after(() => execFileSync('rm', ['-rf', dir]));

  for (const kind of DEBIAN_KINDS) {
    const want = KNOWN[kind];

    test(`${kind}: what the raw disk holds`, async (t) => {
      const g = guests[kind];
      const { value: r, seconds } = await timed(() => inspect(g.disk));
      t.diagnostic(`${kind}: inspected from its raw disk in ${seconds.toFixed(3)} s`);
      reports[kind] = r;
      assert.deepEqual(r.warnings, []);
      assert.equal(r.disks.length, 1);
      assert.equal(r.disks[0]!.partitionScheme, 'mbr');
      assert.equal(r.root, 'disk 0 partition 1');
      const root = r.volumes.find((v) => v.name === r.root)!;
      assert.deepEqual([root.type, root.uuid, root.mountPoint, root.readable], ['ext4', g.rootUuid, '/', true]);
      assert.deepEqual([r.os.family, r.os.distribution, r.os.version, r.os.codename], ['linux', 'debian', '12', 'bookworm']);
      assert.match(r.os.debianVersion!, /^12\.\d+$/);

      // the kernel, its drivers and its initramfs
      assert.deepEqual(r.kernels.map((k) => k.version), [g.kernelVersion]);
      const k = r.kernels[0]!;
      assert.equal(k.default, true);
      assert.equal(r.defaultKernel, g.kernelVersion);
      assert.equal(k.image, `/boot/vmlinuz-${g.kernelVersion}`);
      assert.equal(k.modules, `/lib/modules/${g.kernelVersion}`);
      assert.equal(k.xenPv, true);
      // Debian builds every one of these as a module
      for (const d of k.drivers.filter((x) => x.family !== 'fs')) assert.equal(d.status, 'module', d.name);
      const ir = k.initramfs!;
      assert.equal(ir.path, `/boot/initrd.img-${g.kernelVersion}`);
      assert.deepEqual([ir.generator, ir.compression, ir.microcode, ir.error], ['initramfs-tools', 'gzip', false, undefined]);
      assert.deepEqual(STORAGE.filter((m) => ir.modules.includes(m)), want.storage);
      assert.deepEqual(NICS.filter((m) => ir.modules.includes(m)), want.nics);
      assert.ok(ir.modules.includes('ext4'));
      assert.deepEqual(ir.missingDeps, []);
      assert.deepEqual(k.drivers.filter((d) => d.initramfs === 'included' && STORAGE.includes(d.name)).map((d) => d.name), STORAGE.filter((m) => want.storage.includes(m)));

      // the boot path
      assert.equal(r.boot.style, want.boot);
      if (kind === 'xen-pv') {
        assert.deepEqual(r.boot.mbr, { present: false });
        assert.equal(r.boot.firmware, 'none');
      } else {
        assert.deepEqual(r.boot.mbr, { present: true, loader: 'grub2', coreImage: { lba: 1, present: true } });
        assert.equal(r.boot.firmware, 'bios');
      }
      assert.equal(r.boot.pygrubReadable, true);
      assert.deepEqual(r.boot.configs, [{ volume: 'disk 0 partition 1', path: '/boot/grub/grub.cfg', kind: 'grub2' }]);
      assert.deepEqual(r.boot.esps, []);
      assert.equal(r.boot.entries.length, 1);
      assert.equal(r.boot.defaultEntry, '0');
      assert.equal(r.boot.entries[0]!.kernel, `/boot/vmlinuz-${g.kernelVersion}`);
      assert.deepEqual(r.boot.entries[0]!.initrd, [`/boot/initrd.img-${g.kernelVersion}`]);

      // device names, consoles, network, agents
      assert.deepEqual(r.naming.map((n) => [n.use, n.spec, n.naming, n.prefix, n.volume]), [
        ['fstab', want.root, 'device', want.prefix, 'disk 0 partition 1'],
        ['cmdline-root', want.root, 'device', want.prefix, 'disk 0 partition 1'],
      ]);
      assert.deepEqual(r.consoles.cmdline, want.consoles);
      assert.deepEqual(r.consoles.gettys, ['getty@tty1.service', ...want.gettys]);
      assert.deepEqual(r.network.interfaces, []);
      assert.equal(r.network.predictableNames, true);
      assert.equal(r.packages.manager, 'dpkg');
      assert.ok(r.packages.count > 100);
      assert.deepEqual(r.agents.map((a) => a.name), want.agents);
      if (kind === 'vmware') {
        assert.match(r.agents[0]!.version!, /^2:12\./);
        assert.deepEqual(r.agents[0]!.services.find((s) => s.unit === 'open-vm-tools.service'), { unit: 'open-vm-tools.service', enabled: true });
      }

      // where it boots
      assert.deepEqual(TARGETS.filter((x) => r.verdicts[x].boots), want.boots);
    });

    test(`${kind}: the same report from qcow2 and VMDK copies made by qemu-img`, async (t) => {
      const g = guests[kind];
      const raw = reports[kind] ?? (await inspect(g.disk));
      for (const fmt of ['qcow2', 'vmdk']) {
        const file = join(dir, `${kind}.${fmt}`);
        await qemuImg('convert', '-f', 'raw', '-O', fmt, g.disk, file);
        const { value: r, seconds } = await timed(() => inspect(file));
        t.diagnostic(`${kind}: inspected from ${fmt} in ${seconds.toFixed(3)} s`);
        assert.equal(r.disks[0]!.format, fmt);
        assert.deepEqual(contentOf(r), contentOf(raw), fmt);
      }
    });
  }

  test('through VM descriptors: an xl.cfg naming the xen-pv qcow2, a .vmx naming the vmware VMDK', async (t) => {
    const vm = join(dir, 'vms');
    mkdirSync(vm, { recursive: true });
    await qemuImg('convert', '-f', 'raw', '-O', 'qcow2', guests['xen-pv'].disk, join(vm, 'a.qcow2'));
    await qemuImg('convert', '-f', 'raw', '-O', 'vmdk', guests.vmware.disk, join(vm, 'c.vmdk'));
    writeFileSync(join(vm, 'a.cfg'), 'name = "a"\ntype = "pv"\nmemory = 512\nbootloader = "pygrub"\ndisk = [ "format=qcow2, vdev=xvda, access=rw, target=a.qcow2" ]\n');
    writeFileSync(join(vm, 'c.vmx'), ['.encoding = "UTF-8"', 'config.version = "8"', 'virtualHW.version = "19"', 'displayName = "c"', 'guestOS = "debian12-64"', 'memsize = "512"', 'numvcpus = "1"', 'scsi0.present = "TRUE"', 'scsi0.virtualDev = "pvscsi"', 'scsi0:0.present = "TRUE"', 'scsi0:0.fileName = "c.vmdk"', ''].join('\n'));
    for (const [file, kind] of [[join(vm, 'a.cfg'), 'xen-pv'], [join(vm, 'c.vmx'), 'vmware']] as const) {
      const { value: r, seconds } = await timed(() => inspect(file));
      t.diagnostic(`${kind}: inspected through ${file.slice(file.lastIndexOf('/') + 1)} in ${seconds.toFixed(3)} s`);
      assert.equal(r.source, file);
      assert.deepEqual(contentOf(r), contentOf(reports[kind] ?? (await inspect(guests[kind].disk))));
    }
  });

  test('verdicts: each guest boots where it was installed, and the blockers say why not elsewhere', async () => {
    const r = {} as Record<DebianKind, GuestReport>;
    for (const kind of DEBIAN_KINDS) r[kind] = reports[kind] ?? (await inspect(guests[kind].disk));
    const a = r['xen-pv'];
    // a: blocked on kvm for lack of virtio_blk in the initramfs, /dev/xvda1 naming and no boot code
    assert.deepEqual(codes(a, 'kvm'), ['storage-driver', 'device-name', 'boot-code']);
    assert.ok(a.verdicts.kvm.blockers[0]!.modules!.includes('virtio_blk'));
    assert.equal(a.verdicts.kvm.blockers[1]!.spec, '/dev/xvda1');
    assert.match(a.verdicts.kvm.blockers[1]!.fix, /UUID=5e1f0a01-0000-4000-8000-00000000a001/);
    assert.deepEqual(codes(a, 'xen-hvm'), ['boot-code']);
    assert.deepEqual(a.verdicts['xen-pv'], { target: 'xen-pv', boots: true, controller: 'xen-vbd', firmware: 'pv', blockers: [], warnings: [], controllers: [{ name: 'xen-vbd', blockers: 0 }] });
    assert.deepEqual(a.verdicts.kvm.warnings.map((w) => w.code), ['console']);
    // b: kvm yes, vmware no: no vmw_pvscsi (nor sd_mod) in its initramfs, /dev/vda1
    const b = r.kvm;
    assert.equal(b.verdicts.kvm.controller, 'virtio-blk');
    assert.deepEqual(codes(b, 'vmware'), ['storage-driver', 'device-name']);
    assert.deepEqual(b.verdicts.vmware.blockers[0]!.modules, ['vmw_pvscsi', 'sd_mod']);
    assert.deepEqual(codes(b, 'xen-pv'), ['storage-driver', 'device-name']);
    assert.deepEqual(b.verdicts['xen-pv'].warnings.map((w) => w.code), ['console']);
    // c: vmware yes, kvm no: sda names work on virtio-scsi, but no virtio driver is there
    const c = r.vmware;
    assert.equal(c.verdicts.vmware.controller, 'pvscsi');
    assert.deepEqual(codes(c, 'kvm'), ['storage-driver']);
    assert.equal(c.verdicts.kvm.controller, 'virtio-scsi');
    assert.ok(c.verdicts.kvm.warnings.some((w) => w.code === 'agent' && w.what.includes('open-vm-tools')));
    assert.ok(!c.verdicts.vmware.warnings.some((w) => w.code === 'agent'));
    for (const g of [a, b, c]) assert.deepEqual(codes(g, 'hyperv-gen2').slice(-1), ['uefi-loader']);
  });

  test('guest inspect on the command line: a readable report, and --json', () => {
    // the command as the CLI builds it, in a process of its own (its output is the whole stdout)
    // (a script file, not node -e: node takes an "inspect" after -e for its own debugger)
    const cli = new URL('../../src/cli/guest.js', import.meta.url).href;
    const script = join(dir, 'guest-cli.mjs');
    writeFileSync(script, `const { guestCommand } = await import(${JSON.stringify(cli)});\nawait guestCommand().parseAsync(process.argv.slice(2), { from: 'user' });\n`);
    const runCli = (...args: string[]) => execFileSync(process.execPath, [script, ...args], { encoding: 'utf8', maxBuffer: 64 << 20, timeout: 60_000 });
    const text = runCli('inspect', guests['xen-pv'].disk);
    for (const s of ['OS: Debian GNU/Linux 12 (bookworm)', 'Boot: pygrub, firmware none; no boot code in the MBR', 'carries xen_blkfront xen_netfront', '/etc/fstab line 2: /dev/xvda1 (/): by device /dev/xvd*', 'serial-getty@hvc0.service']) {
      assert.ok(text.includes(s), `"${s}" in:\n${text}`);
    }
    assert.match(text, /^ {2}xen-pv {7}boots \(disk on xen-vbd, PV boot\)$/m);
    assert.match(text, /^ {2}kvm {10}BLOCKED/m);
    const json = JSON.parse(runCli('inspect', '--json', guests.kvm.disk)) as GuestReport;
    assert.equal(json.verdicts.kvm.boots, true);
    assert.equal(json.kernels[0]!.initramfs!.generator, 'initramfs-tools');
  });
});

// ---------------------------------------------------------------------------------------

const BOOT_UUID = '0b00b000-0000-4000-8000-00000000b001';
const ROOT_UUID = '0b00b000-0000-4000-8000-00000000b002';
const ESP_ID = 'E5B0ABCD';
const VER = '1.0.0-test';

/** modules.dep of the test kernel: virtio, ext4, device-mapper, SCSI disks and pvscsi */
const MODULES_DEP: Record<string, string[]> = {
  'kernel/drivers/virtio/virtio.ko': [],
  'kernel/drivers/virtio/virtio_ring.ko': [],
  'kernel/drivers/virtio/virtio_pci.ko': ['kernel/drivers/virtio/virtio_ring.ko', 'kernel/drivers/virtio/virtio.ko'],
  'kernel/drivers/block/virtio_blk.ko': ['kernel/drivers/virtio/virtio_ring.ko', 'kernel/drivers/virtio/virtio.ko'],
  'kernel/drivers/net/virtio_net.ko': ['kernel/drivers/virtio/virtio_ring.ko', 'kernel/drivers/virtio/virtio.ko'],
  'kernel/lib/crc16.ko': [],
  'kernel/fs/mbcache.ko': [],
  'kernel/fs/jbd2/jbd2.ko': [],
  'kernel/fs/ext4/ext4.ko': ['kernel/lib/crc16.ko', 'kernel/fs/mbcache.ko', 'kernel/fs/jbd2/jbd2.ko'],
  'kernel/drivers/md/dm-mod.ko': [],
  'kernel/drivers/scsi/scsi_mod.ko': [],
  'kernel/block/t10-pi.ko': [],
  'kernel/drivers/scsi/sd_mod.ko': ['kernel/block/t10-pi.ko', 'kernel/drivers/scsi/scsi_mod.ko'],
  'kernel/drivers/scsi/vmw_pvscsi.ko': ['kernel/drivers/scsi/scsi_mod.ko'],
};
/** what the initramfs carries: virtio and ext4 complete, dm-mod, and sd_mod without t10-pi */
const IN_INITRAMFS = Object.keys(MODULES_DEP).filter((p) => !/t10-pi|vmw_pvscsi|virtio_net/.test(p));

function testInitramfs(): Buffer {
  const entries: CpioInput[] = [
    { name: 'init', mode: 0o100755, data: Buffer.from('#!/bin/sh\n') },
    { name: 'conf', mode: 0o040755 },
    { name: 'conf/initramfs.conf', mode: 0o100644, data: Buffer.from('MODULES=dep\n') },
    ...IN_INITRAMFS.map((p) => ({ name: `usr/lib/modules/${VER}/${p}`, mode: 0o100644, data: Buffer.from(p) })),
  ];
  return gzipSync(writeCpio(entries, { padTo: 512 }));
}

/** GPT: an ESP (p1), /boot (p2) and an LVM PV (p3) whose LV sysvg/root holds the root file system. */
async function buildLayeredGuest(dir: string, opts: { removableLoader?: boolean } = {}): Promise<string> {
  const boot = join(dir, 'boot');
  writeTree(boot, {
    'grub/grub.cfg': [
      '# made by hand, in grub-mkconfig\'s shape',
      'set default="0"',
      'if [ -s $prefix/grubenv ]; then',
      '  load_env',
      'fi',
      `menuentry 'Test OS' --class test --id 'gnulinux-simple' {`,
      '\tinsmod lvm',
      `\tlinux\t/vmlinuz-${VER} root=/dev/mapper/sysvg-root ro console=ttyS0 net.ifnames=1`,
      `\tinitrd\t/initrd.img-${VER}`,
      '}',
      "submenu 'Advanced options' {",
      "\tmenuentry 'Test OS (recovery)' {",
      `\t\tlinux /vmlinuz-${VER} root=/dev/vda3 ro single`,
      `\t\tinitrd /initrd.img-${VER}`,
      '\t}',
      '}',
      '',
    ].join('\n'),
    [`vmlinuz-${VER}`]: 'the kernel image',
    [`initrd.img-${VER}`]: testInitramfs(),
    [`config-${VER}`]: 'CONFIG_XEN=y\n# CONFIG_XEN_PV is not set\nCONFIG_VIRTIO_BLK=m\nCONFIG_EXT4_FS=m\n',
    efi: { dir: true },
  });
  const root = join(dir, 'root');
  const modFiles = Object.fromEntries(Object.keys(MODULES_DEP).map((p) => [`usr/lib/modules/${VER}/${p}`, p]));
  writeTree(root, {
    'etc/os-release': 'NAME="Test OS"\nVERSION_ID="1.2"\nID=testos\nID_LIKE="debian ubuntu"\nPRETTY_NAME="Test OS 1.2 (\\"quoted\\")"\n',
    'etc/fstab': [
      '# <file system> <mount point> <type> <options> <dump> <pass>',
      '/dev/mapper/sysvg-root / ext4 errors=remount-ro 0 1',
      `UUID=${BOOT_UUID} /boot ext4 defaults 0 2`,
      `UUID=${ESP_ID.slice(0, 4)}-${ESP_ID.slice(4)} /boot/efi vfat umask=0077 0 1`,
      '/dev/vdb1 none swap sw,nofail 0 0',
      'proc /proc proc defaults 0 0',
      '',
    ].join('\n'),
    'etc/crypttab': 'cr_data UUID=11111111-2222-4333-8444-555555555555 none luks\n',
    'etc/initramfs-tools/conf.d/resume': 'RESUME=/dev/vdb1\n',
    'etc/default/grub': 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="console=ttyS0 root=/dev/vda3"\n',
    'etc/network/interfaces': 'auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n',
    'etc/network/interfaces.d/eth0': 'allow-hotplug eth0\niface eth0 inet dhcp\n',
    'etc/udev/rules.d/70-persistent-net.rules': 'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="52:54:00:12:34:56", NAME="eth0"\n',
    'usr/lib/udev/rules.d/80-net-setup-link.rules': 'SUBSYSTEM=="net", IMPORT{builtin}="net_setup_link"\n',
    'var/lib/dpkg/status': [
      'Package: base-files\nStatus: install ok installed\nVersion: 1.2\n',
      'Package: qemu-guest-agent\nStatus: install ok installed\nVersion: 1:7.2+dfsg-7\n',
      'Package: open-vm-tools\nStatus: install ok installed\nVersion: 2:12.2.0-1\n',
      'Package: hyperv-daemons\nStatus: deinstall ok config-files\nVersion: 6.1\n',
    ].join('\n'),
    'usr/lib/systemd/system/qemu-guest-agent.service': '[Unit]\n',
    'usr/lib/systemd/system/open-vm-tools.service': '[Unit]\n',
    'etc/systemd/system/multi-user.target.wants/qemu-guest-agent.service': { link: '/lib/systemd/system/qemu-guest-agent.service' },
    'etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service': { link: '/lib/systemd/system/serial-getty@.service' },
    [`usr/lib/modules/${VER}/modules.dep`]: Object.entries(MODULES_DEP).map(([m, d]) => `${m}:${d.map((x) => ` ${x}`).join('')}\n`).join(''),
    [`usr/lib/modules/${VER}/modules.builtin`]: 'kernel/drivers/ata/libata.ko\n',
    ...modFiles,
    lib: { link: 'usr/lib' },
    vmlinuz: { link: `boot/vmlinuz-${VER}` },
    boot: { dir: true },
    'etc/hostname': 'layered\n',
  });
  const lvTree = root;
  const file = join(dir, 'disk.raw');
  const espFiles: Record<string, string> = { 'EFI/debian/shimx64.efi': 'shim', 'EFI/debian/grubx64.efi': 'grub', 'EFI/BOOT/README.TXT': 'x' };
  if (opts.removableLoader) espFiles['EFI/BOOT/BOOTX64.EFI'] = 'shim';
  makeDisk(file, 70, 'gpt', [
    { size: 8, type: 'U', vfat: { files: espFiles, id: ESP_ID, dir } },
    { size: 16, type: 'L', ext4: { tree: boot, uuid: BOOT_UUID, label: 'boot' } },
    { size: 40, type: 'E6D6D379-F507-44C2-A23C-238F2A3DF928' },
  ]);
  // p3 (from 25 MiB): an LVM2 PV with pe_start 1 MiB and 4 MiB extents; LV root = extents 0-7
  const pvStart = 25 * MiB;
  const text = [
    'sysvg {',
    'id = "Gx0000-0000-0000-0000-0000-0000-000001"',
    'seqno = 1', 'format = "lvm2"', 'status = ["RESIZEABLE", "READ", "WRITE"]', 'flags = []', 'extent_size = 8192', 'max_lv = 0', 'max_pv = 0', 'metadata_copies = 0',
    'physical_volumes {', 'pv0 {', 'id = "Pv0000-0000-0000-0000-0000-0000-000001"', 'device = "/dev/vda3"', 'status = ["ALLOCATABLE"]', 'flags = []', 'dev_size = 81920', 'pe_start = 2048', 'pe_count = 9', '}', '}',
    'logical_volumes {', 'root {', 'id = "Lv0000-0000-0000-0000-0000-0000-000001"', 'status = ["READ", "WRITE", "VISIBLE"]', 'flags = []', 'segment_count = 1',
    'segment1 {', 'start_extent = 0', 'extent_count = 8', 'type = "striped"', 'stripe_count = 1', 'stripes = [', '"pv0", 0', ']', '}', '}', '}', '}',
    'contents = "Text Format Volume Group"', 'version = 1', '',
  ].join('\n');
  const fh = await openFile(file, 'r+');
  try {
    for (const [at, b] of pvStructures({ uuid: 'Pv0000-0000-0000-0000-0000-0000-000001', size: 40 * MiB, text })) await fh.write(b, 0, b.length, pvStart + at);
  } finally {
    await fh.close();
  }
  execFileSync('mke2fs', ['-q', '-t', 'ext4', '-d', lvTree, '-U', ROOT_UUID, '-E', `offset=${pvStart + MiB}`, '-F', file, `${32 * 1024}k`], { stdio: 'ignore' });
  return file;
}

describe('a guest with GPT, an EFI system partition, /boot on its own and the root on LVM', () => {
  let dir: string;
  let disk: string;
  let r: GuestReport;
  before(async () => {
    dir = await tempDir();
    disk = await buildLayeredGuest(dir);
    r = await inspect(disk);
  });
  after(() => execFileSync('rm', ['-rf', dir]));

  test('volumes, root and mounts from fstab by device-mapper name, UUID and FAT volume ID; paths cross mount points', async () => {
    assert.deepEqual(r.warnings, []);
    assert.deepEqual(r.volumes.map((v) => [v.name, v.kind, v.type, v.mountPoint]), [
      ['disk 0 partition 1', 'partition', 'vfat', '/boot/efi'],
      ['disk 0 partition 2', 'partition', 'ext4', '/boot'],
      ['disk 0 partition 3', 'partition', 'LVM2_member', undefined],
      ['sysvg/root', 'lv', 'ext4', '/'],
    ]);
    assert.equal(r.root, 'sysvg/root');
    assert.ok(r.volumes[3]!.names.includes('/dev/mapper/sysvg-root'));
    const guest = await openGuest(disk);
    try {
      assert.deepEqual(guest.mounts.map((m) => [m.mountPoint, m.volume.name, m.spec]), [
        ['/boot/efi', 'disk 0 partition 1', `UUID=E5B0-ABCD`],
        ['/boot', 'disk 0 partition 2', `UUID=${BOOT_UUID}`],
        ['/', 'sysvg/root', '(root file system)'],
      ]);
      // /vmlinuz is a link on the root LV to a file on /boot
      assert.equal((await guest.readFile('/vmlinuz')).toString(), 'the kernel image');
      assert.equal(await guest.resolve('/vmlinuz'), `/boot/vmlinuz-${VER}`);
      const f = await guest.fs('/boot/grub/grub.cfg');
      assert.deepEqual([f.volume.name, f.path, f.mountPoint], ['disk 0 partition 2', '/grub/grub.cfg', '/boot']);
      assert.equal((await guest.readFile('/boot/efi/EFI/debian/shimx64.efi')).toString(), 'shim');
      assert.ok((await guest.readdir('/boot')).some((e) => e.name === 'efi' && e.type === 'directory'));
      assert.equal((await guest.readFile('/lib/modules/../../../etc/hostname')).toString(), 'layered\n');
      await assert.rejects(guest.writeFile('/etc/hostname', Buffer.from('x')), (e: unknown) => isPolyvisorError(e, 'ERR_READ_ONLY'));
    } finally {
      await guest.close();
    }
  });

  test('OS, kernel, initramfs and its missing dependencies, boot entries with /boot-relative paths', () => {
    assert.deepEqual([r.os.distribution, r.os.version, r.os.name, r.os.prettyName, r.os.idLike], ['testos', '1.2', 'Test OS', 'Test OS 1.2 ("quoted")', ['debian', 'ubuntu']]);
    const k = r.kernels[0]!;
    assert.deepEqual([k.version, k.default, k.xenPv, k.config], [VER, true, false, `/boot/config-${VER}`]);
    assert.equal(k.initramfs!.compression, 'gzip');
    assert.deepEqual(k.initramfs!.missingDeps, [{ module: 'sd_mod', missing: ['t10_pi'] }]);
    assert.equal(k.drivers.find((d) => d.name === 'vmw_pvscsi')!.status, 'module');
    assert.equal(k.drivers.find((d) => d.name === 'vmw_pvscsi')!.initramfs, 'absent');
    assert.equal(k.drivers.find((d) => d.name === 'virtio_blk')!.initramfs, 'included');
    assert.equal(k.drivers.find((d) => d.name === 'xen_blkfront')!.status, 'absent');
    assert.deepEqual(r.boot.entries.map((e) => [e.id, e.title, e.kernel, e.initrd, e.source]), [
      ['0', 'Test OS', `/boot/vmlinuz-${VER}`, [`/boot/initrd.img-${VER}`], '/boot/grub/grub.cfg'],
      ['1>0', 'Test OS (recovery)', `/boot/vmlinuz-${VER}`, [`/boot/initrd.img-${VER}`], '/boot/grub/grub.cfg'],
    ]);
    assert.equal(r.boot.defaultEntry, '0');
    assert.deepEqual([r.boot.firmware, r.boot.style, r.boot.partitionScheme, r.boot.mbr.present], ['uefi', 'grub-uefi', 'gpt', false]);
    assert.deepEqual(r.boot.esps, [{ volume: 'disk 0 partition 1', loaders: ['EFI/debian/grubx64.efi', 'EFI/debian/shimx64.efi'], removable: false }]);
    assert.deepEqual(r.boot.configs, [{ volume: 'disk 0 partition 2', path: '/grub/grub.cfg', kind: 'grub2' }]);
    assert.equal(r.boot.pygrubReadable, true);
  });

  test('device names in fstab, crypttab, resume, grub.cfg and /etc/default/grub', () => {
    assert.deepEqual(r.naming.map((n) => [n.use, n.spec, n.naming, n.target ?? null, n.volume ?? null, n.optional ?? false]), [
      ['fstab', '/dev/mapper/sysvg-root', 'lvm', '/', 'sysvg/root', false],
      ['fstab', `UUID=${BOOT_UUID}`, 'uuid', '/boot', 'disk 0 partition 2', false],
      ['fstab', 'UUID=E5B0-ABCD', 'uuid', '/boot/efi', 'disk 0 partition 1', false],
      ['fstab', '/dev/vdb1', 'device', 'swap', null, true],
      ['crypttab', 'UUID=11111111-2222-4333-8444-555555555555', 'uuid', 'cr_data', null, false],
      ['resume', '/dev/vdb1', 'device', null, null, false],
      ['cmdline-root', '/dev/mapper/sysvg-root', 'lvm', '/', 'sysvg/root', false],
      ['cmdline-root', '/dev/vda3', 'device', '/', 'disk 0 partition 3', false],
      ['default-grub', '/dev/vda3', 'device', '/', 'disk 0 partition 3', false],
    ]);
    assert.deepEqual(r.cmdline, { default: 'root=/dev/mapper/sysvg-root ro console=ttyS0 net.ifnames=1', grubDefault: 'console=ttyS0 root=/dev/vda3 quiet' });
  });

  test('consoles, network, agents', () => {
    assert.deepEqual(r.consoles, { cmdline: ['ttyS0'], gettys: ['serial-getty@ttyS0.service'], inittab: [] });
    assert.deepEqual(r.network.interfaces.map((i) => [i.name, i.source, i.method, i.file]), [['eth0', 'ifupdown', 'dhcp', '/etc/network/interfaces.d/eth0']]);
    assert.equal(r.network.predictableNames, true);
    assert.deepEqual(r.network.persistentRules, [{ file: '/etc/udev/rules.d/70-persistent-net.rules', mac: '52:54:00:12:34:56', name: 'eth0' }]);
    assert.deepEqual(r.packages, { manager: 'dpkg', count: 3 });
    assert.deepEqual(r.agents, [
      { name: 'open-vm-tools', hypervisor: 'vmware', installed: true, version: '2:12.2.0-1', services: [{ unit: 'open-vm-tools.service', enabled: false }] },
      { name: 'qemu-guest-agent', hypervisor: 'kvm', installed: true, version: '1:7.2+dfsg-7', services: [{ unit: 'qemu-guest-agent.service', enabled: true }] },
    ]);
  });

  test('verdicts: a UEFI loader only in its own folder, a kernel without Xen PV, sd_mod without t10-pi', () => {
    // kvm: drivers and names are fine; no MBR code, and no EFI/BOOT/BOOTX64.EFI for a new VM's firmware
    assert.deepEqual(codes(r, 'kvm'), ['boot-code']);
    assert.equal(r.verdicts.kvm.controller, 'virtio-blk');
    assert.deepEqual(r.verdicts.kvm.warnings.map((w) => w.code), ['interface-name', 'persistent-net']);
    // storvsc disks need sd_mod, which is there without its t10-pi
    assert.deepEqual(codes(r, 'hyperv-gen2'), ['storage-driver', 'module-deps', 'uefi-loader']);
    assert.match(r.verdicts['hyperv-gen2'].blockers[2]!.fix, /copy EFI\/debian\/shimx64\.efi .* BOOTX64\.EFI/);
    assert.deepEqual(codes(r, 'xen-pv'), ['storage-driver', 'pv-kernel']);
    assert.match(r.verdicts['xen-pv'].blockers[0]!.fix, /has no xen_blkfront: install a kernel/);
    // the swap and resume names on /dev/vdb1, and root= in /etc/default/grub (used by the next update-grub), do not stop a boot
    const w = r.verdicts['xen-pv'].warnings;
    assert.deepEqual(w.map((x) => x.code), ['device-name', 'device-name', 'console', 'network-driver', 'persistent-net', 'agent']);
    assert.deepEqual(w.filter((x) => x.code === 'device-name').map((x) => x.spec), ['/dev/vdb1', '/dev/vda3']);
    assert.match(w[0]!.why, /\/etc\/fstab line 5 \(swap\) and \/etc\/initramfs-tools\/conf\.d\/resume/);
    // vmware: NVMe leaves the fewest blockers (pvscsi lacks vmw_pvscsi and sd_mod's t10-pi); no boot path either
    assert.deepEqual(codes(r, 'vmware'), ['storage-driver', 'boot-code']);
    assert.equal(r.verdicts.vmware.controller, 'nvme');
    const pvscsi = r.verdicts.vmware.controllers.find((c) => c.name === 'pvscsi')!;
    assert.equal(pvscsi.blockers, 2); // vmw_pvscsi missing, and sd_mod's t10-pi
    assert.ok(r.verdicts.vmware.warnings.some((w) => w.code === 'agent' && w.what.startsWith('qemu-guest-agent')));
  });

  test('with a removable-path loader it boots on kvm by UEFI; writes reach the ESP through /boot/efi', async (t) => {
    const copy = join(dir, 'writable.raw');
    copyFileSync(disk, copy);
    const guest = await openGuest(copy, { writable: true });
    try {
      await guest.writeFile('/boot/efi/EFI/BOOT/BOOTX64.EFI', Buffer.from('shim'));
    } finally {
      await guest.close();
    }
    // mtools reads the ESP at its offset, independently of Polyvisor
    const listing = execFileSync('mdir', ['-b', '-i', `${copy}@@${MiB}`, '::/EFI/BOOT'], { encoding: 'utf8', env: { ...process.env, MTOOLS_SKIP_CHECK: '1' } });
    assert.match(listing, /BOOTX64\.EFI/);
    const r2 = await inspect(copy);
    t.diagnostic(`loaders: ${r2.boot.esps[0]!.loaders.join(' ')}`);
    assert.equal(r2.boot.esps[0]!.removable, true);
    assert.equal(r2.verdicts.kvm.boots, true);
    assert.equal(r2.verdicts.kvm.firmware, 'uefi');
    assert.deepEqual(codes(r2, 'hyperv-gen2'), ['storage-driver', 'module-deps']);
  });
});

describe('hostile guests', () => {
  test('symlinks that point out of the guest resolve inside it; loops and dangling links are errors, not hangs', async (t) => {
    const dir = await tempDir(t);
    const tree = join(dir, 'tree');
    writeTree(tree, {
      'etc/shadow': 'ID=guest-shadow\nVERSION_ID="from the guest"\n',
      'etc/os-release': { link: '/../../../../etc/shadow' },
      'etc/fstab': '/dev/sda1 / ext4 defaults 0 1\n/dev/sdz9 /srv ext4 defaults 0 2\n',
      'etc/debian_version': { link: '../../../../../../proc/self/environ' },
      'etc/hostname': { link: '/etc/../../etc/./shadow' },
      'loop/a': { link: 'b' },
      'loop/b': { link: '/loop/a' },
      'boot/vmlinuz-9.9': 'k',
      'boot/initrd.img-9.9': patternBytes(4096, 3),
      lib: { link: '/proc/self/cwd' },
      'etc/default/grub': { link: '/loop/a' },
    });
    const img = join(dir, 'disk.raw');
    makeExt4(img, tree);
    const guest = await openGuest(img);
    try {
      assert.equal((await guest.readFile('/etc/os-release')).toString(), 'ID=guest-shadow\nVERSION_ID="from the guest"\n');
      assert.equal(await guest.resolve('/etc/os-release'), '/etc/shadow');
      assert.equal(await guest.resolve('/etc/hostname'), '/etc/shadow');
      await assert.rejects(guest.readFile('/etc/debian_version'), (e: unknown) => isPolyvisorError(e, 'ERR_NOT_FOUND'));
      await assert.rejects(guest.readFile('/loop/a'), (e: unknown) => isPolyvisorError(e, 'ERR_CORRUPT') && e.message.includes('too many levels of symbolic links'));
      assert.equal(await guest.exists('/lib/modules'), false);
    } finally {
      await guest.close();
    }
    const r = await inspect(img);
    assert.deepEqual([r.os.distribution, r.os.version, r.os.debianVersion], ['guest-shadow', 'from the guest', undefined]);
    assert.ok(r.warnings.some((w) => w.includes('/dev/sdz9') && w.includes('names no volume')), r.warnings.join('\n'));
    assert.ok(r.warnings.some((w) => w.includes('/etc/default/grub') && w.includes('too many levels')), r.warnings.join('\n'));
    // a kernel whose initramfs is not one: reported, and the storage blocker says so
    const k = r.kernels.find((x) => x.version === '9.9')!;
    assert.ok(k.initramfs === undefined || k.initramfs.error);
    assert.equal(r.verdicts.kvm.boots, false);
  });

  test('an initramfs that is not one is reported, not thrown', async (t) => {
    const dir = await tempDir(t);
    const tree = join(dir, 'tree');
    writeTree(tree, {
      'etc/os-release': 'ID=x\n',
      'etc/fstab': '',
      'boot/vmlinuz-2.0': 'k',
      'boot/initrd.img-2.0': Buffer.concat([Buffer.from('070701'), patternBytes(4000, 9)]),
      'usr/lib/modules/2.0/modules.dep': '',
      lib: { link: 'usr/lib' },
    });
    const img = join(dir, 'disk.raw');
    makeExt4(img, tree);
    const r = await inspect(img);
    const ir = r.kernels[0]!.initramfs!;
    assert.match(ir.error!, /not 8 hex digits/);
    assert.ok(r.warnings.some((w) => w.startsWith('/boot/initrd.img-2.0')));
    assert.match(r.verdicts.kvm.blockers.find((b) => b.code === 'storage-driver')!.why, /the initramfs could not be read \(.*not 8 hex digits/);
  });

  test('an NTFS disk: no Linux root, every target blocked with the reason', async (t) => {
    const dir = await tempDir(t);
    const img = join(dir, 'ntfs.raw');
    execFileSync('truncate', ['-s', '16M', img]);
    execFileSync('mkntfs', ['-F', '-Q', '-q', img], { stdio: 'ignore' });
    const r = await inspect(img);
    assert.equal(r.os.family, 'windows');
    assert.equal(r.root, undefined);
    assert.ok(r.warnings.some((w) => w.includes('no Windows system found') && w.includes('NTFS')), r.warnings.join('\n'));
    for (const tgt of TARGETS) assert.deepEqual(codes(r, tgt).slice(0, 1), ['no-root'], tgt);
  });

  test('a file that is no disk and no VM is refused with a code', async (t) => {
    const dir = await tempDir(t);
    const f = join(dir, 'tiny.raw');
    writeFileSync(f, Buffer.alloc(100));
    await assert.rejects(inspect(f), (e: unknown) => isPolyvisorError(e, 'ERR_TRUNCATED'));
    await assert.rejects(inspect(join(dir, 'missing.raw')), (e: unknown) => isPolyvisorError(e, 'ERR_NOT_FOUND'));
  });
});

describe('the small parsers', () => {
  test('shell assignments, command lines, grub.cfg and device names', () => {
    const kv = parseShellAssignments(`A=1\nB="two words" # c\nC='x y'z\nexport D="a\\"b"\n# E=no\nF=\n`);
    assert.deepEqual([...kv], [['A', '1'], ['B', 'two words'], ['C', 'x yz'], ['D', 'a"b'], ['F', '']]);
    assert.deepEqual(parseCmdline('root=UUID=x ro  console=ttyS0,115200 "dyndbg=file x +p" quiet'), ['root=UUID=x', 'ro', 'console=ttyS0,115200', 'dyndbg=file x +p', 'quiet']);
    const g = parseGrubCfg("set default=\"1\"\nmenuentry 'A' {\n linux /a root=/dev/sda1\n}\nmenuentry \"B \\\"x\\\"\" {\n linux16 /b\n initrd16 /i1 /i2\n}\n");
    assert.deepEqual(g, { entries: [{ id: '0', title: 'A', cmdline: 'root=/dev/sda1', kernel: '/a' }, { id: '1', title: 'B "x"', cmdline: '', kernel: '/b', initrd: ['/i1', '/i2'] }], default: '1' });
    const legacy = parseGrubCfg('default 0\ntimeout 5\ntitle Debian\n root (hd0,0)\n kernel /boot/vmlinuz root=/dev/hda1 ro\n initrd /boot/initrd.img\n');
    assert.deepEqual(legacy.entries, [{ id: '0', title: 'Debian', cmdline: 'root=/dev/hda1 ro', kernel: '/boot/vmlinuz', initrd: ['/boot/initrd.img'] }]);
    assert.deepEqual(parseDeviceName('/dev/xvdb2'), { spec: '/dev/xvdb2', naming: 'device', prefix: 'xvd', diskIndex: 1, partition: 2 });
    assert.deepEqual(parseDeviceName('/dev/sdaa'), { spec: '/dev/sdaa', naming: 'device', prefix: 'sd', diskIndex: 26 });
    assert.deepEqual(parseDeviceName('/dev/nvme0n1p3'), { spec: '/dev/nvme0n1p3', naming: 'device', prefix: 'nvme', diskIndex: 0, partition: 3 });
    assert.deepEqual(parseDeviceName('/dev/mapper/my--vg-root--lv'), { spec: '/dev/mapper/my--vg-root--lv', naming: 'lvm', vg: 'my-vg', lv: 'root-lv', mapper: 'my--vg-root--lv' });
    assert.deepEqual(parseDeviceName('/dev/mapper/sda5_crypt'), { spec: '/dev/mapper/sda5_crypt', naming: 'mapper', mapper: 'sda5_crypt' });
    assert.deepEqual(parseDeviceName('/dev/disk/by-label/my\\x20disk'), { spec: '/dev/disk/by-label/my\\x20disk', naming: 'label', value: 'my disk' });
    assert.equal(parseDeviceName('LABEL="root fs"').value, 'root fs');
    assert.equal(parseDeviceName('/dev/disk/by-id/virtio-abc-part1').naming, 'by-id');
    assert.equal(parseDeviceName('/dev/sysvg/root').naming, 'lvm');
  });
});
