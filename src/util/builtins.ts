/**
 * Node built-in modules loaded on first use instead of at start. Each takes a few milliseconds
 * to load, the modules that use them are on every command's path (the disk formats, the QEMU
 * driver, the store), and most commands never call them: `polyvisor run` should not pay for
 * compression or worker threads before its guest starts (BENCHMARKS.md).
 */
import { createRequire } from 'node:module';

const load = createRequire(import.meta.url);

export const zlib = (): typeof import('node:zlib') => load('node:zlib');
export const workerThreads = (): typeof import('node:worker_threads') => load('node:worker_threads');
