/**
 * Test helpers for the tls plugin: free ports, TLS handshakes and requests
 * over HTTP/1.1 and HTTP/2 with a chosen SNI name, and a Pebble ACME server
 * (with its challenge test server as DNS) started as child processes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { LocalCa } from './local-ca.js';

const made: string[] = [];

/** A fresh temporary directory, removed by `removeTmpDirs()`. */
export function tmpDir(prefix = 'bext-tls-'): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  made.push(d);
  return d;
}

export function removeTmpDirs(): void {
  for (const d of made.splice(0)) rmSync(d, { recursive: true, force: true });
}

/** A port nothing listens on right now (bound, then released). */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

export interface Handshake {
  cert: tls.PeerCertificate;
  protocol: string | null;
  alpn: string | false | null;
  authorized: boolean;
  authorizationError: string | null;
  reused: boolean;
  ocsp: Buffer | null;
  session: Buffer | null;
}

/** One TLS handshake to 127.0.0.1:port; resolves with what the server presented. */
export function handshake(port: number, opts: tls.ConnectionOptions & { requestOCSP?: boolean } = {}): Promise<Handshake> {
  return new Promise((resolve, reject) => {
    let ocsp: Buffer | null = null;
    let session: Buffer | null = null;
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'], ...opts });
    s.on('OCSPResponse', (r: Buffer) => (ocsp = r ?? null));
    s.on('session', (b: Buffer) => (session = b));
    s.once('secureConnect', () => {
      const out = {
        cert: s.getPeerCertificate(true),
        protocol: s.getProtocol(),
        alpn: s.alpnProtocol,
        authorized: s.authorized,
        authorizationError: s.authorizationError ? String(s.authorizationError) : null,
        reused: s.isSessionReused(),
      };
      // TLS 1.3 tickets arrive after the handshake: read a little so they land.
      s.write('GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n');
      s.on('data', () => undefined);
      s.once('close', () => resolve({ ...out, ocsp, session }));
    });
    s.once('error', reject);
  });
}

export interface Got {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  /** 1xx informational heads received before the answer (103 Early Hints). */
  informational: { status: number; headers: Record<string, unknown> }[];
  alpn: string | false | null;
}

/** HTTPS/1.1 request to 127.0.0.1:port with a Host/SNI name. */
export function get1(port: number, path: string, opts: { servername?: string; ca?: string | string[]; cert?: string; key?: string; method?: string; body?: string; headers?: Record<string, string> } = {}): Promise<Got> {
  return new Promise((resolve, reject) => {
    const informational: Got['informational'] = [];
    const req = https.request({
      host: '127.0.0.1', port, path, method: opts.method ?? 'GET',
      servername: opts.servername ?? 'localhost',
      headers: { host: opts.servername ?? 'localhost', ...opts.headers },
      ca: opts.ca, cert: opts.cert, key: opts.key,
      rejectUnauthorized: !!opts.ca,
      agent: false,
    }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, informational, alpn: (res.socket as tls.TLSSocket).alpnProtocol ?? null }));
    });
    req.on('information', (i) => informational.push({ status: i.statusCode, headers: i.headers }));
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** HTTP/2 request over TLS (or h2c when `plain`). */
export async function get2(port: number, path: string, opts: { servername?: string; ca?: string | string[]; cert?: string; key?: string; plain?: boolean; session?: http2.ClientHttp2Session } = {}): Promise<Got> {
  const name = opts.servername ?? 'localhost';
  const session = opts.session ?? (opts.plain
    ? http2.connect(`http://127.0.0.1:${port}`)
    : http2.connect(`https://127.0.0.1:${port}`, { servername: name, ca: opts.ca, cert: opts.cert, key: opts.key, rejectUnauthorized: !!opts.ca }));
  try {
    return await new Promise<Got>((resolve, reject) => {
      session.once('error', reject);
      const informational: Got['informational'] = [];
      const st = session.request({ ':path': path, ':authority': name });
      let status = 0;
      let headers: Got['headers'] = {};
      st.on('headers', (h) => informational.push({ status: Number(h[':status']), headers: h }));
      st.on('response', (h) => {
        status = Number(h[':status']);
        headers = h as Got['headers'];
      });
      let body = '';
      st.setEncoding('utf8');
      st.on('data', (d) => (body += d));
      st.on('end', () => resolve({ status, headers, body, informational, alpn: (session.socket as tls.TLSSocket | undefined)?.alpnProtocol ?? null }));
      st.on('error', reject);
      st.end();
    });
  } finally {
    if (!opts.session) session.close();
  }
}

/** Runs a command; resolves with its exit code and output. */
export async function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<{ code: number | null; out: string }> {
  const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout.on('data', (d) => (out += d));
  p.stderr.on('data', (d) => (out += d));
  const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
  const [code] = (await once(p, 'exit')) as [number | null];
  clearTimeout(t);
  return { code, out };
}

// ------------------------------------------------------------------ Pebble

export interface Pebble {
  directoryUrl: string;
  /** CA of Pebble's own HTTPS (for the ACME client). */
  caFile: string;
  managementUrl: string;
  /** Pebble's issuing root and intermediate, PEM (regenerated on every start). */
  root(): Promise<string>;
  intermediate(): Promise<{ cert: string; key: string }>;
  /** Revocation status from the management API: "Valid" or "Revoked". */
  certStatus(serialHex: string): Promise<string>;
  stop(): Promise<void>;
}

function waitLine(p: ChildProcess, re: RegExp, what: string, timeoutMs = 15_000): Promise<void> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const t = setTimeout(() => reject(new Error(`${what} did not start: ${buf.slice(-2000)}`)), timeoutMs);
    const on = (d: Buffer) => {
      buf += d.toString();
      if (re.test(buf)) {
        clearTimeout(t);
        resolve();
      }
    };
    p.stdout?.on('data', on);
    p.stderr?.on('data', on);
    p.once('exit', (c) => {
      clearTimeout(t);
      reject(new Error(`${what} exited with ${c}: ${buf.slice(-2000)}`));
    });
  });
}

/**
 * Starts pebble-challtestsrv (DNS answering 127.0.0.1 for every name) and
 * Pebble, validating HTTP-01 on `httpPort` of 127.0.0.1.
 */
export async function startPebble(opts: { httpPort: number; ocspResponderUrl?: string }): Promise<Pebble> {
  const dir = tmpDir('bext-pebble-');
  const ca = await LocalCa.open(join(dir, 'ca'), 'pebble test TLS CA');
  const leaf = await ca.issue(['localhost', '127.0.0.1'], { days: 2 });
  writeFileSync(join(dir, 'cert.pem'), leaf.certPem);
  writeFileSync(join(dir, 'key.pem'), leaf.keyPem);
  const [acmePort, mgmtPort, dnsPort, chMgmt, tlsPort] = [await freePort(), await freePort(), await freePort(), await freePort(), await freePort()];
  writeFileSync(join(dir, 'pebble.json'), JSON.stringify({
    pebble: {
      listenAddress: `127.0.0.1:${acmePort}`,
      managementListenAddress: `127.0.0.1:${mgmtPort}`,
      certificate: join(dir, 'cert.pem'),
      privateKey: join(dir, 'key.pem'),
      httpPort: opts.httpPort,
      tlsPort,
      ocspResponderURL: opts.ocspResponderUrl ?? '',
      externalAccountBindingRequired: false,
    },
  }));
  const dns = spawn('pebble-challtestsrv', ['-defaultIPv4', '127.0.0.1', '-defaultIPv6', '', '-dns01', `127.0.0.1:${dnsPort}`, '-http01', '', '-https01', '', '-tlsalpn01', '', '-management', `127.0.0.1:${chMgmt}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  await waitLine(dns, /Starting challenge servers|DNS|dns/i, 'pebble-challtestsrv');
  const pebble = spawn('pebble', ['-config', join(dir, 'pebble.json'), '-dnsserver', `127.0.0.1:${dnsPort}`], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PEBBLE_VA_NOSLEEP: '1', PEBBLE_WFE_NONCEREJECT: '0', PEBBLE_AUTHZREUSE: '0' },
  });
  try {
    await waitLine(pebble, /Listening on/, 'pebble');
  } catch (e) {
    dns.kill();
    throw e;
  }
  const caFile = join(dir, 'ca', 'ca.pem');
  const agent = new https.Agent({ ca: ca.certPem });
  const mgmt = async (p: string): Promise<string> => {
    const res = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      https.get(`https://127.0.0.1:${mgmtPort}${p}`, { agent, servername: 'localhost' }, (r) => {
        let b = '';
        r.on('data', (d) => (b += d));
        r.on('end', () => resolve({ status: r.statusCode ?? 0, body: b }));
      }).on('error', reject);
    });
    if (res.status !== 200) throw new Error(`pebble management ${p}: ${res.status} ${res.body}`);
    return res.body;
  };
  return {
    directoryUrl: `https://localhost:${acmePort}/dir`,
    caFile,
    managementUrl: `https://localhost:${mgmtPort}`,
    root: () => mgmt('/roots/0'),
    intermediate: async () => ({ cert: await mgmt('/intermediates/0'), key: await mgmt('/intermediate-keys/0') }),
    certStatus: async (serial) => (JSON.parse(await mgmt(`/cert-status-by-serial/${serial.toLowerCase().replace(/^0+/, '')}`)) as { Status: string }).Status,
    async stop() {
      for (const p of [pebble, dns]) {
        if (p.exitCode === null) {
          p.kill('SIGTERM');
          await once(p, 'exit');
        }
      }
    },
  };
}
