import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { until } from '../../test/helpers.js';
import { parseTraceparent } from './index.js';

const HERE = new URL('.', import.meta.url).pathname;

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  startTimeUnixNano: string;
  endTimeUnixNano: string;
  attributes: { key: string; value: Record<string, unknown> }[];
  status?: { code?: number; message?: string };
}

/** An OTLP/HTTP receiver: accepts JSON exports on /v1/traces and keeps every span. */
function receiver(): Promise<{ url: string; spans: OtlpSpan[]; resources: Record<string, unknown>[]; contentTypes: string[]; close(): Promise<void> }> {
  const spans: OtlpSpan[] = [];
  const resources: Record<string, unknown>[] = [];
  const contentTypes: string[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.url !== '/v1/traces' || req.method !== 'POST') return void res.writeHead(404).end();
      contentTypes.push(String(req.headers['content-type']));
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { resourceSpans: { resource: Record<string, unknown>; scopeSpans: { spans: OtlpSpan[] }[] }[] };
      for (const rs of body.resourceSpans) {
        resources.push(rs.resource);
        for (const ss of rs.scopeSpans) spans.push(...ss.spans);
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`,
        spans,
        resources,
        contentTypes,
        close: () => new Promise((r) => server.close(() => r())),
      }),
    ),
  );
}

/** An upstream that records the traceparent each request carried. */
let upstream: http.Server;
let upstreamPort = 0;
const seen: { path: string; traceparent?: string; tracestate?: string }[] = [];
beforeAll(async () => {
  upstream = http.createServer((req, res) => {
    seen.push({ path: req.url!, traceparent: req.headers.traceparent as string | undefined, tracestate: req.headers.tracestate as string | undefined });
    res.writeHead(200, { 'content-type': 'text/plain' }).end('from upstream');
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
  upstreamPort = (upstream.address() as AddressInfo).port;
});
afterAll(() => new Promise<void>((r) => upstream.close(() => r())));

const running: Bext[] = [];
afterEach(async () => {
  while (running.length) await running.pop()!.close();
  seen.length = 0;
});

async function start(endpoint: string, tracing: Record<string, unknown> = {}, extra: string[] = []): Promise<Bext> {
  const b = await startBext({
    plugins: [...extra.map((p) => ({ dir: `${HERE}../${p}` })), { dir: HERE }, { dir: `${HERE}../proxy` }],
    config: {
      plugins: {
        tracing: { endpoint, batch: { scheduledDelayMs: 20 }, resourceAttributes: { 'deployment.environment': 'test' }, ...tracing },
        proxy: { upstreams: { app: { members: [`http://127.0.0.1:${upstreamPort}`] } }, routes: [{ upstream: 'app', paths: ['/api/**'] }] },
      },
    } as never,
  });
  running.push(b);
  return b;
}

const attr = (s: OtlpSpan, key: string) => {
  const v = s.attributes.find((a) => a.key === key)?.value;
  return v ? (v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : v.boolValue)) : undefined;
};
const ns = (s: string) => BigInt(s);

describe('tracing', () => {
  it("continues the client's trace: a server span, a child per hook, traceparent passed to the upstream", async () => {
    const rx = await receiver();
    try {
      const b = await start(rx.url);
      const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
      const parentId = '00f067aa0ba902b7';
      const r = await fetch(`${b.url}/api/items?x=1`, { headers: { traceparent: `00-${traceId}-${parentId}-01`, tracestate: 'vendor=abc' } });
      expect(await r.text()).toBe('from upstream');
      await until(() => rx.spans.some((s) => s.kind === 2), 5000, 'server span exported');
      const server = rx.spans.find((s) => s.kind === 2)!;
      expect(server).toMatchObject({ traceId, parentSpanId: parentId, name: 'GET' });
      expect(attr(server, 'http.request.method')).toBe('GET');
      expect(attr(server, 'url.path')).toBe('/api/items');
      expect(attr(server, 'http.response.status_code')).toBe(200);
      // The upstream continues the trace under the server span.
      expect(seen[0]!.traceparent).toBe(`00-${traceId}-${server.spanId}-01`);
      expect(seen[0]!.tracestate).toBe('vendor=abc');
      await until(() => rx.spans.filter((s) => s.parentSpanId === server.spanId).length >= 2, 5000, 'hook spans');
      const children = rx.spans.filter((s) => s.parentSpanId === server.spanId);
      expect(children.map((c) => c.name).sort()).toEqual(['proxy onRender', 'tracing onRequest']);
      for (const c of children) {
        expect(c.traceId).toBe(traceId);
        expect(c.kind).toBe(1);
        expect(ns(c.startTimeUnixNano) >= ns(server.startTimeUnixNano)).toBe(true);
        expect(ns(c.endTimeUnixNano) <= ns(server.endTimeUnixNano) + 1000n).toBe(true);
        expect(ns(c.endTimeUnixNano) >= ns(c.startTimeUnixNano)).toBe(true);
      }
      // Hooks in order: the request hook ends before the proxy's render starts.
      const [req, render] = [children.find((c) => c.name === 'tracing onRequest')!, children.find((c) => c.name === 'proxy onRender')!];
      expect(ns(req.endTimeUnixNano) <= ns(render.startTimeUnixNano)).toBe(true);
      expect(rx.contentTypes[0]).toMatch(/application\/json/);
      const res = JSON.stringify(rx.resources[0]);
      expect(res).toContain('"service.name"');
      expect(res).toContain('deployment.environment');
    } finally {
      await rx.close();
    }
  });

  it('starts a trace when the client sends none or a malformed one, and follows an unsampled parent', async () => {
    const rx = await receiver();
    try {
      const b = await start(rx.url);
      await (await fetch(`${b.url}/api/a`)).text();
      await (await fetch(`${b.url}/api/b`, { headers: { traceparent: '00-00000000000000000000000000000000-00f067aa0ba902b7-01' } })).text();
      const unsampled = '0af7651916cd43dd8448eb211c80319c';
      await (await fetch(`${b.url}/api/c`, { headers: { traceparent: `00-${unsampled}-b7ad6b7169203331-00` } })).text();
      await until(() => rx.spans.filter((s) => s.kind === 2).length >= 2, 5000, 'two server spans');
      const servers = rx.spans.filter((s) => s.kind === 2);
      for (const [i, path] of ['/api/a', '/api/b'].entries()) {
        const up = parseTraceparent(seen[i]!.traceparent)!;
        expect(seen[i]!.path).toBe(path);
        const s = servers.find((x) => attr(x, 'url.path') === path)!;
        expect(s.parentSpanId ?? '').toBe('');
        expect(up).toEqual({ traceId: s.traceId, spanId: s.spanId, sampled: true });
      }
      // Not recorded, but the trace id still travels, unsampled.
      const c = parseTraceparent(seen[2]!.traceparent)!;
      expect(c.traceId).toBe(unsampled);
      expect(c.sampled).toBe(false);
      await (await fetch(`${b.url}/api/d`)).text();
      await until(() => rx.spans.filter((s) => s.kind === 2).length >= 3, 5000, 'third server span');
      expect(rx.spans.some((s) => s.traceId === unsampled)).toBe(false);
    } finally {
      await rx.close();
    }
  });

  it('traces requests answered before its hook (a WAF block) under the client trace', async () => {
    const rx = await receiver();
    try {
      const b = await start(rx.url, {}, ['waf']);
      const traceId = 'aaaabbbbccccddddeeeeffff00001111';
      const r = await fetch(`${b.url}/api/x?q=${encodeURIComponent("1' UNION SELECT password FROM users--")}`, { headers: { traceparent: `00-${traceId}-1111222233334444-01` } });
      expect(r.status).toBe(403);
      await until(() => rx.spans.some((s) => s.traceId === traceId && s.kind === 2), 5000, 'blocked request span');
      const s = rx.spans.find((x) => x.traceId === traceId && x.kind === 2)!;
      expect(s.parentSpanId).toBe('1111222233334444');
      expect(attr(s, 'http.response.status_code')).toBe(403);
      await until(() => rx.spans.some((x) => x.parentSpanId === s.spanId && x.name === 'waf onRequest'), 5000, 'waf span');
      expect(seen).toHaveLength(0);
    } finally {
      await rx.close();
    }
  });

  it('samples new traces by ratio, and keeps serving when the collector is down', async () => {
    const rx = await receiver();
    const url = rx.url;
    await rx.close();
    const b = await start(url, { sampleRatio: 0 });
    for (let i = 0; i < 5; i++) expect((await fetch(`${b.url}/api/down`)).status).toBe(200);
    expect(seen.every((s) => parseTraceparent(s.traceparent)?.sampled === false)).toBe(true);
    running.pop();
    await b.close();
    const b2 = await start(url, { sampleRatio: 1, batch: { scheduledDelayMs: 20, exportTimeoutMs: 300 } });
    for (let i = 0; i < 5; i++) expect((await fetch(`${b2.url}/api/down`)).status).toBe(200);
    await until(() => b2.logs.some((l) => l.plugin === 'tracing' && /could not be exported/.test(l.msg)), 10000, 'export failure logged');
    const failures = b2.logs.filter((l) => l.plugin === 'tracing' && /could not be exported/.test(l.msg));
    expect(failures).toHaveLength(1);
  });

  it('parses traceparent strictly', () => {
    expect(parseTraceparent('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')).toEqual({ traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7', sampled: true });
    expect(parseTraceparent('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00')?.sampled).toBe(false);
    expect(parseTraceparent('01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-extra')?.sampled).toBe(true);
    for (const bad of [
      'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
      '00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g',
      '00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01',
      'garbage',
    ]) expect(parseTraceparent(bad), bad).toBeNull();
    expect(parseTraceparent(['00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', 'x'])).toBeNull();
  });
});
