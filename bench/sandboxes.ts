/**
 * Sandboxes: per-call overhead of each kind against the trusted baseline
 * (bench/sandboxes-wasm.ts, sandboxes-js.ts, sandboxes-process.ts), then end
 * to end: the 2 KB page through bext with a fuel-metered WASM rule plugin on
 * the request path against bext without it and bare Fastify, in one run.
 * Target: the WASM rule costs ≤ 15% of bare throughput.
 */
import { spawnSync } from 'node:child_process';
import { compare, fmt, hasWrk, load, startServer } from './lib.js';

for (const part of ['sandboxes-wasm', 'sandboxes-js', 'sandboxes-process']) {
  if (process.env.BENCH_ONLY_E2E) break;
  console.log(`\n## ${part}`);
  spawnSync(process.execPath, ['--import', 'tsx', `bench/${part}.ts`], { stdio: 'inherit' });
}

const seconds = Number(process.env.BENCH_SECONDS ?? 5);
const servers = {
  fastify: await startServer('bench/servers/fastify-page.ts'),
  bext: await startServer('bench/servers/bext-page.ts', ['0']),
  wasmRule: await startServer('bench/servers/bext-rule.ts'),
};
try {
  for (const s of Object.values(servers)) await load(`http://127.0.0.1:${s.port}/`, 1);
  const res = await compare(Object.entries(servers).map(([name, s]) => ({ name, run: () => load(`http://127.0.0.1:${s.port}/`, seconds, 50, { 'user-agent': 'Mozilla/5.0 (bench)' }) })), Number(process.env.BENCH_ROUNDS ?? 3));
  const f = res.get('fastify')!;
  const b = res.get('bext')!;
  const w = res.get('wasmRule')!;
  console.log(`\n## end to end (${hasWrk ? 'wrk -t1 -c50' : 'autocannon -c50'}, ${seconds}s, best of rounds, 2 KB HTML)`);
  console.log('| server | req/s | p99 ms | ratio to bext | ratio to Fastify |');
  console.log('| --- | --- | --- | --- | --- |');
  console.log(`| bare Fastify 5 | ${fmt(f.rps)} | ${f.p99ms.toFixed(2)} | ${(f.rps / b.rps).toFixed(3)} | 1.000 |`);
  console.log(`| bext, no plugins on the request path | ${fmt(b.rps)} | ${b.p99ms.toFixed(2)} | 1.000 | ${(b.rps / f.rps).toFixed(3)} |`);
  console.log(`| bext + WASM rule (fuel-metered) | ${fmt(w.rps)} | ${w.p99ms.toFixed(2)} | ${(w.rps / b.rps).toFixed(3)} | ${(w.rps / f.rps).toFixed(3)} |`);
  console.log(`WASM rule cost: ${((1 - w.rps / b.rps) * 100).toFixed(1)}% of bext's throughput, ${((1 - w.rps / f.rps) * 100).toFixed(1)}% of bare Fastify's (target ≤ 15%)`);
} finally {
  for (const s of Object.values(servers)) await s.stop();
}
