/**
 * Load process for bench/realtime.ts: opens N SSE or WebSocket subscribers,
 * prints `CONNECTED <n>` once all are subscribed, then counts deliveries and
 * publish→receive latency (the publisher puts its clock reading in `"t"`)
 * until it reads `STOP` on stdin, and prints one JSON line of results.
 *
 * usage: realtime-load.ts <sse|ws> <url> <connections>
 */
import net from 'node:net';
import { createInterface } from 'node:readline';
import WebSocket from 'ws';

const [transport, url, countArg] = process.argv.slice(2);
const total = Number(countArg);
const target = new URL(url!);
const now = () => performance.timeOrigin + performance.now();

let connected = 0;
let failed = 0;
let closed = 0;
let deliveries = 0;
let lat = new Float64Array(1 << 20);
let nlat = 0;
let measuring = false;

function record(v: number): void {
  deliveries++;
  if (!measuring) return;
  if (nlat === lat.length) {
    const next = new Float64Array(lat.length * 2);
    next.set(lat);
    lat = next;
  }
  lat[nlat++] = v;
}

const T = Buffer.from('"t":');

/** Records every `"t":<number>` in the bytes; returns a tail that may hold an unfinished one. */
function scan(b: Buffer): Buffer | null {
  let i = 0;
  const at = now();
  for (;;) {
    const k = b.indexOf(T, i);
    if (k === -1) return b.length - i > 8 ? b.subarray(b.length - 8) : b.subarray(i);
    let j = k + 4;
    let v = 0;
    let scale = 0;
    for (; j < b.length; j++) {
      const c = b[j]!;
      if (c === 46) scale = 1;
      else if (c >= 48 && c <= 57) {
        v = v * 10 + (c - 48);
        if (scale) scale *= 10;
      } else break;
    }
    if (j === b.length) return b.subarray(k);
    record(at - (scale ? v / scale : v));
    i = j;
  }
}

function sse(): Promise<void> {
  return new Promise((resolve) => {
    let subscribed = false;
    let head = '';
    let tail: Buffer | null = null;
    const sock = net.connect(Number(target.port), target.hostname, () => {
      sock.write(`GET ${target.pathname}${target.search} HTTP/1.1\r\nhost: ${target.host}\r\naccept: text/event-stream\r\n\r\n`);
    });
    sock.on('data', (d: Buffer) => {
      if (!subscribed) {
        head += d.toString('latin1');
        if (!head.includes('event: subscribed')) return;
        if (!head.startsWith('HTTP/1.1 200')) {
          failed++;
          sock.destroy();
          return resolve();
        }
        subscribed = true;
        connected++;
        head = '';
        return resolve();
      }
      tail = scan(tail && tail.length ? Buffer.concat([tail, d]) : d);
    });
    sock.on('error', () => {
      if (!subscribed) {
        failed++;
        resolve();
      }
    });
    sock.on('close', () => {
      if (subscribed) closed++;
    });
  });
}

function ws(): Promise<void> {
  return new Promise((resolve) => {
    let subscribed = false;
    const c = new WebSocket(url!, { perMessageDeflate: false });
    c.on('message', (m: Buffer) => {
      if (!subscribed) {
        if (!m.toString('latin1').includes('"subscribed"')) return;
        subscribed = true;
        connected++;
        return resolve();
      }
      scan(m);
    });
    c.on('error', () => {
      if (!subscribed) {
        failed++;
        resolve();
      }
    });
    c.on('close', () => {
      if (subscribed) closed++;
    });
  });
}

const open = transport === 'ws' ? ws : sse;
const parallel = 200;
let started = 0;
await Promise.all(
  Array.from({ length: parallel }, async () => {
    while (started < total) {
      started++;
      await open();
    }
  }),
);
process.stdout.write(`CONNECTED ${connected} ${failed}\n`);

const rl = createInterface({ input: process.stdin });
rl.on('line', (l) => {
  if (l === 'MEASURE') {
    measuring = true;
    deliveries = 0;
    nlat = 0;
  } else if (l === 'STOP') {
    measuring = false;
    const v = lat.subarray(0, nlat).sort();
    const q = (p: number) => (nlat ? v[Math.min(nlat - 1, Math.floor(p * nlat))]! : NaN);
    process.stdout.write(`${JSON.stringify({ connected, failed, closed, deliveries, p50: q(0.5), p99: q(0.99), max: nlat ? v[nlat - 1] : NaN })}\n`);
    process.exit(0);
  }
});
