/**
 * /api/image over HTTP: outputs decoded with sharp (format, width), format
 * negotiation, the allow-lists (local prefixes, remote origins, no
 * redirects), size bounds, and the memory cache.
 */
import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import sharp from 'sharp';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { tmp } from '../../test/helpers.js';

let b: Bext;
let origin: http.Server;
let originUrl: string;
let big: Buffer;
let photo: Buffer;

async function get(path: string, headers: Record<string, string> = {}) {
  const r = await request(`${b.url}${path}`, { headers });
  return { status: r.statusCode, headers: r.headers as Record<string, string>, body: Buffer.from(await r.body.arrayBuffer()) };
}

const err = (r: { body: Buffer }) => JSON.parse(r.body.toString()) as { error: string; message: string };

beforeAll(async () => {
  const site = mkdtempSync(join(tmp(), 'img-site-'));
  mkdirSync(join(site, 'public', 'img'), { recursive: true });
  mkdirSync(join(site, 'public', 'private'), { recursive: true });
  photo = await sharp({ create: { width: 1600, height: 900, channels: 3, background: { r: 30, g: 90, b: 200 } } }).jpeg({ quality: 90 }).toBuffer();
  writeFileSync(join(site, 'public', 'img', 'photo.jpg'), photo);
  writeFileSync(join(site, 'public', 'img', 'logo.png'), await sharp({ create: { width: 300, height: 100, channels: 4, background: { r: 0, g: 0, b: 0, alpha: 0.5 } } }).png().toBuffer());
  writeFileSync(join(site, 'public', 'img', 'vector.svg'), '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>');
  writeFileSync(join(site, 'public', 'img', 'not-an-image.jpg'), 'hello');
  writeFileSync(join(site, 'public', 'private', 'x.jpg'), photo);
  writeFileSync(join(site, 'secret.jpg'), photo);
  symlinkSync(join(site, 'secret.jpg'), join(site, 'public', 'img', 'escape.jpg'));
  big = await sharp({ create: { width: 3000, height: 3000, channels: 3, background: '#888' } }).jpeg().toBuffer();
  origin = http.createServer((req, res) => {
    if (req.url === '/pics/remote.jpg') return res.writeHead(200, { 'content-type': 'image/jpeg' }).end(photo);
    if (req.url === '/pics/huge.jpg') return res.writeHead(200, { 'content-type': 'image/jpeg' }).end(Buffer.alloc(3 * 1024 * 1024));
    if (req.url === '/pics/pixels.jpg') return res.writeHead(200, { 'content-type': 'image/jpeg' }).end(big);
    if (req.url === '/pics/moved.jpg') return res.writeHead(302, { location: 'http://169.254.169.254/latest/meta-data' }).end();
    res.writeHead(404).end();
  });
  await new Promise<void>((r) => origin.listen(0, '127.0.0.1', r));
  originUrl = `http://127.0.0.1:${(origin.address() as { port: number }).port}`;
  b = await startBext({
    plugins: ['image'],
    siteDir: site,
    config: { plugins: { image: { local: ['/img/'], remote: [`${originUrl}/pics/`], maxSourceBytes: 2 * 1024 * 1024, maxSourcePixels: 4_000_000 } } },
  });
});
afterAll(async () => {
  await b.close();
  await new Promise((r) => origin.close(r));
});

describe('image', () => {
  it('resizes to the next allowed width and converts by Accept: AVIF, then WebP, else the source format', async () => {
    const avif = await get('/api/image?src=/img/photo.jpg&w=600', { accept: 'image/avif,image/webp,*/*' });
    expect(avif.status).toBe(200);
    expect(avif.headers['content-type']).toBe('image/avif');
    expect(avif.headers.vary).toBe('Accept');
    expect(await sharp(avif.body).metadata()).toMatchObject({ format: 'heif', width: 640, height: 360 });
    const webp = await get('/api/image?src=/img/photo.jpg&w=600', { accept: 'image/webp,*/*' });
    expect(webp.headers['content-type']).toBe('image/webp');
    expect(await sharp(webp.body).metadata()).toMatchObject({ format: 'webp', width: 640 });
    const jpeg = await get('/api/image?src=/img/photo.jpg&w=256&q=50', { accept: '*/*' });
    expect(jpeg.headers['content-type']).toBe('image/jpeg');
    expect(await sharp(jpeg.body).metadata()).toMatchObject({ format: 'jpeg', width: 256, height: 144 });
    expect(jpeg.body.length).toBeLessThan(photo.length);
    const png = await get('/api/image?src=/img/logo.png&w=100');
    expect(await sharp(png.body).metadata()).toMatchObject({ format: 'png', width: 128, hasAlpha: true });
    // An explicit format wins and the answer does not vary; no enlargement past the source.
    const forced = await get('/api/image?src=/img/logo.png&w=3000&f=webp', { accept: 'image/avif' });
    expect(forced.headers['content-type']).toBe('image/webp');
    expect(forced.headers.vary).toBeUndefined();
    expect((await sharp(forced.body).metadata()).width).toBe(300);
  });

  it('keeps results in memory with an ETag; fetches allow-listed remote sources', async () => {
    const a = await get('/api/image?src=/img/photo.jpg&w=128', { accept: 'image/webp' });
    const c = await get('/api/image?src=/img/photo.jpg&w=100', { accept: 'image/webp' });
    expect(a.headers['x-image-cache']).toBe('miss');
    expect(c.headers['x-image-cache']).toBe('hit');
    expect(c.body.equals(a.body)).toBe(true);
    expect(a.headers['cache-control']).toBe('public, max-age=86400, stale-while-revalidate=86400');
    expect((await get('/api/image?src=/img/photo.jpg&w=128', { accept: 'image/webp', 'if-none-match': a.headers.etag! })).status).toBe(304);
    const remote = await get(`/api/image?src=${encodeURIComponent(`${originUrl}/pics/remote.jpg`)}&w=384&f=jpeg`);
    expect(remote.status).toBe(200);
    expect(await sharp(remote.body).metadata()).toMatchObject({ format: 'jpeg', width: 384 });
  });

  it('refuses sources off the allow-lists, escapes, redirects and SVG', async () => {
    const denied = async (src: string) => {
      const r = await get(`/api/image?src=${encodeURIComponent(src)}&w=64`);
      expect(r.status).toBe(403);
      return err(r);
    };
    expect((await denied('/private/x.jpg')).message).toContain('outside the allowed prefixes');
    expect((await denied('/img/../private/x.jpg')).error).toBe('BEXT_ERR_IMAGE_DENIED');
    expect((await denied('/img/escape.jpg')).message).toContain('leaves the image root');
    expect((await denied('https://evil.example/pics/remote.jpg')).message).toContain('not on the allow-list');
    expect((await denied(`${originUrl}/other/remote.jpg`)).error).toBe('BEXT_ERR_IMAGE_DENIED');
    expect((await denied(`http://user:pw@${originUrl.slice(7)}/pics/remote.jpg`)).error).toBe('BEXT_ERR_IMAGE_DENIED');
    expect((await denied('/img/vector.svg')).message).toContain('SVG sources are refused');
    const moved = await get(`/api/image?src=${encodeURIComponent(`${originUrl}/pics/moved.jpg`)}`);
    expect(moved.status).toBe(502);
    expect(err(moved).message).toContain('answered 302');
  });

  it('bounds source bytes and pixels, and validates w, q and f', async () => {
    const huge = await get(`/api/image?src=${encodeURIComponent(`${originUrl}/pics/huge.jpg`)}&w=64`);
    expect(huge.status).toBe(413);
    expect(err(huge).error).toBe('BEXT_ERR_IMAGE_TOO_LARGE');
    const pixels = await get(`/api/image?src=${encodeURIComponent(`${originUrl}/pics/pixels.jpg`)}&w=64`);
    expect(pixels.status).toBe(413);
    expect(err(pixels).message).toContain('pixels');
    for (const q of ['src=/img/photo.jpg&w=0', 'src=/img/photo.jpg&w=abc', 'src=/img/photo.jpg&q=101', 'src=/img/photo.jpg&f=gif', 'w=64', 'src=/img/not-an-image.jpg']) {
      const r = await get(`/api/image?${q}`);
      expect(r.status, q).toBe(400);
      expect(err(r).error).toBe('BEXT_ERR_IMAGE_INVALID');
    }
    expect((await get('/api/image?src=/img/missing.jpg')).status).toBe(404);
  });
});
