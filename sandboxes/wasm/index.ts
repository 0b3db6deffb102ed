/**
 * WASM plugins: Extism guests run in-thread (`runInWorker: false`, since a
 * worker costs far more per call than a hook can afford), with fuel
 * metering added at load (see fuel.ts) because in-thread WASM cannot be
 * pre-empted, and the module's memory capped at `limits.memoryMb`.
 *
 * A trap, fuel or memory exhaustion, stack overflow or abort leaves the
 * instance in an unknown state: it is dropped and a fresh one is created
 * from the same compiled module before the next call.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import createPlugin, { type Plugin, type PluginOutput } from '@extism/extism';
import {
  BextError, HOOK_NAMES, canFetch, canPublish, isBextError, makeProjector,
  type HookName, type LoadSpec, type LogLevel, type PluginHooks,
  type SandboxHost, type SandboxInstance, type SandboxStats,
} from '../../plugin-api/index.js';
import { FUEL_EXPORT, GROW_FAILED_EXPORT, INSTRUMENTER_VERSION, MAX_FUEL, WasmFormatError, instrument, withLimits, type InstrumentedModule } from './fuel.js';
import { createHostFunctions, HostLimitError, GuestAbort, type HostFunctions, type HostState } from './host-functions.js';

/** Largest output a hook may return. */
export const MAX_OUTPUT_BYTES = 1 << 20;
const PAGE = 65536;

/** Stats of a WASM instance: the common ones plus host-function accounting. */
export interface WasmStats extends SandboxStats {
  fuelLast: number;
  fuelTotal: number;
  memoryBytes: number;
  restarts: number;
  /** Host-function calls refused for a missing capability. */
  hostDenied: number;
  /** Host-function calls that failed in the host. */
  hostErrors: number;
  /** Log lines dropped over the per-call cap. */
  logsDropped: number;
}

const cache = new Map<string, InstrumentedModule>();
const cacheCounters = { hits: 0, misses: 0 };

/** The in-memory cache of instrumented modules, keyed by the original's sha256. */
export const instrumentationCache = {
  stats: () => ({ entries: cache.size, ...cacheCounters }),
  clear: () => { cache.clear(); cacheCounters.hits = 0; cacheCounters.misses = 0; },
};

/** Instruments a module, or returns the cached result for identical bytes. */
export function instrumentCached(original: Uint8Array): InstrumentedModule {
  const key = `${INSTRUMENTER_VERSION}:${createHash('sha256').update(original).digest('hex')}`;
  const hit = cache.get(key);
  if (hit) { cacheCounters.hits++; return hit; }
  cacheCounters.misses++;
  const m = instrument(original);
  cache.set(key, m);
  return m;
}

interface Runner {
  plugin: Plugin;
  exports: WebAssembly.Exports;
  fuel: WebAssembly.Global;
  growFailed: WebAssembly.Global;
  memory: WebAssembly.Memory | null;
}

/** Extism imports that only work inside Extism's own call frame (`plugin.call`). */
const EXTISM_FRAME_IMPORTS = new Set(['input_length', 'input_load_u8', 'input_load_u64', 'input_offset', 'output_set', 'error_set', 'error_get']);

function limitError(detail: string, cause?: unknown): BextError {
  return new BextError('BEXT_ERR_SANDBOX_LIMIT', detail, { cause });
}

const isThenable = (x: unknown): x is PromiseLike<unknown> =>
  x !== null && typeof x === 'object' && typeof (x as { then?: unknown }).then === 'function';

class WasmInstance implements SandboxInstance {
  readonly hooks: PluginHooks = {};
  readonly #name: string;
  readonly #module: WebAssembly.Module;
  readonly #memoryExport: string | null;
  readonly #fuelLimit: number;
  readonly #maxBytes: number;
  readonly #state: HostState;
  readonly #functions: HostFunctions;
  readonly #encoder = new TextEncoder();
  /**
   * Guests that read input and write output only through the bext I/O
   * imports are called directly and synchronously; guests using Extism's
   * input/output go through `plugin.call`, which is async.
   */
  readonly #direct: boolean;
  #runner: Runner | null = null;
  #pending: Promise<Runner> | null = null;
  /** A direct call is running (a host function may re-enter the kernel). */
  #active = false;
  #busy = false;
  #waiters: (() => void)[] = [];
  #disposed = false;
  readonly #stats: WasmStats = {
    calls: 0, errors: 0, timeUs: 0, fuelLast: 0, fuelTotal: 0, memoryBytes: 0, restarts: 0,
    hostDenied: 0, hostErrors: 0, logsDropped: 0,
  };

  constructor(spec: LoadSpec, module: WebAssembly.Module, memoryExport: string | null, exported: Set<string>) {
    this.#name = spec.manifest.name;
    this.#module = module;
    this.#memoryExport = memoryExport;
    this.#fuelLimit = Math.min(MAX_FUEL, Math.max(1, Math.floor(spec.limits.fuel)));
    this.#maxBytes = Math.max(1, Math.floor(spec.limits.memoryMb * 16)) * PAGE;
    this.#direct = !WebAssembly.Module.imports(module).some((i) => i.module === 'extism:host/env' && EXTISM_FRAME_IMPORTS.has(i.name));
    this.#state = {
      name: this.#name,
      host: spec.host,
      grants: spec.grants,
      stats: this.#stats,
      maxAllocBytes: this.#maxBytes,
      maxOutputBytes: MAX_OUTPUT_BYTES,
      io: { input: new Uint8Array(0), output: null, error: null },
      memory: () => this.#runner?.memory ?? null,
      disposed: () => this.#disposed,
      canPublish: (topic) => canPublish(spec.grants, topic),
      canFetch: (host) => canFetch(spec.grants, host),
    };
    this.#functions = createHostFunctions(this.#state);
    const project = makeProjector(spec.manifest.needs);
    const name = this.#name;
    const call = this.#direct
      ? (hook: HookName, input: string) => this.#callDirect(hook, input)
      : (hook: HookName, input: string) => this.#callExtism(hook, input);
    const then = (r: unknown, f: (d: unknown) => unknown) => (isThenable(r) ? Promise.resolve(r).then(f) : f(r));
    const table: { [K in HookName]: PluginHooks[K] } = {
      onConnect: (info) => call('onConnect', JSON.stringify(info)) as never,
      onRequest: (req) => call('onRequest', JSON.stringify(project.request(req))) as never,
      onRoute: (req) => then(call('onRoute', JSON.stringify(project.request(req))), (d) => asResponse(d, name, 'onRoute')) as never,
      onRender: (req, next) => then(call('onRender', JSON.stringify(project.request(req))), (d) => {
        if (d === undefined || (d !== null && typeof d === 'object' && (d as { action?: unknown }).action === 'next')) return next();
        return asResponse(d, name, 'onRender');
      }) as never,
      onResponse: (req, res) => call('onResponse', JSON.stringify({ req: project.request(req), res: project.response(res) })) as never,
      onPublish: (msg) => call('onPublish', JSON.stringify(msg)) as never,
      onSchedule: (task) => call('onSchedule', JSON.stringify({ name: task.name, scheduledAt: task.scheduledAt, firedAt: task.firedAt, run: task.run })) as never,
    };
    for (const h of HOOK_NAMES) if (exported.has(h)) (this.hooks as Record<string, unknown>)[h] = table[h];
  }

  /** Creates the first Extism instance; load fails if instantiation does (bad imports, start function traps). */
  async start(): Promise<void> {
    this.#runner = await this.#createRunner();
  }

  async #createRunner(): Promise<Runner> {
    const state = this.#state;
    this.#functions.beginCall();
    const plugin = await createPlugin({ wasm: [{ module: this.#module }] }, {
      useWasi: false,
      runInWorker: false,
      functions: this.#functions.imports,
      memory: { maxPages: this.#maxBytes / PAGE },
      logger: extismLogger(state),
      logLevel: 'warn',
    });
    const instance = await plugin.getInstance();
    const fuel = instance.exports[FUEL_EXPORT];
    const growFailed = instance.exports[GROW_FAILED_EXPORT];
    if (!(fuel instanceof WebAssembly.Global) || !(growFailed instanceof WebAssembly.Global)) throw new Error('the instrumented module lacks its fuel globals');
    const mem = this.#memoryExport ? instance.exports[this.#memoryExport] : undefined;
    return { plugin, exports: instance.exports, fuel, growFailed, memory: mem instanceof WebAssembly.Memory ? mem : null };
  }

  async #ensureRunner(): Promise<Runner> {
    if (this.#runner) return this.#runner;
    if (!this.#pending) this.#pending = this.#createRunner();
    try {
      const r = await this.#pending;
      if (this.#disposed) { void r.plugin.close(); throw new BextError('BEXT_ERR_SHUTDOWN', `plugin "${this.#name}" was disposed`); }
      this.#runner = r;
      return r;
    } catch (e) {
      if (isBextError(e)) throw e;
      throw new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "${this.#name}" could not be restarted: ${(e as Error).message}`, { cause: e });
    } finally {
      this.#pending = null;
    }
  }

  /** Drops a broken instance and starts building its replacement at once. */
  #replace(): void {
    const old = this.#runner;
    this.#runner = null;
    this.#stats.restarts++;
    if (old) void old.plugin.close().catch(() => undefined);
    if (!this.#disposed && !this.#pending) {
      this.#pending = this.#createRunner();
      // The next call awaits it and reports a failure; this only keeps it from being unhandled.
      this.#pending.catch(() => undefined);
    }
  }

  #begin(runner: Runner, input: string): Uint8Array {
    const io = this.#state.io;
    io.input = this.#encoder.encode(input);
    io.output = null;
    io.error = null;
    this.#functions.beginCall();
    runner.fuel.value = this.#fuelLimit;
    return io.input;
  }

  /** The synchronous path: one export call, no promise unless the instance is being replaced or the call re-enters. */
  #callDirect(hook: HookName, input: string): unknown {
    if (this.#disposed) throw new BextError('BEXT_ERR_SHUTDOWN', `plugin "${this.#name}" was disposed`);
    const runner = this.#runner;
    if (runner === null || this.#active) return this.#deferred(hook, input);
    this.#active = true;
    this.#begin(runner, input);
    // Frees the Extism memory blocks (host-function arguments and results) of the previous call.
    void runner.plugin.reset();
    const fn = runner.exports[hook] as () => unknown;
    const t0 = performance.now();
    try {
      fn();
    } catch (e) {
      throw this.#trapped(runner, hook, e, t0);
    } finally {
      this.#active = false;
    }
    this.#account(t0, this.#fuelLimit - (runner.fuel.value as number));
    return this.#decode(hook, this.#state.io.output);
  }

  async #deferred(hook: HookName, input: string): Promise<unknown> {
    // A direct call never spans a microtask, so by now any running one has finished.
    await this.#ensureRunner();
    return this.#callDirect(hook, input);
  }

  async #callExtism(hook: HookName, input: string): Promise<unknown> {
    if (this.#busy) await new Promise<void>((resolve) => this.#waiters.push(resolve));
    else this.#busy = true;
    try {
      if (this.#disposed) throw new BextError('BEXT_ERR_SHUTDOWN', `plugin "${this.#name}" was disposed`);
      const runner = this.#runner ?? (await this.#ensureRunner());
      const bytes = this.#begin(runner, input);
      const t0 = performance.now();
      let out: PluginOutput | null;
      try {
        out = await runner.plugin.call(hook, bytes);
      } catch (e) {
        throw this.#trapped(runner, hook, e, t0);
      }
      this.#account(t0, this.#fuelLimit - (runner.fuel.value as number));
      const io = this.#state.io;
      if (io.output === null && out !== null) {
        const size = (out as unknown as DataView).byteLength;
        if (size > MAX_OUTPUT_BYTES) {
          this.#stats.errors++;
          throw limitError(`plugin "${this.#name}" returned ${size} bytes from ${hook}; the limit is ${MAX_OUTPUT_BYTES}`);
        }
        io.output = out.text();
      }
      return this.#decode(hook, io.output);
    } finally {
      // Hand the lock straight to the next waiter: Extism keeps per-call state
      // (input, output blocks) that a second call would reset mid-way.
      const next = this.#waiters.shift();
      if (next) next();
      else this.#busy = false;
    }
  }

  #decode(hook: HookName, output: string | null): unknown {
    const io = this.#state.io;
    if (io.error !== null) {
      this.#stats.errors++;
      throw new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "${this.#name}" failed in ${hook}: ${io.error.slice(0, 500)}`);
    }
    if (output === null || output.length === 0) return undefined;
    try {
      return JSON.parse(output);
    } catch (e) {
      this.#stats.errors++;
      throw new BextError('BEXT_ERR_PLUGIN_BAD_DECISION', `plugin "${this.#name}" returned output from ${hook} that is not JSON: ${JSON.stringify(output.slice(0, 80))}`, { cause: e });
    }
  }

  #account(t0: number, fuel: number): void {
    const s = this.#stats;
    s.calls++;
    s.timeUs += (performance.now() - t0) * 1000;
    s.fuelLast = fuel;
    s.fuelTotal += fuel;
  }

  /** Accounts a call that threw and turns the throw into a BextError. */
  #trapped(runner: Runner, hook: HookName, e: unknown, t0: number): BextError {
    const left = runner.fuel.value as number;
    this.#account(t0, this.#fuelLimit - Math.max(0, left));
    this.#stats.errors++;
    return this.#failure(runner, hook, e, left);
  }

  /** Classifies a throw, replacing the instance unless the guest just reported an error. */
  #failure(runner: Runner, hook: HookName, e: unknown, fuelLeft: number): BextError {
    const name = this.#name;
    const msg = e instanceof Error ? e.message : String(e);
    const guestError = /^Plugin-originated error: /.exec(msg);
    if (guestError && !(e instanceof WebAssembly.RuntimeError)) {
      return new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "${name}" failed in ${hook}: ${msg.slice(guestError[0].length).slice(0, 500)}`, { cause: e });
    }
    const growFailed = runner.growFailed.value === 1;
    this.#replace();
    if (fuelLeft < 0) {
      return limitError(`plugin "${name}" ran out of fuel (${this.#fuelLimit} units) in ${hook}`, e);
    }
    if (e instanceof HostLimitError) return limitError(`plugin "${name}" ${e.message} in ${hook}`, e);
    if (e instanceof GuestAbort) return new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "${name}" aborted in ${hook}: ${e.message}`, { cause: e });
    if (e instanceof RangeError && /call stack/i.test(msg)) {
      return limitError(`plugin "${name}" overflowed its stack in ${hook}`, e);
    }
    if (e instanceof WebAssembly.RuntimeError) {
      if (growFailed) {
        return limitError(`plugin "${name}" hit its memory limit (${this.#maxBytes / (1 << 20)} MiB) in ${hook}`, e);
      }
      return new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "${name}" trapped in ${hook}: ${msg}`, { cause: e });
    }
    return new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "${name}" failed in ${hook}: ${msg}`, { cause: e });
  }

  stats(): WasmStats {
    const mem = this.#runner?.memory;
    this.#stats.memoryBytes = mem ? mem.buffer.byteLength : 0;
    return this.#stats;
  }

  async restart(): Promise<void> {
    if (this.#disposed) return;
    if (this.#busy) await new Promise<void>((resolve) => this.#waiters.push(resolve));
    else this.#busy = true;
    try {
      this.#replace();
      await this.#ensureRunner();
    } finally {
      const next = this.#waiters.shift();
      if (next) next();
      else this.#busy = false;
    }
  }

  async dispose(): Promise<void> {
    this.#disposed = true;
    const r = this.#runner;
    this.#runner = null;
    for (const w of this.#waiters.splice(0)) w();
    if (r) await r.plugin.close();
  }
}

/** onRoute/onRender results are ResponseData; the PDK's `respond()` adds an action the kernel does not expect there. */
function asResponse(d: unknown, plugin: string, hook: string): unknown {
  if (d === null || typeof d !== 'object') {
    throw new BextError('BEXT_ERR_PLUGIN_BAD_DECISION', `plugin "${plugin}" returned no response from ${hook}`);
  }
  const r = d as Record<string, unknown>;
  if (r.action === 'respond') {
    const { action: _action, ...rest } = r;
    return rest;
  }
  return d;
}

function extismLogger(state: HostState): Console {
  const forward = (level: LogLevel) => (...args: unknown[]) => {
    try {
      state.host.log(level, `extism: ${args.map(String).join(' ')}`);
    } catch {
      // a failing logger must not turn a guest call into a host crash
    }
  };
  return { trace: forward('trace'), debug: forward('debug'), info: forward('info'), warn: forward('warn'), error: forward('error'), log: forward('info') } as unknown as Console;
}

const wasm: SandboxHost = {
  kind: 'wasm',
  available() {
    if (typeof WebAssembly !== 'object' || typeof WebAssembly.Global !== 'function') return { ok: false, reason: 'this Node has no WebAssembly' };
    return { ok: true };
  },
  async load(spec: LoadSpec): Promise<SandboxInstance> {
    const name = spec.manifest.name;
    let original: Uint8Array;
    try {
      original = await readFile(spec.entryPath);
    } catch (e) {
      throw new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "${name}": cannot read ${spec.entryPath}: ${(e as Error).message}`, {
        hint: 'build it with `bext plugin build` (AssemblyScript) or point "entry" at the .wasm file',
        cause: e,
      });
    }
    let module: WebAssembly.Module;
    let memoryExport: string | null;
    try {
      const m = instrumentCached(original);
      memoryExport = m.memoryExport;
      const bytes = withLimits(m, { fuel: spec.limits.fuel, maxPages: Math.max(1, Math.floor(spec.limits.memoryMb * 16)) });
      module = await WebAssembly.compile(bytes as Uint8Array<ArrayBuffer>);
    } catch (e) {
      const limit = e instanceof WasmFormatError && /memory pages/.test(e.message);
      throw new BextError(limit ? 'BEXT_ERR_SANDBOX_LIMIT' : 'BEXT_ERR_PLUGIN_LOAD', `plugin "${name}": ${spec.entryPath}: ${(e as Error).message}`, {
        hint: limit ? 'raise limits.memoryMb in bext-plugin.json' : 'the entry must be a valid WebAssembly module (MVP, sign extension, bulk memory, SIMD)',
        cause: e,
      });
    }
    const exported = new Set(WebAssembly.Module.exports(module).filter((x) => x.kind === 'function').map((x) => x.name));
    const declared = Object.keys(spec.manifest.hooks ?? {}) as HookName[];
    if (spec.manifest.routes?.length && !declared.includes('onRoute')) declared.push('onRoute');
    const missing = declared.filter((h) => !exported.has(h));
    if (missing.length) {
      throw new BextError('BEXT_ERR_PLUGIN_HOOK_MISSING', `plugin "${name}" declares ${missing.join(', ')} but ${spec.entryPath} does not export ${missing.length > 1 ? 'them' : 'it'}`, {
        hint: `export function ${missing[0]}(): i32 { ... } from assembly/index.ts`,
      });
    }
    const inst = new WasmInstance(spec, module, memoryExport, exported);
    try {
      await inst.start();
    } catch (e) {
      const fuelOut = /unreachable/.test((e as Error).message);
      throw new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "${name}": cannot instantiate ${spec.entryPath}: ${(e as Error).message}`, {
        hint: fuelOut ? 'its start function trapped or ran out of fuel (limits.fuel)' : 'WASM plugins may import only extism:host/env, extism:host/user (bext_*) and env.abort/seed/trace',
        cause: e,
      });
    }
    return inst;
  },
};

export default wasm;
