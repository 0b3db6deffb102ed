/**
 * The runtime of a site built for a sandbox (`buildSandboxSite`): the same
 * pages, layouts, loaders and islands as in the render workers, rendered
 * with React's synchronous string renderer inside QuickJS or a V8 isolate,
 * as the plugin's onRender hook. No streaming (pages that ask for it are
 * rendered whole) and no memoisation (there is no store between calls to
 * rely on).
 */
import { renderToString } from 'react-dom/server';
import { createCore, DEFAULT_INIT, RenderFailure, type SiteBundle } from './common.js';
import type { RenderRequest, RouteEntry, WorkerInit } from './protocol.js';
import { RouteTable } from './routes.js';

/** The projected request a sandboxed onRender receives (its manifest's `needs`). */
export interface SandboxRequest {
  method?: string;
  path?: string;
  query?: string;
  headers?: Record<string, string | string[]>;
}

type Decision = { action: 'next' } | { status: number; headers: Record<string, string>; body: string };

const ISLAND = '/__bext/island/';

/** Builds the sandbox's onRender hook for a site. */
export function sandboxRenderer(site: SiteBundle, routes: RouteEntry[], init: Partial<WorkerInit> = {}): (req: SandboxRequest) => Promise<Decision> {
  const core = createCore(site, { ...DEFAULT_INIT, ...init }, (el) => renderToString(el));
  const table = new RouteTable(routes);
  const failed = (e: unknown): Decision => {
    const f = e instanceof RenderFailure ? e : new RenderFailure(500, String((e as Error)?.message ?? e));
    return { status: f.status, headers: { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' }, body: JSON.stringify({ error: f.status === 404 ? 'BEXT_ERR_NOT_FOUND' : 'BEXT_ERR_SSR_RENDER', message: f.message }) };
  };
  return async (req) => {
    const method = req.method ?? 'GET';
    const path = req.path ?? '/';
    if (method !== 'GET' && method !== 'HEAD') return { action: 'next' };
    const lang = req.headers?.['accept-language'];
    const m: RenderRequest = { id: 0, method, path, query: req.query ?? '', params: {}, headers: lang === undefined ? {} : { 'accept-language': Array.isArray(lang) ? lang.join(', ') : lang } };
    try {
      if (path.startsWith(ISLAND)) {
        const name = decodeURIComponent(path.slice(ISLAND.length));
        if (!core.islands[name]) return { action: 'next' };
        const a = await core.island(m, name);
        return { status: a.status, headers: a.headers, body: a.body };
      }
      const hit = table.match(path);
      if (!hit && !site.notFound) return { action: 'next' };
      if (hit) m.params = hit.params;
      const p = await core.prepare(m, hit ? hit.index : -1);
      if (!('el' in p)) return { status: p.status, headers: p.headers, body: p.body };
      return { status: p.status, headers: p.headers, body: core.document(p.el) };
    } catch (e) {
      return failed(e);
    }
  };
}
