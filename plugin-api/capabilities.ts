/**
 * Capabilities: asked for in the manifest, granted in `plugins.lock.json`,
 * checked by the kernel on every host-function call.
 */

/** Each capability family and the host functions it unlocks. */
export const CAPABILITIES = {
  publish: { pattern: 'publish:<topic glob>', unlocks: ['bext_publish'], doc: 'publish to topics matching the glob' },
  kv: { pattern: 'kv', unlocks: ['bext_kv_get', 'bext_kv_set', 'bext_kv_del'], doc: 'a key-value store namespaced to the plugin' },
  fetch: { pattern: 'fetch:<host>', unlocks: ['bext_fetch'], doc: 'outbound HTTP to the named host (`*.example.com` allowed)' },
  metrics: { pattern: 'metrics', unlocks: ['bext_metric'], doc: 'record counters, gauges and histograms' },
  schedule: { pattern: 'schedule', unlocks: ['bext_schedule', 'bext_unschedule'], doc: 'add and remove scheduled tasks at runtime (tasks in the manifest need no grant)' },
} as const;

export type CapabilityFamily = keyof typeof CAPABILITIES;

/** Host functions every plugin may call without a grant. */
export const ALWAYS_ALLOWED = ['bext_log', 'bext_config'] as const;

/**
 * Topic glob match: `*` one segment, `**` any number of segments.
 *
 * @example topicMatches('app/*\/events', 'app/blog/events') === true
 */
export function topicMatches(glob: string, topic: string): boolean {
  if (glob === topic || glob === '**') return true;
  const g = glob.split('/');
  const t = topic.split('/');
  const walk = (gi: number, ti: number): boolean => {
    for (; gi < g.length; gi++, ti++) {
      if (g[gi] === '**') {
        if (gi === g.length - 1) return true;
        for (let k = ti; k <= t.length; k++) if (walk(gi + 1, k)) return true;
        return false;
      }
      if (ti >= t.length) return false;
      if (g[gi] !== '*' && g[gi] !== t[ti]) return false;
    }
    return ti === t.length;
  };
  return walk(0, 0);
}

/** Host pattern match: exact, or `*.example.com` for any subdomain depth. */
export function hostMatches(pattern: string, host: string): boolean {
  if (pattern === host || pattern === '*') return true;
  if (pattern.startsWith('*.')) return host.endsWith(pattern.slice(1)) && host.length > pattern.length - 1;
  return false;
}

/** Whether a set of granted capabilities allows publishing to a topic. */
export function canPublish(grants: readonly string[], topic: string): boolean {
  for (const g of grants) if (g.startsWith('publish:') && topicMatches(g.slice(8), topic)) return true;
  return false;
}

/** Whether a set of granted capabilities allows fetching from a host. */
export function canFetch(grants: readonly string[], host: string): boolean {
  for (const g of grants) if (g.startsWith('fetch:') && hostMatches(g.slice(6), host)) return true;
  return false;
}
