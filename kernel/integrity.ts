/**
 * Integrity of a plugin: sha256 over its files (sorted relative paths and
 * bytes), so any change to code, manifest or assets is noticed at load.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, sep } from 'node:path';

// Tests, docs and build leftovers do not change what runs.
const SKIP = /(^|\/)(node_modules|\.git|\.bext|build|coverage)(\/|$)|\.test\.[cm]?[jt]s$|(^|\/)README\.md$|\.map$/;

/** Files covered by a plugin's integrity, relative and sorted. */
export function pluginFiles(dir: string): string[] {
  const st = statSync(dir);
  if (st.isFile()) return [''];
  const out: string[] = [];
  const walk = (d: string) => {
    for (const ent of readdirSync(d, { withFileTypes: true })) {
      const abs = join(d, ent.name);
      const rel = relative(dir, abs).split(sep).join('/');
      if (SKIP.test(rel)) continue;
      if (ent.isDirectory()) walk(abs);
      else if (ent.isFile()) out.push(rel);
    }
  };
  walk(dir);
  return out.sort();
}

/** `sha256-<base64>` over the plugin's files; a file path hashes that file alone. */
export function computeIntegrity(dir: string): string {
  const h = createHash('sha256');
  for (const rel of pluginFiles(dir)) {
    const abs = rel === '' ? dir : join(dir, rel);
    const bytes = readFileSync(abs);
    h.update(`${rel}\0${bytes.length}\0`);
    h.update(bytes);
  }
  return `sha256-${h.digest('base64')}`;
}
