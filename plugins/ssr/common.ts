/**
 * What the render worker and the tenant sandbox runtime share: page module
 * shapes, render settings, cache headers, the loader context and Early Hints
 * link discovery. Plain JavaScript only (no Node built-ins), so it also runs
 * inside QuickJS and V8 isolates.
 */
import { createElement, type ComponentType, type ReactElement, type ReactNode } from 'react';
import { isControlSignal, type Loader, type PageContext, type RenderMode } from './runtime.js';
import type { RenderRequest, RenderSettings, WorkerInit } from './protocol.js';

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

export const DEFAULT_INIT: WorkerInit = {
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

/** Query string → last value per name (`+` is a space; a malformed escape is kept as written). */
export function parseQuery(q: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (!q) return out;
  for (const part of q.split('&')) {
    if (!part) continue;
    const i = part.indexOf('=');
    const k = dec(i === -1 ? part : part.slice(0, i));
    out[k] = i === -1 ? '' : dec(part.slice(i + 1));
  }
  return out;
}

function dec(s: string): string {
  const t = s.replace(/\+/g, ' ');
  try {
    return decodeURIComponent(t);
  } catch {
    return t;
  }
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** base64url → UTF-8 text, without Buffer or atob (sandboxes have neither). */
export function fromBase64Url(s: string): string {
  let bits = 0;
  let acc = 0;
  let bin = '';
  for (const ch of s.replace(/=+$/, '')) {
    const v = B64.indexOf(ch === '+' ? '-' : ch === '/' ? '_' : ch);
    if (v === -1) throw new Error('not base64url');
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bin += String.fromCharCode((acc >> bits) & 0xff);
    }
  }
  return decodeURIComponent(escape(bin));
}

/** What a loader set on its response. */
export class ResponseState {
  status = 200;
  headers: Record<string, string> = {};
  tags: string[] = [];
  revalidate: number | null = null;
}

/** Builds the context a loader receives; its setters write to `st`. */
export function contextFor(m: RenderRequest, st: ResponseState): PageContext {
  return {
    params: m.params,
    query: parseQuery(m.query),
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
    revalidate: (sec) => {
      if (typeof sec === 'number' && sec >= 0) st.revalidate = sec;
    },
  };
}

/** A finished render, as plain data. */
export interface Answer {
  status: number;
  headers: Record<string, string>;
  body: string;
  links: string[];
}

/** A page whose data is loaded: the element to render and the head of its answer. */
export interface Prepared {
  el: ReactElement;
  status: number;
  headers: Record<string, string>;
  stream: boolean;
}

/**
 * The render logic both runtimes share. `html(el)` renders an element to a
 * string (the worker adds memoisation around it; a sandbox calls plain
 * renderToString).
 */
export interface Core {
  settings: RenderSettings[];
  islands: Record<string, RenderSettings>;
  /** Loads a page's data: an element to render, or a finished answer (404, redirect). Rejects with a RenderFailure. */
  prepare(m: RenderRequest, route: number): Promise<Prepared | Answer>;
  /** A whole document as a string. */
  document(el: ReactElement): string;
  /** An island's HTML fragment. Rejects with a RenderFailure. */
  island(m: RenderRequest, name: string): Promise<Answer>;
  /** The answer for an error a page threw: a 404 or redirect for control signals, else a 500. */
  failure(m: RenderRequest, e: unknown): Answer;
}

const HTML = 'text/html; charset=utf-8';

function errorText(e: unknown): string {
  return e instanceof Error ? (e.stack ?? e.message) : String(e);
}

/** Thrown out of `failure` for a real error: the caller reports it with its stack. */
export class RenderFailure extends Error {
  constructor(readonly status: number, readonly detail: string) {
    super(detail.split('\n')[0]);
  }
}

export function createCore(site: SiteBundle, init: WorkerInit, html: (el: ReactElement) => string): Core {
  const settings = site.routes.map((r) => settingsOf(r.page, init));
  const islands: Record<string, RenderSettings> = {};
  for (const [name, mod] of Object.entries(site.islands)) islands[name] = settingsOf(mod, init);

  function tree(page: PageModule, layouts: LayoutModule[], data: unknown, m: RenderRequest, query: Record<string, string>): ReactElement {
    let el: ReactNode = createElement(page.default, { data, params: m.params, query, path: m.path });
    for (let i = layouts.length - 1; i >= 0; i--) el = createElement(layouts[i]!.default, { path: m.path, params: m.params }, el);
    if (layouts.length > 0) return el as ReactElement;
    return createElement('html', { lang: 'en' }, createElement('head', null, createElement('meta', { charSet: 'utf-8' })), createElement('body', null, el));
  }

  function document(el: ReactElement): string {
    const s = html(el);
    return s.startsWith('<html') ? `<!DOCTYPE html>${s}` : s;
  }

  function headersFor(s: RenderSettings, st: ResponseState, tag: string): Record<string, string> {
    const h: Record<string, string> = { 'content-type': HTML, ...cacheHeaders(s, st.revalidate ?? s.revalidate, init), ...st.headers };
    h['cache-tag'] = [tag, ...st.tags].join(' ');
    return h;
  }

  function notFound(m: RenderRequest): Answer {
    const headers = { 'content-type': HTML, 'cache-control': 'public, max-age=0', 'surrogate-control': 'max-age=60' };
    if (!site.notFound) return { status: 404, headers, body: '<!DOCTYPE html><title>Not found</title><h1>Not found</h1>', links: [] };
    const body = document(tree(site.notFound.page, site.notFound.layouts, undefined, m, {}));
    return { status: 404, headers, body, links: hintLinks(body) };
  }

  function failure(m: RenderRequest, e: unknown): Answer {
    if (isControlSignal(e)) {
      if (e.kind === 'redirect') return { status: e.status ?? 307, headers: { location: e.location ?? '/', 'cache-control': 'no-store' }, body: '', links: [] };
      try {
        return notFound(m);
      } catch (err) {
        e = err;
      }
    }
    throw new RenderFailure(500, errorText(e));
  }

  return {
    settings,
    islands,
    document,
    failure,
    async prepare(m, route) {
      if (route === -1) {
        try {
          return notFound(m);
        } catch (e) {
          return failure(m, e);
        }
      }
      const r = site.routes[route];
      const s = settings[route];
      if (!r || !s) throw new RenderFailure(500, `no route ${route} in build ${site.buildId}`);
      const st = new ResponseState();
      const ctx = contextFor(m, st);
      let data: unknown;
      try {
        data = r.page.load ? await r.page.load(ctx) : undefined;
      } catch (e) {
        return failure(m, e);
      }
      return { el: tree(r.page, r.layouts, data, m, ctx.query), status: st.status, headers: headersFor(s, st, `page:${r.pattern}`), stream: s.stream };
    },
    async island(m, name) {
      const mod = site.islands[name];
      const s = islands[name];
      if (!mod || !s) throw new RenderFailure(404, `no island "${name}" in this build`);
      const st = new ResponseState();
      const ctx = contextFor(m, st);
      let props: Record<string, unknown> = {};
      const p = ctx.query.p;
      if (p) {
        try {
          const v = JSON.parse(fromBase64Url(p)) as unknown;
          if (v && typeof v === 'object' && !Array.isArray(v)) props = v as Record<string, unknown>;
        } catch {
          throw new RenderFailure(400, `island "${name}": the p parameter is not base64url JSON`);
        }
      }
      try {
        const data = mod.load ? await mod.load(props, ctx) : undefined;
        return { status: st.status, headers: headersFor(s, st, `island:${name}`), body: html(createElement(mod.default, { ...props, data })), links: [] };
      } catch (e) {
        return failure(m, e);
      }
    },
  };
}
