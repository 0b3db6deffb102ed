/**
 * Clients for the realtime tests: an SSE reader over a real HTTP
 * connection, and a WebSocket client, each keeping what it received and
 * resolving waits when a matching event arrives (never on a timer).
 */
import http from 'node:http';
import WebSocket from 'ws';

export interface SseEvent {
  event: string;
  id?: string;
  data: Record<string, unknown>;
}

type Waiter<T> = { pred: (e: T) => boolean; resolve: (e: T) => void; reject: (e: Error) => void; timer: NodeJS.Timeout };

class Inbox<T> {
  readonly got: T[] = [];
  #waiters: Waiter<T>[] = [];
  #from = 0;
  push(e: T): void {
    this.got.push(e);
    for (const w of [...this.#waiters]) {
      if (w.pred(e)) {
        clearTimeout(w.timer);
        this.#waiters.splice(this.#waiters.indexOf(w), 1);
        w.resolve(e);
      }
    }
  }
  fail(err: Error): void {
    for (const w of this.#waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(err);
    }
  }
  /** Resolves once `cond` holds, checked now and after every event. */
  until(cond: () => boolean, timeoutMs = 10_000): Promise<void> {
    if (cond()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const w: Waiter<T> = {
        pred: () => cond(),
        resolve: () => resolve(),
        reject,
        timer: setTimeout(() => {
          this.#waiters.splice(this.#waiters.indexOf(w), 1);
          reject(new Error(`condition not met within ${timeoutMs} ms; got ${JSON.stringify(this.got.slice(-5))}`));
        }, timeoutMs),
      };
      this.#waiters.push(w);
    });
  }

  /** The first event matching `pred` that arrives after the previous `next` returned (or already did). */
  next(pred: (e: T) => boolean = () => true, timeoutMs = 10_000): Promise<T> {
    for (let i = this.#from; i < this.got.length; i++) {
      if (pred(this.got[i]!)) {
        this.#from = i + 1;
        return Promise.resolve(this.got[i]!);
      }
    }
    this.#from = this.got.length;
    return new Promise((resolve, reject) => {
      const w: Waiter<T> = {
        pred,
        resolve: (e) => {
          this.#from = this.got.indexOf(e) + 1;
          resolve(e);
        },
        reject,
        timer: setTimeout(() => {
          this.#waiters.splice(this.#waiters.indexOf(w), 1);
          reject(new Error(`no matching event within ${timeoutMs} ms; got ${JSON.stringify(this.got.slice(-5))}`));
        }, timeoutMs),
      };
      this.#waiters.push(w);
    });
  }
}

/** An EventSource-like reader: parses events, keeps the last id. */
export class SseClient extends Inbox<SseEvent> {
  status = 0;
  headers: http.IncomingHttpHeaders = {};
  lastId: string | undefined;
  ended = false;
  readonly #req: http.ClientRequest;
  readonly opened: Promise<number>;
  readonly closed: Promise<void>;
  res: http.IncomingMessage | null = null;
  body = '';

  constructor(url: string, headers: Record<string, string> = {}) {
    super();
    let onClose!: () => void;
    this.closed = new Promise((r) => (onClose = r));
    this.#req = http.get(url, { headers: { accept: 'text/event-stream', ...headers }, agent: false });
    this.opened = new Promise((resolve, reject) => {
      this.#req.on('error', (e) => {
        reject(e);
        this.fail(e);
        onClose();
      });
      this.#req.on('response', (res) => {
        this.res = res;
        this.status = res.statusCode ?? 0;
        this.headers = res.headers;
        res.setEncoding('utf8');
        let buf = '';
        res.on('data', (d: string) => {
          if (this.status !== 200) {
            this.body += d;
            return;
          }
          buf += d;
          let k;
          while ((k = buf.indexOf('\n\n')) !== -1) {
            const block = buf.slice(0, k);
            buf = buf.slice(k + 2);
            this.#parse(block);
          }
        });
        res.on('close', () => {
          this.ended = true;
          this.fail(new Error('the stream closed'));
          onClose();
        });
        resolve(this.status);
      });
    });
  }

  #parse(block: string): void {
    let event = 'message';
    let id: string | undefined;
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':') || line === '') continue;
      const c = line.indexOf(':');
      const field = c === -1 ? line : line.slice(0, c);
      const value = c === -1 ? '' : line.slice(c + 1).replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'id') id = value;
      else if (field === 'data') data.push(value);
    }
    if (!data.length) return;
    if (id !== undefined) this.lastId = id;
    this.push({ event, id, data: JSON.parse(data.join('\n')) as Record<string, unknown> });
  }

  /** Waits for the response to end with an error body (non-200), returns it parsed. */
  async error(): Promise<Record<string, unknown>> {
    await this.opened;
    await this.closed;
    return JSON.parse(this.body) as Record<string, unknown>;
  }

  messages(topic?: string): Record<string, unknown>[] {
    return this.got.filter((e) => e.event === 'message' && (!topic || e.data.topic === topic)).map((e) => e.data);
  }

  close(): void {
    this.#req.destroy();
  }
}

export type WsMessage = Record<string, unknown> & { type: string };

/** A WebSocket client that keeps every JSON message it receives. */
export class WsClient extends Inbox<WsMessage> {
  readonly ws: WebSocket;
  readonly opened: Promise<void>;
  closeCode = 0;
  closeReason = '';
  readonly closed: Promise<{ code: number; reason: string }>;
  #id = 0;

  constructor(url: string, opts: WebSocket.ClientOptions = {}) {
    super();
    this.ws = new WebSocket(url, { perMessageDeflate: false, ...opts });
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', () => resolve());
      this.ws.once('error', reject);
      this.ws.once('unexpected-response', (_req, res) => reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode })));
    });
    this.closed = new Promise((resolve) => {
      this.ws.on('close', (code, reason) => {
        this.closeCode = code;
        this.closeReason = reason.toString();
        this.fail(new Error(`closed ${code} ${this.closeReason}`));
        resolve({ code, reason: this.closeReason });
      });
    });
    this.ws.on('error', () => undefined);
    this.ws.on('message', (m: Buffer) => this.push(JSON.parse(m.toString()) as WsMessage));
  }

  /** Sends a request and waits for the reply with the same id. */
  async request(msg: Record<string, unknown>): Promise<WsMessage> {
    const id = ++this.#id;
    const reply = this.next((m) => m.id === id);
    this.ws.send(JSON.stringify({ ...msg, id }));
    return reply;
  }

  messages(topic?: string): WsMessage[] {
    return this.got.filter((m) => m.type === 'message' && (!topic || m.topic === topic));
  }

  close(): void {
    this.ws.terminate();
  }
}
