/**
 * Browser scripts the plugin serves: the island loader and Turbo.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createHash } from 'node:crypto';

/**
 * `/__bext/island.js`: fills every `<bext-island data-src>` with the HTML
 * its URL answers, on load and after each Turbo visit.
 */
export const ISLAND_JS = `// bext server islands
const fill = async (el) => {
  if (el.dataset.state) return;
  el.dataset.state = 'loading';
  try {
    const r = await fetch(el.dataset.src, { headers: { accept: 'text/html' }, credentials: 'same-origin' });
    if (!r.ok) throw new Error('HTTP ' + r.status);
    el.innerHTML = await r.text();
    el.dataset.state = 'done';
    el.dispatchEvent(new CustomEvent('bext:island', { bubbles: true, detail: { src: el.dataset.src } }));
  } catch (e) {
    el.dataset.state = 'error';
    el.dataset.error = String(e && e.message || e);
  }
};
const scan = () => document.querySelectorAll('bext-island[data-src]').forEach(fill);
if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', scan, { once: true });
else scan();
addEventListener('turbo:load', scan);
addEventListener('turbo:frame-load', scan);
`;

export interface Asset {
  body: Buffer;
  etag: string;
  type: string;
}

export function asset(body: string | Buffer, type: string): Asset {
  const b = typeof body === 'string' ? Buffer.from(body) : body;
  return { body: b, etag: `"${createHash('sha256').update(b).digest('base64url').slice(0, 22)}"`, type };
}

let turbo: Promise<Asset> | null = null;

/** `@hotwired/turbo`'s ES module, minified once. */
export function turboAsset(): Promise<Asset> {
  turbo ??= (async () => {
    const require = createRequire(import.meta.url);
    const main = require.resolve('@hotwired/turbo');
    const src = readFileSync(main.replace(/turbo\.es2017-umd\.js$/, 'turbo.es2017-esm.js'), 'utf8');
    const { transform } = await import('esbuild');
    const out = await transform(src, { minify: true, format: 'esm', target: 'es2017', legalComments: 'inline' });
    return asset(out.code, 'text/javascript; charset=utf-8');
  })();
  turbo.catch(() => (turbo = null));
  return turbo;
}
