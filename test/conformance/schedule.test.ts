/**
 * Scheduled tasks in every sandbox kind: the kernel calls each kind's
 * `onSchedule` export with the task, and the guest adds a second task at
 * runtime with `bext_schedule` (the `schedule` capability). Each run
 * publishes what it received, so the assertions see the task data that
 * crossed the boundary.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBext, type Bext } from '../../sdk/harness.js';
import { plugin, tmp, until } from '../helpers.js';

const KINDS = ['trusted', 'quickjs', 'isolate', 'process', 'wasm'] as const;
type Kind = (typeof KINDS)[number];
const ENTRY: Record<Kind, string> = { trusted: 'index.mjs', quickjs: 'plugin.js', isolate: 'plugin.js', process: 'plugin.mjs', wasm: 'plugin.wasm' };

const JS_GUEST = `
const KIND = '__KIND__';
export async function onSchedule(task) {
  if (task.name === 'beat' && task.run === 1) await bext_schedule('extra', '* * * * * *', { scope: 'instance' });
  await bext_publish('custom/sched', { kind: KIND, name: task.name, run: task.run, scheduledAt: task.scheduledAt, firedAt: task.firedAt });
}`;

const TRUSTED = `
export default (host) => ({
  async onSchedule(task) {
    if (task.name === 'beat' && task.run === 1) await host.schedule('extra', '* * * * * *', { scope: 'instance' });
    await host.publish('custom/sched', { kind: 'trusted', name: task.name, run: task.run, scheduledAt: task.scheduledAt, firedAt: task.firedAt });
  },
});`;

const WASM_GUEST = `
import { readTask, publish, schedule, quote } from "@bext/pdk";

export function onSchedule(): i32 {
  const t = readTask();
  if (t.name == "beat" && t.run == 1) schedule("extra", "* * * * * *", "{\\"scope\\":\\"instance\\"}");
  publish("custom/sched", "{\\"kind\\":\\"wasm\\",\\"name\\":" + quote(t.name) + ",\\"run\\":" + t.run.toString()
    + ",\\"scheduledAt\\":" + (<i64>t.scheduledAt).toString() + ",\\"firedAt\\":" + (<i64>t.firedAt).toString() + "}");
  return 0;
}`;

async function fixture(kind: Kind): Promise<string> {
  const dir = mkdtempSync(join(tmp(), `sched-${kind}-`));
  const manifest = {
    name: `sched-${kind}`, version: '1.0.0', sandbox: kind, entry: ENTRY[kind],
    schedules: { beat: { cron: '* * * * * *', scope: 'instance' } },
    capabilities: ['schedule', 'publish:custom/sched'],
    limits: { timeoutMs: 2000 },
  };
  writeFileSync(join(dir, 'bext-plugin.json'), JSON.stringify(manifest));
  if (kind === 'trusted') writeFileSync(join(dir, ENTRY[kind]), TRUSTED);
  else if (kind === 'wasm') {
    mkdirSync(join(dir, 'assembly'));
    writeFileSync(join(dir, 'assembly', 'index.ts'), WASM_GUEST);
    const { buildWasmPlugin } = await import('../../sdk/build.js');
    await buildWasmPlugin(dir);
  } else writeFileSync(join(dir, ENTRY[kind]), JS_GUEST.replace('__KIND__', kind));
  return dir;
}

type Msg = { topic: string; data: { kind: string; name: string; run: number; scheduledAt: number; firedAt: number }; publisher: string };
const sink = () => (globalThis as unknown as { __schedSink: Msg[] }).__schedSink;

for (const kind of KINDS) {
  describe(`onSchedule: ${kind}`, () => {
    let b: Bext;
    beforeAll(async () => {
      (globalThis as unknown as { __schedSink: Msg[] }).__schedSink = [];
      const sinkDir = plugin('sched-sink', { hooks: { onPublish: {} } }, `
export default () => ({ onPublish(msg) { globalThis.__schedSink.push(msg); return { action: 'deliver' }; } });`);
      b = await startBext({ plugins: [{ dir: await fixture(kind), grants: ['schedule', 'publish:custom/sched'] }, sinkDir] });
    }, 120_000);
    afterAll(() => b?.close());

    it('runs the manifest task and the one the guest added with bext_schedule', async () => {
      await until(() => sink().some((m) => m.data.name === 'extra'), 8000, `a run of the runtime task in ${kind}`);
      const beat = sink().filter((m) => m.data.name === 'beat');
      expect(beat[0]).toMatchObject({ topic: 'custom/sched', publisher: `sched-${kind}`, data: { kind, name: 'beat', run: 1 } });
      expect(beat[0]!.data.scheduledAt % 1000).toBe(0);
      expect(beat[0]!.data.firedAt).toBeGreaterThanOrEqual(beat[0]!.data.scheduledAt);
      const tasks = b.kernel.scheduler.status().filter((t) => t.plugin === `sched-${kind}`);
      expect(tasks.map((t) => [t.name, t.source]).sort()).toEqual([['beat', 'manifest'], ['extra', 'runtime']]);
      expect(tasks.every((t) => t.failures === 0)).toBe(true);
      const p = b.kernel.loaded().find((x) => x.name === `sched-${kind}`)!;
      // The hook counts a call once it returned; the publish above happens inside it.
      await until(() => p.counter('onSchedule').calls >= 2, 5000, 'two onSchedule calls counted');
      expect(p.errors).toBe(0);
    });
  });
}
