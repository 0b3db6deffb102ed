/**
 * The kernel logger on pino: JSON lines with level names, a level per
 * plugin, a destination, all from the `log` section of bext.config.json.
 * The log stream (`/__bext/logs`) sees every record whatever these levels
 * say; these tests are about what the kernel writes.
 */
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Logger } from '../../kernel/log.js';
import { startBext, type Bext } from '../../sdk/harness.js';
import { plugin, until } from '../../test/helpers.js';

const running: Bext[] = [];
afterEach(async () => {
  while (running.length) await running.pop()!.close();
});

type Configurable = Logger & { configure(c: unknown): void; setPluginLevel(p: string, l: string | null): void; flush(): Promise<void> };
const make = (opts: Record<string, unknown>) => new (Logger as unknown as new (o: Record<string, unknown>) => Configurable)(opts);

describe('kernel logger on pino', () => {
  it('writes JSON lines with level names, and honours per-plugin levels', () => {
    const lines: string[] = [];
    const seen: string[] = [];
    const log = make({ level: 'warn', plugins: { chatty: 'debug', quiet: 'error' }, sink: (l: string) => lines.push(l) });
    log.subscribe((r) => seen.push(r.msg));
    log.log('debug', 'chatty debug', { plugin: 'chatty', n: 1 });
    log.log('info', 'other info', { plugin: 'other' });
    log.log('warn', 'quiet warn', { plugin: 'quiet' });
    log.log('error', 'quiet error', { plugin: 'quiet' });
    log.warn('kernel warn');
    log.info('kernel info');
    const out = lines.map((l) => JSON.parse(l));
    expect(out.map((r) => r.msg)).toEqual(['chatty debug', 'quiet error', 'kernel warn']);
    expect(out[0]).toMatchObject({ level: 'debug', plugin: 'chatty', n: 1 });
    expect(typeof out[0].time).toBe('number');
    expect(lines.every((l) => l.endsWith('\n'))).toBe(true);
    // Subscribers see every record; they filter for themselves.
    expect(seen).toHaveLength(6);
    log.setPluginLevel('chatty', null);
    log.log('debug', 'chatty again', { plugin: 'chatty' });
    expect(lines).toHaveLength(3);
  });

  it('survives fields it cannot serialise', () => {
    const lines: string[] = [];
    const log = make({ level: 'info', sink: (l: string) => lines.push(l) });
    const loop: Record<string, unknown> = { a: 1 };
    loop.self = loop;
    log.info('circular', { loop, big: 10n as unknown as number });
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!).msg).toBe('circular');
  });

  it('takes levels per plugin and a file destination from bext.config.json', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'bext-pino-')), 'bext.log');
    const talker = (name: string) =>
      plugin(name, { routes: [{ path: `/${name}` }] }, `
export default (host) => ({ onRoute() { host.log('debug', '${name} debug'); host.log('info', '${name} info'); return { status: 200, body: 'ok' }; } });`);
    const b = await startBext({
      plugins: [{ dir: talker('loud') }, { dir: talker('calm') }],
      config: { log: { level: 'warn', plugins: { loud: 'debug' }, destination: file } } as never,
    });
    running.push(b);
    await (await fetch(`${b.url}/loud`)).text();
    await (await fetch(`${b.url}/calm`)).text();
    await (b.kernel.log as Configurable).flush();
    await until(() => readFileSync(file, 'utf8').includes('loud info'), 5000, 'log file');
    const msgs = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l).msg);
    expect(msgs).toEqual(expect.arrayContaining(['loud debug', 'loud info']));
    expect(msgs).not.toContain('calm info');
    expect(msgs).not.toContain('calm debug');
  });
});
