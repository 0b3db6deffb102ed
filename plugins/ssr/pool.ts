/**
 * The render pool: worker threads that each hold one build of the site.
 *
 * - Dispatch: the least busy ready worker of the current generation, up to
 *   `concurrency` renders each; beyond that a bounded FIFO queue, and 503
 *   with Retry-After when it is full or a render waited too long in it.
 * - Timeout: a render past `renderTimeoutMs` answers 504 and is aborted in
 *   its worker; the worker is then pinged, and one that does not answer
 *   within `stallMs` (a synchronous loop) is terminated and replaced.
 * - Rotation: a worker past its request count, heap or uptime budget is
 *   replaced one at a time: its successor starts first, then it stops taking
 *   work, drains, and exits. Capacity never drops.
 * - Crashes: in-flight renders of a dead worker fail (500), and the worker is
 *   restarted after an exponential backoff (reset once a worker has lived
 *   long enough).
 * - Swap: a new build starts a new generation; when all its workers are
 *   ready it takes all new work and the old generation drains.
 */
import { Readable } from 'node:stream';
import { Worker } from 'node:worker_threads';
import { BextError, type ErrorCode } from '../../plugin-api/index.js';
import type { FromWorker, RenderSettings, ToWorker, WorkerInit, WorkerStats } from './protocol.js';

export interface PoolConfig {
  /** Workers per generation. */
  size: number;
  /** Renders in flight per worker (loaders await I/O, so more than one pays). */
  concurrency: number;
  maxQueue: number;
  queueTimeoutMs: number;
  renderTimeoutMs: number;
  /** After a timeout: how long a worker may take to answer a ping before it is treated as stuck. */
  stallMs: number;
  /** How long a new worker may take to load its build. */
  startTimeoutMs: number;
  rotation: { maxRequests: number; maxHeapMb: number; maxUptimeMs: number };
  backoff: { initialMs: number; maxMs: number };
  /** V8 old-space limit of a worker; past it the worker dies (and is restarted) instead of the process. */
  heapLimitMb: number;
  init: WorkerInit;
}

/** Something the pool did, for logs and metrics. */
export type PoolEvent =
  | { type: 'spawn'; worker: number; build: string }
  | { type: 'ready'; worker: number; build: string; ms: number }
  | { type: 'crash'; worker: number; build: string; code: number; error?: string; failed: number; restartInMs: number | null }
  | { type: 'rotate'; worker: number; build: string; reason: 'requests' | 'heap' | 'uptime' }
  | { type: 'retired'; worker: number; build: string }
  | { type: 'timeout'; worker: number; build: string }
  | { type: 'stalled'; worker: number; build: string }
  | { type: 'swap'; from: string | null; to: string }
  | { type: 'stats'; worker: number; stats: WorkerStats }
  | { type: 'error'; worker: number; build: string; what: string; stack: string };

/** A finished render: UTF-8 bytes, or a stream for streamed pages. */
export interface RenderResult {
  status: number;
  headers: Record<string, string>;
  body: Buffer | Readable;
  links: string[];
}

/** A render request as the pool sends it (without its id, which the pool assigns). */
export type RenderJob = ToWorker extends infer T ? (T extends { t: 'page' } | { t: 'island' } ? Omit<T, 'id'> : never) : never;

interface Job {
  id: number;
  msg: ToWorker;
  resolve: (r: RenderResult) => void;
  reject: (e: BextError) => void;
  timer: NodeJS.Timeout | null;
  slot: Slot | null;
  /** Set once a streamed render has sent its head. */
  stream: Readable | null;
}

type SlotState = 'starting' | 'ready' | 'draining' | 'dead';

interface Slot {
  id: number;
  worker: Worker;
  gen: Generation;
  state: SlotState;
  inflight: Map<number, Job>;
  served: number;
  heapUsed: number;
  startedAt: number;
  readyAt: number;
  /** This worker's request budget (jittered so workers do not all rotate at once). */
  maxRequests: number;
  maxUptimeMs: number;
  exiting: boolean;
  probe: { seq: number; timer: NodeJS.Timeout } | null;
  /** Started to replace a rotating worker: if it dies before it is ready, the old one simply stays. */
  successor: boolean;
  lastError?: string;
  onReady: { resolve: () => void; reject: (e: Error) => void } | null;
}

interface Generation {
  build: string;
  bundle: string;
  slots: Set<Slot>;
  /** Crashes in a row, for the backoff. */
  crashes: number;
  settings: RenderSettings[] | null;
  islands: Record<string, RenderSettings> | null;
  retired: boolean;
  restarts: Set<NodeJS.Timeout>;
}

/** What a generation's workers report about the build they loaded. */
export interface BuildSettings {
  build: string;
  routes: RenderSettings[];
  islands: Record<string, RenderSettings>;
}

function jitter(n: number): number {
  return Math.max(1, Math.round(n * (0.9 + Math.random() * 0.2)));
}

function fail(code: ErrorCode, message: string, details?: Record<string, unknown>): BextError {
  return new BextError(code, message, details ? { details } : {});
}

export class RenderPool {
  readonly #cfg: PoolConfig;
  readonly #emit: (e: PoolEvent) => void;
  #current: Generation | null = null;
  /** Older generations still draining. */
  #old = new Set<Generation>();
  #queue: Job[] = [];
  #qHead = 0;
  #seq = 0;
  #slotSeq = 0;
  #rotating: Slot | null = null;
  #closed = false;
  #tick: NodeJS.Timeout;
  /** Totals since start. */
  readonly totals = { renders: 0, failed: 0, timeouts: 0, crashes: 0, rotations: 0, rejected: 0, swaps: 0 };

  constructor(cfg: PoolConfig, onEvent: (e: PoolEvent) => void = () => undefined) {
    this.#cfg = cfg;
    this.#emit = onEvent;
    // Uptime budgets are checked here; request and heap budgets when a render ends or stats arrive.
    this.#tick = setInterval(() => {
      for (const s of this.#current?.slots ?? []) this.#checkRotate(s);
    }, 1000);
    this.#tick.unref();
  }

  /** The build the current generation runs, or null before the first start. */
  get build(): string | null {
    return this.#current?.build ?? null;
  }

  /**
   * Starts a generation for a bundle and makes it current once all its
   * workers are ready; the previous generation then drains. Rejects (and
   * leaves the previous generation serving) when the new build's workers
   * cannot start.
   */
  async swap(bundle: string, build: string): Promise<BuildSettings> {
    if (this.#closed) throw fail('BEXT_ERR_SHUTDOWN', 'the render pool is closed');
    const gen: Generation = { build, bundle, slots: new Set(), crashes: 0, settings: null, islands: null, retired: false, restarts: new Set() };
    const readies: Promise<void>[] = [];
    for (let i = 0; i < this.#cfg.size; i++) readies.push(this.#spawn(gen).ready);
    try {
      await Promise.all(readies);
    } catch (e) {
      this.#retire(gen, true);
      throw fail('BEXT_ERR_SSR_BUILD', `build ${build} could not start its render workers: ${(e as Error).message}`);
    }
    const prev = this.#current;
    this.#current = gen;
    this.totals.swaps++;
    this.#emit({ type: 'swap', from: prev?.build ?? null, to: build });
    if (prev) this.#retire(prev, false);
    this.#pump();
    return { build, routes: gen.settings!, islands: gen.islands! };
  }

  /** Renders through a worker of the current generation. Rejects with a BextError (status and code). */
  render(job: RenderJob): Promise<RenderResult> {
    if (this.#closed) return Promise.reject(fail('BEXT_ERR_SHUTDOWN', 'the render pool is closed'));
    return new Promise<RenderResult>((resolve, reject) => {
      const id = ++this.#seq;
      const j: Job = { id, msg: { ...job, id } as ToWorker, resolve, reject, timer: null, slot: null, stream: null };
      const s = this.#pick();
      if (s) return this.#send(s, j);
      if (this.#queue.length - this.#qHead >= this.#cfg.maxQueue) {
        this.totals.rejected++;
        return reject(fail('BEXT_ERR_SSR_OVERLOADED', `all render workers are busy and ${this.#cfg.maxQueue} renders are queued`));
      }
      j.timer = setTimeout(() => {
        const i = this.#queue.indexOf(j, this.#qHead);
        if (i === -1) return;
        this.#queue.splice(i, 1);
        this.totals.rejected++;
        reject(fail('BEXT_ERR_SSR_OVERLOADED', `no render worker was free within ${this.#cfg.queueTimeoutMs} ms`));
      }, this.#cfg.queueTimeoutMs);
      this.#queue.push(j);
    });
  }

  /** Renders queued and in flight. */
  get pending(): { queued: number; inflight: number } {
    let inflight = 0;
    for (const g of this.#generations()) for (const s of g.slots) inflight += s.inflight.size;
    return { queued: this.#queue.length - this.#qHead, inflight };
  }

  /** A view of every worker, for the stats route. */
  snapshot(): { build: string | null; queued: number; rotating: number | null; workers: { id: number; build: string; state: SlotState; inflight: number; served: number; heapMb: number; uptimeS: number }[]; totals: RenderPool['totals'] } {
    const now = Date.now();
    const workers = [];
    for (const g of this.#generations()) {
      for (const s of g.slots) {
        workers.push({ id: s.id, build: g.build, state: s.state, inflight: s.inflight.size, served: s.served, heapMb: Math.round(s.heapUsed / 1048576), uptimeS: Math.round((now - s.startedAt) / 1000) });
      }
    }
    return { build: this.build, queued: this.#queue.length - this.#qHead, rotating: this.#rotating?.id ?? null, workers, totals: { ...this.totals } };
  }

  /** Terminates a worker as if it had crashed (for operators and tests of recovery). */
  kill(workerId: number): boolean {
    for (const g of this.#generations()) {
      for (const s of g.slots) {
        if (s.id === workerId && s.state !== 'dead') {
          s.lastError = 'killed on request';
          void s.worker.terminate();
          return true;
        }
      }
    }
    return false;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#tick);
    for (let i = this.#qHead; i < this.#queue.length; i++) {
      const j = this.#queue[i]!;
      if (j.timer) clearTimeout(j.timer);
      j.reject(fail('BEXT_ERR_SHUTDOWN', 'the server is shutting down'));
    }
    this.#queue = [];
    this.#qHead = 0;
    const exits: Promise<unknown>[] = [];
    for (const g of this.#generations()) {
      for (const t of g.restarts) clearTimeout(t);
      for (const s of g.slots) {
        s.exiting = true;
        this.#failInflight(s, 'BEXT_ERR_SHUTDOWN', 'the server is shutting down');
        exits.push(s.worker.terminate());
      }
    }
    await Promise.allSettled(exits);
  }

  // ------------------------------------------------------------ internals

  *#generations(): Generator<Generation> {
    if (this.#current) yield this.#current;
    yield* this.#old;
  }

  #spawn(gen: Generation): { slot: Slot; ready: Promise<void> } {
    const cfg = this.#cfg;
    const worker = new Worker(gen.bundle, {
      workerData: cfg.init,
      // Stacks of page errors point at the site's files, not the bundle.
      execArgv: ['--enable-source-maps'],
      resourceLimits: { maxOldGenerationSizeMb: cfg.heapLimitMb },
    });
    const slot: Slot = {
      id: ++this.#slotSeq,
      worker,
      gen,
      state: 'starting',
      inflight: new Map(),
      served: 0,
      heapUsed: 0,
      startedAt: Date.now(),
      readyAt: 0,
      maxRequests: jitter(cfg.rotation.maxRequests),
      maxUptimeMs: jitter(cfg.rotation.maxUptimeMs),
      exiting: false,
      probe: null,
      successor: false,
      onReady: null,
    };
    gen.slots.add(slot);
    this.#emit({ type: 'spawn', worker: slot.id, build: gen.build });
    const ready = new Promise<void>((resolve, reject) => (slot.onReady = { resolve, reject }));
    ready.catch(() => undefined);
    const startTimer = setTimeout(() => {
      if (slot.state !== 'starting') return;
      slot.lastError = `did not load its build within ${cfg.startTimeoutMs} ms`;
      void worker.terminate();
    }, cfg.startTimeoutMs);
    startTimer.unref();
    worker.on('message', (m: FromWorker) => this.#onMessage(slot, m));
    worker.on('error', (e) => {
      slot.lastError = e?.stack ?? String(e);
    });
    worker.on('exit', (code) => {
      clearTimeout(startTimer);
      this.#onExit(slot, code);
    });
    return { slot, ready };
  }

  #onMessage(slot: Slot, m: FromWorker): void {
    switch (m.t) {
      case 'ready': {
        if (slot.state !== 'starting') return;
        slot.state = 'ready';
        slot.readyAt = Date.now();
        slot.gen.settings ??= m.settings;
        slot.gen.islands ??= m.islands;
        this.#emit({ type: 'ready', worker: slot.id, build: slot.gen.build, ms: slot.readyAt - slot.startedAt });
        slot.onReady?.resolve();
        slot.onReady = null;
        this.#pump();
        return;
      }
      case 'done': {
        const j = slot.inflight.get(m.id);
        if (!j) return;
        this.#finish(slot, j);
        j.resolve({ status: m.status, headers: m.headers, body: Buffer.from(m.body.buffer, m.body.byteOffset, m.body.byteLength), links: m.links });
        this.#after(slot);
        return;
      }
      case 'fail': {
        const j = slot.inflight.get(m.id);
        if (!j) return;
        this.#finish(slot, j);
        this.totals.failed++;
        const e = fail(m.code === 'BEXT_ERR_NOT_FOUND' ? 'BEXT_ERR_NOT_FOUND' : 'BEXT_ERR_SSR_RENDER', m.message.split('\n')[0]!);
        // The worker's status wins (400 for a malformed island request); the stack goes to the log, never to the client.
        Object.defineProperty(e, 'status', { value: m.status });
        this.#emit({ type: 'error', worker: slot.id, build: slot.gen.build, what: describe(j.msg), stack: m.message });
        if (j.stream) j.stream.destroy(e);
        else j.reject(e);
        this.#after(slot);
        return;
      }
      case 'head': {
        const j = slot.inflight.get(m.id);
        if (!j) return;
        if (j.timer) clearTimeout(j.timer);
        j.timer = null;
        const w = slot.worker;
        const id = m.id;
        j.stream = new Readable({
          read() {},
          destroy(err, cb) {
            // The client left (or the pipeline failed): stop React in the worker.
            if (slot.inflight.has(id)) w.postMessage({ t: 'abort', id } satisfies ToWorker);
            cb(err);
          },
        });
        j.resolve({ status: m.status, headers: m.headers, body: j.stream, links: m.links });
        return;
      }
      case 'chunk': {
        const j = slot.inflight.get(m.id);
        if (j?.stream && !j.stream.destroyed) j.stream.push(m.data);
        return;
      }
      case 'end': {
        const j = slot.inflight.get(m.id);
        if (!j) return;
        this.#finish(slot, j);
        if (!j.stream) j.reject(fail('BEXT_ERR_SSR_RENDER', `${describe(j.msg)}: the worker ended a stream it never started`));
        else if (!j.stream.destroyed) j.stream.push(null);
        this.#after(slot);
        return;
      }
      case 'pong': {
        if (slot.probe && slot.probe.seq === m.seq) {
          clearTimeout(slot.probe.timer);
          slot.probe = null;
        }
        return;
      }
      case 'stats': {
        slot.heapUsed = m.heapUsed;
        this.#emit({ type: 'stats', worker: slot.id, stats: m });
        this.#checkRotate(slot);
        return;
      }
    }
  }

  #finish(slot: Slot, j: Job): void {
    slot.inflight.delete(j.id);
    if (j.timer) clearTimeout(j.timer);
    j.timer = null;
    slot.served++;
    this.totals.renders++;
  }

  /** After a render leaves a worker: retire a drained worker, consider rotation, feed the queue. */
  #after(slot: Slot): void {
    if (slot.state === 'draining' && slot.inflight.size === 0) this.#stop(slot);
    else this.#checkRotate(slot);
    this.#pump();
  }

  #pick(): Slot | null {
    const g = this.#current;
    if (!g) return null;
    let best: Slot | null = null;
    const max = this.#cfg.concurrency;
    for (const s of g.slots) {
      if (s.state !== 'ready' || s.inflight.size >= max) continue;
      if (!best || s.inflight.size < best.inflight.size) best = s;
    }
    return best;
  }

  #send(slot: Slot, j: Job): void {
    j.slot = slot;
    slot.inflight.set(j.id, j);
    j.timer = setTimeout(() => this.#onTimeout(slot, j), this.#cfg.renderTimeoutMs);
    slot.worker.postMessage(j.msg);
  }

  #pump(): void {
    while (this.#qHead < this.#queue.length) {
      const s = this.#pick();
      if (!s) break;
      const j = this.#queue[this.#qHead]!;
      this.#queue[this.#qHead++] = undefined as unknown as Job;
      if (j.timer) clearTimeout(j.timer);
      this.#send(s, j);
    }
    if (this.#qHead > 1024 && this.#qHead * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#qHead);
      this.#qHead = 0;
    }
  }

  #onTimeout(slot: Slot, j: Job): void {
    if (!slot.inflight.has(j.id)) return;
    slot.inflight.delete(j.id);
    j.timer = null;
    this.totals.timeouts++;
    this.#emit({ type: 'timeout', worker: slot.id, build: slot.gen.build });
    j.reject(fail('BEXT_ERR_SSR_TIMEOUT', `${describe(j.msg)} did not render within ${this.#cfg.renderTimeoutMs} ms`));
    slot.worker.postMessage({ t: 'abort', id: j.id } satisfies ToWorker);
    if (slot.state === 'draining' && slot.inflight.size === 0) this.#stop(slot);
    this.#probe(slot);
  }

  /** Pings a worker after a timeout; one whose event loop does not answer is stuck and replaced. */
  #probe(slot: Slot): void {
    if (slot.probe || slot.state === 'dead') return;
    const seq = ++this.#seq;
    const timer = setTimeout(() => {
      slot.probe = null;
      this.#emit({ type: 'stalled', worker: slot.id, build: slot.gen.build });
      slot.lastError = `stopped answering (no pong within ${this.#cfg.stallMs} ms after a render timeout)`;
      void slot.worker.terminate();
    }, this.#cfg.stallMs);
    slot.probe = { seq, timer };
    slot.worker.postMessage({ t: 'ping', seq } satisfies ToWorker);
  }

  #checkRotate(slot: Slot): void {
    if (this.#closed || this.#rotating || slot.state !== 'ready' || slot.gen !== this.#current) return;
    const r = this.#cfg.rotation;
    const reason = slot.served >= slot.maxRequests ? 'requests' : slot.heapUsed >= r.maxHeapMb * 1048576 ? 'heap' : Date.now() - slot.startedAt >= slot.maxUptimeMs ? 'uptime' : null;
    if (!reason) return;
    this.#rotating = slot;
    this.totals.rotations++;
    this.#emit({ type: 'rotate', worker: slot.id, build: slot.gen.build, reason });
    const { slot: next, ready } = this.#spawn(slot.gen);
    next.successor = true;
    ready.then(
      () => {
        this.#rotating = null;
        if (slot.state === 'ready') {
          slot.state = 'draining';
          if (slot.inflight.size === 0) this.#stop(slot);
        }
        this.#pump();
      },
      () => {
        // The successor did not start (its crash is handled and backed off); the old worker keeps serving.
        this.#rotating = null;
      },
    );
  }

  /** Ends a worker that has nothing in flight (drained or retired). */
  #stop(slot: Slot): void {
    if (slot.state === 'dead' || slot.exiting) return;
    slot.exiting = true;
    slot.state = 'draining';
    void slot.worker.terminate();
  }

  /** Retires a generation: its workers drain and stop; none is restarted. */
  #retire(gen: Generation, now: boolean): void {
    gen.retired = true;
    for (const t of gen.restarts) clearTimeout(t);
    gen.restarts.clear();
    if (gen.slots.size) this.#old.add(gen);
    for (const s of gen.slots) {
      if (now || s.state === 'starting' || s.inflight.size === 0) this.#stop(s);
      else s.state = 'draining';
    }
  }

  #failInflight(slot: Slot, code: ErrorCode, message: string): number {
    const n = slot.inflight.size;
    for (const j of slot.inflight.values()) {
      if (j.timer) clearTimeout(j.timer);
      const e = fail(code, message);
      if (j.stream) j.stream.destroy(e);
      else j.reject(e);
    }
    slot.inflight.clear();
    return n;
  }

  #onExit(slot: Slot, code: number): void {
    const gen = slot.gen;
    const expected = slot.exiting;
    slot.state = 'dead';
    gen.slots.delete(slot);
    if (slot.probe) clearTimeout(slot.probe.timer);
    if (this.#rotating === slot) this.#rotating = null;
    if (gen.retired && gen.slots.size === 0) this.#old.delete(gen);
    if (expected) {
      // Stopped on purpose (drained, retired, or a generation whose swap was refused).
      slot.onReady?.reject(new Error('stopped before it was ready'));
      slot.onReady = null;
      this.#emit({ type: 'retired', worker: slot.id, build: gen.build });
      this.#pump();
      return;
    }
    const error = slot.lastError ?? `exited with code ${code}`;
    const failed = this.#failInflight(slot, 'BEXT_ERR_SSR_CRASHED', `the render worker died: ${error.split('\n')[0]}`);
    this.totals.crashes++;
    slot.onReady?.reject(new Error(error.split('\n')[0]));
    slot.onReady = null;
    // A worker that lived a while resets the backoff: this is a new run of bad luck, not a loop.
    if (slot.readyAt && Date.now() - slot.readyAt > 10_000) gen.crashes = 0;
    gen.crashes++;
    let restartInMs: number | null = null;
    if (!this.#closed && !gen.retired && !(slot.successor && !slot.readyAt)) {
      const b = this.#cfg.backoff;
      restartInMs = Math.min(b.maxMs, b.initialMs * 2 ** (gen.crashes - 1));
      const t = setTimeout(() => {
        gen.restarts.delete(t);
        if (this.#closed || gen.retired) return;
        // A generation that is not current yet (a swap in progress) restarts too: the swap waits on it.
        const { ready } = this.#spawn(gen);
        ready.then(() => this.#pump(), () => undefined);
      }, restartInMs);
      gen.restarts.add(t);
    }
    this.#emit({ type: 'crash', worker: slot.id, build: gen.build, code, error, failed, restartInMs });
    this.#pump();
  }
}

function describe(m: ToWorker): string {
  if (m.t === 'page' || m.t === 'island') return m.path;
  return m.t;
}
