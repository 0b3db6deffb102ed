import { TurboScript, type LayoutProps } from 'bext/ssr';

const NAV = [
  ['/', 'Home'],
  ['/blog', 'Blog'],
  ['/about', 'About'],
  ['/stream', 'Streaming'],
] as const;

/** The document every page renders into; Turbo makes the nav links swap pages without a reload. */
export default function Layout({ children, path }: LayoutProps) {
  return (
    <html lang="en">
      <head>
        <meta charSet="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <link rel="icon" href="/favicon.svg" type="image/svg+xml" />
        <link rel="stylesheet" href="/assets/site.css" />
        <TurboScript />
      </head>
      <body>
        <header>
          <nav id="nav">
            {NAV.map(([href, label]) => (
              <a key={href} href={href} aria-current={path === href || (href !== '/' && path.startsWith(`${href}/`)) ? 'page' : undefined}>
                {label}
              </a>
            ))}
          </nav>
        </header>
        <main>{children}</main>
        <footer>
          <p>Served by bext: static → ssr, behind the cache.</p>
        </footer>
      </body>
    </html>
  );
}
