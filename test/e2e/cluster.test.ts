/**
 * Cluster mode end to end: the real CLI (`bext run --workers 2`) serving a
 * site under keep-alive load, restarted worker by worker (`bext restart`,
 * SIGHUP) with zero failed requests, a worker killed with SIGKILL and
 * replaced, SIGTERM ending with exit 0; and a worker that cannot start
 * ending the primary with its error printed once.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { Client } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { computeIntegrity } from '../../kernel/integrity.js';
import { writeLock } from '../../kernel/lock.js';
import { tmp, until } from '../helpers.js';

const BIN = resolve('kernel/cli/bin.js');

/** A site whose lock holds one plugin answering /pid with the worker's pid and index. */
function site(opts: { integrity?: string } = {}): string {
  const dir = mkdtempSync(join(tmp(), 'cluster-'));
  mkdirSync(join(dir, 'pid'));
  lockPlugin(dir, 'ok v1', opts.integrity);
  writeFileSync(join(dir, 'bext.config.json'), JSON.stringify({ server: { port: 0, host: '127.0.0.1', shutdownTimeoutMs: 10_000 }, admin: { port: null } }));
  return dir;
}

/** Writes the pid plugin answering `body` and locks it (as `bext plugin add` would). */
function lockPlugin(dir: string, body: string, integrity?: string): void {
  const p = join(dir, 'pid');
  writeFileSync(join(p, 'bext-plugin.json'), JSON.stringify({ name: 'pid', version: '1.0.0', sandbox: 'trusted', entry: 'index.mjs', routes: [{ path: '/pid' }] }));
  writeFileSync(join(p, 'index.mjs'), `
export default () => ({ onRoute() {
  return { status: 200, headers: { 'x-pid': String(process.pid), 'x-worker': String(process.env.BEXT_WORKER_INDEX), 'x-workers': String(process.env.BEXT_WORKERS) }, body: ${JSON.stringify(body)} };
} });`);
  writeLock(join(dir, 'plugins.lock.json'), {
    lockfileVersion: 1,
    plugins: [{ name: 'pid', source: 'file:./pid', version: '1.0.0', sandbox: 'trusted', integrity: integrity ?? computeIntegrity(p), capabilities: [], order: 1 }],
  });
}

interface Run {
  proc: ChildProcess;
  out: string[];
  err: string[];
  exit: Promise<number | null>;
}

function start(dir: string, extra: string[] = []): Run {
  const proc = spawn(process.execPath, [BIN, 'run', dir, '--workers', '2', ...extra], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, BEXT_LOG: 'info' } });
  const out: string[] = [];
  const err: string[] = [];
  createInterface({ input: proc.stdout! }).on('line', (l) => out.push(l));
  createInterface({ input: proc.stderr! }).on('line', (l) => err.push(l));
  const exit = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  return { proc, out, err, exit };
}

async function line(run: Run, re: RegExp, timeoutMs = 30_000): Promise<RegExpExecArray> {
  let m: RegExpExecArray | null = null;
  await until(() => run.out.some((l) => (m = re.exec(l)) !== null), timeoutMs, `a line matching ${re} (stdout so far: ${run.out.join(' | ')})`);
  return m!;
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

let running: Run | null = null;
afterEach(async () => {
  if (running && running.proc.exitCode === null && running.proc.signalCode === null) {
    running.proc.kill('SIGKILL');
    await running.exit;
  }
  running = null;
});

describe('bext run --workers', () => {
  it('serves under keep-alive load through a rolling restart with zero failed requests, replaces a killed worker, and exits 0 on SIGTERM', { timeout: 90_000 }, async () => {
    const dir = site();
    const pidFile = join(dir, 'bext.pid');
    const run = (running = start(dir, ['--pid-file', pidFile]));
    const serving = await line(run, /^bext serving .* on (http:\/\/127\.0\.0\.1:\d+) with 2 worker/);
    const url = serving[1]!;
    const w = await line(run, /^workers: 0=pid (\d+), 1=pid (\d+)/);
    const initial = [Number(w[1]), Number(w[2])];

    // Load: six keep-alive connections, each sending one request after
    // another; and probes that each open a new connection, so that new
    // connections reach every worker. A request that gets no answer fails
    // after 15 s instead of hanging the test.
    type Phase = 'steady' | 'rolling' | 'rolled' | 'crash' | 'recovered' | 'reload';
    let phase: Phase = 'steady';
    const ok: Record<Phase, number> = { steady: 0, rolling: 0, rolled: 0, crash: 0, recovered: 0, reload: 0 };
    const failed: Record<Phase, string[]> = { steady: [], rolling: [], rolled: [], crash: [], recovered: [], reload: [] };
    const byPid = new Map<number, number>();
    const lastBody = new Map<number, string>();
    const workerIndexOf = new Map<number, string>();
    let stop = false;
    const deadline = Date.now() + 75_000;
    const timeouts = { headersTimeout: 15_000, bodyTimeout: 15_000 };
    const send = async (c: Client, fresh: boolean) => {
      const p = phase;
      try {
        const r = await c.request({ path: '/pid', method: 'GET', reset: fresh });
        const body = await r.body.text();
        if (r.statusCode !== 200 || !body.startsWith('ok v')) throw new Error(`status ${r.statusCode}: ${body}`);
        const pid = Number(r.headers['x-pid']);
        lastBody.set(pid, body);
        byPid.set(pid, (byPid.get(pid) ?? 0) + 1);
        workerIndexOf.set(pid, `${r.headers['x-worker']}/${r.headers['x-workers']}`);
        ok[p]++;
      } catch (e) {
        failed[p].push(String((e as Error).message));
      }
    };
    const clients = Array.from({ length: 6 }, () => new Client(url, timeouts));
    const prober = new Client(url, timeouts);
    const loops = clients.map(async (c) => {
      while (!stop && Date.now() < deadline) await send(c, false);
    });
    const served = (pid: number) => (byPid.get(pid) ?? 0) > 0;
    /** Probes on new connections until every pid has served. */
    const servedBy = (pids: number[], what: string) => until(async () => (await send(prober, true), pids.every(served)), 15_000, what);
    let replacement = 0;
    try {
      await servedBy(initial, 'both workers serving');
      expect(workerIndexOf.get(initial[0]!)).toBe('0/2');
      expect(workerIndexOf.get(initial[1]!)).toBe('1/2');

      // Rolling restart through `bext restart` (SIGHUP to the primary from the pid file).
      phase = 'rolling';
      const restarted = await new Promise<string>((res, rej) => execFile(process.execPath, [BIN, 'restart', '--pid-file', pidFile], (e, so) => (e ? rej(e) : res(so))));
      expect(restarted).toMatch(/sent SIGHUP/);
      await line(run, /^restart done$/, 45_000);
      phase = 'rolled';
      const r0 = await line(run, /^worker 0: pid (\d+) → pid (\d+)/);
      const r1 = await line(run, /^worker 1: pid (\d+) → pid (\d+)/);
      expect([Number(r0[1]), Number(r1[1])]).toEqual(initial);
      const renewed = [Number(r0[2]), Number(r1[2])];
      expect(renewed.some((p) => initial.includes(p))).toBe(false);
      expect(initial.some(alive)).toBe(false);
      await servedBy(renewed, 'both new workers serving');
      expect(workerIndexOf.get(renewed[0]!)).toBe('0/2');
      expect(workerIndexOf.get(renewed[1]!)).toBe('1/2');
      expect(ok.rolling).toBeGreaterThan(0);
      expect({ steady: failed.steady, rolling: failed.rolling, rolled: failed.rolled }).toEqual({ steady: [], rolling: [], rolled: [] });

      // A worker killed outright is replaced in its slot and serving resumes.
      phase = 'crash';
      process.kill(renewed[0]!, 'SIGKILL');
      const back = await line(run, /^worker 0 restarted \(pid (\d+)\)/, 30_000);
      replacement = Number(back[1]);
      await servedBy([replacement], 'the replacement serving');
      phase = 'recovered';
      const before = ok.recovered;
      await until(() => ok.recovered >= before + 200, 20_000, '200 requests after recovery');
      expect(workerIndexOf.get(replacement)).toBe('0/2');
      // Requests in flight on the killed process may fail; none after its replacement serves.
      expect(failed.recovered).toEqual([]);

      // Each worker watches the lock: a re-locked plugin reaches both, without a restart.
      phase = 'reload';
      lockPlugin(dir, 'ok v2');
      const current = [replacement, renewed[1]!];
      await until(async () => (await send(prober, true), current.every((p) => lastBody.get(p) === 'ok v2')), 20_000, 'both workers reloaded');
      expect(failed.reload).toEqual([]);
      console.log(`cluster load: ${JSON.stringify(ok)} ok; failed while a worker was killed: ${failed.crash.length}${failed.crash.length ? ` (${[...new Set(failed.crash)].join('; ')})` : ''}`);
    } finally {
      stop = true;
      await Promise.all(loops);
      await Promise.all([...clients, prober].map((c) => c.close()));
    }

    run.proc.kill('SIGTERM');
    expect(await run.exit).toBe(0);
    expect(run.out).toContain('bext stopped');
    // The real port is printed once, by the primary.
    expect(run.out.filter((l) => l.startsWith('bext serving')).length).toBe(1);
    // Worker log lines carry their slot index.
    const logs = run.err.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { msg: string; worker?: number; signal?: string });
    expect(new Set(logs.filter((l) => l.msg === 'bext listening').map((l) => l.worker))).toEqual(new Set([0, 1]));
    expect(logs.some((l) => l.msg === 'worker exited unexpectedly; restarting it' && l.worker === 0 && l.signal === 'SIGKILL')).toBe(true);
    expect(alive(replacement)).toBe(false);
  });

  it('a restart whose new workers cannot start stops, and the running workers keep serving', { timeout: 60_000 }, async () => {
    const dir = site();
    const run = (running = start(dir));
    const url = (await line(run, /^bext serving .* on (http:\/\/127\.0\.0\.1:\d+) with 2 worker/))[1]!;
    const w = await line(run, /^workers: 0=pid (\d+), 1=pid (\d+)/);
    const pids = [Number(w[1]), Number(w[2])];
    lockPlugin(dir, 'ok v1', 'sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=');
    run.proc.kill('SIGHUP');
    await line(run, /^restart stopped: the replacement for worker 0 failed to start/);
    expect(run.err.some((l) => l.includes('restart stopped') && l.includes('BEXT_ERR_LOCK_INTEGRITY'))).toBe(true);
    expect(pids.every(alive)).toBe(true);
    const client = new Client(url);
    const seen = new Set<number>();
    // New connections until both old workers have answered.
    await until(async () => {
      const r = await client.request({ path: '/pid', method: 'GET', reset: true });
      expect(await r.body.text()).toBe('ok v1');
      seen.add(Number(r.headers['x-pid']));
      return pids.every((p) => seen.has(p));
    }, 15_000, 'both workers answering');
    await client.close();
    run.proc.kill('SIGTERM');
    expect(await run.exit).toBe(0);
  });

  it('a worker that cannot start ends the primary with a non-zero code and its error printed once', async () => {
    const run = (running = start(site({ integrity: 'sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=' })));
    expect(await run.exit).toBe(1);
    const errors = run.err.filter((l) => l.includes('BEXT_ERR_LOCK_INTEGRITY'));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/^bext: BEXT_ERR_LOCK_INTEGRITY: plugin "pid"/);
    expect(run.out.some((l) => l.startsWith('bext serving'))).toBe(false);
  });
});
