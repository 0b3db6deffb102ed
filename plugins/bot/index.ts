/**
 * Bot guard: classes each request by its user agent (isbot, plus configured
 * lists) and, for agents that claim to be a browser, by the shape of its
 * headers; then applies the class's action. The user-agent verdict is
 * remembered per agent string, so a browser costs a Map lookup and three
 * header reads.
 */
import { isbotMatch } from 'isbot';
import { definePlugin, type RequestDecision, type TrustedRequest } from '../../plugin-api/index.js';
import { TokenBuckets } from '../../plugin-api/bucket.js';
import { cidrSet, clientAddress } from '../../plugin-api/net.js';

/** The classes a client falls into. */
export type BotClass = 'browser' | 'crawler' | 'bot' | 'empty' | 'suspicious' | 'listed';
type Action = 'allow' | 'tag' | 'block' | 'ratelimit';

/** This plugin's section of bext.config.json (defaults applied by the kernel). */
export interface BotConfig {
  actions: Record<BotClass, Action>;
  crawlers: string[];
  allowAgents: string[];
  denyAgents: string[];
  anomalyThreshold: number;
  ratelimit: { limit: number; windowSeconds: number; burst?: number };
  trustedProxies: string[];
  status: number;
}

/** What later plugins find in `req.ctx.bot` when the class's action is `tag` or `ratelimit`. */
export interface BotCtx {
  class: BotClass;
  /** The user-agent fragment that decided the class, if any. */
  match: string | null;
  /** Header-shape anomalies found (browser-like agents only). */
  anomalies: string[];
}

interface AgentVerdict {
  cls: 'browser' | 'crawler' | 'bot' | 'listed';
  match: string | null;
  /** Whether header shape should be checked: the agent claims to be a browser and is not on the allow list. */
  checkShape: boolean;
  chromium: boolean;
}

const MEMO_MAX = 10_000;

function note(out: string[] | null, n: number, what: string): number {
  out?.push(what);
  return n + 1;
}
const CHROMIUM = /\b(Chrome|Chromium|Edg|OPR)\//;

export default definePlugin((host) => {
  const cfg = host.config<BotConfig>();
  const lower = (l: string[]) => l.map((s) => s.toLowerCase());
  const allowAgents = lower(cfg.allowAgents);
  const denyAgents = lower(cfg.denyAgents);
  const crawlers = lower(cfg.crawlers);
  const firstIn = (list: string[], ua: string) => list.find((f) => ua.includes(f)) ?? null;

  const memo = new Map<string, AgentVerdict>();
  const classify = (ua: string): AgentVerdict => {
    let v = memo.get(ua);
    if (v !== undefined) return v;
    const l = ua.toLowerCase();
    let m: string | null;
    if ((m = firstIn(allowAgents, l)) !== null) v = { cls: 'browser', match: m, checkShape: false, chromium: false };
    else if ((m = firstIn(denyAgents, l)) !== null) v = { cls: 'listed', match: m, checkShape: false, chromium: false };
    else if ((m = firstIn(crawlers, l)) !== null) v = { cls: 'crawler', match: m, checkShape: false, chromium: false };
    else if ((m = isbotMatch(ua)) !== null) v = { cls: 'bot', match: m, checkShape: false, chromium: false };
    else v = { cls: 'browser', match: null, checkShape: ua.startsWith('Mozilla/'), chromium: CHROMIUM.test(ua) };
    if (memo.size >= MEMO_MAX) memo.clear();
    memo.set(ua, v);
    return v;
  };

  // Headers every mainstream browser sends on every navigation and fetch; their absence is what scripts forget.
  const anomaliesOf = (req: TrustedRequest, v: AgentVerdict, out: string[] | null): number => {
    const h = req.headers;
    let n = 0;
    if (h.accept === undefined) n = note(out, n, 'no-accept');
    if (h['accept-language'] === undefined) n = note(out, n, 'no-accept-language');
    if (h['accept-encoding'] === undefined) n = note(out, n, 'no-accept-encoding');
    if (req.httpVersion === '1.0') n = note(out, n, 'http/1.0');
    // Client hints are a Chromium feature; another engine sending them is a forged header set.
    if (h['sec-ch-ua'] !== undefined && !v.chromium) n = note(out, n, 'client-hints-without-chromium');
    return n;
  };

  const clientOf = clientAddress(cidrSet(cfg.trustedProxies, '$.plugins.bot.trustedProxies'));
  const buckets = new TokenBuckets({
    capacity: cfg.ratelimit.burst ?? cfg.ratelimit.limit,
    refillPerSecond: cfg.ratelimit.limit / cfg.ratelimit.windowSeconds,
  });
  const blocked: RequestDecision = {
    action: 'respond', status: cfg.status,
    headers: { 'content-type': 'text/plain; charset=utf-8' },
    body: 'automated clients are not allowed here\n',
  };
  const EMPTY: AgentVerdict = { cls: 'bot', match: null, checkShape: false, chromium: false };

  return {
    onRequest(req) {
      const ua = req.headers['user-agent'];
      let cls: BotClass;
      let v: AgentVerdict;
      if (typeof ua !== 'string' || ua === '') {
        cls = 'empty';
        v = EMPTY;
      } else {
        v = classify(ua);
        cls = v.cls;
        if (v.checkShape && anomaliesOf(req, v, null) >= cfg.anomalyThreshold) cls = 'suspicious';
      }
      const action = cfg.actions[cls];
      if (action === 'allow') return;
      host.metric('classified_total', 1, { class: cls, action }, 'counter');
      if (action === 'block') return blocked;
      if (action === 'ratelimit') {
        const b = buckets.get(clientOf(req));
        if (b.tokens < 1) {
          return {
            action: 'respond', status: 429,
            headers: { 'retry-after': String(Math.max(1, Math.ceil(buckets.msUntil(b, 1) / 1000))), 'content-type': 'text/plain; charset=utf-8' },
            body: 'too many requests from an automated client\n',
          };
        }
        b.tokens -= 1;
      }
      const anomalies: string[] = [];
      if (cls === 'suspicious') anomaliesOf(req, v, anomalies);
      const bot: BotCtx = { class: cls, match: v.match, anomalies };
      return { action: 'continue', ctx: { bot } };
    },
  };
});
