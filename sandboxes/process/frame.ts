/**
 * Framing and encoding of the process protocol (PROTOCOL.md): a 4-byte
 * big-endian length, then a JSON or MessagePack payload. The first byte of a
 * payload tells the two apart (`{` for JSON, a map marker for MessagePack).
 */
import { Packr } from 'msgpackr';

export type CodecName = 'json' | 'msgpack';

export interface Codec {
  readonly name: CodecName;
  encode(msg: unknown): Buffer;
  decode(payload: Buffer): unknown;
}

const packr = new Packr({ useRecords: false, moreTypes: false });

export const CODECS: Record<CodecName, Codec> = {
  json: {
    name: 'json',
    encode: (msg) => Buffer.from(JSON.stringify(msg), 'utf8'),
    decode: (payload) => JSON.parse(payload.toString('utf8')),
  },
  msgpack: {
    name: 'msgpack',
    encode: (msg) => packr.pack(msg),
    decode: (payload) => packr.unpack(payload),
  },
};

const OPEN_BRACE = 0x7b;

/** The codec a frame was written in. */
export function codecOf(payload: Buffer): Codec {
  return payload[0] === OPEN_BRACE ? CODECS.json : CODECS.msgpack;
}

/** One frame: the length prefix followed by the payload. */
export function frame(payload: Buffer): Buffer {
  const out = Buffer.allocUnsafe(4 + payload.length);
  out.writeUInt32BE(payload.length, 0);
  out.set(payload, 4);
  return out;
}

// A guest decides every byte of what it sends, so a decoded value must not be
// able to reach Object.prototype through a later Object.assign or a naive deep
// merge on the host: `__proto__` keys are dropped, and so are `constructor` /
// `prototype` keys holding objects (the shape of a constructor-pollution payload).
// The scan for these names is a fast byte search; the walk runs only on a hit.
const SUSPECT = [Buffer.from('__proto__'), Buffer.from('constructor'), Buffer.from('prototype'), Buffer.from('\\u')];

/** Whether a payload could carry a prototype-pollution key. */
export function suspicious(payload: Buffer): boolean {
  for (const s of SUSPECT) if (payload.indexOf(s) !== -1) return true;
  return false;
}

/** Removes pollution keys from a decoded value, in place, without recursion. */
export function sanitize(value: unknown): unknown {
  if (value === null || typeof value !== 'object') return value;
  const stack: object[] = [value];
  while (stack.length) {
    const o = stack.pop() as Record<string, unknown>;
    for (const k of Object.keys(o)) {
      const v = o[k];
      if (k === '__proto__' || ((k === 'constructor' || k === 'prototype') && v !== null && typeof v === 'object')) {
        delete o[k];
        continue;
      }
      if (v !== null && typeof v === 'object') stack.push(v);
    }
  }
  return value;
}

/**
 * Splits a byte stream into frames. Chunks are kept as a list until a whole
 * frame is there, so a large frame is copied once, not once per chunk.
 */
export class FrameReader {
  #chunks: Buffer[] = [];
  #have = 0;
  #need = 4;
  readonly #max: number;
  readonly #onFrame: (payload: Buffer) => boolean;
  readonly #onOversize: (len: number) => void;

  /**
   * @param onFrame called per payload; returns false to stop reading (the sender was killed).
   * @param onOversize called when a length prefix exceeds `max`; reading stops.
   */
  constructor(max: number, onFrame: (payload: Buffer) => boolean, onOversize: (len: number) => void) {
    this.#max = max;
    this.#onFrame = onFrame;
    this.#onOversize = onOversize;
  }

  push(chunk: Buffer): void {
    this.#chunks.push(chunk);
    this.#have += chunk.length;
    if (this.#have < this.#need) return;
    const buf = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks, this.#have);
    this.#chunks = [];
    this.#have = 0;
    let off = 0;
    for (;;) {
      const avail = buf.length - off;
      if (avail < 4) {
        this.#need = 4;
        break;
      }
      const len = buf.readUInt32BE(off);
      if (len > this.#max) {
        this.#onOversize(len);
        return;
      }
      if (avail < 4 + len) {
        this.#need = 4 + len;
        break;
      }
      const payload = buf.subarray(off + 4, off + 4 + len);
      off += 4 + len;
      if (!this.#onFrame(payload)) return;
    }
    if (off < buf.length) {
      const rest = buf.subarray(off);
      this.#chunks.push(rest);
      this.#have = rest.length;
    }
  }
}
