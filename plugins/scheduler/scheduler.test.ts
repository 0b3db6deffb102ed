import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TaskStatus } from '../../plugin-api/index.js';
import { startBext, type Bext } from '../../sdk/harness.js';
import { plugin, until } from '../../test/helpers.js';

const name = `jobs-${randomBytes(4).toString('hex')}`;
const g = globalThis as unknown as { __jobs: { name: string; scheduledAt: number }[] };
g.__jobs = [];

let b: Bext;
beforeAll(async () => {
  // A task that only runs by hand (Feb 30th never comes) and one that fails every second.
  const jobs = plugin(name, { schedules: { manual: { cron: '0 0 0 30 2 *' }, broken: { cron: '* * * * * *', scope: 'instance' } }, limits: { quarantineAfter: 100 } }, `
export default () => ({
  onSchedule(task) {
    globalThis.__jobs.push(task);
    if (task.name === 'broken') throw new Error('<broken on purpose>');
  },
});`);
  b = await startBext({ plugins: ['scheduler', jobs], config: { admin: { token: 'sched-token-123456' } } });
});
afterAll(() => b?.close());

const list = async (): Promise<TaskStatus[]> => {
  const r = await fetch(`${b.adminUrl}/__bext/scheduler`);
  expect(r.status).toBe(200);
  return ((await r.json()) as { tasks: TaskStatus[] }).tasks;
};

describe('scheduler plugin', () => {
  it('lists tasks with their next run and failures on the admin listener', async () => {
    await until(async () => ((await list()).find((t) => t.name === 'broken')?.failures ?? 0) >= 1, 5000, 'a failed run');
    const tasks = await list();
    const manual = tasks.find((t) => t.plugin === name && t.name === 'manual')!;
    expect(manual).toMatchObject({ cron: '0 0 0 30 2 *', nextRun: null, lastRun: null, scope: 'cluster', overlap: 'skip' });
    const broken = tasks.find((t) => t.plugin === name && t.name === 'broken')!;
    expect(broken.nextRun).toBeGreaterThan(Date.now() - 1000);
    expect(broken.lastFailure).toMatchObject({ outcome: 'error', error: expect.stringContaining('<broken on purpose>') });
  });

  it('refuses the public listener without the admin token', async () => {
    expect((await fetch(`${b.url}/__bext/scheduler`)).status).toBe(403);
    const r = await fetch(`${b.url}/__bext/scheduler`, { headers: { authorization: 'Bearer sched-token-123456' } });
    expect(r.status).toBe(200);
    expect((await fetch(`${b.url}/__bext/scheduler/run?plugin=${name}&task=manual`, { method: 'POST' })).status).toBe(403);
  });

  it('serves an HTML table, with task data escaped', async () => {
    const r = await fetch(`${b.adminUrl}/__bext/scheduler`, { headers: { accept: 'text/html' } });
    expect(r.headers.get('content-type')).toMatch(/^text\/html/);
    const html = await r.text();
    expect(html).toContain(`<td>${name}</td><td>manual</td>`);
    expect(html).toContain('&#60;broken on purpose&#62;');
    expect(html).not.toContain('<broken on purpose>');
  });

  it('runs a task by hand and reports the run', async () => {
    const r = await fetch(`${b.adminUrl}/__bext/scheduler/run?plugin=${name}&task=manual`, { method: 'POST' });
    expect(r.status).toBe(200);
    const j = (await r.json()) as { run: { outcome: string; trigger: string; scheduledAt: number } };
    expect(j.run).toMatchObject({ outcome: 'ok', trigger: 'manual' });
    expect(g.__jobs.filter((t) => t.name === 'manual')).toHaveLength(1);
    expect((await list()).find((t) => t.name === 'manual')!.lastRun).toMatchObject({ outcome: 'ok', trigger: 'manual' });
    const missing = await fetch(`${b.adminUrl}/__bext/scheduler/run?plugin=${name}&task=nope`, { method: 'POST' });
    expect(missing.status).toBe(404);
    expect(await missing.json()).toMatchObject({ error: 'BEXT_ERR_SCHEDULE_NOT_FOUND' });
    const bad = await fetch(`${b.adminUrl}/__bext/scheduler/run`, { method: 'POST' });
    expect(bad.status).toBe(400);
    expect(await bad.json()).toMatchObject({ error: 'BEXT_ERR_QUERY_INVALID' });
  });
});
