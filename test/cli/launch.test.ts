/**
 * The `polyvisor` executable: bin/polyvisor holds NODE_EXTRA_CA_CERTS back from Node unless a
 * PostgreSQL server is named, and gives it back to the processes Polyvisor starts; it starts
 * src/cli/main.cts, which runs the bundled CLI with V8's code cache, and the plain modules when
 * the bundle is missing or older than the TypeScript build.
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('../../../bin/polyvisor', import.meta.url));
const BUNDLE = fileURLToPath(new URL('../../src/cli/polyvisor.cjs', import.meta.url));

function launch(cache: string, extra: Record<string, string> = {}): { status: number | null; stdout: string; how: string } {
  const r = spawnSync(CLI, ['--version'], { env: { ...process.env, XDG_CACHE_HOME: cache, POLYVISOR_TRACE: '1', ...extra }, encoding: 'utf8' });
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

// Node warns at start when the file NODE_EXTRA_CA_CERTS names cannot be read: whether the
// warning comes says whether Node was given the variable
const CA_WARNING = /Ignoring extra certs from/;

test('NODE_EXTRA_CA_CERTS is held back from Node unless a PostgreSQL server is named', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pv-launch-'));
  try {
    const env: NodeJS.ProcessEnv = { ...process.env, NODE_EXTRA_CA_CERTS: join(dir, 'no-such-ca.pem'), POLYVISOR_DATA: join(dir, 'data') };
    delete env.POLYVISOR_DATABASE;
    const held = spawnSync(CLI, ['--version'], { env, encoding: 'utf8' });
    assert.equal(held.status, 0, held.stderr);
    assert.doesNotMatch(held.stderr, CA_WARNING);
    // named on the command line, or in the environment: Node gets it (and here warns, as it should)
    const url = 'postgresql://pv@127.0.0.1:1/nope';
    for (const [args, extra] of [[['--database', url, '--version'], {}], [[`--database=${url}`, '--version'], {}], [['--version'], { POLYVISOR_DATABASE: url }]] as const) {
      const passed = spawnSync(CLI, [...args], { env: { ...env, ...extra }, encoding: 'utf8' });
      assert.equal(passed.status, 0, passed.stderr);
      assert.match(passed.stderr, CA_WARNING, `${args.join(' ')} ${JSON.stringify(extra)}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the processes Polyvisor starts get NODE_EXTRA_CA_CERTS back', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pv-launch-'));
  try {
    // a qemu-system-x86_64 first on PATH that writes down the variable and fails
    const bin = join(dir, 'bin');
    const seen = join(dir, 'seen');
    spawnSync('mkdir', [bin]);
    writeFileSync(join(bin, 'qemu-system-x86_64'), `#!/bin/sh\nprintf '%s' "\${NODE_EXTRA_CA_CERTS-unset}" > '${seen}'\nexit 1\n`);
    chmodSync(join(bin, 'qemu-system-x86_64'), 0o755);
    writeFileSync(join(dir, 'disk.raw'), Buffer.alloc(1 << 20));
    const ca = join(dir, 'ca.pem');
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${bin}:${process.env.PATH}`, NODE_EXTRA_CA_CERTS: ca, POLYVISOR_DATA: join(dir, 'data') };
    delete env.POLYVISOR_DATABASE;
    const r = spawnSync(CLI, ['run', join(dir, 'disk.raw'), '--accel', 'tcg'], { env, encoding: 'utf8', timeout: 60_000 });
    assert.notEqual(r.status, 0, 'the fake QEMU fails the run');
    assert.doesNotMatch(r.stderr, CA_WARNING);
    assert.equal(readFileSync(seen, 'utf8'), ca);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
