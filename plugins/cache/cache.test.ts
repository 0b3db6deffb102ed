/**
 * The cache in front of a throwaway renderer, over real sockets, in memory
 * only (cache-redis.test.ts covers the Redis tier). Time is moved with
 * vitest's fake Date (only Date: sockets and timers stay real), which is
 * the clock the cache reads.
 */
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { resolve } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { plugin, until } from '../../test/helpers.js';
import type { ResponseData, TrustedRequest } from '../../plugin-api/index.js';
import { normalisePath, normaliseQuery, paramStripper } from './key.js';
import { parseDirectives, storePolicy, originRule, compileRules } from './policy.js';

type Leaf = (req: TrustedRequest) => ResponseData | Promise<ResponseData>;
const g = globalThis as unknown as { __leaf: Leaf; __renders: number; __published: { topic: string; data: unknown }[] };
g.__renders = 0;
g.__published = [];

const CACHE = resolve(import.meta.dirname);
const TOKEN = 'test-admin-token-0123456789';
const leafDir = plugin('leaf', { hooks: { onRender: { priority: 100 } }, limits: { timeoutMs: 30000 } }, `
export default () => ({ onRender(req) { globalThis.__renders++; return globalThis.__leaf(req); } });
`);
const tapDir = plugin('tap', { hooks: { onPublish: { priority: 1 } } }, `
export default () => ({ onPublish(msg) { globalThis.__published.push({ topic: msg.topic, data: msg.data }); } });
`);
const tenantDir = plugin('tenantish', { hooks: { onRequest: { priority: 6 } } }, `
export default () => ({ onRequest(req) { return { action: 'continue', ctx: { tenant: req.host.split('.')[0] } }; } });
`);

const agent = new Agent({ connections: 256, pipelining: 1 });
const running: Bext[] = [];
afterEach(async () => {
  vi.useRealTimers();
  while (running.length) await running.pop()!.close();
  g.__renders = 0;
  g.__published.length = 0;
});
afterAll(() => agent.close());

async function start(cache: Record<string, unknown> = {}, extra: string[] = []): Promise<Bext> {
  const b = await startBext({ plugins: [CACHE, ...extra, { dir: leafDir }], config: { admin: { token: TOKEN }, plugins: { cache } } });
  running.push(b);
  return b;
}

interface Res {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
  text: string;
}

async function get(b: Bext, path: string, headers: Record<string, string> = {}, method = 'GET', dispatcher: Agent = agent): Promise<Res> {
  const r = await request(`${b.url}${path}`, { method: method as 'GET', headers, dispatcher });
  const body = Buffer.from(await r.body.arrayBuffer());
  const h: Record<string, string> = {};
  for (const [k, v] of Object.entries(r.headers)) if (v !== undefined) h[k] = Array.isArray(v) ? v.join(', ') : v;
  return { status: r.statusCode, headers: h, body, text: body.toString() };
}

async function admin(b: Bext, path: string, body?: unknown, method = 'POST'): Promise<{ status: number; json: Record<string, unknown> }> {
  const r = await request(`${b.adminUrl}${path}`, { method: method as 'POST', headers: { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body), dispatcher: agent });
  return { status: r.statusCode, json: (await r.body.json()) as Record<string, unknown> };
}

const html = (body: string, headers: Record<string, string> = {}): ResponseData => ({ status: 200, headers: { 'content-type': 'text/html; charset=utf-8', ...headers }, body });
let version = 0;
const versioned = (headers: Record<string, string> = {}): Leaf => () => html(`v${++version}`, headers);

function fakeClock(): { at(ms: number): void; t0: number } {
  vi.useFakeTimers({ toFake: ['Date'], shouldAdvanceTime: true });
  const t0 = Date.now();
  return { t0, at: (ms) => vi.setSystemTime(t0 + ms) };
}

describe('policy and keys', () => {
  it('parses Cache-Control with quoted arguments and keeps the first of repeated directives', () => {
    const d = parseDirectives('max-age=10, private="set-cookie, x-a", max-age=99, no-cache');
    expect(d.get('max-age')).toBe('10');
    expect(d.get('private')).toBe('set-cookie, x-a');
    expect(d.has('no-cache')).toBe(true);
    expect(parseDirectives('max-age=60;edge').get('max-age')).toBe('60');
  });

  it('reads s-maxage over max-age, Surrogate-Control over both, and refuses what a shared cache must not store', () => {
    const rule = originRule(10);
    const opts = { hasAuthorization: false, allowedVary: new Set(['accept-language']), now: Date.now() };
    const p = storePolicy(rule, 200, { 'cache-control': 's-maxage=5, max-age=100' }, opts);
    expect(typeof p !== 'string' && p.freshMs).toBe(5000);
    expect(typeof p !== 'string' && p.mustRevalidate).toBe(true);
    const s = storePolicy(rule, 200, { 'cache-control': 'max-age=0', 'surrogate-control': 'max-age=100' }, opts);
    expect(typeof s !== 'string' && s.freshMs).toBe(100_000);
    expect(storePolicy(rule, 200, { 'cache-control': 'private, max-age=60' }, opts)).toBe('private');
    expect(storePolicy(rule, 200, { 'cache-control': 'no-store' }, opts)).toBe('no-store');
    expect(storePolicy(rule, 200, { 'cache-control': 'max-age=60', 'set-cookie': 'a=1' }, opts)).toBe('set-cookie');
    expect(storePolicy(rule, 200, { 'cache-control': 'max-age=60', vary: '*' }, opts)).toBe('vary-star');
    expect(storePolicy(rule, 200, { 'cache-control': 'max-age=60', vary: 'Cookie' }, opts)).toBe('vary-not-allowed');
    expect(storePolicy(rule, 200, { 'cache-control': 'max-age=60' }, { ...opts, hasAuthorization: true })).toBe('authorization');
    expect(typeof storePolicy(rule, 200, { 'cache-control': 'public, max-age=60' }, { ...opts, hasAuthorization: true })).toBe('object');
    expect(storePolicy(rule, 200, {}, opts)).toBe('no-freshness');
    expect(storePolicy(rule, 206, { 'cache-control': 'max-age=60' }, opts)).toBe('status');
    const withField = storePolicy(rule, 200, { 'cache-control': 'max-age=60, private="x-user"' }, opts);
    expect(typeof withField !== 'string' && withField.dropFields).toEqual(['x-user']);
    const { rules } = compileRules([{ paths: ['/**'], mode: 'isr', revalidate: 30 }], { negativeTtl: 10, maxStaleSeconds: 100 });
    const aged = storePolicy(rules[0]!, 200, { age: '20' }, opts);
    expect(typeof aged !== 'string' && aged.initialAge).toBe(20);
  });

  it('merges only equivalent spellings of a path and sorts the query stably, without tracking parameters', () => {
    expect(normalisePath('/a%7eb%2f')).toBe('/a~b%2F');
    expect(normalisePath('/a//b')).toBe('/a//b');
    expect(normalisePath('http://evil/')).toBeNull();
    const strip = paramStripper(['utm_*', 'fbclid']);
    expect(normaliseQuery('b=2&utm_source=x&a=1&a=0&fbclid=z', strip)).toEqual({ key: 'a=1&a=0&b=2', render: 'b=2&a=1&a=0' });
    expect(normaliseQuery('', strip)).toEqual({ key: '', render: '' });
  });
});

describe('cache flows', () => {
  it('miss, hit, then stale-while-revalidate for an isr route, with one background render', async () => {
    const clock = fakeClock();
    g.__leaf = versioned();
    const b = await start({ rules: [{ paths: ['/isr/**'], mode: 'isr', revalidate: 60 }] });
    const r1 = await get(b, '/isr/a');
    expect(r1.text).toMatch(/^v\d+$/);
    expect(r1.headers['cache-status']).toBe('bext; fwd=miss; fwd-status=200; stored');
    const r2 = await get(b, '/isr/a');
    expect(r2.text).toBe(r1.text);
    expect(r2.headers['cache-status']).toMatch(/^bext; hit; ttl=(59|60)$/);
    expect(g.__renders).toBe(1);
    clock.at(61_000);
    const r3 = await get(b, '/isr/a');
    expect(r3.text).toBe(r1.text);
    expect(r3.headers['cache-status']).toMatch(/^bext; hit; ttl=-\d+; detail=stale-while-revalidate$/);
    expect(Number(r3.headers.age)).toBeGreaterThanOrEqual(60);
    await until(async () => (await get(b, '/isr/a')).text !== r1.text, 5000, 'the background render to be stored');
    expect(g.__renders).toBe(2);
    const r4 = await get(b, '/isr/a');
    expect(r4.headers['cache-status']).toMatch(/^bext; hit/);
    expect(Number(r4.headers.age)).toBeLessThan(5);
  });

  it('swr: serves stale within the window, renders synchronously after it', async () => {
    const clock = fakeClock();
    g.__leaf = versioned();
    const b = await start({ rules: [{ paths: ['/**'], mode: 'swr', ttl: 10, swr: 20 }] });
    const v1 = (await get(b, '/p')).text;
    clock.at(15_000);
    expect((await get(b, '/p')).headers['cache-status']).toContain('detail=stale-while-revalidate');
    await until(() => g.__renders === 2);
    await until(async () => (await get(b, '/p')).text !== v1);
    clock.at(15_000 + 40_000);
    const late = await get(b, '/p');
    expect(late.headers['cache-status']).toBe('bext; fwd=stale; fwd-status=200; stored');
    expect(g.__renders).toBe(3);
  });

  it('static entries stay until purged; ssr routes are never stored', async () => {
    const clock = fakeClock();
    g.__leaf = versioned();
    const b = await start({ rules: [{ paths: ['/assets/**'], mode: 'static' }, { paths: ['/live/**'], mode: 'ssr' }] });
    const a = await get(b, '/assets/x.css');
    clock.at(400 * 86400_000);
    const later = await get(b, '/assets/x.css');
    expect(later.text).toBe(a.text);
    expect(later.headers['cache-status']).toBe('bext; hit');
    const s1 = await get(b, '/live/feed');
    const s2 = await get(b, '/live/feed');
    expect(s1.text).not.toBe(s2.text);
    expect(s2.headers['cache-status']).toBe('bext; fwd=bypass; detail=rule-ssr');
    const purge = await admin(b, '/api/invalidate', { paths: ['/assets/x.css'] });
    expect(purge.status).toBe(200);
    expect(purge.json.dropped).toBe(1);
    expect((await get(b, '/assets/x.css')).text).not.toBe(a.text);
  });

  it('stale-if-error: a failed render is answered with the stale copy inside the window, and passes through after it', async () => {
    const clock = fakeClock();
    let fail = false;
    g.__leaf = () => (fail ? { status: 502, headers: { 'content-type': 'text/plain' }, body: 'upstream down' } : html(`v${++version}`));
    const b = await start({ rules: [{ paths: ['/**'], mode: 'swr', ttl: 10, swr: 0, staleIfError: 60 }] });
    const good = await get(b, '/page');
    fail = true;
    clock.at(20_000);
    const r = await get(b, '/page');
    expect(r.status).toBe(200);
    expect(r.text).toBe(good.text);
    expect(r.headers['cache-status']).toBe('bext; fwd=stale; fwd-status=502; detail=stale-if-error');
    clock.at(100_000);
    const after = await get(b, '/page');
    expect(after.status).toBe(502);
    expect(after.text).toBe('upstream down');
  });

  it('honours origin Cache-Control, Surrogate-Control, Age and must-revalidate', async () => {
    const clock = fakeClock();
    const headersFor: Record<string, Record<string, string>> = {
      '/origin': { 'cache-control': 'max-age=30' },
      '/smax': { 'cache-control': 's-maxage=5, max-age=100' },
      '/surrogate': { 'cache-control': 'max-age=0', 'surrogate-control': 'max-age=100' },
      '/aged': { 'cache-control': 'max-age=30', age: '20' },
      '/private': { 'cache-control': 'private, max-age=60' },
      '/nostore': { 'cache-control': 'no-store' },
      '/cookie': { 'cache-control': 'max-age=60', 'set-cookie': 'session=abc' },
      '/varystar': { 'cache-control': 'max-age=60', vary: '*' },
      '/mustreval': { 'cache-control': 'max-age=10, must-revalidate' },
      '/none': {},
    };
    g.__leaf = (req) => html(`v${++version}`, headersFor[req.path] ?? {});
    const b = await start({ rules: [{ paths: ['/mustreval'], mode: 'isr', revalidate: 10 }] });
    const twice = async (p: string) => [await get(b, p), await get(b, p)] as const;
    const [o1, o2] = await twice('/origin');
    expect(o2.text).toBe(o1.text);
    expect(o2.headers['cache-control']).toBe('max-age=30');
    const [, sur] = await twice('/surrogate');
    expect(sur.headers['cache-status']).toMatch(/^bext; hit; ttl=(99|100)$/);
    expect(sur.headers['surrogate-control']).toBeUndefined();
    expect(sur.headers['cache-control']).toBe('max-age=0');
    const [, aged] = await twice('/aged');
    expect(Number(aged.headers.age)).toBeGreaterThanOrEqual(20);
    expect(aged.headers['cache-status']).toMatch(/ttl=(9|10)$/);
    for (const p of ['/private', '/nostore', '/cookie', '/varystar', '/none']) {
      const [a, c] = await twice(p);
      expect(c.text, p).not.toBe(a.text);
      expect(c.headers['cache-status'], p).toMatch(/^bext; fwd=miss; fwd-status=200; detail=/);
    }
    expect((await get(b, '/cookie')).headers['set-cookie']).toBe('session=abc');
    expect((await get(b, '/varystar')).headers['cache-status']).toContain('detail=vary-star');
    await twice('/smax');
    await twice('/mustreval');
    clock.at(12_000);
    // s-maxage implies proxy-revalidate and must-revalidate forbids stale: both render before answering.
    expect((await get(b, '/smax')).headers['cache-status']).toBe('bext; fwd=stale; fwd-status=200; stored');
    expect((await get(b, '/mustreval')).headers['cache-status']).toBe('bext; fwd=stale; fwd-status=200; stored');
    clock.at(31_000);
    expect((await get(b, '/aged')).headers['cache-status']).toContain('fwd=');
  });

  it('Authorization: a stored page is not served to credentialed requests unless the origin allowed it', async () => {
    g.__leaf = (req) => html(`v${++version}`, { 'cache-control': req.path === '/shared' ? 'public, max-age=60' : 'max-age=60' });
    const b = await start();
    const anon = await get(b, '/page');
    expect((await get(b, '/page')).text).toBe(anon.text);
    const authed = await get(b, '/page', { authorization: 'Bearer u1' });
    expect(authed.text).not.toBe(anon.text);
    expect((await get(b, '/page', { authorization: 'Bearer u2' })).text).not.toBe(authed.text);
    expect((await get(b, '/page')).text).toBe(anon.text);
    const pub = await get(b, '/shared', { authorization: 'Bearer u1' });
    expect((await get(b, '/shared', { authorization: 'Bearer u2' })).text).toBe(pub.text);
  });

  it('an unsafe method invalidates the URL and its Location; its own answer is marked fwd=method', async () => {
    g.__leaf = (req) => (req.method === 'POST' ? { status: 303, headers: { location: '/other' }, body: '' } : html(`v${++version}`, { 'cache-control': 'max-age=600' }));
    const b = await start();
    const a = await get(b, '/item');
    const o = await get(b, '/other');
    expect((await get(b, '/item')).text).toBe(a.text);
    const post = await get(b, '/item', { 'content-type': 'text/plain' }, 'POST');
    expect(post.status).toBe(303);
    expect(post.headers['cache-status']).toBe('bext; fwd=method');
    expect((await get(b, '/item')).text).not.toBe(a.text);
    expect((await get(b, '/other')).text).not.toBe(o.text);
  });

  it('negative caching: 404 and 410 are kept for their own short TTL', async () => {
    const clock = fakeClock();
    g.__leaf = (req) => ({ status: req.path === '/gone' ? 410 : 404, headers: { 'content-type': 'text/plain' }, body: `nothing ${++version}` });
    const b = await start({ rules: [{ paths: ['/**'], mode: 'isr', revalidate: 3600, negativeTtl: 5 }] });
    const a = await get(b, '/missing');
    const a2 = await get(b, '/missing');
    expect(a2.status).toBe(404);
    expect(a2.text).toBe(a.text);
    expect(a2.headers['cache-status']).toMatch(/^bext; hit; ttl=[45]$/);
    expect((await get(b, '/gone')).status).toBe(410);
    expect((await get(b, '/gone')).headers['cache-status']).toMatch(/hit/);
    clock.at(6_000);
    const later = await get(b, '/missing');
    expect(later.text).not.toBe(a.text);
    expect(later.headers['cache-status']).toBe('bext; fwd=stale; fwd-status=404; stored');
  });

  it('keys: tracking parameters and parameter order do not split entries; tenants, hosts and schemes never share', async () => {
    g.__leaf = (req) => html(`v${++version} ${req.host} q=${req.query}`, { 'cache-control': 'max-age=600' });
    const b = await startBext({ plugins: [CACHE, { dir: tenantDir }, { dir: leafDir }], config: {} });
    running.push(b);
    const a = await get(b, '/list?b=2&a=1&utm_source=news&fbclid=x');
    expect(a.text).toContain('q=b=2&a=1');
    expect((await get(b, '/list?a=1&b=2&utm_medium=mail')).text).toBe(a.text);
    expect((await get(b, '/list?a=1&b=3')).text).not.toBe(a.text);
    expect((await get(b, '/list%3fa', {})).text).not.toBe(a.text);
    const t1 = await get(b, '/home', { host: 'alpha.example.com' });
    const t2 = await get(b, '/home', { host: 'beta.example.com' });
    expect(t2.text).not.toBe(t1.text);
    expect((await get(b, '/home', { host: 'ALPHA.example.com' })).text).toBe(t1.text);
    expect((await get(b, '/a~b')).text).toBe((await get(b, '/a%7Eb')).text);
    expect((await get(b, '/a//b')).text).not.toBe((await get(b, '/a/b')).text);
  });

  it('poisoning: forwarding and override headers never reach a shared render, and stripped parameters never reach the page', async () => {
    g.__leaf = (req) => {
      const fwd = req.headers['x-forwarded-host'] ?? req.headers['x-original-url'] ?? req.headers['x-http-method-override'] ?? '';
      return html(`<script src="//${fwd || req.host}/app.js"></script> ${req.query} ${++version}`, { 'cache-control': 'max-age=600' });
    };
    const b = await start();
    const evil = await get(b, '/home?utm_content=%3Cscript%3E', { 'x-forwarded-host': 'evil.example', 'x-original-url': '/admin', 'x-http-method-override': 'DELETE' });
    expect(evil.text).not.toContain('evil.example');
    expect(evil.text).not.toContain('script%3E');
    expect(evil.text).not.toContain('DELETE');
    const victim = await get(b, '/home');
    expect(victim.text).toBe(evil.text);
    expect(victim.text).toContain('//127.0.0.1/app.js');
    // An uncached page still sees the headers: stripping is only for responses the cache may share.
    const b2 = await start({ rules: [{ paths: ['/**'], mode: 'ssr' }] });
    expect((await get(b2, '/home', { 'x-forwarded-host': 'proxy.example' })).text).toContain('proxy.example');
  });

  it('Vary: allow-listed request headers split entries (normalised), others are not stored', async () => {
    g.__leaf = (req) => {
      if (req.path === '/cookie-vary') return html(`c${++version}`, { 'cache-control': 'max-age=600', vary: 'Cookie' });
      const lang = String(req.headers['accept-language'] ?? 'en').slice(0, 2).toLowerCase();
      return html(`${lang} ${++version}`, { 'cache-control': 'max-age=600', vary: 'Accept-Language' });
    };
    const b = await start();
    const fr = await get(b, '/hello', { 'accept-language': 'fr' });
    const en = await get(b, '/hello', { 'accept-language': 'en' });
    expect(fr.text).toMatch(/^fr /);
    expect(en.text).toMatch(/^en /);
    expect((await get(b, '/hello', { 'accept-language': 'FR' })).text).toBe(fr.text);
    expect((await get(b, '/hello', { 'accept-language': 'en' })).text).toBe(en.text);
    expect((await get(b, '/hello', { 'accept-language': 'fr' })).headers.vary).toBe('Accept-Language');
    expect(g.__renders).toBe(2);
    const c1 = await get(b, '/cookie-vary', { cookie: 'a=1' });
    expect(c1.headers['cache-status']).toContain('detail=vary-not-allowed');
    expect((await get(b, '/cookie-vary', { cookie: 'a=1' })).text).not.toBe(c1.text);
  });

  it('ETag and Last-Modified: generated when missing, kept when given, 304 on If-None-Match / If-Modified-Since', async () => {
    g.__leaf = (req) => html('<p>same</p>'.repeat(300), req.path === '/tagged' ? { 'cache-control': 'max-age=60', etag: '"v1"', 'last-modified': 'Wed, 01 Jan 2020 00:00:00 GMT' } : { 'cache-control': 'max-age=60' });
    const b = await start();
    const first = await get(b, '/tagged', { 'if-none-match': '"v1"' });
    expect(first.status).toBe(304);
    expect(first.headers.etag).toBe('"v1"');
    expect(first.body.length).toBe(0);
    const plain = await get(b, '/tagged');
    expect(plain.headers.etag).toBe('"v1"');
    expect(plain.headers['last-modified']).toBe('Wed, 01 Jan 2020 00:00:00 GMT');
    const br = await get(b, '/tagged', { 'accept-encoding': 'br' });
    expect(br.headers.etag).toBe('W/"v1"');
    const nm = await get(b, '/tagged', { 'if-none-match': 'W/"v1"', 'accept-encoding': 'gzip' });
    expect(nm.status).toBe(304);
    expect(nm.headers.vary).toBe('Accept-Encoding');
    expect(nm.headers['cache-control']).toBe('max-age=60');
    expect(nm.headers['cache-status']).toMatch(/^bext; hit/);
    expect((await get(b, '/tagged', { 'if-none-match': '"other", "v1"' })).status).toBe(304);
    expect((await get(b, '/tagged', { 'if-none-match': '"other"' })).status).toBe(200);
    expect((await get(b, '/tagged', { 'if-modified-since': 'Thu, 02 Jan 2020 00:00:00 GMT' })).status).toBe(304);
    expect((await get(b, '/tagged', { 'if-modified-since': 'Tue, 31 Dec 2019 00:00:00 GMT' })).status).toBe(200);
    const gen = await get(b, '/gen');
    expect(gen.headers.etag).toMatch(/^"[A-Za-z0-9_-]{27}"$/);
    expect(gen.headers['last-modified']).toBeTruthy();
    expect((await get(b, '/gen', { 'if-none-match': gen.headers.etag! })).status).toBe(304);
    expect((await get(b, '/gen', { 'if-modified-since': gen.headers['last-modified']! })).status).toBe(304);
  });

  it('stampede: 1,000 concurrent requests for a cold key make exactly one render and all are answered', async () => {
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    g.__leaf = async () => {
      await gate;
      return html('<p>cold</p>'.repeat(200), { 'cache-control': 'max-age=600' });
    };
    const b = await start();
    // 250 connections × 4 pipelined requests: all 1,000 in flight at once, with a bounded socket count.
    const wide = new Agent({ connections: 250, pipelining: 4 });
    const all = Array.from({ length: 1000 }, (_, i) => get(b, '/cold', i % 2 ? { 'accept-encoding': 'br, gzip' } : {}, 'GET', wide));
    await until(() => b.kernel.inflight === 1000, 20_000, 'all 1,000 requests to arrive');
    expect(g.__renders).toBe(1);
    open();
    const res = await Promise.all(all);
    expect(g.__renders).toBe(1);
    expect(res.every((r) => r.status === 200)).toBe(true);
    const statuses = res.map((r) => r.headers['cache-status']);
    expect(statuses.filter((s) => s?.endsWith('stored'))).toHaveLength(1);
    expect(statuses.filter((s) => s === 'bext; fwd=miss; collapsed')).toHaveLength(999);
    expect(new Set(res.filter((r) => !r.headers['content-encoding']).map((r) => r.text)).size).toBe(1);
    await wide.close();
  });

  it('stampede: an uncacheable answer is not shared; waiters render themselves and later requests do not queue', async () => {
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    g.__leaf = async () => {
      await gate;
      return html(`private ${++version}`, { 'cache-control': 'private' });
    };
    const b = await start();
    const all = Array.from({ length: 20 }, () => get(b, '/me'));
    await until(() => b.kernel.inflight === 20);
    expect(g.__renders).toBe(1);
    open();
    const res = await Promise.all(all);
    expect(g.__renders).toBe(20);
    expect(new Set(res.map((r) => r.text)).size).toBe(20);
    const more = await Promise.all(Array.from({ length: 5 }, () => get(b, '/me')));
    expect(more.every((r) => r.headers['cache-status'] === 'bext; fwd=miss; fwd-status=200; detail=private')).toBe(true);
  });

  it('stampede: a 5xx is shared with the waiters, not stored; a leader slower than collapseTimeoutMs is not waited for', async () => {
    let open!: () => void;
    let gate = new Promise<void>((r) => (open = r));
    g.__leaf = async () => {
      await gate;
      return { status: 503, headers: { 'content-type': 'text/plain' }, body: 'busy' };
    };
    const b = await start({ collapseTimeoutMs: 100 });
    const all = Array.from({ length: 10 }, () => get(b, '/busy'));
    await until(() => b.kernel.inflight === 10);
    open();
    const res = await Promise.all(all);
    expect(g.__renders).toBe(1);
    expect(res.every((r) => r.status === 503 && r.text === 'busy')).toBe(true);
    expect(res.filter((r) => r.headers['cache-status']!.endsWith('collapsed'))).toHaveLength(9);

    g.__renders = 0;
    gate = new Promise<void>((r) => (open = r));
    let first = true;
    g.__leaf = async () => {
      if (first) {
        first = false;
        await gate;
      }
      return html(`slow ${++version}`, { 'cache-control': 'max-age=60' });
    };
    const leader = get(b, '/slow');
    await until(() => g.__renders === 1);
    const follower = await get(b, '/slow');
    expect(follower.status).toBe(200);
    expect(g.__renders).toBe(2);
    open();
    expect((await leader).status).toBe(200);
    const stats = await admin(b, '/__bext/cache/stats', undefined, 'GET');
    expect(stats.json.collapseTimeouts).toBe(1);
  });

  it('invalidation by tag (header and renderer), soft and hard, published to system/cache', async () => {
    g.__leaf = (req) => {
      if (req.path === '/post/1') (req.ctx as Record<string, unknown>).cacheTags = ['author-7'];
      return html(`${req.path} ${++version}`, { 'cache-control': 'max-age=600', 'cache-tag': req.path.startsWith('/post') ? 'posts, post-x' : 'home' });
    };
    const b = await startBext({ plugins: [CACHE, { dir: tapDir }, { dir: leafDir }], config: {} });
    running.push(b);
    const p1 = await get(b, '/post/1');
    const p2 = await get(b, '/post/2');
    const home = await get(b, '/');
    expect(p1.headers['cache-tag']).toBeUndefined();
    const list = await admin(b, '/__bext/cache/entries?tag=posts', undefined, 'GET');
    expect((list.json.entries as { url: string }[]).map((e) => e.url).sort()).toEqual(['http://127.0.0.1/post/1', 'http://127.0.0.1/post/2']);
    const hardRes = await admin(b, '/api/invalidate', { tags: ['author-7'] });
    expect(hardRes.json).toMatchObject({ ok: true, mode: 'hard', dropped: 1 });
    expect((await get(b, '/post/1')).text).not.toBe(p1.text);
    expect((await get(b, '/post/2')).text).toBe(p2.text);
    const softRes = await admin(b, '/api/invalidate', { tags: ['posts'], mode: 'soft' });
    expect(softRes.json.dropped).toBe(0);
    const stale = await get(b, '/post/2');
    expect(stale.text).toBe(p2.text);
    expect(stale.headers['cache-status']).toContain('stale-while-revalidate');
    await until(async () => (await get(b, '/post/2')).text !== p2.text);
    expect((await get(b, '/')).text).toBe(home.text);
    await until(() => g.__published.filter((m) => m.topic === 'system/cache').length >= 2);
    expect(g.__published.find((m) => m.topic === 'system/cache')!.data).toMatchObject({ action: 'purge', mode: 'hard', tags: ['tag:author-7'] });
    const bad = await admin(b, '/api/invalidate', { tags: 'posts' });
    expect(bad.status).toBe(400);
    const forbidden = await request(`${b.url}/api/invalidate`, { method: 'POST', body: '{"all":true}', dispatcher: agent });
    expect(forbidden.statusCode).toBe(403);
    await forbidden.body.dump();
    const del = await admin(b, '/__bext/cache/entries', undefined, 'DELETE');
    expect(del.json.dropped).toBeGreaterThan(0);
    expect((await admin(b, '/__bext/cache/stats', undefined, 'GET')).json.memory).toMatchObject({ entries: 0 });
  });

  it('revalidate: re-renders the named paths now, through the whole chain', async () => {
    g.__leaf = (req) => html(`${req.path} ${++version}`, { 'cache-control': 'max-age=600', 'cache-tag': 'news' });
    const b = await start();
    const a = await get(b, '/news/a');
    const n = await get(b, '/news/b');
    const r = await admin(b, '/api/revalidate', { paths: ['/news/a'] });
    expect(r.status).toBe(200);
    expect(r.json.ok).toBe(true);
    expect((r.json.results as { status: number; cacheStatus: string }[])[0]).toMatchObject({ status: 200, cacheStatus: 'bext; fwd=miss; fwd-status=200; stored' });
    const renders = g.__renders;
    const after = await get(b, '/news/a');
    expect(after.text).not.toBe(a.text);
    expect(after.headers['cache-status']).toMatch(/^bext; hit/);
    expect(g.__renders).toBe(renders);
    const byTag = await admin(b, '/api/revalidate', { tags: ['news'] });
    expect((byTag.json.results as unknown[]).length).toBe(2);
    expect((await get(b, '/news/b')).text).not.toBe(n.text);
    // A client cannot forge the fill header: a wrong value is an ordinary request.
    const forged = await get(b, '/news/b', { 'x-bext-cache-fill': 'guess' });
    expect(forged.headers['cache-status']).toMatch(/^bext; hit/);
  });

  it('stores the variants the filling client accepts; a hit compresses nothing, and every variant decodes to the same bytes', async () => {
    const page = Array.from({ length: 400 }, (_, i) => `<li>row ${i} — ünïcode</li>`).join('\n');
    g.__leaf = () => html(page, { 'cache-control': 'max-age=600' });
    const b = await start({}, [resolve(CACHE, '../compression')]);
    const fill = await get(b, '/list', { 'accept-encoding': 'gzip, deflate, br, zstd' });
    expect(fill.headers['content-encoding']).toBe('br');
    for (const [ae, cd, cli] of [['br', 'br', ['brotli', '-d', '-c']], ['zstd', 'zstd', ['zstd', '-d', '-c']], ['gzip', 'gzip', ['gzip', '-d', '-c']], ['gzip;q=0.5, zstd', 'zstd', ['zstd', '-d', '-c']]] as const) {
      const r = await get(b, '/list', { 'accept-encoding': ae });
      expect(r.headers['cache-status'], ae).toMatch(/^bext; hit/);
      expect(r.headers['content-encoding'], ae).toBe(cd);
      expect(r.headers.vary).toBe('Accept-Encoding');
      expect(execFileSync(cli[0], cli.slice(1), { input: r.body }).toString(), ae).toBe(page);
    }
    for (const ae of ['identity', 'br;q=0, gzip;q=0, zstd;q=0', '']) {
      const r = await get(b, '/list', ae ? { 'accept-encoding': ae } : {});
      expect(r.headers['content-encoding'], ae).toBeUndefined();
      expect(r.text).toBe(page);
    }
    // Asynchronously: the server answering curl runs in this process.
    const curl = await promisify(execFile)('curl', ['-s', '--compressed', `${b.url}/list`]);
    expect(curl.stdout).toBe(page);
    const stats = await admin(b, '/__bext/cache/stats', undefined, 'GET');
    expect(stats.json.hitCompressions).toBe(0);
    // The compression plugin reports once a second; it never compressed a hit, since every hit carried its encoding.
    await until(async () => /bext_plugin_compression_compressed_hits_total \d/.test(await b.kernel.metrics.text()));
    expect(await b.kernel.metrics.text()).toMatch(/bext_plugin_compression_compressed_hits_total 0\n/);
    // A client asking for a coding the filler did not: made once on that hit, then stored.
    const b2 = await start({ encodings: { codings: ['br', 'gzip'] } });
    await get(b2, '/list', { 'accept-encoding': 'br' });
    const gz = await get(b2, '/list', { 'accept-encoding': 'gzip' });
    expect(gz.headers['content-encoding']).toBe('gzip');
    expect(execFileSync('gzip', ['-d', '-c'], { input: gz.body }).toString()).toBe(page);
    await get(b2, '/list', { 'accept-encoding': 'gzip' });
    expect((await admin(b2, '/__bext/cache/stats', undefined, 'GET')).json).toMatchObject({ hitCompressions: 1, hits: 2 });
  });

  it('HEAD is answered from the GET entry; a response over maxEntryBytes streams through and is not stored', async () => {
    g.__leaf = (req) => (req.path === '/big' ? html('x'.repeat(5000) + ++version, { 'cache-control': 'max-age=60' }) : html(`v${++version}`, { 'cache-control': 'max-age=60' }));
    const b = await start({ memory: { maxEntryBytes: 4096 } });
    const a = await get(b, '/small');
    const h = await get(b, '/small', {}, 'HEAD');
    expect(h.status).toBe(200);
    expect(h.headers['cache-status']).toMatch(/^bext; hit/);
    expect(h.headers['content-length']).toBe(String(a.body.length));
    const big1 = await get(b, '/big');
    expect(big1.body.length).toBeGreaterThan(5000);
    expect(big1.headers['cache-status']).toContain('detail=too-large');
    expect((await get(b, '/big')).text).not.toBe(big1.text);
  });
});
