/**
 * The Redis tier with a real Redis: two bext instances sharing L2 and
 * invalidations, one render per key across instances, a lost pub/sub
 * message healed by the invalidation log, entries surviving a restart of
 * bext, and a Redis of this test's own killed and restarted mid-test.
 * Keys use a random prefix per test on the shared Redis; nothing is flushed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { resolve } from 'node:path';
import { Redis } from 'ioredis';
import { Agent, request } from 'undici';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { plugin, until } from '../../test/helpers.js';
import type { ResponseData, TrustedRequest } from '../../plugin-api/index.js';

type Leaf = (req: TrustedRequest) => ResponseData | Promise<ResponseData>;
const g = globalThis as unknown as { __leaf: Leaf; __renders: number };
g.__renders = 0;

const CACHE = resolve(import.meta.dirname);
const SHARED = 'redis://127.0.0.1:6379';
const leafDir = plugin('leaf', { hooks: { onRender: { priority: 100 } }, limits: { timeoutMs: 30000 } }, `
export default () => ({ onRender(req) { globalThis.__renders++; return globalThis.__leaf(req); } });
`);

const agent = new Agent({ connections: 128 });
const running: Bext[] = [];
const prefixes: string[] = [];
const admin = new Redis(SHARED, { lazyConnect: true });
afterEach(async () => {
  while (running.length) await running.pop()!.close();
  g.__renders = 0;
});
afterAll(async () => {
  await admin.connect().catch(() => undefined);
  for (const p of prefixes) {
    let cursor = '0';
    do {
      const [next, keys] = await admin.scan(cursor, 'MATCH', `${p}*`, 'COUNT', 1000);
      if (keys.length) await admin.del(...keys);
      cursor = next;
    } while (cursor !== '0');
  }
  admin.disconnect();
  await agent.close();
});

function prefix(): string {
  const p = `bext:test:${randomBytes(6).toString('hex')}:`;
  prefixes.push(p);
  return p;
}

async function start(redis: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<Bext> {
  const b = await startBext({ plugins: [CACHE, { dir: leafDir }], config: { plugins: { cache: { redis: { timeoutMs: 500, ...redis }, ...extra } } } });
  running.push(b);
  return b;
}

async function get(b: Bext, path: string, headers: Record<string, string> = {}): Promise<{ status: number; text: string; cs: string }> {
  const r = await request(`${b.url}${path}`, { headers, dispatcher: agent });
  return { status: r.statusCode, text: await r.body.text(), cs: String(r.headers['cache-status']) };
}

async function post(b: Bext, path: string, body: unknown): Promise<Record<string, unknown>> {
  const r = await request(`${b.adminUrl}${path}`, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' }, dispatcher: agent });
  return (await r.body.json()) as Record<string, unknown>;
}

const state = (b: Bext) => b.kernel.plugins().find((p) => p.name === 'cache')!.state;
let version = 0;
const page = (req: TrustedRequest): ResponseData => ({ status: 200, headers: { 'content-type': 'text/html', 'cache-control': 'max-age=600', 'cache-tag': 'pages' }, body: `${req.path} v${++version}` });

async function freePort(): Promise<number> {
  const s = net.createServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as net.AddressInfo).port;
  s.close();
  return port;
}

/** A redis-server of this test's own, so it can be killed without touching the shared one. */
async function ownRedis(port: number): Promise<ChildProcess> {
  const p = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--enable-debug-command', 'local'], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolveReady, reject) => {
    let out = '';
    p.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('Ready to accept connections')) resolveReady();
    });
    p.once('exit', (code) => reject(new Error(`redis-server exited with ${code}: ${out}`)));
  });
  return p;
}

describe('cache with redis', () => {
  it('two instances share L2; entries survive a restart of bext', async () => {
    g.__leaf = page;
    const p = prefix();
    const a = await start({ url: SHARED, keyPrefix: p });
    const b = await start({ url: SHARED, keyPrefix: p });
    const first = await get(a, '/shared');
    expect(first.cs).toBe('bext; fwd=miss; fwd-status=200; stored');
    const fromB = await get(b, '/shared');
    expect(fromB.text).toBe(first.text);
    expect(fromB.cs).toMatch(/^bext; hit; ttl=\d+; detail=l2$/);
    expect((await get(b, '/shared')).cs).toMatch(/^bext; hit; ttl=\d+$/);
    expect(g.__renders).toBe(1);
    await a.close();
    await b.close();
    running.length = 0;
    const c = await start({ url: SHARED, keyPrefix: p });
    const after = await get(c, '/shared');
    expect(after.text).toBe(first.text);
    expect(after.cs).toContain('detail=l2');
    expect(g.__renders).toBe(1);
  });

  it('stale across instances: one background render refreshes L2, and the other instance adopts it without rendering', async () => {
    vi.useFakeTimers({ toFake: ['Date'], shouldAdvanceTime: true });
    const t0 = Date.now();
    try {
      g.__leaf = (req) => ({ status: 200, headers: { 'content-type': 'text/html' }, body: `${req.path} v${++version}` });
      const p = prefix();
      const cache = { rules: [{ paths: ['/**'], mode: 'isr', revalidate: 30 }] };
      const a = await start({ url: SHARED, keyPrefix: p }, cache);
      const b = await start({ url: SHARED, keyPrefix: p }, cache);
      const v1 = await get(a, '/isr');
      expect((await get(b, '/isr')).cs).toContain('detail=l2');
      vi.setSystemTime(t0 + 31_000);
      const staleA = await get(a, '/isr');
      expect(staleA.text).toBe(v1.text);
      expect(staleA.cs).toContain('stale-while-revalidate');
      await until(async () => (await get(a, '/isr')).text !== v1.text, 5000, 'instance a to store its re-render');
      expect(g.__renders).toBe(2);
      // b still holds v1 in memory: it serves it stale once, then takes a's newer copy from L2.
      const staleB = await get(b, '/isr');
      expect(staleB.text).toBe(v1.text);
      await until(async () => (await get(b, '/isr')).text !== v1.text, 5000, 'instance b to adopt the newer copy');
      expect(g.__renders).toBe(2);
    } finally {
      vi.useRealTimers();
    }
  });

  it('one render per key across instances: 200 concurrent requests split over two instances', async () => {
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    g.__leaf = async (req) => {
      await gate;
      return page(req);
    };
    const p = prefix();
    const a = await start({ url: SHARED, keyPrefix: p });
    const b = await start({ url: SHARED, keyPrefix: p });
    const all = Array.from({ length: 200 }, (_, i) => get(i % 2 ? a : b, '/hot'));
    await until(() => a.kernel.inflight + b.kernel.inflight === 200, 10_000, 'all requests to arrive');
    open();
    const res = await Promise.all(all);
    expect(g.__renders).toBe(1);
    expect(res.every((r) => r.status === 200 && r.text === res[0]!.text)).toBe(true);
    expect(res.filter((r) => r.cs.endsWith('stored'))).toHaveLength(1);
  });

  it('invalidations fan out to the other instance, and a lost message is healed by the log', async () => {
    g.__leaf = page;
    const p = prefix();
    const a = await start({ url: SHARED, keyPrefix: p, syncIntervalMs: 50 });
    const b = await start({ url: SHARED, keyPrefix: p, syncIntervalMs: 50 });
    const v1 = await get(a, '/post');
    expect((await get(b, '/post')).text).toBe(v1.text);
    expect((await post(a, '/api/invalidate', { tags: ['pages'] })).shared).toBe(true);
    const v2 = await get(b, '/post');
    expect(v2.text).not.toBe(v1.text);
    expect((await get(a, '/post')).text).toBe(v2.text);

    // A purge written to the log without the pub/sub message, as if the message were lost on the way.
    const r = new Redis(SHARED);
    const inv = { tags: ['url:127.0.0.1/post'], mode: 'hard', ts: Date.now(), origin: 'elsewhere' };
    await r.hset(`${p}tags:hard`, inv.tags[0]!, String(inv.ts));
    await r.xadd(`${p}inv`, '*', 'r', JSON.stringify(inv));
    r.disconnect();
    await until(async () => (await get(b, '/post')).text !== v2.text, 5000, 'instance b to read the log');
  });

  it('Redis killed mid-test: memory only, degraded, then recovers by itself', async () => {
    g.__leaf = page;
    const port = await freePort();
    let redis = await ownRedis(port);
    const url = `redis://127.0.0.1:${port}`;
    const p = prefix();
    const a = await start({ url, keyPrefix: p, syncIntervalMs: 50, timeoutMs: 200 });
    const direct = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => 50 });
    direct.on('error', () => undefined);
    try {
      const v1 = await get(a, '/a');
      expect(v1.cs).toContain('stored');
      await direct.connect();
      await until(async () => (await direct.keys(`${p}e:*`)).length === 1, 5000, 'the write-through to redis');

      redis.kill('SIGKILL');
      await once(redis, 'exit');
      await until(() => state(a) === 'degraded', 5000, 'the cache to report redis down');
      expect((await get(a, '/a')).text).toBe(v1.text);
      const b1 = await get(a, '/b');
      expect(b1.cs).toBe('bext; fwd=miss; fwd-status=200; stored');
      expect((await get(a, '/b')).text).toBe(b1.text);
      // A purge made while Redis is away is kept and sent when it is back.
      await post(a, '/api/invalidate', { tags: ['while-down'] });
      await until(async () => /bext_plugin_cache_redis_up 0/.test(await a.kernel.metrics.text()), 3000, 'redis_up to read 0');

      redis = await ownRedis(port);
      await until(() => state(a) === 'loaded', 10_000, 'the cache to reconnect');
      await until(async () => (await direct.hget(`${p}tags:hard`, 'tag:while-down').catch(() => null)) !== null, 5000, 'the pending purge to reach redis');
      const c1 = await get(a, '/c');
      expect(c1.cs).toContain('stored');
      await until(async () => (await direct.keys(`${p}e:*`)).length === 1, 5000, 'new fills to be written through again');
      expect((await get(a, '/a')).text).toBe(v1.text);
    } finally {
      direct.disconnect();
      redis.kill('SIGKILL');
    }
  });

  it('a Redis too slow to answer counts as down, and a prompt answer ends it', async () => {
    g.__leaf = page;
    const port = await freePort();
    const redis = await ownRedis(port);
    const url = `redis://127.0.0.1:${port}`;
    const a = await start({ url, keyPrefix: prefix(), syncIntervalMs: 50, timeoutMs: 100 });
    const blocker = new Redis(url);
    try {
      expect(state(a)).toBe('loaded');
      // DEBUG SLEEP blocks the server itself: every command from the cache times out meanwhile.
      const sleeping = blocker.call('DEBUG', 'SLEEP', '1');
      const r = await get(a, '/slow-redis');
      expect(r.status).toBe(200);
      expect(state(a)).toBe('degraded');
      await sleeping;
      await until(() => state(a) === 'loaded', 5000, 'the probe to find redis prompt again');
    } finally {
      blocker.disconnect();
      redis.kill('SIGKILL');
    }
  });

  it('starts with Redis unreachable and answers from memory', async () => {
    g.__leaf = page;
    const port = await freePort();
    const a = await start({ url: `redis://127.0.0.1:${port}`, keyPrefix: prefix(), timeoutMs: 50 });
    const v = await get(a, '/x');
    expect((await get(a, '/x')).text).toBe(v.text);
    await until(() => state(a) === 'degraded', 3000);
    expect(g.__renders).toBe(1);
  });
});
