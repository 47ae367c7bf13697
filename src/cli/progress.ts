/**
 * Progress for long work (`-p`): a bar on a terminal (cli-progress), or a line per 10% when
 * standard error is a pipe or a log, so that CI logs stay readable.
 *
 * cli-progress (and Node's readline, which it loads) is loaded only when a bar is drawn: this
 * module is on every command's path, `polyvisor run`'s included (BENCHMARKS.md).
 */
import { formatSize } from '../util/size.js';

export interface Progress {
  update(done: number, total: number): void;
  stop(): void;
}

const NONE: Progress = { update() {}, stop() {} };

export async function createProgress(enabled: boolean, label: string): Promise<Progress> {
  if (!enabled) return NONE;
  if (process.stderr.isTTY) {
    const { default: cliProgress } = await import('cli-progress');
    const bar = new cliProgress.SingleBar(
      {
        format: `${label} [{bar}] {percentage}% | {doneSize} / {totalSize} | ETA {eta_formatted}`,
        stream: process.stderr,
        hideCursor: true,
        clearOnComplete: false,
        etaBuffer: 50,
      },
      cliProgress.Presets.shades_classic,
    );
    let started = false;
    return {
      update(done, total) {
        if (!started) {
          bar.start(total, 0, { doneSize: formatSize(0), totalSize: formatSize(total) });
          started = true;
        }
        bar.update(done, { doneSize: formatSize(done), totalSize: formatSize(total) });
      },
      stop() {
        if (started) bar.stop();
      },
    };
  }
  let lastTenth = -1;
  return {
    update(done, total) {
      const tenth = total === 0 ? 10 : Math.floor((done / total) * 10);
      if (tenth !== lastTenth) {
        lastTenth = tenth;
        process.stderr.write(`${label}: ${tenth * 10}% (${formatSize(done)} of ${formatSize(total)})\n`);
      }
    },
    stop() {},
  };
}
