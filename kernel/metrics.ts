/**
 * What the kernel measures: per plugin and hook calls, errors and latency;
 * HTTP requests; capability denials; and metrics plugins record through
 * `bext_metric`. Hook latency is kept in plain counters on the hot path and
 * turned into a Prometheus histogram only when scraped.
 */
import client from 'prom-client';
import type { HookName, MetricKind } from '../plugin-api/index.js';

const BOUNDS = [0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1, 5];

/** Latency histogram without per-observation allocation. */
export class FastHistogram {
  readonly counts = new Float64Array(BOUNDS.length + 1);
  sum = 0;
  count = 0;
  observe(seconds: number): void {
    this.sum += seconds;
    this.count++;
    let i = 0;
    while (i < BOUNDS.length && seconds > BOUNDS[i]!) i++;
    this.counts[i]!++;
  }
  /** Prometheus histogram sample lines for one label set. */
  lines(name: string, labels: string): string[] {
    const out: string[] = [];
    let cum = 0;
    BOUNDS.forEach((b, i) => {
      cum += this.counts[i]!;
      out.push(`${name}_bucket{${labels},le="${b}"} ${cum}`);
    });
    out.push(`${name}_bucket{${labels},le="+Inf"} ${this.count}`);
    out.push(`${name}_sum{${labels}} ${this.sum}`);
    out.push(`${name}_count{${labels}} ${this.count}`);
    return out;
  }
}

export interface HookCounters {
  calls: number;
  errors: number;
  timeouts: number;
  latency: FastHistogram;
}

export function newHookCounters(): HookCounters {
  return { calls: 0, errors: 0, timeouts: 0, latency: new FastHistogram() };
}

/** Escapes a Prometheus label value. */
function lv(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

export interface HookSource {
  plugin: string;
  sandbox: string;
  hooks: Map<HookName, HookCounters>;
  fuelTotal?: () => number | undefined;
  memoryBytes?: () => number | undefined;
}

const MAX_SERIES_PER_METRIC = 1000;

export class KernelMetrics {
  readonly registry = new client.Registry();
  /** Text appended to the scrape (the kernel's HTTP counters). */
  extraText: () => string = () => '';
  readonly denials: client.Counter<'plugin' | 'function'>;
  readonly quarantines: client.Counter<'plugin'>;
  #sources: () => HookSource[];
  #pluginMetrics = new Map<string, { kind: MetricKind; metric: client.Counter | client.Gauge | client.Histogram; labels: string[]; series: Set<string> }>();

  constructor(sources: () => HookSource[]) {
    this.#sources = sources;
    client.collectDefaultMetrics({ register: this.registry, prefix: 'bext_process_' });
    this.denials = new client.Counter({ name: 'bext_capability_denials_total', help: 'Host function calls refused for a missing capability', labelNames: ['plugin', 'function'], registers: [this.registry] });
    this.quarantines = new client.Counter({ name: 'bext_plugin_quarantines_total', help: 'Times a plugin was quarantined after repeated failures', labelNames: ['plugin'], registers: [this.registry] });
  }

  /** `bext_metric` from a plugin. Returns false when the series cap was hit. */
  pluginMetric(plugin: string, name: string, value: number, labels: Record<string, string> = {}, kind: MetricKind = 'counter'): boolean {
    let safe = `bext_plugin_${plugin.replace(/-/g, '_')}_${name.replace(/[^a-zA-Z0-9_]/g, '_')}`;
    // `_total` belongs to counters only (Prometheus naming rules).
    if (kind !== 'counter') safe = safe.replace(/_total$/, '');
    const labelNames = Object.keys(labels).sort();
    let m = this.#pluginMetrics.get(safe);
    if (!m) {
      const common = { name: safe, help: `${name} recorded by plugin ${plugin}`, labelNames, registers: [this.registry] };
      const metric = kind === 'gauge' ? new client.Gauge(common) : kind === 'histogram' ? new client.Histogram(common) : new client.Counter(common);
      m = { kind, metric, labels: labelNames, series: new Set() };
      this.#pluginMetrics.set(safe, m);
    }
    const key = labelNames.map((k) => labels[k]).join('\0');
    if (!m.series.has(key)) {
      if (m.series.size >= MAX_SERIES_PER_METRIC) return false;
      m.series.add(key);
    }
    const l = Object.fromEntries(m.labels.map((k) => [k, String(labels[k] ?? '')]));
    if (m.kind === 'gauge') (m.metric as client.Gauge).set(l, value);
    else if (m.kind === 'histogram') (m.metric as client.Histogram).observe(l, value);
    else (m.metric as client.Counter).inc(l, Math.max(0, value));
    return true;
  }

  /** Prometheus text of everything: the registry plus the hook counters. */
  async text(): Promise<string> {
    // prom-client names three gauges `*_total`, which Prometheus reserves for counters;
    // they only sum the per-type gauges of the same name, so they are left out.
    let out = (await this.registry.metrics()).replace(/^(?:# (?:HELP|TYPE) )?bext_process_nodejs_active_(?:handles|requests|resources)_total\b.*\n/gm, '');
    out += this.extraText();
    const calls: string[] = [];
    const errors: string[] = [];
    const timeouts: string[] = [];
    const hist: string[] = [];
    const fuel: string[] = [];
    const mem: string[] = [];
    for (const s of this.#sources()) {
      const pl = `plugin="${lv(s.plugin)}",sandbox="${lv(s.sandbox)}"`;
      for (const [hook, c] of s.hooks) {
        const l = `${pl},hook="${hook}"`;
        calls.push(`bext_hook_calls_total{${l}} ${c.calls}`);
        errors.push(`bext_hook_errors_total{${l}} ${c.errors}`);
        timeouts.push(`bext_hook_timeouts_total{${l}} ${c.timeouts}`);
        hist.push(...c.latency.lines('bext_hook_duration_seconds', l));
      }
      const f = s.fuelTotal?.();
      if (f !== undefined) fuel.push(`bext_plugin_fuel_used_total{${pl}} ${f}`);
      const m = s.memoryBytes?.();
      if (m !== undefined) mem.push(`bext_plugin_memory_bytes{${pl}} ${m}`);
    }
    const block = (name: string, type: string, help: string, lines: string[]) =>
      lines.length ? `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${lines.join('\n')}\n` : '';
    out += block('bext_hook_calls_total', 'counter', 'Plugin hook calls', calls);
    out += block('bext_hook_errors_total', 'counter', 'Plugin hook calls that threw, trapped or timed out', errors);
    out += block('bext_hook_timeouts_total', 'counter', 'Plugin hook calls that missed their deadline', timeouts);
    out += block('bext_hook_duration_seconds', 'histogram', 'Time spent in plugin hooks', hist);
    out += block('bext_plugin_fuel_used_total', 'counter', 'WASM fuel used by a plugin', fuel);
    out += block('bext_plugin_memory_bytes', 'gauge', 'Memory held by a sandboxed plugin instance', mem);
    return out;
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
