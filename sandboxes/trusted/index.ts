/**
 * Trusted plugins: first-party TypeScript loaded with a dynamic import and
 * called directly. No CPU or memory limit; async hooks still have deadlines
 * (enforced by the kernel).
 */
import { pathToFileURL } from 'node:url';
import { BextError, type PluginFactory, type PluginInstance, type SandboxHost, type SandboxInstance, type SandboxStats } from '../../plugin-api/index.js';

const trusted: SandboxHost = {
  kind: 'trusted',
  available: () => ({ ok: true }),
  async load(spec) {
    let mod: { default?: unknown };
    try {
      mod = (await import(pathToFileURL(spec.entryPath).href)) as { default?: unknown };
    } catch (e) {
      throw new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "${spec.manifest.name}": cannot import ${spec.entryPath}: ${(e as Error).message}`, { cause: e });
    }
    if (typeof mod.default !== 'function') {
      throw new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "${spec.manifest.name}": ${spec.entryPath} has no default export factory`, {
        hint: 'export default definePlugin((host) => ({ ...hooks }))',
      });
    }
    const inst: PluginInstance = await (mod.default as PluginFactory)(spec.host);
    const { dispose, ...hooks } = inst;
    const stats: SandboxStats = { calls: 0, errors: 0, timeUs: 0 };
    const instance: SandboxInstance = {
      hooks,
      stats: () => stats,
      async dispose() {
        await dispose?.call(inst);
      },
    };
    return instance;
  },
};

export default trusted;
