/**
 * The VM store: which VMs Polyvisor manages, on which host, in which state, and where their
 * disks are. One embedded SQLite database (better-sqlite3) under the data folder; every write
 * is one short transaction, so concurrent CLI commands see each other's changes at once and a
 * killed command never leaves half a record (SQLite's journal rolls it back).
 *
 * The store records what Polyvisor last knew; what actually runs is reconciled by the host
 * layer (../hosts/local.ts) on every command, since QEMU may have ended while no Polyvisor
 * process was watching.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { PolyvisorError } from '../errors.js';
import { VmSpecSchema, type VmSpec } from '../vm/spec.js';
import { MIGRATIONS } from './schema.js';

export const VM_STATES = ['stopped', 'running', 'paused'] as const;
export type StoredVmState = (typeof VM_STATES)[number];

/** How one disk of a stored VM reaches the engine. */
export const StoredDiskSchema = z.object({
  index: z.number().int().min(0),
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
  source: z.string().optional(),
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

export class Store {
  readonly dir: string;
  readonly file: string;
  #db: Database.Database;

  private constructor(dir: string, db: Database.Database, file: string) {
    this.dir = dir;
    this.#db = db;
    this.file = file;
  }

  /** Opens (creating when missing) the store in `dir` and brings its schema up to date. */
  static open(dir: string): Store {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const file = join(dir, 'polyvisor.db');
    let db: Database.Database;
    try {
      db = new Database(file);
      // WAL: readers (ps) never wait for a writer; busy_timeout: two commands at once wait their turn
      db.pragma('journal_mode = WAL');
      // NORMAL: in WAL mode a commit is not synced to disk until a checkpoint; the store cannot
      // be corrupted that way (sqlite.org/pragma.html#pragma_synchronous), only the latest
      // state change lost to a power cut, which the next command's reconciliation corrects.
      // It keeps three fsyncs out of `polyvisor run`'s path to the guest's first output.
      db.pragma('synchronous = NORMAL');
      db.pragma('busy_timeout = 5000');
      db.pragma('foreign_keys = ON');
    } catch (e) {
      throw new PolyvisorError('ERR_IO', `cannot open the store: ${(e as Error).message}`, { file, cause: e });
    }
    const store = new Store(dir, db, file);
    store.#migrate();
    return store;
  }

  close(): void {
    this.#db.close();
  }

  #migrate(): void {
    const db = this.#db;
    db.exec('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)');
    const row = db.prepare('SELECT version FROM schema_version').get() as { version: number } | undefined;
    const current = row?.version ?? 0;
    if (current > MIGRATIONS.length) {
      throw new PolyvisorError('ERR_UNSUPPORTED', `the store has schema version ${current}, newer than this Polyvisor knows (${MIGRATIONS.length}); upgrade Polyvisor`, { file: this.file });
    }
    for (let v = current; v < MIGRATIONS.length; v++) {
      db.transaction(() => {
        for (const sql of MIGRATIONS[v]!) db.exec(sql);
        if (v === 0) db.prepare('INSERT INTO schema_version (version) VALUES (?)').run(1);
        else db.prepare('UPDATE schema_version SET version = ?').run(v + 1);
      }).immediate();
    }
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
      if ((e as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') throw new PolyvisorError('ERR_EXISTS', `a VM named ${vm.name} already exists (choose another with --name)`);
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
      if ((e as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') throw new PolyvisorError('ERR_EXISTS', `a host named ${host.name} already exists`);
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

  #fromRow(r: VmRow): StoredVm {
    const parse = <T>(what: string, text: string, schema: z.ZodType<T>): T => {
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
