/**
 * The render worker. The build bundles this file with the site's pages into
 * one CommonJS file; a worker thread runs that file, which calls
 * `startWorker` with every page, layout and island of the build.
 *
 * A worker renders many requests at once (loaders await I/O); React's
 * rendering itself is synchronous for string renders, so memoisation state
 * is per render (a context), never global.
 */
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { createElement, type ReactElement } from 'react';
import { renderToPipeableStream, renderToString } from 'react-dom/server';
import { Writable } from 'node:stream';
import { LRUCache } from 'lru-cache';
import { createCore, DEFAULT_INIT, hintLinks, RenderFailure, type Answer, type Prepared, type SiteBundle } from './common.js';
import { MARK, MemoTableContext, setMemoStore, type MemoTable } from './runtime.js';
import type { FromWorker, ToWorker, WorkerInit } from './protocol.js';

export type { IslandModule, LayoutModule, PageModule, SiteBundle } from './common.js';

// ------------------------------------------------------------ memo splice

/** Per-worker store of memoised HTML, bounded by entries and bytes. */
class Memo {
  readonly lru: LRUCache<string, string>;
  counts: Record<string, { hit: number; miss: number; uncacheable: number }> = {};
  constructor(max: number, maxBytes: number) {
    this.lru = new LRUCache<string, string>({ max, maxSize: maxBytes, sizeCalculation: (v, k) => (v.length + k.length) * 2 || 1 });
  }
  get(key: string): string | undefined {
    return this.lru.get(key);
  }
  set(key: string, html: string): void {
    this.lru.set(key, html);
  }
  count(name: string, what: 'hit' | 'miss' | 'uncacheable'): void {
    const c = (this.counts[name] ??= { hit: 0, miss: 0, uncacheable: 0 });
    c[what]++;
  }
}

const SEP = '<!-- -->';

/**
 * Replaces memo marks in rendered HTML: a hit mark becomes the stored HTML;
 * the HTML between a start and an end mark is stored. Works on a stream of
 * chunks (marks may straddle chunk boundaries).
 */
export class Splicer {
  #open: { i: number; parts: string[] }[] = [];
  #tail = '';
  constructor(private table: MemoTable, private memo: Memo) {}

  push(chunk: string): string {
    let s = this.#tail ? this.#tail + chunk : chunk;
    this.#tail = '';
    if (s.indexOf(MARK) === -1) {
      if (this.#open.length) this.#capture(s);
      return s;
    }
    const nonce = this.table.nonce;
    let out = '';
    let pos = 0;
    for (;;) {
      const a = s.indexOf(MARK, pos);
      if (a === -1) {
        out += this.#emit(s.slice(pos));
        break;
      }
      const b = s.indexOf(MARK, a + 1);
      if (b === -1) {
        out += this.#emit(s.slice(pos, a));
        if (s.length - a > 64) out += this.#emit(s.slice(a));
        else this.#tail = s.slice(a);
        break;
      }
      const body = s.slice(a + 1, b);
      if (!body.startsWith(nonce)) {
        // A stray U+0001 in the content: keep it, look for marks after it.
        out += this.#emit(s.slice(pos, a + 1));
        pos = a + 1;
        continue;
      }
      // React separates adjacent text nodes with `<!-- -->`; next to a mark (a text node of ours) it is noise.
      out += this.#emit(s.endsWith(SEP, a) && a - SEP.length >= pos ? s.slice(pos, a - SEP.length) : s.slice(pos, a));
      const kind = body.charCodeAt(nonce.length);
      const i = Number(body.slice(nonce.length + 1));
      const slot = this.table.slots[i];
      if (kind === 72 /* H */ && slot?.html !== undefined) out += this.#emit(slot.html);
      else if (kind === 83 /* S */) this.#open.push({ i, parts: [] });
      else if (kind === 69 /* E */) {
        const o = this.#open.pop();
        if (o && o.i === i && slot?.key) this.memo.set(slot.key, o.parts.join(''));
      }
      pos = s.startsWith(SEP, b + 1) ? b + 1 + SEP.length : b + 1;
    }
    return out;
  }

  end(): string {
    const t = this.#tail;
    this.#tail = '';
    return t;
  }

  #emit(seg: string): string {
    if (seg && this.#open.length) this.#capture(seg);
    return seg;
  }

  #capture(seg: string): void {
    for (const o of this.#open) o.parts.push(seg);
  }
}

// ------------------------------------------------------------------ render

function errorMessage(e: unknown): string {
  if (e instanceof Error) return e.stack ?? e.message;
  return String(e);
}

/** Starts serving renders when running as a bext render worker; otherwise does nothing. */
export function startWorker(site: SiteBundle): void {
  if (isMainThread || !parentPort || !(workerData as WorkerInit | undefined)?.bext) return;
  const port = parentPort;
  const init: WorkerInit = { ...DEFAULT_INIT, ...(workerData as WorkerInit) };
  const memo = new Memo(init.memo.maxEntries, init.memo.maxBytes);
  setMemoStore(memo);
  const aborts = new Map<number, () => void>();
  const aborted = new Set<number>();
  let nonceSeq = 0;
  const nonceBase = Math.random().toString(36).slice(2, 10);
  const newTable = (): MemoTable => ({ nonce: `${nonceBase}${(++nonceSeq).toString(36)}.`, slots: [] });
  const withTable = (el: ReactElement, table: MemoTable) => createElement(MemoTableContext.Provider, { value: table }, el);
  const core = createCore(site, init, (el) => {
    const table = newTable();
    return new Splicer(table, memo).push(renderToString(withTable(el, table)));
  });

  const post = (m: FromWorker) => port.postMessage(m);
  const fail = (id: number, e: unknown) => {
    const f = e instanceof RenderFailure ? e : new RenderFailure(500, e instanceof Error ? (e.stack ?? e.message) : String(e));
    post({ t: 'fail', id, status: f.status, code: f.status === 404 ? 'BEXT_ERR_NOT_FOUND' : 'BEXT_ERR_SSR_RENDER', message: f.detail });
  };
  const encoder = new TextEncoder();
  const done = (id: number, a: Answer) => {
    if (aborted.delete(id)) return;
    // TextEncoder gives the bytes their own ArrayBuffer, so transferring it detaches nothing else.
    const body = encoder.encode(a.body);
    port.postMessage({ t: 'done', id, status: a.status, headers: a.headers, body, links: a.links } satisfies FromWorker, [body.buffer as ArrayBuffer]);
  };

  async function page(m: Extract<ToWorker, { t: 'page' }>): Promise<void> {
    const p = await core.prepare(m, m.route);
    if (!('el' in p)) return done(m.id, p);
    if (aborted.delete(m.id)) return;
    if (m.stream || p.stream) return stream(m.id, p);
    let body: string;
    try {
      body = core.document(p.el);
    } catch (e) {
      return done(m.id, core.failure(m, e));
    }
    done(m.id, { status: p.status, headers: p.headers, body, links: hintLinks(body) });
  }

  function stream(id: number, p: Prepared): void {
    const table = newTable();
    const splicer = new Splicer(table, memo);
    const decoder = new TextDecoder();
    // Until the head is posted (after the shell, so its links are known), output is held here.
    let pending: string[] | null = [];
    let ended = false;
    const send = (text: string) => {
      if (!text) return;
      if (pending) pending.push(text);
      else post({ t: 'chunk', id, data: text });
    };
    const finish = () => {
      aborts.delete(id);
      post({ t: 'end', id });
    };
    const out = new Writable({
      write(chunk: Uint8Array, _enc, cb) {
        send(splicer.push(decoder.decode(chunk, { stream: true })));
        cb();
      },
      final(cb) {
        send(splicer.push(decoder.decode()) + splicer.end());
        ended = true;
        if (!pending) finish();
        cb();
      },
    });
    const timer = setTimeout(() => r.abort(new Error(`render did not finish within ${init.renderTimeoutMs} ms`)), init.renderTimeoutMs);
    timer.unref();
    out.on('finish', () => clearTimeout(timer));
    const r = renderToPipeableStream(withTable(p.el, table), {
      onShellReady() {
        // pipe() writes the shell (and, for a page that never suspends, everything) synchronously.
        r.pipe(out);
        const first = pending!.join('');
        pending = null;
        post({ t: 'head', id, status: p.status, headers: p.headers, links: hintLinks(first) });
        if (first) post({ t: 'chunk', id, data: first });
        if (ended) finish();
      },
      onShellError(e) {
        clearTimeout(timer);
        aborts.delete(id);
        fail(id, e);
      },
      onError(e) {
        // A boundary that failed after the shell: React streams its fallback and retries on the client.
        if (!ended) console.error(`bext ssr: part of a streamed page failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
      },
    });
    aborts.set(id, () => {
      clearTimeout(timer);
      r.abort(new Error('the client went away'));
    });
  }

  port.on('message', (m: ToWorker) => {
    switch (m.t) {
      case 'page':
        page(m).catch((e: unknown) => fail(m.id, e));
        break;
      case 'island':
        core.island(m, m.island).then((a) => done(m.id, a), (e: unknown) => fail(m.id, e));
        break;
      case 'abort': {
        const a = aborts.get(m.id);
        if (a) {
          aborts.delete(m.id);
          a();
        } else aborted.add(m.id);
        // Bounded: an abort for a render that already answered is never consumed.
        if (aborted.size > 10_000) aborted.clear();
        break;
      }
      case 'ping':
        post({ t: 'pong', seq: m.seq });
        break;
    }
  });

  const stats = setInterval(() => {
    const counts = memo.counts;
    memo.counts = {};
    post({ t: 'stats', heapUsed: process.memoryUsage().heapUsed, memo: counts, memoEntries: memo.lru.size, memoBytes: memo.lru.calculatedSize });
  }, init.statsIntervalMs);
  stats.unref();
  post({ t: 'ready', settings: core.settings, islands: core.islands });
}
