/**
 * The behaviour both JavaScript sandbox kinds must show, as one vitest suite
 * run by `quickjs.test.ts` and `isolate.test.ts` against real plugin folders.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { makeProjector, type Manifest, type Need, type SandboxHost, type SandboxInstance } from '../../plugin-api/index.js';
import { encoderFor } from './bridge.js';
import { request, writePlugin, type TestPlugin } from './testing.js';

const TEMPLATES = fileURLToPath(new URL('../../sdk/templates/', import.meta.url));

export function jsSandboxSuite(host: SandboxHost, kind: 'quickjs' | 'isolate'): void {
  describe(`${kind} sandbox`, () => {
    const open: { p: TestPlugin; inst?: SandboxInstance }[] = [];
    afterEach(async () => {
      for (const o of open.splice(0)) {
        await o.inst?.dispose();
        o.p.cleanup();
      }
    });
    const load = async (source: string, opts: Parameters<typeof writePlugin>[2] = {}) => {
      const p = writePlugin(kind, source, opts);
      const entry: { p: TestPlugin; inst?: SandboxInstance } = { p };
      open.push(entry);
      entry.inst = await host.load(p.spec);
      return { p, inst: entry.inst, host: p.host };
    };

    it('serialises requests exactly as the projector projects them', () => {
      const needsSets: (Need[] | undefined)[] = [
        undefined, [], ['path'], ['method', 'headers'], ['headers:user-agent', 'headers:x-missing', 'body'],
        ['method', 'path', 'query', 'host', 'remoteAddress', 'scheme', 'httpVersion', 'body', 'ctx', 'headers'],
      ];
      const reqs = [request(), request({ body: 'b', route: '/items/:id', params: { id: '7' }, ctx: { a: [1, { b: null }] } }), request({ headers: {} })];
      for (const needs of needsSets) {
        for (const r of reqs) expect(encoderFor(needs).request(r)).toBe(JSON.stringify(makeProjector(needs).request(r)));
      }
    });

    it('is available', () => {
      expect(host.available()).toEqual({ ok: true });
    });

    it('calls a hook with only the fields the manifest needs', async () => {
      const { inst } = await load(`export function onRequest(req) { return { action: 'continue', ctx: { seen: req } }; }`, {
        manifest: { needs: ['method', 'path', 'headers:user-agent'], hooks: { onRequest: {} } },
      });
      const d = inst.hooks.onRequest!(request() as never) as unknown as { ctx: { seen: Record<string, unknown> } };
      expect(d.ctx.seen).toEqual({ id: 'r1', method: 'GET', path: '/hello', headers: { 'user-agent': 'curl/8.5' } });
      expect(d.ctx.seen.host).toBeUndefined();
      expect(d.ctx.seen.query).toBeUndefined();
    });

    it('passes multi-valued headers, ctx and awkward strings intact', async () => {
      const { inst } = await load(`export function onRequest(req) { return { action: 'continue', ctx: { req } }; }`, { manifest: { needs: ['path', 'headers', 'ctx', 'body'] } });
      const req = request({
        path: '/a\u0001b',
        headers: { 'set-cookie': ['a=1', 'b=2'], 'x-odd': '\u0002json-looking', 'x-emoji': 'é 🙂' },
        ctx: { user: { id: 7 }, tags: ['x'] },
        body: 'nul\u0000inside',
      });
      const d = inst.hooks.onRequest!(req as never) as unknown as { ctx: { req: Record<string, unknown> } };
      expect(d.ctx.req).toEqual({ id: 'r1', path: '/a\u0001b', headers: req.headers, ctx: req.ctx, body: 'nul\u0000inside' });
    });

    it('returns undefined for a hook that returns nothing', async () => {
      const { inst } = await load(`export function onRequest() {}`);
      expect(inst.hooks.onRequest!(request() as never)).toBeUndefined();
    });

    it('resolves async hooks, including ones that await host functions', async () => {
      const { inst, host } = await load(
        `export async function onRequest(req) {
           const n = Number(await bext_kv_get('count') ?? '0') + 1;
           await bext_kv_set('count', String(n));
           return { action: 'continue', setHeaders: { 'x-count': String(n) } };
         }`,
        { grants: ['kv'] },
      );
      const r1 = inst.hooks.onRequest!(request() as never);
      expect(typeof (r1 as Promise<unknown>).then).toBe('function');
      expect(await r1).toEqual({ action: 'continue', setHeaders: { 'x-count': '1' } });
      expect(await inst.hooks.onRequest!(request() as never)).toEqual({ action: 'continue', setHeaders: { 'x-count': '2' } });
      expect(host.store.get('count')).toBe('2');
    });

    it('runs concurrent async calls independently', async () => {
      const { inst } = await load(`export async function onRequest(req) { const v = await bext_kv_get(req.path); return { action: 'continue', ctx: { v } }; }`, {
        grants: ['kv'], manifest: { needs: ['path'] },
      });
      const results = await Promise.all(['/a', '/b', '/c'].map((path) => inst.hooks.onRequest!(request({ path }) as never)));
      expect(results.map((r) => (r as unknown as { ctx: { v: unknown } }).ctx.v)).toEqual([null, null, null]);
    });

    it('round-trips host functions: publish, log, metric, config, fetch', async () => {
      const { inst, host } = await load(
        `const cfg = bext_config();
         export async function onRequest(req) {
           bext_log('warn', 'saw ' + req.path, { n: 1 });
           bext_metric('hits', 1, { path: req.path });
           const delivered = await bext_publish('custom/hits', { path: req.path, greeting: cfg.greeting });
           const res = await bext_fetch({ url: 'https://api.example.com/x' });
           return { action: 'continue', ctx: { delivered, body: res.body } };
         }`,
        { grants: ['publish:custom/*', 'metrics', 'fetch:api.example.com'], config: { greeting: 'hi' } },
      );
      const d = await inst.hooks.onRequest!(request() as never);
      expect(d).toEqual({ action: 'continue', ctx: { delivered: 1, body: 'fetched' } });
      expect(host.published).toEqual([{ topic: 'custom/hits', data: { path: '/hello', greeting: 'hi' } }]);
      expect(host.logs).toEqual([{ level: 'warn', msg: 'saw /hello', fields: { n: 1 } }]);
      expect(host.metrics).toEqual([{ name: 'hits', value: 1, labels: { path: '/hello' } }]);
    });

    it('refuses an ungranted host call with BEXT_ERR_CAP_DENIED, visible to the guest and audited', async () => {
      const { inst, host } = await load(
        `export async function onRequest() {
           try { await bext_publish('other/topic', 1); return { action: 'continue', ctx: { ok: true } }; }
           catch (e) { return { action: 'continue', ctx: { code: e.code, name: e.name } }; }
         }`,
        { grants: ['publish:custom/*'] },
      );
      expect(await inst.hooks.onRequest!(request() as never)).toEqual({ action: 'continue', ctx: { code: 'BEXT_ERR_CAP_DENIED', name: 'BextError' } });
      expect(host.audit).toEqual([{ fn: 'bext_publish', detail: 'other/topic' }]);
      expect(host.published).toEqual([]);
    });

    it('runs onRender: a response, or next() when the guest says next', async () => {
      const { inst } = await load(`export function onRender(req) { return req.path === '/mine' ? { status: 200, body: 'guest' } : { action: 'next' }; }`);
      const next = async () => ({ status: 204 });
      expect(await inst.hooks.onRender!(request({ path: '/mine' }) as never, next)).toEqual({ status: 200, body: 'guest' });
      expect(await inst.hooks.onRender!(request({ path: '/other' }) as never, next)).toEqual({ status: 204 });
    });

    it('passes onResponse the projected request and response', async () => {
      const { inst } = await load(`export function onResponse(req, res) { return { setHeaders: { 'x-seen': req.method + ' ' + res.status + ' ' + res.headers['content-type'] } }; }`, {
        manifest: { needs: ['method', 'response.headers'] },
      });
      expect(inst.hooks.onResponse!(request() as never, { status: 201, headers: { 'content-type': 'text/html' }, body: 'x' })).toEqual({
        setHeaders: { 'x-seen': 'GET 201 text/html' },
      });
    });

    it('runs onPublish and onConnect on plain data', async () => {
      const { inst } = await load(
        `export function onPublish(msg) { return { action: 'transform', data: { wrapped: msg.data, by: msg.publisher } }; }
         export function onConnect(info) { return info.remoteAddress === '10.0.0.1' ? { action: 'reject' } : undefined; }`,
      );
      expect(inst.hooks.onPublish!({ topic: 'a/b', data: { x: 1 }, publisher: 'p' })).toEqual({ action: 'transform', data: { wrapped: { x: 1 }, by: 'p' } });
      expect(inst.hooks.onConnect!({ remoteAddress: '10.0.0.1', remotePort: 1, localPort: 80 })).toEqual({ action: 'reject' });
    });

    it('imports the plugin\'s own files and nothing outside the folder', async () => {
      const { inst } = await load(`import { greet } from './lib/greet.js'; export function onRequest() { return { action: 'continue', ctx: { g: greet() } }; }`, {
        files: { 'lib/greet.js': `export const greet = () => 'hello';` },
      });
      expect(inst.hooks.onRequest!(request() as never)).toEqual({ action: 'continue', ctx: { g: 'hello' } });
      await expect(load(`import '../../escape.js'; export function onRequest() {}`)).rejects.toMatchObject({ code: 'BEXT_ERR_PLUGIN_LOAD' });
      await expect(load(`import fs from 'node:fs'; export function onRequest() {}`)).rejects.toMatchObject({ code: 'BEXT_ERR_PLUGIN_LOAD' });
    });

    it('reports a hook the manifest declares but the module lacks', async () => {
      await expect(load(`export function onRequest() {}`, { manifest: { hooks: { onRender: {} } } })).rejects.toMatchObject({ code: 'BEXT_ERR_PLUGIN_HOOK_MISSING' });
    });

    it('reports a module that fails to evaluate', async () => {
      await expect(load(`throw new Error('boom at load');`)).rejects.toMatchObject({ code: 'BEXT_ERR_PLUGIN_LOAD', message: expect.stringContaining('boom at load') });
      await expect(load(`export function onRequest( {`)).rejects.toMatchObject({ code: 'BEXT_ERR_PLUGIN_LOAD' });
    });

    it('wraps a thrown error with the plugin and hook names, and keeps serving', async () => {
      const { inst } = await load(`export function onRequest(req) { if (req.path === '/bad') throw new TypeError('nope'); return { action: 'continue' }; }`);
      expect(() => inst.hooks.onRequest!(request({ path: '/bad' }) as never)).toThrow(/plugin "guest" onRequest threw: TypeError: nope/);
      expect(inst.hooks.onRequest!(request() as never)).toEqual({ action: 'continue' });
      expect(inst.stats()).toMatchObject({ calls: 2, errors: 1, restarts: 0 });
    });

    it('keeps stats: calls, errors, time, memory, restarts', async () => {
      const { inst } = await load(`export function onRequest() { return undefined; }`);
      for (let i = 0; i < 5; i++) inst.hooks.onRequest!(request() as never);
      const s = inst.stats();
      expect(s.calls).toBe(5);
      expect(s.errors).toBe(0);
      expect(s.timeUs).toBeGreaterThan(0);
      expect(s.memoryBytes).toBeGreaterThan(1000);
      expect(s.restarts).toBe(0);
    });

    it('enforces the per-call deadline and replaces the instance, which then serves normally', async () => {
      const { inst } = await load(`let calls = 0; export function onRequest(req) { calls++; if (req.path === '/spin') for (;;) {} return { action: 'continue', ctx: { calls } }; }`, {
        limits: { timeoutMs: 50 },
      });
      expect(inst.hooks.onRequest!(request() as never)).toEqual({ action: 'continue', ctx: { calls: 1 } });
      expect(() => inst.hooks.onRequest!(request({ path: '/spin' }) as never)).toThrow(expect.objectContaining({ code: 'BEXT_ERR_PLUGIN_TIMEOUT' }));
      // A fresh instance: module state starts over.
      expect(inst.hooks.onRequest!(request() as never)).toEqual({ action: 'continue', ctx: { calls: 1 } });
      expect(inst.stats().restarts).toBe(1);
    });

    it('enforces the memory limit and replaces the instance', async () => {
      const { inst } = await load(`export function onRequest(req) { if (req.path === '/bomb') { const a = []; for (;;) a.push('x'.repeat(65536) + a.length); } return { action: 'continue' }; }`, {
        limits: { memoryMb: 16, timeoutMs: 5000 },
      });
      expect(() => inst.hooks.onRequest!(request({ path: '/bomb' }) as never)).toThrow(expect.objectContaining({ code: 'BEXT_ERR_SANDBOX_LIMIT' }));
      expect(inst.hooks.onRequest!(request() as never)).toEqual({ action: 'continue' });
      expect(inst.stats().restarts).toBe(1);
    });

    it('restart() replaces the instance on demand', async () => {
      const { inst } = await load(`let n = 0; export function onRequest() { return { action: 'continue', ctx: { n: ++n } }; }`);
      inst.hooks.onRequest!(request() as never);
      await inst.restart!();
      expect(inst.hooks.onRequest!(request() as never)).toEqual({ action: 'continue', ctx: { n: 1 } });
      expect(inst.stats().restarts).toBe(1);
    });

    it('runs the sdk template that `bext plugin new --sandbox ' + kind + '` copies', async () => {
      const read = (f: string) => readFileSync(join(TEMPLATES, kind, f), 'utf8').replaceAll('__NAME__', 'tpl');
      const manifest = JSON.parse(read('bext-plugin.json')) as Manifest;
      expect(manifest.sandbox).toBe(kind);
      const { inst, host } = await load(read('plugin.js'), {
        manifest: { ...manifest, entry: 'plugin.js' }, grants: manifest.capabilities, limits: manifest.limits, config: { blockedAgents: ['BadBot'] },
      });
      expect(inst.hooks.onRequest!(request() as never)).toEqual({ action: 'continue', responseHeaders: { 'x-tpl': 'seen' } });
      expect(inst.hooks.onRequest!(request({ headers: { 'user-agent': 'BadBot/2' } }) as never)).toMatchObject({ action: 'respond', status: 403 });
      await expect.poll(() => host.published).toEqual([{ topic: 'custom/tpl/blocked', data: { path: '/hello', agent: 'BadBot/2' } }]);
    });

    it('refuses calls after dispose', async () => {
      const { inst } = await load(`export function onRequest() {}`);
      await inst.dispose();
      expect(() => inst.hooks.onRequest!(request() as never)).toThrow(expect.objectContaining({ code: 'BEXT_ERR_SHUTDOWN' }));
    });
  });
}
