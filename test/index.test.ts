/** The package's public entry point resolves by its own name and exposes the library. */
import { test } from 'node:test';
import assert from 'node:assert/strict';

test("import 'polyvisor' gives the typed library the CLI uses", async () => {
  const pv = await import('polyvisor');
  for (const name of ['openImage', 'convert', 'compareImages', 'openVmSource', 'convertVm', 'QemuDriver', 'serveNbd', 'PolyvisorError']) {
    assert.equal(typeof (pv as Record<string, unknown>)[name], 'function', name);
  }
  assert.deepEqual(
    pv.FORMATS.map((f) => f.name),
    ['raw', 'qcow2', 'vhd', 'vhdx', 'vmdk', 'vdi'],
  );
});
