/**
 * A small reader of the Prometheus text format, for the samples the
 * dashboard charts. Only families the caller asks for have their labels
 * parsed; everything else is skipped after a prefix check.
 */

/** One sample: its labels and value. */
export interface Sample {
  labels: Record<string, string>;
  value: number;
}

/** Samples by metric name (histogram series keep their `_bucket`/`_sum`/`_count` suffix). */
export type Samples = Map<string, Sample[]>;

function parseLabels(s: string, from: number, to: number): Record<string, string> {
  const out: Record<string, string> = {};
  let i = from;
  while (i < to) {
    const eq = s.indexOf('=', i);
    if (eq === -1 || eq >= to) break;
    const name = s.slice(i, eq).trim();
    let j = eq + 2; // past `="`
    let v = '';
    while (j < to && s[j] !== '"') {
      if (s[j] === '\\' && j + 1 < to) {
        const n = s[j + 1];
        v += n === 'n' ? '\n' : n;
        j += 2;
      } else v += s[j++];
    }
    out[name] = v;
    i = j + 1;
    if (s[i] === ',') i++;
  }
  return out;
}

/**
 * Parses the samples whose metric name passes `want`.
 *
 * @example
 * ```ts
 * const m = parseProm(text, (n) => n.startsWith('bext_hook_'));
 * m.get('bext_hook_calls_total')?.[0]; // { labels: { plugin: 'waf', ... }, value: 12 }
 * ```
 */
export function parseProm(text: string, want: (name: string) => boolean): Samples {
  const out: Samples = new Map();
  let pos = 0;
  while (pos < text.length) {
    let end = text.indexOf('\n', pos);
    if (end === -1) end = text.length;
    if (text.charCodeAt(pos) !== 35 /* # */ && end > pos) {
      let nameEnd = pos;
      while (nameEnd < end && text[nameEnd] !== '{' && text[nameEnd] !== ' ') nameEnd++;
      const name = text.slice(pos, nameEnd);
      if (want(name)) {
        let labels: Record<string, string> = {};
        let rest = nameEnd;
        if (text[nameEnd] === '{') {
          // The closing brace is the last one before the value (label values may hold braces).
          const close = text.lastIndexOf('}', end);
          labels = parseLabels(text, nameEnd + 1, close);
          rest = close + 1;
        }
        const value = Number(text.slice(rest, end).trim().split(' ')[0]);
        let list = out.get(name);
        if (!list) out.set(name, (list = []));
        list.push({ labels, value });
      }
    }
    pos = end + 1;
  }
  return out;
}

/** Sum of a metric's samples whose labels match `where`. */
export function sum(m: Samples, name: string, where: Record<string, string> = {}): number {
  let total = 0;
  for (const s of m.get(name) ?? []) {
    let ok = true;
    for (const k in where) if (s.labels[k] !== where[k]) ok = false;
    if (ok && Number.isFinite(s.value)) total += s.value;
  }
  return total;
}

/** Sums of a metric grouped by one label. */
export function byLabel(m: Samples, name: string, label: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const s of m.get(name) ?? []) {
    const k = s.labels[label] ?? '';
    if (Number.isFinite(s.value)) out.set(k, (out.get(k) ?? 0) + s.value);
  }
  return out;
}
