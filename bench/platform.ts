/**
 * Multi-app hosting cost: the same 2 KB page from bext with no apps, with
 * 500 apps chosen by hostname (the request hits one in the middle), and
 * with group limits (in-flight cap and rate bucket) on every app.
 * Interleaved in one run; ratio to bext without apps. Aim: ≥ 0.95 each.
 */
import { compare, fmt, hasWrk, load, startServer } from './lib.js';

const seconds = Number(process.env.BENCH_SECONDS ?? 5);
const servers = {
  single: { s: await startServer('bench/servers/bext-apps.ts', ['0']), host: 'localhost' },
  apps500: { s: await startServer('bench/servers/bext-apps.ts', ['500']), host: 'app250.test' },
  limits: { s: await startServer('bench/servers/bext-apps.ts', ['500', 'limits']), host: 'app250.test' },
};
try {
  for (const { s, host } of Object.values(servers)) await load(`http://127.0.0.1:${s.port}/`, 1, 50, { host });
  const res = await compare(
    Object.entries(servers).map(([name, { s, host }]) => ({ name, run: () => load(`http://127.0.0.1:${s.port}/`, seconds, 50, { host }) })),
    Number(process.env.BENCH_ROUNDS ?? 3),
  );
  const base = res.get('single')!;
  console.log(`platform benchmark (${hasWrk ? 'wrk -t1 -c50' : 'autocannon -c50'}, ${seconds}s × best of rounds, 2 KB HTML)`);
  console.log('| server | req/s | p99 ms | errors | ratio to no apps | aim |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  const label: Record<string, string> = { single: 'bext, no apps', apps500: 'bext, 500 apps by hostname', limits: 'bext, 500 apps with limits' };
  for (const [name, l] of res) console.log(`| ${label[name]} | ${fmt(l.rps)} | ${l.p99ms.toFixed(2)} | ${l.errors} | ${(l.rps / base.rps).toFixed(3)} | ${name === 'single' ? '—' : '≥ 0.95'} |`);
} finally {
  for (const { s } of Object.values(servers)) await s.stop();
}
