/**
 * The tls plugin over real sockets: the local development CA, SNI choice,
 * HTTP/2 and HTTP/1.1 on one port (node, curl, h2load), streaming, SSE and
 * WebSocket through it, mTLS per route group, redirect/HSTS/Alt-Svc, Early
 * Hints, session resumption, on-demand certificates, h2c, graceful shutdown,
 * and testssl.sh finding no weak protocol or cipher.
 */
import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { startBext, type Bext } from '../../sdk/harness.js';
import { plugin, until } from '../../test/helpers.js';
import { LocalCa } from './local-ca.js';
import { freePort, get1, get2, handshake, removeTmpDirs, run, tmpDir } from './testkit.js';

afterAll(() => removeTmpDirs());

const TLS = join(import.meta.dirname);
const wsModule = createRequire(import.meta.url).resolve('ws');
const g = globalThis as unknown as { __tlsRelease?: () => void; __tlsSlowStarted?: boolean };

/** Routes the tests read back: what the request looked like, streams, SSE, a WebSocket, a slow answer. */
const echo = plugin('tls-echo', {
  routes: [{ path: '/echo' }, { path: '/secure/echo' }, { path: '/stream' }, { path: '/sse' }, { path: '/page' }, { path: '/ws' }, { path: '/slow' }],
}, `
import { Readable } from 'node:stream';
import ws from ${JSON.stringify(wsModule)};
const wss = new ws.WebSocketServer({ noServer: true });
export default () => ({
  async onRoute(req) {
    if (req.path === '/stream') return { status: 200, headers: { 'content-type': 'text/plain' }, body: Readable.from(['a', 'b', 'c'].map((x) => Buffer.from(x.repeat(1000)))) };
    if (req.path === '/sse') {
      async function* events() { for (let i = 0; i < 3; i++) yield Buffer.from('data: ' + i + '\\n\\n'); }
      return { status: 200, headers: { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' }, body: events() };
    }
    if (req.path === '/page') return { status: 200, headers: { 'content-type': 'text/html', link: '</app.css>; rel=preload; as=style, </x>; rel=canonical' }, body: '<p>page</p>' };
    if (req.path === '/ws') return { action: 'upgrade', upgrade: (raw, socket, head) => wss.handleUpgrade(raw, socket, head, (c) => { c.on('message', (m) => c.send('echo:' + m)); }) };
    if (req.path === '/slow') {
      globalThis.__tlsSlowStarted = true;
      await new Promise((r) => (globalThis.__tlsRelease = r));
      return { status: 200, body: 'slow done' };
    }
    return { status: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ctx: req.ctx, scheme: req.scheme, httpVersion: req.httpVersion, group: req.group, host: req.host }) };
  },
});
`);

type Status = { listeners: { port: number }[]; h2c: number | null; certificates: { id: string; names: string[]; serial: string; source: string }[] };

/** The plugin's status once its listeners are bound (they bind when the kernel starts serving). */
async function status(b: Bext, ready: (s: Status) => boolean = () => true): Promise<Status> {
  let st: Status | null = null;
  await until(async () => {
    st = (await (await fetch(`${b.adminUrl}/__bext/tls/status`)).json()) as Status;
    return st.listeners.length > 0 && ready(st);
  }, 5000, 'tls listeners bound');
  return st!;
}

async function tlsPort(b: Bext): Promise<number> {
  return (await status(b)).listeners[0]!.port;
}

function tlsConfig(extra: Record<string, unknown>, site: string): Record<string, unknown> {
  return { listeners: [{ port: 0, host: '127.0.0.1' }], storage: { dir: join(site, 'tls') }, ...extra };
}

describe('local development CA', () => {
  it('creates an ECDSA CA on first run, keeps it on disk, and reuses it and the leaf on the next run', async () => {
    const site = tmpDir();
    const cfg = { plugins: { tls: tlsConfig({ selfSigned: { names: ['localhost', 'app.test'] } }, site) } };
    let b = await startBext({ siteDir: site, plugins: [{ dir: TLS }], config: cfg });
    let caPem: string;
    let serial: string;
    try {
      caPem = await (await fetch(`${b.adminUrl}/__bext/tls/ca.pem`)).text();
      expect(readFileSync(join(site, 'tls', 'local-ca', 'ca.pem'), 'utf8')).toBe(caPem);
      const ca = new X509Certificate(caPem);
      expect(ca.ca).toBe(true);
      expect(ca.publicKey.asymmetricKeyType).toBe('ec');
      expect((readFileSync(join(site, 'tls', 'local-ca', 'ca-key.pem')).length)).toBeGreaterThan(0);
      const h = await handshake(await tlsPort(b), { servername: 'app.test', ca: caPem, rejectUnauthorized: true });
      expect(h.authorized).toBe(true);
      expect(h.cert.subjectaltname).toBe('DNS:localhost, DNS:app.test');
      serial = h.cert.serialNumber;
      const r = await get1(await tlsPort(b), '/health', { servername: 'localhost', ca: caPem });
      expect(r.status).toBe(404);
    } finally {
      await b.close();
    }
    b = await startBext({ siteDir: site, plugins: [{ dir: TLS }], config: cfg });
    try {
      expect(await (await fetch(`${b.adminUrl}/__bext/tls/ca.pem`)).text()).toBe(caPem);
      const h = await handshake(await tlsPort(b), { servername: 'localhost', ca: caPem, rejectUnauthorized: true });
      expect(h.cert.serialNumber).toBe(serial);
    } finally {
      await b.close();
    }
  });
});

describe('SNI', () => {
  let site: string;
  let ca: LocalCa;
  beforeAll(async () => {
    site = tmpDir();
    ca = await LocalCa.open(join(site, 'files-ca'), 'files CA');
    for (const [file, names] of [['exact', ['exact.test']], ['wild', ['*.wild.test']], ['default', ['default.test']]] as const) {
      const c = await ca.issue([...names]);
      writeFileSync(join(site, `${file}.pem`), c.certPem);
      writeFileSync(join(site, `${file}-key.pem`), c.keyPem);
    }
  });

  const files = () => [
    { cert: 'exact.pem', key: 'exact-key.pem' },
    { cert: 'wild.pem', key: 'wild-key.pem' },
    { cert: 'default.pem', key: 'default-key.pem' },
  ];

  it('picks the exact name, then the wildcard one label up, then the default', async () => {
    const b = await startBext({ siteDir: site, plugins: [{ dir: TLS }], config: { plugins: { tls: tlsConfig({ certificates: files(), defaultName: 'default.test' }, site) } } });
    try {
      const port = await tlsPort(b);
      const san = async (servername?: string) => (await handshake(port, servername ? { servername } : {})).cert.subjectaltname;
      expect(await san('exact.test')).toBe('DNS:exact.test');
      expect(await san('EXACT.test.')).toBe('DNS:exact.test');
      expect(await san('a.wild.test')).toBe('DNS:*.wild.test');
      // A wildcard covers one label only.
      expect(await san('b.a.wild.test')).toBe('DNS:default.test');
      expect(await san('wild.test')).toBe('DNS:default.test');
      expect(await san('unknown.test')).toBe('DNS:default.test');
      expect(await san()).toBe('DNS:default.test');
      const ok = await handshake(port, { servername: 'a.wild.test', ca: ca.certPem, rejectUnauthorized: true });
      expect(ok.authorized).toBe(true);
    } finally {
      await b.close();
    }
  });

  it('aborts handshakes for unknown names when unknownNames is "reject"', async () => {
    const b = await startBext({ siteDir: site, plugins: [{ dir: TLS }], config: { plugins: { tls: tlsConfig({ certificates: files(), unknownNames: 'reject' }, site) } } });
    try {
      const port = await tlsPort(b);
      expect((await handshake(port, { servername: 'exact.test' })).cert.subjectaltname).toBe('DNS:exact.test');
      await expect(handshake(port, { servername: 'unknown.test' })).rejects.toThrow();
    } finally {
      await b.close();
    }
  });

  it('picks up a replaced certificate file', async () => {
    const dir = tmpDir();
    const c1 = await ca.issue(['reload.test']);
    writeFileSync(join(dir, 'c.pem'), c1.certPem);
    writeFileSync(join(dir, 'k.pem'), c1.keyPem);
    const b = await startBext({ siteDir: dir, plugins: [{ dir: TLS }], config: { plugins: { tls: tlsConfig({ certificates: [{ cert: 'c.pem', key: 'k.pem' }], tls: { reloadIntervalSeconds: 0.05 } }, dir) } } });
    try {
      const port = await tlsPort(b);
      const first = (await handshake(port, { servername: 'reload.test' })).cert.serialNumber;
      const c2 = await ca.issue(['reload.test']);
      writeFileSync(join(dir, 'k.pem'), c2.keyPem);
      writeFileSync(join(dir, 'c.pem'), c2.certPem);
      await until(async () => (await handshake(port, { servername: 'reload.test' })).cert.serialNumber !== first, 5000, 'new certificate served');
      expect((await handshake(port, { servername: 'reload.test' })).cert.serialNumber).toBe(new X509Certificate(c2.certPem).serialNumber);
    } finally {
      await b.close();
    }
  });
});

describe('protocols on one port', () => {
  let b: Bext;
  let port: number;
  let h2cPort: number;
  let caPem: string;
  let httpPort: number;
  beforeAll(async () => {
    const site = tmpDir();
    httpPort = await freePort();
    b = await startBext({
      siteDir: site,
      plugins: [{ dir: TLS }, { dir: echo }],
      config: {
        server: { port: httpPort },
        plugins: {
          tls: tlsConfig({
            selfSigned: { names: ['localhost', 'h.test'] },
            h2c: { port: 0 },
            redirect: { ports: [httpPort], exemptPaths: ['/echo'] },
            hsts: { maxAgeSeconds: 600, includeSubDomains: true },
            http3: { port: 8443 },
            earlyHints: { paths: { '/echo': ['</style.css>; rel=preload; as=style'] }, learn: true },
          }, site),
        },
      },
    });
    const st = await status(b, (x) => x.h2c !== null);
    port = st.listeners[0]!.port;
    h2cPort = st.h2c!;
    caPem = await (await fetch(`${b.adminUrl}/__bext/tls/ca.pem`)).text();
  });
  afterAll(() => b.close());

  it('negotiates h2 by ALPN and falls back to HTTP/1.1, both through the kernel pipeline', async () => {
    const r2 = await get2(port, '/echo', { servername: 'h.test', ca: caPem });
    expect(r2.alpn).toBe('h2');
    expect(r2.status).toBe(200);
    expect(JSON.parse(r2.body)).toMatchObject({ scheme: 'https', httpVersion: '2.0', host: 'h.test' });
    const r1 = await get1(port, '/echo', { servername: 'h.test', ca: caPem });
    expect(JSON.parse(r1.body)).toMatchObject({ scheme: 'https', httpVersion: '1.1' });
    const h = await handshake(port, { servername: 'h.test', ALPNProtocols: ['h2', 'http/1.1'] });
    expect(h.alpn).toBe('h2');
    expect(['TLSv1.3', 'TLSv1.2']).toContain(h.protocol);
  });

  it('serves curl --http2 and h2load', async () => {
    const c = await run('curl', ['-s', '--http2', '--cacert', join(b.kernel.siteDir, 'tls', 'local-ca', 'ca.pem'), '--resolve', `h.test:${port}:127.0.0.1`, '-o', '/dev/null', '-w', '%{http_version} %{http_code}', `https://h.test:${port}/echo`]);
    expect(c.out.trim()).toBe('2 200');
    const l = await run('h2load', ['-n', '200', '-c', '4', '-m', '10', `https://127.0.0.1:${port}/echo`]);
    expect(l.out).toMatch(/Application protocol: h2/);
    expect(l.out).toMatch(/requests: 200 total, 200 started, 200 done, 200 succeeded, 0 failed/);
  });

  it('streams, sends SSE and upgrades WebSockets over TLS', async () => {
    const s2 = await get2(port, '/stream', { servername: 'h.test', ca: caPem });
    expect(s2.body).toBe('a'.repeat(1000) + 'b'.repeat(1000) + 'c'.repeat(1000));
    const sse = await get2(port, '/sse', { servername: 'h.test', ca: caPem });
    expect(sse.headers['content-type']).toBe('text/event-stream');
    expect(sse.body).toBe('data: 0\n\ndata: 1\n\ndata: 2\n\n');
    const s1 = await get1(port, '/stream', { servername: 'h.test', ca: caPem });
    expect(s1.body.length).toBe(3000);
    const ws = new WebSocket(`wss://127.0.0.1:${port}/ws`, { servername: 'h.test', ca: caPem, headers: { host: 'h.test' } } as WebSocket.ClientOptions);
    const msg = await new Promise<string>((resolve, reject) => {
      ws.once('open', () => ws.send('hi'));
      ws.once('message', (m) => resolve(String(m)));
      ws.once('error', reject);
    });
    ws.close();
    expect(msg).toBe('echo:hi');
  });

  it('redirects plain HTTP on the configured ports, except ACME challenges and exempt paths', async () => {
    const r = await new Promise<http.IncomingMessage>((resolve, reject) => http.get({ host: '127.0.0.1', port: httpPort, path: '/a/b?x=1', headers: { host: 'h.test' } }, resolve).on('error', reject));
    r.resume();
    expect(r.statusCode).toBe(308);
    expect(r.headers.location).toBe(`https://h.test:${port}/a/b?x=1`);
    const ch = await fetch(`http://127.0.0.1:${httpPort}/.well-known/acme-challenge/abc`, { redirect: 'manual' });
    expect(ch.status).toBe(404);
    expect(await ch.text()).toBe('no such challenge\n');
    const ex = await fetch(`http://127.0.0.1:${httpPort}/echo`, { redirect: 'manual' });
    expect(ex.status).toBe(200);
    // The admin listener is another port: never redirected.
    expect((await fetch(`${b.adminUrl}/__bext/tls/status`)).status).toBe(200);
  });

  it('adds HSTS and Alt-Svc to HTTPS answers only', async () => {
    const r = await get1(port, '/echo', { servername: 'h.test', ca: caPem });
    expect(r.headers['strict-transport-security']).toBe('max-age=600; includeSubDomains');
    expect(r.headers['alt-svc']).toBe('h3=":8443"; ma=86400');
    const r2 = await get2(port, '/nothing-here', { servername: 'h.test', ca: caPem });
    expect(r2.status).toBe(404);
    expect(r2.headers['alt-svc']).toBe('h3=":8443"; ma=86400');
    const plain = await fetch(`http://127.0.0.1:${httpPort}/echo`);
    expect(plain.headers.get('strict-transport-security')).toBeNull();
    expect(plain.headers.get('alt-svc')).toBeNull();
  });

  it('sends 103 Early Hints before the answer on HTTP/1.1 and HTTP/2, and learns preload links', async () => {
    const r1 = await get1(port, '/echo', { servername: 'h.test', ca: caPem });
    expect(r1.informational).toEqual([{ status: 103, headers: expect.objectContaining({ link: '</style.css>; rel=preload; as=style' }) }]);
    const r2 = await get2(port, '/echo', { servername: 'h.test', ca: caPem });
    expect(r2.informational.map((i) => [i.status, i.headers.link])).toEqual([[103, '</style.css>; rel=preload; as=style']]);
    expect(r2.status).toBe(200);
    // First /page answer teaches its preload link; the second gets it as a hint.
    expect((await get2(port, '/page', { servername: 'h.test', ca: caPem })).informational).toEqual([]);
    const again = await get2(port, '/page', { servername: 'h.test', ca: caPem });
    expect(again.informational.map((i) => i.headers.link)).toEqual(['</app.css>; rel=preload; as=style']);
  });

  it('resumes TLS sessions with tickets', async () => {
    const first = await handshake(port, { servername: 'h.test' });
    expect(first.reused).toBe(false);
    expect(first.session).not.toBeNull();
    const second = await handshake(port, { servername: 'h.test', session: first.session! });
    expect(second.reused).toBe(true);
    const t12 = await handshake(port, { servername: 'h.test', maxVersion: 'TLSv1.2' });
    const r12 = await handshake(port, { servername: 'h.test', maxVersion: 'TLSv1.2', session: t12.session! });
    expect(r12.reused).toBe(true);
  });

  it('speaks h2c with prior knowledge and HTTP/1.1 on the cleartext port', async () => {
    const r2 = await get2(h2cPort, '/echo', { plain: true });
    expect(JSON.parse(r2.body)).toMatchObject({ scheme: 'http', httpVersion: '2.0' });
    const r1 = await fetch(`http://127.0.0.1:${h2cPort}/echo`);
    expect(((await r1.json()) as { httpVersion: string }).httpVersion).toBe('1.1');
  });

  it('counts handshakes by protocol, ALPN and resumption', async () => {
    await handshake(port, { servername: 'h.test', ALPNProtocols: ['h2'] });
    const first = await handshake(port, { servername: 'h.test' });
    await handshake(port, { servername: 'h.test', session: first.session! });
    await fetch(`http://127.0.0.1:${httpPort}/x`, { redirect: 'manual' });
    const text = await b.kernel.metrics.text();
    expect(text).toMatch(/bext_plugin_tls_handshakes_total\{alpn="h2",resumed="no",version="TLSv1.3"\} \d+/);
    expect(text).toMatch(/bext_plugin_tls_handshakes_total\{alpn="http\/1.1",resumed="yes",version="TLSv1.3"\} \d+/);
    expect(text).toMatch(/bext_plugin_tls_redirects_total \d+/);
  });

  it('offers TLS 1.2 and 1.3 only, with no weak cipher (testssl.sh)', async () => {
    const out = join(tmpDir(), 'testssl.json');
    const r = await run('testssl', ['--quiet', '--color', '0', '--warnings', 'off', '--fast', '-p', '-E', '--jsonfile', out, `127.0.0.1:${port}`], 90_000);
    expect(existsSync(out), r.out.slice(-2000)).toBe(true);
    const findings = JSON.parse(readFileSync(out, 'utf8')) as { id: string; severity: string; finding: string }[];
    const by = (id: string) => findings.find((f) => f.id === id)?.finding;
    expect(by('SSLv2')).toMatch(/not offered/);
    expect(by('SSLv3')).toMatch(/not offered/);
    expect(by('TLS1')).toMatch(/not offered/);
    expect(by('TLS1_1')).toMatch(/not offered/);
    expect(by('TLS1_2')).toMatch(/^offered/);
    expect(by('TLS1_3')).toMatch(/^offered/);
    const ciphers = findings.filter((f) => /^cipher-tls/.test(f.id) || /^cipher_x/.test(f.id));
    expect(ciphers.length).toBeGreaterThan(0);
    for (const c of ciphers) expect(c.finding).not.toMatch(/CBC|RC4|3DES|NULL|EXP|SHA1\b|DHE-RSA|AES128-SHA\b/);
    expect(findings.filter((f) => ['HIGH', 'CRITICAL'].includes(f.severity)).map((f) => `${f.id}: ${f.finding}`)).toEqual([]);
  }, 100_000);
});

describe('mTLS', () => {
  let b: Bext;
  let port: number;
  let caPem: string;
  let good: { certPem: string; keyPem: string };
  let stranger: { certPem: string; keyPem: string };
  beforeAll(async () => {
    const site = tmpDir();
    const clients = await LocalCa.open(join(site, 'client-ca'), 'client CA');
    const other = await LocalCa.open(join(site, 'other-ca'), 'other CA');
    good = await clients.issue([], { commonName: 'alice', usage: 'client' });
    stranger = await other.issue([], { commonName: 'mallory', usage: 'client' });
    b = await startBext({
      siteDir: site,
      plugins: [{ dir: TLS }, { dir: echo }],
      config: {
        groups: [{ name: 'secure', paths: ['/secure/**'] }],
        plugins: { tls: tlsConfig({ selfSigned: { names: ['localhost'] }, mtls: { ca: ['client-ca/ca.pem'], groups: { secure: 'required' }, default: 'optional' } }, site) },
      },
    });
    port = await tlsPort(b);
    caPem = await (await fetch(`${b.adminUrl}/__bext/tls/ca.pem`)).text();
  });
  afterAll(() => b.close());

  it('accepts a client certificate from the configured CA and puts the subject in ctx', async () => {
    for (const get of [get1, get2]) {
      const r = await get(port, '/secure/echo', { ca: caPem, cert: good.certPem, key: good.keyPem });
      expect(r.status).toBe(200);
      const body = JSON.parse(r.body) as { ctx: { tlsClient: { cn: string; subject: string; issuer: string } }; group: string };
      expect(body.group).toBe('secure');
      expect(body.ctx.tlsClient.cn).toBe('alice');
      expect(body.ctx.tlsClient.subject).toBe('CN=alice');
      expect(body.ctx.tlsClient.issuer).toContain('CN=client CA');
    }
  });

  it('refuses the required group without a certificate, or with one from another CA', async () => {
    for (const get of [get1, get2]) {
      const none = await get(port, '/secure/echo', { ca: caPem });
      expect(none.status).toBe(403);
      expect(JSON.parse(none.body).error).toBe('BEXT_ERR_TLS_CLIENT_CERT');
      const wrong = await get(port, '/secure/echo', { ca: caPem, cert: stranger.certPem, key: stranger.keyPem });
      expect(wrong.status).toBe(403);
    }
    expect(await b.kernel.metrics.text()).toMatch(/bext_plugin_tls_mtls_refused_total\{group="secure"\} 4/);
  });

  it('lets optional groups through, with the identity only when verified', async () => {
    const anon = JSON.parse((await get1(port, '/echo', { ca: caPem })).body) as { ctx: Record<string, unknown> };
    expect(anon.ctx.tlsClient).toBeUndefined();
    const known = JSON.parse((await get2(port, '/echo', { ca: caPem, cert: good.certPem, key: good.keyPem })).body) as { ctx: { tlsClient: { cn: string } } };
    expect(known.ctx.tlsClient.cn).toBe('alice');
    const strangerBody = JSON.parse((await get1(port, '/echo', { ca: caPem, cert: stranger.certPem, key: stranger.keyPem })).body) as { ctx: Record<string, unknown> };
    expect(strangerBody.ctx.tlsClient).toBeUndefined();
  });
});

describe('on-demand certificates (local CA issuer)', () => {
  let ask: http.Server;
  let askPort: number;
  const asked: string[] = [];
  beforeAll(async () => {
    ask = http.createServer((req, res) => {
      const d = new URL(req.url!, 'http://x').searchParams.get('domain')!;
      asked.push(d);
      res.statusCode = d.endsWith('.approved.test') ? 200 : 403;
      res.end();
    });
    await new Promise<void>((r) => ask.listen(0, '127.0.0.1', r));
    askPort = (ask.address() as { port: number }).port;
  });
  afterAll(() => new Promise<void>((r) => ask.close(() => r())));

  it('issues for names the ask URL or allow-list approves, once per name, and serves the default otherwise', async () => {
    const site = tmpDir();
    const b = await startBext({
      siteDir: site,
      plugins: [{ dir: TLS }],
      config: { plugins: { tls: tlsConfig({ selfSigned: { names: ['fallback.test'] }, onDemand: { ask: `http://127.0.0.1:${askPort}/check`, allow: ['*.allowed.test'] } }, site) } },
    });
    try {
      const port = await tlsPort(b);
      const hs = await Promise.all([1, 2, 3, 4].map(() => handshake(port, { servername: 'a.approved.test' })));
      for (const h of hs) expect(h.cert.subjectaltname).toBe('DNS:a.approved.test');
      expect(asked.filter((d) => d === 'a.approved.test')).toHaveLength(1);
      expect((await handshake(port, { servername: 'x.y.allowed.test' })).cert.subjectaltname).toBe('DNS:x.y.allowed.test');
      expect((await handshake(port, { servername: 'evil.test' })).cert.subjectaltname).toBe('DNS:fallback.test');
      expect(asked).toContain('evil.test');
      const text = await b.kernel.metrics.text();
      expect(text).toMatch(/bext_plugin_tls_certificates_issued_total\{issuer="local",reason="on-demand"\} 2/);
      expect(text).toMatch(/bext_plugin_tls_on_demand_total\{result="denied"\} 1/);
      const st = await status(b);
      expect(st.certificates.filter((c) => c.source === 'on-demand').map((c) => c.id).sort()).toEqual(['a.approved.test', 'x.y.allowed.test']);
    } finally {
      await b.close();
    }
  });

  it('rate-limits new names and caps how many it holds', async () => {
    const site = tmpDir();
    const b = await startBext({
      siteDir: site,
      plugins: [{ dir: TLS }],
      config: { plugins: { tls: tlsConfig({ selfSigned: { names: ['fallback.test'] }, onDemand: { allow: ['*.rl.test'], ratePerMinute: 0.001, burst: 2, maxCertificates: 10 } }, site) } },
    });
    try {
      const port = await tlsPort(b);
      expect((await handshake(port, { servername: 'one.rl.test' })).cert.subjectaltname).toBe('DNS:one.rl.test');
      expect((await handshake(port, { servername: 'two.rl.test' })).cert.subjectaltname).toBe('DNS:two.rl.test');
      expect((await handshake(port, { servername: 'three.rl.test' })).cert.subjectaltname).toBe('DNS:fallback.test');
      // Names already held are not new orders: still served.
      expect((await handshake(port, { servername: 'one.rl.test' })).cert.subjectaltname).toBe('DNS:one.rl.test');
      expect(await b.kernel.metrics.text()).toMatch(/bext_plugin_tls_on_demand_total\{result="rate"\} 1/);
    } finally {
      await b.close();
    }
  });

  it('refuses to start on-demand without an ask URL or allow-list', async () => {
    const site = tmpDir();
    await expect(startBext({ siteDir: site, plugins: [{ dir: TLS }], config: { plugins: { tls: tlsConfig({ selfSigned: {}, onDemand: {} }, site) } } })).rejects.toThrow(/neither "ask" nor "allow"/);
  });
});

describe('failures and neighbours', () => {
  it('staples nothing for a certificate that names no OCSP responder', async () => {
    const site = tmpDir();
    const b = await startBext({ siteDir: site, plugins: [{ dir: TLS }], config: { plugins: { tls: tlsConfig({ selfSigned: { names: ['localhost'] } }, site) } } });
    try {
      const h = await handshake(await tlsPort(b), { servername: 'localhost', requestOCSP: true });
      expect(h.ocsp).toBeNull();
      expect(await b.kernel.metrics.text()).not.toMatch(/bext_plugin_tls_ocsp_responses_total\{result="error"\}/);
    } finally {
      await b.close();
    }
  });

  it('starts with Redis storage unreachable: file certificates serve, /health says degraded', async () => {
    const site = tmpDir();
    const ca = await LocalCa.open(join(site, 'ca'));
    const c = await ca.issue(['file.test']);
    writeFileSync(join(site, 'c.pem'), c.certPem);
    writeFileSync(join(site, 'k.pem'), c.keyPem);
    const dead = await freePort();
    const b = await startBext({
      siteDir: site,
      plugins: ['health', { dir: TLS }],
      config: { plugins: { health: { details: true }, tls: tlsConfig({ certificates: [{ cert: 'c.pem', key: 'k.pem' }], storage: { redisUrl: `redis://127.0.0.1:${dead}`, redisPrefix: 'bext:test:dead:' } }, site) } },
    });
    try {
      expect((await handshake(await tlsPort(b), { servername: 'file.test' })).cert.subjectaltname).toBe('DNS:file.test');
      const h = (await (await fetch(`${b.url}/health`)).json()) as { status: string; plugins: { name: string; state: string; detail?: string }[] };
      expect(h.status).toBe('degraded');
      const t = h.plugins.find((p) => p.name === 'tls')!;
      expect(t.state).toBe('degraded');
      expect(t.detail).toMatch(/certificate storage \(Redis\) unreachable/);
    } finally {
      await b.close();
    }
  });

  it('binds its port once the kernel serves, and keeps trying while another process holds it', async () => {
    const site = tmpDir();
    const port = await freePort();
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(port, '127.0.0.1', r));
    const b = await startBext({
      siteDir: site,
      plugins: ['health', { dir: TLS }],
      config: { plugins: { health: { details: true }, tls: { listeners: [{ port, host: '127.0.0.1' }], storage: { dir: join(site, 'tls') }, selfSigned: { names: ['localhost'] } } } },
    });
    try {
      await until(async () => {
        const h = (await (await fetch(`${b.url}/health`)).json()) as { plugins: { name: string; detail?: string }[] };
        return /cannot listen: EADDRINUSE/.test(h.plugins.find((p) => p.name === 'tls')?.detail ?? '');
      }, 5000, 'degraded for the held port');
      await new Promise<void>((r) => blocker.close(() => r()));
      expect((await status(b)).listeners[0]!.port).toBe(port);
      expect((await handshake(port, { servername: 'localhost' })).cert.subjectaltname).toBe('DNS:localhost');
      await until(async () => ((await (await fetch(`${b.url}/health`)).json()) as { status: string }).status === 'ok', 5000, 'healthy again');
    } finally {
      await b.close();
    }
  });

  it('carries the proxy plugin over HTTP/2: streamed answers and request bodies', async () => {
    const upstream = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'text/plain', 'x-up-method': req.method });
        res.write(`method=${req.method} `);
        setImmediate(() => res.end(`body=${body} path=${req.url}`));
      });
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    const site = tmpDir();
    const b = await startBext({
      siteDir: site,
      plugins: [{ dir: TLS }, 'proxy'],
      config: { plugins: { tls: tlsConfig({ selfSigned: { names: ['localhost'] } }, site), proxy: { upstreams: { up: { members: [`http://127.0.0.1:${(upstream.address() as { port: number }).port}`] } }, routes: [{ upstream: 'up' }] } } },
    });
    const session = http2.connect(`https://127.0.0.1:${await tlsPort(b)}`, { servername: 'localhost', rejectUnauthorized: false });
    try {
      const get = await get2(0, '/a?b=1', { session });
      expect(get.status).toBe(200);
      expect(get.body).toBe('method=GET body= path=/a?b=1');
      const post = await new Promise<string>((resolve, reject) => {
        const st = session.request({ ':method': 'POST', ':path': '/p', 'content-type': 'text/plain' });
        let d = '';
        st.setEncoding('utf8');
        st.on('data', (x) => (d += x));
        st.on('end', () => resolve(d));
        st.on('error', reject);
        st.end('hello over h2');
      });
      expect(post).toBe('method=POST body=hello over h2 path=/p');
    } finally {
      session.close();
      await b.close();
      await new Promise<void>((r) => upstream.close(() => r()));
    }
  });
});

describe('shutdown', () => {
  it('sends GOAWAY to HTTP/2 sessions and lets their streams in flight finish', async () => {
    const site = tmpDir();
    const b = await startBext({ siteDir: site, plugins: [{ dir: TLS }, { dir: echo }], config: { plugins: { tls: tlsConfig({ selfSigned: { names: ['localhost'] } }, site) } } });
    const port = await tlsPort(b);
    const session = http2.connect(`https://127.0.0.1:${port}`, { servername: 'localhost', rejectUnauthorized: false });
    let goaway = false;
    session.on('goaway', () => (goaway = true));
    session.on('error', () => undefined);
    g.__tlsSlowStarted = false;
    const slow = get2(port, '/slow', { session });
    await until(() => g.__tlsSlowStarted === true, 5000, 'slow request started');
    const closing = b.close();
    await until(() => goaway, 5000, 'GOAWAY');
    g.__tlsRelease!();
    const r = await slow;
    expect(r.status).toBe(200);
    expect(r.body).toBe('slow done');
    await closing;
    session.destroy();
    await expect(handshake(port, { servername: 'localhost' })).rejects.toThrow();
  });
});

describe('config checks', () => {
  it('refuses wildcard names for ACME with the fix in the message', async () => {
    const site = tmpDir();
    await expect(startBext({
      siteDir: site,
      plugins: [{ dir: TLS }],
      config: { plugins: { tls: tlsConfig({ acme: { directoryUrl: 'https://127.0.0.1:1/dir', termsOfServiceAgreed: true, names: ['*.example.com'] } }, site) } },
    })).rejects.toThrow(/DNS-01/);
  });

  it('lets TLS 1.0 and 1.1 clients fail and counts the failures', async () => {
    const site = tmpDir();
    const b = await startBext({ siteDir: site, plugins: [{ dir: TLS }], config: { plugins: { tls: tlsConfig({ selfSigned: { names: ['localhost'] } }, site) } } });
    try {
      const port = await tlsPort(b);
      await expect(handshake(port, { servername: 'localhost', minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT:@SECLEVEL=0' })).rejects.toThrow();
      await until(async () => /bext_plugin_tls_handshake_errors_total\{code="[A-Z_]+"\} [1-9]/.test(await b.kernel.metrics.text()), 5000, 'error counted');
    } finally {
      await b.close();
    }
  });
});
