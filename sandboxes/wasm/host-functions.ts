/**
 * The host functions a WASM guest imports. They are synchronous (Node 20
 * has no JS promise integration for in-thread WASM), so I/O is queued:
 * publish, kv writes and fetch start now and finish after the call; kv reads
 * and fetch results are served from what an earlier call started.
 *
 * Every function is always linked, so a module that imports one without
 * the capability still loads; the call is forwarded to the kernel's HostApi
 * anyway (which refuses and audits it) and the guest gets DENIED.
 * Signatures and codes are documented in sdk/pdk/README.md.
 */
import type { CallContext } from '@extism/extism';
import { isBextError, type FetchRequest, type HostApi, type LogLevel, type MetricKind } from '../../plugin-api/index.js';

/** Result codes (i64) shared with the PDK. */
export const CODES = { OK: 0n, DENIED: -1n, BAD_ARGUMENT: -2n, PENDING: -3n, FAILED: -4n, LIMIT: -5n } as const;

/** Host operations a guest may have in flight at once. */
export const MAX_IN_FLIGHT = 256;
/** Log lines a guest may write per call. */
export const MAX_LOGS_PER_CALL = 100;
/** Guest allocations of host memory per call. */
export const MAX_ALLOCS_PER_CALL = 4096;
/** How long a kv value read earlier is served before it is reloaded in the background. */
export const KV_FRESH_MS = 1000;
const KV_CACHE_MAX = 1024;
const FETCH_RESULTS_MAX = 64;
const FETCH_RESULT_TTL_MS = 60_000;
const MAX_LOG_CHARS = 4096;

/** Thrown from a host function to stop a guest that exceeded a host-side limit. */
export class HostLimitError extends Error {
  override name = 'HostLimitError';
}

/** Thrown by `env.abort` (AssemblyScript's abort): the guest gave up. */
export class GuestAbort extends Error {
  override name = 'GuestAbort';
}

/**
 * The current call's input and what the guest answered through the bext
 * I/O functions (`bext_input_*`, `bext_output`, `bext_error`), which copy
 * straight between a JS buffer and guest memory instead of 8 bytes per
 * Extism host call.
 */
export interface CallIO {
  input: Uint8Array;
  output: string | null;
  error: string | null;
}

/** What the host functions need from the instance that owns them. */
export interface HostState {
  name: string;
  host: HostApi;
  grants: readonly string[];
  stats: { hostDenied: number; hostErrors: number; logsDropped: number };
  maxAllocBytes: number;
  maxOutputBytes: number;
  io: CallIO;
  memory(): WebAssembly.Memory | null;
  disposed(): boolean;
  canPublish(topic: string): boolean;
  canFetch(host: string): boolean;
}

/** The imports by namespace, and the hook that resets per-call counters. */
export interface HostFunctions {
  imports: Record<string, Record<string, Fn>>;
  beginCall(): void;
}

const LEVELS: LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error'];
const KINDS: MetricKind[] = ['counter', 'gauge', 'histogram'];

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- Extism's own signature for host functions
export type Fn = (ctx: CallContext, ...args: any[]) => any;

/**
 * Builds the import object (by namespace) for one plugin. It outlives the
 * Extism instances it is linked into, so a replacement keeps the kv cache.
 */
export function createHostFunctions(state: HostState): HostFunctions {
  const { host, stats } = state;
  let inFlight = 0;
  let logs = 0;
  let allocs = 0;
  let allocBytes = 0;
  const kvCache = new Map<string, { value: string | null | undefined; at: number; loading: boolean }>();
  const fetchInFlight = new Set<string>();
  const fetchDone = new Map<string, { at: number; body?: string; error?: string }>();
  const hasKv = state.grants.includes('kv');
  const hasMetrics = state.grants.includes('metrics');
  let configJson: string | null = null;

  const beginCall = (): void => {
    logs = 0;
    allocs = 0;
    allocBytes = 0;
  };

  const text = (ctx: CallContext, h: bigint): string | null => {
    if (h === 0n) return null;
    const out = ctx.read(h);
    return out === null ? null : out.text();
  };

  const failed = (fn: string, e: unknown): bigint => {
    if (isBextError(e) && (e.code === 'BEXT_ERR_CAP_DENIED' || e.code === 'BEXT_ERR_FETCH_DENIED')) {
      stats.hostDenied++;
      return CODES.DENIED;
    }
    stats.hostErrors++;
    try {
      host.log('warn', `${fn} failed`, { error: e instanceof Error ? e.message : String(e) });
    } catch {
      // logging is best effort here; the error is already counted
    }
    return CODES.FAILED;
  };

  /** Starts a host operation the guest does not wait for. */
  const queue = <T>(fn: string, start: () => Promise<T>, done?: (v: T) => void, fail?: (e: unknown) => void): bigint => {
    if (inFlight >= MAX_IN_FLIGHT) return CODES.LIMIT;
    let p: Promise<T>;
    try {
      p = start();
    } catch (e) {
      fail?.(e);
      return failed(fn, e);
    }
    inFlight++;
    p.then(
      (v) => {
        inFlight--;
        if (!state.disposed()) done?.(v);
      },
      (e: unknown) => {
        inFlight--;
        failed(fn, e);
        if (!state.disposed()) fail?.(e);
      },
    );
    return CODES.OK;
  };

  const loadKv = (key: string): bigint => {
    const entry = kvCache.get(key);
    if (entry) entry.loading = true;
    else {
      if (kvCache.size >= KV_CACHE_MAX) kvCache.delete(kvCache.keys().next().value!);
      kvCache.set(key, { value: undefined, at: 0, loading: true });
    }
    return queue('bext_kv_get', () => host.kv.get(key), (v) => {
      kvCache.set(key, { value: v, at: Date.now(), loading: false });
    }, () => {
      const e = kvCache.get(key);
      if (e) e.loading = false;
    });
  };

  const decoder = new TextDecoder();
  /** Guest memory bytes [ptr, ptr+len), or a trap-like error when out of bounds. */
  const guestBytes = (fn: string, ptr: number, len: number): Uint8Array => {
    const mem = state.memory();
    if (!mem) throw new Error(`${fn}: the module exports no memory`);
    if (ptr < 0 || len < 0 || ptr + len > mem.buffer.byteLength) throw new Error(`${fn}: [${ptr}, ${ptr + len}) is outside guest memory`);
    return new Uint8Array(mem.buffer, ptr, len);
  };

  const user: Record<string, Fn> = {
    bext_input_length: (() => state.io.input.length) as Fn,
    bext_input_read: ((_ctx: CallContext, ptr: number): void => {
      const input = state.io.input;
      guestBytes('bext_input_read', ptr, input.length).set(input);
    }) as Fn,
    bext_output: ((_ctx: CallContext, ptr: number, len: number): void => {
      if (len > state.maxOutputBytes) throw new HostLimitError(`returned ${len} bytes of output; the limit is ${state.maxOutputBytes}`);
      state.io.output = decoder.decode(guestBytes('bext_output', ptr, len));
    }) as Fn,
    bext_error: ((_ctx: CallContext, ptr: number, len: number): void => {
      state.io.error = decoder.decode(guestBytes('bext_error', ptr, Math.min(len, MAX_LOG_CHARS)));
    }) as Fn,

    bext_publish: ((ctx: CallContext, topicH: bigint, dataH: bigint): bigint => {
      const topic = text(ctx, topicH);
      if (topic === null) return CODES.BAD_ARGUMENT;
      let data: unknown = null;
      const raw = text(ctx, dataH);
      if (raw !== null && raw !== '') {
        try {
          data = JSON.parse(raw);
        } catch {
          return CODES.BAD_ARGUMENT;
        }
      }
      const r = queue('bext_publish', () => host.publish(topic, data));
      return state.canPublish(topic) ? r : CODES.DENIED;
    }) as Fn,

    bext_log: ((ctx: CallContext, level: number, msgH: bigint, fieldsH: bigint): void => {
      if (++logs > MAX_LOGS_PER_CALL) {
        stats.logsDropped++;
        return;
      }
      const msg = (text(ctx, msgH) ?? '').slice(0, MAX_LOG_CHARS);
      const raw = text(ctx, fieldsH);
      let fields: Record<string, unknown> | undefined;
      if (raw) {
        try {
          const f: unknown = JSON.parse(raw);
          fields = f !== null && typeof f === 'object' && !Array.isArray(f) ? (f as Record<string, unknown>) : { fields: f };
        } catch {
          fields = { fields: raw.slice(0, MAX_LOG_CHARS) };
        }
      }
      try {
        host.log(LEVELS[level] ?? 'info', msg, fields);
      } catch (e) {
        failed('bext_log', e);
      }
    }) as Fn,

    bext_kv_get: ((ctx: CallContext, keyH: bigint): bigint => {
      const key = text(ctx, keyH);
      if (key === null) return CODES.BAD_ARGUMENT;
      if (!hasKv) {
        queue('bext_kv_get', () => host.kv.get(key));
        return CODES.DENIED;
      }
      const e = kvCache.get(key);
      if (e && e.value !== undefined) {
        if (!e.loading && Date.now() - e.at > KV_FRESH_MS) loadKv(key);
        return e.value === null ? CODES.OK : ctx.store(e.value);
      }
      if (e?.loading) return CODES.PENDING;
      const r = loadKv(key);
      return r === CODES.OK ? CODES.PENDING : r;
    }) as Fn,

    bext_kv_set: ((ctx: CallContext, keyH: bigint, valueH: bigint, ttl: number): bigint => {
      const key = text(ctx, keyH);
      const value = text(ctx, valueH) ?? '';
      if (key === null) return CODES.BAD_ARGUMENT;
      const r = queue('bext_kv_set', () => host.kv.set(key, value, ttl > 0 ? ttl : undefined), undefined, () => kvCache.delete(key));
      if (!hasKv) return CODES.DENIED;
      if (r === CODES.OK) {
        if (kvCache.size >= KV_CACHE_MAX && !kvCache.has(key)) kvCache.delete(kvCache.keys().next().value!);
        kvCache.set(key, { value, at: Date.now(), loading: false });
      }
      return r;
    }) as Fn,

    bext_kv_del: ((ctx: CallContext, keyH: bigint): bigint => {
      const key = text(ctx, keyH);
      if (key === null) return CODES.BAD_ARGUMENT;
      const r = queue('bext_kv_del', () => host.kv.del(key), undefined, () => kvCache.delete(key));
      if (!hasKv) return CODES.DENIED;
      if (r === CODES.OK) kvCache.set(key, { value: null, at: Date.now(), loading: false });
      return r;
    }) as Fn,

    bext_fetch: ((ctx: CallContext, reqH: bigint): bigint => {
      const raw = text(ctx, reqH);
      if (raw === null) return CODES.BAD_ARGUMENT;
      let req: FetchRequest;
      let hostname: string;
      try {
        req = JSON.parse(raw) as FetchRequest;
        if (typeof req?.url !== 'string') return CODES.BAD_ARGUMENT;
        hostname = new URL(req.url).hostname;
      } catch {
        return CODES.BAD_ARGUMENT;
      }
      if (!state.canFetch(hostname)) {
        queue('bext_fetch', () => host.fetch(req));
        return CODES.DENIED;
      }
      const now = Date.now();
      for (const [k, v] of fetchDone) if (now - v.at > FETCH_RESULT_TTL_MS) fetchDone.delete(k);
      const done = fetchDone.get(raw);
      if (done) {
        fetchDone.delete(raw);
        return done.body !== undefined ? ctx.store(done.body) : CODES.FAILED;
      }
      if (fetchInFlight.has(raw)) return CODES.PENDING;
      if (fetchInFlight.size + fetchDone.size >= FETCH_RESULTS_MAX) return CODES.LIMIT;
      fetchInFlight.add(raw);
      const r = queue('bext_fetch', () => host.fetch(req), (res) => {
        fetchInFlight.delete(raw);
        fetchDone.set(raw, { at: Date.now(), body: JSON.stringify(res) });
      }, (e) => {
        fetchInFlight.delete(raw);
        fetchDone.set(raw, { at: Date.now(), error: e instanceof Error ? e.message : String(e) });
      });
      if (r !== CODES.OK) fetchInFlight.delete(raw);
      return r === CODES.OK ? CODES.PENDING : r;
    }) as Fn,

    bext_metric: ((ctx: CallContext, nameH: bigint, value: number, labelsH: bigint, kind: number): bigint => {
      const name = text(ctx, nameH);
      if (name === null) return CODES.BAD_ARGUMENT;
      let labels: Record<string, string> | undefined;
      const raw = text(ctx, labelsH);
      if (raw) {
        try {
          labels = JSON.parse(raw) as Record<string, string>;
        } catch {
          return CODES.BAD_ARGUMENT;
        }
      }
      try {
        host.metric(name, value, labels, KINDS[kind] ?? 'counter');
      } catch (e) {
        return failed('bext_metric', e);
      }
      return hasMetrics ? CODES.OK : CODES.DENIED;
    }) as Fn,

    bext_config: ((ctx: CallContext): bigint => {
      if (configJson === null) {
        try {
          configJson = JSON.stringify(host.config() ?? {});
        } catch (e) {
          return failed('bext_config', e);
        }
      }
      return ctx.store(configJson);
    }) as Fn,

    bext_schedule: ((ctx: CallContext, nameH: bigint, cronH: bigint, optsH: bigint): bigint => {
      const name = text(ctx, nameH);
      const cron = text(ctx, cronH);
      if (name === null || cron === null) return CODES.BAD_ARGUMENT;
      let opts: unknown;
      const raw = text(ctx, optsH);
      if (raw) {
        try {
          opts = JSON.parse(raw);
        } catch {
          return CODES.BAD_ARGUMENT;
        }
      }
      try {
        // Registration is synchronous in the kernel: a refusal or a bad pattern throws here.
        void host.schedule(name, cron, opts as Parameters<HostApi['schedule']>[2]);
      } catch (e) {
        if (isBextError(e) && e.code === 'BEXT_ERR_SCHEDULE_INVALID') {
          host.log('warn', 'bext_schedule refused', { error: e.message });
          return CODES.BAD_ARGUMENT;
        }
        return failed('bext_schedule', e);
      }
      return CODES.OK;
    }) as Fn,

    bext_unschedule: ((ctx: CallContext, nameH: bigint): bigint => {
      const name = text(ctx, nameH);
      if (name === null) return CODES.BAD_ARGUMENT;
      try {
        void host.unschedule(name);
      } catch (e) {
        return failed('bext_unschedule', e);
      }
      return CODES.OK;
    }) as Fn,
  };

  // AssemblyScript's runtime imports these from `env`.
  const env: Record<string, Fn> = {
    abort: ((_ctx: CallContext, msgPtr: number, filePtr: number, line: number, col: number): never => {
      const msg = readAsString(state.memory(), msgPtr) ?? 'abort';
      const file = readAsString(state.memory(), filePtr);
      throw new GuestAbort(file ? `${msg} (${file}:${line}:${col})` : msg);
    }) as Fn,
    seed: (() => Date.now()) as Fn,
    trace: ((_ctx: CallContext, msgPtr: number, n: number, ...args: number[]): void => {
      if (++logs > MAX_LOGS_PER_CALL) { stats.logsDropped++; return; }
      try {
        host.log('debug', readAsString(state.memory(), msgPtr) ?? 'trace', n > 0 ? { args: args.slice(0, n) } : undefined);
      } catch (e) {
        failed('trace', e);
      }
    }) as Fn,
  };

  // Extism's own alloc sums every block on each call and never fails hard;
  // this bounds a guest that allocates host memory in a loop.
  const extismEnv: Record<string, Fn> = {
    alloc: ((ctx: CallContext, n: bigint): bigint => {
      allocBytes += Number(n);
      if (++allocs > MAX_ALLOCS_PER_CALL) throw new HostLimitError(`made more than ${MAX_ALLOCS_PER_CALL} host allocations`);
      if (allocBytes > state.maxAllocBytes) throw new HostLimitError(`allocated more than ${state.maxAllocBytes >> 20} MiB of host memory`);
      return ctx.alloc(n);
    }) as Fn,
  };

  return { imports: { 'extism:host/user': user, env, 'extism:host/env': extismEnv }, beginCall };
}

/** Reads an AssemblyScript string (UTF-16, byte length in the header word before it). */
function readAsString(memory: WebAssembly.Memory | null, ptr: number): string | null {
  if (!memory || !ptr || ptr < 4) return null;
  const buf = memory.buffer;
  if (ptr > buf.byteLength) return null;
  const len = new DataView(buf).getUint32(ptr - 4, true);
  if (len > 4096 || ptr + len > buf.byteLength || len % 2 !== 0) return null;
  return Buffer.from(buf, ptr, len).toString('utf16le');
}
