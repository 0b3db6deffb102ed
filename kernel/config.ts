/**
 * `bext.config.json`: parsed, validated against the published schema and
 * each plugin's configSchema. An error names the file, the JSON path, what
 * was expected and what was found.
 */
import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import addFormatsModule from 'ajv-formats';
import { BextError } from '../plugin-api/index.js';

/** Caps the kernel applies to one group's requests before any plugin runs. */
export interface GroupLimits {
  /** Requests served at once; beyond it, 503 BEXT_ERR_GROUP_OVERLOADED. */
  maxInflight?: number;
  /** Sustained rate for the whole group; beyond it, 429 BEXT_ERR_GROUP_RATE_LIMITED. */
  requestsPerSecond?: number;
  burst?: number;
  /** Largest request body for this group (replaces server.bodyLimit). */
  bodyBytes?: number;
}

/**
 * A route group (middleware group): a plugin set for requests matching
 * hosts and paths, with optional per-plugin configuration and limits.
 *
 * @example
 * ```json
 * { "name": "api", "paths": ["/api/**"], "remove": ["ssr"], "add": ["auth"],
 *   "plugins": { "ratelimit": { "rate": 50 } }, "limits": { "maxInflight": 200 } }
 * ```
 */
export interface GroupConfig {
  name: string;
  hosts?: string[];
  paths?: string[];
  only?: string[];
  add?: string[];
  remove?: string[];
  /** Plugin configuration for this group only, merged over the top-level section. */
  plugins?: Record<string, Record<string, unknown>>;
  limits?: GroupLimits;
}

/** One environment of an app: its hosts and, optionally, its own site or upstream. */
export interface AppEnvironmentConfig {
  hosts: string[];
  site?: string;
  proxy?: string;
}

/**
 * An app hosted by hostname: a site folder or a proxy target, with its own
 * plugin set, configuration, cache namespace and limits. `hosts` are the
 * production hosts; `environments` adds others (staging…).
 *
 * @example
 * ```json
 * { "name": "blog", "hosts": ["blog.example.com"], "site": "./sites/blog",
 *   "environments": { "staging": { "hosts": ["staging.blog.example.com"] } },
 *   "limits": { "requestsPerSecond": 500 } }
 * ```
 */
export interface AppConfig {
  name: string;
  hosts: string[];
  site?: string;
  proxy?: string;
  environments?: Record<string, AppEnvironmentConfig>;
  only?: string[];
  add?: string[];
  remove?: string[];
  plugins?: Record<string, Record<string, unknown>>;
  limits?: GroupLimits;
}

export interface BextConfig {
  server: {
    port: number;
    host: string;
    bodyLimit: number;
    headersTimeoutMs: number;
    requestTimeoutMs: number;
    keepAliveTimeoutMs: number;
    shutdownTimeoutMs: number;
    maxHeaderBytes: number;
  };
  admin: { port: number | null; host: string; token?: string };
  /** Structured logs: server level, per-plugin levels, destination. */
  log?: import('./log.js').LogConfig;
  redis?: { url?: string };
  groups: GroupConfig[];
  apps: AppConfig[];
  plugins: Record<string, Record<string, unknown>>;
}

/** A partial config as written by a user, before defaults. */
export type BextConfigInput = {
  [K in keyof BextConfig]?: K extends 'groups' ? GroupConfig[] : K extends 'apps' ? AppConfig[] : K extends 'plugins' ? Record<string, Record<string, unknown>> : Partial<BextConfig[K]>;
} & { $schema?: string };

export const CONFIG_SCHEMA_PATH = fileURLToPath(new URL('./config.schema.json', import.meta.url));
export const configSchema = JSON.parse(readFileSync(CONFIG_SCHEMA_PATH, 'utf8')) as Record<string, unknown>;

const addFormats = (addFormatsModule as unknown as { default?: typeof addFormatsModule }).default ?? addFormatsModule;

/** One ajv for the process; compiled validators are cached by schema object. */
export function makeAjv(): Ajv {
  const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false, allowUnionTypes: true });
  (addFormats as unknown as (a: Ajv) => void)(ajv);
  return ajv;
}

const ajv = makeAjv();
const validateCore = ajv.compile(configSchema);

function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  const s = JSON.stringify(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function jsonPath(instancePath: string): string {
  if (!instancePath) return '$';
  return `$${instancePath.split('/').slice(1).map((p) => (/^\d+$/.test(p) ? `[${p}]` : `.${p.replace(/~1/g, '/').replace(/~0/g, '~')}`)).join('')}`;
}

function valueAt(root: unknown, instancePath: string): unknown {
  let cur: unknown = root;
  for (const p of instancePath.split('/').slice(1)) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<string, unknown>)[p.replace(/~1/g, '/').replace(/~0/g, '~')];
  }
  return cur;
}

/** Human lines for ajv errors: `file: $.path: expected X, found Y`. */
export function formatAjvErrors(file: string, root: unknown, errors: ErrorObject[] | null | undefined, prefix = ''): string[] {
  const lines: string[] = [];
  for (const e of errors ?? []) {
    const path = jsonPath(prefix + e.instancePath);
    const found = valueAt(root, e.instancePath);
    let what: string;
    switch (e.keyword) {
      case 'additionalProperties':
        what = `unknown key "${(e.params as { additionalProperty: string }).additionalProperty}" (remove it, or check its spelling)`;
        break;
      case 'required':
        what = `missing required key "${(e.params as { missingProperty: string }).missingProperty}"`;
        break;
      case 'type':
        what = `expected ${(e.params as { type: string }).type}, found ${describe(found)}`;
        break;
      case 'enum':
        what = `expected one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}, found ${describe(found)}`;
        break;
      default:
        what = `expected a value that ${e.message ?? 'matches the schema'}, found ${describe(found)}`;
    }
    lines.push(`${file}: ${path}: ${what}`);
  }
  // anyOf/oneOf produce one line per branch; keep them but drop exact repeats.
  return [...new Set(lines)];
}

/** Reads and parses a JSON file, with line and column on a syntax error. */
export function readJsonFile(file: string, code: 'BEXT_ERR_CONFIG_PARSE' | 'BEXT_ERR_LOCK_INVALID' | 'BEXT_ERR_MANIFEST_INVALID' = 'BEXT_ERR_CONFIG_PARSE'): unknown {
  const text = readFileSync(file, 'utf8');
  try {
    return JSON.parse(text);
  } catch (e) {
    const m = /position (\d+)/.exec((e as Error).message);
    let where = '';
    if (m) {
      const pos = Number(m[1]);
      const before = text.slice(0, pos).split('\n');
      where = ` at line ${before.length}, column ${before[before.length - 1]!.length + 1}`;
    }
    throw new BextError(code, `${file}: not valid JSON${where}: ${(e as Error).message}`, { hint: 'fix the syntax (a trailing comma or a missing quote is the usual cause)' });
  }
}

/** Applies defaults and validates the core sections. Plugin sections are checked at load. */
export function parseConfig(input: unknown, file = 'bext.config.json'): BextConfig {
  const cfg = structuredClone(input ?? {}) as Record<string, unknown>;
  if (typeof cfg !== 'object' || Array.isArray(cfg)) {
    throw new BextError('BEXT_ERR_CONFIG_INVALID', `${file}: $: expected object, found ${describe(cfg)}`);
  }
  cfg.server ??= {};
  cfg.admin ??= {};
  cfg.groups ??= [];
  cfg.apps ??= [];
  cfg.plugins ??= {};
  if (!validateCore(cfg)) {
    const lines = formatAjvErrors(file, cfg, validateCore.errors);
    throw new BextError('BEXT_ERR_CONFIG_INVALID', lines.join('\n'), { details: { errors: lines } });
  }
  return cfg as unknown as BextConfig;
}

/** Loads a config file; no file means the embedded defaults. */
export function loadConfig(file: string | undefined): BextConfig {
  if (!file || !existsSync(file)) return parseConfig({}, file ?? 'bext.config.json');
  return parseConfig(readJsonFile(file), file);
}

const pluginValidators = new WeakMap<object, ValidateFunction>();

/**
 * Validates one plugin's section against its configSchema (unknown keys are
 * errors unless the schema says otherwise) and applies its defaults.
 */
export function validatePluginConfig(plugin: string, schema: Record<string, unknown> | undefined, section: unknown, file: string, at = `/plugins/${plugin}`): Record<string, unknown> {
  const value = structuredClone(section ?? {}) as Record<string, unknown>;
  if (!schema) {
    if (Object.keys(value).length) {
      throw new BextError('BEXT_ERR_CONFIG_INVALID', `${file}: ${jsonPath(at)}: plugin "${plugin}" takes no configuration, found keys ${Object.keys(value).join(', ')}`);
    }
    return value;
  }
  let v = pluginValidators.get(schema);
  if (!v) {
    const strictSchema = { additionalProperties: false, ...schema };
    v = ajv.compile(strictSchema);
    pluginValidators.set(schema, v);
  }
  if (!v(value)) {
    const lines = formatAjvErrors(file, value, v.errors, at);
    throw new BextError('BEXT_ERR_CONFIG_INVALID', lines.join('\n'), { details: { errors: lines } });
  }
  return value;
}
