/**
 * Test fixture: answers /probe/* with the request's ctx (what earlier
 * plugins left there) and keeps every system/waf message in a global the
 * test reads (trusted plugins share the test's process).
 */
import { definePlugin, type PublishMessage } from '../../../../plugin-api/index.js';

const g = globalThis as { __wafProbe?: PublishMessage[] };

export default definePlugin(() => ({
  onRoute: (req) => ({ status: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ctx: req.ctx }) }),
  onPublish(msg) {
    if (msg.topic === 'system/waf') (g.__wafProbe ??= []).push(msg);
  },
}));
