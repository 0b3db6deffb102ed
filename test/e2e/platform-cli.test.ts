/**
 * `bext deploy | promote | rollback | versions` through the real CLI entry
 * (kernel/cli/bin.js) in child processes, against a running server with the
 * static, ssr and platform plugins and one hosted app.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { bextCli, tmp } from '../helpers.js';

const ROOT = resolve(import.meta.dirname, '../..');
const root = mkdtempSync(join(tmp(), 'platform-cli-'));

function site(name: string, files: Record<string, string>): string {
  const dir = join(root, name);
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(join(dir, rel, '..'), { recursive: true });
    writeFileSync(join(dir, rel), text);
  }
  return dir;
}

/** Runs the bext CLI; resolves with its exit code and output. */
const bext = (args: string[], env: Record<string, string> = {}) => bextCli(args, { cwd: root, env: { ...process.env, ...env }, timeoutMs: 50_000 });

async function get(b: Bext, host: string): Promise<{ version?: string; body: string }> {
  const r = await request(`${b.url}/`, { headers: { host } });
  return { version: r.headers['x-bext-version'] as string | undefined, body: await r.body.text() };
}

describe('bext deploy / promote / rollback / versions', () => {
  let b: Bext;
  const v1 = site('v1', { 'public/index.html': '<h1>one</h1>', 'node_modules/dep/index.js': 'ignored', '.git/HEAD': 'ignored' });
  const v2 = site('v2', {
    'public/robots.txt': 'User-agent: *',
    'pages/index.tsx': 'export default function Page() { return <h1>two, rendered</h1>; }\n',
  });
  const broken = site('broken', { 'public/index.html': 'x', 'pages/index.tsx': 'export default function Page( { return <h1>; }\n' });
  let url = '';

  beforeAll(async () => {
    b = await startBext({
      siteDir: root,
      plugins: ['static', 'ssr', join(ROOT, 'plugins/platform')],
      config: {
        apps: [{ name: 'shop', hosts: ['shop.localhost'], site: './v1', environments: { staging: { hosts: ['staging.shop.localhost'] } } }],
        plugins: { platform: { dataDir: join(root, 'data') }, ssr: { workers: 1 } },
      },
    });
    url = b.adminUrl;
  });
  afterAll(async () => {
    await b?.close();
  });

  it('deploy uploads with progress, leaves node_modules and .git out, and goes live with --env', async () => {
    const r = await bext(['deploy', v1, '--app', 'shop', '--env', 'staging', '--url', url]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/packing .*\(1 files\)/);
    expect(r.out).toMatch(/upload 100% \(/);
    const id = /version ([0-9a-f]{12}) \(1 files/.exec(r.out)?.[1];
    expect(id).toBeDefined();
    expect(r.out).toContain(`live in staging: ${id}`);
    expect(r.out).toContain(`deployed shop ${id} to staging`);
    expect(await get(b, 'staging.shop.localhost')).toEqual({ version: id, body: '<h1>one</h1>' });
  }, 60_000);

  it('deploy of a site with pages/ shows the build output; a broken build exits 1 with its code and output', async () => {
    const ok = await bext(['deploy', v2, '--app', 'shop'], { BEXT_ADMIN_URL: url });
    expect(ok.code).toBe(0);
    expect(ok.out).toContain('building…');
    expect(ok.out).toMatch(/ {2}\| built \S+ in \d+ ms/);
    const bad = await bext(['deploy', broken, '--app', 'shop', '--url', url]);
    expect(bad.code).toBe(1);
    expect(bad.err).toMatch(/^bext: BEXT_ERR_DEPLOY_BUILD: bext build failed/);
    expect(bad.err).toMatch(/index\.tsx/);
  }, 60_000);

  it('versions lists what is stored and live; promote and rollback switch it', async () => {
    const [list, text] = await Promise.all([bext(['versions', '--app', 'shop', '--json', '--url', url]), bext(['versions', '--app', 'shop', '--url', url])]);
    expect(list.code).toBe(0);
    const j = JSON.parse(list.out) as { live: Record<string, string | null>; versions: { id: string; built: boolean }[] };
    expect(j.versions).toHaveLength(2);
    const built = j.versions.find((v) => v.built)!.id;
    const plain = j.versions.find((v) => !v.built)!.id;
    expect(j.live).toEqual({ production: null, staging: plain });

    expect(text.out).toMatch(new RegExp(`staging\\s+${plain}`));
    expect(text.out).toMatch(new RegExp(`${built} .* built`));

    const p = await bext(['promote', '--app', 'shop', '--to', 'production', '--from', 'staging', '--url', url]);
    expect(p).toMatchObject({ code: 0, out: `promoted shop ${plain} to production\n` });
    expect(await get(b, 'shop.localhost')).toEqual({ version: plain, body: '<h1>one</h1>' });
    const p2 = await bext(['promote', '--app', 'shop', '--to', 'production', '--version', built, '--url', url]);
    expect(p2.out).toBe(`promoted shop ${built} to production (was ${plain})\n`);
    // The build made at deploy time is what the app's ssr instance renders.
    const rendered = await get(b, 'shop.localhost');
    expect(rendered.version).toBe(built);
    expect(rendered.body).toContain('two, rendered');
    const rb = await bext(['rollback', '--app', 'shop', '--url', url]);
    expect(rb).toMatchObject({ code: 0, out: `rolled shop production back to ${plain} (was ${built})\n` });
    expect(await get(b, 'shop.localhost')).toEqual({ version: plain, body: '<h1>one</h1>' });
  }, 60_000);

  it('fails with the error code: unknown app, unreachable server, bad usage; --help', async () => {
    const [unknown, down, usage, help] = await Promise.all([
      bext(['rollback', '--app', 'nope', '--url', url]),
      bext(['versions', '--app', 'shop', '--url', 'http://127.0.0.1:1']),
      bext(['promote', '--app', 'shop', '--to', 'production']),
      bext(['deploy', '--help']),
    ]);
    expect(unknown.code).toBe(1);
    expect(unknown.err).toMatch(/^bext: BEXT_ERR_DEPLOY_UNKNOWN_APP: no app named "nope"/);
    expect(down.code).toBe(1);
    expect(down.err).toMatch(/^bext: BEXT_ERR_ADMIN_UNREACHABLE: cannot reach the admin listener at http:\/\/127\.0\.0\.1:1/);
    expect(usage.code).toBe(1);
    expect(usage.err).toMatch(/^bext: BEXT_ERR_CLI_USAGE: promote needs exactly one of --version ID or --from ENV/);
    expect(help.code).toBe(0);
    expect(help.out).toMatch(/^Usage: bext deploy <folder> --app NAME/);
  }, 60_000);
});
