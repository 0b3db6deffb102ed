/**
 * The TLS plugin: HTTPS (HTTP/2 and HTTP/1.1 on one port) through the
 * kernel's listener seam, with certificates chosen per SNI name from files,
 * ACME, on-demand ACME or a local development CA; client certificates per
 * route group; OCSP stapling; and the HTTP-side options that go with HTTPS
 * (redirect, HSTS, Early Hints, Alt-Svc).
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp, readFileSync, statSync } from 'node:fs';
import type { Http2ServerRequest } from 'node:http2';
import { isIP } from 'node:net';
import { isAbsolute, join, resolve } from 'node:path';
import type { SecureContext, SecureContextOptions, TLSSocket } from 'node:tls';
import {
  BextError, definePlugin, globToRegExp,
  type Headers, type RequestDecision, type ResponseData, type TrustedRequest,
} from '../../plugin-api/index.js';
import { AcmeIssuer, Challenges, type Issuer } from './acme.js';
import { CertStore, ECDH_CURVES, MODERN_CIPHERS, certInfo, normalName, shortHash, type CertEntry } from './certs.js';
import { acmeGroups, checkConfig, type TlsConfig } from './config.js';
import { Listeners } from './listener.js';
import { LocalCa } from './local-ca.js';
import { Manager, certKey, type Managed } from './manager.js';
import { OcspStapler } from './ocsp.js';
import { OnDemandPolicy } from './ondemand.js';
import { DiskStorage, RedisStorage, type Storage } from './storage.js';

/** What mTLS puts in `req.ctx[mtls.ctxKey]` for a verified client certificate. */
export interface ClientIdentity {
  /** Subject as `CN=alice, O=Example` (RFC 4514 order is not promised). */
  subject: string;
  /** Common name of the subject, when it has one. */
  cn: string | null;
  issuer: string;
  serial: string;
  fingerprint256: string;
  /** subjectAltName as Node prints it (`DNS:a, email:b`), or null. */
  san: string | null;
  notAfter: string;
}

const CHALLENGE_PREFIX = '/.well-known/acme-challenge/';
const REVOCATION_REASONS = new Set([0, 1, 3, 4, 5]);

function dn(o: Record<string, string | string[]> | undefined): string {
  if (!o) return '';
  return Object.entries(o).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : v}`).join(', ');
}

function json(status: number, body: unknown): ResponseData {
  return { status, headers: { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' }, body: JSON.stringify(body) };
}

function errorJson(e: BextError): ResponseData {
  return json(e.status, e.toJSON());
}

export default definePlugin(async (host) => {
  const cfg = host.config<TlsConfig>();
  checkConfig(cfg);
  const kernel = host.kernel;
  if (!kernel) throw new BextError('BEXT_ERR_PLUGIN_LOAD', 'the tls plugin needs kernel services', { hint: 'load it as a trusted plugin (sandbox: "trusted")' });
  const log = (level: 'info' | 'warn' | 'error', msg: string, f?: Record<string, unknown>) => host.log(level, msg, f);
  const metric = (name: string, v: number, labels?: Record<string, string>, kind: 'counter' | 'gauge' = 'counter') => host.metric(name, v, labels, kind);
  const path = (p: string) => (isAbsolute(p) ? p : resolve(kernel.siteDir, p));

  let manager: Manager | null = null;
  const policy = cfg.onDemand ? new OnDemandPolicy(cfg.onDemand, log) : null;

  // Resolves once the kernel serves HTTP: ACME orders wait for it, since HTTP-01 is answered there.
  let markReady!: () => void;
  const kernelReady = new Promise<void>((r) => (markReady = r));

  // ---------------------------------------------------------------- health
  const problems = new Map<string, string>();
  const health = () => {
    const managed = manager?.unhealthy();
    const all = [...problems.values(), ...(managed ? [managed] : [])];
    kernel.setDegraded(all.length ? all.join('; ') : null);
  };

  // --------------------------------------------------------------- storage
  let storage: Storage;
  if (cfg.storage.redisUrl) {
    const rs = new RedisStorage(cfg.storage.redisUrl, cfg.storage.redisPrefix, (up, detail) => {
      if (up) problems.delete('redis');
      else problems.set('redis', `certificate storage (Redis) unreachable: ${detail}`);
      log(up ? 'info' : 'warn', up ? 'certificate storage reachable again' : 'certificate storage unreachable', { detail });
      health();
    });
    try {
      await rs.ready();
    } catch (e) {
      // Served certificates stay in memory; ordering waits for Redis (with backoff).
      problems.set('redis', `certificate storage (Redis) unreachable: ${(e as Error).message}`);
      log('warn', 'certificate storage unreachable at start', { error: (e as Error).message });
    }
    storage = rs;
  } else {
    storage = new DiskStorage(path(cfg.storage.dir));
  }

  // ------------------------------------------------------ secure contexts
  const clientCa = cfg.mtls ? cfg.mtls.ca.map((p) => readFileSync(path(p), 'utf8')) : undefined;
  const base: SecureContextOptions = {
    minVersion: cfg.tls.minVersion,
    ciphers: MODERN_CIPHERS,
    ecdhCurve: ECDH_CURVES,
    honorCipherOrder: true,
    // One id for every context, so resumption survives the switch to the SNI context.
    sessionIdContext: shortHash('bext-tls').slice(0, 32),
    sessionTimeout: cfg.tls.sessionTimeoutSeconds,
    ...(clientCa ? { ca: clientCa } : {}),
  };
  const store = new CertStore(base, cfg.defaultName ? normalName(cfg.defaultName) : null);

  // ------------------------------------------------------ file certificates
  const files = cfg.certificates.map((c) => ({ ...c, cert: path(c.cert), key: path(c.key), mtime: 0 }));
  const loadFile = (f: (typeof files)[number]) => {
    const pem = readFileSync(f.cert, 'utf8');
    const info = certInfo(pem);
    f.mtime = statSync(f.cert).mtimeMs + statSync(f.key).mtimeMs;
    const names = (f.names ?? info.names).map(normalName);
    const entry: CertEntry = {
      id: `file:${f.cert}`,
      source: 'file',
      names,
      info,
      // The key is read at the first handshake that needs it.
      load: async () => ({ cert: await fsp.readFile(f.cert, 'utf8'), key: await fsp.readFile(f.key, 'utf8') }),
    };
    store.set(entry);
  };
  for (const f of files) {
    try {
      loadFile(f);
    } catch (e) {
      throw new BextError('BEXT_ERR_CONFIG_INVALID', `bext.config.json: $.plugins.tls.certificates: ${f.cert}: ${(e as Error).message}`, { hint: 'point "cert" at a PEM certificate chain and "key" at its private key' });
    }
  }

  // ----------------------------------------------------------------- OCSP
  const stapler = cfg.ocsp.staple
    ? new OcspStapler({
        timeoutMs: cfg.ocsp.timeoutMs,
        onResult: (r, detail) => {
          metric('ocsp_responses_total', 1, { result: r });
          if (r === 'error') log('warn', 'OCSP fetch failed; no staple until it succeeds', { error: detail });
        },
        onRevoked: (leaf) => {
          const serial = certInfo(`-----BEGIN CERTIFICATE-----\n${leaf.toString('base64')}\n-----END CERTIFICATE-----`).serial;
          log('error', 'OCSP reports a served certificate revoked; replacing it', { serial });
          void kernelReady.then(() => manager?.replaceRevoked(serial));
        },
      })
    : null;
  const prefetchOcsp = (e: CertEntry) => {
    if (stapler && e.info?.issuerDer) stapler.prefetch(e.info.leafDer, e.info.issuerDer).catch(() => undefined);
  };

  // ------------------------------------------------------------ issuers
  // Created on first use (first run writes it to disk), once.
  let localCaP: Promise<LocalCa> | null = null;
  const localCa = () => (localCaP ??= LocalCa.open(path(cfg.selfSigned!.caDir ?? join(cfg.storage.dir, 'local-ca'))));
  const localIssuer: Issuer | null = cfg.selfSigned
    ? { kind: 'local', issue: async (names) => (await localCa()).issue(names, { days: cfg.selfSigned!.validityDays }) }
    : null;
  const challenges = new Challenges(storage);
  const acmeIssuer = cfg.acme
    ? new AcmeIssuer({
        cfg: cfg.acme,
        storage,
        challenges,
        log,
        onOrder: (result) => metric('acme_orders_total', 1, { result }),
      })
    : null;

  manager = new Manager({
    storage,
    renewal: cfg.renewal,
    log,
    metric,
    onHealth: health,
    onCert: (m) => {
      const rec = m.record!;
      const entry: CertEntry = {
        id: m.id,
        source: m.onDemand ? 'on-demand' : m.issuer.kind,
        names: m.names,
        info: m.info,
        load: async () => ({ cert: rec.certPem, key: rec.keyPem }),
      };
      store.set(entry);
      prefetchOcsp(entry);
      countCerts();
    },
    onRemove: (m) => {
      if (store.get(m.id)) store.remove(m.id);
      countCerts();
    },
    stillApproved: async (name) => (policy ? (await policy.approve(name)).ok : false),
  });
  const countCerts = () => {
    const by: Record<string, number> = { file: 0, acme: 0, local: 0, 'on-demand': 0 };
    for (const e of store.entries()) by[e.source]!++;
    for (const [source, n] of Object.entries(by)) metric('certificates', n, { source }, 'gauge');
  };

  // Nothing is written (local CA, certificates) and no port is bound until the
  // kernel serves: `bext config check` and `bext routes` load plugins without
  // serving, maybe beside a running server. Stored certificates are loaded
  // before the ports open; ACME orders start after, as HTTP-01 needs the kernel's port.
  const acmeManaged: Managed[] = [];
  const loadManaged = async () => {
    if (acmeIssuer) for (const g of acmeGroups(cfg)) acmeManaged.push(await manager!.track(g[0]!, g, acmeIssuer));
    if (localIssuer && cfg.selfSigned!.names.length) {
      const names = cfg.selfSigned!.names.map(normalName);
      await manager!.add(names[0]!, names, localIssuer);
    }
    countCerts();
  };

  // ------------------------------------------------------------ on-demand
  const onDemandIssuer = acmeIssuer ?? localIssuer;
  const inflight = new Map<string, Promise<CertEntry | null>>();
  const heldOnDemand = () => {
    let n = 0;
    for (const m of manager!.certs.values()) if (m.onDemand) n++;
    return n;
  };
  const obtainOnDemand = async (name: string): Promise<CertEntry | null> => {
    if (onDemandIssuer!.kind === 'acme') await kernelReady;
    const v = await policy!.approve(name);
    if (!v.ok) {
      metric('on_demand_total', 1, { result: v.reason });
      return null;
    }
    const stored = await storage.get(certKey(name)).catch(() => null);
    if (!stored) {
      const t = policy!.take(heldOnDemand());
      if (!t.ok) {
        metric('on_demand_total', 1, { result: t.reason });
        log('warn', 'on-demand certificate refused', { name, reason: t.reason });
        return null;
      }
    }
    const m = await manager!.add(name, [name], onDemandIssuer!, true);
    if (!m.record) {
      policy!.failed(name);
      manager!.drop(name);
      // A name that failed on demand is the client's problem, not the server's health.
      health();
      metric('on_demand_total', 1, { result: 'failed' });
      return null;
    }
    policy!.succeeded(name);
    metric('on_demand_total', 1, { result: stored ? 'loaded' : 'issued' });
    return store.get(name) ?? null;
  };
  const onDemand = (name: string): Promise<CertEntry | null> => {
    let p = inflight.get(name);
    if (!p) {
      p = obtainOnDemand(name).catch((e: unknown) => {
        log('error', 'on-demand certificate failed', { name, error: (e as Error).message });
        return null;
      }).finally(() => inflight.delete(name));
      inflight.set(name, p);
    }
    const wait = cfg.onDemand!.handshakeWaitMs;
    let t: NodeJS.Timeout;
    return Promise.race([p, new Promise<null>((r) => (t = setTimeout(() => r(null), wait)))]).finally(() => clearTimeout(t));
  };

  // ------------------------------------------------------------------ SNI
  type SniCb = (err: Error | null, ctx?: SecureContext) => void;
  const serve = (e: CertEntry, cb: SniCb) => {
    const c = store.context(e);
    if (c instanceof Promise) {
      c.then((x) => cb(null, x), (err: Error) => {
        log('error', 'certificate could not be loaded', { id: e.id, error: err.message });
        cb(err);
      });
    } else cb(null, c);
  };
  const fallback = (name: string, cb: SniCb) => {
    const d = cfg.unknownNames === 'default' ? store.default() : null;
    if (d) return serve(d, cb);
    cb(new Error(`no certificate for ${name}`));
  };
  const SNICallback = (servername: string, cb: SniCb) => {
    const name = normalName(servername);
    const e = store.lookup(name);
    if (e) return serve(e, cb);
    if (policy && onDemandIssuer) {
      onDemand(name).then((got) => (got ? serve(got, cb) : fallback(name, cb)), () => fallback(name, cb));
      return;
    }
    fallback(name, cb);
  };

  // ------------------------------------------------------------ listeners
  const listeners = new Listeners({
    kernel,
    tlsOptions: {
      ...base,
      SNICallback,
      handshakeTimeout: Math.max(cfg.tls.handshakeTimeoutMs, (cfg.onDemand?.handshakeWaitMs ?? 0) + 2000),
      ...(cfg.mtls ? { requestCert: true, rejectUnauthorized: false } : {}),
    },
    http2: { idleTimeoutMs: cfg.tls.http2IdleTimeoutMs, maxConcurrentStreams: cfg.tls.http2MaxConcurrentStreams },
    onOcsp: stapler ? stapler.handle : null,
    onHandshake: (s: TLSSocket) => metric('handshakes_total', 1, { version: s.getProtocol() ?? '', alpn: s.alpnProtocol || 'none', resumed: s.isSessionReused() ? 'yes' : 'no' }),
    onTlsError: (err) => metric('handshake_errors_total', 1, { code: err.code ?? 'unknown' }),
    log,
  });
  let stopped = false;
  const timers: NodeJS.Timeout[] = [];
  listeners.onShutdown = () => {
    stopped = true;
    manager?.close();
  };
  await listeners.init();
  const applyDefault = () => {
    const d = store.default();
    if (!d) return;
    store.options(d).then((o) => listeners.setDefault(o), (err: Error) => log('error', 'default certificate could not be loaded', { id: d.id, error: err.message }));
  };
  store.onDefaultChange = applyDefault;
  applyDefault();

  // -------------------------------------------------- session ticket keys
  const rotateMs = cfg.tls.ticketKeyRotationHours * 3600_000;
  let ticketCreated = 0;
  const ticketKeys = async () => {
    try {
      const stored = await storage.get('ticket-keys');
      const rec = stored ? (JSON.parse(stored) as { keys: string; created: number }) : null;
      if (rec && Date.now() - rec.created < rotateMs) {
        if (rec.created !== ticketCreated) {
          ticketCreated = rec.created;
          listeners.setTicketKeys(Buffer.from(rec.keys, 'base64'));
        }
        return;
      }
      const keys = randomBytes(48);
      ticketCreated = Date.now();
      await storage.put('ticket-keys', JSON.stringify({ keys: keys.toString('base64'), created: ticketCreated }));
      listeners.setTicketKeys(keys);
    } catch (e) {
      log('warn', 'session ticket keys could not be shared; keeping the current ones', { error: (e as Error).message });
    }
  };
  const startTicketKeys = async () => {
    await ticketKeys();
    const tk = setInterval(() => void ticketKeys(), Math.min(rotateMs / 4, 600_000));
    tk.unref();
    timers.push(tk);
  };

  // A port still held (a previous process draining) is retried with backoff.
  const ports: { port: number; host: string; http2: boolean }[] = [];
  let h2cPort: number | null = null;
  const bind = async (what: string, fn: () => Promise<number>): Promise<number | null> => {
    for (let attempt = 0; !stopped; attempt++) {
      try {
        const p = await fn();
        problems.delete(what);
        health();
        return p;
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        if (attempt === 0 || !problems.has(what)) {
          log('error', 'tls listener could not listen; retrying', { listener: what, error: err.message, hint: err.code === 'EACCES' ? 'ports below 1024 need root or CAP_NET_BIND_SERVICE' : 'another process holds the port' });
        }
        problems.set(what, `tls listener ${what} cannot listen: ${err.code ?? err.message}`);
        health();
        await new Promise<void>((r) => {
          const t = setTimeout(r, Math.min(30_000, 250 * 2 ** attempt));
          t.unref();
          timers.push(t);
        });
      }
    }
    return null;
  };
  const bound = kernelReady.then(async () => {
    if (stopped) return;
    for (const e of store.entries()) prefetchOcsp(e);
    await loadManaged().catch((e: unknown) => log('error', 'managed certificates could not be loaded', { error: (e as Error).message }));
    await startTicketKeys();
    await Promise.all(cfg.listeners.map(async (l) => {
      const p = await bind(`${l.host}:${l.port}`, () => listeners.listenTls(l.port, l.host, l.http2));
      if (p !== null) ports.push({ port: p, host: l.host, http2: l.http2 });
    }));
    if (cfg.h2c) h2cPort = await bind(`h2c ${cfg.h2c.host}:${cfg.h2c.port}`, () => listeners.listenH2c(cfg.h2c!.port, cfg.h2c!.host));
    if (!stopped) log('info', 'tls listening', { listeners: ports, h2c: h2cPort, certificates: store.size });
  });

  // --------------------------------------------------- file reload loop
  if (cfg.tls.reloadIntervalSeconds > 0 && files.length) {
    const t = setInterval(() => {
      for (const f of files) {
        try {
          const m = statSync(f.cert).mtimeMs + statSync(f.key).mtimeMs;
          if (m !== f.mtime) {
            loadFile(f);
            log('info', 'certificate file reloaded', { cert: f.cert });
            const e = store.get(`file:${f.cert}`);
            if (e) prefetchOcsp(e);
          }
        } catch (e) {
          log('warn', 'certificate file could not be reloaded; the previous one keeps serving', { cert: f.cert, error: (e as Error).message });
        }
      }
    }, cfg.tls.reloadIntervalSeconds * 1000);
    t.unref();
    timers.push(t);
  }

  void listeners.whenReady().then(markReady);
  void bound.then(async () => {
    if (stopped) return;
    await Promise.all(acmeManaged.map((m) => manager!.ensure(m)));
    health();
  });
  health();

  // ------------------------------------------------------- request side
  const mtls = cfg.mtls;
  const peers = new WeakMap<object, ClientIdentity | null>();
  const peerOf = (req: TrustedRequest): ClientIdentity | null => {
    const raw = req.raw as unknown as Http2ServerRequest;
    const key: object = raw.stream?.session ?? req.raw.socket;
    let p = peers.get(key);
    if (p !== undefined) return p;
    const sock = req.raw.socket as TLSSocket;
    p = null;
    if (sock.authorized) {
      const c = sock.getPeerCertificate();
      if (c && c.subject) {
        const subject = c.subject as unknown as Record<string, string | string[]>;
        const cn = subject.CN;
        p = {
          subject: dn(subject),
          cn: Array.isArray(cn) ? cn[0] ?? null : cn ?? null,
          issuer: dn(c.issuer as unknown as Record<string, string | string[]>),
          serial: c.serialNumber,
          fingerprint256: c.fingerprint256,
          san: c.subjectaltname ?? null,
          notAfter: c.valid_to,
        };
      }
    }
    peers.set(key, p);
    return p;
  };
  const certRequired = new BextError('BEXT_ERR_TLS_CLIENT_CERT', 'this route requires a TLS client certificate signed by a trusted CA', {
    hint: 'present a client certificate issued by one of the CAs in plugins.tls.mtls.ca',
  });
  const refused: RequestDecision = { action: 'respond', ...errorJson(certRequired) };

  const httpsHeaders: Headers = {};
  if (cfg.hsts) {
    httpsHeaders['strict-transport-security'] = `max-age=${cfg.hsts.maxAgeSeconds}${cfg.hsts.includeSubDomains ? '; includeSubDomains' : ''}${cfg.hsts.preload ? '; preload' : ''}`;
  }
  if (cfg.http3) {
    const h = cfg.http3.host ? (isIP(cfg.http3.host) === 6 ? `[${cfg.http3.host}]` : cfg.http3.host) : '';
    httpsHeaders['alt-svc'] = `h3="${h}:${cfg.http3.port}"; ma=${cfg.http3.maxAgeSeconds}`;
  }
  const hasHttpsHeaders = Object.keys(httpsHeaders).length > 0;
  const continueHttps: RequestDecision = hasHttpsHeaders ? { action: 'continue', responseHeaders: httpsHeaders } : undefined;

  const redirect = cfg.redirect;
  const redirectPorts = new Set(redirect?.ports ?? []);
  const redirectExempt = (redirect?.exemptPaths ?? []).map(globToRegExp);
  const httpsPort = () => redirect?.httpsPort ?? ports[0]?.port ?? cfg.listeners[0]?.port ?? 443;

  const hintRules = Object.entries(cfg.earlyHints.paths).map(([glob, links]) => ({ re: globToRegExp(glob), hints: { link: links } }));
  const learned = new Map<string, string[]>();
  const learn = cfg.earlyHints.learn;
  const sendHints = (req: TrustedRequest) => {
    if (req.method !== 'GET') return;
    for (const r of hintRules) {
      if (r.re.test(req.path)) {
        req.earlyHints(r.hints);
        metric('early_hints_total', 1);
        return;
      }
    }
    if (learn) {
      const l = learned.get(`${req.host}${req.path}`);
      if (l) {
        req.earlyHints({ link: l });
        metric('early_hints_total', 1);
      }
    }
  };
  const hinting = hintRules.length > 0 || learn;

  const onRequest = (req: TrustedRequest): RequestDecision => {
    if (req.scheme !== 'https') {
      if (redirect && redirectPorts.has(req.raw.socket.localPort ?? -1) && !req.path.startsWith(CHALLENGE_PREFIX) && !redirectExempt.some((re) => re.test(req.path))) {
        if (!req.host) return { action: 'respond', status: 400, headers: { 'content-type': 'text/plain; charset=utf-8' }, body: 'a Host header is needed to redirect to HTTPS\n' };
        const h = isIP(req.host) === 6 ? `[${req.host}]` : req.host;
        metric('redirects_total', 1);
        return {
          action: 'respond',
          status: redirect.status,
          headers: { location: `https://${h}${httpsPort() === 443 ? '' : `:${httpsPort()}`}${req.path}${req.query ? `?${req.query}` : ''}`, 'cache-control': 'no-store' },
        };
      }
      if (hinting) sendHints(req);
      return undefined;
    }
    if (hinting) sendHints(req);
    if (mtls) {
      const policyName = mtls.groups[req.group ?? ''] ?? mtls.default;
      if (policyName !== 'off') {
        const who = peerOf(req);
        if (who) return { action: 'continue', ctx: { [mtls.ctxKey]: who }, ...(hasHttpsHeaders ? { responseHeaders: httpsHeaders } : {}) };
        if (policyName === 'required') {
          metric('mtls_refused_total', 1, { group: req.group ?? '' });
          return refused;
        }
      }
    }
    return continueHttps;
  };

  // --------------------------------------------------------- admin routes
  const status = () => ({
    listeners: ports,
    h2c: h2cPort,
    http2Sessions: listeners.sessions,
    storage: storage.kind,
    defaultCertificate: store.default()?.id ?? null,
    localCa: cfg.selfSigned ? { pem: '/__bext/tls/ca.pem' } : null,
    acme: cfg.acme ? { directoryUrl: cfg.acme.directoryUrl, profile: cfg.acme.profile } : null,
    certificates: [...store.entries()].map((e) => {
      const m = manager!.certs.get(e.id);
      const ocsp = e.info && stapler ? stapler.status(e.info.leafDer) : null;
      return {
        id: e.id,
        source: e.source,
        names: e.names,
        serial: e.info?.serial ?? null,
        issuer: e.info?.issuer ?? null,
        notBefore: e.info?.notBefore.toISOString() ?? null,
        notAfter: e.info?.notAfter.toISOString() ?? null,
        ...(m ? {
          renewAt: Number.isFinite(m.renewAt) ? new Date(m.renewAt).toISOString() : null,
          ariWindow: m.ariWindow ? { start: new Date(m.ariWindow.start).toISOString(), end: new Date(m.ariWindow.end).toISOString() } : null,
          failures: m.failures,
          lastError: m.lastError,
        } : {}),
        ocsp: ocsp ? { status: ocsp.status, thisUpdate: ocsp.thisUpdate.toISOString(), nextUpdate: ocsp.nextUpdate?.toISOString() ?? null } : null,
      };
    }),
    pending: [...manager!.certs.values()].filter((m) => !m.record).map((m) => ({ id: m.id, names: m.names, failures: m.failures, lastError: m.lastError })),
  });

  const bodyJson = async (req: TrustedRequest): Promise<Record<string, unknown>> => {
    const b = await req.readBody();
    if (b.length === 0) return {};
    try {
      const v = JSON.parse(b.toString('utf8')) as unknown;
      return v && typeof v === 'object' ? (v as Record<string, unknown>) : {};
    } catch {
      throw new BextError('BEXT_ERR_QUERY_INVALID', 'the request body is not JSON', { hint: 'send {"id": "<certificate id>"}' });
    }
  };
  const pick = (req: TrustedRequest, body: Record<string, unknown>, k: string): string | null => {
    const q = new URLSearchParams(req.query).get(k);
    const v = body[k];
    return q ?? (typeof v === 'string' ? v : typeof v === 'number' || typeof v === 'boolean' ? String(v) : null);
  };

  const onRoute = async (req: TrustedRequest): Promise<ResponseData> => {
    switch (req.route) {
      case '/.well-known/acme-challenge/:token': {
        const keyAuth = await challenges.get(req.params?.token ?? '').catch(() => null);
        if (!keyAuth) return { status: 404, headers: { 'content-type': 'text/plain; charset=utf-8' }, body: 'no such challenge\n' };
        return { status: 200, headers: { 'content-type': 'application/octet-stream', 'cache-control': 'no-store' }, body: keyAuth };
      }
      case '/__bext/tls/status':
        return json(200, status());
      case '/__bext/tls/ca.pem':
        if (!cfg.selfSigned) return json(404, { error: 'BEXT_ERR_NOT_FOUND', message: 'no local CA: plugins.tls.selfSigned is not configured' });
        return { status: 200, headers: { 'content-type': 'application/x-pem-file', 'content-disposition': 'attachment; filename="bext-local-ca.pem"' }, body: (await localCa()).certPem };
      case '/__bext/tls/renew': {
        try {
          const body = await bodyJson(req);
          const id = pick(req, body, 'id');
          const targets = [...manager!.certs.values()].filter((m) => !id || m.id === id);
          if (id && targets.length === 0) return json(404, { error: 'BEXT_ERR_NOT_FOUND', message: `no managed certificate "${id}"` });
          const out = [];
          for (const m of targets) {
            const before = m.info?.serial ?? null;
            try {
              await manager!.obtain(m, 'forced');
              out.push({ id: m.id, previous: before, serial: m.info?.serial ?? null, notAfter: m.info?.notAfter.toISOString() ?? null });
            } catch (e) {
              return errorJson(new BextError('BEXT_ERR_TLS_ISSUANCE', `renewing ${m.id} failed: ${(e as Error).message}`, { hint: 'the current certificate keeps serving; see /__bext/tls/status' }));
            }
          }
          return json(200, { renewed: out });
        } catch (e) {
          return errorJson(e instanceof BextError ? e : new BextError('BEXT_ERR_PLUGIN_FAILED', (e as Error).message));
        }
      }
      case '/__bext/tls/revoke': {
        try {
          const body = await bodyJson(req);
          const id = pick(req, body, 'id');
          const reason = Number(pick(req, body, 'reason') ?? 0);
          if (!id) return errorJson(new BextError('BEXT_ERR_QUERY_INVALID', 'revoke needs an "id"', { hint: 'POST {"id": "example.com", "reason": 4}; ids are listed by /__bext/tls/status' }));
          if (!REVOCATION_REASONS.has(reason)) return errorJson(new BextError('BEXT_ERR_QUERY_INVALID', `reason ${reason} is not one a subscriber may give`, { hint: 'use 0 (unspecified), 1 (keyCompromise), 3 (affiliationChanged), 4 (superseded) or 5 (cessationOfOperation)' }));
          const m = manager!.certs.get(id);
          if (!m) return json(404, { error: 'BEXT_ERR_NOT_FOUND', message: `no managed certificate "${id}"` });
          const replace = pick(req, body, 'replace') !== 'false';
          try {
            const r = await manager!.revoke(m, reason, replace);
            return json(200, { ...r, replacement: m.info?.serial ?? null });
          } catch (e) {
            return errorJson(new BextError('BEXT_ERR_TLS_ISSUANCE', `revoking ${id} failed: ${(e as Error).message}`));
          }
        } catch (e) {
          return errorJson(e instanceof BextError ? e : new BextError('BEXT_ERR_PLUGIN_FAILED', (e as Error).message));
        }
      }
      default:
        return errorJson(new BextError('BEXT_ERR_NOT_FOUND', `${req.path} is not a tls route`));
    }
  };

  return {
    onRequest,
    onRoute,
    onResponse: learn
      ? (req, res) => {
          if (res.status !== 200) return undefined;
          const ct = res.headers['content-type'];
          const link = res.headers.link;
          if (!link || typeof ct !== 'string' || !ct.startsWith('text/html')) return undefined;
          const links = (Array.isArray(link) ? link : [link]).flatMap((l) => l.split(/,(?=\s*<)/)).map((l) => l.trim())
            .filter((l) => /;\s*rel="?(?:preload|preconnect|modulepreload)"?/i.test(l));
          if (links.length === 0) return undefined;
          const key = `${req.host}${req.path}`;
          if (!learned.has(key) && learned.size >= cfg.earlyHints.maxLearned) learned.delete(learned.keys().next().value!);
          learned.set(key, links);
          return undefined;
        }
      : () => undefined,
    async dispose() {
      stopped = true;
      for (const t of timers) clearInterval(t);
      manager?.close();
      await listeners.destroy();
      stapler?.close();
      await storage.close();
    },
  };
});
