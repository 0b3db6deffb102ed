/**
 * Decoders the WAF applies before matching. Each one is a single linear pass;
 * `deepDecode` repeats them until nothing changes (attackers stack encodings).
 */

const HEX: Record<string, number> = {};
for (let i = 0; i < 16; i++) {
  HEX[i.toString(16)] = i;
  HEX[i.toString(16).toUpperCase()] = i;
}
const hexVal = (c: string | undefined): number => (c === undefined ? -1 : (HEX[c] ?? -1));

/**
 * UTF-8 bytes to text, leniently: overlong encodings (`C0 AE` for `.`) decode
 * to the ASCII character they smuggle, as old servers decoded them; other
 * invalid bytes become the Latin-1 character of the same value.
 */
export function lenientUtf8(bytes: number[]): string {
  let out = '';
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i]!;
    if (b < 0x80) {
      out += String.fromCharCode(b);
      i++;
      continue;
    }
    let need = 0;
    let cp = 0;
    if (b >= 0xc0 && b < 0xe0) (need = 1), (cp = b & 0x1f);
    else if (b >= 0xe0 && b < 0xf0) (need = 2), (cp = b & 0x0f);
    else if (b >= 0xf0 && b < 0xf8) (need = 3), (cp = b & 0x07);
    let ok = need > 0 && i + need < bytes.length;
    if (ok) {
      for (let k = 1; k <= need; k++) {
        const c = bytes[i + k];
        if (c === undefined || (c & 0xc0) !== 0x80) {
          ok = false;
          break;
        }
        cp = (cp << 6) | (c & 0x3f);
      }
    }
    if (!ok || cp > 0x10ffff) {
      out += String.fromCharCode(b);
      i++;
      continue;
    }
    out += String.fromCodePoint(cp);
    i += need + 1;
  }
  return out;
}

/**
 * One pass of URL decoding: `%XX` runs as lenient UTF-8, `%uXXXX` (IIS), and
 * `+` as a space when `plus` is set (form encoding). Malformed escapes stay.
 */
export function urlDecode(s: string, plus = false): string {
  let i = s.indexOf('%');
  const p = plus ? s.indexOf('+') : -1;
  if (i === -1 && p === -1) return s;
  if (i === -1) return s.replaceAll('+', ' ');
  let out = '';
  let last = 0;
  const n = s.length;
  for (i = plus && p !== -1 && p < i ? p : i; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === 43 /* + */ && plus) {
      out += s.slice(last, i) + ' ';
      last = i + 1;
      continue;
    }
    if (c !== 37 /* % */) continue;
    if ((s[i + 1] === 'u' || s[i + 1] === 'U') && i + 5 < n) {
      const a = hexVal(s[i + 2]), b = hexVal(s[i + 3]), d = hexVal(s[i + 4]), e = hexVal(s[i + 5]);
      if (a >= 0 && b >= 0 && d >= 0 && e >= 0) {
        out += s.slice(last, i) + String.fromCharCode((a << 12) | (b << 8) | (d << 4) | e);
        i += 5;
        last = i + 1;
        continue;
      }
    }
    const h = hexVal(s[i + 1]);
    const l = hexVal(s[i + 2]);
    if (h < 0 || l < 0) continue;
    // One ASCII byte on its own (the common `%40`, `%2F`) needs no UTF-8 decoding.
    if (h < 8 && s.charCodeAt(i + 3) !== 37) {
      out += s.slice(last, i) + String.fromCharCode((h << 4) | l);
      i += 2;
      last = i + 1;
      continue;
    }
    const bytes: number[] = [];
    let j = i;
    while (j + 2 < n && s.charCodeAt(j) === 37) {
      const hh = hexVal(s[j + 1]);
      const ll = hexVal(s[j + 2]);
      if (hh < 0 || ll < 0) break;
      bytes.push((hh << 4) | ll);
      j += 3;
    }
    out += s.slice(last, i) + lenientUtf8(bytes);
    last = j;
    i = j - 1;
  }
  return out + s.slice(last);
}

/** Named character references that matter for evasion (HTML5 names included). */
const ENTITIES: Record<string, string> = {
  lt: '<', gt: '>', amp: '&', quot: '"', apos: "'", nbsp: ' ', tab: '\t', newline: '\n',
  colon: ':', semi: ';', lpar: '(', rpar: ')', lsqb: '[', rsqb: ']', lbrack: '[', rbrack: ']',
  lcub: '{', rcub: '}', lbrace: '{', rbrace: '}', sol: '/', bsol: '\\', equals: '=', num: '#',
  excl: '!', dollar: '$', percnt: '%', plus: '+', comma: ',', period: '.', quest: '?', commat: '@',
  grave: '`', hat: '^', lowbar: '_', verbar: '|', vert: '|', ast: '*', midast: '*', ampersand: '&',
  dash: '-', hyphen: '-',
  // Common typographic entities, so that `&copy;` reads as text and not as `&` followed by a command.
  copy: '\u00a9', reg: '\u00ae', trade: '\u2122', hellip: '\u2026', mdash: '\u2014', ndash: '\u2013', laquo: '\u00ab',
  raquo: '\u00bb', ldquo: '\u201c', rdquo: '\u201d', lsquo: '\u2018', rsquo: '\u2019', bull: '\u2022', middot: '\u00b7',
  deg: '\u00b0', euro: '\u20ac', pound: '\u00a3', yen: '\u00a5', cent: '\u00a2', sect: '\u00a7', para: '\u00b6',
  times: '\u00d7', divide: '\u00f7', plusmn: '\u00b1', frac12: '\u00bd', shy: '\u00ad', zwj: '\u200d', zwnj: '\u200c',
  eacute: '\u00e9', egrave: '\u00e8', aacute: '\u00e1', agrave: '\u00e0', uuml: '\u00fc', ouml: '\u00f6', auml: '\u00e4',
  ccedil: '\u00e7', ntilde: '\u00f1', szlig: '\u00df', iexcl: '\u00a1', iquest: '\u00bf', larr: '\u2190', rarr: '\u2192',
};
/** Legacy names browsers accept without the semicolon. */
const NO_SEMI = new Set(['lt', 'gt', 'amp', 'quot', 'nbsp']);

/** Decodes HTML character references, with or without the `;`, any number of leading zeros. */
export function htmlDecode(s: string): string {
  let i = s.indexOf('&');
  if (i === -1) return s;
  let out = '';
  let last = 0;
  const n = s.length;
  for (; i !== -1 && i < n; i = s.indexOf('&', i + 1)) {
    let j = i + 1;
    let cp = -1;
    if (s[j] === '#') {
      j++;
      const hex = s[j] === 'x' || s[j] === 'X';
      if (hex) j++;
      const start = j;
      let v = 0;
      // Leading zeros are skipped without bound; the value itself is capped so it cannot overflow.
      while (j < n) {
        const d = hex ? hexVal(s[j]) : s.charCodeAt(j) - 48;
        if (d < 0 || d > (hex ? 15 : 9)) break;
        if (v <= 0x10ffff) v = v * (hex ? 16 : 10) + d;
        j++;
      }
      if (j === start) continue;
      cp = v > 0x10ffff || v === 0 ? 0xfffd : v;
      if (s[j] === ';') j++;
      out += s.slice(last, i) + String.fromCodePoint(cp);
      last = j;
      i = j - 1;
      continue;
    }
    const start = j;
    while (j < n && j - start < 12) {
      const c = s.charCodeAt(j) | 0x20;
      if (c < 97 || c > 122) break;
      j++;
    }
    if (j === start) continue;
    const name = s.slice(start, j);
    const lower = name.toLowerCase();
    const rep = ENTITIES[name] ?? ENTITIES[lower];
    if (rep === undefined) continue;
    if (s[j] === ';') j++;
    else if (!NO_SEMI.has(lower)) continue;
    out += s.slice(last, i) + rep;
    last = j;
    i = j - 1;
  }
  return last === 0 ? s : out + s.slice(last);
}

/** Decodes JavaScript/JSON escapes `\uXXXX`, `\u{X…}` and `\xHH`; other backslashes stay. */
export function jsDecode(s: string): string {
  let i = s.indexOf('\\');
  if (i === -1) return s;
  let out = '';
  let last = 0;
  const n = s.length;
  for (; i !== -1 && i < n; i = s.indexOf('\\', i + 1)) {
    const k = s[i + 1];
    let cp = -1;
    let end = i;
    if (k === 'u' || k === 'U') {
      if (s[i + 2] === '{') {
        let j = i + 3;
        let v = 0;
        while (j < n && j - i < 12 && hexVal(s[j]) >= 0) v = v * 16 + hexVal(s[j++]);
        if (s[j] === '}' && j > i + 3 && v <= 0x10ffff) (cp = v), (end = j + 1);
      } else {
        const a = hexVal(s[i + 2]), b = hexVal(s[i + 3]), c = hexVal(s[i + 4]), d = hexVal(s[i + 5]);
        if (a >= 0 && b >= 0 && c >= 0 && d >= 0) (cp = (a << 12) | (b << 8) | (c << 4) | d), (end = i + 6);
      }
    } else if (k === 'x' || k === 'X') {
      const a = hexVal(s[i + 2]), b = hexVal(s[i + 3]);
      if (a >= 0 && b >= 0) (cp = (a << 4) | b), (end = i + 4);
    }
    if (cp < 0) continue;
    out += s.slice(last, i) + String.fromCodePoint(cp);
    last = end;
    i = end - 1;
  }
  return last === 0 ? s : out + s.slice(last);
}

// Zero-width and BOM characters are invisible separators used to split keywords.
const INVISIBLE = /[\u00ad\u180e\u200b-\u200f\u2060-\u2064\ufeff]/g;
const NON_ASCII = /[^\x00-\x7f]/;

/**
 * Folds Unicode look-alikes: NFKC (fullwidth `＜`, circled `Ⓐ`), removes
 * invisible characters, and maps code points whose low byte is CR or LF to
 * that control character, since some servers truncate to a byte.
 */
export function foldUnicode(s: string): string {
  if (!NON_ASCII.test(s)) return s;
  let t = s.normalize('NFKC').replace(INVISIBLE, '');
  if (/[\u010a\u010d\u020a\u020d\u030a\u030d\u040a-\uffff]/.test(t)) {
    let out = '';
    for (let i = 0; i < t.length; i++) {
      const c = t.charCodeAt(i);
      const low = c & 0xff;
      out += c > 0xff && (low === 10 || low === 13) ? String.fromCharCode(low) : t[i];
    }
    t = out;
  }
  return t;
}

/**
 * URL, HTML-entity and JS-escape decoding repeated until a fixed point (at
 * most `rounds` passes), then Unicode folding and NUL removal. Not
 * lower-cased.
 */
export function deepDecode(s: string, rounds = 4): string {
  let cur = s;
  for (let r = 0; r < rounds; r++) {
    const next = htmlDecode(jsDecode(urlDecode(cur)));
    if (next === cur) break;
    cur = next;
  }
  cur = foldUnicode(cur);
  return cur.indexOf('\0') === -1 ? cur : cur.replace(/\0/g, '');
}

/**
 * Whether `s` has the shape of base64 text worth decoding: at least 8
 * characters of the (URL-safe) base64 alphabet, `+` possibly turned into a
 * space by form decoding, padding only at the end, and a length that can be
 * base64. Hex ids, plain numbers and one-case words are excluded: their
 * base64 reading is never text. One pass, no allocation.
 */
export function base64Shape(s: string): boolean {
  const n = s.length;
  if (n < 8) return false;
  let end = n;
  while (end > 0 && s.charCodeAt(end - 1) === 61 /* = */) end--;
  if (n - end > 2 || end % 4 === 1) return false;
  let lower = false, upper = false, digit = false, other = false, nonHex = false;
  for (let i = 0; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c >= 97 && c <= 122) (lower = true), c > 102 && (nonHex = true);
    else if (c >= 65 && c <= 90) (upper = true), c > 70 && (nonHex = true);
    else if (c >= 48 && c <= 57) digit = true;
    else if (c === 43 || c === 47 || c === 95 || c === 45 || c === 32) other = true;
    else return false;
  }
  if (!nonHex && !other) return false;
  // A single class of characters (all lower case, all digits...) is a word or a number.
  if ((lower ? 1 : 0) + (upper ? 1 : 0) + (digit ? 1 : 0) + (other ? 1 : 0) < 2) return false;
  // Each group of 4 starts with the top 6 bits of a byte: for ASCII text that is A-Z or a-f.
  let off = 0;
  for (let i = 0; i < end; i += 4) {
    const c = s.charCodeAt(i);
    if (!((c >= 65 && c <= 90) || (c >= 97 && c <= 102))) off++;
  }
  return off * 5 <= Math.ceil(end / 4);
}

/**
 * If `s` looks like base64 (standard or URL-safe, padding optional, `+`
 * possibly turned into a space by form decoding) and decodes to mostly
 * printable UTF-8 text, returns that text; otherwise null.
 */
export function maybeBase64(s: string): string | null {
  if (!base64Shape(s)) return null;
  const buf = Buffer.from(s.indexOf(' ') === -1 ? s : s.replace(/ /g, '+'), s.indexOf('-') !== -1 || s.indexOf('_') !== -1 ? 'base64url' : 'base64');
  if (buf.length < 5) return null;
  // Injected text is mostly printable ASCII; base64 of binary data (ids, keys, images) is not.
  let ascii = 0;
  for (let i = 0; i < buf.length; i++) {
    const b = buf[i]!;
    if ((b >= 32 && b < 127) || b === 9 || b === 10 || b === 13 || b === 0) ascii++;
  }
  if (ascii * 5 < buf.length * 4) return null;
  const text = buf.toString('utf8');
  // Invalid UTF-8 decodes to U+FFFD: binary, not text.
  return text.indexOf('\ufffd') === -1 ? text : null;
}

/**
 * Decodes a UTF-7 document (`+ADw-` is `<`), used to smuggle markup past
 * filters when an XML or HTML parser honours a UTF-7 declaration.
 */
export function utf7Decode(s: string): string {
  return s.replace(/\+([A-Za-z0-9+/]*)-?/g, (m, b64: string) => {
    if (b64 === '') return '+';
    const bytes = Buffer.from(b64, 'base64');
    let out = '';
    for (let i = 0; i + 1 < bytes.length; i += 2) out += String.fromCharCode((bytes[i]! << 8) | bytes[i + 1]!);
    return out;
  });
}
