/** The docs generated from the tables are up to date, and every error code is explained. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { GENERATED, replaceBlock } from '../src/docs.js';
import { ERROR_CODES } from '../src/errors.js';

const root = new URL('../../', import.meta.url);

test('generated blocks in README.md and docs/ match the tables (run npm run docs)', async () => {
  for (const [name, { file, render }] of Object.entries(GENERATED)) {
    const text = await readFile(new URL(file, root), 'utf8');
    assert.equal(replaceBlock(text, name, render()), text, `${file}: block "${name}" is out of date`);
  }
});

test('docs/cli.md names every error code, and no code that does not exist', async () => {
  const text = await readFile(new URL('docs/cli.md', root), 'utf8');
  for (const code of Object.keys(ERROR_CODES)) assert.ok(text.includes(code), `${code} is not documented`);
  for (const m of text.matchAll(/\bERR_[A-Z_]+\b/g)) assert.ok(m[0] in ERROR_CODES, `docs mention unknown code ${m[0]}`);
});
