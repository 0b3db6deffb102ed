import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, writeFileSync, appendFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseConfig, loadConfig } from '../../kernel/config.js';
import { Kernel } from '../../kernel/server.js';
import { Logger } from '../../kernel/log.js';
import { ERRORS } from '../../plugin-api/index.js';
import { bextCli, plugin, run, tmp } from '../helpers.js';

function bext(args: string[], cwd: string) {
  return bextCli(args, { cwd, env: { ...process.env, BEXT_LOG: 'error' } });
}

describe('config', () => {
  it('names the file, the JSON path, what was expected and what was found', async () => {
    let err: unknown;
    try {
      parseConfig({ server: { port: 'eighty', prot: 1 }, groups: [{ name: 'Bad Name' }] }, 'site/bext.config.json');
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'BEXT_ERR_CONFIG_INVALID' });
    const msg = (err as Error).message;
    expect(msg).toContain('site/bext.config.json: $.server.port: expected integer, found "eighty"');
    expect(msg).toContain('site/bext.config.json: $.server: unknown key "prot"');
    expect(msg).toContain('$.groups[0].name');
  });

  it('reports JSON syntax errors with line and column', async () => {
    const f = join(mkdtempSync(join(tmp(), 'cfg-')), 'bext.config.json');
    writeFileSync(f, '{\n  "server": { "port": 80, }\n}\n');
    expect(() => loadConfig(f)).toThrow(/line 2, column \d+/);
  });

  it("validates a plugin's section against its configSchema, unknown keys included, and does not start", async () => {
    const config = parseConfig({ plugins: { static: { maxAge: -1, bogus: true } } });
    const e = await Kernel.create({ config, configFile: 'x/bext.config.json', plugins: [{ source: 'builtin:static' }], logger: new Logger('error') }).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: 'BEXT_ERR_CONFIG_INVALID' });
    expect((e as Error).message).toContain('x/bext.config.json: $.plugins.static.maxAge: expected a value that must be >= 0, found -1');
    expect((e as Error).message).toContain('$.plugins.static: unknown key "bogus"');
  });

  it('refuses a section for a plugin that is not loaded', async () => {
    const config = parseConfig({ plugins: { nosuch: {} } });
    await expect(Kernel.create({ config, plugins: [], logger: new Logger('error') })).rejects.toMatchObject({ code: 'BEXT_ERR_CONFIG_INVALID', message: expect.stringContaining('$.plugins.nosuch') });
  });

  it('bext config check exits non-zero with the reason', async () => {
    const dir = mkdtempSync(join(tmp(), 'cfgcheck-'));
    writeFileSync(join(dir, 'bext.config.json'), JSON.stringify({ server: { port: -1 } }));
    const r = await bext(['config', 'check'], dir);
    expect(r.code).toBe(1);
    expect(r.err).toContain('BEXT_ERR_CONFIG_INVALID');
    expect(r.err).toContain('$.server.port');
    writeFileSync(join(dir, 'bext.config.json'), JSON.stringify({ server: { port: 8080 } }));
    const ok = await bext(['config', 'check'], dir);
    expect(ok.code).toBe(0);
    expect(ok.out).toContain('valid');
  });
});

describe('lock file and CLI', () => {
  it('plugin add locks integrity and grants; a tampered plugin is refused at start and by verify', async () => {
    const dir = mkdtempSync(join(tmp(), 'lock-'));
    const p = plugin('locked', { routes: [{ path: '/x' }], capabilities: ['publish:custom/*', 'kv'] }, `export default () => ({ onRoute: () => ({ status: 200, body: 'v1' }) });`);
    cpSync(p, join(dir, 'locked'), { recursive: true });
    const add = await bext(['plugin', 'add', './locked', '--grant', 'kv'], dir);
    expect(add.code, add.err).toBe(0);
    expect(add.out).toContain('publish:custom/*');
    const lock = JSON.parse(readFileSync(join(dir, 'plugins.lock.json'), 'utf8'));
    expect(lock.plugins[0]).toMatchObject({ name: 'locked', source: 'file:./locked', sandbox: 'trusted', capabilities: ['kv'], integrity: expect.stringMatching(/^sha256-/) });
    expect((await bext(['plugin', 'verify'], dir)).code).toBe(0);
    // Without --yes or --grant and no terminal, add refuses rather than guessing.
    const noDecision = await bext(['plugin', 'add', './locked'], dir);
    expect(noDecision.code).toBe(1);
    expect(noDecision.err).toContain('--yes');

    appendFileSync(join(dir, 'locked', 'index.mjs'), '\n// changed\n');
    const v = await bext(['plugin', 'verify'], dir);
    expect(v.code).toBe(1);
    expect(v.out).toContain('FAIL locked');
    const e = await Kernel.create({ config: parseConfig({}), lockFile: join(dir, 'plugins.lock.json'), logger: new Logger('error') }).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: 'BEXT_ERR_LOCK_INTEGRITY' });
    expect((e as Error).message).toContain('plugin "locked"');
    // Re-locking accepts the change.
    expect((await bext(['plugin', 'add', './locked', '--yes'], dir)).code).toBe(0);
    expect((await bext(['plugin', 'verify'], dir)).code).toBe(0);
    expect((await bext(['plugin', 'remove', 'locked'], dir)).code).toBe(0);
    expect(JSON.parse(readFileSync(join(dir, 'plugins.lock.json'), 'utf8')).plugins).toEqual([]);
  });

  it('the repository lock verifies and lists the default composition', async () => {
    const r = await bext(['plugin', 'verify'], resolve('.'));
    expect(r.code, r.out + r.err).toBe(0);
    const l = await bext(['plugin', 'list'], resolve('.'));
    expect(l.out).toMatch(/static/);
  });

  it('unknown builtins, bad commands and --help', async () => {
    const dir = mkdtempSync(join(tmp(), 'cli-'));
    const r = await bext(['plugin', 'add', 'no-such-plugin', '--yes'], dir);
    expect(r.code).toBe(1);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toContain('BEXT_ERR_PLUGIN_NOT_FOUND');
    expect((await bext(['frobnicate'], dir)).code).toBe(1);
    for (const c of [['--help'], ['run', '--help'], ['plugin', 'add', '--help'], ['plugin', 'verify', '--help'], ['plugin', 'new', '--help'], ['config', 'check', '--help'], ['routes', '--help']]) {
      const h = await bext(c, dir);
      expect(h.code, c.join(' ')).toBe(0);
      expect(h.out).toMatch(/Usage|usage|Commands/);
    }
  });

  it('bext routes prints the effective chain', async () => {
    const r = await bext(['routes', 'examples/site', '--path', '/health'], resolve('.'));
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain('route: health /health');
  });
});

describe('error codes', () => {
  it('every code in errors.ts is documented in errors.md and vice versa', async () => {
    const doc = readFileSync('plugin-api/errors.md', 'utf8');
    const documented = new Set([...doc.matchAll(/`(BEXT_ERR_[A-Z_]+)`/g)].map((m) => m[1]));
    expect([...documented].sort()).toEqual(Object.keys(ERRORS).sort());
  });

  it('every BEXT_ERR_ code used in the source exists', async () => {
    const out = execFileSync('grep', ['-rhoE', 'BEXT_ERR_[A-Z_]+', 'kernel', 'plugin-api', 'sandboxes', 'plugins', 'sdk', '--include=*.ts'], { encoding: 'utf8' });
    const used = new Set(out.split('\n').filter(Boolean));
    const unknown = [...used].filter((c) => !(c in ERRORS) && !/_$/.test(c));
    expect(unknown).toEqual([]);
  });
});

describe('plugin new', () => {
  for (const kind of ['trusted', 'quickjs', 'isolate', 'process', 'wasm']) {
    it(`scaffolds a ${kind} plugin that loads, serves and passes its own test`, async () => {
      const dir = mkdtempSync(join(resolve('.'), '.tmp-new-'));
      try {
        const r = await bext(['plugin', 'new', `my-${kind}`, '--sandbox', kind, '--dir', dir], resolve('.'));
        expect(r.code, r.err).toBe(0);
        const t = await run(process.execPath, [resolve('node_modules/vitest/vitest.mjs'), 'run', '--root', dir, '--config', '/dev/null'], { cwd: dir });
        expect(t.code, t.out + t.err).toBe(0);
        expect(t.out).toMatch(/2 passed/);
      } finally {
        (await import('node:fs')).rmSync(dir, { recursive: true, force: true });
      }
    }, 120_000);
  }
});

describe('wasm plugins from the CLI', () => {
  it('plugin new --sandbox wasm, plugin build, plugin add ./x.wasm (manifest embedded), then served fuel-metered', async () => {
    const dir = mkdtempSync(join(resolve('.'), '.tmp-wasm-'));
    try {
      expect((await bext(['plugin', 'new', 'rules', '--sandbox', 'wasm', '--dir', dir], resolve('.'))).code).toBe(0);
      const build = await bext(['plugin', 'build', join(dir, 'rules')], resolve('.'));
      expect(build.code, build.err).toBe(0);
      expect(build.out).toMatch(/wrote .*plugin\.wasm \(\d+ bytes\)/);
      const site = mkdtempSync(join(tmp(), 'wasm-site-'));
      cpSync(join(dir, 'rules', 'plugin.wasm'), join(site, 'rules.wasm'));
      const add = await bext(['plugin', 'add', './rules.wasm', '--yes'], site);
      expect(add.code, add.err).toBe(0);
      expect(add.out).toContain('rules@0.1.0 (wasm)');
      const lock = JSON.parse(readFileSync(join(site, 'plugins.lock.json'), 'utf8'));
      expect(lock.plugins[0]).toMatchObject({ name: 'rules', source: 'file:./rules.wasm', sandbox: 'wasm' });
      const k = await Kernel.create({ config: parseConfig({ server: { port: 0, host: '127.0.0.1' }, admin: { port: null } }), lockFile: join(site, 'plugins.lock.json'), logger: new Logger('error') });
      const { port } = await k.listen();
      try {
        const r = await fetch(`http://127.0.0.1:${port}/rules/hello`);
        expect(r.status).toBe(200);
        expect(await r.text()).toBe('hello from rules\n');
        expect((await fetch(`http://127.0.0.1:${port}/x`, { headers: { 'user-agent': 'BadBot/2' } })).status).toBe(403);
        expect(k.plugins()[0]).toMatchObject({ name: 'rules', sandbox: 'wasm' });
        expect(k.plugins()[0]!.fuelTotal).toBeGreaterThan(0);
      } finally {
        await k.close(0);
      }
    } finally {
      (await import('node:fs')).rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
