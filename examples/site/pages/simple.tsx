/** Benchmark page: about 20 elements. */
export const revalidate = 60;

export default function Simple() {
  return (
    <section>
      <title>Simple · bext example</title>
      <h1>Simple</h1>
      <ul>
        {Array.from({ length: 8 }, (_, i) => (
          <li key={i}><a href={`/blog?q=${i}`}>Item {i}</a></li>
        ))}
      </ul>
    </section>
  );
}
