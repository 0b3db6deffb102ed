// Baseline: bare Fastify 5 serving the same 2 KB page from memory.
import Fastify from 'fastify';
import { PAGE } from './page.js';

const app = Fastify({ logger: false });
app.get('/', (_req, reply) => {
  reply.header('content-type', 'text/html; charset=utf-8').send(PAGE);
});
await app.listen({ port: 0, host: '127.0.0.1' });
process.stdout.write(`LISTENING ${(app.server.address() as { port: number }).port}\n`);
process.on('SIGTERM', () => app.close().then(() => process.exit(0)));
