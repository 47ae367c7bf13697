/**
 * The store's schema, as numbered migrations applied in order inside one transaction each.
 *
 * The SQL keeps to what both SQLite and PostgreSQL run (TEXT, INTEGER, BIGINT, PRIMARY KEY,
 * REFERENCES, ON CONFLICT ... DO UPDATE): the embedded SQLite store is the default, and a
 * server deployment may point the same data layer at PostgreSQL. JSON documents (a VmSpec,
 * a disk list) are stored as TEXT, validated by their zod schemas when read back.
 */
export const MIGRATIONS: string[][] = [
  [
    `CREATE TABLE hosts (
      name TEXT PRIMARY KEY,
      uri TEXT NOT NULL,
      driver TEXT NOT NULL,
      added_at TEXT NOT NULL
    )`,
    `CREATE TABLE vms (
      name TEXT PRIMARY KEY,
      uuid TEXT NOT NULL,
      host TEXT NOT NULL,
      source TEXT NOT NULL,
      source_kind TEXT NOT NULL,
      spec TEXT NOT NULL,
      disks TEXT NOT NULL,
      state TEXT NOT NULL,
      pid INTEGER,
      created_at TEXT NOT NULL,
      updated_at TEXT NOT NULL,
      started_at TEXT
    )`,
    `CREATE INDEX vms_host ON vms (host)`,
  ],
  // 2: how a host is reached beyond its URI (an SSH key, the storage folder on the host)
  [`ALTER TABLE hosts ADD COLUMN options TEXT NOT NULL DEFAULT '{}'`],
  // 3: the server (src/server): users and their tokens (only a SHA-256 of each token is kept),
  // the audit log, jobs with their log lines, and VM tags. Sequence numbers are assigned by the
  // writer (MAX + 1 inside the inserting transaction), not by AUTOINCREMENT or SERIAL, so the
  // same statements run on both databases.
  [
    `CREATE TABLE users (
      name TEXT PRIMARY KEY,
      role TEXT NOT NULL,
      created_at TEXT NOT NULL,
      created_by TEXT
    )`,
    `CREATE TABLE tokens (
      hash TEXT PRIMARY KEY,
      kind TEXT NOT NULL,
      user_name TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
      vm TEXT,
      created_at TEXT NOT NULL,
      expires_at TEXT,
      used_at TEXT
    )`,
    `CREATE INDEX tokens_user ON tokens (user_name)`,
    `CREATE TABLE audit (
      seq BIGINT PRIMARY KEY,
      at TEXT NOT NULL,
      user_name TEXT,
      role TEXT,
      method TEXT NOT NULL,
      route TEXT NOT NULL,
      target TEXT NOT NULL,
      status INTEGER NOT NULL,
      job TEXT
    )`,
    `CREATE TABLE jobs (
      id TEXT PRIMARY KEY,
      kind TEXT NOT NULL,
      target TEXT NOT NULL,
      state TEXT NOT NULL,
      done BIGINT NOT NULL,
      total BIGINT NOT NULL,
      created_by TEXT,
      created_at TEXT NOT NULL,
      started_at TEXT,
      ended_at TEXT,
      error TEXT,
      result TEXT
    )`,
    `CREATE INDEX jobs_created ON jobs (created_at)`,
    `CREATE TABLE job_log (
      job TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
      seq INTEGER NOT NULL,
      at TEXT NOT NULL,
      line TEXT NOT NULL,
      PRIMARY KEY (job, seq)
    )`,
    `CREATE TABLE vm_tags (
      vm TEXT NOT NULL REFERENCES vms (name) ON DELETE CASCADE,
      tag TEXT NOT NULL,
      PRIMARY KEY (vm, tag)
    )`,
    `CREATE INDEX vm_tags_tag ON vm_tags (tag)`,
  ],
];
