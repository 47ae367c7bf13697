/**
 * `node dist/bench/xen.js`: how long the nested Xen host and the xl driver take on this
 * machine (TCG, no KVM), one run each:
 *   build  building the host's files (debootstrap, mke2fs): only with BENCH_XEN_COLD=1, which
 *          builds into a fresh cache folder and removes it afterwards; otherwise the cached
 *          build's own record (.cache/xen/<recipe>/build.json) is reported
 *   boot   QEMU start until `xl info` answers over SSH
 *   define copying the test guest (kernel, initramfs, a 2 MiB disk) to the host
 *   marker `xl create -c` until the guest prints its disk checksum
 *   export copying the VM back (configuration, kernel, initramfs, disk)
 *   xl list one `xl list` over the session's SSH master connection
 * Writes bench/xen-results.json.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { XenDriver } from '../src/hosts/xen/driver.js';
import { emptySpec } from '../src/vm/spec.js';
import { buildTestGuest, makeTestDisk } from '../test/guests/build.js';
import { RECIPE, buildXenHost, cacheRoot, startXenHost } from '../test/xen/host.js';

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t = Date.now();
  const v = await fn();
  return [v, (Date.now() - t) / 1000];
}

async function main(): Promise<void> {
  const results: Record<string, number | string> = { machine: `${cpus().length} CPUs (${cpus()[0]?.model ?? 'unknown'})`, recipe: RECIPE };
  const cold = process.env.BENCH_XEN_COLD === '1';
  let coldCache: string | undefined;
  if (cold) {
    coldCache = await mkdtemp(join(tmpdir(), 'pv-bench-xen-'));
    process.env.POLYVISOR_CACHE = coldCache;
  }
  const work = await mkdtemp(join(tmpdir(), 'pv-bench-xen-work-'));
  try {
    const [img, buildSeconds] = await timed(buildXenHost);
    const record = join(img.dir, 'build.json');
    results.buildSeconds = img.builtSeconds ?? (existsSync(record) ? JSON.parse(readFileSync(record, 'utf8')).seconds : buildSeconds);
    results.buildFrom = img.builtSeconds === undefined ? 'cache record' : 'this run';
    const guest = await buildTestGuest();
    const host = await startXenHost();
    results.bootSeconds = host.bootSeconds;
    const driver = new XenDriver({ uri: host.uri, identityFile: host.sshTarget.identityFile, knownHostsFile: join(work, 'known_hosts') });
    try {
      await makeTestDisk(join(work, 'disk.raw'), 2 << 20);
      const spec = {
        ...emptySpec('bench'),
        virtualization: 'pv' as const,
        memory: { bytes: 128 << 20 },
        boot: { kernel: guest.kernel, ramdisk: guest.initrd, cmdline: 'console=hvc0 quiet panic=-1' },
        disks: [{ device: 'disk' as const, bus: 'xen' as const, target: 'xvda' }],
      };
      [, results.defineSeconds] = await timed(() => driver.define({ spec, disks: [{ path: join(work, 'disk.raw'), format: 'raw' }] }));
      [, results.markerSeconds] = await timed(async () => {
        const con = await driver.startWithConsole('bench');
        let text = '';
        await new Promise<void>((resolve, reject) => {
          con.on('data', (b: Buffer) => {
            text += b.toString();
            if (/POLYVISOR-DISK \S+ \S+/.test(text)) resolve();
          });
          con.on('end', () => reject(new Error(`the console ended without the marker:\n${text}`)));
        });
        con.destroy();
      });
      await driver.waitForExit('bench', 60_000);
      [, results.exportSeconds] = await timed(() => driver.export('bench', join(work, 'export')));
      [, results.xlListSeconds] = await timed(() => driver.list());
      await driver.undefine('bench');
    } finally {
      await driver.dispose();
      await host.stop();
    }
  } finally {
    await rm(work, { recursive: true, force: true });
    if (coldCache) await rm(coldCache, { recursive: true, force: true });
  }
  const rows = Object.entries(results).map(([k, v]) => `  ${k.padEnd(16)} ${typeof v === 'number' ? `${v.toFixed(1)} s` : v}`);
  console.log(`Xen host and xl driver (cache: ${cacheRoot()})\n${rows.join('\n')}`);
  writeFileSync(join(process.cwd(), 'bench', 'xen-results.json'), JSON.stringify({ date: new Date().toISOString(), ...results }, null, 2) + '\n');
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
