/**
 * The development CA: an ECDSA P-256 root generated on first run and kept on
 * disk, which signs short-lived leaf certificates for any name. Trust its
 * `ca.pem` on a development machine and every local name gets a green lock.
 */
import { randomBytes, webcrypto } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
// @peculiar/x509 2 resolves its services through tsyringe, which needs the Reflect metadata API.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}

function pemBody(text: string, label: string): Buffer {
  const m = new RegExp(`-----BEGIN ${label}-----([\\s\\S]+?)-----END ${label}-----`).exec(text);
  if (!m) throw new Error(`no ${label} block`);
  return Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64');
}

function writePrivate(path: string, data: string): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, data, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
}

/** A serial number: 16 random bytes, top bit clear so it stays positive. */
function serial(): string {
  const b = randomBytes(16);
  b[0]! &= 0x7f;
  b[0]! |= 0x01;
  return b.toString('hex');
}

/** A key pair and certificate in PEM. */
export interface IssuedCert {
  certPem: string;
  keyPem: string;
}

/** Options for a leaf certificate. */
export interface LeafOptions {
  /** Validity in days (default 30). */
  days?: number;
  /** Server certificate (default) or client certificate (for mTLS). */
  usage?: 'server' | 'client';
  /** Subject common name (default: the first name). */
  commonName?: string;
  /** Not-before time (default: an hour ago, for clock skew). */
  notBefore?: Date;
}

export class LocalCa {
  readonly certPem: string;
  readonly #key: CryptoKey;
  readonly #cert: x509.X509Certificate;

  private constructor(certPem: string, key: CryptoKey) {
    this.certPem = certPem;
    this.#key = key;
    this.#cert = new x509.X509Certificate(certPem);
  }

  /**
   * Opens the CA in `dir` (`ca.pem`, `ca-key.pem`), creating it on first run.
   *
   * @example
   * ```ts
   * const ca = await LocalCa.open('.bext/tls/local-ca', 'bext development CA');
   * const { certPem, keyPem } = await ca.issue(['localhost', '*.localhost']);
   * ```
   */
  static async open(dir: string, name = 'bext local development CA'): Promise<LocalCa> {
    const certPath = join(dir, 'ca.pem');
    const keyPath = join(dir, 'ca-key.pem');
    if (existsSync(certPath) && existsSync(keyPath)) {
      const certPem = readFileSync(certPath, 'utf8');
      const key = await webcrypto.subtle.importKey('pkcs8', pemBody(readFileSync(keyPath, 'utf8'), 'PRIVATE KEY'), EC, true, ['sign']);
      return new LocalCa(certPem, key as CryptoKey);
    }
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: serial(),
      name: `CN=${name.replace(/[,=+<>#;"\\]/g, ' ')}, O=bext development`,
      notBefore: new Date(now - 3600_000),
      notAfter: new Date(now + 10 * 365 * 86400_000),
      signingAlgorithm: SIGN,
      keys,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    const keyPem = pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', keys.privateKey as CryptoKey));
    // The key first: a crash between the two writes leaves no certificate without its key.
    writePrivate(keyPath, keyPem);
    writeFileSync(certPath, cert.toString('pem') + '\n');
    return new LocalCa(cert.toString('pem') + '\n', keys.privateKey);
  }

  /** Signs a fresh ECDSA key for `names` (DNS names, `*.` wildcards or IP addresses). */
  async issue(names: string[], opts: LeafOptions = {}): Promise<IssuedCert> {
    if (names.length === 0 && !opts.commonName) throw new Error('a certificate needs at least one name');
    const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
    const notBefore = opts.notBefore ?? new Date(Date.now() - 3600_000);
    const days = opts.days ?? 30;
    const cn = (opts.commonName ?? names[0]!).replace(/[,=+<>#;"\\]/g, ' ');
    const client = opts.usage === 'client';
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial(),
      subject: `CN=${cn}`,
      issuer: this.#cert.subject,
      notBefore,
      notAfter: new Date(notBefore.getTime() + days * 86400_000),
      signingAlgorithm: SIGN,
      publicKey: keys.publicKey,
      signingKey: this.#key,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([client ? x509.ExtendedKeyUsage.clientAuth : x509.ExtendedKeyUsage.serverAuth]),
        ...(names.length ? [new x509.SubjectAlternativeNameExtension(names.map((n) => (isIP(n) ? { type: 'ip' as const, value: n } : { type: 'dns' as const, value: n })))] : []),
        await x509.AuthorityKeyIdentifierExtension.create(this.#cert.publicKey),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    const keyPem = pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', keys.privateKey as CryptoKey));
    return { certPem: cert.toString('pem') + '\n', keyPem };
  }
}
