/**
 * `bext deploy | promote | rollback | versions`: the platform's admin API
 * from the command line (contributed through the manifest's `commands`).
 * They talk to a running server's admin listener: `--url` (default
 * BEXT_ADMIN_URL, else http://127.0.0.1:9901) and `--token` (default
 * BEXT_ADMIN_TOKEN).
 */
import { createReadStream, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { Transform } from 'node:stream';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import * as tar from 'tar';
import { request } from 'undici';
import { BextError, ERRORS, type ErrorCode } from '../../plugin-api/index.js';
import { walkTree } from './store.js';

type Out = (line: string) => void;

const COMMON = `
  --url URL        admin listener (default: BEXT_ADMIN_URL, else http://127.0.0.1:9901)
  --token TOKEN    admin token, when the admin listener needs one (default: BEXT_ADMIN_TOKEN)`;

const HELP = {
  deploy: `Usage: bext deploy <folder> --app NAME [--env ENV] [--url URL] [--token TOKEN]

Packs the folder as tar.gz (without node_modules, .git and .bext), uploads it to the server,
which builds it when it has pages/ and keeps it as an immutable version named by its content hash.
With --env, the version goes live in that environment at once. Shows upload progress and the
server's build output; exits non-zero with the error code when anything fails.
${COMMON}`,
  promote: `Usage: bext promote --app NAME --to ENV (--version ID | --from ENV) [--url URL] [--token TOKEN]

Makes a version live in ENV: the one named, or the one live in --from (staging → production).
${COMMON}`,
  rollback: `Usage: bext rollback --app NAME [--env ENV] [--to ID] [--url URL] [--token TOKEN]

Puts the version that was live before the current one back live in ENV (default production),
or the version named with --to.
${COMMON}`,
  versions: `Usage: bext versions --app NAME [--json] [--url URL] [--token TOKEN]

Lists the app's environments (hosts, live version, history) and its stored versions.
${COMMON}`,
};

function usage(msg: string, cmd: keyof typeof HELP): BextError {
  return new BextError('BEXT_ERR_CLI_USAGE', msg, { hint: `see \`bext ${cmd} --help\`` });
}

function args(cmd: keyof typeof HELP, argv: string[], options: ParseArgsConfig['options']): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    return parseArgs({
      args: argv,
      options: { help: { type: 'boolean', short: 'h' }, url: { type: 'string' }, token: { type: 'string' }, app: { type: 'string' }, ...options },
      allowPositionals: true,
      strict: true,
    }) as { values: Record<string, string | boolean | undefined>; positionals: string[] };
  } catch (e) {
    throw usage((e as Error).message, cmd);
  }
}

interface Target {
  url: string;
  headers: Record<string, string>;
}

function target(values: { url?: unknown; token?: unknown }): Target {
  const url = String(values.url ?? process.env.BEXT_ADMIN_URL ?? 'http://127.0.0.1:9901').replace(/\/+$/, '');
  const token = (values.token ?? process.env.BEXT_ADMIN_TOKEN) as string | undefined;
  return { url, headers: token ? { authorization: `Bearer ${token}` } : {} };
}

/** A server error answer as the CLI's error (exit code 1, the code first). */
function serverError(body: Record<string, unknown>, status: number): BextError {
  const code = String(body.error ?? body.code ?? '');
  const msg = String(body.message ?? `the server answered ${status}`);
  const output = Array.isArray(body.output) ? `\n${(body.output as string[]).map((l) => `| ${l}`).join('\n')}` : '';
  const hint = typeof body.hint === 'string' ? body.hint : undefined;
  if (code in ERRORS) return new BextError(code as ErrorCode, `${msg}${output}`, { ...(hint ? { hint } : {}) });
  return new BextError('BEXT_ERR_PLUGIN_FAILED', `${code || `HTTP ${status}`}: ${msg}${output}`, { ...(hint ? { hint } : {}) });
}

async function call(t: Target, method: 'GET' | 'POST', path: string, body?: unknown): Promise<Record<string, unknown>> {
  let res;
  try {
    res = await request(`${t.url}${path}`, {
      method,
      headers: { ...t.headers, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
  } catch (e) {
    throw unreachable(t, e);
  }
  const text = await res.body.text();
  let parsed: Record<string, unknown>;
  try {
    parsed = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw new BextError('BEXT_ERR_PLUGIN_FAILED', `${t.url}${path} answered ${res.statusCode} with a body that is not JSON: ${text.slice(0, 200)}`, { hint: 'is --url the admin listener of a bext server with the platform plugin?' });
  }
  if (res.statusCode >= 400) throw serverError(parsed, res.statusCode);
  return parsed;
}

function unreachable(t: Target, e: unknown): BextError {
  const err = e as NodeJS.ErrnoException & { cause?: NodeJS.ErrnoException };
  const why = err.code ?? err.cause?.code ?? err.message;
  return new BextError('BEXT_ERR_ADMIN_UNREACHABLE', `cannot reach the admin listener at ${t.url} (${why})`, { hint: 'start the server, or point --url (or BEXT_ADMIN_URL) at its admin listener' });
}

function kb(n: number): string {
  return n < 1024 ? `${n} B` : n < 1 << 20 ? `${(n / 1024).toFixed(1)} KB` : `${(n / (1 << 20)).toFixed(1)} MB`;
}

/** `bext deploy <folder> --app NAME [--env ENV]` */
export async function deploy(argv: string[], out: Out): Promise<void> {
  const a = args('deploy', argv, { env: { type: 'string' } });
  if (a.values.help) return void out(HELP.deploy);
  const folder = a.positionals[0];
  if (!folder) throw usage('deploy needs a site folder', 'deploy');
  if (!a.values.app) throw usage('deploy needs --app NAME', 'deploy');
  const dir = resolve(folder);
  if (!statSync(dir, { throwIfNoEntry: false })?.isDirectory()) throw usage(`${dir} is not a folder`, 'deploy');
  const t = target(a.values);

  const files = (await walkTree(dir)).map((e) => e.rel);
  if (!files.length) throw usage(`${dir} has no files to deploy`, 'deploy');
  const work = mkdtempSync(join(tmpdir(), 'bext-deploy-'));
  try {
    const bundle = join(work, 'site.tar.gz');
    out(`packing ${relative(process.cwd(), dir) || '.'} (${files.length} files)…`);
    await tar.c({ gzip: true, cwd: dir, file: bundle, portable: true, noDirRecurse: true }, files);
    const size = statSync(bundle).size;

    const tty = process.stdout.isTTY === true;
    let sent = 0;
    let shown = -1;
    const progress = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        sent += chunk.length;
        const pct = size ? Math.floor((sent / size) * 100) : 100;
        // A terminal redraws one line; a log gets a line per 10 %.
        if (tty ? pct !== shown : Math.floor(pct / 10) !== Math.floor(shown / 10)) {
          shown = pct;
          const line = `upload ${String(pct).padStart(3)}% (${kb(sent)} of ${kb(size)})`;
          if (tty) process.stdout.write(`\r${line}${pct === 100 ? '\n' : ''}`);
          else out(line);
        }
        cb(null, chunk);
      },
    });
    const q = new URLSearchParams({ app: String(a.values.app), ...(a.values.env ? { env: String(a.values.env) } : {}) });
    let res;
    try {
      res = await request(`${t.url}/api/platform/deploy?${q}`, {
        method: 'POST',
        headers: { ...t.headers, 'content-type': 'application/gzip', 'content-length': String(size) },
        body: createReadStream(bundle).pipe(progress),
      });
    } catch (e) {
      throw unreachable(t, e);
    }
    const type = String(res.headers['content-type'] ?? '');
    if (res.statusCode >= 400 || !type.startsWith('application/x-ndjson')) {
      const text = await res.body.text();
      let body: Record<string, unknown> = {};
      try {
        body = JSON.parse(text) as Record<string, unknown>;
      } catch {
        body = { message: text.slice(0, 200) };
      }
      throw serverError(body, res.statusCode);
    }
    let buf = '';
    let done: Record<string, unknown> | null = null;
    const handle = (line: Record<string, unknown>) => {
      switch (line.stage) {
        case 'receive':
          if (line.done) out(`server received ${kb(Number(line.bytes ?? 0))}`);
          else if (line.path) out(`server copies ${line.path}`);
          break;
        case 'hash':
          out(`version ${line.version} (${line.files} files, ${kb(Number(line.bytes ?? 0))})`);
          break;
        case 'build':
          if (line.status === 'start') out('building…');
          else if (line.status === 'done') out('build done');
          else if (typeof line.line === 'string') out(`  | ${line.line}`);
          break;
        case 'store':
          out(line.reused ? `same content as stored version ${line.version}: reused` : `stored ${line.version} (${kb(Number(line.size ?? 0))})`);
          break;
        case 'live':
          out(line.unchanged ? `${line.version} was already live in ${line.env}` : `live in ${line.env}: ${line.version}${line.previous ? ` (was ${line.previous})` : ''}`);
          break;
        case 'done':
          done = line;
          break;
        case 'error':
          throw serverError({ ...line, error: line.code }, 422);
      }
    };
    for await (const chunk of res.body) {
      buf += (chunk as Buffer).toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) !== -1) {
        const l = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (l) handle(JSON.parse(l) as Record<string, unknown>);
      }
    }
    if (buf.trim()) handle(JSON.parse(buf) as Record<string, unknown>);
    const d = done as Record<string, unknown> | null;
    if (!d) throw new BextError('BEXT_ERR_PLUGIN_FAILED', 'the server ended the deploy without a result', { hint: 'see the server log' });
    out(`deployed ${d.app} ${d.version}${d.env ? ` to ${d.env}` : ''}${d.reused ? ' (reused)' : ''}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** `bext promote --app NAME --to ENV (--version ID | --from ENV)` */
export async function promote(argv: string[], out: Out): Promise<void> {
  const a = args('promote', argv, { to: { type: 'string' }, version: { type: 'string' }, from: { type: 'string' } });
  if (a.values.help) return void out(HELP.promote);
  if (!a.values.app || !a.values.to) throw usage('promote needs --app NAME and --to ENV', 'promote');
  if (!a.values.version === !a.values.from) throw usage('promote needs exactly one of --version ID or --from ENV', 'promote');
  const r = await call(target(a.values), 'POST', '/api/platform/promote', { app: a.values.app, to: a.values.to, ...(a.values.version ? { version: a.values.version } : { from: a.values.from }) });
  out(r.unchanged ? `${r.version} was already live in ${r.env} of ${r.app}` : `promoted ${r.app} ${r.version} to ${r.env}${r.previous ? ` (was ${r.previous})` : ''}`);
}

/** `bext rollback --app NAME [--env ENV] [--to ID]` */
export async function rollback(argv: string[], out: Out): Promise<void> {
  const a = args('rollback', argv, { env: { type: 'string' }, to: { type: 'string' } });
  if (a.values.help) return void out(HELP.rollback);
  if (!a.values.app) throw usage('rollback needs --app NAME', 'rollback');
  const r = await call(target(a.values), 'POST', '/api/platform/rollback', { app: a.values.app, ...(a.values.env ? { env: a.values.env } : {}), ...(a.values.to ? { to: a.values.to } : {}) });
  out(r.unchanged ? `${r.version} was already live in ${r.env} of ${r.app}` : `rolled ${r.app} ${r.env} back to ${r.version}${r.previous ? ` (was ${r.previous})` : ''}`);
}

/** `bext versions --app NAME [--json]` */
export async function versions(argv: string[], out: Out): Promise<void> {
  const a = args('versions', argv, { json: { type: 'boolean' } });
  if (a.values.help) return void out(HELP.versions);
  if (!a.values.app) throw usage('versions needs --app NAME', 'versions');
  const r = await call(target(a.values), 'GET', `/api/platform/versions?${new URLSearchParams({ app: String(a.values.app) })}`);
  if (a.values.json) return void out(JSON.stringify(r, null, 2));
  out(`app ${r.app}`);
  out('environments:');
  for (const [env, e] of Object.entries(r.environments as Record<string, { hosts: string[]; live: string | null; history: unknown[] }>)) {
    out(`  ${env.padEnd(12)} ${(e.live ?? '(configured site)').padEnd(18)} ${e.hosts.join(', ')}`);
  }
  const vs = r.versions as { id: string; createdAt: string; files: number; size: number; built: boolean; source: string; live: string[] }[];
  out(vs.length ? 'versions (newest first):' : 'versions: none stored yet');
  for (const v of vs) out(`  ${v.id}  ${v.createdAt}  ${String(v.files).padStart(5)} files  ${kb(v.size).padStart(9)}  ${v.built ? 'built' : '     '}  ${v.source}${v.live.length ? `  live: ${v.live.join(', ')}` : ''}`);
}
