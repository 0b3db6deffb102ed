/**
 * The few DER shapes OCSP and ACME Renewal Information need: read a
 * certificate's serial, subject and key; write an OCSP request; read an OCSP
 * response. Strict where a wrong read would staple garbage, nothing more.
 */

/** One TLV: tag byte, where its content starts and ends in `buf`. */
export interface Tlv {
  tag: number;
  /** Offset of the tag byte. */
  start: number;
  /** Offset of the first content byte. */
  content: number;
  /** Offset just past the content. */
  end: number;
}

export function readTlv(buf: Uint8Array, at: number): Tlv {
  if (at + 2 > buf.length) throw new Error('DER: truncated header');
  const tag = buf[at]!;
  if ((tag & 0x1f) === 0x1f) throw new Error('DER: high tag numbers are not used here');
  let len = buf[at + 1]!;
  let p = at + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4) throw new Error('DER: bad length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[p++]!;
  }
  if (p + len > buf.length) throw new Error('DER: content runs past the end');
  return { tag, start: at, content: p, end: p + len };
}

/** The children of a constructed TLV. */
export function children(buf: Uint8Array, t: Tlv): Tlv[] {
  const out: Tlv[] = [];
  for (let p = t.content; p < t.end; ) {
    const c = readTlv(buf, p);
    out.push(c);
    p = c.end;
  }
  return out;
}

export const bytes = (buf: Uint8Array, t: Tlv): Buffer => Buffer.from(buf.buffer, buf.byteOffset + t.content, t.end - t.content);
export const raw = (buf: Uint8Array, t: Tlv): Buffer => Buffer.from(buf.buffer, buf.byteOffset + t.start, t.end - t.start);

function lengthBytes(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const out: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) out.unshift(v & 0xff);
  return Buffer.from([0x80 | out.length, ...out]);
}

export function tlv(tag: number, ...content: Uint8Array[]): Buffer {
  const body = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), lengthBytes(body.length), body]);
}

export const seq = (...c: Uint8Array[]) => tlv(0x30, ...c);

export function oid(dotted: string): Buffer {
  const parts = dotted.split('.').map(Number);
  const out: number[] = [parts[0]! * 40 + parts[1]!];
  for (const v of parts.slice(2)) {
    const b: number[] = [v & 0x7f];
    for (let x = Math.floor(v / 128); x > 0; x = Math.floor(x / 128)) b.unshift(0x80 | (x & 0x7f));
    out.push(...b);
  }
  return tlv(0x06, Buffer.from(out));
}

export function readOid(buf: Uint8Array, t: Tlv): string {
  if (t.tag !== 0x06) throw new Error('DER: expected an OID');
  const b = bytes(buf, t);
  const out = [Math.floor(b[0]! / 40), b[0]! % 40];
  let v = 0;
  for (let i = 1; i < b.length; i++) {
    v = v * 128 + (b[i]! & 0x7f);
    if (!(b[i]! & 0x80)) {
      out.push(v);
      v = 0;
    }
  }
  return out.join('.');
}

/** GeneralizedTime or UTCTime to a Date. */
export function readTime(buf: Uint8Array, t: Tlv): Date {
  const s = bytes(buf, t).toString('latin1');
  const m = /^(\d{2}|\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(?:\.\d+)?Z$/.exec(s);
  if (!m || (t.tag !== 0x18 && t.tag !== 0x17)) throw new Error(`DER: bad time ${s}`);
  let year = Number(m[1]);
  if (m[1]!.length === 2) year += year < 50 ? 2000 : 1900;
  return new Date(Date.UTC(year, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])));
}

/** The parts of a certificate OCSP and ARI identify it by. */
export interface CertParts {
  /** INTEGER content bytes of the serial number (DER, sign byte kept). */
  serial: Buffer;
  /** The subject Name, as its whole TLV. */
  subject: Buffer;
  /** subjectPublicKey BIT STRING content, without the unused-bits byte. */
  publicKey: Buffer;
  /** The to-be-signed part, as its whole TLV (for signature checks). */
  tbs: Buffer;
}

export function certParts(der: Uint8Array): CertParts {
  const cert = readTlv(der, 0);
  const [tbs] = children(der, cert);
  if (!tbs || tbs.tag !== 0x30) throw new Error('DER: not a certificate');
  const f = children(der, tbs);
  let i = f[0]?.tag === 0xa0 ? 1 : 0;
  const serial = f[i++]!;
  i++; // signature algorithm
  i++; // issuer
  i++; // validity
  const subject = f[i++]!;
  const spki = f[i]!;
  const [, bits] = children(der, spki);
  if (serial.tag !== 0x02 || subject.tag !== 0x30 || !bits || bits.tag !== 0x03) throw new Error('DER: unexpected certificate layout');
  return { serial: bytes(der, serial), subject: raw(der, subject), publicKey: bytes(der, bits).subarray(1), tbs: raw(der, tbs) };
}
