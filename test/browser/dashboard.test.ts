/**
 * The dashboard in a real browser: Chromium (Debian package, driven by
 * playwright-core) opens /__bext/dashboard on the admin listener of a server
 * running the default stack plus WAF, rate limit, cache, proxy (one live and
 * one dead upstream member), realtime hub and request capture, while a small
 * bounded load runs against it. The page must draw its charts from live
 * snapshots arriving through the hub, fetch nothing from anywhere else, and
 * fall back to its own stream when the hub refuses it. A full-page
 * screenshot is written to test-results/dashboard.png.
 */
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';

const CHROMIUM = '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const PLUGINS = resolve(import.meta.dirname, '../../plugins');
const OUT = resolve(import.meta.dirname, '../../test-results');

interface DashState {
  snapshots: number;
  source: string | null;
  recent: { status: number; waf?: string; cache?: string }[];
  points: { n: number }[];
}

/** Counts drawn (non-transparent) pixels of each canvas. */
function inked(page: Page, ids: string[]): Promise<Record<string, number>> {
  return page.evaluate((list) => {
    const out: Record<string, number> = {};
    for (const id of list) {
      const c = document.getElementById(id) as HTMLCanvasElement;
      const d = c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 3; i < d.length; i += 4) if (d[i]! > 0) n++;
      out[id] = n;
    }
    return out;
  }, ids);
}

describe.skipIf(!existsSync(CHROMIUM))('dashboard in Chromium', () => {
  let b: Bext;
  let upstream: http.Server;
  let browser: Browser;
  let stop = false;
  let load: Promise<void>[] = [];

  beforeAll(async () => {
    const site = mkdtempSync(join(tmpdir(), 'bext-dash-site-'));
    writeFileSync(join(site, 'index.html'), `<!doctype html><title>home</title><p>${'hello '.repeat(300)}</p>`);
    writeFileSync(join(site, 'about.html'), '<!doctype html><title>about</title><p>about</p>');
    upstream = http.createServer((req, res) => res.end(`upstream ${req.url}`));
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
    const up = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
    b = await startBext({
      siteDir: site,
      plugins: ['waf', 'ratelimit', 'cache', 'static', 'proxy', 'realtime', 'dashboard', 'requestlog', 'metrics', 'health'].map((p) =>
        ['static', 'metrics', 'health'].includes(p) ? p : { dir: join(PLUGINS, p) },
      ),
      config: {
        plugins: {
          static: { root: '.', maxAge: 30 },
          cache: { rules: [{ paths: ['/', '/about.html'], mode: 'swr', ttl: 5, swr: 30 }] },
          ratelimit: { rules: [{ name: 'api', match: { paths: ['/api/**'] }, key: ['ip'], limit: 5, windowSeconds: 1 }] },
          // Port 9 (discard) refuses connections: the second member is down.
          proxy: { upstreams: { app: { members: [up, 'http://127.0.0.1:9'], health: { active: { path: '/', intervalMs: 200, fall: 1 } } } }, routes: [{ upstream: 'app', paths: ['/api/**'] }] },
          dashboard: { intervalMs: 500 },
        },
      } as never,
    });
    const paths = ['/', '/', '/about.html', '/missing', '/api/items', `/?q=${encodeURIComponent("1' UNION SELECT password FROM users--")}`];
    // Four sequential clients with pauses: bounded, and steady enough to chart.
    load = Array.from({ length: 4 }, (_, k) =>
      (async () => {
        for (let i = k; !stop; i++) {
          try {
            await (await fetch(b.url + paths[i % paths.length]!)).arrayBuffer();
          } catch {
            // The server is closing.
          }
          await new Promise((r) => setTimeout(r, 15));
        }
      })(),
    );
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
  });

  afterAll(async () => {
    stop = true;
    await Promise.all(load);
    await browser?.close();
    await b?.close();
    await new Promise<void>((r) => (upstream ? upstream.close(() => r()) : r()));
  });

  it('draws live charts from hub snapshots, with nothing fetched from elsewhere, and saves a screenshot', async () => {
    const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
    const requested: string[] = [];
    const problems: string[] = [];
    page.on('request', (r) => requested.push(r.url()));
    page.on('console', (m) => m.type() === 'error' && problems.push(m.text()));
    page.on('pageerror', (e) => problems.push(e.message));
    await page.goto(`${b.adminUrl}/__bext/dashboard`);
    await page.waitForFunction(() => {
      const d = (window as unknown as { __dash: DashState }).__dash;
      return d.snapshots >= 4 && d.recent.length >= 10 && d.points.filter((p) => p.n > 0).length >= 4;
    }, undefined, { timeout: 20_000 });
    const state = await page.evaluate(() => (window as unknown as { __dash: DashState }).__dash);
    expect(state.source).toBe('hub');
    await expect.poll(() => page.textContent('#live-text')).toBe('live · realtime hub');

    const ink = await inked(page, ['c-rate', 'c-lat', 'c-cache', 'c-mix', 'c-hooks', 'c-waf', 'c-hub', 'c-proc', 's-rps']);
    for (const [id, n] of Object.entries(ink)) expect(n, `${id} is drawn`).toBeGreaterThan(400);

    expect(Number((await page.textContent('#k-rps'))!.replace(/[^\d.]/g, ''))).toBeGreaterThan(0);
    expect(await page.textContent('#k-hit')).toMatch(/^\d+(\.\d)?%$/);
    expect(Number(await page.textContent('#k-waf'))).toBeGreaterThan(0);
    // The recent list shows WAF blocks, cache hits and rate-limit rejections with their tags.
    await page.waitForSelector('#recent .tag.blocked');
    await page.waitForSelector('#recent .tag.hit');
    const rows = await page.$$eval('#recent tbody tr', (trs) => trs.map((tr) => tr.textContent ?? ''));
    expect(rows.length).toBeGreaterThanOrEqual(10);
    expect(rows.some((r) => r.includes('/about.html'))).toBe(true);
    // Upstreams: one member up, the dead one down.
    await page.waitForFunction(() => document.querySelectorAll('#upstreams .member .dot.live').length === 1 && document.querySelectorAll('#upstreams .member .dot.err').length === 1);
    expect(await page.textContent('#plugins')).toContain('realtime');
    expect(await page.textContent('#pool')).toContain('no render pool');

    // Everything came from the admin listener itself.
    expect(requested.length).toBeGreaterThan(2);
    for (const u of requested) expect(u.startsWith(`${b.adminUrl}/`) || u.startsWith('data:'), u).toBe(true);
    expect(problems).toEqual([]);

    mkdirSync(OUT, { recursive: true });
    await page.screenshot({ path: join(OUT, 'dashboard.png'), fullPage: true });
    await page.close();
  });

  it('keeps drawing through its own stream when the hub refuses the topic', async () => {
    const refusing = await startBext({
      plugins: [{ dir: join(PLUGINS, 'realtime') }, { dir: join(PLUGINS, 'dashboard') }, 'health'],
      config: { plugins: { dashboard: { intervalMs: 250 }, realtime: { rules: [{ topic: 'system/**', subscribe: 'none' }, { topic: '**', subscribe: 'public' }] } } } as never,
    });
    try {
      const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
      await page.goto(`${refusing.adminUrl}/__bext/dashboard`);
      for (let i = 0; i < 5; i++) await (await fetch(`${refusing.url}/health`)).text();
      await page.waitForFunction(() => (window as unknown as { __dash: DashState }).__dash.source === 'direct' && (window as unknown as { __dash: DashState }).__dash.snapshots >= 3, undefined, { timeout: 15_000 });
      await expect.poll(() => page.textContent('#live-text')).toBe('live · direct stream');
      expect((await inked(page, ['c-proc']))['c-proc']).toBeGreaterThan(400);
      await page.close();
    } finally {
      await refusing.close();
    }
  });
});
