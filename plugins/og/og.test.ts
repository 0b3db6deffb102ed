/**
 * /api/og over HTTP: PNGs decoded with sharp, the memory cache and ETags,
 * parameter bounds, and a site's own JSX template.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { tmp } from '../../test/helpers.js';

let b: Bext;

async function get(path: string, headers: Record<string, string> = {}) {
  const r = await request(`${b.url}${path}`, { headers });
  return { status: r.statusCode, headers: r.headers as Record<string, string>, body: Buffer.from(await r.body.arrayBuffer()) };
}

beforeAll(async () => {
  const site = mkdtempSync(join(tmp(), 'og-site-'));
  mkdirSync(join(site, 'og'));
  writeFileSync(join(site, 'og', 'square.tsx'), `
export default function Square({ title = '', color = '#ff0000' }: Record<string, string>) {
  return <div style={{ width: '100%', height: '100%', display: 'flex', background: color, color: '#ffffff', fontSize: 40, fontFamily: 'Inter' }}>{title}</div>;
}`);
  b = await startBext({ plugins: ['og'], siteDir: site, config: { plugins: { og: { maxParamLength: 120 } } } });
});
afterAll(() => b.close());

describe('og', () => {
  it('renders a 1200×630 PNG from the default template, then serves it from memory with an ETag', async () => {
    const q = '/api/og?title=Hello%20bext&subtitle=Every%20feature%20is%20a%20plugin';
    const first = await get(q);
    expect(first.status).toBe(200);
    expect(first.headers['content-type']).toBe('image/png');
    expect(first.headers['x-og-cache']).toBe('miss');
    expect(first.headers['cache-control']).toBe('public, max-age=86400, stale-while-revalidate=604800');
    const meta = await sharp(first.body).metadata();
    expect(meta).toMatchObject({ format: 'png', width: 1200, height: 630 });
    // The card is not blank: text and gradient give it many distinct colours.
    const { channels } = await sharp(first.body).stats();
    expect(channels[0]!.max - channels[0]!.min).toBeGreaterThan(100);
    const second = await get('/api/og?subtitle=Every%20feature%20is%20a%20plugin&title=Hello%20bext');
    expect(second.headers['x-og-cache']).toBe('hit');
    expect(second.body.equals(first.body)).toBe(true);
    expect((await get(q, { 'if-none-match': first.headers.etag! })).status).toBe(304);
  });

  it('renders a site template (og/<name>.tsx) with its parameters', async () => {
    const r = await get('/api/og?template=square&title=Sq&color=%2300ff00');
    expect(r.status).toBe(200);
    const img = sharp(r.body);
    expect(await img.metadata()).toMatchObject({ format: 'png', width: 1200, height: 630 });
    // A corner pixel carries the background colour given in the query.
    const { data } = await img.extract({ left: 1100, top: 600, width: 1, height: 1 }).raw().toBuffer({ resolveWithObject: true });
    expect([...data.subarray(0, 3)]).toEqual([0, 255, 0]);
  });

  it('refuses unknown templates, long values, odd names and too many parameters', async () => {
    const bad = async (q: string) => {
      const r = await get(`/api/og?${q}`);
      expect(r.status).toBe(400);
      return JSON.parse(r.body.toString()) as { error: string; message: string };
    };
    expect(await bad('template=nope')).toMatchObject({ error: 'BEXT_ERR_OG_INVALID', message: 'no template "nope"' });
    expect((await bad(`title=${'x'.repeat(121)}`)).message).toContain('longer than 120');
    expect((await bad('%3Cscript%3E=1')).message).toContain('is not allowed');
    expect((await bad(Array.from({ length: 9 }, (_, i) => `p${i}=1`).join('&'))).message).toContain('at most 8');
  });
});
