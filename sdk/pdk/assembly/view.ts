/**
 * A read-only view of a JSON object or array in UTF-8 bytes, indexed on
 * first use (one pass, offsets only) and decoded only where asked, so a
 * hook that reads the path never pays for decoding every header.
 */
import { Value, parse } from "./json";

@inline function at(base: usize, i: i32): i32 { return <i32>load<u8>(base + <usize>i); }

function skipWs(base: usize, p: i32, end: i32): i32 {
  while (p < end) {
    const c = at(base, p);
    if (c != 0x20 && c != 0x0a && c != 0x0d && c != 0x09) break;
    p++;
  }
  return p;
}

const ONES: u64 = 0x0101010101010101;
const HIGHS: u64 = 0x8080808080808080;

/** `p` at an opening quote; returns the offset after the closing quote, or -1. */
function skipString(base: usize, p: i32, end: i32): i32 {
  p++;
  while (p < end) {
    // Eight bytes at a time: the lowest byte equal to '"' or '\\' stops the scan.
    while (p + 8 <= end) {
      const x = load<u64>(base + <usize>p);
      const q = x ^ 0x2222222222222222;
      const b = x ^ 0x5c5c5c5c5c5c5c5c;
      const m = ((q - ONES) & ~q & HIGHS) | ((b - ONES) & ~b & HIGHS);
      if (m != 0) { p += <i32>(ctz(m) >> 3); break; }
      p += 8;
    }
    if (p >= end) return -1;
    const c = at(base, p);
    if (c == 0x22) return p + 1;
    p += c == 0x5c ? 2 : 1;
  }
  return -1; // unreachable: the loop returns
}

/** Returns the offset after the value starting at `p`, or -1. */
function skipValue(base: usize, p: i32, end: i32): i32 {
  if (p >= end) return -1;
  const c = at(base, p);
  if (c == 0x22) return skipString(base, p, end);
  if (c == 0x7b || c == 0x5b) {
    let depth = 0;
    while (p < end) {
      const d = at(base, p);
      if (d == 0x22) {
        p = skipString(base, p, end);
        if (p < 0) return -1;
        continue;
      }
      if (d == 0x7b || d == 0x5b) depth++;
      else if (d == 0x7d || d == 0x5d) {
        depth--;
        if (depth == 0) return p + 1;
      }
      p++;
    }
    return -1;
  }
  while (p < end) {
    const d = at(base, p);
    if (d == 0x2c || d == 0x7d || d == 0x5d || d == 0x20 || d == 0x0a || d == 0x0d || d == 0x09) break;
    p++;
  }
  return p;
}

function hexValue(c: i32): i32 {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  return -1;
}

/** Decodes the JSON string whose contents (without quotes) are bytes [from, to). */
function decodeString(base: usize, from: i32, to: i32): string {
  let escaped = false;
  for (let i = from; i < to; i++) if (at(base, i) == 0x5c) { escaped = true; break; }
  if (!escaped) return String.UTF8.decodeUnsafe(base + <usize>from, <usize>(to - from));
  const parts = new Array<string>();
  let run = from;
  let i = from;
  while (i < to) {
    if (at(base, i) != 0x5c) { i++; continue; }
    if (i > run) parts.push(String.UTF8.decodeUnsafe(base + <usize>run, <usize>(i - run)));
    const e = i + 1 < to ? at(base, i + 1) : 0;
    i += 2;
    if (e == 0x6e) parts.push("\n");
    else if (e == 0x74) parts.push("\t");
    else if (e == 0x72) parts.push("\r");
    else if (e == 0x62) parts.push("\b");
    else if (e == 0x66) parts.push("\f");
    else if (e == 0x75 && i + 4 <= to) {
      let u = 0;
      for (let k = 0; k < 4; k++) u = (u << 4) | hexValue(at(base, i + k));
      i += 4;
      parts.push(String.fromCharCode(u < 0 ? 0xfffd : u));
    } else parts.push(String.fromCharCode(e));
    run = i;
  }
  if (run < to) parts.push(String.UTF8.decodeUnsafe(base + <usize>run, <usize>(to - run)));
  return parts.join("");
}

let emptyBytes: ArrayBuffer | null = null;

export class JsonView {
  /** Per member: key start, key end (inside the quotes; 0,0 for arrays), value start, value end. */
  private idx: Array<i32> | null = null;

  constructor(public buf: ArrayBuffer, public start: i32, public end: i32) {}

  /** An empty object. */
  static empty(): JsonView {
    let b = emptyBytes;
    if (b === null) { b = String.UTF8.encode("{}"); emptyBytes = b; }
    return new JsonView(b, 0, 2);
  }

  /** A view of a whole buffer (which must hold one JSON object or array). */
  static of(buf: ArrayBuffer): JsonView {
    const base = changetype<usize>(buf);
    const s = skipWs(base, 0, buf.byteLength);
    return new JsonView(buf, s, buf.byteLength);
  }

  @inline private get base(): usize { return changetype<usize>(this.buf); }

  get isArray(): bool { return this.start < this.end && at(this.base, this.start) == 0x5b; }

  private index(): Array<i32> {
    let idx = this.idx;
    if (idx !== null) return idx;
    idx = new Array<i32>();
    this.idx = idx;
    const base = this.base;
    const end = this.end;
    if (this.start >= end) return idx;
    const open = at(base, this.start);
    if (open != 0x7b && open != 0x5b) return idx;
    const isObj = open == 0x7b;
    let p = skipWs(base, this.start + 1, end);
    if (p < end && at(base, p) == (isObj ? 0x7d : 0x5d)) return idx;
    while (p < end) {
      let ks = 0, ke = 0;
      if (isObj) {
        if (at(base, p) != 0x22) break;
        const after = skipString(base, p, end);
        if (after < 0) break;
        ks = p + 1;
        ke = after - 1;
        p = skipWs(base, after, end);
        if (p >= end || at(base, p) != 0x3a) break;
        p = skipWs(base, p + 1, end);
      }
      const vs = p;
      const ve = skipValue(base, p, end);
      if (ve < 0) break;
      idx.push(ks); idx.push(ke); idx.push(vs); idx.push(ve);
      p = skipWs(base, ve, end);
      if (p >= end) break;
      const c = at(base, p);
      if (c != 0x2c) break;
      p = skipWs(base, p + 1, end);
    }
    return idx;
  }

  /** Number of members (object) or items (array). */
  get length(): i32 { return this.index().length >> 2; }

  private keyEquals(ks: i32, ke: i32, key: string): bool {
    const base = this.base;
    const n = key.length;
    if (ke - ks == n) {
      let ascii = true;
      for (let i = 0; i < n; i++) {
        const c = <i32>key.charCodeAt(i);
        if (c >= 0x80) { ascii = false; break; }
        if (at(base, ks + i) != c) return false;
      }
      if (ascii) return true;
    }
    // Escapes or non-ASCII: compare decoded.
    for (let i = ks; i < ke; i++) {
      const c = at(base, i);
      if (c == 0x5c || c >= 0x80) return decodeString(base, ks, ke) == key;
    }
    return false;
  }

  /** Slot of a member by key, or -1. */
  find(key: string): i32 {
    const idx = this.index();
    for (let i = 0, n = idx.length; i < n; i += 4) {
      if (this.keyEquals(unchecked(idx[i]), unchecked(idx[i + 1]), key)) return i >> 2;
    }
    return -1;
  }

  has(key: string): bool { return this.find(key) >= 0; }

  /** Key of member `i`. */
  keyAt(i: i32): string {
    const idx = this.index();
    if (i < 0 || (i << 2) >= idx.length) return "";
    return decodeString(this.base, idx[i << 2], idx[(i << 2) + 1]);
  }

  /** Member (or item) `i` as a string, or null when it is not a JSON string. */
  stringAt(i: i32): string | null {
    const idx = this.index();
    if (i < 0 || (i << 2) >= idx.length) return null;
    const vs = idx[(i << 2) + 2], ve = idx[(i << 2) + 3];
    if (at(this.base, vs) != 0x22) return null;
    return decodeString(this.base, vs + 1, ve - 1);
  }

  /** Member (or item) `i` as a view, or null when it is not an object or array. */
  viewAt(i: i32): JsonView | null {
    const idx = this.index();
    if (i < 0 || (i << 2) >= idx.length) return null;
    const vs = idx[(i << 2) + 2];
    const c = at(this.base, vs);
    if (c != 0x7b && c != 0x5b) return null;
    return new JsonView(this.buf, vs, idx[(i << 2) + 3]);
  }

  /** JSON text of member (or item) `i`. */
  rawAt(i: i32): string | null {
    const idx = this.index();
    if (i < 0 || (i << 2) >= idx.length) return null;
    const vs = idx[(i << 2) + 2];
    return String.UTF8.decodeUnsafe(this.base + <usize>vs, <usize>(idx[(i << 2) + 3] - vs));
  }

  getString(key: string): string | null { return this.stringAt(this.find(key)); }
  getView(key: string): JsonView | null { return this.viewAt(this.find(key)); }
  /** JSON text of a member, or null when absent. */
  getRaw(key: string): string | null { return this.rawAt(this.find(key)); }

  getNumber(key: string, fallback: f64 = 0): f64 {
    const raw = this.getRaw(key);
    if (raw === null) return fallback;
    const c = raw.charCodeAt(0);
    if (c != 0x2d && (c < 0x30 || c > 0x39)) return fallback;
    return parseFloat(raw);
  }

  getBool(key: string, fallback: bool = false): bool {
    const raw = this.getRaw(key);
    if (raw == "true") return true;
    if (raw == "false") return false;
    return fallback;
  }

  /** A member parsed into a Value, or null when absent. */
  getValue(key: string): Value | null {
    const raw = this.getRaw(key);
    return raw === null ? null : parse(raw);
  }

  /** The whole object (or array) as JSON text. */
  toJSON(): string { return String.UTF8.decodeUnsafe(this.base + <usize>this.start, <usize>(this.end - this.start)); }

  /** The whole object (or array) parsed into a Value. */
  toValue(): Value {
    const v = parse(this.toJSON());
    return v !== null ? v : Value.null();
  }
}
