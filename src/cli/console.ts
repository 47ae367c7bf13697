/**
 * Attaching the terminal to a VM's serial console. On a terminal the keys go to the guest
 * as typed (raw mode: Ctrl-C reaches the guest, not Polyvisor) except the detach key,
 * Ctrl-] (0x1d), the same key telnet and `virsh console` use. Without a terminal, the
 * console's output goes to standard output and piped input is sent to the guest.
 */
import type { Duplex } from 'node:stream';

export const DETACH_KEY = 0x1d;
export const DETACH_KEY_NAME = 'Ctrl-]';

/** 'detached': the user pressed the detach key; 'ended': the console closed (the VM stopped). */
export type ConsoleEnd = 'detached' | 'ended';

export function attachConsole(stream: Duplex, opts: { detachable?: boolean } = {}): Promise<ConsoleEnd> {
  const stdin = process.stdin;
  const tty = stdin.isTTY === true;
  return new Promise<ConsoleEnd>((resolve) => {
    let done = false;
    const finish = (how: ConsoleEnd) => {
      if (done) return;
      done = true;
      stream.off('data', onOutput);
      stdin.off('data', onInput);
      if (tty) stdin.setRawMode(false);
      // a paused pipe still holds the event loop open: the command could not end
      stdin.pause();
      stdin.unref?.();
      if (how === 'detached') stream.destroy();
      resolve(how);
    };
    const onOutput = (chunk: Buffer) => {
      process.stdout.write(chunk);
    };
    const onInput = (chunk: Buffer) => {
      const at = chunk.indexOf(DETACH_KEY);
      if (at >= 0 && opts.detachable !== false) {
        if (at > 0) stream.write(chunk.subarray(0, at));
        return finish('detached');
      }
      stream.write(chunk);
    };
    stream.on('data', onOutput);
    stream.once('close', () => finish('ended'));
    stream.once('end', () => finish('ended'));
    stream.on('error', () => finish('ended'));
    if (tty) stdin.setRawMode(true);
    stdin.on('data', onInput);
    stdin.resume();
  });
}
