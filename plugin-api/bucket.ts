/**
 * In-memory token buckets keyed by string, shared by the plugins that cap
 * request rates (rate limiter, bot guard, DDoS guard).
 */

/** One bucket's state. `tokens` is fractional; refill is computed lazily. */
export interface Bucket {
  tokens: number;
  /** Time of the last refill, in ms. */
  ts: number;
}

/**
 * A family of token buckets with one capacity (the burst) and one refill
 * rate. Memory is bounded: when `maxKeys` is reached, full buckets are
 * dropped (they carry no information), then the oldest.
 *
 * @example
 * ```ts
 * const perIp = new TokenBuckets({ capacity: 20, refillPerSecond: 10 });
 * const b = perIp.get(ip);
 * if (b.tokens >= 1) b.tokens -= 1; else return tooMany(perIp.msUntil(b, 1));
 * ```
 */
export class TokenBuckets {
  readonly capacity: number;
  readonly refillPerSecond: number;
  readonly #perMs: number;
  readonly #maxKeys: number;
  readonly #map = new Map<string, Bucket>();

  constructor(opts: { capacity: number; refillPerSecond: number; maxKeys?: number }) {
    this.capacity = opts.capacity;
    this.refillPerSecond = opts.refillPerSecond;
    this.#perMs = opts.refillPerSecond / 1000;
    this.#maxKeys = opts.maxKeys ?? 100_000;
  }

  /** The bucket for a key, refilled up to now. The caller takes tokens by decrementing `tokens`. */
  get(key: string, now = Date.now()): Bucket {
    let b = this.#map.get(key);
    if (b === undefined) {
      if (this.#map.size >= this.#maxKeys) this.#evict(now);
      b = { tokens: this.capacity, ts: now };
      this.#map.set(key, b);
      return b;
    }
    if (now > b.ts) {
      const t = b.tokens + (now - b.ts) * this.#perMs;
      b.tokens = t < this.capacity ? t : this.capacity;
      b.ts = now;
    }
    return b;
  }

  /** Milliseconds until the bucket holds `tokens` tokens (0 when it already does). */
  msUntil(b: Bucket, tokens: number): number {
    const missing = tokens - b.tokens;
    return missing <= 0 ? 0 : missing / this.#perMs;
  }

  /** Number of keys held. */
  get size(): number {
    return this.#map.size;
  }

  #evict(now: number): void {
    for (const [k, b] of this.#map) {
      if (b.tokens + (now - b.ts) * this.#perMs >= this.capacity) this.#map.delete(k);
    }
    // Everyone is mid-burst: forget the oldest eighth rather than grow.
    if (this.#map.size >= this.#maxKeys) {
      let drop = Math.max(1, this.#maxKeys >> 3);
      for (const k of this.#map.keys()) {
        this.#map.delete(k);
        if (--drop === 0) break;
      }
    }
  }
}
