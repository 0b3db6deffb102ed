import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fileIdentity, pollFile } from './file-watch.js';

const fresh = () => mkdtempSync(join(tmpdir(), 'bext-watch-'));
/** Replaces a file the way updaters do: write beside it, then rename over it. */
const replace = (dir: string, f: string, content: string) => {
  writeFileSync(join(dir, 'next'), content);
  renameSync(join(dir, 'next'), f);
};
const nextCall = () => {
  let hit!: () => void;
  const seen = new Promise<void>((r) => (hit = r));
  return { seen, hit };
};

describe('pollFile', () => {
  it('reports a replace made right after the watch starts, before any poll ran', async () => {
    const dir = fresh();
    const f = join(dir, 'a');
    writeFileSync(f, 'one');
    const { seen, hit } = nextCall();
    const stop = pollFile(f, { intervalMs: 20 }, hit);
    replace(dir, f, 'two');
    await seen;
    stop();
  });

  it('compares with the baseline the caller read, so a change between the read and the watch is seen', async () => {
    const dir = fresh();
    const f = join(dir, 'a');
    writeFileSync(f, 'one');
    const baseline = fileIdentity(f);
    replace(dir, f, 'longer content');
    const { seen, hit } = nextCall();
    const stop = pollFile(f, { intervalMs: 20, baseline }, hit);
    await seen;
    stop();
  });

  it('treats removal and re-creation as versions, once each', async () => {
    const dir = fresh();
    const f = join(dir, 'a');
    writeFileSync(f, 'one');
    const calls: string[] = [];
    let step!: () => void;
    let wait = new Promise<void>((r) => (step = r));
    const stop = pollFile(f, { intervalMs: 20 }, () => {
      calls.push(fileIdentity(f) ? 'present' : 'absent');
      step();
    });
    rmSync(f);
    await wait;
    wait = new Promise<void>((r) => (step = r));
    writeFileSync(f, 'two');
    await wait;
    stop();
    expect(calls).toEqual(['absent', 'present']);
  });
});
