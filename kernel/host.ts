/**
 * Host functions bound to one plugin's grants. Every call is checked here;
 * a refused call throws BEXT_ERR_CAP_DENIED and is audited.
 */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';
import { Agent, request } from 'undici';
import {
  BextError, canFetch, canPublish, hostMatches,
  type FetchRequest, type FetchResponse, type HostApi, type KernelServices, type LogLevel, type MetricKind,
} from '../plugin-api/index.js';
import type { AppScope } from './groups.js';

/** What the kernel provides to every host object. */
export interface HostContext {
  publish(topic: string, data: unknown, publisher: string): Promise<number>;
  log(level: LogLevel, msg: string, fields: Record<string, unknown>): void;
  metric(plugin: string, name: string, value: number, labels: Record<string, string> | undefined, kind: MetricKind | undefined): boolean;
  audit(plugin: string, fn: string, detail: string): void;
  kv: KvStore;
  /** Kernel services for a trusted plugin; `instance` names a per-group instance and its app. */
  services(plugin: string, instance?: { name: string; app: AppScope | null }): KernelServices;
  /** Adds or replaces a runtime task of the plugin that owns `host`; throws BEXT_ERR_SCHEDULE_INVALID. */
  schedule(host: HostApi, name: string, cron: string, opts: unknown): void;
  unschedule(host: HostApi, name: string): boolean;
}

export interface KvStore {
  get(ns: string, key: string): Promise<string | null>;
  set(ns: string, key: string, value: string, ttlSeconds?: number): Promise<void>;
  del(ns: string, key: string): Promise<void>;
}

/** In-process store: the embedded default when no Redis is configured. */
export class MemoryKv implements KvStore {
  #m = new Map<string, { v: string; exp: number }>();
  async get(ns: string, key: string) {
    const e = this.#m.get(`${ns}\0${key}`);
    if (!e) return null;
    if (e.exp && e.exp <= Date.now()) {
      this.#m.delete(`${ns}\0${key}`);
      return null;
    }
    return e.v;
  }
  async set(ns: string, key: string, value: string, ttl?: number) {
    this.#m.set(`${ns}\0${key}`, { v: value, exp: ttl ? Date.now() + ttl * 1000 : 0 });
  }
  async del(ns: string, key: string) {
    this.#m.delete(`${ns}\0${key}`);
  }
}

const TOPIC_RE = /^[a-z0-9_.-]+(\/[a-z0-9_.-]+)*$/i;
export function checkTopic(topic: string): void {
  if (typeof topic !== 'string' || topic.length > 256 || !TOPIC_RE.test(topic)) {
    throw new BextError('BEXT_ERR_TOPIC_INVALID', `topic ${JSON.stringify(topic)} is invalid`, { hint: 'use segments of [a-z0-9_.-] separated by "/", at most 256 characters' });
  }
}

const PRIVATE_RANGES = new Set(['unspecified', 'broadcast', 'multicast', 'linkLocal', 'loopback', 'private', 'reserved', 'uniqueLocal', 'carrierGradeNat', 'ipv4Mapped', 'rfc6145', 'rfc6052', '6to4', 'teredo']);

/** Whether an address is loopback, private, link-local or otherwise not public. */
export function isPrivateAddress(addr: string): boolean {
  try {
    let ip = ipaddr.parse(addr);
    if (ip.kind() === 'ipv6' && (ip as ipaddr.IPv6).isIPv4MappedAddress()) ip = (ip as ipaddr.IPv6).toIPv4Address();
    return PRIVATE_RANGES.has(ip.range());
  } catch {
    return true;
  }
}

const MAX_FETCH_BODY = 8 << 20;

/**
 * Outbound HTTP for `bext_fetch`. A wildcard grant never reaches a private
 * address (DNS answers are checked at connect time, so rebinding cannot
 * slip past); only an exact grant of that host may.
 */
async function guardedFetch(plugin: string, grants: readonly string[], req: FetchRequest, deny: (d: string) => never): Promise<FetchResponse> {
  let url: URL;
  try {
    url = new URL(req.url);
  } catch {
    throw new BextError('BEXT_ERR_FETCH_DENIED', `plugin "${plugin}": bext_fetch got an invalid URL ${JSON.stringify(req.url)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') deny(`bext_fetch to ${url.protocol} URLs is not allowed`);
  const host = url.hostname.replace(/^\[|\]$/g, '').toLowerCase();
  const hostPort = url.port ? `${host}:${url.port}` : host;
  const exact = grants.some((g) => g === `fetch:${host}` || g === `fetch:${hostPort}`);
  if (!exact && !canFetch(grants, host) && !canFetch(grants, hostPort)) deny(`bext_fetch to ${hostPort} without fetch:${host}`);
  const allowPrivate = exact && !grants.some((g) => g.startsWith('fetch:*') && hostMatches(g.slice(6), host) && !exact);
  if (isIP(host) && isPrivateAddress(host) && !allowPrivate) {
    throw new BextError('BEXT_ERR_FETCH_DENIED', `plugin "${plugin}": bext_fetch to private address ${host} is not allowed`, { hint: `grant the exact host with "fetch:${host}" to allow it` });
  }
  const dispatcher = new Agent({
    connect: {
      lookup(hostname, opts, cb) {
        lookup(hostname, { all: false }).then(
          (r) => {
            if (isPrivateAddress(r.address) && !allowPrivate) {
              cb(new BextError('BEXT_ERR_FETCH_DENIED', `plugin "${plugin}": ${hostname} resolves to private address ${r.address}`), '', 4);
            } else cb(null, r.address, r.family);
          },
          (e: Error) => cb(e as NodeJS.ErrnoException, '', 4),
        );
      },
    },
  });
  const timeout = req.timeoutMs ?? 5000;
  try {
    const res = await request(url, {
      method: (req.method ?? 'GET') as 'GET',
      headers: req.headers,
      body: req.body,
      dispatcher,
      headersTimeout: timeout,
      bodyTimeout: timeout,
      maxRedirections: 0,
    });
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of res.body) {
      size += (c as Buffer).length;
      if (size > MAX_FETCH_BODY) throw new BextError('BEXT_ERR_FETCH_DENIED', `plugin "${plugin}": bext_fetch response larger than ${MAX_FETCH_BODY} bytes`);
      chunks.push(c as Buffer);
    }
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(res.headers)) if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(', ') : v;
    return { status: res.statusCode, headers, body: Buffer.concat(chunks).toString('utf8') };
  } catch (e) {
    const inner = (e as { cause?: unknown }).cause ?? e;
    if (inner instanceof BextError) throw inner;
    throw e;
  } finally {
    void dispatcher.close();
  }
}

/** Builds the HostApi a plugin receives. */
export function createHost(ctx: HostContext, plugin: string, grants: readonly string[], config: Record<string, unknown>, trusted: boolean, instance?: { name: string; app: AppScope | null }): HostApi {
  const deny = (fn: string, detail: string): never => {
    ctx.audit(plugin, fn, detail);
    throw new BextError('BEXT_ERR_CAP_DENIED', `plugin "${plugin}": ${detail}`, { hint: `grant the capability in plugins.lock.json (\`bext plugin add\`) or remove the ${fn} call` });
  };
  const hasKv = grants.includes('kv');
  const hasMetrics = grants.includes('metrics');
  const hasSchedule = grants.includes('schedule');
  const frozenConfig = Object.freeze(structuredClone(config));
  const host: HostApi = {
    plugin,
    async publish(topic, data) {
      checkTopic(topic);
      if (!canPublish(grants, topic)) deny('bext_publish', `bext_publish(${JSON.stringify(topic)}) without a publish grant covering it`);
      return ctx.publish(topic, data, plugin);
    },
    log(level, msg, fields) {
      ctx.log(level, String(msg), { ...(fields && typeof fields === 'object' ? fields : {}), plugin });
    },
    kv: {
      async get(key) {
        if (!hasKv) deny('bext_kv_get', 'bext_kv_get without the kv capability');
        return ctx.kv.get(plugin, String(key));
      },
      async set(key, value, ttl) {
        if (!hasKv) deny('bext_kv_set', 'bext_kv_set without the kv capability');
        return ctx.kv.set(plugin, String(key), String(value), ttl);
      },
      async del(key) {
        if (!hasKv) deny('bext_kv_del', 'bext_kv_del without the kv capability');
        return ctx.kv.del(plugin, String(key));
      },
    },
    fetch(req) {
      return guardedFetch(plugin, grants, req, (d) => deny('bext_fetch', d));
    },
    metric(name, value, labels, kind) {
      if (!hasMetrics) deny('bext_metric', `bext_metric(${JSON.stringify(name)}) without the metrics capability`);
      if (!ctx.metric(plugin, name, Number(value), labels, kind)) {
        ctx.log('warn', 'metric series cap reached; value dropped', { plugin, metric: name });
      }
    },
    config: <T>() => frozenConfig as T,
    // Not async: a refusal or a bad pattern throws at the call, so WASM guests get their code at once.
    schedule(name, cron, opts) {
      if (!hasSchedule) deny('bext_schedule', `bext_schedule(${JSON.stringify(name)}) without the schedule capability`);
      ctx.schedule(host, name, cron, opts);
      return Promise.resolve();
    },
    unschedule(name) {
      if (!hasSchedule) deny('bext_unschedule', `bext_unschedule(${JSON.stringify(name)}) without the schedule capability`);
      return Promise.resolve(ctx.unschedule(host, String(name)));
    },
  };
  if (trusted) Object.defineProperty(host, 'kernel', { value: ctx.services(plugin, instance), enumerable: false });
  return host;
}
