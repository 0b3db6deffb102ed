/**
 * Rate limiter: token buckets per rule and key. In memory the check is
 * synchronous and allocation-light; with Redis every request costs one
 * atomic script call, and a Redis outage fails open.
 */
import { createHash } from 'node:crypto';
import ipaddr from 'ipaddr.js';
import { decodeJwt } from 'jose';
import { BextError, compileMatch, definePlugin, type Headers, type MatchFn, type MatchSpec, type RequestDecision, type TrustedRequest } from '../../plugin-api/index.js';
import { TokenBuckets, type Bucket } from '../../plugin-api/bucket.js';
import { cidrSet, clientAddress, parseAddress } from '../../plugin-api/net.js';
import { RedisStore } from './redis-store.js';

/** One rule of this plugin's config. */
export interface RuleConfig {
  name: string;
  match?: MatchSpec;
  key: string[];
  limit: number;
  windowSeconds: number;
  burst?: number;
  cost: number;
}

/** This plugin's section of bext.config.json (defaults applied by the kernel). */
export interface RateLimitConfig {
  rules: RuleConfig[];
  trustedProxies: string[];
  ipv6Subnet: number;
  apiKeyHeader: string;
  headers: boolean;
  maxKeys: number;
  redisUrl?: string;
  redis: { url?: string; keyPrefix: string; timeoutMs: number };
}

type KeyFn = (req: TrustedRequest) => string | null;

interface Rule {
  name: string;
  match: MatchFn | null;
  keyOf: KeyFn;
  capacity: number;
  perMs: number;
  cost: number;
  limit: string;
  policy: string;
  buckets: TokenBuckets;
}

const MEMO_MAX = 4096;

export default definePlugin(async (host) => {
  const cfg = host.config<RateLimitConfig>();
  const clientOf = clientAddress(cidrSet(cfg.trustedProxies, '$.plugins.ratelimit.trustedProxies'));

  // An IPv6 host owns a whole prefix; keying by the full address would give it billions of buckets.
  const prefixMemo = new Map<string, string>();
  const ipKey = (addr: string): string => {
    if (!addr.includes(':')) return addr;
    let k = prefixMemo.get(addr);
    if (k !== undefined) return k;
    const a = parseAddress(addr);
    k = !a ? addr : a.kind() === 'ipv4' || cfg.ipv6Subnet === 128 ? a.toString() : ipaddr.IPv6.networkAddressFromCIDR(`${a.toString()}/${cfg.ipv6Subnet}`).toString();
    if (prefixMemo.size >= MEMO_MAX) prefixMemo.clear();
    prefixMemo.set(addr, k);
    return k;
  };
  const header = (req: TrustedRequest, name: string): string | null => {
    const v = req.headers[name];
    return typeof v === 'string' && v !== '' ? v : Array.isArray(v) && v.length ? v[0]! : null;
  };
  // API keys are secrets: buckets (and Redis keys) carry a digest, never the key.
  const digest = (s: string) => createHash('sha256').update(s).digest('base64url').slice(0, 22);

  const source = (src: string): KeyFn => {
    switch (src) {
      case 'ip': return (req) => ipKey(clientOf(req));
      case 'global': return () => 'global';
      case 'tenant': return (req) => (typeof req.ctx.tenant === 'string' ? req.ctx.tenant : req.host);
      case 'apikey': return (req) => {
        const v = header(req, cfg.apiKeyHeader);
        return v === null ? null : digest(v);
      };
      case 'jwt-sub': return (req) => {
        // The limiter runs before auth, so the subject is read unverified: a forged one only buys a bucket
        // for a request that auth then refuses. Pair this source with an `ip` rule.
        const auth = req.ctx.auth as { subject?: unknown } | undefined;
        if (typeof auth?.subject === 'string') return auth.subject;
        const h = header(req, 'authorization');
        if (h === null || !/^bearer /i.test(h)) return null;
        try {
          const sub = decodeJwt(h.slice(7).trim()).sub;
          return typeof sub === 'string' ? sub : null;
        } catch {
          // Not a JWT: no subject to key by; the next source decides.
          return null;
        }
      };
      default: {
        const name = src.slice('header:'.length);
        return (req) => {
          const v = header(req, name);
          return v;
        };
      }
    }
  };
  const keyFn = (sources: string[]): KeyFn => {
    // One source: its value is the key, no allocation. Several: the value is tagged with its source, so an
    // API key and an address that happen to be equal strings never share a bucket.
    if (sources.length === 1) return source(sources[0]!);
    const fns = sources.map((src) => [`${src}:`, source(src)] as const);
    return (req) => {
      for (const [tag, f] of fns) {
        const k = f(req);
        if (k !== null) return tag + k;
      }
      return null;
    };
  };

  const seenNames = new Set<string>();
  cfg.rules.forEach((r, i) => {
    // Names key the shared buckets in Redis: two rules of one name would silently share a budget.
    if (seenNames.has(r.name)) throw new BextError('BEXT_ERR_CONFIG_INVALID', `bext.config.json: $.plugins.ratelimit.rules[${i}].name: "${r.name}" is already the name of an earlier rule`, { hint: 'give every rule its own name' });
    seenNames.add(r.name);
  });
  const rules: Rule[] = cfg.rules.map((r) => {
    const capacity = r.burst ?? r.limit;
    const perSecond = r.limit / r.windowSeconds;
    return {
      name: r.name,
      match: compileMatch(r.match),
      keyOf: keyFn(r.key),
      capacity,
      perMs: perSecond / 1000,
      cost: r.cost,
      limit: String(r.limit),
      policy: `${r.limit};w=${r.windowSeconds}${r.burst !== undefined ? `;burst=${r.burst}` : ''}`,
      buckets: new TokenBuckets({ capacity, refillPerSecond: perSecond, maxKeys: cfg.maxKeys }),
    };
  });

  const redisUrl = cfg.redis.url ?? cfg.redisUrl;
  const store = redisUrl ? new RedisStore({ url: redisUrl, timeoutMs: cfg.redis.timeoutMs, host }) : null;
  if (store) await store.ready(Math.max(1000, cfg.redis.timeoutMs * 10));

  /** The answer for a request that passed, or was refused, given the most constrained rule. */
  const verdict = (allowed: boolean, rule: Rule, tokens: number): RequestDecision => {
    const perMs = rule.perMs;
    const headers: Headers | null = cfg.headers || !allowed
      ? {
          'ratelimit-limit': rule.limit,
          'ratelimit-remaining': String(Math.max(0, Math.floor(tokens))),
          'ratelimit-reset': String(Math.ceil((rule.capacity - tokens) / perMs / 1000)),
          'ratelimit-policy': rule.policy,
        }
      : null;
    if (allowed) return headers ? { action: 'continue', responseHeaders: headers } : undefined;
    host.metric('limited_total', 1, { rule: rule.name }, 'counter');
    headers!['retry-after'] = String(Math.max(1, Math.ceil((rule.cost - tokens) / perMs / 1000)));
    headers!['content-type'] = 'application/json; charset=utf-8';
    return { action: 'respond', status: 429, headers: headers!, body: `{"error":"rate_limited","rule":"${rule.name}"}` };
  };

  // Scratch space for the synchronous memory path: no per-request arrays.
  const hitRules: Rule[] = [];
  const hitBuckets: Bucket[] = [];

  const inMemory = (req: TrustedRequest): RequestDecision => {
    const now = Date.now();
    let n = 0;
    for (const r of rules) {
      if (r.match !== null && !r.match(req.method, req.path, req.host)) continue;
      const key = r.keyOf(req);
      if (key === null) continue;
      hitRules[n] = r;
      hitBuckets[n++] = r.buckets.get(key, now);
    }
    if (n === 0) return;
    let allowed = true;
    for (let i = 0; i < n; i++) if (hitBuckets[i]!.tokens < hitRules[i]!.cost) { allowed = false; break; }
    // The rule reported is the one closest to refusing: fewest tokens left relative to its cost.
    let worst = 0;
    for (let i = 0; i < n; i++) {
      const b = hitBuckets[i]!;
      if (allowed) b.tokens -= hitRules[i]!.cost;
      if (b.tokens - hitRules[i]!.cost < hitBuckets[worst]!.tokens - hitRules[worst]!.cost) worst = i;
    }
    return verdict(allowed, hitRules[worst]!, hitBuckets[worst]!.tokens);
  };

  const viaRedis = async (req: TrustedRequest, redis: RedisStore): Promise<RequestDecision> => {
    const matched: Rule[] = [];
    const keys: string[] = [];
    const args: number[] = [];
    for (const r of rules) {
      if (r.match !== null && !r.match(req.method, req.path, req.host)) continue;
      const key = r.keyOf(req);
      if (key === null) continue;
      matched.push(r);
      keys.push(`${cfg.redis.keyPrefix}${r.name}:${key}`);
      args.push(r.capacity, r.perMs, r.cost);
    }
    if (matched.length === 0) return;
    const res = await redis.take(keys, args);
    if (res === null) return;
    let worst = 0;
    for (let i = 1; i < matched.length; i++) {
      if (res.tokens[i]! - matched[i]!.cost < res.tokens[worst]! - matched[worst]!.cost) worst = i;
    }
    return verdict(res.allowed, matched[worst]!, res.tokens[worst]!);
  };

  return {
    onRequest: store ? (req) => viaRedis(req, store) : inMemory,
    async dispose() {
      await store?.close();
    },
  };
});
