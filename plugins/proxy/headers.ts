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
  if (v === undefined || v === 'keep-alive' || v === 'close') return null;
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

let lastValue = '';
let lastQuoted = '';
function forwardedValue(v: string): string {
  // Nearly every request of a site names the same host: remember the last answer.
  if (v === lastValue) return lastQuoted;
  lastValue = v;
  lastQuoted = TOKEN.test(v) ? v : `"${v.replace(/["\\]/g, '\\$&')}"`;
  return lastQuoted;
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

/** The upstream's response headers as the client gets them: without hop-by-hop headers. */
export function clientResponseHeaders(src: Record<string, string | string[] | undefined>): Headers {
  const extra = connectionTokens(src.connection);
  const out: Headers = {};
  for (const k in src) {
    const v = src[k];
    if (v === undefined || HOP_BY_HOP.has(k) || k.charCodeAt(0) === 58) continue;
    if (extra !== null && extra.has(k)) continue;
    out[k] = v;
  }
  return out;
}

/**
 * The same from undici's raw header list (name, value, name, value…), in
 * one pass: lower-cased names, repeated ones as arrays.
 */
export function clientResponseHeadersRaw(raw: Buffer[]): Headers {
  const out: Headers = {};
  let connection: string | null = null;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const k = raw[i]!.toString('latin1').toLowerCase();
    const v = raw[i + 1]!.toString('latin1');
    if (HOP_BY_HOP.has(k)) {
      if (k === 'connection') connection = connection === null ? v : `${connection}, ${v}`;
      continue;
    }
    const prev = out[k];
    if (prev === undefined) out[k] = v;
    else if (typeof prev === 'string') out[k] = [prev, v];
    else prev.push(v);
  }
  // Rare: Connection naming further hop-by-hop headers, which may have come before it.
  if (connection !== null) {
    const extra = connectionTokens(connection);
    if (extra !== null) for (const k of extra) delete out[k];
  }
  return out;
}

/** Appends this proxy to the Via header. */
export function addVia(h: Headers, via: string, version: string): void {
  const prev = joined(h.via);
  h.via = prev ? `${prev}, ${version} ${via}` : `${version} ${via}`;
}

/** Milliseconds a `Retry-After` (seconds or an HTTP date) asks for; null when absent or malformed. */
export function retryAfterMs(v: string | string[] | undefined, now: number): number | null {
  if (v === undefined) return null;
  const s = (typeof v === 'string' ? v : v[0] ?? '').trim();
  if (/^\d+$/.test(s)) return Number(s) * 1000;
  const t = Date.parse(s);
  return Number.isNaN(t) ? null : Math.max(0, t - now);
}
