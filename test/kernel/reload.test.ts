/**
 * Config hot reload: the new plugin set is built beside the old one and
 * swapped atomically; in-flight requests finish on the old set; a broken
 * config is refused and the old set keeps serving. All under a load that
 * must see zero failed requests.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../kernel/config.js';
import { Logger } from '../../kernel/log.js';
import { Kernel } from '../../kernel/server.js';
import { tmp, until } from '../helpers.js';

const BIN = resolve('kernel/cli/bin.js');
// Async: the server under test runs in this process and must keep serving while the CLI runs.
const cli = (args: string[], cwd: string) =>
  new Promise<{ status: number | null }>((res) => execFile(process.execPath, [BIN, ...args], { cwd }, (err) => res({ status: err ? ((err as { code?: number }).code ?? 1) : 0 })));
type G = { __disposed: string[]; __gate: { waiting: number; open: (() => void) | null } };
const g = globalThis as unknown as G;

let dir: string;
let k: Kernel;
let url: string;
const agent = new Agent({ connections: 8 });
let load: { stop: boolean; ok: number; failed: number; done: Promise<void> };

function writePlugin(name: string, body: string, extra = '') {
  const d = join(dir, name);
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, 'bext-plugin.json'), JSON.stringify({ name, version: '1.0.0', sandbox: 'trusted', entry: 'index.mjs', routes: [{ path: `/${name}` }, { path: `/${name}/slow` }], limits: { timeoutMs: 60_000 } }));
  writeFileSync(join(d, 'index.mjs'), `${extra}
globalThis.__disposed ??= [];
export default () => ({
  async onRoute(req) {
    if (req.route.endsWith('/slow')) { globalThis.__gate.waiting++; await new Promise((r) => (globalThis.__gate.open = r)); }
    return { status: 200, body: ${JSON.stringify(body)} };
  },
  dispose() { globalThis.__disposed.push(${JSON.stringify(`${name}:${body}`)}); },
});`);
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmp(), 'reload-'));
  g.__disposed = [];
  g.__gate = { waiting: 0, open: null };
  writePlugin('alpha', 'alpha v1');
  writePlugin('beta', 'beta v1');
  writeFileSync(join(dir, 'bext.config.json'), JSON.stringify({ server: { port: 0, host: '127.0.0.1' }, admin: { port: null } }));
  expect((await cli(['plugin', 'add', './alpha', '--yes'], dir)).status).toBe(0);
  k = await Kernel.create({ config: loadConfig(join(dir, 'bext.config.json')), configFile: join(dir, 'bext.config.json'), lockFile: join(dir, 'plugins.lock.json'), logger: new Logger('error') });
  url = `http://127.0.0.1:${(await k.listen()).port}`;
  load = { stop: false, ok: 0, failed: 0, done: Promise.resolve() };
  load.done = (async () => {
    while (!load.stop) {
      const r = await request(`${url}/alpha`, { dispatcher: agent }).catch(() => null);
      const body = r ? await r.body.text() : '';
      if (r && r.statusCode === 200 && body.startsWith('alpha')) load.ok++;
      else load.failed++;
    }
  })();
});
afterAll(async () => {
  load.stop = true;
  await load.done;
  await k.close(0);
  await agent.close();
});

const get = async (p: string) => {
  const r = await request(`${url}${p}`, { dispatcher: agent });
  return { status: r.statusCode, body: await r.body.text() };
};

describe('hot reload', () => {
  it('adds a plugin from the lock and keeps the unchanged one as it is', async () => {
    expect((await get('/beta')).status).toBe(404);
    const alpha = k.loaded().find((p) => p.name === 'alpha')!;
    expect((await cli(['plugin', 'add', './beta', '--yes'], dir)).status).toBe(0);
    const r = await k.reload();
    expect(r).toMatchObject({ ok: true, loaded: ['beta'], reused: ['alpha'], removed: [] });
    expect(await get('/beta')).toEqual({ status: 200, body: 'beta v1' });
    expect(k.loaded().find((p) => p.name === 'alpha')).toBe(alpha);
  });

  it('refuses a broken config or lock and keeps serving the old set', async () => {
    writeFileSync(join(dir, 'bext.config.json'), '{ "server": { "port": 0, }');
    const bad = await k.reload();
    expect(bad.ok).toBe(false);
    expect(bad.ok === false && bad.error.code).toBe('BEXT_ERR_CONFIG_PARSE');
    writeFileSync(join(dir, 'bext.config.json'), JSON.stringify({ server: { port: 0, host: '127.0.0.1' }, admin: { port: null }, plugins: { alpha: { nope: 1 } } }));
    const bad2 = await k.reload();
    expect(bad2.ok === false && bad2.error.message).toContain('$.plugins.alpha');
    writeFileSync(join(dir, 'bext.config.json'), JSON.stringify({ server: { port: 0, host: '127.0.0.1' }, admin: { port: null } }));
    expect(await get('/beta')).toEqual({ status: 200, body: 'beta v1' });
    expect(g.__disposed).toEqual([]);
  });

  it('hot-swaps a plugin whose code changed; requests in flight finish on the old code', async () => {
    const slow = get('/alpha/slow');
    await until(() => g.__gate.waiting === 1, 5000, 'a request in flight on alpha v1');
    const release = g.__gate.open!;
    writePlugin('alpha', 'alpha v2');
    expect((await cli(['plugin', 'add', './alpha', '--yes'], dir)).status).toBe(0);
    const r = await k.reload();
    expect(r).toMatchObject({ ok: true, loaded: ['alpha'], reused: ['beta'], removed: ['alpha'] });
    expect((await get('/alpha')).body).toBe('alpha v2');
    // The old alpha is still alive: its request has not finished.
    expect(g.__disposed).toEqual([]);
    release();
    expect(await slow).toEqual({ status: 200, body: 'alpha v1' });
    await until(() => g.__disposed.length === 1, 5000, 'the old alpha to be disposed');
    expect(g.__disposed).toEqual(['alpha:alpha v1']);
  });

  it('removes a plugin dropped from the lock, and reloads by itself when the files change', async () => {
    k.watch();
    expect((await cli(['plugin', 'remove', 'beta'], dir)).status).toBe(0);
    await until(async () => (await get('/beta')).status === 404, 10_000, 'the watcher to drop beta');
    await until(() => g.__disposed.includes('beta:beta v1'), 5000, 'beta disposed');
  });

  it('lost no request of the load that ran throughout', async () => {
    load.stop = true;
    await load.done;
    expect(load.ok).toBeGreaterThan(50);
    expect(load.failed).toBe(0);
  });
});
