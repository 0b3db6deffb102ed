// The floor for a Node proxy: node:http + an undici pool, no framework, no features
// (no forwarding headers, retries or health) — what any Node proxy pays before doing anything.
import http from 'node:http';
import { Pool, type Dispatcher } from 'undici';

const pool = new Pool(`http://127.0.0.1:${process.argv[2]}`, { connections: 128, pipelining: 1 });
const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding']);

const server = http.createServer((req, res) => {
  const chunks: Buffer[] = [];
  let status = 502;
  let head: Buffer[] = [];
  const handler: Dispatcher.DispatchHandlers = {
    onConnect() {},
    onError() {
      res.statusCode = 502;
      res.end();
    },
    onHeaders(s, raw) {
      status = s;
      head = raw;
      return true;
    },
    onData(c) {
      chunks.push(c);
      return true;
    },
    onComplete() {
      res.statusCode = status;
      for (let i = 0; i + 1 < head.length; i += 2) {
        const k = head[i]!.toString('latin1').toLowerCase();
        if (!HOP.has(k)) res.setHeader(k, head[i + 1]!.toString('latin1'));
      }
      res.end(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks));
    },
  };
  pool.dispatch({ method: req.method as 'GET', path: req.url ?? '/', headers: req.headers as Record<string, string> }, handler);
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => process.stdout.write(`LISTENING ${(server.address() as { port: number }).port}\n`));
process.on('SIGTERM', () => process.exit(0));
