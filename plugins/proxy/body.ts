/**
 * A request body streamed to the upstream as it arrives, while its first
 * `limit` bytes are kept so that a retry can send it again. The client
 * stream is read by hand (never through its async iterator), because an
 * iterator's `return()` would destroy the request — and with it the
 * client's socket — when an attempt is abandoned.
 */
import type { Readable } from 'node:stream';

export class ReplayBody {
  #src: Readable;
  #limit: number;
  #chunks: Buffer[] = [];
  #size = 0;
  /** Chunks read from the client so far (kept or not). */
  #read = 0;
  #overflow = false;
  #ended = false;
  #error: Error | null = null;
  #pulling: Promise<Buffer | null> | null = null;

  constructor(src: Readable, limit: number) {
    this.#src = src;
    this.#limit = limit;
  }

  /** Whether a fresh attempt can still send the whole body. */
  get replayable(): boolean {
    return !this.#overflow;
  }

  /** Whether any attempt has taken bytes from the client yet. */
  get started(): boolean {
    return this.#read > 0 || this.#ended;
  }

  /** A fresh pass over the body for one attempt. */
  iterate(): AsyncIterable<Buffer> {
    let i = 0;
    const next = async (): Promise<IteratorResult<Buffer>> => {
      if (i < this.#chunks.length) return { value: this.#chunks[i++]!, done: false };
      if (this.#overflow && i !== this.#read) throw new Error('request body is no longer available for a retry');
      const c = await this.#pull();
      if (c === null) return { value: undefined, done: true };
      i++;
      return { value: c, done: false };
    };
    return {
      [Symbol.asyncIterator]: () => ({
        next,
        // An abandoned attempt leaves the client stream where it is.
        return: async () => ({ value: undefined, done: true }),
      }),
    };
  }

  #pull(): Promise<Buffer | null> {
    // Attempts never read concurrently, but an abandoned one may still have a read outstanding.
    if (this.#pulling) return this.#pulling.then(() => this.#pull());
    if (this.#error) return Promise.reject(this.#error);
    if (this.#ended) return Promise.resolve(null);
    this.#pulling = this.#readOne().finally(() => (this.#pulling = null));
    return this.#pulling;
  }

  async #readOne(): Promise<Buffer | null> {
    const src = this.#src;
    for (;;) {
      const c = src.read() as Buffer | null;
      if (c !== null) {
        this.#read++;
        if (!this.#overflow) {
          this.#size += c.length;
          if (this.#size > this.#limit) {
            this.#overflow = true;
            this.#chunks = [];
          } else this.#chunks.push(c);
        }
        return c;
      }
      if (src.readableEnded) {
        this.#ended = true;
        return null;
      }
      if (src.destroyed || src.errored) {
        this.#error = (src.errored as Error | null) ?? new Error('the client closed the request before its body ended');
        throw this.#error;
      }
      await new Promise<void>((resolve) => {
        const done = () => {
          src.off('readable', done);
          src.off('end', done);
          src.off('error', done);
          src.off('close', done);
          resolve();
        };
        src.on('readable', done);
        src.on('end', done);
        src.on('error', done);
        src.on('close', done);
      });
    }
  }
}
