/**
 * The sandbox kinds the kernel can load plugins into. Each kind is imported
 * only when a plugin of that kind is loaded, so a missing native module
 * affects only the plugins that need it.
 */
import { BextError, type SandboxHost, type SandboxKind } from '../plugin-api/index.js';

const loaders: Record<SandboxKind, () => Promise<{ default: SandboxHost }>> = {
  trusted: () => import('./trusted/index.js'),
  wasm: () => import('./wasm/index.js'),
  quickjs: () => import('./quickjs/index.js'),
  isolate: () => import('./isolate/index.js'),
  process: () => import('./process/index.js'),
};

const cache = new Map<SandboxKind, Promise<SandboxHost>>();

/** The host for a sandbox kind, or a BEXT_ERR_SANDBOX_UNAVAILABLE error saying why it cannot run here. */
export function sandboxHost(kind: SandboxKind): Promise<SandboxHost> {
  let p = cache.get(kind);
  if (!p) {
    p = loaders[kind]().then(
      (m) => {
        const avail = m.default.available();
        if (!avail.ok) throw new BextError('BEXT_ERR_SANDBOX_UNAVAILABLE', `sandbox "${kind}" cannot run here: ${avail.reason}`);
        return m.default;
      },
      (e: unknown) => {
        cache.delete(kind);
        throw new BextError('BEXT_ERR_SANDBOX_UNAVAILABLE', `sandbox "${kind}" failed to load: ${(e as Error).message}`, {
          hint: 'run `npm ci` so native sandbox modules are built (see allowScripts in package.json)',
          cause: e,
        });
      },
    );
    cache.set(kind, p);
  }
  return p;
}
