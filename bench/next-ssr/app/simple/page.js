// examples/site/pages/simple.tsx: about 20 elements, ISR.
export const revalidate = 60;
export const metadata = { title: 'Simple · bext example' };

export default function Simple() {
  return (
    <section>
      <h1>Simple</h1>
      <ul>
        {Array.from({ length: 8 }, (_, i) => (
          <li key={i}><a href={`/blog?q=${i}`}>Item {i}</a></li>
        ))}
      </ul>
    </section>
  );
}
