// bext with only the proxy plugin, forwarding everything to the upstream given as argv[2].
import { resolve } from 'node:path';
import { parseConfig } from '../../kernel/config.js';
import { Logger } from '../../kernel/log.js';
import { Kernel } from '../../kernel/server.js';

const upstream = `http://127.0.0.1:${process.argv[2]}`;
const config = parseConfig({
  server: { port: 0, host: '127.0.0.1' },
  admin: { port: null },
  plugins: { proxy: { upstreams: { app: { members: [upstream] } }, routes: [{ upstream: 'app' }] } },
});
const dir = resolve(import.meta.dirname, '../../plugins/proxy');
const k = await Kernel.create({ config, plugins: [{ source: `file:${dir}`, grants: ['metrics', 'publish:system/proxy'] }], logger: new Logger('error') });
const { port } = await k.listen();
process.stdout.write(`LISTENING ${port}\n`);
process.on('SIGTERM', () => k.close(1000).then(() => process.exit(0)));
