import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, describe, expect, it } from 'vitest';
import { validatePluginConfig } from '../../kernel/config.js';
import type { HostApi, Manifest, PluginInstance, TrustedRequest } from '../../plugin-api/index.js';
import { startBext, type Bext } from '../../sdk/harness.js';
import plugin from './index.js';

const HERE = new URL('.', import.meta.url).pathname;

const manifest = JSON.parse(readFileSync(new URL('./bext-plugin.json', import.meta.url), 'utf8')) as Manifest;

async function load(section: Record<string, unknown>, metrics: string[] = []): Promise<PluginInstance> {
  const cfg = validatePluginConfig('tenant', manifest.configSchema, section, 'bext.config.json');
  return plugin({ plugin: 'tenant', config: () => cfg, log() {}, metric: (n: string) => metrics.push(n) } as unknown as HostApi);
}

const req = (host: string) => ({ id: '1', method: 'GET', path: '/', query: '', host, headers: {}, remoteAddress: '127.0.0.1', ctx: {} }) as unknown as TrustedRequest;

const hosts = {
  'shop.example.com': 'shop',
  '*.example.com': 'shared',
  '*.eu.example.com': 'eu-{sub}',
};

describe('tenant', () => {
  it('resolves exact names before wildcards, and the longest wildcard first', async () => {
    const p = await load({ hosts });
    expect(await p.onRequest!(req('shop.example.com'))).toEqual({ action: 'continue', ctx: { tenant: 'shop' } });
    expect(await p.onRequest!(req('blog.example.com'))).toEqual({ action: 'continue', ctx: { tenant: 'shared' } });
    expect(await p.onRequest!(req('a.b.example.com'))).toEqual({ action: 'continue', ctx: { tenant: 'shared' } });
    expect(await p.onRequest!(req('acme.eu.example.com'))).toEqual({ action: 'continue', ctx: { tenant: 'eu-acme' } });
    expect(await p.onRequest!(req('x.acme.eu.example.com'))).toEqual({ action: 'continue', ctx: { tenant: 'eu-x.acme' } });
  });

  it('answers unknown hosts with 404 by default, 421 when configured, and counts them', async () => {
    const metrics: string[] = [];
    const p404 = await load({ hosts }, metrics);
    expect(await p404.onRequest!(req('example.com'))).toMatchObject({ action: 'respond', status: 404, body: 'unknown host\n' });
    expect(await p404.onRequest!(req('example.org'))).toMatchObject({ action: 'respond', status: 404 });
    expect(metrics).toEqual(['unknown_host_total', 'unknown_host_total']);
    const p421 = await load({ hosts, unknown: { status: 421 } });
    expect(await p421.onRequest!(req('other.test'))).toMatchObject({ action: 'respond', status: 421 });
  });

  it('can fall back to a tenant and pass the id on in a header', async () => {
    const p = await load({ hosts, fallback: 'public', header: 'x-tenant-id' });
    expect(await p.onRequest!(req('nowhere.test'))).toEqual({ action: 'continue', ctx: { tenant: 'public' }, setHeaders: { 'x-tenant-id': 'public' } });
    expect(await p.onRequest!(req('shop.example.com'))).toEqual({ action: 'continue', ctx: { tenant: 'shop' }, setHeaders: { 'x-tenant-id': 'shop' } });
  });

  it('reuses one decision per host', async () => {
    const p = await load({ hosts });
    expect(p.onRequest!(req('shop.example.com'))).toBe(p.onRequest!(req('shop.example.com')));
    expect(p.onRequest!(req('a.eu.example.com'))).toBe(p.onRequest!(req('a.eu.example.com')));
  });

  it('refuses malformed host patterns', async () => {
    await expect(load({ hosts: { 'Shop.Example.com': 'x' } })).rejects.toThrow(/hosts/);
    await expect(load({ hosts: { 'a.*.example.com': 'x' } })).rejects.toThrow(/hosts/);
    await expect(load({ hosts, unknown: { status: 500 } })).rejects.toThrow(/\$\.plugins\.tenant\.unknown\.status/);
  });
});

describe('tenant over HTTP', () => {
  const started: Bext[] = [];
  afterAll(() => Promise.all(started.map((b) => b.close())));
  const start = async (section: Record<string, unknown>) => {
    const dir = mkdtempSync(join(tmpdir(), 'bext-whichtenant-'));
    writeFileSync(join(dir, 'bext-plugin.json'), JSON.stringify({ name: 'whichtenant', version: '1.0.0', sandbox: 'trusted', entry: 'index.js', hooks: { onRender: {} } }));
    writeFileSync(join(dir, 'index.js'), "export default () => ({ onRender: (req) => ({ status: 200, body: `${req.ctx.tenant}|${req.headers['x-tenant-id'] ?? ''}` }) });\n");
    const b = await startBext({ plugins: [{ dir: HERE }, { dir }], config: { plugins: { tenant: section } } });
    started.push(b);
    return (host: string) => request(`${b.url}/page`, { headers: { host } }).then(async (r) => ({ status: r.statusCode, body: await r.body.text() }));
  };

  it('resolves exact and wildcard hosts (with a port) and answers unknown hosts 404', async () => {
    const get = await start({ hosts, header: 'x-tenant-id' });
    expect(await get('shop.example.com')).toEqual({ status: 200, body: 'shop|shop' });
    expect(await get('Blog.Example.com:8080')).toEqual({ status: 200, body: 'shared|shared' });
    expect(await get('acme.eu.example.com')).toEqual({ status: 200, body: 'eu-acme|eu-acme' });
    expect(await get('example.net')).toEqual({ status: 404, body: 'unknown host\n' });
  });

  it('answers unknown hosts 421 when configured', async () => {
    const get = await start({ hosts, unknown: { status: 421, body: 'wrong server\n' } });
    expect(await get('example.net')).toEqual({ status: 421, body: 'wrong server\n' });
  });
});
