/**
 * The hook contract: every lifecycle hook declared once, with its input, the
 * decisions it may return, and how the kernel dispatches it.
 *
 * Everything here that crosses a sandbox boundary is plain data (JSON
 * compatible). Trusted plugins additionally see streaming bodies and the
 * `next()` continuation of `onRender`.
 */
import type { Readable } from 'node:stream';

/** Header map with lower-case names. Multi-valued headers are arrays. */
export type Headers = Record<string, string | string[]>;

/** Values that earlier plugins placed on the request for later ones. */
export type Ctx = Record<string, unknown>;

/**
 * A request as a plugin sees it. A sandboxed plugin only receives the fields
 * its manifest declares in `needs`; the rest are absent.
 *
 * @example
 * ```ts
 * onRequest(req) {
 *   if (req.path.startsWith('/admin') && !req.ctx.user) return { action: 'respond', status: 401 };
 * }
 * ```
 */
export interface RequestData {
  /** Unique id of this request within the process. */
  id: string;
  method: string;
  /** Path without the query string, as received (not decoded). */
  path: string;
  /** Raw query string without the leading `?` ('' when there is none). */
  query: string;
  /** Host header without port, lower-cased. */
  host: string;
  headers: Headers;
  remoteAddress: string;
  /** `http` or `https`. */
  scheme: string;
  httpVersion: string;
  /** Request body, present only when declared in `needs` and within the body limit. */
  body?: string;
  ctx: Ctx;
  /** The route pattern and its parameters, for `onRoute`. */
  route?: string;
  params?: Record<string, string>;
  /** Name of the route group the request was matched to. */
  group?: string;
  /** The hosted app and environment serving this request, when an app matched. */
  app?: AppRef;
}

/** Which app environment serves a request, and the deployed version live there. */
export interface AppRef {
  name: string;
  /** `production`, or an environment named in the app's config. */
  env: string;
  /** The deployed version serving this environment; null when it serves its configured folder. */
  version: string | null;
}

/** Only trusted plugins see these: the Node request for streaming reads. */
export interface TrustedRequest extends RequestData {
  /** Reads the whole request body (bounded by the plugin's `limits.bodyBytes`). */
  readBody(): Promise<Buffer>;
  /** The raw Node request, for streaming reads and protocol upgrades. */
  readonly raw: import('node:http').IncomingMessage;
  /**
   * Sends a `103 Early Hints` response now (HTTP/1.1 and HTTP/2), before the
   * final answer, e.g. `{ link: ['</app.css>; rel=preload; as=style'] }`.
   * Does nothing when the response has started or for upgrades.
   */
  earlyHints(hints: Record<string, string | string[]>): void;
  /**
   * Whether the request came over the admin listener (bound to loopback) or
   * carries the admin token — what admin routes require.
   */
  readonly isAdmin: boolean;
}

/** A body a trusted plugin may produce. Sandboxed plugins produce strings. */
export type Body = string | Uint8Array | Readable | AsyncIterable<Uint8Array> | null;

/** A response as plugins produce it. */
export interface ResponseData {
  status: number;
  headers?: Headers;
  body?: Body;
  /**
   * Base64 body, for sandboxed plugins that must return bytes. Ignored when
   * `body` is set.
   */
  bodyBase64?: string;
  /**
   * Trusted only: trailers sent after a streamed body (gRPC status, say).
   * Always on HTTP/2; on HTTP/1.1 only when chunked and the client sent
   * `TE: trailers`.
   */
  trailers?: Headers | Promise<Headers>;
}

/** What an onConnect hook receives. */
export interface ConnectInfo {
  remoteAddress: string;
  remotePort: number;
  localPort: number;
  /** TLS server name (SNI), when the listener is TLS. */
  servername?: string;
  /** Negotiated ALPN protocol, when the listener is TLS. */
  alpn?: string;
  /**
   * Trusted plugins only: calls `cb` once when this connection closes (for
   * per-client connection counts). Not enumerable, so sandboxes never see it.
   */
  onClose?(cb: () => void): void;
}

export type ConnectDecision = undefined | void | { action: 'allow' } | { action: 'reject'; reason?: string };

/** onRequest: continue (optionally tagging the request) or answer now. */
export type RequestDecision =
  | undefined
  | void
  | {
      action: 'continue';
      /** Headers added to the request that later plugins and the route see. */
      setHeaders?: Record<string, string>;
      /** Values merged into `req.ctx`. */
      ctx?: Ctx;
      /** Headers added to the eventual response. */
      responseHeaders?: Headers;
    }
  | ({ action: 'respond' } & ResponseData);

/** onRoute: answer, or (trusted only) take over the connection. */
export type RouteDecision =
  | ResponseData
  | {
      action: 'upgrade';
      /** Called with the raw socket of an HTTP upgrade (WebSocket). Trusted only. */
      upgrade(raw: import('node:http').IncomingMessage, socket: import('node:stream').Duplex, head: Buffer): void;
    };

/**
 * onRender: answer, or `{ action: 'next' }` to let the inner render answer.
 * For an HTTP upgrade request on a path no plugin claimed, a trusted hook may
 * take over the connection with `{ action: 'upgrade' }` (config-driven
 * routes such as a proxy's).
 */
export type RenderDecision =
  | ResponseData
  | { action: 'next' }
  | { action: 'upgrade'; upgrade(raw: import('node:http').IncomingMessage, socket: import('node:stream').Duplex, head: Buffer): void }
  | undefined
  | void;

/** What an onResponse hook receives about the response. */
export interface ResponseHead {
  status: number;
  headers: Headers;
  /** The whole body as text, only when declared in `needs` and the body is not streamed. */
  body?: string;
  /** Trusted only: the byte length of a body held in memory, without decoding it (undefined when streamed). */
  readonly bodyLength?: number;
}

/** onResponse: change the head, replace or transform the body. */
export type ResponseDecision =
  | undefined
  | void
  | {
      status?: number;
      setHeaders?: Headers;
      removeHeaders?: string[];
      /** Replaces the body. */
      body?: Body;
      bodyBase64?: string;
      /**
       * Trusted only: a transform applied to the streamed body, for
       * compression and the like. Called once per response.
       */
      transform?: () => import('node:stream').Duplex;
    };

/** A message on its way through the onPublish chain. */
export interface PublishMessage {
  topic: string;
  data: unknown;
  /** Name of the publishing plugin, or `kernel`. */
  publisher: string;
}

export type PublishDecision =
  | undefined
  | void
  | { action: 'pass' }
  | { action: 'drop'; reason?: string }
  | { action: 'transform'; data: unknown }
  | { action: 'deliver'; delivered?: number };

/**
 * One run of a scheduled task, as `onSchedule` receives it (see the
 * manifest's `schedules` and `bext_schedule`).
 *
 * @example
 * ```ts
 * onSchedule(task) {
 *   if (task.name === 'purge') return purgeExpired(task.scheduledAt);
 * }
 * ```
 */
export interface ScheduledTask {
  /** The task's name, as declared in `schedules` or given to `bext_schedule`. */
  name: string;
  /** The tick this run belongs to, in ms since the epoch (the same on every instance of a cluster). */
  scheduledAt: number;
  /** When the run started on this instance, in ms since the epoch. */
  firedAt: number;
  /** How many runs of this task this instance started, this one included (1 for the first). */
  run: number;
}

/**
 * How the kernel runs a chain of one hook:
 * - `sequential`: in priority order, the first decision that ends the chain wins (short-circuit).
 * - `first`: exactly one plugin answers (the one that claimed the route).
 * - `waterfall`: each hook sees the result of the previous one; onRender hooks wrap the inner ones.
 * - `fanout`: every hook sees the message; transforms flow on, a drop ends it.
 * - `task`: never part of a request chain; the scheduler calls one plugin's hook per task run.
 */
export type DispatchKind = 'sequential' | 'first' | 'waterfall' | 'fanout' | 'task';

/** The render continuation a trusted onRender hook may call. */
export type RenderNext = () => Promise<ResponseData>;

/**
 * Every hook, once: its signature as a trusted plugin implements it. A
 * sandboxed plugin implements the same functions over plain data (without
 * `next`, and returning `{ action: 'next' }` instead).
 */
export interface HookSignatures {
  onConnect(info: ConnectInfo): ConnectDecision | Promise<ConnectDecision>;
  onRequest(req: TrustedRequest): RequestDecision | Promise<RequestDecision>;
  onRoute(req: TrustedRequest): RouteDecision | Promise<RouteDecision>;
  onRender(req: TrustedRequest, next: RenderNext): RenderDecision | Promise<RenderDecision>;
  onResponse(req: TrustedRequest, res: ResponseHead): ResponseDecision | Promise<ResponseDecision>;
  onPublish(msg: PublishMessage): PublishDecision | Promise<PublishDecision>;
  /** A scheduled task of this plugin is due. The result is ignored; a throw or a missed deadline is a failed run. */
  onSchedule(task: ScheduledTask): void | Promise<void>;
}

export type HookName = keyof HookSignatures;

/** The table every dispatcher is built from; a missing hook is a compile error. */
export const HOOKS: { readonly [K in HookName]: { readonly dispatch: DispatchKind; readonly doc: string } } = {
  onConnect: { dispatch: 'sequential', doc: 'at the socket, before any HTTP parse: allow or reject' },
  onRequest: { dispatch: 'sequential', doc: 'after the request head: continue (tag) or respond' },
  onRoute: { dispatch: 'first', doc: 'on a path the plugin claimed: respond or upgrade' },
  onRender: { dispatch: 'waterfall', doc: 'at the catch-all: respond or wrap the inner render' },
  onResponse: { dispatch: 'waterfall', doc: 'before writing: set headers, replace or transform the body' },
  onPublish: { dispatch: 'fanout', doc: 'for each published message: pass, transform, drop or deliver' },
  onSchedule: { dispatch: 'task', doc: 'when one of the plugin\'s scheduled tasks is due: run it' },
};

export const HOOK_NAMES = Object.keys(HOOKS) as HookName[];

/** The hooks a plugin instance exposes. */
export type PluginHooks = { [K in HookName]?: HookSignatures[K] };
