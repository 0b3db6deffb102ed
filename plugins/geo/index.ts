/**
 * Geo filter: country allow/deny lists over a MaxMind database. Direct
 * clients are judged in onConnect (before any HTTP parse); clients behind a
 * trusted proxy are judged per request from X-Forwarded-For.
 */
import { resolve } from 'node:path';
import maxmind, { type CountryResponse, type Reader } from 'maxmind';
import { BextError, definePlugin, type ConnectDecision, type RequestDecision } from '../../plugin-api/index.js';
import { fileIdentity, pollFile } from '../../plugin-api/file-watch.js';
import { cidrSet, clientAddress } from '../../plugin-api/net.js';

/** This plugin's section of bext.config.json (defaults applied by the kernel). */
export interface GeoConfig {
  database: string;
  allow: string[];
  deny: string[];
  unknown: 'allow' | 'deny';
  trustedProxies: string[];
  status: number;
  tag: boolean;
  watch: boolean;
  watchIntervalMs: number;
}

/** What later plugins find in `req.ctx.geo`; `country` is null when the database does not know the address. */
export interface GeoCtx {
  country: string | null;
}

const REJECT: ConnectDecision = { action: 'reject', reason: 'geo' };

async function openDatabase(path: string): Promise<Reader<CountryResponse>> {
  try {
    return await maxmind.open<CountryResponse>(path, { cache: { max: 10_000 } });
  } catch (e) {
    throw new BextError('BEXT_ERR_PLUGIN_LOAD', `plugin "geo": cannot open the MaxMind database ${path}: ${(e as Error).message}`, {
      hint: 'set plugins.geo.database to the path of a GeoIP2 or GeoLite2 Country/City .mmdb file',
      cause: e,
    });
  }
}

export default definePlugin(async (host) => {
  const cfg = host.config<GeoConfig>();
  const path = resolve(host.kernel?.siteDir ?? process.cwd(), cfg.database);
  // Taken before the open, so a replace that lands during the open is seen on the next poll.
  const loaded = cfg.watch ? fileIdentity(path) : '';
  let db = await openDatabase(path);
  const allow = new Set(cfg.allow);
  const deny = new Set(cfg.deny);
  const proxies = cidrSet(cfg.trustedProxies, '$.plugins.geo.trustedProxies');
  const clientOf = clientAddress(proxies);

  const countryOf = (addr: string): string | null => {
    const r = db.get(addr);
    return r?.country?.iso_code ?? r?.registered_country?.iso_code ?? null;
  };
  const refused = (country: string | null): boolean =>
    country === null ? cfg.unknown === 'deny' : deny.has(country) || (allow.size !== 0 && !allow.has(country));

  const forbidden: RequestDecision = {
    action: 'respond', status: cfg.status,
    headers: { 'content-type': 'text/plain; charset=utf-8', connection: 'close' },
    body: 'not available in your region\n',
  };
  // One tagging decision per country, built on first sight and reused.
  const tags = new Map<string | null, RequestDecision>();
  const tagFor = (country: string | null): RequestDecision => {
    let d = tags.get(country);
    if (!d) tags.set(country, (d = { action: 'continue', ctx: Object.freeze({ geo: Object.freeze({ country }) }) }));
    return d;
  };
  const refuse = (stage: string, country: string | null) =>
    host.metric('rejected_total', 1, { stage, country: country ?? 'unknown' }, 'counter');

  const stopWatch = cfg.watch
    ? pollFile(path, { intervalMs: cfg.watchIntervalMs, baseline: loaded }, async () => {
        try {
          db = await openDatabase(path);
          host.log('info', 'geo database reloaded', { path, build: db.metadata.buildEpoch.toISOString() });
        } catch (e) {
          host.log('error', 'geo database reload failed; keeping the previous one', { path, error: (e as Error).message });
        }
      })
    : undefined;

  return {
    onConnect(info) {
      if (proxies.has(info.remoteAddress)) return;
      const country = countryOf(info.remoteAddress);
      if (!refused(country)) return;
      refuse('connect', country);
      return REJECT;
    },

    onRequest(req) {
      const proxied = proxies.size !== 0 && proxies.has(req.remoteAddress);
      // A direct client was already judged at connect; it only needs the lookup when tagging.
      if (!proxied && !cfg.tag) return;
      const country = countryOf(proxied ? clientOf(req) : req.remoteAddress);
      if (proxied && refused(country)) {
        refuse('request', country);
        return forbidden;
      }
      return cfg.tag ? tagFor(country) : undefined;
    },

    dispose() {
      stopWatch?.();
    },
  };
});
