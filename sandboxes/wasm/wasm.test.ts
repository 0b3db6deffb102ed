import { cp, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BextError, type ConnectInfo, type PluginHooks, type RequestData, type SandboxInstance } from '../../plugin-api/index.js';
import { buildWasmPlugin } from '../../sdk/build.js';
import { FUEL_EXPORT, WasmFormatError, instrument, readFixedI32, withLimits } from './fuel.js';
import wasm, { instrumentationCache, type WasmStats } from './index.js';
import { HOSTILE, guestSpec, guestWat, recordingHost, wat2wasm } from './test-guests.js';

const here = path.dirname(fileURLToPath(import.meta.url));

function req(over: Partial<RequestData> = {}): RequestData {
  return {
    id: 'r1', method: 'GET', path: '/', query: '', host: 'example.com',
    headers: { 'user-agent': 'test-agent', accept: '*/*' },
    remoteAddress: '127.0.0.1', scheme: 'http', httpVersion: '1.1', ctx: {}, ...over,
  };
}

type AnyHook = (...a: unknown[]) => unknown;
const hook = (inst: SandboxInstance, name: keyof PluginHooks) => inst.hooks[name] as unknown as AnyHook;

/** Runs a hook call that must fail; a direct-path hook throws synchronously, an Extism-path one rejects. */
async function rejection(call: () => unknown): Promise<BextError> {
  try {
    await call();
  } catch (e) {
    expect(e).toBeInstanceOf(BextError);
    return e as BextError;
  }
  throw new Error('expected the call to fail');
}

describe('fuel instrumentation', () => {
  // Exercises every instruction family the rewriter decodes.
  const opcodes = `(module
    (type $bin (func (param i32 i32) (result i32)))
    (memory (export "memory") 1 4)
    (table 2 funcref)
    (elem (i32.const 0) $add $sub)
    (global $g (mut i64) (i64.const 7))
    (data $d "abcdefgh")
    (func $add (type $bin) (i32.add (local.get 0) (local.get 1)))
    (func $sub (type $bin) (i32.sub (local.get 0) (local.get 1)))
    (func $fib (export "fib") (param i32) (result i32)
      (if (result i32) (i32.lt_u (local.get 0) (i32.const 2)) (then (local.get 0))
        (else (i32.add (call $fib (i32.sub (local.get 0) (i32.const 1))) (call $fib (i32.sub (local.get 0) (i32.const 2)))))))
    (func (export "mix") (param $n i32) (result i64)
      (local $acc i64) (local $i i32) (local $f f64) (local $v v128)
      (memory.init $d (i32.const 100) (i32.const 0) (i32.const 8))
      (memory.fill (i32.const 200) (i32.const 7) (i32.const 16))
      (memory.copy (i32.const 300) (i32.const 100) (i32.const 8))
      (block $out (loop $l
        (br_if $out (i32.ge_s (local.get $i) (local.get $n)))
        (block $b2 (block $b1 (block $b0
          (br_table $b0 $b1 $b2 (i32.rem_u (local.get $i) (i32.const 3))))
          (local.set $acc (i64.add (local.get $acc) (i64.extend8_s (i64.const 0xff)))) (br $b2))
          (local.set $acc (i64.add (local.get $acc) (i64.extend_i32_s (i32.extend16_s (i32.const 0x8001))))) (br $b2))
        (local.set $acc (i64.add (local.get $acc)
          (i64.extend_i32_u (call_indirect (type $bin) (local.get $i) (i32.const 3) (i32.rem_u (local.get $i) (i32.const 2))))))
        (local.set $f (f64.add (local.get $f) (f64.convert_i32_s (local.get $i))))
        (local.set $acc (i64.add (local.get $acc) (i64.trunc_sat_f64_s (f64.mul (local.get $f) (f64.const 1.5)))))
        (local.set $acc (i64.add (local.get $acc) (i64.load8_u (i32.add (i32.const 100) (i32.rem_u (local.get $i) (i32.const 8))))))
        (local.set $acc (select (local.get $acc) (i64.mul (local.get $acc) (i64.const 3)) (i32.and (local.get $i) (i32.const 1))))
        (global.set $g (i64.xor (global.get $g) (local.get $acc)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $l)))
      (local.set $v (i32x4.add (v128.load (i32.const 100)) (i32x4.splat (local.get $n))))
      (local.set $acc (i64.add (local.get $acc) (i64.extend_i32_u (i32x4.extract_lane 2 (local.get $v)))))
      (local.set $acc (i64.add (local.get $acc) (i64.extend_i32_u (i8x16.extract_lane_u 3 (i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 (local.get $v) (local.get $v))))))
      (local.set $acc (i64.add (local.get $acc) (i64.load (i32.const 200))))
      (local.set $acc (i64.add (local.get $acc) (i64.extend_i32_u (i32.load (i32.const 300)))))
      (local.set $acc (i64.add (local.get $acc) (i64.extend_i32_u (memory.size))))
      (drop (ref.is_null (ref.func $add)))
      (i64.add (local.get $acc) (global.get $g)))
    (func (export "drop") (data.drop $d))
    (func (export "spin") (loop $l (br $l)))
    (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))`;

  let original: Uint8Array;
  beforeAll(async () => {
    original = await wat2wasm(opcodes);
  });

  it('computes the same results as the original module', async () => {
    const plain = (await WebAssembly.instantiate(original as Uint8Array<ArrayBuffer>)).instance.exports as Record<string, CallableFunction>;
    const m = instrument(original);
    const { instance } = await WebAssembly.instantiate(withLimits(m, { fuel: 1e9, maxPages: 4 }) as Uint8Array<ArrayBuffer>);
    const metered = instance.exports as Record<string, CallableFunction>;
    for (const n of [0, 1, 2, 10, 20]) expect(metered.fib!(n)).toBe(plain.fib!(n));
    for (const n of [0, 1, 5, 33, 1000]) expect(metered.mix!(n)).toBe(plain.mix!(n));
    expect(m.meterPoints).toBe(9); // 7 function entries + 2 loops
  });

  it('reports the fuel a call used and traps at zero', async () => {
    const m = instrument(original);
    const { instance } = await WebAssembly.instantiate(withLimits(m, { fuel: 1000, maxPages: 4 }) as Uint8Array<ArrayBuffer>);
    const fuel = instance.exports[FUEL_EXPORT] as WebAssembly.Global;
    const fib = instance.exports.fib as (n: number) => number;
    expect(fuel.value).toBe(1000); // the load's initial value
    fuel.value = 1_000_000;
    expect(fib(15)).toBe(610);
    const used15 = 1_000_000 - (fuel.value as number);
    fuel.value = 1_000_000;
    fib(16);
    const used16 = 1_000_000 - (fuel.value as number);
    expect(used15).toBeGreaterThan(0);
    expect(used16).toBeGreaterThan(used15 * 1.5); // fib(16) makes ~1.6x the calls of fib(15)
    fuel.value = 10_000;
    expect(() => (instance.exports.spin as () => void)()).toThrow(WebAssembly.RuntimeError);
    expect(fuel.value as number).toBeLessThan(0);
  });

  it('caps memory at the limit', async () => {
    const m = instrument(original);
    const { instance } = await WebAssembly.instantiate(withLimits(m, { fuel: 1000, maxPages: 3 }) as Uint8Array<ArrayBuffer>);
    const grow = instance.exports.grow as (n: number) => number;
    const failed = instance.exports.__bext_grow_failed as WebAssembly.Global;
    expect(grow(2)).toBe(1);
    expect(failed.value).toBe(0);
    expect(grow(1)).toBe(-1); // would be 4 pages: the module allowed 4, the limit is 3
    expect(failed.value).toBe(1);
    expect(() => withLimits(m, { fuel: 1, maxPages: 0 })).toThrow(/starts with 1 memory pages/);
  });

  it('patches the fuel init in place', () => {
    const m = instrument(original);
    const a = withLimits(m, { fuel: 123_456_789, maxPages: 2 });
    expect(readFixedI32(a, m.fuelInitOffset + (a.length - m.bytes.length))).toBe(123_456_789);
  });

  it('turns a large real-world module (QuickJS, 1,400 functions) into valid WebAssembly', async () => {
    const require = createRequire(import.meta.url);
    const pkg = path.dirname(require.resolve('@jitl/quickjs-wasmfile-release-sync/package.json'));
    const big = new Uint8Array(await readFile(path.join(pkg, 'dist', 'emscripten-module.wasm')));
    const m = instrument(big);
    expect(m.functions).toBeGreaterThan(1000);
    expect(WebAssembly.validate(m.bytes as Uint8Array<ArrayBuffer>)).toBe(true);
    // It imports its memory, which a bext plugin may not (the cap could not hold).
    expect(() => withLimits(m, { fuel: 1, maxPages: 16 })).toThrow(/imports its memory/);
  });

  it('refuses what it cannot read, with the offset', () => {
    expect(() => instrument(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]))).toThrow(WasmFormatError);
    const bad = original.slice();
    // Corrupt the first opcode of the first body into an unassigned one.
    const m = instrument(original);
    expect(m.functions).toBe(7);
    const codeAt = findCodeSection(bad);
    bad[codeAt] = 0x27;
    expect(() => instrument(bad)).toThrow(/unsupported opcode 0x27/);
  });
});

/** Offset of the first instruction of the first function body. */
function findCodeSection(buf: Uint8Array): number {
  let p = 8;
  const leb = () => { let r = 0, s = 0, b: number; do { b = buf[p++]!; r |= (b & 0x7f) << s; s += 7; } while (b & 0x80); return r; };
  for (;;) {
    const id = buf[p++]!;
    const size = leb();
    if (id !== 10) { p += size; continue; }
    leb(); // count
    leb(); // body size
    const groups = leb();
    for (let i = 0; i < groups; i++) { leb(); p++; }
    return p;
  }
}

describe('wasm sandbox', () => {
  it('serves 1,000,000 calls on one instance', async () => {
    const spec = await guestSpec(await wat2wasm(guestWat()));
    const inst = await wasm.load(spec);
    const echo = hook(inst, 'onConnect');
    const info: ConnectInfo = { remoteAddress: '1.2.3.4', remotePort: 5, localPort: 80 };
    for (let i = 0; i < 1_000_000; i++) {
      const out = (await echo(info)) as ConnectInfo;
      if (out.remotePort !== 5) throw new Error(`call ${i} returned ${JSON.stringify(out)}`);
    }
    const s = inst.stats() as WasmStats;
    expect(s.calls).toBe(1_000_000);
    expect(s.errors).toBe(0);
    expect(s.restarts).toBe(0);
    expect(s.fuelTotal).toBe(s.fuelLast * 1_000_000);
    await inst.dispose();
  }, 120_000);

  it('runs an infinite loop out of fuel, replaces the instance and keeps serving', async () => {
    const spec = await guestSpec(await wat2wasm(guestWat(HOSTILE.infiniteLoop)), { name: 'looper', hooks: { onRequest: {}, onConnect: {} }, limits: { fuel: 200_000 } });
    const inst = await wasm.load(spec);
    const err = await rejection(() => hook(inst, 'onRequest')(req()));
    expect(err.code).toBe('BEXT_ERR_SANDBOX_LIMIT');
    expect(err.message).toBe('plugin "looper" ran out of fuel (200000 units) in onRequest');
    const s = inst.stats() as WasmStats;
    expect(s.restarts).toBe(1);
    expect(s.errors).toBe(1);
    expect(s.fuelLast).toBe(200_000);
    expect(await hook(inst, 'onConnect')({ remoteAddress: 'a', remotePort: 1, localPort: 2 })).toEqual({ remoteAddress: 'a', remotePort: 1, localPort: 2 });
    await inst.dispose();
  });

  it('stops a memory bomb at max pages', async () => {
    const spec = await guestSpec(await wat2wasm(guestWat(HOSTILE.memoryBomb)), { name: 'bomb', hooks: { onRequest: {} }, limits: { memoryMb: 2 } });
    const inst = await wasm.load(spec);
    const err = await rejection(() => hook(inst, 'onRequest')(req()));
    expect(err.code).toBe('BEXT_ERR_SANDBOX_LIMIT');
    expect(err.message).toBe('plugin "bomb" hit its memory limit (2 MiB) in onRequest');
    expect(await hook(inst, 'onConnect')({ remotePort: 1 })).toEqual({ remotePort: 1 });
    expect((inst.stats() as WasmStats).memoryBytes).toBe(65536); // the replacement starts small again
    await inst.dispose();
  });

  it('instruments a module once per content (cache hit on the second load)', async () => {
    const bytes = await wat2wasm(guestWat('(func (export "onRequest") (result i32) (i32.const 0))'));
    const before = instrumentationCache.stats();
    const a = await wasm.load(await guestSpec(bytes, { hooks: { onRequest: {} } }));
    const mid = instrumentationCache.stats();
    const b = await wasm.load(await guestSpec(bytes, { hooks: { onRequest: {} }, limits: { fuel: 1000, memoryMb: 1 } }));
    const after = instrumentationCache.stats();
    expect(mid.misses).toBe(before.misses + 1);
    expect(after.hits).toBe(mid.hits + 1);
    expect(after.misses).toBe(mid.misses);
    expect(await hook(b, 'onRequest')(req())).toBeUndefined();
    await a.dispose();
    await b.dispose();
  });

  it('refuses a module that lacks a declared hook', async () => {
    const spec = await guestSpec(await wat2wasm(guestWat()), { hooks: { onRequest: {} } });
    await expect(wasm.load(spec)).rejects.toMatchObject({ code: 'BEXT_ERR_PLUGIN_HOOK_MISSING' });
  });

  it('meters the start function too: a module that loops at instantiation fails to load', async () => {
    const spec = await guestSpec(await wat2wasm(guestWat('(func $spin (loop $l (br $l))) (start $spin)')), { limits: { fuel: 10_000 } });
    await expect(wasm.load(spec)).rejects.toMatchObject({ code: 'BEXT_ERR_PLUGIN_LOAD', hint: expect.stringContaining('ran out of fuel') });
  });

  it('refuses a file that is not WebAssembly', async () => {
    const spec = await guestSpec(new TextEncoder().encode('not wasm at all'));
    await expect(wasm.load(spec)).rejects.toMatchObject({ code: 'BEXT_ERR_PLUGIN_LOAD' });
  });

  it('serialises concurrent calls on one instance', async () => {
    const inst = await wasm.load(await guestSpec(await wat2wasm(guestWat())));
    const echo = hook(inst, 'onConnect');
    const outs = await Promise.all(Array.from({ length: 50 }, (_, i) => echo({ remoteAddress: `10.0.0.${i}`, remotePort: i, localPort: 1 })));
    outs.forEach((o, i) => expect((o as ConnectInfo).remotePort).toBe(i));
    await inst.dispose();
  });
});

describe('AssemblyScript PDK', () => {
  let dir: string;
  let inst: SandboxInstance;
  let rec: ReturnType<typeof recordingHost>;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'bext-pdk-'));
    await cp(path.join(here, 'fixtures', 'pdk-guest'), dir, { recursive: true });
    await buildWasmPlugin(dir);
    const manifest = JSON.parse(await readFile(path.join(dir, 'bext-plugin.json'), 'utf8'));
    rec = recordingHost('pdk-guest', ['publish:custom/*', 'kv', 'fetch:api.example.com', 'metrics'], { greeting: 'hi there' });
    inst = await wasm.load({
      manifest, dir, entryPath: path.join(dir, 'plugin.wasm'), host: rec.host, grants: ['publish:custom/*', 'kv', 'fetch:api.example.com', 'metrics'],
      limits: { timeoutMs: 1000, memoryMb: 8, fuel: 50_000_000, bodyBytes: 1 << 20 },
    });
  }, 180_000);
  afterAll(async () => {
    await inst?.dispose();
  });

  const onRequest = (over: Partial<RequestData>) => hook(inst, 'onRequest')(req(over));

  it('reads the projected request and continues with headers, ctx and response headers', async () => {
    expect(await onRequest({ method: 'POST', path: '/x', ctx: { tenant: { id: 7 } } })).toEqual({
      action: 'continue',
      setHeaders: { "x-method": "POST", "x-ua": "test-agent", "x-tenant": "{\"id\":7}", "x-headers": "2" },
      ctx: { seen: true },
      responseHeaders: { 'x-path': '/x' },
    });
  });

  it('decodes escaped, non-ASCII and repeated header values from the input bytes', async () => {
    const ua = 'agent "quoted" \\ back\\slash \u00e9\u2713 \u{1F600} and a long tail to cross several eight-byte words';
    const out = (await onRequest({ path: '/x', headers: { 'user-agent': [ua, 'second'], 'x-\u00e9': 'k' } })) as { setHeaders: Record<string, string> };
    expect(out.setHeaders['x-ua']).toBe(ua);
    expect(out.setHeaders['x-headers']).toBe('2');
  });

  it('responds, passes and fails', async () => {
    expect(await onRequest({ path: '/respond' })).toEqual({ action: 'respond', status: 418, headers: { 'x-a': 'b' }, body: 'teapot' });
    expect(await onRequest({ path: '/pass' })).toBeUndefined();
    const err = await rejection(() => onRequest({ path: '/fail', method: 'DELETE' }));
    expect(err.code).toBe('BEXT_ERR_PLUGIN_FAILED');
    expect(err.message).toBe('plugin "pdk-guest" failed in onRequest: nope: DELETE');
    expect((inst.stats() as WasmStats).restarts).toBe(0); // a reported error does not break the instance
  });

  it('round-trips unicode and escapes through JSON', async () => {
    expect(await onRequest({ path: '/unicode' })).toMatchObject({ body: 'h\u00e9llo "w"\n\u2713 \u{1F600}' });
  });

  it('serves the other hooks', async () => {
    expect(await hook(inst, 'onRoute')({ ...req({ path: '/items/42' }), route: '/items/:id', params: { id: '42' } })).toEqual({
      status: 200, headers: { 'content-type': 'text/plain' }, body: 'id=42',
    });
    expect(await hook(inst, 'onRender')(req({ path: '/page' }), async () => ({ status: 599 }))).toEqual({ status: 200, body: 'rendered /page' });
    expect(await hook(inst, 'onRender')(req({ path: '/next' }), async () => ({ status: 204 }))).toEqual({ status: 204 });
    expect(await hook(inst, 'onResponse')(req({ path: '/r' }), { status: 200, headers: { server: 'x' } })).toEqual({
      status: 201, setHeaders: { 'x-seen-status': '200', 'x-req-path': '/r', 'x-server': '-' }, removeHeaders: ['server'],
    });
    expect(await hook(inst, 'onPublish')({ topic: 'a/b', data: { n: [1, 2] }, publisher: 'me' })).toEqual({ action: 'transform', data: { wrapped: { n: [1, 2] } } });
    expect(await hook(inst, 'onPublish')({ topic: 'drop/me', data: null, publisher: 'me' })).toEqual({ action: 'drop', reason: 'dropped by me' });
    expect(await hook(inst, 'onConnect')({ remoteAddress: '10.0.0.66', remotePort: 9, localPort: 80 })).toEqual({ action: 'reject', reason: 'blocked 9' });
    expect(await hook(inst, 'onConnect')({ remoteAddress: '10.0.0.1', remotePort: 9, localPort: 80 })).toEqual({ action: 'allow' });
  });

  it('publishes (queued), logs, records metrics and reads its config', async () => {
    expect(await onRequest({ path: '/publish' })).toMatchObject({ setHeaders: { 'x-publish': '0' } });
    await until(() => rec.calls.publish.length === 1);
    expect(rec.calls.publish[0]).toEqual({ topic: 'custom/t', data: { path: '/publish' } });
    expect(await onRequest({ path: '/log' })).toMatchObject({ setHeaders: { 'x-metric': '0' } });
    expect(rec.calls.logs).toContainEqual({ level: 'warn', msg: 'hello from wasm', fields: { a: 1 } });
    expect(rec.calls.metrics).toEqual([{ name: 'hits', value: 2.5, labels: { route: 'x' }, kind: 'gauge' }]);
    expect(await onRequest({ path: '/config' })).toMatchObject({ setHeaders: { 'x-greeting': 'hi there' } });
  });

  it('reads kv through the cache: pending first, then the value; writes are visible at once', async () => {
    expect(await onRequest({ path: '/kv' })).toMatchObject({ setHeaders: { 'x-kv': 'pending' } });
    await until(async () => ((await onRequest({ path: '/kv' })) as { setHeaders: Record<string, string> }).setHeaders['x-kv'] !== 'pending');
    // The key was absent, so the guest set it; the next read sees its own write.
    expect(await onRequest({ path: '/kv' })).toMatchObject({ setHeaders: { 'x-kv': 'found:v1' } });
    await until(() => rec.kv.get('k') === 'v1');
    expect(await onRequest({ path: '/kv-del' })).toMatchObject({ setHeaders: { 'x-kv': '0' } });
    expect(await onRequest({ path: '/kv' })).toMatchObject({ setHeaders: { 'x-kv': 'absent:0' } });
  });

  it('fetches: pending on the first call, the response on a later one', async () => {
    expect(await onRequest({ path: '/fetch' })).toMatchObject({ setHeaders: { 'x-fetch': 'pending' } });
    let last: unknown;
    await until(async () => {
      last = await onRequest({ path: '/fetch' });
      return (last as { setHeaders: Record<string, string> }).setHeaders['x-fetch'] !== 'pending';
    });
    expect(last).toMatchObject({ setHeaders: { 'x-fetch': '200 fetched http://api.example.com/x' } });
    expect(rec.calls.fetches).toEqual([{ url: 'http://api.example.com/x' }]);
  });

  it('surfaces an AssemblyScript abort and replaces the instance', async () => {
    const before = (inst.stats() as WasmStats).restarts;
    const err = await rejection(() => onRequest({ path: '/abort' }));
    expect(err.code).toBe('BEXT_ERR_PLUGIN_FAILED');
    expect(err.message).toMatch(/^plugin "pdk-guest" aborted in onRequest: boom \(assembly\/index\.ts:\d+:\d+\)$/);
    expect((inst.stats() as WasmStats).restarts).toBe(before + 1);
    expect(await onRequest({ path: '/respond' })).toMatchObject({ status: 418 });
  });

  it('stops the AssemblyScript allocator at the memory limit', async () => {
    const err = await rejection(() => onRequest({ path: '/oom' }));
    expect(err.code).toBe('BEXT_ERR_SANDBOX_LIMIT');
    expect(err.message).toBe('plugin "pdk-guest" hit its memory limit (8 MiB) in onRequest');
    expect(await onRequest({ path: '/respond' })).toMatchObject({ status: 418 });
  });

  it('meters a compiled loop', async () => {
    const err = await rejection(() => onRequest({ path: '/spin' }));
    expect(err.message).toBe('plugin "pdk-guest" ran out of fuel (50000000 units) in onRequest');
  });

  it('calls a PDK guest synchronously, and defers a call that re-enters it from a host function', async () => {
    const manifest = JSON.parse(await readFile(path.join(dir, 'bext-plugin.json'), 'utf8'));
    let inner: unknown;
    let second: SandboxInstance | null = null;
    const host = {
      ...rec.host,
      publish: () => {
        inner = hook(second!, 'onConnect')({ remoteAddress: '10.0.0.66', remotePort: 1, localPort: 2 });
        return Promise.resolve(1);
      },
    };
    second = await wasm.load({ manifest, dir, entryPath: path.join(dir, 'plugin.wasm'), host, grants: ['publish:custom/*'], limits: { timeoutMs: 1000, memoryMb: 8, fuel: 1_000_000, bodyBytes: 1 << 20 } });
    const direct = hook(second, 'onRequest')(req({ path: '/publish' }));
    expect(direct).toEqual({ action: 'continue', setHeaders: { 'x-publish': '0' } }); // a value, not a promise
    expect(inner).toBeInstanceOf(Promise);
    expect(await inner).toEqual({ action: 'reject', reason: 'blocked 1' });
    await second.dispose();
    expect(() => hook(second!, 'onRequest')(req())).toThrow(/was disposed/);
  });

  it('builds the template with buildWasmPlugin', async () => {
    const tdir = await mkdtemp(path.join(tmpdir(), 'bext-tpl-'));
    await cp(path.join(here, '..', '..', 'sdk', 'templates', 'wasm'), tdir, { recursive: true });
    for (const f of ['bext-plugin.json', 'assembly/index.ts']) {
      const p = path.join(tdir, f);
      await writeFile(p, (await readFile(p, 'utf8')).replaceAll('__NAME__', 'hello'));
    }
    const { wasmPath, bytes } = await buildWasmPlugin(tdir);
    expect(bytes).toBeGreaterThan(1000);
    const manifest = JSON.parse(await readFile(path.join(tdir, 'bext-plugin.json'), 'utf8'));
    const t = await wasm.load({ manifest, dir: tdir, entryPath: wasmPath, host: recordingHost('hello').host, grants: [], limits: { timeoutMs: 100, memoryMb: 16, fuel: 5_000_000, bodyBytes: 1 << 20 } });
    expect(await hook(t, 'onRequest')(req({ path: '/hello/hello' }))).toMatchObject({ action: 'respond', status: 200, body: 'hello from hello\n' });
    expect(await hook(t, 'onRequest')(req({ path: '/' }))).toEqual({ action: 'continue', responseHeaders: { 'x-hello': '1' } });
    await t.dispose();
  }, 120_000);

  it('reports a build error with the compiler output', async () => {
    const bdir = await mkdtemp(path.join(tmpdir(), 'bext-bad-'));
    await cp(path.join(here, 'fixtures', 'pdk-guest'), bdir, { recursive: true });
    await writeFile(path.join(bdir, 'assembly', 'index.ts'), 'export function onRequest(): i32 { return "x"; }\n');
    await expect(buildWasmPlugin(bdir)).rejects.toThrow(/cannot build .*assembly\/index\.ts[\s\S]*TS2322/);
  }, 120_000);
});

/** Polls a condition the guest's queued host work will make true. */
async function until(cond: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setImmediate(r));
  }
}
