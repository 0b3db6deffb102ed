/**
 * The capture ring: recent requests kept as columns (typed arrays for
 * numbers, arrays of the strings the kernel already made), not as the
 * record objects themselves. Holding records (or even only their header
 * maps) alive measured at several microseconds of extra garbage-collector
 * work per request; copying references into preallocated columns costs
 * tens of nanoseconds. Headers are copied the same way, name and value
 * references into fixed slots, for the newest `detail` requests.
 */
import type { HookTiming, RequestRecord } from '../../plugin-api/index.js';

/** Hook calls kept per request; a request with more keeps its first ones. */
const MAX_TIMINGS = 32;
/** Header fields kept per request and per response; more are counted, not kept. */
const MAX_HEADERS = 40;

type HeaderValue = string | string[] | number;

/** A captured request, rebuilt in the shape of a kernel record for reading. */
export interface Captured extends RequestRecord {
  /** Whether the header maps were still kept (only the newest `detail` requests keep them). */
  headersKept: boolean;
}

export class CaptureRing {
  readonly size: number;
  #detail: number;
  #next = 0;
  #total = 0;
  #id: string[];
  #method: string[];
  #path: string[];
  #host: string[];
  #route: (string | undefined)[];
  #group: string[];
  #remote: string[];
  #cache: (string | undefined)[];
  #waf: unknown[];
  #trace: (string | undefined)[];
  #time: Float64Array;
  #dur: Float64Array;
  #status: Uint16Array;
  #nTimings: Uint8Array;
  #tId: Uint16Array;
  #tStart: Float32Array;
  #tDur: Float32Array;
  /** Error codes by timing slot; failures are rare. */
  #tErr = new Map<number, string>();
  #hookIds = new Map<string, Map<string, number>>();
  #hookNames: [string, string][] = [];
  /** Global sequence number of the request in each slot. */
  #seq: Float64Array;
  /** Header slots, one per `detail` request: names and values by position, and counts. */
  #reqNames: string[];
  #reqValues: HeaderValue[];
  #reqCount: Uint8Array;
  #resNames: string[];
  #resValues: HeaderValue[];
  #resCount: Uint8Array;

  constructor(size: number, detail: number) {
    this.size = size;
    this.#detail = Math.min(detail, size);
    const strings = () => new Array<string>(size).fill('');
    this.#id = strings();
    this.#method = strings();
    this.#path = strings();
    this.#host = strings();
    this.#group = strings();
    this.#remote = strings();
    this.#route = new Array(size).fill(undefined);
    this.#cache = new Array(size).fill(undefined);
    this.#waf = new Array(size).fill(undefined);
    this.#trace = new Array(size).fill(undefined);
    this.#seq = new Float64Array(size);
    const slots = this.#detail * MAX_HEADERS;
    this.#reqNames = new Array<string>(slots).fill('');
    this.#reqValues = new Array<HeaderValue>(slots).fill('');
    this.#resNames = new Array<string>(slots).fill('');
    this.#resValues = new Array<HeaderValue>(slots).fill('');
    this.#reqCount = new Uint8Array(this.#detail);
    this.#resCount = new Uint8Array(this.#detail);
    this.#time = new Float64Array(size);
    this.#dur = new Float64Array(size);
    this.#status = new Uint16Array(size);
    this.#nTimings = new Uint8Array(size);
    this.#tId = new Uint16Array(size * MAX_TIMINGS);
    this.#tStart = new Float32Array(size * MAX_TIMINGS);
    this.#tDur = new Float32Array(size * MAX_TIMINGS);
  }

  get total(): number {
    return this.#total;
  }

  #hookId(plugin: string, hook: string): number {
    let hooks = this.#hookIds.get(plugin);
    if (!hooks) this.#hookIds.set(plugin, (hooks = new Map()));
    let id = hooks.get(hook);
    if (id === undefined) {
      id = this.#hookNames.length;
      this.#hookNames.push([plugin, hook]);
      hooks.set(hook, id);
    }
    return id;
  }

  push(rec: RequestRecord): void {
    const i = this.#next;
    this.#next = i + 1 === this.size ? 0 : i + 1;
    this.#total++;
    this.#id[i] = rec.id;
    this.#method[i] = rec.method;
    this.#path[i] = rec.path;
    this.#host[i] = rec.host;
    this.#route[i] = rec.route;
    this.#group[i] = rec.group;
    this.#remote[i] = rec.remoteAddress;
    this.#time[i] = rec.time;
    this.#dur[i] = rec.durationMs;
    this.#status[i] = rec.status;
    const cs = rec.responseHeaders['cache-status'];
    this.#cache[i] = cs === undefined ? undefined : Array.isArray(cs) ? cs.join(', ') : String(cs);
    const ctx = rec.ctx;
    this.#waf[i] = ctx.waf;
    this.#trace[i] = typeof ctx.traceId === 'string' ? ctx.traceId : undefined;
    const t = rec.timings;
    const n = Math.min(t.length, MAX_TIMINGS);
    const base = i * MAX_TIMINGS;
    if (this.#tErr.size) for (let j = 0; j < MAX_TIMINGS; j++) this.#tErr.delete(base + j);
    for (let j = 0; j < n; j++) {
      const h = t[j]!;
      this.#tId[base + j] = this.#hookId(h.plugin, h.hook);
      this.#tStart[base + j] = h.startMs;
      this.#tDur[base + j] = h.durMs;
      if (h.error !== undefined) this.#tErr.set(base + j, h.error);
    }
    this.#nTimings[i] = n;
    this.#seq[i] = this.#total;
    if (this.#detail > 0) {
      const slot = this.#total % this.#detail;
      this.#reqCount[slot] = copyHeaders(rec.requestHeaders, this.#reqNames, this.#reqValues, slot * MAX_HEADERS);
      this.#resCount[slot] = copyHeaders(rec.responseHeaders, this.#resNames, this.#resValues, slot * MAX_HEADERS);
    }
  }

  #headers(names: string[], values: HeaderValue[], count: number, at: number): Record<string, HeaderValue> {
    const out: Record<string, HeaderValue> = {};
    for (let j = 0; j < count; j++) out[names[at + j]!] = values[at + j]!;
    return out;
  }

  #view(i: number): Captured {
    const timings: HookTiming[] = [];
    const base = i * MAX_TIMINGS;
    for (let j = 0; j < this.#nTimings[i]!; j++) {
      const [plugin, hook] = this.#hookNames[this.#tId[base + j]!]!;
      const error = this.#tErr.get(base + j);
      timings.push({ plugin, hook, startMs: this.#tStart[base + j]!, durMs: this.#tDur[base + j]!, ...(error ? { error } : {}) });
    }
    const seq = this.#seq[i]!;
    const kept = this.#detail > 0 && this.#total - seq < this.#detail;
    const slot = kept ? seq % this.#detail : 0;
    const req = kept ? this.#headers(this.#reqNames, this.#reqValues, this.#reqCount[slot]!, slot * MAX_HEADERS) : undefined;
    const res = kept ? this.#headers(this.#resNames, this.#resValues, this.#resCount[slot]!, slot * MAX_HEADERS) : undefined;
    const cache = this.#cache[i];
    const ctx: Record<string, unknown> = {};
    if (this.#waf[i] !== undefined) ctx.waf = this.#waf[i];
    if (this.#trace[i] !== undefined) ctx.traceId = this.#trace[i];
    return {
      id: this.#id[i]!,
      time: this.#time[i]!,
      method: this.#method[i]!,
      path: this.#path[i]!,
      host: this.#host[i]!,
      ...(this.#route[i] !== undefined ? { route: this.#route[i] } : {}),
      group: this.#group[i]!,
      status: this.#status[i]!,
      durationMs: this.#dur[i]!,
      remoteAddress: this.#remote[i]!,
      requestHeaders: (req ?? {}) as RequestRecord['requestHeaders'],
      responseHeaders: res ?? (cache !== undefined ? { 'cache-status': cache } : {}),
      ctx,
      timings,
      headersKept: kept,
    };
  }

  /** Newest first. */
  *newest(): Generator<Captured> {
    const n = Math.min(this.#total, this.size);
    for (let k = 1; k <= n; k++) yield this.#view((this.#next - k + this.size) % this.size);
  }
}

/** Copies a header map's name and value references into slots from `at`; returns how many. */
function copyHeaders(h: Record<string, HeaderValue | undefined>, names: string[], values: HeaderValue[], at: number): number {
  let n = 0;
  for (const k in h) {
    const v = h[k];
    if (v === undefined) continue;
    if (n === MAX_HEADERS) break;
    names[at + n] = k;
    values[at + n] = v;
    n++;
  }
  return n;
}
