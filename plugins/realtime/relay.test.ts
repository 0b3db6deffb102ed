/**
 * Two bext instances relaying through a real Redis: cross-instance delivery
 * with global offsets, resume on the other instance, channel subscriptions
 * only while followed, presence across instances, and a Redis that is
 * killed and restarted mid-stream (own redis-server on a free port; the
 * shared one at 127.0.0.1:6379 is used with a prefix unique to this run).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { Redis } from 'ioredis';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { until } from '../../test/helpers.js';
import { SseClient, WsClient } from './testkit.js';

const DIR = import.meta.dirname;
const SHARED = 'redis://127.0.0.1:6379';
const SECRET = 'realtime-relay-secret-at-least-32-bytes';
const prefix = `bext:rt:test-${randomBytes(4).toString('hex')}:`;

const config = (redisUrl: string, extra: Record<string, unknown> = {}) => ({
  plugins: {
    realtime: {
      redisUrl, prefix, redisTimeoutMs: 300,
      jwt: { keys: [{ alg: 'HS256', secret: SECRET }] },
      presence: { topics: ['chat/**'] },
      ...extra,
    },
  },
});

async function stats(b: Bext): Promise<Record<string, any>> {
  return (await fetch(`${b.adminUrl}/__bext/hub/stats`)).json() as Promise<Record<string, any>>;
}

const open: { close(): void }[] = [];
const sse = (b: Bext, query: string, headers: Record<string, string> = {}) => {
  const c = new SseClient(`${b.url}/__bext/events?${query}`, headers);
  open.push(c);
  return c;
};
const ws = (b: Bext, query = '') => {
  const c = new WsClient(`ws://127.0.0.1:${b.port}/__bext/ws${query ? `?${query}` : ''}`);
  open.push(c);
  return c;
};

let A: Bext;
let B: Bext;
beforeAll(async () => {
  A = await startBext({ plugins: [DIR], config: config(SHARED) });
  B = await startBext({ plugins: [DIR], config: config(SHARED) });
});
afterAll(async () => {
  for (const c of open) c.close();
  await A?.close();
  await B?.close();
  const r = new Redis(SHARED);
  const keys = await r.keys(`${prefix}*`);
  if (keys.length) await r.del(...keys);
  r.disconnect();
});

describe('relay through Redis', () => {
  it('delivers across instances with one global, gapless offset sequence per topic', async () => {
    const onB = sse(B, 'topic=custom/x');
    const onA = ws(A, 'topic=custom/x');
    await onB.next((e) => e.event === 'subscribed');
    await onA.next((m) => m.type === 'subscribed');
    const counts = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? A : B).publish('custom/x', { i })));
    // Each publish resolves once its own instance delivered it locally.
    expect(counts).toEqual(Array(20).fill(1));
    await onB.until(() => onB.messages().length === 20);
    await onA.until(() => onA.messages().length === 20);
    expect(onB.messages().map((m) => m.offset)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    expect(onA.messages().map((m) => m.offset)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    expect(new Set(onB.messages().map((m) => m.epoch)).size).toBe(1);
    expect(onA.messages().map((m) => m.epoch)).toEqual(onB.messages().map((m) => m.epoch));
    expect(onB.messages().map((m) => (m.data as { i: number }).i).sort((a, b) => a - b)).toEqual(Array.from({ length: 20 }, (_, i) => i));
    onB.close();
    onA.close();
  });

  it('resumes on the other instance from the last id it saw', async () => {
    const first = sse(A, 'topic=custom/resume');
    await first.next((e) => e.event === 'subscribed');
    for (let i = 1; i <= 3; i++) await A.publish('custom/resume', { i });
    await first.until(() => first.messages().length === 3);
    const last = first.lastId!;
    first.close();
    for (let i = 4; i <= 6; i++) await B.publish('custom/resume', { i });
    const second = sse(B, 'topic=custom/resume', { 'last-event-id': last });
    await second.until(() => second.messages().length === 3);
    await A.publish('custom/resume', { i: 7 });
    await second.until(() => second.messages().length === 4);
    expect(second.messages().map((m) => (m.data as { i: number }).i)).toEqual([4, 5, 6, 7]);
    expect(second.got.some((e) => e.event === 'missed')).toBe(false);
    second.close();
  });

  it('carries wildcard subscriptions across instances, filtering what Redis patterns over-match', async () => {
    const c = sse(B, 'topic=app/*/events&topic=logs/**');
    await c.next((e) => e.event === 'subscribed');
    await A.publish('app/x/y/events', 'deep');
    await A.publish('app/x/events', 'one');
    await A.publish('logs', 'root');
    await A.publish('logs/a/b', 'leaf');
    await c.until(() => c.messages().length === 3);
    expect(c.messages().map((m) => m.data)).toEqual(['one', 'root', 'leaf']);
    c.close();
  });

  it('subscribes to a topic channel only while a local connection follows it', async () => {
    await until(async () => (await stats(B)).relay.channels === 0, 5000, 'B to hold no channels');
    const c = sse(B, 'topic=custom/only-while');
    await c.next((e) => e.event === 'subscribed');
    expect((await stats(B)).relay).toMatchObject({ configured: true, up: true, channels: 1 });
    expect((await stats(A)).relay.channels).toBe(0);
    c.close();
    await until(async () => (await stats(B)).relay.channels === 0, 5000, 'B to unsubscribe');
  });

  it('tracks presence across instances', async () => {
    const t = (sub: string) => new SignJWT({ sub }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('10m').sign(new TextEncoder().encode(SECRET));
    const watch = sse(B, 'topic=presence/chat/team');
    await watch.next((e) => e.event === 'subscribed');
    const alice = ws(A, `topic=chat/team&token=${await t('alice')}`);
    await alice.next((m) => m.type === 'subscribed');
    const bob = sse(B, `topic=chat/team&token=${await t('bob')}`);
    await bob.next((e) => e.event === 'subscribed');
    await watch.until(() => watch.messages().length === 2);
    expect(watch.messages().map((m) => (m.data as { type: string; user: string }).user).sort()).toEqual(['alice', 'bob']);
    const list = (await (await fetch(`${A.url}/__bext/presence?topic=chat/team`)).json()) as { count: number; clients: { user: string }[] };
    expect(list.count).toBe(2);
    expect(list.clients.map((c) => c.user).sort()).toEqual(['alice', 'bob']);
    alice.close();
    await watch.until(() => watch.messages().some((m) => (m.data as { type: string }).type === 'leave'));
    const after = (await (await fetch(`${B.url}/__bext/presence?topic=chat/team`)).json()) as { count: number };
    expect(after.count).toBe(1);
    bob.close();
    watch.close();
  });
});

describe('a Redis restarted mid-stream', () => {
  let port = 0;
  let redis: ChildProcess | null = null;
  let X: Bext;
  let Y: Bext;

  const startRedis = async () => {
    redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    const probe = new Redis(port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => 20 });
    probe.on('error', () => undefined);
    await until(async () => (await probe.ping().catch(() => null)) === 'PONG', 10_000, 'redis-server to answer');
    probe.disconnect();
  };
  const stopRedis = async () => {
    const r = redis!;
    redis = null;
    r.kill('SIGKILL');
    if (r.exitCode === null && r.signalCode === null) await once(r, 'exit');
  };
  const state = (b: Bext) => b.kernel.plugins().find((p) => p.name === 'realtime')!;

  beforeAll(async () => {
    const s = net.createServer();
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    port = (s.address() as net.AddressInfo).port;
    await new Promise((r) => s.close(r));
    await startRedis();
    X = await startBext({ plugins: [DIR], config: config(`redis://127.0.0.1:${port}`) });
    Y = await startBext({ plugins: [DIR], config: config(`redis://127.0.0.1:${port}`) });
  });
  afterAll(async () => {
    await X?.close();
    await Y?.close();
    if (redis) await stopRedis();
  });

  it('resyncs after the relay drops its connections, without loss', async () => {
    const c = sse(Y, 'topic=custom/resync');
    await c.next((e) => e.event === 'subscribed');
    await X.publish('custom/resync', 1);
    await c.until(() => c.messages().length === 1);
    const admin = new Redis(port, '127.0.0.1');
    await admin.client('KILL', 'TYPE', 'pubsub');
    admin.disconnect();
    // Published while Y's subscriber connection is down: Y fills the gap from history when it is back.
    for (let i = 2; i <= 4; i++) await X.publish('custom/resync', i);
    await c.until(() => c.messages().length === 4);
    expect(c.messages().map((m) => m.data)).toEqual([1, 2, 3, 4]);
    expect(c.messages().map((m) => m.offset)).toEqual([1, 2, 3, 4]);
    expect(c.got.some((e) => e.event === 'missed')).toBe(false);
    expect((await stats(Y)).totals.resyncs).toBeGreaterThanOrEqual(1);
    c.close();
  });

  it('degrades to local delivery while Redis is down, then resubscribes and says the history was lost', async () => {
    const onY = sse(Y, 'topic=custom/live');
    const onX = ws(X, 'topic=custom/live');
    await onY.next((e) => e.event === 'subscribed');
    await onX.next((m) => m.type === 'subscribed');
    for (let i = 1; i <= 3; i++) await X.publish('custom/live', i);
    await onY.until(() => onY.messages().length === 3);
    const epoch = onY.messages()[0]!.epoch;

    await stopRedis();
    await until(() => state(X).state === 'degraded' && state(Y).state === 'degraded', 10_000, 'both instances to report degraded');
    expect(state(X).detail).toMatch(/local subscribers only/);
    // Local only: X's own subscriber still gets it, in a local epoch of its own.
    expect(await X.publish('custom/live', 'local')).toBe(1);
    const local = await onX.next((m) => m.type === 'message' && m.data === 'local');
    expect(String(local.epoch)).toMatch(/^L/);

    await startRedis();
    await until(async () => (await stats(X)).relay.up && (await stats(Y)).relay.up && (await stats(Y)).relay.channels === 1, 15_000, 'the relay to come back');
    expect(state(X).state).toBe('loaded');
    await X.publish('custom/live', 'after');
    const after = await onY.next((e) => e.event === 'message' && e.data.data === 'after');
    const missed = onY.got.find((e) => e.event === 'missed');
    expect(missed?.data).toMatchObject({ topic: 'custom/live', reason: 'epoch' });
    expect(onY.got.indexOf(missed!)).toBeLessThan(onY.got.indexOf(after));
    expect(after.data).toMatchObject({ offset: 1 });
    expect(after.data.epoch).not.toBe(epoch);
    expect(onY.messages().map((m) => m.data)).toEqual([1, 2, 3, 'after']);
    await onX.until(() => onX.messages().some((m) => m.data === 'after'));
    onY.close();
    onX.close();
  });
});
