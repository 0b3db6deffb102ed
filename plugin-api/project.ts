/**
 * Projection of a request onto the fields a sandboxed hook declared in
 * `needs`, so a rule that reads the path never pays for headers or bodies.
 */
import type { RequestData, ResponseHead } from './hooks.js';
import type { Need } from './manifest.js';

export interface Projector {
  request(req: RequestData): Record<string, unknown>;
  response(res: ResponseHead): Record<string, unknown>;
}

const REQUEST_FIELDS = ['method', 'path', 'query', 'host', 'remoteAddress', 'scheme', 'httpVersion', 'body', 'ctx'] as const;

/** Builds a projector once per plugin. `id` is always included. */
export function makeProjector(needs: readonly Need[] | undefined): Projector {
  const set = new Set(needs ?? ['method', 'path', 'query', 'host', 'headers', 'ctx']);
  const fields = REQUEST_FIELDS.filter((f) => set.has(f));
  const allHeaders = set.has('headers');
  const someHeaders = [...set].filter((n) => n.startsWith('headers:')).map((n) => n.slice(8));
  const resHeaders = set.has('response.headers');
  const resBody = set.has('response.body');
  return {
    request(req) {
      const out: Record<string, unknown> = { id: req.id };
      for (const f of fields) if (req[f] !== undefined) out[f] = req[f];
      if (allHeaders) out.headers = req.headers;
      else if (someHeaders.length) {
        const h: Record<string, string | string[]> = {};
        for (const n of someHeaders) if (req.headers[n] !== undefined) h[n] = req.headers[n]!;
        out.headers = h;
      }
      if (req.route !== undefined) { out.route = req.route; out.params = req.params; }
      return out;
    },
    response(res) {
      const out: Record<string, unknown> = { status: res.status };
      if (resHeaders) out.headers = res.headers;
      if (resBody && res.body !== undefined) out.body = res.body;
      return out;
    },
  };
}
