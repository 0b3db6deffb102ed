/**
 * Cost of observability on the default stack (the composition in
 * plugins.lock.json: waf, cache, compression, static, ssr, og, image,
 * health, metrics, realtime, requestlog, logs, dashboard) serving the 2 KB
 * page, in one run with interleaved rounds:
 * - `off`: the default stack without metrics, requestlog, logs and dashboard
 *   (nobody observes requests, nobody scrapes);
 * - `on`: plus metrics (scraped every 15 s, a typical Prometheus interval) and
 *   request capture (requestlog: the kernel records per-hook timings for
 *   every request and hands each record over). Target: ≥ 0.95× `off`.
 * - `observer`: `off` plus a request observer that does nothing, i.e. what
 *   the kernel itself spends on capture for any observer;
 * - `default`: the whole default stack (`on` plus logs and the dashboard's
 *   once-a-second snapshot);
 * - `tracing`: `on` plus tracing every request (sampleRatio 1, a server span
 *   and a span per hook) exported over OTLP/HTTP to a sink in this process;
 *   `tracing10`: the same with sampleRatio 0.1.
 *
 * Every server also gets a load balancer's `/health` probe every 5 s, as a
 * deployed one would: an occasional request on another route (a probe, a
 * scrape) was measured to slow the page's path by 5–20 % on this machine, so
 * a baseline that never sees one would flatter `off`.
 *
 *   npm run bench -- observability      (BENCH_SECONDS, BENCH_ROUNDS)
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { compare, cpuCol, cpuRatio, fmt, hasWrk, load, loadCpu, startServer } from './lib.js';

const ROOT = resolve(import.meta.dirname, '..');

/** A plugin folder whose request observer only counts. */
function noopObserver(): string {
  const dir = mkdtempSync(join(tmpdir(), 'bext-bench-observer-'));
  writeFileSync(join(dir, 'bext-plugin.json'), JSON.stringify({ name: 'observer', version: '1.0.0', sandbox: 'trusted', entry: 'index.mjs' }));
  writeFileSync(join(dir, 'index.mjs'), 'let n = 0;\nexport default (host) => { const stop = host.kernel.observeRequests(() => { n++; }); return { dispose: stop }; };\n');
  return dir;
}

/** `serve <variant> [otlp url]`: the server process (spawned by the run below). */
async function serve(variant: string, otlp: string | undefined): Promise<void> {
  const { parseConfig } = await import('../kernel/config.js');
  const { Logger } = await import('../kernel/log.js');
  const { Kernel } = await import('../kernel/server.js');
  const { PAGE } = await import('./servers/page.js');
  const site = mkdtempSync(join(tmpdir(), 'bext-bench-obs-'));
  writeFileSync(join(site, 'index.html'), PAGE);
  const lock = JSON.parse(readFileSync(join(ROOT, 'plugins.lock.json'), 'utf8')) as { plugins: { name: string; source: string; capabilities: string[]; order: number }[] };
  const observability = new Set(['metrics', 'requestlog', 'logs', 'dashboard']);
  const keep = (name: string) =>
    !observability.has(name) || variant === 'default' || ((variant === 'on' || variant.startsWith('tracing')) && (name === 'metrics' || name === 'requestlog'));
  const plugins = [...lock.plugins].sort((a, b) => a.order - b.order).filter((p) => keep(p.name)).map((p) => ({ source: p.source, grants: p.capabilities }));
  if (variant === 'observer') plugins.push({ source: `file:${noopObserver()}`, grants: [] });
  if (variant.startsWith('tracing')) plugins.push({ source: `file:${join(ROOT, 'plugins', 'tracing')}`, grants: ['metrics'] });
  const names = plugins.map((p) => p.source);
  const config = parseConfig(
    {
      server: { port: 0, host: '127.0.0.1' },
      admin: { port: 0, host: '127.0.0.1' },
      plugins: {
        static: { root: '.' },
        ...(variant.startsWith('tracing') ? { tracing: { endpoint: otlp, sampleRatio: variant === 'tracing10' ? 0.1 : 1 } } : {}),
      },
    },
    'bench config',
  );
  const k = await Kernel.create({ config, plugins, siteDir: site, logger: new Logger('error'), baseDir: ROOT });
  const { port, adminPort } = await k.listen();
  const poll = (path: string, ms: number) =>
    setInterval(() => {
      http.get(`http://127.0.0.1:${adminPort}${path}`, (r) => r.resume()).on('error', () => undefined);
    }, ms).unref();
  poll('/health', 5000);
  // Scraped like Prometheus would, when there is something to scrape.
  if (names.includes('builtin:metrics')) poll('/metrics', 15000);
  process.stdout.write(`LISTENING ${port}\n`);
  process.on('SIGTERM', () => void k.close(1000).then(() => process.exit(0)));
}

async function run(): Promise<void> {
  const seconds = Number(process.env.BENCH_SECONDS ?? 5);
  const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
  // The OTLP collector stand-in: reads and acknowledges each export.
  let spans = 0;
  const sink = http.createServer((req, res) => {
    let bytes = 0;
    req.on('data', (c: Buffer) => (bytes += c.length));
    req.on('end', () => {
      if (bytes) spans++;
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((r) => sink.listen(0, '127.0.0.1', () => r()));
  const otlp = `http://127.0.0.1:${(sink.address() as AddressInfo).port}/v1/traces`;
  const self = join(ROOT, 'bench', 'observability.ts');
  const variants = ['off', 'observer', 'on', 'default', 'tracing', 'tracing10'];
  const servers = Object.fromEntries(await Promise.all(variants.map(async (v) => [v, await startServer(self, ['serve', v, otlp])] as const)));
  try {
    for (const s of Object.values(servers)) await load(`http://127.0.0.1:${s.port}/`, 1);
    // Server CPU per request beside req/s: the steadier figure on a shared machine (lowest round of each).
    const res = await compare(
      variants.map((name) => ({ name, run: () => loadCpu(servers[name]!.proc.pid!, `http://127.0.0.1:${servers[name]!.port}/`, seconds) })),
      rounds,
    );
    const base = res.get('off')!;
    console.log(`observability benchmark (${hasWrk ? 'wrk -t1 -c50' : 'autocannon -c50'}, ${seconds}s × best of ${rounds} interleaved rounds, 2 KB page from static through the default stack)`);
    console.log('| stack | req/s | p99 ms | ratio to off | server CPU µs/req | CPU ratio (off ÷ stack) | target |');
    console.log('| --- | --- | --- | --- | --- | --- | --- |');
    const label: Record<string, string> = {
      off: 'default stack without metrics and capture',
      observer: 'off + a no-op request observer (kernel side of capture)',
      on: 'off + metrics (scraped every 15 s) + request capture',
      default: 'whole default stack (+ logs, dashboard)',
      tracing: 'on + tracing (every request, OTLP/HTTP)',
      tracing10: 'on + tracing (sampleRatio 0.1)',
    };
    const target: Record<string, string> = { off: '—', observer: 'part', on: '≥ 0.95', default: 'report', tracing: 'report', tracing10: 'report' };
    for (const [name, l] of res) {
      console.log(`| ${label[name]} | ${fmt(l.rps)} | ${l.p99ms.toFixed(2)} | ${(l.rps / base.rps).toFixed(3)} | ${cpuCol(l)} | ${cpuRatio(base, l)} | ${target[name]} |`);
    }
    for (const [name, l] of res) if (l.errors) console.log(`note: ${name} had ${l.errors} errors`);
    console.log(`OTLP exports received: ${spans}`);
  } finally {
    for (const s of Object.values(servers)) await s.stop();
    sink.close();
  }
}

if (process.argv[2] === 'serve') await serve(process.argv[3] ?? 'off', process.argv[4]);
else await run();
