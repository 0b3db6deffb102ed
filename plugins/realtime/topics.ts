/**
 * Topic names, subscription patterns, and the segment index that finds every
 * pattern matching a published topic by walking the topic's segments — the
 * cost depends on the topic's depth, not on how many patterns exist.
 */
import { BextError } from '../../plugin-api/index.js';

/** Longest topic or pattern, in characters (the kernel's limit). */
export const MAX_TOPIC_LENGTH = 256;

const SEGMENT = /^[a-z0-9_.-]+$/i;

/** Whether `t` is a concrete topic: segments of `[a-z0-9_.-]` joined by `/`. */
export function isTopic(t: unknown): t is string {
  if (typeof t !== 'string' || t.length === 0 || t.length > MAX_TOPIC_LENGTH) return false;
  for (const s of t.split('/')) if (!SEGMENT.test(s)) return false;
  return true;
}

/**
 * Parses a subscription: a topic, or a pattern where a segment may be `*`
 * (exactly one segment) and the last may be `**` (zero or more segments).
 * Throws BEXT_ERR_TOPIC_INVALID with what to change.
 */
export function parseSubscription(p: unknown): { segs: string[]; wildcard: boolean } {
  if (typeof p !== 'string' || p.length === 0 || p.length > MAX_TOPIC_LENGTH) {
    throw new BextError('BEXT_ERR_TOPIC_INVALID', `topic ${JSON.stringify(p)} is invalid`, { hint: `use 1 to ${MAX_TOPIC_LENGTH} characters` });
  }
  const segs = p.split('/');
  let wildcard = false;
  for (let i = 0; i < segs.length; i++) {
    const s = segs[i]!;
    if (s === '*') wildcard = true;
    else if (s === '**') {
      if (i !== segs.length - 1) {
        throw new BextError('BEXT_ERR_TOPIC_INVALID', `topic pattern ${JSON.stringify(p)} has "**" before its last segment`, { hint: 'use "**" only as the last segment (custom/**); use "*" for one segment elsewhere' });
      }
      wildcard = true;
    } else if (!SEGMENT.test(s)) {
      throw new BextError('BEXT_ERR_TOPIC_INVALID', `topic ${JSON.stringify(p)} has an invalid segment ${JSON.stringify(s)}`, { hint: 'use segments of [a-z0-9_.-] separated by "/", with "*" or a final "**" as wildcards' });
    }
  }
  return { segs, wildcard };
}

/** Whether a pattern (with `*` and a final `**`) matches a topic. */
export function patternMatches(segs: readonly string[], topic: readonly string[]): boolean {
  for (let i = 0; i < segs.length; i++) {
    const s = segs[i]!;
    if (s === '**') return true;
    if (i >= topic.length) return false;
    if (s !== '*' && s !== topic[i]) return false;
  }
  return segs.length === topic.length;
}

class Node<T> {
  children: Map<string, Node<T>> | null = null;
  star: Node<T> | null = null;
  /** The pattern that ends at this node. */
  here: T | null = null;
  /** The pattern that ends at this node with `/**`: matches this node and everything below. */
  rest: T | null = null;
  isEmpty(): boolean {
    return this.here === null && this.rest === null && this.star === null && (this.children === null || this.children.size === 0);
  }
}

/**
 * A trie over pattern segments. Each pattern holds one value; `match` visits
 * the value of every pattern that matches a topic.
 *
 * @example
 * ```ts
 * const idx = new PatternIndex<string>();
 * idx.set(['app', '*', 'events'], 'A'); idx.set(['custom', '**'], 'B');
 * idx.match(['custom', 'x', 'y'], (v) => console.log(v)); // B
 * ```
 */
export class PatternIndex<T> {
  #root = new Node<T>();
  #size = 0;

  get size(): number {
    return this.#size;
  }

  set(segs: readonly string[], value: T): void {
    let n = this.#root;
    const last = segs.length - 1;
    for (let i = 0; i < segs.length; i++) {
      const s = segs[i]!;
      if (s === '**' && i === last) {
        if (n.rest === null) this.#size++;
        n.rest = value;
        return;
      }
      if (s === '*') n = n.star ??= new Node<T>();
      else {
        n.children ??= new Map();
        let c = n.children.get(s);
        if (!c) n.children.set(s, (c = new Node<T>()));
        n = c;
      }
    }
    if (n.here === null) this.#size++;
    n.here = value;
  }

  get(segs: readonly string[]): T | null {
    let n: Node<T> | null | undefined = this.#root;
    const last = segs.length - 1;
    for (let i = 0; i < segs.length && n; i++) {
      const s = segs[i]!;
      if (s === '**' && i === last) return n.rest;
      n = s === '*' ? n.star : n.children?.get(s);
    }
    return n ? n.here : null;
  }

  /** Removes a pattern and prunes nodes left empty, so churned patterns leave nothing behind. */
  delete(segs: readonly string[]): void {
    const path: { node: Node<T>; key: string }[] = [];
    let n: Node<T> | null | undefined = this.#root;
    const last = segs.length - 1;
    for (let i = 0; i < segs.length && n; i++) {
      const s = segs[i]!;
      if (s === '**' && i === last) {
        if (n.rest !== null) this.#size--;
        n.rest = null;
        break;
      }
      path.push({ node: n, key: s });
      n = s === '*' ? n.star : n.children?.get(s);
      if (i === last && n) {
        if (n.here !== null) this.#size--;
        n.here = null;
      }
    }
    for (let i = path.length - 1; i >= 0; i--) {
      const { node, key } = path[i]!;
      const child = key === '*' ? node.star : node.children?.get(key);
      if (!child || !child.isEmpty()) break;
      if (key === '*') node.star = null;
      else node.children!.delete(key);
    }
  }

  /** Calls `visit` for the value of every pattern that matches the topic. */
  match(topic: readonly string[], visit: (value: T) => void): void {
    this.#walk(this.#root, topic, 0, visit);
  }

  #walk(n: Node<T>, topic: readonly string[], i: number, visit: (value: T) => void): void {
    if (n.rest !== null) visit(n.rest);
    if (i === topic.length) {
      if (n.here !== null) visit(n.here);
      return;
    }
    const c = n.children?.get(topic[i]!);
    if (c) this.#walk(c, topic, i + 1, visit);
    if (n.star) this.#walk(n.star, topic, i + 1, visit);
  }

  /** Whether any pattern matches the topic. */
  any(topic: readonly string[]): boolean {
    let found = false;
    this.#walk(this.#root, topic, 0, () => (found = true));
    return found;
  }
}
