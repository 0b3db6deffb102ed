import { afterAll, beforeAll, expect, it } from 'vitest';
import { startBext, type Bext } from '__BEXT__/sdk/harness.js';

let b: Bext;
beforeAll(async () => {
  b = await startBext({ plugins: [{ dir: import.meta.dirname }], config: { plugins: { '__NAME__': { blockedAgents: ['BadBot'] } } } });
});
afterAll(() => b.close());

it('tags the responses of requests it lets through', async () => {
  const r = await fetch(`${b.url}/anything`);
  expect(r.headers.get('x-__NAME__')).toBe('seen');
});

it('refuses blocked user agents', async () => {
  const r = await fetch(`${b.url}/anything`, { headers: { 'user-agent': 'BadBot/1.0' } });
  expect(r.status).toBe(403);
});
