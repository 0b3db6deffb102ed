/**
 * Builds a site for a sandbox: the tenant's pages/ (same model as the
 * trusted SSR app) bundled with React into one ES module that a `quickjs`
 * or `isolate` plugin loads, plus its bext-plugin.json. The result is an
 * ordinary sandboxed plugin folder: lock it for the tenant's route group.
 */
import { mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BextError, type Manifest } from '../../plugin-api/index.js';
import { entrySource, nodeModulesDir, scanSite, siteAliases } from './build.js';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

export interface SandboxBuildOptions {
  /** Plugin name (the tenant's): lower case, digits and dashes. */
  name: string;
  sandbox?: 'quickjs' | 'isolate';
  /** onRender priority; below the trusted SSR plugin's 90 so the tenant answers first in its group. */
  priority?: number;
  timeoutMs?: number;
  memoryMb?: number;
  /** Defaults for pages that export no mode/revalidate. */
  defaultMode?: 'isr' | 'ssr' | 'static' | 'swr';
  defaultRevalidate?: number;
}

/**
 * Bundles `siteDir` into a plugin folder at `outDir` (created or replaced).
 *
 * @example
 * ```ts
 * const { dir } = await buildSandboxSite('tenants/acme', '.bext/tenants/acme', { name: 'tenant-acme' });
 * // bext.config.json: { "groups": [{ "name": "acme", "hosts": ["acme.example.com"], "add": ["tenant-acme"], "remove": ["ssr"] }] }
 * ```
 */
export async function buildSandboxSite(siteDir: string, outDir: string, opts: SandboxBuildOptions): Promise<{ dir: string; manifest: Manifest; bytes: number }> {
  if (!/^[a-z][a-z0-9-]{0,63}$/.test(opts.name)) throw new BextError('BEXT_ERR_SSR_BUILD', `"${opts.name}" is not a plugin name (lower case letters, digits and dashes)`);
  const scan = await scanSite(siteDir);
  const dir = resolve(outDir);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const routes = JSON.stringify(scan.pages.map((p) => p.entry));
  const init = JSON.stringify({ defaultMode: opts.defaultMode ?? 'ssr', defaultRevalidate: opts.defaultRevalidate ?? 60 });
  const entry = entrySource(scan, `${opts.name}-${Date.now().toString(36)}`, join(here, 'sandbox-runtime.ts'), 'sandboxRenderer', `export const onRender = sandboxRenderer(site, ${routes}, ${init});\n`);
  const entryFile = join(dir, '.entry.tsx');
  writeFileSync(entryFile, entry);
  const esbuild = await import('esbuild');
  try {
    await esbuild.build({
      entryPoints: [entryFile],
      outfile: join(dir, 'plugin.js'),
      bundle: true,
      format: 'esm',
      platform: 'neutral',
      mainFields: ['module', 'main'],
      target: 'es2020',
      jsx: 'automatic',
      minify: true,
      logLevel: 'silent',
      define: { 'process.env.NODE_ENV': '"production"' },
      // React's legacy string renderer for browsers: no MessageChannel, streams or Node built-ins.
      alias: siteAliases({ 'react-dom/server': join(dirname(require.resolve('react-dom/package.json')), 'cjs', 'react-dom-server-legacy.browser.production.js') }),
      nodePaths: [nodeModulesDir()],
      absWorkingDir: scan.site,
    });
  } catch (e) {
    const first = (e as { errors?: { text: string; location?: { file: string; line: number } | null }[] }).errors?.[0];
    throw new BextError('BEXT_ERR_SSR_BUILD', `bundling ${scan.site} for a sandbox failed: ${first ? `${first.location?.file ?? ''}:${first.location?.line ?? ''} ${first.text}` : (e as Error).message}`, { cause: e });
  } finally {
    rmSync(entryFile, { force: true });
  }
  const manifest: Manifest = {
    name: opts.name,
    version: '1.0.0',
    description: `pages of ${scan.site}, rendered in a ${opts.sandbox ?? 'quickjs'} sandbox`,
    sandbox: opts.sandbox ?? 'quickjs',
    entry: 'plugin.js',
    hooks: { onRender: { priority: opts.priority ?? 80, match: { methods: ['GET', 'HEAD'] } } },
    needs: ['method', 'path', 'query', 'headers:accept-language'],
    limits: { timeoutMs: opts.timeoutMs ?? 1000, memoryMb: opts.memoryMb ?? 32, quarantineAfter: 5 },
    failMode: 'closed',
  };
  writeFileSync(join(dir, 'bext-plugin.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  return { dir, manifest, bytes: statSync(join(dir, 'plugin.js')).size };
}
