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
  /** Transitions: row offset of the next state; column 0 holds the state's output (1 hit, 2 confirm). */
  #delta: Uint16Array | Int32Array = new Uint16Array(0);
  /** Confirmations by row offset. */
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
    // Rows start at even offsets, so bit 0 of a transition can flag a target state that has outputs.
    this.#k = (k + 1) % 2 === 0 ? k + 1 : k + 2;
    const lits: { lit: string; confirm?: RegExp }[] = [];
    const first = new Set<string>();
    for (const g of gates) {
      if (typeof g === 'string') lits.push({ lit: g.toLowerCase() });
      else if ('first' in g) for (const w of g.first) first.add(w.toLowerCase());
      else lits.push({ lit: g.lit.toLowerCase(), confirm: g.confirm });
    }
    this.#first = first;
    // `..` and `--` change meaning (traversal, SQL comment) without any transform character.
    lits.push({ lit: '..' }, { lit: '--' });
    this.#build(lits.filter((l) => ![...l.lit].some((ch) => ch.charCodeAt(0) >= 128 || this.#sym[ch.charCodeAt(0)] === 0)));
  }

  /** Whether `v` must be inspected in full. */
  needs(v: string): boolean {
    const sym = this.#sym;
    const delta = this.#delta;
    const n = v.length;
    // A state is the offset of its row; a transition with bit 0 set leads to a state with outputs,
    // which column 0 of its row describes (1 hit, 2 confirm).
    let state = 0;
    for (let i = 0; i < n; i++) {
      const c = v.charCodeAt(i);
      if (c >= 128) return true;
      const s = sym[c]!;
      if (s === 0) return true;
      state = delta[state + s]!;
      if ((state & 1) !== 0) {
        state ^= 1;
        if (delta[state] === 1) return true;
        for (const re of this.#confirms[state]!) if (re.test(v)) return true;
      }
    }
    return this.#first.size !== 0 && v.indexOf(' ') !== -1 && this.#firstWord(v);
  }

  /** The first word (after leading spaces, path and `.exe` stripped) is a gate word and something follows it. */
  #firstWord(v: string): boolean {
    let a = 0;
    while (a < v.length && v.charCodeAt(a) === 32) a++;
    let b = a;
    while (b < v.length && v.charCodeAt(b) !== 32) b++;
    // A first word counts only when something follows it: `cat /etc/passwd`, not `cat`.
    if (b === a || b === v.length) return false;
    let w = v.slice(a, b).toLowerCase();
    const slash = w.lastIndexOf('/');
    if (slash !== -1) w = w.slice(slash + 1);
    if (w.endsWith('.exe')) w = w.slice(0, -4);
    return this.#first.has(w);
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
    const delta = n * k < 65536 ? new Uint16Array(n * k) : new Int32Array(n * k);
    const fail = new Int32Array(n);
    const queue: number[] = [];
    for (let s = 1; s < k; s++) {
      const nx = goto[0]![s];
      if (nx !== undefined) {
        delta[s] = nx * k;
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
          fail[nx] = delta[f * k + s]! / k;
          delta[st * k + s] = nx * k;
          queue.push(nx);
        } else delta[st * k + s] = delta[f * k + s]!;
      }
    }
    const confirmsByRow: (RegExp[] | undefined)[] = [];
    for (let st = 0; st < n; st++) {
      for (let s = 1; s < k; s++) {
        const to = delta[st * k + s]!;
        if (out[to / k] !== 0) delta[st * k + s] = to | 1;
      }
    }
    for (let st = 0; st < n; st++) {
      delta[st * k] = out[st]!;
      if (confirms[st]) confirmsByRow[st * k] = confirms[st];
    }
    this.#delta = delta;
    this.#confirms = confirmsByRow;
  }
}

/**
 * Which rules' literals occur in a string: one Aho-Corasick pass marks every
 * rule one of whose literals is present, instead of one `indexOf` per
 * literal per rule.
 */
export class LiteralIndex {
  /** Symbol per ASCII code: characters in some literal get 2…; all others share 1. Column 0 of a row marks its outputs. */
  readonly #sym = new Uint8Array(128).fill(1);
  readonly #delta: Uint16Array | Int32Array;
  /** Rule indexes found at a state (including through failure links); column 0 of the state's row holds 1 + the index here. */
  readonly #outs: number[][] = [];

  constructor(entries: readonly { lit: string; id: number }[]) {
    const sym = this.#sym;
    let k = 2;
    for (const { lit } of entries) {
      for (const ch of lit.toLowerCase()) {
        const c = ch.charCodeAt(0);
        if (c < 128 && sym[c] === 1) sym[c] = k++;
      }
    }
    for (let c = 65; c <= 90; c++) sym[c] = sym[c + 32]!;
    const K = k;
    const goto: Map<number, number>[] = [new Map()];
    const outs: number[][] = [[]];
    for (const { lit, id } of entries) {
      if (!lit || [...lit].some((ch) => ch.charCodeAt(0) >= 128)) continue;
      let st = 0;
      for (let i = 0; i < lit.length; i++) {
        const s = sym[lit.charCodeAt(i)]!;
        let nx = goto[st]!.get(s);
        if (nx === undefined) {
          nx = goto.length;
          goto.push(new Map());
          outs.push([]);
          goto[st]!.set(s, nx);
        }
        st = nx;
      }
      if (!outs[st]!.includes(id)) outs[st]!.push(id);
    }
    const n = goto.length;
    const delta = n * K < 65536 ? new Uint16Array(n * K) : new Int32Array(n * K);
    const fail = new Int32Array(n);
    const queue: number[] = [];
    for (const [s, nx] of goto[0]!) {
      delta[s] = nx * K;
      queue.push(nx);
    }
    for (let qi = 0; qi < queue.length; qi++) {
      const st = queue[qi]!;
      const f = fail[st]!;
      for (const id of outs[f]!) if (!outs[st]!.includes(id)) outs[st]!.push(id);
      // Symbol 1 (a character in no literal) always leads back to the root: its entry stays 0.
      for (let s = 2; s < K; s++) {
        const nx = goto[st]!.get(s);
        if (nx !== undefined) {
          fail[nx] = delta[f * K + s]! / K;
          delta[st * K + s] = nx * K;
          queue.push(nx);
        } else delta[st * K + s] = delta[f * K + s]!;
      }
    }
    for (let st = 0; st < n; st++) {
      if (outs[st]!.length) {
        this.#outs.push(outs[st]!);
        delta[st * K] = this.#outs.length;
      }
    }
    this.#delta = delta;
  }

  /** Sets `found[id] = mark` for every id with a literal in `s`. */
  scan(s: string, found: Uint32Array, mark: number): void {
    const delta = this.#delta;
    const sym = this.#sym;
    let state = 0;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      state = delta[state + (c < 128 ? sym[c]! : 1)]!;
      const o = delta[state]!;
      if (o !== 0) {
        const ids = this.#outs[o - 1]!;
        for (let k = 0; k < ids.length; k++) found[ids[k]!] = mark;
      }
    }
  }
}
