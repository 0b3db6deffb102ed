/**
 * React server rendering as an onRender leaf (priority 90, behind the cache
 * and static plugins): file routes from the site's pages/, rendered by a
 * pool of worker threads, with route rules handed to the cache plugin as
 * Surrogate-Control / Cache-Control / Cache-Tag headers.
 *
 * Zero-config: when the served folder has no pages/, every hook passes
 * through. When it has pages/ and no current build, the site is built at
 * start.
 */
import { availableParallelism } from 'node:os';
import { resolve } from 'node:path';
import { Readable } from 'node:stream';
import { LRUCache } from 'lru-cache';
import {
  BextError, definePlugin,
  type Headers, type HostApi, type RenderDecision, type RenderNext, type ResponseData, type TrustedRequest,
} from '../../plugin-api/index.js';
import { buildSite, defaultOutDir, isSite, readBuild, runtimeHash, sourcesMtime } from './build.js';
import { asset, ISLAND_JS, turboAsset, type Asset } from './client.js';
import { RenderPool, type PoolEvent, type RenderResult } from './pool.js';
import type { BuildManifest, RenderSettings, WorkerInit } from './protocol.js';
import { RouteTable } from './routes.js';

/** This plugin's section of bext.config.json, with defaults applied. */
export interface SsrConfig {
  site?: string;
  outDir?: string;
  autoBuild: 'stale' | 'missing' | 'never';
  workers: number;
  concurrency: number;
  maxQueue: number;
  queueTimeoutMs: number;
  renderTimeoutMs: number;
  stallMs: number;
  startTimeoutMs: number;
  heapLimitMb: number;
  rotation: { maxRequests: number; maxHeapMb: number; maxUptimeS: number };
  backoff: { initialMs: number; maxMs: number };
  memo: { maxEntries: number; maxBytes: number };
  defaultMode: RenderSettings['mode'];
  defaultRevalidate: number;
  staticRevalidate: number;
  staleIfError: number;
  maxStale: number;
  earlyHints: boolean;
  forwardHeaders: string[];
  staticBytes: number;
}

interface Active {
  manifest: BuildManifest;
  table: RouteTable;
  settings: RenderSettings[];
  islands: Record<string, RenderSettings>;
}

interface Counters {
  renders: Record<string, number>;
  memo: Record<string, { hit: number; miss: number; uncacheable: number }>;
  memoEntries: Map<number, { entries: number; bytes: number }>;
  hints: number;
  staticHits: number;
}

const ISLAND_PREFIX = '/__bext/island/';
const STREAM_PREFIX = '/api/ssr-stream';

function json(status: number, body: unknown, extra: Headers = {}): ResponseData {
  return { status, headers: { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', ...extra }, body: JSON.stringify(body) };
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** An error as the client gets it: HTML for browsers, JSON for everything else. */
function errorResponse(e: BextError, req: TrustedRequest): ResponseData {
  const extra: Headers = e.status === 503 ? { 'retry-after': '1' } : {};
  const accept = req.headers.accept;
  if (typeof accept === 'string' && accept.includes('text/html')) {
    return {
      status: e.status,
      headers: { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', ...extra },
      body: `<!DOCTYPE html><html lang="en"><meta charset="utf-8"><title>${e.status}</title><h1>${e.status}</h1><p>${escapeHtml(e.message)}</p><p><code>${e.code}</code></p></html>`,
    };
  }
  return json(e.status, e.toJSON(), extra);
}

/** The `outcome` label of a failed render. */
function outcomeOf(e: BextError): string {
  switch (e.code) {
    case 'BEXT_ERR_SSR_TIMEOUT': return 'timeout';
    case 'BEXT_ERR_SSR_CRASHED': return 'crashed';
    case 'BEXT_ERR_SSR_OVERLOADED': return 'overloaded';
    case 'BEXT_ERR_SHUTDOWN': return 'shutdown';
    default: return 'error';
  }
}

function asBextError(e: unknown): BextError {
  if (e instanceof BextError) return e;
  return new BextError('BEXT_ERR_SSR_RENDER', String((e as Error)?.message ?? e));
}

function serveAsset(a: Asset, req: TrustedRequest, cacheControl: string): ResponseData {
  if (req.headers['if-none-match'] === a.etag) return { status: 304, headers: { etag: a.etag, 'cache-control': cacheControl } };
  return { status: 200, headers: { 'content-type': a.type, etag: a.etag, 'cache-control': cacheControl }, body: a.body };
}

export default definePlugin(async (host: HostApi) => {
  const cfg = host.config<SsrConfig>();
  const served = host.kernel?.siteDir ?? process.cwd();
  const siteDir = resolve(served, cfg.site ?? '.');
  const outDir = cfg.outDir ? resolve(siteDir, cfg.outDir) : defaultOutDir(siteDir);
  const islandAsset = asset(ISLAND_JS, 'text/javascript; charset=utf-8');

  const counters: Counters = { renders: {}, memo: {}, memoEntries: new Map(), hints: 0, staticHits: 0 };
  const flushed: Record<string, number> = {};
  const metric = (name: string, value: number, labels: Record<string, string> = {}, kind: 'counter' | 'gauge' | 'histogram' = 'counter') => {
    try {
      host.metric(name, value, labels, kind);
    } catch (e) {
      host.log('warn', 'ssr metric not recorded', { metric: name, error: (e as Error).message });
    }
  };
  const count = (outcome: string) => {
    counters.renders[outcome] = (counters.renders[outcome] ?? 0) + 1;
  };

  // Without pages/ there is nothing to render: pass everything on.
  if (!isSite(siteDir)) {
    host.log('debug', 'ssr: no pages/ folder in the served site; passing through', { site: siteDir });
    return {
      onRender: (): RenderDecision => ({ action: 'next' }),
      onRoute: (req: TrustedRequest) => routeWithoutSite(req),
    };
  }

  const workers = cfg.workers > 0 ? cfg.workers : Math.max(1, Math.min(availableParallelism(), 8));
  const init: WorkerInit = {
    bext: true,
    memo: cfg.memo,
    staleIfError: cfg.staleIfError,
    maxStale: cfg.maxStale,
    defaultMode: cfg.defaultMode,
    defaultRevalidate: cfg.defaultRevalidate,
    staticRevalidate: cfg.staticRevalidate,
    renderTimeoutMs: cfg.renderTimeoutMs,
    statsIntervalMs: 1000,
  };
  const pool = new RenderPool({
    size: workers,
    concurrency: cfg.concurrency,
    maxQueue: cfg.maxQueue,
    queueTimeoutMs: cfg.queueTimeoutMs,
    renderTimeoutMs: cfg.renderTimeoutMs,
    stallMs: cfg.stallMs,
    startTimeoutMs: cfg.startTimeoutMs,
    heapLimitMb: cfg.heapLimitMb,
    rotation: { maxRequests: cfg.rotation.maxRequests, maxHeapMb: cfg.rotation.maxHeapMb, maxUptimeMs: cfg.rotation.maxUptimeS * 1000 },
    backoff: cfg.backoff,
    init,
  }, onPoolEvent);

  let active: Active | null = null;
  /** Early-hint links per route pattern, learnt from rendered pages of the current build. */
  const hints = new Map<string, { build: string; links: string[] }>();
  /** Pages in `static` mode, rendered once per build. */
  const staticPages = new LRUCache<string, { build: string; res: ResponseData }>({
    maxSize: cfg.staticBytes,
    sizeCalculation: (v) => (v.res.body instanceof Uint8Array ? v.res.body.byteLength : 0) + 512,
  });
  let swapping: Promise<unknown> = Promise.resolve();

  function onPoolEvent(e: PoolEvent): void {
    switch (e.type) {
      case 'crash':
        metric('worker_crashes_total', 1);
        host.log('warn', 'ssr render worker died', { worker: e.worker, build: e.build, code: e.code, error: e.error?.split('\n')[0], failedRenders: e.failed, restartInMs: e.restartInMs });
        degradedCheck();
        break;
      case 'ready':
        host.log('debug', 'ssr render worker ready', { worker: e.worker, build: e.build, ms: e.ms });
        degradedCheck();
        break;
      case 'rotate':
        metric('worker_rotations_total', 1, { reason: e.reason });
        host.log('info', 'ssr rotating a render worker', { worker: e.worker, reason: e.reason });
        break;
      case 'stalled':
        host.log('warn', 'ssr render worker stopped answering after a timeout; replacing it', { worker: e.worker });
        break;
      case 'swap':
        metric('swaps_total', 1);
        host.log('info', 'ssr now rendering with a new build', { from: e.from, to: e.to });
        break;
      case 'error':
        host.log('error', 'ssr render failed', { what: e.what, build: e.build, error: e.stack });
        break;
      case 'stats': {
        for (const [name, c] of Object.entries(e.stats.memo)) {
          const t = (counters.memo[name] ??= { hit: 0, miss: 0, uncacheable: 0 });
          t.hit += c.hit;
          t.miss += c.miss;
          t.uncacheable += c.uncacheable;
        }
        counters.memoEntries.set(e.worker, { entries: e.stats.memoEntries, bytes: e.stats.memoBytes });
        break;
      }
      case 'retired':
        counters.memoEntries.delete(e.worker);
        break;
      default:
        break;
    }
  }

  function degradedCheck(): void {
    const snap = pool.snapshot();
    const up = snap.workers.some((w) => w.build === snap.build && w.state === 'ready');
    host.kernel?.setDegraded(up || !snap.build ? null : 'no render worker is up; restarting with backoff');
  }

  const flushMetrics = () => {
    const delta = (k: string, v: number) => {
      const d = v - (flushed[k] ?? 0);
      flushed[k] = v;
      return d;
    };
    for (const [outcome, v] of Object.entries(counters.renders)) {
      const d = delta(`r:${outcome}`, v);
      if (d) metric('renders_total', d, { outcome });
    }
    for (const [name, c] of Object.entries(counters.memo)) {
      for (const what of ['hit', 'miss', 'uncacheable'] as const) {
        const d = delta(`m:${name}:${what}`, c[what]);
        if (d) metric(`memo_${what === 'hit' ? 'hits' : what === 'miss' ? 'misses' : 'uncacheable'}_total`, d, { component: name });
      }
    }
    let entries = 0;
    let bytes = 0;
    for (const v of counters.memoEntries.values()) {
      entries += v.entries;
      bytes += v.bytes;
    }
    metric('memo_entries', entries, {}, 'gauge');
    metric('memo_bytes', bytes, {}, 'gauge');
    const d = delta('hints', counters.hints);
    if (d) metric('early_hints_total', d);
    const sh = delta('static', counters.staticHits);
    if (sh) metric('static_hits_total', sh);
    const snap = pool.snapshot();
    const states: Record<string, number> = { starting: 0, ready: 0, draining: 0 };
    for (const w of snap.workers) if (w.state in states) states[w.state]!++;
    for (const [state, n] of Object.entries(states)) metric('workers', n, { state }, 'gauge');
    metric('queue_depth', snap.queued, {}, 'gauge');
  };
  const metricTimer = setInterval(flushMetrics, 1000);
  metricTimer.unref();

  /** Makes a build current (serialised: one swap at a time). */
  function activate(manifest: BuildManifest, bundle: string): Promise<Active> {
    const run = swapping.then(async () => {
      const s = await pool.swap(bundle, manifest.buildId);
      active = { manifest, table: new RouteTable(manifest.routes), settings: s.routes, islands: s.islands };
      hints.clear();
      staticPages.clear();
      return active;
    });
    swapping = run.catch(() => undefined);
    return run;
  }

  async function build(): Promise<{ manifest: BuildManifest; bundle: string; ms: number }> {
    const r = await buildSite(siteDir, outDir);
    host.log('info', 'ssr built the site', { build: r.buildId, routes: r.manifest.routes.length, islands: r.manifest.islands.length, ms: Math.round(r.ms), bytes: r.bytes });
    return { manifest: r.manifest, bundle: r.bundle, ms: r.ms };
  }

  // Start: use the build on disk unless it is missing (or older than the sources, with autoBuild "stale").
  try {
    let current = readBuild(outDir);
    if (cfg.autoBuild !== 'never') {
      const why = !current
        ? 'ssr found pages/ but no build; building'
        : current.manifest.runtime !== runtimeHash()
          ? 'ssr build was made by another version of the render runtime; building'
          : cfg.autoBuild === 'stale' && (await sourcesMtime(siteDir)) > current.manifest.sourcesMtime
            ? 'ssr sources changed since the last build; building'
            : null;
      if (why) {
        host.log('info', why, { site: siteDir, outDir });
        current = await build();
      }
    }
    if (!current) {
      throw new BextError('BEXT_ERR_SSR_BUILD', `${siteDir} has pages/ but ${outDir} holds no build, and autoBuild is "never"`, { hint: 'run `bext build` first, or set plugins.ssr.autoBuild to "missing"' });
    }
    await activate(current.manifest, current.bundle);
  } catch (e) {
    clearInterval(metricTimer);
    await pool.close();
    throw e;
  }

  function forwarded(req: TrustedRequest): Record<string, string> {
    const out: Record<string, string> = {};
    for (const h of cfg.forwardHeaders) {
      const v = req.headers[h];
      if (v !== undefined) out[h] = Array.isArray(v) ? v.join(', ') : v;
    }
    return out;
  }

  function toResponse(r: RenderResult, req: TrustedRequest): ResponseData {
    return { status: r.status, headers: r.headers, body: req.method === 'HEAD' && r.body instanceof Readable ? (r.body.destroy(), '') : r.body };
  }

  async function renderPage(req: TrustedRequest, path: string, stream: boolean | null): Promise<ResponseData | null> {
    const a = active!;
    const m = a.table.match(path);
    if (!m) {
      if (!a.manifest.hasNotFound || (req.method !== 'GET' && req.method !== 'HEAD')) return null;
    } else if (req.method !== 'GET' && req.method !== 'HEAD') {
      return json(405, { error: 'BEXT_ERR_NOT_FOUND', message: `${path} answers GET and HEAD only` }, { allow: 'GET, HEAD' });
    }
    const index = m ? m.index : -1;
    const settings = m ? a.settings[index] : undefined;
    const staticKey = settings?.mode === 'static' ? `${path}?${req.query}` : null;
    if (staticKey) {
      const hit = staticPages.get(staticKey);
      if (hit && hit.build === a.manifest.buildId) {
        counters.staticHits++;
        return hit.res;
      }
    }
    const pattern = m?.pattern ?? '/404';
    if (cfg.earlyHints) {
      const h = hints.get(pattern);
      if (h && h.build === a.manifest.buildId && h.links.length) {
        counters.hints++;
        req.earlyHints({ link: h.links });
      }
    }
    const t0 = performance.now();
    let r: RenderResult;
    try {
      r = await pool.render({ t: 'page', route: index, stream: stream ?? settings?.stream ?? false, method: req.method, path, query: req.query, params: m?.params ?? {}, headers: forwarded(req) });
    } catch (e) {
      const err = asBextError(e);
      count(outcomeOf(err));
      return errorResponse(err, req);
    }
    count('ok');
    metric('render_seconds', (performance.now() - t0) / 1000, { kind: r.body instanceof Readable ? 'stream' : 'page' }, 'histogram');
    if (r.links.length) {
      const prev = hints.get(pattern);
      if (!prev || prev.build !== a.manifest.buildId || prev.links.join() !== r.links.join()) hints.set(pattern, { build: a.manifest.buildId, links: r.links });
    }
    const res = toResponse(r, req);
    if (staticKey && r.status === 200 && !(r.body instanceof Readable) && pool.build === a.manifest.buildId) staticPages.set(staticKey, { build: a.manifest.buildId, res });
    return res;
  }

  async function renderIsland(req: TrustedRequest): Promise<ResponseData | null> {
    const a = active!;
    let name: string;
    try {
      name = decodeURIComponent(req.path.slice(ISLAND_PREFIX.length));
    } catch {
      return null;
    }
    if (!a.islands[name]) return null;
    if (req.method !== 'GET' && req.method !== 'HEAD') return json(405, { error: 'BEXT_ERR_NOT_FOUND', message: 'islands answer GET and HEAD only' }, { allow: 'GET, HEAD' });
    const t0 = performance.now();
    try {
      const r = await pool.render({ t: 'island', island: name, method: req.method, path: req.path, query: req.query, params: {}, headers: forwarded(req) });
      count('ok');
      metric('render_seconds', (performance.now() - t0) / 1000, { kind: 'island' }, 'histogram');
      return toResponse(r, req);
    } catch (e) {
      const err = asBextError(e);
      count(outcomeOf(err));
      return errorResponse(err, req);
    }
  }

  async function adminBuild(): Promise<ResponseData> {
    const prev = active?.manifest.buildId ?? null;
    let b;
    try {
      b = await build();
    } catch (e) {
      return json(500, asBextError(e).toJSON());
    }
    return swapTo(b.manifest, b.bundle, prev, { buildMs: Math.round(b.ms) });
  }

  async function adminReload(): Promise<ResponseData> {
    const prev = active?.manifest.buildId ?? null;
    const b = readBuild(outDir);
    if (!b) return json(404, { error: 'BEXT_ERR_SSR_BUILD', message: `no build in ${outDir}`, hint: 'run `bext build` or POST /api/build' });
    return swapTo(b.manifest, b.bundle, prev, {});
  }

  async function swapTo(manifest: BuildManifest, bundle: string, prev: string | null, extra: Record<string, unknown>): Promise<ResponseData> {
    const t0 = performance.now();
    try {
      await activate(manifest, bundle);
    } catch (e) {
      return json(500, { ...asBextError(e).toJSON(), serving: active?.manifest.buildId ?? null });
    }
    return json(200, { ok: true, build: manifest.buildId, previous: prev, routes: manifest.routes.map((r) => r.pattern), islands: manifest.islands, swapMs: Math.round(performance.now() - t0), ...extra });
  }

  function stats(): ResponseData {
    flushMetrics();
    return json(200, {
      site: siteDir,
      outDir,
      build: active?.manifest.buildId ?? null,
      routes: active?.manifest.routes.map((r, i) => ({ pattern: r.pattern, file: r.file, ...active!.settings[i] })) ?? [],
      islands: active?.islands ?? {},
      pool: pool.snapshot(),
      hints: Object.fromEntries([...hints].map(([k, v]) => [k, v.links])),
      renders: counters.renders,
      memo: counters.memo,
      staticPages: staticPages.size,
    });
  }

  return {
    onRender(req: TrustedRequest, next: RenderNext): Promise<ResponseData | RenderDecision> | RenderDecision {
      if (!active) return { action: 'next' };
      const p = req.path.startsWith(ISLAND_PREFIX) ? renderIsland(req) : renderPage(req, req.path, null);
      return p.then((r) => r ?? next());
    },

    async onRoute(req: TrustedRequest): Promise<ResponseData> {
      const path = req.path;
      if (path === '/__bext/island.js') return serveAsset(islandAsset, req, 'public, max-age=3600');
      if (path === '/__bext/turbo.js') return serveAsset(await turboAsset(), req, 'public, max-age=3600');
      if (path === '/api/build') return adminBuild();
      if (path === '/api/ssr/reload') return adminReload();
      if (path === '/__bext/ssr') return stats();
      if (path === '/__bext/ssr/kill') {
        const id = Number(new URLSearchParams(req.query).get('worker'));
        return json(pool.kill(id) ? 200 : 404, { killed: id });
      }
      if (path.startsWith(STREAM_PREFIX)) {
        const r = active ? await renderPage(req, path.slice(STREAM_PREFIX.length) || '/', true) : null;
        return r ?? json(404, { error: 'BEXT_ERR_NOT_FOUND', message: `no page answers ${path.slice(STREAM_PREFIX.length) || '/'}` });
      }
      return json(404, { error: 'BEXT_ERR_NOT_FOUND', message: `no ssr route ${path}` });
    },

    async dispose() {
      clearInterval(metricTimer);
      flushMetrics();
      await pool.close();
    },
  };

  async function routeWithoutSite(req: TrustedRequest): Promise<ResponseData> {
    if (req.path === '/__bext/island.js') return serveAsset(islandAsset, req, 'public, max-age=3600');
    if (req.path === '/__bext/turbo.js') return serveAsset(await turboAsset(), req, 'public, max-age=3600');
    return json(404, { error: 'BEXT_ERR_NOT_FOUND', message: `${siteDir} has no pages/ folder, so there is nothing to render or build`, hint: 'add pages/index.tsx' });
  }
});

