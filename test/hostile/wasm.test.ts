/**
 * Hostile WASM guests, at the sandbox level: each misbehaves in onRequest,
 * must be stopped by its own limits with a clear error, and the same
 * SandboxInstance must then serve a normal call (its echo onConnect).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { BextError, type RequestData, type SandboxInstance } from '../../plugin-api/index.js';
import wasm, { MAX_OUTPUT_BYTES, type WasmStats } from '../../sandboxes/wasm/index.js';
import { HOSTILE, guestSpec, guestWat, recordingHost, wat2wasm } from '../../sandboxes/wasm/test-guests.js';

const request: RequestData = {
  id: 'h1', method: 'GET', path: '/', query: '', host: 'example.com', headers: {},
  remoteAddress: '127.0.0.1', scheme: 'http', httpVersion: '1.1', ctx: {},
};

let inst: SandboxInstance | null = null;
afterEach(async () => {
  await inst?.dispose();
  inst = null;
});

async function load(behaviour: keyof typeof HOSTILE, opts: Parameters<typeof guestSpec>[1] = {}): Promise<SandboxInstance> {
  inst = await wasm.load(await guestSpec(await wat2wasm(guestWat(HOSTILE[behaviour])), { name: behaviour.toLowerCase(), hooks: { onRequest: {}, onConnect: {} }, ...opts }));
  return inst;
}

async function failure(i: SandboxInstance): Promise<BextError> {
  try {
    await (i.hooks.onRequest as (r: RequestData) => Promise<unknown>)(request);
  } catch (e) {
    expect(e).toBeInstanceOf(BextError);
    return e as BextError;
  }
  throw new Error('the hostile call returned normally');
}

async function stillServes(i: SandboxInstance): Promise<void> {
  const info = { remoteAddress: '10.1.2.3', remotePort: 4242, localPort: 80 };
  expect(await (i.hooks.onConnect as (x: typeof info) => Promise<unknown>)(info)).toEqual(info);
}

describe('hostile wasm guests', () => {
  it('infinite loop: stopped by fuel within the limit', async () => {
    const i = await load('infiniteLoop', { limits: { fuel: 1_000_000 } });
    const err = await failure(i);
    expect(err.code).toBe('BEXT_ERR_SANDBOX_LIMIT');
    expect(err.message).toBe('plugin "infiniteloop" ran out of fuel (1000000 units) in onRequest');
    expect((i.stats() as WasmStats).fuelLast).toBe(1_000_000);
    await stillServes(i);
    expect((i.stats() as WasmStats).restarts).toBe(1);
  });

  it('a plugin that never answers (looping through host calls) runs out of fuel', async () => {
    const i = await load('busyHostLoop', { limits: { fuel: 100_000 } });
    const err = await failure(i);
    expect(err.code).toBe('BEXT_ERR_SANDBOX_LIMIT');
    expect(err.message).toContain('ran out of fuel');
    await stillServes(i);
  });

  it('memory bomb: stopped at max pages', async () => {
    const i = await load('memoryBomb', { limits: { memoryMb: 4 } });
    const err = await failure(i);
    expect(err.code).toBe('BEXT_ERR_SANDBOX_LIMIT');
    expect(err.message).toBe('plugin "memorybomb" hit its memory limit (4 MiB) in onRequest');
    await stillServes(i);
    expect((i.stats() as WasmStats).memoryBytes).toBeLessThanOrEqual(4 << 20);
  });

  it('host-memory bomb (Extism blocks): stopped by the allocation cap', async () => {
    const i = await load('hostMemoryBomb', { limits: { memoryMb: 4 } });
    const err = await failure(i);
    expect(err.code).toBe('BEXT_ERR_SANDBOX_LIMIT');
    expect(err.message).toMatch(/^plugin "hostmemorybomb" (allocated more than 4 MiB of host memory|made more than \d+ host allocations) in onRequest$/);
    await stillServes(i);
  });

  it('deep recursion: stack overflow trap, instance replaced', async () => {
    const i = await load('deepRecursion');
    const err = await failure(i);
    expect(err.code).toBe('BEXT_ERR_SANDBOX_LIMIT');
    expect(err.message).toBe('plugin "deeprecursion" overflowed its stack in onRequest');
    await stillServes(i);
    expect((i.stats() as WasmStats).restarts).toBe(1);
  });

  it('huge output: refused over the output cap', async () => {
    const i = await load('hugeOutput');
    const err = await failure(i);
    expect(err.code).toBe('BEXT_ERR_SANDBOX_LIMIT');
    expect(err.message).toBe(`plugin "hugeoutput" returned 2097152 bytes from onRequest; the limit is ${MAX_OUTPUT_BYTES}`);
    await stillServes(i);
  });

  it('throwing (error_set): the guest message is surfaced', async () => {
    const i = await load('throws');
    const err = await failure(i);
    expect(err.code).toBe('BEXT_ERR_PLUGIN_FAILED');
    expect(err.message).toBe('plugin "throws" failed in onRequest: guest says no');
    await stillServes(i);
    expect((i.stats() as WasmStats).restarts).toBe(0);
  });

  it('a plain trap is reported as a failure and the instance replaced', async () => {
    const i = await load('trap');
    const err = await failure(i);
    expect(err.code).toBe('BEXT_ERR_PLUGIN_FAILED');
    expect(err.message).toBe('plugin "trap" trapped in onRequest: unreachable');
    await stillServes(i);
  });

  it('ungranted publish: denied to the guest, refused and audited by the host', async () => {
    const rec = recordingHost('publish');
    const i = await load('publish', { host: rec.host, grants: [] });
    expect(await (i.hooks.onRequest as (r: RequestData) => Promise<unknown>)(request)).toBe('denied');
    // The kernel's HostApi saw the call (that is where it audits) and refused it.
    await until(() => (i.stats() as WasmStats).hostDenied === 1);
    expect(rec.calls.denied).toEqual(['bext_publish']);
    expect(rec.calls.publish).toEqual([]);
    await stillServes(i);
  });

  it('granted publish goes through', async () => {
    const rec = recordingHost('publish', ['publish:custom/*']);
    const i = await load('publish', { host: rec.host, grants: ['publish:custom/*'] });
    expect(await (i.hooks.onRequest as (r: RequestData) => Promise<unknown>)(request)).toBe('other');
    await until(() => rec.calls.publish.length === 1);
    expect(rec.calls.publish[0]).toEqual({ topic: 'custom/topic', data: { n: 1 } });
  });

  it('repeated failures: each broken instance is replaced and the next call is served', async () => {
    const i = await load('infiniteLoop', { limits: { fuel: 50_000 } });
    for (let n = 0; n < 20; n++) {
      expect((await failure(i)).code).toBe('BEXT_ERR_SANDBOX_LIMIT');
      await stillServes(i);
    }
    expect((i.stats() as WasmStats).restarts).toBe(20);
  });
});

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setImmediate(r));
  }
}
