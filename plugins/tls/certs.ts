/**
 * Certificates in memory: what a PEM chain says about itself, and the store
 * the SNI callback reads — exact name, then the wildcard one label up, then
 * the default. Secure contexts are built on first use and cached.
 */
import { X509Certificate, createHash } from 'node:crypto';
import tls, { type SecureContext, type SecureContextOptions } from 'node:tls';
// @peculiar/x509 2 resolves its services through tsyringe, which needs the Reflect metadata API.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

/** TLS 1.2 and 1.3 with AEAD ciphers and forward secrecy only (Mozilla "intermediate" minus DHE). */
export const MODERN_CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

export const ECDH_CURVES = 'X25519:prime256v1:secp384r1';

/** What the plugin needs to know about a certificate chain. */
export interface CertInfo {
  /** DNS names (and IP addresses) from the subject alternative names, lower case. */
  names: string[];
  notBefore: Date;
  notAfter: Date;
  /** Serial number, upper-case hex as Node prints it. */
  serial: string;
  fingerprint256: string;
  issuer: string;
  subject: string;
  leafDer: Buffer;
  /** The next certificate of the chain, when the PEM carries it. */
  issuerDer: Buffer | null;
  /** ARI certificate identifier: base64url(AKI keyIdentifier) "." base64url(serial). */
  ariId: string | null;
}

export function splitPem(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

const b64u = (b: Uint8Array) => Buffer.from(b).toString('base64url');

/** Reads the leaf (first) certificate of a PEM chain. */
export function certInfo(chainPem: string): CertInfo {
  const pems = splitPem(chainPem);
  if (pems.length === 0) throw new Error('no PEM certificate found');
  const leaf = new X509Certificate(pems[0]!);
  const names: string[] = [];
  for (const part of (leaf.subjectAltName ?? '').split(/,\s*/)) {
    const m = /^(DNS|IP Address):(.+)$/.exec(part.trim());
    if (m) names.push(m[2]!.toLowerCase());
  }
  if (names.length === 0) {
    const cn = /(?:^|\n)CN=([^\n]+)/.exec(leaf.subject)?.[1];
    if (cn) names.push(cn.toLowerCase());
  }
  let ariId: string | null = null;
  try {
    const aki = new x509.X509Certificate(leaf.raw).getExtension(x509.AuthorityKeyIdentifierExtension);
    if (aki?.keyId) {
      let serial = Buffer.from(leaf.serialNumber.length % 2 ? `0${leaf.serialNumber}` : leaf.serialNumber, 'hex');
      // DER INTEGER content: a set top bit needs the 0x00 sign byte back.
      if (serial[0]! & 0x80) serial = Buffer.concat([Buffer.from([0]), serial]);
      ariId = `${b64u(Buffer.from(aki.keyId, 'hex'))}.${b64u(serial)}`;
    }
  } catch {
    ariId = null;
  }
  return {
    names,
    notBefore: new Date(leaf.validFrom),
    notAfter: new Date(leaf.validTo),
    serial: leaf.serialNumber,
    fingerprint256: leaf.fingerprint256,
    issuer: leaf.issuer,
    subject: leaf.subject,
    leafDer: leaf.raw,
    issuerDer: pems[1] ? new X509Certificate(pems[1]).raw : null,
    ariId,
  };
}

/** Where a certificate came from; a higher rank wins a name claimed twice. */
export type CertSource = 'file' | 'acme' | 'local' | 'on-demand';
const RANK: Record<CertSource, number> = { file: 3, acme: 2, local: 2, 'on-demand': 1 };

/** One certificate the store can serve. */
export interface CertEntry {
  /** Unique key: the file path, or the managed certificate's primary name. */
  id: string;
  source: CertSource;
  names: string[];
  info: CertInfo | null;
  /** Produces the PEM pair; called once, when a handshake first needs the certificate. */
  load(): Promise<{ cert: string; key: string }>;
  /** Built on first use. */
  ctx?: SecureContext;
  ctxPending?: Promise<SecureContext>;
}

/** Normalises an SNI name: lower case, no trailing dot. */
export function normalName(name: string): string {
  const n = name.toLowerCase();
  return n.endsWith('.') ? n.slice(0, -1) : n;
}

/** `a.b.example.com` → `*.b.example.com` (a wildcard covers exactly one label). */
export function wildcardOf(name: string): string | null {
  const dot = name.indexOf('.');
  return dot > 0 && name.indexOf('.', dot + 1) > 0 ? `*${name.slice(dot)}` : null;
}

export class CertStore {
  #byName = new Map<string, CertEntry[]>();
  #byId = new Map<string, CertEntry>();
  #base: SecureContextOptions;
  #defaultId: string | null = null;
  /** Called when the default certificate changes (the listener swaps its base context). */
  onDefaultChange: (() => void) | null = null;

  constructor(base: SecureContextOptions, defaultId: string | null) {
    this.#base = base;
    this.#defaultId = defaultId;
  }

  get size(): number {
    return this.#byId.size;
  }

  entries(): IterableIterator<CertEntry> {
    return this.#byId.values();
  }

  get(id: string): CertEntry | undefined {
    return this.#byId.get(id);
  }

  /** Adds or replaces an entry (same id), re-indexing its names. */
  set(e: CertEntry): void {
    const wasDefault = this.default();
    this.#unindex(e.id);
    this.#byId.set(e.id, e);
    for (const n of e.names) {
      const list = this.#byName.get(n) ?? [];
      list.push(e);
      list.sort((a, b) => RANK[b.source] - RANK[a.source]);
      this.#byName.set(n, list);
    }
    if (this.default() !== wasDefault || wasDefault === e) this.onDefaultChange?.();
  }

  remove(id: string): void {
    const wasDefault = this.default();
    this.#unindex(id);
    this.#byId.delete(id);
    if (this.default() !== wasDefault) this.onDefaultChange?.();
  }

  #unindex(id: string): void {
    const old = this.#byId.get(id);
    if (!old) return;
    for (const n of old.names) {
      const list = this.#byName.get(n)?.filter((x) => x !== old);
      if (list?.length) this.#byName.set(n, list);
      else this.#byName.delete(n);
    }
  }

  /** Exact name, then the wildcard one label up; null when neither is held. */
  lookup(servername: string): CertEntry | null {
    const exact = this.#byName.get(servername);
    if (exact) return exact[0]!;
    const w = wildcardOf(servername);
    const wild = w ? this.#byName.get(w) : undefined;
    return wild ? wild[0]! : null;
  }

  /** The configured default (by name or id), else the first certificate added. */
  default(): CertEntry | null {
    if (this.#defaultId) {
      const e = this.#byId.get(this.#defaultId) ?? this.lookup(this.#defaultId);
      if (e) return e;
    }
    const first = this.#byId.values().next();
    return first.done ? null : first.value;
  }

  /** The entry's secure context, built once. */
  context(e: CertEntry): SecureContext | Promise<SecureContext> {
    if (e.ctx) return e.ctx;
    e.ctxPending ??= e.load().then((pair) => {
      e.ctx = tls.createSecureContext({ ...this.#base, cert: pair.cert, key: pair.key });
      e.ctxPending = undefined;
      return e.ctx;
    }, (err: unknown) => {
      e.ctxPending = undefined;
      throw err;
    });
    return e.ctxPending;
  }

  /** Options for a server's base context serving `e` (clients that send no SNI). */
  async options(e: CertEntry): Promise<SecureContextOptions> {
    const pair = await e.load();
    return { ...this.#base, cert: pair.cert, key: pair.key };
  }
}

/** Stable short id for logs and storage keys. */
export function shortHash(s: string): string {
  return createHash('sha256').update(s).digest('hex').slice(0, 16);
}
