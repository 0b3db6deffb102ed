/**
 * Structured JSON logs on stderr, one line per record, tagged with the
 * plugin that wrote them. Subscribers (the log-streaming plugin) see every
 * record that passes the level filter.
 */
import type { LogLevel } from '../plugin-api/index.js';

const LEVELS: Record<LogLevel, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50 };

export interface LogRecord {
  time: number;
  level: LogLevel;
  msg: string;
  plugin?: string;
  [k: string]: unknown;
}

export class Logger {
  #min: number;
  #subscribers = new Set<(r: LogRecord) => void>();
  constructor(level: LogLevel = (process.env.BEXT_LOG as LogLevel) || 'info', private readonly sink: (line: string) => void = (l) => process.stderr.write(l)) {
    this.#min = LEVELS[level] ?? 30;
  }
  setLevel(level: LogLevel): void {
    this.#min = LEVELS[level] ?? 30;
  }
  enabled(level: LogLevel): boolean {
    return LEVELS[level] >= this.#min;
  }
  log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void {
    if (LEVELS[level] === undefined) level = 'info';
    if (!this.enabled(level) && this.#subscribers.size === 0) return;
    const rec: LogRecord = { time: Date.now(), level, msg, ...fields };
    if (this.enabled(level)) {
      let line: string;
      try {
        line = JSON.stringify(rec);
      } catch {
        line = JSON.stringify({ time: rec.time, level, msg, plugin: rec.plugin, note: 'fields were not serialisable' });
      }
      this.sink(`${line}\n`);
    }
    for (const s of this.#subscribers) s(rec);
  }
  subscribe(fn: (r: LogRecord) => void): () => void {
    this.#subscribers.add(fn);
    return () => this.#subscribers.delete(fn);
  }
  info(msg: string, f?: Record<string, unknown>) { this.log('info', msg, f); }
  warn(msg: string, f?: Record<string, unknown>) { this.log('warn', msg, f); }
  error(msg: string, f?: Record<string, unknown>) { this.log('error', msg, f); }
  debug(msg: string, f?: Record<string, unknown>) { this.log('debug', msg, f); }
}
