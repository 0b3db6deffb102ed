/**
 * The full default guard stack (cors, waf, ratelimit, auth with a JWT on
 * every request, tenant) against bare Fastify serving the same 2 KB page, in
 * one run. Target ≥ 0.80×. Server CPU per request is printed beside req/s:
 * it is the steadier figure on a busy machine.
 */
import { SignJWT } from 'jose';
import { compare, cpuCol, cpuRatio, fmt, hasWrk, load, loadCpu, startServer } from './lib.js';

const SECRET = 'bench-secret-of-at-least-32-bytes-long!!';
const token = await new SignJWT({ sub: 'bench-user' }).setProtectedHeader({ alg: 'HS256' }).setIssuedAt().setExpirationTime('2h').sign(new TextEncoder().encode(SECRET));
const headers = { authorization: `Bearer ${token}`, origin: 'https://app.example.com', 'user-agent': 'Mozilla/5.0 (X11; Linux x86_64) bench', accept: 'text/html' };
const seconds = Number(process.env.BENCH_SECONDS ?? 5);
const servers = {
  fastify: await startServer('bench/servers/fastify-page.ts'),
  bext: await startServer('bench/servers/bext-page.ts', ['0']),
  guards: await startServer('bench/servers/bext-guards.ts'),
};
try {
  const probe = await fetch(`http://127.0.0.1:${servers.guards.port}/`, { headers });
  if (probe.status !== 200) throw new Error(`guard stack answered ${probe.status}: ${await probe.text()}`);
  for (const s of Object.values(servers)) await load(`http://127.0.0.1:${s.port}/`, 1, 50, headers);
  const res = await compare(Object.entries(servers).map(([name, s]) => ({ name, run: () => loadCpu(s.proc.pid!, `http://127.0.0.1:${s.port}/`, seconds, 50, headers) })), Number(process.env.BENCH_ROUNDS ?? 3));
  const f = res.get('fastify')!;
  console.log(`guard stack benchmark (${hasWrk ? 'wrk -t1 -c50' : 'autocannon -c50'}, ${seconds}s, best of rounds, 2 KB HTML, JWT on every request)`);
  console.log('| server | req/s | p99 ms | ratio to Fastify | server CPU µs/req | CPU ratio (Fastify ÷ this) | errors |');
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  const label: Record<string, string> = { fastify: 'bare Fastify 5', bext: 'bext, no guards', guards: 'bext + cors, waf, ratelimit, auth, tenant' };
  for (const [name, l] of res) console.log(`| ${label[name]} | ${fmt(l.rps)} | ${l.p99ms.toFixed(2)} | ${(l.rps / f.rps).toFixed(3)} | ${cpuCol(l)} | ${cpuRatio(f, l)} | ${l.errors} |`);
  console.log('target: guard stack ≥ 0.80× bare Fastify');
} finally {
  for (const s of Object.values(servers)) await s.stop();
}
