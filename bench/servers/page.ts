/** The 2 KB HTML page every kernel benchmark serves. */
const row = (i: number) => `<li class="item"><a href="/items/${i}">Item number ${i}</a> <span>description</span></li>\n`;
let html = '<!doctype html><html><head><meta charset="utf-8"><title>bench</title></head><body><ul>\n';
for (let i = 0; html.length < 2000; i++) html += row(i);
html += '</ul></body></html>\n';
export const PAGE = Buffer.from(html.slice(0, 2048));
