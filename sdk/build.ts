/**
 * Builds an AssemblyScript WASM plugin: `dir/assembly/index.ts` → `dir/plugin.wasm`,
 * with the bext PDK importable as `@bext/pdk`.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BextError } from '../plugin-api/index.js';

const PDK_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'pdk', 'assembly');
/** Package root that asc searches; files under it are served from the PDK folder. */
const VIRTUAL_PACKAGES = path.join(PDK_DIR, '..', '.packages');
const PDK_PREFIX = path.join(VIRTUAL_PACKAGES, '@bext', 'pdk') + path.sep;

export interface BuildOptions {
  /** Entry relative to `dir`; default `assembly/index.ts`. */
  entry?: string;
  /** Output relative to `dir`; default `plugin.wasm`. */
  outFile?: string;
  /**
   * AssemblyScript runtime: `incremental` (default: a GC, safe for state kept
   * between calls) or `stub` (bump allocator that never frees; only for
   * plugins that allocate a bounded amount over their lifetime).
   */
  runtime?: 'incremental' | 'minimal' | 'stub';
  /** Also write a `.wat` text file beside the binary. */
  text?: boolean;
}

/**
 * Compiles a plugin folder with the AssemblyScript compiler (-O3).
 *
 * @example
 * ```ts
 * const { wasmPath, bytes } = await buildWasmPlugin('/path/to/my-plugin');
 * console.log(`built ${wasmPath} (${bytes} bytes)`);
 * ```
 */
export async function buildWasmPlugin(dir: string, opts: BuildOptions = {}): Promise<{ wasmPath: string; bytes: number }> {
  const asc = await import('assemblyscript/asc');
  const entry = opts.entry ?? path.join('assembly', 'index.ts');
  const outFile = opts.outFile ?? 'plugin.wasm';
  const argv = [
    entry,
    '--outFile', outFile,
    '-O3',
    '--runtime', opts.runtime ?? 'incremental',
    '--path', VIRTUAL_PACKAGES,
    '--baseDir', dir,
  ];
  if (opts.text) argv.push('--textFile', outFile.replace(/\.wasm$/, '') + '.wat');
  let stderr = '';
  const { readFile } = await import('node:fs/promises');
  const result = await asc.main(argv, {
    stdout: { write: () => true } as never,
    stderr: { write: (s: string | Uint8Array) => { stderr += typeof s === 'string' ? s : Buffer.from(s).toString(); return true; } } as never,
    readFile: async (filename: string, baseDir: string) => {
      let abs = path.resolve(baseDir, filename);
      if (abs.startsWith(PDK_PREFIX)) abs = path.join(PDK_DIR, abs.slice(PDK_PREFIX.length));
      try {
        return await readFile(abs, 'utf8');
      } catch {
        return null;
      }
    },
  });
  if (result.error) {
    const detail = stderr.replace(/\x1b\[[0-9;]*m/g, '').trim();
    throw new BextError('BEXT_ERR_PLUGIN_LOAD', `cannot build ${path.join(dir, entry)}: ${result.error.message}${detail ? `\n${detail}` : ''}`, {
      hint: 'fix the AssemblyScript errors above; the PDK is imported as "@bext/pdk"',
      cause: result.error,
    });
  }
  const wasmPath = path.join(dir, outFile);
  await embedManifest(dir, wasmPath);
  const { size } = await stat(wasmPath);
  return { wasmPath, bytes: size };
}

function leb128(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}

/**
 * Appends the folder's manifest (less `entry` and `sandbox`, which a bare
 * module implies) as a `bext-plugin` custom section, so the .wasm file alone
 * carries its hooks, needs and the capabilities it asks for:
 * `bext plugin add ./rules.wasm` then shows and grants them.
 */
export async function embedManifest(dir: string, wasmPath: string): Promise<void> {
  const { readFile, writeFile } = await import('node:fs/promises');
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(await readFile(path.join(dir, 'bext-plugin.json'), 'utf8')) as Record<string, unknown>;
  } catch {
    return;
  }
  const { entry: _entry, sandbox: _sandbox, $schema: _schema, ...rest } = raw;
  const name = Buffer.from('bext-plugin');
  const payload = Buffer.from(JSON.stringify(rest));
  const body = Buffer.concat([Buffer.from(leb128(name.length)), name, payload]);
  const section = Buffer.concat([Buffer.from([0]), Buffer.from(leb128(body.length)), body]);
  const wasm = await readFile(wasmPath);
  await writeFile(wasmPath, Buffer.concat([wasm, section]));
}
