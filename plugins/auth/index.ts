/**
 * Auth: JWT validation with jose and hashed API keys, required per route and
 * route group. A verified token is remembered until it expires, so a client
 * that repeats its token costs a Map lookup, not a signature check.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import {
  createLocalJWKSet, createRemoteJWKSet, decodeProtectedHeader, errors as joseErrors, importJWK, importSPKI, importX509, jwtVerify,
  type JWK, type JWTPayload, type JWTVerifyGetKey, type JWTVerifyOptions, type KeyLike,
} from 'jose';
import { BextError, compileMatch, definePlugin, type MatchFn, type MatchSpec, type RequestDecision, type TrustedRequest } from '../../plugin-api/index.js';

type Require = 'none' | 'optional' | 'jwt' | 'apikey' | 'any';
type ClaimValue = string | number | boolean | (string | number | boolean)[];

/** This plugin's section of bext.config.json (defaults applied by the kernel). */
export interface AuthConfig {
  jwt?: {
    keys: { alg: string; kid?: string; secret?: string; secretBase64?: string; pem?: string; file?: string; jwk?: JWK }[];
    jwks?: { url?: string; file?: string; algorithms: string[]; cacheMaxAgeSeconds: number };
    issuer?: string | string[];
    audience?: string | string[];
    clockToleranceSeconds: number;
    requireExp: boolean;
    cookie?: string;
  };
  apiKeys?: { header: string; keys: { id: string; sha256: string; scopes: string[] }[] };
  rules: { groups?: string[]; match?: MatchSpec; require: Require; scopes?: string[]; claims?: Record<string, ClaimValue> }[];
  default: Require;
  realm: string;
  cacheSize: number;
}

/** What later plugins find in `req.ctx.auth`. */
export interface AuthCtx {
  method: 'jwt' | 'apikey';
  /** JWT `sub`, or the API key's id. */
  subject: string | null;
  scopes: readonly string[];
  /** The verified JWT claims (null for API keys). */
  claims: Readonly<JWTPayload> | null;
  /** The API key's id (null for JWTs). */
  keyId: string | null;
}

/** A credential that checked out, with its ready-made continue decision. */
interface Principal {
  decision: RequestDecision;
  auth: AuthCtx;
  scopes: ReadonlySet<string>;
  /** ms timestamp after which a cached JWT must be verified again. */
  until: number;
}

interface Rule {
  groups: Set<string> | null;
  match: MatchFn | null;
  require: Require;
  scopes: string[];
  claims: [string, ClaimValue][];
  missing: RequestDecision;
  forbidden: RequestDecision;
}

class Invalid extends Error {}

const CONFIG = 'bext.config.json: $.plugins.auth';
const CACHE_TTL_MS = 5 * 60_000;

function configError(path: string, what: string, hint?: string): BextError {
  return new BextError('BEXT_ERR_CONFIG_INVALID', `${CONFIG}${path}: ${what}`, hint ? { hint } : {});
}

/** RFC 6750 error descriptions for what jose reports, without echoing token contents. */
function describeJoseError(e: unknown): string {
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

function quote(s: string): string {
  return `"${s.replace(/["\\]/g, '')}"`;
}

function cookieValue(header: string | string[] | undefined, name: string): string | null {
  if (typeof header !== 'string') return null;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq !== -1 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim() || null;
  }
  return null;
}

export default definePlugin(async (host) => {
  const cfg = host.config<AuthConfig>();
  const baseDir = host.kernel?.siteDir ?? process.cwd();
  const realm = quote(cfg.realm);
  const jwt = cfg.jwt;
  const apiKeyHeader = cfg.apiKeys?.header;

  // ---- JWT keys: each carries the one algorithm it may verify.
  const keys: { alg: string; kid?: string; key: KeyLike | Uint8Array }[] = [];
  for (const [i, k] of (jwt?.keys ?? []).entries()) {
    const at = `.jwt.keys[${i}]`;
    const given = [k.secret, k.secretBase64, k.pem, k.file, k.jwk].filter((x) => x !== undefined).length;
    if (given !== 1) throw configError(at, `give exactly one of secret, secretBase64, pem, file, jwk (found ${given})`);
    const hmac = k.alg.startsWith('HS');
    if (hmac !== (k.secret !== undefined || k.secretBase64 !== undefined || (k.jwk?.kty === 'oct'))) {
      throw configError(at, hmac ? `${k.alg} needs a shared secret (secret, secretBase64 or an oct jwk)` : `${k.alg} needs a public key (pem, file or jwk), not a secret`,
        'the algorithm is fixed by this key entry; a public key must never be usable as an HMAC secret');
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
    if (hmac && key instanceof Uint8Array && key.byteLength * 8 < bits) {
      throw configError(at, `${k.alg} needs a secret of at least ${bits / 8} bytes, found ${key.byteLength}`);
    }
    keys.push({ alg: k.alg, kid: k.kid, key });
  }
  let jwks: JWTVerifyGetKey | null = null;
  if (jwt?.jwks) {
    const j = jwt.jwks;
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
  if (jwt && keys.length === 0 && !jwks) throw configError('.jwt', 'has neither keys nor jwks, so no token could ever verify');
  const jwksAlgs = new Set(jwt?.jwks?.algorithms ?? []);
  const acceptedAlgs = new Set([...keys.map((k) => k.alg), ...jwksAlgs]);
  const verifyOptions = (algorithms: string[]): JWTVerifyOptions => ({
    algorithms,
    issuer: jwt?.issuer,
    audience: jwt?.audience,
    clockTolerance: jwt?.clockToleranceSeconds ?? 0,
    requiredClaims: jwt?.requireExp ? ['exp'] : [],
  });
  const keyOptions = new Map([...new Set(keys.map((k) => k.alg))].map((a) => [a, verifyOptions([a])]));
  const jwksOptions = verifyOptions([...jwksAlgs]);

  // Keyed by the credential exactly as it arrived (the whole Authorization value), so a hit slices nothing.
  // Oldest-first eviction: tokens are short-lived, and a Map is several times cheaper per hit than an LRU.
  const cache = new Map<string, Principal>();
  const remember = (key: string, p: Principal) => {
    if (cfg.cacheSize === 0) return;
    if (cache.size >= cfg.cacheSize) cache.delete(cache.keys().next().value!);
    cache.set(key, p);
  };

  const principal = (auth: AuthCtx, until: number): Principal => ({
    decision: { action: 'continue', ctx: Object.freeze({ auth: Object.freeze(auth) }) },
    auth,
    scopes: new Set(auth.scopes),
    until,
  });

  /** Verifies a token; throws Invalid with an RFC 6750 description when it does not hold. */
  const verifyJwt = async (token: string): Promise<Principal> => {
    let alg: string | undefined;
    let kid: string | undefined;
    try {
      ({ alg, kid } = decodeProtectedHeader(token));
    } catch {
      throw new Invalid('the token is malformed');
    }
    // The algorithm comes from configuration: the header only selects among keys that were configured for it.
    if (alg === undefined || !acceptedAlgs.has(alg)) throw new Invalid('the token is signed with an algorithm that is not accepted');
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
        // Keys that cannot be fetched are our failure, not the client's: let the hook fail (closed: 503), not answer 401.
        if (!(e instanceof joseErrors.JOSEError) || e instanceof joseErrors.JWKSTimeout) {
          throw new BextError('BEXT_ERR_PLUGIN_FAILED', `plugin "auth": the JWKS ${jwt?.jwks?.url ?? jwt?.jwks?.file} could not be read: ${(e as Error).message}`, { cause: e });
        }
        lastError = e;
      }
    }
    if (!payload) throw new Invalid(lastError === undefined ? 'no key matches the token' : describeJoseError(lastError));
    const scope = payload.scope ?? payload.scp;
    const scopes = typeof scope === 'string' ? scope.split(' ').filter(Boolean) : Array.isArray(scope) ? scope.map(String) : [];
    const now = Date.now();
    const until = Math.min(now + CACHE_TTL_MS, typeof payload.exp === 'number' ? payload.exp * 1000 + (jwt?.clockToleranceSeconds ?? 0) * 1000 : Infinity);
    return principal({ method: 'jwt', subject: typeof payload.sub === 'string' ? payload.sub : null, scopes, claims: Object.freeze(payload), keyId: null }, until);
  };

  // ---- API keys: looked up by digest, so the configuration never holds a usable key.
  const apiKeys = new Map<string, Principal>();
  for (const k of cfg.apiKeys?.keys ?? []) {
    apiKeys.set(k.sha256, principal({ method: 'apikey', subject: k.id, scopes: k.scopes, claims: null, keyId: k.id }, Infinity));
  }

  // ---- Rules.
  const challenge = (require: Require, extra = ''): string | string[] => {
    const bearer = `Bearer realm=${realm}${extra}`;
    const apikey = `ApiKey realm=${realm}, header=${quote(apiKeyHeader ?? 'x-api-key')}`;
    return require === 'jwt' ? bearer : require === 'apikey' ? apikey : [bearer, apikey];
  };
  const answer = (status: 401 | 403, wwwAuthenticate: string | string[], error: string, description: string): RequestDecision => ({
    action: 'respond',
    status,
    headers: { 'www-authenticate': wwwAuthenticate, 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' },
    body: JSON.stringify({ error, error_description: description }),
  });
  const checkCan = (require: Require, where: string) => {
    const fix = 'configure it, or change what the rule requires';
    if (require === 'jwt' && !jwt) throw configError(where, 'requires a JWT, but plugins.auth.jwt is not configured', fix);
    if (require === 'apikey' && !cfg.apiKeys) throw configError(where, 'requires an API key, but plugins.auth.apiKeys is not configured', fix);
    if ((require === 'any' || require === 'optional') && !jwt && !cfg.apiKeys) {
      throw configError(where, `is "${require}", but neither plugins.auth.jwt nor plugins.auth.apiKeys is configured`, fix);
    }
  };
  const compileRule = (r: AuthConfig['rules'][number], where: string): Rule => {
    checkCan(r.require, where);
    const scopes = r.scopes ?? [];
    return {
      groups: r.groups ? new Set(r.groups) : null,
      match: compileMatch(r.match),
      require: r.require,
      scopes,
      claims: Object.entries(r.claims ?? {}),
      missing: answer(401, challenge(r.require), 'unauthorized', 'credentials are required'),
      forbidden: answer(403, r.require === 'apikey' ? challenge('apikey') : `Bearer realm=${realm}, error="insufficient_scope"${scopes.length ? `, scope=${quote(scopes.join(' '))}` : ''}`,
        'insufficient_scope', 'the credentials do not grant access to this resource'),
    };
  };
  const rules = cfg.rules.map((r, i) => compileRule(r, `.rules[${i}]`));
  const fallback = compileRule({ require: cfg.default }, '.default');

  const ruleFor = (req: TrustedRequest): Rule => {
    for (const r of rules) {
      if (r.groups !== null && (req.group === undefined || !r.groups.has(req.group))) continue;
      if (r.match !== null && !r.match(req.method, req.path, req.host)) continue;
      return r;
    }
    return fallback;
  };

  const claimHolds = (claims: JWTPayload | null, name: string, want: ClaimValue): boolean => {
    const have = claims?.[name];
    if (have === undefined) return false;
    const accepted = Array.isArray(want) ? want : [want];
    return Array.isArray(have) ? have.some((h) => accepted.includes(h as string)) : accepted.includes(have as string);
  };
  const admit = (rule: Rule, p: Principal): RequestDecision => {
    for (const s of rule.scopes) if (!p.scopes.has(s)) return denied(rule, 'scope');
    for (const [name, want] of rule.claims) if (!claimHolds(p.auth.claims, name, want)) return denied(rule, 'claim');
    return p.decision;
  };
  const denied = (rule: Rule, why: string): RequestDecision => {
    host.metric('denied_total', 1, { reason: why }, 'counter');
    return rule.forbidden;
  };
  const invalid = (require: Require, description: string): RequestDecision => {
    host.metric('denied_total', 1, { reason: 'invalid' }, 'counter');
    return answer(401, challenge(require, `, error="invalid_token", error_description=${quote(description)}`), 'invalid_token', description);
  };

  const withJwt = (rule: Rule, cacheKey: string, token: string): RequestDecision | Promise<RequestDecision> => {
    const hit = cache.get(cacheKey);
    if (hit !== undefined) {
      if (Date.now() < hit.until) return admit(rule, hit);
      cache.delete(cacheKey);
    }
    return verifyJwt(token).then(
      (p) => {
        remember(cacheKey, p);
        return admit(rule, p);
      },
      (e: unknown) => {
        if (e instanceof Invalid) return invalid(rule.require, e.message);
        throw e;
      },
    );
  };

  const fromJwt = (req: TrustedRequest, rule: Rule): RequestDecision | Promise<RequestDecision> | null => {
    const h = req.headers.authorization;
    if (typeof h === 'string' && h.length > 7 && (h.startsWith('Bearer ') || h.slice(0, 7).toLowerCase() === 'bearer ')) {
      return withJwt(rule, h, h.slice(7).trim());
    }
    const fromCookie = jwt?.cookie ? cookieValue(req.headers.cookie, jwt.cookie) : null;
    return fromCookie ? withJwt(rule, fromCookie, fromCookie) : null;
  };

  return {
    onRequest(req) {
      const rule = ruleFor(req);
      const require = rule.require;
      if (require === 'none') return;
      if (require !== 'jwt' && apiKeyHeader !== undefined) {
        const presented = req.headers[apiKeyHeader];
        if (typeof presented === 'string' && presented !== '') {
          const p = apiKeys.get(createHash('sha256').update(presented).digest('hex'));
          return p ? admit(rule, p) : invalid(require, 'the API key is not valid');
        }
      }
      if (require !== 'apikey' && jwt) {
        const d = fromJwt(req, rule);
        if (d !== null) return d;
      }
      if (require === 'optional') return;
      host.metric('denied_total', 1, { reason: 'missing' }, 'counter');
      return rule.missing;
    },
  };
});
