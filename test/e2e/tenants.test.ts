/**
 * Untrusted tenant code end to end: hostnames map to route groups, each
 * adding a tenant's QuickJS plugin that serves its own routes and renders
 * its pages under its own limits. A tenant that misbehaves is cut off and
 * quarantined while the other tenant keeps being served without an error.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { tmp } from '../helpers.js';

function tenantPlugin(name: string): string {
  const dir = mkdtempSync(join(tmp(), `${name}-`));
  writeFileSync(join(dir, 'bext-plugin.json'), JSON.stringify({
    name, version: '1.0.0', sandbox: 'quickjs', entry: 'plugin.js',
    hooks: { onRender: { priority: 80 } },
    routes: [{ path: '/api/hello' }, { path: '/api/spin' }, { path: '/api/bomb' }],
    needs: ['method', 'path', 'host'],
    limits: { timeoutMs: 50, memoryMb: 16, quarantineAfter: 3 },
    failMode: 'closed',
  }));
  writeFileSync(join(dir, 'plugin.js'), `
const NAME = ${JSON.stringify(name)};
export function onRoute(req) {
  if (req.path === '/api/spin') { for (;;) {} }
  if (req.path === '/api/bomb') { const a = []; for (;;) a.push('x'.repeat(1 << 16)); }
  return { status: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ tenant: NAME, host: req.host }) };
}
export function onRender(req) {
  return { status: 200, headers: { 'content-type': 'text/html' }, body: '<h1>' + NAME + ' page ' + req.path + '</h1>' };
}`);
  return dir;
}

let b: Bext;
const agent = new Agent({ connections: 32 });
const get = async (host: string, path: string) => {
  const r = await request(`${b.url}${path}`, { headers: { host }, dispatcher: agent });
  return { status: r.statusCode, body: await r.body.text() };
};

beforeAll(async () => {
  b = await startBext({
    plugins: [{ dir: tenantPlugin('tenant-a'), scope: 'group', grants: [] }, { dir: tenantPlugin('tenant-b'), scope: 'group', grants: [] }, 'health'],
    config: { groups: [{ name: 'a', hosts: ['a.test', '*.a.test'], add: ['tenant-a'] }, { name: 'b', hosts: ['b.test'], add: ['tenant-b'] }] },
    quarantineBackoffMs: 60_000,
  });
});
afterAll(async () => {
  await b.close();
  await agent.close();
});

describe('tenants', () => {
  it('each host reaches only its own tenant, for routes and rendered pages', async () => {
    expect(JSON.parse((await get('a.test', '/api/hello')).body)).toEqual({ tenant: 'tenant-a', host: 'a.test' });
    expect(JSON.parse((await get('shop.a.test', '/api/hello')).body).tenant).toBe('tenant-a');
    expect(JSON.parse((await get('b.test', '/api/hello')).body).tenant).toBe('tenant-b');
    expect((await get('b.test', '/about')).body).toBe('<h1>tenant-b page /about</h1>');
    // An unknown host gets neither tenant.
    expect((await get('c.test', '/api/hello')).status).toBe(404);
    expect((await get('c.test', '/about')).status).toBe(404);
  });

  it('a tenant that spins and bombs is contained and quarantined; the other tenant sees zero errors meanwhile', async () => {
    const normal = Array.from({ length: 300 }, (_, i) => get('b.test', i % 2 ? '/api/hello' : `/page/${i}`));
    const hostile = Array.from({ length: 6 }, (_, i) => get('a.test', i % 2 ? '/api/spin' : '/api/bomb'));
    const [ok, bad] = await Promise.all([Promise.all(normal), Promise.all(hostile)]);
    expect(ok.every((r) => r.status === 200)).toBe(true);
    expect(bad.every((r) => r.status === 503)).toBe(true);
    const a = b.kernel.loaded().find((p) => p.name === 'tenant-a')!;
    const tb = b.kernel.loaded().find((p) => p.name === 'tenant-b')!;
    expect(a.state).toBe('quarantined');
    expect(tb.state).toBe('loaded');
    expect(tb.errors).toBe(0);
    // While quarantined, tenant A answers 503 quickly without entering the sandbox; B is untouched.
    const calls = a.calls;
    expect((await get('a.test', '/api/hello')).status).toBe(503);
    expect(a.calls).toBe(calls);
    expect((await get('b.test', '/api/hello')).status).toBe(200);
    const health = JSON.parse((await get('localhost', '/health')).body);
    expect(health.plugins.find((p: { name: string }) => p.name === 'tenant-a').state).toBe('quarantined');
  });
});
