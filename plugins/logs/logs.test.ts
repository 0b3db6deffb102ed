import http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { plugin, until } from '../../test/helpers.js';

const HERE = new URL('.', import.meta.url).pathname;
const running: Bext[] = [];
afterEach(async () => {
  while (running.length) await running.pop()!.close();
});

/** A plugin that logs what the request asks for: /say?level=warn&msg=hi&n=3&pad=100 */
const chatty = () =>
  plugin('chatty', { routes: [{ path: '/say' }] }, `
export default (host) => ({
  onRoute(req) {
    const q = new URLSearchParams(req.query);
    const n = Number(q.get('n') ?? 1);
    const pad = 'x'.repeat(Number(q.get('pad') ?? 0));
    for (let i = 0; i < n; i++) host.log(q.get('level') ?? 'info', q.get('msg') ?? 'hello', { i, pad });
    return { status: 200, body: 'ok' };
  },
});`);

async function start(config: Record<string, unknown> = {}): Promise<Bext> {
  const b = await startBext({ plugins: [{ dir: HERE }, { dir: chatty() }], config: { plugins: { logs: config } } as never });
  running.push(b);
  return b;
}

interface SseEvent {
  event: string;
  id?: string;
  data: Record<string, unknown>;
}

/** Follows an SSE stream, collecting events; `until` waits on what arrived. */
async function follow(url: string, headers: Record<string, string> = {}) {
  const ac = new AbortController();
  const res = await fetch(url, { headers, signal: ac.signal });
  const events: SseEvent[] = [];
  let ended = false;
  const pump = (async () => {
    const dec = new TextDecoder();
    let buf = '';
    try {
      for await (const chunk of res.body!) {
        buf += dec.decode(chunk as Uint8Array, { stream: true });
        let cut: number;
        while ((cut = buf.indexOf('\n\n')) !== -1) {
          const frame = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const ev: Partial<SseEvent> & { raw?: string } = { event: 'message' };
          for (const line of frame.split('\n')) {
            if (line.startsWith('event: ')) ev.event = line.slice(7);
            else if (line.startsWith('id: ')) ev.id = line.slice(4);
            else if (line.startsWith('data: ')) ev.data = JSON.parse(line.slice(6));
          }
          if (ev.data) events.push(ev as SseEvent);
        }
      }
    } catch {
      // aborted
    }
    ended = true;
  })();
  return {
    res,
    events,
    logs: () => events.filter((e) => e.event === 'log').map((e) => e.data),
    ended: () => ended,
    async close() {
      ac.abort();
      await pump;
    },
  };
}

describe('logs', () => {
  it('streams records live, filtered by level and plugin', async () => {
    const b = await start();
    const all = await follow(`${b.adminUrl}/__bext/logs?level=debug&backlog=0`);
    const warn = await follow(`${b.adminUrl}/__bext/logs?level=warn&backlog=0`);
    const mine = await follow(`${b.adminUrl}/__bext/logs?plugin=chatty&level=info`);
    const kernelOnly = await follow(`${b.adminUrl}/__bext/logs?plugin=kernel&level=trace&backlog=0`);
    expect(all.res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    await until(() => [all, warn, mine, kernelOnly].every((s) => s.events.some((e) => e.event === 'ready')), 5000, 'ready events');
    await (await fetch(`${b.url}/say?level=debug&msg=dbg`)).text();
    await (await fetch(`${b.url}/say?level=info&msg=inf`)).text();
    await (await fetch(`${b.url}/say?level=error&msg=err`)).text();
    b.kernel.log.warn('kernel speaks');
    await until(() => all.logs().length >= 4 && warn.logs().length >= 2 && mine.logs().length >= 2 && kernelOnly.logs().length >= 1, 5000, 'records');
    expect(all.logs().map((r) => r.msg)).toEqual(['dbg', 'inf', 'err', 'kernel speaks']);
    expect(warn.logs().map((r) => r.msg)).toEqual(['err', 'kernel speaks']);
    expect(mine.logs().map((r) => r.msg)).toEqual(['inf', 'err']);
    expect(kernelOnly.logs().map((r) => r.msg)).toEqual(['kernel speaks']);
    expect(all.logs()[0]).toMatchObject({ level: 'debug', plugin: 'chatty', i: 0 });
    expect(typeof all.logs()[0]!.time).toBe('number');
    for (const s of [all, warn, mine, kernelOnly]) await s.close();
  });

  it('per-plugin levels override the minimum for the plugins they name', async () => {
    const b = await start();
    const s = await follow(`${b.adminUrl}/__bext/logs?level=error&levels=chatty:debug&backlog=0`);
    await until(() => s.events.some((e) => e.event === 'ready'));
    await (await fetch(`${b.url}/say?level=debug&msg=chatty-debug`)).text();
    b.kernel.log.warn('kernel warn is below error');
    b.kernel.log.error('kernel error');
    await until(() => s.logs().length >= 2, 5000, 'records');
    expect(s.logs().map((r) => r.msg)).toEqual(['chatty-debug', 'kernel error']);
    await s.close();
  });

  it('replays the backlog to a new client and resumes after Last-Event-ID', async () => {
    const b = await start({ backlog: 50 });
    await (await fetch(`${b.url}/say?n=5&msg=before`)).text();
    const first = await follow(`${b.adminUrl}/__bext/logs?plugin=chatty&backlog=3`);
    await until(() => first.events.some((e) => e.event === 'ready'));
    expect(first.logs().map((r) => r.i)).toEqual([2, 3, 4]);
    const lastId = first.events.filter((e) => e.event === 'log').at(-1)!.id!;
    await first.close();
    await (await fetch(`${b.url}/say?n=2&msg=while-away`)).text();
    const again = await follow(`${b.adminUrl}/__bext/logs?plugin=chatty`, { 'last-event-id': lastId });
    await until(() => again.events.some((e) => e.event === 'ready'));
    expect(again.logs().map((r) => r.msg)).toEqual(['while-away', 'while-away']);
    await again.close();
    const json = await (await fetch(`${b.adminUrl}/__bext/logs?format=json&plugin=chatty&backlog=2`)).json();
    expect(json.records.map((r: { msg: string; i: number }) => `${r.msg}${r.i}`)).toEqual(['while-away0', 'while-away1']);
  });

  it('is admin only, refuses bad filters, and caps the number of streams', async () => {
    const b = await start({ maxClients: 1 });
    expect((await fetch(`${b.url}/__bext/logs`)).status).toBe(403);
    const bad = await fetch(`${b.adminUrl}/__bext/logs?level=loud`);
    expect(bad.status).toBe(400);
    expect((await bad.json()).error).toBe('BEXT_ERR_QUERY_INVALID');
    expect((await fetch(`${b.adminUrl}/__bext/logs?levels=chatty`)).status).toBe(400);
    const one = await follow(`${b.adminUrl}/__bext/logs`);
    await until(() => one.events.some((e) => e.event === 'ready'));
    const second = await fetch(`${b.adminUrl}/__bext/logs`);
    expect(second.status).toBe(503);
    expect((await second.json()).error).toBe('BEXT_ERR_STREAM_LIMIT');
    await one.close();
    // The slot frees when the client goes away.
    await until(async () => {
      const r = await fetch(`${b.adminUrl}/__bext/logs?format=json`);
      await r.text();
      const s = await fetch(`${b.adminUrl}/__bext/logs`);
      const ok = s.status === 200;
      await s.body?.cancel();
      return ok;
    }, 5000, 'slot freed');
  });

  it('ends streams when the server drains', async () => {
    const b = await start();
    const s = await follow(`${b.adminUrl}/__bext/logs`);
    await until(() => s.events.some((e) => e.event === 'ready'));
    running.pop();
    const t0 = Date.now();
    await b.close();
    await until(() => s.ended(), 5000, 'stream end');
    expect(s.events.at(-1)).toMatchObject({ event: 'close', data: { reason: 'shutdown' } });
    expect(Date.now() - t0).toBeLessThan(1900);
  });

  it('cuts off a client that stops reading', async () => {
    const b = await start({ maxBufferBytes: 65536, backlog: 0 });
    const req = http.get(`${b.adminUrl}/__bext/logs?level=info`);
    const res = await new Promise<http.IncomingMessage>((r) => req.once('response', r));
    res.pause();
    let closed = false;
    res.socket.once('close', () => (closed = true));
    // 20 MB of records: more than the client's socket buffers and the stream's cap together.
    for (let i = 0; i < 20 && !closed; i++) await (await fetch(`${b.url}/say?n=100&pad=10000`)).text();
    await until(() => b.logs.some((r) => r.msg.startsWith('log stream cut off')), 10000, 'slow consumer cut off');
    req.destroy();
  });
});
