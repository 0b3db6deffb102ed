/**
 * `/metrics` in the Prometheus text format: what the kernel records (per
 * plugin and hook calls, errors, latency; HTTP requests; denials; process)
 * and what plugins record through `bext_metric`, plus each plugin's state
 * and the server's readiness. An admin route: scrape it on the admin
 * listener.
 */
import { definePlugin, type PluginStatus } from '../../plugin-api/index.js';

const STATES: PluginStatus['state'][] = ['loaded', 'degraded', 'quarantined', 'failed'];

/** Escapes a Prometheus label value. */
function lv(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

/** Plugin states as one-hot gauges, and readiness. */
export function stateText(plugins: PluginStatus[], ready: boolean): string {
  const info: string[] = [];
  const state: string[] = [];
  for (const p of plugins) {
    info.push(`bext_plugin_info{plugin="${lv(p.name)}",version="${lv(p.version)}",sandbox="${lv(p.sandbox)}",fail_mode="${p.failMode}"} 1`);
    for (const s of STATES) state.push(`bext_plugin_state{plugin="${lv(p.name)}",state="${s}"} ${p.state === s ? 1 : 0}`);
  }
  return (
    '# HELP bext_ready Whether the server accepts traffic (started, not draining)\n# TYPE bext_ready gauge\n' +
    `bext_ready ${ready ? 1 : 0}\n` +
    (info.length ? `# HELP bext_plugin_info Loaded plugins\n# TYPE bext_plugin_info gauge\n${info.join('\n')}\n` : '') +
    (state.length ? `# HELP bext_plugin_state Plugin state (1 for the current one)\n# TYPE bext_plugin_state gauge\n${state.join('\n')}\n` : '')
  );
}

/**
 * Sums samples that repeat a series (same name and labels) in the kernel's
 * hand-written HTTP block, which keys its counts by the raw method but
 * labels every unknown one `method="OTHER"`: two unknown methods would give
 * two samples of one series, and Prometheus rejects such a scrape.
 */
export function mergeDuplicates(text: string): string {
  const start = text.indexOf('\nbext_http_requests_total{');
  if (start === -1) return text;
  const seen = new Map<string, number>();
  let dup = false;
  const lines = text.split('\n');
  const out: string[] = [];
  for (const line of lines) {
    if (line.startsWith('bext_http_requests_total{')) {
      const sp = line.lastIndexOf(' ');
      const key = line.slice(0, sp);
      const at = seen.get(key);
      if (at !== undefined) {
        dup = true;
        const prev = out[at]!;
        out[at] = `${key} ${Number(prev.slice(prev.lastIndexOf(' ') + 1)) + Number(line.slice(sp + 1))}`;
        continue;
      }
      seen.set(key, out.length);
    }
    out.push(line);
  }
  return dup ? out.join('\n') : text;
}

export default definePlugin((host) => {
  const kernel = host.kernel;
  if (!kernel) throw new Error('metrics needs the trusted sandbox (it reads the kernel registry)');
  return {
    async onRoute() {
      const text = mergeDuplicates(await kernel.metricsText()) + stateText(kernel.plugins(), kernel.ready());
      return { status: 200, headers: { 'content-type': kernel.metricsContentType, 'cache-control': 'no-store' }, body: text };
    },
  };
});
