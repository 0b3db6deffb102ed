/**
 * JavaScript sandboxes: µs per onRequest call (method, path, 6 headers) in
 * the `quickjs` and `isolate` kinds against the same hook as a trusted JS
 * function, interleaved in one run; then the memory and cold start of
 * QuickJS tenant instances (every tenant its own runtime + context).
 * Targets: quickjs ≤ 15 µs, isolate ≤ 6 µs per call; 10,000 QuickJS tenants
 * ≤ 1 GB RSS; cold start of one tenant ≤ 2 ms.
 *
 * `npx tsx bench/sandboxes-js.ts` (BENCH_ROUNDS, BENCH_CALLS, BENCH_TENANTS to change the size).
 */
import { SAMPLE_REQUEST as req, trustedOnRequest } from './lib.js';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import path from 'node:path';
import { DEFAULT_LIMITS, type LoadSpec, type Manifest, type RequestData, type SandboxHost, type SandboxInstance } from '../plugin-api/index.js';
import isolate from '../sandboxes/isolate/index.js';
import quickjs from '../sandboxes/quickjs/index.js';
import { testHost } from '../sandboxes/quickjs/testing.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const CALLS = Number(process.env.BENCH_CALLS ?? 20000);
const TENANTS = Number(process.env.BENCH_TENANTS ?? 10000);

const guest = `
export function onRequest(req) {
  const h = req.headers;
  if (req.method === 'POST' && !h['content-type']) return { action: 'respond', status: 415 };
  if (req.path.startsWith('/admin') && !h.authorization) return { action: 'respond', status: 401 };
  return { action: 'continue', setHeaders: { 'x-client': String(h['user-agent'] ?? '').slice(0, 16) } };
}
export async function onRender(req) {
  return { status: 200, headers: { 'content-type': 'text/plain' }, body: 'hello ' + req.path };
}
`;


const dir = await mkdtemp(path.join(tmpdir(), 'bext-bench-js-'));
const entryPath = path.join(dir, 'plugin.js');
await writeFile(entryPath, guest);
// Tenants share one manifest and one host object here: what is measured is the sandbox's own cost per tenant.
const sharedHost = testHost('bench', []);
const manifests = {
  quickjs: { name: 'bench', version: '1.0.0', sandbox: 'quickjs', entry: 'plugin.js', hooks: { onRequest: {} }, needs: ['method', 'path', 'headers'] } as Manifest,
  isolate: { name: 'bench', version: '1.0.0', sandbox: 'isolate', entry: 'plugin.js', hooks: { onRequest: {} }, needs: ['method', 'path', 'headers'] } as Manifest,
};
const limits = { ...DEFAULT_LIMITS };
const spec = (kind: 'quickjs' | 'isolate'): LoadSpec => ({ manifest: manifests[kind], dir, entryPath, host: sharedHost, grants: [], limits });

const hosts: Record<'quickjs' | 'isolate', SandboxHost> = { quickjs, isolate };
const insts: Record<string, SandboxInstance> = {};
for (const kind of ['quickjs', 'isolate'] as const) insts[kind] = await hosts[kind].load(spec(kind));

const expected = JSON.stringify(trustedOnRequest(req));
for (const kind of ['quickjs', 'isolate']) {
  const got = JSON.stringify(insts[kind]!.hooks.onRequest!(req as never));
  if (got !== expected) throw new Error(`${kind} and trusted disagree: ${got} vs ${expected}`);
}

type Variant = { name: string; async?: boolean; run: () => unknown };
const variants: Variant[] = [
  { name: 'trusted JS function', run: () => trustedOnRequest(req) },
  // What any boundary pays at least: the request and the answer through JSON, in V8.
  { name: 'trusted + JSON trip', run: () => JSON.parse(JSON.stringify(trustedOnRequest(JSON.parse(JSON.stringify(req)) as RequestData))) },
  { name: 'quickjs hook', run: () => insts.quickjs!.hooks.onRequest!(req as never) },
  { name: 'isolate hook', run: () => insts.isolate!.hooks.onRequest!(req as never) },
  { name: 'quickjs async hook', async: true, run: () => insts.quickjs!.hooks.onRender!(req as never, async () => ({ status: 404 })) },
  { name: 'isolate async hook', async: true, run: () => insts.isolate!.hooks.onRender!(req as never, async () => ({ status: 404 })) },
];

async function measure(v: Variant): Promise<number> {
  const n = v.async ? Math.ceil(CALLS / 5) : CALLS;
  const t = performance.now();
  if (v.async) for (let i = 0; i < n; i++) await v.run();
  else for (let i = 0; i < n; i++) v.run();
  return ((performance.now() - t) * 1000) / n;
}

for (const v of variants) await measure(v); // warm up every path before timing any
const samples = new Map<string, number[]>(variants.map((v) => [v.name, []]));
for (let r = 0; r < ROUNDS; r++) for (const v of variants) samples.get(v.name)!.push(await measure(v));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const us = Object.fromEntries([...samples].map(([k, xs]) => [k, median(xs)]));

console.log(`${ROUNDS} rounds × ${CALLS} calls (async: ${Math.ceil(CALLS / 5)}), median µs per call (load average ${loadavg()[0]!.toFixed(1)} on this machine):`);
for (const v of variants) console.log(`  ${v.name.padEnd(24)} ${us[v.name]!.toFixed(2).padStart(8)} µs`);
const base = us['trusted JS function']!;
const trip = us['trusted + JSON trip']!;
for (const [kind, target] of [['quickjs', 15], ['isolate', 6]] as const) {
  const u = us[`${kind} hook`]!;
  console.log(`  ${kind} / trusted: ${(u / base).toFixed(0)}×, / trusted+JSON: ${(u / trip).toFixed(1)}×   ${kind} hook ${u.toFixed(2)} µs (target ≤ ${target} µs) ${u <= target ? 'OK' : 'OVER'}`);
}
for (const kind of ['quickjs', 'isolate']) {
  const s = insts[kind]!.stats();
  console.log(`  ${kind} instance: ${((s.memoryBytes ?? 0) / 1024).toFixed(0)} KiB in the engine after ${s.calls} calls`);
  await insts[kind]!.dispose();
}

// ---- QuickJS tenants -----------------------------------------------------
// A full collection before each RSS reading, so the delta is what the tenants hold.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as (() => void) | undefined;
gc?.();
const rss0 = process.memoryUsage().rss;
const heap0 = process.memoryUsage().heapUsed;
const wasm0 = process.memoryUsage().arrayBuffers;
const tenants: SandboxInstance[] = [];
const coldMs: number[] = [];
for (let i = 0; i < TENANTS; i++) {
  const t = performance.now();
  tenants.push(await quickjs.load(spec('quickjs')));
  coldMs.push(performance.now() - t);
}
gc?.();
const rss1 = process.memoryUsage().rss;
const heap1 = process.memoryUsage().heapUsed;
// Every tenant still answers.
for (const t of [tenants[0]!, tenants[TENANTS >> 1]!, tenants[TENANTS - 1]!]) {
  if (JSON.stringify(t.hooks.onRequest!(req as never)) !== expected) throw new Error('a tenant answered wrongly');
}
coldMs.sort((a, b) => a - b);
const deltaMb = (rss1 - rss0) / 1048576;
const perKb = ((rss1 - rss0) / TENANTS) / 1024;
const p50 = coldMs[Math.floor(coldMs.length / 2)]!;
const p99 = coldMs[Math.floor(coldMs.length * 0.99)]!;
console.log(`\n${TENANTS} QuickJS tenant instances:`);
console.log(`  RSS delta ${deltaMb.toFixed(0)} MiB, ${perKb.toFixed(1)} KiB per tenant; engine-reported ${((tenants[0]!.stats().memoryBytes ?? 0) / 1024).toFixed(0)} KiB per runtime`);
console.log(`  of which JS heap ${(((heap1 - heap0) / TENANTS) / 1024).toFixed(1)} KiB per tenant (host-side objects); WebAssembly memory ${(wasm0 / 1048576).toFixed(0)} MiB before`);
console.log(`  projected for 10,000: ${((perKb * 10000) / 1024).toFixed(0)} MiB (target ≤ 1024 MiB) ${perKb * 10000 <= 1024 * 1024 ? 'OK' : 'OVER'}`);
console.log(`  cold start p50 ${p50.toFixed(2)} ms, p99 ${p99.toFixed(2)} ms (target p50 ≤ 2 ms) ${p50 <= 2 ? 'OK' : 'OVER'}`);
const tDispose = performance.now();
for (const t of tenants) await t.dispose();
console.log(`  disposed all in ${(performance.now() - tDispose).toFixed(0)} ms`);

await rm(dir, { recursive: true, force: true });
