// Runs a JavaScript plugin inside a child process and serves the bext process
// protocol (PROTOCOL.md) over stdin/stdout. Plain JavaScript with no imports
// outside node: so the child starts fast and needs nothing but the node binary
// (plus msgpackr when the host asks for MessagePack).
//
// usage: node runner.mjs <json|msgpack> <entry>
import fs from 'node:fs';
import { Console } from 'node:console';
import { Writable } from 'node:stream';
import { format } from 'node:util';
import { pathToFileURL } from 'node:url';

const [codecName = 'json', entry] = process.argv.slice(2);
if (!entry) {
  fs.writeSync(2, 'bext process runner: missing entry argument\n');
  process.exit(64);
}

// Captured before the plugin is imported, so a plugin that replaces globals
// cannot change how frames are written (it can only break its own process).
const writeSync = fs.writeSync;
const hasOwn = Object.prototype.hasOwnProperty;
const StringCtor = String;
const JSONstringify = JSON.stringify;
const JSONparse = JSON.parse;

let encode;
let decode;
if (codecName === 'msgpack') {
  const { Packr } = await import('msgpackr');
  const packr = new Packr({ useRecords: false, moreTypes: false });
  encode = (msg) => packr.pack(msg);
  decode = (buf) => packr.unpack(buf);
} else {
  encode = (msg) => Buffer.from(JSONstringify(msg), 'utf8');
  decode = (buf) => JSONparse(buf.toString('utf8'));
}

let maxFrameBytes = 8 << 20;

function writeAll(buf) {
  let off = 0;
  while (off < buf.length) {
    try {
      off += writeSync(1, buf, off, buf.length - off);
    } catch (e) {
      // fd 1 is normally blocking; if a parent made it non-blocking, wait briefly and retry.
      if (e && e.code === 'EAGAIN') Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
      else throw e;
    }
  }
}

function send(msg) {
  const payload = encode(msg);
  const frame = Buffer.allocUnsafe(4 + payload.length);
  frame.writeUInt32BE(payload.length, 0);
  frame.set(payload, 4);
  writeAll(frame);
}

/** Describes any thrown value without trusting it (a getter or toString may throw). */
function describe(e) {
  try {
    if (e instanceof Error) return `${e.name || 'Error'}: ${StringCtor(e.message)}`;
    if (typeof e === 'string') return e;
    if (e === undefined) return 'undefined was thrown';
    if (e === null || typeof e !== 'object') return `${typeof e} thrown: ${StringCtor(e)}`;
    return `non-Error thrown: ${JSONstringify(e)}`;
  } catch {
    return 'a value that cannot be described was thrown';
  }
}

function sendResult(id, value) {
  let payload;
  try {
    payload = encode({ t: 'result', id, value });
  } catch (e) {
    send({ t: 'error', id, message: `the hook result cannot be encoded: ${describe(e)}` });
    return;
  }
  if (payload.length > maxFrameBytes) {
    send({ t: 'error', id, message: `the hook result is ${payload.length} bytes, over the ${maxFrameBytes}-byte frame limit` });
    return;
  }
  const frame = Buffer.allocUnsafe(4 + payload.length);
  frame.writeUInt32BE(payload.length, 0);
  frame.set(payload, 4);
  writeAll(frame);
}

// ---- host functions --------------------------------------------------------

let nextHostId = 1;
const hostPending = new Map();

function hostCall(fn, args) {
  const id = nextHostId++;
  return new Promise((resolve, reject) => {
    hostPending.set(id, { resolve, reject });
    send({ t: 'host', id, fn, args });
  });
}

/** Fire-and-forget host call (id 0: no reply). */
function hostNotify(fn, args) {
  try {
    send({ t: 'host', id: 0, fn, args });
  } catch (e) {
    diag(`${fn} could not be sent: ${describe(e)}`);
  }
}

let config = {};

// Every host function exists in every guest, as in the other sandbox kinds:
// an ungranted call is refused (and audited) by the kernel, not by absence.
function installGlobals() {
  const g = globalThis;
  const define = (name, value) => Object.defineProperty(g, name, { value, writable: false, configurable: false, enumerable: false });
  define('bext_log', (level, msg, fields) => hostNotify('bext_log', [level, StringCtor(msg), fields]));
  define('bext_config', () => structuredClone(config));
  define('bext_publish', (topic, data) => hostCall('bext_publish', [topic, data]));
  define('bext_kv_get', (key) => hostCall('bext_kv_get', [key]));
  define('bext_kv_set', (key, value, ttlSeconds) => hostCall('bext_kv_set', [key, value, ttlSeconds]));
  define('bext_kv_del', (key) => hostCall('bext_kv_del', [key]));
  define('bext_fetch', (req) => hostCall('bext_fetch', [req]));
  define('bext_metric', (name, value, labels, kind) => hostNotify('bext_metric', [name, value, labels, kind]));
  define('bext_schedule', (name, cron, opts) => hostCall('bext_schedule', [name, cron, opts]));
  define('bext_unschedule', (name) => hostCall('bext_unschedule', [name]));

  // console output and process.stdout become structured log lines: fd 1 belongs to the protocol.
  const toLog = (level) => (...a) => hostNotify('bext_log', [level, format(...a)]);
  const out = lineLog('info');
  const quiet = new Console({ stdout: out, stderr: lineLog('warn') });
  quiet.log = toLog('info');
  quiet.info = toLog('info');
  quiet.debug = toLog('debug');
  quiet.trace = toLog('trace');
  quiet.warn = toLog('warn');
  quiet.error = toLog('error');
  g.console = quiet;
  Object.defineProperty(process, 'stdout', { get: () => out, configurable: true });
}

/** A writable stream that turns what is written to it into log lines. */
function lineLog(level) {
  let pending = '';
  const flush = (all) => {
    let nl;
    while ((nl = pending.indexOf('\n')) !== -1) {
      hostNotify('bext_log', [level, pending.slice(0, nl)]);
      pending = pending.slice(nl + 1);
    }
    if (all || pending.length > 4096) {
      if (pending) hostNotify('bext_log', [level, pending]);
      pending = '';
    }
  };
  return new Writable({
    decodeStrings: false,
    write(chunk, _enc, cb) {
      pending += typeof chunk === 'string' ? chunk : chunk.toString('utf8');
      flush(false);
      cb();
    },
    final(cb) {
      flush(true);
      cb();
    },
  });
}

/** Runner diagnostics on stderr; a full or broken stderr must not take the runner down. */
function diag(text) {
  try {
    writeSync(2, `bext process runner: ${text}\n`);
  } catch {
    // Nothing better to do with a diagnostic that cannot be written.
  }
}

/** The host-API-shaped object handed to a default-exported factory. */
function hostObject(plugin) {
  const g = globalThis;
  const missing = (fn) => () => Promise.reject(new Error(`${fn} is not granted to plugin "${plugin}"`));
  return {
    plugin,
    publish: g.bext_publish ?? missing('bext_publish'),
    log: g.bext_log,
    kv: { get: g.bext_kv_get ?? missing('bext_kv_get'), set: g.bext_kv_set ?? missing('bext_kv_set'), del: g.bext_kv_del ?? missing('bext_kv_del') },
    fetch: g.bext_fetch ?? missing('bext_fetch'),
    metric: g.bext_metric ?? (() => {}),
    config: g.bext_config,
    schedule: g.bext_schedule,
    unschedule: g.bext_unschedule,
  };
}

// ---- hooks -----------------------------------------------------------------

let hooks = null;
let disposeHook = null;

function onCall(m) {
  const fn = hooks && hasOwn.call(hooks, m.hook) ? hooks[m.hook] : undefined;
  if (typeof fn !== 'function') {
    send({ t: 'error', id: m.id, message: `the plugin does not export ${StringCtor(m.hook)}` });
    return;
  }
  let v;
  try {
    v = fn.apply(hooks, Array.isArray(m.args) ? m.args : []);
  } catch (e) {
    send({ t: 'error', id: m.id, message: describe(e) });
    return;
  }
  if (v !== null && typeof v === 'object' && typeof v.then === 'function') {
    v.then(
      (r) => sendResult(m.id, r),
      (e) => send({ t: 'error', id: m.id, message: describe(e) }),
    );
  } else sendResult(m.id, v);
}

async function onInit(m) {
  config = m.config ?? {};
  if (typeof m.maxFrameBytes === 'number') maxFrameBytes = m.maxFrameBytes;
  installGlobals();
  try {
    const mod = await import(pathToFileURL(entry).href);
    let src = mod;
    if (typeof mod.default === 'function') src = await mod.default(hostObject(StringCtor(m.plugin ?? '')));
    else if (mod.default && typeof mod.default === 'object') src = mod.default;
    if (!src || typeof src !== 'object') throw new Error('the default export factory did not return an object of hooks');
    const names = (Array.isArray(m.hooks) ? m.hooks : []).filter((h) => typeof src[h] === 'function');
    hooks = Object.create(null);
    for (const h of names) hooks[h] = src[h].bind(src);
    if (typeof src.dispose === 'function') disposeHook = src.dispose.bind(src);
    send({ t: 'ready', hooks: names });
  } catch (e) {
    send({ t: 'fatal', message: `cannot load ${entry}: ${describe(e)}` });
    process.exit(1);
  }
}

function onHostResult(m) {
  const p = hostPending.get(m.id);
  if (!p) return;
  hostPending.delete(m.id);
  if (m.error !== undefined) {
    const err = new Error(StringCtor(m.error));
    if (typeof m.code === 'string') err.code = m.code;
    p.reject(err);
  } else p.resolve(m.value);
}

function onMessage(m) {
  switch (m && m.t) {
    case 'call': return onCall(m);
    case 'hostResult': return onHostResult(m);
    case 'init': return void onInit(m);
    default:
      diag(`unknown message type ${JSONstringify(m && m.t)}`);
  }
}

// ---- framing ---------------------------------------------------------------

let chunks = [];
let have = 0;
let need = 4;

function onData(chunk) {
  chunks.push(chunk);
  have += chunk.length;
  if (have < need) return;
  const buf = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, have);
  chunks = [];
  have = 0;
  let off = 0;
  for (;;) {
    const avail = buf.length - off;
    if (avail < 4) { need = 4; break; }
    const len = buf.readUInt32BE(off);
    if (avail < 4 + len) { need = 4 + len; break; }
    const payload = buf.subarray(off + 4, off + 4 + len);
    off += 4 + len;
    let m;
    try {
      m = decode(payload);
    } catch (e) {
      diag(`bad frame from host: ${describe(e)}`);
      process.exit(65);
    }
    onMessage(m);
  }
  if (off < buf.length) {
    chunks.push(buf.subarray(off));
    have = buf.length - off;
  }
}

async function shutdown() {
  try {
    if (disposeHook) await disposeHook();
  } catch (e) {
    diag(`dispose failed: ${describe(e)}`);
  }
  process.exit(0);
}

process.on('unhandledRejection', (e) => {
  diag(`unhandled rejection: ${describe(e)}`);
});

const stdin = process.stdin;
stdin.on('data', onData);
stdin.on('end', shutdown);
send({ t: 'hello', v: 1, runtime: `node ${process.version}` });
