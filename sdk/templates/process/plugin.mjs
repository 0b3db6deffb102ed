// __NAME__: runs in a child process. Each hook receives plain data (only the
// request fields listed under "needs" in bext-plugin.json) and returns plain data.
//
// Host functions are globals: bext_log(level, msg, fields) and bext_config()
// always; bext_publish(topic, data), bext_kv_get/set/del, bext_fetch(req) and
// bext_metric(name, value, labels) when bext-plugin.json asks for the capability
// and the lock file grants it. The asynchronous ones return promises.
// console.* and process.stdout become log lines: stdout carries the protocol.

const { blockedAgents = [] } = bext_config();

bext_log('info', '__NAME__ loaded', { blockedAgents: blockedAgents.length });

/** @param {{ id: string, method: string, path: string, headers: Record<string, string> }} req */
export async function onRequest(req) {
  const agent = req.headers['user-agent'] ?? '';
  if (blockedAgents.some((a) => agent.includes(a))) {
    await bext_publish('custom/__NAME__/blocked', { path: req.path, agent });
    return { action: 'respond', status: 403, headers: { 'content-type': 'text/plain' }, body: 'forbidden\n' };
  }
  return { action: 'continue', responseHeaders: { 'x-__NAME__': 'seen' } };
}

/** Called once when the plugin is unloaded. */
export function dispose() {}
