/**
 * The render worker. The build bundles this file with the site's pages into
 * one CommonJS file; a worker thread runs that file, which calls
 * `startWorker` with every page, layout and island of the build.
 *
 * A worker renders many requests at once (loaders await I/O); React's
 * rendering itself is synchronous for string renders, so memoisation state
 * is per render (a context), never global.
 */
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { createElement, type ComponentType, type ReactElement, type ReactNode } from 'react';
import { renderToPipeableStream, renderToString } from 'react-dom/server';
import { Writable } from 'node:stream';
import { LRUCache } from 'lru-cache';
import { isControlSignal, MARK, MemoTableContext, setMemoStore, type Loader, type MemoTable, type PageContext, type RenderMode } from './runtime.js';
import type { FromWorker, RenderRequest, RenderSettings, ToWorker, WorkerInit } from './protocol.js';

/** A page module as the build imports it. */
export interface PageModule {
  default: ComponentType<any>;
  load?: Loader;
  mode?: RenderMode;
  revalidate?: number;
  swr?: number;
  stream?: boolean;
}

export interface LayoutModule {
  default: ComponentType<any>;
}

/** An island module: `islands/<name>.tsx`. Its loader receives the island's props. */
export interface IslandModule {
  default: ComponentType<any>;
  load?: (props: Record<string, unknown>, ctx: PageContext) => unknown;
  mode?: RenderMode;
  revalidate?: number;
  swr?: number;
}

/** Everything a build hands to the worker. */
export interface SiteBundle {
  buildId: string;
  routes: { pattern: string; page: PageModule; layouts: LayoutModule[] }[];
  notFound: { page: PageModule; layouts: LayoutModule[] } | null;
  islands: Record<string, IslandModule>;
}

const DEFAULT_INIT: WorkerInit = {
  bext: true,
  memo: { maxEntries: 10_000, maxBytes: 32 << 20 },
  staleIfError: 86_400,
  maxStale: 604_800,
  defaultMode: 'ssr',
  defaultRevalidate: 60,
  staticRevalidate: 60,
  renderTimeoutMs: 10_000,
  statsIntervalMs: 1000,
};

const MODES = new Set(['isr', 'ssr', 'static', 'swr']);

/** Reads a module's render settings, with the configured defaults. */
export function settingsOf(mod: { mode?: unknown; revalidate?: unknown; swr?: unknown; stream?: unknown }, init: WorkerInit): RenderSettings {
  const revalidate = typeof mod.revalidate === 'number' && mod.revalidate >= 0 ? mod.revalidate : undefined;
  let mode = typeof mod.mode === 'string' && MODES.has(mod.mode) ? (mod.mode as RenderMode) : undefined;
  // `export const revalidate = 60` alone means ISR, as in Next.js.
  mode ??= revalidate !== undefined ? 'isr' : init.defaultMode;
  return {
    mode,
    revalidate: revalidate ?? init.defaultRevalidate,
    swr: typeof mod.swr === 'number' && mod.swr >= 0 ? mod.swr : init.maxStale,
    stream: mod.stream === true,
  };
}

/** Response headers that tell the cache plugin (and browsers) how long a page lives. */
export function cacheHeaders(s: RenderSettings, revalidate: number, init: WorkerInit): Record<string, string> {
  const sie = `stale-if-error=${init.staleIfError}`;
  switch (s.mode) {
    case 'ssr':
      return { 'cache-control': 'no-store' };
    case 'isr':
      return { 'cache-control': 'public, max-age=0', 'surrogate-control': `max-age=${revalidate}, stale-while-revalidate=${init.maxStale}, ${sie}` };
    case 'swr':
      return { 'cache-control': 'public, max-age=0', 'surrogate-control': `max-age=${revalidate}, stale-while-revalidate=${s.swr}, ${sie}` };
    case 'static':
      // Rendered once per build; the short max-age lets a cache notice a new build in the background.
      return { 'cache-control': 'public, max-age=0', 'surrogate-control': `max-age=${init.staticRevalidate}, stale-while-revalidate=${init.maxStale}, ${sie}` };
  }
}

const LINK_RE = /<link\b[^>]*>/gi;
const SCRIPT_RE = /<script\b[^>]*>/gi;
const ATTRS: Record<string, RegExp> = {};
const ENTITIES: Record<string, string> = { '&amp;': '&', '&quot;': '"', '&#x27;': "'", '&#39;': "'", '&lt;': '<', '&gt;': '>' };
function attr(tag: string, name: string): string | undefined {
  const re = (ATTRS[name] ??= new RegExp(`\\b${name}="([^"]*)"`, 'i'));
  const v = re.exec(tag)?.[1];
  return v?.replace(/&(?:amp|quot|#x27|#39|lt|gt);/g, (e) => ENTITIES[e]!);
}

/** Link header values for Early Hints: stylesheets, preloads and module scripts in the head. */
export function hintLinks(html: string): string[] {
  const end = html.indexOf('</head>');
  if (end === -1) return [];
  const head = html.slice(0, end);
  const out: string[] = [];
  for (const m of head.matchAll(LINK_RE)) {
    const tag = m[0];
    const rel = attr(tag, 'rel')?.toLowerCase();
    const href = attr(tag, 'href');
    if (!href || !href.startsWith('/') || href.startsWith('//')) continue;
    if (rel === 'stylesheet') out.push(`<${href}>; rel=preload; as=style`);
    else if (rel === 'preload') {
      const as = attr(tag, 'as');
      out.push(`<${href}>; rel=preload${as ? `; as=${as}` : ''}`);
    } else if (rel === 'modulepreload') out.push(`<${href}>; rel=modulepreload`);
  }
  for (const m of head.matchAll(SCRIPT_RE)) {
    const src = attr(m[0], 'src');
    if (!src || !src.startsWith('/') || src.startsWith('//')) continue;
    out.push(/\btype="module"/i.test(m[0]) ? `<${src}>; rel=modulepreload` : `<${src}>; rel=preload; as=script`);
  }
  return [...new Set(out)].slice(0, 16);
}

// ------------------------------------------------------------ memo splice

/** Per-worker store of memoised HTML, bounded by entries and bytes. */
class Memo {
  readonly lru: LRUCache<string, string>;
  counts: Record<string, { hit: number; miss: number; uncacheable: number }> = {};
  constructor(max: number, maxBytes: number) {
    this.lru = new LRUCache<string, string>({ max, maxSize: maxBytes, sizeCalculation: (v, k) => (v.length + k.length) * 2 || 1 });
  }
  get(key: string): string | undefined {
    return this.lru.get(key);
  }
  set(key: string, html: string): void {
    this.lru.set(key, html);
  }
  count(name: string, what: 'hit' | 'miss' | 'uncacheable'): void {
    const c = (this.counts[name] ??= { hit: 0, miss: 0, uncacheable: 0 });
    c[what]++;
  }
}

/**
 * Replaces memo marks in rendered HTML: a hit mark becomes the stored HTML;
 * the HTML between a start and an end mark is stored. Works on a stream of
 * chunks (marks may straddle chunk boundaries).
 */
export class Splicer {
  #open: { i: number; parts: string[] }[] = [];
  #tail = '';
  constructor(private table: MemoTable, private memo: Memo) {}

  push(chunk: string): string {
    let s = this.#tail ? this.#tail + chunk : chunk;
    this.#tail = '';
    if (s.indexOf(MARK) === -1) {
      if (this.#open.length) this.#capture(s);
      return s;
    }
    const nonce = this.table.nonce;
    let out = '';
    let pos = 0;
    for (;;) {
      const a = s.indexOf(MARK, pos);
      if (a === -1) {
        out += this.#emit(s.slice(pos));
        break;
      }
      const b = s.indexOf(MARK, a + 1);
      if (b === -1) {
        out += this.#emit(s.slice(pos, a));
        if (s.length - a > 64) out += this.#emit(s.slice(a));
        else this.#tail = s.slice(a);
        break;
      }
      out += this.#emit(s.slice(pos, a));
      const body = s.slice(a + 1, b);
      if (!body.startsWith(nonce)) {
        // A stray U+0001 in the content: keep it, look for marks after it.
        out += this.#emit(MARK);
        pos = a + 1;
        continue;
      }
      const kind = body.charCodeAt(nonce.length);
      const i = Number(body.slice(nonce.length + 1));
      const slot = this.table.slots[i];
      if (kind === 72 /* H */ && slot?.html !== undefined) out += this.#emit(slot.html);
      else if (kind === 83 /* S */) this.#open.push({ i, parts: [] });
      else if (kind === 69 /* E */) {
        const o = this.#open.pop();
        if (o && o.i === i && slot?.key) this.memo.set(slot.key, o.parts.join(''));
      }
      pos = b + 1;
    }
    s = out;
    return s;
  }

  end(): string {
    const t = this.#tail;
    this.#tail = '';
    return t;
  }

  #emit(seg: string): string {
    if (seg && this.#open.length) this.#capture(seg);
    return seg;
  }

  #capture(seg: string): void {
    for (const o of this.#open) o.parts.push(seg);
  }
}

// ------------------------------------------------------------------ render

class ResponseState {
  status = 200;
  headers: Record<string, string> = {};
  tags: string[] = [];
  revalidate: number | null = null;
}

function contextFor(m: RenderRequest, st: ResponseState): PageContext {
  const query: Record<string, string> = {};
  if (m.query) for (const [k, v] of new URLSearchParams(m.query)) query[k] = v;
  return {
    params: m.params,
    query,
    path: m.path,
    headers: m.headers,
    status: (code) => {
      if (Number.isInteger(code) && code >= 200 && code <= 599) st.status = code;
    },
    header: (name, value) => {
      st.headers[String(name).toLowerCase()] = String(value);
    },
    tag: (...tags) => {
      for (const t of tags) if (typeof t === 'string' && t) st.tags.push(t);
    },
    revalidate: (s) => {
      if (typeof s === 'number' && s >= 0) st.revalidate = s;
    },
  };
}

function errorMessage(e: unknown): string {
  if (e instanceof Error) return e.stack ?? e.message;
  return String(e);
}

/** Starts serving renders when running as a bext render worker; otherwise does nothing. */
export function startWorker(site: SiteBundle): void {
  if (isMainThread || !parentPort || !(workerData as WorkerInit | undefined)?.bext) return;
  const port = parentPort;
  const init: WorkerInit = { ...DEFAULT_INIT, ...(workerData as WorkerInit) };
  const memo = new Memo(init.memo.maxEntries, init.memo.maxBytes);
  setMemoStore(memo);
  const settings = site.routes.map((r) => settingsOf(r.page, init));
  const islandSettings: Record<string, RenderSettings> = {};
  for (const [name, mod] of Object.entries(site.islands)) islandSettings[name] = settingsOf(mod, init);
  const aborts = new Map<number, () => void>();
  const aborted = new Set<number>();
  let nonceSeq = 0;
  const nonceBase = Math.random().toString(36).slice(2, 10);

  const post = (m: FromWorker) => port.postMessage(m);

  function tree(page: PageModule, layouts: LayoutModule[], data: unknown, m: RenderRequest, query: Record<string, string>, table: MemoTable): ReactElement {
    let el: ReactNode = createElement(page.default, { data, params: m.params, query, path: m.path });
    for (let i = layouts.length - 1; i >= 0; i--) el = createElement(layouts[i]!.default, { path: m.path, params: m.params }, el);
    const root = layouts.length === 0 ? createElement('html', { lang: 'en' }, createElement('head', null, createElement('meta', { charSet: 'utf-8' })), createElement('body', null, el)) : el;
    return createElement(MemoTableContext.Provider, { value: table }, root);
  }

  function newTable(): MemoTable {
    return { nonce: `${nonceBase}${(++nonceSeq).toString(36)}.`, slots: [] };
  }

  function finishHeaders(s: RenderSettings, st: ResponseState, tags: string[]): Record<string, string> {
    const h: Record<string, string> = { 'content-type': 'text/html; charset=utf-8', ...cacheHeaders(s, st.revalidate ?? s.revalidate, init), ...st.headers };
    const all = [...tags, ...st.tags];
    if (all.length) h['cache-tag'] = all.join(' ');
    return h;
  }

  function renderDocument(el: ReactElement, table: MemoTable): string {
    const html = new Splicer(table, memo).push(renderToString(el));
    return html.startsWith('<html') ? `<!DOCTYPE html>${html}` : html;
  }

  /** The answer to a loader's `notFound()`: the site's 404 page, or a plain one. */
  function notFoundAnswer(m: RenderRequest): { status: number; headers: Record<string, string>; body: string } {
    const headers = { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'public, max-age=0', 'surrogate-control': 'max-age=60' };
    if (!site.notFound) return { status: 404, headers, body: '<!DOCTYPE html><title>Not found</title><h1>Not found</h1>' };
    const table = newTable();
    const el = tree(site.notFound.page, site.notFound.layouts, undefined, m, {}, table);
    return { status: 404, headers, body: renderDocument(el, table) };
  }

  async function page(m: Extract<ToWorker, { t: 'page' }>): Promise<void> {
    const id = m.id;
    if (m.route === -1) {
      try {
        return post({ t: 'done', id, ...notFoundAnswer(m), links: [] });
      } catch (e) {
        return post({ t: 'fail', id, status: 500, code: 'BEXT_ERR_SSR_RENDER', message: errorMessage(e) });
      }
    }
    const route = site.routes[m.route];
    const s = settings[m.route];
    if (!route || !s) return post({ t: 'fail', id, status: 500, code: 'BEXT_ERR_SSR_RENDER', message: `no route ${m.route} in build ${site.buildId}` });
    const st = new ResponseState();
    const ctx = contextFor(m, st);
    const tags = [`page:${route.pattern}`];
    let data: unknown;
    try {
      data = route.page.load ? await route.page.load(ctx) : undefined;
    } catch (e) {
      return control(m, e);
    }
    if (aborted.delete(id)) return;
    const table = newTable();
    const el = tree(route.page, route.layouts, data, m, ctx.query, table);
    const headers = finishHeaders(s, st, tags);
    if (!(m.stream || s.stream)) {
      let body: string;
      try {
        body = renderDocument(el, table);
      } catch (e) {
        return control(m, e);
      }
      return post({ t: 'done', id, status: st.status, headers, body, links: hintLinks(body) });
    }
    stream(id, el, table, st.status, headers);
  }

  function stream(id: number, el: ReactElement, table: MemoTable, status: number, headers: Record<string, string>): void {
    const splicer = new Splicer(table, memo);
    const decoder = new TextDecoder();
    // Until the head is posted (after the shell, so its links are known), output is held here.
    let pending: string[] | null = [];
    let ended = false;
    const send = (text: string) => {
      if (!text) return;
      if (pending) pending.push(text);
      else post({ t: 'chunk', id, data: text });
    };
    const finish = () => {
      aborts.delete(id);
      post({ t: 'end', id });
    };
    const out = new Writable({
      write(chunk: Uint8Array, _enc, cb) {
        send(splicer.push(decoder.decode(chunk, { stream: true })));
        cb();
      },
      final(cb) {
        send(splicer.push(decoder.decode()) + splicer.end());
        ended = true;
        if (!pending) finish();
        cb();
      },
    });
    const timer = setTimeout(() => r.abort(new Error(`render did not finish within ${init.renderTimeoutMs} ms`)), init.renderTimeoutMs);
    timer.unref();
    out.on('finish', () => clearTimeout(timer));
    const r = renderToPipeableStream(el, {
      onShellReady() {
        // pipe() writes the shell (and, for a page that never suspends, everything) synchronously.
        r.pipe(out);
        const first = pending!.join('');
        pending = null;
        post({ t: 'head', id, status, headers, links: hintLinks(first) });
        if (first) post({ t: 'chunk', id, data: first });
        if (ended) finish();
      },
      onShellError(e) {
        clearTimeout(timer);
        aborts.delete(id);
        post({ t: 'fail', id, status: 500, code: 'BEXT_ERR_SSR_RENDER', message: errorMessage(e) });
      },
      onError(e) {
        // A boundary that failed after the shell: React already streams its fallback; the
        // main thread logs it (the status line has left).
        if (!ended) console.error(`bext ssr: a suspended part of the page failed: ${errorMessage(e)}`);
      },
    });
    aborts.set(id, () => {
      clearTimeout(timer);
      r.abort(new Error('the client went away'));
    });
  }

  async function island(m: Extract<ToWorker, { t: 'island' }>): Promise<void> {
    const id = m.id;
    const mod = site.islands[m.island];
    const s = islandSettings[m.island];
    if (!mod || !s) return post({ t: 'fail', id, status: 404, code: 'BEXT_ERR_NOT_FOUND', message: `no island "${m.island}" in this build` });
    const st = new ResponseState();
    const ctx = contextFor(m, st);
    let props: Record<string, unknown> = {};
    const p = ctx.query.p;
    if (p) {
      try {
        const v = JSON.parse(Buffer.from(p, 'base64url').toString('utf8')) as unknown;
        if (v && typeof v === 'object' && !Array.isArray(v)) props = v as Record<string, unknown>;
      } catch {
        return post({ t: 'fail', id, status: 400, code: 'BEXT_ERR_SSR_RENDER', message: `island "${m.island}": the p parameter is not base64url JSON` });
      }
    }
    try {
      const data = mod.load ? await mod.load(props, ctx) : undefined;
      if (aborted.delete(id)) return;
      const table = newTable();
      const body = new Splicer(table, memo).push(renderToString(createElement(MemoTableContext.Provider, { value: table }, createElement(mod.default, { ...props, data }))));
      post({ t: 'done', id, status: st.status, headers: finishHeaders(s, st, [`island:${m.island}`]), body, links: [] });
    } catch (e) {
      control(m, e);
    }
  }

  function control(m: RenderRequest, e: unknown): void {
    if (aborted.delete(m.id)) return;
    if (isControlSignal(e)) {
      if (e.kind === 'redirect') {
        return post({ t: 'done', id: m.id, status: e.status ?? 307, headers: { location: e.location ?? '/', 'cache-control': 'no-store' }, body: '', links: [] });
      }
      try {
        const a = notFoundAnswer(m);
        return post({ t: 'done', id: m.id, ...a, links: [] });
      } catch (err) {
        e = err;
      }
    }
    post({ t: 'fail', id: m.id, status: 500, code: 'BEXT_ERR_SSR_RENDER', message: errorMessage(e) });
  }

  port.on('message', (m: ToWorker) => {
    switch (m.t) {
      case 'page':
        void page(m).catch((e: unknown) => control(m, e));
        break;
      case 'island':
        void island(m).catch((e: unknown) => control(m, e));
        break;
      case 'abort': {
        const a = aborts.get(m.id);
        if (a) {
          aborts.delete(m.id);
          a();
        } else aborted.add(m.id);
        // Bounded: an abort for a render that already answered is never consumed.
        if (aborted.size > 10_000) aborted.clear();
        break;
      }
      case 'ping':
        post({ t: 'pong', seq: m.seq });
        break;
    }
  });

  const stats = setInterval(() => {
    const counts = memo.counts;
    memo.counts = {};
    post({ t: 'stats', heapUsed: process.memoryUsage().heapUsed, memo: counts, memoEntries: memo.lru.size, memoBytes: memo.lru.calculatedSize });
  }, init.statsIntervalMs);
  stats.unref();
  post({ t: 'ready', settings, islands: islandSettings });
}
