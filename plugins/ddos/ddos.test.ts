import { once } from 'node:events';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { validatePluginConfig } from '../../kernel/config.js';
import type { ConnectInfo, HostApi, Manifest, PluginInstance, TrustedRequest } from '../../plugin-api/index.js';
import { startBext, type Bext } from '../../sdk/harness.js';
import plugin from './index.js';

const HERE = new URL('.', import.meta.url).pathname;
const manifest = JSON.parse(readFileSync(new URL('./bext-plugin.json', import.meta.url), 'utf8')) as Manifest;

type Metric = [name: string, value: number];

async function load(section: Record<string, unknown>, onMetric: (m: Metric) => void = () => {}): Promise<PluginInstance> {
  const cfg = validatePluginConfig('ddos', manifest.configSchema, section, 'bext.config.json');
  return plugin({ plugin: 'ddos', config: () => cfg, log() {}, metric: (name: string, value: number) => onMetric([name, value]) } as unknown as HostApi);
}

const fakeSocket = () => ({ once() {} });
const req = (over: Partial<TrustedRequest> = {}) =>
  ({ id: '1', method: 'GET', path: '/', query: '', host: 'a.test', headers: {}, remoteAddress: '192.0.2.1', ctx: {}, raw: { socket: fakeSocket() }, ...over }) as unknown as TrustedRequest;

/** Resolves when the plugin reports `name` with `value`. */
function metricSeen(name: string, value: number): { onMetric: (m: Metric) => void; seen: Promise<void> } {
  let hit!: () => void;
  const seen = new Promise<void>((r) => (hit = r));
  return { onMetric: ([n, v]) => n === name && v === value && hit(), seen };
}

/** Keeps the event loop busy: the load that the guard must notice. */
function stall(ms: number): void {
  const end = Date.now() + ms;
  while (Date.now() < end);
}

const noShedding = { shedding: { eventLoopDelayMs: 0, heapUsedRatio: 0 } };

describe('ddos', () => {
  it('caps open connections per address at connect when the kernel reports closes', async () => {
    const p = await load({ maxConnectionsPerIp: 2, ...noShedding });
    const closers: (() => void)[] = [];
    const info = (remoteAddress: string): ConnectInfo => ({ remoteAddress, remotePort: 1, localPort: 2, onClose: (cb: () => void) => closers.push(cb) } as ConnectInfo);
    expect(await p.onConnect!(info('192.0.2.1'))).toBeUndefined();
    expect(await p.onConnect!(info('192.0.2.1'))).toBeUndefined();
    expect(await p.onConnect!(info('192.0.2.1'))).toMatchObject({ action: 'reject' });
    expect(await p.onConnect!(info('192.0.2.2'))).toBeUndefined();
    closers[0]!();
    expect(await p.onConnect!(info('192.0.2.1'))).toBeUndefined();
    await p.dispose!();
  });

  it('caps the request rate per client address with 429 and Retry-After', async () => {
    const p = await load({ requestRate: { limit: 2, windowSeconds: 10 }, exempt: ['198.51.100.0/24'], ...noShedding });
    expect(p.onRequest!(req())).toBeUndefined();
    expect(p.onRequest!(req())).toBeUndefined();
    expect(p.onRequest!(req())).toMatchObject({ action: 'respond', status: 429, headers: { 'retry-after': '5' } });
    expect(p.onRequest!(req({ remoteAddress: '192.0.2.9' }))).toBeUndefined();
    for (let i = 0; i < 5; i++) expect(p.onRequest!(req({ remoteAddress: '198.51.100.7' }))).toBeUndefined();
    await p.dispose!();
  });

  it('sheds load with 503 and Retry-After while the event loop lags, and stops once it recovers', async () => {
    const on = metricSeen('shedding', 1);
    let off!: () => void;
    const recovered = new Promise<void>((r) => (off = r));
    let sampling!: () => void;
    const monitoring = new Promise<void>((r) => (sampling = r));
    const p = await load({ requestRate: { limit: 0 }, exemptPaths: ['/health'], shedding: { eventLoopDelayMs: 50, heapUsedRatio: 0, checkIntervalMs: 20, retryAfterSeconds: 7 } }, (m) => {
      on.onMetric(m);
      if (m[0] === 'event_loop_delay_p99_seconds' && m[1] > 0) sampling();
      if (m[0] === 'shedding' && m[1] === 0) off();
    });
    expect(p.onRequest!(req())).toBeUndefined();
    // Stall once the guard is measuring, not before its first check.
    await monitoring;
    stall(300);
    await on.seen;
    expect(p.onRequest!(req())).toMatchObject({ action: 'respond', status: 503, headers: { 'retry-after': '7' } });
    expect(p.onRequest!(req({ path: '/health' }))).toBeUndefined();
    await recovered;
    expect(p.onRequest!(req())).toBeUndefined();
    await p.dispose!();
  });

  it('sheds load when the heap is over its threshold', async () => {
    const on = metricSeen('shedding', 1);
    const p = await load({ requestRate: { limit: 0 }, shedding: { eventLoopDelayMs: 0, heapUsedRatio: 0.0001, checkIntervalMs: 10 } }, on.onMetric);
    await on.seen;
    expect(p.onRequest!(req())).toMatchObject({ status: 503, headers: { 'retry-after': '5' } });
    await p.dispose!();
  });
});

function okPlugin(): string {
  const dir = mkdtempSync(join(tmpdir(), 'bext-ok-'));
  writeFileSync(join(dir, 'bext-plugin.json'), JSON.stringify({ name: 'ok', version: '1.0.0', sandbox: 'trusted', entry: 'index.js', hooks: { onRender: {} } }));
  writeFileSync(join(dir, 'index.js'), "export default () => ({ onRender: () => ({ status: 200, body: 'ok' }) });\n");
  return dir;
}

/** Sends one keep-alive request on a raw socket; resolves with the status line, or '' if the socket closed first. */
function request(socket: net.Socket): Promise<string> {
  return new Promise((resolve) => {
    if (socket.destroyed || socket.readableEnded) return resolve('');
    let buf = '';
    const onData = (c: Buffer) => {
      buf += c.toString();
      if (buf.includes('\r\n\r\n')) {
        socket.off('data', onData);
        resolve(buf.slice(0, buf.indexOf('\r\n')));
      }
    };
    socket.on('data', onData);
    socket.once('close', () => resolve(''));
    socket.on('error', () => undefined);
    socket.write('GET / HTTP/1.1\r\nHost: a.test\r\n\r\n');
  });
}

async function connect(port: number): Promise<net.Socket> {
  const s = net.connect(port, '127.0.0.1');
  await once(s, 'connect');
  return s;
}

describe('ddos over real sockets', () => {
  const started: Bext[] = [];
  const sockets: net.Socket[] = [];
  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await Promise.all(started.map((b) => b.close()));
  });

  it('refuses a connection over the per-address cap, and admits again after one closes', async () => {
    const b = await startBext({ plugins: [{ dir: HERE }, { dir: okPlugin() }], config: { plugins: { ddos: { maxConnectionsPerIp: 2, ...noShedding } } } });
    started.push(b);
    const [s1, s2, s3] = [await connect(b.port), await connect(b.port), await connect(b.port)];
    sockets.push(s1, s2, s3);
    expect(await request(s1)).toBe('HTTP/1.1 200 OK');
    expect(await request(s2)).toBe('HTTP/1.1 200 OK');
    // Closed at connect when the kernel reports socket closes to onConnect; otherwise refused at the first request.
    expect(['', 'HTTP/1.1 503 Service Unavailable']).toContain(await request(s3));
    if (!s3.destroyed) await once(s3, 'close');
    s1.end();
    await once(s1, 'close');
    const s4 = await connect(b.port);
    sockets.push(s4);
    expect(await request(s4)).toBe('HTTP/1.1 200 OK');
  });

  it('slowloris: a client trickling its headers is cut off by the kernel header timeout', async () => {
    const b = await startBext({ plugins: [{ dir: HERE }, { dir: okPlugin() }], config: { server: { headersTimeoutMs: 500, requestTimeoutMs: 1000 }, plugins: { ddos: noShedding } } });
    started.push(b);
    const s = await connect(b.port);
    sockets.push(s);
    let answer = '';
    s.on('data', (c: Buffer) => (answer += c.toString()));
    s.write('GET / HTTP/1.1\r\nHost: a.test\r\n');
    // One header line every 100 ms for up to 5 s: the attack, not a wait. The client gives up after that.
    let sent = 0;
    const trickle = setInterval(() => {
      if (sent++ < 50) s.write(`x-slow-${sent}: 1\r\n`);
      else s.destroy();
    }, 100);
    await once(s, 'close');
    clearInterval(trickle);
    expect(answer, 'the server must hang up on a client that has not finished its headers within server.headersTimeoutMs').toMatch(/^HTTP\/1\.1 408 /);
    expect(sent).toBeLessThan(50);
  });
});
