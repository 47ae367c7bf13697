/**
 * The xl driver's parts that need no Xen host: the xen+ssh URI parser, quoting for the remote
 * shell (checked against real shells: dash and bash parse each quoted command line back into
 * the same arguments), VM name checks, `xl list` parsing against output captured from the
 * nested Xen 4.17 host (test/xen/fixtures), and the capability manifest.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { operationsOf } from '../../src/hosts/driver.js';
import { XenDriver } from '../../src/hosts/xen/driver.js';
import { checkDomainName } from '../../src/hosts/xen/names.js';
import { shellCommand, shellQuote, shellScript } from '../../src/hosts/xen/shell.js';
import { formatXenUri, parseXenUri } from '../../src/hosts/xen/uri.js';
import { parseXlList } from '../../src/hosts/xen/xl-list.js';
import { isPolyvisorError } from '../../src/errors.js';
import { tempDir, throwsCode } from '../helpers.js';

const FIXTURES = join(process.cwd(), 'test/xen/fixtures');

describe('xen+ssh URI', () => {
  test('user, host and port, with their defaults', () => {
    assert.deepEqual(parseXenUri('xen+ssh://root@127.0.0.1:2222'), { user: 'root', host: '127.0.0.1', port: 2222 });
    assert.deepEqual(parseXenUri('xen+ssh://dom0.example.org'), { user: 'root', host: 'dom0.example.org', port: 22 });
    assert.deepEqual(parseXenUri('xen+ssh://admin@dom0/'), { user: 'admin', host: 'dom0', port: 22 });
    assert.deepEqual(parseXenUri('XEN+SSH://root@[fe80::1]:2200'), { user: 'root', host: 'fe80::1', port: 2200 });
    assert.deepEqual(parseXenUri('xen+ssh://[::1]'), { user: 'root', host: '::1', port: 22 });
  });

  test('the canonical form always names user and port', () => {
    assert.equal(formatXenUri(parseXenUri('xen+ssh://dom0')), 'xen+ssh://root@dom0:22');
    assert.equal(formatXenUri(parseXenUri('xen+ssh://u@[::1]:2')), 'xen+ssh://u@[::1]:2');
  });

  test('refuses what ssh would read as an option, and every malformed part', () => {
    const bad: Array<[string, string]> = [
      ['ssh://root@host', 'scheme'],
      ['xen://host', 'scheme'],
      ['xen+ssh://', 'no host'],
      ['xen+ssh://root@', 'no host'],
      ['xen+ssh://-oProxyCommand=sh', 'not a host name'],
      ['xen+ssh://-l@host', 'not a valid user'],
      ['xen+ssh://ro ot@host', 'not a valid user'],
      ['xen+ssh://root@ho st', 'not a host name'],
      ['xen+ssh://root@host;reboot', 'not a host name'],
      ['xen+ssh://root@$(reboot)', 'not a host name'],
      ['xen+ssh://root@host:0', 'outside'],
      ['xen+ssh://root@host:65536', 'outside'],
      ['xen+ssh://root@host:22x', 'not a number'],
      ['xen+ssh://root@host:', 'not a number'],
      ['xen+ssh://root@host/path', 'path'],
      ['xen+ssh://root@host?keyfile=/k', 'query'],
      ['xen+ssh://root@[fe80::1', 'bracket'],
      ['xen+ssh://root@[nothex]', 'IPv6'],
      ['xen+ssh://root@[::1]x', 'unexpected'],
      ['xen+ssh://root@host\nProxyCommand', 'not a host name'],
    ];
    for (const [uri, word] of bad) throwsCode(() => parseXenUri(uri), 'ERR_USAGE', word);
  });
});

/** What a POSIX shell makes of a command line: the argument list printf receives. */
function parsedBy(shell: string, args: string[]): string[] {
  const out = execFileSync(shell, ['-c', `printf '%s\\0' ${shellCommand(args)}`]);
  const parts = out.toString('utf8').split('\0');
  parts.pop();
  return parts;
}

const HOSTILE = [
  '',
  ' ',
  'plain',
  'two words',
  "it's",
  "''",
  '"double"',
  '$(touch /tmp/pv-pwned)',
  '`touch /tmp/pv-pwned`',
  '$HOME ${PATH} $0 $1 $@',
  'a;b&&c||d|e',
  'line1\nline2\n',
  '\ttab',
  '*?[a-z]',
  '~root',
  '-rf',
  '--',
  'x=y',
  '#comment',
  '\\back\\slash\\',
  'end\\',
  "'\"'\"'",
  '!history',
  '{a,b}',
  '> /dev/null < /etc/passwd',
  'ümlaut ✓',
  '\x01\x1b[31mred',
];

describe('quoting for the remote shell', () => {
  for (const shell of ['/bin/sh', '/bin/bash']) {
    test(`${shell} reads every hostile argument back byte for byte`, () => {
      assert.deepEqual(parsedBy(shell, HOSTILE), HOSTILE);
      for (const a of HOSTILE) assert.deepEqual(parsedBy(shell, [a]), [a], JSON.stringify(a));
    });
  }

  test('plain words stay unquoted; everything else is single-quoted', () => {
    assert.equal(shellQuote('/var/lib/polyvisor/web-1.cfg'), '/var/lib/polyvisor/web-1.cfg');
    assert.equal(shellQuote('x=y'), "'x=y'");
    assert.equal(shellQuote(''), "''");
    assert.equal(shellQuote("it's"), "'it'\\''s'");
  });

  test('a NUL byte cannot be passed and is refused', () => {
    throwsCode(() => shellQuote('a\0b'), 'ERR_USAGE', 'NUL');
  });

  test('scripts take their inputs as positional parameters, never as code', () => {
    const argv = shellScript('printf "%s|%s" "$1" "$2"', ['$(id)', "a'b c"]);
    const out = execFileSync('/bin/sh', ['-c', shellCommand(argv)]).toString();
    assert.equal(out, "$(id)|a'b c");
  });
});

describe('VM names', () => {
  test('letters, digits, dot, underscore and hyphen are accepted', () => {
    for (const n of ['web', 'web-1', 'a.b_c', 'X', '9lives', 'a'.repeat(64)]) assert.equal(checkDomainName(n), n);
  });

  test('hostile and ambiguous names are refused', () => {
    for (const n of ['', ' web', 'web 1', "it's", '$(reboot)', '`id`', 'a;b', 'a/b', '../etc', '.hidden', '-rf', 'line\nbreak', 'ü', 'a'.repeat(65)]) {
      throwsCode(() => checkDomainName(n), 'ERR_USAGE', 'VM name');
    }
    // xl reads an all-digit name as a domain ID (libxl_domain_qualifier_to_domid)
    throwsCode(() => checkDomainName('42'), 'ERR_USAGE', 'domain ID');
  });

  test('the driver refuses a hostile name before anything reaches the host', async () => {
    const d = new XenDriver({ uri: 'xen+ssh://root@127.0.0.1:1', dataDir: '/nonexistent' });
    await assert.rejects(d.start('$(reboot)'), (e: Error & { code?: string }) => e.code === 'ERR_USAGE');
    await assert.rejects(d.kill('a b'), (e: Error & { code?: string }) => e.code === 'ERR_USAGE');
    await d.dispose();
  });
});

describe('xl list', () => {
  const host = 'xen+ssh://root@127.0.0.1:2222';

  test('output captured from Xen 4.17: dom0, a running, a paused and a shutting-down guest', () => {
    const doms = parseXlList(readFileSync(join(FIXTURES, 'xl-list-4.17.txt'), 'utf8'), host);
    assert.deepEqual(
      doms.map((d) => [d.name, d.domid, d.state, d.flags]),
      [
        ['Domain-0', 0, 'running', 'r-----'],
        ['pv-running', 1, 'running', '-b----'],
        ['pv-paused', 2, 'paused', '--p---'],
        ['pv-halted', 3, 'defined', '---s--'],
      ],
    );
    assert.equal(doms[0]!.memoryMiB, 1024);
    assert.equal(doms[0]!.vcpus, 2);
    assert.ok(doms[0]!.cpuSeconds > 0);
  });

  test('flags: shut down, crashed and dying domains are no longer running', () => {
    const head = 'Name                                        ID   Mem VCPUs\tState\tTime(s)\n';
    const line = (name: string, id: number, flags: string) => `${name.padEnd(40)} ${String(id).padStart(5)}   128     1     ${flags}       0.4\n`;
    const doms = parseXlList(head + line('a', 4, '---s--') + line('b', 5, '----c-') + line('c', 6, '-----d') + line('with spaces in it', 7, '------'), host);
    assert.deepEqual(doms.map((d) => d.state), ['defined', 'defined', 'defined', 'running']);
    assert.equal(doms[3]!.name, 'with spaces in it');
  });

  test('a long name that runs into the ID column', () => {
    const text = 'Name                                        ID   Mem VCPUs\tState\tTime(s)\n' + `${'n'.repeat(60)}     9   256     1     -b----       1.5\n`;
    assert.equal(parseXlList(text, host)[0]!.name, 'n'.repeat(60));
  });

  test('anything else is ERR_HOST naming the host and the line', () => {
    throwsCode(() => parseXlList('', host), 'ERR_HOST', host, 'header');
    throwsCode(() => parseXlList('libxl: error: cannot connect\n', host), 'ERR_HOST', host, 'header');
    const head = 'Name                                        ID   Mem VCPUs\tState\tTime(s)\n';
    throwsCode(() => parseXlList(head + 'garbage line\n', host), 'ERR_HOST', 'line 2');
    throwsCode(() => parseXlList(head + '   1 128 1 r----- 0.1\n', host), 'ERR_HOST', 'line 2');
    throwsCode(() => parseXlList(head + 'x\n'.repeat(50_000), host), 'ERR_HOST', 'lines');
  });
});

describe('XenDriver table', () => {
  test('the manifest lists exactly its filled slots, and is honest about the host', () => {
    const d = new XenDriver({ uri: 'xen+ssh://dom0', dataDir: '/nonexistent' });
    assert.deepEqual(d.capabilities.operations, operationsOf(d));
    assert.deepEqual(d.capabilities.accelerators, ['xen']);
    assert.deepEqual(d.capabilities.diskFormats, ['raw']);
    assert.equal(d.uri, 'xen+ssh://root@dom0:22');
    assert.equal(d.configOf('web'), '/var/lib/polyvisor/web/web.cfg');
  });

  test('a storage folder must be absolute on the host', () => {
    throwsCode(() => new XenDriver({ uri: 'xen+ssh://dom0', storageDir: 'relative/dir' }), 'ERR_USAGE', 'absolute');
  });
});

describe('SSH failures', () => {
  test("a host that does not answer is ERR_HOST quoting the host, the command and ssh's own words", async () => {
    const dir = await tempDir();
    // port 1 on the loopback interface: nothing listens, the connection is refused at once
    const d = new XenDriver({ uri: 'xen+ssh://root@127.0.0.1:1', knownHostsFile: join(dir, 'sub', 'known_hosts'), connectTimeoutSec: 5 });
    try {
      await assert.rejects(d.list(), (e: unknown) => {
        assert.ok(isPolyvisorError(e, 'ERR_HOST'), String(e));
        assert.ok(e.message.includes('host xen+ssh://root@127.0.0.1:1'), e.message);
        assert.ok(e.message.includes('xl list'), e.message);
        assert.match(e.message, /status 255.*Connection refused/s);
        return true;
      });
    } finally {
      await d.dispose();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
