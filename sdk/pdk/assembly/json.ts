/**
 * A small JSON reader and writer: enough for request projections, decisions
 * and host-function payloads. Numbers are f64; objects keep key order.
 */

export enum Kind { Null, Bool, Num, Str, Arr, Obj }

/** A parsed JSON value. */
export class Value {
  kind: Kind = Kind.Null;
  b: bool = false;
  n: f64 = 0;
  s: string = "";
  items: Array<Value> | null = null;
  keys: Array<string> | null = null;

  static null(): Value { return new Value(); }
  static bool(b: bool): Value { const v = new Value(); v.kind = Kind.Bool; v.b = b; return v; }
  static num(n: f64): Value { const v = new Value(); v.kind = Kind.Num; v.n = n; return v; }
  static str(s: string): Value { const v = new Value(); v.kind = Kind.Str; v.s = s; return v; }

  get isNull(): bool { return this.kind == Kind.Null; }
  get isString(): bool { return this.kind == Kind.Str; }
  get isNumber(): bool { return this.kind == Kind.Num; }
  get isBool(): bool { return this.kind == Kind.Bool; }
  get isArray(): bool { return this.kind == Kind.Arr; }
  get isObject(): bool { return this.kind == Kind.Obj; }

  /** Number of array items or object members. */
  get length(): i32 {
    const items = this.items;
    return items === null ? 0 : items.length;
  }

  /** Member of an object, or null. */
  get(key: string): Value | null {
    const keys = this.keys;
    const items = this.items;
    if (this.kind != Kind.Obj || keys === null || items === null) return null;
    for (let i = 0, n = keys.length; i < n; i++) if (unchecked(keys[i]) == key) return unchecked(items[i]);
    return null;
  }

  /** Array item, or null. */
  at(i: i32): Value | null {
    const items = this.items;
    if (this.kind != Kind.Arr || items === null || i < 0 || i >= items.length) return null;
    return unchecked(items[i]);
  }

  /** Key of the i-th object member. */
  keyAt(i: i32): string {
    const keys = this.keys;
    return keys === null || i < 0 || i >= keys.length ? "" : unchecked(keys[i]);
  }

  /** Value of the i-th object member (or array item). */
  valueAt(i: i32): Value {
    const items = this.items;
    return items === null || i < 0 || i >= items.length ? Value.null() : unchecked(items[i]);
  }

  /** A string member, or `fallback` when absent or not a string. */
  getString(key: string, fallback: string = ""): string {
    const v = this.get(key);
    return v !== null && v.kind == Kind.Str ? v.s : fallback;
  }

  /** A numeric member, or `fallback`. */
  getNumber(key: string, fallback: f64 = 0): f64 {
    const v = this.get(key);
    return v !== null && v.kind == Kind.Num ? v.n : fallback;
  }

  /** A boolean member, or `fallback`. */
  getBool(key: string, fallback: bool = false): bool {
    const v = this.get(key);
    return v !== null && v.kind == Kind.Bool ? v.b : fallback;
  }

  /** Serialises back to JSON. */
  toJSON(): string {
    const w = new Writer();
    w.value(this);
    return w.toString();
  }
}

const MAX_DEPTH = 64;

class Parser {
  pos: i32 = 0;
  ok: bool = true;
  constructor(public src: string) {}

  @inline code(i: i32): i32 { return <i32>load<u16>(changetype<usize>(this.src) + (<usize>i << 1)); }

  ws(): void {
    const n = this.src.length;
    while (this.pos < n) {
      const c = this.code(this.pos);
      if (c == 0x20 || c == 0x0a || c == 0x0d || c == 0x09) this.pos++;
      else break;
    }
  }

  fail(): Value { this.ok = false; return Value.null(); }

  literal(word: string): bool {
    if (this.src.length - this.pos < word.length) return false;
    for (let i = 0; i < word.length; i++) if (this.code(this.pos + i) != word.charCodeAt(i)) return false;
    this.pos += word.length;
    return true;
  }

  value(depth: i32): Value {
    if (depth > MAX_DEPTH) return this.fail();
    this.ws();
    if (this.pos >= this.src.length) return this.fail();
    const c = this.code(this.pos);
    if (c == 0x7b) return this.object(depth);
    if (c == 0x5b) return this.array(depth);
    if (c == 0x22) { const s = this.string(); return this.ok ? Value.str(s) : Value.null(); }
    if (c == 0x74) return this.literal("true") ? Value.bool(true) : this.fail();
    if (c == 0x66) return this.literal("false") ? Value.bool(false) : this.fail();
    if (c == 0x6e) return this.literal("null") ? Value.null() : this.fail();
    return this.number();
  }

  object(depth: i32): Value {
    this.pos++;
    const v = new Value();
    v.kind = Kind.Obj;
    const keys = new Array<string>();
    const items = new Array<Value>();
    v.keys = keys;
    v.items = items;
    this.ws();
    if (this.pos < this.src.length && this.code(this.pos) == 0x7d) { this.pos++; return v; }
    while (this.ok) {
      this.ws();
      if (this.pos >= this.src.length || this.code(this.pos) != 0x22) return this.fail();
      const k = this.string();
      this.ws();
      if (this.pos >= this.src.length || this.code(this.pos) != 0x3a) return this.fail();
      this.pos++;
      const item = this.value(depth + 1);
      if (!this.ok) return item;
      keys.push(k);
      items.push(item);
      this.ws();
      if (this.pos >= this.src.length) return this.fail();
      const c = this.code(this.pos++);
      if (c == 0x7d) return v;
      if (c != 0x2c) return this.fail();
    }
    return v;
  }

  array(depth: i32): Value {
    this.pos++;
    const v = new Value();
    v.kind = Kind.Arr;
    const items = new Array<Value>();
    v.items = items;
    this.ws();
    if (this.pos < this.src.length && this.code(this.pos) == 0x5d) { this.pos++; return v; }
    while (this.ok) {
      const item = this.value(depth + 1);
      if (!this.ok) return item;
      items.push(item);
      this.ws();
      if (this.pos >= this.src.length) return this.fail();
      const c = this.code(this.pos++);
      if (c == 0x5d) return v;
      if (c != 0x2c) return this.fail();
    }
    return v;
  }

  hex4(): i32 {
    if (this.pos + 4 > this.src.length) { this.ok = false; return 0; }
    let r = 0;
    for (let i = 0; i < 4; i++) {
      const c = this.code(this.pos++);
      let d: i32;
      if (c >= 0x30 && c <= 0x39) d = c - 0x30;
      else if (c >= 0x61 && c <= 0x66) d = c - 0x57;
      else if (c >= 0x41 && c <= 0x46) d = c - 0x37;
      else { this.ok = false; return 0; }
      r = (r << 4) | d;
    }
    return r;
  }

  string(): string {
    this.pos++;
    const start = this.pos;
    const n = this.src.length;
    // Fast path: no escapes.
    while (this.pos < n) {
      const c = this.code(this.pos);
      if (c == 0x22) { const s = this.src.substring(start, this.pos); this.pos++; return s; }
      if (c == 0x5c || c < 0x20) break;
      this.pos++;
    }
    const parts = new Array<string>();
    parts.push(this.src.substring(start, this.pos));
    while (this.pos < n) {
      const c = this.code(this.pos);
      if (c == 0x22) { this.pos++; return parts.join(""); }
      if (c < 0x20) { this.ok = false; return ""; }
      if (c != 0x5c) {
        const from = this.pos;
        while (this.pos < n) {
          const d = this.code(this.pos);
          if (d == 0x22 || d == 0x5c || d < 0x20) break;
          this.pos++;
        }
        parts.push(this.src.substring(from, this.pos));
        continue;
      }
      this.pos++;
      if (this.pos >= n) break;
      const e = this.code(this.pos++);
      if (e == 0x22) parts.push("\"");
      else if (e == 0x5c) parts.push("\\");
      else if (e == 0x2f) parts.push("/");
      else if (e == 0x62) parts.push("\b");
      else if (e == 0x66) parts.push("\f");
      else if (e == 0x6e) parts.push("\n");
      else if (e == 0x72) parts.push("\r");
      else if (e == 0x74) parts.push("\t");
      else if (e == 0x75) {
        const u = this.hex4();
        if (!this.ok) return "";
        parts.push(String.fromCharCode(u));
      } else { this.ok = false; return ""; }
    }
    this.ok = false;
    return "";
  }

  number(): Value {
    const start = this.pos;
    const n = this.src.length;
    if (this.pos < n && this.code(this.pos) == 0x2d) this.pos++;
    let digits = 0;
    while (this.pos < n) {
      const c = this.code(this.pos);
      if ((c >= 0x30 && c <= 0x39) || c == 0x2e || c == 0x65 || c == 0x45 || c == 0x2b || c == 0x2d) { this.pos++; digits++; }
      else break;
    }
    if (digits == 0) return this.fail();
    const x = parseFloat(this.src.substring(start, this.pos));
    if (isNaN(x)) return this.fail();
    return Value.num(x);
  }
}

/** Parses JSON text; null when it is not valid JSON. */
export function parse(src: string): Value | null {
  const p = new Parser(src);
  const v = p.value(0);
  if (!p.ok) return null;
  p.ws();
  return p.pos == src.length ? v : null;
}

/**
 * Builds JSON as UTF-8 bytes in a growing buffer (no intermediate strings).
 * Call `key` before each member value inside an object.
 */
export class Writer {
  private buf: ArrayBuffer = new ArrayBuffer(256);
  private len: i32 = 0;
  private first: Array<bool> = new Array<bool>();
  private afterKey: bool = false;

  /** Address of the bytes written so far (valid until the next write). */
  get ptr(): usize { return changetype<usize>(this.buf); }
  /** Number of bytes written. */
  get length(): i32 { return this.len; }

  private ensure(n: i32): usize {
    const need = this.len + n;
    if (need > this.buf.byteLength) {
      let cap = this.buf.byteLength << 1;
      if (cap < need) cap = need;
      const next = new ArrayBuffer(cap);
      memory.copy(changetype<usize>(next), changetype<usize>(this.buf), <usize>this.len);
      this.buf = next;
    }
    return changetype<usize>(this.buf) + <usize>this.len;
  }

  private byte(b: i32): void {
    store<u8>(this.ensure(1), <u8>b);
    this.len++;
  }

  /** Writes `s` as UTF-8; with `escape`, as the inside of a JSON string literal. */
  private text(s: string, escape: bool): void {
    const n = s.length;
    const src = changetype<usize>(s);
    // Worst case 6 bytes per code unit (\u00XX); reserve once.
    let out = this.ensure(n * 6);
    const begin = out;
    for (let i = 0; i < n; i++) {
      let c = <u32>load<u16>(src + (<usize>i << 1));
      if (c < 0x80) {
        if (escape && (c < 0x20 || c == 0x22 || c == 0x5c)) {
          store<u8>(out++, 0x5c);
          if (c == 0x22 || c == 0x5c) store<u8>(out++, <u8>c);
          else if (c == 0x0a) store<u8>(out++, 0x6e);
          else if (c == 0x0d) store<u8>(out++, 0x72);
          else if (c == 0x09) store<u8>(out++, 0x74);
          else {
            store<u8>(out++, 0x75); store<u8>(out++, 0x30); store<u8>(out++, 0x30);
            store<u8>(out++, <u8>hexDigit(c >> 4)); store<u8>(out++, <u8>hexDigit(c & 15));
          }
        } else store<u8>(out++, <u8>c);
      } else if (c < 0x800) {
        store<u8>(out++, <u8>(0xc0 | (c >> 6)));
        store<u8>(out++, <u8>(0x80 | (c & 63)));
      } else {
        if ((c & 0xfc00) == 0xd800 && i + 1 < n) {
          const d = <u32>load<u16>(src + (<usize>(i + 1) << 1));
          if ((d & 0xfc00) == 0xdc00) {
            c = 0x10000 + ((c & 0x3ff) << 10) + (d & 0x3ff);
            store<u8>(out++, <u8>(0xf0 | (c >> 18)));
            store<u8>(out++, <u8>(0x80 | ((c >> 12) & 63)));
            store<u8>(out++, <u8>(0x80 | ((c >> 6) & 63)));
            store<u8>(out++, <u8>(0x80 | (c & 63)));
            i++;
            continue;
          }
        }
        if ((c & 0xf800) == 0xd800) c = 0xfffd; // a lone surrogate is not valid UTF-8
        store<u8>(out++, <u8>(0xe0 | (c >> 12)));
        store<u8>(out++, <u8>(0x80 | ((c >> 6) & 63)));
        store<u8>(out++, <u8>(0x80 | (c & 63)));
      }
    }
    this.len += <i32>(out - begin);
  }

  private sep(): void {
    if (this.afterKey) { this.afterKey = false; return; }
    const n = this.first.length;
    if (n == 0) return;
    if (unchecked(this.first[n - 1])) unchecked(this.first[n - 1] = false);
    else this.byte(0x2c);
  }

  beginObject(): Writer { this.sep(); this.byte(0x7b); this.first.push(true); return this; }
  endObject(): Writer { this.first.pop(); this.byte(0x7d); return this; }
  beginArray(): Writer { this.sep(); this.byte(0x5b); this.first.push(true); return this; }
  endArray(): Writer { this.first.pop(); this.byte(0x5d); return this; }

  key(k: string): Writer {
    this.sep();
    this.byte(0x22); this.text(k, true); this.byte(0x22); this.byte(0x3a);
    this.afterKey = true;
    return this;
  }

  string(s: string): Writer { this.sep(); this.byte(0x22); this.text(s, true); this.byte(0x22); return this; }
  number(n: f64): Writer { this.sep(); this.text(formatNumber(n), false); return this; }
  int(n: i64): Writer { this.sep(); this.text(n.toString(), false); return this; }
  bool(b: bool): Writer { this.sep(); this.text(b ? "true" : "false", false); return this; }
  null(): Writer { this.sep(); this.text("null", false); return this; }
  /** Inserts already-serialised JSON. */
  raw(json: string): Writer { this.sep(); this.text(json, false); return this; }

  value(v: Value): Writer {
    switch (v.kind) {
      case Kind.Null: return this.null();
      case Kind.Bool: return this.bool(v.b);
      case Kind.Num: return this.number(v.n);
      case Kind.Str: return this.string(v.s);
      case Kind.Arr: {
        this.beginArray();
        for (let i = 0; i < v.length; i++) this.value(v.valueAt(i));
        return this.endArray();
      }
      default: {
        this.beginObject();
        for (let i = 0; i < v.length; i++) { this.key(v.keyAt(i)); this.value(v.valueAt(i)); }
        return this.endObject();
      }
    }
  }

  toString(): string { return String.UTF8.decodeUnsafe(changetype<usize>(this.buf), <usize>this.len); }
}

@inline function hexDigit(d: u32): u32 { return d < 10 ? 0x30 + d : 0x57 + d; }

function formatNumber(n: f64): string {
  if (!isFinite(n)) return "null";
  if (n == Math.floor(n) && Math.abs(n) < 9007199254740992) return (<i64>n).toString();
  return n.toString();
}

const HEX = "0123456789abcdef";

/** A JSON string literal for `s`, quotes included. */
export function quote(s: string): string {
  const n = s.length;
  let clean = true;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c == 0x22 || c == 0x5c) { clean = false; break; }
  }
  if (clean) return "\"" + s + "\"";
  const parts = new Array<string>();
  parts.push("\"");
  let from = 0;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x20 && c != 0x22 && c != 0x5c) continue;
    if (i > from) parts.push(s.substring(from, i));
    from = i + 1;
    if (c == 0x22) parts.push("\\\"");
    else if (c == 0x5c) parts.push("\\\\");
    else if (c == 0x0a) parts.push("\\n");
    else if (c == 0x0d) parts.push("\\r");
    else if (c == 0x09) parts.push("\\t");
    else parts.push("\\u00" + HEX.charAt(c >> 4) + HEX.charAt(c & 15));
  }
  if (from < n) parts.push(s.substring(from));
  parts.push("\"");
  return parts.join("");
}
