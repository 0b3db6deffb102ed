/**
 * The scheduler: cron-style tasks that plugins declare (`schedules` in the
 * manifest) or add at runtime (`bext_schedule`), run by calling the plugin's
 * `onSchedule` through `LoadedPlugin.call`, so a task run has the same
 * deadline, fuel, failure counting and quarantine as any hook call.
 *
 * Ticks are computed with croner but timed here, one timer per task, from
 * the previous tick rather than from "now": every instance of a cluster sees
 * the same `scheduledAt` values, which is what the Redis lock is keyed on.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { Cron } from 'croner';
import type { Redis } from 'ioredis';
import client from 'prom-client';
import {
  BextError, scheduleSchema, TASK_NAME_PATTERN,
  type ClusterTaskView, type HostApi, type Manifest, type ScheduleSpec, type ScheduledTask, type TaskOutcome, type TaskRun, type TaskStatus,
} from '../plugin-api/index.js';
import { formatAjvErrors, makeAjv } from './config.js';
import type { Logger } from './log.js';
import { isFailure, type LoadedPlugin } from './plugin.js';

/** Ticks kept per task. */
const HISTORY = 20;
/** setTimeout's largest delay; a later tick re-arms on the way. */
const MAX_DELAY_MS = 2 ** 31 - 1;
/**
 * How long a tick's lock lives. Keys are per tick, so this only has to
 * outlast the clock skew between instances plus a run's start: an instance
 * that reaches the same tick later than this would run it again.
 */
const MIN_LOCK_TTL_MS = 60_000;
/** A run lease outlives the run's deadline by this much, then frees the task should its holder have died. */
const LEASE_MARGIN_MS = 5_000;
/** A tick this late (the event loop was blocked) still fires; older ones are dropped. */
const MAX_LATE_MS = 1_000;
/** How long a tick waits for the first Redis connection (a reconnect is not waited for). */
const FIRST_CONNECT_WAIT_MS = 1_000;
/** How long the shared history of a task outlives its last write (a task removed for good leaves nothing behind for long). */
const SHARED_TTL_MS = 7 * 24 * 3600_000;
/** Deletes the lease only when this instance still holds it. */
const RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0";
const TASK_NAME = new RegExp(TASK_NAME_PATTERN);
const OUTCOMES: TaskOutcome[] = ['ok', 'error', 'timeout', 'skipped-overlap', 'ran-elsewhere', 'lock-failed'];
const FAILED: ReadonlySet<TaskOutcome> = new Set(['error', 'timeout', 'lock-failed']);

const { cron: _cron, ...optionProperties } = scheduleSchema.properties;
const optionsSchema = { type: 'object', additionalProperties: false, properties: optionProperties };
const validateOptions = makeAjv().compile(optionsSchema);

/**
 * Reads a cron pattern and time zone the way the scheduler will. Returns the
 * evaluator, or which field is wrong and why.
 */
function compileCron(cron: string, timezone: string | undefined): { cron: Cron } | { field: 'cron' | 'timezone'; why: string } {
  let c: Cron;
  try {
    c = new Cron(cron, { paused: true, ...(timezone ? { timezone } : {}) });
  } catch (e) {
    return { field: 'cron', why: (e as Error).message };
  }
  try {
    c.nextRun();
  } catch (e) {
    // croner reads the time zone only when it computes a date.
    return { field: timezone ? 'timezone' : 'cron', why: (e as Error).message };
  }
  return { cron: c };
}

/**
 * Checks what JSON Schema cannot: that each `schedules` entry's pattern and
 * time zone are readable. Throws BEXT_ERR_MANIFEST_INVALID naming the task
 * and the field.
 */
export function checkSchedules(m: Manifest, file: string): void {
  for (const [task, spec] of Object.entries(m.schedules ?? {})) {
    const r = compileCron(spec.cron, spec.timezone);
    if ('field' in r) {
      const found = r.field === 'cron' ? spec.cron : spec.timezone;
      throw new BextError('BEXT_ERR_MANIFEST_INVALID', `${file}: $.schedules.${task}.${r.field}: expected a ${r.field === 'cron' ? 'cron pattern' : 'IANA time zone'}, found ${JSON.stringify(found)} (${r.why})`, {
        hint: r.field === 'cron' ? 'use 5 fields (minute hour day month weekday), or 6 with seconds first, e.g. "*/10 * * * * *"' : 'use a zone name such as "Europe/Berlin" or "UTC"',
      });
    }
  }
}

/** One task of one loaded plugin, with its timer and history on this instance. */
class Task {
  timer: NodeJS.Timeout | null = null;
  next: number | null = null;
  /** The last tick handled: the next one is computed from here, so none is counted twice. */
  lastTick = 0;
  running = 0;
  queued: { scheduledAt: number; done: (r: TaskRun) => void } | null = null;
  runs = 0;
  readonly counts = Object.fromEntries(OUTCOMES.map((o) => [o, 0])) as Record<TaskOutcome, number>;
  failures = 0;
  consecutiveFailures = 0;
  history: TaskRun[] = [];
  lastFailure: TaskRun | null = null;
  /** This instance holds the task's cluster run lease (overlap skip/queue with Redis). */
  leased = false;

  constructor(
    readonly plugin: LoadedPlugin,
    readonly name: string,
    readonly spec: Required<Pick<ScheduleSpec, 'cron' | 'overlap' | 'scope'>> & Pick<ScheduleSpec, 'timezone'>,
    readonly cron: Cron,
    readonly timeoutMs: number,
    readonly source: 'manifest' | 'runtime',
  ) {}

  record(run: TaskRun): TaskRun {
    this.counts[run.outcome]++;
    if (FAILED.has(run.outcome)) {
      this.failures++;
      this.consecutiveFailures++;
      this.lastFailure = run;
    } else if (run.outcome === 'ok') this.consecutiveFailures = 0;
    this.history.unshift(run);
    if (this.history.length > HISTORY) this.history.length = HISTORY;
    return run;
  }
}

export interface SchedulerOptions {
  log: Logger;
  /** The kernel's Prometheus registry, for the scheduler's own metrics. */
  registry: client.Registry;
  /** `redis.url`: cluster-scoped ticks are locked there. */
  redisUrl?: string;
  /**
   * Index of this process under `bext run --workers N` (env
   * `BEXT_WORKER_INDEX`), or null. Without Redis, only worker 0 runs
   * cluster-scoped tasks.
   */
  workerIndex?: number | null;
}

/** Reads BEXT_WORKER_INDEX, as the `--workers` primary sets it for each worker. */
export function workerIndexFromEnv(env: NodeJS.ProcessEnv = process.env): number | null {
  const v = env.BEXT_WORKER_INDEX;
  if (v === undefined || v === '') return null;
  const n = Number(v);
  return Number.isInteger(n) && n >= 0 ? n : null;
}

/**
 * Owns every task of the current plugin set. The kernel binds each freshly
 * loaded plugin (`bind`), hands over the active set when it listens or
 * reloads (`start`, `sync`), and stops it on close (`stop`).
 */
export class Scheduler {
  readonly instanceId = `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
  readonly #log: Logger;
  readonly #redisUrl: string | undefined;
  readonly #workerIndex: number | null;
  #redis: Redis | null = null;
  /** Settles once the client exists (not once it is connected). */
  #connecting: Promise<void> | null = null;
  /** Resolves when the first connection is ready; ticks that come earlier wait for it (bounded). */
  #redisReady: Promise<void> | null = null;
  #redisDown = false;
  #active = false;
  #plugins = new Set<LoadedPlugin>();
  readonly #tasks = new Map<LoadedPlugin, Map<string, Task>>();
  /** Runtime registrations made while a plugin's factory runs, before the kernel binds it. */
  readonly #early = new WeakMap<HostApi, Map<string, ScheduleSpec>>();
  readonly #byHost = new WeakMap<HostApi, LoadedPlugin>();
  readonly #inflight = new Set<Promise<unknown>>();
  readonly #runsTotal: client.Counter<'plugin' | 'task' | 'outcome'>;
  readonly #duration: client.Histogram<'plugin' | 'task'>;

  constructor(opts: SchedulerOptions) {
    this.#log = opts.log;
    this.#redisUrl = opts.redisUrl;
    this.#workerIndex = opts.workerIndex ?? null;
    this.#runsTotal = new client.Counter({
      name: 'bext_scheduler_runs_total',
      help: 'Scheduled task ticks seen by this instance, by outcome (ok, error, timeout, skipped-overlap, ran-elsewhere, lock-failed)',
      labelNames: ['plugin', 'task', 'outcome'],
      registers: [opts.registry],
    });
    this.#duration = new client.Histogram({
      name: 'bext_scheduler_run_duration_seconds',
      help: 'Time a scheduled task run took on this instance',
      labelNames: ['plugin', 'task'],
      buckets: [0.001, 0.005, 0.025, 0.1, 0.25, 1, 2.5, 10, 30, 120],
      registers: [opts.registry],
    });
  }

  // ------------------------------------------------------------ plugin set

  /**
   * Adopts a freshly loaded plugin: creates its manifest tasks and the ones
   * its factory added with `bext_schedule`. Throws when it has tasks but no
   * `onSchedule` export, so the load fails like any missing hook.
   */
  bind(host: HostApi, plugin: LoadedPlugin): void {
    this.#byHost.set(host, plugin);
    const early = this.#early.get(host);
    this.#early.delete(host);
    const declared = Object.keys(plugin.manifest.schedules ?? {});
    if ((declared.length || early?.size) && typeof plugin.instance.hooks.onSchedule !== 'function') {
      throw new BextError('BEXT_ERR_PLUGIN_HOOK_MISSING', `plugin "${plugin.name}" has scheduled tasks (${[...declared, ...(early?.keys() ?? [])].join(', ')}) but does not export onSchedule`, {
        hint: 'export onSchedule(task) from the entry module, or remove "schedules" from bext-plugin.json',
      });
    }
    const tasks = new Map<string, Task>();
    this.#tasks.set(plugin, tasks);
    for (const [name, spec] of Object.entries(plugin.manifest.schedules ?? {})) tasks.set(name, this.#make(plugin, name, spec, 'manifest'));
    for (const [name, spec] of early ?? []) tasks.set(name, this.#make(plugin, name, spec, 'runtime'));
  }

  /** Starts firing the tasks of `plugins` (when the server listens). */
  start(plugins: readonly LoadedPlugin[]): void {
    if (this.#active) return this.sync(plugins);
    this.#active = true;
    if (this.#redisUrl && !this.#connecting) this.#connecting = this.#connect(this.#redisUrl);
    this.sync(plugins);
  }

  /**
   * Makes `plugins` the current set (after a reload): tasks of plugins that
   * left stop, tasks of new ones start, reused plugins keep theirs running.
   */
  sync(plugins: readonly LoadedPlugin[]): void {
    this.#plugins = new Set(plugins);
    for (const [p, tasks] of this.#tasks) {
      if (this.#plugins.has(p)) continue;
      for (const t of tasks.values()) this.#disarm(t);
      this.#tasks.delete(p);
    }
    if (!this.#active) return;
    for (const p of plugins) for (const t of this.#tasks.get(p)?.values() ?? []) this.#arm(t);
  }

  /** Stops every timer and waits (at most `deadlineMs`) for runs in progress. */
  async stop(deadlineMs: number): Promise<void> {
    this.#active = false;
    for (const tasks of this.#tasks.values()) {
      for (const t of tasks.values()) {
        this.#disarm(t);
        if (t.queued) {
          const q = t.queued;
          t.queued = null;
          q.done(this.#skip(t, q.scheduledAt, 'skipped-overlap', 'the server stopped before the queued run started'));
        }
      }
    }
    if (this.#inflight.size) {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), deadlineMs)));
      const r = await Promise.race([Promise.allSettled([...this.#inflight]).then(() => 'done' as const), late]);
      clearTimeout(timer);
      if (r === 'late') this.#log.warn('scheduled task runs still running at shutdown', { runs: this.#inflight.size, waitedMs: deadlineMs });
    }
    const redis = this.#redis;
    this.#redis = null;
    redis?.disconnect();
  }

  // -------------------------------------------------------- runtime tasks

  /** `bext_schedule` from a plugin's host object. Throws BEXT_ERR_SCHEDULE_INVALID. */
  register(host: HostApi, name: string, cron: string, opts: unknown): void {
    const spec = this.#checkRuntime(host.plugin, name, cron, opts);
    const plugin = this.#byHost.get(host);
    if (!plugin) {
      let early = this.#early.get(host);
      if (!early) this.#early.set(host, (early = new Map()));
      early.set(name, spec);
      return;
    }
    if (typeof plugin.instance.hooks.onSchedule !== 'function') {
      throw new BextError('BEXT_ERR_SCHEDULE_INVALID', `plugin "${plugin.name}": bext_schedule(${JSON.stringify(name)}) but the plugin does not export onSchedule`, { hint: 'export onSchedule(task) from the entry module' });
    }
    const tasks = this.#tasks.get(plugin);
    if (!tasks) return; // the plugin left the set (its load failed, or a reload removed it)
    const old = tasks.get(name);
    if (old?.source === 'manifest') {
      throw new BextError('BEXT_ERR_SCHEDULE_INVALID', `plugin "${plugin.name}": bext_schedule(${JSON.stringify(name)}): the task is declared in bext-plugin.json`, { hint: 'give the runtime task another name, or change the manifest entry' });
    }
    if (old) this.#disarm(old);
    const t = this.#make(plugin, name, spec, 'runtime');
    tasks.set(name, t);
    if (this.#active && this.#plugins.has(plugin)) this.#arm(t);
  }

  /** `bext_unschedule`: removes a runtime task. Returns whether there was one. */
  unregister(host: HostApi, name: string): boolean {
    const plugin = this.#byHost.get(host);
    if (!plugin) return this.#early.get(host)?.delete(name) ?? false;
    const tasks = this.#tasks.get(plugin);
    const t = tasks?.get(name);
    if (!t || t.source !== 'runtime') return false;
    this.#disarm(t);
    tasks!.delete(name);
    return true;
  }

  #checkRuntime(plugin: string, name: string, cron: string, opts: unknown): ScheduleSpec {
    const bad = (what: string, hint?: string) => new BextError('BEXT_ERR_SCHEDULE_INVALID', `plugin "${plugin}": bext_schedule(${JSON.stringify(name).slice(0, 80)}): ${what}`, { hint });
    if (typeof name !== 'string' || !TASK_NAME.test(name)) throw bad(`the task name must match ${TASK_NAME_PATTERN}`);
    if (typeof cron !== 'string' || !cron) throw bad('the cron pattern must be a non-empty string');
    const o = opts === undefined || opts === null ? {} : opts;
    if (typeof o !== 'object' || Array.isArray(o) || !validateOptions(o)) {
      throw bad(formatAjvErrors('options', o, validateOptions.errors).join('; ') || 'the options must be an object', 'options are overlap (skip|queue|allow), scope (cluster|instance), timeoutMs and timezone');
    }
    const spec = { ...(o as Omit<ScheduleSpec, 'cron'>), cron };
    const r = compileCron(cron, spec.timezone);
    if ('field' in r) throw bad(`${r.field === 'cron' ? `the cron pattern ${JSON.stringify(cron)}` : `the time zone ${JSON.stringify(spec.timezone)}`} cannot be read: ${r.why}`);
    return spec;
  }

  #make(plugin: LoadedPlugin, name: string, spec: ScheduleSpec, source: 'manifest' | 'runtime'): Task {
    const r = compileCron(spec.cron, spec.timezone);
    if ('field' in r) throw new BextError('BEXT_ERR_MANIFEST_INVALID', `plugin "${plugin.name}": schedules.${name}.${r.field}: ${r.why}`);
    // A sandbox enforces its own limits.timeoutMs per call, so only trusted code can be given longer.
    const limit = plugin.timeoutMs;
    const timeoutMs = plugin.sandbox === 'trusted' ? (spec.timeoutMs ?? limit) : Math.min(spec.timeoutMs ?? limit, limit);
    return new Task(plugin, name, { cron: spec.cron, overlap: spec.overlap ?? 'skip', scope: spec.scope ?? 'cluster', ...(spec.timezone ? { timezone: spec.timezone } : {}) }, r.cron, timeoutMs, source);
  }

  // ----------------------------------------------------------------- ticks

  #arm(t: Task): void {
    if (t.timer || !this.#active) return;
    // Ticks follow from the last one, so a loop that was busy for a moment still
    // fires a tick that is a little late; ticks older than MAX_LATE_MS are dropped.
    const now = Date.now();
    let next = t.cron.nextRun(new Date(t.lastTick || now));
    if (next && next.getTime() < now - MAX_LATE_MS) next = t.cron.nextRun(new Date(now));
    if (!next) {
      t.next = null;
      return;
    }
    const at = next.getTime();
    t.next = at;
    const delay = at - Date.now();
    if (delay > MAX_DELAY_MS) {
      t.timer = setTimeout(() => {
        t.timer = null;
        this.#arm(t);
      }, MAX_DELAY_MS);
    } else {
      const fire = () => {
        // Timers run on the monotonic clock and may come a millisecond before the wall-clock tick.
        const early = at - Date.now();
        if (early > 0) {
          t.timer = setTimeout(fire, early);
          t.timer.unref();
          return;
        }
        t.timer = null;
        t.lastTick = at;
        this.#tick(t, at);
        this.#arm(t);
      };
      t.timer = setTimeout(fire, Math.max(0, delay));
    }
    // The listeners keep the process alive; a pending tick must not.
    t.timer.unref();
  }

  #disarm(t: Task): void {
    if (t.timer) clearTimeout(t.timer);
    t.timer = null;
    t.next = null;
  }

  #tick(t: Task, scheduledAt: number): void {
    // Overlap is decided before the cluster lock: a tick this instance would
    // not run is left for another instance to take.
    if (t.running > 0 && t.spec.overlap !== 'allow' && (t.spec.overlap === 'skip' || t.queued)) {
      this.#skip(t, scheduledAt, 'skipped-overlap', t.spec.overlap === 'skip' ? 'the previous run was still running' : 'a run was already queued');
      return;
    }
    if (t.spec.scope === 'instance') return void this.#begin(t, scheduledAt);
    if (!this.#redisUrl) {
      if (this.#workerIndex !== null && this.#workerIndex !== 0) {
        this.#skip(t, scheduledAt, 'ran-elsewhere', `worker 0 runs cluster-scoped tasks (this is worker ${this.#workerIndex}; set redis.url to share them)`);
        return;
      }
      return void this.#begin(t, scheduledAt);
    }
    const p = this.#lock(t, scheduledAt).then(async (won) => {
      if (won === false) return void this.#skip(t, scheduledAt, 'ran-elsewhere');
      if (won !== true) return void this.#skip(t, scheduledAt, 'lock-failed', `redis: ${won.message}`);
      if (t.spec.overlap === 'allow' || t.leased) return this.#begin(t, scheduledAt);
      // Overlap across the cluster: a run holds the task's lease while it runs,
      // so a tick won here while another instance still runs the task is skipped.
      const leased = await this.#lease(t);
      if (leased === false) return void this.#skip(t, scheduledAt, 'skipped-overlap', 'the previous run was still running on another instance');
      if (leased !== true) return void this.#skip(t, scheduledAt, 'lock-failed', `redis: ${leased.message}`);
      t.leased = true;
      const run = this.#begin(t, scheduledAt);
      // A manual run that started meanwhile made this tick a skip: nothing holds the lease.
      if (t.running === 0 && !t.queued) this.#release(t);
      return run;
    });
    this.#track(p);
  }

  #leaseKey(t: Task): string {
    return `bext:sched:${t.plugin.name}:${t.name}:running`;
  }

  /** Takes the task's run lease (it expires a little after the run's deadline, should this instance die). */
  async #lease(t: Task): Promise<boolean | Error> {
    const redis = this.#redis;
    if (!redis) return new Error('not connected');
    try {
      return (await redis.set(this.#leaseKey(t), this.instanceId, 'PX', t.timeoutMs + LEASE_MARGIN_MS, 'NX')) === 'OK';
    } catch (e) {
      return e as Error;
    }
  }

  /** Gives the lease back once no run of the task is left here (only if it is still ours). */
  #release(t: Task): void {
    t.leased = false;
    const redis = this.#redis;
    if (!redis) return;
    const p = redis.eval(RELEASE, 1, this.#leaseKey(t), this.instanceId).catch((e: Error) => {
      this.#log.warn('scheduler: could not release a task lease; it expires by itself', { plugin: t.plugin.name, task: t.name, error: e.message });
    });
    this.#track(p);
  }

  /** Takes the tick's lock: true when this instance runs it, false when another does, an Error when Redis could not say. */
  async #lock(t: Task, scheduledAt: number): Promise<boolean | Error> {
    if (!this.#redis && this.#connecting) await this.#connecting;
    const redis = this.#redis;
    if (!redis) return new Error('not connected');
    if (this.#redisReady && (redis.status === 'wait' || redis.status === 'connecting' || redis.status === 'connect')) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.#redisReady, new Promise<void>((r) => (timer = setTimeout(r, FIRST_CONNECT_WAIT_MS)))]);
      clearTimeout(timer);
    }
    const key = `bext:sched:${t.plugin.name}:${t.name}:${scheduledAt}`;
    try {
      const r = await redis.set(key, this.instanceId, 'PX', Math.max(MIN_LOCK_TTL_MS, t.timeoutMs * 2), 'NX');
      if (this.#redisDown) {
        this.#redisDown = false;
        this.#log.info('scheduler: redis is reachable again; cluster-scoped tasks run again');
      }
      return r === 'OK';
    } catch (e) {
      if (!this.#redisDown) {
        this.#redisDown = true;
        this.#log.error('scheduler: redis is unreachable; cluster-scoped ticks are skipped (never run twice) until it is back', { error: (e as Error).message });
      }
      return e as Error;
    }
  }

  /** Starts a run now, or queues it behind the current one (overlap `queue`). */
  #begin(t: Task, scheduledAt: number, trigger?: 'manual'): Promise<TaskRun> {
    if (t.running > 0 && t.spec.overlap !== 'allow') {
      if (t.spec.overlap === 'queue' && !t.queued) {
        return new Promise((done) => (t.queued = { scheduledAt, done }));
      }
      return Promise.resolve(this.#skip(t, scheduledAt, 'skipped-overlap', 'the previous run was still running', trigger));
    }
    const p = this.#run(t, scheduledAt, trigger);
    this.#track(p);
    return p;
  }

  async #run(t: Task, scheduledAt: number, trigger?: 'manual'): Promise<TaskRun> {
    t.running++;
    const run = ++t.runs;
    const startedAt = Date.now();
    const t0 = performance.now();
    const arg: ScheduledTask = { name: t.name, scheduledAt, firedAt: startedAt, run };
    let outcome: TaskOutcome = 'ok';
    let error: string | undefined;
    try {
      const fn = t.plugin.instance.hooks.onSchedule as ((...a: unknown[]) => unknown) | undefined;
      if (typeof fn !== 'function') throw new BextError('BEXT_ERR_PLUGIN_HOOK_MISSING', `plugin "${t.plugin.name}" no longer exports onSchedule`);
      const r = await t.plugin.call('onSchedule', fn.bind(t.plugin.instance.hooks), arg, undefined, t.timeoutMs);
      if (isFailure(r)) {
        outcome = r.error.code === 'BEXT_ERR_PLUGIN_TIMEOUT' ? 'timeout' : 'error';
        error = `${r.error.code}: ${r.error.message}`;
      }
    } catch (e) {
      outcome = 'error';
      error = (e as Error)?.message ?? String(e);
    } finally {
      t.running--;
    }
    const durationMs = performance.now() - t0;
    this.#duration.observe({ plugin: t.plugin.name, task: t.name }, durationMs / 1000);
    const rec = this.#record(t, { scheduledAt, startedAt, durationMs, outcome, ...(error ? { error } : {}), ...(trigger ? { trigger } : {}) });
    if (outcome !== 'ok') this.#log.warn('scheduled task failed', { plugin: t.plugin.name, task: t.name, outcome, error, scheduledAt: new Date(scheduledAt).toISOString() });
    const q = t.queued;
    if (q && t.running === 0) {
      t.queued = null;
      if (this.#active) {
        // The queued run keeps the lease; its deadline starts now.
        if (t.leased) void this.#redis?.pexpire(this.#leaseKey(t), t.timeoutMs + LEASE_MARGIN_MS).catch(() => undefined);
        void this.#begin(t, q.scheduledAt).then(q.done);
      } else q.done(this.#skip(t, q.scheduledAt, 'skipped-overlap', 'the server stopped before the queued run started'));
    }
    if (t.leased && t.running === 0 && !t.queued) this.#release(t);
    return rec;
  }

  #skip(t: Task, scheduledAt: number, outcome: TaskOutcome, error?: string, trigger?: 'manual'): TaskRun {
    return this.#record(t, { scheduledAt, startedAt: Date.now(), durationMs: 0, outcome, ...(error ? { error } : {}), ...(trigger ? { trigger } : {}) });
  }

  #record(t: Task, run: TaskRun): TaskRun {
    this.#runsTotal.inc({ plugin: t.plugin.name, task: t.name, outcome: run.outcome });
    run.instance = this.instanceId;
    this.#share(t, run);
    return t.record(run);
  }

  #sharedKey(t: { plugin: string; name: string }, kind: 'runs' | 'counts' | 'failure'): string {
    return `bext:sched:${t.plugin}:${t.name}:${kind}`;
  }

  /**
   * Adds a cluster-scoped tick to the history every instance shares. A tick
   * left to another instance is not shared (that one shares it), nor is one
   * whose lock Redis could not give (it cannot take the write either).
   */
  #share(t: Task, run: TaskRun): void {
    const redis = this.#redis;
    if (!redis || t.spec.scope !== 'cluster' || run.outcome === 'ran-elsewhere' || run.outcome === 'lock-failed') return;
    const key = { plugin: t.plugin.name, name: t.name };
    const runs = this.#sharedKey(key, 'runs');
    const counts = this.#sharedKey(key, 'counts');
    const entry = JSON.stringify(run);
    const m = redis.multi().lpush(runs, entry).ltrim(runs, 0, HISTORY - 1).hincrby(counts, run.outcome, 1).pexpire(runs, SHARED_TTL_MS).pexpire(counts, SHARED_TTL_MS);
    if (FAILED.has(run.outcome)) m.set(this.#sharedKey(key, 'failure'), entry, 'PX', SHARED_TTL_MS);
    this.#track(m.exec().catch((e: Error) => this.#log.warn('scheduler: could not share a run in redis', { plugin: key.plugin, task: key.name, error: e.message })));
  }

  #track(p: Promise<unknown>): void {
    this.#inflight.add(p);
    void p.finally(() => this.#inflight.delete(p));
  }

  async #connect(url: string): Promise<void> {
    const { Redis } = await import('ioredis');
    // No offline queue: a lock asked for while Redis is away must fail now
    // (the tick is skipped), not run late after a reconnect.
    const r = new Redis(url, { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0, commandTimeout: 2000, retryStrategy: (n) => Math.min(n * 200, 2000) });
    r.on('error', (e: Error) => {
      if (!this.#redisDown) this.#log.warn('scheduler: redis connection error', { error: e.message });
    });
    if (!this.#active) return void r.disconnect();
    this.#redis = r;
    this.#redisReady = new Promise<void>((res) => r.once('ready', () => {
      this.#redisReady = null;
      res();
    }));
    r.connect().catch((e: Error) => this.#log.warn('scheduler: cannot connect to redis yet; cluster-scoped ticks are skipped until it answers', { error: e.message }));
  }

  // ---------------------------------------------------------------- status

  /** Runs a task now on this instance (admin). */
  runNow(plugin: string, task: string): Promise<TaskRun> {
    const t = this.#find(plugin, task);
    if (!t) {
      return Promise.reject(new BextError('BEXT_ERR_SCHEDULE_NOT_FOUND', `no scheduled task "${task}" in plugin "${plugin}"`, { hint: 'GET /__bext/scheduler lists the tasks' }));
    }
    return this.#begin(t, Date.now(), 'manual');
  }

  #find(plugin: string, task: string): Task | undefined {
    for (const p of this.#plugins) if (p.name === plugin) return this.#tasks.get(p)?.get(task);
    return undefined;
  }

  /** `status()`, with each cluster-scoped task's shared view read from Redis (when `redis.url` is set). */
  async clusterStatus(): Promise<TaskStatus[]> {
    const out = this.status();
    if (!this.#redisUrl) return out;
    if (!this.#redis && this.#connecting) await this.#connecting;
    const redis = this.#redis;
    await Promise.all(out.filter((s) => s.scope === 'cluster').map(async (s) => {
      try {
        if (!redis) throw new Error('not connected');
        const [runs, counts, failure] = await Promise.all([
          redis.lrange(this.#sharedKey(s, 'runs'), 0, HISTORY - 1),
          redis.hgetall(this.#sharedKey(s, 'counts')),
          redis.get(this.#sharedKey(s, 'failure')),
        ]);
        const view: ClusterTaskView = {
          counts: Object.fromEntries(OUTCOMES.map((o) => [o, Number(counts[o] ?? 0)])) as Record<TaskOutcome, number>,
          failures: 0,
          lastRun: null,
          lastFailure: failure ? (JSON.parse(failure) as TaskRun) : null,
          history: runs.map((r) => JSON.parse(r) as TaskRun),
        };
        view.failures = [...FAILED].reduce((n, o) => n + view.counts[o], 0);
        view.lastRun = view.history[0] ?? null;
        s.cluster = view;
      } catch (e) {
        s.cluster = null;
        s.clusterError = `redis: ${(e as Error).message}`;
      }
    }));
    return out;
  }

  /** Every task of the current set with its schedule and recent runs. */
  status(): TaskStatus[] {
    const out: TaskStatus[] = [];
    for (const p of this.#plugins) {
      for (const t of this.#tasks.get(p)?.values() ?? []) {
        out.push({
          plugin: p.name,
          name: t.name,
          cron: t.spec.cron,
          ...(t.spec.timezone ? { timezone: t.spec.timezone } : {}),
          scope: t.spec.scope,
          overlap: t.spec.overlap,
          timeoutMs: t.timeoutMs,
          source: t.source,
          active: t.timer !== null,
          nextRun: t.next,
          running: t.running,
          queued: t.queued !== null,
          counts: { ...t.counts },
          failures: t.failures,
          consecutiveFailures: t.consecutiveFailures,
          lastRun: t.history[0] ?? null,
          lastFailure: t.lastFailure,
          history: t.history.slice(),
        });
      }
    }
    return out;
  }
}
