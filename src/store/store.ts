/**
 * The VM store: which VMs Polyvisor manages, on which host, in which state, and where their
 * disks are. One embedded SQLite database (better-sqlite3) under the data folder by default, or
 * a PostgreSQL database named by a URL (./db.ts: one synchronous interface over both); every
 * write is one short transaction, so concurrent CLI commands see each other's changes at once
 * and a killed command never leaves half a record (the database rolls it back).
 *
 * The store records what Polyvisor last knew; what actually runs is reconciled by the host
 * layer (../hosts/local.ts) on every command, since QEMU may have ended while no Polyvisor
 * process was watching.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
// zod's mini API, as ../vm/spec.ts (which sets its messages) says why
import * as z from 'zod/mini';
import { PolyvisorError } from '../errors.js';
import { VmSpecSchema, type VmSpec } from '../vm/spec.js';
import { isUniqueViolation, type Db, type SqlParam, type Statement } from './db.js';
import { PostgresDb } from './postgres.js';
import { isPostgresUrl, type PgSyncOptions } from './pg-sync.js';
import { MIGRATIONS } from './schema.js';
import { SqliteDb } from './sqlite.js';

export const VM_STATES = ['stopped', 'running', 'paused'] as const;
export type StoredVmState = (typeof VM_STATES)[number];

/** How one disk of a stored VM reaches the engine. */
export const StoredDiskSchema = z.object({
  index: z.int().check(z.minimum(0)),
  /** the source disk as the user knows it */
  label: z.string(),
  /**
   * overlay: a qcow2 overlay in the VM's folder over the source file (the source is read, never written);
   * copy: the disk was converted into the VM's folder (the source was not one QEMU reads itself);
   * persist: the source file itself, written by the guest (the user asked for it);
   * host: the disk lives on the VM's (remote) host, at `path` there
   */
  mode: z.enum(['overlay', 'copy', 'persist', 'host']),
  /** what QEMU opens */
  path: z.string(),
  /** Polyvisor's registry name of `path`'s format */
  format: z.string(),
  /** the source file beneath an overlay */
  source: z.optional(z.string()),
});
export type StoredDisk = z.infer<typeof StoredDiskSchema>;

export interface StoredVm {
  name: string;
  uuid: string;
  host: string;
  /** the descriptor, package or folder the VM was imported from */
  source: string;
  sourceKind: string;
  spec: VmSpec;
  disks: StoredDisk[];
  state: StoredVmState;
  pid?: number;
  createdAt: string;
  updatedAt: string;
  startedAt?: string;
}

export interface HostOptions {
  /** the SSH private key */
  identityFile?: string;
  /** the folder on the host that holds one folder per VM */
  storageDir?: string;
}

export interface StoredHost {
  name: string;
  uri: string;
  driver: string;
  options: HostOptions;
  addedAt: string;
}

export const ROLES = ['viewer', 'operator', 'admin'] as const;
export type Role = (typeof ROLES)[number];

export interface StoredUser {
  name: string;
  role: Role;
  createdAt: string;
  createdBy?: string;
}

/** A token as the store keeps it: its SHA-256, never the token itself. */
export interface StoredToken {
  hash: string;
  /** api: a bearer token; console: a single-use token for one VM's console */
  kind: 'api' | 'console';
  user: string;
  vm?: string;
  createdAt: string;
  expiresAt?: string;
  usedAt?: string;
}

export interface AuditEntry {
  seq: number;
  at: string;
  /** who: the user name (absent when the request carried no valid token) */
  user?: string;
  role?: string;
  method: string;
  /** the route as declared (/api/vms/:name/start), or the path when no route matched */
  route: string;
  /** the route's parameters and what the request named (JSON text) */
  target: string;
  status: number;
  job?: string;
}

export const JOB_STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;
export type JobState = (typeof JOB_STATES)[number];

export interface StoredJob {
  id: string;
  kind: string;
  target: string;
  state: JobState;
  done: number;
  total: number;
  createdBy?: string;
  createdAt: string;
  startedAt?: string;
  endedAt?: string;
  error?: { code: string; message: string };
  result?: unknown;
}

export interface JobLogLine {
  seq: number;
  at: string;
  line: string;
}

/** What an inventory listing shows of a VM: no descriptor, no disks (GET one VM for those). */
export interface VmSummary {
  name: string;
  uuid: string;
  host: string;
  state: StoredVmState;
  pid?: number;
  sourceKind: string;
  cpus: number;
  memoryBytes: number;
  tags: string[];
  createdAt: string;
  startedAt?: string;
}

export interface VmQuery {
  host?: string;
  state?: StoredVmState;
  tag?: string;
  /** keyset pagination: names after this one */
  after?: string;
  limit: number;
}

interface JobRow {
  id: string;
  kind: string;
  target: string;
  state: string;
  done: number;
  total: number;
  created_by: string | null;
  created_at: string;
  started_at: string | null;
  ended_at: string | null;
  error: string | null;
  result: string | null;
}

function jsonOr<T>(text: string | null, fallback: T): T {
  if (text === null) return fallback;
  try {
    return JSON.parse(text) as T;
  } catch {
    return fallback;
  }
}

interface VmRow {
  name: string;
  uuid: string;
  host: string;
  source: string;
  source_kind: string;
  spec: string;
  disks: string;
  state: string;
  pid: number | null;
  created_at: string;
  updated_at: string;
  started_at: string | null;
}

function parseOptions(text: string): HostOptions {
  try {
    const o = JSON.parse(text) as HostOptions;
    return { identityFile: typeof o.identityFile === 'string' ? o.identityFile : undefined, storageDir: typeof o.storageDir === 'string' ? o.storageDir : undefined };
  } catch {
    return {};
  }
}

/** VM names: what QEMU, xl and file names all accept. */
export const VM_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function checkVmName(name: string): void {
  if (!VM_NAME.test(name)) {
    throw new PolyvisorError('ERR_USAGE', `VM name ${JSON.stringify(name)}: use letters, digits, '.', '_' and '-', starting with a letter or digit (at most 64)`);
  }
}

export interface StoreOptions {
  /**
   * a PostgreSQL URL (postgres://… or postgresql://…, libpq's form): the database lives there
   * instead of in `dir`; `dir` still holds the VMs' folders (../store/data-dir.ts)
   */
  database?: string;
  /** bounds of the PostgreSQL connection (./pg-sync.ts) */
  timeouts?: PgSyncOptions;
}

export class Store {
  readonly dir: string;
  /** where the database is: the SQLite file, or the PostgreSQL URL without its password */
  readonly file: string;
  readonly dialect: Db['dialect'];
  #db: Db;

  private constructor(dir: string, db: Db) {
    this.dir = dir;
    this.#db = db;
    this.file = db.location;
    this.dialect = db.dialect;
  }

  /** Opens (creating when missing) the store in `dir`, or on the `database` server, and brings its schema up to date. */
  static open(dir: string, opts: StoreOptions = {}): Store {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    let db: Db;
    if (opts.database === undefined) db = new SqliteDb(join(dir, 'polyvisor.db'));
    else if (isPostgresUrl(opts.database)) db = new PostgresDb(opts.database, opts.timeouts);
    else throw new PolyvisorError('ERR_USAGE', 'the database is named by a PostgreSQL URL (postgres://USER@HOST/DATABASE or postgresql://…)');
    const store = new Store(dir, db);
    try {
      store.#migrate();
    } catch (e) {
      store.close();
      throw e;
    }
    return store;
  }

  close(): void {
    this.#db.close();
  }

  /**
   * Brings the schema up to date. The version is read first without a lock (the common case:
   * nothing to do, no write lock taken by every command); a store behind is migrated in one
   * immediate transaction that reads the version again, so two processes that open a new
   * store at once migrate it once.
   */
  #migrate(): void {
    const db = this.#db;
    const version = (): number => (db.hasTable('schema_version') ? ((db.prepare('SELECT version FROM schema_version').get() as { version: number } | undefined)?.version ?? 0) : 0);
    const check = (current: number) => {
      if (current > MIGRATIONS.length) {
        throw new PolyvisorError('ERR_UNSUPPORTED', `the store has schema version ${current}, newer than this Polyvisor knows (${MIGRATIONS.length}); upgrade Polyvisor`, { file: this.file });
      }
    };
    const seen = version();
    check(seen);
    if (seen === MIGRATIONS.length) return;
    db.transaction(() => {
      db.exec('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)');
      const current = version();
      check(current);
      for (let v = current; v < MIGRATIONS.length; v++) {
        for (const sql of MIGRATIONS[v]!) db.exec(db.schemaSql(sql));
      }
      if (current === MIGRATIONS.length) return;
      // one row: a table created by a process that died before its first migration has none
      db.prepare('DELETE FROM schema_version').run();
      db.prepare('INSERT INTO schema_version (version) VALUES (?)').run(MIGRATIONS.length);
    }, 'immediate');
  }

  /** Runs `fn` as one transaction: many writes, one commit (seeding, bulk changes). */
  batch<T>(fn: () => T): T {
    return this.#db.transaction(fn, 'immediate');
  }

  // ---------- VMs ----------

  addVm(vm: Omit<StoredVm, 'createdAt' | 'updatedAt' | 'state'> & { state?: StoredVmState }): StoredVm {
    checkVmName(vm.name);
    const now = new Date().toISOString();
    try {
      this.#db
        .prepare(
          `INSERT INTO vms (name, uuid, host, source, source_kind, spec, disks, state, pid, created_at, updated_at, started_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(vm.name, vm.uuid, vm.host, vm.source, vm.sourceKind, JSON.stringify(vm.spec), JSON.stringify(vm.disks), vm.state ?? 'stopped', vm.pid ?? null, now, now, vm.startedAt ?? null);
    } catch (e) {
      if (isUniqueViolation(e)) throw new PolyvisorError('ERR_EXISTS', `a VM named ${vm.name} already exists (choose another with --name)`);
      throw e;
    }
    return this.getVm(vm.name);
  }

  findVm(name: string): StoredVm | undefined {
    const row = this.#db.prepare('SELECT * FROM vms WHERE name = ?').get(name) as VmRow | undefined;
    return row && this.#fromRow(row);
  }

  getVm(name: string): StoredVm {
    const vm = this.findVm(name);
    if (!vm) throw new PolyvisorError('ERR_NOT_FOUND', `no VM named ${name} (polyvisor ps lists them)`);
    return vm;
  }

  listVms(host?: string): StoredVm[] {
    const rows = (host === undefined ? this.#db.prepare('SELECT * FROM vms ORDER BY name').all() : this.#db.prepare('SELECT * FROM vms WHERE host = ? ORDER BY name').all(host)) as VmRow[];
    return rows.map((r) => this.#fromRow(r));
  }

  /** Records a state change; `pid` and `startedAt` are cleared when the VM stops. */
  setState(name: string, state: StoredVmState, run: { pid?: number; startedAt?: string } = {}): void {
    const stopped = state === 'stopped';
    const r = this.#db
      .prepare('UPDATE vms SET state = ?, pid = ?, started_at = ?, updated_at = ? WHERE name = ?')
      .run(state, stopped ? null : (run.pid ?? null), stopped ? null : (run.startedAt ?? null), new Date().toISOString(), name);
    if (r.changes === 0) throw new PolyvisorError('ERR_NOT_FOUND', `no VM named ${name}`);
  }

  /** Records a new state only if the VM is still in `expected` (another command may have moved it on). */
  compareAndSetState(name: string, expected: StoredVmState, state: StoredVmState): boolean {
    const r = this.#db.prepare('UPDATE vms SET state = ?, pid = NULL, started_at = NULL, updated_at = ? WHERE name = ? AND state = ?').run(state, new Date().toISOString(), name, expected);
    return r.changes > 0;
  }

  /** Records that a VM now lives elsewhere (a move): its host, disks and spec. */
  relocateVm(name: string, to: { host: string; disks: StoredDisk[]; spec: VmSpec }): void {
    const r = this.#db
      .prepare("UPDATE vms SET host = ?, disks = ?, spec = ?, state = 'stopped', pid = NULL, started_at = NULL, updated_at = ? WHERE name = ?")
      .run(to.host, JSON.stringify(to.disks), JSON.stringify(to.spec), new Date().toISOString(), name);
    if (r.changes === 0) throw new PolyvisorError('ERR_NOT_FOUND', `no VM named ${name}`);
  }

  removeVm(name: string): void {
    this.#db.prepare('DELETE FROM vms WHERE name = ?').run(name);
  }

  // ---------- hosts ----------

  addHost(host: Omit<StoredHost, 'addedAt'>): StoredHost {
    const addedAt = new Date().toISOString();
    try {
      this.#db.prepare('INSERT INTO hosts (name, uri, driver, options, added_at) VALUES (?, ?, ?, ?, ?)').run(host.name, host.uri, host.driver, JSON.stringify(host.options), addedAt);
    } catch (e) {
      if (isUniqueViolation(e)) throw new PolyvisorError('ERR_EXISTS', `a host named ${host.name} already exists`);
      throw e;
    }
    return { ...host, addedAt };
  }

  listHosts(): StoredHost[] {
    return (this.#db.prepare('SELECT name, uri, driver, options, added_at FROM hosts ORDER BY name').all() as Array<{ name: string; uri: string; driver: string; options: string; added_at: string }>).map((r) => ({
      name: r.name,
      uri: r.uri,
      driver: r.driver,
      options: parseOptions(r.options),
      addedAt: r.added_at,
    }));
  }

  getHost(name: string): StoredHost {
    const h = this.listHosts().find((x) => x.name === name);
    if (!h) throw new PolyvisorError('ERR_NOT_FOUND', `no host named ${name} (polyvisor host ls lists them)`);
    return h;
  }

  removeHost(name: string): void {
    const used = this.#db.prepare('SELECT COUNT(*) AS n FROM vms WHERE host = ?').get(name) as { n: number };
    if (used.n > 0) throw new PolyvisorError('ERR_VM_STATE', `host ${name} still has ${used.n} VM(s) in the store; remove or move them first`);
    this.#db.prepare('DELETE FROM hosts WHERE name = ?').run(name);
  }

  // ---------- inventory listing (the server) ----------

  /**
   * One page of the inventory, in name order, without parsing each VM's spec through its
   * schema (a listing shows CPUs and memory only): the listing of a large estate stays cheap.
   */
  listVmSummaries(q: VmQuery): { items: VmSummary[]; total: number } {
    const where: string[] = [];
    const args: SqlParam[] = [];
    if (q.host !== undefined) (where.push('host = ?'), args.push(q.host));
    if (q.state !== undefined) (where.push('state = ?'), args.push(q.state));
    if (q.tag !== undefined) (where.push('name IN (SELECT vm FROM vm_tags WHERE tag = ?)'), args.push(q.tag));
    const filter = where.length ? `WHERE ${where.join(' AND ')}` : '';
    const total = (this.#sql(`SELECT COUNT(*) AS n FROM vms ${filter}`).get(...args) as { n: number }).n;
    const page = q.after === undefined ? filter : `${filter ? `${filter} AND` : 'WHERE'} name > ?`;
    const rows = this.#sql(`SELECT name, uuid, host, source_kind, state, pid, created_at, updated_at, started_at FROM vms ${page} ORDER BY name LIMIT ?`)
      .all(...args, ...(q.after === undefined ? [] : [q.after]), q.limit) as Array<Pick<VmRow, 'name' | 'uuid' | 'host' | 'source_kind' | 'state' | 'pid' | 'created_at' | 'updated_at' | 'started_at'>>;
    const sizes = this.#sizesOf(rows);
    const tags = this.tagsOf(rows.map((r) => r.name));
    const items = rows.map((r): VmSummary => {
      const size = sizes.get(r.name);
      return {
        name: r.name,
        uuid: r.uuid,
        host: r.host,
        state: (VM_STATES as readonly string[]).includes(r.state) ? (r.state as StoredVmState) : 'stopped',
        pid: r.pid ?? undefined,
        sourceKind: r.source_kind,
        cpus: size?.cpus ?? 0,
        memoryBytes: size?.memoryBytes ?? 0,
        tags: tags.get(r.name) ?? [],
        createdAt: r.created_at,
        startedAt: r.started_at ?? undefined,
      };
    });
    return { items, total };
  }

  /**
   * CPUs and memory of listed VMs, from their specs, remembered by the row's updated_at (every
   * write of a VM changes it, this process's or another's): a listing parses only the specs
   * that changed since the last one.
   */
  readonly #sizes = new Map<string, { updatedAt: string; cpus: number; memoryBytes: number }>();

  #sizesOf(rows: Array<{ name: string; updated_at: string }>): Map<string, { cpus: number; memoryBytes: number }> {
    const out = new Map<string, { cpus: number; memoryBytes: number }>();
    const stale: string[] = [];
    for (const r of rows) {
      const known = this.#sizes.get(r.name);
      if (known && known.updatedAt === r.updated_at) out.set(r.name, known);
      else stale.push(r.name);
    }
    if (this.#sizes.size + stale.length > 200_000) this.#sizes.clear();
    for (let i = 0; i < stale.length; i += 500) {
      const slice = stale.slice(i, i + 500);
      const specs = this.#sql(`SELECT name, spec, updated_at FROM vms WHERE name IN (${slice.map(() => '?').join(', ')})`).all(...slice) as Array<{ name: string; spec: string; updated_at: string }>;
      for (const r of specs) {
        const spec = jsonOr<{ cpu?: { count?: unknown }; memory?: { bytes?: unknown } }>(r.spec, {});
        const size = { updatedAt: r.updated_at, cpus: typeof spec.cpu?.count === 'number' ? spec.cpu.count : 0, memoryBytes: typeof spec.memory?.bytes === 'number' ? spec.memory.bytes : 0 };
        this.#sizes.set(r.name, size);
        out.set(r.name, size);
      }
    }
    return out;
  }

  /** How many VMs each host has. */
  countVmsByHost(): Map<string, number> {
    const rows = this.#sql('SELECT host, COUNT(*) AS n FROM vms GROUP BY host').all() as Array<{ host: string; n: number }>;
    return new Map(rows.map((r) => [r.host, r.n]));
  }

  // ---------- tags ----------

  tagsOf(names: string[]): Map<string, string[]> {
    const out = new Map<string, string[]>();
    // in slices: both databases cap the number of bound parameters
    for (let i = 0; i < names.length; i += 500) {
      const slice = names.slice(i, i + 500);
      const rows = this.#sql(`SELECT vm, tag FROM vm_tags WHERE vm IN (${slice.map(() => '?').join(', ')}) ORDER BY vm, tag`).all(...slice) as Array<{ vm: string; tag: string }>;
      for (const r of rows) {
        const list = out.get(r.vm) ?? [];
        list.push(r.tag);
        out.set(r.vm, list);
      }
    }
    return out;
  }

  /** Replaces a VM's tags. */
  setTags(name: string, tags: string[]): void {
    this.getVm(name);
    this.#db.transaction(() => {
      this.#sql('DELETE FROM vm_tags WHERE vm = ?').run(name);
      const add = this.#sql('INSERT INTO vm_tags (vm, tag) VALUES (?, ?)');
      for (const t of new Set(tags)) add.run(name, t);
    });
  }

  // ---------- users and tokens (the server) ----------

  countUsers(): number {
    return (this.#sql('SELECT COUNT(*) AS n FROM users').get() as { n: number }).n;
  }

  addUser(user: Omit<StoredUser, 'createdAt'>, firstToken?: Omit<StoredToken, 'user' | 'createdAt'>): StoredUser {
    const createdAt = new Date().toISOString();
    try {
      this.#db.transaction(() => {
        this.#sql('INSERT INTO users (name, role, created_at, created_by) VALUES (?, ?, ?, ?)').run(user.name, user.role, createdAt, user.createdBy ?? null);
        if (firstToken) this.addToken({ ...firstToken, user: user.name });
      });
    } catch (e) {
      if (isUniqueViolation(e)) throw new PolyvisorError('ERR_EXISTS', `a user named ${user.name} already exists`);
      throw e;
    }
    return { ...user, createdAt };
  }

  listUsers(): StoredUser[] {
    return (this.#sql('SELECT name, role, created_at, created_by FROM users ORDER BY name').all() as Array<{ name: string; role: string; created_at: string; created_by: string | null }>).map((r) => ({
      name: r.name,
      role: ((ROLES as readonly string[]).includes(r.role) ? r.role : 'viewer') as Role,
      createdAt: r.created_at,
      createdBy: r.created_by ?? undefined,
    }));
  }

  findUser(name: string): StoredUser | undefined {
    return this.listUsers().find((u) => u.name === name);
  }

  /** Removes a user and its tokens; refuses to remove the last admin (nobody could manage users). */
  removeUser(name: string): void {
    this.#db.transaction(() => {
      const user = this.findUser(name);
      if (!user) throw new PolyvisorError('ERR_NOT_FOUND', `no user named ${name}`);
      const admins = (this.#sql("SELECT COUNT(*) AS n FROM users WHERE role = 'admin'").get() as { n: number }).n;
      if (user.role === 'admin' && admins <= 1) throw new PolyvisorError('ERR_VM_STATE', `${name} is the last admin; add another admin first`);
      this.#sql('DELETE FROM tokens WHERE user_name = ?').run(name);
      this.#sql('DELETE FROM users WHERE name = ?').run(name);
    }, 'immediate');
  }

  addToken(token: Omit<StoredToken, 'createdAt'>): void {
    this.#sql('INSERT INTO tokens (hash, kind, user_name, vm, created_at, expires_at, used_at) VALUES (?, ?, ?, ?, ?, ?, NULL)')
      .run(token.hash, token.kind, token.user, token.vm ?? null, new Date().toISOString(), token.expiresAt ?? null);
  }

  /** The user an API token belongs to. */
  userOfToken(hash: string): StoredUser | undefined {
    const r = this.#sql("SELECT u.name, u.role, u.created_at, u.created_by FROM tokens t JOIN users u ON u.name = t.user_name WHERE t.hash = ? AND t.kind = 'api'")
      .get(hash) as { name: string; role: string; created_at: string; created_by: string | null } | undefined;
    if (!r || !(ROLES as readonly string[]).includes(r.role)) return undefined;
    return { name: r.name, role: r.role as Role, createdAt: r.created_at, createdBy: r.created_by ?? undefined };
  }

  /**
   * Marks a console token used, if it is one for `vm`, unused and not expired at `now`; one
   * UPDATE decides, so two requests racing with the same token cannot both win.
   */
  useConsoleToken(hash: string, vm: string, now: string): string | undefined {
    const row = this.#sql("SELECT user_name FROM tokens WHERE hash = ? AND kind = 'console' AND vm = ?").get(hash, vm) as { user_name: string } | undefined;
    if (!row) return undefined;
    const r = this.#sql("UPDATE tokens SET used_at = ? WHERE hash = ? AND kind = 'console' AND used_at IS NULL AND expires_at > ?").run(now, hash, now);
    return r.changes === 1 ? row.user_name : undefined;
  }

  /** Forgets console tokens that expired before `now`. */
  pruneTokens(now: string): void {
    this.#sql("DELETE FROM tokens WHERE kind = 'console' AND expires_at < ?").run(now);
  }

  // ---------- audit log (the server) ----------

  addAudit(e: Omit<AuditEntry, 'seq'>): number {
    return this.#db.transaction(() => {
      const seq = (this.#sql('SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM audit').get() as { seq: number }).seq;
      this.#sql('INSERT INTO audit (seq, at, user_name, role, method, route, target, status, job) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)')
        .run(seq, e.at, e.user ?? null, e.role ?? null, e.method, e.route, e.target, e.status, e.job ?? null);
      return seq;
    }, 'immediate');
  }

  /** The newest entries first; `before` pages back. */
  listAudit(q: { before?: number; limit: number; user?: string }): AuditEntry[] {
    const where: string[] = [];
    const args: SqlParam[] = [];
    if (q.before !== undefined) (where.push('seq < ?'), args.push(q.before));
    if (q.user !== undefined) (where.push('user_name = ?'), args.push(q.user));
    const rows = this.#sql(`SELECT * FROM audit ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY seq DESC LIMIT ?`)
      .all(...args, q.limit) as Array<{ seq: number; at: string; user_name: string | null; role: string | null; method: string; route: string; target: string; status: number; job: string | null }>;
    return rows.map((r) => ({ seq: r.seq, at: r.at, user: r.user_name ?? undefined, role: r.role ?? undefined, method: r.method, route: r.route, target: r.target, status: r.status, job: r.job ?? undefined }));
  }

  // ---------- jobs (the server) ----------

  addJob(job: Pick<StoredJob, 'id' | 'kind' | 'target' | 'createdBy'>): StoredJob {
    const createdAt = new Date().toISOString();
    this.#sql("INSERT INTO jobs (id, kind, target, state, done, total, created_by, created_at) VALUES (?, ?, ?, 'queued', 0, 0, ?, ?)").run(job.id, job.kind, job.target, job.createdBy ?? null, createdAt);
    return this.getJob(job.id);
  }

  findJob(id: string): StoredJob | undefined {
    const r = this.#sql('SELECT * FROM jobs WHERE id = ?').get(id) as JobRow | undefined;
    return r && this.#jobFromRow(r);
  }

  getJob(id: string): StoredJob {
    const j = this.findJob(id);
    if (!j) throw new PolyvisorError('ERR_NOT_FOUND', `no job ${id}`);
    return j;
  }

  /** The newest jobs first; `before` (a creation time) pages back. */
  listJobs(q: { state?: JobState; before?: string; limit: number }): StoredJob[] {
    const where: string[] = [];
    const args: SqlParam[] = [];
    if (q.state !== undefined) (where.push('state = ?'), args.push(q.state));
    if (q.before !== undefined) (where.push('created_at < ?'), args.push(q.before));
    const rows = this.#sql(`SELECT * FROM jobs ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at DESC, id LIMIT ?`).all(...args, q.limit) as JobRow[];
    return rows.map((r) => this.#jobFromRow(r));
  }

  updateJob(id: string, change: Partial<Pick<StoredJob, 'state' | 'done' | 'total' | 'startedAt' | 'endedAt' | 'error' | 'result'>>): void {
    const sets: string[] = [];
    const args: SqlParam[] = [];
    const col = (name: string, v: SqlParam) => (sets.push(`${name} = ?`), args.push(v));
    if (change.state !== undefined) col('state', change.state);
    if (change.done !== undefined) col('done', Math.round(change.done));
    if (change.total !== undefined) col('total', Math.round(change.total));
    if (change.startedAt !== undefined) col('started_at', change.startedAt);
    if (change.endedAt !== undefined) col('ended_at', change.endedAt);
    if (change.error !== undefined) col('error', JSON.stringify(change.error));
    if (change.result !== undefined) col('result', JSON.stringify(change.result));
    if (sets.length) this.#sql(`UPDATE jobs SET ${sets.join(', ')} WHERE id = ?`).run(...args, id);
  }

  /** Jobs a server that stopped left queued or running: nothing runs them any more. */
  failOrphanJobs(message: string): number {
    const r = this.#sql("UPDATE jobs SET state = 'failed', ended_at = ?, error = ? WHERE state IN ('queued', 'running')")
      .run(new Date().toISOString(), JSON.stringify({ code: 'ERR_ABORTED', message }));
    return r.changes;
  }

  addJobLog(job: string, seq: number, line: string): void {
    // a log line is a tool's output, shown as text: a NUL in it (which the store refuses,
    // ./db.ts) becomes U+FFFD rather than failing the job
    this.#sql('INSERT INTO job_log (job, seq, at, line) VALUES (?, ?, ?, ?)').run(job, seq, new Date().toISOString(), line.replaceAll('\0', '\uFFFD'));
  }

  jobLog(job: string, limit: number): JobLogLine[] {
    return this.#sql('SELECT seq, at, line FROM job_log WHERE job = ? ORDER BY seq LIMIT ?').all(job, limit) as JobLogLine[];
  }

  #jobFromRow(r: JobRow): StoredJob {
    return {
      id: r.id,
      kind: r.kind,
      target: r.target,
      state: (JOB_STATES as readonly string[]).includes(r.state) ? (r.state as JobState) : 'failed',
      done: Number(r.done),
      total: Number(r.total),
      createdBy: r.created_by ?? undefined,
      createdAt: r.created_at,
      startedAt: r.started_at ?? undefined,
      endedAt: r.ended_at ?? undefined,
      error: jsonOr<{ code: string; message: string } | undefined>(r.error, undefined),
      result: jsonOr<unknown>(r.result, undefined),
    };
  }

  /** Statements the server runs on every request, prepared once (their text varies only by filters). */
  readonly #statements = new Map<string, Statement>();

  #sql(text: string): Statement {
    let st = this.#statements.get(text);
    if (!st) {
      if (this.#statements.size >= 512) this.#statements.clear();
      st = this.#db.prepare(text);
      this.#statements.set(text, st);
    }
    return st;
  }

  #fromRow(r: VmRow): StoredVm {
    const parse = <T>(what: string, text: string, schema: z.ZodMiniType<T>): T => {
      try {
        return schema.parse(JSON.parse(text));
      } catch (e) {
        throw new PolyvisorError('ERR_CORRUPT', `VM ${r.name}: the stored ${what} is not valid: ${(e as Error).message.slice(0, 200)}`, { file: this.file, structure: `vms.${what}`, cause: e });
      }
    };
    const state = (VM_STATES as readonly string[]).includes(r.state) ? (r.state as StoredVmState) : 'stopped';
    return {
      name: r.name,
      uuid: r.uuid,
      host: r.host,
      source: r.source,
      sourceKind: r.source_kind,
      spec: parse('spec', r.spec, VmSpecSchema),
      disks: parse('disks', r.disks, z.array(StoredDiskSchema)),
      state,
      pid: r.pid ?? undefined,
      createdAt: r.created_at,
      updatedAt: r.updated_at,
      startedAt: r.started_at ?? undefined,
    };
  }
}
