/**
 * ACME issuance with acme-client: the account (created once, kept in
 * storage), orders answered through HTTP-01, revocation, and what
 * acme-client 5 does not do itself — ACME Renewal Information (RFC 9773)
 * and profiles, which are plain fields and URLs around its calls.
 */
import https from 'node:https';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import tls from 'node:tls';
import acme from 'acme-client';
import { shortHash, type CertInfo } from './certs.js';
import type { TlsConfig } from './config.js';
import type { Storage } from './storage.js';

type AcmeCfg = NonNullable<TlsConfig['acme']>;

/** A certificate and its key, in PEM. */
export interface Issued {
  certPem: string;
  keyPem: string;
}

/** A suggested renewal window from the CA (ARI). */
export interface RenewalWindow {
  start: number;
  end: number;
  /** When to ask again, ms since the epoch. */
  nextCheck: number;
  explanationUrl?: string;
}

/** Something that signs certificates: an ACME CA or the local development CA. */
export interface Issuer {
  readonly kind: 'acme' | 'local';
  issue(names: string[], opts?: { replaces?: string | null }): Promise<Issued>;
  /** The CA's suggested renewal window, or null when it offers none. */
  renewalWindow?(info: CertInfo): Promise<RenewalWindow | null>;
  revoke?(certPem: string, reason: number): Promise<void>;
}

/** HTTP-01 answers: in memory for this instance, in storage for the others. */
export class Challenges {
  #mem = new Map<string, string>();
  constructor(private readonly storage: Storage) {}

  async set(token: string, keyAuth: string): Promise<void> {
    this.#mem.set(token, keyAuth);
    await this.storage.put(`challenges/${token}`, keyAuth, 600);
  }

  async delete(token: string): Promise<void> {
    this.#mem.delete(token);
    await this.storage.del(`challenges/${token}`);
  }

  /** The key authorization for a token, from memory first (no storage round trip on the common path). */
  async get(token: string): Promise<string | null> {
    if (!/^[A-Za-z0-9_-]{1,256}$/.test(token)) return null;
    return this.#mem.get(token) ?? (await this.storage.get(`challenges/${token}`));
  }
}

interface Directory {
  renewalInfo?: string;
  meta?: { profiles?: Record<string, string>; termsOfService?: string };
}

const agents = new Map<string, https.Agent>();

/** acme-client talks through one axios instance; a private CA's root is added to what it trusts. */
function trustCa(caFile: string | null): void {
  if (!caFile) return;
  let agent = agents.get(caFile);
  if (!agent) {
    agent = new https.Agent({ ca: [...tls.rootCertificates, readFileSync(caFile, 'utf8')], keepAlive: true });
    agents.set(caFile, agent);
  }
  acme.axios.defaults.httpsAgent = agent;
}

export interface AcmeIssuerOptions {
  cfg: AcmeCfg;
  storage: Storage;
  challenges: Challenges;
  log(level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>): void;
  onOrder(result: 'valid' | 'invalid'): void;
}

export class AcmeIssuer implements Issuer {
  readonly kind = 'acme';
  #o: AcmeIssuerOptions;
  #client: Promise<acme.Client> | null = null;
  #dir: Promise<Directory> | null = null;

  constructor(o: AcmeIssuerOptions) {
    this.#o = o;
    trustCa(o.cfg.caFile);
  }

  get directoryUrl(): string {
    return this.#o.cfg.directoryUrl;
  }

  directory(): Promise<Directory> {
    this.#dir ??= acme.axios.get(this.#o.cfg.directoryUrl, { validateStatus: (s) => s === 200 }).then(
      (r) => r.data as Directory,
      (e: unknown) => {
        this.#dir = null;
        throw e;
      },
    );
    return this.#dir;
  }

  /** The account, created on first use and kept in storage (one per directory URL). */
  client(): Promise<acme.Client> {
    this.#client ??= this.#account().catch((e: unknown) => {
      this.#client = null;
      throw e;
    });
    return this.#client;
  }

  async #account(): Promise<acme.Client> {
    const { cfg, storage } = this.#o;
    const key = `accounts/${shortHash(cfg.directoryUrl)}.json`;
    const backoff = { backoffMin: cfg.pollIntervalMs, backoffMax: Math.max(cfg.pollIntervalMs, 10_000), backoffAttempts: 12 };
    const eab = cfg.eab ? { externalAccountBinding: cfg.eab } : {};
    const stored = await storage.get(key);
    if (stored) {
      const a = JSON.parse(stored) as { keyPem: string; url: string };
      return new acme.Client({ directoryUrl: cfg.directoryUrl, accountKey: a.keyPem, accountUrl: a.url, ...backoff, ...eab });
    }
    // Two instances starting together would make two accounts; the second waits and reuses the first.
    const lock = await waitLock(storage, `account-${shortHash(cfg.directoryUrl)}`);
    try {
      const again = await storage.get(key);
      if (again) {
        const a = JSON.parse(again) as { keyPem: string; url: string };
        return new acme.Client({ directoryUrl: cfg.directoryUrl, accountKey: a.keyPem, accountUrl: a.url, ...backoff, ...eab });
      }
      const keyPem = (await acme.crypto.createPrivateEcdsaKey('P-256')).toString();
      const client = new acme.Client({ directoryUrl: cfg.directoryUrl, accountKey: keyPem, ...backoff, ...eab });
      await client.createAccount({ termsOfServiceAgreed: cfg.termsOfServiceAgreed, ...(cfg.email ? { contact: [`mailto:${cfg.email}`] } : {}) });
      await storage.put(key, JSON.stringify({ keyPem, url: client.getAccountUrl(), email: cfg.email, directoryUrl: cfg.directoryUrl, created: new Date().toISOString() }));
      this.#o.log('info', 'acme account created', { directoryUrl: cfg.directoryUrl, account: client.getAccountUrl() });
      return client;
    } finally {
      await lock.release();
    }
  }

  async issue(names: string[], opts: { replaces?: string | null } = {}): Promise<Issued> {
    const { cfg, challenges } = this.#o;
    const client = await this.client();
    const dir = await this.directory();
    const payload: Record<string, unknown> = { identifiers: names.map((n) => ({ type: isIP(n) ? 'ip' : 'dns', value: n })) };
    if (cfg.profile) {
      if (dir.meta?.profiles && cfg.profile in dir.meta.profiles) payload.profile = cfg.profile;
      else this.#o.log('warn', 'acme profile is not offered by the CA; ordering its default', { profile: cfg.profile, offered: Object.keys(dir.meta?.profiles ?? {}) });
    }
    // `replaces` ties a renewal to its predecessor (RFC 9773 §5); only CAs with ARI know the field.
    if (opts.replaces && dir.renewalInfo) payload.replaces = opts.replaces;
    const order = await client.createOrder(payload as unknown as Parameters<acme.Client['createOrder']>[0]);
    try {
      const authzs = await client.getAuthorizations(order);
      for (const authz of authzs) {
        if (authz.status === 'valid') continue;
        const ch = authz.challenges.find((c) => c.type === 'http-01');
        if (!ch) throw new Error(`the CA offered no http-01 challenge for ${authz.identifier.value} (offered: ${authz.challenges.map((c) => c.type).join(', ')})`);
        const keyAuth = await client.getChallengeKeyAuthorization(ch);
        await challenges.set(ch.token, keyAuth);
        try {
          await client.completeChallenge(ch);
          await client.waitForValidStatus(ch);
        } finally {
          await challenges.delete(ch.token).catch(() => undefined);
        }
      }
      const keyPem = await newKey(cfg.keyType);
      const [, csr] = await acme.crypto.createCsr({ commonName: names[0], altNames: names }, keyPem);
      const finalized = await client.finalizeOrder(order, csr);
      const certPem = await client.getCertificate(finalized);
      this.#o.onOrder('valid');
      return { certPem, keyPem };
    } catch (e) {
      this.#o.onOrder('invalid');
      throw e;
    }
  }

  async renewalWindow(info: CertInfo): Promise<RenewalWindow | null> {
    if (!info.ariId) return null;
    const dir = await this.directory();
    if (!dir.renewalInfo) return null;
    const url = `${dir.renewalInfo.replace(/\/$/, '')}/${info.ariId}`;
    const res = await acme.axios.get(url, { validateStatus: (s) => s === 200 });
    const w = (res.data as { suggestedWindow?: { start: string; end: string }; explanationURL?: string }).suggestedWindow;
    const start = Date.parse(w?.start ?? '');
    const end = Date.parse(w?.end ?? '');
    if (!Number.isFinite(start) || !Number.isFinite(end) || end < start) throw new Error(`renewalInfo at ${url} has no valid suggestedWindow`);
    const ra = String(res.headers['retry-after'] ?? '');
    const secs = /^\d+$/.test(ra) ? Number(ra) : Number.isFinite(Date.parse(ra)) ? (Date.parse(ra) - Date.now()) / 1000 : 6 * 3600;
    // RFC 9773 §4.3: poll again after Retry-After, clamped to something sane.
    const nextCheck = Date.now() + Math.min(Math.max(secs, 60), 24 * 3600) * 1000;
    const explanationUrl = (res.data as { explanationURL?: string }).explanationURL;
    return { start, end, nextCheck, ...(explanationUrl ? { explanationUrl } : {}) };
  }

  async revoke(certPem: string, reason: number): Promise<void> {
    const client = await this.client();
    await client.revokeCertificate(certPem, { reason });
  }
}

async function newKey(type: AcmeCfg['keyType']): Promise<string> {
  switch (type) {
    case 'ecdsa-p384': return (await acme.crypto.createPrivateEcdsaKey('P-384')).toString();
    case 'rsa-2048': return (await acme.crypto.createPrivateRsaKey(2048)).toString();
    case 'rsa-4096': return (await acme.crypto.createPrivateRsaKey(4096)).toString();
    default: return (await acme.crypto.createPrivateEcdsaKey('P-256')).toString();
  }
}

/** Takes a storage lock, waiting (polling once a second) while another instance holds it. */
export async function waitLock(storage: Storage, name: string, ttlMs = 120_000, maxWaitMs = 300_000): Promise<import('./storage.js').Lock> {
  const end = Date.now() + maxWaitMs;
  for (;;) {
    const l = await storage.tryLock(name, ttlMs);
    if (l) return l;
    if (Date.now() > end) throw new Error(`lock "${name}" is still held by another instance after ${maxWaitMs} ms`);
    await new Promise((r) => setTimeout(r, 1000).unref());
  }
}
