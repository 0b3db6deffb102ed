/**
 * realtime hub under fan-out: N subscribers (default 10,000) of one topic,
 * held by a separate load process (bench/realtime-load.ts), and 10
 * messages/s published to them for a few seconds → N×10 deliveries/s.
 * Reports delivered/s, publish→receive p50/p99 and RSS per idle
 * connection, for SSE and WebSocket, each beside a bare baseline in the
 * same run: `node:http` writing the same frames to every response (SSE)
 * and `ws` broadcasting (WebSocket), with no plugin machinery; and the
 * kernel alone, through a plugin that streams to every subscriber with no
 * hub behind it (what any streaming plugin pays). Ratios are to bare.
 * Targets: p99 ≤ 100 ms, RSS ≤ 8 KB per idle connection.
 *
 * env: BENCH_CONNECTIONS (10000), BENCH_SECONDS (10), BENCH_RATE (10 msg/s), BENCH_TRANSPORTS (sse,ws)
 *
 * `realtime.ts serve <bare|kernel|bext>` is the server process the run starts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import http from 'node:http';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { pathToFileURL } from 'node:url';

const root = resolve(import.meta.dirname, '..');
const now = () => performance.timeOrigin + performance.now();

// ------------------------------------------------------------------ servers

const KERNEL_ONLY_PLUGIN = (wsModule: string) => `
import { Readable } from 'node:stream';
import { WebSocketServer } from '${wsModule}';
const streams = new Set();
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
let offset = 0;
export default () => ({
  async onRoute(req) {
    if (req.route === '/__bext/ws') {
      return { action: 'upgrade', upgrade(raw, socket, head) {
        wss.handleUpgrade(raw, socket, head, (c) => { streams.add(c); c.on('close', () => streams.delete(c)); c.send('{"type":"subscribed"}'); });
      } };
    }
    if (req.route === '/__bext/events') {
      const s = new Readable({ read() {} });
      s.push('retry: 2000\\n\\nevent: subscribed\\ndata: {}\\n\\n');
      streams.add(s);
      s.on('close', () => streams.delete(s));
      return { status: 200, headers: { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store' }, body: s };
    }
    const { topic, data } = JSON.parse((await req.readBody()).toString());
    const o = ++offset;
    const json = '{"type":"message","topic":"' + topic + '","offset":' + o + ',"epoch":"e","data":' + JSON.stringify(data) + '}';
    const frame = Buffer.from('id: ' + o + ':e\\ndata: ' + json + '\\n\\n');
    const text = Buffer.from(json);
    for (const s of streams) s instanceof Readable ? s.push(frame) : s.send(text, { binary: false });
    return { status: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ delivered: streams.size }) };
  },
});
`;

async function serve(kind: string, pluginDir: string): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  process.on('SIGUSR2', () => {
    for (let i = 0; i < 3; i++) gc?.();
    const m = process.memoryUsage();
    process.stdout.write(`RSS ${m.rss} ${m.heapUsed}\n`);
  });
  if (kind === 'bare') {
    const { WebSocketServer } = await import('ws');
    const streams = new Set<http.ServerResponse>();
    let offset = 0;
    const server = http.createServer((req, res) => {
      if (req.method === 'GET') {
        res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no' });
        res.write('retry: 2000\n\nevent: subscribed\ndata: {}\n\n');
        streams.add(res);
        res.on('close', () => streams.delete(res));
        return;
      }
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const { topic, data } = JSON.parse(Buffer.concat(chunks).toString()) as { topic: string; data: unknown };
        const o = ++offset;
        const json = `{"type":"message","topic":"${topic}","offset":${o},"epoch":"e","data":${JSON.stringify(data)}}`;
        const frame = Buffer.from(`id: ${o}:e\ndata: ${json}\n\n`);
        const text = Buffer.from(json);
        let n = 0;
        for (const s of streams) (s.write(frame), n++);
        for (const c of wss.clients) (c.send(text, { binary: false }), n++);
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ delivered: n }));
      });
    });
    const wss = new WebSocketServer({ server, path: '/__bext/ws', perMessageDeflate: false });
    wss.on('connection', (c) => c.send('{"type":"subscribed"}'));
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as { port: number }).port;
      process.stdout.write(`LISTENING ${port} http://127.0.0.1:${port}/publish\n`);
    });
    return;
  }
  const { parseConfig } = await import('../kernel/config.js');
  const { Logger } = await import('../kernel/log.js');
  const { Kernel } = await import('../kernel/server.js');
  let source = `file:${join(root, 'plugins/realtime')}`;
  let publishPath = '/__bext/hub/publish';
  if (kind === 'kernel') {
    source = `file:${pluginDir}`;
    publishPath = '/publish';
  }
  const config = parseConfig({ server: { port: 0, host: '127.0.0.1' }, admin: { port: 0, host: '127.0.0.1' }, plugins: kind === 'kernel' ? {} : { realtime: {} } });
  const k = await Kernel.create({ config, plugins: [{ source, grants: kind === 'kernel' ? [] : ['publish:**', 'metrics'] }], logger: new Logger('error') });
  const { port, adminPort } = await k.listen();
  process.stdout.write(`LISTENING ${port} http://127.0.0.1:${adminPort}${publishPath}\n`);
  process.on('SIGTERM', () => k.close(500).then(() => process.exit(0)));
}

// ----------------------------------------------------------------- the run

interface Proc {
  proc: ChildProcess;
  lines: Interface;
  next(prefix: string): Promise<string>;
}

/** The kernel's own cost: a plugin that streams to every subscriber with no hub behind it. */
function writeKernelOnlyPlugin(): string {
  const dir = mkdtempSync(join(tmpdir(), 'bext-bench-rt-'));
  writeFileSync(join(dir, 'bext-plugin.json'), JSON.stringify({
    name: 'stream-only', version: '1.0.0', sandbox: 'trusted', entry: 'index.mjs',
    routes: [{ path: '/__bext/events', methods: ['GET'] }, { path: '/__bext/ws', methods: ['GET'] }, { path: '/publish', methods: ['POST'], admin: true }],
  }));
  writeFileSync(join(dir, 'index.mjs'), KERNEL_ONLY_PLUGIN(pathToFileURL(join(root, 'node_modules/ws/wrapper.mjs')).href));
  return dir;
}

/** Starts a node process with a raised descriptor limit (10,000 sockets need it). */
function start(args: string[]): Proc {
  const cmd = `ulimit -n $(ulimit -Hn); exec ${JSON.stringify(process.execPath)} ${args.map((a) => JSON.stringify(a)).join(' ')}`;
  const proc = spawn('bash', ['-c', cmd], { cwd: root, stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, BEXT_LOG: 'error' } });
  const lines = createInterface({ input: proc.stdout! });
  const queue: string[] = [];
  const waiters: { prefix: string; resolve: (l: string) => void }[] = [];
  lines.on('line', (l) => {
    const w = waiters.findIndex((x) => l.startsWith(x.prefix));
    if (w !== -1) waiters.splice(w, 1)[0]!.resolve(l);
    else queue.push(l);
  });
  return {
    proc,
    lines,
    next(prefix) {
      const i = queue.findIndex((l) => l.startsWith(prefix));
      if (i !== -1) return Promise.resolve(queue.splice(i, 1)[0]!);
      return new Promise((res, rej) => {
        waiters.push({ prefix, resolve: res });
        proc.once('exit', (c) => rej(new Error(`${args.join(' ')} exited with ${c} while waiting for ${prefix}`)));
      });
    },
  };
}

/** RSS and V8 heap of the server after a full GC. */
async function memory(server: Proc): Promise<{ rss: number; heap: number }> {
  server.proc.kill('SIGUSR2');
  const [, rss, heap] = (await server.next('RSS ')).split(' ').map(Number);
  return { rss: rss!, heap: heap! };
}

function post(url: string, body: string): Promise<void> {
  return new Promise((res, rej) => {
    const r = http.request(url, { method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (resp) => {
      resp.resume();
      resp.on('end', res);
    });
    r.on('error', rej);
    r.end(body);
  });
}
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });

interface Result {
  connected: number;
  failed: number;
  closed: number;
  deliveries: number;
  p50: number;
  p99: number;
  max: number;
  rssPerConn: number;
  heapPerConn: number;
  expected: number;
  /** Median publish round trip: the server's time to write one message to every subscriber. */
  fanoutMs: number;
}

async function run(kind: 'bare' | 'kernel' | 'bext', transport: 'sse' | 'ws', n: number, seconds: number, rate: number): Promise<Result> {
  const server = start(['--expose-gc', '--import', 'tsx', 'bench/realtime.ts', 'serve', kind, kernelPlugin]);
  let load: Proc | null = null;
  try {
    const [, port, publishUrl] = (await server.next('LISTENING ')).split(' ');
    const mem0 = await memory(server);
    const url = transport === 'sse' ? `http://127.0.0.1:${port}/__bext/events?topic=bench/all` : `ws://127.0.0.1:${port}/__bext/ws?topic=bench/all`;
    const l = start(['--import', 'tsx', 'bench/realtime-load.ts', transport, url, String(n)]);
    load = l;
    const [, connected] = (await l.next('CONNECTED ')).split(' ').map(Number);
    const mem1 = await memory(server);
    l.proc.stdin!.write('MEASURE\n');
    const pad = 'x'.repeat(64);
    const count = seconds * rate;
    const t0 = Date.now();
    const fanout: number[] = [];
    for (let i = 0; i < count; i++) {
      const due = t0 + (i * 1000) / rate;
      const wait = due - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      const t = now();
      // Both servers answer the publish after writing to every subscriber: its round trip is the server's fan-out time.
      await post(publishUrl!, JSON.stringify({ topic: 'bench/all', data: { t, seq: i, pad } }));
      fanout.push(now() - t);
    }
    fanout.sort((a, b) => a - b);
    // Let the last message's fan-out land before counting.
    await new Promise((r) => setTimeout(r, 1500));
    l.proc.stdin!.write('STOP\n');
    const res = JSON.parse(await l.next('{')) as Omit<Result, 'rssPerConn' | 'heapPerConn' | 'expected' | 'fanoutMs'>;
    const per = (a: number, b: number) => (b - a) / Math.max(1, connected!);
    return { ...res, rssPerConn: per(mem0.rss, mem1.rss), heapPerConn: per(mem0.heap, mem1.heap), expected: count * connected!, fanoutMs: fanout[Math.floor(fanout.length / 2)]! };
  } finally {
    load?.proc.kill('SIGKILL');
    if (load && load.proc.exitCode === null) await once(load.proc, 'exit');
    server.proc.kill('SIGKILL');
    if (server.proc.exitCode === null) await once(server.proc, 'exit');
  }
}

/** The hub's own share of a delivery: fan-out to connections whose write is a no-op. */
async function hubOnly(n: number): Promise<string> {
  const { Conn, Hub } = await import('../plugins/realtime/hub.js');
  class Null extends Conn {
    readonly transport = 'sse' as const;
    bytes = 0;
    write(e: { sseFrame: Buffer }): void {
      this.bytes += e.sseFrame.length;
    }
    notice(): void {}
    buffered(): number {
      return 0;
    }
    close(): void {}
  }
  const hub = new Hub({ replaySize: 100, replayTtlMs: 60_000, maxBufferBytes: 1 << 20, presence: () => false, announce: () => undefined, log: () => undefined });
  for (let i = 0; i < n; i++) await hub.attach(new Null(null), [{ key: 'bench/all', segs: ['bench', 'all'], wildcard: false }], new Map(), () => undefined);
  const data = JSON.stringify({ t: 0, pad: 'x'.repeat(64) });
  for (let i = 0; i < 50; i++) hub.publish('bench/all', data);
  const t0 = performance.now();
  for (let i = 0; i < 200; i++) hub.publish('bench/all', data);
  const ms = (performance.now() - t0) / 200;
  return `hub alone (no sockets): ${ms.toFixed(2)} ms per message to ${n.toLocaleString('en-US')} subscribers, ${((ms * 1e6) / n).toFixed(0)} ns per delivery`;
}

let kernelPlugin = '';
if (process.argv[2] === 'serve') {
  await serve(process.argv[3] ?? 'bext', process.argv[4] ?? '');
} else {
  kernelPlugin = writeKernelOnlyPlugin();
  process.on('exit', () => rmSync(kernelPlugin, { recursive: true, force: true }));
  const n = Number(process.env.BENCH_CONNECTIONS ?? 10_000);
  const seconds = Number(process.env.BENCH_SECONDS ?? 10);
  const rate = Number(process.env.BENCH_RATE ?? 10);
  const transports = (process.env.BENCH_TRANSPORTS ?? 'sse,ws').split(',') as ('sse' | 'ws')[];
  const rows: string[] = [];
  const label = { bare: { sse: 'bare node:http', ws: 'bare ws' }, kernel: { sse: 'bext kernel, streaming plugin only', ws: 'bext kernel, ws plugin only' }, bext: { sse: 'bext realtime', ws: 'bext realtime' } };
  for (const t of transports) {
    const results = new Map<'bare' | 'kernel' | 'bext', Result>();
    for (const kind of ['bare', 'kernel', 'bext'] as const) results.set(kind, await run(kind, t, n, seconds, rate));
    const base = results.get('bare')!;
    for (const [kind, r] of results) {
      const vs = (a: number, b: number) => (kind === 'bare' ? '' : ` (${(a / b).toFixed(2)}×)`);
      rows.push(`| ${t} | ${label[kind][t]} | ${r.connected.toLocaleString('en-US')}${r.failed ? ` (${r.failed} failed)` : ''} | ${Math.round(r.deliveries / seconds).toLocaleString('en-US')}${vs(r.deliveries, base.deliveries)} | ${((100 * r.deliveries) / r.expected).toFixed(1)}% | ${r.fanoutMs.toFixed(1)}${vs(r.fanoutMs, base.fanoutMs)} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)}${vs(r.p99, base.p99)} | ${(r.rssPerConn / 1024).toFixed(1)}${vs(r.rssPerConn, base.rssPerConn)} | ${(r.heapPerConn / 1024).toFixed(1)} | ${r.closed} |`);
    }
  }
  console.log(`realtime benchmark: ${n.toLocaleString('en-US')} subscribers of one topic, ${rate} msg/s for ${seconds}s, load from a separate process`);
  console.log(await hubOnly(n));
  console.log('| transport | server | subscribers | delivered/s | of expected | server fan-out ms/msg | publish→receive p50 ms | p99 ms (target ≤ 100) | RSS KB per idle conn (target ≤ 8) | of which V8 heap KB | dropped |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of rows) console.log(r);
}
