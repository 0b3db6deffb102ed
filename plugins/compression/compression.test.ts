/**
 * Compression over real sockets: negotiation, what is never compressed,
 * streamed bodies flushed as they arrive, and every coding decoded back by
 * the real CLIs (brotli, zstd, gzip, curl --compressed) byte for byte.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { Agent, request } from 'undici';
import { afterAll, describe, expect, it } from 'vitest';
import { acceptEncoding, compressibleType, varyWith, type ResponseData, type TrustedRequest } from '../../plugin-api/index.js';
import { startBext, type Bext } from '../../sdk/harness.js';
import { plugin, tmp } from '../../test/helpers.js';

type Leaf = (req: TrustedRequest) => ResponseData | Promise<ResponseData>;
const g = globalThis as unknown as { __cleaf: Leaf };
const COMPRESSION = resolve(import.meta.dirname);
const leafDir = plugin('cleaf', { hooks: { onRender: { priority: 100 } }, limits: { timeoutMs: 30000 } }, `
export default () => ({ onRender(req) { return globalThis.__cleaf(req); } });
`);
const agent = new Agent({ connections: 16 });
const running: Bext[] = [];
afterAll(async () => {
  for (const b of running) await b.close();
  await agent.close();
});

async function start(config: Record<string, unknown> = {}, plugins: (string | { dir: string })[] = []): Promise<Bext> {
  const b = await startBext({ plugins: [...plugins, COMPRESSION, { dir: leafDir }], config: { plugins: { compression: config } } });
  running.push(b);
  return b;
}

async function get(b: Bext, path: string, headers: Record<string, string> = {}, method = 'GET') {
  const r = await request(`${b.url}${path}`, { method: method as 'GET', headers, dispatcher: agent });
  const body = Buffer.from(await r.body.arrayBuffer());
  return { status: r.statusCode, headers: r.headers as Record<string, string | undefined>, body };
}

const TEXT = Array.from({ length: 2000 }, (_, i) => `<tr><td>${i}</td><td>naïve café ${i % 7}</td></tr>`).join('\n');

describe('negotiation helpers', () => {
  it('weighs q-values, keeps the server order on ties, and reads identity and *', () => {
    const offered = ['br', 'zstd', 'gzip'] as const;
    expect(acceptEncoding('gzip, deflate, br, zstd', offered)).toEqual({ codings: ['br', 'zstd', 'gzip'], identity: true });
    expect(acceptEncoding('gzip;q=1.0, br;q=0.5', offered).codings).toEqual(['gzip', 'br']);
    expect(acceptEncoding('x-gzip', offered).codings).toEqual(['gzip']);
    expect(acceptEncoding('*', offered).codings).toEqual(['br', 'zstd', 'gzip']);
    expect(acceptEncoding('*;q=0, gzip', offered)).toEqual({ codings: ['gzip'], identity: false });
    expect(acceptEncoding('br;q=0, identity', offered)).toEqual({ codings: [], identity: true });
    expect(acceptEncoding('identity;q=0', offered)).toEqual({ codings: [], identity: false });
    expect(acceptEncoding('', offered)).toEqual({ codings: [], identity: true });
    expect(acceptEncoding(undefined, offered)).toEqual({ codings: [], identity: true });
    expect(acceptEncoding('GZIP ; Q=0.3 , Br', offered).codings).toEqual(['br', 'gzip']);
  });

  it('classifies media types and merges Vary', () => {
    const c = compressibleType();
    for (const t of ['text/html; charset=utf-8', 'application/json', 'application/ld+json', 'text/css', 'application/javascript', 'image/svg+xml', 'application/wasm', 'application/rss+xml']) expect(c(t), t).toBe(true);
    for (const t of ['image/png', 'image/webp', 'video/mp4', 'font/woff2', 'application/zip', 'application/gzip', 'text/event-stream', 'application/octet-stream', undefined]) expect(c(t), String(t)).toBe(false);
    expect(varyWith(undefined, 'Accept-Encoding')).toBe('Accept-Encoding');
    expect(varyWith('Cookie', 'Accept-Encoding')).toBe('Cookie, Accept-Encoding');
    expect(varyWith('accept-encoding', 'Accept-Encoding')).toBe('accept-encoding');
    expect(varyWith('*', 'Accept-Encoding')).toBe('*');
  });
});

describe('compression', () => {
  it('compresses with the best accepted coding; brotli, zstd and gzip CLIs and curl decode it byte for byte', async () => {
    g.__cleaf = () => ({ status: 200, headers: { 'content-type': 'text/html; charset=utf-8', etag: '"abc"' }, body: TEXT });
    const b = await start();
    const cases: [string, string, string[]][] = [
      ['gzip, deflate, br, zstd', 'br', ['brotli', '-d', '-c']],
      ['zstd', 'zstd', ['zstd', '-d', '-c']],
      ['gzip', 'gzip', ['gzip', '-d', '-c']],
      ['br;q=0.2, gzip;q=0.8', 'gzip', ['gzip', '-d', '-c']],
    ];
    for (const [ae, coding, cli] of cases) {
      const r = await get(b, '/t', { 'accept-encoding': ae });
      expect(r.headers['content-encoding'], ae).toBe(coding);
      expect(r.headers.vary).toBe('Accept-Encoding');
      expect(r.headers.etag).toBe('W/"abc"');
      expect(r.headers['content-length']).toBeUndefined();
      expect(r.body.length).toBeLessThan(Buffer.byteLength(TEXT) / 3);
      expect(execFileSync(cli[0]!, cli.slice(1), { input: r.body }).toString(), ae).toBe(TEXT);
    }
    for (const args of [['--compressed'], ['--compressed', '-H', 'accept-encoding: zstd'], ['--compressed', '-H', 'accept-encoding: gzip']]) {
      const out = await promisify(execFile)('curl', ['-s', ...args, `${b.url}/t`], { maxBuffer: 1 << 24 });
      expect(out.stdout, args.join(' ')).toBe(TEXT);
    }
    const plain = await get(b, '/t');
    expect(plain.headers['content-encoding']).toBeUndefined();
    expect(plain.headers.vary).toBe('Accept-Encoding');
    expect(plain.body.toString()).toBe(TEXT);
    const refused = await get(b, '/t', { 'accept-encoding': 'identity;q=0' });
    expect(refused.headers['content-encoding']).toBeUndefined();
  });

  it('uses the configured levels', async () => {
    g.__cleaf = () => ({ status: 200, headers: { 'content-type': 'text/plain' }, body: TEXT });
    const fast = await start({ levels: { gzip: 1, br: 1 } });
    const best = await start({ levels: { gzip: 9, br: 11 } });
    const f = await get(fast, '/', { 'accept-encoding': 'gzip' });
    const s = await get(best, '/', { 'accept-encoding': 'gzip' });
    expect(zlib.gunzipSync(f.body).toString()).toBe(TEXT);
    expect(f.body.length).toBe(zlib.gzipSync(TEXT, { level: 1 }).length);
    expect(s.body.length).toBe(zlib.gzipSync(TEXT, { level: 9 }).length);
    const bf = await get(fast, '/', { 'accept-encoding': 'br' });
    const bs = await get(best, '/', { 'accept-encoding': 'br' });
    expect(bs.body.length).toBeLessThan(bf.body.length);
  });

  it('leaves alone what must not be compressed', async () => {
    const big = 'x'.repeat(4000);
    const responses: Record<string, ResponseData> = {
      '/png': { status: 200, headers: { 'content-type': 'image/png' }, body: Buffer.alloc(4000, 1) },
      '/small': { status: 200, headers: { 'content-type': 'text/html' }, body: '<p>tiny</p>' },
      '/sse': { status: 200, headers: { 'content-type': 'text/event-stream' }, body: `data: ${big}\n\n` },
      '/encoded': { status: 200, headers: { 'content-type': 'text/html', 'content-encoding': 'gzip' }, body: zlib.gzipSync(big) },
      '/notransform': { status: 200, headers: { 'content-type': 'text/html', 'cache-control': 'no-transform' }, body: big },
      '/partial': { status: 206, headers: { 'content-type': 'text/html', 'content-range': 'bytes 0-3999/8000' }, body: big },
      '/empty': { status: 204, headers: { 'content-type': 'text/html' } },
    };
    g.__cleaf = (req) => responses[req.path]!;
    const b = await start();
    for (const p of Object.keys(responses)) {
      const r = await get(b, p, { 'accept-encoding': 'br, gzip' });
      if (p === '/encoded') {
        expect(r.headers['content-encoding']).toBe('gzip');
        expect(zlib.gunzipSync(r.body).toString()).toBe(big);
      } else expect(r.headers['content-encoding'], p).toBeUndefined();
      if (p === '/small' || p === '/png') expect(r.headers.vary, p).toBeUndefined();
    }
    const head = await get(b, '/notransform', {}, 'HEAD');
    expect(head.headers['content-encoding']).toBeUndefined();
  });

  it('streams: a streamed body is compressed chunk by chunk and flushed, so the first part arrives before the rest is rendered', async () => {
    let release!: () => void;
    let gate!: Promise<void>;
    g.__cleaf = () => ({
      status: 200,
      headers: { 'content-type': 'text/html; charset=utf-8' },
      body: Readable.from((async function* () {
        yield Buffer.from('<html><head><title>shell</title></head><body>');
        await gate;
        yield Buffer.from(`${TEXT}</body></html>`);
      })()),
    });
    const b = await start();
    for (const [coding, decoder] of [['br', () => zlib.createBrotliDecompress()], ['gzip', () => zlib.createGunzip()]] as const) {
      gate = new Promise<void>((r) => (release = r));
      const r = await request(`${b.url}/stream`, { headers: { 'accept-encoding': coding }, dispatcher: agent });
      expect(r.headers['content-encoding']).toBe(coding);
      const dec = decoder();
      let text = '';
      dec.on('data', (d: Buffer) => (text += d.toString()));
      const reader = r.body[Symbol.asyncIterator]();
      while (!text.includes('<body>')) {
        const n = await reader.next();
        expect(n.done).toBe(false);
        dec.write(n.value as Buffer);
        await new Promise<void>((res) => dec.flush(() => res()));
      }
      expect(text).toBe('<html><head><title>shell</title></head><body>');
      release();
      for (let n = await reader.next(); !n.done; n = await reader.next()) dec.write(n.value as Buffer);
      dec.end();
      await new Promise((res) => dec.on('end', res));
      expect(text).toBe(`<html><head><title>shell</title></head><body>${TEXT}</body></html>`);
    }
    // zstd, decoded by the CLI.
    gate = Promise.resolve();
    const z = await get(b, '/stream', { 'accept-encoding': 'zstd' });
    expect(execFileSync('zstd', ['-d', '-c'], { input: z.body }).toString()).toBe(`<html><head><title>shell</title></head><body>${TEXT}</body></html>`);
  });

  it('pre-compressed files from the static plugin are served as they are', async () => {
    const site = mkdtempSync(join(tmp(), 'csite-'));
    mkdirSync(join(site, 'public'));
    const js = 'console.log("hello");\n'.repeat(500);
    writeFileSync(join(site, 'public', 'app.js'), js);
    writeFileSync(join(site, 'public', 'app.js.br'), zlib.brotliCompressSync(js));
    writeFileSync(join(site, 'public', 'app.js.zst'), execFileSync('zstd', ['-c', '-19'], { input: js }));
    g.__cleaf = () => ({ status: 404, headers: { 'content-type': 'text/plain' }, body: 'no' });
    const b = await startBext({ plugins: ['static', COMPRESSION, { dir: leafDir }], siteDir: site });
    running.push(b);
    const br = await get(b, '/app.js', { 'accept-encoding': 'br' });
    expect(br.headers['content-encoding']).toBe('br');
    expect(br.body.equals(zlib.brotliCompressSync(js))).toBe(true);
    const zs = await get(b, '/app.js', { 'accept-encoding': 'zstd' });
    expect(execFileSync('zstd', ['-d', '-c'], { input: zs.body }).toString()).toBe(js);
    // No sibling for gzip: compressed here, as a stream.
    const gz = await get(b, '/app.js', { 'accept-encoding': 'gzip' });
    expect(gz.headers['content-encoding']).toBe('gzip');
    expect(zlib.gunzipSync(gz.body).toString()).toBe(js);
  });
});
