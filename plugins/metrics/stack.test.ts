/**
 * Every plugin in plugins/ loaded together, traffic that exercises each of
 * them, then `/metrics`: it must pass `promtool check metrics`, hold no
 * repeated series, carry the families each area is expected to report, and
 * keep its label cardinality bounded (no raw paths, no client addresses; a
 * burst of distinct paths, queries and headers adds no series).
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { until } from '../../test/helpers.js';

const PLUGINS = resolve(import.meta.dirname, '..');
const GEO_DB = resolve(import.meta.dirname, '../../../shared/corpus/geo/GeoIP2-Country-Test.mmdb');
const API_KEY = 'stack-test-key';

/** Per plugin: the config it runs with here. Plugins not listed run with their defaults. */
function configs(site: string, upstream: string, otlp: string): Record<string, unknown> {
  return {
    static: { root: 'public', maxAge: 30 },
    ipfilter: { deny: ['203.0.113.0/24'] },
    // A loaded test machine must not make it shed the test's own traffic.
    ddos: { shedding: { eventLoopDelayMs: 0, heapUsedRatio: 0 } },
    geo: { database: GEO_DB, deny: ['CN'] },
    cors: { origins: ['https://app.example.com'] },
    ratelimit: { rules: [{ name: 'api', match: { paths: ['/api/**'] }, key: ['ip'], limit: 5, windowSeconds: 60 }] },
    auth: { apiKeys: { keys: [{ id: 'ci', sha256: createHash('sha256').update(API_KEY).digest('hex'), scopes: ['deploy'] }] }, rules: [{ match: { paths: ['/private/**'] }, require: 'apikey' }], default: 'optional' },
    tenant: { hosts: { localhost: 'main' }, fallback: 'main' },
    cache: { rules: [{ paths: ['/', '/about.html'], mode: 'swr', ttl: 30, swr: 60 }] },
    proxy: { upstreams: { app: { members: [upstream, 'http://127.0.0.1:9'], health: { active: { path: '/', intervalMs: 100, fall: 1 } } } }, routes: [{ upstream: 'app', paths: ['/api/**'] }] },
    ssr: { workers: 1, site: 'app' },
    tracing: { endpoint: otlp, batch: { scheduledDelayMs: 50 } },
    dashboard: { intervalMs: 250 },
    tls: { listeners: [{ port: 0, host: '127.0.0.1' }], storage: { dir: join(site, 'tls-store') }, selfSigned: { names: ['localhost'] } },
  };
}

/**
 * promtool findings on metrics other plugins record, each waiting for a
 * rename in that plugin. Anything else promtool reports fails the test.
 */
const KNOWN_LINT: { metric: string; owner: string; fix: string }[] = [];

interface Series {
  name: string;
  labels: Record<string, string>;
  key: string;
}

function series(text: string): Series[] {
  const out: Series[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const brace = line.indexOf('{');
    const space = line.lastIndexOf(' ');
    const name = brace === -1 || brace > space ? line.slice(0, line.indexOf(' ')) : line.slice(0, brace);
    const labels: Record<string, string> = {};
    if (brace !== -1 && brace < space) for (const m of line.slice(brace + 1, line.lastIndexOf('}')).matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[m[1]!] = m[2]!;
    out.push({ name, labels, key: line.slice(0, space) });
  }
  return out;
}

const IP = /^(\d{1,3}\.){3}\d{1,3}$|^[0-9a-f:]*::[0-9a-f:]*$|^::ffff:/i;

let b: Bext;
let upstream: http.Server;
let otlp: http.Server;
let loaded: string[] = [];
const spans: unknown[] = [];

beforeAll(async () => {
  const site = mkdtempSync(join(tmpdir(), 'bext-stack-'));
  mkdirSync(join(site, 'public'));
  writeFileSync(join(site, 'public', 'index.html'), `<!doctype html><title>home</title><p>${'hello world '.repeat(400)}</p>`);
  writeFileSync(join(site, 'public', 'about.html'), '<!doctype html><title>about</title>');
  mkdirSync(join(site, 'app', 'pages'), { recursive: true });
  writeFileSync(join(site, 'app', 'pages', 'hello.tsx'), 'export default function Hello() { return <p>hello from react</p>; }\n');
  upstream = http.createServer((req, res) => res.end(`upstream ${req.url}`));
  otlp = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c)).on('end', () => {
      spans.push(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      res.end('{}');
    });
  });
  for (const s of [upstream, otlp]) await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s: http.Server) => (s.address() as AddressInfo).port;
  const cfg = configs(site, `http://127.0.0.1:${port(upstream)}`, `http://127.0.0.1:${port(otlp)}/v1/traces`);
  // Every plugin folder; geo only where MaxMind's test database is at hand.
  loaded = readdirSync(PLUGINS).filter((d) => existsSync(join(PLUGINS, d, 'bext-plugin.json')) && (d !== 'geo' || existsSync(GEO_DB)));
  b = await startBext({ siteDir: site, plugins: loaded.map((d) => ({ dir: join(PLUGINS, d) })), config: { plugins: Object.fromEntries(loaded.filter((d) => cfg[d]).map((d) => [d, cfg[d]])) } as never });
}, 120_000);

afterAll(async () => {
  await b?.close();
  for (const s of [upstream, otlp]) await new Promise<void>((r) => (s ? s.close(() => r()) : r()));
});

let lastBody = '';
async function get(path: string, init: RequestInit = {}): Promise<number> {
  const r = await fetch(b.url + path, init);
  lastBody = await r.text();
  return r.status;
}

/** A raw request line, for methods fetch refuses to send. */
function raw(method: string, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${b.url}${path}`, { method }, (res) => res.resume().on('end', resolve));
    req.on('error', reject);
    req.end();
  });
}

async function scrape(): Promise<string> {
  const r = await fetch(`${b.adminUrl}/metrics`);
  expect(r.status).toBe(200);
  return r.text();
}

describe('metrics across every plugin', () => {
  it('pass promtool, repeat no series and cover every area after traffic through all plugins', async () => {
    expect(loaded).toEqual(expect.arrayContaining(['waf', 'cache', 'ratelimit', 'realtime', 'proxy', 'ssr', 'metrics', 'dashboard', 'requestlog', 'tracing', 'logs']));
    const sse = await fetch(`${b.url}/__bext/events?topic=chat/room`);
    for (let i = 0; i < 3; i++) expect(await get('/'), lastBody).toBe(200);
    expect(await get('/about.html', { headers: { 'accept-encoding': 'gzip' } })).toBe(200);
    expect(await get('/hello')).toBe(200);
    expect(await get('/missing')).toBe(404);
    expect(await get(`/?q=${encodeURIComponent("1' UNION SELECT password FROM users--")}`)).toBe(403);
    expect(await get('/private/x')).toBe(401);
    expect(await get('/private/x', { headers: { 'x-api-key': API_KEY } })).toBe(404);
    expect(await get('/', { method: 'OPTIONS', headers: { origin: 'https://app.example.com', 'access-control-request-method': 'GET' } })).toBe(204);
    const api: number[] = [];
    for (let i = 0; i < 8; i++) api.push(await get(`/api/items/${i}`));
    expect(api.slice(0, 5).every((s) => s === 200)).toBe(true);
    expect(api.slice(5)).toEqual([429, 429, 429]);
    await raw('TRACE', '/t');
    await raw('PROPFIND', '/dav');
    await b.publish('chat/room', { hi: 1 });
    const st = (await (await fetch(`${b.adminUrl}/__bext/tls/status`)).json()) as { listeners: { port: number }[] };
    await new Promise<void>((res, rej) => {
      const s = tls.connect({ port: st.listeners[0]!.port, host: '127.0.0.1', servername: 'localhost', rejectUnauthorized: false }, () => {
        s.end();
        res();
      });
      s.on('error', rej);
    });
    // Plugins flush their counters once a second; wait for the slowest areas to show up.
    await until(async () => {
      const t = await scrape();
      return ['bext_plugin_realtime_deliveries_total', 'bext_plugin_ratelimit_limited_total', 'bext_plugin_cache_requests_total', 'bext_plugin_tracing_spans_exported_total', 'bext_plugin_proxy_member_available', 'bext_plugin_ssr_workers', 'bext_plugin_tls_handshakes_total']
        .every((n) => t.includes(`\n${n}`));
    }, 15_000, 'plugin metrics flushed');
    await sse.body?.cancel();

    const text = await scrape();
    const check = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    expect(check.error, 'promtool (Debian package "prometheus") must be installed').toBeUndefined();
    const findings = `${check.stdout}${check.stderr}`.split('\n').filter(Boolean);
    expect(findings.filter((f) => !KNOWN_LINT.some((k) => f.startsWith(`${k.metric} `))), 'promtool findings').toEqual([]);

    const all = series(text);
    const keys = new Set<string>();
    const repeated = all.filter((s) => (keys.has(s.key) ? true : (keys.add(s.key), false))).map((s) => s.key);
    expect(repeated, 'series that appear twice').toEqual([]);

    const names = new Set(all.map((s) => s.name));
    const expected = [
      // every plugin and hook: calls, errors, time; sandboxes: fuel and memory (none here: all trusted)
      'bext_hook_calls_total', 'bext_hook_errors_total', 'bext_hook_timeouts_total', 'bext_hook_duration_seconds_bucket',
      // HTTP by group, method and status class, with latency
      'bext_http_requests_total', 'bext_http_request_duration_seconds_bucket',
      // cache hit ratio and bytes
      'bext_plugin_cache_requests_total', 'bext_plugin_cache_memory_bytes',
      // WAF blocks by family; rate-limit rejections; auth
      'bext_plugin_waf_blocked_total', 'bext_plugin_ratelimit_limited_total', 'bext_plugin_auth_denied_total',
      // hub connections and deliveries
      'bext_plugin_realtime_connections', 'bext_plugin_realtime_deliveries_total',
      // upstream health and breakers
      'bext_plugin_proxy_member_available', 'bext_plugin_proxy_breaker_state',
      // render pool
      'bext_plugin_ssr_workers', 'bext_plugin_ssr_queue_depth',
      // event loop and heap
      'bext_process_nodejs_eventloop_lag_p99_seconds', 'bext_process_nodejs_heap_size_used_bytes',
      // plugin states, readiness, tracing, TLS
      'bext_plugin_state', 'bext_ready', 'bext_plugin_tracing_spans_total', 'bext_plugin_tls_handshakes_total',
    ];
    expect(expected.filter((n) => !names.has(n)), 'missing families').toEqual([]);
    const hookPlugins = new Set(all.filter((s) => s.name === 'bext_hook_calls_total').map((s) => s.labels.plugin));
    for (const p of loaded) {
      const m = JSON.parse(readFileSync(join(PLUGINS, p, 'bext-plugin.json'), 'utf8')) as { hooks?: object; routes?: unknown[] };
      if ((m.hooks && Object.keys(m.hooks).length) || m.routes?.length) expect(hookPlugins.has(p), `hook counters for ${p}`).toBe(true);
    }
    expect(all.find((s) => s.name === 'bext_plugin_waf_blocked_total')!.labels.family).toBe('sqli');
    expect(all.filter((s) => s.name === 'bext_plugin_proxy_member_available').map((s) => s.labels.member).sort()).toHaveLength(2);
    expect(all.find((s) => s.name === 'bext_http_requests_total' && s.labels.method === 'OTHER')).toBeDefined();

    // No raw paths or client addresses as label values (upstream members are configured addresses).
    for (const s of all) {
      for (const [k, v] of Object.entries(s.labels)) {
        if (k === 'le' || k === 'quantile') continue;
        expect(v.startsWith('/') && v !== '/', `${s.key}: ${k} is a path`).toBe(false);
        if (k !== 'member') expect(IP.test(v), `${s.key}: ${k} is an address`).toBe(false);
      }
    }
  }, 90_000);

  it('keeps label cardinality bounded: distinct paths, queries, hosts and headers add no series', async () => {
    // Warm every status class and route the burst below uses, then count.
    // Same shape of request as the burst, so every bounded label value (status class, bot class…) is already there.
    const shaped = (i: number | string) => ({ headers: { 'user-agent': `agent-${i}`, 'x-forwarded-for': `198.51.100.${typeof i === 'number' ? i % 250 : 1}`, 'x-request-id': String(i) } });
    for (const p of ['/r/warm', '/?warm=1', '/api/warm']) {
      await get(p);
      await get(p, shaped('warm'));
    }
    await new Promise((r) => setTimeout(r, 1200));
    const before = series(await scrape());
    const count = (list: Series[]) => new Map([...list.reduce((m, s) => m.set(s.name, (m.get(s.name) ?? 0) + 1), new Map<string, number>())]);
    for (let i = 0; i < 150; i++) {
      await get(`/r/${i}-${Math.random().toString(36).slice(2)}?id=${i}`, shaped(i));
    }
    await new Promise((r) => setTimeout(r, 1200));
    const after = series(await scrape());
    // Families that appeared meanwhile (a plugin's first flush) are not growth.
    const had = count(before);
    const grew = [...count(after)].filter(([n, c]) => had.has(n) && c > had.get(n)!).map(([n, c]) => `${n}: ${had.get(n)} → ${c}`);
    expect(grew, `families that gained series: ${grew.join('; ')}`).toEqual([]);
    expect(after.length).toBeLessThan(5000);
  }, 60_000);
});
