/**
 * The `polyvisor` executable (src/cli/main.ts) runs the bundled CLI with V8's code cache, and
 * the plain modules when the bundle is missing or older than the TypeScript build.
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const BUNDLE = fileURLToPath(new URL('../../src/cli/polyvisor.cjs', import.meta.url));

function launch(cache: string, extra: Record<string, string> = {}): { status: number | null; stdout: string; how: string } {
  const r = spawnSync(process.execPath, [CLI, '--version'], { env: { ...process.env, XDG_CACHE_HOME: cache, POLYVISOR_TRACE: '1', ...extra }, encoding: 'utf8' });
  const how = /trace \+[\d.]+ ms (bundle compiled \([^)]*\)|starting from the modules)/.exec(r.stderr)?.[1] ?? `no trace line in: ${r.stderr}`;
  return { status: r.status, stdout: r.stdout.trim(), how };
}

test('npm run build writes the bundle, and the executable runs it with a code cache kept between runs', () => {
  assert.ok(existsSync(BUNDLE), `${BUNDLE}: npm run build (scripts/bundle.mjs) writes it`);
  const cache = mkdtempSync(join(tmpdir(), 'pv-launch-'));
  try {
    const first = launch(cache);
    assert.equal(first.status, 0);
    assert.match(first.stdout, /^\d+\.\d+\.\d+$/);
    assert.equal(first.how, 'bundle compiled (no code cache)');
    const files = readdirSync(join(cache, 'polyvisor'));
    assert.equal(files.length, 1, `one cache file: ${files.join(', ')}`);
    assert.ok(statSync(join(cache, 'polyvisor', files[0]!)).size > 1000);
    const second = launch(cache);
    assert.equal(second.how, 'bundle compiled (code cache used)');
    assert.equal(second.stdout, first.stdout);
    const plain = launch(cache, { POLYVISOR_NO_BUNDLE: '1' });
    assert.equal(plain.how, 'starting from the modules');
    assert.equal(plain.stdout, first.stdout);
  } finally {
    rmSync(cache, { recursive: true, force: true });
  }
});

test('a bundle older than the last TypeScript build is not run', () => {
  const cache = mkdtempSync(join(tmpdir(), 'pv-launch-'));
  const st = statSync(BUNDLE);
  try {
    utimesSync(BUNDLE, new Date(0), new Date(0));
    const r = launch(cache);
    assert.equal(r.status, 0);
    assert.equal(r.how, 'starting from the modules');
  } finally {
    utimesSync(BUNDLE, st.atime, st.mtime);
    rmSync(cache, { recursive: true, force: true });
  }
});
