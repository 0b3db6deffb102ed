/**
 * The request object every hook sees. Built once per request from the Node
 * request without copying headers; the body is read only when asked for.
 */
import type { IncomingMessage } from 'node:http';
import { BextError, type Ctx, type Headers, type TrustedRequest } from '../plugin-api/index.js';

let seq = 0;
const prefix = `${process.pid.toString(36)}-`;

/** `example.com:8080` → `example.com`; `[::1]:80` → `::1`; lower-cased. */
export function hostOf(header: string | undefined): string {
  if (!header) return '';
  if (header.charCodeAt(0) === 91 /* [ */) {
    const end = header.indexOf(']');
    return (end === -1 ? header.slice(1) : header.slice(1, end)).toLowerCase();
  }
  const colon = header.indexOf(':');
  return (colon === -1 ? header : header.slice(0, colon)).toLowerCase();
}

export class BextRequest implements TrustedRequest {
  readonly id: string;
  readonly method: string;
  readonly path: string;
  readonly query: string;
  readonly host: string;
  readonly headers: Headers;
  readonly remoteAddress: string;
  readonly scheme: string;
  readonly httpVersion: string;
  readonly raw: IncomingMessage;
  ctx: Ctx = {};
  body?: string;
  route?: string;
  params?: Record<string, string>;
  group?: string;
  app?: import('../plugin-api/index.js').AppRef;
  /** The group limiter this request is counted in (kernel bookkeeping). */
  limiter: import('./groups.js').GroupLimiter | null = null;
  /** Headers that onRequest plugins asked to add to the response. */
  responseHeaders: Headers | null = null;
  /** Per-hook timings, collected only while request observers exist. */
  timings: import('../plugin-api/index.js').HookTiming[] | null = null;
  /** performance.now() at the start of the request. */
  t0 = 0;
  /** Trailers the answer carries (trusted responses), written after the body. */
  trailers: import('../plugin-api/index.js').Headers | Promise<import('../plugin-api/index.js').Headers> | undefined = undefined;
  /** The plugin set this request started on (kernel bookkeeping). */
  gen: unknown = null;
  /** The response, for early hints. */
  out: import('node:http').ServerResponse | null = null;
  #bodyLimit: number;
  #bodyPromise: Promise<Buffer> | null = null;
  /** Set by the kernel: decides admin rights for this request. */
  adminCheck: ((req: BextRequest) => boolean) | null = null;
  #isAdmin: boolean | undefined;

  get isAdmin(): boolean {
    return (this.#isAdmin ??= this.adminCheck ? this.adminCheck(this) : false);
  }

  earlyHints(hints: Record<string, string | string[]>): void {
    const out = this.out;
    if (!out || out.headersSent || typeof out.writeEarlyHints !== 'function') return;
    try {
      out.writeEarlyHints(hints);
    } catch {
      // A client that went away, or a protocol that cannot carry 103: the final answer still goes out.
    }
  }

  constructor(raw: IncomingMessage, path: string, query: string, host: string, bodyLimit: number) {
    this.id = prefix + (++seq).toString(36);
    this.raw = raw;
    this.method = raw.method ?? 'GET';
    this.path = path;
    this.query = query;
    this.host = host;
    this.headers = raw.headers as Headers;
    this.remoteAddress = raw.socket.remoteAddress ?? '';
    this.scheme = (raw.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http';
    this.httpVersion = raw.httpVersion;
    this.#bodyLimit = bodyLimit;
  }

  /** Whether the request carries a body at all. */
  hasBody(): boolean {
    const h = this.raw.headers;
    return (h['content-length'] !== undefined && h['content-length'] !== '0') || h['transfer-encoding'] !== undefined;
  }

  readBody(): Promise<Buffer> {
    if (this.#bodyPromise) return this.#bodyPromise;
    if (!this.hasBody()) return (this.#bodyPromise = Promise.resolve(Buffer.alloc(0)));
    const limit = this.#bodyLimit;
    const declared = Number(this.raw.headers['content-length']);
    if (declared > limit) {
      return (this.#bodyPromise = Promise.reject(tooLarge(limit)));
    }
    this.#bodyPromise = new Promise<Buffer>((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      const raw = this.raw;
      const onData = (c: Buffer) => {
        size += c.length;
        if (size > limit) {
          cleanup();
          raw.resume();
          reject(tooLarge(limit));
          return;
        }
        chunks.push(c);
      };
      const onEnd = () => {
        cleanup();
        resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks));
      };
      const onError = (e: Error) => {
        cleanup();
        reject(e);
      };
      const cleanup = () => {
        raw.off('data', onData);
        raw.off('end', onEnd);
        raw.off('error', onError);
      };
      raw.on('data', onData);
      raw.on('end', onEnd);
      raw.on('error', onError);
    });
    // Avoid an unhandled rejection when nobody awaits the shared promise.
    this.#bodyPromise.catch(() => undefined);
    return this.#bodyPromise;
  }

  /** Plain view for logs and JSON. */
  toJSON(): Record<string, unknown> {
    return { id: this.id, method: this.method, path: this.path, query: this.query, host: this.host, remoteAddress: this.remoteAddress, ctx: this.ctx, route: this.route, group: this.group, ...(this.app ? { app: this.app } : {}) };
  }
}

function tooLarge(limit: number): BextError {
  return new BextError('BEXT_ERR_BODY_TOO_LARGE', `request body exceeds ${limit} bytes`, { hint: 'raise server.bodyLimit in bext.config.json if larger bodies are expected' });
}
