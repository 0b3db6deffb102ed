// The examples/site layout, for the pages bench/ssr.ts compares.
const NAV = [['/', 'Home'], ['/blog', 'Blog'], ['/about', 'About'], ['/stream', 'Streaming']];

export default function RootLayout({ children }) {
  return (
    <html lang="en">
      <head>
        <link rel="icon" href="/favicon.svg" type="image/svg+xml" />
        <link rel="stylesheet" href="/assets/site.css" />
      </head>
      <body>
        <header>
          <nav id="nav">
            {NAV.map(([href, label]) => (
              <a key={href} href={href}>{label}</a>
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
