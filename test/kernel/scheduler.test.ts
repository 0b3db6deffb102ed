/**
 * The scheduler in a real kernel: tasks from the manifest and from
 * bext_schedule run on their ticks and report their runs; overlap skip and
 * queue; failures and deadlines counted; reload adds and removes tasks; and
 * two kernels sharing a Redis run every tick exactly once between them.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { computeIntegrity } from '../../kernel/integrity.js';
import { writeLock } from '../../kernel/lock.js';
import { Logger } from '../../kernel/log.js';
import { parseConfig } from '../../kernel/config.js';
import { Kernel } from '../../kernel/server.js';
import type { TaskStatus } from '../../plugin-api/index.js';
import { startBext, type Bext, type StartOptions } from '../../sdk/harness.js';
import { plugin, tmp, until } from '../helpers.js';

const REDIS = 'redis://127.0.0.1:6379';

type Run = { who: string; name: string; scheduledAt: number; firedAt: number; run: number };
type G = { __sched: Record<string, Run[]>; __gates: Record<string, (() => void)[]> };
const g = globalThis as unknown as G;
g.__sched = {};
g.__gates = {};

const running: { close(): Promise<void> }[] = [];
afterEach(async () => {
  while (running.length) await running.pop()!.close();
});

/** A name no earlier run used, so Redis keys (`bext:sched:<plugin>:…`) never collide between runs. */
const uniq = (base: string) => `${base}-${randomBytes(4).toString('hex')}`;

/**
 * A trusted plugin whose onSchedule records each run in `globalThis.__sched[name]`
 * and, for tasks named `slow*`, waits until the test opens its gate.
 */
function taskPlugin(name: string, manifest: Record<string, unknown>, extra = '', hooks = ''): string {
  return plugin(name, { configSchema: { type: 'object', properties: { who: { type: 'string' } } }, ...manifest }, `
globalThis.__sched[${JSON.stringify(name)}] ??= [];
globalThis.__gates[${JSON.stringify(name)}] ??= [];
export default (host) => {
  ${extra}
  return {
    ${hooks}
    async onSchedule(task) {
      globalThis.__sched[${JSON.stringify(name)}].push({ who: host.config().who ?? '', ...task });
      if (task.name.startsWith('slow')) await new Promise((r) => globalThis.__gates[${JSON.stringify(name)}].push(r));
      if (task.name.startsWith('fail')) throw new Error('task failed on purpose');
    },
  };
};`);
}

async function start(plugins: StartOptions['plugins'], config: StartOptions['config'] = {}): Promise<Bext> {
  const b = await startBext({ plugins, config });
  running.push(b);
  return b;
}

const schedOf = (b: Bext) => b.kernel.scheduler.status();
const task = (b: Bext, plugin: string, name: string): TaskStatus => {
  const t = schedOf(b).find((x) => x.plugin === plugin && x.name === name);
  if (!t) throw new Error(`no task ${plugin}/${name}`);
  return t;
};

describe('scheduler', () => {
  it('runs a * * * * * * task every second and shows its last and next run', async () => {
    const name = uniq('every');
    const b = await start([taskPlugin(name, { schedules: { beat: { cron: '* * * * * *' } } })]);
    const t0 = task(b, name, 'beat');
    expect(t0).toMatchObject({ cron: '* * * * * *', scope: 'cluster', overlap: 'skip', source: 'manifest', active: true });
    expect(t0.nextRun! - Date.now()).toBeLessThanOrEqual(1000);
    await until(() => task(b, name, 'beat').counts.ok >= 2, 5000, 'two runs');
    const t = task(b, name, 'beat');
    const runs = g.__sched[name]!;
    expect(runs[0]).toMatchObject({ name: 'beat', run: 1 });
    expect(runs[1]!.run).toBe(2);
    // Ticks are whole seconds, one second apart, and fire at (not before) their time.
    expect(runs[0]!.scheduledAt % 1000).toBe(0);
    expect(runs[1]!.scheduledAt - runs[0]!.scheduledAt).toBe(1000);
    expect(runs[0]!.firedAt).toBeGreaterThanOrEqual(runs[0]!.scheduledAt);
    expect(t.lastRun).toMatchObject({ outcome: 'ok' });
    expect(t.nextRun).toBeGreaterThan(t.lastRun!.scheduledAt);
    expect(t.failures).toBe(0);
    const metrics = await b.kernel.metrics.text();
    expect(metrics).toMatch(new RegExp(`bext_scheduler_runs_total\\{plugin="${name}",task="beat",outcome="ok"\\} [1-9]`));
    expect(metrics).toMatch(new RegExp(`bext_scheduler_run_duration_seconds_count\\{plugin="${name}",task="beat"\\} [1-9]`));
  });

  it('skips a tick while the previous run still runs (overlap skip)', async () => {
    const name = uniq('skip');
    const b = await start([taskPlugin(name, { schedules: { slow: { cron: '* * * * * *', timeoutMs: 10_000 } } })]);
    await until(() => task(b, name, 'slow').running === 1, 5000, 'the first run');
    await until(() => task(b, name, 'slow').counts['skipped-overlap'] >= 1, 5000, 'a skipped tick');
    expect(g.__sched[name]).toHaveLength(1);
    expect(task(b, name, 'slow').history[0]).toMatchObject({ outcome: 'skipped-overlap', error: 'the previous run was still running' });
    g.__gates[name]!.shift()!();
    await until(() => task(b, name, 'slow').counts.ok === 1, 5000, 'the first run to finish');
  });

  it('queues one run behind the current one (overlap queue)', async () => {
    const name = uniq('queue');
    const b = await start([taskPlugin(name, { schedules: { slow: { cron: '* * * * * *', overlap: 'queue', timeoutMs: 10_000 } } })]);
    await until(() => task(b, name, 'slow').running === 1, 5000, 'the first run');
    await until(() => task(b, name, 'slow').queued, 5000, 'a queued run');
    // A third tick finds one already queued and is skipped.
    await until(() => task(b, name, 'slow').counts['skipped-overlap'] >= 1, 5000, 'a skipped tick');
    expect(g.__sched[name]).toHaveLength(1);
    g.__gates[name]!.shift()!();
    await until(() => g.__sched[name]!.length === 2, 5000, 'the queued run to start');
    const [first, second] = g.__sched[name]!;
    expect(second!.scheduledAt - first!.scheduledAt).toBe(1000);
    expect(task(b, name, 'slow')).toMatchObject({ queued: false, running: 1 });
    g.__gates[name]!.shift()!();
    await until(() => task(b, name, 'slow').counts.ok === 2, 5000, 'both runs to finish');
  });

  it('counts a task that throws as failures, and cuts a spinning sandboxed one at its deadline', async () => {
    const name = uniq('fails');
    const failing = taskPlugin(name, { schedules: { 'fail-often': { cron: '* * * * * *' } }, limits: { quarantineAfter: 100 } });
    const spinName = uniq('spin');
    const spin = plugin(spinName, { sandbox: 'quickjs', entry: 'plugin.js', schedules: { spin: { cron: '* * * * * *' } }, limits: { timeoutMs: 150 } },
      'export function onSchedule(task) { for (;;) {} }', 'plugin.js');
    const b = await start([failing, spin]);
    await until(() => task(b, name, 'fail-often').failures >= 2 && task(b, spinName, 'spin').failures >= 1, 8000, 'failures of both');
    const f = task(b, name, 'fail-often');
    expect(f.counts.error).toBe(f.failures);
    expect(f.consecutiveFailures).toBe(f.failures);
    expect(f.lastFailure).toMatchObject({ outcome: 'error' });
    expect(f.lastFailure!.error).toMatch(/^BEXT_ERR_PLUGIN_FAILED: plugin ".*" onSchedule threw task failed on purpose/);
    const s = task(b, spinName, 'spin');
    expect(s.lastFailure).toMatchObject({ outcome: 'timeout' });
    expect(s.lastFailure!.error).toMatch(/^BEXT_ERR_PLUGIN_TIMEOUT: .*150 ms deadline/);
    expect(s.lastFailure!.durationMs).toBeLessThan(1000);
    // The hook counters see the same failures as any hook.
    expect(b.kernel.loaded().find((p) => p.name === name)!.counter('onSchedule').errors).toBeGreaterThanOrEqual(2);
    // Later ticks still come (the spinning VM was replaced).
    await until(() => task(b, spinName, 'spin').counts.timeout >= 2, 5000, 'a second timeout');
  });

  it('adds and removes tasks at runtime with bext_schedule, which needs the schedule grant', async () => {
    const name = uniq('runtime');
    // The factory registers a task while it runs; onRoute removes it.
    const dir = taskPlugin(name, { capabilities: ['schedule'], routes: [{ path: `/${name}/drop`, methods: ['POST'] }] },
      `host.schedule('early', '* * * * * *', { scope: 'instance' });`,
      `async onRoute() { return { status: 200, body: String(await host.unschedule('early')) }; },`);
    const b = await start([{ dir, grants: ['schedule'] }]);
    expect(task(b, name, 'early')).toMatchObject({ source: 'runtime', scope: 'instance' });
    await until(() => task(b, name, 'early').counts.ok >= 1, 5000, 'the runtime task to run');
    const r = await fetch(`${b.url}/${name}/drop`, { method: 'POST' });
    expect(await r.text()).toBe('true');
    expect(schedOf(b).filter((t) => t.plugin === name)).toEqual([]);

    // Without the grant the factory's call is refused, audited, and the load fails.
    const denied = taskPlugin(uniq('nogrant'), {}, `host.schedule('x', '* * * * * *');`);
    await expect(startBext({ plugins: [{ dir: denied, grants: [] }] })).rejects.toThrow(/bext_schedule\("x"\) without the schedule capability/);
    // A bad pattern names the task.
    const bad = taskPlugin(uniq('badcron'), {}, `host.schedule('x', '61 * * * *');`);
    await expect(startBext({ plugins: [{ dir: bad, grants: ['schedule'] }] })).rejects.toMatchObject({ code: 'BEXT_ERR_SCHEDULE_INVALID' });
  });

  it('refuses a manifest with a bad cron pattern or time zone, naming the task and field', async () => {
    const a = taskPlugin(uniq('badm'), { schedules: { nightly: { cron: '0 0 25 * * *' } } });
    await expect(startBext({ plugins: [a] })).rejects.toMatchObject({ code: 'BEXT_ERR_MANIFEST_INVALID', message: expect.stringMatching(/\$\.schedules\.nightly\.cron: expected a cron pattern, found "0 0 25 \* \* \*"/) });
    const z = taskPlugin(uniq('badz'), { schedules: { nightly: { cron: '0 0 * * *', timezone: 'Mars/Olympus' } } });
    await expect(startBext({ plugins: [z] })).rejects.toMatchObject({ message: expect.stringMatching(/\$\.schedules\.nightly\.timezone/) });
    const o = taskPlugin(uniq('bado'), { schedules: { nightly: { cron: '0 0 * * *', overlap: 'sometimes' } } });
    await expect(startBext({ plugins: [o] })).rejects.toMatchObject({ code: 'BEXT_ERR_MANIFEST_INVALID', message: expect.stringMatching(/schedules\.nightly\.overlap/) });
    const noHook = plugin(uniq('nohook'), { schedules: { nightly: { cron: '0 0 * * *' } } }, 'export default () => ({});');
    await expect(startBext({ plugins: [noHook] })).rejects.toMatchObject({ code: 'BEXT_ERR_PLUGIN_HOOK_MISSING' });
  });

  it('follows reloads: a reused plugin keeps its task, a new one starts, a removed one stops', async () => {
    const dir = mkdtempSync(join(tmp(), 'sched-reload-'));
    const a = uniq('ra');
    const bName = uniq('rb');
    const aDir = taskPlugin(a, { schedules: { tick: { cron: '* * * * * *' } } });
    const bDir = taskPlugin(bName, { schedules: { tock: { cron: '* * * * * *' } } });
    const entry = (name: string, source: string, order: number) => ({ name, source: `file:${source}`, version: '1.0.0', sandbox: 'trusted' as const, integrity: computeIntegrity(source), capabilities: [], order });
    const lockFile = join(dir, 'plugins.lock.json');
    writeLock(lockFile, { lockfileVersion: 1, plugins: [entry(a, aDir, 0)] });
    const k = await Kernel.create({ config: parseConfig({ server: { port: 0, host: '127.0.0.1' }, admin: { port: null } }, 'test'), lockFile, logger: new Logger('error') });
    running.push({ close: () => k.close(1000) });
    await k.listen();
    const st = (p: string, t: string) => k.scheduler.status().find((x) => x.plugin === p && x.name === t);
    await until(() => (st(a, 'tick')?.counts.ok ?? 0) >= 1, 5000, 'a first run of a');

    writeLock(lockFile, { lockfileVersion: 1, plugins: [entry(a, aDir, 0), entry(bName, bDir, 1)] });
    expect(await k.reload()).toMatchObject({ ok: true, loaded: [bName], reused: [a] });
    const okBefore = st(a, 'tick')!.counts.ok;
    await until(() => (st(bName, 'tock')?.counts.ok ?? 0) >= 1, 5000, 'b to run');
    // The reused plugin's task kept its history and counters.
    expect(st(a, 'tick')!.counts.ok).toBeGreaterThanOrEqual(okBefore);
    expect(st(a, 'tick')!.history.length).toBeGreaterThanOrEqual(okBefore);

    writeLock(lockFile, { lockfileVersion: 1, plugins: [entry(bName, bDir, 1)] });
    expect(await k.reload()).toMatchObject({ ok: true, removed: [a] });
    expect(st(a, 'tick')).toBeUndefined();
    const aRuns = g.__sched[a]!.length;
    const bRuns = g.__sched[bName]!.length;
    await until(() => g.__sched[bName]!.length >= bRuns + 2, 5000, 'two more runs of b');
    expect(g.__sched[a]!.length).toBe(aRuns);
  });
});

describe('scheduler in a cluster', () => {
  it('runs each tick of a per-second task exactly once across two kernels sharing Redis', async () => {
    const name = uniq('cluster');
    const dir = taskPlugin(name, { schedules: { beat: { cron: '* * * * * *' } } });
    const one = await start([dir], { redis: { url: REDIS }, plugins: { [name]: { who: 'one' } } });
    const two = await start([dir], { redis: { url: REDIS }, plugins: { [name]: { who: 'two' } } });
    // Ticks both kernels saw: each was taken by one and reported ran-elsewhere by the other.
    const both = () => {
      const a = new Map(task(one, name, 'beat').history.map((r) => [r.scheduledAt, r.outcome]));
      return task(two, name, 'beat').history.filter((r) => a.has(r.scheduledAt)).map((r) => [a.get(r.scheduledAt), r.outcome].sort().join('+'));
    };
    await until(() => both().filter((x) => x === 'ok+ran-elsewhere').length >= 3, 10_000, 'three ticks seen by both kernels');
    // Status stays readable after close; closing also waits for runs in progress.
    running.splice(0);
    await Promise.all([one.close(), two.close()]);
    const runs = g.__sched[name]!;
    const ticks = runs.map((r) => r.scheduledAt);
    // Every tick ran exactly once in total.
    expect(new Set(ticks).size).toBe(ticks.length);
    expect(ticks.length).toBeGreaterThanOrEqual(3);
    const a = task(one, name, 'beat');
    const b = task(two, name, 'beat');
    expect(a.counts.ok + b.counts.ok).toBe(runs.length);
    expect(a.counts['lock-failed'] + b.counts['lock-failed']).toBe(0);
    // No tick that one kernel saw as ran-elsewhere is missing from the runs.
    for (const r of [...a.history, ...b.history]) if (r.outcome === 'ran-elsewhere') expect(ticks).toContain(r.scheduledAt);
    expect(both().every((x) => x === 'ok+ran-elsewhere')).toBe(true);
  });

  it('shows one cluster-wide history from either kernel, each run naming the instance that ran it', async () => {
    const name = uniq('shared');
    const dir = taskPlugin(name, { schedules: { beat: { cron: '* * * * * *' }, local: { cron: '* * * * * *', scope: 'instance' } } });
    const one = await start(['scheduler', dir], { redis: { url: REDIS }, plugins: { [name]: { who: 'one' } } });
    const two = await start(['scheduler', dir], { redis: { url: REDIS }, plugins: { [name]: { who: 'two' } } });
    const ids = new Set([one.kernel.scheduler.instanceId, two.kernel.scheduler.instanceId]);
    // The admin route of each kernel, as a worker behind a shared admin listener would answer.
    const viewOf = async (b: Bext) => {
      const r = await fetch(`${b.adminUrl}/__bext/scheduler`);
      expect(r.status).toBe(200);
      return ((await r.json()) as { tasks: TaskStatus[] }).tasks.filter((t) => t.plugin === name);
    };
    let a: TaskStatus[] = [];
    let b: TaskStatus[] = [];
    await until(async () => {
      [a, b] = await Promise.all([viewOf(one), viewOf(two)]);
      const ha = a.find((t) => t.name === 'beat')?.cluster?.history ?? [];
      return ha.length >= 4 && JSON.stringify(ha) === JSON.stringify(b.find((t) => t.name === 'beat')?.cluster?.history);
    }, 15_000, 'both kernels to show the same four or more cluster runs');
    const beatA = a.find((t) => t.name === 'beat')!;
    const beatB = b.find((t) => t.name === 'beat')!;
    const shared = beatA.cluster!;
    expect(beatB.cluster!.counts).toEqual(shared.counts);
    // Each tick once, run by one of the two kernels, and it is that kernel's own record of the run.
    const ticks = shared.history.map((r) => r.scheduledAt);
    expect(new Set(ticks).size).toBe(ticks.length);
    for (const r of shared.history) {
      // A run that took longer than a second on a loaded machine makes the next tick a skip.
      expect(['ok', 'skipped-overlap']).toContain(r.outcome);
      expect(ids.has(r.instance!)).toBe(true);
      const own = (r.instance === one.kernel.scheduler.instanceId ? beatA : beatB).history.find((x) => x.scheduledAt === r.scheduledAt);
      if (own) expect(own).toMatchObject({ outcome: r.outcome, instance: r.instance });
    }
    expect(shared.history.some((r) => r.outcome === 'ran-elsewhere')).toBe(false);
    // The shared count covers what both kernels ran, which neither one's own counts do alone.
    expect(shared.counts.ok).toBeGreaterThanOrEqual(Math.max(beatA.counts.ok, beatB.counts.ok));
    expect(shared.counts['ran-elsewhere']).toBe(0);
    // Instance-scoped tasks have no shared view.
    expect(a.find((t) => t.name === 'local')!.cluster).toBeUndefined();
    // The HTML table marks the shared view.
    const html = await (await fetch(`${two.adminUrl}/__bext/scheduler`, { headers: { accept: 'text/html' } })).text();
    expect(html).toMatch(new RegExp(`<td>${name}</td><td>beat</td>.*?\\(cluster\\)`));
  });

  it('falls back to what the instance saw, saying why, when Redis cannot be read', async () => {
    const name = uniq('noshare');
    const b = await start(['scheduler', taskPlugin(name, { schedules: { beat: { cron: '* * * * * *' } } })], { redis: { url: 'redis://127.0.0.1:1' } });
    const [t] = (await b.kernel.scheduler.clusterStatus()).filter((x) => x.plugin === name);
    expect(t!.cluster).toBeNull();
    expect(t!.clusterError).toMatch(/^redis: /);
  });

  it('skips ticks while any kernel of the cluster still runs the task (overlap skip), then runs again', async () => {
    const name = uniq('lease');
    const dir = taskPlugin(name, { schedules: { slow: { cron: '* * * * * *', timeoutMs: 10_000 } } });
    const one = await start([dir], { redis: { url: REDIS }, plugins: { [name]: { who: 'one' } } });
    const two = await start([dir], { redis: { url: REDIS }, plugins: { [name]: { who: 'two' } } });
    const skipped = () => task(one, name, 'slow').counts['skipped-overlap'] + task(two, name, 'slow').counts['skipped-overlap'];
    await until(() => g.__sched[name]?.length === 1, 5000, 'the first run');
    // Without a cluster-wide lease the idle kernel would take the next ticks and run them alongside.
    await until(() => skipped() >= 3, 8000, 'three skipped ticks');
    expect(g.__sched[name]).toHaveLength(1);
    const skips = [...task(one, name, 'slow').history, ...task(two, name, 'slow').history].filter((r) => r.outcome === 'skipped-overlap');
    expect(skips.some((r) => r.error === 'the previous run was still running on another instance')).toBe(true);
    g.__gates[name]!.shift()!();
    await until(() => g.__sched[name]!.length === 2, 5000, 'a run after the first one finished');
    g.__gates[name]!.shift()!();
    await until(() => task(one, name, 'slow').counts.ok + task(two, name, 'slow').counts.ok === 2, 5000, 'both runs to finish');
  });

  it('skips cluster ticks with lock-failed while Redis cannot be reached, and never runs them', async () => {
    const name = uniq('nolock');
    const b = await start([taskPlugin(name, { schedules: { beat: { cron: '* * * * * *' }, local: { cron: '* * * * * *', scope: 'instance' } } })], { redis: { url: 'redis://127.0.0.1:1' } });
    await until(() => task(b, name, 'beat').counts['lock-failed'] >= 2 && task(b, name, 'local').counts.ok >= 1, 8000, 'failed locks');
    expect(task(b, name, 'beat').counts.ok).toBe(0);
    expect(task(b, name, 'beat').lastFailure!.error).toMatch(/^redis: /);
    expect(g.__sched[name]!.every((r) => r.name === 'local')).toBe(true);
  });

  it('without Redis, only worker 0 of `--workers` runs cluster tasks', async () => {
    const name = uniq('workers');
    process.env.BEXT_WORKER_INDEX = '1';
    let b: Bext;
    try {
      b = await start([taskPlugin(name, { schedules: { beat: { cron: '* * * * * *' }, local: { cron: '* * * * * *', scope: 'instance' } } })]);
    } finally {
      delete process.env.BEXT_WORKER_INDEX;
    }
    await until(() => task(b, name, 'beat').counts['ran-elsewhere'] >= 1 && task(b, name, 'local').counts.ok >= 1, 5000, 'a tick of each');
    expect(task(b, name, 'beat').counts.ok).toBe(0);
    expect(task(b, name, 'beat').history[0]!.error).toMatch(/worker 0 runs cluster-scoped tasks/);
  });
});
