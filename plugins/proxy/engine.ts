/**
 * The proxy engine: matches requests to routes, and runs the attempt loop —
 * pick a member, pass the breaker, send, judge the outcome, retry only where
 * it is safe and the budget allows.
 *
 * Retry safety: a connect failure means the member never saw the request, so
 * any method may go elsewhere. After the request was sent, only idempotent
 * methods are retried. A response is handed to the kernel only once it is
 * final, so no retry ever happens after bytes reached the client.
 */
import type { Duplex } from 'node:stream';
import {
  BextError,
  type ErrorCode, type Headers, type LogLevel, type ResponseData, type RouteDecision, type TrustedRequest,
} from '../../plugin-api/index.js';
import { cidrSet, clientAddress, type CidrSet } from '../../plugin-api/net.js';
import { ReplayBody } from './body.js';
import { compileConfig, type CompiledRoute, type ProxyConfig } from './config.js';
import { addVia, plainAddress, retryAfterMs, upstreamRequestHeaders, type ForwardInfo } from './headers.js';
import { classify, sendH2c, sendHttp1, type AttemptBody, type Cancel, type FailureKind, type Sent } from './transport.js';
import { Upstream, type Member, type ProxyEvent } from './upstream.js';
import { connectTo, handshake, join, type Tunnel } from './websocket.js';

/** A ResponseData that may carry HTTP/2 trailers for a listener that can send them. */
/** A proxied answer; `trailers` (from ResponseData) carries gRPC status and the like. */
export type ProxiedResponse = ResponseData;

export interface EngineHooks {
  onEvent(e: ProxyEvent): void;
  log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function failure(code: ErrorCode, message: string, upstream: string, reason: string): ResponseData {
  const e = new BextError(code, message);
  return {
    status: e.status,
    headers: { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', ...(e.status === 503 ? { 'retry-after': '1' } : {}) },
    body: JSON.stringify({ ...e.toJSON(), upstream, reason }),
  };
}

const kCancel = Symbol('bext.proxy.cancel');
type Watched = NodeJS.EventEmitter & { [kCancel]?: Cancel | null };

function onConnClose(this: Watched): void {
  const c = this[kCancel];
  if (c) {
    c.cancelled = true;
    c.abort?.();
  }
}

/** Points the connection's one close listener at this request's attempts (added once per connection, not per request). */
function watch(conn: Watched, cancel: Cancel): void {
  if (!(kCancel in conn)) conn.on('close', onConnClose);
  conn[kCancel] = cancel;
  if ((conn as { destroyed?: boolean }).destroyed) cancel.cancelled = true;
}

/** Via names the protocol as `1.1`, or `2` for HTTP/2 (Node reports `2.0`). */
function viaVersion(v: string): string {
  return v === '2.0' ? '2' : v;
}

function replayable(body: AttemptBody): boolean {
  return body === null || Buffer.isBuffer(body) || body.replayable;
}

/** Whether one more retry is allowed: under the per-request cap, with budget left (taken if so). */
function mayRetry(up: Upstream, retries: number, now: number): boolean {
  if (retries >= up.cfg.retries.maxRetries) return false;
  if (up.budget.tryRetry(now)) return true;
  up.retriesDenied++;
  return false;
}

function hasBody(req: TrustedRequest): boolean {
  // HTTP/2 marks a bodiless request on the stream itself (END_STREAM with the head), not with headers.
  const stream = (req.raw as { stream?: { endAfterHeaders?: boolean } }).stream;
  if (stream) return !stream.endAfterHeaders;
  const h = req.headers;
  const cl = h['content-length'];
  return (cl !== undefined && cl !== '0') || h['transfer-encoding'] !== undefined;
}

function cookie(header: string | string[] | undefined, name: string): string {
  if (header === undefined) return '';
  for (const part of (typeof header === 'string' ? header : header.join(';')).split(';')) {
    const eq = part.indexOf('=');
    if (eq !== -1 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return '';
}

export class ProxyEngine {
  readonly routes: CompiledRoute[];
  readonly upstreams = new Map<string, Upstream>();
  readonly tunnels = new Set<Tunnel>();
  /** WebSocket tunnels opened and closed, per upstream. */
  readonly ws = new Map<string, { opened: number; closed: number }>();
  #trusted: CidrSet;
  #clientOf: (req: { remoteAddress: string; headers: Headers }) => string;
  #via: string | false;
  #hooks: EngineHooks;

  constructor(cfg: ProxyConfig, hooks: EngineHooks) {
    this.routes = compileConfig(cfg);
    this.#hooks = hooks;
    this.#trusted = cidrSet(cfg.trustedProxies, '$.plugins.proxy.trustedProxies');
    this.#clientOf = clientAddress(this.#trusted);
    this.#via = cfg.via;
    for (const [name, up] of Object.entries(cfg.upstreams)) {
      this.upstreams.set(name, new Upstream(name, up, hooks.onEvent));
      this.ws.set(name, { opened: 0, closed: 0 });
    }
    for (const u of this.upstreams.values()) u.startChecks();
  }

  /** The first route that takes this request, or null. */
  match(method: string, path: string, host: string): CompiledRoute | null {
    for (const r of this.routes) if (r.match === null || r.match(method, path, host)) return r;
    return null;
  }

  #forwardInfo(req: TrustedRequest): ForwardInfo {
    const h = req.headers.host ?? req.headers[':authority'];
    return {
      peer: plainAddress(req.remoteAddress),
      trusted: this.#trusted.size > 0 && this.#trusted.has(req.remoteAddress),
      scheme: req.scheme,
      host: typeof h === 'string' ? h : '',
      httpVersion: viaVersion(req.httpVersion),
      via: this.#via,
    };
  }

  #headers(req: TrustedRequest, route: CompiledRoute): Record<string, string | string[]> {
    const h = upstreamRequestHeaders(req.headers, this.#forwardInfo(req));
    if (route.requestRemove) for (const k of route.requestRemove) delete h[k];
    if (route.requestSet) for (const [k, v] of route.requestSet) h[k] = v;
    return h;
  }

  #hashKey(req: TrustedRequest, up: Upstream): string {
    const k = up.cfg.hashKey;
    if (k === 'ip') return this.#clientOf(req);
    if (k.startsWith('header:')) {
      const v = req.headers[k.slice(7)];
      return v === undefined ? '' : typeof v === 'string' ? v : v.join(',');
    }
    return cookie(req.headers.cookie, k.slice(7));
  }

  #release(m: Member, up: Upstream): void {
    m.active--;
    up.active--;
  }

  /** Proxies one HTTP request; never throws (every failure is an answer). */
  async handle(req: TrustedRequest, route: CompiledRoute): Promise<ProxiedResponse> {
    const up = this.upstreams.get(route.upstream)!;
    // An HTTP/2 request ends with its stream, an HTTP/1 request with its connection.
    const conn = ((req.raw as { stream?: Watched }).stream ?? req.raw.socket) as Watched;
    const cancel: Cancel = { cancelled: false, abort: null };
    watch(conn, cancel);
    try {
      return await this.#attempts(req, route, up, cancel);
    } catch (e) {
      this.#hooks.log('error', 'proxy failed unexpectedly', { upstream: up.name, path: req.path, error: (e as Error)?.message ?? String(e) });
      return failure('BEXT_ERR_PROXY_BAD_GATEWAY', `proxying to upstream "${up.name}" failed`, up.name, 'internal');
    } finally {
      if (conn[kCancel] === cancel) conn[kCancel] = null;
    }
  }

  async #attempts(req: TrustedRequest, route: CompiledRoute, up: Upstream, cancel: Cancel): Promise<ProxiedResponse> {
    const cfg = up.cfg;
    up.budget.request(Date.now());
    const path = route.rewritePath(req.path);
    const target = req.query ? `${path}?${req.query}` : path;
    const headers = this.#headers(req, route);
    const clientHost = typeof headers.host === 'string' ? headers.host : this.#forwardInfo(req).host;
    let body: AttemptBody = null;
    if (hasBody(req)) {
      // Another plugin already read the body: take the shared copy.
      body = req.raw.readableDidRead ? await req.readBody() : new ReplayBody(req.raw, cfg.retries.bufferBytes);
    }
    const idempotent = up.retryMethods.has(req.method);
    const key = cfg.strategy === 'ip-hash' ? this.#hashKey(req, up) : '';
    const te = cfg.protocol === 'h2c' && /\btrailers\b/.test(String(req.headers.te ?? ''));
    let tried: Member[] | null = null;
    let retries = 0;
    for (;;) {
      if (cancel.cancelled) return failure('BEXT_ERR_PROXY_BAD_GATEWAY', `the client left before upstream "${up.name}" answered`, up.name, 'client');
      let now = Date.now();
      const m = up.pick(key, tried, now);
      if (m === null) return failure('BEXT_ERR_PROXY_UNAVAILABLE', `no member of upstream "${up.name}" is available`, up.name, 'all-down');
      const adm = up.admit(m, now);
      if (!adm.ok) return failure('BEXT_ERR_PROXY_UNAVAILABLE', `upstream "${up.name}" refused the request: ${adm.reason}`, up.name, adm.reason);
      const hostHeader = cfg.hostHeader === 'upstream' ? m.url.host : clientHost;
      if (hostHeader) headers.host = hostHeader;
      m.active++;
      up.active++;
      let res: Sent | null = null;
      let err: unknown = null;
      try {
        res = cfg.protocol === 'h2c'
          ? await sendH2c(m, req.method, target, hostHeader || m.url.host, headers, te, body, { connectMs: cfg.timeouts.connectMs, headersMs: cfg.timeouts.headersMs, bodyMs: cfg.timeouts.bodyMs, idleMs: cfg.keepAliveMs }, cancel)
          : await sendHttp1(m, req.method, target, headers, body, cancel);
      } catch (e) {
        err = e;
      }
      now = Date.now();
      if (res !== null) {
        const bad = res.status >= 500;
        up.report(m, bad ? '5xx' : 'ok', adm.probe, now);
        if (bad) {
          const wait = res.status === 503 ? retryAfterMs(res.headers['retry-after'], now) : null;
          if (wait !== null) m.notBefore = now + wait;
          if (up.retryStatus.has(res.status) && idempotent && replayable(body)) {
            let elsewhere = false;
            for (const x of up.members) if (x !== m && !tried?.includes(x) && up.available(x, now)) elsewhere = true;
            const canWait = wait === null || elsewhere || wait <= cfg.retries.maxRetryAfterMs;
            if (canWait && mayRetry(up, retries, now)) {
              res.discard();
              this.#release(m, up);
              up.retries++;
              retries++;
              (tried ??= []).push(m);
              if (wait !== null && !elsewhere && wait > 0) await sleep(wait);
              continue;
            }
          }
        }
        return this.#respond(res, m, up, route, viaVersion(req.httpVersion));
      }
      this.#release(m, up);
      const kind: FailureKind = classify(err);
      if (kind === 'client') {
        this.#hooks.log('debug', 'client request failed while proxying', { upstream: up.name, error: (err as Error)?.message });
        return failure('BEXT_ERR_PROXY_BAD_GATEWAY', `the request to upstream "${up.name}" could not be sent: ${(err as Error)?.message}`, up.name, 'client');
      }
      up.report(m, kind, adm.probe, now);
      const neverSent = kind === 'connect' && (body === null || Buffer.isBuffer(body) || body.replayable || !body.started);
      if ((neverSent || (idempotent && replayable(body))) && mayRetry(up, retries, now)) {
        up.retries++;
        retries++;
        (tried ??= []).push(m);
        continue;
      }
      if (kind === 'timeout') return failure('BEXT_ERR_PROXY_TIMEOUT', `member ${m.label} of upstream "${up.name}" did not answer within ${cfg.timeouts.headersMs} ms`, up.name, kind);
      return failure('BEXT_ERR_PROXY_BAD_GATEWAY', `member ${m.label} of upstream "${up.name}" failed: ${(err as Error)?.message ?? kind}`, up.name, kind);
    }
  }

  #respond(res: Sent, m: Member, up: Upstream, route: CompiledRoute, httpVersion: string): ProxiedResponse {
    const headers = res.headers;
    if (this.#via !== false) addVia(headers, this.#via, httpVersion);
    if (route.responseRemove) for (const k of route.responseRemove) delete headers[k];
    if (route.responseSet) for (const [k, v] of route.responseSet) headers[k] = v;
    const body = res.body();
    if (Buffer.isBuffer(body)) {
      this.#release(m, up);
      // No body at all (HEAD, 304, 204): the upstream's Content-Length stays as it said.
      return body.length === 0 ? { status: res.status, headers } : { status: res.status, headers, body };
    }
    let released = false;
    body.once('close', () => {
      if (released) return;
      released = true;
      this.#release(m, up);
    });
    body.once('error', (e: Error) => {
      const kind = classify(e);
      if (kind !== 'client') up.report(m, kind === 'connect' ? 'reset' : kind, false, Date.now());
    });
    const out: ProxiedResponse = { status: res.status, headers, body };
    if (res.trailers) out.trailers = res.trailers;
    return out;
  }

  /** The decision for an HTTP Upgrade (WebSocket) on a proxied route. */
  upgrade(req: TrustedRequest, route: CompiledRoute): RouteDecision {
    return { action: 'upgrade', upgrade: (_raw, socket, head) => void this.#tunnel(req, route, socket, head) };
  }

  async #tunnel(req: TrustedRequest, route: CompiledRoute, socket: Duplex, head: Buffer): Promise<void> {
    const up = this.upstreams.get(route.upstream)!;
    const cfg = up.cfg;
    const refuse = (status: number, reason: string) => {
      if (!socket.destroyed) socket.end(`HTTP/1.1 ${status} ${status === 503 ? 'Service Unavailable' : 'Bad Gateway'}\r\nconnection: close\r\ncontent-length: 0\r\nx-bext-proxy: ${reason}\r\n\r\n`);
    };
    const path = route.rewritePath(req.path);
    const target = req.query ? `${path}?${req.query}` : path;
    const headers = this.#headers(req, route);
    headers.connection = 'upgrade';
    headers.upgrade = req.headers.upgrade!;
    const clientHost = this.#forwardInfo(req).host;
    const key = cfg.strategy === 'ip-hash' ? this.#hashKey(req, up) : '';
    up.budget.request(Date.now());
    let tried: Member[] | null = null;
    let retries = 0;
    for (;;) {
      let now = Date.now();
      const m = up.pick(key, tried, now);
      if (m === null) return refuse(503, 'all-down');
      const adm = up.admit(m, now);
      if (!adm.ok) return refuse(503, adm.reason);
      headers.host = cfg.hostHeader === 'upstream' ? m.url.host : clientHost || m.url.host;
      let conn;
      try {
        conn = await connectTo(m, cfg.timeouts.connectMs);
      } catch (e) {
        now = Date.now();
        up.report(m, classify(e) === 'timeout' ? 'timeout' : 'connect', adm.probe, now);
        if (retries < cfg.retries.maxRetries && up.budget.tryRetry(now)) {
          retries++;
          up.retries++;
          (tried ??= []).push(m);
          continue;
        }
        return refuse(502, 'connect');
      }
      if (socket.destroyed) {
        // The client left while we were connecting.
        conn.destroy();
        if (adm.probe) up.report(m, 'ok', true, Date.now());
        return;
      }
      const t: Tunnel = { client: socket, upstream: conn };
      const counts = this.ws.get(up.name)!;
      this.tunnels.add(t);
      counts.opened++;
      m.active++;
      up.active++;
      let status = 0;
      join(t, handshake(req.method, target, headers), head, cfg.timeouts.websocketIdleMs, (s) => {
        status = s;
        up.report(m, s >= 500 ? '5xx' : 'ok', adm.probe, Date.now());
      }, () => {
        if (status === 0) up.report(m, 'reset', adm.probe, Date.now());
        this.tunnels.delete(t);
        counts.closed++;
        this.#release(m, up);
      });
      return;
    }
  }

  /** A snapshot of every upstream, for the admin route. */
  state(): Record<string, unknown> {
    const now = Date.now();
    const out: Record<string, unknown> = {};
    for (const [name, u] of this.upstreams) out[name] = { ...u.state(now), websocket: { ...this.ws.get(name)!, open: this.ws.get(name)!.opened - this.ws.get(name)!.closed } };
    return out;
  }

  async close(): Promise<void> {
    for (const t of this.tunnels) {
      t.client.destroy();
      t.upstream.destroy();
    }
    await Promise.all([...this.upstreams.values()].map((u) => u.close()));
  }
}
