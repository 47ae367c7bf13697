/**
 * The web console's sign-in and roles, in a real browser (no boot): a token the server does not
 * know is refused with a message; a viewer sees the inventory and a VM's settings but no action
 * and no console; the server answers deep links with the console and unknown API paths with
 * its JSON 404; a console WebSocket is refused without a valid single-use token.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { launchBrowser, sampleOva, startConsoleServer, watchPage } from './helpers.js';

test('web console: a wrong token is refused; a viewer sees no actions and no console', { timeout: 300_000 }, async (t) => {
  const server = await startConsoleServer(t);
  const { app, url, adminToken } = server;
  const auth = { authorization: `Bearer ${adminToken}` };

  // a VM in the store, imported through the API (not started)
  const ova = await sampleOva(server.dir);
  const up = await app.inject({ method: 'PUT', url: `/api/library/files/uploads/${basename(ova)}`, headers: { ...auth, 'content-type': 'application/octet-stream', 'content-length': String((await stat(ova)).size) }, payload: createReadStream(ova) });
  assert.equal(up.statusCode, 201, up.body);
  const imp = await app.inject({ method: 'POST', url: '/api/vms', headers: auth, payload: { source: `uploads/${basename(ova)}`, name: 'db01' } });
  assert.equal(imp.statusCode, 202, imp.body);
  const job = await app.polyvisor.jobs.settled(imp.json().id);
  assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
  assert.equal((await app.inject({ method: 'PUT', url: '/api/vms/db01/tags', headers: auth, payload: { tags: ['prod', 'db'] } })).statusCode, 200);
  const viewer = await app.inject({ method: 'POST', url: '/api/users', headers: auth, payload: { name: 'vera', role: 'viewer' } });
  assert.equal(viewer.statusCode, 201, viewer.body);
  const viewerToken = viewer.json().token as string;

  // the server: deep links get the console, unknown API paths the API's 404, consoles need a token
  const deep = await fetch(`${url}/vms/db01`);
  assert.equal(deep.status, 200);
  assert.match(deep.headers.get('content-type') ?? '', /text\/html/);
  assert.match(deep.headers.get('content-security-policy') ?? '', /default-src 'self'/);
  assert.match(await deep.text(), /<div id="root">/);
  const missing = await fetch(`${url}/api/nothing-here`);
  assert.equal(missing.status, 404);
  assert.equal(((await missing.json()) as { error: { code: string } }).error.code, 'ERR_NOT_FOUND');
  assert.equal((await fetch(`${url}/assets/missing.js`)).status, 404);
  const ws = await app.inject({ method: 'GET', url: '/api/vms/db01/console/vnc?token=pv_nope' });
  assert.equal(ws.statusCode, 401, ws.body);

  const browser = await launchBrowser(t);
  const page = await browser.newPage();
  const { errors } = watchPage(page);
  page.setDefaultTimeout(30_000);

  // a token the server does not know
  await page.goto(url);
  await page.getByLabel('API token').fill('pv_' + 'x'.repeat(43));
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').getByText('The server does not know this token.').waitFor();
  assert.equal(await page.getByRole('heading', { name: 'Inventory' }).count(), 0);

  // a viewer: the inventory with search and tags, a VM's settings, no actions, no console
  await page.getByLabel('API token').fill(viewerToken);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Inventory' }).waitFor();
  await page.getByText('vera').first().waitFor();
  const row = page.getByRole('row', { name: /db01/ });
  await row.waitFor();
  assert.match(await row.innerText(), /stopped[\s\S]*local[\s\S]*db[\s\S]*prod/);
  await page.getByRole('searchbox').fill('nomatch');
  await page.getByText('No VM matches.').waitFor();
  await page.getByRole('searchbox').fill('prod');
  await row.waitFor();
  await row.getByRole('link', { name: 'db01' }).click();
  await page.getByRole('heading', { name: /db01/ }).waitFor();
  await page.getByRole('tab', { name: 'Disks' }).click();
  await page.getByRole('tabpanel').getByText('sata').waitFor();
  assert.equal(await page.getByRole('toolbar', { name: 'VM actions' }).count(), 0, 'a viewer gets no action buttons');
  await page.getByRole('tab', { name: 'Console', exact: true }).click();
  await page.getByText('Opening a console needs the operator role.').waitFor();
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Import' }).click();
  await page.getByText('Importing needs the operator role.').waitFor();

  // the session ends with the token
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('API token').waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('polyvisor.token')), null);
  // the browser logs the refused sign-in's 401; nothing else may fail
  assert.deepEqual(errors.filter((e) => !/status of 401/.test(e)), []);
});
