/**
 * One behaviour — tag requests, block a path, claim a route, transform a
 * response, publish to a topic — implemented once per sandbox kind, and the
 * same assertions for all five.
 */
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { tmp, until } from '../helpers.js';

const FIX = resolve('test/conformance/fixtures');
const KINDS = ['trusted', 'quickjs', 'isolate', 'process', 'wasm'] as const;
type Kind = (typeof KINDS)[number];

const ENTRY: Record<Kind, string> = { trusted: 'index.mjs', quickjs: 'plugin.js', isolate: 'plugin.js', process: 'plugin.mjs', wasm: 'plugin.wasm' };

/** Builds the fixture folder of one kind from the shared sources. */
async function fixture(kind: Kind): Promise<string> {
  const dir = mkdtempSync(join(tmp(), `conformance-${kind}-`));
  const manifest = readFileSync(join(FIX, 'manifest.json'), 'utf8').replaceAll('__KIND__', kind).replaceAll('__ENTRY__', ENTRY[kind]);
  writeFileSync(join(dir, 'bext-plugin.json'), manifest);
  if (kind === 'trusted') copyFileSync(join(FIX, 'trusted.mjs'), join(dir, ENTRY[kind]));
  else if (kind === 'wasm') {
    mkdirSync(join(dir, 'assembly'));
    copyFileSync(join(FIX, 'wasm', 'index.ts'), join(dir, 'assembly', 'index.ts'));
    const { buildWasmPlugin } = await import('../../sdk/build.js');
    await buildWasmPlugin(dir);
  } else writeFileSync(join(dir, ENTRY[kind]), readFileSync(join(FIX, 'guest.js'), 'utf8').replaceAll('__KIND__', kind));
  return dir;
}

const sink = () => (globalThis as unknown as { __conformanceSink: { topic: string; data: Record<string, unknown>; publisher: string }[] }).__conformanceSink;

for (const kind of KINDS) {
  describe(`conformance: ${kind}`, () => {
    let b: Bext;
    beforeAll(async () => {
      const sinkDir = mkdtempSync(join(tmp(), 'sink-'));
      writeFileSync(join(sinkDir, 'bext-plugin.json'), JSON.stringify({ name: 'sink', version: '1.0.0', sandbox: 'trusted', entry: 'sink.mjs', hooks: { onPublish: {} } }));
      copyFileSync(join(FIX, 'sink.mjs'), join(sinkDir, 'sink.mjs'));
      b = await startBext({ plugins: [{ dir: await fixture(kind), grants: ['publish:custom/conformance'] }, sinkDir] });
    }, 120_000);
    afterAll(() => b?.close());

    it('claims a route, sees its own tag, publishes, and its response is transformed', async () => {
      const r = await fetch(`${b.url}/conformance/items/42`);
      expect(r.status).toBe(200);
      expect(await r.text()).toBe(`HELLO 42 FROM ${kind.toUpperCase()} TAG=${kind.toUpperCase()} METHOD=GET`);
      expect(r.headers.get('x-conformance-seen')).toBe('200');
      await until(() => sink().length > 0, 5000, 'the publish to reach the sink');
      expect(sink()).toEqual([{ topic: 'custom/conformance', data: { kind, path: '/conformance/items/42', id: '42' }, publisher: `conformance-${kind}` }]);
    });

    it('blocks a path with its own answer', async () => {
      const r = await fetch(`${b.url}/conformance/blocked`);
      expect(r.status).toBe(403);
      expect(await r.text()).toBe(`blocked by ${kind}`);
    });

    it('is not called for requests its match excludes', async () => {
      const p = b.kernel.loaded().find((x) => x.name === `conformance-${kind}`)!;
      const before = p.counter('onRequest').calls;
      expect((await fetch(`${b.url}/elsewhere`)).status).toBe(404);
      expect(p.counter('onRequest').calls).toBe(before);
      expect(p.errors).toBe(0);
    });
  });
}
