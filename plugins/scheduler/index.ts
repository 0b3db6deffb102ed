/**
 * `/__bext/scheduler` (admin): the kernel's scheduled tasks with their next
 * run, recent runs and failures, as JSON or (for `Accept: text/html`) a
 * table; `POST /__bext/scheduler/run?plugin=&task=` runs one now.
 */
import { BextError, definePlugin, type KernelServices, type TaskRun, type TaskStatus } from '../../plugin-api/index.js';

const JSON_HEADERS = { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' };
const HTML_HEADERS = { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' };

function errorBody(e: BextError) {
  return { status: e.status, headers: JSON_HEADERS, body: JSON.stringify(e.toJSON()) };
}

const escape = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const when = (ms: number | null | undefined) => (ms ? new Date(ms).toISOString() : '—');

function runCell(r: TaskRun | null): string {
  if (!r) return '—';
  const took = r.outcome === 'ok' || r.outcome === 'error' || r.outcome === 'timeout' ? ` in ${r.durationMs.toFixed(1)} ms` : '';
  const by = r.instance ? ` on ${escape(r.instance)}` : '';
  return `${escape(r.outcome)}${took} <small>${escape(when(r.scheduledAt))}${r.trigger ? ' (manual)' : ''}${by}</small>${r.error ? `<br><small>${escape(r.error)}</small>` : ''}`;
}

/**
 * The status as an HTML page: one row per task. A cluster-scoped task with a
 * shared view shows the whole cluster's runs (marked "cluster"); the others
 * show what this instance saw.
 */
export function renderHtml(tasks: TaskStatus[]): string {
  const rows = tasks
    .map((t) => {
      const v = t.cluster ?? t;
      const seen = t.cluster ? ' <small>(cluster)</small>' : t.clusterError ? ` <small>(this instance; ${escape(t.clusterError)})</small>` : '';
      return `<tr><td>${escape(t.plugin)}</td><td>${escape(t.name)}</td><td><code>${escape(t.cron)}</code>${t.timezone ? ` ${escape(t.timezone)}` : ''}</td>`
        + `<td>${t.scope}${seen}</td><td>${t.overlap}</td><td>${escape(when(t.nextRun))}</td><td>${runCell(v.lastRun)}</td>`
        + `<td>${v.counts.ok}</td><td>${v.failures}</td><td>${runCell(v.lastFailure)}</td></tr>`;
    })
    .join('\n');
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>bext scheduler</title>
<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}small{color:#555}</style></head>
<body><h1>Scheduled tasks</h1>
<table><thead><tr><th>plugin</th><th>task</th><th>cron</th><th>scope</th><th>overlap</th><th>next run</th><th>last run</th><th>ok</th><th>failures</th><th>last failure</th></tr></thead>
<tbody>
${rows || '<tr><td colspan="10">no scheduled tasks</td></tr>'}
</tbody></table></body></html>`;
}

export default definePlugin((host) => {
  const kernel: KernelServices | undefined = host.kernel;
  if (!kernel) throw new Error('scheduler needs the trusted sandbox (it reads kernel state)');
  const { history } = host.config<{ history: number }>();
  return {
    async onRoute(req) {
      if (req.route === '/__bext/scheduler/run') {
        const q = new URLSearchParams(req.query);
        const plugin = q.get('plugin');
        const task = q.get('task');
        if (!plugin || !task) return errorBody(new BextError('BEXT_ERR_QUERY_INVALID', 'POST /__bext/scheduler/run needs ?plugin=<plugin>&task=<task>', { hint: 'GET /__bext/scheduler lists the tasks' }));
        try {
          const run = await kernel.runTask(plugin, task);
          return { status: 200, headers: JSON_HEADERS, body: JSON.stringify({ plugin, task, run }) };
        } catch (e) {
          if (e instanceof BextError) return errorBody(e);
          throw e;
        }
      }
      const tasks = (await kernel.schedulerCluster()).map((t) => ({
        ...t,
        history: t.history.slice(0, history),
        ...(t.cluster ? { cluster: { ...t.cluster, history: t.cluster.history.slice(0, history) } } : {}),
      }));
      if (/\btext\/html\b/.test(String(req.headers.accept ?? ''))) return { status: 200, headers: HTML_HEADERS, body: renderHtml(tasks) };
      return { status: 200, headers: JSON_HEADERS, body: JSON.stringify({ now: Date.now(), tasks }) };
    },
  };
});
