/**
 * Jobs: list, one job with its log, cancel, and its live events as server-sent events
 * (HTML Living Standard §9.2): `state` (the job record, first at once, then on every change),
 * `progress` ({done, total} in bytes), `log` (one line, its `id:` the line's number, so a client
 * that reconnects with Last-Event-ID gets only the lines it missed). The stream ends after the
 * job does.
 */
import type { JobEvent } from '../jobs.js';
import { route, type ApiRoute } from '../route.js';
import { JobDetailSchema, JobListQuerySchema, JobListSchema, JobParamsSchema, JobSchema } from '../schemas.js';
import { jobView } from '../views.js';
import { MAX_LOG_LINES } from '../jobs.js';

const ENDED = new Set(['succeeded', 'failed', 'cancelled']);
const HEARTBEAT_MS = 15_000;

export function jobRoutes(): ApiRoute[] {
  return [
    route({
      method: 'GET',
      url: '/api/jobs',
      operationId: 'listJobs',
      summary: 'the jobs, newest first',
      tag: 'jobs',
      access: 'viewer',
      query: JobListQuerySchema,
      responses: { 200: { description: 'a page of jobs', schema: JobListSchema } },
      handler: async ({ query, ctx }) => {
        const rows = ctx.store.listJobs({ state: query.state, before: query.before, limit: query.limit + 1 });
        const more = rows.length > query.limit;
        const items = rows.slice(0, query.limit);
        return { items: items.map(jobView), next: more ? items[items.length - 1]!.createdAt : null };
      },
    }),
    route({
      method: 'GET',
      url: '/api/jobs/:id',
      operationId: 'getJob',
      summary: 'one job with its log',
      tag: 'jobs',
      access: 'viewer',
      params: JobParamsSchema,
      responses: { 200: { description: 'the job', schema: JobDetailSchema } },
      handler: async ({ params, ctx }) => ({ ...jobView(ctx.store.getJob(params.id)), log: ctx.store.jobLog(params.id, MAX_LOG_LINES) }),
    }),
    route({
      method: 'POST',
      url: '/api/jobs/:id/cancel',
      operationId: 'cancelJob',
      summary: 'ask a queued or running job to stop (it ends cancelled, its partial output removed)',
      tag: 'jobs',
      access: 'operator',
      params: JobParamsSchema,
      responses: { 202: { description: 'the job, asked to stop (or as it ended)', schema: JobSchema } },
      handler: async ({ params, ctx, reply }) => {
        ctx.store.getJob(params.id);
        ctx.jobs.cancel(params.id);
        reply.code(202);
        return jobView(ctx.store.getJob(params.id));
      },
    }),
    route({
      method: 'GET',
      url: '/api/jobs/:id/events',
      operationId: 'jobEvents',
      summary: "the job's state, progress and log lines as server-sent events, until it ends",
      tag: 'jobs',
      access: 'viewer',
      params: JobParamsSchema,
      responses: { 200: { description: 'events: state (a Job), progress ({done, total}), log (a JobLogLine)', contentType: 'text/event-stream' } },
      handler: async ({ params, ctx, request, reply }) => {
        const id = params.id;
        ctx.store.getJob(id);
        const lastSeen = Number(request.headers['last-event-id'] ?? 0) || 0;
        reply.hijack();
        const res = reply.raw;
        res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
        let sentLog = lastSeen;
        let open = true;
        const send = (event: string, data: unknown, eventId?: number) => {
          if (open) res.write(`${eventId === undefined ? '' : `id: ${eventId}\n`}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
        };
        const pending: JobEvent[] = [];
        let live = false;
        let unsubscribe: (() => void) | undefined;
        const heartbeat = setInterval(() => open && res.write(': keep-alive\n\n'), HEARTBEAT_MS);
        const end = () => {
          if (!open) return;
          open = false;
          clearInterval(heartbeat);
          unsubscribe?.();
          res.end();
        };
        const forward = (e: JobEvent) => {
          if (e.type === 'log') {
            if (e.line.seq <= sentLog) return;
            sentLog = e.line.seq;
            send('log', e.line, e.line.seq);
          } else if (e.type === 'progress') send('progress', { done: e.done, total: e.total });
          else {
            send('state', jobView(e.job));
            if (ENDED.has(e.job.state)) end();
          }
        };
        request.raw.on('close', end);
        // subscribe before reading the snapshot, so no event falls between the two
        unsubscribe = ctx.jobs.subscribe(id, (e) => (live ? forward(e) : pending.push(e)));
        const job = ctx.store.getJob(id);
        send('state', jobView(job));
        for (const line of ctx.store.jobLog(id, MAX_LOG_LINES)) forward({ type: 'log', line });
        live = true;
        for (const e of pending.splice(0)) forward(e);
        if (!unsubscribe || ENDED.has(job.state)) {
          // ended before or while the snapshot was read: its last state closes the stream
          send('state', jobView(ctx.store.getJob(id)));
          end();
        }
      },
    }),
  ];
}
