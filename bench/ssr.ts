/**
 * React SSR benchmarks on the example site's pages: /simple (~20 elements),
 * /table/200 (200 rows × 5 cells), /full-page (~150 elements).
 *
 * 1. Uncached renders through the ssr plugin's pool (2 workers, the plugin
 *    alone behind the kernel) against the same pages rendered with
 *    renderToString in one thread by a plain node:http server (same
 *    bundle of the same pages, same loaders). Target ≥ 1.5×.
 * 2. ISR hits through the default stack (the lock's plugins + cache,
 *    compression, static, ssr) against Next.js `next start` serving the
 *    same pages ISR-cached (bench/next-ssr; needs
 *    `npm install --prefix bench/next-ssr`). Target ≥ 15×.
 * 3. /table/200 memoised (the table, and its rows) against the same table
 *    unmemoised, both
 *    uncached through the pool.
 *
 * Each comparison interleaves rounds (best of each) in one run; the machine
 * is shared, so the ratios count, not the absolute numbers.
 *
 * Usage: npm run bench -- ssr   (BENCH_SECONDS, BENCH_ROUNDS, BENCH_ONLY=pool,isr,memo)
 */
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { compare, fmt, hasWrk, load, startNext, startServer, type Load } from './lib.js';

const ROOT = resolve(import.meta.dirname, '..');
const SELF = 'bench/ssr.ts';
const PAGES = ['/simple', '/table/200', '/full-page'];
const TOKEN = 'bench-admin-token-0123456789';

/** A copy of the example site, so builds here never race a server of examples/site. */
function siteCopy(): string {
  const dir = join(mkdtempSync(join(tmpdir(), 'bext-bench-ssr-')), 'site');
  cpSync(join(ROOT, 'examples/site'), dir, { recursive: true, filter: (src) => !src.includes('/.bext') });
  return dir;
}

/** The single-thread baseline: the site's pages and the plugin's render core, bundled with one React. */
async function buildSingle(site: string): Promise<string> {
  const { entrySource, nodeModulesDir, scanSite, siteAliases } = await import('../plugins/ssr/build.js');
  const esbuild = await import('esbuild');
  const dir = mkdtempSync(join(tmpdir(), 'bext-bench-single-'));
  const runtime = join(dir, 'single.ts');
  writeFileSync(runtime, `
import { renderToString } from 'react-dom/server';
import { createCore, DEFAULT_INIT } from ${JSON.stringify(join(ROOT, 'plugins/ssr/common.ts'))};
import { RouteTable } from ${JSON.stringify(join(ROOT, 'plugins/ssr/routes.ts'))};
export function single(site: any, routes: any) {
  return { core: createCore(site, DEFAULT_INIT, (el) => renderToString(el)), table: new RouteTable(routes) };
}`);
  const scan = await scanSite(site);
  const entry = join(dir, 'entry.tsx');
  writeFileSync(entry, entrySource(scan, 'bench', runtime, 'single', `export const app = single(site, ${JSON.stringify(scan.pages.map((p) => p.entry))});\n`));
  const out = join(dir, 'single.cjs');
  await esbuild.build({
    entryPoints: [entry], outfile: out, bundle: true, platform: 'node', format: 'cjs', target: 'node20', jsx: 'automatic',
    logLevel: 'silent', define: { 'process.env.NODE_ENV': '"production"' }, alias: siteAliases(), nodePaths: [nodeModulesDir()], absWorkingDir: site,
  });
  return out;
}

async function serve(kind: string, arg: string): Promise<void> {
  if (kind === 'single') {
    const require = createRequire(import.meta.url);
    const { app } = require(arg) as { app: { core: import('../plugins/ssr/common.js').Core; table: import('../plugins/ssr/routes.js').RouteTable } };
    const server = http.createServer((req, res) => {
      const url = req.url ?? '/';
      const q = url.indexOf('?');
      const path = q === -1 ? url : url.slice(0, q);
      const m = app.table.match(path);
      const rr = { id: 0, method: 'GET', path, query: q === -1 ? '' : url.slice(q + 1), params: m?.params ?? {}, headers: {} };
      app.core.prepare(rr, m ? m.index : -1).then(
        (p) => {
          const body = 'el' in p ? app.core.document(p.el) : p.body;
          res.writeHead(p.status, { ...p.headers, 'content-length': Buffer.byteLength(body) });
          res.end(body);
        },
        (e: Error) => {
          res.writeHead(500);
          res.end(e.message);
        },
      );
    });
    server.keepAliveTimeout = 5000;
    server.listen(0, '127.0.0.1', () => process.stdout.write(`LISTENING ${(server.address() as { port: number }).port}\n`));
    process.on('SIGTERM', () => server.close(() => process.exit(0)));
    return;
  }
  const { parseConfig } = await import('../kernel/config.js');
  const { Logger } = await import('../kernel/log.js');
  const { Kernel } = await import('../kernel/server.js');
  const plugin = (name: string, grants: string[]) => ({ source: `file:${join(ROOT, 'plugins', name)}`, grants, name });
  let specs: { source: string; grants: string[]; name: string }[];
  if (kind === 'pool') {
    specs = [plugin('ssr', ['metrics'])];
  } else {
    // The default stack: the lock's composition, with the cache, compression, static and ssr plugins it will hold.
    // Integrity is left to `bext run` (a plugin edited and not yet re-locked must not stop a benchmark).
    const lock = JSON.parse(readFileSync(join(ROOT, 'plugins.lock.json'), 'utf8')) as { plugins: { name: string; source: string; capabilities: string[]; order: number }[] };
    specs = [...lock.plugins].sort((a, b) => a.order - b.order).map((e) => ({ source: e.source, grants: e.capabilities, name: e.name }));
    for (const [name, grants] of [['static', []], ['cache', ['metrics', 'publish:system/cache']], ['compression', ['metrics']], ['ssr', ['metrics']]] as [string, string[]][]) {
      if (!specs.some((s) => s.name === name)) specs.push(plugin(name, grants));
    }
  }
  // wrk reads a 103 Early Hints as a whole response (and counts it as a non-2xx one): hints stay off here.
  const config = parseConfig({ server: { port: 0, host: '127.0.0.1' }, admin: { port: null, token: TOKEN }, plugins: { ssr: { workers: 2, earlyHints: false } } });
  const k = await Kernel.create({ config, plugins: specs, baseDir: ROOT, siteDir: arg, logger: new Logger('error') });
  const { port } = await k.listen();
  process.stdout.write(`LISTENING ${port}\n`);
  process.on('SIGTERM', () => void k.close(1000).then(() => process.exit(0)));
}


/** Requests a URL until it answers 200 `n` times in a row (fills caches, warms the JIT). */
async function warm(url: string, n = 20): Promise<{ bytes: number; cacheStatus: string | null }> {
  let last: Response | null = null;
  let bytes = 0;
  for (let i = 0; i < n; i++) {
    last = await fetch(url);
    bytes = (await last.arrayBuffer()).byteLength;
    if (last.status !== 200) throw new Error(`${url} answered ${last.status}`);
  }
  return { bytes, cacheStatus: last!.headers.get('cache-status') ?? last!.headers.get('x-nextjs-cache') };
}

function row(label: string, l: Load, base: Load): string {
  return `| ${label} | ${fmt(l.rps)} | ${l.p99ms.toFixed(2)} | ${l.errors} | ${(l.rps / base.rps).toFixed(2)}× |`;
}

async function main(): Promise<void> {
  const seconds = Number(process.env.BENCH_SECONDS ?? 5);
  const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
  const only = new Set((process.env.BENCH_ONLY ?? 'pool,isr,memo').split(','));
  const tool = hasWrk ? 'wrk -t1 -c50' : 'autocannon -c50';
  console.log(`# bench/ssr — ${availableParallelism()} cores, load ${loadavg().map((x) => x.toFixed(2)).join(' ')}, ${tool}, ${seconds} s × best of ${rounds}\n`);
  const site = siteCopy();
  const scratch = [dirname(site)];
  try {
    await run(site, scratch, seconds, rounds, only);
  } finally {
    for (const d of scratch) rmSync(d, { recursive: true, force: true });
  }
}

async function run(site: string, scratch: string[], seconds: number, rounds: number, only: Set<string>): Promise<void> {

  if (only.has('pool') || only.has('memo')) {
    const { buildSite } = await import('../plugins/ssr/build.js');
    await buildSite(site);
  }

  if (only.has('pool')) {
    // 1. Pool vs one thread. Both render /table-plain/200 for the table (no memoisation on either side).
    const bundle = await buildSingle(site);
    scratch.push(dirname(bundle));
    const single = await startServer(SELF, ['serve', 'single', bundle]);
    const pool = await startServer(SELF, ['serve', 'pool', site]);
    try {
      console.log('## 1. Uncached renders: ssr pool (2 workers) vs renderToString in one thread\n');
      console.log('| page | bytes | one thread req/s | pool req/s | pool p99 ms | errors | ratio | target |');
      console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
      for (const page of ['/simple', '/table-plain/200', '/full-page']) {
        const a = `http://127.0.0.1:${single.port}${page}`;
        const b = `http://127.0.0.1:${pool.port}${page}`;
        const { bytes } = await warm(a, 50);
        await warm(b, 50);
        const res = await compare([
          { name: 'single', run: () => load(a, seconds) },
          { name: 'pool', run: () => load(b, seconds) },
        ], rounds);
        const s = res.get('single')!;
        const p = res.get('pool')!;
        console.log(`| ${page === '/table-plain/200' ? '/table/200' : page} | ${fmt(bytes)} | ${fmt(s.rps)} | ${fmt(p.rps)} | ${p.p99ms.toFixed(2)} | ${s.errors + p.errors} | ${(p.rps / s.rps).toFixed(2)}× | ≥ 1.5× |`);
      }
    } finally {
      await single.stop();
      await pool.stop();
    }
  }

  if (only.has('memo')) {
    const pool = await startServer(SELF, ['serve', 'pool', site]);
    try {
      console.log('\n## 3. Memoised table vs the same table unmemoised (uncached, through the pool)\n');
      const plain = `http://127.0.0.1:${pool.port}/table-plain/200`;
      const memo = `http://127.0.0.1:${pool.port}/table/200`;
      await warm(plain, 50);
      await warm(memo, 50);
      const res = await compare([
        { name: 'plain', run: () => load(plain, seconds) },
        { name: 'memo', run: () => load(memo, seconds) },
      ], rounds);
      console.log('| page | req/s | p99 ms | errors | ratio |');
      console.log('| --- | --- | --- | --- | --- |');
      console.log(row('/table/200 unmemoised', res.get('plain')!, res.get('plain')!));
      console.log(row('/table/200, table memoised (rows too)', res.get('memo')!, res.get('plain')!));
    } finally {
      await pool.stop();
    }
  }

  if (only.has('isr')) {
    console.log('\n## 2. ISR hits: the default stack vs Next.js `next start` (ISR-cached)\n');
    const next = await startNext(join(ROOT, 'bench/next-ssr'));
    if (typeof next === 'string') {
      console.log(`Next.js comparison skipped: ${next}`);
    } else {
      const stack = await startServer(SELF, ['serve', 'stack', site]);
      try {
        console.log('| page | next bytes | bext bytes | next req/s | bext req/s | bext p99 ms | errors next / bext | ratio | target |');
        console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
        for (const page of PAGES) {
          const n = `http://127.0.0.1:${next.port}${page}`;
          const x = `http://127.0.0.1:${stack.port}${page}`;
          const nw = await warm(n);
          const xw = await warm(x);
          if (!/hit/i.test(nw.cacheStatus ?? '') || !/hit/.test(xw.cacheStatus ?? '')) console.log(`(warning: ${page} is not a cache hit: next ${nw.cacheStatus}, bext ${xw.cacheStatus})`);
          const res = await compare([
            { name: 'next', run: () => load(n, seconds) },
            { name: 'bext', run: () => load(x, seconds) },
          ], rounds);
          const a = res.get('next')!;
          const b = res.get('bext')!;
          console.log(`| ${page} | ${fmt(nw.bytes)} | ${fmt(xw.bytes)} | ${fmt(a.rps)} | ${fmt(b.rps)} | ${b.p99ms.toFixed(2)} | ${a.errors} / ${b.errors} | ${(b.rps / a.rps).toFixed(1)}× | ≥ 15× |`);
        }
      } finally {
        await stack.stop();
        await next.stop();
      }
    }
  }
}

if (process.argv[2] === 'serve') await serve(process.argv[3]!, process.argv[4]!);
else await main();
