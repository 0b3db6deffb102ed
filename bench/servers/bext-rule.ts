// bext serving the 2 KB page with a fuel-metered WASM rule plugin on the request path
// (an AssemblyScript onRequest hook built with the PDK, reading method, path and user-agent).
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseConfig } from '../../kernel/config.js';
import { Logger } from '../../kernel/log.js';
import { Kernel } from '../../kernel/server.js';
import { buildWasmPlugin } from '../../sdk/build.js';

const dir = mkdtempSync(join(tmpdir(), 'bext-rule-'));
mkdirSync(join(dir, 'assembly'));
writeFileSync(join(dir, 'bext-plugin.json'), JSON.stringify({
  name: 'rule', version: '1.0.0', sandbox: 'wasm', entry: 'plugin.wasm',
  hooks: { onRequest: { priority: 5 } },
  needs: ['method', 'path', 'headers:user-agent'],
  limits: { fuel: 5_000_000, memoryMb: 16, timeoutMs: 100 },
}));
writeFileSync(join(dir, 'assembly', 'index.ts'), `
import { readRequest, respond, pass } from "@bext/pdk";
export function onRequest(): i32 {
  const req = readRequest();
  if (req.path.startsWith("/wp-admin") || req.path.includes("..")) return respond(403, "blocked").done();
  const ua = req.header("user-agent");
  if (ua !== null && ua.includes("sqlmap")) return respond(403, "blocked").done();
  return pass();
}`);
await buildWasmPlugin(dir);
const config = parseConfig({ server: { port: 0, host: '127.0.0.1' }, admin: { port: null } });
const k = await Kernel.create({ config, plugins: [{ source: `file:${dir}` }, { source: `file:${resolve(import.meta.dirname, '../fixtures/page')}` }], logger: new Logger('error') });
const { port } = await k.listen();
process.stdout.write(`LISTENING ${port}\n`);
process.on('SIGTERM', () => k.close(1000).then(() => process.exit(0)));
