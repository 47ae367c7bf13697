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
];
