import { request } from 'node:http';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PublishMessage } from '../../plugin-api/index.js';
import { startBext, type Bext } from '../../sdk/harness.js';
import type { WafEvent } from './index.js';

const HERE = new URL('.', import.meta.url).pathname;
const PROBE = `${HERE}test-fixtures/probe`;
const g = globalThis as { __wafProbe?: PublishMessage[] };

async function start(waf: Record<string, unknown>): Promise<Bext> {
  return startBext({ plugins: [{ dir: HERE }, { dir: PROBE }], config: { plugins: { waf } } as never });
}

/** A raw request, for bodies fetch would not send as they are. */
function send(url: string, method: string, headers: Record<string, string>, body?: Buffer | string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const r = request(url, { method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString('utf8') }));
    });
    r.on('error', reject);
    r.end(body);
  });
}

/** Waits until `pred` holds, checking after each turn of the event loop (published messages arrive asynchronously). */
async function until<T>(fn: () => T | undefined, tries = 200): Promise<T> {
  for (let i = 0; i < tries; i++) {
    const v = fn();
    if (v !== undefined) return v;
    await new Promise((r) => setImmediate(r));
  }
  throw new Error('condition not met');
}

describe('waf plugin, block mode, on a real server', () => {
  let b: Bext;
  beforeAll(async () => {
    g.__wafProbe = [];
    b = await start({ paranoia: 1, maxBodyBytes: 4096, exclusions: [{ paths: ['/probe/cms/**'], rules: ['xss'] }] });
  });
  afterAll(() => b.close());

  it('passes clean requests and tags them for later plugins', async () => {
    const r = await fetch(`${b.url}/probe/x?page=2&sort=name`);
    expect(r.status).toBe(200);
    expect((await r.json()).ctx.waf).toEqual({ score: 0, families: [], attack: false });
  });

  it('answers 403 with BEXT_ERR_WAF_BLOCKED and the request id', async () => {
    const r = await fetch(`${b.url}/probe/x?id=${encodeURIComponent("1' or '1'='1")}`);
    expect(r.status).toBe(403);
    expect(r.headers.get('content-type')).toMatch(/application\/json/);
    const body = await r.json();
    expect(body).toMatchObject({ error: 'BEXT_ERR_WAF_BLOCKED' });
    expect(typeof body.requestId).toBe('string');
  });

  it('inspects JSON, form, multipart and gzip bodies', async () => {
    const p = '<script>alert(document.cookie)</script>';
    const json = await send(`${b.url}/probe/x`, 'POST', { 'content-type': 'application/json' }, JSON.stringify({ comment: { text: p } }));
    const form = await send(`${b.url}/probe/x`, 'POST', { 'content-type': 'application/x-www-form-urlencoded' }, `a=1&text=${encodeURIComponent(p)}`);
    const multipart = await send(`${b.url}/probe/x`, 'POST', { 'content-type': 'multipart/form-data; boundary=B0' }, `--B0\r\nContent-Disposition: form-data; name="t"\r\n\r\n${p}\r\n--B0--\r\n`);
    const gz = await send(`${b.url}/probe/x`, 'POST', { 'content-type': 'application/json', 'content-encoding': 'gzip' }, gzipSync(JSON.stringify({ t: p })));
    expect([json.status, form.status, multipart.status, gz.status]).toEqual([403, 403, 403, 403]);
    const ok = await send(`${b.url}/probe/x`, 'POST', { 'content-type': 'application/json' }, JSON.stringify({ comment: { text: 'Nice post, thanks!' } }));
    expect(ok.status).toBe(200);
  });

  it('blocks a body larger than maxBodyBytes without reading it', async () => {
    const r = await send(`${b.url}/probe/x`, 'POST', { 'content-type': 'text/plain' }, 'a'.repeat(10_000));
    expect(r.status).toBe(403);
  });

  it('applies exclusions per route', async () => {
    const xss = encodeURIComponent('<script>alert(1)</script>');
    expect((await fetch(`${b.url}/probe/cms/page?html=${xss}`)).status).toBe(200);
    expect((await fetch(`${b.url}/probe/blog/page?html=${xss}`)).status).toBe(403);
  });

  it('serves the audit ring on the admin listener only, newest first', async () => {
    await fetch(`${b.url}/probe/x?q=${encodeURIComponent('; cat /etc/passwd')}`);
    const pub = await fetch(`${b.url}/__bext/waf/events`);
    expect(pub.status).toBe(403);
    const r = await fetch(`${b.adminUrl}/__bext/waf/events?limit=2`);
    expect(r.status).toBe(200);
    const body = (await r.json()) as { events: WafEvent[]; totals: { blocked: number }; mode: string };
    expect(body.mode).toBe('block');
    expect(body.events).toHaveLength(2);
    const [last] = body.events;
    expect(last).toMatchObject({ method: 'GET', blocked: true, threshold: 5 });
    expect(last!.matches.map((m) => m.family)).toContain('rce');
    expect(last!.matches.every((m) => m.data.length <= 100)).toBe(true);
    expect(body.events[0]!.seq).toBeGreaterThan(body.events[1]!.seq);
    expect(body.totals.blocked).toBeGreaterThanOrEqual(6);
  });

  it('publishes each detection to system/waf and counts blocks by family', async () => {
    await fetch(`${b.url}/probe/x?q=${encodeURIComponent('../../../etc/passwd')}`);
    const msg = await until(() => g.__wafProbe!.find((m) => (m.data as WafEvent).matches.some((x) => x.family === 'lfi')));
    expect(msg.publisher).toBe('waf');
    expect((msg.data as WafEvent).blocked).toBe(true);
    const metrics = await b.kernel.metrics.text();
    expect(metrics).toMatch(/bext_plugin_waf_blocked_total\{[^}]*family="lfi"[^}]*\} [1-9]/);
  });
});

describe('waf plugin, detect mode', () => {
  let b: Bext;
  beforeAll(async () => {
    b = await start({ mode: 'detect', eventsRingSize: 3 });
  });
  afterAll(() => b.close());

  it('lets attacks through, tagged, and records them in a bounded ring', async () => {
    for (let i = 0; i < 5; i++) {
      const r = await fetch(`${b.url}/probe/x?n=${i}&q=${encodeURIComponent('<svg/onload=alert(1)>')}`);
      expect(r.status).toBe(200);
      const { ctx } = await r.json();
      expect(ctx.waf).toMatchObject({ attack: true, families: ['xss'] });
    }
    const body = (await (await fetch(`${b.adminUrl}/__bext/waf/events`)).json()) as { events: WafEvent[]; capacity: number };
    expect(body.capacity).toBe(3);
    expect(body.events.map((e) => e.url.match(/n=(\d)/)![1])).toEqual(['4', '3', '2']);
    expect(body.events.every((e) => e.blocked === false && e.mode === 'detect')).toBe(true);
  });
});

describe('configuration errors', () => {
  it('refuses unknown keys and out-of-range values at start', async () => {
    await expect(start({ paranoia: 7 })).rejects.toThrow(/paranoia/);
    await expect(start({ blockEverything: true })).rejects.toThrow(/blockEverything/);
  });
});
