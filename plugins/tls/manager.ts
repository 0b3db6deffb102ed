/**
 * Managed certificates: kept in storage, obtained when missing, renewed
 * before expiry (inside the CA's ARI window when it offers one, else at a
 * fraction of the lifetime, with jitter), retried with backoff, revoked on
 * request. One instance orders a name while the others wait on its lock and
 * then read the result from storage.
 */
import { certInfo, type CertInfo } from './certs.js';
import type { Issuer } from './acme.js';
import type { TlsConfig } from './config.js';
import { keyPart, type Lock, type Storage } from './storage.js';

/** What storage keeps per certificate (`certs/<id>.json`). */
export interface StoredCert {
  id: string;
  names: string[];
  issuer: 'acme' | 'local';
  certPem: string;
  keyPem: string;
  issuedAt: string;
  onDemand?: boolean;
  directoryUrl?: string;
}

/** A certificate the manager keeps current. */
export interface Managed {
  id: string;
  names: string[];
  issuer: Issuer;
  onDemand: boolean;
  record: StoredCert | null;
  info: CertInfo | null;
  /** When to renew, ms since the epoch (Infinity until a certificate exists). */
  renewAt: number;
  /** The ARI window renewAt was drawn from, to redraw only when the CA moves it. */
  ariWindow: { start: number; end: number } | null;
  nextAriCheck: number;
  failures: number;
  retryAt: number;
  lastError: string | null;
  busy: Promise<void> | null;
}

export type ObtainReason = 'missing' | 'renewal' | 'revoked' | 'forced' | 'on-demand';

export interface ManagerOptions {
  storage: Storage;
  renewal: TlsConfig['renewal'];
  /** A certificate was stored or loaded: serve it. */
  onCert(m: Managed): void;
  /** A certificate went away (revoked and not replaced, or dropped). */
  onRemove(m: Managed): void;
  log(level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>): void;
  metric(name: string, value: number, labels?: Record<string, string>, kind?: 'counter' | 'gauge'): void;
  /** Called whenever a certificate's health may have changed. */
  onHealth(): void;
  /** Re-approves an on-demand name at renewal; false drops it. */
  stillApproved?(name: string): Promise<boolean>;
  /** Tests shorten the wait between polls of a lock held by another instance. */
  lockPollMs?: number;
}

const LOCK_TTL_MS = 120_000;

export function certKey(id: string): string {
  return `certs/${keyPart(id)}.json`;
}

export class Manager {
  readonly certs = new Map<string, Managed>();
  #o: ManagerOptions;
  #timer: NodeJS.Timeout | null = null;
  #closed = false;
  #waiters = new Map<string, (() => void)[]>();

  constructor(o: ManagerOptions) {
    this.#o = o;
    o.storage.onEvent((ev) => {
      const m = /^cert (.+)$/.exec(ev);
      if (m) void this.#reload(m[1]!).then(() => this.#wake(m[1]!));
    });
  }

  /** Starts managing a certificate and serves the stored one, if any; orders nothing. */
  async track(id: string, names: string[], issuer: Issuer, onDemand = false): Promise<Managed> {
    let m = this.certs.get(id);
    if (!m) {
      m = { id, names, issuer, onDemand, record: null, info: null, renewAt: Infinity, ariWindow: null, nextAriCheck: 0, failures: 0, retryAt: 0, lastError: null, busy: null };
      this.certs.set(id, m);
    }
    await this.#reload(id);
    return m;
  }

  /**
   * Orders a certificate when none is stored, the stored one covers other
   * names, or it is expired (awaited); starts a renewal in the background
   * when one is due. Then keeps it on the renewal schedule.
   */
  async ensure(m: Managed): Promise<void> {
    if (!m.record || !sameSet(m.record.names, m.names) || this.#expired(m)) {
      await this.obtain(m, m.record ? 'renewal' : m.onDemand ? 'on-demand' : 'missing').catch(() => undefined);
    } else if (Date.now() >= m.renewAt) {
      void this.obtain(m, 'renewal').catch(() => undefined);
    }
    this.#schedule();
  }

  /** track() then ensure(). */
  async add(id: string, names: string[], issuer: Issuer, onDemand = false): Promise<Managed> {
    const m = await this.track(id, names, issuer, onDemand);
    await this.ensure(m);
    return m;
  }

  /** Stops managing (the certificate stays in storage). */
  drop(id: string): void {
    const m = this.certs.get(id);
    if (!m) return;
    this.certs.delete(id);
    this.#o.onRemove(m);
  }

  /** Gets a new certificate for `m`, once at a time per certificate and per cluster. */
  obtain(m: Managed, reason: ObtainReason): Promise<void> {
    if (m.busy) return m.busy;
    m.busy = this.#obtain(m, reason).finally(() => {
      m.busy = null;
      this.#schedule();
      this.#o.onHealth();
    });
    return m.busy;
  }

  async #obtain(m: Managed, reason: ObtainReason): Promise<void> {
    const { storage, log } = this.#o;
    const before = m.record?.certPem ?? null;
    for (;;) {
      if (this.#closed) throw new Error('stopped');
      let lock: Lock | null;
      try {
        lock = await storage.tryLock(`cert-${m.id}`, LOCK_TTL_MS);
      } catch (e) {
        this.#failed(m, e, reason);
        throw e;
      }
      if (!lock) {
        // Another instance is ordering this certificate: wait for its result or for the lock to free.
        await this.#waitForOther(m);
        await this.#reload(m.id);
        if (m.record && m.record.certPem !== before && !this.#due(m) && reason !== 'forced') return;
        continue;
      }
      const keepAlive = setInterval(() => void lock!.extend().catch(() => undefined), LOCK_TTL_MS / 3);
      keepAlive.unref();
      try {
        // What the previous holder stored may already be what we came for.
        await this.#reload(m.id);
        const fresh = m.record && m.record.certPem !== before && sameSet(m.record.names, m.names) && !this.#due(m);
        if (fresh && reason !== 'forced') return;
        const t0 = Date.now();
        log('info', 'certificate order started', { id: m.id, names: m.names, issuer: m.issuer.kind, reason });
        const issued = await m.issuer.issue(m.names, { replaces: reason === 'renewal' || reason === 'forced' ? m.info?.ariId ?? null : null });
        const info = certInfo(issued.certPem);
        const rec: StoredCert = {
          id: m.id,
          names: m.names,
          issuer: m.issuer.kind,
          certPem: issued.certPem,
          keyPem: issued.keyPem,
          issuedAt: new Date().toISOString(),
          ...(m.onDemand ? { onDemand: true } : {}),
        };
        await storage.put(certKey(m.id), JSON.stringify(rec));
        this.#adopt(m, rec, info);
        m.failures = 0;
        m.retryAt = 0;
        m.lastError = null;
        this.#o.metric('certificates_issued_total', 1, { issuer: m.issuer.kind, reason }, 'counter');
        log('info', 'certificate stored', { id: m.id, serial: info.serial, notAfter: info.notAfter.toISOString(), ms: Date.now() - t0 });
        await storage.publish(`cert ${m.id}`).catch(() => undefined);
        return;
      } catch (e) {
        this.#failed(m, e, reason);
        throw e;
      } finally {
        clearInterval(keepAlive);
        await lock.release().catch(() => undefined);
      }
    }
  }

  #failed(m: Managed, e: unknown, reason: ObtainReason): void {
    const { retryMinSeconds, retryMaxSeconds } = this.#o.renewal;
    m.failures++;
    m.lastError = (e as Error)?.message ?? String(e);
    const base = Math.min(retryMaxSeconds, retryMinSeconds * 2 ** (m.failures - 1)) * 1000;
    m.retryAt = Date.now() + base * (0.9 + Math.random() * 0.2);
    this.#o.metric('certificate_failures_total', 1, { issuer: m.issuer.kind, reason }, 'counter');
    this.#o.log('error', 'certificate order failed', { id: m.id, names: m.names, reason, failures: m.failures, retryInSeconds: Math.round((m.retryAt - Date.now()) / 1000), error: m.lastError });
  }

  /** Waits until another instance announces this certificate, or its lock may be free. */
  async #waitForOther(m: Managed): Promise<void> {
    await new Promise<void>((resolve) => {
      const t = setTimeout(done, this.#o.storage.shared ? 5000 : (this.#o.lockPollMs ?? 1000));
      t.unref();
      const list = this.#waiters.get(m.id) ?? [];
      list.push(done);
      this.#waiters.set(m.id, list);
      function done() {
        clearTimeout(t);
        resolve();
      }
    });
  }

  #wake(id: string): void {
    const list = this.#waiters.get(id);
    this.#waiters.delete(id);
    for (const f of list ?? []) f();
  }

  /** Reads the stored certificate; serves it if it differs from the one in memory. */
  async #reload(id: string): Promise<void> {
    const m = this.certs.get(id);
    if (!m) return;
    let text: string | null;
    try {
      text = await this.#o.storage.get(certKey(id));
    } catch (e) {
      this.#o.log('warn', 'certificate storage read failed', { id, error: (e as Error).message });
      return;
    }
    if (!text) {
      if (m.record) {
        m.record = null;
        m.info = null;
        m.renewAt = Infinity;
        this.#o.onRemove(m);
      }
      return;
    }
    const rec = JSON.parse(text) as StoredCert;
    if (m.record?.certPem === rec.certPem) return;
    try {
      this.#adopt(m, rec, certInfo(rec.certPem));
    } catch (e) {
      this.#o.log('error', 'stored certificate is unreadable; ordering a new one', { id, error: (e as Error).message });
    }
  }

  #adopt(m: Managed, rec: StoredCert, info: CertInfo): void {
    m.record = rec;
    m.info = info;
    m.ariWindow = null;
    m.nextAriCheck = 0;
    m.renewAt = this.#renewAt(info);
    this.#o.metric('certificate_expiry_timestamp_seconds', Math.floor(info.notAfter.getTime() / 1000), { id: m.id }, 'gauge');
    this.#o.onCert(m);
  }

  /** When to renew without ARI: a fraction of the lifetime, minus up to `jitterRatio` of it at random. */
  #renewAt(info: CertInfo): number {
    const { ratio, jitterRatio } = this.#o.renewal;
    const life = info.notAfter.getTime() - info.notBefore.getTime();
    return info.notBefore.getTime() + life * ratio - Math.random() * life * jitterRatio;
  }

  #due(m: Managed): boolean {
    return Date.now() >= m.renewAt;
  }

  #expired(m: Managed): boolean {
    return !m.info || m.info.notAfter.getTime() <= Date.now();
  }

  /** Revokes the current certificate at the CA, then orders a replacement when the names are still managed. */
  async revoke(m: Managed, reason: number, replace = true): Promise<{ revoked: string }> {
    if (!m.record || !m.info) throw new Error(`no certificate is stored for ${m.id}`);
    if (!m.issuer.revoke) throw new Error(`${m.issuer.kind} certificates cannot be revoked`);
    await m.issuer.revoke(m.record.certPem, reason);
    const serial = m.info.serial;
    this.#o.metric('certificates_revoked_total', 1, { issuer: m.issuer.kind }, 'counter');
    this.#o.log('warn', 'certificate revoked', { id: m.id, serial, reason });
    await this.#o.storage.del(certKey(m.id));
    await this.#o.storage.publish(`cert ${m.id}`).catch(() => undefined);
    if (replace && this.certs.has(m.id)) await this.obtain(m, 'revoked');
    else {
      // Not replaced: stop managing it, or the renewal loop would order it again.
      m.record = null;
      m.info = null;
      this.drop(m.id);
      this.#o.onHealth();
    }
    return { revoked: serial };
  }

  /** The certificate for `leafDer` was reported revoked (OCSP): replace it. */
  replaceRevoked(serial: string): void {
    for (const m of this.certs.values()) {
      if (m.info?.serial === serial && m.issuer.kind === 'acme') void this.obtain(m, 'revoked').catch(() => undefined);
    }
  }

  /** True when some managed name has no usable certificate or its last attempt failed. */
  unhealthy(): string | null {
    const bad: string[] = [];
    for (const m of this.certs.values()) {
      if (this.#expired(m) || m.lastError) bad.push(`${m.id}: ${m.lastError ?? 'no valid certificate'}`);
    }
    return bad.length ? bad.join('; ') : null;
  }

  // ------------------------------------------------------------ schedule

  #schedule(): void {
    if (this.#closed) return;
    if (this.#timer) clearTimeout(this.#timer);
    const now = Date.now();
    let next = now + this.#o.renewal.checkIntervalSeconds * 1000;
    for (const m of this.certs.values()) {
      const due = m.failures ? Math.max(m.retryAt, now) : m.renewAt;
      if (due < next) next = due;
      if (m.info && m.issuer.renewalWindow && this.#o.renewal.ari && m.nextAriCheck < next) next = Math.max(m.nextAriCheck, now);
    }
    // setTimeout overflows past 2^31-1 ms; the check interval caps the sleep well below that anyway.
    this.#timer = setTimeout(() => void this.#tick(), Math.max(0, Math.min(next - now, 2 ** 31 - 1)));
    this.#timer.unref();
  }

  async #tick(): Promise<void> {
    this.#timer = null;
    const now = Date.now();
    const jobs: Promise<unknown>[] = [];
    for (const m of this.certs.values()) {
      if (m.busy) continue;
      // Other instances may have renewed it already.
      if (!this.#o.storage.shared) await this.#reload(m.id);
      if (m.info && m.issuer.renewalWindow && this.#o.renewal.ari && now >= m.nextAriCheck) await this.#checkAri(m);
      const t = Date.now();
      const due = m.failures ? t >= m.retryAt : t >= m.renewAt || this.#expired(m);
      if (!due) continue;
      if (m.onDemand && this.#o.stillApproved && !(await this.#o.stillApproved(m.id).catch(() => true))) {
        this.#o.log('info', 'on-demand name no longer approved; its certificate will not be renewed', { id: m.id });
        this.drop(m.id);
        continue;
      }
      jobs.push(this.obtain(m, m.record ? 'renewal' : 'missing').catch(() => undefined));
    }
    await Promise.all(jobs);
    this.#schedule();
  }

  async #checkAri(m: Managed): Promise<void> {
    try {
      const w = await m.issuer.renewalWindow!(m.info!);
      if (!w) {
        m.nextAriCheck = Infinity;
        return;
      }
      m.nextAriCheck = w.nextCheck;
      if (!m.ariWindow || m.ariWindow.start !== w.start || m.ariWindow.end !== w.end) {
        m.ariWindow = { start: w.start, end: w.end };
        // RFC 9773 §4.2: a uniformly random point in what is left of the window; a window already past means now.
        const now = Date.now();
        const from = Math.max(w.start, now);
        m.renewAt = w.end <= now ? now : from + Math.random() * (w.end - from);
        this.#o.log('info', 'renewal window from the CA', { id: m.id, start: new Date(w.start).toISOString(), end: new Date(w.end).toISOString(), renewAt: new Date(m.renewAt).toISOString(), ...(w.explanationUrl ? { explanation: w.explanationUrl } : {}) });
      }
    } catch (e) {
      m.nextAriCheck = Date.now() + 3600_000;
      this.#o.log('warn', 'renewal information unavailable; keeping the lifetime-based schedule', { id: m.id, error: (e as Error).message });
    }
  }

  /** Runs the renewal loop now (admin route, tests). */
  async tick(): Promise<void> {
    if (this.#timer) clearTimeout(this.#timer);
    await this.#tick();
  }

  close(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    for (const id of [...this.#waiters.keys()]) this.#wake(id);
  }
}

function sameSet(a: string[], b: string[]): boolean {
  if (a.length !== b.length) return false;
  const s = new Set(a);
  return b.every((x) => s.has(x));
}
