// bext serving the 2 KB page with N hosted apps (hostname routing) and optional group limits.
import { resolve } from 'node:path';
import { parseConfig } from '../../kernel/config.js';
import { Logger } from '../../kernel/log.js';
import { Kernel } from '../../kernel/server.js';

const apps = Number(process.argv[2] ?? 0);
const limited = process.argv[3] === 'limits';
const fixtures = resolve(import.meta.dirname, '../fixtures');
const config = parseConfig({
  server: { port: 0, host: '127.0.0.1' },
  admin: { port: null },
  apps: Array.from({ length: apps }, (_, i) => ({
    name: `app${i}`,
    hosts: [`app${i}.test`, `www.app${i}.test`],
    ...(limited ? { limits: { maxInflight: 10_000, requestsPerSecond: 1e9, burst: 1e9 } } : {}),
  })),
});
const k = await Kernel.create({ config, plugins: [{ source: `file:${resolve(fixtures, 'page')}` }], logger: new Logger('error') });
const { port } = await k.listen();
process.stdout.write(`LISTENING ${port}\n`);
process.on('SIGTERM', () => k.close(1000).then(() => process.exit(0)));
