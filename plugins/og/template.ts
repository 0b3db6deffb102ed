/**
 * The built-in Open Graph card: title, subtitle and site name on a
 * gradient. Satori lays out a subset of CSS (flexbox), so every element
 * with children says `display: flex`.
 */
import { createElement as h, type ReactElement } from 'react';

/** What a template receives: the query parameters of `/api/og`, as strings. */
export type OgProps = Record<string, string>;

export default function DefaultCard(p: OgProps): ReactElement {
  const dark = p.theme !== 'light';
  return h(
    'div',
    {
      style: {
        width: '100%', height: '100%', display: 'flex', flexDirection: 'column', justifyContent: 'space-between',
        padding: '72px 80px', fontFamily: 'Inter',
        background: dark ? 'linear-gradient(135deg, #0f172a 0%, #1e3a8a 100%)' : 'linear-gradient(135deg, #f8fafc 0%, #dbeafe 100%)',
        color: dark ? '#f8fafc' : '#0f172a',
      },
    },
    h('div', { style: { display: 'flex', fontSize: 28, fontWeight: 700, letterSpacing: 2, opacity: 0.8 } }, (p.site ?? 'bext').toUpperCase()),
    h(
      'div',
      { style: { display: 'flex', flexDirection: 'column' } },
      h('div', { style: { display: 'flex', fontSize: p.title && p.title.length > 40 ? 60 : 76, fontWeight: 700, lineHeight: 1.1 } }, p.title ?? 'Untitled'),
      p.subtitle ? h('div', { style: { display: 'flex', marginTop: 28, fontSize: 34, fontWeight: 400, opacity: 0.85, lineHeight: 1.3 } }, p.subtitle) : null,
    ),
    h('div', { style: { display: 'flex', width: 160, height: 10, borderRadius: 5, background: dark ? '#38bdf8' : '#2563eb' } }),
  );
}
