/**
 * `plugins.lock.json`: the plugins that compose a server, pinned by source,
 * version, sandbox kind, integrity, granted capabilities and order.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { Ajv } from 'ajv';
import { BextError, SANDBOX_KINDS, type SandboxKind } from '../plugin-api/index.js';
import { formatAjvErrors, readJsonFile } from './config.js';

export interface LockEntry {
  name: string;
  source: string;
  version: string;
  sandbox: SandboxKind;
  integrity: string;
  capabilities: string[];
  order: number;
  /** `group`: runs only in route groups that add it (tenant plugins). Default `global`. */
  scope?: 'global' | 'group';
}

export interface LockFile {
  lockfileVersion: 1;
  plugins: LockEntry[];
}

const lockSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['lockfileVersion', 'plugins'],
  properties: {
    $schema: { type: 'string' },
    lockfileVersion: { const: 1 },
    plugins: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'source', 'version', 'sandbox', 'integrity', 'capabilities', 'order'],
        properties: {
          name: { type: 'string' },
          source: { type: 'string', pattern: '^(builtin|file):' },
          version: { type: 'string' },
          sandbox: { enum: [...SANDBOX_KINDS] },
          integrity: { type: 'string', pattern: '^sha256-[A-Za-z0-9+/]+=*$' },
          capabilities: { type: 'array', items: { type: 'string' } },
          order: { type: 'integer' },
          scope: { enum: ['global', 'group'] },
        },
      },
    },
  },
};
const validateLock = new Ajv({ allErrors: true }).compile(lockSchema);

export function readLock(file: string): LockFile {
  if (!existsSync(file)) return { lockfileVersion: 1, plugins: [] };
  const raw = readJsonFile(file, 'BEXT_ERR_LOCK_INVALID');
  if (!validateLock(raw)) {
    const lines = formatAjvErrors(file, raw, validateLock.errors);
    throw new BextError('BEXT_ERR_LOCK_INVALID', lines.join('\n'), { hint: 'regenerate entries with `bext plugin add`' });
  }
  const lock = raw as unknown as LockFile;
  const seen = new Map<string, string>();
  for (const p of lock.plugins) {
    const prev = seen.get(p.name);
    if (prev) throw new BextError('BEXT_ERR_PLUGIN_DUPLICATE', `${file}: plugin name "${p.name}" is used by both ${prev} and ${p.source}`, { hint: 'remove one of them with `bext plugin remove`' });
    seen.set(p.name, p.source);
  }
  return lock;
}

export function writeLock(file: string, lock: LockFile): void {
  const plugins = [...lock.plugins].sort((a, b) => a.order - b.order);
  writeFileSync(file, `${JSON.stringify({ lockfileVersion: 1, plugins }, null, 2)}\n`);
}
