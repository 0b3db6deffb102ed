/**
 * Host functions: the only way a plugin reaches the kernel or another plugin.
 * Each call is checked against the capabilities granted in the lock file.
 */

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

/** Read-only kernel views for trusted observability plugins. */
export interface KernelServices {
  /** Every plugin with its state and counters. */
  plugins(): PluginStatus[];
  /** Whether the server is ready (started, not draining). */
  ready(): boolean;
  /** Prometheus registry text (prom-client) of everything the kernel records. */
  metricsText(): Promise<string>;
  metricsContentType: string;
  /** Marks this plugin degraded (shown in /health) or healthy again. */
  setDegraded(detail: string | null): void;
  /** The directory the server serves (`bext run [dir]`). */
  siteDir: string;
}
