import { readFileSync } from 'node:fs';
import http2 from 'node:http2';
import { resolve } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { HostApi, ResponseData, TrustedRequest } from '../../plugin-api/index.js';
import { validatePluginConfig } from '../../kernel/config.js';
import { until } from '../../test/helpers.js';
import factory from './index.js';

const manifest = JSON.parse(readFileSync(resolve(import.meta.dirname, 'bext-plugin.json'), 'utf8')) as { configSchema: Record<string, unknown> };

/*
 * gRPC needs HTTP/2 on the client side, and the kernel's listener speaks
 * HTTP/1.1 only so far. This suite therefore puts a small h2c front in place
 * of the kernel listener: it turns each HTTP/2 request into the request a
 * trusted onRender hook receives, calls the proxy plugin's onRender, and
 * writes the answer — trailers included — back on the stream. Everything
 * from there on (route matching, balancing, the h2c session to the member,
 * streaming both ways, trailers) is the plugin's real path.
 */

interface Msg {
  text: string;
  n: number;
}

const def = protoLoader.loadSync(resolve(import.meta.dirname, 'fixtures/echo.proto'), { keepCase: true, defaults: true });
const Echo = (grpc.loadPackageDefinition(def) as unknown as { bext: { test: { Echo: grpc.ServiceClientConstructor } } }).bext.test.Echo;

const cleanups: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A gRPC server (grpc-js, plaintext = h2c) that tags its answers with its name. */
async function grpcServer(name: string): Promise<{ url: string; calls: string[] }> {
  const server = new grpc.Server();
  const calls: string[] = [];
  const trailer = () => {
    const md = new grpc.Metadata();
    md.set('x-served-by', name);
    return md;
  };
  server.addService(Echo.service, {
    Say(call: grpc.ServerUnaryCall<Msg, Msg>, cb: grpc.sendUnaryData<Msg>) {
      calls.push('Say');
      if (call.request.text === 'fail') return cb({ code: grpc.status.NOT_FOUND, details: 'no such thing' });
      cb(null, { text: `${name}: ${call.request.text}`, n: call.request.n + 1 }, trailer());
    },
    Count(call: grpc.ServerWritableStream<Msg, Msg>) {
      calls.push('Count');
      for (let i = 1; i <= call.request.n; i++) call.write({ text: `${name} ${i}`, n: i });
      call.end(trailer());
    },
    Sum(call: grpc.ServerReadableStream<Msg, Msg>, cb: grpc.sendUnaryData<Msg>) {
      calls.push('Sum');
      let n = 0;
      call.on('data', (m: Msg) => (n += m.n));
      call.on('end', () => cb(null, { text: name, n }, trailer()));
    },
    Chat(call: grpc.ServerDuplexStream<Msg, Msg>) {
      calls.push('Chat');
      call.on('data', (m: Msg) => call.write({ text: `${name} heard ${m.text}`, n: m.n }));
      call.on('end', () => call.end(trailer()));
    },
  });
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  cleanups.push(() => new Promise<void>((r) => server.tryShutdown(() => r())));
  return { url: `http://127.0.0.1:${port}`, calls };
}

/** The proxy plugin, loaded without a kernel, behind an h2c front. */
async function h2Front(config: Record<string, unknown>): Promise<{ address: string; events: unknown[]; state(): Promise<any> }> {
  const events: unknown[] = [];
  const host: HostApi = {
    plugin: 'proxy',
    publish: async (_topic, data) => (events.push(data), 1),
    log: () => undefined,
    kv: { get: async () => null, set: async () => undefined, del: async () => undefined },
    fetch: async () => {
      throw new Error('not granted');
    },
    metric: () => undefined,
    schedule: async () => undefined,
    unschedule: async () => false,
    // What the kernel would hand over: the section validated, defaults filled in.
    config: <T,>() => validatePluginConfig('proxy', manifest.configSchema, config, 'test config') as T,
  };
  const inst = await factory(host);
  cleanups.push(() => inst.dispose?.());
  let seq = 0;
  const server = http2.createServer(async (req, res) => {
    const url = req.url;
    const qi = url.indexOf('?');
    const authority = String(req.headers[':authority'] ?? '');
    const treq = {
      id: `h2-${++seq}`,
      method: req.method,
      path: qi === -1 ? url : url.slice(0, qi),
      query: qi === -1 ? '' : url.slice(qi + 1),
      host: authority.replace(/:\d+$/, ''),
      headers: req.headers,
      remoteAddress: req.socket.remoteAddress ?? '',
      scheme: 'http',
      httpVersion: '2.0',
      ctx: {},
      raw: req,
      readBody: () => Promise.reject(new Error('not used')),
    } as unknown as TrustedRequest;
    const out = (await inst.onRender!(treq, async () => ({ status: 404 }))) as (ResponseData & { trailers?: Promise<Record<string, string>> }) | undefined;
    if (!out) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(out.status, out.headers as http2.OutgoingHttpHeaders);
    if (out.body instanceof Readable) for await (const c of out.body) res.write(c);
    else if (out.body) res.write(out.body as Buffer);
    if (out.trailers) {
      const t = await out.trailers;
      res.addTrailers(Object.fromEntries(Object.entries(t).filter(([k]) => !k.startsWith(':'))));
    }
    res.end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
  const state = async () => JSON.parse(((await inst.onRoute!({ route: '/__bext/proxy' } as TrustedRequest)) as ResponseData).body as string).upstreams;
  return { address: `127.0.0.1:${(server.address() as { port: number }).port}`, events, state };
}

type EchoClient = grpc.Client & { [K in 'Say' | 'Count' | 'Sum' | 'Chat']: (...a: any[]) => any };

function client(address: string): EchoClient {
  const c = new Echo(address, grpc.credentials.createInsecure()) as unknown as EchoClient;
  cleanups.push(() => c.close());
  return c;
}

const config = (members: string[]) => ({
  upstreams: { rpc: { members, protocol: 'h2c' } },
  routes: [{ upstream: 'rpc', paths: ['/bext.test.Echo/*'] }],
});

describe('gRPC over h2c', () => {
  it('proxies a unary call with its trailers, and a gRPC error status', async () => {
    const up = await grpcServer('one');
    const front = await h2Front(config([up.url]));
    const c = client(front.address);
    const trailers = new Promise<grpc.Metadata>((r) => {
      const call = c.Say({ text: 'hi', n: 41 }, (err: Error | null, res: Msg) => {
        expect(err).toBeNull();
        expect(res).toEqual({ text: 'one: hi', n: 42 });
      });
      call.on('status', (s: grpc.StatusObject) => r(s.metadata));
    });
    expect((await trailers).get('x-served-by')).toEqual(['one']);
    const err = await new Promise<grpc.ServiceError>((r) => c.Say({ text: 'fail', n: 0 }, (e: grpc.ServiceError) => r(e)));
    expect(err.code).toBe(grpc.status.NOT_FOUND);
    expect(err.details).toBe('no such thing');
  });

  it('proxies server, client and bidirectional streams', async () => {
    const up = await grpcServer('one');
    const front = await h2Front(config([up.url]));
    const c = client(front.address);

    const got: Msg[] = [];
    const count = c.Count({ text: '', n: 5 });
    count.on('data', (m: Msg) => got.push(m));
    const status = await new Promise<grpc.StatusObject>((r) => count.on('status', r));
    expect(got.map((m) => m.text)).toEqual(['one 1', 'one 2', 'one 3', 'one 4', 'one 5']);
    expect(status.code).toBe(grpc.status.OK);
    expect(status.metadata.get('x-served-by')).toEqual(['one']);

    const sum = await new Promise<Msg>((res, rej) => {
      const call = c.Sum((e: Error | null, m: Msg) => (e ? rej(e) : res(m)));
      for (let i = 1; i <= 10; i++) call.write({ text: '', n: i });
      call.end();
    });
    expect(sum).toEqual({ text: 'one', n: 55 });

    // Bidi: each answer arrives before the next message is sent, so nothing waits for the whole stream.
    const chat = c.Chat();
    const replies: string[] = [];
    for (const word of ['a', 'b', 'c']) {
      const reply = new Promise<Msg>((r) => chat.once('data', r));
      chat.write({ text: word, n: 0 });
      replies.push((await reply).text);
    }
    chat.end();
    const chatStatus = await new Promise<grpc.StatusObject>((r) => chat.on('status', r));
    expect(replies).toEqual(['one heard a', 'one heard b', 'one heard c']);
    expect(chatStatus.metadata.get('x-served-by')).toEqual(['one']);
  });

  it('balances calls over members on multiplexed sessions and skips a dead member', async () => {
    const one = await grpcServer('one');
    const two = await grpcServer('two');
    const front = await h2Front(config(['http://127.0.0.1:9', one.url, two.url]));
    const c = client(front.address);
    const results = await Promise.all(Array.from({ length: 12 }, (_, i) => new Promise<Msg>((res, rej) => c.Say({ text: String(i), n: i }, (e: Error | null, m: Msg) => (e ? rej(e) : res(m))))));
    expect(results.map((r) => r.n)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    expect(one.calls.length + two.calls.length).toBe(12);
    expect(one.calls.length).toBeGreaterThan(2);
    expect(two.calls.length).toBeGreaterThan(2);
  });

  it('checks h2c members actively over HTTP/2 and takes a dead one out', async () => {
    const one = await grpcServer('one');
    const front = await h2Front({
      upstreams: { rpc: { members: ['http://127.0.0.1:9', one.url], protocol: 'h2c', health: { active: { path: '/health', intervalMs: 20, rise: 1, fall: 1 } } } },
      routes: [{ upstream: 'rpc', paths: ['/bext.test.Echo/*'] }],
    });
    await until(() => front.events.some((e) => (e as { event: string }).event === 'member-down'), 5000, 'the dead member to go down');
    // Several more rounds of checks: the live member stays up.
    await until(async () => (await front.state()).rpc.members[1].checks.passed >= 5, 5000, 'five checks of the live member');
    expect((await front.state()).rpc.members.map((m: { healthy: boolean }) => m.healthy)).toEqual([false, true]);
    expect(front.events).toEqual([expect.objectContaining({ event: 'member-down', upstream: 'rpc', member: '127.0.0.1:9' })]);
    const c = client(front.address);
    for (let i = 0; i < 3; i++) {
      const m = await new Promise<Msg>((res, rej) => c.Say({ text: 'x', n: i }, (e: Error | null, r: Msg) => (e ? rej(e) : res(r))));
      expect(m.n).toBe(i + 1);
    }
    expect(one.calls).toHaveLength(3);
  });
});

describe('gRPC through the kernel', () => {
  it('unary and server-streaming calls keep their trailers, and a trailers-only error its status, over the kernel\'s HTTP/2 handler', async () => {
    const { startBext } = await import('../../sdk/harness.js');
    const { plugin } = await import('../../test/helpers.js');
    const up = await grpcServer('one');
    // An h2c listener feeding the kernel's pipeline, as the tls plugin does for h2.
    const h2c = plugin('h2c-front', {}, `
import http2 from 'node:http2';
globalThis.__grpcFront = null;
export default (host) => {
  const server = http2.createServer((req, res) => host.kernel.handle(req, res));
  server.listen(0, '127.0.0.1', () => { globalThis.__grpcFront = server.address().port; });
  return { dispose() { server.close(); } };
};`);
    const b = await startBext({ plugins: ['proxy', h2c], config: { plugins: { proxy: config([up.url]) } } });
    cleanups.push(() => b.close());
    const g = globalThis as unknown as { __grpcFront: number | null };
    await until(() => g.__grpcFront !== null, 5000, 'the h2c front');
    const c = client(`127.0.0.1:${g.__grpcFront}`);
    const unary = await new Promise<{ res: Msg; md: grpc.Metadata }>((resolveCall, reject) => {
      let res: Msg | null = null;
      const call = c.Say({ text: 'via kernel', n: 1 }, (err: Error | null, r: Msg) => (err ? reject(err) : (res = r)));
      call.on('status', (s: grpc.StatusObject) => resolveCall({ res: res!, md: s.metadata }));
    });
    expect(unary.res).toEqual({ text: 'one: via kernel', n: 2 });
    expect(unary.md.get('x-served-by')).toEqual(['one']);
    const got: string[] = [];
    const count = c.Count({ text: '', n: 3 });
    count.on('data', (m: Msg) => got.push(m.text));
    const status = await new Promise<grpc.StatusObject>((r) => count.on('status', r));
    expect(got).toEqual(['one 1', 'one 2', 'one 3']);
    expect(status.code).toBe(grpc.status.OK);
    expect(status.metadata.get('x-served-by')).toEqual(['one']);
    // A gRPC error the upstream sends trailers-only keeps its code and message through the kernel.
    const err = await new Promise<grpc.ServiceError>((r) => c.Say({ text: 'fail', n: 0 }, (e: grpc.ServiceError) => r(e)));
    expect(err.code).toBe(grpc.status.NOT_FOUND);
    expect(err.details).toBe('no such thing');
  });
});
