/**
 * Host functions: the only way a plugin reaches the kernel or another plugin.
 * Each call is checked against the capabilities granted in the lock file.
 */
import type { AppRef } from './hooks.js';

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error';

export interface FetchRequest {
  url: string;
  method?: string;
  headers?: Record<string, string>;
  body?: string;
  /** Deadline in milliseconds; default 5000. */
  timeoutMs?: number;
}

export interface FetchResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

export type MetricKind = 'counter' | 'gauge' | 'histogram';

/**
 * What a plugin can ask of the kernel. Sandboxed plugins see the same
 * functions as `bext_*` globals or WASM imports.
 *
 * @example
 * ```ts
 * export default definePlugin((host) => ({
 *   async onRequest(req) {
 *     if (req.path === '/ping') await host.publish('custom/pings', { at: Date.now() });
 *   },
 * }));
 * ```
 */
export interface HostApi {
  /** Name of the plugin this host object belongs to. */
  readonly plugin: string;
  /** `bext_publish`: runs the onPublish chain. Needs `publish:<glob>`. Resolves to the number of deliveries. */
  publish(topic: string, data: unknown): Promise<number>;
  /** `bext_log`: structured log line tagged with the plugin. */
  log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void;
  /** `bext_kv_*`: the plugin's own namespace. Needs `kv`. */
  kv: {
    get(key: string): Promise<string | null>;
    set(key: string, value: string, ttlSeconds?: number): Promise<void>;
    del(key: string): Promise<void>;
  };
  /** `bext_fetch`: outbound HTTP to allow-listed hosts. Needs `fetch:<host>`. */
  fetch(req: FetchRequest): Promise<FetchResponse>;
  /** `bext_metric`: record a value. Needs `metrics`. Names are prefixed with `bext_plugin_`. */
  metric(name: string, value: number, labels?: Record<string, string>, kind?: MetricKind): void;
  /** `bext_config`: this plugin's validated section of `bext.config.json`. */
  config<T = Record<string, unknown>>(): T;
  /**
   * `bext_schedule`: adds (or replaces) a task of this plugin at runtime; each
   * tick calls the plugin's `onSchedule` with the task's name. Needs `schedule`.
   * Throws BEXT_ERR_SCHEDULE_INVALID for a bad name, pattern or option.
   */
  schedule(name: string, cron: string, opts?: Omit<import('./manifest.js').ScheduleSpec, 'cron'>): Promise<void>;
  /** `bext_unschedule`: removes a task added with `schedule`. Resolves to whether there was one. Needs `schedule`. */
  unschedule(name: string): Promise<boolean>;
  /** Kernel facilities that trusted first-party plugins may use (absent in sandboxes). */
  readonly kernel?: KernelServices;
}

/** A plugin's state as `/health` reports it. */
export interface PluginStatus {
  name: string;
  version: string;
  sandbox: string;
  state: 'loaded' | 'quarantined' | 'degraded' | 'failed';
  failMode: 'open' | 'closed';
  hooks: string[];
  routes: string[];
  calls: number;
  errors: number;
  quarantinedUntil?: number;
  detail?: string;
  fuelTotal?: number;
  memoryBytes?: number;
}

/** One plugin hook call within a request, for request capture and tracing. */
export interface HookTiming {
  plugin: string;
  hook: string;
  /** Start, in ms since the request started (performance.now() based). */
  startMs: number;
  durMs: number;
  /** Error code when the call failed. */
  error?: string;
}

/** A finished request, as request observers receive it. */
export interface RequestRecord {
  id: string;
  /** Wall-clock start, ms since the epoch. */
  time: number;
  method: string;
  /** Path without the query string (observers must not use it as a metric label). */
  path: string;
  host: string;
  /** Matched route pattern, when a plugin route answered. */
  route?: string;
  group: string;
  status: number;
  durationMs: number;
  remoteAddress: string;
  requestHeaders: Record<string, string | string[] | undefined>;
  responseHeaders: Record<string, string | string[] | number | undefined>;
  ctx: Record<string, unknown>;
  timings: HookTiming[];
}

/** A TLS or other listener a plugin adds to the server. */
export interface ListenerSpec {
  /** Port to listen on; omit when the plugin accepts sockets itself and emits them. */
  port?: number;
  host?: string;
  /** Serve admin routes on it (as the admin listener does). */
  admin?: boolean;
}

/** Read-only kernel views for trusted observability plugins. */
export interface KernelServices {
  /** Every log record (all levels), as structured objects. Returns an unsubscribe function. */
  subscribeLogs(fn: (rec: { time: number; level: LogLevel; msg: string; plugin?: string; [k: string]: unknown }) => void): () => void;
  /**
   * Every finished request with its per-hook timings. Timings are only
   * collected while at least one observer is registered.
   */
  observeRequests(fn: (rec: RequestRecord) => void): () => void;
  /**
   * Serves the kernel's HTTP on another listener (a `tls.Server` for HTTPS
   * over HTTP/1.1): its sockets run onConnect, then the same pipeline.
   */
  serve(server: import('node:net').Server, spec: ListenerSpec): Promise<void>;
  /**
   * The whole pipeline as a Node request handler, for servers the kernel
   * does not create (an `http2.createSecureServer({ allowHTTP1: true })`).
   */
  handle(req: import('node:http').IncomingMessage | import('node:http2').Http2ServerRequest, res: import('node:http').ServerResponse | import('node:http2').Http2ServerResponse): void;
  /** Every plugin with its state and counters. */
  plugins(): PluginStatus[];
  /**
   * Re-reads the config file and the lock and swaps to the new plugin set
   * (see Kernel.reload). Resolves to what changed, or the error that refused it.
   */
  reload(): Promise<{ ok: true; loaded: string[]; reused: string[]; removed: string[] } | { ok: false; error: import('./errors.js').BextError }>;
  /** Whether the server is ready (started, not draining). */
  ready(): boolean;
  /** Prometheus registry text (prom-client) of everything the kernel records. */
  metricsText(): Promise<string>;
  metricsContentType: string;
  /** Marks this plugin degraded (shown in /health) or healthy again. */
  setDegraded(detail: string | null): void;
  /**
   * The directory this instance serves: `bext run [dir]`, or for a per-app
   * instance (manifest `perApp`) its app environment's live folder.
   */
  siteDir: string;
  /** For a per-app instance: the app environment it serves (and its upstream, for proxy apps). */
  app?: AppRef & { proxy?: string };
  /** Absolute path of the bext CLI entry, to run commands such as `node <bin> build <dir>`. */
  bin: string;
  /** The hosted apps: each environment with its hosts and what serves it now. */
  apps(): AppInfo[];
  /**
   * Chooses the folder an app environment serves (a deployed version), or
   * null for the config's `site`. Takes effect at the next `reload()`.
   * Throws BEXT_ERR_CONFIG_INVALID for an unknown app or environment.
   *
   * @example
   * ```ts
   * host.kernel.setAppSource('blog', 'production', { dir: '/srv/.bext/platform/blog/versions/3f2a9c1b7d4e', version: '3f2a9c1b7d4e' });
   * const r = await host.kernel.reload();
   * ```
   */
  setAppSource(app: string, env: string, source: { dir: string; version: string } | null): void;
  /** Every scheduled task with its next run and recent runs on this instance. */
  scheduler(): import('./schedule.js').TaskStatus[];
  /**
   * The same, with each cluster-scoped task's `cluster` view read from Redis
   * (runs recorded by every instance sharing `redis.url`). Without Redis it
   * is `scheduler()`.
   */
  schedulerCluster(): Promise<import('./schedule.js').TaskStatus[]>;
  /**
   * Runs a task now, on this instance, whatever its scope (overlap still
   * applies). Resolves to the run; rejects with BEXT_ERR_SCHEDULE_NOT_FOUND.
   */
  runTask(plugin: string, task: string): Promise<import('./schedule.js').TaskRun>;
}

/** A hosted app as the kernel runs it. */
export interface AppInfo {
  name: string;
  proxy?: string;
  environments: Record<string, { hosts: string[]; site: string | null; proxy?: string; version: string | null }>;
}
