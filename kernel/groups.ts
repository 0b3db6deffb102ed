/**
 * Route groups as the kernel runs them: the config's `groups` (middleware
 * groups chosen by host and path) followed by one group per app environment
 * (chosen by hostname). Each carries its plugin set (only/add/remove), its
 * per-plugin configuration, its limits and, for apps, what it serves.
 */
import { existsSync, realpathSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { BextError, type AppRef } from '../plugin-api/index.js';
import { TokenBuckets } from '../plugin-api/bucket.js';
import type { BextConfig, GroupConfig, GroupLimits } from './config.js';

/** The app environment a group serves. */
export interface AppScope extends AppRef {
  /** Real path of the folder served, or null for a proxy app or an app without a site. */
  site: string | null;
  proxy?: string;
}

/** One group before plugins are resolved: a config group, or an app environment. */
export interface GroupSpec extends GroupConfig {
  app: AppScope | null;
  /** JSON path of the group in the config, for error messages. */
  where: string;
}

/** A folder chosen for an app environment at run time (a deployed version). */
export interface AppSource {
  dir: string;
  version: string;
}

function folder(where: string, file: string, dir: string): string {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    throw new BextError('BEXT_ERR_CONFIG_INVALID', `${file}: ${where}: the folder ${dir} does not exist`, { hint: 'create it, fix the path (relative to the config file), or deploy a version with `bext deploy`' });
  }
  return realpathSync(dir);
}

/**
 * The groups of a config in matching order: the config's groups, then each
 * app's environments. Throws on a duplicate group name, a host claimed by
 * two app environments, a missing site folder, or an app with both a site
 * and a proxy.
 */
export function expandGroups(config: BextConfig, sources: ReadonlyMap<string, AppSource>, baseDir: string, file: string): GroupSpec[] {
  const out: GroupSpec[] = config.groups.map((g, i) => ({ ...g, app: null, where: `$.groups[${i}]` }));
  const hostOwner = new Map<string, string>();
  for (const [i, app] of (config.apps ?? []).entries()) {
    const envs: [string, { hosts: string[]; site?: string; proxy?: string }][] = [
      ['production', { hosts: app.hosts }],
      ...Object.entries(app.environments ?? {}),
    ];
    for (const [env, e] of envs) {
      const where = env === 'production' ? `$.apps[${i}]` : `$.apps[${i}].environments.${env}`;
      const configuredSite = e.site ?? (e.proxy ? undefined : app.site);
      const proxy = e.proxy ?? (e.site ? undefined : app.proxy);
      if (configuredSite && proxy) {
        throw new BextError('BEXT_ERR_CONFIG_INVALID', `${file}: ${where}: app "${app.name}" (${env}) has both a site and a proxy target`, { hint: 'an app environment serves either a folder (site) or an upstream (proxy): remove one' });
      }
      const source = sources.get(`${app.name}/${env}`);
      const site = source ? folder(where, file, source.dir) : configuredSite ? folder(`${where}.site`, file, resolve(baseDir, configuredSite)) : null;
      for (const h of e.hosts) {
        const key = h.toLowerCase();
        const prev = hostOwner.get(key);
        if (prev) throw new BextError('BEXT_ERR_CONFIG_INVALID', `${file}: ${where}.hosts: host "${h}" is claimed by both ${prev} and ${app.name} (${env})`, { hint: 'give each host to one app environment' });
        hostOwner.set(key, `${app.name} (${env})`);
      }
      out.push({
        name: env === 'production' ? app.name : `${app.name}.${env}`,
        hosts: e.hosts,
        ...(app.only ? { only: app.only } : {}),
        ...(app.add ? { add: app.add } : {}),
        ...(app.remove ? { remove: app.remove } : {}),
        ...(app.plugins ? { plugins: app.plugins } : {}),
        ...(app.limits ? { limits: app.limits } : {}),
        app: { name: app.name, env, version: source?.version ?? null, site, ...(proxy && !source ? { proxy } : {}) },
        where,
      });
    }
  }
  const seen = new Map<string, string>();
  for (const g of out) {
    if (g.name === 'default') throw new BextError('BEXT_ERR_CONFIG_INVALID', `${file}: ${g.where}.name: "default" is the name of the group that matches everything else`, { hint: 'choose another name' });
    const prev = seen.get(g.name);
    if (prev) throw new BextError('BEXT_ERR_CONFIG_INVALID', `${file}: ${g.where}.name: group name "${g.name}" is already used at ${prev}`, { hint: 'group and app names must be unique' });
    seen.set(g.name, g.where);
  }
  return out;
}

/** Limits compiled for the hot path; one object per group per plugin generation. */
export class GroupLimiter {
  inflight = 0;
  readonly maxInflight: number;
  readonly bodyBytes: number | null;
  readonly #bucket: TokenBuckets | null;

  constructor(l: GroupLimits) {
    this.maxInflight = l.maxInflight ?? Infinity;
    this.bodyBytes = l.bodyBytes ?? null;
    this.#bucket = l.requestsPerSecond ? new TokenBuckets({ capacity: l.burst ?? Math.max(1, Math.ceil(l.requestsPerSecond)), refillPerSecond: l.requestsPerSecond, maxKeys: 1 }) : null;
  }

  /** null when admitted (and counted in flight); otherwise the refusal. */
  admit(group: string): BextError | null {
    if (this.inflight >= this.maxInflight) {
      return new BextError('BEXT_ERR_GROUP_OVERLOADED', `group "${group}" is serving its limit of ${this.maxInflight} requests at once`, { hint: 'retry shortly, or raise limits.maxInflight' });
    }
    if (this.#bucket) {
      const b = this.#bucket.get('');
      if (b.tokens < 1) {
        const wait = Math.max(1, Math.ceil(this.#bucket.msUntil(b, 1) / 1000));
        return new BextError('BEXT_ERR_GROUP_RATE_LIMITED', `group "${group}" is over its limit of ${this.#bucket.refillPerSecond} requests per second`, { hint: `retry after ${wait} s, or raise limits.requestsPerSecond`, details: { retryAfter: wait } });
      }
      b.tokens -= 1;
    }
    this.inflight++;
    return null;
  }
}
