/**
 * `polyvisor serve [--listen HOST:PORT]`: the REST API (../server/app.ts) on the data folder
 * the global `--data` (or $POLYVISOR_DATA) chooses, the CLI's own, so both see the same VMs;
 * with the global `--database URL` (or $POLYVISOR_DATABASE) the store is on PostgreSQL.
 * Loopback by default: the API carries tokens in clear, so another address is the user's
 * explicit choice (behind a TLS proxy). On a first start the admin's token is printed once,
 * on a line of its own: `admin token: TOKEN`.
 */
import { Command, Option } from 'commander';
import { PolyvisorError } from '../errors.js';
import { databaseUrl, dataDir } from '../store/data-dir.js';

export const DEFAULT_LISTEN = '127.0.0.1:8460';

/** HOST:PORT, [IPv6]:PORT, or :PORT (loopback). */
export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new PolyvisorError('ERR_USAGE', `--listen ${JSON.stringify(text)}: give HOST:PORT (127.0.0.1:8460, [::1]:8460, :8460)`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

function loopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

export function serveCommand(): Command {
  return new Command('serve')
    .description('serve the REST API (OpenAPI document at /api/openapi.json) on the same store as the CLI')
    .option('--listen <host:port>', 'the address to listen on', DEFAULT_LISTEN)
    .option('--upload-limit <bytes>', 'the largest upload into the library, in bytes', String(64 * 2 ** 30))
    .addOption(new Option('--accel <accel>', 'force the accelerator for VMs the server starts').choices(['kvm', 'tcg']))
    .action(async (_o, cmd: Command) => {
      const o = cmd.optsWithGlobals();
      const { host, port } = parseListen(o.listen);
      const uploadLimit = Number(o.uploadLimit);
      if (!Number.isSafeInteger(uploadLimit) || uploadLimit <= 0) throw new PolyvisorError('ERR_USAGE', `--upload-limit ${o.uploadLimit}: give a number of bytes`);
      const { buildServer } = await import('../server/app.js');
      const app = await buildServer({ dataDir: dataDir(o.data), database: databaseUrl(o.database), accel: o.accel, uploadLimit });
      if (!loopback(host)) process.stderr.write(`polyvisor serve: listening on ${host}, not loopback: tokens cross the network in clear unless a TLS proxy is in front\n`);
      try {
        await app.listen({ host, port });
      } catch (e) {
        await app.close();
        throw new PolyvisorError('ERR_IO', `cannot listen on ${o.listen}: ${(e as Error).message}`, { cause: e });
      }
      const address = app.server.address();
      const shown = typeof address === 'object' && address ? `${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}` : o.listen;
      const store = app.polyvisor.store;
      process.stderr.write(`polyvisor serve: listening on http://${shown} (data: ${app.polyvisor.dataDir}${store.dialect === 'postgres' ? `, database: ${store.file}` : ''})\n`);
      await new Promise<void>((resolve) => {
        const stop = () => {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
          process.stderr.write('polyvisor serve: stopping (running jobs are cancelled)\n');
          void app.close().then(resolve, resolve);
        };
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
      });
    });
}
