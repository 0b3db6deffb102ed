import { afterAll, beforeAll, expect, it } from 'vitest';
import { buildWasmPlugin } from '__BEXT__/sdk/build.js';
import { startBext, type Bext } from '__BEXT__/sdk/harness.js';

let b: Bext;
beforeAll(async () => {
  await buildWasmPlugin(import.meta.dirname);
  b = await startBext({ plugins: [{ dir: import.meta.dirname }] });
}, 60_000);
afterAll(() => b.close());

it('answers its own path', async () => {
  const r = await fetch(`${b.url}/__NAME__/hello`);
  expect(r.status).toBe(200);
  expect(await r.text()).toBe('hello from __NAME__\n');
});

it('refuses bad bots and tags other responses', async () => {
  expect((await fetch(`${b.url}/x`, { headers: { 'user-agent': 'BadBot/1' } })).status).toBe(403);
  expect((await fetch(`${b.url}/x`)).headers.get('x-__NAME__')).toBe('1');
});
