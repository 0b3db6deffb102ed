import { afterEach, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { plugin, until } from '../../test/helpers.js';

const running: Bext[] = [];
afterEach(async () => {
  while (running.length) await running.pop()!.close();
});

describe('health', () => {
  it("reports ready with each plugin's state", async () => {
    const b = await startBext({ plugins: ['health', 'static'] });
    running.push(b);
    const r = await fetch(`${b.url}/health`);
    expect(r.status).toBe(200);
    const j = await r.json();
    expect(j).toMatchObject({ status: 'ok', ready: true });
    expect(j.plugins.map((p: { name: string }) => p.name)).toEqual(['health', 'static']);
    expect((await fetch(`${b.url}/health/live`)).status).toBe(200);
    expect((await fetch(`${b.url}/health/ready`)).status).toBe(200);
  });

  it('answers 503 while a fail-closed plugin is quarantined, and 200 again after it recovers', async () => {
    const guard = plugin('guard', { hooks: { onRequest: { match: { paths: ['/guarded/**'] } } }, failMode: 'closed', limits: { quarantineAfter: 2 } }, `
globalThis.__guardFail = true;
export default () => ({ onRequest() { if (globalThis.__guardFail) throw new Error('down'); } });`);
    const b = await startBext({ plugins: ['health', guard], quarantineBackoffMs: 100 });
    running.push(b);
    await fetch(`${b.url}/guarded/a`);
    await fetch(`${b.url}/guarded/a`);
    const r = await fetch(`${b.url}/health`);
    expect(r.status).toBe(503);
    const j = await r.json();
    expect(j.status).toBe('unavailable');
    expect(j.plugins.find((p: { name: string }) => p.name === 'guard')).toMatchObject({ state: 'quarantined', errors: 2 });
    (globalThis as Record<string, unknown>).__guardFail = false;
    await until(async () => (await fetch(`${b.url}/guarded/a`)).status === 404, 5000, 'guard recovery');
    expect((await fetch(`${b.url}/health`)).status).toBe(200);
  });

  it('answers 503 while draining', async () => {
    const b = await startBext({ plugins: ['health'] });
    const k = b.kernel;
    const svc = k.loaded()[0]!;
    expect(svc.state).toBe('loaded');
    expect(k.ready).toBe(true);
    await b.close();
    expect(k.ready).toBe(false);
  });
});
