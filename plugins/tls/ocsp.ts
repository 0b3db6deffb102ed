/**
 * OCSP stapling: for a certificate that names an OCSP responder, fetch its
 * status, check the response (signature, certificate id, dates), keep it
 * until halfway to its nextUpdate, and hand it to the TLS server's
 * 'OCSPRequest' event. A certificate without a responder staples nothing.
 */
import { createHash, verify as verifySig, X509Certificate } from 'node:crypto';
import { bytes, certParts, children, oid, readOid, readTime, readTlv, seq, tlv } from './der.js';

const SHA1 = '1.3.14.3.2.26';
const SHA256 = '2.16.840.1.101.3.4.2.1';
const OCSP_BASIC = '1.3.6.1.5.5.7.48.1.1';
const OCSP_SIGNING = '1.3.6.1.5.5.7.3.9';

const SIG_HASH: Record<string, string | null> = {
  '1.2.840.113549.1.1.5': 'sha1',
  '1.2.840.113549.1.1.11': 'sha256',
  '1.2.840.113549.1.1.12': 'sha384',
  '1.2.840.113549.1.1.13': 'sha512',
  '1.2.840.10045.4.3.2': 'sha256',
  '1.2.840.10045.4.3.3': 'sha384',
  '1.2.840.10045.4.3.4': 'sha512',
  '1.3.101.112': null,
};

/** The responder URL a certificate names in its Authority Information Access, if any. */
export function responderUrl(certDer: Uint8Array): string | null {
  const ia = new X509Certificate(certDer).infoAccess;
  const m = ia ? /OCSP - URI:(\S+)/.exec(ia) : null;
  return m ? m[1]! : null;
}

/** A DER OCSPRequest for one certificate, with a SHA-1 CertID (what every responder accepts). */
export function ocspRequest(leafDer: Uint8Array, issuerDer: Uint8Array): Buffer {
  const leaf = certParts(leafDer);
  const issuer = certParts(issuerDer);
  const certId = seq(
    seq(oid(SHA1), Buffer.from([0x05, 0x00])),
    tlv(0x04, createHash('sha1').update(issuer.subject).digest()),
    tlv(0x04, createHash('sha1').update(issuer.publicKey).digest()),
    tlv(0x02, leaf.serial),
  );
  return seq(seq(seq(seq(certId))));
}

export interface OcspStatus {
  status: 'good' | 'revoked' | 'unknown';
  thisUpdate: Date;
  nextUpdate: Date | null;
}

/**
 * Reads an OCSPResponse and checks it answers for `leaf` and is signed by
 * its issuer (or a responder the issuer delegated with id-kp-OCSPSigning).
 * Throws on anything else.
 */
export function checkOcspResponse(der: Uint8Array, leafDer: Uint8Array, issuerDer: Uint8Array, now = Date.now()): OcspStatus {
  const top = readTlv(der, 0);
  const [st, rb] = children(der, top);
  if (!st || st.tag !== 0x0a) throw new Error('OCSP: not an OCSPResponse');
  const code = bytes(der, st)[0];
  if (code !== 0) throw new Error(`OCSP: responder answered status ${code}`);
  if (!rb || rb.tag !== 0xa0) throw new Error('OCSP: no responseBytes');
  const [inner] = children(der, rb);
  const [type, octets] = children(der, inner!);
  if (readOid(der, type!) !== OCSP_BASIC) throw new Error('OCSP: not a basic response');
  const basicDer = bytes(der, octets!);
  const basic = readTlv(basicDer, 0);
  const [tbs, sigAlg, sig, certs] = children(basicDer, basic);
  const algOid = readOid(basicDer, children(basicDer, sigAlg!)[0]!);
  if (!(algOid in SIG_HASH)) throw new Error(`OCSP: signature algorithm ${algOid} is not supported`);
  const tbsRaw = Buffer.from(basicDer.subarray(tbs!.start, tbs!.end));
  const signature = bytes(basicDer, sig!).subarray(1);

  const issuer = new X509Certificate(issuerDer);
  let signer = issuer;
  if (certs && certs.tag === 0xa0) {
    const list = children(basicDer, children(basicDer, certs)[0]!);
    for (const c of list) {
      const x = new X509Certificate(Buffer.from(basicDer.subarray(c.start, c.end)));
      if (x.raw.equals(issuer.raw)) break;
      if (x.verify(issuer.publicKey) && (x.keyUsage ?? []).includes(OCSP_SIGNING)) {
        signer = x;
        break;
      }
    }
  }
  if (!verifySig(SIG_HASH[algOid]!, tbsRaw, signer.publicKey, signature)) throw new Error('OCSP: bad signature');

  const fields = children(basicDer, tbs!);
  let i = fields[0]?.tag === 0xa0 ? 1 : 0;
  i++; // responderID
  i++; // producedAt
  const responses = children(basicDer, fields[i]!);
  const leaf = certParts(leafDer);
  const iss = certParts(issuerDer);
  for (const r of responses) {
    const [certId, status, thisU, ...rest] = children(basicDer, r);
    const [hashAlg, nameHash, keyHash, serial] = children(basicDer, certId!);
    const alg = readOid(basicDer, children(basicDer, hashAlg!)[0]!);
    const h = alg === SHA1 ? 'sha1' : alg === SHA256 ? 'sha256' : null;
    if (!h) continue;
    if (!bytes(basicDer, serial!).equals(leaf.serial)) continue;
    if (!bytes(basicDer, nameHash!).equals(createHash(h).update(iss.subject).digest())) continue;
    if (!bytes(basicDer, keyHash!).equals(createHash(h).update(iss.publicKey).digest())) continue;
    const thisUpdate = readTime(basicDer, thisU!);
    const nextTag = rest.find((t) => t.tag === 0xa0);
    const nextUpdate = nextTag ? readTime(basicDer, children(basicDer, nextTag)[0]!) : null;
    if (thisUpdate.getTime() > now + 5 * 60_000) throw new Error('OCSP: response is from the future');
    if (nextUpdate && nextUpdate.getTime() < now) throw new Error('OCSP: response has expired');
    const s = status!.tag === 0x80 ? 'good' : status!.tag === 0xa1 ? 'revoked' : 'unknown';
    return { status: s, thisUpdate, nextUpdate };
  }
  throw new Error('OCSP: the response does not cover this certificate');
}

interface Entry {
  url: string | null;
  staple: Buffer | null;
  status: OcspStatus | null;
  refreshAt: number;
  inflight: Promise<void> | null;
  failures: number;
}

export interface StaplerOptions {
  timeoutMs: number;
  /** Called once per certificate the responder reports revoked. */
  onRevoked(leafDer: Buffer): void;
  onResult(result: 'good' | 'revoked' | 'unknown' | 'error' | 'none', detail?: string): void;
}

/** Fetches, checks and caches OCSP responses; `handle` is the 'OCSPRequest' listener. */
export class OcspStapler {
  #entries = new Map<string, Entry>();
  #opts: StaplerOptions;
  #closed = false;

  constructor(opts: StaplerOptions) {
    this.#opts = opts;
  }

  /** The 'OCSPRequest' listener: answers from the cache, fetching only on a miss. */
  readonly handle = (cert: Buffer, issuer: Buffer | null, cb: (err: Error | null, resp?: Buffer) => void): void => {
    if (!issuer) return cb(null);
    const e = this.#entry(cert);
    if (!e.url) return cb(null);
    const now = Date.now();
    const fresh = e.staple && (!e.status?.nextUpdate || e.status.nextUpdate.getTime() > now);
    if (fresh) {
      if (now >= e.refreshAt) void this.#refresh(cert, issuer, e);
      return cb(null, e.staple!);
    }
    // Nothing usable yet: wait for one fetch (bounded by timeoutMs), never fail the handshake.
    this.#refresh(cert, issuer, e).then(() => cb(null, e.staple ?? undefined), () => cb(null));
  };

  /** Fetches ahead of the first handshake, so clients get a staple from the start. */
  prefetch(cert: Buffer, issuer: Buffer): Promise<void> {
    const e = this.#entry(cert);
    return e.url ? this.#refresh(cert, issuer, e) : Promise.resolve();
  }

  status(cert: Buffer): OcspStatus | null {
    return this.#entries.get(key(cert))?.status ?? null;
  }

  close(): void {
    this.#closed = true;
    this.#entries.clear();
  }

  #entry(cert: Buffer): Entry {
    const k = key(cert);
    let e = this.#entries.get(k);
    if (!e) {
      let url: string | null = null;
      try {
        url = responderUrl(cert);
      } catch {
        url = null;
      }
      e = { url, staple: null, status: null, refreshAt: 0, inflight: null, failures: 0 };
      if (this.#entries.size > 10_000) this.#entries.clear();
      this.#entries.set(k, e);
      if (!url) this.#opts.onResult('none');
    }
    return e;
  }

  #refresh(cert: Buffer, issuer: Buffer, e: Entry): Promise<void> {
    if (e.inflight) return e.inflight;
    // Within the refresh time of a good answer, or the backoff after a failed fetch.
    if (Date.now() < e.refreshAt) return Promise.resolve();
    e.inflight = this.#fetch(cert, issuer, e).finally(() => (e.inflight = null));
    return e.inflight;
  }

  async #fetch(cert: Buffer, issuer: Buffer, e: Entry): Promise<void> {
    try {
      const res = await fetch(e.url!, {
        method: 'POST',
        headers: { 'content-type': 'application/ocsp-request', accept: 'application/ocsp-response' },
        body: new Uint8Array(ocspRequest(cert, issuer)),
        signal: AbortSignal.timeout(this.#opts.timeoutMs),
      });
      if (!res.ok) throw new Error(`OCSP responder ${e.url} answered HTTP ${res.status}`);
      const der = Buffer.from(await res.arrayBuffer());
      const st = checkOcspResponse(der, cert, issuer);
      if (this.#closed) return;
      const wasRevoked = e.status?.status === 'revoked';
      e.staple = der;
      e.status = st;
      e.failures = 0;
      const next = st.nextUpdate?.getTime() ?? st.thisUpdate.getTime() + 24 * 3600_000;
      // Refresh halfway through the validity window, as RFC 6960 §4.2.2.1 clients expect fresh answers.
      e.refreshAt = st.thisUpdate.getTime() + Math.max(60_000, (next - st.thisUpdate.getTime()) / 2);
      this.#opts.onResult(st.status);
      if (st.status === 'revoked' && !wasRevoked) this.#opts.onRevoked(cert);
    } catch (err) {
      e.failures++;
      // Back off: 1 min, 2, 4 ... capped at an hour; a still-valid old staple keeps being served.
      e.refreshAt = Date.now() + Math.min(3600_000, 60_000 * 2 ** (e.failures - 1));
      this.#opts.onResult('error', (err as Error).message);
      throw err;
    }
  }
}

function key(cert: Buffer): string {
  return createHash('sha256').update(cert).digest('base64');
}
