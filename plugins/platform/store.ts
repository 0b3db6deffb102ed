/**
 * The platform's files: site versions kept immutable under
 * `<dataDir>/<app>/versions/<id>/`, and the live state of every app
 * environment in `<dataDir>/state.json`.
 *
 * A version id is the first 12 hex chars of a sha256 over the sorted relative
 * paths and bytes of the site's source files, so the same content always
 * lands on the same version. A version is prepared in
 * `<dataDir>/<app>/tmp/<random>/` (same file system) and renamed into place
 * whole, so a half-written version is never visible.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, promises as fsp, type Dirent } from 'node:fs';
import { dirname, isAbsolute, join, posix } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import * as tar from 'tar';
import { BextError } from '../../plugin-api/index.js';

/** Folders never part of a site's source (not hashed, not copied, not packed). */
export const SKIP_DIRS = new Set(['node_modules', '.git', '.bext']);

/** What is recorded about a stored version (`<id>/.bext/version.json`). */
export interface VersionMeta {
  id: string;
  app: string;
  /** ISO time the version was stored. */
  createdAt: string;
  /** Bytes of the version's files, build output included. */
  size: number;
  /** Number of source files. */
  files: number;
  /** Where it came from: `upload` or `path:<folder>`. */
  source: string;
  /** Whether `bext build` ran for it (the site has pages/). */
  built: boolean;
}

/** One switch of an environment, newest last in `history`. */
export interface HistoryEntry {
  version: string;
  at: string;
  event: 'deployed' | 'promoted' | 'rolled-back';
}

/** The persisted state: per app, per environment, what is live and what was. */
export interface PlatformState {
  apps: Record<string, { environments: Record<string, { live: string | null; history: HistoryEntry[] }> }>;
}

/** How many history entries an environment keeps. */
const HISTORY = 50;

/** A regular file or symlink of a site tree, by path relative to its root (`/` separated). */
interface TreeEntry {
  rel: string;
  abs: string;
  kind: 'file' | 'link';
  size: number;
}

/** Every source file of a tree in sorted order, skipping node_modules, .git and .bext. */
export async function walkTree(root: string): Promise<TreeEntry[]> {
  const out: TreeEntry[] = [];
  const walk = async (dir: string, rel: string): Promise<void> => {
    let ents: Dirent[];
    try {
      ents = await fsp.readdir(dir, { withFileTypes: true });
    } catch (e) {
      throw new BextError('BEXT_ERR_DEPLOY_INVALID', `cannot read ${dir}: ${(e as Error).message}`);
    }
    for (const ent of ents) {
      const abs = join(dir, ent.name);
      const r = rel ? `${rel}/${ent.name}` : ent.name;
      if (ent.isDirectory()) {
        if (!SKIP_DIRS.has(ent.name)) await walk(abs, r);
      } else if (ent.isFile()) out.push({ rel: r, abs, kind: 'file', size: (await fsp.stat(abs)).size });
      else if (ent.isSymbolicLink()) out.push({ rel: r, abs, kind: 'link', size: 0 });
      else throw new BextError('BEXT_ERR_DEPLOY_UNSAFE_BUNDLE', `${r} is neither a file, a folder nor a symlink`, { hint: 'a site holds only files, folders and symlinks inside it' });
    }
  };
  await walk(root, '');
  out.sort((a, b) => (a.rel < b.rel ? -1 : a.rel > b.rel ? 1 : 0));
  return out;
}

/** Whether a symlink at `rel` (inside a tree) pointing at `target` stays inside the tree. */
export function linkStaysInside(rel: string, target: string): boolean {
  if (isAbsolute(target) || /^[a-zA-Z]:[\\/]/.test(target) || target.includes('\\')) return false;
  const joined = posix.normalize(posix.join(posix.dirname(rel), target));
  return joined !== '..' && !joined.startsWith('../') && !posix.isAbsolute(joined);
}

/**
 * The version id of a site tree: sha256 over each source file's relative
 * path, kind and bytes (a symlink's target), in sorted path order.
 */
export async function hashTree(root: string): Promise<{ id: string; files: number; bytes: number }> {
  const h = createHash('sha256');
  let bytes = 0;
  const entries = await walkTree(root);
  for (const e of entries) {
    if (e.kind === 'link') {
      const target = await fsp.readlink(e.abs);
      if (!linkStaysInside(e.rel, target)) throw new BextError('BEXT_ERR_DEPLOY_UNSAFE_BUNDLE', `symlink ${e.rel} points outside the site (${target})`, { hint: 'replace the link with the file it points at' });
      h.update(`L\0${e.rel}\0${target}\0`);
      continue;
    }
    h.update(`F\0${e.rel}\0${e.size}\0`);
    for await (const chunk of createReadStream(e.abs)) h.update(chunk as Buffer);
    bytes += e.size;
  }
  return { id: h.digest('hex').slice(0, 12), files: entries.length, bytes };
}

/** Bytes of every file under a folder (build output included). */
export async function treeSize(root: string): Promise<number> {
  let n = 0;
  const walk = async (dir: string): Promise<void> => {
    for (const ent of await fsp.readdir(dir, { withFileTypes: true })) {
      const p = join(dir, ent.name);
      if (ent.isDirectory()) await walk(p);
      else if (ent.isFile()) n += (await fsp.stat(p)).size;
    }
  };
  await walk(root);
  return n;
}

/** Copies a site folder's source files (no node_modules, .git, .bext) into `dest`. */
export async function copySite(from: string, dest: string): Promise<void> {
  for (const e of await walkTree(from)) {
    const to = join(dest, ...e.rel.split('/'));
    await fsp.mkdir(dirname(to), { recursive: true });
    if (e.kind === 'file') await fsp.copyFile(e.abs, to);
    else {
      const target = await fsp.readlink(e.abs);
      if (!linkStaysInside(e.rel, target)) throw new BextError('BEXT_ERR_DEPLOY_UNSAFE_BUNDLE', `symlink ${e.rel} in ${from} points outside the site (${target})`, { hint: 'replace the link with the file it points at' });
      await fsp.symlink(target, to);
    }
  }
}

/** Counts bytes going through and fails past a limit. */
export function byteCounter(limit: number, onBytes: (n: number) => void): Transform {
  let n = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      n += chunk.length;
      if (n > limit) return cb(new BextError('BEXT_ERR_BODY_TOO_LARGE', `the bundle is larger than maxBundleBytes (${limit} bytes)`, { hint: 'raise plugins.platform.maxBundleBytes, or leave build output and dependencies out of the bundle' }));
      onBytes(n);
      cb(null, chunk);
    },
  });
}

const ENTRY_TYPES = new Set(['File', 'OldFile', 'ContiguousFile', 'Directory', 'SymbolicLink', 'Link']);

/**
 * Extracts a tar or tar.gz stream into `dest`, refusing (not skipping) any
 * entry that would land outside it: absolute paths, `..` segments, links
 * that point outside, devices and FIFOs. `maxBytes` bounds the unpacked size
 * (a small gzip can hold a huge tree).
 */
export async function extractBundle(source: Readable, dest: string, maxBytes: number, through: Transform[] = []): Promise<void> {
  let unsafe: BextError | null = null;
  let total = 0;
  const refuse = (msg: string) => {
    unsafe ??= new BextError('BEXT_ERR_DEPLOY_UNSAFE_BUNDLE', msg, { hint: 'pack the site with paths relative to its folder (`bext deploy <folder>` does), without links that leave it' });
    return false;
  };
  const unpack = tar.x({
    cwd: dest,
    strict: true,
    noMtime: true,
    preserveOwner: false,
    filter: (path: string, entry: tar.ReadEntry | import('node:fs').Stats) => {
      if (unsafe) return false;
      const e = entry as tar.ReadEntry;
      const p = path.replace(/\\/g, '/');
      if (p.startsWith('/') || /^[a-zA-Z]:/.test(p)) return refuse(`bundle entry ${JSON.stringify(path)} has an absolute path`);
      if (p.split('/').includes('..')) return refuse(`bundle entry ${JSON.stringify(path)} climbs out of the site with ".."`);
      // Dependencies, VCS data and build output are not part of a version
      // (nor of its hash): a stale .bext/ssr must not ride along.
      if (p.split('/').some((seg) => SKIP_DIRS.has(seg))) return false;
      if (!ENTRY_TYPES.has(e.type)) return refuse(`bundle entry ${JSON.stringify(path)} is a ${e.type}; only files, folders and links are allowed`);
      if (e.type === 'SymbolicLink' && !linkStaysInside(p.replace(/^\.\//, ''), String(e.linkpath ?? ''))) return refuse(`bundle symlink ${JSON.stringify(path)} points outside the site (${e.linkpath})`);
      if (e.type === 'Link') {
        const target = String(e.linkpath ?? '').replace(/\\/g, '/');
        if (target.startsWith('/') || target.split('/').includes('..')) return refuse(`bundle hard link ${JSON.stringify(path)} points outside the site (${target})`);
      }
      total += e.size ?? 0;
      if (total > maxBytes) {
        unsafe ??= new BextError('BEXT_ERR_BODY_TOO_LARGE', `the unpacked bundle is larger than maxSiteBytes (${maxBytes} bytes)`, { hint: 'raise plugins.platform.maxSiteBytes, or deploy a smaller site' });
        return false;
      }
      return true;
    },
  }) as unknown as NodeJS.ReadWriteStream;
  // Piped by hand rather than with pipeline(): a failure must not destroy
  // the request (and with it the socket the error is reported on); the
  // rest of the upload is read and dropped instead.
  await new Promise<void>((res, rej) => {
    let settled = false;
    const fail = (e: unknown) => {
      if (settled) return;
      settled = true;
      source.unpipe();
      source.resume();
      if (unsafe) return rej(unsafe);
      if (e instanceof BextError) return rej(e);
      rej(new BextError('BEXT_ERR_DEPLOY_INVALID', `the bundle is not a readable tar or tar.gz: ${(e as Error)?.message ?? String(e)}`, { hint: 'send a .tar.gz of the site folder with content-type application/gzip' }));
    };
    source.once('error', fail);
    source.once('aborted', () => fail(new BextError('BEXT_ERR_DEPLOY_INVALID', 'the upload was cut off before the end of the bundle')));
    for (const t of through) t.once('error', fail);
    unpack.once('error', fail);
    unpack.once('finish', () => {
      if (settled) return;
      settled = true;
      if (unsafe) rej(unsafe);
      else res();
    });
    let s: NodeJS.ReadableStream = source;
    for (const t of through) s = s.pipe(t);
    s.pipe(unpack);
  });
}

/**
 * When a bundle holds a single folder (a tarball made from outside the
 * site), that folder is the site.
 */
export async function siteRoot(dir: string): Promise<string> {
  const ents = (await fsp.readdir(dir, { withFileTypes: true })).filter((e) => !SKIP_DIRS.has(e.name));
  if (ents.length === 1 && ents[0]!.isDirectory() && !['public', 'pages', 'islands'].includes(ents[0]!.name)) return join(dir, ents[0]!.name);
  return dir;
}

/** Writes a file atomically: a temp file beside it, then rename. */
export async function writeAtomic(file: string, text: string): Promise<void> {
  await fsp.mkdir(dirname(file), { recursive: true });
  const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
  await fsp.writeFile(tmp, text);
  await fsp.rename(tmp, file);
}

/** The platform's folder layout and persisted state. */
export class Store {
  constructor(readonly dataDir: string) {}

  appDir(app: string): string {
    return join(this.dataDir, app);
  }

  versionDir(app: string, id: string): string {
    return join(this.dataDir, app, 'versions', id);
  }

  /** A fresh working folder on the same file system as the versions. */
  async tempDir(app: string): Promise<string> {
    const d = join(this.dataDir, app, 'tmp', `${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`);
    await fsp.mkdir(d, { recursive: true });
    return d;
  }

  /**
   * Removes working folders older than an hour: what a process that stopped
   * mid-deploy left (a running deploy's folder is younger).
   */
  async cleanOldTemp(): Promise<void> {
    let apps: string[];
    try {
      apps = await fsp.readdir(this.dataDir);
    } catch {
      return; // nothing deployed yet
    }
    const cutoff = Date.now() - 3_600_000;
    for (const a of apps) {
      const tmp = join(this.dataDir, a, 'tmp');
      let ents: string[];
      try {
        ents = await fsp.readdir(tmp);
      } catch {
        continue; // not an app folder, or no deploy yet
      }
      for (const e of ents) {
        const p = join(tmp, e);
        const st = await fsp.stat(p).catch(() => null);
        if (st && st.mtimeMs < cutoff) await fsp.rm(p, { recursive: true, force: true });
      }
    }
  }

  async readMeta(app: string, id: string): Promise<VersionMeta | null> {
    try {
      return JSON.parse(await fsp.readFile(join(this.versionDir(app, id), '.bext', 'version.json'), 'utf8')) as VersionMeta;
    } catch {
      return null;
    }
  }

  /** Every stored version of an app, newest first. */
  async versions(app: string): Promise<VersionMeta[]> {
    let ids: string[] = [];
    try {
      ids = await fsp.readdir(join(this.dataDir, app, 'versions'));
    } catch {
      return [];
    }
    const metas = (await Promise.all(ids.filter((i) => /^[0-9a-f]{12}$/.test(i)).map((i) => this.readMeta(app, i)))).filter((m): m is VersionMeta => m !== null);
    return metas.sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : a.id < b.id ? 1 : -1));
  }

  /**
   * Moves a prepared folder into place as version `meta.id`. Resolves false
   * when that version already exists (the same content was stored meanwhile).
   */
  async commit(prepared: string, meta: VersionMeta): Promise<boolean> {
    await writeAtomic(join(prepared, '.bext', 'version.json'), `${JSON.stringify(meta, null, 2)}\n`);
    const dest = this.versionDir(meta.app, meta.id);
    await fsp.mkdir(dirname(dest), { recursive: true });
    try {
      await fsp.rename(prepared, dest);
      return true;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOTEMPTY' || code === 'EEXIST') return false;
      throw e;
    }
  }

  async remove(app: string, id: string): Promise<void> {
    await fsp.rm(this.versionDir(app, id), { recursive: true, force: true });
  }

  stateFile(): string {
    return join(this.dataDir, 'state.json');
  }

  async readState(): Promise<PlatformState> {
    let text: string;
    try {
      text = await fsp.readFile(this.stateFile(), 'utf8');
    } catch {
      return { apps: {} };
    }
    try {
      const s = JSON.parse(text) as PlatformState;
      return s && typeof s === 'object' && s.apps && typeof s.apps === 'object' ? s : { apps: {} };
    } catch (e) {
      throw new BextError('BEXT_ERR_CONFIG_PARSE', `${this.stateFile()}: not valid JSON: ${(e as Error).message}`, { hint: 'restore it from a backup, or delete it to start with no live versions' });
    }
  }

  async writeState(s: PlatformState): Promise<void> {
    await writeAtomic(this.stateFile(), `${JSON.stringify(s, null, 2)}\n`);
  }
}

/** The state of one environment, created on first use. */
export function envState(s: PlatformState, app: string, env: string): { live: string | null; history: HistoryEntry[] } {
  const a = (s.apps[app] ??= { environments: {} });
  return (a.environments[env] ??= { live: null, history: [] });
}

/** Records a switch in a copy of the state. */
export function withSwitch(s: PlatformState, app: string, env: string, version: string, event: HistoryEntry['event']): PlatformState {
  const next = structuredClone(s);
  const e = envState(next, app, env);
  e.live = version;
  e.history.push({ version, at: new Date().toISOString(), event });
  if (e.history.length > HISTORY) e.history.splice(0, e.history.length - HISTORY);
  return next;
}

/** The version live before the current one in an environment, or null. */
export function previousVersion(s: PlatformState, app: string, env: string): string | null {
  const e = s.apps[app]?.environments[env];
  if (!e?.live) return null;
  for (let i = e.history.length - 1; i >= 0; i--) if (e.history[i]!.version !== e.live) return e.history[i]!.version;
  return null;
}

/*
 * Coordination between instances of the plugin in one process. The kernel
 * imports a trusted plugin's entry afresh at each load, but not the modules
 * it imports, so these live here: a reload that re-creates the plugin (its
 * config changed, say) runs while the old instance's switch is in flight.
 */
const coordination = new Map<string, { queue: Promise<unknown>; switching: number }>();

function slot(dataDir: string): { queue: Promise<unknown>; switching: number } {
  let s = coordination.get(dataDir);
  if (!s) coordination.set(dataDir, (s = { queue: Promise.resolve(), switching: 0 }));
  return s;
}

/** Runs `fn` after every earlier call for the same data folder settled. */
export function serialFor<T>(dataDir: string, fn: () => Promise<T>): Promise<T> {
  const s = slot(dataDir);
  const run = s.queue.then(fn, fn);
  s.queue = run.then(() => undefined, () => undefined);
  return run;
}

/** Marks a switch's reload as running, so a plugin instance it creates leaves the app sources alone. */
export async function whileSwitching<T>(dataDir: string, fn: () => Promise<T>): Promise<T> {
  const s = slot(dataDir);
  s.switching++;
  try {
    return await fn();
  } finally {
    s.switching--;
  }
}

/** Whether a switch's reload is running for this data folder. */
export function switching(dataDir: string): boolean {
  return (coordination.get(dataDir)?.switching ?? 0) > 0;
}
