import { once } from 'node:events';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { validatePluginConfig } from '../../kernel/config.js';
import type { HostApi, Manifest, PluginInstance, TrustedRequest } from '../../plugin-api/index.js';
import { startBext, type Bext } from '../../sdk/harness.js';
import plugin from './index.js';

const HERE = new URL('.', import.meta.url).pathname;

const manifest = JSON.parse(readFileSync(new URL('./bext-plugin.json', import.meta.url), 'utf8')) as Manifest;

async function load(section: Record<string, unknown>, metrics: unknown[] = []): Promise<PluginInstance> {
  const cfg = validatePluginConfig('ipfilter', manifest.configSchema, section, 'bext.config.json');
  return plugin({ plugin: 'ipfilter', config: () => cfg, log() {}, metric: (...a: unknown[]) => metrics.push(a) } as unknown as HostApi);
}

const connect = (p: PluginInstance, remoteAddress: string) => p.onConnect!({ remoteAddress, remotePort: 40000, localPort: 3000 });
const req = (remoteAddress: string, xff?: string) =>
  ({ id: '1', method: 'GET', path: '/', query: '', host: 'a.test', headers: xff ? { 'x-forwarded-for': xff } : {}, remoteAddress, ctx: {} }) as unknown as TrustedRequest;

describe('ipfilter', () => {
  it('rejects denied networks at connect, IPv4, IPv6 and v4-mapped alike', async () => {
    const metrics: unknown[] = [];
    const p = await load({ deny: ['203.0.113.0/24', '2001:db8:bad::/48'] }, metrics);
    expect(await connect(p, '203.0.113.9')).toEqual({ action: 'reject', reason: 'ipfilter' });
    expect(await connect(p, '::ffff:203.0.113.9')).toEqual({ action: 'reject', reason: 'ipfilter' });
    expect(await connect(p, '2001:db8:bad:1::5')).toEqual({ action: 'reject', reason: 'ipfilter' });
    expect(await connect(p, '203.0.114.1')).toBeUndefined();
    expect(await connect(p, '2001:db8:bee::1')).toBeUndefined();
    expect(metrics).toEqual([
      ['rejected_total', 1, { stage: 'connect' }, 'counter'],
      ['rejected_total', 1, { stage: 'connect' }, 'counter'],
      ['rejected_total', 1, { stage: 'connect' }, 'counter'],
    ]);
  });

  it('with an allow list, admits only those networks, and deny still wins inside them', async () => {
    const p = await load({ allow: ['10.0.0.0/8', '::1'], deny: ['10.6.6.0/24'] });
    expect(await connect(p, '10.1.2.3')).toBeUndefined();
    expect(await connect(p, '::1')).toBeUndefined();
    expect(await connect(p, '10.6.6.6')).toMatchObject({ action: 'reject' });
    expect(await connect(p, '192.0.2.1')).toMatchObject({ action: 'reject' });
    expect(await connect(p, 'garbage')).toMatchObject({ action: 'reject' });
  });

  it('judges clients behind a trusted proxy per request by X-Forwarded-For', async () => {
    const metrics: unknown[] = [];
    const p = await load({ deny: ['198.51.100.0/24'], allow: ['198.51.0.0/16', '127.0.0.1'], trustedProxies: ['127.0.0.1'] }, metrics);
    expect(await connect(p, '127.0.0.1')).toBeUndefined();
    expect(await p.onRequest!(req('127.0.0.1', '198.51.7.7'))).toBeUndefined();
    expect(await p.onRequest!(req('127.0.0.1', '198.51.100.7'))).toMatchObject({ action: 'respond', status: 403 });
    // The left-most entry is the client's own claim; only the hop the proxy appended counts.
    expect(await p.onRequest!(req('127.0.0.1', '198.51.7.7, 198.51.100.7'))).toMatchObject({ status: 403 });
    expect(await p.onRequest!(req('127.0.0.1', '198.51.100.7, 198.51.7.7'))).toBeUndefined();
    // An untrusted peer's X-Forwarded-For is ignored (it was judged at connect).
    expect(await p.onRequest!(req('198.51.7.8', '198.51.100.7'))).toBeUndefined();
    expect(metrics).toEqual([
      ['rejected_total', 1, { stage: 'request' }, 'counter'],
      ['rejected_total', 1, { stage: 'request' }, 'counter'],
    ]);
  });

  it('names the bad entry of a list at load', async () => {
    await expect(load({ deny: ['10.0.0.0/8', '10.0.0.0/33'] })).rejects.toThrow(/\$\.plugins\.ipfilter\.deny\[1\]/);
  });
});

function okPlugin(): string {
  const dir = mkdtempSync(join(tmpdir(), 'bext-ok-'));
  writeFileSync(join(dir, 'bext-plugin.json'), JSON.stringify({ name: 'ok', version: '1.0.0', sandbox: 'trusted', entry: 'index.js', hooks: { onRender: {} } }));
  writeFileSync(join(dir, 'index.js'), "export default () => ({ onRender: () => ({ status: 200, body: 'ok' }) });\n");
  return dir;
}

/** Sends a request on a raw socket; resolves with whatever came back before the socket closed. */
async function rawExchange(port: number, extra = ''): Promise<{ received: string; error: string | null }> {
  const s = net.connect(port, '127.0.0.1');
  let received = '';
  let error: string | null = null;
  s.on('data', (c: Buffer) => (received += c.toString()));
  s.on('error', (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
  s.write(`GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n${extra}\r\n`);
  await once(s, 'close');
  return { received, error };
}

describe('ipfilter over real sockets', () => {
  const started: Bext[] = [];
  afterAll(() => Promise.all(started.map((b) => b.close())));
  const start = async (section: Record<string, unknown>) => {
    const b = await startBext({ plugins: [{ dir: HERE }, { dir: okPlugin() }], config: { plugins: { ipfilter: section } } });
    started.push(b);
    return b;
  };

  it('closes a denied client\'s socket without any HTTP response', async () => {
    const b = await start({ deny: ['127.0.0.0/8'] });
    const { received } = await rawExchange(b.port);
    expect(received).toBe('');
    expect(await b.kernel.metrics.text()).toMatch(/bext_plugin_ipfilter_rejected_total\{stage="connect"\} 1/);
  });

  it('serves an allowed client', async () => {
    const b = await start({ allow: ['127.0.0.1/32'] });
    expect((await rawExchange(b.port)).received).toMatch(/^HTTP\/1\.1 200 OK/);
  });

  it('judges a client behind a trusted proxy by X-Forwarded-For', async () => {
    const b = await start({ deny: ['203.0.113.0/24'], trustedProxies: ['127.0.0.1'] });
    expect((await rawExchange(b.port, 'X-Forwarded-For: 203.0.113.50\r\n')).received).toMatch(/^HTTP\/1\.1 403 /);
    expect((await rawExchange(b.port, 'X-Forwarded-For: 203.0.113.50, 198.51.100.4\r\n')).received).toMatch(/^HTTP\/1\.1 200 /);
  });
});
