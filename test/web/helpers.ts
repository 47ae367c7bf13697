/**
 * The web console's end-to-end tests run a real server (../../src/server/app.ts with the
 * console, ../../src/server/web.ts, and its WebSocket proxy, ../../src/server/console-proxy.ts)
 * on a random loopback port over a temporary data folder, and drive Debian's chromium with
 * playwright-core (the browser is never downloaded by npm here).
 *
 * Needs: the console built into dist/web (`npx vite build --config web/vite.config.ts`, part of
 * `npm run build`), and the Debian packages chromium and qemu-system-x86 (plus the sample
 * guest's, see ../guests/build.ts). A missing one fails the test, naming what to install.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { chromium, type Browser, type Page } from 'playwright-core';
import { buildServer } from '../../src/server/app.js';
import { makeBootDisk } from '../../src/sample/bootdisk.js';
import { openVmSource } from '../../src/vm/source.js';
import { convertVm } from '../../src/vm/convert.js';
import { buildTestGuest, cacheRoot } from '../guests/build.js';
import { tempDir } from '../helpers.js';
import { testDatabaseFor } from '../server/helpers.js';

export const CHROMIUM = process.env.POLYVISOR_CHROMIUM ?? '/usr/bin/chromium';
export const WEB_ROOT = fileURLToPath(new URL('../../web/', import.meta.url));

type T = { after(fn: () => Promise<void> | void): void };

export interface ConsoleServer {
  app: FastifyInstance;
  url: string;
  data: string;
  dir: string;
  adminToken: string;
}

/** A server with the console on 127.0.0.1:random over a fresh data folder; closed after the test. */
export async function startConsoleServer(t: T): Promise<ConsoleServer> {
  assert.ok(existsSync(join(WEB_ROOT, 'index.html')), `the web console is not built in ${WEB_ROOT}: run npx vite build --config web/vite.config.ts`);
  const dir = await tempDir(t);
  const data = join(dir, 'data');
  let adminToken = '';
  // POLYVISOR_TEST_DATABASE=pg: the store on PostgreSQL (./pg.test.ts)
  const database = testDatabaseFor();
  const app = await buildServer({ dataDir: data, database: database?.url, accel: 'tcg', onAdminToken: (tk) => (adminToken = tk) });
  t.after(async () => {
    // a test that failed half way leaves no QEMU behind (the VM store's are detached)
    for (const vm of app.polyvisor.estate.local.list()) if (vm.state !== 'stopped') await app.polyvisor.estate.kill(vm.name).catch(() => {});
    await app.close();
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  assert.ok(address && typeof address === 'object');
  return { app, url: `http://127.0.0.1:${address.port}`, data, dir, adminToken };
}

/** Debian's chromium, headless; closed after the test. */
export async function launchBrowser(t: T): Promise<Browser> {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: install the Debian package chromium (apt-get install -y chromium)`);
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
  t.after(() => browser.close());
  return browser;
}

/** Fails the test on any error the page's scripts throw (console errors are collected for the message). */
export function watchPage(page: Page): { errors: string[] } {
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });
  return { errors };
}

export async function signIn(page: Page, url: string, token: string): Promise<void> {
  await page.goto(url);
  await page.getByLabel('API token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Inventory' }).waitFor();
}

/**
 * The sample VM as an OVA: the test guest on its own BIOS-bootable disk, its kernel told to
 * write to the screen and the serial port and to stay up (pv.hold: it prints "tick" every
 * second and ignores ACPI, so a stop is forced after its timeout), converted from a libvirt
 * descriptor by Polyvisor itself.
 */
export async function sampleOva(dir: string, name = 'sample'): Promise<string> {
  const g = await buildTestGuest();
  const disk = join(cacheRoot(), `${g.version}-boot-console-w1.raw`);
  if (!existsSync(disk)) await makeBootDisk(disk, { kernel: g.kernel, initrd: g.initrd, cmdline: 'console=tty0 console=ttyS0 quiet panic=-1 pv.hold' });
  const xml = join(dir, `${name}.xml`);
  await writeFile(
    xml,
    `<domain type='kvm'>
  <name>${name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='${disk}'/><target dev='sda' bus='sata'/></disk>
    <graphics type='vnc'/>
  </devices>
</domain>
`,
  );
  const src = await openVmSource(xml, { allowOutsidePaths: true });
  try {
    const r = await convertVm(src, 'ova', join(dir, 'ova'), { adapt: false, allowOutsidePaths: true });
    return r.files[0]!;
  } finally {
    await src.close();
  }
}

export interface RawConsole {
  /** the handshake's status: 101 when the server upgraded */
  status: number;
  /** the text of the server's frames so far */
  text(): string;
  /** resolves when the text matches `re` (rejects after `ms`) */
  until(re: RegExp, ms?: number): Promise<string>;
  close(): void;
}

/**
 * Opens a console WebSocket the way a browser does (RFC 6455 §4.1), without a WebSocket
 * library: the handshake's status, and the payloads of the server's frames (unmasked, §5.2) as
 * text. Enough to check the proxy itself; the browser test drives the real clients.
 */
export function openRawConsole(base: string, path: string, headers: Record<string, string> = {}): Promise<RawConsole> {
  return new Promise((resolve, reject) => {
    // agent: false: a socket that carried an upgrade request is not reused
    const req = request(new URL(path, base), {
      agent: false,
      headers: { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': randomBytes(16).toString('base64'), ...headers },
    });
    req.on('error', reject);
    req.on('response', (res) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0, text: () => '', until: () => Promise.reject(new Error(`no socket: status ${res.statusCode}`)), close: () => {} });
    });
    req.on('upgrade', (_res, socket, head) => {
      let pending = Buffer.from(head);
      let text = '';
      const waiters: Array<() => void> = [];
      socket.on('data', (chunk: Buffer) => {
        pending = Buffer.concat([pending, chunk]);
        // frames: FIN/opcode, length (7 bits, or 16/64 bits after 126/127), payload
        while (pending.length >= 2) {
          let len = pending[1]! & 0x7f;
          let at = 2;
          if (len === 126) {
            if (pending.length < 4) break;
            len = pending.readUInt16BE(2);
            at = 4;
          } else if (len === 127) {
            if (pending.length < 10) break;
            len = Number(pending.readBigUInt64BE(2));
            at = 10;
          }
          if (pending.length < at + len) break;
          const opcode = pending[0]! & 0x0f;
          if (opcode === 1 || opcode === 2 || opcode === 0) text += pending.subarray(at, at + len).toString('latin1');
          pending = pending.subarray(at + len);
        }
        for (const w of waiters.splice(0)) w();
      });
      socket.on('error', () => {});
      resolve({
        status: 101,
        text: () => text,
        until: (re, ms = 30_000) =>
          new Promise((ok, fail) => {
            const timer = setTimeout(() => fail(new Error(`console text never matched ${re}: ${JSON.stringify(text.slice(-500))}`)), ms);
            const check = () => {
              if (re.test(text)) {
                clearTimeout(timer);
                ok(text);
              } else waiters.push(check);
            };
            check();
          }),
        close: () => socket.destroy(),
      });
    });
    req.end();
  });
}
