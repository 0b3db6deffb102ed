/**
 * `/metrics` in the Prometheus text format: what the kernel records (per
 * plugin and hook calls, errors, latency; HTTP requests; denials; process)
 * and what plugins record through `bext_metric`. An admin route: scrape it
 * on the admin listener.
 */
import { definePlugin } from '../../plugin-api/index.js';

export default definePlugin((host) => {
  const kernel = host.kernel;
  if (!kernel) throw new Error('metrics needs the trusted sandbox (it reads the kernel registry)');
  return {
    async onRoute() {
      return { status: 200, headers: { 'content-type': kernel.metricsContentType, 'cache-control': 'no-store' }, body: await kernel.metricsText() };
    },
  };
});
