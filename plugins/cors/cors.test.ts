import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { validatePluginConfig } from '../../kernel/config.js';
import type { HostApi, Manifest, PluginInstance, RequestDecision, ResponseDecision, TrustedRequest } from '../../plugin-api/index.js';
import { startBext, type Bext } from '../../sdk/harness.js';
import plugin from './index.js';

const HERE = new URL('.', import.meta.url).pathname;

const manifest = JSON.parse(readFileSync(new URL('./bext-plugin.json', import.meta.url), 'utf8')) as Manifest;

async function load(section: Record<string, unknown>): Promise<PluginInstance> {
  const cfg = validatePluginConfig('cors', manifest.configSchema, section, 'bext.config.json');
  return plugin({ plugin: 'cors', config: () => cfg, log() {}, metric() {} } as unknown as HostApi);
}

function req(method: string, headers: Record<string, string>): TrustedRequest {
  return { id: '1', method, path: '/api', query: '', host: 'api.example.com', headers, remoteAddress: '127.0.0.1', scheme: 'http', httpVersion: '1.1', ctx: {} } as TrustedRequest;
}

const preflight = (origin: string, extra: Record<string, string> = {}) =>
  req('OPTIONS', { origin, 'access-control-request-method': 'PUT', ...extra });

describe('cors', () => {
  it('answers a preflight from an exact origin with max-age and vary', async () => {
    const p = await load({ origins: ['https://app.example.com'], maxAgeSeconds: 300 });
    const d = (await p.onRequest!(preflight('https://app.example.com', { 'access-control-request-headers': 'x-trace, content-type' }))) as Extract<RequestDecision, { action: 'respond' }>;
    expect(d.status).toBe(204);
    expect(d.headers).toMatchObject({
      'access-control-allow-origin': 'https://app.example.com',
      'access-control-allow-methods': 'GET, HEAD, POST, PUT, PATCH, DELETE',
      'access-control-allow-headers': 'x-trace, content-type',
      'access-control-max-age': '300',
      vary: 'Origin, Access-Control-Request-Headers',
    });
    expect(d.headers).not.toHaveProperty('access-control-allow-credentials');
  });

  it('matches wildcard subdomains at any depth but not the apex or look-alikes', async () => {
    const p = await load({ origins: ['https://*.example.com'] });
    const ok = async (o: string) => ((await p.onRequest!(preflight(o))) as { status: number }).status;
    expect(await ok('https://a.example.com')).toBe(204);
    expect(await ok('https://a.b.example.com')).toBe(204);
    expect(await ok('https://example.com')).toBe(403);
    expect(await ok('https://evil-example.com')).toBe(403);
    expect(await ok('https://a.example.com.evil.net')).toBe(403);
    expect(await ok('http://a.example.com')).toBe(403);
    expect(await ok('https://x/y.example.com')).toBe(403);
    expect(await ok('https://a.example.com:8443')).toBe(403);
  });

  it('refuses methods and headers outside the lists', async () => {
    const p = await load({ origins: ['https://app.example.com'], methods: ['GET', 'PUT'], allowHeaders: ['X-Token'] });
    const put = (await p.onRequest!(preflight('https://app.example.com', { 'access-control-request-headers': 'x-token,accept' }))) as { status: number; headers: Record<string, string> };
    expect(put.status).toBe(204);
    expect(put.headers['access-control-allow-headers']).toBe('X-Token');
    expect(put.headers.vary).toBe('Origin');
    const del = (await p.onRequest!(req('OPTIONS', { origin: 'https://app.example.com', 'access-control-request-method': 'DELETE' }))) as { status: number };
    expect(del.status).toBe(403);
    const hdr = (await p.onRequest!(preflight('https://app.example.com', { 'access-control-request-headers': 'x-other' }))) as { status: number };
    expect(hdr.status).toBe(403);
  });

  it('lets an OPTIONS that is not a preflight through', async () => {
    const p = await load({ origins: ['*'] });
    expect(await p.onRequest!(req('OPTIONS', {}))).toBeUndefined();
    expect(await p.onRequest!(req('OPTIONS', { origin: 'https://a.test' }))).toBeUndefined();
  });

  it('marks actual responses and always keeps Vary: Origin right', async () => {
    const p = await load({ origins: ['https://app.example.com'], credentials: true, exposeHeaders: ['X-Request-Id'] });
    const on = (h: Record<string, string>, resHeaders: Record<string, string> = {}) =>
      p.onResponse!(req('GET', h), { status: 200, headers: resHeaders }) as ResponseDecision;
    expect(on({ origin: 'https://app.example.com' }, { vary: 'Accept-Encoding' })).toEqual({
      setHeaders: {
        'access-control-allow-origin': 'https://app.example.com',
        'access-control-allow-credentials': 'true',
        'access-control-expose-headers': 'X-Request-Id',
        vary: 'Accept-Encoding, Origin',
      },
    });
    // No Origin, or a foreign one: no CORS headers, but caches must still key on Origin.
    expect(on({})).toEqual({ setHeaders: { vary: 'Origin' } });
    expect(on({ origin: 'https://evil.test' }, { vary: 'accept-encoding' })).toEqual({ setHeaders: { vary: 'accept-encoding, Origin' } });
    expect(on({}, { vary: 'Accept-Encoding, origin' })).toBeUndefined();
    expect(on({}, { vary: '*' })).toBeUndefined();
  });

  it('answers * for any origin without credentials, and echoes the origin with them', async () => {
    const open = await load({ origins: ['*'] });
    expect(open.onResponse!(req('GET', { origin: 'https://x.test' }), { status: 200, headers: {} })).toEqual({ setHeaders: { 'access-control-allow-origin': '*' } });
    const creds = await load({ origins: ['*'], credentials: true });
    const d = creds.onResponse!(req('GET', { origin: 'https://x.test' }), { status: 200, headers: {} }) as { setHeaders: Record<string, string> };
    expect(d.setHeaders).toEqual({ 'access-control-allow-origin': 'https://x.test', 'access-control-allow-credentials': 'true', vary: 'Origin' });
  });

  it('refuses a malformed origin at load with the config path', async () => {
    await expect(load({ origins: ['https://app.example.com/'] })).rejects.toThrow(/\$\.plugins\.cors\.origins\[0\]/);
    await expect(load({ origins: ['https://a.example.com'], bogus: 1 })).rejects.toThrow(/unknown key "bogus"/);
  });
});

describe('cors over HTTP', () => {
  let b: Bext;
  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bext-vary-'));
    writeFileSync(join(dir, 'bext-plugin.json'), JSON.stringify({ name: 'vary', version: '1.0.0', sandbox: 'trusted', entry: 'index.js', hooks: { onRender: {} } }));
    writeFileSync(join(dir, 'index.js'), "export default () => ({ onRender: () => ({ status: 200, headers: { vary: 'Accept-Encoding', 'x-request-id': 'r1' }, body: 'hello' }) });\n");
    b = await startBext({
      plugins: [{ dir: HERE }, { dir }],
      config: { plugins: { cors: { origins: ['https://app.example.com', 'https://*.preview.example.com'], credentials: true, allowHeaders: ['Authorization', 'Content-Type'], exposeHeaders: ['X-Request-Id'], maxAgeSeconds: 900 } } },
    });
  });
  afterAll(() => b?.close());

  it('answers a preflight before any route, with max-age and Vary', async () => {
    const r = await request(`${b.url}/api/items`, {
      method: 'OPTIONS',
      headers: { origin: 'https://pr-42.preview.example.com', 'access-control-request-method': 'PUT', 'access-control-request-headers': 'authorization,content-type' },
    });
    await r.body.text();
    expect(r.statusCode).toBe(204);
    expect(r.headers).toMatchObject({
      'access-control-allow-origin': 'https://pr-42.preview.example.com',
      'access-control-allow-methods': 'GET, HEAD, POST, PUT, PATCH, DELETE',
      'access-control-allow-headers': 'Authorization, Content-Type',
      'access-control-allow-credentials': 'true',
      'access-control-max-age': '900',
      vary: 'Origin',
    });
    const refused = await request(`${b.url}/api/items`, { method: 'OPTIONS', headers: { origin: 'https://evil.test', 'access-control-request-method': 'PUT' } });
    await refused.body.text();
    expect(refused.statusCode).toBe(403);
    expect(refused.headers['access-control-allow-origin']).toBeUndefined();
  });

  it('marks actual responses and merges Vary with the route\'s own', async () => {
    const ok = await request(`${b.url}/api/items`, { headers: { origin: 'https://app.example.com' } });
    expect(await ok.body.text()).toBe('hello');
    expect(ok.headers).toMatchObject({
      'access-control-allow-origin': 'https://app.example.com',
      'access-control-allow-credentials': 'true',
      'access-control-expose-headers': 'X-Request-Id',
      vary: 'Accept-Encoding, Origin',
    });
    const plain = await request(`${b.url}/api/items`);
    await plain.body.text();
    expect(plain.headers.vary).toBe('Accept-Encoding, Origin');
    expect(plain.headers['access-control-allow-origin']).toBeUndefined();
  });
});
