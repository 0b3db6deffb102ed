import { describe, expect, it } from 'vitest';
import { hash32, ipHash, leastConnections, randomTwo, roundRobin } from './balancer.js';

interface M {
  id: string;
  weight: number;
  active: number;
}

const pool = (...weights: number[]): M[] => weights.map((weight, i) => ({ id: `http://10.0.0.${i + 1}:80`, weight, active: 0 }));
const all = () => true;

function tally(members: M[], picks: (M | null)[]): number[] {
  return members.map((m) => picks.filter((p) => p === m).length);
}

describe('round-robin (smooth weighted)', () => {
  it('interleaves by weight instead of bursting', () => {
    const ms = pool(5, 1, 1);
    const b = roundRobin(ms);
    const seq = Array.from({ length: 7 }, () => ms.indexOf(b.pick(all, '')!));
    expect(seq).toEqual([0, 0, 1, 0, 2, 0, 0]);
  });

  it('gives each member exactly its weighted share', () => {
    const ms = pool(1, 2, 3);
    const b = roundRobin(ms);
    expect(tally(ms, Array.from({ length: 600 }, () => b.pick(all, '')))).toEqual([100, 200, 300]);
  });

  it('skips members the predicate refuses, and returns null when it refuses all', () => {
    const ms = pool(1, 1, 1);
    const b = roundRobin(ms);
    const picks = Array.from({ length: 10 }, () => b.pick((m) => m !== ms[1], ''));
    expect(tally(ms, picks)).toEqual([5, 0, 5]);
    expect(b.pick(() => false, '')).toBeNull();
  });
});

describe('least-connections', () => {
  it('picks the member with the fewest in-flight requests per weight', () => {
    const ms = pool(1, 1, 2);
    ms[0]!.active = 3;
    ms[1]!.active = 1;
    ms[2]!.active = 3; // 1.5 per weight
    expect(leastConnections(ms).pick(all, '')).toBe(ms[1]);
  });

  it('spreads ties across an idle pool', () => {
    const ms = pool(1, 1, 1, 1);
    const b = leastConnections(ms);
    expect(tally(ms, Array.from({ length: 400 }, () => b.pick(all, '')))).toEqual([100, 100, 100, 100]);
  });

  it('balances in-flight load when requests stay open', () => {
    const ms = pool(1, 3);
    const b = leastConnections(ms);
    for (let i = 0; i < 40; i++) b.pick(all, '')!.active++;
    expect(ms.map((m) => m.active)).toEqual([10, 30]);
  });
});

describe('ip-hash (consistent hashing)', () => {
  const keys = Array.from({ length: 4000 }, (_, i) => `198.51.${i >> 8}.${i & 255}`);

  it('sends a key to the same member every time', () => {
    const b = ipHash(pool(1, 1, 1));
    for (const k of keys.slice(0, 100)) expect(b.pick(all, k)).toBe(b.pick(all, k));
  });

  it('spreads keys in proportion to weight', () => {
    const ms = pool(1, 1, 2);
    const b = ipHash(ms);
    const share = tally(ms, keys.map((k) => b.pick(all, k))).map((n) => n / keys.length);
    expect(share[0]).toBeGreaterThan(0.2);
    expect(share[0]).toBeLessThan(0.3);
    expect(share[2]).toBeGreaterThan(0.44);
    expect(share[2]).toBeLessThan(0.56);
  });

  it('moves only the keys of a member that leaves, and they come back when it returns', () => {
    const ms = pool(1, 1, 1, 1, 1);
    const b = ipHash(ms);
    const before = keys.map((k) => b.pick(all, k));
    const gone = ms[2]!;
    const during = keys.map((k) => b.pick((m) => m !== gone, k));
    let moved = 0;
    keys.forEach((_, i) => {
      if (before[i] !== during[i]) {
        moved++;
        expect(before[i]).toBe(gone);
      }
    });
    // Only its own ~1/5 of the keys move; a modulo hash would move ~4/5.
    expect(moved / keys.length).toBeGreaterThan(0.12);
    expect(moved / keys.length).toBeLessThan(0.28);
    expect(keys.map((k) => b.pick(all, k))).toEqual(before);
  });

  it('hashes near keys far apart', () => {
    expect(hash32('10.0.0.1')).not.toBe(hash32('10.0.0.2'));
    expect(Math.abs(hash32('10.0.0.1') - hash32('10.0.0.2'))).toBeGreaterThan(1000);
  });
});

describe('random (power of two choices)', () => {
  it('follows the weights when the pool is idle', () => {
    let seed = 42;
    const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
    const ms = pool(1, 3);
    const b = randomTwo(ms, rand);
    const share = tally(ms, Array.from({ length: 4000 }, () => b.pick(all, ''))).map((n) => n / 4000);
    // Two draws in a two-member pool give each pick both members at the same load: the first drawn wins.
    expect(share[1]).toBeGreaterThan(0.65);
    expect(share[1]).toBeLessThan(0.85);
  });

  it('prefers the less loaded of the two it draws', () => {
    const ms = pool(1, 1);
    ms[0]!.active = 5;
    const b = randomTwo(ms);
    for (let i = 0; i < 50; i++) expect(b.pick(all, '')).toBe(ms[1]);
  });

  it('keeps in-flight load even across a larger pool', () => {
    const ms = pool(1, 1, 1, 1, 1, 1, 1, 1);
    const b = randomTwo(ms);
    for (let i = 0; i < 800; i++) b.pick(all, '')!.active++;
    const loads = ms.map((m) => m.active);
    // Plain random would leave a spread of ~±30; two choices keep it within a few.
    expect(Math.max(...loads) - Math.min(...loads)).toBeLessThanOrEqual(6);
  });
});
