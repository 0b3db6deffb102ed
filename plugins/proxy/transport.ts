/**
 * Sending one attempt to one member: HTTP/1.1 through the member's undici
 * pool, or HTTP/2 without TLS (h2c, what gRPC servers speak) through one
 * multiplexed node:http2 session per member. Both stream the request body
 * as it arrives and hand back the response once its head is in.
 */
import http2, { type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders } from 'node:http2';
import { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { Headers } from '../../plugin-api/index.js';
import type { ReplayBody } from './body.js';
import { clientResponseHeaders, clientResponseHeadersRaw } from './headers.js';
import type { Member } from './upstream.js';

/** A response head with its streaming body. */
export interface Sent {
  status: number;
  /** Without hop-by-hop headers. */
  headers: Headers;
  /** Takes the body (once): all of it when it has already arrived, else a stream of it. */
  body(): Buffer | Readable;
  /** Drops an unwanted response (one about to be retried). */
  discard(): void;
  /** HTTP/2 trailers (gRPC's grpc-status), resolved when the body ends. */
  trailers?: Promise<Record<string, string | string[]>>;
}

export type AttemptBody = ReplayBody | Buffer | null;

/**
 * Lets the engine cancel the attempt in flight when the client goes away
 * before the response head, so a slow member is not kept busy for nobody.
 */
export interface Cancel {
  cancelled: boolean;
  /** Set by the transport while an attempt is in flight. */
  abort: (() => void) | null;
}

/** Why an attempt failed, which decides retry safety and who is blamed. */
export type FailureKind = 'connect' | 'timeout' | 'reset' | 'client';

const CONNECT_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'EADDRNOTAVAIL', 'UND_ERR_CONNECT_TIMEOUT', 'ERR_PROXY_CONNECT', 'ERR_HTTP2_REFUSED_STREAM']);
const TIMEOUT_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ERR_PROXY_HEADERS_TIMEOUT']);
const RESET_CODES = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'ECONNABORTED', 'ERR_HTTP2_STREAM_ERROR', 'ERR_HTTP2_SESSION_ERROR', 'ERR_HTTP2_GOAWAY_SESSION', 'ERR_HTTP2_STREAM_CANCEL', 'ERR_HTTP2_INVALID_SESSION', 'UND_ERR_CLOSED', 'UND_ERR_DESTROYED', 'ERR_STREAM_PREMATURE_CLOSE']);

/** Classifies an error from undici, node:http2 or the request body. */
export function classify(e: unknown): FailureKind {
  const err = e as { code?: string; cause?: { code?: string }; fromClient?: boolean };
  if (err?.fromClient) return 'client';
  const code = err?.code ?? err?.cause?.code ?? '';
  if (CONNECT_CODES.has(code)) return 'connect';
  if (TIMEOUT_CODES.has(code)) return 'timeout';
  if (RESET_CODES.has(code)) return 'reset';
  return 'client';
}

function coded(message: string, code: string): Error {
  return Object.assign(new Error(message), { code });
}

/** The body as an attempt sends it, remembering a failure of the client's side. */
function watched(body: ReplayBody, into: { clientError: Error | null }): AsyncIterable<Buffer> {
  return {
    [Symbol.asyncIterator]: () => {
      const it = body.iterate()[Symbol.asyncIterator]();
      return {
        next: () => it.next().catch((e: Error) => {
          into.clientError = e;
          throw e;
        }),
        return: () => it.return!(),
      };
    },
  };
}

function fromClient(e: Error): Error {
  return Object.assign(new Error(`reading the request body failed: ${e.message}`), { fromClient: true });
}

/**
 * One HTTP/1.1 exchange through the member's undici pool, as a dispatch
 * handler rather than `request()`: the response head resolves the attempt,
 * and because undici parses a whole socket read before that resolution is
 * seen, a small response is usually complete by then — it is handed over as
 * one Buffer (one write, no stream). Anything still arriving is streamed,
 * with undici paused whenever the client side cannot keep up. The exchange
 * is itself the attempt's result, so a request allocates no more than it must.
 */
class Exchange implements Dispatcher.DispatchHandlers, Sent {
  status = 0;
  headers: Headers = {};
  chunks: Buffer[] | null = [];
  complete = false;
  error: Error | null = null;
  stream: Readable | null = null;
  /** Set when reading the client's body failed, so the failure is not blamed on the member. */
  clientError: Error | null = null;
  #abort: ((e?: Error) => void) | null = null;
  #resume: (() => void) | null = null;
  #resolve: ((x: Exchange) => void) | null;
  #reject: (e: Error) => void;
  #cancel: Cancel;

  constructor(resolve: (x: Exchange) => void, reject: (e: Error) => void, cancel: Cancel) {
    this.#resolve = resolve;
    this.#reject = reject;
    this.#cancel = cancel;
  }

  onConnect(abort: (e?: Error) => void): void {
    this.#abort = abort;
    if (this.#cancel.cancelled) abort();
    else this.#cancel.abort = abort;
  }

  onHeaders(status: number, head: Buffer[], resume: () => void): boolean {
    if (status < 200) return true;
    this.#cancel.abort = null;
    this.status = status;
    this.headers = clientResponseHeadersRaw(head);
    this.#resume = resume;
    const resolve = this.#resolve!;
    this.#resolve = null;
    resolve(this);
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.stream !== null) return this.stream.push(chunk);
    this.chunks!.push(chunk);
    return true;
  }

  onComplete(): void {
    this.complete = true;
    if (this.stream !== null) this.stream.push(null);
  }

  onError(e: Error): void {
    this.#cancel.abort = null;
    if (this.#resolve !== null) {
      this.#resolve = null;
      // undici reports a failing body as its own error; what matters is which side failed.
      this.#reject(this.clientError ? fromClient(this.clientError) : e);
      return;
    }
    this.error = e;
    if (this.stream !== null) this.stream.destroy(e);
  }

  body(): Buffer | Readable {
    if (this.complete && this.error === null) {
      const c = this.chunks!;
      this.chunks = null;
      return c.length === 1 ? c[0]! : Buffer.concat(c);
    }
    const stream = new Readable({ read: () => this.#resume!(), destroy: (err, cb) => this.#destroyed(err, cb) });
    for (const c of this.chunks!) stream.push(c);
    this.chunks = null;
    this.stream = stream;
    if (this.error !== null) stream.destroy(this.error);
    else if (this.complete) stream.push(null);
    return stream;
  }

  #destroyed(err: Error | null, cb: (e: Error | null) => void): void {
    // The client went away (or a transform failed): stop reading from the member.
    if (!this.complete) this.#abort?.();
    cb(err);
  }

  discard(): void {
    if (!this.complete) this.#abort?.();
    this.chunks = null;
  }
}

/** HTTP/1.1 through undici. */
export function sendHttp1(m: Member, method: string, path: string, headers: Record<string, string | string[]>, body: AttemptBody, cancel: Cancel): Promise<Sent> {
  return new Promise<Exchange>((resolve, reject) => {
    const x = new Exchange(resolve, reject, cancel);
    const b = body === null || Buffer.isBuffer(body) ? body : watched(body, x);
    m.pool!.dispatch({ method: method as 'GET', path, headers, body: b as never }, x);
  });
}

/** The member's h2c session, connecting when there is none (one connect at a time). */
function session(m: Member, connectMs: number, idleMs: number): Promise<ClientHttp2Session> {
  const s = m.h2;
  if (s && !s.closed && !s.destroyed) return Promise.resolve(s);
  if (m.h2Connecting) return m.h2Connecting;
  m.h2Connecting = new Promise<ClientHttp2Session>((resolve, reject) => {
    const sess = http2.connect(m.id);
    const timer = setTimeout(() => {
      sess.destroy();
      reject(coded(`connect to ${m.label} timed out after ${connectMs} ms`, 'UND_ERR_CONNECT_TIMEOUT'));
    }, connectMs);
    sess.once('connect', () => {
      clearTimeout(timer);
      m.h2 = sess;
      resolve(sess);
    });
    sess.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    // A session that said GOAWAY takes no new streams; the next request opens another.
    const forget = () => {
      if (m.h2 === sess) m.h2 = null;
    };
    sess.once('goaway', forget);
    sess.once('close', forget);
    sess.setTimeout(idleMs, () => sess.close());
  }).finally(() => (m.h2Connecting = null));
  return m.h2Connecting;
}

/** HTTP/2 over cleartext (h2c, prior knowledge). Trailers are passed on. */
export async function sendH2c(m: Member, method: string, path: string, authority: string, headers: Record<string, string | string[]>, teTrailers: boolean, body: AttemptBody, t: { connectMs: number; headersMs: number; bodyMs: number; idleMs: number }, cancel: Cancel): Promise<Sent> {
  const sess = await session(m, t.connectMs, t.idleMs);
  const h: Record<string, string | string[]> = { ':method': method, ':path': path, ':scheme': 'http', ':authority': authority };
  for (const k in headers) if (k !== 'host') h[k] = headers[k]!;
  if (teTrailers) h.te = 'trailers';
  let stream: ClientHttp2Stream;
  try {
    stream = sess.request(h, { endStream: body === null });
  } catch (e) {
    // The session went away between the check and the request: nothing was sent.
    throw Object.assign(e as Error, { code: 'ERR_HTTP2_REFUSED_STREAM' });
  }
  return new Promise<Sent>((resolve, reject) => {
    let settled = false;
    const fail = (e: Error) => {
      if (settled) return;
      settled = true;
      cancel.abort = null;
      clearTimeout(timer);
      stream.close(http2.constants.NGHTTP2_CANCEL);
      reject(e);
    };
    const timer = setTimeout(() => fail(coded(`no response head from ${m.label} within ${t.headersMs} ms`, 'UND_ERR_HEADERS_TIMEOUT')), t.headersMs);
    const seen: { clientError: Error | null } = { clientError: null };
    stream.once('error', (e: Error & { code?: string }) => fail(seen.clientError ? fromClient(seen.clientError) : e));
    stream.once('close', () => {
      if (seen.clientError) fail(fromClient(seen.clientError));
      else if (stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM) fail(coded(`${m.label} refused the stream`, 'ERR_HTTP2_REFUSED_STREAM'));
      else fail(coded(`${m.label} closed the stream before answering`, 'ERR_HTTP2_STREAM_ERROR'));
    });
    cancel.abort = () => fail(coded('the client went away', 'UND_ERR_ABORTED'));
    if (cancel.cancelled) cancel.abort();
    stream.once('response', (head: IncomingHttpHeaders, flags: number) => {
      if (settled) return;
      settled = true;
      cancel.abort = null;
      clearTimeout(timer);
      if (t.bodyMs > 0) stream.setTimeout(t.bodyMs, () => stream.close(http2.constants.NGHTTP2_CANCEL));
      let trailers: Promise<Record<string, string | string[]>>;
      if ((flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0 && /^application\/grpc/.test(String(head['content-type'] ?? ''))) {
        // gRPC "trailers-only" (an error with no message): the status rides in the head. Give it back as
        // trailers, so a listener that writes head, body and trailers separately still sends it where clients look.
        const tr: Record<string, string | string[]> = {};
        for (const k of ['grpc-status', 'grpc-message', 'grpc-status-details-bin']) {
          if (head[k] !== undefined) {
            tr[k] = head[k] as string;
            delete head[k];
          }
        }
        trailers = Promise.resolve(tr);
      } else {
        trailers = new Promise<Record<string, string | string[]>>((res) => {
          stream.once('trailers', (tr: IncomingHttpHeaders) => res(tr as Record<string, string | string[]>));
          stream.once('close', () => res({}));
        });
      }
      resolve({ status: Number(head[':status']), headers: clientResponseHeaders(head), body: () => stream, discard: () => stream.close(http2.constants.NGHTTP2_CANCEL), trailers });
    });
    if (body !== null) {
      if (Buffer.isBuffer(body)) stream.end(body);
      else void pump(watched(body, seen), stream);
    }
  });
}

/**
 * An active health check over h2c: `GET path` on the member's session;
 * resolves to the status. It is labelled as gRPC, since a gRPC server
 * refuses anything else with 415 (and answers 200 to any path it is asked).
 */
export async function probeH2c(m: Member, path: string, timeoutMs: number, idleMs: number): Promise<number> {
  const sess = await session(m, timeoutMs, idleMs);
  return new Promise<number>((resolve, reject) => {
    const st = sess.request({ ':method': 'GET', ':path': path, ':scheme': 'http', ':authority': m.url.host, 'user-agent': 'bext-proxy-health', 'content-type': 'application/grpc', te: 'trailers' }, { endStream: true });
    const timer = setTimeout(() => {
      st.close(http2.constants.NGHTTP2_CANCEL);
      reject(coded(`no answer within ${timeoutMs} ms`, 'UND_ERR_HEADERS_TIMEOUT'));
    }, timeoutMs);
    st.once('response', (h: IncomingHttpHeaders) => {
      clearTimeout(timer);
      st.resume();
      resolve(Number(h[':status']));
    });
    st.once('error', (e: Error) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

async function pump(src: AsyncIterable<Buffer>, dst: ClientHttp2Stream): Promise<void> {
  try {
    for await (const c of src) {
      if (dst.destroyed) return;
      if (!dst.write(c)) {
        await new Promise<void>((r) => {
          const go = () => {
            dst.off('drain', go);
            dst.off('close', go);
            r();
          };
          dst.on('drain', go);
          dst.on('close', go);
        });
      }
    }
    if (!dst.destroyed) dst.end();
  } catch {
    // The client's body failed mid-way: the upstream must not take a truncated request as complete.
    dst.close(http2.constants.NGHTTP2_CANCEL);
  }
}
