/**
 * Reverse proxy. Routes come from config, so the proxy claims no paths in
 * its manifest: it is an onRender leaf (priority 40) that answers requests
 * matching a configured route and lets the rest go on to the next renderer
 * (static at 50, SSR…). Being a renderer is also what lets a cache plugin,
 * which wraps the renderers from further out, store upstream responses as it
 * stores rendered pages.
 *
 * WebSocket upgrades on configured routes come through onRender too (the
 * kernel offers upgrades on unclaimed paths to trusted onRender hooks).
 * onRoute serves the admin snapshot `/__bext/proxy`, and proxies requests on
 * any route a manifest overlay claims.
 */
import { readFileSync } from 'node:fs';
import { Ajv } from 'ajv';
import { definePlugin, type RenderDecision, type ResponseData, type TrustedRequest } from '../../plugin-api/index.js';
import type { ProxyConfig } from './config.js';
import { ProxyEngine } from './engine.js';
import type { ProxyEvent } from './upstream.js';

const FLUSH_MS = 1000;
const BREAKER_LEVEL = { closed: 0, 'half-open': 1, open: 2 } as const;

function json(status: number, data: unknown): ResponseData {
  return { status, headers: { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' }, body: JSON.stringify(data) };
}

/**
 * In a proxy app's instance (`apps[].proxy` in the server config) with no
 * routes of its own: one upstream named after the app, taking every request.
 */
function withAppTarget(cfg: ProxyConfig, app: { name: string; proxy?: string } | undefined): ProxyConfig {
  if (!app?.proxy || cfg.routes.length > 0) return cfg;
  // The upstream gets the defaults the schema gives a configured one.
  const schema = (JSON.parse(readFileSync(new URL('./bext-plugin.json', import.meta.url), 'utf8')) as { configSchema: { properties: { upstreams: { additionalProperties: object } }; definitions?: object } }).configSchema;
  const upstream: Record<string, unknown> = { members: [app.proxy] };
  new Ajv({ useDefaults: true, strict: false, allowUnionTypes: true }).validate({ ...schema.properties.upstreams.additionalProperties, definitions: schema.definitions }, upstream);
  return { ...cfg, upstreams: { ...cfg.upstreams, [app.name]: upstream as unknown as ProxyConfig['upstreams'][string] }, routes: [{ upstream: app.name, websocket: true } as ProxyConfig['routes'][number]] };
}

export default definePlugin((host) => {
  const cfg = withAppTarget(host.config<ProxyConfig>(), host.kernel?.app);
  const canMetric = (() => {
    try {
      host.metric('upstreams', Object.keys(cfg.upstreams).length, undefined, 'gauge');
      return true;
    } catch {
      // Without the metrics grant the proxy still works; it just records nothing.
      return false;
    }
  })();
  const metric: typeof host.metric = (name, value, labels, kind) => {
    if (canMetric) host.metric(name, value, labels, kind);
  };

  // The first health checks run while the server is still starting, before anyone can hear a publish.
  let held: Record<string, unknown>[] | null = [];
  const startup = setInterval(() => release(), 20);
  startup.unref();
  const publish = (msg: Record<string, unknown>) => {
    host.publish('system/proxy', msg).catch((err: unknown) => {
      host.log('warn', 'proxy: publishing to system/proxy failed', { error: String((err as Error)?.message ?? err) });
    });
  };
  const release = () => {
    if (held === null || (host.kernel && !host.kernel.ready())) return;
    const q = held;
    held = null;
    clearInterval(startup);
    for (const m of q) publish(m);
  };

  const onEvent = (e: ProxyEvent) => {
    metric('events_total', 1, { upstream: e.upstream, event: e.event }, 'counter');
    if (e.event === 'breaker') {
      metric('breaker_state', BREAKER_LEVEL[e.to], { upstream: e.upstream }, 'gauge');
      metric('breaker_transitions_total', 1, { upstream: e.upstream, to: e.to }, 'counter');
    }
    const level = e.event === 'member-up' || e.event === 'member-returned' || (e.event === 'breaker' && e.to === 'closed') ? 'info' : 'warn';
    host.log(level, `proxy: ${e.event}`, { ...e });
    const msg = { ...e, at: Date.now() };
    if (held !== null) release();
    if (held !== null) held.push(msg);
    else publish(msg);
  };
  const engine = new ProxyEngine(cfg, { onEvent, log: (level, msg, fields) => host.log(level, msg, fields) });

  // Per-request counts stay in plain fields and are turned into metrics once a second.
  const last = new Map<string, number>();
  const delta = (key: string, now: number) => {
    const d = now - (last.get(key) ?? 0);
    last.set(key, now);
    return d;
  };
  const flush = () => {
    release();
    const now = Date.now();
    for (const [name, u] of engine.upstreams) {
      metric('active_requests', u.active, { upstream: name }, 'gauge');
      metric('breaker_state', BREAKER_LEVEL[u.breaker.state], { upstream: name }, 'gauge');
      metric('retries_total', delta(`${name} retries`, u.retries), { upstream: name }, 'counter');
      metric('retries_denied_total', delta(`${name} denied`, u.retriesDenied), { upstream: name }, 'counter');
      for (const [reason, n] of Object.entries(u.overflows)) metric('refused_total', delta(`${name} refused ${reason}`, n), { upstream: name, reason }, 'counter');
      const ws = engine.ws.get(name)!;
      metric('websocket_open', ws.opened - ws.closed, { upstream: name }, 'gauge');
      metric('websocket_opened_total', delta(`${name} ws`, ws.opened), { upstream: name }, 'counter');
      for (const m of u.members) {
        const labels = { upstream: name, member: m.label };
        metric('member_available', u.available(m, now) ? 1 : 0, labels, 'gauge');
        metric('member_active_requests', m.active, labels, 'gauge');
        metric('member_requests_total', delta(`${name} ${m.id} requests`, m.requests), labels, 'counter');
        for (const [kind, n] of Object.entries(m.failures)) metric('member_failures_total', delta(`${name} ${m.id} ${kind}`, n), { ...labels, kind }, 'counter');
      }
    }
  };
  const timer = setInterval(flush, FLUSH_MS);
  timer.unref();
  flush();

  const isUpgrade = (req: TrustedRequest) => typeof req.headers.upgrade === 'string' && /\bupgrade\b/i.test(String(req.headers.connection ?? ''));

  return {
    onRender(req) {
      if (held !== null) release();
      const route = engine.match(req.method, req.path, req.host);
      if (route === null) return undefined;
      // The kernel offers upgrades on unclaimed paths to trusted onRender hooks.
      if (isUpgrade(req)) {
        if (!route.websocket) return json(400, { error: 'BEXT_ERR_NOT_FOUND', message: `proxy route ${route.index} does not allow upgrades` });
        return engine.upgrade(req, route) as RenderDecision;
      }
      return engine.handle(req, route);
    },

    onRoute(req) {
      if (req.route === '/__bext/proxy') return json(200, { upstreams: engine.state(), routes: cfg.routes });
      const route = engine.match(req.method, req.path, req.host);
      if (route === null) return json(404, { error: 'BEXT_ERR_NOT_FOUND', message: `no proxy route matches ${req.method} ${req.path}` });
      if (isUpgrade(req)) {
        if (!route.websocket) return json(400, { error: 'BEXT_ERR_NOT_FOUND', message: `proxy route ${route.index} does not allow upgrades` });
        return engine.upgrade(req, route);
      }
      return engine.handle(req, route);
    },

    async dispose() {
      clearInterval(timer);
      clearInterval(startup);
      flush();
      await engine.close();
    },
  };
});
