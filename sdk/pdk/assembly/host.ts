/**
 * bext host functions (`extism:host/user`). Every handle is an Extism memory
 * handle; results are i64: a positive handle, 0 (done / absent), or one of
 * the negative codes below. Host functions are synchronous: publish, kv
 * writes and fetch are queued and complete after the call returns; kv reads
 * and fetch results come from what an earlier call started (see README).
 */
import { loadString, storeString } from "./extism";
import { Value, parse, quote } from "./json";

// @ts-ignore: decorator
@external("extism:host/user", "bext_publish") declare function bext_publish(topic: u64, data: u64): i64;
// @ts-ignore: decorator
@external("extism:host/user", "bext_log") declare function bext_log(level: i32, msg: u64, fields: u64): void;
// @ts-ignore: decorator
@external("extism:host/user", "bext_kv_get") declare function bext_kv_get(key: u64): i64;
// @ts-ignore: decorator
@external("extism:host/user", "bext_kv_set") declare function bext_kv_set(key: u64, value: u64, ttlSeconds: i32): i64;
// @ts-ignore: decorator
@external("extism:host/user", "bext_kv_del") declare function bext_kv_del(key: u64): i64;
// @ts-ignore: decorator
@external("extism:host/user", "bext_fetch") declare function bext_fetch(request: u64): i64;
// @ts-ignore: decorator
@external("extism:host/user", "bext_metric") declare function bext_metric(name: u64, value: f64, labels: u64, kind: i32): i64;
// @ts-ignore: decorator
@external("extism:host/user", "bext_config") declare function bext_config(): i64;
// @ts-ignore: decorator
@external("extism:host/user", "bext_schedule") declare function bext_schedule(name: u64, cron: u64, opts: u64): i64;
// @ts-ignore: decorator
@external("extism:host/user", "bext_unschedule") declare function bext_unschedule(name: u64): i64;

/** The operation was accepted (queued) or, for reads, the key is known to be absent. */
export const OK: i64 = 0;
/** The plugin lacks the capability; the kernel audited the attempt. */
export const DENIED: i64 = -1;
/** An argument was malformed (bad JSON, bad URL). */
export const BAD_ARGUMENT: i64 = -2;
/** The result is not there yet: the host started it; ask again in a later call. */
export const PENDING: i64 = -3;
/** The host operation failed. */
export const FAILED: i64 = -4;
/** Too many operations are in flight for this plugin. */
export const LIMIT: i64 = -5;

export enum LogLevel { Trace = 0, Debug = 1, Info = 2, Warn = 3, Error = 4 }
export enum MetricKind { Counter = 0, Gauge = 1, Histogram = 2 }

/** Publishes `dataJson` on `topic` (runs the onPublish chain after this call). Needs `publish:<glob>`. */
export function publish(topic: string, dataJson: string): i64 {
  return bext_publish(storeString(topic), storeString(dataJson));
}

/** A structured log line tagged with the plugin. `fieldsJson` is a JSON object or "". */
export function log(level: LogLevel, msg: string, fieldsJson: string = ""): void {
  bext_log(<i32>level, storeString(msg), fieldsJson.length ? storeString(fieldsJson) : 0);
}

/** Result of a kv read. */
export class KvResult {
  constructor(public code: i64, public value: string | null) {}
  /** The key has a value (in `value`). */
  get found(): bool { return this.value !== null; }
  /** The value is being loaded; ask again in a later call. */
  get pending(): bool { return this.code == PENDING; }
}

/**
 * Reads a key of the plugin's namespace. A value loaded by an earlier call
 * (or written by this plugin) is returned at once; otherwise the load starts
 * and the result is PENDING. Needs `kv`.
 */
export function kvGet(key: string): KvResult {
  const r = bext_kv_get(storeString(key));
  if (r > 0) return new KvResult(OK, loadString(<u64>r));
  return new KvResult(r, null);
}

/** Writes a key (queued; later reads in this instance see it at once). `ttlSeconds` 0 = no expiry. Needs `kv`. */
export function kvSet(key: string, value: string, ttlSeconds: i32 = 0): i64 {
  return bext_kv_set(storeString(key), storeString(value), ttlSeconds);
}

/** Deletes a key (queued). Needs `kv`. */
export function kvDel(key: string): i64 {
  return bext_kv_del(storeString(key));
}

/** Result of an outbound fetch. */
export class FetchResult {
  constructor(public code: i64, public status: i32, public body: string, public headers: Value | null) {}
  get pending(): bool { return this.code == PENDING; }
  get ok(): bool { return this.code == OK; }
}

/**
 * Outbound HTTP. The first call with a given request starts it and returns
 * PENDING; a later call with the identical request gets the response (once).
 * Needs `fetch:<host>`.
 */
export function fetch(url: string, method: string = "GET", body: string | null = null, headersJson: string = ""): FetchResult {
  let req = "{\"url\":" + quote(url) + ",\"method\":" + quote(method);
  if (body !== null) req += ",\"body\":" + quote(body);
  if (headersJson.length) req += ",\"headers\":" + headersJson;
  req += "}";
  const r = bext_fetch(storeString(req));
  if (r <= 0) return new FetchResult(r, 0, "", null);
  const res = parse(loadString(<u64>r));
  if (res === null) return new FetchResult(FAILED, 0, "", null);
  return new FetchResult(OK, <i32>res.getNumber("status"), res.getString("body"), res.get("headers"));
}

/** Records a metric value (named `bext_plugin_<name>`). Needs `metrics`. */
export function metric(name: string, value: f64, labelsJson: string = "", kind: MetricKind = MetricKind.Counter): i64 {
  return bext_metric(storeString(name), value, labelsJson.length ? storeString(labelsJson) : 0, <i32>kind);
}

/**
 * Adds (or replaces) a task run by this plugin's `onSchedule` export.
 * `optsJson`: `{"overlap":"skip|queue|allow","scope":"cluster|instance","timeoutMs":n,"timezone":"…"}`.
 * Needs `schedule`. Returns OK, DENIED, or BAD_ARGUMENT for a bad name or pattern (logged).
 */
export function schedule(name: string, cron: string, optsJson: string = ""): i64 {
  return bext_schedule(storeString(name), storeString(cron), optsJson.length ? storeString(optsJson) : 0);
}

/** Removes a task added with `schedule`. Needs `schedule`. */
export function unschedule(name: string): i64 {
  return bext_unschedule(storeString(name));
}

let configCache: Value | null = null;

/** This plugin's section of `bext.config.json` (an empty object when there is none). */
export function config(): Value {
  let c = configCache;
  if (c === null) {
    const h = bext_config();
    c = h > 0 ? parse(loadString(<u64>h)) : null;
    if (c === null) c = parse("{}")!;
    configCache = c;
  }
  return c;
}
