/**
 * The platform plugin: deploys of hosted apps (`apps` in bext.config.json).
 *
 * A deploy turns a site (an uploaded tar.gz or a folder on the server) into
 * an immutable version named by its content hash, built with `bext build`
 * when it has pages/. Promote and rollback choose which version an app
 * environment serves: `setAppSource` + the kernel's hot reload, which loads
 * the new per-app plugin instances beside the old ones and swaps them
 * atomically, so no request is lost and each is answered wholly by one
 * version. The live state is persisted only after the kernel accepted the
 * switch, and restored at start before the per-app instances load.
 */
import { spawn } from 'node:child_process';
import { promises as fsp, statSync } from 'node:fs';
import { pollFile } from '../../plugin-api/file-watch.js';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { PassThrough, Readable } from 'node:stream';
import {
  BextError, definePlugin,
  type AppInfo, type HostApi, type ResponseData, type TrustedRequest,
} from '../../plugin-api/index.js';
import {
  byteCounter, copySite, extractBundle, hashTree, previousVersion, serialFor, siteRoot, Store, switching, treeSize, whileSwitching, withSwitch,
  type HistoryEntry, type PlatformState, type VersionMeta,
} from './store.js';

/** The platform's section of bext.config.json (after defaults). */
export interface PlatformConfig {
  dataDir: string;
  keepVersions: number;
  pruneGraceMs: number;
  maxBundleBytes: number;
  maxSiteBytes: number;
  build: { mode: 'auto' | 'never'; timeoutMs: number };
  syncIntervalMs: number;
}

/** What `system/deploy` subscribers receive. */
export interface DeployEvent {
  event: 'deployed' | 'promoted' | 'rolled-back' | 'failed';
  app: string;
  env?: string;
  version?: string;
  previous?: string | null;
  reused?: boolean;
  /** For `failed`: what failed (deploy, promote, rollback) and its error. */
  action?: string;
  code?: string;
  message?: string;
  at: string;
}

const TAR_TYPES = new Set(['application/gzip', 'application/x-gzip', 'application/x-tar', 'application/x-gtar', 'application/octet-stream']);
const JSON_HEADERS = { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' };
const BUILD_TAIL = 40;

function json(status: number, body: unknown): ResponseData {
  return { status, headers: JSON_HEADERS, body: JSON.stringify(body) };
}

function errorJson(e: unknown, status?: number): ResponseData {
  const err = e instanceof BextError ? e : new BextError('BEXT_ERR_PLUGIN_FAILED', String((e as Error)?.message ?? e));
  return json(status ?? (err.status || 500), err.toJSON());
}

/** The kernel refused a switch: its error goes back to the caller as it is. */
class SwitchRefused extends Error {
  constructor(readonly error: BextError) {
    super(error.message);
  }
}

async function readJson(req: TrustedRequest): Promise<Record<string, unknown>> {
  const buf = await req.readBody();
  let v: unknown;
  try {
    v = JSON.parse(buf.toString('utf8') || '{}');
  } catch (e) {
    throw new BextError('BEXT_ERR_DEPLOY_INVALID', `the request body is not valid JSON: ${(e as Error).message}`, { hint: 'send a JSON object, e.g. {"app":"blog","to":"production","from":"staging"}' });
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new BextError('BEXT_ERR_DEPLOY_INVALID', 'the request body must be a JSON object');
  return v as Record<string, unknown>;
}

function str(v: unknown, field: string, required: boolean): string | undefined {
  if (v === undefined || v === null || v === '') {
    if (required) throw new BextError('BEXT_ERR_DEPLOY_INVALID', `"${field}" is required`);
    return undefined;
  }
  if (typeof v !== 'string') throw new BextError('BEXT_ERR_DEPLOY_INVALID', `"${field}" must be a string, found ${JSON.stringify(v)}`);
  return v;
}

/** Runs `node <bin> build <dir>`, handing each output line to `onLine`. */
function runBuild(bin: string, dir: string, cwd: string, timeoutMs: number, onLine: (line: string) => void): Promise<void> {
  return new Promise((res, rej) => {
    const tail: string[] = [];
    const child = spawn(process.execPath, [bin, 'build', dir], { cwd, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FORCE_COLOR: '0' } });
    const line = (l: string) => {
      tail.push(l);
      if (tail.length > BUILD_TAIL) tail.shift();
      onLine(l);
    };
    createInterface({ input: child.stdout! }).on('line', line);
    createInterface({ input: child.stderr! }).on('line', line);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      rej(new BextError('BEXT_ERR_DEPLOY_BUILD', `could not start the build: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) return res();
      const why = timedOut ? `did not finish within build.timeoutMs (${timeoutMs} ms)` : `failed (${signal ? `signal ${signal}` : `exit code ${code}`})`;
      rej(new BextError('BEXT_ERR_DEPLOY_BUILD', `bext build ${why}${tail.length ? `: ${tail[tail.length - 1]}` : ''}`, {
        hint: timedOut ? 'raise plugins.platform.build.timeoutMs, or make the build faster' : 'fix the site (run `bext build <folder>` locally to see the same output) and deploy again',
        details: { output: tail },
      }));
    });
  });
}

export default definePlugin(async (host: HostApi) => {
  const cfg = host.config<PlatformConfig>();
  const ks = host.kernel;
  if (!ks) throw new BextError('BEXT_ERR_PLUGIN_LOAD', 'the platform plugin needs the kernel services of a trusted plugin', { hint: 'load it with "sandbox": "trusted"' });
  const kernel = ks;
  const store = new Store(resolve(kernel.siteDir, cfg.dataDir));
  const state: PlatformState = await store.readState();

  // Working folders of deploys a stopped process left behind (a live
  // reload's deploys are younger than an hour and left alone).
  await store.cleanOldTemp();

  // Persisted live versions take effect now: the kernel loads the per-app
  // instances after every global plugin's factory has run. Not while a
  // switch is running: that switch's reload is what re-creates this
  // instance, and the kernel already holds the sources it chose.
  for (const [app, a] of switching(store.dataDir) ? [] : Object.entries(state.apps)) {
    for (const [env, e] of Object.entries(a.environments)) {
      if (!e.live) continue;
      const dir = store.versionDir(app, e.live);
      if (!isDir(dir)) {
        host.log('error', 'platform: a live version is missing on disk; the environment serves its configured site', { app, env, version: e.live, dir });
        continue;
      }
      try {
        kernel.setAppSource(app, env, { dir, version: e.live });
      } catch (err) {
        host.log('warn', 'platform: a persisted live version is for an app or environment no longer configured; ignored', { app, env, version: e.live, error: (err as Error).message });
      }
    }
  }

  const serial = <T>(fn: () => Promise<T>): Promise<T> => serialFor(store.dataDir, fn);

  /**
   * Other processes sharing the data folder (cluster workers, instances on a
   * shared volume) switch versions by writing the state file: when it
   * changes, every environment whose live version differs from what this
   * process serves is switched here too, with one reload.
   */
  const follow = () =>
    serial(async () => {
      if (switching(store.dataDir)) return;
      let st: PlatformState;
      try {
        st = await store.readState();
      } catch (e) {
        return void host.log('warn', 'platform: the state file changed but cannot be read; keeping what is live', { error: (e as Error).message });
      }
      const serving = new Map<string, string | null>(kernel.apps().flatMap((a) => Object.entries(a.environments).map(([env, e]) => [`${a.name}/${env}`, e.version] as const)));
      const changed: string[] = [];
      for (const [app, a] of Object.entries(st.apps)) {
        for (const [env, e] of Object.entries(a.environments)) {
          const key = `${app}/${env}`;
          if (!e.live || !serving.has(key) || serving.get(key) === e.live || !isDir(store.versionDir(app, e.live as string))) continue;
          kernel.setAppSource(app, env, { dir: store.versionDir(app, e.live as string), version: e.live as string });
          changed.push(`${key}@${e.live}`);
        }
      }
      if (!changed.length) return;
      const r = await whileSwitching(store.dataDir, () => kernel.reload());
      if (r.ok) host.log('info', 'platform: followed a switch made by another process', { switched: changed });
      else host.log('error', 'platform: a switch made by another process was refused here', { switched: changed, code: r.error.code, error: r.error.message });
    }).catch((e: unknown) => host.log('error', 'platform: following the state file failed', { error: String((e as Error)?.message ?? e) }));
  const stopFollowing = cfg.syncIntervalMs > 0 ? pollFile(store.stateFile(), { intervalMs: cfg.syncIntervalMs }, () => follow()) : undefined;

  const publish = (ev: Omit<DeployEvent, 'at'>) => {
    host.publish('system/deploy', { ...ev, at: new Date().toISOString() }).catch((e: unknown) => host.log('warn', 'platform: publishing to system/deploy failed', { error: (e as Error)?.message }));
  };

  const appsNow = (): AppInfo[] => kernel.apps();

  /** The app (and environment) by name, or BEXT_ERR_DEPLOY_UNKNOWN_APP. */
  function findApp(name: string, env?: string): AppInfo {
    const all = appsNow();
    const a = all.find((x) => x.name === name);
    if (!a) throw new BextError('BEXT_ERR_DEPLOY_UNKNOWN_APP', `no app named "${name}" is configured`, { hint: all.length ? `use one of: ${all.map((x) => x.name).join(', ')}` : 'add it under "apps" in bext.config.json and reload' });
    if (env !== undefined && !a.environments[env]) {
      throw new BextError('BEXT_ERR_DEPLOY_UNKNOWN_APP', `app "${name}" has no environment "${env}"`, { hint: `use one of: ${Object.keys(a.environments).join(', ')}, or add it under the app's "environments"` });
    }
    return a;
  }

  async function needVersion(app: string, id: string): Promise<VersionMeta> {
    const meta = /^[0-9a-f]{12}$/.test(id) ? await store.readMeta(app, id) : null;
    if (!meta) throw new BextError('BEXT_ERR_DEPLOY_UNKNOWN_VERSION', `app "${app}" has no version "${id}"`, { hint: `\`bext versions --app ${app}\` lists the stored versions` });
    return meta;
  }

  /**
   * Makes `version` live in `app/env`: point the environment at the version,
   * reload, and persist only once the kernel took it. A refused reload puts
   * the old source back (the old plugin set never stopped serving).
   */
  function switchTo(app: string, env: string, version: string, event: HistoryEntry['event']): Promise<{ previous: string | null; unchanged: boolean }> {
    return serial(async () => {
      await needVersion(app, version);
      const state = await store.readState();
      const previous = state.apps[app]?.environments[env]?.live ?? null;
      if (previous === version) return { previous, unchanged: true };
      const setSource = kernel.setAppSource.bind(kernel);
      const back = previous && isDir(store.versionDir(app, previous)) ? { dir: store.versionDir(app, previous), version: previous } : null;
      setSource(app, env, { dir: store.versionDir(app, version), version });
      const r = await whileSwitching(store.dataDir, () => kernel.reload());
      if (!r.ok) {
        setSource(app, env, back);
        throw new SwitchRefused(r.error);
      }
      const next = withSwitch(state, app, env, version, event);
      try {
        await store.writeState(next);
      } catch (e) {
        // Live and persisted must agree: undo the switch.
        setSource(app, env, back);
        await whileSwitching(store.dataDir, () => kernel.reload());
        throw new BextError('BEXT_ERR_PLUGIN_FAILED', `could not persist the switch to ${version}, so it was undone: ${(e as Error).message}`, { hint: `check that ${store.dataDir} is writable` });
      }
      host.log('info', 'platform: switched', { app, env, version, previous, event });
      return { previous, unchanged: false };
    });
  }

  /**
   * Deletes the oldest versions past keepVersions, never one that is live,
   * the previous live of an environment (the rollback target), or one that
   * stopped being live less than pruneGraceMs ago (requests may still read it).
   */
  function prune(app: string, keep: string): Promise<string[]> {
    return serial(async () => {
      const state = await store.readState();
      const protect = new Set<string>([keep]);
      const now = Date.now();
      for (const [env, e] of Object.entries(state.apps[app]?.environments ?? {})) {
        if (e.live) protect.add(e.live);
        const prev = previousVersion(state, app, env);
        if (prev) protect.add(prev);
        // history[i] was live until history[i + 1] replaced it.
        const h = e.history;
        for (let i = 0; i + 1 < h.length; i++) if (now - Date.parse(h[i + 1]!.at) < cfg.pruneGraceMs) protect.add(h[i]!.version);
      }
      const all = await store.versions(app);
      const removed: string[] = [];
      let kept = 0;
      for (const v of all) {
        if (protect.has(v.id) || kept < cfg.keepVersions) {
          kept++;
          continue;
        }
        await store.remove(app, v.id);
        removed.push(v.id);
      }
      if (removed.length) host.log('info', 'platform: pruned versions', { app, removed });
      return removed;
    });
  }

  /** Publishes a `failed` event for a promote or rollback that did not happen, and rethrows. */
  function failed(action: string, app: string, env: string, version: string | undefined, e: unknown): never {
    const err = e instanceof SwitchRefused ? e.error : e instanceof BextError ? e : null;
    publish({ event: 'failed', action, app, env, ...(version ? { version } : {}), code: err?.code ?? 'BEXT_ERR_PLUGIN_FAILED', message: err?.message ?? String((e as Error)?.message ?? e) });
    throw e;
  }

  type Emit = (line: Record<string, unknown>) => void;

  /** Receive → extract/copy → hash → build → store (→ live). */
  async function runDeploy(app: string, env: string | undefined, input: { kind: 'upload'; req: TrustedRequest } | { kind: 'path'; dir: string }, emit: Emit): Promise<Record<string, unknown>> {
    const work = await store.tempDir(app);
    try {
      const src = join(work, 'site');
      await fsp.mkdir(src);
      let root = src;
      if (input.kind === 'upload') {
        let last = 0;
        let lastAt = 0;
        let total = 0;
        const counter = byteCounter(cfg.maxBundleBytes, (n) => {
          total = n;
          const now = Date.now();
          if (n - last >= 1 << 20 || now - lastAt >= 250) {
            last = n;
            lastAt = now;
            emit({ stage: 'receive', bytes: n });
          }
        });
        // A plugin earlier in the chain (a WAF inspecting bodies) may have
        // read the body already: then it is the buffered copy or nothing.
        const raw = input.req.raw;
        const consumed = input.req.body !== undefined || raw.readableDidRead || raw.readableEnded;
        await extractBundle(consumed ? Readable.from([await input.req.readBody()]) : raw, src, cfg.maxSiteBytes, [counter]);
        emit({ stage: 'receive', bytes: total, done: true });
        root = await siteRoot(src);
      } else {
        emit({ stage: 'receive', path: input.dir });
        await copySite(input.dir, src);
      }
      emit({ stage: 'extract', done: true });
      const h = await hashTree(root);
      if (h.files === 0) throw new BextError('BEXT_ERR_DEPLOY_INVALID', 'the site is empty', { hint: 'deploy a folder with public/ (static files) or pages/ (server-rendered pages)' });
      emit({ stage: 'hash', version: h.id, files: h.files, bytes: h.bytes });
      let meta = await store.readMeta(app, h.id);
      let reused = meta !== null;
      if (!meta) {
        let built = false;
        if (cfg.build.mode === 'auto' && isDir(join(root, 'pages'))) {
          emit({ stage: 'build', status: 'start' });
          await runBuild(kernel.bin, root, store.dataDir, cfg.build.timeoutMs, (line) => emit({ stage: 'build', line }));
          built = true;
          emit({ stage: 'build', status: 'done' });
        }
        const m: VersionMeta = {
          id: h.id, app, createdAt: new Date().toISOString(), size: await treeSize(root), files: h.files,
          source: input.kind === 'upload' ? 'upload' : `path:${input.dir}`, built,
        };
        reused = !(await store.commit(root, m));
        meta = reused ? await needVersion(app, h.id) : m;
      }
      emit({ stage: 'store', version: meta.id, reused, size: meta.size });
      if (!reused) await prune(app, meta.id);
      let previous: string | null | undefined;
      if (env) {
        const r = await switchTo(app, env, meta.id, 'deployed');
        previous = r.previous;
        emit({ stage: 'live', env, version: meta.id, previous, unchanged: r.unchanged });
      }
      publish({ event: 'deployed', app, version: meta.id, reused, ...(env ? { env, previous } : {}) });
      return { stage: 'done', app, version: meta.id, reused, files: meta.files, size: meta.size, built: meta.built, ...(env ? { env, previous } : {}) };
    } finally {
      await fsp.rm(work, { recursive: true, force: true }).catch(() => undefined);
    }
  }

  async function deployRoute(req: TrustedRequest): Promise<ResponseData> {
    const q = new URLSearchParams(req.query);
    const app = str(q.get('app'), 'app', true)!;
    const env = str(q.get('env'), 'env', false);
    findApp(app, env);
    const type = String(req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    let input: { kind: 'upload'; req: TrustedRequest } | { kind: 'path'; dir: string };
    if (type === 'application/json') {
      const body = await readJson(req);
      const p = str(body.path, 'path', true)!;
      const dir = resolve(kernel.siteDir, p);
      if (!isDir(dir)) throw new BextError('BEXT_ERR_DEPLOY_INVALID', `"path" ${dir} is not a folder on the server`, { hint: 'give an absolute path (or one relative to the served site) of a site folder' });
      input = { kind: 'path', dir };
    } else if (TAR_TYPES.has(type)) {
      const len = Number(req.headers['content-length']);
      if (Number.isFinite(len) && len > cfg.maxBundleBytes) {
        throw new BextError('BEXT_ERR_BODY_TOO_LARGE', `the bundle is ${len} bytes, more than maxBundleBytes (${cfg.maxBundleBytes})`, { hint: 'raise plugins.platform.maxBundleBytes, or leave build output and dependencies out of the bundle' });
      }
      input = { kind: 'upload', req };
    } else {
      throw new BextError('BEXT_ERR_DEPLOY_INVALID', `a deploy body must be a tar.gz (content-type application/gzip) or JSON {"path": "..."}, found content-type ${JSON.stringify(type || '(none)')}`, { hint: '`bext deploy <folder> --app <name>` packs and sends a folder' });
    }
    const out = new PassThrough();
    const emit: Emit = (line) => {
      if (!out.writableEnded) out.write(`${JSON.stringify(line)}\n`);
    };
    runDeploy(app, env, input, emit).then(
      (done) => {
        emit(done);
        out.end();
      },
      (e: unknown) => {
        const err = e instanceof SwitchRefused ? e.error : e instanceof BextError ? e : new BextError('BEXT_ERR_PLUGIN_FAILED', String((e as Error)?.message ?? e));
        host.log('warn', 'platform: deploy failed', { app, env, code: err.code, error: err.message });
        publish({ event: 'failed', action: 'deploy', app, ...(env ? { env } : {}), code: err.code, message: err.message });
        emit({ stage: 'error', code: err.code, message: err.message, ...(err.hint ? { hint: err.hint } : {}), ...(err.details ?? {}) });
        out.end();
        // An upload cut short is not read further: the connection closes after the answer.
        if (input.kind === 'upload' && !req.raw.readableEnded) req.raw.resume();
      },
    );
    return { status: 200, headers: { 'content-type': 'application/x-ndjson; charset=utf-8', 'cache-control': 'no-store, no-transform', 'x-accel-buffering': 'no' }, body: out };
  }

  async function promoteRoute(req: TrustedRequest): Promise<ResponseData> {
    const b = await readJson(req);
    const app = str(b.app, 'app', true)!;
    const to = str(b.to, 'to', true)!;
    const version = str(b.version, 'version', false);
    const from = str(b.from, 'from', false);
    if ((version === undefined) === (from === undefined)) throw new BextError('BEXT_ERR_DEPLOY_INVALID', 'promote needs exactly one of "version" (an id) or "from" (an environment whose live version to promote)');
    let id = version;
    try {
      findApp(app, to);
      if (from !== undefined) {
        findApp(app, from);
        id = (await store.readState()).apps[app]?.environments[from]?.live ?? undefined;
        if (!id) throw new BextError('BEXT_ERR_DEPLOY_UNKNOWN_VERSION', `environment "${from}" of app "${app}" has no deployed version live`, { hint: `deploy to it first (\`bext deploy <folder> --app ${app} --env ${from}\`), or promote a version by id` });
      }
      const r = await switchTo(app, to, id!, 'promoted');
      publish({ event: 'promoted', app, env: to, version: id, previous: r.previous });
      return json(200, { app, env: to, version: id, previous: r.previous, unchanged: r.unchanged, ...(from ? { from } : {}) });
    } catch (e) {
      failed('promote', app, to, id, e);
    }
  }

  async function rollbackRoute(req: TrustedRequest): Promise<ResponseData> {
    const b = await readJson(req);
    const app = str(b.app, 'app', true)!;
    const env = str(b.env, 'env', false) ?? 'production';
    let to = str(b.to, 'to', false);
    try {
      findApp(app, env);
      if (to === undefined) {
        to = previousVersion(await store.readState(), app, env) ?? undefined;
        if (!to) throw new BextError('BEXT_ERR_DEPLOY_NO_PREVIOUS', `environment "${env}" of app "${app}" has no earlier version in its history`, { hint: `name one with --to <id> (\`bext versions --app ${app}\` lists them)` });
      }
      const r = await switchTo(app, env, to, 'rolled-back');
      publish({ event: 'rolled-back', app, env, version: to, previous: r.previous });
      return json(200, { app, env, version: to, previous: r.previous, unchanged: r.unchanged });
    } catch (e) {
      failed('rollback', app, env, to, e);
    }
  }

  async function listing(view: AppInfo): Promise<Record<string, unknown>> {
    const versions = await store.versions(view.name);
    const st = (await store.readState()).apps[view.name]?.environments ?? {};
    const environments: Record<string, unknown> = {};
    const live: Record<string, string | null> = {};
    for (const [env, e] of Object.entries(view.environments)) {
      live[env] = e.version;
      environments[env] = { hosts: e.hosts, live: e.version, site: e.site, ...(e.proxy ? { proxy: e.proxy } : {}), history: st[env]?.history ?? [] };
    }
    return {
      app: view.name,
      live,
      environments,
      versions: versions.map((v) => ({ ...v, live: Object.entries(live).filter(([, id]) => id === v.id).map(([env]) => env) })),
    };
  }

  async function versionsRoute(req: TrustedRequest): Promise<ResponseData> {
    const app = str(new URLSearchParams(req.query).get('app'), 'app', false);
    if (app) return json(200, await listing(findApp(app)));
    return json(200, { apps: await Promise.all(appsNow().map(listing)) });
  }

  async function reloadRoute(): Promise<ResponseData> {
    const r = await kernel.reload();
    if (r.ok) return json(200, { loaded: r.loaded, reused: r.reused, removed: r.removed });
    return json(422, r.error.toJSON());
  }

  const routes: Record<string, (req: TrustedRequest) => Promise<ResponseData>> = {
    '/api/reload': reloadRoute,
    '/api/platform/deploy': deployRoute,
    '/api/platform/promote': promoteRoute,
    '/api/platform/rollback': rollbackRoute,
    '/api/platform/versions': versionsRoute,
  };

  /** One header object per version, so tagging a response allocates nothing. */
  const versionHeaders = new Map<string, { setHeaders: { 'x-bext-version': string } }>();

  return {
    dispose() {
      stopFollowing?.();
    },
    async onRoute(req) {
      const fn = routes[req.route ?? req.path];
      if (!fn) return errorJson(new BextError('BEXT_ERR_NOT_FOUND', `platform has no route ${req.path}`));
      try {
        return await fn(req);
      } catch (e) {
        if (e instanceof SwitchRefused) return json(422, { ...e.error.toJSON(), switched: false });
        return errorJson(e);
      }
    },
    onResponse(req) {
      const v = req.app?.version;
      if (!v) return undefined;
      let h = versionHeaders.get(v);
      if (!h) {
        if (versionHeaders.size > 1000) versionHeaders.clear();
        versionHeaders.set(v, (h = { setHeaders: { 'x-bext-version': v } }));
      }
      return h;
    },
  };
});

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}
