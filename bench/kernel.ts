/**
 * Kernel overhead: the same 2 KB page from bare Fastify and from bext (no
 * hook plugins; 9 no-op trusted onRequest plugins), interleaved in one run.
 * Targets: bext ≥ 0.95× Fastify; with 9 no-ops ≥ 0.90×. Server CPU per
 * request is printed beside req/s: it is the steadier figure on a busy machine.
 */
import { compare, cpuCol, cpuRatio, fmt, hasWrk, load, loadCpu, startServer } from './lib.js';

const seconds = Number(process.env.BENCH_SECONDS ?? 5);
const servers = {
  fastify: await startServer('bench/servers/fastify-page.ts'),
  bext: await startServer('bench/servers/bext-page.ts', ['0']),
  bext9: await startServer('bench/servers/bext-page.ts', ['9']),
};
try {
  for (const s of Object.values(servers)) await load(`http://127.0.0.1:${s.port}/`, 1);
  const res = await compare(Object.entries(servers).map(([name, s]) => ({ name, run: () => loadCpu(s.proc.pid!, `http://127.0.0.1:${s.port}/`, seconds) })), Number(process.env.BENCH_ROUNDS ?? 3));
  const base = res.get('fastify')!;
  console.log(`kernel benchmark (${hasWrk ? 'wrk -t1 -c50' : 'autocannon -c50'}, ${seconds}s × best of rounds, 2 KB HTML)`);
  console.log('| server | req/s | p99 ms | ratio to Fastify | server CPU µs/req | CPU ratio (Fastify ÷ this) | target |');
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  const target: Record<string, string> = { fastify: '—', bext: '≥ 0.95', bext9: '≥ 0.90' };
  const label: Record<string, string> = { fastify: 'bare Fastify 5', bext: 'bext, no hook plugins', bext9: 'bext, 9 no-op onRequest plugins' };
  for (const [name, l] of res) console.log(`| ${label[name]} | ${fmt(l.rps)} | ${l.p99ms.toFixed(2)} | ${(l.rps / base.rps).toFixed(3)} | ${cpuCol(l)} | ${cpuRatio(base, l)} | ${target[name]} |`);
} finally {
  for (const s of Object.values(servers)) await s.stop();
}
