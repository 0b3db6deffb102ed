/**
 * CORS: answers preflights in onRequest (OPTIONS only, filtered by the
 * manifest) and marks every other response in onResponse, where the
 * response's own `Vary` is visible and can be merged rather than replaced.
 */
import { BextError, definePlugin, type Headers, type RequestDecision, type ResponseDecision } from '../../plugin-api/index.js';

/** This plugin's section of bext.config.json (defaults applied by the kernel). */
export interface CorsConfig {
  origins: string[];
  methods: string[];
  allowHeaders?: string[];
  exposeHeaders: string[];
  credentials: boolean;
  maxAgeSeconds: number;
}

/** Methods a browser never needs to see listed (CORS-safelisted). */
const SAFE_METHODS = new Set(['GET', 'HEAD', 'POST']);
/** Request headers a browser sends without asking. */
const SAFE_HEADERS = new Set(['accept', 'accept-language', 'content-language', 'content-type', 'range']);
const HOST_LABELS = /^[a-z0-9-]+(\.[a-z0-9-]+)*$/;
const ORIGIN_SHAPE = /^[a-z][a-z0-9+.-]*:\/\/(\*\.)?[a-z0-9.-]+(:\d+)?$/;

/** A compiled origin list: exact origins in a Set, `scheme://*.suffix` as prefix/suffix pairs. */
function compileOrigins(list: string[]): { any: boolean; allowed(origin: string): boolean } {
  const exact = new Set<string>();
  const wild: [prefix: string, suffix: string][] = [];
  let any = false;
  list.forEach((raw, i) => {
    const o = raw.toLowerCase();
    if (o === '*') any = true;
    else if (o === 'null') exact.add(o);
    else if (!ORIGIN_SHAPE.test(o)) {
      throw new BextError('BEXT_ERR_CONFIG_INVALID', `bext.config.json: $.plugins.cors.origins[${i}]: expected an origin like "https://app.example.com" or "https://*.example.com", found ${JSON.stringify(raw)}`, {
        hint: 'an origin has a scheme and a host, an optional port, and no path or trailing slash',
      });
    } else if (o.includes('*')) {
      const star = o.indexOf('*');
      wild.push([o.slice(0, star), o.slice(star + 1)]);
    } else exact.add(o);
  });
  return {
    any,
    allowed(origin) {
      if (any || exact.has(origin)) return true;
      for (const [prefix, suffix] of wild) {
        if (origin.length > prefix.length + suffix.length && origin.startsWith(prefix) && origin.endsWith(suffix)
          && HOST_LABELS.test(origin.slice(prefix.length, origin.length - suffix.length))) return true;
      }
      return false;
    },
  };
}

function headerValue(h: string | string[] | undefined): string | undefined {
  return typeof h === 'string' ? h : h?.join(',');
}

/** `Vary` with `Origin` added unless already covered. */
function varyWithOrigin(existing: string | string[] | undefined): string | null {
  const v = headerValue(existing);
  if (!v) return 'Origin';
  if (v.trim() === '*' || /(^|,)\s*origin\s*(,|$)/i.test(v)) return null;
  return `${v}, Origin`;
}

export default definePlugin((host) => {
  const cfg = host.config<CorsConfig>();
  const origins = compileOrigins(cfg.origins);
  // With credentials the spec forbids `*`, so an any-origin policy echoes the origin instead (and then varies on it).
  const wildcardAnswer = origins.any && !cfg.credentials;
  const methods = new Set(cfg.methods);
  const allowMethods = cfg.methods.join(', ');
  const allowHeaders = cfg.allowHeaders ? new Set(cfg.allowHeaders.map((h) => h.toLowerCase())) : null;
  const allowHeadersValue = cfg.allowHeaders?.join(', ') ?? '';
  const expose = cfg.exposeHeaders.length ? cfg.exposeHeaders.join(', ') : null;
  const maxAge = String(cfg.maxAgeSeconds);
  const preflightVary = allowHeaders ? 'Origin' : 'Origin, Access-Control-Request-Headers';

  const forbidden = (why: string): RequestDecision => ({
    action: 'respond', status: 403,
    headers: { vary: preflightVary, 'content-type': 'text/plain; charset=utf-8' },
    body: `CORS preflight refused: ${why}\n`,
  });

  // Built once: the answers that do not depend on the request.
  const anyOriginHeaders: Headers = { 'access-control-allow-origin': '*' };
  if (expose) anyOriginHeaders['access-control-expose-headers'] = expose;
  const anyOriginDecision: ResponseDecision = { setHeaders: anyOriginHeaders };
  const varyOnlyDecision: ResponseDecision = { setHeaders: { vary: 'Origin' } };

  return {
    onRequest(req) {
      const origin = req.headers.origin;
      const method = req.headers['access-control-request-method'];
      // An OPTIONS without both headers is an ordinary request, not a preflight.
      if (typeof origin !== 'string' || typeof method !== 'string') return;
      if (!origins.allowed(origin.toLowerCase())) return forbidden(`origin ${origin} is not allowed`);
      if (!methods.has(method) && !SAFE_METHODS.has(method)) return forbidden(`method ${method} is not allowed`);
      const requested = headerValue(req.headers['access-control-request-headers']);
      const headers: Headers = {
        'access-control-allow-origin': wildcardAnswer ? '*' : origin,
        'access-control-allow-methods': allowMethods,
        'access-control-max-age': maxAge,
        vary: preflightVary,
      };
      if (cfg.credentials) headers['access-control-allow-credentials'] = 'true';
      if (requested) {
        if (allowHeaders) {
          for (const h of requested.split(',')) {
            const name = h.trim().toLowerCase();
            if (name && !allowHeaders.has(name) && !SAFE_HEADERS.has(name)) return forbidden(`header ${name} is not allowed`);
          }
          headers['access-control-allow-headers'] = allowHeadersValue;
        } else headers['access-control-allow-headers'] = requested;
      }
      return { action: 'respond', status: 204, headers };
    },

    onResponse(req, res) {
      if (wildcardAnswer) return anyOriginDecision;
      const vary = varyWithOrigin(res.headers.vary);
      const origin = req.headers.origin;
      if (typeof origin !== 'string' || !origins.allowed(origin.toLowerCase())) {
        if (vary === null) return;
        return vary === 'Origin' ? varyOnlyDecision : { setHeaders: { vary } };
      }
      const setHeaders: Headers = { 'access-control-allow-origin': origin };
      if (vary !== null) setHeaders.vary = vary;
      if (cfg.credentials) setHeaders['access-control-allow-credentials'] = 'true';
      if (expose) setHeaders['access-control-expose-headers'] = expose;
      return { setHeaders };
    },
  };
});
