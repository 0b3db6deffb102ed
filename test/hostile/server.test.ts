/**
 * Hostile plugin code through a running server, for every sandbox kind. Each
 * attack runs in one tenant while another tenant of the same kind takes a
 * load of normal requests: the attack is contained within its deadline or
 * limit, denials are audited, and the normal requests see zero errors.
 */
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { tmp, until } from '../helpers.js';

const FIX = resolve('test/hostile/fixtures');
const KINDS = ['quickjs', 'isolate', 'process', 'wasm'] as const;
type Kind = (typeof KINDS)[number];
const ENTRY: Record<Kind, string> = { quickjs: 'plugin.js', isolate: 'plugin.js', process: 'plugin.mjs', wasm: 'plugin.wasm' };

const JS_CASES = ['spin', 'regex', 'hostloop', 'bomb', 'recurse', 'huge', 'proto', 'reach', 'publish', 'fetch-private', 'fetch-other', 'throw-number', 'throw-null', 'reject-undefined', 'never'];
const WASM_CASES = ['spin', 'hostloop', 'bomb', 'recurse', 'huge', 'publish', 'fetch-private', 'fetch-other', 'throw-number', 'abort', 'never'];
const DENIAL_CASES = new Set(['publish', 'fetch-private', 'fetch-other']);
const INSPECT_CASES = new Set(['proto', 'reach']);

async function pluginDir(kind: Kind, name: string, source: string, route: string): Promise<string> {
  const dir = mkdtempSync(join(tmp(), `${name}-`));
  writeFileSync(join(dir, 'bext-plugin.json'), JSON.stringify({
    name, version: '1.0.0', sandbox: kind, entry: ENTRY[kind],
    routes: [{ path: route }],
    needs: ['method', 'path'],
    limits: { timeoutMs: 300, memoryMb: 32, fuel: 50_000_000, quarantineAfter: 1000 },
  }));
  if (kind === 'wasm') {
    mkdirSync(join(dir, 'assembly'));
    copyFileSync(join(FIX, 'wasm', source), join(dir, 'assembly', 'index.ts'));
    const { buildWasmPlugin } = await import('../../sdk/build.js');
    await buildWasmPlugin(dir);
  } else copyFileSync(join(FIX, source), join(dir, ENTRY[kind]));
  return dir;
}

for (const kind of KINDS) {
  describe(`hostile code in the ${kind} sandbox`, () => {
    let b: Bext;
    let evilDir: string;
    const agent = new Agent({ connections: 16 });
    const get = async (host: string, path: string) => {
      const t0 = Date.now();
      const r = await request(`${b.url}${path}`, { headers: { host }, dispatcher: agent });
      const body = await r.body.text();
      return { status: r.statusCode, body, headers: r.headers, ms: Date.now() - t0 };
    };

    beforeAll(async () => {
      evilDir = await pluginDir(kind, `hostile-${kind}`, kind === 'wasm' ? 'index.ts' : 'hostile.js', '/hostile/:case');
      const goodDir = await pluginDir(kind, `good-${kind}`, kind === 'wasm' ? 'good.ts' : 'good.js', '/good/:n');
      b = await startBext({
        plugins: [{ dir: evilDir, scope: 'group', grants: [] }, { dir: goodDir, scope: 'group', grants: [] }],
        config: { groups: [{ name: 'evil', hosts: ['evil.test'], add: [`hostile-${kind}`] }, { name: 'good', hosts: ['good.test'], add: [`good-${kind}`] }] },
      });
    }, 120_000);
    afterAll(async () => {
      await b?.close();
      await agent.close();
    });

    for (const c of kind === 'wasm' ? WASM_CASES : JS_CASES) {
      it(`${c}: contained while the other tenant is served without errors`, async () => {
        // A crashed instance comes back after its restart backoff; each attack starts on a healthy one.
        await until(async () => (await get('evil.test', '/hostile/ok')).status === 200, 30_000, 'the hostile plugin to be healthy');
        const auditsBefore = b.kernel.audits.length;
        const normal = Array.from({ length: 30 }, (_, i) => get('good.test', `/good/${i}`));
        const attack = get('evil.test', `/hostile/${c}`);
        const [ok, bad] = await Promise.all([Promise.all(normal), attack]);
        expect(ok.map((r) => r.status)).toEqual(Array(30).fill(200));
        expect(ok.every((r, i) => r.body === `good ${i}`)).toBe(true);
        expect(bad.ms).toBeLessThan(15_000);
        if (DENIAL_CASES.has(c)) {
          expect(bad.status).toBe(200);
          expect(bad.body).toBe('BEXT_ERR_CAP_DENIED');
          const audits = b.kernel.audits.slice(auditsBefore);
          expect(audits.some((a) => a.plugin === `hostile-${kind}` && a.fn === (c === 'publish' ? 'bext_publish' : 'bext_fetch'))).toBe(true);
        } else if (c === 'proto') {
          expect(({} as Record<string, unknown>).polluted).toBeUndefined();
          expect(Object.prototype.hasOwnProperty.call(Object.prototype, 'polluted')).toBe(false);
          const arr: number[] = [];
          arr.push(1);
          expect(arr).toEqual([1]);
          expect((globalThis as Record<string, unknown>).touched).toBeUndefined();
        } else if (c === 'reach') {
          expect(bad.status).toBe(200);
          const r = JSON.parse(bad.body) as Record<string, string>;
          expect(r.fsWrite).toBe('blocked');
          expect(existsSync(join(evilDir, 'written-by-guest.txt'))).toBe(false);
          if (kind !== 'process') {
            expect(r).toMatchObject({ process: 'undefined', require: 'undefined', fsRead: 'blocked', net: 'blocked' });
          } else {
            // A process plugin is real Node, so confinement is the OS's: bwrap gives it no network.
            expect(r.net).toBe('blocked');
          }
        } else {
          expect(bad.status, bad.body).toBeGreaterThanOrEqual(500);
          expect(JSON.parse(bad.body).error).toMatch(/^BEXT_ERR_/);
        }
      });
    }

    it('serves a normal call afterwards (a broken instance was replaced)', async () => {
      await until(async () => (await get('evil.test', '/hostile/ok')).status === 200, 30_000, 'the hostile plugin to be healthy');
      const r = await get('evil.test', '/hostile/ok');
      expect(r.status).toBe(200);
      expect(r.body).toBe('ok');
      expect(readFileSync(join(evilDir, 'bext-plugin.json'), 'utf8')).toContain(`hostile-${kind}`);
    });
  });
}
