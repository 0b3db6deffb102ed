/**
 * Test helpers: plugin folders written to a temp dir, so each test states
 * the plugins it runs beside its assertions.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const REPO = resolve(import.meta.dirname, '..');

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

/** What a finished command printed, and its exit code. */
export interface CommandResult {
  code: number | null;
  out: string;
  err: string;
}

/**
 * Runs a command to its end without blocking the event loop: a long
 * synchronous spawn starves vitest's RPC with its worker and fails the run.
 * `timeoutMs` kills it (SIGKILL) if it hangs.
 */
export function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<CommandResult> {
  return new Promise((res, rej) => {
    const p = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d));
    p.stderr.on('data', (d: Buffer) => (err += d));
    const timer = opts.timeoutMs ? setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs) : null;
    p.on('error', rej);
    p.on('close', (code) => {
      if (timer) clearTimeout(timer);
      res({ code, out, err });
    });
  });
}

/** Runs the bext CLI (`kernel/cli/bin.js`) in `cwd`. */
export function bextCli(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<CommandResult> {
  return run(process.execPath, [join(REPO, 'kernel', 'cli', 'bin.js'), ...args], opts);
}
