/**
 * Process sandbox: µs per onRequest call (method, path, 6 headers) through a
 * child process, sequential round trips and pipelined, JSON and MessagePack,
 * against the same hook as a trusted function and a raw pipe ping-pong
 * between two node processes (the floor any stdio protocol sits on), all
 * interleaved in one run. Target: ≤ 100 µs per sequential call.
 *
 * `npx tsx bench/sandboxes-process.ts` (BENCH_ROUNDS, BENCH_CALLS to change the size).
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createProcessHost, type ProcessInstance } from '../sandboxes/process/index.js';
import { loadPlugin, pluginFolder, removeFolder, request } from '../sandboxes/process/testkit.js';
import { SAMPLE_REQUEST } from './lib.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const CALLS = Number(process.env.BENCH_CALLS ?? 2000);
const WINDOW = 64;

const hookSource = `
export function onRequest(req) {
  const h = req.headers;
  if (req.method === 'POST' && !h['content-type']) return { action: 'respond', status: 415 };
  if (req.path.startsWith('/admin') && !h.authorization) return { action: 'respond', status: 401 };
  return { action: 'continue', setHeaders: { 'x-client': String(h['user-agent'] ?? '').slice(0, 16) } };
}`;

const req = request(SAMPLE_REQUEST as unknown as Record<string, unknown>);

type Hook = (r: unknown) => unknown;

async function sequential(hook: Hook): Promise<number> {
  const t = performance.now();
  for (let i = 0; i < CALLS; i++) await hook(req);
  return ((performance.now() - t) * 1000) / CALLS;
}

async function pipelined(hook: Hook): Promise<number> {
  const t = performance.now();
  const batch: unknown[] = new Array(WINDOW);
  for (let i = 0; i < CALLS; i += WINDOW) {
    for (let j = 0; j < WINDOW; j++) batch[j] = hook(req);
    await Promise.all(batch);
  }
  return ((performance.now() - t) * 1000) / CALLS;
}

/** Raw floor: 300 bytes written to a node child that echoes them back with writeSync. */
function rawPingPong() {
  const child = spawn(process.execPath, ['-e', 'process.stdin.on("data", (d) => require("fs").writeSync(1, d))'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const payload = Buffer.alloc(300, 97);
  let waiting: (() => void) | undefined;
  child.stdout!.on('data', () => {
    const w = waiting;
    waiting = undefined;
    w?.();
  });
  return {
    hook: () => new Promise<void>((r) => ((waiting = r), child.stdin!.write(payload))),
    stop: () => child.kill('SIGKILL'),
  };
}

const dir = pluginFolder({ 'plugin.mjs': hookSource });
const trustedMod = (await import(`data:text/javascript,${encodeURIComponent(hookSource)}`)) as { onRequest: Hook };
writeFileSync(`${dir}/bext-plugin.json`, JSON.stringify({ name: 'bench', version: '1.0.0', sandbox: 'process', entry: 'plugin.mjs' }));

const instances: Record<string, ProcessInstance> = {};
const loadMs: Record<string, number> = {};
for (const [name, opts] of [
  ['process json', { codec: 'json' }],
  ['process msgpack', { codec: 'msgpack' }],
  ['process json, unconfined', { codec: 'json', confine: 'off' }],
] as const) {
  const t = performance.now();
  const { inst } = await loadPlugin(createProcessHost(opts), dir, { name: 'bench', manifest: { needs: ['method', 'path', 'headers'] } });
  loadMs[name] = performance.now() - t;
  instances[name] = inst;
}
const raw = rawPingPong();

const subjects: Record<string, Hook> = {
  trusted: (r) => trustedMod.onRequest(r),
  'raw pipe ping-pong': raw.hook,
  ...Object.fromEntries(Object.entries(instances).map(([n, i]) => [n, i.hooks.onRequest as Hook])),
};

try {
  for (const hook of Object.values(subjects)) await sequential(hook);
  const seq = new Map<string, number[]>();
  const pipe = new Map<string, number[]>();
  for (let r = 0; r < ROUNDS; r++) {
    for (const [name, hook] of Object.entries(subjects)) {
      (seq.get(name) ?? seq.set(name, []).get(name)!).push(await sequential(hook));
      if (name !== 'raw pipe ping-pong') (pipe.get(name) ?? pipe.set(name, []).get(name)!).push(await pipelined(hook));
    }
  }
  const median = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]!;
  const base = median(seq.get('trusted')!);
  const floor = median(seq.get('raw pipe ping-pong')!);
  const stats = instances['process json']!.stats();
  console.log(`process sandbox benchmark: onRequest with method, path and 6 headers; ${CALLS} calls × ${ROUNDS} interleaved rounds, median`);
  console.log(`bwrap: ${stats.confined ? 'confining' : `not used (${stats.confinedReason})`}`);
  console.log('| subject | sequential µs/call | ratio to trusted | over raw pipe µs | pipelined (64 in flight) µs/call | load ms | RSS MiB |');
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  for (const name of Object.keys(subjects)) {
    const s = median(seq.get(name)!);
    const p = pipe.get(name) ? median(pipe.get(name)!).toFixed(1) : '—';
    const inst = instances[name];
    const rss = inst?.stats().memoryBytes;
    console.log(
      `| ${name} | ${s.toFixed(s < 10 ? 2 : 1)} | ${(s / base).toFixed(0)}× | ${name.startsWith('process') ? (s - floor).toFixed(1) : '—'} | ${p} | ${loadMs[name]?.toFixed(0) ?? '—'} | ${rss ? (rss / 2 ** 20).toFixed(0) : '—'} |`,
    );
  }
  const target = median(seq.get('process json')!);
  console.log(`target ≤ 100 µs per sequential call (process json): ${target.toFixed(1)} µs — ${target <= 100 ? 'met' : 'NOT met'}`);
} finally {
  raw.stop();
  for (const i of Object.values(instances)) await i.dispose();
  removeFolder(dir);
}
