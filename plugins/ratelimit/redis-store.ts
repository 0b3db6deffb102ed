/**
 * Shared token buckets in Redis: one Lua script checks and takes from every
 * bucket of a request atomically, using Redis's clock so that instances with
 * skewed clocks still agree. When Redis cannot answer in time the caller
 * fails open; ioredis keeps reconnecting, and the first answer after an
 * outage ends it.
 */
import { Redis } from 'ioredis';
import type { HostApi } from '../../plugin-api/index.js';

// KEYS: one bucket per rule. ARGV: capacity, refill per ms and cost for each key, in order.
// Returns { allowed (1/0), tokens left in each bucket as text } — Lua numbers would be truncated to integers.
const TAKE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS
local level = {}
local ok = 1
for i = 1, n do
  local cap = tonumber(ARGV[i * 3 - 2])
  local rate = tonumber(ARGV[i * 3 - 1])
  local cost = tonumber(ARGV[i * 3])
  local s = redis.call('HMGET', KEYS[i], 't', 'ts')
  local tokens = tonumber(s[1])
  local ts = tonumber(s[2])
  if tokens == nil or ts == nil then
    tokens = cap
  elseif now > ts then
    tokens = math.min(cap, tokens + (now - ts) * rate)
  end
  level[i] = tokens
  if tokens < cost then ok = 0 end
end
local out = { ok }
for i = 1, n do
  local cap = tonumber(ARGV[i * 3 - 2])
  local rate = tonumber(ARGV[i * 3 - 1])
  local tokens = level[i]
  if ok == 1 then tokens = tokens - tonumber(ARGV[i * 3]) end
  redis.call('HSET', KEYS[i], 't', tostring(tokens), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[i], math.ceil((cap - tokens) / rate) + 1000)
  out[i + 1] = tostring(tokens)
end
return out
`;

type TakeFn = (numKeys: number, ...args: (string | number)[]) => Promise<[number, ...string[]]>;

export interface RedisStoreOptions {
  url: string;
  timeoutMs: number;
  host: HostApi;
}

/** The Redis side of the limiter, with its up/down state. */
export class RedisStore {
  readonly #redis: Redis;
  readonly #host: HostApi;
  readonly #take: TakeFn;
  #down = false;
  #detail = '';

  constructor(opts: RedisStoreOptions) {
    this.#host = opts.host;
    this.#redis = new Redis(opts.url, {
      // Queued commands would wait out an outage; failing at once is what lets the limiter fail open.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: opts.timeoutMs,
      connectTimeout: Math.max(1000, opts.timeoutMs * 10),
      retryStrategy: (attempt) => Math.min(50 * 2 ** attempt, 2000),
      lazyConnect: false,
    });
    this.#redis.defineCommand('bextTakeTokens', { lua: TAKE });
    this.#take = (this.#redis as unknown as { bextTakeTokens: TakeFn }).bextTakeTokens.bind(this.#redis);
    // ioredis emits an error on every failed reconnect; the state change is logged once by #fail.
    this.#redis.on('error', (e: Error) => this.#fail(e));
    this.#redis.on('ready', () => this.#recover());
  }

  /** Resolves once connected, or after `ms` (the limiter then fails open until Redis comes). */
  ready(ms: number): Promise<void> {
    if (this.#redis.status === 'ready') return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.#redis.off('ready', done);
        resolve();
      };
      const t = setTimeout(() => {
        this.#redis.off('ready', done);
        this.#fail(new Error(`not connected after ${ms} ms`));
        resolve();
      }, ms);
      this.#redis.once('ready', done);
    });
  }

  /**
   * Takes `cost` from each bucket if all have it. Resolves to the tokens
   * left per bucket (negative never), with `allowed`; or null when Redis
   * did not answer and the caller must fail open.
   */
  async take(keys: string[], args: number[]): Promise<{ allowed: boolean; tokens: number[] } | null> {
    try {
      const r = await this.#take(keys.length, ...keys, ...args);
      const tokens = new Array<number>(keys.length);
      for (let i = 0; i < keys.length; i++) tokens[i] = Number(r[i + 1]);
      if (this.#down) this.#recover();
      return { allowed: r[0] === 1, tokens };
    } catch (e) {
      this.#fail(e as Error);
      this.#host.metric('redis_fail_open_total', 1, undefined, 'counter');
      // Re-asserted per failure: a failure seen while loading came before the kernel listed the plugin.
      this.#host.kernel?.setDegraded(this.#detail);
      return null;
    }
  }

  #fail(e: Error): void {
    if (this.#down) return;
    this.#down = true;
    this.#detail = `redis unavailable: ${e.message}`;
    this.#host.log('warn', 'rate limiter cannot reach redis; failing open until it is back', { error: e.message });
    this.#host.metric('redis_up', 0, undefined, 'gauge');
    this.#host.kernel?.setDegraded(this.#detail);
  }

  #recover(): void {
    this.#host.metric('redis_up', 1, undefined, 'gauge');
    if (!this.#down) return;
    this.#down = false;
    this.#host.log('info', 'rate limiter reached redis again; limits are shared again');
    this.#host.kernel?.setDegraded(null);
  }

  async close(): Promise<void> {
    this.#redis.removeAllListeners('error');
    this.#redis.on('error', () => undefined);
    this.#redis.disconnect();
  }
}
