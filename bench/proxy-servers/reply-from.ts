// Fastify with @fastify/reply-from (undici pool) forwarding everything to the upstream given as argv[2].
import Fastify from 'fastify';
import replyFrom from '@fastify/reply-from';

const app = Fastify({ logger: false });
await app.register(replyFrom, { base: `http://127.0.0.1:${process.argv[2]}`, undici: { connections: 128, pipelining: 1 } });
app.all('/*', (req, reply) => reply.from(req.url));
await app.listen({ port: 0, host: '127.0.0.1' });
process.stdout.write(`LISTENING ${(app.server.address() as { port: number }).port}\n`);
process.on('SIGTERM', () => app.close().then(() => process.exit(0)));
