/**
 * What the dashboard shows, gathered once per interval: request rate,
 * latency percentiles and status mix from the kernel's request records;
 * everything plugins and the process report (cache, WAF, rate limits, hub,
 * upstreams, render pool, hook cost, event loop, heap) from the metrics
 * text the kernel serves on /metrics.
 */
import type { PluginStatus, RequestRecord } from '../../plugin-api/index.js';
import { byLabel, parseProm, sum, type Samples } from './prom.js';

/** One point of every time series the page charts. Null: nothing reports it. */
export interface Point {
  t: number;
  /** Seconds this point covers. */
  dt: number;
  /** Requests finished in the interval, and per second. */
  n: number;
  rps: number;
  /** Requests in the interval by status class, 1xx … 5xx. */
  s: [number, number, number, number, number];
  /** Latency percentiles in ms (0 when no request finished). */
  p50: number;
  p90: number;
  p99: number;
  max: number;
  /** Share of cache lookups served from the cache (0…1), null without cache traffic. */
  hit: number | null;
  /** Requests in the interval the WAF blocked, tagged (detect), and that got 429. */
  wafBlocked: number;
  wafDetected: number;
  limited: number;
  hub: number | null;
  deliveries: number | null;
  loopP99: number | null;
  heap: number | null;
  rss: number | null;
  cpu: number | null;
}

export interface RecentRow {
  seq: number;
  t: number;
  method: string;
  path?: string;
  route?: string;
  group: string;
  status: number;
  ms: number;
  cache?: string;
  waf?: string;
  slowest?: { name: string; ms: number };
  traceId?: string;
}

export interface HookCost {
  plugin: string;
  hook: string;
  sandbox: string;
  callsPerSec: number;
  avgUs: number;
  msPerSec: number;
  errorsPerSec: number;
}

export interface Snapshot {
  v: 1;
  t: number;
  intervalMs: number;
  uptimeSeconds: number;
  point: Point;
  cache: { hit: number; stale: number; miss: number; collapsed: number; bypass: number; memoryBytes: number | null; entries: number | null } | null;
  /** WAF matches over the last minute, by rule family. */
  waf: { family: string; blocked: number; detected: number }[];
  ratelimit: { rule: string; perMin: number }[];
  hub: { sse: number; ws: number; topics: number | null; deliveriesPerSec: number; publishedPerSec: number } | null;
  upstreams: { upstream: string; breaker: string; active: number; members: { member: string; up: boolean; active: number; rps: number; failuresPerMin: number }[] }[];
  hooks: HookCost[];
  pool: { workers: Record<string, number>; queue: number; rendersPerSec: number; rotations: number; crashes: number } | null;
  plugins: { name: string; sandbox: string; state: string; detail?: string; memoryBytes?: number }[];
  recentSeq: number;
}

const BREAKER = ['closed', 'half-open', 'open'];
const HIST_BASE_MS = 0.01;
const HIST_RATIO = 1.1;
const LOG_RATIO = Math.log(HIST_RATIO);
const HIST_SIZE = 180; // 0.01 ms … ~300 s
const FAMILIES_WINDOW = 60;

/** Cache-Status (RFC 9211) of the cache nearest the response: hit, stale, miss, collapsed, bypass. */
export function cacheResult(v: string | string[] | number | undefined): 'hit' | 'stale' | 'miss' | 'collapsed' | 'bypass' | null {
  if (v === undefined) return null;
  const s = Array.isArray(v) ? v.join(', ') : String(v);
  const member = s.slice(s.lastIndexOf(',') + 1);
  if (/;\s*hit\b/.test(member)) return /detail=stale-while-revalidate/.test(member) ? 'stale' : 'hit';
  const fwd = /;\s*fwd=([a-z-]+)/.exec(member)?.[1];
  if (fwd === 'miss' || fwd === 'uri-miss' || fwd === 'vary-miss') return /;\s*collapsed\b/.test(member) ? 'collapsed' : 'miss';
  if (fwd === 'stale') return 'stale';
  return fwd ? 'bypass' : null;
}

/** `blocked` when the WAF answered in onRequest, `detected` when it tagged the request with a score. */
export function wafResult(rec: RequestRecord): 'blocked' | 'detected' | null {
  const w = rec.ctx.waf as { score?: number; families?: unknown[] } | undefined;
  if (w && typeof w === 'object') return (w.score ?? 0) > 0 || (Array.isArray(w.families) && w.families.length) ? 'detected' : null;
  if (rec.status < 400 || rec.status === 404) return null;
  // Blocked: no route or renderer ran, and the last onRequest hook was the WAF's (and did not fail).
  let last: RequestRecord['timings'][number] | undefined;
  for (const t of rec.timings) {
    if (t.hook === 'onRoute' || t.hook === 'onRender') return null;
    if (t.hook === 'onRequest') last = t;
  }
  return last !== undefined && last.plugin === 'waf' && !last.error ? 'blocked' : null;
}

interface Interval {
  n: number;
  s: [number, number, number, number, number];
  hist: Float64Array;
  max: number;
  cache: { hit: number; stale: number; miss: number; collapsed: number; bypass: number };
  wafBlocked: number;
  wafDetected: number;
  limited: number;
}

function emptyInterval(): Interval {
  return { n: 0, s: [0, 0, 0, 0, 0], hist: new Float64Array(HIST_SIZE), max: 0, cache: { hit: 0, stale: 0, miss: 0, collapsed: 0, bypass: 0 }, wafBlocked: 0, wafDetected: 0, limited: 0 };
}

function percentile(iv: Interval, q: number): number {
  if (iv.n === 0) return 0;
  const want = Math.ceil(q * iv.n);
  let seen = 0;
  for (let i = 0; i < HIST_SIZE; i++) {
    seen += iv.hist[i]!;
    if (seen >= want) return Math.min(iv.max, HIST_BASE_MS * HIST_RATIO ** (i + 1));
  }
  return iv.max;
}

const round = (n: number, d = 2) => {
  const f = 10 ** d;
  return Math.round(n * f) / f;
};

export interface CollectorOptions {
  intervalMs: number;
  recentSize: number;
  /** Paths left out of everything (the dashboard's own polling, probes). */
  exclude: RegExp | null;
  /** Keep raw paths in recent rows (they are served on an admin route only). */
  paths: boolean;
}

export class Collector {
  #iv = emptyInterval();
  #recent: (RequestRecord | undefined)[];
  #recentSeqs: number[];
  #next = 0;
  #seq = 0;
  /** Previous cumulative counter values, for per-interval deltas. */
  #prev = new Map<string, number>();
  #lastTick = 0;
  #hookEma = new Map<string, HookCost>();
  #families: Map<string, { blocked: number; detected: number }>[] = [];
  #limited: Map<string, number>[] = [];
  #started = Date.now();

  constructor(private readonly opts: CollectorOptions) {
    this.#recent = new Array(opts.recentSize);
    this.#recentSeqs = new Array(opts.recentSize).fill(0);
  }

  /** Called for every finished request (the kernel's request observer): counters only. */
  observe(rec: RequestRecord): void {
    if (this.opts.exclude !== null && this.opts.exclude.test(rec.path)) return;
    const iv = this.#iv;
    iv.n++;
    const cls = Math.floor(rec.status / 100) - 1;
    if (cls >= 0 && cls < 5) iv.s[cls as 0]++;
    const ms = rec.durationMs;
    if (ms > iv.max) iv.max = ms;
    const i = ms <= HIST_BASE_MS ? 0 : Math.min(HIST_SIZE - 1, Math.floor(Math.log(ms / HIST_BASE_MS) / LOG_RATIO));
    iv.hist[i]!++;
    const c = cacheResult(rec.responseHeaders['cache-status']);
    if (c !== null) iv.cache[c]++;
    const w = wafResult(rec);
    if (w === 'blocked') iv.wafBlocked++;
    else if (w === 'detected') iv.wafDetected++;
    if (rec.status === 429) iv.limited++;
    this.#recent[this.#next] = rec;
    this.#recentSeqs[this.#next] = ++this.#seq;
    this.#next = (this.#next + 1) % this.#recent.length;
  }

  /** Recent requests after `after` (a seq), newest first. */
  recent(after = 0, limit = this.#recent.length): RecentRow[] {
    const out: RecentRow[] = [];
    const n = this.#recent.length;
    for (let k = 1; k <= n && out.length < limit; k++) {
      const i = (this.#next - k + n) % n;
      const rec = this.#recent[i];
      const seq = this.#recentSeqs[i]!;
      if (!rec || seq <= after) break;
      out.push(this.#row(rec, seq));
    }
    return out;
  }

  get recentSeq(): number {
    return this.#seq;
  }

  #row(rec: RequestRecord, seq: number): RecentRow {
    let slowest: RecentRow['slowest'];
    for (const t of rec.timings) if (!slowest || t.durMs > slowest.ms) slowest = { name: `${t.plugin} ${t.hook}`, ms: round(t.durMs, 3) };
    const cache = cacheResult(rec.responseHeaders['cache-status']);
    const waf = wafResult(rec);
    return {
      seq,
      t: Math.round(rec.time),
      method: rec.method,
      ...(this.opts.paths ? { path: rec.path } : {}),
      ...(rec.route ? { route: rec.route } : {}),
      group: rec.group,
      status: rec.status,
      ms: round(rec.durationMs, 3),
      ...(cache ? { cache } : {}),
      ...(waf ? { waf } : {}),
      ...(slowest ? { slowest } : {}),
      ...(typeof rec.ctx.traceId === 'string' ? { traceId: rec.ctx.traceId } : {}),
    };
  }

  /**
   * Increase of a cumulative counter since the last tick (a reset counts
   * from zero). Counters the kernel and plugins keep start with this server,
   * so a series seen for the first time counts from zero; process-wide ones
   * (`fromZero` false) only from their first reading.
   */
  #delta(key: string, v: number, fromZero = true): number {
    const p = this.#prev.get(key);
    this.#prev.set(key, v);
    if (p === undefined) return fromZero ? v : 0;
    return v >= p ? v - p : v;
  }

  /** Closes the interval and builds the snapshot. */
  snapshot(now: number, metricsText: string, plugins: PluginStatus[]): Snapshot {
    const iv = this.#iv;
    this.#iv = emptyInterval();
    const secs = this.#lastTick ? Math.max(0.001, (now - this.#lastTick) / 1000) : this.opts.intervalMs / 1000;
    this.#lastTick = now;
    const m = parseProm(metricsText, (n) => n.startsWith('bext_hook_') || n.startsWith('bext_plugin_') || n.startsWith('bext_process_'));
    const rate = (n: number) => round(n / secs);

    const lookups = iv.cache.hit + iv.cache.stale + iv.cache.miss + iv.cache.collapsed;
    const hub = this.#hub(m, secs);
    const point: Point = {
      t: now,
      dt: round(secs, 3),
      n: iv.n,
      rps: rate(iv.n),
      s: iv.s,
      p50: round(percentile(iv, 0.5), 3),
      p90: round(percentile(iv, 0.9), 3),
      p99: round(percentile(iv, 0.99), 3),
      max: round(iv.max, 3),
      hit: lookups ? round((iv.cache.hit + iv.cache.stale) / lookups, 4) : null,
      wafBlocked: iv.wafBlocked,
      wafDetected: iv.wafDetected,
      limited: iv.limited,
      hub: hub ? hub.sse + hub.ws : null,
      deliveries: hub ? hub.deliveriesPerSec : null,
      ...this.#process(m, secs),
    };
    const cacheMem = m.get('bext_plugin_cache_memory_bytes');
    return {
      v: 1,
      t: now,
      intervalMs: this.opts.intervalMs,
      uptimeSeconds: Math.round((now - this.#started) / 1000),
      point,
      cache:
        lookups + iv.cache.bypass > 0 || cacheMem
          ? { ...iv.cache, memoryBytes: cacheMem ? sum(m, 'bext_plugin_cache_memory_bytes') : null, entries: m.has('bext_plugin_cache_memory_entries') ? sum(m, 'bext_plugin_cache_memory_entries') : null }
          : null,
      waf: this.#waf(m),
      ratelimit: this.#ratelimit(m),
      hub,
      upstreams: this.#upstreams(m, secs),
      hooks: this.#hooks(m, secs),
      pool: this.#pool(m, secs),
      plugins: plugins.map((p) => ({ name: p.name, sandbox: p.sandbox, state: p.state, ...(p.detail ? { detail: p.detail } : {}), ...(p.memoryBytes !== undefined ? { memoryBytes: p.memoryBytes } : {}) })),
      recentSeq: this.#seq,
    };
  }

  #process(m: Samples, secs: number): Pick<Point, 'loopP99' | 'heap' | 'rss' | 'cpu'> {
    const has = (n: string) => m.has(n);
    const cpu = has('bext_process_process_cpu_seconds_total') ? this.#delta('cpu', sum(m, 'bext_process_process_cpu_seconds_total'), false) : null;
    return {
      loopP99: has('bext_process_nodejs_eventloop_lag_p99_seconds') ? round(sum(m, 'bext_process_nodejs_eventloop_lag_p99_seconds') * 1000, 3) : null,
      heap: has('bext_process_nodejs_heap_size_used_bytes') ? sum(m, 'bext_process_nodejs_heap_size_used_bytes') : null,
      rss: has('bext_process_process_resident_memory_bytes') ? sum(m, 'bext_process_process_resident_memory_bytes') : null,
      cpu: cpu === null ? null : round(cpu / secs, 4),
    };
  }

  #hooks(m: Samples, secs: number): HookCost[] {
    const sums = m.get('bext_hook_duration_seconds_sum') ?? [];
    const errors = new Map<string, number>();
    for (const s of m.get('bext_hook_errors_total') ?? []) errors.set(`${s.labels.plugin} ${s.labels.hook}`, s.value);
    const counts = new Map<string, number>();
    for (const s of m.get('bext_hook_duration_seconds_count') ?? []) counts.set(`${s.labels.plugin} ${s.labels.hook}`, s.value);
    const a = 0.3;
    for (const s of sums) {
      const key = `${s.labels.plugin} ${s.labels.hook}`;
      const dCalls = this.#delta(`calls ${key}`, counts.get(key) ?? 0);
      const dSec = this.#delta(`sum ${key}`, s.value);
      const dErr = this.#delta(`err ${key}`, errors.get(key) ?? 0);
      const now: HookCost = {
        plugin: s.labels.plugin ?? '',
        hook: s.labels.hook ?? '',
        sandbox: s.labels.sandbox ?? '',
        callsPerSec: dCalls / secs,
        avgUs: dCalls ? (dSec / dCalls) * 1e6 : 0,
        msPerSec: (dSec * 1000) / secs,
        errorsPerSec: dErr / secs,
      };
      const prev = this.#hookEma.get(key);
      // Smoothed, so the bars do not jump with every second's noise.
      this.#hookEma.set(
        key,
        prev
          ? { ...now, callsPerSec: prev.callsPerSec + a * (now.callsPerSec - prev.callsPerSec), avgUs: dCalls ? prev.avgUs + a * (now.avgUs - prev.avgUs) : prev.avgUs, msPerSec: prev.msPerSec + a * (now.msPerSec - prev.msPerSec), errorsPerSec: prev.errorsPerSec + a * (now.errorsPerSec - prev.errorsPerSec) }
          : now,
      );
    }
    return [...this.#hookEma.values()]
      .filter((h) => h.callsPerSec > 0.001 || h.msPerSec > 0.0001)
      .sort((x, y) => y.msPerSec - x.msPerSec)
      .slice(0, 16)
      .map((h) => ({ ...h, callsPerSec: round(h.callsPerSec), avgUs: round(h.avgUs, 1), msPerSec: round(h.msPerSec, 4), errorsPerSec: round(h.errorsPerSec) }));
  }

  #waf(m: Samples): Snapshot['waf'] {
    const now = new Map<string, { blocked: number; detected: number }>();
    for (const [kind, name] of [['blocked', 'bext_plugin_waf_blocked_total'], ['detected', 'bext_plugin_waf_detections_total']] as const) {
      for (const [family, v] of byLabel(m, name, 'family')) {
        const d = this.#delta(`waf ${kind} ${family}`, v);
        if (!d) continue;
        const e = now.get(family) ?? { blocked: 0, detected: 0 };
        e[kind] += d;
        now.set(family, e);
      }
    }
    this.#families.push(now);
    if (this.#families.length > FAMILIES_WINDOW) this.#families.shift();
    const total = new Map<string, { blocked: number; detected: number }>();
    for (const iv of this.#families) {
      for (const [f, v] of iv) {
        const e = total.get(f) ?? { blocked: 0, detected: 0 };
        e.blocked += v.blocked;
        e.detected += v.detected;
        total.set(f, e);
      }
    }
    return [...total].map(([family, v]) => ({ family, ...v })).sort((x, y) => y.blocked + y.detected - (x.blocked + x.detected));
  }

  #ratelimit(m: Samples): Snapshot['ratelimit'] {
    const now = new Map<string, number>();
    for (const [rule, v] of byLabel(m, 'bext_plugin_ratelimit_limited_total', 'rule')) {
      const d = this.#delta(`rl ${rule}`, v);
      if (d) now.set(rule, d);
    }
    this.#limited.push(now);
    if (this.#limited.length > FAMILIES_WINDOW) this.#limited.shift();
    const total = new Map<string, number>();
    for (const iv of this.#limited) for (const [r, v] of iv) total.set(r, (total.get(r) ?? 0) + v);
    const minutes = (this.#limited.length * this.opts.intervalMs) / 60000;
    return [...total].map(([rule, n]) => ({ rule, perMin: round(n / Math.max(minutes, 1 / 60)) })).sort((x, y) => y.perMin - x.perMin);
  }

  #hub(m: Samples, secs: number): Snapshot['hub'] {
    if (!m.has('bext_plugin_realtime_connections')) return null;
    const conns = byLabel(m, 'bext_plugin_realtime_connections', 'transport');
    return {
      sse: conns.get('sse') ?? 0,
      ws: conns.get('ws') ?? 0,
      topics: m.has('bext_plugin_realtime_topics') ? sum(m, 'bext_plugin_realtime_topics') : null,
      deliveriesPerSec: round(this.#delta('hub deliveries', sum(m, 'bext_plugin_realtime_deliveries_total')) / secs),
      publishedPerSec: round(this.#delta('hub published', sum(m, 'bext_plugin_realtime_published_total')) / secs),
    };
  }

  #upstreams(m: Samples, secs: number): Snapshot['upstreams'] {
    const pools = new Map<string, Snapshot['upstreams'][number]>();
    const pool = (name: string) => {
      let p = pools.get(name);
      if (!p) pools.set(name, (p = { upstream: name, breaker: 'closed', active: 0, members: [] }));
      return p;
    };
    for (const s of m.get('bext_plugin_proxy_breaker_state') ?? []) pool(s.labels.upstream ?? '').breaker = BREAKER[s.value] ?? String(s.value);
    for (const s of m.get('bext_plugin_proxy_active_requests') ?? []) pool(s.labels.upstream ?? '').active = s.value;
    const active = new Map<string, number>();
    for (const s of m.get('bext_plugin_proxy_member_active_requests') ?? []) active.set(`${s.labels.upstream} ${s.labels.member}`, s.value);
    const requests = new Map<string, number>();
    for (const s of m.get('bext_plugin_proxy_member_requests_total') ?? []) requests.set(`${s.labels.upstream} ${s.labels.member}`, s.value);
    const failures = new Map<string, number>();
    for (const s of m.get('bext_plugin_proxy_member_failures_total') ?? []) {
      const k = `${s.labels.upstream} ${s.labels.member}`;
      failures.set(k, (failures.get(k) ?? 0) + s.value);
    }
    for (const s of m.get('bext_plugin_proxy_member_available') ?? []) {
      const k = `${s.labels.upstream} ${s.labels.member}`;
      pool(s.labels.upstream ?? '').members.push({
        member: s.labels.member ?? '',
        up: s.value === 1,
        active: active.get(k) ?? 0,
        rps: round(this.#delta(`member req ${k}`, requests.get(k) ?? 0) / secs),
        failuresPerMin: round((this.#delta(`member fail ${k}`, failures.get(k) ?? 0) / secs) * 60),
      });
    }
    return [...pools.values()];
  }

  #pool(m: Samples, secs: number): Snapshot['pool'] {
    if (!m.has('bext_plugin_ssr_workers') && !m.has('bext_plugin_ssr_queue_depth')) return null;
    return {
      workers: Object.fromEntries(byLabel(m, 'bext_plugin_ssr_workers', 'state')),
      queue: sum(m, 'bext_plugin_ssr_queue_depth'),
      rendersPerSec: round(this.#delta('ssr renders', sum(m, 'bext_plugin_ssr_renders_total')) / secs),
      rotations: sum(m, 'bext_plugin_ssr_worker_rotations_total'),
      crashes: sum(m, 'bext_plugin_ssr_worker_crashes_total'),
    };
  }
}
