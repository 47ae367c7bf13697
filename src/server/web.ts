/**
 * Serves the web console (the React application in web/, built by Vite into dist/web/) from
 * the API's own server, so the console and the API share one origin: no CORS, and the console
 * tokens of ./console-proxy.ts are checked against this server's own Host.
 *
 * The console is a single-page application: a GET of any path outside /api/ that names no
 * file (/vms/web01, /jobs) is answered with index.html and the application routes it in the
 * browser. A path with a file extension that does not exist, and anything under /api/, keeps
 * the API's JSON 404. Hashed assets (/assets/NAME-HASH.js) are cached for good; index.html is
 * revalidated on every load, so a new build is picked up at once.
 *
 * index.html carries a Content Security Policy (W3C CSP Level 3): scripts only from this
 * origin, connections only to it (same-origin WebSockets included), no framing.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

export interface WebConsoleOptions {
  /** the built console; default dist/web beside this module's dist/src */
  root?: string;
}

/** Where `npx vite build --config web/vite.config.ts` writes the console. */
export function defaultWebRoot(): string {
  return fileURLToPath(new URL('../../web/', import.meta.url));
}

export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  // React sets style attributes (the progress bars' widths)
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data: blob:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
  "form-action 'self'",
].join('; ');

const SECURITY_HEADERS = {
  'content-security-policy': CONTENT_SECURITY_POLICY,
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};

/** The console's plugin: `await app.register(webConsole)` after the API's routes. */
export async function webConsole(app: FastifyInstance, opts: WebConsoleOptions = {}): Promise<void> {
  const root = opts.root ?? defaultWebRoot();
  const indexFile = join(root, 'index.html');
  const built = existsSync(indexFile);
  const index = built ? readFileSync(indexFile) : undefined;

  if (built) {
    await app.register(fastifyStatic, {
      root,
      // routes for the files present now: a miss falls to the SPA route below, not to a 404 of the plugin
      wildcard: false,
      index: false,
      decorateReply: false,
      dotfiles: 'deny',
      cacheControl: false,
      setHeaders: (reply, path) => {
        reply.headers(SECURITY_HEADERS);
        // Vite names every asset after its content's hash: it never changes under its name
        reply.header('cache-control', path.includes(`${join(root, 'assets')}`) ? 'public, max-age=31536000, immutable' : 'no-cache');
      },
    });
  }

  const page = async (request: FastifyRequest, reply: FastifyReply) => {
    const path = request.url.split('?')[0]!;
    const last = path.slice(path.lastIndexOf('/') + 1);
    if (path.startsWith('/api/') || path === '/api' || last.includes('.')) return reply.callNotFound();
    if (!index) {
      return reply
        .code(503)
        .header('content-type', 'text/plain; charset=utf-8')
        .send('The web console is not built. Build it with: npx vite build --config web/vite.config.ts (npm run build does). The API answers under /api/ (its document: /api/openapi.json).\n');
    }
    return reply.headers({ ...SECURITY_HEADERS, 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-cache' }).send(index);
  };
  app.get('/', page);
  app.get('/*', page);
}
