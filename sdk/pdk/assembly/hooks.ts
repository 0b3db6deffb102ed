/**
 * Hook inputs and decisions. A hook export reads its input with one of the
 * `read*` functions and ends with a decision (which sets the output) or
 * `pass()` (no output: continue unchanged).
 */
import { errorString, inputBytes, outputRaw, outputString } from "./io";
import { Value, Writer } from "./json";
import { JsonView } from "./view";

function input(): JsonView {
  const v = JsonView.of(inputBytes());
  return v.isArray ? JsonView.empty() : v;
}

function str(s: string | null): string { return s !== null ? s : ""; }

/** First value of a header in a headers object (a string, or the first of an array). */
function headerIn(h: JsonView | null, name: string): string | null {
  if (h === null) return null;
  const i = h.find(name);
  if (i < 0) return null;
  const s = h.stringAt(i);
  if (s !== null) return s;
  const arr = h.viewAt(i);
  return arr !== null && arr.isArray ? arr.stringAt(0) : null;
}

/**
 * A request as the plugin's manifest `needs` projected it (absent fields
 * read as ""). Fields are decoded from the input bytes on first access.
 */
export class Request {
  private hv: JsonView | null = null;
  private hvRead: bool = false;
  constructor(public raw: JsonView) {}
  get id(): string { return str(this.raw.getString("id")); }
  get method(): string { return str(this.raw.getString("method")); }
  get path(): string { return str(this.raw.getString("path")); }
  get query(): string { return str(this.raw.getString("query")); }
  get host(): string { return str(this.raw.getString("host")); }
  get scheme(): string { return str(this.raw.getString("scheme")); }
  get remoteAddress(): string { return str(this.raw.getString("remoteAddress")); }
  get httpVersion(): string { return str(this.raw.getString("httpVersion")); }
  get route(): string { return str(this.raw.getString("route")); }
  /** The body, when `needs` has "body" and one was sent. */
  get body(): string | null { return this.raw.getString("body"); }
  /** A header by lower-case name (the first value of a repeated header), or null. */
  header(name: string): string | null { return headerIn(this.headersView(), name); }
  /** All headers (an empty object when not projected). */
  get headers(): JsonView {
    const h = this.headersView();
    return h !== null ? h : JsonView.empty();
  }
  private headersView(): JsonView | null {
    if (!this.hvRead) { this.hv = this.raw.getView("headers"); this.hvRead = true; }
    return this.hv;
  }
  /** A route parameter (onRoute), or null. */
  param(name: string): string | null {
    const p = this.raw.getView("params");
    return p === null ? null : p.getString(name);
  }
  /** A value earlier plugins put on `req.ctx`, parsed, or null. */
  ctx(key: string): Value | null {
    const c = this.raw.getView("ctx");
    return c === null ? null : c.getValue(key);
  }
  /** The projected request as JSON text. */
  json(): string { return this.raw.toJSON(); }
}

/** Input of onRequest, onRoute and onRender. */
export function readRequest(): Request {
  return new Request(input());
}

/** The response head an onResponse hook sees. */
export class ResponseHead {
  constructor(public raw: JsonView) {}
  get status(): i32 { return <i32>this.raw.getNumber("status"); }
  header(name: string): string | null { return headerIn(this.raw.getView("headers"), name); }
  /** The body, when `needs` has "response.body" and it was not streamed. */
  get body(): string | null { return this.raw.getString("body"); }
}

/** Input of onResponse: the request and the response head. */
export class ResponseInput {
  constructor(public req: Request, public res: ResponseHead) {}
}

export function readResponse(): ResponseInput {
  const v = input();
  const req = v.getView("req");
  const res = v.getView("res");
  return new ResponseInput(new Request(req !== null ? req : JsonView.empty()), new ResponseHead(res !== null ? res : JsonView.empty()));
}

/** Input of onPublish. */
export class Message {
  constructor(public raw: JsonView) {}
  get topic(): string { return str(this.raw.getString("topic")); }
  get publisher(): string { return str(this.raw.getString("publisher")); }
  /** The message data as JSON text ("null" when absent). */
  get dataJson(): string {
    const d = this.raw.getRaw("data");
    return d !== null ? d : "null";
  }
  /** The message data, parsed. */
  get data(): Value {
    const d = this.raw.getValue("data");
    return d !== null ? d : Value.null();
  }
}

export function readMessage(): Message {
  return new Message(input());
}

/** Input of onConnect. */
export class Connection {
  constructor(public raw: JsonView) {}
  get remoteAddress(): string { return str(this.raw.getString("remoteAddress")); }
  get remotePort(): i32 { return <i32>this.raw.getNumber("remotePort"); }
  get localPort(): i32 { return <i32>this.raw.getNumber("localPort"); }
  get servername(): string { return str(this.raw.getString("servername")); }
}

export function readConnection(): Connection {
  return new Connection(input());
}

/** Input of onSchedule: the task that is due. */
export class Task {
  constructor(public raw: JsonView) {}
  get name(): string { return str(this.raw.getString("name")); }
  /** The tick, in ms since the epoch (the same on every instance of a cluster). */
  get scheduledAt(): f64 { return this.raw.getNumber("scheduledAt"); }
  get firedAt(): f64 { return this.raw.getNumber("firedAt"); }
  /** Runs of this task on this instance, this one included. */
  get run(): i32 { return <i32>this.raw.getNumber("run"); }
}

export function readTask(): Task {
  return new Task(input());
}

function send(w: Writer): i32 {
  outputRaw(w.ptr, w.length);
  return 0;
}

class Pairs {
  names: Array<string> = new Array<string>();
  values: Array<string> = new Array<string>();
  add(n: string, v: string): void { this.names.push(n); this.values.push(v); }
  get size(): i32 { return this.names.length; }
  /** Writes `{"n":"v",...}`; raw values are inserted as JSON. */
  write(w: Writer, raw: bool): void {
    w.beginObject();
    for (let i = 0; i < this.names.length; i++) {
      w.key(unchecked(this.names[i]));
      if (raw) w.raw(unchecked(this.values[i]));
      else w.string(unchecked(this.values[i]));
    }
    w.endObject();
  }
}

/** No decision: the chain goes on unchanged. Returns the export's result code. */
export function pass(): i32 {
  return 0;
}

/** Ends the call with an error (the kernel applies the plugin's failMode). */
export function fail(message: string): i32 {
  errorString(message);
  return 1;
}

/** onRequest: continue, tagging the request. */
export class Continue {
  private set: Pairs = new Pairs();
  private resp: Pairs = new Pairs();
  private ctxs: Pairs = new Pairs();
  /** Adds a header that later plugins and the route see. */
  setHeader(name: string, value: string): Continue { this.set.add(name, value); return this; }
  /** Adds a header to the eventual response. */
  responseHeader(name: string, value: string): Continue { this.resp.add(name, value); return this; }
  /** Merges `key: <json>` into `req.ctx`. */
  ctx(key: string, json: string): Continue { this.ctxs.add(key, json); return this; }
  /** Sets the output and returns 0. */
  done(): i32 {
    const w = new Writer();
    w.beginObject().key("action").string("continue");
    if (this.set.size) { w.key("setHeaders"); this.set.write(w, false); }
    if (this.resp.size) { w.key("responseHeaders"); this.resp.write(w, false); }
    if (this.ctxs.size) { w.key("ctx"); this.ctxs.write(w, true); }
    w.endObject();
    return send(w);
  }
}

export function proceed(): Continue {
  return new Continue();
}

/**
 * A response: from onRequest (`respond`), onRoute or onRender (the
 * `action` field is ignored there).
 */
export class Respond {
  private hs: Pairs = new Pairs();
  private text: string | null = null;
  private base64: bool = false;
  constructor(private status: i32) {}
  header(name: string, value: string): Respond { this.hs.add(name, value); return this; }
  body(text: string): Respond { this.text = text; this.base64 = false; return this; }
  /** A binary body, base64-encoded. */
  bodyBase64(b64: string): Respond { this.text = b64; this.base64 = true; return this; }
  done(): i32 {
    const w = new Writer();
    w.beginObject().key("action").string("respond").key("status").int(this.status);
    if (this.hs.size) { w.key("headers"); this.hs.write(w, false); }
    const t = this.text;
    if (t !== null) w.key(this.base64 ? "bodyBase64" : "body").string(t);
    w.endObject();
    return send(w);
  }
}

export function respond(status: i32, body: string | null = null): Respond {
  const r = new Respond(status);
  if (body !== null) r.body(body);
  return r;
}

/** onRender: let the inner render answer. */
export function next(): i32 {
  outputString("{\"action\":\"next\"}");
  return 0;
}

/** onResponse: change the response head or body. */
export class ResponseEdit {
  private st: i32 = 0;
  private set: Pairs = new Pairs();
  private removed: Array<string> = new Array<string>();
  private text: string | null = null;
  status(code: i32): ResponseEdit { this.st = code; return this; }
  setHeader(name: string, value: string): ResponseEdit { this.set.add(name, value); return this; }
  removeHeader(name: string): ResponseEdit { this.removed.push(name); return this; }
  body(text: string): ResponseEdit { this.text = text; return this; }
  done(): i32 {
    const w = new Writer();
    w.beginObject();
    if (this.st) w.key("status").int(this.st);
    if (this.set.size) { w.key("setHeaders"); this.set.write(w, false); }
    if (this.removed.length) {
      w.key("removeHeaders").beginArray();
      for (let i = 0; i < this.removed.length; i++) w.string(unchecked(this.removed[i]));
      w.endArray();
    }
    const t = this.text;
    if (t !== null) w.key("body").string(t);
    w.endObject();
    return send(w);
  }
}

export function editResponse(): ResponseEdit {
  return new ResponseEdit();
}

/** onConnect: accept the connection. */
export function allow(): i32 {
  outputString("{\"action\":\"allow\"}");
  return 0;
}

/** onConnect: close the socket. */
export function reject(reason: string = ""): i32 {
  const w = new Writer();
  w.beginObject().key("action").string("reject");
  if (reason.length) w.key("reason").string(reason);
  return send(w.endObject());
}

/** onPublish: stop the message. */
export function drop(reason: string = ""): i32 {
  const w = new Writer();
  w.beginObject().key("action").string("drop");
  if (reason.length) w.key("reason").string(reason);
  return send(w.endObject());
}

/** onPublish: replace the message data with `dataJson`. */
export function transform(dataJson: string): i32 {
  return send(new Writer().beginObject().key("action").string("transform").key("data").raw(dataJson).endObject());
}

/** onPublish: the message was delivered (to `delivered` subscribers). */
export function deliver(delivered: i32): i32 {
  return send(new Writer().beginObject().key("action").string("deliver").key("delivered").int(delivered).endObject());
}

/** Any hook: sets raw JSON as the output (for decisions the helpers do not cover). */
export function outputJson(json: string): i32 {
  outputString(json);
  return 0;
}
