/**
 * IP filter: CIDR allow and deny lists. A direct client is judged in
 * onConnect, so a refused one is dropped before its bytes are parsed; a
 * client behind a trusted proxy is judged per request from X-Forwarded-For.
 */
import { definePlugin, type ConnectDecision, type RequestDecision } from '../../plugin-api/index.js';
import { cidrSet, clientAddress } from '../../plugin-api/net.js';

/** This plugin's section of bext.config.json (defaults applied by the kernel). */
export interface IpFilterConfig {
  allow: string[];
  deny: string[];
  trustedProxies: string[];
  status: number;
}

const REJECT: ConnectDecision = { action: 'reject', reason: 'ipfilter' };

export default definePlugin((host) => {
  const cfg = host.config<IpFilterConfig>();
  const allow = cidrSet(cfg.allow, '$.plugins.ipfilter.allow');
  const deny = cidrSet(cfg.deny, '$.plugins.ipfilter.deny');
  const proxies = cidrSet(cfg.trustedProxies, '$.plugins.ipfilter.trustedProxies');
  const clientOf = clientAddress(proxies);
  const refused = (addr: string) => deny.has(addr) || (allow.size !== 0 && !allow.has(addr));
  const forbidden: RequestDecision = {
    action: 'respond', status: cfg.status,
    headers: { 'content-type': 'text/plain; charset=utf-8', connection: 'close' },
    body: 'forbidden\n',
  };
  const connectLabels = { stage: 'connect' };
  const requestLabels = { stage: 'request' };

  return {
    onConnect(info) {
      if (proxies.has(info.remoteAddress) || !refused(info.remoteAddress)) return;
      host.metric('rejected_total', 1, connectLabels, 'counter');
      return REJECT;
    },

    onRequest(req) {
      // Direct clients were already judged at connect; only proxied ones are new here.
      if (proxies.size === 0 || !proxies.has(req.remoteAddress)) return;
      if (!refused(clientOf(req))) return;
      host.metric('rejected_total', 1, requestLabels, 'counter');
      return forbidden;
    },
  };
});
