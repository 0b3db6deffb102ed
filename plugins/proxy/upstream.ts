/**
 * One upstream pool: its members with their keep-alive pools, the balancer,
 * active health checks, passive outlier ejection, the circuit breaker and
 * the retry budget. Every state change is reported through `onEvent`, which
 * the plugin turns into a metric and a `system/proxy` publish.
 */
import type { ClientHttp2Session } from 'node:http2';
import { Pool } from 'undici';
import { makeBalancer, type Balancer } from './balancer.js';
import { statusExpected, type ErrorRateConfig, type UpstreamConfig } from './config.js';
import { probeH2c } from './transport.js';

/** A state change worth telling operators about. */
export type ProxyEvent =
  | { event: 'member-down' | 'member-up'; upstream: string; member: string; reason: string }
  | { event: 'member-ejected'; upstream: string; member: string; reason: '5xx' | 'connect'; forMs: number; ejections: number }
  | { event: 'member-returned'; upstream: string; member: string }
  | { event: 'all-down'; upstream: string; policy: 'fail-open' | '503' }
  | { event: 'breaker'; upstream: string; from: BreakerState; to: BreakerState; errorRate?: number };

/** How one attempt at a member ended, for health and the breaker. */
export type Outcome = 'ok' | '5xx' | 'timeout' | 'connect' | 'reset';

export type BreakerState = 'closed' | 'open' | 'half-open';

export class Member {
  readonly id: string;
  readonly url: URL;
  /** `host:port`, the label in metrics and events. */
  readonly label: string;
  readonly weight: number;
  /** Connections this member's pool may open. */
  readonly connections: number;
  active = 0;
  /** Active checks: passing (or no checks configured). */
  healthy = true;
  okStreak = 0;
  failStreak = 0;
  checks = { passed: 0, failed: 0 };
  /** Passive detection. */
  consecutive5xx = 0;
  consecutiveConnect = 0;
  ejectedUntil = 0;
  ejections = 0;
  returnedAt = 0;
  /** A `Retry-After` from this member: skipped until then. */
  notBefore = 0;
  pool: Pool | null = null;
  checker: Pool | null = null;
  h2: ClientHttp2Session | null = null;
  h2Connecting: Promise<ClientHttp2Session> | null = null;
  /** Counters flushed to metrics. */
  requests = 0;
  failures = { '5xx': 0, timeout: 0, connect: 0, reset: 0 };

  constructor(url: string, weight: number, connections: number) {
    this.url = new URL(url);
    this.id = this.url.origin;
    this.label = this.url.host;
    this.weight = weight;
    this.connections = connections;
  }
}

/** Error-rate breaker with half-open probing, over a window of ten buckets. */
export class Breaker {
  state: BreakerState = 'closed';
  openedUntil = 0;
  probing = 0;
  probeSuccesses = 0;
  #cfg: ErrorRateConfig;
  #total: Uint32Array;
  #failed: Uint32Array;
  #bucketMs: number;
  #bucket = 0;
  #bucketStart = 0;

  constructor(cfg: ErrorRateConfig) {
    this.#cfg = cfg;
    this.#total = new Uint32Array(10);
    this.#failed = new Uint32Array(10);
    this.#bucketMs = Math.max(10, Math.floor(cfg.windowMs / 10));
  }

  #roll(now: number): void {
    if (now - this.#bucketStart < this.#bucketMs) return;
    const steps = Math.min(10, Math.floor((now - this.#bucketStart) / this.#bucketMs));
    for (let s = 0; s < steps; s++) {
      this.#bucket = (this.#bucket + 1) % 10;
      this.#total[this.#bucket] = 0;
      this.#failed[this.#bucket] = 0;
    }
    this.#bucketStart = now - ((now - this.#bucketStart) % this.#bucketMs);
  }

  /** `ok` to send, `probe` to send as a half-open probe, `open` to refuse. */
  admit(now: number, change: (to: BreakerState) => void): 'ok' | 'probe' | 'open' {
    if (this.state === 'closed') return 'ok';
    if (this.state === 'open') {
      if (now < this.openedUntil) return 'open';
      this.state = 'half-open';
      this.probing = 0;
      this.probeSuccesses = 0;
      change('half-open');
    }
    if (this.probing + this.probeSuccesses >= this.#cfg.halfOpenProbes) return 'open';
    this.probing++;
    return 'probe';
  }

  /** Records an attempt; `change` hears of a state change (with the error rate when it opened). */
  record(ok: boolean, probe: boolean, now: number, change: (to: BreakerState, rate?: number) => void): void {
    if (probe) {
      this.probing--;
      if (this.state !== 'half-open') return;
      if (!ok) {
        this.state = 'open';
        this.openedUntil = now + this.#cfg.openMs;
        change('open');
        return;
      }
      if (++this.probeSuccesses >= this.#cfg.halfOpenProbes) {
        this.state = 'closed';
        this.#total.fill(0);
        this.#failed.fill(0);
        change('closed');
      }
      return;
    }
    if (!this.#cfg.enabled) return;
    this.#roll(now);
    this.#total[this.#bucket]!++;
    if (ok) return;
    this.#failed[this.#bucket]!++;
    if (this.state !== 'closed') return;
    let total = 0;
    let failed = 0;
    for (let i = 0; i < 10; i++) {
      total += this.#total[i]!;
      failed += this.#failed[i]!;
    }
    if (total >= this.#cfg.minRequests && failed / total >= this.#cfg.threshold) {
      this.state = 'open';
      this.openedUntil = now + this.#cfg.openMs;
      change('open', failed / total);
    }
  }
}

/**
 * Retry budget: over the last `windowMs`, retries may add at most
 * `budgetPercent` to the requests, plus `minPerSecond` — so when a whole
 * pool fails, retries add a bounded share of load instead of multiplying it.
 */
export class RetryBudget {
  #req: Uint32Array;
  #retry: Uint32Array;
  #bucketMs: number;
  #bucket = 0;
  #start = 0;
  #ratio: number;
  #floor: number;

  constructor(budgetPercent: number, minPerSecond: number, windowMs: number) {
    this.#req = new Uint32Array(10);
    this.#retry = new Uint32Array(10);
    this.#bucketMs = windowMs / 10;
    this.#ratio = budgetPercent / 100;
    this.#floor = (minPerSecond * windowMs) / 1000;
  }

  #roll(now: number): void {
    if (now - this.#start < this.#bucketMs) return;
    const steps = Math.min(10, Math.floor((now - this.#start) / this.#bucketMs));
    for (let s = 0; s < steps; s++) {
      this.#bucket = (this.#bucket + 1) % 10;
      this.#req[this.#bucket] = 0;
      this.#retry[this.#bucket] = 0;
    }
    this.#start = now - ((now - this.#start) % this.#bucketMs);
  }

  request(now: number): void {
    this.#roll(now);
    this.#req[this.#bucket]!++;
  }

  /** Takes a retry from the budget, or says there is none left. */
  tryRetry(now: number): boolean {
    this.#roll(now);
    let req = 0;
    let retry = 0;
    for (let i = 0; i < 10; i++) {
      req += this.#req[i]!;
      retry += this.#retry[i]!;
    }
    if (retry >= Math.max(this.#floor, req * this.#ratio)) return false;
    this.#retry[this.#bucket]!++;
    return true;
  }
}

const anyMember = (): boolean => true;

export type Admission = { ok: true; probe: boolean } | { ok: false; reason: 'circuit-open' | 'max-requests' | 'max-pending' };

export class Upstream {
  readonly name: string;
  readonly cfg: UpstreamConfig;
  readonly members: Member[];
  readonly breaker: Breaker;
  readonly budget: RetryBudget;
  readonly retryMethods: Set<string>;
  readonly retryStatus: Set<number>;
  /** Requests in flight to the pool. */
  active = 0;
  allDown = false;
  overflows = { 'circuit-open': 0, 'max-requests': 0, 'max-pending': 0 };
  retries = 0;
  retriesDenied = 0;
  #balancer: Balancer<Member>;
  #onEvent: (e: ProxyEvent) => void;
  #timer: NodeJS.Timeout | null = null;
  #closed = false;

  constructor(name: string, cfg: UpstreamConfig, onEvent: (e: ProxyEvent) => void) {
    this.name = name;
    this.cfg = cfg;
    this.#onEvent = onEvent;
    const per = Math.max(1, Math.floor(cfg.breaker.maxConnections / cfg.members.length));
    this.members = cfg.members.map((m) => (typeof m === 'string' ? new Member(m, 1, per) : new Member(m.url, m.weight ?? 1, per)));
    this.#balancer = makeBalancer(cfg.strategy, this.members);
    this.breaker = new Breaker(cfg.breaker.errorRate);
    this.budget = new RetryBudget(cfg.retries.budgetPercent, cfg.retries.minPerSecond, cfg.retries.windowMs);
    this.retryMethods = new Set(cfg.retries.methods);
    this.retryStatus = new Set(cfg.retries.onStatus);
    if (cfg.protocol === 'http1') {
      for (const m of this.members) {
        m.pool = new Pool(m.id, {
          connections: m.connections,
          pipelining: 1,
          keepAliveTimeout: cfg.keepAliveMs,
          keepAliveMaxTimeout: cfg.keepAliveMs,
          connect: { timeout: cfg.timeouts.connectMs },
          headersTimeout: cfg.timeouts.headersMs,
          bodyTimeout: cfg.timeouts.bodyMs,
        });
      }
    }
  }

  /** Whether a member may take traffic now; returns ejected members whose time is up. */
  available(m: Member, now: number): boolean {
    if (!m.healthy) return false;
    if (m.ejectedUntil !== 0) {
      if (now < m.ejectedUntil) return false;
      m.ejectedUntil = 0;
      m.returnedAt = now;
      m.consecutive5xx = 0;
      m.consecutiveConnect = 0;
      this.#onEvent({ event: 'member-returned', upstream: this.name, member: m.label });
    }
    return m.notBefore <= now;
  }

  /**
   * Picks a member, preferring ones not yet tried for this request. When no
   * member is available, `allDown` decides between every member and none.
   */
  pick(key: string, tried: Member[] | null, now: number): Member | null {
    // The predicates are built once per pool and read the pick's state from fields: no closure per request.
    this.#tried = tried;
    this.#now = now;
    let m = this.#balancer.pick(this.#okUntried, key);
    if (m === null && tried !== null) m = this.#balancer.pick(this.#okAvailable, key);
    if (m !== null) {
      if (this.allDown) this.allDown = false;
      this.#tried = null;
      return m;
    }
    if (!this.allDown) {
      this.allDown = true;
      this.#onEvent({ event: 'all-down', upstream: this.name, policy: this.cfg.health.allDown });
    }
    if (this.cfg.health.allDown === '503') return null;
    m = this.#balancer.pick(this.#untried, key) ?? this.#balancer.pick(anyMember, key);
    this.#tried = null;
    return m;
  }

  #tried: Member[] | null = null;
  #now = 0;
  #okUntried = (x: Member): boolean => (this.#tried === null || !this.#tried.includes(x)) && this.available(x, this.#now);
  #okAvailable = (x: Member): boolean => this.available(x, this.#now);
  #untried = (x: Member): boolean => this.#tried === null || !this.#tried.includes(x);

  /** Circuit breaker and caps, checked before each attempt. */
  admit(m: Member, now: number): Admission {
    const caps = this.cfg.breaker;
    if (this.active >= caps.maxRequests) return this.#overflow('max-requests');
    if (m.active >= m.connections) {
      let pending = 0;
      for (const x of this.members) if (x.active > x.connections) pending += x.active - x.connections;
      if (pending >= caps.maxPending) return this.#overflow('max-pending');
    }
    const b = this.breaker.admit(now, (to) => this.#onEvent({ event: 'breaker', upstream: this.name, from: 'open', to }));
    if (b === 'open') return this.#overflow('circuit-open');
    return { ok: true, probe: b === 'probe' };
  }

  #overflow(reason: 'circuit-open' | 'max-requests' | 'max-pending'): Admission {
    this.overflows[reason]++;
    return { ok: false, reason };
  }

  /** Feeds one attempt's result to passive health and the breaker. */
  report(m: Member, outcome: Outcome, probe: boolean, now: number): void {
    m.requests++;
    const ok = outcome === 'ok';
    if (!ok) m.failures[outcome]++;
    const from = this.breaker.state;
    this.breaker.record(ok, probe, now, (to, rate) => this.#onEvent({ event: 'breaker', upstream: this.name, from, to, ...(rate !== undefined ? { errorRate: Math.round(rate * 1000) / 1000 } : {}) }));
    const p = this.cfg.health.passive;
    if (ok) {
      m.consecutive5xx = 0;
      m.consecutiveConnect = 0;
      return;
    }
    let reason: '5xx' | 'connect' | null = null;
    if (outcome === 'connect' || outcome === 'reset') {
      m.consecutiveConnect++;
      if (p.consecutiveConnectFailures > 0 && m.consecutiveConnect >= p.consecutiveConnectFailures) reason = 'connect';
    } else {
      m.consecutive5xx++;
      if (p.consecutive5xx > 0 && m.consecutive5xx >= p.consecutive5xx) reason = '5xx';
    }
    if (reason !== null && m.ejectedUntil <= now) this.#eject(m, reason, now);
  }

  #eject(m: Member, reason: '5xx' | 'connect', now: number): void {
    const p = this.cfg.health.passive;
    if (p.maxEjectedPercent === 0) return;
    let ejected = 0;
    for (const x of this.members) if (x.ejectedUntil > now) ejected++;
    const allowed = Math.max(1, Math.floor((this.members.length * p.maxEjectedPercent) / 100));
    if (ejected >= allowed) return;
    // The multiplier decays by one for every base period the member stayed in.
    if (m.returnedAt !== 0) m.ejections = Math.max(0, m.ejections - Math.floor((now - m.returnedAt) / p.baseEjectionMs));
    m.ejections++;
    const forMs = Math.min(p.maxEjectionMs, p.baseEjectionMs * m.ejections);
    m.ejectedUntil = now + forMs;
    m.consecutive5xx = 0;
    m.consecutiveConnect = 0;
    this.#onEvent({ event: 'member-ejected', upstream: this.name, member: m.label, reason, forMs, ejections: m.ejections });
  }

  /** Starts active health checks, if configured. */
  startChecks(): void {
    const a = this.cfg.health.active;
    if (!a || this.#timer) return;
    if (this.cfg.protocol === 'http1') {
      for (const m of this.members) {
        m.checker = new Pool(m.id, { connections: 1, keepAliveTimeout: Math.max(a.intervalMs * 2, 1000), connect: { timeout: Math.min(a.timeoutMs, this.cfg.timeouts.connectMs) } });
      }
    }
    const run = () => {
      for (const m of this.members) void this.#check(m);
    };
    run();
    this.#timer = setInterval(run, a.intervalMs);
    this.#timer.unref();
  }

  async #check(m: Member): Promise<void> {
    const a = this.cfg.health.active!;
    let pass = false;
    let detail = '';
    try {
      let status: number;
      if (m.checker === null) {
        // h2c members are checked over the same multiplexed session requests use.
        status = await probeH2c(m, a.path, a.timeoutMs, this.cfg.keepAliveMs);
      } else {
        const res = await m.checker.request({
          method: 'GET',
          path: a.path,
          headers: { host: m.url.host, 'user-agent': 'bext-proxy-health' },
          headersTimeout: a.timeoutMs,
          bodyTimeout: a.timeoutMs,
        });
        await res.body.dump();
        status = res.statusCode;
      }
      pass = statusExpected(a.expectStatus, status);
      if (!pass) detail = `status ${status}`;
    } catch (e) {
      detail = (e as { code?: string }).code ?? (e as Error).message;
    }
    if (this.#closed) return;
    if (pass) {
      m.checks.passed++;
      m.failStreak = 0;
      m.okStreak++;
      if (!m.healthy && m.okStreak >= a.rise) {
        m.healthy = true;
        this.#onEvent({ event: 'member-up', upstream: this.name, member: m.label, reason: `${m.okStreak} passing checks` });
      }
    } else {
      m.checks.failed++;
      m.okStreak = 0;
      m.failStreak++;
      if (m.healthy && m.failStreak >= a.fall) {
        m.healthy = false;
        this.#onEvent({ event: 'member-down', upstream: this.name, member: m.label, reason: `${m.failStreak} failing checks (last: ${detail})` });
      }
    }
  }

  /** A snapshot for the admin route. */
  state(now: number): Record<string, unknown> {
    return {
      strategy: this.cfg.strategy,
      protocol: this.cfg.protocol,
      active: this.active,
      allDown: this.allDown,
      breaker: this.breaker.state,
      overflows: { ...this.overflows },
      retries: this.retries,
      retriesDenied: this.retriesDenied,
      members: this.members.map((m) => ({
        url: m.id,
        weight: m.weight,
        active: m.active,
        healthy: m.healthy,
        available: this.available(m, now),
        ...(m.ejectedUntil > now ? { ejectedForMs: m.ejectedUntil - now, ejections: m.ejections } : {}),
        ...(m.notBefore > now ? { retryAfterMs: m.notBefore - now } : {}),
        requests: m.requests,
        failures: { ...m.failures },
        ...(this.cfg.health.active ? { checks: { ...m.checks } } : {}),
      })),
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    await Promise.all(
      this.members.map(async (m) => {
        m.h2?.destroy();
        await Promise.all([m.pool?.destroy(), m.checker?.destroy()]);
      }),
    );
  }
}
