/**
 * `bext build [dir] [--out DIR]`: bundles a site's pages/ for the render
 * workers (contributed to the CLI through the manifest's `commands`).
 */
import { relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { buildSite } from './build.js';

export async function build(argv: string[], out: (line: string) => void): Promise<void> {
  const { values, positionals } = parseArgs({ args: argv, options: { out: { type: 'string' }, help: { type: 'boolean', short: 'h' } }, allowPositionals: true });
  if (values.help) {
    out('Usage: bext build [dir] [--out DIR]\n\nBundles dir/pages (React) with esbuild for the SSR render workers; the build lands in dir/.bext/ssr unless --out says otherwise.');
    return;
  }
  const dir = resolve(positionals[0] ?? '.');
  out(`building ${relative(process.cwd(), dir) || '.'}…`);
  const r = await buildSite(dir, values.out);
  const routes = Object.keys((r.manifest as unknown as { routes?: Record<string, unknown> }).routes ?? {}).length;
  out(`built ${r.buildId} in ${Math.round(r.ms)} ms${routes ? `, ${routes} routes` : ''}: ${relative(process.cwd(), r.dir)}`);
}
