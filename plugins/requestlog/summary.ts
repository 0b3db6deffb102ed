/**
 * What a finished request record says about itself: cache status (from the
 * response's `Cache-Status`, RFC 9211), WAF verdict (from `ctx.waf`, which
 * the WAF sets on every request it lets through), which hook answered, and
 * its headers with secrets redacted.
 */
import type { RequestRecord } from '../../plugin-api/index.js';

export interface CaptureOptions {
  headers: boolean;
  clientAddress: boolean;
  /** Lower-case header names shown as `[REDACTED]`. */
  redact: ReadonlySet<string>;
}

export const REDACTED = '[REDACTED]';

/** Plugin whose `ctx.waf` and onRequest answers carry the WAF verdict. */
const WAF_PLUGIN = 'waf';

type HeaderValue = string | string[] | number | undefined;

/**
 * The last cache's verdict in a `Cache-Status` header: `hit`, `stale` (served
 * stale, or stale-if-error), `miss`, `collapsed` (waited for another
 * request's fill), or the `fwd` reason (`bypass`, `method`, `uri-miss`…).
 */
export function cacheStatus(v: HeaderValue): string | undefined {
  if (v === undefined) return undefined;
  const s = Array.isArray(v) ? v.join(', ') : String(v);
  // The member added last is the cache nearest to this response (ours).
  const member = s.slice(s.lastIndexOf(',') + 1);
  const params = member.split(';').map((p) => p.trim());
  let fwd: string | undefined;
  let hit = false;
  let collapsed = false;
  let swr = false;
  for (const p of params.slice(1)) {
    if (p === 'hit') hit = true;
    else if (p === 'collapsed') collapsed = true;
    else if (p.startsWith('fwd=')) fwd = p.slice(4);
    else if (p === 'detail=stale-while-revalidate') swr = true;
  }
  if (hit) return swr ? 'stale' : 'hit';
  if (fwd === 'miss' && collapsed) return 'collapsed';
  return fwd && /^[a-z-]{1,16}$/.test(fwd) ? fwd : undefined;
}

/** `plugin hook` whose decision became the response, when the timings tell. */
export function answeredBy(rec: RequestRecord): string | undefined {
  let lastRequest: string | undefined;
  for (const t of rec.timings) {
    if (t.hook === 'onRoute') return `${t.plugin} onRoute`;
    if (t.hook === 'onRender') return undefined;
    if (t.hook === 'onRequest') lastRequest = t.plugin;
  }
  // No route or renderer ran: an onRequest hook answered, unless the kernel found nothing (404).
  return lastRequest !== undefined && rec.status !== 404 ? `${lastRequest} onRequest` : undefined;
}

/** The WAF's verdict: clean or detected from `ctx.waf`; blocked when the WAF answered in onRequest. */
export function wafVerdict(rec: RequestRecord): { verdict: 'clean' | 'detected' | 'blocked'; score: number; families: string[] } | undefined {
  const w = rec.ctx.waf as { score?: unknown; families?: unknown } | undefined;
  if (w && typeof w === 'object') {
    const score = typeof w.score === 'number' ? w.score : 0;
    const families = Array.isArray(w.families) ? w.families.filter((f): f is string => typeof f === 'string') : [];
    return { verdict: score > 0 || families.length ? 'detected' : 'clean', score, families };
  }
  // A WAF that failed (fail-closed 503) did not judge the request.
  if (answeredBy(rec) === `${WAF_PLUGIN} onRequest` && rec.status >= 400 && !rec.timings.some((t) => t.plugin === WAF_PLUGIN && t.error)) {
    return { verdict: 'blocked', score: 0, families: [] };
  }
  return undefined;
}

/** A copy of a header map with the named headers' values replaced. */
export function redactHeaders(h: Record<string, HeaderValue>, redact: ReadonlySet<string>): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const k in h) {
    const v = h[k];
    if (v === undefined) continue;
    const name = k.toLowerCase();
    out[name] = redact.has(name) ? (Array.isArray(v) ? v.map(() => REDACTED) : REDACTED) : Array.isArray(v) ? v : String(v);
  }
  return out;
}
