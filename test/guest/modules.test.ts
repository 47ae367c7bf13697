/**
 * A guest kernel's module tree, with kmod's modprobe as the oracle: dependencies resolved by
 * readKernelModules/resolveDeps from the Debian test guest's own /lib/modules (read through its
 * /lib -> usr/lib symlink) must come in the order `modprobe --show-depends` gives for the same
 * index files, and driver presence must agree with the kernel's /boot/config (debugfs reads
 * both straight from the ext4 file system, independently of Polyvisor).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openGuest, type Guest } from '../../src/guest/open.js';
import { DRIVERS, KCONFIG, driverList, moduleName, parseKernelConfig, parseModulesBuiltin, parseModulesDep, parseSoftdeps, readKernelModules } from '../../src/guest/modules.js';
import { isPolyvisorError, type ErrorCode } from '../../src/errors.js';
import { buildDebianGuest, type DebianGuest } from '../guests/debian.js';
import { tempDir } from '../helpers.js';
import { makeExt4, writeTree } from './guest-image.js';

const PART = `?offset=${1 << 20}`;

function debugfs(disk: string, request: string): string {
  return execFileSync('debugfs', ['-R', request, disk + PART], { encoding: 'utf8', maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'pipe'] });
}

async function rejects(p: Promise<unknown>, code: ErrorCode, ...words: string[]): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(isPolyvisorError(e), String(e));
    assert.equal(e.code, code, e.message);
    for (const w of words) assert.ok(e.message.includes(w), `"${w}" in ${e.message}`);
    return true;
  });
}

describe('module index parsers', () => {
  test('modules.dep, modules.builtin, modules.softdep and a kernel config', () => {
    const dep = parseModulesDep('# comment\nkernel/drivers/block/xen-blkfront.ko:\nkernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/jbd2/jbd2.ko.xz\n\n');
    assert.deepEqual([...dep.keys()], ['xen_blkfront', 'ext4']);
    assert.deepEqual(dep.get('ext4')!.deps, ['crc16', 'jbd2']);
    assert.equal(dep.get('xen_blkfront')!.path, 'kernel/drivers/block/xen-blkfront.ko');
    assert.throws(() => parseModulesDep('kernel/a.ko\n', 'x/modules.dep'), (e: unknown) => isPolyvisorError(e, 'ERR_CORRUPT') && e.message.includes('line 1'));
    assert.deepEqual([...parseModulesBuiltin('kernel/drivers/ata/libata.ko\nkernel/crypto/crc32c-generic.ko\n')], ['libata', 'crc32c_generic']);
    const sd = parseSoftdeps('softdep ext4 pre: crypto-crc32c\nsoftdep cifs gcm\nsoftdep cifs ccm\nsoftdep x pre: a b post: c\n');
    assert.deepEqual(sd.get('ext4'), { pre: ['crypto-crc32c'], post: [] });
    // kmod takes a module's first softdep line only
    assert.deepEqual(sd.get('cifs'), { pre: ['gcm'], post: [] });
    assert.deepEqual(sd.get('x'), { pre: ['a', 'b'], post: ['c'] });
    const cfg = parseKernelConfig('CONFIG_EXT4_FS=m\n# CONFIG_XEN_PV is not set\nCONFIG_LOCALVERSION="-x"\nCONFIG_VIRTIO_BLK=y\n');
    assert.equal(cfg.get('EXT4_FS'), 'm');
    assert.equal(cfg.get('VIRTIO_BLK'), 'y');
    assert.equal(cfg.get('XEN_PV'), 'n');
    assert.equal(moduleName('kernel/drivers/scsi/hv_storvsc.ko.zst'), 'hv_storvsc');
    assert.equal(moduleName('crc-t10dif'), 'crc_t10dif');
  });

  test('DRIVERS uses modprobe names and every module has its Kconfig symbol', () => {
    for (const d of driverList()) {
      assert.equal(d.name, moduleName(d.name), d.name);
      assert.ok(KCONFIG[d.name], `${d.name} has a Kconfig symbol`);
    }
    assert.deepEqual([...DRIVERS.xen.storage], ['xen_blkfront']);
    assert.ok(DRIVERS.virtio.bus.includes('virtio_pci'));
  });
});

describe("the Debian guest's kernel modules, against modprobe", () => {
  let g: DebianGuest;
  let guest: Guest;
  let root: string;
  before(async () => {
    g = await buildDebianGuest('kvm');
    guest = await openGuest(g.disk);
    // the index files as debugfs reads them, with empty stand-ins for the .ko files: modprobe
    // --show-depends only needs the paths to exist
    root = await tempDir();
    const dir = join(root, 'lib/modules', g.kernelVersion);
    mkdirSync(dir, { recursive: true });
    for (const f of ['modules.dep', 'modules.dep.bin', 'modules.alias', 'modules.alias.bin', 'modules.softdep', 'modules.symbols.bin', 'modules.builtin', 'modules.builtin.bin', 'modules.builtin.alias.bin']) {
      execFileSync('debugfs', ['-R', `dump /usr/lib/modules/${g.kernelVersion}/${f} ${join(dir, f)}`, g.disk + PART], { stdio: 'ignore' });
    }
    for (const line of debugfs(g.disk, `cat /usr/lib/modules/${g.kernelVersion}/modules.dep`).split('\n')) {
      const p = line.split(':')[0];
      if (!p) continue;
      mkdirSync(join(dir, p, '..'), { recursive: true });
      writeFileSync(join(dir, p), '');
    }
  });
  after(async () => {
    await guest?.close();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  /** modprobe's load order for `name`, each module once (its first appearance), in modprobe's names */
  function modprobe(name: string): string[] {
    const out = execFileSync('modprobe', ['-C', '/dev/null', '-d', root, '-S', g.kernelVersion, '--show-depends', name], { encoding: 'utf8' });
    const order: string[] = [];
    for (const line of out.split('\n')) {
      const m = /^insmod (\S+)/.exec(line);
      if (m && !order.includes(moduleName(m[1]!))) order.push(moduleName(m[1]!));
    }
    return order;
  }

  test('/lib/modules is read through the merged-/usr symlink', async () => {
    assert.equal((await guest.lstat('/lib')).type, 'symlink');
    const tree = await readKernelModules(guest, g.kernelVersion);
    assert.equal(tree.dir, `/lib/modules/${g.kernelVersion}`);
    assert.equal(await guest.resolve(tree.dir), `/usr/lib/modules/${g.kernelVersion}`);
    assert.ok(tree.modules.size > 1000, `${tree.modules.size} modules`);
    assert.deepEqual(tree.warnings, []);
  });

  test('dependencies and soft dependencies in the order modprobe --show-depends loads them', async () => {
    const tree = await readKernelModules(guest, g.kernelVersion);
    const names = [...driverList().map((d) => d.name), 'ext4', 'xfs', 'btrfs', 'dm_crypt', 'nfsv4', ...[...tree.modules.keys()].filter((_, i) => i % 97 === 0)];
    let compared = 0;
    for (const name of new Set(names)) {
      if (!tree.modules.has(name)) continue;
      assert.deepEqual(await tree.resolveDeps([name], { softdeps: true }), modprobe(name), name);
      compared++;
    }
    assert.ok(compared > 40, `${compared} modules compared`);
    // without soft dependencies: exactly modules.dep's closure
    assert.deepEqual(await tree.resolveDeps(['ext4']), ['jbd2', 'mbcache', 'crc16', 'ext4']);
    // several at once: each module once, dependencies first
    const both = await tree.resolveDeps(['hv_storvsc', 'sd_mod']);
    assert.equal(new Set(both).size, both.length);
    assert.ok(both.indexOf('scsi_mod') < both.indexOf('hv_storvsc') && both.indexOf('scsi_mod') < both.indexOf('sd_mod'));
    await rejects(tree.resolveDeps(['no_such_module']), 'ERR_NOT_FOUND', 'no_such_module');
  });

  test('driver presence agrees with /boot/config and the module files', async () => {
    const tree = await readKernelModules(guest, g.kernelVersion);
    const config = parseKernelConfig(debugfs(g.disk, `cat /boot/config-${g.kernelVersion}`));
    for (const d of driverList()) {
      const want = config.get(KCONFIG[d.name]!);
      const status = await tree.status(d.name);
      if (want === 'y') assert.equal(status, 'builtin', d.name);
      else if (want === 'm') {
        assert.equal(status, 'module', d.name);
        assert.match(debugfs(g.disk, `stat /usr/lib/modules/${g.kernelVersion}/${tree.modules.get(d.name)!.path}`), /Type: regular/);
      } else assert.equal(status, 'absent', d.name);
    }
  });
});

describe('module trees a guest may hold', () => {
  test('built in by config or modules.builtin, a missing file, a tree without modules.dep, loops and bad versions', async (t) => {
    const dir = await tempDir(t);
    const tree = join(dir, 'tree');
    writeTree(tree, {
      'etc/os-release': 'ID=test\n',
      'etc/fstab': '',
      lib: { link: 'usr/lib' },
      'boot/config-1.0': 'CONFIG_VIRTIO_BLK=y\nCONFIG_XEN_BLKDEV_FRONTEND=m\n',
      'usr/lib/modules/1.0/modules.dep': 'kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\nkernel/drivers/block/xen-blkfront.ko:\nkernel/drivers/scsi/sd_mod.ko:\n',
      'usr/lib/modules/1.0/modules.builtin': 'kernel/drivers/ata/ahci.ko\n',
      'usr/lib/modules/1.0/kernel/a.ko': 'a',
      'usr/lib/modules/1.0/kernel/b.ko': 'b',
      'usr/lib/modules/1.0/kernel/drivers/block/xen-blkfront.ko': 'x',
      'usr/lib/modules/2.0/kernel/drivers/net/virtio_net.ko.xz': 'v',
      'usr/lib/modules/2.0/kernel/drivers/net/vmxnet3.ko.zst': 'v',
    });
    const img = join(dir, 'disk.raw');
    makeExt4(img, tree);
    const guest = await openGuest(img);
    t.after(() => guest.close());
    const k1 = await readKernelModules(guest, '1.0');
    assert.equal(await k1.status('virtio_blk'), 'builtin'); // CONFIG_VIRTIO_BLK=y
    assert.equal(await k1.status('ahci'), 'builtin'); // modules.builtin
    assert.equal(await k1.status('xen-blkfront'), 'module');
    assert.equal(await k1.status('sd_mod'), 'absent'); // listed, but no file
    assert.deepEqual(await k1.resolveDeps(['virtio_blk', 'xen_blkfront']), ['xen_blkfront']);
    await rejects(k1.resolveDeps(['a']), 'ERR_CORRUPT', 'depends on itself');
    const k2 = await readKernelModules(guest, '2.0');
    assert.deepEqual([...k2.modules.keys()].sort(), ['virtio_net', 'vmxnet3']);
    assert.match(k2.warnings.join(' '), /modules\.dep is missing/);
    assert.equal(await k2.status('vmxnet3'), 'module');
    const k3 = await readKernelModules(guest, '3.0');
    assert.match(k3.warnings.join(' '), /no \/lib\/modules\/3\.0 folder/);
    await rejects(readKernelModules(guest, '../../etc'), 'ERR_RANGE', 'not a kernel version');
  });
});
