/**
 * Test support for the JavaScript sandbox kinds: a real plugin folder in a
 * temp directory, and a HostApi that enforces grants and keeps an audit log
 * the way the kernel's does.
 */
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import {
  BextError, DEFAULT_LIMITS, canFetch, canPublish,
  type FetchRequest, type FetchResponse, type HostApi, type LoadSpec, type LogLevel, type Manifest, type RequestData, type SandboxKind,
} from '../../plugin-api/index.js';

export interface TestHost extends HostApi {
  logs: { level: LogLevel; msg: string; fields?: Record<string, unknown> }[];
  published: { topic: string; data: unknown }[];
  metrics: { name: string; value: number; labels?: Record<string, string> }[];
  audit: { fn: string; detail: string }[];
  store: Map<string, string>;
  /** Resolves every pending `bext_fetch` with this response. */
  fetchAnswer: FetchResponse;
}

/** A HostApi bound to `grants`: ungranted calls throw BEXT_ERR_CAP_DENIED and are audited. */
export function testHost(plugin: string, grants: readonly string[], config: Record<string, unknown> = {}): TestHost {
  const deny = (fn: string, detail: string): never => {
    host.audit.push({ fn, detail });
    throw new BextError('BEXT_ERR_CAP_DENIED', `plugin "${plugin}" called ${fn}(${detail}) without the capability`);
  };
  const kvGranted = () => grants.includes('kv');
  const host: TestHost = {
    plugin,
    logs: [],
    published: [],
    metrics: [],
    audit: [],
    store: new Map(),
    fetchAnswer: { status: 200, headers: { 'content-type': 'text/plain' }, body: 'fetched' },
    async publish(topic, data) {
      if (!canPublish(grants, topic)) deny('bext_publish', topic);
      host.published.push({ topic, data });
      return 1;
    },
    log(level, msg, fields) {
      host.logs.push({ level, msg, fields });
    },
    kv: {
      async get(key) {
        if (!kvGranted()) deny('bext_kv_get', key);
        return host.store.get(key) ?? null;
      },
      async set(key, value) {
        if (!kvGranted()) deny('bext_kv_set', key);
        host.store.set(key, value);
      },
      async del(key) {
        if (!kvGranted()) deny('bext_kv_del', key);
        host.store.delete(key);
      },
    },
    async fetch(req: FetchRequest) {
      const h = new URL(req.url).hostname;
      if (!canFetch(grants, h)) deny('bext_fetch', req.url);
      return host.fetchAnswer;
    },
    metric(name, value, labels) {
      if (!grants.includes('metrics')) deny('bext_metric', name);
      host.metrics.push({ name, value, labels });
    },
    async schedule(name) {
      if (!grants.includes('schedule')) deny('bext_schedule', name);
    },
    async unschedule(name) {
      if (!grants.includes('schedule')) deny('bext_unschedule', name);
      return false;
    },
    config<T>() {
      return config as T;
    },
  };
  return host;
}

export interface TestPlugin {
  spec: LoadSpec;
  host: TestHost;
  dir: string;
  cleanup(): void;
}

/** Writes a plugin folder (entry `plugin.js` plus any extra files) and builds its LoadSpec. */
export function writePlugin(
  sandbox: SandboxKind,
  source: string,
  opts: { manifest?: Partial<Manifest>; grants?: string[]; limits?: Partial<LoadSpec['limits']>; files?: Record<string, string>; config?: Record<string, unknown> } = {},
): TestPlugin {
  const root = mkdtempSync(join(tmpdir(), `bext-${sandbox}-`));
  const dir = join(root, 'plugin');
  mkdirSync(dir);
  const manifest: Manifest = { name: 'guest', version: '1.0.0', sandbox, entry: 'plugin.js', ...opts.manifest };
  writeFileSync(join(dir, 'bext-plugin.json'), JSON.stringify(manifest, null, 2));
  writeFileSync(join(dir, 'plugin.js'), source);
  for (const [name, text] of Object.entries(opts.files ?? {})) {
    mkdirSync(dirname(join(dir, name)), { recursive: true });
    writeFileSync(join(dir, name), text);
  }
  const grants = opts.grants ?? [];
  const host = testHost(manifest.name, grants, opts.config);
  const spec: LoadSpec = {
    manifest,
    dir,
    entryPath: join(dir, 'plugin.js'),
    host,
    grants,
    limits: {
      timeoutMs: DEFAULT_LIMITS.timeoutMs,
      memoryMb: DEFAULT_LIMITS.memoryMb,
      fuel: DEFAULT_LIMITS.fuel,
      bodyBytes: DEFAULT_LIMITS.bodyBytes,
      ...opts.limits,
    },
  };
  return { spec, host, dir, cleanup: () => rmSync(root, { recursive: true, force: true }) };
}

/** A request as the kernel builds it. */
export function request(over: Partial<RequestData> = {}): RequestData {
  return {
    id: 'r1',
    method: 'GET',
    path: '/hello',
    query: '',
    host: 'example.com',
    headers: {
      host: 'example.com',
      'user-agent': 'curl/8.5',
      accept: '*/*',
      'accept-encoding': 'gzip, br',
      cookie: 'session=abc',
      'x-request-id': 'req-1',
    },
    remoteAddress: '127.0.0.1',
    scheme: 'http',
    httpVersion: '1.1',
    ctx: {},
    ...over,
  };
}
