/**
 * Reverse proxy throughput: bext (proxy plugin) vs nginx (Debian's, one
 * worker, keep-alive to the upstream) vs Fastify + @fastify/reply-from, all
 * in front of the same node:http upstream serving the 2 KB page, measured
 * interleaved in one run. Two references are measured too: the upstream
 * alone (the ceiling), and node:http + undici with no framework and no
 * features (the floor any Node proxy pays).
 * Targets: bext ≥ 0.7× nginx and ≥ 1.0× reply-from.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compare, fmt, hasWrk, load, startServer } from './lib.js';

const seconds = Number(process.env.BENCH_SECONDS ?? 5);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

async function accepting(port: number, deadlineMs: number): Promise<void> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const ok = await new Promise<boolean>((r) => {
      const c = net.connect(port, '127.0.0.1');
      c.once('connect', () => (c.destroy(), r(true)));
      c.once('error', () => r(false));
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`nothing accepted connections on port ${port} within ${deadlineMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Debian's nginx with a generated config: one worker, keep-alive pool to the upstream. */
async function startNginx(upstreamPort: number): Promise<{ port: number; stop(): Promise<void> }> {
  const bin = ['/usr/sbin/nginx', 'nginx'].find((b) => spawnSync(b, ['-v']).status === 0);
  if (!bin) throw new Error('nginx is not installed (apt-get install -y nginx)');
  const dir = mkdtempSync(join(tmpdir(), 'bext-bench-nginx-'));
  for (const d of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(join(dir, d));
  const port = await freePort();
  const user = process.getuid?.() === 0 ? 'user root;\n' : '';
  writeFileSync(join(dir, 'nginx.conf'), `${user}worker_processes 1;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  upstream app { server 127.0.0.1:${upstreamPort}; keepalive 128; }
  server {
    listen 127.0.0.1:${port};
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
`);
  const proc: ChildProcess = spawn(bin, ['-c', join(dir, 'nginx.conf'), '-p', dir], { stdio: ['ignore', 'inherit', 'inherit'] });
  await accepting(port, 5000);
  return {
    port,
    async stop() {
      if (proc.exitCode === null) {
        proc.kill('SIGTERM');
        await once(proc, 'exit');
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const upstream = await startServer('bench/proxy-servers/upstream.ts');
const up = String(upstream.port);
const servers: Record<string, { port: number; stop(): Promise<void> }> = {};
try {
  servers.nginx = await startNginx(upstream.port);
  servers.replyFrom = await startServer('bench/proxy-servers/reply-from.ts', [up]);
  servers.nodeUndici = await startServer('bench/proxy-servers/node-undici.ts', [up]);
  servers.bext = await startServer('bench/proxy-servers/bext.ts', [up]);
  const targets: Record<string, string> = { upstream: `http://127.0.0.1:${up}/` };
  for (const [n, s] of Object.entries(servers)) targets[n] = `http://127.0.0.1:${s.port}/`;
  for (const url of Object.values(targets)) {
    const warm = await load(url, 1);
    if (warm.rps === 0) throw new Error(`${url} answered nothing during warm-up`);
  }
  const res = await compare(Object.entries(targets).map(([name, url]) => ({ name, run: () => load(url, seconds) })), rounds);
  const bext = res.get('bext')!;
  const label: Record<string, string> = {
    upstream: 'upstream alone (node:http)',
    nginx: 'nginx, 1 worker, keepalive 128',
    replyFrom: 'Fastify + @fastify/reply-from',
    nodeUndici: 'node:http + undici, no features',
    bext: 'bext proxy plugin',
  };
  console.log(`proxy benchmark (${hasWrk ? 'wrk -t1 -c50' : 'autocannon -c50'}, ${seconds}s × best of ${rounds} rounds, 2 KB page)`);
  console.log('| server | req/s | p99 ms | errors | bext ÷ this |');
  console.log('| --- | --- | --- | --- | --- |');
  for (const [name, l] of res) console.log(`| ${label[name]} | ${fmt(l.rps)} | ${l.p99ms.toFixed(2)} | ${l.errors} | ${name === 'bext' ? '—' : (bext.rps / l.rps).toFixed(3)} |`);
  const vsNginx = bext.rps / res.get('nginx')!.rps;
  const vsReply = bext.rps / res.get('replyFrom')!.rps;
  console.log(`bext ÷ nginx = ${vsNginx.toFixed(3)} (target ≥ 0.7) · bext ÷ reply-from = ${vsReply.toFixed(3)} (target ≥ 1.0)`);
} finally {
  for (const s of Object.values(servers)) await s.stop();
  await upstream.stop();
}
