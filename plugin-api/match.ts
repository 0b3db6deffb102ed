/**
 * Compiled request filters: path globs, host patterns and methods, turned
 * into one predicate once, so a non-matching request costs a few compares.
 */
import type { MatchSpec } from './manifest.js';
import { hostMatches } from './capabilities.js';

/** Turns a path glob into a RegExp: `*` one segment, `**` any depth. */
export function globToRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*') {
      if (glob[i + 1] === '*') {
        i++;
        // `/**` also matches the bare prefix (`/api/**` matches `/api`).
        if (re.endsWith('/')) re = `${re.slice(0, -1)}(?:/.*)?`;
        else re += '.*';
        if (glob[i + 1] === '/') i++, (re += '/?');
      } else re += '[^/]*';
    } else re += /[.+?^${}()|[\]\\]/.test(c) ? `\\${c}` : c;
  }
  return new RegExp(`^${re}$`);
}

export type MatchFn = (method: string, path: string, host: string) => boolean;

/** Compiles a `match` spec; `null` when it matches everything. */
export function compileMatch(spec: MatchSpec | undefined): MatchFn | null {
  if (!spec) return null;
  const methods = spec.methods?.length ? new Set(spec.methods) : null;
  const paths = spec.paths?.length ? spec.paths.map(globToRegExp) : null;
  const hosts = spec.hosts?.length ? spec.hosts : null;
  if (!methods && !paths && !hosts) return null;
  return (method, path, host) => {
    if (methods && !methods.has(method)) return false;
    if (paths) {
      let ok = false;
      for (const re of paths) if (re.test(path)) { ok = true; break; }
      if (!ok) return false;
    }
    if (hosts) {
      let ok = false;
      for (const h of hosts) if (hostMatches(h, host)) { ok = true; break; }
      if (!ok) return false;
    }
    return true;
  };
}
