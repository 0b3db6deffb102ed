import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { plugin } from '../../test/helpers.js';
import type { RequestEntry } from './index.js';
import { cacheStatus } from './summary.js';

const HERE = new URL('.', import.meta.url).pathname;
const running: Bext[] = [];
afterEach(async () => {
  while (running.length) await running.pop()!.close();
});

function site(): string {
  const dir = mkdtempSync(join(tmpdir(), 'bext-rl-site-'));
  writeFileSync(join(dir, 'index.html'), '<!doctype html><title>home</title><p>hello</p>');
  return dir;
}

/** A route that sets a cookie, so Set-Cookie redaction is seen on a real response. */
const login = () =>
  plugin('login', { routes: [{ path: '/login', methods: ['POST'] }] }, `
export default () => ({ onRoute() { return { status: 200, headers: { 'set-cookie': ['sid=s3cret; HttpOnly', 'theme=dark'], 'x-session-token': 'tok-123' }, body: 'ok' }; } });`);

async function start(config: Record<string, unknown>, extra: (string | { dir: string })[] = [], others: Record<string, unknown> = {}): Promise<Bext> {
  const b = await startBext({
    plugins: [{ dir: HERE }, ...extra],
    siteDir: site(),
    config: { plugins: { requestlog: config, ...(extra.includes('static') ? { static: { root: '.', maxAge: 60 } } : {}), ...others } } as never,
  });
  running.push(b);
  return b;
}

async function entries(b: Bext, query = ''): Promise<{ total: number; size: number; requests: RequestEntry[] }> {
  const r = await fetch(`${b.adminUrl}/__bext/requests${query}`);
  expect(r.status).toBe(200);
  return r.json() as Promise<{ total: number; size: number; requests: RequestEntry[] }>;
}

describe('requestlog', () => {
  it('captures method, route, status, timings, and redacts Authorization, cookies and configured headers', async () => {
    const b = await start({ redactHeaders: ['X-Session-Token', 'x-api-key'] }, [{ dir: login() }]);
    const r = await fetch(`${b.url}/login?next=/home`, {
      method: 'POST',
      headers: { authorization: 'Bearer abc.def.ghi', cookie: 'sid=old; theme=light', 'proxy-authorization': 'Basic Zm9vOmJhcg==', 'x-api-key': 'k-999', 'x-visible': 'yes' },
      body: 'a=1',
    });
    expect(r.status).toBe(200);
    await r.text();
    const { requests } = await entries(b);
    const e = requests.find((x) => x.path === '/login')!;
    expect(e).toMatchObject({ method: 'POST', route: '/login', status: 200, group: 'default', answeredBy: 'login onRoute' });
    expect(e.clientAddress).toBe('127.0.0.1');
    expect(e.timings.map((t) => `${t.plugin} ${t.hook}`)).toEqual(['login onRoute']);
    expect(e.timings[0]!.durMs).toBeGreaterThanOrEqual(0);
    expect(e.requestHeaders).toMatchObject({ authorization: '[REDACTED]', cookie: '[REDACTED]', 'proxy-authorization': '[REDACTED]', 'x-api-key': '[REDACTED]', 'x-visible': 'yes' });
    expect(e.responseHeaders).toMatchObject({ 'set-cookie': ['[REDACTED]', '[REDACTED]'], 'x-session-token': '[REDACTED]' });
    const raw = JSON.stringify(requests);
    for (const secret of ['abc.def.ghi', 'sid=old', 's3cret', 'Zm9vOmJhcg', 'k-999', 'tok-123']) expect(raw).not.toContain(secret);
    // The single-entry route shows the same redacted entry.
    const one = await (await fetch(`${b.adminUrl}/__bext/requests/${e.id}`)).json();
    expect(one.requestHeaders.authorization).toBe('[REDACTED]');
  });

  it('keeps a bounded ring, newest first, and filters by status, method and path', async () => {
    const b = await start({ size: 5 }, [{ dir: login() }]);
    for (let i = 0; i < 8; i++) await (await fetch(`${b.url}/missing/${i}`)).text();
    await (await fetch(`${b.url}/login`, { method: 'POST' })).text();
    const all = await entries(b);
    expect(all.total).toBe(9);
    expect(all.requests.map((e) => e.path)).toEqual(['/login', '/missing/7', '/missing/6', '/missing/5', '/missing/4']);
    expect((await entries(b, '?status=4xx')).requests.map((e) => e.status)).toEqual([404, 404, 404, 404]);
    expect((await entries(b, '?status=200&method=post')).requests).toHaveLength(1);
    expect((await entries(b, '?path=/missing/&limit=2')).requests.map((e) => e.path)).toEqual(['/missing/7', '/missing/6']);
    expect((await fetch(`${b.adminUrl}/__bext/requests/nope`)).status).toBe(404);
    const bad = await fetch(`${b.adminUrl}/__bext/requests?status=abc`);
    expect(bad.status).toBe(400);
    expect((await bad.json()).error).toBe('BEXT_ERR_QUERY_INVALID');
  });

  it('keeps headers for the newest `detail` requests only, and hook errors with their timings', async () => {
    const flaky = plugin('flaky', { hooks: { onRequest: {} }, limits: { quarantineAfter: 100 } }, `
export default () => ({ onRequest(req) { if (req.path.endsWith('/fail')) throw new Error('flaky'); } });`);
    const b = await start({ size: 10, detail: 2 }, [{ dir: flaky }]);
    for (const p of ['/a', '/b/fail', '/c', '/d']) await (await fetch(`${b.url}${p}`, { headers: { 'x-n': p } })).text();
    const { requests } = await entries(b);
    expect(requests.map((e) => e.path)).toEqual(['/d', '/c', '/b/fail', '/a']);
    expect(requests.map((e) => e.requestHeaders?.['x-n'])).toEqual(['/d', '/c', undefined, undefined]);
    expect(requests[2]!.timings).toEqual([{ plugin: 'flaky', hook: 'onRequest', startMs: expect.any(Number), durMs: expect.any(Number), error: 'BEXT_ERR_PLUGIN_FAILED' }]);
    expect(requests[0]!.timings[0]!.error).toBeUndefined();
  });

  it('does not capture its own routes, probes or scrapes, and is an admin route', async () => {
    const b = await start({}, ['health']);
    await (await fetch(`${b.url}/health`)).text();
    await (await fetch(`${b.adminUrl}/__bext/requests`)).text();
    expect((await fetch(`${b.url}/__bext/requests`)).status).toBe(403);
    expect((await entries(b)).requests).toEqual([]);
  });

  it('reads the cache status and the WAF verdict of each request', async () => {
    const b = await start({}, [{ dir: join(HERE, '../waf') }, { dir: join(HERE, '../cache') }, 'static'], { cache: { rules: [{ paths: ['/**'], mode: 'swr', ttl: 60, swr: 60 }] } });
    await (await fetch(`${b.url}/`)).text();
    await (await fetch(`${b.url}/`)).text();
    const blocked = await fetch(`${b.url}/?q=${encodeURIComponent("1' UNION SELECT password FROM users--")}`);
    expect(blocked.status).toBe(403);
    await blocked.text();
    const { requests } = await entries(b);
    const [attack, second, first] = requests;
    expect(first).toMatchObject({ path: '/', status: 200, cache: 'miss', waf: 'clean' });
    expect(second).toMatchObject({ path: '/', status: 200, cache: 'hit', waf: 'clean' });
    expect(attack).toMatchObject({ status: 403, waf: 'blocked', answeredBy: 'waf onRequest' });
    expect((await entries(b, '?waf=blocked')).requests).toHaveLength(1);
    expect((await entries(b, '?cache=hit')).requests).toHaveLength(1);
    expect(second!.timings.map((t) => `${t.plugin} ${t.hook}`)).toContain('cache onRender');
  });

  it('writes a JSON access log through pino, 4xx at warn, with redacted headers', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'bext-rl-log-')), 'access.log');
    const b = await start({ accessLog: { enabled: true, destination: file, headers: true } });
    await (await fetch(`${b.url}/nowhere`, { headers: { authorization: 'Bearer topsecret' } })).text();
    running.pop();
    await b.close();
    const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 'warn', plugin: 'requestlog', msg: 'GET /nowhere 404', req: { status: 404, requestHeaders: { authorization: '[REDACTED]' } } });
    expect(readFileSync(file, 'utf8')).not.toContain('topsecret');
  });

  it('parses Cache-Status members (RFC 9211)', () => {
    expect(cacheStatus('bext; hit; ttl=30')).toBe('hit');
    expect(cacheStatus('bext; hit; ttl=-2; detail=stale-while-revalidate')).toBe('stale');
    expect(cacheStatus('upstream; hit, bext; fwd=miss; fwd-status=200; stored')).toBe('miss');
    expect(cacheStatus('bext; fwd=miss; collapsed')).toBe('collapsed');
    expect(cacheStatus('bext; fwd=stale; fwd-status=500; detail=stale-if-error')).toBe('stale');
    expect(cacheStatus(['bext; fwd=bypass; detail=route'])).toBe('bypass');
    expect(cacheStatus(undefined)).toBeUndefined();
    expect(cacheStatus('bext; fwd="<script>"')).toBeUndefined();
  });
});


