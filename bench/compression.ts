/**
 * Compression throughput per algorithm and level: a 2 MiB HTML-like body
 * compressed by the compression plugin (streamed through the kernel to a
 * client on one keep-alive connection, one request at a time) against the
 * same library called directly on the same bytes in this process (node:zlib
 * one-shot for gzip and brotli, zstd-napi for zstd), interleaved, best of
 * the rounds. Throughput counts input bytes. Target ≥ 0.95×.
 *
 * Two measures: wall-clock MB/s, and MB per CPU-second of the process doing
 * the work (the server's, from /proc, threadpool included; this process's
 * for the direct calls). The CPU measure is the ratio reported, since on a
 * shared, loaded machine wall time mostly measures the scheduler; wall
 * figures are printed beside it.
 *
 * The script is also its own server: `tsx bench/compression.ts serve <br> <zstd> <gzip>`.
 */
import { existsSync, readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { Pool } from 'undici';
import { compress as zstdCompress } from 'zstd-napi';
import { startServer } from './lib.js';

const SIZE = 2 << 20;

/** Deterministic text with the statistics of a page: tags, words, numbers; not a repeated block. */
function body(): Buffer {
  const words = ['item', 'price', 'description', 'the', 'quick', 'café', 'naïve', 'widget', 'order', 'account', 'shipping', 'return', 'review', 'stars', 'great', 'value', 'colour', 'size', 'medium', 'large'];
  let seed = 42;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  const parts: string[] = [];
  let len = 0;
  for (let i = 0; len < SIZE; i++) {
    const n = 5 + Math.floor(rnd() * 12);
    let s = `<li class="row r${i % 17}" data-id="${Math.floor(rnd() * 1e6)}"><a href="/p/${i}">`;
    for (let w = 0; w < n; w++) s += `${words[Math.floor(rnd() * words.length)]} `;
    s += `</a><span>${(rnd() * 1000).toFixed(2)}</span></li>\n`;
    parts.push(s);
    len += Buffer.byteLength(s);
  }
  return Buffer.from(parts.join('')).subarray(0, SIZE);
}

async function serve(levels: { br: number; zstd: number; gzip: number }): Promise<void> {
  const { mkdirSync, mkdtempSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join, resolve } = await import('node:path');
  const { parseConfig } = await import('../kernel/config.js');
  const { Logger } = await import('../kernel/log.js');
  const { Kernel } = await import('../kernel/server.js');
  const root = resolve(import.meta.dirname, '..');
  const dir = mkdtempSync(join(tmpdir(), 'bext-bench-compression-'));
  mkdirSync(join(dir, 'leaf'));
  writeFileSync(join(dir, 'leaf', 'bext-plugin.json'), JSON.stringify({ name: 'bench-body', version: '1.0.0', sandbox: 'trusted', entry: 'index.ts', hooks: { onRender: { priority: 100 } } }));
  writeFileSync(join(dir, 'body.html'), body());
  writeFileSync(join(dir, 'leaf', 'index.ts'), `import { readFileSync } from 'node:fs';\nconst b = readFileSync(${JSON.stringify(join(dir, 'body.html'))});\nexport default () => ({ onRender: () => ({ status: 200, headers: { 'content-type': 'text/html; charset=utf-8' }, body: b }) });\n`);
  const config = parseConfig({ server: { port: 0, host: '127.0.0.1' }, admin: { port: null }, plugins: { compression: { levels } } });
  const k = await Kernel.create({ config, plugins: [{ source: `file:${join(root, 'plugins/compression')}`, grants: ['metrics'] }, { source: `file:${join(dir, 'leaf')}` }], logger: new Logger('error') });
  const { port } = await k.listen();
  process.stdout.write(`LISTENING ${port}\n`);
  process.on('SIGTERM', () => void k.close(1000).then(() => process.exit(0)));
}

/** CPU seconds a process has used (user + system, all threads), from /proc; null where there is no /proc. */
function cpuOf(pid: number): number | null {
  const f = `/proc/${pid}/stat`;
  if (!existsSync(f)) return null;
  const fields = readFileSync(f, 'utf8').split(') ')[1]!.split(' ');
  // utime and stime are fields 14 and 15 of stat(5), in clock ticks (100 per second on Linux).
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

interface Rate {
  rate: number;
  cpuRate: number | null;
  outBytes: number;
}

/** Input bytes per second through the server for one coding. */
async function viaBext(pool: Pool, pid: number, coding: string, seconds: number): Promise<Rate> {
  const end = performance.now() + seconds * 1000;
  const c0 = cpuOf(pid);
  const t0 = performance.now();
  let n = 0;
  let out = 0;
  while (performance.now() < end) {
    const r = await pool.request({ path: '/', method: 'GET', headers: { 'accept-encoding': coding } });
    if (r.headers['content-encoding'] !== coding) throw new Error(`expected ${coding}, got ${String(r.headers['content-encoding'])}`);
    for await (const c of r.body) out += (c as Buffer).length;
    n++;
  }
  const c1 = cpuOf(pid);
  return { rate: (n * SIZE) / ((performance.now() - t0) / 1000), cpuRate: c0 === null || c1 === null ? null : (n * SIZE) / Math.max(0.01, c1 - c0), outBytes: out / n };
}

const gzip = promisify(zlib.gzip);
const brotli = promisify(zlib.brotliCompress);

async function direct(buf: Buffer, coding: string, level: number, seconds: number): Promise<Rate> {
  const once = coding === 'gzip'
    ? () => gzip(buf, { level })
    : coding === 'br'
      ? () => brotli(buf, { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: level, [zlib.constants.BROTLI_PARAM_MODE]: zlib.constants.BROTLI_MODE_TEXT, [zlib.constants.BROTLI_PARAM_SIZE_HINT]: buf.length } })
      : async () => zstdCompress(buf, { compressionLevel: level });
  const end = performance.now() + seconds * 1000;
  const c0 = cpuOf(process.pid);
  const t0 = performance.now();
  let n = 0;
  let out = 0;
  while (performance.now() < end) {
    out += (await once()).length;
    n++;
  }
  const c1 = cpuOf(process.pid);
  return { rate: (n * buf.length) / ((performance.now() - t0) / 1000), cpuRate: c0 === null || c1 === null ? null : (n * buf.length) / Math.max(0.01, c1 - c0), outBytes: out / n };
}

async function main(): Promise<void> {
  const seconds = Number(process.env.BENCH_SECONDS ?? 3);
  const rounds = Number(process.env.BENCH_ROUNDS ?? 2);
  const buf = body();
  const sets = [
    { br: 1, zstd: 1, gzip: 1 },
    { br: 4, zstd: 3, gzip: 6 },
    { br: 9, zstd: 9, gzip: 9 },
  ];
  console.log(`compression throughput (2 MiB HTML-like body, one request at a time; ${seconds}s × best of ${rounds} rounds; MB of input per CPU-second, and per wall-clock second)`);
  console.log('| coding | level | bext plugin MB/CPU-s | library directly MB/CPU-s | ratio | wall MB/s bext / direct | compressed bytes | target |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const levels of sets) {
    const srv = await startServer('bench/compression.ts', ['serve', String(levels.br), String(levels.zstd), String(levels.gzip)]);
    const pool = new Pool(`http://127.0.0.1:${srv.port}`, { connections: 1 });
    const pid = srv.proc.pid!;
    try {
      for (const coding of ['gzip', 'br', 'zstd'] as const) {
        const level = levels[coding];
        await viaBext(pool, pid, coding, 0.5);
        const best = { bext: 0, lib: 0, bextCpu: 0, libCpu: 0, size: 0, libSize: 0 };
        for (let r = 0; r < rounds; r++) {
          const a = await viaBext(pool, pid, coding, seconds);
          const b = await direct(buf, coding, level, seconds);
          best.bext = Math.max(best.bext, a.rate);
          best.lib = Math.max(best.lib, b.rate);
          best.bextCpu = Math.max(best.bextCpu, a.cpuRate ?? 0);
          best.libCpu = Math.max(best.libCpu, b.cpuRate ?? 0);
          best.size = a.outBytes;
          best.libSize = b.outBytes;
        }
        const mb = (x: number) => (x / 1e6).toFixed(1);
        const cpu = best.libCpu > 0;
        const ratio = cpu ? best.bextCpu / best.libCpu : best.bext / best.lib;
        console.log(`| ${coding} | ${level} | ${cpu ? mb(best.bextCpu) : '—'} | ${cpu ? mb(best.libCpu) : '—'} | ${ratio.toFixed(3)}${cpu ? '' : ' (wall)'} | ${mb(best.bext)} / ${mb(best.lib)} | ${Math.round(best.size)} (direct ${Math.round(best.libSize)}) | ≥ 0.95 |`);
      }
    } finally {
      await pool.close();
      await srv.stop();
    }
  }
}

if (process.argv[2] === 'serve') await serve({ br: Number(process.argv[3]), zstd: Number(process.argv[4]), gzip: Number(process.argv[5]) });
else await main();
