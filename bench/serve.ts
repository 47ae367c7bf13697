/**
 * The server's load benchmark: the inventory listing (GET /api/vms, one page of 100, the
 * default) with 10,000 VMs over 100 hosts in the store, under autocannon on loopback; and the
 * listing of one host's 100 VMs. The store is seeded directly (one transaction); the server
 * runs in its own process (this file with --server), so its peak memory (VmHWM) is its own.
 * Targets (issue 7): p99 under 20 ms, peak memory under 200 MiB.
 *
 * Options (environment): BENCH_SECONDS (default 10 per scenario), BENCH_CONNECTIONS (default 10).
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildServer } from '../src/server/app.js';
import { Store } from '../src/store/store.js';
import { emptySpec } from '../src/vm/spec.js';

const VMS = 10_000;
const HOSTS = 100;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 10);

interface AutocannonResult {
  latency: { p50: number; p90: number; p99: number; max: number; average: number };
  requests: { average: number; total: number };
  non2xx: number;
  errors: number;
  throughput: { average: number };
}

/** The server process: listens on loopback, prints its port and the admin token as one JSON line. */
async function server(data: string): Promise<void> {
  let token = '';
  const app = await buildServer({ dataDir: data, onAdminToken: (t) => (token = t) });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address() as { port: number };
  process.stdout.write(JSON.stringify({ port: address.port, token }) + '\n');
  process.on('SIGTERM', () => void app.close().then(() => process.exit(0)));
}

function seed(data: string): void {
  const store = Store.open(data);
  const states = ['stopped', 'running', 'paused'] as const;
  store.batch(() => {
    for (let h = 0; h < HOSTS; h++) store.addHost({ name: `xen-${String(h).padStart(3, '0')}`, uri: `xen+ssh://root@192.0.2.${h + 1}`, driver: 'xen', options: {} });
    for (let i = 0; i < VMS; i++) {
      const name = `vm-${String(i).padStart(5, '0')}`;
      const spec = emptySpec(name);
      spec.cpu.count = 1 + (i % 8);
      spec.memory.bytes = (1 + (i % 16)) * 256 * 2 ** 20;
      spec.virtualization = 'pv';
      spec.os.family = 'linux';
      spec.disks.push({ device: 'disk', bus: 'xen', target: 'xvda', file: `/var/lib/polyvisor/${name}/disk0.raw`, format: 'raw' });
      spec.nics.push({ model: 'xen-netfront', mac: `00:16:3e:${((i >> 16) & 255).toString(16).padStart(2, '0')}:${((i >> 8) & 255).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`, network: 'xenbr0' } as (typeof spec.nics)[number]);
      const host = `xen-${String(i % HOSTS).padStart(3, '0')}`;
      store.addVm({ name, uuid: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`, host, source: `/srv/import/${name}.cfg`, sourceKind: 'xl', spec, disks: [{ index: 0, label: 'disk0', mode: 'host', path: `/var/lib/polyvisor/${name}/disk0.raw`, format: 'raw' }], state: states[i % 3] });
    }
  });
  store.close();
}

function peakKiB(pid: number): number | undefined {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : undefined;
}

async function main(): Promise<void> {
  const dir = resolve(process.env.BENCH_DIR ?? '.cache/bench', 'serve');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const data = join(dir, 'data');
  const t0 = Date.now();
  seed(data);
  const seedMs = Date.now() - t0;
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), '--server', data], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const { port, token } = await new Promise<{ port: number; token: string }>((res, rej) => {
      let out = '';
      child.stdout!.setEncoding('utf8').on('data', (s: string) => {
        out += s;
        const nl = out.indexOf('\n');
        if (nl >= 0) res(JSON.parse(out.slice(0, nl)));
      });
      child.once('exit', (code) => rej(new Error(`the server exited (${code})`)));
    });
    const autocannon = (await import('autocannon' as string)).default as (o: Record<string, unknown>) => Promise<AutocannonResult>;
    const headers = { authorization: `Bearer ${token}` };
    const check = await fetch(`http://127.0.0.1:${port}/api/vms`, { headers });
    const page = (await check.json()) as { items: unknown[]; total: number };
    if (check.status !== 200 || page.total !== VMS || page.items.length !== 100) throw new Error(`unexpected listing: ${check.status} ${page.total}`);
    const pageBytes = JSON.stringify(page).length;
    const results: Record<string, unknown> = {};
    for (const [name, path] of [
      ['inventory page (100 of 10,000)', '/api/vms'],
      ['one host (100 VMs)', '/api/vms?host=xen-042&limit=100'],
      ['a page deep in the inventory', '/api/vms?after=vm-09000'],
    ] as const) {
      // a short warm-up first: the JIT and SQLite's page cache
      await autocannon({ url: `http://127.0.0.1:${port}${path}`, headers, connections: CONNECTIONS, duration: 2 });
      const r = await autocannon({ url: `http://127.0.0.1:${port}${path}`, headers, connections: CONNECTIONS, duration: SECONDS });
      if (r.non2xx || r.errors) throw new Error(`${name}: ${r.non2xx} non-2xx answers, ${r.errors} errors`);
      results[name] = { p50Ms: r.latency.p50, p90Ms: r.latency.p90, p99Ms: r.latency.p99, maxMs: r.latency.max, requestsPerSecond: Math.round(r.requests.average), requests: r.requests.total };
      console.log(`${name}: p50 ${r.latency.p50} ms, p99 ${r.latency.p99} ms, max ${r.latency.max} ms, ${Math.round(r.requests.average)} req/s`);
    }
    const peak = peakKiB(child.pid!);
    const summary = {
      date: new Date().toISOString(),
      machine: { cpus: cpus().length, cpu: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version },
      store: { vms: VMS, hosts: HOSTS, seedMs },
      load: { tool: 'autocannon', connections: CONNECTIONS, seconds: SECONDS, pageBytes },
      results,
      serverPeakMiB: peak === undefined ? null : Math.round((peak / 1024) * 10) / 10,
      targets: { p99Ms: 20, peakMiB: 200 },
    };
    console.log(`server peak memory (VmHWM): ${summary.serverPeakMiB} MiB`);
    writeFileSync(fileURLToPath(new URL('../../bench/serve-results.json', import.meta.url)), JSON.stringify(summary, null, 2) + '\n');
  } finally {
    child.kill('SIGTERM');
  }
}

if (process.argv[2] === '--server') await server(process.argv[3]!);
else await main();
