import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { validatePluginConfig } from '../../kernel/config.js';
import type { HostApi, Manifest, PluginInstance, TrustedRequest } from '../../plugin-api/index.js';
import { startBext, type Bext } from '../../sdk/harness.js';
import plugin from './index.js';

const HERE = new URL('.', import.meta.url).pathname;
const manifest = JSON.parse(readFileSync(new URL('./bext-plugin.json', import.meta.url), 'utf8')) as Manifest;

async function load(section: Record<string, unknown>, metrics: unknown[] = []): Promise<PluginInstance> {
  const cfg = validatePluginConfig('bot', manifest.configSchema, section, 'bext.config.json');
  return plugin({ plugin: 'bot', config: () => cfg, log() {}, metric: (...a: unknown[]) => metrics.push(a) } as unknown as HostApi);
}

const CHROME = 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36';
const FIREFOX = 'Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0';
const BROWSER_HEADERS = { accept: 'text/html,*/*;q=0.8', 'accept-language': 'en-GB,en;q=0.9', 'accept-encoding': 'gzip, br' };

const req = (headers: Record<string, string>, over: Partial<TrustedRequest> = {}) =>
  ({ id: '1', method: 'GET', path: '/', query: '', host: 'a.test', headers, remoteAddress: '192.0.2.1', httpVersion: '1.1', ctx: {}, ...over }) as TrustedRequest;

describe('bot', () => {
  it('classes user agents and tags ctx by default, letting browsers through untouched', async () => {
    const metrics: unknown[] = [];
    const p = await load({}, metrics);
    expect(await p.onRequest!(req({ 'user-agent': CHROME, ...BROWSER_HEADERS }))).toBeUndefined();
    expect(await p.onRequest!(req({ 'user-agent': FIREFOX, ...BROWSER_HEADERS }))).toBeUndefined();
    expect(await p.onRequest!(req({ 'user-agent': 'curl/8.5.0' }))).toEqual({ action: 'continue', ctx: { bot: { class: 'bot', match: 'curl/8.5.0', anomalies: [] } } });
    expect(await p.onRequest!(req({ 'user-agent': 'python-requests/2.31.0' }))).toMatchObject({ ctx: { bot: { class: 'bot' } } });
    expect(await p.onRequest!(req({ 'user-agent': 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)' }))).toMatchObject({ ctx: { bot: { class: 'crawler', match: 'googlebot' } } });
    expect(await p.onRequest!(req({}))).toMatchObject({ ctx: { bot: { class: 'empty', match: null } } });
    expect(metrics[0]).toEqual(['classified_total', 1, { class: 'bot', action: 'tag' }, 'counter']);
  });

  it('classes a browser-like agent with a script-shaped header set as suspicious', async () => {
    const p = await load({});
    expect(await p.onRequest!(req({ 'user-agent': CHROME }))).toEqual({
      action: 'continue',
      ctx: { bot: { class: 'suspicious', match: null, anomalies: ['no-accept', 'no-accept-language', 'no-accept-encoding'] } },
    });
    // One missing header alone is under the default threshold of two.
    expect(await p.onRequest!(req({ 'user-agent': CHROME, accept: '*/*', 'accept-encoding': 'gzip' }))).toBeUndefined();
    expect(await p.onRequest!(req({ 'user-agent': FIREFOX, ...BROWSER_HEADERS, 'sec-ch-ua': '"Chromium";v="124"' }, { httpVersion: '1.0' }))).toMatchObject({
      ctx: { bot: { class: 'suspicious', anomalies: ['http/1.0', 'client-hints-without-chromium'] } },
    });
    expect(await p.onRequest!(req({ 'user-agent': CHROME, ...BROWSER_HEADERS, 'sec-ch-ua': '"Chromium";v="124"' }))).toBeUndefined();
  });

  it('applies block and the allow/deny agent lists', async () => {
    const p = await load({ actions: { bot: 'block', empty: 'block' }, allowAgents: ['UptimeProbe'], denyAgents: ['BadScraper'] });
    expect(await p.onRequest!(req({ 'user-agent': 'curl/8.5.0' }))).toMatchObject({ action: 'respond', status: 403 });
    expect(await p.onRequest!(req({}))).toMatchObject({ action: 'respond', status: 403 });
    expect(await p.onRequest!(req({ 'user-agent': 'uptimeprobe/2 (curl)' }))).toBeUndefined();
    expect(await p.onRequest!(req({ 'user-agent': `${CHROME} BadScraper/1`, ...BROWSER_HEADERS }))).toMatchObject({ status: 403 });
  });

  it('rate-limits a class harder, per client address', async () => {
    const p = await load({ actions: { bot: 'ratelimit' }, ratelimit: { limit: 2, windowSeconds: 60 } });
    const curl = (remoteAddress = '192.0.2.1') => p.onRequest!(req({ 'user-agent': 'curl/8.5.0' }, { remoteAddress }));
    expect(await curl()).toMatchObject({ action: 'continue', ctx: { bot: { class: 'bot' } } });
    expect(await curl()).toMatchObject({ action: 'continue' });
    expect(await curl()).toMatchObject({ action: 'respond', status: 429, headers: { 'retry-after': '30' } });
    expect(await curl('192.0.2.2')).toMatchObject({ action: 'continue' });
    // Browsers are not counted against the bucket.
    expect(await p.onRequest!(req({ 'user-agent': CHROME, ...BROWSER_HEADERS }))).toBeUndefined();
  });
});

describe('bot over HTTP', () => {
  let b: Bext;
  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bext-botctx-'));
    writeFileSync(join(dir, 'bext-plugin.json'), JSON.stringify({ name: 'botctx', version: '1.0.0', sandbox: 'trusted', entry: 'index.js', hooks: { onRender: {} } }));
    writeFileSync(join(dir, 'index.js'), "export default () => ({ onRender: (req) => ({ status: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify(req.ctx.bot ?? null) }) });\n");
    b = await startBext({ plugins: [{ dir: HERE }, { dir }], config: { plugins: { bot: { actions: { listed: 'block', suspicious: 'ratelimit' }, denyAgents: ['evilbot'], ratelimit: { limit: 1, windowSeconds: 60 } } } } });
  });
  afterAll(() => b?.close());

  it('answers each user-agent class as configured', async () => {
    const get = (headers: Record<string, string>) => fetch(`${b.url}/`, { headers });
    const browser = await get({ 'user-agent': CHROME, ...BROWSER_HEADERS });
    expect(await browser.json()).toBeNull();
    expect(await (await get({ 'user-agent': 'Wget/1.21.4' })).json()).toMatchObject({ class: 'bot', match: 'Wget/1.21.4' });
    expect((await get({ 'user-agent': 'EvilBot/0.1' })).status).toBe(403);
    // fetch always adds accept, accept-language and accept-encoding; node:http sends only what it is given, like a script.
    const scripted = () => new Promise<{ status: number; body: string }>((resolve, reject) => {
      http.get(`${b.url}/`, { headers: { 'user-agent': CHROME } }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode!, body }));
      }).on('error', reject);
    });
    const first = await scripted();
    expect(first.status).toBe(200);
    expect(JSON.parse(first.body)).toMatchObject({ class: 'suspicious', anomalies: ['no-accept', 'no-accept-language', 'no-accept-encoding'] });
    expect((await scripted()).status).toBe(429);
  });
});
