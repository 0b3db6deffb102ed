/**
 * WebSocket (and any HTTP/1.1 Upgrade) tunnels: the handshake goes to a
 * member with rewritten headers, and from then on bytes flow both ways
 * untouched. Either side closing or failing destroys the other at once, so
 * no socket outlives its partner.
 */
import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Member } from './upstream.js';

/** A live tunnel, tracked so the plugin can close them all on dispose. */
export interface Tunnel {
  client: Duplex;
  upstream: net.Socket;
}

/** Opens a TCP connection to the member, bounded by the connect timeout. */
export function connectTo(m: Member, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: m.url.hostname.replace(/^\[|\]$/g, ''), port: Number(m.url.port || 80) });
    const timer = setTimeout(() => {
      s.destroy();
      reject(Object.assign(new Error(`connect to ${m.label} timed out after ${timeoutMs} ms`), { code: 'UND_ERR_CONNECT_TIMEOUT' }));
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(timer);
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

/** The request head of the handshake, as sent upstream. */
export function handshake(method: string, target: string, headers: Record<string, string | string[]>): string {
  let out = `${method} ${target} HTTP/1.1\r\n`;
  for (const k in headers) {
    const v = headers[k]!;
    if (typeof v === 'string') out += `${k}: ${v}\r\n`;
    else for (const x of v) out += `${k}: ${x}\r\n`;
  }
  return `${out}\r\n`;
}

/**
 * Joins the client and upstream sockets. `onStatus` gets the upstream's
 * handshake status (101 when it accepted); `onClose` runs once, when both
 * sockets are gone.
 */
export function join(t: Tunnel, head: string, early: Buffer, idleMs: number, onStatus: (status: number) => void, onClose: () => void): void {
  const { client, upstream } = t;
  let closed = 0;
  const closeBoth = () => {
    client.destroy();
    upstream.destroy();
  };
  const gone = () => {
    closeBoth();
    if (++closed === 2) onClose();
  };
  client.once('close', gone);
  upstream.once('close', gone);
  client.on('error', closeBoth);
  upstream.on('error', closeBoth);
  upstream.setNoDelay(true);
  (client as net.Socket).setNoDelay?.(true);
  if (idleMs > 0) {
    // Silence in both directions, not just one, is what marks a tunnel dead.
    let last = Date.now();
    const touch = () => (last = Date.now());
    client.on('data', touch);
    upstream.on('data', touch);
    const timer = setInterval(() => {
      if (Date.now() - last >= idleMs) closeBoth();
    }, Math.max(50, Math.floor(idleMs / 4)));
    timer.unref();
    upstream.once('close', () => clearInterval(timer));
  }
  upstream.once('data', (chunk: Buffer) => {
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(chunk.toString('latin1', 0, Math.min(chunk.length, 32)));
    onStatus(m ? Number(m[1]) : 0);
  });
  upstream.write(head);
  if (early.length) upstream.write(early);
  upstream.pipe(client);
  client.pipe(upstream);
}
