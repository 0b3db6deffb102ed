/**
 * Helpers for the process sandbox's tests: a HostApi that checks grants and
 * audits refusals the way the kernel's does, and plugin folders written to a
 * temporary directory.
 */
import { mkdtempSync, writeFileSync, chmodSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  BextError,
  DEFAULT_LIMITS,
  canFetch,
  canPublish,
  type HostApi,
  type LoadSpec,
  type Manifest,
  type SandboxHost,
} from '../../plugin-api/index.js';
import type { ProcessInstance } from './index.js';

export interface Recorder {
  api: HostApi;
  published: { topic: string; data: unknown }[];
  logs: { level: string; msg: string; fields?: Record<string, unknown> }[];
  audit: { fn: string; detail: string }[];
  kv: Map<string, string>;
  metrics: { name: string; value: number }[];
}

/** A HostApi bound to `grants`, recording everything it is asked. */
export function recordingHost(name: string, grants: readonly string[], config: Record<string, unknown> = {}): Recorder {
  const r: Omit<Recorder, 'api'> = { published: [], logs: [], audit: [], kv: new Map(), metrics: [] };
  const deny = (fn: string, detail: string): never => {
    r.audit.push({ fn, detail });
    throw new BextError('BEXT_ERR_CAP_DENIED', `plugin "${name}" called ${fn}(${detail}) without the capability`);
  };
  const api: HostApi = {
    plugin: name,
    async publish(topic, data) {
      if (!canPublish(grants, topic)) deny('bext_publish', topic);
      r.published.push({ topic, data });
      return 1;
    },
    log(level, msg, fields) {
      r.logs.push({ level, msg, ...(fields ? { fields } : {}) });
    },
    kv: {
      async get(key) {
        if (!grants.includes('kv')) deny('bext_kv_get', key);
        return r.kv.get(key) ?? null;
      },
      async set(key, value) {
        if (!grants.includes('kv')) deny('bext_kv_set', key);
        r.kv.set(key, value);
      },
      async del(key) {
        if (!grants.includes('kv')) deny('bext_kv_del', key);
        r.kv.delete(key);
      },
    },
    async fetch(req) {
      const host = new URL(req.url).hostname;
      if (!canFetch(grants, host)) deny('bext_fetch', host);
      return { status: 200, headers: {}, body: `fetched ${req.url}` };
    },
    metric(name, value) {
      if (!grants.includes('metrics')) deny('bext_metric', name);
      r.metrics.push({ name, value });
    },
    async schedule(task) {
      if (!grants.includes('schedule')) deny('bext_schedule', task);
    },
    async unschedule(task) {
      if (!grants.includes('schedule')) deny('bext_unschedule', task);
      return false;
    },
    config: <T>() => structuredClone(config) as T,
  };
  return { ...r, api };
}

/** Writes a plugin folder; `files` maps names to contents (a leading `#!` makes the file executable). */
export function pluginFolder(files: Record<string, string>): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'bext-process-'));
  for (const [name, text] of Object.entries(files)) {
    const p = path.join(dir, name);
    writeFileSync(p, text);
    if (text.startsWith('#!')) chmodSync(p, 0o755);
  }
  return dir;
}

export function removeFolder(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

export interface LoadOptions {
  name?: string;
  entry?: string;
  grants?: string[];
  config?: Record<string, unknown>;
  manifest?: Partial<Manifest>;
  limits?: Partial<LoadSpec['limits']>;
}

/** Loads a plugin folder into a process host with a recording HostApi. */
export async function loadPlugin(
  host: SandboxHost,
  dir: string,
  o: LoadOptions = {},
): Promise<{ inst: ProcessInstance; rec: Recorder }> {
  const name = o.name ?? 'probe';
  const entry = o.entry ?? 'plugin.mjs';
  const grants = o.grants ?? [];
  const rec = recordingHost(name, grants, o.config);
  const manifest: Manifest = { name, version: '1.0.0', sandbox: 'process', entry, ...o.manifest };
  const inst = (await host.load({
    manifest,
    dir,
    entryPath: path.join(dir, entry),
    host: rec.api,
    grants,
    limits: { ...DEFAULT_LIMITS, ...o.limits },
  })) as ProcessInstance;
  return { inst, rec };
}

/** A request as the kernel hands it to a hook (the fields a projection may pick from). */
export function request(over: Record<string, unknown> = {}): never {
  return {
    id: 'r1',
    method: 'GET',
    path: '/',
    query: '',
    host: 'example.com',
    headers: { host: 'example.com', accept: 'text/html' },
    remoteAddress: '127.0.0.1',
    scheme: 'http',
    httpVersion: '1.1',
    ctx: {},
    ...over,
  } as never;
}
