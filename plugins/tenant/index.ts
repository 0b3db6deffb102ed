/**
 * Tenant resolver: host name → tenant id, exact names first, then the
 * longest matching wildcard. Decisions are built once per host and reused,
 * so a known host costs one Map lookup and no allocation.
 */
import { definePlugin, type RequestDecision } from '../../plugin-api/index.js';

/** This plugin's section of bext.config.json (defaults applied by the kernel). */
export interface TenantConfig {
  hosts: Record<string, string>;
  unknown: { status: 404 | 421; body: string };
  fallback?: string;
  header?: string;
}

/** What later plugins find in `req.ctx.tenant`. */
export type TenantCtx = string;

const MEMO_MAX = 10_000;

export default definePlugin((host) => {
  const cfg = host.config<TenantConfig>();
  const decisionFor = (tenant: string): RequestDecision => ({
    action: 'continue',
    ctx: Object.freeze({ tenant }),
    ...(cfg.header ? { setHeaders: Object.freeze({ [cfg.header]: tenant }) } : {}),
  });

  const exact = new Map<string, RequestDecision>();
  /** `.example.com` → tenant id template. */
  const wild = new Map<string, string>();
  for (const [pattern, tenant] of Object.entries(cfg.hosts)) {
    if (pattern.startsWith('*.')) wild.set(pattern.slice(1), tenant);
    else exact.set(pattern, decisionFor(tenant));
  }
  const unknown: RequestDecision = cfg.fallback !== undefined
    ? decisionFor(cfg.fallback)
    : { action: 'respond', status: cfg.unknown.status, headers: { 'content-type': 'text/plain; charset=utf-8' }, body: cfg.unknown.body };

  // Wildcard answers are remembered per host; `{sub}` makes them host-specific, so they cannot be shared per pattern.
  const memo = new Map<string, RequestDecision | null>();
  const viaWildcard = (h: string): RequestDecision | null => {
    let d = memo.get(h);
    if (d !== undefined) return d;
    d = null;
    // Scanning dots left to right visits the longest suffix first, which is the most specific wildcard.
    for (let dot = h.indexOf('.'); dot > 0; dot = h.indexOf('.', dot + 1)) {
      const tenant = wild.get(h.slice(dot));
      if (tenant !== undefined) {
        d = decisionFor(tenant.replaceAll('{sub}', h.slice(0, dot)));
        break;
      }
    }
    if (memo.size >= MEMO_MAX) memo.clear();
    memo.set(h, d);
    return d;
  };

  return {
    onRequest(req) {
      const d = exact.get(req.host) ?? (wild.size ? viaWildcard(req.host) : null);
      if (d) return d;
      if (cfg.fallback === undefined) host.metric('unknown_host_total', 1, undefined, 'counter');
      return unknown;
    },
  };
});
