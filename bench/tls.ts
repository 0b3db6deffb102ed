/**
 * TLS benchmark, one run, every figure a ratio to a baseline measured in the
 * same run:
 *
 * 1. Throughput of the cached 2 KB page (the cache plugin's ISR rule over a
 *    renderer) from one bext process on its plain HTTP port and on the tls
 *    plugin's HTTPS port, over kept-alive connections: wrk for HTTP/1.1,
 *    h2load for HTTP/2 (one stream per connection, and ten). Ratios are to
 *    plain HTTP/1.1 from the same tool. The same loads against Node's own
 *    `http` and `http2.createSecureServer` serving the same bytes show what
 *    TLS and HTTP/2 cost in Node itself, so bext's share can be read off.
 * 2. Handshakes per second against the tls plugin from parallel
 *    `openssl s_time` loops, one request (`GET /`) per connection: full
 *    handshakes and resumed ones (session tickets), TLS 1.3 and 1.2; ratio
 *    resumed ÷ full.
 *
 * The script is also its own servers: `tsx bench/tls.ts serve <tlsPort>`
 * (bext) and `tsx bench/tls.ts bare <tlsPort>` (Node).
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { compare, fmt, hasWrk, load, startServer, type Load } from './lib.js';

const ROOT = resolve(import.meta.dirname, '..');
const seconds = Number(process.env.BENCH_SECONDS ?? 5);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);

async function serve(tlsPort: number): Promise<void> {
  const { parseConfig } = await import('../kernel/config.js');
  const { Logger } = await import('../kernel/log.js');
  const { Kernel } = await import('../kernel/server.js');
  const dir = mkdtempSync(join(tmpdir(), 'bext-bench-tls-'));
  const leaf = join(dir, 'page');
  mkdirSync(leaf);
  writeFileSync(join(leaf, 'bext-plugin.json'), JSON.stringify({ name: 'bench-render', version: '1.0.0', sandbox: 'trusted', entry: 'index.ts', hooks: { onRender: { priority: 100 } } }));
  writeFileSync(join(leaf, 'index.ts'), `import { PAGE } from '${join(ROOT, 'bench/servers/page.js')}';\nexport default () => ({ onRender: () => ({ status: 200, headers: { 'content-type': 'text/html; charset=utf-8' }, body: PAGE }) });\n`);
  const plugins = [
    { source: `file:${join(ROOT, 'plugins/cache')}`, grants: ['metrics', 'publish:system/cache'] },
    { source: `file:${leaf}`, grants: [] },
    { source: `file:${join(ROOT, 'plugins/tls')}`, grants: ['metrics'] },
  ];
  const config = parseConfig({
    server: { port: 0, host: '127.0.0.1' },
    admin: { port: null },
    plugins: {
      cache: { rules: [{ paths: ['/**'], mode: 'isr', revalidate: 3600 }] },
      tls: { listeners: [{ port: tlsPort, host: '127.0.0.1' }], storage: { dir: join(dir, 'tls') }, selfSigned: { names: ['localhost'] } },
    },
  });
  const k = await Kernel.create({ config, plugins, siteDir: dir, logger: new Logger('error') });
  const { port } = await k.listen();
  process.stdout.write(`LISTENING ${port}\n`);
  process.on('SIGTERM', () => void k.close(1000).then(() => {
    rmSync(dir, { recursive: true, force: true });
    process.exit(0);
  }));
}

/** Node's own servers with the same page and the same kind of certificate (ECDSA P-256 from the local CA). */
async function serveBare(tlsPort: number): Promise<void> {
  const { default: http } = await import('node:http');
  const { default: http2 } = await import('node:http2');
  const { LocalCa } = await import('../plugins/tls/local-ca.js');
  const { PAGE } = await import('./servers/page.js');
  const caDir = mkdtempSync(join(tmpdir(), 'bext-bench-tls-ca-'));
  const ca = await LocalCa.open(caDir);
  const cert = await ca.issue(['localhost']);
  const handler = (_req: unknown, res: { setHeader(k: string, v: string): void; end(b: Buffer): void }) => {
    res.setHeader('content-type', 'text/html; charset=utf-8');
    res.end(PAGE);
  };
  const h2 = http2.createSecureServer({ key: cert.keyPem, cert: cert.certPem, allowHTTP1: true, minVersion: 'TLSv1.2' }, handler);
  h2.on('secureConnection', (s: net.Socket) => s.setNoDelay(true));
  await new Promise<void>((r) => h2.listen(tlsPort, '127.0.0.1', r));
  const plain = http.createServer(handler);
  await new Promise<void>((r) => plain.listen(0, '127.0.0.1', r));
  process.stdout.write(`LISTENING ${(plain.address() as net.AddressInfo).port}\n`);
  process.on('SIGTERM', () => {
    rmSync(caDir, { recursive: true, force: true });
    process.exit(0);
  });
}

/** h2load for `seconds`: `h1` speaks HTTP/1.1, otherwise h2 with `streams` per connection. */
async function h2load(url: string, h1: boolean, clients: number, streams: number): Promise<Load> {
  const args = ['-D', String(seconds), '--warm-up-time', '1', '-c', String(clients), '-m', String(streams), '-t', '1', ...(h1 ? ['--h1'] : []), url];
  const p = spawn('h2load', args);
  let out = '';
  p.stdout.on('data', (d) => (out += d));
  await once(p, 'exit');
  const rps = Number(/finished in [\d.]+\w*, ([\d.]+) req\/s/.exec(out)?.[1] ?? 0);
  const failed = Number(/(\d+) failed/.exec(out)?.[1] ?? 0);
  const errored = Number(/(\d+) errored/.exec(out)?.[1] ?? 0);
  if (!rps) throw new Error(`h2load printed: ${out}`);
  return { rps, p99ms: NaN, errors: failed + errored };
}

/**
 * Handshakes per second from `procs` parallel `openssl s_time` loops (a C
 * client, so that the server saturates first): `-new` does a full handshake
 * every time, `-reuse` resumes the first connection's session. s_time prints
 * one character per connection (`*` full, `r` resumed); those are counted,
 * since a loop that meets a refused connection stops without its summary.
 */
async function handshakes(port: number, mode: 'new' | 'reuse', version: 'tls1_3' | 'tls1_2', procs = 4): Promise<Load & { resumed: number }> {
  const t0 = performance.now();
  const runs = await Promise.all(Array.from({ length: procs }, async () => {
    // `-www /` makes each connection carry a request, and makes the client read the TLS 1.3 ticket that follows the handshake.
    const p = spawn('openssl', ['s_time', '-connect', `127.0.0.1:${port}`, `-${mode}`, `-${version}`, '-www', '/', '-time', String(seconds)], { stdio: ['ignore', 'pipe', 'ignore'] });
    let full = 0;
    let reused = 0;
    let t1 = 0;
    p.stdout.on('data', (d: Buffer) => {
      for (const c of d) {
        if (c === 0x2a) full++;
        else if (c === 0x72) reused++;
      }
      t1 = performance.now();
    });
    const [code] = (await once(p, 'exit')) as [number | null];
    return { full, reused, failed: code === 0 ? 0 : 1, t1 };
  }));
  // Until the last connection a loop printed (the summary line of a finished loop comes right after it).
  const secs = (Math.max(...runs.map((r) => r.t1)) - t0) / 1000;
  const full = runs.reduce((a, r) => a + r.full, 0);
  const reused = runs.reduce((a, r) => a + r.reused, 0);
  // A "new" loop's first pass and a "reuse" loop's first connection are full handshakes; `-new` also prints `*` for every one.
  return { rps: (full + reused) / secs, p99ms: NaN, errors: runs.reduce((a, r) => a + r.failed, 0), resumed: reused / Math.max(1, full + reused) };
}

async function freePort(): Promise<number> {
  const probe = net.createServer().listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise((r) => probe.close(r));
  return port;
}

async function main(): Promise<void> {
  const [bextTls, bareTls] = [await freePort(), await freePort()];
  const bext = await startServer('bench/tls.ts', ['serve', String(bextTls)]);
  const bare = await startServer('bench/tls.ts', ['bare', String(bareTls)]);
  try {
    const u = { bextHttp: `http://127.0.0.1:${bext.port}/`, bextHttps: `https://127.0.0.1:${bextTls}/`, bareHttp: `http://127.0.0.1:${bare.port}/`, bareHttps: `https://127.0.0.1:${bareTls}/` };
    // Fill the cache and warm every path.
    for (const url of Object.values(u)) await load(url, 1);

    const tool = hasWrk ? 'wrk -t1 -c50' : 'autocannon -c50';
    const res = await compare([
      { name: 'bext http wrk', run: () => load(u.bextHttp, seconds) },
      { name: 'bext https wrk', run: () => load(u.bextHttps, seconds) },
      { name: 'bext http h2load', run: () => h2load(u.bextHttp, true, 50, 1) },
      { name: 'bext h2 m1', run: () => h2load(u.bextHttps, false, 50, 1) },
      { name: 'bext h2 m10', run: () => h2load(u.bextHttps, false, 10, 10) },
      { name: 'node http wrk', run: () => load(u.bareHttp, seconds) },
      { name: 'node https wrk', run: () => load(u.bareHttps, seconds) },
      { name: 'node http h2load', run: () => h2load(u.bareHttp, true, 50, 1) },
      { name: 'node h2 m1', run: () => h2load(u.bareHttps, false, 50, 1) },
      { name: 'node h2 m10', run: () => h2load(u.bareHttps, false, 10, 10) },
    ], rounds);
    const g = (n: string) => res.get(n)!;
    const ratio = (a: Load, b: Load) => (a.rps / b.rps).toFixed(3);
    console.log(`\ncached 2 KB page over kept-alive connections (${seconds}s × best of ${rounds} interleaved rounds)`);
    console.log('| protocol (tool) | bext req/s | errors | bext ratio to its plain HTTP/1.1 | Node req/s | Node ratio to its plain HTTP/1.1 | bext ÷ Node |');
    console.log('| --- | --- | --- | --- | --- | --- | --- |');
    const rows: [string, string, string][] = [
      [`plain HTTP/1.1 (${tool})`, 'http wrk', 'http wrk'],
      [`HTTPS/1.1, TLS 1.3 (${tool})`, 'https wrk', 'http wrk'],
      ['plain HTTP/1.1 (h2load --h1 -c50)', 'http h2load', 'http h2load'],
      ['HTTP/2 over TLS, 1 stream per connection (h2load -c50 -m1)', 'h2 m1', 'http h2load'],
      ['HTTP/2 over TLS, 10 streams per connection (h2load -c10 -m10)', 'h2 m10', 'http h2load'],
    ];
    for (const [label, k, base] of rows) {
      const b = g(`bext ${k}`);
      const n = g(`node ${k}`);
      console.log(`| ${label} | ${fmt(b.rps)} | ${b.errors} | ${ratio(b, g(`bext ${base}`))} | ${fmt(n.rps)} | ${ratio(n, g(`node ${base}`))} | ${ratio(b, n)} |`);
    }

    const hs = await compare([
      { name: 'full13', run: () => handshakes(bextTls, 'new', 'tls1_3') },
      { name: 'resume13', run: () => handshakes(bextTls, 'reuse', 'tls1_3') },
      { name: 'full12', run: () => handshakes(bextTls, 'new', 'tls1_2') },
      { name: 'resume12', run: () => handshakes(bextTls, 'reuse', 'tls1_2') },
    ], rounds);
    const h = (n: string) => hs.get(n)!;
    console.log(`\nnew connections per second against the tls plugin, each a handshake and one GET of the page (4 × openssl s_time -www /, ${seconds}s × best of ${rounds}; ECDSA P-256 certificate, X25519)`);
    const share = (n: string) => `${((hs.get(n) as Load & { resumed: number }).resumed * 100).toFixed(1)} %`;
    const errs = (...n: string[]) => n.reduce((a, x) => a + h(x).errors, 0);
    console.log('| version | full handshakes/s | resumed handshakes/s | share resumed | loops cut short | resumed ÷ full |');
    console.log('| --- | --- | --- | --- | --- | --- |');
    console.log(`| TLS 1.3 (ticket, psk_dhe_ke) | ${fmt(h('full13').rps)} | ${fmt(h('resume13').rps)} | ${share('resume13')} | ${errs('full13', 'resume13')} | ${ratio(h('resume13'), h('full13'))} |`);
    console.log(`| TLS 1.2 (ticket) | ${fmt(h('full12').rps)} | ${fmt(h('resume12').rps)} | ${share('resume12')} | ${errs('full12', 'resume12')} | ${ratio(h('resume12'), h('full12'))} |`);
    console.log(`| TLS 1.3 full ÷ TLS 1.2 full | | | | | ${ratio(h('full13'), h('full12'))} |`);
  } finally {
    await bext.stop();
    await bare.stop();
  }
}

const [mode, arg] = process.argv.slice(2);
if (mode === 'serve') await serve(Number(arg));
else if (mode === 'bare') await serveBare(Number(arg));
else await main();
