/**
 * The one interface every sandbox kind implements. The kernel loads plugins
 * through it and never learns which kind it is calling.
 */
import type { HookName, PluginHooks } from './hooks.js';
import type { HostApi } from './host.js';
import type { Manifest, SandboxKind } from './manifest.js';

export interface LoadSpec {
  manifest: Manifest;
  /** Absolute path of the plugin folder. */
  dir: string;
  /** Absolute path of the entry file. */
  entryPath: string;
  /** Host functions bound to this plugin's grants. */
  host: HostApi;
  /** Capabilities granted in the lock file. */
  grants: readonly string[];
  /** Effective limits (manifest limits over defaults). */
  limits: { timeoutMs: number; memoryMb: number; fuel: number; bodyBytes: number };
}

export interface SandboxStats {
  calls: number;
  errors: number;
  /** Total time inside the sandbox, in microseconds. */
  timeUs: number;
  /** WASM fuel used by the last call, and in total. */
  fuelLast?: number;
  fuelTotal?: number;
  /** Bytes of memory the instance holds. */
  memoryBytes?: number;
  /** Times a broken instance was replaced. */
  restarts?: number;
}

/**
 * A loaded plugin. Its hooks are called with the same arguments as trusted
 * hooks (plain data for sandboxes: requests are projected to `needs`).
 */
export interface SandboxInstance {
  readonly hooks: PluginHooks;
  stats(): SandboxStats;
  /** Replaces a broken instance with a fresh one (same code, same grants). */
  restart?(): Promise<void>;
  dispose(): Promise<void>;
}

/**
 * A sandbox kind.
 *
 * @example
 * ```ts
 * const host: SandboxHost = { kind: 'trusted', async load(spec) { ... } };
 * ```
 */
export interface SandboxHost {
  readonly kind: SandboxKind;
  /** Whether this kind can run here (native module present, and so on), with the reason if not. */
  available(): { ok: true } | { ok: false; reason: string };
  load(spec: LoadSpec): Promise<SandboxInstance>;
}

/** Hooks a manifest declared that the loaded code does not export. */
export function missingHooks(declared: readonly HookName[], hooks: PluginHooks): HookName[] {
  return declared.filter((h) => typeof hooks[h] !== 'function');
}
