/** `npm run bench -- <name>`: runs bench/<name>.ts (every benchmark prints its own ratios). */
import { existsSync, readdirSync } from 'node:fs';
import { spawnSync } from 'node:child_process';

const names = process.argv.slice(2);
// Helper scripts (load generators) are not benchmarks of their own.
const all = readdirSync('bench').filter((f) => f.endsWith('.ts') && !['run.ts', 'lib.ts'].includes(f) && !f.endsWith('-load.ts')).map((f) => f.slice(0, -3));
if (!names.length) {
  console.log(`usage: npm run bench -- <${all.join('|')}>`);
  process.exit(1);
}
for (const n of names) {
  const file = `bench/${n}.ts`;
  if (!existsSync(file)) {
    console.error(`no benchmark ${n} (have: ${all.join(', ')})`);
    process.exit(1);
  }
  const r = spawnSync(process.execPath, ['--import', 'tsx', file], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
