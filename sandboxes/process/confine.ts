/**
 * How a plugin process is started: the command line that confines it with
 * bubblewrap when that works here, and the resource limits set with prlimit.
 */
import { spawn } from 'node:child_process';
import { existsSync, lstatSync } from 'node:fs';
import path from 'node:path';

export const BWRAP = '/usr/bin/bwrap';
export const PRLIMIT = '/usr/bin/prlimit';

/** Size of the private /tmp a confined plugin gets. */
export const TMPFS_BYTES = 16 << 20;

/** Whether confinement is available, and why not when it is not. */
export type Confinement = { ok: true } | { ok: false; reason: string };

/** What the host needs to build a command line for one plugin. */
export interface CommandSpec {
  /** The program and its arguments as the plugin would be run without confinement. */
  argv: string[];
  /** Plugin folder: bound read-only, and the working directory. */
  pluginDir: string;
  /** Further folders bound read-only (the runner, node, msgpackr). */
  readOnly: string[];
  /** Keep the network namespace (a `fetch:` capability is granted). */
  network: boolean;
  /** Limit for anonymous writable memory (RLIMIT_DATA), in bytes; 0 for none. */
  dataBytes: number;
  confine: boolean;
}

/** Arguments common to the probe and the real sandbox. */
function bwrapBase(network: boolean): string[] {
  const a = ['--die-with-parent', '--new-session', '--unshare-all', '--unshare-user'];
  if (network) a.push('--share-net');
  // Root outside keeps every capability inside unless dropped, and could then remount the binds writable.
  a.push('--disable-userns', '--cap-drop', 'ALL', '--uid', '65534', '--gid', '65534');
  a.push('--clearenv', '--setenv', 'PATH', '/usr/local/bin:/usr/bin:/bin', '--setenv', 'HOME', '/tmp');
  a.push('--ro-bind', '/usr', '/usr');
  // Debian's merged /usr: /bin, /lib, /lib64, /sbin are symlinks into /usr.
  for (const d of ['/bin', '/sbin', '/lib', '/lib64', '/lib32']) {
    let st;
    try {
      st = lstatSync(d);
    } catch {
      continue;
    }
    if (st.isSymbolicLink()) a.push('--symlink', `usr${d}`, d);
    else a.push('--ro-bind', d, d);
  }
  a.push('--ro-bind-try', '/etc/ld.so.cache', '/etc/ld.so.cache');
  a.push('--ro-bind-try', '/etc/localtime', '/etc/localtime');
  if (network) {
    for (const f of ['/etc/resolv.conf', '/etc/hosts', '/etc/nsswitch.conf', '/etc/ssl', '/etc/ca-certificates']) a.push('--ro-bind-try', f, f);
  }
  a.push('--proc', '/proc', '--dev', '/dev', '--size', String(TMPFS_BYTES), '--tmpfs', '/tmp');
  return a;
}

let probe: Promise<Confinement> | undefined;

/**
 * Whether bwrap exists and can create its namespaces here (it cannot in some
 * containers). Probed once per process by running `/bin/true` confined.
 */
export function probeBwrap(): Promise<Confinement> {
  probe ??= new Promise<Confinement>((resolve) => {
    if (!existsSync(BWRAP)) {
      resolve({ ok: false, reason: `${BWRAP} is not installed (apt-get install bubblewrap)` });
      return;
    }
    const child = spawn(BWRAP, [...bwrapBase(false), '--', '/bin/true'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (s: string) => {
      if (err.length < 2000) err += s;
    });
    child.on('error', (e) => resolve({ ok: false, reason: `${BWRAP} could not be started: ${e.message}` }));
    child.on('close', (code, signal) => {
      if (code === 0) resolve({ ok: true });
      else resolve({ ok: false, reason: `${BWRAP} cannot create its sandbox here (${signal ?? `exit ${code}`}): ${err.trim() || 'no message'}` });
    });
  });
  return probe;
}

/** The program and arguments to spawn for one plugin process. */
export function buildCommand(spec: CommandSpec): { file: string; args: string[] } {
  let cmd = spec.argv;
  if (spec.confine) {
    const a = [BWRAP, ...bwrapBase(spec.network)];
    const binds = new Set<string>();
    for (const d of spec.readOnly) if (!isUnder(d, '/usr')) binds.add(d);
    for (const d of binds) a.push('--ro-bind', d, d);
    a.push('--ro-bind', spec.pluginDir, spec.pluginDir, '--chdir', spec.pluginDir, '--');
    cmd = [...a, ...cmd];
  }
  if (spec.dataBytes > 0 && existsSync(PRLIMIT)) {
    // RLIMIT_DATA counts anonymous writable memory (heap, malloc, ArrayBuffers) but not the
    // address space V8 reserves without touching, which is why RLIMIT_AS is not used.
    cmd = [PRLIMIT, `--data=${spec.dataBytes}`, '--core=0', '--', ...cmd];
  }
  return { file: cmd[0]!, args: cmd.slice(1) };
}

function isUnder(p: string, dir: string): boolean {
  const rel = path.relative(dir, p);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}
