import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { plugin } from '../../test/helpers.js';
import { mergeDuplicates, stateText } from './index.js';

let b: Bext;
beforeAll(async () => {
  const rec = plugin('recorder', { routes: [{ path: '/rec' }], hooks: { onRequest: {} }, capabilities: ['metrics'] }, `
export default (host) => ({
  onRequest() {},
  onRoute() { host.metric('widgets_total', 1, { color: 'blue' }); host.metric('queue_depth', 7, {}, 'gauge'); host.metric('size_bytes', 512, {}, 'histogram'); return { status: 200, body: 'ok' }; },
});`);
  b = await startBext({ plugins: ['metrics', 'health', 'static', rec] });
  for (let i = 0; i < 20; i++) await (await fetch(`${b.url}/rec`)).text();
  await (await fetch(`${b.url}/nope`)).text();
  await (await fetch(`${b.url}/health`)).text();
});
afterAll(() => b.close());

describe('metrics', () => {
  it('serves Prometheus text that promtool accepts', async () => {
    const r = await fetch(`${b.adminUrl}/metrics`);
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/plain; version=0.0.4/);
    const text = await r.text();
    const check = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    expect(check.error, 'promtool from Debian package "prometheus" must be installed').toBeUndefined();
    expect(check.status, check.stdout + check.stderr).toBe(0);
  });

  it('has per-plugin hook counters and latency, HTTP counts by group and status class, and plugin metrics', async () => {
    const text = await (await fetch(`${b.adminUrl}/metrics`)).text();
    expect(text).toMatch(/bext_hook_calls_total\{plugin="recorder",sandbox="trusted",hook="onRequest"\} 2[2-9]/);
    expect(text).toMatch(/bext_hook_calls_total\{plugin="recorder",sandbox="trusted",hook="onRoute"\} 20/);
    expect(text).toMatch(/bext_hook_duration_seconds_count\{plugin="recorder",sandbox="trusted",hook="onRoute"\} 20/);
    expect(text).toMatch(/bext_http_requests_total\{group="default",method="GET",status_class="2xx"\} \d+/);
    expect(text).toMatch(/bext_http_requests_total\{group="default",method="GET",status_class="4xx"\} 1/);
    expect(text).toMatch(/bext_plugin_recorder_widgets_total\{color="blue"\} 20/);
    expect(text).toMatch(/bext_plugin_recorder_queue_depth 7/);
    expect(text).toMatch(/bext_plugin_recorder_size_bytes_count 20/);
    expect(text).toMatch(/bext_process_heap|bext_process_process_resident_memory_bytes|nodejs_heap/);
    // No raw paths as label values.
    expect(text).not.toMatch(/"\/rec"|"\/nope"/);
  });

  it('is an admin route', async () => {
    expect((await fetch(`${b.url}/metrics`)).status).toBe(403);
  });

  it('reports plugin states and readiness', async () => {
    const text = await (await fetch(`${b.adminUrl}/metrics`)).text();
    expect(text).toMatch(/^bext_ready 1$/m);
    expect(text).toMatch(/^bext_plugin_state\{plugin="recorder",state="loaded"\} 1$/m);
    expect(text).toMatch(/^bext_plugin_state\{plugin="recorder",state="quarantined"\} 0$/m);
    expect(text).toMatch(/^bext_plugin_info\{plugin="metrics",version="1.0.0",sandbox="trusted",fail_mode="open"\} 1$/m);
    expect(stateText([], false)).toBe('# HELP bext_ready Whether the server accepts traffic (started, not draining)\n# TYPE bext_ready gauge\nbext_ready 0\n');
  });

  it('sums repeated HTTP series into one sample', () => {
    const text = '# TYPE bext_http_requests_total counter\nbext_http_requests_total{group="default",method="OTHER",status_class="4xx"} 2\nbext_http_requests_total{group="default",method="GET",status_class="2xx"} 5\nbext_http_requests_total{group="default",method="OTHER",status_class="4xx"} 3\n';
    expect(mergeDuplicates(text)).toBe('# TYPE bext_http_requests_total counter\nbext_http_requests_total{group="default",method="OTHER",status_class="4xx"} 5\nbext_http_requests_total{group="default",method="GET",status_class="2xx"} 5\n');
    expect(mergeDuplicates('x 1\n')).toBe('x 1\n');
  });
});
