/**
 * Real browser clients of the realtime hub: Chromium (Debian package, driven
 * by playwright-core) loads a page served by bext whose script follows a
 * topic with EventSource and another with WebSocket. A TCP proxy between
 * browser and server cuts every connection mid-stream; messages published
 * while the page is cut off arrive after it reconnects (EventSource resumes
 * with Last-Event-ID, the page's WebSocket code with `since`), in order and
 * without loss.
 */
import { existsSync } from 'node:fs';
import net from 'node:net';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { plugin } from '../helpers.js';

const CHROMIUM = '/usr/bin/chromium';

const PAGE = `<!doctype html><meta charset="utf-8"><title>realtime</title>
<script>
window.sse = { got: [], events: [] };
const es = new EventSource('/__bext/events?topic=custom/browser');
es.onmessage = (e) => sse.got.push(JSON.parse(e.data).data);
es.addEventListener('subscribed', (e) => sse.events.push('subscribed'));
es.addEventListener('missed', (e) => sse.events.push('missed'));

window.wsc = { got: [], events: [], since: null };
function connect() {
  const ws = new WebSocket('ws://' + location.host + '/__bext/ws');
  ws.onopen = () => ws.send(JSON.stringify({ type: 'subscribe', topics: ['custom/browser-ws'], since: wsc.since ? { 'custom/browser-ws': wsc.since } : undefined }));
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type === 'message') { wsc.got.push(m.data); wsc.since = m.offset + ':' + m.epoch; }
    else wsc.events.push(m.type);
  };
  ws.onclose = () => setTimeout(connect, 50);
}
connect();
</script>`;

/** A TCP proxy whose connections can all be cut at once. */
function proxy(target: number): Promise<{ port: number; cut(): number; close(): void }> {
  const pairs = new Set<[net.Socket, net.Socket]>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target, '127.0.0.1');
    const pair: [net.Socket, net.Socket] = [client, upstream];
    pairs.add(pair);
    client.pipe(upstream).pipe(client);
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
  });
  const cut = () => {
    const n = pairs.size;
    for (const [a, b] of [...pairs]) (a.destroy(), b.destroy());
    return n;
  };
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        port: (server.address() as net.AddressInfo).port,
        cut,
        close() {
          cut();
          server.close();
        },
      }),
    ),
  );
}

const haveChromium = existsSync(CHROMIUM);

describe.skipIf(!haveChromium)('realtime in Chromium', () => {
  let b: Bext;
  let browser: Browser;
  let page: Page;
  let px: Awaited<ReturnType<typeof proxy>>;

  beforeAll(async () => {
    const site = plugin('rt-page', { routes: [{ path: '/' }] }, `
export default () => ({ onRoute: () => ({ status: 200, headers: { 'content-type': 'text/html; charset=utf-8' }, body: ${JSON.stringify(PAGE)} }) });`);
    b = await startBext({ plugins: [site, 'realtime'], config: { plugins: { realtime: { sse: { retryMs: 50 } } } } });
    px = await proxy(b.port);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${px.port}/`);
  });
  afterAll(async () => {
    await browser?.close();
    px?.close();
    await b?.close();
  });

  const publishBoth = async (from: number, to: number) => {
    for (let i = from; i <= to; i++) {
      await b.publish('custom/browser', i);
      await b.publish('custom/browser-ws', i);
    }
  };

  it('receives over EventSource and WebSocket, and resumes without loss after the connections are cut', async () => {
    await page.waitForFunction(() => (window as any).sse.events.includes('subscribed') && (window as any).wsc.events.includes('subscribed'));
    await publishBoth(1, 5);
    await page.waitForFunction(() => (window as any).sse.got.length === 5 && (window as any).wsc.got.length === 5);

    expect(px.cut()).toBeGreaterThanOrEqual(2);
    // Published while the page is cut off: nothing can reach it until it reconnects.
    await publishBoth(6, 10);
    await page.waitForFunction(() => (window as any).sse.got.length === 10 && (window as any).wsc.got.length === 10, undefined, { timeout: 15_000 });
    const state = await page.evaluate(() => ({ sse: (window as any).sse, wsc: (window as any).wsc }));
    const all = Array.from({ length: 10 }, (_, i) => i + 1);
    expect(state.sse.got).toEqual(all);
    expect(state.wsc.got).toEqual(all);
    expect(state.sse.events.filter((e: string) => e === 'subscribed')).toHaveLength(2);
    expect(state.sse.events).not.toContain('missed');
    expect(state.wsc.events.filter((e: string) => e === 'subscribed')).toHaveLength(2);

    // Live again on the new connections.
    await publishBoth(11, 11);
    await page.waitForFunction(() => (window as any).sse.got.length === 11 && (window as any).wsc.got.length === 11);
  });
});
