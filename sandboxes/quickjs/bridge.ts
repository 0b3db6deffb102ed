/**
 * What the two JavaScript sandbox kinds (`quickjs`, `isolate`) share: the
 * guest prelude that defines the `bext_*` globals and the hook dispatchers,
 * and the host-side instance that projects requests, decodes answers, runs
 * host calls, enforces deadlines and replaces a broken VM.
 *
 * Everything crosses the boundary as strings: the host hands the guest JSON
 * text and gets JSON text back, prefixed with one tag character. No host
 * object is ever reachable from the guest and no guest object is ever
 * touched by the host, so getters, proxies and `toJSON` tricks run inside
 * the guest, under its deadline.
 */
import {
  BextError, HOOK_NAMES, makeProjector,
  type FetchRequest, type HookName, type LoadSpec, type LogLevel, type MetricKind, type PluginHooks,
  type Projector, type RenderNext, type RequestData, type ResponseData, type SandboxInstance, type SandboxStats,
} from '../../plugin-api/index.js';

/**
 * Guest-side bootstrap, evaluated before the plugin module. Called with the
 * three raw host functions and the output limit; defines the `bext_*`
 * globals and returns `{ link, settle }`.
 *
 * Answer tags (first character of what a dispatcher returns):
 * `` (empty) undefined · `=` JSON value · `!` the hook threw (description
 * follows) · `#` the answer broke a limit · `~` async, id follows; the result
 * arrives later through `hostDone(id, taggedAnswer)`.
 *
 * Every global forwards to the host, granted or not: the kernel's HostApi
 * refuses an ungranted call with BEXT_ERR_CAP_DENIED and records it in the
 * audit log, and the guest sees that refusal as a thrown Error (sync
 * functions) or a rejected Promise (async ones) whose `code` is the error code.
 */
export const GUEST_PRELUDE = `(function (hostCall, hostSync, hostDone, maxOut) {
  'use strict';
  const parse = JSON.parse, stringify = JSON.stringify, Str = String, Err = Error, P = Promise, M = Map;
  const describe = (e) => {
    try {
      if (e instanceof Err) return Str(e.name) + ': ' + Str(e.message);
      if (e !== null && typeof e === 'object') return 'a non-Error value was thrown: ' + stringify(e);
      return 'a non-Error value was thrown: ' + Str(e);
    } catch (_) { return 'an unprintable value was thrown'; }
  };
  const encode = (r) => {
    if (r === undefined || r === null) return '';
    const s = stringify(r);
    if (typeof s !== 'string') return '';
    if (s.length > maxOut) return '#the hook answered ' + s.length + ' characters of JSON, more than the limit of ' + maxOut;
    return '=' + s;
  };
  let seq = 0;
  const answer = (r) => {
    if (r !== null && (typeof r === 'object' || typeof r === 'function') && typeof r.then === 'function') {
      const id = ++seq;
      r.then((v) => { let out; try { out = encode(v); } catch (e) { out = '!' + describe(e); } hostDone(id, out); },
             (e) => { hostDone(id, '!' + describe(e)); });
      return '~' + id;
    }
    return encode(r);
  };
  const toError = (d) => { const e = new Err(Str(d.message)); e.name = Str(d.name); if (d.code !== undefined) e.code = d.code; return e; };
  const waiting = new M();
  let hseq = 0;
  const call = (op, args) => new P((resolve, reject) => {
    const json = stringify(args);
    const id = ++hseq;
    waiting.set(id, [resolve, reject]);
    hostCall(op, id, json);
  });
  const sync = (op, args) => {
    const out = hostSync(op, stringify(args));
    if (out === '') return undefined;
    if (out[0] === '=') return parse(out.slice(1));
    throw toError(parse(out.slice(1)));
  };
  const def = (name, fn) => Object.defineProperty(globalThis, name, { value: fn, writable: false, enumerable: false, configurable: false });
  def('bext_log', function bext_log(level, msg, fields) { sync('log', [level, msg, fields]); });
  def('bext_metric', function bext_metric(name, value, labels, kind) { sync('metric', [name, value, labels, kind]); });
  def('bext_config', function bext_config() { return sync('config', []); });
  def('bext_publish', function bext_publish(topic, data) { return call('publish', [topic, data]); });
  def('bext_kv_get', function bext_kv_get(key) { return call('kv_get', [key]); });
  def('bext_kv_set', function bext_kv_set(key, value, ttlSeconds) { return call('kv_set', [key, value, ttlSeconds]); });
  def('bext_kv_del', function bext_kv_del(key) { return call('kv_del', [key]); });
  def('bext_fetch', function bext_fetch(req) { return call('fetch', [req]); });
  def('bext_schedule', function bext_schedule(name, cron, opts) { return call('schedule', [name, cron, opts]); });
  def('bext_unschedule', function bext_unschedule(name) { return call('unschedule', [name]); });
  const settle = (id, ok, json) => {
    const w = waiting.get(id);
    if (w === undefined) return;
    waiting.delete(id);
    if (ok) w[0](json === '' ? undefined : parse(json));
    else w[1](toError(parse(json)));
  };
  const link = (ns, names) => {
    const out = {};
    for (const name of names.split(',')) {
      const f = ns[name];
      if (typeof f !== 'function') continue;
      out[name] = name === 'onResponse'
        ? (json) => { try { const a = parse(json); return answer(f(a[0], a[1])); } catch (e) { return '!' + describe(e); } }
        : (json) => { try { return answer(f(parse(json))); } catch (e) { return '!' + describe(e); } };
    }
    return out;
  };
  return { link, settle };
})`;

/** Why a VM can no longer be used. */
export class VmFault extends Error {
  constructor(readonly code: 'BEXT_ERR_SANDBOX_LIMIT' | 'BEXT_ERR_PLUGIN_TIMEOUT', reason: string) {
    super(reason);
  }
}

/** Calls a VM makes back into its instance. All arguments are strings or numbers. */
export interface VmEvents {
  /** An async hook finished: `out` is a tagged answer. */
  done(id: number, out: string): void;
  /** The guest started an async host call (`publish`, `kv_get`, …); answer later with `EngineVm.settle`. */
  hostCall(op: string, id: number, json: string): void;
  /** A sync host call (`log`, `metric`, `config`); returns `''`, `=json` or `!json-error`. */
  hostSync(op: string, json: string): string;
}

/** One guest VM (a QuickJS runtime+context, or a V8 isolate). Any method may throw a VmFault, after which the VM is discarded. */
export interface EngineVm {
  /** Hooks the module exports. */
  readonly hooks: readonly HookName[];
  /** Runs a hook's dispatcher on a JSON argument under the per-call deadline; returns a tagged answer. */
  invoke(hook: HookName, json: string): string;
  /** Runs whatever guest jobs are queued (promise continuations), under a deadline. */
  drain(): void;
  /** Resolves (ok) or rejects the guest promise of host call `id`, then runs the continuations. */
  settle(id: number, ok: boolean, json: string): void;
  /** Whether the VM should be rebuilt once idle (its engine was retired). */
  readonly stale: boolean;
  memoryBytes(): number;
  dispose(): void;
}

/** What a kind provides to build VMs for a plugin. */
export interface Engine {
  readonly kind: 'quickjs' | 'isolate';
  /** Builds a VM; a Promise when the engine must first prepare. Throws BextError(BEXT_ERR_PLUGIN_LOAD) for bad code. */
  create(spec: LoadSpec, sources: ModuleSources, events: VmEvents): EngineVm | Promise<EngineVm>;
}

/** Largest JSON answer a hook may give, in characters. */
export function maxOutputChars(spec: LoadSpec): number {
  return Math.max(8 << 20, spec.limits.bodyBytes * 2);
}

/**
 * Reads module sources once per plugin, so a rebuilt VM runs the bytes that
 * were loaded (and integrity-checked), not whatever is on disk later. Only
 * files inside the plugin folder can be imported.
 */
export class ModuleSources {
  readonly #cache = new Map<string, string>();
  constructor(readonly dir: string, readonly entryPath: string, private readonly read: (path: string) => string) {}

  /** Absolute path of `specifier` imported from `from`, or an Error saying why it is refused. */
  resolve(from: string, specifier: string, resolvePath: (base: string, rel: string) => string, sep: string): string | Error {
    if (!specifier.startsWith('./') && !specifier.startsWith('../')) {
      return new Error(`import of "${specifier}" is not allowed: a sandboxed plugin can import only its own files ("./x.js")`);
    }
    const base = from.startsWith('file://') ? new URL(from).pathname : from;
    const abs = resolvePath(base, specifier);
    if (!abs.startsWith(this.dir + sep)) return new Error(`import of "${specifier}" leaves the plugin folder`);
    return abs;
  }

  source(path: string): string {
    let s = this.#cache.get(path);
    if (s === undefined) {
      s = this.read(path);
      this.#cache.set(path, s);
    }
    return s;
  }
}

interface Pending {
  hook: HookName;
  resolve(v: unknown): void;
  reject(e: unknown): void;
  timer: NodeJS.Timeout;
}

const LEVELS = new Set<LogLevel>(['trace', 'debug', 'info', 'warn', 'error']);
const METRIC_KINDS = new Set<MetricKind>(['counter', 'gauge', 'histogram']);
const LIMIT_MESSAGES = ['InternalError: out of memory', 'InternalError: stack overflow', 'RangeError: Maximum call stack size exceeded'];

/** A projected request, serialised: what crosses the boundary for onRequest, onRoute and onRender. */
export type RequestEncoder = (req: RequestData) => string;

const REQUEST_FIELDS = ['method', 'path', 'query', 'host', 'remoteAddress', 'scheme', 'httpVersion', 'body', 'ctx'] as const;
const encoders = new Map<string, { request: RequestEncoder; projector: Projector }>();

/**
 * The JSON of `makeProjector(needs).request(req)`, written straight from the
 * request without building the projected object first. Shared by every
 * tenant with the same `needs`; the suite checks it against the projector.
 */
export function encoderFor(needs: LoadSpec['manifest']['needs']): { request: RequestEncoder; projector: Projector } {
  const key = needs ? needs.join('\u0000') : '\u0001default';
  let e = encoders.get(key);
  if (e) return e;
  const set = new Set<string>(needs ?? ['method', 'path', 'query', 'host', 'headers', 'ctx']);
  const fields = REQUEST_FIELDS.filter((f) => set.has(f));
  const allHeaders = set.has('headers');
  const someHeaders = [...set].filter((n) => n.startsWith('headers:')).map((n) => n.slice(8));
  const prefixes = fields.map((f) => `,"${f}":`);
  const request: RequestEncoder = (req) => {
    let s = `{"id":${JSON.stringify(req.id)}`;
    for (let i = 0; i < fields.length; i++) {
      const v = req[fields[i]!];
      if (v !== undefined) s += prefixes[i]! + JSON.stringify(v);
    }
    if (allHeaders) s += `,"headers":${JSON.stringify(req.headers)}`;
    else if (someHeaders.length) {
      let h = '';
      for (const n of someHeaders) {
        const v = req.headers[n];
        if (v !== undefined) h += `${h ? ',' : ''}${JSON.stringify(n)}:${JSON.stringify(v)}`;
      }
      s += `,"headers":{${h}}`;
    }
    if (req.route !== undefined) s += `,"route":${JSON.stringify(req.route)}${req.params === undefined ? '' : `,"params":${JSON.stringify(req.params)}`}`;
    return `${s}}`;
  };
  e = { request, projector: makeProjector(needs) };
  encoders.set(key, e);
  return e;
}

const dropProto = (k: string, v: unknown) => (k === '__proto__' ? undefined : v);

/** Parses guest JSON; a `__proto__` key is dropped so no later Object.assign can re-parent a host object. */
export function parseGuestJson(json: string): unknown {
  return json.includes('"__proto__"') ? JSON.parse(json, dropProto) : JSON.parse(json);
}

function isThenable(x: unknown): x is PromiseLike<unknown> {
  return typeof (x as { then?: unknown } | null | undefined)?.then === 'function';
}

function errorJson(e: unknown): string {
  const err = e as { name?: unknown; message?: unknown; code?: unknown } | null;
  return JSON.stringify({
    name: typeof err?.name === 'string' ? err.name : 'Error',
    message: typeof err?.message === 'string' ? err.message : String(e),
    ...(typeof err?.code === 'string' ? { code: err.code } : {}),
  });
}

/**
 * A loaded JavaScript plugin: stable for the kernel, while the VM behind it
 * is replaced whenever it breaks. One VM per instance serves every request;
 * calls are serialised by the engine (both kinds run guest code on the
 * calling thread), async hooks interleave at their awaits.
 */
export class JsInstance implements SandboxInstance {
  readonly hooks: PluginHooks;
  readonly #engine: Engine;
  readonly #spec: LoadSpec;
  readonly #sources: ModuleSources;
  readonly #name: string;
  readonly #enc: { request: RequestEncoder; projector: Projector };
  // Created on first use: most hooks are sync, and every tenant instance counts.
  #pendingMap: Map<number, Pending> | null = null;
  /** Answers that arrived before their call was registered (an isolate may run continuations before applySync returns). */
  #earlyMap: Map<number, string> | null = null;
  #vm: EngineVm | null;
  #building: Promise<EngineVm> | null = null;
  #broken = false;
  #disposed = false;
  readonly #stats = { calls: 0, errors: 0, timeUs: 0, restarts: 0 };

  private constructor(engine: Engine, spec: LoadSpec, sources: ModuleSources) {
    this.#engine = engine;
    this.#spec = spec;
    this.#sources = sources;
    this.#name = spec.manifest.name;
    this.#enc = encoderFor(spec.manifest.needs);
    this.#vm = null;
    this.hooks = {};
  }

  /** Loads a plugin: builds the first VM and checks the declared hooks are exported. */
  static async load(engine: Engine, spec: LoadSpec, sources: ModuleSources): Promise<JsInstance> {
    const self = new JsInstance(engine, spec, sources);
    const vm = await self.#build();
    const declared = Object.keys(spec.manifest.hooks ?? {}) as HookName[];
    const missing = declared.filter((h) => !vm.hooks.includes(h));
    if (missing.length) {
      await self.dispose();
      throw new BextError('BEXT_ERR_PLUGIN_HOOK_MISSING', `plugin "${spec.manifest.name}" declares ${missing.join(', ')} but ${spec.entryPath} does not export ${missing.length > 1 ? 'them' : 'it'}`, {
        hint: `add \`export function ${missing[0]}(...) {...}\` to the entry module, or remove it from "hooks" in bext-plugin.json`,
      });
    }
    Object.assign(self.hooks, self.#wrap(vm.hooks));
    return self;
  }

  stats(): SandboxStats {
    let memoryBytes: number | undefined;
    try {
      memoryBytes = this.#vm?.memoryBytes();
    } catch {
      memoryBytes = undefined; // a VM that broke between calls reports no memory; the next call replaces it
    }
    return { ...this.#stats, memoryBytes };
  }

  async restart(): Promise<void> {
    if (this.#disposed) return;
    const vm = this.#vm;
    if (vm) this.#discard(vm, (h) => new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "${this.#name}" ${h}: the instance was restarted while the call was in flight`));
    this.#broken = true;
    await this.#build();
  }

  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    const vm = this.#vm;
    if (vm) this.#discard(vm, (h) => new BextError('BEXT_ERR_SHUTDOWN', `plugin "${this.#name}" ${h}: the plugin was unloaded while the call was in flight`));
  }

  // ---- calls -------------------------------------------------------------

  #wrap(exported: readonly HookName[]): PluginHooks {
    const p = this.#enc.projector;
    const c = (hook: HookName, json: string) => this.#call(hook, json);
    const enc = this.#enc.request;
    const table: { [K in HookName]: NonNullable<PluginHooks[K]> } = {
      onConnect: (info) => c('onConnect', JSON.stringify(info)) as never,
      onRequest: (req) => c('onRequest', enc(req)) as never,
      onRoute: (req) => c('onRoute', enc(req)) as never,
      onRender: (req, next) => {
        const r = c('onRender', enc(req));
        return (isThenable(r) ? Promise.resolve(r).then((d) => afterRender(d, next)) : afterRender(r, next)) as never;
      },
      onResponse: (req, res) => c('onResponse', `[${enc(req)},${JSON.stringify(p.response(res))}]`) as never,
      onPublish: (msg) => c('onPublish', JSON.stringify({ topic: msg.topic, data: msg.data, publisher: msg.publisher })) as never,
      onSchedule: (task) => c('onSchedule', JSON.stringify({ name: task.name, scheduledAt: task.scheduledAt, firedAt: task.firedAt, run: task.run })) as never,
    };
    const hooks: PluginHooks = {};
    for (const h of HOOK_NAMES) if (exported.includes(h)) (hooks as Record<string, unknown>)[h] = table[h];
    return hooks;
  }

  #call(hook: HookName, json: string): unknown {
    const vm = this.#vm;
    if (vm === null || (vm.stale && (this.#pendingMap?.size ?? 0) === 0)) {
      if (this.#disposed) throw new BextError('BEXT_ERR_SHUTDOWN', `plugin "${this.#name}" is unloaded`);
      if (vm) this.#retireIdle(vm);
      const built = this.#build();
      return isThenable(built) ? built.then(() => this.#call(hook, json)) : this.#call(hook, json);
    }
    this.#stats.calls++;
    const t0 = performance.now();
    let out: string;
    try {
      out = vm.invoke(hook, json);
    } catch (e) {
      this.#stats.timeUs += (performance.now() - t0) * 1000;
      this.#stats.errors++;
      throw this.#fault(vm, e, hook);
    }
    this.#stats.timeUs += (performance.now() - t0) * 1000;
    if (out === '') return undefined;
    if (out.charCodeAt(0) === 126 /* ~ */) return this.#awaitAnswer(vm, hook, Number(out.slice(1)));
    return this.#decode(vm, hook, out);
  }

  /** Turns a tagged answer into a value, or throws (and replaces the VM for a limit). */
  #decode(vm: EngineVm, hook: HookName, out: string): unknown {
    if (out === '') return undefined;
    const tag = out.charCodeAt(0);
    if (tag === 61 /* = */) {
      try {
        return parseGuestJson(out.slice(1));
      } catch (e) {
        this.#stats.errors++;
        throw new BextError('BEXT_ERR_PLUGIN_BAD_DECISION', `plugin "${this.#name}" ${hook} answered text that is not JSON`, { cause: e, details: { plugin: this.#name, hook } });
      }
    }
    this.#stats.errors++;
    const msg = out.slice(1);
    if (tag === 35 /* # */ || LIMIT_MESSAGES.some((m) => msg.startsWith(m))) {
      throw this.#fault(vm, new VmFault('BEXT_ERR_SANDBOX_LIMIT', msg), hook);
    }
    // QuickJS rejects an async function's promise with its (uncatchable) interrupt.
    if (msg.startsWith('InternalError: interrupted')) {
      throw this.#fault(vm, new VmFault('BEXT_ERR_PLUGIN_TIMEOUT', `ran past its ${this.#spec.limits.timeoutMs} ms deadline and was interrupted`), hook);
    }
    throw new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "${this.#name}" ${hook} threw: ${msg}`, { details: { plugin: this.#name, hook } });
  }

  #awaitAnswer(vm: EngineVm, hook: HookName, id: number): Promise<unknown> {
    const early = this.#earlyMap?.get(id);
    if (early !== undefined) {
      this.#earlyMap!.delete(id);
      try {
        return Promise.resolve(this.#decode(vm, hook, early));
      } catch (e) {
        return Promise.reject(e);
      }
    }
    return new Promise((resolve, reject) => {
      const ms = this.#spec.limits.timeoutMs;
      const timer = setTimeout(() => {
        if (this.#vm !== vm || !this.#pendingMap?.has(id)) return;
        this.#stats.errors++;
        this.#fault(vm, new VmFault('BEXT_ERR_PLUGIN_TIMEOUT', `did not answer within its ${ms} ms deadline`), hook);
      }, ms);
      timer.unref();
      (this.#pendingMap ??= new Map()).set(id, { hook, resolve, reject, timer });
      this.#run(vm, hook, () => vm.drain());
    });
  }

  #done(vm: EngineVm, id: number, out: string): void {
    if (vm !== this.#vm) return;
    const p = this.#pendingMap?.get(id);
    if (p === undefined) {
      (this.#earlyMap ??= new Map()).set(id, out);
      return;
    }
    this.#pendingMap!.delete(id);
    clearTimeout(p.timer);
    try {
      p.resolve(this.#decode(vm, p.hook, out));
    } catch (e) {
      p.reject(e);
    }
  }

  /** Runs guest work outside a hook call (continuations), counting its time; a fault replaces the VM. */
  #run(vm: EngineVm, hook: HookName | 'host call', fn: () => void): void {
    const t0 = performance.now();
    try {
      fn();
    } catch (e) {
      this.#stats.errors++;
      this.#fault(vm, e, hook);
    } finally {
      this.#stats.timeUs += (performance.now() - t0) * 1000;
    }
  }

  // ---- host functions ----------------------------------------------------

  #hostCall(slot: VmSlot, op: string, id: number, json: string): void {
    const host = this.#spec.host;
    // Started on a later microtask so a host function never re-enters the VM that called it.
    Promise.resolve()
      .then((): Promise<unknown> => {
        const a = parseGuestJson(json) as unknown[];
        switch (op) {
          case 'publish': return host.publish(String(a[0]), a[1]);
          case 'kv_get': return host.kv.get(String(a[0]));
          case 'kv_set': return host.kv.set(String(a[0]), String(a[1]), a[2] == null ? undefined : Number(a[2]));
          case 'kv_del': return host.kv.del(String(a[0]));
          case 'fetch': return host.fetch(a[0] as FetchRequest);
          case 'schedule': return host.schedule(a[0] as string, a[1] as string, (a[2] ?? undefined) as Parameters<typeof host.schedule>[2]);
          case 'unschedule': return host.unschedule(a[0] as string);
          default: throw new Error(`unknown host call ${op}`);
        }
      })
      .then(
        (v: unknown) => this.#settle(slot.vm, id, true, v === undefined ? '' : JSON.stringify(v)),
        (e: unknown) => this.#settle(slot.vm, id, false, errorJson(e)),
      );
  }

  #settle(vm: EngineVm | null, id: number, ok: boolean, json: string): void {
    if (vm === null || vm !== this.#vm) return;
    this.#run(vm, 'host call', () => vm.settle(id, ok, json));
  }

  #hostSync(op: string, json: string): string {
    const host = this.#spec.host;
    try {
      const a = parseGuestJson(json) as unknown[];
      switch (op) {
        case 'log': {
          const level = LEVELS.has(a[0] as LogLevel) ? (a[0] as LogLevel) : 'info';
          const fields = a[2] !== null && typeof a[2] === 'object' ? (a[2] as Record<string, unknown>) : undefined;
          host.log(level, String(a[1]), fields);
          return '';
        }
        case 'metric': {
          const labels = a[2] !== null && typeof a[2] === 'object' ? (a[2] as Record<string, string>) : undefined;
          const kind = METRIC_KINDS.has(a[3] as MetricKind) ? (a[3] as MetricKind) : undefined;
          host.metric(String(a[0]), Number(a[1]), labels, kind);
          return '';
        }
        case 'config': {
          const c = JSON.stringify(host.config());
          return c === undefined ? '' : `=${c}`;
        }
        default:
          throw new Error(`unknown host call ${op}`);
      }
    } catch (e) {
      return `!${errorJson(e)}`;
    }
  }

  // ---- replacement -------------------------------------------------------

  /** Converts what a VM threw into the error the kernel sees, and replaces the VM. */
  #fault(vm: EngineVm, e: unknown, hook: HookName | 'host call'): BextError {
    const make = (h: string) => this.#faultError(e, h);
    const err = make(hook);
    if (vm === this.#vm) {
      this.#discard(vm, make);
      this.#broken = true;
    }
    return err;
  }

  #faultError(e: unknown, hook: string): BextError {
    const where = `plugin "${this.#name}" ${hook}`;
    const details = { plugin: this.#name, hook };
    if (e instanceof VmFault) return new BextError(e.code, `${where}: ${e.message}; its sandbox instance was replaced`, { details });
    if (e instanceof BextError) return e;
    return new BextError('BEXT_ERR_SANDBOX_LIMIT', `${where}: the sandbox failed (${(e as Error)?.message ?? String(e)}); its instance was replaced`, { cause: e, details });
  }

  /** Drops a VM and fails every call still waiting on it, each with an error naming its own hook. */
  #discard(vm: EngineVm, errorFor: (hook: HookName) => BextError): void {
    this.#vm = null;
    try {
      vm.dispose();
    } catch {
      // The VM is already unusable; its engine records what went wrong.
    }
    this.#earlyMap = null;
    const pending = [...(this.#pendingMap?.values() ?? [])];
    this.#pendingMap = null;
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(errorFor(p.hook));
    }
  }

  /** A stale VM with nothing in flight is dropped without touching it again. */
  #retireIdle(vm: EngineVm): void {
    this.#vm = null;
    try {
      vm.dispose();
    } catch {
      // Stale engines may refuse disposal; the memory goes with the engine.
    }
  }

  #build(): EngineVm | Promise<EngineVm> {
    if (this.#building) return this.#building;
    // The slot is filled once the VM exists; host calls made while the module
    // itself is evaluating settle through it afterwards.
    const slot: VmSlot = { vm: null };
    const events: VmEvents = {
      done: (id, out) => { if (slot.vm) this.#done(slot.vm, id, out); },
      hostCall: (op, id, json) => this.#hostCall(slot, op, id, json),
      hostSync: (op, json) => this.#hostSync(op, json),
    };
    const adopt = (v: EngineVm): EngineVm => {
      this.#building = null;
      if (this.#disposed) {
        v.dispose();
        throw new BextError('BEXT_ERR_SHUTDOWN', `plugin "${this.#name}" is unloaded`);
      }
      slot.vm = v;
      this.#vm = v;
      if (this.#broken) this.#stats.restarts++;
      this.#broken = false;
      return v;
    };
    const made = this.#engine.create(this.#spec, this.#sources, events);
    if (isThenable(made)) {
      this.#building = Promise.resolve(made).then(adopt, (e: unknown) => {
        this.#building = null;
        throw e;
      });
      return this.#building;
    }
    return adopt(made);
  }
}

interface VmSlot {
  vm: EngineVm | null;
}

function afterRender(d: unknown, next: RenderNext): unknown {
  return (d as { action?: unknown } | undefined)?.action === 'next' ? next() : (d as ResponseData | undefined);
}
