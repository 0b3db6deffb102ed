// The upstream every proxy in bench/proxy.ts forwards to: node:http serving the 2 KB page.
import http from 'node:http';
import { PAGE } from '../servers/page.js';

const server = http.createServer((req, res) => {
  res.setHeader('content-type', 'text/html; charset=utf-8');
  res.setHeader('content-length', PAGE.length);
  res.end(PAGE);
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => process.stdout.write(`LISTENING ${(server.address() as { port: number }).port}\n`));
process.on('SIGTERM', () => process.exit(0));
