/**
 * The rule set, as data. A rule names the attack family it detects, the
 * paranoia level from which it runs, the anomaly score it adds, where in the
 * request it looks, which normalised view of a value it reads, the literals
 * one of which must be present for it to be able to match (checked before the
 * pattern, and used to build the pre-filter), and either a regular
 * expression or a SQL detector.
 *
 * Patterns are written to run in linear time: no nested unbounded
 * quantifiers, adjacent repetitions over disjoint character sets, bounded
 * gaps (`{0,200}`) where a gap is needed. `waf.test.ts` feeds every rule
 * pathological input under a deadline.
 */
import type { Gate } from './prefilter.js';
import type { SqlDetectorName } from './sqli.js';
import type { ViewName } from './views.js';

/** Attack families; metrics and exclusions refer to these names. */
export const FAMILIES = [
  'protocol', 'scanner', 'sqli', 'xss', 'rce', 'lfi', 'rfi', 'php', 'java', 'node', 'python', 'ssti', 'nosql', 'ldap',
  'mail', 'ssi', 'xxe', 'api',
] as const;
export type Family = (typeof FAMILIES)[number];

export type Severity = 'critical' | 'error' | 'warning' | 'notice';
/** Anomaly points per severity, as in OWASP CRS. */
export const SEVERITY_SCORE: Record<Severity, number> = { critical: 5, error: 4, warning: 3, notice: 2 };

/** Where a rule looks (bit mask). */
export const W = {
  PATH: 1,
  /** Query, form, JSON, multipart and XML values. */
  ARG: 2,
  /** Argument names, JSON keys, multipart part names and file names. */
  NAME: 4,
  HEADER: 8,
  COOKIE: 16,
  /** A raw body of a type that is not parsed into arguments. */
  BODY: 32,
  /** A raw XML document. */
  XML: 64,
  /** The User-Agent header. */
  UA: 128,
} as const;
const INJ = W.PATH | W.ARG | W.NAME | W.HEADER | W.COOKIE | W.BODY;
const VALUES = W.ARG | W.HEADER | W.COOKIE | W.BODY;

/** One rule. */
export interface Rule {
  id: number;
  family: Family;
  paranoia: 1 | 2 | 3 | 4;
  severity: Severity;
  msg: string;
  /** Bit mask of `W`. */
  where: number;
  /** The normalised reading the rule matches against; `raw` is the value as extracted. */
  view: ViewName | 'raw';
  /** Lower-case literals, one of which must occur in the view (in `raw`, as written) before the pattern runs. */
  pre: readonly string[];
  /**
   * For the request pre-filter: literals one of which a value made only of
   * plain characters (letters, digits, blanks, `.,-/?`) must contain for this
   * rule to be able to match it. Default: the plain literals of `pre`. `[]`
   * when the rule always needs some other character.
   */
  gate?: readonly Gate[];
  pattern?: RegExp;
  sql?: SqlDetectorName;
  /** Counted special characters: the rule matches when at least this many occur. */
  charCount?: { chars: RegExp; min: number };
  /** Fired by the engine's own checks (method, headers, body parsing), not by matching a value. */
  engine?: true;
}

const alt = (words: readonly string[]): string => words.map((w) => w.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&')).join('|');

/** DOM event handler names (without `on`), for attribute injection outside a tag. */
const EVENTS = [
  'abort', 'activate', 'afterprint', 'afterscriptexecute', 'afterupdate', 'animationcancel', 'animationend', 'animationiteration',
  'animationstart', 'auxclick', 'beforeactivate', 'beforecopy', 'beforecut', 'beforedeactivate', 'beforeinput', 'beforepaste',
  'beforeprint', 'beforescriptexecute', 'beforetoggle', 'beforeunload', 'beforeupdate', 'begin', 'blur', 'bounce', 'canplay',
  'canplaythrough', 'cellchange', 'change', 'click', 'close', 'contentvisibilityautostatechange', 'contextmenu', 'controlselect',
  'copy', 'cuechange', 'cut', 'dataavailable', 'datasetchanged', 'datasetcomplete', 'dblclick', 'deactivate', 'drag', 'dragend',
  'dragenter', 'dragexit', 'dragleave', 'dragover', 'dragstart', 'drop', 'durationchange', 'emptied', 'end', 'ended', 'error',
  'errorupdate', 'filterchange', 'finish', 'focus', 'focusin', 'focusout', 'formdata', 'fullscreenchange', 'gotpointercapture',
  'hashchange', 'help', 'input', 'invalid', 'keydown', 'keypress', 'keyup', 'layoutcomplete', 'load', 'loadeddata',
  'loadedmetadata', 'loadend', 'loadstart', 'losecapture', 'lostpointercapture', 'message', 'messageerror', 'mousedown',
  'mouseenter', 'mouseleave', 'mousemove', 'mouseout', 'mouseover', 'mouseup', 'mousewheel', 'move', 'moveend', 'movestart',
  'mozfullscreenchange', 'offline', 'online', 'pagehide', 'pageshow', 'paste', 'pause', 'play', 'playing', 'pointercancel',
  'pointerdown', 'pointerenter', 'pointerleave', 'pointerlockchange', 'pointermove', 'pointerout', 'pointerover',
  'pointerrawupdate', 'pointerup', 'popstate', 'progress', 'propertychange', 'ratechange', 'readystatechange', 'repeat',
  'reset', 'resize', 'rowenter', 'rowexit', 'rowsdelete', 'rowsinserted', 'scroll', 'scrollend', 'search', 'securitypolicyviolation',
  'seeked', 'seeking', 'select', 'selectionchange', 'selectstart', 'show', 'slotchange', 'stalled', 'start', 'storage', 'submit',
  'suspend', 'timeupdate', 'toggle', 'touchcancel', 'touchend', 'touchmove', 'touchstart', 'transitioncancel', 'transitionend',
  'transitionrun', 'transitionstart', 'unhandledrejection', 'unload', 'volumechange', 'waiting', 'webkitanimationend',
  'webkitanimationiteration', 'webkitanimationstart', 'webkittransitionend', 'wheel',
];

/** Script functions that turn a string into behaviour or prove execution. */
const JS_SINKS = [
  'alert', 'prompt', 'confirm', 'eval', 'settimeout', 'setinterval', 'setimmediate', 'execscript', 'msgbox', 'fromcharcode',
  'atob', 'unescape', 'showmodaldialog', 'importscripts', 'execcommand', 'print',
];
const JS_SINKS_STRICT = JS_SINKS.filter((s) => s !== 'print');

/** Unix commands that are not everyday words: after a separator, they are enough. */
const STRONG_CMDS = [
  'wget', 'curl', 'bash', 'sh', 'zsh', 'ksh', 'csh', 'tcsh', 'dash', 'busybox', 'nc', 'ncat', 'netcat', 'socat', 'telnet',
  'python', 'python2', 'python3', 'perl', 'ruby', 'php', 'powershell', 'pwsh', 'whoami', 'uname', 'ifconfig', 'ipconfig',
  'netstat', 'getent', 'nslookup', 'chmod', 'chown', 'rm', 'mkfifo', 'mknod', 'crontab', 'nohup', 'sudo', 'useradd',
  'base64', 'xxd', 'certutil', 'bitsadmin', 'wmic', 'tftp', 'nmap', 'tcpdump', 'printf', 'gawk', 'awk', 'sed', 'grep',
  'egrep', 'xargs', 'gunzip', 'bzip2', 'pkill', 'killall', 'systemctl', 'hostname', 'whereis', 'hexdump', 'openssl', 'gcc',
  'jrunscript', 'uudecode', 'lwp-download', 'lwp-request', 'aria2c', 'ls', 'cmd', 'ping6', 'traceroute', 'passwd', 'chattr',
  'lsof', 'ldd', 'strace', 'msfvenom', 'msfconsole', 'sqlplus', 'mysql', 'psql', 'nsenter', 'unshare', 'chroot', 'iptables',
];
/** Commands that are also common words: they need a shell-looking argument. */
const WEAK_CMDS = [
  'cat', 'id', 'echo', 'ping', 'ps', 'dig', 'ssh', 'ftp', 'scp', 'sftp', 'tar', 'dd', 'rsync', 'env', 'set', 'time', 'find',
  'sort', 'more', 'less', 'head', 'tail', 'kill', 'touch', 'export', 'source', 'type', 'dir', 'file', 'host', 'who', 'date',
  'exec', 'eval', 'expect', 'fetch', 'locate', 'service', 'history', 'which', 'tee', 'tr', 'cut', 'uniq', 'wc', 'cp', 'mv',
  'ln', 'mkdir', 'rmdir', 'make', 'node', 'java', 'lua', 'sleep', 'timeout', 'rev', 'nl', 'od', 'strings', 'tac', 'vi', 'vim',
  'nano', 'su', 'net', 'reg', 'start', 'call', 'del', 'copy', 'move', 'cd', 'pwd', 'read', 'zip', 'unzip', 'gzip', 'chdir',
  'ipconfig', 'systeminfo', 'tasklist', 'uptime', 'whoami', 'last', 'w',
];
const ALL_CMDS = [...new Set([...STRONG_CMDS, ...WEAK_CMDS])];
/** First words of Windows commands (rule 1306). */
const WIN_FIRST = [
  'cmd', 'powershell', 'pwsh', 'certutil', 'bitsadmin', 'mshta', 'rundll32', 'regsvr32', 'cscript', 'wscript', 'schtasks',
  'vssadmin', 'bcdedit', 'icacls', 'wmic', 'net', 'reg', 'set', 'tasklist', 'taskkill', 'systeminfo', 'type', 'dir',
];
/** First words of data-changing SQL statements (rule 2110). */
const SQL_STATEMENTS_FIRST = ['insert', 'delete', 'update', 'drop', 'truncate', 'alter', 'create', 'shutdown', 'grant'];
const DOM_CONFIRM = /\b(?:self|top|parent)\s{0,8}\??\.\s{0,8}(?:cookie|domain|location|write|writeln|opener|eval|localstorage|sessionstorage)\b/i;
/**
 * A backtick that opens command substitution: where a shell word starts (at
 * the start, after `=`, a separator or a quote) — not inside prose, where
 * Markdown uses backticks for inline code.
 */
const BACKTICK = String.raw`(?:^|[=;|'"$])\s{0,4}\``;
/** Separators after which the shell starts a new command. */
const SEP = String.raw`(?:[;&|\n\r{]|\$\(|<\(|>\(|${BACKTICK})`;
/** The same without line breaks: a line of text may well start with a word like `python`. */
const SEP_INLINE = String.raw`(?:[;&|{]|\$\(|<\(|>\(|${BACKTICK})`;
/** A command name, optionally with its directory (`/usr/bin/wget`). */
const cmd = (list: readonly string[]): string => String.raw`(?:[\w.~-]{0,64}\/){0,8}(?:${alt(list)})(?=$|[\s;|&<>()\`'"$\\])`;
/** Brace expansion runs its first word as a command: `{cat,/etc/passwd}`. */
const braceCmd = (list: readonly string[]): string => String.raw`\{(?:[\w.~-]{0,64}\/){0,8}(?:${alt(list)}),`;
/** An argument that prose does not produce: a flag, a path, a variable, a redirection, a URL or an address. */
const SHELL_ARG_STRONG = String.raw`(?:\s{1,8}(?:-{1,2}[a-z0-9]|\/[a-z.]|~\/|\.{1,2}\/|\$|[<>|;&]|[\w.-]{1,64}\/[\w.]|(?:https?|ftp):|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|%[a-z_]{1,40}%)|\s{0,8}(?:[|;&<>]|\$\(|$))`;
/** What a shell argument looks like, as opposed to an English word. */
const SHELL_ARG = String.raw`(?:\s{1,8}(?:-{1,2}[a-z0-9]|\/[a-z.]|~\/|\.{1,2}\/|\$|\`|[<>|;&*]|['"]|[\w.-]{1,64}\/[\w.]|(?:https?|ftp):|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|%[a-z_]{1,40}%)|\s{0,8}(?:[|;&<>\`)]|\$\(|$))`;

/** Unix and Windows files an attacker reads or writes. */
const OS_FILES = String.raw`(?:^|[\/\s=:'"(])(?:etc\/(?:passwd|shadow|group|hosts|issue|sudoers|crontab|master\.passwd|fstab|motd|security\/|ssh\/|profile|environment|resolv\.conf|hostname|mysql\/|apache2?\/|nginx\/|httpd\/|php\d?\/|init\.d\/|cron\.d\/|inittab|gshadow|aliases|exports|ld\.so\.|my\.cnf|pam\.d|redhat-release|lsb-release|os-release)|proc\/(?:self|\d{1,7})\/(?:environ|cmdline|maps|mem|fd|status|cwd|exe|root|mounts)|(?:windows|winnt)\/(?:win\.ini|system32|system\.ini|repair|debug|panther|php\.ini)|boot\.ini|win\.ini|system32\/|ntuser\.dat|\.htaccess|\.htpasswd|web\.config|wp-config\.php|\.git\/(?:config|head|index|logs)|\.ssh\/|id_[rde]c?dsa|id_rsa|authorized_keys|\.bash_history|\.bashrc|var\/run\/secrets|dev\/(?:tcp|udp)\/|\.aws\/credentials|\.docker\/config\.json|\.kube\/config)`;
const OS_FILES_PRE = [
  'passwd', 'shadow', 'etc/', 'proc/', 'windows/', 'winnt/', 'boot.ini', 'win.ini', 'system32', 'ntuser', '.ht', 'web.config',
  'wp-config', '.git/', '.ssh/', 'id_', 'authorized_keys', 'history', '.bashrc', 'secrets', 'dev/', '.aws', '.docker', '.kube',
];

const SCANNERS = [
  'sqlmap', 'nikto', 'nmap', 'masscan', 'zgrab', 'nuclei', 'openvas', 'nessus', 'acunetix', 'netsparker', 'invicti', 'appscan',
  'w3af', 'webinspect', 'burpsuite', 'burp collaborator', 'dirbuster', 'dirb/', 'gobuster', 'feroxbuster', 'ffuf',
  'fuzz faster u fool', 'wfuzz', 'wpscan', 'joomscan', 'whatweb', 'arachni', 'skipfish', 'havij', 'pangolin', 'sqlninja',
  'bsqlbf', 'commix', 'fimap', 'grabber', 'grendel-scan', 'jbrofuzz', 'paros', 'vega/', 'zmeu', 'morfeus', 'nsauditor',
  'webshag', 'metasploit', 'hydra', 'xsstrike', 'xsser', 'dalfox', 'jaeles', 'interactsh', '.nasl', 'struts-pwn',
  'this is an exploit', 'toata dragostea', 'winrm client', 'x-scan', 'brutus', 'cgichk', 'bfac', 'floodgate', 'webvulnscan',
  'n-stealth', 'mysqloit', 'teh forest lobster', 'crimscanner', 'absinthe', 'black widow', 'datacha0s', 'emailcollector',
  'emailsiphon', 'webbandit', 'qualys was', 'zap/', 'owasp zap', 'httpx - open-source', 'katana', 'naabu', 'subfinder',
  'wapiti', 'xspider', 'jorgee', 'sysscan', 'zaproxy', 'detectify', 'probely', 'intruder.io', 'l9explore', 'l9tcpid',
];
const OAST = [
  'burpcollaborator.net', 'oastify.com', 'oast.me', 'oast.fun', 'oast.pro', 'oast.live', 'oast.site', 'oast.online',
  'interact.sh', 'interactsh.com', 'dnslog.cn', 'dnslog.link', 'ceye.io', 'xss.ht', 'bxss.me', 'canarytokens.com',
  'requestrepo.com', 'dnsbin.zhack.ca', 'eyes.sh', 'dig.pm',
];

const re = (src: string, flags = ''): RegExp => new RegExp(src, flags);

/** Every rule, in evaluation order. */
export const RULES: readonly Rule[] = [
  // ── protocol (fired by the engine's own checks) ──────────────────────────
  { id: 1001, family: 'protocol', paranoia: 1, severity: 'critical', where: 0, view: 'raw', pre: [], engine: true, msg: 'method is not allowed by policy' },
  { id: 1002, family: 'protocol', paranoia: 1, severity: 'critical', where: 0, view: 'raw', pre: [], engine: true, msg: 'both Content-Length and Transfer-Encoding (request smuggling)' },
  { id: 1003, family: 'protocol', paranoia: 1, severity: 'critical', where: 0, view: 'raw', pre: [], engine: true, msg: 'Transfer-Encoding other than chunked' },
  { id: 1004, family: 'protocol', paranoia: 1, severity: 'critical', where: 0, view: 'raw', pre: [], engine: true, msg: 'NUL byte in the request' },
  { id: 1005, family: 'protocol', paranoia: 1, severity: 'warning', where: 0, view: 'raw', pre: [], engine: true, msg: 'invalid URL encoding' },
  { id: 1006, family: 'protocol', paranoia: 1, severity: 'warning', where: 0, view: 'raw', pre: [], engine: true, msg: 'no Host header' },
  { id: 1007, family: 'protocol', paranoia: 1, severity: 'notice', where: 0, view: 'raw', pre: [], engine: true, msg: 'body without Content-Type' },
  { id: 1008, family: 'protocol', paranoia: 1, severity: 'warning', where: 0, view: 'raw', pre: [], engine: true, msg: 'body does not parse as its Content-Type says' },
  { id: 1009, family: 'protocol', paranoia: 1, severity: 'notice', where: 0, view: 'raw', pre: [], engine: true, msg: 'Content-Encoding could not be decoded' },
  { id: 1010, family: 'protocol', paranoia: 1, severity: 'warning', where: 0, view: 'raw', pre: [], engine: true, msg: 'multipart body without a valid boundary' },
  { id: 1011, family: 'protocol', paranoia: 1, severity: 'critical', where: 0, view: 'raw', pre: [], engine: true, msg: 'body larger than the inspection limit (maxBodyBytes)' },
  { id: 1012, family: 'protocol', paranoia: 2, severity: 'notice', where: 0, view: 'raw', pre: [], engine: true, msg: 'no User-Agent header' },
  { id: 1013, family: 'protocol', paranoia: 1, severity: 'notice', where: 0, view: 'raw', pre: [], engine: true, msg: 'too many arguments; the rest were not inspected' },
  { id: 1020, family: 'protocol', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['\n', '\r'], msg: 'HTTP response splitting: line break followed by a response header',
    pattern: /[\r\n]\s{0,8}(?:set-cookie2?|location|content-(?:type|length|disposition|security-policy)|refresh|x-xss-protection|access-control-allow-[a-z-]{1,40}|transfer-encoding|link|x-frame-options)\s{0,8}:/ },
  { id: 1021, family: 'protocol', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['http/'], gate: [], msg: 'HTTP response splitting: injected status line',
    pattern: /[\r\n]\s{0,8}http\/\d(?:\.\d)?\s{1,8}\d{3}\b/ },
  { id: 1022, family: 'protocol', paranoia: 1, severity: 'warning', where: W.PATH, view: 'dec', pre: ['\n', '\r'], msg: 'line break in the path',
    pattern: /[\r\n]/ },

  // ── scanners and out-of-band probes ──────────────────────────────────────
  { id: 1101, family: 'scanner', paranoia: 1, severity: 'critical', where: W.UA, view: 'dec', pre: SCANNERS, msg: 'security scanner User-Agent',
    pattern: re(alt(SCANNERS)) },
  { id: 1102, family: 'scanner', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: OAST, msg: 'out-of-band interaction domain (OAST probe)',
    pattern: re(String.raw`(?:^|[^a-z0-9-])(?:[a-z0-9-]{1,63}\.){0,8}(?:${alt(OAST)})\b`) },

  // ── path traversal, local and remote file inclusion ──────────────────────
  { id: 1201, family: 'lfi', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['..'], msg: 'path traversal',
    pattern: /(?:^|[\\/=:'"\s])\.{2,}[\\/]|[\\/]\.{2,}(?:[\\/]|$)|\.\.;[\\/]/ },
  { id: 1202, family: 'lfi', paranoia: 1, severity: 'critical', where: INJ, view: 'fs', pre: OS_FILES_PRE, msg: 'access to an operating-system file',
    pattern: re(OS_FILES) },
  { id: 1203, family: 'lfi', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['\\\\'], msg: 'UNC path to an administrative share',
    pattern: /\\\\[^\\\s]{1,255}\\(?:[a-z]|admin|ipc|print)\$/ },
  { id: 1204, family: 'lfi', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['file:', 'php:', 'phar:', 'zip:', 'data:', 'expect:', 'glob:', 'compress.', 'zlib:', 'rar:', 'ogg:', 'ssh2.', 'netdoc:', 'jar:'], gate: [],
    msg: 'file or stream wrapper URL (file://, php://, expect://, netdoc:, …)',
    pattern: /(?:^|[^a-z0-9+.-])(?:file|php|phar|zip|expect|glob|compress\.(?:zlib|bzip2)|zlib|rar|ogg|ssh2\.(?:shell|exec|tunnel|sftp|scp)|netdoc|jar)(?::\/\/|:(?=[\/\\]))|(?:^|[^a-z0-9+.-])data:\/\// },
  { id: 1251, family: 'rfi', paranoia: 1, severity: 'critical', where: VALUES | W.PATH, view: 'dec', pre: ['://'], msg: 'remote file inclusion: URL to an IP address',
    pattern: /^\s{0,8}(?:https?|ftps?|file):\/\/(?:[^@\/\s]{1,128}@)?\d{1,3}(?:\.\d{1,3}){3}\b/ },
  { id: 1252, family: 'rfi', paranoia: 1, severity: 'critical', where: VALUES, view: 'dec', pre: ['://'], msg: 'remote file inclusion: URL ending in a question mark',
    pattern: /^\s{0,8}(?:https?|ftps?):\/\/[^\s?#]{1,2048}\?+$/ },
  { id: 1253, family: 'rfi', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['gopher:', 'dict:', 'ldap:', 'ldaps:', 'tftp:', 'jdbc:', 'rmi:', 'iiop:'], msg: 'server-side request forgery: gopher, dict, ldap, rmi or jdbc URL',
    pattern: /(?:^|[^a-z0-9+.-])(?:gopher|dict|ldaps?|tftp|rmi|iiop):\/\/|\bjdbc:[a-z0-9]{2,20}:/ },

  // ── shell command injection ──────────────────────────────────────────────
  { id: 1301, family: 'rce', paranoia: 1, severity: 'critical', where: INJ, view: 'sh', pre: [';', '&', '|', '\n', '\r', '`', '$(', '<(', '>(', '{'], msg: 'command injection: separator followed by a Unix command',
    gate: [],
    pattern: re(String.raw`${SEP_INLINE}\s{0,16}(?:sudo\s{1,8})?${cmd(STRONG_CMDS)}|${braceCmd(ALL_CMDS)}`) },
  { id: 1302, family: 'rce', paranoia: 1, severity: 'critical', where: INJ, view: 'sh', pre: [';', '&', '|', '\n', '\r', '`', '$(', '<(', '>(', '{'], msg: 'command injection: separator followed by a command with shell arguments',
    gate: [],
    // After a line break only with an argument prose does not produce: lines of text start with "Set", "Find", "Call"….
    pattern: re(String.raw`${SEP_INLINE}\s{0,16}(?:sudo\s{1,8})?${cmd(ALL_CMDS)}${SHELL_ARG}|[\n\r]\s{0,16}(?:sudo\s{1,8})?${cmd(ALL_CMDS)}${SHELL_ARG_STRONG}|${BACKTICK}\s{0,8}${cmd(ALL_CMDS)}\s{0,8}\``) },
  { id: 1303, family: 'rce', paranoia: 1, severity: 'critical', where: VALUES | W.PATH | W.NAME, view: 'sh', pre: ALL_CMDS, gate: [{ first: ALL_CMDS }], msg: 'command injection: command with a system path, URL or address as argument',
    pattern: re(String.raw`^\s{0,16}${cmd(ALL_CMDS)}(?:\s{1,8}-{1,2}[a-z][\w-]{0,30}){0,6}\s{1,8}(?:\/(?:etc|bin|usr|proc|dev|tmp|var|home|root|sys|opt|boot|lib|sbin)\b|~\/|\.{1,2}\/|(?:https?|ftp|tftp):\/\/|\d{1,3}(?:\.\d{1,3}){3}\b|[a-z]:\\|\$\{?[a-z_])`) },
  { id: 1304, family: 'rce', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['('], msg: 'Shellshock function definition',
    pattern: /^\s{0,16}\(\s{0,8}\)\s{0,8}\{|\(\s{0,8}\)\s{0,8}\{\s{0,8}:\s{0,8};\s{0,8}\}/ },
  { id: 1305, family: 'rce', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['$ifs', '${ifs'], msg: 'shell $IFS used as a separator',
    pattern: /\$\{?ifs\b/ },
  { id: 1306, family: 'rce', paranoia: 1, severity: 'critical', where: INJ, view: 'sh', pre: ['cmd', 'powershell', 'pwsh', 'certutil', 'bitsadmin', 'wmic', 'mshta', 'rundll32', 'regsvr32', 'cscript', 'wscript', 'net', 'reg', 'set', 'tasklist', 'taskkill', 'systeminfo', 'schtasks', 'vssadmin', 'bcdedit', 'icacls', 'type', 'dir'], gate: [';', '|', 'tasklist', 'taskkill', 'systeminfo', { first: WIN_FIRST }],
    msg: 'command injection: Windows command',
    pattern: re(String.raw`(?:^|[;&|\n\r\`]|\$\()\s{0,16}(?:cmd(?:\.exe)?\s{1,8}\/[ckr]|(?:powershell|pwsh)(?:\.exe)?\s{1,8}[-\/]|(?:certutil|bitsadmin|mshta|rundll32|regsvr32|cscript|wscript|schtasks|vssadmin|bcdedit|icacls)(?:\.exe)?\s|wmic\s{1,8}[a-z]|net(?:\.exe)?\s{1,8}(?:user|localgroup|group|view|use|share|start|stop)\b|reg(?:\.exe)?\s{1,8}(?:query|add|delete|save|export)\b|set\s{1,8}\/[ap]\b|(?:tasklist|taskkill|systeminfo)\b|(?:type|dir)\s{1,8}(?:[a-z]:(?:[\\/\s]|$)|%[a-z_]{1,40}%))`) },
  { id: 1307, family: 'rce', paranoia: 1, severity: 'critical', where: INJ, view: 'js', pre: ['resume', 'server', 'createobject', 'wscript', 'request', 'response'], gate: ['resume', 'createobject', 'mappath', 'scripttimeout', 'wscript', 'execute', '('], msg: 'ASP / VBScript code injection',
    pattern: /\bon\s{1,8}error\s{1,8}resume\s{1,8}next\b|\bserver\s{0,8}\.\s{0,8}(?:createobject|execute|mappath|scripttimeout)\b|\bcreateobject\s{0,8}\(\s{0,8}["']?\s{0,8}(?:wscript|scripting|adodb|msxml2|shell)\b|\bwscript\s{0,8}\.\s{0,8}shell\b|\b(?:eval|execute)\s{0,8}\(\s{0,8}request\b|\bresponse\s{0,8}\.\s{0,8}(?:write|binarywrite)\s{0,8}\(/ },
  { id: 1308, family: 'rce', paranoia: 2, severity: 'critical', where: INJ, view: 'sh', pre: [';', '&', '|', '\n', '\r', '`', '$(', '{'], gate: [], msg: 'command injection: separator followed by a command word',
    pattern: re(String.raw`${SEP}\s{0,16}${cmd(ALL_CMDS)}`) },
  { id: 1309, family: 'rce', paranoia: 3, severity: 'critical', where: VALUES | W.PATH, view: 'sh', pre: ALL_CMDS, gate: [{ first: ALL_CMDS }], msg: 'command word with arguments at the start of a value',
    pattern: re(String.raw`^\s{0,16}${cmd(ALL_CMDS)}\s{1,8}\S`) },

  // ── PHP ──────────────────────────────────────────────────────────────────
  { id: 1401, family: 'php', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['<?'], msg: 'PHP opening tag',
    pattern: /<\?(?:php\b|=)/ },
  { id: 1402, family: 'php', paranoia: 1, severity: 'critical', where: INJ, view: 'js', pre: ['system', 'exec', 'passthru', 'popen', 'proc_open', 'assert', 'create_function', 'call_user_func', 'preg_replace', 'base64_decode', 'gzinflate', 'str_rot13', 'file_get_contents', 'file_put_contents', 'fopen', 'readfile', 'include', 'require', 'highlight_file', 'show_source', 'phpinfo', 'posix_', 'pcntl_'], gate: ['('],
    msg: 'PHP function call with code-like arguments',
    pattern: /\b(?:system|exec|shell_exec|passthru|popen|proc_open|pcntl_exec|assert|create_function|call_user_func(?:_array)?|preg_replace|base64_decode|gzinflate|gzuncompress|str_rot13|file_get_contents|file_put_contents|fopen|readfile|highlight_file|show_source|posix_\w{2,20})\s{0,8}\(\s{0,8}(?:['"`$@]|\$_)|\bphpinfo\s{0,8}\(\s{0,8}\)|\b(?:include|require)(?:_once)?\s{0,8}\(?\s{0,8}['"](?:https?|ftps?|php|data|file|expect|zip|phar|glob):/ },
  { id: 1403, family: 'php', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['$_', '$globals'], msg: 'PHP superglobal',
    pattern: /\$_(?:get|post|request|cookie|server|files|env|session)\b|\$globals\b/ },
  { id: 1404, family: 'php', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['o:', 'c:'], msg: 'PHP serialized object',
    pattern: /(?:^|[^a-z0-9])[oc]:\d{1,6}:"[\w\\]{1,128}":\d{1,6}:\{/ },
  { id: 1405, family: 'php', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['${'], msg: 'PHP complex variable syntax calling a function',
    pattern: /\$\{\s{0,8}@?\s{0,8}[a-z_][\w]{0,64}\s{0,8}\(/ },

  // ── Java ─────────────────────────────────────────────────────────────────
  { id: 1451, family: 'java', paranoia: 1, severity: 'critical', where: INJ | W.UA, view: 'dec', pre: ['${'], msg: 'Log4j lookup (Log4Shell)',
    pattern: /\$\{\s{0,8}(?:jndi|env|sys|java|lower|upper|date|main|ctx|base64|bundle|docker|k8s|log4j|marker|spring|web|event|sd|map|::-)\s{0,8}:|\$\{[^{}\s]{0,40}\$\{/ },
  { id: 1452, family: 'java', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['java.', 'javax.', 'getruntime', 'processbuilder', 'forname', 'getclass', 'classloader'], msg: 'Java runtime or reflection access',
    pattern: /\bjava\.lang\.(?:runtime|processbuilder|system|reflect|class(?:loader)?|thread|process)\b|\bgetruntime\s{0,8}\(\s{0,8}\)|\bprocessbuilder\s{0,8}\(|\bclass\s{0,8}\.\s{0,8}forname\s{0,8}\(|\.getclass\s{0,8}\(\s{0,8}\)\s{0,8}\.\s{0,8}(?:forname|getclassloader|getmethod|getdeclared\w{0,20}|getresource)|\bjavax\.script\.scriptengine|\bjava\.io\.file(?:inputstream|outputstream|reader|writer)?\b|\bjava\.net\.(?:url|socket)\b|\bclassloader\s{0,8}\.\s{0,8}(?:loadclass|definclass|getresource)/ },
  { id: 1453, family: 'java', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['#', '@'], gate: ['#', '@ognl', '@java'], msg: 'OGNL / Struts expression',
    pattern: /#_memberaccess|@ognl\.ognlcontext|#context\s{0,8}\[|%\{\s{0,8}\(?\s{0,8}#|\(\s{0,8}#[a-z_]\w{0,40}\s{0,8}=|#(?:request|session|application|parameters|attr)\s{0,8}\[|@java\.lang\./ },
  { id: 1454, family: 'java', paranoia: 1, severity: 'critical', where: INJ | W.XML, view: 'raw', pre: ['rO0AB', 'aced0005', 'ACED0005'], msg: 'Java serialized object',
    pattern: /\brO0AB[A-Za-z0-9+/]{4}|\b[aA][cC][eE][dD]0005/ },
  { id: 1455, family: 'java', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['java', '!!'], gate: ['java.', 'javax.', '!!'], msg: 'Spring EL type reference, or YAML Java type tag',
    pattern: /(?:^|[^a-z0-9_])t\s{0,8}\(\s{0,8}java\.|\bnew\s{1,8}javax?\.[a-z]|!!(?:javax?\.|com\.sun\.|org\.(?:apache|springframework)\.)/ },

  // ── Node.js / JavaScript server-side ─────────────────────────────────────
  { id: 1501, family: 'node', paranoia: 1, severity: 'critical', where: INJ, view: 'js', pre: ['require', 'child_process', 'process', 'global'], gate: ['child_process', 'mainmodule', 'binding', 'dlopen', { lit: 'global', confirm: /\bglobal\s{0,8}\.\s{0,8}process\b/i }, { lit: 'module', confirm: /\bmodule\s{0,8}\.\s{0,8}(?:constructor|require)\b/i }], msg: 'Node.js module or process access',
    pattern: /\brequire\s{0,8}\(\s{0,8}['"`](?:child_process|fs|net|vm|os|http|https|process|dgram|cluster|worker_threads)['"`]|\bchild_process\b|\bprocess\s{0,8}\.\s{0,8}(?:mainmodule|binding|dlopen|_linkedbinding)\b|\bglobal\s{0,8}\.\s{0,8}process\b|\bmodule\s{0,8}\.\s{0,8}(?:constructor|require)\b/ },
  { id: 1502, family: 'node', paranoia: 1, severity: 'critical', where: INJ, view: 'js', pre: ['constructor'], msg: 'constructor chain to Function',
    pattern: /\bconstructor\s{0,8}(?:\.\s{0,8}constructor\b|\[\s{0,8}['"`]constructor|\(\s{0,8}['"`])|\[\s{0,8}['"`]constructor['"`]\s{0,8}\]\s{0,8}[([]/ },
  { id: 1503, family: 'node', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['__proto__', 'prototype'], msg: 'prototype pollution',
    pattern: /__proto__|\bconstructor\s{0,8}(?:\.|\[\s{0,8}['"]?)\s{0,8}prototype\b/ },
  { id: 1504, family: 'node', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['var', 'let', 'const'], gate: [';'], msg: 'JavaScript statement injection',
    pattern: /;\s{0,16}(?:var|let|const)\s{1,8}[\w$]{1,64}\s{0,8}=/ },
  { id: 1505, family: 'node', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['while', 'for', 'function'], gate: ['{', '('], msg: 'JavaScript loop or function constructor',
    pattern: /\bdo\s{0,8}\{[^}]{0,200}\}\s{0,8}while\s{0,8}\(|\bwhile\s{0,8}\(\s{0,8}(?:true|1|!0)\s{0,8}\)|\bfor\s{0,8}\(\s{0,8};\s{0,8};\s{0,8}\)|\bnew\s{1,8}function\s{0,8}\(/ },

  // ── Python ───────────────────────────────────────────────────────────────
  { id: 1551, family: 'python', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['__import__', 'os', 'subprocess', 'pickle', 'importlib', 'commands', 'compile', 'import'], gate: ['__import__', 'getoutput', 'importlib', '(', { lit: 'import', confirm: /\bimport\s{1,8}(?:os|subprocess|socket|pty|sys|ctypes)\s{0,8}(?:[;,\n]|$)/i }], msg: 'Python code execution',
    pattern: /\b__import__\s{0,8}\(|\bos\s{0,8}\.\s{0,8}(?:system|popen|exec[lv]p?e?|spawn\w{0,4})\s{0,8}\(|\bsubprocess\s{0,8}\.\s{0,8}(?:popen|call|run|check_output|check_call|getoutput)\s{0,8}\(|\bpickle\s{0,8}\.\s{0,8}loads?\s{0,8}\(|\bimportlib\s{0,8}\.|\bcommands\s{0,8}\.\s{0,8}getoutput|\beval\s{0,8}\(\s{0,8}compile\s{0,8}\(|\bimport\s{1,8}(?:os|subprocess|socket|pty|sys|ctypes)\s{0,8}(?:[;,\n]|$)/ },
  { id: 1552, family: 'python', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['__'], gate: ['__'], msg: 'Python object model traversal',
    pattern: /(?:\.|\[\s{0,8}['"])__(?:class|mro|bases|subclasses|globals|builtins|init|code|getattribute|reduce)__/ },
  { id: 1553, family: 'python', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['!!python'], msg: 'YAML Python object tag',
    pattern: /!!python\// },

  // ── server-side template injection ───────────────────────────────────────
  { id: 1601, family: 'ssti', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['{{', '${', '#{', '{%', '<%', '[[', '@('], msg: 'template expression evaluating arithmetic (SSTI probe)',
    pattern: /(?:\{\{|\$\{|#\{|\{%=?|<%=?|\[\[|@\()\s{0,8}-?\d{1,12}\s{0,8}[*+\-\/%]\s{0,8}-?\d{1,12}\s{0,8}(?:\}\}|\}|%\}|%>|\]\]|\))/ },
  { id: 1602, family: 'ssti', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['{{', '{%'], msg: 'template expression reaching interpreter internals',
    pattern: /(?:\{\{|\{%)[^}]{0,200}?(?:__\w{2,20}__|\bconfig\b|\brequest\s{0,8}\.\s{0,8}(?:application|environ)|\blipsum\b|\bcycler\b|\bjoiner\b|\bself\s{0,8}\._|\|\s{0,8}attr\b|_self\.env|\bgetfilter\b|registerundefinedfiltercallback)/ },
  { id: 1603, family: 'ssti', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['<#', '?new', '?api', '?eval', '?interpret', 'freemarker'], gate: ['freemarker'], msg: 'FreeMarker directive or built-in',
    pattern: /<#(?:assign|import|include|list|if|function|macro|attempt|setting|global|local)\b|\?(?:new|api|eval|interpret)\s{0,8}\(|\bfreemarker\s{0,8}\.\s{0,8}template\b/ },
  { id: 1604, family: 'ssti', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['#set', '$class', '#foreach', 'getclass'], gate: [], msg: 'Velocity directive',
    pattern: /#set\s{0,8}\(\s{0,8}\$|\$class\s{0,8}\.\s{0,8}inspect|#foreach\s{0,8}\(|\$\{?(?:request|session|application)\s{0,8}\.\s{0,8}getclass/ },
  { id: 1605, family: 'ssti', paranoia: 2, severity: 'critical', where: INJ, view: 'dec', pre: ['{{', '${', '#{'], msg: 'template expression with member access or call',
    pattern: /(?:\{\{|\$\{|#\{)[^}.(|[]{0,200}[.(|[][^}]{0,200}\}/ },

  // ── NoSQL, LDAP, mail, SSI, XML ──────────────────────────────────────────
  { id: 1651, family: 'nosql', paranoia: 1, severity: 'critical', where: VALUES | W.PATH, view: 'dec', pre: ['$'], msg: 'MongoDB query operator',
    // Operators that are also common words (`$in`, `$text`) count only with an operand object or a list of values, so GraphQL variable declarations (`($text: String, $in: [ID!])`) do not.
    pattern: /(?:^|[\s{,[(])['"]?\$(?:where|ne|eq|gt|gte|lt|lte|nin|nor|regex|exists|expr|elemmatch|function|accumulator|lookup|jsonschema)['"]?\s{0,8}[:\]]|(?:^|[\s{,[(])['"]?\$(?:in|or|and|not|all|size|type|mod|text|comment|rand)['"]?\s{0,8}:\s{0,8}(?:\{|\[\s{0,8}(?:[\d'"{[\]-]|true\b|false\b|null\b))/ },
  { id: 1652, family: 'nosql', paranoia: 1, severity: 'critical', where: W.NAME, view: 'dec', pre: ['$'], msg: 'MongoDB query operator in a parameter name',
    pattern: /(?:^|[[.])\$(?:where|ne|eq|gt|gte|lt|lte|in|nin|or|and|not|nor|regex|exists|expr|elemmatch|function|accumulator|all|size|type|mod|jsonschema)(?:$|\])/ },
  { id: 1653, family: 'nosql', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['db'], gate: ['('], msg: 'MongoDB shell method',
    pattern: /\bdb\s{0,8}\.\s{0,8}[\w$]{1,64}\s{0,8}\.\s{0,8}(?:find\w{0,12}|insert\w{0,6}|update\w{0,6}|remove|drop|delete\w{0,6}|aggregate|count\w{0,10}|save|mapreduce|distinct|replaceone|bulkwrite|createindex)\s{0,8}\(|\bdb\s{0,8}\.\s{0,8}(?:getcollection\w{0,6}|dropdatabase|eval|getsiblingdb|adduser|createuser|runcommand|getmongo|shutdownserver)\s{0,8}\(/ },
  { id: 1701, family: 'ldap', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['('], msg: 'LDAP filter injection',
    pattern: /\(\s{0,8}[&|!]\s{0,8}\(\s{0,8}[\w.;-]{1,64}\s{0,8}[~<>]?=|\)\s{0,8}\(\s{0,8}(?:[&|!]\s{0,8}\(?\s{0,8})?[\w.;-]{1,64}\s{0,8}[~<>]?=/ },
  { id: 1702, family: 'ldap', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: [':='], msg: 'LDAP extensible match filter',
    pattern: /[\w-]{1,64}:(?:dn:)?(?:\d{1,10}(?:\.\d{1,10}){2,20}|caseexactmatch|caseignorematch|[\w-]{1,64}match):=/ },
  { id: 1751, family: 'mail', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['\n', '\r'], msg: 'SMTP command injection',
    pattern: /[\r\n]\s{0,8}(?:rcpt\s{1,8}to|mail\s{1,8}from)\s{0,8}:|[\r\n]\s{0,8}(?:quit|data|rset|noop|starttls|turn)\s{0,8}(?:[\r\n]|$)|[\r\n]\s{0,8}(?:helo|ehlo|vrfy|expn|auth)\s{1,8}[\w.@-]{1,255}\s{0,8}(?:[\r\n]|$)/ },
  { id: 1752, family: 'mail', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['\n', '\r'], msg: 'IMAP command injection',
    pattern: /[\r\n]\s{0,8}[a-z]{1,4}\d{1,6}\s{1,8}(?:capability|login|logout|select|examine|fetch|store|copy|uid|search|list|lsub|status|append|create|delete|rename|subscribe|unsubscribe|authenticate|noop|idle|starttls|check|close|expunge)\b/ },
  { id: 1753, family: 'mail', paranoia: 2, severity: 'critical', where: INJ, view: 'dec', pre: ['\n', '\r'], msg: 'mail header injection',
    pattern: /[\r\n]\s{0,8}(?:to|cc|bcc|from|subject|reply-to|sender|content-type|mime-version|x-mailer|return-path)\s{0,8}:\s{0,8}\S/ },
  { id: 1801, family: 'ssi', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['<!--'], msg: 'server-side include directive',
    pattern: /<!--\s{0,8}#\s{0,8}(?:exec|include|echo|config|fsize|flastmod|printenv|set|if|elif|else|endif)\b/ },
  { id: 1851, family: 'xxe', paranoia: 1, severity: 'critical', where: VALUES | W.XML, view: 'dec', pre: ['<!doctype'], msg: 'XML document type with an external reference or internal subset',
    pattern: /<!doctype\s{1,8}[\w:.-]{1,64}\s{0,8}(?:\[|system\b|public\b)/ },
  { id: 1852, family: 'xxe', paranoia: 1, severity: 'critical', where: VALUES | W.XML, view: 'dec', pre: ['<!entity'], msg: 'XML entity declaration',
    pattern: /<!entity\s/ },
  { id: 1853, family: 'xxe', paranoia: 1, severity: 'critical', where: VALUES | W.XML, view: 'dec', pre: ['xi:', 'xmlns:xi', 'xinclude'], msg: 'XInclude',
    pattern: /<\s{0,8}xi:include\b|xmlns:xi\s{0,8}=|\bxinclude\b/ },
  { id: 1854, family: 'xxe', paranoia: 1, severity: 'critical', where: VALUES | W.XML, view: 'dec', pre: ['schemalocation', 'xs:include', 'xs:import', 'xs:redefine', 'xsd:include', 'xsd:import'], gate: [], msg: 'XML schema fetched from a remote location',
    pattern: /schemalocation\s{0,8}=\s{0,8}["']\s{0,8}(?:[^\s"']{1,200}\s{1,8}){0,8}(?:https?|ftp|file):|<\s{0,8}xsd?:(?:include|import|redefine)\s[^>]{0,400}?\b(?:namespace|schemalocation)\s{0,8}=\s{0,8}["']\s{0,8}(?:https?|ftp|file):/ },
  { id: 1855, family: 'xxe', paranoia: 1, severity: 'critical', where: VALUES | W.XML, view: 'dec', pre: ['utf-7', 'utf7'], gate: [], msg: 'XML declared as UTF-7',
    pattern: /<\?xml[^>]{0,200}?encoding\s{0,8}=\s{0,8}["']\s{0,8}utf-?7/ },

  // ── cross-site scripting ─────────────────────────────────────────────────
  { id: 2001, family: 'xss', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['script'], gate: [], msg: 'script tag',
    pattern: /<script(?:[\s\/>]|$)|<\/script\b/ },
  { id: 2002, family: 'xss', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['<'], msg: 'HTML tag that loads or runs content',
    // A bare `<object>` is as often a type in documentation; these tags load or run something through their attributes.
    pattern: /<(?:iframe|frame|frameset|object|embed|applet|svg|math|meta|base|link|isindex|import|portal|bgsound|layer|ilayer|animate|set|handler|listener|vmlframe|xml)[\s\/]|<(?:style|template|iframe|frameset)(?:>|$)/ },
  { id: 2003, family: 'xss', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['on'], gate: [], msg: 'event handler attribute in a tag',
    pattern: /<[a-z][\w:-]{0,30}(?:[\s\/][^>]{0,300}?)?[\s\/"'`;,]on[a-z]{3,40}\s{0,8}=/ },
  { id: 2004, family: 'xss', paranoia: 1, severity: 'critical', where: INJ, view: 'js', pre: ['on'], gate: [], msg: 'event handler attribute injected after a quote',
    pattern: re(String.raw`["'\`](?:[^"'\`<>]{0,120}?[\s\/])?on(?:${alt(EVENTS)})\s{0,8}=`) },
  { id: 2005, family: 'xss', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: [':'], gate: [':'], msg: 'javascript: or vbscript: URL with code',
    pattern: /(?:j\s{0,4}a\s{0,4}v\s{0,4}a|v\s{0,4}b|l\s{0,4}i\s{0,4}v\s{0,4}e)\s{0,4}s\s{0,4}c\s{0,4}r\s{0,4}i\s{0,4}p\s{0,4}t\s{0,4}:\s{0,8}(?:[\w$]{1,64}\s{1,8}[([=`]|[^\s()[\]=`\\<'"!{~+]{0,200}[()[\]=`\\<'"!{~+])/ },
  { id: 2006, family: 'xss', paranoia: 1, severity: 'critical', where: INJ, view: 'js', pre: JS_SINKS_STRICT, gate: ['('], msg: 'call of a script function used to prove or run injected code',
    pattern: re(String.raw`\b(?:${alt(JS_SINKS_STRICT)})(?:\)|\?\.)?(?:\(|\.(?:call|apply|bind)\s{0,8}\()|(?<![\w\`.-])(?:${alt(JS_SINKS_STRICT)})\`|\b(?:${alt(JS_SINKS_STRICT)})\s{1,8}\(\s{0,8}(?:\d|['"\`\/)]|document\b|window\b|this\b)|\.[a-z]{2,20}\(\s{0,8}(?:${alt(JS_SINKS_STRICT)})\s{0,8}\)`) },
  { id: 2007, family: 'xss', paranoia: 1, severity: 'critical', where: INJ, view: 'js', pre: ['document', 'window', 'self', 'top', 'parent', 'frames', 'globalthis', 'this'], gate: ['document', 'window', 'globalthis', 'frames', { lit: 'self', confirm: DOM_CONFIRM }, { lit: 'top', confirm: DOM_CONFIRM }, { lit: 'parent', confirm: DOM_CONFIRM }], msg: 'access to cookies, storage or navigation of the document',
    pattern: /\b(?:document|window|self|top|parent|frames|globalthis)\s{0,8}(?:\??\.\s{0,8}|\[\s{0,8}['"`])(?:cookie|domain|opener|localstorage|sessionstorage|(?:write|writeln|eval)['"`]?\s{0,8}\]?\s{0,8}\(|location['"`]?\s{0,8}\]?\s{0,8}(?:\.\s{0,8}(?:href|replace|assign)\b|=))|\bthis\s{0,8}\[\s{0,8}['"`](?:src|href|innerhtml|outerhtml|action|formaction|srcdoc)/ },
  { id: 2008, family: 'xss', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['data:'], msg: 'data: URL carrying HTML or script',
    pattern: /\bdata:\s{0,8}(?:text\/html|text\/xml|image\/svg\+xml|application\/(?:x-)?(?:javascript|ecmascript|xhtml\+xml|xml)|text\/(?:java|ecma|vb)script)/ },
  { id: 2009, family: 'xss', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['-moz-binding', 'behavior', 'behaviour'], gate: [':'], msg: 'CSS that runs script',
    pattern: /-moz-binding\s{0,8}:|\bbehaviou?r\s{0,8}:\s{0,8}url\s{0,8}\(/ },
  { id: 2010, family: 'xss', paranoia: 2, severity: 'critical', where: INJ, view: 'dec', pre: ['expression', '@import'], gate: ['(', '@import'], msg: 'CSS expression() or @import',
    pattern: /\bexpression\s{0,8}\(|@import\s{1,8}(?:url|["'])/ },
  { id: 2011, family: 'xss', paranoia: 2, severity: 'critical', where: INJ, view: 'dec', pre: ['<'], msg: 'HTML tag with a URL or style attribute',
    pattern: /<[a-z][\w:-]{0,30}\s[^>]{0,200}?\b(?:src|href|action|formaction|data|style|background|srcdoc|xlink:href|poster|dynsrc|lowsrc)\s{0,8}=/ },
  { id: 2012, family: 'xss', paranoia: 2, severity: 'critical', where: INJ, view: 'dec', pre: ['on'], gate: ['='], msg: 'event handler name followed by =',
    pattern: /(?:^|[\s"'`;\/0-9=(,])on[a-z]{3,40}\s{0,8}=[^=]/ },
  { id: 2013, family: 'xss', paranoia: 2, severity: 'critical', where: INJ, view: 'js', pre: ['print', 'innerhtml', 'outerhtml', 'srcdoc'], gate: ['(', '='], msg: 'script sink',
    pattern: /\bprint\s{0,8}\(\s{0,8}\)|\.\s{0,8}(?:inner|outer)html\s{0,8}=|\bsrcdoc\s{0,8}=/ },
  { id: 2014, family: 'xss', paranoia: 3, severity: 'critical', where: INJ, view: 'dec', pre: ['<'], msg: 'HTML tag',
    pattern: /<[a-z!\/?][\w:-]{0,30}/ },

  // ── SQL injection ────────────────────────────────────────────────────────
  { id: 2101, family: 'sqli', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['union'], sql: 'union', msg: 'SQL injection: UNION SELECT' },
  { id: 2102, family: 'sqli', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['select'], sql: 'selectFrom', msg: 'SQL injection: SELECT … FROM' },
  { id: 2103, family: 'sqli', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: [';'], sql: 'stacked', msg: 'SQL injection: stacked statement' },
  { id: 2104, family: 'sqli', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['and', 'or', 'xor', '&&', '||'], sql: 'boolean', gate: ['=', '(', '|', 'between', 'regexp', 'rlike', 'sounds', 'glob', 'similar', 'ilike', { lit: 'like', confirm: /\d\s{1,8}(?:and|or|xor)\s[^\n]{0,80}?\blike\b/i }], msg: 'SQL injection: boolean condition after a literal' },
  { id: 2105, family: 'sqli', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['benchmark', 'sleep', 'load_file', 'extractvalue', 'updatexml', 'group_concat', 'sys_', 'xp_cmdshell', 'make_set', 'utl_inaddr', 'dbms_', 'fn_varbintohexstr', 'sp_', 'randomblob', 'json_keys', 'geometrycollection', 'polygon', 'multipoint', 'exp', 'name_const', 'waitfor'], gate: ['('],
    sql: 'dangerousFunc', msg: 'SQL injection: time-delay or error-based function' },
  { id: 2106, family: 'sqli', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ["'", '"'], sql: 'quoteComment', msg: 'SQL injection: literal closed and the query commented out' },
  { id: 2107, family: 'sqli', paranoia: 1, severity: 'critical', where: INJ, view: 'dec', pre: ['/*!'], msg: 'SQL injection: MySQL executable comment',
    pattern: /\/\*!\d{0,6}\s{0,8}[a-z(@]/ },
  { id: 2108, family: 'sqli', paranoia: 1, severity: 'critical', where: INJ, view: 'sql', pre: ['information_schema', '@@', 'mysql', 'sys', 'master', 'pg_', 'sqlite_', 'all_', 'user_', 'dba_', 'msys', 'xp_', 'sp_', 'utl_', 'dbms_'], gate: ['information_schema', '@@', 'mysql', 'sysobjects', 'syscolumns', 'syscomments', 'sysdatabases', 'sysusers', 'syslogins', 'sysprocesses', { lit: 'sys', confirm: /\bsys\s{0,8}\.\s{0,8}[a-z]/i }, { lit: 'master', confirm: /\bmaster\s{0,8}\./i }, 'pg_', 'sqlite_', 'all_tab', 'all_users', 'user_tab', 'user_objects', 'dba_users', 'msysobjects', 'xp_', 'sp_', 'utl_', 'dbms_'],
    msg: 'SQL injection: system catalog, variable or procedure',
    pattern: /\binformation_schema\b|@@(?:version|datadir|hostname|basedir|tmpdir|servername|spid|language|identity|global)\b|\bmysql\s{0,8}\.\s{0,8}(?:user|db|proc)\b|\bsys(?:objects|columns|comments|databases|users|logins|processes)\b|\bmaster\s{0,8}\.\s{0,8}(?:\.|dbo\b|sys\b)|\bpg_(?:catalog|shadow|user|database|tables|namespace|class|read_file|ls_dir|sleep)\b|\bsqlite_(?:master|schema|temp_master)\b|\ball_(?:tables|tab_columns|users)\b|\buser_(?:tables|tab_columns|objects)\b|\bdba_users\b|\bmsysobjects\b|\bsys\s{0,8}\.\s{0,8}(?:tables|columns|objects|databases|sql_logins|server_principals)\b|\bxp_(?:cmdshell|regread|regwrite|dirtree|fileexist|servicecontrol|availablemedia|ntsec|makecab|loginconfig)\b|\bsp_(?:executesql|oacreate|oamethod|makewebtask|addextendedproc|password|configure|addsrvrolemember|execute_external_script)\b|\butl_(?:http|inaddr|file|smtp|tcp)\b|\bdbms_(?:pipe|lock|java|xmlquery|ldap|scheduler|sql|export_extension)\b/ },
  { id: 2109, family: 'sqli', paranoia: 1, severity: 'critical', where: INJ, view: 'sql', pre: ['into', 'load', 'load_file'], gate: ['outfile', 'dumpfile', 'infile', '('], msg: 'SQL injection: file read or write',
    pattern: /\binto\s{1,8}(?:out|dump)file\b|\bload\s{1,8}data\s{1,8}(?:local\s{1,8})?infile\b|\bload_file\s{0,8}\(/ },
  { id: 2110, family: 'sqli', paranoia: 1, severity: 'critical', where: INJ, view: 'sql', pre: ['insert', 'delete', 'update', 'drop', 'truncate', 'alter', 'create', 'shutdown', 'grant'], gate: [';', '(', 'shutdown', { first: SQL_STATEMENTS_FIRST }], msg: 'SQL injection: data-changing statement',
    pattern: /(?:^|[;'"(])\s{0,16}(?:insert\s{1,8}into\s{1,8}[\w.$`"[\]]{1,128}\s{0,8}(?:\(|values\b|select\b)|delete\s{1,8}from\s{1,8}[\w.$`[\]]{1,128}\s{0,8}(?:where\b|;|--|#|\/\*|$)|update\s{1,8}[\w.$`[\]]{1,128}\s{1,8}set\s{1,8}[\w.$`[\]]{1,128}\s{0,8}=|drop\s{1,8}(?:table|database|schema|view|procedure|function|user|index|trigger)\s{1,8}(?:if\s{1,8}exists\s{1,8})?[\w.$`[\]]{1,128}\s{0,8}(?:;|--|#|\/\*|$)|truncate\s{1,8}table\s{1,8}[\w.$`[\]]|alter\s{1,8}(?:table|user|database)\s{1,8}[\w.$`[\]]{1,128}\s{1,8}(?:add|drop|modify|rename|alter|change|identified)\b|create\s{1,8}(?:table|procedure|function|trigger)\s{1,8}[\w.$`[\]]{1,128}\s{0,8}\(|shutdown\s{0,8}(?:with\s{1,8}nowait\s{0,8})?(?:;|--|#|$)|grant\s{1,8}all\b)/ },
  { id: 2120, family: 'sqli', paranoia: 2, severity: 'critical', where: INJ, view: 'sql', pre: ['select', 'insert', 'delete', 'update', 'union', 'exec', 'declare'], msg: 'SQL keywords in sequence',
    pattern: /\b(?:select|insert|delete|update|union|exec|declare)\b[^;\n]{0,200}?\b(?:from|into|where|table|values|set|select)\b/ },
  { id: 2121, family: 'sqli', paranoia: 2, severity: 'critical', where: INJ, view: 'dec', pre: ["'", '"', '`'], msg: 'quote followed by a logic operator',
    pattern: /['"`]\s{1,8}(?:or|and|xor|div|like|between|rlike|regexp|sounds)\s{1,8}|['"`]\s{0,8}(?:\|\||&&)/ },
  { id: 2122, family: 'sqli', paranoia: 2, severity: 'critical', where: INJ, view: 'sql', pre: ['or', 'and', 'xor', '&&', '||'], gate: ['=', 'like'], msg: 'logic operator followed by a comparison',
    pattern: /(?:\b(?:or|and|xor)\b|&&|\|\|)\s{0,8}['"\d(][^=<>\n]{0,40}(?:=|<>|!=|<|>|\blike\b)/ },
  { id: 2123, family: 'sqli', paranoia: 2, severity: 'critical', where: INJ, view: 'dec', pre: ['--', '#', '/*'], gate: [')'], msg: 'comment after a quote or parenthesis',
    pattern: /['")]\s{0,8}(?:--|#|\/\*)/ },
  { id: 2124, family: 'sqli', paranoia: 2, severity: 'warning', where: W.ARG | W.BODY, view: 'dec', pre: [], msg: 'many special characters in one value (12 or more)',
    charCount: { chars: /[~!@#$%^&*()\-+={}[\]|:;"'`<>]/g, min: 12 } },
  { id: 2130, family: 'sqli', paranoia: 3, severity: 'critical', where: INJ, view: 'sql', pre: ['union'], msg: 'UNION near SELECT',
    pattern: /\bunion\b[^;]{0,60}?\bselect\b/ },
  { id: 2131, family: 'sqli', paranoia: 3, severity: 'warning', where: W.ARG | W.BODY | W.COOKIE, view: 'dec', pre: [], msg: 'special characters in one value (6 or more)',
    charCount: { chars: /[~!@#$%^&*()\-+={}[\]|:;"'`<>]/g, min: 6 } },
  { id: 2140, family: 'sqli', paranoia: 4, severity: 'warning', where: W.ARG | W.BODY | W.COOKIE, view: 'dec', pre: [], msg: 'special characters in one value (2 or more)',
    charCount: { chars: /[~!@#$%^&*()\-+={}[\]|:;"'`<>]/g, min: 2 } },
  { id: 2141, family: 'protocol', paranoia: 4, severity: 'critical', where: W.ARG | W.NAME | W.PATH, view: 'raw', pre: [], msg: 'character outside the strict set allowed in arguments',
    charCount: { chars: /[^\w\s.,:;@/=&?%+\-]/g, min: 1 } },

  // ── API abuse ────────────────────────────────────────────────────────────
  { id: 2201, family: 'api', paranoia: 2, severity: 'critical', where: W.ARG | W.BODY | W.PATH, view: 'dec', pre: ['__schema', '__type', 'introspectionquery'], msg: 'GraphQL introspection query',
    pattern: /\b__schema\b|\b__type\s{0,8}\(|\bintrospectionquery\b/ },
];

/** Rules by id. */
export const RULES_BY_ID: ReadonlyMap<number, Rule> = new Map(RULES.map((r) => [r.id, r]));
