/**
 * Node built-in modules loaded on first use instead of at start. Each takes a few milliseconds
 * to load, the modules that use them are on every command's path (the disk formats, the VM
 * packages, the QEMU driver, the store), and most commands never call them: `polyvisor run`
 * should not pay for compression, worker threads or the crypto library before its guest
 * starts (BENCHMARKS.md). process.getBuiltinModule (Node 20.16) loads them without loading
 * node:module, which would itself cost as much.
 */
export const zlib = (): typeof import('node:zlib') => process.getBuiltinModule('node:zlib');
export const workerThreads = (): typeof import('node:worker_threads') => process.getBuiltinModule('node:worker_threads');
export const crypto = (): typeof import('node:crypto') => process.getBuiltinModule('node:crypto');
/** for createRequire: loading an addon (../disk/sparse.ts) or better-sqlite3 (../store/sqlite.ts) */
export const nodeModule = (): typeof import('node:module') => process.getBuiltinModule('node:module');
