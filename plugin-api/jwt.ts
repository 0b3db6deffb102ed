/**
 * JWT verification shared by the plugins that accept tokens (auth, realtime),
 * so that every one of them holds the same line: each configured key fixes
 * its algorithm, the token's header only selects among configured keys, and
 * iss/aud/exp/nbf are checked with a clock tolerance.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import {
  createLocalJWKSet, createRemoteJWKSet, decodeProtectedHeader, errors as joseErrors, importJWK, importSPKI, importX509, jwtVerify,
  type JWK, type JWTPayload, type JWTVerifyGetKey, type JWTVerifyOptions, type KeyLike,
} from 'jose';
import { BextError } from './errors.js';

/** One verification key of a `jwt` config section. Exactly one of the key fields is set. */
export interface JwtKeyConfig {
  alg: string;
  kid?: string;
  secret?: string;
  secretBase64?: string;
  pem?: string;
  file?: string;
  jwk?: JWK;
}

/** A `jwt` config section (defaults applied by the kernel from the plugin's configSchema). */
export interface JwtConfig {
  keys: JwtKeyConfig[];
  jwks?: { url?: string; file?: string; algorithms: string[]; cacheMaxAgeSeconds: number };
  issuer?: string | string[];
  audience?: string | string[];
  clockToleranceSeconds: number;
  requireExp: boolean;
}

/** A token that does not verify. The message is an RFC 6750 `error_description`, safe to show the client. */
export class InvalidToken extends Error {}

export interface VerifiedToken {
  payload: JWTPayload;
  /** ms timestamp after which the token no longer verifies (exp plus tolerance), or Infinity without exp. */
  expiresAt: number;
}

export type JwtVerifier = (token: string) => Promise<VerifiedToken>;

/** What jose reports, in words for the client, without echoing token contents. */
function describe(e: unknown): string {
  if (e instanceof joseErrors.JWTExpired) return 'the token has expired';
  if (e instanceof joseErrors.JWTClaimValidationFailed) {
    if (e.claim === 'nbf') return 'the token is not valid yet';
    if (e.claim === 'aud') return 'the token is not meant for this audience';
    if (e.claim === 'iss') return 'the token comes from an issuer that is not trusted';
    return `the token's ${e.claim} claim is missing or invalid`;
  }
  if (e instanceof joseErrors.JOSEAlgNotAllowed) return 'the token is signed with an algorithm that is not accepted';
  if (e instanceof joseErrors.JWSSignatureVerificationFailed) return 'the token signature does not verify';
  if (e instanceof joseErrors.JWKSNoMatchingKey || e instanceof joseErrors.JWKSMultipleMatchingKeys) return 'no key matches the token';
  return 'the token is malformed';
}

/**
 * Builds a verifier from a `jwt` config section, importing every key once.
 * Throws BEXT_ERR_CONFIG_INVALID naming the entry at fault. The verifier
 * rejects with InvalidToken when the token does not hold, and with
 * BEXT_ERR_PLUGIN_FAILED when a JWKS cannot be fetched (a server-side
 * failure, not the client's).
 *
 * @example
 * ```ts
 * const verify = await createJwtVerifier(cfg.jwt, { baseDir: host.kernel?.siteDir ?? process.cwd(), where: '$.plugins.auth.jwt', plugin: 'auth' });
 * const { payload } = await verify(token);
 * ```
 */
export async function createJwtVerifier(cfg: JwtConfig, opts: { baseDir: string; where: string; plugin: string }): Promise<JwtVerifier> {
  const configError = (path: string, what: string, hint?: string) =>
    new BextError('BEXT_ERR_CONFIG_INVALID', `bext.config.json: ${opts.where}${path}: ${what}`, hint ? { hint } : {});
  const keys: { alg: string; kid?: string; key: KeyLike | Uint8Array }[] = [];
  for (const [i, k] of cfg.keys.entries()) {
    const at = `.keys[${i}]`;
    const given = [k.secret, k.secretBase64, k.pem, k.file, k.jwk].filter((x) => x !== undefined).length;
    if (given !== 1) throw configError(at, `give exactly one of secret, secretBase64, pem, file, jwk (found ${given})`);
    const hmac = k.alg.startsWith('HS');
    // A public key must never be usable as an HMAC secret, so the kind of key must fit its fixed algorithm.
    if (hmac !== (k.secret !== undefined || k.secretBase64 !== undefined || k.jwk?.kty === 'oct')) {
      throw configError(at, hmac ? `${k.alg} needs a shared secret (secret, secretBase64 or an oct jwk)` : `${k.alg} needs a public key (pem, file or jwk), not a secret`,
        'the algorithm is fixed by this key entry; a public key must never be usable as an HMAC secret');
    }
    let key: KeyLike | Uint8Array;
    try {
      if (k.secret !== undefined) key = new TextEncoder().encode(k.secret);
      else if (k.secretBase64 !== undefined) key = Buffer.from(k.secretBase64, 'base64');
      else if (k.jwk) key = await importJWK(k.jwk, k.alg);
      else {
        const pem = k.pem ?? readFileSync(resolve(opts.baseDir, k.file!), 'utf8');
        key = pem.includes('BEGIN CERTIFICATE') ? await importX509(pem, k.alg) : await importSPKI(pem, k.alg);
      }
    } catch (e) {
      throw configError(at, `cannot use this key for ${k.alg}: ${(e as Error).message}`);
    }
    const bits = parseInt(k.alg.slice(2), 10);
    if (hmac && key instanceof Uint8Array && key.byteLength * 8 < bits) {
      throw configError(at, `${k.alg} needs a secret of at least ${bits / 8} bytes, found ${key.byteLength}`);
    }
    keys.push({ alg: k.alg, kid: k.kid, key });
  }
  let jwks: JWTVerifyGetKey | null = null;
  if (cfg.jwks) {
    const j = cfg.jwks;
    if ((j.url === undefined) === (j.file === undefined)) throw configError('.jwks', 'give exactly one of url or file');
    if (j.algorithms.some((a) => a.startsWith('HS'))) throw configError('.jwks.algorithms', 'a JWKS carries public keys; HS* algorithms do not belong here');
    if (j.url) jwks = createRemoteJWKSet(new URL(j.url), { cacheMaxAge: j.cacheMaxAgeSeconds * 1000, cooldownDuration: 30_000 });
    else {
      try {
        jwks = createLocalJWKSet(JSON.parse(readFileSync(resolve(opts.baseDir, j.file!), 'utf8')) as { keys: JWK[] });
      } catch (e) {
        throw configError('.jwks.file', `cannot read a JWKS from ${j.file}: ${(e as Error).message}`);
      }
    }
  }
  if (keys.length === 0 && !jwks) throw configError('', 'has neither keys nor jwks, so no token could ever verify');

  const jwksAlgs = new Set(cfg.jwks?.algorithms ?? []);
  const accepted = new Set([...keys.map((k) => k.alg), ...jwksAlgs]);
  const options = (algorithms: string[]): JWTVerifyOptions => ({
    algorithms,
    issuer: cfg.issuer,
    audience: cfg.audience,
    clockTolerance: cfg.clockToleranceSeconds,
    requiredClaims: cfg.requireExp ? ['exp'] : [],
  });
  const keyOptions = new Map([...new Set(keys.map((k) => k.alg))].map((a) => [a, options([a])]));
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
    // The algorithm comes from configuration: the header only selects among keys configured for it.
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
        // Another key of the same algorithm may still verify it (rotation without kids); anything past the signature is final.
        if (!(e instanceof joseErrors.JWSSignatureVerificationFailed)) break;
      }
    }
    if (!payload && jwks && jwksAlgs.has(alg) && (lastError === undefined || lastError instanceof joseErrors.JWSSignatureVerificationFailed)) {
      try {
        ({ payload } = await jwtVerify(token, jwks, jwksOptions));
      } catch (e) {
        // Keys that cannot be fetched are our failure, not the client's: the hook fails (503 when closed), it does not answer 401.
        if (!(e instanceof joseErrors.JOSEError) || e instanceof joseErrors.JWKSTimeout) {
          throw new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "${opts.plugin}": the JWKS ${cfg.jwks?.url ?? cfg.jwks?.file} could not be read: ${(e as Error).message}`, { cause: e });
        }
        lastError = e;
      }
    }
    if (!payload) throw new InvalidToken(lastError === undefined ? 'no key matches the token' : describe(lastError));
    return { payload, expiresAt: typeof payload.exp === 'number' ? payload.exp * 1000 + tolerance : Infinity };
  };
}
