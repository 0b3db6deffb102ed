/**
 * The WAF engine: pure computation over a request (no kernel, no I/O).
 *
 * `inspect` splits the request into named values (path, query and form
 * arguments, headers, cookies, JSON/multipart/XML bodies), drops the values
 * a cheap pre-filter proves clean, decodes the rest (URL, entities, escapes,
 * Unicode, base64 where a value is base64 text) and runs the rules of the
 * configured paranoia level. Each matching rule adds its severity score once;
 * a request whose score reaches the level's threshold is an attack.
 *
 * @example
 * ```ts
 * const waf = createWaf({ paranoia: 1 });
 * const r = waf.inspect({ method: 'GET', path: '/', query: 'q=1%27%20or%201=1--', headers: {} });
 * r.blocked; // true
 * r.matches; // [{ ruleId: 2104, family: 'sqli', location: 'query:q', data: "or 1=1", … }]
 * ```
 */
import { gunzipSync, inflateSync, brotliDecompressSync } from 'node:zlib';
import { BextError, globToRegExp } from '../../plugin-api/index.js';
import { base64Shape, maybeBase64, urlDecode, utf7Decode } from './decode.js';
import { parseContentType, parseCookies, parseMultipart, walkJson, walkXml } from './parse.js';
import { FAMILIES, RULES, RULES_BY_ID, SEVERITY_SCORE, W, type Family, type Rule, type Severity } from './rules.js';
import { sqlDetect, type SqlDetectorName } from './sqli.js';
import { VIEW_INDEX, Views } from './views.js';
import { LiteralIndex, Prefilter, type Gate } from './prefilter.js';

export { FAMILIES, RULES, type Family, type Rule, type Severity } from './rules.js';

/** A rule exclusion: on matching paths, skip some rules (or all), for some parameters (or all). */
export interface WafExclusion {
  /** Path globs (`*` one segment, `**` any depth). */
  paths: string[];
  /** Rule ids or family names to skip. Left out: every rule. */
  rules?: (number | Family)[];
  /** Names of arguments, JSON keys, cookies or headers the exclusion applies to. Left out: the whole request. */
  params?: string[];
}

/** The plugin's configuration, as validated by the manifest's configSchema. */
export interface WafConfig {
  /** 1 (few false positives) to 4 (most rules). */
  paranoia: 1 | 2 | 3 | 4;
  /** Inbound anomaly score at which a request is an attack, per paranoia level. */
  thresholds: Record<'1' | '2' | '3' | '4', number>;
  /** `block` answers 403; `detect` only records. */
  mode: 'block' | 'detect';
  /** Bodies longer than this are inspected up to it and flagged (rule 1011). */
  maxBodyBytes: number;
  exclusions: WafExclusion[];
  /** Detections kept for `/__bext/waf/events`. */
  eventsRingSize: number;
  /** Methods outside this list are flagged (rule 1001). */
  allowedMethods: string[];
  /** Values inspected per request before the rest is skipped and flagged (rule 1013). */
  maxArgs: number;
}

/** JSON Schema of the configuration (the manifest carries the same object). */
export const WAF_CONFIG_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  properties: {
    paranoia: { type: 'integer', minimum: 1, maximum: 4, default: 1, description: 'Paranoia level: 1 runs the rules with the fewest false positives, 4 runs every rule.' },
    thresholds: {
      type: 'object',
      additionalProperties: false,
      description: 'Inbound anomaly score at which a request is blocked, per paranoia level (critical = 5, error = 4, warning = 3, notice = 2).',
      properties: {
        '1': { type: 'integer', minimum: 1, default: 5 },
        '2': { type: 'integer', minimum: 1, default: 5 },
        '3': { type: 'integer', minimum: 1, default: 5 },
        '4': { type: 'integer', minimum: 1, default: 5 },
      },
      default: { '1': 5, '2': 5, '3': 5, '4': 5 },
    },
    mode: { enum: ['block', 'detect'], default: 'block', description: '`detect` records and tags requests but never blocks.' },
    maxBodyBytes: { type: 'integer', minimum: 0, default: 1048576, description: 'Largest body inspected; a larger one is inspected up to this size and scores rule 1011 (critical).' },
    exclusions: {
      type: 'array',
      default: [],
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['paths'],
        properties: {
          paths: { type: 'array', minItems: 1, items: { type: 'string', pattern: '^/' } },
          rules: { type: 'array', items: { anyOf: [{ type: 'integer', minimum: 1 }, { enum: [...FAMILIES] }] } },
          params: { type: 'array', items: { type: 'string', minLength: 1 } },
        },
      },
    },
    eventsRingSize: { type: 'integer', minimum: 1, maximum: 100000, default: 1000 },
    allowedMethods: {
      type: 'array',
      items: { type: 'string', pattern: '^[A-Z]+$' },
      default: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'],
    },
    maxArgs: { type: 'integer', minimum: 1, default: 1024 },
  },
} as const;

/** The request as the engine sees it. Header names lower case. */
export interface WafRequest {
  method: string;
  /** Path without the query string, as received. */
  path: string;
  /** Raw query string without `?`. */
  query?: string;
  headers: Record<string, string | string[] | undefined>;
  body?: string | Uint8Array;
  /** Length of a body that was too large to read (`body` left out); scores rule 1011 above `maxBodyBytes`. */
  bodyLength?: number;
  /** Defaults to the `content-type` header. */
  contentType?: string;
}

/** One rule that matched. */
export interface WafMatch {
  ruleId: number;
  family: Family;
  severity: Severity;
  /** Where: `path`, `query:<name>`, `header:<name>`, `cookie:<name>`, `json:<key>`, `multipart:<name>`, `xml:<element>`, `body`, … */
  location: string;
  /** The matched text (decoded), at most 100 characters. */
  data: string;
  msg: string;
}

/** The verdict on one request. */
export interface WafResult {
  score: number;
  threshold: number;
  /** The score reached the threshold. */
  attack: boolean;
  /** `attack` in block mode. */
  blocked: boolean;
  matches: readonly WafMatch[];
  /** Families of the matched rules, without repeats. */
  families: readonly Family[];
}

export interface Waf {
  readonly config: WafConfig;
  inspect(req: WafRequest): WafResult;
}

const DEFAULTS: WafConfig = {
  paranoia: 1,
  thresholds: { '1': 5, '2': 5, '3': 5, '4': 5 },
  mode: 'block',
  maxBodyBytes: 1 << 20,
  exclusions: [],
  eventsRingSize: 1000,
  allowedMethods: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'],
  maxArgs: 1024,
};

/** Fills defaults and checks values the schema cannot (rule ids that exist). */
export function resolveConfig(input: Partial<WafConfig> = {}): WafConfig {
  const known = new Set(Object.keys(WAF_CONFIG_SCHEMA.properties));
  for (const k of Object.keys(input)) {
    if (!known.has(k)) throw new BextError('BEXT_ERR_CONFIG_INVALID', `waf: unknown option "${k}"`, { hint: `known options: ${[...known].join(', ')}` });
  }
  const c: WafConfig = { ...DEFAULTS, ...input, thresholds: { ...DEFAULTS.thresholds, ...(input.thresholds ?? {}) } };
  if (![1, 2, 3, 4].includes(c.paranoia)) throw new BextError('BEXT_ERR_CONFIG_INVALID', `waf: paranoia must be 1, 2, 3 or 4, found ${String(c.paranoia)}`);
  if (c.mode !== 'block' && c.mode !== 'detect') throw new BextError('BEXT_ERR_CONFIG_INVALID', `waf: mode must be "block" or "detect", found ${String(c.mode)}`);
  for (const ex of c.exclusions) {
    for (const r of ex.rules ?? []) {
      if (typeof r === 'number' ? !RULES_BY_ID.has(r) : !(FAMILIES as readonly string[]).includes(r)) {
        throw new BextError('BEXT_ERR_CONFIG_INVALID', `waf: exclusion names rule "${r}", which does not exist`, { hint: `use a rule id from the README or a family: ${FAMILIES.join(', ')}` });
      }
    }
  }
  return c;
}

interface CompiledExclusion {
  paths: RegExp[];
  rules: Set<number | string> | null;
  params: Set<string> | null;
}

/** What inspecting one value found. */
type Outcome = 0 | 1 | 2;
const CLEAN = 0;
const SCANNED = 1;
const HIT = 2;

/** A rule prepared for the hot loop. */
interface Compiled {
  rule: Rule;
  /** Index into the per-rule "already scored" table. */
  idx: number;
  score: number;
  /** Index of the rule's view in VIEW_INDEX. */
  vi: number;
  /** Literals checked before the rule runs (empty: always run). */
  pre: readonly string[];
  hasPre: boolean;
  // One object shape for every rule, so the hot loop's property loads stay monomorphic.
  pattern: RegExp | null;
  sql: SqlDetectorName | null;
  chars: RegExp | null;
  minChars: number;
}

/** Headers whose values are protocol machinery that applications do not interpret as data. */
const SKIP_HEADERS = new Set([
  'host', 'accept', 'accept-encoding', 'accept-language', 'accept-charset', 'connection', 'content-length', 'content-type',
  'cache-control', 'pragma', 'upgrade-insecure-requests', 'if-none-match', 'if-modified-since', 'if-match', 'if-unmodified-since',
  'if-range', 'dnt', 'te', 'priority', 'upgrade', 'keep-alive', 'authorization', 'proxy-authorization', 'sec-fetch-site',
  'sec-fetch-mode', 'sec-fetch-dest', 'sec-fetch-user', 'sec-ch-ua', 'sec-ch-ua-mobile', 'sec-ch-ua-platform',
  'sec-websocket-key', 'sec-websocket-version', 'sec-websocket-extensions', 'sec-websocket-protocol', 'content-encoding',
  'transfer-encoding', 'expect', 'range', 'sec-purpose', 'purpose',
]);
/** Headers holding a URL whose `scheme://host` part cannot carry an injection when it is well formed. */
const URL_HEADERS = new Set(['referer', 'origin']);
/** Length of a well-formed `http(s)://host[:port]` prefix (letters, digits, dots, dashes), or 0. */
function originLength(v: string): number {
  let i = v.startsWith('https://') ? 8 : v.startsWith('http://') ? 7 : 0;
  if (i === 0) return 0;
  const start = i;
  for (; i < v.length; i++) {
    const c = v.charCodeAt(i) | 0x20;
    if (!((c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c === 0x2e || c === 0x2d)) break;
  }
  if (i === start) return 0;
  if (v.charCodeAt(i) === 58 /* : */) {
    const p = i;
    for (i++; i < v.length && v.charCodeAt(i) >= 48 && v.charCodeAt(i) <= 57; i++);
    if (i === p + 1) return 0;
  }
  return i === v.length || v.charCodeAt(i) === 47 /* / */ ? i : 0;
}

// Imported bindings are read through accessors once transpiled (tsx); the hot paths use local copies.
const { PATH: W_PATH, ARG: W_ARG, NAME: W_NAME, HEADER: W_HEADER, COOKIE: W_COOKIE, BODY: W_BODY, XML: W_XML, UA: W_UA } = W;
const isBase64Shaped = base64Shape;
const readBase64 = maybeBase64;
const decodeUrl = urlDecode;
const BINARY_MIME = /^(?:image|audio|video|font)\/|^application\/(?:octet-stream|pdf|zip|gzip|x-gzip|x-tar|x-7z-compressed|vnd\.|msword|wasm|x-protobuf|protobuf|grpc)/;
const HEADER_CACHE_MAX = 4096;

/** Engine switches for tests and benchmarks. */
export interface WafOptions {
  /** Skip the pre-filter and the clean-header cache: every value takes the full inspection. Default true. */
  prefilter?: boolean;
}

/** Creates a WAF engine from a (partial) configuration. */
export function createWaf(input: Partial<WafConfig> = {}, options: WafOptions = {}): Waf {
  const config = resolveConfig(input);
  const pl = config.paranoia;
  const threshold = config.thresholds[String(pl) as '1'];
  const maxArgs = config.maxArgs;
  const active = RULES.filter((r) => r.paranoia <= pl);
  const compiled = new Map<number, Compiled>();
  // A long literal list costs more to check one by one than the rule's own pattern (a single alternation, often anchored).
  RULES.forEach((rule, idx) => {
    const pre = rule.pre.length > 8 && rule.pattern ? [] : rule.pre;
    compiled.set(rule.id, {
      rule, idx, score: SEVERITY_SCORE[rule.severity], vi: VIEW_INDEX[rule.view], pre, hasPre: pre.length > 0,
      pattern: rule.pattern ?? null, sql: rule.sql ?? null, chars: rule.charCount?.chars ?? null, minChars: rule.charCount?.min ?? 0,
    });
  });
  const ruleCount = RULES.length;
  /** Per view index, per rule: the mark of the last value whose view holds one of the rule's literals. */
  const foundIn = [0, 1, 2, 3, 4, 5].map(() => new Uint32Array(ruleCount));
  let viewMark = 0;
  const newViews = (v: string): Views => new Views(v, (viewMark = (viewMark + 1) >>> 0 || 1));
  const matchable = active.filter((r) => !r.engine).map((r) => compiled.get(r.id)!);
  const literals = new LiteralIndex(matchable.flatMap((c) => c.pre.map((lit) => ({ lit, id: c.idx }))));
  const byWhere = new Map<number, Compiled[]>();
  const rulesFor = (where: number): Compiled[] => {
    let l = byWhere.get(where);
    if (!l) byWhere.set(where, (l = matchable.filter((c) => (c.rule.where & where) !== 0)));
    return l;
  };
  const allowed = new Set(config.allowedMethods);
  const exclusions: CompiledExclusion[] = config.exclusions.map((e) => ({
    paths: e.paths.map(globToRegExp),
    rules: e.rules?.length ? new Set(e.rules) : null,
    params: e.params?.length ? new Set(e.params) : null,
  }));

  // Pre-filter: the gates of every active rule (see prefilter.ts).
  const gates: Gate[] = [];
  for (const { rule: r } of matchable) {
    if (r.gate) gates.push(...r.gate);
    else if (r.charCount) {
      for (let c = 32; c < 127; c++) {
        const ch = String.fromCharCode(c);
        if (ch.match(r.charCount.chars)) gates.push(ch);
      }
    } else gates.push(...r.pre);
  }
  const prefilter = options.prefilter === false ? { needs: (_v: string) => true } : new Prefilter(gates);
  const useHeaderCache = options.prefilter !== false;

  /** Values of non-skipped headers found clean, per header name. */
  const headerCache = new Map<string, Set<string>>();
  let headerCacheSize = 0;
  const clean: WafResult = Object.freeze({ score: 0, threshold, attack: false, blocked: false, matches: Object.freeze([]) as readonly WafMatch[], families: Object.freeze([]) as readonly Family[] });

  // Per-request state. inspect() is synchronous and not re-entrant, so one set serves every call.
  const scored = new Uint32Array(RULES.length);
  let gen = 0;
  let score = 0;
  let matches: WafMatch[] | null = null;
  let args = 0;
  let stopped = false;
  let ex: CompiledExclusion[] | null = null;

  const excluded = (rule: Rule, param: string | undefined): boolean => {
    for (const e of ex!) {
      if (e.rules && !e.rules.has(rule.id) && !e.rules.has(rule.family)) continue;
      if (e.params && (param === undefined || !paramMatches(e.params, param))) continue;
      return true;
    }
    return false;
  };

  function fire(c: Compiled, prefix: string, name: string | undefined, data: string): void {
    if (scored[c.idx] === gen || (ex !== null && excluded(c.rule, name))) return;
    scored[c.idx] = gen;
    score += c.score;
    const r = c.rule;
    (matches ??= []).push({
      ruleId: r.id,
      family: r.family,
      severity: r.severity,
      location: name === undefined ? prefix : `${prefix}:${name}`,
      data: data.length > 100 ? `${data.slice(0, 97)}...` : data,
      msg: r.msg,
    });
  }

  function fireId(id: number, location: string, data: string): void {
    const c = compiled.get(id)!;
    if (c.rule.paranoia <= pl) fire(c, location, undefined, data);
  }

  /** Counts one more inspected value; false once the budget is spent. */
  function budget(): boolean {
    if (stopped) return false;
    if (++args > maxArgs) {
      stopped = true;
      fireId(1013, 'request', `more than ${maxArgs} values`);
      return false;
    }
    return true;
  }

  /** Runs rules over one value's views. Returns whether any matched (excluded or not). */
  function runRules(rules: Compiled[], views: Views, prefix: string, name: string | undefined): boolean {
    let hit = false;
    for (let i = 0; i < rules.length; i++) {
      const c = rules[i]!;
      if (scored[c.idx] === gen) continue;
      const vi = c.vi;
      const s = views.at(vi);
      if (c.hasPre) {
        const found = foundIn[vi]!;
        if ((views.scanned & (1 << vi)) === 0) {
          literals.scan(s, found, views.mark);
          views.scanned |= 1 << vi;
        }
        if (found[c.idx] !== views.mark) continue;
      }
      let data: string | null = null;
      if (c.pattern !== null) {
        const m = c.pattern.exec(s);
        if (m) data = m[0];
      } else if (c.sql !== null) {
        data = sqlDetect(c.sql, s, views.sqlTokens);
      } else if (c.chars !== null) {
        const found = s.match(c.chars);
        if (found && found.length >= c.minChars) data = found.join('');
      }
      if (data === null) continue;
      hit = true;
      fire(c, prefix, name, data.trim() || data);
    }
    return hit;
  }

  /** Inspects one value (and its base64 reading): CLEAN (pre-filtered), SCANNED (clean after the rules) or HIT. */
  function value(where: number, prefix: string, name: string | undefined, v: string): Outcome {
    if (v.length === 0) return CLEAN;
    let out: Outcome = CLEAN;
    if (prefilter.needs(v)) {
      out = SCANNED;
      if (v.indexOf('\0') !== -1 || v.indexOf('%00') !== -1) {
        fire(compiled.get(1004)!, prefix, name, 'NUL');
        out = HIT;
      }
      if (runRules(rulesFor(where), newViews(v), prefix, name)) out = HIT;
    }
    if (v.length >= 8 && where !== W_PATH && isBase64Shaped(v)) {
      const text = readBase64(v);
      if (text !== null && prefilter.needs(text)) {
        if (out === CLEAN) out = SCANNED;
        if (runRules(rulesFor(where), newViews(text), `${prefix} (base64)`, name)) out = HIT;
      }
    }
    return out;
  }

  function inspectPath(path: string): void {
    value(W_PATH, 'path', undefined, path);
    // Base64 payloads ride in path segments too.
    for (let start = 1; start < path.length; ) {
      let end = path.indexOf('/', start);
      if (end === -1) end = path.length;
      if (end - start >= 8) {
        const text = readBase64(path.slice(start, end));
        if (text !== null && prefilter.needs(text)) runRules(rulesFor(W_PATH), newViews(text), 'path (base64)', undefined);
      }
      start = end + 1;
    }
    if (path.indexOf('%') !== -1 && INVALID_PCT.test(path)) fireId(1005, 'path', path.slice(0, 100));
  }

  function inspectArgs(raw: string, prefix: string): void {
    if (raw.indexOf('%') !== -1 && INVALID_PCT.test(raw)) fireId(1005, prefix, raw.slice(0, 100));
    const nameLoc = `${prefix}-name`;
    const n = raw.length;
    for (let i = 0; i <= n; ) {
      let amp = raw.indexOf('&', i);
      if (amp === -1) amp = n;
      if (amp > i) {
        if (!budget()) return;
        const eq = raw.indexOf('=', i);
        const pair = eq !== -1 && eq < amp;
        const name = decodeUrl(raw.slice(i, pair ? eq : amp), true);
        if (name) value(W_NAME, nameLoc, name, name);
        if (pair) value(W_ARG, prefix, name, decodeUrl(raw.slice(eq + 1, amp), true));
      }
      i = amp + 1;
    }
  }

  function inspectHeaders(headers: WafRequest['headers']): void {
    for (const name in headers) {
      if (SKIP_HEADERS.has(name)) continue;
      const hv = headers[name];
      if (hv === undefined) continue;
      if (typeof hv === 'string') header(name, hv);
      else for (const v of hv) header(name, v);
      if (stopped) return;
    }
  }

  let cookieOutcome: Outcome = CLEAN;
  /** One cookie: created once, not per request. */
  const cookie = (cn: string, cv: string): boolean => {
    if (!budget()) return false;
    if (cn) cookieOutcome = Math.max(cookieOutcome, value(W_NAME, 'cookie-name', cn, cn)) as Outcome;
    cookieOutcome = Math.max(cookieOutcome, value(W_COOKIE, 'cookie', cn, cv)) as Outcome;
    return true;
  };

  function header(name: string, v: string): void {
    let cache = useHeaderCache ? headerCache.get(name) : undefined;
    if (cache?.has(v)) return;
    let out: Outcome = CLEAN;
    if (name === 'cookie') {
      cookieOutcome = CLEAN;
      parseCookies(v, cookie);
      out = cookieOutcome;
    } else {
      if (!budget()) return;
      const u = URL_HEADERS.has(name) ? v.slice(originLength(v)) : v;
      out = value(name === 'user-agent' ? W_HEADER | W_UA : W_HEADER, 'header', name, u);
    }
    // Only values that took the full inspection are worth remembering: browsers repeat them (User-Agent).
    if (out === SCANNED && !stopped && useHeaderCache) {
      if (headerCacheSize >= HEADER_CACHE_MAX) {
        headerCache.clear();
        headerCacheSize = 0;
        cache = undefined;
      }
      if (!cache) headerCache.set(name, (cache = new Set()));
      cache.add(v);
      headerCacheSize++;
    }
  }

  function inspectBody(req: WafRequest): void {
    let body = req.body!;
    const ctHeader = req.contentType ?? first(req.headers['content-type']);
    const ct = parseContentType(ctHeader);
    const encoding = first(req.headers['content-encoding'])?.trim().toLowerCase();
    if (typeof body !== 'string' && encoding && encoding !== 'identity') {
      try {
        const opts = { maxOutputLength: Math.max(1, config.maxBodyBytes + 1) };
        body = encoding === 'gzip' || encoding === 'x-gzip' ? gunzipSync(body, opts) : encoding === 'deflate' ? inflateSync(body, opts) : encoding === 'br' ? brotliDecompressSync(body, opts) : body;
      } catch {
        // Not the encoding it claims (or larger than the limit once decoded): inspect the bytes as sent.
        fireId(1009, 'body', encoding);
      }
    }
    let text = typeof body === 'string' ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8');
    if (text.length === 0) return;
    if (text.length > config.maxBodyBytes) {
      fireId(1011, 'body', `${text.length} bytes`);
      text = text.slice(0, config.maxBodyBytes);
    }
    if (!ctHeader) fireId(1007, 'body', text.slice(0, 40));
    const mime = ct.mime;
    if (mime === 'application/x-www-form-urlencoded') return inspectArgs(text, 'form');
    if (mime.startsWith('multipart/')) {
      const parts = ct.boundary ? parseMultipart(text, ct.boundary) : null;
      if (!parts) {
        fireId(ct.boundary ? 1008 : 1010, 'body', ctHeader ?? '');
        value(W_BODY, 'body', undefined, text);
        return;
      }
      for (const p of parts) {
        if (!budget()) return;
        value(W_NAME, 'multipart-name', p.name, p.name);
        if (p.filename !== undefined) value(W_NAME, 'filename', p.name, p.filename);
        else value(W_ARG, 'multipart', p.name, p.value ?? '');
      }
      return;
    }
    const trimmed = text.trimStart();
    const declaredJson = mime === 'application/json' || mime.endsWith('+json');
    if (declaredJson || (!BINARY_MIME.test(mime) && mime !== 'text/plain' && (trimmed[0] === '{' || trimmed[0] === '['))) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        if (declaredJson) fireId(1008, 'body', 'invalid JSON');
        value(W_BODY, 'body', undefined, text);
        return;
      }
      const complete = walkJson(
        parsed,
        (_path, k) => budget() && (value(W_NAME, 'json-key', k, k), true),
        (path, v) => budget() && (value(W_ARG, 'json', path, v), true),
      );
      if (!complete && !stopped) fireId(1008, 'body', 'JSON nested too deeply');
      return;
    }
    if (mime === 'application/xml' || mime === 'text/xml' || mime.endsWith('+xml') || (!BINARY_MIME.test(mime) && trimmed[0] === '<')) {
      let doc = text;
      if (/^\s*<\?xml[^>]{0,200}?encoding\s*=\s*["']\s*utf-?7/i.test(doc)) doc = utf7Decode(doc);
      runRules(rulesFor(W_XML), newViews(doc), 'xml', undefined);
      walkXml(doc, (element, v) => budget() && (value(W_ARG, 'xml', element, v), true));
      return;
    }
    if (BINARY_MIME.test(mime)) return;
    value(W_BODY, 'body', undefined, text);
  }

  function inspect(req: WafRequest): WafResult {
    ex = null;
    if (exclusions.length) {
      for (const e of exclusions) {
        if (e.paths.some((p) => p.test(req.path))) (ex ??= []).push(e);
      }
      if (ex?.some((e) => !e.rules && !e.params)) return clean;
    }
    gen = (gen + 1) >>> 0 || 1;
    score = 0;
    matches = null;
    args = 0;
    stopped = false;
    const h = req.headers;
    if (!allowed.has(req.method)) fireId(1001, 'method', req.method);
    if (h['transfer-encoding'] !== undefined) {
      const te = String(h['transfer-encoding']);
      if (h['content-length'] !== undefined) fireId(1002, 'header:transfer-encoding', te);
      if (!/^\s*chunked\s*$/i.test(te)) fireId(1003, 'header:transfer-encoding', te);
    }
    if (h.host === undefined) fireId(1006, 'header:host', '');
    if (pl >= 2 && h['user-agent'] === undefined) fireId(1012, 'header:user-agent', '');

    inspectPath(req.path);
    if (req.query) inspectArgs(req.query, 'query');
    inspectHeaders(h);
    if (req.body !== undefined && req.body.length > 0 && !stopped) inspectBody(req);
    else if (req.bodyLength !== undefined && req.bodyLength > config.maxBodyBytes) fireId(1011, 'body', `${req.bodyLength} bytes, not inspected`);

    if (matches === null) return clean;
    const found: WafMatch[] = matches;
    matches = null;
    const attack = score >= threshold;
    const families: Family[] = [];
    for (const m of found) if (!families.includes(m.family)) families.push(m.family);
    return { score, threshold, attack, blocked: attack && config.mode === 'block', matches: found, families };
  }

  return { config, inspect };
}

const INVALID_PCT = /%(?![0-9a-fA-F]{2}|[uU][0-9a-fA-F]{4})/;

const first = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);

/** A parameter exclusion matches the name itself or, for a JSON path, its leaf key. */
function paramMatches(set: Set<string>, name: string): boolean {
  if (set.has(name)) return true;
  const dot = name.lastIndexOf('.');
  return dot !== -1 && set.has(name.slice(dot + 1));
}
