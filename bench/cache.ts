/**
 * Cache benchmarks, one run each, every figure a ratio to a baseline
 * measured in the same run (wrk -t1 -c50, interleaved rounds, best of each):
 *
 * 1. A cache hit through the serving stack (the lock's static, health and
 *    metrics, plus cache and compression, with a renderer behind; the
 *    guards and observability plugins of the default lock are measured by
 *    their own benchmarks) against bare Fastify serving the same bytes (the same body and
 *    the same header set: validators, Vary, Age, Cache-Status): identity,
 *    and `Accept-Encoding: br, gzip` answered from the stored brotli variant.
 *    Targets ≥ 0.85×. Then the share of those hits that compressed
 *    anything (target 0), from the cache's and compression's counters.
 * 2. The same Next.js ISR page from `next start` and from bext (cache in
 *    front of the proxy plugin to that same `next start`). Target ≥ 15×.
 *    Needs `npm install --prefix bench/next-app` (kept out of the main
 *    install); skipped with a note when Next is missing.
 *
 * The script is also its own server: `tsx bench/cache.ts serve <kind>`.
 */
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import zlib from 'node:zlib';
import { compare, cpuCol, cpuRatio, fmt, hasWrk, load, loadCpu, startNext, startServer, type Load } from './lib.js';
import { PAGE } from './servers/page.js';

const ROOT = resolve(import.meta.dirname, '..');
const TOKEN = 'bench-admin-token-0123456789';
const PAGE_BR = zlib.brotliCompressSync(PAGE, { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 9, [zlib.constants.BROTLI_PARAM_MODE]: zlib.constants.BROTLI_MODE_TEXT, [zlib.constants.BROTLI_PARAM_SIZE_HINT]: PAGE.length } });

async function serve(kind: string, arg?: string): Promise<void> {
  if (kind === 'fastify') {
    const { default: Fastify } = await import('fastify');
    const app = Fastify({ logger: false });
    // The same bytes on the wire as a bext hit: body and header set (validators, Vary, Age, Cache-Status).
    const lastModified = new Date().toUTCString();
    const identity = { 'content-type': 'text/html; charset=utf-8', etag: '"XSlrszxUBVSeflzAQg5usZ1UpUU"', 'last-modified': lastModified, vary: 'Accept-Encoding', age: '0', 'cache-status': 'bext; hit; ttl=3599' };
    const br = { 'content-type': 'text/html; charset=utf-8', etag: 'W/"XSlrszxUBVSeflzAQg5usZ1UpUU"', 'last-modified': lastModified, vary: 'Accept-Encoding', 'content-encoding': 'br', age: '0', 'cache-status': 'bext; hit; ttl=3599' };
    app.get('/', (req, reply) => {
      if (/\bbr\b/.test(req.headers['accept-encoding'] ?? '')) reply.headers(br).send(PAGE_BR);
      else reply.headers(identity).send(PAGE);
    });
    await app.listen({ port: 0, host: '127.0.0.1' });
    process.stdout.write(`LISTENING ${(app.server.address() as { port: number }).port}\n`);
    process.on('SIGTERM', () => void app.close().then(() => process.exit(0)));
    return;
  }
  const { parseConfig } = await import('../kernel/config.js');
  const { Logger } = await import('../kernel/log.js');
  const { Kernel } = await import('../kernel/server.js');
  const dir = mkdtempSync(join(tmpdir(), 'bext-bench-cache-'));
  const plugins = [{ source: `file:${join(ROOT, 'plugins/cache')}`, grants: ['metrics', 'publish:system/cache'] }, { source: `file:${join(ROOT, 'plugins/compression')}`, grants: ['metrics'] }];
  const pluginConfig: Record<string, Record<string, unknown>> = {};
  if (kind === 'bext') {
    const leaf = join(dir, 'page');
    mkdirSync(leaf);
    writeFileSync(join(leaf, 'bext-plugin.json'), JSON.stringify({ name: 'bench-render', version: '1.0.0', sandbox: 'trusted', entry: 'index.ts', hooks: { onRender: { priority: 100 } } }));
    writeFileSync(join(leaf, 'index.ts'), `import { PAGE } from '${join(ROOT, 'bench/servers/page.js')}';\nexport default () => ({ onRender: () => ({ status: 200, headers: { 'content-type': 'text/html; charset=utf-8' }, body: PAGE }) });\n`);
    plugins.push({ source: `file:${leaf}`, grants: [] });
    pluginConfig.cache = { rules: [{ paths: ['/**'], mode: 'isr', revalidate: 3600 }] };
  } else if (kind === 'bext-next') {
    plugins.push({ source: `file:${join(ROOT, 'plugins/proxy')}`, grants: ['metrics'] });
    pluginConfig.proxy = { upstreams: { next: { members: [`http://127.0.0.1:${arg}`] } }, routes: [{ upstream: 'next' }] };
    // Next varies its pages on its router headers; browsers loading a page send none of them.
    pluginConfig.cache = { key: { varyHeaders: ['accept-language', 'rsc', 'next-router-state-tree', 'next-router-prefetch', 'next-router-segment-prefetch', 'next-url'] } };
  }
  const config = parseConfig({ server: { port: 0, host: '127.0.0.1' }, admin: { port: null, token: TOKEN }, plugins: pluginConfig });
  // The default stack is the lock's composition; integrity is left to `bext run` (a plugin edited and not yet re-locked must not stop a benchmark).
  const lock = JSON.parse(readFileSync(join(ROOT, 'plugins.lock.json'), 'utf8')) as { plugins: { name: string; source: string; capabilities: string[]; order: number }[] };
  const locked = [...lock.plugins].sort((a, b) => a.order - b.order).map((e) => ({ source: e.source, grants: e.capabilities, name: e.name }));
  // The serving stack measured: static, health and metrics as locked, then cache, compression and the renderer
  // (the lock's guards and observability plugins have benchmarks of their own).
  const base = locked.filter((l) => ['static', 'health', 'metrics'].includes(l.name));
  const k = await Kernel.create({ config, plugins: [...base, ...plugins], baseDir: ROOT, siteDir: dir, logger: new Logger('error') });
  const { port } = await k.listen();
  process.stdout.write(`LISTENING ${port}\n`);
  process.on('SIGTERM', () => void k.close(1000).then(() => process.exit(0)));
}

async function adminJson(port: number, path: string): Promise<Record<string, unknown>> {
  const r = await fetch(`http://127.0.0.1:${port}${path}`, { headers: { authorization: `Bearer ${TOKEN}` } });
  return (await r.json()) as Record<string, unknown>;
}

async function adminText(port: number, path: string): Promise<string> {
  return (await fetch(`http://127.0.0.1:${port}${path}`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();
}

function row(label: string, l: Load, base: Load, target: string, cpu = true): string {
  const cpuCols = cpu ? ` ${cpuCol(l)} | ${cpuRatio(base, l)} |` : '';
  return `| ${label} | ${fmt(l.rps)} | ${l.p99ms.toFixed(2)} | ${l.errors} | ${(l.rps / base.rps).toFixed(3)} |${cpuCols} ${target} |`;
}


async function main(): Promise<void> {
  const seconds = Number(process.env.BENCH_SECONDS ?? 5);
  const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
  const tool = hasWrk ? 'wrk -t1 -c50' : 'autocannon -c50';
  const self = 'bench/cache.ts';

  // 1. Hits through the default stack against bare Fastify.
  const fastify = await startServer(self, ['serve', 'fastify']);
  const bext = await startServer(self, ['serve', 'bext']).catch(async (e: unknown) => {
    await fastify.stop();
    throw e;
  });
  try {
    const br = { 'accept-encoding': 'br, gzip' };
    // Fill once per encoding set: the first request renders and stores identity, br and gzip.
    await load(`http://127.0.0.1:${bext.port}/`, 1, 50, br);
    await load(`http://127.0.0.1:${fastify.port}/`, 1, 50, br);
    const res = await compare([
      { name: 'fastify', run: () => loadCpu(fastify.proc.pid!, `http://127.0.0.1:${fastify.port}/`, seconds) },
      { name: 'bext', run: () => loadCpu(bext.proc.pid!, `http://127.0.0.1:${bext.port}/`, seconds) },
      { name: 'fastify-br', run: () => loadCpu(fastify.proc.pid!, `http://127.0.0.1:${fastify.port}/`, seconds, 50, br) },
      { name: 'bext-br', run: () => loadCpu(bext.proc.pid!, `http://127.0.0.1:${bext.port}/`, seconds, 50, br) },
    ], rounds);
    console.log(`\ncache hit benchmark (${tool}, ${seconds}s × best of ${rounds} rounds, the 2 KB page; br variant ${PAGE_BR.length} bytes)`);
    console.log('| server | req/s | p99 ms | errors | ratio to Fastify | server CPU µs/req | CPU ratio (Fastify ÷ this) | target |');
    console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
    console.log(row('bare Fastify 5, identity', res.get('fastify')!, res.get('fastify')!, '—'));
    console.log(row('bext cache hit (static, health, metrics + cache + compression), identity', res.get('bext')!, res.get('fastify')!, '≥ 0.85'));
    console.log(row('bare Fastify 5, stored br bytes', res.get('fastify-br')!, res.get('fastify-br')!, '—'));
    console.log(row('bext cache hit, `Accept-Encoding: br, gzip` from the stored variant', res.get('bext-br')!, res.get('fastify-br')!, '≥ 0.85'));
    const stats = await adminJson(bext.port, '/__bext/cache/stats');
    const metrics = await adminText(bext.port, '/metrics');
    const compressedHits = Number(/bext_plugin_compression_compressed_hits_total (\d+)/.exec(metrics)?.[1] ?? 0);
    const hits = Number(stats.hits);
    const compressing = Number(stats.hitCompressions) + compressedHits;
    console.log(`\nhits: ${fmt(hits)}; hits that compressed anything: ${compressing} (share ${(compressing / Math.max(1, hits)).toFixed(6)}, target 0); renders: ${stats.renders}; compressions at fill: ${stats.fillCompressions}`);
  } finally {
    await fastify.stop();
    await bext.stop();
  }

  // 2. The same ISR page: next start against bext caching it.
  const next = await startNext(join(ROOT, 'bench/next-app'));
  if (typeof next === 'string') {
    console.log(`\nNext.js comparison skipped: ${next}`);
    return;
  }
  let front: Awaited<ReturnType<typeof startServer>> | null = null;
  let bare: Awaited<ReturnType<typeof startServer>> | null = null;
  try {
    front = await startServer(self, ['serve', 'bext-next', String(next.port)]);
    bare = await startServer(self, ['serve', 'fastify']);
    await load(`http://127.0.0.1:${next.port}/`, 1);
    await load(`http://127.0.0.1:${front.port}/`, 1);
    const res = await compare([
      { name: 'next', run: () => load(`http://127.0.0.1:${next.port}/`, seconds) },
      { name: 'bext', run: () => load(`http://127.0.0.1:${front!.port}/`, seconds) },
      { name: 'fastify', run: () => load(`http://127.0.0.1:${bare!.port}/`, seconds) },
    ], rounds);
    const n = res.get('next')!;
    const page = await fetch(`http://127.0.0.1:${front.port}/`);
    const size = (await page.arrayBuffer()).byteLength;
    console.log(`\nNext.js ISR page (${size} bytes, \`export const revalidate = 60\`; ${tool}, ${seconds}s × best of ${rounds}); cache-status from bext: ${page.headers.get('cache-status')}`);
    console.log('| server | req/s | p99 ms | errors | ratio to next start | target |');
    console.log('| --- | --- | --- | --- | --- | --- |');
    console.log(row('next start (Next 15, ISR hit)', n, n, '—', false));
    console.log(row('bext: cache in front of the proxy to that next start', res.get('bext')!, n, '≥ 15', false));
    console.log(row('bare Fastify 5, the 2 KB page (reference)', res.get('fastify')!, n, '—', false));
  } finally {
    await front?.stop();
    await bare?.stop();
    await next.stop();
  }
}

if (process.argv[2] === 'serve') await serve(process.argv[3]!, process.argv[4]);
else await main();
