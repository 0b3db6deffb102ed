/**
 * The ssr plugin over real sockets: a fixture site built with esbuild and
 * rendered by real worker threads; the cache, static and compression
 * plugins beside it where the behaviour depends on them; a QuickJS tenant
 * next to it.
 */
import { mkdirSync, mkdtempSync, readFileSync, utimesSync, writeFileSync, existsSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { createGunzip } from 'node:zlib';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { tmp, until } from '../../test/helpers.js';
import { buildSite, compareRoutes, routeOf, scanSite } from './build.js';
import { RouteTable } from './routes.js';
import { MARK, type MemoTable } from './runtime.js';
import { Splicer } from './worker.js';
import { buildSandboxSite } from './tenant.js';

const agent = new Agent({ connections: 32, pipelining: 1 });
afterAll(() => agent.close());

function write(root: string, files: Record<string, string>): string {
  for (const [p, body] of Object.entries(files)) {
    mkdirSync(dirname(join(root, p)), { recursive: true });
    writeFileSync(join(root, p), body);
  }
  return root;
}

async function get(url: string, headers: Record<string, string> = {}, method = 'GET') {
  const r = await request(url, { method: method as 'GET', headers, dispatcher: agent });
  return { status: r.statusCode, headers: r.headers as Record<string, string>, body: await r.body.text() };
}

/** Sends one raw HTTP/1.1 request and returns every byte the server wrote (interim answers included). */
function raw(port: number, path: string, headers = ''): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(`GET ${path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n${headers}\r\n`));
    let d = '';
    s.on('data', (c) => (d += c));
    s.on('end', () => resolve(d));
    s.on('error', reject);
  });
}

const LAYOUT = `
import { TurboScript, type LayoutProps } from 'bext/ssr';
export default function Layout({ children }: LayoutProps) {
  return (
    <html lang="en">
      <head><meta charSet="utf-8" /><link rel="stylesheet" href="/assets/app.css" /><TurboScript /></head>
      <body><main>{children}</main></body>
    </html>
  );
}`;

/** The fixture site: one page per behaviour under test. */
function fixture(version = 'v1'): Record<string, string> {
  return {
    'public/assets/app.css': 'body{margin:0}',
    'public/robots.txt': 'User-agent: *',
    'data/version.ts': `export const VERSION = ${JSON.stringify(version)};`,
    'pages/layout.tsx': LAYOUT,
    'pages/index.tsx': `
import { VERSION } from '../data/version.js';
export const revalidate = 60;
export default function Home() { return <h1 id="v">{VERSION}</h1>; }`,
    'pages/users/[id].tsx': `
import { notFound, type PageContext, type PageProps } from 'bext/ssr';
export const revalidate = 60;
export async function load({ params, tag }: PageContext) {
  if (params.id === '0') notFound();
  tag('user:' + params.id);
  return { id: params.id };
}
export default function User({ data }: PageProps<typeof load>) { return <p id="user">user {data.id}</p>; }`,
    'pages/docs/[...rest].tsx': `
import type { PageProps } from 'bext/ssr';
export const mode = 'swr'; export const revalidate = 5; export const swr = 50;
export default function Docs({ params }: PageProps) { return <p id="rest">{params.rest}</p>; }`,
    'pages/plain.tsx': `export default function Plain() { return <p>no layout change</p>; }`,
    'pages/static.tsx': `
export const mode = 'static';
let n = 0;
export function load() { return { n: ++n, at: Math.random() }; }
export default function S({ data }: { data: { n: number; at: number } }) { return <p id="static">{data.at}</p>; }`,
    'pages/slow.tsx': `
import type { PageContext } from 'bext/ssr';
export async function load({ query }: PageContext) {
  await new Promise((r) => setTimeout(r, Number(query.ms ?? 100)));
  return { ms: query.ms, pid: Math.random() };
}
export default function Slow({ data }: { data: { ms: string } }) { return <p>slept {data.ms}</p>; }`,
    'pages/spin.tsx': `export default function Spin() { for (;;) {} }`,
    'pages/crash.tsx': `
import type { PageContext } from 'bext/ssr';
export async function load({ query }: PageContext) {
  await new Promise((r) => setTimeout(r, Number(query.ms ?? 0)));
  process.exit(3);
}
export default function Crash() { return <p>never</p>; }`,
    'pages/boom.tsx': `export default function Boom(): never { throw new Error('kaboom in render'); }`,
    'pages/go.tsx': `
import { redirect } from 'bext/ssr';
export function load() { redirect('/users/7', 308); }
export default function Go() { return null; }`,
    'pages/status.tsx': `
import type { PageContext } from 'bext/ssr';
export function load({ status, header, revalidate }: PageContext) { status(410); header('x-page', 'yes'); revalidate(9); return {}; }
export const mode = 'isr';
export default function Gone() { return <p>gone</p>; }`,
    'pages/memo.tsx': `
import { memo, type PageContext, type PageProps } from 'bext/ssr';
const Cell = memo(function Cell({ i, label }: { i: number; label: string }) { return <td className={'c' + (i % 3)}>{label} &amp; {i}</td>; });
const Nested = memo(function Nested({ i }: { i: number }) { return <tr><Cell i={i} label="n" /><td>{'<' + i + '>'}</td></tr>; });
export function load({ query }: PageContext) { return { n: Number(query.n ?? 10) }; }
export default function M({ data }: PageProps<typeof load>) {
  return <table><tbody>{Array.from({ length: data.n }, (_, i) => <Nested key={i} i={i} />)}<tr><Cell i={1} label={'\\u0001 stray'} /></tr></tbody></table>;
}`,
    'pages/rows.tsx': `
import { memo, type PageContext, type PageProps } from 'bext/ssr';
function Row({ i }: { i: number }) { return <tr><td>{i}</td><td>{'row ' + i}</td></tr>; }
const MemoRow = memo(Row);
const Block = memo(function Block({ n }: { n: number }) { return <tbody>{Array.from({ length: n }, (_, i) => <MemoRow key={i} i={i} />)}</tbody>; });
export function load({ query }: PageContext) { return { memo: query.memo === '1', n: Number(query.n ?? 5) }; }
export default function Rows({ data }: PageProps<typeof load>) {
  return <table>{data.memo ? <Block n={data.n} /> : <tbody>{Array.from({ length: data.n }, (_, i) => <Row key={i} i={i} />)}</tbody>}</table>;
}`,
    'pages/stream.tsx': `
import { Suspense, use } from 'react';
import type { PageContext, PageProps } from 'bext/ssr';
export const stream = true;
export function load({ query }: PageContext) {
  const ms = Number(query.delay ?? 300);
  return { slow: new Promise<string>((r) => setTimeout(() => r('ready after ' + ms + ' ms'), ms)) };
}
function Slow({ p }: { p: Promise<string> }) { return <p id="slow">{use(p)}</p>; }
export default function Stream({ data }: PageProps<typeof load>) {
  return <><p id="shell">shell{'x'.repeat(2000)}</p><Suspense fallback={<p id="pending">pending</p>}><Slow p={data.slow} /></Suspense></>;
}`,
    'pages/island-page.tsx': `
import { Island } from 'bext/ssr';
export default function P() { return <Island name="hello" props={{ who: 'world' }} fallback={<i>loading</i>} />; }`,
    'islands/hello.tsx': `
export const revalidate = 3;
export function load(props: { who: string }) { return { upper: props.who.toUpperCase() }; }
export default function Hello({ who, data }: { who: string; data: { upper: string } }) { return <b id="hello">hello {who} {data.upper}</b>; }`,
    'pages/404.tsx': `export default function NF({ path }: { path: string }) { return <h1 id="nf">missing {path}</h1>; }`,
  };
}

function newSite(version = 'v1'): string {
  return write(mkdtempSync(join(tmp(), 'ssr-site-')), fixture(version));
}

async function stats(b: Bext): Promise<any> {
  return JSON.parse((await get(`${b.adminUrl}/__bext/ssr`)).body);
}

describe('build', () => {
  it('maps files to routes, orders static before dynamic before catch-all, and matches paths', async () => {
    expect(routeOf('index')).toEqual([]);
    expect(routeOf('blog/[slug]')).toEqual(['blog', ':slug']);
    expect(routeOf('docs/[...rest]')).toEqual(['docs', '*rest']);
    const scan = await scanSite(newSite());
    const patterns = scan.pages.map((p) => p.entry.pattern);
    expect(patterns.indexOf('/users/:id')).toBeLessThan(patterns.indexOf('/docs/*'));
    expect(patterns.indexOf('/plain')).toBeLessThan(patterns.indexOf('/users/:id'));
    expect(scan.notFound).not.toBeNull();
    expect(scan.islands.map((i) => i.name)).toEqual(['hello']);
    expect(scan.pages.find((p) => p.entry.pattern === '/users/:id')!.layouts.length).toBe(1);
    const t = new RouteTable(scan.pages.map((p) => p.entry));
    expect(t.match('/users/42')).toMatchObject({ pattern: '/users/:id', params: { id: '42' } });
    expect(t.match('/users/caf%C3%A9')!.params.id).toBe('café');
    expect(t.match('/docs/a/b/c')).toMatchObject({ pattern: '/docs/*', params: { rest: 'a/b/c' } });
    expect(t.match('/docs')).toBeNull();
    expect(t.match('/plain/')!.pattern).toBe('/plain');
    expect(t.match('/users/%2E%2E')).toBeNull();
    expect(t.match('/users/%E0%A4%A')).toBeNull();
    expect(t.match('/nope/x')).toBeNull();
    expect(compareRoutes({ pattern: '/a', file: '', segments: ['a'] }, { pattern: '/:x', file: '', segments: [':x'] })).toBeLessThan(0);
  });

  it('refuses two pages for the same paths, bad segments and syntax errors with file and line', async () => {
    const a = write(mkdtempSync(join(tmp(), 'ssr-bad-')), { 'pages/a.tsx': 'export default () => null;', 'pages/a/index.tsx': 'export default () => null;' });
    await expect(buildSite(a)).rejects.toMatchObject({ code: 'BEXT_ERR_SSR_BUILD', message: expect.stringContaining('answer the same paths (/a)') });
    const b = write(mkdtempSync(join(tmp(), 'ssr-bad-')), { 'pages/[a]x.tsx': 'export default () => null;' });
    await expect(buildSite(b)).rejects.toMatchObject({ code: 'BEXT_ERR_SSR_BUILD', message: expect.stringContaining('is not a valid segment') });
    const c = write(mkdtempSync(join(tmp(), 'ssr-bad-')), { 'pages/index.tsx': 'export default function X() {\n  return <p>;\n}' });
    await expect(buildSite(c)).rejects.toMatchObject({ code: 'BEXT_ERR_SSR_BUILD', message: expect.stringMatching(/pages\/index\.tsx:\d+:\d+: /) });
    await expect(buildSite(mkdtempSync(join(tmp(), 'ssr-empty-')))).rejects.toMatchObject({ code: 'BEXT_ERR_SSR_BUILD', message: expect.stringContaining('has no pages/ folder') });
  });

  it('splices memoised HTML across chunk boundaries, nested, and keeps stray marker characters', () => {
    const stored = new Map<string, string>();
    const memo = { get: (k: string) => stored.get(k), set: (k: string, v: string) => void stored.set(k, v), lru: null, counts: {}, count() {} };
    const table: MemoTable = { nonce: 'n1.', slots: [{ key: 'outer', name: 'O' }, { key: 'inner', name: 'I' }, { html: '<b>hit</b>', name: 'I' }] };
    const s = new Splicer(table, memo as never);
    const html = `<a>${MARK}n1.S0${MARK}<x>${MARK}n1.S1${MARK}<y/>${MARK}n1.E1${MARK}</x>${MARK}n1.E0${MARK}${MARK}n1.H2${MARK}${MARK}stray</a>`;
    let out = '';
    for (let i = 0; i < html.length; i += 3) out += s.push(html.slice(i, i + 3));
    out += s.end();
    expect(out).toBe(`<a><x><y/></x><b>hit</b>${MARK}stray</a>`);
    expect(stored.get('inner')).toBe('<y/>');
    expect(stored.get('outer')).toBe('<x><y/></x>');
  });
});

describe('serving a site', () => {
  let b: Bext;
  let site: string;
  beforeAll(async () => {
    site = newSite();
    b = await startBext({ plugins: ['static', 'compression', 'ssr'], siteDir: site, config: { plugins: { ssr: { workers: 2 } } } });
  });
  afterAll(() => b.close());

  it('built the site at first start, and renders pages with their route rules as cache headers', async () => {
    expect(existsSync(join(site, '.bext/ssr/manifest.json'))).toBe(true);
    expect(b.logs.some((l) => l.msg === 'ssr found pages/ but no build; building')).toBe(true);
    const home = await get(`${b.url}/`);
    expect(home.status).toBe(200);
    expect(home.body).toMatch(/^<!DOCTYPE html><html lang="en"><head>/);
    expect(home.body).toContain('<h1 id="v">v1</h1>');
    expect(home.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(home.headers['cache-control']).toBe('public, max-age=0');
    expect(home.headers['surrogate-control']).toBe('max-age=60, stale-while-revalidate=604800, stale-if-error=86400');
    expect(home.headers['cache-tag']).toBe('page:/');
    const user = await get(`${b.url}/users/5`);
    expect(user.body).toContain('<p id="user">user <!-- -->5</p>');
    expect(user.headers['cache-tag']).toBe('page:/users/:id user:5');
    const docs = await get(`${b.url}/docs/a/b`);
    expect(docs.body).toContain('<p id="rest">a/b</p>');
    expect(docs.headers['surrogate-control']).toBe('max-age=5, stale-while-revalidate=50, stale-if-error=86400');
    const plain = await get(`${b.url}/plain`);
    expect(plain.headers['cache-control']).toBe('no-store');
    expect(plain.headers['surrogate-control']).toBeUndefined();
    const st = await get(`${b.url}/status`);
    expect(st.status).toBe(410);
    expect(st.headers['x-page']).toBe('yes');
    expect(st.headers['surrogate-control']).toMatch(/^max-age=9,/);
    // public/ still belongs to the static plugin in front.
    expect((await get(`${b.url}/robots.txt`)).body).toBe('User-agent: *');
    const head = await get(`${b.url}/users/5`, {}, 'HEAD');
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
  });

  it('answers notFound(), unmatched paths, redirects, other methods and page errors', async () => {
    const nf = await get(`${b.url}/users/0`);
    expect(nf.status).toBe(404);
    expect(nf.body).toContain('<h1 id="nf">missing <!-- -->/users/0</h1>');
    const none = await get(`${b.url}/no/such/page`);
    expect(none.status).toBe(404);
    expect(none.body).toContain('missing <!-- -->/no/such/page');
    const go = await get(`${b.url}/go`);
    expect(go.status).toBe(308);
    expect(go.headers.location).toBe('/users/7');
    const post = await get(`${b.url}/users/1`, {}, 'POST');
    expect(post.status).toBe(405);
    expect(post.headers.allow).toBe('GET, HEAD');
    const boom = await get(`${b.url}/boom`);
    expect(boom.status).toBe(500);
    expect(JSON.parse(boom.body)).toMatchObject({ error: 'BEXT_ERR_SSR_RENDER', message: expect.stringContaining('kaboom in render') });
    expect(boom.body).not.toContain('at Boom');
    const html = await get(`${b.url}/boom`, { accept: 'text/html' });
    expect(html.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(html.body).toContain('BEXT_ERR_SSR_RENDER');
    await until(() => b.logs.some((l) => l.msg === 'ssr render failed' && String(l.error).includes('at Boom')), 2000, 'the stack in the log');
  });

  it('renders a server island as a placeholder and serves its HTML with its own rule', async () => {
    const page = await get(`${b.url}/island-page`);
    const src = /<bext-island data-src="([^"]+)"><i>loading<\/i><\/bext-island>/.exec(page.body)?.[1];
    expect(src).toBe('/__bext/island/hello?p=eyJ3aG8iOiJ3b3JsZCJ9');
    expect(page.body).toContain('<script type="module" src="/__bext/island.js" async=""></script>');
    const island = await get(`${b.url}${src}`);
    expect(island.status).toBe(200);
    expect(island.body).toBe('<b id="hello">hello <!-- -->world<!-- --> <!-- -->WORLD</b>');
    expect(island.headers['surrogate-control']).toBe('max-age=3, stale-while-revalidate=604800, stale-if-error=86400');
    expect(island.headers['cache-tag']).toBe('island:hello');
    expect((await get(`${b.url}/__bext/island/hello?p=%%%`)).status).toBe(400);
    expect((await get(`${b.url}/__bext/island/nope`)).status).toBe(404);
    const js = await get(`${b.url}/__bext/island.js`);
    expect(js.headers['content-type']).toBe('text/javascript; charset=utf-8');
    expect(js.body).toContain("querySelectorAll('bext-island[data-src]')");
    const turbo = await get(`${b.url}/__bext/turbo.js`);
    expect(turbo.status).toBe(200);
    expect(turbo.body).toContain('Turbo');
    expect((await get(`${b.url}/__bext/turbo.js`, { 'if-none-match': turbo.headers.etag! })).status).toBe(304);
  });

  it('memoises pure components per props, with the same HTML as a plain render and hit metrics', async () => {
    const first = await get(`${b.url}/memo?n=30`);
    const second = await get(`${b.url}/memo?n=30`);
    expect(first.status).toBe(200);
    expect(second.body).toBe(first.body);
    expect(first.body).toContain('<tr><td class="c2">n<!-- --> &amp; <!-- -->2</td><td>&lt;2&gt;</td></tr>');
    expect(first.body).toContain(`${MARK} stray`);
    expect(first.body.split(MARK).length).toBe(2);
    // Memoised or not, the HTML is the same: marks and the separators React put beside them leave no trace.
    const plain = await get(`${b.url}/rows?n=40`);
    for (const n of [40, 40, 60, 40]) {
      const memoised = await get(`${b.url}/rows?n=${n}&memo=1`);
      if (n === 40) expect(memoised.body).toBe(plain.body);
      else expect(memoised.body).toBe((await get(`${b.url}/rows?n=60`)).body);
    }
    for (let i = 0; i < 6; i++) await get(`${b.url}/memo?n=30`);
    await until(async () => ((await stats(b)).memo.Nested?.hit ?? 0) >= 30, 5000, 'memo hits reported');
    const s = await stats(b);
    expect(s.memo.Nested.miss).toBeGreaterThanOrEqual(30);
    expect(s.memo.Cell.uncacheable ?? 0).toBe(0);
    const metrics = await get(`${b.adminUrl}/metrics`);
    if (metrics.status === 200) expect(metrics.body).toMatch(/bext_plugin_ssr_memo_hits_total\{component="Nested"\} \d+/);
  });

  it('streams a page chunk by chunk through gzip: the shell arrives before the slow part is rendered', async () => {
    const events: { text: string; at: number }[] = [];
    const t0 = performance.now();
    const headers = await new Promise<http.IncomingHttpHeaders>((resolve, reject) => {
      http.get(`${b.url}/stream?delay=600`, { headers: { 'accept-encoding': 'gzip' } }, (res) => {
        const gunzip = createGunzip();
        res.pipe(gunzip);
        gunzip.on('data', (c: Buffer) => events.push({ text: c.toString(), at: performance.now() - t0 }));
        gunzip.on('end', () => resolve(res.headers));
        gunzip.on('error', reject);
      }).on('error', reject);
    });
    expect(headers['content-encoding']).toBe('gzip');
    expect(headers['transfer-encoding']).toBe('chunked');
    expect(headers['cache-control']).toBe('no-store');
    const shell = events.findIndex((e) => e.text.includes('id="pending"'));
    const slow = events.findIndex((e) => e.text.includes('ready after 600 ms'));
    expect(shell).toBeGreaterThanOrEqual(0);
    expect(slow).toBeGreaterThan(shell);
    // The shell was decoded before the server had the slow data: it was flushed, not buffered.
    expect(events[slow]!.at - events[shell]!.at).toBeGreaterThan(300);
    // Any page streams at /api/ssr-stream/*.
    const r = await get(`${b.url}/api/ssr-stream/users/3`);
    expect(r.status).toBe(200);
    expect(r.headers['content-length']).toBeUndefined();
    expect(r.body).toMatch(/^<!DOCTYPE html>/);
    expect(r.body).toContain('user <!-- -->3');
    expect((await get(`${b.url}/api/ssr-stream/nowhere`)).status).toBe(404);
  });

  it('sends 103 Early Hints learnt from the route\'s last render, before the 200', async () => {
    await get(`${b.url}/users/100`);
    const text = await raw(b.port, '/users/101');
    expect(text.startsWith('HTTP/1.1 103 Early Hints\r\n')).toBe(true);
    const hints = text.slice(0, text.indexOf('\r\n\r\n'));
    expect(hints.toLowerCase()).toContain('link: </assets/app.css>; rel=preload; as=style, </__bext/turbo.js>; rel=modulepreload');
    expect(text.indexOf('HTTP/1.1 200 OK')).toBeGreaterThan(hints.length);
    expect(text).toContain('user <!-- -->101');
    // A route not rendered yet in this build gets no hint.
    const fresh = await raw(b.port, '/slow?ms=1');
    expect(fresh.startsWith('HTTP/1.1 200 OK')).toBe(true);
  });

  it('renders static pages once per build', async () => {
    const a = await get(`${b.url}/static`);
    const c = await get(`${b.url}/static`);
    expect(a.body).toBe(c.body);
    expect(a.headers['surrogate-control']).toMatch(/^max-age=60, stale-while-revalidate=/);
    await until(async () => (await stats(b)).pool.totals.renders > 0);
  });
});

describe('zero-config', () => {
  it('passes through when the served folder has no pages/', async () => {
    const site = write(mkdtempSync(join(tmp(), 'ssr-plain-')), { 'public/index.html': '<h1>plain</h1>' });
    const b = await startBext({ plugins: ['static', 'ssr'], siteDir: site });
    try {
      expect((await get(`${b.url}/`)).body).toBe('<h1>plain</h1>');
      expect((await get(`${b.url}/about`)).status).toBe(404);
      expect((await get(`${b.url}/__bext/island.js`)).status).toBe(200);
      expect(existsSync(join(site, '.bext'))).toBe(false);
    } finally {
      await b.close();
    }
  });

  it('reuses a build, and rebuilds when a source is newer', async () => {
    const site = newSite();
    await buildSite(site);
    const b1 = await startBext({ plugins: ['ssr'], siteDir: site, config: { plugins: { ssr: { workers: 1 } } }, logLevel: 'warn' });
    expect(b1.logs.some((l) => String(l.msg).includes('building'))).toBe(false);
    await b1.close();
    const later = new Date(Date.now() + 5000);
    utimesSync(join(site, 'pages/plain.tsx'), later, later);
    const b2 = await startBext({ plugins: ['ssr'], siteDir: site, config: { plugins: { ssr: { workers: 1 } } } });
    expect(b2.logs.some((l) => l.msg === 'ssr sources changed since the last build; building')).toBe(true);
    await b2.close();
  });
});

describe('the render pool', () => {
  it('queues up to maxQueue and answers 503 with Retry-After beyond it', async () => {
    const b = await startBext({ plugins: ['ssr'], siteDir: newSite(), config: { plugins: { ssr: { workers: 1, concurrency: 1, maxQueue: 2 } } } });
    try {
      const all = await Promise.all(Array.from({ length: 6 }, (_, i) => get(`${b.url}/slow?ms=300&i=${i}`)));
      const ok = all.filter((r) => r.status === 200);
      const busy = all.filter((r) => r.status === 503);
      expect(ok.length).toBe(3);
      expect(busy.length).toBe(3);
      expect(busy[0]!.headers['retry-after']).toBe('1');
      expect(JSON.parse(busy[0]!.body).error).toBe('BEXT_ERR_SSR_OVERLOADED');
    } finally {
      await b.close();
    }
  });

  it('times renders out with 504; a slow loader keeps its worker, a stuck one is replaced', async () => {
    const b = await startBext({ plugins: ['ssr'], siteDir: newSite(), config: { plugins: { ssr: { workers: 1, renderTimeoutMs: 300, stallMs: 300, backoff: { initialMs: 10 } } } } });
    try {
      const slow = await get(`${b.url}/slow?ms=1500`);
      expect(slow.status).toBe(504);
      expect(JSON.parse(slow.body).error).toBe('BEXT_ERR_SSR_TIMEOUT');
      expect((await get(`${b.url}/plain`)).status).toBe(200);
      expect((await stats(b)).pool.totals.crashes).toBe(0);
      const id = (await stats(b)).pool.workers[0].id;
      expect((await get(`${b.url}/spin`)).status).toBe(504);
      await until(async () => (await stats(b)).pool.totals.crashes === 1, 5000, 'the stuck worker replaced');
      await until(async () => (await stats(b)).pool.workers.some((w: { id: number; state: string }) => w.id !== id && w.state === 'ready'), 5000, 'a new worker');
      expect((await get(`${b.url}/plain`)).status).toBe(200);
      expect(b.logs.some((l) => l.msg === 'ssr render worker stopped answering after a timeout; replacing it')).toBe(true);
    } finally {
      await b.close();
    }
  });

  it('a worker killed mid-render fails only its own renders; the pool restarts it with exponential backoff', async () => {
    const b = await startBext({ plugins: ['ssr'], siteDir: newSite(), config: { plugins: { ssr: { workers: 2, backoff: { initialMs: 50, maxMs: 5000 } } } } });
    try {
      const pending = Array.from({ length: 10 }, (_, i) => get(`${b.url}/slow?ms=1500&i=${i}`));
      await until(async () => (await stats(b)).pool.workers.every((w: { inflight: number }) => w.inflight === 5), 5000, '5 renders in flight on each worker');
      const victim = (await stats(b)).pool.workers[0].id;
      expect((await request(`${b.adminUrl}/__bext/ssr/kill?worker=${victim}`, { method: 'POST' })).statusCode).toBe(200);
      const res = await Promise.all(pending);
      const crashed = res.filter((r) => r.status === 500);
      expect(crashed.length).toBe(5);
      expect(JSON.parse(crashed[0]!.body).error).toBe('BEXT_ERR_SSR_CRASHED');
      expect(res.filter((r) => r.status === 200).length).toBe(5);
      await until(async () => (await stats(b)).pool.workers.filter((w: { state: string }) => w.state === 'ready').length === 2, 5000, 'the worker restarted');
      // A page that kills its own worker: 500 for it, the server carries on; crashes in a row back off 50, 100, 200, 400 ms.
      for (let i = 0; i < 3; i++) {
        expect((await get(`${b.url}/crash`)).status).toBe(500);
        await until(async () => (await stats(b)).pool.workers.filter((w: { state: string }) => w.state === 'ready').length === 2, 5000, 'restarted');
      }
      const delays = b.logs.filter((l) => l.msg === 'ssr render worker died').map((l) => l.restartInMs as number);
      expect(delays).toEqual([50, 100, 200, 400]);
      expect((await get(`${b.url}/users/1`)).status).toBe(200);
    } finally {
      await b.close();
    }
  });

  it('rotates workers by request count under load, one at a time, with zero failed requests', async () => {
    const b = await startBext({ plugins: ['ssr'], siteDir: newSite(), config: { plugins: { ssr: { workers: 2, rotation: { maxRequests: 100 } } } } });
    try {
      let next = 0;
      const statuses: number[] = [];
      await Promise.all(Array.from({ length: 32 }, async () => {
        while (next < 1000) {
          const i = next++;
          statuses.push((await get(`${b.url}/users/${i + 1}`)).status);
        }
      }));
      expect(statuses.length).toBe(1000);
      expect(statuses.filter((s) => s !== 200)).toEqual([]);
      const s = await stats(b);
      expect(s.pool.totals.rotations).toBeGreaterThanOrEqual(3);
      expect(s.pool.totals.crashes).toBe(0);
      await until(async () => (await stats(b)).pool.workers.length === 2, 5000, 'retired workers gone');
    } finally {
      await b.close();
    }
  });

  it('hot-swaps to a new build under load (POST /api/build, then /api/ssr/reload) with zero failed requests', async () => {
    const site = newSite('v1');
    const b = await startBext({ plugins: ['ssr'], siteDir: site, config: { plugins: { ssr: { workers: 2 } } } });
    try {
      const seen: { v: string; status: number; start: number }[] = [];
      let next = 0;
      // The load runs until 300 requests after the second swap (at most 4,000 in all).
      let limit = 4000;
      let swapped1 = Infinity;
      let swapped2 = Infinity;
      const load = Promise.all(Array.from({ length: 32 }, async () => {
        while (next < limit) {
          next++;
          const start = performance.now();
          const r = await get(`${b.url}/`);
          seen.push({ v: /<h1 id="v">([^<]*)<\/h1>/.exec(r.body)?.[1] ?? '?', status: r.status, start });
        }
      }));
      await until(() => seen.length >= 300, 20_000, '300 answers');
      writeFileSync(join(site, 'data/version.ts'), 'export const VERSION = "v2";');
      const built = await get(`${b.adminUrl}/api/build`, {}, 'POST');
      swapped1 = performance.now();
      expect(built.status).toBe(200);
      expect(JSON.parse(built.body)).toMatchObject({ ok: true, previous: expect.any(String), routes: expect.arrayContaining(['/', '/users/:id']) });
      const after1 = seen.length;
      await until(() => seen.length >= after1 + 300, 20_000, '300 more answers');
      writeFileSync(join(site, 'data/version.ts'), 'export const VERSION = "v3";');
      await buildSite(site);
      const reloaded = await get(`${b.adminUrl}/api/ssr/reload`, {}, 'POST');
      swapped2 = performance.now();
      expect(reloaded.status).toBe(200);
      limit = Math.min(limit, next + 300);
      await load;
      expect(seen.length).toBe(limit);
      expect(seen.filter((s) => s.status !== 200)).toEqual([]);
      expect(new Set(seen.map((s) => s.v))).toEqual(new Set(['v1', 'v2', 'v3']));
      // Every request sent after a swap completed was rendered by the new build.
      expect(seen.filter((s) => s.start > swapped1 && s.v === 'v1')).toEqual([]);
      expect(seen.filter((s) => s.start > swapped2 && s.v !== 'v3')).toEqual([]);
      await until(async () => (await stats(b)).pool.workers.length === 2, 5000, 'old generation drained');
      // A broken build is refused and the current one keeps serving.
      writeFileSync(join(site, 'pages/index.tsx'), 'export default function Home() { return <h1>; }');
      const bad = await get(`${b.adminUrl}/api/build`, {}, 'POST');
      expect(bad.status).toBe(500);
      expect(JSON.parse(bad.body)).toMatchObject({ error: 'BEXT_ERR_SSR_BUILD', message: expect.stringMatching(/pages\/index\.tsx:\d+:\d+: /) });
      // So is one whose workers die while loading it.
      writeFileSync(join(site, 'pages/index.tsx'), 'process.exit(9);\nexport default function Home() { return <h1>never</h1>; }');
      const dying = await get(`${b.adminUrl}/api/build`, {}, 'POST');
      expect(dying.status).toBe(500);
      expect(JSON.parse(dying.body).message).toContain('could not start its render workers');
      expect((await get(`${b.url}/`)).body).toContain('<h1 id="v">v3</h1>');
      // Admin routes are admin-only on the public listener.
      expect((await get(`${b.url}/api/ssr/reload`, {}, 'POST')).status).toBe(403);
    } finally {
      await b.close();
    }
  }, 60_000);
});

describe('with the cache plugin in front', () => {
  it('stores pages by their route rules: ISR hits, swr islands, no-store pages bypass, tags purge', async () => {
    const b = await startBext({ plugins: ['cache', 'static', 'ssr'], siteDir: newSite(), config: { plugins: { ssr: { workers: 1 } } } });
    try {
      const miss = await get(`${b.url}/users/9`);
      expect(miss.headers['cache-status']).toContain('fwd=miss');
      expect(miss.headers['surrogate-control']).toBeUndefined();
      const hit = await get(`${b.url}/users/9`);
      expect(hit.headers['cache-status']).toMatch(/^bext; hit; ttl=(59|60)$/);
      expect(hit.body).toBe(miss.body);
      await get(`${b.url}/__bext/island/hello?p=eyJ3aG8iOiJ3b3JsZCJ9`);
      const entries = JSON.parse((await get(`${b.adminUrl}/__bext/cache/entries`)).body).entries as { path: string; url: string; freshSeconds: number; swrSeconds: number; tags: string[] }[];
      const user = entries.find((e) => e.url.endsWith('/users/9'))!;
      expect(user).toMatchObject({ freshSeconds: 60, swrSeconds: 604800 });
      expect(user.tags).toEqual(expect.arrayContaining(['page:/users/:id', 'user:9']));
      expect(entries.find((e) => e.url.includes('/__bext/island/hello'))).toMatchObject({ freshSeconds: 3 });
      const plain = await get(`${b.url}/plain`);
      expect(plain.headers['cache-status']).toContain('detail=no-store');
      const renders = (await stats(b)).pool.totals.renders;
      const purge = await request(`${b.adminUrl}/api/invalidate`, { method: 'POST', body: JSON.stringify({ tags: ['user:9'] }), headers: { 'content-type': 'application/json' } });
      expect(purge.statusCode).toBe(200);
      await purge.body.dump();
      expect((await get(`${b.url}/users/9`)).headers['cache-status']).toContain('fwd=miss');
      expect((await stats(b)).pool.totals.renders).toBe(renders + 1);
    } finally {
      await b.close();
    }
  });
});

describe('tenant pages in a sandbox', () => {
  it('renders a tenant\'s React pages in QuickJS next to the trusted SSR app, and contains a tenant page that spins', async () => {
    const tenantSite = write(mkdtempSync(join(tmp(), 'ssr-tenant-')), {
      'pages/layout.tsx': `export default function L({ children }: { children: React.ReactNode }) { return <html lang="en"><head><title>Acme</title></head><body>{children}</body></html>; }`,
      'pages/index.tsx': `export const revalidate = 30;\nexport async function load() { return { items: ['anvil', 'rocket'] }; }\nexport default function H({ data }: { data: { items: string[] } }) { return <ul id="items">{data.items.map((i) => <li key={i}>{i}</li>)}</ul>; }`,
      'pages/p/[slug].tsx': `import { notFound } from 'bext/ssr';\nexport function load({ params }: { params: { slug: string } }) { if (params.slug === 'gone') notFound(); return params; }\nexport default function P({ data }: { data: { slug: string } }) { return <h1>acme {data.slug}</h1>; }`,
      'pages/spin.tsx': `export default function S() { for (;;) {} }`,
    });
    const plugin = await buildSandboxSite(tenantSite, join(mkdtempSync(join(tmp(), 'ssr-tp-')), 'tenant-acme'), { name: 'tenant-acme', sandbox: 'quickjs', timeoutMs: 2000, memoryMb: 48 });
    expect(JSON.parse(readFileSync(join(plugin.dir, 'bext-plugin.json'), 'utf8'))).toMatchObject({ sandbox: 'quickjs', hooks: { onRender: { priority: 80 } } });
    const b = await startBext({
      plugins: ['static', 'ssr', { dir: plugin.dir, scope: 'group', grants: [] }],
      siteDir: newSite(),
      config: { groups: [{ name: 'acme', hosts: ['acme.test'], add: ['tenant-acme'], remove: ['ssr', 'static'] }], plugins: { ssr: { workers: 1 } } },
      quarantineBackoffMs: 60_000,
    });
    try {
      const home = await get(`${b.url}/`, { host: 'acme.test' });
      expect(home.status).toBe(200);
      expect(home.body).toBe('<!DOCTYPE html><html lang="en"><head><title>Acme</title></head><body><ul id="items"><li>anvil</li><li>rocket</li></ul></body></html>');
      expect(home.headers['surrogate-control']).toBe('max-age=30, stale-while-revalidate=604800, stale-if-error=86400');
      expect((await get(`${b.url}/p/x`, { host: 'acme.test' })).body).toContain('<h1>acme <!-- -->x</h1>');
      expect((await get(`${b.url}/p/gone`, { host: 'acme.test' })).status).toBe(404);
      // The trusted app answers every other host; the tenant never reaches it.
      expect((await get(`${b.url}/users/3`)).body).toContain('user <!-- -->3');
      expect((await get(`${b.url}/users/3`, { host: 'acme.test' })).status).toBe(404);
      const [spin, trusted] = await Promise.all([get(`${b.url}/spin`, { host: 'acme.test' }), get(`${b.url}/users/4`)]);
      expect(spin.status).toBe(503);
      expect(trusted.status).toBe(200);
      expect((await get(`${b.url}/p/y`, { host: 'acme.test' })).status).toBe(200);
    } finally {
      await b.close();
    }
  });
});
