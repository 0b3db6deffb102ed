/**
 * The example site in a real browser: Chromium (Debian package, driven by
 * playwright-core) loads examples/site served by bext with the static,
 * cache, compression, ssr, og and image plugins. Pages are server-rendered
 * HTML without hydration; a server island fills in after load (and after
 * Turbo visits); Turbo follows links and a GET form without reloading the
 * document; a streamed page shows its shell before its slow part; images
 * come from /api/image in a format the browser asked for.
 */
import { cpSync, existsSync, mkdtempSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { tmp } from '../helpers.js';

const CHROMIUM = '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);

describe.skipIf(!haveChromium)('the React example site in Chromium', () => {
  let b: Bext;
  let browser: Browser;
  let page: Page;
  const errors: string[] = [];
  const requests: { url: string; type: string; headers: Record<string, string> }[] = [];
  const responses: { url: string; status: number; type: string }[] = [];

  beforeAll(async () => {
    // A copy, so the build this test makes never races another process serving examples/site.
    const site = join(mkdtempSync(join(tmp(), 'browser-site-')), 'site');
    cpSync(resolve('examples/site'), site, { recursive: true, filter: (src) => !src.includes(`${join('site', '.bext')}`) });
    b = await startBext({ plugins: ['static', 'cache', 'compression', 'ssr', 'og', 'image'], siteDir: site, config: { plugins: { ssr: { workers: 2 } } } });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    page = await browser.newPage();
    page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(`console: ${m.text()}`);
    });
    page.on('request', (r) => requests.push({ url: r.url(), type: r.resourceType(), headers: r.headers() }));
    page.on('response', (r) => {
      responses.push({ url: r.url(), status: r.status(), type: r.headers()['content-type'] ?? '' });
      if (r.status() >= 400) errors.push(`${r.status()} ${r.url()}`);
    });
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await b?.close();
  });

  it('renders the home page on the server, without hydration, and fills the server island after load', async () => {
    await page.goto(`${b.url}/`);
    expect(await page.title()).toBe('bext example site');
    expect(await page.textContent('h1')).toBe('bext');
    // The only scripts are Turbo and the island loader: no React on the client.
    const scripts = await page.$$eval('script', (s) => s.map((x) => (x as HTMLScriptElement).src.replace(location.origin, '') || 'inline'));
    expect(scripts.sort()).toEqual(['/__bext/island.js', '/__bext/turbo.js']);
    await page.waitForSelector('bext-island[data-state="done"] #clock');
    expect(await page.textContent('#clock')).toMatch(/^\d{2}:\d{2}:\d{2}$/);
    expect(responses.find((r) => r.url.includes('/__bext/island/clock'))?.status).toBe(200);
    expect(await page.$$eval('.posts li', (l) => l.length)).toBe(3);
  });

  it('follows nav links and a GET form with Turbo: the document is never reloaded', async () => {
    await page.evaluate(() => ((window as unknown as { marker: number }).marker = 42));
    const before = requests.length;
    await page.click('nav a[href="/blog"]');
    await page.waitForURL(`${b.url}/blog`);
    await page.waitForSelector('h1:text("Blog")');
    expect(await page.evaluate(() => (window as unknown as { marker?: number }).marker)).toBe(42);
    const visit = requests.slice(before).find((r) => r.url === `${b.url}/blog`)!;
    expect(visit.type).toBe('fetch');
    expect(visit.headers['x-turbo-request-id']).toBeTruthy();
    expect(await page.getAttribute('nav a[href="/blog"]', 'aria-current')).toBe('page');
    await page.fill('#search input[name="q"]', 'turbo');
    await page.click('#search button');
    await page.waitForURL(`${b.url}/blog?q=turbo`);
    await page.waitForSelector('#results');
    expect(await page.textContent('#results')).toBe('1 result for “turbo”');
    expect(await page.evaluate(() => (window as unknown as { marker?: number }).marker)).toBe(42);
    // Back to the home page through Turbo: the island fills again in the swapped body.
    await page.click('nav a[href="/"]');
    await page.waitForURL(`${b.url}/`);
    await page.waitForSelector('bext-island[data-state="done"] #clock');
    expect(await page.evaluate(() => (window as unknown as { marker?: number }).marker)).toBe(42);
  });

  it('renders a dynamic route with its Open Graph image and an optimised image the browser can show', async () => {
    await page.click('nav a[href="/blog"]');
    await page.waitForURL(`${b.url}/blog`);
    await page.click('a[href="/blog/islands"]');
    await page.waitForURL(`${b.url}/blog/islands`);
    await page.waitForSelector('article h1:text("Server islands")');
    expect(await page.title()).toBe('Server islands · bext example');
    const og = await page.getAttribute('meta[property="og:image"]', 'content');
    expect(og).toMatch(/^\/api\/og\?template=post&title=Server%20islands/);
    const card = await page.request.get(`${b.url}${og}`);
    expect(card.status()).toBe(200);
    expect(card.headers()['content-type']).toBe('image/png');
    await page.waitForFunction(() => {
      const img = document.querySelector('article img') as HTMLImageElement | null;
      return img !== null && img.complete && img.naturalWidth > 0;
    });
    expect(await page.$eval('article img', (i) => (i as HTMLImageElement).naturalWidth)).toBe(640);
    const img = responses.find((r) => r.url.includes('/api/image?src=/img/hero.jpg'))!;
    expect(img.status).toBe(200);
    expect(['image/avif', 'image/webp']).toContain(img.type);
    expect(errors).toEqual([]);
    const missing = await page.goto(`${b.url}/blog/no-such-post`);
    expect(missing?.status()).toBe(404);
    expect(await page.textContent('h1')).toBe('Not found');
    // The browser reports the 404 itself; nothing else went wrong.
    expect(errors.splice(0)).toEqual([`404 ${b.url}/blog/no-such-post`, 'console: Failed to load resource: the server responded with a status of 404 (Not Found)']);
  });

  it('shows a streamed page\'s shell before its slow part arrives', async () => {
    await page.goto(`${b.url}/stream?delay=1500`, { waitUntil: 'commit' });
    await page.waitForSelector('#shell');
    expect(await page.$('#slow')).toBeNull();
    expect(await page.textContent('#pending')).toBe('Waiting for slow data…');
    await page.waitForSelector('#slow', { timeout: 10_000 });
    expect(await page.textContent('#slow')).toBe('ready after 1500 ms');
    expect(errors).toEqual([]);
  });
});
