/**
 * The waf plugin: inspects every request (onRequest, priority 2) with the
 * engine in engine.ts, answers 403 when the anomaly score reaches the
 * threshold (in block mode), tags the request with `ctx.waf` for later
 * plugins, and keeps an audit ring of detections served at
 * `/__bext/waf/events` (admin) and published to `system/waf`.
 */
import { BextError, definePlugin, type HostApi, type TrustedRequest } from '../../plugin-api/index.js';
import { createWaf, type WafConfig, type WafMatch, type WafResult } from './engine.js';

/** One audit record: a request on which at least one rule matched. */
export interface WafEvent {
  /** Sequence number within this process. */
  seq: number;
  time: string;
  requestId: string;
  method: string;
  /** Path and query, at most 300 characters. */
  url: string;
  remoteAddress: string;
  score: number;
  threshold: number;
  blocked: boolean;
  mode: 'block' | 'detect';
  matches: Pick<WafMatch, 'ruleId' | 'family' | 'severity' | 'location' | 'data'>[];
}

/** What the plugin leaves in `req.ctx.waf` for later plugins. */
export interface WafCtx {
  score: number;
  families: readonly string[];
  /** The score reached the threshold (blocked, or would have been in detect mode). */
  attack: boolean;
}

const TOPIC = 'system/waf';
const CLEAN_CTX: WafCtx = Object.freeze({ score: 0, families: Object.freeze([]), attack: false });
const CLEAN_DECISION = Object.freeze({ action: 'continue' as const, ctx: Object.freeze({ waf: CLEAN_CTX }) });
const JSON_HEADERS = { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' };

export default definePlugin((host: HostApi) => {
  const waf = createWaf(host.config<Partial<WafConfig>>());
  const { maxBodyBytes, eventsRingSize, mode } = waf.config;
  const ring: WafEvent[] = [];
  let next = 0;
  let seq = 0;
  const totals = { inspected: 0, detected: 0, blocked: 0, bodyErrors: 0 };
  let publishFailing = false;

  function record(req: TrustedRequest, r: WafResult): void {
    const url = req.query ? `${req.path}?${req.query}` : req.path;
    const ev: WafEvent = {
      seq: ++seq,
      time: new Date().toISOString(),
      requestId: req.id,
      method: req.method,
      url: url.length > 300 ? `${url.slice(0, 297)}...` : url,
      remoteAddress: req.remoteAddress,
      score: r.score,
      threshold: r.threshold,
      blocked: r.blocked,
      mode,
      matches: r.matches.map(({ ruleId, family, severity, location, data }) => ({ ruleId, family, severity, location, data })),
    };
    if (ring.length < eventsRingSize) ring.push(ev);
    else ring[next] = ev;
    next = (next + 1) % eventsRingSize;
    totals.detected++;
    for (const f of r.families) host.metric(r.blocked ? 'blocked_total' : 'detections_total', 1, { family: f }, 'counter');
    let published: Promise<number>;
    try {
      published = host.publish(TOPIC, ev);
    } catch (e) {
      published = Promise.reject(e);
    }
    published.then(
      () => {
        publishFailing = false;
      },
      (e: unknown) => {
        // Logged once per failing stretch: a broken subscriber must not flood the log under attack.
        if (!publishFailing) host.log('warn', `waf: publishing to ${TOPIC} failed`, { error: (e as Error)?.message ?? String(e) });
        publishFailing = true;
      },
    );
  }

  /** Events, newest first. */
  function events(limit: number, onlyBlocked: boolean): WafEvent[] {
    const out: WafEvent[] = [];
    const n = ring.length;
    for (let k = 1; k <= n && out.length < limit; k++) {
      const ev = ring[(next - k + n * 2) % n]!;
      if (!onlyBlocked || ev.blocked) out.push(ev);
    }
    return out;
  }

  function decide(req: TrustedRequest, body: string | Buffer | undefined, bodyLength: number | undefined) {
    totals.inspected++;
    const r = waf.inspect({ method: req.method, path: req.path, query: req.query, headers: req.headers, body, bodyLength });
    if (r.matches.length === 0) return CLEAN_DECISION;
    record(req, r);
    if (r.blocked) {
      totals.blocked++;
      const err = new BextError('BEXT_ERR_WAF_BLOCKED', 'the request was blocked by the web application firewall', { details: { requestId: req.id } });
      return { action: 'respond' as const, status: err.status, headers: JSON_HEADERS, body: JSON.stringify(err.toJSON()) };
    }
    return { action: 'continue' as const, ctx: { waf: { score: r.score, families: r.families, attack: r.attack } satisfies WafCtx } };
  }

  return {
    onRequest(req) {
      const h = req.headers;
      const cl = h['content-length'];
      const declared = cl === undefined ? 0 : Number(cl);
      const hasBody = declared > 0 || h['transfer-encoding'] !== undefined || (req.body !== undefined && req.body.length > 0);
      if (!hasBody) return decide(req, undefined, undefined);
      // The kernel's text copy (needs: body) serves unless the body is compressed; the engine inspects
      // at most maxBodyBytes of it and scores rule 1011 beyond.
      if (req.body !== undefined && h['content-encoding'] === undefined) return decide(req, req.body, undefined);
      // Too large to inspect and not read yet: it is not read at all; the engine scores rule 1011.
      if (declared > maxBodyBytes) return decide(req, undefined, declared);
      return req.readBody().then(
        (buf) => decide(req, buf, undefined),
        (e: unknown) => {
          totals.bodyErrors++;
          if (e instanceof BextError && e.code === 'BEXT_ERR_BODY_TOO_LARGE') return decide(req, undefined, maxBodyBytes + 1);
          throw e;
        },
      );
    },

    onRoute(req) {
      const q = new URLSearchParams(req.query);
      const limit = Math.max(1, Math.min(eventsRingSize, Number(q.get('limit')) || eventsRingSize));
      const body = {
        mode,
        paranoia: waf.config.paranoia,
        threshold: waf.config.thresholds[String(waf.config.paranoia) as '1'],
        capacity: eventsRingSize,
        totals,
        events: events(limit, q.get('blocked') === '1' || q.get('blocked') === 'true'),
      };
      return { status: 200, headers: JSON_HEADERS, body: JSON.stringify(body) };
    },
  };
});
