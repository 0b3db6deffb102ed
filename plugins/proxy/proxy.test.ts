import http from 'node:http';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { readFileSync } from 'node:fs';
import { validatePluginConfig } from '../../kernel/config.js';
import { startBext } from '../../sdk/harness.js';
import { compileConfig, type ProxyConfig } from './config.js';
import { plugin, until } from '../../test/helpers.js';
import { startUpstream } from './fixtures/upstream.mjs';
import { PROXY_DIR, startProxy, type ProxyUnderTest } from './fixtures/setup.js';

type Upstream = Awaited<ReturnType<typeof startUpstream>>;

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function upstreams(...names: string[]): Promise<Upstream[]> {
  const ups = await Promise.all(names.map((n) => startUpstream(n)));
  for (const u of ups) cleanups.push(() => u.close());
  return ups;
}

async function proxy(cfg: Record<string, unknown>, extra: Parameters<typeof startProxy>[1] = []): Promise<ProxyUnderTest> {
  const p = await startProxy(cfg, extra);
  cleanups.push(() => p.close());
  return p;
}

async function get(url: string, headers: Record<string, string> = {}) {
  const r = await request(url, { headers });
  const text = await r.body.text();
  return { status: r.statusCode, headers: r.headers, text, json: () => JSON.parse(text) };
}

/** node:http, which (unlike undici) sends any Connection and hop-by-hop header it is given. */
function rawGet(url: string, headers: Record<string, string>) {
  return new Promise<{ status: number; headers: http.IncomingHttpHeaders; json: () => any }>((resolve, reject) => {
    http.get(url, { headers, agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, json: () => JSON.parse(text) }));
    }).on('error', reject);
  });
}

describe('forwarding', () => {
  it('rewrites the path, keeps the query, and sets the forwarding headers for an untrusted client', async () => {
    const [a] = await upstreams('a');
    const p = await proxy({ upstreams: { app: { members: [a!.url] } }, routes: [{ upstream: 'app', paths: ['/api/**'], stripPrefix: '/api' }] });
    const r = await rawGet(`${p.url}/api/items/7?x=1&y=2`, {
      host: 'shop.test:8080',
      'x-forwarded-for': '6.6.6.6',
      'x-forwarded-proto': 'https',
      forwarded: 'for=6.6.6.6',
      via: '1.0 evil',
      connection: 'keep-alive, x-secret',
      'x-secret': 'hop',
      'keep-alive': 'timeout=5',
      'proxy-authorization': 'Basic Zm9vOmJhcg==',
      'x-kept': 'yes',
    });
    expect(r.status).toBe(200);
    const seen = r.json();
    expect(seen.url).toBe('/items/7?x=1&y=2');
    const h = seen.headers;
    // A client that is not a trusted proxy cannot plant addresses.
    expect(h['x-forwarded-for']).toBe('127.0.0.1');
    expect(h['x-forwarded-proto']).toBe('http');
    expect(h['x-forwarded-host']).toBe('shop.test:8080');
    expect(h.forwarded).toBe('for=127.0.0.1;host="shop.test:8080";proto=http');
    expect(h.via).toBe('1.0 evil, 1.1 bext');
    expect(h.host).toBe('shop.test:8080');
    expect(h['x-kept']).toBe('yes');
    for (const hop of ['x-secret', 'keep-alive', 'proxy-authorization']) expect(h[hop]).toBeUndefined();
    // Hop-by-hop headers from the upstream (its Connection names x-hop) do not reach the client.
    expect(r.headers['x-hop']).toBeUndefined();
    expect(r.headers.via).toBe('1.1 bext');
    expect(r.headers['x-member']).toBe('a');
  });

  it('extends the forwarding headers of a trusted proxy', async () => {
    const [a] = await upstreams('a');
    const p = await proxy({ upstreams: { app: { members: [a!.url] } }, routes: [{ upstream: 'app' }], trustedProxies: ['127.0.0.0/8'], via: 'edge' });
    const h = (await get(`${p.url}/x`, { 'x-forwarded-for': '203.0.113.9', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'example.com', forwarded: 'for=203.0.113.9;proto=https' })).json().headers;
    expect(h['x-forwarded-for']).toBe('203.0.113.9, 127.0.0.1');
    expect(h['x-forwarded-proto']).toBe('https');
    expect(h['x-forwarded-host']).toBe('example.com');
    expect(h.forwarded).toMatch(/^for=203\.0\.113\.9;proto=https, for=127\.0\.0\.1;host="127\.0\.0\.1:\d+";proto=http$/);
    expect(h.via).toBe('1.1 edge');
  });

  it('applies regex rewrites, prefixes, header edits and the upstream Host', async () => {
    const [a] = await upstreams('a');
    const p = await proxy({
      upstreams: { app: { members: [a!.url], hostHeader: 'upstream' } },
      routes: [{
        upstream: 'app',
        paths: ['/v1/**'],
        rewrite: { from: '^/v1/users/([0-9]+)$', to: '/people/$1' },
        addPrefix: '/internal',
        headers: { request: { set: { 'X-Api-Key': 'k1' }, remove: ['cookie'] }, response: { set: { 'x-served-by': 'bext' }, remove: ['x-member'] } },
      }],
      via: false,
    });
    const r = await get(`${p.url}/v1/users/42`, { cookie: 'sid=1' });
    const seen = r.json();
    expect(seen.url).toBe('/internal/people/42');
    expect(seen.headers.host).toBe(`127.0.0.1:${a!.port}`);
    expect(seen.headers['x-api-key']).toBe('k1');
    expect(seen.headers.cookie).toBeUndefined();
    expect(seen.headers.via).toBeUndefined();
    expect(r.headers['x-served-by']).toBe('bext');
    expect(r.headers['x-member']).toBeUndefined();
    expect(r.headers.via).toBeUndefined();
  });

  it('matches routes by host and method, and leaves everything else to the next renderer', async () => {
    const [a, b] = await upstreams('a', 'b');
    const fallback = plugin('fallback', { hooks: { onRender: { priority: 60 } } }, `export default () => ({ onRender: () => ({ status: 200, body: 'fallback' }) });`);
    const p = await proxy({
      upstreams: { api: { members: [a!.url] }, www: { members: [b!.url] } },
      routes: [{ upstream: 'api', hosts: ['api.test'], methods: ['GET', 'POST'] }, { upstream: 'www', hosts: ['*.www.test'] }],
    }, [{ dir: fallback }]);
    expect((await get(`${p.url}/`, { host: 'api.test' })).headers['x-member']).toBe('a');
    expect((await get(`${p.url}/`, { host: 'x.www.test' })).headers['x-member']).toBe('b');
    expect((await get(`${p.url}/`, { host: 'other.test' })).text).toBe('fallback');
    const del = await request(`${p.url}/`, { method: 'DELETE', headers: { host: 'api.test' } });
    expect(await del.body.text()).toBe('fallback');
  });

  it('passes HEAD, 204 and 304 answers without inventing a body length', async () => {
    const [a] = await upstreams('a');
    const p = await proxy({ upstreams: { app: { members: [a!.url] } }, routes: [{ upstream: 'app' }] });
    const head = await request(`${p.url}/x`, { method: 'HEAD' });
    await head.body.dump();
    expect(head.statusCode).toBe(200);
    expect(Number(head.headers['content-length'])).toBeGreaterThan(100);
    const nc = await get(`${p.url}/status/204`);
    expect(nc.status).toBe(204);
    expect(nc.text).toBe('');
  });
});

describe('streaming', () => {
  it('streams the response: the first chunk reaches the client while the upstream is still writing', async () => {
    const [a] = await upstreams('a');
    const p = await proxy({ upstreams: { app: { members: [a!.url] } }, routes: [{ upstream: 'app' }] });
    const r = await request(`${p.url}/stream`);
    const it = r.body[Symbol.asyncIterator]();
    expect(String((await it.next()).value)).toBe('first;');
    await fetch(`${a!.url}/__release`);
    let rest = '';
    for (let c = await it.next(); !c.done; c = await it.next()) rest += String(c.value);
    expect(rest).toBe('rest');
  });

  it('streams the request: the upstream echoes the first chunk before the client has sent the second', async () => {
    const [a] = await upstreams('a');
    const p = await proxy({ upstreams: { app: { members: [a!.url] } }, routes: [{ upstream: 'app' }] });
    let firstEchoed!: () => void;
    const echoed = new Promise<void>((r) => (firstEchoed = r));
    async function* body() {
      yield Buffer.from('one;');
      await echoed;
      yield Buffer.from('two');
    }
    const r = await request(`${p.url}/echo`, { method: 'POST', body: Readable.from(body()), headers: { 'content-type': 'text/plain' } });
    const it = r.body[Symbol.asyncIterator]();
    expect(String((await it.next()).value)).toBe('one;');
    firstEchoed();
    let rest = '';
    for (let c = await it.next(); !c.done; c = await it.next()) rest += String(c.value);
    expect(rest).toBe('two');
  });

  it('carries a large body both ways intact', async () => {
    const [a] = await upstreams('a');
    const p = await proxy({ upstreams: { app: { members: [a!.url] } }, routes: [{ upstream: 'app' }] });
    const big = Buffer.alloc(6 << 20);
    for (let i = 0; i < big.length; i += 4) big.writeUInt32LE(i, i);
    const r = await request(`${p.url}/echo`, { method: 'PUT', body: big, headers: { 'content-type': 'application/octet-stream' } });
    const back = Buffer.from(await r.body.arrayBuffer());
    expect(r.statusCode).toBe(200);
    expect(back.equals(big)).toBe(true);
  });
});

describe('balancing through bext', () => {
  const members = (ups: Upstream[]) => ups.map((u) => u.state.received.length);

  it('round-robin follows the weights exactly', async () => {
    const ups = await upstreams('a', 'b');
    const p = await proxy({ upstreams: { app: { members: [ups[0]!.url, { url: ups[1]!.url, weight: 2 }] } }, routes: [{ upstream: 'app' }] });
    for (let i = 0; i < 30; i++) expect((await get(`${p.url}/x`)).status).toBe(200);
    expect(members(ups)).toEqual([10, 20]);
  });

  it('least-connections keeps new requests off a member that is still busy', async () => {
    const ups = await upstreams('a', 'b');
    const p = await proxy({ upstreams: { app: { members: ups.map((u) => u.url), strategy: 'least-connections' } }, routes: [{ upstream: 'app' }] });
    const ac = new AbortController();
    const slow = request(`${p.url}/hang`, { signal: ac.signal }).catch(() => null);
    await until(() => ups.some((u) => u.state.hanging.size === 1), 5000, 'a request to hang');
    const busy = ups.find((u) => u.state.hanging.size === 1)!;
    const before = busy.state.received.length;
    for (let i = 0; i < 10; i++) expect((await get(`${p.url}/x`)).status).toBe(200);
    expect(busy.state.received.length).toBe(before);
    // The client giving up cancels the upstream request too.
    ac.abort();
    await slow;
    await until(() => busy.state.hanging.size === 0, 5000, 'the hanging upstream request to be cancelled');
  });

  it('ip-hash keeps each key on one member and spreads keys over the pool', async () => {
    const ups = await upstreams('a', 'b', 'c');
    const p = await proxy({ upstreams: { app: { members: ups.map((u) => u.url), strategy: 'ip-hash', hashKey: 'header:x-user' } }, routes: [{ upstream: 'app' }] });
    const owner = new Map<string, string>();
    for (let round = 0; round < 3; round++) {
      for (let u = 0; u < 30; u++) {
        const m = (await get(`${p.url}/x`, { 'x-user': `user-${u}` })).headers['x-member'] as string;
        if (round === 0) owner.set(`user-${u}`, m);
        else expect(m).toBe(owner.get(`user-${u}`));
      }
    }
    expect(new Set(owner.values()).size).toBe(3);
  });

  it('random (two choices) follows the weights', async () => {
    const ups = await upstreams('a', 'b');
    const p = await proxy({ upstreams: { app: { members: [ups[0]!.url, { url: ups[1]!.url, weight: 3 }], strategy: 'random' } }, routes: [{ upstream: 'app' }] });
    for (let i = 0; i < 200; i++) await get(`${p.url}/x`);
    const [na, nb] = members(ups);
    expect(na! + nb!).toBe(200);
    expect(na! / 200).toBeGreaterThan(0.12);
    expect(na! / 200).toBeLessThan(0.4);
  });
});

describe('composition', () => {
  it('sits under an outer renderer (a cache) that wraps next() and may answer from its own copy', async () => {
    const [a] = await upstreams('a');
    const cache = plugin('toycache', { hooks: { onRender: { priority: 10 } } }, `
const store = new Map();
export default () => ({
  async onRender(req, next) {
    const hit = store.get(req.path);
    if (hit) return { ...hit, headers: { ...hit.headers, 'x-cache': 'HIT' } };
    const res = await next();
    if (/max-age=\\d+/.test(String(res.headers?.['cache-control'] ?? ''))) {
      const chunks = [];
      if (typeof res.body === 'string' || res.body instanceof Uint8Array) chunks.push(Buffer.from(res.body));
      else if (res.body) for await (const c of res.body) chunks.push(Buffer.from(c));
      const copy = { status: res.status, headers: res.headers, body: Buffer.concat(chunks) };
      store.set(req.path, copy);
      return { ...copy, headers: { ...copy.headers, 'x-cache': 'MISS' } };
    }
    return res;
  },
});`);
    const p = await proxy({ upstreams: { app: { members: [a!.url] } }, routes: [{ upstream: 'app' }] }, [{ dir: cache }]);
    const first = await get(`${p.url}/page`);
    const second = await get(`${p.url}/page`);
    expect(first.headers['x-cache']).toBe('MISS');
    expect(second.headers['x-cache']).toBe('HIT');
    expect(second.text).toBe(first.text);
    expect(a!.state.received.length).toBe(1);
    expect(p.bx.kernel.describe('localhost', '/page').chains.onRender).toEqual(['toycache(10)', 'proxy(40)']);
  });

  it('records metrics about members and requests', async () => {
    const [a] = await upstreams('a');
    const p = await proxy({ upstreams: { app: { members: [a!.url] } }, routes: [{ upstream: 'app' }] });
    for (let i = 0; i < 3; i++) await get(`${p.url}/x`);
    await until(async () => /bext_plugin_proxy_member_requests_total\{member="127\.0\.0\.1:\d+",upstream="app"\} 3/.test(await p.bx.kernel.metrics.text()), 5000, 'request metrics');
    const text = await p.bx.kernel.metrics.text();
    expect(text).toMatch(/bext_plugin_proxy_member_available\{member="127\.0\.0\.1:\d+",upstream="app"\} 1/);
    expect(text).toMatch(/bext_plugin_proxy_breaker_state\{upstream="app"\} 0/);
  });

  it('refuses configs it cannot serve, naming the JSON path and the fix', () => {
    const manifest = JSON.parse(readFileSync(`${PROXY_DIR}/bext-plugin.json`, 'utf8')) as { configSchema: Record<string, unknown> };
    const check = (section: Record<string, unknown>) => () => compileConfig(validatePluginConfig('proxy', manifest.configSchema, section, 'bext.config.json') as unknown as ProxyConfig);
    const one = (up: Record<string, unknown>, route: Record<string, unknown> = {}) => check({ upstreams: { app: { members: ['http://127.0.0.1:1'], ...up } }, routes: [{ upstream: 'app', ...route }] });
    expect(one({ members: ['http://127.0.0.1:1/base'] })).toThrow(expect.objectContaining({ message: expect.stringMatching(/members\[0\]: expected an origin/), hint: expect.stringMatching(/stripPrefix/) }));
    expect(one({ members: ['http://127.0.0.1:1', { url: 'http://127.0.0.1:1', weight: 2 }] })).toThrow(/listed twice/);
    expect(one({}, { rewrite: { from: '([', to: '' } })).toThrow(/routes\[0\]\.rewrite\.from: expected a regular expression/);
    expect(one({ timeouts: { headersMs: 300_000 } })).toThrow(/hook deadline/);
    expect(one({ strategy: 'fastest' })).toThrow(/strategy: expected one of/);
    expect(one({ members: ['https://x.test'] })).toThrow(/members/);
    expect(one({})).not.toThrow();
  });

  it('refuses a route that names an unknown upstream, naming the path', async () => {
    await expect(startBext({ plugins: [{ dir: PROXY_DIR }], config: { plugins: { proxy: { upstreams: { app: { members: ['http://127.0.0.1:1'] } }, routes: [{ upstream: 'nope' }] } } } }))
      .rejects.toMatchObject({ code: 'BEXT_ERR_CONFIG_INVALID', message: expect.stringContaining('$.plugins.proxy.routes[0].upstream') });
  });

  it('closes every upstream connection when disposed', async () => {
    const [a] = await upstreams('a');
    const p = await startProxy({ upstreams: { app: { members: [a!.url] } }, routes: [{ upstream: 'app' }] });
    await get(`${p.url}/x`);
    const conns = () => new Promise<number>((r) => a!.server.getConnections((_e: Error | null, n: number) => r(n)));
    expect(await conns()).toBeGreaterThan(0);
    await p.close();
    await until(async () => (await conns()) === 0, 5000, 'upstream connections to close');
  });
});
