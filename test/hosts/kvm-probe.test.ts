/**
 * The KVM probe's answer is kept on disk (src/hosts/qemu/kvm.ts) and used again only while
 * what it depends on is unchanged.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { kvmUsable } from '../../src/hosts/qemu/argv.js';

const KVM = fileURLToPath(new URL('../../src/hosts/qemu/kvm.js', import.meta.url));

/** kvmWorks() in a new process (the answer is also kept per process) */
function probeIn(cache: string): boolean {
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', `const m = await import(${JSON.stringify(KVM)}); console.log(await m.kvmWorks());`], { env: { ...process.env, XDG_CACHE_HOME: cache }, encoding: 'utf8' });
  return JSON.parse(out.trim()) as boolean;
}

test('the KVM probe answer is remembered on disk under its key, and probed again when the key changes', () => {
  const cache = mkdtempSync(join(tmpdir(), 'pv-kvm-cache-'));
  const file = join(cache, 'polyvisor', 'kvm-probe.json');
  try {
    const first = probeIn(cache);
    if (!kvmUsable()) {
      // no /dev/kvm: nothing to probe, nothing remembered
      assert.equal(first, false);
      assert.equal(existsSync(file), false);
      return;
    }
    const saved = JSON.parse(readFileSync(file, 'utf8')) as { key: string; works: boolean };
    assert.equal(saved.works, first);
    assert.match(saved.key, /qemu-system-x86_64\|/);
    // the remembered answer is what the next process uses (flipped here to see it is read)
    writeFileSync(file, JSON.stringify({ key: saved.key, works: !first }));
    assert.equal(probeIn(cache), !first);
    // another key (another QEMU, kernel, boot or /dev/kvm): probed again, and the truth written back
    writeFileSync(file, JSON.stringify({ key: saved.key + 'x', works: !first }));
    assert.equal(probeIn(cache), first);
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), saved);
  } finally {
    rmSync(cache, { recursive: true, force: true });
  }
});
