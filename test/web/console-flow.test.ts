/**
 * The web console end to end, in a real browser against a real server, with one real boot
 * (issue 7): sign in, upload an OVA and see what `vm inspect` finds in it, import it and watch
 * the job finish, start the VM, see the guest's marker on its serial console and its screen
 * on the VNC console, stop it, and export it as an XVA that Polyvisor reads back.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { openVmSource } from '../../src/vm/source.js';
import { GUEST_MARKER } from '../guests/build.js';
import { launchBrowser, openRawConsole, sampleOva, signIn, startConsoleServer, watchPage } from './helpers.js';

test('web console: log in, import an uploaded OVA, start it, its consoles, stop it, export it as XVA (one TCG boot)', { timeout: 600_000 }, async (t) => {
  const server = await startConsoleServer(t);
  const ova = await sampleOva(server.dir);
  const browser = await launchBrowser(t);
  const page = await browser.newPage();
  const { errors } = watchPage(page);
  page.setDefaultTimeout(30_000);

  await signIn(page, server.url, server.adminToken);
  await page.getByText('No VMs yet.').waitFor();

  // upload, with its progress bar, then the inspection of what arrived
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Import' }).click();
  await page.getByLabel('File', { exact: true }).setInputFiles(ova);
  await page.getByRole('button', { name: 'Upload' }).click();
  await page.getByText('Uploaded as uploads/sample.ova').waitFor();
  assert.equal(await page.getByRole('progressbar', { name: 'upload progress' }).getAttribute('aria-valuenow'), '100');
  const inspection = page.getByTestId('inspection');
  await inspection.waitFor();
  const inspected = await inspection.innerText();
  assert.match(inspected, /sample \(ova\)/, inspected);
  assert.match(inspected, /sample-disk1\.vmdk in uploads\/sample\.ova \(vmdk, 64 MiB\)/, 'the OVA carries the disk as a 64 MiB VMDK, named by its library path');
  assert.match(inspected, /What the local engine would not carry as it is/);

  // import, followed live until the job ends
  await page.getByLabel('Name', { exact: true }).fill('web01');
  await page.getByRole('button', { name: 'Import', exact: true }).click();
  const job = page.locator('section.job').first();
  await job.and(page.locator('[data-job-state="succeeded"], [data-job-state="failed"]')).waitFor({ timeout: 180_000 });
  assert.equal(await job.getAttribute('data-job-state'), 'succeeded', await job.innerText());
  assert.equal(await job.getByRole('progressbar').getAttribute('aria-valuenow'), '100');
  assert.match((await job.locator('pre.log').textContent()) ?? '', /importing uploads\/sample\.ova as web01/);
  await page.getByRole('link', { name: 'Open web01' }).click();

  // the VM page: settings from the VmSpec, then start it
  await page.getByRole('heading', { name: /web01/ }).waitFor();
  const settings = await page.getByRole('tabpanel').innerText();
  assert.match(settings, /CPUs\s+1/);
  assert.match(settings, /Memory\s+256 MiB/);
  await page.getByRole('button', { name: 'Start' }).click();
  await page.locator('[data-vm-state="running"]').waitFor();

  // the serial console shows what the guest printed (the log's tail, then live)
  await page.getByRole('tab', { name: 'Serial console' }).click();
  const serial = page.getByTestId('serial-output');
  await serial.getByText(GUEST_MARKER).waitFor({ timeout: 120_000 });
  await serial.getByText('tick').first().waitFor();

  // the graphical console: noVNC connected through the proxy, drawing the guest's screen
  await page.getByRole('tab', { name: 'Console', exact: true }).click();
  await page.locator('.vnc [data-status="connected"]').waitFor();
  await page.waitForFunction(() => {
    const c = document.querySelector<HTMLCanvasElement>('[data-testid="vnc-screen"] canvas');
    if (!c || c.width < 320) return false;
    const px = c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data;
    // text on the screen: some pixels differ from the first one
    for (let i = 4; i < px.length; i += 4 * 97) if (px[i] !== px[0] || px[i + 1] !== px[1] || px[i + 2] !== px[2]) return true;
    return false;
  });
  // the special keys reach the guest (its init ignores Ctrl+Alt+Del; F2 is a key like another)
  await page.getByRole('button', { name: 'Ctrl+Alt+Del' }).click();
  await page.getByRole('button', { name: 'F2', exact: true }).click();
  assert.equal(await page.locator('.vnc [data-status="connected"]').count(), 1);

  // the proxy itself: a console token opens one session once, from this server's pages only
  const consoleToken = async () => {
    const r = await server.app.inject({ method: 'POST', url: '/api/vms/web01/console-token', headers: { authorization: `Bearer ${server.adminToken}` } });
    assert.equal(r.statusCode, 201, r.body);
    return r.json().token as string;
  };
  const once = await consoleToken();
  const raw = await openRawConsole(server.url, `/api/vms/web01/console/serial?token=${once}`);
  assert.equal(raw.status, 101);
  await raw.until(new RegExp(GUEST_MARKER));
  await raw.until(/tick\s+tick/);
  raw.close();
  assert.equal((await openRawConsole(server.url, `/api/vms/web01/console/serial?token=${once}`)).status, 401, 'a console token works once');
  assert.equal((await openRawConsole(server.url, `/api/vms/web01/console/vnc?token=${await consoleToken()}`, { origin: 'http://elsewhere.example' })).status, 403);
  const vnc = await openRawConsole(server.url, `/api/vms/web01/console/vnc?token=${await consoleToken()}`);
  assert.equal(vnc.status, 101);
  await vnc.until(/^RFB 003\.008\n/, 10_000);
  vnc.close();

  // stop: ACPI first; the held guest ignores it, so it is forced after 2 s
  await page.getByRole('button', { name: 'Stop…' }).click();
  const stopDialog = page.getByRole('dialog', { name: 'Stop web01' });
  await stopDialog.getByLabel('Seconds before forcing it off').fill('2');
  await stopDialog.getByRole('button', { name: 'Stop' }).click();
  await page.locator('[data-vm-state="stopped"]').waitFor({ timeout: 60_000 });

  // export as XVA, as a job
  await page.getByRole('button', { name: 'Export / convert…' }).click();
  const exportDialog = page.getByRole('dialog', { name: 'Export web01' });
  await exportDialog.getByLabel('Target').selectOption('xva');
  await exportDialog.getByRole('button', { name: 'Export' }).click();
  const exportJob = page.locator('section.job').first();
  await exportJob.and(page.locator('[data-job-state="succeeded"], [data-job-state="failed"]')).waitFor({ timeout: 180_000 });
  assert.equal(await exportJob.getAttribute('data-job-state'), 'succeeded', await exportJob.innerText());
  await exportJob.getByText('exports/web01-xva/web01.xva', { exact: true }).waitFor();
  const xva = join(server.data, 'library', 'exports', 'web01-xva', 'web01.xva');
  assert.ok((await stat(xva)).size > 1 << 20);
  const back = await openVmSource(xva);
  try {
    assert.equal(back.kind, 'xva');
    assert.equal(back.spec.memory.bytes, 256 << 20);
  } finally {
    await back.close();
  }

  // the jobs page lists both jobs, ended
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Jobs' }).click();
  await page.getByRole('link', { name: 'import web01' }).waitFor();
  await page.getByRole('link', { name: 'export web01' }).waitFor();
  assert.equal(await page.locator('tr[data-job-id] .state-succeeded').count(), 2);

  assert.deepEqual(errors.filter((e) => !/favicon/.test(e)), [], 'the page ran without script errors');
});
