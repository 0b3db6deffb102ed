/**
 * Matches request paths to the build's file routes in the main thread, so a
 * path no page answers never costs a worker round trip.
 */
import type { RouteEntry } from './protocol.js';

export interface RouteMatch {
  index: number;
  pattern: string;
  params: Record<string, string>;
}

const EMPTY: Record<string, string> = Object.freeze({}) as Record<string, string>;

export class RouteTable {
  /** Routes without parameters, by path, for a one-lookup answer. */
  #exact = new Map<string, RouteMatch>();
  #dynamic: { index: number; entry: RouteEntry }[] = [];

  /** `routes` in the build's order (static before dynamic before catch-all). */
  constructor(readonly routes: RouteEntry[]) {
    routes.forEach((entry, index) => {
      if (entry.segments.every((s) => !s.startsWith(':') && !s.startsWith('*'))) {
        const m = { index, pattern: entry.pattern, params: EMPTY };
        const p = `/${entry.segments.join('/')}`;
        this.#exact.set(p, m);
        if (p !== '/') this.#exact.set(`${p}/`, m);
      } else this.#dynamic.push({ index, entry });
    });
  }

  match(path: string): RouteMatch | null {
    const hit = this.#exact.get(path);
    if (hit) return hit;
    if (this.#dynamic.length === 0) return null;
    const raw = path.split('/').filter((s) => s !== '');
    let segs: string[];
    try {
      segs = raw.map(decodeURIComponent);
    } catch {
      return null;
    }
    if (segs.some((s) => s.includes('/') || s === '..' || s === '.')) return null;
    // Literal routes compare against decoded segments (`/caf%C3%A9` reaches pages/café.tsx).
    const literal = this.#exact.get(`/${segs.join('/')}`);
    if (literal) return literal;
    outer: for (const { index, entry } of this.#dynamic) {
      const params: Record<string, string> = {};
      const rs = entry.segments;
      for (let i = 0; i < rs.length; i++) {
        const r = rs[i]!;
        if (r.startsWith('*')) {
          if (i >= segs.length) continue outer;
          params[r.slice(1)] = segs.slice(i).join('/');
          return { index, pattern: entry.pattern, params };
        }
        const s = segs[i];
        if (s === undefined) continue outer;
        if (r.startsWith(':')) params[r.slice(1)] = s;
        else if (r !== s) continue outer;
      }
      if (segs.length === rs.length) return { index, pattern: entry.pattern, params };
    }
    return null;
  }
}
