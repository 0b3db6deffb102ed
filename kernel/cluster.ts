/**
 * Cluster mode, `bext run --workers N`: a primary process forks N workers
 * (node:cluster) that each run the ordinary `bext run` path — kernel create,
 * listen, watch — on listeners the cluster shares. The primary never loads a
 * plugin. It restarts a worker that crashes (exponential backoff), restarts
 * them one by one on SIGHUP with no downtime, and stops them gracefully on
 * SIGTERM/SIGINT. Anything the workers must share goes through Redis.
 *
 * Each worker has a slot index, 0..N-1, kept by its replacements; it reads it
 * from `BEXT_WORKER_INDEX` (and N from `BEXT_WORKERS`), and its log lines
 * carry `worker: <index>`.
 */
import cluster, { type Worker } from 'node:cluster';
import { rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { BextError } from '../plugin-api/index.js';
import type { BextConfig } from './config.js';
import type { Logger } from './log.js';

/** What a worker tells the primary once it listens. */
interface ReadyMessage {
  cmd: 'bext:ready';
  port: number;
  adminPort: number | null;
  /** The loaded plugins, as `bext run` prints them. */
  plugins: string;
}
/** What a worker tells the primary when it cannot start: the error as the CLI prints it. */
interface FailedMessage {
  cmd: 'bext:failed';
  error: string;
}
type ToPrimary = ReadyMessage | FailedMessage;
/** The primary asks a worker to drain and exit. */
interface DrainMessage {
  cmd: 'bext:drain';
}

/** Time a worker has to load its plugins and listen. */
const READY_TIMEOUT_MS = 60_000;
const BACKOFF_FIRST_MS = 100;
const BACKOFF_MAX_MS = 30_000;
/** A worker up this long has its slot's crash count forgotten. */
const STABLE_MS = 30_000;
/** Beyond `server.shutdownTimeoutMs`: plugins dispose after the drain, each within 5 s. */
const DISPOSE_GRACE_MS = 6_000;

/**
 * `--workers` as a count: a whole number from 1, or `auto` for
 * `os.availableParallelism()`.
 *
 * @example parseWorkers('auto') // 2 on a 2-core machine
 */
export function parseWorkers(v: string): number {
  if (v === 'auto') return os.availableParallelism();
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isInteger(n) || n < 1 || n > 1024) {
    throw new BextError('BEXT_ERR_CLI_USAGE', `--workers expects a whole number from 1 to 1024, or auto, got ${JSON.stringify(v)}`, { hint: 'see `bext run --help`' });
  }
  return n;
}

/** Who this process is in a cluster, when it is a worker that the primary forked. */
export interface WorkerIdentity {
  /** Slot index, 0..count-1, the same for every replacement of that slot. */
  index: number;
  count: number;
  /** Ports the primary resolved (when the config says 0); undefined: keep the config's. */
  port?: number;
  adminPort?: number;
}

/** This process's place in a `bext run --workers` cluster, or null outside one. */
export function clusterWorker(): WorkerIdentity | null {
  const index = process.env.BEXT_WORKER_INDEX;
  if (!cluster.isWorker || index === undefined) return null;
  const num = (v: string | undefined) => (v ? Number(v) : undefined);
  return { index: Number(index), count: Number(process.env.BEXT_WORKERS), port: num(process.env.BEXT_CLUSTER_PORT), adminPort: num(process.env.BEXT_CLUSTER_ADMIN_PORT) };
}

/** The part of a kernel a worker drives. */
export interface WorkerKernel {
  close(deadlineMs?: number, opts?: { idle?: 'close' | 'keep' }): Promise<void>;
  readonly inflight: number;
}

/**
 * Runs this worker: `start` creates the kernel and listens. Reports ready
 * (or the startup error, which the primary prints once) to the primary,
 * then drains and exits when the primary asks, on SIGTERM/SIGINT, or when
 * the primary is gone.
 */
export async function runWorker(
  start: () => Promise<{ kernel: WorkerKernel; port: number; adminPort: number | null; plugins: string }>,
  describeError: (e: unknown) => string,
  log: Logger,
): Promise<void> {
  let kernel: WorkerKernel | null = null;
  let stopping = false;
  const stop = (reason: string) => {
    if (stopping) return;
    stopping = true;
    // Not listening yet: nothing to drain.
    if (!kernel) return void process.exit(1);
    log.info('worker draining', { reason, inflight: kernel.inflight });
    kernel.close(undefined, { idle: 'keep' }).then(
      () => process.exit(0),
      (e: unknown) => {
        log.error('worker drain failed', { error: String((e as Error)?.message ?? e) });
        process.exit(1);
      },
    );
  };
  process.on('message', (m: DrainMessage) => {
    if (m?.cmd === 'bext:drain') stop('restart');
  });
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // The primary orchestrates restarts; a terminal hang-up reaching the whole group must not end a worker.
  process.on('SIGHUP', () => log.debug('SIGHUP ignored by a worker; the primary restarts workers'));
  process.on('disconnect', () => stop('primary gone'));
  let started;
  try {
    started = await start();
  } catch (e) {
    const msg: FailedMessage = { cmd: 'bext:failed', error: describeError(e) };
    process.send!(msg, () => process.exit(1));
    return;
  }
  kernel = started.kernel;
  const ready: ReadyMessage = { cmd: 'bext:ready', port: started.port, adminPort: started.adminPort, plugins: started.plugins };
  process.send!(ready);
}

/** Options of the primary process. */
export interface PrimaryOptions {
  workers: number;
  config: BextConfig;
  /** The served folder as printed (`examples/site`). */
  siteLabel: string;
  /** File to write the primary's pid to (removed at exit). */
  pidFile?: string;
  log: Logger;
  out: (line: string) => void;
  err: (line: string) => void;
}

interface Slot {
  index: number;
  /** The worker that serves for this slot (null while a crashed one waits for its backoff). */
  worker: Worker | null;
  /** When the current worker reported ready; 0 until it has. */
  readyAt: number;
  /** Consecutive crashes, for the backoff. */
  crashes: number;
  timer: NodeJS.Timeout | null;
}

/** Binds host:0 for a moment to learn a free port. */
async function freePort(host: string, what: string): Promise<number> {
  const s = net.createServer();
  try {
    await new Promise<void>((res, rej) => {
      s.once('error', rej);
      s.listen(0, host, () => res());
    });
  } catch (e) {
    throw new BextError('BEXT_ERR_CONFIG_INVALID', `${what}: cannot listen on ${host}: ${(e as Error).message}`, { hint: 'set it to an address of this machine' });
  }
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/**
 * The primary: forks the workers and keeps one serving in every slot.
 * Resolves with the exit code once stopped: 0 after SIGTERM/SIGINT, 1 when
 * a worker failed to start.
 */
export async function runPrimary(o: PrimaryOptions): Promise<number> {
  // Workers share the listening socket and the OS hands connections out.
  // Round-robin (Node's default on Linux) has the primary accept each
  // connection and pass it to a worker; when that worker dies before it
  // acknowledges one, the primary neither closes nor re-sends it, and the
  // client hangs. NODE_CLUSTER_SCHED_POLICY=rr still chooses round-robin.
  if (process.env.NODE_CLUSTER_SCHED_POLICY === undefined) cluster.schedulingPolicy = cluster.SCHED_NONE;
  // Port 0 under node:cluster: every worker's listen(0) on the same address
  // shares one handle that the primary binds to a random port, but the
  // primary drops that handle when its last worker exits, and a replacement
  // would then get another port. So the primary picks the port once.
  const port = o.config.server.port === 0 ? await freePort(o.config.server.host, 'server.host') : o.config.server.port;
  const adminPort = o.config.admin.port === 0 ? await freePort(o.config.admin.host, 'admin.host') : o.config.admin.port;
  return new Primary(o, port, adminPort).run();
}

class Primary {
  #o: PrimaryOptions;
  #env: Record<string, string>;
  #slots: Slot[];
  #started = false;
  #stopping = false;
  #rolling = false;
  #rollAgain = false;
  /** Workers asked to drain: their exit is expected. */
  #retiring = new Set<Worker>();
  /** Workers that reported ready (they handle the drain message). */
  #ready = new WeakSet<Worker>();
  /** The startup error a worker sent before exiting. */
  #failure = new WeakMap<Worker, string>();
  #done!: (code: number) => void;
  #finished = false;

  constructor(o: PrimaryOptions, port: number, adminPort: number | null) {
    this.#o = o;
    this.#env = { BEXT_WORKERS: String(o.workers), BEXT_CLUSTER_PORT: String(port), ...(adminPort !== null ? { BEXT_CLUSTER_ADMIN_PORT: String(adminPort) } : {}) };
    this.#slots = Array.from({ length: o.workers }, (_, index) => ({ index, worker: null, readyAt: 0, crashes: 0, timer: null }));
  }

  run(): Promise<number> {
    const result = new Promise<number>((r) => (this.#done = r));
    if (this.#o.pidFile) writeFileSync(this.#o.pidFile, `${process.pid}\n`);
    process.on('SIGHUP', () => void this.#roll());
    process.on('SIGTERM', () => void this.#stop('SIGTERM'));
    process.on('SIGINT', () => void this.#stop('SIGINT'));
    void this.#start();
    return result;
  }

  #finish(code: number): void {
    if (this.#finished) return;
    this.#finished = true;
    if (this.#o.pidFile) rmSync(this.#o.pidFile, { force: true });
    this.#done(code);
  }

  async #start(): Promise<void> {
    const forks = this.#slots.map((s) => {
      const f = this.#fork(s.index);
      s.worker = f.worker;
      return f;
    });
    let infos: ReadyMessage[];
    try {
      infos = await Promise.all(forks.map((f) => f.ready));
    } catch (e) {
      if (this.#stopping) return;
      // Every worker runs the same config and lock: one failing means all would; no fork loop.
      this.#stopping = true;
      this.#o.err((e as Error).message);
      await Promise.all(this.#live().map((w) => this.#retire(w)));
      return this.#finish(1);
    }
    if (this.#stopping) return;
    const now = Date.now();
    for (const s of this.#slots) s.readyAt = now;
    this.#started = true;
    const first = infos[0]!;
    const host = this.#o.config.server.host === '0.0.0.0' ? '127.0.0.1' : this.#o.config.server.host;
    this.#o.out(`bext serving ${this.#o.siteLabel} on http://${host}:${first.port}` + (first.adminPort !== null ? ` (admin on http://${this.#o.config.admin.host}:${first.adminPort})` : '') + ` with ${this.#o.workers} worker(s)`);
    this.#o.out(`plugins: ${first.plugins}`);
    this.#o.out(`workers: ${this.#slots.map((s) => `${s.index}=pid ${s.worker!.process.pid}`).join(', ')} (primary pid ${process.pid}; SIGHUP restarts them one by one)`);
    if (this.#rollAgain) void this.#roll();
  }

  /** Every worker process still alive, serving, starting or draining. */
  #live(): Worker[] {
    return Object.values(cluster.workers ?? {}).filter((w): w is Worker => !!w && !w.isDead());
  }

  #fork(index: number): { worker: Worker; ready: Promise<ReadyMessage> } {
    const worker = cluster.fork({ ...this.#env, BEXT_WORKER_INDEX: String(index) });
    const ready = new Promise<ReadyMessage>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`bext: worker ${index} did not report ready within ${READY_TIMEOUT_MS / 1000} s; killed it`));
        worker.process.kill('SIGKILL');
      }, READY_TIMEOUT_MS);
      worker.on('message', (m: ToPrimary) => {
        if (m?.cmd === 'bext:ready') {
          clearTimeout(timer);
          this.#ready.add(worker);
          resolve(m);
        } else if (m?.cmd === 'bext:failed') this.#failure.set(worker, m.error);
      });
      worker.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(this.#failure.get(worker) ?? `bext: worker ${index} exited (${signal ?? `code ${code}`}) before it was ready`));
      });
    });
    worker.on('exit', (code, signal) => this.#onExit(index, worker, code, signal));
    // A send to a worker that is dying fails with EPIPE; its exit is what counts.
    worker.on('error', (e: Error) => this.#o.log.warn('worker channel error', { worker: index, pid: worker.process.pid, error: e.message }));
    return { worker, ready };
  }

  #onExit(index: number, worker: Worker, code: number | null, signal: string | null): void {
    if (this.#retiring.delete(worker)) return;
    if (this.#stopping || !this.#started) return;
    const slot = this.#slots[index]!;
    // A replacement that never took over: whoever forked it hears of it through its ready promise.
    if (slot.worker !== worker) return;
    slot.worker = null;
    if (slot.readyAt !== 0 && Date.now() - slot.readyAt >= STABLE_MS) slot.crashes = 0;
    slot.crashes++;
    const delay = Math.min(BACKOFF_FIRST_MS * 2 ** (slot.crashes - 1), BACKOFF_MAX_MS);
    this.#o.log.error('worker exited unexpectedly; restarting it', {
      worker: index, pid: worker.process.pid, code, signal, crashes: slot.crashes, restartInMs: delay,
      ...(this.#failure.has(worker) ? { error: this.#failure.get(worker) } : {}),
    });
    slot.timer = setTimeout(() => this.#replaceCrashed(slot), delay);
  }

  #replaceCrashed(slot: Slot): void {
    slot.timer = null;
    if (this.#stopping || slot.worker) return;
    const { worker, ready } = this.#fork(slot.index);
    slot.worker = worker;
    slot.readyAt = 0;
    ready.then(
      () => {
        if (slot.worker !== worker) return;
        slot.readyAt = Date.now();
        this.#o.log.info('worker restarted', { worker: slot.index, pid: worker.process.pid });
        this.#o.out(`worker ${slot.index} restarted (pid ${worker.process.pid})`);
      },
      // Its exit reaches #onExit as another crash, with a longer backoff.
      () => undefined,
    );
  }

  /**
   * SIGHUP: for each slot in turn, fork the replacement, wait until it
   * listens, then drain the old worker and wait for its exit. A replacement
   * that fails to start stops the restart; the running workers keep serving.
   */
  async #roll(): Promise<void> {
    if (this.#stopping) return;
    if (!this.#started || this.#rolling) {
      this.#rollAgain = true;
      this.#o.out(`SIGHUP: a restart follows the ${this.#started ? 'restart' : 'start'} under way`);
      return;
    }
    this.#rolling = true;
    try {
      do {
        this.#rollAgain = false;
        this.#o.out(`SIGHUP: restarting ${this.#slots.length} worker(s) one by one`);
        for (const slot of this.#slots) {
          if (this.#stopping) return;
          const { worker, ready } = this.#fork(slot.index);
          try {
            await ready;
          } catch (e) {
            if (this.#stopping) return;
            this.#o.log.error('restart stopped: a replacement worker failed to start; the running workers keep serving', { worker: slot.index, error: (e as Error).message });
            this.#o.out(`restart stopped: the replacement for worker ${slot.index} failed to start (the error is logged); the running workers keep serving`);
            return;
          }
          if (this.#stopping) return;
          // The slot's worker may have crashed meanwhile, or been replaced after a crash: retire whichever serves now.
          const previous = slot.worker;
          if (slot.timer) clearTimeout(slot.timer);
          slot.timer = null;
          slot.worker = worker;
          slot.readyAt = Date.now();
          slot.crashes = 0;
          if (previous) await this.#retire(previous);
          this.#o.out(`worker ${slot.index}: pid ${previous?.process.pid ?? '-'} → pid ${worker.process.pid}`);
        }
        this.#o.out('restart done');
      } while (this.#rollAgain && !this.#stopping);
    } finally {
      this.#rolling = false;
    }
  }

  /** Drains a worker and waits for its exit; kills it past the shutdown deadline. */
  async #retire(w: Worker): Promise<void> {
    if (w.isDead()) return;
    this.#retiring.add(w);
    const exited = new Promise<void>((r) => {
      if (w.isDead()) r();
      else w.once('exit', () => r());
    });
    // A worker not yet listening has no drain handler to answer a message: a signal ends it.
    if (this.#ready.has(w) && w.isConnected()) w.send({ cmd: 'bext:drain' } satisfies DrainMessage);
    else w.process.kill('SIGTERM');
    const bound = this.#o.config.server.shutdownTimeoutMs + DISPOSE_GRACE_MS;
    let timer: NodeJS.Timeout | undefined;
    const late = await Promise.race([exited.then(() => false), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), bound)))]);
    clearTimeout(timer);
    if (late) {
      this.#o.log.warn('worker did not stop in time; killing it', { pid: w.process.pid, afterMs: bound });
      w.process.kill('SIGKILL');
      await exited;
    }
  }

  /** SIGTERM/SIGINT: every worker drains; exit 0 once all are gone. */
  async #stop(sig: string): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    for (const s of this.#slots) if (s.timer) clearTimeout(s.timer);
    const live = this.#live();
    this.#o.out(`${sig}: draining ${live.length} worker(s)…`);
    await Promise.all(live.map((w) => this.#retire(w)));
    this.#o.out('bext stopped');
    this.#finish(0);
  }
}
