/**
 * requestlog: keeps the last N finished requests (from the kernel's request
 * observers, so no hook runs on the request path) and serves them on an
 * admin route. Capture copies a record's fields into preallocated columns
 * (ring.ts); entries are turned into redacted JSON only when read. An
 * optional access log writes one pino line per request.
 */
import pino, { type Logger as Pino } from 'pino';
import { BextError, definePlugin, globToRegExp, type HostApi, type LogLevel, type RequestRecord, type ResponseData } from '../../plugin-api/index.js';
import { CaptureRing } from './ring.js';
import { answeredBy, cacheStatus, redactHeaders, wafVerdict, type CaptureOptions } from './summary.js';

export { answeredBy, cacheStatus, redactHeaders, wafVerdict } from './summary.js';

/** This plugin's section of bext.config.json (defaults applied by the kernel). */
export interface RequestLogConfig {
  size: number;
  detail: number;
  redactHeaders: string[];
  headers: boolean;
  clientAddress: boolean;
  exclude: string[];
  accessLog: { enabled: boolean; destination: string; level: LogLevel; minLevel: LogLevel; headers: boolean };
}

/** One captured request as the admin route shows it. */
export interface RequestEntry {
  id: string;
  time: string;
  method: string;
  path: string;
  host: string;
  route?: string;
  group: string;
  status: number;
  durationMs: number;
  clientAddress?: string;
  /** `hit`, `stale`, `miss`, `collapsed`, `bypass`, `method`…, from the response's Cache-Status. */
  cache?: string;
  /** `clean`, `detected` or `blocked`, when the WAF saw the request. */
  waf?: 'clean' | 'detected' | 'blocked';
  wafScore?: number;
  wafFamilies?: string[];
  /** The plugin and hook whose decision became the response. */
  answeredBy?: string;
  /** The trace id, when the tracing plugin traced the request. */
  traceId?: string;
  timings: { plugin: string; hook: string; startMs: number; durMs: number; error?: string }[];
  requestHeaders?: Record<string, string | string[]>;
  responseHeaders?: Record<string, string | string[]>;
}

const JSON_HEADERS = { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' };
const LEVEL_RANK: Record<LogLevel, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50 };
const round3 = (n: number) => Math.round(n * 1000) / 1000;

export function toEntry(rec: RequestRecord, opts: CaptureOptions): RequestEntry {
  const cache = cacheStatus(rec.responseHeaders['cache-status']);
  const waf = wafVerdict(rec);
  const by = answeredBy(rec);
  return {
    id: rec.id,
    time: new Date(rec.time).toISOString(),
    method: rec.method,
    path: rec.path,
    host: rec.host,
    ...(rec.route ? { route: rec.route } : {}),
    group: rec.group,
    status: rec.status,
    durationMs: round3(rec.durationMs),
    ...(opts.clientAddress ? { clientAddress: rec.remoteAddress } : {}),
    ...(cache ? { cache } : {}),
    ...(waf ? { waf: waf.verdict, ...(waf.score ? { wafScore: waf.score } : {}), ...(waf.families.length ? { wafFamilies: waf.families } : {}) } : {}),
    ...(by ? { answeredBy: by } : {}),
    ...(typeof rec.ctx.traceId === 'string' ? { traceId: rec.ctx.traceId } : {}),
    timings: rec.timings.map((t) => ({ plugin: t.plugin, hook: t.hook, startMs: round3(t.startMs), durMs: round3(t.durMs), ...(t.error ? { error: t.error } : {}) })),
    ...(opts.headers && (rec as { headersKept?: boolean }).headersKept !== false ? { requestHeaders: redactHeaders(rec.requestHeaders, opts.redact), responseHeaders: redactHeaders(rec.responseHeaders, opts.redact) } : {}),
  };
}

/** Filters for the admin route, from its query string. */
function filterOf(q: URLSearchParams): (e: RequestRecord, entry: () => RequestEntry) => boolean {
  const invalid = (name: string, expected: string) =>
    new BextError('BEXT_ERR_QUERY_INVALID', `${name}=${q.get(name)}: expected ${expected}`, { hint: 'e.g. /__bext/requests?status=5xx&minMs=100&limit=50' });
  const status = q.get('status');
  if (status !== null && !/^([1-5]xx|[1-5]\d\d)$/i.test(status)) throw invalid('status', 'a status (404) or class (5xx)');
  for (const n of ['minMs', 'limit']) if (q.has(n) && !(Number(q.get(n)) >= 0)) throw invalid(n, 'a non-negative number');
  const statusTest = status
    ? /^[1-5]xx$/i.test(status)
      ? (s: number) => Math.floor(s / 100) === Number(status[0])
      : (s: number) => s === Number(status)
    : null;
  const method = q.get('method')?.toUpperCase();
  const plugin = q.get('plugin');
  const cache = q.get('cache');
  const waf = q.get('waf');
  const group = q.get('group');
  const minMs = q.has('minMs') ? Number(q.get('minMs')) : null;
  const path = q.get('path');
  return (r, entry) => {
    if (statusTest && !statusTest(r.status)) return false;
    if (method && r.method !== method) return false;
    if (group && r.group !== group) return false;
    if (minMs !== null && !(r.durationMs >= minMs)) return false;
    if (path && !r.path.startsWith(path)) return false;
    if (plugin && !r.timings.some((t) => t.plugin === plugin)) return false;
    if (cache || waf) {
      const e = entry();
      if (cache && e.cache !== cache) return false;
      if (waf && e.waf !== waf) return false;
    }
    return true;
  };
}

function accessLogger(cfg: RequestLogConfig['accessLog'], redact: ReadonlySet<string>): { log(rec: RequestRecord): void; close(): Promise<void> } | null {
  if (!cfg.enabled) return null;
  const fd = cfg.destination === 'stdout' ? 1 : cfg.destination === 'stderr' ? 2 : null;
  const dest = pino.destination({ dest: fd ?? cfg.destination, sync: false, append: true, mkdir: true });
  const logger: Pino = pino(
    { level: cfg.minLevel, base: { plugin: 'requestlog' }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } },
    dest,
  );
  const base = LEVEL_RANK[cfg.level];
  const opts: CaptureOptions = { headers: cfg.headers, clientAddress: true, redact };
  return {
    log(rec) {
      const level = rec.status >= 500 && base < LEVEL_RANK.error ? 'error' : rec.status >= 400 && base < LEVEL_RANK.warn ? 'warn' : cfg.level;
      if (!logger.isLevelEnabled(level)) return;
      const e = toEntry(rec, opts);
      logger[level]({ req: e }, `${e.method} ${e.path} ${e.status}`);
    },
    async close() {
      await new Promise<void>((res) => logger.flush(() => res()));
      if (fd === null) await new Promise<void>((res) => { dest.once('close', () => res()); dest.end(); });
    },
  };
}

export default definePlugin((host: HostApi) => {
  const kernel = host.kernel;
  if (!kernel) throw new Error('requestlog needs the trusted sandbox (it observes requests through host.kernel)');
  const cfg = host.config<RequestLogConfig>();
  const redact = new Set(['authorization', 'proxy-authorization', 'cookie', 'set-cookie', ...cfg.redactHeaders.map((h) => h.toLowerCase())]);
  const opts: CaptureOptions = { headers: cfg.headers, clientAddress: cfg.clientAddress, redact };
  const exclude = cfg.exclude.length ? new RegExp(cfg.exclude.map((g) => globToRegExp(g).source).join('|')) : null;
  const ring = new CaptureRing(cfg.size, cfg.headers ? cfg.detail : 0);
  const access = accessLogger(cfg.accessLog, redact);

  const stop = kernel.observeRequests((rec) => {
    if (exclude !== null && exclude.test(rec.path)) return;
    ring.push(rec);
    access?.log(rec);
  });
  const newest = () => ring.newest();

  return {
    onRoute(req): ResponseData {
      if (req.params?.id !== undefined) {
        for (const r of newest()) if (r.id === req.params.id) return { status: 200, headers: JSON_HEADERS, body: JSON.stringify(toEntry(r, opts)) };
        const err = new BextError('BEXT_ERR_NOT_FOUND', `request ${req.params.id} is not in the ring (it keeps the last ${cfg.size})`);
        return { status: 404, headers: JSON_HEADERS, body: JSON.stringify(err.toJSON()) };
      }
      const q = new URLSearchParams(req.query);
      const limit = Math.max(1, Math.min(cfg.size, Number(q.get('limit')) || 100));
      let keep: ReturnType<typeof filterOf>;
      try {
        keep = filterOf(q);
      } catch (e) {
        return { status: 400, headers: JSON_HEADERS, body: JSON.stringify((e as BextError).toJSON()) };
      }
      const out: RequestEntry[] = [];
      for (const r of newest()) {
        let e: RequestEntry | undefined;
        const entry = () => (e ??= toEntry(r, opts));
        if (!keep(r, entry)) continue;
        out.push(entry());
        if (out.length >= limit) break;
      }
      return { status: 200, headers: JSON_HEADERS, body: JSON.stringify({ total: ring.total, size: cfg.size, requests: out }) };
    },
    async dispose() {
      stop();
      await access?.close();
    },
  };
});
