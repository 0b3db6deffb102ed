/** Rendered once per build and kept in memory. */
export const mode = 'static';

export default function About() {
  return (
    <>
      <title>About · bext example</title>
      <h1>About this site</h1>
      <p>Every page here is a file in <code>examples/site/pages/</code>. <code>bext run examples/site</code> builds them with esbuild on first start and renders them in a pool of worker threads.</p>
      <ul>
        <li><code>export const revalidate = 60</code>: ISR, through the cache plugin.</li>
        <li><code>export const mode = 'swr'</code>: stale-while-revalidate.</li>
        <li><code>export const mode = 'static'</code>: this page, rendered once per build.</li>
        <li><code>export const stream = true</code>: streamed with <code>renderToPipeableStream</code>.</li>
      </ul>
      <p>Files in <code>public/</code> (like <a href="/assets/site.css">site.css</a>) are served by the static plugin.</p>
    </>
  );
}
