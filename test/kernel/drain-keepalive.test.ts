/**
 * kernel.close() and idle keep-alive connections. By default a drain cuts
 * them at once, and a request a client sends on one at that moment fails.
 * With `idle: 'keep'` (what cluster workers use in a rolling restart) they
 * stay open: a request on one is answered, with `Connection: close`, and an
 * unused one ends at the keep-alive timeout the responses announce.
 */
import { Client } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { plugin } from '../helpers.js';

const hello = plugin('hello', { routes: [{ path: '/hello' }] }, `
export default () => ({ onRoute() { return { status: 200, body: 'hello' }; } });`);

let b: Bext | null = null;
let client: Client | null = null;
afterEach(async () => {
  await client?.destroy();
  await b?.close();
  client = null;
  b = null;
});

async function get(c: Client) {
  const r = await c.request({ path: '/hello', method: 'GET' });
  return { status: r.statusCode, headers: r.headers, body: await r.body.text() };
}

describe('drain and idle keep-alive connections', () => {
  it("idle: 'keep' answers a request sent on an idle keep-alive connection after the drain began, with Connection: close", async () => {
    b = await startBext({ plugins: [hello] });
    client = new Client(b.url);
    const first = await get(client);
    expect(first.status).toBe(200);
    expect(String(first.headers['keep-alive'])).toMatch(/timeout=\d+/);
    const closing = b.kernel.close(10_000, { idle: 'keep' });
    const second = await get(client);
    expect(second).toMatchObject({ status: 200, body: 'hello' });
    expect(second.headers.connection).toBe('close');
    await closing;
  });

  it('the default cuts that connection, so the same request fails (the race the option avoids)', async () => {
    b = await startBext({ plugins: [hello] });
    client = new Client(b.url);
    expect((await get(client)).status).toBe(200);
    const closing = b.kernel.close(10_000);
    await expect(get(client)).rejects.toThrow();
    await closing;
  });

  it("idle: 'keep' leaves an unused keep-alive connection open until the client closes it, ahead of the announced timeout", async () => {
    b = await startBext({ plugins: [hello], config: { server: { keepAliveTimeoutMs: 3000 } } });
    client = new Client(b.url);
    expect((await get(client)).status).toBe(200);
    const t0 = performance.now();
    await b.kernel.close(15_000, { idle: 'keep' });
    const took = performance.now() - t0;
    // undici closes its side 2 s before the announced timeout=3: the drain waited for that, not for the deadline.
    expect(took).toBeGreaterThan(500);
    expect(took).toBeLessThan(10_000);
  });
});
