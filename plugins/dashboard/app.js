// bext dashboard: draws the snapshots the server publishes once per interval.
// No dependencies: charts are drawn on <canvas> by the small functions below.
'use strict';

const boot = JSON.parse(document.getElementById('bext-boot').textContent);
const C = {
  ok: '#3fb950', info: '#58a6ff', warn: '#e3b341', err: '#f85149', violet: '#bc8cff', teal: '#39c5cf', pink: '#f778ba',
  grid: '#1c2330', axis: '#5b6477', text: '#d9dee8', muted: '#8690a3', card2: '#161c29',
};
const CLASS_COLORS = [C.muted, C.ok, C.info, C.warn, C.err];
const CLASS_NAMES = ['1xx', '2xx', '3xx', '4xx', '5xx'];

const state = { points: [], latest: null, recent: [], recentSeq: 0, source: null, snapshots: 0, fetchingRecent: false };
/** Time shown by the charts: what has been collected, at least a minute, at most the history. */
let span = 60000;
// For tests and the curious: what the page has received.
window.__dash = state;

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

// ------------------------------------------------------------------ formats

function num(n, digits) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '–';
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(1) + 'G';
  if (a >= 1e6) return (n / 1e6).toFixed(1) + 'M';
  if (a >= 1e4) return (n / 1e3).toFixed(1) + 'k';
  if (digits !== undefined) return n.toFixed(digits);
  if (a >= 100) return Math.round(n).toString();
  if (a >= 10) return n.toFixed(1);
  if (a === 0) return '0';
  return n.toFixed(2);
}
function ms(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '–';
  if (n >= 1000) return (n / 1000).toFixed(2) + ' s';
  if (n >= 100) return Math.round(n) + ' ms';
  if (n >= 1) return n.toFixed(1) + ' ms';
  if (n >= 0.001) return Math.round(n * 1000) + ' µs';
  return '0 ms';
}
function bytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) (n /= 1024), i++;
  return (i ? n.toFixed(1) : Math.round(n)) + ' ' + u[i];
}
function pct(r) {
  return r === null || r === undefined ? '–' : (r * 100).toFixed(r >= 0.995 || r === 0 ? 0 : 1) + '%';
}
function clock(t) {
  const d = new Date(t);
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}
function duration(s) {
  if (s < 60) return s + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm ' + (s % 60) + 's';
  if (s < 86400) return Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm';
  return Math.floor(s / 86400) + 'd ' + Math.floor((s % 86400) / 3600) + 'h';
}
function tickStep() {
  return span <= 90000 ? 15000 : span <= 180000 ? 30000 : span <= 600000 ? 60000 : span <= 1800000 ? 300000 : 600000;
}
function ago(back) {
  return '−' + (back >= 60000 ? (back % 60000 ? (back / 60000).toFixed(1) : back / 60000) + 'm' : back / 1000 + 's');
}
/** Time labels under a plot: `now` at the right edge, then every tick step back. */
function timeTicks(ctx, left, width, top) {
  ctx.fillStyle = C.axis;
  ctx.textBaseline = 'top';
  for (let back = 0; back <= span; back += tickStep()) {
    const xx = left + width - (back / span) * width;
    if (back === 0) {
      ctx.textAlign = 'right';
      ctx.fillText('now', xx, top);
      continue;
    }
    // Labels that would run into the axis or `now` are left out.
    if (xx - 18 < left || left + width - xx < 40) continue;
    ctx.textAlign = 'center';
    ctx.fillText(ago(back), xx, top);
  }
}
function niceMax(v) {
  if (!(v > 0)) return 1;
  const e = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (v <= m * e) return m * e;
  return 10 * e;
}

// ------------------------------------------------------------------ canvas

function surface(c, cssHeight) {
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth || c.parentElement.clientWidth;
  const h = cssHeight || c.clientHeight || 150;
  if (cssHeight) c.style.height = cssHeight + 'px';
  if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
    c.width = Math.round(w * dpr);
    c.height = Math.round(h * dpr);
  }
  const ctx = c.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = '11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
  return { ctx, w, h };
}

function withAlpha(hex, a) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${a})`;
}

/**
 * Time series in a rectangle: lines or (stacked) areas, a y grid with
 * labels, and time ticks. Points are placed by time, newest at the right.
 */
function series(ctx, rect, times, list, opt = {}) {
  const { x, y, w, h } = rect;
  const padL = 44, padB = opt.noTime ? 4 : 16, padT = 6;
  const pw = w - padL - 6, ph = h - padB - padT;
  const tEnd = times.length ? times[times.length - 1] : Date.now();
  const tx = (t) => x + padL + pw - ((tEnd - t) / span) * pw;
  const n = times.length;
  // Stacked values: each series sits on the ones before it.
  const tops = list.map((s) => s.values.slice());
  if (opt.stacked) for (let k = 1; k < tops.length; k++) for (let i = 0; i < n; i++) tops[k][i] = (tops[k][i] ?? 0) + (tops[k - 1][i] ?? 0);
  let max = opt.max ?? 0;
  if (opt.max === undefined) for (const t of tops) for (const v of t) if (v !== null && v > max) max = v;
  max = opt.max ?? niceMax(max * 1.08);
  const ty = (v) => y + padT + ph - (Math.min(v, max) / max) * ph;

  // grid and labels
  ctx.strokeStyle = C.grid;
  ctx.lineWidth = 1;
  ctx.fillStyle = C.axis;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  const rows = opt.rows ?? 4;
  for (let r = 0; r <= rows; r++) {
    const v = (max * r) / rows;
    const yy = Math.round(ty(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(x + padL, yy);
    ctx.lineTo(x + padL + pw, yy);
    ctx.stroke();
    ctx.fillText((opt.fmt || num)(v), x + padL - 6, yy);
  }
  if (!opt.noTime) {
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    timeTicks(ctx, x + padL, pw, y + padT + ph + 4);
  }
  if (opt.title) {
    ctx.textAlign = 'left';
    ctx.textBaseline = 'top';
    ctx.fillStyle = C.muted;
    ctx.fillText(opt.title, x + padL + 6, y + padT + 2);
  }
  ctx.save();
  ctx.beginPath();
  ctx.rect(x + padL, y, pw, h);
  ctx.clip();
  for (let k = list.length - 1; k >= 0; k--) {
    const s = list[k];
    const top = tops[k];
    const base = opt.stacked && k > 0 ? tops[k - 1] : null;
    // Runs of non-null values are drawn separately so gaps stay gaps.
    let i = 0;
    while (i < n) {
      while (i < n && top[i] === null) i++;
      const start = i;
      while (i < n && top[i] !== null) i++;
      if (i - start < 1) continue;
      const seg = [];
      for (let j = start; j < i; j++) seg.push(j);
      if (s.area !== false && (opt.area || opt.stacked)) {
        const g = ctx.createLinearGradient(0, y + padT, 0, y + padT + ph);
        g.addColorStop(0, withAlpha(s.color, opt.stacked ? 0.55 : 0.35));
        g.addColorStop(1, withAlpha(s.color, opt.stacked ? 0.25 : 0.02));
        ctx.fillStyle = g;
        ctx.beginPath();
        ctx.moveTo(tx(times[seg[0]]), ty(top[seg[0]]));
        for (const j of seg) ctx.lineTo(tx(times[j]), ty(top[j]));
        for (let q = seg.length - 1; q >= 0; q--) ctx.lineTo(tx(times[seg[q]]), ty(base ? base[seg[q]] ?? 0 : 0));
        ctx.closePath();
        ctx.fill();
      }
      ctx.strokeStyle = s.color;
      ctx.lineWidth = s.width || 1.6;
      ctx.lineJoin = 'round';
      ctx.beginPath();
      seg.forEach((j, q) => (q ? ctx.lineTo(tx(times[j]), ty(top[j])) : ctx.moveTo(tx(times[j]), ty(top[j]))));
      ctx.stroke();
    }
  }
  ctx.restore();
  return { tx, padL, pw, x, w };
}

/** Stacked bars per interval (for event counts, where a line would hide single events). */
function bars(ctx, rect, times, list, opt = {}) {
  const { x, y, w, h } = rect;
  const padL = 44, padB = 16, padT = 6;
  const pw = w - padL - 6, ph = h - padB - padT;
  const tEnd = times.length ? times[times.length - 1] : Date.now();
  let max = 0;
  for (let i = 0; i < times.length; i++) {
    let s = 0;
    for (const l of list) s += l.values[i] || 0;
    if (s > max) max = s;
  }
  max = niceMax(Math.max(max, 1) * 1.08);
  const ty = (v) => y + padT + ph - (v / max) * ph;
  ctx.strokeStyle = C.grid;
  ctx.fillStyle = C.axis;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (let r = 0; r <= 3; r++) {
    const v = (max * r) / 3;
    const yy = Math.round(ty(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(x + padL, yy);
    ctx.lineTo(x + padL + pw, yy);
    ctx.stroke();
    ctx.fillText(num(v), x + padL - 6, yy);
  }
  timeTicks(ctx, x + padL, pw, y + padT + ph + 4);
  const bw = Math.max(1.5, (pw / (span / boot.intervalMs)) * 0.7);
  for (let i = 0; i < times.length; i++) {
    const xx = x + padL + pw - ((tEnd - times[i]) / span) * pw - bw / 2;
    if (xx < x + padL) continue;
    let acc = 0;
    for (const l of list) {
      const v = l.values[i] || 0;
      if (!v) continue;
      ctx.fillStyle = l.color;
      ctx.fillRect(xx, ty(acc + v), bw, ty(acc) - ty(acc + v));
      acc += v;
    }
  }
  if (opt.empty && max <= 1 && !list.some((l) => l.values.some((v) => v))) {
    ctx.fillStyle = C.axis;
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    ctx.fillText(opt.empty, x + padL + pw / 2, y + padT + ph / 2);
  }
}

function spark(id, values, color, max) {
  const { ctx, w, h } = surface($(id), 34);
  const n = values.length;
  if (!n) return;
  const slots = Math.max(2, Math.min(boot.history, 120, Math.max(30, n)));
  const vals = values.slice(-slots);
  let m = max ?? 0;
  if (max === undefined) for (const v of vals) if (v !== null && v > m) m = v;
  m = m || 1;
  const px = (i) => w - (vals.length - 1 - i) * (w / (slots - 1));
  const py = (v) => h - 2 - (Math.min(v, m) / m) * (h - 5);
  const g = ctx.createLinearGradient(0, 0, 0, h);
  g.addColorStop(0, withAlpha(color, 0.35));
  g.addColorStop(1, withAlpha(color, 0));
  ctx.beginPath();
  let started = false, first = 0, last = 0;
  vals.forEach((v, i) => {
    if (v === null) return;
    if (!started) (ctx.moveTo(px(i), py(v)), (started = true), (first = i));
    else ctx.lineTo(px(i), py(v));
    last = i;
  });
  if (!started) return;
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.stroke();
  ctx.lineTo(px(last), h);
  ctx.lineTo(px(first), h);
  ctx.closePath();
  ctx.fillStyle = g;
  ctx.fill();
}

function donut(id, parts) {
  const c = $(id);
  const { ctx, w, h } = surface(c, 150);
  const total = parts.reduce((a, p) => a + p.value, 0);
  const cx = w / 2, cy = h / 2, r = Math.min(w, h) / 2 - 6;
  ctx.lineWidth = 16;
  if (!total) {
    ctx.strokeStyle = C.grid;
    ctx.beginPath();
    ctx.arc(cx, cy, r - 8, 0, Math.PI * 2);
    ctx.stroke();
  } else {
    let a = -Math.PI / 2;
    for (const p of parts) {
      if (!p.value) continue;
      const d = (p.value / total) * Math.PI * 2;
      ctx.strokeStyle = p.color;
      ctx.beginPath();
      ctx.arc(cx, cy, r - 8, a + 0.012, a + d - 0.012);
      ctx.stroke();
      a += d;
    }
  }
  ctx.fillStyle = C.text;
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  ctx.font = '600 20px system-ui, sans-serif';
  ctx.fillText(num(total), cx, cy - 6);
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = C.muted;
  ctx.fillText('requests', cx, cy + 13);
}

function hbars(id, items) {
  const c = $(id);
  const rowH = 24;
  const height = Math.max(60, items.length * rowH + 8);
  const { ctx, w } = surface(c, height);
  if (!items.length) {
    ctx.fillStyle = C.axis;
    ctx.textAlign = 'center';
    ctx.fillText('no hook calls yet', w / 2, 30);
    return;
  }
  const labelW = Math.min(190, w * 0.34);
  const noteW = Math.min(190, w * 0.3);
  const bw = w - labelW - noteW - 16;
  const max = niceMax(Math.max(...items.map((i) => i.value)) || 1);
  items.forEach((it, k) => {
    const yy = 4 + k * rowH;
    ctx.fillStyle = C.text;
    ctx.textAlign = 'left';
    ctx.textBaseline = 'middle';
    ctx.fillText(it.label, 0, yy + rowH / 2, labelW - 8);
    ctx.fillStyle = C.card2;
    ctx.fillRect(labelW, yy + 5, bw, rowH - 10);
    const g = ctx.createLinearGradient(labelW, 0, labelW + bw, 0);
    g.addColorStop(0, withAlpha(it.color, 0.95));
    g.addColorStop(1, withAlpha(it.color, 0.55));
    ctx.fillStyle = g;
    ctx.fillRect(labelW, yy + 5, Math.max(2, (it.value / max) * bw), rowH - 10);
    ctx.fillStyle = it.error ? C.err : C.muted;
    ctx.textAlign = 'right';
    ctx.fillText(it.note, w, yy + rowH / 2, noteW);
  });
}

// ------------------------------------------------------------------ tooltips

const tip = $('tip');
const hovers = new Map();
function hoverable(canvas, make) {
  hovers.set(canvas, make);
  if (canvas.dataset.hover) return;
  canvas.dataset.hover = '1';
  canvas.addEventListener('mousemove', (e) => {
    const h = hovers.get(canvas)();
    if (!h || !state.points.length) return;
    const r = canvas.getBoundingClientRect();
    const mx = e.clientX - r.left;
    let best = -1, bd = Infinity;
    state.points.forEach((p, i) => {
      const d = Math.abs(h.tx(p.t) - mx);
      if (d < bd) (bd = d), (best = i);
    });
    if (best < 0 || bd > 20) return void (tip.style.display = 'none');
    const p = state.points[best];
    tip.innerHTML = `<div class="t">${clock(p.t).slice(0, 8)}</div>` + h.rows(p).map(([color, label, value]) => `<div><span style="background:${color}"></span>${esc(label)} <b>${esc(value)}</b></div>`).join('');
    tip.style.display = 'block';
    tip.style.left = Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 8) + 'px';
    tip.style.top = e.clientY + 14 + 'px';
  });
  canvas.addEventListener('mouseleave', () => (tip.style.display = 'none'));
}

// ------------------------------------------------------------------ render

function legend(id, items) {
  $(id).innerHTML = items.map(([color, label, value]) => `<span style="--c:${color}">${esc(label)}${value !== undefined ? ` <b>${esc(value)}</b>` : ''}</span>`).join('');
}

function render() {
  const s = state.latest;
  const pts = state.points;
  if (!s) return;
  const times = pts.map((p) => p.t);
  const p = s.point;
  const collected = times.length > 1 ? times[times.length - 1] - times[0] : 0;
  span = Math.min(boot.history * boot.intervalMs, Math.max(60000, collected * 1.04));
  const last60 = pts.slice(-Math.max(1, Math.round(60000 / boot.intervalMs)));

  // header and KPIs
  $('uptime').textContent = duration(s.uptimeSeconds);
  $('plugin-count').textContent = s.plugins.length;
  $('k-rps').innerHTML = num(p.rps) + '<small>req/s</small>';
  $('k-p99').innerHTML = esc(ms(p.p99));
  const total60 = last60.reduce((a, q) => a + q.n, 0);
  const err60 = last60.reduce((a, q) => a + q.s[4], 0);
  $('k-err').innerHTML = (total60 ? ((err60 / total60) * 100).toFixed(err60 ? 2 : 0) : '0') + '<small>% · 60 s</small>';
  $('k-hit').textContent = pct(p.hit);
  const secs60 = last60.reduce((a, q) => a + q.dt, 0) || 1;
  const blocksMin = (last60.reduce((a, q) => a + q.wafBlocked, 0) / secs60) * 60;
  $('k-waf').textContent = num(blocksMin, 0);
  $('k-hub').textContent = p.hub === null ? '–' : num(p.hub, 0);
  spark('s-rps', pts.map((q) => q.rps), C.info);
  spark('s-p99', pts.map((q) => (q.rps ? q.p99 : null)), C.violet);
  spark('s-err', pts.map((q) => q.s[4] / q.dt), C.err);
  spark('s-hit', pts.map((q) => q.hit), C.teal, 1);
  spark('s-waf', pts.map((q) => q.wafBlocked / q.dt), C.warn);
  spark('s-hub', pts.map((q) => q.hub), C.ok);

  // request rate, stacked by class
  {
    const c = $('c-rate');
    const { ctx, w, h } = surface(c);
    const list = [1, 2, 3, 4].map((k) => ({ name: CLASS_NAMES[k], color: CLASS_COLORS[k], values: pts.map((q) => q.s[k] / q.dt) }));
    const g = series(ctx, { x: 0, y: 0, w, h }, times, list, { stacked: true });
    hoverable(c, () => ({ tx: g.tx, rows: (q) => [[C.text, 'total', num(q.rps) + '/s'], ...list.map((l, k) => [l.color, l.name, num(q.s[k + 1] / q.dt) + '/s'])] }));
    legend('l-rate', [[C.text, 'total', num(p.rps) + '/s'], ...list.map((l, k) => [l.color, l.name, num(p.s[k + 1] / p.dt) + '/s'])]);
  }

  // status mix
  {
    const sums = [0, 0, 0, 0, 0];
    for (const q of last60) q.s.forEach((v, k) => (sums[k] += v));
    donut('c-mix', sums.map((v, k) => ({ value: Math.round(v), color: CLASS_COLORS[k] })));
    const all = sums.reduce((a, b) => a + b, 0) || 1;
    $('mix-stats').innerHTML = [1, 2, 3, 4, 0]
      .filter((k) => k !== 0 || sums[0])
      .map((k) => `<span><i class="dot" style="background:${CLASS_COLORS[k]}"></i> ${CLASS_NAMES[k]}</span><b>${num(Math.round(sums[k]), 0)} · ${((sums[k] / all) * 100).toFixed(1)}%</b>`)
      .join('') +
      `<span style="margin-top:8px">average</span><b style="margin-top:8px">${num(total60 / secs60)}/s</b>` +
      `<span>peak</span><b>${num(Math.max(...last60.map((q) => q.rps)))}/s</b>` +
      `<span>slowest p99</span><b>${esc(ms(Math.max(...last60.map((q) => q.p99))))}</b>`;
  }

  // latency
  {
    const c = $('c-lat');
    const { ctx, w, h } = surface(c);
    const list = [
      { name: 'p50', color: C.teal, values: pts.map((q) => (q.rps ? q.p50 : null)) },
      { name: 'p90', color: C.info, values: pts.map((q) => (q.rps ? q.p90 : null)) },
      { name: 'p99', color: C.violet, values: pts.map((q) => (q.rps ? q.p99 : null)), width: 2 },
    ];
    const g = series(ctx, { x: 0, y: 0, w, h }, times, list, { area: true, fmt: (v) => (v === 0 ? '0' : v >= 1000 ? (v / 1000).toFixed(1) + 's' : v >= 1 ? num(v) : (v * 1000).toFixed(0) + 'µs') });
    hoverable(c, () => ({ tx: g.tx, rows: (q) => [...list.map((l) => [l.color, l.name, ms(q[l.name])]), [C.muted, 'max', ms(q.max)]] }));
    legend('l-lat', [...list.map((l) => [l.color, l.name, ms(p[l.name])]), [C.muted, 'max', ms(p.max)]]);
  }

  // cache
  {
    const c = $('c-cache');
    const { ctx, w, h } = surface(c);
    const vals = pts.map((q) => q.hit);
    const g = series(ctx, { x: 0, y: 0, w, h }, times, [{ name: 'hit ratio', color: C.teal, values: vals, width: 2 }], { area: true, max: 1, fmt: (v) => Math.round(v * 100) + '%' });
    hoverable(c, () => ({ tx: g.tx, rows: (q) => [[C.teal, 'hit ratio', pct(q.hit)]] }));
    const cs = s.cache;
    $('cache-stats').innerHTML = cs
      ? [['hits', cs.hit], ['stale', cs.stale], ['misses', cs.miss + cs.collapsed], ['bypass', cs.bypass]].map(([k, v]) => `<span>${k}</span><b>${num(v / p.dt)}/s</b>`).join('') +
        (cs.memoryBytes !== null ? `<span>stored</span><b>${bytes(cs.memoryBytes)}${cs.entries !== null ? ` · ${num(cs.entries, 0)} entries` : ''}</b>` : '')
      : '<span>no cache traffic</span><b></b>';
  }

  // hook cost
  {
    const colors = { onConnect: C.pink, onRequest: C.info, onRoute: C.ok, onRender: C.violet, onResponse: C.teal, onPublish: C.warn };
    hbars('c-hooks', s.hooks.slice(0, 12).map((k) => ({
      label: `${k.plugin} · ${k.hook}`,
      value: k.msPerSec,
      color: colors[k.hook] || C.info,
      error: k.errorsPerSec > 0,
      note: `${ms(k.msPerSec)}/s · ${k.avgUs < 1000 ? k.avgUs.toFixed(1) + ' µs' : ms(k.avgUs / 1000)} × ${num(k.callsPerSec)}/s${k.errorsPerSec > 0 ? ` · ${num(k.errorsPerSec)} err/s` : ''}`,
    })));
  }

  // security
  {
    const c = $('c-waf');
    const { ctx, w, h } = surface(c);
    const list = [
      { name: 'WAF blocked', key: 'wafBlocked', color: C.err },
      { name: 'WAF detected', key: 'wafDetected', color: C.warn },
      { name: 'rate limited', key: 'limited', color: C.violet },
    ].map((l) => ({ ...l, values: pts.map((q) => q[l.key] / q.dt) }));
    bars(ctx, { x: 0, y: 0, w, h }, times, list, { empty: 'no blocked or limited requests' });
    legend('l-waf', list.map((l) => [l.color, l.name, num((last60.reduce((a, q) => a + q[l.key], 0) / secs60) * 60, 0) + ' / min']));
    $('waf-families').innerHTML =
      s.waf.map((f) => `<span class="chip"><b>${esc(f.family)}</b><span class="k">${f.blocked ? f.blocked + ' blocked' : ''}${f.blocked && f.detected ? ' · ' : ''}${f.detected ? f.detected + ' detected' : ''}</span></span>`).join('') +
      s.ratelimit.map((r) => `<span class="chip"><b>${esc(r.rule)}</b><span class="k">${num(r.perMin)} limited/min</span></span>`).join('');
  }

  // upstreams
  {
    const el = $('upstreams');
    if (!s.upstreams.length) el.innerHTML = '<div class="empty">no upstreams (proxy plugin not loaded)</div>';
    else {
      const bc = { closed: C.ok, 'half-open': C.warn, open: C.err };
      el.innerHTML = s.upstreams.map((u) => {
        const up = u.members.filter((m) => m.up).length;
        return `<div class="pool-h"><span><b style="color:${C.text}">${esc(u.upstream)}</b> · ${up}/${u.members.length} up · ${num(u.active, 0)} active</span><span class="tag" style="color:${bc[u.breaker] || C.muted}">breaker ${esc(u.breaker)}</span></div>` +
          `<div class="members">${u.members.map((m) => `<div class="member"><i class="dot ${m.up ? 'live' : 'err'}"></i><span class="name" title="${esc(m.member)}">${esc(m.member)}</span><span class="m">${num(m.rps)}/s</span><span class="m">${m.failuresPerMin ? `<span style="color:${C.err}">${num(m.failuresPerMin)} fail/min</span>` : `${num(m.active, 0)} active`}</span></div>`).join('')}</div>`;
      }).join('');
    }
  }

  // hub
  {
    const c = $('c-hub');
    const { ctx, w, h } = surface(c);
    if (!s.hub) {
      ctx.fillStyle = C.axis;
      ctx.textAlign = 'center';
      ctx.fillText('realtime hub not loaded', w / 2, h / 2);
      legend('l-hub', []);
    } else {
      const top = { x: 0, y: 0, w, h: h * 0.55 };
      const bot = { x: 0, y: h * 0.55, w, h: h * 0.45 };
      const g = series(ctx, top, times, [{ name: 'connections', color: C.ok, values: pts.map((q) => q.hub), width: 2 }], { area: true, noTime: true, rows: 2, title: 'connections' });
      series(ctx, bot, times, [{ name: 'deliveries/s', color: C.teal, values: pts.map((q) => q.deliveries) }], { area: true, rows: 2, title: 'deliveries/s' });
      hoverable(c, () => ({ tx: g.tx, rows: (q) => [[C.ok, 'connections', num(q.hub, 0)], [C.teal, 'deliveries', num(q.deliveries) + '/s']] }));
      legend('l-hub', [[C.ok, 'SSE', num(s.hub.sse, 0)], [C.info, 'WebSocket', num(s.hub.ws, 0)], [C.teal, 'deliveries', num(s.hub.deliveriesPerSec) + '/s'], [C.muted, 'published', num(s.hub.publishedPerSec) + '/s'], [C.muted, 'topics', s.hub.topics === null ? '–' : num(s.hub.topics, 0)]]);
    }
  }

  // render pool
  {
    const el = $('pool');
    const pool = s.pool;
    if (!pool) el.innerHTML = '<div class="empty">no render pool (ssr plugin not loaded)</div>';
    else {
      const colors = { busy: C.violet, idle: C.ok, starting: C.info, draining: C.warn, dead: C.err };
      const entries = Object.entries(pool.workers);
      const total = entries.reduce((a, [, v]) => a + v, 0) || 1;
      el.innerHTML =
        `<div class="poolbar">${entries.map(([k, v]) => `<i title="${esc(k)} ${v}" style="width:${(v / total) * 100}%;background:${colors[k] || C.muted}"></i>`).join('')}</div>` +
        `<div class="legend">${entries.map(([k, v]) => `<span style="--c:${colors[k] || C.muted}">${esc(k)} <b>${v}</b></span>`).join('')}</div>` +
        `<div class="stats" style="margin-top:10px"><span>queue</span><b style="color:${pool.queue ? C.warn : C.text}">${num(pool.queue, 0)}</b><span>renders</span><b>${num(pool.rendersPerSec)}/s</b><span>rotations</span><b>${num(pool.rotations, 0)}</b><span>crashes</span><b style="color:${pool.crashes ? C.err : C.text}">${num(pool.crashes, 0)}</b></div>`;
    }
  }

  // process
  {
    const c = $('c-proc');
    const { ctx, w, h } = surface(c);
    const half = { x: 0, y: 0, w: w / 2 - 8, h };
    const right = { x: w / 2 + 8, y: 0, w: w / 2 - 8, h };
    const g = series(ctx, half, times, [{ name: 'loop p99', color: C.warn, values: pts.map((q) => q.loopP99), width: 2 }], { area: true, title: 'event-loop delay p99', fmt: (v) => num(v) + 'ms' });
    series(ctx, right, times, [
      { name: 'rss', color: C.info, values: pts.map((q) => (q.rss === null ? null : q.rss / 1048576)), area: false },
      { name: 'heap', color: C.violet, values: pts.map((q) => (q.heap === null ? null : q.heap / 1048576)), width: 2 },
    ], { area: true, title: 'memory (MiB)', fmt: (v) => num(v, 0) });
    hoverable(c, () => ({ tx: g.tx, rows: (q) => [[C.warn, 'loop p99', ms(q.loopP99)], [C.violet, 'heap', bytes(q.heap)], [C.info, 'rss', bytes(q.rss)], [C.muted, 'cpu', q.cpu === null ? '–' : (q.cpu * 100).toFixed(0) + '%']] }));
    legend('l-proc', [[C.warn, 'loop p99', ms(p.loopP99)], [C.violet, 'heap', bytes(p.heap)], [C.info, 'rss', bytes(p.rss)], [C.muted, 'cpu', p.cpu === null ? '–' : (p.cpu * 100).toFixed(0) + '%']]);
  }

  // plugins
  {
    const sc = { loaded: 'live', degraded: 'warn', quarantined: 'err', failed: 'err' };
    $('plugins').innerHTML = s.plugins.map((pl) => `<span class="chip ${esc(pl.state)}" title="${esc(pl.state)}${pl.detail ? ': ' + esc(pl.detail) : ''}"><i class="dot ${sc[pl.state] || ''}"></i>${esc(pl.name)}<span class="k">${esc(pl.sandbox)}${pl.state !== 'loaded' ? ' · ' + esc(pl.state) : ''}${pl.memoryBytes !== undefined ? ' · ' + bytes(pl.memoryBytes) : ''}</span></span>`).join('');
  }
}

function renderRecent() {
  const el = $('recent');
  if (!state.recent.length) return void (el.innerHTML = '<div class="empty">no requests yet</div>');
  $('recent-note').textContent = `last ${state.recent.length}`;
  el.innerHTML =
    '<table><thead><tr><th>time</th><th>method</th><th>path</th><th>status</th><th class="num">duration</th><th>cache</th><th>waf</th><th>slowest hook</th><th>group</th></tr></thead><tbody>' +
    state.recent.map((r) => `<tr><td class="method">${clock(r.t)}</td><td class="method">${esc(r.method)}</td><td class="path" title="${esc(r.path || r.route || '')}">${esc(r.path || r.route || '—')}</td>` +
      `<td><span class="tag s${Math.floor(r.status / 100)}">${r.status}</span></td><td class="num">${esc(ms(r.ms))}</td>` +
      `<td>${r.cache ? `<span class="tag ${esc(r.cache)}">${esc(r.cache)}</span>` : ''}</td><td>${r.waf ? `<span class="tag ${esc(r.waf)}">${esc(r.waf)}</span>` : ''}</td>` +
      `<td class="method">${r.slowest ? `${esc(r.slowest.name)} <span style="color:#5b6477">${esc(ms(r.slowest.ms))}</span>` : ''}</td><td class="method">${esc(r.group)}</td></tr>`).join('') +
    '</tbody></table>';
}

// ------------------------------------------------------------------ data

async function fetchRecent() {
  if (state.fetchingRecent) return;
  state.fetchingRecent = true;
  try {
    const r = await fetch(`/__bext/dashboard/recent?after=${state.recentSeq}`, { cache: 'no-store' });
    if (!r.ok) return;
    const j = await r.json();
    if (j.requests.length) {
      state.recent = [...j.requests, ...state.recent].slice(0, boot.recent);
      renderRecent();
    }
    state.recentSeq = Math.max(state.recentSeq, j.seq);
  } catch {
    // The next snapshot tries again.
  } finally {
    state.fetchingRecent = false;
  }
}

function onSnapshot(s) {
  if (!s || s.v !== 1 || !s.point) return;
  const last = state.points[state.points.length - 1];
  if (last && s.point.t <= last.t) return;
  state.points.push(s.point);
  if (state.points.length > boot.history) state.points.splice(0, state.points.length - boot.history);
  state.latest = s;
  state.snapshots++;
  render();
  if (s.recentSeq > state.recentSeq) fetchRecent();
}

function setLive(kind, text) {
  $('live-dot').className = 'dot ' + (kind === 'live' ? 'live' : kind === 'warn' ? 'warn' : kind === 'err' ? 'err' : '');
  $('live-text').textContent = text;
}

let es = null;
let watchdog = null;
function follow(url, source) {
  if (es) es.close();
  clearTimeout(watchdog);
  state.source = source;
  let got = false;
  es = new EventSource(url);
  setLive('', source === 'hub' ? 'connecting to hub…' : 'connecting…');
  // A hub that accepts the stream but never delivers (its rules drop the topic) is as good as none.
  if (source === 'hub') watchdog = setTimeout(() => { if (!got) follow(boot.stream, 'direct'); }, boot.intervalMs * 3 + 2000);
  es.onmessage = (e) => {
    let m;
    try {
      m = JSON.parse(e.data);
    } catch {
      return;
    }
    if (m.type !== 'message' || m.topic !== boot.topic) return;
    if (!got) setLive('live', source === 'hub' ? 'live · realtime hub' : 'live · direct stream');
    got = true;
    onSnapshot(m.data);
  };
  es.addEventListener('close', () => setLive('warn', 'server closing…'));
  es.onerror = () => {
    if (source === 'hub' && !got) return follow(boot.stream, 'direct');
    setLive('warn', 'reconnecting…');
  };
}

async function start() {
  $('host').textContent = boot.host || location.host;
  try {
    const r = await fetch('/__bext/dashboard/history', { cache: 'no-store' });
    const j = await r.json();
    state.points = j.points.slice(-boot.history);
    if (j.latest) {
      state.latest = j.latest;
      render();
      if (j.latest.recentSeq) fetchRecent();
    }
  } catch {
    setLive('err', 'history unavailable');
  }
  renderRecent();
  follow(boot.hub || boot.stream, boot.hub ? 'hub' : 'direct');
}

let resizeTimer = null;
window.addEventListener('resize', () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(render, 100);
});
start();
