/**
 * Splitting a request into the named values the WAF inspects: query and form
 * arguments, cookies, JSON leaves, multipart parts, XML text. Every parser is
 * a forward scan with `indexOf`; none backtracks.
 */
import { urlDecode as importedUrlDecode } from './decode.js';

// Imported bindings are read through accessors once transpiled (tsx); the hot paths use a local copy.
const urlDecode = importedUrlDecode;

/** Receives one value: its name (argument, key, part) and the value. Returns false to stop. */
export type Sink = (name: string, value: string) => boolean;

/** `a=1&b=2` (form encoding: `+` is a space). */
export function parseForm(s: string, sink: Sink): void {
  let i = 0;
  const n = s.length;
  while (i <= n) {
    let amp = s.indexOf('&', i);
    if (amp === -1) amp = n;
    if (amp > i) {
      const eq = s.indexOf('=', i);
      const pair = eq !== -1 && eq < amp;
      const name = urlDecode(s.slice(i, pair ? eq : amp), true);
      const value = pair ? urlDecode(s.slice(eq + 1, amp), true) : '';
      if (!sink(name, value)) return;
    }
    i = amp + 1;
  }
}

/** `a=1; b=2` — values are URL-decoded once, as most frameworks do. */
export function parseCookies(s: string, sink: Sink): void {
  let i = 0;
  const n = s.length;
  while (i < n) {
    let semi = s.indexOf(';', i);
    if (semi === -1) semi = n;
    const eq = s.indexOf('=', i);
    if (eq !== -1 && eq < semi) {
      const name = s.slice(i, eq).trim();
      let value = s.slice(eq + 1, semi).trim();
      if (value.length > 1 && value.charCodeAt(0) === 34 && value.charCodeAt(value.length - 1) === 34) value = value.slice(1, -1);
      if (!sink(name, urlDecode(value))) return;
    } else if (semi > i) {
      const v = s.slice(i, semi).trim();
      if (v && !sink('', v)) return;
    }
    i = semi + 1;
  }
}

/** Content-Type split into its media type (lower case) and parameters. */
export interface ContentType {
  mime: string;
  boundary?: string;
  charset?: string;
}

export function parseContentType(v: string | undefined): ContentType {
  if (!v) return { mime: '' };
  const semi = v.indexOf(';');
  const mime = (semi === -1 ? v : v.slice(0, semi)).trim().toLowerCase();
  const out: ContentType = { mime };
  if (semi !== -1) {
    for (const part of v.slice(semi + 1).split(';')) {
      const eq = part.indexOf('=');
      if (eq === -1) continue;
      const k = part.slice(0, eq).trim().toLowerCase();
      let val = part.slice(eq + 1).trim();
      if (val.startsWith('"') && val.endsWith('"') && val.length > 1) val = val.slice(1, -1);
      if (k === 'boundary') out.boundary = val;
      else if (k === 'charset') out.charset = val.toLowerCase();
    }
  }
  return out;
}

/** What a multipart parse found. */
export interface MultipartPart {
  name: string;
  filename?: string;
  /** Content of a field part; undefined for file parts (file contents are not inspected). */
  value?: string;
  /** The part's header block, for header injection checks. */
  head: string;
}

/**
 * Splits a multipart body. Returns null when the boundary never occurs
 * (malformed body). Accepts CRLF and bare LF line ends.
 */
export function parseMultipart(body: string, boundary: string): MultipartPart[] | null {
  const delim = `--${boundary}`;
  let i = body.indexOf(delim);
  if (i === -1) return null;
  const parts: MultipartPart[] = [];
  while (i !== -1) {
    let start = i + delim.length;
    if (body.startsWith('--', start)) break;
    if (body.charCodeAt(start) === 13) start++;
    if (body.charCodeAt(start) === 10) start++;
    const next = body.indexOf(delim, start);
    let chunk = next === -1 ? body.slice(start) : body.slice(start, next);
    // The line break before the next delimiter belongs to the delimiter.
    if (chunk.endsWith('\r\n')) chunk = chunk.slice(0, -2);
    else if (chunk.endsWith('\n')) chunk = chunk.slice(0, -1);
    let sep = chunk.indexOf('\r\n\r\n');
    let sepLen = 4;
    const lf = chunk.indexOf('\n\n');
    if (lf !== -1 && (sep === -1 || lf < sep)) (sep = lf), (sepLen = 2);
    const head = sep === -1 ? chunk : chunk.slice(0, sep);
    const content = sep === -1 ? '' : chunk.slice(sep + sepLen);
    const disp = /content-disposition\s*:([^\r\n]*)/i.exec(head)?.[1] ?? '';
    const name = dispParam(disp, 'name') ?? '';
    const filename = dispParam(disp, 'filename');
    parts.push(filename === undefined ? { name, value: content, head } : { name, filename, head });
    i = next;
  }
  return parts;
}

/** A parameter of a Content-Disposition value, quoted or not. */
function dispParam(disp: string, key: string): string | undefined {
  const lower = disp.toLowerCase();
  let from = 0;
  for (;;) {
    const k = lower.indexOf(key, from);
    if (k === -1) return undefined;
    from = k + key.length;
    const before = lower.charCodeAt(k - 1);
    if (k > 0 && before !== 59 && before !== 32 && before !== 9) continue;
    let j = k + key.length;
    while (disp.charCodeAt(j) === 32) j++;
    if (disp[j] !== '=') continue;
    j++;
    while (disp.charCodeAt(j) === 32) j++;
    if (disp[j] === '"') {
      let out = '';
      for (j++; j < disp.length && disp[j] !== '"'; j++) {
        // Only `\"` is an escape; browsers send backslashes in names as they are.
        if (disp[j] === '\\' && disp[j + 1] === '"') j++;
        out += disp[j];
      }
      return out;
    }
    const end = disp.indexOf(';', j);
    return disp.slice(j, end === -1 ? undefined : end).trim();
  }
}

/**
 * Visits every key and string (or number) leaf of a JSON value. Keys go to
 * `key`, leaves to `leaf` with a dotted path. Returns false when stopped or
 * nested deeper than `maxDepth`.
 */
export function walkJson(v: unknown, key: Sink, leaf: Sink, maxDepth = 64): boolean {
  const walk = (x: unknown, path: string, depth: number): boolean => {
    if (depth > maxDepth) return false;
    if (typeof x === 'string') return leaf(path, x);
    if (x === null || typeof x !== 'object') return true;
    if (Array.isArray(x)) {
      for (let i = 0; i < x.length; i++) if (!walk(x[i], path, depth + 1)) return false;
      return true;
    }
    for (const k of Object.keys(x)) {
      if (!key(path, k)) return false;
      if (!walk((x as Record<string, unknown>)[k], path ? `${path}.${k}` : k, depth + 1)) return false;
    }
    return true;
  };
  return walk(v, '', 0);
}

/**
 * Visits the text content and attribute values of an XML document, with
 * the enclosing element's name. CDATA sections count as text. Entities are
 * left for the WAF's decoders.
 */
export function walkXml(doc: string, sink: Sink): void {
  const n = doc.length;
  let i = 0;
  let element = '';
  while (i < n) {
    const lt = doc.indexOf('<', i);
    const textEnd = lt === -1 ? n : lt;
    if (textEnd > i) {
      const text = doc.slice(i, textEnd);
      if (text.trim() && !sink(element, text)) return;
    }
    if (lt === -1) return;
    if (doc.startsWith('<![CDATA[', lt)) {
      const e = doc.indexOf(']]>', lt + 9);
      const text = doc.slice(lt + 9, e === -1 ? n : e);
      if (text.trim() && !sink(element, text)) return;
      i = e === -1 ? n : e + 3;
      continue;
    }
    if (doc.startsWith('<!--', lt)) {
      const e = doc.indexOf('-->', lt + 4);
      i = e === -1 ? n : e + 3;
      continue;
    }
    const gt = doc.indexOf('>', lt + 1);
    const tag = doc.slice(lt + 1, gt === -1 ? n : gt);
    i = gt === -1 ? n : gt + 1;
    if (tag[0] === '/' || tag[0] === '?' || tag[0] === '!') continue;
    const m = /^[^\s/>]+/.exec(tag);
    element = m ? m[0] : '';
    // Attribute values: name = "value" | 'value'
    let j = element.length;
    while (j < tag.length) {
      const eq = tag.indexOf('=', j);
      if (eq === -1) break;
      let k = eq + 1;
      while (tag.charCodeAt(k) === 32 || tag.charCodeAt(k) === 9 || tag.charCodeAt(k) === 10 || tag.charCodeAt(k) === 13) k++;
      const q = tag[k];
      if (q === '"' || q === "'") {
        const e = tag.indexOf(q, k + 1);
        const val = tag.slice(k + 1, e === -1 ? tag.length : e);
        if (val && !sink(element, val)) return;
        j = e === -1 ? tag.length : e + 1;
      } else j = k;
    }
  }
}
