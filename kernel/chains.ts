/**
 * Chains compiled once per route group whenever the plugin set or config
 * changes: per hook an array of entries sorted by priority (or null), the
 * group's router, and what the group needs from the request.
 */
import FindMyWay from 'find-my-way';
import {
  BextError, compileMatch, globToRegExp, hostMatches,
  type AppRef, type HookName, type MatchFn,
} from '../plugin-api/index.js';
import type { GroupLimits } from './config.js';
import { GroupLimiter, type AppScope } from './groups.js';
import type { LoadedPlugin } from './plugin.js';

export interface ChainEntry {
  plugin: LoadedPlugin;
  hook: HookName;
  fn: (...a: unknown[]) => unknown;
  priority: number;
  match: MatchFn | null;
}

export interface RouteStore {
  plugin: LoadedPlugin;
  fn: (...a: unknown[]) => unknown;
  admin: boolean;
  pattern: string;
}

export interface CompiledGroup {
  name: string;
  /** null for the default group, which matches everything. */
  matches: ((host: string, path: string) => boolean) | null;
  plugins: LoadedPlugin[];
  onRequest: ChainEntry[] | null;
  onRender: ChainEntry[] | null;
  onResponse: ChainEntry[] | null;
  router: FindMyWay.Instance<FindMyWay.HTTPVersion.V1>;
  /** Whether some request hook of a sandboxed plugin declared `body` in needs. */
  needsBody: boolean;
  /** Whether some response hook wants the buffered response body. */
  needsResponseBody: boolean;
  /** The group's limits, or null when it has none. */
  limiter: GroupLimiter | null;
  /** The app environment this group serves, as requests see it (`req.app`). */
  app: AppRef | null;
  /** For an app environment: its hosts and what serves it (folder or upstream). */
  hosts: string[];
  scope: AppScope | null;
}

export interface CompiledChains {
  /** Every group in matching order, the default group last. */
  groups: CompiledGroup[];
  /**
   * Lookup plan: `ordered` groups are tried in turn (the config's groups),
   * then an exact-host index of app environments, then `wildcards` (apps
   * with `*.example.com` hosts), then the default group.
   */
  ordered: CompiledGroup[];
  appHosts: Map<string, CompiledGroup>;
  wildcards: CompiledGroup[];
  byName: Map<string, CompiledGroup>;
  onConnect: ChainEntry[] | null;
  onPublish: ChainEntry[] | null;
}

const ALL_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'];

function chainOf(plugins: LoadedPlugin[], hook: HookName): ChainEntry[] | null {
  const out: ChainEntry[] = [];
  for (const p of plugins) {
    const spec = p.manifest.hooks?.[hook];
    if (!spec) continue;
    const fn = p.instance.hooks[hook] as ((...a: unknown[]) => unknown) | undefined;
    if (typeof fn !== 'function') {
      throw new BextError('BEXT_ERR_PLUGIN_HOOK_MISSING', `plugin "${p.name}" declares ${hook} in bext-plugin.json but does not export it`, { hint: `export ${hook} or remove it from "hooks"` });
    }
    out.push({ plugin: p, hook, fn: fn.bind(p.instance.hooks), priority: spec.priority ?? 100, match: compileMatch(spec.match) });
  }
  // Stable: equal priorities keep load order.
  out.sort((a, b) => a.priority - b.priority || a.plugin.order - b.plugin.order);
  return out.length ? out : null;
}

/** Matches a group's hosts and path globs (both must match when both are given). */
export function groupMatcher(g: { hosts?: string[]; paths?: string[] }): ((host: string, path: string) => boolean) {
  const hosts = g.hosts?.length ? g.hosts : null;
  const paths = g.paths?.length ? g.paths.map(globToRegExp) : null;
  return (host, path) => {
    if (hosts && !hosts.some((h) => hostMatches(h, host))) return false;
    if (paths && !paths.some((re) => re.test(path))) return false;
    return true;
  };
}

/**
 * The base plugin set of a group from its only/add/remove lists, over the
 * global plugins. `where` is the group's JSON path, for error messages.
 */
export function groupBaseSet(g: { only?: string[]; add?: string[]; remove?: string[] }, byName: ReadonlyMap<string, LoadedPlugin>, global: LoadedPlugin[], where: string, file = 'bext.config.json'): LoadedPlugin[] {
  const resolve = (key: 'only' | 'add' | 'remove') =>
    (g[key] ?? []).map((n) => {
      const p = byName.get(n);
      if (!p) {
        throw new BextError('BEXT_ERR_CONFIG_INVALID', `${file}: ${where}.${key}: plugin "${n}" is not loaded`, { hint: `lock it first with \`bext plugin add ${n}\`` });
      }
      return p;
    });
  let set: LoadedPlugin[];
  if (g.only) set = resolve('only');
  else {
    const remove = new Set(resolve('remove'));
    set = [...global.filter((p) => !remove.has(p)), ...resolve('add').filter((p) => !remove.has(p))];
  }
  return [...new Set(set)].sort((a, b) => a.order - b.order);
}

/** A group with its plugins resolved (per-group instances included), ready to compile. */
export interface GroupPlan {
  name: string;
  matches: CompiledGroup['matches'];
  plugins: LoadedPlugin[];
  limits: GroupLimits | undefined;
  /** The app environment it serves, and its hosts (apps are chosen by host only). */
  scope: AppScope | null;
  hosts?: string[];
}

function compileGroup(name: string, matches: CompiledGroup['matches'], plugins: LoadedPlugin[], limits?: GroupLimits, scope: AppScope | null = null, hosts: string[] = []): CompiledGroup {
  const router = FindMyWay({ ignoreTrailingSlash: false, caseSensitive: true, maxParamLength: 500 });
  const claimed = new Map<string, string>();
  for (const p of plugins) {
    for (const r of p.manifest.routes ?? []) {
      const methods = !r.methods || r.methods.length === 0 ? ['GET', 'HEAD'] : r.methods.includes('*') ? ALL_METHODS : r.methods;
      const fn = p.instance.hooks.onRoute as ((...a: unknown[]) => unknown) | undefined;
      if (typeof fn !== 'function') {
        throw new BextError('BEXT_ERR_PLUGIN_HOOK_MISSING', `plugin "${p.name}" claims route ${r.path} but exports no onRoute`, { hint: 'export onRoute(req) or remove the route from "routes"' });
      }
      for (const m of methods) {
        const key = `${m} ${r.path}`;
        const prev = claimed.get(key);
        if (prev) {
          throw new BextError('BEXT_ERR_ROUTE_CONFLICT', `route ${key} is claimed by both "${prev}" and "${p.name}"${name === 'default' ? '' : ` in group "${name}"`}`, { hint: 'remove the route from one of the two manifests, or put the plugins in different route groups' });
        }
        claimed.set(key, p.name);
        const store: RouteStore = { plugin: p, fn: fn.bind(p.instance.hooks), admin: r.admin === true, pattern: r.path };
        try {
          router.on(m as FindMyWay.HTTPMethod, r.path, () => undefined, store);
        } catch (e) {
          // find-my-way refuses shapes that collide without being equal (`/a/:x` vs `/a/:y`).
          throw new BextError('BEXT_ERR_ROUTE_CONFLICT', `route ${key} of "${p.name}" collides with a route already claimed${name === 'default' ? '' : ` in group "${name}"`}: ${(e as Error).message}`);
        }
      }
    }
  }
  const needs = (hooks: HookName[], need: string) =>
    plugins.some((p) => p.sandbox !== 'trusted' && hooks.some((h) => p.manifest.hooks?.[h]) && (p.manifest.needs ?? []).includes(need as never));
  return {
    name,
    matches,
    plugins,
    onRequest: chainOf(plugins, 'onRequest'),
    onRender: chainOf(plugins, 'onRender'),
    onResponse: chainOf(plugins, 'onResponse'),
    router,
    needsBody: needs(['onRequest', 'onRoute', 'onRender'], 'body'),
    needsResponseBody: needs(['onResponse'], 'response.body'),
    limiter: limits && Object.keys(limits).length ? new GroupLimiter(limits) : null,
    app: scope ? { name: scope.name, env: scope.env, version: scope.version } : null,
    hosts: scope ? hosts : [],
    scope,
  };
}

/**
 * Builds every group's chains, then the default group over the global
 * plugins; throws on route conflicts. `all` is every loaded instance
 * (per-group ones included), which the onPublish fan-out reaches.
 */
export function compileChains(all: LoadedPlugin[], plans: GroupPlan[]): CompiledChains {
  const global = all.filter((p) => p.scope === 'global' && p.group === null);
  const compiled = plans.map((g) => compileGroup(g.name, g.matches, g.plugins, g.limits, g.scope, g.hosts));
  const ordered: CompiledGroup[] = [];
  const appHosts = new Map<string, CompiledGroup>();
  const wildcards: CompiledGroup[] = [];
  plans.forEach((plan, i) => {
    const g = compiled[i]!;
    if (!plan.scope) return void ordered.push(g);
    let wild = false;
    for (const h of plan.hosts ?? []) {
      if (h.includes('*')) wild = true;
      else if (!appHosts.has(h.toLowerCase())) appHosts.set(h.toLowerCase(), g);
    }
    if (wild) wildcards.push(g);
  });
  compiled.push(compileGroup('default', null, global));
  return {
    groups: compiled,
    ordered,
    appHosts,
    wildcards,
    byName: new Map(compiled.map((g) => [g.name, g])),
    onConnect: chainOf(global, 'onConnect'),
    onPublish: chainOf(all, 'onPublish'),
  };
}
