/**
 * The VM store's commands: `polyvisor run | start | stop | kill | pause | resume | rm | ps |
 * console`, over the local engine (../hosts/local.ts). `vm import` lives with the other `vm`
 * commands (./vm.ts) and shares `openHost` from here.
 *
 * The library (store, QEMU driver, VM layer) is loaded only when one of these runs, so that
 * `disk` commands keep their start-up time.
 */
import { Command, Option } from 'commander';
import type { Estate } from '../hosts/estate.js';
import type { LocalHost } from '../hosts/local.js';
import { PolyvisorError } from '../errors.js';
import { databaseUrl, dataDir } from '../store/data-dir.js';
import { attachConsole, DETACH_KEY_NAME } from './console.js';
import { adaptationLines } from './adaptation.js';
import { out } from './run.js';
import { saveCodeCache } from './code-cache.js';

export interface HostOptions {
  data?: string;
  database?: string;
  accel?: 'kvm' | 'tcg';
}

/** Opens the local host on the data folder the global `--data` (or $POLYVISOR_DATA) chooses. */
export async function openHost(o: HostOptions): Promise<LocalHost> {
  const { LocalHost } = await import('../hosts/local.js');
  return new LocalHost({ dataDir: dataDir(o.data), database: databaseUrl(o.database), accel: o.accel });
}

/** Opens the estate (the local engine and every added host) on the same data folder. */
export async function openEstate(o: HostOptions): Promise<Estate> {
  const { Estate } = await import('../hosts/estate.js');
  return new Estate({ dataDir: dataDir(o.data), database: databaseUrl(o.database), accel: o.accel });
}

async function withHost<T>(cmd: Command, fn: (host: LocalHost, o: Record<string, any>) => Promise<T>): Promise<T> {
  const o = cmd.optsWithGlobals();
  const host = await openHost(o);
  try {
    return await fn(host, o);
  } finally {
    await host.close();
  }
}

async function withEstate<T>(cmd: Command, fn: (estate: Estate, o: Record<string, any>) => Promise<T>): Promise<T> {
  const o = cmd.optsWithGlobals();
  const estate = await openEstate(o);
  try {
    return await fn(estate, o);
  } finally {
    await estate.close();
  }
}

function notices(host: LocalHost): void {
  for (const n of host.notices) process.stderr.write(`${n}\n`);
}

function uptime(startedAt: string | undefined): string {
  if (!startedAt) return '-';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(startedAt)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  return `${Math.round(s / 3600)}h`;
}

const accelOption = () => new Option('--accel <accel>', 'force the accelerator (default: kvm when a probe guest runs under it, else tcg)').choices(['kvm', 'tcg']);

export function machineCommands(): Command[] {
  const cmds: Command[] = [];

  cmds.push(
    new Command('run')
      .description(`import a VM, start it and attach its serial console; returns when the guest powers off and removes the VM unless --keep (detach: ${DETACH_KEY_NAME})`)
      .argument('<source>', 'descriptor file, package, or exported VM folder')
      .option('--name <name>', "the VM's name in the store (default: from the descriptor)")
      .option('--keep', 'keep the VM in the store after it powers off (disks QEMU cannot read are then converted at import)')
      .option('--persist', "the guest writes to the source disks themselves (default: a throw-away overlay; the source is not modified)")
      .option('--timeout <seconds>', 'kill the VM if it is still running after this many seconds')
      .addOption(accelOption())
      .option('--allow-outside-paths', "follow files outside the descriptor's folder")
      .action(async (source: string, _o, cmd: Command) => {
        await withHost(cmd, async (host, o) => {
          const timeout = o.timeout === undefined ? undefined : Number(o.timeout);
          if (timeout !== undefined && (!Number.isFinite(timeout) || timeout <= 0)) throw new PolyvisorError('ERR_USAGE', `--timeout ${o.timeout}: give a number of seconds`);
          let name: string | undefined;
          let signalled: NodeJS.Signals | undefined;
          const onSignal = (sig: NodeJS.Signals) => {
            signalled = sig;
            if (name) void host.kill(name).catch(() => undefined);
          };
          process.on('SIGINT', onSignal);
          process.on('SIGTERM', onSignal);
          process.on('SIGHUP', onSignal);
          const cleanup = async () => {
            if (!o.keep && name) await host.remove(name, { force: true }).catch(() => undefined);
          };
          try {
            // run boots the guest as it is (adaptation is vm import's and move's step), paused
            // until the console is attached: the first byte the guest prints is seen
            const started = await host.importAndStart(source, { name: o.name, persist: !!o.persist, transient: !o.keep, allowOutsidePaths: o.allowOutsidePaths, adapt: false, whileStarting: saveCodeCache });
            const vm = started.vm;
            name = vm.name;
            // a signal while it started: it ends here, as it would have a moment later
            if (signalled) {
              started.console.destroy();
              throw new PolyvisorError('ERR_ABORTED', `interrupted by ${signalled}`);
            }
            notices(host);
            const attached = attachConsole(started.console);
            let timer: NodeJS.Timeout | undefined;
            if (timeout !== undefined) timer = setTimeout(() => void host.kill(vm.name).catch(() => undefined), timeout * 1000);
            const how = await attached;
            if (timer) clearTimeout(timer);
            if (how === 'detached' && !o.keep) {
              // without --keep the VM belongs to this run: leaving it means ending it
              process.stderr.write(`\npolyvisor: ${DETACH_KEY_NAME}: ${name} is powered off and removed (run --keep leaves it running)\n`);
              await host.kill(name).catch(() => undefined);
              await cleanup();
              return;
            }
            if (how === 'detached') {
              process.stderr.write(`\npolyvisor: detached; ${name} keeps running (polyvisor console ${name} to attach again, polyvisor stop ${name} to stop it)\n`);
              return;
            }
            await host.waitForStop(name, 10_000);
            if (signalled) process.exitCode = 130;
            await cleanup();
          } catch (e) {
            if (name) await host.kill(name).catch(() => undefined);
            await cleanup();
            throw e;
          } finally {
            process.off('SIGINT', onSignal);
            process.off('SIGTERM', onSignal);
            process.off('SIGHUP', onSignal);
          }
        });
      }),
  );

  cmds.push(
    new Command('start')
      .description('start a VM of the store; it runs on after this command returns')
      .argument('<name>')
      .addOption(accelOption())
      .option('--json', 'print machine-readable JSON')
      .action(async (name: string, _o, cmd: Command) => {
        await withEstate(cmd, async (estate, o) => {
          const vm = await estate.start(name);
          notices(estate.local);
          if (o.json) out(JSON.stringify({ name, host: vm.host, state: vm.state, pid: vm.pid ?? null }, null, 2));
          else out(`started ${name} on ${vm.host}${vm.pid ? ` (pid ${vm.pid})` : ''}; polyvisor console ${name} attaches its console`);
        });
      }),
  );

  cmds.push(
    new Command('stop')
      .description('ask the guest to power off (ACPI), and force it off after the timeout')
      .argument('<name>')
      .option('--timeout <seconds>', 'how long the guest gets before it is forced off', '30')
      .option('--json', 'print machine-readable JSON')
      .action(async (name: string, _o, cmd: Command) => {
        await withEstate(cmd, async (estate, o) => {
          const t = Number(o.timeout);
          if (!Number.isFinite(t) || t < 0) throw new PolyvisorError('ERR_USAGE', `--timeout ${o.timeout}: give a number of seconds`);
          const r = await estate.stop(name, { timeoutMs: t * 1000 });
          if (o.json) out(JSON.stringify({ name, stop: r }, null, 2));
          else out(r === 'graceful' ? `${name} powered off` : `${name} did not power off within ${t} s and was forced off`);
        });
      }),
  );

  cmds.push(
    new Command('kill')
      .description('cut the power of a running VM at once')
      .argument('<name>')
      .action(async (name: string, _o, cmd: Command) => {
        await withEstate(cmd, async (estate) => {
          await estate.kill(name);
          out(`${name} killed`);
        });
      }),
  );

  for (const [verb, text] of [
    ['pause', 'freeze a running VM (its CPUs stop; memory is kept)'],
    ['resume', 'let a paused VM run again'],
  ] as const) {
    cmds.push(
      new Command(verb)
        .description(text)
        .argument('<name>')
        .action(async (name: string, _o, cmd: Command) => {
          await withEstate(cmd, async (estate) => {
            await estate[verb](name);
            out(`${name} ${verb === 'pause' ? 'paused' : 'resumed'}`);
          });
        }),
    );
  }

  cmds.push(
    new Command('rm')
      .description("remove a VM from the store, with its overlays and copies (its source is not touched)")
      .argument('<name...>')
      .option('-f, --force', 'kill the VM first if it runs')
      .action(async (names: string[], _o, cmd: Command) => {
        await withEstate(cmd, async (estate, o) => {
          for (const name of names) {
            await estate.remove(name, { force: !!o.force });
            out(`removed ${name}`);
          }
        });
      }),
  );

  cmds.push(
    new Command('ps')
      .description("list the store's VMs and their state (a VM whose QEMU has ended is shown stopped)")
      .option('-a, --all', 'also list stopped VMs (default: running and paused only)')
      .option('--json', 'print machine-readable JSON (every VM, with its spec)')
      .action(async (_o, cmd: Command) => {
        await withEstate(cmd, async (estate, o) => {
          const vms = await estate.list();
          for (const v of vms) if (v.unreachable) process.stderr.write(`polyvisor: host ${v.host} did not answer; ${v.name} shows its last known state: ${v.unreachable}\n`);
          if (o.json) {
            out(JSON.stringify(vms.map((v) => ({ name: v.name, state: v.state, pid: v.pid ?? null, host: v.host, reachable: !v.unreachable, source: v.source, sourceKind: v.sourceKind, startedAt: v.startedAt ?? null, createdAt: v.createdAt, uuid: v.uuid, disks: v.disks, spec: v.spec })), null, 2));
            return;
          }
          const shown = o.all ? vms : vms.filter((v) => v.state !== 'stopped');
          const rows = [['NAME', 'HOST', 'STATE', 'PID', 'UPTIME', 'CPUS', 'MEMORY', 'SOURCE'], ...shown.map((v) => [v.name, v.host, v.state, v.pid ? String(v.pid) : '-', uptime(v.startedAt), String(v.spec.cpu.count), `${Math.round(v.spec.memory.bytes / (1 << 20))}M`, `${v.source} (${v.sourceKind})`])];
          const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
          for (const r of rows) out(r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  '));
          if (!o.all && vms.length > shown.length) out(`(${vms.length - shown.length} stopped; ps --all lists them)`);
        });
      }),
  );

  cmds.push(
    new Command('console')
      .description(`attach to a running VM's serial console (detach: ${DETACH_KEY_NAME})`)
      .argument('<name>')
      .action(async (name: string, _o, cmd: Command) => {
        await withEstate(cmd, async (estate) => {
          const stream = await estate.console(name);
          if (process.stdin.isTTY) process.stderr.write(`polyvisor: attached to ${name}; ${DETACH_KEY_NAME} detaches\n`);
          const how = await attachConsole(stream, { detachable: true });
          if (how === 'ended') process.stderr.write(`\npolyvisor: ${name} has stopped\n`);
        });
      }),
  );
  cmds.push(
    new Command('move')
      .description('move a stopped VM to another host: disks converted on the way, descriptor re-encoded for the target')
      .argument('<name>')
      .requiredOption('--to <host>', 'the host to move it to ("local" is the local engine; polyvisor host ls lists the others)')
      .option('--no-adapt', 'move the guest as it is (default: a Linux guest is adapted for the host it goes to)')
      .option('--json', 'print machine-readable JSON')
      .action(async (name: string, _o, cmd: Command) => {
        await withEstate(cmd, async (estate, o) => {
          const r = await estate.move(name, o.to, { adapt: o.adapt });
          if (o.json) {
            out(JSON.stringify({ name, host: r.vm.host, disks: r.vm.disks, notes: r.notes, adaptation: r.adaptation ?? null }, null, 2));
            return;
          }
          out(`moved ${name} to ${r.vm.host}`);
          for (const n of r.notes) out(`  ${n.action} ${n.setting}: ${n.reason}`);
          for (const l of adaptationLines(r.adaptation)) out(l);
        });
      }),
  );

  const host = new Command('host').description('the hypervisor hosts Polyvisor manages besides the local engine');
  host
    .command('add')
    .description('add a Xen host reached over SSH, after checking that its xl toolstack answers')
    .argument('<uri>', 'xen+ssh://[user@]host[:port]')
    .option('--name <name>', "a short name for the host (default: the URI's host name)")
    .option('-i, --identity <file>', 'the SSH private key (default: ssh\'s own choice)')
    .option('--storage <dir>', 'the folder on the host for VMs (default /var/lib/polyvisor)')
    .option('--no-check', 'add it without connecting')
    .action(async (uri: string, _o, cmd: Command) => {
      await withEstate(cmd, async (estate, o) => {
        const { parseXenUri } = await import('../hosts/xen/uri.js');
        const name: string = o.name ?? parseXenUri(uri).host.replace(/[^A-Za-z0-9._-]/g, '-');
        const h = await estate.addHost(name, uri, { identityFile: o.identity, storageDir: o.storage, check: o.check });
        out(`added host ${h.name} (${h.uri})`);
      });
    });
  host
    .command('ls')
    .description('list the hosts')
    .option('--json', 'print machine-readable JSON')
    .action(async (_o, cmd: Command) => {
      await withEstate(cmd, async (estate, o) => {
        const hosts = [{ name: 'local', uri: 'qemu:///local', driver: 'qemu', options: {}, addedAt: '' }, ...estate.store.listHosts()];
        if (o.json) out(JSON.stringify(hosts, null, 2));
        else for (const h of hosts) out(`${h.name.padEnd(16)} ${h.driver.padEnd(6)} ${h.uri}`);
      });
    });
  host
    .command('rm')
    .description('forget a host (it must have no VMs in the store)')
    .argument('<name>')
    .action(async (name: string, _o, cmd: Command) => {
      await withEstate(cmd, async (estate) => {
        estate.store.getHost(name);
        estate.store.removeHost(name);
        out(`removed host ${name}`);
      });
    });
  cmds.push(host);
  return cmds;
}
