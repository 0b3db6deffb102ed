import http from 'node:http';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { until } from '../../test/helpers.js';
import { PROXY_DIR, startProxy, type ProxyUnderTest } from './fixtures/setup.js';

/**
 * The kernel hands upgrades only to routes a manifest claims, and the proxy's
 * routes come from config. A deployment that proxies WebSockets claims the
 * path in a manifest overlay: the proxy's own manifest plus the route, with
 * an entry that re-exports the proxy.
 */
function overlay(paths: string[]): string {
  const manifest = JSON.parse(readFileSync(join(PROXY_DIR, 'bext-plugin.json'), 'utf8')) as { routes: unknown[] };
  manifest.routes = [...manifest.routes, ...paths.map((path) => ({ path, methods: ['GET'] }))];
  const dir = mkdtempSync(join(tmpdir(), 'bext-proxy-ws-'));
  cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'bext-plugin.json'), JSON.stringify(manifest));
  writeFileSync(join(dir, 'index.ts'), `export { default } from ${JSON.stringify(join(PROXY_DIR, 'index.ts'))};\n`);
  return dir;
}

interface Echo {
  url: string;
  port: number;
  opened: number;
  closed: number;
  wss: WebSocketServer;
  server: http.Server;
  connections(): Promise<number>;
  close(): Promise<void>;
}

async function echoServer(opts: { refuse?: boolean } = {}): Promise<Echo> {
  const server = http.createServer((_req, res) => res.end('plain'));
  const wss = new WebSocketServer({ server, verifyClient: () => !opts.refuse });
  const e: Echo = {
    url: '',
    port: 0,
    opened: 0,
    closed: 0,
    wss,
    server,
    connections: () => new Promise((r) => server.getConnections((_e: Error | null, n: number) => r(n))),
    close: () => new Promise<void>((r) => {
      for (const c of wss.clients) c.terminate();
      wss.close();
      server.closeAllConnections();
      server.close(() => r());
    }),
  };
  wss.on('connection', (ws, req) => {
    e.opened++;
    ws.on('close', () => e.closed++);
    ws.on('message', (m, binary) => {
      const text = m.toString();
      if (text === 'bye') ws.close(1000, 'server says bye');
      else if (text === 'who') ws.send(JSON.stringify({ xff: req.headers['x-forwarded-for'], via: req.headers.via, path: req.url }));
      else ws.send(m, { binary });
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  e.port = (server.address() as { port: number }).port;
  e.url = `http://127.0.0.1:${e.port}`;
  return e;
}

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(members: string[], extra: Record<string, unknown> = {}): Promise<ProxyUnderTest> {
  const p = await startProxy(
    { upstreams: { ws: { members, ...extra } }, routes: [{ upstream: 'ws', paths: ['/ws/**'], stripPrefix: '/ws' }] },
    [],
    {},
  );
  cleanups.push(() => p.close());
  return p;
}

async function startWithOverlay(members: string[]): Promise<ProxyUnderTest> {
  const { startBext } = await import('../../sdk/harness.js');
  const dir = overlay(['/ws/*']);
  const bx = await startBext({ plugins: [{ dir }], config: { plugins: { proxy: { upstreams: { ws: { members } }, routes: [{ upstream: 'ws', paths: ['/ws/**'], stripPrefix: '/ws' }] } } } });
  const p: ProxyUnderTest = {
    bx,
    url: bx.url,
    events: [],
    state: async () => ((await (await fetch(`${bx.adminUrl}/__bext/proxy`)).json()) as { upstreams: Record<string, any> }).upstreams,
    close: () => bx.close(),
  };
  cleanups.push(() => p.close());
  return p;
}

function open(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => reject(new Error(`status ${res.statusCode}`)));
  });
}

const nextMessage = (ws: WebSocket) => new Promise<string>((r) => ws.once('message', (m) => r(m.toString())));
const closed = (ws: WebSocket) => new Promise<number>((r) => (ws.readyState === WebSocket.CLOSED ? r(ws.readyState) : ws.once('close', (code) => r(code))));

describe('WebSocket proxying', () => {
  it('opens and closes 1,000 connections with equal counts on both sides and no socket left behind', async () => {
    const echo = await echoServer();
    cleanups.push(() => echo.close());
    const p = await startWithOverlay([echo.url]);
    const wsUrl = p.url.replace('http', 'ws');
    let n = 0;
    const worker = async () => {
      while (n < 1000) {
        const i = n++;
        const ws = await open(`${wsUrl}/ws/chat?i=${i}`);
        const reply = nextMessage(ws);
        ws.send(`hello ${i}`);
        expect(await reply).toBe(`hello ${i}`);
        const done = closed(ws);
        ws.close(1000);
        await done;
      }
    };
    await Promise.all(Array.from({ length: 25 }, worker));
    await until(() => echo.closed === 1000, 10_000, 'the upstream to see every close');
    expect(echo.opened).toBe(1000);
    await until(async () => (await p.state()).ws.websocket.open === 0, 10_000, 'every tunnel to close');
    expect((await p.state()).ws.websocket).toEqual({ opened: 1000, closed: 1000, open: 0 });
    await until(async () => (await echo.connections()) === 0, 10_000, 'upstream sockets to close');
    expect(echo.wss.clients.size).toBe(0);
    expect((await p.state()).ws.active).toBe(0);
  });

  it('forwards the handshake with forwarding headers and the rewritten path', async () => {
    const echo = await echoServer();
    cleanups.push(() => echo.close());
    const p = await startWithOverlay([echo.url]);
    const ws = await open(`${p.url.replace('http', 'ws')}/ws/room?x=1`);
    const reply = nextMessage(ws);
    ws.send('who');
    expect(JSON.parse(await reply)).toEqual({ xff: '127.0.0.1', via: '1.1 bext', path: '/room?x=1' });
    const bin = new Promise<Buffer>((r) => ws.once('message', (m) => r(m as Buffer)));
    ws.send(Buffer.from([0, 1, 2, 255]));
    expect([...(await bin)]).toEqual([0, 1, 2, 255]);
    ws.close();
    await closed(ws);
  });

  it('closes the client when the upstream closes, and the upstream when the client vanishes', async () => {
    const echo = await echoServer();
    cleanups.push(() => echo.close());
    const p = await startWithOverlay([echo.url]);
    const wsUrl = `${p.url.replace('http', 'ws')}/ws/x`;

    const a = await open(wsUrl);
    const aClosed = closed(a);
    a.send('bye');
    expect(await aClosed).toBe(1000);

    const b = await open(wsUrl);
    await until(() => echo.opened === 2, 5000, 'the second connection upstream');
    // No close frame: the TCP connection just goes away.
    b.terminate();
    await until(() => echo.closed === 2, 5000, 'the upstream to notice the client is gone');
    await until(async () => (await p.state()).ws.websocket.open === 0, 5000, 'both tunnels to close');
    await until(async () => (await echo.connections()) === 0, 5000, 'upstream sockets to close');
  });

  it('passes a refused handshake back, and skips a member that does not accept connections', async () => {
    const refusing = await echoServer({ refuse: true });
    const good = await echoServer();
    cleanups.push(() => refusing.close(), () => good.close());
    const p1 = await startWithOverlay([refusing.url]);
    await expect(open(`${p1.url.replace('http', 'ws')}/ws/x`)).rejects.toThrow('status 401');
    await until(async () => (await p1.state()).ws.websocket.open === 0, 5000, 'the refused tunnel to close');

    const p2 = await startWithOverlay(['http://127.0.0.1:9', good.url]);
    for (let i = 0; i < 3; i++) {
      const ws = await open(`${p2.url.replace('http', 'ws')}/ws/x`);
      ws.close();
      await closed(ws);
    }
    expect(good.opened).toBe(3);
  });

  it('without a claimed route, the upgrade is taken by the proxy\'s onRender (and plain requests still proxy)', async () => {
    const echo = await echoServer();
    cleanups.push(() => echo.close());
    const p = await setup([echo.url]);
    const ws = await open(`${p.url.replace('http', 'ws')}/ws/x`);
    ws.send('over render');
    expect(await nextMessage(ws)).toContain('over render');
    ws.close();
    expect(await (await fetch(`${p.url}/ws/plain`)).text()).toBe('plain');
  });
});
