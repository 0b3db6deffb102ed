/**
 * Trusted plugins: first-party TypeScript loaded with a dynamic import and
 * called directly. No CPU or memory limit; async hooks still have deadlines
 * (enforced by the kernel).
 */
import { pathToFileURL } from 'node:url';
import { BextError, type PluginFactory, type PluginInstance, type SandboxHost, type SandboxInstance, type SandboxStats } from '../../plugin-api/index.js';

/**
 * Each load imports the entry under a fresh URL, so a reload after the code
 * changed runs the new code. Modules the entry imports stay cached by Node
 * (ESM has no unload): a trusted plugin that changes at runtime should keep
 * its changing code in its entry, or live in a sandbox kind.
 */
let loads = 0;

const trusted: SandboxHost = {
  kind: 'trusted',
  available: () => ({ ok: true }),
  async load(spec) {
    let mod: { default?: unknown };
    try {
      const url = pathToFileURL(spec.entryPath).href + (loads++ === 0 ? '' : `?bext-load=${loads}`);
      mod = (await import(url)) as { default?: unknown };
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
