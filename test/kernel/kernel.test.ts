import { afterEach, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { plugin, until } from '../helpers.js';

const running: Bext[] = [];
async function start(...a: Parameters<typeof startBext>) {
  const b = await startBext(...a);
  running.push(b);
  return b;
}
afterEach(async () => {
  while (running.length) await running.pop()!.close();
});

const echoCtx = () =>
  plugin('echo', { routes: [{ path: '/echo', methods: ['*'] }, { path: '/items/:id' }] }, `
export default () => ({
  onRoute(req) {
    return { status: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ctx: req.ctx, params: req.params, route: req.route, tag: req.headers['x-tag'] ?? null }) };
  },
});`);

describe('hook chains', () => {
  it('runs onRequest hooks in priority order, lower first', async () => {
    const mk = (n: string, prio: number) =>
      plugin(n, { hooks: { onRequest: { priority: prio } } }, `
export default () => ({ onRequest(req) { return { action: 'continue', ctx: { order: [...(req.ctx.order ?? []), ${JSON.stringify(n)}] } }; } });`);
    const b = await start({ plugins: [mk('c-thirty', 30), mk('a-ten', 10), mk('b-twenty', 20), echoCtx()] });
    const j = await (await fetch(`${b.url}/echo`)).json();
    expect(j.ctx.order).toEqual(['a-ten', 'b-twenty', 'c-thirty']);
  });

  it('short-circuits: a respond decision stops the chain and skips the route', async () => {
    const counter = plugin('counter', { hooks: { onRequest: { priority: 20 } } }, `
globalThis.__counterCalls = 0;
export default () => ({ onRequest() { globalThis.__counterCalls++; } });`);
    const teapot = plugin('teapot', { hooks: { onRequest: { priority: 10 } } }, `
export default () => ({ onRequest(req) { if (req.path === '/echo') return { action: 'respond', status: 418, body: 'short' }; } });`);
    const b = await start({ plugins: [counter, teapot, echoCtx()] });
    const r = await fetch(`${b.url}/echo`);
    expect(r.status).toBe(418);
    expect(await r.text()).toBe('short');
    expect((globalThis as Record<string, unknown>).__counterCalls).toBe(0);
    await fetch(`${b.url}/other`);
    expect((globalThis as Record<string, unknown>).__counterCalls).toBe(1);
  });

  it('a match filter keeps non-matching requests away from the plugin', async () => {
    const api = plugin('api-only', { hooks: { onRequest: { match: { paths: ['/api/**'], methods: ['POST'] } } } }, `
export default () => ({ onRequest(req) { return { action: 'continue', setHeaders: { 'x-tag': 'api' } }; } });`);
    const b = await start({ plugins: [api, echoCtx()] });
    expect((await (await fetch(`${b.url}/echo`, { method: 'POST' })).json()).tag).toBeNull();
    const calls = () => b.kernel.loaded().find((p) => p.name === 'api-only')!.counter('onRequest').calls;
    expect(calls()).toBe(0);
    await fetch(`${b.url}/api/x`, { method: 'GET' });
    expect(calls()).toBe(0);
    await fetch(`${b.url}/api/x`, { method: 'POST' });
    expect(calls()).toBe(1);
  });

  it('route params and continue headers reach the route', async () => {
    const tag = plugin('tagger', { hooks: { onRequest: {} } }, `export default () => ({ onRequest() { return { action: 'continue', setHeaders: { 'X-Tag': 'yes' } }; } });`);
    const b = await start({ plugins: [tag, echoCtx()] });
    const j = await (await fetch(`${b.url}/items/42`)).json();
    expect(j).toMatchObject({ params: { id: '42' }, route: '/items/:id', tag: 'yes' });
  });

  it('onRender wraps next() and onResponse sets headers and transforms a streamed body', async () => {
    const wrap = plugin('wrapper', { hooks: { onRender: { priority: 10 } } }, `
export default () => ({ async onRender(req, next) { const r = await next(); return { ...r, headers: { ...r.headers, 'x-wrapped': '1' } }; } });`);
    const leaf = plugin('leaf', { hooks: { onRender: { priority: 90 } } }, `
import { Readable } from 'node:stream';
export default () => ({ onRender(req) { return { status: 200, headers: { 'content-type': 'text/plain' }, body: Readable.from(['hello ', 'streamed ', 'world']) }; } });`);
    const upper = plugin('upper', { hooks: { onResponse: {} } }, `
import { Transform } from 'node:stream';
export default () => ({ onResponse(req, res) {
  return { setHeaders: { 'x-seen-status': String(res.status) }, transform: () => new Transform({ transform(c, e, cb) { cb(null, String(c).toUpperCase()); } }) };
} });`);
    const b = await start({ plugins: [wrap, leaf, upper] });
    const r = await fetch(`${b.url}/anything`);
    expect(r.status).toBe(200);
    expect(r.headers.get('x-wrapped')).toBe('1');
    expect(r.headers.get('x-seen-status')).toBe('200');
    expect(await r.text()).toBe('HELLO STREAMED WORLD');
  });

  it('answers 404 with a code when nothing serves the path', async () => {
    const b = await start({ plugins: [] });
    const r = await fetch(`${b.url}/nope`);
    expect(r.status).toBe(404);
    expect((await r.json()).error).toBe('BEXT_ERR_NOT_FOUND');
  });

  it('onPublish fans out: transforms flow on, deliveries are counted, drops stop', async () => {
    const pub = plugin('pub', { routes: [{ path: '/pub' }], capabilities: ['publish:custom/**'] }, `
export default (host) => ({ async onRoute(req) { const n = await host.publish('custom/' + (req.query || 'a'), { v: 1 }); return { status: 200, body: String(n) }; } });`);
    const xf = plugin('xf', { hooks: { onPublish: { priority: 1 } } }, `
export default () => ({ onPublish(m) { if (m.topic === 'custom/drop') return { action: 'drop' }; return { action: 'transform', data: { ...m.data, seen: true } }; } });`);
    const sink = plugin('sink', { hooks: { onPublish: { priority: 2 } } }, `
globalThis.__sink = [];
export default () => ({ onPublish(m) { globalThis.__sink.push(m); return { action: 'deliver', delivered: 3 }; } });`);
    const b = await start({ plugins: [pub, xf, sink] });
    expect(await (await fetch(`${b.url}/pub?x`)).text()).toBe('3');
    expect((globalThis as unknown as Record<string, unknown[]>).__sink).toEqual([{ topic: 'custom/x', data: { v: 1, seen: true }, publisher: 'pub' }]);
    expect(await (await fetch(`${b.url}/pub?drop`)).text()).toBe('0');
    expect((globalThis as unknown as Record<string, unknown[]>).__sink).toHaveLength(1);
  });
});

describe('route groups', () => {
  it('applies a group plugin set by path and host', async () => {
    const tag = plugin('tagger', { hooks: { onRequest: {} } }, `export default () => ({ onRequest() { return { action: 'continue', setHeaders: { 'x-tag': 'default' } }; } });`);
    const tenant = plugin('tenant-tag', { hooks: { onRequest: { priority: 200 } } }, `export default () => ({ onRequest() { return { action: 'continue', setHeaders: { 'x-tag': 'tenant' } }; } });`);
    const b = await start({
      plugins: [tag, { dir: tenant, scope: 'group' }, echoCtx()],
      config: { groups: [{ name: 'raw', paths: ['/echo'], hosts: ['raw.test'], remove: ['tagger'] }, { name: 'acme', hosts: ['*.acme.test'], add: ['tenant-tag'] }] },
    });
    const { request } = await import('undici');
    const get = async (host: string) => ((await (await request(`${b.url}/echo`, { headers: { host } })).body.json()) as { tag: string | null }).tag;
    expect(await get('localhost')).toBe('default');
    expect(await get('raw.test')).toBeNull();
    expect(await get('shop.acme.test')).toBe('tenant');
    expect(b.kernel.describe('shop.acme.test', '/echo').chains.onRequest).toEqual(['tagger(100)', 'tenant-tag(200)']);
  });
});

describe('load-time refusals', () => {
  it('refuses two plugins claiming the same route, naming both', async () => {
    const a = plugin('claim-a', { routes: [{ path: '/dup' }] }, `export default () => ({ onRoute: () => ({ status: 200 }) });`);
    const c = plugin('claim-b', { routes: [{ path: '/dup', methods: ['GET'] }] }, `export default () => ({ onRoute: () => ({ status: 200 }) });`);
    await expect(startBext({ plugins: [a, c] })).rejects.toMatchObject({ code: 'BEXT_ERR_ROUTE_CONFLICT', message: expect.stringMatching(/"claim-a".*"claim-b"/) });
  });

  it('refuses a hook declared but not exported', async () => {
    const p = plugin('liar', { hooks: { onRequest: {} } }, `export default () => ({})`);
    await expect(startBext({ plugins: [p] })).rejects.toMatchObject({ code: 'BEXT_ERR_PLUGIN_HOOK_MISSING' });
  });

  it('refuses duplicate plugin names', async () => {
    const a = plugin('same', {}, `export default () => ({})`);
    const c = plugin('same', {}, `export default () => ({})`);
    await expect(startBext({ plugins: [a, c] })).rejects.toMatchObject({ code: 'BEXT_ERR_PLUGIN_DUPLICATE' });
  });

  it('disposes loaded plugins in reverse order when a later one fails to load', async () => {
    const mk = (n: string) => plugin(n, {}, `globalThis.__disposed ??= []; export default () => ({ dispose() { globalThis.__disposed.push(${JSON.stringify(n)}); } });`);
    const bad = plugin('bad-load', {}, `export default () => { throw new Error('boom at load'); }`);
    (globalThis as Record<string, unknown>).__disposed = [];
    await expect(startBext({ plugins: [mk('first'), mk('second'), bad] })).rejects.toMatchObject({ code: 'BEXT_ERR_PLUGIN_LOAD' });
    expect((globalThis as Record<string, unknown>).__disposed).toEqual(['second', 'first']);
  });
});

describe('failure handling', () => {
  const thrower = (name: string, failMode: string, extra: Record<string, unknown> = {}) =>
    plugin(name, { hooks: { onRequest: {} }, failMode, ...extra }, `
globalThis.__fail ??= {};
export default () => ({ onRequest() { if (globalThis.__fail[${JSON.stringify(name)}]) throw 42; } });`);
  const setFail = (n: string, v: boolean) => (((globalThis as unknown as Record<string, Record<string, boolean>>).__fail ??= {})[n] = v);

  it('fails open: a throwing hook is skipped and counted', async () => {
    setFail('open-thrower', true);
    const b = await start({ plugins: [thrower('open-thrower', 'open'), echoCtx()] });
    expect((await fetch(`${b.url}/echo`)).status).toBe(200);
    const p = b.kernel.loaded().find((x) => x.name === 'open-thrower')!;
    expect(p.counter('onRequest').errors).toBe(1);
    expect(b.logs.some((l) => l.msg === 'plugin hook failed' && String(l.error).includes('non-Error value'))).toBe(true);
  });

  it('fails closed: a throwing hook answers 503 with the code', async () => {
    setFail('closed-thrower', true);
    const b = await start({ plugins: [thrower('closed-thrower', 'closed'), echoCtx()] });
    const r = await fetch(`${b.url}/echo`);
    expect(r.status).toBe(503);
    expect((await r.json()).error).toBe('BEXT_ERR_PLUGIN_FAILED');
  });

  it('a hook that overruns its deadline is cut off (open → continues, closed → 503)', async () => {
    const hang = (n: string, mode: string) => plugin(n, { hooks: { onRequest: {} }, failMode: mode, limits: { timeoutMs: 50 } }, `export default () => ({ onRequest() { return new Promise(() => {}); } });`);
    const b = await start({ plugins: [hang('hang-open', 'open'), echoCtx()] });
    expect((await fetch(`${b.url}/echo`)).status).toBe(200);
    expect(b.kernel.loaded()[0]!.counter('onRequest').timeouts).toBe(1);
    const c = await start({ plugins: [hang('hang-closed', 'closed'), echoCtx()] });
    const r = await fetch(`${c.url}/echo`);
    expect(r.status).toBe(503);
    expect((await r.json()).error).toBe('BEXT_ERR_PLUGIN_TIMEOUT');
  });

  it('quarantines after repeated failures, skips while quarantined, and recovers after the backoff', async () => {
    setFail('flaky', true);
    const b = await start({ plugins: [thrower('flaky', 'closed', { limits: { quarantineAfter: 3 } }), echoCtx()], quarantineBackoffMs: 100 });
    const p = b.kernel.loaded().find((x) => x.name === 'flaky')!;
    for (let i = 0; i < 3; i++) expect((await fetch(`${b.url}/echo`)).status).toBe(503);
    expect(p.state).toBe('quarantined');
    const r = await fetch(`${b.url}/echo`);
    expect(r.status).toBe(503);
    expect((await r.json()).error).toBe('BEXT_ERR_PLUGIN_QUARANTINED');
    expect(p.counter('onRequest').calls).toBe(3);
    setFail('flaky', false);
    await until(async () => (await fetch(`${b.url}/echo`)).status === 200, 5000, 'recovery after backoff');
    expect(p.state).toBe('loaded');
    expect(p.consecutiveFailures).toBe(0);
  });

  it('a failed trial after quarantine doubles the backoff', async () => {
    setFail('stubborn', true);
    const b = await start({ plugins: [thrower('stubborn', 'open', { limits: { quarantineAfter: 1 } }), echoCtx()], quarantineBackoffMs: 50 });
    const p = b.kernel.loaded().find((x) => x.name === 'stubborn')!;
    await fetch(`${b.url}/echo`);
    expect(p.backoffMs).toBe(50);
    await until(async () => {
      await fetch(`${b.url}/echo`);
      return p.backoffMs === 100;
    }, 5000, 'second quarantine');
  });

  it('bad decisions are refused with a code and the server keeps serving', async () => {
    const weird = plugin('weird', { hooks: { onRequest: {} }, failMode: 'closed' }, `export default () => ({ onRequest() { return { action: 'explode' }; } });`);
    const b = await start({ plugins: [weird, echoCtx()] });
    const r = await fetch(`${b.url}/echo`);
    expect(r.status).toBe(500);
    expect((await r.json()).error).toBe('BEXT_ERR_PLUGIN_BAD_DECISION');
  });
});

describe('capabilities', () => {
  it('refuses an ungranted host call with a code and audits it', async () => {
    const p = plugin('sneaky', { routes: [{ path: '/try' }], capabilities: ['publish:custom/*'] }, `
export default (host) => ({ async onRoute(req) {
  const out = {};
  for (const [k, f] of Object.entries({
    publishOther: () => host.publish('system/deploy', {}),
    kv: () => host.kv.get('x'),
    fetch: () => host.fetch({ url: 'http://127.0.0.1:6379/' }),
    metric: async () => host.metric('x', 1),
  })) { try { await f(); out[k] = 'allowed'; } catch (e) { out[k] = e.code; } }
  return { status: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify(out) };
} });`);
    const b = await start({ plugins: [{ dir: p, grants: ['publish:custom/*'] }] });
    const j = await (await fetch(`${b.url}/try`)).json();
    expect(j).toEqual({ publishOther: 'BEXT_ERR_CAP_DENIED', kv: 'BEXT_ERR_CAP_DENIED', fetch: 'BEXT_ERR_CAP_DENIED', metric: 'BEXT_ERR_CAP_DENIED' });
    expect(b.kernel.audits.map((a) => a.fn).sort()).toEqual(['bext_fetch', 'bext_kv_get', 'bext_metric', 'bext_publish']);
    const metrics = await b.kernel.metrics.text();
    expect(metrics).toMatch(/bext_capability_denials_total\{plugin="sneaky",function="bext_publish"\} 1/);
  });

  it('granted capabilities work: kv, metric, and fetch to an exactly granted loopback host', async () => {
    const http = await import('node:http');
    const up = http.createServer((_q, s) => s.end('upstream-ok')).listen(0, '127.0.0.1');
    await new Promise((r) => up.once('listening', r));
    const port = (up.address() as { port: number }).port;
    const p = plugin('granted', { routes: [{ path: '/go' }], capabilities: ['kv', 'metrics', `fetch:127.0.0.1:${port}`, 'fetch:*.example.invalid'] }, `
export default (host) => ({ async onRoute() {
  await host.kv.set('k', 'v');
  host.metric('things', 2, { kind: 'a' });
  const f = await host.fetch({ url: 'http://127.0.0.1:${port}/' });
  let wild; try { await host.fetch({ url: 'http://10.0.0.1.example.invalid/' }); wild = 'allowed'; } catch (e) { wild = e.code ?? e.message; }
  return { status: 200, body: JSON.stringify({ kv: await host.kv.get('k'), fetched: f.body, wild }) };
} });`);
    try {
      const b = await start({ plugins: [p] });
      const j = await (await fetch(`${b.url}/go`)).json();
      expect(j.kv).toBe('v');
      expect(j.fetched).toBe('upstream-ok');
      expect(j.wild).not.toBe('allowed');
      expect(await b.kernel.metrics.text()).toMatch(/bext_plugin_granted_things\{kind="a"\} 2/);
    } finally {
      up.close();
    }
  });
});

describe('admin routes', () => {
  it('are served on the admin listener and refused on the public one without the token', async () => {
    const b = await start({ plugins: ['metrics'], config: { admin: { token: 'a-very-long-admin-token' } } });
    const pub = await fetch(`${b.url}/metrics`);
    expect(pub.status).toBe(403);
    expect((await pub.json()).error).toBe('BEXT_ERR_ADMIN_FORBIDDEN');
    expect((await fetch(`${b.adminUrl}/metrics`)).status).toBe(200);
    expect((await fetch(`${b.url}/metrics`, { headers: { authorization: 'Bearer a-very-long-admin-token' } })).status).toBe(200);
    expect((await fetch(`${b.url}/metrics`, { headers: { authorization: 'Bearer a-very-long-admin-tokeX' } })).status).toBe(403);
  });
});

describe('onConnect', () => {
  it('rejects a socket before any HTTP is parsed', async () => {
    const deny = plugin('deny-all', { hooks: { onConnect: {} } }, `export default () => ({ onConnect(info) { return info.remoteAddress ? { action: 'reject' } : undefined; } });`);
    const b = await start({ plugins: [deny, echoCtx()] });
    const net = await import('node:net');
    const got = await new Promise<string>((resolve) => {
      const s = net.connect(b.port, '127.0.0.1', () => s.write('GET /echo HTTP/1.1\r\nhost: x\r\n\r\n'));
      let data = '';
      s.on('data', (d) => (data += d));
      s.on('close', () => resolve(data));
      s.on('error', () => undefined);
    });
    expect(got).toBe('');
    // The admin listener is not subject to onConnect.
    expect((await fetch(`${b.adminUrl}/echo`)).status).toBe(200);
  });
});

describe('upgrades', () => {
  it('hands an HTTP upgrade on a claimed route to the plugin, after onRequest', async () => {
    const ws = plugin('ws-echo', { routes: [{ path: '/ws' }] }, `
import { WebSocketServer } from 'ws';
const wss = new WebSocketServer({ noServer: true });
export default () => ({
  onRoute(req) {
    return { action: 'upgrade', upgrade(raw, socket, head) {
      wss.handleUpgrade(raw, socket, head, (c) => c.on('message', (m) => c.send('echo:' + m + ':' + req.ctx.who)));
    } };
  },
  dispose() { wss.close(); },
});`);
    const who = plugin('who', { hooks: { onRequest: {} } }, `
export default () => ({ onRequest(req) { if (req.headers['x-deny']) return { action: 'respond', status: 401, body: 'no' }; return { action: 'continue', ctx: { who: 'alice' } }; } });`);
    const b = await start({ plugins: [who, ws] });
    const { WebSocket } = await import('ws');
    const c = new WebSocket(`ws://127.0.0.1:${b.port}/ws`);
    await new Promise((r, j) => c.once('open', r).once('error', j));
    c.send('hi');
    const [msg] = await new Promise<unknown[]>((r) => c.once('message', (...a) => r(a)));
    expect(String(msg)).toBe('echo:hi:alice');
    c.close();
    const denied = new WebSocket(`ws://127.0.0.1:${b.port}/ws`, { headers: { 'x-deny': '1' } });
    const status = await new Promise<number>((r) => denied.once('unexpected-response', (_q, res) => r(res.statusCode ?? 0)).once('error', () => r(-1)));
    expect(status).toBe(401);
    const none = new WebSocket(`ws://127.0.0.1:${b.port}/nowhere`);
    expect(await new Promise<number>((r) => none.once('unexpected-response', (_q, res) => r(res.statusCode ?? 0)).once('error', () => r(-1)))).toBe(404);
  });
});

describe('kernel services for trusted plugins', () => {
  it('request observers get each finished request with per-hook timings', async () => {
    const obs = plugin('observer', { hooks: { onRequest: { priority: 1 } } }, `
globalThis.__records = [];
export default (host) => {
  host.kernel.observeRequests((r) => globalThis.__records.push(r));
  return { onRequest() {} };
};`);
    const b = await start({ plugins: [obs, echoCtx()] });
    await (await fetch(`${b.url}/items/7?x=1`)).text();
    const recs = (globalThis as unknown as { __records: { path: string; route: string; status: number; timings: { plugin: string; hook: string; durMs: number }[] }[] }).__records;
    await until(() => recs.length === 1);
    expect(recs[0]).toMatchObject({ path: '/items/7', route: '/items/:id', status: 200 });
    expect(recs[0]!.timings.map((t) => `${t.plugin}.${t.hook}`)).toEqual(['observer.onRequest', 'echo.onRoute']);
    expect(recs[0]!.timings.every((t) => t.durMs >= 0)).toBe(true);
  });

  it('early hints reach the client as a 103 before the final answer', async () => {
    const p = plugin('hinter', { routes: [{ path: '/page' }] }, `
export default () => ({ onRoute(req) { req.earlyHints({ link: '</app.css>; rel=preload; as=style' }); return { status: 200, body: 'page' }; } });`);
    const b = await start({ plugins: [p] });
    const net = await import('node:net');
    const raw = await new Promise<string>((resolve) => {
      const s = net.connect(b.port, '127.0.0.1', () => s.write('GET /page HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n'));
      let d = '';
      s.on('data', (c) => (d += c));
      s.on('end', () => resolve(d));
    });
    expect(raw.startsWith('HTTP/1.1 103 Early Hints\r\n')).toBe(true);
    expect(raw).toMatch(/link: <\/app\.css>; rel=preload; as=style/i);
    expect(raw).toMatch(/HTTP\/1\.1 200 OK[\s\S]*page$/);
  });

  it('an HTTP/2 server created by a plugin runs the same pipeline through handle()', async () => {
    const h2 = plugin('h2c-listener', {}, `
import http2 from 'node:http2';
globalThis.__h2port = null;
export default (host) => {
  const server = http2.createServer((req, res) => host.kernel.handle(req, res));
  server.listen(0, '127.0.0.1', () => { globalThis.__h2port = server.address().port; });
  return { dispose() { server.close(); } };
};`);
    const b = await start({ plugins: [h2, echoCtx()] });
    const g = globalThis as unknown as { __h2port: number | null };
    await until(() => g.__h2port !== null);
    const http2 = await import('node:http2');
    const client = http2.connect(`http://127.0.0.1:${g.__h2port}`);
    const body = await new Promise<string>((resolve, reject) => {
      const r = client.request({ ':path': '/items/9', ':authority': 'h2.test' });
      let d = '';
      r.on('data', (c) => (d += c));
      r.on('end', () => resolve(d));
      r.on('error', reject);
    });
    client.close();
    expect(JSON.parse(body)).toMatchObject({ params: { id: '9' }, route: '/items/:id' });
    void b;
  });
});

describe('trailers and render-level upgrades', () => {
  it('sends trailers after a streamed body over HTTP/2, and over HTTP/1.1 when the client accepts them', async () => {
    const t = plugin('trailing', { routes: [{ path: '/t' }] }, `
import http2 from 'node:http2';
import { Readable } from 'node:stream';
globalThis.__h2t = null;
export default (host) => {
  const server = http2.createServer((req, res) => host.kernel.handle(req, res));
  server.listen(0, '127.0.0.1', () => { globalThis.__h2t = server.address().port; });
  return {
    onRoute() { return { status: 200, headers: { 'content-type': 'text/plain' }, body: Readable.from(['a', 'b']), trailers: Promise.resolve({ 'grpc-status': '0', 'x-sum': 'ab' }) }; },
    dispose() { server.close(); },
  };
};`);
    const b = await start({ plugins: [t] });
    const g = globalThis as unknown as { __h2t: number | null };
    await until(() => g.__h2t !== null);
    const http2 = await import('node:http2');
    const client = http2.connect(`http://127.0.0.1:${g.__h2t}`);
    const got = await new Promise<{ body: string; trailers: Record<string, unknown> }>((resolve, reject) => {
      const r = client.request({ ':path': '/t' });
      let body = '';
      let trailers: Record<string, unknown> = {};
      r.on('trailers', (h) => (trailers = h));
      r.on('data', (c) => (body += c));
      r.on('end', () => resolve({ body, trailers }));
      r.on('error', reject);
    });
    client.close();
    expect(got.body).toBe('ab');
    expect(got.trailers).toMatchObject({ 'grpc-status': '0', 'x-sum': 'ab' });
    const net = await import('node:net');
    const raw = await new Promise<string>((resolve) => {
      const s = net.connect(b.port, '127.0.0.1', () => s.write('GET /t HTTP/1.1\r\nhost: x\r\nte: trailers\r\nconnection: close\r\n\r\n'));
      let d = '';
      s.on('data', (c) => (d += c));
      s.on('end', () => resolve(d));
    });
    expect(raw).toMatch(/transfer-encoding: chunked/i);
    expect(raw).toMatch(/0\r\ngrpc-status: 0\r\nx-sum: ab\r\n\r\n$/i);
  });

  it('a trusted onRender hook may take an upgrade on a path no plugin claimed', async () => {
    const p = plugin('render-ws', { hooks: { onRender: { priority: 40 } } }, `
import { WebSocketServer } from 'ws';
const wss = new WebSocketServer({ noServer: true });
export default () => ({
  onRender(req, next) {
    if (req.path === '/live' && req.headers.upgrade === 'websocket') {
      return { action: 'upgrade', upgrade(raw, socket, head) { wss.handleUpgrade(raw, socket, head, (c) => c.send('hello over ' + req.path)); } };
    }
    return next();
  },
  dispose() { wss.close(); },
});`);
    const b = await start({ plugins: [p] });
    const { WebSocket } = await import('ws');
    const c = new WebSocket(`ws://127.0.0.1:${b.port}/live`);
    const [msg] = await new Promise<unknown[]>((r, j) => c.once('message', (...a) => r(a)).once('error', j));
    expect(String(msg)).toBe('hello over /live');
    c.close();
    const other = new WebSocket(`ws://127.0.0.1:${b.port}/elsewhere`);
    expect(await new Promise<number>((r) => other.once('unexpected-response', (_q, res) => r(res.statusCode ?? 0)).once('error', () => r(-1)))).toBe(404);
  });
});

describe('TLS listeners', () => {
  it('serve() takes a tls.Server: its decrypted sockets run the same pipeline', async () => {
    // @peculiar/x509 needs the Reflect polyfill loaded before it.
    await import('reflect-metadata');
    const x509 = await import('@peculiar/x509');
    const { webcrypto } = await import('node:crypto');
    x509.cryptoProvider.set(webcrypto as unknown as Crypto);
    const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
    const keys = await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify']);
    const cert = await x509.X509CertificateGenerator.createSelfSigned({ serialNumber: '01', name: 'CN=localhost', notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3_600_000), signingAlgorithm: alg, keys, extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'dns', value: 'localhost' }])] });
    const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)).toString('base64');
    const key = `-----BEGIN PRIVATE KEY-----\n${pkcs8.match(/.{1,64}/g)!.join('\n')}\n-----END PRIVATE KEY-----\n`;
    const b = await start({ plugins: [echoCtx()] });
    const tlsMod = await import('node:tls');
    const server = tlsMod.createServer({ key, cert: cert.toString('pem') });
    await b.kernel.serve(server, { port: 0, host: '127.0.0.1' });
    const port = (server.address() as { port: number }).port;
    const body = await new Promise<string>((resolve, reject) => {
      const s = tlsMod.connect({ port, host: '127.0.0.1', servername: 'localhost', rejectUnauthorized: false }, () => s.write('GET /items/5 HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n'));
      let d = '';
      s.on('data', (c) => (d += c));
      s.on('end', () => resolve(d));
      s.on('error', reject);
    });
    expect(body).toMatch(/^HTTP\/1\.1 200 OK/);
    expect(body).toContain('"params":{"id":"5"}');
  });
});
