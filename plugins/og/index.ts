/**
 * `/api/og`: Open Graph images (1200×630 PNG) from a JSX template, rendered
 * by satori and resvg in a worker thread, kept in a bounded memory cache and
 * sent with long-lived Cache-Control and an ETag.
 *
 * Templates: the built-in `default`, and every `og/<name>.tsx` of the served
 * site (bundled with esbuild at start).
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { LRUCache } from 'lru-cache';
import { BextError, definePlugin, type ResponseData, type TrustedRequest } from '../../plugin-api/index.js';
import type { OgAnswer, OgRequest, OgWorkerInit } from './worker.js';

/** This plugin's section of bext.config.json, with defaults applied. */
export interface OgConfig {
  templates: string;
  width: number;
  height: number;
  fonts?: { name: string; path: string; weight: number; style?: 'normal' | 'italic' }[];
  maxParams: number;
  maxParamLength: number;
  maxAge: number;
  timeoutMs: number;
  maxQueue: number;
  cache: { maxEntries: number; maxBytes: number };
}

interface Image {
  png: Buffer;
  etag: string;
}

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const PARAM = /^[A-Za-z][A-Za-z0-9_-]{0,31}$/;

function json(status: number, body: unknown, extra: Record<string, string> = {}): ResponseData {
  return { status, headers: { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', ...extra }, body: JSON.stringify(body) };
}

function defaultFonts(): OgWorkerInit['fonts'] {
  const dir = join(dirname(require.resolve('@fontsource/inter/package.json')), 'files');
  return [400, 700].map((weight) => ({ name: 'Inter', path: join(dir, `inter-latin-${weight}-normal.woff`), weight, style: 'normal' as const }));
}

export default definePlugin(async (host) => {
  const cfg = host.config<OgConfig>();
  const site = host.kernel?.siteDir ?? process.cwd();
  const work = mkdtempSync(join(tmpdir(), 'bext-og-'));
  const esbuild = await import('esbuild');
  const reactDir = dirname(require.resolve('react/package.json'));

  async function bundle(entry: string, out: string): Promise<void> {
    await esbuild.build({
      entryPoints: [entry], outfile: out, bundle: true, platform: 'node', format: 'cjs', target: 'node20',
      jsx: 'automatic', logLevel: 'silent', define: { 'process.env.NODE_ENV': '"production"' },
      alias: { react: reactDir }, nodePaths: [dirname(reactDir)],
    });
  }

  const templates: Record<string, string> = {};
  const workerFile = join(work, 'worker.cjs');
  try {
    await esbuild.build({ entryPoints: [join(here, 'worker.ts')], outfile: workerFile, bundle: true, platform: 'node', format: 'cjs', target: 'node20', packages: 'external', logLevel: 'silent' });
    templates.default = join(work, 'default.cjs');
    await bundle(join(here, 'template.ts'), templates.default);
    const dir = resolve(site, cfg.templates);
    if (existsSync(dir)) {
      for (const f of readdirSync(dir)) {
        if (!/\.(tsx|jsx|ts|js)$/.test(f) || f.endsWith('.d.ts')) continue;
        const name = basename(f, extname(f));
        if (!PARAM.test(name)) continue;
        templates[name] = join(work, `t-${name}.cjs`);
        await bundle(join(dir, f), templates[name]);
      }
    }
  } catch (e) {
    rmSync(work, { recursive: true, force: true });
    const first = (e as { errors?: { text: string; location?: { file: string; line: number } }[] }).errors?.[0];
    throw new BextError('BEXT_ERR_PLUGIN_LOAD', `og: bundling the templates failed: ${first ? `${first.location?.file ?? ''}:${first.location?.line ?? ''} ${first.text}` : (e as Error).message}`);
  }
  const init: OgWorkerInit = {
    base: join(here, 'index.ts'),
    templates,
    fonts: (cfg.fonts ?? defaultFonts()).map((f) => ({ ...f, path: resolve(site, f.path), style: f.style ?? 'normal' })),
    width: cfg.width,
    height: cfg.height,
  };

  const cache = new LRUCache<string, Image>({ max: cfg.cache.maxEntries, maxSize: cfg.cache.maxBytes, sizeCalculation: (v) => v.png.length + 64 });
  const inflight = new Map<string, Promise<Image>>();
  const stats = { renders: 0, hits: 0, errors: 0, timeouts: 0, restarts: 0 };
  let worker: { w: Worker; ready: Promise<void>; pending: Map<number, { resolve: (a: OgAnswer) => void; timer: NodeJS.Timeout }> } | null = null;
  let seq = 0;

  function metric(name: string, v: number, kind: 'counter' | 'gauge' = 'counter'): void {
    try {
      host.metric(name, v, {}, kind);
    } catch (e) {
      host.log('warn', 'og metric not recorded', { metric: name, error: (e as Error).message });
    }
  }

  function startWorker(): NonNullable<typeof worker> {
    const w = new Worker(workerFile, { workerData: init, execArgv: [], resourceLimits: { maxOldGenerationSizeMb: 256 } });
    const pending = new Map<number, { resolve: (a: OgAnswer) => void; timer: NodeJS.Timeout }>();
    const ready = new Promise<void>((res, rej) => {
      w.once('message', () => res());
      w.once('exit', (code) => rej(new Error(`og worker exited with code ${code} before it was ready`)));
    });
    ready.catch(() => undefined);
    const me = { w, ready, pending };
    w.on('message', (m: OgAnswer & { ready?: boolean }) => {
      if (m.ready) return;
      const p = pending.get(m.id);
      if (!p) return;
      pending.delete(m.id);
      clearTimeout(p.timer);
      p.resolve(m);
    });
    w.on('error', (e) => host.log('error', 'og worker failed', { error: e.message }));
    w.on('exit', () => {
      if (worker === me) worker = null;
      for (const [id, p] of pending) {
        clearTimeout(p.timer);
        p.resolve({ id, status: 500, error: 'the og worker exited' });
      }
      pending.clear();
    });
    return me;
  }

  async function render(template: string, props: Record<string, string>): Promise<OgAnswer> {
    if (!worker) worker = startWorker();
    const me = worker;
    if (me.pending.size >= cfg.maxQueue) return { id: 0, status: 503, error: `${cfg.maxQueue} images are already rendering` };
    await me.ready;
    const id = ++seq;
    return new Promise<OgAnswer>((resolve) => {
      const timer = setTimeout(() => {
        me.pending.delete(id);
        stats.timeouts++;
        resolve({ id, status: 504, error: `the image did not render within ${cfg.timeoutMs} ms` });
        // A template stuck in a loop holds the worker: replace it.
        stats.restarts++;
        void me.w.terminate();
      }, cfg.timeoutMs);
      me.pending.set(id, { resolve, timer });
      me.w.postMessage({ id, template, props } satisfies OgRequest);
    });
  }

  const flush = setInterval(() => {
    metric('cache_entries', cache.size, 'gauge');
    metric('cache_bytes', cache.calculatedSize, 'gauge');
  }, 5000);
  flush.unref();

  function answer(img: Image, req: TrustedRequest, status: string): ResponseData {
    const headers = { etag: img.etag, 'cache-control': `public, max-age=${cfg.maxAge}, stale-while-revalidate=${cfg.maxAge * 7}`, 'x-og-cache': status };
    if (req.headers['if-none-match'] === img.etag) return { status: 304, headers };
    return { status: 200, headers: { ...headers, 'content-type': 'image/png' }, body: img.png };
  }

  return {
    async onRoute(req: TrustedRequest): Promise<ResponseData> {
      const params = new URLSearchParams(req.query);
      const props: Record<string, string> = {};
      let template = 'default';
      let n = 0;
      for (const [k, v] of params) {
        if (++n > cfg.maxParams) return json(400, new BextError('BEXT_ERR_OG_INVALID', `at most ${cfg.maxParams} parameters`).toJSON());
        if (!PARAM.test(k)) return json(400, new BextError('BEXT_ERR_OG_INVALID', `parameter name ${JSON.stringify(k.slice(0, 40))} is not allowed`).toJSON());
        if (v.length > cfg.maxParamLength) return json(400, new BextError('BEXT_ERR_OG_INVALID', `parameter "${k}" is longer than ${cfg.maxParamLength} characters`).toJSON());
        if (k === 'template') template = v;
        else props[k] = v;
      }
      if (!templates[template]) return json(400, new BextError('BEXT_ERR_OG_INVALID', `no template "${template}"`, { hint: `templates: ${Object.keys(templates).join(', ')}` }).toJSON());
      const key = `${template}\n${JSON.stringify(Object.entries(props).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))}`;
      const hit = cache.get(key);
      if (hit) {
        stats.hits++;
        metric('cache_hits_total', 1);
        return answer(hit, req, 'hit');
      }
      let p = inflight.get(key);
      if (!p) {
        p = (async () => {
          const t0 = performance.now();
          const a = await render(template, props);
          if (!a.png) throw Object.assign(new Error(a.error ?? 'render failed'), { status: a.status ?? 500 });
          stats.renders++;
          metric('renders_total', 1);
          try {
            host.metric('render_seconds', (performance.now() - t0) / 1000, {}, 'histogram');
          } catch {
            // Without the metrics capability the render still counts.
          }
          const png = Buffer.from(a.png.buffer, a.png.byteOffset, a.png.byteLength);
          const img = { png, etag: `"${createHash('sha256').update(png).digest('base64url').slice(0, 22)}"` };
          cache.set(key, img);
          return img;
        })();
        inflight.set(key, p);
        p.finally(() => inflight.delete(key)).catch(() => undefined);
      }
      try {
        return answer(await p, req, 'miss');
      } catch (e) {
        stats.errors++;
        metric('errors_total', 1);
        const status = (e as { status?: number }).status ?? 500;
        host.log(status >= 500 ? 'error' : 'warn', 'og image failed', { template, error: (e as Error).message.split('\n')[0] });
        const code = status === 400 ? 'BEXT_ERR_OG_INVALID' : status === 504 ? 'BEXT_ERR_PLUGIN_TIMEOUT' : 'BEXT_ERR_PLUGIN_FAILED';
        return json(status, { error: code, message: (e as Error).message.split('\n')[0] }, status === 503 ? { 'retry-after': '1' } : {});
      }
    },

    async dispose() {
      clearInterval(flush);
      if (worker) await worker.w.terminate();
      rmSync(work, { recursive: true, force: true });
    },
  };
});
