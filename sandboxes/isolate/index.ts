/**
 * The `isolate` sandbox kind: each plugin instance runs in its own V8
 * isolate (isolated-vm) with a heap limit (`limits.memoryMb`, at least 8 MiB)
 * and a per-call timeout (`limits.timeoutMs`). The guest is an ES module
 * exporting hook functions; host functions reach it only as ivm.Callback
 * wrappers that take and return strings, so no host object or Reference is
 * ever visible inside the isolate.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, resolve as resolvePath, sep } from 'node:path';
import { pathToFileURL } from 'node:url';
import type IvmNs from 'isolated-vm';
import { BextError, HOOK_NAMES, type HookName, type LoadSpec, type SandboxHost } from '../../plugin-api/index.js';
import { GUEST_PRELUDE, JsInstance, ModuleSources, VmFault, maxOutputChars, type Engine, type EngineVm, type VmEvents } from '../quickjs/bridge.js';

type Ivm = typeof IvmNs;

let ivm: Ivm | undefined;
let loadError: Error | undefined;
try {
  ivm = createRequire(import.meta.url)('isolated-vm') as Ivm;
} catch (e) {
  loadError = e as Error;
}

class IsolateVm implements EngineVm {
  readonly hooks: HookName[] = [];
  readonly stale = false;
  readonly #isolate: IvmNs.Isolate;
  readonly #fns = new Map<HookName, IvmNs.Reference<(json: string) => string>>();
  #settleFn: IvmNs.Reference<(id: number, ok: boolean, json: string) => void> | null = null;
  readonly #timeoutMs: number;
  readonly #runOpts: { timeout: number };

  constructor(lib: Ivm, spec: LoadSpec, sources: ModuleSources, events: VmEvents) {
    this.#timeoutMs = spec.limits.timeoutMs;
    this.#runOpts = { timeout: Math.max(1, Math.ceil(spec.limits.timeoutMs)) };
    this.#isolate = new lib.Isolate({ memoryLimit: Math.max(8, Math.ceil(spec.limits.memoryMb)) });
    try {
      this.#boot(lib, spec, sources, events);
    } catch (e) {
      this.dispose();
      if (e instanceof BextError) throw e;
      throw new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "${spec.manifest.name}": ${spec.entryPath} failed to load: ${this.#why(e)}`, { cause: e });
    }
  }

  #boot(lib: Ivm, spec: LoadSpec, sources: ModuleSources, events: VmEvents): void {
    const iso = this.#isolate;
    const context = iso.createContextSync();
    const prelude = context.evalSync(GUEST_PRELUDE, { reference: true, filename: 'bext:prelude.js' }) as IvmNs.Reference<unknown>;
    const bridge = prelude.applySync(undefined, [
      new lib.Callback((op: string, id: number, json: string) => events.hostCall(String(op), Number(id), String(json))),
      new lib.Callback((op: string, json: string) => events.hostSync(String(op), String(json))),
      new lib.Callback((id: number, out: string) => events.done(Number(id), String(out))),
      maxOutputChars(spec),
    ], { result: { reference: true }, timeout: this.#runOpts.timeout }) as IvmNs.Reference<Record<string, unknown>>;
    prelude.release();
    const link = bridge.getSync('link', { reference: true }) as IvmNs.Reference<(ns: unknown, names: string) => unknown>;
    this.#settleFn = bridge.getSync('settle', { reference: true }) as IvmNs.Reference<(id: number, ok: boolean, json: string) => void>;
    bridge.release();

    const compile = (path: string): IvmNs.Module => iso.compileModuleSync(sources.source(path), { filename: pathToFileURL(path).href });
    const paths = new WeakMap<IvmNs.Module, string>();
    const entry = compile(spec.entryPath);
    paths.set(entry, spec.entryPath);
    entry.instantiateSync(context, (specifier, referrer) => {
      const from = paths.get(referrer) ?? spec.entryPath;
      const r = sources.resolve(from, specifier, (b, rel) => resolvePath(dirname(b), rel), sep);
      if (typeof r !== 'string') throw r;
      const m = compile(r);
      paths.set(m, r);
      return m;
    });
    entry.evaluateSync({ timeout: this.#runOpts.timeout });
    const table = link.applySync(undefined, [entry.namespace.derefInto(), HOOK_NAMES.join(',')], {
      result: { reference: true }, timeout: this.#runOpts.timeout,
    }) as IvmNs.Reference<Record<string, unknown>>;
    link.release();
    for (const hook of HOOK_NAMES) {
      const fn = table.getSync(hook, { reference: true }) as IvmNs.Reference<(json: string) => string>;
      if (fn.typeof === 'function') {
        this.#fns.set(hook, fn);
        this.hooks.push(hook);
      } else fn.release();
    }
    table.release();
  }

  #why(e: unknown): string {
    return e instanceof Error ? e.message : String(e);
  }

  /** Classifies what a call into the isolate threw: every case leaves the isolate unusable for us. */
  #fault(e: unknown): VmFault {
    const msg = this.#why(e);
    if (this.#isolate.isDisposed) return new VmFault('BEXT_ERR_SANDBOX_LIMIT', `hit its memory limit (${msg})`);
    if (/timed out/i.test(msg)) return new VmFault('BEXT_ERR_PLUGIN_TIMEOUT', `ran past its ${this.#timeoutMs} ms deadline and was stopped`);
    return new VmFault('BEXT_ERR_SANDBOX_LIMIT', `the isolate failed (${msg})`);
  }

  invoke(hook: HookName, json: string): string {
    try {
      return this.#fns.get(hook)!.applySync(undefined, [json], this.#runOpts);
    } catch (e) {
      throw this.#fault(e);
    }
  }

  drain(): void {
    // V8 runs the isolate's microtasks at the end of every applySync, under its timeout.
  }

  settle(id: number, ok: boolean, json: string): void {
    try {
      this.#settleFn!.applySync(undefined, [id, ok, json], this.#runOpts);
    } catch (e) {
      throw this.#fault(e);
    }
  }

  memoryBytes(): number {
    const h = this.#isolate.getHeapStatisticsSync();
    return h.used_heap_size + h.externally_allocated_size;
  }

  dispose(): void {
    if (!this.#isolate.isDisposed) this.#isolate.dispose();
  }
}

const engine: Engine = {
  kind: 'isolate',
  create(spec, sources, events) {
    if (!ivm) throw new BextError('BEXT_ERR_SANDBOX_UNAVAILABLE', `isolated-vm is not available: ${loadError?.message}`);
    return new IsolateVm(ivm, spec, sources, events);
  },
};

const isolate: SandboxHost = {
  kind: 'isolate',
  available() {
    if (ivm) return { ok: true };
    return { ok: false, reason: `isolated-vm failed to load (${loadError?.message.split('\n')[0]}); run \`npm rebuild isolated-vm\`` };
  },
  async load(spec) {
    const sources = new ModuleSources(spec.dir, spec.entryPath, (p) => readFileSync(p, 'utf8'));
    return JsInstance.load(engine, spec, sources);
  },
};

export default isolate;
