/**
 * The globals a JavaScript plugin sees inside the `quickjs` and `isolate`
 * sandboxes. Point your editor at this file (`/// <reference path="…/globals.d.ts" />`
 * or a jsconfig.json `include`) for completion in `plugin.js`.
 *
 * Every global exists in every plugin. A call whose capability is not granted
 * in plugins.lock.json fails with an Error whose `code` is
 * `BEXT_ERR_CAP_DENIED` (thrown by the sync functions, a rejected Promise from
 * the async ones), and the attempt is recorded in the audit log.
 *
 * Values cross the sandbox boundary as JSON: functions, symbols, class
 * instances and cycles do not survive the trip.
 */

declare namespace Bext {
  /** A JSON value, the only kind of value that crosses the boundary. */
  type Json = string | number | boolean | null | Json[] | { [key: string]: Json };

  type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error';
  type MetricKind = 'counter' | 'gauge' | 'histogram';

  /** Header map with lower-case names; repeated headers are arrays. */
  type Headers = Record<string, string | string[]>;

  /**
   * A request as a hook receives it: `id` plus only the fields the manifest lists in `needs`
   * (`headers:<name>` gives just that header).
   */
  interface Request {
    id: string;
    method?: string;
    path?: string;
    query?: string;
    host?: string;
    headers?: Headers;
    remoteAddress?: string;
    scheme?: string;
    httpVersion?: string;
    body?: string;
    ctx?: Record<string, Json>;
    /** For onRoute: the route pattern and its parameters. */
    route?: string;
    params?: Record<string, string>;
  }

  interface FetchRequest {
    url: string;
    method?: string;
    headers?: Record<string, string>;
    body?: string;
    /** Deadline in milliseconds; default 5000. */
    timeoutMs?: number;
  }

  interface FetchResponse {
    status: number;
    headers: Record<string, string>;
    body: string;
  }

  /** What `onSchedule` receives when one of the plugin's tasks is due. */
  interface Task {
    name: string;
    /** The tick, ms since the epoch (the same on every instance of a cluster). */
    scheduledAt: number;
    firedAt: number;
    /** Runs of this task on this instance, this one included. */
    run: number;
  }

  interface ScheduleOptions {
    /** A tick while the previous run still runs: skip it (default), queue one, or allow both. */
    overlap?: 'skip' | 'queue' | 'allow';
    /** `cluster` (default): one instance runs each tick; `instance`: every instance does. */
    scope?: 'cluster' | 'instance';
    timeoutMs?: number;
    timezone?: string;
  }

  /** The Error a refused or failed host call throws. */
  interface HostError extends Error {
    /** A `BEXT_ERR_*` code, e.g. `BEXT_ERR_CAP_DENIED`. */
    code?: string;
  }
}

/**
 * Writes a structured log line tagged with this plugin. Always allowed.
 *
 * @example bext_log('info', 'cache miss', { key })
 */
declare function bext_log(level: Bext.LogLevel, msg: string, fields?: Record<string, Bext.Json>): void;

/**
 * This plugin's section of bext.config.json, validated against the manifest's `configSchema`.
 * Always allowed; may be called at module top level.
 *
 * @example const { blockedAgents = [] } = bext_config();
 */
declare function bext_config<T = Record<string, Bext.Json>>(): T;

/**
 * Records a metric, exported as `bext_plugin_<name>`. Needs the `metrics` capability.
 *
 * @example bext_metric('blocked_total', 1, { reason: 'agent' }, 'counter')
 */
declare function bext_metric(name: string, value: number, labels?: Record<string, string>, kind?: Bext.MetricKind): void;

/**
 * Publishes a message through the onPublish chain; resolves to the number of deliveries.
 * Needs `publish:<glob>` covering the topic.
 *
 * @example await bext_publish('custom/myplugin/events', { path: req.path })
 */
declare function bext_publish(topic: string, data: Bext.Json): Promise<number>;

/**
 * Reads a key from this plugin's own key-value namespace; `null` when absent. Needs `kv`.
 *
 * @example const hits = Number((await bext_kv_get('hits')) ?? '0')
 */
declare function bext_kv_get(key: string): Promise<string | null>;

/**
 * Writes a key in this plugin's namespace, optionally expiring after `ttlSeconds`. Needs `kv`.
 *
 * @example await bext_kv_set('hits', String(hits + 1), 3600)
 */
declare function bext_kv_set(key: string, value: string, ttlSeconds?: number): Promise<void>;

/**
 * Deletes a key from this plugin's namespace. Needs `kv`.
 *
 * @example await bext_kv_del('hits')
 */
declare function bext_kv_del(key: string): Promise<void>;

/**
 * Outbound HTTP to an allow-listed host. Needs `fetch:<host>` (`fetch:*.example.com` for subdomains).
 *
 * @example const res = await bext_fetch({ url: 'https://api.example.com/v1/flags' })
 */
declare function bext_fetch(req: Bext.FetchRequest): Promise<Bext.FetchResponse>;

/**
 * Adds (or replaces) a task: at every tick of `cron` the plugin's exported
 * `onSchedule(task)` runs with `task.name === name`. Needs the `schedule` capability.
 * Rejects with `BEXT_ERR_SCHEDULE_INVALID` for a bad name, pattern or option.
 *
 * @example await bext_schedule('refresh', '*\/30 * * * * *', { overlap: 'skip' })
 */
declare function bext_schedule(name: string, cron: string, opts?: Bext.ScheduleOptions): Promise<void>;

/** Removes a task added with `bext_schedule`; resolves to whether there was one. Needs `schedule`. */
declare function bext_unschedule(name: string): Promise<boolean>;
