/**
 * `/health`: readiness with each plugin's state; 503 when the server is not
 * ready (starting or draining) or a fail-closed plugin is quarantined, since
 * such a server would answer 503 to the requests that plugin guards.
 * `/health/live` answers 200 while the process serves at all.
 */
import { definePlugin, type PluginStatus } from '../../plugin-api/index.js';

const JSON_HEADERS = { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' };

export default definePlugin((host) => {
  const kernel = host.kernel;
  if (!kernel) throw new Error('health needs the trusted sandbox (it reads kernel state)');
  const { details } = host.config<{ details: boolean }>();
  const started = Date.now();
  const verdict = (plugins: PluginStatus[]) => {
    const blocking = plugins.filter((p) => p.state === 'quarantined' && p.failMode === 'closed');
    const degraded = plugins.filter((p) => p.state !== 'loaded');
    const ready = kernel.ready() && blocking.length === 0;
    return { ready, status: !ready ? 'unavailable' : degraded.length ? 'degraded' : 'ok' };
  };
  return {
    onRoute(req) {
      if (req.route === '/health/live') return { status: 200, headers: JSON_HEADERS, body: '{"status":"live"}' };
      const plugins = kernel.plugins();
      const v = verdict(plugins);
      if (req.route === '/health/ready') return { status: v.ready ? 200 : 503, headers: JSON_HEADERS, body: JSON.stringify({ status: v.status, ready: v.ready }) };
      const body = {
        status: v.status,
        ready: v.ready,
        uptimeSeconds: Math.round((Date.now() - started) / 1000),
        ...(details
          ? { plugins: plugins.map((p) => ({ name: p.name, version: p.version, sandbox: p.sandbox, state: p.state, calls: p.calls, errors: p.errors, ...(p.detail ? { detail: p.detail } : {}) })) }
          : {}),
      };
      return { status: v.ready ? 200 : 503, headers: JSON_HEADERS, body: JSON.stringify(body) };
    },
  };
});
