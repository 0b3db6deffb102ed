import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync, utimesSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { gzipSync, brotliCompressSync, gunzipSync } from 'node:zlib';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { tmp } from '../../test/helpers.js';
import { acceptedEncodings, parseRange } from './index.js';

let b: Bext;
let site: string;

/** Sends a raw request line, so paths reach the server exactly as written. */
function raw(port: number, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(`GET ${path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n`));
    let d = '';
    s.on('data', (c) => (d += c));
    s.on('end', () => resolve(d));
    s.on('error', reject);
  });
}

beforeAll(async () => {
  site = mkdtempSync(join(tmp(), 'site-'));
  const pub = join(site, 'public');
  mkdirSync(join(pub, 'docs'), { recursive: true });
  mkdirSync(join(pub, '.git'), { recursive: true });
  mkdirSync(join(pub, '.well-known'), { recursive: true });
  writeFileSync(join(pub, 'index.html'), '<h1>home</h1>');
  writeFileSync(join(pub, 'docs', 'index.html'), '<h1>docs</h1>');
  writeFileSync(join(pub, 'app.js'), 'console.log("x");'.repeat(100));
  writeFileSync(join(pub, 'app.js.gz'), gzipSync('console.log("x");'.repeat(100)));
  writeFileSync(join(pub, 'app.js.br'), brotliCompressSync('console.log("x");'.repeat(100)));
  writeFileSync(join(pub, 'data.bin'), Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 256)));
  writeFileSync(join(pub, 'big.txt'), 'a'.repeat(600 * 1024));
  writeFileSync(join(pub, '.env'), 'SECRET=1');
  writeFileSync(join(pub, '.git', 'config'), 'secret');
  writeFileSync(join(pub, '.well-known', 'security.txt'), 'Contact: x');
  writeFileSync(join(site, 'outside.txt'), 'OUTSIDE-SECRET');
  symlinkSync(join(site, 'outside.txt'), join(pub, 'link-out.txt'));
  symlinkSync('/etc', join(pub, 'etc-link'));
  const old = new Date('2020-01-01T00:00:00Z');
  utimesSync(join(pub, 'index.html'), old, old);
  b = await startBext({ plugins: ['static'], siteDir: site, config: { plugins: { static: { recheckMs: 0 } } } });
});
afterAll(() => b.close());

describe('static', () => {
  it('serves files with type, length, validators, and a directory index', async () => {
    const r = await request(`${b.url}/`);
    expect(r.statusCode).toBe(200);
    expect(r.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(await r.body.text()).toBe('<h1>home</h1>');
    expect(r.headers.etag).toMatch(/^W\/"/);
    expect(r.headers['last-modified']).toBe('Wed, 01 Jan 2020 00:00:00 GMT');
    expect(await (await request(`${b.url}/docs/`)).body.text()).toBe('<h1>docs</h1>');
    const redirect = await request(`${b.url}/docs?x=1`);
    expect(redirect.statusCode).toBe(301);
    expect(redirect.headers.location).toBe('/docs/?x=1');
    await redirect.body.dump();
    const head = await request(`${b.url}/app.js`, { method: 'HEAD' });
    expect(head.headers['content-length']).toBe(String(1700));
    expect(await head.body.text()).toBe('');
  });

  it('answers 304 to If-None-Match and If-Modified-Since', async () => {
    const first = await request(`${b.url}/index.html`);
    await first.body.dump();
    const etag = String(first.headers.etag);
    const r = await request(`${b.url}/index.html`, { headers: { 'if-none-match': etag } });
    expect(r.statusCode).toBe(304);
    expect(await r.body.text()).toBe('');
    const ims = await request(`${b.url}/index.html`, { headers: { 'if-modified-since': 'Thu, 02 Jan 2020 00:00:00 GMT' } });
    expect(ims.statusCode).toBe(304);
    await ims.body.dump();
    const stale = await request(`${b.url}/index.html`, { headers: { 'if-modified-since': 'Tue, 31 Dec 2019 00:00:00 GMT' } });
    expect(stale.statusCode).toBe(200);
    await stale.body.dump();
  });

  it('serves byte ranges, suffix ranges, and 416 when unsatisfiable', async () => {
    const r = await request(`${b.url}/data.bin`, { headers: { range: 'bytes=10-19' } });
    expect(r.statusCode).toBe(206);
    expect(r.headers['content-range']).toBe('bytes 10-19/1000');
    expect([...Buffer.from(await r.body.arrayBuffer())]).toEqual([10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
    const suffix = await request(`${b.url}/data.bin`, { headers: { range: 'bytes=-5' } });
    expect(suffix.headers['content-range']).toBe('bytes 995-999/1000');
    await suffix.body.dump();
    const bad = await request(`${b.url}/data.bin`, { headers: { range: 'bytes=5000-' } });
    expect(bad.statusCode).toBe(416);
    expect(bad.headers['content-range']).toBe('bytes */1000');
    await bad.body.dump();
    const big = await request(`${b.url}/big.txt`, { headers: { range: 'bytes=614000-' } });
    expect(big.statusCode).toBe(206);
    expect((await big.body.text()).length).toBe(600 * 1024 - 614000);
    expect(parseRange('bytes=0-0,5-6', 10)).toBeNull();
  });

  it('serves pre-compressed siblings by Accept-Encoding with q-values, and Vary', async () => {
    const br = await request(`${b.url}/app.js`, { headers: { 'accept-encoding': 'gzip, br' } });
    expect(br.headers['content-encoding']).toBe('br');
    expect(br.headers.vary).toBe('Accept-Encoding');
    await br.body.dump();
    const gz = await request(`${b.url}/app.js`, { headers: { 'accept-encoding': 'gzip, br;q=0' } });
    expect(gz.headers['content-encoding']).toBe('gzip');
    expect(gunzipSync(Buffer.from(await gz.body.arrayBuffer())).toString()).toBe('console.log("x");'.repeat(100));
    const id = await request(`${b.url}/app.js`, { headers: { 'accept-encoding': 'identity' } });
    expect(id.headers['content-encoding']).toBeUndefined();
    await id.body.dump();
    expect([...acceptedEncodings('*;q=0, gzip')]).toEqual(['gzip']);
  });

  it('refuses path traversal, encoded or not, dotfiles and symlinks out of the root', async () => {
    const attempts = [
      '/../outside.txt', '/..%2foutside.txt', '/%2e%2e/outside.txt', '/%2e%2e%2foutside.txt', '/docs/../../outside.txt',
      '/..%5coutside.txt', '/%252e%252e/outside.txt', '/..;/outside.txt', '/.env', '/.git/config', '/%2egit/config',
      '/link-out.txt', '/etc-link/passwd', '/index.html%00.txt', '//etc/passwd', '/%c0%ae%c0%ae/outside.txt',
    ];
    for (const p of attempts) {
      const res = await raw(b.port, p);
      expect(res, p).not.toContain('OUTSIDE-SECRET');
      expect(res, p).not.toContain('SECRET=1');
      expect(res, p).not.toContain('root:');
      expect(res.split('\r\n')[0], p).toMatch(/ (400|404) /);
    }
    expect((await raw(b.port, '/.well-known/security.txt')).split('\r\n')[0]).toContain('200');
  });

  it('passes unknown paths and other methods on to the next renderer', async () => {
    const r = await request(`${b.url}/missing.txt`);
    expect(r.statusCode).toBe(404);
    expect((await r.body.json() as { error: string }).error).toBe('BEXT_ERR_NOT_FOUND');
    const post = await request(`${b.url}/index.html`, { method: 'POST', body: 'x' });
    expect(post.statusCode).toBe(404);
    await post.body.dump();
  });
});
