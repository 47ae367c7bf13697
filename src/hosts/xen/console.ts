/**
 * A guest console as a byte stream both ways, over a child process (an `ssh -tt ... xl
 * console` session): what the process prints is read, what is written goes to its stdin.
 * Destroying the stream ends the process, so a console never outlives its reader.
 */
import type { ChildProcess } from 'node:child_process';
import { Duplex } from 'node:stream';

export class ProcessConsole extends Duplex {
  readonly child: ChildProcess;
  /** the process's exit status (null when a signal ended it), once it has ended */
  readonly exited: Promise<number | null>;

  constructor(child: ChildProcess) {
    super();
    this.child = child;
    this.exited = new Promise((resolve) => {
      child.once('close', (code) => resolve(code));
      child.once('error', () => resolve(null));
    });
    const out = child.stdout!;
    out.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) out.pause();
    });
    out.once('end', () => this.push(null));
    // a console whose process went away mid-write is not an error for the reader
    child.stdin?.on('error', () => undefined);
  }

  override _read(): void {
    this.child.stdout!.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    const stdin = this.child.stdin;
    if (!stdin || stdin.destroyed) return cb();
    stdin.write(chunk, () => cb());
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.child.stdin?.end();
    cb();
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGTERM');
    cb(err);
  }
}
