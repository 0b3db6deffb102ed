/**
 * The HTTPS listeners. One `tls.Server` per port does the handshake (SNI,
 * ALPN, client certificates, OCSP); then each connection goes where its
 * protocol is spoken:
 *
 * - `http/1.1` → a never-listening `net.Server` handed to `kernel.serve()`,
 *   so it runs the onConnect chain and the kernel's own HTTP/1.1 server
 *   (keep-alive, timeouts, upgrades for WebSocket, drain on shutdown);
 * - `h2` → a never-listening `http2` server whose requests go to
 *   `kernel.handle()`.
 *
 * The optional h2c listener tells HTTP/2 prior knowledge from HTTP/1.1 by the
 * connection preface and routes the same way.
 */
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import type { KernelServices } from '../../plugin-api/index.js';

export interface ListenerOptions {
  kernel: KernelServices;
  /** Base options of every server (ciphers, versions, client-certificate request, SNI callback...). */
  tlsOptions: tls.TlsOptions;
  http2: { idleTimeoutMs: number; maxConcurrentStreams: number };
  onOcsp: ((cert: Buffer, issuer: Buffer | null, cb: (err: Error | null, resp?: Buffer) => void) => void) | null;
  onHandshake(socket: tls.TLSSocket): void;
  onTlsError(err: Error & { code?: string }): void;
  log(level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>): void;
}

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n');

export class Listeners {
  readonly servers: { server: tls.Server; http2: boolean; port: number; host: string }[] = [];
  h2cServer: net.Server | null = null;
  #o: ListenerOptions;
  #bridge = new net.Server();
  #h2: http2.Http2Server;
  #sessions = new Set<http2.ServerHttp2Session>();
  #ready = false;
  #readyWaiters: (() => void)[] = [];
  #readyTimer: NodeJS.Timeout | null = null;
  #closing = false;
  #default: tls.SecureContextOptions = {};
  #ticketKeys: Buffer | null = null;
  /** Called once when the kernel starts its shutdown (it closes the bridge with its listeners). */
  onShutdown: (() => void) | null = null;

  constructor(o: ListenerOptions) {
    this.#o = o;
    this.#h2 = http2.createServer({ settings: { maxConcurrentStreams: o.http2.maxConcurrentStreams } }, (req, res) => o.kernel.handle(req, res));
    if (o.http2.idleTimeoutMs > 0) this.#h2.setTimeout(o.http2.idleTimeoutMs);
    this.#h2.on('session', (s: http2.ServerHttp2Session) => {
      this.#sessions.add(s);
      s.once('close', () => this.#sessions.delete(s));
      s.on('error', () => undefined);
      if (this.#closing) s.close();
    });
    this.#h2.on('sessionError', () => undefined);
    this.#bridge.once('close', () => {
      this.#closing = true;
      for (const { server } of this.servers) server.close();
      this.h2cServer?.close();
      // GOAWAY: streams in flight finish, new ones go elsewhere.
      for (const s of this.#sessions) s.close();
      this.onShutdown?.();
    });
  }

  /** Registers the bridge with the kernel and waits (in the background) until it serves. */
  async init(): Promise<void> {
    // The bridge never listens, so it needs no port; the kernel only attaches its connection handler.
    await this.#o.kernel.serve(this.#bridge, {} as { port: number });
    const check = () => {
      if (this.#o.kernel.ready()) {
        this.#ready = true;
        for (const w of this.#readyWaiters.splice(0)) w();
      } else if (!this.#closing) {
        this.#readyTimer = setTimeout(check, 10);
        this.#readyTimer.unref();
      }
    };
    check();
  }

  /** Resolves once the kernel has compiled its chains and listens (connections may arrive earlier). */
  whenReady(): Promise<void> {
    return this.#ready ? Promise.resolve() : new Promise((r) => this.#readyWaiters.push(r));
  }

  async listenTls(port: number, host: string, h2: boolean): Promise<number> {
    const server = tls.createServer({ ...this.#o.tlsOptions, ...this.#default, ...(this.#ticketKeys ? { ticketKeys: this.#ticketKeys } : {}), ALPNProtocols: h2 ? ['h2', 'http/1.1'] : ['http/1.1'] });
    server.on('secureConnection', (socket: tls.TLSSocket) => this.#route(socket));
    server.on('tlsClientError', (err: Error & { code?: string }, socket: tls.TLSSocket) => {
      this.#o.onTlsError(err);
      socket.destroy();
    });
    server.on('error', (e) => this.#o.log('error', 'tls listener error', { port, error: e.message }));
    if (this.#o.onOcsp) server.on('OCSPRequest', this.#o.onOcsp);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const actual = (server.address() as net.AddressInfo).port;
    if (this.#closing) {
      server.close();
      return actual;
    }
    this.servers.push({ server, http2: h2, port: actual, host });
    return actual;
  }

  async listenH2c(port: number, host: string): Promise<number> {
    const server = net.createServer((socket) => this.#sniff(socket));
    server.on('error', (e) => this.#o.log('error', 'h2c listener error', { port, error: e.message }));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    if (this.#closing) server.close();
    else this.h2cServer = server;
    return (server.address() as net.AddressInfo).port;
  }

  /** Replaces the base context of every server, now and later (clients without SNI get its certificate). */
  setDefault(options: tls.SecureContextOptions): void {
    this.#default = options;
    for (const { server } of this.servers) server.setSecureContext({ ...this.#o.tlsOptions, ...options });
  }

  setTicketKeys(keys: Buffer): void {
    this.#ticketKeys = keys;
    for (const { server } of this.servers) {
      server.setTicketKeys(keys);
      // setSecureContext() rebuilds the context from this field; keep it in step.
      (server as tls.Server & { ticketKeys?: Buffer }).ticketKeys = keys;
    }
  }

  #route(socket: tls.TLSSocket): void {
    socket.on('error', () => socket.destroy());
    // The HTTP/1.1 server turns Nagle off on its sockets; http2 does not, and small
    // responses then wait out the peer's delayed ACK (40 ms) on every request.
    socket.setNoDelay(true);
    this.#o.onHandshake(socket);
    if (this.#closing) return void socket.destroy();
    if (!this.#ready) {
      this.#readyWaiters.push(() => this.#route2(socket));
      return;
    }
    this.#route2(socket);
  }

  #route2(socket: net.Socket): void {
    if (socket.destroyed) return;
    if (this.#closing) return void socket.destroy();
    if ((socket as tls.TLSSocket).alpnProtocol === 'h2') this.#h2.emit('connection', socket);
    else this.#bridge.emit('connection', socket);
  }

  #sniff(socket: net.Socket): void {
    socket.on('error', () => socket.destroy());
    socket.setNoDelay(true);
    if (this.#closing) return void socket.destroy();
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const n = Math.min(head.length, PREFACE.length);
      // Undecided until the bytes either diverge from the preface or complete it.
      if (head.subarray(0, n).equals(PREFACE.subarray(0, n)) && n < PREFACE.length) return;
      socket.off('data', onData);
      socket.pause();
      socket.unshift(head);
      const go = () => {
        if (this.#closing) socket.destroy();
        else if (head.subarray(0, PREFACE.length).equals(PREFACE)) this.#h2.emit('connection', socket);
        else this.#bridge.emit('connection', socket);
      };
      if (this.#ready) go();
      else this.#readyWaiters.push(go);
    };
    socket.on('data', onData);
  }

  /** Open HTTP/2 sessions (for status). */
  get sessions(): number {
    return this.#sessions.size;
  }

  /** Stops listening and ends every HTTP/2 session at once (after the kernel's drain). */
  async destroy(): Promise<void> {
    this.#closing = true;
    if (this.#readyTimer) clearTimeout(this.#readyTimer);
    for (const w of this.#readyWaiters.splice(0)) w();
    const closes = this.servers.map(({ server }) => new Promise<void>((r) => server.close(() => r())));
    if (this.h2cServer) closes.push(new Promise<void>((r) => this.h2cServer!.close(() => r())));
    for (const s of this.#sessions) s.destroy();
    this.#sessions.clear();
    this.#h2.close();
    await Promise.race([Promise.all(closes), new Promise((r) => setTimeout(r, 1000).unref())]);
  }
}
