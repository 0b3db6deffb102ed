import { once } from 'node:events';
import { copyFileSync, mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import net from 'node:net';
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
// MaxMind's public test databases, in shared/ beside the repository.
const CORPUS = new URL('../../../shared/corpus/geo/', import.meta.url).pathname;
const COUNTRY_DB = join(CORPUS, 'GeoIP2-Country-Test.mmdb');
// Addresses from GeoIP2-Country-Test.source.json.
const GB = '81.2.69.142';
const SE = '89.160.20.112';
const CN = '175.16.199.1';
const JP6 = '2001:218::1';

async function load(section: Record<string, unknown>, log: (level: string, msg: string) => void = () => {}): Promise<PluginInstance> {
  const cfg = validatePluginConfig('geo', manifest.configSchema, section, 'bext.config.json');
  return plugin({ plugin: 'geo', config: () => cfg, log, metric() {} } as unknown as HostApi);
}
const connect = (p: PluginInstance, remoteAddress: string) => p.onConnect!({ remoteAddress, remotePort: 40000, localPort: 3000 });
const req = (remoteAddress: string, xff?: string) =>
  ({ id: '1', method: 'GET', path: '/', query: '', host: 'a.test', headers: xff ? { 'x-forwarded-for': xff } : {}, remoteAddress, ctx: {} }) as unknown as TrustedRequest;

describe('geo', () => {
  it('rejects denied countries at connect and keeps the rest', async () => {
    const p = await load({ database: COUNTRY_DB, deny: ['CN', 'JP'] });
    expect(await connect(p, CN)).toEqual({ action: 'reject', reason: 'geo' });
    expect(await connect(p, JP6)).toEqual({ action: 'reject', reason: 'geo' });
    expect(await connect(p, `::ffff:${CN}`)).toEqual({ action: 'reject', reason: 'geo' });
    expect(await connect(p, GB)).toBeUndefined();
    expect(await connect(p, '127.0.0.1')).toBeUndefined();
  });

  it('with an allow list serves only those countries; unknown addresses follow `unknown`', async () => {
    const p = await load({ database: COUNTRY_DB, allow: ['GB', 'SE'], unknown: 'deny' });
    expect(await connect(p, GB)).toBeUndefined();
    expect(await connect(p, SE)).toBeUndefined();
    expect(await connect(p, CN)).toMatchObject({ action: 'reject' });
    expect(await connect(p, '127.0.0.1')).toMatchObject({ action: 'reject' });
    expect(await connect(p, '214.1.1.1')).toMatchObject({ action: 'reject' });
  });

  it('judges proxied clients by X-Forwarded-For and tags ctx.geo', async () => {
    const p = await load({ database: COUNTRY_DB, deny: ['CN'], trustedProxies: ['10.0.0.0/8'] });
    expect(await connect(p, '10.0.0.1')).toBeUndefined();
    expect(await p.onRequest!(req('10.0.0.1', `${GB}, ${CN}`))).toMatchObject({ action: 'respond', status: 403 });
    expect(await p.onRequest!(req('10.0.0.1', `${CN}, ${GB}`))).toEqual({ action: 'continue', ctx: { geo: { country: 'GB' } } });
    expect(await p.onRequest!(req(SE))).toEqual({ action: 'continue', ctx: { geo: { country: 'SE' } } });
    expect(await p.onRequest!(req('127.0.0.1'))).toEqual({ action: 'continue', ctx: { geo: { country: null } } });
    const quiet = await load({ database: COUNTRY_DB, tag: false });
    expect(await quiet.onRequest!(req(SE))).toBeUndefined();
  });

  it('fails to load with the config key to fix when the database is missing or not an mmdb', async () => {
    await expect(load({ database: '/nonexistent/x.mmdb' })).rejects.toMatchObject({ code: 'BEXT_ERR_PLUGIN_LOAD', hint: expect.stringMatching(/plugins\.geo\.database/) });
    await expect(load({ database: join(CORPUS, 'LICENSE-MIT') })).rejects.toMatchObject({ code: 'BEXT_ERR_PLUGIN_LOAD' });
  });

  it('reloads the database when the file is replaced, when asked to watch', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bext-geo-'));
    const db = join(dir, 'country.mmdb');
    copyFileSync(COUNTRY_DB, db);
    let reloaded!: () => void;
    const seen = new Promise<void>((r) => (reloaded = r));
    const p = await load({ database: db, watch: true, watchIntervalMs: 50, deny: ['US'] }, (_level, msg) => msg === 'geo database reloaded' && reloaded());
    // The country test database places this address in the US; the city test database does not know it.
    expect(await connect(p, '74.209.24.1')).toMatchObject({ action: 'reject' });
    // Replace the file the way updaters do: write beside it, then rename over it.
    copyFileSync(join(CORPUS, 'GeoIP2-City-Test.mmdb'), join(dir, 'next.mmdb'));
    renameSync(join(dir, 'next.mmdb'), db);
    await seen;
    expect(await connect(p, '74.209.24.1')).toBeUndefined();
    expect(await connect(p, '216.160.83.56')).toMatchObject({ action: 'reject' });
    await p.dispose!();
  });
});

describe('geo over real sockets', () => {
  const started: Bext[] = [];
  afterAll(() => Promise.all(started.map((b) => b.close())));
  const start = async (section: Record<string, unknown>) => {
    const dir = mkdtempSync(join(tmpdir(), 'bext-country-'));
    writeFileSync(join(dir, 'bext-plugin.json'), JSON.stringify({ name: 'country', version: '1.0.0', sandbox: 'trusted', entry: 'index.js', hooks: { onRender: {} } }));
    writeFileSync(join(dir, 'index.js'), "export default () => ({ onRender: (req) => ({ status: 200, body: String(req.ctx.geo?.country) }) });\n");
    const b = await startBext({ plugins: [{ dir: HERE }, { dir }], config: { plugins: { geo: { database: COUNTRY_DB, ...section } } } });
    started.push(b);
    return b;
  };

  it('presents test-database addresses through a trusted proxy and refuses denied countries', async () => {
    const b = await start({ deny: ['CN'], trustedProxies: ['127.0.0.1'] });
    const from = async (addr: string) => {
      const r = await request(`${b.url}/`, { headers: { 'x-forwarded-for': addr } });
      return { status: r.statusCode, body: await r.body.text() };
    };
    expect(await from(GB)).toEqual({ status: 200, body: 'GB' });
    expect(await from(SE)).toEqual({ status: 200, body: 'SE' });
    expect(await from(JP6)).toEqual({ status: 200, body: 'JP' });
    expect(await from(CN)).toMatchObject({ status: 403 });
    expect(await b.kernel.metrics.text()).toMatch(/bext_plugin_geo_rejected_total\{country="CN",stage="request"\} 1/);
  });

  it('drops a direct client from an unplaced address at connect when unknown is deny', async () => {
    const b = await start({ allow: ['GB'], unknown: 'deny' });
    const s = net.connect(b.port, '127.0.0.1');
    let received = '';
    s.on('data', (c: Buffer) => (received += c.toString()));
    s.on('error', () => undefined);
    s.write('GET / HTTP/1.1\r\nHost: a.test\r\n\r\n');
    await once(s, 'close');
    expect(received).toBe('');
  });
});
