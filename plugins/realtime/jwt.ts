/**
 * Token verification for subscribers and publishers, with the same config
 * shape and rules as the auth plugin: every key fixes its algorithm, the
 * token's header only selects among configured keys, iss/aud/exp/nbf are
 * checked with a clock tolerance, and `exp` is required unless turned off.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import {
  createLocalJWKSet, createRemoteJWKSet, decodeProtectedHeader, errors as joseErrors, importJWK, importSPKI, importX509, jwtVerify,
  type JWK, type JWTPayload, type JWTVerifyGetKey, type JWTVerifyOptions, type KeyLike,
} from 'jose';
import { BextError } from '../../plugin-api/index.js';
import type { Principal } from './access.js';

/** `plugins.realtime.jwt`: the auth plugin's `jwt` section, plus where browsers put the token. */
export interface JwtConfig {
  keys: { alg: string; kid?: string; secret?: string; secretBase64?: string; pem?: string; file?: string; jwk?: JWK }[];
  jwks?: { url?: string; file?: string; algorithms: string[]; cacheMaxAgeSeconds: number };
  issuer?: string | string[];
  audience?: string | string[];
  clockToleranceSeconds: number;
  requireExp: boolean;
  cookie?: string;
  /** Query parameter that may carry the token (EventSource and WebSocket cannot set headers). */
  queryParam: string;
}

/** A token that does not verify; the message is safe to show the client. */
export class InvalidToken extends Error {}

function configError(path: string, what: string): BextError {
  return new BextError('BEXT_ERR_CONFIG_INVALID', `bext.config.json: $.plugins.realtime${path}: ${what}`);
}

function describe(e: unknown): string {
  if (e instanceof joseErrors.JWTExpired) return 'the token has expired';
  if (e instanceof joseErrors.JWTClaimValidationFailed) {
    if (e.claim === 'nbf') return 'the token is not valid yet';
    if (e.claim === 'aud') return 'the token is not meant for this audience';
    if (e.claim === 'iss') return 'the token comes from an issuer that is not trusted';
    return `the token's ${e.claim} claim is missing or invalid`;
  }
  if (e instanceof joseErrors.JWSSignatureVerificationFailed) return 'the token signature does not verify';
  return 'the token is malformed';
}

export type Verifier = (token: string) => Promise<Principal>;

/** Builds the verifier from config; throws BEXT_ERR_CONFIG_INVALID naming the bad key. */
export async function createVerifier(cfg: JwtConfig, baseDir: string): Promise<Verifier> {
  const keys: { alg: string; kid?: string; key: KeyLike | Uint8Array }[] = [];
  for (const [i, k] of cfg.keys.entries()) {
    const at = `.jwt.keys[${i}]`;
    const given = [k.secret, k.secretBase64, k.pem, k.file, k.jwk].filter((x) => x !== undefined).length;
    if (given !== 1) throw configError(at, `give exactly one of secret, secretBase64, pem, file, jwk (found ${given})`);
    const hmac = k.alg.startsWith('HS');
    // A public key must never be usable as an HMAC secret, so the key's kind must fit its fixed algorithm.
    if (hmac !== (k.secret !== undefined || k.secretBase64 !== undefined || k.jwk?.kty === 'oct')) {
      throw configError(at, hmac ? `${k.alg} needs a shared secret (secret, secretBase64 or an oct jwk)` : `${k.alg} needs a public key (pem, file or jwk), not a secret`);
    }
    let key: KeyLike | Uint8Array;
    try {
      if (k.secret !== undefined) key = new TextEncoder().encode(k.secret);
      else if (k.secretBase64 !== undefined) key = Buffer.from(k.secretBase64, 'base64');
      else if (k.jwk) key = await importJWK(k.jwk, k.alg);
      else {
        const pem = k.pem ?? readFileSync(resolve(baseDir, k.file!), 'utf8');
        key = pem.includes('BEGIN CERTIFICATE') ? await importX509(pem, k.alg) : await importSPKI(pem, k.alg);
      }
    } catch (e) {
      throw configError(at, `cannot use this key for ${k.alg}: ${(e as Error).message}`);
    }
    const bits = parseInt(k.alg.slice(2), 10);
    if (hmac && key instanceof Uint8Array && key.byteLength * 8 < bits) throw configError(at, `${k.alg} needs a secret of at least ${bits / 8} bytes, found ${key.byteLength}`);
    keys.push({ alg: k.alg, kid: k.kid, key });
  }
  let jwks: JWTVerifyGetKey | null = null;
  if (cfg.jwks) {
    const j = cfg.jwks;
    if ((j.url === undefined) === (j.file === undefined)) throw configError('.jwt.jwks', 'give exactly one of url or file');
    if (j.algorithms.some((a) => a.startsWith('HS'))) throw configError('.jwt.jwks.algorithms', 'a JWKS carries public keys; HS* algorithms do not belong here');
    if (j.url) jwks = createRemoteJWKSet(new URL(j.url), { cacheMaxAge: j.cacheMaxAgeSeconds * 1000, cooldownDuration: 30_000 });
    else {
      try {
        jwks = createLocalJWKSet(JSON.parse(readFileSync(resolve(baseDir, j.file!), 'utf8')) as { keys: JWK[] });
      } catch (e) {
        throw configError('.jwt.jwks.file', `cannot read a JWKS from ${j.file}: ${(e as Error).message}`);
      }
    }
  }
  if (keys.length === 0 && !jwks) throw configError('.jwt', 'has neither keys nor jwks, so no token could ever verify');
  const jwksAlgs = new Set(cfg.jwks?.algorithms ?? []);
  const accepted = new Set([...keys.map((k) => k.alg), ...jwksAlgs]);
  const options = (algorithms: string[]): JWTVerifyOptions => ({
    algorithms,
    issuer: cfg.issuer,
    audience: cfg.audience,
    clockTolerance: cfg.clockToleranceSeconds,
    requiredClaims: cfg.requireExp ? ['exp'] : [],
  });
  const keyOptions = new Map([...accepted].map((a) => [a, options([a])]));
  const jwksOptions = options([...jwksAlgs]);
  const tolerance = cfg.clockToleranceSeconds * 1000;

  return async (token) => {
    let alg: string | undefined;
    let kid: string | undefined;
    try {
      ({ alg, kid } = decodeProtectedHeader(token));
    } catch {
      throw new InvalidToken('the token is malformed');
    }
    if (alg === undefined || !accepted.has(alg)) throw new InvalidToken('the token is signed with an algorithm that is not accepted');
    let payload: JWTPayload | undefined;
    let lastError: unknown;
    for (const k of keys) {
      if (k.alg !== alg || (kid !== undefined && k.kid !== undefined && k.kid !== kid)) continue;
      try {
        ({ payload } = await jwtVerify(token, k.key, keyOptions.get(alg)));
        break;
      } catch (e) {
        lastError = e;
        if (!(e instanceof joseErrors.JWSSignatureVerificationFailed)) break;
      }
    }
    if (!payload && jwks && jwksAlgs.has(alg) && (lastError === undefined || lastError instanceof joseErrors.JWSSignatureVerificationFailed)) {
      try {
        ({ payload } = await jwtVerify(token, jwks, jwksOptions));
      } catch (e) {
        if (!(e instanceof joseErrors.JOSEError) || e instanceof joseErrors.JWKSTimeout) {
          throw new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "realtime": the JWKS ${cfg.jwks?.url ?? cfg.jwks?.file} could not be read: ${(e as Error).message}`, { cause: e });
        }
        lastError = e;
      }
    }
    if (!payload) throw new InvalidToken(lastError === undefined ? 'no key matches the token' : describe(lastError));
    return {
      sub: typeof payload.sub === 'string' ? payload.sub : null,
      claims: payload as Record<string, unknown>,
      expiresAt: typeof payload.exp === 'number' ? payload.exp * 1000 + tolerance : null,
    };
  };
}
