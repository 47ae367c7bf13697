/**
 * What bin/polyvisor starts: the CLI (./program.ts), as fast as Node allows.
 *
 * Start-up time is part of the product: `polyvisor run` should add little to a VM's boot
 * (BENCHMARKS.md). Resolving, reading and compiling about a hundred ES modules one by one
 * costs more than the rest of run's own work, so `npm run build` also writes the CLI as one
 * CommonJS bundle (scripts/bundle.mjs → ./polyvisor.cjs), and this file runs it through
 * node:vm with V8's code cache: the code compiled by the first run is kept in the user's cache
 * folder and reused, so later runs neither parse nor compile it (the technique of
 * v8-compile-cache; Node 20 has no module.enableCompileCache, which came in Node 22.1).
 *
 * The plain modules run instead when there is no bundle, when the bundle is older than the
 * last TypeScript build (dist/.tsbuildinfo: a stale bundle must never run), or with
 * POLYVISOR_NO_BUNDLE=1.
 *
 * CommonJS (.cts), unlike the rest: Node starts a CommonJS entry without setting up its ES
 * module loader, a few milliseconds of every command's start.
 */
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, writeSync, type Stats } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { constants, Script } from 'node:vm';

const bundle = join(__dirname, 'polyvisor.cjs');
const buildInfo = join(__dirname, '..', '..', '.tsbuildinfo');

function stat(path: string): Stats | undefined {
  try {
    return statSync(path);
  } catch {
    return undefined;
  }
}

function cacheFolder(): string | undefined {
  // as ../store/data-dir.ts cacheDir(), which this file does not load
  const xdg = process.env.XDG_CACHE_HOME;
  const base = xdg && xdg.startsWith('/') ? xdg : homedir() ? join(homedir(), '.cache') : '';
  return base ? join(base, 'polyvisor') : undefined;
}

/** Writes V8's code for the bundle, as compiled by now, atomically; a cache that cannot be written is no error. */
function saveCodeCache(script: Script, folder: string, file: string): void {
  try {
    const data = script.createCachedData();
    mkdirSync(folder, { recursive: true });
    // caches of earlier builds or Node versions are of no use any more
    for (const f of readdirSync(folder)) if (f.startsWith('cli-') && f !== file) rmSync(join(folder, f), { force: true });
    const tmp = join(folder, `.${file}.${process.pid}`);
    writeFileSync(tmp, data);
    renameSync(tmp, join(folder, file));
  } catch {
    // a read-only home, a full disk: the next run compiles again
  }
}

async function runBundle(info: Stats): Promise<void> {
  trace('launcher running');
  // latin1: the bundle is ASCII (esbuild escapes everything else), and a one-byte string needs
  // no UTF-8 decoding, which takes a few milliseconds for its 1.5 MB
  const source = readFileSync(bundle, 'latin1');
  const folder = cacheFolder();
  // V8 rejects data made from another source or by another V8, but the name keeps one file per build
  const file = `cli-${process.version}-${process.arch}-${info.size}-${Math.floor(info.mtimeMs)}.v8`;
  let cachedData: Buffer | undefined;
  if (folder) {
    try {
      cachedData = readFileSync(join(folder, file));
    } catch {
      cachedData = undefined;
    }
  }
  trace('bundle and code cache read');
  // the bundle is written as one function expression, CommonJS's own wrapper
  // (scripts/bundle.mjs): compiled as read, with no copy of it made to wrap it
  const script = new Script(source, {
    filename: bundle,
    cachedData,
    // an import() left in the bundle (a Node built-in) loads as it would in a module
    importModuleDynamically: constants.USE_MAIN_CONTEXT_DEFAULT_LOADER,
  });
  const reuse = cachedData !== undefined && !script.cachedDataRejected;
  // saved at exit, so that the functions this command compiled lazily are in it too, or
  // earlier when the command asks (./code-cache.ts: `run` does once its QEMU is starting)
  if (folder && !reuse) {
    let saved = false;
    const save = () => {
      if (saved) return;
      saved = true;
      saveCodeCache(script, folder, file);
    };
    (globalThis as Record<symbol, unknown>)[Symbol.for('polyvisor.saveCodeCache')] = save;
    process.once('exit', save);
  }
  trace(`bundle compiled (${reuse ? 'code cache used' : cachedData ? 'code cache rejected' : 'no code cache'})`);
  const module = { exports: {} as { main(argv: string[]): Promise<void> } };
  // this file's own require: it resolves from the bundle's folder, where this file is, and
  // node:module's createRequire would load that module and the ES loader with it
  script.runInThisContext()(module.exports, require, module, bundle, dirname(bundle));
  await module.exports.main(process.argv);
}

/** as ../util/trace.ts, which this file does not load: it must stay one small module */
function trace(step: string): void {
  if (process.env.POLYVISOR_TRACE !== '1') return;
  try {
    writeSync(2, `polyvisor: trace +${performance.now().toFixed(1)} ms ${step}\n`);
  } catch {
    // a full or closed pipe
  }
}

async function start(): Promise<void> {
  // process.getBuiltinModule (Node 20.16) loads built-ins on first use (../util/builtins.ts)
  if (typeof (process as { getBuiltinModule?: unknown }).getBuiltinModule !== 'function') {
    writeSync(2, `polyvisor: needs Node.js 20.16 or later (this is ${process.version})\n`);
    process.exitCode = 1;
    return;
  }
  const info = process.env.POLYVISOR_NO_BUNDLE === '1' ? undefined : stat(bundle);
  const built = stat(buildInfo);
  if (info && (!built || info.mtimeMs >= built.mtimeMs)) await runBundle(info);
  else {
    trace('starting from the modules (no bundle, or one older than the build)');
    await (await import('./program.js')).main(process.argv);
  }
}

void start();
