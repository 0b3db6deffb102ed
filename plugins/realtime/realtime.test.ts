/**
 * The realtime hub on one instance, over real sockets: SSE and WebSocket
 * subscribers, wildcards, replay and resume, per-topic auth with tokens
 * that expire mid-connection, publishing through the onPublish chain from
 * a sandboxed plugin, presence, slow consumers, pong deadlines, and topic
 * churn without memory growth. The Redis relay has its own file.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { plugin, tmp, until } from '../../test/helpers.js';
import { covers, intersects, Rules } from './access.js';
import { parseSince } from './index.js';
import { SseClient, WsClient } from './testkit.js';
import { PatternIndex, parseSubscription } from './topics.js';

const SECRET = 'realtime-test-secret-at-least-32-bytes';
const DIR = import.meta.dirname;
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

async function token(claims: Record<string, unknown>, expSeconds = 600, alg = 'HS256'): Promise<string> {
  return new SignJWT(claims).setProtectedHeader({ alg }).setIssuedAt().setExpirationTime(Math.floor(Date.now() / 1000) + expSeconds).sign(new TextEncoder().encode(SECRET));
}

const baseConfig = {
  jwt: { keys: [{ alg: 'HS256', secret: SECRET }], clockToleranceSeconds: 0 },
  rules: [
    { topic: 'user/{sub}/**', subscribe: 'authenticated', publish: 'none' },
    { topic: 'staff/**', subscribe: { claims: { role: 'staff' } }, publish: { claims: { role: 'staff' } } },
    { topic: 'chat/**', subscribe: 'public', publish: 'authenticated' },
    { topic: '**', subscribe: 'public', publish: 'none' },
  ],
  publishTokens: [{ id: 'deployer', sha256: sha256('deploy-token-0123456789'), topics: ['system/**'] }],
  presence: { topics: ['chat/**'] },
  replay: { size: 5, ttlSeconds: 60 },
  ws: { pingIntervalMs: 200 },
};

async function stats(b: Bext): Promise<Record<string, any>> {
  return (await fetch(`${b.adminUrl}/__bext/hub/stats`)).json() as Promise<Record<string, any>>;
}

const open: { close(): void }[] = [];
function sse(b: Bext, query: string, headers: Record<string, string> = {}): SseClient {
  const c = new SseClient(`${b.url}/__bext/events?${query}`, headers);
  open.push(c);
  return c;
}
function ws(b: Bext, query = '', opts = {}): WsClient {
  const c = new WsClient(`ws://127.0.0.1:${b.port}/__bext/ws${query ? `?${query}` : ''}`, opts);
  open.push(c);
  return c;
}

let b: Bext;
beforeAll(async () => {
  b = await startBext({ plugins: [DIR], config: { plugins: { realtime: baseConfig } } });
});
afterAll(async () => {
  for (const c of open) c.close();
  await b.close();
});

describe('topics and rules', () => {
  it('finds matching patterns through the segment index and prunes what is removed', () => {
    const idx = new PatternIndex<string>();
    const pats = ['app/*/events', 'custom/**', '**', 'a/b', '*/b'];
    for (const p of pats) idx.set(p.split('/'), p);
    const hits = (t: string) => {
      const out: string[] = [];
      idx.match(t.split('/'), (v) => out.push(v));
      return out.sort();
    };
    expect(hits('app/blog/events')).toEqual(['**', 'app/*/events']);
    expect(hits('custom')).toEqual(['**', 'custom/**']);
    expect(hits('custom/x/y')).toEqual(['**', 'custom/**']);
    expect(hits('a/b')).toEqual(['**', '*/b', 'a/b']);
    expect(hits('app/blog/x/events')).toEqual(['**']);
    for (const p of pats) idx.delete(p.split('/'));
    expect(idx.size).toBe(0);
    expect(idx.any(['app', 'blog', 'events'])).toBe(false);
  });

  it('validates topics and patterns', () => {
    for (const bad of ['', 'a//b', 'a/**/b', 'a b', 'ä', 'x'.repeat(257), 'a/*x']) {
      expect(() => parseSubscription(bad), bad).toThrow(expect.objectContaining({ code: 'BEXT_ERR_TOPIC_INVALID' }));
    }
    expect(parseSubscription('app/*/events')).toEqual({ segs: ['app', '*', 'events'], wildcard: true });
    expect(parseSubscription('custom/x.y_z-1')).toEqual({ segs: ['custom', 'x.y_z-1'], wildcard: false });
  });

  it('allows a pattern only when every topic it reaches is allowed, and binds {claim} segments', () => {
    expect(intersects(['user', '*', '**'], ['user', 'x'])).toBe(true);
    expect(intersects(['user', '*', '**'], ['system', '**'])).toBe(false);
    expect(covers(['**'], ['a', '*', '**'])).toBe(true);
    expect(covers(['a', '*'], ['a', '**'])).toBe(false);
    const rules = new Rules(baseConfig.rules as never);
    const alice = { sub: 'alice', claims: { sub: 'alice' }, expiresAt: null };
    const staff = { sub: 's', claims: { sub: 's', role: 'staff' }, expiresAt: null };
    expect(rules.subscribe(['user', 'alice', 'inbox'], alice).ok).toBe(true);
    expect(rules.subscribe(['user', 'bob'], alice).ok).toBe(false);
    expect(rules.subscribe(['user', '*'], alice).ok).toBe(false);
    expect(rules.subscribe(['**'], alice).ok).toBe(false);
    expect(rules.subscribe(['user', 'alice'], null).ok).toBe(false);
    expect(rules.subscribe(['staff', 'x'], alice).ok).toBe(false);
    expect(rules.subscribe(['staff', '**'], staff).ok).toBe(true);
    expect(rules.subscribe(['custom', '**'], null).ok).toBe(true);
    expect(rules.subscribe(['presence', 'user', 'alice'], alice).ok).toBe(true);
    expect(rules.subscribe(['presence', 'user', 'bob'], alice).ok).toBe(false);
    expect(rules.publish(['chat', 'x'], null).ok).toBe(false);
    expect(rules.publish(['chat', 'x'], alice).ok).toBe(true);
    expect(rules.publish(['presence', 'chat', 'x'], staff).ok).toBe(false);
    expect(rules.publish(['custom', 'x'], staff).ok).toBe(false);
  });

  it('parses resume positions in both id forms', () => {
    const subs = [parseSubscription('a/b')].map((p) => ({ key: 'a/b', ...p }));
    expect([...parseSince('7:abc', subs)]).toEqual([['a/b', { offset: 7, epoch: 'abc' }]]);
    expect([...parseSince('a/b=3:x,c/d=4:y,bad=z', subs)]).toEqual([['a/b', { offset: 3, epoch: 'x' }], ['c/d', { offset: 4, epoch: 'y' }]]);
    expect(parseSince('nonsense', subs).size).toBe(0);
  });
});

describe('SSE', () => {
  it('delivers exact and wildcard subscriptions once per connection, with offset:epoch ids', async () => {
    const c = sse(b, 'topic=custom/a&topic=custom/**&topics=app/*/events');
    expect(await c.opened).toBe(200);
    expect(c.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    expect(c.headers['cache-control']).toBe('no-store');
    expect(c.headers['x-accel-buffering']).toBe('no');
    const sub = await c.next((e) => e.event === 'subscribed');
    expect(sub.data.topics).toEqual(['custom/a', 'custom/**', 'app/*/events']);
    expect(await b.publish('custom/a', { n: 1 })).toBe(1);
    expect(await b.publish('app/blog/events', { n: 2 })).toBe(1);
    expect(await b.publish('app/blog/x/events', { n: 3 })).toBe(0);
    expect(await b.publish('custom/deep/x', { n: 4 })).toBe(1);
    await c.until(() => c.messages().length === 3);
    const got = c.messages();
    expect(got.map((m) => [m.topic, (m.data as { n: number }).n])).toEqual([['custom/a', 1], ['app/blog/events', 2], ['custom/deep/x', 4]]);
    expect(got[0]).toMatchObject({ type: 'message', offset: 1, epoch: expect.stringMatching(/^[A-Za-z0-9]+$/) });
    // Several topics: the id carries each topic's position.
    expect(c.lastId).toMatch(/^custom\/a=1:\w+,app\/blog\/events=1:\w+,custom\/deep\/x=1:\w+$/);
    c.close();
  });

  it('resumes from Last-Event-ID or ?since= without loss, and says when history is gone', async () => {
    const first = sse(b, 'topic=custom/r');
    const sub = await first.next((e) => e.event === 'subscribed');
    expect(sub.id).toMatch(/^0:\w+$/);
    for (let i = 1; i <= 3; i++) await b.publish('custom/r', { i });
    await first.until(() => first.messages().length === 3);
    const epoch = first.messages()[0]!.epoch as string;
    expect(first.lastId).toBe(`3:${epoch}`);
    first.close();
    await b.publish('custom/r', { i: 4 });
    await b.publish('custom/r', { i: 5 });

    const resumed = sse(b, 'topic=custom/r', { 'last-event-id': `3:${epoch}` });
    await resumed.until(() => resumed.messages().length === 2);
    await b.publish('custom/r', { i: 6 });
    await resumed.until(() => resumed.messages().length === 3);
    expect(resumed.messages().map((m) => (m.data as { i: number }).i)).toEqual([4, 5, 6]);
    expect(resumed.got.some((e) => e.event === 'missed')).toBe(false);
    resumed.close();

    // The buffer keeps 5 (offsets 2..6): resuming from 0 is fine, from 1 has nothing missing, and older is said.
    for (let i = 7; i <= 9; i++) await b.publish('custom/r', { i });
    const old = sse(b, `topic=custom/r&since=2:${epoch}`);
    await old.until(() => old.messages().length === 5);
    const missed = old.got.find((e) => e.event === 'missed')!;
    expect(missed.data).toMatchObject({ topic: 'custom/r', reason: 'expired', from: 3, to: 4 });
    expect(old.messages().map((m) => m.offset)).toEqual([5, 6, 7, 8, 9]);
    expect(old.got.findIndex((e) => e.event === 'missed')).toBeLessThan(old.got.findIndex((e) => e.event === 'message'));
    old.close();

    const otherEpoch = sse(b, 'topic=custom/r', { 'last-event-id': '3:elsewhere' });
    await otherEpoch.until(() => otherEpoch.messages().length === 5);
    expect(otherEpoch.got.find((e) => e.event === 'missed')!.data).toMatchObject({ reason: 'epoch', position: `9:${epoch}` });
    otherEpoch.close();
  });

  it('resumes every topic of a multi-topic connection from its id', async () => {
    const c = sse(b, 'topic=custom/m1&topic=custom/m2');
    await c.next((e) => e.event === 'subscribed');
    await b.publish('custom/m1', { v: 'a' });
    await c.until(() => c.messages().length === 1);
    const id = c.lastId!;
    expect(id.split(',').sort()).toEqual([expect.stringMatching(/^custom\/m1=1:\w+$/), expect.stringMatching(/^custom\/m2=0:\w+$/)]);
    c.close();
    await b.publish('custom/m2', { v: 'b' });
    await b.publish('custom/m1', { v: 'c' });
    const again = sse(b, 'topic=custom/m1&topic=custom/m2', { 'last-event-id': id });
    await again.until(() => again.messages().length === 2);
    expect(again.messages().map((m) => (m.data as { v: string }).v).sort()).toEqual(['b', 'c']);
    again.close();
  });

  it('refuses invalid topics, missing topics and too many topics, naming the fix', async () => {
    const bad = sse(b, 'topic=a/**/b');
    expect(await bad.opened).toBe(400);
    expect(await bad.error()).toMatchObject({ error: 'invalid_topic' });
    const none = sse(b, '');
    expect(await none.opened).toBe(400);
    expect(await none.error()).toMatchObject({ error: 'no_topic' });
    const many = sse(b, Array.from({ length: 65 }, (_, i) => `topic=t/${i}`).join('&'));
    expect(await many.opened).toBe(400);
    expect(await many.error()).toMatchObject({ error: 'too_many_topics' });
  });

  it('sends heartbeats', async () => {
    const hb = await startBext({ plugins: [DIR], config: { plugins: { realtime: { sse: { heartbeatMs: 50 } } } } });
    try {
      const text = await new Promise<string>((resolve, reject) => {
        const req = http.get(`${hb.url}/__bext/events?topic=x/y`, (res) => {
          let s = '';
          res.setEncoding('utf8');
          res.on('data', (d: string) => {
            s += d;
            if (s.split(':\n\n').length > 3) {
              req.destroy();
              resolve(s);
            }
          });
        });
        req.on('error', reject);
      });
      expect(text.startsWith('retry: 2000\n\n')).toBe(true);
    } finally {
      await hb.close();
    }
  });
});

describe('auth per topic', () => {
  it('checks subscribe rights: public, authenticated, claim-bound and claim-based', async () => {
    const alice = await token({ sub: 'alice' });
    const anon = sse(b, 'topic=user/alice');
    expect(await anon.opened).toBe(401);
    expect(await anon.error()).toMatchObject({ error: 'unauthorized', topic: 'user/alice' });
    const wrong = sse(b, 'topic=user/bob', { authorization: `Bearer ${alice}` });
    expect(await wrong.opened).toBe(403);
    const pattern = sse(b, 'topic=user/*', { authorization: `Bearer ${alice}` });
    expect(await pattern.opened).toBe(403);
    const own = sse(b, `topic=user/alice/inbox&token=${alice}`);
    expect(await own.opened).toBe(200);
    await own.next((e) => e.event === 'subscribed');
    await b.publish('user/alice/inbox', { hi: 1 });
    await own.until(() => own.messages().length === 1);
    own.close();
    expect(await sse(b, 'topic=staff/news', { authorization: `Bearer ${await token({ sub: 's', role: 'staff' })}` }).opened).toBe(200);
    expect(await sse(b, 'topic=staff/news', { authorization: `Bearer ${alice}` }).opened).toBe(403);
  });

  it('refuses tokens that do not verify, with the reason', async () => {
    const forged = `${(await token({ sub: 'x' })).slice(0, -4)}AAAA`;
    const c = sse(b, 'topic=custom/a', { authorization: `Bearer ${forged}` });
    expect(await c.opened).toBe(401);
    expect(await c.error()).toMatchObject({ error: 'invalid_token', error_description: 'the token signature does not verify' });
    const hs512 = sse(b, 'topic=custom/a', { authorization: `Bearer ${await token({ sub: 'x' }, 600, 'HS512')}` });
    expect(await hs512.opened).toBe(401);
    expect(await hs512.error()).toMatchObject({ error_description: 'the token is signed with an algorithm that is not accepted' });
    const expired = sse(b, 'topic=custom/a', { authorization: `Bearer ${await token({ sub: 'x' }, -10)}` });
    expect(await expired.opened).toBe(401);
    expect(await expired.error()).toMatchObject({ error_description: 'the token has expired' });
    await expect(ws(b, `topic=custom/a&token=${forged}`).opened).rejects.toMatchObject({ status: 401 });
  });

  it('closes connections whose token expires while they are open', async () => {
    const short = await token({ sub: 'alice' }, 2);
    const s = sse(b, 'topic=user/alice', { authorization: `Bearer ${short}` });
    const w = ws(b, `topic=user/alice&token=${short}`);
    await s.next((e) => e.event === 'subscribed');
    await w.next((m) => m.type === 'subscribed');
    const bye = await s.next((e) => e.event === 'close');
    expect(bye.data).toEqual({ reason: 'token-expired' });
    await s.closed;
    expect(await w.closed).toEqual({ code: 4001, reason: 'token-expired' });
    expect((await stats(b)).totals.drops['token-expired']).toBeGreaterThanOrEqual(2);
  });

  it('keeps publish rights apart from subscribe rights', async () => {
    const watcher = sse(b, 'topic=chat/lobby&topic=system/deploy');
    await watcher.next((e) => e.event === 'subscribed');
    const anon = ws(b);
    await anon.opened;
    expect(await anon.request({ type: 'publish', topic: 'chat/lobby', data: 1 })).toMatchObject({ type: 'error', code: 'forbidden' });
    const alice = ws(b, `token=${await token({ sub: 'alice' })}`);
    await alice.opened;
    expect(await alice.request({ type: 'publish', topic: 'chat/lobby', data: { from: 'alice' } })).toMatchObject({ type: 'published', delivered: 1 });
    expect(await alice.request({ type: 'publish', topic: 'system/deploy', data: 1 })).toMatchObject({ type: 'error', code: 'forbidden' });

    const post = (url: string, body: unknown, auth?: string) =>
      fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...(auth ? { authorization: auth } : {}) }, body: JSON.stringify(body) });
    const deploy = await post(`${b.url}/__bext/publish`, { topic: 'system/deploy', data: { v: 2 } }, 'Bearer deploy-token-0123456789');
    expect(deploy.status).toBe(200);
    expect(await deploy.json()).toEqual({ topic: 'system/deploy', delivered: 1 });
    expect((await post(`${b.url}/__bext/publish`, { topic: 'custom/x', data: 1 }, 'Bearer deploy-token-0123456789')).status).toBe(403);
    expect((await post(`${b.url}/__bext/publish`, { topic: 'chat/lobby', data: 1 })).status).toBe(401);
    expect((await post(`${b.url}/__bext/publish`, { topic: 'chat/lobby', data: { from: 'http' } }, `Bearer ${await token({ sub: 'bob' })}`)).status).toBe(200);
    expect((await post(`${b.url}/__bext/hub/publish`, { topic: 'custom/x', data: 1 })).status).toBe(403);
    const admin = await post(`${b.adminUrl}/__bext/hub/publish`, { topic: 'system/deploy', data: { v: 3 } });
    expect(await admin.json()).toEqual({ topic: 'system/deploy', delivered: 1 });
    expect((await post(`${b.adminUrl}/__bext/hub/publish`, { topic: 'bad topic', data: 1 })).status).toBe(400);
    await watcher.until(() => watcher.messages().length === 4);
    expect(watcher.messages().map((m) => m.data)).toEqual([{ from: 'alice' }, { v: 2 }, { from: 'http' }, { v: 3 }]);
  });
});

describe('publishing through the onPublish chain', () => {
  it('delivers what a sandboxed plugin publishes, after other plugins filter and transform it', async () => {
    const guest = mkdtempSync(join(tmp(), 'rt-guest-'));
    writeFileSync(join(guest, 'bext-plugin.json'), JSON.stringify({
      name: 'rt-guest', version: '1.0.0', sandbox: 'quickjs', entry: 'plugin.js',
      hooks: { onRequest: { match: { paths: ['/emit/*'] } } }, needs: ['path'], capabilities: ['publish:custom/*'],
    }));
    writeFileSync(join(guest, 'plugin.js'), `
export async function onRequest(req) {
  const kind = req.path.split('/')[2];
  const delivered = await bext_publish('custom/guest', { kind, secret: kind === 'secret' });
  return { action: 'respond', status: 200, body: String(delivered) };
}`);
    const filter = plugin('rt-filter', { hooks: { onPublish: { priority: 10 } } }, `
export default () => ({
  onPublish(msg) {
    if (msg.data && msg.data.secret) return { action: 'drop', reason: 'secret' };
    return { action: 'transform', data: { ...msg.data, by: msg.publisher, filtered: true } };
  },
});`);
    const g = await startBext({ plugins: [{ dir: guest }, filter, DIR] });
    try {
      const c = sse(g, 'topic=custom/guest');
      await c.next((e) => e.event === 'subscribed');
      expect(await (await fetch(`${g.url}/emit/secret`)).text()).toBe('0');
      expect(await (await fetch(`${g.url}/emit/plain`)).text()).toBe('1');
      await c.until(() => c.messages().length === 1);
      expect(c.messages()[0]!.data).toEqual({ kind: 'plain', secret: false, by: 'rt-guest', filtered: true });
      c.close();
    } finally {
      await g.close();
    }
  });
});

describe('WebSocket', () => {
  it('subscribes, resumes, unsubscribes and publishes over the socket', async () => {
    const c = ws(b, 'topic=custom/w1');
    const first = await c.next((m) => m.type === 'subscribed');
    expect(first.positions).toEqual({ 'custom/w1': expect.stringMatching(/^0:\w+$/) });
    await b.publish('custom/w1', 'one');
    await b.publish('custom/w1', 'two');
    await c.until(() => c.messages().length === 2);
    const [m1] = c.messages();
    expect(m1).toMatchObject({ type: 'message', topic: 'custom/w1', offset: 1, data: 'one' });

    const later = ws(b);
    await later.opened;
    const sub = await later.request({ type: 'subscribe', topics: ['custom/w1', 'custom/w/*'], since: { 'custom/w1': `1:${m1!.epoch}` } });
    expect(sub).toMatchObject({ type: 'subscribed', topics: ['custom/w1', 'custom/w/*'] });
    await later.until(() => later.messages().length === 1);
    expect(later.messages()[0]).toMatchObject({ offset: 2, data: 'two' });
    await b.publish('custom/w/x', 'wild');
    await later.until(() => later.messages().length === 2);
    expect(await later.request({ type: 'unsubscribe', topics: ['custom/w1'] })).toMatchObject({ type: 'unsubscribed' });
    expect(await b.publish('custom/w1', 'three')).toBe(1);
    expect(await later.request({ type: 'ping' })).toMatchObject({ type: 'pong' });
    expect(later.messages().map((m) => m.data)).toEqual(['two', 'wild']);
    expect(await later.request({ type: 'subscribe', topics: ['a/**/b'] })).toMatchObject({ type: 'error', code: 'invalid_topic' });
    expect(await later.request({ type: 'nope' })).toMatchObject({ type: 'error', code: 'bad_request' });
    later.ws.send('not json');
    expect(await later.next((m) => m.type === 'error' && m.code === 'bad_request' && m.id === undefined)).toBeTruthy();
  });

  it('refreshes a token over the socket, keeping the subject', async () => {
    const c = ws(b, `token=${await token({ sub: 'alice' }, 600)}`);
    await c.opened;
    expect(await c.request({ type: 'subscribe', topics: ['user/alice'] })).toMatchObject({ type: 'subscribed' });
    expect(await c.request({ type: 'auth', token: await token({ sub: 'bob' }) })).toMatchObject({ type: 'error', code: 'invalid_token' });
    const fresh = await c.request({ type: 'auth', token: await token({ sub: 'alice' }, 3600) });
    expect(fresh).toMatchObject({ type: 'authenticated', sub: 'alice' });
  });

  it('drops a client that does not answer pings', async () => {
    const before = (await stats(b)).totals.drops['pong-timeout'] ?? 0;
    const mute = ws(b, 'topic=custom/p', { autoPong: false });
    await mute.next((m) => m.type === 'subscribed');
    const polite = ws(b, 'topic=custom/p');
    await polite.next((m) => m.type === 'subscribed');
    await mute.closed;
    expect((await stats(b)).totals.drops['pong-timeout']).toBe(before + 1);
    expect(polite.ws.readyState).toBe(1);
    polite.close();
  });
});

describe('presence', () => {
  it('tracks who follows a topic, with join and leave events', async () => {
    const watch = sse(b, 'topic=presence/chat/room');
    await watch.next((e) => e.event === 'subscribed');
    const alice = ws(b, `topic=chat/room&token=${await token({ sub: 'alice' })}`);
    await alice.next((m) => m.type === 'subscribed');
    const anon = sse(b, 'topic=chat/room');
    await anon.next((e) => e.event === 'subscribed');
    await watch.until(() => watch.messages().length === 2);
    expect(watch.messages().map((m) => (m.data as { type: string; user: string | null }).user)).toEqual(['alice', null]);
    const list = (await (await fetch(`${b.url}/__bext/presence?topic=chat/room`)).json()) as { count: number; clients: { user: string | null }[] };
    expect(list.count).toBe(2);
    expect(list.clients.map((m) => m.user).sort()).toEqual(['alice', null]);
    expect(await alice.request({ type: 'presence', topic: 'chat/room' })).toMatchObject({ type: 'presence', clients: expect.arrayContaining([expect.objectContaining({ user: 'alice' })]) });
    alice.close();
    await watch.until(() => watch.messages().length === 3);
    expect(watch.messages()[2]!.data).toMatchObject({ type: 'leave', topic: 'chat/room', user: 'alice' });
    expect((await fetch(`${b.url}/__bext/presence?topic=custom/none`)).status).toBe(404);
    expect((await fetch(`${b.url}/__bext/presence?topic=user/bob`)).status).toBe(401);
  });
});

describe('liveness and cleanup', () => {
  it('drops a slow SSE consumer with a reason once its buffer passes the bound', async () => {
    const s = await startBext({ plugins: [DIR], config: { plugins: { realtime: { maxBufferBytes: 65536 } } } });
    try {
      const sock = net.connect(s.port, '127.0.0.1');
      await new Promise((r) => sock.once('connect', r));
      sock.write('GET /__bext/events?topic=custom/slow HTTP/1.1\r\nhost: x\r\n\r\n');
      await new Promise((r) => sock.once('data', r));
      // Stop reading: the kernel socket buffers fill, then the hub's bound trips.
      sock.pause();
      const closed = new Promise((r) => sock.once('close', r));
      const big = 'x'.repeat(60_000);
      const fast = new SseClient(`${s.url}/__bext/events?topic=custom/slow`);
      await fast.next((e) => e.event === 'subscribed');
      let n = 0;
      while (((await stats(s)).totals.drops['slow-consumer'] ?? 0) === 0 && n < 2000) await s.publish('custom/slow', { n: n++, big });
      expect((await stats(s)).totals.drops['slow-consumer']).toBe(1);
      sock.destroy();
      await closed;
      await fast.until(() => fast.messages().length === n);
      fast.close();

      const paused = new WsClient(`ws://127.0.0.1:${s.port}/__bext/ws?topic=custom/slow-ws`);
      await paused.next((m) => m.type === 'subscribed');
      paused.ws.pause();
      for (let i = 0; ((await stats(s)).totals.drops['slow-consumer'] ?? 0) === 1 && i < 2000; i++) await s.publish('custom/slow-ws', { i, big });
      expect((await stats(s)).totals.drops['slow-consumer']).toBe(2);
      // Reading again, the client finds the connection cut.
      paused.ws.resume();
      await paused.closed;
    } finally {
      await s.close();
    }
  });

  it('churns 1,000 topics without growing memory: topics, patterns and relay state are freed', async () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const s = await startBext({ plugins: [DIR], config: { plugins: { realtime: { maxTopicsPerConnection: 1000, replay: { ttlSeconds: 0.05 } } } } });
    try {
      const heap: number[] = [];
      for (let round = 0; round < 4; round++) {
        const c = new WsClient(`ws://127.0.0.1:${s.port}/__bext/ws`);
        await c.opened;
        const topics = Array.from({ length: 1000 }, (_, i) => `churn/r${round}/t${i}`);
        expect(await c.request({ type: 'subscribe', topics: [...topics.slice(0, 999), `churn/r${round}/**`] })).toMatchObject({ type: 'subscribed' });
        for (const t of topics) await s.publish(t, { t });
        await c.until(() => c.messages().length === 1000);
        expect(await c.request({ type: 'unsubscribe', topics: topics.slice(0, 500) })).toMatchObject({ type: 'unsubscribed' });
        c.close();
        await until(async () => {
          const st = await stats(s);
          return st.topics === 0 && st.patterns === 0 && st.connections.total === 0;
        }, 10_000, 'topics to be freed');
        gc();
        heap.push(process.memoryUsage().heapUsed);
      }
      // Rounds 2..4 settle at the level of round 1 (the first round warms code and caches).
      expect(heap[3]! - heap[1]!).toBeLessThan(2 * 1024 * 1024);
    } finally {
      await s.close();
    }
  });

  it('reports connections, topics, rates and drops, and ends streams on shutdown', async () => {
    const s = await startBext({ plugins: [DIR] });
    const c = new SseClient(`${s.url}/__bext/events?topic=custom/s`);
    await c.next((e) => e.event === 'subscribed');
    await s.publish('custom/s', 1);
    const st = await stats(s);
    expect(st).toMatchObject({ connections: { total: 1, sse: 1, ws: 0 }, subscriptions: 1, topics: 1, totals: { published: 1, delivered: 1 }, relay: { configured: false } });
    expect(st.rates).toHaveProperty('deliveredPerSecond');
    await until(async () => /bext_plugin_realtime_connections\{transport="sse"\} 1/.test(await s.kernel.metrics.text()), 5000, 'the connection gauge');
    expect(await s.kernel.metrics.text()).toMatch(/bext_plugin_realtime_deliveries_total 1/);
    await s.close();
    const bye = await c.next((e) => e.event === 'close');
    expect(bye.data).toEqual({ reason: 'shutdown' });
  });
});
