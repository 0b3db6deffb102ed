/**
 * The contract between the bext kernel and its plugins. This is the only
 * module plugins import.
 */
import type { PluginHooks } from './hooks.js';
import type { HostApi } from './host.js';

export * from './hooks.js';
export * from './manifest.js';
export * from './capabilities.js';
export * from './errors.js';
export * from './host.js';
export * from './sandbox.js';
export * from './match.js';
export * from './project.js';
export * from './encoding.js';
export * from './schedule.js';

/** What a plugin's factory returns: its hooks, and optionally a dispose step. */
export type PluginInstance = PluginHooks & {
  /** Called once when the plugin is unloaded, in reverse load order. */
  dispose?(): void | Promise<void>;
};

/** The default export of a trusted plugin's entry module. */
export type PluginFactory = (host: HostApi) => PluginInstance | Promise<PluginInstance>;

/**
 * Declares a trusted plugin with full typing.
 *
 * @example
 * ```ts
 * import { definePlugin } from '../../plugin-api/index.js';
 * export default definePlugin((host) => ({
 *   onRoute: () => ({ status: 200, headers: { 'content-type': 'text/plain' }, body: 'hi' }),
 * }));
 * ```
 */
export function definePlugin(factory: PluginFactory): PluginFactory {
  return factory;
}
