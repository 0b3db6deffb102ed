/**
 * Messages between the plugin (main thread) and its render workers. Plain
 * structured-clone data; strings for HTML.
 */

/** A route as the build found it on disk. */
export interface RouteEntry {
  /** `/blog/:slug`, `/docs/*` — find-my-way style, for logs and cache tags. */
  pattern: string;
  /** The file, relative to the site (`pages/blog/[slug].tsx`). */
  file: string;
  /** Segments: literal strings, `:name` params, `*name` catch-all (last only). */
  segments: string[];
}

/** A page's or island's exported render settings, as the worker read them. */
export interface RenderSettings {
  mode: 'isr' | 'ssr' | 'static' | 'swr';
  /** Seconds fresh (isr, swr). */
  revalidate: number;
  /** swr: seconds a stale copy may be served while a new one renders. */
  swr: number;
  /** Streams with renderToPipeableStream. */
  stream: boolean;
}

/** What the build writes as `manifest.json` beside the bundle. */
export interface BuildManifest {
  buildId: string;
  builtAt: number;
  site: string;
  /** Bundle path relative to the manifest's folder. */
  bundle: string;
  routes: RouteEntry[];
  islands: string[];
  hasNotFound: boolean;
  /** Newest modification time (ms) of the site's sources at build time. */
  sourcesMtime: number;
  /** Hash of the render runtime the bundle was built with. */
  runtime: string;
}

/** Request fields a render may depend on. */
export interface RenderRequest {
  id: number;
  method: string;
  path: string;
  query: string;
  params: Record<string, string>;
  headers: Record<string, string>;
}

export type ToWorker =
  | ({ t: 'page'; route: number; stream: boolean } & RenderRequest)
  | ({ t: 'island'; island: string } & RenderRequest)
  | { t: 'abort'; id: number }
  | { t: 'ping'; seq: number };

export interface DoneMessage {
  t: 'done';
  id: number;
  status: number;
  headers: Record<string, string>;
  /** UTF-8, encoded in the worker and transferred (the main thread neither copies nor transcodes it). */
  body: Uint8Array;
  /** Link values for Early Hints found in the page's head. */
  links: string[];
}

export interface HeadMessage {
  t: 'head';
  id: number;
  status: number;
  headers: Record<string, string>;
  links: string[];
}

export interface WorkerStats {
  t: 'stats';
  heapUsed: number;
  /** Per memoised component, counts since the previous report. */
  memo: Record<string, { hit: number; miss: number; uncacheable: number }>;
  memoEntries: number;
  memoBytes: number;
}

export type FromWorker =
  | { t: 'ready'; settings: RenderSettings[]; islands: Record<string, RenderSettings> }
  | DoneMessage
  | HeadMessage
  | { t: 'chunk'; id: number; data: string }
  | { t: 'end'; id: number }
  | { t: 'fail'; id: number; status: number; code: string; message: string }
  | { t: 'pong'; seq: number }
  | WorkerStats;

/** What `workerData` carries into a worker. */
export interface WorkerInit {
  bext: true;
  memo: { maxEntries: number; maxBytes: number };
  staleIfError: number;
  maxStale: number;
  defaultMode: RenderSettings['mode'];
  defaultRevalidate: number;
  staticRevalidate: number;
  renderTimeoutMs: number;
  statsIntervalMs: number;
}
