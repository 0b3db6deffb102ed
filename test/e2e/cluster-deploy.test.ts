/**
 * Deploys in cluster mode, end to end with real processes: `bext run
 * --workers 2` hosting an app, `bext deploy` / `bext rollback` through the
 * CLI against the admin listener (which reaches one worker), and every
 * worker serving each new version shortly after — the other worker follows
 * through the platform's state file — with no failed request under
 * keep-alive load throughout.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { Agent, request } from 'undici';
import { afterAll, describe, expect, it } from 'vitest';
import { computeIntegrity } from '../../kernel/integrity.js';
import { writeLock } from '../../kernel/lock.js';
import { bextCli, tmp, until } from '../helpers.js';

const BIN = resolve('kernel/cli/bin.js');

const bext = (args: string[]) => bextCli(args, { env: { ...process.env, BEXT_LOG: 'error' } });

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

let proc: ChildProcess | null = null;
afterAll(async () => {
  if (proc && proc.exitCode === null) {
    proc.kill('SIGTERM');
    await new Promise((r) => proc!.once('exit', r));
  }
});

describe('deploys under bext run --workers 2', () => {
  it('every worker serves each deployed version, with no failed request', { timeout: 120_000 }, async () => {
    const dir = mkdtempSync(join(tmp(), 'cluster-deploy-'));
    for (const [name, text] of [['configured', 'configured'], ['v1', 'one'], ['v2', 'two']]) {
      mkdirSync(join(dir, 'sites', name!, 'public'), { recursive: true });
      writeFileSync(join(dir, 'sites', name!, 'public', 'index.html'), `<h1>${text}</h1>`);
    }
    // A plugin telling which worker answered.
    mkdirSync(join(dir, 'pid'));
    writeFileSync(join(dir, 'pid', 'bext-plugin.json'), JSON.stringify({ name: 'pid', version: '1.0.0', sandbox: 'trusted', entry: 'index.mjs', hooks: { onResponse: {} } }));
    writeFileSync(join(dir, 'pid', 'index.mjs'), `export default () => ({ onResponse() { return { setHeaders: { 'x-pid': String(process.pid) } }; } });`);
    const builtin = (name: string, order: number, capabilities: string[]) => ({ name, source: `builtin:${name}`, version: '1.0.0', sandbox: 'trusted' as const, integrity: computeIntegrity(resolve('plugins', name)), capabilities, order });
    writeLock(join(dir, 'plugins.lock.json'), {
      lockfileVersion: 1,
      plugins: [builtin('static', 1, []), builtin('platform', 2, ['publish:system/deploy']), { name: 'pid', source: 'file:./pid', version: '1.0.0', sandbox: 'trusted', integrity: computeIntegrity(join(dir, 'pid')), capabilities: [], order: 3 }],
    });
    const adminPort = await freePort();
    writeFileSync(
      join(dir, 'bext.config.json'),
      JSON.stringify({
        server: { port: 0, host: '127.0.0.1', shutdownTimeoutMs: 5000 },
        admin: { port: adminPort, host: '127.0.0.1' },
        apps: [{ name: 'blog', hosts: ['blog.localhost'], site: './sites/configured' }],
        plugins: { platform: { dataDir: './data', syncIntervalMs: 200 } },
      }),
    );
    proc = spawn(process.execPath, [BIN, 'run', dir, '--workers', '2'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, BEXT_LOG: 'warn' } });
    const out: string[] = [];
    createInterface({ input: proc.stdout! }).on('line', (l) => out.push(l));
    createInterface({ input: proc.stderr! }).on('line', (l) => out.push(l));
    await until(() => out.some((l) => /^bext serving .* with 2 worker/.test(l)), 60_000, `the cluster to serve (output: ${out.join(' | ')})`);
    const url = /on (http:\/\/127\.0\.0\.1:\d+)/.exec(out.find((l) => l.startsWith('bext serving'))!)![1]!;
    const admin = `http://127.0.0.1:${adminPort}`;

    // Keep-alive load for the whole test; every response must be a 200 of some version.
    const keepAlive = new Agent({ connections: 4 });
    let stop = false;
    let ok = 0;
    const failures: string[] = [];
    const loaders = Array.from({ length: 4 }, async () => {
      while (!stop) {
        try {
          const r = await request(url, { dispatcher: keepAlive, headers: { host: 'blog.localhost' }, headersTimeout: 15_000, bodyTimeout: 15_000 });
          const body = await r.body.text();
          if (r.statusCode === 200 && /^<h1>(configured|one|two)<\/h1>$/.test(body)) ok++;
          else failures.push(`${r.statusCode} ${body.slice(0, 80)}`);
        } catch (e) {
          failures.push(String((e as Error).message));
        }
      }
    });

    /** Fresh connections (spread over both workers by the OS): which pid served which version. */
    const sample = async () => {
      const seen = new Map<string, Set<string>>();
      for (let i = 0; i < 24; i++) {
        const a = new Agent({ connections: 1, pipelining: 0 });
        const r = await request(url, { dispatcher: a, headers: { host: 'blog.localhost', connection: 'close' } });
        const body = await r.body.text();
        const key = `${r.headers['x-bext-version'] ?? 'none'} ${body}`;
        const pid = String(r.headers['x-pid']);
        if (!seen.has(pid)) seen.set(pid, new Set());
        seen.get(pid)!.add(key);
        await a.close();
      }
      return seen;
    };
    const allServe = async (version: string, body: string) => {
      const want = `${version} ${body}`;
      let last = '';
      await until(
        async () => {
          const seen = await sample();
          last = JSON.stringify([...seen].map(([p, v]) => [p, [...v]]));
          return seen.size === 2 && [...seen.values()].every((v) => v.size === 1 && v.has(want));
        },
        30_000,
        `both workers to serve ${want} (last sample: ${last})`,
      );
    };

    await allServe('none', '<h1>configured</h1>');
    const d1 = await bext(['deploy', join(dir, 'sites', 'v1'), '--app', 'blog', '--env', 'production', '--url', admin]);
    expect(d1.code, d1.err).toBe(0);
    const v1 = /version ([0-9a-f]{12})/.exec(d1.out)![1]!;
    await allServe(v1, '<h1>one</h1>');

    const d2 = await bext(['deploy', join(dir, 'sites', 'v2'), '--app', 'blog', '--env', 'production', '--url', admin]);
    expect(d2.code, d2.err).toBe(0);
    const v2 = /version ([0-9a-f]{12})/.exec(d2.out)![1]!;
    expect(v2).not.toBe(v1);
    await allServe(v2, '<h1>two</h1>');

    const rb = await bext(['rollback', '--app', 'blog', '--url', admin]);
    expect(rb.code, rb.err).toBe(0);
    await allServe(v1, '<h1>one</h1>');

    stop = true;
    await Promise.all(loaders);
    await keepAlive.close();
    expect(failures).toEqual([]);
    expect(ok).toBeGreaterThan(50);

    proc.kill('SIGTERM');
    expect(await new Promise((r) => proc!.once('exit', (code) => r(code)))).toBe(0);
  });
});
