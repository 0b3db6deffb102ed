// examples/site/pages/full-page.tsx: about 150 elements, ISR.
export const revalidate = 60;
export const metadata = { title: 'Full page · bext example' };

const SECTIONS = ['Overview', 'Install', 'Configure', 'Deploy', 'Observe', 'Scale'];

export default function FullPage() {
  return (
    <div className="full">
      <aside>
        <h2>Contents</h2>
        <ol>
          {SECTIONS.map((s) => (
            <li key={s}><a href={`#${s.toLowerCase()}`}>{s}</a></li>
          ))}
        </ol>
      </aside>
      <article>
        <h1>A full page</h1>
        {SECTIONS.map((s, i) => (
          <section key={s} id={s.toLowerCase()}>
            <h2>{s}</h2>
            <p>Paragraph one of <strong>{s}</strong>, with <em>emphasis</em> and a <a href={`/blog?q=${s}`}>link</a>.</p>
            <p>Paragraph two of {s}: <code>bext run</code> serves the site; <code>bext build</code> bundles it.</p>
            <ul>
              {[1, 2, 3, 4].map((j) => (
                <li key={j}>Point {j} of section {i + 1} <span className="tag">#{j}</span></li>
              ))}
            </ul>
            <figure>
              <blockquote>Quote {i + 1}: every feature is a plugin.</blockquote>
              <figcaption>— the design notes</figcaption>
            </figure>
          </section>
        ))}
      </article>
    </div>
  );
}
