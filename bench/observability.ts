/**
 * Cost of observability on the default stack (static, health, metrics)
 * serving the 2 KB page, in one run with interleaved rounds:
 * - `off`: static and health only, nobody observing requests;
 * - `on`: plus metrics (scraped once a second, as Prometheus would) and
 *   request capture (requestlog: the kernel records per-hook timings for
 *   every request and hands each record over). Target: ≥ 0.95× `off`.
 * - `metrics`, `capture`: each half of `on` alone, to tell their costs apart;
 *   `observer`: a request observer that does nothing, i.e. what the kernel
 *   itself spends on capture (per-hook timings, the record) for any observer.
 * - `dashboard`: `on` plus the dashboard's once-a-second snapshot.
 * - `tracing`: `on` plus tracing every request (sampleRatio 1, a server span
 *   and a span per hook) exported over OTLP/HTTP to a sink in this process.
 *
 *   npm run bench -- observability      (BENCH_SECONDS, BENCH_ROUNDS)
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { compare, fmt, hasWrk, load, startServer } from './lib.js';

const ROOT = resolve(import.meta.dirname, '..');

/** User + system CPU milliseconds a process has used (Linux /proc; NaN elsewhere). */
function cpuMs(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / 100;
  } catch {
    return NaN;
  }
}

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
  const names = ['static', 'health'];
  if (variant === 'observer') names.push('observer');
  else if (variant === 'metrics') names.push('metrics');
  else if (variant === 'capture') names.push('requestlog');
  else if (variant !== 'off') names.push('metrics', 'requestlog');
  if (variant === 'dashboard') names.push('dashboard');
  if (variant === 'tracing') names.push('tracing');
  const plugins = names.map((n) => ({
    source: ['static', 'health', 'metrics'].includes(n) ? `builtin:${n}` : n === 'observer' ? `file:${noopObserver()}` : `file:${join(ROOT, 'plugins', n)}`,
    grants: n === 'dashboard' ? ['publish:system/metrics'] : n === 'tracing' ? ['metrics'] : [],
  }));
  const config = parseConfig(
    {
      server: { port: 0, host: '127.0.0.1' },
      admin: { port: 0, host: '127.0.0.1' },
      plugins: {
        static: { root: '.' },
        ...(variant === 'tracing' ? { tracing: { endpoint: otlp, sampleRatio: 1 } } : {}),
      },
    },
    'bench config',
  );
  const k = await Kernel.create({ config, plugins, siteDir: site, logger: new Logger('error'), baseDir: ROOT });
  const { port, adminPort } = await k.listen();
  // Scraped like Prometheus would, when there is something to scrape.
  if (names.includes('metrics')) {
    setInterval(() => {
      http.get(`http://127.0.0.1:${adminPort}/metrics`, (r) => r.resume()).on('error', () => undefined);
    }, 1000).unref();
  }
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
  const variants = ['off', 'observer', 'capture', 'metrics', 'on', 'dashboard', 'tracing'];
  const servers = Object.fromEntries(await Promise.all(variants.map(async (v) => [v, await startServer(self, ['serve', v, otlp])] as const)));
  try {
    for (const s of Object.values(servers)) await load(`http://127.0.0.1:${s.port}/`, 1);
    // CPU time the server process used per request (Linux): unlike req/s, it hardly moves when
    // other processes take the shared cores. Best (lowest) round of each.
    const cpuUs = new Map<string, number>();
    const res = await compare(
      variants.map((name) => ({
        name,
        run: async () => {
          const pid = servers[name]!.proc.pid!;
          const c0 = cpuMs(pid);
          const l = await load(`http://127.0.0.1:${servers[name]!.port}/`, seconds);
          const us = ((cpuMs(pid) - c0) * 1000) / Math.max(1, l.rps * seconds);
          if (Number.isFinite(us)) cpuUs.set(name, Math.min(cpuUs.get(name) ?? Infinity, us));
          return l;
        },
      })),
      rounds,
    );
    const base = res.get('off')!;
    const baseCpu = cpuUs.get('off');
    console.log(`observability benchmark (${hasWrk ? 'wrk -t1 -c50' : 'autocannon -c50'}, ${seconds}s × best of ${rounds} interleaved rounds, 2 KB page through static)`);
    console.log('| stack | req/s | p99 ms | ratio to off | server CPU µs/req | CPU ratio (off ÷ stack) | target |');
    console.log('| --- | --- | --- | --- | --- | --- | --- |');
    const label: Record<string, string> = {
      off: 'static + health (no metrics, no capture)',
      observer: '+ a no-op request observer (kernel side of capture)',
      capture: '+ request capture (requestlog)',
      metrics: '+ metrics (scraped 1/s)',
      on: '+ metrics (scraped 1/s) + request capture',
      dashboard: '+ dashboard snapshots (1/s)',
      tracing: '+ tracing (every request, OTLP/HTTP)',
    };
    const target: Record<string, string> = { off: '—', observer: 'part', metrics: 'part', capture: 'part', on: '≥ 0.95', dashboard: 'report', tracing: 'report' };
    for (const [name, l] of res) {
      const cpu = cpuUs.get(name);
      const cpuCols = cpu !== undefined && baseCpu !== undefined ? `${cpu.toFixed(1)} | ${(baseCpu / cpu).toFixed(3)}` : '— | —';
      console.log(`| ${label[name]} | ${fmt(l.rps)} | ${l.p99ms.toFixed(2)} | ${(l.rps / base.rps).toFixed(3)} | ${cpuCols} | ${target[name]} |`);
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
