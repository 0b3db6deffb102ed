/**
 * tracing: OpenTelemetry spans for requests, exported over OTLP/HTTP.
 *
 * The onRequest hook only decides the trace: it continues the client's W3C
 * `traceparent` (or starts a trace), picks the server span's id and writes
 * `traceparent` on the request so a proxied upstream continues the trace
 * under that span. The spans themselves are built after the response, from
 * the kernel's request record: the server span, and one child per plugin
 * hook call with the start time and duration the kernel measured. Nothing
 * is allocated for the trace on the request path beyond the ids.
 */
import { randomFillSync } from 'node:crypto';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, TraceFlags, createTraceState, trace, type Attributes, type Context } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor, type IdGenerator, type ReadableSpan, type SpanExporter } from '@opentelemetry/sdk-trace-base';
import {
  ATTR_CLIENT_ADDRESS, ATTR_HTTP_REQUEST_METHOD, ATTR_HTTP_RESPONSE_STATUS_CODE, ATTR_HTTP_ROUTE,
  ATTR_SERVER_ADDRESS, ATTR_SERVICE_NAME, ATTR_URL_PATH, ATTR_URL_SCHEME, ATTR_USER_AGENT_ORIGINAL,
} from '@opentelemetry/semantic-conventions';
import { definePlugin, globToRegExp, type HostApi, type RequestDecision, type RequestRecord, type TrustedRequest } from '../../plugin-api/index.js';

/** This plugin's section of bext.config.json (defaults applied by the kernel). */
export interface TracingConfig {
  endpoint: string;
  headers: Record<string, string>;
  compression: 'none' | 'gzip';
  serviceName: string;
  resourceAttributes: Record<string, string | number | boolean>;
  sampleRatio: number;
  parentBased: boolean;
  acceptParent: boolean;
  propagate: boolean;
  hookSpans: boolean;
  exclude: string[];
  batch: { maxQueueSize: number; maxExportBatchSize: number; scheduledDelayMs: number; exportTimeoutMs: number };
}

/** A parsed W3C traceparent. */
export interface TraceParent {
  traceId: string;
  spanId: string;
  sampled: boolean;
}

const HEX32 = /^[0-9a-f]{32}$/;
const HEX16 = /^[0-9a-f]{16}$/;
const ZERO32 = '0'.repeat(32);
const ZERO16 = '0'.repeat(16);

/**
 * Parses a `traceparent` header (W3C Trace Context level 1): version 00
 * exactly, or a later version whose first four fields have the 00 shape.
 * Returns null for anything malformed, which restarts the trace.
 */
export function parseTraceparent(v: string | string[] | undefined): TraceParent | null {
  if (typeof v !== 'string' || v.length < 55) return null;
  const s = v.trim();
  const version = s.slice(0, 2);
  if (!/^[0-9a-f]{2}$/.test(version) || version === 'ff') return null;
  if (version === '00' ? s.length !== 55 : s.length > 55 && s[55] !== '-') return null;
  if (s[2] !== '-' || s[35] !== '-' || s[52] !== '-') return null;
  const traceId = s.slice(3, 35);
  const spanId = s.slice(36, 52);
  const flags = s.slice(53, 55);
  if (!HEX32.test(traceId) || traceId === ZERO32 || !HEX16.test(spanId) || spanId === ZERO16 || !/^[0-9a-f]{2}$/.test(flags)) return null;
  return { traceId, spanId, sampled: (parseInt(flags, 16) & 1) === 1 };
}

/** Random ids from a pooled buffer (one getrandom call per 256 ids). */
class Ids {
  #pool = Buffer.alloc(4096);
  #at = this.#pool.length;
  hex(bytes: number): string {
    if (this.#at + bytes > this.#pool.length) {
      randomFillSync(this.#pool);
      this.#at = 0;
    }
    const s = this.#pool.toString('hex', this.#at, (this.#at += bytes));
    // All-zero ids are invalid; a 2^-64 chance, but cheap to rule out.
    return /^0+$/.test(s) ? this.hex(bytes) : s;
  }
}

/**
 * The SDK picks span and trace ids itself; this hands it the ids chosen in
 * onRequest (the one the upstream already saw as its parent) for the next
 * span started, and random ones otherwise.
 */
class PresetIds implements IdGenerator {
  traceId: string | null = null;
  spanId: string | null = null;
  constructor(private readonly ids: Ids) {}
  generateTraceId(): string {
    const t = this.traceId ?? this.ids.hex(16);
    this.traceId = null;
    return t;
  }
  generateSpanId(): string {
    const s = this.spanId ?? this.ids.hex(8);
    this.spanId = null;
    return s;
  }
}

/** What onRequest decided, kept until the request's record arrives. */
interface TraceState {
  traceId: string;
  spanId: string;
  parent: TraceParent | null;
  tracestate: string | undefined;
  sampled: boolean;
  scheme: string;
}

/** Counts what the exporter did, for metrics and a warning per failing stretch. */
class CountingExporter implements SpanExporter {
  exported = 0;
  failed = 0;
  failing = false;
  constructor(
    private readonly inner: SpanExporter,
    private readonly onFailure: (error: string) => void,
    private readonly onRecovery: () => void,
  ) {}
  export(spans: ReadableSpan[], done: (r: { code: number; error?: Error }) => void): void {
    this.inner.export(spans, (r) => {
      if (r.code === 0) {
        this.exported += spans.length;
        if (this.failing) this.onRecovery();
        this.failing = false;
      } else {
        this.failed += spans.length;
        if (!this.failing) this.onFailure(r.error?.message ?? 'export failed');
        this.failing = true;
      }
      done(r);
    });
  }
  shutdown(): Promise<void> {
    return this.inner.shutdown();
  }
  forceFlush(): Promise<void> {
    return this.inner.forceFlush?.() ?? Promise.resolve();
  }
}

export default definePlugin((host: HostApi) => {
  if (!host.kernel) throw new Error('tracing needs the trusted sandbox (it builds spans from the kernel request records)');
  const kernel = host.kernel;
  const cfg = host.config<TracingConfig>();
  const exclude = cfg.exclude.length ? new RegExp(cfg.exclude.map((g) => globToRegExp(g).source).join('|')) : null;
  const ids = new Ids();
  const preset = new PresetIds(ids);
  const exporter = new CountingExporter(
    new OTLPTraceExporter({ url: cfg.endpoint, headers: cfg.headers, compression: cfg.compression as never, timeoutMillis: cfg.batch.exportTimeoutMs }),
    (error) => host.log('warn', 'tracing: spans could not be exported; dropping them until the collector answers', { endpoint: cfg.endpoint, error }),
    () => host.log('info', 'tracing: the collector accepts spans again', { endpoint: cfg.endpoint }),
  );
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ [ATTR_SERVICE_NAME]: cfg.serviceName, ...cfg.resourceAttributes }),
    idGenerator: preset,
    spanProcessors: [
      new BatchSpanProcessor(exporter, {
        maxQueueSize: cfg.batch.maxQueueSize,
        maxExportBatchSize: Math.min(cfg.batch.maxExportBatchSize, cfg.batch.maxQueueSize),
        scheduledDelayMillis: cfg.batch.scheduledDelayMs,
        exportTimeoutMillis: cfg.batch.exportTimeoutMs,
      }),
    ],
  });
  const tracer = provider.getTracer('bext', '1.0.0');
  /** Keyed by the request's ctx object, which the kernel passes on to the record: nothing to clean up. */
  const states = new WeakMap<object, TraceState>();
  const threshold = Math.floor(cfg.sampleRatio * 0x100000000);
  let spans = 0;

  /** Ratio sampling on the trace id's low 32 bits, so instances agree on a trace. */
  const ratioSampled = (traceId: string) => cfg.sampleRatio >= 1 || (cfg.sampleRatio > 0 && parseInt(traceId.slice(24), 16) < threshold);

  function decide(headers: Record<string, string | string[] | undefined>, scheme: string): TraceState {
    const parent = cfg.acceptParent ? parseTraceparent(headers.traceparent) : null;
    const traceId = parent?.traceId ?? ids.hex(16);
    const ts = headers.tracestate;
    return {
      traceId,
      spanId: ids.hex(8),
      parent,
      tracestate: parent ? (Array.isArray(ts) ? ts.join(',') : ts) : undefined,
      sampled: parent && cfg.parentBased ? parent.sampled : ratioSampled(traceId),
      scheme,
    };
  }

  function record(rec: RequestRecord): void {
    let st = states.get(rec.ctx);
    if (st === undefined) {
      // Answered before this plugin's onRequest ran (a WAF block, a rate limit): still one trace.
      if (exclude !== null && exclude.test(rec.path)) return;
      st = decide(rec.requestHeaders, 'http');
    }
    if (!st.sampled) return;
    let parentCtx: Context = ROOT_CONTEXT;
    if (st.parent) {
      parentCtx = trace.setSpanContext(ROOT_CONTEXT, {
        traceId: st.traceId,
        spanId: st.parent.spanId,
        traceFlags: TraceFlags.SAMPLED,
        isRemote: true,
        ...(st.tracestate ? { traceState: createTraceState(st.tracestate) } : {}),
      });
    }
    const attributes: Attributes = {
      [ATTR_HTTP_REQUEST_METHOD]: rec.method,
      [ATTR_URL_PATH]: rec.path,
      [ATTR_URL_SCHEME]: st.scheme,
      [ATTR_SERVER_ADDRESS]: rec.host,
      [ATTR_CLIENT_ADDRESS]: rec.remoteAddress,
      [ATTR_HTTP_RESPONSE_STATUS_CODE]: rec.status,
      'bext.group': rec.group,
      'bext.request_id': rec.id,
    };
    if (rec.route) attributes[ATTR_HTTP_ROUTE] = rec.route;
    const ua = rec.requestHeaders['user-agent'];
    if (typeof ua === 'string') attributes[ATTR_USER_AGENT_ORIGINAL] = ua;
    preset.traceId = st.traceId;
    preset.spanId = st.spanId;
    const root = tracer.startSpan(rec.route ? `${rec.method} ${rec.route}` : rec.method, { kind: SpanKind.SERVER, startTime: rec.time, attributes }, parentCtx);
    preset.traceId = preset.spanId = null;
    if (rec.status >= 500) root.setStatus({ code: SpanStatusCode.ERROR });
    spans++;
    if (cfg.hookSpans && rec.timings.length) {
      const ctx = trace.setSpan(ROOT_CONTEXT, root);
      for (const t of rec.timings) {
        const start = rec.time + t.startMs;
        const child = tracer.startSpan(`${t.plugin} ${t.hook}`, { kind: SpanKind.INTERNAL, startTime: start, attributes: { 'bext.plugin': t.plugin, 'bext.hook': t.hook } }, ctx);
        if (t.error) child.setStatus({ code: SpanStatusCode.ERROR, message: t.error });
        child.end(start + t.durMs);
        spans++;
      }
    }
    root.end(rec.time + rec.durationMs);
  }

  const stop = kernel.observeRequests(record);

  const reported = { spans: 0, exported: 0, failed: 0 };
  const metrics = setInterval(() => {
    const d = (k: keyof typeof reported, v: number) => {
      const n = v - reported[k];
      reported[k] = v;
      return n;
    };
    host.metric('spans_total', d('spans', spans), {}, 'counter');
    host.metric('spans_exported_total', d('exported', exporter.exported), {}, 'counter');
    host.metric('spans_export_failed_total', d('failed', exporter.failed), {}, 'counter');
  }, 1000);
  metrics.unref();

  return {
    onRequest(req: TrustedRequest): RequestDecision {
      if (exclude !== null && exclude.test(req.path)) return undefined;
      const st = decide(req.headers, req.scheme);
      states.set(req.ctx, st);
      const ctx = { traceId: st.traceId };
      if (!cfg.propagate) return { action: 'continue', ctx };
      // The upstream's parent is this request's server span.
      return { action: 'continue', ctx, setHeaders: { traceparent: `00-${st.traceId}-${st.spanId}-${st.sampled ? '01' : '00'}` } };
    },
    async dispose() {
      stop();
      clearInterval(metrics);
      // The kernel gives dispose 5 s; a collector that is down must not use them all.
      let timer: NodeJS.Timeout | undefined;
      const limit = new Promise<void>((r) => (timer = setTimeout(r, Math.min(cfg.batch.exportTimeoutMs, 3000))));
      await Promise.race([provider.shutdown().catch((e: unknown) => host.log('warn', 'tracing: final export failed', { error: (e as Error)?.message ?? String(e) })), limit]);
      clearTimeout(timer);
    },
  };
});
