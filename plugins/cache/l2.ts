/**
 * The shared tier in Redis: entries written through from every instance,
 * short fill locks so that one instance renders a cold key, and the
 * invalidation log.
 *
 * Invalidations travel two ways. Each is published on a channel, so other
 * instances act on it at once, and appended to a stream (with the tag's
 * latest timestamp kept in a hash); every instance also reads the stream
 * from where it last stopped on a short interval. A message lost to a
 * disconnect is therefore applied at the next read, and entries are checked
 * against tag timestamps on every read, so a missed message cannot leave an
 * instance serving a purged page.
 *
 * Redis down: every call fails at once (no offline queue), the cache keeps
 * working from memory, and ioredis reconnects by itself; the first
 * successful reconnect re-reads the log and sends invalidations made while
 * it was away.
 */
import { Redis } from 'ioredis';

/** One invalidation as it travels between instances. */
export interface Invalidation {
  tags: string[];
  mode: 'soft' | 'hard';
  /** Wall-clock ms: entries stored before it are affected. */
  ts: number;
  /** Instance that made it. */
  origin: string;
}

/** What other instances tell each other besides invalidations. */
export type Event =
  | { type: 'inv'; inv: Invalidation }
  | { type: 'filled'; key: string; origin: string }
  | { type: 'pass'; key: string; origin: string };

const INVALIDATE = `
local h = KEYS[1]
if ARGV[1] == 'soft' then h = KEYS[2] end
local ts = tonumber(ARGV[2])
for i = 6, #ARGV do
  local cur = tonumber(redis.call('HGET', h, ARGV[i]) or '0')
  if ts > cur then redis.call('HSET', h, ARGV[i], ARGV[2]) end
end
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'r', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[3])
return id
`;

const UNLOCK = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

export interface L2Options {
  url: string;
  prefix: string;
  timeoutMs: number;
  instance: string;
  onEvent(e: Event): void;
  onState(up: boolean, detail: string): void;
  /** Invalidations read from the log (on interval, and after a reconnect). */
  onLog(invs: Invalidation[]): void;
  logMaxLen: number;
}

type InvalidateFn = (numKeys: number, ...args: (string | number)[]) => Promise<string>;
type UnlockFn = (numKeys: number, ...args: string[]) => Promise<number>;

export class L2 {
  readonly #redis: Redis;
  readonly #sub: Redis;
  readonly #o: L2Options;
  readonly #channel: string;
  readonly #invalidate: InvalidateFn;
  readonly #unlock: UnlockFn;
  #up = false;
  #everUp = false;
  #lastId = '0-0';
  #syncing: Promise<void> | null = null;
  /** Invalidations made while Redis was away, sent when it is back. */
  #pending: Invalidation[] = [];
  #closed = false;
  /** The state last reported through onState (null before the first report). */
  #reported: boolean | null = null;

  constructor(o: L2Options) {
    this.#o = o;
    this.#channel = `${o.prefix}events`;
    const common = {
      connectTimeout: Math.max(1000, o.timeoutMs * 10),
      retryStrategy: (attempt: number) => Math.min(50 * 2 ** attempt, 2000),
    };
    // No offline queue: a command during an outage fails at once and the cache answers from memory.
    this.#redis = new Redis(o.url, { ...common, enableOfflineQueue: false, maxRetriesPerRequest: 0, commandTimeout: o.timeoutMs, connectionName: `bext-cache-${o.instance}` });
    this.#sub = new Redis(o.url, { ...common, maxRetriesPerRequest: null, connectionName: `bext-cache-sub-${o.instance}` });
    this.#redis.defineCommand('bextCacheInvalidate', { lua: INVALIDATE });
    this.#redis.defineCommand('bextCacheUnlock', { lua: UNLOCK });
    this.#invalidate = (this.#redis as unknown as { bextCacheInvalidate: InvalidateFn }).bextCacheInvalidate.bind(this.#redis);
    this.#unlock = (this.#redis as unknown as { bextCacheUnlock: UnlockFn }).bextCacheUnlock.bind(this.#redis);
    // ioredis emits an error per failed reconnect; the state change is reported once.
    this.#redis.on('error', (e: Error) => this.#down(e));
    this.#redis.on('end', () => this.#down(new Error('connection closed')));
    this.#redis.on('close', () => this.#down(new Error('connection closed')));
    this.#redis.on('ready', () => void this.#ready());
    this.#sub.on('error', () => undefined);
    this.#sub.on('message', (_ch: string, msg: string) => this.#message(msg));
    void this.#sub.subscribe(this.#channel).catch(() => undefined);
  }

  get up(): boolean {
    return this.#up;
  }

  /** Resolves once connected and the invalidation log is read, or after `ms`. */
  ready(ms: number): Promise<void> {
    if (this.#up) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.#redis.off('bext-synced', done);
        resolve();
      }, ms);
      const done = () => {
        clearTimeout(t);
        resolve();
      };
      this.#redis.once('bext-synced', done);
    });
  }

  async #ready(): Promise<void> {
    try {
      if (!this.#everUp) {
        // Start reading the log where it ends now; the hashes hold every tag's latest timestamp.
        const last = (await this.#redis.xrevrange(this.#key('inv'), '+', '-', 'COUNT', 1)) as [string, string[]][];
        this.#lastId = last[0]?.[0] ?? '0-0';
        await this.#loadTagHashes();
      } else await this.sync();
      this.#everUp = true;
      this.#up = true;
      const pending = this.#pending;
      this.#pending = [];
      for (const inv of pending) await this.invalidate(inv);
      this.#reported = true;
      this.#o.onState(true, '');
      this.#redis.emit('bext-synced');
    } catch (e) {
      this.#down(e as Error);
    }
  }

  async #loadTagHashes(): Promise<void> {
    const [hard, soft] = await Promise.all([this.#redis.hgetall(this.#key('tags:hard')), this.#redis.hgetall(this.#key('tags:soft'))]);
    const invs: Invalidation[] = [];
    for (const [tag, ts] of Object.entries(hard)) invs.push({ tags: [tag], mode: 'hard', ts: Number(ts), origin: 'log' });
    for (const [tag, ts] of Object.entries(soft)) invs.push({ tags: [tag], mode: 'soft', ts: Number(ts), origin: 'log' });
    if (invs.length) this.#o.onLog(invs);
  }

  #down(e: Error): void {
    this.#up = false;
    if (this.#closed || this.#reported === false) return;
    this.#reported = false;
    this.#o.onState(false, `redis unavailable: ${e.message}`);
  }

  /**
   * A call failed: mark down until the connection reports ready again, or,
   * for a connection that is up but too slow (a command timeout), until
   * `probe()` gets a prompt answer.
   */
  failed(e: unknown): void {
    const err = e instanceof Error ? e : new Error(String(e));
    if (this.#up && (this.#redis.status !== 'ready' || /timed out/i.test(err.message))) this.#down(err);
  }

  /** While marked down on a live connection: one PING; a prompt answer ends the outage. */
  async probe(): Promise<void> {
    if (this.#up || !this.#everUp || this.#closed || this.#redis.status !== 'ready') return;
    await this.#redis.ping();
    await this.#ready();
  }

  #key(k: string): string {
    return `${this.#o.prefix}${k}`;
  }

  #message(msg: string): void {
    let e: Event | Invalidation;
    try {
      e = JSON.parse(msg) as Event | Invalidation;
    } catch {
      return;
    }
    // Invalidations are published in the same form as they are logged.
    if ((e as Invalidation).tags) {
      const inv = e as Invalidation;
      if (inv.origin !== this.#o.instance) this.#o.onEvent({ type: 'inv', inv });
      return;
    }
    const ev = e as Event & { origin: string };
    if (ev.origin !== this.#o.instance) this.#o.onEvent(ev);
  }

  async get(hash: string): Promise<Buffer | null> {
    return this.#redis.getBuffer(this.#key(`e:${hash}`));
  }

  /** Entry and vary index of a primary key in one round trip. */
  async getWithVary(hash: string): Promise<[Buffer | null, string | null]> {
    const r = await this.#redis.pipeline().getBuffer(this.#key(`e:${hash}`)).get(this.#key(`v:${hash}`)).exec();
    if (!r) return [null, null];
    for (const [err] of r) if (err) throw err;
    return [r[0]![1] as Buffer | null, r[1]![1] as string | null];
  }

  async set(hash: string, value: Buffer, ttlMs: number | null): Promise<void> {
    if (ttlMs === null) await this.#redis.set(this.#key(`e:${hash}`), value);
    else await this.#redis.set(this.#key(`e:${hash}`), value, 'PX', Math.max(1, Math.ceil(ttlMs)));
  }

  async setVary(hash: string, fields: string[], ttlMs: number | null): Promise<void> {
    if (fields.length === 0) await this.#redis.del(this.#key(`v:${hash}`));
    else if (ttlMs === null) await this.#redis.set(this.#key(`v:${hash}`), fields.join(','));
    else await this.#redis.set(this.#key(`v:${hash}`), fields.join(','), 'PX', Math.max(1, Math.ceil(ttlMs)));
  }

  async del(hash: string): Promise<void> {
    await this.#redis.del(this.#key(`e:${hash}`));
  }

  /** Tries to take the fill lock of a key for `ttlMs`. */
  async lock(hash: string, ttlMs: number): Promise<boolean> {
    return (await this.#redis.set(this.#key(`l:${hash}`), this.#o.instance, 'PX', ttlMs, 'NX')) === 'OK';
  }

  async locked(hash: string): Promise<boolean> {
    return (await this.#redis.exists(this.#key(`l:${hash}`))) === 1;
  }

  async unlock(hash: string): Promise<void> {
    await this.#unlock(1, this.#key(`l:${hash}`), this.#o.instance);
  }

  /** Tells other instances a key was filled (or turned out uncacheable), so their waiters stop waiting. */
  async notify(type: 'filled' | 'pass', key: string): Promise<void> {
    await this.#redis.publish(this.#channel, JSON.stringify({ type, key, origin: this.#o.instance }));
  }

  /** Records an invalidation in Redis and tells the others; kept for later when Redis is away. */
  async invalidate(inv: Invalidation): Promise<boolean> {
    if (!this.#up && this.#everUp) {
      this.#keep(inv);
      return false;
    }
    try {
      await this.#invalidate(3, this.#key('tags:hard'), this.#key('tags:soft'), this.#key('inv'), inv.mode, inv.ts, JSON.stringify(inv), this.#channel, this.#o.logMaxLen, ...inv.tags);
      return true;
    } catch (e) {
      this.#keep(inv);
      this.failed(e);
      return false;
    }
  }

  #keep(inv: Invalidation): void {
    this.#pending.push(inv);
    if (this.#pending.length > 10_000) this.#pending.splice(0, this.#pending.length - 10_000);
  }

  /** Reads the invalidation log from where this instance last stopped. */
  sync(): Promise<void> {
    this.#syncing ??= this.#sync().finally(() => (this.#syncing = null));
    return this.#syncing;
  }

  async #sync(): Promise<void> {
    for (;;) {
      const rows = (await this.#redis.xrange(this.#key('inv'), `(${this.#lastId}`, '+', 'COUNT', 1000)) as [string, string[]][];
      if (rows.length === 0) return;
      const invs: Invalidation[] = [];
      for (const [id, fields] of rows) {
        this.#lastId = id;
        const i = fields.indexOf('r');
        if (i === -1) continue;
        try {
          const inv = JSON.parse(fields[i + 1]!) as Invalidation;
          if (inv.origin !== this.#o.instance) invs.push(inv);
        } catch {
          // A foreign or corrupt record says nothing this cache can apply.
        }
      }
      if (invs.length) this.#o.onLog(invs);
      if (rows.length < 1000) return;
    }
  }

  /** Redis's view of the tier, for the inspect route. */
  async info(): Promise<{ entries: number; status: string }> {
    let entries = 0;
    let cursor = '0';
    do {
      const [next, keys] = await this.#redis.scan(cursor, 'MATCH', this.#key('e:*'), 'COUNT', 1000);
      entries += keys.length;
      cursor = next;
    } while (cursor !== '0' && entries < 1_000_000);
    return { entries, status: this.#redis.status };
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const r of [this.#redis, this.#sub]) {
      r.removeAllListeners('error');
      r.on('error', () => undefined);
      r.disconnect();
    }
  }
}
