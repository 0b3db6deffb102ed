/**
 * The Open Graph render worker: satori lays out the template into SVG and
 * resvg rasterises it to PNG, off the server's main thread. Packages are
 * loaded from the plugin's own folder (the bundle of this file lives in a
 * temp folder).
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { parentPort, workerData } from 'node:worker_threads';
import type { ReactElement } from 'react';

/** What the plugin hands the worker. */
export interface OgWorkerInit {
  /** A file inside the plugin folder, for resolving packages. */
  base: string;
  /** Bundled templates: name → CommonJS file exporting the component as default. */
  templates: Record<string, string>;
  fonts: { name: string; path: string; weight: number; style: 'normal' | 'italic' }[];
  width: number;
  height: number;
}

export type OgRequest = { id: number; template: string; props: Record<string, string> };
export type OgAnswer = { id: number; png?: Uint8Array; error?: string; status?: number };

type Template = (props: Record<string, string>) => ReactElement;

const init = workerData as OgWorkerInit;
const req = createRequire(init.base);
const satori = (req('satori') as { default: (el: ReactElement, opts: unknown) => Promise<string> }).default;
const { Resvg } = req('@resvg/resvg-js') as typeof import('@resvg/resvg-js');
const fonts = init.fonts.map((f) => ({ name: f.name, weight: f.weight, style: f.style, data: readFileSync(f.path) }));
const templates = new Map<string, Template>();
for (const [name, file] of Object.entries(init.templates)) {
  const mod = req(file) as { default?: Template };
  if (typeof mod.default === 'function') templates.set(name, mod.default);
}

parentPort!.on('message', async (m: OgRequest) => {
  const t = templates.get(m.template);
  if (!t) return parentPort!.postMessage({ id: m.id, status: 400, error: `no template "${m.template}"` } satisfies OgAnswer);
  try {
    const svg = await satori(t(m.props), { width: init.width, height: init.height, fonts });
    const png = new Resvg(svg, { fitTo: { mode: 'width', value: init.width }, font: { loadSystemFonts: false } }).render().asPng();
    parentPort!.postMessage({ id: m.id, png } satisfies OgAnswer, [png.buffer as ArrayBuffer]);
  } catch (e) {
    parentPort!.postMessage({ id: m.id, status: 500, error: (e as Error)?.stack ?? String(e) } satisfies OgAnswer);
  }
});
parentPort!.postMessage({ ready: true, templates: [...templates.keys()] });
