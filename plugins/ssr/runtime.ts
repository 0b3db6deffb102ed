/**
 * What a site's pages import as `bext/ssr` (the build aliases that name to
 * this file): page and loader types, `notFound()` / `redirect()`, server
 * islands, the Turbo script tag and component memoisation.
 *
 * This module runs inside the render workers (and inside tenant sandboxes),
 * never in the server's main thread, and imports nothing but React.
 */
import { createContext, createElement, Fragment, useContext, type ComponentType, type ReactElement, type ReactNode } from 'react';

/** Route modes; they become the cache plugin's rules through response headers. */
export type RenderMode = 'isr' | 'ssr' | 'static' | 'swr';

/** What a data loader and a page see of the request. */
export interface PageContext {
  /** Dynamic segments: `pages/blog/[slug].tsx` at `/blog/hello` gives `{ slug: 'hello' }`. */
  params: Record<string, string>;
  /** Query parameters; a repeated name keeps its last value. */
  query: Record<string, string>;
  /** Path without the query string. */
  path: string;
  /** Request headers the render may depend on (accept-language, user-agent). */
  headers: Record<string, string>;
  /** Sets this response's status (e.g. 410 for a removed post). */
  status(code: number): void;
  /** Adds a response header. */
  header(name: string, value: string): void;
  /** Adds cache tags (purge them with the cache plugin's /api/invalidate). */
  tag(...tags: string[]): void;
  /** Overrides the page's `revalidate` for this response, in seconds. */
  revalidate(seconds: number): void;
}

/**
 * A page's async data loader: runs in the render worker before the page
 * renders; its result is the page's `data` prop.
 *
 * @example
 * ```tsx
 * export async function load({ params }: PageContext) {
 *   const post = await getPost(params.slug);
 *   if (!post) notFound();
 *   return post;
 * }
 * export default function Post({ data }: PageProps<typeof load>) { return <h1>{data.title}</h1>; }
 * ```
 */
export type Loader<T = unknown> = (ctx: PageContext) => T | Promise<T>;

/** Props of a page component, typed from its loader. */
export interface PageProps<L extends Loader = Loader> {
  data: Awaited<ReturnType<L>>;
  params: Record<string, string>;
  query: Record<string, string>;
  path: string;
}

/** Props of a `layout.tsx` component. */
export interface LayoutProps {
  children: ReactNode;
  path: string;
  params: Record<string, string>;
}

const kControl = Symbol.for('bext.ssr.control');

/** Thrown by `notFound()` and `redirect()`; the worker turns it into the answer. */
export interface ControlSignal {
  [kControl]: true;
  kind: 'not-found' | 'redirect';
  location?: string;
  status?: number;
}

export function isControlSignal(e: unknown): e is ControlSignal {
  return typeof e === 'object' && e !== null && (e as Record<symbol, unknown>)[kControl] === true;
}

/** Ends the render with the site's 404 page (`pages/404.tsx`) or a plain 404. */
export function notFound(): never {
  throw { [kControl]: true, kind: 'not-found' } satisfies ControlSignal;
}

/** Ends the render with a redirect (default 307; 308 for permanent moves, 303 after a form POST). */
export function redirect(location: string, status: 301 | 302 | 303 | 307 | 308 = 307): never {
  throw { [kControl]: true, kind: 'redirect', location, status } satisfies ControlSignal;
}

// ------------------------------------------------------------------ islands

/** Largest encoded props an island may carry in its URL. */
export const ISLAND_PROPS_MAX = 2048;

/** Encodes island props for `/__bext/island/<name>?p=…` (base64url of JSON). */
export function encodeIslandProps(props: unknown): string {
  const json = JSON.stringify(props ?? {});
  if (typeof Buffer !== 'undefined') return Buffer.from(json, 'utf8').toString('base64url');
  return base64url(unescape(encodeURIComponent(json)));
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** Binary string → base64url, for sandboxes (which have neither Buffer nor btoa). */
function base64url(bin: string): string {
  let out = '';
  for (let i = 0; i < bin.length; i += 3) {
    const n = (bin.charCodeAt(i) << 16) | ((bin.charCodeAt(i + 1) || 0) << 8) | (bin.charCodeAt(i + 2) || 0);
    out += B64[(n >> 18) & 63]! + B64[(n >> 12) & 63]!;
    if (i + 1 < bin.length) out += B64[(n >> 6) & 63]!;
    if (i + 2 < bin.length) out += B64[n & 63]!;
  }
  return out;
}

export interface IslandProps {
  /** File name in `islands/` without its extension. */
  name: string;
  /** JSON-serialisable props, carried in the island's URL (at most 2 KiB encoded). */
  props?: Record<string, unknown>;
  /** What the page shows until the island's HTML arrives. */
  fallback?: ReactNode;
}

/**
 * A server island: the page renders `fallback` inside a placeholder; after
 * load, `/__bext/island.js` fetches `/__bext/island/<name>` (rendered by the
 * workers, cached by its own rule) and swaps it in. Works across Turbo visits.
 *
 * @example
 * ```tsx
 * <Island name="clock" props={{ tz: 'UTC' }} fallback={<p>Loading the time…</p>} />
 * ```
 */
export function Island({ name, props, fallback }: IslandProps): ReactElement {
  const p = encodeIslandProps(props);
  if (p.length > ISLAND_PROPS_MAX) throw new Error(`island "${name}": props encode to ${p.length} bytes, more than ${ISLAND_PROPS_MAX}; pass an id and load the rest in the island's loader`);
  const src = `/__bext/island/${encodeURIComponent(name)}${p === 'e30' ? '' : `?p=${p}`}`;
  return createElement(
    Fragment,
    null,
    createElement('bext-island', { 'data-src': src }, fallback ?? null),
    createElement('script', { type: 'module', src: '/__bext/island.js', async: true }),
  );
}

/**
 * Loads Turbo (`/__bext/turbo.js`): links and forms then fetch the next page
 * and swap its body instead of reloading. Put it in a layout.
 */
export function TurboScript(): ReactElement {
  return createElement('script', { type: 'module', src: '/__bext/turbo.js', async: true });
}

// ------------------------------------------------------------ memoisation

/** Per-render table the worker provides: memoised HTML by slot, and slots still to capture. */
export interface MemoTable {
  nonce: string;
  slots: { html?: string; key?: string; name: string }[];
}

/** The worker's bounded, per-worker store of memoised HTML. */
export interface MemoStore {
  get(key: string): string | undefined;
  count(name: string, what: 'hit' | 'miss' | 'uncacheable'): void;
}

export const MemoTableContext = createContext<MemoTable | null>(null);

let store: MemoStore | null = null;
let seq = 0;

/** Called by the render worker once: where memoised HTML lives. */
export function setMemoStore(s: MemoStore | null): void {
  store = s;
}

/** Marker characters: U+0001 never comes out of React for real text in a page worth caching. */
export const MARK = '\u0001';

export interface MemoOptions<P> {
  /** Name in metrics and in the cache key (default: the component's name). */
  name?: string;
  /** Cache key for these props (default: their JSON; props holding functions or elements are not memoised). */
  key?: (props: P) => string;
}

function jsonKey(v: unknown): string {
  return JSON.stringify(v, (_k, x) => {
    if (typeof x === 'function' || typeof x === 'symbol') throw new TypeError('not plain data');
    return x;
  });
}

/**
 * Marks a pure component (its HTML depends only on its props): inside a
 * render worker, its HTML is kept per props (bounded, per worker) and
 * spliced into later renders without running React for it again.
 *
 * @example
 * ```tsx
 * const Row = memo(function Row({ cells }: { cells: string[] }) {
 *   return <tr>{cells.map((c, i) => <td key={i}>{c}</td>)}</tr>;
 * });
 * ```
 */
export function memo<P extends object>(component: ComponentType<P>, opts: MemoOptions<P> = {}): ComponentType<P> {
  const name = opts.name || component.displayName || component.name || 'anonymous';
  const prefix = `${name}#${++seq}\n`;
  const keyOf = opts.key ?? jsonKey;
  function Memo(props: P): ReactNode {
    const table = useContext(MemoTableContext);
    if (!table || !store) return createElement(component, props);
    let key: string;
    try {
      key = prefix + keyOf(props);
    } catch {
      store.count(name, 'uncacheable');
      return createElement(component, props);
    }
    const i = table.slots.length;
    const html = store.get(key);
    if (html !== undefined) {
      store.count(name, 'hit');
      table.slots.push({ html, name });
      return `${MARK}${table.nonce}H${i}${MARK}`;
    }
    store.count(name, 'miss');
    table.slots.push({ key, name });
    // Start and end marks around the real render: the worker cuts the HTML between them out and keeps it.
    return createElement(Fragment, null, `${MARK}${table.nonce}S${i}${MARK}`, createElement(component, props), `${MARK}${table.nonce}E${i}${MARK}`);
  }
  Memo.displayName = `memo(${name})`;
  return Memo;
}
