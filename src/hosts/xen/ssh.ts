/**
 * Commands on a remote host through the system's OpenSSH client (ssh(1)), the way an
 * administrator reaches a Xen dom0.
 *
 * - Never interactive: BatchMode=yes (no password or passphrase prompt can hang a run).
 * - Host keys: StrictHostKeyChecking=accept-new against a known_hosts file of Polyvisor's own
 *   (the first key a host shows is recorded, a changed key is refused), never the user's.
 * - One TCP connection and one key exchange for the whole session: a master connection
 *   (ControlMaster, ssh_config(5)) that this process starts as its own child, so it is
 *   tracked and ended with the session, or when Node exits, and never left running.
 *   Each command then opens a channel on it, which matters when every key exchange costs
 *   seconds (a dom0 under software emulation).
 * - Remote commands are argv arrays, quoted for the remote shell by ./shell.ts.
 *
 * Failures are ERR_HOST, and their message quotes the host, the command and the remote
 * program's own stderr.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { PolyvisorError } from '../../errors.js';
import { shellCommand } from './shell.js';
import { formatXenUri, type XenHostAddress } from './uri.js';

export interface SshOptions {
  /** the private key to authenticate with (ssh -i); default: ssh's own choice (agent, ~/.ssh) */
  identityFile?: string;
  /** where host keys are recorded; created if missing */
  knownHostsFile: string;
  /** seconds for the TCP connection and key exchange; default 15 */
  connectTimeoutSec?: number;
  /** the ssh binary; default `ssh` from PATH */
  ssh?: string;
}

export interface RunOptions {
  /** bytes for the remote command's stdin */
  input?: Buffer | string | AsyncIterable<Buffer>;
  /** exit statuses that are not failures (default only 0) */
  okStatus?: number[];
  /** the local ssh process is ended after this long; default none */
  timeoutMs?: number;
  /** called with each piece of stdout instead of collecting it */
  onStdout?: (chunk: Buffer) => void | Promise<void>;
  /** the most stdout collected before the command is ended as misbehaving; default 16 MiB */
  maxStdout?: number;
}

export interface RunResult {
  status: number;
  stdout: Buffer;
  stderr: string;
}

/** what is kept of a remote stderr for messages (the end explains a failure) */
const STDERR_TAIL = 8 * 1024;
const MAX_STDOUT = 16 << 20;
const DISPLAY_MAX = 300;

// every ssh child of this Node process (masters and commands), ended when Node exits
const children = new Set<ChildProcess>();
const controlDirs = new Set<string>();
let exitHook = false;
function track(child: ChildProcess): void {
  if (!exitHook) {
    exitHook = true;
    process.on('exit', () => {
      for (const c of children) c.kill('SIGKILL');
      for (const d of controlDirs) rmSync(d, { recursive: true, force: true });
    });
  }
  children.add(child);
  child.once('exit', () => children.delete(child));
  child.once('error', () => children.delete(child));
}

/** A command as messages show it: the quoted argv, cut to a readable length. */
export function displayCommand(argv: readonly string[]): string {
  const s = shellCommand(argv).replace(/\n/g, '\\n');
  return s.length > DISPLAY_MAX ? `${s.slice(0, DISPLAY_MAX)}...` : s;
}

export class SshSession {
  readonly address: XenHostAddress;
  /** the host as messages name it: xen+ssh://root@10.0.0.5:22 */
  readonly uri: string;
  #opts: SshOptions;
  #controlDir?: string;
  #master?: ChildProcess;
  #masterReady?: Promise<void>;
  #closed = false;

  constructor(address: XenHostAddress, opts: SshOptions) {
    this.address = address;
    this.uri = formatXenUri(address);
    this.#opts = opts;
  }

  /** The ssh options every invocation shares (for scp-like callers and tests). */
  commonOptions(): string[] {
    const o = this.#opts;
    const args = [
      '-o', 'BatchMode=yes',
      '-o', 'StrictHostKeyChecking=accept-new',
      '-o', `UserKnownHostsFile=${o.knownHostsFile}`,
      '-o', 'GlobalKnownHostsFile=/dev/null',
      '-o', `ConnectTimeout=${o.connectTimeoutSec ?? 15}`,
      '-o', 'ServerAliveInterval=15',
      '-o', 'ServerAliveCountMax=4',
      // no "Warning: Permanently added ..." lines mixed into the remote program's stderr
      '-o', 'LogLevel=ERROR',
      '-p', String(this.address.port),
      '-l', this.address.user,
    ];
    if (o.identityFile) args.push('-i', o.identityFile, '-o', 'IdentitiesOnly=yes');
    if (this.#controlDir) args.push('-o', `ControlPath=${join(this.#controlDir, 'master')}`, '-o', 'ControlMaster=no');
    return args;
  }

  /** Runs a remote command; resolves with its status, stdout and stderr whatever the status. */
  async run(argv: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
    await this.#ensureMaster();
    const child = this.#spawn(['-T', '--', this.address.host, shellCommand(argv)], opts.input !== undefined);
    const out: Buffer[] = [];
    let stderr = '';
    let timedOut = false;
    let writer: Promise<void> | undefined;
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (s: string) => {
      stderr = (stderr + s).slice(-STDERR_TAIL);
    });
    const done = new Promise<number>((resolve, reject) => {
      child.once('error', (e) => reject(new PolyvisorError('ERR_HOST', `host ${this.uri}: cannot run ssh: ${e.message}`, { cause: e })));
      child.once('close', (code, signal) => resolve(code ?? (signal ? 255 : 0)));
    });
    const timer = opts.timeoutMs === undefined ? undefined : setTimeout(() => {
      timedOut = true;
      child.kill('SIGTERM');
    }, opts.timeoutMs);
    try {
      if (opts.input !== undefined) {
        const src = typeof opts.input === 'string' || Buffer.isBuffer(opts.input) ? Readable.from([Buffer.from(opts.input)]) : Readable.from(opts.input);
        // a remote end that stops reading early (it failed) is reported by its status below
        writer = pipeline(src, child.stdin!).catch((e: NodeJS.ErrnoException) => {
          if (e.code !== 'EPIPE' && e.code !== 'ERR_STREAM_PREMATURE_CLOSE') throw e;
        });
      }
      const max = opts.maxStdout ?? MAX_STDOUT;
      let collected = 0;
      const reading = (async () => {
        for await (const chunk of child.stdout! as AsyncIterable<Buffer>) {
          if (opts.onStdout) {
            await opts.onStdout(chunk);
            continue;
          }
          collected += chunk.length;
          // a host that floods us is refused, not buffered without end
          if (collected > max) throw new PolyvisorError('ERR_HOST', `host ${this.uri}: ${displayCommand(argv)} printed more than ${max} bytes`);
          out.push(chunk);
        }
      })();
      const [status] = await Promise.all([done, reading, writer]);
      if (timedOut) throw new PolyvisorError('ERR_HOST', `host ${this.uri}: ${displayCommand(argv)} did not finish within ${Math.round(opts.timeoutMs! / 1000)} s`);
      return { status, stdout: Buffer.concat(out), stderr };
    } catch (e) {
      child.kill('SIGKILL');
      throw e;
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  /**
   * Runs a remote command and returns its stdout as text; a status outside `okStatus` is
   * ERR_HOST quoting the host, the command and the command's stderr.
   */
  async exec(argv: readonly string[], opts: RunOptions = {}): Promise<string> {
    const r = await this.run(argv, opts);
    if (!(opts.okStatus ?? [0]).includes(r.status)) throw this.failure(argv, r);
    return r.stdout.toString('utf8');
  }

  /** The ERR_HOST for a failed command. */
  failure(argv: readonly string[], r: RunResult, what?: string): PolyvisorError {
    const words = r.stderr.trim() || r.stdout.toString('utf8').trim().slice(-STDERR_TAIL) || 'no message';
    // 255 is ssh's own status: the connection or the authentication failed
    const how = r.status === 255 ? 'ssh failed (status 255)' : `failed (status ${r.status})`;
    return new PolyvisorError('ERR_HOST', `host ${this.uri}: ${what ?? displayCommand(argv)} ${how}: ${words}`);
  }

  /**
   * Starts a remote command on a pseudo-terminal (ssh -tt), for programs that need one
   * (xl console). The escape character is off, so every byte reaches the remote program.
   */
  async spawnTty(argv: readonly string[]): Promise<ChildProcess> {
    await this.#ensureMaster();
    return this.#spawn(['-tt', '-e', 'none', '--', this.address.host, shellCommand(argv)], true);
  }

  /** Ends the master connection and removes its socket folder. */
  async close(): Promise<void> {
    this.#closed = true;
    const m = this.#master;
    this.#master = undefined;
    if (m && m.exitCode === null && m.signalCode === null) {
      const gone = new Promise<void>((r) => m.once('exit', () => r()));
      m.kill('SIGTERM');
      const t = setTimeout(() => m.kill('SIGKILL'), 3000);
      await gone;
      clearTimeout(t);
    }
    if (this.#controlDir) {
      controlDirs.delete(this.#controlDir);
      await rm(this.#controlDir, { recursive: true, force: true });
      this.#controlDir = undefined;
    }
    this.#masterReady = undefined;
  }

  #spawn(args: string[], withStdin: boolean): ChildProcess {
    const child = spawn(this.#opts.ssh ?? 'ssh', [...this.commonOptions(), ...args], { stdio: [withStdin ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    track(child);
    return child;
  }

  /**
   * Starts the master connection once. If it cannot connect, commands connect on their own
   * and report ssh's own error, so a failure here is not reported twice.
   */
  #ensureMaster(): Promise<void> {
    if (this.#closed) return Promise.reject(new PolyvisorError('ERR_HOST', `host ${this.uri}: the session is closed`));
    this.#masterReady ??= (async () => {
      await mkdir(dirname(this.#opts.knownHostsFile), { recursive: true, mode: 0o700 });
      // a Unix socket path must fit in 108 bytes: a short folder of its own under the temp dir
      const dir = await mkdtemp(join(tmpdir(), 'pv-ssh-'));
      controlDirs.add(dir);
      const socket = join(dir, 'master');
      const opts = this.commonOptions();
      const master = spawn(this.#opts.ssh ?? 'ssh', [...opts, '-o', `ControlPath=${socket}`, '-o', 'ControlMaster=yes', '-o', 'ControlPersist=no', '-N', '--', this.address.host], {
        stdio: ['ignore', 'ignore', 'ignore'],
      });
      track(master);
      this.#master = master;
      let ended = false;
      master.once('exit', () => {
        ended = true;
        if (this.#master !== master) return;
        // the connection dropped (the host rebooted): the next command starts a new master
        this.#master = undefined;
        this.#masterReady = undefined;
        this.#controlDir = undefined;
        controlDirs.delete(dir);
        void rm(dir, { recursive: true, force: true });
      });
      master.once('error', () => (ended = true));
      const deadline = Date.now() + ((this.#opts.connectTimeoutSec ?? 15) + 5) * 1000;
      while (!ended && Date.now() < deadline) {
        if (await stat(socket).then(() => true, () => false)) {
          this.#controlDir = dir;
          return;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      // no master: this command connects on its own, and the next one tries a master again
      if (!ended) master.kill('SIGKILL');
      controlDirs.delete(dir);
      await rm(dir, { recursive: true, force: true });
      this.#masterReady = undefined;
    })();
    return this.#masterReady;
  }
}
