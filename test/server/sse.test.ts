/**
 * Job events as server-sent events over a real loopback socket: the snapshot (state and the
 * log so far), then live progress, log lines and states, the stream closing after the job
 * ends; Last-Event-ID resumes after the lines a client has; no token, no stream.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { startServer } from './helpers.js';

interface SseEvent {
  event: string;
  id?: string;
  data: any;
}

/** Opens the stream; `onEvent` sees each event as it arrives; resolves with all of them when the server closes it. */
function events(port: number, path: string, headers: Record<string, string>, onEvent: (e: SseEvent) => void = () => {}): Promise<{ status: number; type: string; events: SseEvent[] }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, headers }, (res) => {
      const all: SseEvent[] = [];
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buf += chunk;
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const e: SseEvent = { event: 'message', data: undefined };
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) continue;
            const [k, ...v] = line.split(': ');
            if (k === 'event') e.event = v.join(': ');
            else if (k === 'id') e.id = v.join(': ');
            else if (k === 'data') e.data = JSON.parse(v.join(': '));
          }
          if (e.data !== undefined) {
            all.push(e);
            onEvent(e);
          }
        }
      });
      res.on('end', () => resolve({ status: res.statusCode!, type: String(res.headers['content-type']), events: all }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(60_000, () => req.destroy(new Error('no end of stream within 60 s')));
    req.end();
  });
}

describe('job events (server-sent events on a loopback socket)', () => {
  test('snapshot, live progress and log lines, the final state, then the stream ends; Last-Event-ID resumes', async (t) => {
    const s = await startServer(t);
    await s.app.listen({ host: '127.0.0.1', port: 0 });
    const port = (s.app.server.address() as AddressInfo).port;
    const { jobs } = s.app.polyvisor;
    let go!: () => void;
    const gate = new Promise<void>((r) => (go = r));
    const job = jobs.start('test', 'demo', 'admin', async (ctx) => {
      ctx.log('before anyone listens');
      await gate;
      ctx.progress(512, 1024);
      ctx.log('half way');
      ctx.progress(1024, 1024);
      return { ok: true };
    });
    const auth = { authorization: `Bearer ${s.adminToken}` };
    // the client sees the snapshot, then lets the job go on
    const stream = events(port, `/api/jobs/${job.id}/events`, auth, (e) => {
      if (e.event === 'log' && e.data.line === 'before anyone listens') go();
    });
    const r = await stream;
    assert.equal(r.status, 200);
    assert.match(r.type, /^text\/event-stream/);
    const kinds = r.events.map((e) => (e.event === 'log' ? `log:${e.data.line}` : e.event === 'state' ? `state:${e.data.state}` : `progress:${e.data.done}/${e.data.total}`));
    assert.deepEqual(kinds.filter((k) => !k.startsWith('state:running')), ['log:before anyone listens', 'progress:512/1024', 'log:half way', 'progress:1024/1024', 'state:succeeded']);
    assert.ok(kinds[0]!.startsWith('state:'), 'the first event is the job as it stands');
    for (const e of r.events) {
      if (e.event === 'state') s.validate('Job', e.data);
      if (e.event === 'log') {
        s.validate('JobLogLine', e.data);
        assert.equal(e.id, String(e.data.seq));
      }
    }
    assert.deepEqual(r.events.at(-1)!.data.result, { ok: true });

    // an ended job: its state and log, then the end; Last-Event-ID skips what the client has
    const replay = await events(port, `/api/jobs/${job.id}/events`, { ...auth, 'last-event-id': '1' });
    assert.deepEqual(replay.events.map((e) => e.event), ['state', 'log', 'state']);
    assert.equal(replay.events[1]!.data.line, 'half way');

    const anon = await events(port, `/api/jobs/${job.id}/events`, {});
    assert.equal(anon.status, 401);
    const missing = await events(port, '/api/jobs/00000000-0000-4000-8000-000000000000/events', auth);
    assert.equal(missing.status, 404);
  });
});
