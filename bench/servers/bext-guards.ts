// bext serving the 2 KB page behind the full default guard stack: cors → waf → ratelimit → auth → tenant.
import { resolve } from 'node:path';
import { parseConfig } from '../../kernel/config.js';
import { Logger } from '../../kernel/log.js';
import { Kernel } from '../../kernel/server.js';

export const SECRET = 'bench-secret-of-at-least-32-bytes-long!!';
const config = parseConfig({
  server: { port: 0, host: '127.0.0.1' },
  admin: { port: null },
  plugins: {
    cors: { origins: ['https://app.example.com'], credentials: true },
    waf: {},
    ratelimit: { rules: [{ name: 'site', key: ['ip'], limit: 1_000_000_000, windowSeconds: 1 }] },
    auth: { jwt: { keys: [{ alg: 'HS256', secret: SECRET }] }, rules: [{ match: { paths: ['/**'] }, require: 'jwt' }] },
    tenant: { hosts: { '127.0.0.1': 'bench' } },
  },
});
const plugins = ['cors', 'waf', 'ratelimit', 'auth', 'tenant'].map((n) => ({ source: `builtin:${n}`, grants: ['metrics', 'publish:system/waf'] }));
plugins.push({ source: `file:${resolve(import.meta.dirname, '../fixtures/page')}`, grants: [] });
const k = await Kernel.create({ config, plugins, logger: new Logger('error') });
const { port } = await k.listen();
process.stdout.write(`LISTENING ${port}\n`);
process.on('SIGTERM', () => k.close(1000).then(() => process.exit(0)));
