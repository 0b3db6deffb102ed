/**
 * The plugin manifest (`bext-plugin.json`): its JSON Schema and its type.
 * Validated with ajv at `bext plugin add` and at every load.
 */
import type { HookName } from './hooks.js';

export const SANDBOX_KINDS = ['trusted', 'wasm', 'quickjs', 'isolate', 'process'] as const;
export type SandboxKind = (typeof SANDBOX_KINDS)[number];

/** Request and response fields a sandboxed hook can ask to receive. */
export const NEEDS = [
  'method', 'path', 'query', 'host', 'headers', 'remoteAddress', 'scheme', 'httpVersion', 'body', 'ctx',
  'response.headers', 'response.body',
] as const;
export type Need = (typeof NEEDS)[number] | `headers:${string}`;

/** Narrows a hook to matching requests; checked by the kernel before any call. */
export interface MatchSpec {
  /** HTTP methods, upper case. */
  methods?: string[];
  /** Path globs: `*` one segment, `**` any depth, e.g. `/api/**`. */
  paths?: string[];
  /** Host patterns: exact or `*.example.com`. */
  hosts?: string[];
}

export interface HookSpec {
  /** Lower runs first (outermost). Default 100. */
  priority?: number;
  match?: MatchSpec;
}

export interface RouteSpec {
  /** Path pattern in find-my-way syntax: `/health`, `/api/items/:id`, `/static/*`. */
  path: string;
  /** Methods; default GET and HEAD. `*` for all. */
  methods?: string[];
  /** Privileged: served on the admin listener, or with the admin token. */
  admin?: boolean;
}

export interface Limits {
  /** Per-call deadline in milliseconds. */
  timeoutMs?: number;
  /** Memory for the sandbox instance, in MiB. */
  memoryMb?: number;
  /** WASM fuel per call (instrumented basic-block cost units). */
  fuel?: number;
  /** Largest request body handed to the plugin, in bytes. */
  bodyBytes?: number;
  /** Consecutive failures before the plugin is quarantined. */
  quarantineAfter?: number;
}

/**
 * A task the plugin runs on a schedule: the kernel calls its `onSchedule`
 * export with the task's name at every tick of `cron`.
 *
 * @example
 * ```json
 * { "schedules": { "purge": { "cron": "0 *\/5 * * * *", "overlap": "skip", "scope": "cluster", "timeoutMs": 500 } } }
 * ```
 */
export interface ScheduleSpec {
  /** Cron pattern (croner syntax): 5 fields, or 6 with seconds first; `@hourly` and the like. */
  cron: string;
  /**
   * A tick that comes while the previous run still runs (in a cluster, on any instance):
   * `skip` it (recorded as skipped-overlap; the default), `queue` one run
   * after the current one, or `allow` both to run at once.
   */
  overlap?: 'skip' | 'queue' | 'allow';
  /**
   * `cluster` (default): each tick runs on one instance of all that share
   * `redis.url` (or worker 0 under `--workers` without Redis). `instance`:
   * every instance runs every tick.
   */
  scope?: 'cluster' | 'instance';
  /** Deadline of one run in ms; default and, for sandboxed plugins, maximum: `limits.timeoutMs`. */
  timeoutMs?: number;
  /** IANA time zone the pattern is read in (`Europe/Berlin`); default the server's. */
  timezone?: string;
}

/** Task names in `schedules` and `bext_schedule`. */
export const TASK_NAME_PATTERN = '^[a-z0-9][a-z0-9_.-]{0,63}$';

/** JSON Schema of one `schedules` entry (also checks `bext_schedule` options). */
export const scheduleSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['cron'],
  properties: {
    cron: { type: 'string', minLength: 1, maxLength: 200 },
    overlap: { enum: ['skip', 'queue', 'allow'] },
    scope: { enum: ['cluster', 'instance'] },
    timeoutMs: { type: 'number', exclusiveMinimum: 0 },
    timezone: { type: 'string', minLength: 1 },
  },
} as const;

/**
 * The parsed `bext-plugin.json`.
 *
 * @example
 * ```json
 * {
 *   "name": "hello", "version": "1.0.0", "sandbox": "trusted", "entry": "index.ts",
 *   "hooks": { "onRequest": { "priority": 50, "match": { "paths": ["/api/**"] } } },
 *   "routes": [{ "path": "/hello" }],
 *   "capabilities": ["publish:custom/*"],
 *   "failMode": "open"
 * }
 * ```
 */
export interface Manifest {
  $schema?: string;
  name: string;
  version: string;
  description?: string;
  sandbox: SandboxKind;
  /** Entry file, relative to the plugin folder (`index.ts`, `plugin.wasm`, `plugin.js`). */
  entry: string;
  hooks?: Partial<Record<HookName, HookSpec>>;
  routes?: RouteSpec[];
  needs?: Need[];
  capabilities?: string[];
  limits?: Limits;
  failMode?: 'open' | 'closed';
  /** JSON Schema for this plugin's section of `bext.config.json`. */
  configSchema?: Record<string, unknown>;
  /** Files covered by the integrity hash besides the entry (globs relative to the folder). Default: every file but tests and READMEs. */
  files?: string[];
  /**
   * CLI commands the plugin contributes (`bext <name> [args]`), each a module
   * of the plugin and the export to call with the command's arguments.
   * Trusted plugins only.
   */
  commands?: Record<string, { module: string; export: string; description: string }>;
  /**
   * How the plugin takes part in hosted apps (`apps` in the config). `site`:
   * it serves a site folder (`host.kernel.siteDir`), so each app environment
   * with a site gets its own instance and proxy apps leave it out; `proxy`:
   * it serves an upstream (`host.kernel.app.proxy`), one instance per proxy
   * app environment, left out of site apps; `all`: one instance per app
   * environment (per-app state such as a cache namespace). Absent: one
   * instance shared by every app.
   */
  perApp?: 'site' | 'proxy' | 'all';
  /** Tasks run on a schedule through the plugin's `onSchedule` export, by task name. */
  schedules?: Record<string, ScheduleSpec>;
}

const matchSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    methods: { type: 'array', items: { type: 'string', pattern: '^[A-Z]+$' } },
    paths: { type: 'array', items: { type: 'string', pattern: '^/' } },
    hosts: { type: 'array', items: { type: 'string', minLength: 1 } },
  },
} as const;

const hookSchema = {
  type: 'object',
  additionalProperties: false,
  properties: { priority: { type: 'integer' }, match: matchSchema },
} as const;

/** JSON Schema of `bext-plugin.json`. */
export const manifestSchema = {
  $id: 'https://bext.dev/schema/bext-plugin.json',
  type: 'object',
  additionalProperties: false,
  required: ['name', 'version', 'sandbox', 'entry'],
  properties: {
    $schema: { type: 'string' },
    name: { type: 'string', pattern: '^[a-z][a-z0-9-]{0,63}$' },
    version: { type: 'string', pattern: '^\\d+\\.\\d+\\.\\d+([-+][0-9A-Za-z.-]+)?$' },
    description: { type: 'string' },
    sandbox: { enum: [...SANDBOX_KINDS] },
    entry: { type: 'string', minLength: 1 },
    hooks: {
      type: 'object',
      additionalProperties: false,
      properties: {
        onConnect: hookSchema, onRequest: hookSchema, onRoute: hookSchema,
        onRender: hookSchema, onResponse: hookSchema, onPublish: hookSchema,
        // Not a chain hook: declaring it only requires the export (tasks come from `schedules` or bext_schedule).
        onSchedule: { type: 'object', additionalProperties: false, properties: {} },
      },
    },
    routes: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['path'],
        properties: {
          path: { type: 'string', pattern: '^/' },
          methods: { type: 'array', items: { type: 'string', pattern: '^([A-Z]+|\\*)$' } },
          admin: { type: 'boolean' },
        },
      },
    },
    needs: {
      type: 'array',
      items: { anyOf: [{ enum: [...NEEDS] }, { type: 'string', pattern: '^headers:[a-z0-9-]+$' }] },
    },
    capabilities: { type: 'array', items: { type: 'string', pattern: '^(publish:[a-z0-9*/_{}.-]+|kv|fetch:[a-z0-9*.:-]+|metrics|schedule)$' } },
    limits: {
      type: 'object',
      additionalProperties: false,
      properties: {
        timeoutMs: { type: 'number', exclusiveMinimum: 0 },
        memoryMb: { type: 'number', exclusiveMinimum: 0 },
        fuel: { type: 'integer', minimum: 1 },
        bodyBytes: { type: 'integer', minimum: 0 },
        quarantineAfter: { type: 'integer', minimum: 1 },
      },
    },
    failMode: { enum: ['open', 'closed'] },
    configSchema: { type: 'object' },
    files: { type: 'array', items: { type: 'string' } },
    perApp: { enum: ['site', 'proxy', 'all'] },
    commands: {
      type: 'object',
      propertyNames: { pattern: '^[a-z][a-z0-9-]*$' },
      additionalProperties: {
        type: 'object',
        additionalProperties: false,
        required: ['module', 'export', 'description'],
        properties: { module: { type: 'string' }, export: { type: 'string' }, description: { type: 'string' } },
      },
    },
    schedules: {
      type: 'object',
      propertyNames: { pattern: TASK_NAME_PATTERN },
      additionalProperties: scheduleSchema,
    },
  },
} as const;

/** Defaults the kernel applies when a manifest leaves a limit out. */
export const DEFAULT_LIMITS: Required<Omit<Limits, 'fuel'>> & { fuel: number } = {
  timeoutMs: 1000,
  memoryMb: 64,
  fuel: 50_000_000,
  bodyBytes: 1 << 20,
  quarantineAfter: 5,
};
