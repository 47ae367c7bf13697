/**
 * NTFS through Polyvisor's reader, with ntfs-3g as the oracle: a volume mkntfs makes and
 * ntfs-3g fills (nested folders, a folder of many files that needs $INDEX_ALLOCATION, files
 * resident and non-resident, fragmented) reads back byte for byte, names matched
 * case-insensitively; an overwrite in place of a non-resident file is read back by ntfscat;
 * writes it cannot do safely (another length, a new file, resident data) are refused with
 * ERR_UNSUPPORTED; hostile volumes fail with coded errors.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { openImage } from '../../../src/disk/chain.js';
import { isPolyvisorError } from '../../../src/errors.js';
import { readPartitions, partitionVolume } from '../../../src/guest/partition.js';
import { imageVolume } from '../../../src/guest/volume.js';
import { NtfsFs } from '../../../src/guest/windows/ntfs.js';
import { patternBytes, rejectsWith, rng, tempDir } from '../../helpers.js';
import { memoryVolume } from '../mutants.js';
import { buildWindowsDisk, ntfscat, PARTITION_START } from './fixture.js';

async function openFs(disk: string, writable = false) {
  const img = await openImage(disk, { writable });
  const vol = imageVolume(img, disk);
  const t = await readPartitions(vol);
  const fs = await NtfsFs.open(partitionVolume(vol, t.partitions[0]!), { readOnly: !writable });
  return { img, fs };
}

const many: Record<string, Buffer> = {};
for (let i = 0; i < 300; i++) many[`Windows/System32/DriverStore/file-${String(i).padStart(3, '0')}-with-a-longer-name.inf`] = Buffer.from(`inf ${i}`);

test('a volume ntfs-3g fills reads back exactly: folders, large indexes, resident and non-resident files', async (t) => {
  const dir = await tempDir(t);
  const big = patternBytes(3 * 1024 * 1024 + 123, 7);
  const fx = await buildWindowsDisk(dir, { ...many, 'Data/big.bin': big, 'Data/Ünïcödé name.txt': Buffer.from('unicode') });
  const { img, fs } = await openFs(fx.disk);
  try {
    assert.equal(fs.label, 'Windows');
    assert.ok((await fs.readFile('/Windows/System32/config/SYSTEM')).equals(fx.system));
    assert.ok((await fs.readFile('\\WINDOWS\\system32\\CONFIG\\software')).equals(fx.software), 'names match case-insensitively');
    assert.ok((await fs.readFile('/Data/big.bin')).equals(big));
    assert.equal((await fs.readFile('/Data/ünïcödé NAME.txt')).toString(), 'unicode');
    assert.equal((await fs.stat('/bootmgr')).size, 0);
    assert.equal((await fs.stat('/Boot')).type, 'directory');
    const names = (await fs.readdir('/Windows/System32/DriverStore')).map((e) => e.name).sort();
    assert.equal(names.length, 300);
    assert.equal(names[299], 'file-299-with-a-longer-name.inf');
    assert.equal((await fs.readFile('/Windows/System32/DriverStore/FILE-150-with-a-longer-name.inf')).toString(), 'inf 150');
    assert.ok(!(await fs.exists('/Windows/System32/nope')));
    await rejectsWith(fs.readFile('/Windows/System32/nope'), 'ERR_NOT_FOUND', fx.disk);
    for (const e of ['/Data/big.bin', '/Windows/System32/config/SYSTEM']) assert.ok((await fs.readFile(e)).equals(ntfscat(dir, fx.disk, e)));
  } finally {
    await img.close();
  }
});

test('overwriting a non-resident file in place with the same length: ntfscat reads the new bytes; other writes are refused', async (t) => {
  const dir = await tempDir(t);
  const fx = await buildWindowsDisk(dir);
  const { img, fs } = await openFs(fx.disk, true);
  try {
    const next = Buffer.from(fx.system);
    next.fill(0x5a, 5000, 9000);
    await fs.writeFile('/Windows/System32/config/SYSTEM', next);
    await fs.flush();
    await rejectsWith(fs.writeFile('/Windows/System32/config/SYSTEM', Buffer.alloc(10)), 'ERR_UNSUPPORTED', fx.disk, 'own length');
    await rejectsWith(fs.writeFile('/Windows/new.txt', Buffer.alloc(10)), 'ERR_UNSUPPORTED', fx.disk, 'cannot create');
    await rejectsWith(fs.writeFile('/Windows/System32/drivers/vmbus.sys', Buffer.from('MZ vmbus.sys')), 'ERR_UNSUPPORTED', fx.disk, 'resident');
  } finally {
    await img.close();
  }
  assert.ok(ntfscat(dir, fx.disk, '/Windows/System32/config/SYSTEM').subarray(5000, 9000).equals(Buffer.alloc(4000, 0x5a)));
});

test('hostile NTFS volumes: mutants of the boot sector, $MFT and indexes fail with coded errors, never a crash', async (t) => {
  const dir = await tempDir(t);
  const fx = await buildWindowsDisk(dir, many);
  const whole = await readFile(fx.disk);
  const part = whole.subarray(PARTITION_START);
  const probe = await NtfsFs.open(memoryVolume(part, 'probe'));
  const mft = probe.boot.mftLcn * probe.boot.clusterSize;
  const r = rng(77);
  const iters = Number(process.env.POLYVISOR_FUZZ_ITER ?? 100);
  let refused = 0;
  for (let i = 0; i < iters; i++) {
    const v = memoryVolume(part, `ntfs-mutant-${i}`);
    const n = 1 + r(6);
    for (let j = 0; j < n; j++) {
      const region = r(3);
      const at = region === 0 ? r(512) : region === 1 ? mft + r(64 * 1024) : r(part.length);
      await v.write(at, Buffer.from([r(256)]));
    }
    try {
      const fs = await NtfsFs.open(v);
      await fs.readFile('/Windows/System32/config/SYSTEM');
      await fs.readdir('/Windows/System32/DriverStore');
    } catch (e) {
      assert.ok(isPolyvisorError(e), `mutant ${i}: ${String((e as Error).stack)}`);
      refused++;
    }
  }
  assert.ok(refused > 0, `${refused} of ${iters} refused`);
  const bad = memoryVolume(part, 'bad-boot');
  await bad.write(0x40, Buffer.from([0x7f]));
  await rejectsWith(NtfsFs.open(bad), 'ERR_CORRUPT', 'bad-boot', 'record size');
});
