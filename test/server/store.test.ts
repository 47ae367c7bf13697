/**
 * The server's tables in the store: a store from before them is upgraded in place (its VMs
 * kept); jobs a stopped server left running are failed on the next start; a VM's tags go with
 * it; audit sequence numbers follow each other.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Jobs } from '../../src/server/jobs.js';
import { MIGRATIONS } from '../../src/store/schema.js';
import { Store } from '../../src/store/store.js';
import { emptySpec } from '../../src/vm/spec.js';
import { tempDir } from '../helpers.js';

describe("the server's tables in the store", () => {
  test('a version 2 store is upgraded: its VMs stay, the server tables appear', async (t) => {
    const dir = await tempDir(t);
    mkdirSync(dir, { recursive: true });
    const db = new Database(join(dir, 'polyvisor.db'));
    db.exec('CREATE TABLE schema_version (version INTEGER NOT NULL)');
    for (const sql of [...MIGRATIONS[0]!, ...MIGRATIONS[1]!]) db.exec(sql);
    db.prepare('INSERT INTO schema_version (version) VALUES (2)').run();
    db.prepare("INSERT INTO vms (name, uuid, host, source, source_kind, spec, disks, state, created_at, updated_at) VALUES ('old', 'u', 'local', '/s', 'xl', ?, '[]', 'stopped', 't', 't')").run(JSON.stringify(emptySpec('old')));
    db.close();
    const store = Store.open(dir);
    t.after(() => store.close());
    assert.deepEqual(store.listVms().map((v) => v.name), ['old']);
    assert.equal(store.countUsers(), 0);
    store.setTags('old', ['a', 'b', 'a']);
    assert.deepEqual(store.tagsOf(['old']).get('old'), ['a', 'b']);
    store.removeVm('old');
    assert.equal(store.tagsOf(['old']).size, 0, 'tags go with their VM');
    const check = new Database(join(dir, 'polyvisor.db'), { readonly: true });
    assert.equal((check.prepare('SELECT version FROM schema_version').get() as { version: number }).version, MIGRATIONS.length);
    check.close();
  });

  test('jobs left queued or running by a stopped server are failed on the next start; audit entries are numbered in order', async (t) => {
    const dir = await tempDir(t);
    const store = Store.open(dir);
    t.after(() => store.close());
    store.addJob({ id: '11111111-1111-4111-8111-111111111111', kind: 'import', target: 'x', createdBy: 'admin' });
    store.updateJob('11111111-1111-4111-8111-111111111111', { state: 'running' });
    const jobs = new Jobs(store);
    const j = store.getJob('11111111-1111-4111-8111-111111111111');
    assert.equal(j.state, 'failed');
    assert.equal(j.error?.code, 'ERR_ABORTED');
    assert.match(j.error!.message, /server stopped/);
    await jobs.close();
    const seqs = [1, 2, 3].map((i) => store.addAudit({ at: new Date().toISOString(), method: 'POST', route: '/r', target: `{"i":${i}}`, status: 200 }));
    assert.deepEqual(seqs, [1, 2, 3]);
    assert.deepEqual(store.listAudit({ limit: 10 }).map((e) => e.seq), [3, 2, 1]);
  });
});
