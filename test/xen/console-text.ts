/**
 * Reading a guest's console on the nested Xen host (./host.ts) as text: what the tests wait
 * for is a line the guest prints, so the stream is collected (carriage returns dropped: xl's
 * console is a terminal) until a pattern matches, the console ends, or time runs out.
 */
import type { ProcessConsole } from '../../src/hosts/xen/console.js';

/** Reads `con` until `re` matches the text so far; rejects with the text's tail when it ends first or times out. */
export function readUntil(con: ProcessConsole, re: RegExp, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const done = (err?: Error) => {
      clearTimeout(timer);
      con.off('data', onData);
      con.off('end', onEnd);
      if (err) reject(err);
      else resolve(text);
    };
    const onData = (b: Buffer) => {
      text += b.toString('utf8').replace(/\r/g, '');
      if (re.test(text)) done();
    };
    const onEnd = () => (re.test(text) ? done() : done(new Error(`the console ended before ${re}:\n${text.slice(-4000)}`)));
    const timer = setTimeout(() => done(new Error(`no ${re} on the console within ${timeoutMs / 1000} s:\n${text.slice(-4000)}`)), timeoutMs);
    con.on('data', onData);
    con.on('end', onEnd);
  });
}
