/**
 * Content-coding helpers shared by the plugins that compress or serve
 * encoded bodies (cache, compression, static): `Accept-Encoding`
 * negotiation with q-values and `identity`, which media types are worth
 * compressing, and `Vary` merging. Plugins cannot import each other, so the
 * one place they share this is here. Pure functions, no codecs.
 */
import type { Headers } from './hooks.js';

/** Content codings bext produces. */
export type ContentCoding = 'br' | 'zstd' | 'gzip';

export const CONTENT_CODINGS: readonly ContentCoding[] = ['br', 'zstd', 'gzip'];

/** What a client's `Accept-Encoding` allows, in the order to try. */
export interface EncodingPreference {
  /** Acceptable codings among those offered, best first (q descending, then the server's order). */
  codings: ContentCoding[];
  /** Whether an unencoded body is acceptable (`identity;q=0`, or `*;q=0` without an identity entry, refuse it). */
  identity: boolean;
}

/**
 * Parses `Accept-Encoding` against the codings a server offers (in its order
 * of preference). No header means only identity (RFC 9110 §12.5.3 allows
 * any coding, but clients that send none usually cannot decode one).
 *
 * @example
 * ```ts
 * acceptEncoding('gzip;q=0.5, br', ['zstd', 'br', 'gzip']) // { codings: ['br', 'gzip'], identity: true }
 * acceptEncoding('*;q=0', ['br'])                          // { codings: [], identity: false }
 * ```
 */
export function acceptEncoding(header: string | string[] | undefined, offered: readonly ContentCoding[]): EncodingPreference {
  if (header === undefined) return { codings: [], identity: true };
  const text = Array.isArray(header) ? header.join(',') : header;
  const q = new Map<string, number>();
  let star = -1;
  for (const part of text.split(',')) {
    const semi = part.indexOf(';');
    const name = (semi === -1 ? part : part.slice(0, semi)).trim().toLowerCase();
    if (!name) continue;
    let weight = 1;
    if (semi !== -1) {
      const m = /(?:^|;)\s*q\s*=\s*([0-9.]+)\s*(?:;|$)/i.exec(part.slice(semi));
      if (m) {
        weight = Number(m[1]);
        if (!Number.isFinite(weight) || weight < 0) weight = 0;
        if (weight > 1) weight = 1;
      }
    }
    if (name === '*') star = weight;
    else q.set(name === 'x-gzip' ? 'gzip' : name, Math.max(weight, q.get(name) ?? -1));
  }
  const scored: { c: ContentCoding; w: number; i: number }[] = [];
  offered.forEach((c, i) => {
    const w = q.has(c) ? q.get(c)! : star;
    if (w > 0) scored.push({ c, w, i });
  });
  scored.sort((a, b) => b.w - a.w || a.i - b.i);
  const identity = q.has('identity') ? q.get('identity')! > 0 : star !== 0;
  return { codings: scored.map((s) => s.c), identity };
}

/**
 * Media types worth compressing: text, JSON, JavaScript, CSS, XML, SVG,
 * WebAssembly and uncompressed fonts. Never already-compressed media
 * (images other than SVG/BMP/ICO, audio, video, woff/woff2, archives) and
 * never `text/event-stream`, whose events must not wait in a compressor.
 */
export const COMPRESSIBLE_TYPES: readonly string[] = [
  'text/*', 'application/json', 'application/*+json', 'application/javascript', 'application/x-javascript',
  'application/ecmascript', 'application/xml', 'application/*+xml', 'image/svg+xml', 'application/wasm',
  'application/x-ndjson', 'application/graphql-response+json', 'font/ttf', 'font/otf', 'application/vnd.ms-fontobject',
  'image/x-icon', 'image/vnd.microsoft.icon', 'image/bmp',
];

const NEVER = new Set(['text/event-stream']);

/**
 * Compiles a list of media-type patterns (`text/*`, `application/*+json`,
 * exact types) into a predicate over a `Content-Type` value (parameters
 * ignored, case-insensitive).
 *
 * @example compressibleType(COMPRESSIBLE_TYPES)('text/html; charset=utf-8') === true
 */
export function compressibleType(patterns: readonly string[] = COMPRESSIBLE_TYPES): (contentType: string | string[] | undefined) => boolean {
  const exact = new Set<string>();
  const res: RegExp[] = [];
  for (const p of patterns) {
    const lower = p.toLowerCase();
    if (!lower.includes('*')) exact.add(lower);
    else res.push(new RegExp(`^${lower.replace(/[.+?^${}()|[\]\\/]/g, '\\$&').replace(/\*/g, '[^/;]*')}$`));
  }
  const memo = new Map<string, boolean>();
  return (contentType) => {
    if (contentType === undefined) return false;
    const raw = Array.isArray(contentType) ? contentType[0] ?? '' : contentType;
    const hit = memo.get(raw);
    if (hit !== undefined) return hit;
    const semi = raw.indexOf(';');
    const type = (semi === -1 ? raw : raw.slice(0, semi)).trim().toLowerCase();
    const ok = !NEVER.has(type) && (exact.has(type) || res.some((r) => r.test(type)));
    if (memo.size < 512) memo.set(raw, ok);
    return ok;
  };
}

/**
 * Adds a field name to a `Vary` value unless it is already there (or the
 * value is `*`). Returns the new value, or the same one when unchanged.
 *
 * @example varyWith('Cookie', 'Accept-Encoding') === 'Cookie, Accept-Encoding'
 */
export function varyWith(vary: string | string[] | undefined, field: string): string {
  if (vary === undefined || vary === '') return field;
  const text = Array.isArray(vary) ? vary.join(', ') : vary;
  const want = field.toLowerCase();
  for (const part of text.split(',')) {
    const name = part.trim().toLowerCase();
    if (name === want || name === '*') return text;
  }
  return `${text}, ${field}`;
}

/** The `Vary` field names of a response, lower-cased. */
export function varyFields(headers: Headers): string[] {
  const v = headers.vary;
  if (v === undefined) return [];
  const text = Array.isArray(v) ? v.join(',') : v;
  const out: string[] = [];
  for (const part of text.split(',')) {
    const name = part.trim().toLowerCase();
    if (name && !out.includes(name)) out.push(name);
  }
  return out;
}
