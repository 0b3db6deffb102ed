/**
 * The Redis relay between bext instances. A publish is one Lua script that
 * takes the topic's next offset, appends the message to the topic's capped
 * history and PUBLISHes it, so offsets are global and history and the live
 * stream agree. An instance subscribes to a topic's channel only while some
 * local connection follows the topic; after a reconnect it subscribes again
 * and asks the hub to resync from history.
 */
import { Redis } from 'ioredis';
import { Entry, newEpoch, type Member, type Position, type Relay, type Subscription } from './hub.js';

// KEYS: meta hash {e: epoch, o: offset}, history list.
// ARGV: channel, epoch for a topic without one, history size, history TTL ms, meta TTL ms, publish id, data JSON.
// A topic whose meta expired (or a Redis that lost its data) starts a new epoch and an empty history.
const PUBLISH = `
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[2]
  redis.call('HSET', KEYS[1], 'e', e)
  redis.call('DEL', KEYS[2])
end
local o = redis.call('HINCRBY', KEYS[1], 'o', 1)
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local m = string.format('%d %s %d %s', o, e, ms, ARGV[6]) .. '\\n' .. ARGV[7]
redis.call('RPUSH', KEYS[2], m)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[1], m)
return { o, e }
`;

type PublishFn = (...keysThenArgs: (string | number)[]) => Promise<[number, string]>;

export interface RelayOptions {
  url: string;
  /** Prefix of every key and channel. */
  prefix: string;
  replaySize: number;
  replayTtlMs: number;
  /** How long a topic's offset outlives its last publish. */
  metaTtlMs: number;
  timeoutMs: number;
  /** This instance's id (presence entries carry it). */
  instance: string;
  log(level: 'debug' | 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>): void;
  onEntry(e: Entry): void;
  /** Both connections are ready again after an outage (not called for the first connect). */
  onRecovered(): void;
  /** Up/down changes, with a reason when down. */
  onState(down: string | null): void;
}

const INSTANCE_TTL_MS = 15_000;

/** Parses `offset epoch ms pid\n data` as the script stores and publishes it. */
export function parseMessage(topic: string, m: string): Entry | null {
  const nl = m.indexOf('\n');
  if (nl === -1) return null;
  const h = m.slice(0, nl).split(' ');
  if (h.length !== 4) return null;
  return new Entry(topic, Number(h[0]), h[1]!, Number(h[2]), m.slice(nl + 1), h[3]!);
}

export class RedisRelay implements Relay {
  readonly #o: RelayOptions;
  readonly #pub: Redis;
  readonly #sub: Redis;
  readonly #publish: PublishFn;
  readonly #channelPrefix: string;
  /** Redis channel or pattern → how many local subscriptions need it. */
  readonly #refs = new Map<string, { n: number; pattern: boolean }>();
  /** What the subscriber connection is subscribed to right now. */
  readonly #active = new Set<string>();
  readonly #ops = new Map<string, Promise<void>>();
  #down: string | null = 'connecting';
  #subReady = false;
  #everReady = false;
  #closed = false;

  constructor(o: RelayOptions) {
    this.#o = o;
    this.#channelPrefix = `${o.prefix}c:`;
    const common = {
      // A queued command would wait out an outage; failing at once lets publishes fall back to local delivery.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      connectTimeout: Math.max(1000, o.timeoutMs * 5),
      retryStrategy: (attempt: number) => Math.min(50 * 2 ** attempt, 2000),
    };
    this.#pub = new Redis(o.url, { ...common, commandTimeout: o.timeoutMs });
    this.#sub = new Redis(o.url, { ...common, autoResubscribe: false });
    this.#pub.defineCommand('bextRealtimePublish', { lua: PUBLISH, numberOfKeys: 2 });
    this.#publish = (this.#pub as unknown as { bextRealtimePublish: PublishFn }).bextRealtimePublish.bind(this.#pub);
    // ioredis reports every failed reconnect; the state change is logged once.
    this.#pub.on('error', (e: Error) => this.#setDown(`redis: ${e.message}`));
    this.#sub.on('error', (e: Error) => this.#setDown(`redis: ${e.message}`));
    this.#pub.on('close', () => this.#setDown('redis connection closed'));
    this.#sub.on('close', () => {
      this.#subReady = false;
      this.#active.clear();
      this.#setDown('redis subscriber connection closed');
    });
    this.#pub.on('ready', () => this.#ready());
    this.#sub.on('ready', () => void this.#subscriberReady());
    this.#sub.on('message', (ch: string, m: string) => this.#message(ch, m));
    this.#sub.on('pmessage', (_p: string, ch: string, m: string) => this.#message(ch, m));
  }

  /** Waits for the first connection, at most `ms`; the relay keeps trying afterwards either way. */
  async connected(ms: number): Promise<boolean> {
    if (this.up && this.#subReady) return true;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      const poll = setInterval(() => this.up && this.#subReady && done(), 10);
      function done() {
        clearTimeout(timer);
        clearInterval(poll);
        resolve();
      }
    });
    return this.up && this.#subReady;
  }

  get up(): boolean {
    return this.#pub.status === 'ready';
  }

  /** Why the relay is down, or null. */
  get down(): string | null {
    return this.#down;
  }

  get channels(): number {
    return this.#active.size;
  }

  #setDown(detail: string): void {
    if (this.#closed || this.#down !== null) return;
    this.#down = detail;
    this.#o.log('warn', 'realtime relay down; delivering locally only until Redis is back', { detail });
    this.#o.onState(detail);
  }

  #ready(): void {
    if (this.#pub.status !== 'ready' || !this.#subReady || this.#down === null) return;
    this.#down = null;
    void this.heartbeat();
    this.#o.onState(null);
    if (this.#everReady) {
      this.#o.log('info', 'realtime relay back; resyncing topics from history');
      this.#o.onRecovered();
    }
    this.#everReady = true;
  }

  async #subscriberReady(): Promise<void> {
    this.#active.clear();
    const channels: string[] = [];
    const patterns: string[] = [];
    for (const [name, r] of this.#refs) (r.pattern ? patterns : channels).push(name);
    try {
      if (channels.length) await this.#sub.subscribe(...channels);
      if (patterns.length) await this.#sub.psubscribe(...patterns);
      for (const n of [...channels, ...patterns]) this.#active.add(n);
      this.#subReady = true;
      this.#ready();
    } catch (e) {
      this.#o.log('warn', 'realtime relay could not resubscribe', { error: (e as Error).message });
    }
  }

  #message(channel: string, m: string): void {
    if (!channel.startsWith(this.#channelPrefix)) return;
    const e = parseMessage(channel.slice(this.#channelPrefix.length), m);
    if (e) this.#o.onEntry(e);
  }

  #key(topic: string, kind: 'm' | 'h' | 'p'): string {
    // Hash tag: a topic's keys stay in one Redis Cluster slot, as the script needs.
    return `${this.#o.prefix}{${topic}}:${kind}`;
  }

  /** The Redis channels and patterns that carry what a subscription matches. */
  #names(s: Subscription): { name: string; pattern: boolean }[] {
    if (!s.wildcard) return [{ name: this.#channelPrefix + s.key, pattern: false }];
    // Redis `*` also crosses `/`, so a pattern may bring more than it matches: the hub's index filters.
    const out = [{ name: this.#channelPrefix + s.segs.map((x) => (x === '*' || x === '**' ? '*' : x)).join('/'), pattern: true }];
    if (s.segs[s.segs.length - 1] === '**' && s.segs.length > 1) out.push({ name: this.#channelPrefix + s.segs.slice(0, -1).join('/'), pattern: false });
    return out;
  }

  want(s: Subscription): Promise<void> {
    const ops: Promise<void>[] = [];
    for (const { name, pattern } of this.#names(s)) {
      const r = this.#refs.get(name);
      if (r) r.n++;
      else {
        this.#refs.set(name, { n: 1, pattern });
        ops.push(this.#reconcile(name));
      }
    }
    return ops.length ? Promise.all(ops).then(() => undefined) : Promise.resolve();
  }

  unwant(s: Subscription): void {
    for (const { name } of this.#names(s)) {
      const r = this.#refs.get(name);
      if (!r) continue;
      if (--r.n === 0) {
        this.#refs.delete(name);
        void this.#reconcile(name);
      }
    }
  }

  /** Brings one channel's subscription in line with whether it is wanted; one operation per channel at a time. */
  #reconcile(name: string): Promise<void> {
    const prev = this.#ops.get(name) ?? Promise.resolve();
    const next = prev.then(async () => {
      if (!this.#subReady) return;
      const r = this.#refs.get(name);
      const active = this.#active.has(name);
      try {
        if (r && !active) {
          await (r.pattern ? this.#sub.psubscribe(name) : this.#sub.subscribe(name));
          this.#active.add(name);
        } else if (!r && active) {
          this.#active.delete(name);
          const pattern = name.includes('*');
          await (pattern ? this.#sub.punsubscribe(name) : this.#sub.unsubscribe(name));
        }
      } catch (e) {
        // The resubscribe after the reconnect covers it.
        this.#o.log('debug', 'realtime relay subscription change failed', { channel: name, error: (e as Error).message });
      }
    });
    this.#ops.set(name, next);
    void next.then(() => {
      if (this.#ops.get(name) === next) this.#ops.delete(name);
    });
    return next;
  }

  async publish(topic: string, dataJson: string, pid: string): Promise<Position> {
    const [o, e] = await this.#publish(
      this.#key(topic, 'm'), this.#key(topic, 'h'),
      this.#channelPrefix + topic, newEpoch(), this.#o.replaySize, this.#o.replayTtlMs, this.#o.metaTtlMs, pid, dataJson,
    );
    return { offset: Number(o), epoch: String(e) };
  }

  async history(topic: string): Promise<{ head: Position | null; entries: Entry[] }> {
    const res = await this.#pub.multi().hmget(this.#key(topic, 'm'), 'e', 'o').lrange(this.#key(topic, 'h'), 0, -1).exec();
    if (!res) throw new Error('the history transaction was aborted');
    const [[e1, meta], [e2, list]] = res as [[Error | null, (string | null)[]], [Error | null, string[]]];
    if (e1 || e2) throw e1 ?? e2;
    const head = meta[0] ? { epoch: meta[0], offset: Number(meta[1] ?? 0) } : null;
    const cutoff = Date.now() - this.#o.replayTtlMs;
    const entries: Entry[] = [];
    for (const m of list) {
      const entry = parseMessage(topic, m);
      if (entry && entry.ts >= cutoff) entries.push(entry);
    }
    return { head, entries };
  }

  async heads(topics: string[]): Promise<(Position | null)[]> {
    if (topics.length === 0) return [];
    const p = this.#pub.pipeline();
    for (const t of topics) p.hmget(this.#key(t, 'm'), 'e', 'o');
    const res = (await p.exec()) ?? [];
    return res.map(([err, v]) => {
      const meta = v as (string | null)[] | null;
      return err || !meta?.[0] ? null : { epoch: meta[0], offset: Number(meta[1] ?? 0) };
    });
  }

  // -------------------------------------------------------------- presence

  async join(topic: string, m: Member): Promise<void> {
    await this.#pub
      .multi()
      .hset(this.#key(topic, 'p'), `${this.#o.instance}/${m.client}`, JSON.stringify({ user: m.user, since: m.since }))
      .pexpire(this.#key(topic, 'p'), this.#o.metaTtlMs)
      .exec();
  }

  async leave(topic: string, client: string): Promise<void> {
    await this.#pub.hdel(this.#key(topic, 'p'), `${this.#o.instance}/${client}`);
  }

  /** Members across instances; entries of instances that stopped refreshing their liveness key are removed. */
  async members(topic: string): Promise<Member[]> {
    const key = this.#key(topic, 'p');
    const all = await this.#pub.hgetall(key);
    const fields = Object.entries(all);
    if (fields.length === 0) return [];
    const instances = [...new Set(fields.map(([f]) => f.slice(0, f.indexOf('/'))))];
    const alive = await this.#pub.mget(...instances.map((i) => `${this.#o.prefix}i:${i}`));
    const live = new Set(instances.filter((_, i) => alive[i] !== null));
    const out: Member[] = [];
    const dead: string[] = [];
    for (const [f, v] of fields) {
      const slash = f.indexOf('/');
      if (!live.has(f.slice(0, slash))) {
        dead.push(f);
        continue;
      }
      try {
        const { user, since } = JSON.parse(v) as { user: string | null; since: number };
        out.push({ client: f.slice(slash + 1), user, since });
      } catch {
        dead.push(f);
      }
    }
    if (dead.length) this.#pub.hdel(key, ...dead).catch(() => undefined);
    return out;
  }

  /** Refreshes this instance's liveness key; presence entries of instances without one are ignored. */
  async heartbeat(): Promise<void> {
    if (!this.up) return;
    await this.#pub.set(`${this.#o.prefix}i:${this.#o.instance}`, '1', 'PX', INSTANCE_TTL_MS).catch(() => undefined);
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.up) await this.#pub.del(`${this.#o.prefix}i:${this.#o.instance}`).catch(() => undefined);
    this.#pub.disconnect();
    this.#sub.disconnect();
  }
}
