/**
 * Fuel metering for WebAssembly that runs on the main thread.
 *
 * In-thread WASM cannot be pre-empted, so a module is rewritten once at load:
 * a mutable i32 global (exported as `__bext_fuel`) is added, and at every
 * function entry and every `loop` header the static cost of the code that
 * runs before the next such point is subtracted from it; when it drops below
 * zero the guest executes `unreachable`. Any unbounded execution has to pass
 * a loop header or a function entry again and again, so a refilled counter
 * bounds every call. Each `memory.grow` is followed by a call to an added
 * function that records a failed grow, so a trap after it can be reported
 * as the memory limit. Nothing is imported and the added function comes
 * last, so no function index moves.
 *
 * The cost of a region is an upper bound of the instructions one pass
 * through it runs (an if/else costs its dearer arm; early exits are not
 * subtracted), so a fuel unit is at most one instruction. Bulk memory
 * instructions cost 1
 * although their work scales with their length; they are bounded by the
 * memory limit instead.
 */

/** Name of the exported fuel counter. */
export const FUEL_EXPORT = '__bext_fuel';
/** Exported flag (i32) set to 1 when a `memory.grow` failed: a trap after it means the memory limit was hit. */
export const GROW_FAILED_EXPORT = '__bext_grow_failed';
/** Name under which a module's own memory is exported when it does not export it itself. */
export const MEMORY_EXPORT = '__bext_memory';
/** Bumped whenever the rewriting changes, so cached output of an older rewriter is never used. */
export const INSTRUMENTER_VERSION = 1;
/** Largest fuel a call can get (the counter is an i32). */
export const MAX_FUEL = 0x7fff_ffff;

/** Raised for a module the rewriter cannot read or cannot meter. */
export class WasmFormatError extends Error {
  constructor(message: string, readonly offset: number) {
    super(`${message} (at byte ${offset})`);
    this.name = 'WasmFormatError';
  }
}

/** A metered module, fuel-agnostic: `withLimits` sets the fuel and memory limits of one load. */
export interface InstrumentedModule {
  bytes: Uint8Array;
  /** Offset of the fuel global's initial value: a 5-byte padded i32 LEB. */
  fuelInitOffset: number;
  /** Index of the fuel global. */
  fuelGlobal: number;
  /** Name of the export that gives the module's memory (its own, or the one added here); null without memory. */
  memoryExport: string | null;
  /** Functions metered and metering points inserted. */
  functions: number;
  meterPoints: number;
}

const SECTION_ORDER: Record<number, number> = { 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 13: 6, 6: 7, 7: 8, 8: 9, 9: 10, 12: 11, 10: 12, 11: 13 };
const SEC_TYPE = 1, SEC_IMPORT = 2, SEC_FUNCTION = 3, SEC_MEMORY = 5, SEC_GLOBAL = 6, SEC_EXPORT = 7, SEC_CODE = 10;

interface Section { id: number; start: number; end: number; headerStart: number }

class Reader {
  pos: number;
  constructor(readonly buf: Uint8Array, pos = 0, readonly end = buf.length) { this.pos = pos; }
  fail(msg: string): never { throw new WasmFormatError(msg, this.pos); }
  u8(): number {
    if (this.pos >= this.end) this.fail('unexpected end of module');
    return this.buf[this.pos++]!;
  }
  /** Unsigned LEB128 as a number (exact up to 2^53). */
  u32(): number {
    let result = 0, mul = 1, b: number;
    for (let i = 0; ; i++) {
      if (i >= 10) this.fail('LEB128 too long');
      b = this.u8();
      result += (b & 0x7f) * mul;
      mul *= 128;
      if ((b & 0x80) === 0) return result;
    }
  }
  /** Skips any LEB128 (signed or unsigned, up to 64 bits). */
  leb(): void {
    for (let i = 0; ; i++) {
      if (i >= 10) this.fail('LEB128 too long');
      if ((this.u8() & 0x80) === 0) return;
    }
  }
  skip(n: number): void {
    if (this.pos + n > this.end) this.fail('unexpected end of module');
    this.pos += n;
  }
  name(): string {
    const n = this.u32();
    this.skip(n);
    return new TextDecoder().decode(this.buf.subarray(this.pos - n, this.pos));
  }
  /** A value type; reference types with a heap type immediate take more than one byte. */
  valtype(): void {
    const t = this.u8();
    if (t === 0x63 || t === 0x64) this.leb();
  }
  blocktype(): void {
    const b = this.buf[this.pos];
    if (b === 0x40 || b === 0x7f || b === 0x7e || b === 0x7d || b === 0x7c || b === 0x7b || b === 0x70 || b === 0x6f) this.pos++;
    else if (b === 0x63 || b === 0x64) { this.pos++; this.leb(); }
    else this.leb(); // s33 type index (multi-value)
  }
  memarg(): void {
    const align = this.u32();
    if (align & 0x40) this.leb(); // multi-memory: memory index follows
    this.leb();
  }
  limits(): { flags: number; min: number; max: number | null } {
    const flags = this.u8();
    const min = this.u32();
    const max = flags & 1 ? this.u32() : null;
    return { flags, min, max };
  }
}

function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}

function sleb32(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) { out.push(b); return out; }
    out.push(b | 0x80);
  }
}

/** Writes a non-negative i32 as a 5-byte signed LEB128, so it can be patched in place. */
export function writeFixedI32(buf: Uint8Array, offset: number, value: number): void {
  for (let i = 0; i < 4; i++) buf[offset + i] = ((value >>> (7 * i)) & 0x7f) | 0x80;
  buf[offset + 4] = (value >>> 28) & 0x07;
}

/** Reads back a value written by `writeFixedI32`. */
export function readFixedI32(buf: Uint8Array, offset: number): number {
  let v = 0;
  for (let i = 0; i < 5; i++) v |= (buf[offset + i]! & 0x7f) << (7 * i);
  return v;
}

function readSections(buf: Uint8Array): Section[] {
  if (buf.length < 8 || buf[0] !== 0 || buf[1] !== 0x61 || buf[2] !== 0x73 || buf[3] !== 0x6d) {
    throw new WasmFormatError('not a WebAssembly module (bad magic)', 0);
  }
  if (buf[4] !== 1 || buf[5] !== 0 || buf[6] !== 0 || buf[7] !== 0) throw new WasmFormatError('unsupported WebAssembly version', 4);
  const r = new Reader(buf, 8);
  const out: Section[] = [];
  while (r.pos < buf.length) {
    const headerStart = r.pos;
    const id = r.u8();
    const size = r.u32();
    const start = r.pos;
    r.skip(size);
    if (id !== 0 && SECTION_ORDER[id] === undefined) throw new WasmFormatError(`unknown section id ${id}`, headerStart);
    out.push({ id, start, end: start + size, headerStart });
  }
  return out;
}

function concat(parts: ArrayLike<number>[], total?: number): Uint8Array {
  const size = total ?? parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(size);
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

function section(id: number, content: Uint8Array): Uint8Array {
  return concat([[id], uleb(content.length), content]);
}

/** Inserts a section where the binary format's section order puts it. */
function insertOrdered(list: { id: number; bytes: Uint8Array }[], id: number, bytes: Uint8Array): void {
  const rank = SECTION_ORDER[id]!;
  let at = list.length;
  for (let i = 0; i < list.length; i++) {
    const s = list[i]!;
    if (s.id !== 0 && SECTION_ORDER[s.id]! > rank) { at = i; break; }
  }
  // Custom sections directly before a later section stay attached to it.
  while (at > 0 && list[at - 1]!.id === 0 && at < list.length) at--;
  list.splice(at, 0, { id, bytes });
}

/**
 * The metering sequence: fuel -= cost; if (fuel < 0) unreachable.
 * Stack-neutral, so it is valid at any function entry or loop header.
 */
function meterCode(global: number, cost: number): number[] {
  const g = uleb(global);
  return [0x23, ...g, 0x41, ...sleb32(cost), 0x6b, 0x24, ...g, 0x23, ...g, 0x41, 0x00, 0x48, 0x04, 0x40, 0x00, 0x0b];
}

/** An open block while scanning: its cost so far, and for an `if` the cost of the finished `then` arm. */
interface Frame { loop: number; isIf: boolean; cost: number; thenCost: number }

/**
 * Walks one function body, returning where to insert metering (and, with
 * region -1, the grow-failure hook) and each region's cost. Region 0 is the function body; each loop opens a region
 * that closes at its `end`. A region's cost is an upper bound of the
 * instructions one pass through it executes: blocks add up, an if/else
 * costs its dearer arm, and a nested loop is charged at its own header.
 */
function scanBody(r: Reader, end: number): { inserts: number[]; regionOf: number[]; costs: number[] } {
  const costs = [0];
  const inserts = [r.pos];
  const regionOf = [0];
  const frames: Frame[] = [{ loop: 0, isIf: false, cost: 0, thenCost: -1 }];
  let top = frames[0]!;
  const open = (loop: number, isIf: boolean): void => {
    top = { loop, isIf, cost: 0, thenCost: -1 };
    frames.push(top);
  };
  while (r.pos < end) {
    const at = r.pos;
    const op = r.u8();
    top.cost++;
    switch (op) {
      // control
      case 0x00: case 0x01: case 0x0f: case 0x19: case 0x0a: case 0x1a: case 0x1b: case 0xd1: case 0xd3: case 0xd4:
        break;
      case 0x05: // else: the then arm is done
        if (!top.isIf || top.thenCost >= 0) { r.pos = at; r.fail('else outside an if'); }
        top.thenCost = top.cost;
        top.cost = 0;
        break;
      case 0x02: case 0x06: // block, try
        r.blocktype();
        open(-1, false);
        break;
      case 0x04: // if
        r.blocktype();
        open(-1, true);
        break;
      case 0x03: { // loop
        r.blocktype();
        const region = costs.length;
        costs.push(0);
        inserts.push(r.pos);
        regionOf.push(region);
        open(region, false);
        break;
      }
      case 0x1f: { // try_table
        r.blocktype();
        const n = r.u32();
        for (let i = 0; i < n; i++) {
          const kind = r.u8();
          if (kind === 0 || kind === 1) r.leb();
          else if (kind !== 2 && kind !== 3) r.fail(`bad try_table catch kind ${kind}`);
          r.leb();
        }
        open(-1, false);
        break;
      }
      case 0x0b: case 0x18: { // end, delegate
        if (op === 0x18) r.leb();
        if (frames.length === 1) {
          if (op !== 0x0b || r.pos !== end) { r.pos = at; r.fail('unbalanced end in function body'); }
          costs[0] = top.cost;
          frames.pop();
          break;
        }
        const done = frames.pop()!;
        top = frames[frames.length - 1]!;
        if (done.loop >= 0) costs[done.loop] = done.cost;
        else top.cost += done.isIf && done.thenCost >= 0 ? Math.max(done.thenCost, done.cost) : done.cost;
        break;
      }
      case 0x0c: case 0x0d: case 0x07: case 0x08: case 0x09: // br, br_if, catch, throw, rethrow
      case 0x10: case 0x12: case 0x14: case 0x15: case 0xd5: case 0xd6: // call, return_call, call_ref, return_call_ref, br_on_null, br_on_non_null
      case 0x20: case 0x21: case 0x22: case 0x23: case 0x24: case 0x25: case 0x26: // locals, globals, table.get/set
      case 0x3f: case 0xd2: // memory.size, ref.func
        r.leb();
        break;
      case 0x40: // memory.grow: followed by a call that records a failure
        r.leb();
        inserts.push(r.pos);
        regionOf.push(-1);
        break;
      case 0x0e: { // br_table
        const n = r.u32();
        for (let i = 0; i <= n; i++) r.leb();
        break;
      }
      case 0x11: case 0x13: // call_indirect, return_call_indirect
        r.leb(); r.leb();
        break;
      case 0x1c: { // select t*
        const n = r.u32();
        for (let i = 0; i < n; i++) r.valtype();
        break;
      }
      case 0x41: case 0x42: // i32.const, i64.const
        r.leb();
        break;
      case 0x43: r.skip(4); break;
      case 0x44: r.skip(8); break;
      case 0xd0: // ref.null heaptype
        r.leb();
        break;
      case 0xfc: scanFC(r); break;
      case 0xfd: scanFD(r); break;
      case 0xfe: scanFE(r); break;
      default:
        if (op >= 0x28 && op <= 0x3e) { r.memarg(); break; } // loads and stores
        if (op >= 0x45 && op <= 0xc4) break; // numeric, including sign extension
        r.pos = at;
        r.fail(`unsupported opcode 0x${op.toString(16).padStart(2, '0')}`);
    }
  }
  if (frames.length !== 0) r.fail('function body ends inside a block');
  return { inserts, regionOf, costs };
}

function scanFC(r: Reader): void {
  const sub = r.u32();
  if (sub <= 7) return; // saturating truncation
  switch (sub) {
    case 8: r.leb(); r.leb(); return; // memory.init data mem
    case 9: case 11: case 13: case 15: case 16: case 17: r.leb(); return; // data.drop, memory.fill, elem.drop, table.grow/size/fill
    case 10: case 12: case 14: r.leb(); r.leb(); return; // memory.copy, table.init, table.copy
    default: r.fail(`unsupported opcode 0xfc ${sub}`);
  }
}

function scanFD(r: Reader): void {
  const sub = r.u32();
  if (sub <= 0x0b || sub === 0x5c || sub === 0x5d) { r.memarg(); return; } // loads, stores, load_zero
  if (sub === 0x0c || sub === 0x0d) { r.skip(16); return; } // v128.const, i8x16.shuffle
  if (sub >= 0x15 && sub <= 0x22) { r.skip(1); return; } // extract/replace lane
  if (sub >= 0x54 && sub <= 0x5b) { r.memarg(); r.skip(1); return; } // load/store lane
  if (sub <= 0x113) return; // every other SIMD and relaxed SIMD op has no immediate
  r.fail(`unsupported opcode 0xfd ${sub}`);
}

function scanFE(r: Reader): void {
  const sub = r.u32();
  if (sub === 0x03) { r.skip(1); return; } // atomic.fence
  if (sub <= 0x02 || (sub >= 0x10 && sub <= 0x4e)) { r.memarg(); return; }
  r.fail(`unsupported opcode 0xfe ${sub}`);
}

/** Body of the function called after each memory.grow: sets the grow-failed global when it returned -1. */
function growHookBody(flag: number): number[] {
  const g = uleb(flag);
  const body = [0x00, 0x20, 0x00, 0x41, 0x7f, 0x46, 0x04, 0x40, 0x41, 0x01, 0x24, ...g, 0x0b, 0x20, 0x00, 0x0b];
  return [...uleb(body.length), ...body];
}

function rewriteCode(buf: Uint8Array, sec: Section, fuel: number, growHook: number, growFlag: number): { content: Uint8Array; functions: number; points: number; grows: number } {
  const r = new Reader(buf, sec.start, sec.end);
  const count = r.u32();
  const parts: ArrayLike<number>[] = [];
  let points = 0, grows = 0;
  const call = [0x10, ...uleb(growHook)];
  for (let f = 0; f < count; f++) {
    const size = r.u32();
    const bodyStart = r.pos;
    const bodyEnd = bodyStart + size;
    if (bodyEnd > sec.end) r.fail('function body overruns the code section');
    const body = new Reader(buf, bodyStart, bodyEnd);
    const groups = body.u32();
    for (let i = 0; i < groups; i++) { body.leb(); body.valtype(); }
    const { inserts, regionOf, costs } = scanBody(body, bodyEnd);
    const chunks: ArrayLike<number>[] = [];
    let from = bodyStart, len = 0;
    for (let i = 0; i < inserts.length; i++) {
      const at = inserts[i]!;
      const piece = buf.subarray(from, at);
      const region = regionOf[i]!;
      const code = region < 0 ? call : meterCode(fuel, costs[region]!);
      if (region < 0) grows++;
      else points++;
      chunks.push(piece, code);
      len += piece.length + code.length;
      from = at;
    }
    const tail = buf.subarray(from, bodyEnd);
    chunks.push(tail);
    len += tail.length;
    parts.push(uleb(len), ...chunks);
    r.pos = bodyEnd;
  }
  if (r.pos !== sec.end) r.fail('trailing bytes in the code section');
  if (grows > 0) parts.push(growHookBody(growFlag));
  return { content: concat([uleb(count + (grows > 0 ? 1 : 0)), ...parts]), functions: count, points, grows };
}

/**
 * Rewrites a module so every call is metered. The result does not depend on
 * the fuel or memory limits, so it can be cached by the original's hash.
 *
 * @example
 * ```ts
 * const m = instrument(readFileSync('plugin.wasm'));
 * const bytes = withLimits(m, { fuel: 1_000_000, maxPages: 256 });
 * const { instance } = await WebAssembly.instantiate(bytes, imports);
 * (instance.exports.__bext_fuel as WebAssembly.Global).value = 1_000_000;
 * ```
 */
export function instrument(input: Uint8Array): InstrumentedModule {
  const buf = input;
  const sections = readSections(buf);
  let importedGlobals = 0, definedGlobals = 0, importedMemories = 0, definedMemories = 0;
  let importedFuncs = 0, definedFuncs = 0, types = 0;
  const exportNames = new Set<string>();
  let exportsMemory: string | null = null;
  for (const s of sections) {
    const r = new Reader(buf, s.start, s.end);
    if (s.id === SEC_TYPE) {
      types = r.u32();
    } else if (s.id === SEC_IMPORT) {
      const n = r.u32();
      for (let i = 0; i < n; i++) {
        r.name(); r.name();
        const kind = r.u8();
        if (kind === 0) { r.leb(); importedFuncs++; }
        else if (kind === 1) { r.valtype(); r.limits(); }
        else if (kind === 2) { r.limits(); importedMemories++; }
        else if (kind === 3) { r.valtype(); r.u8(); importedGlobals++; }
        else if (kind === 4) { r.u8(); r.leb(); }
        else r.fail(`unknown import kind ${kind}`);
      }
    } else if (s.id === SEC_FUNCTION) {
      definedFuncs = r.u32();
    } else if (s.id === SEC_GLOBAL) {
      definedGlobals = r.u32();
    } else if (s.id === SEC_MEMORY) {
      definedMemories = r.u32();
    } else if (s.id === SEC_EXPORT) {
      const n = r.u32();
      for (let i = 0; i < n; i++) {
        const name = r.name();
        const kind = r.u8();
        const idx = r.u32();
        exportNames.add(name);
        if (kind === 2 && idx === 0 && exportsMemory === null) exportsMemory = name;
      }
    }
  }
  for (const name of [FUEL_EXPORT, GROW_FAILED_EXPORT]) {
    if (exportNames.has(name)) throw new WasmFormatError(`the module already exports "${name}"`, 0);
  }
  // Both globals go last, the fuel counter at the very end (see fuelInitOffset).
  const growFlag = importedGlobals + definedGlobals;
  const fuelGlobal = growFlag + 1;
  const growHook = importedFuncs + definedFuncs;
  const hasMemory = importedMemories + definedMemories > 0;
  const addMemoryExport = hasMemory && exportsMemory === null;
  if (addMemoryExport && exportNames.has(MEMORY_EXPORT)) throw new WasmFormatError(`the module already exports "${MEMORY_EXPORT}"`, 0);

  const codeSection = sections.find((s) => s.id === SEC_CODE);
  const code = codeSection ? rewriteCode(buf, codeSection, fuelGlobal, growHook, growFlag) : null;
  const addHook = code !== null && code.grows > 0;

  const globalEntries = [0x7f, 0x01, 0x41, 0x00, 0x0b, 0x7f, 0x01, 0x41, 0x80, 0x80, 0x80, 0x80, 0x00, 0x0b];
  const exportEntries: number[] = [];
  const addExport = (name: string, kind: number, idx: number) => {
    const bytes = new TextEncoder().encode(name);
    exportEntries.push(...uleb(bytes.length), ...bytes, kind, ...uleb(idx));
  };
  addExport(FUEL_EXPORT, 0x03, fuelGlobal);
  addExport(GROW_FAILED_EXPORT, 0x03, growFlag);
  if (addMemoryExport) addExport(MEMORY_EXPORT, 0x02, 0);
  const exportCount = addMemoryExport ? 3 : 2;

  const out: { id: number; bytes: Uint8Array }[] = [];
  let sawGlobal = false, sawExport = false;
  for (const s of sections) {
    const r = new Reader(buf, s.start, s.end);
    if (s.id === SEC_GLOBAL) {
      const n = r.u32();
      out.push({ id: s.id, bytes: section(s.id, concat([uleb(n + 2), buf.subarray(r.pos, s.end), globalEntries])) });
      sawGlobal = true;
    } else if (s.id === SEC_EXPORT) {
      const n = r.u32();
      out.push({ id: s.id, bytes: section(s.id, concat([uleb(n + exportCount), buf.subarray(r.pos, s.end), exportEntries])) });
      sawExport = true;
    } else if (s.id === SEC_CODE) {
      out.push({ id: s.id, bytes: section(s.id, code!.content) });
    } else if (addHook && s.id === SEC_TYPE) {
      const n = r.u32();
      out.push({ id: s.id, bytes: section(s.id, concat([uleb(n + 1), buf.subarray(r.pos, s.end), [0x60, 0x01, 0x7f, 0x01, 0x7f]])) });
    } else if (addHook && s.id === SEC_FUNCTION) {
      const n = r.u32();
      out.push({ id: s.id, bytes: section(s.id, concat([uleb(n + 1), buf.subarray(r.pos, s.end), uleb(types)])) });
    } else {
      out.push({ id: s.id, bytes: buf.subarray(s.headerStart, s.end) });
    }
  }
  if (!sawGlobal) insertOrdered(out, SEC_GLOBAL, section(SEC_GLOBAL, concat([[2], globalEntries])));
  if (!sawExport) insertOrdered(out, SEC_EXPORT, section(SEC_EXPORT, concat([[exportCount], exportEntries])));

  const header = buf.subarray(0, 8);
  const bytes = concat([header, ...out.map((s) => s.bytes)]);
  // The fuel global is the last entry of the global section: its 5 LEB bytes sit before the final `end`.
  let offset = 8;
  let fuelInitOffset = -1;
  for (const s of out) {
    offset += s.bytes.length;
    if (s.id === SEC_GLOBAL) fuelInitOffset = offset - 6;
  }
  return {
    bytes,
    fuelInitOffset,
    fuelGlobal,
    memoryExport: addMemoryExport ? MEMORY_EXPORT : exportsMemory,
    functions: code?.functions ?? 0,
    meterPoints: code?.points ?? 0,
  };
}

/** Limits applied to one load of an instrumented module. */
export interface ModuleLimits {
  /** Initial fuel, used by the start function and `_initialize` (each call refills). */
  fuel: number;
  /** Maximum pages (64 KiB) the module's memory may grow to. */
  maxPages: number;
}

/**
 * Sets the fuel global's initial value and caps the module's memory at
 * `maxPages`. Throws a WasmFormatError when the module imports its memory
 * (the cap could not be enforced) or needs more pages than allowed to start.
 */
export function withLimits(m: InstrumentedModule, limits: ModuleLimits): Uint8Array {
  const buf = m.bytes;
  const fuel = Math.max(0, Math.min(MAX_FUEL, Math.floor(limits.fuel)));
  let result: Uint8Array = buf;
  let fuelAt = m.fuelInitOffset;
  for (const s of readSections(buf)) {
    const r = new Reader(buf, s.start, s.end);
    if (s.id === SEC_IMPORT) {
      const n = r.u32();
      for (let i = 0; i < n; i++) {
        r.name(); r.name();
        const kind = r.u8();
        if (kind === 2) throw new WasmFormatError('the module imports its memory; a bext plugin must define its own so its size can be capped', r.pos);
        if (kind === 0) r.leb();
        else if (kind === 1) { r.valtype(); r.limits(); }
        else if (kind === 3) { r.valtype(); r.u8(); }
        else { r.u8(); r.leb(); }
      }
    } else if (s.id === SEC_MEMORY) {
      const n = r.u32();
      const entries: number[] = [...uleb(n)];
      for (let i = 0; i < n; i++) {
        const { flags, min, max } = r.limits();
        if (min > limits.maxPages) {
          throw new WasmFormatError(`the module starts with ${min} memory pages but its limit is ${limits.maxPages} (${limits.maxPages / 16} MiB)`, s.start);
        }
        const capped = max === null ? limits.maxPages : Math.min(max, limits.maxPages);
        entries.push(flags | 1, ...uleb(min), ...uleb(capped));
      }
      const rebuilt = section(SEC_MEMORY, Uint8Array.from(entries));
      result = concat([buf.subarray(0, s.headerStart), rebuilt, buf.subarray(s.end)]);
      if (s.headerStart < fuelAt) fuelAt += rebuilt.length - (s.end - s.headerStart);
      break;
    }
  }
  if (result === buf) result = buf.slice();
  writeFixedI32(result, fuelAt, fuel);
  return result;
}
