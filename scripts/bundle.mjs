#!/usr/bin/env node
/**
 * Part of `npm run build`: writes the CLI as one CommonJS file, dist/src/cli/polyvisor.cjs,
 * from the modules tsc emitted, for src/cli/main.cts to run with V8's code cache (see there
 * for why). The bundle sits beside main.cjs so that the few paths modules compute from
 * import.meta.url (package.json, the native addon) resolve the same from it.
 *
 * better-sqlite3 stays outside: it loads a native addon from its own package folder.
 */
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outfile = join(root, 'dist/src/cli/polyvisor.cjs');

await build({
  entryPoints: [join(root, 'dist/src/cli/program.js')],
  outfile,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  // the server's libraries load only for `polyvisor serve`: kept out, they would lengthen every
  // other command's start (the bundle is read and checked whole each time)
  external: ['better-sqlite3', 'fastify', '@fastify/*', 'ajv', 'ajv-formats', 'ws'],
  // modules are bundled from dist/src/<dir>/, one level below the bundle's own folder's
  // parent, so the bundle's URL stands in for each module's import.meta.url
  define: { 'import.meta.url': '__polyvisor_bundle_url' },
  // The file is one function expression, CommonJS's own module wrapper, which
  // src/cli/main.cts compiles as it is read and calls: wrapping it there would copy its 1 MB.
  banner: { js: '(function (exports, require, module, __filename, __dirname) {\"use strict\";const __polyvisor_bundle_url = require("node:url").pathToFileURL(__filename).href;' },
  footer: { js: '\n})' },
  // ASCII only (esbuild's default, stated): src/cli/main.cts reads the bundle as latin1
  charset: 'ascii',
  minify: true,
  // Names are not kept: keeping them costs a call per function and class as each module
  // loads (about 5 ms of `polyvisor run`'s start). Nothing in Polyvisor reads a function's or
  // a class's name (errors carry their own `name` and `code`); stack traces map back to the
  // sources through the source map (node --enable-source-maps).
  keepNames: false,
  sourcemap: true,
  logLevel: 'warning',
});
