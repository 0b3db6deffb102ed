/**
 * Auth: JWT validation with jose and hashed API keys, required per route and
 * route group. A verified token is remembered until it expires, so a client
 * that repeats its token costs a Map lookup, not a signature check.
 */
import { createHash } from 'node:crypto';
import type { JWTPayload } from 'jose';
import { BextError, compileMatch, definePlugin, type MatchFn, type MatchSpec, type RequestDecision, type TrustedRequest } from '../../plugin-api/index.js';
import { createJwtVerifier, InvalidToken, type JwtConfig } from '../../plugin-api/jwt.js';

type Require = 'none' | 'optional' | 'jwt' | 'apikey' | 'any';
type ClaimValue = string | number | boolean | (string | number | boolean)[];

/** This plugin's section of bext.config.json (defaults applied by the kernel). */
export interface AuthConfig {
  jwt?: JwtConfig & { cookie?: string };
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

const CONFIG = 'bext.config.json: $.plugins.auth';
const CACHE_TTL_MS = 5 * 60_000;

function configError(path: string, what: string, hint?: string): BextError {
  return new BextError('BEXT_ERR_CONFIG_INVALID', `${CONFIG}${path}: ${what}`, hint ? { hint } : {});
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

  const verify = jwt ? await createJwtVerifier(jwt, { baseDir, where: '$.plugins.auth.jwt', plugin: 'auth' }) : null;

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

  /** Verifies a token; rejects with InvalidToken (an RFC 6750 description) when it does not hold. */
  const verifyJwt = async (token: string): Promise<Principal> => {
    const { payload, expiresAt } = await verify!(token);
    const scope = payload.scope ?? payload.scp;
    const scopes = typeof scope === 'string' ? scope.split(' ').filter(Boolean) : Array.isArray(scope) ? scope.map(String) : [];
    const until = Math.min(Date.now() + CACHE_TTL_MS, expiresAt);
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
        if (e instanceof InvalidToken) return invalid(rule.require, e.message);
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
