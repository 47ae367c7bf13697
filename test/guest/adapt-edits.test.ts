/**
 * The text edits of guest adaptation, each applied twice (the second pass must change
 * nothing), on the forms real guests write: fstab with comments, tabs and options; crypttab;
 * initramfs-tools' RESUME=; grub.cfg `linux` lines, GRUB legacy's menu.lst with its
 * "# kopt=" template; /etc/default/grub quoted either way. Then the network step on a real
 * guest: interface names from ifupdown (with source-directory), networkd, netplan and
 * 70-persistent-net.rules bound to MACs with .link files; and the pygrub direction, a KVM
 * guest adapted for Xen PV, read by Xen's own pygrub.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { adaptGuest } from '../../src/guest/adapt.js';
import { rewriteCrypttab, rewriteFstab, rewriteResume, type StableName } from '../../src/guest/edit-fstab.js';
import { rewriteCmdline, rewriteDefaultGrub, rewriteGrubConfig } from '../../src/guest/edit-grub.js';
import { readInitramfs, writeCpio } from '../../src/guest/initramfs.js';
import { findTarget } from '../../src/guest/targets.js';
import { throwsCode } from '../helpers.js';
import { pygrub } from '../guests/debian.js';
import { editGuest, overlayOf, rawCopy, readGuest, rootFs, useDebian } from './adapt-fixtures.js';

const UUID1 = '11111111-2222-4333-8444-555555555555';
const stable: StableName = (dev) => ({ '/dev/xvda1': `UUID=${UUID1}`, '/dev/xvda2': 'UUID=swap-uuid', '/dev/sdb': 'UUID=data', '/dev/nvme0n1p3': 'PARTUUID=abcd-03' })[dev] ?? null;

function twice<T extends { text: string; changes: unknown[] }>(fn: (t: string) => T, input: string): T {
  const first = fn(input);
  const second = fn(first.text);
  assert.equal(second.text, first.text, 'a second pass gives the same text');
  assert.deepEqual(second.changes, [], 'and reports no change');
  return first;
}

describe('guest adapt: text edits', () => {
  test('fstab: positional devices become UUID=, everything else stays byte for byte', () => {
    const input = '# /etc/fstab\n/dev/xvda1\t/\text4\terrors=remount-ro\t0\t1\n/dev/xvda2 none swap sw 0 0\n  UUID=keep /home ext4 defaults 0 2\nproc /proc proc defaults 0 0\n/dev/xvdc1 /srv ext4 nofail 0 2\n/dev/sdb /data xfs defaults 0 0\n';
    const r = twice((t) => rewriteFstab(t, stable), input);
    assert.equal(r.text, `# /etc/fstab\nUUID=${UUID1}\t/\text4\terrors=remount-ro\t0\t1\nUUID=swap-uuid none swap sw 0 0\n  UUID=keep /home ext4 defaults 0 2\nproc /proc proc defaults 0 0\n/dev/xvdc1 /srv ext4 nofail 0 2\nUUID=data /data xfs defaults 0 0\n`);
    assert.deepEqual(r.changes.map((c) => c.line), [2, 3, 7]);
  });

  test('crypttab names the device in its second field; RESUME= in initramfs-tools may be quoted', () => {
    assert.equal(twice((t) => rewriteCrypttab(t, stable), 'cryptroot /dev/nvme0n1p3 none luks,discard\n').text, 'cryptroot PARTUUID=abcd-03 none luks,discard\n');
    assert.equal(twice((t) => rewriteResume(t, stable), 'RESUME=/dev/xvda2\n').text, 'RESUME=UUID=swap-uuid\n');
    assert.equal(twice((t) => rewriteResume(t, stable), 'RESUME="/dev/xvda2"\n').text, 'RESUME="UUID=swap-uuid"\n');
    assert.equal(rewriteResume('RESUME=none\n', stable).changes.length, 0);
  });

  test('kernel command line: root= and resume= by UUID, the target consoles last, options kept', () => {
    const edit = { stable, consoles: ['tty0', 'ttyS0'] };
    assert.equal(rewriteCmdline('root=/dev/xvda1 ro console=hvc0 quiet', edit), `root=UUID=${UUID1} ro quiet console=hvc0 console=tty0 console=ttyS0`);
    assert.equal(rewriteCmdline('root=/dev/xvda1 console=ttyS0,115200n8 console=tty0', edit), `root=UUID=${UUID1} console=tty0 console=ttyS0,115200n8`);
    const done = `root=UUID=${UUID1}  ro  console=hvc0 console=tty0 console=ttyS0`;
    assert.equal(rewriteCmdline(done, edit), done, 'already adapted: left as it was, spacing included');
    assert.equal(rewriteCmdline('root=/dev/mapper/vg-root resume=/dev/xvda2', { stable, consoles: [] }), 'root=/dev/mapper/vg-root resume=UUID=swap-uuid');
  });

  test('grub.cfg and menu.lst: every kernel line and the kopt template', () => {
    const cfg = "menuentry 'Debian' {\n\tlinux\t/boot/vmlinuz-6.1 root=/dev/xvda1 ro console=hvc0\n\tinitrd\t/boot/initrd.img-6.1\n}\nsubmenu 'x' {\n  menuentry 'rescue' {\n    linux /vmlinuz root=/dev/xvda1 single\n  }\n}\n";
    const r = twice((t) => rewriteGrubConfig(t, { stable, consoles: ['ttyS0'] }), cfg);
    assert.match(r.text, new RegExp(`^\\tlinux\\t/boot/vmlinuz-6.1 root=UUID=${UUID1} ro console=hvc0 console=ttyS0$`, 'm'));
    assert.match(r.text, new RegExp(`^    linux /vmlinuz root=UUID=${UUID1} single console=ttyS0$`, 'm'));
    assert.equal(r.changes.length, 2);
    const lst = '# kopt=root=/dev/xvda1 ro\ntitle Debian\nroot (hd0,0)\nkernel /boot/vmlinuz-2.6 root=/dev/xvda1 ro\n';
    const l = twice((t) => rewriteGrubConfig(t, { stable, consoles: ['hvc0'] }), lst);
    assert.equal(l.text, `# kopt=root=UUID=${UUID1} ro console=hvc0\ntitle Debian\nroot (hd0,0)\nkernel /boot/vmlinuz-2.6 root=UUID=${UUID1} ro console=hvc0\n`);
  });

  test('/etc/default/grub: consoles into GRUB_CMDLINE_LINUX, quotes kept, added when missing', () => {
    const edit = { stable, consoles: ['tty0', 'ttyS0'] };
    const r = twice((t) => rewriteDefaultGrub(t, edit), 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=\'console=hvc0\'\n');
    assert.equal(r.text, "GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\nGRUB_CMDLINE_LINUX='console=hvc0 console=tty0 console=ttyS0'\n");
    const added = twice((t) => rewriteDefaultGrub(t, edit), 'GRUB_TIMEOUT=5');
    assert.equal(added.text, 'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="console=tty0 console=ttyS0"\n');
    assert.equal(twice((t) => rewriteDefaultGrub(t, edit), 'GRUB_CMDLINE_LINUX_DEFAULT="root=/dev/xvda1 quiet"\nGRUB_CMDLINE_LINUX=""\n').text, `GRUB_CMDLINE_LINUX_DEFAULT="root=UUID=${UUID1} quiet"\nGRUB_CMDLINE_LINUX="console=tty0 console=ttyS0"\n`);
  });

  test('targets: known names and aliases; an unknown one is a usage error', () => {
    assert.equal(findTarget('KVM').name, 'kvm');
    assert.equal(findTarget('hyperv').name, 'hyperv-gen2');
    assert.equal(findTarget('esxi').name, 'vmware');
    throwsCode(() => findTarget('bochs'), 'ERR_USAGE', 'bochs', 'kvm');
  });
});

describe('guest adapt: network names and the Xen PV direction, on a real guest', () => {
  const ctx = useDebian('kvm');

  test('each configured interface gets a .link naming it by its MAC, in the guest and in its initramfs', async () => {
    const src = await overlayOf(ctx.dir, ctx.g, 'net.qcow2');
    await editGuest(src, async (x) => {
      const fs = rootFs(x);
      await fs.writeFile('/etc/network/interfaces', Buffer.from('auto lo\niface lo inet loopback\nsource-directory /etc/network/interfaces.d\n'));
      await fs.writeFile('/etc/network/interfaces.d/ens3', Buffer.from('allow-hotplug ens3\niface ens3 inet dhcp\n'));
      await fs.mkdir('/etc/netplan');
      await fs.writeFile('/etc/netplan/50.yaml', Buffer.from('network:\n  ethernets:\n    enp0s4:\n      dhcp4: true\n'));
      if (!(await fs.exists('/etc/udev/rules.d'))) await fs.mkdir('/etc/udev/rules.d');
      await fs.writeFile('/etc/udev/rules.d/70-persistent-net.rules', Buffer.from('SUBSYSTEM=="net", ACTION=="add", ATTR{address}=="00:16:3e:00:00:99", NAME="enp0s4"\n'));
    });
    const r = await adaptGuest([src], { target: 'vmware', nics: [{ mac: '00:16:3E:00:00:01' }], allowOutsidePaths: true });
    const links = r.changes.filter((c) => c.kind === 'file' && c.guestPath.endsWith('.link')).map((c) => c.kind === 'file' && c.guestPath);
    assert.deepEqual(links, ['/etc/systemd/network/10-polyvisor-enp0s4.link', '/etc/systemd/network/10-polyvisor-ens3.link']);
    await readGuest(r.outputs[0]!, async (x) => {
      // enp0s4's MAC comes from its persistent-net rule, ens3 takes the VM's first NIC's
      assert.match((await x.readFile('/etc/systemd/network/10-polyvisor-enp0s4.link')).toString(), /\[Match\]\nMACAddress=00:16:3e:00:00:99\n\n\[Link\]\nName=enp0s4\n/);
      assert.match((await x.readFile('/etc/systemd/network/10-polyvisor-ens3.link')).toString(), /MACAddress=00:16:3e:00:00:01[\s\S]*Name=ens3/);
      const ir = await readInitramfs(await x.readFile(`/boot/initrd.img-${ctx.g.kernelVersion}`));
      assert.ok(ir.files.has('/usr/lib/systemd/network/10-polyvisor-ens3.link'), 'udev in the initramfs names it too');
    });
  });

  test('a dracut initramfs (zstd, RHEL naming) gets the drivers, a modules-load.d list, and dracut.conf.d keeps them', async () => {
    const v = ctx.g.kernelVersion;
    const src = await overlayOf(ctx.dir, ctx.g, 'dracut.qcow2');
    // what dracut leaves: its own folder, modules under usr/lib (lib -> usr/lib), no conf/modules
    const dracut = writeCpio([
      { name: 'usr', mode: 0o040755 },
      { name: 'usr/lib', mode: 0o040755 },
      { name: 'usr/lib/dracut', mode: 0o040755 },
      { name: 'usr/lib/dracut/modules.txt', mode: 0o100644, data: Buffer.from('base\nsystemd\n') },
      { name: 'lib', mode: 0o120777, target: 'usr/lib' },
      { name: 'usr/lib/modules', mode: 0o040755 },
      { name: `usr/lib/modules/${v}`, mode: 0o040755 },
      { name: `usr/lib/modules/${v}/modules.dep`, mode: 0o100644, data: Buffer.alloc(0) },
    ]);
    await editGuest(src, async (x) => {
      const fs = rootFs(x);
      await fs.writeFile(`/boot/initramfs-${v}.img`, execFileSync('zstd', ['-q', '-c'], { input: dracut }));
      await fs.unlink(`/boot/initrd.img-${v}`);
      await fs.mkdir('/etc/dracut.conf.d');
    });
    const r = await adaptGuest([src], { target: 'kvm', allowOutsidePaths: true });
    assert.ok(r.changes.some((c) => c.kind === 'append' && c.guestPath === `/boot/initramfs-${v}.img`));
    await readGuest(r.outputs[0]!, async (x) => {
      const ir = await readInitramfs(await x.readFile(`/boot/initramfs-${v}.img`));
      assert.equal(ir.generator, 'dracut');
      assert.deepEqual(ir.segments.map((s) => s.compression), ['zstd', 'gzip']);
      assert.match(ir.files.get('/etc/modules-load.d/polyvisor-kvm.conf')!.data.toString(), /^virtio_blk$/m);
      assert.ok(!ir.files.has('/conf/modules'), 'no initramfs-tools list in a dracut image');
      assert.ok(ir.modules.some((m) => m.name === 'virtio_blk' && m.path.startsWith('/usr/lib/modules/')));
      assert.match(ir.files.get(`/usr/lib/modules/${v}/modules.dep`)!.data.toString(), /^kernel\/drivers\/block\/virtio_blk\.ko: /m);
      assert.match((await x.readFile('/etc/dracut.conf.d/polyvisor-kvm.conf')).toString(), /^add_drivers\+=" virtio_pci virtio_blk virtio_scsi sd_mod virtio_net "$/m);
    });
  });

  test('the KVM guest adapted for Xen PV: pygrub finds a kernel with console=hvc0, and xen-blkfront is in its initramfs', async () => {
    const src = await overlayOf(ctx.dir, ctx.g, 'to-xen.qcow2');
    const r = await adaptGuest([src], { target: 'xen-pv', allowOutsidePaths: true });
    assert.deepEqual(r.problems, []);
    assert.ok(!r.changes.some((c) => c.kind === 'raw'));
    const ir = await readGuest(r.outputs[0]!, async (x) => readInitramfs(await x.readFile(`/boot/initrd.img-${ctx.g.kernelVersion}`)));
    const names = new Set(ir.modules.map((m) => m.name));
    assert.ok(names.has('xen_blkfront') && names.has('xen_netfront') && names.has('virtio_blk'));
    const raw = await rawCopy(r.outputs[0]!, join(ctx.dir, 'to-xen.raw'));
    const out = join(ctx.dir, 'pygrub');
    await mkdir(out);
    const choice = await pygrub(raw, out);
    assert.match(choice.args, new RegExp(`root=UUID=${ctx.g.rootUuid} ro console=ttyS0 console=hvc0$`));
    assert.ok(choice.kernel && choice.ramdisk, 'pygrub copied out a kernel and its ramdisk');
    await rm(raw, { force: true });
  });
});
