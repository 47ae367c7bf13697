/**
 * VMs: the inventory (paged, with state), one VM with its spec, the power verbs, removal,
 * tags, console tokens, and the long operations as jobs (import, move, export, verify).
 *
 * Every verb goes through the estate (../../hosts/estate.ts), as the CLI's do; a VM is held
 * (../vm-locks.ts) for the length of a verb or a job on it, so two never race.
 */
import { join, relative } from 'node:path';
import { PolyvisorError } from '../../errors.js';
import { LOCAL_HOST, storeName } from '../../hosts/local.js';
import { checkVmName, type StoredVm } from '../../store/store.js';
import type { FastifyReply } from 'fastify';
import type { Principal } from '../auth.js';
import type { ServerContext } from '../context.js';
import type { JobContext } from '../jobs.js';
import { route, type ApiRoute } from '../route.js';
import {
  ConsoleTokenSchema,
  JobSchema,
  VmExportSchema,
  VmImportSchema,
  VmListQuerySchema,
  VmListSchema,
  VmMoveSchema,
  VmParamsSchema,
  VmRemoveQuerySchema,
  VmSchema,
  VmStopResultSchema,
  VmStopSchema,
  VmSummarySchema,
  VmTagsSchema,
  VmVerifySchema,
} from '../schemas.js';
import { storedVmSource } from '../stored-source.js';
import { jobView, summaryOf, vmSummaryView, vmView } from '../views.js';

/** A VM with its state checked against what runs (local VMs; remote ones as last recorded). */
function current(ctx: ServerContext, name: string): StoredVm {
  const vm = ctx.store.getVm(name);
  return vm.host === LOCAL_HOST ? ctx.estate.local.get(name) : vm;
}

function summary(ctx: ServerContext, name: string) {
  return vmSummaryView(summaryOf(current(ctx, name), ctx.store.tagsOf([name]).get(name) ?? []));
}

/** A VM the local engine holds, stopped: what export and verify read the disks of. */
/**
 * A long operation on one VM, as a job (answered 202 with it), under the VM's lock: one such
 * operation per VM at a time; the lock is released however the job ends.
 */
function lockedJob(ctx: ServerContext, reply: FastifyReply, kind: string, vm: string, what: string, user: Principal, work: (job: JobContext) => Promise<unknown>) {
  const release = ctx.locks.acquire(vm, what);
  const job = ctx.jobs.start(kind, vm, user.name, async (j) => {
    try {
      return await work(j);
    } finally {
      release();
    }
  });
  reply.code(202);
  return jobView(job);
}

function stoppedLocal(ctx: ServerContext, name: string, what: string): StoredVm {
  const vm = current(ctx, name);
  if (vm.host !== LOCAL_HOST) throw new PolyvisorError('ERR_UNSUPPORTED', `${name} is on host ${vm.host}; move it to the local engine to ${what} it`);
  if (vm.state !== 'stopped') throw new PolyvisorError('ERR_VM_STATE', `${name} is ${vm.state}; stop it to ${what} it (its disks must not change while they are read)`);
  return vm;
}

/** Lines of console text as they complete (a chunk may end mid-line). */
function lineSplitter(emit: (line: string) => void): { push(text: string): void; flush(): void } {
  let partial = '';
  return {
    push(text) {
      const parts = (partial + text).split('\n');
      partial = parts.pop()!.slice(-65536);
      for (const p of parts) emit(p);
    },
    flush() {
      if (partial) emit(partial);
      partial = '';
    },
  };
}

const power = (verb: 'start' | 'kill' | 'pause' | 'resume', summaryText: string): ApiRoute =>
  route({
    method: 'POST',
    url: `/api/vms/:name/${verb}`,
    operationId: `${verb}Vm`,
    summary: summaryText,
    tag: 'vms',
    access: 'operator',
    params: VmParamsSchema,
    responses: { 200: { description: 'the VM after the operation', schema: VmSummarySchema } },
    handler: async ({ params, ctx }) => {
      ctx.store.getVm(params.name);
      await ctx.locks.with(params.name, verb, async () => void (await ctx.estate[verb](params.name)));
      return summary(ctx, params.name);
    },
  });

export function vmRoutes(opts: { accel?: 'kvm' | 'tcg' }): ApiRoute[] {
  return [
    route({
      method: 'GET',
      url: '/api/vms',
      operationId: 'listVms',
      summary: 'the inventory: one page of VMs in name order, with their state (filters: host, state, tag)',
      tag: 'vms',
      access: 'viewer',
      query: VmListQuerySchema,
      responses: { 200: { description: 'a page of VMs', schema: VmListSchema } },
      handler: async ({ query, ctx }) => {
        const { items, total } = ctx.store.listVmSummaries({ host: query.host, state: query.state, tag: query.tag, after: query.after, limit: query.limit + 1 });
        const more = items.length > query.limit;
        const page = items.slice(0, query.limit).map((v) => {
          if (v.host !== LOCAL_HOST || v.state === 'stopped') return v;
          // a running local VM whose QEMU has ended shows stopped (the store is corrected too)
          const vm = ctx.estate.local.get(v.name);
          return { ...v, state: vm.state, pid: vm.pid, startedAt: vm.startedAt };
        });
        return { items: page.map(vmSummaryView), total, next: more ? page[page.length - 1]!.name : null };
      },
    }),
    route({
      method: 'GET',
      url: '/api/vms/:name',
      operationId: 'getVm',
      summary: 'one VM: its state, its disks and its VmSpec',
      tag: 'vms',
      access: 'viewer',
      params: VmParamsSchema,
      responses: { 200: { description: 'the VM', schema: VmSchema } },
      handler: async ({ params, ctx }) => vmView(current(ctx, params.name), ctx.store.tagsOf([params.name]).get(params.name) ?? []),
    }),
    route({
      method: 'POST',
      url: '/api/vms',
      operationId: 'importVm',
      summary: 'import a VM from a descriptor, package or folder of the library onto a host (a job)',
      tag: 'vms',
      access: 'operator',
      body: VmImportSchema,
      responses: { 202: { description: 'the import job', schema: JobSchema } },
      handler: async ({ body, ctx, user, reply, audit }) => {
        const path = await ctx.library.existing(body.source);
        const host = body.host ?? LOCAL_HOST;
        if (host !== LOCAL_HOST) ctx.store.getHost(host);
        if (body.copy && body.persist) throw new PolyvisorError('ERR_USAGE', 'body: copy and persist exclude each other');
        // the source is read here, so that a malformed one is refused now (422), and the VM's
        // name is known before the job holds it
        const { openVmSource } = await import('../../vm/source.js');
        const src = await openVmSource(path);
        let name: string;
        try {
          name = body.name ?? storeName(src.spec.name);
        } finally {
          await src.close();
        }
        checkVmName(name);
        if (ctx.store.findVm(name)) throw new PolyvisorError('ERR_EXISTS', `a VM named ${name} already exists (give another name)`);
        audit({ source: body.source, name, host });
        return lockedJob(ctx, reply, 'import', name, 'an import', user, async (job) => {
          job.log(`importing ${body.source} as ${name} onto ${host}`);
          const r = await ctx.estate.import(path, { name, host, copy: body.copy, persist: body.persist, adapt: body.adapt, signal: job.signal, onProgress: job.progress });
          for (const d of r.vm.disks) job.log(`disk ${d.index}: ${d.label}: ${d.mode}`);
          for (const n of r.notes) job.log(`${n.action} ${n.setting}: ${n.reason}`);
          if (r.adaptation?.manifest) job.log(`guest adapted for ${r.adaptation.target}: ${r.adaptation.changes} change(s)`);
          else if (r.adaptation?.skipped) job.log(`guest not adapted: ${r.adaptation.skipped}`);
          return { vm: r.vm.name, host: r.vm.host, notes: r.notes, adaptation: r.adaptation ?? null };
        });
      },
    }),
    power('start', 'start a VM; it runs on'),
    route({
      method: 'POST',
      url: '/api/vms/:name/stop',
      operationId: 'stopVm',
      summary: 'ask the guest to power off (ACPI) and force it off after the timeout',
      tag: 'vms',
      access: 'operator',
      params: VmParamsSchema,
      body: VmStopSchema,
      responses: { 200: { description: 'how the VM stopped', schema: VmStopResultSchema } },
      handler: async ({ params, body, ctx }) => {
        ctx.store.getVm(params.name);
        const stop = await ctx.locks.with(params.name, 'stop', () => ctx.estate.stop(params.name, { timeoutMs: body.timeoutSeconds * 1000 }));
        return { name: params.name, stop, vm: summary(ctx, params.name) };
      },
    }),
    power('kill', 'cut the power of a running VM at once'),
    power('pause', 'freeze a running VM (its memory is kept)'),
    power('resume', 'let a paused VM run again'),
    route({
      method: 'DELETE',
      url: '/api/vms/:name',
      operationId: 'removeVm',
      summary: 'remove a VM with its overlays and copies (its source is not touched); force kills it first',
      tag: 'vms',
      access: 'operator',
      params: VmParamsSchema,
      query: VmRemoveQuerySchema,
      responses: { 204: { description: 'the VM was removed' } },
      handler: async ({ params, query, ctx, reply }) => {
        ctx.store.getVm(params.name);
        await ctx.locks.with(params.name, 'a removal', () => ctx.estate.remove(params.name, { force: query.force }));
        reply.code(204);
      },
    }),
    route({
      method: 'PUT',
      url: '/api/vms/:name/tags',
      operationId: 'setVmTags',
      summary: "replace a VM's tags",
      tag: 'vms',
      access: 'operator',
      params: VmParamsSchema,
      body: VmTagsSchema,
      responses: { 200: { description: 'the VM with its tags', schema: VmSummarySchema } },
      handler: async ({ params, body, ctx, audit }) => {
        audit({ tags: body.tags });
        ctx.store.setTags(params.name, body.tags);
        return summary(ctx, params.name);
      },
    }),
    route({
      method: 'POST',
      url: '/api/vms/:name/move',
      operationId: 'moveVm',
      summary: 'move a stopped VM to another host: disks converted on the way, descriptor re-encoded (a job)',
      tag: 'vms',
      access: 'operator',
      params: VmParamsSchema,
      body: VmMoveSchema,
      responses: { 202: { description: 'the move job', schema: JobSchema } },
      handler: async ({ params, body, ctx, user, reply, audit }) => {
        const vm = current(ctx, params.name);
        if (body.to !== LOCAL_HOST) ctx.store.getHost(body.to);
        if (vm.host === body.to) throw new PolyvisorError('ERR_USAGE', `${vm.name} is already on ${body.to}`);
        if (vm.state !== 'stopped') throw new PolyvisorError('ERR_VM_STATE', `${vm.name} is ${vm.state}; stop it before moving it`);
        audit({ to: body.to });
        return lockedJob(ctx, reply, 'move', vm.name, 'a move', user, async (job) => {
          job.log(`moving ${vm.name} from ${vm.host} to ${body.to}`);
          const r = await ctx.estate.move(vm.name, body.to);
          for (const n of r.notes) job.log(`${n.action} ${n.setting}: ${n.reason}`);
          return { vm: vm.name, host: r.vm.host, notes: r.notes };
        });
      },
    }),
    route({
      method: 'POST',
      url: '/api/vms/:name/export',
      operationId: 'exportVm',
      summary: "export a stopped local VM, as its disks are now, into a library folder for another hypervisor (a job)",
      tag: 'vms',
      access: 'operator',
      params: VmParamsSchema,
      body: VmExportSchema,
      responses: { 202: { description: 'the export job', schema: JobSchema } },
      handler: async ({ params, body, ctx, user, reply, audit }) => {
        const { findCodec, findPackage, unknownTarget } = await import('../../vm/registry.js');
        if (!findPackage(body.target) && !findCodec(body.target)?.encode) throw unknownTarget(body.target);
        const vm = stoppedLocal(ctx, params.name, 'export');
        const outRel = body.out ?? `exports/${vm.name}-${body.target}`;
        const outDir = ctx.library.resolve(outRel);
        audit({ target: body.target, out: outRel });
        return lockedJob(ctx, reply, 'export', vm.name, 'an export', user, async (job) => {
          const { convertVm } = await import('../../vm/convert.js');
          job.log(`exporting ${vm.name} for ${body.target} into ${outRel}`);
          const r = await convertVm(storedVmSource(vm, ctx.estate.local.vmDir(vm.name)), body.target, outDir, { diskFormat: body.diskFormat, force: body.force, signal: job.signal, onProgress: job.progress });
          const files = r.files.map((f) => relative(ctx.library.root, f));
          for (const f of files) job.log(`wrote ${f}`);
          for (const n of r.notes) job.log(`${n.action} ${n.setting}: ${n.reason}`);
          return { target: r.target, files, notes: r.notes };
        });
      },
    }),
    route({
      method: 'POST',
      url: '/api/vms/:name/verify',
      operationId: 'verifyVm',
      summary: 'boot a stopped local VM headless behind overlays (its disks are not written) and check that it comes up (a job; the console log goes to the library)',
      tag: 'vms',
      access: 'operator',
      params: VmParamsSchema,
      body: VmVerifySchema,
      responses: { 202: { description: 'the verify job', schema: JobSchema } },
      handler: async ({ params, body, ctx, user, reply }) => {
        const vm = stoppedLocal(ctx, params.name, 'verify');
        return lockedJob(ctx, reply, 'verify', vm.name, 'a verification', user, async (job) => {
          const { verifyVm } = await import('../../verify/verify.js');
          const outRel = `verify/${vm.name}`;
          const lines = lineSplitter((l) => job.log(`console: ${l.replace(/\r/g, '')}`));
          const r = await verifyVm(storedVmSource(vm, ctx.estate.local.vmDir(vm.name)), {
            expect: body.expect,
            timeoutMs: body.timeoutSeconds * 1000,
            outDir: ctx.library.resolve(outRel),
            signal: job.signal,
            accel: opts.accel,
            tmpRoot: join(ctx.dataDir, 'tmp'),
            allowOutsidePaths: true,
            onConsole: (t) => lines.push(t),
          });
          lines.flush();
          job.log(r.ok ? `came up after ${r.seconds} s (${JSON.stringify(r.matched)})` : `FAILED: ${r.reason}${r.detail ? ` (${r.detail})` : ''}`);
          const rel = (f: string | undefined) => (f ? relative(ctx.library.root, f) : null);
          return { ok: r.ok, reason: r.reason, seconds: r.seconds, matched: r.matched ?? null, detail: r.detail ?? null, consoleLog: rel(r.consoleLog), screenshot: rel(r.screenshot) };
        });
      },
    }),
    route({
      method: 'POST',
      url: '/api/vms/:name/console-token',
      operationId: 'consoleToken',
      summary: "a short-lived single-use token that opens the VM's console once",
      tag: 'vms',
      access: 'operator',
      params: VmParamsSchema,
      responses: { 201: { description: 'the token (valid 60 s, once)', schema: ConsoleTokenSchema } },
      handler: async ({ params, ctx, user, reply }) => {
        const vm = current(ctx, params.name);
        if (vm.state === 'stopped') throw new PolyvisorError('ERR_VM_STATE', `${vm.name} is not running; start it to open its console`);
        const t = ctx.auth.consoleToken(user, vm.name);
        reply.code(201);
        return { vm: vm.name, token: t.token, expiresAt: t.expiresAt, singleUse: true };
      },
    }),
  ];
}
