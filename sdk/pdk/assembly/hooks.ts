/**
 * Hook inputs and decisions. A hook export reads its input with one of the
 * `read*` functions and ends with a decision (which sets the output) or
 * `pass()` (no output: continue unchanged).
 */
import { errorString, inputString, outputString } from "./extism";
import { Kind, Value, Writer, parse } from "./json";

let emptyObject: Value | null = null;
function empty(): Value {
  let e = emptyObject;
  if (e === null) { e = parse("{}")!; emptyObject = e; }
  return e;
}

function parseInput(): Value {
  const v = parse(inputString());
  return v !== null && v.kind == Kind.Obj ? v : empty();
}

/** A request as the plugin's manifest `needs` projected it (absent fields read as ""). */
export class Request {
  constructor(public raw: Value) {}
  get id(): string { return this.raw.getString("id"); }
  get method(): string { return this.raw.getString("method"); }
  get path(): string { return this.raw.getString("path"); }
  get query(): string { return this.raw.getString("query"); }
  get host(): string { return this.raw.getString("host"); }
  get scheme(): string { return this.raw.getString("scheme"); }
  get remoteAddress(): string { return this.raw.getString("remoteAddress"); }
  get httpVersion(): string { return this.raw.getString("httpVersion"); }
  get route(): string { return this.raw.getString("route"); }
  /** The body, when `needs` has "body" and one was sent. */
  get body(): string | null {
    const b = this.raw.get("body");
    return b !== null && b.kind == Kind.Str ? b.s : null;
  }
  /** A header by lower-case name (the first value of a repeated header), or null. */
  header(name: string): string | null {
    const h = this.raw.get("headers");
    if (h === null) return null;
    const v = h.get(name);
    if (v === null) return null;
    if (v.kind == Kind.Str) return v.s;
    if (v.kind == Kind.Arr && v.length > 0 && v.valueAt(0).kind == Kind.Str) return v.valueAt(0).s;
    return null;
  }
  /** All headers (an object; empty when not projected). */
  get headers(): Value {
    const h = this.raw.get("headers");
    return h !== null ? h : empty();
  }
  /** A route parameter (onRoute), or null. */
  param(name: string): string | null {
    const p = this.raw.get("params");
    if (p === null) return null;
    const v = p.get(name);
    return v !== null && v.kind == Kind.Str ? v.s : null;
  }
  /** A value earlier plugins put on `req.ctx`, or null. */
  ctx(key: string): Value | null {
    const c = this.raw.get("ctx");
    return c === null ? null : c.get(key);
  }
}

/** Input of onRequest, onRoute and onRender. */
export function readRequest(): Request {
  return new Request(parseInput());
}

/** The response head an onResponse hook sees. */
export class ResponseHead {
  constructor(public raw: Value) {}
  get status(): i32 { return <i32>this.raw.getNumber("status"); }
  header(name: string): string | null {
    const h = this.raw.get("headers");
    if (h === null) return null;
    const v = h.get(name);
    if (v === null) return null;
    if (v.kind == Kind.Str) return v.s;
    if (v.kind == Kind.Arr && v.length > 0 && v.valueAt(0).kind == Kind.Str) return v.valueAt(0).s;
    return null;
  }
  /** The body, when `needs` has "response.body" and it was not streamed. */
  get body(): string | null {
    const b = this.raw.get("body");
    return b !== null && b.kind == Kind.Str ? b.s : null;
  }
}

/** Input of onResponse: the request and the response head. */
export class ResponseInput {
  constructor(public req: Request, public res: ResponseHead) {}
}

export function readResponse(): ResponseInput {
  const v = parseInput();
  const req = v.get("req");
  const res = v.get("res");
  return new ResponseInput(new Request(req !== null ? req : empty()), new ResponseHead(res !== null ? res : empty()));
}

/** Input of onPublish. */
export class Message {
  constructor(public topic: string, public data: Value, public publisher: string) {}
}

export function readMessage(): Message {
  const v = parseInput();
  const d = v.get("data");
  return new Message(v.getString("topic"), d !== null ? d : Value.null(), v.getString("publisher"));
}

/** Input of onConnect. */
export class Connection {
  constructor(public raw: Value) {}
  get remoteAddress(): string { return this.raw.getString("remoteAddress"); }
  get remotePort(): i32 { return <i32>this.raw.getNumber("remotePort"); }
  get localPort(): i32 { return <i32>this.raw.getNumber("localPort"); }
  get servername(): string { return this.raw.getString("servername"); }
}

export function readConnection(): Connection {
  return new Connection(parseInput());
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
    outputString(w.toString());
    return 0;
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
    outputString(w.toString());
    return 0;
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
    outputString(w.toString());
    return 0;
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
  outputString(w.endObject().toString());
  return 0;
}

/** onPublish: stop the message. */
export function drop(reason: string = ""): i32 {
  const w = new Writer();
  w.beginObject().key("action").string("drop");
  if (reason.length) w.key("reason").string(reason);
  outputString(w.endObject().toString());
  return 0;
}

/** onPublish: replace the message data with `dataJson`. */
export function transform(dataJson: string): i32 {
  const w = new Writer();
  outputString(w.beginObject().key("action").string("transform").key("data").raw(dataJson).endObject().toString());
  return 0;
}

/** onPublish: the message was delivered (to `delivered` subscribers). */
export function deliver(delivered: i32): i32 {
  const w = new Writer();
  outputString(w.beginObject().key("action").string("deliver").key("delivered").int(delivered).endObject().toString());
  return 0;
}

/** Any hook: sets raw JSON as the output (for decisions the helpers do not cover). */
export function outputJson(json: string): i32 {
  outputString(json);
  return 0;
}
