/**
 * What the scheduler reports about tasks: the shapes `/__bext/scheduler`
 * serves and `KernelServices.scheduler()` returns.
 */
import type { ScheduleSpec } from './manifest.js';

/**
 * How one tick of a task ended on this instance:
 * - `ok`: the run finished; `error`: it threw, trapped, hit a sandbox limit or the plugin was quarantined;
 *   `timeout`: it missed its deadline.
 * - `skipped-overlap`: the previous run was still running (overlap `skip`, or `queue` with one already queued).
 * - `ran-elsewhere`: another instance of the cluster took this tick.
 * - `lock-failed`: Redis could not be asked who runs the tick, so nobody here ran it (never twice).
 */
export type TaskOutcome = 'ok' | 'error' | 'timeout' | 'skipped-overlap' | 'ran-elsewhere' | 'lock-failed';

/** One tick of a task as this instance saw it. */
export interface TaskRun {
  /** The tick, in ms since the epoch. */
  scheduledAt: number;
  /** When this instance started the run (or decided not to run it). */
  startedAt: number;
  /** How long the run took; 0 for ticks that did not run here. */
  durationMs: number;
  outcome: TaskOutcome;
  /** The error (code and message) of a failed run, or why the tick did not run. */
  error?: string;
  /** `manual` for a run asked for through `runTask` (or `POST /__bext/scheduler/run`). */
  trigger?: 'manual';
  /** The instance that recorded it (`host:pid:random`), so a cluster-wide history says who ran what. */
  instance?: string;
}

/**
 * A cluster-scoped task as the whole cluster saw it, read from Redis (set
 * when `redis.url` is): the runs every instance recorded, newest first. Ticks
 * an instance left to another (`ran-elsewhere`) are not shared, so each tick
 * appears once.
 */
export interface ClusterTaskView {
  counts: Record<TaskOutcome, number>;
  failures: number;
  lastRun: TaskRun | null;
  lastFailure: TaskRun | null;
  /** At most 20, newest first; each carries `instance`. */
  history: TaskRun[];
}

/**
 * A task and its recent history on this instance.
 *
 * @example
 * ```ts
 * const late = host.kernel!.scheduler().filter((t) => t.failures > 0);
 * ```
 */
export interface TaskStatus {
  plugin: string;
  name: string;
  cron: string;
  timezone?: string;
  scope: NonNullable<ScheduleSpec['scope']>;
  overlap: NonNullable<ScheduleSpec['overlap']>;
  /** Deadline of one run, in ms. */
  timeoutMs: number;
  /** `manifest` (the plugin's `schedules`) or `runtime` (`bext_schedule`). */
  source: 'manifest' | 'runtime';
  /** Whether ticks fire (false before the server listens and after it stops). */
  active: boolean;
  /** Next tick, in ms since the epoch; null when none is due (stopped, or a pattern with no future match). */
  nextRun: number | null;
  /** Runs in progress on this instance. */
  running: number;
  /** Whether a run waits for the current one (overlap `queue`). */
  queued: boolean;
  /** Ticks seen by this instance, by outcome. */
  counts: Record<TaskOutcome, number>;
  /** Runs that ended in `error`, `timeout` or `lock-failed`. */
  failures: number;
  /** Failures in a row, reset by an `ok` run. */
  consecutiveFailures: number;
  lastRun: TaskRun | null;
  /** The last failure, kept after later successes. */
  lastFailure: TaskRun | null;
  /** The most recent ticks, newest first (at most 20). */
  history: TaskRun[];
  /**
   * Cluster-scoped tasks, with `redis.url` set and asked for through
   * `schedulerCluster()`: the view shared by every instance; null when Redis
   * could not be read (`clusterError` says why).
   */
  cluster?: ClusterTaskView | null;
  clusterError?: string;
}
