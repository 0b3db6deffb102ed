/**
 * ACME against a real Pebble (Debian package `pebble`, with
 * pebble-challtestsrv answering DNS with 127.0.0.1): issuance over HTTP-01,
 * renewal on request and when due at start, revocation, on-demand ordering,
 * OCSP stapling from an OpenSSL-signed responder, and two instances sharing
 * Redis that order one certificate once. ACME Renewal Information, which
 * this Pebble predates, is checked against a small directory that serves it.
 */
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { until } from '../../test/helpers.js';
import { AcmeIssuer, Challenges } from './acme.js';
import { certInfo } from './certs.js';
import { bytes, children, readTlv } from './der.js';
import { LocalCa } from './local-ca.js';
import { Manager, certKey } from './manager.js';
import { DiskStorage } from './storage.js';
import { freePort, handshake, removeTmpDirs, run, startPebble, tmpDir, type Pebble } from './testkit.js';

afterAll(() => removeTmpDirs());

const TLS = join(import.meta.dirname);
const REDIS = 'redis://127.0.0.1:6379';

let pebble: Pebble;
let httpPort: number;
let ocsp: http.Server;
const revokedSerials = new Set<string>();
let ocspQueries = 0;
let work: string;

/** An OCSP responder: `openssl ocsp` signs each answer with Pebble's intermediate; serials in `revokedSerials` are revoked. */
async function startOcsp(port: number): Promise<http.Server> {
  const dir = join(work, 'ocsp');
  mkdirSync(dir, { recursive: true });
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', async () => {
      const n = ++ocspQueries;
      const der = Buffer.concat(chunks);
      // OCSPRequest → TBSRequest → requestList → Request → CertID → serialNumber
      let t = readTlv(der, 0);
      for (let i = 0; i < 4; i++) t = children(der, t)[0]!;
      const serial = bytes(der, children(der, t)[3]!).toString('hex').toUpperCase().replace(/^00(?=[89A-F])/, '');
      if (!existsSync(join(dir, 'inter-key.pem'))) {
        const inter = await pebble.intermediate();
        writeFileSync(join(dir, 'inter.pem'), inter.cert);
        writeFileSync(join(dir, 'inter-key.pem'), inter.key);
      }
      const line = revokedSerials.has(serial) ? `R\t491231235959Z\t250101000000Z\t${serial}\tunknown\t/CN=x\n` : `V\t491231235959Z\t\t${serial}\tunknown\t/CN=x\n`;
      // Files per query: prefetches of several certificates arrive together.
      writeFileSync(join(dir, `index-${n}.txt`), line);
      writeFileSync(join(dir, `req-${n}.der`), der);
      const r = await run('openssl', ['ocsp', '-index', join(dir, `index-${n}.txt`), '-CA', join(dir, 'inter.pem'), '-rsigner', join(dir, 'inter.pem'), '-rkey', join(dir, 'inter-key.pem'), '-reqin', join(dir, `req-${n}.der`), '-respout', join(dir, `resp-${n}.der`), '-ndays', '1']);
      if (r.code !== 0) {
        res.statusCode = 500;
        return res.end(r.out);
      }
      res.setHeader('content-type', 'application/ocsp-response');
      res.end(readFileSync(join(dir, `resp-${n}.der`)));
    });
  });
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  return server;
}

beforeAll(async () => {
  work = tmpDir('bext-acme-');
  httpPort = await freePort();
  const ocspPort = await freePort();
  pebble = await startPebble({ httpPort, ocspResponderUrl: `http://127.0.0.1:${ocspPort}/` });
  ocsp = await startOcsp(ocspPort);
});

afterAll(async () => {
  await new Promise<void>((r) => ocsp.close(() => r()));
  await pebble.stop();
});

interface Status {
  listeners: { port: number }[];
  certificates: { id: string; names: string[]; serial: string; issuer: string; source: string; ocsp: { status: string } | null }[];
  pending: { id: string; lastError: string | null }[];
}

/** The plugin's status once its listeners are bound (they bind when the kernel starts serving). */
async function status(b: Bext): Promise<Status> {
  let st: Status | null = null;
  await until(async () => {
    st = (await (await fetch(`${b.adminUrl}/__bext/tls/status`)).json()) as Status;
    return st.listeners.length > 0;
  }, 5000, 'tls listeners bound');
  return st!;
}

async function waitCert(b: Bext, id: string, not?: string): Promise<Status['certificates'][number]> {
  let found: Status['certificates'][number] | undefined;
  await until(async () => {
    const st = await status(b);
    const p = st.pending.find((x) => x.id === id);
    if (p?.lastError) throw new Error(`${id}: ${p.lastError}`);
    found = st.certificates.find((c) => c.id === id && c.serial !== not);
    return !!found;
  }, 20_000, `certificate ${id}`);
  return found!;
}

function acme(names: (string | string[])[], extra: Record<string, unknown> = {}) {
  return { directoryUrl: pebble.directoryUrl, caFile: pebble.caFile, termsOfServiceAgreed: true, email: 'ops@example.test', names, pollIntervalMs: 50, ...extra };
}

async function start(site: string, tls: Record<string, unknown>, port = httpPort): Promise<Bext> {
  return startBext({ siteDir: site, plugins: [{ dir: TLS }], config: { server: { port }, plugins: { tls: { listeners: [{ port: 0, host: '127.0.0.1' }], storage: { dir: join(site, 'tls') }, ...tls } } } });
}

function metricSum(text: string, name: string): number {
  let n = 0;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\d+)`, 'gm'))) n += Number(m[1]);
  return n;
}

describe.sequential('ACME with Pebble', () => {
  const site = tmpDir();
  let b: Bext;
  let port: number;
  afterAll(async () => b?.close());

  it('issues certificates end to end over HTTP-01 and serves them by SNI with their chain', async () => {
    b = await start(site, { acme: acme([['site.test', 'www.site.test'], 'other.test'], { profile: 'shortlived' }) });
    port = (await status(b)).listeners[0]!.port;
    const site1 = await waitCert(b, 'site.test');
    await waitCert(b, 'other.test');
    expect(site1.issuer).toMatch(/Pebble Intermediate CA/);
    const root = await pebble.root();
    for (const name of ['site.test', 'www.site.test']) {
      const h = await handshake(port, { servername: name, ca: root, rejectUnauthorized: true });
      expect(h.authorized).toBe(true);
      expect(h.cert.subjectaltname).toBe('DNS:site.test, DNS:www.site.test');
    }
    expect((await handshake(port, { servername: 'other.test', ca: root, rejectUnauthorized: true })).cert.subjectaltname).toBe('DNS:other.test');
    expect(existsSync(join(site, 'tls', 'certs', 'site.test.json'))).toBe(true);
    const text = await b.kernel.metrics.text();
    expect(text).toMatch(/bext_plugin_tls_acme_orders_total\{result="valid"\} 2/);
    // Pebble 2.4 lists no profiles: the order goes out without one, and says so.
    expect(b.logs.some((l) => l.msg === 'acme profile is not offered by the CA; ordering its default')).toBe(true);
  });

  it('staples an OCSP response signed for the certificate', async () => {
    const h = await handshake(port, { servername: 'site.test', requestOCSP: true });
    expect(h.ocsp).not.toBeNull();
    const dir = join(work, 'verify');
    mkdirSync(dir, { recursive: true });
    const chain = JSON.parse(readFileSync(join(site, 'tls', 'certs', 'site.test.json'), 'utf8')) as { certPem: string };
    const [leaf, inter] = chain.certPem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)!;
    writeFileSync(join(dir, 'leaf.pem'), leaf!);
    writeFileSync(join(dir, 'inter.pem'), inter!);
    writeFileSync(join(dir, 'root.pem'), await pebble.root());
    writeFileSync(join(dir, 'resp.der'), h.ocsp!);
    const v = await run('openssl', ['ocsp', '-respin', join(dir, 'resp.der'), '-issuer', join(dir, 'inter.pem'), '-cert', join(dir, 'leaf.pem'), '-CAfile', join(dir, 'root.pem'), '-verify_other', join(dir, 'inter.pem')]);
    expect(v.out).toMatch(/Response verify OK/);
    expect(v.out).toMatch(/leaf\.pem: good/);
    const st = await status(b);
    expect(st.certificates.find((c) => c.id === 'site.test')!.ocsp?.status).toBe('good');
    // Answered from the cache: no query per handshake.
    const before = ocspQueries;
    await handshake(port, { servername: 'site.test', requestOCSP: true });
    expect(ocspQueries).toBe(before);
  });

  it('renews on request, serving the new certificate', async () => {
    const old = (await status(b)).certificates.find((c) => c.id === 'site.test')!.serial;
    const r = await fetch(`${b.adminUrl}/__bext/tls/renew`, { method: 'POST', body: JSON.stringify({ id: 'site.test' }) });
    expect(r.status).toBe(200);
    const body = (await r.json()) as { renewed: { id: string; previous: string; serial: string }[] };
    expect(body.renewed[0]!.previous).toBe(old);
    expect(body.renewed[0]!.serial).not.toBe(old);
    expect((await handshake(port, { servername: 'site.test' })).cert.serialNumber).toBe(body.renewed[0]!.serial);
  });

  it('revokes at the CA and replaces the certificate', async () => {
    const old = (await status(b)).certificates.find((c) => c.id === 'other.test')!.serial;
    expect(await pebble.certStatus(old)).toBe('Valid');
    const r = await fetch(`${b.adminUrl}/__bext/tls/revoke`, { method: 'POST', body: JSON.stringify({ id: 'other.test', reason: 4 }) });
    expect(r.status).toBe(200);
    const body = (await r.json()) as { revoked: string; replacement: string };
    expect(body.revoked).toBe(old);
    expect(await pebble.certStatus(old)).toBe('Revoked');
    expect(body.replacement).not.toBe(old);
    expect(await pebble.certStatus(body.replacement)).toBe('Valid');
    expect((await handshake(port, { servername: 'other.test' })).cert.serialNumber).toBe(body.replacement);
    const bad = await fetch(`${b.adminUrl}/__bext/tls/revoke`, { method: 'POST', body: JSON.stringify({ id: 'other.test', reason: 2 }) });
    expect(bad.status).toBe(400);
  });

  it('renews at start a stored certificate that is due, and replaces one OCSP reports revoked', async () => {
    await b.close();
    const ca = await LocalCa.open(join(work, 'old-ca'));
    const due = await ca.issue(['other.test'], { days: 10, notBefore: new Date(Date.now() - 9 * 86400_000) });
    writeFileSync(join(site, 'tls', 'certs', 'other.test.json'), JSON.stringify({ id: 'other.test', names: ['other.test'], issuer: 'acme', certPem: due.certPem, keyPem: due.keyPem, issuedAt: new Date().toISOString() }));
    const siteSerial = certInfo((JSON.parse(readFileSync(join(site, 'tls', 'certs', 'site.test.json'), 'utf8')) as { certPem: string }).certPem).serial;
    revokedSerials.add(siteSerial);
    b = await start(site, { acme: acme([['site.test', 'www.site.test'], 'other.test']) });
    port = (await status(b)).listeners[0]!.port;
    const other = await waitCert(b, 'other.test', new X509Certificate(due.certPem).serialNumber);
    expect(other.issuer).toMatch(/Pebble/);
    const site2 = await waitCert(b, 'site.test', siteSerial);
    expect(site2.serial).not.toBe(siteSerial);
    expect((await handshake(port, { servername: 'site.test' })).cert.serialNumber).toBe(site2.serial);
    const text = await b.kernel.metrics.text();
    expect(text).toMatch(/bext_plugin_tls_certificates_issued_total\{issuer="acme",reason="renewal"\} 1/);
    expect(text).toMatch(/bext_plugin_tls_certificates_issued_total\{issuer="acme",reason="revoked"\} 1/);
  });

  it('orders on demand at the first handshake for an approved name only', async () => {
    await b.close();
    b = await start(site, { acme: acme([['site.test', 'www.site.test']]), onDemand: { allow: ['*.od.test'] } });
    port = (await status(b)).listeners[0]!.port;
    await waitCert(b, 'site.test');
    const h = await handshake(port, { servername: 'shop.od.test', ca: await pebble.root(), rejectUnauthorized: true });
    expect(h.cert.subjectaltname).toBe('DNS:shop.od.test');
    const denied = await handshake(port, { servername: 'evil.test' });
    expect(denied.cert.subjectaltname).toBe('DNS:site.test, DNS:www.site.test');
    const text = await b.kernel.metrics.text();
    expect(text).toMatch(/bext_plugin_tls_acme_orders_total\{result="valid"\} 1/);
    expect(text).toMatch(/bext_plugin_tls_on_demand_total\{result="issued"\} 1/);
    expect(text).toMatch(/bext_plugin_tls_on_demand_total\{result="denied"\} 1/);
    // Revoked without replacement: no longer managed; the next handshake orders it on demand again.
    const r = await fetch(`${b.adminUrl}/__bext/tls/revoke`, { method: 'POST', body: JSON.stringify({ id: 'shop.od.test', replace: false }) });
    expect(r.status).toBe(200);
    const { revoked } = (await r.json()) as { revoked: string };
    expect(await pebble.certStatus(revoked)).toBe('Revoked');
    expect((await status(b)).certificates.map((c) => c.id)).toEqual(['site.test']);
    const again = await handshake(port, { servername: 'shop.od.test' });
    expect(again.cert.subjectaltname).toBe('DNS:shop.od.test');
    expect(again.cert.serialNumber).not.toBe(revoked);
    await b.close();
  });
});

describe('two instances sharing Redis', () => {
  const prefix = `bext:test:tls:${process.pid}:${Date.now()}:`;
  const redis = new Redis(REDIS);
  afterAll(async () => {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
      cursor = next;
      if (keys.length) await redis.del(...keys);
    } while (cursor !== '0');
    redis.disconnect();
  });

  it('orders one certificate once; the instance Pebble validates against answers the other\'s challenge', async () => {
    const storage = { redisUrl: REDIS, redisPrefix: prefix };
    // Pebble validates on httpPort, where only this instance listens: it has no names of its own.
    const front = await start(tmpDir(), { storage });
    const a = await Promise.all([0, 0].map(async () => start(tmpDir(), { storage, acme: acme(['shared.test']) }, 0)));
    try {
      const certs = await Promise.all(a.map((x) => waitCert(x, 'shared.test')));
      expect(certs[0]!.serial).toBe(certs[1]!.serial);
      let orders = 0;
      let issued = 0;
      for (const x of [front, ...a]) {
        const text = await x.kernel.metrics.text();
        orders += metricSum(text, 'bext_plugin_tls_acme_orders_total');
        issued += metricSum(text, 'bext_plugin_tls_certificates_issued_total');
      }
      expect(orders).toBe(1);
      expect(issued).toBe(1);
      // The challenge answer came from the front instance, read from Redis.
      expect(await front.kernel.metrics.text()).toMatch(/bext_hook_calls_total\{plugin="tls",sandbox="trusted",hook="onRoute"\} [1-9]/);
      for (const x of a) {
        const p = (await status(x)).listeners[0]!.port;
        expect((await handshake(p, { servername: 'shared.test' })).cert.serialNumber).toBe(certs[0]!.serial);
      }
      // One account for the directory, shared too.
      expect(await redis.keys(`${prefix}accounts/*`)).toHaveLength(1);
      // A later instance loads it without ordering.
      const late = await start(tmpDir(), { storage, acme: acme(['shared.test']) }, 0);
      try {
        expect((await waitCert(late, 'shared.test')).serial).toBe(certs[0]!.serial);
        expect(metricSum(await late.kernel.metrics.text(), 'bext_plugin_tls_acme_orders_total')).toBe(0);
      } finally {
        await late.close();
      }
      // A renewal by one instance reaches the other through Redis.
      const r = await fetch(`${a[0]!.adminUrl}/__bext/tls/renew?id=shared.test`, { method: 'POST' });
      const renewed = ((await r.json()) as { renewed: { serial: string }[] }).renewed[0]!.serial;
      const p1 = (await status(a[1]!)).listeners[0]!.port;
      await until(async () => (await handshake(p1, { servername: 'shared.test' })).cert.serialNumber === renewed, 10_000, 'renewed certificate on the other instance');
    } finally {
      await Promise.all([front, ...a].map((x) => x.close()));
    }
  });
});

describe('ACME Renewal Information', () => {
  it('renews inside the window the CA suggests, asking with the RFC 9773 certificate id', async () => {
    const asked: string[] = [];
    let window = { start: new Date(Date.now() + 86400_000).toISOString(), end: new Date(Date.now() + 2 * 86400_000).toISOString() };
    const ari = http.createServer((req, res) => {
      const base = `http://127.0.0.1:${(ari.address() as { port: number }).port}`;
      res.setHeader('content-type', 'application/json');
      if (req.url === '/dir') return res.end(JSON.stringify({ renewalInfo: `${base}/renewal-info` }));
      asked.push(req.url!.slice('/renewal-info/'.length));
      res.setHeader('retry-after', '21600');
      res.end(JSON.stringify({ suggestedWindow: window }));
    });
    await new Promise<void>((r) => ari.listen(0, '127.0.0.1', r));
    const dir = tmpDir();
    const storage = new DiskStorage(dir);
    const ca = await LocalCa.open(join(dir, 'ca'));
    const acmeIssuer = new AcmeIssuer({
      cfg: { directoryUrl: `http://127.0.0.1:${(ari.address() as { port: number }).port}/dir`, email: null, termsOfServiceAgreed: true, names: [], keyType: 'ecdsa-p256', profile: null, caFile: null, eab: null, pollIntervalMs: 50 },
      storage, challenges: new Challenges(storage), log: () => undefined, onOrder: () => undefined,
    });
    let issued = 0;
    const issuer = { kind: 'acme' as const, issue: async (names: string[]) => (issued++, ca.issue(names, { days: 90 })), renewalWindow: (i: Parameters<AcmeIssuer['renewalWindow']>[0]) => acmeIssuer.renewalWindow(i) };
    const served: string[] = [];
    const m = new Manager({
      storage,
      renewal: { ratio: 0.667, jitterRatio: 0.02, ari: true, retryMinSeconds: 1, retryMaxSeconds: 2, checkIntervalSeconds: 3600 },
      onCert: (x) => served.push(x.info!.serial), onRemove: () => undefined, log: () => undefined, metric: () => undefined, onHealth: () => undefined,
    });
    try {
      const c = await m.add('ari.test', ['ari.test'], issuer);
      expect(issued).toBe(1);
      await m.tick();
      expect(asked).toEqual([c.info!.ariId]);
      expect(c.info!.ariId).toMatch(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
      expect(c.renewAt).toBeGreaterThanOrEqual(Date.parse(window.start));
      expect(c.renewAt).toBeLessThanOrEqual(Date.parse(window.end));
      expect(issued).toBe(1);
      // The CA pulls the window into the past (say, a mass revocation): renew now.
      window = { start: new Date(Date.now() - 7200_000).toISOString(), end: new Date(Date.now() - 3600_000).toISOString() };
      c.nextAriCheck = 0;
      await m.tick();
      expect(issued).toBe(2);
      expect(served).toHaveLength(2);
      expect(JSON.parse((await storage.get(certKey('ari.test')))!).certPem).toContain('BEGIN CERTIFICATE');
    } finally {
      m.close();
      await new Promise<void>((r) => ari.close(() => r()));
    }
  });
});

