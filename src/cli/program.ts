/**
 * The `polyvisor` command. Each command group lives in its own file and calls the library;
 * this file only wires them together and turns errors into messages and exit statuses.
 * ./main.ts starts it (from the bundle when there is one).
 */
import { Command, CommanderError } from 'commander';
import { readFileSync } from 'node:fs';
import { diskCommand } from './disk.js';
import { machineCommands } from './machines.js';
import { verifyCommand } from './verify.js';
import { reportError } from './run.js';
import { trace } from '../util/trace.js';

const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };

/**
 * The VM layer (codecs, XML, tar and schema libraries) takes about 0.1 s to load: it is loaded
 * only when a `vm` command or the help needs it, so `disk` commands start as fast as they can.
 */
function needsVm(argv: string[]): boolean {
  const args = argv.slice(2);
  return args.length === 0 || args.some((a) => a === 'vm' || a === 'help' || a === '-h' || a === '--help');
}

/** The guest layer loads only for `guest` commands and the help, as the VM layer does. */
function needsGroup(argv: string[], group: string): boolean {
  const args = argv.slice(2);
  return args.length === 0 || args.some((a) => a === group || a === 'help' || a === '-h' || a === '--help');
}

export async function buildProgram(argv: string[] = process.argv): Promise<Command> {
  const program = new Command('polyvisor')
    .description('Polyvisor: read, write, convert, run and move VMs across Xen, Hyper-V, VMware and KVM/QEMU')
    .version(pkg.version, '-V, --version')
    .showHelpAfterError('(run with --help for usage)')
    .option('--data <dir>', 'the folder of the VM store (default: $POLYVISOR_DATA, else ~/.local/share/polyvisor)')
    .option('--database <url>', "keep the store's database on a PostgreSQL server (postgres://USER@HOST/DATABASE; default: $POLYVISOR_DATABASE, else the SQLite file in the data folder)")
    .exitOverride();
  program.addCommand(diskCommand());
  program.addCommand(verifyCommand());
  for (const c of machineCommands()) program.addCommand(c);
  if (needsVm(argv)) program.addCommand((await import('./vm.js')).vmCommand());
  if (needsGroup(argv, 'guest')) {
    const guest = (await import('./guest.js')).guestCommand();
    (await import('./guest-adapt.js')).addAdaptCommands(guest);
    program.addCommand(guest);
  }
  // the server (Fastify, the API, the web console) loads only for `serve`
  if (needsGroup(argv, 'serve')) program.addCommand((await import('./serve.js')).serveCommand());
  // Commander exits with 1 on usage errors; scripts expect 2 for a wrong command line.
  const override = (cmd: Command) => {
    cmd.exitOverride();
    cmd.commands.forEach(override);
  };
  override(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  trace('modules loaded');
  // bin/polyvisor holds NODE_EXTRA_CA_CERTS back from Node when no PostgreSQL server is named
  // (see there); the processes Polyvisor starts get it back
  const ca = process.env.POLYVISOR_EXTRA_CA_CERTS;
  if (ca !== undefined) {
    process.env.NODE_EXTRA_CA_CERTS = ca;
    delete process.env.POLYVISOR_EXTRA_CA_CERTS;
  }
  const program = await buildProgram(argv);
  trace('command line parsed');
  const json = argv.includes('--json') || argv.includes('--output=json');
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      // --help and --version end here with exitCode 0
      process.exitCode = e.exitCode === 0 ? 0 : 2;
      return;
    }
    reportError(e, json);
  }
}

