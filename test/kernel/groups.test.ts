/**
 * Middleware groups and hosted apps: which group a request lands in, the
 * plugin set each group runs (only/add/remove), per-group plugin
 * configuration (a separate instance), group limits, and apps chosen by
 * hostname with their own site folder, proxy target, cache namespace and
 * environments — all through a real server and HTTP client.
 */
import http from 'node:http';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { bextCli, plugin, tmp, until } from '../helpers.js';

const agent = new Agent({ connections: 16 });
afterAll(() => agent.close());

async function get(url: string, host: string, path = '/', init: { method?: string; body?: string } = {}) {
  const r = await request(`${url}${path}`, { dispatcher: agent, headers: { host }, method: (init.method ?? 'GET') as 'GET', body: init.body });
  return { status: r.statusCode, headers: r.headers, body: await r.body.text() };
}

/** A plugin that answers every render with who it is: instance, config, site and app. */
const whoami = (name: string, extra: Record<string, unknown> = {}) =>
  plugin(
    name,
    { hooks: { onRender: { priority: 80 } }, configSchema: { type: 'object', properties: { tag: { type: 'string', default: 'base' }, n: { type: 'integer' } } }, ...extra },
    `export default (host) => ({
  onRender(req) {
    return { status: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ plugin: ${JSON.stringify(name)}, config: host.config(), site: host.kernel.siteDir, app: host.kernel.app ?? null, reqApp: req.app ?? null, group: req.group }) };
  },
});`,
  );

/** A plugin that tags responses, so a test can see whether it ran in a group. */
const tagger = (name: string) =>
  plugin(name, { hooks: { onResponse: {} } }, `export default () => ({ onResponse() { return { setHeaders: { 'x-${name}': 'yes' } }; } });`);

/** Holds `/hold` until released; echoes the length of a POST body it reads. */
const gate = plugin(
  'gate',
  { hooks: { onRender: {} } },
  `export default () => ({
  async onRender(req) {
    if (req.path === '/hold') {
      globalThis.__hold.waiting++;
      await new Promise((r) => (globalThis.__hold.release = r));
      return { status: 200, body: 'released' };
    }
    const body = await req.readBody();
    return { status: 200, body: 'read ' + body.length };
  },
});`,
);

describe('middleware groups', () => {
  let b: Bext;
  beforeAll(async () => {
    b = await startBext({
      plugins: [{ dir: tagger('alpha') }, { dir: tagger('beta') }, { dir: tagger('gamma'), scope: 'group' }, { dir: whoami('who') }, { dir: gate, scope: 'group' }],
      config: {
        groups: [
          { name: 'api', paths: ['/api/**'], remove: ['beta'], add: ['gamma'], plugins: { who: { tag: 'api', n: 7 } } },
          { name: 'shop', hosts: ['shop.test', '*.shop.test'] },
          { name: 'bare', hosts: ['bare.test'], only: ['who'] },
          { name: 'tight', hosts: ['tight.test'], only: ['gate'], limits: { maxInflight: 1, bodyBytes: 10 } },
          { name: 'slowrate', hosts: ['rate.test'], limits: { requestsPerSecond: 0.5, burst: 2 } },
        ],
      },
    });
  });
  afterAll(() => b.close());

  it('puts a request in the first group whose hosts and paths match, else the default group', async () => {
    const cases: [string, string, string][] = [
      ['example.test', '/', 'default'],
      ['example.test', '/api/items/1', 'api'],
      ['shop.test', '/api/x', 'api'], // groups are tried in order: api comes first
      ['shop.test', '/cart', 'shop'],
      ['eu.shop.test', '/', 'shop'],
      ['shop.test.evil', '/', 'default'],
      ['bare.test', '/', 'bare'],
    ];
    for (const [host, path, group] of cases) {
      const r = await get(b.url, host, path);
      expect([host, path, JSON.parse(r.body).group]).toEqual([host, path, group]);
      expect(b.kernel.describe(host, path).group).toBe(group);
    }
  });

  it('runs each group its plugin set: remove, add of a group-scoped plugin, only', async () => {
    const def = await get(b.url, 'example.test', '/');
    expect([def.headers['x-alpha'], def.headers['x-beta'], def.headers['x-gamma']]).toEqual(['yes', 'yes', undefined]);
    const api = await get(b.url, 'example.test', '/api/v');
    expect([api.headers['x-alpha'], api.headers['x-beta'], api.headers['x-gamma']]).toEqual(['yes', undefined, 'yes']);
    const bare = await get(b.url, 'bare.test', '/');
    expect([bare.headers['x-alpha'], bare.headers['x-beta'], bare.headers['x-gamma']]).toEqual([undefined, undefined, undefined]);
    expect(b.kernel.describe('example.test', '/api/v').chains.onResponse!.map((n) => n.replace(/\(.*/, ''))).toEqual(['alpha', 'gamma']);
  });

  it('reconfigures a plugin for one group as its own instance, merged over the top-level section', async () => {
    const api = JSON.parse((await get(b.url, 'example.test', '/api/v')).body);
    expect(api.config).toEqual({ tag: 'api', n: 7 });
    const def = JSON.parse((await get(b.url, 'example.test', '/')).body);
    expect(def.config).toEqual({ tag: 'base' });
    const names = b.kernel.plugins().map((p) => p.name);
    expect(names).toContain('who');
    expect(names).toContain('who@api');
    expect(b.kernel.describe('example.test', '/api/v').chains.onRender).toEqual(['who@api(80)']);
  });

  it('applies group limits before any plugin: body size, requests in flight, request rate', async () => {
    const big = await get(b.url, 'tight.test', '/body', { method: 'POST', body: 'x'.repeat(11) });
    expect(big.status).toBe(413);
    expect(JSON.parse(big.body).error).toBe('BEXT_ERR_BODY_TOO_LARGE');
    expect((await get(b.url, 'tight.test', '/body', { method: 'POST', body: 'x'.repeat(10) })).body).toBe('read 10');
    // The default group keeps the server's limit.
    expect((await get(b.url, 'example.test', '/', { method: 'POST', body: 'x'.repeat(11) })).status).toBe(200);

    // maxInflight 1: one request held inside the plugin, the next is refused, and admitted again once it ends.
    const g = globalThis as unknown as { __hold: { waiting: number; release: (() => void) | null } };
    g.__hold = { waiting: 0, release: null };
    const held = get(b.url, 'tight.test', '/hold');
    await until(() => g.__hold.waiting === 1, 5000, 'the held request');
    const refused = await get(b.url, 'tight.test', '/body', { method: 'POST', body: 'x' });
    expect(refused.status).toBe(503);
    expect(JSON.parse(refused.body).error).toBe('BEXT_ERR_GROUP_OVERLOADED');
    expect(refused.headers['retry-after']).toBe('1');
    expect((await get(b.url, 'example.test', '/')).status).toBe(200); // other groups are not affected
    g.__hold.release!();
    expect((await held).body).toBe('released');
    expect((await get(b.url, 'tight.test', '/body', { method: 'POST', body: 'x' })).body).toBe('read 1');

    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await get(b.url, 'rate.test', '/')).status);
    expect(statuses).toEqual([200, 200, 429, 429]);
    const r = await get(b.url, 'rate.test', '/');
    expect(r.status).toBe(429);
    expect(JSON.parse(r.body).error).toBe('BEXT_ERR_GROUP_RATE_LIMITED');
    expect(Number(r.headers['retry-after'])).toBeGreaterThanOrEqual(1);
  });
});

describe('group config errors', () => {
  const who = whoami('who2');
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['an unknown plugin in remove', { groups: [{ name: 'g', remove: ['nope'] }] }, /\$\.groups\[0\]\.remove: plugin "nope" is not loaded/],
    ['config for a plugin outside the group', { groups: [{ name: 'g', only: [], plugins: { who2: { tag: 'x' } } }] }, /\$\.groups\[0\]\.plugins\.who2: plugin "who2" is not in this group's plugin set/],
    ['a group config that fails the plugin schema', { groups: [{ name: 'g', plugins: { who2: { n: 'seven' } } }] }, /\$\.groups\.0\.plugins\.who2\.n|\$\.groups\[0\]\.plugins\.who2\.n/],
    ['a duplicate group name', { groups: [{ name: 'g' }, { name: 'g' }] }, /group name "g" is already used at \$\.groups\[0\]/],
    ['the reserved name default', { groups: [{ name: 'default' }] }, /"default" is the name of the group that matches everything else/],
    ['one host for two apps', { apps: [{ name: 'a', hosts: ['x.test'] }, { name: 'b', hosts: ['x.test'] }] }, /host "x.test" is claimed by both a \(production\) and b/],
    ['a missing site folder', { apps: [{ name: 'a', hosts: ['a.test'], site: './does-not-exist' }] }, /\$\.apps\[0\]\.site: the folder .*does-not-exist does not exist/],
    ['a site and a proxy', { apps: [{ name: 'a', hosts: ['a.test'], site: '.', proxy: 'http://127.0.0.1:1' }] }, /has both a site and a proxy target/],
  ];
  for (const [what, config, message] of cases) {
    it(`refuses ${what} with BEXT_ERR_CONFIG_INVALID naming where`, async () => {
      const e = await startBext({ plugins: [{ dir: who }], config }).then(
        async (b) => {
          await b.close();
          return null;
        },
        (err: unknown) => err as { code: string; message: string },
      );
      expect(e?.code).toBe('BEXT_ERR_CONFIG_INVALID');
      expect(e?.message).toMatch(message);
    });
  }
});

describe('hosted apps', () => {
  let b: Bext;
  let site: string;
  let upstream: http.Server;
  let upstreamUrl: string;
  beforeAll(async () => {
    site = mkdtempSync(join(tmp(), 'apps-'));
    for (const [app, text] of [['blog', 'blog home'], ['docs', 'docs home'], ['blog-v2', 'blog v2 home'], ['blog-staging', 'blog staging home']] as const) {
      mkdirSync(join(site, 'sites', app, 'public'), { recursive: true });
      writeFileSync(join(site, 'sites', app, 'public', 'index.html'), `<h1>${text}</h1>`);
    }
    upstream = http.createServer((req, res) => res.end(`upstream saw ${req.headers.host} ${req.url}`));
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    upstreamUrl = `http://127.0.0.1:${(upstream.address() as { port: number }).port}`;
    b = await startBext({
      siteDir: site,
      plugins: ['static', 'proxy', { dir: tagger('shared') }, { dir: whoami('who3', { perApp: 'all', hooks: { onRender: { priority: 90 } } }) }],
      config: {
        apps: [
          { name: 'blog', hosts: ['blog.test'], site: './sites/blog', environments: { staging: { hosts: ['staging.blog.test'], site: './sites/blog-staging' } }, limits: { maxInflight: 50 } },
          { name: 'docs', hosts: ['docs.test'], site: './sites/docs', remove: ['shared'] },
          { name: 'legacy', hosts: ['legacy.test'], proxy: upstreamUrl },
        ],
      },
    });
  });
  afterAll(async () => {
    await b.close();
    await new Promise((r) => upstream.close(r));
  });

  it('serves each app its own site folder by hostname, with the shared plugins per app', async () => {
    const blog = await get(b.url, 'blog.test', '/');
    expect(blog.body).toBe('<h1>blog home</h1>');
    expect(blog.headers['x-shared']).toBe('yes');
    const docs = await get(b.url, 'docs.test', '/');
    expect(docs.body).toBe('<h1>docs home</h1>');
    expect(docs.headers['x-shared']).toBeUndefined();
    const staging = await get(b.url, 'staging.blog.test', '/');
    expect(staging.body).toBe('<h1>blog staging home</h1>');
    const names = b.kernel.plugins().map((p) => p.name);
    expect(names).toEqual(expect.arrayContaining(['static', 'static@blog', 'static@blog.staging', 'static@docs', 'proxy@legacy']));
    expect(names).not.toContain('static@legacy');
    expect(names).not.toContain('proxy@blog');
  });

  it('proxies a proxy app to its target and keeps site plugins out of it', async () => {
    const r = await get(b.url, 'legacy.test', '/some/page?q=1');
    expect(r.status).toBe(200);
    expect(r.body).toBe('upstream saw legacy.test /some/page?q=1');
    expect(b.kernel.describe('legacy.test', '/').chains.onRender!.join(' ')).not.toMatch(/static/);
  });

  it('gives per-app plugins the app environment (its own state, such as a cache namespace) and tags requests with it', async () => {
    const blog = JSON.parse((await get(b.url, 'blog.test', '/nope.json')).body);
    expect(blog.plugin).toBe('who3');
    expect(blog.app).toEqual({ name: 'blog', env: 'production', version: null });
    expect(blog.reqApp).toEqual({ name: 'blog', env: 'production', version: null });
    expect(blog.site).toBe(resolve(site, 'sites/blog'));
    const st = JSON.parse((await get(b.url, 'staging.blog.test', '/nope.json')).body);
    expect(st.app).toEqual({ name: 'blog', env: 'staging', version: null });
    expect(st.group).toBe('blog.staging');
  });

  it('lists apps and switches an environment to another folder atomically on reload', async () => {
    expect(b.kernel.apps().find((a) => a.name === 'blog')?.environments.production).toMatchObject({ hosts: ['blog.test'], site: resolve(site, 'sites/blog'), version: null });
    b.kernel.setAppSource('blog', 'production', { dir: join(site, 'sites', 'blog-v2'), version: 'v2abc' });
    expect((await get(b.url, 'blog.test', '/')).body).toBe('<h1>blog home</h1>'); // not before the reload
    const r = await b.kernel.reload();
    expect(r.ok).toBe(true);
    expect((await get(b.url, 'blog.test', '/')).body).toBe('<h1>blog v2 home</h1>');
    expect(JSON.parse((await get(b.url, 'blog.test', '/nope.json')).body).reqApp).toEqual({ name: 'blog', env: 'production', version: 'v2abc' });
    expect((await get(b.url, 'docs.test', '/')).body).toBe('<h1>docs home</h1>');
    expect(b.kernel.apps().find((a) => a.name === 'blog')?.environments.production!.version).toBe('v2abc');
    expect(() => b.kernel.setAppSource('nope', 'production', null)).toThrow(/no app named "nope"/);
    expect(() => b.kernel.setAppSource('blog', 'qa', null)).toThrow(/app "blog" has no environment "qa"/);
    // A folder that vanished is refused at reload and the running version keeps serving.
    b.kernel.setAppSource('blog', 'production', { dir: join(site, 'sites', 'gone'), version: 'gone' });
    const bad = await b.kernel.reload();
    expect(bad.ok).toBe(false);
    expect((await get(b.url, 'blog.test', '/')).body).toBe('<h1>blog v2 home</h1>');
    b.kernel.setAppSource('blog', 'production', null);
    expect((await b.kernel.reload()).ok).toBe(true);
    expect((await get(b.url, 'blog.test', '/')).body).toBe('<h1>blog home</h1>');
  });
});

describe('per-app cache namespaces', () => {
  let b: Bext;
  const prefix = `bext:test-apps-${process.pid}-${Date.now()}:`;
  beforeAll(async () => {
    const site = mkdtempSync(join(tmp(), 'apps-cache-'));
    for (const app of ['one', 'two']) {
      mkdirSync(join(site, app, 'public'), { recursive: true });
      writeFileSync(join(site, app, 'public', 'page.html'), `<p>${app}</p>`);
    }
    b = await startBext({
      siteDir: site,
      plugins: ['cache', 'static'],
      config: {
        apps: [
          { name: 'one', hosts: ['one.test'], site: './one' },
          { name: 'two', hosts: ['two.test'], site: './two' },
        ],
        plugins: { cache: { rules: [{ paths: ['/**'], mode: 'static' }], redis: { url: 'redis://127.0.0.1:6379', keyPrefix: prefix } } },
      },
    });
  });
  afterAll(() => b.close());

  it('caches the same path of two apps apart, in memory and under each app\'s Redis prefix', async () => {
    const { Redis } = await import('ioredis');
    const redis = new Redis('redis://127.0.0.1:6379');
    try {
      for (let i = 0; i < 2; i++) {
        expect((await get(b.url, 'one.test', '/page.html')).body).toBe('<p>one</p>');
        expect((await get(b.url, 'two.test', '/page.html')).body).toBe('<p>two</p>');
      }
      const hit = await get(b.url, 'two.test', '/page.html');
      expect(String(hit.headers['cache-status'])).toMatch(/hit/);
      await until(async () => (await redis.keys(`${prefix}one:*`)).length > 0 && (await redis.keys(`${prefix}two:*`)).length > 0, 5000, 'entries under both app prefixes');
      expect(b.kernel.plugins().map((p) => p.name)).toEqual(expect.arrayContaining(['cache@one', 'cache@two']));
    } finally {
      const keys = await redis.keys(`${prefix}*`);
      if (keys.length) await redis.del(...keys);
      redis.disconnect();
    }
  });
});

describe('groups follow the config file on reload', () => {
  it('adds a per-group instance, removes it, and refuses a broken group', async () => {
    const { Kernel } = await import('../../kernel/server.js');
    const { loadConfig } = await import('../../kernel/config.js');
    const { Logger } = await import('../../kernel/log.js');
    const dir = mkdtempSync(join(tmp(), 'groups-reload-'));
    const file = join(dir, 'bext.config.json');
    const write = (groups: unknown[]) => writeFileSync(file, JSON.stringify({ server: { port: 0, host: '127.0.0.1' }, admin: { port: null }, groups }));
    write([]);
    const k = await Kernel.create({ config: loadConfig(file), configFile: file, plugins: [{ source: whoami('who5') }], logger: new Logger('error') });
    const url = `http://127.0.0.1:${(await k.listen()).port}`;
    try {
      expect(JSON.parse((await get(url, 'x.test', '/v1/a')).body).config).toEqual({ tag: 'base' });
      write([{ name: 'v1', paths: ['/v1/**'], plugins: { who5: { tag: 'v1' } } }]);
      expect(await k.reload()).toMatchObject({ ok: true, loaded: ['who5@v1'] });
      expect(JSON.parse((await get(url, 'x.test', '/v1/a')).body)).toMatchObject({ config: { tag: 'v1' }, group: 'v1' });
      expect(JSON.parse((await get(url, 'x.test', '/')).body).config).toEqual({ tag: 'base' });
      write([{ name: 'v1', paths: ['/v1/**'], plugins: { who5: { tag: 7 } } }]);
      const bad = await k.reload();
      expect(bad.ok).toBe(false);
      expect(!bad.ok && bad.error.message).toMatch(/\$\.groups\.0\.plugins\.who5\.tag|\$\.groups\[0\]\.plugins\.who5\.tag/);
      expect(JSON.parse((await get(url, 'x.test', '/v1/a')).body).config).toEqual({ tag: 'v1' });
      write([]);
      expect(await k.reload()).toMatchObject({ ok: true, removed: ['who5@v1'] });
      expect(JSON.parse((await get(url, 'x.test', '/v1/a')).body)).toMatchObject({ config: { tag: 'base' }, group: 'default' });
    } finally {
      await k.close(0);
    }
  });
});

describe('bext routes', () => {
  it('lists every group in matching order, and prints the app, limits and chain for a request', async () => {
    const { computeIntegrity } = await import('../../kernel/integrity.js');
    const { writeLock } = await import('../../kernel/lock.js');
    const dir = mkdtempSync(join(tmp(), 'routes-'));
    mkdirSync(join(dir, 'sites', 'blog', 'public'), { recursive: true });
    const builtin = (name: string, order: number) => ({ name, source: `builtin:${name}`, version: '1.0.0', sandbox: 'trusted' as const, integrity: computeIntegrity(resolve('plugins', name)), capabilities: [], order });
    writeLock(join(dir, 'plugins.lock.json'), { lockfileVersion: 1, plugins: [builtin('static', 1), builtin('health', 2)] });
    writeFileSync(
      join(dir, 'bext.config.json'),
      JSON.stringify({
        groups: [{ name: 'api', paths: ['/api/**'], remove: ['static'], limits: { maxInflight: 10 } }],
        apps: [{ name: 'blog', hosts: ['blog.test'], site: './sites/blog', limits: { requestsPerSecond: 100 } }],
      }),
    );
    const routes = (args: string[]) => bextCli(['routes', dir, ...args], { env: { ...process.env, BEXT_LOG: 'error' } });
    const all = await routes([]);
    expect(all.code).toBe(0);
    expect(all.out).toMatch(/groups, in matching order:\n\s+api\s+health\n\s+blog\s+\[app blog, production\] static@blog, health\n\s+default\s+static, health/);
    const blog = await routes(['--host', 'blog.test', '--path', '/index.html']);
    expect(blog.out).toContain('group: blog');
    expect(blog.out).toContain('app:   blog (production)');
    expect(blog.out).toContain('limits: requestsPerSecond=100');
    expect(blog.out).toMatch(/onRender\s+static@blog\(50\)/);
    const api = await routes(['--host', 'blog.test', '--path', '/api/x']);
    expect(api.out).toContain('group: api');
    expect(api.out).toContain('limits: maxInflight=10');
    expect(api.out).toContain('route: (none: catch-all onRender)');
  }, 60_000);
});
