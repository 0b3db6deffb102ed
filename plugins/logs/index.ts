/**
 * logs: `/__bext/logs` streams the kernel's log records (every plugin's
 * `bext_log` and the kernel's own) to admins over Server-Sent Events.
 * Filters run per client on the structured record; a record is serialised
 * once however many clients receive it.
 */
import { Readable } from 'node:stream';
import { BextError, definePlugin, type HostApi, type LogLevel, type ResponseData, type TrustedRequest } from '../../plugin-api/index.js';

/** This plugin's section of bext.config.json (defaults applied by the kernel). */
export interface LogsConfig {
  backlog: number;
  backlogLevel: LogLevel;
  heartbeatMs: number;
  retryMs: number;
  maxBufferBytes: number;
  maxClients: number;
}

type Rec = { time: number; level: LogLevel; msg: string; plugin?: string; [k: string]: unknown };

interface Entry {
  seq: number;
  rec: Rec;
  /** The SSE frame, made on first use. */
  frame?: string;
}

const RANK: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50 };
/** `plugin=kernel` selects records no plugin wrote. */
const KERNEL = 'kernel';

/**
 * A client's filter: a minimum level, optionally a set of plugins, and
 * per-plugin minimum levels (`levels=waf:debug,cache:warn`) that override the
 * minimum for those plugins.
 */
export interface LogFilter {
  min: number;
  plugins: Set<string> | null;
  perPlugin: Map<string, number>;
}

/** Parses `level`, `plugin` (repeated or comma separated) and `levels` from a query string. */
export function parseFilter(query: string): LogFilter {
  const q = new URLSearchParams(query);
  const level = q.get('level') ?? 'info';
  if (RANK[level] === undefined) throw badRequest(`level=${level}: expected one of trace, debug, info, warn, error`);
  const names = q.getAll('plugin').flatMap((p) => p.split(',')).map((p) => p.trim()).filter(Boolean);
  const perPlugin = new Map<string, number>();
  for (const pair of q.getAll('levels').flatMap((p) => p.split(','))) {
    if (!pair.trim()) continue;
    const [name, lv] = pair.split(':').map((s) => s.trim());
    if (!name || !lv || RANK[lv] === undefined) throw badRequest(`levels=${pair}: expected <plugin>:<level>, e.g. levels=waf:debug`);
    perPlugin.set(name, RANK[lv]!);
  }
  return { min: RANK[level]!, plugins: names.length ? new Set(names) : null, perPlugin };
}

export function accepts(f: LogFilter, rec: Rec): boolean {
  const name = typeof rec.plugin === 'string' ? rec.plugin : KERNEL;
  if (f.plugins !== null && !f.plugins.has(name)) return false;
  return (RANK[rec.level] ?? 30) >= (f.perPlugin.get(name) ?? f.min);
}

function badRequest(message: string): BextError {
  return new BextError('BEXT_ERR_QUERY_INVALID', message, { hint: 'e.g. /__bext/logs?level=warn&plugin=waf,cache&levels=cache:debug' });
}

function frameOf(e: Entry): string {
  if (e.frame !== undefined) return e.frame;
  let json: string;
  try {
    json = JSON.stringify(e.rec);
  } catch {
    // Circular or BigInt fields: keep what can be said.
    json = JSON.stringify({ time: e.rec.time, level: e.rec.level, msg: String(e.rec.msg), plugin: e.rec.plugin, note: 'fields were not serialisable' });
  }
  return (e.frame = `id: ${e.seq}\nevent: log\ndata: ${json}\n\n`);
}

class Client {
  readonly stream = new Readable({ read() {} });
  closed = false;
  constructor(
    readonly filter: LogFilter,
    private readonly maxBuffer: number,
    private readonly socket: { writableLength?: number },
  ) {}
  /** false when the client is too far behind (its queue and socket buffer hold more than maxBuffer). */
  send(s: string): boolean {
    if (this.closed) return true;
    if (this.stream.readableLength + (this.socket.writableLength ?? 0) > this.maxBuffer) return false;
    this.stream.push(s);
    return true;
  }
  end(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.stream.push(`event: close\ndata: ${JSON.stringify({ reason })}\n\n`);
    this.stream.push(null);
  }
}

export default definePlugin((host: HostApi) => {
  if (!host.kernel) throw new Error('logs needs the trusted sandbox (it subscribes to the kernel log)');
  const kernel = host.kernel;
  const cfg = host.config<LogsConfig>();
  const ring: (Entry | undefined)[] = new Array(cfg.backlog);
  let next = 0;
  let seq = 0;
  const clients = new Set<Client>();
  const keepRank = RANK[cfg.backlogLevel]!;
  let inside = false;

  const onRecord = (rec: Rec) => {
    // A log written while delivering one (a stream error, say) must not recurse.
    if (inside) return;
    const keep = cfg.backlog > 0 && (RANK[rec.level] ?? 30) >= keepRank;
    if (!keep && clients.size === 0) return;
    inside = true;
    try {
      const e: Entry = { seq: ++seq, rec };
      if (keep) {
        ring[next] = e;
        next = next + 1 === ring.length ? 0 : next + 1;
      }
      for (const c of clients) if (accepts(c.filter, rec) && !c.send(frameOf(e))) drop(c, 'slow-consumer');
    } finally {
      inside = false;
    }
  };

  let unsubscribe: (() => void) | null = null;
  const listen = () => (unsubscribe ??= kernel.subscribeLogs(onRecord));
  if (cfg.backlog > 0) listen();

  function drop(c: Client, reason: string): void {
    clients.delete(c);
    if (reason === 'gone') c.closed = true;
    else if (reason === 'slow-consumer') {
      // Its queue is full: cut it off rather than queue a farewell behind megabytes.
      c.closed = true;
      c.stream.destroy();
      host.log('warn', 'log stream cut off: the client reads slower than records arrive', { maxBufferBytes: cfg.maxBufferBytes });
    } else c.end(reason);
    if (clients.size === 0 && cfg.backlog === 0 && unsubscribe) {
      unsubscribe();
      unsubscribe = null;
    }
  }

  /** Backlog entries after `after` (a seq), oldest first. */
  function backlog(after: number): Entry[] {
    const out: Entry[] = [];
    const n = ring.length;
    for (let k = 0; k < n; k++) {
      const e = ring[(next + k) % n];
      if (e && e.seq > after) out.push(e);
    }
    return out;
  }

  let wasReady = false;
  let lastBeat = Date.now();
  // Watches for draining often; heartbeats go out at their own pace.
  const tick = setInterval(() => {
    if (!kernel.ready()) {
      // Draining for shutdown: end the streams so the drain can finish.
      if (wasReady) for (const c of [...clients]) drop(c, 'shutdown');
      return;
    }
    wasReady = true;
    const now = Date.now();
    if (now - lastBeat < cfg.heartbeatMs) return;
    lastBeat = now;
    for (const c of [...clients]) if (!c.send(': heartbeat\n\n')) drop(c, 'slow-consumer');
  }, Math.min(cfg.heartbeatMs, 250));
  tick.unref();

  function stream(req: TrustedRequest): ResponseData {
    let filter: LogFilter;
    try {
      filter = parseFilter(req.query);
    } catch (e) {
      const err = e instanceof BextError ? e : badRequest(String(e));
      return { status: 400, headers: { 'content-type': 'application/json; charset=utf-8' }, body: JSON.stringify(err.toJSON()) };
    }
    const q = new URLSearchParams(req.query);
    const lastId = req.headers['last-event-id'];
    const since = typeof lastId === 'string' && /^\d+$/.test(lastId) ? Number(lastId) : null;
    const wanted = q.has('backlog') ? Math.max(0, Number(q.get('backlog')) || 0) : 100;
    const past = backlog(since ?? 0).filter((e) => accepts(filter, e.rec));
    const replay = since !== null ? past : past.slice(Math.max(0, past.length - wanted));

    if (q.get('format') === 'json') {
      return { status: 200, headers: { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' }, body: JSON.stringify({ records: replay.map((e) => ({ id: e.seq, ...e.rec })) }) };
    }
    if (clients.size >= cfg.maxClients) {
      const err = new BextError('BEXT_ERR_STREAM_LIMIT', `at most ${cfg.maxClients} log streams may be open at once`, { hint: 'raise plugins.logs.maxClients' });
      return { status: 503, headers: { 'content-type': 'application/json; charset=utf-8', 'retry-after': '5' }, body: JSON.stringify(err.toJSON()) };
    }
    if (kernel.ready()) wasReady = true;
    const c = new Client(filter, cfg.maxBufferBytes, req.raw.socket);
    c.stream.push(`retry: ${cfg.retryMs}\n\n`);
    for (const e of replay) c.stream.push(frameOf(e));
    c.stream.push(`event: ready\nid: ${seq}\ndata: ${JSON.stringify({ backlog: replay.length })}\n\n`);
    c.stream.on('close', () => drop(c, 'gone'));
    clients.add(c);
    listen();
    return {
      status: 200,
      headers: { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no' },
      body: c.stream,
    };
  }

  return {
    onRoute: stream,
    dispose() {
      clearInterval(tick);
      for (const c of [...clients]) drop(c, 'shutdown');
      unsubscribe?.();
    },
  };
});
