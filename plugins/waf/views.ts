/**
 * The normalised forms ("views") of one inspected value. Each is computed on
 * first use and cached, so a value that no rule looks at twice costs one
 * decode at most.
 */
import { deepDecode } from './decode.js';
import type { SqlCache } from './sqli.js';

/** Names of the views a rule can match against. */
export type ViewName = 'dec' | 'sh' | 'js' | 'fs' | 'sql';

/** Views by number, for the engine's hot loop. */
export const VIEW_INDEX: Readonly<Record<ViewName | 'raw', number>> = { dec: 0, sh: 1, js: 2, fs: 3, sql: 4, raw: 5 };

const SHELL_QUOTES = /[\\'"^]/g;
const IFS = /\$\{?ifs\}?/g;
const EMPTY_EXPANSION = /\$(?:[\d@*]|\{\s*\})/g;
const HSPACE = /[ \t\v\f\u00a0]+/g;
const SHORT_TAG = /<\/?[a-z]{1,10}>/g;
const CONCAT = /(['"`])\s*[+&]?\s*\1/g;

export class Views {
  #dec?: string;
  #sh?: string;
  #js?: string;
  #fs?: string;
  #sql?: string;
  /** Token lists for the SQL detectors. */
  readonly sqlTokens: SqlCache = [];
  /** Bit per view index (see VIEW_INDEX): its literals have been looked up (by the engine). */
  scanned = 0;
  /** Identifies this value in the engine's per-rule literal tables. */
  readonly mark: number;

  /**
   * @param raw the value as extracted (query and form values already form-decoded once).
   * @param mark a number no other live Views of the same engine has.
   */
  constructor(readonly raw: string, mark = 0) {
    this.mark = mark;
  }

  /** Fully decoded (URL, entities, JS escapes, Unicode folding), lower-cased. */
  get dec(): string {
    return (this.#dec ??= deepDecode(this.raw).toLowerCase());
  }

  /**
   * Shell reading: quotes, backslashes and carets removed (`c'a't` is `cat`),
   * `$IFS` as a space, empty expansions (`$9`, `$@`) dropped, blanks folded.
   */
  get sh(): string {
    if (this.#sh === undefined) {
      let s = this.dec;
      if (s.indexOf('$') !== -1) s = s.replace(IFS, ' ').replace(EMPTY_EXPANSION, '');
      this.#sh = s.replace(SHELL_QUOTES, '').replace(HSPACE, ' ');
    }
    return this.#sh;
  }

  /**
   * Script reading: string concatenations joined (`'ale'+'rt'` is `'alert'`)
   * and short tags a sanitiser would strip removed (`al<x>ert`).
   */
  get js(): string {
    if (this.#js === undefined) {
      let s = this.dec;
      if (s.indexOf('<') !== -1) s = s.replace(SHORT_TAG, '');
      if (/['"`]/.test(s)) s = s.replace(CONCAT, '');
      this.#js = s;
    }
    return this.#js;
  }

  /** File-path reading: backslashes as slashes, `/./` and repeated slashes folded. */
  get fs(): string {
    if (this.#fs === undefined) {
      let s = this.dec;
      if (s.indexOf('\\') !== -1) s = s.replace(/\\/g, '/');
      if (s.indexOf('/') !== -1) s = s.replace(/\/(?:\.?\/)+/g, '/');
      this.#fs = s;
    }
    return this.#fs;
  }

  // SQL reading: block comments removed (so a comment between UNION and SELECT
  // reads as a space), the body of MySQL executable comments kept, blanks folded.
  get sql(): string {
    if (this.#sql === undefined) {
      const s = this.dec;
      this.#sql = s.indexOf('/*') === -1 ? s : stripSqlComments(s);
    }
    return this.#sql;
  }

  /** A view by its index in VIEW_INDEX. */
  at(i: number): string {
    switch (i) {
      case 0: return this.dec;
      case 1: return this.sh;
      case 2: return this.js;
      case 3: return this.fs;
      case 4: return this.sql;
      default: return this.raw;
    }
  }
}

/** Removes SQL block comments in one forward pass; an executable comment's body stays. */
function stripSqlComments(s: string): string {
  let out = '';
  let i = 0;
  for (;;) {
    const open = s.indexOf('/*', i);
    if (open === -1) break;
    out += `${s.slice(i, open)} `;
    if (s.charCodeAt(open + 2) === 33 /* ! */) {
      let j = open + 3;
      while (j < s.length && s.charCodeAt(j) >= 48 && s.charCodeAt(j) <= 57) j++;
      const close = s.indexOf('*/', j);
      out += `${s.slice(j, close === -1 ? s.length : close)} `;
      i = close === -1 ? s.length : close + 2;
    } else {
      const close = s.indexOf('*/', open + 2);
      i = close === -1 ? s.length : close + 2;
    }
  }
  return (out + s.slice(i)).replace(HSPACE, ' ');
}
