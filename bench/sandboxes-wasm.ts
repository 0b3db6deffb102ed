/**
 * WASM sandbox: µs per onRequest call (method, path, 6 headers) for an
 * AssemblyScript hook built with the PDK, against the same hook as a
 * trusted JS function, and the cost of fuel metering (the guest's export
 * called directly, instrumented and original, with the same input), all
 * interleaved in one run. Targets: ≤ 15 µs per metered call; metering ≤ 1.3× unmetered.
 *
 * `npx tsx bench/sandboxes-wasm.ts` (BENCH_ROUNDS, BENCH_CALLS to change the size).
 */
import { SAMPLE_REQUEST as req, trustedOnRequest } from './lib.js';
import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DEFAULT_LIMITS, makeProjector, type RequestData } from '../plugin-api/index.js';
import { FUEL_EXPORT, instrument, withLimits } from '../sandboxes/wasm/fuel.js';
import wasm, { type WasmStats } from '../sandboxes/wasm/index.js';
import { recordingHost } from '../sandboxes/wasm/test-guests.js';
import { buildWasmPlugin } from '../sdk/build.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const CALLS = Number(process.env.BENCH_CALLS ?? 20000);

const guest = `
import { readRequest, respond, proceed } from "@bext/pdk";
export function onRequest(): i32 {
  const req = readRequest();
  if (req.method == "POST" && req.header("content-type") === null) return respond(415).done();
  if (req.path.startsWith("/admin") && req.header("authorization") === null) return respond(401).done();
  const ua = req.header("user-agent");
  return proceed().setHeader("x-client", ua !== null ? ua.slice(0, 16) : "").done();
}
`;


const dir = await mkdtemp(path.join(tmpdir(), 'bext-bench-wasm-'));
await mkdir(path.join(dir, 'assembly'));
await writeFile(path.join(dir, 'assembly', 'index.ts'), guest);
const tBuild = performance.now();
const { wasmPath, bytes } = await buildWasmPlugin(dir);
console.log(`built the guest with the PDK: ${bytes} bytes in ${((performance.now() - tBuild) / 1000).toFixed(1)} s`);

const needs = ['method', 'path', 'headers'] as const;
const manifest = { name: 'bench', version: '1.0.0', sandbox: 'wasm' as const, entry: 'plugin.wasm', hooks: { onRequest: {} }, needs: [...needs] };
const tLoad = performance.now();
const inst = await wasm.load({ manifest, dir, entryPath: wasmPath, host: recordingHost('bench').host, grants: [], limits: { ...DEFAULT_LIMITS } });
const loadMs = performance.now() - tLoad;
const sandboxHook = inst.hooks.onRequest as unknown as (r: RequestData) => Promise<unknown>;

// The same module called directly, metered and not: isolates what instrumentation costs.
const original = new Uint8Array(await readFile(wasmPath));
const tInstr = performance.now();
const instrumented = instrument(original);
const instrumentMs = performance.now() - tInstr;
const inputBytes = new TextEncoder().encode(JSON.stringify(makeProjector([...needs]).request(req)));

async function raw(bytes: Uint8Array) {
  let memory: WebAssembly.Memory;
  const decoder = new TextDecoder();
  let output = '';
  const imports = {
    env: { abort: () => { throw new Error('abort'); }, seed: () => Date.now() },
    'extism:host/user': {
      bext_input_length: () => inputBytes.length,
      bext_input_read: (ptr: number) => new Uint8Array(memory.buffer, ptr, inputBytes.length).set(inputBytes),
      bext_output: (ptr: number, len: number) => { output = decoder.decode(new Uint8Array(memory.buffer, ptr, len)); },
      bext_error: () => { throw new Error('guest error'); },
    },
  };
  const { instance } = await WebAssembly.instantiate(bytes as Uint8Array<ArrayBuffer>, imports);
  memory = (instance.exports.memory ?? instance.exports.__bext_memory) as WebAssembly.Memory;
  const fn = instance.exports.onRequest as () => number;
  const fuel = instance.exports[FUEL_EXPORT] as WebAssembly.Global | undefined;
  return () => {
    if (fuel) fuel.value = DEFAULT_LIMITS.fuel;
    fn();
    return output;
  };
}
const rawPlain = await raw(original);
const rawMetered = await raw(withLimits(instrumented, { fuel: DEFAULT_LIMITS.fuel, maxPages: DEFAULT_LIMITS.memoryMb * 16 }));
if (rawPlain() !== rawMetered()) throw new Error('metered and plain modules disagree');

const expected = JSON.stringify(trustedOnRequest(req));
const check = JSON.stringify(await sandboxHook(req));
if (check !== expected) throw new Error(`wasm and trusted disagree: ${check} vs ${expected}`);

type Variant = { name: string; run: () => Promise<unknown> | unknown };
const variants: Variant[] = [
  { name: 'trusted JS function', run: () => trustedOnRequest(req) },
  { name: 'wasm sandbox hook (metered)', run: () => sandboxHook(req) },
  { name: 'guest export, instrumented', run: rawMetered },
  { name: 'guest export, original', run: rawPlain },
];

async function measure(v: Variant): Promise<number> {
  const t = performance.now();
  for (let i = 0; i < CALLS; i++) await v.run();
  return ((performance.now() - t) * 1000) / CALLS;
}

for (const v of variants) await measure(v); // warm up every path before timing any
const samples = new Map<string, number[]>(variants.map((v) => [v.name, []]));
for (let r = 0; r < ROUNDS; r++) for (const v of variants) samples.get(v.name)!.push(await measure(v));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const us = Object.fromEntries([...samples].map(([k, xs]) => [k, median(xs)]));

const stats = inst.stats() as WasmStats;
console.log(`\n${ROUNDS} rounds × ${CALLS} calls, median µs per call (awaited):`);
for (const v of variants) console.log(`  ${v.name.padEnd(32)} ${us[v.name]!.toFixed(2).padStart(7)} µs`);
const sandboxUs = us['wasm sandbox hook (metered)']!;
const meterRatio = us['guest export, instrumented']! / us['guest export, original']!;
console.log(`\n  wasm / trusted:                  ${(sandboxUs / us['trusted JS function']!).toFixed(1)}×`);
console.log(`  metered / unmetered (guest):     ${meterRatio.toFixed(2)}×   (target ≤ 1.3×)`);
console.log(`  wasm sandbox hook:               ${sandboxUs.toFixed(2)} µs   (target ≤ 15 µs) ${sandboxUs <= 15 ? 'OK' : 'OVER'}`);
console.log(`  fuel per call: ${stats.fuelLast} units; instance memory: ${(stats.memoryBytes / 1024).toFixed(0)} KiB; load ${loadMs.toFixed(1)} ms; instrument ${instrumentMs.toFixed(2)} ms (${original.length} → ${instrumented.bytes.length} bytes, ${instrumented.meterPoints} meter points)`);

await inst.dispose();
await rm(dir, { recursive: true, force: true });
