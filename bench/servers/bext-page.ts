// bext serving the 2 KB page from a trusted route plugin, with N no-op onRequest plugins in front.
import { cpSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseConfig } from '../../kernel/config.js';
import { Logger } from '../../kernel/log.js';
import { Kernel, type PluginSpec } from '../../kernel/server.js';

const noops = Number(process.argv[2] ?? 0);
const fixtures = resolve(import.meta.dirname, '../fixtures');
const plugins: PluginSpec[] = [];
const tmp = mkdtempSync(join(tmpdir(), 'bext-bench-'));
for (let i = 0; i < noops; i++) {
  const dir = join(fixtures, `noop`);
  const d = join(tmp, `noop-${i}`);
  cpSync(dir, d, { recursive: true });
  writeFileSync(join(d, 'index.ts'), `export { default } from '${join(dir, 'index.ts').replace(/\\/g, '/')}';\n`);
  writeFileSync(join(d, 'bext-plugin.json'), JSON.stringify({ name: `noop-${i}`, version: '1.0.0', sandbox: 'trusted', entry: 'index.ts', hooks: { onRequest: { priority: i } } }));
  plugins.push({ source: `file:${d}` });
}
plugins.push({ source: `file:${join(fixtures, 'page')}` });
const config = parseConfig({ server: { port: 0, host: '127.0.0.1' }, admin: { port: null } });
const k = await Kernel.create({ config, plugins, logger: new Logger('error') });
const { port } = await k.listen();
process.stdout.write(`LISTENING ${port}\n`);
process.on('SIGTERM', () => k.close(1000).then(() => process.exit(0)));
