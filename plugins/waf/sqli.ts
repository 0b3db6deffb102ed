/**
 * SQL injection detection by tokenising, in the manner of libinjection: the
 * input is split into SQL tokens (as it is, and as if it continued a single-
 * or double-quoted string, which is where injected text usually lands), and
 * detectors look for token sequences that only injected SQL produces. Every
 * step is a single forward pass, so time is linear in the input.
 */

/** Token types. */
export const enum T {
  Word = 1, // bareword / identifier
  Keyword, // from, where, all, into, table, …
  Union,
  Statement, // select, insert, declare, exec, …
  Logic, // and, or, xor, &&, ||
  Compare, // =, !=, <>, <, >, <=, >=, <=>, like, rlike, regexp, between, sounds
  Op, // other operators
  Number,
  String,
  Variable, // @x, @@x
  Func, // identifier directly followed by '('
  LParen,
  RParen,
  Comma,
  Semi,
  Dot,
  Comment,
  Other,
}

export interface Token {
  t: T;
  /** Lower-cased text (for strings: the content). */
  v: string;
  /** Start offset in the input. */
  p: number;
  /** A string opened by the context (the input began inside it). */
  ctx?: boolean;
}

const STATEMENTS = new Set([
  'select', 'insert', 'update', 'delete', 'drop', 'declare', 'exec', 'execute', 'create', 'alter', 'truncate',
  'shutdown', 'waitfor', 'grant', 'revoke', 'merge', 'call', 'handler', 'rename', 'replace', 'load', 'set',
]);
const LOGIC = new Set(['and', 'or', 'xor', 'not']);
const WORD_COMPARE = new Set(['like', 'rlike', 'regexp', 'between', 'sounds', 'glob', 'ilike', 'similar']);
const KEYWORDS = new Set([
  'from', 'where', 'having', 'group', 'order', 'by', 'limit', 'offset', 'into', 'outfile', 'dumpfile', 'values',
  'table', 'all', 'distinct', 'as', 'case', 'when', 'then', 'else', 'end', 'null', 'true', 'false', 'asc', 'desc',
  'join', 'inner', 'outer', 'left', 'right', 'cross', 'on', 'using', 'top', 'procedure', 'database', 'schema',
  'is', 'in', 'exists', 'delay', 'collate', 'escape', 'div', 'mod', 'with', 'returning', 'fetch', 'varchar', 'char',
  'nvarchar', 'int', 'integer', 'binary', 'varbinary',
]);
/** Keywords that are also function names when called. */
const KEYWORD_FUNCS = new Set(['char', 'left', 'right', 'database', 'schema', 'replace', 'mod', 'binary', 'exists', 'values']);
/** Functions whose call is by itself a strong sign of injection. */
const STRONG_FUNCS = new Set([
  'benchmark', 'pg_sleep', 'load_file', 'extractvalue', 'updatexml', 'group_concat', 'sys_eval', 'sys_exec',
  'xp_cmdshell', 'make_set', 'utl_inaddr', 'dbms_pipe', 'fn_varbintohexstr', 'sp_executesql', 'sp_oacreate',
  'dbms_lock', 'randomblob', 'sleep', 'json_keys', 'geometrycollection', 'polygon', 'multipoint', 'exp', 'name_const',
]);
/** Functions that are SQL-specific (used as evidence after a logic operator). */
const SQL_FUNCS = new Set([
  ...STRONG_FUNCS, 'json_extract', 'json_depth', 'json_length', 'json_valid', 'concat', 'concat_ws', 'char', 'chr',
  'ascii', 'ord', 'substr', 'substring', 'mid', 'left', 'right', 'version', 'database', 'user', 'current_user',
  'system_user', 'schema', 'hex', 'unhex', 'if', 'ifnull', 'nullif', 'coalesce', 'count', 'cast', 'convert', 'length',
  'len', 'lower', 'upper', 'md5', 'sha1', 'rand', 'floor', 'row', 'instr', 'locate', 'position', 'iif', 'db_name',
  'user_name', 'host_name', 'object_id', 'datalength', 'string_agg', 'listagg', 'xmltype', 'extract', 'replace',
]);

const isWordStart = (c: number): boolean => (c >= 97 && c <= 122) || c === 95 || c === 36 || (c >= 65 && c <= 90) || c > 127;
const isWord = (c: number): boolean => isWordStart(c) || (c >= 48 && c <= 57);
const isDigit = (c: number): boolean => c >= 48 && c <= 57;
const isSpace = (c: number): boolean => c === 32 || (c >= 9 && c <= 13) || c === 160;

/**
 * Tokenises lower-cased text. `quote` (`'` or `"`) starts inside a string
 * opened by that quote. At most `max` tokens are produced.
 */
export function tokenize(s: string, quote: string | null, max = 4096): Token[] {
  const out: Token[] = [];
  const n = s.length;
  let i = 0;
  if (quote) {
    const end = findClose(s, 0, quote.charCodeAt(0));
    out.push({ t: T.String, v: s.slice(0, end), p: 0, ctx: true });
    i = end + 1;
  }
  while (i < n && out.length < max) {
    const c = s.charCodeAt(i);
    if (isSpace(c)) {
      i++;
      continue;
    }
    const d = s.charCodeAt(i + 1);
    // MySQL executable comment: its body runs as SQL, so the markers are dropped.
    if (c === 47 && d === 42 && s.charCodeAt(i + 2) === 33) {
      i += 3;
      while (i < n && isDigit(s.charCodeAt(i))) i++;
      continue;
    }
    if (c === 42 && d === 47) {
      i += 2;
      continue;
    }
    if (c === 47 && d === 42) {
      const e = s.indexOf('*/', i + 2);
      out.push({ t: T.Comment, v: '/*', p: i });
      i = e === -1 ? n : e + 2;
      continue;
    }
    if ((c === 45 && d === 45) || c === 35) {
      // `--` ends the statement only when followed by space or the end (MySQL); others accept any.
      const e = s.indexOf('\n', i);
      out.push({ t: T.Comment, v: c === 35 ? '#' : '--', p: i });
      i = e === -1 ? n : e + 1;
      continue;
    }
    if (c === 39 || c === 34 || c === 96) {
      const e = findClose(s, i + 1, c);
      out.push({ t: c === 96 ? T.Word : T.String, v: s.slice(i + 1, e), p: i });
      i = e + 1;
      continue;
    }
    if (isDigit(c) || (c === 46 && isDigit(d))) {
      const st = i;
      if (c === 48 && (d === 120 || d === 98)) {
        i += 2;
        while (i < n && isWord(s.charCodeAt(i))) i++;
      } else {
        while (i < n && isDigit(s.charCodeAt(i))) i++;
        // `20.5` is a number; in `20.to_i` the dot is member access.
        if (s.charCodeAt(i) === 46 && isDigit(s.charCodeAt(i + 1))) {
          i++;
          while (i < n && isDigit(s.charCodeAt(i))) i++;
        }
        if (s.charCodeAt(i) === 101 && (isDigit(s.charCodeAt(i + 1)) || ((s.charCodeAt(i + 1) === 43 || s.charCodeAt(i + 1) === 45) && isDigit(s.charCodeAt(i + 2))))) {
          i += 2;
          while (i < n && isDigit(s.charCodeAt(i))) i++;
        }
      }
      // `1st`, `75obc`: a word that starts with digits, not a number.
      if (i < n && isWordStart(s.charCodeAt(i)) && s.charCodeAt(i) !== 36) {
        while (i < n && isWord(s.charCodeAt(i))) i++;
        out.push({ t: T.Word, v: s.slice(st, i), p: st });
      } else out.push({ t: T.Number, v: s.slice(st, i), p: st });
      continue;
    }
    if (c === 64 /* @ */) {
      const st = i;
      i++;
      if (s.charCodeAt(i) === 64) i++;
      while (i < n && isWord(s.charCodeAt(i))) i++;
      out.push({ t: i - st > 1 ? T.Variable : T.Op, v: s.slice(st, i), p: st });
      continue;
    }
    if (isWordStart(c)) {
      const st = i;
      while (i < n && isWord(s.charCodeAt(i))) i++;
      const w = s.slice(st, i);
      // A call only when `(` follows at once: SQL engines parse `sleep (5)` as a name and an expression.
      const call = s.charCodeAt(i) === 40;
      let t: T;
      if (w === 'union') t = T.Union;
      else if (STATEMENTS.has(w)) t = T.Statement;
      else if (LOGIC.has(w)) t = T.Logic;
      else if (WORD_COMPARE.has(w)) t = T.Compare;
      else if (KEYWORDS.has(w) && !(call && KEYWORD_FUNCS.has(w))) t = T.Keyword;
      else if (call) t = T.Func;
      else t = T.Word;
      out.push({ t, v: w, p: st });
      continue;
    }
    const st = i;
    switch (c) {
      case 40: out.push({ t: T.LParen, v: '(', p: st }); i++; continue;
      case 41: out.push({ t: T.RParen, v: ')', p: st }); i++; continue;
      case 44: out.push({ t: T.Comma, v: ',', p: st }); i++; continue;
      case 59: out.push({ t: T.Semi, v: ';', p: st }); i++; continue;
      case 46: out.push({ t: T.Dot, v: '.', p: st }); i++; continue;
    }
    const two = s.slice(i, i + 2);
    if (two === '||' || two === '&&') {
      out.push({ t: T.Logic, v: two, p: st });
      i += 2;
      continue;
    }
    if (s.slice(i, i + 3) === '<=>') {
      out.push({ t: T.Compare, v: '<=>', p: st });
      i += 3;
      continue;
    }
    if (two === '!=' || two === '<>' || two === '<=' || two === '>=' || two === '==') {
      out.push({ t: T.Compare, v: two, p: st });
      i += 2;
      continue;
    }
    if (c === 61 || c === 60 || c === 62) {
      out.push({ t: T.Compare, v: s[i]!, p: st });
      i++;
      continue;
    }
    if (two === ':=') {
      out.push({ t: T.Op, v: two, p: st });
      i += 2;
      continue;
    }
    // + - * / % ^ | & ~ ! and anything else.
    out.push({ t: '+-*/%^|&~!'.includes(s[i]!) ? T.Op : T.Other, v: s[i]!, p: st });
    i++;
  }
  return out;
}

/** Index of the closing quote `q` from `i` (doubled quotes and backslash escapes skipped), or the end. */
function findClose(s: string, i: number, q: number): number {
  const n = s.length;
  while (i < n) {
    const c = s.charCodeAt(i);
    if (c === 92) {
      i += 2;
      continue;
    }
    if (c === q) {
      if (s.charCodeAt(i + 1) === q) {
        i += 2;
        continue;
      }
      return i;
    }
    i++;
  }
  return n;
}

/** A detector: given the tokens (comments removed) and the input, the matched text or null. */
type Detector = (tk: Token[], s: string, comments: boolean) => string | null;

const span = (s: string, tk: Token[], a: number, b: number): string => {
  const from = tk[a]!.p;
  const last = tk[Math.min(b, tk.length - 1)]!;
  return s.slice(from, Math.min(s.length, last.p + Math.max(1, last.v.length) + 1)).trim();
};

const isOperand = (k: Token | undefined): boolean =>
  !!k && (k.t === T.Number || k.t === T.String || k.t === T.Variable || k.t === T.Word || k.t === T.Func || (k.t === T.Keyword && (k.v === 'null' || k.v === 'true' || k.v === 'false')));

/** UNION [ALL|DISTINCT] [(] SELECT */
const union: Detector = (tk, s) => {
  for (let i = 0; i < tk.length; i++) {
    if (tk[i]!.t !== T.Union) continue;
    let j = i + 1;
    if (tk[j]?.t === T.Keyword && (tk[j]!.v === 'all' || tk[j]!.v === 'distinct')) j++;
    while (tk[j]?.t === T.LParen) j++;
    if (tk[j]?.t === T.Statement && tk[j]!.v === 'select') return span(s, tk, i, j);
  }
  return null;
};

const SELECT_MODIFIERS = new Set(['distinct', 'all', 'top', 'null', 'true', 'false', 'case', 'when', 'then', 'else', 'end', 'as']);
const AFTER_TABLE = new Set(['where', 'limit', 'order', 'group', 'having', 'join', 'inner', 'left', 'right', 'cross', 'into', 'procedure', 'offset', 'union', 'fetch', 'with']);

/**
 * SELECT <expression list> FROM <table>. Plain words (`select x from y`) count
 * only when the statement starts the input or follows a break, and the table
 * is followed by what SQL puts there; SQL-looking expressions always count.
 */
const selectFrom: Detector = (tk, s) => {
  for (let i = 0; i < tk.length; i++) {
    const k = tk[i]!;
    if (k.t !== T.Statement || k.v !== 'select') continue;
    let sqlish = false;
    let depth = 0;
    let j = i + 1;
    let prevWord = false;
    let ok = true;
    for (; j < tk.length && j < i + 40; j++) {
      const x = tk[j]!;
      if (x.t === T.Keyword && x.v === 'from' && depth <= 0) break;
      if (x.t === T.LParen) (depth++, (sqlish = true));
      else if (x.t === T.RParen) depth--;
      if (x.t === T.Word) {
        if (prevWord) {
          ok = false;
          break;
        }
        prevWord = true;
        continue;
      }
      prevWord = false;
      if (x.t === T.Keyword && !SELECT_MODIFIERS.has(x.v)) {
        ok = false;
        break;
      }
      if (x.t === T.Func || x.t === T.Number || x.t === T.String || x.t === T.Variable || x.t === T.Statement || (x.t === T.Op && x.v === '*')) sqlish = true;
    }
    if (!ok || j >= tk.length || tk[j]!.v !== 'from' || j === i + 1) continue;
    const t1 = tk[j + 1];
    if (!t1) continue;
    if (t1.t === T.LParen || t1.t === T.Func) {
      return span(s, tk, i, j + 1);
    }
    if (t1.t !== T.Word && t1.t !== T.Keyword) continue;
    let e = j + 2;
    while (tk[e]?.t === T.Dot && tk[e + 1]) (e += 2), (sqlish = true);
    const after = tk[e];
    const starts = i === 0 || [T.Semi, T.LParen, T.String, T.Number, T.RParen].includes(tk[i - 1]!.t);
    const sqlEnd = !after || after.t === T.Semi || after.t === T.RParen || after.t === T.Union || after.t === T.Comment || (after.t === T.Keyword && AFTER_TABLE.has(after.v)) || after.t === T.Compare;
    if ((sqlish && (sqlEnd || after?.t === T.Word)) || (starts && sqlEnd)) return span(s, tk, i, e);
  }
  return null;
};

const STACKABLE = new Set(['declare', 'select', 'insert', 'update', 'delete', 'drop', 'exec', 'execute', 'shutdown', 'waitfor', 'create', 'alter', 'truncate', 'grant', 'set']);
const STACK_EVIDENCE = new Set(['table', 'into', 'from', 'database', 'procedure', 'delay', 'schema', 'all', 'distinct', 'top']);

/** `; DECLARE @x …`, `; DROP TABLE t`, `; EXEC master..xp_cmdshell`. */
const stacked: Detector = (tk, s) => {
  for (let i = 0; i < tk.length - 1; i++) {
    if (tk[i]!.t !== T.Semi) continue;
    const st = tk[i + 1]!;
    if (st.t !== T.Statement || !STACKABLE.has(st.v)) continue;
    const a = tk[i + 2];
    if (!a) {
      if (st.v === 'shutdown') return span(s, tk, i, i + 1);
      continue;
    }
    const b = tk[i + 3];
    if (
      a.t === T.Variable || a.t === T.Func || a.t === T.LParen || a.t === T.Number || (a.t === T.Op && a.v === '*') ||
      (a.t === T.Keyword && STACK_EVIDENCE.has(a.v)) ||
      (a.t === T.Word && b && (b.t === T.Dot || b.t === T.LParen || b.t === T.Variable || (b.t === T.Compare && b.v === '=') || b.t === T.Comma || b.t === T.Semi || (b.t === T.Keyword && (b.v === 'from' || b.v === 'set'))))
    ) {
      return span(s, tk, i, i + 3);
    }
  }
  return null;
};

/**
 * A logic operator after a break out of a literal, followed by a comparison
 * or a SQL function: `' or 'a'='a`, `1) and 12=12`, `') or json_extract(…)`.
 * Also `' or 1--`, where the comment cuts off the rest of the query.
 */
const boolean: Detector = (tk, s) => {
  for (let i = 1; i < tk.length - 1; i++) {
    const k = tk[i]!;
    if (k.t !== T.Logic || k.v === 'not') continue;
    let b = i - 1;
    while (b > 0 && tk[b]!.t === T.RParen) b--;
    const prev = tk[b]!;
    // Only after a literal or a closing parenthesis: where injected text breaks out of the query's value.
    // A number counts when it opens the input (`1 or 1=1`), not inside prose or arithmetic (`5 > 3 and 2 < 4`).
    if (!(prev.t === T.String || tk[i - 1]!.t === T.RParen || (prev.t === T.Number && opensInput(tk, b)))) continue;
    const ctxBreak = prev.t === T.String && prev.ctx === true;
    let j = i + 1;
    while (tk[j]?.t === T.LParen || (tk[j]?.t === T.Logic && tk[j]!.v === 'not') || (tk[j]?.t === T.Op && tk[j]!.v === '!')) j++;
    const a = tk[j];
    if (!a) continue;
    if (a.t === T.Func && SQL_FUNCS.has(a.v)) return span(s, tk, i, j + 1);
    if (!isOperand(a)) continue;
    j++;
    // `x.y`, `a+b`, `9648*7799`: follow simple arithmetic and qualified names.
    for (let g = 0; g < 8 && tk[j] && (tk[j]!.t === T.Dot || tk[j]!.t === T.Op) && isOperand(tk[j + 1]); g++) j += 2;
    const c = tk[j];
    if (c && c.t === T.Compare) {
      const rhs = tk[j + 1];
      if (rhs && (isOperand(rhs) || rhs.t === T.LParen || (rhs.t === T.Op && rhs.v === '-'))) return span(s, tk, i, j + 1);
    }
    const endish = !c || c.t === T.Comment || c.t === T.Semi;
    if (endish && ctxBreak && (a.t === T.Number || a.t === T.String || (a.t === T.Keyword && a.v === 'true'))) return span(s, tk, i, j);
  }
  return null;
};

/** Whether only signs and parentheses come before token `b`. */
const opensInput = (tk: Token[], b: number): boolean => {
  for (let k = 0; k < b; k++) {
    const x = tk[k]!;
    if (!(x.t === T.LParen || (x.t === T.Op && (x.v === '-' || x.v === '+')))) return false;
  }
  return true;
};

/** A call to a function that only SQL injection uses: `sleep(5)`, `benchmark(…)`, `extractvalue(…)`. */
const dangerousFunc: Detector = (tk, s) => {
  for (let i = 0; i < tk.length - 1; i++) {
    const k = tk[i]!;
    if (k.t !== T.Func || !STRONG_FUNCS.has(k.v)) continue;
    const a = tk[i + 2];
    if (k.v === 'sleep' || k.v === 'exp' || k.v === 'polygon' || k.v === 'multipoint') {
      // Common words: count them only with an argument that SQL would take.
      if (!a || !(a.t === T.Number || a.t === T.Statement || a.t === T.LParen || (a.t === T.Func && SQL_FUNCS.has(a.v)))) continue;
      if (k.v !== 'sleep' && a.t === T.Number) continue;
    }
    return span(s, tk, i, i + 2);
  }
  // WAITFOR DELAY '0:0:5'
  for (let i = 0; i < tk.length - 2; i++) {
    if (tk[i]!.v === 'waitfor' && (tk[i + 1]!.v === 'delay' || tk[i + 1]!.v === 'time') && tk[i + 2]!.t === T.String) return span(s, tk, i, i + 2);
  }
  return null;
};

/** A quote that closes the literal and then comments out or ends the query: `admin'--`, `admin'#`, `x';`. */
const quoteComment: Detector = (tk, s, comments) => {
  if (!comments && !tk.some((k) => k.t === T.Semi)) return null;
  const first = tk[0];
  if (!first || first.t !== T.String || !first.ctx) return null;
  let j = 1;
  while (tk[j]?.t === T.RParen) j++;
  const k = tk[j];
  if (!k) return null;
  if (k.t === T.Comment) {
    // `#` and `--` comment out the rest only when followed by a blank or the end; `"#anchor"` and `"--flag"` are text.
    if (k.v === '/*') return span(s, tk, 0, j);
    const after = s.charCodeAt(k.p + k.v.length);
    return Number.isNaN(after) || isSpace(after) ? span(s, tk, 0, j) : null;
  }
  if (k.t === T.Semi && (!tk[j + 1] || tk[j + 1]!.t === T.Comment)) return span(s, tk, 0, j);
  return null;
};

/** The SQL detectors by name, for rules to refer to. */
export const SQL_DETECTORS = { union, selectFrom, stacked, boolean, dangerousFunc, quoteComment } as const;
export type SqlDetectorName = keyof typeof SQL_DETECTORS;

/**
 * Runs one detector over the three readings of `s` (as is, inside `'…`,
 * inside `"…`), reusing the token lists cached in `cache`.
 */
export function sqlDetect(name: SqlDetectorName, s: string, cache: SqlCache): string | null {
  const d = SQL_DETECTORS[name];
  for (let c = 0; c < 3; c++) {
    const q = c === 0 ? null : c === 1 ? "'" : '"';
    if (q && s.indexOf(q) === -1) continue;
    let entry = cache[c];
    if (!entry) {
      const all = tokenize(s, q);
      const tk = all.filter((k) => k.t !== T.Comment);
      // Keep a comment only where it is the first thing after the literal, for quoteComment.
      entry = cache[c] = { tk, withComments: all, comments: tk.length !== all.length };
    }
    const r = name === 'quoteComment' ? d(entry.withComments, s, entry.comments) : d(entry.tk, s, entry.comments);
    if (r) return r;
  }
  return null;
}

/** Token lists of one value, computed once for all SQL detectors. */
export type SqlCache = [SqlEntry?, SqlEntry?, SqlEntry?];
interface SqlEntry {
  tk: Token[];
  withComments: Token[];
  comments: boolean;
}
