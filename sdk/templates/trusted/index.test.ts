import { afterAll, beforeAll, expect, it } from 'vitest';
import { startBext, type Bext } from '__BEXT__/sdk/harness.js';

let b: Bext;
beforeAll(async () => {
  b = await startBext({ plugins: [{ dir: import.meta.dirname }], config: { plugins: { '__NAME__': { greeting: 'hi' } } } });
});
afterAll(() => b.close());

it('answers its route and tags responses', async () => {
  const r = await fetch(`${b.url}/__NAME__/hello`);
  expect(r.status).toBe(200);
  expect(await r.text()).toBe('hi from __NAME__\n');
  expect(r.headers.get('x-__NAME__')).toBe('1');
});

it('blocks bad bots', async () => {
  expect((await fetch(`${b.url}/__NAME__/hello`, { headers: { 'user-agent': 'BadBot/1' } })).status).toBe(403);
});
