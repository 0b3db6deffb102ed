/**
 * What may be stored and for how long: route rules, and the origin's
 * Cache-Control / Surrogate-Control / Expires read as RFC 9111 asks of a
 * shared cache, with the stale-while-revalidate and stale-if-error
 * extensions of RFC 5861.
 */
import { globToRegExp, hostMatches, varyFields, type Headers } from '../../plugin-api/index.js';

/** How a route is cached. */
export type Mode = 'isr' | 'swr' | 'static' | 'ssr' | 'origin';

/** One route rule as written in bext.config.json. */
export interface RuleConfig {
  /** Path globs (`*` one segment, `**` any depth). */
  paths: string[];
  /** Host patterns (exact or `*.example.com`); default any. */
  hosts?: string[];
  mode: Mode;
  /** isr: seconds fresh before the next request triggers a background re-render. */
  revalidate?: number;
  /** swr: seconds fresh. */
  ttl?: number;
  /** swr: seconds after `ttl` during which a stale copy is served while a new one renders. */
  swr?: number;
  /** Seconds after freshness during which a stale copy stands in for a render that fails (5xx or throws). */
  staleIfError?: number;
  /** Seconds a 404/410 is kept (overrides the global `negativeTtl`). */
  negativeTtl?: number;
  /** Tags every entry of this rule carries. */
  tags?: string[];
}

/** A rule compiled for matching. */
export interface Rule {
  mode: Mode;
  freshMs: number;
  swrMs: number;
  sieMs: number;
  negativeMs: number;
  tags: string[];
  name: string;
  match(host: string, path: string): boolean;
}

const INF = Number.POSITIVE_INFINITY;

/** Compiles rules; a rule that lacks what its mode needs is reported by name. */
export function compileRules(rules: RuleConfig[], defaults: { negativeTtl: number; maxStaleSeconds: number }): { rules: Rule[]; errors: string[] } {
  const errors: string[] = [];
  const out: Rule[] = [];
  rules.forEach((r, i) => {
    const name = `rules[${i}]`;
    let freshMs = 0;
    let swrMs = 0;
    if (r.mode === 'isr') {
      if (r.revalidate === undefined) errors.push(`${name}: mode "isr" needs "revalidate" (seconds fresh)`);
      freshMs = (r.revalidate ?? 0) * 1000;
      swrMs = defaults.maxStaleSeconds * 1000;
    } else if (r.mode === 'swr') {
      if (r.ttl === undefined || r.swr === undefined) errors.push(`${name}: mode "swr" needs "ttl" and "swr" (seconds)`);
      freshMs = (r.ttl ?? 0) * 1000;
      swrMs = (r.swr ?? 0) * 1000;
    } else if (r.mode === 'static') freshMs = INF;
    const paths = r.paths.map(globToRegExp);
    const hosts = r.hosts?.length ? r.hosts : null;
    out.push({
      mode: r.mode,
      freshMs,
      swrMs,
      sieMs: (r.staleIfError ?? 0) * 1000,
      negativeMs: (r.negativeTtl ?? defaults.negativeTtl) * 1000,
      tags: r.tags ?? [],
      name,
      match: (host, path) => (!hosts || hosts.some((h) => hostMatches(h, host))) && paths.some((re) => re.test(path)),
    });
  });
  return { rules: out, errors };
}

/** The rule used when none matches: only what the origin marks cacheable, for as long as it says. */
export function originRule(negativeTtl: number): Rule {
  return { mode: 'origin', freshMs: 0, swrMs: 0, sieMs: 0, negativeMs: negativeTtl * 1000, tags: [], name: 'default', match: () => true };
}

/** Parsed Cache-Control (or Surrogate-Control) directives: name → argument ('' when none). */
export type Directives = Map<string, string>;

/**
 * Parses a Cache-Control-like field; quoted arguments may hold commas, and a
 * Surrogate-Control target suffix (`max-age=60;edge`) is dropped.
 */
export function parseDirectives(v: string | string[] | undefined): Directives {
  const out: Directives = new Map();
  if (v === undefined) return out;
  const text = Array.isArray(v) ? v.join(',') : v;
  let i = 0;
  while (i < text.length) {
    let j = i;
    while (j < text.length && text[j] !== '=' && text[j] !== ',') j++;
    const name = text.slice(i, j).trim().toLowerCase();
    let arg = '';
    if (text[j] === '=') {
      j++;
      while (text[j] === ' ' || text[j] === '\t') j++;
      if (text[j] === '"') {
        j++;
        while (j < text.length && text[j] !== '"') {
          if (text[j] === '\\') j++;
          arg += text[j] ?? '';
          j++;
        }
        while (j < text.length && text[j] !== ',') j++;
      } else {
        const k = text.indexOf(',', j);
        const end = k === -1 ? text.length : k;
        arg = text.slice(j, end).trim();
        const semi = arg.indexOf(';');
        if (semi !== -1) arg = arg.slice(0, semi).trim();
        j = end;
      }
    }
    // RFC 9111 §4.2.1: when a directive repeats, the first one counts.
    if (name && !out.has(name)) out.set(name, arg);
    i = j + 1;
  }
  return out;
}

/** A delta-seconds argument, or undefined when absent or malformed. */
function seconds(d: Directives, name: string): number | undefined {
  const v = d.get(name);
  if (v === undefined || !/^\d+$/.test(v)) return undefined;
  return Math.min(Number(v), 2 ** 31);
}

function one(h: Headers, name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v.join(', ') : v;
}

/** Why a response is not stored (goes into Cache-Status `detail`). */
export type NotStored =
  | 'rule-ssr' | 'no-store' | 'private' | 'no-cache' | 'set-cookie' | 'vary-star' | 'vary-not-allowed'
  | 'status' | 'authorization' | 'no-freshness' | 'too-large' | 'encoding' | 'method';

/** How a response is stored: its lifetime and what the origin allows. */
export interface StorePolicy {
  freshMs: number;
  swrMs: number;
  sieMs: number;
  /** Seconds of age the response already had (origin `Age`). */
  initialAge: number;
  /** must-revalidate / proxy-revalidate (or s-maxage without stale-* directives): never serve it stale. */
  mustRevalidate: boolean;
  /** public / s-maxage / must-revalidate: may answer requests carrying Authorization (RFC 9111 §3.5). */
  authOk: boolean;
  negative: boolean;
  /** Header fields the origin named in `private="…"` / `no-cache="…"`, which must not be stored. */
  dropFields: string[];
}

const CACHEABLE_STATUS = new Set([200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501]);

/**
 * Decides whether and how a response may be stored. `hasAuthorization` is
 * whether the request carried credentials; `allowedVary` is the allow-list
 * of request headers a response may vary on (Accept-Encoding is always
 * allowed: variants handle it).
 */
export function storePolicy(
  rule: Rule,
  status: number,
  headers: Headers,
  opts: { hasAuthorization: boolean; allowedVary: ReadonlySet<string>; now: number },
): StorePolicy | NotStored {
  if (rule.mode === 'ssr') return 'rule-ssr';
  if (!CACHEABLE_STATUS.has(status)) return 'status';
  const cc = parseDirectives(headers['cache-control']);
  const sc = parseDirectives(headers['surrogate-control']);
  if (sc.has('no-store') || cc.has('no-store')) return 'no-store';
  const dropFields: string[] = [];
  const priv = cc.get('private');
  if (priv !== undefined) {
    // `private="Set-Cookie"` only withholds the named fields from shared caches.
    if (priv === '') return 'private';
    for (const f of priv.split(',')) if (f.trim()) dropFields.push(f.trim().toLowerCase());
  }
  const noCache = cc.get('no-cache');
  if (noCache !== undefined) {
    if (noCache === '') return 'no-cache';
    for (const f of noCache.split(',')) if (f.trim()) dropFields.push(f.trim().toLowerCase());
  }
  if (headers['set-cookie'] !== undefined && !dropFields.includes('set-cookie')) return 'set-cookie';
  for (const f of varyFields(headers)) {
    if (f === '*') return 'vary-star';
    if (f !== 'accept-encoding' && !opts.allowedVary.has(f)) return 'vary-not-allowed';
  }
  const sMaxAge = seconds(cc, 's-maxage');
  const authOk = cc.has('public') || sMaxAge !== undefined || cc.has('must-revalidate');
  if (opts.hasAuthorization && !authOk) return 'authorization';

  const ageHeader = Number(one(headers, 'age'));
  const initialAge = Number.isFinite(ageHeader) && ageHeader > 0 ? Math.floor(ageHeader) : 0;
  const negative = status === 404 || status === 410;
  // Surrogate-Control is addressed to caches like this one, so it wins; then s-maxage, max-age, Expires.
  let explicit: number | undefined = seconds(sc, 'max-age') ?? sMaxAge ?? seconds(cc, 'max-age');
  if (explicit === undefined) {
    const exp = one(headers, 'expires');
    if (exp !== undefined) {
      const e = Date.parse(exp);
      const date = Date.parse(one(headers, 'date') ?? '');
      // An invalid Expires (e.g. "0") means already expired (RFC 9111 §5.3).
      explicit = Number.isNaN(e) ? 0 : Math.max(0, Math.floor((e - (Number.isNaN(date) ? opts.now : date)) / 1000));
    }
  }
  const swrDirective = seconds(sc, 'stale-while-revalidate') ?? seconds(cc, 'stale-while-revalidate');
  const sieDirective = seconds(sc, 'stale-if-error') ?? seconds(cc, 'stale-if-error');
  let freshMs: number;
  let swrMs = rule.swrMs;
  let sieMs = rule.sieMs;
  if (rule.mode === 'static') freshMs = Number.POSITIVE_INFINITY;
  else if (negative && explicit === undefined) freshMs = rule.mode === 'origin' ? 0 : rule.negativeMs;
  else if (explicit !== undefined) freshMs = explicit * 1000;
  else freshMs = rule.freshMs;
  if (negative) swrMs = 0;
  if (swrDirective !== undefined) swrMs = swrDirective * 1000;
  if (sieDirective !== undefined) sieMs = sieDirective * 1000;
  // s-maxage implies proxy-revalidate (RFC 9111 §5.2.2.10) unless the origin explicitly allows staleness.
  const mustRevalidate = cc.has('must-revalidate') || cc.has('proxy-revalidate') || (sMaxAge !== undefined && swrDirective === undefined && sieDirective === undefined && rule.mode === 'origin');
  if (mustRevalidate) swrMs = sieMs = 0;
  if (freshMs <= initialAge * 1000 && swrMs === 0 && sieMs === 0) return 'no-freshness';
  return { freshMs, swrMs, sieMs, initialAge, mustRevalidate, authOk, negative, dropFields };
}
