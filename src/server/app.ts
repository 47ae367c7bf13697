/**
 * The Polyvisor server: a Fastify application over the same library calls as the CLI (the
 * estate, the store, the disk and VM layers), on the same data folder, so the CLI and the
 * server see the same VMs.
 *
 * `buildServer()` returns the application without listening (tests drive it with
 * `app.inject`; `polyvisor serve` listens, ../cli/serve.ts). The request path is:
 * onRequest (the bearer token and the route's role, ./auth.ts, before any body is read), the
 * body parsed (JSON, or left as a stream for uploads), the route's zod schemas
 * (./schemas.ts, 400 naming the field), the handler, and onResponse (./audit.ts).
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type * as z from 'zod';
import { Estate } from '../hosts/estate.js';
import { AuditLog } from './audit.js';
import { Auth, type Principal } from './auth.js';
import type { ServerContext } from './context.js';
import { errorReply, ValidationError } from './http-errors.js';
import { Jobs } from './jobs.js';
import { Library } from './library.js';
import { openApiDocument } from './openapi.js';
import type { Access, ApiRoute } from './route.js';
import { hostRoutes } from './routes/hosts.js';
import { jobRoutes } from './routes/jobs.js';
import { libraryRoutes, uploadRoutes } from './routes/library.js';
import { systemRoutes } from './routes/system.js';
import { userRoutes } from './routes/users.js';
import { vmRoutes } from './routes/vms.js';
import { VmLocks } from './vm-locks.js';
import { consoleProxy } from './console-proxy.js';
import { inspectRoutes } from './inspect.js';
import { webConsole } from './web.js';

declare module 'fastify' {
  interface FastifyInstance {
    polyvisor: ServerContext;
    apiRoutes: ApiRoute[];
  }
  interface FastifyRequest {
    principal?: Principal;
    auditDetail?: Record<string, unknown>;
    auditJob?: string;
  }
  interface FastifyContextConfig {
    access?: Access;
    rawBody?: boolean;
  }
}

export interface ServerOptions {
  /** the data folder (../store/data-dir.ts): the store, the VMs' folders, the library */
  dataDir: string;
  /** the store's database when not the SQLite file in the data folder: a PostgreSQL URL (../store/data-dir.ts) */
  database?: string;
  /** force the local engine's accelerator (tests force tcg) */
  accel?: 'kvm' | 'tcg';
  /** the largest upload, in bytes (default 64 GiB) */
  uploadLimit?: number;
  /** the largest JSON body, in bytes (default 1 MiB) */
  bodyLimit?: number;
  /** jobs that run at once (default 2) */
  jobConcurrency?: number;
  /** Fastify's request log (default off) */
  logger?: boolean;
  /** gets the first admin's token on a first start; default: printed as `admin token: TOKEN` */
  onAdminToken?: (token: string) => void;
  /** gets errors that are bugs (500); default: printed to stderr */
  onInternalError?: (e: unknown) => void;
}

export const DEFAULT_UPLOAD_LIMIT = 64 * 2 ** 30;

function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return '0.0.0';
  }
}

/** A request part checked against its schema: its parsed value, or a 400 naming the field. */
function parsePart(schema: z.ZodType | undefined, value: unknown, part: 'params' | 'query' | 'body'): unknown {
  if (!schema) return undefined;
  const r = schema.safeParse(value ?? (part === 'body' ? undefined : {}));
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const field = [part, ...issue.path.map(String)].join('.');
  throw new ValidationError(field, issue.message);
}

export async function buildServer(opts: ServerOptions): Promise<FastifyInstance> {
  const dataDir = resolve(opts.dataDir);
  const estate = new Estate({ dataDir, database: opts.database, accel: opts.accel });
  const store = estate.store;
  mkdirSync(join(dataDir, 'tmp'), { recursive: true });
  const ctx: ServerContext = {
    dataDir,
    estate,
    store,
    auth: new Auth(store),
    audit: new AuditLog(store),
    jobs: new Jobs(store, { concurrency: opts.jobConcurrency }),
    library: new Library(dataDir, { uploadLimit: opts.uploadLimit ?? DEFAULT_UPLOAD_LIMIT }),
    locks: new VmLocks(),
    version: packageVersion(),
  };

  const app = Fastify({ logger: opts.logger ?? false, bodyLimit: opts.bodyLimit ?? 1 << 20, exposeHeadRoutes: false, return503OnClosing: true });
  let document: Record<string, unknown> | undefined;
  const jsonRoutes: ApiRoute[] = [...systemRoutes((): Record<string, unknown> => (document ??= openApiDocument(routes, ctx.version))), ...hostRoutes(), ...vmRoutes({ accel: opts.accel }), ...libraryRoutes(), ...jobRoutes(), ...userRoutes(), ...inspectRoutes()];
  const streamRoutes = uploadRoutes();
  const routes: ApiRoute[] = [...jsonRoutes, ...streamRoutes];
  app.decorate('polyvisor', ctx);
  app.decorate('apiRoutes', routes);
  app.decorateRequest('principal', undefined);
  app.decorateRequest('auditDetail', undefined);
  app.decorateRequest('auditJob', undefined);

  // who, before anything of the request is read
  app.addHook('onRequest', async (request) => {
    const access = request.routeOptions.config?.access;
    if (access === undefined || access === 'public') return;
    const who = ctx.auth.authenticate(request.headers.authorization);
    request.principal = who;
    ctx.auth.require(who, access);
  });

  app.addHook('onResponse', async (request, reply) => {
    if (!AuditLog.records(request.method)) return;
    const params = (request.params ?? {}) as Record<string, unknown>;
    const { '*': path, ...rest } = params;
    const target = { ...rest, ...(path === undefined ? {} : { path }), ...request.auditDetail };
    ctx.audit.record({
      user: request.principal?.name,
      role: request.principal?.role,
      method: request.method,
      route: request.routeOptions.url ?? request.url.split('?')[0]!,
      target,
      status: reply.statusCode,
      job: request.auditJob,
    });
  });

  app.setErrorHandler((err, request, reply) => {
    const { status, body, internal } = errorReply(err);
    if (internal) (opts.onInternalError ?? ((e) => process.stderr.write(`polyvisor serve: internal error on ${request.method} ${request.url.split('?')[0]}: ${(e as Error)?.stack ?? String(e)}\n`)))(err);
    // a refused upload's body was not read: the connection cannot carry another request
    if (request.routeOptions.config?.rawBody) reply.header('connection', 'close');
    void reply.code(status).send(body);
  });
  app.setNotFoundHandler((request, reply) => {
    void reply.code(404).send({ error: { code: 'ERR_NOT_FOUND', message: `no route ${request.method} ${request.url.split('?')[0]}` } });
  });

  const register = (scope: FastifyInstance, r: ApiRoute) => {
    const firstStatus = Number(Object.keys(r.responses).sort()[0] ?? 200);
    scope.route({
      method: r.method,
      url: r.url,
      config: { access: r.access, rawBody: !!r.rawBody },
      handler: async (request: FastifyRequest, reply: FastifyReply) => {
        const params = parsePart(r.params, request.params, 'params');
        const query = parsePart(r.query, request.query, 'query');
        const body = r.rawBody ? undefined : parsePart(r.body, request.body, 'body');
        reply.code(firstStatus);
        const result = await r.handler({
          params,
          query,
          body,
          user: request.principal!,
          request,
          reply,
          ctx,
          audit: (detail) => {
            request.auditDetail = { ...request.auditDetail, ...detail };
          },
        });
        if (reply.sent) return reply;
        if (reply.statusCode === 202 && result && typeof (result as { id?: unknown }).id === 'string') request.auditJob = (result as { id: string }).id;
        if (reply.statusCode === 204) return reply.send();
        return result;
      },
    });
  };
  for (const r of jsonRoutes) register(app, r);
  await app.register(async (scope) => {
    // an upload's body is the file: handed to the route as a stream, never parsed or buffered
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', (_request, _payload, done) => done(null));
    for (const r of streamRoutes) register(scope, r);
  });
  // the browser's consoles (WebSockets) and the web console's files, after every API route
  await app.register(consoleProxy);
  await app.register(webConsole);

  app.addHook('onClose', async () => {
    await ctx.jobs.close();
    await estate.close();
  });

  const token = ctx.auth.bootstrap();
  if (token) (opts.onAdminToken ?? ((t) => process.stdout.write(`admin token: ${t}\n`)))(token);
  return app;
}
