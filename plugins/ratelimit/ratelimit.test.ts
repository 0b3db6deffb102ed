import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { SignJWT } from 'jose';
import { afterAll, describe, expect, it } from 'vitest';
import { validatePluginConfig } from '../../kernel/config.js';
import type { LogRecord } from '../../kernel/log.js';
import type { HostApi, Manifest, PluginInstance, TrustedRequest } from '../../plugin-api/index.js';
import { startBext, type Bext } from '../../sdk/harness.js';
import plugin from './index.js';

const HERE = new URL('.', import.meta.url).pathname;
const manifest = JSON.parse(readFileSync(new URL('./bext-plugin.json', import.meta.url), 'utf8')) as Manifest;
const RUN = `bext:test:rl:${process.pid}:${Date.now()}:`;

async function load(section: Record<string, unknown>, metrics: unknown[] = []): Promise<PluginInstance> {
  const cfg = validatePluginConfig('ratelimit', manifest.configSchema, section, 'bext.config.json');
  return plugin({ plugin: 'ratelimit', config: () => cfg, log() {}, metric: (...a: unknown[]) => metrics.push(a) } as unknown as HostApi);
}

const req = (over: Partial<TrustedRequest> = {}) =>
  ({ id: '1', method: 'GET', path: '/api/x', query: '', host: 'a.test', headers: {}, remoteAddress: '192.0.2.1', ctx: {}, ...over }) as TrustedRequest;

type Decision = { action: string; status?: number; headers?: Record<string, string>; responseHeaders?: Record<string, string> } | undefined;

/** A route plugin written to a temporary folder, answering 200 on every path. */
function okPlugin(): string {
  const dir = mkdtempSync(join(tmpdir(), 'bext-ok-'));
  writeFileSync(join(dir, 'bext-plugin.json'), JSON.stringify({ name: 'ok', version: '1.0.0', sandbox: 'trusted', entry: 'index.js', hooks: { onRender: {} } }));
  writeFileSync(join(dir, 'index.js'), "export default () => ({ onRender: () => ({ status: 200, body: 'ok' }) });\n");
  return dir;
}
const OK = okPlugin();

async function freePort(): Promise<number> {
  const s = createServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** A redis-server of this test's own, on its own port, so it can be stopped without touching the shared one. */
async function ownRedis(port: number): Promise<ChildProcess> {
  const p = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  await new Promise<void>((resolve, reject) => {
    p.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      if (out.includes('Ready to accept connections')) resolve();
    });
    p.once('exit', (code) => reject(new Error(`redis-server exited with ${code}: ${out}`)));
  });
  return p;
}

function waitForLog(b: Bext, pattern: RegExp): Promise<LogRecord> {
  const seen = b.logs.find((r) => pattern.test(String(r.msg)));
  if (seen) return Promise.resolve(seen);
  return new Promise((resolve) => {
    const off = b.kernel.log.subscribe((r) => {
      if (pattern.test(String(r.msg))) {
        off();
        resolve(r);
      }
    });
  });
}

describe('ratelimit in memory', () => {
  it('allows the burst, then answers 429 with Retry-After, and says so in RateLimit-* headers', async () => {
    const metrics: unknown[] = [];
    const p = await load({ rules: [{ name: 'api', limit: 3, windowSeconds: 60 }] }, metrics);
    const seen: Decision[] = [];
    for (let i = 0; i < 4; i++) seen.push((await p.onRequest!(req())) as Decision);
    expect(seen.slice(0, 3).map((d) => d!.responseHeaders!['ratelimit-remaining'])).toEqual(['2', '1', '0']);
    expect(seen[0]!.responseHeaders).toMatchObject({ 'ratelimit-limit': '3', 'ratelimit-policy': '3;w=60', 'ratelimit-reset': '20' });
    expect(seen[3]).toMatchObject({ action: 'respond', status: 429, headers: { 'retry-after': '20', 'ratelimit-remaining': '0', 'ratelimit-reset': '60' } });
    expect(metrics).toEqual([['limited_total', 1, { rule: 'api' }, 'counter']]);
    // Another client has its own bucket.
    expect(await p.onRequest!(req({ remoteAddress: '192.0.2.2' }))).toMatchObject({ action: 'continue' });
  });

  it('applies only the rules whose match fits, and all of them', async () => {
    const p = await load({
      rules: [
        { name: 'login', match: { methods: ['POST'], paths: ['/login'] }, limit: 1, windowSeconds: 60 },
        { name: 'all', limit: 100, windowSeconds: 1 },
      ],
    });
    const login = () => p.onRequest!(req({ method: 'POST', path: '/login' })) as Decision;
    expect(login()).toMatchObject({ action: 'continue', responseHeaders: { 'ratelimit-policy': '1;w=60' } });
    expect(login()).toMatchObject({ status: 429 });
    expect(p.onRequest!(req({ path: '/other' }))).toMatchObject({ action: 'continue', responseHeaders: { 'ratelimit-policy': '100;w=1' } });
  });

  it('does not spend tokens of other rules when one refuses', async () => {
    const p = await load({
      rules: [
        { name: 'small', match: { paths: ['/s'] }, limit: 1, windowSeconds: 60 },
        { name: 'big', limit: 3, windowSeconds: 60 },
      ],
    });
    expect(p.onRequest!(req({ path: '/s' }))).toMatchObject({ action: 'continue' });
    for (let i = 0; i < 5; i++) expect(p.onRequest!(req({ path: '/s' }))).toMatchObject({ status: 429 });
    expect(p.onRequest!(req({ path: '/b' }))).toMatchObject({ responseHeaders: { 'ratelimit-remaining': '1' } });
  });

  it('keys by header, API key digest, JWT subject or tenant, falling back in order', async () => {
    const p = await load({ rules: [{ name: 'k', key: ['apikey', 'jwt-sub', 'header:x-client', 'tenant'], limit: 1, windowSeconds: 60 }] });
    const token = await new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setSubject('alice').sign(new TextEncoder().encode('x'.repeat(32)));
    const cases: Partial<TrustedRequest>[] = [
      { headers: { 'x-api-key': 'secret-1' } },
      { headers: { authorization: `Bearer ${token}` } },
      { headers: { 'x-client': 'mobile' } },
      { ctx: { tenant: 'acme' } },
      { host: 'b.test' },
    ];
    // Each case is its own bucket: the first request passes, the second is refused, whatever the peer.
    for (const c of cases) {
      expect(p.onRequest!(req({ ...c, remoteAddress: '192.0.2.10' }))).toMatchObject({ action: 'continue' });
      expect(p.onRequest!(req({ ...c, remoteAddress: '192.0.2.11' }))).toMatchObject({ status: 429 });
    }
  });

  it('skips a rule when no key source is present', async () => {
    const p = await load({ rules: [{ name: 'k', key: ['apikey'], limit: 1, windowSeconds: 60 }] });
    for (let i = 0; i < 3; i++) expect(p.onRequest!(req())).toBeUndefined();
  });

  it('groups IPv6 clients by prefix and reads the client behind trusted proxies', async () => {
    const p = await load({ rules: [{ name: 'ip', limit: 1, windowSeconds: 60 }], trustedProxies: ['10.0.0.0/8'], ipv6Subnet: 64 });
    expect(p.onRequest!(req({ remoteAddress: '2001:db8:1:2::1' }))).toMatchObject({ action: 'continue' });
    expect(p.onRequest!(req({ remoteAddress: '2001:db8:1:2:ffff::9' }))).toMatchObject({ status: 429 });
    expect(p.onRequest!(req({ remoteAddress: '2001:db8:1:3::1' }))).toMatchObject({ action: 'continue' });
    expect(p.onRequest!(req({ remoteAddress: '10.0.0.1', headers: { 'x-forwarded-for': '198.51.100.1' } }))).toMatchObject({ action: 'continue' });
    expect(p.onRequest!(req({ remoteAddress: '10.0.0.2', headers: { 'x-forwarded-for': '198.51.100.1' } }))).toMatchObject({ status: 429 });
  });

  it('refuses two rules with one name', async () => {
    await expect(load({ rules: [{ name: 'a', limit: 1, windowSeconds: 1 }, { name: 'a', limit: 2, windowSeconds: 1 }] })).rejects.toThrow(/rules\[1\]\.name: "a" is already the name/);
  });

  it('sends no headers on passing requests when told not to', async () => {
    const p = await load({ rules: [{ name: 'ip', limit: 1, windowSeconds: 60 }], headers: false });
    expect(p.onRequest!(req())).toBeUndefined();
    expect(p.onRequest!(req())).toMatchObject({ status: 429, headers: { 'retry-after': '60' } });
  });
});

describe('ratelimit over HTTP', () => {
  const started: Bext[] = [];
  const children: ChildProcess[] = [];
  afterAll(async () => {
    await Promise.all(started.map((b) => b.close()));
    for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
  });
  const start = async (section: Record<string, unknown>) => {
    const b = await startBext({ plugins: [{ dir: HERE }, { dir: OK }], config: { plugins: { ratelimit: section } } });
    started.push(b);
    return b;
  };

  it('answers 429 with Retry-After and RateLimit-* headers on a real socket', async () => {
    const b = await start({ rules: [{ name: 'api', limit: 2, windowSeconds: 10 }] });
    const r1 = await fetch(`${b.url}/x`);
    expect(r1.status).toBe(200);
    expect(r1.headers.get('ratelimit-limit')).toBe('2');
    expect(r1.headers.get('ratelimit-remaining')).toBe('1');
    expect(r1.headers.get('ratelimit-policy')).toBe('2;w=10');
    await fetch(`${b.url}/x`);
    const r3 = await fetch(`${b.url}/x`);
    expect(r3.status).toBe(429);
    expect(r3.headers.get('retry-after')).toBe('5');
    expect(await r3.json()).toEqual({ error: 'rate_limited', rule: 'api' });
  });

  it('holds one limit across two instances sharing Redis', async () => {
    const prefix = `${RUN}shared:`;
    const section = { rules: [{ name: 'api', limit: 5, windowSeconds: 60 }], redis: { url: 'redis://127.0.0.1:6379', keyPrefix: prefix } };
    const a = await start(section);
    const c = await start(section);
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) statuses.push((await fetch(`${(i % 2 ? c : a).url}/x`)).status);
    expect(statuses).toEqual([200, 200, 200, 200, 200, 429, 429, 429]);
    const last = await fetch(`${a.url}/x`);
    expect(last.headers.get('ratelimit-remaining')).toBe('0');
  });

  it('fails open when Redis is unreachable, with a metric and one log line', async () => {
    const port = await freePort();
    const b = await start({ rules: [{ name: 'api', limit: 1, windowSeconds: 60 }], redis: { url: `redis://127.0.0.1:${port}`, keyPrefix: `${RUN}down:`, timeoutMs: 50 } });
    for (let i = 0; i < 3; i++) {
      const r = await fetch(`${b.url}/x`);
      expect(r.status).toBe(200);
      expect(r.headers.get('ratelimit-limit')).toBeNull();
    }
    expect(b.logs.filter((r) => /failing open/.test(String(r.msg)))).toHaveLength(1);
    const metrics = await b.kernel.metrics.text();
    expect(metrics).toMatch(/bext_plugin_ratelimit_redis_fail_open_total 3/);
    expect(metrics).toMatch(/bext_plugin_ratelimit_redis_up 0/);
    expect(b.kernel.plugins().find((p) => p.name === 'ratelimit')).toMatchObject({ state: 'degraded' });
  });

  it('recovers by itself when its Redis comes back', async () => {
    const port = await freePort();
    let redis = await ownRedis(port);
    children.push(redis);
    const b = await start({ rules: [{ name: 'api', limit: 2, windowSeconds: 60 }], redis: { url: `redis://127.0.0.1:${port}`, keyPrefix: `${RUN}flap:`, timeoutMs: 100 } });
    const statuses = async (n: number) => {
      const out: number[] = [];
      for (let i = 0; i < n; i++) out.push((await fetch(`${b.url}/x`)).status);
      return out;
    };
    expect(await statuses(3)).toEqual([200, 200, 429]);

    const down = waitForLog(b, /failing open/);
    redis.kill('SIGTERM');
    await once(redis, 'exit');
    expect(await statuses(3)).toEqual([200, 200, 200]);
    await down;

    // A fresh server has no buckets, so the limit starts over once the limiter is back.
    const back = waitForLog(b, /reached redis again/);
    redis = await ownRedis(port);
    children.push(redis);
    await back;
    expect(await statuses(3)).toEqual([200, 200, 429]);
    expect(b.kernel.plugins().find((p) => p.name === 'ratelimit')).toMatchObject({ state: 'loaded' });
  });
});
