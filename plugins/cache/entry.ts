/**
 * A stored response: identity bytes, the encoded variants made for it, its
 * lifetime, tags, and validators; how it is packed for Redis; and the
 * codecs that make and read variants.
 */
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { pack, unpack } from 'msgpackr';
import { compress as zstdCompress, decompress as zstdDecompress } from 'zstd-napi';
import type { ContentCoding, Headers } from '../../plugin-api/index.js';

export interface Entry {
  /** Full key (primary + the values of the headers it varies on). */
  key: string;
  primary: string;
  /** Scheme, host, path and query as rendered: what a revalidation requests. */
  url: string;
  host: string;
  path: string;
  status: number;
  /** Response headers as stored (no hop-by-hop, Set-Cookie, Age, Date, Content-Length, Content-Encoding). */
  headers: Headers;
  body: Buffer;
  variants: Partial<Record<ContentCoding, Buffer>>;
  /** Strong validator of the identity bytes (the origin's, or a hash). */
  etag: string;
  lastModified: string;
  storedAt: number;
  initialAge: number;
  freshMs: number;
  swrMs: number;
  sieMs: number;
  mustRevalidate: boolean;
  authOk: boolean;
  negative: boolean;
  compressible: boolean;
  tags: string[];
  vary: string[];
  /** The values of the `vary` request headers this entry was rendered for (a revalidation sends them again). */
  varyValues: Record<string, string>;
  rule: string;
}

/** An entry in memory, with what is derived from it once. */
export interface LiveEntry extends Entry {
  size: number;
  /** Head of the response per coding ('' = identity), built on first use. */
  prebuilt: Map<string, Headers>;
  /** Invalidation epoch its tags were last checked at, and the answer. */
  checkedEpoch: number;
  tagState: 'ok' | 'soft' | 'hard';
}

const HEADER_OVERHEAD = 64;

export function sizeOf(e: Entry): number {
  let n = e.body.length + e.key.length * 2 + e.url.length * 2 + 512;
  for (const v of Object.values(e.variants)) n += v?.length ?? 0;
  for (const k in e.headers) n += k.length + String(e.headers[k]).length + HEADER_OVERHEAD;
  for (const t of e.tags) n += t.length * 2 + HEADER_OVERHEAD;
  return n;
}

export function live(e: Entry): LiveEntry {
  const l = e as LiveEntry;
  l.prebuilt = new Map();
  l.checkedEpoch = -1;
  l.tagState = 'ok';
  l.size = sizeOf(e);
  return l;
}

const FORMAT = 1;

/** Packs an entry for Redis (MessagePack; Infinity survives as a float). */
export function packEntry(e: Entry): Buffer {
  const { key, primary, url, host, path, status, headers, body, variants, etag, lastModified, storedAt, initialAge, freshMs, swrMs, sieMs, mustRevalidate, authOk, negative, compressible, tags, vary, varyValues, rule } = e;
  return pack({ f: FORMAT, key, primary, url, host, path, status, headers, body, variants, etag, lastModified, storedAt, initialAge, freshMs, swrMs, sieMs, mustRevalidate, authOk, negative, compressible, tags, vary, varyValues, rule });
}

/** Unpacks an entry read from Redis; null for another format or a corrupt value. */
export function unpackEntry(buf: Buffer): LiveEntry | null {
  try {
    const o = unpack(buf) as Entry & { f?: number };
    if (o.f !== FORMAT || typeof o.key !== 'string' || !(o.body instanceof Uint8Array)) return null;
    delete o.f;
    o.body = Buffer.isBuffer(o.body) ? o.body : Buffer.from(o.body);
    for (const k of Object.keys(o.variants ?? {}) as ContentCoding[]) {
      const v = o.variants[k]!;
      o.variants[k] = Buffer.isBuffer(v) ? v : Buffer.from(v);
    }
    return live(o);
  } catch {
    return null;
  }
}

export function hashKey(key: string): string {
  return createHash('sha256').update(key).digest('base64url');
}

/** A strong ETag for bytes the origin gave none for. */
export function etagOf(body: Buffer): string {
  return `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`;
}

/** The opaque part of an entity tag (weak comparison, RFC 9110 §8.8.3.2). */
export function opaque(tag: string): string {
  return tag.startsWith('W/') ? tag.slice(2) : tag;
}

/** Whether an If-None-Match value matches a stored ETag (weak comparison). */
export function noneMatch(header: string | string[], etag: string): boolean {
  const text = Array.isArray(header) ? header.join(',') : header;
  if (text.trim() === '*') return true;
  const want = opaque(etag);
  for (const part of text.split(',')) if (opaque(part.trim()) === want) return true;
  return false;
}

const brotli = promisify(zlib.brotliCompress);
const gzip = promisify(zlib.gzip);
const unbrotli = promisify(zlib.brotliDecompress);
const gunzip = promisify(zlib.gunzip);
const inflate = promisify(zlib.inflate);

/**
 * Compresses a body into one coding. brotli and gzip run on libuv's
 * threadpool; zstd-napi has no asynchronous call, so it runs inline (it is
 * the fastest of the three).
 */
export async function encode(coding: ContentCoding, body: Buffer, level: number): Promise<Buffer> {
  if (coding === 'br') {
    return brotli(body, { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: level, [zlib.constants.BROTLI_PARAM_MODE]: zlib.constants.BROTLI_MODE_TEXT, [zlib.constants.BROTLI_PARAM_SIZE_HINT]: body.length } });
  }
  if (coding === 'gzip') return gzip(body, { level });
  return zstdCompress(body, { compressionLevel: level });
}

/** Decodes a body an origin sent encoded, so it can be stored as identity; null for a coding this cache cannot read. */
export async function decode(coding: string, body: Buffer, limit: number): Promise<Buffer | null> {
  const opts = { maxOutputLength: limit };
  switch (coding.trim().toLowerCase()) {
    case 'br':
      return unbrotli(body, opts);
    case 'gzip':
    case 'x-gzip':
      return gunzip(body, opts);
    case 'deflate':
      return inflate(body, opts);
    case 'zstd': {
      const out = zstdDecompress(body);
      return out.length > limit ? null : out;
    }
    default:
      return null;
  }
}
