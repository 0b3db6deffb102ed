import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { plugin, until } from '../../test/helpers.js';
import { cacheResult, type Snapshot } from './collector.js';
import { parseProm, sum } from './prom.js';

const HERE = new URL('.', import.meta.url).pathname;
const running: Bext[] = [];
afterEach(async () => {
  while (running.length) await running.pop()!.close();
});

/** /ok answers 200 after a short wait; /boom 500; anything else 404 from the kernel. */
const app = () =>
  plugin('app', { routes: [{ path: '/ok' }, { path: '/boom' }, { path: '/secret-path-:n' }] }, `
export default () => ({
  async onRoute(req) {
    if (req.route === '/boom') return { status: 500, body: 'no' };
    await new Promise((r) => setTimeout(r, 2));
    return { status: 200, body: 'ok' };
  },
});`);

async function start(extra: (string | { dir: string })[] = [], config: Record<string, unknown> = {}): Promise<Bext> {
  const b = await startBext({ plugins: [{ dir: HERE }, { dir: app() }, ...extra], config: { plugins: { dashboard: { intervalMs: 250, ...config } } } as never });
  running.push(b);
  return b;
}

async function history(b: Bext): Promise<{ points: Snapshot['point'][]; latest: Snapshot | null }> {
  return (await fetch(`${b.adminUrl}/__bext/dashboard/history`)).json() as never;
}

/** Reads SSE `data:` messages from a stream until `done` says enough. */
async function sse(url: string, done: (msgs: Record<string, unknown>[]) => boolean): Promise<Record<string, unknown>[]> {
  const ac = new AbortController();
  const res = await fetch(url, { signal: ac.signal });
  expect(res.status).toBe(200);
  const msgs: Record<string, unknown>[] = [];
  const dec = new TextDecoder();
  let buf = '';
  for await (const chunk of res.body!) {
    buf += dec.decode(chunk as Uint8Array, { stream: true });
    let cut: number;
    while ((cut = buf.indexOf('\n\n')) !== -1) {
      const frame = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      if (/^event: /m.test(frame)) continue;
      const data = /^data: (.*)$/m.exec(frame)?.[1];
      if (data) msgs.push(JSON.parse(data));
    }
    if (done(msgs)) break;
  }
  ac.abort();
  return msgs;
}

describe('dashboard', () => {
  it('snapshots request rate, status mix, latency, hook cost and plugin states once per interval', async () => {
    const b = await start();
    for (let i = 0; i < 20; i++) await (await fetch(`${b.url}/ok`)).text();
    for (let i = 0; i < 5; i++) await (await fetch(`${b.url}/boom`)).text();
    for (let i = 0; i < 3; i++) await (await fetch(`${b.url}/nothing-here`)).text();
    await until(async () => (await history(b)).points.reduce((a, p) => a + p.n, 0) >= 28, 5000, 'requests in the history');
    const h = await history(b);
    const counted = (k: number) => h.points.reduce((a, p) => a + p.s[k]!, 0);
    expect([counted(1), counted(3), counted(4)]).toEqual([20, 3, 5]);
    expect(h.points.every((p) => Math.abs(p.rps - p.n / p.dt) < 0.01)).toBe(true);
    const busy = h.points.filter((p) => p.rps > 0);
    expect(Math.max(...busy.map((p) => p.p99))).toBeGreaterThanOrEqual(2);
    expect(busy.every((p) => p.p50 <= p.p90 && p.p90 <= p.p99 && p.p99 <= p.max)).toBe(true);
    // Hook cost comes from the kernel's per-hook counters (smoothed, so it lingers after the burst).
    await until(async () => !!(await history(b)).latest?.hooks.some((k) => k.plugin === 'app' && k.hook === 'onRoute'), 5000, 'hook cost');
    const latest = (await history(b)).latest!;
    const hook = latest.hooks.find((k) => k.plugin === 'app' && k.hook === 'onRoute')!;
    expect(hook.sandbox).toBe('trusted');
    expect(hook.avgUs).toBeGreaterThan(0);
    expect(latest.plugins.map((p) => p.name)).toEqual(['dashboard', 'app']);
    expect(latest.point.heap).toBeGreaterThan(0);
    expect(latest.point.loopP99).not.toBeNull();
    expect(latest.hub).toBeNull();
    expect(latest.pool).toBeNull();
  });

  it('lists recent requests on its admin route, newer than a sequence number', async () => {
    const b = await start();
    await (await fetch(`${b.url}/ok`)).text();
    await (await fetch(`${b.url}/boom`)).text();
    await (await fetch(`${b.adminUrl}/__bext/dashboard/history`)).text();
    const all = await (await fetch(`${b.adminUrl}/__bext/dashboard/recent`)).json();
    // Its own routes are left out.
    expect(all.requests.map((r: { path: string; status: number }) => `${r.path} ${r.status}`)).toEqual(['/boom 500', '/ok 200']);
    expect(all.requests[1]).toMatchObject({ method: 'GET', route: '/ok', group: 'default', slowest: { name: 'app onRoute' } });
    await (await fetch(`${b.url}/ok?again`)).text();
    const newer = await (await fetch(`${b.adminUrl}/__bext/dashboard/recent?after=${all.seq}`)).json();
    expect(newer.requests).toHaveLength(1);
    expect((await fetch(`${b.adminUrl}/__bext/dashboard/recent?after=x`)).status).toBe(400);
  });

  it('publishes aggregates on the hub topic system/metrics, never paths', async () => {
    const b = await start(['realtime']);
    const page = await (await fetch(`${b.adminUrl}/__bext/dashboard`)).text();
    expect(page).toContain('"hub":"/__bext/events?topic=system%2Fmetrics"');
    const got = sse(`${b.adminUrl}/__bext/events?topic=system/metrics`, (m) => m.some((x) => ((x.data as Snapshot)?.point?.n ?? 0) > 0) && m.some((x) => (x.data as Snapshot)?.hub));
    await until(async () => {
      await (await fetch(`${b.url}/secret-path-42`)).text();
      return Promise.race([got.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 100))]);
    }, 10000, 'a snapshot with traffic on the hub');
    const msgs = await got;
    const snap = msgs.find((x) => x.type === 'message')!;
    expect(snap.topic).toBe('system/metrics');
    expect((snap.data as Snapshot).v).toBe(1);
    expect(JSON.stringify(msgs)).not.toContain('secret-path');
  });

  it('streams snapshots itself when no hub is loaded', async () => {
    const b = await start();
    const page = await (await fetch(`${b.adminUrl}/__bext/dashboard`)).text();
    expect(page).toContain('"hub":null');
    const msgs = await sse(`${b.adminUrl}/__bext/dashboard/stream`, (m) => m.length >= 2);
    expect(msgs.map((m) => m.topic)).toEqual(['system/metrics', 'system/metrics']);
    const [a, c] = msgs.map((m) => (m.data as Snapshot).t);
    expect(c! > a!).toBe(true);
  });

  it('serves a self-contained page under a strict CSP, on admin routes only', async () => {
    const b = await start();
    for (const p of ['', '/app.js', '/history', '/recent', '/stream']) expect((await fetch(`${b.url}/__bext/dashboard${p}`)).status, p).toBe(403);
    const r = await fetch(`${b.adminUrl}/__bext/dashboard`);
    expect(r.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(r.headers.get('content-security-policy')).toContain("script-src 'self'");
    expect(r.headers.get('content-security-policy')).toContain("connect-src 'self'");
    const html = await r.text();
    const js = await (await fetch(`${b.adminUrl}/__bext/dashboard/app.js`)).text();
    // Nothing from elsewhere: no absolute URLs, no imports.
    for (const text of [html, js]) {
      expect(text).not.toMatch(/https?:\/\//);
      expect(text).not.toMatch(/\bimport\s*\(|@import/);
    }
    expect(html).toContain('<script src="/__bext/dashboard/app.js"></script>');
    // The boot data cannot close its script element.
    const evil = await (await fetch(`${b.adminUrl}/__bext/dashboard`, { headers: { host: 'x</script><script>alert(1)</script>' } })).text();
    expect(evil).not.toContain('</script><script>alert(1)');
  });

  it('reads Prometheus text and Cache-Status', () => {
    const text = readFileSync(new URL('./fixtures/metrics.txt', import.meta.url), 'utf8');
    const m = parseProm(text, (n) => n.startsWith('bext_'));
    expect(sum(m, 'bext_hook_calls_total', { plugin: 'waf' })).toBe(12);
    expect(m.get('bext_plugin_x_weird')![0]!.labels).toEqual({ v: 'a"b}c\\d', w: 'x\ny' });
    expect(m.has('other_metric')).toBe(false);
    expect(sum(m, 'bext_process_nodejs_heap_size_used_bytes')).toBe(123456);
    expect(cacheResult('bext; hit; ttl=4')).toBe('hit');
    expect(cacheResult('bext; hit; ttl=-1; detail=stale-while-revalidate')).toBe('stale');
    expect(cacheResult('bext; fwd=miss; fwd-status=200; stored')).toBe('miss');
    expect(cacheResult('bext; fwd=miss; collapsed')).toBe('collapsed');
    expect(cacheResult('bext; fwd=bypass; detail=route')).toBe('bypass');
    expect(cacheResult(undefined)).toBeNull();
  });
});
