import { describe, expect, it } from 'vitest';
import { TokenBuckets } from './bucket.js';

describe('TokenBuckets', () => {
  it('starts full, refills at the rate, never beyond capacity', () => {
    const t = new TokenBuckets({ capacity: 5, refillPerSecond: 2 });
    const b = t.get('k', 1000);
    expect(b.tokens).toBe(5);
    b.tokens -= 5;
    expect(t.get('k', 1500).tokens).toBe(1);
    expect(t.msUntil(t.get('k', 1500), 2)).toBe(500);
    expect(t.get('k', 60_000).tokens).toBe(5);
    expect(t.msUntil(t.get('k', 60_000), 1)).toBe(0);
  });

  it('stays within maxKeys, dropping full buckets before busy ones', () => {
    const t = new TokenBuckets({ capacity: 2, refillPerSecond: 1, maxKeys: 4 });
    t.get('busy', 0).tokens = 0;
    for (let i = 0; i < 10; i++) t.get(`idle${i}`, 0);
    expect(t.size).toBeLessThanOrEqual(4);
    expect(t.get('busy', 0).tokens).toBe(0);
  });
});
