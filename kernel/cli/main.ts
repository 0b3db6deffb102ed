/**
 * The `bext` command line. Every command prints what it did, exits non-zero
 * with a one-line reason on failure, and answers `--help`.
 */
import { cpSync, existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { createInterface } from 'node:readline/promises';
import { pathToFileURL } from 'node:url';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import cluster from 'node:cluster';
import { BextError, CAPABILITIES, SANDBOX_KINDS, type SandboxKind } from '../../plugin-api/index.js';
import { clusterWorker, parseWorkers, runPrimary, runWorker } from '../cluster.js';
import { loadConfig, type BextConfig } from '../config.js';
import { computeIntegrity } from '../integrity.js';
import { readLock, writeLock, type LockEntry } from '../lock.js';
import { Logger } from '../log.js';
import { BEXT_ROOT, BUILTIN_DIR, locatePlugin } from '../manifest.js';
import { Kernel } from '../server.js';

const out = (s: string) => process.stdout.write(`${s}\n`);

class UsageError extends BextError {
  constructor(msg: string) {
    super('BEXT_ERR_CLI_USAGE', msg, { hint: 'see `bext --help`' });
  }
}

const HELP: Record<string, string> = {
  main: `bext — a web server in which every feature is a plugin

Usage: bext <command> [options]

Commands:
  run [dir]                 serve a site folder (zero-config: dir/public + the locked plugins)
  restart                   restart a running \`bext run\` (its workers one by one)
  plugin add <name|path>    lock a builtin plugin, a plugin folder or a .wasm file
  plugin remove <name>      remove a plugin from plugins.lock.json
  plugin list               list locked plugins (--available: the builtin ones)
  plugin verify             check every locked plugin against its integrity
  plugin new <name>         scaffold a plugin (--sandbox trusted|wasm|quickjs|isolate|process)
  plugin build [dir]        build a WASM plugin from AssemblyScript
  config check              validate bext.config.json and the plugin sections
  routes [dir]              print the effective chains for a host and path

Run \`bext <command> --help\` for a command's options.`,
  run: `Usage: bext run [dir] [--port N] [--host H] [--config FILE] [--lock FILE] [--admin-port N] [--no-watch]
                    [--workers N|auto] [--pid-file FILE]

Serves dir (default .). The config file and the lock are watched: a change is loaded beside the
running plugin set and swapped in atomically; a bad change is refused and the old set keeps serving. Config: --config, else dir/bext.config.json, else ./bext.config.json, else
the embedded defaults. Plugins: --lock, else dir/plugins.lock.json, else ./plugins.lock.json, else
bext's own default composition. SIGINT/SIGTERM drain in-flight requests, then stop. SIGHUP reloads
the config and the lock (one process) or restarts the workers (--workers).

--workers N|auto  cluster mode: N worker processes (auto: one per core) share the listeners; each
                  runs the plugins on its own, so state they must share needs redis.url. A worker
                  that crashes is restarted (backoff doubling from 0.1 s to 30 s). SIGHUP (or
                  \`bext restart\`) replaces the workers one by one, each new one listening before
                  the old one drains: no request is lost. Workers see BEXT_WORKER_INDEX (0..N-1,
                  kept by a slot's replacements) and BEXT_WORKERS; their log lines carry "worker".
--pid-file FILE   write the pid of the process to signal (the primary in cluster mode) to FILE.`,
  restart: `Usage: bext restart [--pid-file FILE]

Sends SIGHUP to the bext whose pid is in FILE (default ./bext.pid, as written by
\`bext run --pid-file\`): with --workers, it replaces its workers one by one, with no downtime;
without, it reloads the config and the lock.`,
  'plugin add': `Usage: bext plugin add <builtin-name | ./folder | ./plugin.wasm> [--yes | --grant CAP... | --grant-none] [--scope global|group] [--lock FILE]

Validates the manifest, shows the capabilities it asks for and asks to grant them (--yes grants them
all without asking; --grant grants only the ones named; --grant-none grants nothing), computes its
integrity and writes plugins.lock.json in the current folder.`,
  'plugin remove': 'Usage: bext plugin remove <name> [--lock FILE]',
  'plugin list': 'Usage: bext plugin list [--available] [--lock FILE]',
  'plugin verify': `Usage: bext plugin verify [--lock FILE]

Exits non-zero when any locked plugin's files no longer match its integrity.`,
  'plugin new': `Usage: bext plugin new <name> [--sandbox trusted|wasm|quickjs|isolate|process] [--dir DIR]

Scaffolds a working plugin with a test in DIR/<name> (default ./plugins/<name>).`,
  'plugin build': `Usage: bext plugin build [dir]

Compiles dir/assembly/index.ts with AssemblyScript and the bext PDK into dir/plugin.wasm.`,
  'config check': 'Usage: bext config check [--config FILE] [--lock FILE]\n\nValidates the config against the schema and every locked plugin\'s configSchema.',
  routes: 'Usage: bext routes [dir] [--host H] [--path P] [--method M] [--config FILE] [--lock FILE]\n\nPrints the route group, app and limits, and the effective hook chains for a request. Without --host or --path it first lists every group in matching order.',
};

function args(argv: string[], options: ParseArgsConfig['options']): { values: Record<string, string | boolean | string[] | undefined>; positionals: string[] } {
  try {
    return parseArgs({ args: argv, options: { help: { type: 'boolean', short: 'h' }, ...options }, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

function findLock(dir: string, explicit?: string): string {
  if (explicit) return resolve(explicit);
  for (const c of [join(dir, 'plugins.lock.json'), resolve('plugins.lock.json')]) if (existsSync(c)) return c;
  return join(BEXT_ROOT, 'plugins.lock.json');
}

function findConfig(dir: string, explicit?: string): string | undefined {
  if (explicit) {
    if (!existsSync(explicit)) throw new BextError('BEXT_ERR_CONFIG_INVALID', `config file ${explicit} does not exist`);
    return resolve(explicit);
  }
  for (const c of [join(dir, 'bext.config.json'), resolve('bext.config.json')]) if (existsSync(c)) return c;
  return undefined;
}

async function cmdRun(argv: string[]) {
  const a = args(argv, { port: { type: 'string', short: 'p' }, host: { type: 'string' }, config: { type: 'string', short: 'c' }, lock: { type: 'string' }, 'admin-port': { type: 'string' }, 'no-watch': { type: 'boolean' }, workers: { type: 'string', short: 'w' }, 'pid-file': { type: 'string' } });
  if (a.values.help) return void out(HELP.run!);
  const dir = resolve(a.positionals[0] ?? '.');
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new UsageError(`${dir} is not a folder`);
  const configFile = findConfig(dir, a.values.config as string | undefined);
  const config: BextConfig = loadConfig(configFile);
  const num = (v: unknown, name: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0 || n > 65535) throw new UsageError(`--${name} expects a port number, got ${String(v)}`);
    return n;
  };
  if (a.values.port !== undefined) config.server.port = num(a.values.port, 'port');
  else if (process.env.PORT) config.server.port = num(process.env.PORT, 'port');
  if (a.values.host !== undefined) config.server.host = String(a.values.host);
  if (a.values['admin-port'] !== undefined) config.admin.port = num(a.values['admin-port'], 'admin-port');
  const lockFile = findLock(dir, a.values.lock as string | undefined);
  const pidFile = a.values['pid-file'] !== undefined ? resolve(String(a.values['pid-file'])) : undefined;
  const site = relative(process.cwd(), dir) || '.';
  const plugins = (k: Kernel) => k.plugins().map((p) => `${p.name}@${p.version}[${p.sandbox}]`).join(', ') || 'none';
  if (a.values.workers !== undefined && cluster.isPrimary) {
    const workers = parseWorkers(String(a.values.workers));
    const code = await runPrimary({ workers, config, siteLabel: site, pidFile, log: new Logger({ fields: { role: 'primary' } }), out, err: (l) => process.stderr.write(`${l}\n`) });
    process.exit(code);
  }
  const worker = clusterWorker();
  if (worker) {
    if (worker.port !== undefined) config.server.port = worker.port;
    if (worker.adminPort !== undefined) config.admin.port = worker.adminPort;
    const logger = new Logger({ fields: { worker: worker.index } });
    return runWorker(async () => {
      const kernel = await Kernel.create({ config, configFile, lockFile, siteDir: dir, logger });
      const { port, adminPort } = await kernel.listen();
      if (!a.values['no-watch']) kernel.watch();
      return { kernel, port, adminPort, plugins: `${plugins(kernel)} (from ${relative(process.cwd(), lockFile) || lockFile})` };
    }, errorText, logger);
  }
  const kernel = await Kernel.create({ config, configFile, lockFile, siteDir: dir, logger: new Logger() });
  const { port, adminPort } = await kernel.listen();
  if (!a.values['no-watch']) kernel.watch();
  if (pidFile) writeFileSync(pidFile, `${process.pid}\n`);
  out(`bext serving ${site} on http://${config.server.host === '0.0.0.0' ? '127.0.0.1' : config.server.host}:${port}` + (adminPort !== null ? ` (admin on http://${config.admin.host}:${adminPort})` : ''));
  out(`plugins: ${plugins(kernel)} (from ${relative(process.cwd(), lockFile) || lockFile})`);
  let stopping = false;
  const stop = (sig: string) => {
    if (stopping) return;
    stopping = true;
    out(`${sig}: draining ${kernel.inflight} in-flight request(s)…`);
    kernel.close().then(
      () => {
        if (pidFile) rmSync(pidFile, { force: true });
        process.exit(0);
      },
      () => process.exit(1),
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  // One process has no workers to replace: SIGHUP (`bext restart`) reloads the config and the lock.
  process.on('SIGHUP', () => void kernel.reload());
}

async function cmdRestart(argv: string[]) {
  const a = args(argv, { 'pid-file': { type: 'string' } });
  if (a.values.help) return void out(HELP.restart!);
  const file = resolve(String(a.values['pid-file'] ?? 'bext.pid'));
  if (!existsSync(file)) throw new UsageError(`no pid file at ${file}: start bext with \`bext run --pid-file ${relative(process.cwd(), file) || file}\`, or pass the one it writes with --pid-file`);
  const pid = Number(readFileSync(file, 'utf8').trim());
  if (!Number.isInteger(pid) || pid <= 0) throw new UsageError(`${file} does not hold a pid`);
  try {
    process.kill(pid, 'SIGHUP');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') throw new UsageError(`no process ${pid} (from ${file}): bext is not running, or the pid file is stale`);
    throw e;
  }
  out(`sent SIGHUP to bext (pid ${pid}): its workers restart one by one (one process: it reloads its config and lock)`);
}

async function confirm(question: string): Promise<boolean> {
  if (!process.stdin.isTTY) return false;
  const rl = createInterface({ input: process.stdin, output: process.stdout });
  try {
    return /^y(es)?$/i.test((await rl.question(question)).trim());
  } finally {
    rl.close();
  }
}

function sourceFor(spec: string): string {
  if (spec.startsWith('builtin:') || spec.startsWith('file:')) return spec;
  if (/^[a-z][a-z0-9-]*$/.test(spec) && !existsSync(spec)) return `builtin:${spec}`;
  return `file:${spec}`;
}

async function cmdPluginAdd(argv: string[]) {
  const a = args(argv, { yes: { type: 'boolean', short: 'y' }, grant: { type: 'string', multiple: true }, 'grant-none': { type: 'boolean' }, scope: { type: 'string' }, lock: { type: 'string' } });
  if (a.values.help) return void out(HELP['plugin add']!);
  if (a.values['grant-none'] && (a.values.yes || a.values.grant)) throw new UsageError('--grant-none cannot be combined with --yes or --grant');
  const spec = a.positionals[0];
  if (!spec) throw new UsageError('plugin add needs a builtin name, a folder or a .wasm file');
  const lockFile = resolve((a.values.lock as string | undefined) ?? 'plugins.lock.json');
  const base = dirname(lockFile);
  const loc = locatePlugin(sourceFor(spec), base);
  const m = loc.manifest;
  const asked = m.capabilities ?? [];
  const explicit = a.values.grant as string[] | undefined;
  for (const g of explicit ?? []) {
    if (!asked.includes(g)) throw new UsageError(`--grant ${g}: plugin "${m.name}" does not ask for it (it asks for: ${asked.join(', ') || 'nothing'})`);
  }
  out(`${m.name}@${m.version} (${m.sandbox}) from ${loc.source}`);
  let grants: string[] = [];
  if (asked.length) {
    out('asks for:');
    for (const c of asked) {
      const fam = c.split(':')[0] as keyof typeof CAPABILITIES;
      out(`  ${c.padEnd(28)} ${CAPABILITIES[fam]?.doc ?? ''}`);
    }
    if (explicit) grants = explicit;
    else if (a.values['grant-none']) grants = [];
    else if (a.values.yes) grants = asked;
    else if (await confirm('grant all of these? [y/N] ')) grants = asked;
    else if (!process.stdin.isTTY) throw new UsageError('capabilities need a decision: pass --yes to grant them all, --grant <cap> for each one to grant, or --grant-none');
    else out('granting none');
  }
  const scope = a.values.scope as string | undefined;
  if (scope && scope !== 'global' && scope !== 'group') throw new UsageError(`--scope expects global or group, got ${scope}`);
  const lock = readLock(lockFile);
  const existing = lock.plugins.find((p) => p.name === m.name);
  if (existing && existing.source !== loc.source) {
    throw new BextError('BEXT_ERR_PLUGIN_DUPLICATE', `plugin name "${m.name}" is already locked from ${existing.source}`, { hint: `remove it first with \`bext plugin remove ${m.name}\`` });
  }
  const entry: LockEntry = {
    name: m.name,
    source: loc.source,
    version: m.version,
    sandbox: m.sandbox,
    integrity: computeIntegrity(loc.root),
    capabilities: grants,
    order: existing?.order ?? Math.max(0, ...lock.plugins.map((p) => p.order)) + 1,
    ...(scope === 'group' || existing?.scope === 'group' ? { scope: (scope ?? existing?.scope) as 'group' } : {}),
  };
  lock.plugins = [...lock.plugins.filter((p) => p.name !== m.name), entry];
  writeLock(lockFile, lock);
  out(`${existing ? 'updated' : 'added'} ${m.name} in ${relative(process.cwd(), lockFile) || lockFile}: ${entry.integrity}, granted ${grants.length ? grants.join(', ') : 'no capabilities'}`);
}

async function cmdPluginRemove(argv: string[]) {
  const a = args(argv, { lock: { type: 'string' } });
  if (a.values.help) return void out(HELP['plugin remove']!);
  const name = a.positionals[0];
  if (!name) throw new UsageError('plugin remove needs a plugin name');
  const lockFile = resolve((a.values.lock as string | undefined) ?? 'plugins.lock.json');
  const lock = readLock(lockFile);
  if (!lock.plugins.some((p) => p.name === name)) throw new BextError('BEXT_ERR_PLUGIN_NOT_FOUND', `no plugin "${name}" in ${lockFile}`, { hint: '`bext plugin list` shows the locked plugins' });
  lock.plugins = lock.plugins.filter((p) => p.name !== name);
  writeLock(lockFile, lock);
  out(`removed ${name} from ${relative(process.cwd(), lockFile) || lockFile}`);
}

async function cmdPluginList(argv: string[]) {
  const a = args(argv, { available: { type: 'boolean' }, lock: { type: 'string' } });
  if (a.values.help) return void out(HELP['plugin list']!);
  if (a.values.available) {
    for (const n of readdirSync(BUILTIN_DIR).sort()) {
      const f = join(BUILTIN_DIR, n, 'bext-plugin.json');
      if (!existsSync(f)) continue;
      const m = JSON.parse(readFileSync(f, 'utf8')) as { version: string; sandbox: string; description?: string };
      out(`${n.padEnd(12)} ${m.version.padEnd(8)} ${m.sandbox.padEnd(8)} ${m.description ?? ''}`);
    }
    return;
  }
  const lockFile = findLock(process.cwd(), a.values.lock as string | undefined);
  const lock = readLock(lockFile);
  out(`${relative(process.cwd(), lockFile) || lockFile}:`);
  for (const p of [...lock.plugins].sort((x, y) => x.order - y.order)) {
    out(`${String(p.order).padStart(3)} ${p.name.padEnd(12)} ${p.version.padEnd(8)} ${p.sandbox.padEnd(8)} ${p.source}  caps: ${p.capabilities.join(', ') || '-'}${p.scope === 'group' ? '  (group)' : ''}`);
  }
}

async function cmdPluginVerify(argv: string[]) {
  const a = args(argv, { lock: { type: 'string' } });
  if (a.values.help) return void out(HELP['plugin verify']!);
  const lockFile = findLock(process.cwd(), a.values.lock as string | undefined);
  const lock = readLock(lockFile);
  let bad = 0;
  for (const p of lock.plugins) {
    let actual: string;
    try {
      actual = computeIntegrity(locatePlugin(p.source, dirname(lockFile)).root);
    } catch (e) {
      bad++;
      out(`FAIL ${p.name}: ${(e as Error).message}`);
      continue;
    }
    if (actual === p.integrity) out(`ok   ${p.name} ${p.integrity}`);
    else {
      bad++;
      out(`FAIL ${p.name}: locked ${p.integrity}, files now ${actual}`);
    }
  }
  if (bad) throw new BextError('BEXT_ERR_LOCK_INTEGRITY', `${bad} plugin(s) no longer match plugins.lock.json`, { hint: 're-lock changed plugins with `bext plugin add`' });
  out(`${lock.plugins.length} plugin(s) verified`);
}

async function cmdPluginNew(argv: string[]) {
  const a = args(argv, { sandbox: { type: 'string', short: 's' }, dir: { type: 'string' } });
  if (a.values.help) return void out(HELP['plugin new']!);
  const name = a.positionals[0];
  if (!name || !/^[a-z][a-z0-9-]{0,63}$/.test(name)) throw new UsageError('plugin new needs a name of lower-case letters, digits and dashes');
  const kind = ((a.values.sandbox as string | undefined) ?? 'trusted') as SandboxKind;
  if (!SANDBOX_KINDS.includes(kind)) throw new UsageError(`--sandbox expects one of ${SANDBOX_KINDS.join(', ')}, got ${kind}`);
  const template = join(BEXT_ROOT, 'sdk', 'templates', kind);
  if (!existsSync(template)) throw new BextError('BEXT_ERR_PLUGIN_NOT_FOUND', `no template for sandbox "${kind}" in ${template}`);
  const target = resolve((a.values.dir as string | undefined) ?? 'plugins', name);
  if (existsSync(target)) throw new UsageError(`${target} already exists`);
  cpSync(template, target, { recursive: true });
  const rewrite = (d: string) => {
    for (const ent of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, ent.name);
      if (ent.isDirectory()) rewrite(p);
      else if (/\.(json|ts|js|mjs|md)$/.test(ent.name)) {
        const s = readFileSync(p, 'utf8');
        const rel = relative(d, BEXT_ROOT).split('\\').join('/');
        if (s.includes('__NAME__') || s.includes('__BEXT__')) writeFileSync(p, s.replaceAll('__NAME__', name).replaceAll('__BEXT__', rel));
      }
    }
  };
  rewrite(target);
  out(`created ${relative(process.cwd(), target)} (${kind}) with ${readdirSync(target).join(', ')}`);
  if (kind === 'wasm') out(`next: bext plugin build ${relative(process.cwd(), target)} && bext plugin add ${relative(process.cwd(), target)}`);
  else out(`next: bext plugin add ./${relative(process.cwd(), target)}`);
}

async function cmdPluginBuild(argv: string[]) {
  const a = args(argv, {});
  if (a.values.help) return void out(HELP['plugin build']!);
  const dir = resolve(a.positionals[0] ?? '.');
  out(`building ${relative(process.cwd(), dir) || '.'} with AssemblyScript…`);
  const { buildWasmPlugin } = await import('../../sdk/build.js');
  // The module is written where the manifest's entry says, when there is a manifest.
  const mf = join(dir, 'bext-plugin.json');
  const entry = existsSync(mf) ? (JSON.parse(readFileSync(mf, 'utf8')) as { entry?: string }).entry : undefined;
  const r = await buildWasmPlugin(dir, entry?.endsWith('.wasm') ? { outFile: entry } : {});
  out(`wrote ${relative(process.cwd(), r.wasmPath)} (${r.bytes} bytes)`);
}

async function cmdConfigCheck(argv: string[]) {
  const a = args(argv, { config: { type: 'string', short: 'c' }, lock: { type: 'string' } });
  if (a.values.help) return void out(HELP['config check']!);
  const configFile = findConfig(process.cwd(), a.values.config as string | undefined);
  const config = loadConfig(configFile);
  const lockFile = findLock(process.cwd(), a.values.lock as string | undefined);
  // Loading validates every plugin section; nothing listens.
  const k = await Kernel.create({ config, configFile, lockFile, logger: new Logger('error') });
  await k.close(0);
  out(`${configFile ? relative(process.cwd(), configFile) : 'embedded defaults'}: valid (${k.plugins().length === 0 ? readLock(lockFile).plugins.length : k.plugins().length} plugins from ${relative(process.cwd(), lockFile) || lockFile})`);
}

async function cmdRoutes(argv: string[]) {
  const a = args(argv, { host: { type: 'string' }, path: { type: 'string' }, method: { type: 'string' }, config: { type: 'string' }, lock: { type: 'string' } });
  if (a.values.help) return void out(HELP.routes!);
  const dir = resolve(a.positionals[0] ?? '.');
  const configFile = findConfig(dir, a.values.config as string | undefined);
  const lockFile = findLock(dir, a.values.lock as string | undefined);
  const k = await Kernel.create({ config: loadConfig(configFile), configFile, lockFile, siteDir: dir, logger: new Logger('error') });
  const d = k.describe(String(a.values.host ?? 'localhost'), String(a.values.path ?? '/'), String(a.values.method ?? 'GET'));
  const groups = k.listGroups();
  await k.close(0);
  if (a.values.host === undefined && a.values.path === undefined && groups.length > 1) {
    out('groups, in matching order:');
    for (const g of groups) out(`  ${g.name.padEnd(20)} ${g.app ? `[app ${g.app.name}, ${g.app.env}] ` : ''}${g.plugins.join(', ') || '-'}`);
    out('');
    out('for GET / on localhost (choose with --host, --path, --method):');
  }
  out(`group: ${d.group}`);
  if (d.app) out(`app:   ${d.app.name} (${d.app.env}${d.app.version ? `, version ${d.app.version}` : ''})`);
  if (d.limits) out(`limits: ${Object.entries(d.limits).map(([k, v]) => `${k}=${v}`).join(' ')}`);
  out(`route: ${d.route ?? '(none: catch-all onRender)'}`);
  for (const [hook, names] of Object.entries(d.chains)) out(`${hook.padEnd(11)} ${names.join(' → ') || '-'}`);
}

/**
 * Commands plugins contribute through their manifest's `commands`: those of
 * the locked plugins first, then the builtin ones.
 */
function contributedCommands(): { name: string; plugin: string; module: string; export: string; description: string }[] {
  const dirs: string[] = [];
  try {
    const lockFile = findLock(process.cwd());
    for (const e of readLock(lockFile).plugins) {
      try {
        const loc = locatePlugin(e.source, dirname(lockFile));
        if (loc.manifest.sandbox === 'trusted') dirs.push(loc.root);
      } catch {
        // A broken lock entry is reported by the commands that load it.
      }
    }
  } catch {
    // No readable lock: builtin commands only.
  }
  if (existsSync(BUILTIN_DIR)) for (const n of readdirSync(BUILTIN_DIR).sort()) dirs.push(join(BUILTIN_DIR, n));
  const out: { name: string; plugin: string; module: string; export: string; description: string }[] = [];
  for (const d of dirs) {
    const f = join(d, 'bext-plugin.json');
    if (!existsSync(f)) continue;
    const m = JSON.parse(readFileSync(f, 'utf8')) as { name: string; sandbox: string; commands?: Record<string, { module: string; export: string; description: string }> };
    if (m.sandbox !== 'trusted') continue;
    for (const [name, c] of Object.entries(m.commands ?? {})) out.push({ name, plugin: m.name, module: join(d, c.module), export: c.export, description: c.description });
  }
  return out;
}

function findCommand(name: string) {
  return contributedCommands().find((c) => c.name === name);
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    if (!cmd || cmd === '--help' || cmd === '-h' || cmd === 'help') {
      out(HELP.main!);
      const extra = contributedCommands().filter((c, i, all) => all.findIndex((x) => x.name === c.name) === i);
      if (extra.length) {
        out('\nCommands from plugins:');
        for (const c of extra) out(`  ${c.name.padEnd(24)}  ${c.description} (${c.plugin})`);
      }
      return 0;
    }
    if (cmd === 'run') await cmdRun(rest);
    else if (cmd === 'restart') await cmdRestart(rest);
    else if (cmd === 'plugin') {
      const [sub, ...r] = rest;
      const table: Record<string, (a: string[]) => Promise<void>> = { add: cmdPluginAdd, remove: cmdPluginRemove, list: cmdPluginList, verify: cmdPluginVerify, new: cmdPluginNew, build: cmdPluginBuild };
      const fn = sub ? table[sub] : undefined;
      if (!fn) throw new UsageError(`unknown plugin command ${JSON.stringify(sub ?? '')} (expected ${Object.keys(table).join(', ')})`);
      await fn(r);
    } else if (cmd === 'config') {
      if (rest[0] !== 'check') throw new UsageError(`unknown config command ${JSON.stringify(rest[0] ?? '')} (expected check)`);
      await cmdConfigCheck(rest.slice(1));
    } else if (cmd === 'routes') await cmdRoutes(rest);
    else {
      const contributed = findCommand(cmd);
      if (!contributed) throw new UsageError(`unknown command ${JSON.stringify(cmd)}`);
      const mod = (await import(pathToFileURL(contributed.module).href)) as Record<string, unknown>;
      const fn = mod[contributed.export];
      if (typeof fn !== 'function') throw new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "${contributed.plugin}" declares command ${cmd} as ${contributed.export} in ${contributed.module}, which is not a function`);
      await (fn as (a: string[], o: (l: string) => void) => Promise<void>)(rest, out);
    }
    return 0;
  } catch (e) {
    process.stderr.write(`${errorText(e)}\n`);
    return 1;
  }
}

/** An error as the CLI prints it: `bext: CODE: message — hint`, further lines indented. */
function errorText(e: unknown): string {
  if (!(e instanceof BextError)) return `bext: ${(e as Error)?.stack ?? String(e)}`;
  const [first, ...more] = e.message.split('\n');
  const lines = [`bext: ${e.code}: ${first}${more.length ? '' : e.hint ? ` — ${e.hint}` : ''}`, ...more.map((l) => `  ${l}`)];
  if (more.length && e.hint) lines.push(`  ${e.hint}`);
  return lines.join('\n');
}

const isMain = process.argv[1] && resolve(process.argv[1]).replace(/\.[cm]?[jt]s$/, '') === resolve(dirname(new URL(import.meta.url).pathname), 'main');
if (isMain || process.env.BEXT_CLI === '1') {
  main(process.argv.slice(2)).then((code) => {
    if (code !== 0) process.exit(code);
  });
}


