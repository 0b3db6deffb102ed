import { definePlugin } from '__BEXT__/plugin-api/index.js';

export default definePlugin((host) => {
  const { greeting } = host.config<{ greeting: string }>();
  return {
    onRequest(req) {
      if (req.headers['user-agent']?.includes('BadBot')) return { action: 'respond', status: 403, body: 'no bots' };
      return { action: 'continue', responseHeaders: { 'x-__NAME__': '1' } };
    },
    async onRoute(req) {
      await host.publish('custom/__NAME__', { path: req.path });
      return { status: 200, headers: { 'content-type': 'text/plain' }, body: `${greeting} from __NAME__\n` };
    },
  };
});
