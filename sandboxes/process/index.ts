/**
 * Process sandbox: a plugin runs in its own child process and speaks a framed
 * protocol over stdin/stdout (PROTOCOL.md). A JavaScript entry is run by
 * `runner.mjs`; any other entry is an executable that speaks the protocol
 * itself. The child is confined with bubblewrap when it works here.
 *
 * One child serves every call of a plugin; calls are pipelined over the pipe
 * with ids. A missed deadline, an oversize frame, a protocol violation or an
 * exit kills the child, fails its in-flight calls, and a fresh child is
 * started after an exponential backoff; calls fail fast meanwhile.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants as fsConstants, existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import {
  BextError,
  CAPABILITIES,
  HOOK_NAMES,
  makeProjector,
  type CapabilityFamily,
  type FetchRequest,
  type HookName,
  type HookSignatures,
  type HostApi,
  type LoadSpec,
  type LogLevel,
  type MetricKind,
  type PluginHooks,
  type Projector,
  type SandboxHost,
  type SandboxInstance,
  type SandboxStats,
} from '../../plugin-api/index.js';
import { buildCommand, probeBwrap, type Confinement } from './confine.js';
import { CODECS, FrameReader, codecOf, frame, sanitize, suspicious, type Codec, type CodecName } from './frame.js';

const RUNNER = fileURLToPath(new URL('./runner.mjs', import.meta.url));
const JS_ENTRY = /\.(mjs|cjs|js)$/;

/** Options of a process sandbox host; the default export uses the defaults. */
export interface ProcessHostOptions {
  /** Payload encoding a JavaScript plugin's runner uses. Executables choose their own. Default `json`. */
  codec?: CodecName;
  /** `auto`: bwrap when it works, else unconfined (logged). `require`: refuse to load without it. `off`: never. */
  confine?: 'auto' | 'require' | 'off';
  /** Restart backoff: first delay, cap, and how long a child must live for the delay to reset. */
  backoff?: { initialMs?: number; maxMs?: number; healthyMs?: number };
  /** Largest frame either side may send; a child that sends more is killed. Default 8 MiB. */
  maxFrameBytes?: number;
  /** How long a child may take from spawn to `ready`. Default 10 s. */
  startTimeoutMs?: number;
}

/** Stats of a process plugin, beyond the common ones. */
export interface ProcessStats extends SandboxStats {
  restarts: number;
  /** Host pid of the plugin's process (inside bwrap: the sandboxed program, not bwrap). */
  pid?: number;
  state: 'starting' | 'ready' | 'backoff' | 'disposed';
  /** Whether the child runs under bwrap, and why not when it does not. */
  confined: boolean;
  confinedReason?: string;
  codec: CodecName;
  /** Delay before the last (or pending) restart, in milliseconds. */
  backoffMs?: number;
}

const DEFAULTS = {
  codec: 'json' as CodecName,
  confine: 'auto' as 'auto' | 'require' | 'off',
  initialMs: 50,
  maxMs: 30_000,
  healthyMs: 10_000,
  maxFrameBytes: 8 << 20,
  startTimeoutMs: 10_000,
};

/** Pending host-function calls one child may have before further ones are refused. */
const MAX_HOST_IN_FLIGHT = 256;
/** stderr and log lines: longest line kept, and a token bucket bounding lines per second. */
const MAX_LINE = 4096;
const LOG_BURST = 200;
const LOG_PER_SEC = 50;
const STDERR_TAIL = 4096;
/** How long a disposed child gets to run its dispose hook and exit. */
const DISPOSE_GRACE_MS = 1000;
const MEMORY_SAMPLE_MS = 1000;

const LOG_LEVELS = new Set<LogLevel>(['trace', 'debug', 'info', 'warn', 'error']);

function str(v: unknown, what: string): string {
  if (typeof v !== 'string') throw new TypeError(`${what} must be a string`);
  return v;
}

function plainObject<T>(v: unknown, what: string): T | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) throw new TypeError(`${what} must be an object`);
  return v as T;
}

/** Guest-visible host functions and how each maps onto HostApi. */
const HOST_FNS: Record<string, (h: HostApi, a: unknown[]) => unknown> = {
  bext_publish: (h, a) => h.publish(str(a[0], 'topic'), a[1]),
  bext_log: (h, a) => {
    const level = LOG_LEVELS.has(a[0] as LogLevel) ? (a[0] as LogLevel) : 'info';
    h.log(level, String(a[1]).slice(0, MAX_LINE), plainObject(a[2], 'fields'));
  },
  bext_kv_get: (h, a) => h.kv.get(str(a[0], 'key')),
  bext_kv_set: (h, a) => h.kv.set(str(a[0], 'key'), str(a[1], 'value'), typeof a[2] === 'number' ? a[2] : undefined),
  bext_kv_del: (h, a) => h.kv.del(str(a[0], 'key')),
  bext_fetch: (h, a) => h.fetch(plainObject<FetchRequest>(a[0], 'request') ?? ({} as FetchRequest)),
  bext_metric: (h, a) => {
    if (typeof a[1] !== 'number') throw new TypeError('value must be a number');
    h.metric(str(a[0], 'name'), a[1], plainObject(a[2], 'labels'), a[3] as MetricKind | undefined);
  },
  bext_config: (h) => h.config(),
  bext_schedule: (h, a) => h.schedule(str(a[0], 'name'), str(a[1], 'cron'), plainObject(a[2], 'options')),
  bext_unschedule: (h, a) => h.unschedule(str(a[0], 'name')),
};

/** The host functions a plugin's grants unlock, plus bext_log and bext_config (every guest sees all of them; the kernel refuses ungranted calls). */
export function grantedFunctions(grants: readonly string[]): string[] {
  const out = new Set<string>(['bext_log', 'bext_config']);
  for (const g of grants) {
    const family = g.split(':')[0] as CapabilityFamily;
    const cap = CAPABILITIES[family];
    if (cap) for (const fn of cap.unlocks) if (fn in HOST_FNS) out.add(fn);
  }
  return [...out];
}

type Call = (hook: HookName, args: unknown[]) => Promise<unknown>;

/** The trusted-signature wrapper of each hook; a missing hook is a compile error. */
const WRAPPERS: { [K in HookName]: (call: Call, p: Projector) => HookSignatures[K] } = {
  onConnect: (call) => (info) => call('onConnect', [info]) as ReturnType<HookSignatures['onConnect']>,
  onRequest: (call, p) => (req) => call('onRequest', [p.request(req)]) as ReturnType<HookSignatures['onRequest']>,
  onRoute: (call, p) => (req) => call('onRoute', [p.request(req)]) as ReturnType<HookSignatures['onRoute']>,
  onRender: (call, p) => async (req, next) => {
    const r = (await call('onRender', [p.request(req)])) as Awaited<ReturnType<HookSignatures['onRender']>> | { action: 'next' };
    return r && typeof r === 'object' && 'action' in r && r.action === 'next' ? next() : r;
  },
  onResponse: (call, p) => (req, res) => call('onResponse', [p.request(req), p.response(res)]) as ReturnType<HookSignatures['onResponse']>,
  onPublish: (call) => (msg) =>
    call('onPublish', [{ topic: msg.topic, data: msg.data, publisher: msg.publisher }]) as ReturnType<HookSignatures['onPublish']>,
  onSchedule: (call) => (task) =>
    call('onSchedule', [{ name: task.name, scheduledAt: task.scheduledAt, firedAt: task.firedAt, run: task.run }]) as ReturnType<HookSignatures['onSchedule']>,
};

interface Pending {
  resolve(v: unknown): void;
  reject(e: unknown): void;
  hook: HookName;
  start: number;
  deadline: number;
}

/** One spawned child and what is known about it. */
class Child {
  readonly proc: ChildProcess;
  codec: Codec = CODECS.json;
  phase: 'hello' | 'init' | 'ready' = 'hello';
  dead = false;
  exited = false;
  readonly exitedPromise: Promise<void>;
  /** Host pid of the program (below bwrap when confined). */
  pid: number | undefined;
  readyAt = 0;
  hooks: HookName[] = [];
  hostInFlight = 0;
  stderrTail = '';
  stderrLine = '';
  settleReady!: (err?: BextError) => void;
  readonly ready: Promise<void>;

  constructor(proc: ChildProcess) {
    this.proc = proc;
    // A child that could not be spawned emits 'error' and possibly no 'exit'.
    this.exitedPromise = new Promise((resolve) => {
      proc.once('exit', () => resolve());
      proc.once('error', () => resolve());
    });
    this.ready = new Promise<void>((resolve, reject) => {
      this.settleReady = (err) => (err ? reject(err) : resolve());
    });
    // A load failure is reported through load(); a restart failure through the log.
    this.ready.catch(() => undefined);
  }

  send(msg: unknown): void {
    if (this.dead) return;
    this.proc.stdin!.write(frame(this.codec.encode(msg)));
  }
}

/** A process plugin: one child at a time, replaced when broken. */
export class ProcessInstance implements SandboxInstance {
  readonly hooks: PluginHooks = {};
  readonly #spec: LoadSpec;
  readonly #opts: typeof DEFAULTS;
  readonly #confinement: Confinement;
  readonly #argv: string[];
  readonly #readOnly: string[];
  readonly #fns: string[];
  readonly #name: string;
  #child: Child | undefined;
  #state: ProcessStats['state'] = 'starting';
  #pending = new Map<number, Pending>();
  #nextId = 1;
  #deadlineTimer: NodeJS.Timeout | undefined;
  #restartTimer: NodeJS.Timeout | undefined;
  #failures = 0;
  #loaded = false;
  #backoffMs: number | undefined;
  #restartAt = 0;
  #readyWaiters: { resolve(): void; reject(e: unknown): void }[] = [];
  #stats = { calls: 0, errors: 0, timeUs: 0, restarts: 0 };
  #memory = { at: -Infinity, bytes: undefined as number | undefined };
  #logTokens = LOG_BURST;
  #logRefillAt = performance.now();
  #logDropped = 0;

  constructor(spec: LoadSpec, opts: typeof DEFAULTS, confinement: Confinement, argv: string[], readOnly: string[]) {
    this.#spec = spec;
    this.#opts = opts;
    this.#confinement = confinement;
    this.#argv = argv;
    this.#readOnly = readOnly;
    this.#fns = grantedFunctions(spec.grants);
    this.#name = spec.manifest.name;
  }

  /** Starts the first child; rejects with BEXT_ERR_PLUGIN_LOAD when it cannot become ready. */
  async start(): Promise<void> {
    const child = this.#spawn();
    await child.ready;
    const projector = makeProjector(this.#spec.manifest.needs);
    const call: Call = (hook, args) => this.#call(hook, args);
    const hooks = this.hooks as Record<HookName, unknown>;
    for (const h of child.hooks) hooks[h] = WRAPPERS[h](call, projector);
    this.#loaded = true;
  }

  stats(): ProcessStats {
    const child = this.#child;
    const s: ProcessStats = {
      ...this.#stats,
      state: this.#state,
      confined: this.#confinement.ok,
      codec: child?.codec.name ?? this.#opts.codec,
    };
    if (!this.#confinement.ok) s.confinedReason = this.#confinement.reason;
    if (this.#backoffMs !== undefined) s.backoffMs = this.#backoffMs;
    if (child?.pid !== undefined && !child.dead) {
      s.pid = child.pid;
      const now = performance.now();
      if (now - this.#memory.at >= MEMORY_SAMPLE_MS) {
        this.#memory = { at: now, bytes: readRss(child.pid) };
      }
      if (this.#memory.bytes !== undefined) s.memoryBytes = this.#memory.bytes;
    }
    return s;
  }

  /** Resolves when a child is ready to serve calls (after a restart, for instance). */
  whenReady(): Promise<void> {
    if (this.#state === 'ready') return Promise.resolve();
    if (this.#state === 'disposed') return Promise.reject(this.#disposedError());
    return new Promise((resolve, reject) => this.#readyWaiters.push({ resolve, reject }));
  }

  /** Replaces the child now, without waiting for a backoff. */
  async restart(): Promise<void> {
    if (this.#state === 'disposed') throw this.#disposedError();
    if (this.#restartTimer) clearTimeout(this.#restartTimer);
    this.#restartTimer = undefined;
    const old = this.#child;
    if (old) this.#kill(old, new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "${this.#name}": its process was restarted`), false);
    this.#stats.restarts++;
    await this.#spawn().ready;
  }

  async dispose(): Promise<void> {
    if (this.#state === 'disposed') return;
    this.#state = 'disposed';
    if (this.#restartTimer) clearTimeout(this.#restartTimer);
    if (this.#deadlineTimer) clearTimeout(this.#deadlineTimer);
    this.#restartTimer = this.#deadlineTimer = undefined;
    const err = this.#disposedError();
    this.#failPending(err);
    for (const w of this.#readyWaiters.splice(0)) w.reject(err);
    const child = this.#child;
    if (!child) return;
    // Closing stdin asks the runner to run the plugin's dispose and exit.
    child.proc.stdin!.end();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([child.exitedPromise, new Promise<void>((r) => (timer = setTimeout(r, DISPOSE_GRACE_MS)))]);
    clearTimeout(timer);
    this.#kill(child, err, false);
    await child.exitedPromise;
  }

  #disposedError(): BextError {
    return new BextError('BEXT_ERR_SHUTDOWN', `plugin "${this.#name}" was disposed`);
  }

  // ---- calls ---------------------------------------------------------------

  #call(hook: HookName, args: unknown[]): Promise<unknown> {
    this.#stats.calls++;
    const child = this.#child;
    if (!child || this.#state !== 'ready') {
      this.#stats.errors++;
      return Promise.reject(this.#unavailable());
    }
    const id = this.#nextId++;
    let bytes: Buffer;
    try {
      bytes = frame(child.codec.encode({ t: 'call', id, hook, args }));
    } catch (e) {
      this.#stats.errors++;
      return Promise.reject(
        new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "${this.#name}" ${hook}: the arguments cannot be encoded: ${(e as Error).message}`, { cause: e }),
      );
    }
    if (bytes.length - 4 > this.#opts.maxFrameBytes) {
      this.#stats.errors++;
      return Promise.reject(
        new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "${this.#name}" ${hook}: the arguments are ${bytes.length} bytes, over the ${this.#opts.maxFrameBytes}-byte frame limit`),
      );
    }
    return new Promise((resolve, reject) => {
      const start = performance.now();
      this.#pending.set(id, { resolve, reject, hook, start, deadline: start + this.#spec.limits.timeoutMs });
      child.proc.stdin!.write(bytes);
      if (!this.#deadlineTimer) this.#armDeadline();
    });
  }

  #unavailable(): BextError {
    if (this.#state === 'disposed') return this.#disposedError();
    const wait = Math.max(0, Math.round(this.#restartAt - performance.now()));
    return new BextError(
      'BEXT_ERR_PLUGIN_FAILED',
      `plugin "${this.#name}": its process is ${this.#state === 'backoff' ? `restarting (next attempt in ${wait} ms)` : 'starting'}`,
      { details: { plugin: this.#name, state: this.#state } },
    );
  }

  // Every call has the same timeout and the map keeps issue order, so the first
  // pending call always has the earliest deadline: one timer covers them all.
  #armDeadline(): void {
    const first = this.#pending.values().next().value as Pending | undefined;
    if (!first) return;
    this.#deadlineTimer = setTimeout(this.#onDeadline, Math.max(0, first.deadline - performance.now()));
    this.#deadlineTimer.unref();
  }

  #onDeadline = (): void => {
    this.#deadlineTimer = undefined;
    const first = this.#pending.values().next().value as Pending | undefined;
    if (!first) return;
    // Timers fire on a millisecond clock; allow for rounding before calling it late.
    if (first.deadline - performance.now() > 1) return this.#armDeadline();
    const child = this.#child;
    const err = new BextError(
      'BEXT_ERR_PLUGIN_TIMEOUT',
      `plugin "${this.#name}" ${first.hook} missed its ${this.#spec.limits.timeoutMs} ms deadline; its process was killed and will be restarted`,
      { details: { plugin: this.#name, hook: first.hook } },
    );
    if (child) this.#kill(child, err, true);
    else this.#failPending(err);
  };

  #settle(id: number): Pending | undefined {
    const p = this.#pending.get(id);
    if (!p) return undefined;
    this.#pending.delete(id);
    this.#stats.timeUs += Math.round((performance.now() - p.start) * 1000);
    return p;
  }

  #failPending(err: BextError): void {
    if (this.#pending.size === 0) return;
    const now = performance.now();
    for (const p of this.#pending.values()) {
      this.#stats.errors++;
      this.#stats.timeUs += Math.round((now - p.start) * 1000);
      p.reject(err);
    }
    this.#pending.clear();
    if (this.#deadlineTimer) clearTimeout(this.#deadlineTimer);
    this.#deadlineTimer = undefined;
  }

  // ---- the child -----------------------------------------------------------

  #spawn(): Child {
    const { file, args } = buildCommand({
      argv: this.#argv,
      pluginDir: this.#spec.dir,
      readOnly: this.#readOnly,
      network: this.#spec.grants.some((g) => g.startsWith('fetch:')),
      dataBytes: Math.round((this.#spec.limits.memoryMb + 128) * (1 << 20)),
      confine: this.#confinement.ok,
    });
    // A process group of its own, so a kill also reaches anything the plugin spawned.
    const proc = spawn(file, args, {
      cwd: this.#spec.dir,
      env: { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: this.#spec.dir },
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true,
    });
    const child = new Child(proc);
    this.#child = child;
    this.#state = 'starting';
    this.#memory = { at: -Infinity, bytes: undefined };

    const reader = new FrameReader(
      this.#opts.maxFrameBytes,
      (payload) => this.#onFrame(child, payload),
      (len) =>
        this.#kill(
          child,
          new BextError('BEXT_ERR_SANDBOX_LIMIT', `plugin "${this.#name}" sent a ${len}-byte frame, over the ${this.#opts.maxFrameBytes}-byte limit; its process was killed`),
          true,
        ),
    );
    proc.stdout!.on('data', (chunk: Buffer) => {
      if (!child.dead) reader.push(chunk);
    });
    proc.stderr!.setEncoding('utf8');
    proc.stderr!.on('data', (s: string) => this.#onStderr(child, s));
    // Writes to a child that just died fail with EPIPE; the exit handler reports the death.
    proc.stdin!.on('error', () => undefined);
    proc.on('error', (e) => this.#kill(child, new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "${this.#name}": cannot start ${file}: ${e.message}`, { cause: e }), true));
    proc.once('exit', (code, signal) => {
      child.exited = true;
      if (child.dead) return;
      // stderr may still hold the reason (an out-of-memory report); give it a moment to drain.
      const settle = () => this.#kill(child, this.#exitError(child, code, signal), true);
      const t = setTimeout(settle, 200);
      proc.once('close', () => {
        clearTimeout(t);
        settle();
      });
    });

    const startTimer = setTimeout(
      () => this.#kill(child, new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "${this.#name}": its process did not become ready within ${this.#opts.startTimeoutMs} ms`), true),
      this.#opts.startTimeoutMs,
    );
    startTimer.unref();
    child.ready.then(
      () => {
        clearTimeout(startTimer);
        if (this.#child !== child || this.#state === 'disposed') return;
        this.#state = 'ready';
        for (const w of this.#readyWaiters.splice(0)) w.resolve();
      },
      () => clearTimeout(startTimer),
    );
    return child;
  }

  #exitError(child: Child, code: number | null, signal: NodeJS.Signals | null): BextError {
    const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
    const tail = child.stderrTail.trim().split('\n').slice(-3).join(' | ');
    if (/heap out of memory|Reached heap limit|Allocation failed|Cannot allocate memory|bad_alloc|MemoryError/i.test(child.stderrTail)) {
      return new BextError('BEXT_ERR_SANDBOX_LIMIT', `plugin "${this.#name}" ran out of memory (limit ${this.#spec.limits.memoryMb} MiB); its process ${how}`);
    }
    if (child.phase !== 'ready') {
      return new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "${this.#name}": its process ${how} before it was ready${tail ? `: ${tail}` : ''}`);
    }
    return new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "${this.#name}": its process ${how}${tail ? `: ${tail}` : ''}`);
  }

  /**
   * Kills a child and reports its death once: pending calls fail with `err`,
   * and a replacement is scheduled when `replace` is set and the child was current.
   */
  #kill(child: Child, err: BextError, replace: boolean): void {
    if (child.dead) return;
    child.dead = true;
    if (!child.exited) {
      const pid = child.proc.pid;
      if (pid !== undefined) {
        try {
          process.kill(-pid, 'SIGKILL');
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
        }
      }
      child.proc.kill('SIGKILL');
    }
    child.settleReady(err);
    if (this.#child !== child) return;
    this.#child = undefined;
    this.#failPending(err);
    // Before the first ready, load() reports the failure and no replacement is due.
    if (this.#state === 'disposed' || !this.#loaded) return;
    this.#spec.host.log('warn', `process plugin stopped: ${err.message}`, { code: err.code, sandbox: 'process' });
    if (replace) this.#scheduleRestart(child);
  }

  #scheduleRestart(dead: Child): void {
    const now = performance.now();
    if (dead.readyAt > 0 && now - dead.readyAt >= this.#opts.healthyMs) this.#failures = 0;
    this.#failures++;
    const delay = Math.min(this.#opts.maxMs, this.#opts.initialMs * 2 ** Math.min(this.#failures - 1, 30));
    this.#backoffMs = delay;
    this.#restartAt = now + delay;
    this.#state = 'backoff';
    this.#restartTimer = setTimeout(() => {
      this.#restartTimer = undefined;
      if (this.#state === 'disposed') return;
      this.#stats.restarts++;
      const child = this.#spawn();
      child.ready.catch((e: BextError) => this.#spec.host.log('warn', `process plugin restart failed: ${e.message}`, { code: e.code, sandbox: 'process' }));
    }, delay);
  }

  // ---- frames from the child -------------------------------------------------

  #onFrame(child: Child, payload: Buffer): boolean {
    if (child.dead) return false;
    let msg: Record<string, unknown>;
    try {
      const codec = child.phase === 'hello' ? codecOf(payload) : child.codec;
      const v = codec.decode(payload);
      if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new TypeError('a message must be an object');
      msg = (suspicious(payload) ? sanitize(v) : v) as Record<string, unknown>;
      if (child.phase === 'hello') child.codec = codec;
    } catch (e) {
      this.#protocolError(child, `an undecodable frame (${(e as Error).message})`);
      return false;
    }
    if (child.phase === 'hello' && msg.t !== 'hello') return this.#protocolError(child, `${JSON.stringify(String(msg.t)).slice(0, 40)} before hello`);
    try {
      return this.#dispatch(child, msg);
    } catch (e) {
      // Answering failed on this side (the config or a host result cannot be encoded, say).
      this.#kill(child, new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "${this.#name}": bext could not answer its process: ${(e as Error).message}`, { cause: e }), true);
      return false;
    }
  }

  #dispatch(child: Child, msg: Record<string, unknown>): boolean {
    switch (msg.t) {
      case 'result': {
        if (typeof msg.id !== 'number') return this.#protocolError(child, 'a result without an id');
        // An id that is not pending is ignored: ids are never reused, so it cannot answer another call.
        // null is how most languages say "no decision".
        this.#settle(msg.id)?.resolve(msg.value ?? undefined);
        break;
      }
      case 'error': {
        if (typeof msg.id !== 'number') return this.#protocolError(child, 'an error without an id');
        const p = this.#settle(msg.id);
        if (p) {
          this.#stats.errors++;
          const text = typeof msg.message === 'string' ? msg.message.slice(0, 2000) : 'the hook failed without a message';
          p.reject(new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "${this.#name}" ${p.hook}: ${text}`, { details: { plugin: this.#name, hook: p.hook } }));
        }
        break;
      }
      case 'host':
        this.#onHostCall(child, msg);
        break;
      case 'hello':
        if (child.phase !== 'hello') return this.#protocolError(child, 'a second hello');
        child.phase = 'init';
        child.send({
          t: 'init',
          v: 1,
          plugin: this.#name,
          hooks: HOOK_NAMES,
          fns: this.#fns,
          config: this.#spec.host.config(),
          maxFrameBytes: this.#opts.maxFrameBytes,
        });
        break;
      case 'ready': {
        if (child.phase !== 'init') return this.#protocolError(child, 'ready before init');
        const declared = Array.isArray(msg.hooks) ? msg.hooks : [];
        child.hooks = HOOK_NAMES.filter((h) => declared.includes(h));
        child.phase = 'ready';
        child.readyAt = performance.now();
        child.pid = programPid(child.proc.pid, this.#confinement.ok);
        child.settleReady();
        break;
      }
      case 'fatal': {
        const text = typeof msg.message === 'string' ? msg.message.slice(0, 2000) : 'no message';
        this.#kill(child, new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "${this.#name}": ${text}`), true);
        return false;
      }
      default:
        return this.#protocolError(child, `an unknown message type ${JSON.stringify(String(msg.t)).slice(0, 40)}`);
    }
    return !child.dead;
  }

  #protocolError(child: Child, what: string): false {
    this.#kill(child, new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "${this.#name}" broke the process protocol with ${what}; its process was killed`), true);
    return false;
  }

  #onHostCall(child: Child, msg: Record<string, unknown>): void {
    const id = typeof msg.id === 'number' ? msg.id : 0;
    const fn = typeof msg.fn === 'string' ? msg.fn : '';
    const reply = (r: { value?: unknown; error?: string; code?: string }) => {
      if (id === 0 || child.dead) return;
      try {
        child.send({ t: 'hostResult', id, ...r });
      } catch (e) {
        child.send({ t: 'hostResult', id, error: `the result of ${fn} cannot be encoded: ${(e as Error).message}` });
      }
    };
    const fail = (e: unknown) => {
      const be = e as Partial<BextError>;
      reply({ error: String(be?.message ?? e), ...(typeof be?.code === 'string' ? { code: be.code } : {}) });
    };
    const impl = Object.hasOwn(HOST_FNS, fn) ? HOST_FNS[fn] : undefined;
    if (!impl) return fail(new Error(`unknown host function ${JSON.stringify(fn.slice(0, 40))}`));
    if (fn === 'bext_log' && !this.#takeLogToken()) return;
    if (child.hostInFlight >= MAX_HOST_IN_FLIGHT) return fail(new Error(`more than ${MAX_HOST_IN_FLIGHT} host calls in flight`));
    // Every call goes to spec.host, granted or not: the kernel checks the grant and audits a refusal.
    let r: unknown;
    try {
      r = impl(this.#spec.host, Array.isArray(msg.args) ? msg.args : []);
    } catch (e) {
      return fail(e);
    }
    if (r !== null && typeof r === 'object' && typeof (r as Promise<unknown>).then === 'function') {
      child.hostInFlight++;
      (r as Promise<unknown>).then(
        (value) => {
          child.hostInFlight--;
          reply({ value });
        },
        (e) => {
          child.hostInFlight--;
          fail(e);
        },
      );
    } else reply({ value: r });
  }

  // ---- stderr and log bounds -----------------------------------------------

  #takeLogToken(): boolean {
    const now = performance.now();
    this.#logTokens = Math.min(LOG_BURST, this.#logTokens + ((now - this.#logRefillAt) / 1000) * LOG_PER_SEC);
    this.#logRefillAt = now;
    if (this.#logTokens < 1) {
      this.#logDropped++;
      return false;
    }
    this.#logTokens--;
    if (this.#logDropped > 0) {
      const n = this.#logDropped;
      this.#logDropped = 0;
      this.#spec.host.log('warn', `${n} log lines from the plugin process were dropped (over ${LOG_PER_SEC}/s)`, { sandbox: 'process' });
    }
    return true;
  }

  #onStderr(child: Child, s: string): void {
    child.stderrTail = (child.stderrTail + s).slice(-STDERR_TAIL);
    let text = child.stderrLine + s;
    let nl: number;
    while ((nl = text.indexOf('\n')) !== -1) {
      this.#stderrLine(child, text.slice(0, nl));
      text = text.slice(nl + 1);
    }
    // A line without an end is cut at MAX_LINE so a flood without newlines stays bounded.
    while (text.length > MAX_LINE) {
      this.#stderrLine(child, text.slice(0, MAX_LINE));
      text = text.slice(MAX_LINE);
    }
    child.stderrLine = text;
  }

  #stderrLine(child: Child, line: string): void {
    if (!line || !this.#takeLogToken()) return;
    this.#spec.host.log('warn', line.slice(0, MAX_LINE), { stream: 'stderr', sandbox: 'process', pid: child.pid ?? child.proc.pid });
  }
}

/** Host pid of the sandboxed program: below bwrap's own processes when confined. */
function programPid(pid: number | undefined, confined: boolean): number | undefined {
  if (pid === undefined || !confined) return pid;
  let cur = pid;
  for (let depth = 0; depth < 4; depth++) {
    let comm: string;
    let kids: string[];
    try {
      comm = readFileSync(`/proc/${cur}/comm`, 'utf8').trim();
      if (comm !== 'bwrap') return cur;
      kids = readFileSync(`/proc/${cur}/task/${cur}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
    } catch {
      // /proc without the children file (CONFIG_PROC_CHILDREN): report bwrap's pid.
      return cur;
    }
    if (kids.length === 0) return cur;
    cur = Number(kids[0]);
  }
  return cur;
}

function readRss(pid: number): number | undefined {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    // The process is gone or /proc is not there; memory is then unknown.
    return undefined;
  }
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) * 1024 : undefined;
}

/** The folder of an installed package, for binding it read-only into the sandbox. */
function packageDir(name: string): string | undefined {
  let dir: string;
  try {
    dir = path.dirname(createRequire(import.meta.url).resolve(name));
  } catch {
    return undefined;
  }
  while (dir !== path.dirname(dir)) {
    if (path.basename(dir) === name && existsSync(path.join(dir, 'package.json'))) return dir;
    dir = path.dirname(dir);
  }
  return undefined;
}

/** A process sandbox host with the given options. */
export function createProcessHost(options: ProcessHostOptions = {}): SandboxHost {
  const opts: typeof DEFAULTS = {
    codec: options.codec ?? DEFAULTS.codec,
    confine: options.confine ?? DEFAULTS.confine,
    initialMs: options.backoff?.initialMs ?? DEFAULTS.initialMs,
    maxMs: options.backoff?.maxMs ?? DEFAULTS.maxMs,
    healthyMs: options.backoff?.healthyMs ?? DEFAULTS.healthyMs,
    maxFrameBytes: options.maxFrameBytes ?? DEFAULTS.maxFrameBytes,
    startTimeoutMs: options.startTimeoutMs ?? DEFAULTS.startTimeoutMs,
  };
  let warned = false;
  return {
    kind: 'process',
    available() {
      if (process.platform === 'win32') return { ok: false, reason: 'the process sandbox needs a POSIX system' };
      if (!existsSync(RUNNER)) return { ok: false, reason: `${RUNNER} is missing` };
      return { ok: true };
    },
    async load(spec) {
      const name = spec.manifest.name;
      let argv: string[];
      const readOnly = [path.dirname(RUNNER)];
      if (JS_ENTRY.test(spec.entryPath)) {
        argv = [process.execPath, `--max-old-space-size=${Math.max(8, Math.round(spec.limits.memoryMb))}`, RUNNER, opts.codec, spec.entryPath];
        readOnly.push(path.dirname(path.dirname(process.execPath)));
        if (opts.codec === 'msgpack') {
          const dir = packageDir('msgpackr');
          if (dir) readOnly.push(dir);
        }
      } else {
        try {
          accessSync(spec.entryPath, fsConstants.X_OK);
        } catch (e) {
          throw new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "${name}": ${spec.entryPath} is neither a .js/.mjs module nor an executable`, {
            hint: 'make it executable (chmod +x) and have it speak sandboxes/process/PROTOCOL.md, or use a .mjs entry',
            cause: e,
          });
        }
        argv = [spec.entryPath];
      }
      let confinement: Confinement = { ok: false, reason: 'confinement is turned off (confine: "off")' };
      if (opts.confine !== 'off') {
        confinement = await probeBwrap();
        if (!confinement.ok && opts.confine === 'require') {
          throw new BextError('BEXT_ERR_SANDBOX_UNAVAILABLE', `plugin "${name}" needs bwrap confinement: ${confinement.reason}`, {
            hint: 'install bubblewrap (apt-get install bubblewrap) or allow unconfined process plugins',
          });
        }
        if (!confinement.ok && !warned) {
          warned = true;
          spec.host.log('warn', `process plugins run unconfined: ${confinement.reason}`, { sandbox: 'process' });
        }
      }
      const inst = new ProcessInstance(spec, opts, confinement, argv, readOnly);
      try {
        await inst.start();
      } catch (e) {
        await inst.dispose();
        if (e instanceof BextError && e.code === 'BEXT_ERR_PLUGIN_LOAD') throw e;
        throw new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "${name}": ${(e as Error).message}`, { cause: e });
      }
      return inst;
    },
  };
}

const processHost = createProcessHost();
export default processHost;
