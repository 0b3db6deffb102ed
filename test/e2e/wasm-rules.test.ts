/**
 * The third-party rule plugin in examples/wasm-rules: built with
 * `bext plugin build`, added as a bare .wasm with `bext plugin add`, run
 * fuel-metered with only the capabilities it was granted.
 */
import { copyFileSync, cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../kernel/config.js';
import { Logger } from '../../kernel/log.js';
import { Kernel } from '../../kernel/server.js';
import { bextCli, tmp, until } from '../helpers.js';

const bext = (args: string[], cwd: string) => bextCli(args, { cwd });

let wasm: string;
beforeAll(async () => {
  const src = mkdtempSync(join(resolve('.'), '.tmp-rules-'));
  cpSync('examples/wasm-rules', src, { recursive: true });
  const b = await bext(['plugin', 'build', src], resolve('.'));
  expect(b.code, b.err).toBe(0);
  wasm = join(mkdtempSync(join(tmp(), 'rules-wasm-')), 'rules.wasm');
  copyFileSync(join(src, 'rules.wasm'), wasm);
  rmSync(src, { recursive: true, force: true });
}, 120_000);

async function serve(grant: string[]) {
  const site = mkdtempSync(join(tmp(), 'rules-site-'));
  copyFileSync(wasm, join(site, 'rules.wasm'));
  if (!grant.length) {
    // Asked nothing and given no terminal, add refuses to guess.
    const undecided = await bext(['plugin', 'add', './rules.wasm'], site);
    expect(undecided.code).toBe(1);
    expect(undecided.err).toContain('--grant-none');
  }
  const add = await bext(['plugin', 'add', './rules.wasm', ...(grant.length ? grant.flatMap((g) => ['--grant', g]) : ['--grant-none'])], site);
  expect(add.code, add.err).toBe(0);
  expect(add.out + add.err).toContain('publish:custom/rules');
  const sinkDir = mkdtempSync(join(tmp(), 'rules-sink-'));
  writeFileSync(join(sinkDir, 'bext-plugin.json'), JSON.stringify({ name: 'sink', version: '1.0.0', sandbox: 'trusted', entry: 'sink.mjs', hooks: { onPublish: {} } }));
  writeFileSync(join(sinkDir, 'sink.mjs'), `globalThis.__rulesSink = []; export default () => ({ onPublish(m) { globalThis.__rulesSink.push(m); return { action: 'deliver' }; } });`);
  const k = await Kernel.create({ config: parseConfig({ server: { port: 0, host: '127.0.0.1' }, admin: { port: null } }), lockFile: join(site, 'plugins.lock.json'), plugins: [{ source: `file:${sinkDir}` }], logger: new Logger('error') });
  const { port } = await k.listen();
  return { k, url: `http://127.0.0.1:${port}` };
}

const sink = () => (globalThis as unknown as { __rulesSink: { topic: string; data: { rule: string; path: string } }[] }).__rulesSink;

describe('third-party wasm rules', () => {
  let s: Awaited<ReturnType<typeof serve>>;
  afterAll(() => s?.k.close(0));

  it('blocks by its rules, publishes what it blocked, and lets the rest through', async () => {
    s = await serve(['publish:custom/rules']);
    const probe = await request(`${s.url}/.env`);
    expect(probe.statusCode).toBe(403);
    expect(await probe.body.text()).toBe('blocked: probe\n');
    const scanner = await request(`${s.url}/products?id=1`, { headers: { 'user-agent': 'sqlmap/1.7' } });
    expect(scanner.statusCode).toBe(403);
    await scanner.body.dump();
    const fine = await request(`${s.url}/hello`, { headers: { 'user-agent': 'Mozilla/5.0' } });
    expect(fine.statusCode).toBe(404); // passed the rule; nothing serves /hello here
    await fine.body.dump();
    await until(() => sink().length === 2);
    expect(sink().map((m) => [m.topic, m.data.rule, m.data.path])).toEqual([['custom/rules', 'probe', '/.env'], ['custom/rules', 'scanner', '/products']]);
    const st = s.k.plugins().find((p) => p.name === 'rules')!;
    expect(st.sandbox).toBe('wasm');
    expect(st.fuelTotal).toBeGreaterThan(0);
    await s.k.close(0);
  }, 60_000);

  it('without the publish grant it still blocks, and each publish is refused and audited', async () => {
    s = await serve([]);
    expect((await request(`${s.url}/wp-login.php`)).statusCode).toBe(403);
    expect(sink()).toEqual([]);
    expect(s.k.audits.some((a) => a.plugin === 'rules' && a.fn === 'bext_publish')).toBe(true);
  }, 60_000);
});
