/**
 * The `bext_kv_*` store in Redis, when `redis.url` is set: keys are
 * `bext:kv:<plugin>:<key>`, so plugins never see each other's data.
 */
import { Redis } from 'ioredis';
import type { KvStore } from './host.js';
import type { Logger } from './log.js';

export class RedisKv implements KvStore {
  #r: Redis;
  constructor(url: string, log: Logger) {
    this.#r = new Redis(url, { lazyConnect: false, maxRetriesPerRequest: 1, enableOfflineQueue: true });
    this.#r.on('error', (e: Error) => log.warn('redis kv error', { error: e.message }));
  }
  #k(ns: string, key: string) {
    return `bext:kv:${ns}:${key}`;
  }
  get(ns: string, key: string) {
    return this.#r.get(this.#k(ns, key));
  }
  async set(ns: string, key: string, value: string, ttl?: number) {
    if (ttl) await this.#r.set(this.#k(ns, key), value, 'EX', Math.max(1, Math.ceil(ttl)));
    else await this.#r.set(this.#k(ns, key), value);
  }
  async del(ns: string, key: string) {
    await this.#r.del(this.#k(ns, key));
  }
  async close() {
    this.#r.disconnect();
  }
}
