/**
 * A server on a fresh data folder for each test (and, with POLYVISOR_TEST_DATABASE=pg, a fresh
 * database on a throw-away PostgreSQL server, ../store/pg-server.ts), and `call()`, which sends a request through
 * `app.inject` and checks the answer against the server's own OpenAPI document
 * (/api/openapi.json) with Ajv in draft 2020-12: the status must be one the operation
 * declares (or an error body under `default`), the body must match its schema. Every
 * operation a test reaches is recorded, so a test can check that all of them were.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { buildServer, type ServerOptions } from '../../src/server/app.js';
import { openApiPath } from '../../src/server/route.js';
import { tempDir } from '../helpers.js';
import { startPostgres, type PgServer } from '../store/pg-server.js';

type Json = any;

export interface CallOptions {
  token?: string | null;
  body?: unknown;
  /** a raw payload (string, Buffer or stream) instead of a JSON body */
  payload?: string | Buffer | Readable;
  headers?: Record<string, string>;
  query?: Record<string, string>;
}

export interface CallResult {
  status: number;
  body: Json;
  headers: Record<string, unknown>;
  raw: string;
}

export interface TestServer {
  app: FastifyInstance;
  data: string;
  /** the PostgreSQL database the store is in (POLYVISOR_TEST_DATABASE=pg), else the SQLite file in `data` */
  database?: { name: string; url: string };
  dir: string;
  adminToken: string;
  call(method: string, url: string, opts?: CallOptions): Promise<CallResult>;
  /** operations reached, as "GET /api/vms/{name}" */
  reached: Set<string>;
  operations(): string[];
  /** validates a value against a named component */
  validate(component: string, value: unknown): void;
  /** makes a user of the role and returns its token */
  user(name: string, role: 'viewer' | 'operator' | 'admin'): Promise<string>;
}

/** Ajv over the OpenAPI document: any schema in it addressed by JSON pointer. */
export function openApiValidator(doc: Json): (pointer: string, value: unknown) => string | undefined {
  const ajv = new Ajv2020({ strict: false, allErrors: false, validateFormats: true });
  (addFormats as unknown as (a: Ajv2020) => void)(ajv);
  ajv.addSchema({ ...doc, $id: 'polyvisor-openapi.json' });
  const cache = new Map<string, ReturnType<Ajv2020['compile']>>();
  return (pointer, value) => {
    let v = cache.get(pointer);
    if (!v) {
      v = ajv.compile({ $ref: `polyvisor-openapi.json#${pointer}` });
      cache.set(pointer, v);
    }
    return v(value) ? undefined : ajv.errorsText(v.errors, { dataVar: 'response' });
  };
}

/** Every operation any server of this process reached (tests check the document is covered). */
export const REACHED = new Set<string>();

const escapePointer = (s: string) => s.replace(/~/g, '~0').replace(/\//g, '~1');

/** The PostgreSQL server of this test process, started by the first server that needs it, stopped at exit. */
let postgres: PgServer | undefined;

/** Which database the test servers' stores use: POLYVISOR_TEST_DATABASE=pg for PostgreSQL, else SQLite. */
export function testDatabase(): 'sqlite' | 'pg' {
  const v = process.env.POLYVISOR_TEST_DATABASE;
  if (v === undefined || v === '' || v === 'sqlite') return 'sqlite';
  if (v === 'pg') return 'pg';
  throw new Error(`POLYVISOR_TEST_DATABASE=${v}: give pg or sqlite`);
}

/** Everything the store holds, as bytes: the SQLite file and its WAL, or the PostgreSQL database as pg_dump writes it. */
export function storeBytes(s: TestServer): Buffer {
  if (s.database) return postgres!.dump(s.database.name);
  const file = join(s.data, 'polyvisor.db');
  return Buffer.concat([readFileSync(file), existsSync(`${file}-wal`) ? readFileSync(`${file}-wal`) : Buffer.alloc(0)]);
}

/** A fresh database for one test server on this process's PostgreSQL (POLYVISOR_TEST_DATABASE=pg), else undefined: SQLite. */
export function testDatabaseFor(): TestServer['database'] {
  if (testDatabase() !== 'pg') return undefined;
  postgres ??= startPostgres();
  return postgres.createDatabase();
}

export async function startServer(t: { after(fn: () => Promise<void> | void): void }, opts: Partial<ServerOptions> = {}): Promise<TestServer> {
  const dir = await tempDir(t);
  const data = join(dir, 'data');
  const database = testDatabaseFor();
  let adminToken = '';
  const app = await buildServer({ dataDir: data, database: database?.url, accel: 'tcg', onAdminToken: (tk) => (adminToken = tk), ...opts });
  t.after(() => app.close());
  assert.match(adminToken, /^pv_[A-Za-z0-9_-]{43}$/, 'a first start hands out the admin token');
  const docRes = await app.inject({ method: 'GET', url: '/api/openapi.json' });
  assert.equal(docRes.statusCode, 200);
  const doc = docRes.json();
  const check = openApiValidator(doc);
  const reached = new Set<string>();
  const routes = app.apiRoutes.map((r) => {
    const path = openApiPath(r.url);
    const re = new RegExp('^' + path.replace(/\{path\}$/, '(.+)').replace(/\{[^}]+\}/g, '([^/]+)') + '$');
    return { method: r.method, path, re };
  });

  const call = async (method: string, url: string, o: CallOptions = {}): Promise<CallResult> => {
    const headers: Record<string, string> = { ...o.headers };
    const token = o.token === undefined ? adminToken : o.token;
    if (token !== null) headers.authorization = `Bearer ${token}`;
    let payload: string | Buffer | Readable | undefined = o.payload;
    if (o.body !== undefined) {
      payload = JSON.stringify(o.body);
      headers['content-type'] ??= 'application/json';
    }
    const res = await app.inject({ method: method as 'GET', url, headers, payload, query: o.query });
    const path = url.split('?')[0]!;
    const route = routes.find((r) => r.method === method && r.re.test(path));
    let body: Json = undefined;
    const type = String(res.headers['content-type'] ?? '');
    if (type.startsWith('application/json')) body = res.json();
    if (route) {
      const key = `${method} ${route.path}`;
      reached.add(key);
      REACHED.add(key);
      const op = doc.paths[route.path][method.toLowerCase()];
      const declared = op.responses[String(res.statusCode)];
      if (res.statusCode < 400) assert.ok(declared, `${key} answered ${res.statusCode}, which its operation does not declare: ${res.body.slice(0, 300)}`);
      const status = declared ? String(res.statusCode) : 'default';
      const content = op.responses[status].content as Record<string, { schema: Json }> | undefined;
      if (!content) assert.equal(res.body, '', `${key} ${res.statusCode} declares no body`);
      else {
        const [declaredType] = Object.keys(content);
        assert.ok(type.startsWith(declaredType!), `${key} ${res.statusCode}: content type ${type}, declared ${declaredType}`);
        if (declaredType === 'application/json') {
          const err = check(`/paths/${escapePointer(route.path)}/${method.toLowerCase()}/responses/${status}/content/application~1json/schema`, body);
          assert.equal(err, undefined, `${key} ${res.statusCode}: the body does not match the OpenAPI document: ${err}\n${res.body.slice(0, 500)}`);
        }
      }
    } else {
      // no route: the 404 still carries the error body
      assert.equal(res.statusCode, 404, `${method} ${url} matched no declared operation`);
      assert.equal(check('/components/schemas/Error', body), undefined);
    }
    return { status: res.statusCode, body, headers: res.headers, raw: res.body };
  };

  const server: TestServer = {
    app,
    data,
    database,
    dir,
    adminToken,
    call,
    reached,
    operations: () => routes.map((r) => `${r.method} ${r.path}`),
    validate(component, value) {
      const err = check(`/components/schemas/${component}`, value);
      assert.equal(err, undefined, `${component}: ${err}`);
    },
    async user(name, role) {
      const r = await call('POST', '/api/users', { body: { name, role } });
      assert.equal(r.status, 201, r.raw);
      return r.body.token as string;
    },
  };
  return server;
}

/** Waits for a job to end and returns it as GET /api/jobs/:id shows it. */
export async function settled(s: TestServer, id: string): Promise<Json> {
  await s.app.polyvisor.jobs.settled(id);
  const r = await s.call('GET', `/api/jobs/${id}`);
  assert.equal(r.status, 200);
  return r.body;
}
