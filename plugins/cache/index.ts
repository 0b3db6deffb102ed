/**
 * The response cache. An onRender hook at priority 10 wraps every renderer
 * behind it: a fresh entry in memory is answered synchronously (with the
 * stored variant for the client's Accept-Encoding, so a hit compresses
 * nothing); a stale one is answered at once while one background render
 * replaces it; a miss goes through a stampede guard (one render per key in
 * the process, one per key across instances through a short Redis lock),
 * then is stored in memory and written through to Redis.
 *
 * Time is wall-clock time (`Date.now()`): entries carry the time they were
 * stored, freshness is computed on read, and Redis expiry only collects
 * garbage. Instances sharing Redis must therefore keep their clocks in step
 * (NTP), as with any shared cache that stores absolute times.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { Readable } from 'node:stream';
import { LRUCache } from 'lru-cache';
import { Agent, request as httpRequest } from 'undici';
import {
  acceptEncoding, BextError, compressibleType, definePlugin, varyFields, varyWith, COMPRESSIBLE_TYPES,
  type Body, type ContentCoding, type EncodingPreference, type Headers, type RenderNext, type ResponseData,
  type ResponseDecision, type ResponseHead, type TrustedRequest,
} from '../../plugin-api/index.js';
import { decode, encode, etagOf, hashKey, live, noneMatch, opaque, packEntry, sizeOf, unpackEntry, type LiveEntry } from './entry.js';
import { normaliseHeaderValue, normalisePath, normaliseQuery, paramStripper } from './key.js';
import { L2, type Event, type Invalidation } from './l2.js';
import { compileRules, originRule, storePolicy, type Rule, type RuleConfig } from './policy.js';

/** This plugin's section of bext.config.json, with defaults applied. */
export interface CacheConfig {
  rules: RuleConfig[];
  negativeTtl: number;
  memory: { maxBytes: number; maxEntryBytes: number };
  redis: { url?: string; keyPrefix: string; timeoutMs: number; lockTtlMs: number; syncIntervalMs: number; maxStaleSeconds: number; logMaxLen: number };
  key: { stripParams: string[]; varyHeaders: string[]; keyHeaders: string[]; stripHeaders: string[]; bypassCookies: string[] };
  encodings: { codings: ContentCoding[]; levels: { br: number; zstd: number; gzip: number }; minBytes: number; types?: string[] };
  collapseTimeoutMs: number;
  passSeconds: number;
  tagHeader: string;
  exposeTagHeader: boolean;
  statusName: string;
  honorRequestNoCache: boolean;
  revalidateConcurrency: number;
  maxRevalidate: number;
}

/** Header a revalidation sends to its own server to force a render; its value is a per-process secret. */
export const FILL_HEADER = 'x-bext-cache-fill';

/** What a request resolves to before lookup. */
interface Lookup {
  rule: Rule;
  primary: string;
  scheme: string;
  host: string;
  path: string;
  renderQuery: string;
  tenant: string;
  hasAuth: boolean;
  force: boolean;
  /** An entry was found but was too old to serve (Cache-Status says fwd=stale rather than miss). */
  expired?: boolean;
  /** Conditional headers, saved before they are removed for a render. */
  inm?: string | string[];
  ims?: string | string[];
}

type FillResult =
  | { kind: 'stored'; entry: LiveEntry; how: 'filled' | 'l2' | 'remote'; hadStale?: boolean; fwdStatus?: number }
  | { kind: 'pass'; res: ResponseData; reason: string }
  | { kind: 'shared'; res: ResponseData }
  | { kind: 'stale'; entry: LiveEntry; fwdStatus: number };

/** Counters since start (the stats route shows them; metrics get deltas each second). */
interface Stats {
  hits: number;
  stale: number;
  misses: number;
  collapsed: number;
  bypass: number;
  staleIfError: number;
  renders: number;
  stores: number;
  notStored: Record<string, number>;
  hitCompressions: number;
  fillCompressions: number;
  l2Hits: number;
  l2Errors: number;
  evictions: number;
  collapseTimeouts: number;
  invalidations: number;
  revalidations: number;
}

const TIMEOUT = Symbol('timeout');
const COND_HEADERS = ['if-none-match', 'if-modified-since', 'if-match', 'if-unmodified-since', 'range', 'if-range'];
const NOT_STORED_HEADERS = ['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection', 'te', 'trailer', 'date', 'age', 'content-length', 'content-encoding', 'surrogate-control', 'set-cookie'];
const HEADERS_304 = ['cache-control', 'content-location', 'etag', 'expires', 'vary', 'last-modified'];
const UNSAFE = new Set(['POST', 'PUT', 'DELETE', 'PATCH']);

function one(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(', ') : v;
}

function json(status: number, body: unknown): ResponseData {
  return { status, headers: { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' }, body: JSON.stringify(body) };
}

function badRequest(msg: string): ResponseData {
  return json(400, { error: 'BEXT_ERR_CONFIG_INVALID', message: msg });
}

function raceTimeout<T>(p: Promise<T>, ms: number): Promise<T | typeof TIMEOUT> {
  let t: NodeJS.Timeout;
  return Promise.race([p, new Promise<typeof TIMEOUT>((r) => (t = setTimeout(() => r(TIMEOUT), ms)))]).finally(() => clearTimeout(t));
}

/** Reads a body up to `limit` bytes; past it, hands back a stream of everything (read or not) instead. */
async function readBody(res: ResponseData, limit: number): Promise<{ buf: Buffer } | { over: Body }> {
  const b = res.body !== undefined ? res.body : typeof res.bodyBase64 === 'string' ? Buffer.from(res.bodyBase64, 'base64') : null;
  if (b === null || b === undefined) return { buf: Buffer.alloc(0) };
  if (typeof b === 'string' || b instanceof Uint8Array) {
    const buf = typeof b === 'string' ? Buffer.from(b) : Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
    return buf.length > limit ? { over: buf } : { buf };
  }
  const it = (b as AsyncIterable<Uint8Array | string>)[Symbol.asyncIterator]();
  const chunks: Buffer[] = [];
  let size = 0;
  for (;;) {
    const r = await it.next();
    if (r.done) return { buf: chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks) };
    const c = typeof r.value === 'string' ? Buffer.from(r.value) : Buffer.from(r.value);
    chunks.push(c);
    size += c.length;
    if (size > limit) {
      async function* rest(): AsyncGenerator<Uint8Array> {
        yield* chunks;
        for (;;) {
          const n = await it.next();
          if (n.done) return;
          yield typeof n.value === 'string' ? Buffer.from(n.value) : n.value;
        }
      }
      return { over: Readable.from(rest()) };
    }
  }
}

export default definePlugin(async (host) => {
  const cfg = host.config<CacheConfig>();
  const compiled = compileRules(cfg.rules, { negativeTtl: cfg.negativeTtl, maxStaleSeconds: cfg.redis.maxStaleSeconds });
  if (compiled.errors.length) {
    throw new BextError('BEXT_ERR_CONFIG_INVALID', `bext.config.json: $.plugins.cache.${compiled.errors.join('; ')}`);
  }
  const rules = compiled.rules;
  const fallbackRule = originRule(cfg.negativeTtl);
  const name = cfg.statusName;
  const instance = randomBytes(6).toString('hex');
  const secret = Buffer.from(randomBytes(24).toString('base64url'));
  const stripParam = paramStripper(cfg.key.stripParams);
  const allowedVary = new Set(cfg.key.varyHeaders);
  const keyHeaders = cfg.key.keyHeaders;
  const stripHeaders = cfg.key.stripHeaders.filter((h) => !keyHeaders.includes(h) && !allowedVary.has(h));
  const bypassCookies = cfg.key.bypassCookies.length ? new RegExp(`(?:^|;)\\s*(?:${cfg.key.bypassCookies.map((c) => c.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|')})=`) : null;
  const compressible = compressibleType(cfg.encodings.types ?? COMPRESSIBLE_TYPES);
  const codings = cfg.encodings.codings;
  const levels = cfg.encodings.levels;
  const tagHeader = cfg.tagHeader;
  const maxEntry = cfg.memory.maxEntryBytes;

  const stats: Stats = {
    hits: 0, stale: 0, misses: 0, collapsed: 0, bypass: 0, staleIfError: 0, renders: 0, stores: 0, notStored: {},
    hitCompressions: 0, fillCompressions: 0, l2Hits: 0, l2Errors: 0, evictions: 0, collapseTimeouts: 0, invalidations: 0, revalidations: 0,
  };
  const flushed: Record<string, number> = {};

  const l1 = new LRUCache<string, LiveEntry>({
    maxSize: cfg.memory.maxBytes,
    maxEntrySize: Math.max(maxEntry * 4, 1 << 20),
    sizeCalculation: (e) => e.size,
    dispose: (_v, _k, reason) => {
      if (reason === 'evict') stats.evictions++;
    },
  });
  /** Primary key → the request headers its stored response varies on (a Map: read on every request, where an LRU's bookkeeping shows). */
  const varyMap = new Map<string, string[]>();
  const varyIndex = {
    get: (k: string) => varyMap.get(k),
    delete: (k: string) => varyMap.delete(k),
    set(k: string, v: string[]) {
      if (varyMap.size >= 100_000 && !varyMap.has(k)) varyMap.delete(varyMap.keys().next().value!);
      varyMap.set(k, v);
    },
  };
  /** Keys whose last answer was uncacheable: until then (performance.now()), requests do not queue behind each other. */
  const passUntil = new LRUCache<string, number>({ max: 10_000 });
  const fills = new Map<string, Promise<FillResult>>();
  const revalidating = new Set<string>();

  // Invalidation state: tag → latest timestamp; `epoch` moves whenever either map does.
  const hard = new Map<string, number>();
  const soft = new Map<string, number>();
  let epoch = 0;

  const now = () => Date.now();
  let metricsOff = false;

  // ------------------------------------------------------------ Redis tier
  const waiters = new Map<string, Set<(ev: 'filled' | 'pass') => void>>();
  let redisDetail = '';
  let l2: L2 | null = null;
  if (cfg.redis.url) {
    l2 = new L2({
      url: cfg.redis.url,
      // Each app environment's instance keeps its own namespace in Redis.
      prefix: appNamespace(cfg.redis.keyPrefix, host.kernel?.app),
      timeoutMs: cfg.redis.timeoutMs,
      instance,
      logMaxLen: cfg.redis.logMaxLen,
      onEvent: (e: Event) => {
        if (e.type === 'inv') applyInvalidation(e.inv.tags, e.inv.mode, e.inv.ts);
        else for (const w of waiters.get(e.key) ?? []) w(e.type);
      },
      onLog: (invs: Invalidation[]) => {
        for (const inv of invs) applyInvalidation(inv.tags, inv.mode, inv.ts);
      },
      onState: (up, detail) => {
        redisDetail = detail;
        host.kernel?.setDegraded(up ? null : detail);
        safeMetric('redis_up', up ? 1 : 0, {}, 'gauge');
        host.log(up ? 'info' : 'warn', up ? 'cache reached redis: L2, fill locks and invalidation fan-out are on' : 'cache cannot reach redis: serving from memory only until it is back', up ? {} : { detail });
      },
    });
    await l2.ready(Math.max(1000, cfg.redis.timeoutMs * 8));
  }
  const l2Failed = (e: unknown) => {
    stats.l2Errors++;
    l2?.failed(e);
  };

  function safeMetric(metric: string, value: number, labels: Record<string, string>, kind: 'counter' | 'gauge'): void {
    if (metricsOff) return;
    try {
      host.metric(metric, value, labels, kind);
    } catch (e) {
      // Without the metrics grant every call would fail the same way: say so once and stop.
      metricsOff = true;
      host.log('warn', 'cache metrics are off: bext_metric failed', { metric, error: (e as Error).message });
    }
  }

  const flushMetrics = () => {
    const delta = (k: string, v: number) => {
      const d = v - (flushed[k] ?? 0);
      flushed[k] = v;
      return d;
    };
    const results: [string, number][] = [['hit', stats.hits], ['stale', stats.stale], ['miss', stats.misses], ['collapsed', stats.collapsed], ['bypass', stats.bypass], ['stale_if_error', stats.staleIfError]];
    for (const [r, v] of results) {
      const d = delta(`r:${r}`, v);
      if (d) safeMetric('requests_total', d, { result: r }, 'counter');
    }
    for (const [r, v] of Object.entries(stats.notStored)) {
      const d = delta(`ns:${r}`, v);
      if (d) safeMetric('not_stored_total', d, { reason: r }, 'counter');
    }
    const simple: [string, number][] = [
      ['renders_total', stats.renders], ['stores_total', stats.stores], ['hit_compressions_total', stats.hitCompressions],
      ['fill_compressions_total', stats.fillCompressions], ['l2_hits_total', stats.l2Hits], ['l2_errors_total', stats.l2Errors],
      ['evictions_total', stats.evictions], ['collapse_timeouts_total', stats.collapseTimeouts], ['invalidations_total', stats.invalidations],
      ['revalidations_total', stats.revalidations],
    ];
    for (const [m, v] of simple) safeMetric(m, delta(m, v), {}, 'counter');
    safeMetric('memory_bytes', l1.calculatedSize, {}, 'gauge');
    safeMetric('memory_entries', l1.size, {}, 'gauge');
    if (l2) safeMetric('redis_up', l2.up ? 1 : 0, {}, 'gauge');
  };

  const metricTimer = setInterval(flushMetrics, 1000);
  metricTimer.unref();
  const syncTimer = l2
    ? setInterval(() => {
        if (l2!.up) l2!.sync().catch(l2Failed);
        else {
          if (redisDetail) host.kernel?.setDegraded(redisDetail);
          l2!.probe().catch(() => undefined);
        }
      }, cfg.redis.syncIntervalMs)
    : null;
  syncTimer?.unref();

  // ----------------------------------------------------------- invalidation
  function tagState(e: LiveEntry): 'ok' | 'soft' | 'hard' {
    if (e.checkedEpoch === epoch) return e.tagState;
    let st: 'ok' | 'soft' | 'hard' = 'ok';
    for (const t of e.tags) {
      const h = hard.get(t);
      if (h !== undefined && h >= e.storedAt) {
        st = 'hard';
        break;
      }
      const s = soft.get(t);
      if (s !== undefined && s >= e.storedAt) st = 'soft';
    }
    e.checkedEpoch = epoch;
    e.tagState = st;
    return st;
  }

  /** Applies an invalidation to this instance; returns how many entries a hard one dropped from memory. */
  function applyInvalidation(tags: string[], mode: 'soft' | 'hard', ts: number): number {
    const map = mode === 'hard' ? hard : soft;
    let changed = false;
    for (const t of tags) {
      if ((map.get(t) ?? -1) < ts) {
        map.set(t, ts);
        changed = true;
      }
    }
    if (!changed) return 0;
    epoch++;
    if (mode !== 'hard') return 0;
    const drop: string[] = [];
    for (const [k, e] of l1.entries()) if (tagState(e) === 'hard') drop.push(k);
    for (const k of drop) l1.delete(k);
    return drop.length;
  }

  /** Invalidates here, in Redis and on every other instance, and tells `system/cache`. */
  async function invalidate(tags: string[], mode: 'soft' | 'hard', ts = now(), why = 'api'): Promise<{ dropped: number; shared: boolean }> {
    stats.invalidations++;
    const dropped = applyInvalidation(tags, mode, ts);
    const shared = l2 ? await l2.invalidate({ tags, mode, ts, origin: instance }) : false;
    host.publish('system/cache', { action: mode === 'hard' ? 'purge' : 'stale', tags, mode, ts, why, instance }).catch((e: unknown) => {
      host.log('warn', 'cache purge not published to system/cache', { error: (e as Error).message });
    });
    return { dropped, shared };
  }

  // ------------------------------------------------------------------ keys
  const prefs = new Map<string, EncodingPreference>();
  function prefFor(h: string | string[] | undefined): EncodingPreference {
    const k = h === undefined ? '' : Array.isArray(h) ? h.join(',') : h;
    let p = prefs.get(k);
    if (!p) {
      p = acceptEncoding(h, codings);
      if (prefs.size < 256) prefs.set(k, p);
    }
    return p;
  }

  function ruleFor(hostName: string, path: string): Rule {
    for (const r of rules) if (r.match(hostName, path)) return r;
    return fallbackRule;
  }

  /** Resolves a request to its rule and primary key, or to the reason it bypasses the cache. */
  function classify(req: TrustedRequest): Lookup | string {
    const path = normalisePath(req.path);
    if (path === null) return 'uri';
    const h = req.headers;
    if (bypassCookies && h.cookie !== undefined && bypassCookies.test(one(h.cookie)!)) return 'cookie';
    const rule = ruleFor(req.host, path);
    if (rule.mode === 'ssr') return 'rule-ssr';
    const q = normaliseQuery(req.query, stripParam);
    const tenant = typeof req.ctx.tenant === 'string' ? req.ctx.tenant : '';
    let primary = `${req.scheme}://${req.host}${path}?${q.key}\n${tenant}`;
    for (const kh of keyHeaders) primary += `\n${kh}=${normaliseHeaderValue(h[kh])}`;
    let force = false;
    const fill = h[FILL_HEADER];
    if (typeof fill === 'string') {
      const given = Buffer.from(fill);
      force = given.length === secret.length && timingSafeEqual(given, secret);
    }
    if (!force && cfg.honorRequestNoCache && (/no-cache/i.test(one(h['cache-control']) ?? '') || /no-cache/i.test(one(h.pragma) ?? ''))) force = true;
    return { rule, primary, scheme: req.scheme, host: req.host, path, renderQuery: q.render, tenant, hasAuth: h.authorization !== undefined, force };
  }

  function fullKey(c: Lookup, req: TrustedRequest, fields: readonly string[] | undefined): string {
    if (!fields || fields.length === 0) return c.primary;
    let k = c.primary;
    for (const f of fields) k += `\n${f}=${normaliseHeaderValue(req.headers[f])}`;
    return k;
  }

  function cacheStatus(stored: Headers, ours: string): string {
    const up = one(stored['cache-status']);
    return up ? `${up}, ${ours}` : ours;
  }

  // ----------------------------------------------------------- freshness
  function ageMs(e: LiveEntry, t: number): number {
    return e.initialAge * 1000 + Math.max(0, t - e.storedAt);
  }

  /** fresh; swr (serve stale, revalidate behind); expired (render, stale usable on error); gone. */
  function state(e: LiveEntry, t: number): 'fresh' | 'swr' | 'expired' | 'gone' {
    const ts = tagState(e);
    if (ts === 'hard') return 'gone';
    const age = ageMs(e, t);
    if (ts === 'ok' && age < e.freshMs) return 'fresh';
    if (e.mustRevalidate) return 'expired';
    const staleFor = ts === 'soft' ? Math.max(0, age - e.freshMs) : age - e.freshMs;
    // A soft purge marks an entry stale: it is served once more while its replacement renders.
    if (ts === 'soft' || staleFor < e.swrMs) return 'swr';
    if (staleFor < e.sieMs) return 'expired';
    return 'gone';
  }

  function usableOnError(e: LiveEntry, t: number): boolean {
    if (e.mustRevalidate || tagState(e) === 'hard') return false;
    const staleFor = ageMs(e, t) - e.freshMs;
    return staleFor < Math.max(e.sieMs, e.swrMs);
  }

  function lookupL1(c: Lookup, req: TrustedRequest): LiveEntry | undefined {
    const e = l1.get(fullKey(c, req, varyIndex.get(c.primary)));
    if (!e) return undefined;
    if (c.hasAuth && !e.authOk) return undefined;
    return e;
  }

  async function lookupL2(c: Lookup, req: TrustedRequest): Promise<LiveEntry | null> {
    if (!l2?.up) return null;
    try {
      const ph = hashKey(c.primary);
      const [buf, vary] = await l2.getWithVary(ph);
      let raw = buf;
      if (vary) {
        const fields = vary.split(',');
        varyIndex.set(c.primary, fields);
        const k = fullKey(c, req, fields);
        raw = k === c.primary ? buf : await l2.get(hashKey(k));
      }
      if (!raw) return null;
      const e = unpackEntry(raw);
      if (!e) return null;
      if (tagState(e) === 'hard') {
        l2.del(hashKey(e.key)).catch(l2Failed);
        return null;
      }
      if (c.hasAuth && !e.authOk) return null;
      return e;
    } catch (err) {
      l2Failed(err);
      return null;
    }
  }

  function putL1(e: LiveEntry): void {
    e.size = sizeOf(e);
    if (e.vary.length) varyIndex.set(e.primary, e.vary);
    else varyIndex.delete(e.primary);
    l1.set(e.key, e);
  }

  // --------------------------------------------------------------- answers
  function headFor(e: LiveEntry, coding: ContentCoding | ''): Headers {
    let h = e.prebuilt.get(coding);
    if (!h) {
      h = { ...e.headers };
      h.etag = coding && !e.etag.startsWith('W/') ? `W/${e.etag}` : e.etag;
      if (e.lastModified) h['last-modified'] = e.lastModified;
      if (e.compressible) h.vary = varyWith(h.vary, 'Accept-Encoding');
      if (coding) h['content-encoding'] = coding;
      // Per-hit fields exist in the template so a hit only overwrites them: adding keys to a
      // freshly spread object costs microseconds in V8, overwriting costs nanoseconds.
      h.age = '0';
      h['cache-status'] = '';
      e.prebuilt.set(coding, h);
    }
    return h;
  }

  function notModified(e: LiveEntry, c: Lookup | null, req: TrustedRequest): boolean {
    if (e.status !== 200) return false;
    const inm = c?.inm ?? req.headers['if-none-match'];
    if (inm !== undefined) return noneMatch(inm, e.etag);
    const ims = one(c?.ims ?? req.headers['if-modified-since']);
    if (ims === undefined || !e.lastModified) return false;
    const since = Date.parse(ims);
    const lm = Date.parse(e.lastModified);
    return !Number.isNaN(since) && !Number.isNaN(lm) && lm <= since;
  }

  /** The response for an entry: negotiated variant (made now if missing), 304, Age and Cache-Status. */
  function respond(e: LiveEntry, c: Lookup | null, req: TrustedRequest, status: string, isHit: boolean): ResponseData | Promise<ResponseData> {
    let coding: ContentCoding | '' = '';
    if (e.compressible) {
      const pref = prefFor(req.headers['accept-encoding']);
      for (const cd of pref.codings) {
        if (e.variants[cd]) {
          coding = cd;
          break;
        }
      }
      const want = pref.codings[0];
      if (coding === '' && want !== undefined && req.method !== 'HEAD') {
        return addVariant(e, want, isHit).then(() => respond(e, c, req, status, isHit), () => build(e, c, req, status, ''));
      }
    }
    return build(e, c, req, status, coding);
  }

  function build(e: LiveEntry, c: Lookup | null, req: TrustedRequest, status: string, cd: ContentCoding | ''): ResponseData {
    const head = headFor(e, cd);
    const age = String(Math.floor(ageMs(e, now()) / 1000));
    const cs = cacheStatus(e.headers, status);
    if (notModified(e, c, req)) {
      const h: Headers = { age, 'cache-status': cs };
      for (const k of HEADERS_304) if (head[k] !== undefined) h[k] = head[k]!;
      return { status: 304, headers: h };
    }
    const headers = { ...head };
    headers.age = age;
    headers['cache-status'] = cs;
    return { status: e.status, headers, body: cd ? e.variants[cd]! : e.body };
  }

  /** Variants being made, so that concurrent requests for the same missing one compress once. */
  const making = new WeakMap<LiveEntry, Map<ContentCoding, Promise<void>>>();
  function addVariant(e: LiveEntry, coding: ContentCoding, isHit: boolean): Promise<void> {
    let m = making.get(e);
    if (!m) making.set(e, (m = new Map()));
    let p = m.get(coding);
    if (!p) {
      p = makeVariant(e, coding, isHit).finally(() => m!.delete(coding));
      m.set(coding, p);
    }
    return p;
  }

  async function makeVariant(e: LiveEntry, coding: ContentCoding, isHit: boolean): Promise<void> {
    if (isHit) stats.hitCompressions++;
    else stats.fillCompressions++;
    const out = await encode(coding, e.body, levels[coding]);
    if (out.length >= e.body.length) {
      // Incompressible after all: serve identity to everyone from now on.
      e.compressible = false;
      e.prebuilt.clear();
    } else e.variants[coding] = out;
    if (l1.get(e.key) === e) putL1(e);
    if (l2?.up) l2.set(hashKey(e.key), packEntry(e), l2Ttl(e)).catch(l2Failed);
  }

  function ttlParam(e: LiveEntry, t: number): string {
    if (e.freshMs === Number.POSITIVE_INFINITY) return '';
    return `; ttl=${Math.floor((e.freshMs - ageMs(e, t)) / 1000)}`;
  }

  /**
   * Answers from an entry found in L1 or L2, or null when it is too old to
   * serve without a render.
   */
  function fromStore(e: LiveEntry, c: Lookup, req: TrustedRequest, next: RenderNext, tier: 'l1' | 'l2', collapsed: boolean): ResponseData | Promise<ResponseData> | null {
    const t = now();
    const st = state(e, t);
    const detail = tier === 'l2' ? '; detail=l2' : '';
    if (st === 'fresh') {
      if (collapsed) {
        stats.collapsed++;
        return respond(e, c, req, `${name}; fwd=miss; collapsed`, false);
      }
      stats.hits++;
      return respond(e, c, req, `${name}; hit${ttlParam(e, t)}${detail}`, true);
    }
    if (st === 'swr') {
      stats.stale++;
      const r = respond(e, c, req, `${name}; hit${ttlParam(e, t)}; detail=stale-while-revalidate`, true);
      // A HEAD render has no body to store; the next GET revalidates.
      if (req.method === 'GET') revalidateInBackground(c, req, next, e);
      return r;
    }
    if (st === 'gone') l1.delete(e.key);
    return null;
  }

  function passResponse(res: ResponseData, status: string): ResponseData {
    const h: Headers = { ...(res.headers ?? {}) };
    delete h['surrogate-control'];
    if (!cfg.exposeTagHeader) delete h[tagHeader];
    h['cache-status'] = cacheStatus(h, status);
    return { status: res.status, headers: h, body: res.body, bodyBase64: res.bodyBase64 };
  }

  async function bypass(req: TrustedRequest, next: RenderNext, reason: string): Promise<ResponseData> {
    stats.bypass++;
    return passResponse(await next(), `${name}; fwd=bypass; detail=${reason}`);
  }

  // ------------------------------------------------------------------ fills
  function stripForRender(c: Lookup, req: TrustedRequest): void {
    const h = req.headers;
    if (c.inm === undefined && h['if-none-match'] !== undefined) c.inm = h['if-none-match'];
    if (c.ims === undefined && h['if-modified-since'] !== undefined) c.ims = h['if-modified-since'];
    for (const k of COND_HEADERS) delete h[k];
    for (const k of stripHeaders) delete h[k];
    delete h[FILL_HEADER];
    if (req.query !== c.renderQuery) (req as { query: string }).query = c.renderQuery;
  }

  function l2Ttl(e: LiveEntry): number | null {
    const life = e.freshMs + Math.max(e.swrMs, e.sieMs) - e.initialAge * 1000;
    if (!Number.isFinite(life)) return null;
    return Math.max(1000, life + 60_000);
  }

  function tagsFor(c: Lookup, req: TrustedRequest, res: ResponseData): string[] {
    const tags = ['*', `host:${c.host}`, `path:${c.path}`, `url:${c.host}${c.path}`];
    if (c.tenant) tags.push(`tenant:${c.tenant}`);
    for (const t of c.rule.tags) tags.push(`tag:${t}`);
    const th = one(res.headers?.[tagHeader]);
    if (th) for (const t of th.split(/[\s,]+/)) if (t) tags.push(`tag:${t}`);
    const ct = req.ctx.cacheTags;
    if (Array.isArray(ct)) for (const t of ct) if (typeof t === 'string' && t) tags.push(`tag:${t}`);
    return [...new Set(tags)];
  }

  function notStored(reason: string): void {
    stats.notStored[reason] = (stats.notStored[reason] ?? 0) + 1;
  }

  /** Renders through `next()` and stores what may be stored. Never rejects. */
  async function renderAndStore(c: Lookup, req: TrustedRequest, next: RenderNext, collapseKey: string, stale: LiveEntry | null): Promise<FillResult> {
    stripForRender(c, req);
    stats.renders++;
    let res: ResponseData;
    try {
      res = await next();
    } catch (e) {
      res = json(503, { error: 'BEXT_ERR_PLUGIN_FAILED', message: `render failed: ${(e as Error)?.message ?? String(e)}` });
    }
    const t = now();
    if (res.status >= 500) {
      if (stale && usableOnError(stale, t)) return { kind: 'stale', entry: stale, fwdStatus: res.status };
      const read = await readBody(res, maxEntry).catch(() => ({ buf: Buffer.alloc(0) }));
      if ('over' in read) return { kind: 'pass', res: { ...res, body: read.over }, reason: 'too-large' };
      notStored('status');
      return { kind: 'shared', res: { ...res, body: read.buf, bodyBase64: undefined } };
    }
    const headers = res.headers ?? {};
    const policy = storePolicy(c.rule, res.status, headers, { hasAuthorization: c.hasAuth, allowedVary, now: t });
    const pass = (reason: string, r: ResponseData): FillResult => {
      notStored(reason);
      passUntil.set(collapseKey, performance.now() + cfg.passSeconds * 1000);
      if (l2?.up) l2.notify('pass', hashKey(collapseKey)).catch(l2Failed);
      return { kind: 'pass', res: r, reason };
    };
    if (typeof policy === 'string') return pass(policy, res);
    const read = await readBody(res, maxEntry);
    if ('over' in read) return pass('too-large', { ...res, body: read.over, bodyBase64: undefined });
    let body = read.buf;
    const stored: Headers = {};
    for (const k in headers) {
      const lk = k.toLowerCase();
      // ETag and Last-Modified live on the entry (generated when absent); deleting them later would slow every copy of this object.
      if (NOT_STORED_HEADERS.includes(lk) || policy.dropFields.includes(lk) || lk === 'etag' || lk === 'last-modified') continue;
      if (lk === tagHeader && !cfg.exposeTagHeader) continue;
      stored[lk] = headers[k]!;
    }
    const variants: LiveEntry['variants'] = {};
    const ce = one(headers['content-encoding']);
    if (ce && ce.toLowerCase() !== 'identity') {
      let plain: Buffer | null = null;
      try {
        plain = await decode(ce, body, maxEntry);
      } catch {
        plain = null;
      }
      if (!plain) return pass('encoding', { ...res, body, bodyBase64: undefined });
      const cd = ce.trim().toLowerCase() as ContentCoding;
      if (codings.includes(cd)) variants[cd] = body;
      body = plain;
    }
    const cc = one(headers['cache-control']) ?? '';
    const isCompressible = compressible(stored['content-type']) && body.length >= cfg.encodings.minBytes && !/no-transform/i.test(cc);
    const fields = varyFields(headers).filter((f) => f !== 'accept-encoding');
    const key = fullKey(c, req, fields);
    const varyValues: Record<string, string> = {};
    for (const f of fields) varyValues[f] = one(req.headers[f]) ?? '';
    const origEtag = one(headers.etag);
    const entry = live({
      key,
      primary: c.primary,
      url: `${c.scheme}://${c.host}${c.path}${c.renderQuery ? `?${c.renderQuery}` : ''}`,
      host: c.host,
      path: c.path,
      status: res.status,
      headers: stored,
      body,
      variants: isCompressible ? variants : {},
      etag: origEtag ?? etagOf(body),
      lastModified: one(headers['last-modified']) ?? new Date(t).toUTCString(),
      storedAt: t,
      initialAge: policy.initialAge,
      freshMs: policy.freshMs,
      swrMs: policy.swrMs,
      sieMs: policy.sieMs,
      mustRevalidate: policy.mustRevalidate,
      authOk: policy.authOk,
      negative: policy.negative,
      compressible: isCompressible,
      tags: tagsFor(c, req, res),
      vary: fields,
      varyValues,
      rule: c.rule.name,
    });
    // Same bytes as the stale copy: keep its variants instead of compressing again.
    if (stale && stale.etag === entry.etag && stale.body.equals(body)) Object.assign(entry.variants, stale.variants);
    if (isCompressible && req.method !== 'HEAD') {
      const want = prefFor(req.headers['accept-encoding']).codings.filter((cd) => !entry.variants[cd]);
      await Promise.all(want.map(async (cd) => {
        stats.fillCompressions++;
        const out = await encode(cd, body, levels[cd]);
        if (out.length < body.length) entry.variants[cd] = out;
        else entry.compressible = false;
      }));
      if (!entry.compressible) entry.variants = {};
    }
    stats.stores++;
    putL1(entry);
    passUntil.delete(collapseKey);
    if (l2?.up) {
      try {
        const ttl = l2Ttl(entry);
        await l2.set(hashKey(entry.key), packEntry(entry), ttl);
        await l2.setVary(hashKey(c.primary), fields, ttl);
        await l2.notify('filled', hashKey(collapseKey));
      } catch (e) {
        l2Failed(e);
      }
    }
    return { kind: 'stored', entry, how: 'filled', hadStale: stale !== null || c.expired === true, fwdStatus: res.status };
  }

  /** Waits for another instance that holds the fill lock; resolves to its entry, or null to render here. */
  async function waitRemote(c: Lookup, req: TrustedRequest, lockHash: string): Promise<LiveEntry | null> {
    const deadline = performance.now() + Math.min(cfg.collapseTimeoutMs, cfg.redis.lockTtlMs);
    let delay = 10;
    while (performance.now() < deadline) {
      const ev = await new Promise<'filled' | 'pass' | 'tick'>((resolve) => {
        let set = waiters.get(lockHash);
        if (!set) waiters.set(lockHash, (set = new Set()));
        const done = (v: 'filled' | 'pass' | 'tick') => {
          clearTimeout(timer);
          set!.delete(done);
          if (set!.size === 0) waiters.delete(lockHash);
          resolve(v);
        };
        const timer = setTimeout(() => done('tick'), Math.min(delay, Math.max(1, deadline - performance.now())));
        set.add(done);
      });
      if (ev === 'pass' || !l2?.up) return null;
      const e = await lookupL2(c, req);
      if (e && state(e, now()) === 'fresh') {
        putL1(e);
        return e;
      }
      if (ev === 'filled') return null;
      try {
        if (!(await l2.locked(lockHash))) return null;
      } catch (err) {
        l2Failed(err);
        return null;
      }
      delay = Math.min(delay * 2, 200);
    }
    stats.collapseTimeouts++;
    return null;
  }

  /** The leader's work for a key: L2, then (under the cross-instance lock) a render. */
  async function lead(c: Lookup, req: TrustedRequest, next: RenderNext, collapseKey: string, stale: LiveEntry | null, checkL2: boolean): Promise<FillResult> {
    try {
      if (checkL2 && l2?.up) {
        const e = await lookupL2(c, req);
        if (e) {
          const st = state(e, now());
          if (st === 'fresh' || st === 'swr') {
            stats.l2Hits++;
            putL1(e);
            return { kind: 'stored', entry: e, how: 'l2' };
          }
          c.expired = true;
          if (st === 'expired' && (!stale || e.storedAt > stale.storedAt)) stale = e;
        }
      }
      let lockHash: string | null = null;
      if (l2?.up) {
        lockHash = hashKey(collapseKey);
        let got = false;
        try {
          got = await l2.lock(lockHash, cfg.redis.lockTtlMs);
        } catch (e) {
          l2Failed(e);
          lockHash = null;
        }
        if (lockHash && !got) {
          const e = await waitRemote(c, req, lockHash);
          if (e) return { kind: 'stored', entry: e, how: 'remote' };
          lockHash = null;
        }
      }
      try {
        return await renderAndStore(c, req, next, collapseKey, stale);
      } finally {
        if (lockHash) l2!.unlock(lockHash).catch(l2Failed);
      }
    } catch (e) {
      host.log('error', 'cache fill failed', { error: (e as Error)?.message ?? String(e), url: c.path });
      return { kind: 'shared', res: json(503, { error: 'BEXT_ERR_PLUGIN_FAILED', message: 'the cache could not complete this render' }) };
    }
  }

  /** Turns a fill result into this request's response. `mine` is whether this request led the fill. */
  function answerFill(r: FillResult, c: Lookup, req: TrustedRequest, next: RenderNext, mine: boolean): ResponseData | Promise<ResponseData> | null {
    switch (r.kind) {
      case 'stored': {
        if (!mine || r.how !== 'filled') {
          // Look up this request's own key: a response that varies may not be the one it needs.
          const e = lookupL1(c, req);
          if (!e) return null;
          const how = r.how === 'l2' && mine ? 'l2' : 'l1';
          return fromStore(e, c, req, next, how, !mine || r.how === 'remote');
        }
        stats.misses++;
        const fwd = r.hadStale ? 'stale' : 'miss';
        return respond(r.entry, c, req, `${name}; fwd=${fwd}; fwd-status=${r.fwdStatus ?? r.entry.status}; stored`, false);
      }
      case 'stale': {
        stats.staleIfError++;
        return respond(r.entry, c, req, `${name}; fwd=stale; fwd-status=${r.fwdStatus}; detail=stale-if-error`, false);
      }
      case 'shared': {
        if (mine) stats.misses++;
        else stats.collapsed++;
        return passResponse(r.res, `${name}; fwd=miss; fwd-status=${r.res.status}${mine ? '' : '; collapsed'}`);
      }
      case 'pass':
        if (!mine) return null;
        stats.misses++;
        return passResponse(r.res, `${name}; fwd=miss; fwd-status=${r.res.status}; detail=${r.reason}`);
    }
  }

  /** L1 missed or was too old: collapse onto a fill in flight, or lead one. */
  async function slow(c: Lookup, req: TrustedRequest, next: RenderNext, stale: LiveEntry | null, attempt: number): Promise<ResponseData> {
    if (req.method === 'HEAD') {
      const e = await lookupL2(c, req);
      const r = e && fromStore(e, c, req, next, 'l2', false);
      if (r) {
        putL1(e);
        return r;
      }
      return bypass(req, next, 'head-miss');
    }
    const collapseKey = fullKey(c, req, varyIndex.get(c.primary));
    const pass = (passUntil.get(collapseKey) ?? 0) > performance.now();
    if (pass) {
      // Lately uncacheable: render at once, no lookup, no lock (the answer is still stored if it became cacheable).
      return answerFill(await renderAndStore(c, req, next, collapseKey, stale), c, req, next, true)!;
    }
    const alone = c.hasAuth;
    const inflight = alone ? undefined : fills.get(collapseKey);
    if (inflight) {
      const r = await raceTimeout(inflight, cfg.collapseTimeoutMs);
      if (r === TIMEOUT) {
        stats.collapseTimeouts++;
      } else {
        const out = answerFill(r, c, req, next, false);
        if (out) return out;
        if (r.kind === 'stored' && attempt < 2) return slow(c, req, next, stale, attempt + 1);
      }
      // Uncacheable for the leader, a different variant, or a leader too slow: render this one alone.
      const own = await renderAndStore(c, req, next, collapseKey, stale);
      return answerFill(own, c, req, next, true)!;
    }
    const p = lead(c, req, next, collapseKey, stale, !c.force);
    if (!alone) fills.set(collapseKey, p);
    let r: FillResult;
    try {
      r = await p;
    } finally {
      if (fills.get(collapseKey) === p) fills.delete(collapseKey);
    }
    const out = answerFill(r, c, req, next, true);
    if (out) return out;
    if (attempt < 2) return slow(c, req, next, stale, attempt + 1);
    return passResponse(await next(), `${name}; fwd=miss`);
  }

  function revalidateInBackground(c: Lookup, req: TrustedRequest, next: RenderNext, e: LiveEntry): void {
    const key = e.key;
    if (revalidating.has(key) || fills.has(key)) return;
    revalidating.add(key);
    stats.revalidations++;
    const p = (async (): Promise<FillResult> => {
      const newer = await lookupL2(c, req);
      if (newer && newer.storedAt > e.storedAt && state(newer, now()) === 'fresh') {
        putL1(newer);
        return { kind: 'stored', entry: newer, how: 'l2' };
      }
      return lead(c, req, next, key, e, false);
    })();
    fills.set(key, p);
    p.then(
      (r) => {
        if (r.kind === 'stale') host.log('warn', 'background revalidation failed; the stale copy stays', { url: e.url, status: r.fwdStatus });
      },
      (err: unknown) => host.log('error', 'background revalidation failed', { url: e.url, error: String((err as Error)?.message ?? err) }),
    ).finally(() => {
      revalidating.delete(key);
      if (fills.get(key) === p) fills.delete(key);
    });
  }

  // ------------------------------------------------------- admin: purge etc.
  interface InvalidateBody {
    paths?: string[];
    tags?: string[];
    hosts?: string[];
    host?: string;
    tenant?: string;
    all?: boolean;
    mode?: 'soft' | 'hard';
  }

  async function readJson(req: TrustedRequest): Promise<InvalidateBody | string> {
    let body: Buffer;
    try {
      body = await req.readBody();
    } catch (e) {
      return (e as Error).message;
    }
    if (body.length === 0) return {};
    try {
      const v = JSON.parse(body.toString('utf8')) as unknown;
      if (!v || typeof v !== 'object' || Array.isArray(v)) return 'the body must be a JSON object';
      return v as InvalidateBody;
    } catch (e) {
      return `the body is not JSON: ${(e as Error).message}`;
    }
  }

  function tagsOf(b: InvalidateBody): string[] | string {
    const out: string[] = [];
    const strings = (v: unknown, what: string): string[] | string => {
      if (v === undefined) return [];
      if (!Array.isArray(v) || v.some((x) => typeof x !== 'string' || x === '')) return `"${what}" must be an array of non-empty strings`;
      return v as string[];
    };
    const paths = strings(b.paths, 'paths');
    const tags = strings(b.tags, 'tags');
    const hosts = strings(b.hosts, 'hosts');
    for (const x of [paths, tags, hosts]) if (typeof x === 'string') return x;
    if (b.host !== undefined && typeof b.host !== 'string') return '"host" must be a string';
    if (b.mode !== undefined && b.mode !== 'soft' && b.mode !== 'hard') return '"mode" must be "soft" or "hard"';
    for (const p of paths as string[]) {
      const n = normalisePath(p.split('?')[0]!);
      if (n === null) return `path ${JSON.stringify(p)} must start with /`;
      out.push(b.host ? `url:${b.host.toLowerCase()}${n}` : `path:${n}`);
    }
    for (const t of tags as string[]) out.push(`tag:${t}`);
    for (const h of hosts as string[]) out.push(`host:${h.toLowerCase()}`);
    if (typeof b.tenant === 'string' && b.tenant) out.push(`tenant:${b.tenant}`);
    if (b.all === true) out.push('*');
    if (out.length === 0) return 'name something to invalidate: paths, tags, hosts, tenant or all';
    return out;
  }

  async function invalidateRoute(req: TrustedRequest): Promise<ResponseData> {
    const b = await readJson(req);
    if (typeof b === 'string') return badRequest(b);
    const tags = tagsOf(b);
    if (typeof tags === 'string') return badRequest(tags);
    const mode = b.mode ?? 'hard';
    const r = await invalidate(tags, mode);
    return json(200, { ok: true, mode, tags, dropped: r.dropped, shared: r.shared });
  }

  const loopbackAgent = new Agent({ connections: cfg.revalidateConcurrency * 2, connect: { rejectUnauthorized: false } });

  /** Re-renders a URL by requesting it from this server with the fill secret: the render runs through the whole chain, as for a client. */
  async function refill(req: TrustedRequest, url: URL, headers: Record<string, string>): Promise<{ url: string; status: number; cacheStatus?: string; error?: string }> {
    const sock = req.raw.socket;
    const addr = sock.localAddress ?? '127.0.0.1';
    const origin = `${url.protocol}//${addr.includes(':') ? `[${addr}]` : addr}:${sock.localPort}`;
    try {
      const r = await httpRequest(`${origin}${url.pathname}${url.search}`, {
        method: 'GET',
        headers: { ...headers, host: url.host, [FILL_HEADER]: secret.toString(), 'accept-encoding': codings.join(', ') },
        dispatcher: loopbackAgent,
        headersTimeout: cfg.collapseTimeoutMs + 5000,
        bodyTimeout: cfg.collapseTimeoutMs + 5000,
      });
      await r.body.dump();
      return { url: url.href, status: r.statusCode, cacheStatus: one(r.headers['cache-status'] as string | string[] | undefined) };
    } catch (e) {
      return { url: url.href, status: 0, error: (e as Error).message };
    }
  }

  async function revalidateRoute(req: TrustedRequest): Promise<ResponseData> {
    const b = await readJson(req);
    if (typeof b === 'string') return badRequest(b);
    const tags = tagsOf(b);
    if (typeof tags === 'string') return badRequest(tags);
    const targets = new Map<string, Record<string, string>>();
    const hostName = (b.host ?? req.host).toLowerCase();
    for (const p of b.paths ?? []) targets.set(`${req.scheme}://${hostName}${p}`, {});
    // Entries this instance holds under the tags: their URLs, with the header values they vary on.
    const want = new Set(tags.filter((t) => !t.startsWith('path:') && !t.startsWith('url:')));
    if (want.size) {
      for (const e of l1.values()) {
        if (targets.size >= cfg.maxRevalidate) break;
        if (e.tags.some((t) => want.has(t))) targets.set(e.url, e.varyValues ?? {});
      }
    }
    // Entries stored before now are marked stale everywhere; the renders below replace them.
    await invalidate(tags, 'soft', now() - 1, 'revalidate');
    const list = [...targets].slice(0, cfg.maxRevalidate);
    const results: Awaited<ReturnType<typeof refill>>[] = [];
    let i = 0;
    const worker = async () => {
      while (i < list.length) {
        const [u, h] = list[i++]!;
        results.push(await refill(req, new URL(u), h));
      }
    };
    await Promise.all(Array.from({ length: Math.min(cfg.revalidateConcurrency, list.length) }, worker));
    return json(200, { ok: results.every((r) => r.status > 0 && r.status < 500), results });
  }

  function entryView(e: LiveEntry, t: number) {
    return {
      key: e.key,
      url: e.url,
      status: e.status,
      state: state(e, t),
      ageSeconds: Math.floor(ageMs(e, t) / 1000),
      freshSeconds: e.freshMs === Number.POSITIVE_INFINITY ? null : e.freshMs / 1000,
      swrSeconds: e.swrMs / 1000,
      staleIfErrorSeconds: e.sieMs / 1000,
      storedAt: new Date(e.storedAt).toISOString(),
      bytes: e.body.length,
      variants: Object.fromEntries(Object.entries(e.variants).map(([k, v]) => [k, v!.length])),
      etag: e.etag,
      tags: e.tags.filter((x) => x.startsWith('tag:')).map((x) => x.slice(4)),
      vary: e.vary,
      rule: e.rule,
    };
  }

  async function inspectRoute(req: TrustedRequest): Promise<ResponseData> {
    const sub = req.path.slice('/__bext/cache/'.length);
    const params = new URLSearchParams(req.query);
    if (req.method === 'GET' && (sub === 'stats' || sub === '')) {
      flushMetrics();
      return json(200, {
        instance,
        memory: { entries: l1.size, bytes: l1.calculatedSize, maxBytes: cfg.memory.maxBytes },
        redis: l2 ? { up: l2.up, detail: redisDetail || undefined } : null,
        tags: { hard: hard.size, soft: soft.size },
        inflight: fills.size,
        ...stats,
      });
    }
    if (req.method === 'GET' && sub === 'entries') {
      const t = now();
      const prefix = params.get('prefix') ?? '';
      const tag = params.get('tag');
      const hostName = params.get('host');
      const limit = Math.min(Number(params.get('limit') ?? 100) || 100, 10_000);
      const out = [];
      for (const e of l1.values()) {
        if (out.length >= limit) break;
        if (prefix && !e.path.startsWith(prefix)) continue;
        if (hostName && e.host !== hostName) continue;
        if (tag && !e.tags.includes(`tag:${tag}`)) continue;
        out.push(entryView(e, t));
      }
      return json(200, { entries: out, total: l1.size });
    }
    if (req.method === 'GET' && sub === 'redis') {
      if (!l2) return json(404, { error: 'BEXT_ERR_NOT_FOUND', message: 'no redis is configured for the cache (plugins.cache.redis.url)' });
      try {
        return json(200, { up: l2.up, ...(await l2.info()) });
      } catch (e) {
        l2Failed(e);
        return json(503, { up: false, error: (e as Error).message });
      }
    }
    if ((req.method === 'POST' && sub === 'purge') || (req.method === 'DELETE' && sub === 'entries')) {
      if (req.method === 'DELETE') {
        const path = params.get('path');
        const body: InvalidateBody = path ? { paths: [path], host: params.get('host') ?? undefined } : { all: true };
        const tags = tagsOf(body);
        if (typeof tags === 'string') return badRequest(tags);
        const r = await invalidate(tags, 'hard', now(), 'inspect');
        return json(200, { ok: true, mode: 'hard', tags, dropped: r.dropped, shared: r.shared });
      }
      return invalidateRoute(req);
    }
    return json(404, { error: 'BEXT_ERR_NOT_FOUND', message: `no cache route ${req.method} ${req.path}`, routes: ['GET /__bext/cache/stats', 'GET /__bext/cache/entries?prefix=&host=&tag=&limit=', 'GET /__bext/cache/redis', 'POST /__bext/cache/purge', 'DELETE /__bext/cache/entries?path=&host='] });
  }

  const BYPASS_ROUTE = { setHeaders: { 'cache-status': `${name}; fwd=bypass; detail=route` } };
  const BYPASS_METHOD = { setHeaders: { 'cache-status': `${name}; fwd=method` } };

  /** RFC 9111 §4.4: a non-error answer to an unsafe method invalidates the target URI (and Location / Content-Location on the same host). */
  function invalidateAfterUnsafe(req: TrustedRequest, res: ResponseHead): void {
    const path = normalisePath(req.path);
    if (path === null || path === '/api/invalidate' || path === '/api/revalidate' || path.startsWith('/__bext/')) return;
    if (ruleFor(req.host, path).mode === 'ssr') return;
    const tags = [`url:${req.host}${path}`];
    for (const h of ['location', 'content-location']) {
      const v = one(res.headers[h]);
      if (!v) continue;
      try {
        const u = new URL(v, `${req.scheme}://${req.host}`);
        const p = normalisePath(u.pathname);
        if (u.hostname.toLowerCase() === req.host && p) tags.push(`url:${req.host}${p}`);
      } catch {
        // A malformed Location names nothing to invalidate.
      }
    }
    invalidate(tags, 'hard', now(), 'unsafe-method').catch((e: unknown) => host.log('warn', 'invalidation after an unsafe method failed', { error: String(e) }));
  }

  return {
    onRender(req: TrustedRequest, next: RenderNext): ResponseData | Promise<ResponseData> {
      const c = classify(req);
      if (typeof c === 'string') return bypass(req, next, c);
      let stale: LiveEntry | null = null;
      if (!c.force) {
        const e = lookupL1(c, req);
        if (e) {
          const r = fromStore(e, c, req, next, 'l1', false);
          if (r) return r;
          c.expired = true;
          if (usableOnError(e, now())) stale = e;
        }
      }
      return slow(c, req, next, stale, 0);
    },

    onResponse(req: TrustedRequest, res: ResponseHead): ResponseDecision {
      const m = req.method;
      if (m === 'GET' || m === 'HEAD') return res.headers['cache-status'] === undefined ? BYPASS_ROUTE : undefined;
      if (UNSAFE.has(m) && res.status < 400) invalidateAfterUnsafe(req, res);
      return res.headers['cache-status'] === undefined ? BYPASS_METHOD : undefined;
    },

    onRoute(req: TrustedRequest): Promise<ResponseData> {
      if (req.path === '/api/invalidate') return invalidateRoute(req);
      if (req.path === '/api/revalidate') return revalidateRoute(req);
      return inspectRoute(req);
    },

    async dispose() {
      clearInterval(metricTimer);
      if (syncTimer) clearInterval(syncTimer);
      flushMetrics();
      await loopbackAgent.close();
      await l2?.close();
    },
  };
});

/** The Redis key prefix of an app environment's cache instance (`bext:cache:` → `bext:cache:blog.staging:`). */
function appNamespace(prefix: string, app: { name: string; env: string } | undefined): string {
  return app ? `${prefix}${app.name}${app.env === 'production' ? '' : `.${app.env}`}:` : prefix;
}
