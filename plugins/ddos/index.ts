/**
 * DDoS guard: per-address caps on open connections and request rate, and
 * load shedding while the event loop lags or the heap is nearly full.
 * Header and body deadlines (slowloris) are the kernel's
 * `server.headersTimeoutMs` / `server.requestTimeoutMs`.
 *
 * Connections are counted at connect time when the kernel tells the plugin
 * when a socket closes (`ConnectInfo.onClose`); otherwise at the first
 * request on each socket, from the socket itself.
 */
import type { Socket } from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import v8 from 'node:v8';
import { definePlugin, globToRegExp, type ConnectDecision, type ConnectInfo, type RequestDecision } from '../../plugin-api/index.js';
import { TokenBuckets } from '../../plugin-api/bucket.js';
import { cidrSet, clientAddress } from '../../plugin-api/net.js';

/** This plugin's section of bext.config.json (defaults applied by the kernel). */
export interface DdosConfig {
  maxConnectionsPerIp: number;
  requestRate: { limit: number; windowSeconds: number; burst?: number };
  shedding: { eventLoopDelayMs: number; heapUsedRatio: number; checkIntervalMs: number; retryAfterSeconds: number };
  exempt: string[];
  exemptPaths: string[];
  trustedProxies: string[];
}

/** A kernel that can say when a socket closes passes this in ConnectInfo (proposed contract addition). */
type ConnectInfoWithClose = ConnectInfo & { onClose?(cb: () => void): void };

const REJECT: ConnectDecision = { action: 'reject', reason: 'ddos: too many connections' };

export default definePlugin((host) => {
  const cfg = host.config<DdosConfig>();
  const exempt = cidrSet(cfg.exempt, '$.plugins.ddos.exempt');
  const proxies = cidrSet(cfg.trustedProxies, '$.plugins.ddos.trustedProxies');
  const clientOf = clientAddress(proxies);
  const exemptPaths = cfg.exemptPaths.map(globToRegExp);
  const uncapped = (addr: string) => exempt.has(addr) || proxies.has(addr);

  // ---- Open connections per peer address.
  const open = new Map<string, number>();
  let total = 0;
  const release = (addr: string) => {
    total--;
    const n = open.get(addr)! - 1;
    if (n === 0) open.delete(addr);
    else open.set(addr, n);
  };
  /** false when the address is at its cap; otherwise counts the connection until `onClose` fires. */
  const admit = (addr: string, onClose: (cb: () => void) => void): boolean => {
    const n = open.get(addr) ?? 0;
    if (n >= cfg.maxConnectionsPerIp) {
      host.metric('connections_rejected_total', 1, undefined, 'counter');
      return false;
    }
    open.set(addr, n + 1);
    total++;
    onClose(() => release(addr));
    return true;
  };
  let countedAtConnect = false;
  const seen = new WeakSet<Socket>();
  const tooManyConnections: RequestDecision = {
    action: 'respond', status: 503,
    headers: { 'retry-after': '1', connection: 'close', 'content-type': 'text/plain; charset=utf-8' },
    body: 'too many connections from your address\n',
  };

  // ---- Request rate per client address.
  const rate = cfg.requestRate.limit > 0
    ? new TokenBuckets({ capacity: cfg.requestRate.burst ?? cfg.requestRate.limit, refillPerSecond: cfg.requestRate.limit / cfg.requestRate.windowSeconds })
    : null;

  // ---- Load shedding, decided off the request path on a timer.
  const s = cfg.shedding;
  let shedding = false;
  const shed: RequestDecision = {
    action: 'respond', status: 503,
    headers: { 'retry-after': String(s.retryAfterSeconds), connection: 'close', 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' },
    body: 'the server is overloaded; retry later\n',
  };
  const loop = s.eventLoopDelayMs > 0 ? monitorEventLoopDelay({ resolution: 10 }) : null;
  loop?.enable();
  let lastCheck = performance.now();
  const check = () => {
    const now = performance.now();
    // The histogram catches short stalls between checks; the check's own lateness catches a stall that began
    // right after the previous check, which the histogram was seen to miss.
    const late = now - lastCheck - s.checkIntervalMs;
    lastCheck = now;
    const delayMs = loop ? Math.max(loop.percentile(99) / 1e6, late) : 0;
    loop?.reset();
    const heap = v8.getHeapStatistics();
    const heapRatio = heap.used_heap_size / heap.heap_size_limit;
    const over = (loop !== null && delayMs > s.eventLoopDelayMs) || (s.heapUsedRatio > 0 && heapRatio > s.heapUsedRatio);
    host.metric('event_loop_delay_p99_seconds', delayMs / 1000, undefined, 'gauge');
    host.metric('heap_used_ratio', heapRatio, undefined, 'gauge');
    host.metric('open_connections', total, undefined, 'gauge');
    if (over !== shedding) {
      shedding = over;
      host.metric('shedding', over ? 1 : 0, undefined, 'gauge');
      if (over) host.log('warn', 'overloaded: shedding load with 503', { eventLoopDelayP99Ms: Math.round(delayMs), heapUsedRatio: Number(heapRatio.toFixed(3)) });
      else host.log('info', 'load is back under the thresholds; no longer shedding', { eventLoopDelayP99Ms: Math.round(delayMs), heapUsedRatio: Number(heapRatio.toFixed(3)) });
    }
  };
  const timer = loop || s.heapUsedRatio > 0 ? setInterval(check, s.checkIntervalMs).unref() : null;

  return {
    onConnect(info: ConnectInfoWithClose) {
      if (cfg.maxConnectionsPerIp === 0 || !info.onClose) return;
      countedAtConnect = true;
      if (uncapped(info.remoteAddress)) return;
      if (!admit(info.remoteAddress, info.onClose)) return REJECT;
    },

    onRequest(req) {
      const client = clientOf(req);
      if (exempt.has(client)) return;
      if (shedding) {
        let keep = false;
        for (const re of exemptPaths) if (re.test(req.path)) { keep = true; break; }
        if (!keep) {
          host.metric('shed_total', 1, undefined, 'counter');
          return shed;
        }
      }
      if (cfg.maxConnectionsPerIp !== 0 && !countedAtConnect) {
        const socket = req.raw.socket;
        if (!seen.has(socket)) {
          seen.add(socket);
          if (!uncapped(req.remoteAddress) && !admit(req.remoteAddress, (cb) => socket.once('close', cb))) return tooManyConnections;
        }
      }
      if (rate !== null) {
        const b = rate.get(client);
        if (b.tokens < 1) {
          host.metric('rate_limited_total', 1, undefined, 'counter');
          return {
            action: 'respond', status: 429,
            headers: { 'retry-after': String(Math.max(1, Math.ceil(rate.msUntil(b, 1) / 1000))), 'content-type': 'text/plain; charset=utf-8' },
            body: 'too many requests\n',
          };
        }
        b.tokens -= 1;
      }
    },

    dispose() {
      if (timer) clearInterval(timer);
      loop?.disable();
    },
  };
});
