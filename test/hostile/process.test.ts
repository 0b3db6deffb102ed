/**
 * Hostile plugins against the process sandbox: each attack is contained
 * within its deadline or limit, and a normal call succeeds afterwards (after
 * a restart where the process had to be killed).
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import type { BextError } from '../../plugin-api/index.js';
import { probeBwrap } from '../../sandboxes/process/confine.js';
import { createProcessHost, type ProcessInstance } from '../../sandboxes/process/index.js';
import { loadPlugin, pluginFolder, removeFolder, request, type Recorder } from '../../sandboxes/process/testkit.js';

const TIMEOUT_MS = 500;
const host = createProcessHost({ backoff: { initialMs: 10, maxMs: 100, healthyMs: 60_000 } });
const confinement = await probeBwrap();

// One plugin, one attack per path; `/ok` is the normal call.
const hostile = String.raw`
import fs from 'node:fs';
import net from 'node:net';

function rawFrame(obj) {
  const payload = Buffer.from(typeof obj === 'string' ? obj : JSON.stringify(obj));
  const head = Buffer.alloc(4);
  head.writeUInt32BE(payload.length);
  fs.writeSync(1, Buffer.concat([head, payload]));
}
const attempt = (f) => { try { return { ok: f() }; } catch (e) { return { code: e.code ?? e.name } } };
const tcp = (port, host) => new Promise((r) => {
  const s = net.connect(port, host);
  s.setTimeout(1000, () => { s.destroy(); r('timeout'); });
  s.on('connect', () => { s.destroy(); r('connected'); });
  s.on('error', (e) => r(e.code));
});
const throwers = {
  string: () => { throw 'just a string'; },
  number: () => { throw 42; },
  null: () => { throw null; },
  undefined: () => { throw undefined; },
  object: () => { throw { reason: 'plain object' }; },
  nullProto: () => { throw Object.create(null); },
  symbol: () => { throw Symbol('s'); },
  proxy: () => { throw new Proxy({}, { get() { throw new Error('trap'); }, getPrototypeOf() { throw new Error('trap'); }, ownKeys() { throw new Error('trap'); } }); },
  rejectString: () => Promise.reject('rejected string'),
  errorWithThrowingMessage: () => { const e = new Error('x'); Object.defineProperty(e, 'message', { get() { throw new Error('nope'); } }); throw e; },
};

export async function onRequest(req) {
  const [, what, arg] = req.path.split('/');
  switch (what) {
    case 'ok': return { action: 'continue', ctx: { pid: process.pid } };
    case 'loop': for (;;) {}
    case 'host-busy': await bext_kv_get('k'); for (;;) {}
    case 'never': return new Promise(() => {});
    case 'heap': { const keep = []; for (;;) keep.push(new Array(1e5).fill(Math.random())); }
    case 'buffers': { const keep = []; for (;;) keep.push(Buffer.alloc(16 << 20, 1)); }
    case 'recurse': { const f = (n) => f(n + 1) + 1; return f(0); }
    case 'huge': return { action: 'respond', status: 200, body: 'x'.repeat(9 << 20) };
    case 'raw-huge': { const h = Buffer.alloc(4); h.writeUInt32BE(0xfffffff0); fs.writeSync(1, h); return new Promise(() => {}); }
    case 'garbage': fs.writeSync(1, Buffer.from([0, 0, 0, 3, 0xc1, 0xc1, 0xc1])); return new Promise(() => {});
    case 'proto-frame': rawFrame('{"__proto__":{"polluted":true},"t":"result"}'); return new Promise(() => {});
    case 'proto-result':
      return JSON.parse('{"action":"continue","ctx":{"__proto__":{"polluted":true},"constructor":{"prototype":{"polluted":true}},"kept":1}}');
    case 'proto-host':
      rawFrame('{"t":"host","id":0,"fn":"bext_log","args":["info","escaped",{"\\u005f_proto__":{"polluted":true},"constructor":{"prototype":{"polluted":true}},"kept":2}]}');
      return { action: 'continue' };
    case 'stdout': process.stdout.write('not a frame\n'); console.log('to the log'); return { action: 'continue' };
    case 'throw': return throwers[arg]();
    case 'ungranted': {
      const visible = { publish: typeof globalThis.bext_publish, fetch: typeof globalThis.bext_fetch };
      // Not exposed as globals, so go around the runner with raw frames.
      rawFrame({ t: 'host', id: 0, fn: 'bext_publish', args: ['admin/secrets', { x: 1 }] });
      rawFrame({ t: 'host', id: 0, fn: 'bext_fetch', args: [{ url: 'http://169.254.169.254/latest/meta-data' }] });
      rawFrame({ t: 'host', id: 0, fn: 'bext_no_such_fn', args: [] });
      return { action: 'continue', ctx: { visible } };
    }
    case 'escape': {
      const q = new URLSearchParams(req.query);
      const hostPid = Number(q.get('pid'));
      return {
        action: 'continue',
        ctx: {
          root: attempt(() => fs.readdirSync('/root')),
          repoFile: attempt(() => fs.readFileSync(q.get('file'), 'utf8')),
          shadow: attempt(() => fs.readFileSync('/etc/shadow', 'utf8')),
          ownFolder: attempt(() => fs.writeFileSync(new URL('./planted.mjs', import.meta.url), 'export {}')),
          usr: attempt(() => fs.writeFileSync('/usr/bin/planted', 'x')),
          killHost: attempt(() => process.kill(hostPid, 0)),
          redis: await tcp(6379, '127.0.0.1'),
          outside: await tcp(80, '1.1.1.1'),
          fetch: await fetch('http://127.0.0.1:6379/').then(() => 'reached', (e) => e.cause?.code ?? e.message),
          env: Object.keys(process.env),
          uid: process.getuid(),
        },
      };
    }
  }
  return { action: 'continue' };
}
`;

let dir: string;
let inst: ProcessInstance;
let rec: Recorder;

beforeAll(async () => {
  dir = pluginFolder({ 'plugin.mjs': hostile });
  ({ inst, rec } = await loadPlugin(host, dir, {
    name: 'hostile',
    grants: ['kv', 'publish:custom/*'],
    limits: { timeoutMs: TIMEOUT_MS, memoryMb: 32 },
  }));
});
afterAll(async () => {
  await inst?.dispose();
  removeFolder(dir);
});

function call(path: string): Promise<unknown> {
  return inst.hooks.onRequest!(request({ path })) as Promise<unknown>;
}

async function attack(path: string): Promise<{ err: BextError; ms: number }> {
  const t = performance.now();
  const err = await call(path).then(
    (v) => {
      throw new Error(`${path} was expected to fail but returned ${JSON.stringify(v).slice(0, 200)}`);
    },
    (e: BextError) => e,
  );
  return { err, ms: performance.now() - t };
}

/** The normal call works again; `restarted` says whether the process had to be replaced. */
async function recovers(restartsBefore: number, restarted: boolean): Promise<void> {
  if (restarted) await inst.whenReady();
  expect(await call('/ok')).toMatchObject({ action: 'continue' });
  expect(inst.stats().restarts).toBe(restartsBefore + (restarted ? 1 : 0));
}

describe('hostile process plugins', () => {
  // A test that failed midway must not leave the next one facing a restart.
  beforeEach(() => inst.whenReady());

  it.each([
    ['an infinite loop', '/loop'],
    ['a busy loop in a host-function callback', '/host-busy'],
    ['a plugin that never answers', '/never'],
  ])('%s is killed at its deadline', async (_, path) => {
    const before = inst.stats().restarts;
    const { err, ms } = await attack(path);
    expect(err.code).toBe('BEXT_ERR_PLUGIN_TIMEOUT');
    expect(ms).toBeGreaterThanOrEqual(TIMEOUT_MS - 1);
    expect(ms).toBeLessThan(TIMEOUT_MS + 1500);
    await recovers(before, true);
  });

  it('a JavaScript heap bomb hits the memory limit', async () => {
    const before = inst.stats().restarts;
    const { err } = await attack('/heap');
    // V8 usually reports the exhausted heap before the deadline; a slow GC spiral meets the deadline instead.
    expect(['BEXT_ERR_SANDBOX_LIMIT', 'BEXT_ERR_PLUGIN_TIMEOUT']).toContain(err.code);
    if (err.code === 'BEXT_ERR_SANDBOX_LIMIT') expect(err.message).toMatch(/ran out of memory \(limit 32 MiB\)/);
    await recovers(before, true);
  });

  it('a buffer bomb is stopped by the data limit', async () => {
    const before = inst.stats().restarts;
    const { err } = await attack('/buffers');
    // Either the allocation throws inside the plugin, or V8 then cannot grow its own heap and aborts,
    // or (on a loaded machine) the allocating loop meets the deadline and the process is killed.
    if (err.code === 'BEXT_ERR_SANDBOX_LIMIT') {
      expect(err.message).toMatch(/ran out of memory/);
      await recovers(before, true);
    } else if (err.code === 'BEXT_ERR_PLUGIN_TIMEOUT') {
      expect(err.message).toMatch(/its process was killed/);
      await recovers(before, true);
    } else {
      expect(err.message).toMatch(/Array buffer allocation failed/);
      await recovers(before, false);
    }
  });

  it('deep recursion fails the call only', async () => {
    const before = inst.stats().restarts;
    const { err } = await attack('/recurse');
    expect(err.message).toMatch(/RangeError: Maximum call stack size exceeded/);
    await recovers(before, false);
  });

  it('a result over the frame limit is refused', async () => {
    const before = inst.stats().restarts;
    const { err } = await attack('/huge');
    expect(err.code).toBe('BEXT_ERR_PLUGIN_FAILED');
    expect(err.message).toMatch(/over the 8388608-byte frame limit/);
    await recovers(before, false);
  });

  it('a raw frame header over the limit kills the process', async () => {
    const before = inst.stats().restarts;
    const { err } = await attack('/raw-huge');
    expect(err.code).toBe('BEXT_ERR_SANDBOX_LIMIT');
    expect(err.message).toMatch(/4294967280-byte frame/);
    await recovers(before, true);
  });

  it('garbage on stdout is a protocol violation', async () => {
    const before = inst.stats().restarts;
    const { err } = await attack('/garbage');
    expect(err.message).toMatch(/broke the process protocol with an undecodable frame/);
    await recovers(before, true);
  });

  it('writes to process.stdout and console.log do not corrupt the protocol', async () => {
    const before = inst.stats().restarts;
    expect(await call('/stdout')).toEqual({ action: 'continue' });
    await expect.poll(() => rec.logs.map((l) => l.msg)).toEqual(expect.arrayContaining(['not a frame', 'to the log']));
    await recovers(before, false);
  });

  describe('prototype pollution aimed at the host', () => {
    const polluted = () => (Object.prototype as Record<string, unknown>).polluted;

    it('a frame that is {"__proto__": ...} pollutes nothing and is a protocol violation', async () => {
      const before = inst.stats().restarts;
      const { err } = await attack('/proto-frame');
      expect(err.message).toMatch(/broke the process protocol/);
      expect(polluted()).toBeUndefined();
      await recovers(before, true);
    });

    it('a result carrying __proto__ and constructor.prototype is stripped', async () => {
      const r = (await call('/proto-result')) as { ctx: Record<string, unknown> };
      expect(r.ctx).toEqual({ kept: 1 });
      expect(Object.getPrototypeOf(r.ctx)).toBe(Object.prototype);
      // What a careless consumer might do with it.
      Object.assign({}, r.ctx);
      const merge = (t: Record<string, unknown>, s: Record<string, unknown>) => {
        for (const k of Object.keys(s)) {
          if (s[k] && typeof s[k] === 'object') merge((t[k] ??= {}) as Record<string, unknown>, s[k] as Record<string, unknown>);
          else t[k] = s[k];
        }
      };
      merge({}, r.ctx);
      expect(polluted()).toBeUndefined();
    });

    it('host-function arguments with an escaped __proto__ key are stripped', async () => {
      expect(await call('/proto-host')).toEqual({ action: 'continue' });
      await expect.poll(() => rec.logs.find((l) => l.msg === 'escaped')).toBeDefined();
      const line = rec.logs.find((l) => l.msg === 'escaped')!;
      expect(line.fields).toEqual({ kept: 2 });
      expect(polluted()).toBeUndefined();
    });

    it('MessagePack results are stripped the same way', async () => {
      const mp = createProcessHost({ codec: 'msgpack' });
      const d = pluginFolder({ 'plugin.mjs': hostile });
      const other = await loadPlugin(mp, d, { limits: { timeoutMs: TIMEOUT_MS } });
      try {
        const r = (await other.inst.hooks.onRequest!(request({ path: '/proto-result' }))) as { ctx: Record<string, unknown> };
        expect(other.inst.stats().codec).toBe('msgpack');
        // msgpackr renames a __proto__ key to __proto_ rather than setting the prototype.
        expect(Object.getPrototypeOf(r.ctx)).toBe(Object.prototype);
        expect(Object.hasOwn(r.ctx, 'constructor')).toBe(false);
        expect(r.ctx.kept).toBe(1);
        expect(polluted()).toBeUndefined();
      } finally {
        await other.inst.dispose();
        removeFolder(d);
      }
    });
  });

  it.each([
    ['string', 'just a string'],
    ['number', 'number thrown: 42'],
    ['null', 'object thrown: null'],
    ['undefined', 'undefined was thrown'],
    ['object', 'non-Error thrown: {"reason":"plain object"}'],
    ['nullProto', 'non-Error thrown: {}'],
    ['symbol', 'symbol thrown: Symbol(s)'],
    ['proxy', 'a value that cannot be described was thrown'],
    ['rejectString', 'rejected string'],
    ['errorWithThrowingMessage', 'a value that cannot be described was thrown'],
  ])('throwing %s is reported as a failed call', async (kind, message) => {
    const before = inst.stats().restarts;
    const { err } = await attack(`/throw/${kind}`);
    expect(err.code).toBe('BEXT_ERR_PLUGIN_FAILED');
    expect(err.message).toBe(`plugin "hostile" onRequest: ${message}`);
    await recovers(before, false);
  });

  it('ungranted publish and fetch are refused and audited', async () => {
    const before = inst.stats().restarts;
    const r = (await call('/ungranted')) as { ctx: { visible: Record<string, string> } };
    expect(r.ctx.visible).toEqual({ publish: 'function', fetch: 'function' });
    await expect.poll(() => rec.audit.map((a) => a.fn)).toEqual(expect.arrayContaining(['bext_publish', 'bext_fetch']));
    expect(rec.audit).toContainEqual({ fn: 'bext_publish', detail: 'admin/secrets' });
    expect(rec.audit).toContainEqual({ fn: 'bext_fetch', detail: '169.254.169.254' });
    expect(rec.published).toEqual([]);
    await recovers(before, false);
  });

  it.runIf(confinement.ok)('cannot reach the host, its files or the network under bwrap', async () => {
    const before = inst.stats().restarts;
    const repoFile = fileURLToPath(new URL('../../package.json', import.meta.url));
    const query = new URLSearchParams({ pid: String(process.pid), file: repoFile }).toString();
    const r = (await inst.hooks.onRequest!(request({ path: '/escape', query }))) as { ctx: Record<string, unknown> };
    expect(r.ctx).toMatchObject({
      root: { code: 'ENOENT' },
      repoFile: { code: 'ENOENT' },
      shadow: { code: 'ENOENT' },
      ownFolder: { code: 'EROFS' },
      usr: { code: 'EROFS' },
      killHost: { code: 'ESRCH' },
      uid: 65534,
    });
    expect(r.ctx.redis).not.toBe('connected');
    expect(r.ctx.outside).not.toBe('connected');
    expect(r.ctx.fetch).not.toBe('reached');
    expect((r.ctx.env as string[]).sort()).toEqual(['HOME', 'PATH', 'PWD']);
    await recovers(before, false);
  });
});
