/**
 * A loaded plugin as the kernel tracks it: its instance, limits, counters
 * and failure state. `call` is the one guarded way into a plugin.
 */
import {
  BextError, DEFAULT_LIMITS,
  type HookName, type Manifest, type PluginStatus, type SandboxInstance, type SandboxKind,
} from '../plugin-api/index.js';
import type { HookTiming } from '../plugin-api/index.js';
import type { Logger } from './log.js';

interface Traced {
  timings?: HookTiming[] | null;
  t0?: number;
}
import { newHookCounters, type HookCounters } from './metrics.js';

/** Returned in place of a decision when a hook failed or was skipped. */
export class HookFailure {
  constructor(
    readonly plugin: LoadedPlugin,
    readonly hook: HookName,
    readonly error: BextError,
  ) {}

  /**
   * The request was at fault (its body is over the limit): answered with the
   * error whatever the plugin's failMode, and not held against the plugin.
   */
  get clientFault(): boolean {
    return this.error.code === 'BEXT_ERR_BODY_TOO_LARGE';
  }
}

export function isFailure(x: unknown): x is HookFailure {
  return x instanceof HookFailure;
}

const MAX_BACKOFF_MS = 60_000;
const BASE_BACKOFF_MS = 1_000;

export class LoadedPlugin {
  /** The manifest name, or `name@group` for an instance of one route group or app. */
  readonly name: string;
  readonly version: string;
  readonly sandbox: SandboxKind;
  readonly failMode: 'open' | 'closed';
  readonly timeoutMs: number;
  readonly quarantineAfter: number;
  readonly counters = new Map<HookName, HookCounters>();
  state: PluginStatus['state'] = 'loaded';
  detail: string | undefined;
  consecutiveFailures = 0;
  /** 0 when not quarantined; otherwise the time the next trial call is allowed. */
  quarantinedUntil = 0;
  backoffMs = BASE_BACKOFF_MS;
  calls = 0;
  errors = 0;
  /** Source, integrity, grants, scope and config: equal fingerprints are reused across reloads. */
  fingerprint = '';
  #restarting: Promise<void> | null = null;

  constructor(
    readonly manifest: Manifest,
    readonly instance: SandboxInstance,
    readonly grants: readonly string[],
    public order: number,
    readonly scope: 'global' | 'group',
    readonly source: string,
    private readonly log: Logger,
    private readonly onQuarantine: (p: LoadedPlugin) => void,
    baseBackoffMs = BASE_BACKOFF_MS,
    /** The route group this instance belongs to; null for the shared instance. */
    readonly group: string | null = null,
  ) {
    this.name = group ? `${manifest.name}@${group}` : manifest.name;
    this.version = manifest.version;
    this.sandbox = manifest.sandbox;
    this.failMode = manifest.failMode ?? 'open';
    this.timeoutMs = manifest.limits?.timeoutMs ?? DEFAULT_LIMITS.timeoutMs;
    this.quarantineAfter = manifest.limits?.quarantineAfter ?? DEFAULT_LIMITS.quarantineAfter;
    this.backoffMs = baseBackoffMs;
    this.#baseBackoff = baseBackoffMs;
    for (const h of Object.keys(manifest.hooks ?? {}) as HookName[]) this.counters.set(h, newHookCounters());
    if (manifest.routes?.length) this.counters.set('onRoute', this.counters.get('onRoute') ?? newHookCounters());
  }
  #baseBackoff: number;

  counter(hook: HookName): HookCounters {
    let c = this.counters.get(hook);
    if (!c) this.counters.set(hook, (c = newHookCounters()));
    return c;
  }

  /**
   * Calls a hook with failure accounting. Returns the decision, a promise of
   * it, or a HookFailure. Stays synchronous unless the hook returns a promise.
   * `deadlineMs` overrides `limits.timeoutMs` for an async answer (a task's own `timeoutMs`).
   */
  call(hook: HookName, fn: (...a: unknown[]) => unknown, a: unknown, b?: unknown, deadlineMs?: number): unknown {
    if (this.quarantinedUntil !== 0) {
      if (Date.now() < this.quarantinedUntil) {
        return new HookFailure(this, hook, new BextError('BEXT_ERR_PLUGIN_QUARANTINED', `plugin "${this.name}" is quarantined until ${new Date(this.quarantinedUntil).toISOString()}`));
      }
      // Half-open: this call is the trial; a failure re-quarantines at once.
    }
    const c = this.counter(hook);
    const t0 = performance.now();
    // Request capture: the request carries a timings array only while someone observes requests.
    const trace = a !== null && typeof a === 'object' ? (a as Traced).timings : undefined;
    let r: unknown;
    try {
      r = fn(a, b);
    } catch (e) {
      const f = this.#failed(hook, c, t0, e);
      if (trace) this.#trace(trace, a as Traced, hook, t0, f.error.code);
      return f;
    }
    if (r !== null && typeof r === 'object' && typeof (r as { then?: unknown }).then === 'function') {
      // The timing is recorded as the call settles: no second promise per traced call.
      return this.#settle(hook, c, t0, r as PromiseLike<unknown>, deadlineMs ?? this.timeoutMs, trace ? (v) => this.#trace(trace, a as Traced, hook, t0, v instanceof HookFailure ? v.error.code : undefined) : null);
    }
    this.#ok(c, t0);
    if (trace) this.#trace(trace, a as Traced, hook, t0, undefined);
    return r;
  }

  #trace(list: HookTiming[], req: Traced, hook: HookName, t0: number, error: string | undefined): void {
    const now = performance.now();
    const t: HookTiming = { plugin: this.name, hook, startMs: t0 - (req.t0 ?? t0), durMs: now - t0 };
    if (error) t.error = error;
    list.push(t);
  }

  #settle(hook: HookName, c: HookCounters, t0: number, p: PromiseLike<unknown>, ms: number, traced: ((v: unknown) => void) | null): Promise<unknown> {
    return new Promise((settled) => {
      const resolve = traced === null ? settled : (v: unknown) => {
        traced(v);
        settled(v);
      };
      let done = false;
      const timer = setTimeout(() => {
        if (done) return;
        done = true;
        c.timeouts++;
        resolve(this.#failed(hook, c, t0, new BextError('BEXT_ERR_PLUGIN_TIMEOUT', `plugin "${this.name}" ${hook} missed its ${ms} ms deadline`)));
      }, ms);
      p.then(
        (v) => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          this.#ok(c, t0);
          resolve(v);
        },
        (e: unknown) => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          resolve(this.#failed(hook, c, t0, e));
        },
      );
    });
  }

  #ok(c: HookCounters, t0: number): void {
    c.calls++;
    this.calls++;
    c.latency.observe((performance.now() - t0) / 1000);
    if (this.consecutiveFailures !== 0 || this.quarantinedUntil !== 0) {
      if (this.quarantinedUntil !== 0) this.log.info('plugin recovered from quarantine', { plugin: this.name });
      this.consecutiveFailures = 0;
      this.quarantinedUntil = 0;
      this.backoffMs = this.#baseBackoff;
      if (this.state === 'quarantined') this.state = 'loaded';
    }
  }

  #failed(hook: HookName, c: HookCounters, t0: number, e: unknown): HookFailure {
    c.calls++;
    c.errors++;
    this.calls++;
    this.errors++;
    c.latency.observe((performance.now() - t0) / 1000);
    const err = toBextError(e, this.name, hook);
    if (err.code === 'BEXT_ERR_BODY_TOO_LARGE') return new HookFailure(this, hook, err);
    this.consecutiveFailures++;
    this.log.warn('plugin hook failed', { plugin: this.name, hook, code: err.code, error: err.message, failMode: this.failMode });
    const trialFailed = this.quarantinedUntil !== 0;
    if (trialFailed || this.consecutiveFailures >= this.quarantineAfter) this.#quarantine();
    return new HookFailure(this, hook, err);
  }

  #quarantine(): void {
    const wasTrial = this.quarantinedUntil !== 0;
    if (wasTrial) this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
    this.quarantinedUntil = Date.now() + this.backoffMs;
    this.state = 'quarantined';
    this.detail = `${this.consecutiveFailures} consecutive failures`;
    this.log.error('plugin quarantined', { plugin: this.name, backoffMs: this.backoffMs, failures: this.consecutiveFailures });
    this.onQuarantine(this);
    if (this.instance.restart && !this.#restarting) {
      this.#restarting = this.instance
        .restart()
        .catch((e: unknown) => this.log.error('plugin restart failed', { plugin: this.name, error: String((e as Error)?.message ?? e) }))
        .finally(() => (this.#restarting = null));
    }
  }

  status(): PluginStatus {
    const stats = this.instance.stats();
    return {
      name: this.name,
      version: this.version,
      sandbox: this.sandbox,
      state: this.state,
      failMode: this.failMode,
      hooks: Object.keys(this.manifest.hooks ?? {}),
      routes: (this.manifest.routes ?? []).map((r) => r.path),
      calls: this.calls,
      errors: this.errors,
      ...(this.quarantinedUntil ? { quarantinedUntil: this.quarantinedUntil } : {}),
      ...(this.detail && this.state !== 'loaded' ? { detail: this.detail } : {}),
      ...(stats.fuelTotal !== undefined ? { fuelTotal: stats.fuelTotal } : {}),
      ...(stats.memoryBytes !== undefined ? { memoryBytes: stats.memoryBytes } : {}),
    };
  }
}

/** Wraps anything a plugin threw (including non-Error values) with plugin and hook names. */
export function toBextError(e: unknown, plugin: string, hook: string): BextError {
  if (e instanceof BextError) {
    if (e.message.includes(`"${plugin}"`)) return e;
    return new BextError(e.code, `plugin "${plugin}" ${hook}: ${e.message}`, { cause: e, hint: e.hint });
  }
  let what: string;
  try {
    what = e instanceof Error ? e.message : typeof e === 'string' ? e : `a non-Error value (${typeof e}: ${String(JSON.stringify(e) ?? e).slice(0, 80)})`;
  } catch {
    what = 'an unprintable value';
  }
  return new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "${plugin}" ${hook} threw ${what}`, { cause: e });
}
