/**
 * Who may get a certificate at handshake time. A name is ordered only when
 * the allow-list or the ask URL approves it, new orders share one token
 * bucket, a name that failed waits out a doubling backoff, and the number of
 * on-demand certificates is capped — so clients inventing names cannot make
 * the server hammer the CA or fill its storage.
 */
import { hostMatches } from '../../plugin-api/index.js';
import { TokenBuckets } from '../../plugin-api/bucket.js';
import { validName, type TlsConfig } from './config.js';

type Cfg = NonNullable<TlsConfig['onDemand']>;

const MAX_ASKING = 32;

export type Verdict = { ok: true } | { ok: false; reason: 'invalid' | 'denied' | 'backoff' | 'rate' | 'limit' | 'ask_failed' };

export class OnDemandPolicy {
  #cfg: Cfg;
  #asks = new Map<string, { ok: boolean; until: number }>();
  #asking = new Map<string, Promise<boolean>>();
  #backoff = new Map<string, { until: number; failures: number }>();
  #bucket: TokenBuckets;
  #log: (level: 'warn', msg: string, f?: Record<string, unknown>) => void;

  constructor(cfg: Cfg, log: (level: 'warn', msg: string, f?: Record<string, unknown>) => void) {
    this.#cfg = cfg;
    this.#log = log;
    this.#bucket = new TokenBuckets({ capacity: cfg.burst, refillPerSecond: cfg.ratePerMinute / 60, maxKeys: 1 });
  }

  /** Whether `name` may have a certificate at all (allow-list, ask URL, backoff). */
  async approve(name: string): Promise<Verdict> {
    if (!validName(name) || name.startsWith('*.') || !name.includes('.')) return { ok: false, reason: 'invalid' };
    const b = this.#backoff.get(name);
    if (b && b.until > Date.now()) return { ok: false, reason: 'backoff' };
    for (const p of this.#cfg.allow) if (hostMatches(p.toLowerCase(), name)) return { ok: true };
    if (!this.#cfg.ask) return { ok: false, reason: 'denied' };
    const cached = this.#asks.get(name);
    if (cached && cached.until > Date.now()) return cached.ok ? { ok: true } : { ok: false, reason: 'denied' };
    let p = this.#asking.get(name);
    if (!p) {
      // Each invented name would cost the ask service a request: bound how many are in flight.
      if (this.#asking.size >= MAX_ASKING) return { ok: false, reason: 'rate' };
      p = this.#ask(name).finally(() => this.#asking.delete(name));
      this.#asking.set(name, p);
    }
    try {
      return (await p) ? { ok: true } : { ok: false, reason: 'denied' };
    } catch (e) {
      this.#log('warn', 'on-demand ask URL failed; refusing the name', { name, error: (e as Error).message });
      return { ok: false, reason: 'ask_failed' };
    }
  }

  async #ask(name: string): Promise<boolean> {
    const url = new URL(this.#cfg.ask!);
    url.searchParams.set('domain', name);
    const res = await fetch(url, { signal: AbortSignal.timeout(5000), redirect: 'manual' });
    await res.body?.cancel();
    const ok = res.status >= 200 && res.status < 300;
    if (this.#asks.size >= 10_000) this.#asks.clear();
    this.#asks.set(name, { ok, until: Date.now() + this.#cfg.askCacheSeconds * 1000 });
    return ok;
  }

  /** Takes one order from the shared rate; false when the bucket is empty or the cap is reached. */
  take(held: number): Verdict {
    if (held >= this.#cfg.maxCertificates) return { ok: false, reason: 'limit' };
    const b = this.#bucket.get('all');
    if (b.tokens < 1) return { ok: false, reason: 'rate' };
    b.tokens -= 1;
    return { ok: true };
  }

  failed(name: string): void {
    const prev = this.#backoff.get(name)?.failures ?? 0;
    const failures = prev + 1;
    const secs = this.#cfg.failureBackoffSeconds * 2 ** (failures - 1);
    if (this.#backoff.size >= 10_000) this.#backoff.clear();
    this.#backoff.set(name, { until: Date.now() + Math.min(secs, 86_400) * 1000, failures });
  }

  succeeded(name: string): void {
    this.#backoff.delete(name);
  }
}
