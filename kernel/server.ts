/**
 * The kernel: loads plugins, compiles their chains, and serves HTTP through
 * them. It knows hooks, routes and host functions — never a plugin by name.
 *
 * Listener seam: any `net.Server` (a `tls.Server` from a TLS plugin, say)
 * can be handed to `serve()`; its sockets run the onConnect chain and are
 * then fed to the same HTTP server.
 */
import { pollFile } from '../plugin-api/file-watch.js';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Readable, pipeline, type Duplex } from 'node:stream';
import { timingSafeEqual } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import {
  BextError, DEFAULT_LIMITS,
  type AppInfo, type AppRef, type ConnectInfo, type Headers, type HookName, type KernelServices, type LogLevel, type PluginStatus,
  type PublishMessage, type RequestRecord, type ResponseData, type ResponseHead, type RouteDecision, type SandboxKind,
} from '../plugin-api/index.js';
import { sandboxHost } from '../sandboxes/registry.js';
import { compileChains, groupBaseSet, groupMatcher, type ChainEntry, type CompiledChains, type CompiledGroup, type GroupPlan, type RouteStore } from './chains.js';
import { expandGroups, type AppScope, type AppSource } from './groups.js';
import { loadConfig, validatePluginConfig, type BextConfig, type GroupLimits } from './config.js';
import { checkTopic, createHost, MemoryKv, type HostContext, type KvStore } from './host.js';
import { computeIntegrity } from './integrity.js';
import { readLock, type LockEntry } from './lock.js';
import { Logger } from './log.js';
import { locatePlugin } from './manifest.js';
import { KernelMetrics, FastHistogram } from './metrics.js';
import { HookFailure, LoadedPlugin, isFailure } from './plugin.js';
import { Scheduler, workerIndexFromEnv } from './scheduler.js';
import { BextRequest, hostOf } from './request.js';

/** A plugin to load: from the lock file, or given directly (tests, zero-config). */
export interface PluginSpec {
  source: string;
  /** Capabilities granted; default: none (from a lock: its list). */
  grants?: string[];
  scope?: 'global' | 'group';
  /** Expected integrity; checked when present. */
  integrity?: string;
  /** Expected name (from the lock). */
  name?: string;
}

export interface KernelOptions {
  config: BextConfig;
  /** Path of the config file, for error messages. */
  configFile?: string;
  /** Lock file to load the composition from. */
  lockFile?: string;
  /** Plugins given directly, after those of the lock. */
  plugins?: PluginSpec[];
  /** Folder relative plugin paths are resolved from (default: the lock file's folder, or cwd). */
  baseDir?: string;
  /** The folder being served (`bext run [dir]`). */
  siteDir?: string;
  logger?: Logger;
  /** First quarantine backoff in ms (default 1000). */
  quarantineBackoffMs?: number;
}

const LOAD_TIMEOUT_MS = 15_000;

/** What it takes to load one plugin instance. */
interface Instantiate {
  loc: ReturnType<typeof locatePlugin>;
  grants: string[];
  scope: 'global' | 'group';
  order: number;
  /** Source, integrity, grants and scope: with the config, what decides reuse across reloads. */
  key: string;
  config: Record<string, unknown>;
  group: string | null;
  app: AppScope | null;
  fingerprint: string;
}

/** In-flight accounting of one plugin set, so a reload can retire the old one. */
interface Generation {
  inflight: number;
  onIdle: (() => void) | null;
}
const DISPOSE_TIMEOUT_MS = 5_000;
const BIN = fileURLToPath(new URL('./cli/bin.js', import.meta.url));
const kAdmin = Symbol('bext.admin');

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<never>((_, rej) => {
      t = setTimeout(() => rej(new BextError('BEXT_ERR_PLUGIN_TIMEOUT', `${what} did not finish within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

/** `$.apps[0].environments.staging` → `/apps/0`: where a group's own `plugins` section lives. */
function pointer(where: string): string {
  return where.replace(/\.environments\..*$/, '').slice(1).replace(/\[(\d+)\]/g, '.$1').split('.').join('/');
}

function isThenable(x: unknown): x is PromiseLike<unknown> {
  return x !== null && typeof x === 'object' && typeof (x as { then?: unknown }).then === 'function';
}

function errorResponse(e: BextError, extraHeaders?: Headers): ResponseData {
  return {
    status: e.status || 500,
    headers: { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', ...(e.status === 503 ? { 'retry-after': '1' } : {}), ...extraHeaders },
    body: JSON.stringify(e.toJSON()),
  };
}

const NOT_FOUND = new BextError('BEXT_ERR_NOT_FOUND', 'nothing serves this path');

class ResponseView implements ResponseHead {
  constructor(
    public status: number,
    public headers: Headers,
    public raw: ResponseData['body'] | undefined,
  ) {}
  get body(): string | undefined {
    const b = this.raw;
    if (typeof b === 'string') return b;
    if (b instanceof Uint8Array) return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('utf8');
    return undefined;
  }
}

export class Kernel {
  config: BextConfig;
  readonly log: Logger;
  readonly metrics: KernelMetrics;
  readonly siteDir: string;
  readonly audits: { time: number; plugin: string; fn: string; detail: string }[] = [];
  #plugins: LoadedPlugin[] = [];
  #chains!: CompiledChains;
  /** The current plugin set's in-flight count; a reload starts a new one. */
  #gen: Generation = { inflight: 0, onIdle: null };
  #reloading: Promise<void> = Promise.resolve();
  #unwatch: (() => void) | null = null;
  #app!: FastifyInstance;
  #http!: http.Server;
  #listeners: net.Server[] = [];
  #ready = false;
  #draining = false;
  #inflight = 0;
  #drained: (() => void) | null = null;
  #kv: KvStore = new MemoryKv();
  #hostCtx: HostContext;
  #httpCounts = new Map<string, { group: string; method: string; cls: string; n: number }>();
  #httpLatency = new Map<string, FastHistogram>();
  #clientErrors = new Map<string, number>();
  #observers = new Set<(r: RequestRecord) => void>();
  /** Degraded notes set by a plugin while its factory still runs. */
  #pendingDegraded = new Map<string, string | null>();
  #adminToken: Buffer | null;
  #opts: KernelOptions;
  #singleGroup: CompiledGroup | null = null;
  /** Folders chosen for app environments at run time (deployed versions), by `app/env`. */
  #appSources = new Map<string, AppSource>();
  #scheduler: Scheduler;

  private constructor(opts: KernelOptions) {
    this.#opts = opts;
    this.config = opts.config;
    this.log = opts.logger ?? new Logger();
    this.log.configure(opts.config.log);
    this.siteDir = resolve(opts.siteDir ?? process.cwd());
    this.#adminToken = opts.config.admin.token ? Buffer.from(opts.config.admin.token) : null;
    this.metrics = new KernelMetrics(() =>
      this.#plugins.map((p) => ({
        plugin: p.name,
        sandbox: p.sandbox,
        hooks: p.counters,
        fuelTotal: () => p.instance.stats().fuelTotal,
        memoryBytes: () => p.instance.stats().memoryBytes,
      })),
    );
    this.metrics.extraText = () => this.#httpText();
    this.#scheduler = new Scheduler({ log: this.log, registry: this.metrics.registry, redisUrl: opts.config.redis?.url, workerIndex: workerIndexFromEnv() });
    this.#hostCtx = {
      publish: (topic, data, publisher) => this.publish(topic, data, publisher),
      log: (level, msg, fields) => this.log.log(level, msg, fields),
      metric: (plugin, name, value, labels, kind) => this.metrics.pluginMetric(plugin, name, value, labels, kind),
      audit: (plugin, fn, detail) => this.#audit(plugin, fn, detail),
      kv: { get: (ns, k) => this.#kv.get(ns, k), set: (ns, k, v, t) => this.#kv.set(ns, k, v, t), del: (ns, k) => this.#kv.del(ns, k) },
      services: (plugin, instance) => this.#services(plugin, instance),
      schedule: (host, name, cron, o) => this.#scheduler.register(host, name, cron, o),
      unschedule: (host, name) => this.#scheduler.unregister(host, name),
    };
  }

  /** Loads every plugin and compiles the chains. Disposes what loaded if any step fails. */
  static async create(opts: KernelOptions): Promise<Kernel> {
    const k = new Kernel(opts);
    try {
      await k.#init();
    } catch (e) {
      await k.#disposePlugins();
      throw e;
    }
    return k;
  }

  async #init(): Promise<void> {
    if (this.config.redis?.url) {
      const { RedisKv } = await import('./redis-kv.js');
      this.#kv = new RedisKv(this.config.redis.url, this.log);
    }
    const gen = await this.#loadGeneration(this.config, null);
    this.#plugins = gen.plugins;
    this.#setChains(gen.chains);
    this.#buildServer();
  }

  /**
   * Loads a plugin set and compiles its chains. Plugins of `previous` whose
   * source, integrity, grants, scope and config are unchanged are reused as
   * they are (their state and connections survive a reload); the rest load
   * fresh. On any error the fresh ones are disposed and the error thrown.
   */
  async #loadGeneration(config: BextConfig, previous: LoadedPlugin[] | null): Promise<{ plugins: LoadedPlugin[]; chains: CompiledChains; fresh: LoadedPlugin[] }> {
    const specs: PluginSpec[] = [];
    let base = this.#opts.baseDir ?? process.cwd();
    if (this.#opts.lockFile) {
      const lock = readLock(this.#opts.lockFile);
      base = this.#opts.baseDir ?? dirname(resolve(this.#opts.lockFile));
      for (const e of [...lock.plugins].sort((a, b) => a.order - b.order)) {
        specs.push({ source: e.source, grants: e.capabilities, scope: e.scope, integrity: e.integrity, name: e.name });
      }
    }
    specs.push(...(this.#opts.plugins ?? []));
    const names = new Map<string, string>();
    const configFile = this.#opts.configFile ?? 'bext.config.json';
    const sections = new Set(Object.keys(config.plugins));
    const plugins: LoadedPlugin[] = [];
    const fresh: LoadedPlugin[] = [];
    /** How each shared instance was loaded, for its per-group instances. */
    const made = new Map<LoadedPlugin, Omit<Instantiate, 'config' | 'group' | 'app' | 'fingerprint'>>();
    try {
      for (const [i, spec] of specs.entries()) {
        const loc = locatePlugin(spec.source, base);
        const m = loc.manifest;
        if (spec.name && spec.name !== m.name) {
          throw new BextError('BEXT_ERR_LOCK_INVALID', `lock entry "${spec.name}" points at ${spec.source}, whose manifest is named "${m.name}"`, { hint: `re-lock it with \`bext plugin add ${spec.source}\`` });
        }
        const prev = names.get(m.name);
        if (prev) throw new BextError('BEXT_ERR_PLUGIN_DUPLICATE', `plugin name "${m.name}" is claimed by both ${prev} and ${loc.source}`, { hint: 'remove one of them, or rename one plugin' });
        names.set(m.name, loc.source);
        // Always hashed: the first reload must see the same fingerprint for an unchanged plugin.
        const integrity = computeIntegrity(loc.root);
        if (spec.integrity && integrity !== spec.integrity) {
          throw new BextError('BEXT_ERR_LOCK_INTEGRITY', `plugin "${m.name}" (${loc.source}) does not match its locked integrity: locked ${spec.integrity}, found ${integrity}`, {
            hint: `if you changed it on purpose, re-lock with \`bext plugin add ${loc.source}\`; otherwise restore its files`,
          });
        }
        sections.delete(m.name);
        const pluginConfig = validatePluginConfig(m.name, m.configSchema as Record<string, unknown> | undefined, config.plugins[m.name], configFile);
        const grants = spec.grants ?? [];
        const scope = spec.scope ?? 'global';
        const how = { loc, grants, scope, order: i, key: JSON.stringify([loc.source, integrity, [...grants].sort(), scope]) };
        const fingerprint = JSON.stringify([how.key, pluginConfig]);
        const same = previous?.find((p) => p.name === m.name && p.fingerprint === fingerprint);
        const loaded = same ?? (await this.#instantiate({ ...how, config: pluginConfig, group: null, app: null, fingerprint }));
        if (same) same.order = i;
        else fresh.push(loaded);
        plugins.push(loaded);
        made.set(loaded, how);
      }
      for (const s of sections) {
        throw new BextError('BEXT_ERR_CONFIG_INVALID', `${configFile}: $.plugins.${s}: no plugin named "${s}" is loaded`, { hint: `add it with \`bext plugin add ${s}\`, or remove the section` });
      }
      // Per-group instances load after every shared one, so a plugin's factory
      // (the platform's, choosing deployed versions) runs before them.
      const groupSpecs = expandGroups(config, this.#appSources, this.#configDir(), configFile);
      const byName = new Map(plugins.map((p) => [p.name, p]));
      const global = plugins.filter((p) => p.scope === 'global');
      const plans: GroupPlan[] = [];
      const all = [...plugins];
      for (const g of groupSpecs) {
        const set = groupBaseSet(g, byName, global, g.where, configFile);
        for (const n of Object.keys(g.plugins ?? {})) {
          if (!set.some((p) => p.name === n)) {
            throw new BextError('BEXT_ERR_CONFIG_INVALID', `${configFile}: ${g.where}.plugins.${n}: plugin "${n}" is not in this group's plugin set`, { hint: byName.has(n) ? `add it to the group (\`add\`) or drop the section` : `lock it first with \`bext plugin add ${n}\`` });
          }
        }
        const kind = g.app ? (g.app.site ? 'site' : g.app.proxy ? 'proxy' : null) : null;
        const members: LoadedPlugin[] = [];
        for (const p of set) {
          const per = p.manifest.perApp;
          // A plugin for the other kind of app stays out (a proxy in a site app).
          if (kind && (per === 'site' || per === 'proxy') && per !== kind) continue;
          const override = g.plugins?.[p.name];
          const perInstance = g.app !== null && (per === 'all' || (per !== undefined && per === kind));
          if (override === undefined && !perInstance) {
            members.push(p);
            continue;
          }
          const how = made.get(p)!;
          const section = { ...(config.plugins[p.name] ?? {}), ...(override ?? {}) };
          const cfg = validatePluginConfig(p.name, p.manifest.configSchema as Record<string, unknown> | undefined, section, configFile, override !== undefined ? `${pointer(g.where)}/plugins/${p.name}` : `/plugins/${p.name}`);
          const fingerprint = JSON.stringify([how.key, cfg, g.name, g.app]);
          const label = `${p.name}@${g.name}`;
          const same = previous?.find((q) => q.name === label && q.fingerprint === fingerprint);
          const inst = same ?? (await this.#instantiate({ ...how, config: cfg, group: g.name, app: g.app, fingerprint }));
          if (same) same.order = how.order;
          else fresh.push(inst);
          all.push(inst);
          members.push(inst);
        }
        plans.push({ name: g.name, matches: groupMatcher(g), plugins: members, limits: g.limits, scope: g.app, ...(g.app ? { hosts: g.hosts } : {}) });
      }
      return { plugins: all, chains: compileChains(all, plans), fresh };
    } catch (e) {
      await this.#dispose(fresh);
      throw e;
    }
  }

  /** Folder relative paths in the config (app sites) are resolved from. */
  #configDir(): string {
    return this.#opts.configFile ? dirname(resolve(this.#opts.configFile)) : this.siteDir;
  }

  /** Loads one plugin instance into its sandbox. */
  async #instantiate(how: Instantiate): Promise<LoadedPlugin> {
    const { loc, grants, scope, order, config: pluginConfig, group, app } = how;
    const m = loc.manifest;
    const label = group ? `${m.name}@${group}` : m.name;
    const kind: SandboxKind = m.sandbox;
    const sandbox = await sandboxHost(kind);
    const host = createHost(this.#hostCtx, m.name, grants, pluginConfig, kind === 'trusted', { name: label, app });
    const limits = {
      timeoutMs: m.limits?.timeoutMs ?? DEFAULT_LIMITS.timeoutMs,
      memoryMb: m.limits?.memoryMb ?? DEFAULT_LIMITS.memoryMb,
      fuel: m.limits?.fuel ?? DEFAULT_LIMITS.fuel,
      bodyBytes: m.limits?.bodyBytes ?? DEFAULT_LIMITS.bodyBytes,
    };
    let instance;
    try {
      instance = await withTimeout(sandbox.load({ manifest: m, dir: loc.root, entryPath: loc.entryPath, host, grants, limits }), LOAD_TIMEOUT_MS, `loading plugin "${label}"`);
    } catch (e) {
      if (e instanceof BextError) throw e;
      throw new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "${label}" failed to load: ${(e as Error)?.message ?? String(e)}`, { cause: e });
    }
    const loaded = new LoadedPlugin(m, instance, grants, order, scope, loc.source, this.log, (p) => this.metrics.quarantines.inc({ plugin: p.name }), this.#opts.quarantineBackoffMs, group);
    loaded.fingerprint = how.fingerprint;
    this.#scheduler.bind(host, loaded);
    const early = this.#pendingDegraded.get(label);
    if (early) {
      loaded.state = 'degraded';
      loaded.detail = early;
    }
    return loaded;
  }

  /**
   * Hot reload: reads the config file and the lock again, builds the new
   * plugin set and chains beside the old ones, and swaps them atomically.
   * Requests already running finish on the set they started with; plugins
   * that left the set are disposed once those requests are done. A bad
   * config or lock is refused with its errors and the old set keeps serving.
   */
  async reload(): Promise<{ ok: true; loaded: string[]; reused: string[]; removed: string[] } | { ok: false; error: BextError }> {
    const run = async () => {
      let config: BextConfig;
      let gen: { plugins: LoadedPlugin[]; chains: CompiledChains; fresh: LoadedPlugin[] };
      try {
        config = this.#opts.configFile ? loadConfig(this.#opts.configFile) : this.config;
        gen = await this.#loadGeneration(config, this.#plugins);
      } catch (e) {
        const error = e instanceof BextError ? e : new BextError('BEXT_ERR_CONFIG_INVALID', String((e as Error)?.message ?? e));
        this.log.error('reload refused; the running configuration keeps serving', { code: error.code, error: error.message });
        return { ok: false as const, error };
      }
      for (const key of ['server', 'admin', 'redis'] as const) {
        if (JSON.stringify(config[key]) !== JSON.stringify(this.config[key])) this.log.warn(`reload: the "${key}" section changed; it takes effect at the next restart`);
      }
      const old = this.#plugins;
      const oldGen = this.#gen;
      const kept = new Set(gen.plugins);
      const removed = old.filter((p) => !kept.has(p));
      this.config = { ...this.config, groups: config.groups, apps: config.apps, plugins: config.plugins };
      this.#plugins = gen.plugins;
      this.#setChains(gen.chains);
      this.#scheduler.sync(gen.plugins);
      // Dispose what left once every request that started on the old set is done.
      const retire = () => void this.#dispose(removed);
      if (oldGen.inflight === 0) retire();
      else oldGen.onIdle = retire;
      const reused = gen.plugins.filter((p) => !gen.fresh.includes(p)).map((p) => p.name);
      this.log.info('reloaded', { loaded: gen.fresh.map((p) => p.name), reused, removed: removed.map((p) => p.name) });
      return { ok: true as const, loaded: gen.fresh.map((p) => p.name), reused, removed: removed.map((p) => p.name) };
    };
    // One reload at a time.
    const next = this.#reloading.then(run, run);
    this.#reloading = next.then(() => undefined, () => undefined);
    return next;
  }

  /** Reloads when the config file or the lock changes on disk. */
  watch(): () => void {
    const files = [this.#opts.configFile, this.#opts.lockFile].filter((f): f is string => !!f);
    let timer: NodeJS.Timeout | null = null;
    const fire = () => {
      if (timer) clearTimeout(timer);
      timer = setTimeout(() => void this.reload(), 150);
    };
    const stops = files.map((f) => pollFile(f, { intervalMs: 500, persistent: true }, fire));
    const stop = () => {
      for (const s of stops) s();
      if (timer) clearTimeout(timer);
    };
    this.#unwatch = stop;
    return stop;
  }

  #setChains(c: CompiledChains): void {
    this.#chains = c;
    this.#singleGroup = c.groups.length === 1 ? c.groups[0]! : null;
    this.#gen = { inflight: 0, onIdle: null };
  }

  // ---------------------------------------------------------------- HTTP

  #buildServer(): void {
    const cfg = this.config.server;
    this.#app = Fastify({
      logger: false,
      bodyLimit: cfg.bodyLimit,
      requestIdHeader: false,
      return503OnClosing: false,
      forceCloseConnections: false,
      serverFactory: (handler) => {
        const s = http.createServer(
          {
            keepAliveTimeout: cfg.keepAliveTimeoutMs,
            headersTimeout: cfg.headersTimeoutMs,
            requestTimeout: cfg.requestTimeoutMs,
            maxHeaderSize: cfg.maxHeaderBytes,
            connectionsCheckingInterval: Math.min(1000, cfg.headersTimeoutMs),
          },
          handler,
        );
        return s;
      },
    });
    this.#http = this.#app.server as http.Server;
    // Sockets reach this server through emit('connection') from our own
    // listeners, so it never listens itself; Node starts the connection
    // tracking that enforces headersTimeout/requestTimeout (and that
    // closeIdleConnections walks) on 'listening'.
    this.#http.emit('listening');
    this.#http.on('upgrade', (raw: IncomingMessage, socket: Duplex, head: Buffer) => this.#handleUpgrade(raw, socket, head));
    this.#http.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
      if (!socket.writable) return socket.destroy();
      const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
      const reason = status === 408 ? 'timeout' : status === 431 ? 'header_overflow' : 'bad_request';
      this.#clientErrors.set(reason, (this.#clientErrors.get(reason) ?? 0) + 1);
      socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
    });
    this.#app.removeAllContentTypeParsers();
    // Bodies stay unread: plugins read them (bounded) only when they ask.
    this.#app.addContentTypeParser('*', (_req, _payload, done) => done(null, undefined));
    const handler = (req: FastifyRequest, reply: FastifyReply) => {
      reply.hijack();
      this.#handle(req.raw, reply.raw);
    };
    this.#app.all('/', handler);
    this.#app.all('/*', handler);
  }

  /** Starts the public and admin listeners. */
  async listen(): Promise<{ port: number; adminPort: number | null }> {
    await this.#app.ready();
    const cfg = this.config;
    const pub = net.createServer({ pauseOnConnect: true });
    await this.serve(pub, { port: cfg.server.port, host: cfg.server.host });
    let adminPort: number | null = null;
    if (cfg.admin.port !== null) {
      const adm = net.createServer({ pauseOnConnect: true });
      await this.serve(adm, { port: cfg.admin.port, host: cfg.admin.host, admin: true });
      adminPort = (adm.address() as net.AddressInfo).port;
      if (!['127.0.0.1', '::1', 'localhost'].includes(cfg.admin.host) && !this.#adminToken) {
        this.log.warn('admin listener is bound beyond loopback: admin routes require admin.token, and none is set, so they refuse every request', { host: cfg.admin.host });
      }
    }
    this.#ready = true;
    this.#scheduler.start(this.#plugins);
    const port = (pub.address() as net.AddressInfo).port;
    this.log.info('bext listening', { port, adminPort, plugins: this.#plugins.map((p) => p.name) });
    return { port, adminPort };
  }

  /**
   * Serves HTTP on a listener: the seam for TLS and other transports. Sockets
   * run the onConnect chain before the HTTP parser sees a byte.
   */
  async serve(server: net.Server, opts: { port?: number; host?: string; admin?: boolean }): Promise<void> {
    const event = server instanceof tls.Server ? 'secureConnection' : 'connection';
    const admin = opts.admin === true;
    server.on(event, (socket: net.Socket) => this.#accept(socket, admin));
    server.on('error', (e) => this.log.error('listener error', { error: e.message }));
    this.#listeners.push(server);
    if (opts.port !== undefined) {
      await new Promise<void>((res, rej) => {
        server.once('error', rej);
        server.listen(opts.port, opts.host, () => {
          server.off('error', rej);
          res();
        });
      });
    }
  }

  #accept(socket: net.Socket, admin: boolean): void {
    socket.on('error', () => socket.destroy());
    if (admin) (socket as unknown as Record<symbol, boolean>)[kAdmin] = true;
    const chain = this.#chains.onConnect;
    if (this.#draining) return void socket.destroy();
    if (!chain || admin) return this.#hand(socket);
    const tls = socket as net.Socket & { servername?: string; alpnProtocol?: string | false };
    const info: ConnectInfo = {
      remoteAddress: socket.remoteAddress ?? '',
      remotePort: socket.remotePort ?? 0,
      localPort: socket.localPort ?? 0,
      ...(tls.servername ? { servername: tls.servername } : {}),
      ...(tls.alpnProtocol ? { alpn: tls.alpnProtocol } : {}),
    };
    // Not enumerable: plain-data copies into sandboxes leave it behind.
    Object.defineProperty(info, 'onClose', { value: (cb: () => void) => void socket.once('close', cb), enumerable: false });
    const step = (i: number): void => {
      for (; i < chain.length; i++) {
        const e = chain[i]!;
        const r = e.plugin.call('onConnect', e.fn, info);
        if (isThenable(r)) {
          const next = i + 1;
          void Promise.resolve(r).then((d) => (this.#connectVerdict(e, d, socket) ? step(next) : undefined));
          return;
        }
        if (!this.#connectVerdict(e, r, socket)) return;
      }
      this.#hand(socket);
    };
    step(0);
  }

  /** true to continue the chain; false when the socket was closed. */
  #connectVerdict(e: ChainEntry, d: unknown, socket: net.Socket): boolean {
    if (isFailure(d)) {
      if (e.plugin.failMode === 'open') return true;
      socket.destroy();
      return false;
    }
    if (d && typeof d === 'object' && (d as { action?: string }).action === 'reject') {
      socket.destroy();
      return false;
    }
    return true;
  }

  #hand(socket: net.Socket): void {
    if (socket.destroyed) return;
    this.#http.emit('connection', socket);
    socket.resume();
  }

  #group(host: string, path: string): CompiledGroup {
    if (this.#singleGroup) return this.#singleGroup;
    const c = this.#chains;
    for (const g of c.ordered) if (g.matches!(host, path)) return g;
    if (c.appHosts.size !== 0) {
      const g = c.appHosts.get(host);
      if (g) return g;
    }
    for (const g of c.wildcards) if (g.matches!(host, path)) return g;
    return c.groups[c.groups.length - 1]!;
  }

  #makeRequest(raw: IncomingMessage): { req: BextRequest; group: CompiledGroup } {
    const url = raw.url ?? '/';
    const qi = url.indexOf('?');
    const path = qi === -1 ? url : url.slice(0, qi);
    const query = qi === -1 ? '' : url.slice(qi + 1);
    const host = hostOf(raw.headers.host ?? (raw.headers[':authority'] as string | undefined));
    const group = this.#group(host, path);
    const req = new BextRequest(raw, path, query, host, group.limiter?.bodyBytes ?? this.config.server.bodyLimit);
    req.group = group.name;
    if (group.app !== null) req.app = group.app;
    req.adminCheck = this.#adminCheck;
    return { req, group };
  }

  #handle(raw: IncomingMessage, out: ServerResponse): void {
    const t0 = performance.now();
    this.#inflight++;
    const { req, group } = this.#makeRequest(raw);
    req.out = out;
    req.t0 = t0;
    req.gen = this.#gen;
    this.#gen.inflight++;
    if (this.#observers.size !== 0) req.timings = [];
    let r: ResponseData | Promise<ResponseData>;
    const limiter = group.limiter;
    if (limiter !== null) {
      const refused = limiter.admit(group.name);
      if (refused) {
        const wait = (refused.details as { retryAfter?: number } | undefined)?.retryAfter ?? 1;
        return this.#respond(req, group, out, errorResponse(refused, { 'retry-after': String(wait) }), t0);
      }
      req.limiter = limiter;
    }
    try {
      r = this.#pipeline(req, group);
    } catch (e) {
      r = errorResponse(e instanceof BextError ? e : new BextError('BEXT_ERR_PLUGIN_FAILED', String((e as Error)?.message ?? e)));
    }
    if (isThenable(r)) {
      (r as Promise<ResponseData>).then(
        (res) => this.#respond(req, group, out, res, t0),
        (e: unknown) => this.#respond(req, group, out, errorResponse(e instanceof BextError ? e : new BextError('BEXT_ERR_PLUGIN_FAILED', String((e as Error)?.message ?? e))), t0),
      );
    } else this.#respond(req, group, out, r, t0);
  }

  /** onRequest → route or onRender. Synchronous until a hook returns a promise. */
  #pipeline(req: BextRequest, group: CompiledGroup): ResponseData | Promise<ResponseData> {
    if (group.needsBody && req.hasBody()) {
      return req.readBody().then(
        (b) => {
          req.body = b.toString('utf8');
          return this.#afterBody(req, group);
        },
        (e: unknown) => errorResponse(e instanceof BextError ? e : new BextError('BEXT_ERR_PLUGIN_FAILED', String(e))),
      );
    }
    return this.#afterBody(req, group);
  }

  #afterBody(req: BextRequest, group: CompiledGroup): ResponseData | Promise<ResponseData> {
    if (group.onRequest) {
      const r = this.#requestChain(group.onRequest, req, 0);
      if (isThenable(r)) return (r as Promise<ResponseData | null>).then((res) => res ?? this.#dispatch(req, group));
      if (r) return r;
    }
    return this.#dispatch(req, group);
  }

  #requestChain(chain: ChainEntry[], req: BextRequest, i: number): ResponseData | null | Promise<ResponseData | null> {
    for (; i < chain.length; i++) {
      const e = chain[i]!;
      if (e.match !== null && !e.match(req.method, req.path, req.host)) continue;
      const d = e.plugin.call('onRequest', e.fn, req);
      if (isThenable(d)) {
        const next = i + 1;
        return Promise.resolve(d).then((v) => this.#requestVerdict(e, req, v) ?? this.#requestChain(chain, req, next));
      }
      const out = this.#requestVerdict(e, req, d);
      if (out) return out;
    }
    return null;
  }

  #requestVerdict(e: ChainEntry, req: BextRequest, d: unknown): ResponseData | null {
    if (d === undefined || d === null) return null;
    if (isFailure(d)) return e.plugin.failMode === 'open' && !d.clientFault ? null : errorResponse(d.error);
    const dec = d as { action?: string; setHeaders?: Record<string, string>; ctx?: Record<string, unknown>; responseHeaders?: Headers; status?: number };
    if (dec.action === 'continue') {
      if (dec.setHeaders) for (const k in dec.setHeaders) req.headers[k.toLowerCase()] = String(dec.setHeaders[k]);
      if (dec.ctx) Object.assign(req.ctx, dec.ctx);
      if (dec.responseHeaders) req.responseHeaders = { ...req.responseHeaders, ...dec.responseHeaders };
      return null;
    }
    if (dec.action === 'respond' && typeof dec.status === 'number') return dec as ResponseData;
    return this.#badDecision(e, `onRequest returned ${describeDecision(d)}; expected undefined, {action:'continue'} or {action:'respond', status}`);
  }

  #badDecision(e: ChainEntry, what: string): ResponseData | null {
    const err = new BextError('BEXT_ERR_PLUGIN_BAD_DECISION', `plugin "${e.plugin.name}" ${what}`);
    this.log.warn('bad plugin decision', { plugin: e.plugin.name, hook: e.hook, error: err.message });
    e.plugin.counter(e.hook).errors++;
    return e.plugin.failMode === 'open' ? null : errorResponse(err);
  }

  #dispatch(req: BextRequest, group: CompiledGroup): ResponseData | Promise<ResponseData> {
    const found = group.router.find(req.method as 'GET', req.path);
    if (found) {
      const store = found.store as RouteStore;
      if (store.admin && !this.#adminAllowed(req)) {
        return errorResponse(new BextError('BEXT_ERR_ADMIN_FORBIDDEN', `${req.path} is an admin route`, { hint: 'use the admin listener, or send Authorization: Bearer <admin.token>' }));
      }
      req.route = store.pattern;
      req.params = found.params as Record<string, string>;
      const d = store.plugin.call('onRoute', store.fn, req);
      if (isThenable(d)) return Promise.resolve(d).then((v) => this.#routeVerdict(store, v));
      return this.#routeVerdict(store, d);
    }
    if (group.onRender) return this.#render(group.onRender, req, 0);
    return errorResponse(NOT_FOUND);
  }

  #routeVerdict(store: RouteStore, d: unknown): ResponseData {
    if (isFailure(d)) return errorResponse(d.error);
    if (d && typeof d === 'object' && typeof (d as ResponseData).status === 'number') return d as ResponseData;
    const err = new BextError('BEXT_ERR_PLUGIN_BAD_DECISION', `plugin "${store.plugin.name}" onRoute for ${store.pattern} returned ${describeDecision(d)}; expected a response {status, headers?, body?}`);
    this.log.warn('bad plugin decision', { plugin: store.plugin.name, hook: 'onRoute', error: err.message });
    return errorResponse(err);
  }

  #render(chain: ChainEntry[], req: BextRequest, i: number): ResponseData | Promise<ResponseData> {
    for (; i < chain.length; i++) {
      const e = chain[i]!;
      if (e.match !== null && !e.match(req.method, req.path, req.host)) continue;
      const idx = i;
      let nextCalled: Promise<ResponseData> | null = null;
      const next = () => (nextCalled ??= Promise.resolve().then(() => this.#render(chain, req, idx + 1)));
      const d = e.plugin.call('onRender', e.fn, req, next);
      if (isThenable(d)) return Promise.resolve(d).then((v) => this.#renderVerdict(chain, req, idx, e, v));
      const out = this.#renderVerdict(chain, req, idx, e, d);
      return out;
    }
    return errorResponse(NOT_FOUND);
  }

  #renderVerdict(chain: ChainEntry[], req: BextRequest, i: number, e: ChainEntry, d: unknown): ResponseData | Promise<ResponseData> {
    if (isFailure(d)) return e.plugin.failMode === 'open' && !d.clientFault ? this.#render(chain, req, i + 1) : errorResponse(d.error);
    if (d === undefined || d === null || (d as { action?: string }).action === 'next') return this.#render(chain, req, i + 1);
    if (typeof (d as ResponseData).status === 'number') return d as ResponseData;
    const bad = this.#badDecision(e, `onRender returned ${describeDecision(d)}; expected a response or {action:'next'}`);
    return bad ?? this.#render(chain, req, i + 1);
  }

  #adminCheck = (req: BextRequest): boolean => this.#adminAllowed(req);

  #adminAllowed(req: BextRequest): boolean {
    const onAdmin = (req.raw.socket as unknown as Record<symbol, boolean>)[kAdmin] === true;
    const loopbackAdmin = ['127.0.0.1', '::1', 'localhost'].includes(this.config.admin.host);
    if (onAdmin && loopbackAdmin) return true;
    if (!this.#adminToken) return false;
    const auth = req.headers.authorization;
    if (typeof auth !== 'string' || !auth.startsWith('Bearer ')) return false;
    const given = Buffer.from(auth.slice(7));
    return given.length === this.#adminToken.length && timingSafeEqual(given, this.#adminToken);
  }

  /** onResponse waterfall, then write. */
  #respond(req: BextRequest, group: CompiledGroup, out: ServerResponse, res: ResponseData, t0: number): void {
    if (res.trailers !== undefined) req.trailers = res.trailers;
    let headers: Headers = res.headers ?? {};
    if (req.responseHeaders) headers = { ...req.responseHeaders, ...headers };
    const chain = group.onResponse;
    if (!chain) return this.#write(req, group, out, res.status, headers, bodyOf(res), null, t0);
    // The view and the transform list live on the request so the chain step needs no closure.
    const view = new ResponseView(res.status, { ...headers }, bodyOf(res));
    this.#responseStep(req, group, out, chain, view, [], t0, 0);
  }

  #responseStep(req: BextRequest, group: CompiledGroup, out: ServerResponse, chain: ChainEntry[], view: ResponseView, transforms: (() => Duplex)[], t0: number, i: number): void {
    for (; i < chain.length; i++) {
      const e = chain[i]!;
      if (e.match !== null && !e.match(req.method, req.path, req.host)) continue;
      const d = e.plugin.call('onResponse', e.fn, req, view);
      if (isThenable(d)) {
        const next = i + 1;
        void Promise.resolve(d).then((v) => {
          if (this.#responseVerdict(e, view, transforms, v)) this.#responseStep(req, group, out, chain, view, transforms, t0, next);
          else this.#write(req, group, out, view.status, view.headers, view.raw, transforms, t0);
        });
        return;
      }
      if (!this.#responseVerdict(e, view, transforms, d)) break;
    }
    this.#write(req, group, out, view.status, view.headers, view.raw, transforms, t0);
  }

  /** Applies an onResponse decision; false ends the chain (fail-closed error). */
  #responseVerdict(e: ChainEntry, view: ResponseView, transforms: (() => Duplex)[], d: unknown): boolean {
    if (d === undefined || d === null) return true;
    if (isFailure(d)) {
      if (e.plugin.failMode === 'open') return true;
      const er = errorResponse(d.error);
      view.status = er.status;
      view.headers = er.headers!;
      view.raw = er.body;
      transforms.length = 0;
      return false;
    }
    if (typeof d !== 'object') {
      this.#badDecision(e, `onResponse returned ${describeDecision(d)}`);
      return true;
    }
    const dec = d as { status?: number; setHeaders?: Headers; removeHeaders?: string[]; body?: ResponseData['body']; bodyBase64?: string; transform?: () => Duplex };
    if (typeof dec.status === 'number') view.status = dec.status;
    if (dec.removeHeaders) for (const h of dec.removeHeaders) delete view.headers[h.toLowerCase()];
    if (dec.setHeaders) for (const k in dec.setHeaders) view.headers[k.toLowerCase()] = dec.setHeaders[k]!;
    if (dec.body !== undefined) {
      // A streamed body that is replaced is never read: let its source go.
      if (view.raw instanceof Readable && view.raw !== dec.body) view.raw.destroy();
      view.raw = dec.body;
      delete view.headers['content-length'];
    } else if (typeof dec.bodyBase64 === 'string') {
      view.raw = Buffer.from(dec.bodyBase64, 'base64');
      delete view.headers['content-length'];
    }
    if (typeof dec.transform === 'function' && e.plugin.sandbox === 'trusted') transforms.push(dec.transform);
    return true;
  }

  #write(req: BextRequest, group: CompiledGroup, out: ServerResponse, status: number, headers: Headers, body: ResponseData['body'] | undefined, transforms: (() => Duplex)[] | null, t0: number): void {
    // HTTP/2 streams have no Connection header; draining closes their session instead.
    if (this.#draining && req.httpVersion < '2') headers = { ...headers, connection: 'close' };
    try {
      out.statusCode = status;
      const h2 = req.httpVersion >= '2';
      for (const k in headers) {
        const v = headers[k];
        // HTTP/2 forbids connection-specific headers (RFC 9113 §8.2.2).
        if (v !== undefined && !(h2 && HOP_BY_HOP.has(k))) out.setHeader(k, v);
      }
      let stream: Readable | null = null;
      const plain = !transforms?.length && req.trailers === undefined;
      if (body === undefined || body === null) {
        if (plain) {
          if (!out.hasHeader('content-length') && status !== 204 && status !== 304) out.setHeader('content-length', 0);
          out.end();
          return this.#done(req, group, status, t0);
        }
        stream = Readable.from([]);
      } else if (typeof body === 'string' || body instanceof Uint8Array) {
        if (plain) {
          if (!out.hasHeader('content-type') && typeof body === 'string') out.setHeader('content-type', 'text/plain; charset=utf-8');
          out.setHeader('content-length', typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength);
          out.end(body);
          return this.#done(req, group, status, t0);
        }
        stream = Readable.from([typeof body === 'string' ? Buffer.from(body) : body]);
      } else if (body instanceof Readable) stream = body;
      else stream = Readable.from(body as AsyncIterable<Uint8Array>);
      if (!transforms?.length) return this.#pipeBody(req, group, out, stream, status, t0);
      out.removeHeader('content-length');
      const stages: NodeJS.ReadWriteStream[] = transforms.map((t) => t());
      pipeline([stream, ...stages, out] as unknown as [Readable, ServerResponse], (err) => {
        if (err && !out.headersSent) {
          out.statusCode = 500;
          out.end();
        } else if (err) out.destroy(err);
        this.#done(req, group, status, t0);
      });
    } catch (e) {
      this.log.error('response write failed', { error: (e as Error).message, path: req.path });
      if (!out.headersSent) {
        out.statusCode = 500;
        out.end();
      } else out.destroy();
      this.#done(req, group, 500, t0);
    }
  }

  /**
   * A streamed body with no transforms: `pipe` and one close listener.
   * `pipeline()` costs several watchers and an AbortController per open
   * response, which adds up for long-lived streams such as SSE.
   */
  #pipeBody(req: BextRequest, group: CompiledGroup, out: ServerResponse, stream: Readable, status: number, t0: number): void {
    stream.once('error', (err) => {
      this.log.warn('response stream failed', { path: req.path, error: err.message });
      if (!out.headersSent) {
        out.statusCode = 500;
        out.end();
      } else out.destroy(err);
    });
    out.once('close', () => {
      // A client that went away ends the source too (subscribers are freed).
      if (!stream.destroyed) stream.destroy();
      this.#done(req, group, status, t0);
    });
    const trailers = req.trailers;
    if (trailers === undefined) {
      stream.pipe(out);
      return;
    }
    // Trailers go after the last chunk: HTTP/2 always carries them; HTTP/1.1
    // only in a chunked body to a client that said `TE: trailers`.
    const canTrail = req.httpVersion >= '2' || (!out.hasHeader('content-length') && /\btrailers\b/i.test(String(req.headers.te ?? '')));
    stream.pipe(out, { end: false });
    stream.once('end', () => {
      Promise.resolve(trailers).then(
        (t) => {
          if (canTrail && t && !out.destroyed) {
            // No DATA went out: Node's HTTP/2 response would end the stream with its
            // HEADERS and drop later trailers, so they join that one header block
            // (gRPC's "trailers-only" form, which clients read as the status).
            if (!out.headersSent && req.httpVersion >= '2') {
              for (const k in t) if (!HOP_BY_HOP.has(k)) out.setHeader(k, (t as Record<string, string>)[k]!);
            } else out.addTrailers(t as Record<string, string>);
          }
          out.end();
        },
        () => out.end(),
      );
    });
  }

  #done(req: BextRequest, group: CompiledGroup, status: number, t0: number): void {
    if (req.timings) this.#observe(req, group, status, t0);
    if (req.limiter !== null) req.limiter.inflight--;
    const gen = req.gen as Generation | null;
    if (gen && --gen.inflight === 0 && gen.onIdle && gen !== this.#gen) {
      const f = gen.onIdle;
      gen.onIdle = null;
      f();
    }
    const cls = status < 200 ? '1xx' : status < 300 ? '2xx' : status < 400 ? '3xx' : status < 500 ? '4xx' : '5xx';
    const key = `${group.name} ${req.method} ${cls}`;
    const c = this.#httpCounts.get(key);
    if (c) c.n++;
    else if (this.#httpCounts.size < 2000) this.#httpCounts.set(key, { group: group.name, method: knownMethod(req.method), cls, n: 1 });
    let h = this.#httpLatency.get(group.name);
    if (!h) this.#httpLatency.set(group.name, (h = new FastHistogram()));
    h.observe((performance.now() - t0) / 1000);
    if (--this.#inflight === 0 && this.#drained) this.#drained();
  }

  #observe(req: BextRequest, group: CompiledGroup, status: number, t0: number): void {
    const out = req.out;
    const rec: RequestRecord = {
      id: req.id,
      time: Date.now() - (performance.now() - t0),
      method: req.method,
      path: req.path,
      host: req.host,
      group: group.name,
      status,
      durationMs: performance.now() - t0,
      remoteAddress: req.remoteAddress,
      requestHeaders: req.headers,
      responseHeaders: out ? (out.getHeaders() as RequestRecord['responseHeaders']) : {},
      ctx: req.ctx,
      timings: req.timings ?? [],
    };
    if (req.route) rec.route = req.route;
    for (const fn of this.#observers) {
      try {
        fn(rec);
      } catch (e) {
        this.log.warn('request observer failed', { error: (e as Error)?.message });
      }
    }
  }

  #httpText(): string {
    const lines: string[] = [];
    for (const c of this.#httpCounts.values()) lines.push(`bext_http_requests_total{group="${c.group}",method="${c.method}",status_class="${c.cls}"} ${c.n}`);
    let out = lines.length ? `# HELP bext_http_requests_total HTTP requests answered, by route group, method and status class\n# TYPE bext_http_requests_total counter\n${lines.join('\n')}\n` : '';
    const hl: string[] = [];
    for (const [g, h] of this.#httpLatency) hl.push(...h.lines('bext_http_request_duration_seconds', `group="${g}"`));
    if (hl.length) out += `# HELP bext_http_request_duration_seconds Time from request head to response written\n# TYPE bext_http_request_duration_seconds histogram\n${hl.join('\n')}\n`;
    if (this.#clientErrors.size) {
      out += '# HELP bext_http_client_errors_total Connections answered or cut off before a request was parsed (slow headers, oversized or malformed heads)\n# TYPE bext_http_client_errors_total counter\n';
      for (const [reason, n] of this.#clientErrors) out += `bext_http_client_errors_total{reason="${reason}"} ${n}\n`;
    }
    return out;
  }

  // ------------------------------------------------------------- upgrades

  #handleUpgrade(raw: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => socket.destroy());
    const { req, group } = this.#makeRequest(raw);
    const reject = (res: ResponseData) => {
      const body = typeof res.body === 'string' || res.body instanceof Uint8Array ? Buffer.from(res.body as string) : Buffer.alloc(0);
      const hs = Object.entries(res.headers ?? {})
        .filter(([k]) => !/^(content-length|connection|transfer-encoding)$/i.test(k))
        .map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(', ') : v}`)
        .join('\r\n');
      socket.end(`HTTP/1.1 ${res.status} ${http.STATUS_CODES[res.status] ?? ''}\r\nconnection: close\r\ncontent-length: ${body.length}\r\n${hs ? `${hs}\r\n` : ''}\r\n${body}`);
    };
    const go = async () => {
      if (group.onRequest) {
        const r = await this.#requestChain(group.onRequest, req, 0);
        if (r) return reject(r);
      }
      const found = group.router.find(req.method as 'GET', req.path);
      if (!found) {
        // No claimed route: trusted onRender hooks may take the upgrade (config-driven routes, e.g. a proxy).
        for (const e of group.onRender ?? []) {
          if (e.plugin.sandbox !== 'trusted') continue;
          if (e.match !== null && !e.match(req.method, req.path, req.host)) continue;
          const d = (await e.plugin.call('onRender', e.fn, req, () => Promise.resolve(errorResponse(NOT_FOUND)))) as unknown;
          if (isFailure(d)) return reject(errorResponse(d.error));
          if (!d || (d as { action?: string }).action === 'next') continue;
          if ((d as { action?: string }).action === 'upgrade' && typeof (d as { upgrade?: unknown }).upgrade === 'function') {
            (d as Extract<RouteDecision, { action: 'upgrade' }>).upgrade(raw, socket, head);
            return;
          }
          return reject(typeof (d as ResponseData).status === 'number' ? (d as ResponseData) : errorResponse(NOT_FOUND));
        }
        return reject(errorResponse(NOT_FOUND));
      }
      const store = found.store as RouteStore;
      if (store.admin && !this.#adminAllowed(req)) return reject(errorResponse(new BextError('BEXT_ERR_ADMIN_FORBIDDEN', `${req.path} is an admin route`)));
      req.route = store.pattern;
      req.params = found.params as Record<string, string>;
      const d = (await store.plugin.call('onRoute', store.fn, req)) as RouteDecision | HookFailure;
      if (isFailure(d)) return reject(errorResponse(d.error));
      if (d && (d as { action?: string }).action === 'upgrade' && typeof (d as { upgrade?: unknown }).upgrade === 'function') {
        (d as Extract<RouteDecision, { action: 'upgrade' }>).upgrade(raw, socket, head);
        return;
      }
      reject(d && typeof (d as ResponseData).status === 'number' ? (d as ResponseData) : errorResponse(new BextError('BEXT_ERR_PLUGIN_BAD_DECISION', `plugin "${store.plugin.name}" did not upgrade ${req.path}`)));
    };
    go().catch((e: unknown) => {
      this.log.error('upgrade failed', { error: String((e as Error)?.message ?? e) });
      socket.destroy();
    });
  }

  // ------------------------------------------------------------- publish

  /** Runs the onPublish chain. Resolves to the number of deliveries plugins reported. */
  async publish(topic: string, data: unknown, publisher = 'kernel'): Promise<number> {
    checkTopic(topic);
    const chain = this.#chains.onPublish;
    if (!chain) return 0;
    const msg: PublishMessage = { topic, data, publisher };
    let delivered = 0;
    for (const e of chain) {
      if (e.match !== null && !e.match('PUBLISH', `/${topic}`, '')) continue;
      let d = e.plugin.call('onPublish', e.fn, msg);
      if (isThenable(d)) d = await d;
      if (d === undefined || d === null || isFailure(d)) continue;
      const dec = d as { action?: string; data?: unknown; delivered?: number };
      if (dec.action === 'drop') return 0;
      if (dec.action === 'transform') msg.data = dec.data;
      else if (dec.action === 'deliver') delivered += typeof dec.delivered === 'number' ? dec.delivered : 1;
    }
    return delivered;
  }

  // ------------------------------------------------------------ services

  #services(plugin: string, instance?: { name: string; app: AppScope | null }): KernelServices {
    const label = instance?.name ?? plugin;
    const app = instance?.app ?? null;
    return {
      subscribeLogs: (fn) => this.log.subscribe(fn),
      observeRequests: (fn) => {
        this.#observers.add(fn);
        return () => this.#observers.delete(fn);
      },
      serve: (server, spec) => this.serve(server, spec),
      reload: () => this.reload(),
      handle: (req, res) => this.#handle(req as unknown as IncomingMessage, res as unknown as ServerResponse),
      plugins: () => this.plugins(),
      ready: () => this.#ready && !this.#draining,
      metricsText: () => this.metrics.text(),
      metricsContentType: this.metrics.contentType,
      setDegraded: (detail) => {
        const p = this.#plugins.find((x) => x.name === label);
        if (!p) return void this.#pendingDegraded.set(label, detail);
        if (p.state === 'quarantined') return;
        p.state = detail ? 'degraded' : 'loaded';
        p.detail = detail ?? undefined;
      },
      siteDir: app?.site ?? this.siteDir,
      ...(app ? { app: { name: app.name, env: app.env, version: app.version, ...(app.proxy ? { proxy: app.proxy } : {}) } } : {}),
      bin: BIN,
      apps: () => this.apps(),
      setAppSource: (name, env, source) => this.setAppSource(name, env, source),
      scheduler: () => this.#scheduler.status(),
      schedulerCluster: () => this.#scheduler.clusterStatus(),
      runTask: (p, task) => this.#scheduler.runNow(p, task),
    };
  }

  /** The hosted apps with what serves each environment now (before the first load: none). */
  apps(): AppInfo[] {
    const live = new Map<string, AppInfo>();
    for (const g of this.#chains?.groups ?? []) {
      const s = g.scope;
      if (!s) continue;
      let a = live.get(s.name);
      if (!a) live.set(s.name, (a = { name: s.name, environments: {} }));
      if (s.env === 'production' && s.proxy) a.proxy = s.proxy;
      a.environments[s.env] = { hosts: [...g.hosts], site: s.site, ...(s.proxy ? { proxy: s.proxy } : {}), version: s.version };
    }
    return [...live.values()];
  }

  /**
   * Chooses the folder an app environment serves (a deployed version), or
   * null for the config's site. Takes effect at the next reload.
   */
  setAppSource(app: string, env: string, source: AppSource | null): void {
    const a = (this.config.apps ?? []).find((x) => x.name === app);
    if (!a) throw new BextError('BEXT_ERR_CONFIG_INVALID', `no app named "${app}" in ${this.#opts.configFile ?? 'the config'}`, { hint: `add it under "apps", or use one of: ${(this.config.apps ?? []).map((x) => x.name).join(', ') || '(none)'}` });
    if (env !== 'production' && !a.environments?.[env]) {
      throw new BextError('BEXT_ERR_CONFIG_INVALID', `app "${app}" has no environment "${env}"`, { hint: `add it under apps[name=${app}].environments, or use one of: ${['production', ...Object.keys(a.environments ?? {})].join(', ')}` });
    }
    if (source) this.#appSources.set(`${app}/${env}`, { dir: resolve(source.dir), version: source.version });
    else this.#appSources.delete(`${app}/${env}`);
  }

  plugins(): PluginStatus[] {
    return this.#plugins.map((p) => p.status());
  }

  /** The scheduler: every task's status, manual runs (for tests and the CLI). */
  get scheduler(): Scheduler {
    return this.#scheduler;
  }

  /** The loaded plugin objects (for tests and the CLI). */
  loaded(): readonly LoadedPlugin[] {
    return this.#plugins;
  }

  /** Every route group in matching order with its plugin instances, for `bext routes`. */
  listGroups(): { name: string; app: AppRef | null; plugins: string[] }[] {
    return this.#chains.groups.map((g) => ({ name: g.name, app: g.app, plugins: g.plugins.map((p) => p.name) }));
  }

  /** The effective chain for a request, for `bext routes` and debugging. */
  describe(host: string, path: string, method = 'GET'): { group: string; app: AppRef | null; limits: GroupLimits | null; chains: Record<string, string[]>; route: string | null } {
    const g = this.#group(host, path);
    const names = (c: ChainEntry[] | null) => (c ?? []).filter((e) => !e.match || e.match(method, path, host)).map((e) => `${e.plugin.name}(${e.priority})`);
    const found = g.router.find(method as 'GET', path);
    const spec = [...this.config.groups, ...(this.config.apps ?? [])].find((x) => x.name === (g.app ? g.app.name : g.name));
    return {
      group: g.name,
      app: g.app,
      limits: spec?.limits ?? null,
      chains: { onConnect: names(this.#chains.onConnect), onRequest: names(g.onRequest), onRender: names(g.onRender), onResponse: names(g.onResponse), onPublish: names(this.#chains.onPublish) },
      route: found ? `${(found.store as RouteStore).plugin.name} ${(found.store as RouteStore).pattern}` : null,
    };
  }

  #audit(plugin: string, fn: string, detail: string): void {
    this.metrics.denials.inc({ plugin, function: fn });
    this.audits.push({ time: Date.now(), plugin, fn, detail });
    if (this.audits.length > 500) this.audits.splice(0, this.audits.length - 500);
    this.log.warn('capability denied', { plugin, function: fn, detail, code: 'BEXT_ERR_CAP_DENIED' });
  }

  get ready(): boolean {
    return this.#ready && !this.#draining;
  }

  get inflight(): number {
    return this.#inflight;
  }

  /**
   * Graceful stop: close the listeners, let in-flight requests finish (new
   * ones on open keep-alive connections are still answered, with
   * `Connection: close`) until the deadline, then dispose plugins in reverse
   * load order.
   *
   * `idle: 'close'` (the default) cuts idle keep-alive connections at once.
   * `idle: 'keep'` leaves them to end by themselves — at their next request,
   * answered with `Connection: close`, or when the client or the keep-alive
   * timeout closes them — and waits for that (within the deadline). Cutting
   * an idle connection races a client that is sending a request on it at
   * that moment, and that request fails; a keep-alive timeout does not,
   * because every response announces it (`Keep-Alive: timeout=N`) and
   * clients close their side before it. Rolling restarts use `'keep'`.
   */
  async close(deadlineMs = this.config.server.shutdownTimeoutMs, opts: { idle?: 'close' | 'keep' } = {}): Promise<void> {
    if (this.#draining) return;
    this.#draining = true;
    const tasksStopped = this.#scheduler.stop(deadlineMs);
    // A listener's close callback runs once every connection it accepted has ended.
    const connectionsEnded = Promise.all(this.#listeners.map((l) => new Promise<void>((r) => l.close(() => r()))));
    if (this.#http && opts.idle !== 'keep') this.#http.closeIdleConnections();
    const deadline = new Promise<void>((r) => setTimeout(r, deadlineMs).unref());
    if (this.#inflight > 0) await Promise.race([new Promise<void>((r) => (this.#drained = r)), deadline]);
    if (opts.idle === 'keep') await Promise.race([connectionsEnded, deadline]);
    if (this.#http) {
      const closed = new Promise<void>((r) => this.#http.close(() => r()));
      this.#http.closeIdleConnections();
      await Promise.race([closed, deadline]);
      this.#http.closeAllConnections();
    }
    await tasksStopped;
    await this.#disposePlugins();
    if ('close' in this.#kv) await (this.#kv as { close(): Promise<void> }).close();
    this.log.info('bext stopped');
  }

  async #disposePlugins(): Promise<void> {
    this.#unwatch?.();
    await this.#dispose(this.#plugins);
    this.#plugins = [];
  }

  /** Disposes plugins in reverse load order, each within its deadline. */
  async #dispose(list: LoadedPlugin[]): Promise<void> {
    for (const p of [...list].reverse()) {
      try {
        await withTimeout(p.instance.dispose(), DISPOSE_TIMEOUT_MS, `disposing plugin "${p.name}"`);
      } catch (e) {
        this.log.error('plugin dispose failed', { plugin: p.name, error: (e as Error).message });
      }
    }
  }

  /** Plugin-facing logging at a level (used by the CLI). */
  logAt(level: LogLevel, msg: string, fields?: Record<string, unknown>): void {
    this.log.log(level, msg, fields);
  }

  /** Name of every hook with at least one plugin, for diagnostics. */
  activeHooks(): HookName[] {
    const set = new Set<HookName>();
    for (const p of this.#plugins) for (const h of Object.keys(p.manifest.hooks ?? {}) as HookName[]) set.add(h);
    return [...set];
  }
}

function bodyOf(res: ResponseData): ResponseData['body'] {
  if (res.body !== undefined) return res.body;
  if (typeof res.bodyBase64 === 'string') return Buffer.from(res.bodyBase64, 'base64');
  return undefined;
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade']);

const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']);
function knownMethod(m: string): string {
  return METHODS.has(m) ? m : 'OTHER';
}

function describeDecision(d: unknown): string {
  try {
    const s = JSON.stringify(d);
    return s === undefined ? String(d) : s.length > 120 ? `${s.slice(0, 117)}...` : s;
  } catch {
    return typeof d;
  }
}
