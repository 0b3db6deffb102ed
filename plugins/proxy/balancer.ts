/**
 * Load-balancing strategies. Each one is built once over every member of a
 * pool and asked to pick among those a predicate accepts (healthy, not yet
 * tried), so health changes never rebuild a strategy.
 */

/** What a strategy needs to know about a member. */
export interface Weighted {
  readonly weight: number;
  /** Requests (and WebSocket tunnels) in flight to this member. */
  active: number;
}

export type Strategy = 'round-robin' | 'least-connections' | 'ip-hash' | 'random';

export interface Balancer<M extends Weighted> {
  /**
   * A member that `ok` accepts, or null when it accepts none.
   * @param key the hash key (client address, header…) for `ip-hash`; ignored by the others.
   */
  pick(ok: (m: M) => boolean, key: string): M | null;
}

/**
 * nginx's smooth weighted round-robin: every pick raises each candidate's
 * current weight by its weight and lowers the winner's by the total, so a
 * 5:1:1 pool goes a,a,b,a,c,a,a rather than a,a,a,a,a,b,c.
 */
export function roundRobin<M extends Weighted>(members: readonly M[]): Balancer<M> {
  const current = new Float64Array(members.length);
  return {
    pick(ok) {
      let best = -1;
      let total = 0;
      for (let i = 0; i < members.length; i++) {
        const m = members[i]!;
        if (!ok(m)) continue;
        current[i]! += m.weight;
        total += m.weight;
        if (best === -1 || current[i]! > current[best]!) best = i;
      }
      if (best === -1) return null;
      current[best]! -= total;
      return members[best]!;
    },
  };
}

/**
 * Fewest in-flight requests per unit of weight. The scan starts one member
 * further each time, so ties (an idle pool) spread instead of all landing on
 * the first member.
 */
export function leastConnections<M extends Weighted>(members: readonly M[]): Balancer<M> {
  let start = 0;
  const n = members.length;
  return {
    pick(ok) {
      let best: M | null = null;
      let bestLoad = Infinity;
      start = start + 1 >= n ? 0 : start + 1;
      for (let k = 0; k < n; k++) {
        const m = members[(start + k) % n]!;
        if (!ok(m)) continue;
        const load = m.active / m.weight;
        if (load < bestLoad) {
          best = m;
          bestLoad = load;
        }
      }
      return best;
    },
  };
}

/**
 * Power of two choices: two members drawn at random in proportion to their
 * weights, the less loaded one wins. Nearly as even as least-connections
 * without a global scan's herd behaviour when several proxies share a pool.
 */
export function randomTwo<M extends Weighted>(members: readonly M[], rand: () => number = Math.random): Balancer<M> {
  const draw = (ok: (m: M) => boolean, total: number, skip: M | null): M | null => {
    let r = rand() * total;
    let last: M | null = null;
    for (const m of members) {
      if (m === skip || !ok(m)) continue;
      last = m;
      r -= m.weight;
      if (r < 0) return m;
    }
    return last;
  };
  return {
    pick(ok) {
      let total = 0;
      let count = 0;
      for (const m of members) {
        if (ok(m)) {
          total += m.weight;
          count++;
        }
      }
      if (count === 0) return null;
      const a = draw(ok, total, null)!;
      if (count === 1) return a;
      const b = draw(ok, total - a.weight, a)!;
      return b.active / b.weight < a.active / a.weight ? b : a;
    },
  };
}

/** 32-bit FNV-1a followed by murmur3's finaliser, so near keys land far apart on the ring. */
export function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Ring points per unit of weight; 160 keeps the spread within a few percent for small pools. */
const POINTS_PER_WEIGHT = 160;
const MAX_POINTS = 64 * 1024;

/**
 * Consistent hashing on a ring of virtual nodes (as many per member as its
 * weight asks). A key goes to the first acceptable member clockwise from its
 * hash, so when a member leaves or returns only the keys it owned move.
 */
export function ipHash<M extends Weighted & { readonly id: string }>(members: readonly M[]): Balancer<M> {
  const totalWeight = members.reduce((s, m) => s + m.weight, 0);
  const scale = Math.min(POINTS_PER_WEIGHT, Math.max(1, Math.floor(MAX_POINTS / totalWeight)));
  const pts: { at: number; m: number }[] = [];
  members.forEach((m, i) => {
    for (let v = 0; v < m.weight * scale; v++) pts.push({ at: hash32(`${m.id}#${v}`), m: i });
  });
  pts.sort((a, b) => a.at - b.at || a.m - b.m);
  const at = Uint32Array.from(pts, (p) => p.at);
  const owner = Uint16Array.from(pts, (p) => p.m);
  return {
    pick(ok, key) {
      const h = hash32(key);
      let lo = 0;
      let hi = at.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (at[mid]! < h) lo = mid + 1;
        else hi = mid;
      }
      if (at.length === 0) return null;
      const first = members[owner[lo % at.length]!]!;
      if (ok(first)) return first;
      // Walk clockwise past unacceptable owners; each member is tested once.
      let seen = 0;
      const tested = new Uint8Array(members.length);
      for (let k = 0; k < at.length && seen < members.length; k++) {
        const i = owner[(lo + k) % at.length]!;
        if (tested[i]) continue;
        tested[i] = 1;
        seen++;
        if (ok(members[i]!)) return members[i]!;
      }
      return null;
    },
  };
}

/** The strategy a pool's config names. */
export function makeBalancer<M extends Weighted & { readonly id: string }>(strategy: Strategy, members: readonly M[]): Balancer<M> {
  switch (strategy) {
    case 'round-robin':
      return roundRobin(members);
    case 'least-connections':
      return leastConnections(members);
    case 'ip-hash':
      return ipHash(members);
    case 'random':
      return randomTwo(members);
  }
}
