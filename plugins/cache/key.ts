/**
 * Cache keys. A key is built only from what identifies the resource and
 * cannot be forged by one client to affect another: scheme, Host (as the
 * kernel parsed it), tenant (from a trusted onRequest plugin), the path with
 * only RFC 3986 equivalent spellings merged, the query with tracking
 * parameters dropped and the rest sorted by name, and the values of the
 * request headers the response varies on (from an allow-list), normalised.
 *
 * Forwarding headers (X-Forwarded-Host and friends) are never in the key, so
 * the cache removes them from a request before it renders something it will
 * share; that closes the classic unkeyed-header poisoning.
 */
import { globToRegExp } from '../../plugin-api/index.js';

const UNRESERVED = /^[A-Za-z0-9\-._~]$/;

/**
 * Merges only spellings RFC 3986 §6.2.2 calls equivalent: hex case of
 * percent escapes, and escapes of unreserved characters. Dot segments and
 * repeated slashes are left alone, since a renderer may treat `/a//b` and
 * `/a/b` differently and sharing them would let one poison the other.
 * Returns null for a path that is not origin-form (`http://…`, `*`).
 */
export function normalisePath(path: string): string | null {
  if (path.charCodeAt(0) !== 47 /* / */) return null;
  if (!path.includes('%')) return path;
  return normaliseEscapes(path);
}

function normaliseEscapes(s: string): string {
  return s.replace(/%([0-9a-fA-F]{2})/g, (_m, hex: string) => {
    const ch = String.fromCharCode(parseInt(hex, 16));
    return UNRESERVED.test(ch) ? ch : `%${hex.toUpperCase()}`;
  });
}

/** Compiles the list of query parameter names to drop (`utm_*` globs allowed). */
export function paramStripper(patterns: readonly string[]): (name: string) => boolean {
  const exact = new Set<string>();
  const globs: RegExp[] = [];
  for (const p of patterns) {
    const l = p.toLowerCase();
    if (l.includes('*')) globs.push(new RegExp(`^${l.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`));
    else exact.add(l);
  }
  return (name) => {
    const l = name.toLowerCase();
    return exact.has(l) || globs.some((g) => g.test(l));
  };
}

function paramName(part: string): string {
  const eq = part.indexOf('=');
  const raw = eq === -1 ? part : part.slice(0, eq);
  try {
    return decodeURIComponent(raw.replace(/\+/g, ' '));
  } catch {
    return raw;
  }
}

const EMPTY_QUERY = Object.freeze({ key: '', render: '' });

/**
 * The query as keyed (tracking parameters dropped, escapes normalised,
 * stable-sorted by name so `a=1&a=2` keeps its order) and as the renderer
 * sees it (tracking parameters dropped, otherwise untouched), so that what
 * is rendered is exactly what the key describes.
 */
export function normaliseQuery(query: string, strip: (name: string) => boolean): { key: string; render: string } {
  if (query === '') return EMPTY_QUERY;
  const kept: { name: string; part: string }[] = [];
  let dropped = false;
  for (const part of query.split('&')) {
    if (part === '') {
      dropped = true;
      continue;
    }
    const name = paramName(part);
    if (strip(name)) {
      dropped = true;
      continue;
    }
    kept.push({ name, part });
  }
  const render = dropped ? kept.map((k) => k.part).join('&') : query;
  const sorted = kept.map((k, i) => ({ ...k, i })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.i - b.i));
  const key = sorted.map((k) => (k.part.includes('%') ? normaliseEscapes(k.part) : k.part)).join('&');
  return { key, render };
}

/**
 * Normalises a request header value for the key: lower case, whitespace
 * removed around list separators, repeated headers joined.
 */
export function normaliseHeaderValue(v: string | string[] | undefined): string {
  if (v === undefined) return '';
  const text = Array.isArray(v) ? v.join(',') : v;
  return text.toLowerCase().split(',').map((s) => s.trim().replace(/\s*;\s*/g, ';')).filter(Boolean).join(',');
}

/** Path globs to a predicate (used for invalidation by pattern). */
export function pathMatcher(glob: string): (path: string) => boolean {
  const re = globToRegExp(glob);
  return (p) => re.test(p);
}
