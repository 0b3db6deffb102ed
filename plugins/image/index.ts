/**
 * `/api/image?src=…&w=…&q=…[&f=avif|webp|jpeg|png]`: resizes and converts
 * images with sharp. Sources must be on an allow-list (path prefixes under
 * the site's public folder, or remote origins/prefixes); source size and
 * pixel count are bounded; widths are rounded up to a fixed list so the
 * cache holds few variants. Results are kept in a bounded memory cache.
 *
 * Security: a remote source is fetched without following redirects (a
 * redirect could leave the allow-list); local paths are normalised and must
 * stay inside the root after symlinks; SVG sources are refused unless
 * allowed, and the answer is always a raster image.
 */
import { createHash } from 'node:crypto';
import { promises as fsp, realpathSync } from 'node:fs';
import { posix, resolve, sep } from 'node:path';
import { LRUCache } from 'lru-cache';
import sharp from 'sharp';
import { request } from 'undici';
import { BextError, definePlugin, hostMatches, type ResponseData, type TrustedRequest } from '../../plugin-api/index.js';

/** This plugin's section of bext.config.json, with defaults applied. */
export interface ImageConfig {
  root: string;
  local: string[];
  remote: string[];
  widths: number[];
  formats: ('avif' | 'webp')[];
  quality: number;
  avifEffort: number;
  maxSourceBytes: number;
  maxSourcePixels: number;
  fetchTimeoutMs: number;
  maxAge: number;
  concurrency: number;
  maxQueue: number;
  allowSvg: boolean;
  cache: { maxEntries: number; maxBytes: number };
}

type Format = 'avif' | 'webp' | 'jpeg' | 'png';

interface Result {
  body: Buffer;
  type: string;
  etag: string;
  width: number;
  negotiated: boolean;
}

const FORMATS = new Set<Format>(['avif', 'webp', 'jpeg', 'png']);

function errorResponse(e: BextError): ResponseData {
  return { status: e.status, headers: { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', ...(e.status === 503 ? { 'retry-after': '1' } : {}) }, body: JSON.stringify(e.toJSON()) };
}

const invalid = (msg: string, hint?: string) => new BextError('BEXT_ERR_IMAGE_INVALID', msg, hint ? { hint } : {});

interface RemoteRule {
  protocol: string;
  host: string;
  port: string;
  prefix: string;
}

function parseRemote(s: string): RemoteRule {
  const wild = s.match(/^(https?):\/\/\*\.([^/:]+)(:\d+)?(\/.*)?$/);
  if (wild) return { protocol: `${wild[1]}:`, host: `*.${wild[2]!.toLowerCase()}`, port: wild[3]?.slice(1) ?? '', prefix: wild[4] ?? '/' };
  const u = new URL(s);
  return { protocol: u.protocol, host: u.hostname.toLowerCase(), port: u.port, prefix: u.pathname || '/' };
}

export default definePlugin((host) => {
  const cfg = host.config<ImageConfig>();
  const site = host.kernel?.siteDir ?? process.cwd();
  const root = resolve(site, cfg.root);
  let realRoot: string | null = null;
  const widths = [...new Set(cfg.widths)].sort((a, b) => a - b);
  const remotes = cfg.remote.map(parseRemote);
  const cache = new LRUCache<string, Result>({ max: cfg.cache.maxEntries, maxSize: cfg.cache.maxBytes, sizeCalculation: (v) => v.body.length + 128 });
  const inflight = new Map<string, Promise<Result>>();
  let running = 0;
  const waiting: (() => void)[] = [];

  function metric(name: string, v: number, labels: Record<string, string> = {}, kind: 'counter' | 'gauge' | 'histogram' = 'counter'): void {
    try {
      host.metric(name, v, labels, kind);
    } catch (e) {
      host.log('warn', 'image metric not recorded', { metric: name, error: (e as Error).message });
    }
  }

  async function slot<T>(fn: () => Promise<T>): Promise<T> {
    if (running >= cfg.concurrency) {
      if (waiting.length >= cfg.maxQueue) throw new BextError('BEXT_ERR_PLUGIN_FAILED', `${cfg.concurrency} images are being transformed and ${cfg.maxQueue} wait`);
      await new Promise<void>((r) => waiting.push(r));
    }
    running++;
    try {
      return await fn();
    } finally {
      running--;
      waiting.shift()?.();
    }
  }

  function widthFor(w: string | null): number | null {
    if (w === null) return null;
    if (!/^\d{1,5}$/.test(w) || Number(w) < 1) throw invalid(`w=${JSON.stringify(w.slice(0, 20))} is not a positive integer width`);
    const n = Number(w);
    return widths.find((x) => x >= n) ?? widths[widths.length - 1]!;
  }

  function formatFor(f: string | null, accept: string): { fmt: Format | null; negotiated: boolean } {
    if (f !== null) {
      const x = (f === 'jpg' ? 'jpeg' : f) as Format;
      if (!FORMATS.has(x)) throw invalid(`f=${JSON.stringify(f.slice(0, 20))} is not one of avif, webp, jpeg, png`);
      return { fmt: x, negotiated: false };
    }
    for (const m of cfg.formats) if (accept.includes(`image/${m}`)) return { fmt: m, negotiated: true };
    return { fmt: null, negotiated: true };
  }

  /** The bytes of an allowed source. */
  async function source(src: string): Promise<Buffer> {
    if (src.startsWith('/') && !src.startsWith('//')) {
      if (src.includes('\0') || src.includes('\\')) throw invalid('the source path has forbidden characters');
      const p = posix.normalize(src);
      if (p !== src || p.split('/').some((s) => s === '..' || (s.startsWith('.') && s !== '.well-known'))) throw new BextError('BEXT_ERR_IMAGE_DENIED', `local source ${JSON.stringify(src)} is not a normalised public path`);
      if (!cfg.local.some((pre) => p.startsWith(pre))) throw new BextError('BEXT_ERR_IMAGE_DENIED', `local source ${p} is outside the allowed prefixes`, { hint: `plugins.image.local: ${JSON.stringify(cfg.local)}` });
      const file = resolve(root, `.${p}`);
      let real: string;
      try {
        realRoot ??= realpathSync(root);
        real = realpathSync(file);
      } catch {
        throw new BextError('BEXT_ERR_NOT_FOUND', `no image at ${p}`);
      }
      if (real !== realRoot && !real.startsWith(realRoot + sep)) throw new BextError('BEXT_ERR_IMAGE_DENIED', `local source ${p} leaves the image root`);
      const st = await fsp.stat(real);
      if (!st.isFile()) throw new BextError('BEXT_ERR_NOT_FOUND', `no image at ${p}`);
      if (st.size > cfg.maxSourceBytes) throw new BextError('BEXT_ERR_IMAGE_TOO_LARGE', `${p} is ${st.size} bytes; the limit is ${cfg.maxSourceBytes}`);
      return fsp.readFile(real);
    }
    let u: URL;
    try {
      u = new URL(src);
    } catch {
      throw invalid('src must be a path under the site (/img/a.jpg) or an absolute http(s) URL');
    }
    const hostName = u.hostname.toLowerCase();
    const ok = remotes.some((r) => r.protocol === u.protocol && (r.host === hostName || (r.host.startsWith('*.') && hostMatches(r.host, hostName))) && r.port === u.port && u.pathname.startsWith(r.prefix));
    if (!ok || u.username || u.password) throw new BextError('BEXT_ERR_IMAGE_DENIED', `remote source ${u.origin}${u.pathname} is not on the allow-list`, { hint: 'add its origin (or a prefix) to plugins.image.remote' });
    const r = await request(u, { method: 'GET', headersTimeout: cfg.fetchTimeoutMs, bodyTimeout: cfg.fetchTimeoutMs, maxRedirections: 0, headers: { accept: 'image/*' } }).catch((e: Error) => {
      throw new BextError('BEXT_ERR_PROXY_BAD_GATEWAY', `fetching ${u.origin}${u.pathname} failed: ${e.message}`);
    });
    if (r.statusCode !== 200) {
      await r.body.dump();
      throw new BextError('BEXT_ERR_PROXY_BAD_GATEWAY', `${u.origin}${u.pathname} answered ${r.statusCode}`);
    }
    const len = Number(r.headers['content-length']);
    if (len > cfg.maxSourceBytes) {
      await r.body.dump();
      throw new BextError('BEXT_ERR_IMAGE_TOO_LARGE', `the source is ${len} bytes; the limit is ${cfg.maxSourceBytes}`);
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of r.body) {
      size += (c as Buffer).length;
      if (size > cfg.maxSourceBytes) {
        r.body.destroy();
        throw new BextError('BEXT_ERR_IMAGE_TOO_LARGE', `the source is larger than ${cfg.maxSourceBytes} bytes`);
      }
      chunks.push(c as Buffer);
    }
    return Buffer.concat(chunks);
  }

  async function transform(src: string, width: number | null, q: number, fmt: Format | null, negotiated: boolean): Promise<Result> {
    const input = await source(src);
    return slot(async () => {
      const t0 = performance.now();
      const img = sharp(input, { limitInputPixels: cfg.maxSourcePixels, failOn: 'error' });
      let meta;
      try {
        meta = await img.metadata();
      } catch (e) {
        const m = (e as Error).message;
        if (/pixel limit/i.test(m)) throw new BextError('BEXT_ERR_IMAGE_TOO_LARGE', `the source has more than ${cfg.maxSourcePixels} pixels`);
        throw invalid(`the source is not a decodable image (${m})`);
      }
      if (meta.format === 'svg' && !cfg.allowSvg) throw new BextError('BEXT_ERR_IMAGE_DENIED', 'SVG sources are refused', { hint: 'set plugins.image.allowSvg to rasterise them' });
      if ((meta.width ?? 0) * (meta.height ?? 0) > cfg.maxSourcePixels) throw new BextError('BEXT_ERR_IMAGE_TOO_LARGE', `the source has ${meta.width}×${meta.height} pixels; the limit is ${cfg.maxSourcePixels}`);
      const out: Format = fmt ?? (meta.format === 'png' || meta.format === 'gif' || meta.format === 'svg' ? 'png' : 'jpeg');
      let p = img.rotate();
      if (width) p = p.resize({ width, withoutEnlargement: true });
      p = out === 'avif' ? p.avif({ quality: q, effort: cfg.avifEffort }) : out === 'webp' ? p.webp({ quality: q }) : out === 'png' ? p.png({ compressionLevel: 9, palette: q < 100 }) : p.jpeg({ quality: q, mozjpeg: true });
      let res;
      try {
        res = await p.toBuffer({ resolveWithObject: true });
      } catch (e) {
        throw invalid(`the source could not be converted (${(e as Error).message})`);
      }
      metric('transform_seconds', (performance.now() - t0) / 1000, { format: out }, 'histogram');
      return {
        body: res.data,
        type: `image/${out}`,
        etag: `"${createHash('sha256').update(res.data).digest('base64url').slice(0, 22)}"`,
        width: res.info.width,
        negotiated,
      };
    });
  }

  function answer(r: Result, req: TrustedRequest, status: 'hit' | 'miss'): ResponseData {
    const headers: Record<string, string> = {
      etag: r.etag,
      'cache-control': `public, max-age=${cfg.maxAge}, stale-while-revalidate=${cfg.maxAge}`,
      'x-content-type-options': 'nosniff',
      'x-image-cache': status,
    };
    if (r.negotiated) headers.vary = 'Accept';
    if (req.headers['if-none-match'] === r.etag) return { status: 304, headers };
    return { status: 200, headers: { ...headers, 'content-type': r.type }, body: r.body };
  }

  return {
    async onRoute(req: TrustedRequest): Promise<ResponseData> {
      try {
        const params = new URLSearchParams(req.query);
        const src = params.get('src');
        if (!src) throw invalid('src is required', 'e.g. /api/image?src=/img/hero.jpg&w=640');
        if (src.length > 2048) throw invalid('src is longer than 2048 characters');
        const width = widthFor(params.get('w'));
        const qs = params.get('q');
        if (qs !== null && (!/^\d{1,3}$/.test(qs) || Number(qs) < 1 || Number(qs) > 100)) throw invalid(`q=${JSON.stringify(qs.slice(0, 20))} is not a quality from 1 to 100`);
        const q = qs === null ? cfg.quality : Number(qs);
        const accept = typeof req.headers.accept === 'string' ? req.headers.accept : '';
        const { fmt, negotiated } = formatFor(params.get('f'), accept);
        const key = `${src}\n${width ?? ''}\n${q}\n${fmt ?? ''}\n${negotiated ? 'n' : ''}`;
        const hit = cache.get(key);
        if (hit) {
          metric('requests_total', 1, { result: 'hit' });
          return answer(hit, req, 'hit');
        }
        let p = inflight.get(key);
        if (!p) {
          p = transform(src, width, q, fmt, negotiated).then((r) => {
            cache.set(key, r);
            return r;
          });
          inflight.set(key, p);
          p.finally(() => inflight.delete(key)).catch(() => undefined);
        }
        const r = await p;
        metric('requests_total', 1, { result: 'miss' });
        return answer(r, req, 'miss');
      } catch (e) {
        const err = e instanceof BextError ? e : new BextError('BEXT_ERR_PLUGIN_FAILED', String((e as Error)?.message ?? e));
        metric('requests_total', 1, { result: 'error' });
        if (err.status >= 500) host.log('warn', 'image request failed', { error: err.message });
        return errorResponse(err);
      }
    },
  };
});
