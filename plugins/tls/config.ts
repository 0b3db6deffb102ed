/**
 * The plugin's section of bext.config.json, as the kernel hands it over
 * (schema defaults applied), and the checks JSON Schema cannot express.
 */
import { isIP } from 'node:net';
import { BextError } from '../../plugin-api/index.js';

export type MtlsPolicy = 'required' | 'optional' | 'off';

/** `plugins.tls` in bext.config.json. */
export interface TlsConfig {
  listeners: { port: number; host: string; http2: boolean }[];
  h2c: { port: number; host: string } | null;
  certificates: { cert: string; key: string; names?: string[] }[];
  defaultName: string | null;
  unknownNames: 'default' | 'reject';
  storage: { dir: string; redisUrl: string | null; redisPrefix: string };
  acme: {
    directoryUrl: string;
    email: string | null;
    termsOfServiceAgreed: boolean;
    names: (string | string[])[];
    keyType: 'ecdsa-p256' | 'ecdsa-p384' | 'rsa-2048' | 'rsa-4096';
    profile: string | null;
    caFile: string | null;
    eab: { kid: string; hmacKey: string } | null;
    pollIntervalMs: number;
  } | null;
  renewal: { ratio: number; jitterRatio: number; ari: boolean; retryMinSeconds: number; retryMaxSeconds: number; checkIntervalSeconds: number };
  onDemand: {
    ask: string | null;
    allow: string[];
    askCacheSeconds: number;
    ratePerMinute: number;
    burst: number;
    failureBackoffSeconds: number;
    maxCertificates: number;
    handshakeWaitMs: number;
  } | null;
  selfSigned: { names: string[]; caDir: string | null; validityDays: number } | null;
  mtls: { ca: string[]; groups: Record<string, MtlsPolicy>; default: MtlsPolicy; ctxKey: string } | null;
  ocsp: { staple: boolean; timeoutMs: number };
  redirect: { ports: number[]; httpsPort: number | null; status: 301 | 302 | 307 | 308; exemptPaths: string[] } | null;
  hsts: { maxAgeSeconds: number; includeSubDomains: boolean; preload: boolean } | null;
  http3: { port: number; host: string | null; maxAgeSeconds: number } | null;
  earlyHints: { paths: Record<string, string[]>; learn: boolean; maxLearned: number };
  tls: {
    minVersion: 'TLSv1.2' | 'TLSv1.3';
    handshakeTimeoutMs: number;
    sessionTimeoutSeconds: number;
    ticketKeyRotationHours: number;
    http2IdleTimeoutMs: number;
    http2MaxConcurrentStreams: number;
    reloadIntervalSeconds: number;
  };
}

const NAME = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** A DNS name a certificate may carry (lower case, optional leading `*.`), or an IP address. */
export function validName(n: string): boolean {
  return n.length <= 253 && (NAME.test(n) || isIP(n) !== 0);
}

function bad(path: string, what: string, hint: string): BextError {
  return new BextError('BEXT_ERR_CONFIG_INVALID', `bext.config.json: $.plugins.tls.${path}: ${what}`, { hint });
}

/** Certificate groups of `acme.names`: the first name of each is its key. */
export function acmeGroups(cfg: TlsConfig): string[][] {
  return (cfg.acme?.names ?? []).map((n) => (typeof n === 'string' ? [n] : n).map((x) => x.toLowerCase()));
}

/** Throws BEXT_ERR_CONFIG_INVALID with the JSON path and a fix. */
export function checkConfig(cfg: TlsConfig): void {
  if (cfg.listeners.length === 0 && !cfg.h2c) throw bad('listeners', 'no listener is configured', 'add { "port": 443 }');
  const groups = acmeGroups(cfg);
  const seen = new Map<string, string>();
  groups.forEach((g, i) => {
    for (const n of g) {
      if (!validName(n)) throw bad(`acme.names[${i}]`, `"${n}" is not a DNS name`, 'use names like "example.com"');
      if (n.startsWith('*.')) {
        throw bad(`acme.names[${i}]`, `"${n}" is a wildcard, which ACME only issues through DNS-01`, 'this plugin answers HTTP-01 only: list the names, use on-demand TLS, or provide the wildcard certificate as a file in "certificates"');
      }
      if (seen.has(n)) throw bad(`acme.names[${i}]`, `"${n}" is listed twice`, 'keep each name in one certificate');
      seen.set(n, g[0]!);
    }
  });
  for (const [i, n] of (cfg.selfSigned?.names ?? []).entries()) {
    if (!validName(n.toLowerCase())) throw bad(`selfSigned.names[${i}]`, `"${n}" is not a DNS name or IP address`, 'use names like "localhost" or "*.app.test"');
    if (seen.has(n.toLowerCase())) throw bad(`selfSigned.names[${i}]`, `"${n}" is also in acme.names`, 'a name comes from one issuer: remove it from one list');
  }
  if (cfg.onDemand) {
    if (!cfg.acme && !cfg.selfSigned) throw bad('onDemand', 'on-demand TLS needs an issuer', 'configure "acme" (production) or "selfSigned" (development)');
    if (!cfg.onDemand.ask && cfg.onDemand.allow.length === 0) {
      throw bad('onDemand', 'neither "ask" nor "allow" is set, so any name a client sends would be ordered', 'set "ask" to a URL that approves names, or "allow" to host patterns');
    }
  }
  if (cfg.acme && !cfg.acme.termsOfServiceAgreed) {
    throw bad('acme.termsOfServiceAgreed', 'the CA\'s terms of service must be agreed to create an account', 'read them and set "termsOfServiceAgreed": true');
  }
  for (const g of Object.keys(cfg.mtls?.groups ?? {})) if (!g) throw bad('mtls.groups', 'empty group name', 'use the route group names of "groups"');
}
