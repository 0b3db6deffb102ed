/**
 * Who may subscribe to and publish on which topics: ordered rules from the
 * config, where a rule's topic may bind a segment to a JWT claim
 * (`user/{sub}/**`). Subscribe and publish rights are separate.
 */
import { BextError } from '../../plugin-api/index.js';

type ClaimValue = string | number | boolean | (string | number | boolean)[];

/** A right: anyone, any verified token, nobody, or a token holding these claims. */
export type Access = 'public' | 'authenticated' | 'none' | { claims: Record<string, ClaimValue> };

/** One rule of `plugins.realtime.rules`. */
export interface RuleConfig {
  /** Topic pattern: literal segments, `*`, `**`, and `{claim}` segments bound to the token's claim. */
  topic: string;
  subscribe?: Access;
  publish?: Access;
}

/** A verified client: its token's claims, or null for an anonymous client. */
export interface Principal {
  sub: string | null;
  claims: Record<string, unknown>;
  /** Expiry in ms since the epoch (after clock tolerance), or null when the token has none. */
  expiresAt: number | null;
}

export type Verdict = { ok: true } | { ok: false; reason: string };

const ALLOW: Verdict = { ok: true };
const PLACEHOLDER = /^\{([A-Za-z0-9_.-]+)\}$/;

interface Rule {
  source: string;
  /** Segments with placeholders read as `*`, for matching. */
  shape: string[];
  /** Segment index → claim name, for placeholders. */
  binds: [number, string][];
  subscribe: Access;
  publish: Access;
}

function claimHolds(claims: Record<string, unknown>, name: string, want: ClaimValue): boolean {
  const have = claims[name];
  if (have === undefined) return false;
  const accepted = Array.isArray(want) ? want : [want];
  return Array.isArray(have) ? have.some((h) => accepted.includes(h as string)) : accepted.includes(have as string);
}

function permits(a: Access, p: Principal | null): boolean {
  if (a === 'public') return true;
  if (a === 'none' || p === null) return false;
  if (a === 'authenticated') return true;
  for (const [name, want] of Object.entries(a.claims)) if (!claimHolds(p.claims, name, want)) return false;
  return true;
}

/** Whether some topic is matched by both patterns (`*` one segment, `**` any number). */
export function intersects(a: readonly string[], b: readonly string[], i = 0, j = 0): boolean {
  if (i === a.length && j === b.length) return true;
  if (i < a.length && a[i] === '**') return intersects(a, b, i + 1, j) || (j < b.length && intersects(a, b, i, j + 1));
  if (j < b.length && b[j] === '**') return intersects(a, b, i, j + 1) || (i < a.length && intersects(a, b, i + 1, j));
  if (i === a.length || j === b.length) return false;
  if (a[i] === '*' || b[j] === '*' || a[i] === b[j]) return intersects(a, b, i + 1, j + 1);
  return false;
}

/** Whether every topic matched by `sub` is matched by `rule`. */
export function covers(rule: readonly string[], sub: readonly string[], i = 0, j = 0): boolean {
  if (i === rule.length) return j === sub.length;
  const r = rule[i]!;
  if (r === '**') {
    if (i === rule.length - 1) return true;
    for (let k = j; k <= sub.length; k++) if (covers(rule, sub, i + 1, k)) return true;
    return false;
  }
  if (j === sub.length) return false;
  const s = sub[j]!;
  if (s === '**') return false;
  if (r === '*' || r === s) return covers(rule, sub, i + 1, j + 1);
  return false;
}

function configError(path: string, what: string, hint?: string): BextError {
  return new BextError('BEXT_ERR_CONFIG_INVALID', `bext.config.json: $.plugins.realtime${path}: ${what}`, hint ? { hint } : {});
}

/**
 * The compiled rules. The first rule whose topic meets a request decides;
 * for a wildcard subscription every rule it overlaps, up to the first that
 * covers it whole, must allow it, so a pattern never reaches a topic its
 * subscriber could not subscribe to by name.
 *
 * @example
 * ```ts
 * const rules = new Rules([{ topic: 'user/{sub}/**', subscribe: 'authenticated' }, { topic: '**', subscribe: 'public' }]);
 * rules.subscribe(['user', 'alice'], { sub: 'alice', claims: { sub: 'alice' }, expiresAt: null }); // { ok: true }
 * ```
 */
export class Rules {
  readonly #rules: Rule[];

  constructor(rules: RuleConfig[]) {
    this.#rules = rules.map((r, i) => {
      const segs = r.topic.split('/');
      const binds: [number, string][] = [];
      const shape = segs.map((s, k) => {
        const m = PLACEHOLDER.exec(s);
        if (m) {
          binds.push([k, m[1]!]);
          return '*';
        }
        if (s !== '*' && s !== '**' && !/^[a-z0-9_.-]+$/i.test(s)) {
          throw configError(`.rules[${i}].topic`, `segment ${JSON.stringify(s)} is not a topic segment, "*", "**" or "{claim}"`);
        }
        return s;
      });
      return { source: r.topic, shape, binds, subscribe: r.subscribe ?? 'none', publish: r.publish ?? 'none' };
    });
  }

  /** The rule's shape with claim segments replaced by the principal's values; null when a claim is missing. */
  #bound(r: Rule, p: Principal | null): string[] | null {
    if (r.binds.length === 0) return r.shape;
    if (p === null) return null;
    const out = r.shape.slice();
    for (const [k, name] of r.binds) {
      const v = p.claims[name];
      if ((typeof v !== 'string' && typeof v !== 'number') || !/^[a-z0-9_.-]+$/i.test(String(v))) return null;
      out[k] = String(v);
    }
    return out;
  }

  /** May this principal subscribe to the topic or pattern? `presence/<t>` follows the rights on `<t>`. */
  subscribe(segs: readonly string[], p: Principal | null): Verdict {
    if (segs[0] === 'presence' && segs.length > 1) return this.#check(segs.slice(1), p, 'subscribe');
    return this.#check(segs, p, 'subscribe');
  }

  /** May this principal publish to the topic? Presence topics belong to the hub alone. */
  publish(segs: readonly string[], p: Principal | null): Verdict {
    if (segs[0] === 'presence') return { ok: false, reason: 'presence topics are published by the hub only' };
    return this.#check(segs, p, 'publish');
  }

  #check(segs: readonly string[], p: Principal | null, right: 'subscribe' | 'publish'): Verdict {
    for (const r of this.#rules) {
      if (!intersects(r.shape, segs)) continue;
      const access = r[right];
      if (!permits(access, p)) {
        return { ok: false, reason: p === null && access !== 'none' ? `rule "${r.source}" requires a token to ${right}` : `rule "${r.source}" does not allow this client to ${right}` };
      }
      const bound = this.#bound(r, p);
      if (bound === null || !covers(bound, segs)) {
        if (r.binds.length) return { ok: false, reason: `rule "${r.source}" binds this topic to other clients` };
        continue;
      }
      return ALLOW;
    }
    return { ok: false, reason: `no rule allows ${right} here` };
  }
}
