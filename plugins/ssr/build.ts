/**
 * `bext build`: turns a site folder (pages/, islands/, layouts) into one
 * CommonJS bundle per build that the render workers run. Builds are
 * versioned (`<outDir>/builds/<id>/`) so a hot swap never changes the file
 * a running generation of workers was started from; `<outDir>/manifest.json`
 * names the newest.
 */
import { existsSync, mkdirSync, promises as fsp, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, extname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash, randomBytes } from 'node:crypto';
import { BextError } from '../../plugin-api/index.js';
import type { BuildManifest, RouteEntry } from './protocol.js';

const require = createRequire(import.meta.url);
const here = dirname(fileURLToPath(import.meta.url));
const SOURCE_EXT = new Set(['.tsx', '.jsx', '.ts', '.js', '.mts', '.mjs']);
const SKIP_DIRS = new Set(['node_modules', '.bext', 'public', '.git']);
const KEEP_BUILDS = 3;
/** Files of this plugin that end up in every bundle. */
const RUNTIME_FILES = ['worker.ts', 'common.ts', 'runtime.ts', 'protocol.ts'];

/** Hash of the render runtime: a build made by another version of it is rebuilt at start. */
export function runtimeHash(): string {
  const h = createHash('sha256');
  for (const f of RUNTIME_FILES) h.update(readFileSync(join(here, f)));
  return h.digest('base64url').slice(0, 16);
}

/** What `buildSite` produced. */
export interface BuildResult {
  buildId: string;
  /** The folder holding `manifest.json` and `builds/`. */
  outDir: string;
  /** This build's folder. */
  dir: string;
  /** Absolute path of the worker bundle. */
  bundle: string;
  manifest: BuildManifest;
  /** Wall time of the build in ms. */
  ms: number;
  /** Bundle size in bytes. */
  bytes: number;
}

/** Default output folder for a site. */
export function defaultOutDir(siteDir: string): string {
  return join(resolve(siteDir), '.bext', 'ssr');
}

/** Whether a folder is an SSR site (has `pages/`). */
export function isSite(siteDir: string): boolean {
  try {
    return statSync(join(siteDir, 'pages')).isDirectory();
  } catch {
    return false;
  }
}

async function walk(dir: string, out: string[] = []): Promise<string[]> {
  let entries;
  try {
    entries = await fsp.readdir(dir, { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of entries) {
    if (e.name.startsWith('.')) continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      if (!SKIP_DIRS.has(e.name)) await walk(p, out);
    } else if (e.isFile()) out.push(p);
  }
  return out;
}

/** Newest modification time of the site's source files (ms), to tell whether a build is stale. */
export async function sourcesMtime(siteDir: string): Promise<number> {
  let max = 0;
  for (const f of await walk(resolve(siteDir))) {
    if (!SOURCE_EXT.has(extname(f)) && extname(f) !== '.json') continue;
    try {
      max = Math.max(max, statSync(f).mtimeMs);
    } catch {
      // Deleted while walking: it no longer counts.
    }
  }
  return max;
}

function isSource(f: string): boolean {
  const b = basename(f);
  return SOURCE_EXT.has(extname(f)) && !b.endsWith('.d.ts') && !/\.(test|spec)\.[^.]+$/.test(b) && !b.startsWith('_');
}

/** `blog/[slug]` → segments `['blog', ':slug']`; `docs/[...rest]` → `['docs', '*rest']`. */
export function routeOf(relNoExt: string): RouteEntry['segments'] {
  const parts = relNoExt.split('/').filter(Boolean);
  if (parts[parts.length - 1] === 'index') parts.pop();
  return parts.map((p, i) => {
    const catchAll = /^\[\.\.\.([A-Za-z_][A-Za-z0-9_]*)\]$/.exec(p);
    if (catchAll) {
      if (i !== parts.length - 1) throw new BextError('BEXT_ERR_SSR_BUILD', `pages/${relNoExt}: a catch-all segment [...${catchAll[1]}] must be the last one`);
      return `*${catchAll[1]}`;
    }
    const param = /^\[([A-Za-z_][A-Za-z0-9_]*)\]$/.exec(p);
    if (param) return `:${param[1]}`;
    if (p.includes('[') || p.includes(']')) throw new BextError('BEXT_ERR_SSR_BUILD', `pages/${relNoExt}: "${p}" is not a valid segment`, { hint: 'use [name] for a parameter or [...name] for a catch-all, as the whole segment' });
    return p;
  });
}

function patternOf(segments: string[]): string {
  return `/${segments.map((s) => (s.startsWith('*') ? '*' : s)).join('/')}`;
}

/** Static segments before parameters before catch-alls, segment by segment. */
export function compareRoutes(a: RouteEntry, b: RouteEntry): number {
  const rank = (s: string | undefined) => (s === undefined ? -1 : s.startsWith('*') ? 2 : s.startsWith(':') ? 1 : 0);
  for (let i = 0; i < Math.max(a.segments.length, b.segments.length); i++) {
    const d = rank(a.segments[i]) - rank(b.segments[i]);
    if (d !== 0) return d;
  }
  return a.segments.length - b.segments.length;
}

function aliasTarget(pkg: string): string {
  return dirname(require.resolve(`${pkg}/package.json`));
}

/** What a site folder holds: its routes (in match order), layouts, 404 page and islands. */
export interface SiteScan {
  site: string;
  pages: { file: string; entry: RouteEntry; layouts: string[] }[];
  notFound: { file: string; layouts: string[] } | null;
  islands: { name: string; file: string }[];
}

/** Reads a site's pages/ and islands/ folders; throws BEXT_ERR_SSR_BUILD on a conflict or a bad name. */
export async function scanSite(siteDir: string): Promise<SiteScan> {
  const site = resolve(siteDir);
  const pagesDir = join(site, 'pages');
  if (!isSite(site)) throw new BextError('BEXT_ERR_SSR_BUILD', `${site} has no pages/ folder`, { hint: 'put one page in pages/index.tsx' });
  const files = (await walk(pagesDir)).filter(isSource).sort();
  const layouts = new Map<string, string>();
  const pages: { file: string; entry: RouteEntry }[] = [];
  let notFound: string | null = null;
  const seen = new Map<string, string>();
  for (const f of files) {
    const rel = relative(pagesDir, f).split(sep).join('/');
    const noExt = rel.slice(0, -extname(rel).length);
    if (basename(noExt) === 'layout') {
      const d = dirname(rel);
      if (layouts.has(d)) throw new BextError('BEXT_ERR_SSR_BUILD', `pages/${rel} and ${relative(site, layouts.get(d)!)} are both layouts of the same folder`);
      layouts.set(d, f);
      continue;
    }
    if (noExt === '404') {
      notFound = f;
      continue;
    }
    const segments = routeOf(noExt);
    const shape = segments.map((x) => (x.startsWith(':') ? ':' : x.startsWith('*') ? '*' : x)).join('/');
    const prev = seen.get(shape);
    if (prev) throw new BextError('BEXT_ERR_SSR_BUILD', `pages/${rel} and ${prev} answer the same paths (${patternOf(segments)})`, { hint: 'remove or rename one of them' });
    seen.set(shape, `pages/${rel}`);
    pages.push({ file: f, entry: { pattern: patternOf(segments), file: `pages/${rel}`, segments } });
  }
  if (pages.length === 0) throw new BextError('BEXT_ERR_SSR_BUILD', `${pagesDir} holds no page`, { hint: 'add pages/index.tsx exporting a component as default' });
  pages.sort((a, b) => compareRoutes(a.entry, b.entry));
  const layoutsFor = (file: string): string[] => {
    const rel = relative(pagesDir, dirname(file)).split(sep).join('/');
    const chain = ['.'];
    if (rel && rel !== '.') {
      const parts = rel.split('/');
      for (let i = 1; i <= parts.length; i++) chain.push(parts.slice(0, i).join('/'));
    }
    return chain.map((d) => layouts.get(d)).filter((x): x is string => x !== undefined);
  };
  const islandsDir = join(site, 'islands');
  const islands = (await walk(islandsDir)).filter((f) => isSource(f) && dirname(f) === islandsDir).sort().map((file) => ({ name: basename(file, extname(file)), file }));
  for (const { name } of islands) {
    if (!/^[A-Za-z0-9][A-Za-z0-9_-]*$/.test(name)) throw new BextError('BEXT_ERR_SSR_BUILD', `islands/${name}: island names are letters, digits, - and _`);
  }
  return {
    site,
    pages: pages.map((p) => ({ ...p, layouts: layoutsFor(p.file) })),
    notFound: notFound ? { file: notFound, layouts: layoutsFor(notFound) } : null,
    islands,
  };
}

/** The generated entry module: imports every page, layout and island, and hands them to `start` from `runtime`. */
export function entrySource(scan: SiteScan, buildId: string, runtime: string, start: string, extra = ''): string {
  const imports: string[] = [`import { ${start} } from ${JSON.stringify(runtime)};`];
  const modVar = new Map<string, string>();
  const mod = (f: string) => {
    let v = modVar.get(f);
    if (!v) {
      v = `m${modVar.size}`;
      modVar.set(f, v);
      imports.push(`import * as ${v} from ${JSON.stringify(f)};`);
    }
    return v;
  };
  const routes = scan.pages.map((p) => `{ pattern: ${JSON.stringify(p.entry.pattern)}, page: ${mod(p.file)}, layouts: [${p.layouts.map(mod).join(', ')}] }`);
  const nf = scan.notFound ? `{ page: ${mod(scan.notFound.file)}, layouts: [${scan.notFound.layouts.map(mod).join(', ')}] }` : 'null';
  const islands = scan.islands.map((i) => `${JSON.stringify(i.name)}: ${mod(i.file)}`);
  return `${imports.join('\n')}
const site = { buildId: ${JSON.stringify(buildId)}, routes: [${routes.join(',\n  ')}], notFound: ${nf}, islands: { ${islands.join(', ')} } };
${extra}`;
}

/** Aliases every bundle of a site needs: one React, and `bext/ssr`. */
export function siteAliases(extra: Record<string, string> = {}): Record<string, string> {
  return { react: aliasTarget('react'), 'react-dom': aliasTarget('react-dom'), 'bext/ssr': join(here, 'runtime.ts'), ...extra };
}

export function nodeModulesDir(): string {
  return dirname(aliasTarget('react'));
}

/**
 * Builds a site: scans `pages/**` (routes, `layout.*` per folder, `404.*`)
 * and `islands/*`, generates the worker entry and bundles it with esbuild.
 *
 * @example
 * ```ts
 * const r = await buildSite('examples/site');
 * console.log(r.buildId, r.manifest.routes.map((x) => x.pattern));
 * ```
 */
export async function buildSite(siteDir: string, outDir?: string): Promise<BuildResult> {
  const t0 = performance.now();
  const site = resolve(siteDir);
  const out = resolve(outDir ?? defaultOutDir(site));
  const scan = await scanSite(site);
  // Read before bundling: a source saved during the build makes the build stale, not current.
  const mtime = await sourcesMtime(site);
  const buildId = `${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
  const dir = join(out, 'builds', buildId);
  mkdirSync(dir, { recursive: true });
  const entry = entrySource(scan, buildId, join(here, 'worker.ts'), 'startWorker', 'startWorker(site);\nexport default site;\n');
  const entryFile = join(dir, 'entry.tsx');
  writeFileSync(entryFile, entry);
  const bundle = join(dir, 'server.cjs');
  const esbuild = await import('esbuild');
  try {
    await esbuild.build({
      entryPoints: [entryFile],
      outfile: bundle,
      bundle: true,
      platform: 'node',
      format: 'cjs',
      target: 'node20',
      jsx: 'automatic',
      sourcemap: 'linked',
      minifySyntax: true,
      // Component names label the memo metrics and stack traces.
      keepNames: true,
      logLevel: 'silent',
      define: { 'process.env.NODE_ENV': '"production"' },
      // One React for pages, the runtime and the renderer, whatever the site has installed.
      alias: siteAliases(),
      nodePaths: [nodeModulesDir()],
      absWorkingDir: site,
    });
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    const errors = (e as { errors?: { text: string; location?: { file: string; line: number; column: number } | null }[] }).errors;
    const first = errors?.[0];
    const where = first?.location ? `${first.location.file}:${first.location.line}:${first.location.column}: ` : '';
    throw new BextError('BEXT_ERR_SSR_BUILD', `bundling ${site} failed: ${where}${first?.text ?? (e as Error).message}${errors && errors.length > 1 ? ` (and ${errors.length - 1} more)` : ''}`, { cause: e });
  }
  const manifest: BuildManifest = {
    buildId,
    builtAt: Date.now(),
    site,
    bundle: relative(out, bundle).split(sep).join('/'),
    routes: scan.pages.map((p) => p.entry),
    islands: scan.islands.map((i) => i.name),
    hasNotFound: scan.notFound !== null,
    sourcesMtime: mtime,
    runtime: runtimeHash(),
  };
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify(manifest, null, 2));
  // Replace the pointer atomically: a server reading it sees the old build or the new one.
  const tmp = join(out, `.manifest-${buildId}.json`);
  writeFileSync(tmp, JSON.stringify(manifest, null, 2));
  renameSync(tmp, join(out, 'manifest.json'));
  await pruneBuilds(out, buildId);
  return { buildId, outDir: out, dir, bundle, manifest, ms: performance.now() - t0, bytes: statSync(bundle).size };
}

/** Keeps the newest builds; older ones can no longer be swapped to. */
async function pruneBuilds(out: string, keep: string): Promise<void> {
  const root = join(out, 'builds');
  const names = (await fsp.readdir(root)).filter((n) => n !== keep);
  const dated = names.map((n) => ({ n, t: statSync(join(root, n)).mtimeMs })).sort((a, b) => b.t - a.t);
  for (const { n } of dated.slice(KEEP_BUILDS - 1)) rmSync(join(root, n), { recursive: true, force: true });
}

/** The newest build of an output folder, or null when there is none. */
export function readBuild(outDir: string): { manifest: BuildManifest; bundle: string } | null {
  const file = join(outDir, 'manifest.json');
  if (!existsSync(file)) return null;
  try {
    const manifest = JSON.parse(readFileSync(file, 'utf8')) as BuildManifest;
    const bundle = resolve(outDir, manifest.bundle);
    if (!existsSync(bundle)) return null;
    return { manifest, bundle };
  } catch {
    return null;
  }
}
