/**
 * The pre-filter: one pass over a value that decides whether any rule could
 * match it, so that clean values skip decoding and rules entirely.
 *
 * A value needs the full inspection when it contains
 * - a character that some normalised view transforms (`%`, `&`, `\`, quotes,
 *   backtick, `^`, `$`, `<`, control characters, non-ASCII): then a literal
 *   may appear only after decoding; or
 * - one of the rules' gate literals (an Aho-Corasick automaton over
 *   lower-cased ASCII), optionally confirmed by a small regular expression; or
 * - as its first word, one of the rules' first words (`cat /etc/passwd`).
 *
 * Every rule declares gates that are necessary for it to match a value
 * without transform characters; a test checks that filtering never changes a
 * verdict.
 */

/**
 * A necessary condition for a rule, on a value without transform characters:
 * a literal; a literal confirmed by a regular expression; or a first word
 * followed by a space.
 */
export type Gate = string | { lit: string; confirm: RegExp } | { first: readonly string[] };

/** Characters after which some view differs from the lower-cased value. */
const TRANSFORM = '%&\\\'"`^$<';

export class Prefilter {
  /** Per ASCII code: 0 transform trigger, else automaton symbol + 1. */
  readonly #sym = new Uint8Array(128);
  readonly #k: number;
  #delta: Uint16Array | Int32Array = new Uint16Array(0);
  /** Per state: 1 unconditional hit; 2 needs a confirmation. */
  #out: Uint8Array = new Uint8Array(0);
  #confirms: (RegExp[] | undefined)[] = [];
  readonly #first: Set<string>;

  constructor(gates: Iterable<Gate>) {
    let k = 0;
    for (let c = 0; c < 128; c++) {
      const ch = String.fromCharCode(c);
      if (c < 32 || c === 127 || TRANSFORM.includes(ch)) continue;
      if (c >= 65 && c <= 90) continue; // upper case maps onto lower case below
      this.#sym[c] = ++k;
    }
    for (let c = 65; c <= 90; c++) this.#sym[c] = this.#sym[c + 32]!;
    this.#k = k + 1;
    const lits: { lit: string; confirm?: RegExp }[] = [];
    const first = new Set<string>();
    for (const g of gates) {
      if (typeof g === 'string') lits.push({ lit: g.toLowerCase() });
      else if ('first' in g) for (const w of g.first) first.add(w.toLowerCase());
      else lits.push({ lit: g.lit.toLowerCase(), confirm: g.confirm });
    }
    this.#first = first;
    this.#build(lits.filter((l) => ![...l.lit].some((ch) => ch.charCodeAt(0) >= 128 || this.#sym[ch.charCodeAt(0)] === 0)));
  }

  /** Whether `v` must be inspected in full. */
  needs(v: string): boolean {
    const sym = this.#sym;
    const delta = this.#delta;
    const out = this.#out;
    const k = this.#k;
    let state = 0;
    let prev = 0;
    for (let i = 0; i < v.length; i++) {
      const c = v.charCodeAt(i);
      if (c >= 128) return true;
      const s = sym[c]!;
      if (s === 0) return true;
      // `..` and `--` change meaning (traversal, SQL comment) without any transform character.
      if ((c === 46 || c === 45) && prev === c) return true;
      prev = c;
      state = delta[state * k + s]!;
      const o = out[state]!;
      if (o === 1) return true;
      if (o === 2) for (const re of this.#confirms[state]!) if (re.test(v)) return true;
    }
    if (this.#first.size) {
      let a = 0;
      while (a < v.length && v.charCodeAt(a) === 32) a++;
      let b = a;
      while (b < v.length && v.charCodeAt(b) !== 32) b++;
      // A first word counts only when something follows it: `cat /etc/passwd`, not `cat`.
      if (b > a && b < v.length) {
        let w = v.slice(a, b).toLowerCase();
        const slash = w.lastIndexOf('/');
        if (slash !== -1) w = w.slice(slash + 1);
        if (w.endsWith('.exe')) w = w.slice(0, -4);
        if (this.#first.has(w)) return true;
      }
    }
    return false;
  }

  #build(lits: { lit: string; confirm?: RegExp }[]): void {
    const k = this.#k;
    const goto: number[][] = [[]];
    const out: number[] = [0];
    const confirms: (RegExp[] | undefined)[] = [undefined];
    for (const { lit, confirm } of lits) {
      if (!lit) continue;
      let st = 0;
      for (const ch of lit) {
        const s = this.#sym[ch.charCodeAt(0)]!;
        let nx = goto[st]![s];
        if (nx === undefined) {
          nx = goto.length;
          goto.push([]);
          out.push(0);
          confirms.push(undefined);
          goto[st]![s] = nx;
        }
        st = nx;
      }
      if (confirm) {
        if (out[st] !== 1) {
          out[st] = 2;
          (confirms[st] ??= []).push(confirm);
        }
      } else out[st] = 1;
    }
    const n = goto.length;
    const delta = n < 65536 ? new Uint16Array(n * k) : new Int32Array(n * k);
    const fail = new Int32Array(n);
    const queue: number[] = [];
    for (let s = 1; s < k; s++) {
      const nx = goto[0]![s];
      if (nx !== undefined) {
        delta[s] = nx;
        fail[nx] = 0;
        queue.push(nx);
      }
    }
    for (let qi = 0; qi < queue.length; qi++) {
      const st = queue[qi]!;
      const f = fail[st]!;
      // Outputs of the failure state are outputs here too.
      if (out[f] === 1) out[st] = 1;
      else if (out[f] === 2 && out[st] !== 1) {
        out[st] = 2;
        confirms[st] = [...(confirms[st] ?? []), ...confirms[f]!];
      }
      for (let s = 1; s < k; s++) {
        const nx = goto[st]![s];
        if (nx !== undefined) {
          fail[nx] = delta[f * k + s]!;
          delta[st * k + s] = nx;
          queue.push(nx);
        } else delta[st * k + s] = delta[f * k + s]!;
      }
    }
    this.#delta = delta;
    this.#out = Uint8Array.from(out);
    this.#confirms = confirms;
  }
}
