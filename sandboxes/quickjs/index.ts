/**
 * The `quickjs` sandbox kind: each plugin instance (each tenant) gets its own
 * QuickJS runtime and context, all living in one shared WebAssembly module so
 * an idle instance costs tens of kilobytes. Limits per instance: a memory
 * limit (`limits.memoryMb`), a stack limit, and an interrupt handler that
 * stops guest code at the per-call deadline (`limits.timeoutMs`).
 *
 * The guest is an ES module exporting hook functions; it sees only the
 * `bext_*` globals (see sdk/globals.d.ts) and plain JSON data.
 */
import { readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { dirname, resolve as resolvePath, sep } from 'node:path';
import { createRequire } from 'node:module';
import {
  newQuickJSWASMModuleFromVariant, newVariant, RELEASE_SYNC,
  type QuickJSContext, type QuickJSHandle, type QuickJSRuntime, type QuickJSWASMModule,
} from 'quickjs-emscripten';
import { BextError, HOOK_NAMES, type HookName, type LoadSpec, type SandboxHost } from '../../plugin-api/index.js';
import { GUEST_PRELUDE, JsInstance, ModuleSources, VmFault, maxOutputChars, type Engine, type EngineVm, type VmEvents } from './bridge.js';

/**
 * QuickJS's own stack limit. Guest recursion is measured on the WebAssembly
 * shadow stack, which grows more slowly than the native stack Node runs the
 * module on; this value keeps ordinary JS recursion inside the native stack.
 * C-level recursion that does not touch the shadow stack (JSON.stringify of a
 * very deep value, parsing very deep source) can still exhaust the native
 * stack: that is caught below and retires the whole WebAssembly module.
 */
const STACK_BYTES = 256 * 1024;

/**
 * How often (in calls, and in milliseconds of running guest code) an
 * instance's real memory use is measured. QuickJS's own malloc limit cannot
 * be trusted here: built for WebAssembly it counts each allocation as a few
 * bytes (no malloc_usable_size), so it only stops single huge allocations.
 * The real use (JS_ComputeMemoryUsage) is measured whenever the shared
 * linear memory grew during a call, every MEMORY_CHECK_CALLS calls, and every
 * MEMORY_CHECK_MS while guest code runs.
 */
const MEMORY_CHECK_CALLS = 1000;
const MEMORY_CHECK_MS = 20;

/**
 * A WebAssembly module shared by many runtimes. Retired when something
 * escaped QuickJS's own checks (a native stack overflow or a trap), since
 * its heap may then be inconsistent: instances on it move to a fresh module
 * at their next idle call, and the old one is never touched again.
 */
class WasmHome {
  retired = false;
  constructor(readonly mod: QuickJSWASMModule) {}
}

let home: WasmHome | null = null;
let homeLoading: Promise<WasmHome> | null = null;
let tieringSet = false;
let compiled: Promise<WebAssembly.Module> | null = null;

/** The VM whose guest code is running right now (innermost), which linear-memory growth is charged to. */
let running: QuickVm | null = null;

/**
 * Instantiates the QuickJS module with its heap-growth import wrapped: the
 * shared linear memory only grows on behalf of a runtime still under its
 * memory limit, so one tenant's allocation bomb cannot balloon the process.
 * (The import is found by its body, since the glue is minified; without it
 * the periodic checks below still apply.)
 */
function instantiateWasm(imports: Record<string, Record<string, unknown>>, done: (i: WebAssembly.Instance) => void): Record<string, never> {
  const env = imports.a;
  if (env) {
    for (const [k, fn] of Object.entries(env)) {
      if (typeof fn === 'function' && /2147483648/.test(String(fn)) && /\.grow\(/.test(String(fn))) {
        const grow = fn as (bytes: number) => number;
        env[k] = (bytes: number) => (running && !running.mayGrow(bytes >>> 0) ? 0 : grow(bytes));
        break;
      }
    }
  }
  compiled ??= WebAssembly.compile(readFileSync(createRequire(import.meta.url).resolve('@jitl/quickjs-wasmfile-release-sync/wasm')));
  compiled.then((m) => WebAssembly.instantiate(m, imports as WebAssembly.Imports)).then(done, (e: unknown) => {
    compiled = null;
    instantiateFailed?.(e);
  });
  return {};
}

/** Rejects the module being loaded: emscripten has no error path for an asynchronous instantiateWasm. */
let instantiateFailed: ((e: unknown) => void) | null = null;

function currentHome(): WasmHome | Promise<WasmHome> {
  if (home && !home.retired) return home;
  if (!tieringSet) {
    // QuickJS's interpreter loop is one huge WebAssembly function that V8's
    // dynamic tiering leaves in the baseline compiler; compiling it optimised
    // up front makes every hook call about 40% faster. Process-wide, and it
    // only changes how later WebAssembly is compiled, not what it does.
    setFlagsFromString('--no-liftoff');
    tieringSet = true;
  }
  homeLoading ??= Promise.race([
    newQuickJSWASMModuleFromVariant(newVariant(RELEASE_SYNC, { emscriptenModule: { instantiateWasm } as never })),
    new Promise<never>((_, reject) => (instantiateFailed = reject)),
  ]).then(
    (mod) => {
      homeLoading = null;
      home = new WasmHome(mod);
      return home;
    },
    (e: unknown) => {
      homeLoading = null;
      throw new BextError('BEXT_ERR_SANDBOX_UNAVAILABLE', `the QuickJS WebAssembly module failed to load: ${(e as Error).message}`, { cause: e });
    },
  );
  return homeLoading;
}

function retire(h: WasmHome): void {
  h.retired = true;
  if (home === h) home = null;
}

/** Errors that come from the host engine rather than from QuickJS: the module's state can no longer be trusted. */
function isNativeEscape(e: unknown): boolean {
  return e instanceof RangeError || e instanceof WebAssembly.RuntimeError || (e instanceof Error && e.message.startsWith('Aborted('));
}

const utf8 = new TextEncoder();

const HOOK_INDEX = Object.fromEntries(HOOK_NAMES.map((h, i) => [h, i])) as Record<HookName, number>;

/** The parts of quickjs-emscripten 0.32 the hot path calls directly, skipping per-call handle objects. */
interface RawFfi {
  QTS_NewString(ctx: number, str: number): number;
  QTS_Call(ctx: number, fn: number, thisVal: number, argc: number, argv: number): number;
  QTS_ResolveException(ctx: number, value: number): number;
  QTS_GetString(ctx: number, value: number): number;
  QTS_FreeCString(ctx: number, str: number): void;
  QTS_FreeValuePointer(ctx: number, value: number): void;
}
interface RawModule {
  _malloc(n: number): number;
  _free(p: number): void;
  UTF8ToString(p: number): string;
  /** Replaced by emscripten when linear memory grows (0.32 exports no HEAP32). */
  HEAPU8: Uint8Array;
}
interface RawContext {
  ffi: RawFfi;
  module: RawModule;
  ctx: { value: number };
  memory: { heapValueHandle(ptr: number): QuickJSHandle };
}

class QuickVm implements EngineVm {
  readonly hooks: HookName[] = [];
  readonly #home: WasmHome;
  readonly #rt: QuickJSRuntime;
  readonly #ctx: QuickJSContext;
  readonly #fns: QuickJSHandle[] = [];
  #settleFn: QuickJSHandle | null = null;
  readonly #timeoutMs: number;
  #deadline = 0;
  #interrupted = false;
  readonly #memLimit: number;
  #memExceeded = false;
  #lastHeapBytes = 0;
  #lastMemCheck = 0;
  #callsSinceCheck = 0;
  /** Real memory use at the last measurement, and the linear memory size when guest code was last entered. */
  #lastUsage = 0;
  #heapAtEntry = 0;
  #poisoned = false;
  #disposed = false;
  readonly #raw: RawContext;
  readonly #argv: number;
  /** An Int32 view of linear memory, made again when growth replaces the buffer. */
  #heap32: Int32Array | null = null;
  readonly #undefinedPtr: number;
  /** Function pointer per hook, by index in HOOK_NAMES. */
  readonly #fnPtrs: number[] = [];

  constructor(h: WasmHome, spec: LoadSpec, sources: ModuleSources, events: VmEvents) {
    this.#home = h;
    this.#timeoutMs = spec.limits.timeoutMs;
    const rt = (this.#rt = h.mod.newRuntime());
    this.#memLimit = Math.floor(spec.limits.memoryMb * 1024 * 1024);
    rt.setMemoryLimit(this.#memLimit);
    rt.setMaxStackSize(STACK_BYTES);
    rt.setInterruptHandler(() => {
      if (this.#deadline === 0) return false;
      if (this.#memExceeded) return true;
      const now = performance.now();
      if (now > this.#deadline) {
        this.#interrupted = true;
        return true;
      }
      if (now - this.#lastMemCheck > MEMORY_CHECK_MS || this.#heapBytes() !== this.#lastHeapBytes) {
        this.#lastMemCheck = now;
        this.#lastHeapBytes = this.#heapBytes();
        if (this.#overLimit()) return true;
      }
      return false;
    });
    rt.setModuleLoader(
      (name) => {
        try {
          return sources.source(name);
        } catch (e) {
          return { error: new Error(`cannot read ${name}: ${(e as Error).message}`) };
        }
      },
      (base, requested) => {
        const r = sources.resolve(base, requested, (b, rel) => resolvePath(dirname(b), rel), sep);
        return typeof r === 'string' ? r : { error: r };
      },
    );
    this.#ctx = rt.newContext();
    this.#raw = this.#ctx as unknown as RawContext;
    this.#argv = this.#raw.module._malloc(4);
    this.#undefinedPtr = this.#ctx.undefined.value as unknown as number;
    try {
      this.#boot(spec, sources, events);
    } catch (e) {
      try {
        this.dispose();
      } catch {
        // dispose() already retired the module; the load error is what matters.
      }
      if (e instanceof VmFault) {
        throw new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "${spec.manifest.name}": ${e.message} while loading ${spec.entryPath}`);
      }
      throw e;
    }
  }

  #boot(spec: LoadSpec, sources: ModuleSources, events: VmEvents): void {
    const ctx = this.#ctx;
    const name = spec.manifest.name;
    const hostCall = ctx.newFunction('hostCall', (op, id, json) => {
      events.hostCall(ctx.getString(op), ctx.getNumber(id), ctx.getString(json));
    });
    const hostSync = ctx.newFunction('hostSync', (op, json) => ctx.newString(events.hostSync(ctx.getString(op), ctx.getString(json))));
    const hostDone = ctx.newFunction('hostDone', (id, out) => {
      // An async hook that ran out of memory rejects with whatever QuickJS managed to describe.
      events.done(ctx.getNumber(id), this.#memExceeded ? `#${this.#memoryFault().message}` : ctx.getString(out));
    });
    const maxOut = ctx.newNumber(maxOutputChars(spec));
    let bridge: QuickJSHandle | undefined;
    try {
      // Stripped: the prelude's source and line tables would cost every tenant ~6 KB.
      const prelude = this.#unwrap(ctx.evalCode(GUEST_PRELUDE, 'bext:prelude.js', { strip: true }), 'the prelude');
      try {
        bridge = this.#unwrap(ctx.callFunction(prelude, ctx.undefined, hostCall, hostSync, hostDone, maxOut), 'the prelude');
      } finally {
        prelude.dispose();
      }
    } finally {
      hostCall.dispose();
      hostSync.dispose();
      hostDone.dispose();
      maxOut.dispose();
    }
    let link: QuickJSHandle | undefined;
    try {
      link = ctx.getProp(bridge, 'link');
      this.#settleFn = ctx.getProp(bridge, 'settle');
    } finally {
      bridge.dispose();
    }
    let table: QuickJSHandle;
    try {
      const ns = this.#evalModule(spec, sources, name);
      const names = ctx.newString(HOOK_NAMES.join(','));
      try {
        table = this.#unwrap(ctx.callFunction(link, ctx.undefined, ns, names), 'linking the hooks');
      } finally {
        names.dispose();
        ns.dispose();
      }
    } finally {
      link.dispose();
    }
    HOOK_NAMES.forEach((hook, i) => {
      const fn = ctx.getProp(table, hook);
      if (ctx.typeof(fn) === 'function') {
        this.#fns.push(fn);
        this.#fnPtrs[i] = fn.value as unknown as number;
        this.hooks.push(hook);
      } else fn.dispose();
    });
    table.dispose();
    this.#lastUsage = this.memoryBytes();
  }

  #evalModule(spec: LoadSpec, sources: ModuleSources, name: string): QuickJSHandle {
    const ctx = this.#ctx;
    let code: string;
    try {
      code = sources.source(spec.entryPath);
    } catch (e) {
      throw new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "${name}": cannot read ${spec.entryPath}: ${(e as Error).message}`, { cause: e });
    }
    this.#deadline = performance.now() + this.#timeoutMs;
    const r = this.#guard(() => this.#enter(() => ctx.evalCode(code, spec.entryPath, { type: 'module' })));
    if (r.error) {
      const why = this.#describe(r.error);
      r.error.dispose();
      if (this.#interrupted) throw new VmFault('BEXT_ERR_PLUGIN_TIMEOUT', `module evaluation ran past ${this.#timeoutMs} ms`);
      throw new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "${name}": ${spec.entryPath} failed to evaluate: ${why}`);
    }
    // A module with top-level await evaluates to a promise of its namespace.
    const state = ctx.getPromiseState(r.value);
    if (state.type === 'fulfilled' && state.notAPromise) return r.value;
    if (state.type === 'fulfilled') state.value.dispose();
    else if (state.type === 'rejected') state.error.dispose();
    this.drain();
    const settled = ctx.getPromiseState(r.value);
    r.value.dispose();
    if (settled.type === 'fulfilled') return settled.value;
    if (settled.type === 'rejected') {
      const why = this.#describe(settled.error);
      settled.error.dispose();
      throw new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "${name}": ${spec.entryPath} failed to evaluate: ${why}`);
    }
    throw new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "${name}": ${spec.entryPath} awaits something at top level that never settles`);
  }

  #describe(h: QuickJSHandle): string {
    try {
      const d = this.#ctx.dump(h) as { name?: string; message?: string } | string;
      return typeof d === 'object' && d !== null ? `${d.name ?? 'Error'}: ${d.message ?? ''}` : String(d);
    } catch {
      return 'an unprintable error';
    }
  }

  #unwrap(r: ReturnType<QuickJSContext['evalCode']>, what: string): QuickJSHandle {
    if (r.error) {
      const why = this.#describe(r.error);
      r.error.dispose();
      throw new VmFault('BEXT_ERR_SANDBOX_LIMIT', `${what} failed: ${why}`);
    }
    return r.value;
  }

  get stale(): boolean {
    return this.#home.retired;
  }

  /** Runs an entry into the module; an escape from QuickJS retires the module and poisons this VM. */
  #guard<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      throw this.#escape(e);
    }
  }

  #escape(e: unknown): unknown {
    if (!isNativeEscape(e)) return e;
    this.#poisoned = true;
    retire(this.#home);
    return new VmFault('BEXT_ERR_SANDBOX_LIMIT', `exhausted the native stack or trapped (${(e as Error).message.split('\n')[0]})`);
  }

  /**
   * The call argument as a QuickJS string, made before guest code is entered:
   * the heap-growth hook refuses growth only while a guest runs, so this
   * allocation never sees a refused malloc (whose NULL would be written through).
   */
  #newArg(json: string): number {
    const { ffi, module: m, ctx } = this.#raw;
    // At most 3 bytes per UTF-16 unit; V8's native encoder beats emscripten's JS loop.
    const max = json.length * 3 + 1;
    const buf = m._malloc(max);
    if (buf === 0) throw new VmFault('BEXT_ERR_SANDBOX_LIMIT', 'the shared QuickJS heap is exhausted');
    const heap = m.HEAPU8;
    const written = utf8.encodeInto(json, heap.subarray(buf, buf + max - 1)).written;
    heap[buf + written] = 0;
    const arg = ffi.QTS_NewString(ctx.value, buf);
    m._free(buf);
    return arg;
  }

  /** fn(arg) → string, straight through the FFI, skipping per-call handle objects. Frees `arg`. */
  #callRaw(fnPtr: number, arg: number): string {
    const { ffi, module: m, ctx } = this.#raw;
    const c = ctx.value;
    let heap32 = this.#heap32;
    if (heap32 === null || heap32.buffer !== m.HEAPU8.buffer) heap32 = this.#heap32 = new Int32Array(m.HEAPU8.buffer);
    heap32[this.#argv >> 2] = arg;
    const res = ffi.QTS_Call(c, fnPtr, this.#undefinedPtr, 1, this.#argv);
    ffi.QTS_FreeValuePointer(c, arg);
    const err = ffi.QTS_ResolveException(c, res);
    if (err) {
      ffi.QTS_FreeValuePointer(c, res);
      throw this.#failure(this.#raw.memory.heapValueHandle(err));
    }
    const cs = ffi.QTS_GetString(c, res);
    ffi.QTS_FreeValuePointer(c, res);
    if (cs === 0) throw new VmFault('BEXT_ERR_SANDBOX_LIMIT', 'the answer could not be copied out (out of memory)');
    const out = m.UTF8ToString(cs);
    ffi.QTS_FreeCString(c, cs);
    return out;
  }

  #heapBytes(): number {
    return this.#raw.module.HEAPU8.buffer.byteLength;
  }

  /** Measures the runtime's real memory use; sets the flag that turns the interrupt into a limit error. */
  #overLimit(): boolean {
    this.#callsSinceCheck = 0;
    try {
      this.#lastUsage = this.memoryBytes();
    } catch {
      // Measuring allocates inside the runtime; failing to is itself a sign of exhaustion.
      // (This runs inside the interrupt handler, where an exception must not escape.)
      this.#lastUsage = Infinity;
    }
    if (this.#lastUsage <= this.#memLimit) return false;
    this.#memExceeded = true;
    return true;
  }

  /**
   * Called from inside malloc when the linear memory must grow to `bytes`:
   * nothing here may call back into the module. Charges the growth since this
   * VM was entered to it, on top of its last measured use.
   */
  mayGrow(bytes: number): boolean {
    if (this.#lastUsage + (bytes - this.#heapAtEntry) <= this.#memLimit) return true;
    this.#memExceeded = true;
    return false;
  }

  /** Runs guest code as the running VM (nesting-safe). */
  #enter<T>(fn: () => T): T {
    const outer = running;
    running = this;
    this.#heapAtEntry = this.#heapBytes();
    try {
      return fn();
    } finally {
      running = outer;
    }
  }

  #memoryFault(): VmFault {
    return new VmFault('BEXT_ERR_SANDBOX_LIMIT', `used more than its ${Math.round(this.#memLimit / 1048576)} MiB memory limit`);
  }

  #failure(err: QuickJSHandle): VmFault {
    const why = this.#describe(err);
    err.dispose();
    if (this.#memExceeded) return this.#memoryFault();
    if (this.#interrupted) return new VmFault('BEXT_ERR_PLUGIN_TIMEOUT', `ran past its ${this.#timeoutMs} ms deadline and was interrupted`);
    return new VmFault('BEXT_ERR_SANDBOX_LIMIT', `hit a limit (${why})`);
  }

  invoke(hook: HookName, json: string): string {
    const heapBefore = this.#heapBytes();
    this.#deadline = performance.now() + this.#timeoutMs;
    let out: string;
    try {
      const arg = this.#newArg(json);
      out = this.#enter(() => this.#callRaw(this.#fnPtrs[HOOK_INDEX[hook]]!, arg));
    } catch (e) {
      throw this.#escape(e);
    }
    if (this.#memExceeded) throw this.#memoryFault();
    if ((this.#heapBytes() !== heapBefore || ++this.#callsSinceCheck >= MEMORY_CHECK_CALLS) && this.#overLimit()) {
      throw this.#memoryFault();
    }
    // A sync hook may leave continuations queued (a promise it did not return).
    if (out.charCodeAt(0) !== 126 /* ~ */ && this.#rt.hasPendingJob()) this.drain();
    this.#deadline = 0;
    return out;
  }

  drain(): void {
    const heapBefore = this.#heapBytes();
    this.#deadline = performance.now() + this.#timeoutMs;
    this.#guard(() => this.#enter(() => {
      const r = this.#rt.executePendingJobs(-1);
      if (r.error) throw this.#failure(r.error);
    }));
    this.#deadline = 0;
    if (this.#memExceeded || (this.#heapBytes() !== heapBefore && this.#overLimit())) throw this.#memoryFault();
  }

  settle(id: number, ok: boolean, json: string): void {
    const ctx = this.#ctx;
    this.#deadline = performance.now() + this.#timeoutMs;
    this.#guard(() => {
      // Arguments are made before entering, for the same reason as in #newArg.
      const idH = ctx.newNumber(id);
      const jsonH = ctx.newString(json);
      try {
        this.#enter(() => {
          const r = ctx.callFunction(this.#settleFn!, ctx.undefined, idH, ok ? ctx.true : ctx.false, jsonH);
          if (r.error) throw this.#failure(r.error);
          r.value.dispose();
        });
      } finally {
        idH.dispose();
        jsonH.dispose();
      }
    });
    this.drain();
  }

  /** Bytes the runtime really holds (JS_ComputeMemoryUsage walks its objects; NaN if it cannot allocate the answer). */
  memoryBytes(): number {
    const h = this.#rt.computeMemoryUsage();
    try {
      const v = this.#ctx.getProp(h, 'memory_used_size');
      const n = this.#ctx.typeof(v) === 'number' ? this.#ctx.getNumber(v) : NaN;
      v.dispose();
      return n;
    } finally {
      h.dispose();
    }
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    // A poisoned runtime (or any runtime on a retired module) is left as it is:
    // freeing it would walk state that may be half-written.
    if (this.#poisoned || this.#home.retired) return;
    try {
      this.#raw.module._free(this.#argv);
      for (const fn of this.#fns) fn.dispose();
      this.#settleFn?.dispose();
      this.#ctx.dispose();
      this.#rt.dispose();
    } catch (e) {
      retire(this.#home);
      throw e;
    }
  }
}

const engine: Engine = {
  kind: 'quickjs',
  create(spec, sources, events) {
    const h = currentHome();
    if (h instanceof WasmHome) return new QuickVm(h, spec, sources, events);
    return h.then((ready) => new QuickVm(ready, spec, sources, events));
  },
};

const quickjs: SandboxHost = {
  kind: 'quickjs',
  available: () => ({ ok: true }),
  async load(spec) {
    const sources = new ModuleSources(spec.dir, spec.entryPath, (p) => readFileSync(p, 'utf8'));
    return JsInstance.load(engine, spec, sources);
  },
};

export default quickjs;
