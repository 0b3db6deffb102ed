/**
 * Shared benchmark helpers: start a server script in its own process, load
 * it with wrk (or autocannon when wrk is missing) from another process, and
 * report ratios against a baseline measured in the same run.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import type { RequestData } from '../plugin-api/index.js';
import { join, relative } from 'node:path';
import { once } from 'node:events';
import { createInterface } from 'node:readline';

export interface Load {
  rps: number;
  p99ms: number;
  errors: number;
  /** CPU time the server process used per request, in µs (set by `loadCpu`; the lowest round in `compare`). */
  cpuUs?: number;
}

/** User + system CPU milliseconds a process (all its threads) has used (Linux /proc; NaN elsewhere). */
export function cpuMs(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / 100;
  } catch {
    return NaN;
  }
}

/**
 * `load`, plus the CPU time the server process `pid` used per request. Unlike
 * req/s, it hardly moves when other processes take the shared cores, so it is
 * the steadier figure on a busy machine.
 */
export async function loadCpu(pid: number, url: string, seconds = 5, connections = 50, headers: Record<string, string> = {}): Promise<Load> {
  const c0 = cpuMs(pid);
  const l = await load(url, seconds, connections, headers);
  const us = ((cpuMs(pid) - c0) * 1000) / Math.max(1, l.rps * seconds);
  return Number.isFinite(us) ? { ...l, cpuUs: us } : l;
}

/** `base ÷ subject` of server CPU per request (above 1: the subject spends less), or a dash. */
export function cpuRatio(base: Load | undefined, subject: Load | undefined): string {
  return base?.cpuUs !== undefined && subject?.cpuUs !== undefined ? (base.cpuUs / subject.cpuUs).toFixed(3) : '—';
}

/** Server CPU µs per request, or a dash. */
export function cpuCol(l: Load | undefined): string {
  return l?.cpuUs !== undefined ? l.cpuUs.toFixed(1) : '—';
}

export const hasWrk = spawnSync('which', ['wrk']).status === 0;

/** Starts `tsx <script> ...args`; resolves when it prints `LISTENING <port>`. */
export async function startServer(script: string, args: string[] = [], env: Record<string, string> = {}): Promise<{ port: number; proc: ChildProcess; stop(): Promise<void> }> {
  const proc = spawn(process.execPath, ['--import', 'tsx', script, ...args], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, BEXT_LOG: 'error', ...env } });
  const rl = createInterface({ input: proc.stdout! });
  const port = await new Promise<number>((resolve, reject) => {
    proc.once('exit', (c) => reject(new Error(`${script} exited with ${c} before listening`)));
    rl.on('line', (l) => {
      const m = /^LISTENING (\d+)/.exec(l);
      if (m) resolve(Number(m[1]));
    });
  });
  return {
    port,
    proc,
    async stop() {
      if (proc.exitCode !== null) return;
      proc.kill('SIGTERM');
      await once(proc, 'exit');
    },
  };
}

/** Runs a load against a URL for `seconds`, 50 connections, one load thread. */
export async function load(url: string, seconds = 5, connections = 50, headers: Record<string, string> = {}): Promise<Load> {
  if (hasWrk) {
    const hargs = Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
    const p = spawn('wrk', ['-t1', `-c${connections}`, `-d${seconds}s`, '--latency', ...hargs, url]);
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    await once(p, 'exit');
    const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? 0);
    const p99 = /99%\s+([\d.]+)(us|ms|s)/.exec(out);
    const p99ms = p99 ? Number(p99[1]) * (p99[2] === 'us' ? 0.001 : p99[2] === 's' ? 1000 : 1) : NaN;
    const errs = /Non-2xx or 3xx responses:\s+(\d+)/.exec(out);
    const sockErr = /Socket errors:.*?connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
    const errors = Number(errs?.[1] ?? 0) + (sockErr ? Number(sockErr[1]) + Number(sockErr[2]) + Number(sockErr[3]) + Number(sockErr[4]) : 0);
    return { rps, p99ms, errors };
  }
  const p = spawn(process.execPath, ['node_modules/autocannon/autocannon.js', '-j', '-c', String(connections), '-d', String(seconds), ...Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}=${v}`]), url]);
  let out = '';
  p.stdout.on('data', (d) => (out += d));
  await once(p, 'exit');
  const j = JSON.parse(out) as { requests: { average: number }; latency: { p99: number }; non2xx: number; errors: number };
  return { rps: j.requests.average, p99ms: j.latency.p99, errors: j.non2xx + j.errors };
}

export function fmt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

/** Interleaves rounds so drift affects baseline and subject alike; returns the best round of each (req/s highest, CPU per request lowest). */
export async function compare(subjects: { name: string; run: () => Promise<Load> }[], rounds = 3): Promise<Map<string, Load>> {
  const best = new Map<string, Load>();
  for (let r = 0; r < rounds; r++) {
    for (const s of subjects) {
      const l = await s.run();
      const prev = best.get(s.name);
      const cpuUs = prev?.cpuUs !== undefined && l.cpuUs !== undefined ? Math.min(prev.cpuUs, l.cpuUs) : (l.cpuUs ?? prev?.cpuUs);
      const top = !prev || l.rps > prev.rps ? l : prev;
      best.set(s.name, cpuUs === undefined ? top : { ...top, cpuUs });
    }
  }
  return best;
}

/** Starts `next start` from a Next.js app folder on a free port (building it first if needed). */
export async function startNext(app: string): Promise<{ port: number; stop(): Promise<void> } | string> {
  const bin = join(app, 'node_modules/next/dist/bin/next');
  if (!existsSync(bin)) return `Next.js is not installed: run \`npm install --prefix ${relative(process.cwd(), app)}\` to include this comparison`;
  const env = { ...process.env, NEXT_TELEMETRY_DISABLED: '1', NODE_ENV: 'production' };
  if (!existsSync(join(app, 'build/BUILD_ID'))) {
    process.stdout.write('building the Next.js app (next build)…\n');
    const b = spawnSync(process.execPath, [bin, 'build'], { cwd: app, env, stdio: ['ignore', 'ignore', 'inherit'] });
    if (b.status !== 0) return `next build failed with ${b.status}`;
  }
  const net = await import('node:net');
  const probe = net.createServer().listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const port = (probe.address() as { port: number }).port;
  probe.close();
  const proc: ChildProcess = spawn(process.execPath, [bin, 'start', '-p', String(port), '-H', '127.0.0.1'], { cwd: app, env, stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((res, rej) => {
    proc.once('exit', (c) => rej(new Error(`next start exited with ${c}`)));
    proc.stdout!.on('data', (d: Buffer) => {
      if (/Ready|started server/i.test(d.toString())) res();
    });
  });
  return {
    port,
    async stop() {
      if (proc.exitCode !== null) return;
      proc.kill('SIGTERM');
      await once(proc, 'exit');
    },
  };
}

/** The realistic onRequest hook (method, path, 6 headers) as a trusted function: the sandbox benches' baseline. */
export function trustedOnRequest(req: RequestData) {
  const h = req.headers;
  if (req.method === 'POST' && !h['content-type']) return { action: 'respond', status: 415 };
  if (req.path.startsWith('/admin') && !h.authorization) return { action: 'respond', status: 401 };
  return { action: 'continue', setHeaders: { 'x-client': String(h['user-agent'] ?? '').slice(0, 16) } };
}

export const SAMPLE_REQUEST: RequestData = {
  id: '1', method: 'GET', path: '/api/items/42', query: 'page=2', host: 'example.com', remoteAddress: '10.0.0.1',
  scheme: 'http', httpVersion: '1.1', ctx: {},
  headers: {
    host: 'example.com',
    'user-agent': 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36',
    accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8',
    'accept-encoding': 'gzip, deflate, br',
    'accept-language': 'en-US,en;q=0.9',
    cookie: 'sid=4f9a1c2e8b; theme=dark',
  },
};
