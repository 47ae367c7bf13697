#!/usr/bin/env node
/**
 * `npm start`: installs what is missing, builds, and runs the main job.
 *
 * 1. Debian packages the project needs (qemu-utils: the oracle the tests compare against
 *    and the peer the benchmark measures; g++/make/python3 for the small native addon):
 *    installed with apt-get when running as root, otherwise named in a clear message.
 * 2. npm dependencies, when node_modules is missing or older than package-lock.json.
 * 3. The TypeScript build.
 * 4. The main job: for now, a tour of the disk engine on a sample disk it makes.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { installPackages, missingPackages } from './packages.mjs';
import { existsSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
process.chdir(root);

function step(text) {
  process.stdout.write(`\n== ${text}\n`);
}

// build and run needs: what npm start cannot go on without; test-only tools are left to CI
const missing = installPackages(missingPackages(['build', 'run']), (s) => step(s.trim()));
if (missing.length) {
  console.error('Polyvisor needs these Debian packages, which are not installed:');
  for (const m of missing) console.error(`  ${m.pkg.padEnd(16)} ${m.why}`);
  console.error(`Install them with:  sudo apt-get install ${[...new Set(missing.map((m) => m.pkg))].join(' ')}`);
  if (missing.some((m) => m.use === 'build')) process.exit(1);
  console.error(`Continuing without them: the disk engine works, but VMs cannot be run or the sample built.\n`);
}

const stamp = (p) => (existsSync(p) ? statSync(p).mtimeMs : 0);
if (!existsSync('node_modules') || stamp('package-lock.json') > stamp('node_modules/.package-lock.json')) {
  step('installing npm dependencies');
  execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { stdio: 'inherit' });
} else if (!existsSync('build/Release/polyvisor_seek.node')) {
  step('building the native addon');
  spawnSync('npm', ['rebuild'], { stdio: 'inherit' });
}

step('building');
execFileSync('npm', ['run', '--silent', 'build'], { stdio: 'inherit' });

step('main job: the sample VM through every hypervisor format, booted, then the server');
const r = spawnSync(process.execPath, ['dist/src/demo.js', ...process.argv.slice(2)], { stdio: 'inherit' });
process.exit(r.status ?? 1);
