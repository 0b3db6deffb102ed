/**
 * The platform plugin against a real kernel: hosted app `blog` (production
 * on blog.localhost, staging on staging.blog.localhost) served by the
 * static plugin, versions deployed through the admin API, switched under
 * load, and the state read back after a restart.
 */
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { gzipSync } from 'node:zlib';
import * as tar from 'tar';
import { Client, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { plugin, tmp, until } from '../../test/helpers.js';

const PLATFORM = resolve(import.meta.dirname, '.');
const root = mkdtempSync(join(tmp(), 'platform-'));
const siteDir = join(root, 'srv');
const dataDir = join(root, 'data');
const lockFile = join(root, 'plugins.lock.json');
const EMPTY_LOCK = JSON.stringify({ lockfileVersion: 1, plugins: [] });

/** system/deploy messages, as a subscriber plugin sees them. */
const events: { topic: string; data: Record<string, unknown>; publisher: string }[] = [];
(globalThis as Record<string, unknown>).__platformEvents = events;
const observer = plugin('deploy-observer', { hooks: { onPublish: {} } }, `export default () => ({ onPublish(m) { if (m.topic === 'system/deploy') globalThis.__platformEvents.push(m); } });`);
// A per-app plugin whose instance refuses to load for a site holding public/BROKEN:
// a switch the kernel's reload refuses.
const sentinel = plugin(
  'broken-sentinel',
  { perApp: 'site', hooks: { onRequest: {} } },
  `import { existsSync } from 'node:fs';
import { join } from 'node:path';
export default (host) => {
  if (existsSync(join(host.kernel.siteDir, 'public', 'BROKEN'))) throw new Error('this site is marked BROKEN');
  return { onRequest() {} };
};`,
);

function site(name: string, files: Record<string, string>): string {
  const dir = join(root, 'sites', name);
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(join(dir, rel, '..'), { recursive: true });
    writeFileSync(join(dir, rel), text);
  }
  return dir;
}

const page = (label: string) => `<h1>${label}</h1>\n`;
const v1Dir = site('v1', { 'public/index.html': page('v1'), 'public/about.txt': 'about v1\n' });
const v2Dir = site('v2', { 'public/index.html': page('v2'), 'public/about.txt': 'about v2\n' });
site('configured', { 'public/index.html': page('configured') });

async function start(): Promise<Bext> {
  return startBext({
    siteDir,
    lockFile,
    plugins: ['static', PLATFORM, observer, sentinel],
    config: {
      apps: [{ name: 'blog', hosts: ['blog.localhost'], site: '../sites/configured', environments: { staging: { hosts: ['staging.blog.localhost'] } } }],
      plugins: { platform: { dataDir, maxBundleBytes: 200_000 } },
    },
  });
}

/** One GET on an app host. */
async function get(b: Bext, host: string, path = '/'): Promise<{ status: number; version?: string; body: string }> {
  const r = await request(`${b.url}${path}`, { headers: { host } });
  const body = await r.body.text();
  return { status: r.statusCode, version: r.headers['x-bext-version'] as string | undefined, body };
}

async function tgz(dir: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of tar.c({ gzip: true, cwd: dir, portable: true }, ['public/index.html', 'public/about.txt'])) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** A tar made by hand, for entries no packer would write. */
function rawTar(entries: { path: string; type?: 'File' | 'SymbolicLink'; body?: string; linkpath?: string }[]): Buffer {
  const blocks: Buffer[] = [];
  for (const e of entries) {
    const data = Buffer.from(e.body ?? '');
    const h = new tar.Header({ path: e.path, mode: 0o644, size: e.type === 'SymbolicLink' ? 0 : data.length, type: e.type ?? 'File', linkpath: e.linkpath, mtime: new Date() });
    h.encode();
    blocks.push(h.block!);
    if (e.type !== 'SymbolicLink' && data.length) blocks.push(Buffer.concat([data, Buffer.alloc((512 - (data.length % 512)) % 512)]));
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

/** POST /api/platform/deploy; resolves to the NDJSON lines. */
async function deploy(b: Bext, query: string, body: Buffer | { path: string }, type = 'application/gzip'): Promise<{ status: number; lines: Record<string, unknown>[]; last: Record<string, unknown> }> {
  const isJson = !Buffer.isBuffer(body);
  const r = await request(`${b.adminUrl}/api/platform/deploy?${query}`, {
    method: 'POST',
    headers: { 'content-type': isJson ? 'application/json' : type },
    body: isJson ? JSON.stringify(body) : body,
  });
  const text = await r.body.text();
  const lines = String(r.headers['content-type']).startsWith('application/x-ndjson') ? text.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>) : [JSON.parse(text) as Record<string, unknown>];
  return { status: r.statusCode, lines, last: lines[lines.length - 1]! };
}

async function post(b: Bext, path: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const r = await request(`${b.adminUrl}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: r.statusCode, json: (await r.body.json()) as Record<string, unknown> };
}

async function listing(b: Bext): Promise<{ live: Record<string, string | null>; versions: { id: string; live: string[]; built: boolean; files: number; source: string }[]; environments: Record<string, { history: { version: string; event: string }[]; hosts: string[] }> }> {
  const r = await request(`${b.adminUrl}/api/platform/versions?app=blog`);
  expect(r.statusCode).toBe(200);
  return (await r.body.json()) as never;
}

describe('platform plugin', () => {
  let b: Bext;
  let id1 = '';
  let id2 = '';

  beforeAll(async () => {
    mkdirSync(siteDir, { recursive: true });
    writeFileSync(lockFile, EMPTY_LOCK);
    b = await start();
  });
  afterAll(async () => {
    await b?.close();
  });

  it('stores an upload and a folder as content-hashed versions; the same content is reused', async () => {
    const first = await deploy(b, 'app=blog', await tgz(v1Dir));
    expect(first.status).toBe(200);
    expect(first.lines.map((l) => l.stage)).toEqual(expect.arrayContaining(['receive', 'extract', 'hash', 'store', 'done']));
    expect(first.last).toMatchObject({ stage: 'done', app: 'blog', reused: false, files: 2, built: false });
    id1 = String(first.last.version);
    expect(id1).toMatch(/^[0-9a-f]{12}$/);

    // Dependencies and build output are left out of a version and its hash.
    const withExtras = rawTar([
      { path: 'public/index.html', body: page('v1') },
      { path: 'public/about.txt', body: 'about v1\n' },
      { path: '.bext/ssr/manifest.json', body: '{"stale":true}' },
      { path: 'public/node_modules/x/index.js', body: 'x' },
    ]);
    expect((await deploy(b, 'app=blog', gzipSync(withExtras))).last).toMatchObject({ stage: 'done', version: id1, reused: true });

    // The same files from a folder on the server: the same version.
    const again = await deploy(b, 'app=blog', { path: v1Dir });
    expect(again.last).toMatchObject({ stage: 'done', version: id1, reused: true });

    const second = await deploy(b, 'app=blog', { path: v2Dir });
    expect(second.last).toMatchObject({ stage: 'done', reused: false });
    id2 = String(second.last.version);
    expect(id2).not.toBe(id1);

    // Nothing is live yet: production serves its configured folder, untagged.
    const r = await get(b, 'blog.localhost');
    expect(r).toMatchObject({ status: 200, body: page('configured') });
    expect(r.version).toBeUndefined();
  });

  it('promote, promote again and roll back under load: no failed request, each answer from the version it names', async () => {
    expect((await post(b, '/api/platform/promote', { app: 'blog', to: 'production', version: id1 })).status).toBe(200);
    expect(await get(b, 'blog.localhost')).toMatchObject({ version: id1, body: page('v1') });

    const label: Record<string, string> = { [id1]: 'v1', [id2]: 'v2' };
    const results: { t0: number; t1: number; status: number; version?: string; body: string; error?: string }[] = [];
    let stop = false;
    const clients = Array.from({ length: 6 }, () => new Client(b.url, { pipelining: 1, keepAliveTimeout: 30_000 }));
    const loops = clients.map(async (c, i) => {
      while (!stop) {
        const t0 = performance.now();
        try {
          const r = await c.request({ method: 'GET', path: i % 2 ? '/' : '/about.txt', headers: { host: 'blog.localhost' } });
          results.push({ t0, t1: performance.now(), status: r.statusCode, version: r.headers['x-bext-version'] as string | undefined, body: await r.body.text() });
        } catch (e) {
          results.push({ t0, t1: performance.now(), status: 0, body: '', error: String(e) });
        }
      }
    });
    const atLeast = async (n: number) => {
      const from = results.length;
      await until(() => results.length >= from + n, 20_000, `${n} more responses`);
    };
    try {
      await atLeast(100);
      const promoteAt = performance.now();
      const promoted = await post(b, '/api/platform/promote', { app: 'blog', to: 'production', version: id2 });
      const promotedAt = performance.now();
      expect(promoted).toMatchObject({ status: 200, json: { version: id2, previous: id1 } });
      await atLeast(200);
      const rollbackAt = performance.now();
      const rolled = await post(b, '/api/platform/rollback', { app: 'blog' });
      const rolledAt = performance.now();
      expect(rolled).toMatchObject({ status: 200, json: { env: 'production', version: id1, previous: id2 } });
      await atLeast(200);
      stop = true;
      await Promise.all(loops);

      expect(results.filter((r) => r.status !== 200)).toEqual([]);
      for (const r of results) {
        const v = label[r.version ?? ''];
        expect(v, `a response without a known version: ${JSON.stringify(r)}`).toBeDefined();
        expect([page(v!), `about ${v}\n`]).toContain(r.body);
      }
      const between = results.filter((r) => r.t0 > promotedAt && r.t1 < rollbackAt);
      const after = results.filter((r) => r.t0 > rolledAt);
      expect(between.length).toBeGreaterThan(50);
      expect(after.length).toBeGreaterThan(50);
      expect(between.filter((r) => r.version !== id2)).toEqual([]);
      expect(after.filter((r) => r.version !== id1)).toEqual([]);
      // Before the first switch was asked for, v1 answered everything.
      expect(results.filter((r) => r.t1 < promoteAt && r.version !== id1)).toEqual([]);
    } finally {
      stop = true;
      await Promise.all(loops);
      await Promise.all(clients.map((c) => c.close()));
    }
  });

  it('lists versions, environments and who is live', async () => {
    const l = await listing(b);
    expect(l.live).toEqual({ production: id1, staging: null });
    expect(l.environments.production!.hosts).toEqual(['blog.localhost']);
    expect(l.environments.production!.history.map((h) => [h.version, h.event])).toEqual([[id1, 'promoted'], [id2, 'promoted'], [id1, 'rolled-back']]);
    const byId = new Map(l.versions.map((v) => [v.id, v]));
    expect(byId.get(id1)).toMatchObject({ live: ['production'], files: 2, built: false, source: 'upload' });
    expect(byId.get(id2)).toMatchObject({ live: [], source: `path:${v2Dir}` });
  });

  it('refuses bundles that climb out of the site, links that leave it, and oversize bodies; nothing is stored', async () => {
    const before = (await listing(b)).versions.length;
    const climb = await deploy(b, 'app=blog', gzipSync(rawTar([{ path: 'public/index.html', body: 'x' }, { path: '../escape.txt', body: 'owned' }])));
    expect(climb.last).toMatchObject({ stage: 'error', code: 'BEXT_ERR_DEPLOY_UNSAFE_BUNDLE' });
    const link = await deploy(b, 'app=blog', rawTar([{ path: 'public/passwd', type: 'SymbolicLink', linkpath: '/etc/passwd' }]), 'application/x-tar');
    expect(link.last).toMatchObject({ stage: 'error', code: 'BEXT_ERR_DEPLOY_UNSAFE_BUNDLE' });
    const upLink = await deploy(b, 'app=blog', rawTar([{ path: 'public/up', type: 'SymbolicLink', linkpath: '../../..' }]), 'application/x-tar');
    expect(upLink.last).toMatchObject({ stage: 'error', code: 'BEXT_ERR_DEPLOY_UNSAFE_BUNDLE' });
    const big = await deploy(b, 'app=blog', Buffer.alloc(300_000));
    expect(big).toMatchObject({ status: 413, last: { error: 'BEXT_ERR_BODY_TOO_LARGE' } });
    const garbage = await deploy(b, 'app=blog', Buffer.from('not a tarball at all'));
    expect(garbage.last).toMatchObject({ stage: 'error', code: 'BEXT_ERR_DEPLOY_INVALID' });
    expect((await listing(b)).versions.length).toBe(before);
    expect(await get(b, 'blog.localhost')).toMatchObject({ version: id1, body: page('v1') });
  });

  it('answers bad requests with a code: unknown app, environment, version, nothing to roll back, public listener', async () => {
    expect((await deploy(b, 'app=nope', { path: v1Dir })).last).toMatchObject({ error: 'BEXT_ERR_DEPLOY_UNKNOWN_APP' });
    expect((await deploy(b, 'app=blog&env=qa', { path: v1Dir })).last).toMatchObject({ error: 'BEXT_ERR_DEPLOY_UNKNOWN_APP' });
    expect((await deploy(b, 'app=blog', Buffer.from('{}'), 'text/plain')).last).toMatchObject({ error: 'BEXT_ERR_DEPLOY_INVALID' });
    expect(await post(b, '/api/platform/promote', { app: 'blog', to: 'production', version: 'abcdefabcdef' })).toMatchObject({ status: 404, json: { error: 'BEXT_ERR_DEPLOY_UNKNOWN_VERSION' } });
    expect(await post(b, '/api/platform/promote', { app: 'blog', to: 'production', from: 'staging' })).toMatchObject({ status: 404, json: { error: 'BEXT_ERR_DEPLOY_UNKNOWN_VERSION' } });
    expect(await post(b, '/api/platform/promote', { app: 'blog', to: 'production' })).toMatchObject({ status: 400, json: { error: 'BEXT_ERR_DEPLOY_INVALID' } });
    expect(await post(b, '/api/platform/rollback', { app: 'blog', env: 'staging' })).toMatchObject({ status: 409, json: { error: 'BEXT_ERR_DEPLOY_NO_PREVIOUS' } });
    const pub = await request(`${b.url}/api/platform/rollback`, { method: 'POST', body: '{"app":"blog"}', headers: { 'content-type': 'application/json' } });
    expect(pub.statusCode).toBe(403);
    expect(((await pub.body.json()) as { error: string }).error).toBe('BEXT_ERR_ADMIN_FORBIDDEN');
  });

  it('deploys straight to an environment, and promotes from it', async () => {
    const r = await deploy(b, 'app=blog&env=staging', { path: v2Dir });
    expect(r.last).toMatchObject({ stage: 'done', version: id2, reused: true, env: 'staging', previous: null });
    expect(r.lines.find((l) => l.stage === 'live')).toMatchObject({ env: 'staging', version: id2 });
    expect(await get(b, 'staging.blog.localhost')).toMatchObject({ status: 200, version: id2, body: page('v2') });
    expect(await get(b, 'blog.localhost')).toMatchObject({ version: id1 });
    expect(await post(b, '/api/platform/promote', { app: 'blog', to: 'production', from: 'staging' })).toMatchObject({ status: 200, json: { version: id2, previous: id1, from: 'staging' } });
    expect(await get(b, 'blog.localhost')).toMatchObject({ version: id2, body: page('v2') });
    expect(await post(b, '/api/platform/rollback', { app: 'blog', to: id1 })).toMatchObject({ status: 200, json: { version: id1 } });
    expect(await get(b, 'blog.localhost')).toMatchObject({ version: id1, body: page('v1') });
  });

  it('a broken build is refused with its output; nothing is stored and nothing changes', async () => {
    const before = await listing(b);
    const broken = site('broken', { 'public/index.html': page('broken'), 'pages/index.tsx': 'export default function Page() { return <div>unclosed </p>; }\n' });
    const r = await deploy(b, 'app=blog&env=production', { path: broken });
    expect(r.last).toMatchObject({ stage: 'error', code: 'BEXT_ERR_DEPLOY_BUILD' });
    expect(r.lines.some((l) => l.stage === 'build' && l.status === 'start')).toBe(true);
    expect((r.last.output as string[]).join('\n')).toMatch(/index\.tsx/);
    const after = await listing(b);
    expect(after.versions.map((v) => v.id)).toEqual(before.versions.map((v) => v.id));
    expect(after.live).toEqual(before.live);
    expect(await get(b, 'blog.localhost')).toMatchObject({ version: id1, body: page('v1') });
  }, 60_000);

  it('a switch the kernel refuses (a plugin fails to load for the new version) keeps the old one live', async () => {
    const bad = site('bad', { 'public/index.html': page('bad'), 'public/BROKEN': 'yes\n' });
    const r = await deploy(b, 'app=blog&env=production', { path: bad });
    expect(r.last).toMatchObject({ stage: 'error', code: 'BEXT_ERR_PLUGIN_LOAD' });
    expect(String(r.last.message)).toMatch(/BROKEN/);
    // The version was stored (it is fine as files) but never went live.
    const l = await listing(b);
    const badId = l.versions.find((v) => v.source === `path:${bad}`)!.id;
    expect(l.live.production).toBe(id1);
    expect(await get(b, 'blog.localhost')).toMatchObject({ version: id1, body: page('v1') });
    expect(await post(b, '/api/platform/promote', { app: 'blog', to: 'production', version: badId })).toMatchObject({ status: 422, json: { error: 'BEXT_ERR_PLUGIN_LOAD', switched: false } });
    expect(await get(b, 'blog.localhost')).toMatchObject({ version: id1 });
    // The environment still switches afterwards: the failed attempt left nothing behind.
    expect(await post(b, '/api/platform/promote', { app: 'blog', to: 'staging', version: id1 })).toMatchObject({ status: 200 });
    expect(await get(b, 'staging.blog.localhost')).toMatchObject({ version: id1 });
  });

  it('publishes every event on system/deploy', async () => {
    const seen = events.map((e) => `${e.data.event}:${e.data.env ?? '-'}:${e.data.version ?? '-'}`);
    expect(seen).toEqual(expect.arrayContaining([`deployed:-:${id1}`, `deployed:-:${id2}`, `promoted:production:${id1}`, `promoted:production:${id2}`, `rolled-back:production:${id1}`, `deployed:staging:${id2}`]));
    expect(events.every((e) => e.publisher === 'platform' && e.data.app !== undefined && typeof e.data.at === 'string')).toBe(true);
    const failed = events.filter((e) => e.data.event === 'failed').map((e) => e.data.code);
    expect(failed).toEqual(expect.arrayContaining(['BEXT_ERR_DEPLOY_UNSAFE_BUNDLE', 'BEXT_ERR_DEPLOY_BUILD', 'BEXT_ERR_PLUGIN_LOAD', 'BEXT_ERR_DEPLOY_NO_PREVIOUS']));
  });

  it('POST /api/reload reloads, and answers 422 with the error when the reload is refused', async () => {
    const ok = await post(b, '/api/reload', {});
    expect(ok.status).toBe(200);
    expect(ok.json.reused).toEqual(expect.arrayContaining(['static', 'platform']));
    writeFileSync(lockFile, '{ "lockfileVersion": 1, "plugins": [ ');
    try {
      const refused = await post(b, '/api/reload', {});
      expect(refused).toMatchObject({ status: 422, json: { error: 'BEXT_ERR_LOCK_INVALID' } });
      expect(await get(b, 'blog.localhost')).toMatchObject({ status: 200, version: id1 });
    } finally {
      writeFileSync(lockFile, EMPTY_LOCK);
    }
    expect((await post(b, '/api/reload', {})).status).toBe(200);
  });

  it('the live versions survive a restart', async () => {
    await b.close();
    b = await start();
    expect(await get(b, 'blog.localhost')).toMatchObject({ status: 200, version: id1, body: page('v1') });
    expect(await get(b, 'staging.blog.localhost')).toMatchObject({ status: 200, version: id1 });
    const l = await listing(b);
    expect(l.live).toEqual({ production: id1, staging: id1 });
    // And the history too: a rollback after the restart goes to the version before.
    expect(await post(b, '/api/platform/rollback', { app: 'blog' })).toMatchObject({ status: 200, json: { version: id2 } });
    expect(await get(b, 'blog.localhost')).toMatchObject({ version: id2, body: page('v2') });
  });

  it('a second process sharing the data folder (a cluster worker) follows a switch made by the first', async () => {
    const other = await start();
    try {
      expect(await get(other, 'blog.localhost')).toMatchObject({ version: id2 });
      expect(await post(b, '/api/platform/promote', { app: 'blog', to: 'production', version: id1 })).toMatchObject({ status: 200 });
      expect(await get(b, 'blog.localhost')).toMatchObject({ version: id1, body: page('v1') });
      await until(async () => (await get(other, 'blog.localhost')).version === id1, 10_000, 'the second process to follow the switch');
      expect(await get(other, 'blog.localhost')).toMatchObject({ status: 200, version: id1, body: page('v1') });
      expect(other.logs.some((r) => r.msg === 'platform: followed a switch made by another process')).toBe(true);
    } finally {
      await other.close();
    }
  });
});

const bodyReader = plugin(
  'body-reader',
  { hooks: { onRequest: { priority: 1, match: { methods: ['POST'] } } } },
  `export default () => ({ async onRequest(req) { const b = await req.readBody(); return { action: 'continue', ctx: { bodyBytes: b.length } }; } });`,
);

describe('platform plugin: pruning, concurrent switches, a body read before', () => {
  let b: Bext;
  const data = join(root, 'data-prune');
  const ids: string[] = [];

  beforeAll(async () => {
    b = await startBext({
      siteDir,
      // bodyReader reads every POST body first, as the WAF does to inspect it.
      plugins: ['static', PLATFORM, bodyReader],
      config: {
        apps: [{ name: 'blog', hosts: ['blog.localhost'], site: '../sites/configured', environments: { staging: { hosts: ['staging.blog.localhost'] } } }],
        plugins: { platform: { dataDir: data, keepVersions: 2 } },
      },
    });
  });
  afterAll(async () => {
    await b?.close();
  });

  it('keeps the newest keepVersions plus what is live or was live just before, and deletes the rest', async () => {
    const add = async (i: number) => {
      const r = await deploy(b, 'app=blog', { path: site(`p${i}`, { 'public/index.html': page(`p${i}`) }) });
      expect(r.last).toMatchObject({ stage: 'done', reused: false });
      ids.push(String(r.last.version));
    };
    await add(1);
    await add(2);
    expect((await post(b, '/api/platform/promote', { app: 'blog', to: 'production', version: ids[0] })).status).toBe(200);
    expect((await post(b, '/api/platform/promote', { app: 'blog', to: 'production', version: ids[1] })).status).toBe(200);
    for (const i of [3, 4, 5]) await add(i);
    // p2 is live, p1 was live just before it, p4 and p5 are the newest; p3 goes.
    const kept = (await listing(b)).versions.map((v) => v.id).sort();
    expect(kept).toEqual([ids[0], ids[1], ids[3], ids[4]].sort());
    expect(existsSync(join(data, 'blog', 'versions', ids[2]!))).toBe(false);
    expect(await post(b, '/api/platform/promote', { app: 'blog', to: 'production', version: ids[2] })).toMatchObject({ status: 404, json: { error: 'BEXT_ERR_DEPLOY_UNKNOWN_VERSION' } });
    // The rollback target survived the pruning.
    expect(await post(b, '/api/platform/rollback', { app: 'blog' })).toMatchObject({ status: 200, json: { version: ids[0] } });
  });

  it('takes an upload that another plugin already read', async () => {
    const r = await deploy(b, 'app=blog&env=staging', await tgz(v2Dir));
    expect(r.last).toMatchObject({ stage: 'done', reused: false, files: 2, env: 'staging' });
    ids.push(String(r.last.version));
    expect(await get(b, 'staging.blog.localhost')).toMatchObject({ status: 200, version: ids[5], body: page('v2') });
  });

  it('concurrent switches run one at a time: each one sees the one before it, and the last recorded is the one served', async () => {
    const order = [ids[4], ids[5], ids[4], ids[5], ids[1], ids[4], ids[5], ids[0]] as string[];
    const earlier = (await listing(b)).environments.staging!.history.map((h) => h.version);
    const answers = await Promise.all(order.map((version) => post(b, '/api/platform/promote', { app: 'blog', to: 'staging', version })));
    expect(answers.map((a) => a.status)).toEqual(order.map(() => 200));
    const history = (await listing(b)).environments.staging!.history.map((h) => h.version);
    expect(history.slice(0, earlier.length)).toEqual(earlier);
    const switched = answers.filter((a) => !a.json.unchanged).map((a) => `${a.json.previous}>${a.json.version}`).sort();
    // Serialised, the switches form one chain through the history.
    expect(switched).toEqual(history.slice(earlier.length).map((v, i) => `${history[earlier.length + i - 1] ?? null}>${v}`).sort());
    const last = history[history.length - 1]!;
    expect((await listing(b)).live.staging).toBe(last);
    expect(await get(b, 'staging.blog.localhost')).toMatchObject({ status: 200, version: last });
  });

  it('does not prune a version that stopped being live moments ago, even past keepVersions and the rollback target', async () => {
    // After the switches above, staging serves ids[0] and ids[5] is its rollback target; ids[4] was live
    // in staging moments ago. ids[3] was never live anywhere.
    const staging = (await listing(b)).environments.staging!.history.map((h) => h.version);
    expect(staging.slice(-2)).toEqual([ids[5], ids[0]]);
    expect(staging).toContain(ids[4]);
    const fresh: string[] = [];
    for (const i of [7, 8, 9]) {
      const r = await deploy(b, 'app=blog', { path: site(`p${i}`, { 'public/index.html': page(`p${i}`) }) });
      expect(r.last).toMatchObject({ stage: 'done', reused: false });
      fresh.push(String(r.last.version));
    }
    const kept = (await listing(b)).versions.map((v) => v.id);
    // Within the grace: kept (the previous rule, live + rollback target + newest two, would have deleted ids[4]).
    expect(kept).toContain(ids[4]);
    expect(existsSync(join(data, 'blog', 'versions', ids[4]!, 'public', 'index.html'))).toBe(true);
    for (const v of [ids[0], ids[1], ids[5], fresh[1], fresh[2]]) expect(kept).toContain(v);
    // Never live, and past keepVersions: deleted.
    expect(kept).not.toContain(ids[3]);
    expect(kept).not.toContain(fresh[0]);
  });
});
