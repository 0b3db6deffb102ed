/**
 * realtime: the pub/sub hub. Clients follow topics over SSE
 * (`/__bext/events`) or WebSocket (`/__bext/ws`); any plugin publishes with
 * `bext_publish`, and the kernel's onPublish chain ends here, where the hub
 * delivers to local subscribers and, with Redis, to every other instance.
 */
import { createHash } from 'node:crypto';
import { Readable, type Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import {
  BextError, definePlugin, isBextError, topicMatches,
  type HostApi, type ResponseData, type TrustedRequest,
} from '../../plugin-api/index.js';
import { Rules, type Principal, type RuleConfig } from './access.js';
import { Conn, Hub, formatPosition, newEpoch, parsePosition, type Entry, type Position, type Subscription } from './hub.js';
import { createVerifier, InvalidToken, type JwtConfig, type Verifier } from './jwt.js';
import { RedisRelay } from './relay.js';
import { isTopic, parseSubscription } from './topics.js';

/** This plugin's section of bext.config.json, with defaults applied. */
export interface RealtimeConfig {
  redisUrl?: string;
  prefix: string;
  redisTimeoutMs: number;
  replay: { size: number; ttlSeconds: number; offsetTtlSeconds: number };
  sse: { heartbeatMs: number; retryMs: number };
  ws: { pingIntervalMs: number; maxMessageBytes: number };
  maxBufferBytes: number;
  maxTopicsPerConnection: number;
  jwt?: JwtConfig;
  rules: RuleConfig[];
  publishTokens: { id: string; sha256: string; topics: string[] }[];
  presence: { topics: string[] };
}

/** Most topics an SSE id carries positions for; older ones fall out. */
const MAX_ID_TOPICS = 64;
const HEARTBEAT = Buffer.from(':\n\n');
const kConn = Symbol('realtime.conn');
const noop = () => undefined;
const TEXT = { binary: false } as const;
const JSON_HEADERS = { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' };
const CLOSE_CODES: Record<string, number> = { shutdown: 1001, 'token-expired': 4001, 'pong-timeout': 4002, forbidden: 4003, 'slow-consumer': 4008 };

function json(status: number, body: unknown, headers: Record<string, string> = {}): ResponseData {
  return { status, headers: { ...JSON_HEADERS, ...headers }, body: JSON.stringify(body) };
}

function cookieValue(header: string | string[] | undefined, name: string): string | null {
  if (typeof header !== 'string') return null;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq !== -1 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim() || null;
  }
  return null;
}

function bearer(h: string | string[] | undefined): string | null {
  if (typeof h === 'string' && h.length > 7 && h.slice(0, 7).toLowerCase() === 'bearer ') return h.slice(7).trim();
  return null;
}

/**
 * Parses a resume position: `offset:epoch` for a connection that follows one
 * topic, or `topic=offset:epoch,…` for several.
 */
export function parseSince(raw: string | null | undefined, subs: readonly Subscription[]): Map<string, Position> {
  const out = new Map<string, Position>();
  if (!raw || raw.length > 16_384) return out;
  if (!raw.includes('=')) {
    const exact = subs.filter((s) => !s.wildcard);
    const p = parsePosition(raw);
    if (p && exact.length === 1) out.set(exact[0]!.key, p);
    return out;
  }
  for (const part of raw.split(',')) {
    const eq = part.indexOf('=');
    const topic = part.slice(0, eq);
    const p = parsePosition(part.slice(eq + 1));
    if (eq > 0 && p && isTopic(topic)) out.set(topic, p);
  }
  return out;
}

/** An EventSource client: frames are pushed into the response body stream. */
class SseConn extends Conn {
  readonly transport = 'sse';
  constructor(
    principal: Principal | null,
    readonly stream: Readable,
    readonly socket: Duplex,
    /** Per-topic positions for the id, when the connection follows more than one exact topic. */
    readonly pos: Map<string, string> | null,
  ) {
    super(principal);
  }
  write(e: Entry): void {
    if (this.pos === null) {
      this.stream.push(e.sseFrame);
      return;
    }
    this.pos.delete(e.topic);
    this.pos.set(e.topic, `${e.offset}:${e.epoch}`);
    if (this.pos.size > MAX_ID_TOPICS) this.pos.delete(this.pos.keys().next().value!);
    this.stream.push(Buffer.concat([Buffer.from(`id: ${this.idVector()}\n`), e.sseData]));
  }
  /** The id of a multi-topic connection: `topic=offset:epoch,…`. */
  idVector(): string {
    let s = '';
    for (const [t, p] of this.pos!) s += s ? `,${t}=${p}` : `${t}=${p}`;
    return s;
  }
  notice(kind: string, body: Record<string, unknown>, id?: string): void {
    this.stream.push(`event: ${kind}\n${id !== undefined ? `id: ${id}\n` : ''}data: ${JSON.stringify(body)}\n\n`);
  }
  buffered(): number {
    return this.stream.readableLength + this.socket.writableLength;
  }
  close(reason: string, hard: boolean): void {
    if (hard) {
      this.socket.destroy();
      return;
    }
    this.notice('close', { reason });
    this.stream.push(null);
  }
}

/** A WebSocket client; it may also subscribe, publish and refresh its token over the socket. */
class WsConn extends Conn {
  readonly transport = 'ws';
  awaitingPong = false;
  constructor(principal: Principal | null, readonly ws: WebSocket) {
    super(principal);
  }
  write(e: Entry): void {
    this.ws.send(e.wsFrame, TEXT);
  }
  notice(kind: string, body: Record<string, unknown>): void {
    if (this.ws.readyState === 1) this.ws.send(JSON.stringify({ type: kind, ...body }));
  }
  buffered(): number {
    return this.ws.bufferedAmount;
  }
  close(reason: string, hard: boolean): void {
    if (hard && reason === 'pong-timeout') {
      this.ws.terminate();
      return;
    }
    // The close frame queues behind what is buffered; a client that does not read it in a second is cut off.
    this.ws.close(CLOSE_CODES[reason] ?? 1000, reason);
    setTimeout(() => this.ws.terminate(), hard ? 1000 : 5000).unref();
  }
}

export default definePlugin(async (host: HostApi) => {
  const cfg = host.config<RealtimeConfig>();
  const kernel = host.kernel;
  if (!kernel) throw new BextError('BEXT_ERR_PLUGIN_LOAD', 'plugin "realtime" must run in the trusted sandbox (it streams responses and upgrades sockets)');
  const log = (level: 'debug' | 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => host.log(level, msg, fields);
  const verify: Verifier | null = cfg.jwt ? await createVerifier(cfg.jwt, kernel.siteDir) : null;
  const rules = new Rules(cfg.rules);
  const tokens = new Map(cfg.publishTokens.map((t) => [t.sha256, t]));
  const presenceGlobs = cfg.presence.topics;
  const instance = newEpoch();
  const started = Date.now();

  const hub = new Hub({
    replaySize: cfg.replay.size,
    replayTtlMs: cfg.replay.ttlSeconds * 1000,
    maxBufferBytes: cfg.maxBufferBytes,
    presence: (t) => presenceGlobs.length > 0 && !t.startsWith('presence/') && presenceGlobs.some((g) => topicMatches(g, t)),
    announce: (topic, body) => {
      host.publish(topic, body).catch((e: Error) => log('warn', 'realtime presence event not published', { topic, error: e.message }));
    },
    log,
  });

  let relay: RedisRelay | null = null;
  if (cfg.redisUrl) {
    relay = new RedisRelay({
      url: cfg.redisUrl,
      prefix: cfg.prefix,
      replaySize: cfg.replay.size,
      replayTtlMs: cfg.replay.ttlSeconds * 1000,
      metaTtlMs: cfg.replay.offsetTtlSeconds * 1000,
      timeoutMs: cfg.redisTimeoutMs,
      instance,
      log,
      onEntry: (e) => hub.deliver(e),
      onRecovered: () => {
        void hub.resync();
        for (const [topic, m] of hub.localMembers()) relay!.join(topic, m).catch(() => undefined);
      },
      onState: (down) => kernel.setDegraded(down ? `${down}; delivering to local subscribers only` : null),
    });
    hub.relay = relay;
    if (!(await relay.connected(Math.max(2000, cfg.redisTimeoutMs * 2)))) {
      kernel.setDegraded(`redis at ${cfg.redisUrl} is unreachable; delivering to local subscribers only`);
    }
  }

  // ---------------------------------------------------------------- identity

  /** The client's principal: null when anonymous; InvalidToken when it presented a token that does not verify. */
  const principalOf = async (req: TrustedRequest, q: URLSearchParams): Promise<Principal | null | InvalidToken> => {
    const token = bearer(req.headers.authorization)
      ?? (cfg.jwt?.cookie ? cookieValue(req.headers.cookie, cfg.jwt.cookie) : null)
      ?? q.get(cfg.jwt?.queryParam ?? 'token');
    if (token) {
      if (!verify) return new InvalidToken('this hub is not configured to accept tokens (plugins.realtime.jwt)');
      try {
        return await verify(token);
      } catch (e) {
        if (e instanceof InvalidToken) return e;
        throw e;
      }
    }
    // The admin listener (or the admin token) speaks for the operator: the
    // dashboard and other admin pages follow system/* topics this way.
    if (req.isAdmin) return { sub: 'admin', claims: { role: 'admin' }, expiresAt: null };
    // A principal that an earlier onRequest plugin (auth) verified.
    const a = req.ctx.auth as { subject?: unknown; claims?: Record<string, unknown> | null } | undefined;
    if (a && a.claims) {
      const exp = a.claims.exp;
      return { sub: typeof a.subject === 'string' ? a.subject : null, claims: a.claims, expiresAt: typeof exp === 'number' ? exp * 1000 : null };
    }
    return null;
  };

  const unauthorized = (description: string): ResponseData =>
    json(401, { error: 'invalid_token', error_description: description }, { 'www-authenticate': `Bearer realm="bext", error="invalid_token"` });

  const forbidden = (p: Principal | null, topic: string, reason: string): ResponseData =>
    p === null
      ? json(401, { error: 'unauthorized', topic, error_description: reason }, { 'www-authenticate': 'Bearer realm="bext"' })
      : json(403, { error: 'forbidden', topic, error_description: reason });

  /** Validates and authorizes the topics a client asks for; a response when one is refused. */
  const subscriptions = (topics: unknown[], p: Principal | null, already = 0): Subscription[] | ResponseData => {
    if (topics.length === 0) return json(400, { error: 'no_topic', error_description: 'name at least one topic: ?topic=a/b (repeatable) or ?topics=a/b,c/*' });
    if (topics.length + already > cfg.maxTopicsPerConnection) {
      return json(400, { error: 'too_many_topics', error_description: `at most ${cfg.maxTopicsPerConnection} topics per connection (maxTopicsPerConnection)` });
    }
    const out: Subscription[] = [];
    for (const t of topics) {
      let parsed;
      try {
        parsed = parseSubscription(t);
      } catch (e) {
        return json(400, { error: 'invalid_topic', topic: t, error_description: (e as BextError).message, hint: (e as BextError).hint });
      }
      const v = rules.subscribe(parsed.segs, p);
      if (!v.ok) return forbidden(p, t as string, v.reason);
      out.push({ key: t as string, ...parsed });
    }
    return out;
  };

  const topicsOf = (q: URLSearchParams): string[] => {
    const list = q.getAll('topic');
    for (const t of q.getAll('topics')) list.push(...t.split(',').filter(Boolean));
    return [...new Set(list)];
  };

  const positionsBody = (positions: Map<string, Position | null>): Record<string, string> => {
    const o: Record<string, string> = {};
    for (const [t, p] of positions) o[t] = formatPosition(p);
    return o;
  };

  // --------------------------------------------------------------------- SSE

  const sse = async (req: TrustedRequest): Promise<ResponseData> => {
    const q = new URLSearchParams(req.query);
    const p = await principalOf(req, q);
    if (p instanceof InvalidToken) return unauthorized(p.message);
    const subs = subscriptions(topicsOf(q), p);
    if (!Array.isArray(subs)) return subs;
    const lastId = req.headers['last-event-id'];
    const since = parseSince(typeof lastId === 'string' && lastId ? lastId : q.get('since'), subs);
    const single = subs.length === 1 && !subs[0]!.wildcard;
    const stream = new Readable({ read: noop });
    const conn = new SseConn(p, stream, req.raw.socket, single ? null : new Map());
    (stream as Readable & { [kConn]?: Conn })[kConn] = conn;
    stream.on('close', onStreamClose);
    stream.push(`retry: ${cfg.sse.retryMs}\n\n`);
    await hub.attach(conn, subs, since, (positions) => {
      if (conn.pos) for (const [t, pos] of positions) conn.pos.set(t, formatPosition(pos));
      const id = conn.pos ? conn.idVector() : formatPosition(positions.get(subs[0]!.key) ?? null);
      conn.notice('subscribed', { client: conn.id, topics: subs.map((s) => s.key), positions: positionsBody(positions) }, id);
    });
    return {
      status: 200,
      headers: { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no' },
      body: stream,
    };
  };

  // --------------------------------------------------------------- WebSocket

  const wss = new WebSocketServer({ noServer: true, maxPayload: cfg.ws.maxMessageBytes, perMessageDeflate: false, clientTracking: false });

  const wsMessage = async (conn: WsConn, raw: Buffer): Promise<void> => {
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(raw.toString('utf8')) as Record<string, unknown>;
      if (m === null || typeof m !== 'object' || Array.isArray(m)) throw new Error('not an object');
    } catch {
      return conn.notice('error', { code: 'bad_request', message: 'send JSON objects: {"type":"subscribe","topics":["a/b"]}' });
    }
    const id = m.id;
    const fail = (code: string, message: string, extra: Record<string, unknown> = {}) => conn.notice('error', { id, code, message, ...extra });
    switch (m.type) {
      case 'subscribe': {
        const topics = [...new Set(Array.isArray(m.topics) ? m.topics : typeof m.topic === 'string' ? [m.topic] : [])];
        const fresh = topics.filter((t) => !conn.subs.has(t as string));
        if (topics.length > 0 && fresh.length === 0) return conn.notice('subscribed', { id, topics, positions: {} });
        const subs = subscriptions(fresh, conn.principal, conn.subs.size);
        if (!Array.isArray(subs)) {
          const body = JSON.parse(subs.body as string) as { error: string; error_description: string; topic?: string };
          return fail(body.error, body.error_description, body.topic ? { topic: body.topic } : {});
        }
        const since = new Map<string, Position>();
        if (typeof m.since === 'string') for (const [t, p] of parseSince(m.since, subs)) since.set(t, p);
        else if (m.since && typeof m.since === 'object') {
          for (const [t, s] of Object.entries(m.since as Record<string, unknown>)) {
            const p = typeof s === 'string' ? parsePosition(s) : null;
            if (p && isTopic(t)) since.set(t, p);
          }
        }
        await hub.attach(conn, subs, since, (positions) => conn.notice('subscribed', { id, topics: topics, positions: positionsBody(positions) }));
        return;
      }
      case 'unsubscribe': {
        const topics = (Array.isArray(m.topics) ? m.topics : [m.topic]).filter((t): t is string => typeof t === 'string');
        for (const t of topics) hub.unsubscribe(conn, t);
        return conn.notice('unsubscribed', { id, topics });
      }
      case 'publish': {
        if (!isTopic(m.topic)) return fail('invalid_topic', 'publish to a topic of [a-z0-9_.-] segments separated by "/"');
        const v = rules.publish(m.topic.split('/'), conn.principal);
        if (!v.ok) return fail('forbidden', v.reason, { topic: m.topic });
        const delivered = await host.publish(m.topic, m.data ?? null);
        return conn.notice('published', { id, topic: m.topic, delivered });
      }
      case 'auth': {
        if (!verify || typeof m.token !== 'string') return fail('invalid_token', verify ? 'give the new token as "token"' : 'this hub does not accept tokens');
        let p: Principal;
        try {
          p = await verify(m.token);
        } catch (e) {
          if (e instanceof InvalidToken) return fail('invalid_token', e.message);
          throw e;
        }
        if (conn.principal && conn.principal.sub !== p.sub) return fail('invalid_token', 'a refreshed token must name the same subject');
        conn.principal = p;
        // Rights may have narrowed with the new claims.
        const lost: string[] = [];
        for (const key of [...conn.subs.keys()]) {
          if (!rules.subscribe(key.split('/'), p).ok) {
            hub.unsubscribe(conn, key);
            lost.push(key);
          }
        }
        if (lost.length) conn.notice('unsubscribed', { topics: lost, reason: 'the new token does not allow these topics' });
        return conn.notice('authenticated', { id, sub: p.sub, expiresAt: p.expiresAt });
      }
      case 'presence': {
        if (!isTopic(m.topic)) return fail('invalid_topic', 'ask for the presence of one topic');
        const v = rules.subscribe(m.topic.split('/'), conn.principal);
        if (!v.ok) return fail('forbidden', v.reason, { topic: m.topic });
        return conn.notice('presence', { id, topic: m.topic, clients: await hub.members(m.topic) });
      }
      case 'ping':
        return conn.notice('pong', { id });
      default:
        return fail('bad_request', 'type must be one of subscribe, unsubscribe, publish, auth, presence, ping');
    }
  };

  // Shared handlers that find their connection on the emitter: ten thousand idle sockets should not each carry closures.
  function onStreamClose(this: Readable & { [kConn]?: Conn }): void {
    if (this[kConn]) hub.detach(this[kConn]);
  }
  function onSocketGone(this: WebSocket & { [kConn]?: WsConn }): void {
    if (this[kConn]) hub.detach(this[kConn]);
  }
  function onPong(this: WebSocket & { [kConn]?: WsConn }): void {
    if (this[kConn]) this[kConn].awaitingPong = false;
  }
  function onWsMessage(this: WebSocket & { [kConn]?: WsConn }, data: Buffer): void {
    const conn = this[kConn];
    if (!conn) return;
    wsMessage(conn, data).catch((e: unknown) => {
      log('error', 'realtime websocket message failed', { error: (e as Error).message });
      conn.notice('error', { code: isBextError(e) ? e.code : 'internal', message: (e as Error).message });
    });
  }

  const ws = async (req: TrustedRequest): Promise<ResponseData | { action: 'upgrade'; upgrade: (raw: TrustedRequest['raw'], socket: Duplex, head: Buffer) => void }> => {
    if (String(req.headers.upgrade ?? '').toLowerCase() !== 'websocket') {
      return json(426, { error: 'upgrade_required', error_description: 'connect with a WebSocket client' }, { upgrade: 'websocket' });
    }
    const q = new URLSearchParams(req.query);
    const p = await principalOf(req, q);
    if (p instanceof InvalidToken) return unauthorized(p.message);
    const initial = topicsOf(q);
    const subs = initial.length ? subscriptions(initial, p) : [];
    if (!Array.isArray(subs)) return subs;
    const since = parseSince(q.get('since'), subs);
    return {
      action: 'upgrade',
      upgrade(raw, socket, head) {
        wss.handleUpgrade(raw, socket, head, (sock) => {
          const conn = new WsConn(p, sock);
          hub.conns.add(conn);
          (sock as WebSocket & { [kConn]?: WsConn })[kConn] = conn;
          sock.on('close', onSocketGone);
          sock.on('error', onSocketGone);
          sock.on('pong', onPong);
          sock.on('message', onWsMessage);
          if (subs.length) {
            void hub.attach(conn, subs, since, (positions) => conn.notice('subscribed', { topics: subs.map((s) => s.key), positions: positionsBody(positions) }));
          }
        });
      },
    };
  };

  // ------------------------------------------------------------- publishing

  const readJson = async (req: TrustedRequest): Promise<{ topic: string; data: unknown } | ResponseData> => {
    let body: unknown;
    try {
      body = JSON.parse((await req.readBody()).toString('utf8'));
    } catch (e) {
      if (isBextError(e)) return json(e.status, e.toJSON());
      return json(400, { error: 'bad_request', error_description: 'send a JSON body {"topic": "a/b", "data": …}' });
    }
    const b = body as { topic?: unknown; data?: unknown };
    if (!b || typeof b !== 'object' || !isTopic(b.topic)) {
      return json(400, { error: 'invalid_topic', error_description: 'give "topic": segments of [a-z0-9_.-] separated by "/"' });
    }
    return { topic: b.topic, data: b.data ?? null };
  };

  const publishAs = async (topic: string, data: unknown): Promise<ResponseData> => {
    try {
      const delivered = await host.publish(topic, data);
      return json(200, { topic, delivered });
    } catch (e) {
      if (isBextError(e)) return json(e.status, e.toJSON());
      throw e;
    }
  };

  /** POST /__bext/publish: a publish token from the config, or a JWT whose claims the rules allow. */
  const clientPublish = async (req: TrustedRequest): Promise<ResponseData> => {
    const msg = await readJson(req);
    if ('status' in msg) return msg;
    const presented = bearer(req.headers.authorization);
    if (presented) {
      const t = tokens.get(createHash('sha256').update(presented).digest('hex'));
      if (t) {
        if (msg.topic.startsWith('presence/') || !t.topics.some((g) => topicMatches(g, msg.topic))) {
          return json(403, { error: 'forbidden', topic: msg.topic, error_description: `publish token "${t.id}" does not cover this topic` });
        }
        return publishAs(msg.topic, msg.data);
      }
    }
    const p = await principalOf(req, new URLSearchParams(req.query));
    if (p instanceof InvalidToken) return unauthorized(p.message);
    const v = rules.publish(msg.topic.split('/'), p);
    if (!v.ok) return forbidden(p, msg.topic, v.reason);
    return publishAs(msg.topic, msg.data);
  };

  const presence = async (req: TrustedRequest): Promise<ResponseData> => {
    const q = new URLSearchParams(req.query);
    const topic = q.get('topic');
    if (!isTopic(topic)) return json(400, { error: 'invalid_topic', error_description: 'give ?topic=a/b' });
    const p = await principalOf(req, q);
    if (p instanceof InvalidToken) return unauthorized(p.message);
    const v = rules.subscribe(topic.split('/'), p);
    if (!v.ok) return forbidden(p, topic, v.reason);
    if (!presenceGlobs.some((g) => topicMatches(g, topic))) {
      return json(404, { error: 'no_presence', topic, error_description: 'presence is not tracked for this topic (plugins.realtime.presence.topics)' });
    }
    const clients = await hub.members(topic);
    return json(200, { topic, count: clients.length, clients });
  };

  // ------------------------------------------------------------------ stats

  const window: { at: number; published: number; delivered: number }[] = [];
  const rates = () => {
    const a = window[0];
    const b = window[window.length - 1];
    if (!a || !b || b.at === a.at) return { publishedPerSecond: 0, deliveredPerSecond: 0 };
    const s = (b.at - a.at) / 1000;
    return { publishedPerSecond: +((b.published - a.published) / s).toFixed(2), deliveredPerSecond: +((b.delivered - a.delivered) / s).toFixed(2) };
  };

  const stats = (): ResponseData => {
    let sse = 0;
    let wsn = 0;
    let subscriptions = 0;
    for (const c of hub.conns) {
      if (c.transport === 'sse') sse++;
      else wsn++;
      subscriptions += c.subs.size;
    }
    const mem = process.memoryUsage();
    return json(200, {
      instance,
      uptimeSeconds: Math.round((Date.now() - started) / 1000),
      connections: { total: sse + wsn, sse, ws: wsn },
      subscriptions,
      topics: hub.topics.size,
      patterns: hub.patterns.size,
      rates: rates(),
      totals: { ...hub.counters, drops: { ...hub.counters.drops } },
      relay: relay ? { configured: true, up: relay.up && relay.down === null, down: relay.down, channels: relay.channels } : { configured: false },
      memory: { rssBytes: mem.rss, heapUsedBytes: mem.heapUsed },
    });
  };

  // ------------------------------------------------------------ housekeeping

  let metricsOn = true;
  const reported = { published: 0, delivered: 0, missed: 0, drops: {} as Record<string, number> };
  const flushMetrics = () => {
    if (!metricsOn) return;
    try {
      let sse = 0;
      for (const c of hub.conns) if (c.transport === 'sse') sse++;
      host.metric('connections', sse, { transport: 'sse' }, 'gauge');
      host.metric('connections', hub.conns.size - sse, { transport: 'ws' }, 'gauge');
      host.metric('topics', hub.topics.size, {}, 'gauge');
      const c = hub.counters;
      host.metric('published_total', c.published - reported.published);
      host.metric('deliveries_total', c.delivered - reported.delivered);
      host.metric('missed_total', c.missed - reported.missed);
      for (const [reason, n] of Object.entries(c.drops)) {
        host.metric('drops_total', n - (reported.drops[reason] ?? 0), { reason });
        reported.drops[reason] = n;
      }
      reported.published = c.published;
      reported.delivered = c.delivered;
      reported.missed = c.missed;
    } catch (e) {
      // Without the metrics grant the hub still works; say so once.
      metricsOn = false;
      log('warn', 'realtime metrics disabled', { error: (e as Error).message });
    }
  };

  const tickMs = Math.max(25, Math.min(250, cfg.sse.heartbeatMs, cfg.ws.pingIntervalMs));
  let wasReady = false;
  let lastHeartbeat = Date.now();
  let lastPing = Date.now();
  let lastSecond = 0;
  let lastRelayBeat = Date.now();
  const tick = setInterval(() => {
    const now = Date.now();
    if (kernel.ready()) wasReady = true;
    else if (wasReady) {
      // Draining for shutdown: end the streams so clients reconnect elsewhere and the drain can finish.
      if (hub.conns.size) hub.closeAll('shutdown');
      return;
    }
    const heartbeat = now - lastHeartbeat >= cfg.sse.heartbeatMs;
    const ping = now - lastPing >= cfg.ws.pingIntervalMs;
    const second = now - lastSecond >= 1000;
    if (heartbeat) lastHeartbeat = now;
    if (ping) lastPing = now;
    if (!heartbeat && !ping && !second) return;
    for (const c of hub.conns) {
      if (second && c.principal?.expiresAt != null && c.principal.expiresAt <= now) {
        hub.drop(c, 'token-expired', false);
        continue;
      }
      if (heartbeat && c instanceof SseConn) {
        c.stream.push(HEARTBEAT);
        if (c.buffered() > cfg.maxBufferBytes) hub.drop(c, 'slow-consumer', true);
      } else if (ping && c instanceof WsConn) {
        if (c.awaitingPong) hub.drop(c, 'pong-timeout', true);
        else {
          c.awaitingPong = true;
          c.ws.ping();
        }
      }
    }
    if (second) {
      lastSecond = now;
      hub.sweep(now);
      window.push({ at: now, published: hub.counters.published, delivered: hub.counters.delivered });
      if (window.length > 11) window.shift();
      flushMetrics();
      if (relay && now - lastRelayBeat >= 5000) {
        lastRelayBeat = now;
        void relay.heartbeat();
      }
    }
  }, tickMs);
  tick.unref();

  return {
    onRoute(req) {
      switch (req.route) {
        case '/__bext/events':
          return sse(req);
        case '/__bext/ws':
          return ws(req);
        case '/__bext/publish':
          return clientPublish(req);
        case '/__bext/presence':
          return presence(req);
        case '/__bext/hub/publish':
          return readJson(req).then((m) => ('status' in m ? m : publishAs(m.topic, m.data)));
        case '/__bext/hub/stats':
          return stats();
        default:
          return json(404, { error: 'not_found' });
      }
    },

    onPublish(msg) {
      let data: string | undefined;
      try {
        data = JSON.stringify(msg.data ?? null);
      } catch (e) {
        log('warn', 'realtime message is not JSON; not delivered', { topic: msg.topic, publisher: msg.publisher, error: (e as Error).message });
        return { action: 'drop', reason: 'data cannot be serialised as JSON' };
      }
      const n = hub.publish(msg.topic, data ?? 'null');
      if (typeof n === 'number') return { action: 'deliver', delivered: n };
      return n.then((delivered) => ({ action: 'deliver' as const, delivered }));
    },

    async dispose() {
      clearInterval(tick);
      hub.closeAll('shutdown');
      wss.close();
      await relay?.close();
    },
  };
});
