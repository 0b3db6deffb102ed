import { spawn } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { Agent, request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startBext } from '../../sdk/harness.js';
import { plugin, until } from '../helpers.js';

describe('graceful shutdown', () => {
  it('finishes every in-flight request, answers keep-alive stragglers with connection: close, refuses new connections', async () => {
    const gate = plugin('gate', { routes: [{ path: '/slow' }, { path: '/fast' }] }, `
globalThis.__gate = { waiting: 0, open: null };
const opened = new Promise((r) => (globalThis.__gate.open = r));
export default () => ({ async onRoute(req) {
  if (req.route === '/slow') { globalThis.__gate.waiting++; await opened; }
  return { status: 200, body: req.route };
} });`);
    const b = await startBext({ plugins: [gate] });
    const g = (globalThis as unknown as { __gate: { waiting: number; open: () => void } }).__gate;
    const agent = new Agent({ connections: 100, pipelining: 1 });
    const inflight = Array.from({ length: 50 }, () => request(`${b.url}/slow`, { dispatcher: agent }).then(async (r) => ({ status: r.statusCode, body: await r.body.text() })));
    await until(() => g.waiting === 50, 5000, '50 requests in flight');
    const closing = b.kernel.close(5000);
    // The listener is closed: a new connection is refused.
    await expect(new Promise((res, rej) => net.connect(b.port, '127.0.0.1').on('connect', res).on('error', rej))).rejects.toThrow();
    g.open();
    const results = await Promise.all(inflight);
    expect(results.every((r) => r.status === 200 && r.body === '/slow')).toBe(true);
    await closing;
    await agent.close();
  });

  it('SIGTERM on `bext run` drains and exits 0', async () => {
    const proc = spawn(process.execPath, [resolve('kernel/cli/bin.js'), 'run', 'examples/site', '--port', '0', '--admin-port', '0'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, BEXT_LOG: 'error' } });
    const rl = createInterface({ input: proc.stdout! });
    const url = await new Promise<string>((res) => rl.on('line', (l) => { const m = /on (http:\/\/[^ ]+)/.exec(l); if (m) res(m[1]!); }));
    const agent = new Agent({ connections: 20 });
    const all = Array.from({ length: 200 }, () => request(`${url}/health`, { dispatcher: agent }).then(async (r) => { await r.body.text(); return r.statusCode; }));
    const first = await Promise.race(all);
    expect(first).toBe(200);
    const exited = once(proc, 'exit');
    proc.kill('SIGTERM');
    const codes = await Promise.allSettled(all);
    const [exit] = await exited;
    expect(exit).toBe(0);
    // Requests that reached the server got a full answer; none got an error status.
    const answered = codes.filter((c) => c.status === 'fulfilled').map((c) => (c as PromiseFulfilledResult<number>).value);
    expect(answered.length).toBeGreaterThan(0);
    expect(answered.every((c) => c === 200)).toBe(true);
    await agent.close();
  });
});
