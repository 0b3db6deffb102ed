/**
 * Compresses responses that are not encoded yet, as a stream, with the best
 * coding the client accepts. A body that already carries Content-Encoding
 * (a cache hit served from a stored variant, a pre-compressed file) passes
 * untouched, which is how a cache hit costs no compression: the cache
 * stores encoded variants at fill time and this plugin never sees them.
 *
 * `Vary: Accept-Encoding` goes on every response whose body could have been
 * encoded (compressible type, large enough), whether this client got an
 * encoded one or not, so a shared cache downstream keys it right.
 */
import { Duplex, Transform, type TransformCallback } from 'node:stream';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { CompressStream, compress as zstdCompress } from 'zstd-napi';
import {
  acceptEncoding, compressibleType, definePlugin, varyWith, COMPRESSIBLE_TYPES,
  type ContentCoding, type EncodingPreference, type Headers, type ResponseDecision, type ResponseHead, type TrustedRequest,
} from '../../plugin-api/index.js';

/** This plugin's section of bext.config.json, with defaults applied. */
export interface CompressionConfig {
  encodings: ContentCoding[];
  levels: { br: number; zstd: number; gzip: number };
  minBytes: number;
  types?: string[];
  flushEachChunk: boolean;
}

type Inner = zlib.Gzip | zlib.BrotliCompress | CompressStream;

/** Creates the raw compressor for a coding at a level; `sizeHint` helps brotli pick its window. */
export function createCompressor(coding: ContentCoding, level: number, sizeHint?: number): Inner {
  if (coding === 'br') {
    const params: Record<number, number> = { [zlib.constants.BROTLI_PARAM_QUALITY]: level, [zlib.constants.BROTLI_PARAM_MODE]: zlib.constants.BROTLI_MODE_TEXT };
    if (sizeHint !== undefined && sizeHint > 0) params[zlib.constants.BROTLI_PARAM_SIZE_HINT] = sizeHint;
    return zlib.createBrotliCompress({ params });
  }
  if (coding === 'gzip') return zlib.createGzip({ level });
  return new CompressStream({ compressionLevel: level });
}

/**
 * A compressor as one Duplex: counts bytes in and out, flushes after each
 * written chunk when asked (so a streamed page is not held back until the
 * compressor's buffer fills), and honours backpressure from the socket.
 */
export class CompressingStream extends Duplex {
  bytesIn = 0;
  bytesOut = 0;
  readonly #inner: Inner;
  readonly #coding: ContentCoding;
  readonly #flushEach: boolean;
  readonly #done: (s: CompressingStream) => void;

  constructor(coding: ContentCoding, level: number, flushEach: boolean, sizeHint: number | undefined, done: (s: CompressingStream) => void) {
    super();
    this.#coding = coding;
    this.#flushEach = flushEach;
    this.#done = done;
    const inner = (this.#inner = createCompressor(coding, level, sizeHint));
    inner.on('data', (d: Buffer) => {
      this.bytesOut += d.length;
      if (!this.push(d)) inner.pause();
    });
    inner.once('end', () => {
      this.push(null);
      this.#done(this);
    });
    inner.on('error', (e: Error) => this.destroy(e));
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.bytesIn += chunk.length;
    const ok = this.#inner.write(chunk);
    if (this.#flushEach) this.#flush(cb);
    else if (ok) cb();
    else this.#inner.once('drain', () => cb());
  }

  #flush(cb: (e?: Error | null) => void): void {
    const inner = this.#inner;
    if (inner instanceof CompressStream) inner.flush((e) => cb(e ?? null));
    else if (this.#coding === 'br') (inner as zlib.BrotliCompress).flush(zlib.constants.BROTLI_OPERATION_FLUSH, () => cb());
    else (inner as zlib.Gzip).flush(zlib.constants.Z_SYNC_FLUSH, () => cb());
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.#inner.end();
    cb();
  }

  override _read(): void {
    this.#inner.resume();
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    this.#inner.destroy();
    cb(err);
  }
}

const gzipOnce = promisify(zlib.gzip);
const brotliOnce = promisify(zlib.brotliCompress);

/**
 * For a body that was in memory before the response started: the kernel
 * hands it over as one chunk, and one call of the library on it costs less
 * than feeding the streaming API (no per-chunk bookkeeping, no internal
 * copies), so it is compressed in one go when the input ends.
 */
export class WholeBodyCompressor extends Transform {
  bytesIn = 0;
  bytesOut = 0;
  readonly #chunks: Buffer[] = [];
  readonly #coding: ContentCoding;
  readonly #level: number;
  readonly #done: (s: WholeBodyCompressor) => void;

  constructor(coding: ContentCoding, level: number, done: (s: WholeBodyCompressor) => void) {
    super();
    this.#coding = coding;
    this.#level = level;
    this.#done = done;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytesIn += chunk.length;
    this.#chunks.push(chunk);
    cb();
  }

  override _flush(cb: TransformCallback): void {
    const input = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks);
    this.#chunks.length = 0;
    const level = this.#level;
    const out: Promise<Buffer> = this.#coding === 'gzip'
      ? gzipOnce(input, { level })
      : this.#coding === 'br'
        ? brotliOnce(input, { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: level, [zlib.constants.BROTLI_PARAM_MODE]: zlib.constants.BROTLI_MODE_TEXT, [zlib.constants.BROTLI_PARAM_SIZE_HINT]: input.length } })
        : new Promise((res, rej) => {
            try {
              res(zstdCompress(input, { compressionLevel: level }));
            } catch (e) {
              rej(e as Error);
            }
          });
    out.then(
      (b) => {
        this.bytesOut = b.length;
        this.#done(this);
        cb(null, b);
      },
      (e: Error) => cb(e),
    );
  }
}

/** Counters kept in memory and handed to bext_metric once a second (a call per response would cost more than the rest of this hook). */
class Counters {
  responses = new Map<string, number>();
  skipped = new Map<string, number>();
  bytesIn = 0;
  bytesOut = 0;
  compressedHits = 0;
  add(m: Map<string, number>, k: string): void {
    m.set(k, (m.get(k) ?? 0) + 1);
  }
}

const NO_BODY = new Set([204, 304]);

export default definePlugin((host) => {
  const cfg = host.config<CompressionConfig>();
  const compressible = compressibleType(cfg.types ?? COMPRESSIBLE_TYPES);
  const levels = cfg.levels;
  const offered = cfg.encodings;
  const counters = new Counters();

  // Browsers send a handful of distinct Accept-Encoding values; parse each once.
  const prefs = new Map<string, EncodingPreference>();
  const prefFor = (h: string | string[] | undefined): EncodingPreference => {
    const k = h === undefined ? '' : Array.isArray(h) ? h.join(',') : h;
    let p = prefs.get(k);
    if (!p) {
      p = acceptEncoding(h, offered);
      if (prefs.size < 256) prefs.set(k, p);
    }
    return p;
  };

  const varyMemo = new Map<string, boolean>();
  const varyHasAE = (v: string | string[] | undefined): boolean => {
    if (v === undefined) return false;
    const k = Array.isArray(v) ? v.join(', ') : v;
    let r = varyMemo.get(k);
    if (r === undefined) {
      r = varyWith(k, 'Accept-Encoding') === k;
      if (varyMemo.size < 256) varyMemo.set(k, r);
    }
    return r;
  };

  let metricsOff = false;
  const flush = () => {
    if (metricsOff) return;
    try {
      for (const [enc, n] of counters.responses) host.metric('responses_total', n, { encoding: enc }, 'counter');
      for (const [reason, n] of counters.skipped) host.metric('skipped_total', n, { reason }, 'counter');
      if (counters.bytesIn) host.metric('bytes_in_total', counters.bytesIn, {}, 'counter');
      if (counters.bytesOut) host.metric('bytes_out_total', counters.bytesOut, {}, 'counter');
      host.metric('compressed_hits_total', counters.compressedHits, {}, 'counter');
    } catch (e) {
      // Without the metrics grant every flush would fail the same way: say so once and stop.
      metricsOff = true;
      host.log('warn', 'compression metrics are off: bext_metric failed', { error: (e as Error).message });
    }
    counters.responses.clear();
    counters.skipped.clear();
    counters.bytesIn = counters.bytesOut = counters.compressedHits = 0;
  };
  const timer = setInterval(flush, 1000);
  timer.unref();

  const onDone = (s: CompressingStream | WholeBodyCompressor) => {
    counters.bytesIn += s.bytesIn;
    counters.bytesOut += s.bytesOut;
  };

  /**
   * The body's kind and length without decoding it. `ResponseHead.body` turns
   * a byte body into a string on every read (milliseconds for a few MB), so
   * the kernel's view object is read for its in-memory body when it exposes
   * one; otherwise the text view is used.
   */
  const peek = (res: ResponseHead): { length: number | undefined; streamed: boolean; text: boolean } => {
    const cl = res.headers['content-length'];
    const raw = (res as { raw?: unknown }).raw;
    let length: number | undefined;
    if (cl !== undefined) {
      const n = Number(Array.isArray(cl) ? cl[0] : cl);
      if (Number.isFinite(n)) length = n;
    }
    if ('raw' in res) {
      if (typeof raw === 'string') return { length: length ?? Buffer.byteLength(raw), streamed: false, text: true };
      if (raw instanceof Uint8Array) return { length: length ?? raw.byteLength, streamed: false, text: false };
      return { length, streamed: raw !== undefined && raw !== null, text: false };
    }
    const body = res.body;
    return { length: length ?? (body === undefined ? undefined : Buffer.byteLength(body)), streamed: body === undefined, text: typeof body === 'string' };
  };

  const skip = (reason: string): undefined => {
    counters.add(counters.skipped, reason);
    return undefined;
  };

  return {
    onResponse(req: TrustedRequest, res: ResponseHead): ResponseDecision {
      const h: Headers = res.headers;
      if (h['content-encoding'] !== undefined) return undefined;
      if (res.status < 200 || NO_BODY.has(res.status) || res.status === 206 || h['content-range'] !== undefined) return undefined;
      const pref = prefFor(req.headers['accept-encoding']);
      const coding = pref.codings[0];
      // Nothing to encode for this client, and Vary already right: the common cache-hit case, decided without touching the body.
      if ((coding === undefined || req.method === 'HEAD') && varyHasAE(h.vary)) return undefined;
      const body = peek(res);
      // String bodies without a type are written as text/plain by the kernel.
      const type = h['content-type'] ?? (body.text ? 'text/plain' : undefined);
      if (!compressible(type)) return skip('type');
      const cc = h['cache-control'];
      if (cc !== undefined && /(?:^|,)\s*no-transform\s*(?:,|$)/i.test(Array.isArray(cc) ? cc.join(',') : cc)) return skip('no-transform');
      const len = body.length;
      if (len !== undefined && len < cfg.minBytes) return skip('small');
      const vary = varyWith(h.vary, 'Accept-Encoding');
      if (coding === undefined || req.method === 'HEAD') {
        counters.add(counters.responses, 'identity');
        return vary === h.vary ? undefined : { setHeaders: { vary } };
      }
      counters.add(counters.responses, coding);
      const status = h['cache-status'];
      if (status !== undefined && /;\s*hit\b/.test(String(status))) {
        counters.compressedHits++;
      }
      const setHeaders: Headers = { 'content-encoding': coding, vary };
      // The encoded bytes differ from the identity ones: a strong validator would claim byte equality.
      const etag = h.etag;
      if (typeof etag === 'string' && etag.startsWith('"')) setHeaders.etag = `W/${etag}`;
      // A compressed body leaves in several writes; with Nagle on, each small write after the first
      // waits for the peer's delayed ACK (tens of ms). The kernel's listeners do not disable it.
      req.raw.socket.setNoDelay(true);
      const streamed = body.streamed;
      const level = levels[coding];
      return {
        setHeaders,
        removeHeaders: ['content-length'],
        transform: streamed
          ? () => new CompressingStream(coding, level, cfg.flushEachChunk, len, onDone)
          : () => new WholeBodyCompressor(coding, level, onDone),
      };
    },
    dispose() {
      clearInterval(timer);
      flush();
    },
  };
});
