/**
 * Polling file watch that compares each look at a file with the version the
 * caller last acted on, not with the previous poll. `fs.watchFile` takes its
 * first stat asynchronously, so a replace that lands before that stat is never
 * reported; here the baseline is taken synchronously (or given by the caller,
 * taken before it read the file), so no change is lost however it is timed.
 */
import { statSync } from 'node:fs';
import { stat } from 'node:fs/promises';

/** One version of a file: a replace by rename changes the inode, a rewrite the size or mtime. '' when absent. */
export function fileIdentity(path: string): string {
  try {
    const s = statSync(path);
    return `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}`;
  } catch {
    return '';
  }
}

async function identityAsync(path: string): Promise<string> {
  try {
    const s = await stat(path);
    return `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}`;
  } catch {
    return '';
  }
}

export interface PollFileOptions {
  intervalMs: number;
  /** The identity of the version already acted on (from `fileIdentity` before reading it); default: now. */
  baseline?: string;
  /** Keep the process alive while watching (default false). */
  persistent?: boolean;
}

/**
 * Calls `onChange` once per new version of `path` (a missing file counts as a
 * version). Polls never overlap, and `onChange` is awaited before the next one.
 * Returns a function that stops the watch.
 */
export function pollFile(path: string, opts: PollFileOptions, onChange: () => unknown): () => void {
  let seen = opts.baseline ?? fileIdentity(path);
  let busy = false;
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    void (async () => {
      const now = await identityAsync(path);
      if (now === seen) return;
      seen = now;
      await onChange();
    })()
      .catch(() => undefined)
      .finally(() => (busy = false));
  }, opts.intervalMs);
  if (!opts.persistent) timer.unref();
  return () => clearInterval(timer);
}
