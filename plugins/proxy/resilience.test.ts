import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, describe, expect, it } from 'vitest';
import { Agent, request } from 'undici';
import { until } from '../../test/helpers.js';
import { startUpstream, type TestUpstream } from './fixtures/upstream.mjs';
import { startProxy, type ProxyUnderTest } from './fixtures/setup.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function upstreams(...names: string[]): Promise<TestUpstream[]> {
  const ups = await Promise.all(names.map((n) => startUpstream(n)));
  for (const u of ups) cleanups.push(() => u.close());
  return ups;
}

async function proxy(cfg: Record<string, unknown>): Promise<ProxyUnderTest> {
  const p = await startProxy(cfg);
  cleanups.push(() => p.close());
  return p;
}

async function call(url: string, opts: { method?: string; headers?: Record<string, string>; body?: string } = {}) {
  const r = await request(url, { method: (opts.method ?? 'GET') as 'GET', headers: opts.headers, body: opts.body });
  const text = await r.body.text();
  return { status: r.statusCode, headers: r.headers, text };
}

const events = (p: ProxyUnderTest, name: string) => p.events.map((e) => e.data as Record<string, unknown>).filter((d) => d.event === name);

/** An upstream in its own process, reporting each request it receives on stdout before answering. */
async function childUpstream(name: string): Promise<{ url: string; proc: ChildProcess; received: string[] }> {
  const proc = spawn(process.execPath, [resolve(import.meta.dirname, 'fixtures/upstream.mjs'), name], { stdio: ['ignore', 'pipe', 'inherit'] });
  const received: string[] = [];
  const rl = createInterface({ input: proc.stdout! });
  const port = await new Promise<number>((res, rej) => {
    proc.once('exit', (c) => rej(new Error(`upstream ${name} exited with ${c}`)));
    rl.on('line', (l) => {
      const m = /^LISTENING (\d+)/.exec(l);
      if (m) res(Number(m[1]));
      else if (l.startsWith('RECV ')) received.push(l.slice(5));
    });
  });
  cleanups.push(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL');
      await once(proc, 'exit');
    }
  });
  return { url: `http://127.0.0.1:${port}`, proc, received };
}

describe('a member killed under load', () => {
  it('loses no idempotent request and never duplicates a non-idempotent one', async () => {
    const a = await childUpstream('a');
    const b = await childUpstream('b');
    const p = await proxy({ upstreams: { app: { members: [a.url, b.url] } }, routes: [{ upstream: 'app' }] });
    const agent = new Agent({ connections: 100 });
    cleanups.push(() => agent.close());
    const total = 2000;
    let next = 0;
    let done = 0;
    const results: { id: string; method: string; status: number }[] = [];
    let killed: Promise<unknown> | null = null;
    const worker = async () => {
      while (next < total) {
        const i = next++;
        const method = i % 4 === 3 ? 'POST' : 'GET';
        const id = `r${i}`;
        let status = 0;
        try {
          const r = await request(`${p.url}/work?i=${i}`, { method, dispatcher: agent, headers: { 'x-id': id }, body: method === 'POST' ? `order ${i}` : undefined });
          await r.body.dump();
          status = r.statusCode;
        } catch {
          status = -1;
        }
        results.push({ id, method, status });
        if (++done === 500) {
          a.proc.kill('SIGKILL');
          killed = once(a.proc, 'exit');
        }
      }
    };
    await Promise.all(Array.from({ length: 100 }, worker));
    await killed;
    const gets = results.filter((r) => r.method === 'GET');
    const posts = results.filter((r) => r.method === 'POST');
    expect(gets.length + posts.length).toBe(total);
    expect(gets.filter((r) => r.status !== 200)).toEqual([]);
    const times = new Map<string, number>();
    for (const line of [...a.received, ...b.received]) {
      const [method, id] = line.split(' ');
      if (method === 'POST') times.set(id!, (times.get(id!) ?? 0) + 1);
    }
    expect([...times].filter(([, n]) => n > 1)).toEqual([]);
    // Every POST that succeeded reached exactly one member; one that failed was at most in flight at the kill.
    for (const r of posts) if (r.status === 200) expect(times.get(r.id)).toBe(1);
    const failedPosts = posts.filter((r) => r.status !== 200);
    expect(failedPosts.every((r) => r.status === 502)).toBe(true);
    expect(failedPosts.length).toBeLessThan(50);
    expect(a.received.length).toBeGreaterThan(100);
    expect(b.received.length).toBeGreaterThan(1000);
    // The dead member was ejected on its connect failures.
    await until(() => events(p, 'member-ejected').length > 0, 5000, 'an ejection');
    expect(events(p, 'member-ejected')[0]).toMatchObject({ upstream: 'app', reason: 'connect' });
  });
});

describe('a member that hangs', () => {
  it('times out, retries idempotent requests elsewhere, answers 504 for the rest, and ejects the member', async () => {
    const [a, b] = await upstreams('a', 'b');
    await b!.set('mode=hang');
    const p = await proxy({
      upstreams: { app: { members: [a!.url, b!.url], timeouts: { headersMs: 300 }, health: { passive: { consecutive5xx: 3, baseEjectionMs: 60_000 } } } },
      routes: [{ upstream: 'app' }],
    });
    const gets = await Promise.all(Array.from({ length: 6 }, () => call(`${p.url}/x`)));
    expect(gets.map((g) => g.status)).toEqual([200, 200, 200, 200, 200, 200]);
    expect(gets.every((g) => g.headers['x-member'] === 'a')).toBe(true);
    await until(() => events(p, 'member-ejected').length === 1, 5000, 'the hanging member to be ejected');
    expect(events(p, 'member-ejected')[0]).toMatchObject({ member: `127.0.0.1:${b!.port}`, reason: '5xx', forMs: 60_000 });
    // Ejected: even a POST now goes to the good member only.
    const post = await call(`${p.url}/x`, { method: 'POST', body: 'x' });
    expect(post.headers['x-member']).toBe('a');
    expect((await p.state()).app.members[1]).toMatchObject({ available: false, ejections: 1 });
  });

  it('answers 504 to a POST that reached a hanging member, without sending it twice', async () => {
    const [a] = await upstreams('a');
    await a!.set('mode=hang');
    const p = await proxy({ upstreams: { app: { members: [a!.url], timeouts: { headersMs: 200 } } }, routes: [{ upstream: 'app' }] });
    const r = await call(`${p.url}/x`, { method: 'POST', body: 'once' });
    expect(r.status).toBe(504);
    expect(JSON.parse(r.text)).toMatchObject({ error: 'BEXT_ERR_PROXY_TIMEOUT', upstream: 'app', reason: 'timeout' });
    expect(a!.state.received.filter((x) => x.method === 'POST')).toHaveLength(1);
  });
});

describe('retry safety', () => {
  it('retries an idempotent request after a reset, but never a POST that was sent', async () => {
    const [a, b] = await upstreams('a', 'b');
    const p = await proxy({ upstreams: { app: { members: [a!.url, b!.url], health: { passive: { consecutiveConnectFailures: 0 } } } }, routes: [{ upstream: 'app' }] });
    const post = await call(`${p.url}/reset`, { method: 'POST', body: 'pay' });
    expect(post.status).toBe(502);
    expect(a!.state.received.length + b!.state.received.length).toBe(1);
    const get = await call(`${p.url}/reset`);
    expect(get.status).toBe(502);
    // One try and two retries (maxRetries: 2), spread over both members.
    expect(a!.state.received.length + b!.state.received.length).toBe(4);
  });

  it('retries any method after a connect failure, since nothing was sent', async () => {
    const [a] = await upstreams('a');
    const p = await proxy({ upstreams: { app: { members: ['http://127.0.0.1:9', a!.url] } }, routes: [{ upstream: 'app' }] });
    for (let i = 0; i < 4; i++) {
      const r = await call(`${p.url}/echo`, { method: 'POST', body: `body ${i}`, headers: { 'content-type': 'text/plain' } });
      expect(r.status).toBe(200);
      expect(r.text).toBe(`body ${i}`);
    }
    expect(a!.state.received).toHaveLength(4);
  });

  it('honours Retry-After: the member is skipped, and a lone member is waited for', async () => {
    const [a, b] = await upstreams('a', 'b');
    await a!.set('mode=503&retryAfter=30');
    const p = await proxy({ upstreams: { app: { members: [a!.url, b!.url] } }, routes: [{ upstream: 'app' }] });
    for (let i = 0; i < 6; i++) expect((await call(`${p.url}/x`)).headers['x-member']).toBe('b');
    expect(a!.state.received).toHaveLength(1);
    expect((await p.state()).app.members[0].retryAfterMs).toBeGreaterThan(20_000);

    const [c] = await upstreams('c');
    await c!.set('mode=503once&retryAfter=1');
    const q = await proxy({ upstreams: { solo: { members: [c!.url], retries: { maxRetryAfterMs: 2000 } } }, routes: [{ upstream: 'solo' }] });
    const t0 = Date.now();
    const r = await call(`${q.url}/x`);
    expect(r.status).toBe(200);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
    expect(c!.state.received).toHaveLength(2);

    // A Retry-After longer than the proxy may wait goes back to the client as it came.
    await c!.set('mode=503&retryAfter=60');
    const long = await call(`${q.url}/x`);
    expect(long.status).toBe(503);
    expect(long.headers['retry-after']).toBe('60');
  });

  it('keeps retries within the budget when a whole pool fails', async () => {
    const [a] = await upstreams('a');
    await a!.set('mode=503');
    const p = await proxy({
      upstreams: {
        app: {
          members: [a!.url],
          retries: { maxRetries: 3, budgetPercent: 20, minPerSecond: 0 },
          health: { passive: { consecutive5xx: 0 } },
          breaker: { errorRate: { enabled: false } },
        },
      },
      routes: [{ upstream: 'app' }],
    });
    for (let i = 0; i < 50; i++) expect((await call(`${p.url}/x`)).status).toBe(503);
    // Without a budget, 50 requests × (1 + 3 retries) = 200 would have reached the member.
    expect(a!.state.received.length).toBeLessThanOrEqual(50 * 1.2 + 1);
    expect((await p.state()).app.retriesDenied).toBeGreaterThan(0);
  });
});

describe('active health checks', () => {
  it('keeps a flapping member out until it passes `rise` checks in a row', async () => {
    const [a, b] = await upstreams('a', 'b');
    await b!.set('health=flap');
    const p = await proxy({
      upstreams: { app: { members: [a!.url, b!.url], health: { active: { path: '/health', intervalMs: 15, rise: 3, fall: 1 } } } },
      routes: [{ upstream: 'app' }],
    });
    await until(() => events(p, 'member-down').length === 1, 5000, 'the flapping member to go down');
    const seen = b!.state.healthChecks;
    await until(() => b!.state.healthChecks >= seen + 12, 5000, 'a dozen more checks');
    for (let i = 0; i < 10; i++) expect((await call(`${p.url}/x`)).headers['x-member']).toBe('a');
    expect(b!.state.received).toHaveLength(0);
    expect(events(p, 'member-up')).toHaveLength(0);
    expect(events(p, 'member-down')[0]).toMatchObject({ upstream: 'app', member: `127.0.0.1:${b!.port}` });

    await b!.set('health=200');
    await until(() => events(p, 'member-up').length === 1, 5000, 'the member to come back');
    const members = new Set<string>();
    for (let i = 0; i < 4; i++) members.add((await call(`${p.url}/x`)).headers['x-member'] as string);
    expect(members).toEqual(new Set(['a', 'b']));
  });

  it('all members down: fails open by default, or answers 503 when configured', async () => {
    const [a, b] = await upstreams('a', 'b');
    await a!.set('health=500');
    await b!.set('health=500');
    const active = { path: '/health', intervalMs: 20, rise: 1, fall: 1 };
    const open = await proxy({ upstreams: { app: { members: [a!.url, b!.url], health: { active } } }, routes: [{ upstream: 'app' }] });
    const closed = await proxy({ upstreams: { app: { members: [a!.url, b!.url], health: { active, allDown: '503' } } }, routes: [{ upstream: 'app' }] });
    await until(() => events(open, 'member-down').length === 2 && events(closed, 'member-down').length === 2, 5000, 'both members down in both proxies');
    expect((await call(`${open.url}/x`)).status).toBe(200);
    const r = await call(`${closed.url}/x`);
    expect(r.status).toBe(503);
    expect(r.headers['retry-after']).toBe('1');
    expect(JSON.parse(r.text)).toMatchObject({ error: 'BEXT_ERR_PROXY_UNAVAILABLE', reason: 'all-down' });
    expect(events(open, 'all-down')[0]).toMatchObject({ policy: 'fail-open' });
    expect(events(closed, 'all-down')[0]).toMatchObject({ policy: '503' });
  });
});

describe('circuit breaking', () => {
  it('opens on the error rate, refuses without touching the member, probes half-open, and closes again', async () => {
    const [a] = await upstreams('a');
    await a!.set('mode=500');
    const p = await proxy({
      upstreams: {
        app: {
          members: [a!.url],
          health: { passive: { consecutive5xx: 0 } },
          breaker: { errorRate: { threshold: 0.5, minRequests: 10, openMs: 200, halfOpenProbes: 2 } },
        },
      },
      routes: [{ upstream: 'app' }],
    });
    for (let i = 0; i < 10; i++) expect((await call(`${p.url}/x`)).status).toBe(500);
    const refused = await call(`${p.url}/x`);
    expect(refused.status).toBe(503);
    expect(JSON.parse(refused.text)).toMatchObject({ error: 'BEXT_ERR_PROXY_UNAVAILABLE', reason: 'circuit-open' });
    expect(a!.state.received).toHaveLength(10);

    // Half-open: the probe fails, so it opens again.
    await until(async () => (await call(`${p.url}/x`)).status === 500, 5000, 'a half-open probe');
    expect((await call(`${p.url}/x`)).status).toBe(503);

    await a!.set('mode=ok');
    await until(async () => (await call(`${p.url}/x`)).status === 200, 5000, 'a successful probe');
    await until(async () => (await call(`${p.url}/x`)).status === 200 && (await p.state()).app.breaker === 'closed', 5000, 'the breaker to close');
    const moves = events(p, 'breaker').map((e) => `${e.from}>${e.to}`);
    expect(moves).toEqual(['closed>open', 'open>half-open', 'half-open>open', 'open>half-open', 'half-open>closed']);
    expect(events(p, 'breaker')[0]!.errorRate).toBe(1);
    await until(async () => /bext_plugin_proxy_breaker_transitions_total\{to="closed",upstream="app"\} 1/.test(await p.bx.kernel.metrics.text()), 5000, 'the transition metric');
  });

  it('caps concurrent requests per upstream', async () => {
    const [a] = await upstreams('a');
    const p = await proxy({ upstreams: { app: { members: [a!.url], breaker: { maxRequests: 2 } } }, routes: [{ upstream: 'app' }] });
    const results = await Promise.all(Array.from({ length: 5 }, () => call(`${p.url}/slow?ms=300`)));
    const statuses = results.map((r) => r.status).sort();
    expect(statuses).toEqual([200, 200, 503, 503, 503]);
    expect(JSON.parse(results.find((r) => r.status === 503)!.text).reason).toBe('max-requests');
    expect(a!.state.received).toHaveLength(2);
  });

  it('caps requests waiting for a connection', async () => {
    const [a] = await upstreams('a');
    const p = await proxy({ upstreams: { app: { members: [a!.url], breaker: { maxConnections: 1, maxPending: 1 } } }, routes: [{ upstream: 'app' }] });
    const results = await Promise.all(Array.from({ length: 4 }, () => call(`${p.url}/slow?ms=200`)));
    expect(results.map((r) => r.status).sort()).toEqual([200, 200, 503, 503]);
    expect(JSON.parse(results.find((r) => r.status === 503)!.text).reason).toBe('max-pending');
  });
});
