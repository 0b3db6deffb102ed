import { cpSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { BextError } from '../../plugin-api/index.js';
import { startBext } from '../../sdk/harness.js';
import { probeBwrap } from './confine.js';
import { createProcessHost, grantedFunctions, type ProcessInstance } from './index.js';
import { loadPlugin, pluginFolder, removeFolder, request } from './testkit.js';

const host = createProcessHost({ backoff: { initialMs: 50, maxMs: 1000, healthyMs: 60_000 } });
const msgpackHost = createProcessHost({ codec: 'msgpack' });
const confinement = await probeBwrap();

const dirs: string[] = [];
const live: ProcessInstance[] = [];
function folder(files: Record<string, string>): string {
  const d = pluginFolder(files);
  dirs.push(d);
  return d;
}
afterEach(async () => {
  await Promise.all(live.splice(0).map((i) => i.dispose()));
});
afterAll(() => dirs.forEach(removeFolder));

async function load(files: Record<string, string>, o: Parameters<typeof loadPlugin>[2] = {}, h = host) {
  const r = await loadPlugin(h, folder(files), o);
  live.push(r.inst);
  return r;
}

/** Whether a process has ended (gone, or a zombie waiting for its reaper). */
function gone(pid: number): boolean {
  try {
    return /^\d+ \(.*\) [ZX]/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

function rejection(p: Promise<unknown>): Promise<BextError> {
  return p.then(
    () => {
      throw new Error('expected a rejection');
    },
    (e: BextError) => e,
  );
}

const echo = `
export function onRequest(req) { return { action: 'respond', status: 200, body: JSON.stringify(req) }; }
export function onResponse(req, res) { return { setHeaders: { 'x-seen': JSON.stringify({ req, res }) } }; }
export function onRender(req) { return req.path === '/inner' ? { action: 'next' } : { status: 200, body: 'outer' }; }
export function onPublish(msg) { return { action: 'transform', data: { wrapped: msg.data, topic: msg.topic } }; }
export function onConnect(info) { return info.remoteAddress === '10.0.0.1' ? { action: 'reject' } : { action: 'allow' }; }
`;

describe('process sandbox', () => {
  it('round-trips hooks with only the projected request fields', async () => {
    const { inst } = await load({ 'plugin.mjs': echo }, { manifest: { needs: ['method', 'path', 'headers:x-a', 'response.headers'] } });
    expect(Object.keys(inst.hooks).sort()).toEqual(['onConnect', 'onPublish', 'onRender', 'onRequest', 'onResponse']);
    const req = request({ path: '/p', headers: { 'x-a': '1', 'x-b': '2' }, body: 'secret', ctx: { user: 'u' } });
    const r = (await inst.hooks.onRequest!(req)) as { body: string };
    expect(JSON.parse(r.body)).toEqual({ id: 'r1', method: 'GET', path: '/p', headers: { 'x-a': '1' } });

    const res = (await inst.hooks.onResponse!(req, { status: 201, headers: { a: 'b' }, body: 'hidden' })) as { setHeaders: Record<string, string> };
    expect(JSON.parse(res.setHeaders['x-seen']!).res).toEqual({ status: 201, headers: { a: 'b' } });

    let innerCalled = 0;
    const next = async () => (innerCalled++, { status: 200, body: 'inner' });
    expect(await inst.hooks.onRender!(request({ path: '/inner' }), next)).toEqual({ status: 200, body: 'inner' });
    expect(await inst.hooks.onRender!(request({ path: '/x' }), next)).toEqual({ status: 200, body: 'outer' });
    expect(innerCalled).toBe(1);

    expect(await inst.hooks.onPublish!({ topic: 'a/b', data: [1, 2], publisher: 'k' })).toEqual({
      action: 'transform',
      data: { wrapped: [1, 2], topic: 'a/b' },
    });
    expect(await inst.hooks.onConnect!({ remoteAddress: '10.0.0.1', remotePort: 1, localPort: 2 })).toEqual({ action: 'reject' });
    const s = inst.stats();
    expect(s).toMatchObject({ calls: 6, errors: 0, restarts: 0, state: 'ready', codec: 'json' });
    expect(s.timeUs).toBeGreaterThan(0);
  });

  it('speaks MessagePack when asked', async () => {
    const { inst } = await load({ 'plugin.mjs': echo }, { manifest: { needs: ['path'] } }, msgpackHost);
    const r = (await inst.hooks.onRequest!(request({ path: '/mp' }))) as { body: string };
    expect(JSON.parse(r.body)).toEqual({ id: 'r1', path: '/mp' });
    expect(inst.stats().codec).toBe('msgpack');
  });

  it('awaits async hooks', async () => {
    const { inst } = await load({
      'plugin.mjs': `export async function onRequest(req) { await new Promise((r) => setTimeout(r, 5)); return { action: 'continue', ctx: { late: req.path } }; }`,
    });
    expect(await inst.hooks.onRequest!(request({ path: '/a' }))).toEqual({ action: 'continue', ctx: { late: '/a' } });
  });

  it('accepts a default-exported hooks object or factory', async () => {
    const a = await load({ 'plugin.mjs': `export default { onRequest: () => ({ action: 'continue', ctx: { from: 'object' } }) };` });
    expect(await a.inst.hooks.onRequest!(request())).toEqual({ action: 'continue', ctx: { from: 'object' } });
    const b = await load(
      { 'plugin.mjs': `export default (host) => ({ onRequest: () => ({ action: 'continue', ctx: { from: host.plugin, cfg: host.config().greeting } }) });` },
      { name: 'factory', config: { greeting: 'hi' } },
    );
    expect(await b.inst.hooks.onRequest!(request())).toEqual({ action: 'continue', ctx: { from: 'factory', cfg: 'hi' } });
  });

  it('forwards host functions to the HostApi', async () => {
    const { inst, rec } = await load(
      {
        'plugin.mjs': `
          bext_log('info', 'loaded', { at: 'import' });
          export async function onRequest(req) {
            const n = await bext_publish('custom/hits', { path: req.path });
            await bext_kv_set('last', req.path);
            const last = await bext_kv_get('last');
            bext_metric('hits', 1);
            console.warn('warned', 42);
            return { action: 'continue', ctx: { n, last, cfg: bext_config(), has: typeof bext_fetch } };
          }`,
      },
      { grants: ['publish:custom/*', 'kv', 'metrics'], config: { mode: 'x' } },
    );
    expect(await inst.hooks.onRequest!(request({ path: '/h' }))).toEqual({
      action: 'continue',
      ctx: { n: 1, last: '/h', cfg: { mode: 'x' }, has: 'function' },
    });
    expect(rec.published).toEqual([{ topic: 'custom/hits', data: { path: '/h' } }]);
    expect(rec.kv.get('last')).toBe('/h');
    expect(rec.metrics).toEqual([{ name: 'hits', value: 1 }]);
    expect(rec.logs).toContainEqual({ level: 'info', msg: 'loaded', fields: { at: 'import' } });
    expect(rec.logs).toContainEqual({ level: 'warn', msg: 'warned 42' });
  });

  it('exposes only granted host functions', () => {
    expect(grantedFunctions([]).sort()).toEqual(['bext_config', 'bext_log']);
    expect(grantedFunctions(['kv', 'fetch:api.example.com', 'publish:a/*']).sort()).toEqual(
      ['bext_config', 'bext_fetch', 'bext_kv_del', 'bext_kv_get', 'bext_kv_set', 'bext_log', 'bext_publish'],
    );
  });

  it('pipelines concurrent calls and matches each answer to its call', async () => {
    const { inst } = await load({
      'plugin.mjs': `
        export async function onRequest(req) {
          const n = Number(req.path.slice(1));
          if (n % 3 === 0) await new Promise((r) => setTimeout(r, (n % 7) * 2));
          return { action: 'continue', ctx: { n } };
        }`,
    });
    const out = await Promise.all(Array.from({ length: 200 }, (_, i) => inst.hooks.onRequest!(request({ path: `/${i}` }))));
    expect(out.map((o) => (o as unknown as { ctx: { n: number } }).ctx.n)).toEqual(Array.from({ length: 200 }, (_, i) => i));
    expect(inst.stats().calls).toBe(200);
  });

  it('kills a call that misses its deadline and restarts with a growing backoff', async () => {
    const { inst, rec } = await load(
      { 'plugin.mjs': `export function onRequest(req) { if (req.path === '/loop') for (;;) {} return { action: 'continue' }; }` },
      { limits: { timeoutMs: 200 } },
    );
    const pid = inst.stats().pid;
    const err = await rejection(inst.hooks.onRequest!(request({ path: '/loop' })) as Promise<unknown>);
    expect(err.code).toBe('BEXT_ERR_PLUGIN_TIMEOUT');
    expect(err.message).toMatch(/missed its 200 ms deadline/);
    // While the replacement waits out its backoff, calls fail fast.
    const fast = await rejection(inst.hooks.onRequest!(request()) as Promise<unknown>);
    expect(fast.code).toBe('BEXT_ERR_PLUGIN_FAILED');
    expect(fast.message).toMatch(/restarting/);
    expect(inst.stats()).toMatchObject({ state: 'backoff', backoffMs: 50 });
    await expect.poll(() => gone(pid!)).toBe(true);

    await inst.whenReady();
    expect(await inst.hooks.onRequest!(request())).toEqual({ action: 'continue' });
    expect(inst.stats().pid).not.toBe(pid);
    expect(inst.stats().restarts).toBe(1);

    await rejection(inst.hooks.onRequest!(request({ path: '/loop' })) as Promise<unknown>);
    expect(inst.stats().backoffMs).toBe(100);
    await inst.whenReady();
    expect(await inst.hooks.onRequest!(request())).toEqual({ action: 'continue' });
    expect(inst.stats()).toMatchObject({ restarts: 2, errors: 3 });
    expect(rec.logs.some((l) => l.level === 'warn' && /missed its 200 ms deadline/.test(l.msg))).toBe(true);
  });

  it('fails every in-flight call when the process is killed', async () => {
    const { inst } = await load(
      {
        'plugin.mjs': `export function onRequest(req) {
          if (req.path === '/loop') for (;;) {}
          return new Promise((r) => setTimeout(() => r({ action: 'continue' }), 10_000));
        }`,
      },
      { limits: { timeoutMs: 300 } },
    );
    const waiting = inst.hooks.onRequest!(request({ path: '/wait' })) as Promise<unknown>;
    const looping = inst.hooks.onRequest!(request({ path: '/loop' })) as Promise<unknown>;
    const [a, b] = await Promise.all([rejection(waiting), rejection(looping)]);
    expect([a.code, b.code]).toEqual(['BEXT_ERR_PLUGIN_TIMEOUT', 'BEXT_ERR_PLUGIN_TIMEOUT']);
  });

  it('recovers from a crash', async () => {
    const { inst } = await load({
      'plugin.mjs': `export function onRequest(req) { if (req.path === '/crash') process.exit(3); return { action: 'continue', ctx: { pid: process.pid } }; }`,
    });
    const err = await rejection(inst.hooks.onRequest!(request({ path: '/crash' })) as Promise<unknown>);
    expect(err.code).toBe('BEXT_ERR_PLUGIN_FAILED');
    expect(err.message).toMatch(/exited with code 3/);
    await inst.whenReady();
    expect(await inst.hooks.onRequest!(request())).toMatchObject({ action: 'continue' });
    expect(inst.stats().restarts).toBe(1);
  });

  it('starts the backoff over after a healthy period', async () => {
    // healthyMs 0: every child counts as healthy, so every failure waits the first delay again.
    const forgiving = createProcessHost({ backoff: { initialMs: 20, healthyMs: 0 } });
    const { inst } = await load({ 'plugin.mjs': `export function onRequest(req) { if (req.path === '/crash') process.exit(1); }` }, {}, forgiving);
    for (let i = 0; i < 3; i++) {
      await rejection(inst.hooks.onRequest!(request({ path: '/crash' })) as Promise<unknown>);
      expect(inst.stats().backoffMs).toBe(20);
      await inst.whenReady();
    }
    expect(inst.stats().restarts).toBe(3);
  });

  it('runs unconfined when told to, and says so', async () => {
    const { inst } = await load({ 'plugin.mjs': echo }, {}, createProcessHost({ confine: 'off' }));
    expect(inst.stats()).toMatchObject({ confined: false, confinedReason: 'confinement is turned off (confine: "off")' });
    expect(await inst.hooks.onConnect!({ remoteAddress: '1.1.1.1', remotePort: 1, localPort: 2 })).toEqual({ action: 'allow' });
  });

  it('replaces the process on restart()', async () => {
    const { inst } = await load({ 'plugin.mjs': echo });
    const pid = inst.stats().pid;
    await inst.restart();
    expect(inst.stats().pid).not.toBe(pid);
    expect(await inst.hooks.onConnect!({ remoteAddress: '1.1.1.1', remotePort: 1, localPort: 2 })).toEqual({ action: 'allow' });
  });

  it('reports errors thrown by hooks without replacing the process', async () => {
    const { inst } = await load({ 'plugin.mjs': `export function onRequest() { throw new TypeError('bad input'); }` });
    const err = await rejection(inst.hooks.onRequest!(request()) as Promise<unknown>);
    expect(err.code).toBe('BEXT_ERR_PLUGIN_FAILED');
    expect(err.message).toBe('plugin "probe" onRequest: TypeError: bad input');
    expect(inst.stats()).toMatchObject({ errors: 1, restarts: 0, state: 'ready' });
  });

  it('refuses plugins that cannot load, with the reason', async () => {
    const syntax = await rejection(load({ 'plugin.mjs': 'export function onRequest( {' }));
    expect(syntax.code).toBe('BEXT_ERR_PLUGIN_LOAD');
    expect(syntax.message).toMatch(/SyntaxError/);
    const throws = await rejection(load({ 'plugin.mjs': `throw new Error('no config');` }));
    expect(throws.message).toMatch(/no config/);
    const notExec = await rejection(load({ 'plugin.bin': 'data' }, { entry: 'plugin.bin' }));
    expect(notExec.message).toMatch(/neither a .js\/.mjs module nor an executable/);
    const exits = await rejection(load({ 'plugin.sh': '#!/bin/sh\necho oops >&2\nexit 2\n' }, { entry: 'plugin.sh' }));
    expect(exits.code).toBe('BEXT_ERR_PLUGIN_LOAD');
    expect(exits.message).toMatch(/exited with code 2 before it was ready: oops/);
  });

  it('runs an executable that speaks the protocol itself', async () => {
    const { inst, rec } = await load(
      {
        'plugin.py': `#!/usr/bin/python3
import json, struct, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
def send(m):
    b = json.dumps(m).encode()
    out.write(struct.pack('>I', len(b)) + b); out.flush()
def recv():
    h = inp.read(4)
    if len(h) < 4: sys.exit(0)
    return json.loads(inp.read(struct.unpack('>I', h)[0]))
send({'t': 'hello', 'v': 1})
init = recv()
send({'t': 'ready', 'hooks': ['onRequest']})
while True:
    m = recv()
    if m['t'] == 'call':
        send({'t': 'host', 'id': 0, 'fn': 'bext_log', 'args': ['info', 'python saw ' + m['args'][0]['path']]})
        send({'t': 'result', 'id': m['id'], 'value': {'action': 'continue', 'ctx': {'lang': 'python', 'cfg': init['config']}}})
`,
      },
      { entry: 'plugin.py', config: { k: 1 } },
    );
    expect(await inst.hooks.onRequest!(request({ path: '/py' }))).toEqual({ action: 'continue', ctx: { lang: 'python', cfg: { k: 1 } } });
    expect(rec.logs).toContainEqual({ level: 'info', msg: 'python saw /py' });
  });

  it('sends stderr to the log, line by line and bounded', async () => {
    const { inst, rec } = await load({
      'plugin.mjs': `
        export function onRequest(req) {
          if (req.path === '/one') process.stderr.write('first line\\nsecond line\\n');
          else for (let i = 0; i < 2000; i++) process.stderr.write('flood ' + i + '\\n');
          process.stderr.write('end-marker\\n');
          return { action: 'continue' };
        }`,
    });
    await inst.hooks.onRequest!(request({ path: '/one' }));
    await expect.poll(() => rec.logs.filter((l) => l.fields?.stream === 'stderr').map((l) => l.msg)).toEqual(['first line', 'second line', 'end-marker']);
    await inst.hooks.onRequest!(request({ path: '/flood' }));
    const floods = () => rec.logs.filter((l) => l.msg.startsWith('flood ')).length;
    await expect.poll(floods).toBeGreaterThanOrEqual(150);
    // 2000 lines arrived at once; the bucket lets a burst of 200 through, then 50 per second.
    expect(floods()).toBeLessThan(500);
  });

  it('runs the plugin dispose hook on dispose', async () => {
    const { inst, rec } = await load({
      'plugin.mjs': `export function onRequest() {} export function dispose() { bext_log('info', 'disposing'); }`,
    });
    live.splice(live.indexOf(inst), 1);
    const pid = inst.stats().pid!;
    await inst.dispose();
    expect(rec.logs).toContainEqual({ level: 'info', msg: 'disposing' });
    await expect.poll(() => gone(pid)).toBe(true);
    const err = await rejection(inst.hooks.onRequest!(request()) as Promise<unknown>);
    expect(err.code).toBe('BEXT_ERR_SHUTDOWN');
  });

  it('reports pid and resident memory', async () => {
    const { inst } = await load({ 'plugin.mjs': echo });
    const s = inst.stats();
    expect(readFileSync(`/proc/${s.pid}/comm`, 'utf8').trim()).toBe('node');
    expect(s.memoryBytes).toBeGreaterThan(5 << 20);
    expect(s.confined).toBe(confinement.ok);
  });

  describe.runIf(confinement.ok)('confined with bwrap', () => {
    const probe = `import fs from 'node:fs'; import net from 'node:net';
      const tryIt = (f) => { try { f(); return 'ok'; } catch (e) { return e.code ?? String(e); } };
      const connect = () => new Promise((r) => { const s = net.connect(6379, '127.0.0.1'); s.on('connect', () => { s.destroy(); r('connected'); }); s.on('error', (e) => r(e.code)); });
      export async function onRequest() {
        return {
          action: 'continue',
          ctx: {
            writePlugin: tryIt(() => fs.writeFileSync(new URL('./owned.txt', import.meta.url), 'x')),
            writeTmp: tryIt(() => fs.writeFileSync('/tmp/scratch', 'x')),
            tcp: await connect(),
            env: Object.keys(process.env).sort(),
            uid: process.getuid(),
          },
        };
      }`;

    it('cannot write its folder or reach the network without fetch', async () => {
      const { inst } = await load({ 'plugin.mjs': probe });
      const r = (await inst.hooks.onRequest!(request())) as { ctx: Record<string, unknown> };
      expect(r.ctx).toMatchObject({ writePlugin: 'EROFS', writeTmp: 'ok', uid: 65534 });
      expect(r.ctx.tcp).not.toBe('connected');
      expect(r.ctx.env).toEqual(expect.arrayContaining(['PATH']));
      expect((r.ctx.env as string[]).every((k) => ['PATH', 'HOME', 'PWD'].includes(k))).toBe(true);
      expect(inst.stats().confined).toBe(true);
    });

    it('keeps the network when fetch is granted', async () => {
      const { inst } = await load({ 'plugin.mjs': probe }, { grants: ['fetch:api.example.com'] });
      const r = (await inst.hooks.onRequest!(request())) as { ctx: Record<string, unknown> };
      expect(r.ctx).toMatchObject({ writePlugin: 'EROFS', tcp: 'connected' });
    });
  });

  it('serves requests through the kernel from the sdk template', async () => {
    const dir = path.join(folder({}), 'hello-proc');
    cpSync(fileURLToPath(new URL('../../sdk/templates/process', import.meta.url)), dir, { recursive: true });
    for (const f of readdirSync(dir)) writeFileSync(path.join(dir, f), readFileSync(path.join(dir, f), 'utf8').replaceAll('__NAME__', 'hello-proc'));
    const b = await startBext({ plugins: [{ dir }], config: { plugins: { 'hello-proc': { blockedAgents: ['BadBot'] } } } });
    try {
      const blocked = await fetch(`${b.url}/x`, { headers: { 'user-agent': 'BadBot/2.0' } });
      expect(blocked.status).toBe(403);
      expect(await blocked.text()).toBe('forbidden\n');
      const passed = await fetch(`${b.url}/x`, { headers: { 'user-agent': 'Mozilla/5.0' } });
      await passed.arrayBuffer();
      expect(passed.headers.get('x-hello-proc')).toBe('seen');
      expect(b.logs.some((l) => l.msg === 'hello-proc loaded')).toBe(true);
    } finally {
      await b.close();
    }
  });
});
