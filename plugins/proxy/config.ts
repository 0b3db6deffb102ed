/**
 * The proxy's section of bext.config.json, as the kernel hands it over
 * (validated against the manifest's configSchema, defaults filled in), and
 * the checks JSON Schema cannot express.
 */
import { BextError, compileMatch, type MatchFn } from '../../plugin-api/index.js';
import type { Strategy } from './balancer.js';

export interface HeaderEdit {
  set?: Record<string, string>;
  remove?: string[];
}

export interface ActiveHealthConfig {
  path: string;
  intervalMs: number;
  timeoutMs: number;
  expectStatus: (number | string)[];
  rise: number;
  fall: number;
}

export interface PassiveHealthConfig {
  consecutive5xx: number;
  consecutiveConnectFailures: number;
  baseEjectionMs: number;
  maxEjectionMs: number;
  maxEjectedPercent: number;
}

export interface RetryConfig {
  maxRetries: number;
  methods: string[];
  onStatus: number[];
  budgetPercent: number;
  minPerSecond: number;
  windowMs: number;
  maxRetryAfterMs: number;
  bufferBytes: number;
}

export interface ErrorRateConfig {
  enabled: boolean;
  threshold: number;
  minRequests: number;
  windowMs: number;
  openMs: number;
  halfOpenProbes: number;
}

export interface BreakerConfig {
  maxConnections: number;
  maxPending: number;
  maxRequests: number;
  errorRate: ErrorRateConfig;
}

export interface UpstreamConfig {
  members: (string | { url: string; weight?: number })[];
  strategy: Strategy;
  hashKey: string;
  protocol: 'http1' | 'h2c';
  hostHeader: 'preserve' | 'upstream';
  keepAliveMs: number;
  timeouts: { connectMs: number; headersMs: number; bodyMs: number; websocketIdleMs: number };
  health: { active?: ActiveHealthConfig; passive: PassiveHealthConfig; allDown: 'fail-open' | '503' };
  retries: RetryConfig;
  breaker: BreakerConfig;
}

export interface RouteConfig {
  upstream: string;
  paths?: string[];
  hosts?: string[];
  methods?: string[];
  stripPrefix?: string;
  rewrite?: { from: string; to: string };
  addPrefix?: string;
  websocket: boolean;
  headers?: { request?: HeaderEdit; response?: HeaderEdit };
}

export interface ProxyConfig {
  upstreams: Record<string, UpstreamConfig>;
  routes: RouteConfig[];
  trustedProxies: string[];
  via: string | false;
}

/** A route compiled once: its matcher and its path and header rewrites. */
export interface CompiledRoute {
  index: number;
  upstream: string;
  match: MatchFn | null;
  websocket: boolean;
  rewritePath: (path: string) => string;
  /** Lower-cased names. */
  requestSet: [string, string][] | null;
  requestRemove: string[] | null;
  responseSet: [string, string][] | null;
  responseRemove: string[] | null;
}

/** The hook deadline in the manifest; a request's worst case must stay under it. */
export const HOOK_DEADLINE_MS = 600_000;

function invalid(path: string, what: string, hint?: string): never {
  throw new BextError('BEXT_ERR_CONFIG_INVALID', `bext.config.json: $.plugins.proxy.${path}: ${what}`, hint ? { hint } : {});
}

function compilePathRewrite(r: RouteConfig, where: string): (path: string) => string {
  const strip = r.stripPrefix && r.stripPrefix !== '/' ? r.stripPrefix.replace(/\/$/, '') : null;
  let re: RegExp | null = null;
  if (r.rewrite) {
    try {
      re = new RegExp(r.rewrite.from);
    } catch (e) {
      invalid(`${where}.rewrite.from`, `expected a regular expression, found ${JSON.stringify(r.rewrite.from)} (${(e as Error).message})`);
    }
  }
  const to = r.rewrite?.to ?? '';
  const add = r.addPrefix && r.addPrefix !== '/' ? r.addPrefix.replace(/\/$/, '') : null;
  if (!strip && !re && !add) return (p) => p;
  return (p) => {
    if (strip && p.startsWith(strip) && (p.length === strip.length || p.charCodeAt(strip.length) === 47 /* / */)) p = p.slice(strip.length) || '/';
    if (re) p = p.replace(re, to);
    if (add) p = add + p;
    // A rewrite must not produce an absolute-form or relative target.
    return p.charCodeAt(0) === 47 ? p : `/${p}`;
  };
}

function headerPairs(set: Record<string, string> | undefined): [string, string][] | null {
  if (!set) return null;
  const pairs = Object.entries(set).map(([k, v]) => [k.toLowerCase(), v] as [string, string]);
  return pairs.length ? pairs : null;
}

/** Checks what the schema cannot (references, URLs, deadlines) and compiles the routes. */
export function compileConfig(cfg: ProxyConfig): CompiledRoute[] {
  for (const [name, up] of Object.entries(cfg.upstreams)) {
    up.members.forEach((m, i) => {
      const url = typeof m === 'string' ? m : m.url;
      let u: URL;
      try {
        u = new URL(url);
      } catch {
        return invalid(`upstreams.${name}.members[${i}]`, `expected an http:// URL, found ${JSON.stringify(url)}`);
      }
      if (u.pathname !== '/' || u.search || u.username) {
        invalid(`upstreams.${name}.members[${i}]`, `expected an origin (http://host:port), found ${JSON.stringify(url)}`, 'put path changes in a route (stripPrefix, addPrefix, rewrite)');
      }
    });
    const ids = up.members.map((m) => new URL(typeof m === 'string' ? m : m.url).origin);
    const dup = ids.find((id, i) => ids.indexOf(id) !== i);
    if (dup) invalid(`upstreams.${name}.members`, `member ${dup} is listed twice`, 'give it a higher weight instead');
    const t = up.timeouts;
    const worst = (up.retries.maxRetries + 1) * (t.connectMs + t.headersMs) + up.retries.maxRetryAfterMs;
    if (worst >= HOOK_DEADLINE_MS) {
      invalid(`upstreams.${name}`, `(retries.maxRetries + 1) × (timeouts.connectMs + timeouts.headersMs) + retries.maxRetryAfterMs is ${worst} ms, at or above the ${HOOK_DEADLINE_MS} ms hook deadline`, 'lower timeouts.headersMs or retries.maxRetries');
    }
    for (const s of up.health.active?.expectStatus ?? []) if (typeof s === 'string' && !/^[1-5]xx$/.test(s)) invalid(`upstreams.${name}.health.active.expectStatus`, `expected a status or "2xx", found ${JSON.stringify(s)}`);
  }
  return cfg.routes.map((r, i) => {
    const where = `routes[${i}]`;
    if (!cfg.upstreams[r.upstream]) {
      invalid(`${where}.upstream`, `no upstream named ${JSON.stringify(r.upstream)} (have: ${Object.keys(cfg.upstreams).join(', ')})`);
    }
    return {
      index: i,
      upstream: r.upstream,
      match: compileMatch({ paths: r.paths, hosts: r.hosts?.map((h) => h.toLowerCase()), methods: r.methods }),
      websocket: r.websocket !== false,
      rewritePath: compilePathRewrite(r, where),
      requestSet: headerPairs(r.headers?.request?.set),
      requestRemove: r.headers?.request?.remove?.length ? r.headers.request.remove.map((h) => h.toLowerCase()) : null,
      responseSet: headerPairs(r.headers?.response?.set),
      responseRemove: r.headers?.response?.remove?.length ? r.headers.response.remove.map((h) => h.toLowerCase()) : null,
    };
  });
}

/** Whether a status passes an active check's `expectStatus`. */
export function statusExpected(expect: (number | string)[], status: number): boolean {
  for (const e of expect) {
    if (typeof e === 'number' ? e === status : Math.floor(status / 100) === Number(e[0])) return true;
  }
  return false;
}
