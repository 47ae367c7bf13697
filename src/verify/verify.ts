/**
 * Boot verification: boots a VM source headless on the local QEMU engine, its disks attached
 * through overlays (../hosts/attach.ts, the source is never written), and watches the serial
 * console and QMP events until the guest shows the expected text or fails.
 *
 * Verdicts, first one wins:
 * - expected-text: the console shows `expect` (default: a login prompt)
 * - kernel-panic: the console shows "Kernel panic"
 * - guest-panicked: QEMU reports GUEST_PANICKED (a pvpanic device, when the machine has one)
 * - reboot-loop: more than `maxResets` reboots (RESET events), or more boot banners on the console
 * - powered-off: QEMU ended before the text appeared
 * - timeout: nothing of the above within `timeoutMs`
 * - qemu-failed: QEMU did not start (bad disk, bad spec, missing binary)
 *
 * Whatever happens, the console log and (when QEMU still runs) a PNG screenshot are kept in
 * `outDir`, QEMU is killed and every temporary file removed.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { copyFile, mkdir, mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PolyvisorError } from '../errors.js';
import { attachDisks, type Attached } from '../hosts/attach.js';
import { QemuDriver } from '../hosts/qemu/driver.js';
import type { VmSource } from '../vm/codec.js';
import { withHostBootFiles } from '../vm/source.js';
import type { VmSpec } from '../vm/spec.js';

export type VerifyReason = 'expected-text' | 'kernel-panic' | 'guest-panicked' | 'reboot-loop' | 'timeout' | 'powered-off' | 'qemu-failed';

export interface VerifyOptions {
  /** text (substring) or pattern the console must show; default a login prompt */
  expect?: string | RegExp;
  /** default 120 s */
  timeoutMs?: number;
  /** where console.log and screenshot.png are written (created if missing) */
  outDir: string;
  signal?: AbortSignal;
  /** reboots (RESET events, or boot banners beyond the first) tolerated before a reboot loop is declared; default 3 */
  maxResets?: number;
  /** force an accelerator (tests force tcg); default kvm when usable */
  accel?: 'kvm' | 'tcg';
  /** where the QEMU state folder and the disk overlays go; default the OS temp dir */
  tmpRoot?: string;
  /** follow a kernel or ramdisk the descriptor names outside its own folder */
  allowOutsidePaths?: boolean;
  /** called with each piece of console text as it arrives */
  onConsole?: (text: string) => void;
}

export interface VerifyResult {
  ok: boolean;
  reason: VerifyReason;
  /** from QEMU's start to the verdict */
  seconds: number;
  consoleLog: string;
  screenshot?: string;
  /** the text that matched `expect` (or the panic line) */
  matched?: string;
  /** what went wrong, for qemu-failed and similar */
  detail?: string;
  /** how each disk reached QEMU */
  disks?: Array<{ index: number; label: string; via: 'direct' | 'nbd' }>;
}

export const DEFAULT_EXPECT = /\blogin:\s*$/m;
const PANIC = /Kernel panic[^\n]*/;
/** while the console streams, a panic counts once its line is complete, so the reason is kept whole */
const PANIC_LINE = /Kernel panic[^\n]*\n/;
/** what a (re)boot prints on the serial console: the BIOS banner when it writes there, the kernel's */
const BOOT_BANNER = /SeaBIOS \(version|Linux version \d/g;
/** the console text kept for matching; the log file has all of it */
const TAIL_BYTES = 64 * 1024;
const CARRY = 256;
const RESET_DEBOUNCE_MS = 2000;

function vmName(spec: VmSpec): string {
  const n = spec.name.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 48);
  return n || 'verify';
}

export async function verifyVm(source: VmSource, opts: VerifyOptions): Promise<VerifyResult> {
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const maxResets = opts.maxResets ?? 3;
  const expect = opts.expect ?? DEFAULT_EXPECT;
  const matchExpected = (text: string): string | undefined => {
    if (typeof expect === 'string') return text.includes(expect) ? expect : undefined;
    const re = new RegExp(expect.source, expect.flags.replace(/[gy]/g, ''));
    return re.exec(text)?.[0];
  };
  opts.signal?.throwIfAborted();
  await mkdir(opts.outDir, { recursive: true });
  const consoleLog = join(opts.outDir, 'console.log');
  const screenshotPath = join(opts.outDir, 'screenshot.png');
  const spec = { ...(await withHostBootFiles(source, { allowOutsidePaths: opts.allowOutsidePaths })), name: vmName(source.spec) };
  const name = spec.name;

  // a private state folder under tmpRoot: QEMU's command line then names only paths below it
  const stateDir = await mkdtemp(join(opts.tmpRoot ?? tmpdir(), 'pv-verify-'));
  const driver = new QemuDriver({ accel: opts.accel, stateDir, pvpanic: true });
  let attached: Attached | undefined;
  let log: WriteStream | undefined;
  let logged = 0;
  let logEnded = false;
  const started = Date.now();
  const seconds = () => Math.round((Date.now() - started) / 100) / 10;

  let settle!: (r: { reason: VerifyReason; matched?: string; detail?: string }) => void;
  const verdict = new Promise<{ reason: VerifyReason; matched?: string; detail?: string }>((r) => (settle = r));
  let decided = false;
  const decide = (reason: VerifyReason, matched?: string, detail?: string) => {
    if (decided) return;
    decided = true;
    settle({ reason, matched, detail });
  };

  let tail = '';
  let carry = '';
  let banners = 0;
  const onText = (raw: string) => {
    const text = raw.replace(/\r/g, '');
    opts.onConsole?.(text);
    tail = (tail + text).slice(-TAIL_BYTES);
    // boot banners, counted once each even when split across chunks (see CARRY)
    const scan = carry + text;
    for (const m of scan.matchAll(BOOT_BANNER)) if (m.index! + m[0].length > carry.length) banners++;
    carry = scan.slice(-CARRY);
    const hit = matchExpected(tail);
    if (hit !== undefined) return decide('expected-text', hit);
    const panic = PANIC_LINE.exec(tail);
    if (panic) return decide('kernel-panic', panic[0].trimEnd());
    if (banners > maxResets + 1) decide('reboot-loop', undefined, `${banners} boots on the console`);
  };

  let timer: NodeJS.Timeout | undefined;
  const onAbort = () => decide('timeout', undefined, 'cancelled');
  let screenshot: string | undefined;
  try {
    try {
      attached = await attachDisks(source, { tmpRoot: opts.tmpRoot });
      await driver.define({ spec, disks: attached.attachments });
      log = createWriteStream(consoleLog);
      await driver.start(name);
    } catch (e) {
      return {
        ok: false,
        reason: 'qemu-failed',
        seconds: seconds(),
        consoleLog: await finishLog(),
        detail: (e as Error).message,
        disks: attached?.disks.map(({ index, label, via }) => ({ index, label, via })),
      };
    }
    const qmp = driver.qmp(name);
    let resets = 0;
    let lastReset = 0;
    qmp.on('GUEST_PANICKED', () => decide('guest-panicked'));
    qmp.on('RESET', () => {
      // one guest reboot shows as two RESET events some 40 ms apart (the guest's, then
      // SeaBIOS resetting the machine again on its warm-boot path): count reboots, not events
      const now = Date.now();
      if (now - lastReset > RESET_DEBOUNCE_MS) resets++;
      lastReset = now;
      if (resets > maxResets) decide('reboot-loop', undefined, `${resets} reboots`);
    });
    qmp.on('SHUTDOWN', (data?: { reason?: string }) => {
      // the last console bytes may still be in flight: give them a moment before deciding
      setTimeout(() => decide('powered-off', undefined, data?.reason), 300);
    });
    const con = await driver.console(name);
    con.setEncoding('utf8');
    con.on('data', (s: string) => {
      log!.write(s);
      logged += Buffer.byteLength(s);
      onText(s);
    });
    con.on('error', () => undefined);
    void driver.waitForExit(name, timeoutMs + 60_000).then(() => setTimeout(() => decide('powered-off'), 300));
    timer = setTimeout(() => decide('timeout'), timeoutMs);
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    let v = await verdict;
    // freeze the guest at once, so the screenshot shows the moment of the verdict
    await qmp.execute('stop', undefined, { timeoutMs: 2000 }).catch(() => undefined);
    if (v.reason === 'powered-off' || v.reason === 'timeout') {
      // the socket may have missed early output: judge QEMU's complete log once more
      const full = await readTail(driver.paths(name).serialLog);
      const hit = matchExpected(full);
      const panic = PANIC.exec(full);
      if (hit !== undefined) v = { reason: 'expected-text', matched: hit };
      else if (panic) v = { reason: 'kernel-panic', matched: panic[0] };
    }
    // keep the screen before the power is cut (only possible while QEMU runs)
    try {
      await driver.screenshot(name, screenshotPath);
      screenshot = screenshotPath;
    } catch {
      screenshot = undefined;
    }
    con.destroy();
    await driver.kill(name).catch(() => undefined);
    if (opts.signal?.aborted) throw new PolyvisorError('ERR_ABORTED', 'verify: cancelled');
    return {
      ok: v.reason === 'expected-text',
      reason: v.reason,
      seconds: seconds(),
      consoleLog: await finishLog(),
      screenshot,
      matched: v.matched,
      detail: v.detail,
      disks: attached.disks.map(({ index, label, via }) => ({ index, label, via })),
    };
  } finally {
    if (timer) clearTimeout(timer);
    opts.signal?.removeEventListener('abort', onAbort);
    await driver.dispose().catch(() => undefined);
    await attached?.close().catch(() => undefined);
    await rm(stateDir, { recursive: true, force: true });
    await endLog();
  }

  async function endLog(): Promise<void> {
    if (!log || logEnded) return;
    logEnded = true;
    await new Promise<void>((r) => log!.end(r));
  }

  /**
   * Closes the log. The console socket misses what the guest wrote before it connected;
   * QEMU's own chardev log has every byte, so it replaces ours when it holds more.
   */
  async function finishLog(): Promise<string> {
    await endLog();
    try {
      const qemuLog = driver.paths(name).serialLog;
      const st = await stat(qemuLog);
      if (st.size > logged) await copyFile(qemuLog, consoleLog);
    } catch {
      if (!log) await new Promise<void>((r) => createWriteStream(consoleLog, { flags: 'a' }).end(r));
    }
    return consoleLog;
  }
}

/** The last TAIL_BYTES of a file as text without carriage returns ('' when it cannot be read). */
async function readTail(path: string): Promise<string> {
  try {
    const fh = await open(path, 'r');
    try {
      const { size } = await fh.stat();
      const n = Math.min(size, TAIL_BYTES);
      const buf = Buffer.alloc(n);
      await fh.read(buf, 0, n, size - n);
      return buf.toString('utf8').replace(/\r/g, '');
    } finally {
      await fh.close();
    }
  } catch {
    return '';
  }
}
