/**
 * dashboard: a live page for operators. Once per interval it closes a
 * snapshot (see collector.ts), keeps it in a bounded history, publishes it
 * on the realtime hub's `system/metrics` topic, and pushes it to pages that
 * follow its own stream (used when no hub is loaded, or the hub's rules
 * refuse the page). The page and its script are files in this folder,
 * served as they are: no external assets, so it works offline.
 */
import { readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { BextError, definePlugin, globToRegExp, type HostApi, type ResponseData, type TrustedRequest } from '../../plugin-api/index.js';
import { Collector, type Point, type Snapshot } from './collector.js';

/** This plugin's section of bext.config.json (defaults applied by the kernel). */
export interface DashboardConfig {
  intervalMs: number;
  history: number;
  recent: number;
  publish: boolean;
  paths: boolean;
  exclude: string[];
  maxClients: number;
  heartbeatMs: number;
}

export type { Point, Snapshot, RecentRow } from './collector.js';

/** The hub topic snapshots are published on. */
export const TOPIC = 'system/metrics';

const HERE = new URL('.', import.meta.url);
const JSON_HEADERS = { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' };
// The page runs only its own script; styles are inline in the page; data comes from this origin.
const CSP = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
const PAGE_HEADERS = {
  'content-type': 'text/html; charset=utf-8',
  'cache-control': 'no-store',
  'content-security-policy': CSP,
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

function json(status: number, body: unknown): ResponseData {
  return { status, headers: JSON_HEADERS, body: JSON.stringify(body) };
}

/** One page following the dashboard's own stream. */
class Follower {
  readonly stream = new Readable({ read() {} });
  closed = false;
  constructor(private readonly socket: { writableLength?: number }) {}
  /** false when the page is too far behind to keep. */
  send(s: string): boolean {
    if (this.closed) return true;
    if (this.stream.readableLength + (this.socket.writableLength ?? 0) > 4 * 1024 * 1024) return false;
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
  if (!host.kernel) throw new Error('dashboard needs the trusted sandbox (it reads kernel metrics and request records)');
  const kernel = host.kernel;
  const cfg = host.config<DashboardConfig>();
  const exclude = cfg.exclude.length ? new RegExp(cfg.exclude.map((g) => globToRegExp(g).source).join('|')) : null;
  const collector = new Collector({ intervalMs: cfg.intervalMs, recentSize: cfg.recent, exclude, paths: cfg.paths });
  const stopObserving = kernel.observeRequests((rec) => collector.observe(rec));
  const page = readFileSync(new URL('page.html', HERE), 'utf8');
  const script = readFileSync(new URL('app.js', HERE), 'utf8');
  const history: Point[] = [];
  let latest: Snapshot | null = null;
  const followers = new Set<Follower>();
  let busy = false;
  let publishFailing = false;
  let wasReady = false;
  let lastBeat = Date.now();

  /** Whether a loaded plugin serves the hub's SSE route. */
  const hubLoaded = () => kernel.plugins().some((p) => p.state !== 'failed' && p.routes.includes('/__bext/events'));

  const tick = async () => {
    if (busy) return;
    busy = true;
    try {
      const snap = collector.snapshot(Date.now(), await kernel.metricsText(), kernel.plugins());
      latest = snap;
      history.push(snap.point);
      if (history.length > cfg.history) history.splice(0, history.length - cfg.history);
      if (cfg.publish) {
        host.publish(TOPIC, snap).then(
          () => (publishFailing = false),
          (e: unknown) => {
            if (!publishFailing) host.log('warn', `dashboard: publishing to ${TOPIC} failed; pages fall back to the dashboard's own stream`, { error: (e as Error)?.message ?? String(e) });
            publishFailing = true;
          },
        );
      }
      if (followers.size) {
        // The same envelope the hub uses, so the page reads both alike.
        const frame = `id: ${snap.t}\ndata: ${JSON.stringify({ type: 'message', topic: TOPIC, data: snap })}\n\n`;
        for (const f of [...followers]) if (!f.send(frame)) drop(f, 'slow-consumer');
      }
    } catch (e) {
      host.log('warn', 'dashboard: snapshot failed', { error: (e as Error)?.message ?? String(e) });
    } finally {
      busy = false;
    }
  };
  const timer = setInterval(() => void tick(), cfg.intervalMs);
  timer.unref();

  function drop(f: Follower, reason: 'gone' | 'slow-consumer' | 'shutdown'): void {
    followers.delete(f);
    if (reason === 'gone') f.closed = true;
    else if (reason === 'slow-consumer') {
      f.closed = true;
      f.stream.destroy();
    } else f.end(reason);
  }

  const watch = setInterval(() => {
    if (!kernel.ready()) {
      // Draining for shutdown: end the streams so the drain can finish.
      if (wasReady) for (const f of [...followers]) drop(f, 'shutdown');
      return;
    }
    wasReady = true;
    const now = Date.now();
    if (now - lastBeat < cfg.heartbeatMs) return;
    lastBeat = now;
    for (const f of [...followers]) if (!f.send(': heartbeat\n\n')) drop(f, 'slow-consumer');
  }, Math.min(250, cfg.heartbeatMs));
  watch.unref();

  function stream(req: TrustedRequest): ResponseData {
    if (followers.size >= cfg.maxClients) {
      const err = new BextError('BEXT_ERR_STREAM_LIMIT', `at most ${cfg.maxClients} dashboard streams may be open at once`, { hint: 'raise plugins.dashboard.maxClients' });
      return { status: 503, headers: { ...JSON_HEADERS, 'retry-after': '5' }, body: JSON.stringify(err.toJSON()) };
    }
    if (kernel.ready()) wasReady = true;
    const f = new Follower(req.raw.socket);
    f.stream.push('retry: 2000\n\n');
    if (latest) f.stream.push(`id: ${latest.t}\ndata: ${JSON.stringify({ type: 'message', topic: TOPIC, data: latest })}\n\n`);
    f.stream.on('close', () => drop(f, 'gone'));
    followers.add(f);
    return { status: 200, headers: { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no' }, body: f.stream };
  }

  return {
    onRoute(req): ResponseData {
      switch (req.route) {
        case '/__bext/dashboard': {
          const boot = { topic: TOPIC, hub: cfg.publish && hubLoaded() ? `/__bext/events?topic=${encodeURIComponent(TOPIC)}` : null, stream: '/__bext/dashboard/stream', intervalMs: cfg.intervalMs, history: cfg.history, recent: cfg.recent, host: req.host };
          // `<` escaped so no value can close the data block early.
          return { status: 200, headers: PAGE_HEADERS, body: page.replace('{{BOOT}}', JSON.stringify(boot).replace(/</g, '\\u003c')) };
        }
        case '/__bext/dashboard/app.js':
          return { status: 200, headers: { 'content-type': 'text/javascript; charset=utf-8', 'cache-control': 'no-cache', 'x-content-type-options': 'nosniff' }, body: script };
        case '/__bext/dashboard/history':
          return json(200, { intervalMs: cfg.intervalMs, points: history, latest });
        case '/__bext/dashboard/recent': {
          const after = Number(new URLSearchParams(req.query).get('after') ?? 0);
          if (!Number.isFinite(after) || after < 0) return json(400, new BextError('BEXT_ERR_QUERY_INVALID', 'after: expected a non-negative sequence number').toJSON());
          return json(200, { seq: collector.recentSeq, requests: collector.recent(after) });
        }
        case '/__bext/dashboard/stream':
          return stream(req);
        default:
          return json(404, new BextError('BEXT_ERR_NOT_FOUND', `nothing serves ${req.path}`).toJSON());
      }
    },
    dispose() {
      clearInterval(timer);
      clearInterval(watch);
      stopObserving();
      for (const f of [...followers]) drop(f, 'shutdown');
    },
  };
});
