/**
 * Test harness: starts a real kernel with the given plugins on ephemeral
 * ports (public and admin), for plugin tests of every sandbox kind.
 *
 * @example
 * ```ts
 * const b = await startBext({ plugins: ['health', { dir: './my-plugin', grants: ['publish:custom/*'] }] });
 * const res = await fetch(`${b.url}/health`);
 * await b.close();
 * ```
 */
import { resolve } from 'node:path';
import { parseConfig, type BextConfigInput } from '../kernel/config.js';
import { Logger, type LogRecord } from '../kernel/log.js';
import { Kernel, type PluginSpec } from '../kernel/server.js';

export interface HarnessPlugin {
  /** Plugin folder (or .wasm file). */
  dir: string;
  /** Capabilities granted; default: everything the manifest asks for. */
  grants?: string[];
  scope?: 'global' | 'group';
}

export interface StartOptions {
  /** Builtin names (`static`) or folders. */
  plugins?: (string | HarnessPlugin)[];
  /** bext.config.json content; ports default to 0 (ephemeral), admin on loopback. */
  config?: BextConfigInput;
  /** The folder being served. */
  siteDir?: string;
  /** Lock file to load instead of (or before) `plugins`. */
  lockFile?: string;
  /** First quarantine backoff in ms (default 1000). */
  quarantineBackoffMs?: number;
  /** Log level printed to stderr (default: warn; all records are kept in `logs`). */
  logLevel?: 'trace' | 'debug' | 'info' | 'warn' | 'error';
}

export interface Bext {
  url: string;
  adminUrl: string;
  port: number;
  adminPort: number;
  kernel: Kernel;
  /** Every log record written while running. */
  logs: LogRecord[];
  publish(topic: string, data: unknown): Promise<number>;
  close(): Promise<void>;
}

async function manifestGrants(source: string): Promise<string[]> {
  const { locatePlugin } = await import('../kernel/manifest.js');
  return locatePlugin(source, process.cwd()).manifest.capabilities ?? [];
}

export async function startBext(opts: StartOptions = {}): Promise<Bext> {
  const input: BextConfigInput = { ...(opts.config ?? {}) };
  input.server = { port: 0, host: '127.0.0.1', shutdownTimeoutMs: 5000, ...(input.server ?? {}) };
  input.admin = { port: 0, host: '127.0.0.1', ...(input.admin ?? {}) };
  const config = parseConfig(input, 'test config');
  const specs: PluginSpec[] = [];
  for (const p of opts.plugins ?? []) {
    const dir = typeof p === 'string' ? (p.includes('/') ? resolve(p) : `builtin:${p}`) : resolve(p.dir);
    const source = dir.startsWith('builtin:') ? dir : `file:${dir}`;
    const grants = typeof p === 'string' || !p.grants ? await manifestGrants(source) : p.grants;
    specs.push({ source, grants, scope: typeof p === 'string' ? undefined : p.scope });
  }
  const logs: LogRecord[] = [];
  const logger = new Logger(opts.logLevel ?? ((process.env.BEXT_LOG as 'warn') || 'error'));
  logger.subscribe((r) => {
    logs.push(r);
    if (logs.length > 5000) logs.splice(0, 1000);
  });
  const kernel = await Kernel.create({ config, plugins: specs, lockFile: opts.lockFile, siteDir: opts.siteDir, logger, quarantineBackoffMs: opts.quarantineBackoffMs, baseDir: process.cwd() });
  const { port, adminPort } = await kernel.listen();
  return {
    url: `http://127.0.0.1:${port}`,
    adminUrl: `http://127.0.0.1:${adminPort}`,
    port,
    adminPort: adminPort ?? 0,
    kernel,
    logs,
    publish: (topic, data) => kernel.publish(topic, data, 'test'),
    close: () => kernel.close(2000),
  };
}
