// Typings for the bext_* globals: sdk/globals.d.ts in bext.

/** This plugin's section of bext.config.json, validated against configSchema. */
const config = bext_config();
const blocked = config.blockedAgents ?? [];

/**
 * Refuses requests from blocked user agents and tags every other one. Kept
 * synchronous: a hook that returns a plain value is several times cheaper
 * than one that returns a Promise.
 */
export function onRequest(req) {
  const agent = String(req.headers['user-agent'] ?? '');
  if (blocked.some((b) => agent.includes(b))) {
    bext_publish('custom/__NAME__/blocked', { path: req.path, agent }).catch((e) => bext_log('warn', 'publish failed', { error: String(e) }));
    return { action: 'respond', status: 403, headers: { 'content-type': 'text/plain' }, body: 'blocked' };
  }
  return { action: 'continue', responseHeaders: { 'x-__NAME__': 'seen' } };
}
