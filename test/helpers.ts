/**
 * Test helpers: plugin folders written to a temp dir, so each test states
 * the plugins it runs beside its assertions.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

let root: string | null = null;

export function tmp(): string {
  root ??= mkdtempSync(join(tmpdir(), 'bext-test-'));
  return root;
}

/**
 * Writes a plugin folder: a manifest and an ES module (plain JS, so it loads
 * the same under any runner). Returns the folder.
 */
export function plugin(name: string, manifest: Record<string, unknown>, code: string, entry = 'index.mjs'): string {
  const dir = mkdtempSync(join(tmp(), `${name}-`));
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'bext-plugin.json'), JSON.stringify({ name, version: '1.0.0', sandbox: 'trusted', entry, ...manifest }, null, 2));
  writeFileSync(join(dir, entry), code);
  return dir;
}

/** Polls a condition until it holds or the deadline passes (no fixed sleeps). */
export async function until(cond: () => boolean | Promise<boolean>, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
