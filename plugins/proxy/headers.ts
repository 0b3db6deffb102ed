/**
 * Header handling for both directions: hop-by-hop removal (RFC 9110 §7.6.1),
 * X-Forwarded-* and Forwarded (RFC 7239), Via.
 */
import type { Headers } from '../../plugin-api/index.js';

/** Hop-by-hop headers, plus those undici refuses to send (`expect`) and HTTP/2's `http2-settings`. */
export const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization',
  'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect', 'http2-settings',
]);

/** Headers the proxy writes itself; what the client sent is replaced or extended. */
const FORWARDING = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'forwarded', 'via']);

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** Names listed in a `Connection` header, which are hop-by-hop too. */
export function connectionTokens(v: string | string[] | undefined): Set<string> | null {
  if (v === undefined) return null;
  let out: Set<string> | null = null;
  for (const part of (typeof v === 'string' ? v : v.join(',')).split(',')) {
    const t = part.trim().toLowerCase();
    if (t && t !== 'close' && t !== 'keep-alive' && t !== 'upgrade') (out ??= new Set()).add(t);
  }
  return out;
}

function joined(v: string | string[] | undefined): string | undefined {
  return v === undefined ? undefined : typeof v === 'string' ? v : v.join(', ');
}

/** `::ffff:1.2.3.4` → `1.2.3.4`, which is what upstreams expect in X-Forwarded-For. */
export function plainAddress(a: string): string {
  return a.startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a;
}

function forwardedNode(addr: string): string {
  return addr.includes(':') ? `"[${addr}]"` : addr || 'unknown';
}

function forwardedValue(v: string): string {
  return TOKEN.test(v) ? v : `"${v.replace(/["\\]/g, '\\$&')}"`;
}

export interface ForwardInfo {
  /** The socket peer, plain. */
  peer: string;
  /** Whether the peer is a trusted proxy, whose forwarding headers are kept and extended. */
  trusted: boolean;
  scheme: string;
  /** The Host the client asked for (with port, as sent). */
  host: string;
  httpVersion: string;
  via: string | false;
}

/**
 * The headers sent upstream: the client's, minus hop-by-hop and HTTP/2
 * pseudo-headers, with the forwarding headers set. From an untrusted peer,
 * X-Forwarded-* and Forwarded are replaced (a client cannot forge its
 * address); from a trusted proxy they are extended.
 */
export function upstreamRequestHeaders(src: Headers, f: ForwardInfo): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  const extra = connectionTokens(src.connection);
  for (const k in src) {
    if (HOP_BY_HOP.has(k) || FORWARDING.has(k) || k.charCodeAt(0) === 58 /* : */) continue;
    if (extra !== null && extra.has(k)) continue;
    out[k] = src[k]!;
  }
  const xff = f.trusted ? joined(src['x-forwarded-for']) : undefined;
  out['x-forwarded-for'] = xff ? `${xff}, ${f.peer}` : f.peer;
  const xfp = f.trusted ? joined(src['x-forwarded-proto']) : undefined;
  out['x-forwarded-proto'] = xfp ?? f.scheme;
  const xfh = f.trusted ? joined(src['x-forwarded-host']) : undefined;
  if (xfh ?? f.host) out['x-forwarded-host'] = xfh ?? f.host;
  const element = `for=${forwardedNode(f.peer)}${f.host ? `;host=${forwardedValue(f.host)}` : ''};proto=${f.scheme}`;
  const fwd = f.trusted ? joined(src.forwarded) : undefined;
  out.forwarded = fwd ? `${fwd}, ${element}` : element;
  if (f.via !== false) {
    const prev = joined(src.via);
    const mine = `${f.httpVersion} ${f.via}`;
    out.via = prev ? `${prev}, ${mine}` : mine;
  }
  return out;
}

/** The upstream's response headers as the client gets them: hop-by-hop gone, Via added. */
export function clientResponseHeaders(src: Record<string, string | string[] | undefined>, via: string | false, viaVersion: string): Headers {
  const extra = connectionTokens(src.connection);
  const out: Headers = {};
  for (const k in src) {
    const v = src[k];
    if (v === undefined || HOP_BY_HOP.has(k) || k.charCodeAt(0) === 58) continue;
    if (extra !== null && extra.has(k)) continue;
    out[k] = v;
  }
  if (via !== false) {
    const prev = joined(out.via);
    out.via = prev ? `${prev}, ${viaVersion} ${via}` : `${viaVersion} ${via}`;
  }
  return out;
}

/** Milliseconds a `Retry-After` (seconds or an HTTP date) asks for; null when absent or malformed. */
export function retryAfterMs(v: string | string[] | undefined, now: number): number | null {
  if (v === undefined) return null;
  const s = (typeof v === 'string' ? v : v[0] ?? '').trim();
  if (/^\d+$/.test(s)) return Number(s) * 1000;
  const t = Date.parse(s);
  return Number.isNaN(t) ? null : Math.max(0, t - now);
}
