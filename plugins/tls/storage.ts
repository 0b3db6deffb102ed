/**
 * Where certificates, keys, ACME accounts and pending challenge answers
 * live: a directory (one machine), or Redis (several instances), each with
 * a lock so that one instance orders a name while the others wait for it.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { dirname, join } from 'node:path';
import { Redis } from 'ioredis';

/** A held lock. */
export interface Lock {
  /** Pushes the expiry out again; false when the lock was lost (expired and taken). */
  extend(): Promise<boolean>;
  release(): Promise<void>;
}

export interface Storage {
  /** Whether other instances see what this one writes (Redis) and hear its events. */
  readonly shared: boolean;
  readonly kind: 'disk' | 'redis';
  get(key: string): Promise<string | null>;
  put(key: string, value: string, ttlSeconds?: number): Promise<void>;
  del(key: string): Promise<void>;
  /** Takes the lock if free (or expired); null when another holder has it. */
  tryLock(name: string, ttlMs: number): Promise<Lock | null>;
  /** Tells other instances something changed (`cert <id>`); local no-op on disk. */
  publish(event: string): Promise<void>;
  onEvent(fn: (event: string) => void): void;
  close(): Promise<void>;
}

/** Storage keys are paths: lower-case names, `*` spelled out so a file name never holds a glob. */
export function keyPart(s: string): string {
  return s.toLowerCase().replace(/\*/g, '_wildcard_').replace(/[^a-z0-9._-]/g, '_');
}

// ---------------------------------------------------------------- disk

export class DiskStorage implements Storage {
  readonly shared = false;
  readonly kind = 'disk';
  #dir: string;

  /** Nothing is created until the first write. */
  constructor(dir: string) {
    this.#dir = dir;
  }

  #path(key: string): string {
    if (key.includes('..')) throw new Error(`bad storage key ${key}`);
    return join(this.#dir, key);
  }

  async get(key: string): Promise<string | null> {
    try {
      const text = await fsp.readFile(this.#path(key), 'utf8');
      if (text.startsWith('{"$expires":')) {
        const v = JSON.parse(text) as { $expires: number; value: string };
        if (v.$expires < Date.now()) return null;
        return v.value;
      }
      return text;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async put(key: string, value: string, ttlSeconds?: number): Promise<void> {
    const p = this.#path(key);
    await fsp.mkdir(dirname(p), { recursive: true, mode: 0o700 });
    const tmp = `${p}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    const body = ttlSeconds ? JSON.stringify({ $expires: Date.now() + ttlSeconds * 1000, value }) : value;
    // Write then rename: a reader (another worker) never sees half a key file.
    await fsp.writeFile(tmp, body, { mode: 0o600 });
    await fsp.rename(tmp, p);
  }

  async del(key: string): Promise<void> {
    await fsp.rm(this.#path(key), { force: true });
  }

  async tryLock(name: string, ttlMs: number): Promise<Lock | null> {
    const p = this.#path(`locks/${keyPart(name)}.lock`);
    await fsp.mkdir(dirname(p), { recursive: true, mode: 0o700 });
    const token = randomBytes(12).toString('hex');
    const write = (flag: 'wx' | 'w') => fsp.writeFile(p, JSON.stringify({ token, expires: Date.now() + ttlMs, pid: process.pid }), { flag, mode: 0o600 });
    try {
      await write('wx');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const held = await readLockFile(p);
      if (held && held.expires > Date.now()) return null;
      // Expired (its holder died): remove it and race once more for it, exclusively.
      await fsp.rm(p, { force: true });
      try {
        await write('wx');
      } catch (e2) {
        if ((e2 as NodeJS.ErrnoException).code === 'EEXIST') return null;
        throw e2;
      }
    }
    return {
      extend: async () => {
        const held = await readLockFile(p);
        if (held?.token !== token) return false;
        await write('w');
        return true;
      },
      release: async () => {
        const held = await readLockFile(p);
        if (held?.token === token) await fsp.rm(p, { force: true });
      },
    };
  }

  async publish(): Promise<void> {}
  onEvent(): void {}
  async close(): Promise<void> {}
}

async function readLockFile(p: string): Promise<{ token: string; expires: number } | null> {
  try {
    return JSON.parse(await fsp.readFile(p, 'utf8')) as { token: string; expires: number };
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- redis

const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`;
const EXTEND = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end`;

export class RedisStorage implements Storage {
  readonly shared = true;
  readonly kind = 'redis';
  #redis: Redis;
  #sub: Redis | null = null;
  #prefix: string;
  #channel: string;
  #listeners: ((e: string) => void)[] = [];
  #onState: (up: boolean, detail: string) => void;
  #up = true;
  #detail = '';

  constructor(url: string, prefix: string, onState: (up: boolean, detail: string) => void) {
    this.#prefix = prefix;
    this.#channel = `${prefix}events`;
    this.#onState = onState;
    const opts = {
      maxRetriesPerRequest: 1,
      commandTimeout: 5000,
      connectTimeout: 5000,
      retryStrategy: (attempt: number) => Math.min(100 * 2 ** attempt, 5000),
    };
    this.#redis = new Redis(url, opts);
    this.#redis.on('error', (e: Error) => this.#state(false, e.message));
    this.#redis.on('ready', () => this.#state(true, ''));
    this.#sub = new Redis(url, { ...opts, maxRetriesPerRequest: null, commandTimeout: undefined });
    this.#sub.on('error', () => undefined);
    this.#sub.on('message', (_ch: string, msg: string) => {
      for (const l of this.#listeners) l(msg);
    });
    void this.#sub.subscribe(this.#channel).catch(() => undefined);
  }

  #state(up: boolean, detail: string): void {
    this.#detail = detail;
    if (up === this.#up) return;
    this.#up = up;
    this.#onState(up, detail);
  }

  /** Resolves once the first connection is ready; rejects at its first failure. */
  async ready(): Promise<void> {
    if (this.#redis.status === 'ready') return;
    await new Promise<void>((resolve, reject) => {
      const ok = () => {
        this.#redis.off('error', bad);
        resolve();
      };
      const bad = (e: Error) => {
        this.#redis.off('ready', ok);
        reject(e);
      };
      this.#redis.once('ready', ok);
      this.#redis.once('error', bad);
    });
  }

  /** While Redis is known to be down, fail at once instead of queueing behind reconnects. */
  #check(): void {
    if (!this.#up) throw new Error(`certificate storage (Redis) is unreachable: ${this.#detail}`);
  }

  async get(key: string): Promise<string | null> {
    this.#check();
    return this.#redis.get(this.#prefix + key);
  }

  async put(key: string, value: string, ttlSeconds?: number): Promise<void> {
    this.#check();
    if (ttlSeconds) await this.#redis.set(this.#prefix + key, value, 'EX', Math.max(1, Math.ceil(ttlSeconds)));
    else await this.#redis.set(this.#prefix + key, value);
  }

  async del(key: string): Promise<void> {
    this.#check();
    await this.#redis.del(this.#prefix + key);
  }

  async tryLock(name: string, ttlMs: number): Promise<Lock | null> {
    this.#check();
    const key = `${this.#prefix}locks/${keyPart(name)}`;
    const token = randomBytes(12).toString('hex');
    const ok = await this.#redis.set(key, token, 'PX', ttlMs, 'NX');
    if (ok !== 'OK') return null;
    return {
      extend: async () => (await this.#redis.eval(EXTEND, 1, key, token, String(ttlMs))) === 1,
      release: async () => {
        await this.#redis.eval(RELEASE, 1, key, token);
      },
    };
  }

  async publish(event: string): Promise<void> {
    this.#check();
    await this.#redis.publish(this.#channel, event);
  }

  onEvent(fn: (event: string) => void): void {
    this.#listeners.push(fn);
  }

  async close(): Promise<void> {
    this.#listeners = [];
    // QUIT on a connection that is reconnecting would wait for it to come back.
    if (this.#redis.status === 'ready') await this.#redis.quit().catch(() => undefined);
    this.#redis.disconnect();
    this.#sub?.disconnect();
  }
}
