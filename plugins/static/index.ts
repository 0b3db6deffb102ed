/**
 * Serves files from a folder as an onRender leaf: a request for a file that
 * exists is answered here; anything else goes on to the next renderer.
 *
 * Security: the decoded path is normalised and must stay inside the root
 * (after resolving symlinks); dotfiles other than `.well-known` are never
 * served; NUL bytes and malformed escapes are refused.
 */
import { createReadStream, promises as fsp, realpathSync, type Stats } from 'node:fs';
import { extname, join, resolve, sep } from 'node:path';
import { definePlugin, globToRegExp, type Headers, type ResponseData } from '../../plugin-api/index.js';
import { contentType } from './types.js';

interface Config {
  root?: string;
  index: string[];
  maxAge: number;
  immutable: string[];
  precompressed: boolean;
  memoryCacheBytes: number;
  recheckMs: number;
}

interface Entry {
  file: string;
  size: number;
  mtime: number;
  etag: string;
  lastModified: string;
  type: string;
  /** Whole file, for small files. */
  bytes: Buffer | null;
  /** Pre-compressed siblings that exist: encoding → path and size. */
  encoded: Map<string, { file: string; size: number; bytes: Buffer | null }>;
  checkedAt: number;
}

const SMALL = 256 * 1024;
const ENCODINGS: [string, string][] = [['br', '.br'], ['zstd', '.zst'], ['gzip', '.gz']];

function badRequest(msg: string): ResponseData {
  return { status: 400, headers: { 'content-type': 'application/json; charset=utf-8' }, body: JSON.stringify({ error: 'BEXT_ERR_NOT_FOUND', message: msg }) };
}

/** Parses Accept-Encoding into acceptable encodings (q > 0). */
export function acceptedEncodings(header: string | string[] | undefined): Set<string> {
  const out = new Set<string>();
  if (!header) return out;
  const wildcard: { q: number } = { q: -1 };
  const explicit = new Map<string, number>();
  for (const part of String(header).split(',')) {
    const [name, ...params] = part.trim().toLowerCase().split(';');
    if (!name) continue;
    let q = 1;
    for (const p of params) {
      const m = /^\s*q=([0-9.]+)\s*$/.exec(p);
      if (m) q = Number(m[1]);
    }
    if (name === '*') wildcard.q = q;
    else explicit.set(name === 'x-gzip' ? 'gzip' : name, q);
  }
  for (const [enc] of ENCODINGS) {
    const q = explicit.has(enc) ? explicit.get(enc)! : wildcard.q;
    if (q > 0) out.add(enc);
  }
  return out;
}

/** Parses a single `bytes=` range against a size; null = ignore, 'bad' = 416. */
export function parseRange(header: string, size: number): { start: number; end: number } | null | 'bad' {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m) return null; // multiple or malformed ranges: serve the whole file
  const [, a, b] = m;
  if (a === '' && b === '') return null;
  let start: number;
  let end: number;
  if (a === '') {
    const n = Number(b);
    if (n === 0) return 'bad';
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(a);
    end = b === '' ? size - 1 : Math.min(Number(b), size - 1);
  }
  if (start >= size || start > end) return 'bad';
  return { start, end };
}

export default definePlugin((host) => {
  const cfg = host.config<Config>();
  const siteDir = host.kernel?.siteDir ?? process.cwd();
  const rootPath = resolve(siteDir, cfg.root ?? 'public');
  let realRoot: string;
  try {
    realRoot = realpathSync(rootPath);
  } catch {
    realRoot = rootPath;
    host.log('warn', 'static root does not exist; every request passes through', { root: rootPath });
  }
  const immutable = cfg.immutable.map(globToRegExp);
  const cache = new Map<string, Entry>();
  let cachedBytes = 0;

  async function stat(p: string): Promise<Stats | null> {
    try {
      return await fsp.stat(p);
    } catch {
      return null;
    }
  }

  /** Finds the file for a URL path, or null. Paths are already checked. */
  async function lookup(rel: string): Promise<Entry | { redirect: string } | null> {
    const now = Date.now();
    const hit = cache.get(rel);
    if (hit && now - hit.checkedAt < cfg.recheckMs) return hit;
    let file = join(realRoot, rel);
    let st = await stat(file);
    if (st?.isDirectory()) {
      if (!rel.endsWith('/') && rel !== '') return { redirect: `${rel}/` };
      let found: Stats | null = null;
      for (const idx of cfg.index) {
        const f = join(file, idx);
        const s = await stat(f);
        if (s?.isFile()) {
          file = f;
          found = s;
          break;
        }
      }
      st = found;
    }
    if (!st || !st.isFile()) {
      if (hit) forget(rel, hit);
      return null;
    }
    // Symlinks must not lead out of the root.
    let real: string;
    try {
      real = await fsp.realpath(file);
    } catch {
      return null;
    }
    if (real !== realRoot && !real.startsWith(realRoot + sep)) return null;
    if (hit && hit.mtime === st.mtimeMs && hit.size === st.size && hit.file === real) {
      hit.checkedAt = now;
      return hit;
    }
    if (hit) forget(rel, hit);
    const entry: Entry = {
      file: real,
      size: st.size,
      mtime: st.mtimeMs,
      etag: `W/"${st.size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`,
      lastModified: st.mtime.toUTCString(),
      type: contentType(extname(real)),
      bytes: null,
      encoded: new Map(),
      checkedAt: now,
    };
    if (st.size <= SMALL && cachedBytes + st.size <= cfg.memoryCacheBytes) {
      entry.bytes = await fsp.readFile(real);
      cachedBytes += entry.bytes.length;
    }
    if (cfg.precompressed) {
      for (const [enc, ext] of ENCODINGS) {
        const s = await stat(real + ext);
        if (s?.isFile() && s.mtimeMs >= st.mtimeMs - 1000) {
          let bytes: Buffer | null = null;
          if (s.size <= SMALL && cachedBytes + s.size <= cfg.memoryCacheBytes) {
            bytes = await fsp.readFile(real + ext);
            cachedBytes += bytes.length;
          }
          entry.encoded.set(enc, { file: real + ext, size: s.size, bytes });
        }
      }
    }
    cache.set(rel, entry);
    return entry;
  }

  function forget(rel: string, e: Entry) {
    cache.delete(rel);
    cachedBytes -= e.bytes?.length ?? 0;
    for (const v of e.encoded.values()) cachedBytes -= v.bytes?.length ?? 0;
  }

  return {
    async onRender(req, next) {
      let decoded: string;
      try {
        decoded = decodeURIComponent(req.path);
      } catch {
        return badRequest('malformed percent-encoding in the path');
      }
      if (decoded.includes('\0') || decoded.includes('\\')) return badRequest('invalid character in the path');
      // Normalise, then refuse anything that climbs out or touches dotfiles.
      const segments: string[] = [];
      for (const s of decoded.split('/')) {
        if (s === '' || s === '.') continue;
        if (s === '..') return next();
        if (s.startsWith('.') && s !== '.well-known') return next();
        segments.push(s);
      }
      const rel = segments.join('/') + (decoded.endsWith('/') && segments.length ? '/' : '');
      const found = await lookup(rel);
      if (!found) return next();
      if ('redirect' in found) {
        const q = req.query ? `?${req.query}` : '';
        return { status: 301, headers: { location: `${req.path}/${q}` } };
      }
      const e = found;
      const headers: Headers = {
        'content-type': e.type,
        etag: e.etag,
        'last-modified': e.lastModified,
        'accept-ranges': 'bytes',
        'cache-control': immutable.some((re) => re.test(req.path)) ? 'public, max-age=31536000, immutable' : `public, max-age=${cfg.maxAge}`,
      };
      if (e.encoded.size) headers.vary = 'Accept-Encoding';
      const inm = req.headers['if-none-match'];
      if (inm !== undefined) {
        const tags = String(inm).split(',').map((t) => t.trim().replace(/^W\//, ''));
        if (tags.includes('*') || tags.includes(e.etag.replace(/^W\//, ''))) return { status: 304, headers };
      } else {
        const ims = req.headers['if-modified-since'];
        if (ims !== undefined) {
          const t = Date.parse(String(ims));
          if (!Number.isNaN(t) && Math.floor(e.mtime / 1000) <= Math.floor(t / 1000)) return { status: 304, headers };
        }
      }
      const range = req.headers.range;
      if (range !== undefined && (req.headers['if-range'] === undefined || req.headers['if-range'] === e.etag || req.headers['if-range'] === e.lastModified)) {
        const r = parseRange(String(range), e.size);
        if (r === 'bad') return { status: 416, headers: { ...headers, 'content-range': `bytes */${e.size}` } };
        if (r) {
          headers['content-range'] = `bytes ${r.start}-${r.end}/${e.size}`;
          headers['content-length'] = String(r.end - r.start + 1);
          const body = e.bytes ? e.bytes.subarray(r.start, r.end + 1) : createReadStream(e.file, { start: r.start, end: r.end });
          return { status: 206, headers, body };
        }
      }
      if (e.encoded.size) {
        const accepted = acceptedEncodings(req.headers['accept-encoding']);
        for (const [enc] of ENCODINGS) {
          const v = e.encoded.get(enc);
          if (v && accepted.has(enc)) {
            headers['content-encoding'] = enc;
            headers['content-length'] = String(v.size);
            return { status: 200, headers, body: v.bytes ?? createReadStream(v.file) };
          }
        }
      }
      headers['content-length'] = String(e.size);
      return { status: 200, headers, body: e.bytes ?? createReadStream(e.file) };
    },
  };
});
