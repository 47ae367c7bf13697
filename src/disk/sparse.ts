/**
 * Finding holes in host files with lseek(SEEK_DATA/SEEK_HOLE), through the small native
 * addon in native/seek.c (built by `npm install`). Where the addon is missing or the file
 * system cannot answer, every byte counts as data: callers still detect zeroes by reading,
 * so results stay correct, only slower.
 */
import { nodeModule } from '../util/builtins.js';

type SeekFn = (fd: number, offset: number, whence: 0 | 1) => number;
let seekFn: SeekFn | null | undefined;

function loadSeek(): SeekFn | null {
  if (seekFn !== undefined) return seekFn;
  try {
    const require = nodeModule().createRequire(import.meta.url);
    // dist/src/disk/sparse.js -> ../../../build/Release
    seekFn = (require('../../../build/Release/polyvisor_seek.node') as { seek: SeekFn }).seek;
  } catch {
    seekFn = null;
  }
  return seekFn;
}

export function sparseQueriesAvailable(): boolean {
  return loadSeek() !== null;
}

/**
 * The data runs of [offset, end) in the file behind `fd`, as [start, end) pairs, or null
 * when the system cannot tell (then treat the whole range as data).
 */
export function dataRuns(fd: number, offset: number, end: number): Array<[number, number]> | null {
  const seek = loadSeek();
  if (!seek) return null;
  const runs: Array<[number, number]> = [];
  let pos = offset;
  try {
    while (pos < end) {
      const data = seek(fd, pos, 0);
      if (data < 0 || data >= end) break;
      let hole = seek(fd, data, 1);
      if (hole < 0 || hole > end) hole = end;
      runs.push([data, hole]);
      pos = hole;
    }
  } catch {
    return null;
  }
  return runs;
}
