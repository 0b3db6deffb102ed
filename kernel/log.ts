/**
 * Structured JSON logs, one line per record, written through pino (stderr
 * by default, or stdout or a file), tagged with the plugin that wrote them,
 * with a minimum level for the server and, optionally, per plugin.
 * Subscribers (the log-streaming plugin) see every record, whatever the
 * levels say, since they filter for themselves.
 */
import pino, { type DestinationStream, type Logger as Pino } from 'pino';
import type { LogLevel } from '../plugin-api/index.js';

const LEVELS: Record<LogLevel, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50 };

export interface LogRecord {
  time: number;
  level: LogLevel;
  msg: string;
  plugin?: string;
  [k: string]: unknown;
}

/** `log` in bext.config.json. */
export interface LogConfig {
  /** Least severe level written (default: `BEXT_LOG`, else `info`). */
  level?: LogLevel;
  /** Per plugin, a level that replaces `level` for records that plugin writes (or that name it). */
  plugins?: Record<string, LogLevel>;
  /** `stderr` (default), `stdout`, or a file path (appended to). */
  destination?: string;
}

export interface LoggerOptions extends LogConfig {
  /** Receives each line instead of a destination (tests). */
  sink?: (line: string) => void;
  /**
   * Fields every record carries, before its own.
   * @example new Logger({ fields: { worker: 0 } }) // cluster worker 0
   */
  fields?: Record<string, unknown>;
}

function destinationOf(d: string | undefined, sink: ((line: string) => void) | undefined): DestinationStream {
  if (sink) return { write: (line: string) => void sink(line) };
  if (d === undefined || d === 'stderr') return pino.destination({ fd: 2, sync: true });
  if (d === 'stdout') return pino.destination({ fd: 1, sync: true });
  return pino.destination({ dest: d, sync: false, append: true, mkdir: true });
}

export class Logger {
  #min: number;
  #perPlugin = new Map<string, number>();
  /** The least severe level any plugin or the server writes: the fast reject. */
  #floor: number;
  #subscribers = new Set<(r: LogRecord) => void>();
  #pino: Pino;
  #sink: ((line: string) => void) | undefined;
  #dest: DestinationStream;
  #fields: Record<string, unknown> | undefined;

  constructor(opts: LogLevel | LoggerOptions = {}, sink?: (line: string) => void) {
    const o: LoggerOptions = typeof opts === 'string' ? { level: opts, sink } : { ...opts, sink: opts.sink ?? sink };
    this.#min = LEVELS[o.level ?? (process.env.BEXT_LOG as LogLevel)] ?? 30;
    this.#floor = this.#min;
    this.#sink = o.sink;
    this.#fields = o.fields;
    this.#dest = destinationOf(o.destination, o.sink);
    this.#pino = this.#make(this.#dest);
    if (o.plugins) for (const [p, l] of Object.entries(o.plugins)) this.setPluginLevel(p, l);
  }

  #make(dest: DestinationStream): Pino {
    // The record carries its own time; pino writes the level as its name, like the records subscribers see.
    return pino({ level: 'trace', base: null, timestamp: false, messageKey: 'msg', formatters: { level: (label) => ({ level: label }) } }, dest);
  }

  /** Applies the `log` section of the config: levels, per-plugin levels, destination. */
  configure(cfg: LogConfig | undefined): void {
    if (!cfg) return;
    if (cfg.level) this.setLevel(cfg.level);
    for (const [p, l] of Object.entries(cfg.plugins ?? {})) this.setPluginLevel(p, l);
    if (cfg.destination && !this.#sink) {
      this.#dest = destinationOf(cfg.destination, undefined);
      this.#pino = this.#make(this.#dest);
    }
  }

  setLevel(level: LogLevel): void {
    this.#min = LEVELS[level] ?? 30;
    this.#recomputeFloor();
  }

  /** A level for one plugin's records; null goes back to the server's level. */
  setPluginLevel(plugin: string, level: LogLevel | null): void {
    if (level === null) this.#perPlugin.delete(plugin);
    else this.#perPlugin.set(plugin, LEVELS[level] ?? 30);
    this.#recomputeFloor();
  }

  #recomputeFloor(): void {
    this.#floor = Math.min(this.#min, ...this.#perPlugin.values());
  }

  /** Whether a record at this level (of this plugin) would be written. */
  enabled(level: LogLevel, plugin?: string): boolean {
    const rank = LEVELS[level];
    if (rank < this.#floor) return false;
    return rank >= (plugin !== undefined ? (this.#perPlugin.get(plugin) ?? this.#min) : this.#min);
  }

  log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void {
    if (LEVELS[level] === undefined) level = 'info';
    const rank = LEVELS[level];
    if (rank < this.#floor && this.#subscribers.size === 0) return;
    const plugin = typeof fields?.plugin === 'string' ? fields.plugin : undefined;
    const write = this.enabled(level, plugin);
    if (!write && this.#subscribers.size === 0) return;
    const rec: LogRecord = this.#fields ? { time: Date.now(), level, msg, ...this.#fields, ...fields } : { time: Date.now(), level, msg, ...fields };
    if (write) {
      const { level: _l, msg: _m, ...rest } = rec;
      try {
        this.#pino[level](rest, msg);
      } catch {
        this.#pino[level]({ time: rec.time, plugin, note: 'fields were not serialisable' }, msg);
      }
    }
    for (const s of this.#subscribers) s(rec);
  }

  subscribe(fn: (r: LogRecord) => void): () => void {
    this.#subscribers.add(fn);
    return () => this.#subscribers.delete(fn);
  }

  /** Writes out what a file destination still buffers. */
  flush(): Promise<void> {
    return new Promise((res) => this.#pino.flush(() => res()));
  }

  info(msg: string, f?: Record<string, unknown>) { this.log('info', msg, f); }
  warn(msg: string, f?: Record<string, unknown>) { this.log('warn', msg, f); }
  error(msg: string, f?: Record<string, unknown>) { this.log('error', msg, f); }
  debug(msg: string, f?: Record<string, unknown>) { this.log('debug', msg, f); }
}
