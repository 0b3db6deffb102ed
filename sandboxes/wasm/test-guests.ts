/**
 * Guests for the WASM sandbox's tests and benchmark, written in WAT against
 * the Extism ABI and assembled with wabt. Each guest's `onConnect` echoes its
 * input, so a test can check that an instance still serves a normal call
 * after its `onRequest` misbehaved.
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import wabtInit from 'wabt';
import { BextError, DEFAULT_LIMITS, type HostApi, type LoadSpec, type Manifest } from '../../plugin-api/index.js';

let wabt: Awaited<ReturnType<typeof wabtInit>> | null = null;

/** Assembles WAT text (all post-MVP features this sandbox supports enabled). */
export async function wat2wasm(text: string): Promise<Uint8Array> {
  wabt ??= await wabtInit();
  const mod = wabt.parseWat('guest.wat', text, {
    sign_extension: true, sat_float_to_int: true, bulk_memory: true, simd: true, multi_value: true,
    mutable_globals: true, reference_types: true, tail_call: true,
  });
  try {
    mod.resolveNames();
    mod.validate();
    return new Uint8Array(mod.toBinary({}).buffer);
  } finally {
    mod.destroy();
  }
}

/** Extism imports and helpers shared by the guests: `$str` copies guest bytes to a host block. */
const PRELUDE = `
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "input_load_u64" (func $input_load_u64 (param i64) (result i64)))
  (import "extism:host/env" "input_load_u8" (func $input_load_u8 (param i64) (result i32)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "store_u64" (func $store_u64 (param i64 i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (import "extism:host/env" "error_set" (func $error_set (param i64)))
  (import "extism:host/user" "bext_publish" (func $bext_publish (param i64 i64) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 16) "custom/topic")
  (data (i32.const 32) "{\\"n\\":1}")
  (data (i32.const 48) "\\"denied\\"")
  (data (i32.const 64) "\\"other\\"")
  (data (i32.const 80) "guest says no")
  (func $str (param $ptr i32) (param $len i32) (result i64)
    (local $h i64) (local $i i32)
    (local.set $h (call $alloc (i64.extend_i32_u (local.get $len))))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
      (call $store_u8 (i64.add (local.get $h) (i64.extend_i32_u (local.get $i)))
                      (i32.load8_u (i32.add (local.get $ptr) (local.get $i))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (local.get $h))
  (func $echo (export "onConnect") (result i32)
    (local $len i64) (local $h i64) (local $i i64)
    (local.set $len (call $input_length))
    (if (i64.eqz (local.get $len)) (then (return (i32.const 0))))
    (local.set $h (call $alloc (local.get $len)))
    (block $done (loop $l
      (br_if $done (i64.gt_u (i64.add (local.get $i) (i64.const 8)) (local.get $len)))
      (call $store_u64 (i64.add (local.get $h) (local.get $i)) (call $input_load_u64 (local.get $i)))
      (local.set $i (i64.add (local.get $i) (i64.const 8)))
      (br $l)))
    (block $done (loop $l
      (br_if $done (i64.ge_u (local.get $i) (local.get $len)))
      (call $store_u8 (i64.add (local.get $h) (local.get $i)) (call $input_load_u8 (local.get $i)))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $l)))
    (call $output_set (local.get $h) (local.get $len))
    (i32.const 0))
`;

/** The misbehaviours a guest's `onRequest` can have. */
export const HOSTILE = {
  /** `loop br 0`: never returns. */
  infiniteLoop: `(func (export "onRequest") (result i32) (loop $l (br $l)) (i32.const 0))`,
  /** Never answers, calling the host on every turn. */
  busyHostLoop: `(func (export "onRequest") (result i32) (loop $l (drop (call $input_length)) (br $l)) (i32.const 0))`,
  /** Grows memory until it cannot, then traps. */
  memoryBomb: `(func (export "onRequest") (result i32)
      (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
      unreachable)`,
  /** Allocates host memory (Extism blocks) in a loop. */
  hostMemoryBomb: `(func (export "onRequest") (result i32)
      (loop $l (drop (call $alloc (i64.const 65536))) (br $l)) (i32.const 0))`,
  /** Recurses without end. */
  deepRecursion: `(func $down (param i32) (result i32) (call $down (i32.add (local.get 0) (i32.const 1))))
      (func (export "onRequest") (result i32) (call $down (i32.const 0)))`,
  /** Returns a 2 MiB output. */
  hugeOutput: `(func (export "onRequest") (result i32)
      (local $h i64)
      (local.set $h (call $alloc (i64.const 2097152)))
      (call $output_set (local.get $h) (i64.const 2097152))
      (i32.const 0))`,
  /** Reports an error through `error_set`. */
  throws: `(func (export "onRequest") (result i32)
      (call $error_set (call $str (i32.const 80) (i32.const 13)))
      (i32.const 1))`,
  /** Publishes without checking; outputs "denied" when the host said DENIED. */
  publish: `(func (export "onRequest") (result i32)
      (local $r i64)
      (local.set $r (call $bext_publish (call $str (i32.const 16) (i32.const 12)) (call $str (i32.const 32) (i32.const 7))))
      (if (i64.eq (local.get $r) (i64.const -1))
        (then (call $output_set (call $str (i32.const 48) (i32.const 8)) (i64.const 8)))
        (else (call $output_set (call $str (i32.const 64) (i32.const 7)) (i64.const 7))))
      (i32.const 0))`,
  /** Traps with `unreachable` on its own. */
  trap: `(func (export "onRequest") (result i32) unreachable)`,
} as const;

/** A guest module: the echo `onConnect` plus the given functions. */
export function guestWat(body = ''): string {
  return `(module ${PRELUDE} ${body})`;
}

/** A HostApi that records what the guest asked for; `grants` decides what is refused (as the kernel does). */
export function recordingHost(name: string, grants: readonly string[] = [], config: Record<string, unknown> = {}) {
  const calls = {
    publish: [] as { topic: string; data: unknown }[],
    logs: [] as { level: string; msg: string; fields?: Record<string, unknown> }[],
    metrics: [] as { name: string; value: number; labels?: Record<string, string>; kind?: string }[],
    fetches: [] as { url: string }[],
    denied: [] as string[],
  };
  const kv = new Map<string, string>();
  const denial = (fn: string): BextError => {
    calls.denied.push(fn);
    return new BextError('BEXT_ERR_CAP_DENIED', `plugin "${name}": ${fn} without a grant`);
  };
  const deny = async (fn: string): Promise<never> => {
    throw denial(fn);
  };
  const host: HostApi = {
    plugin: name,
    async publish(topic, data) {
      if (!grants.some((g) => g.startsWith('publish:'))) return deny('bext_publish');
      calls.publish.push({ topic, data });
      return 1;
    },
    log(level, msg, fields) { calls.logs.push({ level, msg, fields }); },
    kv: {
      get: async (k) => (grants.includes('kv') ? kv.get(k) ?? null : deny('bext_kv_get')),
      set: async (k, v) => { if (!grants.includes('kv')) return deny('bext_kv_set'); kv.set(k, v); },
      del: async (k) => { if (!grants.includes('kv')) return deny('bext_kv_del'); kv.delete(k); },
    },
    async fetch(req) {
      if (!grants.some((g) => g.startsWith('fetch:'))) return deny('bext_fetch');
      calls.fetches.push({ url: req.url });
      return { status: 200, headers: { 'content-type': 'text/plain' }, body: `fetched ${req.url}` };
    },
    metric(n, value, labels, kind) {
      if (!grants.includes('metrics')) throw denial('bext_metric');
      calls.metrics.push({ name: n, value, labels, kind });
    },
    schedule: async () => { if (!grants.includes('schedule')) return deny('bext_schedule'); },
    unschedule: async () => (grants.includes('schedule') ? false : deny('bext_unschedule')),
    config: <T>() => config as T,
  };
  return { host, calls, kv };
}

/** A LoadSpec for a guest written to a temporary folder. */
export async function guestSpec(
  wasm: Uint8Array,
  opts: { name?: string; hooks?: Manifest['hooks']; needs?: Manifest['needs']; grants?: string[]; limits?: Partial<LoadSpec['limits']>; host?: HostApi } = {},
): Promise<LoadSpec> {
  const dir = await mkdtemp(path.join(tmpdir(), 'bext-wasm-'));
  const entryPath = path.join(dir, 'plugin.wasm');
  await writeFile(entryPath, wasm);
  const name = opts.name ?? 'guest';
  const manifest: Manifest = { name, version: '1.0.0', sandbox: 'wasm', entry: 'plugin.wasm', hooks: opts.hooks ?? { onConnect: {} }, needs: opts.needs };
  return {
    manifest,
    dir,
    entryPath,
    host: opts.host ?? recordingHost(name).host,
    grants: opts.grants ?? [],
    limits: { timeoutMs: DEFAULT_LIMITS.timeoutMs, memoryMb: DEFAULT_LIMITS.memoryMb, fuel: DEFAULT_LIMITS.fuel, bodyBytes: DEFAULT_LIMITS.bodyBytes, ...opts.limits },
  };
}
