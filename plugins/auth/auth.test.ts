import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, type JWTPayload, type KeyLike } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { validatePluginConfig } from '../../kernel/config.js';
import type { HostApi, Manifest, PluginInstance, TrustedRequest } from '../../plugin-api/index.js';
import { startBext, type Bext } from '../../sdk/harness.js';
import plugin from './index.js';

const HERE = new URL('.', import.meta.url).pathname;
const manifest = JSON.parse(readFileSync(new URL('./bext-plugin.json', import.meta.url), 'utf8')) as Manifest;
const SECRET = 'a-shared-secret-of-at-least-32-bytes!';
const now = () => Math.floor(Date.now() / 1000);

async function load(section: Record<string, unknown>): Promise<PluginInstance> {
  const cfg = validatePluginConfig('auth', manifest.configSchema, section, 'bext.config.json');
  return plugin({ plugin: 'auth', config: () => cfg, log() {}, metric() {} } as unknown as HostApi);
}

const req = (headers: Record<string, string> = {}, over: Partial<TrustedRequest> = {}) =>
  ({ id: '1', method: 'GET', path: '/api/x', query: '', host: 'a.test', headers, remoteAddress: '127.0.0.1', ctx: {}, group: 'default', ...over }) as TrustedRequest;

type Respond = { action: 'respond'; status: number; headers: Record<string, string | string[]>; body: string };
type Continue = { action: 'continue'; ctx: { auth: { method: string; subject: string | null; scopes: string[]; claims: JWTPayload | null; keyId: string | null } } };

function sign(claims: JWTPayload, alg: string, key: KeyLike | Uint8Array, header: Record<string, unknown> = {}): Promise<string> {
  let j = new SignJWT(claims).setProtectedHeader({ alg, ...header }).setIssuedAt();
  if (claims.exp === undefined) j = j.setExpirationTime('5m');
  return j.sign(key);
}

const pairs: Record<string, { privateKey: KeyLike; publicKey: KeyLike; pem: string }> = {};
beforeAll(async () => {
  for (const [alg, opts] of [['RS256', {}], ['ES256', {}], ['EdDSA', { crv: 'Ed25519' }]] as const) {
    const kp = await generateKeyPair(alg, opts);
    pairs[alg] = { ...kp, pem: await exportSPKI(kp.publicKey) };
  }
});

const hsKey = new TextEncoder().encode(SECRET);
const apiKey = 'k_live_0123456789abcdef0123456789abcdef';
const apiKeyHash = createHash('sha256').update(apiKey).digest('hex');

function allKeysConfig(extra: Record<string, unknown> = {}) {
  return {
    jwt: {
      keys: [
        { alg: 'HS256', secret: SECRET },
        { alg: 'RS256', pem: pairs.RS256!.pem },
        { alg: 'ES256', pem: pairs.ES256!.pem },
        { alg: 'EdDSA', pem: pairs.EdDSA!.pem },
      ],
      issuer: 'https://issuer.test',
      audience: 'bext-api',
      clockToleranceSeconds: 30,
    },
    apiKeys: { keys: [{ id: 'ci', sha256: apiKeyHash, scopes: ['deploy'] }] },
    ...extra,
  };
}
const good = { iss: 'https://issuer.test', aud: 'bext-api', sub: 'alice', scope: 'read write' };

describe('auth: JWT', () => {
  it('accepts HS256, RS256, ES256 and EdDSA tokens and puts the claims in ctx', async () => {
    const p = await load(allKeysConfig());
    for (const [alg, key] of [['HS256', hsKey], ['RS256', pairs.RS256!.privateKey], ['ES256', pairs.ES256!.privateKey], ['EdDSA', pairs.EdDSA!.privateKey]] as const) {
      const token = await sign(good, alg, key);
      const d = (await p.onRequest!(req({ authorization: `Bearer ${token}` }))) as Continue;
      expect(d.action, alg).toBe('continue');
      expect(d.ctx.auth).toMatchObject({ method: 'jwt', subject: 'alice', scopes: ['read', 'write'], keyId: null });
      expect(d.ctx.auth.claims).toMatchObject({ iss: 'https://issuer.test', aud: 'bext-api' });
    }
  });

  it('remembers a verified token: the second check is synchronous', async () => {
    const p = await load(allKeysConfig());
    const token = await sign(good, 'RS256', pairs.RS256!.privateKey);
    const first = p.onRequest!(req({ authorization: `Bearer ${token}` }));
    expect(typeof (first as Promise<unknown>).then).toBe('function');
    await first;
    const second = p.onRequest!(req({ authorization: `Bearer ${token}` }));
    expect(second).toMatchObject({ action: 'continue', ctx: { auth: { subject: 'alice' } } });
  });

  it('refuses algorithm confusion: an HS256 token keyed with the RSA public key, and alg none', async () => {
    const p = await load({ jwt: { keys: [{ alg: 'RS256', pem: pairs.RS256!.pem }] } });
    const forged = await sign(good, 'HS256', new TextEncoder().encode(pairs.RS256!.pem));
    const d = (await p.onRequest!(req({ authorization: `Bearer ${forged}` }))) as Respond;
    expect(d.status).toBe(401);
    expect(JSON.parse(d.body).error_description).toBe('the token is signed with an algorithm that is not accepted');
    const none = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from(JSON.stringify({ sub: 'x', exp: now() + 60 })).toString('base64url')}.`;
    expect(await p.onRequest!(req({ authorization: `Bearer ${none}` }))).toMatchObject({ status: 401 });
    // A token of an accepted algorithm but signed by another key.
    const other = await generateKeyPair('RS256');
    const wrong = (await p.onRequest!(req({ authorization: `Bearer ${await sign(good, 'RS256', other.privateKey)}` }))) as Respond;
    expect(JSON.parse(wrong.body).error_description).toBe('the token signature does not verify');
  });

  it('refuses expired, not-yet-valid, wrong-audience and wrong-issuer tokens with RFC 6750 challenges', async () => {
    const p = await load(allKeysConfig());
    const cases: [JWTPayload, string][] = [
      [{ ...good, exp: now() - 120 }, 'the token has expired'],
      [{ ...good, nbf: now() + 120 }, 'the token is not valid yet'],
      [{ ...good, aud: 'someone-else' }, 'the token is not meant for this audience'],
      [{ ...good, iss: 'https://evil.test' }, 'the token comes from an issuer that is not trusted'],
    ];
    for (const [claims, why] of cases) {
      const d = (await p.onRequest!(req({ authorization: `Bearer ${await sign(claims, 'ES256', pairs.ES256!.privateKey)}` }))) as Respond;
      expect(d.status, why).toBe(401);
      expect(JSON.parse(d.body)).toEqual({ error: 'invalid_token', error_description: why });
      expect(d.headers['www-authenticate']).toContain(`Bearer realm="bext", error="invalid_token", error_description="${why}"`);
    }
    // Within the clock tolerance both ways.
    for (const claims of [{ ...good, exp: now() - 10 }, { ...good, nbf: now() + 10 }]) {
      expect(await p.onRequest!(req({ authorization: `Bearer ${await sign(claims, 'ES256', pairs.ES256!.privateKey)}` }))).toMatchObject({ action: 'continue' });
    }
  });

  it('requires exp unless told otherwise', async () => {
    const p = await load({ jwt: { keys: [{ alg: 'HS256', secret: SECRET }] } });
    const noExp = await new SignJWT({ sub: 'a' }).setProtectedHeader({ alg: 'HS256' }).sign(hsKey);
    expect(await p.onRequest!(req({ authorization: `Bearer ${noExp}` }))).toMatchObject({ status: 401 });
    const lax = await load({ jwt: { keys: [{ alg: 'HS256', secret: SECRET }], requireExp: false } });
    expect(await lax.onRequest!(req({ authorization: `Bearer ${noExp}` }))).toMatchObject({ action: 'continue' });
  });

  it('picks keys by kid and tries same-algorithm keys in turn', async () => {
    const old = new TextEncoder().encode('an-older-secret-that-is-32-bytes-long');
    const p = await load({ jwt: { keys: [{ alg: 'HS256', secret: SECRET, kid: 'new' }, { alg: 'HS256', secretBase64: Buffer.from(old).toString('base64') }] } });
    expect(await p.onRequest!(req({ authorization: `Bearer ${await sign(good, 'HS256', hsKey, { kid: 'new' })}` }))).toMatchObject({ action: 'continue' });
    expect(await p.onRequest!(req({ authorization: `Bearer ${await sign(good, 'HS256', old)}` }))).toMatchObject({ action: 'continue' });
    expect(await p.onRequest!(req({ authorization: `Bearer ${await sign(good, 'HS256', new TextEncoder().encode('x'.repeat(40)))}` }))).toMatchObject({ status: 401 });
  });

  it('verifies against a JWKS file and a JWKS URL', async () => {
    const jwk = { ...(await exportJWK(pairs.ES256!.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
    const dir = mkdtempSync(join(tmpdir(), 'bext-jwks-'));
    writeFileSync(join(dir, 'jwks.json'), JSON.stringify({ keys: [jwk] }));
    const token = await sign(good, 'ES256', pairs.ES256!.privateKey, { kid: 'k1' });
    const fromFile = await load({ jwt: { jwks: { file: join(dir, 'jwks.json'), algorithms: ['ES256'] } } });
    expect(await fromFile.onRequest!(req({ authorization: `Bearer ${token}` }))).toMatchObject({ action: 'continue' });

    let fetched = 0;
    const srv: Server = createServer((_q, s) => {
      fetched++;
      s.setHeader('content-type', 'application/json');
      s.end(JSON.stringify({ keys: [jwk] }));
    }).listen(0, '127.0.0.1');
    await once(srv, 'listening');
    try {
      const url = `http://127.0.0.1:${(srv.address() as { port: number }).port}/.well-known/jwks.json`;
      const fromUrl = await load({ jwt: { jwks: { url, algorithms: ['ES256'] } } });
      expect(await fromUrl.onRequest!(req({ authorization: `Bearer ${token}` }))).toMatchObject({ action: 'continue', ctx: { auth: { subject: 'alice' } } });
      expect(await fromUrl.onRequest!(req({ authorization: `Bearer ${await sign(good, 'ES256', pairs.ES256!.privateKey, { kid: 'k1', typ: 'JWT' })}` }))).toMatchObject({ action: 'continue' });
      expect(fetched).toBe(1);
      // An RS256 token is refused before any key lookup: the JWKS is configured for ES256 only.
      expect(await fromUrl.onRequest!(req({ authorization: `Bearer ${await sign(good, 'RS256', pairs.RS256!.privateKey, { kid: 'k1' })}` }))).toMatchObject({ status: 401 });
    } finally {
      srv.close();
    }
  });

  it('fails the hook (so the kernel answers 503) when the JWKS cannot be fetched, rather than blaming the client', async () => {
    const srv = createServer().listen(0, '127.0.0.1');
    await once(srv, 'listening');
    const port = (srv.address() as { port: number }).port;
    await new Promise((r) => srv.close(r));
    const p = await load({ jwt: { jwks: { url: `http://127.0.0.1:${port}/jwks.json`, algorithms: ['ES256'] } } });
    const token = await sign(good, 'ES256', pairs.ES256!.privateKey, { kid: 'k1' });
    await expect(p.onRequest!(req({ authorization: `Bearer ${token}` }))).rejects.toMatchObject({ code: 'BEXT_ERR_PLUGIN_FAILED' });
  });

  it('reads the token from a cookie when configured', async () => {
    const p = await load({ jwt: { keys: [{ alg: 'HS256', secret: SECRET }], cookie: 'session' } });
    const token = await sign(good, 'HS256', hsKey);
    expect(await p.onRequest!(req({ cookie: `theme=dark; session=${token}` }))).toMatchObject({ action: 'continue' });
  });
});

describe('auth: API keys, rules and answers', () => {
  it('accepts a configured API key by its hash and refuses others', async () => {
    const p = await load(allKeysConfig());
    expect(await p.onRequest!(req({ 'x-api-key': apiKey }))).toEqual({
      action: 'continue',
      ctx: { auth: { method: 'apikey', subject: 'ci', scopes: ['deploy'], claims: null, keyId: 'ci' } },
    });
    const bad = (await p.onRequest!(req({ 'x-api-key': 'k_live_guess' }))) as Respond;
    expect(bad.status).toBe(401);
    expect(JSON.parse(bad.body).error_description).toBe('the API key is not valid');
  });

  it('answers 401 with both challenges when nothing is presented', async () => {
    const p = await load(allKeysConfig());
    const d = (await p.onRequest!(req())) as Respond;
    expect(d.status).toBe(401);
    expect(d.headers['www-authenticate']).toEqual(['Bearer realm="bext"', 'ApiKey realm="bext", header="x-api-key"']);
  });

  it('applies the first fitting rule by route group and path; scopes and claims give 403', async () => {
    const p = await load(allKeysConfig({
      rules: [
        { match: { paths: ['/public/**'] }, require: 'none' },
        { groups: ['admin'], require: 'jwt', claims: { role: ['admin', 'owner'] } },
        { match: { methods: ['POST'], paths: ['/deploy'] }, require: 'apikey', scopes: ['deploy'] },
        { match: { paths: ['/write/**'] }, require: 'any', scopes: ['write'] },
        { match: { paths: ['/maybe'] }, require: 'optional' },
      ],
    }));
    const token = (claims: JWTPayload = {}) => sign({ ...good, ...claims }, 'HS256', hsKey);
    expect(await p.onRequest!(req({}, { path: '/public/a.css' }))).toBeUndefined();
    expect(await p.onRequest!(req({ authorization: `Bearer ${await token()}` }, { group: 'admin' }))).toMatchObject({ status: 403 });
    const forbidden = (await p.onRequest!(req({ authorization: `Bearer ${await token()}` }, { group: 'admin' }))) as Respond;
    expect(forbidden.headers['www-authenticate']).toBe('Bearer realm="bext", error="insufficient_scope"');
    expect(await p.onRequest!(req({ authorization: `Bearer ${await token({ role: 'owner' })}` }, { group: 'admin' }))).toMatchObject({ action: 'continue' });
    expect(await p.onRequest!(req({ 'x-api-key': apiKey }, { group: 'admin' }))).toMatchObject({ status: 401 });
    expect(await p.onRequest!(req({ 'x-api-key': apiKey }, { method: 'POST', path: '/deploy' }))).toMatchObject({ action: 'continue' });
    expect(await p.onRequest!(req({ authorization: `Bearer ${await token()}` }, { method: 'POST', path: '/deploy' }))).toMatchObject({ status: 401 });
    const noScope = (await p.onRequest!(req({ authorization: `Bearer ${await token({ scope: 'read' })}` }, { path: '/write/x' }))) as Respond;
    expect(noScope.status).toBe(403);
    expect(noScope.headers['www-authenticate']).toBe('Bearer realm="bext", error="insufficient_scope", scope="write"');
    expect(await p.onRequest!(req({}, { path: '/maybe' }))).toBeUndefined();
    expect(await p.onRequest!(req({ authorization: `Bearer ${await token()}` }, { path: '/maybe' }))).toMatchObject({ action: 'continue' });
    expect(await p.onRequest!(req({ authorization: 'Bearer not.a.jwt' }, { path: '/maybe' }))).toMatchObject({ status: 401 });
  });

  it('refuses configurations that would weaken it, naming the key to fix', async () => {
    await expect(load({ jwt: { keys: [{ alg: 'RS256', secret: SECRET }] } })).rejects.toThrow(/jwt\.keys\[0\]: RS256 needs a public key/);
    await expect(load({ jwt: { keys: [{ alg: 'HS256', pem: 'x' }] } })).rejects.toThrow(/jwt\.keys\[0\]: HS256 needs a shared secret/);
    await expect(load({ jwt: { keys: [{ alg: 'HS256', secret: 'short' }] } })).rejects.toThrow(/at least 32 bytes/);
    await expect(load({ jwt: { keys: [] } })).rejects.toThrow(/neither keys nor jwks/);
    await expect(load({ rules: [{ require: 'apikey' }], jwt: { keys: [{ alg: 'HS256', secret: SECRET }] } })).rejects.toThrow(/\.rules\[0\]: requires an API key/);
    await expect(load({})).rejects.toThrow(/\.default: is "any"/);
    await expect(load({ jwt: { jwks: { url: 'http://x.test/jwks', algorithms: ['HS256'] } } })).rejects.toThrow(/HS\* algorithms do not belong/);
  });
});

describe('auth over HTTP', () => {
  let b: Bext;
  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bext-whoami-'));
    writeFileSync(join(dir, 'bext-plugin.json'), JSON.stringify({ name: 'whoami', version: '1.0.0', sandbox: 'trusted', entry: 'index.js', hooks: { onRender: {} } }));
    writeFileSync(join(dir, 'index.js'), "export default () => ({ onRender: (req) => ({ status: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify(req.ctx.auth ?? null) }) });\n");
    b = await startBext({ plugins: [{ dir: HERE }, { dir }], config: { plugins: { auth: allKeysConfig({ rules: [{ match: { paths: ['/open'] }, require: 'none' }] }) } } });
  });
  afterAll(() => b?.close());

  it('serves claims to later plugins, and refuses with 401 and WWW-Authenticate on the wire', async () => {
    for (const [alg, key] of [['HS256', hsKey], ['RS256', pairs.RS256!.privateKey], ['ES256', pairs.ES256!.privateKey], ['EdDSA', pairs.EdDSA!.privateKey]] as const) {
      const r = await fetch(`${b.url}/me`, { headers: { authorization: `Bearer ${await sign(good, alg, key)}` } });
      expect(r.status, alg).toBe(200);
      expect(await r.json()).toMatchObject({ method: 'jwt', subject: 'alice', claims: { aud: 'bext-api' } });
    }
    const key = await fetch(`${b.url}/me`, { headers: { 'x-api-key': apiKey } });
    expect(await key.json()).toMatchObject({ method: 'apikey', subject: 'ci' });

    const none = await fetch(`${b.url}/me`);
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toBe('Bearer realm="bext", ApiKey realm="bext", header="x-api-key"');
    const forged = await fetch(`${b.url}/me`, { headers: { authorization: `Bearer ${await sign(good, 'HS256', new TextEncoder().encode(pairs.RS256!.pem))}` } });
    expect(forged.status).toBe(401);
    const expired = await fetch(`${b.url}/me`, { headers: { authorization: `Bearer ${await sign({ ...good, exp: now() - 300 }, 'RS256', pairs.RS256!.privateKey)}` } });
    expect(expired.status).toBe(401);
    expect(expired.headers.get('www-authenticate')).toContain('error_description="the token has expired"');
    expect((await fetch(`${b.url}/open`)).status).toBe(200);
  });
});
