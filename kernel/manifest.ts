/**
 * Finding and validating plugins: a source (`builtin:<name>`, `file:<path>`)
 * resolves to a folder with a `bext-plugin.json`, or to a bare `.wasm` file
 * whose manifest is embedded as a `bext-plugin` custom section or lies beside it.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BextError, HOOK_NAMES, manifestSchema, type HookName, type Manifest } from '../plugin-api/index.js';
import { formatAjvErrors, makeAjv, readJsonFile } from './config.js';
import { checkSchedules } from './scheduler.js';

/** The repository root: `builtin:<name>` is `plugins/<name>` under it. */
export const BEXT_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const BUILTIN_DIR = join(BEXT_ROOT, 'plugins');

const validateManifest = makeAjv().compile(manifestSchema);

export interface PluginLocation {
  /** Canonical source string for the lock file. */
  source: string;
  /** Folder (or the .wasm file itself) covered by the integrity. */
  root: string;
  manifest: Manifest;
  entryPath: string;
}

/** Validates a manifest object, naming the file and the field on error. */
export function checkManifest(raw: unknown, file: string): Manifest {
  if (!validateManifest(raw)) {
    const lines = formatAjvErrors(file, raw, validateManifest.errors);
    throw new BextError('BEXT_ERR_MANIFEST_INVALID', lines.join('\n'), { details: { errors: lines } });
  }
  checkSchedules(raw as unknown as Manifest, file);
  return raw as unknown as Manifest;
}

function wasmManifest(file: string): Manifest {
  const bytes = readFileSync(file);
  let mod: WebAssembly.Module;
  try {
    mod = new WebAssembly.Module(bytes);
  } catch (e) {
    throw new BextError('BEXT_ERR_MANIFEST_INVALID', `${file}: not a valid WebAssembly module: ${(e as Error).message}`);
  }
  const section = WebAssembly.Module.customSections(mod, 'bext-plugin')[0];
  if (section) {
    const raw = JSON.parse(Buffer.from(section).toString('utf8')) as Record<string, unknown>;
    return checkManifest({ ...raw, entry: basename(file), sandbox: 'wasm' }, `${file} (bext-plugin section)`);
  }
  const exported = new Set(WebAssembly.Module.exports(mod).map((e) => e.name));
  const hooks: Partial<Record<HookName, object>> = {};
  for (const h of HOOK_NAMES) if (exported.has(h)) hooks[h] = {};
  const name = basename(file, '.wasm').toLowerCase().replace(/[^a-z0-9-]/g, '-').replace(/^[^a-z]+/, '') || 'wasm-plugin';
  return checkManifest({ name, version: '0.0.0', sandbox: 'wasm', entry: basename(file), hooks }, file);
}

/**
 * Resolves a plugin source. `base` is the folder relative paths are taken from
 * (the lock file's folder).
 */
export function locatePlugin(source: string, base: string): PluginLocation {
  let path: string;
  let canonical: string;
  if (source.startsWith('builtin:')) {
    const name = source.slice(8);
    path = join(BUILTIN_DIR, name);
    canonical = source;
    if (!/^[a-z][a-z0-9-]*$/.test(name) || !existsSync(join(path, 'bext-plugin.json'))) {
      throw new BextError('BEXT_ERR_PLUGIN_NOT_FOUND', `no builtin plugin "${name}"`, { hint: 'run `bext plugin list --available` to see the builtin plugins' });
    }
  } else {
    const p = source.startsWith('file:') ? source.slice(5) : source;
    path = isAbsolute(p) ? p : resolve(base, p);
    const rel = relative(base, path) || '.';
    canonical = `file:${isAbsolute(p) ? path : rel.startsWith('.') ? rel : `./${rel}`}`;
    if (!existsSync(path)) throw new BextError('BEXT_ERR_PLUGIN_NOT_FOUND', `plugin source ${source} does not exist (looked at ${path})`);
  }
  if (statSync(path).isFile()) {
    if (!path.endsWith('.wasm')) {
      throw new BextError('BEXT_ERR_PLUGIN_NOT_FOUND', `${path} is a file but not a .wasm module`, { hint: 'point at the plugin folder (the one with bext-plugin.json) or at a .wasm file' });
    }
    const beside = join(dirname(path), 'bext-plugin.json');
    if (existsSync(beside)) {
      const m = checkManifest(readJsonFile(beside, 'BEXT_ERR_MANIFEST_INVALID'), beside);
      if (resolve(dirname(path), m.entry) === path) return { source: canonical, root: dirname(path), manifest: m, entryPath: path };
    }
    return { source: canonical, root: path, manifest: wasmManifest(path), entryPath: path };
  }
  const mf = join(path, 'bext-plugin.json');
  if (!existsSync(mf)) {
    throw new BextError('BEXT_ERR_MANIFEST_MISSING', `${path} has no bext-plugin.json`, { hint: 'create one, or scaffold a plugin with `bext plugin new <name>`' });
  }
  const manifest = checkManifest(readJsonFile(mf, 'BEXT_ERR_MANIFEST_INVALID'), mf);
  const entryPath = resolve(path, manifest.entry);
  if (!existsSync(entryPath)) {
    throw new BextError('BEXT_ERR_MANIFEST_INVALID', `${mf}: $.entry: expected an existing file, found ${JSON.stringify(manifest.entry)} (missing at ${entryPath})`, {
      hint: manifest.sandbox === 'wasm' ? 'build it first with `bext plugin build`' : undefined,
    });
  }
  return { source: canonical, root: path, manifest, entryPath };
}
